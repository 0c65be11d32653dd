// Montgomery arithmetic modulo a fixed odd modulus of L 32-bit limbs: the
// field of P-256/P-384 coordinates (mod p) and their scalars (mod n).
//
// Reduction: Montgomery, one reduction row per limb, for both p and n.
// Each row adds q * m, q = t_0 * (-m^-1 mod 2^32), to make the
// low word zero. For a general modulus (the group orders, Ed25519's p) that
// is a row of limb products like a * b_i. For p256 and p384 the low limb is
// 0xffffffff, so q = t_0, and m + 1 is a sum of a few signed powers of
// 2^32: q * m = q * (m + 1) - q, where -q cancels t_0 exactly and q * (m +
// 1) is q added or subtracted at a few word positions. Those rows
// (mont_reduce, specialised in curves.cuh and ed25519/field.cuh) are short
// add/sub carry chains with no multiply. The value is the same as the
// generic row's, so everything downstream is unchanged. (A full Solinas
// reduction of the 2L-word product would also avoid the multiplies, but its
// signed terms need normalising passes and a multi-step final correction;
// the Montgomery form keeps one code path, the same for p and n, with one
// masked final subtraction.)
//
// Constant time: no branch or address depends on an operand. The final
// subtraction is always computed and kept by mask (select). Exponents
// (Fermat inverses) are public constants of the curve: the sequence of
// operations and the table indices they pick depend on the modulus only.
//
// The product a * b comes first, whole (mul_wide: every limb product one
// fused IMAD.WIDE.U32.X on sm_90), then the reduction rows slide over it
// (redc). Measured on sm_90 SASS (scripts/kernel-stats.py --functions,
// NVRTC 13.0), a P-256 mixed point addition (11 multiplications) went from
// 8,386 instructions with separate lo/hi chains and product rows in the
// reduction to 4,449, and the doubling from 8,204 to 4,368.
//
// Everything is PTX carry chains (mad.lo.cc / madc.lo.cc / madc.hi.cc /
// addc / sub.cc), additions and subtractions included. On the device each
// is one instruction; the host build runs the same chains through a model
// of the carry flag (namespace cc), so every host test, the ctgrind runs
// included, executes the device's arithmetic step for step.
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
#define EC_UNROLL _Pragma("unroll")
#else
#define EC_CALL inline
#define EC_UNROLL
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

// Variable-time comparison a == b, for public values only (check kernel).
template <int L> EC_FN bool limbs_equal_public(const u32 *a, const u32 *b) {
    u32 diff = 0;
    for (int j = 0; j < L; j++) diff |= a[j] ^ b[j];
    return diff == 0;
}

// Variable-time comparison a < b, for public values only (check kernel).
template <int L> EC_FN bool limbs_lt_public(const u32 *a, const u32 *b) {
    u32 t[L];
    return limbs_sub<L>(t, a, b) != 0;
}

// PTX carry-chain steps, d += a * b (low or high half) or d -= a, with the
// carry flag CC.CF in / out as the mnemonic says. On the device each is one
// instruction (consecutive asm volatile statements keep CC.CF between them,
// as sppark relies on); on the host a thread-local flag models it,
// branch-free, so valgrind's ctgrind check applies to these very chains.
namespace cc {
#if defined(SMX_PTX)
EC_FN void mad_lo_cc(u32 &d, u32 a, u32 b) { asm volatile("mad.lo.cc.u32 %0, %1, %2, %0;" : "+r"(d) : "r"(a), "r"(b)); }
EC_FN void madc_lo_cc(u32 &d, u32 a, u32 b) { asm volatile("madc.lo.cc.u32 %0, %1, %2, %0;" : "+r"(d) : "r"(a), "r"(b)); }
EC_FN void mad_hi_cc(u32 &d, u32 a, u32 b) { asm volatile("mad.hi.cc.u32 %0, %1, %2, %0;" : "+r"(d) : "r"(a), "r"(b)); }
EC_FN void madc_hi_cc(u32 &d, u32 a, u32 b) { asm volatile("madc.hi.cc.u32 %0, %1, %2, %0;" : "+r"(d) : "r"(a), "r"(b)); }
EC_FN void add_cc(u32 &d, u32 a) { asm volatile("add.cc.u32 %0, %0, %1;" : "+r"(d) : "r"(a)); }
EC_FN void addc_cc(u32 &d, u32 a) { asm volatile("addc.cc.u32 %0, %0, %1;" : "+r"(d) : "r"(a)); }
EC_FN void addc(u32 &d, u32 a) { asm volatile("addc.u32 %0, %0, %1;" : "+r"(d) : "r"(a)); }
EC_FN void sub_cc(u32 &d, u32 a) { asm volatile("sub.cc.u32 %0, %0, %1;" : "+r"(d) : "r"(a)); }
EC_FN void subc_cc(u32 &d, u32 a) { asm volatile("subc.cc.u32 %0, %0, %1;" : "+r"(d) : "r"(a)); }
EC_FN void subc(u32 &d, u32 a) { asm volatile("subc.u32 %0, %0, %1;" : "+r"(d) : "r"(a)); }
#else
inline u32 &flag() {
    static thread_local u32 cf;
    return cf;
}
inline void step(u32 &d, u64 add, u32 cin, bool set) {
    u64 t = (u64)d + add + cin;
    d = (u32)t;
    if (set) flag() = (u32)(t >> 32);
}
inline void back(u32 &d, u32 a, u32 bin, bool set) {
    u64 t = (u64)d - a - bin;
    d = (u32)t;
    if (set) flag() = (u32)(t >> 63);
}
inline void mad_lo_cc(u32 &d, u32 a, u32 b) { step(d, (u32)(a * b), 0, true); }
inline void madc_lo_cc(u32 &d, u32 a, u32 b) { step(d, (u32)(a * b), flag(), true); }
inline void mad_hi_cc(u32 &d, u32 a, u32 b) { step(d, (u32)((u64)a * b >> 32), 0, true); }
inline void madc_hi_cc(u32 &d, u32 a, u32 b) { step(d, (u32)((u64)a * b >> 32), flag(), true); }
inline void add_cc(u32 &d, u32 a) { step(d, a, 0, true); }
inline void addc_cc(u32 &d, u32 a) { step(d, a, flag(), true); }
inline void addc(u32 &d, u32 a) { step(d, a, flag(), false); }
inline void sub_cc(u32 &d, u32 a) { back(d, a, 0, true); }
inline void subc_cc(u32 &d, u32 a) { back(d, a, flag(), true); }
inline void subc(u32 &d, u32 a) { back(d, a, flag(), false); }
#endif
}  // namespace cc

// The reduction step of a Montgomery row for the modulus P: with
// q = t_0 * P::m0(), words 1 .. L+1 of t become those of t + q * m (whose
// word 0 is zero; the caller shifts t down one word). This is the general
// row of limb products; curves.cuh specialises it for moduli of a special
// form.
template <class P> struct mont_reduce {
    EC_FN static void add_qm(u32 *t, u32 q) {
        enum { L = P::L };
        const u32 *m = P::mod();
        cc::mad_lo_cc(t[0], q, m[0]);
EC_UNROLL
        for (int j = 1; j < L; j++) cc::madc_lo_cc(t[j], q, m[j]);
        cc::addc_cc(t[L], 0);
        cc::addc(t[L + 1], 0);
        cc::mad_hi_cc(t[1], q, m[0]);
EC_UNROLL
        for (int j = 1; j < L; j++) cc::madc_hi_cc(t[j + 1], q, m[j]);
        cc::addc(t[L + 1], 0);
    }
};

// w[0..2L) = a * b, for even L. Row i's limb products a_j b_i go to two
// accumulators by the parity of their position i + j: w itself for even
// positions, o (word k at position k + 1) for odd ones. Each product then
// fills an aligned pair of words (even index, odd index) of one
// accumulator, next to the pair of a_{j+2} b_i, so each row of each
// accumulator is ONE chain (mad.lo.cc, madc.hi.cc, madc.lo.cc, ...) whose
// lo/hi pairs ptxas fuses into one IMAD.WIDE.U32.X per product, where
// separate lo and hi chains take four instructions per product (IMAD,
// IMAD.HI, two IADD3.X) and pairs at odd offsets cost register moves.
// A row's carry goes to the word above its chain, which no earlier row has
// used as a chain word (at most the previous row's carry is there, so it
// stays below 3); w + o * 2^32 is added once at the end. The RSA `wide`
// mapping's even/odd rows (rsa/arith.cuh) are the same idea inside CIOS.
template <int L> EC_FN void mul_wide(u32 *w, const u32 *a, const u32 *b) {
    u32 o[2 * L - 1];
    for (int j = 0; j < 2 * L; j++) w[j] = 0;
    for (int j = 0; j < 2 * L - 1; j++) o[j] = 0;
EC_UNROLL
    for (int i = 0; i < L; i++) {
        const int je = i & 1, jo = je ^ 1;  // first j of each parity class
        cc::mad_lo_cc(w[i + je], a[je], b[i]);
        cc::madc_hi_cc(w[i + je + 1], a[je], b[i]);
EC_UNROLL
        for (int j = je + 2; j < L; j += 2) {
            cc::madc_lo_cc(w[i + j], a[j], b[i]);
            cc::madc_hi_cc(w[i + j + 1], a[j], b[i]);
        }
        // (the last odd row's even-position sum ends below 2^(64 L): no carry)
        if (i + je + L < 2 * L) cc::addc(w[i + je + L], 0);
        cc::mad_lo_cc(o[i + jo - 1], a[jo], b[i]);
        cc::madc_hi_cc(o[i + jo], a[jo], b[i]);
EC_UNROLL
        for (int j = jo + 2; j < L; j += 2) {
            cc::madc_lo_cc(o[i + j - 1], a[j], b[i]);
            cc::madc_hi_cc(o[i + j], a[j], b[i]);
        }
        cc::addc(o[i + jo + L - 1], 0);
    }
    // nothing carries out of word 2L - 1: a * b < 2^(64 L)
    cc::add_cc(w[1], o[0]);
EC_UNROLL
    for (int j = 2; j < 2 * L - 1; j++) cc::addc_cc(w[j], o[j - 1]);
    cc::addc(w[2 * L - 1], o[2 * L - 2]);
}

// P describes the modulus: P::L limbs, P::mod() the modulus, P::m0() =
// -mod^-1 mod 2^32, P::rr() = R^2 mod m, P::one() = R mod m, P::exp_inv() =
// m - 2 (all little-endian limbs, R = 2^(32 L)).
template <class P> struct mont_t {
    enum { L = P::L };
    typedef P traits;
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

    // (a + b) mod m: the sum, and the sum minus m, kept by mask. The carry
    // out of the sum minus the borrow of the subtraction is all-ones exactly
    // when the sum is below m (a carry with no borrow cannot happen: a + b <
    // 2m).
    EC_FN mont_t operator+(const mont_t &b) const {
        const u32 *m = P::mod();
        mont_t r = *this, t;
        u32 top = 0;
        cc::add_cc(r.v[0], b.v[0]);
EC_UNROLL
        for (int j = 1; j < L; j++) cc::addc_cc(r.v[j], b.v[j]);
        cc::addc(top, 0);
        t = r;
        cc::sub_cc(t.v[0], m[0]);
EC_UNROLL
        for (int j = 1; j < L; j++) cc::subc_cc(t.v[j], m[j]);
        cc::subc(top, 0);
        return csel(top, r, t);
    }

    // (a - b) mod m: the difference, plus m where it borrowed.
    EC_FN mont_t operator-(const mont_t &b) const {
        const u32 *m = P::mod();
        mont_t r = *this;
        u32 mask = 0;
        cc::sub_cc(r.v[0], b.v[0]);
EC_UNROLL
        for (int j = 1; j < L; j++) cc::subc_cc(r.v[j], b.v[j]);
        cc::subc(mask, 0);  // all-ones on a borrow
        cc::add_cc(r.v[0], m[0] & mask);
EC_UNROLL
        for (int j = 1; j < L; j++) cc::addc_cc(r.v[j], m[j] & mask);
        return r;
    }

    EC_FN mont_t operator-() const { return zero() - *this; }
    EC_FN mont_t dbl() const { return *this + *this; }
    EC_FN mont_t sqr() const { return *this * *this; }
    EC_FN mont_t &operator+=(const mont_t &b) { return *this = *this + b; }
    EC_FN mont_t &operator-=(const mont_t &b) { return *this = *this - b; }
    EC_FN mont_t &operator*=(const mont_t &b) { return *this = *this * b; }

    // Montgomery product a * b / R mod m, for a < R and b < m.
    EC_FN mont_t operator*(const mont_t &b) const {
        u32 w[2 * L];
        mul_wide<L>(w, v, b.v);
        return redc(w);
    }

    // w / R mod m for a 2L-word w < m R (a product of a < R and b < m):
    // Montgomery reduction a word at a time (mont_reduce's rows) over a
    // window of L+2 words that slides up w; each step shifts the window
    // down one word and brings in the next word of w above it. The window
    // holds what a CIOS loop's accumulator would, so it stays below 2m *
    // 2^32 and one masked subtraction finishes.
    EC_FN static mont_t redc(const u32 *w) {
        const u32 *m = P::mod();
        u32 t[L + 2];
        for (int j = 0; j <= L; j++) t[j] = w[j];
        t[L + 1] = 0;
EC_UNROLL
        for (int i = 0; i < L; i++) {
            // t = (t + q m) / 2^32, q = t_0 * m0 mod 2^32
            mont_reduce<P>::add_qm(t, t[0] * P::m0());
EC_UNROLL
            for (int j = 0; j <= L; j++) t[j] = t[j + 1];
            t[L + 1] = 0;
            if (i + 1 < L) {
                cc::add_cc(t[L], w[i + L + 1]);
                cc::addc(t[L + 1], 0);
            }
        }
        // t < 2m: keep t - m unless that borrows past the top word, i.e.
        // t[L] minus the borrow is all-ones
        mont_t r, s;
        for (int j = 0; j < L; j++) r.v[j] = s.v[j] = t[j];
        cc::sub_cc(s.v[0], m[0]);
EC_UNROLL
        for (int j = 1; j < L; j++) cc::subc_cc(s.v[j], m[j]);
        cc::subc(t[L], 0);
        return csel(t[L], r, s);
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

// Host-side table building (the comb tables): every nonzero z[e] replaced
// by its inverse and zeros kept, with one inversion for all (Montgomery's
// trick). Public data only: it branches on which values are zero.
template <class F, int N> inline void batch_invert(F (&z)[N]) {
    F pre[N], run = F::one();
    for (int e = 0; e < N; e++) {
        pre[e] = run;
        if (!z[e].is_zero()) run *= z[e];
    }
    F inv = run.inv();  // 1 / (the product of the nonzero values)
    for (int e = N - 1; e >= 0; e--) {
        if (z[e].is_zero()) continue;
        F ze = z[e];
        z[e] = inv * pre[e];
        inv *= ze;
    }
}

}  // namespace ec
}  // namespace smx
