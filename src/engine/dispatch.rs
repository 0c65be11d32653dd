//! The scheduler and the backend workers: each batch goes to the backend
//! (or backends) that will finish it first by the live cost model; results
//! are checked before release, and a backend that fails or lies is taken
//! out of rotation with back-off while its batch is redone elsewhere.

use std::collections::HashMap;
use std::fmt::Write;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde_json::json;

use super::cost::{Candidate, CostModel, plan};
use super::pools::PoolClaim;
use super::{Batch, Inner, Signature, Waiter, check};
use crate::backend::{Availability, Backend};
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::scheme::{KeyKind, Scheme};

/// Back-off after a backend error, doubled per consecutive failure.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Back-off after a backend returned a wrong signature.
const QUARANTINE_BACKOFF: Duration = Duration::from_secs(10);
/// Longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
enum Health {
    Healthy,
    /// Returned errors; retried after `until`.
    Failing {
        failures: u32,
        until: Instant,
        reason: String,
    },
    /// Returned a wrong signature; retried after `until`.
    Quarantined {
        failures: u32,
        until: Instant,
        reason: String,
    },
}

enum Msg {
    Job(Job),
    Stop,
}

struct Job {
    batch: Batch,
    est_us: u64,
    excluded: Vec<usize>,
    /// The slot's `failure_epoch` when the job was dispatched.
    epoch: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    ops: AtomicU64,
    errors: AtomicU64,
    quarantines: AtomicU64,
    bad_signatures: AtomicU64,
}

/// One backend as the engine tracks it.
pub(crate) struct Slot {
    index: usize,
    pub(crate) backend: Arc<dyn Backend>,
    name: &'static str,
    available: bool,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    workers: usize,
    /// Set when this slot's workers are the threads of its backend's pool;
    /// released when they are told to stop.
    pool_claim: Mutex<Option<PoolClaim>>,
    in_flight_ops: AtomicUsize,
    in_flight_jobs: AtomicUsize,
    queued_us: AtomicU64,
    costs: Mutex<HashMap<(KeyKind, Scheme), CostModel>>,
    health: Mutex<Health>,
    /// Mirrors `health != Healthy`, so the hot path needs no lock.
    out_of_rotation: AtomicBool,
    /// Failures so far (each `mark_failed` adds one). A job remembers the
    /// count when it was dispatched: only a job sent after the last failure
    /// (a probe once the back-off has passed) may put the backend back in
    /// rotation, never one that was already running or queued when it
    /// failed.
    failure_epoch: AtomicU64,
    counters: Counters,
}

impl Slot {
    pub(crate) fn new(index: usize, backend: Arc<dyn Backend>) -> Arc<Slot> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let available = backend.availability() == Availability::Available;
        let caps = backend.capabilities();
        // On a backend's own pool, one worker per pool thread; otherwise one
        // per unit of parallelism (HSM sessions, GPU streams), two at least
        // so one batch's hand-off overlaps another's signing. A pool already
        // running another slot's workers is left alone (engine::pools).
        let pool_claim = if available {
            backend
                .executor()
                .and_then(|pool| Some((pool.current_num_threads(), PoolClaim::try_claim(pool)?)))
        } else {
            None
        };
        let workers = match &pool_claim {
            Some((threads, _)) => *threads,
            None => caps.parallelism.clamp(2, 256),
        };
        let pool_claim = Mutex::new(pool_claim.map(|(_, claim)| claim));
        let mut costs = HashMap::new();
        for &kind in KeyKind::all() {
            for scheme in kind.schemes() {
                if let Some(seed) = backend.cost_seed(kind, scheme) {
                    costs.insert(
                        (kind, scheme),
                        CostModel::seeded(seed.per_batch_us, seed.per_op_us),
                    );
                }
            }
        }
        Arc::new(Slot {
            index,
            name: super::backend_name(backend.name()),
            backend,
            available,
            tx,
            rx,
            workers,
            pool_claim,
            in_flight_ops: AtomicUsize::new(0),
            in_flight_jobs: AtomicUsize::new(0),
            queued_us: AtomicU64::new(0),
            costs: Mutex::new(costs),
            health: Mutex::new(Health::Healthy),
            out_of_rotation: AtomicBool::new(false),
            failure_epoch: AtomicU64::new(0),
            counters: Counters::default(),
        })
    }

    /// Whether this backend could ever take this key and scheme.
    pub(crate) fn could_serve(&self, key: &Key, scheme: Scheme) -> bool {
        self.available
            && self.backend.capabilities().schemes.contains(&scheme)
            && self.backend.holds(key)
    }

    /// Whether it may take work now (healthy, or its back-off has passed).
    fn healthy_at(&self, now: Instant) -> bool {
        if !self.out_of_rotation.load(Ordering::Acquire) {
            return true;
        }
        match &*self.health.lock() {
            Health::Healthy => true,
            Health::Failing { until, .. } | Health::Quarantined { until, .. } => *until <= now,
        }
    }

    pub(crate) fn usable(&self, key: &Key, scheme: Scheme, now: Instant) -> bool {
        self.could_serve(key, scheme) && self.healthy_at(now)
    }

    /// Whether one of its workers has nothing to do: then a queued batch
    /// should go now rather than wait to grow.
    pub(crate) fn has_idle_capacity(&self) -> bool {
        self.in_flight_jobs.load(Ordering::Acquire) < self.workers
    }

    fn cost(&self, kind: KeyKind, scheme: Scheme) -> CostModel {
        *self
            .costs
            .lock()
            .entry((kind, scheme))
            .or_insert_with(|| CostModel::seeded(50.0, 1000.0))
    }

    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.counters.ops.load(Ordering::Relaxed),
            self.counters.batches.load(Ordering::Relaxed),
        )
    }

    fn enqueue(&self, batch: Batch, excluded: Vec<usize>) {
        let n = batch.inputs.len();
        let est = self.cost(batch.key.kind(), batch.scheme).batch_us(n) as u64;
        self.in_flight_ops.fetch_add(n, Ordering::AcqRel);
        self.in_flight_jobs.fetch_add(1, Ordering::AcqRel);
        self.queued_us.fetch_add(est, Ordering::AcqRel);
        let job = Job {
            batch,
            est_us: est,
            excluded,
            epoch: self.failure_epoch.load(Ordering::Acquire),
        };
        if let Err(crossbeam_channel::SendError(Msg::Job(job))) = self.tx.send(Msg::Job(job)) {
            self.finish_accounting(n, est);
            job.batch.fail(|| Error::ShuttingDown);
        }
    }

    fn finish_accounting(&self, n: usize, est: u64) {
        self.in_flight_ops.fetch_sub(n, Ordering::AcqRel);
        self.in_flight_jobs.fetch_sub(1, Ordering::AcqRel);
        self.queued_us.fetch_sub(est, Ordering::AcqRel);
    }

    fn mark_failed(&self, reason: String, quarantine: bool) {
        let mut h = self.health.lock();
        let failures = match &*h {
            Health::Healthy => 0,
            Health::Failing { failures, .. } | Health::Quarantined { failures, .. } => *failures,
        } + 1;
        let base = if quarantine {
            QUARANTINE_BACKOFF
        } else {
            ERROR_BACKOFF
        };
        let backoff = base
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(MAX_BACKOFF);
        let until = Instant::now() + backoff;
        self.failure_epoch.fetch_add(1, Ordering::AcqRel);
        self.out_of_rotation.store(true, Ordering::Release);
        tracing::warn!(backend = %self.name, %reason, backoff_ms = backoff.as_millis() as u64,
            quarantine, "backend taken out of rotation");
        *h = if quarantine {
            Health::Quarantined {
                failures,
                until,
                reason,
            }
        } else {
            Health::Failing {
                failures,
                until,
                reason,
            }
        };
    }

    /// Ends a back-off after errors (not a quarantine): the next batch may
    /// come at once. Returns whether there was one.
    pub(crate) fn end_error_backoff(&self) -> bool {
        let mut h = self.health.lock();
        match &mut *h {
            Health::Failing { until, .. } => {
                *until = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// A batch dispatched at `epoch` succeeded.
    fn mark_ok(&self, epoch: u64) {
        if !self.out_of_rotation.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock();
        // Under the lock: mark_failed moves the epoch under it too.
        if epoch != self.failure_epoch.load(Ordering::Acquire) {
            return;
        }
        if !matches!(*h, Health::Healthy) {
            tracing::info!(backend = %self.name, "backend back in rotation");
            *h = Health::Healthy;
            self.out_of_rotation.store(false, Ordering::Release);
        }
    }

    pub(crate) fn report(&self) -> serde_json::Value {
        let health = match &*self.health.lock() {
            Health::Healthy => json!({"state": "healthy"}),
            Health::Failing {
                failures,
                until,
                reason,
            } => json!({"state": "failing", "failures": failures, "reason": reason,
                "retry_in_ms": until.saturating_duration_since(Instant::now()).as_millis() as u64}),
            Health::Quarantined {
                failures,
                until,
                reason,
            } => json!({"state": "quarantined", "failures": failures, "reason": reason,
                "retry_in_ms": until.saturating_duration_since(Instant::now()).as_millis() as u64}),
        };
        let mut costs: Vec<serde_json::Value> = self
            .costs
            .lock()
            .iter()
            .map(|((k, s), c)| {
                json!({"kind": k.name(), "scheme": s.name(),
                    "per_batch_us": (c.per_batch_us * 10.0).round() / 10.0,
                    "per_op_us": (c.per_op_us * 100.0).round() / 100.0,
                    "ops_per_sec": (1e6 / c.per_op_us).round(),
                    "observed_batches": c.observed})
            })
            .collect();
        costs.sort_by_key(|v| (v["kind"].to_string(), v["scheme"].to_string()));
        let (ops, batches) = self.totals();
        // Who verifies each scheme's signatures before release: the backend
        // itself, the engine, or nobody (schemes the rules leave unchecked).
        let checked_by: serde_json::Map<String, serde_json::Value> = self
            .backend
            .capabilities()
            .schemes
            .iter()
            .map(|s| {
                let by = if self.backend.checks_own_results(*s) {
                    "backend"
                } else if check::must_verify(*s, self.backend.needs_check(*s)) {
                    "engine"
                } else {
                    "none"
                };
                (s.name().to_string(), json!(by))
            })
            .collect();
        json!({
            "name": self.name,
            "availability": self.backend.availability(),
            "capabilities": self.backend.capabilities(),
            "checked_by": checked_by,
            "health": health,
            "in_flight_ops": self.in_flight_ops.load(Ordering::Relaxed),
            "queued_us": self.queued_us.load(Ordering::Relaxed),
            "ops": ops,
            "batches": batches,
            "mean_batch": if batches > 0 { ops as f64 / batches as f64 } else { 0.0 },
            "errors": self.counters.errors.load(Ordering::Relaxed),
            "quarantines": self.counters.quarantines.load(Ordering::Relaxed),
            "bad_signatures": self.counters.bad_signatures.load(Ordering::Relaxed),
            "rates": costs,
            "details": self.backend.describe(),
        })
    }
}

impl Inner {
    /// Places a batch: on the backend(s) that finish it first, skipping
    /// `excluded` ones (which already failed it). `last_error` explains a
    /// failure when nothing is left to try.
    pub(crate) fn dispatch(&self, batch: Batch, excluded: Vec<usize>, last_error: Option<String>) {
        let now = Instant::now();
        let (key, scheme, n) = (batch.key.clone(), batch.scheme, batch.inputs.len());
        let slots: Vec<&Arc<Slot>> = self
            .slots
            .iter()
            .filter(|s| !excluded.contains(&s.index) && s.usable(&key, scheme, now))
            .collect();
        if slots.is_empty() {
            let reason = last_error.unwrap_or_else(|| {
                if self.slots.iter().any(|s| s.could_serve(&key, scheme)) {
                    "every backend that could sign it is out of rotation".into()
                } else {
                    "no enabled backend handles this key and scheme".into()
                }
            });
            self.stats.failed.fetch_add(n as u64, Ordering::Relaxed);
            let kind = key.kind();
            batch.fail(|| Error::NoBackend {
                kind,
                scheme,
                reason: reason.clone(),
            });
            return;
        }
        let candidates: Vec<Candidate> = slots
            .iter()
            .map(|s| Candidate {
                queued_us: s.queued_us.load(Ordering::Acquire) as f64,
                cost: s.cost(key.kind(), scheme),
                max_batch: s.backend.capabilities().max_batch,
            })
            .collect();
        let mut rest = batch;
        for (i, count) in plan(n, &candidates) {
            let slot = slots[i];
            let caps = slot.backend.capabilities();
            // A backend runs `parallelism` batches at once: give each of its
            // workers a share rather than one worker the lot, where a share
            // outweighs a batch's fixed cost.
            let parts = candidates[i].cost.parts(count, caps.parallelism);
            let max = caps.max_batch.min(count.div_ceil(parts)).max(1);
            let mut left = count;
            while left > 0 {
                let take = left.min(max);
                let part = split_off_front(&mut rest, take);
                slot.enqueue(part, excluded.clone());
                left -= take;
            }
        }
        debug_assert!(rest.waiters.is_empty());
    }
}

/// Takes the first `k` requests of `b` as a batch of their own.
fn split_off_front(b: &mut Batch, k: usize) -> Batch {
    if k >= b.inputs.len() {
        // The last part (or the whole, when a batch is not cut at all)
        // moves over without copying tens of thousands of elements.
        return Batch {
            key: b.key.clone(),
            scheme: b.scheme,
            inputs: std::mem::take(&mut b.inputs),
            waiters: std::mem::take(&mut b.waiters),
        };
    }
    let inputs: Vec<Vec<u8>> = b.inputs.drain(..k).collect();
    let waiters = b.waiters.drain(..k).collect();
    Batch {
        key: b.key.clone(),
        scheme: b.scheme,
        inputs,
        waiters,
    }
}

pub(crate) fn spawn_workers(inner: &Arc<Inner>, slot: &Arc<Slot>) -> Result<Vec<JoinHandle<()>>> {
    if !slot.available {
        return Ok(Vec::new());
    }
    if let (Some(pool), true) = (slot.backend.executor(), slot.pool_claim.lock().is_some()) {
        // The pool's threads become the workers: each pulls batches in
        // order from the slot's queue, so no batch can be starved by work
        // stealing, and signing and checking stay on one warm thread.
        let (inner, slot) = (inner.clone(), slot.clone());
        pool.spawn_broadcast(move |_| worker_loop(&inner, &slot));
        return Ok(Vec::new());
    }
    (0..slot.workers)
        .map(|i| {
            let inner = inner.clone();
            let slot = slot.clone();
            std::thread::Builder::new()
                .name(format!("sigmux-{}-{i}", slot.name))
                .spawn(move || worker_loop(&inner, &slot))
                .map_err(|e| Error::Invalid(format!("cannot start worker thread: {e}")))
        })
        .collect()
}

fn worker_loop(inner: &Inner, slot: &Slot) {
    while let Ok(Msg::Job(job)) = slot.rx.recv() {
        run_job(inner, slot, job);
        inner.batcher.flush_idle(inner);
    }
}

/// Asks every worker to stop once the jobs ahead of the request are done.
pub(crate) fn stop_workers(inner: &Inner) {
    for slot in &inner.slots {
        for _ in 0..slot.workers {
            let _ = slot.tx.send(Msg::Stop);
        }
        // Loops still finishing their jobs end at the Stop; the next
        // claimant's loops queue behind them on the pool's threads.
        slot.pool_claim.lock().take();
    }
}

fn run_job(inner: &Inner, slot: &Slot, job: Job) {
    let Job {
        batch,
        est_us,
        mut excluded,
        epoch,
    } = job;
    let n_dispatched = batch.inputs.len();
    let batch = drop_expired(inner, batch);
    let n = batch.inputs.len();
    if n == 0 {
        slot.finish_accounting(n_dispatched, est_us);
        return;
    }
    if epoch != slot.failure_epoch.load(Ordering::Acquire) && !slot.healthy_at(Instant::now()) {
        // Queued before the backend failed and still waiting out its
        // back-off: the batch goes elsewhere rather than to a backend just
        // taken out of rotation.
        slot.finish_accounting(n_dispatched, est_us);
        excluded.push(slot.index);
        let why = format!("{}: out of rotation", slot.name);
        inner.dispatch(batch, excluded, Some(why));
        return;
    }
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        slot.backend
            .sign_batch(&batch.key, batch.scheme, &batch.inputs)
    }));
    let elapsed_us = started.elapsed().as_secs_f64() * 1e6;
    slot.finish_accounting(n_dispatched, est_us);
    let failure = match result {
        Ok(Ok(sigs)) if sigs.len() == n => {
            if let Some(c) = slot.costs.lock().get_mut(&(batch.key.kind(), batch.scheme)) {
                c.observe(n, elapsed_us);
            }
            slot.counters.batches.fetch_add(1, Ordering::Relaxed);
            slot.counters.ops.fetch_add(n as u64, Ordering::Relaxed);
            match verify(inner, slot, &batch, &sigs) {
                0 => {
                    slot.mark_ok(epoch);
                    Waiter::answer_all(
                        batch.waiters,
                        sigs.into_iter().map(|bytes| {
                            Ok(Signature {
                                bytes,
                                backend: slot.name,
                            })
                        }),
                    );
                    return;
                }
                bad => {
                    slot.counters
                        .bad_signatures
                        .fetch_add(bad as u64, Ordering::Relaxed);
                    slot.counters.quarantines.fetch_add(1, Ordering::Relaxed);
                    let reason = format!(
                        "returned {bad} signature(s) that failed verification for {}",
                        batch.scheme
                    );
                    slot.mark_failed(reason.clone(), true);
                    reason
                }
            }
        }
        Ok(Ok(sigs)) => {
            slot.counters.quarantines.fetch_add(1, Ordering::Relaxed);
            let reason = format!("returned {} results for a batch of {n}", sigs.len());
            slot.mark_failed(reason.clone(), true);
            reason
        }
        Ok(Err(Error::WrongResult { count, reason, .. })) => {
            // The backend's own check caught wrong results: the same path as
            // when the engine's check catches them.
            slot.counters
                .bad_signatures
                .fetch_add(count as u64, Ordering::Relaxed);
            slot.counters.quarantines.fetch_add(1, Ordering::Relaxed);
            let reason = format!("its own check rejected {count} result(s): {reason}");
            slot.mark_failed(reason.clone(), true);
            reason
        }
        Ok(Err(e)) => {
            slot.counters.errors.fetch_add(1, Ordering::Relaxed);
            let reason = e.to_string();
            // A request-specific problem (bad key material) is not the
            // backend's fault; anything else takes it out of rotation.
            if !matches!(e, Error::SchemeNotValidForKey { .. } | Error::Kek(_)) {
                slot.mark_failed(reason.clone(), false);
            }
            reason
        }
        Err(_) => {
            slot.counters.errors.fetch_add(1, Ordering::Relaxed);
            let reason = format!("backend {} panicked", slot.name);
            slot.mark_failed(reason.clone(), false);
            reason
        }
    };
    excluded.push(slot.index);
    inner.dispatch(batch, excluded, Some(format!("{}: {failure}", slot.name)));
}

/// Answers requests whose deadline has passed and returns the rest.
fn drop_expired(inner: &Inner, batch: Batch) -> Batch {
    let now = Instant::now();
    if batch.waiters.iter().all(|w| w.deadline > now) {
        return batch;
    }
    let Batch {
        key,
        scheme,
        inputs,
        waiters,
    } = batch;
    let mut kept = Batch {
        key,
        scheme,
        inputs: Vec::with_capacity(inputs.len()),
        waiters: Vec::with_capacity(waiters.len()),
    };
    for (i, w) in inputs.into_iter().zip(waiters) {
        if w.deadline > now {
            kept.inputs.push(i);
            kept.waiters.push(w);
        } else {
            inner
                .stats
                .deadline_exceeded
                .fetch_add(1, Ordering::Relaxed);
            w.answer(Err(Error::DeadlineExceeded));
        }
    }
    kept
}

/// Counts the signatures in `sigs` that do not verify, where the rules
/// require checking.
fn verify(inner: &Inner, slot: &Slot, batch: &Batch, sigs: &[Vec<u8>]) -> usize {
    // A backend that checks every signature itself against the public key
    // (and never returns one that fails) already did this check.
    if (slot.backend.checks_own_results(batch.scheme) && !inner.cfg.recheck_self_checked)
        || !check::must_verify(batch.scheme, slot.backend.needs_check(batch.scheme))
    {
        return 0;
    }
    batch
        .inputs
        .iter()
        .zip(sigs)
        .filter(|(input, sig)| !check::verify(&batch.key, batch.scheme, input, sig))
        .count()
}

pub(crate) fn write_slot_metrics(out: &mut String, slots: &[Arc<Slot>]) {
    type Metric = (&'static str, &'static str, &'static str, fn(&Slot) -> f64);
    let metrics: [Metric; 8] = [
        (
            "sigmux_backend_ops_total",
            "counter",
            "Operations signed by the backend.",
            |s| s.counters.ops.load(Ordering::Relaxed) as f64,
        ),
        (
            "sigmux_backend_batches_total",
            "counter",
            "Batches run by the backend.",
            |s| s.counters.batches.load(Ordering::Relaxed) as f64,
        ),
        (
            "sigmux_backend_errors_total",
            "counter",
            "Batches the backend failed.",
            |s| s.counters.errors.load(Ordering::Relaxed) as f64,
        ),
        (
            "sigmux_backend_quarantines_total",
            "counter",
            "Times the backend was quarantined for a wrong result.",
            |s| s.counters.quarantines.load(Ordering::Relaxed) as f64,
        ),
        (
            "sigmux_backend_bad_signatures_total",
            "counter",
            "Signatures from the backend that failed verification (never released).",
            |s| s.counters.bad_signatures.load(Ordering::Relaxed) as f64,
        ),
        (
            "sigmux_backend_in_flight_ops",
            "gauge",
            "Operations dispatched to the backend and not finished.",
            |s| s.in_flight_ops.load(Ordering::Relaxed) as f64,
        ),
        (
            "sigmux_backend_mean_batch",
            "gauge",
            "Mean batch size since start.",
            |s| {
                let (ops, b) = s.totals();
                if b == 0 { 0.0 } else { ops as f64 / b as f64 }
            },
        ),
        (
            "sigmux_backend_healthy",
            "gauge",
            "1 when the backend is available and healthy; 0 when unavailable, \
             failing or quarantined (also on trial after a back-off, until a batch succeeds), \
             as /healthz reports it.",
            |s| (s.available && matches!(*s.health.lock(), Health::Healthy)) as u8 as f64,
        ),
    ];
    for (name, kind, help, get) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in slots {
            let _ = writeln!(out, "{name}{{backend=\"{}\"}} {}", s.name, get(s));
        }
    }
}
