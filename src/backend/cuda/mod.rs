//! The CUDA backend: our own constant-time kernels (`kernels/`), compiled at
//! start by NVRTC and run through cudarc, loaded dynamically so sigmux builds
//! and runs on machines without CUDA (the backend then reports
//! `unavailable: <reason>`).

pub mod ec_layout;
pub mod host_ec;
pub mod host_nonce;
pub mod host_rsa;
pub mod rsa_layout;
