//! The engine: every signature in sigmux goes through [`Engine::sign`].
//! Requests are queued per key and scheme, flushed as batches, placed on the
//! backend that will finish them first, checked, and released.

mod batcher;
pub mod check;
pub mod cost;
mod dispatch;
mod pools;
mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::scheme::{Scheme, SignInput};

use batcher::Batcher;
use dispatch::Slot;
use reply::{Admission, Waiter};
pub use reply::{Callback, GroupTicket, Ticket};

/// Engine limits.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A queue flushes when it holds this many requests.
    pub max_batch: usize,
    /// A queue flushes when its oldest request has waited this long (and
    /// sooner, whenever a backend that can take it has idle capacity).
    pub max_wait: Duration,
    /// Requests accepted and not yet answered, across all queues; past this
    /// `sign` answers [`Error::Overloaded`] at once.
    pub queue_capacity: usize,
    /// Default per-request deadline.
    pub deadline: Duration,
    /// Verify signatures again in the engine even when the backend checks
    /// its own results ([`Backend::checks_own_results`]).
    pub recheck_self_checked: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 64,
            max_wait: Duration::from_micros(500),
            queue_capacity: 65_536,
            deadline: Duration::from_secs(10),
            recheck_self_checked: false,
        }
    }
}

/// One private-key operation to perform.
#[derive(Debug)]
pub struct SignRequest {
    /// The key.
    pub key: Arc<Key>,
    /// The scheme; must fit the key's kind.
    pub scheme: Scheme,
    /// Message or prehashed digest.
    pub input: SignInput,
    /// Overrides the engine's default deadline.
    pub deadline: Option<Duration>,
}

impl SignRequest {
    /// A request with the engine's default deadline.
    pub fn new(key: Arc<Key>, scheme: Scheme, input: SignInput) -> SignRequest {
        SignRequest {
            key,
            scheme,
            input,
            deadline: None,
        }
    }
}

/// A released signature: checked where the rules require it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// RSA: big-endian, modulus length; ECDSA: DER; Ed25519: 64 bytes.
    pub bytes: Vec<u8>,
    /// The backend that made it (interned, see [`backend_name`]).
    pub backend: &'static str,
}

/// The one `&'static str` for a backend's name. Every answer names its
/// backend; a shared `Arc<str>` there cost two atomic operations on one
/// cache line per signature, fought over by every worker and caller thread
/// at GPU rates. Names are few (one per configured backend) and each is
/// kept once for the life of the process, however often backends are
/// built again.
pub fn backend_name(name: &str) -> &'static str {
    static NAMES: std::sync::OnceLock<parking_lot::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock();
    if let Some(n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(n);
    n
}

/// Requests for one key and scheme that travel together.
pub(crate) struct Batch {
    key: Arc<Key>,
    scheme: Scheme,
    inputs: Vec<Vec<u8>>,
    waiters: Vec<Waiter>,
}

impl Batch {
    fn fail(self, make: impl Fn() -> Error) {
        for w in self.waiters {
            w.answer(Err(make()));
        }
    }
}

/// Engine-wide counters.
#[derive(Default)]
struct EngineStats {
    accepted: AtomicU64,
    overloaded: AtomicU64,
    deadline_exceeded: AtomicU64,
    failed: AtomicU64,
}

pub(crate) struct Inner {
    cfg: EngineConfig,
    slots: Vec<Arc<Slot>>,
    batcher: Batcher,
    admitted: Arc<AtomicUsize>,
    stats: EngineStats,
    stopping: AtomicBool,
}

/// The signing engine. Share it as `Arc<Engine>`; dropping the last
/// reference drains the queues and stops the worker threads.
pub struct Engine {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Starts an engine over `backends` (unavailable ones are listed but
    /// never given work).
    pub fn new(cfg: EngineConfig, backends: Vec<Arc<dyn Backend>>) -> Result<Engine> {
        if cfg.max_batch == 0 || cfg.queue_capacity == 0 {
            return Err(Error::Config(
                "engine.max_batch and engine.queue_capacity must be at least 1".into(),
            ));
        }
        let slots: Vec<Arc<Slot>> = backends
            .into_iter()
            .enumerate()
            .map(|(i, b)| Slot::new(i, b))
            .collect();
        let inner = Arc::new(Inner {
            cfg,
            slots,
            batcher: Batcher::default(),
            admitted: Arc::new(AtomicUsize::new(0)),
            stats: EngineStats::default(),
            stopping: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        let started = (|| {
            for slot in &inner.slots {
                threads.extend(dispatch::spawn_workers(&inner, slot)?);
            }
            let flusher = inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("sigmux-batcher".into())
                    .spawn(move || batcher::run_flusher(&flusher))
                    .map_err(|e| Error::Invalid(format!("cannot start batcher thread: {e}")))?,
            );
            Ok(())
        })();
        if let Err(e) = started {
            // Workers already running on a backend's pool would otherwise
            // hold its threads (and their claim on it) for good.
            dispatch::stop_workers(&inner);
            for h in threads {
                let _ = h.join();
            }
            return Err(e);
        }
        Ok(Engine {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// Queues a request and returns its ticket at once. Fails at once with
    /// [`Error::Overloaded`] when the queues are full, and with a clear
    /// error for a scheme that does not fit the key, a digest of the wrong
    /// length, or a key no backend can use.
    pub fn submit(&self, req: SignRequest) -> Result<Ticket> {
        let mut ticket = None;
        self.enqueue(req, |deadline, admission| {
            let (waiter, t) = Waiter::one(deadline, admission);
            ticket = Some(t);
            waiter
        })?;
        ticket.ok_or(Error::ShuttingDown)
    }

    /// Queues a request whose answer is handed to `on_done` on the engine's
    /// worker thread (keep it short: it delays that thread's next batch).
    /// For callers that want neither a future nor a blocked thread. Errors
    /// before queueing are returned here and `on_done` is not called.
    pub fn submit_with(
        &self,
        req: SignRequest,
        on_done: impl FnOnce(Result<Signature>) + Send + 'static,
    ) -> Result<()> {
        self.enqueue(req, |deadline, admission| {
            Waiter::call(deadline, admission, Box::new(on_done))
        })
    }

    fn enqueue(
        &self,
        req: SignRequest,
        waiter: impl FnOnce(Instant, Admission) -> Waiter,
    ) -> Result<()> {
        let inner = &self.inner;
        if inner.stopping.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        req.scheme.check_fits(req.key.kind())?;
        let input = req.scheme.prepare(req.input)?;
        check::admit_input(&req.key, req.scheme, &input)?;
        inner.check_some_backend(&req.key, req.scheme)?;
        if Admission::admit(&inner.admitted, 1, inner.cfg.queue_capacity).is_none() {
            inner.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded);
        }
        inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let deadline = now + req.deadline.unwrap_or(inner.cfg.deadline);
        let waiter = waiter(deadline, Admission::share(&inner.admitted));
        inner
            .batcher
            .push(inner, now, req.key, req.scheme, vec![input], vec![waiter]);
        Ok(())
    }

    /// Queues a group of requests for one key and scheme, answered together
    /// in order: one wake-up for the caller instead of one per signature.
    /// The group is admitted whole or refused whole ([`Error::Overloaded`]);
    /// a bad input fails the whole submission, naming its index.
    pub fn submit_group(
        &self,
        key: Arc<Key>,
        scheme: Scheme,
        inputs: Vec<SignInput>,
        deadline: Option<Duration>,
    ) -> Result<GroupTicket> {
        let inner = &self.inner;
        if inner.stopping.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        scheme.check_fits(key.kind())?;
        let n = inputs.len();
        // One allocation of the group's size (collecting into a `Result`
        // would grow the vector step by step).
        let mut prepared = Vec::with_capacity(n);
        for (i, input) in inputs.into_iter().enumerate() {
            let p = scheme
                .prepare(input)
                .and_then(|p| check::admit_input(&key, scheme, &p).map(|()| p))
                .map_err(|e| Error::Invalid(format!("item {i}: {e}")))?;
            prepared.push(p);
        }
        inner.check_some_backend(&key, scheme)?;
        if Admission::admit(&inner.admitted, n, inner.cfg.queue_capacity).is_none() {
            inner
                .stats
                .overloaded
                .fetch_add(n as u64, Ordering::Relaxed);
            return Err(Error::Overloaded);
        }
        inner.stats.accepted.fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        let deadline = now + deadline.unwrap_or(inner.cfg.deadline);
        let admission = Admission::share_n(&inner.admitted, n);
        let (waiters, ticket) = Waiter::group(deadline, n, admission);
        if n > 0 {
            inner
                .batcher
                .push(inner, now, key, scheme, prepared, waiters);
        }
        Ok(ticket)
    }

    /// Signs, from async code.
    pub async fn sign(&self, req: SignRequest) -> Result<Signature> {
        self.submit(req)?.await
    }

    /// Signs, from synchronous code (not inside an async runtime).
    pub fn sign_blocking(&self, req: SignRequest) -> Result<Signature> {
        self.submit(req)?.wait()
    }

    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Requests accepted and not yet answered.
    pub fn queue_depth(&self) -> usize {
        self.inner.admitted.load(Ordering::Acquire)
    }

    /// Names of the backends, in order.
    pub fn backend_names(&self) -> Vec<String> {
        self.inner
            .slots
            .iter()
            .map(|s| s.backend.name().to_string())
            .collect()
    }

    /// Ends the back-off of the backend named `name` after errors, so its
    /// next batch is tried at once: for an operator who has just fixed what
    /// failed (a PKCS#11 token usable again at SIGHUP). A quarantine for
    /// wrong results is left as it is. Returns whether such a backend was
    /// waiting.
    pub fn retry_now(&self, name: &str) -> bool {
        self.inner
            .slots
            .iter()
            .filter(|s| s.backend.name() == name)
            .any(|s| s.end_error_backoff())
    }

    /// Operations and batches completed by each backend, as
    /// `(name, ops, batches)`.
    pub fn backend_totals(&self) -> Vec<(String, u64, u64)> {
        self.inner
            .slots
            .iter()
            .map(|s| {
                let (ops, batches) = s.totals();
                (s.backend.name().to_string(), ops, batches)
            })
            .collect()
    }

    /// Everything `sigmux backends` shows: capabilities, availability,
    /// health, live cost model, queue depth and backend-specific facts.
    pub fn report(&self) -> serde_json::Value {
        let backends: Vec<serde_json::Value> =
            self.inner.slots.iter().map(|s| s.report()).collect();
        serde_json::json!({
            "queue_depth": self.queue_depth(),
            "queue_capacity": self.inner.cfg.queue_capacity,
            "max_batch": self.inner.cfg.max_batch,
            "max_wait_us": self.inner.cfg.max_wait.as_micros() as u64,
            "recheck_self_checked": self.inner.cfg.recheck_self_checked,
            "backends": backends,
        })
    }

    /// Prometheus text exposition of the engine's metrics.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let s = &self.inner.stats;
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "sigmux_engine_requests_total",
            "Requests accepted by the engine.",
            s.accepted.load(Ordering::Relaxed),
        );
        counter(
            "sigmux_engine_overloaded_total",
            "Requests refused because the queues were full.",
            s.overloaded.load(Ordering::Relaxed),
        );
        counter(
            "sigmux_engine_deadline_exceeded_total",
            "Requests that passed their deadline before signing.",
            s.deadline_exceeded.load(Ordering::Relaxed),
        );
        counter(
            "sigmux_engine_failed_total",
            "Requests answered with a backend error.",
            s.failed.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP sigmux_engine_queue_depth Requests accepted and not yet answered.\n# TYPE sigmux_engine_queue_depth gauge\nsigmux_engine_queue_depth {}",
            self.queue_depth()
        );
        dispatch::write_slot_metrics(&mut out, &self.inner.slots);
        out
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.batcher.wake();
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}

impl Inner {
    /// Fails fast when no backend could ever take this key and scheme.
    fn check_some_backend(&self, key: &Key, scheme: Scheme) -> Result<()> {
        if self.slots.iter().any(|s| s.could_serve(key, scheme)) {
            Ok(())
        } else {
            Err(Error::NoBackend {
                kind: key.kind(),
                scheme,
                reason: format!(
                    "no enabled backend handles {:?} keys with this scheme",
                    key.placement()
                )
                .to_lowercase(),
            })
        }
    }

    /// Whether some backend that can take this key and scheme is idle
    /// enough that waiting for a fuller batch would only add latency.
    fn has_idle_capacity(&self, key: &Key, scheme: Scheme) -> bool {
        // The idle check is one atomic load; only a slot with an idle worker
        // needs the clock and the capability checks (a busy engine asks
        // this once per request).
        let mut now = None;
        self.slots.iter().any(|s| {
            s.has_idle_capacity() && s.usable(key, scheme, *now.get_or_insert_with(Instant::now))
        })
    }
}
