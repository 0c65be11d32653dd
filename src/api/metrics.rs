//! Issuance listener metrics, rendered in the Prometheus text format beside
//! the engine's: SVIDs issued by kind, refusals by error code, batch
//! duration, connections, and the CA's own clock (when each CA certificate
//! expires), which is what an operator alerts on before a rotation that did
//! not happen turns into an outage.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::ca::authority::CaState;
use crate::metrics::{Histogram, header, label_value, single};

/// Batch duration bucket bounds in seconds: 1 ms to 60 s.
const BATCH_BUCKETS: [f64; 12] = [
    1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 5.0, 15.0, 60.0,
];

/// Counters of one issuance listener.
pub struct IssuanceMetrics {
    issued: Mutex<BTreeMap<&'static str, u64>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    batch_seconds: Mutex<Histogram>,
    /// Open connections, TLS handshakes included.
    pub connections: AtomicI64,
    /// TCP connections closed at once because `max_connections` were open.
    pub connections_rejected: AtomicU64,
    /// Refusals counted in a summary record instead of recorded in full
    /// (`max_refusal_records_per_minute`).
    pub refusal_records_held_back: AtomicU64,
}

impl Default for IssuanceMetrics {
    fn default() -> Self {
        IssuanceMetrics {
            issued: Mutex::default(),
            refused: Mutex::default(),
            batch_seconds: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            connections: AtomicI64::new(0),
            connections_rejected: AtomicU64::new(0),
            refusal_records_held_back: AtomicU64::new(0),
        }
    }
}

/// Counts one open connection in [`IssuanceMetrics::connections`] until
/// dropped.
pub struct OpenConnection(Arc<IssuanceMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl IssuanceMetrics {
    /// Counts a connection as open until the returned guard is dropped.
    #[must_use]
    pub fn open(self: &Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts `n` SVIDs of `kind` (`x509` or `jwt`) issued.
    pub fn issued(&self, kind: &'static str, n: u64) {
        if n > 0 {
            *self.issued.lock().entry(kind).or_default() += n;
        }
    }

    /// Counts one refusal (a whole request or one batch item) with `code`.
    pub fn refused(&self, code: &'static str) {
        *self.refused.lock().entry(code).or_default() += 1;
    }

    /// Records how long one X.509-SVID batch took, from its body in to
    /// its answer ready.
    pub fn batch(&self, took: Duration) {
        self.batch_seconds.lock().observe(took.as_secs_f64());
    }

    /// Appends the metrics to `out`: the listener's counters, the CRLs
    /// signed so far, and from `ca` (when the CA state could be read) the
    /// expiry of its certificates.
    pub fn render(&self, out: &mut String, crls_signed: u64, ca: Option<&CaState>) {
        header(
            out,
            "sigmux_issuance_svids_issued_total",
            "counter",
            "SVIDs issued, by kind (x509, jwt).",
        );
        for (kind, n) in self.issued.lock().iter() {
            let _ = writeln!(
                out,
                "sigmux_issuance_svids_issued_total{{kind=\"{kind}\"}} {n}"
            );
        }
        header(
            out,
            "sigmux_issuance_refused_total",
            "counter",
            "Requests and batch items refused, by error code.",
        );
        for (code, n) in self.refused.lock().iter() {
            let _ = writeln!(out, "sigmux_issuance_refused_total{{code=\"{code}\"}} {n}");
        }
        header(
            out,
            "sigmux_issuance_batch_seconds",
            "histogram",
            "Time to work an X.509-SVID batch, from its body read to its answer ready.",
        );
        self.batch_seconds
            .lock()
            .render(out, "sigmux_issuance_batch_seconds", "");
        let counters = [
            (
                "sigmux_issuance_connections",
                "gauge",
                "Open issuance connections, TLS handshakes included.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "sigmux_issuance_connections_rejected_total",
                "counter",
                "Issuance TCP connections closed at once because max_connections were open.",
                self.connections_rejected.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_issuance_refusal_records_held_back_total",
                "counter",
                "Refusals counted in a refusals_summarized audit record instead of one record each.",
                self.refusal_records_held_back.load(Ordering::Relaxed) as i64,
            ),
            (
                "sigmux_issuance_crls_signed_total",
                "counter",
                "CRLs signed (the others were served from the cache).",
                crls_signed as i64,
            ),
        ];
        for (name, kind, help, v) in counters {
            single(out, name, kind, help, v);
        }
        if let Some(st) = ca {
            render_ca(out, st);
        }
    }
}

/// The CA's certificates' expiry and its revocation list's length.
fn render_ca(out: &mut String, st: &CaState) {
    single(
        out,
        "sigmux_ca_root_not_after_timestamp_seconds",
        "gauge",
        "When the root CA certificate expires (Unix seconds).",
        st.root.not_after,
    );
    header(
        out,
        "sigmux_ca_intermediate_not_after_timestamp_seconds",
        "gauge",
        "When each intermediate CA certificate expires (Unix seconds), by serial and status.",
    );
    for i in &st.intermediates {
        let status = serde_json::to_value(i.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "sigmux_ca_intermediate_not_after_timestamp_seconds{{serial=\"{}\",status=\"{status}\"}} {}",
            label_value(&i.serial),
            i.not_after
        );
    }
    single(
        out,
        "sigmux_ca_revoked_svids",
        "gauge",
        "SVID serials on the revocation list.",
        st.revoked.len(),
    );
    single(
        out,
        "sigmux_ca_bundle_sequence",
        "gauge",
        "The trust bundle's spiffe_sequence.",
        st.bundle_sequence,
    );
}
