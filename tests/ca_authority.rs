//! `sigmux ca init` and `sigmux ca bundle` as an operator runs them: the
//! real binary on a fresh data dir, with the `openssl` command-line tool as
//! the independent party that path-validates the chain, prints the
//! extensions and decrypts the offline root key.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use openssl::x509::X509;
use tempfile::TempDir;

const PASS_ENV: &str = "SIGMUX_ROOT_PASSPHRASE";

fn sigmux(data: &Path, args: &[&str], pass: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigmux"));
    cmd.arg("--data-dir").arg(data).args(args);
    cmd.env_remove("SIGMUX_CONFIG")
        .env_remove("SIGMUX_DATA_DIR");
    match pass {
        Some(p) => cmd.env(PASS_ENV, p),
        None => cmd.env_remove(PASS_ENV),
    };
    cmd.output().expect("run sigmux")
}

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed: {:?}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panick"), "{what}: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn openssl(dir: &Path, args: &[&str], pass: Option<&str>) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    if let Some(p) = pass {
        cmd.env(PASS_ENV, p);
    }
    cmd.output().expect("run openssl")
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args, None);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The certificates of a PEM bundle, in order.
fn certs(pem_text: &str) -> Vec<X509> {
    X509::stack_from_pem(pem_text.as_bytes()).expect("bundle parses as PEM certificates")
}

fn state(data: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data.join("ca/state.json")).unwrap()).unwrap()
}

/// The lines of `openssl x509 -text` from the extension `name` to the next
/// extension header.
fn ext_block(text: &str, name: &str) -> String {
    let start = text
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    let rest = &text[start..];
    let end = rest[1..]
        .find("X509v3 ")
        .or_else(|| rest.find("Signature Algorithm"))
        .map_or(rest.len(), |e| e + 1);
    rest[..end].to_string()
}

fn days(cert: &X509) -> i32 {
    cert.not_before().diff(cert.not_after()).unwrap().days
}

fn init_default() -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = ok(
        sigmux(
            &data,
            &["ca", "init", "--trust-domain", "example.org"],
            None,
        ),
        "ca init",
    );
    (dir, out)
}

#[test]
fn init_makes_a_chain_openssl_verifies_with_the_spiffe_ca_profile() {
    let (dir, _) = init_default();
    let data = dir.path().join("data");
    let pem_text = ok(sigmux(&data, &["ca", "bundle"], None), "ca bundle");
    let bundle = certs(&pem_text);
    assert_eq!(bundle.len(), 2, "root + intermediate");
    let (root, int) = (&bundle[0], &bundle[1]);
    std::fs::write(dir.path().join("root.pem"), root.to_pem().unwrap()).unwrap();
    std::fs::write(dir.path().join("int.pem"), int.to_pem().unwrap()).unwrap();

    let v = openssl_ok(dir.path(), &["verify", "-CAfile", "root.pem", "int.pem"]);
    assert_eq!(v.trim(), "int.pem: OK");
    // The root is self-signed and verifies on its own.
    openssl_ok(dir.path(), &["verify", "-CAfile", "root.pem", "root.pem"]);

    // The intermediate, field by field.
    let text = openssl_ok(dir.path(), &["x509", "-in", "int.pem", "-noout", "-text"]);
    let root_text = openssl_ok(dir.path(), &["x509", "-in", "root.pem", "-noout", "-text"]);
    assert!(text.contains("Version: 3 (0x2)"), "{text}");
    let bc = ext_block(&text, "X509v3 Basic Constraints");
    assert!(
        bc.contains("critical") && bc.contains("CA:TRUE, pathlen:0"),
        "{bc}"
    );
    let ku = ext_block(&text, "X509v3 Key Usage");
    assert!(ku.contains("critical"), "{ku}");
    assert_eq!(
        ku.lines().nth(1).unwrap().trim(),
        "Certificate Sign, CRL Sign"
    );
    let san = ext_block(&text, "X509v3 Subject Alternative Name");
    assert_eq!(
        san.lines().nth(1).unwrap().trim(),
        "URI:spiffe://example.org"
    );
    assert!(!san.contains("critical"), "{san}");
    assert!(!text.contains("Extended Key Usage"), "{text}");
    let ski = ext_block(&text, "X509v3 Subject Key Identifier");
    let aki = ext_block(&text, "X509v3 Authority Key Identifier");
    let root_ski = ext_block(&root_text, "X509v3 Subject Key Identifier");
    let value = |b: &str| {
        b.lines()
            .nth(1)
            .unwrap()
            .trim()
            .trim_start_matches("keyid:")
            .to_string()
    };
    assert_eq!(value(&aki), value(&root_ski), "AKI names the root's SKI");
    assert_ne!(value(&ski), value(&root_ski));
    assert_eq!(
        int.issuer_name().to_der().unwrap(),
        root.subject_name().to_der().unwrap()
    );
    // 128-bit positive serial.
    let serial = int.serial_number().to_bn().unwrap();
    assert!(!serial.is_negative() && serial.num_bits() > 64 && serial.num_bits() <= 127);
    assert!(
        (364..=366).contains(&days(int)),
        "intermediate lives a year"
    );

    // The root.
    let bc = ext_block(&root_text, "X509v3 Basic Constraints");
    assert!(
        bc.contains("critical") && bc.contains("CA:TRUE, pathlen:1"),
        "{bc}"
    );
    let ku = ext_block(&root_text, "X509v3 Key Usage");
    assert!(ku.contains("critical") && ku.contains("Certificate Sign, CRL Sign"));
    assert!(root_text.contains("URI:spiffe://example.org"));
    assert_eq!(
        root.issuer_name().to_der().unwrap(),
        root.subject_name().to_der().unwrap()
    );
    assert!((3649..=3651).contains(&days(root)), "root lives ten years");

    // The state names the keys, which are in the store.
    let st = state(&data);
    assert_eq!(st["trust_domain"], "example.org");
    assert_eq!(st["bundle_sequence"], 1);
    assert_eq!(st["intermediates"][0]["status"], "active");
    let int_key = st["intermediates"][0]["key_name"].as_str().unwrap();
    let root_key = st["root"]["key_name"].as_str().unwrap();
    assert!(int_key.starts_with("ca-int-") && root_key.starts_with("ca-root-"));
    let listed = ok(sigmux(&data, &["keys", "list"], None), "keys list");
    assert!(
        listed.contains(int_key) && listed.contains(root_key),
        "{listed}"
    );
    // The store's intermediate key is the one certified.
    let public = ok(
        sigmux(&data, &["keys", "public", "--name", int_key], None),
        "keys public",
    );
    assert_eq!(
        public.trim(),
        String::from_utf8(int.public_key().unwrap().public_key_to_pem().unwrap())
            .unwrap()
            .trim()
    );
}

#[test]
fn second_init_fails_with_one_clear_error() {
    let (dir, _) = init_default();
    let data = dir.path().join("data");
    let before = std::fs::read(data.join("ca/state.json")).unwrap();
    let out = sigmux(&data, &["ca", "init", "--trust-domain", "other.org"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("sigmux: error: ") && lines[0].contains("already exists"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(data.join("ca/state.json")).unwrap(), before);

    // Bad input is refused before anything is made.
    let fresh = dir.path().join("fresh");
    for args in [
        &["ca", "init", "--trust-domain", "Bad.Domain"][..],
        &[
            "ca",
            "init",
            "--trust-domain",
            "a.org",
            "--jwt-kind",
            "ed25519",
        ],
        &[
            "ca",
            "init",
            "--trust-domain",
            "a.org",
            "--root-kind",
            "dsa",
        ],
    ] {
        let out = sigmux(&fresh, args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("sigmux: error: "), "{stderr}");
        assert!(!fresh.join("ca").exists());
    }
    // No CA yet: bundle says so.
    let out = sigmux(&fresh, &["ca", "bundle"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca init"));
    let out = sigmux(&data, &["ca", "bundle", "--format", "xml"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected pem or jwks"));
}

#[test]
fn a_trust_domain_given_as_a_spiffe_id_is_refused_naming_the_name_to_give() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    for (given, want) in [
        ("spiffe://example.org", "give example.org"),
        ("spiffe://example.org/", "give example.org"),
        ("spiffe://example.org/ns/x", "give example.org"),
        ("https://example.org", "not a URI"),
    ] {
        let out = sigmux(&data, &["ca", "init", "--trust-domain", given], None);
        assert_eq!(out.status.code(), Some(1), "{given}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("sigmux: error: --trust-domain: ")
                && stderr.contains("trust domain is a name")
                && stderr.contains(want),
            "{given}: {stderr}"
        );
        assert!(!data.join("ca").exists(), "{given}: a CA was made");
    }
    // The bare name is what works.
    ok(
        sigmux(
            &data,
            &["ca", "init", "--trust-domain", "example.org"],
            None,
        ),
        "ca init",
    );
    assert_eq!(state(&data)["trust_domain"], "example.org");
}

#[test]
fn jwks_bundle_has_the_spiffe_members() {
    let (dir, _) = init_default();
    let data = dir.path().join("data");
    let pem_text = ok(sigmux(&data, &["ca", "bundle"], None), "ca bundle");
    let bundle = certs(&pem_text);
    let text = ok(
        sigmux(&data, &["ca", "bundle", "--format", "jwks"], None),
        "ca bundle jwks",
    );
    let jwks: serde_json::Value = serde_json::from_str(&text).expect("JWKS is JSON");
    assert_eq!(jwks["spiffe_sequence"], 1);
    assert!(jwks["spiffe_refresh_hint"].as_u64().unwrap() > 0);
    let keys = jwks["keys"].as_array().unwrap();
    let x509: Vec<&serde_json::Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&serde_json::Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!((x509.len(), jwt.len(), keys.len()), (2, 1, 3));
    for (k, cert) in x509.iter().zip(&bundle) {
        let x5c = k["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        let der = B64.decode(x5c[0].as_str().unwrap()).unwrap();
        assert_eq!(der, cert.to_der().unwrap());
        assert_eq!(
            (k["kty"].as_str(), k["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        // x and y are the certificate's public key.
        let ec = cert.public_key().unwrap().ec_key().unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let point = ec
            .public_key()
            .to_bytes(
                ec.group(),
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )
            .unwrap();
        let x = B64URL.decode(k["x"].as_str().unwrap()).unwrap();
        let y = B64URL.decode(k["y"].as_str().unwrap()).unwrap();
        assert_eq!([&[4u8][..], &x, &y].concat(), point);
        assert!(k.get("kid").is_none());
    }
    let j = jwt[0];
    let st = state(&data);
    let name = st["jwt_keys"][0]["key_name"].as_str().unwrap();
    assert_eq!(j["kid"], st["jwt_keys"][0]["kid"]);
    // kid = base64url(first 16 bytes of SHA-256(SPKI)).
    let spki_pem = ok(
        sigmux(&data, &["keys", "public", "--name", name], None),
        "keys public",
    );
    let spki = openssl::pkey::PKey::public_key_from_pem(spki_pem.as_bytes())
        .unwrap()
        .public_key_to_der()
        .unwrap();
    let kid = B64URL.encode(&openssl::sha::sha256(&spki)[..16]);
    assert_eq!(j["kid"].as_str(), Some(kid.as_str()));
    assert_eq!(
        (j["kty"].as_str(), j["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert!(j.get("x5c").is_none());
}

#[test]
fn an_intermediate_cut_short_by_the_root_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = sigmux(
        &data,
        &[
            "ca",
            "init",
            "--trust-domain",
            "short.example",
            "--root-days",
            "10",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out, "ca init");
    assert!(
        err.contains("the intermediate ends with the root") && err.contains("365 days"),
        "{err}"
    );
    let st = state(&data);
    assert_eq!(st["intermediates"][0]["not_after"], st["root"]["not_after"]);
    // A successor asked to outlive the root is cut short too, and said so.
    let out = sigmux(&data, &["ca", "rotate", "prepare", "--days", "5000"], None);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out, "prepare");
    assert!(
        err.contains("the intermediate ends with the root") && err.contains("5000 days"),
        "{err}"
    );
}

#[test]
fn offline_root_leaves_only_the_certificate_and_an_encrypted_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("root-key.pem");
    let file_s = file.to_str().unwrap();
    let args = [
        "ca",
        "init",
        "--trust-domain",
        "prod.example",
        "--root-kind",
        "rsa2048",
        "--intermediate-kind",
        "p384",
        "--offline-root",
        file_s,
    ];

    // Without the passphrase nothing is made.
    let out = sigmux(&data, &args, None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(PASS_ENV), "{stderr}");
    assert!(!file.exists() && !data.join("ca").exists());

    // Nor with a passphrase too short for a file attackable offline.
    let out = sigmux(&data, &args, Some("short"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("at least 12 characters"),
        "{stderr}"
    );
    assert!(!file.exists() && !data.join("ca").exists());
    assert!(
        !data.exists(),
        "a refused passphrase leaves no KEK or key folder behind"
    );

    let pass = "correct horse battery staple";
    ok(sigmux(&data, &args, Some(pass)), "ca init --offline-root");
    // PBES2: PBKDF2-HMAC-SHA256 with 600000 (0x927c0) iterations, AES-256-CBC.
    let parsed = openssl(dir.path(), &["asn1parse", "-in", file_s], None);
    let parsed = String::from_utf8_lossy(&parsed.stdout);
    for want in ["PBES2", "PBKDF2", "927C0", "hmacWithSHA256", "aes-256-cbc"] {
        assert!(parsed.contains(want), "{want} missing:\n{parsed}");
    }

    // The store has no root key; the state records none.
    let st = state(&data);
    assert!(st["root"]["key_name"].is_null());
    for e in std::fs::read_dir(data.join("keys")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("root"), "{name}");
    }
    let listed = ok(sigmux(&data, &["keys", "list"], None), "keys list");
    assert!(!listed.contains("ca-root"), "{listed}");

    // The file is encrypted PKCS#8 and opens with the passphrase only.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key file is private");
    }
    let out = openssl(
        dir.path(),
        &[
            "pkey",
            "-in",
            file_s,
            "-passin",
            &format!("env:{PASS_ENV}"),
            "-pubout",
        ],
        Some(pass),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = openssl(
        dir.path(),
        &[
            "pkey",
            "-in",
            file_s,
            "-passin",
            &format!("env:{PASS_ENV}"),
            "-noout",
        ],
        Some("wrong"),
    );
    assert!(!wrong.status.success());

    // It is the root certificate's key, and the chain verifies.
    let pem_text = ok(sigmux(&data, &["ca", "bundle"], None), "ca bundle");
    let bundle = certs(&pem_text);
    assert_eq!(bundle.len(), 2);
    let root_pub = bundle[0].public_key().unwrap().public_key_to_pem().unwrap();
    assert_eq!(out.stdout, root_pub);
    std::fs::write(dir.path().join("root.pem"), bundle[0].to_pem().unwrap()).unwrap();
    std::fs::write(dir.path().join("int.pem"), bundle[1].to_pem().unwrap()).unwrap();
    openssl_ok(dir.path(), &["verify", "-CAfile", "root.pem", "int.pem"]);

    // An existing file is never overwritten.
    let other = dir.path().join("other");
    let out = sigmux(
        &other,
        &[
            "ca",
            "init",
            "--trust-domain",
            "x.org",
            "--offline-root",
            file_s,
        ],
        Some(pass),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // The JWKS carries the RSA root as n/e.
    let jwks: serde_json::Value = serde_json::from_str(&ok(
        sigmux(&data, &["ca", "bundle", "--format", "jwks"], None),
        "jwks",
    ))
    .unwrap();
    let root_jwk = &jwks["keys"][0];
    assert_eq!(root_jwk["kty"], "RSA");
    assert_eq!(root_jwk["e"], "AQAB");
    let rsa = bundle[0].public_key().unwrap().rsa().unwrap();
    assert_eq!(
        B64URL.decode(root_jwk["n"].as_str().unwrap()).unwrap(),
        rsa.n().to_vec()
    );
    assert_eq!(jwks["keys"][1]["crv"], "P-384");
}

#[test]
fn rotation_publishes_before_signing_and_drains_before_retiring() {
    let (dir, _) = init_default();
    let data = dir.path().join("data");
    let bundle = |d: &Path| certs(&ok(sigmux(d, &["ca", "bundle"], None), "bundle"));
    assert_eq!(bundle(&data).len(), 2);
    let first = state(&data)["intermediates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let key_file = |st: &serde_json::Value, i: usize| {
        data.join(format!(
            "keys/{}.key",
            st["intermediates"][i]["key_name"].as_str().unwrap()
        ))
    };
    let first_key = key_file(&state(&data), 0);
    assert!(first_key.exists());

    let jwt_kids = |d: &Path| -> Vec<String> {
        let text = ok(
            sigmux(d, &["ca", "bundle", "--format", "jwks"], None),
            "jwks",
        );
        let jwks: serde_json::Value = serde_json::from_str(&text).unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == "jwt-svid")
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let first_kid = jwt_kids(&data);
    assert_eq!(first_kid.len(), 1);

    let said = ok(sigmux(&data, &["ca", "rotate", "prepare"], None), "prepare");
    let st = state(&data);
    assert_eq!(st["intermediates"][1]["status"], "prepared");
    assert_eq!(st["intermediates"][0]["status"], "active");
    // A JWT-SVID key is prepared with it, published in the JWKS bundle.
    assert_eq!(st["jwt_keys"][1]["status"], "prepared");
    let next_kid = st["jwt_keys"][1]["kid"].as_str().unwrap().to_string();
    assert!(
        said.contains(&format!("prepared JWT key {next_kid}")),
        "{said}"
    );
    assert_eq!(jwt_kids(&data), [first_kid[0].clone(), next_kid.clone()]);
    assert_eq!(st["bundle_sequence"], 2);
    // Published before it signs: root + both intermediates.
    let b = bundle(&data);
    assert_eq!(b.len(), 3);
    // The new intermediate chains to the root.
    std::fs::write(dir.path().join("root.pem"), b[0].to_pem().unwrap()).unwrap();
    std::fs::write(dir.path().join("int2.pem"), b[2].to_pem().unwrap()).unwrap();
    openssl_ok(dir.path(), &["verify", "-CAfile", "root.pem", "int2.pem"]);
    // A second prepare is refused while one is pending.
    let out = sigmux(&data, &["ca", "rotate", "prepare"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already prepared"));

    ok(
        sigmux(&data, &["ca", "rotate", "activate"], None),
        "activate",
    );
    let st = state(&data);
    assert_eq!(st["intermediates"][0]["status"], "draining");
    assert_eq!(st["intermediates"][1]["status"], "active");
    assert_eq!(st["jwt_keys"][0]["status"], "draining");
    assert_eq!(st["jwt_keys"][1]["status"], "active");
    assert_eq!(
        bundle(&data).len(),
        3,
        "the old one stays while its SVIDs live"
    );
    // Its SVIDs may still be valid: retire refuses without --force.
    let out = sigmux(&data, &["ca", "rotate", "retire"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may still be valid"));
    assert!(first_key.exists(), "a draining intermediate keeps its key");
    // The wait is the longest SVID the config lets the CA issue
    // (issuance.max_ttl_seconds), not a fixed hour; status says so too.
    let cfg = dir.path().join("ttl2h.toml");
    std::fs::write(&cfg, "[issuance]\nmax_ttl_seconds = 7200\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let since = state(&data)["intermediates"][0]["draining_since"]
        .as_i64()
        .unwrap();
    let until = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", since + 7200),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    let until = String::from_utf8(until.stdout).unwrap();
    let out = sigmux(&data, &["--config", cfg, "ca", "rotate", "retire"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("(until {})", until.trim())), "{err}");
    let status: serde_json::Value = serde_json::from_str(&ok(
        sigmux(&data, &["--config", cfg, "ca", "status", "--json"], None),
        "status",
    ))
    .unwrap();
    assert_eq!(status["next"]["action"], "retire", "{status}");
    assert_eq!(status["next"]["at"], since + 7200, "{status}");
    // A lifetime shorter than the CA issues is --force by another name:
    // refused unless said so, and recorded.
    let out = sigmux(
        &data,
        &["ca", "rotate", "retire", "--max-svid-ttl-seconds", "0"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("shorter than the SVID lifetime")
            && err.contains("--force"),
        "{err}"
    );
    let said = ok(
        sigmux(
            &data,
            &[
                "ca",
                "rotate",
                "retire",
                "--max-svid-ttl-seconds",
                "0",
                "--force",
            ],
            None,
        ),
        "retire",
    );
    let events = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let retire = events
        .lines()
        .find(|l| l.contains("\"event\":\"ca_rotate_retire\""))
        .unwrap();
    assert!(
        retire.contains("\"force\":true") && retire.contains("\"max_svid_ttl_seconds\":0"),
        "{retire}"
    );
    let st = state(&data);
    assert_eq!(st["intermediates"][0]["status"], "retired");
    assert_eq!(st["jwt_keys"][0]["status"], "retired");
    assert_eq!(jwt_kids(&data), std::slice::from_ref(&next_kid));
    let first_jwt_key = st["jwt_keys"][0]["key_name"].as_str().unwrap();
    assert!(!data.join(format!("keys/{first_jwt_key}.key")).exists());
    // Retired, its key is destroyed: it signs nothing any more.
    let first_key_name = st["intermediates"][0]["key_name"].as_str().unwrap();
    assert!(
        said.contains(&format!(
            "destroyed key {first_key_name} of retired intermediate {first}"
        )),
        "{said}"
    );
    assert!(!first_key.exists());
    let list = ok(sigmux(&data, &["keys", "list"], None), "keys list");
    assert!(!list.contains(first_key_name), "{list}");
    assert!(key_file(&st, 1).exists(), "the active one keeps its key");
    assert_eq!(st["bundle_sequence"], 3);
    let b = bundle(&data);
    assert_eq!(b.len(), 2);
    assert!(
        !b.iter()
            .any(|c| hex::encode(c.serial_number().to_bn().unwrap().to_vec()) == first)
    );

    // Revocation: an SVID serial is recorded once; the emergency path
    // replaces the active intermediate at once.
    let out = sigmux(&data, &["ca", "revoke", "--serial", "0A1b"], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not shaped like the serials this CA gives"),
        "a serial this CA cannot have given is revoked with a warning"
    );
    assert_eq!(ok(out, "revoke").trim(), "revoked 0a1b");
    // Every spelling of one serial (case, 0x, leading zeros, the colons
    // openssl prints) is the same revocation.
    for spelling in ["0a1b", "0x000A1B", "00:0a:1b", "a1b"] {
        assert_eq!(
            ok(
                sigmux(&data, &["ca", "revoke", "--serial", spelling], None),
                "revoke"
            )
            .trim(),
            "already revoked 0a1b",
            "{spelling}"
        );
    }
    assert_eq!(state(&data)["revoked"][0]["serial"], "0a1b");
    assert_eq!(state(&data)["revoked"].as_array().unwrap().len(), 1);
    for (bad, why) in [("xyz", "not a hex serial"), ("00:00", "positive number")] {
        let out = sigmux(&data, &["ca", "revoke", "--serial", bad], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{bad}: {err}");
    }
    // The root's CRL, signed at every use of the root key, lists no
    // intermediate yet: the active one verifies with CRL checking.
    let root_crl = |name: &str| {
        let pem = state(&data)["root_crl_pem"].as_str().unwrap().to_string();
        std::fs::write(dir.path().join(name), pem).unwrap();
    };
    let active_pem = state(&data)["intermediates"][1]["cert_pem"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(dir.path().join("int-active.pem"), &active_pem).unwrap();
    root_crl("root-before.crl");
    let check = |crl: &str| {
        openssl(
            dir.path(),
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "root.pem",
                "-CRLfile",
                crl,
                "int-active.pem",
            ],
            None,
        )
    };
    let before = check("root-before.crl");
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    ok(
        sigmux(&data, &["ca", "revoke", "--intermediate"], None),
        "revoke intermediate",
    );
    // Now the root's CRL lists it: SVIDs carry their intermediate, so
    // leaving the bundle alone would not stop a chain through it.
    root_crl("root-after.crl");
    let text = openssl_ok(
        dir.path(),
        &[
            "crl",
            "-in",
            "root-after.crl",
            "-CAfile",
            "root.pem",
            "-noout",
            "-text",
        ],
    );
    let int_serial = state(&data)["intermediates"][1]["serial"]
        .as_str()
        .unwrap()
        .to_uppercase();
    assert!(
        text.contains(&format!("Serial Number: {int_serial}")),
        "{text}"
    );
    let after = check("root-after.crl");
    let err = String::from_utf8_lossy(&after.stdout).to_string()
        + &String::from_utf8_lossy(&after.stderr);
    assert!(
        !after.status.success() && err.contains("certificate revoked"),
        "{err}"
    );
    let st = state(&data);
    assert_eq!(st["intermediates"][1]["status"], "revoked");
    assert_eq!(st["intermediates"][2]["status"], "active");
    assert_eq!(bundle(&data).len(), 2);
    assert!(
        !key_file(&st, 1).exists(),
        "the revoked one's key is destroyed"
    );
    assert!(key_file(&st, 2).exists());
    let log = ok(sigmux(&data, &["audit", "verify"], None), "audit");
    assert!(log.starts_with("ok: "), "{log}");
    let events = std::fs::read_to_string(data.join("audit.log")).unwrap();
    for e in [
        "ca_rotate_prepare",
        "ca_rotate_activate",
        "ca_rotate_retire",
        "ca_revoke_svid",
        "ca_revoke_intermediate",
    ] {
        assert!(events.contains(e), "missing {e}");
    }
    // Retiring took the intermediate's and the JWT key's; revoking one more.
    assert_eq!(
        events.matches("\"event\":\"key.destroy\"").count(),
        3,
        "{events}"
    );
    // One revocation and four repeats of it, each recorded as what it was.
    assert_eq!(
        events.matches("\"event\":\"ca_revoke_svid\"").count(),
        5,
        "{events}"
    );
    assert_eq!(
        events.matches("\"already_revoked\":true").count(),
        4,
        "{events}"
    );

    // The JWT key's emergency path: out of the JWKS at once, a new one
    // signs, the revoked key is destroyed.
    let said = ok(
        sigmux(&data, &["ca", "revoke", "--jwt-key"], None),
        "revoke jwt key",
    );
    let st = state(&data);
    let jwt = st["jwt_keys"].as_array().unwrap();
    let (revoked, active) = (&jwt[jwt.len() - 2], &jwt[jwt.len() - 1]);
    assert_eq!(revoked["kid"], next_kid.as_str());
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(active["status"], "active");
    let new_kid = active["kid"].as_str().unwrap();
    assert!(
        said.contains(&format!(
            "revoked JWT key {next_kid}; JWT key {new_kid} signs"
        )),
        "{said}"
    );
    assert_eq!(jwt_kids(&data), [new_kid]);
    let revoked_key = revoked["key_name"].as_str().unwrap();
    assert!(!data.join(format!("keys/{revoked_key}.key")).exists());
    let events = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(events.contains("\"event\":\"ca_revoke_jwt_key\""));
    ok(sigmux(&data, &["audit", "verify"], None), "audit verify");
    // One revocation at a time.
    let out = sigmux(
        &data,
        &["ca", "revoke", "--jwt-key", "--intermediate"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn rotating_under_an_offline_root_asks_for_its_file_and_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("root-key.pem");
    let pass = "offline root pass";
    let init = [
        "ca",
        "init",
        "--trust-domain",
        "td.example",
        "--offline-root",
        file.to_str().unwrap(),
    ];
    ok(sigmux(&data, &init, Some(pass)), "init");
    let out = sigmux(&data, &["ca", "rotate", "prepare"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(PASS_ENV));
    let out = sigmux(&data, &["ca", "rotate", "prepare"], Some("wrong"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    ok(
        sigmux(&data, &["ca", "rotate", "prepare"], Some(pass)),
        "prepare with the offline root",
    );
    assert_eq!(state(&data)["intermediates"][1]["status"], "prepared");

    // A new passphrase: the file is sealed again, the old one opens
    // nothing any more.
    let reseal = |new: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigmux"));
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["ca", "reseal-root"])
            .env(PASS_ENV, pass)
            .env_remove("SIGMUX_CONFIG")
            .env_remove("SIGMUX_DATA_DIR");
        match new {
            Some(n) => cmd.env("SIGMUX_NEW_ROOT_PASSPHRASE", n),
            None => cmd.env_remove("SIGMUX_NEW_ROOT_PASSPHRASE"),
        };
        cmd.output().unwrap()
    };
    let before = std::fs::read(&file).unwrap();
    for (new, why) in [
        (None, "SIGMUX_NEW_ROOT_PASSPHRASE"),
        (Some("short"), "at least 12"),
    ] {
        let out = reseal(new);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{err}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            before,
            "a refused reseal leaves the file"
        );
    }
    let new_pass = "a new offline root passphrase";
    let said = ok(reseal(Some(new_pass)), "reseal-root");
    assert!(said.contains("resealed"), "{said}");
    ok(
        sigmux(&data, &["ca", "rotate", "activate"], None),
        "activate",
    );
    let out = sigmux(&data, &["ca", "rotate", "prepare"], Some(pass));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    ok(
        sigmux(&data, &["ca", "rotate", "prepare"], Some(new_pass)),
        "prepare after the reseal",
    );
    let parsed = openssl(
        dir.path(),
        &["asn1parse", "-in", file.to_str().unwrap()],
        None,
    );
    assert!(String::from_utf8_lossy(&parsed.stdout).contains("927C0"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the resealed file is private");
    }
    let events = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(
        events.contains("\"event\":\"ca_root_resealed\""),
        "{events}"
    );
    ok(sigmux(&data, &["audit", "verify"], None), "audit verify");
}

#[test]
fn keys_delete_refuses_the_ca_keys_and_names_them() {
    let (dir, _) = init_default();
    let data = dir.path().join("data");
    let st = state(&data);
    let intermediate = st["intermediates"][0]["key_name"]
        .as_str()
        .unwrap()
        .to_string();
    let jwt = st["jwt_keys"][0]["key_name"].as_str().unwrap().to_string();
    for (name, role) in [(&intermediate, "intermediate"), (&jwt, "JWT signing key")] {
        let out = sigmux(&data, &["keys", "delete", "--name", name], None);
        assert!(!out.status.success(), "deleted the CA's {role}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(role) && err.contains(name.as_str()), "{err}");
        assert!(data.join(format!("keys/{name}.key")).exists());
    }
    // Any other key goes, and is recorded.
    ok(
        sigmux(
            &data,
            &["keys", "generate", "--name", "spare", "--kind", "p256"],
            None,
        ),
        "keys generate",
    );
    let out = ok(
        sigmux(&data, &["keys", "delete", "--name", "spare"], None),
        "keys delete",
    );
    assert!(out.starts_with("deleted spare "), "{out}");
    assert!(!data.join("keys/spare.key").exists());
    let list = ok(sigmux(&data, &["keys", "list"], None), "keys list");
    assert!(!list.contains("spare"), "{list}");
    ok(sigmux(&data, &["audit", "verify"], None), "audit verify");
}

#[test]
fn ca_status_shows_each_item_and_the_next_step() {
    let (dir, _) = init_default();
    let data = dir.path().join("data");
    let st = state(&data);
    let text = ok(sigmux(&data, &["ca", "status", "--json"], None), "status");
    let v: serde_json::Value = serde_json::from_str(&text).expect("status --json is JSON");
    assert_eq!(v["trust_domain"], "example.org");
    assert_eq!(v["root"]["serial"], st["root"]["serial"]);
    assert_eq!(
        v["intermediates"][0]["serial"],
        st["intermediates"][0]["serial"]
    );
    assert_eq!(v["intermediates"][0]["status"], "active");
    assert_eq!(v["intermediates"][0]["home"], "soft");
    assert_eq!(v["jwt_keys"][0]["kid"], st["jwt_keys"][0]["kid"]);
    assert_eq!(v["jwt_keys"][0]["status"], "active");
    assert_eq!(v["next"]["action"], "prepare");
    let (nb, na) = (
        st["intermediates"][0]["not_before"].as_i64().unwrap(),
        st["intermediates"][0]["not_after"].as_i64().unwrap(),
    );
    assert_eq!(v["next"]["at"], nb + (na - nb) / 2);

    ok(sigmux(&data, &["ca", "rotate", "prepare"], None), "prepare");
    let st = state(&data);
    let text = ok(sigmux(&data, &["ca", "status"], None), "status");
    for want in [
        format!(
            "intermediate {} active",
            st["intermediates"][0]["serial"].as_str().unwrap()
        ),
        format!(
            "intermediate {} prepared",
            st["intermediates"][1]["serial"].as_str().unwrap()
        ),
        format!(
            "JWT key      {} prepared",
            st["jwt_keys"][1]["kid"].as_str().unwrap()
        ),
        "next: activate at ".to_string(),
    ] {
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
    }

    // Without a CA: one clear error.
    let out = sigmux(&dir.path().join("empty"), &["ca", "status"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sigmux ca init"));
}

#[cfg(unix)]
#[test]
fn the_data_folders_are_the_owners_alone_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec '{}' --data-dir '{}' ca init --trust-domain umask.example",
            env!("CARGO_BIN_EXE_sigmux"),
            data.display()
        ))
        .env_remove("SIGMUX_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sub in ["", "ca", "keys"] {
        let mode = std::fs::metadata(data.join(sub))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{sub}: {mode:o}");
    }
}
