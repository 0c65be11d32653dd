//! The `sigmux` command line as a user runs it: the real binary, a fresh
//! data dir per test, and the `openssl` command-line tool as the
//! independent party that makes keys for import and verifies every
//! signature sigmux hands out.
//!
//! Keys that many tests only read (one of each kind, RSA-4096 included) are
//! generated once into a shared data dir; tests that write get their own
//! `tempfile::tempdir()`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Running sigmux and openssl
// ---------------------------------------------------------------------------

/// What one run of a command left behind.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    what: String,
}

impl Run {
    fn from(what: String, out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            what,
        }
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts success and that nothing on stderr looks like a crash.
    fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "{} failed\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout_text(),
            self.stderr
        );
        assert_no_crash(&self.what, &self.stderr);
        self
    }

    /// Asserts a clean failure: non-zero exit, nothing on stdout, exactly one
    /// error line `sigmux: error: ...` containing every needle, no panic.
    /// Returns the error line.
    fn fails_with(self, needles: &[&str]) -> String {
        assert_ne!(
            self.code,
            Some(0),
            "{} should have failed\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout_text(),
            self.stderr
        );
        assert!(
            self.code.is_some(),
            "{} was killed by a signal\nstderr: {}",
            self.what,
            self.stderr
        );
        assert_no_crash(&self.what, &self.stderr);
        assert!(
            self.stdout.is_empty(),
            "{}: printed on stdout although it failed: {}",
            self.what,
            self.stdout_text()
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("sigmux: error: "))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "{}: want exactly one 'sigmux: error: ' line on stderr, got:\n{}",
            self.what,
            self.stderr
        );
        let line = errors[0];
        for n in needles {
            assert!(
                line.contains(n),
                "{}: error line does not contain {n:?}:\n{line}",
                self.what
            );
        }
        line.to_string()
    }
}

fn assert_no_crash(what: &str, stderr: &str) {
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "internal error",
        "stack backtrace",
    ] {
        assert!(
            !stderr.contains(bad),
            "{what}: stderr contains {bad:?}:\n{stderr}"
        );
    }
}

/// A `sigmux` command with no configuration leaking in from the caller's
/// environment.
fn sigmux_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sigmux"));
    for v in [
        "SIGMUX_CONFIG",
        "SIGMUX_DATA_DIR",
        "SIGMUX_LOG",
        "SIGMUX_TEST_KEK",
        "SIGMUX_TEST_KEK_NEW",
        "RUST_BACKTRACE",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c
}

fn run_cmd(mut c: Command) -> Run {
    let what = format!("{c:?}");
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Run::from(what, out)
}

/// `sigmux --data-dir DATA [--config CFG] ARGS...`.
fn sigmux(data: &Path, cfg: Option<&Path>, args: &[&str]) -> Run {
    let mut c = sigmux_cmd();
    c.arg("--data-dir").arg(data);
    if let Some(cfg) = cfg {
        c.arg("--config").arg(cfg);
    }
    c.args(args);
    run_cmd(c)
}

fn openssl(args: &[&str]) -> Run {
    let mut c = Command::new("openssl");
    c.args(args);
    run_cmd(c)
}

/// Runs openssl and returns its stdout; panics when it fails.
fn openssl_ok(args: &[&str]) -> Vec<u8> {
    openssl(args).ok().stdout
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn write(p: &Path, data: impl AsRef<[u8]>) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// PEM text with CRLF line ends turned into LF (for semantic comparison).
fn lf(text: &str) -> String {
    text.replace("\r\n", "\n")
}

// ---------------------------------------------------------------------------
// Schemes, kinds and verification with openssl
// ---------------------------------------------------------------------------

const ALL_SCHEMES: [&str; 9] = [
    "rsa_pkcs1_sha256",
    "rsa_pkcs1_sha384",
    "rsa_pkcs1_sha512",
    "rsa_pss_rsae_sha256",
    "rsa_pss_rsae_sha384",
    "rsa_pss_rsae_sha512",
    "ecdsa_secp256r1_sha256",
    "ecdsa_secp384r1_sha384",
    "ed25519",
];

const ALL_KINDS: [&str; 6] = ["rsa2048", "rsa3072", "rsa4096", "p256", "p384", "ed25519"];

/// The openssl digest name of a scheme, `None` for Ed25519.
fn hash_of(scheme: &str) -> Option<&'static str> {
    if scheme == "ed25519" {
        None
    } else if scheme.ends_with("sha256") {
        Some("sha256")
    } else if scheme.ends_with("sha384") {
        Some("sha384")
    } else if scheme.ends_with("sha512") {
        Some("sha512")
    } else {
        panic!("no hash for {scheme}")
    }
}

fn hash_len(hash: &str) -> usize {
    match hash {
        "sha256" => 32,
        "sha384" => 48,
        "sha512" => 64,
        _ => panic!("{hash}"),
    }
}

/// Verifies `sig` over the message file `msg` with openssl; `pss_salt` is the
/// `rsa_pss_saltlen` value to demand for PSS schemes (`"digest"` or a
/// number). Returns whether openssl accepted it.
fn openssl_verifies(scheme: &str, pub_pem: &Path, msg: &Path, sig: &Path, pss_salt: &str) -> bool {
    let run = match hash_of(scheme) {
        None => openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            s(pub_pem),
            "-rawin",
            "-in",
            s(msg),
            "-sigfile",
            s(sig),
        ]),
        Some(h) => {
            let dash_h = format!("-{h}");
            let salt = format!("rsa_pss_saltlen:{pss_salt}");
            let mgf1 = format!("rsa_mgf1_md:{h}");
            let mut args = vec!["dgst", &dash_h, "-verify", s(pub_pem), "-signature", s(sig)];
            if scheme.starts_with("rsa_pss_") {
                args.extend([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    &salt,
                    "-sigopt",
                    &mgf1,
                ]);
            }
            args.push(s(msg));
            openssl(&args)
        }
    };
    let out = run.stdout_text();
    let verified = out.contains("Verified OK") || out.contains("Signature Verified Successfully");
    assert_eq!(
        verified,
        run.code == Some(0),
        "openssl's exit code and output disagree: {out} {}",
        run.stderr
    );
    verified
}

/// Asserts openssl accepts `sig` for `msg`, and rejects it for a message
/// that differs in one byte (so the verifier is not vacuous).
fn assert_verifies(scheme: &str, pub_pem: &Path, msg: &Path, sig: &Path, label: &str) {
    assert!(
        openssl_verifies(scheme, pub_pem, msg, sig, "digest"),
        "{label}: openssl rejects the {scheme} signature"
    );
    let mut other = read(msg);
    other[0] ^= 1;
    let other_path = sig.with_extension("othermsg");
    write(&other_path, &other);
    assert!(
        !openssl_verifies(scheme, pub_pem, &other_path, sig, "digest"),
        "{label}: openssl accepts the {scheme} signature for a different message"
    );
}

/// The message every signing test signs: text and every byte value.
fn message() -> Vec<u8> {
    let mut m = b"sigmux integration test message\n".to_vec();
    m.extend(0u8..=255);
    m
}

// ---------------------------------------------------------------------------
// The shared data dir: one key of each kind, generated once
// ---------------------------------------------------------------------------

struct Shared {
    /// Keeps the directory alive for the whole run.
    _root: TempDir,
    data: PathBuf,
    msg: PathBuf,
    /// Public key PEM (from `keys public`) per key name (= kind name).
    pubs: BTreeMap<String, PathBuf>,
    /// Key id printed by `keys generate`, per key name.
    ids: BTreeMap<String, String>,
    aws_cfg: PathBuf,
    ossl_cfg: PathBuf,
}

fn engine_config(dir: &Path, engine: &str) -> PathBuf {
    let p = dir.join(format!("{engine}.toml"));
    write(&p, format!("[backends.cpu]\nengine = \"{engine}\"\n"));
    p
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_shared_dirs(tmp);
        let root = tempfile::Builder::new()
            .prefix("cli-shared-")
            .tempdir_in(tmp)
            .expect("shared temp dir");
        let data = root.path().join("data");
        let msg = root.path().join("msg.bin");
        write(&msg, message());

        // The first key creates the KEK; the rest may then run side by side.
        let mut ids = BTreeMap::new();
        let first = sigmux(
            &data,
            None,
            &["keys", "generate", "--name", "ed25519", "--kind", "ed25519"],
        )
        .ok();
        assert!(
            first.stderr.contains("created key-encryption key at"),
            "{}",
            first.stderr
        );
        let mut children = Vec::new();
        for kind in ALL_KINDS.iter().filter(|k| **k != "ed25519") {
            let mut c = sigmux_cmd();
            c.arg("--data-dir")
                .arg(&data)
                .args(["keys", "generate", "--name", kind, "--kind", kind])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            children.push((kind.to_string(), c.spawn().expect("spawn sigmux")));
        }
        let mut lines = vec![("ed25519".to_string(), first.stdout_text())];
        for (kind, child) in children {
            let out = child.wait_with_output().expect("wait sigmux");
            let run = Run::from(format!("keys generate {kind}"), out).ok();
            assert!(
                !run.stderr.contains("created key-encryption key"),
                "the KEK was created twice: {}",
                run.stderr
            );
            lines.push((kind, run.stdout_text()));
        }
        for (kind, line) in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "keys generate printed {line:?}");
            assert_eq!(parts[0], kind);
            assert_eq!(parts[1], kind);
            assert_eq!(parts[2].len(), 64, "{line}");
            ids.insert(kind, parts[2].to_string());
        }
        let mut pubs = BTreeMap::new();
        for kind in ALL_KINDS {
            let pem = sigmux(&data, None, &["keys", "public", "--name", kind]).ok();
            let p = root.path().join(format!("{kind}.pub.pem"));
            write(&p, &pem.stdout);
            pubs.insert(kind.to_string(), p);
        }
        let aws_cfg = engine_config(root.path(), "aws-lc");
        let ossl_cfg = engine_config(root.path(), "openssl");
        Shared {
            data,
            msg,
            pubs,
            ids,
            aws_cfg,
            ossl_cfg,
            _root: root,
        }
    })
}

/// Statics are never dropped, so the shared dir of an earlier run stays in
/// the target dir; remove those older than an hour.
fn remove_stale_shared_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old && e.file_name().to_string_lossy().starts_with("cli-shared-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Signs the shared message with key `key` and `scheme` under `cfg`, writing
/// the signature with `--out`; returns the signature file.
fn sign_shared_to_file(
    sh: &Shared,
    cfg: &Path,
    key: &str,
    scheme: &str,
    out_dir: &Path,
    tag: &str,
) -> PathBuf {
    let sig = out_dir.join(format!("{key}.{scheme}.{tag}.sig"));
    let run = sigmux(
        &sh.data,
        Some(cfg),
        &[
            "sign",
            "--key",
            key,
            "--scheme",
            scheme,
            "--in",
            s(&sh.msg),
            "--out",
            s(&sig),
        ],
    )
    .ok();
    assert!(
        run.stdout.is_empty(),
        "with --out nothing goes to stdout: {}",
        run.stdout_text()
    );
    sig
}

/// The (key, scheme) pairs of the signing matrix: every scheme on the kind
/// it fits, RSA mostly on rsa2048, plus one rsa3072 and one rsa4096 case.
fn matrix() -> Vec<(&'static str, &'static str)> {
    let mut m: Vec<(&str, &str)> = ALL_SCHEMES[..6].iter().map(|s| ("rsa2048", *s)).collect();
    m.push(("rsa3072", "rsa_pss_rsae_sha384"));
    m.push(("rsa4096", "rsa_pkcs1_sha512"));
    m.push(("rsa4096", "rsa_pss_rsae_sha512"));
    m.push(("p256", "ecdsa_secp256r1_sha256"));
    m.push(("p384", "ecdsa_secp384r1_sha384"));
    m.push(("ed25519", "ed25519"));
    m
}

/// `backends --json` under `cfg`: the engine chosen for each scheme.
fn engines_in_use(cfg: Option<&Path>) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let run = sigmux(dir.path(), cfg, &["backends", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).expect("backends --json");
    assert_eq!(v["backends"][0]["name"], "cpu", "{v:#}");
    // RSA results are checked by the CPU libraries themselves (once);
    // ECDSA and Ed25519 from the CPU libraries are not re-verified.
    let checked = &v["backends"][0]["checked_by"];
    assert_eq!(checked["rsa_pkcs1_sha256"], "backend", "{v:#}");
    assert_eq!(checked["rsa_pss_rsae_sha512"], "backend", "{v:#}");
    assert_eq!(checked["ecdsa_secp256r1_sha256"], "none", "{v:#}");
    assert_eq!(v["recheck_self_checked"], false, "{v:#}");
    let engines = v["backends"][0]["details"]["engines"]
        .as_object()
        .unwrap_or_else(|| panic!("no details.engines: {v:#}"));
    engines
        .iter()
        .map(|(k, e)| {
            (
                k.clone(),
                e["engine"].as_str().unwrap_or("<missing>").to_string(),
            )
        })
        .collect()
}

fn sign_matrix_on(engine: &str) {
    let sh = shared();
    let cfg = if engine == "aws-lc" {
        &sh.aws_cfg
    } else {
        &sh.ossl_cfg
    };
    // The config really forces the library, for every scheme.
    let engines = engines_in_use(Some(cfg));
    assert_eq!(
        engines.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut v = ALL_SCHEMES.to_vec();
            v.sort();
            v
        },
        "backends --json lists every scheme"
    );
    for (scheme, e) in &engines {
        assert_eq!(e, engine, "{scheme} does not run on the forced {engine}");
    }

    let out = tempfile::tempdir().unwrap();
    for (key, scheme) in matrix() {
        let sig = sign_shared_to_file(sh, cfg, key, scheme, out.path(), engine);
        let bytes = read(&sig);
        let label = format!("{engine} {key} {scheme}");
        match key {
            "rsa2048" => assert_eq!(bytes.len(), 256, "{label}"),
            "rsa3072" => assert_eq!(bytes.len(), 384, "{label}"),
            "rsa4096" => assert_eq!(bytes.len(), 512, "{label}"),
            "ed25519" => assert_eq!(bytes.len(), 64, "{label}"),
            // ECDSA: a DER SEQUENCE of two INTEGERs.
            _ => assert_eq!(bytes[0], 0x30, "{label}: not DER: {}", hex::encode(&bytes)),
        }
        assert_verifies(scheme, &sh.pubs[key], &sh.msg, &sig, &label);
        if scheme.starts_with("rsa_pss_") {
            // Salt length = hash length, stated explicitly, and a wrong one
            // is refused (so the check above really pinned it).
            let h = hash_of(scheme).unwrap();
            let n = hash_len(h).to_string();
            assert!(
                openssl_verifies(scheme, &sh.pubs[key], &sh.msg, &sig, &n),
                "{label}: salt length is not {n}"
            );
            assert!(
                !openssl_verifies(scheme, &sh.pubs[key], &sh.msg, &sig, "20"),
                "{label}: openssl accepted salt length 20"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Every scheme on both CPU libraries, verified by openssl
// ---------------------------------------------------------------------------

#[test]
fn every_scheme_signed_by_aws_lc_verifies_with_openssl_cli() {
    sign_matrix_on("aws-lc");
}

#[test]
fn every_scheme_signed_by_openssl_library_verifies_with_openssl_cli() {
    sign_matrix_on("openssl");
}

#[test]
fn deterministic_schemes_give_identical_bytes_from_both_libraries() {
    // PKCS#1 v1.5 and Ed25519 are deterministic: two independent libraries
    // must agree byte for byte. Also exercises hex on stdout (no --out).
    let sh = shared();
    let out = tempfile::tempdir().unwrap();
    for (key, scheme) in [
        ("rsa2048", "rsa_pkcs1_sha256"),
        ("rsa2048", "rsa_pkcs1_sha384"),
        ("rsa2048", "rsa_pkcs1_sha512"),
        ("ed25519", "ed25519"),
    ] {
        let mut sigs = Vec::new();
        for cfg in [&sh.aws_cfg, &sh.ossl_cfg] {
            let run = sigmux(
                &sh.data,
                Some(cfg),
                &["sign", "--key", key, "--scheme", scheme, "--in", s(&sh.msg)],
            )
            .ok();
            let text = run.stdout_text();
            assert!(text.ends_with('\n'), "{text:?}");
            let sig =
                hex::decode(text.trim()).unwrap_or_else(|_| panic!("stdout is not hex: {text:?}"));
            sigs.push(sig);
        }
        assert_eq!(
            sigs[0], sigs[1],
            "{key} {scheme}: aws-lc and openssl disagree"
        );
        let f = out.path().join(format!("{scheme}.sig"));
        write(&f, &sigs[0]);
        assert_verifies(scheme, &sh.pubs[key], &sh.msg, &f, scheme);
    }
}

#[test]
fn default_backends_json_names_cpu_and_a_library_per_scheme() {
    let engines = engines_in_use(None);
    for scheme in ALL_SCHEMES {
        let e = engines
            .get(scheme)
            .unwrap_or_else(|| panic!("{scheme} missing from backends --json"));
        assert!(e == "aws-lc" || e == "openssl", "{scheme}: engine {e:?}");
    }
}

// ---------------------------------------------------------------------------
// 2. --digest-hex
// ---------------------------------------------------------------------------

#[test]
fn digest_hex_signatures_verify_against_the_message() {
    let sh = shared();
    let out = tempfile::tempdir().unwrap();
    let d384 = hex::encode(openssl_ok(&["dgst", "-sha384", "-binary", s(&sh.msg)]));
    let d256 = hex::encode(openssl_ok(&["dgst", "-sha256", "-binary", s(&sh.msg)]));
    assert_eq!(d384.len(), 96);
    for (key, scheme, digest) in [
        ("rsa3072", "rsa_pkcs1_sha384", &d384),
        ("rsa2048", "rsa_pss_rsae_sha384", &d384),
        ("p384", "ecdsa_secp384r1_sha384", &d384),
        ("p256", "ecdsa_secp256r1_sha256", &d256),
    ] {
        for (cfg, tag) in [(&sh.aws_cfg, "aws"), (&sh.ossl_cfg, "ossl")] {
            let run = sigmux(
                &sh.data,
                Some(cfg),
                &[
                    "sign",
                    "--key",
                    key,
                    "--scheme",
                    scheme,
                    "--digest-hex",
                    digest,
                ],
            )
            .ok();
            let sig = hex::decode(run.stdout_text().trim()).expect("hex signature");
            let f = out.path().join(format!("{key}.{scheme}.{tag}.sig"));
            write(&f, &sig);
            assert_verifies(scheme, &sh.pubs[key], &sh.msg, &f, &format!("{tag} digest"));
        }
    }
    // Upper-case hex and --out with a digest work too; PKCS#1 is
    // deterministic, so the digest path equals the message path.
    let via_digest = out.path().join("upper.sig");
    sigmux(
        &sh.data,
        None,
        &[
            "sign",
            "--key",
            "rsa3072",
            "--scheme",
            "rsa_pkcs1_sha384",
            "--digest-hex",
            &d384.to_uppercase(),
            "--out",
            s(&via_digest),
        ],
    )
    .ok();
    let via_msg = sign_shared_to_file(
        sh,
        &sh.aws_cfg,
        "rsa3072",
        "rsa_pkcs1_sha384",
        out.path(),
        "msg",
    );
    assert_eq!(read(&via_digest), read(&via_msg));
}

// ---------------------------------------------------------------------------
// 3. Import of keys made by openssl, in every accepted encoding
// ---------------------------------------------------------------------------

/// A private key made by openssl, with what openssl says about its public
/// half.
struct OsslKey {
    pem: PathBuf,
    pub_pem: PathBuf,
    spki_der: Vec<u8>,
}

fn ossl_genpkey(dir: &Path, name: &str, algo_args: &[&str]) -> OsslKey {
    let pem = dir.join(format!("{name}.p8.pem"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algo_args);
    args.extend(["-out", s(&pem)]);
    openssl_ok(&args);
    let pub_pem = dir.join(format!("{name}.pub.pem"));
    openssl_ok(&["pkey", "-in", s(&pem), "-pubout", "-out", s(&pub_pem)]);
    let spki_der = openssl_ok(&["pkey", "-in", s(&pem), "-pubout", "-outform", "DER"]);
    OsslKey {
        pem,
        pub_pem,
        spki_der,
    }
}

fn rsa2048_args() -> [&'static str; 4] {
    ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
}

fn ec_args(curve: &str) -> Vec<String> {
    vec![
        "-algorithm".into(),
        "EC".into(),
        "-pkeyopt".into(),
        format!("ec_paramgen_curve:{curve}"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// SHA-256 of `data`, hex, computed by openssl.
fn ossl_sha256_hex(dir: &Path, data: &[u8]) -> String {
    let f = dir.join("to-hash.bin");
    write(&f, data);
    hex::encode(openssl_ok(&["dgst", "-sha256", "-binary", s(&f)]))
}

/// Imports `file` into a fresh data dir under `dir`, checks what sigmux
/// reports against openssl, signs and verifies with openssl's public key.
fn import_and_check(dir: &Path, label: &str, file: &Path, kind: &str, scheme: &str, k: &OsslKey) {
    let data = dir.join(format!("data-{label}"));
    let run = sigmux(
        &data,
        None,
        &["keys", "import", "--name", "imported", "--file", s(file)],
    )
    .ok();
    let line = run.stdout_text();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "{label}: {line:?}");
    assert_eq!(parts[0], "imported", "{label}");
    assert_eq!(parts[1], kind, "{label}");
    assert_eq!(
        parts[2],
        ossl_sha256_hex(dir, &k.spki_der),
        "{label}: key id is not SHA-256 of openssl's SPKI"
    );
    let public = sigmux(&data, None, &["keys", "public", "--name", "imported"]).ok();
    let ossl_pub = String::from_utf8(read(&k.pub_pem)).unwrap();
    assert_eq!(
        lf(&public.stdout_text()),
        ossl_pub,
        "{label}: keys public differs from openssl pkey -pubout"
    );
    let msg = dir.join(format!("{label}.msg"));
    write(&msg, message());
    let sig = dir.join(format!("{label}.sig"));
    sign_file(
        &|args: &[&str]| sigmux(&data, None, args),
        "imported",
        scheme,
        &msg,
        &sig,
    );
    assert_verifies(scheme, &k.pub_pem, &msg, &sig, label);
}

/// `sigmux sign --key KEY --scheme SCHEME --in MSG --out SIG` through `run`
/// (a `sigmux` with its data dir and KEK set); asserts success.
fn sign_file(run: &dyn Fn(&[&str]) -> Run, key: &str, scheme: &str, msg: &Path, sig: &Path) {
    run(&[
        "sign",
        "--key",
        key,
        "--scheme",
        scheme,
        "--in",
        s(msg),
        "--out",
        s(sig),
    ])
    .ok();
}

/// Asserts `der` is a PKCS#8 PrivateKeyInfo: SEQUENCE { INTEGER 0,
/// AlgorithmIdentifier SEQUENCE, ... } (PKCS#1 and SEC1 have INTEGERs or an
/// OCTET STRING where the AlgorithmIdentifier is).
fn assert_pkcs8(der: &[u8]) {
    let body = match der[1] {
        0x81 => &der[3..],
        0x82 => &der[4..],
        _ => &der[2..],
    };
    assert_eq!(
        &body[..4],
        &[0x02, 0x01, 0x00, 0x30],
        "not PKCS#8: {}",
        hex::encode(&der[..der.len().min(16)])
    );
}

fn first_line(p: &Path) -> String {
    String::from_utf8_lossy(&read(p))
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn import_rsa_pkcs8_and_pkcs1_in_pem_and_der() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = ossl_genpkey(d, "rsa", &rsa2048_args());
    assert_eq!(first_line(&k.pem), "-----BEGIN PRIVATE KEY-----");

    let p8_der = d.join("rsa.p8.der");
    openssl_ok(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        s(&k.pem),
        "-outform",
        "DER",
        "-out",
        s(&p8_der),
    ]);
    assert_pkcs8(&read(&p8_der));

    let p1_pem = d.join("rsa.p1.pem");
    openssl_ok(&["pkey", "-in", s(&k.pem), "-traditional", "-out", s(&p1_pem)]);
    assert_eq!(first_line(&p1_pem), "-----BEGIN RSA PRIVATE KEY-----");

    let p1_pem_rsa = d.join("rsa.p1.rsa.pem");
    openssl_ok(&[
        "rsa",
        "-in",
        s(&k.pem),
        "-traditional",
        "-out",
        s(&p1_pem_rsa),
    ]);
    assert_eq!(first_line(&p1_pem_rsa), "-----BEGIN RSA PRIVATE KEY-----");

    let p1_der = d.join("rsa.p1.der");
    openssl_ok(&[
        "rsa",
        "-in",
        s(&k.pem),
        "-traditional",
        "-outform",
        "DER",
        "-out",
        s(&p1_der),
    ]);
    assert_eq!(read(&p1_der)[7], 0x02, "PKCS#1 DER starts with INTEGERs");

    // PEM with text before the block (as `openssl pkcs12` writes it).
    let with_text = d.join("rsa.text.pem");
    let mut t = b"Bag Attributes\n    friendlyName: test\n".to_vec();
    t.extend(read(&k.pem));
    write(&with_text, t);

    for (label, file, scheme) in [
        ("pkcs8-pem", &k.pem, "rsa_pss_rsae_sha256"),
        ("pkcs8-der", &p8_der, "rsa_pkcs1_sha256"),
        ("pkcs1-pem-pkey", &p1_pem, "rsa_pss_rsae_sha512"),
        ("pkcs1-pem-rsa", &p1_pem_rsa, "rsa_pkcs1_sha384"),
        ("pkcs1-der", &p1_der, "rsa_pss_rsae_sha384"),
        ("pkcs8-pem-with-text", &with_text, "rsa_pkcs1_sha512"),
    ] {
        import_and_check(d, label, file, "rsa2048", scheme, &k);
    }
}

#[test]
fn import_ec_pkcs8_and_sec1_in_pem_and_der() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (curve, kind, scheme) in [
        ("P-256", "p256", "ecdsa_secp256r1_sha256"),
        ("P-384", "p384", "ecdsa_secp384r1_sha384"),
    ] {
        let k = ossl_genpkey(d, kind, &strs(&ec_args(curve)));
        assert_eq!(first_line(&k.pem), "-----BEGIN PRIVATE KEY-----");
        let p8_der = d.join(format!("{kind}.p8.der"));
        openssl_ok(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            s(&k.pem),
            "-outform",
            "DER",
            "-out",
            s(&p8_der),
        ]);
        assert_pkcs8(&read(&p8_der));
        let sec1_pem = d.join(format!("{kind}.sec1.pem"));
        openssl_ok(&["ec", "-in", s(&k.pem), "-out", s(&sec1_pem)]);
        assert_eq!(first_line(&sec1_pem), "-----BEGIN EC PRIVATE KEY-----");
        let sec1_der = d.join(format!("{kind}.sec1.der"));
        openssl_ok(&[
            "ec",
            "-in",
            s(&k.pem),
            "-outform",
            "DER",
            "-out",
            s(&sec1_der),
        ]);
        let der = read(&sec1_der);
        let body = if der[1] == 0x81 { &der[3..] } else { &der[2..] };
        assert_eq!(&body[..3], &[0x02, 0x01, 0x01], "SEC1 version 1");
        for (label, file) in [
            ("pkcs8-pem", &k.pem),
            ("pkcs8-der", &p8_der),
            ("sec1-pem", &sec1_pem),
            ("sec1-der", &sec1_der),
        ] {
            import_and_check(d, &format!("{kind}-{label}"), file, kind, scheme, &k);
        }
    }
}

#[test]
fn import_ed25519_pkcs8_in_pem_and_der() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = ossl_genpkey(d, "ed", &["-algorithm", "ed25519"]);
    let der = d.join("ed.p8.der");
    openssl_ok(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        s(&k.pem),
        "-outform",
        "DER",
        "-out",
        s(&der),
    ]);
    assert_pkcs8(&read(&der));
    import_and_check(d, "ed-pem", &k.pem, "ed25519", "ed25519", &k);
    import_and_check(d, "ed-der", &der, "ed25519", "ed25519", &k);
}

#[test]
fn import_openssl_ecparam_genkey_output() {
    // `openssl ecparam -genkey` writes an EC PARAMETERS block before the
    // EC PRIVATE KEY block by default; that is a normal SEC1 key file.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("ecparam.pem");
    openssl_ok(&["ecparam", "-name", "prime256v1", "-genkey", "-out", s(&key)]);
    assert_eq!(first_line(&key), "-----BEGIN EC PARAMETERS-----");
    let pub_pem = d.join("ecparam.pub.pem");
    openssl_ok(&["pkey", "-in", s(&key), "-pubout", "-out", s(&pub_pem)]);
    let k = OsslKey {
        spki_der: openssl_ok(&["pkey", "-in", s(&key), "-pubout", "-outform", "DER"]),
        pem: key.clone(),
        pub_pem,
    };
    import_and_check(d, "ecparam", &key, "p256", "ecdsa_secp256r1_sha256", &k);
}

#[test]
fn keys_public_is_byte_identical_to_openssl_pubout() {
    // `keys public` prints SPKI PEM; on a Unix command line that is the
    // same text `openssl pkey -pubout` writes (LF line ends).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = ossl_genpkey(d, "ed", &["-algorithm", "ed25519"]);
    let data = d.join("data");
    sigmux(
        &data,
        None,
        &["keys", "import", "--name", "k", "--file", s(&k.pem)],
    )
    .ok();
    let public = sigmux(&data, None, &["keys", "public", "--name", "k"]).ok();
    assert_eq!(
        public.stdout_text(),
        String::from_utf8(read(&k.pub_pem)).unwrap(),
        "keys public output (CR shown as \\r) differs from openssl's PEM"
    );
}

#[test]
fn the_same_key_cannot_be_imported_twice_under_two_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = ossl_genpkey(d, "ed", &["-algorithm", "ed25519"]);
    let data = d.join("data");
    sigmux(
        &data,
        None,
        &["keys", "import", "--name", "one", "--file", s(&k.pem)],
    )
    .ok();
    sigmux(
        &data,
        None,
        &["keys", "import", "--name", "two", "--file", s(&k.pem)],
    )
    .fails_with(&["cannot import key", "already stored under another name"]);
    assert!(!data.join("keys/two.key").exists());
}

// ---------------------------------------------------------------------------
// 4. Lookups: list, key id, SKI
// ---------------------------------------------------------------------------

/// The RFC 5280 method-1 SKI openssl puts in a self-signed certificate made
/// from `key_pem`, as lower-case hex.
fn ossl_ski(dir: &Path, key_pem: &Path) -> String {
    let cert = dir.join("ski-cert.pem");
    openssl_ok(&[
        "req",
        "-new",
        "-x509",
        "-key",
        s(key_pem),
        "-subj",
        "/CN=x",
        "-days",
        "1",
        "-out",
        s(&cert),
    ]);
    let text = String::from_utf8(openssl_ok(&[
        "x509",
        "-in",
        s(&cert),
        "-noout",
        "-ext",
        "subjectKeyIdentifier",
    ]))
    .unwrap();
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 59 && l.contains(':'))
        .unwrap_or_else(|| panic!("no SKI in {text}"));
    line.replace(':', "").to_lowercase()
}

/// The subjectPublicKey BIT STRING contents (without the unused-bits octet)
/// of a SubjectPublicKeyInfo: a tiny DER walk, independent of sigmux.
fn spki_key_bits(spki: &[u8]) -> &[u8] {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = match b[1] {
            n if n < 0x80 => (n as usize, 2),
            0x81 => (b[2] as usize, 3),
            0x82 => (((b[2] as usize) << 8) | b[3] as usize, 4),
            other => panic!("length form {other:#x}"),
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (tag, body, rest) = tlv(spki);
    assert!(tag == 0x30 && rest.is_empty());
    let (tag, _alg, rest) = tlv(body);
    assert_eq!(tag, 0x30);
    let (tag, bits, rest) = tlv(rest);
    assert!(tag == 0x03 && rest.is_empty() && bits[0] == 0);
    &bits[1..]
}

#[test]
fn keys_list_json_has_ids_and_skis_that_match_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut expected = BTreeMap::new();
    let ec256 = ec_args("P-256");
    let ec384 = ec_args("P-384");
    let specs: [(&str, Vec<&str>); 4] = [
        ("rsa2048", rsa2048_args().to_vec()),
        ("p256", strs(&ec256)),
        ("p384", strs(&ec384)),
        ("ed25519", vec!["-algorithm", "ed25519"]),
    ];
    for (kind, args) in specs {
        let k = ossl_genpkey(d, kind, &args);
        let name = format!("key-{kind}");
        sigmux(
            &data,
            None,
            &["keys", "import", "--name", &name, "--file", s(&k.pem)],
        )
        .ok();
        let key_id = ossl_sha256_hex(d, &k.spki_der);
        let ski = ossl_ski(d, &k.pem);
        // Cross-check openssl's SKI with SHA-1 of the key bits (openssl dgst).
        let bits = d.join("bits.bin");
        write(&bits, spki_key_bits(&k.spki_der));
        assert_eq!(
            hex::encode(openssl_ok(&["dgst", "-sha1", "-binary", s(&bits)])),
            ski
        );
        expected.insert(name, (kind, key_id, ski, k.spki_der));
    }
    let after = before + 600;

    let run = sigmux(&data, None, &["keys", "list", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON");
    let arr = v.as_array().expect("an array");
    assert_eq!(arr.len(), expected.len(), "{v:#}");
    let names: Vec<&str> = arr.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    for e in arr {
        let name = e["name"].as_str().unwrap();
        let (kind, key_id, ski, spki) = &expected[name];
        assert_eq!(e["kind"], *kind, "{name}");
        assert_eq!(e["placement"], "soft", "{name}");
        assert_eq!(e["key_id"].as_str().unwrap(), key_id, "{name}: key_id");
        assert_eq!(e["ski"].as_str().unwrap(), ski, "{name}: ski");
        assert_eq!(
            B64.decode(e["spki"].as_str().unwrap()).unwrap(),
            *spki,
            "{name}: spki"
        );
        let created = e["created"].as_u64().expect("created is a number");
        assert!((before..=after).contains(&created), "{name}: {created}");
        let mut fields: Vec<&String> = e.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "created",
                "key_id",
                "kind",
                "name",
                "placement",
                "ski",
                "spki"
            ],
            "{name}: exactly the documented fields"
        );
    }

    // The table form names every key with its kind, id and SKI.
    let table = sigmux(&data, None, &["keys", "list"]).ok().stdout_text();
    for (name, (kind, key_id, ski, _)) in &expected {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not in\n{table}"));
        for want in [*kind, key_id.as_str(), ski.as_str(), "soft"] {
            assert!(line.contains(want), "{line} lacks {want}");
        }
    }
}

#[test]
fn generated_keys_are_listed_with_their_kinds_and_ids() {
    let sh = shared();
    let run = sigmux(&sh.data, None, &["keys", "list", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for e in v.as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert_eq!(e["kind"], name, "keys are named after their kind");
        assert_eq!(e["key_id"].as_str().unwrap(), sh.ids[name]);
        // openssl's own DER encoding of the printed public key hashes to the id.
        let der = openssl_ok(&[
            "pkey",
            "-pubin",
            "-in",
            s(&sh.pubs[name]),
            "-outform",
            "DER",
        ]);
        assert_eq!(ossl_sha256_hex(tmp.path(), &der), sh.ids[name], "{name}");
        seen.push(name.to_string());
    }
    let mut want: Vec<String> = ALL_KINDS.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
    // RSA key sizes are what the kind says.
    for (kind, bits) in [("rsa2048", 2048), ("rsa3072", 3072), ("rsa4096", 4096)] {
        let text = String::from_utf8(openssl_ok(&[
            "pkey",
            "-pubin",
            "-in",
            s(&sh.pubs[kind]),
            "-noout",
            "-text",
        ]))
        .unwrap();
        assert!(text.contains(&format!("({bits} bit)")), "{kind}: {text}");
    }
}

// ---------------------------------------------------------------------------
// 5. Encryption at rest and the key-encryption key
// ---------------------------------------------------------------------------

/// Every form in which the secret `der` (and the raw `secret` inside it)
/// could leak as text or bytes.
fn secret_forms(der: &[u8], secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for (what, bytes) in [("pkcs8", der), ("raw secret", secret)] {
        v.push((format!("{what} bytes"), bytes.to_vec()));
        v.push((format!("{what} hex"), hex::encode(bytes).into_bytes()));
        v.push((format!("{what} HEX"), hex::encode_upper(bytes).into_bytes()));
        v.push((format!("{what} base64"), B64.encode(bytes).into_bytes()));
    }
    v
}

/// The raw private value inside an openssl PKCS#8 key: the Ed25519 seed or
/// the EC private scalar (the OCTET STRING after SEC1's version 1).
fn raw_secret(der: &[u8], kind: &str) -> Vec<u8> {
    match kind {
        "ed25519" => {
            assert_eq!(der.len(), 48);
            der[16..].to_vec()
        }
        "p256" => {
            let at = der
                .windows(5)
                .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
                .expect("SEC1 private key inside PKCS#8");
            der[at + 5..at + 5 + 32].to_vec()
        }
        _ => panic!("{kind}"),
    }
}

fn assert_no_secret(label: &str, hay: &[u8], forms: &[(String, Vec<u8>)]) {
    for (what, needle) in forms {
        assert!(!contains(hay, needle), "{label} contains the {what}");
    }
}

#[test]
fn key_files_hold_no_private_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    for (kind, args) in [
        ("ed25519", vec!["-algorithm", "ed25519"]),
        ("p256", strs(&ec_args("P-256"))),
    ] {
        let k = ossl_genpkey(d, kind, &args);
        let der = openssl_ok(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            s(&k.pem),
            "-outform",
            "DER",
        ]);
        let forms = secret_forms(&der, &raw_secret(&der, kind));
        sigmux(
            &data,
            None,
            &["keys", "import", "--name", kind, "--file", s(&k.pem)],
        )
        .ok();
        let file = data.join(format!("keys/{kind}.key"));
        let stored = read(&file);
        assert_no_secret(&file.display().to_string(), &stored, &forms);
        // Nothing else in the data dir holds it either (the KEK file aside,
        // which holds only the KEK).
        for e in std::fs::read_dir(data.join("keys")).unwrap().flatten() {
            assert_no_secret(&e.path().display().to_string(), &read(&e.path()), &forms);
        }
        // Public commands do not print it.
        for args in [
            vec!["keys", "list", "--json"],
            vec!["keys", "list"],
            vec!["keys", "public", "--name", kind],
        ] {
            let run = sigmux(&data, None, &args).ok();
            assert_no_secret(&format!("{args:?} stdout"), &run.stdout, &forms);
            assert_no_secret(&format!("{args:?} stderr"), run.stderr.as_bytes(), &forms);
        }
        // The file still works: sigmux decrypts it to sign.
        let msg = d.join("m");
        write(&msg, message());
        let sig = d.join(format!("{kind}.sig"));
        let scheme = if kind == "p256" {
            "ecdsa_secp256r1_sha256"
        } else {
            "ed25519"
        };
        sigmux(
            &data,
            None,
            &[
                "sign",
                "--key",
                kind,
                "--scheme",
                scheme,
                "--in",
                s(&msg),
                "--out",
                s(&sig),
            ],
        )
        .ok();
        assert_verifies(scheme, &k.pub_pem, &msg, &sig, kind);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [data.join("kek"), data.join("keys/p256.key")] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
        }
    }
}

/// A fresh data dir with one generated p256 key named `k`.
fn data_dir_with_key(d: &Path) -> PathBuf {
    let data = d.join("data");
    let run = sigmux(
        &data,
        None,
        &["keys", "generate", "--name", "k", "--kind", "p256"],
    )
    .ok();
    assert!(
        run.stderr.contains("created key-encryption key at"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(s(&data.join("kek"))), "{}", run.stderr);
    let kek = String::from_utf8(read(&data.join("kek"))).unwrap();
    assert_eq!(kek.trim().len(), 64, "KEK file holds 64 hex chars");
    assert!(hex::decode(kek.trim()).is_ok());
    data
}

fn sign_k(data: &Path, cfg: Option<&Path>) -> Run {
    sigmux(
        data,
        cfg,
        &[
            "sign",
            "--key",
            "k",
            "--scheme",
            "ecdsa_secp256r1_sha256",
            "--digest-hex",
            &"ab".repeat(32),
        ],
    )
}

#[test]
fn wrong_kek_cannot_decrypt_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_with_key(dir.path());
    sign_k(&data, None).ok();
    let kek_path = data.join("kek");
    let old = String::from_utf8(read(&kek_path)).unwrap();
    let other = if old.trim() == "11".repeat(32) {
        "22".repeat(32)
    } else {
        "11".repeat(32)
    };
    write(&kek_path, format!("{other}\n"));
    let line = sign_k(&data, None).fails_with(&["is not the one the keys"]);
    assert!(
        line.contains(s(&data.join("keys"))),
        "names the keys directory: {line}"
    );
    assert!(!line.contains(&other), "the KEK is not echoed: {line}");
    // Public facts need no KEK.
    sigmux(&data, None, &["keys", "list"]).ok();
    sigmux(&data, None, &["keys", "public", "--name", "k"]).ok();
    // The right KEK works again.
    write(&kek_path, &old);
    sign_k(&data, None).ok();
    // A KEK file that is not 64 hex characters is named as such.
    write(&kek_path, "not hex\n");
    sign_k(&data, None).fails_with(&["key-encryption key", "64 hex characters"]);
}

#[test]
fn missing_kek_file_after_keys_exist_is_an_error_not_a_new_kek() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_with_key(dir.path());
    let kek_path = data.join("kek");
    std::fs::remove_file(&kek_path).unwrap();
    let line = sign_k(&data, None).fails_with(&["key-encryption key", s(&kek_path)]);
    assert!(line.contains("missing"), "{line}");
    // Neither generate nor import may quietly make a new KEK: that would
    // leave the existing key undecryptable.
    sigmux(
        &data,
        None,
        &["keys", "generate", "--name", "k2", "--kind", "ed25519"],
    )
    .fails_with(&["key-encryption key", s(&kek_path)]);
    let k = ossl_genpkey(dir.path(), "ed", &["-algorithm", "ed25519"]);
    sigmux(
        &data,
        None,
        &["keys", "import", "--name", "k3", "--file", s(&k.pem)],
    )
    .fails_with(&["key-encryption key", s(&kek_path)]);
    assert!(!kek_path.exists(), "a new KEK file was created");
    assert!(!data.join("keys/k2.key").exists());
    assert!(!data.join("keys/k3.key").exists());
}

#[test]
fn kek_from_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let cfg = d.join("env.toml");
    write(&cfg, "[keys]\nkek_env = \"SIGMUX_TEST_KEK\"\n");

    // Unset: the error names the variable (and nothing is created).
    sigmux(
        &data,
        Some(&cfg),
        &["keys", "generate", "--name", "k", "--kind", "ed25519"],
    )
    .fails_with(&["SIGMUX_TEST_KEK"]);
    assert!(!data.join("keys/k.key").exists());

    let with = |val: &str, args: &[&str]| {
        let mut c = sigmux_cmd();
        c.arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("SIGMUX_TEST_KEK", val);
        run_cmd(c)
    };
    let kek = "5a".repeat(32);
    let run = with(
        &kek,
        &["keys", "generate", "--name", "k", "--kind", "ed25519"],
    )
    .ok();
    assert!(
        !run.stderr.contains("created key-encryption key"),
        "{}",
        run.stderr
    );
    assert!(!data.join("kek").exists(), "no KEK file with kek_env");
    let msg = d.join("m");
    write(&msg, message());
    let sig = d.join("sig");
    let sign_args = [
        "sign",
        "--key",
        "k",
        "--scheme",
        "ed25519",
        "--in",
        s(&msg),
        "--out",
        s(&sig),
    ];
    with(&kek, &sign_args).ok();
    let pub_pem = d.join("pub.pem");
    write(
        &pub_pem,
        with(&kek, &["keys", "public", "--name", "k"]).ok().stdout,
    );
    assert_verifies("ed25519", &pub_pem, &msg, &sig, "kek_env");

    // Unset again, or another value: refused, naming the cause.
    sigmux(&data, Some(&cfg), &sign_args).fails_with(&["SIGMUX_TEST_KEK"]);
    with(&"a5".repeat(32), &sign_args).fails_with(&["is not the one the keys"]);
    with("short", &sign_args).fails_with(&["SIGMUX_TEST_KEK", "64 hex characters"]);
}

/// Signs `msg` with stored key `name` through `run` (a `sigmux` with the
/// data dir and KEK set) and checks the signature with the openssl CLI.
fn sign_and_verify(d: &Path, run: &dyn Fn(&[&str]) -> Run, name: &str, scheme: &str) {
    let msg = d.join("m");
    write(&msg, message());
    let sig = d.join(format!("{name}.sig"));
    let pub_pem = d.join(format!("{name}.pub.pem"));
    sign_file(run, name, scheme, &msg, &sig);
    write(
        &pub_pem,
        run(&["keys", "public", "--name", name]).ok().stdout,
    );
    assert_verifies(scheme, &pub_pem, &msg, &sig, name);
}

/// The `sealed` field of a key file: the encrypted private key.
fn sealed_of(data: &Path, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&read(&data.join(format!("keys/{name}.key")))).unwrap();
    v["sealed"]
        .as_str()
        .expect("a soft key file has `sealed`")
        .to_owned()
}

#[test]
fn rotate_kek_reencrypts_every_key_and_retires_the_old_kek_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let keys = [
        ("r", "rsa2048", "rsa_pss_rsae_sha256"),
        ("e", "p256", "ecdsa_secp256r1_sha256"),
    ];
    for (name, kind, _) in keys {
        sigmux(
            &data,
            None,
            &["keys", "generate", "--name", name, "--kind", kind],
        )
        .ok();
    }
    let kek_path = data.join("kek");
    let old_kek = read(&kek_path);
    let old_sealed = sealed_of(&data, "r");

    let out = sigmux(&data, None, &["keys", "rotate-kek"])
        .ok()
        .stdout_text();
    assert!(out.contains("2 key(s) re-encrypted"), "{out}");
    assert!(
        out.contains(s(&kek_path)),
        "the new KEK's file is named: {out}"
    );
    let new_kek = read(&kek_path);
    assert_ne!(new_kek, old_kek);
    assert_eq!(new_kek.len(), 65, "64 hex characters and a newline");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kek_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the new KEK file is private");
    }
    assert_ne!(sealed_of(&data, "r"), old_sealed);
    assert!(!data.join("kek.next").exists());

    // Every key still signs, verified by openssl.
    let now = |args: &[&str]| sigmux(&data, None, args);
    for (name, _, scheme) in keys {
        sign_and_verify(d, &now, name, scheme);
    }
    // The old KEK opens nothing now, and the error says why.
    let old_path = d.join("old-kek");
    write(&old_path, &old_kek);
    let old_cfg = d.join("old.toml");
    write(
        &old_cfg,
        format!("[keys]\nkek_file = \"{}\"\n", s(&old_path)),
    );
    sigmux(
        &data,
        Some(&old_cfg),
        &[
            "sign",
            "--key",
            "r",
            "--scheme",
            "rsa_pss_rsae_sha256",
            "--digest-hex",
            &"00".repeat(32),
        ],
    )
    .fails_with(&["is not the one the keys"]);
    // Rotating from the old KEK is refused too, changing nothing.
    sigmux(&data, Some(&old_cfg), &["keys", "rotate-kek"])
        .fails_with(&["not under the configured one"]);
    assert_eq!(read(&kek_path), new_kek);

    // Rotated again, to a KEK the operator supplies.
    let given = d.join("given-kek");
    write(&given, "c3".repeat(32));
    let out = sigmux(
        &data,
        None,
        &["keys", "rotate-kek", "--new-kek-file", s(&given)],
    )
    .ok()
    .stdout_text();
    assert!(out.contains("2 key(s) re-encrypted"), "{out}");
    assert_eq!(
        String::from_utf8(read(&kek_path)).unwrap().trim(),
        "c3".repeat(32)
    );
    sign_and_verify(d, &now, "e", "ecdsa_secp256r1_sha256");

    // Both rotations are in the audit log, whose chain still verifies.
    let audit = String::from_utf8(read(&data.join("audit.log"))).unwrap();
    assert_eq!(audit.matches("kek.rotate").count(), 2, "{audit}");
    sigmux(&data, None, &["audit", "verify"]).ok();
}

#[test]
fn rotate_kek_from_an_environment_variable_takes_the_new_key_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let cfg = d.join("env.toml");
    write(&cfg, "[keys]\nkek_env = \"SIGMUX_TEST_KEK\"\n");
    let (old, new) = ("5a".repeat(32), "a6".repeat(32));
    let with = |kek: &str, args: &[&str]| {
        let mut c = sigmux_cmd();
        c.arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("SIGMUX_TEST_KEK", kek)
            .env("SIGMUX_TEST_KEK_NEW", &new);
        run_cmd(c)
    };
    with(
        &old,
        &["keys", "generate", "--name", "k", "--kind", "ed25519"],
    )
    .ok();
    with(&old, &["keys", "rotate-kek"]).fails_with(&["SIGMUX_TEST_KEK", "--new-kek-env"]);
    let out = with(
        &old,
        &["keys", "rotate-kek", "--new-kek-env", "SIGMUX_TEST_KEK_NEW"],
    )
    .ok()
    .stdout_text();
    assert!(out.contains("1 key(s) re-encrypted"), "{out}");
    assert!(
        out.contains("set the environment variable SIGMUX_TEST_KEK"),
        "{out}"
    );
    assert!(!data.join("kek").exists(), "no KEK file with kek_env");
    with(
        &old,
        &[
            "sign",
            "--key",
            "k",
            "--scheme",
            "ed25519",
            "--digest-hex",
            "00",
        ],
    )
    .fails_with(&["is not the one the keys"]);
    sign_and_verify(d, &|args: &[&str]| with(&new, args), "k", "ed25519");
}

// ---------------------------------------------------------------------------
// 6. Bad input: one clear error line, non-zero exit, no panic
// ---------------------------------------------------------------------------

#[test]
fn sign_errors_name_the_problem() {
    let sh = shared();
    let data = &sh.data;
    let msg = s(&sh.msg);
    let d32 = "00".repeat(32);
    let d31 = "00".repeat(31);
    let missing = sh.data.join("no-such-message");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--key", "nope", "--scheme", "ed25519", "--in", msg],
            vec!["unknown key 'nope'"],
        ),
        (
            vec![
                "--key",
                "rsa2048",
                "--scheme",
                "rsa_pkcs1_sha1",
                "--in",
                msg,
            ],
            vec!["unknown scheme 'rsa_pkcs1_sha1'", "rsa_pss_rsae_sha256"],
        ),
        (
            vec![
                "--key",
                "p256",
                "--scheme",
                "ecdsa_secp384r1_sha384",
                "--in",
                msg,
            ],
            vec!["ecdsa_secp384r1_sha384", "not valid for a p256 key"],
        ),
        (
            vec![
                "--key",
                "ed25519",
                "--scheme",
                "rsa_pss_rsae_sha256",
                "--in",
                msg,
            ],
            vec!["rsa_pss_rsae_sha256", "not valid for", "ed25519"],
        ),
        (
            vec!["--key", "rsa2048", "--scheme", "ed25519", "--in", msg],
            vec!["not valid for", "rsa2048"],
        ),
        (
            vec![
                "--key",
                "rsa2048",
                "--scheme",
                "rsa_pkcs1_sha256",
                "--digest-hex",
                &d31,
            ],
            vec!["wrong digest length", "expected 32 bytes, got 31"],
        ),
        (
            vec![
                "--key",
                "p384",
                "--scheme",
                "ecdsa_secp384r1_sha384",
                "--digest-hex",
                &d32,
            ],
            vec!["wrong digest length", "expected 48 bytes, got 32"],
        ),
        (
            vec![
                "--key",
                "ed25519",
                "--scheme",
                "ed25519",
                "--digest-hex",
                &d32,
            ],
            vec!["ed25519", "prehashed digest cannot be signed"],
        ),
        (
            vec![
                "--key",
                "rsa2048",
                "--scheme",
                "rsa_pkcs1_sha256",
                "--digest-hex",
                "zz",
            ],
            vec!["--digest-hex", "not valid hex"],
        ),
        (
            vec![
                "--key",
                "rsa2048",
                "--scheme",
                "rsa_pkcs1_sha256",
                "--digest-hex",
                "abc",
            ],
            vec!["--digest-hex", "not valid hex"],
        ),
        (
            vec![
                "--key",
                "rsa2048",
                "--scheme",
                "rsa_pkcs1_sha256",
                "--in",
                s(&missing),
            ],
            vec![s(&missing)],
        ),
        (
            vec!["--key", "../etc", "--scheme", "ed25519", "--in", msg],
            vec!["unknown key"],
        ),
    ];
    for (args, needles) in cases {
        let mut full = vec!["sign"];
        full.extend(args);
        sigmux(data, None, &full).fails_with(&needles);
    }
    // An --out that cannot be written names the path.
    let bad_out = sh.data.join("no-such-dir/sig.bin");
    sigmux(
        data,
        None,
        &[
            "sign",
            "--key",
            "ed25519",
            "--scheme",
            "ed25519",
            "--in",
            msg,
            "--out",
            s(&bad_out),
        ],
    )
    .fails_with(&[s(&bad_out)]);
}

#[test]
fn import_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = data_dir_with_key(d);
    let import = |file: &Path| {
        sigmux(
            &data,
            None,
            &["keys", "import", "--name", "new", "--file", s(file)],
        )
    };

    let missing = d.join("no-such-key.pem");
    import(&missing).fails_with(&[s(&missing)]);

    let random = d.join("random.bin");
    let mut junk: Vec<u8> = (0..600u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    junk[0] = 0xff;
    write(&random, &junk);
    import(&random).fails_with(&["cannot import key", "not a private key"]);

    let empty = d.join("empty.pem");
    write(&empty, "");
    import(&empty).fails_with(&["cannot import key"]);

    let k = ossl_genpkey(d, "ed", &["-algorithm", "ed25519"]);
    let cert = d.join("cert.pem");
    openssl_ok(&[
        "req",
        "-new",
        "-x509",
        "-key",
        s(&k.pem),
        "-subj",
        "/CN=x",
        "-days",
        "1",
        "-out",
        s(&cert),
    ]);
    import(&cert).fails_with(&["cannot import key", "CERTIFICATE", "not a private key"]);
    import(&k.pub_pem).fails_with(&["cannot import key", "PUBLIC KEY", "not a private key"]);

    let rsa = ossl_genpkey(d, "rsa", &rsa2048_args());
    let enc = d.join("enc.p8.pem");
    openssl_ok(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes256",
        "-passout",
        "pass:x",
        "-in",
        s(&rsa.pem),
        "-out",
        s(&enc),
    ]);
    assert_eq!(first_line(&enc), "-----BEGIN ENCRYPTED PRIVATE KEY-----");
    import(&enc).fails_with(&["cannot import key", "encrypted"]);

    // A PEM block whose base64 body is damaged.
    let broken = d.join("broken.pem");
    let text = String::from_utf8(read(&rsa.pem)).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[3] = lines[3].chars().rev().collect::<String>().replace('A', "!");
    write(&broken, lines.join("\n") + "\n");
    import(&broken).fails_with(&["cannot import key"]);

    let small = d.join("rsa1024.pem");
    openssl_ok(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        s(&small),
    ]);
    import(&small).fails_with(&["cannot import key", "RSA-1024", "not supported"]);

    let k1 = ossl_genpkey(d, "k1", &strs(&ec_args("secp256k1")));
    import(&k1.pem).fails_with(&["cannot import key", "secp256k1", "not supported"]);

    let x25519 = ossl_genpkey(d, "x25519", &["-algorithm", "X25519"]);
    import(&x25519.pem).fails_with(&["cannot import key", "not supported"]);

    // Nothing was stored by any of these (besides key files the directory
    // holds the KEK record and the writers' lock).
    let stored: Vec<_> = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".key"))
        .collect();
    assert_eq!(stored, ["k.key"]);
}

#[test]
fn encrypted_keys_in_other_encodings_are_named_encrypted() {
    // Besides PEM PKCS#8 (covered above), openssl writes encrypted keys as
    // legacy PEM with a Proc-Type header and as DER EncryptedPrivateKeyInfo.
    // The error should say what is wrong: the key is encrypted.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let rsa = ossl_genpkey(d, "rsa", &rsa2048_args());
    let legacy = d.join("legacy-enc.pem");
    openssl_ok(&[
        "rsa",
        "-in",
        s(&rsa.pem),
        "-traditional",
        "-aes256",
        "-passout",
        "pass:x",
        "-out",
        s(&legacy),
    ]);
    assert!(
        String::from_utf8(read(&legacy))
            .unwrap()
            .contains("Proc-Type: 4,ENCRYPTED")
    );
    let der = d.join("enc.p8.der");
    openssl_ok(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes256",
        "-passout",
        "pass:x",
        "-in",
        s(&rsa.pem),
        "-outform",
        "DER",
        "-out",
        s(&der),
    ]);
    let mut failures = Vec::new();
    for f in [&legacy, &der] {
        let run = sigmux(
            &data,
            None,
            &["keys", "import", "--name", "x", "--file", s(f)],
        );
        let line = run.fails_with(&["cannot import key"]);
        if !line.to_lowercase().contains("encrypted") {
            failures.push(format!("{}: {line}", f.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "errors do not say the key is encrypted:\n{}",
        failures.join("\n")
    );
}

#[test]
fn unsupported_key_types_are_named() {
    // The error should name the algorithm the user handed in, not an
    // internal numeric id.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let mut failures = Vec::new();
    for (algo, names) in [
        ("X25519", &["x25519"][..]),
        ("ED448", &["ed448"][..]),
        ("RSA-PSS", &["rsa-pss", "rsassa-pss", "rsassapss"][..]),
    ] {
        let k = ossl_genpkey(d, algo, &["-algorithm", algo]);
        let line = sigmux(
            &data,
            None,
            &["keys", "import", "--name", "x", "--file", s(&k.pem)],
        )
        .fails_with(&["cannot import key", "not supported"]);
        let lower = line.to_lowercase();
        if !names.iter().any(|n| lower.contains(n)) || line.contains("Id(") {
            failures.push(format!("{algo}: {line}"));
        }
    }
    assert!(
        failures.is_empty(),
        "errors do not name the key type:\n{}",
        failures.join("\n")
    );
}

#[test]
fn failed_key_commands_in_a_fresh_data_dir_leave_nothing_behind() {
    // A command that fails on its own arguments must not create the KEK
    // (and tell the user to back it up) before failing.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let garbage = d.join("garbage.pem");
    write(&garbage, "not a key\n");
    let cases: [(&str, Vec<&str>, &str); 2] = [
        (
            "generate-bad-name",
            vec!["keys", "generate", "--name", "../x", "--kind", "p256"],
            "invalid key name",
        ),
        (
            "import-garbage",
            vec!["keys", "import", "--name", "g", "--file", s(&garbage)],
            "cannot import key",
        ),
    ];
    let mut failures = Vec::new();
    for (label, args, needle) in cases {
        let data = d.join(label);
        let run = sigmux(&data, None, &args);
        let stderr = run.stderr.clone();
        run.fails_with(&[needle]);
        if stderr.lines().count() != 1 || data.join("kek").exists() {
            failures.push(format!(
                "{label}: kek created: {}; stderr:\n{stderr}",
                data.join("kek").exists()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corrupted_stored_key_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_with_key(dir.path());
    let file = data.join("keys/k.key");
    let good = read(&file);

    // Tamper with the ciphertext inside an otherwise valid file.
    let mut json: serde_json::Value = serde_json::from_slice(&good).expect("key file is JSON");
    let mut sealed = B64
        .decode(json["sealed"].as_str().expect("sealed"))
        .unwrap();
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x5a;
    json["sealed"] = B64.encode(&sealed).into();
    write(&file, serde_json::to_vec_pretty(&json).unwrap());
    sign_k(&data, None).fails_with(&[s(&file), "cannot decrypt"]);

    // Flipped raw bytes: no longer parseable JSON.
    let mut raw = good.clone();
    for i in [0, raw.len() / 3, raw.len() / 2] {
        raw[i] ^= 0xa5;
    }
    write(&file, &raw);
    sign_k(&data, None).fails_with(&[s(&file)]);
    // Listing still works: the bad file is named, not fatal.
    let listed = sigmux(&data, None, &["keys", "list"]).ok().stdout_text();
    assert!(
        listed.contains("UNREADABLE") && listed.contains(s(&file)),
        "{listed}"
    );

    // Truncated.
    write(&file, &good[..good.len() / 2]);
    sign_k(&data, None).fails_with(&[s(&file), "corrupt"]);

    // A public key that does not match the recorded id.
    let mut json: serde_json::Value = serde_json::from_slice(&good).unwrap();
    json["info"]["key_id"] = "00".repeat(32).into();
    write(&file, serde_json::to_vec_pretty(&json).unwrap());
    sign_k(&data, None).fails_with(&[s(&file), "key_id"]);

    // The file renamed to another key's name.
    write(&file, &good);
    std::fs::rename(&file, data.join("keys/other.key")).unwrap();
    sign_k(&data, None).fails_with(&[s(&data.join("keys/other.key"))]);

    // Restored, it works again.
    std::fs::rename(data.join("keys/other.key"), &file).unwrap();
    sign_k(&data, None).ok();
}

#[test]
fn key_name_and_kind_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = data_dir_with_key(d);
    let generate = |name: &str, kind: &str, extra: &[&str]| {
        let mut args = vec!["keys", "generate", "--name", name, "--kind", kind];
        args.extend_from_slice(extra);
        sigmux(&data, None, &args)
    };
    generate("k", "ed25519", &[]).fails_with(&["a key named 'k' already exists"]);
    for bad in ["../x", "a/b", ".hidden", "", "sp ace"] {
        generate(bad, "ed25519", &[]).fails_with(&["invalid key name"]);
    }
    assert!(!d.join("x.key").exists() && !data.join("x.key").exists());
    generate("new", "rsa1024", &[]).fails_with(&["unknown key kind 'rsa1024'", "rsa2048"]);
    generate("new", "p256", &["--backend", "hsm"]).fails_with(&["hsm", "PKCS#11"]);
    generate("new", "p256", &["--backend", "tpm"]).fails_with(&["unknown key backend 'tpm'"]);
    sigmux(&data, None, &["keys", "public", "--name", "nope"]).fails_with(&["unknown key 'nope'"]);

    let k = ossl_genpkey(d, "ed", &["-algorithm", "ed25519"]);
    sigmux(
        &data,
        None,
        &["keys", "import", "--name", "k", "--file", s(&k.pem)],
    )
    .fails_with(&["already exists"]);
    sigmux(
        &data,
        None,
        &["keys", "import", "--name", "../x", "--file", s(&k.pem)],
    )
    .fails_with(&["invalid key name"]);
    // The original key is untouched.
    sign_k(&data, None).ok();
    let list = sigmux(&data, None, &["keys", "list", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v:#}");
}

#[test]
fn hsm_backend_without_config_is_refused_before_touching_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    sigmux(
        &data,
        None,
        &[
            "keys",
            "generate",
            "--name",
            "h",
            "--kind",
            "p256",
            "--backend",
            "hsm",
        ],
    )
    .fails_with(&["--backend hsm", "PKCS#11"]);
    assert!(!data.join("keys/h.key").exists());
}

#[test]
fn config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let cases = [
        ("[engine]\nmax_bach = 3\n", vec!["max_bach", "line 2"]),
        ("[engine]\nmax_batch = 0\n", vec!["engine.max_batch"]),
        ("[engine]\nmax_batch = \"x\"\n", vec!["line 2"]),
        (
            "[backends.cpu]\nengine = \"gpu\"\n",
            vec!["backends.cpu.engine", "gpu"],
        ),
        (
            "[backends.cpu]\nthreads = 5000\n",
            vec!["backends.cpu.threads"],
        ),
        ("[backends.tpu]\n", vec!["tpu"]),
        ("[http]\nlisten = \"nowhere\"\n", vec!["http.listen"]),
        (
            "[keys]\nkek_file = \"a\"\nkek_env = \"B\"\n",
            vec!["keys", "not both"],
        ),
        ("[keys]\nkek_env = \"\"\n", vec!["keys.kek_env"]),
        ("bogus = 1\n", vec!["bogus"]),
        ("this is not toml\n", vec!["line 1"]),
        // Listeners that are off (no certificate) are checked all the same.
        (
            "[keyless]\nmax_bytes_in_flight = 10\n",
            vec!["keyless.max_bytes_in_flight"],
        ),
        (
            "[[keyless.clients]]\nfingerprint = \"zz\"\nkeys = [\"a\"]\n",
            vec!["keyless.clients[0].fingerprint"],
        ),
        (
            "[issuance]\nsvids_per_caller_per_second = -1.0\n",
            vec!["issuance.svids_per_caller_per_second"],
        ),
        (
            "[issuance]\nmax_ttl_seconds = 0\n",
            vec!["issuance.max_ttl_seconds"],
        ),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let cfg = d.join(format!("bad{i}.toml"));
        write(&cfg, text);
        let mut n = vec!["config:", s(&cfg)];
        n.extend(needles);
        sigmux(&data, Some(&cfg), &["keys", "list"]).fails_with(&n);
        sigmux(&data, Some(&cfg), &["backends", "--json"]).fails_with(&n);
    }
    let missing = d.join("missing.toml");
    sigmux(&data, Some(&missing), &["keys", "list"]).fails_with(&["config:", s(&missing)]);
    // A bad config never got as far as creating anything.
    assert!(!data.exists());
}

// ---------------------------------------------------------------------------
// 7. Logs never show secrets
// ---------------------------------------------------------------------------

#[test]
fn trace_logs_never_show_private_keys_or_the_kek() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let msg = d.join("m");
    write(&msg, message());
    let traced = |args: &[&str]| {
        let mut c = sigmux_cmd();
        c.arg("--data-dir")
            .arg(&data)
            .args(args)
            .env("SIGMUX_LOG", "trace");
        run_cmd(c).ok()
    };
    let mut logs = String::new();
    let mut forms = Vec::new();
    for (kind, args, scheme) in [
        ("ed25519", vec!["-algorithm", "ed25519"], "ed25519"),
        ("p256", strs(&ec_args("P-256")), "ecdsa_secp256r1_sha256"),
    ] {
        let k = ossl_genpkey(d, kind, &args);
        let der = openssl_ok(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            s(&k.pem),
            "-outform",
            "DER",
        ]);
        forms.extend(secret_forms(&der, &raw_secret(&der, kind)));
        let pem_body: String = String::from_utf8(read(&k.pem))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        forms.push((format!("{kind} PEM body"), pem_body.into_bytes()));
        logs += &traced(&["keys", "import", "--name", kind, "--file", s(&k.pem)]).stderr;
        let sig = d.join(format!("{kind}.sig"));
        logs += &traced(&[
            "sign",
            "--key",
            kind,
            "--scheme",
            scheme,
            "--in",
            s(&msg),
            "--out",
            s(&sig),
        ])
        .stderr;
        assert_verifies(scheme, &k.pub_pem, &msg, &sig, kind);
        logs += &traced(&["sign", "--key", kind, "--scheme", scheme, "--in", s(&msg)]).stderr;
    }
    logs += &traced(&["keys", "generate", "--name", "gen", "--kind", "rsa2048"]).stderr;
    logs += &traced(&["keys", "list", "--json"]).stderr;
    let kek = String::from_utf8(read(&data.join("kek"))).unwrap();
    let kek_hex = kek.trim().to_string();
    let kek_bytes = hex::decode(&kek_hex).unwrap();
    forms.push(("KEK hex".into(), kek_hex.clone().into_bytes()));
    forms.push(("KEK HEX".into(), kek_hex.to_uppercase().into_bytes()));
    forms.push(("KEK base64".into(), B64.encode(&kek_bytes).into_bytes()));
    assert_no_secret("SIGMUX_LOG=trace stderr", logs.as_bytes(), &forms);
    // Byte-array Debug output, e.g. "[157, 96, 177, ...]", of the secrets.
    for (what, bytes) in &forms {
        if what.ends_with("raw secret bytes") {
            let dbg = format!("{:?}", &bytes[..8]);
            let dbg = &dbg[1..dbg.len() - 1];
            assert!(!logs.contains(dbg), "logs contain {what} as Debug: {dbg}");
        }
    }
}

#[test]
fn key_events_are_audited_in_a_hash_chain_that_detects_edits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sigmux(
        &data,
        None,
        &["keys", "generate", "--name", "a", "--kind", "p256"],
    )
    .ok();
    sigmux(
        &data,
        None,
        &["keys", "generate", "--name", "b", "--kind", "ed25519"],
    )
    .ok();
    let out = sigmux(&data, None, &["audit", "verify"]).ok().stdout_text();
    assert!(out.starts_with("ok: 2 records, head "), "{out}");
    let log = data.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"event\":\"key.generate\"") && text.contains("\"name\":\"b\""));
    assert!(!text.to_lowercase().contains("private"), "{text}");
    std::fs::write(&log, text.replacen("\"name\":\"a\"", "\"name\":\"z\"", 1)).unwrap();
    let path = log.display().to_string();
    sigmux(&data, None, &["audit", "verify", &path]).fails_with(&["line 2", "hash chain broken"]);
    // With a broken log no key is made (its event could not be recorded).
    sigmux(
        &data,
        None,
        &["keys", "generate", "--name", "c", "--kind", "p256"],
    )
    .fails_with(&["audit log", "line 2"]);
    assert!(!data.join("keys/c.key").exists());
}

#[test]
fn bench_reports_its_driver_and_caller_scheduling() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let common = [
        "bench",
        "--backend",
        "cpu",
        "--scheme",
        "ecdsa_secp256r1_sha256",
        "--duration",
        "0.4",
        "--concurrency",
        "8",
        "--json",
        s(&json),
    ];
    for (extra, sched) in [(None, "batch"), (Some("normal"), "normal")] {
        let mut args = common.to_vec();
        if let Some(e) = extra {
            args.extend(["--caller-sched", e]);
        }
        sigmux(dir.path(), None, &args).ok();
        let v: serde_json::Value = serde_json::from_slice(&read(&json)).expect("bench JSON");
        assert_eq!(v["driver"], "async", "{v:#}");
        assert_eq!(v["caller_sched"], sched, "{v:#}");
        assert!(v["ops"].as_u64().unwrap() > 0, "{v:#}");
        assert_eq!(v["errors"], 0, "{v:#}");
    }
    let mut args = common.to_vec();
    args.extend(["--caller-sched", "fifo"]);
    sigmux(dir.path(), None, &args).fails_with(&["--caller-sched", "fifo"]);
    // Groups of 16, 64 in flight: four caller threads (this machine has at
    // least two cores, so at least two). A group straddling the window's
    // edges counts in proportion to its time inside, so `ops` need not be
    // a multiple of 16; it is the rate times the window.
    let mut args = common.to_vec();
    let at = args.len() - 3;
    args[at] = "64";
    args.extend(["--batch", "16"]);
    sigmux(dir.path(), None, &args).ok();
    let v: serde_json::Value = serde_json::from_slice(&read(&json)).expect("bench JSON");
    assert_eq!(v["driver"], "groups", "{v:#}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(v["caller_threads"], 4.min(cores), "{v:#}");
    let ops = v["ops"].as_u64().unwrap();
    let rate = v["ops_per_sec"].as_f64().unwrap() * v["seconds"].as_f64().unwrap();
    assert!(ops > 0 && (ops as f64 - rate).abs() < 1.0, "{v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");
    assert!(v.get("caller_sched").is_none(), "{v:#}");
}

#[test]
fn an_overloaded_in_process_bench_names_its_first_error() {
    // Open loop at far more than two cores can sign, with room for two
    // requests: most are refused, and the report says why.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sigmux.toml");
    std::fs::write(&cfg, "[engine]\nqueue_capacity = 1\n").unwrap();
    let json = dir.path().join("bench.json");
    let run = sigmux(
        dir.path(),
        Some(&cfg),
        &[
            "bench",
            "--scheme",
            "rsa_pss_rsae_sha256",
            "--duration",
            "0.5",
            "--concurrency",
            "1",
            "--rate",
            "20000",
            "--json",
            s(&json),
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_slice(&read(&json)).expect("bench JSON");
    assert!(v["errors"].as_u64().unwrap() > 0, "{v:#}");
    assert!(
        v["first_error"].as_str().unwrap().contains("overloaded"),
        "{v:#}"
    );
    let said = run.stdout_text();
    assert!(said.contains("errors (first: overloaded"), "{said}");
}

#[test]
fn bench_takes_the_cuda_rsa_mapping_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let common = [
        "bench",
        "--backend",
        "cpu",
        "--scheme",
        "rsa_pkcs1_sha256",
        "--duration",
        "0.2",
        "--concurrency",
        "4",
        "--json",
        s(&json),
        "--cuda-rsa-mapping",
    ];
    // Accepted; a CPU run has no GPU, so the report records no mapping
    // (a --backend cuda run records the one its GPUs ran).
    let mut args = common.to_vec();
    args.push("coop:16");
    sigmux(dir.path(), None, &args).ok();
    let v: serde_json::Value = serde_json::from_slice(&read(&json)).expect("bench JSON");
    assert!(v.get("cuda_rsa_mapping").is_none(), "{v:#}");
    // A bad value is one clear error naming the flag and what it accepts,
    // before any backend starts.
    for bad in ["coop:4", "warp"] {
        let mut args = common.to_vec();
        args.push(bad);
        sigmux(dir.path(), None, &args).fails_with(&[
            "--cuda-rsa-mapping",
            bad,
            "\"thread\", \"wide\", \"coop:8\", \"coop:16\"",
        ]);
    }
}
