//! `sigmux serve`: the engine plus its listeners. This module owns the
//! health and metrics endpoint; the keyless and issuance front doors add
//! their own listeners here.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::{self, KekUse};
use crate::audit::AuditLog;
use crate::ca::authority::CaState;
use crate::ca::rotation::{self, TickAction};
use crate::config::{Config, RotationSettings};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keyless::metrics::KeylessMetrics;
use crate::keyless::server::KeylessServer;
use crate::keys::KeyStore;

/// What the HTTP handlers share.
#[derive(Clone)]
struct Shared {
    engine: Arc<Engine>,
    keys: Arc<KeyStore>,
    keyless: Option<Arc<KeylessMetrics>>,
    issuance: Option<crate::api::issue::ApiState>,
}

/// The health and metrics router.
fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Answers without touching any key: 200 while some backend takes work.
async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    let report = s.engine.report();
    let backends: Vec<serde_json::Value> = report["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    serde_json::json!({
                        "name": b["name"],
                        "availability": b["availability"]["state"],
                        "health": b["health"]["state"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let ok = backends
        .iter()
        .any(|b| b["availability"] == "available" && b["health"] == "healthy");
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "queue_depth": s.engine.queue_depth(),
        "backends": backends,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let mut text = s.engine.metrics_text();
    if let Some(k) = &s.keyless {
        k.render(&mut text);
    }
    if let Some(i) = &s.issuance {
        i.render_metrics(&mut text).await;
    }
    text.push_str(&format!(
        "# HELP sigmux_keys Keys in the store.\n# TYPE sigmux_keys gauge\nsigmux_keys {}\n# HELP sigmux_build_info Build of the running binary.\n# TYPE sigmux_build_info gauge\nsigmux_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
        s.keys.list().len(),
        env!("CARGO_PKG_VERSION"),
        crate::COMMIT
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Says which keys named in `[[keyless.clients]]` the store does not hold:
/// a typo there would otherwise only show as `key_not_found` answers. Not
/// an error: a key generated later is picked up at SIGHUP.
fn warn_of_missing_keyless_keys(cfg: &Config, keys: &KeyStore) {
    for (i, rule) in cfg.keyless.clients.iter().enumerate() {
        for name in rule.keys.iter().filter(|k| *k != "*") {
            if keys.get(name).is_err() {
                say(format_args!(
                    "sigmux: warning: keyless.clients[{i}].keys names '{name}', which the key store does not hold (a key made later is picked up at SIGHUP)"
                ));
            }
        }
    }
}

/// Refuses caller rules whose prefixes lie in another trust domain than
/// the CA's: they could never match, so the caller would be refused every
/// SVID with nothing pointing at the config.
fn callers_in_trust_domain(settings: &crate::api::IssuanceSettings, ca_td: &str) -> Result<()> {
    for (i, rule) in settings.callers.iter().enumerate() {
        for (j, p) in rule.allowed_prefixes.iter().enumerate() {
            let td = p.as_id().trust_domain().name();
            if td != ca_td {
                return Err(Error::Invalid(format!(
                    "issuance.callers[{i}].allowed_prefixes[{j}]: '{}' is in trust domain {td}, but the CA's is {ca_td}: it can never match",
                    p.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// Runs `sigmux serve` until SIGINT or SIGTERM. `config_file` is where
/// `cfg` came from (none: the embedded defaults): SIGHUP reads the client
/// rules from it again.
pub async fn serve(cfg: Config, config_file: Option<std::path::PathBuf>) -> Result<()> {
    let keys = Arc::new(app::open_keys(&cfg, KekUse::CreateIfNew)?);
    let backends = app::start_backends(&cfg, "auto")?;
    let tokens = backends.pkcs11.clone();
    let engine = Arc::new(Engine::new(cfg.engine_config(), backends.all)?);
    let addr: SocketAddr = cfg.http_listen()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {addr} (http.listen): {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("http listener", e))?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        keys = keys.list().len(),
        backends = ?engine.backend_names(),
        "sigmux engine started"
    );
    // Turned true at SIGTERM/SIGINT: every listener closes and drains.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grace = cfg.shutdown_grace()?;
    let mut drains: Vec<(&str, tokio::task::JoinHandle<()>)> = Vec::new();
    // What SIGHUP reloads besides the keys.
    let mut tls_slots = Vec::new();
    let mut keyless_server = None;
    let keyless = match cfg.keyless_settings()? {
        None => {
            say(format_args!(
                "sigmux: keyless listener off (set keyless.cert, keyless.key and keyless.client_ca to start it)"
            ));
            None
        }
        Some((addr, settings)) => {
            warn_of_missing_keyless_keys(&cfg, &keys);
            let server = KeylessServer::new(&settings, engine.clone(), keys.clone())?;
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::Invalid(format!("cannot listen on {addr} (keyless.listen): {e}"))
            })?;
            let bound = l
                .local_addr()
                .map_err(|e| Error::io("keyless listener", e))?;
            say(format_args!("sigmux: keyless listening on {bound}"));
            let metrics = server.metrics.clone();
            tls_slots.push(server.tls());
            keyless_server = Some(server.clone());
            drains.push(("keyless", tokio::spawn(server.serve(l, stop_rx.clone()))));
            Some(metrics)
        }
    };
    let issuance = match cfg.issuance_settings()? {
        None => {
            say(format_args!(
                "sigmux: issuance listener off (set issuance.cert, issuance.key and issuance.client_ca to start it)"
            ));
            None
        }
        Some(settings) => {
            if let Some(state) = CaState::load(&cfg.data_dir)? {
                callers_in_trust_domain(&settings, state.trust_domain.as_str())?;
            }
            let started = crate::api::start(
                &settings,
                cfg.data_dir.clone(),
                engine.clone(),
                keys.clone(),
                stop_rx.clone(),
            )
            .await?;
            drains.push(("issuance", started.task));
            tls_slots.push(started.tls);
            say(format_args!(
                "sigmux: issuance listening on {}",
                started.addr
            ));
            Some(started.state)
        }
    };
    match cfg.rotation_settings()? {
        None => say(format_args!(
            "sigmux: scheduled CA rotation off (ca.auto_rotate = false)"
        )),
        Some(r) => {
            spawn_rotation(r, cfg.data_dir.clone(), engine.clone(), keys.clone());
        }
    }
    #[cfg(unix)]
    spawn_reload(
        keys.clone(),
        engine.clone(),
        tokens,
        tls_slots,
        Rules {
            config_file,
            data_dir: cfg.data_dir.clone(),
            keyless: keyless_server,
            issuance: issuance.clone(),
        },
    )?;
    #[cfg(not(unix))]
    drop((tls_slots, keyless_server, config_file, tokens));
    let shared = Shared {
        engine: engine.clone(),
        keys,
        keyless,
        issuance,
    };
    // Printed last, once every listener is up: scripts wait for this line.
    say(format_args!(
        "sigmux: serving /healthz and /metrics on http://{local}"
    ));
    let mut stopped = stop_rx.clone();
    let http = crate::api::serve_plain(listener, router(shared), cfg.http_limits()?, async move {
        crate::shutdown::stopped(&mut stopped).await;
    });
    drains.push((
        "http",
        tokio::spawn(async move {
            if let Err(e) = http.await {
                tracing::error!(error = %e, "http server failed");
            }
        }),
    ));
    shutdown_signal().await;
    say(format_args!(
        "sigmux: shutting down: listeners closed; answering requests in flight (up to {} s)",
        grace.as_secs()
    ));
    let _ = stop_tx.send(true);
    drain(drains, grace).await;
    say(format_args!("sigmux: stopped"));
    Ok(())
}

/// Waits for each listener's task to finish its connections, all within
/// `grace`; names on stderr those cut off when it runs out.
async fn drain(tasks: Vec<(&str, tokio::task::JoinHandle<()>)>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    for (name, task) in tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            say(format_args!(
                "sigmux: warning: {name} connections still open after {} s; closing them",
                grace.as_secs()
            ));
        }
    }
}

/// Starts the rotation schedule: every `check_every`, [`rotation_step`] on
/// a blocking thread (it signs through the engine and writes files).
fn spawn_rotation(
    r: RotationSettings,
    data_dir: std::path::PathBuf,
    engine: Arc<Engine>,
    keys: Arc<KeyStore>,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(r.check_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut audit: Option<Arc<AuditLog>> = None;
        let mut last_problem: Option<String> = None;
        loop {
            every.tick().await;
            let (dir, e, k, a) = (
                data_dir.clone(),
                engine.clone(),
                keys.clone(),
                audit.clone(),
            );
            let max_ttl = r.max_svid_ttl;
            let step = tokio::task::spawn_blocking(move || {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                rotation_step(&dir, &k, &e, a, max_ttl, now)
            })
            .await;
            let problem = match step {
                Ok(Ok((log, done))) => {
                    audit = log;
                    let mut problem = None;
                    for action in done {
                        match &action {
                            TickAction::Skipped { why } => problem = Some(why.clone()),
                            _ => {
                                tracing::info!(action = %action, "scheduled CA rotation");
                                say(format_args!("sigmux: {action}"));
                            }
                        }
                    }
                    problem
                }
                Ok(Err(e)) => Some(format!("scheduled CA rotation failed: {e}")),
                Err(e) => Some(format!("scheduled CA rotation panicked: {e}")),
            };
            // A standing problem is reported when it starts, not every check.
            if let Some(p) = &problem
                && last_problem.as_ref() != Some(p)
            {
                tracing::warn!("{p}");
                say(format_args!("sigmux: warning: {p}"));
            }
            last_problem = problem;
        }
    });
}

/// One check of the rotation schedule at `now` (Unix seconds): nothing
/// without a CA; otherwise [`rotation::tick`], with an audit record for
/// each thing done. The audit log is opened (its chain checked) before
/// anything changes, and handed back to be reused by the next check.
fn rotation_step(
    data_dir: &Path,
    keys: &KeyStore,
    engine: &Engine,
    audit: Option<Arc<AuditLog>>,
    max_svid_ttl: Duration,
    now: i64,
) -> Result<(Option<Arc<AuditLog>>, Vec<TickAction>)> {
    if !CaState::exists(data_dir) {
        return Ok((audit, Vec::new()));
    }
    let audit = match audit {
        Some(a) => a,
        None => Arc::new(AuditLog::open(&data_dir.join("audit.log"))?),
    };
    // Offline roots are never unlocked by the server: preparing is skipped.
    let done = rotation::tick(data_dir, keys, engine, None, max_svid_ttl, now)?;
    let records: Vec<_> = done.iter().filter_map(TickAction::audit_record).collect();
    audit.append_many(records)?;
    Ok((Some(audit), done))
}

/// What SIGHUP reads from the config file again.
struct Rules {
    /// The file (none: the embedded defaults, which never change).
    config_file: Option<std::path::PathBuf>,
    /// The data directory in use (`--data-dir` may have overridden the
    /// file's).
    data_dir: std::path::PathBuf,
    /// The keyless listener, whose client rules are replaced.
    keyless: Option<Arc<KeylessServer>>,
    /// The issuance listener, whose caller rules are replaced.
    issuance: Option<crate::api::issue::ApiState>,
}

impl Rules {
    /// Reads the config file again and gives the keyless listener its
    /// client rules and the issuance listener its caller rules; on any
    /// error the rules in force stay. Other settings take a restart.
    fn reload(&self) {
        let Some(path) = &self.config_file else {
            return;
        };
        if self.keyless.is_none() && self.issuance.is_none() {
            return;
        }
        let cfg = Config::load(Some(path)).map(|mut c| {
            c.data_dir.clone_from(&self.data_dir);
            c
        });
        if let Some(server) = &self.keyless {
            Self::reload_keyless(path, server, cfg.as_ref());
        }
        if let Some(api) = &self.issuance {
            Self::reload_issuance(path, api, cfg.as_ref(), &self.data_dir);
        }
    }

    fn reload_issuance(
        path: &Path,
        api: &crate::api::issue::ApiState,
        cfg: std::result::Result<&Config, &Error>,
        data_dir: &Path,
    ) {
        let loaded = cfg.map_err(Error::to_string).and_then(|c| {
            let s = c.issuance_settings().map_err(|e| e.to_string())?;
            if let (Some(s), Ok(Some(state))) = (&s, CaState::load(data_dir)) {
                callers_in_trust_domain(s, state.trust_domain.as_str())
                    .map_err(|e| e.to_string())?;
            }
            Ok(s)
        });
        match loaded {
            Ok(Some(settings)) => {
                let n = settings.callers.len();
                api.set_callers(settings.callers);
                say(format_args!(
                    "sigmux: issuance caller rules reloaded from {} ({n} rule(s))",
                    path.display()
                ));
            }
            Ok(None) => say(format_args!(
                "sigmux: issuance caller rules not reloaded: {} no longer configures the issuance listener (a restart applies that); the rules in force stay",
                path.display()
            )),
            Err(e) => say(format_args!(
                "sigmux: issuance caller rules not reloaded, the rules in force stay: {e}"
            )),
        }
    }

    fn reload_keyless(
        path: &Path,
        server: &KeylessServer,
        cfg: std::result::Result<&Config, &Error>,
    ) {
        let loaded = cfg
            .map_err(Error::to_string)
            .and_then(|c| c.keyless_settings().map_err(|e| e.to_string()));
        match loaded {
            Ok(Some((_, settings))) => {
                let n = settings.policy.len();
                server.set_policy(settings.policy);
                say(format_args!(
                    "sigmux: keyless client rules reloaded from {} ({n} rule(s))",
                    path.display()
                ));
            }
            Ok(None) => say(format_args!(
                "sigmux: keyless client rules not reloaded: {} no longer configures the keyless listener (a restart applies that); the rules in force stay",
                path.display()
            )),
            Err(e) => say(format_args!(
                "sigmux: keyless client rules not reloaded, the rules in force stay: {e}"
            )),
        }
    }
}

/// On SIGHUP, rebuilds each listener's TLS configuration from its files
/// (a renewed server certificate, a new client CA; on error the old one
/// stays), reads the keyless client rules from the config file again, and
/// brings the key store in line with its directory (keys generated,
/// imported or deleted by the CLI since), saying what changed, after
/// trying at once to bring back a PKCS#11 token that cannot be read (and
/// one that comes back is tried by the engine at once). The keys line
/// comes last.
#[cfg(unix)]
fn spawn_reload(
    keys: Arc<KeyStore>,
    engine: Arc<Engine>,
    tokens: Vec<Arc<crate::backend::pkcs11::Pkcs11Backend>>,
    tls: Vec<Arc<crate::tls_reload::TlsSlot>>,
    rules: Rules,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| Error::Invalid(format!("cannot watch for SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            for slot in &tls {
                let s = slot.clone();
                match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(Ok(())) => say(format_args!("sigmux: {} TLS reloaded", slot.what())),
                    Ok(Err(e)) => say(format_args!(
                        "sigmux: {} TLS not reloaded, the old configuration stays: {e}",
                        slot.what()
                    )),
                    Err(e) => tracing::error!(error = %e, "TLS reload failed"),
                }
            }
            rules.reload();
            for t in &tokens {
                let b = t.clone();
                match tokio::task::spawn_blocking(move || b.recover_now()).await {
                    Ok(None) => {}
                    Ok(Some(Ok(()))) => {
                        // Without this, the engine would wait out its
                        // back-off (up to 5 minutes) before trying it.
                        engine.retry_now(crate::backend::Backend::name(&**t));
                        say(format_args!(
                            "sigmux: PKCS#11 token '{}' usable again (slot {})",
                            t.token_label(),
                            t.slot_id()
                        ))
                    }
                    Ok(Some(Err(e))) => say(format_args!(
                        "sigmux: PKCS#11 token '{}' still cannot be used: {e}",
                        t.token_label()
                    )),
                    Err(e) => tracing::error!(error = %e, "PKCS#11 token recovery failed"),
                }
            }
            let store = keys.clone();
            match tokio::task::spawn_blocking(move || store.rescan()).await {
                Ok(Ok(r)) => {
                    say(format_args!(
                        "sigmux: keys reloaded: {} added {:?}, {} replaced {:?}, {} removed {:?}, {} unreadable",
                        r.added.len(),
                        r.added,
                        r.replaced.len(),
                        r.replaced,
                        r.removed.len(),
                        r.removed,
                        r.failed.len()
                    ));
                    for f in &r.failed {
                        tracing::warn!(error = %f, "key file not loaded at reload; the key held before (if any) stays");
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "key reload failed; the keys held stay"),
                Err(e) => tracing::error!(error = %e, "key reload failed; the keys held stay"),
            }
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Prints a line for the operator on stderr; a closed stderr is ignored
/// rather than taking the server down.
fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{args}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{InitOptions, init};
    use crate::ca::spiffe::TrustDomain;

    #[test]
    fn rotation_step_records_what_it_did_in_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testutil::key_store(dir.path());
        let engine = crate::testutil::cpu_engine();
        let hour = Duration::from_secs(3600);

        // No CA yet: nothing, and no audit log is made.
        let (a, done) = rotation_step(dir.path(), &store, &engine, None, hour, 0).unwrap();
        assert!(a.is_none() && done.is_empty());
        assert!(!dir.path().join("audit.log").exists());

        let td = TrustDomain::parse("example.org").unwrap();
        let st = init(dir.path(), &store, &engine, &InitOptions::new(td), None).unwrap();
        let int = &st.intermediates[0];
        let life = int.not_after - int.not_before;
        let (a, done) =
            rotation_step(dir.path(), &store, &engine, None, hour, int.not_before + 1).unwrap();
        assert!(done.is_empty());
        let half = int.not_before + life / 2;
        let (a, done) = rotation_step(dir.path(), &store, &engine, a, hour, half).unwrap();
        assert!(matches!(done.as_slice(), [TickAction::Prepared { .. }]));
        let switch = int.not_before + life * 5 / 6;
        let (a, _) = rotation_step(dir.path(), &store, &engine, a, hour, switch).unwrap();
        let (_, done) = rotation_step(dir.path(), &store, &engine, a, hour, switch + 3600).unwrap();
        // The intermediate and the JWT key retire together; both keys go.
        assert!(matches!(
            done.as_slice(),
            [
                TickAction::Retired(_),
                TickAction::KeyDestroyed(_),
                TickAction::KeyDestroyed(_)
            ]
        ));

        let log = dir.path().join("audit.log");
        let v = crate::audit::verify(&log).unwrap();
        assert_eq!(v.records, 5);
        let text = std::fs::read_to_string(&log).unwrap();
        let events: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
            .collect();
        assert_eq!(
            events,
            [
                "\"ca_rotate_prepare\"",
                "\"ca_rotate_activate\"",
                "\"ca_rotate_retire\"",
                "\"key.destroy\"",
                "\"key.destroy\""
            ]
        );
    }
}
