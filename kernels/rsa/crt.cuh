// RSA private operation with CRT, and the public check, for one item of a
// batch. The kernels (rsa.cu) and the host build (host/rsa_host.cpp) both
// call exactly these functions.
//
// Key blob (u32 words, made by Rust rsa_layout::pack_key; one key per
// batch). N = bits/64 limbs per CRT half, L = 2N limbs for n; every number
// is little-endian 32-bit limbs, R = 2^(32N) for p and q, 2^(32L) for n.
//
//   word            len  field
//   0               1    bits (2048, 3072, 4096)
//   1               1    e (odd, < 2^32)
//   2               1    n0 = -n^-1 mod 2^32
//   3               1    0 (reserved)
//   4               L    n
//   4+L             L    R^2 mod n
//   ---- secret from S = 4+2L to the end ----
//   S               1    p0 = -p^-1 mod 2^32
//   S+1             1    q0 = -q^-1 mod 2^32
//   S+2             2    0 (reserved)
//   S+4             N    p
//   S+4+N           N    q
//   S+4+2N          N    R^2 mod p
//   S+4+3N          N    R^2 mod q
//   S+4+4N          N    dp = d mod (p-1)
//   S+4+5N          N    dq = d mod (q-1)
//   S+4+6N          N    qinv = q^-1 mod p
//   total           8 + 11N words (360, 536, 712)
//
// p and q have exactly bits/2 bits (top bit set), qinv < p.
//
// Batches are structure-of-arrays: limb j of item i is at [j*count + i].
#pragma once

#include "modexp.cuh"

namespace smx {
namespace rsa {

template <int N>
struct KeyLayout {
    static constexpr int L = 2 * N;
    static constexpr int BITS = 0, E = 1, N0 = 2;
    static constexpr int MOD_N = 4, RR_N = MOD_N + L;
    static constexpr int SECRET = RR_N + L;
    static constexpr int P0 = SECRET, Q0 = SECRET + 1;
    static constexpr int P = SECRET + 4, Q = P + N, RR_P = Q + N, RR_Q = RR_P + N;
    static constexpr int DP = RR_Q + N, DQ = DP + N, QINV = DQ + N;
    static constexpr int WORDS = QINV + N;
    static_assert(WORDS == 8 + 11 * N, "key blob layout");
};

// Key slots in constant memory, for the one-thread sign kernels
// (rsa{B}_sign, rsa{B}_sign_wide): the host copies a batch's key blob into
// its lane's slot before the launch (device to device, from the key cache)
// and zeroes the slot after it (src/backend/cuda/backend.rs). Every thread
// of a batch reads the same key words, so in constant memory they sit in
// the warp's uniform registers (or are read straight from the constant
// bank) instead of taking 2N of each thread's vector registers, and ptxas
// then fuses each q * m_k of the Montgomery rows into one IMAD.WIDE.U32.X,
// which it does not do with the modulus in vector registers
// (scripts/kernel-stats.py --tree: an RSA-2048 `wide` row 104 instructions
// instead of 173, a squaring's 2 reduction rows 158 instead of 267). A slot
// holds the largest blob (RSA-4096, 712 words), rounded up to 256 bytes so
// that no constant-cache line spans two slots (lanes fill their slots while
// other lanes' kernels run); kKeySlots of them take 48 KiB of the 64 KiB a
// program may have.
constexpr int kKeySlots = 16;
constexpr int kKeySlotWords = 768;
static_assert(kKeySlotWords >= 8 + 11 * 64 && kKeySlotWords % 64 == 0, "a slot holds any blob");
#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define SMX_RSA_KEY_SLOTS \
    __constant__ __align__(256) smx::u32 smx_rsa_key_slots[smx::rsa::kKeySlots][smx::rsa::kKeySlotWords];
#endif

// x mod m in Montgomery form, for a 2N-limb x = hi*R + lo (x < m*R):
// to_mont(hi) is hi*R^2*R^-1 = hi*R mod m, numerically the high half's
// contribution, so lo + hi*R mod m is x mod m, which to_mont lifts.
template <int N>
SMX_HD mont_t<N> reduce_to_mont(const Field<N> &F, const u32 *x) {
    mont_t<N> hi = F.to_mont(x + N);
    u32 lo[N];
    reduce_once<N>(lo, x, F.m);
    mod_add<N>(lo, lo, hi.v, F.m);
    return F.to_mont(lo);
}

// out[i] = in[i]^d mod n, by CRT (any 2N-limb input works: both halves are
// reduced first, so an input >= n signs in mod n):
//   sp = in^dp mod p,  sq = in^dq mod q,
//   s  = sq + q * ((sp - sq) * qinv mod p)   (Garner).
template <int N>
SMX_HD void sign_item(const u32 *key, const u32 *in, u32 *out, u64 count, u64 i) {
    typedef KeyLayout<N> K;
    u32 x[2 * N];
    SMX_RSA_UNROLL
    for (int j = 0; j < 2 * N; j++) x[j] = in[(u64)j * count + i];

    const Field<N> Fp = {key + K::P, key + K::RR_P, key[K::P0]};
    const Field<N> Fq = {key + K::Q, key + K::RR_Q, key[K::Q0]};
    mont_t<N> sp = pow_ct<N>(reduce_to_mont<N>(Fp, x), key + K::DP);
    u32 sq[N];
    pow_ct<N>(reduce_to_mont<N>(Fq, x), key + K::DQ).to_plain(sq);

    // h = (sp - sq) * qinv mod p. sq < q < 2p, so to_mont reduces it; the
    // difference is in Montgomery form and qinv plain, so the Montgomery
    // product is the plain h.
    u32 h[N];
    (sp - Fp.to_mont(sq)).mul_plain(h, key + K::QINV);

    // s = sq + q * h < n.
    u32 s[2 * N];
    mul_wide<N>(s, key + K::Q, h);
    add_word_n<N>(s + N, add_n<N>(s, s, sq));

    SMX_RSA_UNROLL
    for (int j = 0; j < 2 * N; j++) out[(u64)j * count + i] = s[j];
}

// ok[i] = 1 when sig[i] < n and sig[i]^e mod n == expected[i], else 0.
// Public data only; variable time in e.
template <int N>
SMX_HD void check_item(const u32 *key, const u32 *sig, const u32 *expected, u32 *ok, u64 count,
                       u64 i) {
    typedef KeyLayout<N> K;
    constexpr int L = K::L;
    u32 s[L], want[L], got[L];
    for (int j = 0; j < L; j++) {
        s[j] = sig[(u64)j * count + i];
        want[j] = expected[(u64)j * count + i];
    }
    const Field<L> Fn = {key + K::MOD_N, key + K::RR_N, key[K::N0]};
    u32 below = sub_n<L>(got, s, Fn.m);  // all-ones when s < n
    pow_public<L>(Fn.to_mont(s), key[K::E]).to_plain(got);
    ok[i] = below & eq_n<L>(got, want) & 1u;
}

}  // namespace rsa
}  // namespace smx
