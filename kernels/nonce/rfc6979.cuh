// Hedged ECDSA nonces: RFC 6979 section 3.2 (HMAC_DRBG keyed by the private
// key and the message) with fresh randomness as the "additional data" k' of
// section 3.6, for P-256 with HMAC-SHA-256 and P-384 with HMAC-SHA-384.
//
// For both curves hlen == qlen (256 and 384 bits), so one HMAC output V is
// one candidate and bits2int(V) is V read big-endian, with no shift.
//
// Constant time in the private key d and in k: no branch, loop bound or
// address depends on them. RFC 6979's "repeat until 1 <= k < n" becomes a
// fixed number of candidates, the first valid one picked by masked selection:
//   P-256: 2 candidates. One is out of range with probability
//          (2^256 - n + 1) / 2^256 ~ 2^-32, both with ~2^-64.
//   P-384: 1 candidate, out of range with probability ~2^-194.
// When none is valid the item reports ok = 0 (k = 0) and the host redoes it.
//
// Batch layout (nonce_item): limb j of item i at [j * count + i]; the item's
// additional data is seed (32 bytes, per batch) || be32(i).
#pragma once

#include "../hash/hmac.cuh"

namespace smx {
namespace nonce {

enum {
    P256_LIMBS = 8,
    P384_LIMBS = 12,
    P256_CANDIDATES = 2,
    P384_CANDIDATES = 1,
    SEED_BYTES = 32,
    ADATA_BYTES = SEED_BYTES + 4,
};

// Group orders, little-endian 32-bit limbs.
SMX_HD void p256_order(u32 n[8]) {
    const u32 v[8] = {0xfc632551u, 0xf3b9cac2u, 0xa7179e84u, 0xbce6faadu,
                      0xffffffffu, 0xffffffffu, 0x00000000u, 0xffffffffu};
    for (int j = 0; j < 8; j++) n[j] = v[j];
}

SMX_HD void p384_order(u32 n[12]) {
    const u32 v[12] = {0xccc52973u, 0xecec196au, 0x48b0a77au, 0x581a0db2u,
                       0xf4372ddfu, 0xc7634d81u, 0xffffffffu, 0xffffffffu,
                       0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    for (int j = 0; j < 12; j++) n[j] = v[j];
}

// All-ones when a < n (the borrow out of a - n).
template <int L>
SMX_HD u32 lt_mask(const u32 *a, const u32 *n) {
    u32 borrow = 0;
    SMX_UNROLL
    for (int j = 0; j < L; j++) sub_borrow(a[j], n[j], borrow);
    return 0u - borrow;
}

// All-ones when a == 0.
template <int L>
SMX_HD u32 zero_mask(const u32 *a) {
    u32 acc = 0;
    SMX_UNROLL
    for (int j = 0; j < L; j++) acc |= a[j];
    return mask_is_zero(acc);
}

// a mod n for a < 2n: one masked conditional subtraction.
template <int L>
SMX_HD void reduce_once(u32 *a, const u32 *n) {
    u32 t[L];
    u32 borrow = 0;
    SMX_UNROLL
    for (int j = 0; j < L; j++) t[j] = sub_borrow(a[j], n[j], borrow);
    u32 keep = 0u - borrow;  // a < n: keep a
    SMX_UNROLL
    for (int j = 0; j < L; j++) a[j] = select(keep, a[j], t[j]);
}

// int2octets: 4L big-endian bytes.
template <int L>
SMX_HD void limbs_to_be(const u32 *x, u8 *out) {
    SMX_UNROLL
    for (int b = 0; b < 4 * L; b++) out[b] = (u8)(x[L - 1 - b / 4] >> (8 * (3 - b % 4)));
}

// bits2int of a digest kept as big-endian words (4L bytes): LE limbs.
template <class H, int L>
SMX_HD void digest_to_limbs(const typename H::W *v, u32 *x) {
    SMX_UNROLL
    for (int j = 0; j < L; j++) {
        u32 limb = 0;
        SMX_UNROLL
        for (int t = 0; t < 4; t++) {
            int bi = 4 * L - 4 - 4 * j + t;
            limb = (limb << 8) | (u32)((v[bi / H::WB] >> (8 * (H::WB - 1 - bi % H::WB))) & 0xff);
        }
        x[j] = limb;
    }
}

// RFC 6979 section 3.2 steps b-h with additional data (section 3.6), given
// d (int2octets input, 1 <= d < n) and z = bits2int(h1) < 2^qlen, all LE
// limbs. Evaluates exactly `candidates` candidates (public) and writes the
// first in [1, n-1] to k; returns 1, or 0 (k = 0) when none was valid.
template <class H, int L>
SMX_HD u32 rfc6979_k(const u32 *n, const u32 *d, const u32 *z, const u8 *adata, u32 alen,
                     u32 candidates, u32 *k) {
    static_assert((int)H::OUTB == 4 * L, "hlen must equal qlen");
    typedef typename H::W W;
    // int2octets(x) and bits2octets(h1) = int2octets(z mod n).
    u8 xb[4 * L], hb[4 * L];
    limbs_to_be<L>(d, xb);
    u32 zr[L];
    for (int j = 0; j < L; j++) zr[j] = z[j];
    reduce_once<L>(zr, n);
    limbs_to_be<L>(zr, hb);

    // b. V = 0x01 0x01 ... ; c. K = 0x00 0x00 ...
    W V[8], Kw[8];
    for (int i = 0; i < 8; i++) {
        V[i] = (W)0x0101010101010101ull;
        Kw[i] = 0;
    }
    hmac::Key<H> key;
    hmac::set_key_words<H>(key, Kw);

    // d. K = HMAC_K(V || 0x00 || int2octets(x) || bits2octets(h1) || k')
    // e. V = HMAC_K(V)
    // f. K = HMAC_K(V || 0x01 || int2octets(x) || bits2octets(h1) || k')
    // g. V = HMAC_K(V)
    for (u32 step = 0; step < 2; step++) {
        sha2::Ctx<H> c;
        hmac::start_mac<H>(c, key);
        sha2::update_words<H>(c, V, H::OUTW);
        sha2::put_byte<H>(c, step);
        sha2::update<H>(c, xb, 4 * L);
        sha2::update<H>(c, hb, 4 * L);
        sha2::update<H>(c, adata, alen);
        hmac::finish_mac<H>(c, key, Kw);
        hmac::set_key_words<H>(key, Kw);
        hmac::mac_digest<H>(key, V, false, V);
    }

    // h. candidates: V = HMAC_K(V), k = bits2int(V); after an invalid one,
    // K = HMAC_K(V || 0x00), V = HMAC_K(V). Every step runs for every
    // candidate; validity only steers masked selects.
    u32 found = 0;
    for (int j = 0; j < L; j++) k[j] = 0;
    for (u32 i = 0; i < candidates; i++) {
        if (i > 0) {
            hmac::mac_digest<H>(key, V, true, Kw);
            hmac::set_key_words<H>(key, Kw);
            hmac::mac_digest<H>(key, V, false, V);
        }
        hmac::mac_digest<H>(key, V, false, V);
        u32 cand[L];
        digest_to_limbs<H, L>(V, cand);
        u32 valid = lt_mask<L>(cand, n) & ~zero_mask<L>(cand);
        u32 take = valid & ~found;
        for (int j = 0; j < L; j++) k[j] = select(take, cand[j], k[j]);
        found |= valid;
    }
    return found & 1u;
}

// The per-item body of the {C}_nonce kernels and of their host build.
template <class H, int L>
SMX_HD void nonce_item(const u32 *n, u32 candidates, const u32 *key, const u32 *z, const u8 *seed,
                       u32 *k, u32 *ok, u32 count, u32 i) {
    u32 d[L], zi[L], ki[L];
    for (int j = 0; j < L; j++) {
        d[j] = key[j];
        zi[j] = z[(u64)j * count + i];
    }
    u8 ad[ADATA_BYTES];
    for (int b = 0; b < SEED_BYTES; b++) ad[b] = seed[b];
    for (int b = 0; b < 4; b++) ad[SEED_BYTES + b] = (u8)(i >> (24 - 8 * b));
    u32 r = rfc6979_k<H, L>(n, d, zi, ad, ADATA_BYTES, candidates, ki);
    for (int j = 0; j < L; j++) k[(u64)j * count + i] = ki[j];
    ok[i] = r;
}

SMX_HD void p256_nonce_item(const u32 *key, const u32 *z, const u8 *seed, u32 *k, u32 *ok,
                            u32 count, u32 i) {
    u32 n[8];
    p256_order(n);
    nonce_item<sha2::Sha256, P256_LIMBS>(n, P256_CANDIDATES, key, z, seed, k, ok, count, i);
}

SMX_HD void p384_nonce_item(const u32 *key, const u32 *z, const u8 *seed, u32 *k, u32 *ok,
                            u32 count, u32 i) {
    u32 n[12];
    p384_order(n);
    nonce_item<sha2::Sha384, P384_LIMBS>(n, P384_CANDIDATES, key, z, seed, k, ok, count, i);
}

}  // namespace nonce
}  // namespace smx
