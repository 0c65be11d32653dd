//! Engine behaviour against real signing backends: batching, overload,
//! deadlines, quarantine of a backend that returns wrong signatures, and
//! failover. Test backends wrap the real CPU backend (mocked: only the
//! gate that holds a batch, and the corruption or failure they inject).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sigmux::backend::cpu::{CpuBackend, CpuConfig, CpuEngine, CpuKey, EngineChoice};
use sigmux::backend::{Backend, Capabilities, CostSeed};
use sigmux::{Engine, EngineConfig, Error, Key, KeyKind, Scheme, SignInput, SignRequest};

/// A backend that signs with the real CPU backend but can hold batches at a
/// gate, corrupt results, or fail, and records the batch sizes it saw.
struct TestBackend {
    name: String,
    cpu: Arc<CpuBackend>,
    caps: Capabilities,
    gate: Mutex<bool>,
    opened: Condvar,
    entered: AtomicUsize,
    batches: Mutex<Vec<usize>>,
    corrupt: AtomicBool,
    fail: AtomicBool,
    check_all: bool,
}

impl TestBackend {
    fn new(name: &str, cpu: &Arc<CpuBackend>, parallelism: usize) -> Arc<TestBackend> {
        let mut caps = cpu.capabilities().clone();
        caps.parallelism = parallelism;
        Arc::new(TestBackend {
            name: name.into(),
            cpu: cpu.clone(),
            caps,
            gate: Mutex::new(true),
            opened: Condvar::new(),
            entered: AtomicUsize::new(0),
            batches: Mutex::new(Vec::new()),
            corrupt: AtomicBool::new(false),
            fail: AtomicBool::new(false),
            check_all: false,
        })
    }

    fn close_gate(&self) {
        *self.gate.lock() = false;
    }

    fn open_gate(&self) {
        *self.gate.lock() = true;
        self.opened.notify_all();
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().clone()
    }

    fn wait_entered(&self, n: usize) {
        let start = Instant::now();
        while self.entered.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "backend never got {n} batches"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Backend for TestBackend {
    fn name(&self) -> &str {
        &self.name
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn sign_batch(
        &self,
        key: &Arc<Key>,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> sigmux::Result<Vec<Vec<u8>>> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.batches.lock().push(inputs.len());
        {
            let mut open = self.gate.lock();
            while !*open {
                self.opened.wait(&mut open);
            }
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::backend(&self.name, "injected failure"));
        }
        let mut sigs = self.cpu.sign_batch(key, scheme, inputs)?;
        if self.corrupt.load(Ordering::SeqCst) {
            for s in &mut sigs {
                let last = s.len() - 1;
                s[last] ^= 1;
            }
        }
        Ok(sigs)
    }
    fn needs_check(&self, _scheme: Scheme) -> bool {
        self.check_all
    }
    fn cost_seed(&self, kind: KeyKind, scheme: Scheme) -> Option<CostSeed> {
        self.cpu.cost_seed(kind, scheme)
    }
}

fn cpu() -> Arc<CpuBackend> {
    static CPU: std::sync::OnceLock<Arc<CpuBackend>> = std::sync::OnceLock::new();
    CPU.get_or_init(|| {
        Arc::new(
            CpuBackend::new(&CpuConfig {
                threads: 2,
                engine: EngineChoice::Fixed(CpuEngine::AwsLc),
                max_batch: 256,
            })
            .unwrap(),
        )
    })
    .clone()
}

fn key(kind: KeyKind) -> Arc<Key> {
    Key::ephemeral("test", kind).unwrap()
}

fn cfg(max_batch: usize, max_wait_ms: u64, capacity: usize) -> EngineConfig {
    EngineConfig {
        max_batch,
        max_wait: Duration::from_millis(max_wait_ms),
        queue_capacity: capacity,
        deadline: Duration::from_secs(30),
        ..EngineConfig::default()
    }
}

fn req(key: &Arc<Key>, scheme: Scheme, i: u32) -> SignRequest {
    SignRequest::new(
        key.clone(),
        scheme,
        SignInput::Message(i.to_be_bytes().to_vec()),
    )
}

/// Verifies with the openssl crate: an implementation independent of the
/// aws-lc-rs code that signed.
fn openssl_verifies(key: &Key, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    let pk = PKey::public_key_from_der(key.spki_der()).unwrap();
    let mut v = match scheme.hash() {
        None => openssl::sign::Verifier::new_without_digest(&pk).unwrap(),
        Some(h) => {
            let md = match h.len() {
                32 => MessageDigest::sha256(),
                48 => MessageDigest::sha384(),
                _ => MessageDigest::sha512(),
            };
            let mut v = openssl::sign::Verifier::new(md, &pk).unwrap();
            if scheme.is_pss() {
                v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
                v.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::custom(h.len() as i32))
                    .unwrap();
                v.set_rsa_mgf1_md(md).unwrap();
            }
            v
        }
    };
    if scheme.hash().is_none() {
        return v.verify_oneshot(sig, msg).unwrap_or(false);
    }
    v.update(msg).unwrap();
    v.verify(sig).unwrap_or(false)
}

#[test]
fn both_cpu_libraries_sign_every_scheme_and_cross_verify() {
    let kinds = [
        KeyKind::Rsa2048,
        KeyKind::Rsa3072,
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
    ];
    for kind in kinds {
        let k = key(kind);
        let ck = CpuKey::load(&k).unwrap();
        for scheme in kind.schemes() {
            let msg = format!("{kind} {scheme}").into_bytes();
            let input = scheme.prepare(SignInput::Message(msg.clone())).unwrap();
            for engine in CpuEngine::ALL {
                let sig = ck.sign(engine, scheme, &input).unwrap();
                // The other library verifies it, and so does the engine's check.
                assert!(
                    openssl_verifies(&k, scheme, &msg, &sig),
                    "{engine} {scheme} (openssl)"
                );
                assert!(
                    sigmux::engine::check::verify(&k, scheme, &input, &sig),
                    "{engine} {scheme} (check)"
                );
                let alg = sigmux::engine::check::verification_algorithm(scheme);
                let bits = sigmux::der::spki_parts(k.spki_der())
                    .unwrap()
                    .public_key
                    .to_vec();
                assert!(
                    aws_lc_rs::signature::UnparsedPublicKey::new(alg, &bits)
                        .verify(&msg, &sig)
                        .is_ok(),
                    "{engine} {scheme} (aws-lc)"
                );
                let mut bad = sig.clone();
                let mid = bad.len() / 2;
                bad[mid] ^= 0x10;
                assert!(!sigmux::engine::check::verify(&k, scheme, &input, &bad));
            }
        }
    }
}

#[test]
fn sync_and_async_callers_get_verified_signatures() {
    let engine = Engine::new(cfg(16, 1, 1024), vec![cpu()]).unwrap();
    let k = key(KeyKind::P256);
    let s = Scheme::EcdsaSecp256r1Sha256;
    let sig = engine.sign_blocking(req(&k, s, 1)).unwrap();
    assert!(openssl_verifies(&k, s, &1u32.to_be_bytes(), &sig.bytes));
    assert_eq!(sig.backend, "cpu");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Arc::new(engine);
    let sigs = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let (engine, k) = (engine.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                (i, engine.sign(req(&k, s, i)).await)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for (i, r) in sigs {
        assert!(openssl_verifies(&k, s, &i.to_be_bytes(), &r.unwrap().bytes));
    }
}

/// Two engines over one CPU backend at the same time, and one engine that
/// lists the backend twice: the backend's pool can run only one slot's
/// worker loops, so the others must run on threads of their own rather than
/// wait for loops that end only when their engine does.
#[test]
fn engines_that_share_a_cpu_backend_all_make_progress() {
    let shared: Arc<CpuBackend> = Arc::new(
        CpuBackend::new(&CpuConfig {
            threads: 2,
            engine: EngineChoice::Fixed(CpuEngine::AwsLc),
            max_batch: 64,
        })
        .unwrap(),
    );
    let first = Arc::new(Engine::new(cfg(16, 1, 1024), vec![shared.clone()]).unwrap());
    let second = Arc::new(Engine::new(cfg(16, 1, 1024), vec![shared.clone()]).unwrap());
    let twice =
        Arc::new(Engine::new(cfg(16, 1, 1024), vec![shared.clone(), shared.clone()]).unwrap());
    let k = key(KeyKind::Ed25519);
    let s = Scheme::Ed25519;
    // Callers on threads of their own, so a hang fails the test by the
    // timeout below instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    for (e, engine) in [&second, &twice, &first].into_iter().enumerate() {
        let (tx, k, engine) = (tx.clone(), k.clone(), engine.clone());
        std::thread::spawn(move || {
            let base = 1000 * e as u32;
            let tickets: Vec<_> = (0..100u32)
                .map(|i| engine.submit(req(&k, s, base + i)).unwrap())
                .collect();
            for (i, t) in (base..).zip(tickets) {
                let _ = tx.send((i, t.wait()));
            }
        });
    }
    drop(tx);
    for _ in 0..300 {
        let (i, r) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("an engine over a shared CPU backend stopped answering");
        let sig = r.unwrap();
        assert!(openssl_verifies(&k, s, &i.to_be_bytes(), &sig.bytes));
    }
    // And an engine started after them gets answers too.
    drop((first, second, twice));
    let again = Engine::new(cfg(16, 1, 1024), vec![shared]).unwrap();
    let sig = again.sign_blocking(req(&k, s, 7)).unwrap();
    assert!(openssl_verifies(&k, s, &7u32.to_be_bytes(), &sig.bytes));
}

#[test]
fn batches_flush_on_size() {
    let tb = TestBackend::new("gated", &cpu(), 1);
    let engine = Engine::new(cfg(8, 10_000, 1024), vec![tb.clone()]).unwrap();
    let k = key(KeyKind::P256);
    let s = Scheme::EcdsaSecp256r1Sha256;
    // Occupy both engine workers so nothing is flushed for being idle.
    tb.close_gate();
    let held: Vec<_> = (0..2)
        .map(|i| engine.submit(req(&k, s, i)).unwrap())
        .collect();
    tb.wait_entered(2);
    let start = Instant::now();
    let full: Vec<_> = (0..8)
        .map(|i| engine.submit(req(&k, s, 100 + i)).unwrap())
        .collect();
    let extra: Vec<_> = (0..3)
        .map(|i| engine.submit(req(&k, s, 200 + i)).unwrap())
        .collect();
    tb.open_gate();
    for t in held.into_iter().chain(full) {
        t.wait().unwrap();
    }
    // The full queue went at once (max_wait is 10 s), as one batch of 8.
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(&tb.batches()[..3], &[1, 1, 8]);
    // The 3 extra requests left over went when a worker became idle.
    for t in extra {
        t.wait().unwrap();
    }
    assert_eq!(tb.batches()[3], 3);
}

#[test]
fn batches_flush_on_time() {
    let tb = TestBackend::new("gated", &cpu(), 1);
    let engine = Engine::new(cfg(1000, 150, 1024), vec![tb.clone()]).unwrap();
    let k = key(KeyKind::P256);
    let s = Scheme::EcdsaSecp256r1Sha256;
    tb.close_gate();
    let held: Vec<_> = (0..2)
        .map(|i| engine.submit(req(&k, s, i)).unwrap())
        .collect();
    tb.wait_entered(2);
    let in_flight = |e: &Engine| e.report()["backends"][0]["in_flight_ops"].as_u64().unwrap();
    let queued: Vec<_> = (0..3)
        .map(|i| engine.submit(req(&k, s, 10 + i)).unwrap())
        .collect();
    // Not yet: the queue is neither full nor old, and no worker is free.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(in_flight(&engine), 2);
    // After max_wait the queue has been flushed to the backend.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(in_flight(&engine), 5);
    tb.open_gate();
    for t in held.into_iter().chain(queued) {
        t.wait().unwrap();
    }
    assert_eq!(tb.batches(), vec![1, 1, 3]);
}

#[test]
fn a_lone_request_is_not_held_back() {
    let engine = Engine::new(cfg(64, 5_000, 1024), vec![cpu()]).unwrap();
    let k = key(KeyKind::Ed25519);
    let start = Instant::now();
    engine.sign_blocking(req(&k, Scheme::Ed25519, 1)).unwrap();
    // max_wait is 5 s, but an idle backend takes the request at once.
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn full_queues_answer_overloaded_at_once() {
    let tb = TestBackend::new("gated", &cpu(), 1);
    let engine = Engine::new(cfg(64, 1, 4), vec![tb.clone()]).unwrap();
    let k = key(KeyKind::P256);
    let s = Scheme::EcdsaSecp256r1Sha256;
    tb.close_gate();
    let accepted: Vec<_> = (0..4)
        .map(|i| engine.submit(req(&k, s, i)).unwrap())
        .collect();
    let start = Instant::now();
    for i in 0..10 {
        assert!(matches!(
            engine.submit(req(&k, s, 100 + i)),
            Err(Error::Overloaded)
        ));
    }
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(
        engine
            .metrics_text()
            .contains("sigmux_engine_overloaded_total 10")
    );
    tb.open_gate();
    for (i, t) in accepted.into_iter().enumerate() {
        let sig = t.wait().unwrap();
        assert!(openssl_verifies(
            &k,
            s,
            &(i as u32).to_be_bytes(),
            &sig.bytes
        ));
    }
    // Capacity is back once the answers are out.
    engine.sign_blocking(req(&k, s, 99)).unwrap();
}

#[test]
fn requests_past_their_deadline_get_deadline_exceeded() {
    let tb = TestBackend::new("gated", &cpu(), 1);
    let engine = Engine::new(cfg(64, 1, 64), vec![tb.clone()]).unwrap();
    let k = key(KeyKind::P256);
    let s = Scheme::EcdsaSecp256r1Sha256;
    tb.close_gate();
    let held: Vec<_> = (0..2)
        .map(|i| engine.submit(req(&k, s, i)).unwrap())
        .collect();
    tb.wait_entered(2);
    let mut r = req(&k, s, 7);
    r.deadline = Some(Duration::from_millis(20));
    let late = engine.submit(r).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    tb.open_gate();
    assert!(matches!(late.wait(), Err(Error::DeadlineExceeded)));
    for t in held {
        t.wait().unwrap();
    }
}

#[test]
fn a_backend_that_corrupts_results_is_quarantined_and_nothing_wrong_leaves() {
    for (kind, scheme, check_all) in [
        (KeyKind::Rsa2048, Scheme::RsaPssRsaeSha256, false),
        (KeyKind::Rsa2048, Scheme::RsaPkcs1Sha512, false),
        (KeyKind::P256, Scheme::EcdsaSecp256r1Sha256, true),
    ] {
        let mut bad = TestBackend::new("corrupting", &cpu(), 2);
        Arc::get_mut(&mut bad).unwrap().check_all = check_all;
        bad.corrupt.store(true, Ordering::SeqCst);
        let good = TestBackend::new("good", &cpu(), 2);
        let engine = Engine::new(cfg(16, 1, 4096), vec![bad.clone(), good.clone()]).unwrap();
        let k = key(kind);
        let tickets: Vec<_> = (0..300)
            .map(|i| engine.submit(req(&k, scheme, i)).unwrap())
            .collect();
        for (i, t) in tickets.into_iter().enumerate() {
            let sig = t.wait().unwrap();
            assert_eq!(sig.backend, "good");
            assert!(openssl_verifies(
                &k,
                scheme,
                &(i as u32).to_be_bytes(),
                &sig.bytes
            ));
        }
        let report = engine.report();
        let b = &report["backends"][0];
        assert_eq!(b["name"], "corrupting");
        assert_eq!(b["health"]["state"], "quarantined", "{scheme}");
        assert!(b["bad_signatures"].as_u64().unwrap() >= 1);
        assert!(
            engine
                .metrics_text()
                .contains("sigmux_backend_healthy{backend=\"corrupting\"} 0")
        );
    }
}

#[test]
fn with_only_a_corrupting_backend_callers_get_errors_not_bad_signatures() {
    let bad = TestBackend::new("corrupting", &cpu(), 2);
    bad.corrupt.store(true, Ordering::SeqCst);
    let engine = Engine::new(cfg(16, 1, 1024), vec![bad.clone()]).unwrap();
    let k = key(KeyKind::Rsa2048);
    let tickets: Vec<_> = (0..40)
        .map(|i| engine.submit(req(&k, Scheme::RsaPkcs1Sha256, i)).unwrap())
        .collect();
    for t in tickets {
        match t.wait() {
            Err(Error::NoBackend { reason, .. }) => {
                assert!(
                    reason.contains("failed verification") || reason.contains("out of rotation"),
                    "{reason}"
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

#[test]
fn a_failing_backend_hands_its_batch_to_another() {
    let failing = TestBackend::new("failing", &cpu(), 2);
    failing.fail.store(true, Ordering::SeqCst);
    let good = TestBackend::new("good", &cpu(), 2);
    let engine = Engine::new(cfg(8, 1, 1024), vec![failing.clone(), good.clone()]).unwrap();
    let k = key(KeyKind::Ed25519);
    let tickets: Vec<_> = (0..100)
        .map(|i| engine.submit(req(&k, Scheme::Ed25519, i)).unwrap())
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        let sig = t.wait().unwrap();
        assert!(openssl_verifies(
            &k,
            Scheme::Ed25519,
            &(i as u32).to_be_bytes(),
            &sig.bytes
        ));
    }
    let b = engine.report()["backends"][0].clone();
    assert_eq!(b["health"]["state"], "failing");
    let healthy = "sigmux_backend_healthy{backend=\"failing\"}";
    assert!(engine.metrics_text().contains(&format!("{healthy} 0")));
    // Once its back-off has run out it may be tried again, but until a
    // batch succeeds it is still failing, for the metric as for /healthz.
    let retry_ms = b["health"]["retry_in_ms"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(retry_ms + 20));
    assert_eq!(engine.report()["backends"][0]["health"]["state"], "failing");
    assert!(engine.metrics_text().contains(&format!("{healthy} 0")));
    assert!(
        engine
            .metrics_text()
            .contains("sigmux_backend_healthy{backend=\"good\"} 1")
    );
}

#[test]
fn a_big_batch_is_spread_over_two_idle_backends() {
    let a = TestBackend::new("a", &cpu(), 1);
    let b = TestBackend::new("b", &cpu(), 1);
    let engine = Engine::new(cfg(512, 50, 4096), vec![a.clone(), b.clone()]).unwrap();
    let k = key(KeyKind::P256);
    let s = Scheme::EcdsaSecp256r1Sha256;
    a.close_gate();
    b.close_gate();
    // Park one request on each backend's two workers...
    let held: Vec<_> = (0..4)
        .map(|i| engine.submit(req(&k, s, i)).unwrap())
        .collect();
    a.wait_entered(1);
    b.wait_entered(1);
    let more: Vec<_> = (0..512)
        .map(|i| engine.submit(req(&k, s, 10 + i)).unwrap())
        .collect();
    a.open_gate();
    b.open_gate();
    for t in held.into_iter().chain(more) {
        t.wait().unwrap();
    }
    let (ops_a, ops_b): (usize, usize) = (a.batches().iter().sum(), b.batches().iter().sum());
    assert_eq!(ops_a + ops_b, 516);
    assert!(ops_a >= 100 && ops_b >= 100, "a {ops_a}, b {ops_b}");
}

#[test]
fn bad_requests_get_clear_errors_without_touching_a_backend() {
    let engine = Engine::new(cfg(8, 1, 64), vec![cpu()]).unwrap();
    let p256 = key(KeyKind::P256);
    let e = engine
        .submit(SignRequest::new(
            p256.clone(),
            Scheme::RsaPkcs1Sha256,
            SignInput::Message(vec![1]),
        ))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "scheme rsa_pkcs1_sha256 is not valid for a p256 key"
    );
    let e = engine
        .submit(SignRequest::new(
            p256,
            Scheme::EcdsaSecp256r1Sha256,
            SignInput::Digest(vec![0; 31]),
        ))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "wrong digest length for ecdsa_secp256r1_sha256: expected 32 bytes, got 31"
    );
    let ed = key(KeyKind::Ed25519);
    let e = engine
        .submit(SignRequest::new(
            ed,
            Scheme::Ed25519,
            SignInput::Digest(vec![0; 64]),
        ))
        .err()
        .unwrap();
    assert!(e.to_string().contains("signs the message itself"));
}

#[test]
fn a_raw_rsa_input_at_or_above_the_modulus_fails_alone() {
    // A keyless client's RSA ciphertext may be >= n. Admitted, it would
    // fail the batch it joined and take every backend that tried it out of
    // rotation; it must be refused at admission, alone.
    let engine = Engine::new(cfg(64, 5, 1024), vec![cpu()]).unwrap();
    let rsa = key(KeyKind::Rsa2048);
    let n = rsa.rsa_public().unwrap().n().to_vec();
    let raw = |input: Vec<u8>| {
        engine.submit(SignRequest::new(
            rsa.clone(),
            Scheme::RsaRaw,
            SignInput::Message(input),
        ))
    };
    // n - 1: n is odd, so only the last byte changes.
    let mut good_input = n.clone();
    good_input[255] -= 1;
    let goods: Vec<_> = (0..16).map(|_| raw(good_input.clone()).unwrap()).collect();
    for bad in [n.clone(), vec![0xff; 256], vec![1; 255], vec![1; 257]] {
        let e = raw(bad).err().expect("refused at admission").to_string();
        assert!(
            e.contains("below the modulus") || e.contains("must be 256 bytes"),
            "{e}"
        );
    }
    for t in goods {
        let out = t.wait().unwrap();
        // s^e mod n gives the input back (checked by OpenSSL).
        let mut back = vec![0u8; 256];
        let len = rsa
            .rsa_public()
            .unwrap()
            .public_decrypt(&out.bytes, &mut back, openssl::rsa::Padding::NONE)
            .unwrap();
        assert_eq!(&back[..len], &good_input[..]);
    }
    let report = engine.report();
    assert_eq!(
        report["backends"][0]["health"]["state"], "healthy",
        "{report}"
    );
}

#[test]
fn metrics_and_report_describe_the_backends() {
    let engine = Engine::new(cfg(8, 1, 64), vec![cpu()]).unwrap();
    let k = key(KeyKind::P256);
    engine
        .sign_blocking(req(&k, Scheme::EcdsaSecp256r1Sha256, 1))
        .unwrap();
    let m = engine.metrics_text();
    for name in [
        "sigmux_engine_requests_total 1",
        "sigmux_backend_ops_total{backend=\"cpu\"} 1",
        "sigmux_engine_queue_depth 0",
        "# TYPE sigmux_backend_mean_batch gauge",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    let r = engine.report();
    let b = &r["backends"][0];
    assert_eq!(b["details"]["engines"]["ed25519"]["engine"], "aws-lc");
    assert!(
        b["rates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["kind"] == "rsa4096")
    );
}

#[test]
fn a_group_is_answered_together_in_order() {
    let engine = Engine::new(cfg(16, 1, 1024), vec![cpu()]).unwrap();
    let k = key(KeyKind::P384);
    let s = Scheme::EcdsaSecp384r1Sha384;
    let msgs: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let ticket = engine
        .submit_group(
            k.clone(),
            s,
            msgs.iter().cloned().map(SignInput::Message).collect(),
            None,
        )
        .unwrap();
    let results = ticket.wait();
    assert_eq!(results.len(), 100);
    for (m, r) in msgs.iter().zip(results) {
        assert!(openssl_verifies(&k, s, m, &r.unwrap().bytes));
    }
    // Admitted whole or refused whole.
    let small = Engine::new(cfg(16, 1, 10), vec![cpu()]).unwrap();
    let e = small.submit_group(k.clone(), s, vec![SignInput::Message(vec![1]); 11], None);
    assert!(matches!(e, Err(Error::Overloaded)));
    // A bad item names its index.
    let mut inputs = vec![SignInput::Message(vec![1]); 3];
    inputs[2] = SignInput::Digest(vec![0; 5]);
    let e = engine
        .submit_group(k, s, inputs, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("item 2: wrong digest length"), "{e}");
    assert_eq!(engine.queue_depth(), 0);
}

/// Groups and single requests for one key share batches (a batch then
/// holds runs of several groups' members, answered a run at a time, and
/// single requests between them); every answer reaches its own caller,
/// in order, and the groups' queue capacity is all given back: a group
/// of the whole capacity is admitted afterwards.
#[test]
fn groups_and_single_requests_share_batches_and_give_back_their_capacity() {
    let cpu = cpu();
    let backends: Vec<Arc<dyn Backend>> = vec![
        TestBackend::new("a", &cpu, 2),
        TestBackend::new("b", &cpu, 2),
    ];
    let engine = Engine::new(cfg(32, 5, 400), backends).unwrap();
    let k = key(KeyKind::P256);
    let s = Scheme::EcdsaSecp256r1Sha256;
    let msg = |g: u32, i: u32| format!("group {g} item {i}").into_bytes();
    let mut groups = Vec::new();
    let mut singles = Vec::new();
    for g in 0..6u32 {
        let inputs = (0..50).map(|i| SignInput::Message(msg(g, i))).collect();
        groups.push((g, engine.submit_group(k.clone(), s, inputs, None).unwrap()));
        singles.push((
            g,
            engine
                .submit(SignRequest::new(
                    k.clone(),
                    s,
                    SignInput::Message(msg(g, 999)),
                ))
                .unwrap(),
        ));
    }
    for (g, t) in groups {
        let results = t.wait();
        assert_eq!(results.len(), 50);
        for (i, r) in (0..50).zip(results) {
            let sig = r.unwrap_or_else(|e| panic!("group {g} item {i}: {e}"));
            assert!(
                openssl_verifies(&k, s, &msg(g, i), &sig.bytes),
                "group {g} item {i}"
            );
        }
    }
    for (g, t) in singles {
        let sig = t.wait().unwrap();
        assert!(
            openssl_verifies(&k, s, &msg(g, 999), &sig.bytes),
            "single {g}"
        );
    }
    assert_eq!(engine.queue_depth(), 0);
    let whole = (0..400).map(|i| SignInput::Message(msg(9, i))).collect();
    let results = engine
        .submit_group(k.clone(), s, whole, None)
        .unwrap()
        .wait();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(engine.queue_depth(), 0);
}

#[test]
fn callbacks_receive_answers_on_the_engine_threads() {
    let engine = Engine::new(cfg(16, 1, 1024), vec![cpu()]).unwrap();
    let k = key(KeyKind::Ed25519);
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..50u32 {
        let tx = tx.clone();
        engine
            .submit_with(req(&k, Scheme::Ed25519, i), move |r| {
                let _ = tx.send((i, r));
            })
            .unwrap();
    }
    drop(tx);
    let mut got: Vec<(u32, sigmux::Result<sigmux::Signature>)> = rx.iter().collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(got.len(), 50);
    for (i, r) in got {
        assert!(openssl_verifies(
            &k,
            Scheme::Ed25519,
            &i.to_be_bytes(),
            &r.unwrap().bytes
        ));
    }
    // Errors before queueing are returned, and the callback is not called.
    let e = engine.submit_with(
        SignRequest::new(k, Scheme::EcdsaSecp256r1Sha256, SignInput::Message(vec![1])),
        |_| panic!("must not be called"),
    );
    assert!(e.is_err());
}
