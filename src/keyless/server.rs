//! The keyless TLS server: mutual TLS (1.2 and 1.3), many requests in
//! flight per connection answered as they complete, and back-pressure by
//! not reading past `max_in_flight` unanswered requests or past
//! `max_bytes_in_flight` bytes of requests and their answers, and every
//! connection stops reading while all of them together hold
//! `max_total_bytes_in_flight` (so memory is bounded by that, not by
//! connections times the per-connection budget).
//!
//! Limits keep a client from holding resources at will: at most
//! `max_connections` connections (handshakes included; more are closed at
//! once); a client that does not take an answer within `write_timeout` is
//! disconnected and the work in flight for it dropped; a connection with
//! nothing in flight that sends nothing for `idle_timeout` is closed.
//!
//! Only clients some `[[keyless.clients]]` rule names are served: any other
//! is closed right after its handshake, and a client whose rule a SIGHUP
//! removes is closed like one whose certificate expires.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::auth::{ClientIdentity, Policy};
use super::handler::{Handler, error_label};
use super::metrics::{KeylessMetrics, LogThrottle};
use super::protocol::{self, ErrorCode, Response, split_frame};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::KeyStore;
use crate::shutdown::{all_closed, stopped, until};
use crate::tls_reload::TlsSlot;

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
    /// Bytes of requests and their answers held per connection, until each
    /// answer is written, before the server stops reading.
    pub max_bytes_in_flight: usize,
    /// Bytes of requests and answers held by all connections together
    /// before every connection stops reading.
    pub max_total_bytes_in_flight: usize,
    /// Open connections (handshakes included) past which new ones are
    /// closed at once.
    pub max_connections: usize,
    /// How long a client may leave an answer unread before it is
    /// disconnected.
    pub write_timeout: Duration,
    /// How long a connection with no request in flight may send nothing
    /// before it is closed.
    pub idle_timeout: Duration,
    /// How long a new connection has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Who may use which key.
    pub policy: Policy,
}

/// A running keyless listener's shared state.
pub struct KeylessServer {
    tls: Arc<TlsSlot>,
    handler: Handler,
    max_in_flight: usize,
    max_bytes_in_flight: usize,
    /// The listener-wide byte budget, `max_total_bytes_in_flight` permits.
    total_bytes: Arc<Semaphore>,
    write_timeout: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    /// One permit per open connection, `max_connections` in all.
    connection_slots: Arc<Semaphore>,
    max_connections: usize,
    /// Events any client can cause at will are logged at `info`/`warn` at
    /// most once per interval (each one at `debug`) and counted.
    handshake_log: LogThrottle,
    limit_log: LogThrottle,
    framing_log: LogThrottle,
    unknown_client_log: LogThrottle,
    /// Bumped by [`KeylessServer::set_policy`], so that each open
    /// connection checks at once whether the new rules still name its
    /// client.
    rules_changed: watch::Sender<()>,
    /// Its metrics.
    pub metrics: Arc<KeylessMetrics>,
}

/// Bytes a request holds until its answer is written: the request frame and
/// the largest answer it can get. Answers are padded to 1024 bytes (1026 at
/// most, see `protocol`), and the largest, a pong, echoes no more than the
/// request's payload, so it is never longer than the request frame.
fn charge(frame_len: usize) -> usize {
    frame_len + frame_len.max(protocol::PADDED_LEN + 2)
}

/// What one request holds from the moment it is read until its answer is
/// written, or dropped with the connection.
struct Slot {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    bytes: i64,
    metrics: Arc<KeylessMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics
            .bytes_in_flight
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Counts a request in `in_flight` until its answer is computed (or its
/// work dropped).
struct InFlight(Arc<KeylessMetrics>);

impl InFlight {
    fn new(m: &Arc<KeylessMetrics>) -> InFlight {
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(m.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer on its way to the writer, with what it holds.
type Answer = (Vec<u8>, Option<Slot>);

/// Why a connection's writer stopped.
#[derive(Debug, PartialEq)]
enum WriterEnd {
    /// Every answer written and the connection shut down.
    Done,
    /// The connection failed.
    Failed,
    /// The client did not take an answer within the write timeout.
    TimedOut,
}

/// Writes answers as they come until every sender is gone, giving each
/// write (and flush) at most `limit`.
async fn write_answers<W: AsyncWrite + Unpin>(
    wr: &mut W,
    rx: &mut mpsc::Receiver<Answer>,
    limit: Duration,
) -> WriterEnd {
    async fn timed<F: std::future::Future<Output = std::io::Result<()>>>(
        limit: Duration,
        f: F,
    ) -> std::result::Result<(), WriterEnd> {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriterEnd::Failed),
            Err(_) => Err(WriterEnd::TimedOut),
        }
    }
    while let Some((frame, slot)) = rx.recv().await {
        if let Err(end) = timed(limit, wr.write_all(&frame)).await {
            return end;
        }
        drop((frame, slot));
        // Write out whatever else is ready before flushing.
        while let Ok((frame, slot)) = rx.try_recv() {
            if let Err(end) = timed(limit, wr.write_all(&frame)).await {
                return end;
            }
            drop((frame, slot));
        }
        if let Err(end) = timed(limit, wr.flush()).await {
            return end;
        }
    }
    match timed(limit, wr.shutdown()).await {
        Ok(()) => WriterEnd::Done,
        Err(end) => end,
    }
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
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("keyless TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| crate::tls_reload::cert_key_error("keyless", &e))?;
    crate::tls_reload::no_resumption(&mut cfg);
    Ok(cfg)
}

impl KeylessServer {
    /// Prepares a listener's state (reads and checks the TLS files).
    pub fn new(
        settings: &KeylessSettings,
        engine: Arc<Engine>,
        keys: Arc<KeyStore>,
    ) -> Result<Arc<KeylessServer>> {
        let handler = Handler::new(engine, keys, settings.policy.clone());
        let max_connections = settings.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let max_bytes_in_flight = settings.max_bytes_in_flight.clamp(1, u32::MAX as usize);
        let max_total = settings
            .max_total_bytes_in_flight
            .clamp(max_bytes_in_flight, Semaphore::MAX_PERMITS);
        Ok(Arc::new(KeylessServer {
            tls: {
                let s = settings.clone();
                TlsSlot::new("keyless", Box::new(move || tls_config(&s)))?
            },
            metrics: handler.metrics.clone(),
            handler,
            max_in_flight: settings.max_in_flight.max(1),
            max_bytes_in_flight,
            total_bytes: Arc::new(Semaphore::new(max_total)),
            write_timeout: settings.write_timeout.max(Duration::from_millis(1)),
            idle_timeout: settings.idle_timeout.max(Duration::from_millis(1)),
            handshake_timeout: settings.handshake_timeout.max(Duration::from_millis(1)),
            connection_slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            handshake_log: LogThrottle::default(),
            limit_log: LogThrottle::default(),
            framing_log: LogThrottle::default(),
            unknown_client_log: LogThrottle::default(),
            rules_changed: watch::Sender::new(()),
        }))
    }

    /// Replaces the client rules (SIGHUP): from now on every request, on
    /// open connections too, is judged by `policy`, and an open connection
    /// whose client no rule names any more stops taking requests, answers
    /// those it read and closes.
    pub fn set_policy(&self, policy: Policy) {
        self.handler.set_policy(policy);
        self.rules_changed.send_replace(());
    }

    /// Its TLS configuration, which [`TlsSlot::reload`] replaces for new
    /// connections.
    #[must_use]
    pub fn tls(&self) -> Arc<TlsSlot> {
        self.tls.clone()
    }

    /// Accepts connections until `stop` turns true (or its sender is
    /// gone); then closes the listener, and each connection stops reading
    /// requests, writes the answers to those it has, and closes. Returns
    /// once every connection is closed.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        let mut stopping = stop.clone();
        loop {
            let accepted = tokio::select! {
                biased;
                () = stopped(&mut stopping) => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "keyless accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // At the limit: close at once, before any handshake work.
            let Ok(slot) = self.connection_slots.clone().try_acquire_owned() else {
                self.metrics
                    .connections_rejected
                    .fetch_add(1, Ordering::Relaxed);
                match self.limit_log.allow() {
                    Some(held_back) => tracing::warn!(
                        %peer, max_connections = self.max_connections, held_back,
                        "keyless connection limit reached; closing new connections (counted in sigmux_keyless_connections_rejected_total)"
                    ),
                    None => tracing::debug!(%peer, "keyless connection over the limit closed"),
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (me, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                me.connection(tcp, peer, stop).await;
                drop(slot);
            });
        }
        drop(listener);
        // Every connection holds one of the slots until it is closed.
        all_closed(&self.connection_slots, self.max_connections).await;
    }

    /// Takes a request's share of the connection's budgets and of the
    /// listener's, waiting (and so not reading) while they are spent.
    async fn slot(
        &self,
        count: &Arc<Semaphore>,
        bytes: &Arc<Semaphore>,
        frame_len: usize,
    ) -> Option<Slot> {
        let n = charge(frame_len).min(self.max_bytes_in_flight);
        let c = count.clone().acquire_owned().await.ok()?;
        let b = bytes.clone().acquire_many_owned(n as u32).await.ok()?;
        // Taken last: a connection waiting here holds nothing of it.
        let t = self
            .total_bytes
            .clone()
            .acquire_many_owned(n as u32)
            .await
            .ok()?;
        self.metrics
            .bytes_in_flight
            .fetch_add(n as i64, Ordering::Relaxed);
        Some(Slot {
            _count: c,
            _bytes: b,
            _total: t,
            bytes: n as i64,
            metrics: self.metrics.clone(),
        })
    }

    fn log_handshake_failure(&self, peer: SocketAddr, error: &dyn std::fmt::Display) {
        match self.handshake_log.allow() {
            Some(held_back) => {
                tracing::info!(%peer, %error, held_back, "keyless handshake failed (more within 10 s at debug; see sigmux_keyless_handshake_failures_total)")
            }
            None => tracing::debug!(%peer, %error, "keyless handshake failed"),
        }
    }

    /// Counts and logs (throttled, as other refusals: any client with a
    /// certificate from the client CA can cause it at will) the close of a
    /// connection whose client no rule names; `now` says when it was found.
    fn refuse_unknown_client(&self, peer: SocketAddr, who: &ClientIdentity, now: &str) {
        self.metrics
            .unknown_client_closed
            .fetch_add(1, Ordering::Relaxed);
        match self.unknown_client_log.allow() {
            Some(held_back) => tracing::info!(
                %peer, client = %who.label(), held_back,
                "keyless client: no [[keyless.clients]] rule names it {now}; closing \
                 (more within 10 s at debug; see sigmux_keyless_unknown_client_closed_total)"
            ),
            None => tracing::debug!(
                %peer, client = %who.label(),
                "keyless client: no [[keyless.clients]] rule names it {now}; closing"
            ),
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let m = &self.metrics;
        m.connections_total.fetch_add(1, Ordering::Relaxed);
        let tls =
            match tokio::time::timeout(self.handshake_timeout, self.tls.acceptor().accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    m.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    self.log_handshake_failure(peer, &e);
                    return;
                }
                Err(_) => {
                    m.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    self.log_handshake_failure(peer, &"timed out");
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
        // Subscribed before the check, so rules replaced between the two
        // are seen by the loop below.
        let mut rules_changed = self.rules_changed.subscribe();
        if !self.handler.names(&identity) {
            // It may use nothing, so it gets nothing: no connection to send
            // pings on or to hold the listener's budgets with.
            self.refuse_unknown_client(peer, &identity, "after its handshake");
            let mut tls = tls;
            let _ = tokio::time::timeout(self.write_timeout, tls.shutdown()).await;
            return;
        }
        let expires = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(crate::tls_reload::chain_expiry);
        m.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, client = %identity.label(), "keyless connection");
        let identity = Arc::new(identity);
        let (mut rd, mut wr) = tokio::io::split(tls);
        // Every answer in the channel holds a count permit, so the channel
        // never holds more than `max_in_flight` and sends never wait.
        let (tx, mut rx) = mpsc::channel::<Answer>(self.max_in_flight);
        let write_timeout = self.write_timeout;
        let writer = tokio::spawn(async move {
            let end = write_answers(&mut wr, &mut rx, write_timeout).await;
            // Answers not written yet are dropped with the channel, and
            // requests still being worked on see it closed and stop.
            drop(rx);
            (wr, end)
        });
        let count = Arc::new(Semaphore::new(self.max_in_flight));
        let bytes = Arc::new(Semaphore::new(self.max_bytes_in_flight));
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        // Set when the server's shutdown, not the client, ended reading:
        // the client may still be sending.
        let mut stopping = false;
        'read: loop {
            loop {
                match split_frame(&buf) {
                    Ok(None) => break,
                    Ok(Some((header, len))) => {
                        // Back-pressure: wait for room before taking on
                        // another request (the socket is not read
                        // meanwhile), unless the writer gives up first.
                        let slot = tokio::select! {
                            biased;
                            _ = tx.closed() => break 'read,
                            s = self.slot(&count, &bytes, len) => match s {
                                Some(s) => s,
                                None => break 'read,
                            },
                        };
                        let body = buf[protocol::HEADER_LEN..len].to_vec();
                        buf.drain(..len);
                        let (me, tx, who) = (self.clone(), tx.clone(), identity.clone());
                        let in_flight = InFlight::new(m);
                        tokio::spawn(async move {
                            let frame = tokio::select! {
                                f = me.handler.answer(&header, &body, &who) => f,
                                // The connection is gone: drop the work.
                                _ = tx.closed() => return,
                            };
                            drop(body);
                            drop(in_flight);
                            let _ = tx.send((frame, Some(slot))).await;
                        });
                    }
                    Err(e) => {
                        // A header we cannot frame by: answer if we can name
                        // the request, then close, since the stream cannot
                        // be resynchronised.
                        if let protocol::ProtocolError::BadVersion { id, .. } = e
                            && let Ok(f) = Response::error(id, ErrorCode::VersionMismatch).encode()
                        {
                            // Answered, so counted like every other answer
                            // (no opcode is read from a frame of another
                            // version: "malformed", as undecodable ones).
                            m.observe(
                                "malformed",
                                error_label(ErrorCode::VersionMismatch),
                                Duration::ZERO,
                            );
                            let _ = tx.send((f, None)).await;
                        }
                        match self.framing_log.allow() {
                            Some(held_back) => tracing::info!(
                                client = %identity.label(), error = %e, held_back,
                                "keyless framing error; closing (more within 10 s at debug)"
                            ),
                            None => {
                                tracing::debug!(client = %identity.label(), error = %e, "keyless framing error; closing")
                            }
                        }
                        break 'read;
                    }
                }
            }
            let read = tokio::select! {
                biased;
                _ = tx.closed() => break 'read,
                // Shutting down: no new requests; those read are answered.
                () = stopped(&mut stop) => {
                    stopping = true;
                    break 'read;
                }
                // Its certificate expired: no new requests; those read are
                // answered (the client may be sending, as at shutdown).
                () = until(expires) => {
                    tracing::debug!(%peer, client = %identity.label(), "keyless client certificate expired; closing");
                    stopping = true;
                    break 'read;
                }
                // New rules (SIGHUP) that no longer name the client: as
                // when its certificate expires (those read are answered,
                // under the new rules).
                Ok(()) = rules_changed.changed() => {
                    if self.handler.names(&identity) {
                        continue 'read;
                    }
                    self.refuse_unknown_client(peer, &identity, "any more");
                    stopping = true;
                    break 'read;
                }
                r = tokio::time::timeout(self.idle_timeout, rd.read(&mut chunk)) => r,
            };
            match read {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                // Silent for the idle timeout with nothing in flight.
                Err(_) if count.available_permits() == self.max_in_flight => {
                    m.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, client = %identity.label(), "keyless connection idle; closing");
                    break;
                }
                // Answers are still due: keep waiting.
                Err(_) => {}
            }
        }
        drop(tx);
        drop(buf);
        // Answers still being computed are written before the close,
        // unless the client stopped taking them.
        match writer.await {
            Ok((wr, WriterEnd::TimedOut)) => {
                m.write_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, client = %identity.label(), "keyless client did not read its answers; disconnected");
                // Reset the connection rather than leave unread answers
                // queued in the kernel.
                let tls = rd.unsplit(wr);
                let _ = tls.get_ref().0.set_zero_linger();
            }
            Ok((_wr, WriterEnd::Done)) if stopping => {
                // Closing a socket with unread requests in it sends a
                // reset, and a reset makes the client's kernel drop the
                // answers it has not read yet. So the requests sent after
                // the stop are read and dropped until the client, having
                // read every answer and the close, closes too.
                let _ = tokio::time::timeout(self.write_timeout, async {
                    while let Ok(n) = rd.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
            _ => {}
        }
        m.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
