// Points of edwards25519, -x^2 + y^2 = 1 + d x^2 y^2 (a = -1), in extended
// twisted Edwards coordinates (X : Y : Z : T), x = X/Z, y = Y/Z, T = XY/Z;
// the identity is (0 : 1 : 1 : 0). Formulas of Hisil, Wong, Carter and
// Dawson, "Twisted Edwards curves revisited" (ASIACRYPT 2008), as named in
// the Explicit-Formulas Database: add-2008-hwcd-3 (unified addition, 8M + a
// multiplication by the constant 2d), its mixed form madd-2008-hwcd-3
// against a precomputed point, and dbl-2008-hwcd (4M + 4S).
//
// Complete: with a = -1 a square and d a non-square mod p, the unified
// addition's denominators never vanish for points on the curve, so one
// straight-line sequence is right for P = Q, P = -Q and the identity alike;
// there is no special case to branch on, which is what constant time needs.
#pragma once

#include "ed25519/field.cuh"

namespace smx {
namespace ed25519 {

// A point in the form the mixed addition wants, (y + x, y - x, 2 d x y),
// affine (Z = 1), Montgomery form: comb table entries. The identity is
// (1, 1, 0), so a table can hold it like any other point.
struct niels_t {
    fe ypx, ymx, xy2d;
};

struct point_t {
    fe x, y, z, t;

    EC_FN static point_t identity() {
        point_t r;
        r.x = fe::zero();
        r.y = fe::one();
        r.z = fe::one();
        r.t = fe::zero();
        return r;
    }

    // The affine point (x, y), Montgomery form.
    EC_FN static point_t from_affine(const fe &ax, const fe &ay) {
        point_t r;
        r.x = ax;
        r.y = ay;
        r.z = fe::one();
        r.t = ax * ay;
        return r;
    }

    EC_FN static point_t csel(u32 mask, const point_t &a, const point_t &b) {
        point_t r;
        r.x = fe::csel(mask, a.x, b.x);
        r.y = fe::csel(mask, a.y, b.y);
        r.z = fe::csel(mask, a.z, b.z);
        r.t = fe::csel(mask, a.t, b.t);
        return r;
    }

    // -(x, y) = (-x, y).
    EC_FN point_t neg() const {
        point_t r = *this;
        r.x = -x;
        r.t = -t;
        return r;
    }

    // this + q, complete (add-2008-hwcd-3, k = 2d): 9 multiplications.
    EC_CALL point_t add(const point_t &q) const {
        fe a = (y - x) * (q.y - q.x);
        fe b = (y + x) * (q.y + q.x);
        fe c = t * fe::raw(ED_D2_MONT) * q.t;
        fe d = (z * q.z).dbl();
        fe e = b - a, f = d - c, g = d + c, h = b + a;
        point_t r;
        r.x = e * f;
        r.y = g * h;
        r.t = e * h;
        r.z = f * g;
        return r;
    }

    // this + q for a precomputed affine q (madd-2008-hwcd-3): 7
    // multiplications; complete, q = identity included (the comb's digit 0).
    EC_CALL point_t madd(const niels_t &q) const {
        fe a = (y - x) * q.ymx;
        fe b = (y + x) * q.ypx;
        fe c = t * q.xy2d;
        fe d = z.dbl();
        fe e = b - a, f = d - c, g = d + c, h = b + a;
        point_t r;
        r.x = e * f;
        r.y = g * h;
        r.t = e * h;
        r.z = f * g;
        return r;
    }

    // 2 * this (dbl-2008-hwcd, a = -1): 4 multiplications, 4 squarings; T
    // is not read. Complete: G = y^2 - x^2 and F = G - 2 are never zero on
    // the curve for a non-square d.
    EC_CALL point_t dbl() const {
        fe a = x.sqr(), b = y.sqr(), c = z.sqr().dbl();
        fe e = (x + y).sqr() - (a + b);
        fe g = b - a;   // D + B with D = a A = -A
        fe f = g - c;
        fe h = -(a + b);  // D - B
        point_t r;
        r.x = e * f;
        r.y = g * h;
        r.t = e * h;
        r.z = f * g;
        return r;
    }

    // RFC 8032 encoding: y (plain, < p) with bit 255 = the low bit of x, as 8
    // little-endian limbs, i.e. the 32 encoding bytes packed little-endian.
    // One Fermat inversion of Z (a fixed exponent: constant time).
    EC_CALL void encode(u32 *out) const { encode_with(z.inv(), out); }

    // The same, given zi = 1/Z (signing shares the inversions of a warp).
    EC_FN void encode_with(const fe &zi, u32 *out) const {
        u32 ax[8];
        (x * zi).to_int(ax);
        (y * zi).to_int(out);
        out[7] |= (ax[0] & 1u) << 31;
    }

    // RFC 8032 section 5.1.3 decoding of PUBLIC bytes (the check kernel's A,
    // the tests): variable time. False for a non-canonical y (>= p), a y
    // with no x on the curve, and x = 0 with the sign bit set.
    EC_CALL bool decode_public(const u32 *in) {
        u32 yi[8];
        for (int j = 0; j < 8; j++) yi[j] = in[j];
        u32 sign = yi[7] >> 31;
        yi[7] &= 0x7fffffffu;
        if (!ec::limbs_lt_public<8>(yi, ED_P)) return false;
        fe one = fe::one();
        fe ay = fe::from_int(yi), yy = ay.sqr();
        fe u = yy - one, v = yy * fe::raw(ED_D_MONT) + one;
        // x = u v^3 (u v^7)^((p-5)/8), then fix by sqrt(-1) when v x^2 = -u
        fe v3 = v.sqr() * v;
        fe ax = u * v3 * (u * v3.sqr() * v).pow_public(ED_EXP_SQRT);
        fe vxx = v * ax.sqr();
        if (!(vxx - u).is_zero()) {
            if (!(vxx + u).is_zero()) return false;  // u / v is not a square
            ax = ax * fe::raw(ED_SQRTM1_MONT);
        }
        u32 xi[8];
        ax.to_int(xi);
        if (ax.is_zero() && sign) return false;
        if ((xi[0] & 1u) != sign) ax = -ax;
        *this = from_affine(ax, ay);
        return true;
    }
};

// The precomputed form of an affine point (Montgomery form), for the table.
EC_FN niels_t to_niels(const fe &ax, const fe &ay) {
    niels_t n;
    n.ypx = ay + ax;
    n.ymx = ay - ax;
    n.xy2d = ax * ay * fe::raw(ED_D2_MONT);
    return n;
}

}  // namespace ed25519
}  // namespace smx
