//! `sigmux issue` end to end: `sigmux serve` with an `[issuance]` listener
//! whose PKI comes from the openssl CLI, a directory of CSRs in, SVID chain
//! files out.

use std::path::Path;
use std::process::Command;

mod common;
use common::*;

/// Runs `sigmux issue` with the test PKI; returns (success, stdout, stderr).
fn issue(dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .arg("issue")
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn issue_cli_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, "ca");
    ca(dir, "other");
    leaf(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    leaf(dir, "ca", "caller", "URI:spiffe://example.org/issuer");
    std::fs::write(
        dir.join("sigmux.toml"),
        "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_ca = \"ca.pem\"\nmax_items = 2\nmax_ttl_seconds = 600\n\
         [[issuance.callers]]\nid = \"spiffe://example.org/issuer\"\n\
         allowed_prefixes = [\"spiffe://example.org/ns/web\", \"spiffe://example.org/ns/junk\"]\n\
         allowed_dns_suffixes = [\"web.svc\"]\n",
    )
    .unwrap();
    sigmux(dir, &["ca", "init", "--trust-domain", "example.org"]);
    let (_server, addr) = start_server(dir);
    let server = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());

    // Three CSRs: allowed, forbidden by the caller rule, garbage.
    std::fs::create_dir(dir.join("csrs")).unwrap();
    for name in ["web", "db"] {
        new_csr(
            dir,
            &format!("{name}.key"),
            "/CN=ignored",
            &format!("csrs/{name}.csr"),
        );
    }
    std::fs::write(
        dir.join("csrs/junk.csr"),
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("csrs/notes.txt"), "not a CSR").unwrap();

    let common = [
        "--server",
        &server,
        "--ca",
        "ca.pem",
        "--cert",
        "caller.pem",
        "--key",
        "caller.key",
        "--csr-dir",
        "csrs",
        "--spiffe-id-template",
        "spiffe://example.org/ns/{stem}",
        "--dns",
        "web.svc",
        "--ttl",
        "300",
        "--out",
        "out",
    ];
    let mut args = common.to_vec();
    args.extend(["--batch", "2"]);
    let (ok, stdout, stderr) = issue(dir, &args);
    assert!(!ok, "some CSRs failed, so the exit must be non-zero");
    assert!(
        stdout.contains("issued 1, failed 2"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("csrs/db.csr: forbidden: ")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("csrs/junk.csr: csr_malformed: ")),
        "{stderr}"
    );
    assert_eq!(lines.len(), 2, "{stderr}");
    let files: Vec<String> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(files, ["web.pem"]);

    // The written chain verifies against the bundle and names the workload.
    let bundle = run(
        dir,
        "curl",
        &[
            "-sSf",
            "--cacert",
            "ca.pem",
            "--cert",
            "caller.pem",
            "--key",
            "caller.key",
            "-o",
            "bundle.pem",
            &format!("{server}/v1/bundle.pem"),
        ],
    );
    assert!(
        bundle.status.success(),
        "{}",
        String::from_utf8_lossy(&bundle.stderr)
    );
    let chain = std::fs::read_to_string(dir.join("out/web.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    let end =
        chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    std::fs::write(dir.join("svid.pem"), &chain[..end]).unwrap();
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "out/web.pem",
            "svid.pem",
        ],
    );
    assert!(out.contains("svid.pem: OK"), "{out}");
    let text = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-text"]);
    assert!(text.contains("URI:spiffe://example.org/ns/web"), "{text}");
    assert!(text.contains("DNS:web.svc"), "{text}");
    // The public key is the CSR's.
    let want = openssl(dir, &["pkey", "-in", "web.key", "-pubout"]);
    let got = openssl(dir, &["x509", "-in", "svid.pem", "-noout", "-pubkey"]);
    assert_eq!(want, got);

    // A single file with a fixed ID succeeds with exit 0.
    let (ok, stdout, stderr) = issue(
        dir,
        &[
            "--server",
            &server,
            "--ca",
            "ca.pem",
            "--cert",
            "caller.pem",
            "--key",
            "caller.key",
            "--csr",
            "csrs/web.csr",
            "--spiffe-id",
            "spiffe://example.org/ns/web/one",
            "--out",
            "single",
        ],
    );
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("issued 1, failed 0"), "{stdout}");
    assert!(dir.join("single/web.pem").is_file());

    // Non-200: more items than the server takes; its code and message show.
    let mut args = common.to_vec();
    args.extend(["--batch", "3"]);
    let (ok, _, stderr) = issue(dir, &args);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("413") && stderr.contains("too_many_items: 3 items"),
        "{stderr}"
    );

    // The server's certificate does not chain to --ca: a TLS error.
    let mut args = common.to_vec();
    args[3] = "other.pem";
    let (ok, _, stderr) = issue(dir, &args);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");

    // Nothing listens: a connect error.
    let mut args = common.to_vec();
    args[1] = "https://127.0.0.1:1";
    let (ok, _, stderr) = issue(dir, &args);
    assert!(!ok);
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // Unreadable key file.
    let mut args = common.to_vec();
    args[7] = "missing.key";
    let (ok, _, stderr) = issue(dir, &args);
    assert!(!ok);
    assert!(stderr.contains("cannot read key missing.key"), "{stderr}");
}
