//! The keyless client, its rustls adapter and the example HTTPS server,
//! against a real `sigmux serve` started as a process. Signatures are
//! checked with OpenSSL; the example server is probed with `curl` and
//! `openssl s_client`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};
use sigmux::keyless::client::{ClientConfig, ClientError, KeylessClient};
use sigmux::keyless::protocol::{ErrorCode, Op};
use sigmux::keys::Ski;

const PROXY_ID: &str = "spiffe://example.org/proxy";

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

fn p256_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

/// What a certificate is for.
enum Role<'a> {
    Ca,
    Server,
    Client { uri: &'a str },
}

/// A certificate for `public`, signed by `issuer` (self-signed when `None`).
fn issue(
    cn: &str,
    public: &PKey<Public>,
    issuer: Option<(&X509, &PKey<Private>)>,
    signer: &PKey<Private>,
    role: Role,
) -> X509 {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name(cn)).unwrap();
    match issuer {
        Some((ca, _)) => b.set_issuer_name(ca.subject_name()).unwrap(),
        None => b.set_issuer_name(&name(cn)).unwrap(),
    }
    b.set_pubkey(public).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let ctx = b.x509v3_context(issuer.map(|(ca, _)| &**ca), None);
    let mut exts = Vec::new();
    match role {
        Role::Ca => {
            exts.push(BasicConstraints::new().critical().ca().build().unwrap());
            exts.push(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            );
        }
        Role::Server => {
            exts.push(BasicConstraints::new().build().unwrap());
            exts.push(ExtendedKeyUsage::new().server_auth().build().unwrap());
            exts.push(
                SubjectAlternativeName::new()
                    .dns("localhost")
                    .ip("127.0.0.1")
                    .build(&ctx)
                    .unwrap(),
            );
        }
        Role::Client { uri } => {
            exts.push(BasicConstraints::new().build().unwrap());
            exts.push(ExtendedKeyUsage::new().client_auth().build().unwrap());
            exts.push(SubjectAlternativeName::new().uri(uri).build(&ctx).unwrap());
        }
    }
    for e in exts {
        b.append_extension(e).unwrap();
    }
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

fn public_of(k: &PKey<Private>) -> PKey<Public> {
    PKey::public_key_from_der(&k.public_key_to_der().unwrap()).unwrap()
}

/// A CA and its key.
struct Ca {
    cert: X509,
    key: PKey<Private>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = p256_key();
        let cert = issue(cn, &public_of(&key), None, &key, Role::Ca);
        Ca { cert, key }
    }

    /// A new P-256 key and its certificate: (cert PEM, key PEM).
    fn leaf(&self, cn: &str, role: Role) -> (Vec<u8>, Vec<u8>) {
        let key = p256_key();
        let cert = issue(
            cn,
            &public_of(&key),
            Some((&self.cert, &self.key)),
            &self.key,
            role,
        );
        (
            cert.to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }

    fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }
}

// ---------------------------------------------------------------------------
// The sigmux side: a data dir with keys, a config, a running server
// ---------------------------------------------------------------------------

fn sigmux(data: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .env_remove("SIGMUX_CONFIG")
        .env_remove("SIGMUX_DATA_DIR")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sigmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One key in sigmux.
struct SiteKey {
    kind: &'static str,
    ski: [u8; 20],
    public: PKey<Public>,
}

/// Everything a test needs: PKI files, a data dir with keys, a config.
struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    server_ca: Ca,
    /// The proxy's client certificate and key (PEM), issued by the client CA.
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
    /// A client certificate from a CA sigmux does not trust.
    rogue_cert: Vec<u8>,
    rogue_key: Vec<u8>,
    /// A client certificate from the client CA that no rule names.
    stranger_cert: Vec<u8>,
    stranger_key: Vec<u8>,
    keys: Vec<(String, SiteKey)>,
}

impl Setup {
    /// Keys `p256` and `rsa` (allowed for the proxy) and `secret` (not).
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server_ca = Ca::new("keyless server CA");
        let client_ca = Ca::new("keyless client CA");
        let rogue_ca = Ca::new("some other CA");
        let (server_cert, server_key) = server_ca.leaf("localhost", Role::Server);
        let (client_cert, client_key) = client_ca.leaf("proxy", Role::Client { uri: PROXY_ID });
        let (rogue_cert, rogue_key) = rogue_ca.leaf("proxy", Role::Client { uri: PROXY_ID });
        let (stranger_cert, stranger_key) = client_ca.leaf(
            "stranger",
            Role::Client {
                uri: "spiffe://example.org/stranger",
            },
        );
        let w = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        w("server.pem", &server_cert);
        w("server.key", &server_key);
        w("client-ca.pem", &client_ca.pem());

        let mut keys = Vec::new();
        for (name, kind) in [("p256", "p256"), ("rsa", "rsa2048"), ("secret", "p256")] {
            sigmux(&data, &["keys", "generate", "--name", name, "--kind", kind]);
            let pem = sigmux(&data, &["keys", "public", "--name", name]);
            let public = PKey::public_key_from_pem(pem.as_bytes()).unwrap();
            let ski = Ski::of_spki(&public.public_key_to_der().unwrap())
                .unwrap()
                .0;
            keys.push((name.to_string(), SiteKey { kind, ski, public }));
        }
        Setup {
            dir,
            data,
            server_ca,
            client_cert,
            client_key,
            rogue_cert,
            rogue_key,
            stranger_cert,
            stranger_key,
            keys,
        }
    }

    fn key(&self, name: &str) -> &SiteKey {
        &self.keys.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `sigmux serve` with its keyless listener on `keyless_listen`.
    fn serve(&self, keyless_listen: &str) -> Server {
        let cfg = self.path("sigmux.toml");
        std::fs::write(
            &cfg,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n\
                 [keyless]\nlisten = \"{keyless_listen}\"\n\
                 cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
                 [[keyless.clients]]\nid = \"{PROXY_ID}\"\nkeys = [\"p256\", \"rsa\"]\n",
                self.path("server.pem").display(),
                self.path("server.key").display(),
                self.path("client-ca.pem").display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigmux"));
        cmd.env_remove("SIGMUX_CONFIG")
            .env_remove("SIGMUX_DATA_DIR")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("serve");
        let (child, lines) = spawn_with_stderr(cmd);
        let mut keyless = None;
        let mut seen = Vec::new();
        let mut child = Proc(child);
        loop {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) else {
                panic!("serve did not start; stderr: {seen:?}");
            };
            if let Some(a) = line.split("keyless listening on ").nth(1) {
                keyless = Some(a.trim().to_string());
            }
            if line.contains("on http://") {
                break;
            }
            seen.push(line);
        }
        let addr = keyless.unwrap_or_else(|| {
            let _ = child.0.kill();
            panic!("no keyless listener; stderr: {seen:?}")
        });
        // The rest of its stderr shows up with a failing test's output.
        std::thread::spawn(move || {
            for line in lines {
                eprintln!("serve: {line}");
            }
        });
        Server { _proc: child, addr }
    }

    fn client_config(&self, addr: &str) -> ClientConfig {
        ClientConfig {
            addr: addr.to_string(),
            server_name: "localhost".into(),
            ca_pem: self.server_ca.pem(),
            cert_chain_pem: self.client_cert.clone(),
            key_pem: self.client_key.clone(),
            connections: 2,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    _proc: Proc,
    addr: String,
}

fn spawn_with_stderr(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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
    (child, rx)
}

// ---------------------------------------------------------------------------
// Checking signatures
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Alg {
    EcdsaSha256,
    RsaPssSha256,
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
}

impl Alg {
    fn op(self) -> Op {
        match self {
            Alg::EcdsaSha256 => Op::EcdsaSignSha256,
            Alg::RsaPssSha256 => Op::RsaPssSignSha256,
            Alg::RsaPkcs1Sha256 => Op::RsaSignSha256,
            Alg::RsaPkcs1Sha384 => Op::RsaSignSha384,
        }
    }

    fn md(self) -> MessageDigest {
        match self {
            Alg::RsaPkcs1Sha384 => MessageDigest::sha384(),
            _ => MessageDigest::sha256(),
        }
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        openssl::hash::hash(self.md(), message).unwrap().to_vec()
    }

    fn verify(self, key: &PKey<Public>, message: &[u8], sig: &[u8]) -> bool {
        let mut v = Verifier::new(self.md(), key).unwrap();
        if let Alg::RsaPssSha256 = self {
            v.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).unwrap();
        }
        v.verify_oneshot(sig, message).unwrap_or(false)
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_signs_through_sigmux_serve_and_is_refused_what_it_may_not_use() {
    let s = Setup::new();
    let server = s.serve("127.0.0.1:0");
    let client = Arc::new(
        KeylessClient::connect(s.client_config(&server.addr))
            .await
            .unwrap(),
    );
    assert_eq!(
        client.ping(b"are you there".to_vec()).await.unwrap(),
        b"are you there"
    );

    for (key, alg) in [
        ("p256", Alg::EcdsaSha256),
        ("rsa", Alg::RsaPssSha256),
        ("rsa", Alg::RsaPkcs1Sha256),
        ("rsa", Alg::RsaPkcs1Sha384),
    ] {
        let k = s.key(key);
        let message = format!("message for {key} {alg:?}").into_bytes();
        let sig = client
            .sign(k.ski, alg.op(), alg.digest(&message))
            .await
            .unwrap_or_else(|e| panic!("{key} {alg:?}: {e}"));
        assert!(alg.verify(&k.public, &message, &sig), "{key} {alg:?}");
        assert!(!alg.verify(&k.public, b"other", &sig));
        // The blocking form, as rustls uses it.
        let c = client.clone();
        let (ski, d) = (k.ski, alg.digest(&message));
        let sig = tokio::task::spawn_blocking(move || c.sign_blocking(ski, alg.op(), d))
            .await
            .unwrap()
            .unwrap();
        assert!(
            alg.verify(&k.public, &message, &sig),
            "{key} {alg:?} blocking"
        );
    }

    // Many requests in flight at once over the pool, all answered by id.
    let k = s.key("p256");
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let c = client.clone();
        let ski = k.ski;
        tasks.push(tokio::spawn(async move {
            let m = format!("pipelined {i}").into_bytes();
            let sig = c
                .sign(ski, Op::EcdsaSignSha256, Alg::EcdsaSha256.digest(&m))
                .await;
            (m, sig)
        }));
    }
    for t in tasks {
        let (m, sig) = t.await.unwrap();
        assert!(Alg::EcdsaSha256.verify(&k.public, &m, &sig.unwrap()));
    }
    assert_eq!(client.in_flight(), 0);

    // A key the proxy may not use, and one that does not exist, look alike.
    let digest = Alg::EcdsaSha256.digest(b"m");
    for ski in [s.key("secret").ski, [0x42; 20]] {
        let err = client
            .sign(ski, Op::EcdsaSignSha256, digest.clone())
            .await
            .unwrap_err();
        assert_eq!(err, ClientError::Remote(ErrorCode::KeyNotFound));
    }
    // A wrong digest length is the server's to refuse, with an error code.
    let err = client
        .sign(k.ski, Op::EcdsaSignSha256, vec![0; 31])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Remote(_)), "{err}");
    // The connection survived all of that.
    assert_eq!(client.ping(b"still".to_vec()).await.unwrap(), b"still");

    // A client certificate from a CA sigmux does not trust is refused.
    let mut rogue = s.client_config(&server.addr);
    rogue.cert_chain_pem = s.rogue_cert.clone();
    rogue.key_pem = s.rogue_key.clone();
    rogue.connections = 1;
    let err = KeylessClient::connect(rogue).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(_) | ClientError::Closed(_)),
        "{err}"
    );
    // A good certificate that no rule names: the server closes the
    // connection after the handshake, so the client's first ping fails
    // at once rather than its requests later.
    let mut stranger = s.client_config(&server.addr);
    stranger.cert_chain_pem = s.stranger_cert.clone();
    stranger.key_pem = s.stranger_key.clone();
    stranger.connections = 1;
    let t0 = Instant::now();
    let err = KeylessClient::connect(stranger)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Closed(_)) && err.to_string().contains("[[keyless.clients]]"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // And a server certificate from a CA the client does not trust.
    let mut wrong_ca = s.client_config(&server.addr);
    wrong_ca.ca_pem = Ca::new("unrelated").pem();
    let err = KeylessClient::connect(wrong_ca).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fails_fast_while_the_server_is_down_and_reconnects_when_it_returns() {
    let s = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let server = s.serve(&addr);
    assert_eq!(server.addr, addr);
    let mut cfg = s.client_config(&addr);
    cfg.timeout = Duration::from_secs(2);
    let client = KeylessClient::connect(cfg).await.unwrap();
    let k = s.key("p256");
    let digest = Alg::EcdsaSha256.digest(b"x");
    client
        .sign(k.ski, Op::EcdsaSignSha256, digest.clone())
        .await
        .unwrap();

    drop(server);
    // Every request ends in an explicit error within its deadline.
    let t0 = Instant::now();
    for _ in 0..3 {
        let err = client
            .sign(k.ski, Op::EcdsaSignSha256, digest.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Closed(_) | ClientError::Connect { .. }),
            "{err}"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    let _server = s.serve(&addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .sign(k.ski, Op::EcdsaSignSha256, digest.clone())
            .await
        {
            Ok(sig) => {
                assert!(Alg::EcdsaSha256.verify(&k.public, b"x", &sig));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("never reconnected: {e}"),
        }
    }
}

/// Builds the example (cheap when it is fresh) and returns its path.
fn example_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // This test runs from target/<profile>/deps/.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", "keyless_https"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(
            status.success(),
            "building the keyless_https example failed"
        );
        let bin = profile_dir.join("examples").join("keyless_https");
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
}

/// The example server for the sigmux key `key`, with a site certificate
/// issued by `site_ca`. Returns the process and its address.
fn start_example(s: &Setup, keyless_addr: &str, key: &str, site_ca: &Ca) -> (Proc, String) {
    let k = s.key(key);
    let site = issue(
        "localhost",
        &k.public,
        Some((&site_ca.cert, &site_ca.key)),
        &site_ca.key,
        Role::Server,
    );
    let chain = s.path(&format!("site-{key}.pem"));
    let mut pem = site.to_pem().unwrap();
    pem.extend(site_ca.pem());
    std::fs::write(&chain, pem).unwrap();
    std::fs::write(s.path("keyless-ca.pem"), s.server_ca.pem()).unwrap();
    std::fs::write(s.path("proxy.pem"), &s.client_cert).unwrap();
    std::fs::write(s.path("proxy.key"), &s.client_key).unwrap();
    let mut cmd = Command::new(example_bin());
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--cert-chain")
        .arg(&chain)
        .arg("--keyless")
        .arg(keyless_addr)
        .arg("--keyless-name")
        .arg("localhost")
        .arg("--keyless-ca")
        .arg(s.path("keyless-ca.pem"))
        .arg("--client-cert")
        .arg(s.path("proxy.pem"))
        .arg("--client-key")
        .arg(s.path("proxy.key"))
        .arg("--ski")
        .arg(hex::encode(k.ski))
        .arg("--kind")
        .arg(k.kind);
    let (child, lines) = spawn_with_stderr(cmd);
    let child = Proc(child);
    let mut seen = Vec::new();
    loop {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) else {
            panic!("example did not start; stderr: {seen:?}");
        };
        if let Some(a) = line.split("listening on https://").nth(1) {
            return (child, a.trim().to_string());
        }
        seen.push(line);
    }
}

fn curl(addr: &str, ca: &Path, tls: &[&str]) -> (bool, String, String) {
    let port = addr.rsplit_once(':').unwrap().1;
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(tls)
        .arg(format!("https://localhost:{port}/"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openssl s_client` with verification on; returns its combined output.
fn s_client(addr: &str, ca: &Path, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .args([
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-CAfile",
        ])
        .arg(ca)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closing stdin ends the session after the handshake.
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn example_https_server_serves_with_its_key_only_in_sigmux() {
    let s = Setup::new();
    let server = s.serve("127.0.0.1:0");
    let site_ca = Ca::new("site CA");
    let ca_path = s.path("site-ca.pem");
    std::fs::write(&ca_path, site_ca.pem()).unwrap();

    for key in ["p256", "rsa"] {
        let (_example, addr) = start_example(&s, &server.addr, key, &site_ca);
        for tls in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
            let (ok, body, err) = curl(&addr, &ca_path, tls);
            assert!(ok, "{key} {tls:?}: {err}");
            assert_eq!(body, "hello from a key that lives in sigmux\n");
        }
        let mut cases: Vec<(&[&str], &str)> =
            vec![(&["-tls1_3"], "TLSv1.3"), (&["-tls1_2"], "TLSv1.2")];
        if key == "p256" {
            cases.push((&["-tls1_3"], "Peer signature type: ECDSA"));
        }
        if key == "rsa" {
            cases.push((
                &["-tls1_2", "-sigalgs", "RSA+SHA256"],
                "Peer signature type: RSA\n",
            ));
            cases.push((
                &["-tls1_2", "-sigalgs", "rsa_pss_rsae_sha256"],
                "Peer signature type: RSA-PSS",
            ));
            cases.push((
                &["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha384"],
                "Peer signing digest: SHA384",
            ));
        }
        for (args, want) in cases {
            let (ok, out) = s_client(&addr, &ca_path, args);
            assert!(ok, "{key} {args:?}: {out}");
            assert!(
                out.contains("Verify return code: 0 (ok)"),
                "{key} {args:?}: {out}"
            );
            assert!(out.contains(want), "{key} {args:?}: want {want}: {out}");
        }
    }

    // Without the keyless server the example cannot start.
    let mut cmd = Command::new(example_bin());
    let k = s.key("p256");
    cmd.args(["--listen", "127.0.0.1:0", "--keyless", "127.0.0.1:1"])
        .arg("--cert-chain")
        .arg(s.path("site-p256.pem"))
        .arg("--keyless-ca")
        .arg(s.path("keyless-ca.pem"))
        .arg("--client-cert")
        .arg(s.path("proxy.pem"))
        .arg("--client-key")
        .arg(s.path("proxy.key"))
        .args(["--ski", &hex::encode(k.ski), "--kind", "p256"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to keyless server 127.0.0.1:1"),
        "{err}"
    );
}
