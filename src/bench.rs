//! `sigmux bench`: an in-process load generator against the engine, with
//! an optional same-run comparison against the bare signing library.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::app;
use crate::backend::cpu::{CpuBackend, CpuKey};
use crate::config::Config;
use crate::engine::{Engine, SignRequest};
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::scheme::{Family, KeyKind, Scheme, SignInput};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// `cpu`, `cuda`, `pkcs11` or `auto`.
    pub backend: String,
    /// The scheme.
    pub scheme: Scheme,
    /// Key kind; defaults to the smallest kind that fits the scheme.
    pub kind: Option<KeyKind>,
    /// Measured time (after warm-up).
    pub duration: Duration,
    /// Requests in flight (closed loop).
    pub concurrency: usize,
    /// Submit groups of this many requests (latency is then per group) and
    /// set the engine's `max_batch` to it.
    pub batch: Option<usize>,
    /// Open loop at this many requests per second instead of a closed loop.
    pub rate: Option<f64>,
    /// Also run the bare library on the same threads and report the ratio.
    pub compare_raw: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Closed-loop clients take answers by callback on the engine's
    /// workers and submit their next request from there, instead of being
    /// async tasks woken per answer: measures the engine without an async
    /// caller's wake-up cost.
    pub callbacks: bool,
    /// Drive a running keyless server instead of an in-process engine.
    pub target: Option<KeylessTarget>,
    /// Drive a running issuance API instead.
    pub issue_target: Option<crate::bench_issue::IssueTarget>,
    /// Overrides `backends.cuda.check` for this run (ECDSA on the GPU:
    /// every signature checked, or a sample).
    pub cuda_check: Option<crate::backend::cuda::CheckPolicy>,
    /// Overrides `backends.cuda.rsa_mapping` for this run (which RSA sign
    /// kernels the GPUs run).
    pub cuda_rsa_mapping: Option<crate::backend::cuda::RsaMapping>,
    /// How the closed-loop load generator's thread is scheduled.
    pub caller_sched: CallerSched,
}

/// How the closed-loop load generator's thread is scheduled (Linux) when
/// it sends single requests from async tasks.
///
/// The load generator stands in for callers, which in a deployment run on
/// their own cores or machines. In the bench it shares the cores with the
/// engine's workers, and as a normal thread each answer that wakes it
/// preempts a signing thread: on the 2-core development machine that was
/// about six preemptions per P-256 batch (28,000 a second) and 7 % of the
/// engine's throughput, a cost of the measurement rather than of the
/// engine. `Batch` (`SCHED_BATCH`) keeps its fair share of CPU time but
/// never preempts on wake-up, so it runs at the workers' time-slice
/// boundaries instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallerSched {
    /// `SCHED_BATCH`: no wake-up preemption (the default).
    #[default]
    Batch,
    /// `SCHED_OTHER`, as the process started.
    Normal,
}

impl CallerSched {
    /// The CLI and report name.
    pub fn name(self) -> &'static str {
        match self {
            CallerSched::Batch => "batch",
            CallerSched::Normal => "normal",
        }
    }
}

impl std::str::FromStr for CallerSched {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "batch" => Ok(CallerSched::Batch),
            "normal" => Ok(CallerSched::Normal),
            _ => Err(Error::Invalid(format!(
                "--caller-sched: '{s}' is not batch or normal"
            ))),
        }
    }
}

/// The calling thread's scheduling policy for the span of a closed-loop
/// run; the previous policy comes back on drop.
struct CallerPolicy {
    restore: Option<(libc::c_int, libc::sched_param)>,
    /// What the thread runs as: `Normal` when `Batch` was asked for but the
    /// system refused it.
    applied: CallerSched,
}

impl CallerPolicy {
    fn apply(sched: CallerSched) -> CallerPolicy {
        let normal = CallerPolicy {
            restore: None,
            applied: CallerSched::Normal,
        };
        if sched == CallerSched::Normal {
            return normal;
        }
        // SAFETY: plain syscalls on the calling thread (pid 0) with a
        // parameter struct that lives across the call.
        unsafe {
            let old = libc::sched_getscheduler(0);
            let mut old_param = libc::sched_param { sched_priority: 0 };
            let new_param = libc::sched_param { sched_priority: 0 };
            if old < 0
                || libc::sched_getparam(0, &mut old_param) != 0
                || libc::sched_setscheduler(0, libc::SCHED_BATCH, &new_param) != 0
            {
                // Not fatal: the run goes on as a normal thread, and the
                // report says so.
                return normal;
            }
            CallerPolicy {
                restore: Some((old, old_param)),
                applied: CallerSched::Batch,
            }
        }
    }
}

impl Drop for CallerPolicy {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.restore.take() {
            // SAFETY: as in `apply`.
            unsafe {
                libc::sched_setscheduler(0, policy, &param);
            }
        }
    }
}

/// A keyless server to load, and how to reach it.
#[derive(Clone, Debug)]
pub struct KeylessTarget {
    /// `host:port`.
    pub addr: String,
    /// Name expected in the server's certificate.
    pub server_name: String,
    /// CA certificates for the server (PEM file).
    pub ca: PathBuf,
    /// Client certificate chain (PEM file).
    pub cert: PathBuf,
    /// Client private key (PEM file).
    pub key: PathBuf,
    /// SKI of the key to sign with.
    pub ski: [u8; 20],
    /// Connections in the client's pool.
    pub connections: usize,
}

/// The address in `keyless://HOST:PORT`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeylessAddr {
    /// Host name or IP address, without the brackets of an IPv6 literal.
    pub host: String,
    /// TCP port (required: the keyless protocol has no standard port).
    pub port: u16,
}

impl KeylessAddr {
    /// Parses `keyless://HOST:PORT`; an IPv6 address goes in brackets
    /// (`keyless://[::1]:2407`), a host name is resolved when connecting.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming what is wrong: another scheme, a missing
    /// host or port, a bad port, an unbracketed IPv6 address.
    pub fn parse(target: &str) -> Result<KeylessAddr> {
        let bad = |why: String| Error::Invalid(format!("--target '{target}': {why}"));
        let rest = target
            .strip_prefix("keyless://")
            .ok_or_else(|| bad("expected keyless://HOST:PORT".into()))?;
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only HOST:PORT may follow keyless:// (no path, query or user)".into(),
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '['".into()))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad(format!("'[{host}]' is not an IPv6 address")));
            }
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad(format!("'{after}' after ']' is not ':PORT'"))),
            };
            (host, port)
        } else {
            match rest.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad(
                        "an IPv6 address goes in brackets: keyless://[ADDRESS]:PORT".into(),
                    ));
                }
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is missing: use keyless://HOST:PORT".into()));
        }
        let port = match port {
            None | Some("") => {
                return Err(bad(format!(
                    "the port is missing: use keyless://{}:PORT",
                    bracketed(host)
                )));
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(format!("'{p}' is not a port (1 to 65535)")))?,
        };
        Ok(KeylessAddr {
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` as the client dials it (an IPv6 address in brackets).
    pub fn dial(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }

    /// The name the server's certificate must carry unless `--server-name`
    /// says otherwise: the host, which for an IP address is matched against
    /// the certificate's IP address SANs.
    pub fn default_server_name(&self) -> String {
        self.host.clone()
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Checks that `name` can be a TLS server name (a DNS name or an IP
/// address), so a bad one is refused before any connection is tried.
pub fn check_server_name(name: &str) -> Result<()> {
    rustls_pki_types::ServerName::try_from(name.to_string())
        .map(|_| ())
        .map_err(|_| {
            Error::Invalid(format!(
                "--server-name '{name}' is neither a DNS name nor an IP address"
            ))
        })
}

/// Checks an `https://HOST[:PORT]` issuance target (443 when the port is
/// left out, as for `sigmux issue --server`).
///
/// # Errors
///
/// [`Error::Invalid`] naming the flag and the problem.
pub fn check_issue_target(target: &str) -> Result<()> {
    let authority = target
        .strip_prefix("https://")
        .map(|r| r.split('/').next().unwrap_or(r))
        .unwrap_or_default();
    if authority.ends_with(':') {
        return Err(Error::Invalid(format!(
            "--target '{target}': the port is missing after ':' (https://HOST:PORT, or \
             https://HOST for 443)"
        )));
    }
    crate::api::client::ServerUrl::parse(target)
        .map(|_| ())
        .map_err(|e| Error::Invalid(format!("--target: {e}")))
}

/// What a `sigmux bench` run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// The engine, in process (no `--target`).
    InProcess,
    /// A running keyless server (`--target keyless://HOST:PORT`).
    Keyless,
    /// A running issuance API (`--target https://HOST[:PORT]`).
    Issuance,
}

impl RunKind {
    /// The kind of run a `--target` value asks for.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a target that is neither `keyless://` nor
    /// `https://`.
    pub fn of(target: Option<&str>) -> Result<RunKind> {
        match target {
            None => Ok(RunKind::InProcess),
            Some(t) if t.starts_with("keyless://") => Ok(RunKind::Keyless),
            Some(t) if t.starts_with("https://") => Ok(RunKind::Issuance),
            Some(t) => Err(Error::Invalid(format!(
                "--target '{t}' must be keyless://HOST:PORT (a keyless server) or \
                 https://HOST[:PORT] (the issuance API)"
            ))),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RunKind::InProcess => "the in-process bench (no --target)",
            RunKind::Keyless => "--target keyless://",
            RunKind::Issuance => "--target https://",
        }
    }
}

const ALL_RUNS: &[RunKind] = &[RunKind::InProcess, RunKind::Keyless, RunKind::Issuance];

/// Every flag of `sigmux bench` and the runs that use it. A flag given to
/// a run that would not use it is refused ([`check_flags`]), never ignored.
/// (`--scheme` is left out: the issuance run takes it for compatibility
/// and the CLI says when it is not the scheme used.)
pub const BENCH_FLAGS: &[(&str, &[RunKind])] = &[
    ("--duration", ALL_RUNS),
    ("--concurrency", ALL_RUNS),
    ("--json", ALL_RUNS),
    ("--backend", &[RunKind::InProcess]),
    ("--kind", &[RunKind::InProcess]),
    ("--batch", &[RunKind::InProcess, RunKind::Issuance]),
    ("--rate", &[RunKind::InProcess]),
    ("--compare-raw", &[RunKind::InProcess, RunKind::Issuance]),
    ("--callbacks", &[RunKind::InProcess]),
    ("--caller-sched", &[RunKind::InProcess]),
    ("--cuda-check", &[RunKind::InProcess]),
    ("--cuda-rsa-mapping", &[RunKind::InProcess]),
    ("--ski", &[RunKind::Keyless]),
    ("--server-name", &[RunKind::Keyless]),
    ("--connections", &[RunKind::Keyless]),
    ("--ca", &[RunKind::Keyless, RunKind::Issuance]),
    ("--client-cert", &[RunKind::Keyless, RunKind::Issuance]),
    ("--client-key", &[RunKind::Keyless, RunKind::Issuance]),
    ("--csr-kind", &[RunKind::Issuance]),
    ("--ca-kind", &[RunKind::Issuance]),
    ("--spiffe-prefix", &[RunKind::Issuance]),
];

/// Why a flag means nothing to a kind of run, where a word helps.
fn why_not(flag: &str, kind: RunKind) -> Option<&'static str> {
    use RunKind::*;
    Some(match (flag, kind) {
        ("--rate", Keyless | Issuance) => {
            "it runs a closed loop of --concurrency requests in flight"
        }
        ("--batch", Keyless) => "the keyless protocol carries one operation per request",
        ("--kind", Keyless) => {
            "the key is the server's (chosen by --ski); the report names its kind from the \
             signatures the server returns"
        }
        ("--kind", Issuance) => "the CSRs' keys are --csr-kind, the intermediate's --ca-kind",
        ("--backend" | "--cuda-check" | "--cuda-rsa-mapping", Keyless | Issuance) => {
            "the server's configuration chooses its backends"
        }
        ("--compare-raw", Keyless) => "there is no raw-library bound for a remote keyless server",
        ("--callbacks" | "--caller-sched", Keyless | Issuance) => {
            "they shape the in-process load generator only"
        }
        _ => return None,
    })
}

/// Refuses the first of the `given` flags that a run of `kind` would not
/// use, naming the flag, the kind of run and the flags it takes.
///
/// # Errors
///
/// [`Error::Invalid`] as described.
pub fn check_flags(kind: RunKind, given: &[&str]) -> Result<()> {
    for flag in given {
        let used = BENCH_FLAGS
            .iter()
            .find(|(f, _)| f == flag)
            .is_none_or(|(_, runs)| runs.contains(&kind));
        if used {
            continue;
        }
        let takes: Vec<&str> = std::iter::once("--scheme")
            .filter(|_| kind != RunKind::Issuance)
            .chain(
                BENCH_FLAGS
                    .iter()
                    .filter(|(_, runs)| runs.contains(&kind))
                    .map(|(f, _)| *f),
            )
            .collect();
        let why = why_not(flag, kind).map_or_else(String::new, |w| format!(" ({w})"));
        return Err(Error::Invalid(format!(
            "{flag} is not supported by {}{why}; it takes {}",
            kind.describe(),
            takes.join(", ")
        )));
    }
    Ok(())
}

/// The flags an options value shows were given (the ones it can show).
fn flags_in(opts: &BenchOptions) -> Vec<&'static str> {
    [
        ("--kind", opts.kind.is_some()),
        ("--batch", opts.batch.is_some()),
        ("--rate", opts.rate.is_some()),
        ("--compare-raw", opts.compare_raw),
        ("--callbacks", opts.callbacks),
        ("--cuda-check", opts.cuda_check.is_some()),
        ("--cuda-rsa-mapping", opts.cuda_rsa_mapping.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, given)| given.then_some(f))
    .collect()
}

/// The checks every kind of run shares, before anything starts.
fn check_options(opts: &BenchOptions) -> Result<()> {
    let kind = match (&opts.target, &opts.issue_target) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid(
                "one target at a time: a keyless server or an issuance API".into(),
            ));
        }
        (Some(_), None) => RunKind::Keyless,
        (None, Some(_)) => RunKind::Issuance,
        (None, None) => RunKind::InProcess,
    };
    check_flags(kind, &flags_in(opts))?;
    if opts.concurrency == 0 {
        return Err(Error::Invalid("--concurrency must be at least 1".into()));
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Error::Invalid("--rate must be a positive number".into()));
    }
    if opts.batch == Some(0) {
        return Err(Error::Invalid("--batch must be at least 1".into()));
    }
    if opts.target.as_ref().is_some_and(|t| t.connections == 0) {
        return Err(Error::Invalid("--connections must be at least 1".into()));
    }
    if opts.duration.is_zero() {
        return Err(Error::Invalid(
            "--duration must be a positive number of seconds".into(),
        ));
    }
    Ok(())
}

/// One run's results; the JSON written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Backend selection.
    pub backend: String,
    /// Scheme name.
    pub scheme: String,
    /// Key kind.
    pub kind: String,
    /// Operations completed in the measured window.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Throughput.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
    /// 99.9th percentile latency.
    pub p999_us: f64,
    /// Mean operations per backend batch; `None` (null) for `--target`
    /// runs, whose server's batching is not seen from outside.
    pub mean_batch: Option<f64>,
    /// Requests in flight (closed loop).
    pub concurrency: usize,
    /// How load was offered: `async` (one task per client, woken per
    /// answer), `groups`, `callbacks`, or `open-loop`.
    pub driver: String,
    /// Offered load (open loop), requests per second.
    pub rate: Option<f64>,
    /// The engine's max_batch during the run.
    pub max_batch: usize,
    /// The engine's max_wait during the run, microseconds.
    pub max_wait_us: u64,
    /// The library the CPU backend chose for this scheme.
    pub engine: Option<String>,
    /// CPU backend threads.
    pub threads: Option<usize>,
    /// Median time of one operation alone through the bare library.
    pub single_op_us: Option<f64>,
    /// With --rate: single_op_us + max_wait_us + 200, the p99 target at half
    /// of peak load.
    pub latency_budget_us: Option<f64>,
    /// The bare library on the same threads, same run.
    pub raw_ops_per_sec: Option<f64>,
    /// ops_per_sec / raw_ops_per_sec.
    pub ratio: Option<f64>,
    /// The machine.
    pub device: String,
    /// sigmux commit.
    pub commit: String,
    /// When the run ended (RFC 3339, UTC).
    pub timestamp: String,
    /// The first failure, when requests failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The GPU(s) of a `--backend cuda` run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// The GPU's ECDSA check policy during the run (`all` or `sample:N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_check: Option<String>,
    /// The GPU's RSA thread mapping during the run (`thread`, `wide` or
    /// `coop:T`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_rsa_mapping: Option<String>,
    /// Single requests from async tasks: how the load generator's thread
    /// was scheduled (`batch` or `normal`, see [`CallerSched`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_sched: Option<String>,
    /// Groups: the threads that built groups and took their answers (one
    /// per group in flight, up to the cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_threads: Option<usize>,
}

fn driver_name(opts: &BenchOptions) -> &'static str {
    match (opts.rate, opts.batch.unwrap_or(1) > 1, opts.callbacks) {
        (Some(_), _, _) => "open-loop",
        (None, true, _) => "groups",
        (None, false, true) => "callbacks",
        (None, false, false) => "async",
    }
}

/// The key kind a scheme is benchmarked with unless told otherwise.
pub fn default_kind(scheme: Scheme) -> KeyKind {
    match scheme.family() {
        Family::Rsa => KeyKind::Rsa2048,
        Family::Ecdsa(crate::scheme::Curve::P256) => KeyKind::P256,
        Family::Ecdsa(crate::scheme::Curve::P384) => KeyKind::P384,
        Family::Ed25519 => KeyKind::Ed25519,
    }
}

fn bench_input(scheme: Scheme, seed: u64) -> SignInput {
    let msg: Vec<u8> = (0..64u64)
        .map(|i| (seed.wrapping_mul(6364136223846793005).wrapping_add(i) >> 7) as u8)
        .collect();
    match scheme.hash() {
        Some(h) => SignInput::Digest(h.digest(&msg)),
        None => SignInput::Message(msg),
    }
}

/// Runs the benchmark.
///
/// # Errors
///
/// [`Error::Invalid`] for options that do not fit together (a flag the
/// kind of run would not use is refused, not ignored), and whatever stops
/// the run from starting.
pub fn run(cfg: &Config, opts: &BenchOptions) -> Result<BenchReport> {
    check_options(opts)?;
    if let Some(t) = &opts.target {
        return run_keyless(t, opts);
    }
    if let Some(t) = &opts.issue_target {
        let cpu = app::start_backends(cfg, "cpu")?.cpu;
        return crate::bench_issue::run(t, opts, cpu);
    }
    let kind = opts.kind.unwrap_or_else(|| default_kind(opts.scheme));
    opts.scheme.check_fits(kind)?;
    let mut ecfg = cfg.engine_config();
    if let Some(b) = opts.batch {
        ecfg.max_batch = b;
    }
    // Room for the whole offered load (a group is admitted whole): the
    // bench measures speed, not the overload path.
    ecfg.queue_capacity = ecfg
        .queue_capacity
        .max(opts.concurrency.max(opts.batch.unwrap_or(1)) * 2);
    let mut cfg = cfg.clone();
    if let Some(c) = opts.cuda_check {
        cfg.backends.cuda.check = c.to_string();
    }
    // Through the config, so the GPUs also calibrate with this mapping.
    if let Some(m) = opts.cuda_rsa_mapping {
        cfg.backends.cuda.rsa_mapping = m.to_string();
    }
    let backends = app::start_backends(&cfg, &opts.backend)?;
    let cpu = backends.cpu.clone();
    let gpus = if opts.backend == "cuda" {
        backends.cuda.clone()
    } else {
        Vec::new()
    };
    // The key lives where the chosen backend can use it: in the token for
    // pkcs11 (made for this run and removed after), in memory otherwise.
    let token = (opts.backend == "pkcs11")
        .then(|| backends.pkcs11.first().cloned())
        .flatten();
    let key = match &token {
        Some(t) => t.bench_key(kind)?,
        None => Key::ephemeral("bench", kind)?,
    };
    let engine = Arc::new(Engine::new(ecfg.clone(), backends.all)?);
    let result = run_with_key(opts, kind, &ecfg, cpu, token.as_ref(), &gpus, &key, &engine);
    drop(engine);
    if let Some(t) = &token {
        t.drop_bench_key(&key)?;
    }
    result
}

// The run's pieces, each a different backend kind or the engine over them.
#[allow(clippy::too_many_arguments)]
fn run_with_key(
    opts: &BenchOptions,
    kind: KeyKind,
    ecfg: &crate::engine::EngineConfig,
    cpu: Option<Arc<CpuBackend>>,
    token: Option<&Arc<crate::backend::pkcs11::Pkcs11Backend>>,
    gpus: &[Arc<crate::backend::cuda::CudaBackend>],
    key: &Arc<Key>,
    engine: &Arc<Engine>,
) -> Result<BenchReport> {
    let raw_key = match (&cpu, token) {
        (Some(c), None) if opts.compare_raw || opts.rate.is_some() => Some(c.cpu_key(key)?),
        _ => None,
    };
    let raw_input = opts.scheme.prepare(bench_input(opts.scheme, 0))?;
    let single_op_us = match (&cpu, &raw_key) {
        (Some(c), Some(k)) => Some(single_op(c, k, opts.scheme)?),
        _ => None,
    };
    let half = opts.duration / 2;
    let mut raw = (0u64, Duration::ZERO);
    // The GPU's bare loop calls its own batch method with the run's batch
    // size, on one thread per stream, on every GPU at once.
    let raw_gpu = |d: Duration| -> Result<(u64, Duration)> {
        let batch = opts.batch.unwrap_or(ecfg.max_batch);
        let results: Vec<Result<(u64, Duration)>> = std::thread::scope(|sc| {
            let hs: Vec<_> = gpus
                .iter()
                .map(|g| sc.spawn(|| g.raw_sign_loop(key, opts.scheme, &raw_input, batch, d)))
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Invalid("raw GPU loop panicked".into())))
                })
                .collect()
        });
        let mut total = (0u64, Duration::ZERO);
        for r in results {
            let (n, t) = r?;
            total = (total.0 + n, total.1.max(t));
        }
        Ok(total)
    };
    if opts.compare_raw {
        let (n, d) = match (token, &cpu, &raw_key) {
            (Some(t), _, _) => t.raw_sign_loop(key, opts.scheme, &raw_input, half)?,
            _ if !gpus.is_empty() => raw_gpu(half)?,
            (None, Some(c), Some(k)) => run_raw(c, k, opts.scheme, half)?,
            _ => (0, Duration::ZERO),
        };
        raw = (raw.0 + n, raw.1 + d);
    }
    let before: u64 = engine.backend_totals().iter().map(|t| t.2).sum();
    let before_ops: u64 = engine.backend_totals().iter().map(|t| t.1).sum();
    let measured = run_engine(engine, key, opts)?;
    let after: u64 = engine.backend_totals().iter().map(|t| t.2).sum();
    let after_ops: u64 = engine.backend_totals().iter().map(|t| t.1).sum();
    if opts.compare_raw {
        let rest = opts.duration - half;
        let (n, d) = match (token, &cpu, &raw_key) {
            (Some(t), _, _) => t.raw_sign_loop(key, opts.scheme, &raw_input, rest)?,
            _ if !gpus.is_empty() => raw_gpu(rest)?,
            (None, Some(c), Some(k)) => run_raw(c, k, opts.scheme, rest)?,
            _ => (0, Duration::ZERO),
        };
        raw = (raw.0 + n, raw.1 + d);
    }
    let raw_ops_per_sec =
        (opts.compare_raw && raw.0 > 0).then(|| raw.0 as f64 / raw.1.as_secs_f64().max(1e-9));
    let ops_per_sec = measured.ops as f64 / measured.seconds.max(1e-9);
    let batches = after.saturating_sub(before);
    Ok(BenchReport {
        first_error: measured.first_error.clone(),
        backend: opts.backend.clone(),
        scheme: opts.scheme.name().into(),
        kind: kind.name().into(),
        ops: measured.ops,
        errors: measured.errors,
        seconds: measured.seconds,
        ops_per_sec,
        p50_us: measured.percentile(0.50),
        p99_us: measured.percentile(0.99),
        p999_us: measured.percentile(0.999),
        mean_batch: Some(if batches > 0 {
            after_ops.saturating_sub(before_ops) as f64 / batches as f64
        } else {
            0.0
        }),
        concurrency: opts.concurrency,
        driver: driver_name(opts).into(),
        rate: opts.rate,
        max_batch: ecfg.max_batch,
        max_wait_us: ecfg.max_wait.as_micros() as u64,
        engine: cpu
            .as_ref()
            .map(|c| c.engine_for(opts.scheme).name().to_string()),
        threads: cpu.as_ref().map(|c| c.threads()),
        single_op_us,
        latency_budget_us: opts
            .rate
            .and(single_op_us)
            .map(|t| t + ecfg.max_wait.as_micros() as f64 + 200.0),
        raw_ops_per_sec,
        ratio: raw_ops_per_sec.map(|r| ops_per_sec / r),
        device: if gpus.is_empty() {
            device_description()
        } else {
            format!("{} + {}", device_description(), gpu_names(gpus))
        },
        commit: crate::COMMIT.into(),
        timestamp: now_rfc3339(),
        gpu: (!gpus.is_empty()).then(|| gpu_names(gpus)),
        cuda_check: gpus.first().map(|g| g.check_policy().to_string()),
        cuda_rsa_mapping: gpus.first().map(|g| g.rsa_mapping().to_string()),
        caller_sched: measured.caller_sched.map(|c| c.name().to_string()),
        caller_threads: measured.caller_threads,
    })
}

/// `NVIDIA H100 80GB HBM3 (cuda:0)`, comma-separated.
fn gpu_names(gpus: &[Arc<crate::backend::cuda::CudaBackend>]) -> String {
    use crate::backend::Backend;
    gpus.iter()
        .map(|g| format!("{} ({})", g.device_name(), g.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Measured {
    ops: u64,
    errors: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    /// The load generator's scheduling as applied (single requests from
    /// async tasks only).
    caller_sched: Option<CallerSched>,
    caller_threads: Option<usize>,
    /// The first failure, if any request failed.
    first_error: Option<String>,
}

impl Measured {
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us[i.min(self.latencies_us.len() - 1)] as f64
    }
}

/// Longest latency sample list kept per task; beyond it samples are
/// dropped evenly (every other one), which keeps percentiles unbiased.
const MAX_SAMPLES_PER_TASK: usize = 1 << 22;

fn run_engine(engine: &Arc<Engine>, key: &Arc<Key>, opts: &BenchOptions) -> Result<Measured> {
    // No I/O driver: wake-ups from the engine's workers then cost an atomic
    // and, at most, a futex, instead of an eventfd write per answer.
    // Groups are submitted from as many threads as there are groups in
    // flight (up to the cores), as a bulk front door serving several
    // connections would: building a group and dropping its answers costs
    // about 0.15 µs a request on the caller's thread (measured on the
    // 2-core CI machine), which one thread could not keep up with at GPU
    // rates.
    let group_threads = if driver_name(opts) == "groups" {
        let group = opts.batch.unwrap_or(1).max(1);
        (opts.concurrency / group).clamp(
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )
    } else {
        1
    };
    let rt = if group_threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(group_threads)
            .thread_name("sigmux-bench-caller")
            .enable_time()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
    }
    .map_err(|e| Error::Invalid(format!("cannot start runtime: {e}")))?;
    let warmup = (opts.duration / 5).min(Duration::from_secs(1));
    let done = Arc::new(AtomicU64::new(0));
    let progress = opts
        .progress
        .then(|| progress_bar(opts.duration + warmup, done.clone()));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + opts.duration;
    let mut caller_sched = None;
    let first = FirstError::default();
    let parts = match opts.rate {
        None if opts.callbacks && opts.batch.unwrap_or(1) <= 1 => {
            callback_loop(engine, key, opts, measure_from, end, &done, &first)
        }
        None => {
            // Single requests only: a group is one wake-up per many answers,
            // and a caller that waits for slice boundaries there leaves the
            // workers short of work (measured: 0.97 against 0.99).
            let policy =
                (driver_name(opts) == "async").then(|| CallerPolicy::apply(opts.caller_sched));
            caller_sched = policy.as_ref().map(|p| p.applied);
            rt.block_on(closed_loop(
                engine,
                key,
                opts,
                measure_from,
                end,
                &done,
                &first,
            ))
        }
        Some(_) => open_loop(engine, key, opts, measure_from, end, &done, &first),
    };
    let mut result = Measured {
        ops: 0,
        errors: 0,
        seconds: opts.duration.as_secs_f64(),
        latencies_us: Vec::new(),
        caller_sched,
        caller_threads: (driver_name(opts) == "groups").then_some(group_threads),
        first_error: first.take(),
    };
    for (ops, errors, lat) in parts {
        result.ops += ops;
        result.errors += errors;
        result.latencies_us.extend(lat);
    }
    result.latencies_us.sort_unstable();
    if let Some((bar, stop, handle)) = progress {
        stop.store(true, Ordering::Release);
        let _ = handle.join();
        bar.finish_and_clear();
    }
    Ok(result)
}

type Part = (u64, u64, Vec<u32>);

/// The first failure of an in-process run, kept for the report: a run in
/// which requests fail should say why, not only how many.
#[derive(Clone, Default)]
struct FirstError(Arc<std::sync::OnceLock<String>>);

impl FirstError {
    fn note(&self, e: &impl std::fmt::Display) {
        if self.0.get().is_none() {
            let _ = self.0.set(e.to_string());
        }
    }

    fn take(&self) -> Option<String> {
        self.0.get().cloned()
    }
}

async fn closed_loop(
    engine: &Arc<Engine>,
    key: &Arc<Key>,
    opts: &BenchOptions,
    measure_from: Instant,
    end: Instant,
    done: &Arc<AtomicU64>,
    first: &FirstError,
) -> Vec<Part> {
    // With --batch B, each task submits groups of B (one answer per group,
    // as a bulk caller would) and `concurrency` counts requests in flight.
    let group = opts.batch.unwrap_or(1).max(1);
    let n_tasks = (opts.concurrency / group).max(1);
    let mut tasks = Vec::with_capacity(n_tasks);
    for t in 0..n_tasks {
        let engine = engine.clone();
        let key = key.clone();
        let scheme = opts.scheme;
        let done = done.clone();
        let first = first.clone();
        tasks.push(tokio::spawn(async move {
            let input = bench_input(scheme, t as u64);
            let (mut ops, mut errors, mut lat) = (0f64, 0u64, Vec::new());
            // One clock read per request: an answer's time starts the next.
            let mut t0 = Instant::now();
            loop {
                if t0 >= end {
                    break;
                }
                let results = if group == 1 {
                    vec![
                        engine
                            .sign(SignRequest::new(key.clone(), scheme, input.clone()))
                            .await,
                    ]
                } else {
                    match engine.submit_group(key.clone(), scheme, vec![input.clone(); group], None)
                    {
                        Ok(ticket) => ticket.await,
                        Err(e) => vec![Err(e)],
                    }
                };
                let t1 = Instant::now();
                done.fetch_add(results.len() as u64, Ordering::Relaxed);
                // The work done inside the window: a group that straddles
                // one of its edges counts in proportion to its time inside.
                // Counting only groups that start and end inside undercounts
                // by a group per task at each edge (measured on an H200:
                // RSA-2048 groups of 65536, 0.2 s each, read 6 % low in a
                // 2 s window) and reads zero when a group outlasts the window.
                let ok = results.iter().filter(|r| r.is_ok()).count();
                let (lo, hi) = (t0.max(measure_from), t1.min(end));
                if hi > lo {
                    let share = (hi - lo).as_secs_f64() / (t1 - t0).as_secs_f64().max(1e-12);
                    ops += ok as f64 * share;
                }
                // Errors and latency: the answers that came inside it.
                if t1 >= measure_from && t1 <= end {
                    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                        first.note(e);
                    }
                    errors += (results.len() - ok) as u64;
                    record(&mut lat, t1 - t0);
                }
                t0 = t1;
            }
            (ops.round() as u64, errors, lat)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            out.push(p);
        }
    }
    out
}

fn record(lat: &mut Vec<u32>, d: Duration) {
    if lat.len() >= MAX_SAMPLES_PER_TASK {
        let mut i = 0;
        lat.retain(|_| {
            i += 1;
            i % 2 == 0
        });
    }
    lat.push(d.as_micros().min(u32::MAX as u128) as u32);
}

/// One closed-loop client driven by callbacks: each answer records its
/// latency and sends the next request from the engine's worker thread.
struct CallbackClient {
    engine: Arc<Engine>,
    key: Arc<Key>,
    scheme: Scheme,
    input: SignInput,
    measure_from: Instant,
    end: Instant,
    part: Arc<parking_lot::Mutex<Part>>,
    done: Arc<AtomicU64>,
    stopped: Arc<AtomicU64>,
    first: FirstError,
}

impl CallbackClient {
    fn fire(self: Arc<Self>) {
        let t0 = Instant::now();
        if t0 >= self.end {
            self.stopped.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let me = self.clone();
        let req = SignRequest::new(self.key.clone(), self.scheme, self.input.clone());
        let submitted = self.engine.submit_with(req, move |r| {
            let t1 = Instant::now();
            me.done.fetch_add(1, Ordering::Relaxed);
            if t0 >= me.measure_from && t1 <= me.end {
                let mut p = me.part.lock();
                match &r {
                    Ok(_) => {
                        p.0 += 1;
                        record(&mut p.2, t1 - t0);
                    }
                    Err(e) => {
                        p.1 += 1;
                        me.first.note(e);
                    }
                }
            }
            me.fire();
        });
        if let Err(e) = submitted {
            self.first.note(&e);
            self.part.lock().1 += 1;
            self.stopped.fetch_add(1, Ordering::AcqRel);
        }
    }
}

fn callback_loop(
    engine: &Arc<Engine>,
    key: &Arc<Key>,
    opts: &BenchOptions,
    measure_from: Instant,
    end: Instant,
    done: &Arc<AtomicU64>,
    first: &FirstError,
) -> Vec<Part> {
    let part: Arc<parking_lot::Mutex<Part>> = Arc::default();
    let stopped = Arc::new(AtomicU64::new(0));
    for i in 0..opts.concurrency {
        Arc::new(CallbackClient {
            engine: engine.clone(),
            key: key.clone(),
            scheme: opts.scheme,
            input: bench_input(opts.scheme, i as u64),
            measure_from,
            end,
            part: part.clone(),
            done: done.clone(),
            stopped: stopped.clone(),
            first: first.clone(),
        })
        .fire();
    }
    let give_up = end + Duration::from_secs(30);
    while stopped.load(Ordering::Acquire) < opts.concurrency as u64 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(2));
    }
    let p = std::mem::take(&mut *part.lock());
    vec![p]
}

/// The shortest sleep of the open-loop pacer.
const PACER_TICK: Duration = Duration::from_micros(100);

/// Offers `opts.rate` requests per second, whatever the engine does, from this
/// thread; answers are taken by callback on the engine's workers, so no
/// extra thread or runtime sits between the engine and the clock. Latency
/// is measured from each request's scheduled time, so a stalled engine
/// cannot hide its queueing (no coordinated omission).
fn open_loop(
    engine: &Arc<Engine>,
    key: &Arc<Key>,
    opts: &BenchOptions,
    measure_from: Instant,
    end: Instant,
    done: &Arc<AtomicU64>,
    first: &FirstError,
) -> Vec<Part> {
    let Some(rate) = opts.rate else {
        return Vec::new();
    };
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; it
    // takes no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    // Room for every sample up front, so the vector is never copied while
    // the workers' answers wait for its lock.
    let expected = (rate * (end - measure_from).as_secs_f64() * 1.05) as usize + 1024;
    let part: Arc<parking_lot::Mutex<Part>> = Arc::new(parking_lot::Mutex::new((
        0,
        0,
        Vec::with_capacity(expected.min(MAX_SAMPLES_PER_TASK)),
    )));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let input = bench_input(opts.scheme, 1);
    let start = Instant::now();
    let mut i: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        loop {
            let due = start + interval.mul_f64(i as f64);
            if due > now {
                // Waking for every request at high rates would cost the
                // workers more CPU than the requests; wake at most every
                // PACER_TICK and send what is due (latency still counts
                // from each request's own scheduled time).
                std::thread::sleep((due - now).max(PACER_TICK));
                break;
            }
            i += 1;
            let counted = due >= measure_from && due < end;
            let (part2, done2, first2) = (part.clone(), done.clone(), first.clone());
            let submitted = engine.submit_with(
                SignRequest::new(key.clone(), opts.scheme, input.clone()),
                move |r| {
                    let t1 = Instant::now();
                    done2.fetch_add(1, Ordering::Relaxed);
                    if counted {
                        let mut p = part2.lock();
                        match &r {
                            Ok(_) => {
                                p.0 += 1;
                                record(&mut p.2, t1 - due);
                            }
                            Err(e) => {
                                p.1 += 1;
                                first2.note(e);
                            }
                        }
                    }
                },
            );
            if let Err(e) = submitted {
                first.note(&e);
                if counted {
                    part.lock().1 += 1;
                }
            }
        }
    }
    // Let the last answers land.
    let drain = Instant::now();
    while engine.queue_depth() > 0 && drain.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let p = std::mem::take(&mut *part.lock());
    vec![p]
}

/// The key kind a signature shows: RSA by its length (the modulus
/// size), ECDSA by the size of `r` and `s` (a P-384 signature whose two
/// halves both fit in 32 bytes has odds of about 2^-256), Ed25519 by its
/// scheme. `None` for a signature that fits no kind of the scheme's family.
pub fn kind_of_signature(scheme: Scheme, sig: &[u8]) -> Option<KeyKind> {
    match scheme.family() {
        Family::Rsa => match sig.len() {
            256 => Some(KeyKind::Rsa2048),
            384 => Some(KeyKind::Rsa3072),
            512 => Some(KeyKind::Rsa4096),
            _ => None,
        },
        Family::Ecdsa(_) => {
            if crate::der::ecdsa_der_to_raw(sig, 32).is_ok() {
                Some(KeyKind::P256)
            } else if crate::der::ecdsa_der_to_raw(sig, 48).is_ok() {
                Some(KeyKind::P384)
            } else {
                None
            }
        }
        Family::Ed25519 => (sig.len() == 64).then_some(KeyKind::Ed25519),
    }
}

/// Loads a running keyless server through the pooled, pipelined client:
/// `concurrency` requests in flight over `connections` connections. The
/// key is the server's: the report's kind is read from the signatures it
/// returns (the largest kind any task saw; `unknown` without one).
fn run_keyless(t: &KeylessTarget, opts: &BenchOptions) -> Result<BenchReport> {
    use crate::keyless::client::{ClientConfig, KeylessClient, op_for_scheme};
    check_server_name(&t.server_name)?;
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| Error::io(p, e));
    let cfg = ClientConfig {
        addr: t.addr.clone(),
        server_name: t.server_name.clone(),
        ca_pem: read(&t.ca)?,
        cert_chain_pem: read(&t.cert)?,
        key_pem: read(&t.key)?,
        connections: t.connections,
        timeout: Duration::from_secs(30),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start runtime: {e}")))?;
    let warmup = (opts.duration / 5).min(Duration::from_secs(1));
    let done = Arc::new(AtomicU64::new(0));
    let progress = opts
        .progress
        .then(|| progress_bar(opts.duration + warmup, done.clone()));
    let measured: Result<(Measured, Option<KeyKind>)> = rt.block_on(async {
        let client = Arc::new(
            KeylessClient::connect(cfg)
                .await
                .map_err(|e| Error::Invalid(format!("keyless target {}: {e}", t.addr)))?,
        );
        let op = op_for_scheme(opts.scheme);
        let start = Instant::now();
        let (measure_from, end) = (start + warmup, start + warmup + opts.duration);
        let mut tasks = Vec::new();
        for i in 0..opts.concurrency {
            let (client, done, ski, scheme) = (client.clone(), done.clone(), t.ski, opts.scheme);
            tasks.push(tokio::spawn(async move {
                let payload = match scheme.prepare(bench_input(scheme, i as u64)) {
                    Ok(p) => p,
                    Err(e) => return (0, 1, Vec::new(), Some(e.to_string()), None),
                };
                let (mut ops, mut errors, mut lat) = (0u64, 0u64, Vec::new());
                let mut first_error = None;
                let mut kind: Option<Option<KeyKind>> = None;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let r = client.sign(ski, op, payload.clone()).await;
                    let t1 = Instant::now();
                    done.fetch_add(1, Ordering::Relaxed);
                    if kind.is_none()
                        && let Ok(sig) = &r
                    {
                        kind = Some(kind_of_signature(scheme, sig));
                    }
                    if t0 >= measure_from && t1 <= end {
                        match r {
                            Ok(_) => {
                                ops += 1;
                                record(&mut lat, t1 - t0);
                            }
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                }
                (ops, errors, lat, first_error, kind.flatten())
            }));
        }
        let mut kind: Option<KeyKind> = None;
        let mut m = Measured {
            ops: 0,
            errors: 0,
            seconds: opts.duration.as_secs_f64(),
            latencies_us: Vec::new(),
            caller_sched: None,
            caller_threads: None,
            first_error: None,
        };
        for task in tasks {
            if let Ok((o, e, l, f, k)) = task.await {
                m.ops += o;
                m.errors += e;
                m.latencies_us.extend(l);
                m.first_error = m.first_error.or(f);
                kind = kind.max(k);
            }
        }
        m.latencies_us.sort_unstable();
        Ok((m, kind))
    });
    if let Some((bar, stop, handle)) = progress {
        stop.store(true, Ordering::Release);
        let _ = handle.join();
        bar.finish_and_clear();
    }
    let (m, kind) = measured?;
    Ok(BenchReport {
        first_error: m.first_error.clone(),
        backend: format!("keyless://{}", t.addr),
        scheme: opts.scheme.name().into(),
        kind: kind.map_or("unknown", KeyKind::name).into(),
        ops: m.ops,
        errors: m.errors,
        seconds: m.seconds,
        ops_per_sec: m.ops as f64 / m.seconds.max(1e-9),
        p50_us: m.percentile(0.50),
        p99_us: m.percentile(0.99),
        p999_us: m.percentile(0.999),
        mean_batch: None,
        concurrency: opts.concurrency,
        driver: "async".into(),
        rate: None,
        max_batch: 0,
        max_wait_us: 0,
        engine: None,
        threads: None,
        single_op_us: None,
        latency_budget_us: None,
        raw_ops_per_sec: None,
        ratio: None,
        device: device_description(),
        commit: crate::COMMIT.into(),
        timestamp: now_rfc3339(),
        gpu: None,
        cuda_check: None,
        cuda_rsa_mapping: None,
        caller_sched: None,
        caller_threads: None,
    })
}

/// The bare library on the backend's thread count, no engine.
fn run_raw(
    cpu: &CpuBackend,
    key: &Arc<CpuKey>,
    scheme: Scheme,
    duration: Duration,
) -> Result<(u64, Duration)> {
    let engine = cpu.engine_for(scheme);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cpu.threads())
            .map(|t| {
                let stop = &stop;
                s.spawn(move || -> Result<u64> {
                    let input = scheme.prepare(bench_input(scheme, t as u64))?;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        key.sign(engine, scheme, &input)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Ok(0)))
            .sum::<Result<u64>>()
    })?;
    Ok((total, start.elapsed()))
}

/// Median time of one operation alone through the bare library.
fn single_op(cpu: &CpuBackend, key: &Arc<CpuKey>, scheme: Scheme) -> Result<f64> {
    let engine = cpu.engine_for(scheme);
    let input = scheme.prepare(bench_input(scheme, 7))?;
    let mut t = Vec::new();
    let budget = Instant::now();
    while t.len() < 15 || (t.len() < 301 && budget.elapsed() < Duration::from_millis(300)) {
        let t0 = Instant::now();
        key.sign(engine, scheme, &input)?;
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

type Progress = (
    indicatif::ProgressBar,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
);

fn progress_bar(total: Duration, done: Arc<AtomicU64>) -> Progress {
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
    {
        bar.set_style(style);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let bar = bar.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut last = (Instant::now(), 0u64);
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(200));
                let n = done.load(Ordering::Relaxed);
                let dt = last.0.elapsed().as_secs_f64();
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!("{:.0} ops/s", (n - last.1) as f64 / dt.max(1e-3)));
                last = (Instant::now(), n);
            }
        })
    };
    (bar, stop, handle)
}

/// The CPU model and core count (the GPU backend adds its device name).
pub fn device_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} x{cores}")
}

/// The current time as RFC 3339 UTC, for reports.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), so no date crate is
    // needed for one timestamp.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl BenchReport {
    /// A human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} {} ({}) on {}: {:.0} ops/s, {} ops in {:.1}s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
            self.backend,
            self.scheme,
            self.kind,
            self.device,
            self.ops_per_sec,
            self.ops,
            self.seconds,
            self.p50_us,
            self.p99_us,
            self.p999_us,
        );
        // A remote server's batching is not seen from outside.
        if let Some(b) = self.mean_batch {
            s.push_str(&format!(", mean batch {b:.1}"));
        }
        if self.driver == crate::bench_issue::DRIVER {
            s.push_str(&format!(", {} CSRs per request", self.max_batch));
        }
        if self.ops > 0 && self.p50_us == 0.0 {
            s.push_str(
                "\n  no answer came inside the measured window, so there are no latency \
                 figures: raise --duration above one group's latency",
            );
        }
        if self.errors > 0 {
            s.push_str(&format!(", {} errors", self.errors));
            if let Some(e) = &self.first_error {
                s.push_str(&format!(" (first: {e})"));
            }
        }
        if let Some(c) = &self.cuda_check {
            s.push_str(&format!("\n  GPU ECDSA check: {c}"));
        }
        if let Some(m) = &self.cuda_rsa_mapping {
            s.push_str(&format!("\n  GPU RSA mapping: {m}"));
        }
        if let Some(e) = &self.engine {
            s.push_str(&format!("\n  library: {e}"));
        }
        if let Some(t) = self.single_op_us {
            s.push_str(&format!(", single op {t:.0} us"));
        }
        if let Some(b) = self.latency_budget_us {
            s.push_str(&format!(
                "\n  p99 budget (single op + max_wait + 200 us): {b:.0} us: {}",
                if self.p99_us <= b { "met" } else { "missed" }
            ));
        }
        if let (Some(r), Some(q)) = (self.raw_ops_per_sec, self.ratio) {
            s.push_str(&format!("\n  raw library: {r:.0} ops/s, ratio {q:.3}"));
        }
        s
    }

    /// Writes the JSON report.
    pub fn write_json(&self, path: &PathBuf) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot encode report: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::{CallerPolicy, CallerSched};

    #[test]
    fn caller_sched_parses_applies_and_restores() {
        assert_eq!("batch".parse::<CallerSched>().unwrap(), CallerSched::Batch);
        assert_eq!(
            "normal".parse::<CallerSched>().unwrap(),
            CallerSched::Normal
        );
        let e = "fifo".parse::<CallerSched>().unwrap_err().to_string();
        assert!(e.contains("--caller-sched") && e.contains("fifo"), "{e}");
        // On a thread of its own, so the test harness's threads are untouched.
        std::thread::spawn(|| {
            // SAFETY: reads the calling thread's policy.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            let before = policy();
            {
                let p = CallerPolicy::apply(CallerSched::Batch);
                assert_eq!(p.applied, CallerSched::Batch);
                assert_eq!(policy(), libc::SCHED_BATCH);
            }
            assert_eq!(policy(), before);
            {
                let _p = CallerPolicy::apply(CallerSched::Normal);
                assert_eq!(policy(), before);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn keyless_targets_parse_with_host_port_and_server_name() {
        use super::KeylessAddr;
        use rustls_pki_types::ServerName;
        let a = KeylessAddr::parse("keyless://[::1]:31247").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 31247));
        assert_eq!(a.dial(), "[::1]:31247");
        assert_eq!(a.default_server_name(), "::1");
        // An IP literal is an IP server name (matched against IP SANs).
        let name = ServerName::try_from(a.default_server_name()).unwrap();
        assert!(matches!(name, ServerName::IpAddress(_)), "{name:?}");
        super::check_server_name(&a.default_server_name()).unwrap();

        let a = KeylessAddr::parse("keyless://127.0.0.1:2407").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.dial().as_str()),
            ("127.0.0.1", 2407, "127.0.0.1:2407")
        );
        let name = ServerName::try_from(a.default_server_name()).unwrap();
        assert!(matches!(name, ServerName::IpAddress(_)), "{name:?}");

        let a = KeylessAddr::parse("keyless://keyless.example.org:2407").unwrap();
        assert_eq!(a.dial(), "keyless.example.org:2407");
        let name = ServerName::try_from(a.default_server_name()).unwrap();
        assert!(matches!(name, ServerName::DnsName(_)), "{name:?}");

        for (bad, says) in [
            ("keyless://localhost", "the port is missing"),
            ("keyless://localhost:", "the port is missing"),
            ("keyless://[::1]", "the port is missing"),
            ("keyless://:2407", "the host is missing"),
            ("keyless://localhost:0", "not a port"),
            ("keyless://localhost:70000", "not a port"),
            ("keyless://::1:2407", "in brackets"),
            ("keyless://[::1:2407", "unclosed"),
            ("keyless://[localhost]:2407", "not an IPv6 address"),
            ("keyless://localhost:2407/x", "only HOST:PORT"),
            ("https://localhost:2407", "expected keyless://"),
        ] {
            let e = KeylessAddr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
        let e = super::check_server_name("[::1]").unwrap_err().to_string();
        assert!(e.contains("--server-name"), "{e}");
    }

    #[test]
    fn issuance_targets_name_a_missing_port() {
        super::check_issue_target("https://localhost:8443").unwrap();
        super::check_issue_target("https://[::1]:8443").unwrap();
        super::check_issue_target("https://localhost").unwrap();
        for bad in [
            "https://localhost:",
            "https://[::1]:",
            "https://localhost:/api",
        ] {
            let e = super::check_issue_target(bad).unwrap_err().to_string();
            assert!(e.contains("port is missing"), "{bad}: {e}");
        }
        let e = super::check_issue_target("https://localhost:x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--target") && e.contains("port"), "{e}");
    }

    #[test]
    fn flags_a_run_does_not_use_are_refused_by_name() {
        use super::{RunKind, check_flags};
        check_flags(RunKind::InProcess, &["--rate", "--batch", "--backend"]).unwrap();
        check_flags(RunKind::Keyless, &["--ski", "--connections", "--ca"]).unwrap();
        check_flags(
            RunKind::Issuance,
            &["--batch", "--compare-raw", "--csr-kind"],
        )
        .unwrap();
        for (kind, flag, target) in [
            (RunKind::Keyless, "--rate", "keyless://"),
            (RunKind::Keyless, "--batch", "keyless://"),
            (RunKind::Keyless, "--kind", "keyless://"),
            (RunKind::Keyless, "--compare-raw", "keyless://"),
            (RunKind::Keyless, "--callbacks", "keyless://"),
            (RunKind::Keyless, "--backend", "keyless://"),
            (RunKind::Keyless, "--cuda-check", "keyless://"),
            (RunKind::Keyless, "--csr-kind", "keyless://"),
            (RunKind::Issuance, "--rate", "https://"),
            (RunKind::Issuance, "--ski", "https://"),
            (RunKind::Issuance, "--connections", "https://"),
            (RunKind::Issuance, "--cuda-rsa-mapping", "https://"),
            (RunKind::InProcess, "--connections", "no --target"),
            (RunKind::InProcess, "--spiffe-prefix", "no --target"),
        ] {
            let e = check_flags(kind, &[flag]).unwrap_err().to_string();
            assert!(e.starts_with(flag) && e.contains(target), "{flag}: {e}");
        }
        assert!(RunKind::of(Some("http://x:1")).is_err());
        assert_eq!(
            RunKind::of(Some("keyless://x:1")).unwrap(),
            RunKind::Keyless
        );
    }

    #[test]
    fn a_signature_shows_its_key_kind() {
        use super::kind_of_signature;
        use crate::scheme::{KeyKind, Scheme};
        use openssl::{ec, nid::Nid, pkey::PKey, rsa::Rsa, sign::Signer};
        let ec_sig = |nid: Nid| {
            let group = ec::EcGroup::from_curve_name(nid).unwrap();
            let key = ec::EcKey::generate(&group).unwrap();
            openssl::ecdsa::EcdsaSig::sign(&[7; 32], &key)
                .unwrap()
                .to_der()
                .unwrap()
        };
        let rsa_sig = |bits: u32| {
            let key = PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap();
            let mut s = Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
            s.sign_oneshot_to_vec(b"x").unwrap()
        };
        let ed = PKey::generate_ed25519().unwrap();
        let ed_sig = Signer::new_without_digest(&ed)
            .unwrap()
            .sign_oneshot_to_vec(b"x")
            .unwrap();
        let p256 = Scheme::EcdsaSecp256r1Sha256;
        for (sig, scheme, kind) in [
            (
                rsa_sig(2048),
                Scheme::RsaPssRsaeSha256,
                Some(KeyKind::Rsa2048),
            ),
            (
                rsa_sig(3072),
                Scheme::RsaPkcs1Sha256,
                Some(KeyKind::Rsa3072),
            ),
            (ec_sig(Nid::X9_62_PRIME256V1), p256, Some(KeyKind::P256)),
            (
                ec_sig(Nid::SECP384R1),
                Scheme::EcdsaSecp384r1Sha384,
                Some(KeyKind::P384),
            ),
            // A P-384 key answers a SHA-256 ECDSA request too.
            (ec_sig(Nid::SECP384R1), p256, Some(KeyKind::P384)),
            (ed_sig, Scheme::Ed25519, Some(KeyKind::Ed25519)),
            (vec![0; 100], Scheme::RsaPkcs1Sha256, None),
            (vec![0; 10], p256, None),
        ] {
            assert_eq!(
                kind_of_signature(scheme, &sig),
                kind,
                "{scheme:?} {}",
                sig.len()
            );
        }
    }

    #[test]
    fn timestamp_is_rfc3339() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
