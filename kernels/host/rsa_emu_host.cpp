// The RSA kernels' device code on the host: with SMX_RSA_PTX_EMU every PTX
// carry-chain instruction of rsa/arith.cuh (the code NVRTC compiles for the
// GPU) is emulated, where rsa_host.cpp takes the portable 64-bit fallbacks.
// The tests (src/backend/cuda/host_rsa.rs) run both against OpenSSL, so the
// chains the device runs are checked on thousands of values without a GPU.
//
// `smx` is renamed for this file so its inline functions, which differ from
// rsa_host.cpp's under the same names, stay distinct symbols.
#define SMX_RSA_PTX_EMU 1
#define smx smx_emu
#include "rsa/crt.cuh"

#define SMX_RSA_HOST_FN(name) smx_rsa_##name##_emu_host
#include "rsa_thread_abi.h"
