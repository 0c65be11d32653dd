//! `sigmux audit verify` and `sigmux audit restart` as an operator runs
//! them: the real binary on a fresh data dir, a log made by commands that
//! record events (`keys generate`, `ca init`, `ca revoke`), tampered with
//! by hand, then recovered.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_lc_rs::digest;
use serde_json::Value;

fn sigmux(data: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigmux"));
    cmd.arg("--data-dir").arg(data).args(args);
    for v in [
        "SIGMUX_CONFIG",
        "SIGMUX_DATA_DIR",
        "SIGMUX_LOG",
        "SIGMUX_ROOT_PASSPHRASE",
        "RUST_BACKTRACE",
    ] {
        cmd.env_remove(v);
    }
    cmd.output().expect("run sigmux")
}

/// Asserts success; returns stdout.
fn ok(data: &Path, args: &[&str]) -> String {
    let out = sigmux(data, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sigmux {args:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts a clean failure (exit 1, nothing on stdout); returns the
/// `sigmux: error:` line, which must contain every needle.
fn fails(data: &Path, args: &[&str], needles: &[&str]) -> String {
    let out = sigmux(data, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "sigmux {args:?}\n{stderr}");
    assert!(out.stdout.is_empty(), "sigmux {args:?} printed on stdout");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("sigmux: error: "))
        .unwrap_or_else(|| panic!("no error line for {args:?}: {stderr}"))
        .to_string();
    for n in needles {
        assert!(line.contains(n), "{args:?}: {n:?} not in {line}");
    }
    line
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `anchor: SEQ:HASH` line `audit verify` prints.
fn anchor_of(verify_out: &str) -> String {
    verify_out
        .lines()
        .find_map(|l| l.strip_prefix("anchor: "))
        .unwrap_or_else(|| panic!("no anchor line in {verify_out}"))
        .to_string()
}

fn quarantines(data: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.log.broken-")
        })
        .collect();
    out.sort();
    out
}

#[test]
fn verify_prints_the_head_and_checks_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for name in ["a", "b", "c"] {
        ok(
            &data,
            &["keys", "generate", "--kind", "p256", "--name", name],
        );
    }
    let log = data.join("audit.log");
    let out = ok(&data, &["audit", "verify"]);
    let head = sha256_hex(lines(&log)[2].as_bytes());
    assert!(
        out.starts_with(&format!("ok: 3 records, head {head}\n")),
        "{out}"
    );
    let anchor = anchor_of(&out);
    assert_eq!(anchor, format!("3:{head}"));
    let json: Value = serde_json::from_str(&ok(&data, &["audit", "verify", "--json"])).unwrap();
    assert_eq!(json["records"], 3);
    assert_eq!(json["head"], head.as_str());
    assert_eq!(json["anchor"], anchor.as_str());

    // The exported head holds while the log grows.
    ok(
        &data,
        &["keys", "generate", "--kind", "p256", "--name", "d"],
    );
    let out = ok(&data, &["audit", "verify", "--anchor", &anchor]);
    assert!(out.contains(&format!("held: {anchor}")), "{out}");
    assert!(out.starts_with("ok: 4 records"), "{out}");

    // The last record dropped: the chain verifies, the anchor of an
    // earlier head still holds, the latest exported head does not.
    let later = anchor_of(&out);
    let good = std::fs::read_to_string(&log).unwrap();
    let ls = lines(&log);
    std::fs::write(&log, ls[..3].join("\n") + "\n").unwrap();
    ok(&data, &["audit", "verify"]);
    ok(&data, &["audit", "verify", "--anchor", &anchor]);
    fails(
        &data,
        &["audit", "verify", "--anchor", &later],
        &["has 3 records", &format!("anchor {later}"), "removed"],
    );

    // The last record rewritten (nothing chains it): only the anchor
    // tells.
    std::fs::write(&log, good.replacen("\"name\":\"d\"", "\"name\":\"e\"", 1)).unwrap();
    ok(&data, &["audit", "verify"]);
    fails(
        &data,
        &["audit", "verify", "--anchor", &later],
        &["line 4 (record 4)", "rewritten"],
    );
    // A malformed anchor is a usage error.
    let out = sigmux(&data, &["audit", "verify", "--anchor", "4:nothex"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("64 hex digits"), "{err}");
}

#[test]
fn a_broken_log_is_restarted_and_the_ca_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = data.join("audit.log");
    ok(&data, &["ca", "init", "--trust-domain", "example.org"]);
    ok(
        &data,
        &["keys", "generate", "--kind", "p256", "--name", "k"],
    );
    ok(
        &data,
        &["keys", "generate", "--kind", "p256", "--name", "m"],
    );
    let n = lines(&log).len();
    assert!(n >= 3, "{n}");

    // Nothing to restart while the chain holds.
    fails(
        &data,
        &["audit", "restart", "--reason", "x"],
        &["verifies", "nothing to restart"],
    );
    assert!(quarantines(&data).is_empty());

    // Line n-1 (key k) edited: the chain breaks at line n.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"name\":\"k\"", "\"name\":\"q\"", 1)).unwrap();
    let tampered = std::fs::read(&log).unwrap();
    let broken = fails(
        &data,
        &["audit", "verify"],
        &[&format!("line {n}"), "hash chain broken"],
    );
    // Every command that records refuses: the emergency revocation too.
    fails(
        &data,
        &["ca", "revoke", "--serial", "0a1b"],
        &[&format!("line {n}"), "hash chain broken"],
    );
    fails(
        &data,
        &["keys", "generate", "--kind", "p256", "--name", "x"],
        &[&format!("line {n}")],
    );

    let out = ok(
        &data,
        &[
            "audit",
            "restart",
            "--reason",
            "line edited by hand, ticket 42",
        ],
    );
    assert!(out.starts_with("restarted: 1 file moved to "), "{out}");
    let qs = quarantines(&data);
    assert_eq!(qs.len(), 1, "{qs:?}");
    let q = &qs[0];
    let stamp = q.file_name().unwrap().to_string_lossy()["audit.log.broken-".len()..].to_string();
    assert!(
        stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{stamp}"
    );
    // Moved, not copied, name kept.
    assert_eq!(std::fs::read(q.join("audit.log")).unwrap(), tampered);

    // The new chain: one record naming what happened.
    let ls = lines(&log);
    assert_eq!(ls.len(), 1);
    let first: Value = serde_json::from_str(&ls[0]).unwrap();
    assert_eq!(first["event"], "audit_restarted");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["reason"], "line edited by hand, ticket 42");
    assert_eq!(
        first["quarantine"].as_str().unwrap(),
        std::fs::canonicalize(q).unwrap().to_str().unwrap()
    );
    assert_eq!(
        format!("sigmux: error: {}", first["error"].as_str().unwrap()),
        broken
    );
    assert_eq!(first["records_verified"], n as u64 - 1);
    let files = first["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["name"], "audit.log");
    assert_eq!(files[0]["sha256"], sha256_hex(&tampered).as_str());
    assert_eq!(files[0]["bytes"], tampered.len() as u64);

    // The CA records again.
    ok(&data, &["ca", "revoke", "--serial", "0a1b"]);
    ok(
        &data,
        &["keys", "generate", "--kind", "p256", "--name", "x"],
    );
    let out = ok(&data, &["audit", "verify"]);
    assert!(out.starts_with("ok: 3 records"), "{out}");
    // The quarantined log can still be read for what it holds (and where
    // it breaks).
    let moved = q.join("audit.log");
    fails(
        &data,
        &["audit", "verify", moved.to_str().unwrap()],
        &[&format!("line {n}"), "hash chain broken"],
    );
    // Restarting an intact log is refused.
    fails(
        &data,
        &["audit", "restart", "--reason", "again"],
        &["nothing to restart"],
    );
}

#[test]
fn restart_moves_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = data.join("audit.log");
    // A log in segments, as a long-running server leaves it: two older
    // files and the current one, one chain.
    {
        let l = sigmux::audit::AuditLog::open_with(&log, 500).unwrap();
        for i in 0..6 {
            l.append("e", serde_json::json!({ "i": i, "pad": "p".repeat(100) }))
                .unwrap();
        }
    }
    let segs = sigmux::audit::segments(&log).unwrap();
    assert!(segs.len() >= 2, "{segs:?}");
    let mut files: Vec<PathBuf> = segs.iter().map(|(_, p)| p.clone()).collect();
    files.push(log.clone());
    // The first segment cut short by a line: segment 2 no longer follows.
    let first = &files[0];
    let ls = lines(first);
    assert!(ls.len() >= 2, "{ls:?}");
    std::fs::write(first, ls[..ls.len() - 1].join("\n") + "\n").unwrap();
    let contents: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    fails(&data, &["audit", "verify"], &["audit.log.000002 line 1"]);

    let out = ok(&data, &["audit", "restart", "--reason", "segment cut"]);
    assert!(
        out.starts_with(&format!("restarted: {} files moved", files.len())),
        "{out}"
    );
    let q = &quarantines(&data)[0];
    let rec: Value = serde_json::from_str(&lines(&log)[0]).unwrap();
    assert_eq!(rec["records_verified"], (ls.len() - 1) as u64);
    let listed = rec["files"].as_array().unwrap();
    assert_eq!(listed.len(), files.len());
    for ((f, content), entry) in files.iter().zip(&contents).zip(listed) {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert_eq!(entry["name"], name);
        assert_eq!(entry["sha256"], sha256_hex(content).as_str());
        assert_eq!(&std::fs::read(q.join(name)).unwrap(), content);
    }
    assert!(sigmux::audit::segments(&log).unwrap().is_empty());
    ok(&data, &["audit", "verify"]);
}
