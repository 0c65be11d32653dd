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
#ifdef SMX_PTX
    asm volatile("add.cc.u32 %0, %1, %2;" : "=r"(r[0]) : "r"(a[0]), "r"(b[0]));
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++)
        asm volatile("addc.cc.u32 %0, %1, %2;" : "=r"(r[j]) : "r"(a[j]), "r"(b[j]));
    asm volatile("addc.u32 %0, 0, 0;" : "=r"(c));
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
#ifdef SMX_PTX
    asm volatile("sub.cc.u32 %0, %1, %2;" : "=r"(r[0]) : "r"(a[0]), "r"(b[0]));
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++)
        asm volatile("subc.cc.u32 %0, %1, %2;" : "=r"(r[j]) : "r"(a[j]), "r"(b[j]));
    asm volatile("subc.u32 %0, 0, 0;" : "=r"(m));
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
#ifdef SMX_PTX
    asm volatile("add.cc.u32 %0, %0, %1;" : "+r"(r[0]) : "r"(c));
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++) asm volatile("addc.cc.u32 %0, %0, 0;" : "+r"(r[j]));
    asm volatile("addc.u32 %0, 0, 0;" : "=r"(c));
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
#ifdef SMX_PTX
    asm volatile("mad.lo.cc.u32 %0, %1, %2, %0;" : "+r"(t[0]) : "r"(a[0]), "r"(b));
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++)
        asm volatile("madc.lo.cc.u32 %0, %1, %2, %0;" : "+r"(t[j]) : "r"(a[j]), "r"(b));
    asm volatile("addc.cc.u32 %0, %0, 0;" : "+r"(t[N]));
    asm volatile("addc.u32 %0, %0, 0;" : "+r"(t[N + 1]));
    asm volatile("mad.hi.cc.u32 %0, %1, %2, %0;" : "+r"(t[1]) : "r"(a[0]), "r"(b));
    SMX_RSA_UNROLL
    for (int j = 1; j < N; j++)
        asm volatile("madc.hi.cc.u32 %0, %1, %2, %0;" : "+r"(t[j + 1]) : "r"(a[j]), "r"(b));
    asm volatile("addc.u32 %0, %0, 0;" : "+r"(t[N + 1]));
#else
    u32 c = 0;
    for (int j = 0; j < N; j++) t[j] = mul_add(a[j], b, t[j], c);
    u32 c2 = 0;
    t[N] = add_carry(t[N], c, c2);
    t[N + 1] += c2;
#endif
}

// Montgomery multiplication (CIOS): r = a * b * 2^(-32N) mod m, for a, b < m,
// m odd with its top bit set (2^(32N-1) <= m < 2^(32N)), m0 = -m^-1 mod 2^32.
// r may alias a or b. The final subtraction is computed always and selected
// by mask.
template <int N>
SMX_HD void mont_mul(u32 *r, const u32 *a, const u32 *b, const u32 *m, u32 m0) {
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
