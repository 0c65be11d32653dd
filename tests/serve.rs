//! `sigmux serve` started as a user would, probed with curl.

mod common;

use std::process::Command;

use common::{Served as Server, serve_until_http};

fn start(dir: &std::path::Path, config: &str) -> Server {
    let cfg = dir.join("sigmux.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigmux"));
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("serve");
    serve_until_http(cmd, |_| {})
}

fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn serve_creates_its_data_dir_and_answers_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(
        dir.path(),
        "[http]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_batch = 32\n",
    );
    let earlier = &s.early;
    assert!(
        earlier
            .iter()
            .any(|l| l.contains("created key-encryption key at")
                && l.contains(&dir.path().join("data/kek").display().to_string())),
        "{earlier:?}"
    );
    assert!(dir.path().join("data/kek").exists());
    let (code, body) = curl(&format!("http://{}/healthz", s.addr));
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["backends"][0]["name"], "cpu");
    assert_eq!(health["backends"][0]["health"], "healthy");
    let (code, body) = curl(&format!("http://{}/metrics", s.addr));
    assert_eq!(code, 200);
    for want in [
        "# TYPE sigmux_engine_requests_total counter",
        "sigmux_engine_queue_depth 0",
        "sigmux_backend_healthy{backend=\"cpu\"} 1",
        "sigmux_keys 0",
        "sigmux_build_info{",
    ] {
        assert!(body.contains(want), "missing {want}");
    }
    let (code, _) = curl(&format!("http://{}/nope", s.addr));
    assert_eq!(code, 404);
    // SIGTERM stops it cleanly.
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_with_a_bad_config_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[engine]\nqueue_capacity = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("sigmux: error: config: "), "{err}");
    assert!(err.contains("engine.queue_capacity"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn serve_reports_a_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[http]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (http.listen)")),
        "{err}"
    );
}
