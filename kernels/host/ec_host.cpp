// Host build of the ECDSA kernels (C ABI for src/backend/cuda/host_ec.rs):
// the batch entry points run exactly the per-item functions the kernels in
// ecdsa.cu run; the lower-level ones expose the arithmetic to the tests.
// All numbers are plain (not Montgomery) L-limb little-endian integers.
#include "ec/ecdsa.cuh"

using smx::u32;
using namespace smx::ec;

namespace {

template <class C>
void sign_host(const u32 *table, const u32 *key, const u32 *z, const u32 *k, u32 *r, u32 *s,
               u32 *ok, u32 count) {
    // One emulated warp at a time, as ecdsa.cu's warps.
    for (u32 first = 0; first < count; first += 32) sign_lanes<C>(table, key, z, k, r, s, ok, count, first);
}

template <class C>
void check_host(const u32 *table, const u32 *key, const u32 *z, const u32 *r, const u32 *s,
                u32 *ok, u32 count) {
    for (u32 first = 0; first < count; first += 32) check_lanes<C>(table, key, z, r, s, ok, count, first);
}

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

// out = affine x, y (plain) and a word that is 1 for O.
template <class C> void put_affine(const point_t<C> &p, u32 *out) {
    typename C::fp x, y;
    u32 inf = p.to_affine(x, y);
    x.to_int(out);
    y.to_int(out + C::L);
    out[2 * C::L] = inf & 1;
}

template <class C> point_t<C> get_point(const u32 *in) {
    point_t<C> p;
    p.x = C::fp::from_int(in);
    p.y = C::fp::from_int(in + C::L);
    p.z = C::fp::from_int(in + 2 * C::L);
    return p;
}

template <class C> void point_op(u32 op, const u32 *p, const u32 *q, u32 *out) {
    point_t<C> a = get_point<C>(p), b = get_point<C>(q);
    affine_t<C> qa;
    qa.x = b.x;
    qa.y = b.y;
    point_t<C> r = op == 0 ? a.add(b) : op == 1 ? a.madd(qa) : a.dbl();
    put_affine<C>(r, out);
}

}  // namespace

#define SMX_EC_HOST(name, C)                                                                      \
    extern "C" void smx_##name##_sign_host(const u32 *table, const u32 *key, const u32 *z,        \
                                           const u32 *k, u32 *r, u32 *s, u32 *ok, u32 count) {    \
        sign_host<C>(table, key, z, k, r, s, ok, count);                                          \
    }                                                                                             \
    extern "C" void smx_##name##_check_host(const u32 *table, const u32 *key, const u32 *z,       \
                                            const u32 *r, const u32 *s, u32 *ok, u32 count) {     \
        check_host<C>(table, key, z, r, s, ok, count);                                            \
    }                                                                                             \
    extern "C" u32 smx_##name##_table_words(void) { return comb_t<C>::TABLE_WORDS; }              \
    extern "C" void smx_##name##_comb_table(u32 *out) { comb_table_build<C>(out); }               \
    /* the comb table of the point (qx, qy), plain integers */                                    \
    extern "C" void smx_##name##_comb_table_for(const u32 *qx, const u32 *qy, u32 *out) {         \
        comb_table_build<C>(out, qx, qy);                                                         \
    }                                                                                             \
    /* which: 0 = mod p, 1 = mod n; op: 0 a*b, 1 a+b, 2 a-b, 3 a^-1 (a, b < modulus) */           \
    extern "C" void smx_##name##_mod_op(u32 which, u32 op, const u32 *a, const u32 *b, u32 *out) { \
        if (which == 0)                                                                           \
            mod_op<C::fp>(op, a, b, out);                                                         \
        else                                                                                      \
            mod_op<C::fn>(op, a, b, out);                                                         \
    }                                                                                             \
    /* p, q projective X, Y, Z (3L); op: 0 p+q, 1 p+q with q affine (its Z ignored), 2 2p;        \
       out: affine x, y and an infinity flag (2L + 1) */                                          \
    extern "C" void smx_##name##_point_op(u32 op, const u32 *p, const u32 *q, u32 *out) {         \
        point_op<C>(op, p, q, out);                                                               \
    }                                                                                             \
    extern "C" void smx_##name##_mul_base(const u32 *table, const u32 *k, u32 *out) {             \
        put_affine<C>(mul_base<C>(table, k), out);                                                \
    }                                                                                             \
    /* k1 G + k2 Q from the tables of G and Q, as the check kernel */                             \
    extern "C" void smx_##name##_mul_base2(const u32 *tg, const u32 *k1, const u32 *tq,           \
                                           const u32 *k2, u32 *out) {                             \
        put_affine<C>(mul_base2<C>(tg, k1, tq, k2), out);                                         \
    }

SMX_EC_HOST(p256, P256)
SMX_EC_HOST(p384, P384)
