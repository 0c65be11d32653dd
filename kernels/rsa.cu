// Batched RSA private operations (CRT) and public checks, one NVRTC program.
//
// Exports, for B in 2048, 3072, 4096:
//   rsa{B}_sign (u32 slot, const u32* in, u32* out, u32 count)
//       out[i] = in[i]^d mod n (in[i] < n), constant time in the key, for
//       the key blob in constant-memory slot `slot` (< kKeySlots) of
//       smx_rsa_key_slots (rsa/crt.cuh says why constant memory).
//   rsa{B}_check(const u32* key, const u32* sig, const u32* expected,
//                u32* ok, u32 count)
//       ok[i] = 1 when sig[i] < n and sig[i]^e mod n == expected[i].
// key (and a slot's contents): the blob of Rust rsa_layout::pack_key
// (layout in rsa/crt.cuh).
// in/out/sig/expected are structure-of-arrays of B/32 little-endian 32-bit
// limbs: limb j of item i at [j*count + i].
//
// Mapping: one thread per item, grid-stride loop, so any grid and block
// size is correct (threads past count do nothing). Each thread keeps its
// numbers and its 16-entry window table in registers and local memory.
//
// And, for B in 2048, 3072, 4096 and T in 8, 16:
//   rsa{B}_sign_coop{T}(const u32* key, const u32* in, u32* out, u32 count)
//       the same result by 2T cooperating threads per item (rsa/coop.cuh):
//       T per CRT half, warp shuffles between them. Threads 2T*i ..
//       2T*i+2T-1 sign item i; the grid-stride loop runs whole warps, so
//       any grid works as long as the block size is a multiple of 32
//       (count * 2T threads do all the work at once).
#include "rsa/coop.cuh"

SMX_RSA_KEY_SLOTS

#define SMX_RSA_KERNELS(B)                                                                  \
    SMX_KERNEL void rsa##B##_sign(smx::u32 slot, const smx::u32 *in, smx::u32 *out,         \
                                  smx::u32 count) {                                         \
        const smx::u64 stride = (smx::u64)gridDim.x * blockDim.x;                           \
        for (smx::u64 i = (smx::u64)blockIdx.x * blockDim.x + threadIdx.x; i < count;       \
             i += stride)                                                                   \
            smx::rsa::sign_item<(B) / 64>(smx_rsa_key_slots[slot], in, out, count, i);      \
    }                                                                                       \
    SMX_KERNEL void rsa##B##_check(const smx::u32 *key, const smx::u32 *sig,                \
                                   const smx::u32 *expected, smx::u32 *ok, smx::u32 count) { \
        const smx::u64 stride = (smx::u64)gridDim.x * blockDim.x;                           \
        for (smx::u64 i = (smx::u64)blockIdx.x * blockDim.x + threadIdx.x; i < count;       \
             i += stride)                                                                   \
            smx::rsa::check_item<(B) / 64>(key, sig, expected, ok, count, i);               \
    }

SMX_RSA_KERNELS(2048)
SMX_RSA_KERNELS(3072)
SMX_RSA_KERNELS(4096)

#define SMX_RSA_COOP_KERNEL(B, T)                                                            \
    SMX_KERNEL void rsa##B##_sign_coop##T(const smx::u32 *key, const smx::u32 *in,           \
                                          smx::u32 *out, smx::u32 count) {                  \
        /* Whole warps: every thread of a warp runs the same trips. */                      \
        const smx::u64 total = ((smx::u64)count * (2 * (T)) + 31) & ~(smx::u64)31;          \
        const smx::u64 stride = (smx::u64)gridDim.x * blockDim.x;                           \
        for (smx::u64 t = (smx::u64)blockIdx.x * blockDim.x + threadIdx.x; t < total;       \
             t += stride) {                                                                 \
            smx::rsa::lane_t th;                                                            \
            th.x[0] = (smx::u32)t;                                                          \
            smx::rsa::coop::sign_thread<(B) / 64, (T)>(key, in, out, count, th);            \
        }                                                                                   \
    }

SMX_RSA_COOP_KERNEL(2048, 8)
SMX_RSA_COOP_KERNEL(2048, 16)
SMX_RSA_COOP_KERNEL(3072, 8)
SMX_RSA_COOP_KERNEL(3072, 16)
SMX_RSA_COOP_KERNEL(4096, 8)
SMX_RSA_COOP_KERNEL(4096, 16)
