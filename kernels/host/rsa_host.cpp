// Host build of the RSA kernels: C ABI wrappers that run, item by item,
// exactly the per-item functions rsa.cu's kernels run (rsa/crt.cuh), for
// the tests (src/backend/cuda/host_rsa.rs). Return 0, or -1 for an
// unsupported size.
#include "rsa/coop.cuh"

// smx_rsa_sign_host, smx_rsa_modexp_host.
#define SMX_RSA_HOST_FN(name) smx_rsa_##name##_host
#include "rsa_thread_abi.h"

using smx::u32;
using smx::u64;

namespace {

// The cooperative kernel's threads, a warp at a time (lane_t holds a whole
// warp on the host), as rsa{B}_sign_coop{T} runs them.
template <int N, int T>
void sign_coop_all(const u32 *key, const u32 *in, u32 *out, u32 count) {
    const u64 total = ((u64)count * (2 * T) + 31) & ~(u64)31;
    for (u64 base = 0; base < total; base += smx::rsa::kWarp) {
        smx::rsa::lane_t th;
        for (int w = 0; w < smx::rsa::kWarp; w++) th.x[w] = (u32)(base + w);
        smx::rsa::coop::sign_thread<N, T>(key, in, out, count, th);
    }
}

template <int N>
void check_all(const u32 *key, const u32 *sig, const u32 *expected, u32 *ok, u32 count) {
    for (u64 i = 0; i < count; i++) smx::rsa::check_item<N>(key, sig, expected, ok, count, i);
}

// base^exp mod m by the cooperative code: every half-group of the warp
// computes it (all from the same inputs); the first one's lanes hold the
// result.
template <int N, int T>
void modexp_coop(const u32 *m, u32 m0, const u32 *rr, const u32 *base, const u32 *exp, u32 *out) {
    using smx::rsa::lane_t;
    constexpr int K = N / T;
    lane_t th;
    for (int w = 0; w < smx::rsa::kWarp; w++) th.x[w] = (u32)w;
    smx::rsa::coop::Field<N, T> F{smx::rsa::coop::Place<T>(th)};
    lane_t mine = F.at.l * (u32)K, x[K], acc[K];
    for (int j = 0; j < K; j++) {
        F.m[j] = smx::rsa::lane_load(m, mine + (u32)j);
        F.rr[j] = smx::rsa::lane_load(rr, mine + (u32)j);
        x[j] = smx::rsa::lane_load(base, mine + (u32)j);
    }
    F.m0 = lane_t::all(m0);
    F.to_mont(x, x);
    smx::rsa::coop::pow_ct<N, T>(F, acc, x, exp, lane_t::all(0));
    F.to_plain(acc, acc);
    for (int l = 0; l < T; l++)
        for (int j = 0; j < K; j++) out[l * K + j] = acc[j].x[l];
}

}  // namespace

// As smx_rsa_sign_host, by the cooperative mapping with `lanes` (8 or 16)
// threads per CRT half.
extern "C" int smx_rsa_sign_coop_host(u32 bits, u32 lanes, const u32 *key, const u32 *in, u32 *out,
                                      u32 count) {
    switch (bits * 100 + lanes) {
        case 204808: sign_coop_all<32, 8>(key, in, out, count); return 0;
        case 204816: sign_coop_all<32, 16>(key, in, out, count); return 0;
        case 307208: sign_coop_all<48, 8>(key, in, out, count); return 0;
        case 307216: sign_coop_all<48, 16>(key, in, out, count); return 0;
        case 409608: sign_coop_all<64, 8>(key, in, out, count); return 0;
        case 409616: sign_coop_all<64, 16>(key, in, out, count); return 0;
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

// As smx_rsa_modexp_host, by the cooperative code with `lanes` (8 or 16)
// threads.
extern "C" int smx_rsa_modexp_coop_host(u32 limbs, u32 lanes, const u32 *m, u32 m0, const u32 *rr,
                                        const u32 *base, const u32 *exp, u32 *out) {
    switch (limbs * 100 + lanes) {
        case 3208: modexp_coop<32, 8>(m, m0, rr, base, exp, out); return 0;
        case 3216: modexp_coop<32, 16>(m, m0, rr, base, exp, out); return 0;
        case 4808: modexp_coop<48, 8>(m, m0, rr, base, exp, out); return 0;
        case 4816: modexp_coop<48, 16>(m, m0, rr, base, exp, out); return 0;
        case 6408: modexp_coop<64, 8>(m, m0, rr, base, exp, out); return 0;
        case 6416: modexp_coop<64, 16>(m, m0, rr, base, exp, out); return 0;
        default: return -1;
    }
}
