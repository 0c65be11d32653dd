//! How many refusals one caller may write to the audit log in full.
//!
//! Any holder of a caller certificate can have requests refused at will,
//! and each refusal recorded in full is an fsync'd line of up to ~2 KiB.
//! So each caller gets a budget of full records per window; past it, its
//! refusals are only counted, and one `refusals_summarized` record per
//! caller and window says how many there were and with which codes. Issued
//! SVIDs are never summarized: every one keeps its own record.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};

/// The audit event of a summary record.
pub const SUMMARY_EVENT: &str = "refusals_summarized";

/// Full refusal records per caller and window, and the counts past them.
pub struct RefusalBudget {
    per_window: u64,
    window: Duration,
    callers: Mutex<HashMap<String, CallerWindow>>,
}

/// One caller's current window.
struct CallerWindow {
    started: Instant,
    started_unix: u64,
    recorded: u64,
    /// Refusals past the budget, by error code.
    held_back: BTreeMap<String, u64>,
}

impl CallerWindow {
    fn new(now: Instant) -> CallerWindow {
        CallerWindow {
            started: now,
            started_unix: unix_now(),
            recorded: 0,
            held_back: BTreeMap::new(),
        }
    }

    /// The summary of what was held back, if anything was.
    fn summary(&self, caller: &str) -> Option<Value> {
        let held_back: u64 = self.held_back.values().sum();
        (held_back > 0).then(|| {
            json!({
                "caller": caller,
                "from": self.started_unix,
                "to": unix_now(),
                "recorded": self.recorded,
                "held_back": held_back,
                "codes": self.held_back,
            })
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RefusalBudget {
    /// A budget of `per_window` full records per caller in each `window`.
    #[must_use]
    pub fn new(per_window: u64, window: Duration) -> RefusalBudget {
        RefusalBudget {
            per_window,
            window,
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `caller`'s refusal with `code` is recorded in full; if not,
    /// it is counted for the caller's summary. Also returns the summary of
    /// the caller's previous window when this refusal starts a new one.
    pub fn admit(&self, caller: &str, code: &str, now: Instant) -> (bool, Option<Value>) {
        let mut callers = self.callers.lock();
        let mut ended = None;
        let w = match callers.get_mut(caller) {
            Some(w) if now.duration_since(w.started) < self.window => w,
            Some(w) => {
                ended = w.summary(caller);
                *w = CallerWindow::new(now);
                w
            }
            None => callers
                .entry(caller.to_owned())
                .or_insert_with(|| CallerWindow::new(now)),
        };
        if w.recorded < self.per_window {
            w.recorded += 1;
            (true, ended)
        } else {
            *w.held_back.entry(code.to_owned()).or_insert(0) += 1;
            (false, ended)
        }
    }

    /// Takes the summaries of windows that have ended (all windows when
    /// `all`, as at shutdown) and forgets those windows.
    pub fn take_ended(&self, now: Instant, all: bool) -> Vec<Value> {
        let mut callers = self.callers.lock();
        let mut out = Vec::new();
        callers.retain(|caller, w| {
            if all || now.duration_since(w.started) >= self.window {
                out.extend(w.summary(caller));
                false
            } else {
                true
            }
        });
        out
    }

    /// The length of a window.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_budget_refusals_are_counted_by_code_and_summarized_once() {
        let b = RefusalBudget::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(b.admit("a", "bad_csr", t0), (true, None));
        assert_eq!(b.admit("a", "bad_csr", t0), (true, None));
        assert_eq!(b.admit("a", "bad_csr", t0), (false, None));
        assert_eq!(b.admit("a", "forbidden", t0), (false, None));
        assert_eq!(b.admit("a", "forbidden", t0), (false, None));
        // Another caller has a budget of its own.
        assert_eq!(b.admit("b", "forbidden", t0), (true, None));
        // Nothing has ended yet.
        assert!(b.take_ended(t0 + Duration::from_secs(59), false).is_empty());
        // A's next refusal, a window later, is recorded and brings the
        // summary of the window before.
        let (full, ended) = b.admit("a", "bad_csr", t0 + Duration::from_secs(60));
        assert!(full);
        let s = ended.expect("a summary of the ended window");
        assert_eq!(s["caller"], "a");
        assert_eq!(s["recorded"], 2);
        assert_eq!(s["held_back"], 3);
        assert_eq!(s["codes"], json!({ "bad_csr": 1, "forbidden": 2 }));
        // B held nothing back: its ended window needs no summary.
        assert!(b.take_ended(t0 + Duration::from_secs(61), false).is_empty());
        // At shutdown, the current windows are summarized too.
        b.admit("a", "x", t0 + Duration::from_secs(60));
        b.admit("a", "x", t0 + Duration::from_secs(60));
        let all = b.take_ended(t0 + Duration::from_secs(61), true);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["codes"], json!({ "x": 1 }));
        assert!(b.take_ended(t0 + Duration::from_secs(61), true).is_empty());
    }
}
