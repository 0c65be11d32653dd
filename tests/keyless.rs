//! The keyless listener of `sigmux serve`, started as a user would, with a
//! PKI made by the openssl CLI. Raw frames go over a rustls client so that
//! malformed input can be sent on purpose; handshakes are also checked with
//! `openssl s_client`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sigmux::keyless::protocol::{self, ErrorCode, Op, Request, Response, ResponseBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{ServerProcess, ca, leaf as issue, short_lived_leaf, sigmux};

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    keyless: String,
    http: String,
    ec_ski: [u8; 20],
    rsa_ski: [u8; 20],
    ed_ski: [u8; 20],
    _server: ServerProcess,
}

/// The pid of the server the static fixture started.
static SHARED_SERVER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn kill_shared_server() {
    let pid = SHARED_SERVER.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) on a pid this process spawned and still owns.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        ca(&dir, "ca");
        ca(&dir, "other-ca");
        issue(&dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
        issue(&dir, "ca", "proxy", "URI:spiffe://test.example/proxy");
        issue(&dir, "ca", "stranger", "URI:spiffe://test.example/stranger");
        issue(&dir, "other-ca", "foreign", "URI:spiffe://test.example/proxy");
        std::fs::write(
            dir.join("sigmux.toml"),
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[keyless]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\nmax_in_flight = 8\n[[keyless.clients]]\nid = \"spiffe://test.example/proxy\"\nkeys = [\"edge-ec\", \"edge-rsa\"]\n",
        )
        .unwrap();
        sigmux(&dir, &["keys", "generate", "--name", "edge-ec", "--kind", "p256"]);
        sigmux(&dir, &["keys", "generate", "--name", "edge-rsa", "--kind", "rsa2048"]);
        sigmux(&dir, &["keys", "generate", "--name", "edge-ed", "--kind", "ed25519"]);
        let list: serde_json::Value = serde_json::from_str(&sigmux(&dir, &["keys", "list", "--json"])).unwrap();
        let ski = |name: &str| -> [u8; 20] {
            let k = list.as_array().unwrap().iter().find(|k| k["name"] == name).unwrap();
            let mut out = [0u8; 20];
            hex::decode_to_slice(k["ski"].as_str().unwrap(), &mut out).unwrap();
            out
        };
        for name in ["edge-ec", "edge-rsa", "edge-ed"] {
            let pem = sigmux(&dir, &["keys", "public", "--name", name]);
            std::fs::write(dir.join(format!("{name}.pub.pem")), pem).unwrap();
        }
        let (child, keyless, http, lines) = start_server(&dir, "sigmux.toml");
        // The fixture is a static, which is never dropped: kill the shared
        // server when the test process exits instead.
        SHARED_SERVER.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: registers a plain `extern "C"` function that only reads an
        // atomic and sends a signal.
        unsafe {
            libc::atexit(kill_shared_server);
        }
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Fixture {
            keyless,
            http,
            ec_ski: ski("edge-ec"),
            rsa_ski: ski("edge-rsa"),
            ed_ski: ski("edge-ed"),
            _server: ServerProcess(child),
            dir,
            _dir: tmp,
        }
    })
}

type Lines = std::io::Lines<BufReader<std::process::ChildStderr>>;

/// Starts `sigmux serve` in `dir` and returns it with its keyless and HTTP
/// addresses and the rest of its stderr.
fn start_server(dir: &Path, config: &str) -> (Child, String, String, Lines) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args(["--config", config, "serve"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut keyless, mut http) = (None, None);
    while http.is_none() {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve exited before listening");
        };
        if let Some(a) = line.split("keyless listening on ").nth(1) {
            keyless = Some(a.trim().to_string());
        }
        if let Some(a) = line.split("on http://").nth(1) {
            http = Some(a.trim().to_string());
        }
    }
    (
        child,
        keyless.expect("keyless listener line"),
        http.unwrap(),
        lines,
    )
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(f: &Fixture, who: &str, tls12: bool) -> std::io::Result<Tls> {
    connect_to(f, &f.keyless, who, tls12).await
}

async fn connect_to(f: &Fixture, addr: &str, who: &str, tls12: bool) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(f.dir.join("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let chain = vec![CertificateDer::from_pem_file(f.dir.join(format!("{who}.pem"))).unwrap()];
    let key = PrivateKeyDer::from_pem_file(f.dir.join(format!("{who}.key"))).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    conn.connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads responses until `n` have arrived or the connection ends.
async fn read_responses(s: &mut Tls, n: usize) -> Vec<Response> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    while out.len() < n {
        while let Some((h, len)) = protocol::split_frame(&buf).unwrap() {
            out.push(Response::decode(&h, &buf[protocol::HEADER_LEN..len]).unwrap());
            buf.drain(..len);
        }
        if out.len() >= n {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => panic!("timed out waiting for responses ({} of {n})", out.len()),
        }
    }
    out
}

fn sign_request(id: u32, ski: [u8; 20], op: Op, payload: Vec<u8>) -> Vec<u8> {
    let mut r = Request::new(id, op, payload);
    r.ski = Some(ski);
    r.encode().unwrap()
}

fn verify(pub_pem: &Path, scheme: &str, msg: &[u8], sig: &[u8]) -> bool {
    use openssl::hash::MessageDigest;
    let pk = openssl::pkey::PKey::public_key_from_pem(&std::fs::read(pub_pem).unwrap()).unwrap();
    if scheme == "ed25519" {
        let mut v = openssl::sign::Verifier::new_without_digest(&pk).unwrap();
        return v.verify_oneshot(sig, msg).unwrap_or(false);
    }
    let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &pk).unwrap();
    if scheme == "pss" {
        v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
        v.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
            .unwrap();
    }
    v.update(msg).unwrap();
    v.verify(sig).unwrap_or(false)
}

fn sha256(m: &[u8]) -> Vec<u8> {
    openssl::sha::sha256(m).to_vec()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn pipelined_signatures_over_tls13_and_tls12_verify_with_openssl() {
    let f = fixture();
    for tls12 in [false, true] {
        rt().block_on(async {
            let mut s = connect(f, "proxy", tls12).await.unwrap();
            let msg = b"keyless handshake transcript".to_vec();
            let d = sha256(&msg);
            let mut frames = Vec::new();
            frames.extend(sign_request(1, f.ec_ski, Op::EcdsaSignSha256, d.clone()));
            frames.extend(sign_request(2, f.rsa_ski, Op::RsaPssSignSha256, d.clone()));
            frames.extend(sign_request(3, f.rsa_ski, Op::RsaSignSha256, d.clone()));
            frames.extend(
                Request::new(4, Op::Ping, b"hello".to_vec())
                    .encode()
                    .unwrap(),
            );
            for i in 0..40u32 {
                frames.extend(sign_request(
                    100 + i,
                    f.ec_ski,
                    Op::EcdsaSignSha256,
                    d.clone(),
                ));
            }
            s.write_all(&frames).await.unwrap();
            let responses = read_responses(&mut s, 44).await;
            assert_eq!(responses.len(), 44);
            for r in &responses {
                let (ResponseBody::Payload(sig) | ResponseBody::Pong(sig)) = &r.body else {
                    panic!("request {} failed: {:?}", r.id, r.body);
                };
                match r.id {
                    2 => assert!(verify(&f.dir.join("edge-rsa.pub.pem"), "pss", &msg, sig)),
                    3 => assert!(verify(&f.dir.join("edge-rsa.pub.pem"), "pkcs1", &msg, sig)),
                    4 => assert_eq!(sig, b"hello"),
                    _ => assert!(verify(&f.dir.join("edge-ec.pub.pem"), "ecdsa", &msg, sig)),
                }
            }
            let mut ids: Vec<u32> = responses.iter().map(|r| r.id).collect();
            ids.sort();
            assert_eq!(&ids[..4], &[1, 2, 3, 4]);
        });
    }
}

#[test]
fn keys_a_client_may_not_use_answer_key_not_found() {
    let f = fixture();
    rt().block_on(async {
        let d = sha256(b"x");
        // An allowed client asking for an existing key it is not given, and
        // for a key that does not exist: the same answer.
        let mut s = connect(f, "proxy", false).await.unwrap();
        let mut frames = sign_request(1, f.ed_ski, Op::Ed25519Sign, b"x".to_vec());
        frames.extend(sign_request(2, [7; 20], Op::EcdsaSignSha256, d.clone()));
        s.write_all(&frames).await.unwrap();
        for r in read_responses(&mut s, 2).await {
            assert_eq!(
                r.body,
                ResponseBody::Error(ErrorCode::KeyNotFound),
                "{}",
                r.id
            );
        }
        // (A client no rule names is not served at all: see
        // a_client_no_rule_names_is_closed_right_after_its_handshake.)
    });
    let metrics = Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", f.http)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sigmux_keyless_refused_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 2, "{text}");
    assert!(
        text.contains("sigmux_keyless_requests_total{op=\"ecdsa_sign\",result=\"key_not_found\"}")
    );
    assert!(
        text.contains("sigmux_keyless_request_seconds_bucket{op=\"ecdsa_sign\",le=\"0.000025\"}")
    );
}

/// Whether the server ends `s` by itself within `within`, the client
/// sending nothing: a close (or a reset) rather than a silent wait.
async fn closed_by_server(s: &mut Tls, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Runs `openssl s_client` as `who` against `addr` with its stdin left
/// open, so that only the server can end the session; `Some(stderr)` when
/// it ended within `within`, `None` (after killing it) when it did not.
fn s_client_ended_by_server(
    f: &Fixture,
    addr: &str,
    who: &str,
    version: &str,
    within: Duration,
) -> Option<String> {
    let mut child = Command::new("openssl")
        .current_dir(&f.dir)
        .args(["s_client", "-connect", addr, version, "-CAfile", "ca.pem"])
        .args([
            "-cert",
            &format!("{who}.pem"),
            "-key",
            &format!("{who}.key"),
        ])
        .args(["-verify_return_error", "-servername", "localhost", "-brief"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    Some(err)
}

#[test]
fn a_client_no_rule_names_is_closed_right_after_its_handshake() {
    // "stranger" has a good certificate from the client CA, but no
    // [[keyless.clients]] rule names it: it may use nothing, so it gets no
    // connection to send pings on or hold the listener's budgets with.
    let f = fixture();
    let closed = "sigmux_keyless_unknown_client_closed_total";
    let before = metric_if_any(&f.http, closed).unwrap_or(0);
    rt().block_on(async {
        for tls12 in [false, true] {
            let mut s = connect(f, "stranger", tls12).await.unwrap();
            assert!(
                closed_by_server(&mut s, Duration::from_secs(10)).await,
                "tls12={tls12}: an unnamed client's connection stayed open"
            );
        }
        // A named client on the same listener keeps its connection.
        let mut s = connect(f, "proxy", false).await.unwrap();
        assert!(!closed_by_server(&mut s, Duration::from_millis(500)).await);
        assert_eq!(
            ping(&mut s, 1).await.map(|r| r.body),
            Some(ResponseBody::Pong(b"are you there".to_vec()))
        );
    });
    // openssl s_client: the handshake completes (this is no certificate
    // problem), then the server ends the session by itself.
    for v in ["-tls1_2", "-tls1_3"] {
        let err = s_client_ended_by_server(f, &f.keyless, "stranger", v, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{v}: the server kept an unnamed client's session open"));
        assert!(err.contains("Verification: OK"), "{v}: {err}");
    }
    // Counted before the close, so all four are in by now.
    assert!(metric(&f.http, closed) >= before + 4, "{closed}");
}

#[test]
fn clients_without_a_good_certificate_are_refused() {
    let f = fixture();
    rt().block_on(async {
        // Signed by another CA: the handshake (or the first read) fails.
        let refused = match connect(f, "foreign", false).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s
                    .write_all(&Request::new(1, Op::Ping, vec![]).encode().unwrap())
                    .await;
                read_responses(&mut s, 1).await.is_empty()
            }
        };
        assert!(refused);
    });
    // No certificate at all, with openssl s_client: no application data.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &f.keyless, "-CAfile"])
        .arg(f.dir.join("ca.pem"))
        .args([
            "-verify_return_error",
            "-servername",
            "localhost",
            "-tls1_2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() || all.contains("alert"), "{all}");
}

#[test]
fn openssl_s_client_completes_mutual_tls_12_and_13_and_verifies_the_chain() {
    let f = fixture();
    for v in ["-tls1_2", "-tls1_3"] {
        let out = Command::new("openssl")
            .current_dir(&f.dir)
            .args([
                "s_client",
                "-connect",
                &f.keyless,
                v,
                "-CAfile",
                "ca.pem",
                "-cert",
                "proxy.pem",
                "-key",
                "proxy.key",
            ])
            .args(["-verify_return_error", "-servername", "localhost", "-brief"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Verification: OK"), "{v}: {err}");
        let want = if v == "-tls1_2" { "TLSv1.2" } else { "TLSv1.3" };
        assert!(
            err.contains(&format!("Protocol version: {want}")),
            "{v}: {err}"
        );
    }
}

#[test]
fn tls_sessions_are_never_resumed() {
    // A resumed session skips the client certificate check: a certificate
    // expired or revoked since would get back in. So there is no session
    // cache and no ticket, in TLS 1.2 and 1.3 alike.
    let f = fixture();
    for v in ["-tls1_2", "-tls1_3"] {
        let sess = f.dir.join(format!("session{v}.pem"));
        let _ = std::fs::remove_file(&sess);
        let run = |arg: &str| {
            let out = Command::new("openssl")
                .current_dir(&f.dir)
                .args(["s_client", "-connect", &f.keyless, v, "-CAfile", "ca.pem"])
                .args(["-cert", "proxy.pem", "-key", "proxy.key", "-servername"])
                .args(["localhost", arg, sess.to_str().unwrap()])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let first = run("-sess_out");
        assert!(first.contains("New, TLSv1."), "{v}: {first}");
        if !sess.exists() {
            // openssl saved nothing: no session ID and no ticket came, so
            // there is nothing to resume with.
            continue;
        }
        let second = run("-sess_in");
        assert!(
            second.contains("New, TLSv1.") && !second.contains("Reused"),
            "{v}: {second}"
        );
    }
}

#[test]
fn a_connection_stops_taking_requests_when_its_client_certificate_expires() {
    let f = fixture();
    short_lived_leaf(&f.dir, "ca", "short", "spiffe://test.example/proxy", 4);
    let rt = rt();
    let mut s = rt.block_on(connect(f, "short", false)).unwrap();
    assert!(matches!(
        rt.block_on(sign_with(&mut s, 1, f.ec_ski, b"valid")),
        ResponseBody::Payload(_)
    ));
    std::thread::sleep(Duration::from_secs(6));
    // Expired: the request is not answered and the server closes.
    rt.block_on(async {
        let _ = s
            .write_all(&sign_request(
                2,
                f.ec_ski,
                Op::EcdsaSignSha256,
                sha256(b"late"),
            ))
            .await;
        let got = read_responses(&mut s, 1).await;
        assert!(got.is_empty(), "answered after expiry: {got:?}");
    });
    // And a new handshake with it is refused (TLS 1.3 reports it at the
    // first read).
    let refused = match rt.block_on(connect(f, "short", false)) {
        Err(_) => true,
        Ok(mut s) => rt.block_on(ping(&mut s, 3)).is_none(),
    };
    assert!(refused, "an expired certificate was accepted");
}

#[test]
fn client_rules_are_read_again_at_sighup_and_apply_to_open_connections() {
    let f = fixture();
    let config = "rules.toml";
    let write = |client: &str, key: &str| {
        std::fs::write(
            f.dir.join(config),
            format!(
                "data_dir = \"rules-data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[keyless]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n[[keyless.clients]]\nid = \"spiffe://test.example/{client}\"\nkeys = [\"{key}\"]\n"
            ),
        )
        .unwrap();
    };
    write("proxy", "r1");
    cli(
        f,
        config,
        &["keys", "generate", "--name", "r1", "--kind", "p256"],
    )
    .unwrap();
    let list: serde_json::Value =
        serde_json::from_str(&cli(f, config, &["keys", "list", "--json"]).unwrap()).unwrap();
    let mut ski = [0u8; 20];
    hex::decode_to_slice(list[0]["ski"].as_str().unwrap(), &mut ski).unwrap();
    let (child, addr, _http, mut lines) = start_server(&f.dir, config);
    let server = ServerProcess(child);
    let rt = rt();
    let mut proxy = rt.block_on(connect_to(f, &addr, "proxy", false)).unwrap();
    assert!(matches!(
        rt.block_on(sign_with(&mut proxy, 1, ski, b"allowed")),
        ResponseBody::Payload(_)
    ));

    // The rule still names the client but no key it can use (one not made
    // yet): the open connection loses the key at once and stays open.
    write("proxy", "not-made-yet");
    let said = reload(&server, &mut lines);
    assert!(said.contains("keyless client rules reloaded"), "{said}");
    assert_eq!(
        rt.block_on(sign_with(&mut proxy, 2, ski, b"revoked")),
        ResponseBody::Error(ErrorCode::KeyNotFound)
    );
    assert!(rt.block_on(ping(&mut proxy, 20)).is_some());

    // The rule now names another client: the open connection, whose client
    // no rule names any more, is closed at once (and said so), and the
    // other client gets the key.
    write("stranger", "r1");
    let said = reload(&server, &mut lines);
    assert!(said.contains("keyless client rules reloaded"), "{said}");
    assert!(
        rt.block_on(closed_by_server(&mut proxy, Duration::from_secs(10))),
        "a client no rule names any more kept its connection"
    );
    let mut said = said;
    while !said.contains("no [[keyless.clients]] rule names") {
        let line = lines.next().expect("serve exited").unwrap();
        said.push_str(&line);
        said.push('\n');
    }
    assert!(said.contains("spiffe://test.example/proxy"), "{said}");
    let mut stranger = rt
        .block_on(connect_to(f, &addr, "stranger", false))
        .unwrap();
    assert!(matches!(
        rt.block_on(sign_with(&mut stranger, 3, ski, b"granted")),
        ResponseBody::Payload(_)
    ));

    // A config that does not parse changes nothing, and says so.
    std::fs::write(f.dir.join(config), "[keyless\n").unwrap();
    let said = reload(&server, &mut lines);
    assert!(
        said.contains("keyless client rules not reloaded") && said.contains("rules.toml"),
        "{said}"
    );
    assert!(matches!(
        rt.block_on(sign_with(&mut stranger, 4, ski, b"still")),
        ResponseBody::Payload(_)
    ));
}

#[test]
fn malformed_frames_get_errors_or_a_close_and_other_connections_keep_working() {
    let f = fixture();
    rt().block_on(async {
        let d = sha256(b"m");
        // Wrong digest length, unknown opcode, a response opcode, and an
        // unknown item (skipped): answered one by one on one connection.
        let mut s = connect(f, "proxy", false).await.unwrap();
        let mut frames = sign_request(1, f.ec_ski, Op::EcdsaSignSha256, d[..20].to_vec());
        frames.extend(sign_request(2, f.ec_ski, Op::Unknown(0x77), d.clone()));
        frames.extend(sign_request(3, f.ec_ski, Op::Pong, d.clone()));
        frames.extend(sign_request(4, f.rsa_ski, Op::EcdsaSignSha256, d.clone()));
        // Request 5 with an unknown item (tag 0x7e) in front: it is skipped.
        let mut body = sign_request(5, f.ec_ski, Op::EcdsaSignSha256, d.clone())
            [protocol::HEADER_LEN..]
            .to_vec();
        body.splice(0..0, [0x7e, 0x00, 0x02, 0xaa, 0xbb]);
        let mut framed = protocol::Header::new(5, body.len() as u16)
            .encode()
            .to_vec();
        framed.extend(body);
        frames.extend(framed);
        // Items that overrun the body.
        let mut overrun = protocol::Header::new(6, 4).encode().to_vec();
        overrun.extend([0x11, 0x00, 0x09, 0x01]);
        frames.extend(overrun);
        s.write_all(&frames).await.unwrap();
        let mut rs = read_responses(&mut s, 6).await;
        rs.sort_by_key(|r| r.id);
        let bodies: Vec<_> = rs.iter().map(|r| (r.id, r.body.clone())).collect();
        assert_eq!(bodies[0], (1, ResponseBody::Error(ErrorCode::Format)));
        assert_eq!(bodies[1], (2, ResponseBody::Error(ErrorCode::BadOpcode)));
        assert_eq!(
            bodies[2],
            (3, ResponseBody::Error(ErrorCode::UnexpectedOpcode))
        );
        assert_eq!(bodies[3], (4, ResponseBody::Error(ErrorCode::Crypto)));
        assert!(
            matches!(bodies[4], (5, ResponseBody::Payload(_))),
            "{:?}",
            bodies[4]
        );
        assert!(
            matches!(bodies[5], (6, ResponseBody::Error(_))),
            "{:?}",
            bodies[5]
        );

        // A bad version: answered, then the connection is closed.
        let mut s = connect(f, "proxy", false).await.unwrap();
        let mut bad = Request::new(9, Op::Ping, vec![]).encode().unwrap();
        bad[0] = 2;
        s.write_all(&bad).await.unwrap();
        let rs = read_responses(&mut s, 2).await;
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].body, ResponseBody::Error(ErrorCode::VersionMismatch));

        // A truncated header, then the client goes away.
        let mut s = connect(f, "proxy", true).await.unwrap();
        s.write_all(&[1, 0, 0]).await.unwrap();
        drop(s);

        // Meanwhile a fresh connection works, with 300 requests pipelined
        // through a per-connection limit of 8 in flight.
        let s = connect(f, "proxy", false).await.unwrap();
        let mut frames = Vec::new();
        for i in 0..300u32 {
            frames.extend(sign_request(i, f.ec_ski, Op::EcdsaSignSha256, d.clone()));
        }
        let (mut rd, mut wr) = tokio::io::split(s);
        let writer = tokio::spawn(async move { wr.write_all(&frames).await.map(|_| wr) });
        let mut buf = Vec::new();
        let mut got = 0;
        let mut chunk = [0u8; 8192];
        while got < 300 {
            let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
            while let Some((h, len)) = protocol::split_frame(&buf).unwrap() {
                let r = Response::decode(&h, &buf[protocol::HEADER_LEN..len]).unwrap();
                assert!(matches!(r.body, ResponseBody::Payload(_)));
                buf.drain(..len);
                got += 1;
            }
        }
        let _ = writer.await;
    });
}

#[test]
fn a_frame_with_a_wrong_version_is_answered_and_counted_like_other_errors() {
    let f = fixture();
    let name = "sigmux_keyless_requests_total{op=\"malformed\",result=\"version_mismatch\"}";
    let count = || metric_if_any(&f.http, name).unwrap_or(0);
    let before = count();
    rt().block_on(async {
        let mut s = connect(f, "proxy", false).await.unwrap();
        let mut bad = Request::new(11, Op::Ping, vec![]).encode().unwrap();
        bad[0] = 3;
        s.write_all(&bad).await.unwrap();
        let rs = read_responses(&mut s, 2).await;
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].body, ResponseBody::Error(ErrorCode::VersionMismatch));
    });
    // Counted before the answer leaves, so it is there once it came back.
    assert_eq!(count(), before + 1, "{name}");
}

#[test]
fn a_closed_stderr_does_not_cost_a_connection() {
    let f = fixture();
    // A second server on the same data dir whose stderr nobody reads any
    // more: its refusal log lines fail to write.
    let (child, addr, _, lines) = start_server(&f.dir, "sigmux.toml");
    let _server = ServerProcess(child);
    drop(lines);
    rt().block_on(async {
        let mut s = connect_to(f, &addr, "proxy", false).await.unwrap();
        let d = sha256(b"x");
        let mut frames = sign_request(1, [9; 20], Op::EcdsaSignSha256, d.clone());
        frames.extend(sign_request(2, f.ec_ski, Op::EcdsaSignSha256, d));
        s.write_all(&frames).await.unwrap();
        let mut rs = read_responses(&mut s, 2).await;
        rs.sort_by_key(|r| r.id);
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].body, ResponseBody::Error(ErrorCode::KeyNotFound));
        assert!(matches!(rs[1].body, ResponseBody::Payload(_)));
    });
}

/// `sigmux bench` against the fixture's keyless server as the proxy
/// client, for the key `ski`, with `extra` arguments.
fn bench_keyless(f: &Fixture, ski: [u8; 20], extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(&f.dir)
        .args(["bench", "--target", &format!("keyless://{}", f.keyless)])
        .args([
            "--ski",
            &hex::encode(ski),
            "--scheme",
            "ecdsa_secp256r1_sha256",
        ])
        .args([
            "--ca",
            "ca.pem",
            "--client-cert",
            "proxy.pem",
            "--client-key",
            "proxy.key",
        ])
        .args(["--server-name", "localhost"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn bench_drives_a_running_keyless_server() {
    let f = fixture();
    let out = bench_keyless(
        f,
        f.ec_ski,
        &[
            "--duration",
            "0.5",
            "--concurrency",
            "16",
            "--connections",
            "2",
            "--json",
            "bench.json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.dir.join("bench.json")).unwrap()).unwrap();
    assert!(report["ops"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(report["errors"], 0);
    assert!(
        report["backend"]
            .as_str()
            .unwrap()
            .starts_with("keyless://")
    );
    assert!(report["p99_us"].as_f64().unwrap() >= report["p50_us"].as_f64().unwrap());

    // A key the client may not use: every request fails, and the run says
    // why and fails rather than reporting 0 ops/s as a result.
    let out = bench_keyless(f, f.ed_ski, &["--duration", "0.3", "--concurrency", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("every request failed") && err.to_lowercase().contains("key not found"),
        "{err}"
    );
}

fn rsa_public(f: &Fixture) -> openssl::rsa::Rsa<openssl::pkey::Public> {
    openssl::pkey::PKey::public_key_from_pem(
        &std::fs::read(f.dir.join("edge-rsa.pub.pem")).unwrap(),
    )
    .unwrap()
    .rsa()
    .unwrap()
}

#[test]
fn rsa_decryption_and_legacy_digests_go_through_the_raw_operation() {
    use openssl::rsa::Padding;
    let f = fixture();
    let rsa = rsa_public(f);
    let k = rsa.size() as usize;
    let premaster: Vec<u8> = (0..48u8).collect();
    let mut c_pkcs1 = vec![0u8; k];
    rsa.public_encrypt(&premaster, &mut c_pkcs1, Padding::PKCS1)
        .unwrap();
    let mut m_raw = vec![0x11u8; k];
    m_raw[0] = 0;
    let mut c_raw = vec![0u8; k];
    rsa.public_encrypt(&m_raw, &mut c_raw, Padding::NONE)
        .unwrap();
    // Badly padded plaintexts, each encrypted raw: all must give one error.
    let bad_blocks: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        let mut b = vec![0x22u8; k];
        b[0] = 0;
        b[1] = 1; // block type 1
        b[100] = 0;
        v.push(b);
        let mut b = vec![0x22u8; k];
        b[0] = 0;
        b[1] = 2; // no separator
        v.push(b);
        let mut b = vec![0x22u8; k];
        b[0] = 0;
        b[1] = 2;
        b[5] = 0; // padding string too short
        v.push(b);
        v
    };
    let bad_cts: Vec<Vec<u8>> = bad_blocks
        .iter()
        .map(|b| {
            let mut c = vec![0u8; k];
            rsa.public_encrypt(b, &mut c, Padding::NONE).unwrap();
            c
        })
        .collect();
    let sha1 = openssl::sha::sha1(b"legacy").to_vec();
    let md5sha1 = [
        openssl::hash::hash(openssl::hash::MessageDigest::md5(), b"legacy")
            .unwrap()
            .to_vec(),
        sha1.clone(),
    ]
    .concat();
    rt().block_on(async {
        let mut s = connect(f, "proxy", true).await.unwrap();
        let mut frames = sign_request(1, f.rsa_ski, Op::RsaDecrypt, c_pkcs1.clone());
        frames.extend(sign_request(2, f.rsa_ski, Op::RsaDecryptRaw, c_raw.clone()));
        for (i, c) in bad_cts.iter().enumerate() {
            frames.extend(sign_request(
                10 + i as u32,
                f.rsa_ski,
                Op::RsaDecrypt,
                c.clone(),
            ));
        }
        frames.extend(sign_request(20, f.rsa_ski, Op::RsaSignSha1, sha1.clone()));
        frames.extend(sign_request(
            21,
            f.rsa_ski,
            Op::RsaSignMd5Sha1,
            md5sha1.clone(),
        ));
        frames.extend(sign_request(
            22,
            f.rsa_ski,
            Op::RsaDecrypt,
            c_pkcs1[1..].to_vec(),
        ));
        frames.extend(sign_request(23, f.ec_ski, Op::RsaDecrypt, c_pkcs1.clone()));
        // Ciphertexts at or above the modulus, pipelined with the good ones
        // above: refused alone, the others are answered as usual.
        frames.extend(sign_request(24, f.rsa_ski, Op::RsaDecrypt, vec![0xff; k]));
        frames.extend(sign_request(
            25,
            f.rsa_ski,
            Op::RsaDecryptRaw,
            rsa.n().to_vec(),
        ));
        s.write_all(&frames).await.unwrap();
        let mut rs = read_responses(&mut s, 11).await;
        rs.sort_by_key(|r| r.id);
        let body = |id: u32| rs.iter().find(|r| r.id == id).unwrap().body.clone();
        assert_eq!(body(1), ResponseBody::Payload(premaster.clone()));
        assert_eq!(body(2), ResponseBody::Payload(m_raw.clone()));
        for i in 0..3 {
            assert_eq!(
                body(10 + i),
                ResponseBody::Error(ErrorCode::Crypto),
                "bad block {i}"
            );
        }
        let ResponseBody::Payload(sig) = body(20) else {
            panic!("{:?}", body(20))
        };
        let pk = openssl::pkey::PKey::from_rsa(rsa_public(f)).unwrap();
        let mut v =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha1(), &pk).unwrap();
        v.update(b"legacy").unwrap();
        assert!(v.verify(&sig).unwrap());
        let ResponseBody::Payload(sig) = body(21) else {
            panic!("{:?}", body(21))
        };
        let mut t = vec![0u8; k];
        let n = rsa.public_decrypt(&sig, &mut t, Padding::PKCS1).unwrap();
        assert_eq!(&t[..n], &md5sha1[..]);
        assert_eq!(body(22), ResponseBody::Error(ErrorCode::Format));
        assert_eq!(body(23), ResponseBody::Error(ErrorCode::Crypto));
        assert_eq!(body(24), ResponseBody::Error(ErrorCode::Crypto));
        assert_eq!(body(25), ResponseBody::Error(ErrorCode::Crypto));
    });
}

#[test]
fn ecdsa_with_the_digests_of_older_tls_versions_verifies() {
    let f = fixture();
    let pk = openssl::pkey::PKey::public_key_from_pem(
        &std::fs::read(f.dir.join("edge-ec.pub.pem")).unwrap(),
    )
    .unwrap();
    let ec = pk.ec_key().unwrap();
    let msg = b"tls 1.0 handshake";
    let digests: Vec<(Op, Vec<u8>)> = vec![
        (Op::EcdsaSignSha1, openssl::sha::sha1(msg).to_vec()),
        (Op::EcdsaSignSha224, openssl::sha::sha224(msg).to_vec()),
        (Op::EcdsaSignSha384, openssl::sha::sha384(msg).to_vec()),
        (Op::EcdsaSignSha512, openssl::sha::sha512(msg).to_vec()),
        (
            Op::EcdsaSignMd5Sha1,
            [
                openssl::hash::hash(openssl::hash::MessageDigest::md5(), msg)
                    .unwrap()
                    .to_vec(),
                openssl::sha::sha1(msg).to_vec(),
            ]
            .concat(),
        ),
    ];
    rt().block_on(async {
        let mut s = connect(f, "proxy", true).await.unwrap();
        let mut frames = Vec::new();
        for (i, (op, d)) in digests.iter().enumerate() {
            frames.extend(sign_request(i as u32, f.ec_ski, *op, d.clone()));
        }
        // A digest of the wrong length for its opcode.
        frames.extend(sign_request(99, f.ec_ski, Op::EcdsaSignSha1, vec![0; 32]));
        s.write_all(&frames).await.unwrap();
        let rs = read_responses(&mut s, digests.len() + 1).await;
        for r in &rs {
            if r.id == 99 {
                assert_eq!(r.body, ResponseBody::Error(ErrorCode::Format));
                continue;
            }
            let ResponseBody::Payload(sig) = &r.body else {
                panic!("{}: {:?}", r.id, r.body)
            };
            let sig = openssl::ecdsa::EcdsaSig::from_der(sig).unwrap();
            assert!(
                sig.verify(&digests[r.id as usize].1, &ec).unwrap(),
                "op {:?}",
                digests[r.id as usize].0
            );
        }
    });
}

/// Starts another `sigmux serve` on the fixture's data dir whose `[keyless]`
/// section adds `extra`; returns it with its keyless and HTTP addresses.
fn limited_server(f: &Fixture, name: &str, extra: &str) -> (ServerProcess, String, String) {
    let file = format!("{name}.toml");
    std::fs::write(
        f.dir.join(&file),
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[keyless]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n{extra}\n[[keyless.clients]]\nid = \"spiffe://test.example/proxy\"\nkeys = [\"edge-ec\", \"edge-rsa\"]\n"
        ),
    )
    .unwrap();
    let (child, keyless, http, lines) = start_server(&f.dir, &file);
    std::thread::spawn(move || for _ in lines {});
    (ServerProcess(child), keyless, http)
}

/// One value of the server's /metrics (the first line starting `name `).
fn metric(http: &str, name: &str) -> i64 {
    metric_if_any(http, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Like [`metric`], but `None` when there is no such line yet (a labelled
/// counter appears with its first event).
fn metric_if_any(http: &str, name: &str) -> Option<i64> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{http}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.parse().unwrap())
}

/// Polls a metric until `ok` holds (generous wait), returning its last value.
async fn wait_metric(http: &str, name: &str, ok: impl Fn(i64) -> bool) -> i64 {
    let mut v = metric(http, name);
    for _ in 0..300 {
        if ok(v) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        v = metric(http, name);
    }
    v
}

/// Sends `n` ECDSA signing requests on `s`, checks every answer verifies.
async fn signs_correctly(f: &Fixture, s: &mut Tls, round: u32, n: u32) {
    let msg = format!("round {round}").into_bytes();
    let d = sha256(&msg);
    let mut frames = Vec::new();
    for i in 0..n {
        frames.extend(sign_request(
            round * 1000 + i,
            f.ec_ski,
            Op::EcdsaSignSha256,
            d.clone(),
        ));
    }
    s.write_all(&frames).await.unwrap();
    let rs = read_responses(s, n as usize).await;
    assert_eq!(rs.len(), n as usize, "round {round}");
    for r in rs {
        let ResponseBody::Payload(sig) = &r.body else {
            panic!("round {round}, request {}: {:?}", r.id, r.body)
        };
        assert!(verify(&f.dir.join("edge-ec.pub.pem"), "ecdsa", &msg, sig));
    }
}

/// A ping answered on `s`, or `None` when the connection is closed.
async fn ping(s: &mut Tls, id: u32) -> Option<Response> {
    s.write_all(
        &Request::new(id, Op::Ping, b"are you there".to_vec())
            .encode()
            .unwrap(),
    )
    .await
    .ok()?;
    read_responses(s, 1).await.pop()
}

/// Pipelines the largest pings there are on `s` and never reads an answer,
/// until a write fails (the server dropped the connection); returns the
/// bytes written before that and the error.
async fn flood_unread_pings(mut s: Tls) -> (u64, std::io::Error) {
    let mut sent = 0u64;
    let mut id = 0u32;
    loop {
        let mut batch = Vec::new();
        for _ in 0..16 {
            id += 1;
            batch.extend(
                Request::new(id, Op::Ping, vec![0x5a; 65_000])
                    .encode()
                    .unwrap(),
            );
        }
        if let Err(e) = s.write_all(&batch).await {
            return (sent, e);
        }
        sent += batch.len() as u64;
    }
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_others_keep_signing() {
    let f = fixture();
    let (_server, addr, http) = limited_server(
        f,
        "write-timeout",
        "max_in_flight = 1024\nmax_bytes_in_flight = 262144\nwrite_timeout_seconds = 1\n",
    );
    rt().block_on(async {
        // Pipelines the largest pings there are and never reads an answer;
        // writes until the server drops the connection.
        let greedy = connect_to(f, &addr, "proxy", false).await.unwrap();
        let flood = tokio::spawn(flood_unread_pings(greedy));
        // Meanwhile another client of the same server signs as usual.
        let mut good = connect_to(f, &addr, "proxy", false).await.unwrap();
        let mut round = 1;
        while !flood.is_finished() && round < 1000 {
            signs_correctly(f, &mut good, round, 4).await;
            round += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (sent, err) = tokio::time::timeout(Duration::from_secs(60), flood)
            .await
            .expect("the greedy client was never disconnected")
            .unwrap();
        // It got far more out than the server holds for one connection.
        assert!(sent > 262_144, "{sent} bytes, then {err}");
        assert!(wait_metric(&http, "sigmux_keyless_write_timeouts_total", |v| v >= 1).await >= 1);
        // Its work was dropped; the other connection still signs.
        signs_correctly(f, &mut good, round, 20).await;
        assert_eq!(
            wait_metric(&http, "sigmux_keyless_in_flight", |v| v == 0).await,
            0
        );
        assert_eq!(
            wait_metric(&http, "sigmux_keyless_bytes_in_flight", |v| v == 0).await,
            0
        );
        assert_eq!(
            wait_metric(&http, "sigmux_keyless_connections", |v| v == 1).await,
            1
        );
    });
}

#[test]
fn the_listener_wide_byte_budget_holds_every_connection_back_until_answers_go_out() {
    let f = fixture();
    // One connection's budget is the whole listener's.
    let (_server, addr, http) = limited_server(
        f,
        "total-bytes",
        "max_bytes_in_flight = 262144\nmax_total_bytes_in_flight = 262144\nwrite_timeout_seconds = 6\n",
    );
    rt().block_on(async {
        // Pings it never reads: once the socket buffers are full, its
        // unwritten answers hold the budget until its write timeout.
        let greedy = connect_to(f, &addr, "proxy", false).await.unwrap();
        let flood = tokio::spawn(flood_unread_pings(greedy));
        let held = wait_metric(&http, "sigmux_keyless_bytes_in_flight", |v| v >= 200_000).await;
        assert!(held >= 200_000, "the greedy client holds only {held} bytes");
        // Another connection, with its own budget untouched, asks for more
        // than is left of the listener's: it waits...
        let mut other = connect_to(f, &addr, "proxy", true).await.unwrap();
        other
            .write_all(&Request::new(1, Op::Ping, vec![7; 10_000]).encode().unwrap())
            .await
            .unwrap();
        let answer = tokio::spawn(async move { read_responses(&mut other, 1).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !answer.is_finished(),
            "answered while the listener's budget was spent"
        );
        // ...until the greedy one is cut off and its budget comes back.
        let pong = answer.await.unwrap();
        assert_eq!(pong.len(), 1);
        assert_eq!(pong[0].body, ResponseBody::Pong(vec![7; 10_000]));
        tokio::time::timeout(Duration::from_secs(30), flood)
            .await
            .expect("the greedy client was never disconnected")
            .unwrap();
    });
}

#[test]
fn connections_past_max_connections_are_closed_and_the_limit_frees_up() {
    let f = fixture();
    let (_server, addr, http) = limited_server(f, "max-connections", "max_connections = 2\n");
    rt().block_on(async {
        let mut first = connect_to(f, &addr, "proxy", false).await.unwrap();
        let mut second = connect_to(f, &addr, "proxy", true).await.unwrap();
        assert!(ping(&mut first, 1).await.is_some());
        assert!(ping(&mut second, 2).await.is_some());
        // A third: closed before any handshake.
        let refused = match connect_to(f, &addr, "proxy", false).await {
            Err(_) => true,
            Ok(mut s) => ping(&mut s, 3).await.is_none(),
        };
        assert!(refused, "a third connection was served");
        assert!(metric(&http, "sigmux_keyless_connections_rejected_total") >= 1);
        // The two open ones are unaffected.
        signs_correctly(f, &mut first, 1, 3).await;
        signs_correctly(f, &mut second, 2, 3).await;
        // Once one closes, a new connection is served.
        drop(first);
        let mut served = None;
        for attempt in 0..100u32 {
            if let Ok(mut s) = connect_to(f, &addr, "proxy", false).await
                && ping(&mut s, 10 + attempt).await.is_some()
            {
                served = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut third = served.expect("no connection served after one closed");
        signs_correctly(f, &mut third, 3, 3).await;
        signs_correctly(f, &mut second, 4, 3).await;
    });
}

#[test]
fn idle_connections_and_stalled_handshakes_are_closed_after_their_timeouts() {
    let f = fixture();
    let (_server, addr, http) = limited_server(
        f,
        "idle",
        "idle_timeout_seconds = 1\nhandshake_timeout_seconds = 1\n",
    );
    // A TCP connection that never starts its handshake is closed after
    // 1 s (well before the default 10 s this read would outlast).
    let failures = metric(&http, "sigmux_keyless_handshake_failures_total");
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut stalled, &mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a stalled handshake was not closed after 1 s: {other:?}"),
    }
    assert!(metric(&http, "sigmux_keyless_handshake_failures_total") > failures);
    rt().block_on(async {
        let mut s = connect_to(f, &addr, "proxy", false).await.unwrap();
        signs_correctly(f, &mut s, 1, 2).await;
        // Half a frame, then nothing: still idle.
        s.write_all(&[1, 0, 0]).await.unwrap();
        let mut chunk = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("idle connection still open after 30 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert!(metric(&http, "sigmux_keyless_idle_closed_total") >= 1);
        // New connections are served as usual.
        let mut s = connect_to(f, &addr, "proxy", true).await.unwrap();
        signs_correctly(f, &mut s, 2, 2).await;
    });
}

#[test]
fn keyless_limit_errors_name_the_field() {
    let base = "[keys]\nkek_env = \"K\"\n[keyless]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n";
    for (extra, field) in [
        ("write_timeout_seconds = 0", "keyless.write_timeout_seconds"),
        ("idle_timeout_seconds = 0", "keyless.idle_timeout_seconds"),
        (
            "handshake_timeout_seconds = 301",
            "keyless.handshake_timeout_seconds",
        ),
        ("max_connections = 0", "keyless.max_connections"),
        ("max_bytes_in_flight = 1000", "keyless.max_bytes_in_flight"),
        (
            "max_total_bytes_in_flight = 300000",
            "keyless.max_total_bytes_in_flight",
        ),
        ("write_timeout_secs = 5", "write_timeout_secs"),
    ] {
        let err = sigmux::config::Config::parse(&format!("{base}{extra}\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{extra}: {err}");
    }
    let ok = sigmux::config::Config::parse(
        &format!("{base}write_timeout_seconds = 5\nidle_timeout_seconds = 60\nmax_connections = 10\nmax_bytes_in_flight = 1048576\n"),
        "t.toml",
    )
    .unwrap();
    let (_, s) = ok.keyless_settings().unwrap().unwrap();
    assert_eq!(s.handshake_timeout, Duration::from_secs(10), "the default");
    assert_eq!(
        (
            s.write_timeout,
            s.idle_timeout,
            s.max_connections,
            s.max_bytes_in_flight
        ),
        (Duration::from_secs(5), Duration::from_secs(60), 10, 1 << 20)
    );
}

/// Holds every batch at a gate until the test opens it; signs with the CPU
/// backend (mocked: only the gate).
struct GatedCpu {
    cpu: sigmux::backend::cpu::CpuBackend,
    open: parking_lot::Mutex<bool>,
    opened: parking_lot::Condvar,
    entered: std::sync::atomic::AtomicUsize,
}

impl sigmux::backend::Backend for GatedCpu {
    fn name(&self) -> &str {
        "gated-cpu"
    }
    fn capabilities(&self) -> &sigmux::backend::Capabilities {
        self.cpu.capabilities()
    }
    fn sign_batch(
        &self,
        key: &Arc<sigmux::Key>,
        scheme: sigmux::Scheme,
        inputs: &[Vec<u8>],
    ) -> sigmux::Result<Vec<Vec<u8>>> {
        self.entered
            .fetch_add(inputs.len(), std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.lock();
        while !*open {
            self.opened.wait(&mut open);
        }
        drop(open);
        self.cpu.sign_batch(key, scheme, inputs)
    }
    fn cost_seed(
        &self,
        kind: sigmux::KeyKind,
        scheme: sigmux::Scheme,
    ) -> Option<sigmux::backend::CostSeed> {
        self.cpu.cost_seed(kind, scheme)
    }
}

/// Shutdown of the keyless listener, in process so that requests can be
/// held in flight deterministically: once stopped, it takes no new
/// connection and no new request, answers every request it had read, then
/// closes the connection and returns.
#[test]
fn a_stopping_server_answers_what_it_read_then_closes() {
    use sigmux::backend::cpu::{CpuBackend, CpuConfig, CpuEngine, EngineChoice};
    use sigmux::keyless::auth::{ClientMatch, Policy, Rule};
    use sigmux::keyless::server::{KeylessServer, KeylessSettings};
    let f = fixture();
    let store_dir = tempfile::tempdir().unwrap();
    let kek = sigmux::keys::Kek::from_bytes(&[9u8; 32]).unwrap();
    let keys = Arc::new(sigmux::keys::KeyStore::open(store_dir.path(), Some(kek)).unwrap());
    let key = keys.generate("drain-ec", sigmux::KeyKind::P256).unwrap();
    let ski = sigmux::keys::Ski::of_spki(key.spki_der()).unwrap().0;
    let public = store_dir.path().join("drain-ec.pub.pem");
    let pk = openssl::pkey::PKey::public_key_from_der(key.spki_der()).unwrap();
    std::fs::write(&public, pk.public_key_to_pem().unwrap()).unwrap();
    let gated = Arc::new(GatedCpu {
        cpu: CpuBackend::new(&CpuConfig {
            threads: 2,
            engine: EngineChoice::Fixed(CpuEngine::AwsLc),
            max_batch: 256,
        })
        .unwrap(),
        open: parking_lot::Mutex::new(false),
        opened: parking_lot::Condvar::new(),
        entered: Default::default(),
    });
    let engine = Arc::new(
        sigmux::Engine::new(sigmux::EngineConfig::default(), vec![gated.clone()]).unwrap(),
    );
    let settings = KeylessSettings {
        cert: f.dir.join("server.pem"),
        key: f.dir.join("server.key"),
        client_ca: f.dir.join("ca.pem"),
        max_in_flight: 1024,
        max_bytes_in_flight: 4 << 20,
        max_total_bytes_in_flight: 64 << 20,
        max_connections: 16,
        write_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(300),
        handshake_timeout: Duration::from_secs(10),
        policy: Policy::new(vec![Rule {
            client: ClientMatch::SpiffeId("spiffe://test.example/proxy".into()),
            keys: vec!["drain-ec".into()],
        }]),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Opens the gate however the test ends, so a failure cannot leave the
    // engine's threads (and the runtime's shutdown, which comes first)
    // waiting on it.
    struct OpenOnDrop(Arc<GatedCpu>);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            *self.0.open.lock() = true;
            self.0.opened.notify_all();
        }
    }
    let _open_at_end = OpenOnDrop(gated.clone());
    rt.block_on(async {
        let server = KeylessServer::new(&settings, engine, keys).unwrap();
        let metrics = server.metrics.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(server.serve(listener, stop_rx));

        let mut s = connect_to(f, &addr, "proxy", false).await.unwrap();
        let msg = b"drained".to_vec();
        let d = sha256(&msg);
        let n = 40usize;
        let mut frames = Vec::new();
        for i in 0..n as u32 {
            frames.extend(sign_request(i, ski, Op::EcdsaSignSha256, d.clone()));
        }
        s.write_all(&frames).await.unwrap();
        // Every request is read and in flight: the first batches held at
        // the backend's gate, the rest queued behind them in the engine.
        let in_flight = || metrics.in_flight.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..2000 {
            if in_flight() >= n as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(in_flight(), n as i64);
        assert!(gated.entered.load(std::sync::atomic::Ordering::SeqCst) >= 1);

        stop.send(true).unwrap();
        // The listener closes: a new connection is refused or cut off.
        let mut closed = false;
        for _ in 0..200 {
            match connect_to(f, &addr, "proxy", false).await {
                Err(_) => {
                    closed = true;
                    break;
                }
                Ok(mut late) => {
                    if ping(&mut late, 1).await.is_none() {
                        closed = true;
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            closed,
            "the listener still takes connections after the stop"
        );
        // A request sent after the stop is not taken on.
        s.write_all(&sign_request(999, ski, Op::EcdsaSignSha256, d.clone()))
            .await
            .unwrap();
        assert!(!serving.is_finished(), "serve returned with answers due");

        // Released, every request read before the stop is answered and
        // verifies; then the connection ends and serve returns.
        *gated.open.lock() = true;
        gated.opened.notify_all();
        let answers = read_responses(&mut s, n + 1).await;
        assert_eq!(
            answers.len(),
            n,
            "answers: {:?}",
            answers.iter().map(|r| r.id).collect::<Vec<_>>()
        );
        for r in &answers {
            assert!(r.id < n as u32);
            let ResponseBody::Payload(sig) = &r.body else {
                panic!("request {}: {:?}", r.id, r.body)
            };
            assert!(verify(&public, "ecdsa", &msg, sig));
        }
        // Having read the close, the client closes too (until then the
        // server reads and drops what it sent after the stop, so that its
        // close is not a reset that would lose answers in flight).
        drop(s);
        tokio::time::timeout(Duration::from_secs(20), serving)
            .await
            .expect("serve did not return after its last connection closed")
            .unwrap();
    });
}

/// Runs the CLI in the fixture's directory with `config`; returns stdout,
/// or stderr as the error.
fn cli(f: &Fixture, config: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(&f.dir)
        .args(["--config", config])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Sends SIGHUP to `server` and returns what it printed up to its "keys
/// reloaded" line (the last of a reload).
fn reload(server: &ServerProcess, lines: &mut Lines) -> String {
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut said = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("keys reloaded") {
            return said;
        }
    }
    panic!("serve exited without reloading its keys: {said}");
}

/// One ECDSA P-256 signature over `msg` with the key whose SKI is `ski`.
async fn sign_with(s: &mut Tls, id: u32, ski: [u8; 20], msg: &[u8]) -> ResponseBody {
    s.write_all(&sign_request(id, ski, Op::EcdsaSignSha256, sha256(msg)))
        .await
        .unwrap();
    read_responses(s, 1).await.remove(0).body
}

#[test]
fn keys_and_the_server_certificate_changed_while_serving_are_picked_up_at_sighup() {
    let f = fixture();
    // A data dir and server certificate files of its own: the shared ones
    // stay as other tests expect them.
    let config = "reload.toml";
    for ext in ["pem", "key"] {
        std::fs::copy(
            f.dir.join(format!("server.{ext}")),
            f.dir.join(format!("reload-server.{ext}")),
        )
        .unwrap();
    }
    std::fs::write(
        f.dir.join(config),
        "data_dir = \"reload-data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[keyless]\nlisten = \"127.0.0.1:0\"\ncert = \"reload-server.pem\"\nkey = \"reload-server.key\"\nclient_ca = \"ca.pem\"\n[[keyless.clients]]\nid = \"spiffe://test.example/proxy\"\nkeys = [\"*\"]\n",
    )
    .unwrap();
    let ski_of = |name: &str| -> [u8; 20] {
        let list: serde_json::Value =
            serde_json::from_str(&cli(f, config, &["keys", "list", "--json"]).unwrap()).unwrap();
        let k = list
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap();
        let mut out = [0u8; 20];
        hex::decode_to_slice(k["ski"].as_str().unwrap(), &mut out).unwrap();
        out
    };
    cli(
        f,
        config,
        &["keys", "generate", "--name", "first", "--kind", "p256"],
    )
    .unwrap();
    let (child, addr, _http, mut lines) = start_server(&f.dir, config);
    let server = ServerProcess(child);

    // The KEK rotated under the running server: the key it holds goes on
    // signing, and the next key, sealed under the new KEK, loads at SIGHUP
    // (the server reads the new KEK file).
    let out = cli(f, config, &["keys", "rotate-kek"]).unwrap();
    assert!(out.contains("1 key(s) re-encrypted"), "{out}");

    // Generated next to the running server: unknown to it until SIGHUP.
    cli(
        f,
        config,
        &["keys", "generate", "--name", "late", "--kind", "p256"],
    )
    .unwrap();
    let late = ski_of("late");
    let first = ski_of("first");
    let pem = cli(f, config, &["keys", "public", "--name", "late"]).unwrap();
    std::fs::write(f.dir.join("late.pub.pem"), pem).unwrap();
    // One runtime for the connection's whole life.
    let rt = rt();
    let mut s = rt.block_on(connect_to(f, &addr, "proxy", false)).unwrap();
    assert_eq!(
        rt.block_on(sign_with(&mut s, 1, late, b"before")),
        ResponseBody::Error(ErrorCode::KeyNotFound)
    );
    let line = reload(&server, &mut lines);
    assert!(
        line.contains("1 added [\"late\"], 0 replaced [], 0 removed"),
        "{line}"
    );
    let ResponseBody::Payload(sig) = rt.block_on(sign_with(&mut s, 2, late, b"after")) else {
        panic!("the reloaded key does not sign");
    };
    assert!(verify(&f.dir.join("late.pub.pem"), "ecdsa", b"after", &sig));

    // Replaced (deleted and made again under the same name): reported as
    // replaced, not added; the old key no longer signs, the new one does.
    cli(f, config, &["keys", "delete", "--name", "late"]).unwrap();
    cli(
        f,
        config,
        &["keys", "generate", "--name", "late", "--kind", "p256"],
    )
    .unwrap();
    let old_late = late;
    let late = ski_of("late");
    assert_ne!(late, old_late);
    let line = reload(&server, &mut lines);
    assert!(
        line.contains("0 added [], 1 replaced [\"late\"], 0 removed []"),
        "{line}"
    );
    assert_eq!(
        rt.block_on(sign_with(&mut s, 20, old_late, b"old")),
        ResponseBody::Error(ErrorCode::KeyNotFound)
    );
    assert!(matches!(
        rt.block_on(sign_with(&mut s, 21, late, b"new")),
        ResponseBody::Payload(_)
    ));

    // Deleted: gone from the server at the next SIGHUP; the other stays.
    let out = cli(f, config, &["keys", "delete", "--name", "late"]).unwrap();
    assert!(out.starts_with("deleted late "), "{out}");
    assert!(
        cli(f, config, &["keys", "delete", "--name", "late"])
            .unwrap_err()
            .contains("late"),
        "a second delete must name the missing key"
    );
    let line = reload(&server, &mut lines);
    assert!(
        line.contains("0 added [], 0 replaced [], 1 removed [\"late\"]"),
        "{line}"
    );
    assert_eq!(
        rt.block_on(sign_with(&mut s, 3, late, b"gone")),
        ResponseBody::Error(ErrorCode::KeyNotFound)
    );
    assert!(matches!(
        rt.block_on(sign_with(&mut s, 4, first, b"still")),
        ResponseBody::Payload(_)
    ));
    // Both changes are in the audit log, whose chain still verifies.
    cli(f, config, &["audit", "verify"]).unwrap();
    let log = std::fs::read_to_string(f.dir.join("reload-data/audit.log")).unwrap();
    assert!(log.contains("\"event\":\"key.delete\"") && log.contains("\"name\":\"late\""));

    // A renewed server certificate: new connections get it, the open one
    // goes on.
    let presented = |s: &Tls| s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let first_cert = presented(&s);
    issue(&f.dir, "ca", "reload-server2", "DNS:localhost,IP:127.0.0.1");
    for ext in ["pem", "key"] {
        std::fs::copy(
            f.dir.join(format!("reload-server2.{ext}")),
            f.dir.join(format!("reload-server.{ext}")),
        )
        .unwrap();
    }
    let renewed = CertificateDer::from_pem_file(f.dir.join("reload-server2.pem"))
        .unwrap()
        .to_vec();
    assert_ne!(renewed, first_cert);
    let said = reload(&server, &mut lines);
    assert!(said.contains("sigmux: keyless TLS reloaded"), "{said}");
    let mut s2 = rt.block_on(connect_to(f, &addr, "proxy", false)).unwrap();
    assert_eq!(presented(&s2), renewed);
    assert!(matches!(
        rt.block_on(sign_with(&mut s2, 5, first, b"renewed")),
        ResponseBody::Payload(_)
    ));
    assert!(matches!(
        rt.block_on(sign_with(&mut s, 6, first, b"old connection")),
        ResponseBody::Payload(_)
    ));
    // A broken file is refused and the renewed certificate stays.
    std::fs::write(f.dir.join("reload-server.pem"), "not a certificate").unwrap();
    let said = reload(&server, &mut lines);
    assert!(
        said.contains("keyless TLS not reloaded") && said.contains("keyless.cert"),
        "{said}"
    );
    let s3 = rt.block_on(connect_to(f, &addr, "proxy", false)).unwrap();
    assert_eq!(presented(&s3), renewed);
}

#[test]
fn the_cas_own_keys_are_never_used_even_by_a_client_allowed_every_key() {
    let f = fixture();
    let config = "ca-keys.toml";
    std::fs::write(
        f.dir.join(config),
        "data_dir = \"ca-keys-data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[keyless]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n[[keyless.clients]]\nid = \"spiffe://test.example/proxy\"\nkeys = [\"*\"]\n",
    )
    .unwrap();
    cli(f, config, &["ca", "init", "--trust-domain", "test.example"]).unwrap();
    cli(
        f,
        config,
        &["keys", "generate", "--name", "mine", "--kind", "p256"],
    )
    .unwrap();
    // The operator cannot make or import a key under a CA key's name.
    for name in ["ca-root-x", "ca-int-x", "ca-jwt-x"] {
        let err = cli(
            f,
            config,
            &["keys", "generate", "--name", name, "--kind", "p256"],
        )
        .unwrap_err();
        assert!(err.contains(name) && err.contains("reserved"), "{err}");
    }
    let list: serde_json::Value =
        serde_json::from_str(&cli(f, config, &["keys", "list", "--json"]).unwrap()).unwrap();
    let ski = |name: &str| -> [u8; 20] {
        let mut out = [0u8; 20];
        hex::decode_to_slice(
            list.as_array()
                .unwrap()
                .iter()
                .find(|k| k["name"] == name)
                .unwrap()["ski"]
                .as_str()
                .unwrap(),
            &mut out,
        )
        .unwrap();
        out
    };
    let names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    let ca_keys: Vec<&String> = names
        .iter()
        .filter(|n| {
            n.starts_with("ca-root-") || n.starts_with("ca-int-") || n.starts_with("ca-jwt-")
        })
        .collect();
    assert_eq!(ca_keys.len(), 3, "{names:?}");
    // Nor sign with one from the command line.
    std::fs::write(f.dir.join("ca-keys-msg"), b"forged").unwrap();
    for name in &ca_keys {
        let err = cli(
            f,
            config,
            &[
                "sign",
                "--key",
                name,
                "--scheme",
                "ecdsa_secp256r1_sha256",
                "--in",
                "ca-keys-msg",
            ],
        )
        .unwrap_err();
        assert!(
            err.contains(name.as_str()) && err.contains("CA's own keys"),
            "{err}"
        );
    }
    // A rule naming a CA key is a config error.
    std::fs::write(
        f.dir.join("ca-keys-named.toml"),
        format!(
            "data_dir = \"ca-keys-data\"\n[keyless]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n[[keyless.clients]]\nid = \"spiffe://test.example/proxy\"\nkeys = [\"mine\", \"{}\"]\n",
            ca_keys[0]
        ),
    )
    .unwrap();
    let err = cli(f, "ca-keys-named.toml", &["backends"]).unwrap_err();
    assert!(
        err.contains("keyless.clients[0].keys") && err.contains(ca_keys[0].as_str()),
        "{err}"
    );

    // A rule naming a key the store does not hold is worth a warning at
    // start (a typo would otherwise only show as key_not_found answers).
    let mut with_typo = std::fs::read_to_string(f.dir.join(config)).unwrap();
    with_typo.push_str("[[keyless.clients]]\nid = \"spiffe://test.example/stranger\"\nkeys = [\"mine\", \"mien\"]\n");
    std::fs::write(f.dir.join(config), with_typo).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(&f.dir)
        .args(["--config", config, "serve"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = String::new();
    let server = ServerProcess(child);
    while !said.contains("on http://") {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if let Some(a) = line.split("keyless listening on ").nth(1) {
            addr = a.trim().to_string();
        }
        said.push_str(&line);
        said.push('\n');
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(
        said.contains("keyless.clients[1].keys names 'mien', which the key store does not hold")
            && !said.contains("'mine', which"),
        "{said}"
    );
    let _server = server;
    let rt = rt();
    let mut s = rt.block_on(connect_to(f, &addr, "proxy", false)).unwrap();
    for (i, name) in ca_keys.iter().enumerate() {
        assert_eq!(
            rt.block_on(sign_with(&mut s, i as u32, ski(name), b"forged")),
            ResponseBody::Error(ErrorCode::KeyNotFound),
            "{name}"
        );
    }
    assert!(matches!(
        rt.block_on(sign_with(&mut s, 9, ski("mine"), b"fine")),
        ResponseBody::Payload(_)
    ));
}
