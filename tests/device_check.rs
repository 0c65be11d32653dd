//! The engine's side of device-checked backends (`checks_own_results`), with
//! a mock: GPUs cannot run here, so a stand-in backend signs with the real
//! CPU backend, claims that it checks every signature itself the way the
//! CUDA backend does, and reports a device-check fault
//! (`Error::WrongResult`) on demand. The real CUDA backend's fault path is
//! exercised on a GPU by tests/cuda.rs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sigmux::backend::cpu::{CpuBackend, CpuConfig, CpuEngine, EngineChoice};
use sigmux::backend::{Backend, Capabilities, CostSeed};
use sigmux::{Engine, EngineConfig, Error, Key, KeyId, KeyKind, Scheme, SignInput, SignRequest};

/// Mocks a device-checked backend: real CPU signatures, a claim to have
/// checked them, and an injectable fault.
struct DeviceChecked {
    cpu: Arc<CpuBackend>,
    caps: Capabilities,
    /// Report a device-check fault instead of returning results.
    fault: AtomicBool,
    /// Corrupt results and return them anyway (a backend that lies about
    /// checking: shows the engine really skips its own check).
    lie: AtomicBool,
    calls: AtomicUsize,
    /// Report a device-check fault for this key's batches only.
    fault_key: Mutex<Option<KeyId>>,
    /// Take this long over this key's batches (which succeed).
    slow_key: Mutex<Option<(KeyId, Duration)>>,
    /// Fail every batch with a backend error (not a wrong result).
    error: AtomicBool,
}

impl DeviceChecked {
    fn new(cpu: &Arc<CpuBackend>) -> Arc<DeviceChecked> {
        let mut caps = cpu.capabilities().clone();
        caps.parallelism = 2;
        Arc::new(DeviceChecked {
            cpu: cpu.clone(),
            caps,
            fault: AtomicBool::new(false),
            lie: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            fault_key: Mutex::new(None),
            slow_key: Mutex::new(None),
            error: AtomicBool::new(false),
        })
    }
}

impl Backend for DeviceChecked {
    fn name(&self) -> &str {
        "mock-gpu"
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
        self.calls.fetch_add(1, Ordering::SeqCst);
        let slow = *self.slow_key.lock().unwrap();
        if let Some((id, pause)) = slow
            && id == key.id()
        {
            std::thread::sleep(pause);
        }
        if self.error.load(Ordering::SeqCst) {
            return Err(Error::backend("mock-gpu", "the device is unreachable"));
        }
        if self.fault.load(Ordering::SeqCst) || *self.fault_key.lock().unwrap() == Some(key.id()) {
            return Err(Error::WrongResult {
                backend: "mock-gpu".into(),
                count: inputs.len(),
                reason: format!("the device check rejected {} results", inputs.len()),
            });
        }
        let mut sigs = self.cpu.sign_batch(key, scheme, inputs)?;
        if self.lie.load(Ordering::SeqCst) {
            for s in &mut sigs {
                let last = s.len() - 1;
                s[last] ^= 1;
            }
        }
        Ok(sigs)
    }
    fn checks_own_results(&self, _scheme: Scheme) -> bool {
        true
    }
    fn cost_seed(&self, _kind: KeyKind, _scheme: Scheme) -> Option<CostSeed> {
        // Far cheaper than the CPU, so the scheduler tries it first.
        Some(CostSeed {
            per_batch_us: 0.1,
            per_op_us: 0.001,
        })
    }
}

fn cpu() -> Arc<CpuBackend> {
    Arc::new(
        CpuBackend::new(&CpuConfig {
            threads: 2,
            engine: EngineChoice::Fixed(CpuEngine::AwsLc),
            max_batch: 256,
        })
        .unwrap(),
    )
}

fn cfg() -> EngineConfig {
    EngineConfig {
        max_batch: 16,
        max_wait: Duration::from_millis(1),
        queue_capacity: 4096,
        deadline: Duration::from_secs(30),
        ..EngineConfig::default()
    }
}

fn openssl_verifies(key: &Key, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
    use openssl::hash::MessageDigest;
    let pk = openssl::pkey::PKey::public_key_from_der(key.spki_der()).unwrap();
    let (md, pss) = match scheme {
        Scheme::RsaPssRsaeSha256 => (MessageDigest::sha256(), true),
        Scheme::RsaPkcs1Sha256 | Scheme::EcdsaSecp256r1Sha256 => (MessageDigest::sha256(), false),
        Scheme::EcdsaSecp384r1Sha384 => (MessageDigest::sha384(), false),
        other => panic!("not used here: {other}"),
    };
    let mut v = openssl::sign::Verifier::new(md, &pk).unwrap();
    if pss {
        v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
        v.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
            .unwrap();
    }
    v.update(msg).unwrap();
    v.verify(sig).unwrap_or(false)
}

#[test]
fn a_device_check_fault_quarantines_the_backend_and_the_cpu_answers() {
    for (kind, scheme) in [
        (KeyKind::Rsa2048, Scheme::RsaPssRsaeSha256),
        (KeyKind::P256, Scheme::EcdsaSecp256r1Sha256),
    ] {
        let gpu = DeviceChecked::new(&cpu());
        gpu.fault.store(true, Ordering::SeqCst);
        let engine = Engine::new(cfg(), vec![gpu.clone(), cpu()]).unwrap();
        let k = Key::ephemeral("t", kind).unwrap();
        let tickets: Vec<_> = (0..50u32)
            .map(|i| {
                engine
                    .submit(SignRequest::new(
                        k.clone(),
                        scheme,
                        SignInput::Message(i.to_be_bytes().to_vec()),
                    ))
                    .unwrap()
            })
            .collect();
        for (i, t) in tickets.into_iter().enumerate() {
            let sig = t.wait().unwrap();
            assert_eq!(sig.backend, "cpu", "{scheme}");
            assert!(openssl_verifies(
                &k,
                scheme,
                &(i as u32).to_be_bytes(),
                &sig.bytes
            ));
        }
        assert!(
            gpu.calls.load(Ordering::SeqCst) >= 1,
            "the mock got no batch"
        );
        let report = engine.report();
        let b = &report["backends"][0];
        assert_eq!(b["name"], "mock-gpu");
        assert_eq!(b["health"]["state"], "quarantined", "{b:#}");
        assert!(
            b["health"]["reason"]
                .as_str()
                .unwrap()
                .contains("its own check rejected"),
            "{b:#}"
        );
        assert!(b["quarantines"].as_u64().unwrap() >= 1, "{b:#}");
        assert!(b["bad_signatures"].as_u64().unwrap() >= 1);
        assert_eq!(b["errors"], 0, "a wrong result is not counted as an error");
    }
}

#[test]
fn a_batch_that_was_already_running_does_not_end_the_quarantine_when_it_succeeds() {
    // Two batches on the mock at once: a slow one that succeeds and a fast
    // one whose device check fails. The slow one ends after the quarantine
    // began; its success says nothing about the device since then, so the
    // backend stays out of rotation until its back-off has passed.
    let gpu = DeviceChecked::new(&cpu());
    let engine = Engine::new(cfg(), vec![gpu.clone(), cpu()]).unwrap();
    let slow = Key::ephemeral("t", KeyKind::P256).unwrap();
    let bad = Key::ephemeral("t", KeyKind::P256).unwrap();
    *gpu.slow_key.lock().unwrap() = Some((slow.id(), Duration::from_millis(500)));
    *gpu.fault_key.lock().unwrap() = Some(bad.id());
    let scheme = Scheme::EcdsaSecp256r1Sha256;
    let sign = |k: &Arc<Key>| {
        engine
            .submit(SignRequest::new(
                k.clone(),
                scheme,
                SignInput::Message(b"m".to_vec()),
            ))
            .unwrap()
    };
    let slow_ticket = sign(&slow);
    // The slow batch is on the mock before the bad one is submitted.
    while gpu.calls.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let bad_sig = sign(&bad).wait().unwrap();
    assert_eq!(bad_sig.backend, "cpu", "redone on the CPU");
    let slow_sig = slow_ticket.wait().unwrap();
    assert_eq!(slow_sig.backend, "mock-gpu");
    for (k, sig) in [(&slow, &slow_sig), (&bad, &bad_sig)] {
        assert!(openssl_verifies(k, scheme, b"m", &sig.bytes));
    }
    let report = engine.report();
    let b = &report["backends"][0];
    assert_eq!(b["name"], "mock-gpu");
    assert_eq!(b["health"]["state"], "quarantined", "{b:#}");
    // And new work goes to the CPU meanwhile.
    let next = sign(&slow).wait().unwrap();
    assert_eq!(next.backend, "cpu");
}

#[test]
fn retry_now_ends_a_back_off_after_errors_but_not_a_quarantine() {
    // What SIGHUP does when a PKCS#11 token is usable again: without it the
    // engine waits out a back-off that doubles per failure (up to minutes).
    let gpu = DeviceChecked::new(&cpu());
    let engine = Engine::new(cfg(), vec![gpu.clone()]).unwrap();
    let k = Key::ephemeral("t", KeyKind::P256).unwrap();
    let sign = || {
        engine.sign_blocking(SignRequest::new(
            k.clone(),
            Scheme::EcdsaSecp256r1Sha256,
            SignInput::Message(b"m".to_vec()),
        ))
    };
    gpu.error.store(true, Ordering::SeqCst);
    // Five failures, each after the back-off of the one before: the last
    // back-off is 1.6 s.
    let mut failed = 0;
    while failed < 5 {
        let before = gpu.calls.load(Ordering::SeqCst);
        assert!(sign().is_err());
        if gpu.calls.load(Ordering::SeqCst) > before {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    gpu.error.store(false, Ordering::SeqCst);
    let err = sign().unwrap_err().to_string();
    assert!(
        err.contains("unreachable") || err.contains("out of rotation"),
        "{err}"
    );
    assert!(engine.retry_now("mock-gpu"));
    assert!(!engine.retry_now("no-such-backend"));
    let sig = sign().unwrap();
    assert_eq!(sig.backend, "mock-gpu");
    assert_eq!(engine.report()["backends"][0]["health"]["state"], "healthy");

    // A quarantine for wrong results stays.
    gpu.fault.store(true, Ordering::SeqCst);
    assert!(sign().is_err());
    gpu.fault.store(false, Ordering::SeqCst);
    assert!(!engine.retry_now("mock-gpu"));
    assert_eq!(
        engine.report()["backends"][0]["health"]["state"],
        "quarantined"
    );
}

#[test]
fn the_engine_skips_its_own_check_only_for_device_checked_schemes() {
    // A backend that claims to check on the device is trusted: the engine
    // does not verify again (that CPU check would be the bottleneck at GPU
    // rates). The mock lies here to make the skip visible; the real CUDA
    // backend only claims what its check kernels do.
    let gpu = DeviceChecked::new(&cpu());
    gpu.lie.store(true, Ordering::SeqCst);
    let engine = Engine::new(cfg(), vec![gpu.clone()]).unwrap();
    let k = Key::ephemeral("t", KeyKind::Rsa2048).unwrap();
    let sig = sign_m(&engine, &k);
    assert_eq!(sig.backend, "mock-gpu");
    assert!(!openssl_verifies(
        &k,
        Scheme::RsaPkcs1Sha256,
        b"m",
        &sig.bytes
    ));
}

/// RSA-PKCS#1-SHA256 over the message "m" through `engine`.
fn sign_m(engine: &Engine, k: &std::sync::Arc<Key>) -> sigmux::Signature {
    engine
        .sign_blocking(SignRequest::new(
            k.clone(),
            Scheme::RsaPkcs1Sha256,
            SignInput::Message(b"m".to_vec()),
        ))
        .unwrap()
}

#[test]
fn recheck_self_checked_verifies_again_and_catches_the_lie() {
    // `engine.recheck_self_checked = true`: the engine checks even what a
    // backend says it checked. The lying backend's signatures are caught,
    // it is quarantined, and the CPU backend answers with a good one.
    let cpu = cpu();
    let gpu = DeviceChecked::new(&cpu);
    gpu.lie.store(true, Ordering::SeqCst);
    let engine = Engine::new(
        EngineConfig {
            recheck_self_checked: true,
            ..cfg()
        },
        vec![gpu.clone(), cpu],
    )
    .unwrap();
    let k = Key::ephemeral("t", KeyKind::Rsa2048).unwrap();
    let sig = sign_m(&engine, &k);
    assert!(
        gpu.calls.load(Ordering::SeqCst) >= 1,
        "the mock signed first"
    );
    assert_eq!(sig.backend, "cpu");
    assert!(openssl_verifies(
        &k,
        Scheme::RsaPkcs1Sha256,
        b"m",
        &sig.bytes
    ));
    let report = engine.report();
    let b = report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "mock-gpu")
        .unwrap();
    assert!(b["bad_signatures"].as_u64().unwrap() >= 1, "{b:#}");
}
