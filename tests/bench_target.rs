//! `sigmux bench --target`: flags a kind of run does not use are refused by
//! name, `--concurrency 0` is refused everywhere, target addresses say what
//! is wrong with them, and a keyless run reports what it measured (the key
//! kind its signatures show, no mean batch) against a real server reached
//! by host name, IPv4 and IPv6 address.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::ServerProcess;

const SKI: &str = "0123456789abcdef0123456789abcdef01234567";

/// Runs `sigmux bench` with `args` in `dir`, on the embedded defaults.
fn bench(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args(["--data-dir", "bench-data", "bench"])
        .args(args)
        .env_remove("SIGMUX_CONFIG")
        .env_remove("SIGMUX_LOG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the run failed and that its error says each of `words`.
#[track_caller]
fn fails_with(out: &Output, words: &[&str]) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "should have failed; stderr: {err}");
    for w in words {
        assert!(err.contains(w), "'{w}' not in: {err}");
    }
    err
}

/// The flags of a keyless run that stand without a server (nothing is
/// read or dialled before the flags are checked).
fn keyless_args(target: &str) -> Vec<&str> {
    vec![
        "--scheme",
        "ecdsa_secp256r1_sha256",
        "--target",
        target,
        "--ski",
        SKI,
        "--ca",
        "ca.pem",
        "--client-cert",
        "client.pem",
        "--client-key",
        "client.key",
        "--duration",
        "0.2",
    ]
}

fn issue_args(target: &str) -> Vec<&str> {
    vec![
        "--target",
        target,
        "--ca",
        "ca.pem",
        "--client-cert",
        "client.pem",
        "--client-key",
        "client.key",
        "--duration",
        "0.2",
    ]
}

#[test]
fn a_keyless_target_refuses_the_flags_it_does_not_use() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &["--rate", "1000"][..],
        &["--batch", "8"],
        &["--compare-raw"],
        &["--callbacks"],
        &["--kind", "rsa4096"],
        &["--backend", "cpu"],
        &["--caller-sched", "normal"],
        &["--cuda-check", "all"],
        &["--cuda-rsa-mapping", "wide"],
        &["--csr-kind", "p256"],
        &["--ca-kind", "p256"],
        &["--spiffe-prefix", "spiffe://example.org/x"],
    ] {
        let mut args = keyless_args("keyless://127.0.0.1:1");
        args.extend(extra);
        let out = bench(dir.path(), &args);
        let err = fails_with(&out, &[extra[0], "not supported by --target keyless://"]);
        assert!(err.contains("it takes --scheme"), "{err}");
        assert!(
            !err.contains("cannot connect"),
            "refused before dialling: {err}"
        );
    }
    // --kind: the key is the server's; the report reads it off the
    // signatures instead.
    let mut args = keyless_args("keyless://127.0.0.1:1");
    args.extend(["--kind", "rsa4096"]);
    fails_with(&bench(dir.path(), &args), &["--kind", "signatures"]);
}

#[test]
fn an_issuance_target_refuses_the_flags_it_does_not_use() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &["--rate", "10"][..],
        &["--callbacks"],
        &["--kind", "p256"],
        &["--backend", "cpu"],
        &["--caller-sched", "normal"],
        &["--cuda-check", "all"],
        &["--cuda-rsa-mapping", "wide"],
        &["--ski", SKI],
        &["--server-name", "localhost"],
        &["--connections", "2"],
    ] {
        let mut args = issue_args("https://127.0.0.1:1");
        args.extend(extra);
        let out = bench(dir.path(), &args);
        fails_with(&out, &[extra[0], "not supported by --target https://"]);
    }
}

#[test]
fn target_only_flags_are_refused_in_process() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &["--connections", "4"][..],
        &["--csr-kind", "p256"],
        &["--ca-kind", "rsa2048"],
        &["--spiffe-prefix", "spiffe://example.org/x"],
    ] {
        let mut args = vec!["--scheme", "ed25519", "--duration", "0.1"];
        args.extend(extra);
        fails_with(
            &bench(dir.path(), &args),
            &[extra[0], "not supported by the in-process bench"],
        );
    }
    // The scheme is required where it is used.
    fails_with(&bench(dir.path(), &["--duration", "0.1"]), &["--scheme"]);
    let args = keyless_args("keyless://127.0.0.1:1");
    fails_with(&bench(dir.path(), &args[2..]), &["--scheme"]);
}

#[test]
fn concurrency_zero_is_refused_with_and_without_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let zero = ["--concurrency", "0"];
    let mut in_process = vec!["--scheme", "ed25519", "--duration", "0.1"];
    in_process.extend(zero);
    let mut keyless = keyless_args("keyless://127.0.0.1:1");
    keyless.extend(zero);
    let mut issue = issue_args("https://127.0.0.1:1");
    issue.extend(zero);
    for args in [in_process, keyless, issue] {
        let out = bench(dir.path(), &args);
        let err = fails_with(&out, &["--concurrency must be at least 1"]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("ops/s"), "nothing measured: {said}{err}");
    }
    let mut args = keyless_args("keyless://127.0.0.1:1");
    args.extend(["--connections", "0"]);
    fails_with(
        &bench(dir.path(), &args),
        &["--connections must be at least 1"],
    );
    let mut args = issue_args("https://127.0.0.1:1");
    args.extend(["--batch", "0"]);
    fails_with(&bench(dir.path(), &args), &["--batch must be at least 1"]);
}

#[test]
fn a_target_without_a_port_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for target in [
        "keyless://localhost",
        "keyless://localhost:",
        "keyless://[::1]",
    ] {
        fails_with(
            &bench(dir.path(), &keyless_args(target)),
            &[target, "the port is missing"],
        );
    }
    fails_with(
        &bench(dir.path(), &issue_args("https://localhost:")),
        &["https://localhost:", "the port is missing"],
    );
    fails_with(
        &bench(dir.path(), &keyless_args("keyless://::1:2407")),
        &["in brackets"],
    );
    fails_with(
        &bench(dir.path(), &keyless_args("tcp://localhost:2407")),
        &["keyless://HOST:PORT", "https://HOST[:PORT]"],
    );
}

#[test]
fn a_host_name_and_an_ipv6_literal_are_dialled() {
    // No server: the run gets as far as connecting (a refused connection),
    // not "invalid socket address" or "invalid dns name".
    let dir = tempfile::tempdir().unwrap();
    common::ca(dir.path(), "ca");
    common::leaf(dir.path(), "ca", "client", "URI:spiffe://example.org/proxy");
    let port = {
        // A port nothing listens on: bound, then released.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for target in [
        format!("keyless://localhost:{port}"),
        format!("keyless://[::1]:{port}"),
    ] {
        let out = bench(dir.path(), &keyless_args(&target));
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            !err.contains("invalid socket address") && !err.contains("invalid dns name"),
            "{target}: {err}"
        );
        assert!(err.contains("cannot connect"), "{target}: {err}");
    }
}

/// A keyless server on every address of the loopback (`[::]`, which takes
/// IPv4 too where the system allows), with a P-256 and an RSA-2048 key.
struct Keyless {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    port: u16,
    /// Whether the listener takes IPv4 as well as IPv6.
    dual: bool,
    ec_ski: String,
    rsa_ski: String,
    _server: ServerProcess,
}

fn keyless_server() -> Keyless {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    common::ca(&dir, "ca");
    common::leaf(&dir, "ca", "server", "DNS:localhost,IP:127.0.0.1,IP:::1");
    common::leaf(&dir, "ca", "client", "URI:spiffe://example.org/proxy");
    // Dual-stack where the system allows, IPv6 only otherwise.
    let dual = std::net::TcpListener::bind("[::]:0")
        .and_then(|l| {
            let port = l.local_addr()?.port();
            std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ())
        })
        .is_ok();
    std::fs::write(
        dir.join("sigmux.toml"),
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[keyless]\n\
             listen = \"{}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             client_ca = \"ca.pem\"\n[[keyless.clients]]\n\
             id = \"spiffe://example.org/proxy\"\nkeys = [\"*\"]\n",
            if dual { "[::]:0" } else { "[::1]:0" }
        ),
    )
    .unwrap();
    common::sigmux(
        &dir,
        &["keys", "generate", "--name", "ec", "--kind", "p256"],
    );
    common::sigmux(
        &dir,
        &["keys", "generate", "--name", "rsa", "--kind", "rsa2048"],
    );
    let list: serde_json::Value =
        serde_json::from_str(&common::sigmux(&dir, &["keys", "list", "--json"])).unwrap();
    let ski = |name: &str| -> String {
        let k = list
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap();
        k["ski"].as_str().unwrap().to_string()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(&dir)
        .args(["--config", "sigmux.toml", "serve"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let server = ServerProcess(child);
    let mut port = None;
    while port.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("serve exited before listening");
        };
        if let Some(a) = line.split("keyless listening on ").nth(1) {
            let a = a.trim();
            port = Some(a.rsplit(':').next().unwrap().parse::<u16>().unwrap());
        }
    }
    // Keep reading so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Keyless {
        _dir: tmp,
        dir,
        port: port.unwrap(),
        dual,
        ec_ski: ski("ec"),
        rsa_ski: ski("rsa"),
        _server: server,
    }
}

#[test]
fn a_keyless_run_reports_the_servers_key_kind_and_no_mean_batch() {
    let k = keyless_server();
    let mut targets = vec![format!("keyless://[::1]:{}", k.port)];
    if k.dual {
        // A host name (resolved) and an IPv4 address (an IP server name).
        targets.push(format!("keyless://localhost:{}", k.port));
        targets.push(format!("keyless://127.0.0.1:{}", k.port));
    }
    for target in &targets {
        for (ski, scheme, kind) in [
            (&k.ec_ski, "ecdsa_secp256r1_sha256", "p256"),
            (&k.rsa_ski, "rsa_pss_rsae_sha256", "rsa2048"),
        ] {
            // No --server-name: the host is the name, without brackets.
            let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
                .current_dir(&k.dir)
                .args(["--config", "sigmux.toml", "bench", "--target", target])
                .args(["--ski", ski, "--scheme", scheme])
                .args(["--ca", "ca.pem", "--client-cert", "client.pem"])
                .args(["--client-key", "client.key", "--duration", "0.3"])
                .args(["--concurrency", "4", "--connections", "2"])
                .args(["--json", "bench.json"])
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{target}: {said}{}", stderr(&out));
            assert!(!said.contains("mean batch"), "{said}");
            assert!(said.contains(&format!("({kind})")), "{said}");
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(k.dir.join("bench.json")).unwrap()).unwrap();
            assert_eq!(v["kind"], kind, "{v:#}");
            assert!(v["mean_batch"].is_null(), "{v:#}");
            assert!(v["rate"].is_null(), "{v:#}");
            assert_eq!(v["errors"], 0, "{v:#}");
            assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
        }
    }
}

#[test]
fn help_says_how_to_turn_logging_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("SIGMUX_LOG") && help.contains("EnvFilter") && help.contains("stderr"),
        "{help}"
    );
    // A filter that does not parse is named, not silently dropped.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir.path())
        .args(["--data-dir", "d", "keys", "list"])
        .env("SIGMUX_LOG", "sigmux=loud")
        .env_remove("SIGMUX_CONFIG")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.contains("SIGMUX_LOG='sigmux=loud' ignored"), "{err}");
}
