//! `sigmux bench --target https://HOST:PORT` against the issuance API:
//! end-to-end X.509-SVIDs per second from CSRs, beside the raw-crypto bound
//! measured in the same run on the same cores (CSR verification plus the CA
//! signature, straight through the library).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509ReqBuilder;

use crate::api::client::{ApiClient, ServerUrl};
use crate::backend::cpu::{CpuBackend, CpuKey};
use crate::bench::{BenchOptions, BenchReport, device_description};
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::scheme::{KeyKind, Scheme, SignInput};

/// An issuance API to load.
#[derive(Clone, Debug)]
pub struct IssueTarget {
    /// `https://host:port`.
    pub url: String,
    /// CA certificates for the server (PEM file).
    pub ca: std::path::PathBuf,
    /// Caller certificate (PEM file).
    pub cert: std::path::PathBuf,
    /// Caller key (PEM file).
    pub key: std::path::PathBuf,
    /// Kind of the workload keys in the CSRs.
    pub csr_kind: KeyKind,
    /// Kind of the server's intermediate (for the raw bound).
    pub ca_kind: KeyKind,
    /// SPIFFE ID prefix the caller may request, e.g. `spiffe://td/bench`.
    pub id_prefix: String,
}

/// The report's `driver` for an issuance run.
pub const DRIVER: &str = "issuance-api";

/// How many distinct CSRs are cycled through.
const CSR_POOL: usize = 64;

fn make_key(kind: KeyKind) -> Result<PKey<Private>> {
    let e = |err: openssl::error::ErrorStack| Error::Invalid(format!("key generation: {err}"));
    Ok(match kind {
        KeyKind::Rsa2048 | KeyKind::Rsa3072 | KeyKind::Rsa4096 => {
            PKey::from_rsa(openssl::rsa::Rsa::generate(kind.rsa_bits().unwrap_or(2048)).map_err(e)?)
                .map_err(e)?
        }
        KeyKind::P256 | KeyKind::P384 => {
            let nid = if kind == KeyKind::P256 {
                openssl::nid::Nid::X9_62_PRIME256V1
            } else {
                openssl::nid::Nid::SECP384R1
            };
            let group = openssl::ec::EcGroup::from_curve_name(nid).map_err(e)?;
            PKey::from_ec_key(openssl::ec::EcKey::generate(&group).map_err(e)?).map_err(e)?
        }
        KeyKind::Ed25519 => PKey::generate_ed25519().map_err(e)?,
    })
}

/// A CSR (PEM) for a fresh key of `kind`, as `openssl req` would make it.
fn make_csr(kind: KeyKind) -> Result<String> {
    let e = |err: openssl::error::ErrorStack| Error::Invalid(format!("CSR: {err}"));
    let key = make_key(kind)?;
    let mut b = X509ReqBuilder::new().map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    let md = if kind == KeyKind::Ed25519 {
        MessageDigest::null()
    } else {
        MessageDigest::sha256()
    };
    b.sign(&key, md).map_err(e)?;
    let pem = b.build().to_pem().map_err(e)?;
    String::from_utf8(pem).map_err(|_| Error::Invalid("CSR PEM is not UTF-8".into()))
}

/// Runs the benchmark: `opts.concurrency` requests in flight, each a batch
/// of `opts.batch` items (500 by default). The caller
/// ([`crate::bench::run`]) has refused the options this run does not use.
///
/// # Errors
///
/// [`Error::Invalid`] for a bad target or a run that cannot start.
pub fn run(
    t: &IssueTarget,
    opts: &BenchOptions,
    cpu: Option<Arc<CpuBackend>>,
) -> Result<BenchReport> {
    let batch = opts.batch.unwrap_or(500);
    if batch == 0 || opts.concurrency == 0 {
        return Err(Error::Invalid(
            "--batch and --concurrency must be at least 1".into(),
        ));
    }
    crate::bench::check_issue_target(&t.url)?;
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..CSR_POOL)
            .map(|_| make_csr(t.csr_kind))
            .collect::<Result<_>>()?,
    );
    // Each item up to its SPIFFE ID value: {"csr":"...","ttl_seconds":3600,"spiffe_id":
    let items: Arc<Vec<Vec<u8>>> = Arc::new(
        csrs.iter()
            .map(|c| {
                let mut item = b"{\"csr\":".to_vec();
                serde_json::to_writer(&mut item, c).unwrap_or_default();
                item.extend_from_slice(b",\"ttl_seconds\":3600,\"spiffe_id\":");
                item
            })
            .collect(),
    );
    let client = Arc::new(ApiClient::new(
        ServerUrl::parse(&t.url)?,
        &t.ca,
        &t.cert,
        &t.key,
    )?);
    // The raw bound: verify a CSR and make the CA's signature over a
    // TBSCertificate-sized message, on the CPU backend's threads.
    let ca_key = Key::ephemeral("bench-ca", t.ca_kind)?;
    let ca_scheme = Scheme::default_for(t.ca_kind);
    let raw_half = opts.duration / 2;
    let mut raw = (0u64, Duration::ZERO);
    let cpu_key = match (&cpu, opts.compare_raw) {
        (Some(c), true) => Some(c.cpu_key(&ca_key)?),
        _ => None,
    };
    if let (Some(c), Some(k)) = (&cpu, &cpu_key) {
        let r = raw_bound(c, k, ca_scheme, &csrs, raw_half)?;
        raw = (raw.0 + r.0, raw.1 + r.1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start runtime: {e}")))?;
    let warmup = (opts.duration / 5).min(Duration::from_secs(1));
    let measured = rt.block_on(async {
        let start = Instant::now();
        let (from, end) = (start + warmup, start + warmup + opts.duration);
        let mut tasks = Vec::new();
        for task in 0..opts.concurrency {
            let (client, items, prefix) = (client.clone(), items.clone(), t.id_prefix.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
                let mut first_error: Option<String> = None;
                let mut n = task * batch;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    // The request is assembled from items encoded once
                    // (the load generator shares the server's cores).
                    let mut body = Vec::with_capacity(batch * (items[0].len() + 64) + 16);
                    body.extend_from_slice(b"{\"items\":[");
                    for i in 0..batch {
                        n += 1;
                        if i > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(&items[n % items.len()]);
                        body.extend_from_slice(
                            format!("\"{prefix}/w{}\"}}", n % 100_000).as_bytes(),
                        );
                    }
                    body.extend_from_slice(b"]}");
                    let r = client
                        .request("POST", "/v1/x509svids:batch", Some(&body))
                        .await;
                    let t1 = Instant::now();
                    let (good, bad) = match &r {
                        Ok(resp) if resp.status == 200 => count_statuses(&resp.body, batch),
                        _ => (0, batch as u64),
                    };
                    if t0 >= from && t1 <= end {
                        ok += good;
                        failed += bad;
                        lat.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                        if bad > 0 && first_error.is_none() {
                            first_error = Some(match &r {
                                Ok(resp) => describe_failure(resp.status, &resp.body),
                                Err(e) => e.to_string(),
                            });
                        }
                    }
                }
                (ok, failed, lat, first_error)
            }));
        }
        let (mut ok, mut failed, mut lat, mut first_error) = (0u64, 0u64, Vec::new(), None);
        for task in tasks {
            if let Ok((o, f, l, e)) = task.await {
                ok += o;
                failed += f;
                lat.extend(l);
                first_error = first_error.or(e);
            }
        }
        lat.sort_unstable();
        (ok, failed, lat, first_error)
    });
    drop(rt);
    if let (Some(c), Some(k)) = (&cpu, &cpu_key) {
        let r = raw_bound(c, k, ca_scheme, &csrs, opts.duration - raw_half)?;
        raw = (raw.0 + r.0, raw.1 + r.1);
    }
    let (ok, failed, lat, first_error) = measured;
    let pct = |q: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * q).round() as usize] as f64
        }
    };
    let secs = opts.duration.as_secs_f64();
    let ops_per_sec = ok as f64 / secs;
    let raw_ops_per_sec = (raw.0 > 0).then(|| raw.0 as f64 / raw.1.as_secs_f64().max(1e-9));
    Ok(BenchReport {
        first_error,
        backend: t.url.replacen("https://", "issue://", 1),
        scheme: ca_scheme.name().into(),
        kind: format!("csr {} / intermediate {}", t.csr_kind, t.ca_kind),
        ops: ok,
        errors: failed,
        seconds: secs,
        ops_per_sec,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        // The server's engine batching is not seen from here; the items per
        // request are `max_batch`.
        mean_batch: None,
        concurrency: opts.concurrency,
        driver: DRIVER.into(),
        rate: None,
        max_batch: batch,
        max_wait_us: 0,
        engine: cpu
            .as_ref()
            .map(|c| c.engine_for(ca_scheme).name().to_string()),
        threads: cpu.as_ref().map(|c| c.threads()),
        single_op_us: None,
        latency_budget_us: None,
        raw_ops_per_sec,
        ratio: raw_ops_per_sec.map(|r| ops_per_sec / r),
        device: device_description(),
        commit: crate::COMMIT.into(),
        timestamp: crate::bench::now_rfc3339(),
        gpu: None,
        cuda_check: None,
        cuda_rsa_mapping: None,
        caller_sched: None,
        caller_threads: None,
    })
}

/// CSR verification plus one CA signature per item, on the CPU backend's
/// thread count, for `duration`.
fn raw_bound(
    cpu: &CpuBackend,
    key: &Arc<CpuKey>,
    scheme: Scheme,
    csrs: &[String],
    duration: Duration,
) -> Result<(u64, Duration)> {
    let engine = cpu.engine_for(scheme);
    // A TBSCertificate of an SVID is about 600 bytes.
    let tbs = scheme.prepare(SignInput::Message(vec![0x5a; 600]))?;
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..cpu.threads() {
            let (stop, total, tbs) = (&stop, &total, &tbs);
            s.spawn(move || {
                let mut n = 0u64;
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let ok = crate::ca::csr::parse_and_verify(csrs[i % csrs.len()].as_bytes())
                        .is_ok()
                        && key.sign(engine, scheme, tbs).is_ok();
                    n += ok as u64;
                    i += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    Ok((total.load(Ordering::Relaxed), start.elapsed()))
}

/// Why a batch answer counted as failed: the first failed item's code and
/// message, or the HTTP status and the start of the body.
fn describe_failure(status: u16, body: &[u8]) -> String {
    if status == 200
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(item) = v["results"]
            .as_array()
            .and_then(|r| r.iter().find(|i| i["status"] == "error"))
    {
        return format!(
            "{}: {}",
            item["code"].as_str().unwrap_or("?"),
            item["message"].as_str().unwrap_or("")
        );
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!("HTTP {status}: {}", text.trim())
}

/// Counts the items of a batch answer that were issued and that failed:
/// every result carries exactly one `"status"` member, and the server writes
/// it compactly, so scanning for it is exact and far cheaper than parsing
/// the chains. An answer with another number of results counts as all
/// failed.
fn count_statuses(body: &[u8], batch: usize) -> (u64, u64) {
    let ok = memchr::memmem::find_iter(body, b"\"status\":\"ok\"").count() as u64;
    let err = memchr::memmem::find_iter(body, b"\"status\":\"error\"").count() as u64;
    if ok + err == batch as u64 {
        (ok, err)
    } else {
        (0, batch as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_counted_or_the_answer_is_refused() {
        let body = br#"{"results":[{"status":"ok","svid_chain_pem":"x"},{"status":"error","code":"csr_malformed","message":"m"}]}"#;
        assert_eq!(count_statuses(body, 2), (1, 1));
        assert_eq!(
            count_statuses(body, 3),
            (0, 3),
            "a missing result fails the batch"
        );
        assert_eq!(count_statuses(b"garbage", 1), (0, 1));
        assert_eq!(describe_failure(200, body), "csr_malformed: m");
        assert_eq!(
            describe_failure(403, br#"{"error":"forbidden"}"#),
            r#"HTTP 403: {"error":"forbidden"}"#
        );
    }
}
