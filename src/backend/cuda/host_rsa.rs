//! Host build of the RSA kernels (`kernels/host/rsa_host.cpp`), for tests.
