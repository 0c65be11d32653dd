// The field of edwards25519 coordinates, p = 2^255 - 19 (RFC 8032), on the
// generic Montgomery type of ec/field.cuh, and the curve constants.
//
// Why Montgomery and not the usual radix-2^25.5 or 2^51 pseudo-Mersenne
// code: the same mont_t (CIOS rows on PTX carry chains, one masked final
// subtraction, fully reduced results) already serves P-256/P-384, and the
// host tests run its carry chains step for step; p < 2^255 < R / 2, so
// its bounds (a < R, b < m) hold for every operand. -p^-1 mod 2^32 is not 1
// here (p's low limb is 0xffffffed), so each row costs one extra 32-bit
// multiply for q, against 8 x 8 limb products: noise.
//
// All values are 8 little-endian 32-bit limbs, printed by
// scripts/ed25519-consts.py (R = 2^256; "Montgomery" = times R mod p).
#pragma once

#include "ec/field.cuh"

namespace smx {
namespace ed25519 {

using ec::mont_t;

EC_CONST u32 ED_P[8] = {0xffffffedu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x7fffffffu};
EC_CONST u32 ED_P_RR[8] = {0x000005a4u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u};
EC_CONST u32 ED_P_ONE[8] = {0x00000026u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u};
EC_CONST u32 ED_P_EXP[8] = {0xffffffebu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x7fffffffu};  // m - 2

// Curve constants (Montgomery form): d = -121665/121666 (a non-square, which
// makes the unified addition complete), 2d (the addition's T1 T2 factor),
// sqrt(-1) = 2^((p-1)/4) for decompression; its exponent (p-5)/8 is plain.
EC_CONST u32 ED_D_MONT[8] = {0xdf47e9fau, 0x80ed8bfeu, 0xafc62973u, 0x10a18777u, 0xbc188690u, 0xe5939207u, 0x729fc526u, 0x2c822b5au};
EC_CONST u32 ED_D2_MONT[8] = {0xbe8fd3f4u, 0x01db17fdu, 0x5f8c52e7u, 0x21430eefu, 0x78310d20u, 0xcb27240fu, 0xe53f8a4du, 0x590456b4u};
EC_CONST u32 ED_SQRTM1_MONT[8] = {0xfe2bdb04u, 0x3b5807d4u, 0xb51be9edu, 0x03f590fdu, 0x336202d1u, 0x6d6e16bfu, 0xd6c71ba8u, 0x75776b0bu};
EC_CONST u32 ED_EXP_SQRT[8] = {0xfffffffdu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x0fffffffu};  // (p - 5) / 8

struct fp_traits {
    enum { L = 8 };
    EC_FN static const u32 *mod() { return ED_P; }
    EC_FN static u32 m0() { return 0x286bca1bu; }
    EC_FN static const u32 *rr() { return ED_P_RR; }
    EC_FN static const u32 *one() { return ED_P_ONE; }
    EC_FN static const u32 *exp_inv() { return ED_P_EXP; }
};

}  // namespace ed25519

namespace ec {
// p = 2^255 - 19: q p = q 2^255 - 19 q. The low word of t + q p is zero, so
// t_0 = 19 q mod 2^32 exactly, and (t + q p) / 2^32 = t / 2^32 - hi(19 q) +
// q 2^223, with hi(19 q) < 2^5 at word 0 and q 2^223 = q << 31 at word 6
// plus q >> 1 at word 7 of the shifted value: t[1] minus, t[7..8] plus,
// carries and borrows run to t[9] (see ec/field.cuh). The same value as
// the general row; one 32-bit multiply instead of 16.
template <> struct mont_reduce<ed25519::fp_traits> {
    EC_FN static void add_qm(u32 *t, u32 q) {
        u32 h = (u32)(((u64)q * 19u) >> 32);
        cc::sub_cc(t[1], h);
EC_UNROLL
        for (int j = 2; j < 9; j++) cc::subc_cc(t[j], 0);
        cc::subc(t[9], 0);
        cc::add_cc(t[7], q << 31);
        cc::addc_cc(t[8], q >> 1);
        cc::addc(t[9], 0);
    }
};
}  // namespace ec

namespace ed25519 {

// A coordinate mod p, Montgomery form.
typedef mont_t<fp_traits> fe;

}  // namespace ed25519
}  // namespace smx
