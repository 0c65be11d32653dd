// Points of y^2 = x^3 - 3x + b in homogeneous projective coordinates
// (X : Y : Z), x = X/Z, y = Y/Z, the point at infinity O = (0 : 1 : 0), with
// the complete formulas of Renes, Costello and Batina, "Complete addition
// formulas for prime order elliptic curves" (EUROCRYPT 2016), a = -3
// variants: Algorithm 4 (addition), 5 (mixed addition), 6 (doubling).
// Complete means one straight-line sequence is right for every input,
// P = Q, P = -Q and O included, so there is no special case to branch on.
#pragma once

#include "ec/curves.cuh"

namespace smx {
namespace ec {

// An affine point with coordinates in Montgomery form (comb table entries,
// the public key). It cannot be O.
template <class C> struct affine_t {
    typename C::fp x, y;
};

template <class C> struct point_t {
    typedef typename C::fp fp;
    fp x, y, z;

    EC_FN static point_t infinity() {
        point_t r;
        r.x = fp::zero();
        r.y = fp::one();
        r.z = fp::zero();
        return r;
    }

    EC_FN static point_t from_affine(const affine_t<C> &a) {
        point_t r;
        r.x = a.x;
        r.y = a.y;
        r.z = fp::one();
        return r;
    }

    EC_FN static point_t csel(u32 mask, const point_t &a, const point_t &b) {
        point_t r;
        r.x = fp::csel(mask, a.x, b.x);
        r.y = fp::csel(mask, a.y, b.y);
        r.z = fp::csel(mask, a.z, b.z);
        return r;
    }

    EC_FN static fp triple(const fp &a) { return a.dbl() + a; }

    // The tail shared by the addition formulas (RCB Algorithms 4 and 5), from
    // the products xx = X1 X2, yy = Y1 Y2, zz = Z1 Z2 and the cross terms
    // xy = X1 Y2 + X2 Y1, yz = Y1 Z2 + Y2 Z1, xz = X1 Z2 + X2 Z1.
    EC_FN static point_t add_tail(const fp &xx, const fp &yy, const fp &zz, const fp &xy,
                                  const fp &yz, const fp &xz) {
        const fp b = fp::raw(C::b_mont());
        fp t3 = triple(xz - b * zz);        // 3 (xz - b zz)
        fp ym = yy - t3, yp = yy + t3;
        fp zz3 = triple(zz);
        fp u3 = triple(b * xz - (zz3 + xx));  // 3 (b xz - 3 zz - xx)
        fp w = triple(xx) - zz3;              // 3 (xx - zz)
        point_t r;
        r.x = yp * xy - yz * u3;
        r.y = yp * ym + w * u3;
        r.z = ym * yz + xy * w;
        return r;
    }

    // this + q, complete (Algorithm 4): 12 multiplications.
    EC_CALL point_t add(const point_t &q) const {
        fp xx = x * q.x, yy = y * q.y, zz = z * q.z;
        fp xy = (x + y) * (q.x + q.y) - (xx + yy);
        fp yz = (y + z) * (q.y + q.z) - (yy + zz);
        fp xz = (x + z) * (q.x + q.z) - (xx + zz);
        return add_tail(xx, yy, zz, xy, yz, xz);
    }

    // this + q for an affine q (Algorithm 5, Z2 = 1): 11 multiplications.
    // Complete for every projective this, O included; q must not be O (the
    // comb keeps the old point by mask when its digit is zero).
    EC_CALL point_t madd(const affine_t<C> &q) const {
        fp xx = x * q.x, yy = y * q.y;
        fp xy = (x + y) * (q.x + q.y) - (xx + yy);
        fp yz = q.y * z + y;
        fp xz = q.x * z + x;
        return add_tail(xx, yy, z, xy, yz, xz);
    }

    // 2 * this, complete (Algorithm 6): 8 multiplications, 3 squarings.
    EC_CALL point_t dbl() const {
        const fp b = fp::raw(C::b_mont());
        fp xx = x.sqr(), yy = y.sqr(), zz = z.sqr();
        fp xy2 = (x * y).dbl(), xz2 = (x * z).dbl();
        fp t3 = triple(b * zz - xz2);
        fp ym = yy - t3, yp = yy + t3;
        fp zz3 = triple(zz);
        fp u6 = triple(b * xz2 - (zz3 + xx));
        fp w = triple(xx) - zz3;
        fp yz2 = (y * z).dbl();
        point_t r;
        r.x = ym * xy2 - u6 * yz2;
        r.y = yp * ym + w * u6;
        r.z = (yz2 * yy).dbl().dbl();
        return r;
    }

    // Affine coordinates (Montgomery form) by one constant-time Fermat
    // inversion of Z; returns all-ones when this is O (then x = y = 0).
    EC_FN u32 to_affine(fp &ax, fp &ay) const {
        fp zi = z.inv();
        ax = x * zi;
        ay = y * zi;
        return z.is_zero();
    }
};

}  // namespace ec
}  // namespace smx
