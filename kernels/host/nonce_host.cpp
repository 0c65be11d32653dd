// Host build of the nonce kernels and their hashes (kernels/nonce.cu,
// kernels/nonce/rfc6979.cuh, kernels/hash/*), behind a C ABI for the tests
// (src/backend/cuda/host_nonce.rs). The nonce functions run, item by item,
// exactly the per-item code of the kernels.
#include "nonce/rfc6979.cuh"

using namespace smx;

extern "C" {

void smx_sha256_host(const u8 *msg, u32 n, u8 *out) { sha2::digest<sha2::Sha256>(msg, n, out); }
void smx_sha384_host(const u8 *msg, u32 n, u8 *out) { sha2::digest<sha2::Sha384>(msg, n, out); }
void smx_sha512_host(const u8 *msg, u32 n, u8 *out) { sha2::digest<sha2::Sha512>(msg, n, out); }

void smx_hmac_sha256_host(const u8 *key, u32 kn, const u8 *msg, u32 n, u8 *out) {
    hmac::mac<sha2::Sha256>(key, kn, msg, n, out);
}
void smx_hmac_sha384_host(const u8 *key, u32 kn, const u8 *msg, u32 n, u8 *out) {
    hmac::mac<sha2::Sha384>(key, kn, msg, n, out);
}
void smx_hmac_sha512_host(const u8 *key, u32 kn, const u8 *msg, u32 n, u8 *out) {
    hmac::mac<sha2::Sha512>(key, kn, msg, n, out);
}

// The kernels' ABI, one item at a time.
void smx_p256_nonce_host(const u32 *key, const u32 *z, const u8 *seed, u32 *k, u32 *ok,
                         u32 count) {
    for (u32 i = 0; i < count; i++) nonce::p256_nonce_item(key, z, seed, k, ok, count, i);
}
void smx_p384_nonce_host(const u32 *key, const u32 *z, const u8 *seed, u32 *k, u32 *ok,
                         u32 count) {
    for (u32 i = 0; i < count; i++) nonce::p384_nonce_item(key, z, seed, k, ok, count, i);
}

// One nonce with arbitrary (possibly empty) additional data, `candidates`
// candidates, and the group order `n` (null: the curve's own; another
// order of the same bit length lets tests reach the retry path). d, z, k:
// L little-endian limbs. Returns ok.
u32 smx_p256_rfc6979_host(const u32 *n, const u32 *d, const u32 *z, const u8 *adata, u32 alen,
                          u32 candidates, u32 *k) {
    u32 order[8];
    nonce::p256_order(order);
    return nonce::rfc6979_k<sha2::Sha256, 8>(n ? n : order, d, z, adata, alen, candidates, k);
}
u32 smx_p384_rfc6979_host(const u32 *n, const u32 *d, const u32 *z, const u8 *adata, u32 alen,
                          u32 candidates, u32 *k) {
    u32 order[12];
    nonce::p384_order(order);
    return nonce::rfc6979_k<sha2::Sha384, 12>(n ? n : order, d, z, adata, alen, candidates, k);
}

// The candidate counts the kernels use.
u32 smx_p256_nonce_candidates(void) { return nonce::P256_CANDIDATES; }
u32 smx_p384_nonce_candidates(void) { return nonce::P384_CANDIDATES; }

}  // extern "C"
