// Hedged ECDSA nonces (RFC 6979 + section 3.6 additional data), one thread
// per item; the arithmetic is kernels/nonce/rfc6979.cuh, whose host build
// (kernels/host/nonce_host.cpp) the tests check.
//
// {C}_nonce(key, z, seed, k, ok, count), C in p256 (HMAC-SHA-256), p384
// (HMAC-SHA-384); L = 8 or 12 limbs of 32 bits, little-endian:
//   key   the key blob; its first L words are the private scalar d
//   z     bits2int(digest) per item, truncated to qlen bits, not reduced
//   seed  32 fresh random bytes for the batch; item i's k' = seed || be32(i)
//   k     out: the nonce in [1, n-1]
//   ok    out: 1, or 0 when no candidate was valid (redo on the CPU)
// Batches are structure-of-arrays: limb j of item i at [j * count + i].
#include "nonce/rfc6979.cuh"

SMX_KERNEL void p256_nonce(const smx::u32 *key, const smx::u32 *z, const smx::u8 *seed,
                           smx::u32 *k, smx::u32 *ok, smx::u32 count) {
    smx::u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) smx::nonce::p256_nonce_item(key, z, seed, k, ok, count, i);
}

SMX_KERNEL void p384_nonce(const smx::u32 *key, const smx::u32 *z, const smx::u8 *seed,
                           smx::u32 *k, smx::u32 *ok, smx::u32 count) {
    smx::u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) smx::nonce::p384_nonce_item(key, z, seed, k, ok, count, i);
}
