// Ed25519 (RFC 8032, pure) sign, a warp of items (messages) at a time, and
// check, one item at a time; the kernels (ed25519.cu) and the host build
// (host/ed25519_host.cpp) both call these, so the code CI tests is the code
// the GPU runs.
//
// Buffers (ABI; ed25519.cu says it once more):
//   key: KEY_WORDS = KEY_HEAD + TABLE_WORDS words, one key per batch.
//        [0, 8): a, the clamped secret scalar (first half of
//        SHA-512(seed), clamped), 8 little-endian limbs; [8, 16): prefix
//        (second half of SHA-512(seed)) and [16, 24): A, the 32-byte encoded
//        public key, both as bytes packed little-endian (byte j in word j/4,
//        bits 8(j%4)) - which is also the little-endian integer those bytes
//        encode. Then, from KEY_HEAD = 24, the comb table of -A (comb.cuh,
//        comb_table_build_neg; public), which the check kernel walks
//        together with B's. Signing reads only the first 24 words.
//   msg, off: message i is msg[off[i] .. off[i+1]).
//   sig: SIG_WORDS = 16 words per item, structure of arrays (word w of item
//        i at sig[w * count + i]): the 64 bytes R || S packed like A.
//   ok: 1 per signed item (sign) / 1 valid, 0 invalid (check).
#pragma once

#include "ed25519/comb.cuh"
#include "ed25519/hash.cuh"
#include "ed25519/scalar.cuh"
#include "ec/warp_inv.cuh"

namespace smx {
namespace ed25519 {

enum { KEY_HEAD = 24, KEY_WORDS = KEY_HEAD + TABLE_WORDS, SIG_WORDS = 16 };

// k = SHA-512(head || A || M) mod L (the challenge), or with no A
// (a_enc = 0) SHA-512(prefix || M) mod L (the nonce r).
EC_FN void hash_mod_l(const u32 *head, const u32 *a_enc, const u8 *m, u32 n, u32 *out) {
    sha512_t c;
    u32 h[16];
    c.begin();
    c.put32(head);
    if (a_enc) c.put32(a_enc);  // which hash: public
    c.put_bytes(m, n);
    c.finish(h);
    reduce512(h, out);
}

// The signatures of items first .. first + 31, one per lane of a warp
// (fewer at the end of the batch). The inversion of Z that encoding R = r B
// needs is shared by the warp (ec/warp_inv.cuh). Secrets: a, prefix, r and
// everything computed from them; the only branches and addresses that vary
// depend on the message lengths and on which lanes are past the batch.
// Every lane of the warp must call this with the same `first`.
EC_FN void sign_lanes(const u32 *table, const u32 *key, const u8 *msg, const u32 *off, u32 *sig,
                      u32 *ok, u32 count, u32 first) {
    using ec::lane_t;
    using ec::warp_val;
    const lane_t lane = ec::warp_lane();
    point_t R[SMX_LANES];
    warp_val<fe> Z;
    u32 r[SMX_LANES][8];
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        R[w] = point_t::identity();
        for (int j = 0; j < 8; j++) r[w][j] = 0;
        if (i < count) {
            hash_mod_l(key + 8, 0, msg + off[i], off[i + 1] - off[i], r[w]);  // r = SHA-512(prefix || M) mod L
            R[w] = mul_base(table, r[w]);
        }
        Z.v[w] = R[w].z;
    }
    ec::warp_invert<8>(Z, lane);
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        if (i >= count) continue;
        const u8 *m = msg + off[i];
        u32 n = off[i + 1] - off[i];
        u32 rb[8], k[8], s[8];
        R[w].encode_with(Z.v[w], rb);       // enc(r B)
        hash_mod_l(rb, key + 16, m, n, k);  // k = SHA-512(enc(R) || A || M) mod L
        // S = r + k a mod L; a < 2^255 < R, so from_int reduces it on the way in
        sc S = sc::from_int(r[w]) + sc::from_int(k) * sc::from_int(key);
        S.to_int(s);
        for (int j = 0; j < 8; j++) {
            sig[j * count + i] = rb[j];
            sig[(8 + j) * count + i] = s[j];
        }
        ok[i] = 1;
    }
}

// The checks of items first .. first + 31, one per lane of a warp (fewer
// at the end of the batch), of public data, variable time: ok = 1 when
// S < L and enc([S]B + [k](-A)) equals the R bytes (cofactorless, on the
// encodings), both scalar multiplications in one comb pass over B's table
// and the key blob's table of -A (which the host built when it packed the
// key, so A decodes). The inversion of Z that the encoding needs is shared
// by the warp (ec/warp_inv.cuh), as in signing; a lane with S >= L (or
// past the batch) inverts the identity's Z = 1 and reports 0. R itself is
// not decoded: the left side is the canonical encoding of a point of the
// curve, so a non-canonical or off-curve R never matches it. Every lane of
// the warp must call this with the same `first`.
EC_FN void check_lanes(const u32 *table, const u32 *key, const u8 *msg, const u32 *off,
                       const u32 *sig, u32 *ok, u32 count, u32 first) {
    using ec::lane_t;
    using ec::warp_val;
    const lane_t lane = ec::warp_lane();
    point_t P[SMX_LANES];
    warp_val<fe> Z;
    u32 valid[SMX_LANES];
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        P[w] = point_t::identity();
        valid[w] = 0;
        if (i < count) {
            u32 rb[8], s[8], k[8];
            for (int j = 0; j < 8; j++) {
                rb[j] = sig[j * count + i];
                s[j] = sig[(8 + j) * count + i];
            }
            if (ec::limbs_lt_public<8>(s, ED_L)) {
                hash_mod_l(rb, key + 16, msg + off[i], off[i + 1] - off[i], k);
                P[w] = mul_base2(table, s, key + KEY_HEAD, k);
                valid[w] = 1;
            }
        }
        Z.v[w] = P[w].z;
    }
    ec::warp_invert<8>(Z, lane);
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        if (i >= count) continue;
        u32 e[8], diff = 0;
        P[w].encode_with(Z.v[w], e);
        for (int j = 0; j < 8; j++) diff |= e[j] ^ sig[j * count + i];
        ok[i] = valid[w] && diff == 0;
    }
}

}  // namespace ed25519
}  // namespace smx
