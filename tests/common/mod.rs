//! Helpers shared by the CA integration tests: a server process that is
//! killed on drop, the openssl CLI, the sigmux binary, and a small PKI made
//! by openssl (a CA and leaf certificates with a given subjectAltName).
#![allow(dead_code)]

pub mod ctgrind;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(dir: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, "openssl", args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs the sigmux binary with `sigmux.toml` in `dir`; returns its stdout.
pub fn sigmux(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args(["--config", "sigmux.toml"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sigmux {args:?} ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn ec_key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ],
    );
}

/// A self-signed CA `name.pem`/`name.key`.
pub fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A `sigmux serve` process, killed on drop, with its HTTP address and the
/// stderr lines it printed before saying it.
pub struct Served {
    pub child: Child,
    pub addr: String,
    pub early: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` (a `sigmux ... serve`) and waits up to 60 s for its `on
/// http://ADDR` line; `each` sees every stderr line up to that one.
pub fn serve_until_http(mut cmd: Command, each: impl Fn(&str)) -> Served {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut early = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not start; stderr so far: {early:?}");
        };
        each(&line);
        if let Some(addr) = line.split("on http://").nth(1) {
            return Served {
                child,
                addr: addr.trim().to_string(),
                early,
            };
        }
        early.push(line);
    }
}

/// A new P-256 key in `key` and a CSR for it with subject `subj` in `out`,
/// both made by openssl.
pub fn new_csr(dir: &Path, key: &str, subj: &str, out: &str) {
    ec_key(dir, key);
    openssl(
        dir,
        &["req", "-new", "-key", key, "-subj", subj, "-out", out],
    );
}

/// A workload CSR (`name.csr`, key `name.key`) from `openssl req`, PEM
/// text.
pub fn workload_csr(dir: &Path, name: &str) -> String {
    new_csr(
        dir,
        &format!("{name}.key"),
        "/CN=ignored",
        &format!("{name}.csr"),
    );
    std::fs::read_to_string(dir.join(format!("{name}.csr"))).unwrap()
}

/// `name.pem`/`name.key`: a leaf with the URI SAN `uri`, signed by `ca`,
/// that expires `secs` seconds from now.
pub fn short_lived_leaf(dir: &Path, ca: &str, name: &str, uri: &str, secs: i64) {
    use openssl::{asn1::Asn1Time, x509::extension::SubjectAlternativeName};
    let read = |file: String| std::fs::read(dir.join(file)).unwrap();
    let ca_cert = openssl::x509::X509::from_pem(&read(format!("{ca}.pem"))).unwrap();
    let ca_key = openssl::pkey::PKey::private_key_from_pem(&read(format!("{ca}.key"))).unwrap();
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key =
        openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(now as u32).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    let mut subject = openssl::x509::X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    b.set_subject_name(&subject.build()).unwrap();
    b.set_issuer_name(ca_cert.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now - 60).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + secs).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .uri(uri)
        .build(&b.x509v3_context(Some(&ca_cert), None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&ca_key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), b.build().to_pem().unwrap()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
}

/// A leaf `name.pem`/`name.key` signed by `ca` with the given SAN.
pub fn leaf(dir: &Path, ca: &str, name: &str, san: &str) {
    new_csr(
        dir,
        &format!("{name}.key"),
        &format!("/CN={name}"),
        &format!("{name}.csr"),
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={san}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// Starts `sigmux serve` and returns it with the issuance address.
pub fn start_server(dir: &Path) -> (ServerProcess, String) {
    let (server, issuance, _) = start_server_with_http(dir);
    (server, issuance)
}

/// Starts `sigmux serve` and returns it with the issuance address and the
/// address of its `/metrics` listener.
pub fn start_server_with_http(dir: &Path) -> (ServerProcess, String, String) {
    let (server, issuance, http, lines) = start_server_watched(dir);
    std::thread::spawn(move || for _ in lines {});
    (server, issuance, http)
}

/// Starts `sigmux serve`; returns it with the issuance and `/metrics`
/// addresses and what it prints on stderr from then on, line by line.
pub fn start_server_watched(dir: &Path) -> (ServerProcess, String, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args(["--config", "sigmux.toml", "serve"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let server = ServerProcess(child);
    let (mut issuance, mut http) = (None, None);
    while http.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("serve exited before listening");
        };
        if let Some(a) = line.split("issuance listening on ").nth(1) {
            issuance = Some(a.trim().to_string());
        }
        if let Some(a) = line.split("on http://").nth(1) {
            http = Some(a.trim().to_string());
        }
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(|l| l.ok()) {
            // Nobody listening any more is fine: the lines are still read,
            // so the server never blocks on a full pipe.
            let _ = tx.send(line);
        }
    });
    (
        server,
        issuance.expect("issuance line before the serving line"),
        http.unwrap_or_default(),
        rx,
    )
}

/// Sends SIGHUP to `server` and returns what it printed up to its "keys
/// reloaded" line (the last of a reload).
pub fn sighup(server: &ServerProcess, lines: &mpsc::Receiver<String>) -> String {
    let pid = server.0.id().to_string();
    let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(sent.success(), "kill -HUP {pid}");
    let mut said = String::new();
    loop {
        match lines.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(line) => {
                said.push_str(&line);
                said.push('\n');
                if line.contains("keys reloaded") {
                    return said;
                }
            }
            Err(e) => panic!("no reload after SIGHUP ({e}); it said: {said}"),
        }
    }
}

/// curl with the test CA; `who` is the client certificate, if any.
/// Returns (HTTP status, body); status 0 when curl itself failed.
pub fn curl(
    dir: &Path,
    who: Option<&str>,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--cacert".into(),
        "ca.pem".into(),
        "-X".into(),
        method.into(),
        "-o".into(),
        "body.out".into(),
        "-w".into(),
        "%{http_code}".into(),
    ];
    if let Some(w) = who {
        args.extend([
            "--cert".into(),
            format!("{w}.pem"),
            "--key".into(),
            format!("{w}.key"),
        ]);
    }
    if let Some(b) = body {
        std::fs::write(dir.join("req.json"), b).unwrap();
        args.extend([
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            "@req.json".into(),
        ]);
    }
    args.push(url.into());
    let _ = std::fs::remove_file(dir.join("body.out"));
    let out = Command::new("curl")
        .current_dir(dir)
        .args(&args)
        .output()
        .unwrap();
    if !out.status.success() {
        return (0, String::from_utf8_lossy(&out.stderr).to_string());
    }
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (
        code,
        std::fs::read_to_string(dir.join("body.out")).unwrap_or_default(),
    )
}
