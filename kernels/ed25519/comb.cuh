// Scalar multiplication: k B for a secret k by a fixed-base comb with masked
// (constant-time) table reads, and k Q for public k and Q (check kernel).
//
// The comb is the P-256 one of ec/ecdsa.cuh with the same parameters:
// TEETH = 4 teeth, COMBS = 4 combs, SPACING = 16 columns over 256 bits (a
// clamped secret scalar is below 2^255, r and S below L < 2^253). Bit
// (c*TEETH + t)*SPACING + j of k is tooth t of comb c in column j; table
// entry [c][digit] (digit = 0..15) is the sum over the set bits t of digit
// of 2^((c*TEETH + t)*SPACING) B, affine, stored as (y + x, y - x, 2 d x y)
// in Montgomery form mod p: ENTRY_WORDS = 24 words (8 limbs each, in that
// order), entries in order c*16 + digit. TABLE_WORDS = 4 * 16 * 24 = 1536
// words (6 KiB), cache resident like the P-256 table. Unlike the
// Weierstrass table, digit 0 is a real entry, the identity (1, 1, 0): the
// Edwards mixed addition is complete for it, so every column adds its
// lookup with no masked keep. k B takes 16 doublings and 64 mixed additions;
// every lookup reads all 16 entries of its comb and keeps one by mask, so no
// address depends on k.
#pragma once

#include "ed25519/point.cuh"

namespace smx {
namespace ed25519 {

enum {
    COMB_TEETH = 4,
    COMB_COMBS = 4,
    COMB_SPACING = 16,
    COMB_ENTRIES = 1 << COMB_TEETH,
    COMB_ENTRY_WORDS = 24,
    COMB_WORDS = COMB_ENTRIES * COMB_ENTRY_WORDS,
    TABLE_WORDS = COMB_COMBS * COMB_WORDS,
};

EC_FN void put_niels(u32 *e, const niels_t &n) {
    for (int j = 0; j < 8; j++) {
        e[j] = n.ypx.v[j];
        e[8 + j] = n.ymx.v[j];
        e[16 + j] = n.xy2d.v[j];
    }
}

#if !defined(__CUDACC_RTC__) && !defined(__CUDACC__)
// Host only: the table is built once on the host and uploaded, so the
// device build has no use for B itself (scripts/ed25519-consts.py).
// The base point B = (x, 4/5) with x even (plain integers).
static const u32 ED_BX[8] = {0x8f25d51au, 0xc9562d60u, 0x9525a7b2u, 0x692cc760u, 0xfdd6dc5cu, 0xc0a4e231u, 0xcd6e53feu, 0x216936d3u};
static const u32 ED_BY[8] = {0x66666658u, 0x66666666u, 0x66666666u, 0x66666666u, 0x66666666u, 0x66666666u, 0x66666666u, 0x66666666u};

// The comb table for B (public; 64 inversions).
inline void comb_table_build(u32 *table) {
    const int n = COMB_TEETH * COMB_COMBS;
    point_t base[COMB_TEETH * COMB_COMBS];
    base[0] = point_t::from_affine(fe::from_int(ED_BX), fe::from_int(ED_BY));
    for (int i = 1; i < n; i++) {
        base[i] = base[i - 1];
        for (int j = 0; j < COMB_SPACING; j++) base[i] = base[i].dbl();
    }
    for (int c = 0; c < COMB_COMBS; c++) {
        for (int digit = 0; digit < COMB_ENTRIES; digit++) {
            point_t acc = point_t::identity();
            for (int t = 0; t < COMB_TEETH; t++)
                if (digit >> t & 1) acc = acc.add(base[c * COMB_TEETH + t]);
            fe zi = acc.z.inv();  // Z is never zero on Edwards curves
            put_niels(table + c * COMB_WORDS + digit * COMB_ENTRY_WORDS,
                      to_niels(acc.x * zi, acc.y * zi));
        }
    }
}
#endif

// Entry `digit` of one comb (COMB_ENTRIES entries at `tab`), by a masked
// scan over all of them: the addresses read do not depend on the digit.
EC_FN niels_t comb_lookup(const u32 *tab, u32 digit) {
    niels_t r;
    for (int j = 0; j < 8; j++) r.ypx.v[j] = r.ymx.v[j] = r.xy2d.v[j] = 0;
    for (int e = 0; e < COMB_ENTRIES; e++) {
        u32 m = mask_eq((u32)e, digit);
        const u32 *p = tab + e * COMB_ENTRY_WORDS;
        for (int j = 0; j < 8; j++) {
            r.ypx.v[j] |= m & p[j];
            r.ymx.v[j] |= m & p[8 + j];
            r.xy2d.v[j] |= m & p[16 + j];
        }
    }
    return r;
}

// k B for a secret k (8 limbs, any value below 2^256), constant time.
EC_FN point_t mul_base(const u32 *table, const u32 *k) {
    point_t r = point_t::identity();
    for (int j = COMB_SPACING - 1; j >= 0; j--) {
        r = r.dbl();
        for (int c = 0; c < COMB_COMBS; c++) {
            u32 digit = 0;
            for (int t = 0; t < COMB_TEETH; t++) {
                int pos = (c * COMB_TEETH + t) * COMB_SPACING + j;  // public
                digit |= ((k[pos >> 5] >> (pos & 31)) & 1) << t;
            }
            r = r.madd(comb_lookup(table + c * COMB_WORDS, digit));
        }
    }
    return r;
}

// k Q for PUBLIC k (8 limbs) and Q (check kernel only): fixed 4-bit windows
// over a directly indexed table of 0..15 Q, complete additions.
EC_FN point_t mul_var_public(const point_t &q, const u32 *k) {
    point_t tab[16];
    tab[0] = point_t::identity();
    tab[1] = q;
    for (int i = 2; i < 16; i++) tab[i] = tab[i - 1].add(q);
    point_t r = point_t::identity();
    for (int w = 63; w >= 0; w--) {
        r = r.dbl().dbl().dbl().dbl();
        r = r.add(tab[(k[w >> 3] >> ((w & 7) * 4)) & 15]);
    }
    return r;
}

}  // namespace ed25519
}  // namespace smx
