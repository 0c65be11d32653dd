// Host build of the Ed25519 kernels (C ABI for
// src/backend/cuda/host_ed25519.rs): the batch entry points run exactly the
// per-item functions the kernels in ed25519.cu run; the lower-level ones
// expose the arithmetic to the tests. Numbers are plain (not Montgomery)
// 8-limb little-endian integers; points travel as their 32-byte encodings
// packed in 8 words (which is the same thing).
#include "ed25519/eddsa.cuh"

using smx::u32;
using namespace smx::ed25519;

extern "C" void smx_ed25519_sign_host(const u32 *table, const u32 *key, const unsigned char *msg,
                                      const u32 *off, u32 *sig, u32 *ok, u32 count) {
    // One emulated warp at a time, as ed25519.cu's warps.
    for (u32 first = 0; first < count; first += 32) sign_lanes(table, key, msg, off, sig, ok, count, first);
}

extern "C" void smx_ed25519_check_host(const u32 *table, const u32 *key, const unsigned char *msg,
                                       const u32 *off, const u32 *sig, u32 *ok, u32 count) {
    for (u32 first = 0; first < count; first += 32) check_lanes(table, key, msg, off, sig, ok, count, first);
}

extern "C" u32 smx_ed25519_table_words(void) { return TABLE_WORDS; }

extern "C" void smx_ed25519_comb_table(u32 *out) { comb_table_build(out); }

namespace {

template <class F> void mod_op(u32 op, const u32 *a, const u32 *b, u32 *out) {
    F x = F::from_int(a), y = F::from_int(b), o;
    switch (op) {
        case 0: o = x * y; break;
        case 1: o = x + y; break;
        case 2: o = x - y; break;
        default: o = x.inv(); break;
    }
    o.to_int(out);
}

}  // namespace

// which: 0 = mod p, 1 = mod L; op: 0 a*b, 1 a+b, 2 a-b, 3 a^-1. a, b are
// any 256-bit values: from_int reduces them on the way in.
extern "C" void smx_ed25519_mod_op(u32 which, u32 op, const u32 *a, const u32 *b, u32 *out) {
    if (which == 0)
        mod_op<fe>(op, a, b, out);
    else
        mod_op<sc>(op, a, b, out);
}

// A 512-bit value (16 limbs) mod L, as the signing path reduces digests.
extern "C" void smx_ed25519_reduce512(const u32 *h, u32 *out) { reduce512(h, out); }

// 1 and the canonical re-encoding when `in` decodes, else 0.
extern "C" u32 smx_ed25519_decode(const u32 *in, u32 *out) {
    point_t p;
    if (!p.decode_public(in)) return 0;
    p.encode(out);
    return 1;
}

// op: 0 p + q (add), 1 p + q (mixed addition, q in the table's precomputed
// form), 2 2p (dbl; q ignored). Encodings in and out; 0 when an input does
// not decode.
extern "C" u32 smx_ed25519_point_op(u32 op, const u32 *p, const u32 *q, u32 *out) {
    point_t a, b;
    if (!a.decode_public(p) || !b.decode_public(q)) return 0;
    point_t r = op == 0 ? a.add(b) : op == 1 ? a.madd(to_niels(b.x, b.y)) : a.dbl();
    r.encode(out);
    return 1;
}

// enc(k B) by the constant-time comb (k: 8 limbs, any value).
extern "C" void smx_ed25519_mul_base(const u32 *table, const u32 *k, u32 *out) {
    mul_base(table, k).encode(out);
}

// enc(s B + k Q) as the check kernel computes it, from B's table and Q's
// (smx_ed25519_neg_table makes the table of -A).
extern "C" void smx_ed25519_mul_base2(const u32 *tb, const u32 *s, const u32 *tq, const u32 *k,
                                      u32 *out) {
    mul_base2(tb, s, tq, k).encode(out);
}

// The comb table of -A (TABLE_WORDS) from A's encoding: the tail of the key
// blob. 0 when A does not decode.
extern "C" u32 smx_ed25519_neg_table(const u32 *a_enc, u32 *out) {
    return comb_table_build_neg(out, a_enc) ? 1 : 0;
}
