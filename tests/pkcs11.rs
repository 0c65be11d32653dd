//! The PKCS#11 backend against real SoftHSM2 tokens: the engine signs every
//! scheme a token offers and the `openssl` CLI verifies; keys made by
//! `sigmux keys generate --backend hsm` cannot leave the token; keys made by
//! `pkcs11-tool` are usable by label; bad set-ups fail at start with one
//! clear line; sessions closed from under the pool lose no request; two
//! tokens share the load.
//!
//! One throw-away token directory serves the whole file (SoftHSM2 reads
//! `SOFTHSM2_CONF` once per process), made by `scripts/softhsm-token.sh`
//! with one token per test so tests do not share state. Needs `softhsm2`,
//! `opensc` (pkcs11-tool) and `openssl`: `scripts/deps.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use sigmux::backend::Backend;
use sigmux::backend::pkcs11::{DEFAULT_MODULE, PinSource, Pkcs11Backend, Pkcs11Config, Token};
use sigmux::config::Config;
use sigmux::{Engine, EngineConfig, Key, KeyKind, KeyStore, Scheme, SignInput, SignRequest};

const PIN: &str = "1234";
const TOKENS: &[&str] = &[
    "engine", "gen", "tool", "badpin", "close", "share-a", "share-b", "cli", "bench", "twin",
    "undo",
];

struct Hsm {
    dir: PathBuf,
    conf: PathBuf,
    pin_file: PathBuf,
}

/// The token directory, made once; `SOFTHSM2_CONF` is set before any test
/// loads the module in this process.
fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        assert!(
            Path::new(DEFAULT_MODULE).exists(),
            "SoftHSM2 is not installed ({DEFAULT_MODULE} missing): run scripts/deps.sh"
        );
        // Under target/tmp (cargo clean removes it); the previous run's
        // directory is cleared first.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("softhsm");
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/softhsm-token.sh");
        let out = Command::new(&script)
            .arg(&dir)
            .args(TOKENS)
            .env("USER_PIN", PIN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.join("softhsm2.conf");
        // SAFETY: set once, before this process loads the PKCS#11 module;
        // every test that touches the module or the environment goes
        // through hsm() first, and std's own environment access is locked.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        Hsm {
            pin_file: dir.join("user.pin"),
            dir,
            conf,
        }
    })
}

/// The tests here run one at a time. SoftHSM2 is not safe against them
/// running together: `C_CloseAllSessions` on one token makes concurrent
/// calls on *other* tokens of the process lose their sessions ("session
/// handle invalid") or see a token without a user PIN, and a
/// `softhsm2-util` started while another test writes token files can fail
/// to read the slot list ("Could not get info about the token in slot 0").
/// Both were seen in CI and reproduced here; neither concerns sigmux,
/// which never closes all sessions and retries a lost one.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `softhsm2-util` with `args` on the tokens of `conf`; it must succeed.
fn softhsm2_util(conf: &Path, args: &[&str]) {
    let out = Command::new("softhsm2-util")
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softhsm2-util {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

fn token_cfg(label: &str, sessions: usize) -> Pkcs11Config {
    let mut c = Pkcs11Config::softhsm(label, PinSource::File(hsm().pin_file.clone()));
    c.sessions = sessions;
    c
}

/// A config file for the CLI with the CPU backend off and `tokens`.
fn write_config(dir: &Path, tokens: &[&str], extra: &str) -> PathBuf {
    let mut text = format!(
        "data_dir = \"{}\"\n[backends.cpu]\nenabled = false\n",
        dir.join("data").display()
    );
    for t in tokens {
        text.push_str(&format!(
            "[[backends.pkcs11]]\ntoken_label = \"{t}\"\npin_file = \"{}\"\nsessions = 2\n{extra}",
            hsm().pin_file.display()
        ));
    }
    let path = dir.join("sigmux.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sigmux(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SOFTHSM2_CONF", &hsm().conf)
        .env_remove("SIGMUX_LOG")
        .env_remove("SIGMUX_CONFIG")
        .env_remove("SIGMUX_DATA_DIR")
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a clean failure with exactly one line on stderr holding every
/// needle; returns it.
fn fails(out: Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should have failed");
    assert!(out.status.code().is_some(), "killed by a signal: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("sigmux: error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "missing {n:?} in: {stderr}");
    }
    lines[0].to_string()
}

/// Verifies with the `openssl` command-line tool.
fn openssl_cli_verifies(dir: &Path, key: &Key, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
    let tag = format!("{}-{}", key.name(), scheme);
    let (pub_pem, msg_f, sig_f) = (
        dir.join(format!("{tag}.pub")),
        dir.join(format!("{tag}.msg")),
        dir.join(format!("{tag}.sig")),
    );
    std::fs::write(&pub_pem, key.info().public_pem()).unwrap();
    std::fs::write(&msg_f, msg).unwrap();
    std::fs::write(&sig_f, sig).unwrap();
    let mut c = Command::new("openssl");
    match scheme.hash() {
        None => {
            c.args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(&pub_pem)
                .arg("-in")
                .arg(&msg_f)
                .arg("-sigfile")
                .arg(&sig_f);
        }
        Some(h) => {
            c.arg("dgst")
                .arg(format!("-sha{}", h.len() * 8))
                .arg("-verify")
                .arg(&pub_pem)
                .arg("-signature")
                .arg(&sig_f);
            if scheme.is_pss() {
                c.args([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ]);
            }
            c.arg(&msg_f);
        }
    }
    c.output().unwrap().status.success()
}

/// Verifies with the openssl crate (for many signatures).
fn openssl_verifies(key: &Key, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
    use openssl::hash::MessageDigest;
    let pk = openssl::pkey::PKey::public_key_from_der(key.spki_der()).unwrap();
    match scheme.hash() {
        None => openssl::sign::Verifier::new_without_digest(&pk)
            .unwrap()
            .verify_oneshot(sig, msg)
            .unwrap_or(false),
        Some(h) => {
            let md = match h.len() {
                32 => MessageDigest::sha256(),
                48 => MessageDigest::sha384(),
                _ => MessageDigest::sha512(),
            };
            let mut v = openssl::sign::Verifier::new(md, &pk).unwrap();
            if scheme.is_pss() {
                v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
                v.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
                    .unwrap();
            }
            v.update(msg).unwrap();
            v.verify(sig).unwrap_or(false)
        }
    }
}

fn engine(backends: Vec<Arc<dyn Backend>>) -> Arc<Engine> {
    Arc::new(Engine::new(EngineConfig::default(), backends).unwrap())
}

/// Makes a key inside `token` and returns the engine's view of it.
fn hsm_key(token: &Token, name: &str, kind: KeyKind) -> Arc<Key> {
    let k = token.generate(name, kind).unwrap();
    Arc::new(Key::from_hsm(name, k.kind, &k.spki_der, k.hsm).unwrap())
}

/// A session of our own on the test process's copy of the module.
fn raw_session(label: &str) -> cryptoki::session::Session {
    hsm();
    let ctx = Pkcs11::new(DEFAULT_MODULE).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == label)
        .unwrap();
    let s = ctx.open_rw_session_no_drop(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::from(PIN.to_string()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("{e}"),
    }
    s
}

#[test]
fn every_scheme_the_token_offers_signs_through_the_engine() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let cfg = token_cfg("engine", 4);
    let token = Token::open(&cfg).unwrap();
    let backend = Arc::new(Pkcs11Backend::start(&cfg).unwrap());
    let offered = backend.capabilities().schemes.clone();
    // SoftHSM2 2.6 offers all nine; a token that offers fewer is tested on
    // what it offers.
    assert!(offered.contains(&Scheme::RsaPkcs1Sha256), "{offered:?}");
    assert!(
        offered.contains(&Scheme::EcdsaSecp256r1Sha256),
        "{offered:?}"
    );
    let eng = engine(vec![backend.clone()]);
    let mut signed = 0;
    for kind in [
        KeyKind::Rsa2048,
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
    ] {
        if !kind.schemes().any(|s| offered.contains(&s)) {
            continue;
        }
        let key = hsm_key(&token, &format!("engine-{kind}"), kind);
        assert!(backend.holds(&key));
        for scheme in kind.schemes().filter(|s| offered.contains(s)) {
            let msg = format!("sigmux pkcs11 {scheme}").into_bytes();
            let sig = eng
                .sign_blocking(SignRequest::new(
                    key.clone(),
                    scheme,
                    SignInput::Message(msg.clone()),
                ))
                .unwrap();
            assert_eq!(sig.backend, "pkcs11:engine");
            assert!(
                openssl_cli_verifies(dir.path(), &key, scheme, &msg, &sig.bytes),
                "{scheme} does not verify"
            );
            // Prehashed input too, where the scheme takes one.
            if let Some(h) = scheme.hash() {
                let sig = eng
                    .sign_blocking(SignRequest::new(
                        key.clone(),
                        scheme,
                        SignInput::Digest(h.digest(&msg)),
                    ))
                    .unwrap();
                assert!(openssl_verifies(&key, scheme, &msg, &sig.bytes), "{scheme}");
            }
            signed += 1;
        }
    }
    assert_eq!(signed, offered.len());
    // A big group is spread over the sessions and comes back in order.
    let key = hsm_key(&token, "engine-group", KeyKind::P256);
    let msgs: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let sigs = eng
        .submit_group(
            key.clone(),
            Scheme::EcdsaSecp256r1Sha256,
            msgs.iter().cloned().map(SignInput::Message).collect(),
            None,
        )
        .unwrap()
        .wait();
    for (m, s) in msgs.iter().zip(sigs) {
        assert!(openssl_verifies(
            &key,
            Scheme::EcdsaSecp256r1Sha256,
            m,
            &s.unwrap().bytes
        ));
    }
    // Soft keys are never scheduled onto the token.
    let soft = Key::ephemeral("soft", KeyKind::P256).unwrap();
    assert!(!backend.holds(&soft));
    let e = eng
        .sign_blocking(SignRequest::new(
            soft,
            Scheme::EcdsaSecp256r1Sha256,
            SignInput::Message(b"x".to_vec()),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("no backend"), "{e}");
    let report = eng.report();
    assert!(report["backends"][0]["details"]["calibration"]["measured"] == true);
    // An HSM's RSA results are verified by the engine; its ECDSA results
    // are trusted like the CPU libraries'.
    let checked = &report["backends"][0]["checked_by"];
    assert_eq!(checked["rsa_pkcs1_sha256"], "engine", "{report:#}");
    assert_eq!(checked["ecdsa_secp256r1_sha256"], "none", "{report:#}");
}

#[test]
fn keys_generated_in_the_token_cannot_be_exported() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["gen"], "");
    for (name, kind) in [("gen-rsa", "rsa2048"), ("gen-ec", "p256")] {
        let out = ok(
            sigmux(
                &config,
                &[
                    "keys",
                    "generate",
                    "--name",
                    name,
                    "--kind",
                    kind,
                    "--backend",
                    "hsm",
                ],
            ),
            "keys generate",
        );
        assert!(out.starts_with(&format!("{name} {kind} ")), "{out}");
        // The key file records where the key is, and no private material.
        let file =
            std::fs::read_to_string(dir.path().join(format!("data/keys/{name}.key"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&file).unwrap();
        assert_eq!(v["info"]["placement"], "hsm");
        assert_eq!(v["info"]["hsm"]["token"], "gen");
        assert_eq!(v["info"]["hsm"]["label"], name);
        assert!(v["sealed"].is_null());
        // CKA_ID is the first 16 bytes of the KeyId.
        let key_id = v["info"]["key_id"].as_str().unwrap();
        assert_eq!(v["info"]["hsm"]["id"].as_str().unwrap(), &key_id[..32]);
    }
    let list = ok(sigmux(&config, &["keys", "list", "--json"]), "keys list");
    assert!(list.contains("\"placement\": \"hsm\""), "{list}");

    let s = raw_session("gen");
    for (name, secret) in [
        ("gen-rsa", AttributeType::PrivateExponent),
        ("gen-ec", AttributeType::Value),
    ] {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(name.as_bytes().to_vec()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{name}");
        let attrs = s
            .get_attributes(
                found[0],
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Token,
                    AttributeType::Sign,
                ],
            )
            .unwrap();
        for a in &attrs {
            match a {
                Attribute::Sensitive(v)
                | Attribute::AlwaysSensitive(v)
                | Attribute::NeverExtractable(v)
                | Attribute::Token(v)
                | Attribute::Sign(v) => assert!(*v, "{name}: {a:?}"),
                Attribute::Extractable(v) => assert!(!*v, "{name}: extractable"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(attrs.len(), 6, "{name}: {attrs:?}");
        // C_GetAttributeValue on the secret answers CKR_ATTRIBUTE_SENSITIVE.
        let info = s.get_attribute_info(found[0], &[secret]).unwrap();
        assert!(
            matches!(info[0], AttributeInfo::Sensitive),
            "{name}: {info:?}"
        );
        // And nothing comes back when asked for the value itself.
        assert!(s.get_attributes(found[0], &[secret]).unwrap().is_empty());
    }
    // The key signs through the CLI and openssl verifies it.
    std::fs::write(dir.path().join("msg"), b"hello hsm").unwrap();
    let pem = ok(
        sigmux(&config, &["keys", "public", "--name", "gen-ec"]),
        "public",
    );
    std::fs::write(dir.path().join("pub.pem"), pem).unwrap();
    let sig = dir.path().join("sig");
    ok(
        sigmux(
            &config,
            &[
                "sign",
                "--key",
                "gen-ec",
                "--scheme",
                "ecdsa_secp256r1_sha256",
                "--in",
                dir.path().join("msg").to_str().unwrap(),
                "--out",
                sig.to_str().unwrap(),
            ],
        ),
        "sign",
    );
    let v = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.path().join("pub.pem"))
        .arg("-signature")
        .arg(&sig)
        .arg(dir.path().join("msg"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // The name is taken now, in the store and in the token.
    fails(
        sigmux(
            &config,
            &[
                "keys",
                "generate",
                "--name",
                "gen-ec",
                "--kind",
                "p256",
                "--backend",
                "hsm",
            ],
        ),
        &["gen-ec", "already exists"],
    );
}

#[test]
fn a_key_made_by_pkcs11_tool_is_usable_by_label() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["tool"], "");
    for (label, id, key_type) in [
        ("tool-ec", "0102", "EC:prime256v1"),
        ("tool-rsa", "0304", "rsa:2048"),
    ] {
        let out = Command::new("pkcs11-tool")
            .args([
                "--module",
                DEFAULT_MODULE,
                "--token-label",
                "tool",
                "--login",
                "--pin",
                PIN,
            ])
            .args([
                "--keypairgen",
                "--key-type",
                key_type,
                "--label",
                label,
                "--id",
                id,
            ])
            .env("SOFTHSM2_CONF", &hsm().conf)
            .output()
            .expect("pkcs11-tool (opensc) is needed: run scripts/deps.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = ok(
            sigmux(
                &config,
                &["keys", "import", "--backend", "hsm", "--label", label],
            ),
            "keys import --backend hsm",
        );
        assert!(line.starts_with(label), "{line}");
    }
    std::fs::write(dir.path().join("msg"), b"made elsewhere").unwrap();
    for (name, scheme, opts) in [
        ("tool-ec", "ecdsa_secp256r1_sha256", vec![]),
        (
            "tool-rsa",
            "rsa_pss_rsae_sha256",
            vec![
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:digest",
            ],
        ),
    ] {
        let pem = ok(
            sigmux(&config, &["keys", "public", "--name", name]),
            "public",
        );
        let pub_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&pub_path, pem).unwrap();
        let sig = dir.path().join(format!("{name}.sig"));
        ok(
            sigmux(
                &config,
                &[
                    "sign",
                    "--key",
                    name,
                    "--scheme",
                    scheme,
                    "--in",
                    dir.path().join("msg").to_str().unwrap(),
                    "--out",
                    sig.to_str().unwrap(),
                ],
            ),
            "sign",
        );
        let v = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pub_path)
            .arg("-signature")
            .arg(&sig)
            .args(&opts)
            .arg(dir.path().join("msg"))
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    fails(
        sigmux(
            &config,
            &[
                "keys",
                "import",
                "--backend",
                "hsm",
                "--label",
                "no-such-key",
            ],
        ),
        &["no private key with label 'no-such-key'"],
    );
}

#[test]
fn bad_setups_fail_at_start_with_one_clear_line() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.pin");
    std::fs::write(&wrong, "9999\n").unwrap();
    let case = |body: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n[backends.cpu]\nenabled = false\n[backends.pkcs11]\n{body}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        sigmux(&path, &["backends"])
    };
    let pin = hsm().pin_file.display().to_string();
    let line = fails(
        case(&format!(
            "token_label = \"badpin\"\npin_file = \"{}\"\n",
            wrong.display()
        )),
        &["pkcs11:badpin", "login failed", "CKR_PIN_INCORRECT"],
    );
    assert!(!line.contains("9999"), "{line}");
    fails(
        case(&format!(
            "module = \"/nonexistent/libpkcs11.so\"\ntoken_label = \"badpin\"\npin_file = \"{pin}\"\n"
        )),
        &["/nonexistent/libpkcs11.so", "does not exist"],
    );
    fails(
        case(&format!(
            "module = \"{}\"\ntoken_label = \"badpin\"\npin_file = \"{pin}\"\n",
            dir.path().join("wrong.pin").display()
        )),
        &["cannot load PKCS#11 module"],
    );
    fails(
        case(&format!(
            "token_label = \"no-such-token\"\npin_file = \"{pin}\"\n"
        )),
        &["no token labelled 'no-such-token'", "'badpin'"],
    );
    fails(
        case("token_label = \"badpin\"\npin_env = \"SIGMUX_TEST_UNSET_PIN\"\n"),
        &["SIGMUX_TEST_UNSET_PIN is not set"],
    );
    let line = fails(
        case("token_label = \"badpin\"\npin = \"1234\"\n"),
        &["backends.pkcs11.pin", "pin_file", "pin_env"],
    );
    assert!(!line.contains("1234"), "{line}");
    // The right PIN from the environment works.
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n[backends.cpu]\nenabled = false\n[backends.pkcs11]\ntoken_label = \"badpin\"\npin_env = \"SIGMUX_TEST_PIN\"\ncalibrate = false\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .arg("--config")
        .arg(&path)
        .args(["backends", "--json"])
        .env("SOFTHSM2_CONF", &hsm().conf)
        .env("SIGMUX_TEST_PIN", PIN)
        .output()
        .unwrap();
    let json = ok(out, "backends with pin_env");
    assert!(json.contains("\"pkcs11:badpin\""), "{json}");
    assert!(!json.contains(&format!("\"{PIN}\"")), "{json}");
}

#[test]
fn a_label_two_tokens_share_is_refused_and_a_slot_picks_one() {
    let _alone = one_at_a_time();
    let h = hsm();
    // The script makes one token per label; a second "twin" by hand.
    softhsm2_util(
        &h.conf,
        &[
            "--init-token",
            "--free",
            "--label",
            "twin",
            "--so-pin",
            "12345678",
            "--pin",
            PIN,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["twin"], "calibrate = false\n");
    let line = fails(
        sigmux(&config, &["backends"]),
        &["pkcs11:twin", "2 tokens", "labelled 'twin'", "slot = "],
    );
    assert!(!line.contains(PIN), "{line}");
    let slots: Vec<u64> = line
        .split("slot ")
        .skip(1)
        .filter_map(|s| s.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(slots.len(), 2, "both slots named: {line}");
    // Nor is a key made in one of them.
    let out = sigmux(
        &config,
        &[
            "keys",
            "generate",
            "--name",
            "t",
            "--kind",
            "p256",
            "--backend",
            "hsm",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("labelled 'twin'"),
        "{err}"
    );
    assert!(!dir.path().join("data/keys/t.key").exists());
    // Chosen by slot, each twin starts.
    for slot in slots {
        let path = dir.path().join("slot.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n[backends.cpu]\nenabled = false\n[backends.pkcs11]\nslot = {slot}\npin_file = \"{}\"\ncalibrate = false\n",
                dir.path().join("data").display(),
                h.pin_file.display()
            ),
        )
        .unwrap();
        let json = ok(sigmux(&path, &["backends", "--json"]), "backends by slot");
        assert!(json.contains(&format!("\"slot\": {slot}")), "{json}");
    }
}

#[test]
fn a_generated_key_that_cannot_be_recorded_leaves_nothing_in_the_token() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["undo"], "calibrate = false\n");
    // A first key sets up the data dir.
    ok(
        sigmux(
            &config,
            &[
                "keys",
                "generate",
                "--name",
                "first",
                "--kind",
                "p256",
                "--backend",
                "hsm",
            ],
        ),
        "first key",
    );
    // The next one's key file cannot be written: a directory holds the name.
    let blocker = dir.path().join("data/keys/blocked.key");
    std::fs::create_dir_all(&blocker).unwrap();
    let generate = || {
        sigmux(
            &config,
            &[
                "keys",
                "generate",
                "--name",
                "blocked",
                "--kind",
                "p256",
                "--backend",
                "hsm",
            ],
        )
    };
    let out = generate();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("blocked.key") && err.contains("destroyed again"),
        "{err}"
    );
    let s = raw_session("undo");
    let left = s
        .find_objects(&[Attribute::Label(b"blocked".to_vec())])
        .unwrap();
    assert!(
        left.is_empty(),
        "{} object(s) left in the token",
        left.len()
    );
    drop(s);
    // Once the name is free, the same command works.
    std::fs::remove_dir(&blocker).unwrap();
    ok(generate(), "generate after the blocker went");
    let s = raw_session("undo");
    let made = s
        .find_objects(&[
            Attribute::Label(b"blocked".to_vec()),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .unwrap();
    assert_eq!(made.len(), 1);
}

/// `C_CloseAllSessions` through our own `dlopen` handle on the module: the
/// same library instance the backend uses, as another part of the process
/// (or a token reset) would do it. Called between the backend's module
/// calls (`with_token_quiet`): closing a session that another thread is
/// inside is undefined in PKCS#11 and crashes SoftHSM2.
fn close_all_sessions(slot: u64) {
    type CloseAll = unsafe extern "C" fn(libc::c_ulong) -> libc::c_ulong;
    let path = std::ffi::CString::new(DEFAULT_MODULE).unwrap();
    // SAFETY: plain dlopen/dlsym of a PKCS#11 module's exported function,
    // called with its documented signature.
    unsafe {
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
        assert!(!lib.is_null());
        let sym = libc::dlsym(lib, c"C_CloseAllSessions".as_ptr());
        assert!(!sym.is_null());
        let f: CloseAll = std::mem::transmute(sym);
        let rv = f(slot as libc::c_ulong);
        assert_eq!(rv, 0, "C_CloseAllSessions returned {rv:#x}");
        libc::dlclose(lib);
    }
}

#[test]
fn closing_all_sessions_under_load_loses_no_request() {
    let _alone = one_at_a_time();
    let cfg = token_cfg("close", 4);
    let token = Token::open(&cfg).unwrap();
    let key = hsm_key(&token, "close-ec", KeyKind::P256);
    let rsa = hsm_key(&token, "close-rsa", KeyKind::Rsa2048);
    let backend = Arc::new(Pkcs11Backend::start(&cfg).unwrap());
    let eng = engine(vec![backend.clone()]);
    let stop = Arc::new(AtomicBool::new(false));
    let slot = backend.slot_id();
    let closer = {
        let stop = stop.clone();
        let quiet = backend.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(30));
                quiet.with_token_quiet(|| close_all_sessions(slot));
                n += 1;
            }
            n
        })
    };
    let workers: Vec<_> = (0..4u32)
        .map(|w| {
            let (eng, key, rsa) = (eng.clone(), key.clone(), rsa.clone());
            std::thread::spawn(move || {
                let mut done = 0;
                for round in 0..25u32 {
                    let (k, scheme) = if round % 5 == 0 {
                        (&rsa, Scheme::RsaPkcs1Sha256)
                    } else {
                        (&key, Scheme::EcdsaSecp256r1Sha256)
                    };
                    let msgs: Vec<Vec<u8>> = (0..16u32)
                        .map(|i| [w, round, i].map(|x| x as u8).to_vec())
                        .collect();
                    let results = eng
                        .submit_group(
                            k.clone(),
                            scheme,
                            msgs.iter().cloned().map(SignInput::Message).collect(),
                            None,
                        )
                        .unwrap()
                        .wait();
                    for (m, r) in msgs.iter().zip(results) {
                        let sig = r.unwrap_or_else(|e| panic!("request lost: {e}"));
                        assert!(openssl_verifies(k, scheme, m, &sig.bytes));
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::Release);
    let closes = closer.join().unwrap();
    assert_eq!(total, 4 * 25 * 16);
    assert!(closes > 0);
    assert!(
        backend.sessions_reopened() > 0 && backend.retried_ops() > 0,
        "closed {closes} times, reopened {} sessions, retried {} operations",
        backend.sessions_reopened(),
        backend.retried_ops()
    );
    eprintln!(
        "closed all sessions {closes} times; {} sessions reopened, {} operations retried",
        backend.sessions_reopened(),
        backend.retried_ops()
    );
    // The pool is healthy afterwards.
    let sig = eng
        .sign_blocking(SignRequest::new(
            key.clone(),
            Scheme::EcdsaSecp256r1Sha256,
            SignInput::Message(b"after".to_vec()),
        ))
        .unwrap();
    assert!(openssl_verifies(
        &key,
        Scheme::EcdsaSecp256r1Sha256,
        b"after",
        &sig.bytes
    ));
    let report = eng.report();
    assert_eq!(
        report["backends"][0]["health"]["state"], "healthy",
        "{report}"
    );
}

#[test]
fn two_tokens_holding_the_same_key_share_the_load() {
    let _alone = one_at_a_time();
    let h = hsm();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("shared.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(out.status.success());
    for t in ["share-a", "share-b"] {
        softhsm2_util(
            &h.conf,
            &[
                "--import",
                pem.to_str().unwrap(),
                "--token",
                t,
                "--label",
                "shared",
                "--id",
                "5a5a",
                "--pin",
                PIN,
            ],
        );
    }
    // Uncalibrated, both tokens start from the same cost guess: calibration
    // on a loaded machine can make one look so much slower that the other
    // takes every batch, which is right for the scheduler but not what
    // this test is about.
    let config = write_config(dir.path(), &["share-a", "share-b"], "calibrate = false\n");
    let cfg = Config::load(Some(&config)).unwrap();
    let store = KeyStore::in_memory();
    let key =
        sigmux::app::hsm_import(&cfg, &store, Some("shared"), Some("shared"), None, None).unwrap();
    assert_eq!(key.info().hsm.as_ref().unwrap().token, None);
    let backends = sigmux::app::start_backends(&cfg, "pkcs11").unwrap();
    assert_eq!(backends.pkcs11.len(), 2);
    assert!(backends.pkcs11.iter().all(|b| b.holds(&key)));
    let eng = engine(backends.all);
    let tickets: Vec<_> = (0..8u32)
        .map(|i| {
            let msgs: Vec<SignInput> = (0..64u32)
                .map(|j| SignInput::Message((i * 64 + j).to_be_bytes().to_vec()))
                .collect();
            eng.submit_group(key.clone(), Scheme::EcdsaSecp256r1Sha256, msgs, None)
                .unwrap()
        })
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        for (j, r) in t.wait().into_iter().enumerate() {
            let m = ((i * 64 + j) as u32).to_be_bytes();
            assert!(openssl_verifies(
                &key,
                Scheme::EcdsaSecp256r1Sha256,
                &m,
                &r.unwrap().bytes
            ));
        }
    }
    let totals = eng.backend_totals();
    assert_eq!(totals.len(), 2);
    for (name, ops, _) in &totals {
        assert!(*ops > 0, "{name} did no work: {totals:?}");
    }
    // A key bound to one token is only scheduled there.
    let k = Token::open(&token_cfg("share-a", 1)).unwrap();
    let only_a = hsm_key(&k, "only-a", KeyKind::P256);
    let b = &backends.pkcs11;
    assert!(b[0].holds(&only_a) && !b[1].holds(&only_a));
    let _ = &h.dir;
}

#[test]
fn bench_compares_the_engine_with_a_plain_cryptoki_loop_and_cleans_up() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let label = "bench";
    let cfg = write_config(dir.path(), &[label], "");
    let json = dir.path().join("bench.json");
    ok(
        sigmux(
            &cfg,
            &[
                "bench",
                "--backend",
                "pkcs11",
                "--scheme",
                "ecdsa_secp256r1_sha256",
                "--duration",
                "0.4",
                "--concurrency",
                "16",
                "--compare-raw",
                "--json",
                json.to_str().unwrap(),
            ],
        ),
        "bench",
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["raw_ops_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(report["errors"], 0);
    // The throwaway key is gone from the token.
    let s = raw_session(label);
    let left = s
        .find_objects(&[])
        .unwrap()
        .into_iter()
        .filter(|h| {
            s.get_attributes(*h, &[cryptoki::object::AttributeType::Label])
                .ok()
                .and_then(|a| a.into_iter().next())
                .is_some_and(|a| {
                    matches!(a, cryptoki::object::Attribute::Label(l) if l.starts_with(b"sigmux-bench-"))
                })
        })
        .count();
    assert_eq!(left, 0);
}
