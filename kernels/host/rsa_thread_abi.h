// The one-thread RSA kernels' sign and modexp paths behind a C ABI, for the
// host builds (rsa_host.cpp: portable fallbacks; rsa_emu_host.cpp and
// rsa_wide_emu_host.cpp: the device's carry chains emulated). The includer
// first includes rsa/crt.cuh with its own settings and defines
// SMX_RSA_HOST_FN(name) to the exported name of each function (e.g.
// smx_rsa_##name##_host). Return 0, or -1 for an unsupported size.
#pragma once

namespace {

template <int N>
void sign_all(const smx::u32 *key, const smx::u32 *in, smx::u32 *out, smx::u32 count) {
    for (smx::u64 i = 0; i < count; i++) smx::rsa::sign_item<N>(key, in, out, count, i);
}

template <int N>
void modexp_one(const smx::u32 *m, smx::u32 m0, const smx::u32 *rr, const smx::u32 *base,
                const smx::u32 *exp, smx::u32 *out) {
    const smx::rsa::Field<N> F = {m, rr, m0};
    smx::rsa::pow_ct<N>(F.to_mont(base), exp).to_plain(out);
}

}  // namespace

// rsa{B}_sign on the host: each item by the kernels' per-item function.
extern "C" int SMX_RSA_HOST_FN(sign)(smx::u32 bits, const smx::u32 *key, const smx::u32 *in,
                                     smx::u32 *out, smx::u32 count) {
    switch (bits) {
        case 2048: sign_all<32>(key, in, out, count); return 0;
        case 3072: sign_all<48>(key, in, out, count); return 0;
        case 4096: sign_all<64>(key, in, out, count); return 0;
        default: return -1;
    }
}

// out = base^exp mod m with the constant-time fixed-window exponentiation
// the CRT halves use. limbs: 32, 48 or 64; m odd with its top bit set,
// m0 = -m^-1 mod 2^32, rr = 2^(64*limbs) mod m, base any limbs-word value,
// exp limbs words (all 32*limbs bits are scanned).
extern "C" int SMX_RSA_HOST_FN(modexp)(smx::u32 limbs, const smx::u32 *m, smx::u32 m0,
                                       const smx::u32 *rr, const smx::u32 *base,
                                       const smx::u32 *exp, smx::u32 *out) {
    switch (limbs) {
        case 32: modexp_one<32>(m, m0, rr, base, exp, out); return 0;
        case 48: modexp_one<48>(m, m0, rr, base, exp, out); return 0;
        case 64: modexp_one<64>(m, m0, rr, base, exp, out); return 0;
        default: return -1;
    }
}
