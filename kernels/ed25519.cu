// Batched Ed25519 (RFC 8032, pure Ed25519) signing and checking (NVRTC
// program). ABI, one key per launch:
//   ed25519_sign(const u32 *table, const u32 *key, const unsigned char *msg,
//                const u32 *off, u32 *sig, u32 *ok, u32 count)
//   ed25519_check(const u32 *table, const u32 *key, const unsigned char *msg,
//                 const u32 *off, const u32 *sig, u32 *ok, u32 count)
//   table: the comb table for B, 3072 words (ed25519/comb.cuh: 8 combs x 16
//          entries x (y+x, y-x, 2dxy), Montgomery form mod p), built on the
//          host by smx_ed25519_comb_table (host/ed25519_host.cpp).
//   key:   24 + 3072 words: [0, 8) a, the clamped secret scalar, 8
//          little-endian limbs; [8, 16) the prefix and [16, 24) the encoded
//          public key A, 32 bytes each packed little-endian (byte j in word
//          j/4 at bits 8(j%4)); then the comb table of -A, laid out as B's
//          (smx_ed25519_neg_table). sign reads the first 24 words, check A
//          and the table.
//   msg, off: message i is msg[off[i] .. off[i+1]) (count + 1 offsets; any
//          length, empty included).
//   sig:   16 words per item, structure of arrays (word w of item i at
//          sig[w * count + i]): the 64 bytes R || S packed like A. Written by
//          sign, read by check.
//   ok:    sign writes 1 for every item; check 1 (valid) or 0 (invalid).
// One thread per item. Both kernels stride over the grid a warp of items
// at a time (the warp shares its inversions, ec/warp_inv.cuh), so their
// blocks must be whole warps.
#include "ed25519/eddsa.cuh"

using smx::u32;

SMX_KERNEL void ed25519_sign(const u32 *__restrict__ table, const u32 *__restrict__ key,
                             const unsigned char *__restrict__ msg, const u32 *__restrict__ off,
                             u32 *__restrict__ sig, u32 *__restrict__ ok, u32 count) {
    for (u32 first = (blockIdx.x * blockDim.x + threadIdx.x) & ~31u; first < count;
         first += blockDim.x * gridDim.x)
        smx::ed25519::sign_lanes(table, key, msg, off, sig, ok, count, first);
}

SMX_KERNEL void ed25519_check(const u32 *__restrict__ table, const u32 *__restrict__ key,
                              const unsigned char *__restrict__ msg, const u32 *__restrict__ off,
                              const u32 *__restrict__ sig, u32 *__restrict__ ok, u32 count) {
    for (u32 first = (blockIdx.x * blockDim.x + threadIdx.x) & ~31u; first < count;
         first += blockDim.x * gridDim.x)
        smx::ed25519::check_lanes(table, key, msg, off, sig, ok, count, first);
}
