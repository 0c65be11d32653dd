// Scalar multiplication: k B for a secret k by a fixed-base comb with masked
// (constant-time) table reads, and s B + k Q for public s, k (check kernel)
// by the same comb over B's table and a table of Q.
//
// The comb is the P-256 one of ec/ecdsa.cuh with the same parameters:
// TEETH = 4 teeth, COMBS = 8 combs, SPACING = 8 columns over 256 bits (a
// clamped secret scalar is below 2^255, r and S below L < 2^253). Bit
// (c*TEETH + t)*SPACING + j of k is tooth t of comb c in column j; table
// entry [c][digit] (digit = 0..15) is the sum over the set bits t of digit
// of 2^((c*TEETH + t)*SPACING) B, affine, stored as (y + x, y - x, 2 d x y)
// in Montgomery form mod p: ENTRY_WORDS = 24 words (8 limbs each, in that
// order), entries in order c*16 + digit. TABLE_WORDS = 8 * 16 * 24 = 3072
// words (12 KiB), cache resident like the P-256 table. Unlike the
// Weierstrass table, digit 0 is a real entry, the identity (1, 1, 0): the
// Edwards mixed addition is complete for it, so every column adds its
// lookup with no masked keep. k B takes 8 doublings and 64 mixed additions;
// every lookup reads all 16 entries of its comb and keeps one by mask, so no
// address depends on k.
#pragma once

#include "ed25519/point.cuh"

namespace smx {
namespace ed25519 {

enum {
    COMB_TEETH = 4,
    COMB_COMBS = 8,
    COMB_SPACING = 8,
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

// The comb table for the point p (public): the entries summed in extended
// coordinates, then made affine together with one inversion (batch_invert;
// Z is never zero on the Edwards curve).
inline void comb_table_build_for(u32 *table, const point_t &p) {
    enum { N = COMB_COMBS * COMB_ENTRIES };
    point_t base[COMB_TEETH * COMB_COMBS];
    base[0] = p;
    for (int i = 1; i < COMB_TEETH * COMB_COMBS; i++) {
        base[i] = base[i - 1];
        for (int j = 0; j < COMB_SPACING; j++) base[i] = base[i].dbl();
    }
    point_t acc[N];
    for (int c = 0; c < COMB_COMBS; c++)
        for (int digit = 0; digit < COMB_ENTRIES; digit++) {
            point_t &a = acc[c * COMB_ENTRIES + digit];
            a = point_t::identity();
            for (int t = 0; t < COMB_TEETH; t++)
                if (digit >> t & 1) a = a.add(base[c * COMB_TEETH + t]);
        }
    fe zi[N];
    for (int e = 0; e < N; e++) zi[e] = acc[e].z;
    ec::batch_invert(zi);
    for (int e = 0; e < N; e++)
        put_niels(table + e * COMB_ENTRY_WORDS, to_niels(acc[e].x * zi[e], acc[e].y * zi[e]));
}

// The comb table for B.
inline void comb_table_build(u32 *table) {
    comb_table_build_for(table, point_t::from_affine(fe::from_int(ED_BX), fe::from_int(ED_BY)));
}

// The check kernel's table for a public key: that of -A, from A's 32-byte
// encoding (8 words). False when A does not decode.
inline bool comb_table_build_neg(u32 *table, const u32 *a_enc) {
    point_t a;
    if (!a.decode_public(a_enc)) return false;
    comb_table_build_for(table, a.neg());
    return true;
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

// r += the comb entries of column j of k (one mixed addition per comb),
// constant time in k.
EC_FN void comb_column(point_t &r, const u32 *table, const u32 *k, int j) {
    for (int c = 0; c < COMB_COMBS; c++) {
        u32 digit = 0;
        for (int t = 0; t < COMB_TEETH; t++) {
            int pos = (c * COMB_TEETH + t) * COMB_SPACING + j;  // public
            digit |= ((k[pos >> 5] >> (pos & 31)) & 1) << t;
        }
        r = r.madd(comb_lookup(table + c * COMB_WORDS, digit));
    }
}

// k B for a secret k (8 limbs, any value below 2^256), constant time.
EC_FN point_t mul_base(const u32 *table, const u32 *k) {
    point_t r = point_t::identity();
    for (int j = COMB_SPACING - 1; j >= 0; j--) {
        r = r.dbl();
        comb_column(r, table, k, j);
    }
    return r;
}

// s B + k Q (check kernel) from B's table and Q's: both combs in one pass,
// sharing the doublings.
EC_FN point_t mul_base2(const u32 *tb, const u32 *s, const u32 *tq, const u32 *k) {
    point_t r = point_t::identity();
    for (int j = COMB_SPACING - 1; j >= 0; j--) {
        r = r.dbl();
        comb_column(r, tb, s, j);
        comb_column(r, tq, k, j);
    }
    return r;
}

}  // namespace ed25519
}  // namespace smx
