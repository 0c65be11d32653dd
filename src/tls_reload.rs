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

/// Turns TLS session resumption off (no session cache, no tickets): a
/// resumed session skips the client certificate check, so a client whose
/// certificate has since expired, or whose CA was dropped, would get back
/// in. Our clients keep connections open, so full handshakes are rare.
pub(crate) fn no_resumption(cfg: &mut rustls::ServerConfig) {
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
}

/// A certificate's notAfter, or `None` when it cannot be read.
pub(crate) fn not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    let cert = openssl::x509::X509::from_der(der).ok()?;
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(cert.not_after()).ok()?;
    let secs = i64::from(d.days) * 86_400 + i64::from(d.secs);
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// When the first certificate of a peer's chain expires, as a timer
/// deadline: a connection stops taking requests then (a long-lived
/// connection must not outlive the credential it was opened with).
pub(crate) fn chain_expiry(
    certs: &[rustls::pki_types::CertificateDer<'_>],
) -> Option<tokio::time::Instant> {
    let at = certs.iter().filter_map(|c| not_after(c)).min()?;
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    // Far-future dates would overflow the timer.
    Some(tokio::time::Instant::now() + left.min(std::time::Duration::from_secs(100 * 365 * 86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_reads_the_certificate_end() {
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::from_unix(1_000).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::from_unix(1_800_000_000).unwrap())
            .unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let der = b.build().to_der().unwrap();
        assert_eq!(
            not_after(&der),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000))
        );
        assert_eq!(not_after(b"junk"), None);
    }
}
