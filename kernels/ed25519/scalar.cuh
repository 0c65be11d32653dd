// Scalars mod the group order L = 2^252 + 27742317777372353535851937790883648493
// (RFC 8032) on the generic Montgomery type, and the reduction of SHA-512
// outputs mod L. Constants printed by scripts/ed25519-consts.py.
#pragma once

#include "ec/field.cuh"

namespace smx {
namespace ed25519 {

EC_CONST u32 ED_L[8] = {0x5cf5d3edu, 0x5812631au, 0xa2f79cd6u, 0x14def9deu, 0x00000000u, 0x00000000u, 0x00000000u, 0x10000000u};
EC_CONST u32 ED_L_RR[8] = {0x449c0f01u, 0xa40611e3u, 0x68859347u, 0xd00e1ba7u, 0x17f5be65u, 0xceec73d2u, 0x7c309a3du, 0x0399411bu};
EC_CONST u32 ED_L_ONE[8] = {0x8d98951du, 0xd6ec3174u, 0x737dcf70u, 0xc6ef5bf4u, 0xfffffffeu, 0xffffffffu, 0xffffffffu, 0x0fffffffu};
EC_CONST u32 ED_L_EXP[8] = {0x5cf5d3ebu, 0x5812631au, 0xa2f79cd6u, 0x14def9deu, 0x00000000u, 0x00000000u, 0x00000000u, 0x10000000u};  // m - 2

struct fl_traits {
    enum { L = 8 };
    EC_FN static const u32 *mod() { return ED_L; }
    EC_FN static u32 m0() { return 0x12547e1bu; }
    EC_FN static const u32 *rr() { return ED_L_RR; }
    EC_FN static const u32 *one() { return ED_L_ONE; }
    EC_FN static const u32 *exp_inv() { return ED_L_EXP; }
};

// A scalar mod L, Montgomery form.
typedef ec::mont_t<fl_traits> sc;

// A 512-bit integer h (16 little-endian limbs: a SHA-512 output read as
// RFC 8032 does) mod L, plain limbs out; constant time (two Montgomery
// products and an addition, each with its masked final subtraction).
// h = lo + hi 2^256 with 2^256 = R: from_int(lo) is lo in Montgomery form;
// from_int(hi) = hi R, and one more product by RR = R^2 gives hi R R^2 / R
// = (hi R) R, the Montgomery form of hi 2^256. Both from_int inputs are
// below R, as mont_t's bounds require.
EC_FN void reduce512(const u32 *h, u32 *out) {
    sc x = sc::from_int(h) + sc::from_int(h + 8) * sc::raw(ED_L_RR);
    x.to_int(out);
}

}  // namespace ed25519
}  // namespace smx
