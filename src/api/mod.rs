//! The SPIFFE issuance HTTPS API: mutual TLS (client certificates
//! required) in front of an axum router ([`issue`]). Callers are known by
//! the SPIFFE ID or fingerprint of their certificate
//! ([`ClientIdentity`]), and `[[issuance.callers]]` rules say which SPIFFE
//! IDs each may request.

pub mod client;
pub mod issue;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::ca::spiffe::{SpiffeId, SpiffeIdPrefix};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keyless::auth::{ClientIdentity, ClientMatch};
use crate::keys::KeyStore;

/// How long a caller has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the HTTP server to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// One `[[issuance.callers]]` rule: a caller and the SPIFFE ID prefixes it
/// may request.
#[derive(Clone, Debug)]
pub struct CallerRule {
    /// Who (SPIFFE ID of the certificate, or its fingerprint).
    pub client: ClientMatch,
    /// The prefixes (path-segment aligned) of the IDs it may request.
    pub allowed_prefixes: Vec<SpiffeIdPrefix>,
}

/// Whether `who` may request an SVID for `id`. A caller that no rule names
/// may request nothing.
#[must_use]
pub fn caller_allows(rules: &[CallerRule], who: &ClientIdentity, id: &SpiffeId) -> bool {
    rules
        .iter()
        .filter(|r| match &r.client {
            ClientMatch::SpiffeId(s) => who.spiffe_id.as_deref() == Some(s.as_str()),
            ClientMatch::Fingerprint(f) => *f == who.fingerprint,
        })
        .any(|r| r.allowed_prefixes.iter().any(|p| p.matches(id)))
}

/// Files and limits of the issuance listener (`[issuance]`).
#[derive(Clone, Debug)]
pub struct IssuanceSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// CA certificates that issue caller certificates, PEM.
    pub client_ca: PathBuf,
    /// Most items in one batch.
    pub max_items: usize,
    /// Upper bound on SVID lifetimes (`None`: the CA default).
    pub max_ttl: Option<Duration>,
    /// Who may request which IDs.
    pub callers: Vec<CallerRule>,
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "issuance.{what}: cannot read {}: {e}",
            path.display()
        ))
    })
}

/// Builds the rustls configuration: TLS 1.3 and 1.2, HTTP/1.1 by ALPN,
/// client certificates required and verified against `client_ca`.
///
/// # Errors
///
/// [`Error::Config`] when a file cannot be read or holds nothing usable.
pub fn tls_config(s: &IssuanceSettings) -> Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read_pem(&s.cert, "cert")?)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Config(format!("issuance.cert: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "issuance.cert: no certificate in {}",
            s.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&s.key, "key")?)
        .map_err(|e| Error::Config(format!("issuance.key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read_pem(&s.client_ca, "client_ca")?) {
        let ca = ca.map_err(|e| Error::Config(format!("issuance.client_ca: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| Error::Config(format!("issuance.client_ca: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!(
            "issuance.client_ca: no certificate in {}",
            s.client_ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Config(format!("issuance.client_ca: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("issuance TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::Config(format!("issuance.cert/issuance.key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The far end of one connection: its address and the identity its
/// certificate proved.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The caller's address.
    pub addr: SocketAddr,
    /// The caller's identity.
    pub identity: ClientIdentity,
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A listener that hands axum only connections whose TLS handshake (with a
/// verified client certificate) has finished. Handshakes run in their own
/// tasks, so a slow caller delays nobody else.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `acceptor`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the socket's address cannot be read.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> Result<TlsListener> {
        let local = tcp
            .local_addr()
            .map_err(|e| Error::io("issuance listener", e))?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(TlsListener { local, rx })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
) {
    loop {
        let (sock, addr) = match tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "issuance accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "issuance TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "issuance TLS handshake timed out");
                    return;
                }
            };
            let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
                return;
            };
            let identity = ClientIdentity::from_cert(cert.as_ref());
            let _ = tx.send((tls, Peer { addr, identity })).await;
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            identity: ClientIdentity {
                spiffe_id: None,
                fingerprint: [0; 32],
            },
        })
    }
}

/// Binds the issuance listener and serves it in a background task; returns
/// the bound address.
///
/// # Errors
///
/// [`Error::Config`] for unusable TLS files, [`Error::Invalid`] when the
/// address cannot be bound.
pub async fn start(
    settings: &IssuanceSettings,
    data_dir: PathBuf,
    engine: Arc<Engine>,
    keys: Arc<KeyStore>,
) -> Result<SocketAddr> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(settings)?));
    let tcp = TcpListener::bind(settings.listen).await.map_err(|e| {
        Error::Invalid(format!(
            "cannot listen on {} (issuance.listen): {e}",
            settings.listen
        ))
    })?;
    let listener = TlsListener::new(tcp, acceptor)?;
    let bound = listener.local;
    let audit = Arc::new(crate::audit::AuditLog::open(&data_dir.join("audit.log"))?);
    let state = issue::ApiState {
        data_dir,
        engine,
        keys,
        settings: Arc::new(settings.clone()),
        audit,
        ca_state: Arc::default(),
    };
    let app = issue::router(state).into_make_service_with_connect_info::<Peer>();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "issuance server failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_get_only_their_prefixes() {
        let rules = vec![
            CallerRule {
                client: ClientMatch::SpiffeId("spiffe://td/issuer".into()),
                allowed_prefixes: vec![SpiffeIdPrefix::parse("spiffe://td/ns/prod").unwrap()],
            },
            CallerRule {
                client: ClientMatch::Fingerprint([7; 32]),
                allowed_prefixes: vec![SpiffeIdPrefix::parse("spiffe://td").unwrap()],
            },
        ];
        let issuer = ClientIdentity {
            spiffe_id: Some("spiffe://td/issuer".into()),
            fingerprint: [1; 32],
        };
        let admin = ClientIdentity {
            spiffe_id: None,
            fingerprint: [7; 32],
        };
        let stranger = ClientIdentity {
            spiffe_id: Some("spiffe://td/other".into()),
            fingerprint: [2; 32],
        };
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        assert!(caller_allows(
            &rules,
            &issuer,
            &id("spiffe://td/ns/prod/web")
        ));
        assert!(!caller_allows(
            &rules,
            &issuer,
            &id("spiffe://td/ns/production")
        ));
        assert!(!caller_allows(
            &rules,
            &issuer,
            &id("spiffe://td/ns/dev/web")
        ));
        assert!(caller_allows(&rules, &admin, &id("spiffe://td/anything")));
        assert!(!caller_allows(
            &rules,
            &stranger,
            &id("spiffe://td/ns/prod/web")
        ));
    }
}
