//! A SPIFFE CA whose intermediate key lives in a PKCS#11 token: `ca init
//! --intermediate-backend hsm` makes it inside a SoftHSM2 token (made by
//! `scripts/softhsm-token.sh`), `sigmux serve` signs SVIDs with it through
//! the PKCS#11 backend (the audit log names the backend), the SVIDs verify
//! with `openssl verify` against the bundle, and `ca rotate prepare` makes
//! the successor in the token too. Needs softhsm2 and opensc (pkcs11-tool),
//! which scripts/deps.sh installs.

use std::path::Path;
use std::process::Command;

mod common;
use common::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Private-key labels in the token, by pkcs11-tool (an independent PKCS#11
/// client).
fn token_private_keys(dir: &Path) -> Vec<String> {
    token_objects(dir, "privkey")
}

/// Labels of the token's objects of `kind` (pkcs11-tool's `--type`), sorted.
fn token_objects(dir: &Path, kind: &str) -> Vec<String> {
    let out = Command::new("pkcs11-tool")
        .current_dir(dir)
        .env("SOFTHSM2_CONF", dir.join("hsm/softhsm2.conf"))
        .args([
            "--module",
            MODULE,
            "--token-label",
            "ca-token",
            "--login",
            "--pin",
            "1234",
            "--list-objects",
            "--type",
            kind,
        ])
        .output()
        .expect("pkcs11-tool (opensc) is needed: run scripts/deps.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut labels: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("label:")
                .map(|s| s.trim().to_string())
        })
        .collect();
    labels.sort();
    labels
}

/// The tests here set `SOFTHSM2_CONF` for the sigmux processes they start
/// (the helpers pass the environment on), each to its own token directory:
/// one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes the SoftHSM2 token `ca-token` under `dir/hsm`
/// (scripts/softhsm-token.sh) and points `SOFTHSM2_CONF` at it for every
/// sigmux process the test starts. Call under [`one_at_a_time`].
fn ca_token(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/softhsm-token.sh");
    let made = Command::new("bash")
        .arg(&script)
        .arg(dir.join("hsm"))
        .arg("ca-token")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // SAFETY: set while no other test of this file runs (one_at_a_time);
    // nothing in this process reads it (only the processes it starts).
    unsafe { std::env::set_var("SOFTHSM2_CONF", dir.join("hsm/softhsm2.conf")) };
}

/// `sigmux ca init` for example.org with the intermediate key made in the
/// configured token.
fn init_with_hsm_intermediate(dir: &Path) {
    sigmux(
        dir,
        &[
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--intermediate-backend",
            "hsm",
        ],
    );
}

fn state(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("data/ca/state.json")).unwrap()).unwrap()
}

#[test]
fn intermediate_key_in_a_pkcs11_token() {
    let _alone = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca_token(dir);
    ca(dir, "ca");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "caller", "URI:spiffe://example.org/issuer");
    let base_cfg = "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_ca = \"ca.pem\"\nmax_items = 8\nmax_ttl_seconds = 600\n\
         [[issuance.callers]]\nid = \"spiffe://example.org/issuer\"\n\
         allowed_prefixes = [\"spiffe://example.org/ns\"]\n";

    // Without a token configured, asking for one is a clear error.
    std::fs::write(dir.join("sigmux.toml"), base_cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args(["--config", "sigmux.toml", "ca", "init", "--trust-domain"])
        .args(["example.org", "--intermediate-backend", "hsm"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("backends.pkcs11"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args(["--config", "sigmux.toml", "ca", "init", "--trust-domain"])
        .args(["example.org", "--intermediate-backend", "tpm"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--intermediate-backend 'tpm'"),
        "{err}"
    );
    assert!(!dir.join("data/ca").exists(), "a refused init leaves no CA");

    std::fs::write(
        dir.join("sigmux.toml"),
        format!(
            "{base_cfg}[backends.pkcs11]\ntoken_label = \"ca-token\"\npin_file = \"{}\"\n",
            dir.join("hsm/user.pin").display()
        ),
    )
    .unwrap();
    init_with_hsm_intermediate(dir);
    let st = state(dir);
    let int = &st["intermediates"][0];
    assert_eq!(int["home"]["backend"], "hsm", "{st}");
    let int_key = int["key_name"].as_str().unwrap().to_string();
    assert_eq!(token_private_keys(dir), vec![int_key.clone()]);
    // Only the public half and a token reference are on disk.
    let key_file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("data/keys/{int_key}.key"))).unwrap(),
    )
    .unwrap();
    assert!(key_file["sealed"].is_null(), "{key_file}");

    // SVIDs signed by the token verify against the bundle.
    let (server, addr) = start_server(dir);
    let url = format!(
        "https://localhost:{}/v1/x509svids:batch",
        addr.rsplit(':').next().unwrap()
    );
    let (ok, text) = issue_one(dir, &addr);
    assert!(ok, "HTTP 200 with status ok: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let chain = v["results"][0]["svid_chain_pem"].as_str().unwrap();
    std::fs::write(dir.join("svid.pem"), chain).unwrap();
    let (code, bundle) = curl(
        dir,
        Some("caller"),
        "GET",
        &url.replace("x509svids:batch", "bundle.pem"),
        None,
    );
    assert_eq!(code, 200);
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    // The chain's first certificate is the leaf; the intermediate is
    // untrusted input, the root comes from the bundle.
    let leaf_pem = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
    std::fs::write(dir.join("untrusted.pem"), &chain[leaf_pem.len()..]).unwrap();
    let verified = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "untrusted.pem",
            "leaf.pem",
        ],
    );
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    drop(server);
    let audit = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    let issued = audit
        .lines()
        .find(|l| l.contains("\"svid_issue\""))
        .expect("an svid_issue record");
    assert!(
        issued.contains("\"backend\":\"pkcs11:ca-token\""),
        "{issued}"
    );

    // The successor is made in the token as well.
    sigmux(dir, &["ca", "rotate", "prepare"]);
    let st = state(dir);
    let next = &st["intermediates"][1];
    assert_eq!(next["home"]["backend"], "hsm", "{st}");
    let next_key = next["key_name"].as_str().unwrap().to_string();
    let mut want = vec![int_key.clone(), next_key.clone()];
    want.sort();
    assert_eq!(token_private_keys(dir), want);

    // Retired, the first intermediate's key pair is destroyed inside the
    // token (private and public objects), and sigmux's reference goes.
    sigmux(dir, &["ca", "rotate", "activate"]);
    let said = sigmux(dir, &["ca", "rotate", "retire", "--force"]);
    assert!(
        said.contains(&format!("destroyed key {int_key} of retired")),
        "{said}"
    );
    let left = vec![next_key];
    assert_eq!(token_private_keys(dir), left);
    assert_eq!(token_objects(dir, "pubkey"), left);
    assert!(!dir.join(format!("data/keys/{int_key}.key")).exists());
    let audit = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    assert!(
        audit.contains("\"event\":\"key.destroy\"") && audit.contains(&int_key),
        "{audit}"
    );
}

/// A token directory with `ca-token` under `dir/hsm` (user PIN in
/// `dir/hsm/user.pin`), a config serving the issuance API with the CPU and
/// that token, and a CA whose intermediate key is in the token. Sets
/// `SOFTHSM2_CONF` for the processes the test starts.
fn hsm_ca(dir: &Path) {
    ca_token(dir);
    ca(dir, "ca");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "caller", "URI:spiffe://example.org/issuer");
    std::fs::write(
        dir.join("sigmux.toml"),
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [backends.cuda]\nenabled = false\n\
             [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             client_ca = \"ca.pem\"\nmax_items = 8\nmax_ttl_seconds = 600\n\
             [[issuance.callers]]\nid = \"spiffe://example.org/issuer\"\n\
             allowed_prefixes = [\"spiffe://example.org/ns\"]\n\
             [backends.pkcs11]\ntoken_label = \"ca-token\"\npin_file = \"{}\"\ncalibrate = false\n",
            dir.join("hsm/user.pin").display()
        ),
    )
    .unwrap();
    init_with_hsm_intermediate(dir);
}

/// Issues one X.509-SVID through the API at `addr`: whether it came, and
/// the answer.
fn issue_one(dir: &Path, addr: &str) -> (bool, String) {
    let port = addr.rsplit(':').next().unwrap();
    if !dir.join("w.csr").exists() {
        ec_key(dir, "w.key");
        openssl(
            dir,
            &[
                "req", "-new", "-key", "w.key", "-subj", "/CN=w", "-out", "w.csr",
            ],
        );
    }
    let body = serde_json::json!({"items": [{
        "csr": std::fs::read_to_string(dir.join("w.csr")).unwrap(),
        "spiffe_id": "spiffe://example.org/ns/w",
    }]})
    .to_string();
    let (code, text) = curl(
        dir,
        Some("caller"),
        "POST",
        &format!("https://localhost:{port}/v1/x509svids:batch"),
        Some(&body),
    );
    let ok = code == 200
        && serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| v["results"][0]["status"] == "ok");
    (ok, text)
}

/// Issues until one comes (the engine gives a backend that failed work
/// again once its back-off, a fraction of a second after a few failures,
/// has passed); panics after 10 s.
fn issue_once_back(dir: &Path, addr: &str, what: &str) {
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, text) = issue_one(dir, addr);
        if ok {
            return;
        }
        last = text;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("{what}: {last}");
}

/// The token's directory under `dir/hsm/tokens` (there is one).
fn token_dir(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("hsm/tokens"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// The token holding the CA's intermediate key disappears under a running
/// `serve` (its files moved away, as when the token is deleted or its disk
/// goes) and comes back: issuance fails meanwhile with the token named as
/// the cause, JWT-SVIDs (a soft key, on the CPU) keep coming, and after the
/// files return a SIGHUP (or the next request past the retry interval)
/// brings the token back without a restart.
#[test]
fn a_token_that_vanishes_and_returns_under_serve_fails_clearly_and_recovers() {
    let _alone = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    hsm_ca(dir);
    let (server, addr, http, lines) = start_server_watched(dir);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let issue = || issue_one(dir, &addr);
    let jwt = || {
        let (code, text) = curl(
            dir,
            Some("caller"),
            "POST",
            &url("/v1/jwtsvids"),
            Some(r#"{"spiffe_id":"spiffe://example.org/ns/w","audience":["a"],"ttl_seconds":60}"#),
        );
        assert_eq!(code, 200, "JWT-SVID: {text}");
    };
    let health = || {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://{http}/healthz")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (ok, text) = issue();
    assert!(ok, "before: {text}");

    // The token's files go away.
    let token_dir = token_dir(dir);
    let away = dir.join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    let (ok, text) = issue();
    assert!(!ok, "issued without its token: {text}");
    jwt();
    let h = health();
    assert!(
        h.contains(r#""health":"failing","name":"pkcs11:ca-token""#),
        "{h}"
    );
    // The log says why, naming the token and the PKCS#11 error.
    let mut said = String::new();
    while let Ok(line) = lines.recv_timeout(std::time::Duration::from_secs(5)) {
        said.push_str(&line);
        said.push('\n');
        if line.contains("out of rotation") {
            break;
        }
    }
    let why = said
        .lines()
        .find(|l| l.contains("out of rotation"))
        .unwrap_or_else(|| panic!("no line on the failure: {said}"));
    assert!(
        why.contains("token 'ca-token'") && why.contains("cannot be read") && why.contains("CKR_"),
        "{why}"
    );
    assert!(!why.contains("1234"), "{why}");

    // Back: SIGHUP tries the token again at once.
    std::fs::rename(&away, &token_dir).unwrap();
    let said = sighup(&server, &lines);
    assert!(
        said.contains("PKCS#11 token 'ca-token' usable again"),
        "{said}"
    );
    issue_once_back(dir, &addr, "after the token came back");
    jwt();
    assert!(!said.contains("panicked"), "{said}");
    assert!(
        health().contains(r#""health":"healthy","name":"pkcs11:ca-token""#),
        "{}",
        health()
    );
}

/// The token's user PIN is changed while `serve` runs (pkcs11-tool
/// --change-pin) and the token then has to be logged in to again (it went
/// away and came back). The old PIN is refused, once: SIGHUP says so,
/// naming the CKR_ code and the PIN file, and does not try the same PIN
/// again; once the file holds the new PIN, SIGHUP logs in with it and the
/// token signs again, without a restart. The new PIN is never printed (the
/// old one, 1234, is too short to look for among slot numbers).
#[test]
fn a_pin_changed_under_serve_is_refused_once_and_read_again_at_sighup() {
    let _alone = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    hsm_ca(dir);
    let (server, addr, _http, lines) = start_server_watched(dir);
    let (ok, text) = issue_one(dir, &addr);
    assert!(ok, "before: {text}");
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", dir.join("hsm/softhsm2.conf"))
        .args(["--module", MODULE, "--token-label", "ca-token", "--login"])
        .args(["--pin", "1234", "--change-pin", "--new-pin", "Qz7-new-pin"])
        .output()
        .expect("pkcs11-tool (opensc) is needed: run scripts/deps.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still logged in: nothing changes yet.
    let (ok, text) = issue_one(dir, &addr);
    assert!(ok, "after the PIN change: {text}");
    // The token goes away and comes back: sigmux logs in again.
    let token_dir = token_dir(dir);
    let away = dir.join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    let (ok, _) = issue_one(dir, &addr);
    assert!(!ok);
    std::fs::rename(&away, &token_dir).unwrap();
    let said = sighup(&server, &lines);
    let line = said
        .lines()
        .find(|l| l.contains("PKCS#11 token 'ca-token'"))
        .unwrap_or_else(|| panic!("nothing on the token at SIGHUP: {said}"));
    assert!(
        line.contains("still cannot be used") && line.contains("CKR_PIN_INCORRECT"),
        "{line}"
    );
    let (ok, text) = issue_one(dir, &addr);
    assert!(!ok, "issued with a refused PIN: {text}");
    // The same PIN is not tried again.
    let said = sighup(&server, &lines);
    assert!(
        said.contains("has not changed") && said.contains("user.pin"),
        "{said}"
    );
    // The new PIN in the file: SIGHUP logs in with it.
    std::fs::write(dir.join("hsm/user.pin"), "Qz7-new-pin\n").unwrap();
    let said = sighup(&server, &lines);
    assert!(
        said.contains("PKCS#11 token 'ca-token' usable again"),
        "{said}"
    );
    issue_once_back(dir, &addr, "after the new PIN");
    let mut rest = String::new();
    while let Ok(l) = lines.recv_timeout(std::time::Duration::from_millis(300)) {
        rest.push_str(&l);
        rest.push('\n');
    }
    for text in [&said, &rest] {
        assert!(
            !text.contains("Qz7-new-pin") && !text.contains("panicked"),
            "{text}"
        );
    }
}
