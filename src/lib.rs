//! sigmux: a signing and TLS-handshake offload service. It batches
//! private-key operations across CPU, GPU and HSM backends; see
//! `DESIGN.md` for the way a request travels.

pub mod api;
pub mod app;
pub mod audit;
pub mod backend;
pub mod bench;
pub mod bench_issue;
pub mod ca;
pub mod config;
pub mod der;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod keyless;
pub mod keys;
mod metrics;
pub mod scheme;
pub mod server;
mod shutdown;
#[cfg(test)]
mod testutil;
pub mod tls_reload;

pub use engine::{Engine, EngineConfig, SignRequest, Signature, Ticket};
pub use error::{Error, Result};
pub use keys::{Key, KeyId, KeyStore, Placement, Ski};
pub use scheme::{KeyKind, Scheme, SignInput};

/// The commit sigmux was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("SIGMUX_COMMIT");
