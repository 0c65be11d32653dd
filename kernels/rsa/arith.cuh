// Multi-limb arithmetic on 32-bit little-endian limbs, the building blocks
// of the RSA kernels. Every function here runs in time independent of the
// limb values: loop bounds are template constants, there is no branch on
// data, and carries/borrows come back as values (or all-ones masks).
//
// On the device (SMX_PTX) the chains are PTX carry chains (add.cc, addc.cc,
// mad.lo.cc, madc.hi.cc, ...): one asm statement per instruction inside
// fully unrolled loops, the way sppark's ff/mont_t.cuh writes them. Nothing
// the compiler places between two statements of a chain writes the carry
// flag (only .cc instructions do). The host build computes the same values
// with the portable 64-bit helpers of common.cuh.
//
// The chains are written with one macro per PTX instruction (SMX_RSA_*
// below). Defining SMX_RSA_PTX_EMU on the host makes those macros emulate
// the instructions (a carry flag in a static variable), so a host test
// (tests/ctgrind_rsa.rs) runs the device's chain code without a GPU.
#pragma once

#include "../common.cuh"

// Inline member functions (SMX_HD is `static inline` on the host, which
// would turn a member function into a static one).
#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define SMX_RSA_HDM __host__ __device__ __forceinline__
#define SMX_RSA_UNROLL _Pragma("unroll")
#define SMX_RSA_NO_UNROLL _Pragma("unroll 1")
#else
#define SMX_RSA_HDM inline
#define SMX_RSA_UNROLL
#define SMX_RSA_NO_UNROLL
#endif

#if defined(SMX_PTX)
#define SMX_RSA_CHAINS 1
#define SMX_RSA_ADD_CC(d, a, b) asm volatile("add.cc.u32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b))
#define SMX_RSA_ADDC_CC(d, a, b) asm volatile("addc.cc.u32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b))
#define SMX_RSA_ADDC(d, a, b) asm volatile("addc.u32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b))
#define SMX_RSA_SUB_CC(d, a, b) asm volatile("sub.cc.u32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b))
#define SMX_RSA_SUBC_CC(d, a, b) asm volatile("subc.cc.u32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b))
#define SMX_RSA_SUBC(d, a, b) asm volatile("subc.u32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b))
// d = lo/hi(a * b) + c (+ carry in), with or without carry out.
#define SMX_RSA_MAD_LO_CC(d, a, b, c) \
    asm volatile("mad.lo.cc.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c))
#define SMX_RSA_MADC_LO_CC(d, a, b, c) \
    asm volatile("madc.lo.cc.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c))
#define SMX_RSA_MAD_HI_CC(d, a, b, c) \
    asm volatile("mad.hi.cc.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c))
#define SMX_RSA_MADC_HI_CC(d, a, b, c) \
    asm volatile("madc.hi.cc.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c))
#elif defined(SMX_RSA_PTX_EMU)
#define SMX_RSA_CHAINS 1
namespace smx {
namespace rsa {
namespace emu {
// The PTX carry flag, per thread (tests sign on several threads).
static thread_local u32 cf;
// d = x + y + cin, setting the flag when `set`.
static inline u32 add(u32 x, u32 y, u32 cin, bool set) {
    u64 t = (u64)x + y + cin;
    if (set) cf = (u32)(t >> 32);
    return (u32)t;
}
static inline u32 sub(u32 x, u32 y, u32 bin, bool set) {
    u64 t = (u64)x - y - bin;
    if (set) cf = (u32)(t >> 63);
    return (u32)t;
}
static inline u32 lo(u32 a, u32 b) { return (u32)((u64)a * b); }
static inline u32 hi(u32 a, u32 b) { return (u32)(((u64)a * b) >> 32); }
}  // namespace emu
}  // namespace rsa
}  // namespace smx
#define SMX_RSA_ADD_CC(d, a, b) ((d) = smx::rsa::emu::add((a), (b), 0, true))
#define SMX_RSA_ADDC_CC(d, a, b) ((d) = smx::rsa::emu::add((a), (b), smx::rsa::emu::cf, true))
#define SMX_RSA_ADDC(d, a, b) ((d) = smx::rsa::emu::add((a), (b), smx::rsa::emu::cf, false))
#define SMX_RSA_SUB_CC(d, a, b) ((d) = smx::rsa::emu::sub((a), (b), 0, true))
#define SMX_RSA_SUBC_CC(d, a, b) ((d) = smx::rsa::emu::sub((a), (b), smx::rsa::emu::cf, true))
#define SMX_RSA_SUBC(d, a, b) ((d) = smx::rsa::emu::sub((a), (b), smx::rsa::emu::cf, false))
#define SMX_RSA_MAD_LO_CC(d, a, b, c) \
    ((d) = smx::rsa::emu::add(smx::rsa::emu::lo((a), (b)), (c), 0, true))
#define SMX_RSA_MADC_LO_CC(d, a, b, c) \
    ((d) = smx::rsa::emu::add(smx::rsa::emu::lo((a), (b)), (c), smx::rsa::emu::cf, true))
#define SMX_RSA_MAD_HI_CC(d, a, b, c) \
    ((d) = smx::rsa::emu::add(smx::rsa::emu::hi((a), (b)), (c), 0, true))
#define SMX_RSA_MADC_HI_CC(d, a, b, c) \
    ((d) = smx::rsa::emu::add(smx::rsa::emu::hi((a), (b)), (c), smx::rsa::emu::cf, true))
#endif

namespace smx {
namespace rsa {

// r = a; N limbs.
template <int N>
SMX_HD void copy_n(u32 *r, const u32 *a) {
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) r[j] = a[j];
}

// r = a + b; returns the carry out (0 or 1). r may alias a or b.
template <int N>
SMX_HD u32 add_n(u32 *r, const u32 *a, const u32 *b) {
    u32 c;
#ifdef SMX_RSA_CHAINS
    SMX_RSA_ADD_CC(r[0], a[0], b[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++) SMX_RSA_ADDC_CC(r[j], a[j], b[j]);
    SMX_RSA_ADDC(c, 0u, 0u);
#else
    c = 0;
    for (int j = 0; j < N; j++) r[j] = add_carry(a[j], b[j], c);
#endif
    return c;
}

// r = a - b mod 2^(32N); returns all-ones when a < b (a borrow out), else
// zero. r may alias a or b.
template <int N>
SMX_HD u32 sub_n(u32 *r, const u32 *a, const u32 *b) {
    u32 m;
#ifdef SMX_RSA_CHAINS
    SMX_RSA_SUB_CC(r[0], a[0], b[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++) SMX_RSA_SUBC_CC(r[j], a[j], b[j]);
    SMX_RSA_SUBC(m, 0u, 0u);  // 0 - 0 - borrow: the mask
#else
    u32 br = 0;
    for (int j = 0; j < N; j++) r[j] = sub_borrow(a[j], b[j], br);
    m = 0u - br;
#endif
    return m;
}

// r = a + (b & mask); returns the carry out. Adds b or zero, in constant time.
template <int N>
SMX_HD u32 add_masked_n(u32 *r, const u32 *a, const u32 *b, u32 mask) {
    u32 bm[N];
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) bm[j] = b[j] & mask;
    return add_n<N>(r, a, bm);
}

// r += c (a single word), carrying through all N limbs; returns the carry.
template <int N>
SMX_HD u32 add_word_n(u32 *r, u32 c) {
#ifdef SMX_RSA_CHAINS
    SMX_RSA_ADD_CC(r[0], r[0], c);
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++) SMX_RSA_ADDC_CC(r[j], r[j], 0u);
    SMX_RSA_ADDC(c, 0u, 0u);
#else
    for (int j = 0; j < N; j++) r[j] = add_carry(r[j], 0, c);
#endif
    return c;
}

// r = select(mask, a, b) limb by limb: a where mask is all-ones.
template <int N>
SMX_HD void select_n(u32 *r, u32 mask, const u32 *a, const u32 *b) {
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) r[j] = select(mask, a[j], b[j]);
}

// t[0..N+2) += a[0..N) * b. The caller guarantees the sum fits in N+2 limbs.
// Device: a lo chain (mad.lo/madc.lo into t[0..N], carry into t[N], t[N+1])
// and a hi chain (mad.hi/madc.hi into t[1..N], carry into t[N+1]).
template <int N>
SMX_HD void mac_row(u32 *t, const u32 *a, u32 b) {
#ifdef SMX_RSA_CHAINS
    SMX_RSA_MAD_LO_CC(t[0], a[0], b, t[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++) SMX_RSA_MADC_LO_CC(t[j], a[j], b, t[j]);
    SMX_RSA_ADDC_CC(t[N], t[N], 0u);
    SMX_RSA_ADDC(t[N + 1], t[N + 1], 0u);
    SMX_RSA_MAD_HI_CC(t[1], a[0], b, t[1]);
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++) SMX_RSA_MADC_HI_CC(t[j + 1], a[j], b, t[j + 1]);
    SMX_RSA_ADDC(t[N + 1], t[N + 1], 0u);
#else
    u32 c = 0;
    for (int j = 0; j < N; j++) t[j] = mul_add(a[j], b, t[j], c);
    u32 c2 = 0;
    t[N] = add_carry(t[N], c, c2);
    t[N + 1] += c2;
#endif
}

#if defined(SMX_RSA_CHAINS)
// The first half of an even/odd row (mont_row, redc_row): t += a * b with
// the state of the previous row before its division by 2^32 (P the low
// accumulator with P[0] = 0, Q the high one at positions 1..N, c at N, x at
// N+1), the division done on the way. The caller has just folded P[1] into
// Q[0] (the new position 0) with a carry-setting add, whose carry belongs
// to position 1, where the high accumulator's chain starts here. The high
// accumulator's words move down two places inside its chain: each product
// is added to the word two up and written two down. Afterwards Q is the low
// accumulator (positions 0..N-1), P the high one, c at N, x at N+1.
template <int N>
SMX_HD void mac_shifted(u32 *P, u32 *Q, u32 &c, u32 &x, const u32 *a, u32 b) {
    SMX_RSA_UNROLL
    for (int k = 0; k + 2 < N; k += 2) {
        SMX_RSA_MADC_LO_CC(P[k], a[k + 1], b, P[k + 2]);
        SMX_RSA_MADC_HI_CC(P[k + 1], a[k + 1], b, P[k + 3]);
    }
    SMX_RSA_MADC_LO_CC(P[N - 2], a[N - 1], b, c);
    SMX_RSA_MADC_HI_CC(P[N - 1], a[N - 1], b, x);
    SMX_RSA_ADDC(x, 0u, 0u);
    // Low accumulator += even limbs of a times b.
    SMX_RSA_MAD_LO_CC(Q[0], a[0], b, Q[0]);
    SMX_RSA_MADC_HI_CC(Q[1], a[0], b, Q[1]);
    SMX_RSA_UNROLL
    for (int k = 2; k < N; k += 2) {
        SMX_RSA_MADC_LO_CC(Q[k], a[k], b, Q[k]);
        SMX_RSA_MADC_HI_CC(Q[k + 1], a[k], b, Q[k + 1]);
    }
    SMX_RSA_ADDC(c, 0u, 0u);
}

// One reduction row alone in the even/odd form (mont_sqr's rows): the fold
// of P[1] into Q[0], q from the new position 0 (a plain multiply: the
// fold's carry waits for the chain), then q * m added on the shift. Same
// state in and out as mont_row, the roles of P and Q swapped.
template <int N>
SMX_HD void redc_row(u32 *P, u32 *Q, u32 &c, u32 &x, const u32 *m, u32 m0) {
    SMX_RSA_ADD_CC(Q[0], Q[0], P[1]);
    const u32 q = Q[0] * m0;
    mac_shifted<N>(P, Q, c, x, m, q);
}
#endif

#if defined(SMX_RSA_CHAINS) && defined(SMX_RSA_WIDE)
// The "wide" form (programs that define SMX_RSA_WIDE: rsa_wide.cu, the
// `wide` RSA mapping). One CIOS row of mont_mul in the even/odd form: the row's
// running value is V = P' + 2^32 * Q' + 2^(32N) * c + 2^(32(N+1)) * x, and
// each limb product's lo and hi words land on two adjacent words of one
// accumulator, so they alternate in ONE carry chain (mad.lo.cc, madc.hi.cc,
// madc.lo.cc, ...) that ptxas fuses into one IMAD.WIDE.U32.X per product
// (separate lo and hi chains take four instructions per product: IMAD,
// IMAD.HI and two IADD3.X; scripts/kernel-stats.py shows both).
//
// On entry P and Q hold the previous row's value before its division by
// 2^32: P the words at even offsets from position 0 (P[0] = 0, the word
// the reduction cleared), Q at positions 1..N, c at position N, x at N+1.
// Dividing by 2^32 turns Q into the new low accumulator (plus P[1] at its
// bottom) and P, moved down two words, into the new high one; the moving
// happens inside the first chain (each product is added to the word two
// places up and written back two places down), so no word is copied. The
// caller alternates the roles of P and Q from row to row.
//
// On exit the row's value is in the same form with the roles swapped: Q
// the low accumulator (Q[0] = 0), P the high one (positions 1..N), c and x.
template <int N>
SMX_HD void mont_row(u32 *P, u32 *Q, u32 &c, u32 &x, const u32 *a, u32 b, const u32 *m,
                     u32 m0) {
    // Q[0] += P[1]; its carry belongs to position 1, the first word of the
    // high accumulator's chain, which follows at once.
    SMX_RSA_ADD_CC(Q[0], Q[0], P[1]);
    mac_shifted<N>(P, Q, c, x, a, b);
    // The reduction: q makes position 0 zero.
    const u32 q = Q[0] * m0;
    SMX_RSA_MAD_LO_CC(Q[0], m[0], q, Q[0]);
    SMX_RSA_MADC_HI_CC(Q[1], m[0], q, Q[1]);
    SMX_RSA_UNROLL
    for (int k = 2; k < N; k += 2) {
        SMX_RSA_MADC_LO_CC(Q[k], m[k], q, Q[k]);
        SMX_RSA_MADC_HI_CC(Q[k + 1], m[k], q, Q[k + 1]);
    }
    SMX_RSA_ADDC(c, c, 0u);
    SMX_RSA_MAD_LO_CC(P[0], m[1], q, P[0]);
    SMX_RSA_MADC_HI_CC(P[1], m[1], q, P[1]);
    SMX_RSA_UNROLL
    for (int k = 2; k < N; k += 2) {
        SMX_RSA_MADC_LO_CC(P[k], m[k + 1], q, P[k]);
        SMX_RSA_MADC_HI_CC(P[k + 1], m[k + 1], q, P[k + 1]);
    }
    SMX_RSA_ADDC(x, x, 0u);
}
#endif

// Montgomery multiplication (CIOS): r = a * b * 2^(-32N) mod m, for a, b < m,
// m odd with its top bit set (2^(32N-1) <= m < 2^(32N)), m0 = -m^-1 mod 2^32.
// r may alias a or b. The final subtraction is computed always and selected
// by mask.
template <int N>
SMX_HD void mont_mul(u32 *r, const u32 *a, const u32 *b, const u32 *m, u32 m0) {
#if defined(SMX_RSA_CHAINS) && defined(SMX_RSA_WIDE)
    // Rows in pairs so that P and Q swap back (mont_row); everything stays
    // in registers. Between rows the value is below 2m * 2^32 (CIOS), so c
    // and x stay below 3.
    static_assert(N % 2 == 0 && N >= 4, "the even/odd rows take an even limb count");
    u32 P[N], Q[N], c = 0, x = 0;
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) P[j] = Q[j] = 0;
    SMX_RSA_NO_UNROLL
    for (int i = 0; i < N; i += 2) {
        mont_row<N>(P, Q, c, x, a, b[i], m, m0);
        mont_row<N>(Q, P, c, x, a, b[i + 1], m, m0);
    }
    // The last division by 2^32: t = P / 2^32 + Q + c * 2^(32(N-1)) +
    // x * 2^(32N), with P the low accumulator after an even row count.
    u32 t[N], top;
    SMX_RSA_ADD_CC(t[0], P[1], Q[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j + 1 < N; j++) SMX_RSA_ADDC_CC(t[j], P[j + 1], Q[j]);
    SMX_RSA_ADDC_CC(t[N - 1], Q[N - 1], c);
    SMX_RSA_ADDC(top, x, 0u);
    u32 s[N];
    u32 borrow = sub_n<N>(s, t, m);
    // t < 2m: keep t when nothing is above its N words and t - m borrows.
    u32 keep = borrow & ~mask_from(top);
    select_n<N>(r, keep, t, s);
#else
    // t < 2m throughout, so N limbs plus one bit; t[N+1] takes the
    // transient overflow of an iteration.
    u32 t[N + 2];
    SMX_RSA_UNROLL
    for (int j = 0; j < N + 2; j++) t[j] = 0;
    SMX_RSA_NO_UNROLL
    for (int i = 0; i < N; i++) {
        mac_row<N>(t, a, b[i]);
        u32 q = t[0] * m0;
        mac_row<N>(t, m, q);  // t[0] becomes 0
        SMX_RSA_UNROLL
        for (int j = 0; j < N + 1; j++) t[j] = t[j + 1];
        t[N + 1] = 0;
    }
    u32 s[N];
    u32 borrow = sub_n<N>(s, t, m);
    // Keep t when t < m: no borrow from t - m and no top bit set.
    u32 keep = borrow & ~mask_from(t[N]);
    select_n<N>(r, keep, t, s);
#endif
}

// Squaring. 80 % of an exponentiation's Montgomery operations are
// squarings (four per 4-bit window), and a square needs only the N(N-1)/2
// cross products a_i a_j (i < j), doubled, plus the N squares a_i^2: about
// half of a product's N^2 limb products. mont_sqr computes the whole square
// first (sqr_wide), then reduces it; the reduction rows are mont_mul's
// q * m rows in the even/odd form. Per RSA-2048 half (N = 32) on sm_90
// SASS, with the key in constant memory as the kernels have it, a squaring
// issues ~3,300 instructions and ~3,100 multiply slots (a fused 64-bit
// multiply counted as two) against the `thread` mapping's mont_mul's ~8,700
// and 4,160 (scripts/kernel-stats.py rsa.cu --tree).
//
// The square is straight-line code: each row of cross products is shorter
// than the last, so no fixed-shape loop (with register arrays indexed by
// constants) can hold it. Its code grows as N^2/2 products; the exponent
// loop runs it from one place per CRT half.
#if defined(SMX_RSA_CHAINS)
// w[0..2N) = a^2. Cross products go to two accumulators by the parity of
// their position i + j, as in ec/field.cuh's mul_wide: w for even
// positions, o (word k at position k + 1) for odd ones, so every product
// fills an aligned word pair next to the pair of a_{j+2} a_i in ONE carry
// chain, which ptxas fuses into one IMAD.WIDE.U32.X per product. A row's
// carry goes to the word above its chain, where at most the previous row's
// carry is (rows start two positions apart and end one apart), so it stays
// below 3. Then w = 2 (w + o * 2^32) + sum a_i^2 2^(64 i), three chains.
template <int N>
SMX_HD void sqr_wide(u32 *w, const u32 *a) {
    u32 o[2 * N - 1];
    SMX_RSA_UNROLL
    for (int k = 0; k < 2 * N; k++) w[k] = 0;
    SMX_RSA_UNROLL
    for (int k = 0; k < 2 * N - 1; k++) o[k] = 0;
    SMX_RSA_UNROLL
    for (int i = 0; i + 1 < N; i++) {
        // Even positions: a_i a_j for j = i + 2, i + 4, ...
        if (i + 2 < N) {
            SMX_RSA_MAD_LO_CC(w[2 * i + 2], a[i + 2], a[i], w[2 * i + 2]);
            SMX_RSA_MADC_HI_CC(w[2 * i + 3], a[i + 2], a[i], w[2 * i + 3]);
            int j = i + 4;
            SMX_RSA_UNROLL
            for (; j < N; j += 2) {
                SMX_RSA_MADC_LO_CC(w[i + j], a[j], a[i], w[i + j]);
                SMX_RSA_MADC_HI_CC(w[i + j + 1], a[j], a[i], w[i + j + 1]);
            }
            // (past the top word nothing carries: the cross sum is < 2^(64N-1))
            if (i + j < 2 * N) SMX_RSA_ADDC(w[i + j], w[i + j], 0u);
        }
        // Odd positions: j = i + 1, i + 3, ...
        SMX_RSA_MAD_LO_CC(o[2 * i], a[i + 1], a[i], o[2 * i]);
        SMX_RSA_MADC_HI_CC(o[2 * i + 1], a[i + 1], a[i], o[2 * i + 1]);
        int j = i + 3;
        SMX_RSA_UNROLL
        for (; j < N; j += 2) {
            SMX_RSA_MADC_LO_CC(o[i + j - 1], a[j], a[i], o[i + j - 1]);
            SMX_RSA_MADC_HI_CC(o[i + j], a[j], a[i], o[i + j]);
        }
        if (i + j - 1 < 2 * N - 1) SMX_RSA_ADDC(o[i + j - 1], o[i + j - 1], 0u);
    }
    // The cross sum, doubled (below 2^(64N) after doubling: no carry out).
    SMX_RSA_ADD_CC(w[1], w[1], o[0]);
    SMX_RSA_UNROLL
    for (int k = 2; k < 2 * N - 1; k++) SMX_RSA_ADDC_CC(w[k], w[k], o[k - 1]);
    SMX_RSA_ADDC(w[2 * N - 1], w[2 * N - 1], o[2 * N - 2]);
    SMX_RSA_ADD_CC(w[0], w[0], w[0]);
    SMX_RSA_UNROLL
    for (int k = 1; k < 2 * N - 1; k++) SMX_RSA_ADDC_CC(w[k], w[k], w[k]);
    SMX_RSA_ADDC(w[2 * N - 1], w[2 * N - 1], w[2 * N - 1]);
    // The squares on the even pairs (a^2 < 2^(64N): no carry out).
    SMX_RSA_MAD_LO_CC(w[0], a[0], a[0], w[0]);
    SMX_RSA_MADC_HI_CC(w[1], a[0], a[0], w[1]);
    SMX_RSA_UNROLL
    for (int i = 1; i < N; i++) {
        SMX_RSA_MADC_LO_CC(w[2 * i], a[i], a[i], w[2 * i]);
        SMX_RSA_MADC_HI_CC(w[2 * i + 1], a[i], a[i], w[2 * i + 1]);
    }
}
#endif


// r = a^2 * 2^(-32N) mod m, for a < m, with mont_mul's conditions on m. r
// may alias a. With T = a^2 = T_H R + T_L: the N reduction rows run over
// T_L alone, giving (T_L + Q m) / R <= m (T_L < R, Q < R), then T_H < m is
// added: below 2m, so one masked subtraction finishes. Without the carry
// chains (the portable host build) this is mont_mul(a, a).
//
// The rows are in the even/odd form (redc_row), so each q * m_k can be one
// fused multiply-add; ptxas fuses them only when m is not in vector
// registers: the kernels read the key from constant memory (rsa.cu), where
// m sits in uniform registers.
template <int N>
SMX_HD void mont_sqr(u32 *r, const u32 *a, const u32 *m, u32 m0) {
#if defined(SMX_RSA_CHAINS)
    static_assert(N % 2 == 0 && N >= 4, "the even/odd rows take an even limb count");
    u32 w[2 * N];
    sqr_wide<N>(w, a);
    // T_L * 2^32 as the state before a division: all of it in the high
    // accumulator (positions 1..N).
    u32 P[N], Q[N], c = 0, x = 0;
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) {
        P[j] = 0;
        Q[j] = w[j];
    }
    SMX_RSA_NO_UNROLL
    for (int i = 0; i < N; i += 2) {
        redc_row<N>(P, Q, c, x, m, m0);
        redc_row<N>(Q, P, c, x, m, m0);
    }
    // The last division (as mont_mul's wide form), then + T_H.
    u32 t[N], top;
    SMX_RSA_ADD_CC(t[0], P[1], Q[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j + 1 < N; j++) SMX_RSA_ADDC_CC(t[j], P[j + 1], Q[j]);
    SMX_RSA_ADDC_CC(t[N - 1], Q[N - 1], c);
    SMX_RSA_ADDC(top, x, 0u);
    SMX_RSA_ADD_CC(t[0], t[0], w[N]);
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++) SMX_RSA_ADDC_CC(t[j], t[j], w[N + j]);
    SMX_RSA_ADDC(top, top, 0u);
    u32 s[N];
    u32 borrow = sub_n<N>(s, t, m);
    // Keep t when nothing is above its N words and t - m borrows.
    u32 keep = borrow & ~mask_from(top);
    select_n<N>(r, keep, t, s);
#else
    mont_mul<N>(r, a, a, m, m0);
#endif
}

// r = a mod m for a < 2m with a < 2^(32N) (e.g. any N-limb a when m has its
// top bit set): one subtraction, selected by mask.
template <int N>
SMX_HD void reduce_once(u32 *r, const u32 *a, const u32 *m) {
    u32 s[N];
    u32 borrow = sub_n<N>(s, a, m);
    select_n<N>(r, borrow, a, s);
}

// r = (a + b) mod m for a, b < m.
template <int N>
SMX_HD void mod_add(u32 *r, const u32 *a, const u32 *b, const u32 *m) {
    u32 s[N], d[N];
    u32 carry = add_n<N>(s, a, b);
    u32 borrow = sub_n<N>(d, s, m);
    select_n<N>(r, borrow & ~mask_from(carry), s, d);
}

// r = (a - b) mod m for a, b < m.
template <int N>
SMX_HD void mod_sub(u32 *r, const u32 *a, const u32 *b, const u32 *m) {
    u32 d[N];
    u32 borrow = sub_n<N>(d, a, b);
    add_masked_n<N>(r, d, m, borrow);
}

// r[0..2N) = a[0..N) * b[0..N), schoolbook, row by row: each row's lowest
// limb is final once the row is added.
template <int N>
SMX_HD void mul_wide(u32 *r, const u32 *a, const u32 *b) {
    u32 t[N + 2];
    SMX_RSA_UNROLL
    for (int j = 0; j < N + 2; j++) t[j] = 0;
    SMX_RSA_NO_UNROLL
    for (int i = 0; i < N; i++) {
        mac_row<N>(t, a, b[i]);
        r[i] = t[0];
        SMX_RSA_UNROLL
        for (int j = 0; j < N + 1; j++) t[j] = t[j + 1];
        t[N + 1] = 0;
    }
    copy_n<N>(r + N, t);
}

// All-ones when a == b (N limbs), in constant time.
template <int N>
SMX_HD u32 eq_n(const u32 *a, const u32 *b) {
    u32 d = 0;
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) d |= a[j] ^ b[j];
    return mask_is_zero(d);
}

}  // namespace rsa
}  // namespace smx
