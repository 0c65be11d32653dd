// ECDSA sign, a warp of items (signatures) at a time, and check, one item
// at a time; the kernels (ecdsa.cu) and the host build (host/ec_host.cpp)
// both call these, so the code CI tests is the code the GPU runs.
//
// Buffers (ABI, see src/backend/cuda/ec_layout.rs): big numbers are L 32-bit
// little-endian limbs; batches are structure-of-arrays, limb j of item i at
// [j * count + i]; the key blob is d, Qx, Qy (plain integers, L limbs each)
// and then the comb table of Q (TABLE_WORDS, laid out as G's), which the
// check kernel uses to compute u1 G + u2 Q as one comb pass (mul_base2):
// SPACING doublings and 2 * SPACING * COMBS mixed additions, where a
// windowed u2 Q alone took 8L * 4 doublings.
//
// k*G uses a fixed-base Lim-Lee comb with TEETH = 4 teeth and COMBS = 8
// combs (see curves.cuh): the scalar's bit (c*TEETH + t)*SPACING + j is
// tooth t of comb c in column j. Table entry [c][digit] (digit = 0..15) is
// sum over set bits t of digit of 2^((c*TEETH + t)*SPACING) G, affine,
// Montgomery form: x limbs then y limbs (2L words), entries in order
// c*16 + digit; entry 0 of each comb is all zeros and never used. k*G then
// takes SPACING doublings and SPACING*COMBS mixed additions (P-256: 8 and
// 64; P-384: 12 and 96). Every lookup reads all 16 entries of its comb and
// keeps the wanted one by mask; a zero digit keeps the old point by mask.
// More teeth would save doublings but double the scan per addition (8 teeth:
// 256 entries, 16x the loads for half the doublings); COMBS trades doublings
// for table size, and the 8 KiB / 12 KiB table stays cache resident.
#pragma once

#include "ec/warp_inv.cuh"

namespace smx {
namespace ec {

template <class C> struct comb_t {
    enum {
        L = C::L,
        ENTRIES = 1 << C::TEETH,
        ENTRY_WORDS = 2 * C::L,
        COMB_WORDS = ENTRIES * 2 * C::L,
        TABLE_WORDS = C::COMBS * ENTRIES * 2 * C::L,
    };
};

// The comb table for the point B = (bx, by) (plain integers; G unless
// given): public, built on the host, for G once at start and for each
// key's Q when the key is packed (src/backend/cuda/ec_layout.rs). The
// entries are summed in projective form and made affine together: one
// inversion for all (Montgomery's trick) instead of one each. Entries that
// are O (digit 0) are stored as zeros.
template <class C>
inline void comb_table_build(u32 *table, const u32 *bx = C::gx(), const u32 *by = C::gy()) {
    typedef typename C::fp fp;
    typedef point_t<C> pt;
    enum { N = C::COMBS * comb_t<C>::ENTRIES, L = C::L };
    pt base[C::TEETH * C::COMBS];
    affine_t<C> g;
    g.x = fp::from_int(bx);
    g.y = fp::from_int(by);
    base[0] = pt::from_affine(g);
    for (int i = 1; i < C::TEETH * C::COMBS; i++) {
        base[i] = base[i - 1];
        for (int j = 0; j < C::SPACING; j++) base[i] = base[i].dbl();
    }
    pt acc[N];
    for (int c = 0; c < C::COMBS; c++)
        for (int digit = 0; digit < comb_t<C>::ENTRIES; digit++) {
            pt &a = acc[c * comb_t<C>::ENTRIES + digit];
            a = pt::infinity();
            for (int t = 0; t < C::TEETH; t++)
                if (digit >> t & 1) a = a.add(base[c * C::TEETH + t]);
        }
    fp zi[N];
    for (int e = 0; e < N; e++) zi[e] = acc[e].z;
    batch_invert(zi);
    for (int e = 0; e < N; e++) {
        u32 *out = table + e * 2 * L;
        fp ax = acc[e].x * zi[e], ay = acc[e].y * zi[e];  // O (Z = 0): zeros
        for (int j = 0; j < L; j++) {
            out[j] = ax.v[j];
            out[L + j] = ay.v[j];
        }
    }
}

// The entry `digit` of one comb (comb_t::ENTRIES entries at `tab`), read by a
// masked scan over all entries: the addresses do not depend on the digit.
template <class C> EC_FN affine_t<C> comb_lookup(const u32 *tab, u32 digit) {
    const int L = C::L;
    affine_t<C> r;
    for (int j = 0; j < L; j++) r.x.v[j] = r.y.v[j] = 0;
    for (int e = 0; e < comb_t<C>::ENTRIES; e++) {
        u32 m = mask_eq((u32)e, digit);
        const u32 *p = tab + e * 2 * L;
        for (int j = 0; j < L; j++) {
            r.x.v[j] |= m & p[j];
            r.y.v[j] |= m & p[L + j];
        }
    }
    return r;
}

// r += the comb entries of column j of k (one mixed addition per comb;
// a zero digit keeps r by mask), constant time in k.
template <class C> EC_FN void comb_column(point_t<C> &r, const u32 *table, const u32 *k, int j) {
    typedef point_t<C> pt;
    for (int c = 0; c < C::COMBS; c++) {
        u32 digit = 0;
        for (int t = 0; t < C::TEETH; t++) {
            int pos = (c * C::TEETH + t) * C::SPACING + j;  // public
            digit |= ((k[pos >> 5] >> (pos & 31)) & 1) << t;
        }
        affine_t<C> e = comb_lookup<C>(table + c * comb_t<C>::COMB_WORDS, digit);
        pt s = r.madd(e);
        r = pt::csel(mask_is_zero(digit), r, s);
    }
}

// k*G for a secret k (L limbs, any value below 2^BITS), constant time.
template <class C> EC_FN point_t<C> mul_base(const u32 *table, const u32 *k) {
    point_t<C> r = point_t<C>::infinity();
    for (int j = C::SPACING - 1; j >= 0; j--) {
        r = r.dbl();
        comb_column<C>(r, table, k, j);
    }
    return r;
}

// k1*G + k2*Q (check kernel), with the comb tables of G and of Q (the key
// blob carries Q's): both combs in one pass, sharing the doublings.
template <class C>
EC_FN point_t<C> mul_base2(const u32 *tg, const u32 *k1, const u32 *tq, const u32 *k2) {
    point_t<C> r = point_t<C>::infinity();
    for (int j = C::SPACING - 1; j >= 0; j--) {
        r = r.dbl();
        comb_column<C>(r, tg, k1, j);
        comb_column<C>(r, tq, k2, j);
    }
    return r;
}

// The signatures of items first .. first + 31, one per lane of a warp
// (fewer at the end of the batch): r = x(k G) mod n, s = k^-1 (z + r d)
// mod n; ok = 0 when r or s is zero (the host redoes the item). The two
// inversions (Z of k G, and k) are shared by the warp (warp_invert).
// Constant time in d and k. Every lane of the warp must call this with the
// same `first`; lanes past the batch carry 1s through the inversion and
// store nothing (which lanes those are is public).
template <class C>
EC_FN void sign_lanes(const u32 *table, const u32 *key, const u32 *z, const u32 *k, u32 *r,
                      u32 *s, u32 *ok, u32 count, u32 first) {
    typedef typename C::fp fp;
    typedef typename C::fn fn;
    const int L = C::L;
    const lane_t lane = warp_lane();
    warp_val<fp> X, Z;
    warp_val<fn> K;
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        X.v[w] = fp::zero();
        Z.v[w] = fp::one();
        K.v[w] = fn::one();
        if (i >= count) continue;
        u32 kk[L];
        for (int j = 0; j < L; j++) kk[j] = k[j * count + i];
        point_t<C> R = mul_base<C>(table, kk);  // not O: k is in [1, n-1]
        X.v[w] = R.x;
        Z.v[w] = R.z;
        K.v[w] = fn::from_int(kk);
    }
    warp_invert<C>(Z, K, lane);
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        if (i >= count) continue;
        u32 zz[L], xr[L], sr[L];
        for (int j = 0; j < L; j++) zz[j] = z[j * count + i];
        (X.v[w] * Z.v[w]).to_int(xr);
        limbs_reduce_once<L>(xr, C::fn_mod());  // x < p < 2n
        // z < 2^(32 L) and d < n: from_int reduces mod n on the way in
        fn sM = K.v[w] * (fn::from_int(zz) + fn::from_int(xr) * fn::from_int(key));
        sM.to_int(sr);
        u32 bad = limbs_zero_mask<L>(xr) | limbs_zero_mask<L>(sr);
        for (int j = 0; j < L; j++) {
            r[j * count + i] = xr[j];
            s[j * count + i] = sr[j];
        }
        ok[i] = ~bad & 1u;
    }
}

// The checks of items first .. first + 31, one per lane of a warp (fewer
// at the end of the batch): ok = 1 when 1 <= r, s < n and
// x(u1 G + u2 Q) mod n = r with w = s^-1, u1 = z w, u2 = r w. The warp
// shares the inversions of s (warp_invert: one cooperative exponentiation
// and a few products per lane, where a Fermat inversion per lane was about
// a sixth of a check's instructions). Public inputs: variable time, but
// every lane of the warp must call this with the same `first` and reach
// the inversion; a lane whose r or s is out of range inverts 1 and reports
// 0. The sum stays projective: x = X / Z is r or r + n (x < p < 2n), so it
// is enough to compare X with r Z and (r + n) Z, which saves an inversion
// mod p.
template <class C>
EC_FN void check_lanes(const u32 *table, const u32 *key, const u32 *z, const u32 *r, const u32 *s,
                       u32 *ok, u32 count, u32 first) {
    typedef typename C::fp fp;
    typedef typename C::fn fn;
    const int L = C::L;
    const u32 *n = C::fn_mod();
    const lane_t lane = warp_lane();
    warp_val<fn> W;
    u32 valid[SMX_LANES];
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        W.v[w] = fn::one();
        valid[w] = 0;
        if (i >= count) continue;
        u32 rr[L], ss[L];
        for (int j = 0; j < L; j++) {
            rr[j] = r[j * count + i];
            ss[j] = s[j * count + i];
        }
        if (limbs_zero_mask<L>(rr) || limbs_zero_mask<L>(ss) || !limbs_lt_public<L>(rr, n) ||
            !limbs_lt_public<L>(ss, n))
            continue;
        valid[w] = 1;
        W.v[w] = fn::from_int(ss);
    }
    warp_invert<C::COOP_T>(W, lane);
    for (int w = 0; w < SMX_LANES; w++) {
        const u32 i = first + lane.x[w];
        if (i >= count) continue;
        if (!valid[w]) {
            ok[i] = 0;
            continue;
        }
        u32 rr[L], zz[L], u1[L], u2[L], rn[L];
        for (int j = 0; j < L; j++) {
            rr[j] = r[j * count + i];
            zz[j] = z[j * count + i];
        }
        (fn::from_int(zz) * W.v[w]).to_int(u1);
        (fn::from_int(rr) * W.v[w]).to_int(u2);
        point_t<C> sum = mul_base2<C>(table, u1, key + 3 * L, u2);
        if (sum.z.is_zero()) {  // O has no x
            ok[i] = 0;
            continue;
        }
        bool match = limbs_equal_public<L>((fp::from_int(rr) * sum.z).v, sum.x.v);
        u32 carry = 0;
        for (int j = 0; j < L; j++) rn[j] = add_carry(rr[j], n[j], carry);
        if (!carry && limbs_lt_public<L>(rn, fp::traits::mod()))
            match = match || limbs_equal_public<L>((fp::from_int(rn) * sum.z).v, sum.x.v);
        ok[i] = match;
    }
}
}  // namespace ec
}  // namespace smx
