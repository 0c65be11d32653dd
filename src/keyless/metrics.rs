//! Keyless server metrics, rendered in the Prometheus text format beside
//! the engine's: requests by opcode and result, latency by opcode,
//! connections, requests in flight and authorization refusals, and the
//! limits that protect the listener from its clients. Also [`LogThrottle`],
//! which keeps events a client can cause at will from flooding the log.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::Histogram;

/// Histogram bucket bounds in seconds: 25 µs to 2 s.
const BUCKETS: [f64; 16] = [
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    500e-3, 1.0, 2.0,
];

/// Counters of one keyless listener.
#[derive(Default)]
pub struct KeylessMetrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Open connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// TLS handshakes that failed (no or bad client certificate, ...).
    pub handshake_failures: AtomicU64,
    /// Requests read and not yet answered.
    pub in_flight: AtomicI64,
    /// Requests refused because the client may not use the key.
    pub refused: AtomicU64,
    /// TCP connections closed at once because `max_connections` were open.
    pub connections_rejected: AtomicU64,
    /// Connections closed because the client did not take its answers
    /// within `write_timeout_seconds`.
    pub write_timeouts: AtomicU64,
    /// Connections closed after `idle_timeout_seconds` without a request.
    pub idle_closed: AtomicU64,
    /// Connections closed because no `[[keyless.clients]]` rule names their
    /// client: right after the handshake, or at the SIGHUP that removed
    /// its rule.
    pub unknown_client_closed: AtomicU64,
    /// Bytes charged against the per-connection budgets (requests read and
    /// their answers, until the answer is written).
    pub bytes_in_flight: AtomicI64,
}

impl KeylessMetrics {
    /// Records one answered request.
    pub fn observe(&self, op: &'static str, result: &'static str, took: Duration) {
        *self.requests.lock().entry((op, result)).or_default() += 1;
        self.latency
            .lock()
            .entry(op)
            .or_insert_with(|| Histogram::new(&BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// Appends the metrics to `out`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sigmux_keyless_requests_total Keyless requests answered, by opcode and result.\n# TYPE sigmux_keyless_requests_total counter"
        );
        for ((op, result), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "sigmux_keyless_requests_total{{op=\"{op}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sigmux_keyless_request_seconds Time from reading a request to queueing its answer.\n# TYPE sigmux_keyless_request_seconds histogram"
        );
        for (op, h) in self.latency.lock().iter() {
            h.render(
                out,
                "sigmux_keyless_request_seconds",
                &format!("op=\"{op}\","),
            );
        }
        let gauges = [
            (
                "sigmux_keyless_connections",
                "gauge",
                "Open keyless connections.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "sigmux_keyless_in_flight",
                "gauge",
                "Keyless requests read and not yet answered.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "sigmux_keyless_connections_total",
                "counter",
                "Keyless connections accepted.",
                self.connections_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_keyless_handshake_failures_total",
                "counter",
                "Keyless TLS handshakes that failed.",
                self.handshake_failures.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_keyless_refused_total",
                "counter",
                "Requests for a key the client may not use.",
                self.refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_keyless_bytes_in_flight",
                "gauge",
                "Bytes of keyless requests and answers held until the answer is written.",
                self.bytes_in_flight.load(Ordering::Relaxed),
            ),
            (
                "sigmux_keyless_connections_rejected_total",
                "counter",
                "Keyless TCP connections closed at once because max_connections were open.",
                self.connections_rejected.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_keyless_write_timeouts_total",
                "counter",
                "Keyless connections closed because the client did not read its answers in time.",
                self.write_timeouts.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_keyless_idle_closed_total",
                "counter",
                "Keyless connections closed after the idle timeout.",
                self.idle_closed.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_keyless_unknown_client_closed_total",
                "counter",
                "Keyless connections closed because no [[keyless.clients]] rule names the client (after the handshake, or at the SIGHUP that removed its rule).",
                self.unknown_client_closed.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, v) in gauges {
            crate::metrics::single(out, name, kind, help, v);
        }
    }
}

/// Lets one log line through per interval and counts the ones it held back,
/// for events a client can repeat at will (refusals, failed handshakes):
/// each is still counted in a metric and logged at `debug`.
pub struct LogThrottle {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl LogThrottle {
    /// A throttle that lets one line through every `every`.
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: Mutex::new(None),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// held back since the last one; `None` (and one more held back)
    /// otherwise.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        match *last {
            Some(t) if now.duration_since(t) < self.every => {
                self.held_back.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.held_back.swap(0, Ordering::Relaxed))
            }
        }
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        let t0 = LogThrottle::new(Duration::ZERO);
        assert_eq!(t0.allow(), Some(0));
        assert_eq!(t0.allow(), Some(0));
        // Held-back lines are reported with the next line let through.
        *t.last.lock() = None;
        assert_eq!(t.allow(), Some(2));
    }
}
