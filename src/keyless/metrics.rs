//! Keyless server metrics, rendered in the Prometheus text format beside
//! the engine's: requests by opcode and result, latency by opcode,
//! connections, requests in flight and authorization refusals.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Histogram bucket bounds in seconds: 25 µs to 2 s.
const BUCKETS: [f64; 16] = [
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    500e-3, 1.0, 2.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

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
}

impl KeylessMetrics {
    /// Records one answered request.
    pub fn observe(&self, op: &'static str, result: &'static str, took: Duration) {
        *self.requests.lock().entry((op, result)).or_default() += 1;
        let secs = took.as_secs_f64();
        let mut lat = self.latency.lock();
        let h = lat.entry(op).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
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
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "sigmux_keyless_request_seconds_bucket{{op=\"{op}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "sigmux_keyless_request_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}\nsigmux_keyless_request_seconds_sum{{op=\"{op}\"}} {}\nsigmux_keyless_request_seconds_count{{op=\"{op}\"}} {}",
                h.count, h.sum, h.count
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
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
}
