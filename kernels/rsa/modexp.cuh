// Modular exponentiation.
//
// pow_ct: secret exponent, constant time. Fixed 4-bit windows over all
// 32N exponent bits (the exponent length is public: the size of the
// modulus), the table entry chosen by a masked scan over all 16 entries, so
// no branch, loop bound or memory address depends on the exponent or on
// intermediate values.
//
// Window 4 rather than 5: for 32N = 1024..2048 exponent bits, w = 5 saves
// about 3% of the multiplications (precompute 30 + 205 vs 14 + 256 for
// 1024 bits) but doubles the table (4 KiB instead of 2 KiB per thread at
// N = 32, 8 KiB at N = 64, all thread-local) and doubles the masked scan per
// window (32N words read instead of 16N), which eats the saving; 4 also
// divides every exponent length, so there is no partial window.
//
// pow_public: public exponent (e < 2^32), plain left-to-right
// square-and-multiply, variable time.
#pragma once

#include "mont.cuh"

namespace smx {
namespace rsa {

constexpr int kWindow = 4;
constexpr int kTable = 1 << kWindow;

// r = table[idx] by reading every entry and keeping the one whose index
// matches under a mask.
template <int N>
SMX_HD void ct_lookup(u32 *r, const u32 (*table)[N], u32 idx) {
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) r[j] = 0;
    SMX_RSA_NO_UNROLL
    for (int k = 0; k < kTable; k++) {
        u32 mk = mask_eq((u32)k, idx);
        SMX_RSA_UNROLL
        for (int j = 0; j < N; j++) r[j] |= table[k][j] & mk;
    }
}

// Window `w` (0 = least significant) of an N-limb exponent. The address
// depends on w only.
template <int N>
SMX_HD u32 window(const u32 *exp, int w) {
    return (exp[w / (32 / kWindow)] >> ((w % (32 / kWindow)) * kWindow)) & (kTable - 1);
}

// x^exp, exp an N-limb secret exponent; x and the result in Montgomery form.
template <int N>
SMX_HD mont_t<N> pow_ct(const mont_t<N> &x, const u32 *exp) {
    constexpr int W = 32 * N / kWindow;
    u32 table[kTable][N];
    mont_t<N> acc = x.F.one();
    copy_n<N>(table[0], acc.v);
    copy_n<N>(table[1], x.v);
    SMX_RSA_NO_UNROLL
    for (int k = 2; k < kTable; k++) mont_mul<N>(table[k], table[k - 1], x.v, x.F.m, x.F.m0);

    mont_t<N> y = acc;
    ct_lookup<N>(acc.v, table, window<N>(exp, W - 1));
    SMX_RSA_NO_UNROLL
    for (int w = W - 2; w >= 0; w--) {
        SMX_RSA_NO_UNROLL
        for (int s = 0; s < kWindow; s++) acc.sqr();
        ct_lookup<N>(y.v, table, window<N>(exp, w));
        acc *= y;
    }
    return acc;
}

// x^e for a public e; x and the result in Montgomery form. Variable time.
template <int N>
SMX_HD mont_t<N> pow_public(const mont_t<N> &x, u32 e) {
    mont_t<N> acc = x.F.one();
    if (e == 0) return acc;
    int top = 31;
    while (!((e >> top) & 1)) top--;
    acc = x;
    for (int b = top - 1; b >= 0; b--) {
        // A product, not sqr(): the check squares 17 times per signature
        // (e = 65537) at 2N limbs, where sqr's straight-line square would
        // add ~(2N)^2 / 2 products of code to a kernel at its register
        // limit for a saving of ~1 % of the work.
        acc *= acc;
        if ((e >> b) & 1) acc *= x;
    }
    return acc;
}

}  // namespace rsa
}  // namespace smx
