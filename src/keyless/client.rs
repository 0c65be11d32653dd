//! Keyless protocol client: a pool of mutually authenticated TLS connections
//! to a keyless server, many requests in flight on each.
//!
//! ```text
//!  sign()/ping()/sign_blocking()
//!        |  (spawned onto the client's own runtime thread)
//!        v
//!  pick a ready connection (round robin) -> register id in its pending map
//!        |                                -> frame onto its writer queue
//!        v
//!  per connection, one task: writer (queue -> TLS, flushed per burst)
//!                            reader (TLS -> split_frame -> pending[id])
//! ```
//!
//! Request ids come from one atomic counter, so responses may come back in
//! any order and are routed by id. A connection is only handed requests
//! after it has answered a ping, so a server that refuses the client
//! certificate after the handshake (TLS 1.3) counts as a failed connect.
//! When a connection drops, every request in flight on it fails at once
//! with [`ClientError::Closed`], and the connection's task reconnects with
//! exponential back-off (capped). Every request also has a deadline
//! ([`ClientConfig::timeout`]), so nothing waits forever.
//!
//! All I/O runs on a small tokio runtime owned by the client, on threads of
//! its own. That makes [`KeylessClient::sign_blocking`] safe to call from
//! anywhere, a tokio worker thread included (this is what rustls's
//! synchronous `Signer::sign` needs): the caller only waits for a result
//! that other threads produce, so it cannot deadlock its own runtime.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Notify, mpsc, oneshot};

use super::protocol::{HEADER_LEN, Op, Request, Response, ResponseBody, split_frame};
use crate::scheme::Scheme;

pub use super::protocol::ErrorCode;

/// First pause before reconnecting a dropped or failed connection.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest pause between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that stayed up this long resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Frames queued for one connection's writer before senders wait.
const WRITE_QUEUE: usize = 1024;
/// Payload of the ping that proves a new connection works.
const PROBE_PAYLOAD: &[u8] = b"sigmux keyless client probe";

/// Where and how to reach a keyless server.
#[derive(Clone)]
pub struct ClientConfig {
    /// Server address, `host:port`.
    pub addr: String,
    /// Name the server's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// PEM bundle of the CA certificates that issue the server's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM chain of this client's certificate, leaf first.
    pub cert_chain_pem: Vec<u8>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the client certificate.
    pub key_pem: Vec<u8>,
    /// Connections in the pool (at least 1).
    pub connections: usize,
    /// Deadline of each request, and of each connection attempt.
    pub timeout: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is never printed.
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("connections", &self.connections)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a keyless request or connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot be used (bad PEM, no connections, bad
    /// server name).
    #[error("keyless client config: {0}")]
    Config(String),
    /// No TCP connection could be made, or none was ready in time.
    #[error("cannot connect to keyless server {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake failed or the server refused this client (for
    /// example its certificate).
    #[error("TLS with keyless server failed: {0}")]
    Tls(String),
    /// No response within the request deadline.
    #[error("keyless request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection carrying the request closed before the response came.
    #[error("keyless connection closed before the response arrived: {0}")]
    Closed(String),
    /// The server answered with an error response.
    #[error("keyless server answered with an error: {0}")]
    Remote(ErrorCode),
    /// The server sent something that breaks the protocol.
    #[error("keyless protocol error: {0}")]
    Protocol(String),
}

/// The keyless opcode that signs with `scheme`: RSA PKCS#1 and PSS and
/// ECDSA opcodes take the digest, [`Op::Ed25519Sign`] takes the message,
/// and the raw RSA operation maps to [`Op::RsaDecryptRaw`].
pub fn op_for_scheme(scheme: Scheme) -> Op {
    match scheme {
        Scheme::RsaPkcs1Sha256 => Op::RsaSignSha256,
        Scheme::RsaPkcs1Sha384 => Op::RsaSignSha384,
        Scheme::RsaPkcs1Sha512 => Op::RsaSignSha512,
        Scheme::RsaPssRsaeSha256 => Op::RsaPssSignSha256,
        Scheme::RsaPssRsaeSha384 => Op::RsaPssSignSha384,
        Scheme::RsaPssRsaeSha512 => Op::RsaPssSignSha512,
        Scheme::EcdsaSecp256r1Sha256 => Op::EcdsaSignSha256,
        Scheme::EcdsaSecp384r1Sha384 => Op::EcdsaSignSha384,
        Scheme::Ed25519 => Op::Ed25519Sign,
        Scheme::RsaRaw => Op::RsaDecryptRaw,
        // No single opcode: the caller's digest decides; SHA-512 is the
        // one ECDSA opcode whose digest the schemes never use.
        Scheme::EcdsaP256AnyDigest | Scheme::EcdsaP384AnyDigest => Op::EcdsaSignSha512,
    }
}

/// A byte stream a connection runs over (TLS in production).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A future that opens one connection.
pub(crate) type DialFuture =
    Pin<Box<dyn Future<Output = Result<Box<dyn Stream>, ClientError>> + Send>>;

/// Opens connections; the TLS dialer in production, a test double in tests.
pub(crate) type Dialer = Arc<dyn Fn() -> DialFuture + Send + Sync>;

/// Pool settings that do not depend on how connections are made.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub addr: String,
    pub connections: usize,
    pub timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

type Reply = oneshot::Sender<Result<ResponseBody, ClientError>>;

/// Requests in flight on one connection. Once `closed` is set no request
/// may register, so none can be left behind by the drain.
struct Pending {
    closed: Option<ClientError>,
    map: HashMap<u32, Reply>,
}

/// One live connection: its writer queue and its requests in flight.
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<Pending>,
}

impl Conn {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Conn {
        Conn {
            tx,
            pending: Mutex::new(Pending {
                closed: None,
                map: HashMap::new(),
            }),
        }
    }

    /// Registers `id`; fails once the connection is closed.
    fn register(&self, id: u32, reply: Reply) -> Result<(), ClientError> {
        let mut p = self.pending.lock();
        if let Some(e) = &p.closed {
            return Err(e.clone());
        }
        p.map.insert(id, reply);
        Ok(())
    }

    fn forget(&self, id: u32) {
        self.pending.lock().map.remove(&id);
    }

    fn answer(&self, id: u32, result: Result<ResponseBody, ClientError>) {
        let reply = self.pending.lock().map.remove(&id);
        match reply {
            // The receiver may have timed out meanwhile; nothing to do then.
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => tracing::debug!(id, "keyless response for no pending request (timed out?)"),
        }
    }

    /// Closes the connection for new requests and fails those in flight.
    fn close(&self, reason: &ClientError) {
        let drained: Vec<Reply> = {
            let mut p = self.pending.lock();
            p.closed = Some(reason.clone());
            p.map.drain().map(|(_, r)| r).collect()
        };
        let err = match reason {
            ClientError::Closed(_) => reason.clone(),
            other => ClientError::Closed(other.to_string()),
        };
        for reply in drained {
            let _ = reply.send(Err(err.clone()));
        }
    }

    fn in_flight(&self) -> usize {
        self.pending.lock().map.len()
    }
}

/// One pool position: the connection it currently holds, if ready.
#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Arc<Conn>>>,
}

/// State shared by the pool's tasks and the request futures.
struct Inner {
    settings: Settings,
    dialer: Dialer,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    next_id: AtomicU32,
    /// Woken whenever a connection becomes ready.
    ready: Notify,
    /// Why the last connection attempt failed, for error messages.
    last_error: Mutex<Option<ClientError>>,
}

impl Inner {
    fn next_id(&self) -> u32 {
        loop {
            // 0 is never used, so a zero id in a response is always stray.
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    fn try_pick(&self) -> Option<Arc<Conn>> {
        let n = self.slots.len();
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| self.slots[(start + i) % n].conn.lock().clone())
    }

    /// A ready connection, waiting for one if none is.
    async fn pick(&self) -> Arc<Conn> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(conn) = self.try_pick() {
                return conn;
            }
            notified.await;
        }
    }

    /// Sends one request and waits for its response, within the deadline.
    async fn call(
        &self,
        op: Op,
        payload: Vec<u8>,
        ski: Option<[u8; 20]>,
    ) -> Result<ResponseBody, ClientError> {
        let timeout = self.settings.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut req = Request::new(0, op, payload);
        req.ski = ski;
        loop {
            let conn = match tokio::time::timeout_at(deadline, self.pick()).await {
                Ok(conn) => conn,
                Err(_) => {
                    let last = self.last_error.lock().clone();
                    return Err(ClientError::Connect {
                        addr: self.settings.addr.clone(),
                        reason: match last {
                            Some(e) => {
                                format!("no connection ready within {timeout:?}; last error: {e}")
                            }
                            None => format!("no connection ready within {timeout:?}"),
                        },
                    });
                }
            };
            req.id = self.next_id();
            let frame = req
                .encode()
                .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
            let (reply, rx) = oneshot::channel();
            if conn.register(req.id, reply).is_err() {
                // Closed before anything was sent: safe to try another one
                // (its slot is being cleared; let that happen first).
                tokio::task::yield_now().await;
                continue;
            }
            let result = tokio::time::timeout_at(deadline, async {
                conn.tx
                    .send(frame)
                    .await
                    .map_err(|_| ClientError::Closed("connection writer stopped".into()))?;
                rx.await
                    .unwrap_or_else(|_| Err(ClientError::Closed("connection dropped".into())))
            })
            .await;
            return match result {
                Ok(r) => r,
                Err(_) => {
                    conn.forget(req.id);
                    Err(ClientError::Timeout(timeout))
                }
            };
        }
    }

    /// Keeps pool position `index` connected for as long as the client
    /// lives. The outcome of the first attempt goes to `first`.
    async fn run_slot(
        self: Arc<Self>,
        index: usize,
        mut first: Option<mpsc::UnboundedSender<Result<(), ClientError>>>,
    ) {
        let mut backoff = self.settings.backoff_initial;
        loop {
            let started = Instant::now();
            match self.connect_once(index, &mut first).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(addr = %self.settings.addr, error = %e, "keyless connection attempt failed");
                    *self.last_error.lock() = Some(e.clone());
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(e));
                    }
                }
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff = self.settings.backoff_initial;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    /// Dials, proves the connection with a ping, publishes it in slot
    /// `index`, and serves it until it drops. `Err` if it never got ready.
    async fn connect_once(
        &self,
        index: usize,
        first: &mut Option<mpsc::UnboundedSender<Result<(), ClientError>>>,
    ) -> Result<(), ClientError> {
        let timeout = self.settings.timeout;
        let stream = match tokio::time::timeout(timeout, (self.dialer)()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: self.settings.addr.clone(),
                    reason: format!("connection attempt timed out after {timeout:?}"),
                });
            }
        };
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Conn::new(tx));
        let io = serve_io(stream, rx, conn.clone());
        tokio::pin!(io);

        // Prove the connection before handing it requests.
        let probe = async {
            let (reply, reply_rx) = oneshot::channel();
            let id = self.next_id();
            conn.register(id, reply)?;
            let frame = Request::new(id, Op::Ping, PROBE_PAYLOAD.to_vec())
                .encode()
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            conn.tx
                .send(frame)
                .await
                .map_err(|_| ClientError::Closed("connection writer stopped".into()))?;
            let body = reply_rx
                .await
                .unwrap_or_else(|_| Err(ClientError::Closed("connection dropped".into())))?;
            match body {
                ResponseBody::Pong(p) if p == PROBE_PAYLOAD => Ok(()),
                ResponseBody::Pong(_) => Err(ClientError::Protocol(
                    "pong does not echo the ping payload".into(),
                )),
                ResponseBody::Error(code) => Err(ClientError::Remote(code)),
                ResponseBody::Payload(_) => Err(ClientError::Protocol(
                    "ping answered with a non-pong response".into(),
                )),
            }
        };
        tokio::select! {
            biased;
            // Closed before the probe's answer, the handshake done: a
            // sigmux server does that to a client no rule names, the likely
            // cause worth naming.
            reason = &mut io => return Err(match reason {
                ClientError::Closed(r) => ClientError::Closed(format!(
                    "{r} before answering the first ping (a sigmux server closes the connection of a client certificate no [[keyless.clients]] rule names)"
                )),
                other => other,
            }),
            r = tokio::time::timeout(timeout, probe) => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    conn.close(&e);
                    return Err(e);
                }
                Err(_) => {
                    let e = ClientError::Timeout(timeout);
                    conn.close(&e);
                    return Err(e);
                }
            },
        }

        *self.slots[index].conn.lock() = Some(conn.clone());
        *self.last_error.lock() = None;
        self.ready.notify_waiters();
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        tracing::debug!(addr = %self.settings.addr, slot = index, "keyless connection ready");

        let reason = io.await;
        *self.slots[index].conn.lock() = None;
        tracing::warn!(addr = %self.settings.addr, slot = index, reason = %reason, "keyless connection dropped; reconnecting");
        Ok(())
    }
}

/// Runs one connection's writer and reader until either stops, then fails
/// every request still in flight on it. Returns why it stopped.
async fn serve_io(
    stream: Box<dyn Stream>,
    rx: mpsc::Receiver<Vec<u8>>,
    conn: Arc<Conn>,
) -> ClientError {
    let (rd, wr) = tokio::io::split(stream);
    let reason = tokio::select! {
        r = write_loop(wr, rx) => r,
        r = read_loop(rd, &conn) => r,
    };
    conn.close(&reason);
    reason
}

async fn write_loop(wr: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Vec<u8>>) -> ClientError {
    let mut w = BufWriter::with_capacity(16 * 1024, wr);
    let result: io::Result<()> = async {
        while let Some(frame) = rx.recv().await {
            w.write_all(&frame).await?;
            // Write everything already queued, then flush once.
            while let Ok(frame) = rx.try_recv() {
                w.write_all(&frame).await?;
            }
            w.flush().await?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ClientError::Closed("client shut down".into()),
        Err(e) => io_error(e, "writing to"),
    }
}

async fn read_loop(mut rd: impl AsyncRead + Unpin, conn: &Conn) -> ClientError {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0;
    loop {
        // Route every complete frame in the buffer.
        loop {
            match split_frame(&buf[start..]) {
                Ok(Some((header, len))) => {
                    let body = &buf[start + HEADER_LEN..start + len];
                    match Response::decode(&header, body) {
                        Ok(resp) => conn.answer(resp.id, Ok(resp.body)),
                        Err(e) => conn.answer(
                            header.id,
                            Err(ClientError::Protocol(format!("bad response frame: {e}"))),
                        ),
                    }
                    start += len;
                }
                Ok(None) => break,
                // Framing itself cannot be trusted any more.
                Err(e) => return ClientError::Protocol(format!("bad response header: {e}")),
            }
        }
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return ClientError::Closed("keyless server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return io_error(e, "reading from"),
        }
    }
}

/// Classifies an I/O error: TLS failures (alerts, bad certificates) are
/// [`ClientError::Tls`], anything else closes the connection.
fn io_error(e: io::Error, what: &str) -> ClientError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ClientError::Tls(tls.to_string()),
        None => ClientError::Closed(format!("{what} keyless server: {e}")),
    }
}

/// Builds the TLS dialer from the config's PEM material.
fn tls_dialer(cfg: &ClientConfig) -> Result<Dialer, ClientError> {
    let bad = |what: &str, e: &dyn fmt::Display| ClientError::Config(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cfg.ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("ca_pem", &e))?;
    if cas.is_empty() {
        return Err(ClientError::Config("ca_pem holds no certificate".into()));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| bad("ca_pem", &e))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cfg.cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert_chain_pem", &e))?;
    if chain.is_empty() {
        return Err(ClientError::Config(
            "cert_chain_pem holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&cfg.key_pem).map_err(|e| bad("key_pem", &e))?;
    let server_name =
        ServerName::try_from(cfg.server_name.clone()).map_err(|e| bad("server_name", &e))?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("client certificate and key", &e))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let addr = cfg.addr.clone();
    Ok(Arc::new(move || {
        let connector = connector.clone();
        let addr = addr.clone();
        let server_name = server_name.clone();
        Box::pin(async move {
            let tcp =
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .map_err(|e| ClientError::Connect {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await.map_err(|e| {
                match io_error(e, "handshake with") {
                    ClientError::Closed(reason) => ClientError::Tls(reason),
                    other => other,
                }
            })?;
            Ok(Box::new(tls) as Box<dyn Stream>)
        })
    }))
}

/// A pool of pipelined connections to one keyless server.
///
/// Cheap to share behind an `Arc`; every method takes `&self`. Dropping the
/// client closes its connections and stops its threads.
pub struct KeylessClient {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    /// Dropping this stops the client's runtime.
    _stop: oneshot::Sender<()>,
}

impl fmt::Debug for KeylessClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeylessClient")
            .field("addr", &self.inner.settings.addr)
            .field("connections", &self.inner.settings.connections)
            .field("ready", &self.ready_connections())
            .finish()
    }
}

impl KeylessClient {
    /// Opens the pool. Succeeds as soon as one connection has completed its
    /// TLS handshake and answered a ping; the others keep connecting in the
    /// background. Fails with the first connection's error if none could be
    /// made.
    pub async fn connect(cfg: ClientConfig) -> Result<KeylessClient, ClientError> {
        let dialer = tls_dialer(&cfg)?;
        let settings = Settings {
            addr: cfg.addr.clone(),
            connections: cfg.connections,
            timeout: cfg.timeout,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
        };
        KeylessClient::with_dialer(dialer, settings).await
    }

    /// [`KeylessClient::connect`] over any dialer (tests use in-memory
    /// streams).
    pub(crate) async fn with_dialer(
        dialer: Dialer,
        settings: Settings,
    ) -> Result<KeylessClient, ClientError> {
        if settings.connections == 0 {
            return Err(ClientError::Config("connections must be at least 1".into()));
        }
        if settings.timeout.is_zero() {
            return Err(ClientError::Config("timeout must be more than zero".into()));
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(settings.connections)
            .clamp(1, 4);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sigmux-keyless-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the client runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("sigmux-keyless-client".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_background();
            })
            .map_err(|e| ClientError::Config(format!("cannot start the client thread: {e}")))?;

        let n = settings.connections;
        let inner = Arc::new(Inner {
            slots: (0..n).map(|_| Slot::default()).collect(),
            settings,
            dialer,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU32::new(1),
            ready: Notify::new(),
            last_error: Mutex::new(None),
        });
        let (first_tx, mut first_rx) = mpsc::unbounded_channel();
        for index in 0..n {
            handle.spawn(inner.clone().run_slot(index, Some(first_tx.clone())));
        }
        drop(first_tx);
        let client = KeylessClient {
            inner,
            handle,
            _stop: stop,
        };
        let mut first_error = None;
        for _ in 0..n {
            match first_rx.recv().await {
                Some(Ok(())) => return Ok(client),
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                None => break,
            }
        }
        Err(first_error.unwrap_or_else(|| ClientError::Closed("client runtime stopped".into())))
    }

    /// Signs `payload` with the key whose SKI is `ski`. For digest opcodes
    /// the payload is the digest; for [`Op::Ed25519Sign`] the message.
    /// Returns the signature, or [`ClientError::Remote`] with the server's
    /// error code.
    pub async fn sign(
        &self,
        ski: [u8; 20],
        op: Op,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let inner = self.inner.clone();
        self.spawn(async move { expect_payload(inner.call(op, payload, Some(ski)).await) })
            .await
    }

    /// Sends a ping and returns the pong's payload (the server echoes it).
    pub async fn ping(&self, payload: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let inner = self.inner.clone();
        self.spawn(async move { expect_pong(inner.call(Op::Ping, payload, None).await) })
            .await
    }

    /// [`KeylessClient::sign`] for synchronous callers such as rustls's
    /// `Signer`. Blocks the calling thread until the answer or the deadline;
    /// safe on any thread, including a tokio worker (on a multi-thread
    /// runtime it steps out with `block_in_place` so the worker's other
    /// tasks keep running; elsewhere it simply blocks, as the I/O runs on
    /// the client's own threads).
    pub fn sign_blocking(
        &self,
        ski: [u8; 20],
        op: Op,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let inner = self.inner.clone();
        self.handle.spawn(async move {
            let _ = tx.send(expect_payload(inner.call(op, payload, Some(ski)).await));
        });
        let wait = move || {
            rx.recv()
                .unwrap_or_else(|_| Err(ClientError::Closed("client runtime stopped".into())))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// How many of the pool's connections are ready for requests now.
    pub fn ready_connections(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| s.conn.lock().is_some())
            .count()
    }

    /// Requests sent and not yet answered, over all connections.
    pub fn in_flight(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter_map(|s| s.conn.lock().clone())
            .map(|c| c.in_flight())
            .sum()
    }

    /// Runs `fut` on the client's runtime and waits for it from any executor.
    async fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
    ) -> Result<T, ClientError> {
        self.handle
            .spawn(fut)
            .await
            .unwrap_or_else(|_| Err(ClientError::Closed("client runtime stopped".into())))
    }
}

fn expect_payload(r: Result<ResponseBody, ClientError>) -> Result<Vec<u8>, ClientError> {
    match r? {
        ResponseBody::Payload(p) => Ok(p),
        ResponseBody::Error(code) => Err(ClientError::Remote(code)),
        ResponseBody::Pong(_) => Err(ClientError::Protocol(
            "signing request answered with a pong".into(),
        )),
    }
}

fn expect_pong(r: Result<ResponseBody, ClientError>) -> Result<Vec<u8>, ClientError> {
    match r? {
        ResponseBody::Pong(p) => Ok(p),
        ResponseBody::Error(code) => Err(ClientError::Remote(code)),
        ResponseBody::Payload(_) => Err(ClientError::Protocol(
            "ping answered with a non-pong response".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    //! The peer in these tests is a TEST DOUBLE of a keyless server: a few
    //! lines that speak the wire protocol over an in-memory duplex stream,
    //! with scripted misbehaviour (answering out of order, staying silent,
    //! hanging up). Tests against the real server start `sigmux serve`
    //! (tests/keyless_client.rs).

    use std::sync::atomic::AtomicUsize;

    use tokio::io::DuplexStream;

    use super::*;
    use crate::keyless::protocol::Header;

    /// How the test double treats requests other than the connection probe.
    #[derive(Clone, Copy, Debug)]
    enum Mode {
        /// Answer each request at once.
        Echo,
        /// Hold requests until `n` have arrived, then answer them last first.
        Reverse(usize),
        /// Never answer.
        Silent,
        /// Hang up when a request arrives.
        HangUpOnRequest,
        /// Hang up shortly after answering the probe.
        HangUpAfterProbe,
        /// Answer the probe with an error.
        RefuseProbe,
        /// Answer requests with a frame whose body does not decode.
        Garbage,
    }

    const MISSING_KEY: [u8; 20] = [0xEE; 20];

    /// The test double's answer: pong for ping, "key not found" for
    /// [`MISSING_KEY`], else opcode byte followed by the payload.
    fn answer(req: &Request) -> Response {
        if req.op == Op::Ping {
            return Response::pong(req.id, req.payload.clone());
        }
        if req.ski == Some(MISSING_KEY) {
            return Response::error(req.id, ErrorCode::KeyNotFound);
        }
        let mut out = vec![req.op.to_u8()];
        out.extend_from_slice(&req.payload);
        Response::payload(req.id, out)
    }

    async fn fake_peer(mut s: DuplexStream, mode: Mode) {
        let mut buf = Vec::new();
        let mut held: Vec<Request> = Vec::new();
        loop {
            while let Ok(Some((h, len))) = split_frame(&buf) {
                let req = Request::decode(&h, &buf[HEADER_LEN..len]).unwrap();
                buf.drain(..len);
                let out = if req.op == Op::Ping && req.payload == PROBE_PAYLOAD {
                    if let Mode::RefuseProbe = mode {
                        Response::error(req.id, ErrorCode::Internal)
                            .encode()
                            .unwrap()
                    } else {
                        let pong = Response::pong(req.id, req.payload.clone());
                        s.write_all(&pong.encode().unwrap()).await.unwrap();
                        if let Mode::HangUpAfterProbe = mode {
                            // A little later, so the client sees a working
                            // connection drop rather than a failed connect.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return;
                        }
                        continue;
                    }
                } else {
                    match mode {
                        Mode::Echo | Mode::HangUpAfterProbe | Mode::RefuseProbe => {
                            answer(&req).encode().unwrap()
                        }
                        Mode::Reverse(n) => {
                            held.push(req);
                            if held.len() < n {
                                continue;
                            }
                            let mut out = Vec::new();
                            for r in held.drain(..).rev() {
                                out.extend(answer(&r).encode().unwrap());
                            }
                            out
                        }
                        Mode::Silent => continue,
                        Mode::HangUpOnRequest => return,
                        Mode::Garbage => {
                            // Well framed, but 0x05 is not a response opcode.
                            let body = [0x11, 0x00, 0x01, 0x05];
                            let mut f = Header::new(req.id, 4).encode().to_vec();
                            f.extend_from_slice(&body);
                            f
                        }
                    }
                };
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// A dialer whose `n`th connection (from 0) behaves as `script(n)`;
    /// `None` fails that dial. Also returns the dial times.
    fn dialer(
        script: impl Fn(usize) -> Option<Mode> + Send + Sync + 'static,
    ) -> (Dialer, Arc<Mutex<Vec<Instant>>>) {
        let count = Arc::new(AtomicUsize::new(0));
        let times = Arc::new(Mutex::new(Vec::new()));
        let t = times.clone();
        let d: Dialer = Arc::new(move || {
            let n = count.fetch_add(1, Ordering::SeqCst);
            t.lock().push(Instant::now());
            let mode = script(n);
            Box::pin(async move {
                let Some(mode) = mode else {
                    return Err(ClientError::Connect {
                        addr: "test".into(),
                        reason: "connection refused".into(),
                    });
                };
                let (client, server) = tokio::io::duplex(64 * 1024);
                tokio::spawn(fake_peer(server, mode));
                Ok(Box::new(client) as Box<dyn Stream>)
            })
        });
        (d, times)
    }

    fn settings(connections: usize, timeout: Duration) -> Settings {
        Settings {
            addr: "test".into(),
            connections,
            timeout,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(80),
        }
    }

    async fn client(mode: Mode, connections: usize, timeout: Duration) -> KeylessClient {
        let (d, _) = dialer(move |_| Some(mode));
        KeylessClient::with_dialer(d, settings(connections, timeout))
            .await
            .unwrap()
    }

    /// Waits until the client has seen its connection drop.
    async fn wait_until_down(c: &KeylessClient) {
        for _ in 0..500 {
            if c.ready_connections() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the connection never dropped");
    }

    #[tokio::test]
    async fn out_of_order_responses_reach_their_requests() {
        let c = Arc::new(client(Mode::Reverse(32), 1, Duration::from_secs(10)).await);
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let payload = i.to_be_bytes().to_vec();
                let sig = c.sign([1; 20], Op::EcdsaSignSha256, payload.clone()).await;
                (payload, sig)
            }));
        }
        for t in tasks {
            let (payload, sig) = t.await.unwrap();
            let sig = sig.unwrap();
            assert_eq!(sig[0], Op::EcdsaSignSha256.to_u8());
            assert_eq!(&sig[1..], &payload[..]);
        }
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn requests_spread_over_the_pool_and_errors_map_to_remote() {
        let c = client(Mode::Echo, 3, Duration::from_secs(10)).await;
        // The others connect in the background.
        for _ in 0..200 {
            if c.ready_connections() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(c.ready_connections(), 3);
        assert_eq!(c.ping(b"hello".to_vec()).await.unwrap(), b"hello");
        assert_eq!(c.ping(Vec::new()).await.unwrap(), b"");
        let sig = c
            .sign([2; 20], Op::Ed25519Sign, b"msg".to_vec())
            .await
            .unwrap();
        assert_eq!(sig, [&[0x18][..], b"msg"].concat());
        assert_eq!(
            c.sign(MISSING_KEY, Op::RsaPssSignSha256, vec![0; 32]).await,
            Err(ClientError::Remote(ErrorCode::KeyNotFound))
        );
        let msg = ClientError::Remote(ErrorCode::KeyNotFound).to_string();
        assert!(msg.contains("key not found"), "{msg}");
        // A payload that cannot be framed is refused before it is sent.
        let err = c
            .sign([2; 20], Op::Ed25519Sign, vec![0; 70_000])
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn unanswered_request_times_out_and_is_forgotten() {
        let c = client(Mode::Silent, 1, Duration::from_millis(300)).await;
        let t0 = Instant::now();
        let err = c
            .sign([1; 20], Op::EcdsaSignSha256, vec![0; 32])
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert_eq!(err, ClientError::Timeout(Duration::from_millis(300)));
        assert!(took >= Duration::from_millis(290), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(c.in_flight(), 0);
        assert!(err.to_string().contains("timed out after 300ms"), "{err}");
    }

    #[tokio::test]
    async fn in_flight_requests_fail_when_the_connection_drops_then_it_reconnects() {
        // First connection hangs up on the first request; later ones work.
        let (d, times) = dialer(|n| {
            Some(if n == 0 {
                Mode::HangUpOnRequest
            } else {
                Mode::Echo
            })
        });
        let c = KeylessClient::with_dialer(d, settings(1, Duration::from_secs(30)))
            .await
            .unwrap();
        let t0 = Instant::now();
        let err = c
            .sign([1; 20], Op::RsaSignSha256, vec![0; 32])
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Closed(_)), "{err}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "failed late: {:?}",
            t0.elapsed()
        );
        // The next request waits for the reconnect and goes through.
        let sig = c
            .sign([1; 20], Op::RsaSignSha256, vec![7; 32])
            .await
            .unwrap();
        assert_eq!(&sig[1..], &[7; 32]);
        assert!(times.lock().len() >= 2);
    }

    #[tokio::test]
    async fn reconnect_backs_off_exponentially_up_to_the_cap() {
        // Connection 0 hangs up after the probe; dials 1..=5 fail; 6 works.
        let (d, times) = dialer(|n| match n {
            0 => Some(Mode::HangUpAfterProbe),
            1..=5 => None,
            _ => Some(Mode::Echo),
        });
        let c = KeylessClient::with_dialer(d, settings(1, Duration::from_secs(30)))
            .await
            .unwrap();
        wait_until_down(&c).await;
        assert_eq!(c.ping(b"x".to_vec()).await.unwrap(), b"x");
        let times = times.lock().clone();
        assert!(times.len() >= 7, "{} dials", times.len());
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // 20, 40, 80, 80, 80, 80 ms after the drop (the first gap includes
        // the probe and the drop).
        for (gap, min) in gaps[1..6].iter().zip([40u64, 80, 80, 80, 80]) {
            assert!(*gap >= Duration::from_millis(min - 5), "gaps {gaps:?}");
            assert!(*gap < Duration::from_millis(min * 20), "gaps {gaps:?}");
        }
    }

    #[tokio::test]
    async fn connect_fails_when_no_connection_can_be_made() {
        let (d, _) = dialer(|_| None);
        let err = KeylessClient::with_dialer(d, settings(2, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ClientError::Connect {
                addr: "test".into(),
                reason: "connection refused".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot connect to keyless server test: connection refused"
        );

        let (d, _) = dialer(|_| Some(Mode::RefuseProbe));
        let err = KeylessClient::with_dialer(d, settings(1, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(err, ClientError::Remote(ErrorCode::Internal));

        let (d, _) = dialer(|_| Some(Mode::Echo));
        let err = KeylessClient::with_dialer(d, settings(0, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err}");
    }

    #[tokio::test]
    async fn requests_without_any_connection_fail_with_the_last_error() {
        // Connected once, then the server goes away for good.
        let (d, _) = dialer(|n| {
            if n == 0 {
                Some(Mode::HangUpAfterProbe)
            } else {
                None
            }
        });
        let c = KeylessClient::with_dialer(d, settings(1, Duration::from_millis(300)))
            .await
            .unwrap();
        wait_until_down(&c).await;
        let err = c.ping(b"x".to_vec()).await.unwrap_err();
        match &err {
            ClientError::Connect { reason, .. } => {
                assert!(reason.contains("no connection ready within 300ms"), "{err}")
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn undecodable_response_is_a_protocol_error_for_that_request() {
        let c = client(Mode::Garbage, 1, Duration::from_secs(10)).await;
        let err = c
            .sign([1; 20], Op::EcdsaSignSha256, vec![0; 32])
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
        assert!(err.to_string().contains("unexpected opcode 0x05"), "{err}");
    }

    #[test]
    fn sign_blocking_works_from_any_thread_or_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = Arc::new(rt.block_on(client(Mode::Echo, 2, Duration::from_secs(10))));
        // Plain thread.
        let sig = c
            .sign_blocking([1; 20], Op::EcdsaSignSha384, vec![1; 48])
            .unwrap();
        assert_eq!(sig[0], 0x16);
        // Inside a current-thread runtime, whose only thread is blocked.
        let c2 = c.clone();
        let sig =
            rt.block_on(async move { c2.sign_blocking([1; 20], Op::RsaSignSha512, vec![2; 64]) });
        assert_eq!(sig.unwrap()[0], 0x07);
        // On the workers of a multi-thread runtime, many at once.
        let mt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let results = mt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..16u8 {
                let c = c.clone();
                tasks.push(tokio::spawn(async move {
                    c.sign_blocking([1; 20], Op::Ed25519Sign, vec![i])
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap().unwrap());
            }
            out
        });
        for (i, sig) in results.iter().enumerate() {
            assert_eq!(sig, &vec![0x18, i as u8]);
        }
        // Failing requests fail the same way.
        assert_eq!(
            c.sign_blocking(MISSING_KEY, Op::EcdsaSignSha256, vec![0; 32]),
            Err(ClientError::Remote(ErrorCode::KeyNotFound))
        );
    }

    #[test]
    fn op_for_every_scheme() {
        for s in Scheme::all() {
            let op = op_for_scheme(*s);
            use crate::keyless::protocol::OpKind;
            let fits = match (s.family(), op.kind()) {
                (crate::scheme::Family::Rsa, OpKind::SignRsaPss(_)) => s.is_pss(),
                (crate::scheme::Family::Rsa, OpKind::SignRsaPkcs1(_)) => !s.is_pss(),
                (crate::scheme::Family::Ecdsa(_), OpKind::SignEcdsa(_)) => true,
                (crate::scheme::Family::Ed25519, OpKind::SignEd25519) => true,
                _ => false,
            };
            assert!(fits, "{s} -> {op:?}");
        }
    }
}
