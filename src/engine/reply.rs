//! How answers get back to callers: a [`Ticket`] per request, or one
//! [`GroupTicket`] for a group submitted together (one wake-up for the
//! whole group instead of one per signature). Every accepted request is
//! answered exactly once; a waiter dropped unanswered answers
//! `ShuttingDown` on its way out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::Signature;
use crate::error::{Error, Result};

/// The pending answer to one request: await it, or [`Ticket::wait`] from
/// synchronous code.
pub struct Ticket {
    rx: oneshot::Receiver<Result<Signature>>,
}

impl Ticket {
    /// Blocks until the answer arrives. Must not be called from inside an
    /// async runtime; await the ticket there instead.
    pub fn wait(self) -> Result<Signature> {
        self.rx.blocking_recv().unwrap_or(Err(Error::ShuttingDown))
    }
}

impl Future for Ticket {
    type Output = Result<Signature>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::ShuttingDown)))
    }
}

/// The pending answers to a group of requests, in submission order.
pub struct GroupTicket {
    rx: oneshot::Receiver<Vec<Result<Signature>>>,
    len: usize,
}

impl GroupTicket {
    /// Blocks until every answer is in (not from inside an async runtime).
    pub fn wait(self) -> Vec<Result<Signature>> {
        let len = self.len;
        self.rx
            .blocking_recv()
            .unwrap_or_else(|_| (0..len).map(|_| Err(Error::ShuttingDown)).collect())
    }
}

impl Future for GroupTicket {
    type Output = Vec<Result<Signature>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let len = self.len;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| (0..len).map(|_| Err(Error::ShuttingDown)).collect()))
    }
}

/// Counts a request against the engine's queue capacity until answered.
pub(crate) struct Admission(Arc<AtomicUsize>, usize);

impl Admission {
    /// Admits `n` requests unless that would pass `capacity`.
    pub(crate) fn admit(counter: &Arc<AtomicUsize>, n: usize, capacity: usize) -> Option<()> {
        let before = counter.fetch_add(n, Ordering::AcqRel);
        if before + n > capacity {
            counter.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(())
    }

    /// One admitted request's share (the count was added by `admit`).
    pub(crate) fn share(counter: &Arc<AtomicUsize>) -> Admission {
        Admission(counter.clone(), 1)
    }

    /// A whole group's `n` shares, given back together when its last
    /// answer is in (the caller receives the answers only then, so nothing
    /// is held longer than the caller waits). One count for the group
    /// instead of one per member keeps the shared counter's cache line out
    /// of every answer's path.
    pub(crate) fn share_n(counter: &Arc<AtomicUsize>, n: usize) -> Admission {
        Admission(counter.clone(), n)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// The answers of a group, filled in as batches finish.
struct Group {
    /// Every member's answer, `ShuttingDown` until its own arrives, so
    /// the finished vector is sent as it is.
    slots: Mutex<Vec<Result<Signature>>>,
    left: AtomicUsize,
    tx: Mutex<Option<oneshot::Sender<Vec<Result<Signature>>>>>,
    /// The members' queue capacity, released before the answers are sent.
    admission: Mutex<Option<Admission>>,
}

impl Group {
    /// Counts `k` more answers recorded; the call that counts the last
    /// one sends the group's answers.
    fn recorded(&self, k: usize) {
        if k > 0 && self.left.fetch_sub(k, Ordering::AcqRel) == k {
            let all = std::mem::take(&mut *self.slots.lock());
            drop(self.admission.lock().take());
            if let Some(tx) = self.tx.lock().take() {
                let _ = tx.send(all);
            }
        }
    }
}

/// A function that receives one answer, on the engine's worker thread.
pub type Callback = Box<dyn FnOnce(Result<Signature>) + Send>;

enum Reply {
    One(oneshot::Sender<Result<Signature>>),
    Member(Arc<Group>, usize),
    Call(Callback),
}

/// Where one request's answer goes.
pub(crate) struct Waiter {
    reply: Option<Reply>,
    pub(crate) deadline: Instant,
    admission: Option<Admission>,
}

impl Waiter {
    /// A waiter for a lone request and its ticket.
    pub(crate) fn one(deadline: Instant, admission: Admission) -> (Waiter, Ticket) {
        let (tx, rx) = oneshot::channel();
        (
            Waiter {
                reply: Some(Reply::One(tx)),
                deadline,
                admission: Some(admission),
            },
            Ticket { rx },
        )
    }

    /// A waiter that hands the answer to `f`.
    pub(crate) fn call(deadline: Instant, admission: Admission, f: Callback) -> Waiter {
        Waiter {
            reply: Some(Reply::Call(f)),
            deadline,
            admission: Some(admission),
        }
    }

    /// Waiters for a group of `admissions.len()` requests and its ticket.
    pub(crate) fn group(
        deadline: Instant,
        n: usize,
        admission: Admission,
    ) -> (Vec<Waiter>, GroupTicket) {
        let (tx, rx) = oneshot::channel();
        let group = Arc::new(Group {
            slots: Mutex::new((0..n).map(|_| Err(Error::ShuttingDown)).collect()),
            left: AtomicUsize::new(n),
            tx: Mutex::new(Some(tx)),
            admission: Mutex::new(Some(admission)),
        });
        let waiters = (0..n)
            .map(|i| Waiter {
                reply: Some(Reply::Member(group.clone(), i)),
                deadline,
                admission: None,
            })
            .collect();
        (waiters, GroupTicket { rx, len: n })
    }

    /// Answers `waiters` with `results`, in order. Consecutive members of
    /// one group (a batch cut from a group holds long runs of them) are
    /// recorded under one lock and one count, instead of one each.
    pub(crate) fn answer_all(
        waiters: Vec<Waiter>,
        results: impl IntoIterator<Item = Result<Signature>>,
    ) {
        let mut it = waiters.into_iter().zip(results).peekable();
        while let Some((mut w, result)) = it.next() {
            match w.reply.take() {
                Some(Reply::Member(group, i)) => {
                    let mut k = 1;
                    {
                        let mut slots = group.slots.lock();
                        slots[i] = result;
                        // The rest of this group's run, under the same lock.
                        while let Some((next, _)) = it.peek() {
                            match &next.reply {
                                Some(Reply::Member(g, _)) if Arc::ptr_eq(g, &group) => {}
                                _ => break,
                            }
                            let Some((mut next, r)) = it.next() else {
                                break;
                            };
                            if let Some(Reply::Member(_, j)) = next.reply.take() {
                                slots[j] = r;
                                k += 1;
                            }
                        }
                    }
                    group.recorded(k);
                }
                other => {
                    w.reply = other;
                    w.answer(result);
                }
            }
        }
    }

    pub(crate) fn answer(mut self, result: Result<Signature>) {
        self.deliver(result);
    }

    fn deliver(&mut self, result: Result<Signature>) {
        // Free the capacity first, so a caller that submits again as soon
        // as it has its answer finds it.
        drop(self.admission.take());
        match self.reply.take() {
            // The caller may have stopped waiting; that is their choice.
            Some(Reply::One(tx)) => {
                let _ = tx.send(result);
            }
            Some(Reply::Member(group, i)) => {
                group.slots.lock()[i] = result;
                group.recorded(1);
            }
            Some(Reply::Call(f)) => f(result),
            None => {}
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.reply.is_some() {
            self.deliver(Err(Error::ShuttingDown));
        }
    }
}
