//! The issuance HTTPS API end to end: `sigmux ca init`, then `sigmux serve`
//! with an `[issuance]` listener whose PKI comes from the openssl CLI, driven
//! with curl.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The first PEM certificate in `text`.
fn first_pem_cert(text: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find(END)? + start + END.len();
    Some(text[start..end].to_string())
}

/// The certificate the listener at `addr` presents to a new connection
/// (openssl s_client, with the `caller` client certificate).
fn presented_cert(dir: &Path, addr: &str) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            "localhost",
            "-CAfile",
            "ca.pem",
            "-cert",
            "caller.pem",
            "-key",
            "caller.key",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    first_pem_cert(&text).unwrap_or_else(|| {
        panic!(
            "s_client got no certificate: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn cert_file(dir: &Path, name: &str) -> String {
    first_pem_cert(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

/// A CA for example.org in `dir` and an issuance listener for it: a server
/// certificate, one caller (`spiffe://example.org/issuer`, allowed
/// `prefix`), and `[issuance]` lines `extra` (limits).
fn issuance_setup(dir: &Path, prefix: &str, extra: &str) {
    ca(dir, "ca");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "caller", "URI:spiffe://example.org/issuer");
    std::fs::write(
        dir.join("sigmux.toml"),
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             client_ca = \"ca.pem\"\n{extra}\
             [[issuance.callers]]\nid = \"spiffe://example.org/issuer\"\n\
             allowed_prefixes = [\"{prefix}\"]\n\
             allowed_dns_suffixes = [\"prod.svc\"]\n"
        ),
    )
    .unwrap();
    sigmux(dir, &["ca", "init", "--trust-domain", "example.org"]);
}

#[test]
fn issuance_tls_changes_are_picked_up_at_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "ca");
    ca(dir, "ca2");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "caller", "URI:spiffe://example.org/issuer");
    // The same caller, its certificate from a CA the server does not trust
    // yet.
    leaf(dir, "ca2", "caller2", "URI:spiffe://example.org/issuer");
    std::fs::copy(dir.join("ca.pem"), dir.join("clients.pem")).unwrap();
    std::fs::write(
        dir.join("sigmux.toml"),
        "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_ca = \"clients.pem\"\n\
         [[issuance.callers]]\nid = \"spiffe://example.org/issuer\"\n\
         allowed_prefixes = [\"spiffe://example.org/ns/prod\"]\n",
    )
    .unwrap();
    sigmux(dir, &["ca", "init", "--trust-domain", "example.org"]);
    // A caller rule in another trust domain could never match: serve
    // refuses to start, naming it (timeout: a serve that starts anyway
    // fails the test instead of hanging it).
    let rule = std::fs::read_to_string(dir.join("sigmux.toml"))
        .unwrap()
        .replace("spiffe://example.org/ns/prod", "spiffe://other.org/ns/prod");
    std::fs::write(dir.join("other-td.toml"), rule).unwrap();
    let out = Command::new("timeout")
        .args([
            "60",
            env!("CARGO_BIN_EXE_sigmux"),
            "--config",
            "other-td.toml",
            "serve",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("issuance.callers[0].allowed_prefixes[0]")
            && err.contains("trust domain other.org")
            && err.contains("example.org"),
        "{err}"
    );
    let (server, addr, _http, lines) = start_server_watched(dir);
    let url = format!(
        "https://localhost:{}/v1/bundle.pem",
        addr.rsplit(':').next().unwrap()
    );
    let get = |who: &str| curl(dir, Some(who), "GET", &url, None).0;
    assert_eq!(get("caller"), 200);
    assert_eq!(get("caller2"), 0, "a client CA not configured is refused");
    let first = presented_cert(dir, &addr);
    assert_eq!(first, cert_file(dir, "server.pem"));

    // A renewed server certificate (new key too) and a second client CA.
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    let both = std::fs::read_to_string(dir.join("ca.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("ca2.pem")).unwrap();
    std::fs::write(dir.join("clients.pem"), both).unwrap();
    let said = sighup(&server, &lines);
    assert!(said.contains("sigmux: issuance TLS reloaded"), "{said}");
    let renewed = presented_cert(dir, &addr);
    assert_ne!(renewed, first);
    assert_eq!(renewed, cert_file(dir, "server.pem"));
    assert_eq!(get("caller2"), 200, "the new client CA is trusted");
    assert_eq!(get("caller"), 200);

    // A key that does not match the certificate: refused, the renewed
    // configuration stays.
    ec_key(dir, "server.key");
    let said = sighup(&server, &lines);
    assert!(
        said.contains("sigmux: issuance TLS not reloaded")
            && said.contains(
                "issuance.cert/issuance.key: the private key does not belong to the certificate"
            ),
        "{said}"
    );
    assert_eq!(presented_cert(dir, &addr), renewed);
    assert_eq!(get("caller2"), 200);

    // Caller rules are read again too, and apply to the next request.
    let csr = workload_csr(dir, "w");
    let batch_url = url.replace("/v1/bundle.pem", "/v1/x509svids:batch");
    let status = || {
        let body = serde_json::json!({"items": [
            {"csr": csr, "spiffe_id": "spiffe://example.org/ns/prod/w"}
        ]});
        let (code, text) = curl(
            dir,
            Some("caller"),
            "POST",
            &batch_url,
            Some(&body.to_string()),
        );
        assert_eq!(code, 200, "{text}");
        json(&text)["results"][0]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status(), "ok");
    let config = std::fs::read_to_string(dir.join("sigmux.toml")).unwrap();
    std::fs::write(
        dir.join("sigmux.toml"),
        config.replace("ns/prod", "ns/staging"),
    )
    .unwrap();
    let said = sighup(&server, &lines);
    assert!(said.contains("issuance caller rules reloaded"), "{said}");
    assert_eq!(status(), "error", "the caller lost ns/prod at SIGHUP");
    // Rules that could never match are refused, and the ones in force stay.
    std::fs::write(
        dir.join("sigmux.toml"),
        config.replace("spiffe://example.org/ns/prod", "spiffe://other.org/ns/prod"),
    )
    .unwrap();
    let said = sighup(&server, &lines);
    assert!(
        said.contains("issuance caller rules not reloaded") && said.contains("other.org"),
        "{said}"
    );
    assert_eq!(status(), "error");
}

#[test]
fn issuance_api_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    issuance_setup(
        dir,
        "spiffe://example.org/ns/prod",
        "max_items = 4\nmax_ttl_seconds = 600\n",
    );
    leaf(dir, "ca", "nobody", "URI:spiffe://example.org/nobody");
    let (_server, addr) = start_server(dir);
    let base = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let url = |p: &str| format!("{base}{p}");

    // A batch of three: good, bad CSR, forbidden ID.
    let good = workload_csr(dir, "w1");
    let other = workload_csr(dir, "w2");
    let body = serde_json::json!({"items": [
        {"csr": good, "spiffe_id": "spiffe://example.org/ns/prod/sa/web",
         "dns_names": ["web.prod.svc"], "ttl_seconds": 300},
        {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
         "spiffe_id": "spiffe://example.org/ns/prod/sa/bad"},
        {"csr": other, "spiffe_id": "spiffe://example.org/ns/dev/sa/web"},
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
    assert_eq!(results.len(), 3, "{text}");
    assert_eq!(results[0]["status"], "ok", "{text}");
    let serial = results[0]["serial"].as_str().unwrap();
    assert_eq!(serial.len(), 32, "{serial}");
    let expires = results[0]["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expires > now && expires <= now + 301, "{expires} vs {now}");
    let chain = results[0]["svid_chain_pem"].as_str().unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    assert_eq!(results[1]["status"], "error", "{text}");
    assert_eq!(results[1]["code"], "csr_malformed", "{text}");
    assert!(!results[1]["message"].as_str().unwrap().is_empty());
    assert_eq!(results[2]["status"], "error", "{text}");
    assert_eq!(results[2]["code"], "forbidden", "{text}");

    // Every issued SVID and refused item is in the audit log, whose chain
    // holds.
    let log = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    assert!(log.contains(&format!("\"serial\":\"{serial}\"")), "{log}");
    assert!(log.contains("\"event\":\"svid_issue\""));
    assert_eq!(
        log.matches("\"event\":\"svid_refused\"").count(),
        2,
        "{log}"
    );
    sigmux::audit::verify(&dir.join("data/audit.log")).unwrap();

    // The chain verifies against the bundle, and names the workload.
    let (code, bundle) = curl(dir, Some("caller"), "GET", &url("/v1/bundle.pem"), None);
    assert_eq!(code, 200, "{bundle}");
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    std::fs::write(dir.join("bundle.pem"), &bundle).unwrap();
    let end =
        chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    std::fs::write(dir.join("svid.pem"), &chain[..end]).unwrap();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "chain.pem",
            "svid.pem",
        ],
    );
    assert!(out.contains("svid.pem: OK"), "{out}");
    let text = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-text"]);
    assert!(
        text.contains("URI:spiffe://example.org/ns/prod/sa/web"),
        "{text}"
    );
    assert!(text.contains("DNS:web.prod.svc"), "{text}");
    let got = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-serial"]);
    assert_eq!(
        got.trim().trim_start_matches("serial=").to_lowercase(),
        serial.to_lowercase()
    );

    // Revoke the SVID: the active intermediate's CRL, fetched fresh, is
    // signed by it (openssl checks against the bundle) and lists the serial.
    sigmux(dir, &["ca", "revoke", "--serial", serial]);
    let state: serde_json::Value =
        json(&std::fs::read_to_string(dir.join("data/ca/state.json")).unwrap());
    let int_serial = state["intermediates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = curl(
        dir,
        Some("caller"),
        "GET",
        &url(&format!("/v1/crl/{int_serial}")),
        None,
    );
    assert_eq!(code, 200);
    std::fs::copy(dir.join("body.out"), dir.join("crl.der")).unwrap();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "bundle.pem",
            "-noout",
            "-text",
        ])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && all.contains("verify OK"), "{all}");
    assert!(
        all.to_lowercase()
            .contains(&format!("serial number: {}", serial.to_lowercase())),
        "{all}"
    );
    assert!(
        all.contains("X509v3 CRL Number") && all.contains("Next Update"),
        "{all}"
    );
    let (code, body) = curl(dir, Some("caller"), "GET", &url("/v1/crl/00ff"), None);
    assert_eq!(code, 404, "{body}");
    // The root's CRL, signed at ca init: it verifies and lists nothing yet.
    let (code, _) = curl(dir, Some("caller"), "GET", &url("/v1/crl/root"), None);
    assert_eq!(code, 200);
    std::fs::copy(dir.join("body.out"), dir.join("root-crl.der")).unwrap();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "crl",
            "-inform",
            "DER",
            "-in",
            "root-crl.der",
            "-CAfile",
            "bundle.pem",
            "-noout",
            "-text",
        ])
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && all.contains("verify OK"), "{all}");
    assert!(
        all.contains("No Revoked Certificates") && all.contains("sigmux root CA"),
        "{all}"
    );

    // A rotation next to the running server: after prepare + activate, new
    // SVIDs come from the new intermediate, and SVIDs from both verify
    // against the bundle.
    sigmux(dir, &["ca", "rotate", "prepare"]);
    sigmux(dir, &["ca", "rotate", "activate"]);
    let body = serde_json::json!({"items": [
        {"csr": workload_csr(dir, "w3"), "spiffe_id": "spiffe://example.org/ns/prod/sa/api", "ttl_seconds": 300},
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
    let r = json(&text);
    assert_eq!(r["results"][0]["status"], "ok", "{text}");
    std::fs::write(
        dir.join("svid2.pem"),
        r["results"][0]["svid_chain_pem"].as_str().unwrap(),
    )
    .unwrap();
    let (code, bundle2) = curl(dir, Some("caller"), "GET", &url("/v1/bundle.pem"), None);
    assert_eq!(code, 200);
    assert_eq!(bundle2.matches("BEGIN CERTIFICATE").count(), 3, "{bundle2}");
    std::fs::write(dir.join("bundle2.pem"), &bundle2).unwrap();
    for svid in ["svid.pem", "svid2.pem"] {
        let out = openssl(
            dir,
            &[
                "verify",
                "-CAfile",
                "bundle2.pem",
                "-purpose",
                "sslclient",
                svid,
            ],
        );
        assert!(out.contains(": OK"), "{svid}: {out}");
    }
    let old_issuer = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-issuer"]);
    let new_issuer = openssl(dir, &["x509", "-in", "svid2.pem", "-noout", "-issuer"]);
    assert_ne!(old_issuer, new_issuer);

    // JWKS bundle.
    let (code, jwks) = curl(dir, Some("caller"), "GET", &url("/v1/bundle"), None);
    assert_eq!(code, 200, "{jwks}");
    let jwks = json(&jwks);
    let keys = jwks["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["use"] == "x509-svid"));
    // The JWT key rotated with the intermediate: the old one stays
    // published while its tokens may live, the new one (last) signs.
    let jwt_kids: Vec<String> = keys
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(jwt_kids.len(), 2, "{jwks}");
    let jwt_kid = jwt_kids[1].clone();

    // JWT-SVIDs: allowed and forbidden.
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &url("/v1/jwtsvids"),
        Some(
            r#"{"spiffe_id":"spiffe://example.org/ns/prod/sa/web","audience":["db"],"ttl_seconds":60}"#,
        ),
    );
    assert_eq!(code, 200, "{text}");
    let token = json(&text)["token"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    assert_eq!(
        json(&String::from_utf8(header).unwrap())["kid"],
        jwt_kid.as_str()
    );
    // Revoked in an emergency next to the running server: the JWKS drops
    // it at once and new tokens carry the new key's kid.
    sigmux(dir, &["ca", "revoke", "--jwt-key"]);
    let (code, jwks) = curl(dir, Some("caller"), "GET", &url("/v1/bundle"), None);
    assert_eq!(code, 200, "{jwks}");
    let now_kids: Vec<String> = json(&jwks)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(now_kids.len(), 2, "{jwks}");
    assert!(!now_kids.contains(&jwt_kid), "{jwks}");
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &url("/v1/jwtsvids"),
        Some(r#"{"spiffe_id":"spiffe://example.org/ns/prod/sa/web","audience":["db"]}"#),
    );
    assert_eq!(code, 200, "{text}");
    let token = json(&text)["token"].as_str().unwrap().to_string();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    assert_eq!(
        json(&String::from_utf8(header).unwrap())["kid"],
        now_kids[1].as_str()
    );
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &url("/v1/jwtsvids"),
        Some(r#"{"spiffe_id":"spiffe://example.org/ns/dev/x","audience":["db"]}"#),
    );
    assert_eq!(code, 403, "{text}");
    assert_eq!(json(&text)["error"]["code"], "forbidden");

    // A caller that no rule names may request nothing.
    let one = serde_json::json!({"items": [{"csr": workload_csr(dir, "w3"),
        "spiffe_id": "spiffe://example.org/ns/prod/sa/web"}]})
    .to_string();
    let (code, text) = curl(
        dir,
        Some("nobody"),
        "POST",
        &url("/v1/x509svids:batch"),
        Some(&one),
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(json(&text)["results"][0]["code"], "forbidden", "{text}");

    // Malformed JSON, unknown fields, too many items.
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &url("/v1/x509svids:batch"),
        Some("{\"items\": ["),
    );
    assert_eq!(code, 400, "{text}");
    assert!(
        json(&text)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed")
    );
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &url("/v1/x509svids:batch"),
        Some(r#"{"items":[],"extra":1}"#),
    );
    assert_eq!(code, 400, "{text}");
    assert!(
        json(&text)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extra"),
        "{text}"
    );
    let item = r#"{"csr":"x","spiffe_id":"spiffe://example.org/ns/prod/a"}"#;
    let five = format!("{{\"items\":[{}]}}", [item; 5].join(","));
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &url("/v1/x509svids:batch"),
        Some(&five),
    );
    assert_eq!(code, 413, "{text}");
    assert_eq!(json(&text)["error"]["code"], "too_many_items");

    // No client certificate: refused in the handshake.
    let (code, _) = curl(dir, None, "GET", &url("/v1/bundle"), None);
    assert_eq!(code, 0);

    // The server and the CLI commands run next to it took turns in the
    // audit log: one unbroken chain, the server's records after the CLI's
    // included.
    let out = sigmux(dir, &["audit", "verify"]);
    assert!(out.starts_with("ok: "), "{out}");
    let log = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    let events: Vec<String> = log
        .lines()
        .map(|l| json(l)["event"].as_str().unwrap().to_string())
        .collect();
    let revoke = events
        .iter()
        .position(|e| e == "ca_revoke_jwt_key")
        .unwrap();
    assert!(
        events[revoke..].iter().any(|e| e == "jwt_svid_issue"),
        "{events:?}"
    );
}

#[test]
fn sigkill_during_bulk_issuance_loses_nothing_a_client_received() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    issuance_setup(dir, "spiffe://example.org/ns", "max_items = 50\n");
    let (mut server, addr) = start_server(dir);
    let base = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let csr = workload_csr(dir, "bulk");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A client issuing batches of 20 as fast as it can, keeping every serial
    // it received, until the server is gone.
    let client = {
        let (dir, stop) = (dir.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut received = Vec::new();
            for round in 0..10_000 {
                let items: Vec<serde_json::Value> = (0..20)
                    .map(|i| serde_json::json!({"csr": csr, "spiffe_id": format!("spiffe://example.org/ns/w{round}-{i}")}))
                    .collect();
                let body = serde_json::json!({ "items": items }).to_string();
                let (code, text) = curl(
                    &dir,
                    Some("caller"),
                    "POST",
                    &format!("{base}/v1/x509svids:batch"),
                    Some(&body),
                );
                if code != 200 {
                    break;
                }
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                for r in v["results"].as_array().into_iter().flatten() {
                    if r["status"] == "ok" {
                        received.push(r["serial"].as_str().unwrap_or_default().to_string());
                    }
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) && round > 200 {
                    break;
                }
            }
            received
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.0.kill().unwrap(); // SIGKILL: no shutdown path runs.
    let _ = server.0.wait();
    let received = client.join().unwrap();
    assert!(
        received.len() >= 20,
        "the client got {} SVIDs",
        received.len()
    );
    let log = dir.join("data/audit.log");
    let v = sigmux::audit::verify(&log).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    for serial in &received {
        assert!(
            text.contains(&format!("\"serial\":\"{serial}\"")),
            "SVID {serial} reached the client but is not in the audit log"
        );
    }
    assert!(v.records as usize >= received.len());
}

/// Checks that `chain` (an `svid_chain_pem`) verifies against the bundle
/// the listener at `base` serves, and names `id`.
fn assert_valid_svid(dir: &Path, base: &str, chain: &str, id: &str) {
    let (code, bundle) = curl(
        dir,
        Some("caller"),
        "GET",
        &format!("{base}/v1/bundle.pem"),
        None,
    );
    assert_eq!(code, 200, "{bundle}");
    std::fs::write(dir.join("bundle.pem"), &bundle).unwrap();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    std::fs::write(dir.join("svid.pem"), first_pem_cert(chain).unwrap()).unwrap();
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "chain.pem",
            "svid.pem",
        ],
    );
    assert!(out.contains("svid.pem: OK"), "{out}");
    let text = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-text"]);
    assert!(text.contains(&format!("URI:{id}")), "{text}");
}

#[test]
fn a_badly_typed_batch_item_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    issuance_setup(
        dir,
        "spiffe://example.org/ns/prod",
        "max_items = 8\nmax_ttl_seconds = 600\n",
    );
    let (_server, addr, http) = start_server_with_http(dir);
    let base = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let csr = workload_csr(dir, "w");
    let id = |n: &str| format!("spiffe://example.org/ns/prod/sa/{n}");
    let post = |body: serde_json::Value| {
        let (code, text) = curl(
            dir,
            Some("caller"),
            "POST",
            &format!("{base}/v1/x509svids:batch"),
            Some(&body.to_string()),
        );
        assert_eq!(code, 200, "{text}");
        json(&text)["results"].as_array().unwrap().clone()
    };

    // Three items, the middle one badly typed: the others are issued, in
    // order, and the middle one gets its own error naming the field.
    for (bad, field) in [
        (serde_json::json!({"ttl_seconds": -5}), "ttl_seconds"),
        (serde_json::json!({"dns_names": "x"}), "dns_names"),
    ] {
        let mut middle = serde_json::json!({"csr": csr, "spiffe_id": id("middle")});
        middle
            .as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let results = post(serde_json::json!({"items": [
            {"csr": csr, "spiffe_id": id("first"), "ttl_seconds": 300},
            middle,
            {"csr": csr, "spiffe_id": id("third"), "dns_names": ["third.prod.svc"]},
        ]}));
        assert_eq!(results.len(), 3, "{results:?}");
        assert_eq!(results[0]["status"], "ok", "{results:?}");
        assert_eq!(results[2]["status"], "ok", "{results:?}");
        assert_valid_svid(
            dir,
            &base,
            results[0]["svid_chain_pem"].as_str().unwrap(),
            &id("first"),
        );
        assert_valid_svid(
            dir,
            &base,
            results[2]["svid_chain_pem"].as_str().unwrap(),
            &id("third"),
        );
        assert_eq!(results[1]["status"], "error", "{results:?}");
        assert_eq!(results[1]["code"], "item_malformed", "{results:?}");
        let message = results[1]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
    }

    // Every other way an item can be malformed fails that item alone.
    let results = post(serde_json::json!({"items": [
        {"csr": csr, "spiffe_id": 5},
        "not an object",
        {"csr": csr, "spiffe_id": id("extra"), "extra": 1},
        {"spiffe_id": id("nocsr")},
        {"csr": csr, "spiffe_id": id("dns"), "dns_names": ["ok.svc", 1]},
        {"csr": csr, "spiffe_id": id("ttl"), "ttl_seconds": "60"},
        {"csr": csr, "spiffe_id": id("good"), "ttl_seconds": null},
    ]}));
    let got: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap_or("ok"),
                r["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(got.len(), 7, "{got:?}");
    assert!(
        got[..6].iter().all(|(c, _)| *c == "item_malformed"),
        "{got:?}"
    );
    for (i, field) in [
        (0, "spiffe_id: "),
        (2, "extra: "),
        (3, "csr: "),
        (4, "dns_names"),
        (5, "ttl_seconds: "),
    ] {
        assert!(got[i].1.starts_with(field), "item {i}: {got:?}");
    }
    assert!(got[1].1.contains("object"), "{got:?}");
    assert_eq!(got[6].0, "ok", "{got:?}");
    assert_valid_svid(
        dir,
        &base,
        results[6]["svid_chain_pem"].as_str().unwrap(),
        &id("good"),
    );

    // Counted and recorded like any other refused item.
    let (code, metrics) = curl(dir, None, "GET", &format!("http://{http}/metrics"), None);
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("sigmux_issuance_refused_total{code=\"item_malformed\"} 8"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    let refused: Vec<serde_json::Value> = log
        .lines()
        .map(json)
        .filter(|r| r["event"] == "svid_refused")
        .collect();
    assert_eq!(refused.len(), 8, "{log}");
    assert!(
        refused.iter().all(|r| r["code"] == "item_malformed"),
        "{log}"
    );
    assert_eq!(refused[0]["spiffe_id"], id("middle").as_str(), "{log}");
    sigmux::audit::verify(&dir.join("data/audit.log")).unwrap();

    // A JWT-SVID request is one item: a badly typed field fails it with 400,
    // the message naming the field.
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &format!("{base}/v1/jwtsvids"),
        Some(&format!(
            r#"{{"spiffe_id":"{}","audience":"svc-b"}}"#,
            id("web")
        )),
    );
    assert_eq!(code, 400, "{text}");
    let e = &json(&text)["error"];
    assert_eq!(e["code"], "bad_request", "{text}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("audience: expected a list of strings"),
        "{text}"
    );
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &format!("{base}/v1/jwtsvids"),
        Some(&format!(
            r#"{{"spiffe_id":"{}","audience":["svc-b"]}}"#,
            id("web")
        )),
    );
    assert_eq!(code, 200, "{text}");
}

#[test]
fn bench_against_the_issuance_api_counts_svids_and_names_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    issuance_setup(dir, "spiffe://example.org/bench", "");
    let (_server, addr, _http) = start_server_with_http(dir);
    let target = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let bench = |prefix: &str| {
        Command::new(env!("CARGO_BIN_EXE_sigmux"))
            .current_dir(dir)
            .args(["--data-dir", "bench-data", "bench", "--target", &target])
            .args(["--scheme", "ecdsa_secp256r1_sha256"])
            .args(["--ca", "ca.pem", "--client-cert", "caller.pem"])
            .args(["--client-key", "caller.key", "--spiffe-prefix", prefix])
            .args(["--duration", "0.5", "--concurrency", "2", "--batch", "4"])
            .args(["--json", "bench.json"])
            .env_remove("SIGMUX_CONFIG")
            .output()
            .unwrap()
    };
    let out = bench("spiffe://example.org/bench");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&std::fs::read_to_string(dir.join("bench.json")).unwrap());
    assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");
    assert!(v.get("first_error").is_none(), "{v:#}");

    // A prefix this caller may not use: every item refused, and the bench
    // fails naming the item's error code.
    let out = bench("spiffe://example.org/elsewhere");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("every request failed") && err.contains("the first: forbidden"),
        "{err}"
    );
}

#[test]
fn the_api_takes_only_json_and_answers_every_refusal_in_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    issuance_setup(dir, "spiffe://example.org/ns/prod", "");
    let (_server, addr, _http) = start_server_with_http(dir);
    let base = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    // (status, error code) of a request with these extra curl arguments.
    let call = |args: &[&str]| -> (u16, String) {
        let out = Command::new("curl")
            .current_dir(dir)
            .args(["-sS", "--cacert", "ca.pem", "--cert", "caller.pem"])
            .args([
                "--key",
                "caller.key",
                "-o",
                "body.out",
                "-w",
                "%{http_code}",
            ])
            .args(args)
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let body = std::fs::read_to_string(dir.join("body.out")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {body:?} for {args:?}"));
        (code, v["error"]["code"].as_str().unwrap_or("").to_string())
    };
    let batch = format!("{base}/v1/x509svids:batch");
    let csr = workload_csr(dir, "w");
    let item = serde_json::json!({"items": [
        {"csr": csr, "spiffe_id": "spiffe://example.org/ns/prod/w"}
    ]})
    .to_string();
    // A form or plain-text POST (what a browser sends across sites) is
    // refused before anything is parsed.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let h = format!("content-type: {ct}");
        assert_eq!(
            call(&["-H", &h, "--data-binary", &item, &batch]),
            (415, "unsupported_media_type".into()),
            "{ct}"
        );
    }
    assert_eq!(
        call(&[
            "-H",
            "content-type: application/json; charset=utf-8",
            "--data-binary",
            &item,
            &batch
        ])
        .0,
        200
    );
    // A list is not a request.
    assert_eq!(
        call(&[
            "-H",
            "content-type: application/json",
            "--data-binary",
            "[[]]",
            &batch
        ]),
        (400, "bad_request".into())
    );
    // Unknown paths and wrong methods: JSON too.
    assert_eq!(
        call(&[&format!("{base}/v1/nothing")]),
        (404, "not_found".into())
    );
    assert_eq!(call(&[&batch]), (405, "method_not_allowed".into()));
    // An audience named twice is a mistake worth naming.
    let jwt = serde_json::json!({
        "spiffe_id": "spiffe://example.org/ns/prod/w", "audience": ["a", "b", "a"]
    })
    .to_string();
    let jwt_url = format!("{base}/v1/jwtsvids");
    assert_eq!(
        call(&[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &jwt,
            &jwt_url
        ]),
        (400, "bad_request".into())
    );
    let said = std::fs::read_to_string(dir.join("body.out")).unwrap();
    assert!(
        said.contains("audience[2]: 'a' is already in the list"),
        "{said}"
    );
}

#[test]
fn an_issuance_connection_closes_when_its_callers_certificate_expires() {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    issuance_setup(dir, "spiffe://example.org/ns/prod", "");
    short_lived_leaf(dir, "ca", "brief", "spiffe://example.org/issuer", 4);
    let (_server, addr, _http) = start_server_with_http(dir);
    let read_pem = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&read_pem("ca.pem")) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&read_pem("brief.pem"))
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read_pem("brief.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // One keep-alive GET; the answer's status line, or what went wrong.
    let mut get = || -> String {
        if let Err(e) = tls.write_all(b"GET /v1/bundle.pem HTTP/1.1\r\nHost: localhost\r\n\r\n") {
            return format!("write: {e}");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => return format!("closed: {}", String::from_utf8_lossy(&got)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return format!("read: {e}"),
            }
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len: usize = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if got.len() >= head_end + 4 + len {
                    return text.lines().next().unwrap().to_string();
                }
            }
        }
    };
    assert_eq!(get(), "HTTP/1.1 200 OK");
    std::thread::sleep(std::time::Duration::from_secs(6));
    // The certificate expired while the connection sat open: closed.
    let after = get();
    assert!(!after.contains("200"), "{after}");
}
