// Numbers modulo a run-time odd modulus in Montgomery form, as a type whose
// operators hide the carry chains (in the style of sppark's ff/mont_t.cuh,
// whose moduli are compile-time constants; ours come from the key).
//
//   Field<N> F{m, rr, m0};          // the modulus and its constants
//   mont_t<N> x = F.to_mont(a);     // a * R mod m, R = 2^(32N)
//   x *= y; x.sqr(); x - y; x + y;  // all mod m, constant time
//   x.to_plain(out);                // x * R^-1 mod m
//
// The modulus must be odd with its top bit set (2^(32N-1) <= m < 2^(32N)):
// then every N-limb value is below 2m and reduces with one masked
// subtraction. N is the limb count: 32, 48, 64 for the CRT halves of RSA
// 2048/3072/4096, twice that for the public modulus.
#pragma once

#include "arith.cuh"

namespace smx {
namespace rsa {

template <int N>
struct mont_t;

// A modulus and its Montgomery constants. The pointers usually point into
// the key blob (global memory on the device: every thread of a batch reads
// the same words).
template <int N>
struct Field {
    const u32 *m;   // the modulus, N limbs
    const u32 *rr;  // R^2 mod m
    u32 m0;         // -m^-1 mod 2^32

    // a * R mod m, for any N-limb a (reduced first).
    SMX_RSA_HDM mont_t<N> to_mont(const u32 *a) const;
    // R mod m, the Montgomery form of 1.
    SMX_RSA_HDM mont_t<N> one() const;
};

template <int N>
struct mont_t {
    u32 v[N];
    Field<N> F;  // by value: the kernels' key pointers stay visible as constant memory

    SMX_RSA_HDM mont_t &operator*=(const mont_t &b) {
        mont_mul<N>(v, v, b.v, F.m, F.m0);
        return *this;
    }
    SMX_RSA_HDM friend mont_t operator*(mont_t a, const mont_t &b) { return a *= b; }
    // The square (arith.cuh's mont_sqr: the cross products once, doubled).
    SMX_RSA_HDM mont_t &sqr() {
        mont_sqr<N>(v, v, F.m, F.m0);
        return *this;
    }
    SMX_RSA_HDM friend mont_t operator+(mont_t a, const mont_t &b) {
        mod_add<N>(a.v, a.v, b.v, a.F.m);
        return a;
    }
    SMX_RSA_HDM friend mont_t operator-(mont_t a, const mont_t &b) {
        mod_sub<N>(a.v, a.v, b.v, a.F.m);
        return a;
    }
    // out = this * R^-1 mod m: the plain value.
    SMX_RSA_HDM void to_plain(u32 *out) const {
        u32 one[N];
        SMX_RSA_UNROLL
        for (int j = 0; j < N; j++) one[j] = j == 0;
        mont_mul<N>(out, v, one, F.m, F.m0);
    }
    // out = this * b * R^-1 mod m for a plain b < m: the plain product of
    // the value this represents and b.
    SMX_RSA_HDM void mul_plain(u32 *out, const u32 *b) const { mont_mul<N>(out, v, b, F.m, F.m0); }
};

template <int N>
SMX_RSA_HDM mont_t<N> Field<N>::to_mont(const u32 *a) const {
    mont_t<N> x;
    x.F = *this;
    reduce_once<N>(x.v, a, m);
    mont_mul<N>(x.v, x.v, rr, m, m0);
    return x;
}

template <int N>
SMX_RSA_HDM mont_t<N> Field<N>::one() const {
    // R mod m = R - m (m > R/2): the two's complement of m.
    mont_t<N> x;
    x.F = *this;
    u32 zero[N];
    SMX_RSA_UNROLL
    for (int j = 0; j < N; j++) zero[j] = 0;
    sub_n<N>(x.v, zero, m);
    return x;
}

}  // namespace rsa
}  // namespace smx
