// Portability layer shared by every kernel. The same source compiles with
// NVRTC for the device and as plain C++ for the host tests (build.rs), so
// the arithmetic CI checks is the arithmetic the GPU runs.
//
// NVRTC ships no system headers: nothing here (or in any kernel) may include
// <stdint.h> or the CUDA runtime headers.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define SMX_HD __host__ __device__ __forceinline__
#define SMX_KERNEL extern "C" __global__
#else
#define SMX_HD static inline
#endif

// PTX carry chains are used only when compiling device code; the host build
// takes the portable 64-bit fallbacks, which compute the same values.
#if defined(__CUDA_ARCH__)
#define SMX_PTX 1
#endif

namespace smx {

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

// All-ones when `c` is nonzero, zero otherwise; compiles to setcc/selp, not a
// branch.
SMX_HD u32 mask_from(u32 c) { return 0u - (u32)(c != 0); }

// All-ones when `x` is zero, computed arithmetically.
SMX_HD u32 mask_is_zero(u32 x) { return (u32)(((u64)x - 1) >> 32); }

// All-ones when a == b.
SMX_HD u32 mask_eq(u32 a, u32 b) { return mask_is_zero(a ^ b); }

// `a` where mask is all-ones, `b` where it is zero.
SMX_HD u32 select(u32 mask, u32 a, u32 b) { return b ^ (mask & (a ^ b)); }

// a + b + carry, carry updated to the carry out (0 or 1).
SMX_HD u32 add_carry(u32 a, u32 b, u32 &carry) {
    u64 t = (u64)a + b + carry;
    carry = (u32)(t >> 32);
    return (u32)t;
}

// a - b - borrow, borrow updated to the borrow out (0 or 1).
SMX_HD u32 sub_borrow(u32 a, u32 b, u32 &borrow) {
    u64 t = (u64)a - b - borrow;
    borrow = (u32)(t >> 63);
    return (u32)t;
}

// a * b + c + carry, carry updated to the high word.
SMX_HD u32 mul_add(u32 a, u32 b, u32 c, u32 &carry) {
    u64 t = (u64)a * b + c + carry;
    carry = (u32)(t >> 32);
    return (u32)t;
}

}  // namespace smx
