//! The keyless TLS server: mutual TLS (1.2 and 1.3), many requests in
//! flight per connection answered as they complete, and back-pressure by
//! not reading past `max_in_flight` unanswered requests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use super::auth::{ClientIdentity, Policy};
use super::handler::Handler;
use super::metrics::KeylessMetrics;
use super::protocol::{self, ErrorCode, Response, split_frame};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::KeyStore;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Files and limits of a keyless listener.
#[derive(Clone, Debug)]
pub struct KeylessSettings {
    /// Server certificate chain, PEM.
    pub cert: std::path::PathBuf,
    /// Its private key, PEM.
    pub key: std::path::PathBuf,
    /// CA certificates that issue client certificates, PEM.
    pub client_ca: std::path::PathBuf,
    /// Unanswered requests per connection before the server stops reading.
    pub max_in_flight: usize,
    /// Who may use which key.
    pub policy: Policy,
}

/// A running keyless listener's shared state.
pub struct KeylessServer {
    acceptor: TlsAcceptor,
    handler: Handler,
    max_in_flight: usize,
    /// Its metrics.
    pub metrics: Arc<KeylessMetrics>,
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "keyless.{what}: cannot read {}: {e}",
            path.display()
        ))
    })
}

/// Builds the rustls configuration: TLS 1.3 and 1.2, client certificates
/// required and verified against `client_ca`.
pub fn tls_config(s: &KeylessSettings) -> Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read_pem(&s.cert, "cert")?)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Config(format!("keyless.cert: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "keyless.cert: no certificate in {}",
            s.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&s.key, "key")?)
        .map_err(|e| Error::Config(format!("keyless.key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read_pem(&s.client_ca, "client_ca")?) {
        let ca = ca.map_err(|e| Error::Config(format!("keyless.client_ca: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| Error::Config(format!("keyless.client_ca: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!(
            "keyless.client_ca: no certificate in {}",
            s.client_ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Config(format!("keyless.client_ca: {e}")))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("keyless TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::Config(format!("keyless.cert/keyless.key: {e}")))
}

impl KeylessServer {
    /// Prepares a listener's state (reads and checks the TLS files).
    pub fn new(
        settings: &KeylessSettings,
        engine: Arc<Engine>,
        keys: Arc<KeyStore>,
    ) -> Result<Arc<KeylessServer>> {
        let handler = Handler::new(engine, keys, settings.policy.clone());
        Ok(Arc::new(KeylessServer {
            acceptor: TlsAcceptor::from(Arc::new(tls_config(settings)?)),
            metrics: handler.metrics.clone(),
            handler,
            max_in_flight: settings.max_in_flight.max(1),
        }))
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "keyless accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move { me.connection(tcp, peer).await });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let m = &self.metrics;
        m.connections_total.fetch_add(1, Ordering::Relaxed);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                m.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, error = %e, "keyless handshake failed");
                return;
            }
            Err(_) => {
                m.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, "keyless handshake timed out");
                return;
            }
        };
        let Some(identity) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| ClientIdentity::from_cert(c))
        else {
            return;
        };
        m.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, client = %identity.label(), "keyless connection");
        let identity = Arc::new(identity);
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(self.max_in_flight);
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
                // Write out whatever else is ready before flushing.
                while let Ok(more) = rx.try_recv() {
                    if wr.write_all(&more).await.is_err() {
                        return;
                    }
                }
                if wr.flush().await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        'read: loop {
            loop {
                match split_frame(&buf) {
                    Ok(None) => break,
                    Ok(Some((header, len))) => {
                        // Back-pressure: wait for a free slot before taking
                        // on another request (the socket is not read meanwhile).
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break 'read;
                        };
                        let body = buf[protocol::HEADER_LEN..len].to_vec();
                        buf.drain(..len);
                        let (me, tx, who) = (self.clone(), tx.clone(), identity.clone());
                        m.in_flight.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            let frame = me.handler.answer(&header, &body, &who).await;
                            me.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                            let _ = tx.send(frame).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // A header we cannot frame by: answer if we can name
                        // the request, then close, since the stream cannot
                        // be resynchronised.
                        if let protocol::ProtocolError::BadVersion { id, .. } = e
                            && let Ok(f) = Response::error(id, ErrorCode::VersionMismatch).encode()
                        {
                            let _ = tx.send(f).await;
                        }
                        tracing::info!(client = %identity.label(), error = %e, "keyless framing error; closing");
                        break 'read;
                    }
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        drop(tx);
        // Answers still being computed are written before the close.
        let _ = writer.await;
        m.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
