//! The SPIFFE issuance HTTPS API: mutual TLS (client certificates
//! required) in front of an axum router ([`issue`]). Callers are known by
//! the SPIFFE ID or fingerprint of their certificate
//! ([`ClientIdentity`]), and `[[issuance.callers]]` rules say which SPIFFE
//! IDs each may request.
//!
//! Connections are served here rather than by `axum::serve`, which sets no
//! timeouts: each listener has a connection cap (one more is closed at
//! once), a request-head timeout that is also the keep-alive idle time, and
//! a timeout on writes the peer does not read ([`ServeLimits`]); request
//! bodies have their own timeout in [`issue`]. [`serve_plain`] does the same
//! for the plaintext `/healthz` and `/metrics` listener.

pub mod client;
pub mod issue;
pub mod metrics;
pub mod rate;
pub mod refusals;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::ca::spiffe::{SpiffeId, SpiffeIdPrefix};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keyless::auth::{ClientIdentity, ClientMatch};
use crate::keys::KeyStore;
use crate::shutdown::{all_closed, stopped, until};
use crate::tls_reload::TlsSlot;

/// One `[[issuance.callers]]` rule: a caller, the SPIFFE ID prefixes it
/// may request and the DNS suffixes it may put in those SVIDs.
#[derive(Clone, Debug)]
pub struct CallerRule {
    /// Who (SPIFFE ID of the certificate, or its fingerprint).
    pub client: ClientMatch,
    /// The prefixes (path-segment aligned) of the IDs it may request.
    pub allowed_prefixes: Vec<SpiffeIdPrefix>,
    /// The DNS suffixes (label aligned) of the DNS SANs it may request with
    /// those IDs; none: no DNS SAN at all (see [`issue::check_dns_names`]).
    pub allowed_dns_suffixes: Vec<issue::DnsSuffix>,
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
    /// Connection limits and timeouts of the listener.
    pub limits: ServeLimits,
    /// Time allowed to receive a whole request body, from the end of its
    /// head (`issuance.body_timeout_seconds`).
    pub body_timeout: Duration,
    /// X.509-SVID batches worked on at once; one more is answered 503
    /// (`issuance.max_concurrent_batches`).
    pub max_concurrent_batches: usize,
    /// Time a new connection has to finish its TLS handshake
    /// (`issuance.handshake_timeout_seconds`).
    pub handshake_timeout: Duration,
    /// Refusals per caller and minute recorded in the audit log in full;
    /// past it they are counted in one summary record
    /// (`issuance.max_refusal_records_per_minute`).
    pub max_refusal_records_per_minute: u64,
    /// SVIDs each caller may ask for per second on average, a whole batch
    /// at once; 0 for no limit (`issuance.svids_per_caller_per_second`).
    pub svids_per_caller_per_second: f64,
}

/// Connection limits and timeouts of one HTTP listener (`[issuance]` and
/// `[http]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Open connections at most, TLS handshakes included; a connection
    /// accepted past this is closed at once.
    pub max_connections: usize,
    /// Time allowed for a request's head, counted from when the server
    /// starts waiting for it: it is also how long an idle keep-alive
    /// connection stays open.
    pub header_timeout: Duration,
    /// Time a write may stay blocked (the peer not reading what it is
    /// sent) before the connection is dropped.
    pub write_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
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
        .map_err(|e| crate::tls_reload::cert_key_error("issuance", &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    crate::tls_reload::no_resumption(&mut cfg);
    Ok(cfg)
}

/// The far end of one connection: its address and the identity its
/// certificate proved. Handlers get it as `ConnectInfo<Peer>`.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The caller's address.
    pub addr: SocketAddr,
    /// The caller's identity.
    pub identity: ClientIdentity,
}

/// An I/O stream whose writes fail with `TimedOut` once they have been
/// blocked for longer than a limit: a peer that stops reading its answers
/// cannot hold the connection (and its buffers) forever.
struct WriteTimeout<T> {
    io: T,
    limit: Duration,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteTimeout<T> {
    fn new(io: T, limit: Duration) -> Self {
        WriteTimeout {
            io,
            limit,
            blocked: None,
        }
    }

    /// Passes a write's outcome on; a write still blocked after `limit`
    /// becomes an error.
    fn watch<R>(&mut self, cx: &mut Context<'_>, p: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match p {
            Poll::Ready(r) => {
                self.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer read nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, p)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, p)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, p)
    }
}

/// A permit for one more connection, or `None` (after a log line) when
/// `limits.max_connections` are open: the caller then drops the socket,
/// which closes it at once.
fn admit(permits: &Arc<Semaphore>, addr: SocketAddr, what: &str) -> Option<OwnedSemaphorePermit> {
    match permits.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            tracing::debug!(%addr, "{what}: connection limit reached; closing the new connection");
            None
        }
    }
}

/// Serves HTTP/1.1 on one connection with `router` until it closes: the
/// request head (and the idle time between requests) is bounded by
/// `limits.header_timeout`, blocked writes by the stream's
/// [`WriteTimeout`]. `info` reaches handlers as `ConnectInfo`. When
/// `shutdown` turns true (or its sender is gone), the connection finishes
/// its request in flight and closes.
async fn serve_connection<I, C>(
    io: I,
    router: Router,
    info: C,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    let svc = TowerToHyperService::new(router);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(info.clone()));
        hyper::service::Service::call(&svc, req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
    drop(permit);
}

/// Serves plain HTTP/1.1 (the `/healthz` and `/metrics` listener) with
/// connection limits and timeouts, until `shutdown` resolves; then stops
/// accepting, lets each connection finish the request it is on, and
/// returns once all are closed. A drop-in for
/// `axum::serve(listener, router).with_graceful_shutdown(shutdown)`,
/// which sets no timeouts:
///
/// ```ignore
/// crate::api::serve_plain(listener, router, cfg.http_limits()?, shutdown_signal()).await
/// ```
///
/// # Errors
///
/// None today (a failed accept is logged and retried); the `io::Result`
/// keeps the signature of `axum::serve`.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (sock, addr) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = admit(&permits, addr, "http") else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let io = WriteTimeout::new(sock, limits.write_timeout);
        tokio::spawn(serve_connection(
            io,
            router.clone(),
            addr,
            limits,
            stopped.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it ends.
    all_closed(&permits, limits.max_connections).await;
    Ok(())
}

/// Accepts callers on `tcp`: past `limits.max_connections` a connection is
/// closed at once; otherwise its TLS handshake (with a verified client
/// certificate, within `handshake_timeout`) runs in its own task, so a slow caller delays nobody else,
/// and the connection is then served there.
///
/// When `stop` turns true (or its sender is gone) it closes the listener,
/// lets each connection finish the request it is on, and returns once all
/// are closed.
async fn accept_loop(
    tcp: TcpListener,
    tls: Arc<TlsSlot>,
    handshake_timeout: Duration,
    router: Router,
    limits: ServeLimits,
    metrics: Arc<metrics::IssuanceMetrics>,
    stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stopping) => break,
            a = tcp.accept() => a,
        };
        let (sock, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "issuance accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = admit(&permits, addr, "issuance") else {
            metrics.connections_rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let acceptor = tls.acceptor();
        let (router, stop) = (router.clone(), stop.clone());
        let open = metrics.open();
        tokio::spawn(async move {
            let _open = open;
            let io = WriteTimeout::new(sock, limits.write_timeout);
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
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
            let expires = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(crate::tls_reload::chain_expiry);
            let stop = connection_stop(stop, expires);
            serve_connection(tls, router, Peer { addr, identity }, limits, stop, permit).await;
        });
    }
    drop(tcp);
    // Every connection holds a permit until it ends.
    all_closed(&permits, limits.max_connections).await;
}

/// The stop signal of one connection: the listener's, or the moment its
/// caller's certificate chain expires, whichever comes first (the request
/// it is on is finished, then it closes, as at shutdown).
fn connection_stop(
    mut stop: watch::Receiver<bool>,
    expires: Option<tokio::time::Instant>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            () = stopped(&mut stop) => {}
            () = until(expires) => {}
            // The connection ended first.
            () = tx.closed() => return,
        }
        let _ = tx.send(true);
    });
    rx
}

/// Records the summaries of refusal windows as they end, until `stop`.
async fn record_refusal_summaries(state: issue::ApiState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.refusals.window() / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.record_refusal_summaries(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit log: refusal summaries not recorded"),
            Err(e) => tracing::error!(error = %e, "audit log: refusal summaries not recorded"),
        }
    }
}

/// A running issuance listener.
pub struct Started {
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Its task, which ends once the last connection has closed after the
    /// stop.
    pub task: tokio::task::JoinHandle<()>,
    /// The state its handlers share (for its metrics).
    pub state: issue::ApiState,
    /// Its TLS configuration, reloadable.
    pub tls: Arc<TlsSlot>,
}

/// Binds the issuance listener and serves it in a background task until
/// `stop` turns true (see `accept_loop`).
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
    stop: watch::Receiver<bool>,
) -> Result<Started> {
    let tls = {
        let s = settings.clone();
        TlsSlot::new("issuance", Box::new(move || tls_config(&s)))?
    };
    let tcp = TcpListener::bind(settings.listen).await.map_err(|e| {
        Error::Invalid(format!(
            "cannot listen on {} (issuance.listen): {e}",
            settings.listen
        ))
    })?;
    let bound = tcp
        .local_addr()
        .map_err(|e| Error::io("issuance listener", e))?;
    let audit = Arc::new(crate::audit::AuditLog::open(&data_dir.join("audit.log"))?);
    let state = issue::ApiState::new(data_dir, engine, keys, Arc::new(settings.clone()), audit);
    let router = issue::router(state.clone());
    let summaries = tokio::spawn(record_refusal_summaries(state.clone(), stop.clone()));
    let serving = accept_loop(
        tcp,
        tls.clone(),
        settings.handshake_timeout,
        router,
        settings.limits,
        state.metrics.clone(),
        stop,
    );
    let shared = state.clone();
    let task = tokio::spawn(async move {
        serving.await;
        // Every connection has closed: what is left of the refusal windows
        // is summarized before `serve` exits.
        summaries.abort();
        let _ = summaries.await;
        let done = tokio::task::spawn_blocking(move || state.record_refusal_summaries(true)).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::error!("audit log: the last refusal summaries could not be recorded");
        }
    });
    Ok(Started {
        addr: bound,
        task,
        state: shared,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_blocked_past_the_limit_fails() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (near, far) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(near, Duration::from_millis(200));
        // The peer reads nothing: the write blocks, then fails.
        let e = w.write_all(&[7u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop((w, far));
        // A peer that keeps reading is never timed out, however long it all
        // takes.
        let (near, mut far2) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(near, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match far2.read(&mut buf).await.unwrap() {
                    0 => return got.len(),
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        w.write_all(&[7u8; 512]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), 512);
    }

    #[test]
    fn callers_get_only_their_prefixes() {
        let rules = vec![
            CallerRule {
                client: ClientMatch::SpiffeId("spiffe://td/issuer".into()),
                allowed_prefixes: vec![SpiffeIdPrefix::parse("spiffe://td/ns/prod").unwrap()],
                allowed_dns_suffixes: Vec::new(),
            },
            CallerRule {
                client: ClientMatch::Fingerprint([7; 32]),
                allowed_prefixes: vec![SpiffeIdPrefix::parse("spiffe://td").unwrap()],
                allowed_dns_suffixes: Vec::new(),
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
