// Batched ECDSA for P-256 and P-384 (NVRTC program). Exports, for C in p256,
// p384:
//   {C}_sign(table, key, z, k, r, s, ok, count)
//   {C}_check(table, key, z, r, s, ok, count)
// with the buffers described in ec/ecdsa.cuh and src/backend/cuda/ec_layout.rs.
// One thread per signature; both kernels stride over the grid a warp of
// items at a time (the warp shares its inversions, ec/warp_inv.cuh), so
// their blocks must be whole warps.
#include "ec/ecdsa.cuh"

using smx::u32;

#define SMX_EC_KERNELS(name, C)                                                                   \
    SMX_KERNEL void name##_sign(const u32 *__restrict__ table, const u32 *__restrict__ key,        \
                                const u32 *__restrict__ z, const u32 *__restrict__ k,              \
                                u32 *__restrict__ r, u32 *__restrict__ s, u32 *__restrict__ ok,    \
                                u32 count) {                                                       \
        const u32 stride = blockDim.x * gridDim.x;                                                 \
        for (u32 first = (blockIdx.x * blockDim.x + threadIdx.x) & ~31u; first < count;            \
             first += stride)                                                                      \
            smx::ec::sign_lanes<C>(table, key, z, k, r, s, ok, count, first);                      \
    }                                                                                              \
    SMX_KERNEL void name##_check(const u32 *__restrict__ table, const u32 *__restrict__ key,       \
                                 const u32 *__restrict__ z, const u32 *__restrict__ r,             \
                                 const u32 *__restrict__ s, u32 *__restrict__ ok, u32 count) {     \
        const u32 stride = blockDim.x * gridDim.x;                                                 \
        for (u32 first = (blockIdx.x * blockDim.x + threadIdx.x) & ~31u; first < count;            \
             first += stride)                                                                      \
            smx::ec::check_lanes<C>(table, key, z, r, s, ok, count, first);                        \
    }

SMX_EC_KERNELS(p256, smx::ec::P256)
SMX_EC_KERNELS(p384, smx::ec::P384)
