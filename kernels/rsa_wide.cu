// Batched RSA private operations (CRT), one thread per item, with the
// "wide" Montgomery multiplication (rsa/arith.cuh, SMX_RSA_WIDE): each row
// splits the limb products by parity so the lo and hi words of a product
// sit in one carry chain, which ptxas fuses into one IMAD.WIDE.U32.X per
// product. On sm_90 it fuses the a*b chains and leaves the m*q chains as
// IMAD + IMAD.HI + IADD3.X: the Montgomery row loop issues ~35% fewer
// instructions than rsa.cu's (173 against 267 per row at RSA-2048) and needs
// ~22 more registers (scripts/kernel-stats.py). Which is faster is measured
// on a GPU (mapping `wide` against `thread`, scripts/gpu-bench.sh).
// Squarings are the same in both (arith.cuh's mont_sqr): only the products
// of the exponentiation and the conversions take these rows.
//
// Exports, for B in 2048, 3072, 4096, with rsa.cu's rsa{B}_sign contract
// (the key in constant-memory slot `slot` of this program's own
// smx_rsa_key_slots, SoA batches, any grid):
//   rsa{B}_sign_wide(u32 slot, const u32* in, u32* out, u32 count)
// The check stays rsa.cu's rsa{B}_check.
#define SMX_RSA_WIDE 1
#include "rsa/crt.cuh"

SMX_RSA_KEY_SLOTS

#define SMX_RSA_WIDE_KERNEL(B)                                                              \
    SMX_KERNEL void rsa##B##_sign_wide(smx::u32 slot, const smx::u32 *in, smx::u32 *out,    \
                                       smx::u32 count) {                                    \
        const smx::u64 stride = (smx::u64)gridDim.x * blockDim.x;                           \
        for (smx::u64 i = (smx::u64)blockIdx.x * blockDim.x + threadIdx.x; i < count;       \
             i += stride)                                                                   \
            smx::rsa::sign_item<(B) / 64>(smx_rsa_key_slots[slot], in, out, count, i);      \
    }

SMX_RSA_WIDE_KERNEL(2048)
SMX_RSA_WIDE_KERNEL(3072)
SMX_RSA_WIDE_KERNEL(4096)
