//! Host build of the ECDSA kernels (`kernels/host/ec_host.cpp`), for tests.
