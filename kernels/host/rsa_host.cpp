// Host build of the RSA kernels: C ABI wrappers that run, item by item,
// exactly the per-item functions rsa.cu's kernels run (rsa/crt.cuh), for
// the tests (src/backend/cuda/host_rsa.rs). Return 0, or -1 for an
// unsupported size.
#include "rsa/crt.cuh"

using smx::u32;
using smx::u64;

namespace {

template <int N>
void sign_all(const u32 *key, const u32 *in, u32 *out, u32 count) {
    for (u64 i = 0; i < count; i++) smx::rsa::sign_item<N>(key, in, out, count, i);
}

template <int N>
void check_all(const u32 *key, const u32 *sig, const u32 *expected, u32 *ok, u32 count) {
    for (u64 i = 0; i < count; i++) smx::rsa::check_item<N>(key, sig, expected, ok, count, i);
}

template <int N>
void modexp(const u32 *m, u32 m0, const u32 *rr, const u32 *base, const u32 *exp, u32 *out) {
    const smx::rsa::Field<N> F = {m, rr, m0};
    smx::rsa::pow_ct<N>(F.to_mont(base), exp).to_plain(out);
}

}  // namespace

extern "C" int smx_rsa_sign_host(u32 bits, const u32 *key, const u32 *in, u32 *out, u32 count) {
    switch (bits) {
        case 2048: sign_all<32>(key, in, out, count); return 0;
        case 3072: sign_all<48>(key, in, out, count); return 0;
        case 4096: sign_all<64>(key, in, out, count); return 0;
        default: return -1;
    }
}

extern "C" int smx_rsa_check_host(u32 bits, const u32 *key, const u32 *sig, const u32 *expected,
                                  u32 *ok, u32 count) {
    switch (bits) {
        case 2048: check_all<32>(key, sig, expected, ok, count); return 0;
        case 3072: check_all<48>(key, sig, expected, ok, count); return 0;
        case 4096: check_all<64>(key, sig, expected, ok, count); return 0;
        default: return -1;
    }
}

// out = base^exp mod m with the constant-time fixed-window exponentiation
// the CRT halves use. limbs: 32, 48 or 64; m odd with its top bit set,
// m0 = -m^-1 mod 2^32, rr = 2^(64*limbs) mod m, base any limbs-word value,
// exp limbs words (all 32*limbs bits are scanned).
extern "C" int smx_rsa_modexp_host(u32 limbs, const u32 *m, u32 m0, const u32 *rr, const u32 *base,
                                   const u32 *exp, u32 *out) {
    switch (limbs) {
        case 32: modexp<32>(m, m0, rr, base, exp, out); return 0;
        case 48: modexp<48>(m, m0, rr, base, exp, out); return 0;
        case 64: modexp<64>(m, m0, rr, base, exp, out); return 0;
        default: return -1;
    }
}
