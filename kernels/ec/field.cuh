// Montgomery arithmetic modulo a fixed odd modulus of L 32-bit limbs: the
// field of P-256/P-384 coordinates (mod p) and their scalars (mod n).
//
// Reduction: Montgomery (CIOS, one reduction row per multiplier limb) for
// both p and n. p256 and p384 are generalized Mersenne primes, but their
// special-form (Solinas) reduction mixes signed 32-bit terms whose carries
// have to be normalized with extra passes; on a GPU that is a long chain of
// add/sub with carries and a final multi-step correction. CIOS is one regular
// mad.lo/madc.hi chain per row, the same code for p and n, and for both
// primes -p^-1 mod 2^32 = 1 (their low limb is 0xffffffff), so the per-row
// Montgomery factor m is the low word itself: no extra multiply for p. There
// is no GPU here to measure the alternative; this is the choice we expect to
// be fastest and it is the simplest to keep constant time.
//
// Constant time: no branch or address depends on an operand. The final
// subtraction is always computed and kept by mask (select). Exponents
// (Fermat inverses) are public constants of the curve: the sequence of
// operations and the table indices they pick depend on the modulus only.
//
// On the device (SMX_PTX) the multiply-accumulate rows use PTX carry chains
// (mad.lo.cc / madc.lo.cc / madc.hi.cc / addc); the host build takes the
// portable 64-bit form from common.cuh. Both compute the unique fully reduced
// result in [0, m), so they agree bit for bit.
#pragma once

#include "common.cuh"

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define EC_FN __host__ __device__ __forceinline__
// Curve constants live in constant memory: every thread of a warp reads the
// same word, which the constant cache broadcasts.
#define EC_CONST __constant__ const
// Point operations and exponentiations are real calls on the device: with
// everything inlined the program is ~100k instructions and NVRTC takes
// minutes; one call per point operation costs a few local-memory words
// against ~11 inlined field multiplications in its body.
#define EC_CALL __host__ __device__ __noinline__
#else
#define EC_CALL inline
#define EC_FN inline
#define EC_CONST static const
#endif

namespace smx {
namespace ec {

// All-ones when the L-limb value is zero.
template <int L> EC_FN u32 limbs_zero_mask(const u32 *a) {
    u32 acc = 0;
    for (int j = 0; j < L; j++) acc |= a[j];
    return mask_is_zero(acc);
}

// out = a - b, returns the borrow (0 or 1).
template <int L> EC_FN u32 limbs_sub(u32 *out, const u32 *a, const u32 *b) {
    u32 borrow = 0;
    for (int j = 0; j < L; j++) out[j] = sub_borrow(a[j], b[j], borrow);
    return borrow;
}

// out = mask ? a : b, limb by limb.
template <int L> EC_FN void limbs_select(u32 *out, u32 mask, const u32 *a, const u32 *b) {
    for (int j = 0; j < L; j++) out[j] = select(mask, a[j], b[j]);
}

// a mod m for a < 2m (one masked subtraction), in place.
template <int L> EC_FN void limbs_reduce_once(u32 *a, const u32 *m) {
    u32 t[L];
    u32 borrow = limbs_sub<L>(t, a, m);
    limbs_select<L>(a, mask_is_zero(borrow), t, a);
}

// Variable-time comparison a < b, for public values only (check kernel).
template <int L> EC_FN bool limbs_lt_public(const u32 *a, const u32 *b) {
    u32 t[L];
    return limbs_sub<L>(t, a, b) != 0;
}

// P describes the modulus: P::L limbs, P::mod() the modulus, P::m0() =
// -mod^-1 mod 2^32, P::rr() = R^2 mod m, P::one() = R mod m, P::exp_inv() =
// m - 2 (all little-endian limbs, R = 2^(32 L)).
template <class P> struct mont_t {
    enum { L = P::L };
    u32 v[L];

    EC_FN static mont_t zero() {
        mont_t r;
        for (int j = 0; j < L; j++) r.v[j] = 0;
        return r;
    }
    // 1 in Montgomery form.
    EC_FN static mont_t one() {
        mont_t r;
        const u32 *o = P::one();
        for (int j = 0; j < L; j++) r.v[j] = o[j];
        return r;
    }
    // Raw limbs, already in Montgomery form (table entries, constants).
    EC_FN static mont_t raw(const u32 *a, u32 stride = 1) {
        mont_t r;
        for (int j = 0; j < L; j++) r.v[j] = a[j * stride];
        return r;
    }
    // An integer a < 2^(32 L) (not necessarily < m) into Montgomery form,
    // reduced mod m: a * R^2 / R < 2m before the final subtraction.
    EC_FN static mont_t from_int(const u32 *a) {
        mont_t x = raw(a);
        return x * raw(P::rr());
    }
    // Back to an ordinary integer in [0, m).
    EC_FN void to_int(u32 *out) const {
        mont_t o = zero();
        o.v[0] = 1;
        mont_t r = *this * o;
        for (int j = 0; j < L; j++) out[j] = r.v[j];
    }

    EC_FN u32 is_zero() const { return limbs_zero_mask<L>(v); }

    EC_FN static mont_t csel(u32 mask, const mont_t &a, const mont_t &b) {
        mont_t r;
        limbs_select<L>(r.v, mask, a.v, b.v);
        return r;
    }

    EC_FN mont_t operator+(const mont_t &b) const {
        const u32 *m = P::mod();
        mont_t r, t;
        u32 carry = 0, borrow = 0;
        for (int j = 0; j < L; j++) r.v[j] = add_carry(v[j], b.v[j], carry);
        for (int j = 0; j < L; j++) t.v[j] = sub_borrow(r.v[j], m[j], borrow);
        // keep r - m when the sum carried out or did not borrow
        (void)sub_borrow(carry, 0, borrow);
        return csel(mask_is_zero(borrow), t, r);
    }

    EC_FN mont_t operator-(const mont_t &b) const {
        const u32 *m = P::mod();
        mont_t r;
        u32 borrow = limbs_sub<L>(r.v, v, b.v);
        u32 mask = 0u - borrow, carry = 0;
        for (int j = 0; j < L; j++) r.v[j] = add_carry(r.v[j], m[j] & mask, carry);
        return r;
    }

    EC_FN mont_t operator-() const { return zero() - *this; }
    EC_FN mont_t dbl() const { return *this + *this; }
    EC_FN mont_t sqr() const { return *this * *this; }
    EC_FN mont_t &operator+=(const mont_t &b) { return *this = *this + b; }
    EC_FN mont_t &operator-=(const mont_t &b) { return *this = *this - b; }
    EC_FN mont_t &operator*=(const mont_t &b) { return *this = *this * b; }

    // Montgomery product a * b / R mod m, for a < R and b < m (then the
    // CIOS accumulator stays below 2m and one masked subtraction reduces).
    EC_FN mont_t operator*(const mont_t &b) const {
        const u32 *m = P::mod();
        const u32 m0 = P::m0();
        u32 t[L + 2];
        for (int j = 0; j < L + 2; j++) t[j] = 0;
#if defined(SMX_PTX)
#pragma unroll
        for (int i = 0; i < L; i++) {
            u32 bi = b.v[i];
            // t += a * b_i: low halves at j, high halves at j + 1
            asm volatile("mad.lo.cc.u32 %0, %1, %2, %0;" : "+r"(t[0]) : "r"(v[0]), "r"(bi));
#pragma unroll
            for (int j = 1; j < L; j++)
                asm volatile("madc.lo.cc.u32 %0, %1, %2, %0;" : "+r"(t[j]) : "r"(v[j]), "r"(bi));
            asm volatile("addc.cc.u32 %0, %0, 0;" : "+r"(t[L]));
            asm volatile("addc.u32 %0, %0, 0;" : "+r"(t[L + 1]));
            asm volatile("mad.hi.cc.u32 %0, %1, %2, %0;" : "+r"(t[1]) : "r"(v[0]), "r"(bi));
#pragma unroll
            for (int j = 1; j < L; j++)
                asm volatile("madc.hi.cc.u32 %0, %1, %2, %0;" : "+r"(t[j + 1]) : "r"(v[j]), "r"(bi));
            asm volatile("addc.u32 %0, %0, 0;" : "+r"(t[L + 1]));
            // t += (t_0 * m0 mod 2^32) * m, which clears t_0; then t >>= 32
            u32 q = t[0] * m0;
            asm volatile("mad.lo.cc.u32 %0, %1, %2, %0;" : "+r"(t[0]) : "r"(q), "r"(m[0]));
#pragma unroll
            for (int j = 1; j < L; j++)
                asm volatile("madc.lo.cc.u32 %0, %1, %2, %0;" : "+r"(t[j]) : "r"(q), "r"(m[j]));
            asm volatile("addc.cc.u32 %0, %0, 0;" : "+r"(t[L]));
            asm volatile("addc.u32 %0, %0, 0;" : "+r"(t[L + 1]));
            asm volatile("mad.hi.cc.u32 %0, %1, %2, %0;" : "+r"(t[1]) : "r"(q), "r"(m[0]));
#pragma unroll
            for (int j = 1; j < L; j++)
                asm volatile("madc.hi.cc.u32 %0, %1, %2, %0;" : "+r"(t[j + 1]) : "r"(q), "r"(m[j]));
            asm volatile("addc.u32 %0, %0, 0;" : "+r"(t[L + 1]));
#pragma unroll
            for (int j = 0; j <= L; j++) t[j] = t[j + 1];
            t[L + 1] = 0;
        }
#else
        for (int i = 0; i < L; i++) {
            u32 bi = b.v[i], c = 0;
            for (int j = 0; j < L; j++) t[j] = mul_add(v[j], bi, t[j], c);
            u32 c2 = 0;
            t[L] = add_carry(t[L], c, c2);
            t[L + 1] = c2;
            u32 q = t[0] * m0;
            c = 0;
            (void)mul_add(q, m[0], t[0], c);
            for (int j = 1; j < L; j++) t[j - 1] = mul_add(q, m[j], t[j], c);
            c2 = 0;
            t[L - 1] = add_carry(t[L], c, c2);
            t[L] = t[L + 1] + c2;
        }
#endif
        // t < 2m: subtract m unless that borrows past the top word
        mont_t r, s;
        u32 borrow = 0;
        for (int j = 0; j < L; j++) {
            r.v[j] = t[j];
            s.v[j] = sub_borrow(t[j], m[j], borrow);
        }
        (void)sub_borrow(t[L], 0, borrow);
        return csel(mask_is_zero(borrow), s, r);
    }

    // this^e for a public exponent e (L limbs): fixed 4-bit windows, the
    // window digits come from e, never from the base, so the operation
    // sequence and the table slots read are the same for every base.
    EC_CALL mont_t pow_public(const u32 *e) const {
        mont_t tab[16];
        tab[0] = one();
        tab[1] = *this;
        for (int i = 2; i < 16; i++) tab[i] = tab[i - 1] * *this;
        mont_t r = one();
        for (int w = 8 * L - 1; w >= 0; w--) {
            r = r.sqr();
            r = r.sqr();
            r = r.sqr();
            r = r.sqr();
            u32 digit = (e[w >> 3] >> ((w & 7) * 4)) & 15;
            r = r * tab[digit];
        }
        return r;
    }

    // Fermat: this^(m-2); the inverse of zero is zero.
    EC_FN mont_t inv() const { return pow_public(P::exp_inv()); }
};

}  // namespace ec
}  // namespace smx
