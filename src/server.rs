//! `sigmux serve`: the engine plus its listeners. This module owns the
//! health and metrics endpoint; the keyless and issuance front doors add
//! their own listeners here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::{self, KekUse};
use crate::config::Config;
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

/// Runs `sigmux serve` until SIGINT or SIGTERM.
pub async fn serve(cfg: Config) -> Result<()> {
    let keys = Arc::new(app::open_keys(&cfg, KekUse::CreateIfNew)?);
    let engine = app::start_engine(&cfg, cfg.engine_config(), "auto")?;
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
    let keyless = match cfg.keyless_settings()? {
        None => {
            say(format_args!(
                "sigmux: keyless listener off (set keyless.cert, keyless.key and keyless.client_ca to start it)"
            ));
            None
        }
        Some((addr, settings)) => {
            let server = KeylessServer::new(&settings, engine.clone(), keys.clone())?;
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::Invalid(format!("cannot listen on {addr} (keyless.listen): {e}"))
            })?;
            let bound = l
                .local_addr()
                .map_err(|e| Error::io("keyless listener", e))?;
            say(format_args!("sigmux: keyless listening on {bound}"));
            let metrics = server.metrics.clone();
            tokio::spawn(server.serve(l));
            Some(metrics)
        }
    };
    match cfg.issuance_settings()? {
        None => say(format_args!(
            "sigmux: issuance listener off (set issuance.cert, issuance.key and issuance.client_ca to start it)"
        )),
        Some(settings) => {
            let bound = crate::api::start(
                &settings,
                cfg.data_dir.clone(),
                engine.clone(),
                keys.clone(),
            )
            .await?;
            say(format_args!("sigmux: issuance listening on {bound}"));
        }
    }
    let shared = Shared {
        engine: engine.clone(),
        keys,
        keyless,
    };
    // Printed last, once every listener is up: scripts wait for this line.
    say(format_args!(
        "sigmux: serving /healthz and /metrics on http://{local}"
    ));
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::Invalid(format!("http server failed: {e}")))?;
    say(format_args!("sigmux: shutting down"));
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
