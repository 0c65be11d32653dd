//! One queue per (key, scheme). A queue flushes when it reaches
//! `max_batch`, when its oldest request has waited `max_wait`, or at once
//! when a backend that can take it has idle capacity: batching is for when
//! backends are busy, never a reason to keep one idle.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Batch, Inner, Waiter};
use crate::keys::{Key, KeyId};
use crate::scheme::Scheme;

struct Queue {
    batch: Batch,
    oldest: Instant,
}

/// Hashes a queue's (key, scheme): a `KeyId` is already a SHA-256, so
/// folding its words is enough, and cheaper than SipHash on every request.
#[derive(Default)]
struct QueueHasher(u64);

impl Hasher for QueueHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

type Queues = HashMap<(KeyId, Scheme), Queue, BuildHasherDefault<QueueHasher>>;

/// The per-(key, scheme) queues and the wake-up for time-based flushes.
#[derive(Default)]
pub(crate) struct Batcher {
    queues: Mutex<Queues>,
    wake: Condvar,
    /// Requests sitting in queues (not yet dispatched).
    queued: AtomicUsize,
    /// The flusher is asleep with no deadline armed. Only then does a new
    /// queue need to wake it: a queue made later falls due later than the
    /// one the flusher is already waiting for.
    flusher_idle: AtomicBool,
}

impl Batcher {
    /// Adds requests (one, or a group) for one key and scheme, submitted at
    /// `now`; may dispatch batches on the caller's thread.
    pub(crate) fn push(
        &self,
        inner: &Inner,
        now: Instant,
        key: Arc<Key>,
        scheme: Scheme,
        inputs: Vec<Vec<u8>>,
        waiters: Vec<Waiter>,
    ) {
        let k = (key.id(), scheme);
        let mut queues = self.queues.lock();
        let q = queues.entry(k).or_insert_with(|| Queue {
            batch: Batch {
                key: key.clone(),
                scheme,
                inputs: Vec::new(),
                waiters: Vec::new(),
            },
            oldest: now,
        });
        let first = q.batch.waiters.is_empty();
        self.queued.fetch_add(waiters.len(), Ordering::AcqRel);
        if first {
            // A group that arrives at an empty queue is moved in, not
            // copied: a group of exactly max_batch then becomes its batch
            // without a single element moved.
            q.oldest = now;
            q.batch.inputs = inputs;
            q.batch.waiters = waiters;
        } else {
            q.batch.inputs.extend(inputs);
            q.batch.waiters.extend(waiters);
        }
        let max = inner.cfg.max_batch;
        // Full batches go at once; what is left waits unless a backend is
        // idle.
        let mut ready = Vec::new();
        let inputs = cut_full(&mut q.batch.inputs, max);
        let waiters = cut_full(&mut q.batch.waiters, max);
        if !waiters.is_empty() {
            self.queued.fetch_sub(waiters.len() * max, Ordering::AcqRel);
            q.oldest = now;
        }
        for (inputs, waiters) in inputs.into_iter().zip(waiters) {
            ready.push(Batch {
                key: key.clone(),
                scheme,
                inputs,
                waiters,
            });
        }
        let rest_empty = q.batch.waiters.is_empty();
        if rest_empty {
            queues.remove(&k);
        } else if inner.has_idle_capacity(&key, scheme) {
            ready.extend(self.take(&mut queues, k));
        } else if (first || !ready.is_empty()) && self.flusher_idle.load(Ordering::Acquire) {
            drop(queues);
            self.wake.notify_one();
            for b in ready {
                inner.dispatch(b, Vec::new(), None);
            }
            return;
        }
        drop(queues);
        for b in ready {
            inner.dispatch(b, Vec::new(), None);
        }
    }

    fn take(&self, queues: &mut Queues, k: (KeyId, Scheme)) -> Option<Batch> {
        let q = queues.remove(&k)?;
        self.queued
            .fetch_sub(q.batch.waiters.len(), Ordering::AcqRel);
        Some(q.batch)
    }

    /// Requests waiting in queues.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Wakes the flusher (shutdown).
    pub(crate) fn wake(&self) {
        self.wake.notify_all();
    }

    /// Dispatches every queue a backend has idle capacity for; called by
    /// workers when they finish a batch.
    pub(crate) fn flush_idle(&self, inner: &Inner) {
        if self.queued() == 0 {
            return;
        }
        let ready = self.collect(inner, Instant::now(), false).0;
        for b in ready {
            inner.dispatch(b, Vec::new(), None);
        }
    }

    /// Takes the queues that are due (waited `max_wait`, or a backend is
    /// idle, or everything when `all`), and says when the next one falls due.
    fn collect(&self, inner: &Inner, now: Instant, all: bool) -> (Vec<Batch>, Option<Instant>) {
        let mut queues = self.queues.lock();
        let max_wait = inner.cfg.max_wait;
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (k, q) in queues.iter() {
            let at = q.oldest + max_wait;
            if all || at <= now || inner.has_idle_capacity(&q.batch.key, q.batch.scheme) {
                due.push(*k);
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        let batches = due
            .into_iter()
            .filter_map(|k| self.take(&mut queues, k))
            .collect();
        (batches, next)
    }
}

/// The flusher thread: dispatches queues whose oldest request has waited
/// `max_wait`; on shutdown, dispatches everything and stops the workers.
/// The full batches of `max` at the front of `v`, in order, leaving the
/// rest in `v`. Linear in `v`'s length: cutting one batch at a time from
/// the front would move the whole remainder each time, quadratic for a
/// large group in small batches (65,536 in batches of 64: about 2.6 GB
/// moved). The first batch keeps `v`'s allocation.
fn cut_full<T>(v: &mut Vec<T>, max: usize) -> Vec<Vec<T>> {
    let full = v.len() / max.max(1);
    if full == 0 {
        return Vec::new();
    }
    let rest = v.split_off(full * max);
    let mut head = std::mem::replace(v, rest);
    let mut out = Vec::with_capacity(full);
    for c in (1..full).rev() {
        out.push(head.split_off(c * max));
    }
    out.push(head);
    out.reverse();
    out
}

pub(crate) fn run_flusher(inner: &Arc<Inner>) {
    loop {
        let stopping = inner.stopping.load(Ordering::Acquire);
        let (batches, next) = inner.batcher.collect(inner, Instant::now(), stopping);
        for b in batches {
            inner.dispatch(b, Vec::new(), None);
        }
        if stopping {
            break;
        }
        let mut queues = inner.batcher.queues.lock();
        if inner.stopping.load(Ordering::Acquire) {
            continue;
        }
        // Re-check under the lock: a push that happened after `collect`
        // would have notified before we started waiting.
        let next = next.or_else(|| queues.values().map(|q| q.oldest + inner.cfg.max_wait).min());
        match next {
            Some(at) => {
                let _ = inner.batcher.wake.wait_until(&mut queues, at);
            }
            None => {
                inner.batcher.flusher_idle.store(true, Ordering::Release);
                let _ = inner
                    .batcher
                    .wake
                    .wait_for(&mut queues, Duration::from_millis(250));
                inner.batcher.flusher_idle.store(false, Ordering::Release);
            }
        }
    }
    super::dispatch::stop_workers(inner);
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn full_batches_are_cut_in_order_and_the_rest_stays() {
        for (len, max) in [
            (0, 4),
            (3, 4),
            (4, 4),
            (9, 4),
            (64, 1),
            (1000, 64),
            (65_536, 65_536),
        ] {
            let mut v: Vec<usize> = (0..len).collect();
            let ptr = v.as_ptr();
            let cut = cut_full(&mut v, max);
            assert_eq!(cut.len(), len / max, "{len} in batches of {max}");
            assert!(cut.iter().all(|b| b.len() == max));
            let joined: Vec<usize> = cut
                .iter()
                .flatten()
                .copied()
                .chain(v.iter().copied())
                .collect();
            assert_eq!(
                joined,
                (0..len).collect::<Vec<_>>(),
                "{len} in batches of {max}"
            );
            if let Some(first) = cut.first() {
                assert_eq!(first.as_ptr(), ptr, "the first batch keeps the allocation");
            }
        }
    }

    #[test]
    fn queue_hasher_separates_keys_and_schemes() {
        let b = BuildHasherDefault::<QueueHasher>::default();
        let h = |id: u8, s: Scheme| b.hash_one((KeyId([id; 32]), s));
        let all: Vec<u64> = (0..=255u8)
            .flat_map(|id| Scheme::all().iter().map(move |s| (id, *s)))
            .map(|(id, s)| h(id, s))
            .collect();
        let mut uniq = all.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(
            uniq.len(),
            all.len(),
            "collisions among {} queues",
            all.len()
        );
        assert_eq!(
            h(7, Scheme::Ed25519),
            h(7, Scheme::Ed25519),
            "the same queue hashes alike"
        );
    }
}
