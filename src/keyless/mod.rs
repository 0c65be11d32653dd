//! Cloudflare's keyless protocol: proxies that terminate TLS keep only
//! certificates and send each handshake's private-key operation here.
//! So far: the wire codec (`protocol`); the server, client and rustls
//! adapter build on it.

pub mod auth;
pub mod client;
pub mod handler;
pub mod metrics;
pub mod protocol;
pub mod rustls;
pub mod server;
