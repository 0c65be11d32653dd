// Inverting the whole warp's field elements with one shared exponentiation.
//
// Why: ECDSA signing needs two inversions per signature (Z of k*G mod p, k
// mod n; Ed25519 one, Z of r*B), each a Fermat exponentiation of ~330
// Montgomery multiplications; with one thread per signature they were about
// a third of every P-256 thread's instructions. Montgomery's trick turns
// the 32 inversions of a warp into one inversion of their product plus a
// few multiplications per lane; and since 32 lanes running one
// exponentiation in lockstep cost the same issue slots as 32
// exponentiations, that one inversion is spread over the lanes as well: it
// runs on the cooperative Montgomery field of rsa/coop.cuh (T lanes per
// number, K = L/T limbs each), the mod-p product on one group of T lanes
// and the mod-n product on the next group, at the same time.
//
//   pre_i = a_0 ... a_{i-1}, suf_i = a_{i+1} ... a_31 (lane scans by shuffle)
//   all   = pre_i a_i suf_i, the same in every lane
//   a_i^-1 = all^-1 pre_i suf_i
//
// A zero anywhere makes `all` zero and every result zero (Fermat maps 0 to
// 0). For ECDSA the warp's signatures then come out with r = 0 or s = 0,
// which the kernel reports as not ok. No caller has a zero: k is in [1,
// n-1], so k*G is not O and its Z is not 0, and the complete Edwards
// formulas never give Z = 0 for a point of the curve.
//
// Constant time: the scans, the limb picks and the broadcasts move words by
// lane positions only; the exponents are the public p - 2 and n - 2; the
// cooperative field is the RSA code's, constant time in its operands.
//
// Host build: a warp_val holds the values of all 32 lanes and lane_t is a
// whole warp (rsa/lanes.cuh), so this file runs on the host exactly as one
// warp runs it on the device.
#pragma once

#include "ec/point.cuh"
#include "rsa/coop.cuh"

namespace smx {
namespace ec {

using rsa::kWarp;
using rsa::lane_t;

// This thread's lane number (the host build: lanes 0..31 of its warp).
EC_FN lane_t warp_lane() {
    lane_t r;
#if defined(__CUDA_ARCH__)
    r.x[0] = threadIdx.x & (kWarp - 1);
#else
    for (int w = 0; w < SMX_LANES; w++) r.x[w] = (u32)w;
#endif
    return r;
}

// One F per lane: a thread's own value on the device, all 32 on the host.
template <class F> struct warp_val {
    F v[SMX_LANES];
};

template <class F> EC_FN warp_val<F> warp_mul(const warp_val<F> &a, const warp_val<F> &b) {
    warp_val<F> r;
    for (int w = 0; w < SMX_LANES; w++) r.v[w] = a.v[w] * b.v[w];
    return r;
}

// The value `delta` lanes below (up = true) or above; 1 where that lane
// does not exist.
template <class F>
EC_FN warp_val<F> warp_shift(const warp_val<F> &a, int delta, bool up, const lane_t &lane) {
    warp_val<F> r;
    lane_t outside = up ? rsa::lane_lt(lane, lane_t::all((u32)delta))
                        : ~rsa::lane_lt(lane, lane_t::all((u32)(kWarp - delta)));
    for (int j = 0; j < F::L; j++) {
        lane_t t;
        for (int w = 0; w < SMX_LANES; w++) t.x[w] = a.v[w].v[j];
        t = up ? rsa::shfl_up(t, delta, kWarp) : rsa::shfl_down(t, delta, kWarp);
        for (int w = 0; w < SMX_LANES; w++) r.v[w].v[j] = t.x[w];
    }
    const F one = F::one();
    for (int w = 0; w < SMX_LANES; w++) r.v[w] = F::csel(outside.x[w], one, r.v[w]);
    return r;
}

// The product of the values of the lanes below (up) or above this one; 1
// at the end lane. Inclusive scan in log2(32) steps, then one shift.
template <class F> EC_FN warp_val<F> warp_scan_excl(const warp_val<F> &a, bool up, const lane_t &lane) {
    warp_val<F> p = a;
    for (int d = 1; d < kWarp; d <<= 1) p = warp_mul(p, warp_shift(p, d, up, lane));
    return warp_shift(p, 1, up, lane);
}

// Limb j of a number, per lane: a constant (`a` on the lower groups of T
// lanes, `b` on the upper) or a lane's own value.
template <int L> EC_FN void limbs_of(lane_t *out, const u32 *a, const u32 *b, const lane_t &upper) {
    for (int j = 0; j < L; j++) out[j] = rsa::lane_select(upper, lane_t::all(b[j]), lane_t::all(a[j]));
}
template <class F> EC_FN void limbs_of(lane_t *out, const warp_val<F> &v) {
    for (int j = 0; j < F::L; j++)
        for (int w = 0; w < SMX_LANES; w++) out[j].x[w] = v.v[w].v[j];
}

// This lane's share of an L-limb number every lane holds whole: limbs
// [lK, lK + K) for lane l of its group of T. A pick by lane position.
template <int L, int T>
EC_FN void coop_share(lane_t *out, const lane_t *whole, const rsa::coop::Place<T> &at) {
    const int K = L / T;
    for (int k = 0; k < K; k++) out[k] = lane_t::all(0);
    for (int j = 0; j < L; j++)
        out[j % K] = out[j % K] | (whole[j] & rsa::lane_eq(at.l, lane_t::all((u32)(j / K))));
}

// Montgomery's trick over a warp: the products of the other lanes' values
// below and above this lane, and of all of them.
template <class F> struct warp_parts {
    warp_val<F> pre, suf, all;

    EC_FN warp_parts(const warp_val<F> &a, const lane_t &lane)
        : pre(warp_scan_excl(a, true, lane)), suf(warp_scan_excl(a, false, lane)) {
        all = warp_mul(warp_mul(pre, a), suf);
    }

    // This lane's a^-1, given all^-1.
    EC_FN warp_val<F> inverse(const warp_val<F> &all_inv) const {
        return warp_mul(warp_mul(all_inv, pre), suf);
    }
};

// a and b (Montgomery form, L limbs, the same value in every lane) replaced
// by a^-1 mod A and b^-1 mod B, their fields' moduli: one cooperative
// Fermat exponentiation each, at the same time, a on the even groups of T
// lanes, b on the odd ones. Both moduli must exceed R / 3 (Field::one).
template <int T, class FA, class FB>
EC_FN void coop_invert(warp_val<FA> &a, warp_val<FB> &b, const lane_t &lane) {
    typedef typename FA::traits AT;
    typedef typename FB::traits BT;
    enum { L = FA::L, K = L / T };
    static_assert((int)FB::L == (int)L, "both moduli have L limbs");

    rsa::coop::Place<T> at(lane);
    lane_t upper = rsa::lane_nonzero((lane / (u32)T) & 1u);
    rsa::coop::Field<L, T> F(at);
    lane_t whole[L], aw[L], bw[L], x[K], inv[K];
    limbs_of<L>(whole, AT::mod(), BT::mod(), upper);
    coop_share<L, T>(F.m, whole, at);
    limbs_of<L>(whole, AT::rr(), BT::rr(), upper);
    coop_share<L, T>(F.rr, whole, at);
    F.m0 = rsa::lane_select(upper, lane_t::all(BT::m0()), lane_t::all(AT::m0()));
    limbs_of(aw, a);
    limbs_of(bw, b);
    for (int j = 0; j < L; j++) whole[j] = rsa::lane_select(upper, bw[j], aw[j]);
    coop_share<L, T>(x, whole, at);
    // The exponents A - 2 and B - 2, side by side, read by window.
    u32 exps[2 * L];
    for (int j = 0; j < L; j++) {
        exps[j] = AT::exp_inv()[j];
        exps[L + j] = BT::exp_inv()[j];
    }
    rsa::coop::pow_ct<L, T>(F, inv, x, exps, rsa::lane_select(upper, lane_t::all(L), lane_t::all(0)));

    // Every lane gathers both inverses from lanes 0..T-1 and T..2T-1.
    for (int j = 0; j < L; j++) {
        lane_t ai = rsa::shfl(inv[j % K], j / K, kWarp), bi = rsa::shfl(inv[j % K], T + j / K, kWarp);
        for (int w = 0; w < SMX_LANES; w++) {
            a.v[w].v[j] = ai.x[w];
            b.v[w].v[j] = bi.x[w];
        }
    }
}

// Every lane's z (mod p) and k (mod n) of curve C, Montgomery form,
// replaced by its inverse (see the top of the file). Every lane of the warp
// must call this.
template <class C>
EC_FN void warp_invert(warp_val<typename C::fp> &z, warp_val<typename C::fn> &k, const lane_t &lane) {
    warp_parts<typename C::fp> zp(z, lane);
    warp_parts<typename C::fn> kp(k, lane);
    z = zp.all;
    k = kp.all;
    coop_invert<C::COOP_T>(z, k, lane);
    z = zp.inverse(z);
    k = kp.inverse(k);
}

// The same for one value per lane (both groups of lanes invert it; the
// second costs no extra instruction).
template <int T, class F> EC_FN void warp_invert(warp_val<F> &z, const lane_t &lane) {
    warp_parts<F> zp(z, lane);
    warp_val<F> twin = zp.all;
    z = zp.all;
    coop_invert<T>(z, twin, lane);
    z = zp.inverse(z);
}

}  // namespace ec
}  // namespace smx
