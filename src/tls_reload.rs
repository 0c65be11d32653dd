//! A listener's TLS configuration that can be replaced while it serves
//! (`serve` reloads it at SIGHUP): a server certificate renewed on disk, a
//! client CA added. New handshakes use the latest configuration; open
//! connections keep the one they started with.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio_rustls::TlsAcceptor;

use crate::error::Result;

/// Builds a listener's rustls configuration from its files.
type Build = Box<dyn Fn() -> Result<rustls::ServerConfig> + Send + Sync>;

/// The current TLS configuration of one listener and how to rebuild it.
pub struct TlsSlot {
    what: &'static str,
    current: RwLock<TlsAcceptor>,
    build: Build,
}

impl TlsSlot {
    /// Builds the first configuration with `build`, which a
    /// [`reload`](TlsSlot::reload) calls again. `what` names the listener.
    ///
    /// # Errors
    ///
    /// `build`'s.
    pub fn new(what: &'static str, build: Build) -> Result<Arc<TlsSlot>> {
        let first = TlsAcceptor::from(Arc::new(build()?));
        Ok(Arc::new(TlsSlot {
            what,
            current: RwLock::new(first),
            build,
        }))
    }

    /// The acceptor for the next handshake.
    #[must_use]
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().clone()
    }

    /// The listener this slot serves (`keyless`, `issuance`).
    #[must_use]
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Rebuilds the configuration from the files. On error the current one
    /// stays, so a half-written certificate or a key that does not match
    /// it never stops the listener.
    ///
    /// # Errors
    ///
    /// What building the new configuration reported.
    pub fn reload(&self) -> Result<()> {
        let next = TlsAcceptor::from(Arc::new((self.build)()?));
        *self.current.write() = next;
        Ok(())
    }
}

/// The error of pairing a listener's certificate with its key, in words:
/// rustls reports a key that does not belong to the certificate as
/// "keys may not be consistent: KeyMismatch". `listener` is the config
/// section (`keyless`, `issuance`).
pub(crate) fn cert_key_error(listener: &str, e: &rustls::Error) -> crate::error::Error {
    let why = match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_string()
        }
        other => other.to_string(),
    };
    crate::error::Error::Config(format!("{listener}.cert/{listener}.key: {why}"))
}
