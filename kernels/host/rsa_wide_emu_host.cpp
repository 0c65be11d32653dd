// rsa_wide.cu's device code on the host: as rsa_emu_host.cpp (every PTX
// carry-chain instruction emulated), with SMX_RSA_WIDE, the even/odd
// Montgomery rows of the `wide` RSA mapping. `smx` is renamed so its inline
// functions stay distinct from the other host builds'.
#define SMX_RSA_PTX_EMU 1
#define SMX_RSA_WIDE 1
#define smx smx_wide
#include "rsa/crt.cuh"

#define SMX_RSA_HOST_FN(name) smx_rsa_##name##_wide_emu_host
#include "rsa_thread_abi.h"
