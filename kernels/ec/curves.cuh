// NIST P-256 and P-384 constants (FIPS 186-5 / SP 800-186) and the traits
// the generic code is instantiated with. All values are 32-bit little-endian
// limbs; "Montgomery" means times R = 2^(32 L) mod the modulus.
#pragma once

#include "ec/field.cuh"

namespace smx {
namespace ec {

// p256: field prime p
EC_CONST u32 P256_P[8] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000001u, 0xffffffffu};
EC_CONST u32 P256_P_RR[8] = {0x00000003u, 0x00000000u, 0xffffffffu, 0xfffffffbu, 0xfffffffeu, 0xffffffffu, 0xfffffffdu, 0x00000004u};
EC_CONST u32 P256_P_ONE[8] = {0x00000001u, 0x00000000u, 0x00000000u, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xfffffffeu, 0x00000000u};
EC_CONST u32 P256_P_EXP[8] = {0xfffffffdu, 0xffffffffu, 0xffffffffu, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000001u, 0xffffffffu};  // m - 2
// p256: group order n
EC_CONST u32 P256_N[8] = {0xfc632551u, 0xf3b9cac2u, 0xa7179e84u, 0xbce6faadu, 0xffffffffu, 0xffffffffu, 0x00000000u, 0xffffffffu};
EC_CONST u32 P256_N_RR[8] = {0xbe79eea2u, 0x83244c95u, 0x49bd6fa6u, 0x4699799cu, 0x2b6bec59u, 0x2845b239u, 0xf3d95620u, 0x66e12d94u};
EC_CONST u32 P256_N_ONE[8] = {0x039cdaafu, 0x0c46353du, 0x58e8617bu, 0x43190552u, 0x00000000u, 0x00000000u, 0xffffffffu, 0x00000000u};
EC_CONST u32 P256_N_EXP[8] = {0xfc63254fu, 0xf3b9cac2u, 0xa7179e84u, 0xbce6faadu, 0xffffffffu, 0xffffffffu, 0x00000000u, 0xffffffffu};  // m - 2
// p256: curve coefficient b (Montgomery) and the base point G (plain)
EC_CONST u32 P256_B_MONT[8] = {0x29c4bddfu, 0xd89cdf62u, 0x78843090u, 0xacf005cdu, 0xf7212ed6u, 0xe5a220abu, 0x04874834u, 0xdc30061du};
EC_CONST u32 P256_GX[8] = {0xd898c296u, 0xf4a13945u, 0x2deb33a0u, 0x77037d81u, 0x63a440f2u, 0xf8bce6e5u, 0xe12c4247u, 0x6b17d1f2u};
EC_CONST u32 P256_GY[8] = {0x37bf51f5u, 0xcbb64068u, 0x6b315eceu, 0x2bce3357u, 0x7c0f9e16u, 0x8ee7eb4au, 0xfe1a7f9bu, 0x4fe342e2u};

struct p256_fp {
    enum { L = 8 };
    EC_FN static const u32 *mod() { return P256_P; }
    EC_FN static u32 m0() { return 0x00000001u; }
    EC_FN static const u32 *rr() { return P256_P_RR; }
    EC_FN static const u32 *one() { return P256_P_ONE; }
    EC_FN static const u32 *exp_inv() { return P256_P_EXP; }
};

// p256 = 2^256 - 2^224 + 2^192 + 2^96 - 1, so q = t_0 and
// (t + q p) / 2^32 = t / 2^32 + q (2^224 - 2^192 + 2^160 + 2^64), t_0 = q
// cancelling against -q: q at words 2 and 5 and q (2^32 - 1) at word 6 of
// the shifted value, i.e. t[3], t[6] and t[7..8] here (see field.cuh).
template <> struct mont_reduce<p256_fp> {
    EC_FN static void add_qm(u32 *t, u32 q) {
        // q (2^32 - 1) = hi:lo with lo = -q mod 2^32, hi = q - (q != 0)
        u32 lo = 0, hi = q;
        cc::sub_cc(lo, q);
        cc::subc(hi, 0);
        cc::add_cc(t[3], q);
        cc::addc_cc(t[4], 0);
        cc::addc_cc(t[5], 0);
        cc::addc_cc(t[6], q);
        cc::addc_cc(t[7], lo);
        cc::addc_cc(t[8], hi);
        cc::addc(t[9], 0);
    }
};

struct p256_fn {
    enum { L = 8 };
    EC_FN static const u32 *mod() { return P256_N; }
    EC_FN static u32 m0() { return 0xee00bc4fu; }
    EC_FN static const u32 *rr() { return P256_N_RR; }
    EC_FN static const u32 *one() { return P256_N_ONE; }
    EC_FN static const u32 *exp_inv() { return P256_N_EXP; }
};

// p384: field prime p
EC_CONST u32 P384_P[12] = {0xffffffffu, 0x00000000u, 0x00000000u, 0xffffffffu, 0xfffffffeu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
EC_CONST u32 P384_P_RR[12] = {0x00000001u, 0xfffffffeu, 0x00000000u, 0x00000002u, 0x00000000u, 0xfffffffeu, 0x00000000u, 0x00000002u, 0x00000001u, 0x00000000u, 0x00000000u, 0x00000000u};
EC_CONST u32 P384_P_ONE[12] = {0x00000001u, 0xffffffffu, 0xffffffffu, 0x00000000u, 0x00000001u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u};
EC_CONST u32 P384_P_EXP[12] = {0xfffffffdu, 0x00000000u, 0x00000000u, 0xffffffffu, 0xfffffffeu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};  // m - 2
// p384: group order n
EC_CONST u32 P384_N[12] = {0xccc52973u, 0xecec196au, 0x48b0a77au, 0x581a0db2u, 0xf4372ddfu, 0xc7634d81u, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
EC_CONST u32 P384_N_RR[12] = {0x19b409a9u, 0x2d319b24u, 0xdf1aa419u, 0xff3d81e5u, 0xfcb82947u, 0xbc3e483au, 0x4aab1cc5u, 0xd40d4917u, 0x28266895u, 0x3fb05b7au, 0x2b39bf21u, 0x0c84ee01u};
EC_CONST u32 P384_N_ONE[12] = {0x333ad68du, 0x1313e695u, 0xb74f5885u, 0xa7e5f24du, 0x0bc8d220u, 0x389cb27eu, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u};
EC_CONST u32 P384_N_EXP[12] = {0xccc52971u, 0xecec196au, 0x48b0a77au, 0x581a0db2u, 0xf4372ddfu, 0xc7634d81u, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};  // m - 2
// p384: curve coefficient b (Montgomery) and the base point G (plain)
EC_CONST u32 P384_B_MONT[12] = {0x9d412dccu, 0x08118871u, 0x7a4c32ecu, 0xf729add8u, 0x1920022eu, 0x77f2209bu, 0x94938ae2u, 0xe3374beeu, 0x1f022094u, 0xb62b21f4u, 0x604fbff9u, 0xcd08114bu};
EC_CONST u32 P384_GX[12] = {0x72760ab7u, 0x3a545e38u, 0xbf55296cu, 0x5502f25du, 0x82542a38u, 0x59f741e0u, 0x8ba79b98u, 0x6e1d3b62u, 0xf320ad74u, 0x8eb1c71eu, 0xbe8b0537u, 0xaa87ca22u};
EC_CONST u32 P384_GY[12] = {0x90ea0e5fu, 0x7a431d7cu, 0x1d7e819du, 0x0a60b1ceu, 0xb5f0b8c0u, 0xe9da3113u, 0x289a147cu, 0xf8f41dbdu, 0x9292dc29u, 0x5d9e98bfu, 0x96262c6fu, 0x3617de4au};

struct p384_fp {
    enum { L = 12 };
    EC_FN static const u32 *mod() { return P384_P; }
    EC_FN static u32 m0() { return 0x00000001u; }
    EC_FN static const u32 *rr() { return P384_P_RR; }
    EC_FN static const u32 *one() { return P384_P_ONE; }
    EC_FN static const u32 *exp_inv() { return P384_P_EXP; }
};

// p384 = 2^384 - 2^128 - 2^96 + 2^32 - 1, so q = t_0 and
// (t + q p) / 2^32 = t / 2^32 + q (2^352 - 2^96 - 2^64 + 1): q added at
// words 0 and 11 and subtracted at words 2 and 3 of the shifted value, i.e.
// t[1], t[12] and t[3], t[4] here. The sum is the generic row's value, so no
// chain carries or borrows out of t[13].
template <> struct mont_reduce<p384_fp> {
    EC_FN static void add_qm(u32 *t, u32 q) {
        cc::add_cc(t[1], q);
EC_UNROLL
        for (int j = 2; j < 12; j++) cc::addc_cc(t[j], 0);
        cc::addc_cc(t[12], q);
        cc::addc(t[13], 0);
        cc::sub_cc(t[3], q);
        cc::subc_cc(t[4], q);
EC_UNROLL
        for (int j = 5; j < 13; j++) cc::subc_cc(t[j], 0);
        cc::subc(t[13], 0);
    }
};

struct p384_fn {
    enum { L = 12 };
    EC_FN static const u32 *mod() { return P384_N; }
    EC_FN static u32 m0() { return 0xe88fdc45u; }
    EC_FN static const u32 *rr() { return P384_N_RR; }
    EC_FN static const u32 *one() { return P384_N_ONE; }
    EC_FN static const u32 *exp_inv() { return P384_N_EXP; }
};

// Comb parameters (ec/ecdsa.cuh): TEETH bits per table lookup, COMBS tables,
// SPACING = BITS / (TEETH * COMBS) doublings. TEETH = 4, COMBS = 8 gives
// 16 entries per lookup (the constant-time scan reads all of them) and a
// table of 128 affine points (8 KiB for P-256, 12 KiB for P-384): small
// enough to stay in L1/L2 for every SM, read with warp-uniform addresses.
// COMBS = 8 rather than 4 halves the doublings (P-256: 8 instead of 16,
// ~4,400 SASS instructions each) for the same 64 additions and lookups;
// the check kernel's second table (Q's, in the key blob) doubles with it.
//
// COOP_T: lanes per number in the warp's shared inversion (warp_inv.cuh),
// L / COOP_T limbs each; a power of two dividing L.
struct P256 {
    enum { L = 8, BITS = 256, TEETH = 4, COMBS = 8, SPACING = 8, COOP_T = 8 };
    typedef mont_t<p256_fp> fp;
    typedef mont_t<p256_fn> fn;
    EC_FN static const u32 *b_mont() { return P256_B_MONT; }
    EC_FN static const u32 *gx() { return P256_GX; }
    EC_FN static const u32 *gy() { return P256_GY; }
    EC_FN static const u32 *fn_mod() { return P256_N; }
};

struct P384 {
    enum { L = 12, BITS = 384, TEETH = 4, COMBS = 8, SPACING = 12, COOP_T = 4 };
    typedef mont_t<p384_fp> fp;
    typedef mont_t<p384_fn> fn;
    EC_FN static const u32 *b_mont() { return P384_B_MONT; }
    EC_FN static const u32 *gx() { return P384_GX; }
    EC_FN static const u32 *gy() { return P384_GY; }
    EC_FN static const u32 *fn_mod() { return P384_N; }
};

}  // namespace ec
}  // namespace smx
