//! One damaged key file in the data dir, through the real binary: the other
//! keys stay usable from the CLI and from `serve`, the damaged file is
//! listed with the reason and can be deleted (never one of the CA's keys),
//! and no output ever quotes the file's content.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a damaged file holds: nothing of it may show up anywhere.
const JUNK: &str = "-----BEGIN PRIVATE KEY-----\nJUNK-SECRET-CONTENT\n";

fn sigmux_cmd(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sigmux"));
    for v in [
        "SIGMUX_CONFIG",
        "SIGMUX_DATA_DIR",
        "SIGMUX_LOG",
        "RUST_BACKTRACE",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c.arg("--data-dir").arg(data);
    c
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn sigmux(data: &Path, args: &[&str]) -> Run {
    let out: Output = sigmux_cmd(data).args(args).output().expect("sigmux runs");
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(
            !text.contains("JUNK-SECRET") && !text.contains("BEGIN PRIVATE"),
            "sigmux {args:?} printed the damaged file's content:\n{text}"
        );
        assert!(!text.contains("panicked"), "sigmux {args:?}:\n{text}");
    }
    run
}

fn ok(data: &Path, args: &[&str]) -> Run {
    let run = sigmux(data, args);
    assert!(
        run.ok,
        "sigmux {args:?} failed\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    run
}

fn fails(data: &Path, args: &[&str]) -> Run {
    let run = sigmux(data, args);
    assert!(
        !run.ok,
        "sigmux {args:?} should have failed\nstdout: {}",
        run.stdout
    );
    run
}

fn openssl(args: &[&str]) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A data dir holding keys `p256` and `rsa2048`, `p256.key` then
/// overwritten with [`JUNK`]. Returns the data dir and the damaged file.
fn data_dir_with_a_bad_key(root: &Path) -> (PathBuf, PathBuf) {
    let data = root.join("data");
    for (name, kind) in [("p256", "p256"), ("rsa2048", "rsa2048")] {
        ok(&data, &["keys", "generate", "--name", name, "--kind", kind]);
    }
    let bad = data.join("keys/p256.key");
    std::fs::write(&bad, JUNK).unwrap();
    (data, bad)
}

#[test]
fn keys_list_names_the_unreadable_file_and_lists_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bad) = data_dir_with_a_bad_key(dir.path());

    let table = ok(&data, &["keys", "list"]);
    let line = |name: &str| {
        table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{}", table.stdout))
            .to_string()
    };
    let good = line("rsa2048");
    assert!(good.contains("rsa2048") && good.contains("soft"), "{good}");
    let unreadable = line("p256");
    assert!(
        unreadable.contains("UNREADABLE")
            && unreadable.contains(s(&bad))
            && unreadable.contains("corrupt key file"),
        "{unreadable}"
    );
    assert!(
        table.stderr.contains("could not be read"),
        "{}",
        table.stderr
    );

    let json = ok(&data, &["keys", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let entries = v.as_array().expect("an array");
    assert_eq!(entries.len(), 2, "{v:#}");
    let good = entries.iter().find(|e| e["name"] == "rsa2048").unwrap();
    assert_eq!(good["kind"], "rsa2048");
    assert!(good.get("unreadable").is_none());
    let bad_entry = entries.iter().find(|e| e["name"] == "p256").unwrap();
    assert_eq!(bad_entry["file"], s(&bad));
    assert!(
        bad_entry["unreadable"]
            .as_str()
            .unwrap()
            .contains("corrupt key file"),
        "{bad_entry}"
    );
}

#[test]
fn the_other_keys_still_serve_public_keys_and_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bad) = data_dir_with_a_bad_key(dir.path());

    // The good key's public key: a valid PEM whose DER hashes to its id.
    let public = ok(&data, &["keys", "public", "--name", "rsa2048"]);
    let pem = dir.path().join("rsa2048.pub.pem");
    std::fs::write(&pem, &public.stdout).unwrap();
    openssl(&["pkey", "-pubin", "-in", s(&pem), "-noout"]);
    let der = openssl(&["pkey", "-pubin", "-in", s(&pem), "-outform", "DER"]).stdout;
    let der_file = dir.path().join("rsa2048.pub.der");
    std::fs::write(&der_file, &der).unwrap();
    let digest = openssl(&["dgst", "-sha256", "-r", s(&der_file)]).stdout;
    let key_id = String::from_utf8_lossy(&digest)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let json = ok(&data, &["keys", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let listed = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "rsa2048")
        .unwrap();
    assert_eq!(listed["key_id"], key_id.as_str());

    // It signs, and the signature verifies.
    let msg = dir.path().join("msg");
    let sig = dir.path().join("sig");
    std::fs::write(&msg, b"a message signed next to a damaged key file").unwrap();
    ok(
        &data,
        &[
            "sign",
            "--key",
            "rsa2048",
            "--scheme",
            "rsa_pkcs1_sha256",
            "--in",
            s(&msg),
            "--out",
            s(&sig),
        ],
    );
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        s(&pem),
        "-signature",
        s(&sig),
        s(&msg),
    ]);

    // The damaged key itself: a clear error naming its file.
    let run = fails(&data, &["keys", "public", "--name", "p256"]);
    assert!(
        run.stderr.contains(s(&bad)) && run.stderr.contains("corrupt key file"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    let run = fails(
        &data,
        &[
            "sign",
            "--key",
            "p256",
            "--scheme",
            "ecdsa_secp256r1_sha256",
            "--digest-hex",
            &"ab".repeat(32),
        ],
    );
    assert!(run.stderr.contains(s(&bad)), "{}", run.stderr);
}

#[test]
fn the_unreadable_file_is_deleted_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bad) = data_dir_with_a_bad_key(dir.path());

    let run = ok(&data, &["keys", "delete", "--name", "p256"]);
    assert!(
        run.stdout.contains("deleted p256") && run.stdout.contains("could not be read"),
        "{}",
        run.stdout
    );
    assert!(!bad.exists());

    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let record: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|r| r["event"] == "key.delete")
        .expect("a key.delete record");
    assert_eq!(record["name"], "p256");
    assert_eq!(record["file"], s(&bad));
    assert!(
        record["unreadable"]
            .as_str()
            .unwrap()
            .contains("corrupt key file"),
        "{record}"
    );
    // The removed file's digest, to match it with a backup.
    let copy = dir.path().join("junk-copy");
    std::fs::write(&copy, JUNK).unwrap();
    let digest = openssl(&["dgst", "-sha256", "-r", s(&copy)]).stdout;
    let digest = String::from_utf8_lossy(&digest);
    assert_eq!(
        record["file_sha256"].as_str(),
        digest.split_whitespace().next()
    );
    ok(&data, &["audit", "verify"]);

    // Listed no more; the good key is untouched; deleting again is an
    // unknown key.
    let table = ok(&data, &["keys", "list"]);
    assert!(!table.stdout.contains("UNREADABLE"), "{}", table.stdout);
    assert!(table.stdout.contains("rsa2048"));
    assert!(table.stderr.is_empty(), "{}", table.stderr);
    let run = fails(&data, &["keys", "delete", "--name", "p256"]);
    assert!(run.stderr.contains("unknown key 'p256'"), "{}", run.stderr);
    // The name is free again.
    ok(
        &data,
        &["keys", "generate", "--name", "p256", "--kind", "p256"],
    );
}

#[test]
fn a_damaged_file_under_a_ca_key_name_is_never_deleted_by_keys_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = data_dir_with_a_bad_key(dir.path());
    let ca = data.join("keys/ca-int-0badc0de.key");
    std::fs::write(&ca, JUNK).unwrap();
    let table = ok(&data, &["keys", "list"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("ca-int-0badc0de") && l.contains("UNREADABLE")),
        "{}",
        table.stdout
    );
    let run = fails(&data, &["keys", "delete", "--name", "ca-int-0badc0de"]);
    assert!(run.stderr.contains("CA's own keys"), "{}", run.stderr);
    assert!(ca.exists());
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(!log.contains("key.delete"), "{log}");
}

/// Starts `serve` with `config`; no line it prints before listening may
/// hold the bad key file's content.
fn serve(root: &Path, data: &Path, config: &str) -> common::Served {
    let cfg = root.join("sigmux.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = sigmux_cmd(data);
    cmd.arg("--config").arg(&cfg).arg("serve");
    common::serve_until_http(cmd, |line| assert!(!line.contains("JUNK-SECRET"), "{line}"))
}

#[test]
fn serve_starts_with_a_warning_naming_the_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bad) = data_dir_with_a_bad_key(dir.path());
    let server = serve(dir.path(), &data, "[http]\nlisten = \"127.0.0.1:0\"\n");
    assert!(
        server
            .early
            .iter()
            .any(|l| l.contains("WARN") && l.contains(s(&bad)) && l.contains("corrupt key file")),
        "{:?}",
        server.early
    );
    let out = Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", server.addr)])
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("sigmux_keys 1\n"), "{body}");
}

#[test]
fn serve_with_issuance_refuses_to_start_when_the_cas_active_key_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&data, &["ca", "init", "--trust-domain", "example.org"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("ca/state.json")).unwrap()).unwrap();
    let int_key = state["intermediates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "active")
        .expect("an active intermediate")["key_name"]
        .as_str()
        .unwrap()
        .to_string();
    let file = data.join(format!("keys/{int_key}.key"));
    std::fs::write(&file, JUNK).unwrap();
    let cfg = dir.path().join("issuance.toml");
    std::fs::write(
        &cfg,
        "[http]\nlisten = \"127.0.0.1:0\"\n[issuance]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n",
    )
    .unwrap();
    let run = sigmux(&data, &["--config", s(&cfg), "serve"]);
    assert!(!run.ok, "serve started: {}", run.stderr);
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("sigmux: error: "))
        .unwrap_or_else(|| panic!("no error line:\n{}", run.stderr));
    assert!(
        error.contains("active intermediate")
            && error.contains(&int_key)
            && error.contains(s(&file)),
        "{error}"
    );
}
