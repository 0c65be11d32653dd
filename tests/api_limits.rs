//! The issuance API's limits end to end: `sigmux serve` with an
//! `[issuance]` listener whose PKI comes from the openssl CLI. A caller that
//! trickles its request head or body is cut off while others are served,
//! connections past `max_connections` are closed at once, the CRL is signed
//! once and served from the cache until a revocation changes it, and a DER
//! CSR sent as base64 is issued. Also the plain (metrics) listener's
//! [`sigmux::api::serve_plain`].

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

mod common;
use common::*;

/// How long a test waits for something the server must do in about a
/// second; far more than needed, so a slow machine does not fail it.
const PATIENCE: Duration = Duration::from_secs(20);

/// A CA, a server certificate, a caller, `sigmux.toml` with `extra` in
/// `[issuance]`, and `ca init`.
fn setup(dir: &Path, extra: &str) {
    ca(dir, "ca");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "caller", "URI:spiffe://example.org/issuer");
    std::fs::write(
        dir.join("sigmux.toml"),
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             client_ca = \"ca.pem\"\nmax_items = 4\nmax_ttl_seconds = 600\n{extra}\
             [[issuance.callers]]\nid = \"spiffe://example.org/issuer\"\n\
             allowed_prefixes = [\"spiffe://example.org/ns\"]\n"
        ),
    )
    .unwrap();
    sigmux(dir, &["ca", "init", "--trust-domain", "example.org"]);
}

/// A CSR (PEM) for a new P-256 key, made by `openssl req`.
fn ec_csr(dir: &Path) -> String {
    ec_key(dir, "w.key");
    openssl(
        dir,
        &[
            "req", "-new", "-key", "w.key", "-subj", "/CN=x", "-out", "w.csr",
        ],
    );
    std::fs::read_to_string(dir.join("w.csr")).unwrap()
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A TLS client configuration presenting `caller`'s certificate.
fn tls_client(dir: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("caller.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("caller.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A mutual-TLS connection to the issuance listener, handshake done.
fn connect_tls(cfg: &Arc<rustls::ClientConfig>, port: u16) -> Tls {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let conn =
        rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// Reads until the server closes the connection; returns what came and
/// whether it was closed (rather than still open after [`PATIENCE`]).
fn read_until_closed(r: &mut impl Read) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, false);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset, or a TLS stream cut without close_notify.
            Err(_) => return (got, true),
        }
    }
}

#[test]
fn slow_head_and_slow_body_are_cut_off_while_others_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(
        dir,
        "header_timeout_seconds = 1\nbody_timeout_seconds = 2\n",
    );
    let (_server, addr) = start_server(dir);
    let port = port(&addr);
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let cfg = tls_client(dir);

    // An authenticated caller that sends half a request head and stops.
    let mut slow_head = connect_tls(&cfg, port);
    slow_head
        .write_all(b"GET /v1/bundle.pem HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    slow_head.flush().unwrap();
    let slow_head = std::thread::spawn(move || {
        let started = Instant::now();
        let (got, closed) = read_until_closed(&mut slow_head);
        (got, closed, started.elapsed())
    });
    // One that sends its body's first bytes and stops.
    let mut slow_body = connect_tls(&cfg, port);
    slow_body
        .write_all(
            b"POST /v1/jwtsvids HTTP/1.1\r\nHost: localhost\r\n\
              content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"spiffe_id\":",
        )
        .unwrap();
    slow_body.flush().unwrap();
    let slow_body = std::thread::spawn(move || read_until_closed(&mut slow_body));

    // Meanwhile a normal caller is served.
    let (code, bundle) = curl(dir, Some("caller"), "GET", &url("/v1/bundle.pem"), None);
    assert_eq!(code, 200, "{bundle}");
    assert!(bundle.contains("BEGIN CERTIFICATE"), "{bundle}");
    // So is one that sends its head in pieces, each within the timeout.
    let mut pieces = connect_tls(&cfg, port);
    pieces.write_all(b"GET /v1/bundle.pem HT").unwrap();
    pieces.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pieces
        .write_all(b"TP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    pieces.flush().unwrap();
    let (got, closed) = read_until_closed(&mut pieces);
    let text = String::from_utf8_lossy(&got);
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text}");

    // The slow head got no answer: the connection was closed after the
    // header timeout.
    let (got, closed, after) = slow_head.join().unwrap();
    assert!(
        closed,
        "a caller trickling its request head was still connected after {after:?}"
    );
    assert!(
        got.is_empty(),
        "unexpected answer: {}",
        String::from_utf8_lossy(&got)
    );
    // The slow body got 408 with a JSON error naming the limit, then the
    // connection was closed.
    let (got, closed) = slow_body.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed,
        "a caller trickling its body stayed connected: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("\"body_timeout\"") && text.contains("issuance.body_timeout_seconds"),
        "{text}"
    );

    // A keep-alive connection is served, then closed once idle for the
    // header timeout.
    let mut idle = connect_tls(&cfg, port);
    idle.write_all(b"GET /v1/bundle.pem HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    idle.flush().unwrap();
    let (got, closed) = read_until_closed(&mut idle);
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "an idle keep-alive connection stayed open: {text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");

    // The refused body is in the audit log like any refused request.
    let log = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    assert!(log.contains("\"code\":\"body_timeout\""), "{log}");
    sigmux::audit::verify(&dir.join("data/audit.log")).unwrap();
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, "max_connections = 2\n");
    let (_server, addr) = start_server(dir);
    let port = port(&addr);
    let url = format!("https://localhost:{port}/v1/bundle.pem");

    // Two connections that have not even started TLS hold both slots.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Give the server time to accept both before the third arrives.
    std::thread::sleep(Duration::from_millis(500));
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    third.set_read_timeout(Some(PATIENCE)).unwrap();
    let (got, closed) = read_until_closed(&mut third);
    assert!(closed, "a connection past max_connections was kept open");
    assert!(got.is_empty());
    // A real caller is turned away too while both slots are taken.
    let (code, err) = curl(dir, Some("caller"), "GET", &url, None);
    assert_eq!(code, 0, "served past the connection cap: {err}");

    // Once the two go, callers are served again.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, body) = curl(dir, Some("caller"), "GET", &url, None);
        if code == 200 {
            assert!(body.contains("BEGIN CERTIFICATE"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served after the held connections closed: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `openssl crl -text` of `file` (DER), checked against `bundle.pem`.
fn crl_text(dir: &Path, file: &str) -> String {
    let out = run(
        dir,
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            file,
            "-CAfile",
            "bundle.pem",
            "-noout",
            "-text",
        ],
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && all.contains("verify OK"), "{all}");
    all
}

#[test]
fn der_csr_as_base64_is_issued_and_the_crl_is_cached_until_a_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, "");
    let (_server, addr) = start_server(dir);
    let port = port(&addr);
    let url = |p: &str| format!("https://localhost:{port}{p}");

    // DER CSRs made by openssl, sent as standard base64: on one line, and
    // wrapped at 64 columns as `openssl base64` writes it.
    ec_key(dir, "w.key");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "w.key",
            "-subj",
            "/CN=ignored",
            "-outform",
            "DER",
            "-out",
            "w.der",
        ],
    );
    let der = std::fs::read(dir.join("w.der")).unwrap();
    assert_eq!(der[0], 0x30);
    use base64::Engine as _;
    let one_line = base64::engine::general_purpose::STANDARD.encode(&der);
    let wrapped = openssl(dir, &["base64", "-in", "w.der"]);
    assert!(wrapped.trim().contains('\n'), "{wrapped}");
    let body = serde_json::json!({"items": [
        {"csr": one_line, "spiffe_id": "spiffe://example.org/ns/der/one"},
        {"csr": wrapped, "spiffe_id": "spiffe://example.org/ns/der/wrapped"},
        {"csr": "this is *not* base64", "spiffe_id": "spiffe://example.org/ns/der/bad"},
    ]})
    .to_string();
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &url("/v1/x509svids:batch"),
        Some(&body),
    );
    assert_eq!(code, 200, "{text}");
    let v = json(&text);
    let results = v["results"].as_array().unwrap();
    for (i, id) in [
        "spiffe://example.org/ns/der/one",
        "spiffe://example.org/ns/der/wrapped",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(results[i]["status"], "ok", "{text}");
        let chain = results[i]["svid_chain_pem"].as_str().unwrap();
        std::fs::write(dir.join("svid.pem"), chain).unwrap();
        let cert = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-text"]);
        assert!(cert.contains(&format!("URI:{id}")), "{cert}");
        // The certificate carries the CSR's key.
        let want = openssl(dir, &["pkey", "-in", "w.key", "-pubout"]);
        let got = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-pubkey"]);
        assert_eq!(got, want);
    }
    assert_eq!(results[2]["status"], "error", "{text}");
    assert_eq!(results[2]["code"], "csr_malformed", "{text}");
    assert!(
        results[2]["message"].as_str().unwrap().contains("base64"),
        "{text}"
    );
    let serial = results[0]["serial"].as_str().unwrap().to_string();

    // `sigmux issue --csr file.der` sends the same thing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args([
            "issue",
            "--server",
            &format!("https://localhost:{port}"),
            "--ca",
            "ca.pem",
            "--cert",
            "caller.pem",
            "--key",
            "caller.key",
            "--csr",
            "w.der",
            "--spiffe-id",
            "spiffe://example.org/ns/der/cli",
            "--out",
            "out",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sigmux issue: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = openssl(dir, &["x509", "-in", "out/w.pem", "-noout", "-text"]);
    assert!(
        cert.contains("URI:spiffe://example.org/ns/der/cli"),
        "{cert}"
    );

    // The CRL: fetched twice, more than a second apart (a CRL signed anew
    // would carry a new thisUpdate), the same DER both times.
    let (code, bundle) = curl(dir, Some("caller"), "GET", &url("/v1/bundle.pem"), None);
    assert_eq!(code, 200, "{bundle}");
    std::fs::write(dir.join("bundle.pem"), &bundle).unwrap();
    let state = json(&std::fs::read_to_string(dir.join("data/ca/state.json")).unwrap());
    let int_serial = state["intermediates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let crl_url = url(&format!("/v1/crl/{int_serial}"));
    let fetch = |name: &str| {
        let (code, _) = curl(dir, Some("caller"), "GET", &crl_url, None);
        assert_eq!(code, 200);
        std::fs::copy(dir.join("body.out"), dir.join(name)).unwrap();
        std::fs::read(dir.join(name)).unwrap()
    };
    let first = fetch("crl1.der");
    std::thread::sleep(Duration::from_millis(1500));
    let second = fetch("crl2.der");
    assert_eq!(first, second, "the CRL was signed again without a change");
    let text = crl_text(dir, "crl1.der");
    assert!(
        !text.to_lowercase().contains(&serial.to_lowercase()),
        "{text}"
    );

    // A revocation (by the CLI, next to the running server) gives a new
    // CRL listing the serial, which is then served from the cache in turn.
    sigmux(dir, &["ca", "revoke", "--serial", &serial]);
    let third = fetch("crl3.der");
    assert_ne!(third, first);
    let text = crl_text(dir, "crl3.der");
    assert!(
        text.to_lowercase()
            .contains(&format!("serial number: {}", serial.to_lowercase())),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fetch("crl4.der"), third);
}

/// A plain HTTP client's request; returns what came back before the close.
///
/// A connection the server closed at once (past its cap) may refuse the
/// request's write with a reset or broken pipe: that is "closed, nothing
/// came back", as the reads would have said.
fn plain_get(port: u16, path: &str) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    match s.write_all(request.as_bytes()) {
        Ok(()) => read_until_closed(&mut s),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) =>
        {
            (Vec::new(), true)
        }
        Err(e) => panic!("writing the request: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_plain_has_timeouts_a_connection_cap_and_a_graceful_stop() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let limits = sigmux::api::ServeLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(30),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sigmux::api::serve_plain(listener, router, limits, async {
        let _ = stopped.await;
    }));
    tokio::task::spawn_blocking(move || {
        let (got, closed) = plain_get(port, "/healthz");
        let text = String::from_utf8_lossy(&got);
        assert!(
            closed && text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );

        // Half a head: closed after the header timeout, no answer. The
        // second slot stays free, so a normal request is served meanwhile.
        let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
        slow.set_read_timeout(Some(PATIENCE)).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        // (Retried: the first request's slot may not be back yet.)
        let deadline = Instant::now() + PATIENCE;
        let got = loop {
            let (got, _) = plain_get(port, "/healthz");
            if !got.is_empty() || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        let (got, closed) = read_until_closed(&mut slow);
        assert!(
            closed && got.is_empty(),
            "{}",
            String::from_utf8_lossy(&got)
        );

        // Two connections held open: a third is closed unanswered. (A
        // moment first, for the server to release the slots of the above.)
        std::thread::sleep(Duration::from_millis(300));
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let (got, closed) = plain_get(port, "/healthz");
        assert!(
            closed && got.is_empty(),
            "{}",
            String::from_utf8_lossy(&got)
        );
        drop(held);
    })
    .await
    .unwrap();

    // Stopping: an idle keep-alive connection is closed and serve_plain
    // returns. (Retried: the server may not have seen the held two close
    // yet, and then refuses this one as over the cap.)
    let idle = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut buf = [0u8; 512];
            let n = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .and_then(|()| s.read(&mut buf))
                .unwrap_or(0);
            if n > 0 {
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no keep-alive connection served after the held ones closed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("serve_plain did not return after the stop")
        .unwrap()
        .unwrap();
    let mut idle = idle;
    let (_, closed) = tokio::task::spawn_blocking(move || read_until_closed(&mut idle))
        .await
        .unwrap();
    assert!(closed);
}

#[test]
fn limits_have_documented_defaults_and_bad_values_name_the_field() {
    use sigmux::api::ServeLimits;
    use sigmux::config::{Config, DEFAULT_TOML};
    let secs = Duration::from_secs;
    let embedded = Config::parse(DEFAULT_TOML, "embedded").unwrap();
    let empty = Config::parse("", "empty").unwrap();
    let http = ServeLimits {
        max_connections: 256,
        header_timeout: secs(10),
        write_timeout: secs(30),
    };
    assert_eq!(embedded.http_limits().unwrap(), http);
    assert_eq!(empty.http_limits().unwrap(), http);
    let (e, d) = (&embedded.issuance, &empty.issuance);
    assert_eq!(
        (
            e.max_connections,
            e.max_concurrent_batches,
            e.header_timeout_seconds,
            e.body_timeout_seconds,
            e.write_timeout_seconds
        ),
        (1024, 32, 10, 30, 30)
    );
    assert_eq!(
        (
            d.max_connections,
            d.max_concurrent_batches,
            d.header_timeout_seconds,
            d.body_timeout_seconds,
            d.write_timeout_seconds
        ),
        (1024, 32, 10, 30, 30)
    );
    let on = "[issuance]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n";
    let s = Config::parse(on, "t")
        .unwrap()
        .issuance_settings()
        .unwrap()
        .unwrap();
    assert_eq!(
        s.limits,
        ServeLimits {
            max_connections: 1024,
            header_timeout: secs(10),
            write_timeout: secs(30),
        }
    );
    assert_eq!(
        (
            s.body_timeout,
            s.max_concurrent_batches,
            s.handshake_timeout
        ),
        (secs(30), 32, secs(10))
    );
    let s = Config::parse(
        &format!("{on}max_connections = 3\nheader_timeout_seconds = 1\nbody_timeout_seconds = 2\nwrite_timeout_seconds = 4\nmax_concurrent_batches = 5\nhandshake_timeout_seconds = 6\n"),
        "t",
    )
    .unwrap()
    .issuance_settings()
    .unwrap()
    .unwrap();
    assert_eq!(
        s.limits,
        ServeLimits {
            max_connections: 3,
            header_timeout: secs(1),
            write_timeout: secs(4),
        }
    );
    assert_eq!(
        (
            s.body_timeout,
            s.max_concurrent_batches,
            s.handshake_timeout
        ),
        (secs(2), 5, secs(6))
    );
    for (toml, field) in [
        (
            "[http]\nmax_connections = 0\n".to_string(),
            "http.max_connections",
        ),
        (
            "[http]\nheader_timeout_seconds = 0\n".into(),
            "http.header_timeout_seconds",
        ),
        (
            "[http]\nwrite_timeout_seconds = 3601\n".into(),
            "http.write_timeout_seconds",
        ),
        (
            format!("{on}max_connections = 0\n"),
            "issuance.max_connections",
        ),
        (
            format!("{on}max_concurrent_batches = 0\n"),
            "issuance.max_concurrent_batches",
        ),
        (
            format!("{on}header_timeout_seconds = 0\n"),
            "issuance.header_timeout_seconds",
        ),
        (
            format!("{on}handshake_timeout_seconds = 0\n"),
            "issuance.handshake_timeout_seconds",
        ),
        (
            format!("{on}svids_per_caller_per_second = -1\n"),
            "issuance.svids_per_caller_per_second",
        ),
        (
            format!("{on}max_refusal_records_per_minute = 10000001\n"),
            "issuance.max_refusal_records_per_minute",
        ),
        (
            format!("{on}body_timeout_seconds = 0\n"),
            "issuance.body_timeout_seconds",
        ),
        (
            format!("{on}write_timeout_seconds = 0\n"),
            "issuance.write_timeout_seconds",
        ),
    ] {
        let e = Config::parse(&toml, "t")
            .err()
            .unwrap_or_else(|| panic!("{toml} accepted"));
        assert!(e.to_string().contains(field), "{toml}: {e}");
    }
}

/// A refused item whose SPIFFE ID is far longer than any ID may be is
/// recorded with its first 2048 bytes only: the audit log stays within the
/// line length its own check reads, so it still verifies and the server
/// still starts on it (a whole 2 MiB ID on one line once made the log fail
/// its check and `serve` refuse to start).
#[test]
fn an_oversized_spiffe_id_is_refused_and_the_audit_log_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, "");
    // Room in a request's body (16 KiB per item) for a 2 MiB ID, as the
    // default of 1,000 items gives.
    let toml = std::fs::read_to_string(dir.join("sigmux.toml")).unwrap();
    std::fs::write(
        dir.join("sigmux.toml"),
        toml.replace("max_items = 4\n", "max_items = 200\n"),
    )
    .unwrap();
    let (server, addr) = start_server(dir);
    let port = port(&addr);
    let csr = ec_csr(dir);
    let huge = format!("spiffe://example.org/ns/{}", "a".repeat(2 << 20));
    let body = serde_json::json!({"items": [{"csr": csr, "spiffe_id": huge}]}).to_string();
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &format!("https://localhost:{port}/v1/x509svids:batch"),
        Some(&body),
    );
    assert_eq!(code, 200, "{}", &text[..text.len().min(500)]);
    let v = json(&text);
    assert_eq!(v["results"][0]["status"], "error", "{text}");
    drop(server);

    let log = dir.join("data/audit.log");
    // Fails the test unless the chain verifies.
    sigmux(dir, &["audit", "verify", log.to_str().unwrap()]);
    let text = std::fs::read_to_string(&log).unwrap();
    let refused = text
        .lines()
        .map(json)
        .find(|r| r["event"] == "svid_refused")
        .expect("the refused item is recorded");
    let id = refused["spiffe_id"].as_str().unwrap();
    assert!(id.starts_with("spiffe://example.org/ns/aaa") && id.ends_with("..."));
    assert_eq!(id.len(), 2048 + 3);
    // And the server starts again on that log.
    let (_again, _) = start_server(dir);
}

#[test]
fn refusals_past_the_budget_are_summarized_in_the_audit_log_and_counted_in_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, "max_refusal_records_per_minute = 2\n");
    let (mut server, addr, http) = start_server_with_http(dir);
    let url = format!("https://localhost:{}/v1/x509svids:batch", port(&addr));
    let csr = ec_csr(dir);
    // One item the caller may have, three outside its prefix.
    let items: Vec<_> = ["ns/a", "other/b", "other/c", "other/d"]
        .iter()
        .map(|p| serde_json::json!({"csr": csr, "spiffe_id": format!("spiffe://example.org/{p}")}))
        .collect();
    let body = serde_json::json!({ "items": items }).to_string();
    let (code, text) = curl(dir, Some("caller"), "POST", &url, Some(&body));
    assert_eq!(code, 200, "{text}");
    let statuses: Vec<_> = json(&text)["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["ok", "error", "error", "error"], "{text}");
    // A whole request refused: past the budget too.
    let (code, _) = curl(dir, Some("caller"), "POST", &url, Some("{not json"));
    assert_eq!(code, 400);

    // The same on /metrics, with the CA's expiry dates.
    let (code, text) = curl(dir, None, "GET", &format!("http://{http}/metrics"), None);
    assert_eq!(code, 200, "{text}");
    let value = |series: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} not in {text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("sigmux_issuance_svids_issued_total{kind=\"x509\"}"),
        1
    );
    assert_eq!(
        value("sigmux_issuance_refused_total{code=\"forbidden\"}"),
        3
    );
    assert_eq!(
        value("sigmux_issuance_refused_total{code=\"bad_request\"}"),
        1
    );
    assert_eq!(value("sigmux_issuance_refusal_records_held_back_total"), 2);
    assert_eq!(value("sigmux_issuance_batch_seconds_count"), 2);
    assert_eq!(value("sigmux_issuance_connections_rejected_total"), 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(value("sigmux_ca_root_not_after_timestamp_seconds") > now);
    let active: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("sigmux_ca_intermediate_not_after_timestamp_seconds{")
                && l.contains("status=\"active\"")
        })
        .collect();
    assert_eq!(active.len(), 1, "{text}");
    let expires: i64 = active[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(expires > now, "{}", active[0]);
    // Every sample line is `name{labels} value` or `name value`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
        assert!(v.parse::<f64>().is_ok(), "{l}");
        assert!(
            !series.contains(' ') && (!series.contains('{') || series.ends_with('}')),
            "{l}"
        );
    }

    // SIGTERM: the windows still open are summarized before the exit.
    let pid = server.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let log = dir.join("data/audit.log");
    sigmux(dir, &["audit", "verify", log.to_str().unwrap()]);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(json)
        .collect();
    let of = |event: &str| -> Vec<&serde_json::Value> {
        records.iter().filter(|r| r["event"] == event).collect()
    };
    assert_eq!(of("svid_issue").len(), 1);
    assert_eq!(
        of("svid_issue")[0]["spiffe_id"],
        "spiffe://example.org/ns/a"
    );
    let refused = of("svid_refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["spiffe_id"], "spiffe://example.org/other/b");
    assert!(of("request_refused").is_empty());
    let summaries = of("refusals_summarized");
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let s = summaries[0];
    assert_eq!(s["caller"], "spiffe://example.org/issuer");
    assert_eq!(s["recorded"], 2);
    assert_eq!(s["held_back"], 2);
    assert_eq!(
        s["codes"],
        serde_json::json!({"bad_request": 1, "forbidden": 1})
    );
    assert!(s["from"].as_u64().unwrap() <= s["to"].as_u64().unwrap());
}

#[test]
fn a_caller_past_its_svid_rate_gets_429_with_retry_after_and_then_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // One SVID every 4 s; a full allowance passes a whole batch (max_items
    // 4). Slow enough that no refusal below depends on the machine's speed.
    setup(dir, "svids_per_caller_per_second = 0.25\n");
    let (_server, addr) = start_server(dir);
    let base = format!("https://localhost:{}", port(&addr));
    let csr = ec_csr(dir);
    let batch = |n: usize| {
        let items: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"csr": csr, "spiffe_id": format!("spiffe://example.org/ns/w{i}")}))
            .collect();
        serde_json::json!({ "items": items }).to_string()
    };
    let url = format!("{base}/v1/x509svids:batch");
    let (code, text) = curl(dir, Some("caller"), "POST", &url, Some(&batch(4)));
    assert_eq!(code, 200, "{text}");
    assert!(
        json(&text)["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "ok")
    );

    // The allowance is spent: a batch and a JWT-SVID are refused, with the
    // wait in Retry-After.
    std::fs::write(dir.join("req.json"), batch(2)).unwrap();
    let out = std::process::Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "--cacert",
            "ca.pem",
            "--cert",
            "caller.pem",
            "--key",
            "caller.key",
            "-D",
            "-",
            "-o",
            "body.out",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@req.json",
            &url,
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{head}");
    let wait: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
        .trim()
        .parse()
        .unwrap();
    // 2 SVIDs at 0.25 a second: about 8 s.
    assert!((1..=8).contains(&wait), "Retry-After {wait}");
    let body = json(&std::fs::read_to_string(dir.join("body.out")).unwrap());
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let jwt = serde_json::json!({"spiffe_id": "spiffe://example.org/ns/j", "audience": ["a"]})
        .to_string();
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &format!("{base}/v1/jwtsvids"),
        Some(&jwt),
    );
    assert_eq!(code, 429, "{text}");

    // One SVID's worth of waiting later, one is served again.
    std::thread::sleep(Duration::from_secs(5));
    let (code, text) = curl(dir, Some("caller"), "POST", &url, Some(&batch(1)));
    assert_eq!(code, 200, "{text}");
}
