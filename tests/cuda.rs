//! The CUDA backend, decided at run time: on a machine with a GPU (driver,
//! device and NVRTC: set SIGMUX_NVRTC_LIB or have libnvrtc.so.13 on the
//! library path) every scheme is signed through the engine on the GPU and
//! verified with OpenSSL, RSA also under every thread mapping
//! (`rsa_mapping`: thread, wide, coop:8, coop:16) and from concurrent
//! threads on more lanes than constant-memory key slots, the key cache
//! evicts and re-uploads, and an injected device fault quarantines the GPU
//! while the CPU answers. Without
//! a GPU the backend must report `unavailable: <reason>` and `sigmux
//! backends` must show it. Each test prints which path it ran. The test
//! binary can be copied to a GPU machine and run there as is
//! (SIGMUX_REQUIRE_GPU=1 turns a missing GPU into a failure). Without a
//! GPU the last test runs the device tests again in a child process
//! against a fake driver (tests/fake_cuda/driver.cpp, a mock: no GPU can
//! run here), with fewer items per batch.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sigmux::backend::Backend;
use sigmux::backend::cpu::{CpuBackend, CpuConfig, CpuEngine, EngineChoice};
use sigmux::backend::cuda::{self, CheckPolicy, CudaBackend, CudaConfig, RsaMapping};
use sigmux::{Engine, EngineConfig, Key, KeyKind, Scheme, SignInput, SignRequest};

/// The started GPU backends, or `None` (after saying why) on a machine
/// without a usable GPU.
fn gpus(test: &str, cfg: &CudaConfig) -> Option<Vec<Arc<CudaBackend>>> {
    match cuda::discover(cfg) {
        Ok(found) => {
            let mut out = Vec::new();
            for f in found {
                match f {
                    Ok(b) => out.push(Arc::new(b)),
                    Err((name, reason)) => panic!("{test}: {name} did not start: {reason}"),
                }
            }
            for b in &out {
                eprintln!("{test}: GPU PATH on {} ({})", b.device_name(), b.name());
            }
            Some(out)
        }
        Err(reason) => {
            assert!(
                std::env::var("SIGMUX_REQUIRE_GPU").as_deref() != Ok("1"),
                "{test}: SIGMUX_REQUIRE_GPU=1 but no GPU: {reason}"
            );
            eprintln!("{test}: NO-GPU PATH ({reason}); device checks skipped");
            None
        }
    }
}

fn cuda_cfg() -> CudaConfig {
    let mut cfg = CudaConfig {
        cache_dir: Some(std::env::temp_dir().join("sigmux-test-kernel-cache")),
        ..CudaConfig::default()
    };
    if fake_driver() {
        // Start-up calibration signs max_batch items per key kind, and
        // batches of more than 16 are split into several launches.
        cfg.max_batch = 16;
    }
    cfg
}

/// Whether this process runs against the fake driver
/// (`the_device_tests_pass_against_a_fake_driver...` below).
fn fake_driver() -> bool {
    std::env::var_os("SIGMUX_FAKE_CUDA").is_some()
}

/// `real` items on a GPU, `fake` under the fake driver, whose kernels are
/// the host build (thousands of times slower than a GPU).
fn scaled(real: u32, fake: u32) -> u32 {
    if fake_driver() { fake } else { real }
}

fn engine_cfg() -> EngineConfig {
    EngineConfig {
        max_batch: 512,
        max_wait: Duration::from_millis(2),
        queue_capacity: 1 << 16,
        deadline: Duration::from_secs(60),
        ..EngineConfig::default()
    }
}

fn cpu() -> Arc<CpuBackend> {
    Arc::new(
        CpuBackend::new(&CpuConfig {
            threads: 2,
            engine: EngineChoice::Fixed(CpuEngine::OpenSsl),
            max_batch: 64,
        })
        .unwrap(),
    )
}

/// Verifies with OpenSSL (independent of the GPU and of the engine).
fn verifies(key: &Key, scheme: Scheme, input: &[u8], sig: &[u8]) -> bool {
    use openssl::pkey::PKey;
    let pk = PKey::public_key_from_der(key.spki_der()).unwrap();
    match scheme {
        Scheme::RsaRaw => {
            let rsa = pk.rsa().unwrap();
            let mut back = vec![0u8; rsa.size() as usize];
            rsa.public_encrypt(sig, &mut back, openssl::rsa::Padding::NONE)
                .is_ok_and(|n| back[..n] == *input)
        }
        Scheme::EcdsaP256AnyDigest | Scheme::EcdsaP384AnyDigest => {
            let sig = openssl::ecdsa::EcdsaSig::from_der(sig).unwrap();
            sig.verify(input, &pk.ec_key().unwrap()).unwrap()
        }
        Scheme::Ed25519 => {
            let mut v = openssl::sign::Verifier::new_without_digest(&pk).unwrap();
            v.verify_oneshot(sig, input).unwrap_or(false)
        }
        _ => {
            let h = scheme.hash().unwrap();
            let md = match h.len() {
                32 => openssl::md::Md::sha256(),
                48 => openssl::md::Md::sha384(),
                _ => openssl::md::Md::sha512(),
            };
            let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&pk).unwrap();
            ctx.verify_init().unwrap();
            if scheme.family() == sigmux::scheme::Family::Rsa {
                if scheme.is_pss() {
                    ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS)
                        .unwrap();
                    ctx.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
                        .unwrap();
                    ctx.set_rsa_mgf1_md(md).unwrap();
                } else {
                    ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1).unwrap();
                }
            }
            ctx.set_signature_md(md).unwrap();
            ctx.verify(input, sig).unwrap_or(false)
        }
    }
}

/// Inputs as the engine hands them to backends, and the requests for them.
fn inputs(key: &Key, scheme: Scheme, n: u32) -> Vec<(Vec<u8>, SignInput)> {
    (0..n)
        .map(|i| {
            let msg = format!("message {i}").into_bytes();
            match scheme {
                Scheme::RsaRaw => {
                    // A modulus-length value below the modulus.
                    let k = key.rsa_public().unwrap().size() as usize;
                    let mut v = vec![0u8; k];
                    v[1..]
                        .iter_mut()
                        .enumerate()
                        .for_each(|(j, b)| *b = (j as u32 ^ i.wrapping_mul(2654435761)) as u8);
                    (v.clone(), SignInput::Message(v))
                }
                Scheme::Ed25519 => {
                    // Messages of every length class: empty, one SHA-512
                    // block, several blocks.
                    let len = [0usize, 1, 63, 111, 112, 128, 300, 1000][i as usize % 8];
                    let m: Vec<u8> = (0..len).map(|j| (j as u32 * 13 + i) as u8).collect();
                    (m.clone(), SignInput::Message(m))
                }
                Scheme::EcdsaP256AnyDigest | Scheme::EcdsaP384AnyDigest => {
                    // A SHA-1-sized digest and a 64-byte one, alternately.
                    let len = if i % 2 == 0 { 20 } else { 64 };
                    let d: Vec<u8> = (0..len).map(|j| (j as u32 * 7 + i) as u8).collect();
                    (d.clone(), SignInput::Message(d))
                }
                _ => {
                    let d = scheme.hash().unwrap().digest(&msg);
                    (d.clone(), SignInput::Digest(d))
                }
            }
        })
        .collect()
}

fn cases() -> Vec<(KeyKind, Scheme)> {
    let mut v = Vec::new();
    for kind in [KeyKind::Rsa2048, KeyKind::Rsa3072, KeyKind::Rsa4096] {
        for s in kind.schemes() {
            v.push((kind, s));
        }
        v.push((kind, Scheme::RsaRaw));
    }
    v.push((KeyKind::P256, Scheme::EcdsaSecp256r1Sha256));
    v.push((KeyKind::P256, Scheme::EcdsaP256AnyDigest));
    v.push((KeyKind::P384, Scheme::EcdsaSecp384r1Sha384));
    v.push((KeyKind::P384, Scheme::EcdsaP384AnyDigest));
    v.push((KeyKind::Ed25519, Scheme::Ed25519));
    v
}

/// Submits `n` requests for `key` under `scheme` through `engine`, waits
/// for every answer and checks each signature with OpenSSL; returns the
/// answers in order.
fn sign_verified(
    engine: &Engine,
    key: &Arc<Key>,
    scheme: Scheme,
    n: u32,
    what: &str,
) -> Vec<sigmux::Signature> {
    let items = inputs(key, scheme, n);
    let tickets: Vec<_> = items
        .iter()
        .map(|(_, req)| {
            engine
                .submit(SignRequest::new(key.clone(), scheme, req.clone()))
                .unwrap()
        })
        .collect();
    items
        .iter()
        .zip(tickets)
        .map(|((input, _), t)| {
            let sig = t.wait().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                verifies(key, scheme, input, &sig.bytes),
                "{what}: signature does not verify"
            );
            sig
        })
        .collect()
}

/// An engine with `gpu` and a CPU whose cost seed is far above any GPU's
/// ([`SlowSeededCpu`]), so that the first batch goes to the GPU.
fn gpu_then_cpu(gpu: &Arc<CudaBackend>) -> Engine {
    Engine::new(
        engine_cfg(),
        vec![
            gpu.clone() as Arc<dyn Backend>,
            Arc::new(SlowSeededCpu(cpu())) as Arc<dyn Backend>,
        ],
    )
    .unwrap()
}

#[test]
fn every_scheme_signs_on_the_gpu_through_the_engine_and_verifies() {
    let Some(gpus) = gpus("every_scheme", &cuda_cfg()) else {
        return;
    };
    let gpu = gpus[0].clone();
    // Only the GPU: what `--backend cuda` runs.
    let engine = Engine::new(engine_cfg(), vec![gpu.clone() as Arc<dyn Backend>]).unwrap();
    for (kind, scheme) in cases() {
        let key = Key::ephemeral("gpu-test", kind).unwrap();
        assert!(gpu.holds(&key), "{kind}: the GPU does not take the key");
        let n = scaled(300, 8);
        for sig in sign_verified(&engine, &key, scheme, n, &format!("{kind} {scheme}")) {
            assert_eq!(sig.backend, gpu.name());
        }
        eprintln!("{kind} {scheme}: {n} signatures verified");
    }
    assert_eq!(gpu.device_check_faults(), 0);
}

#[test]
fn rsa_signs_under_every_thread_mapping_and_verifies() {
    // Started with a coop mapping from the config (the start-up check of
    // its kernels and calibration with it), then switched in place, so one
    // start covers every mapping.
    let cfg = CudaConfig {
        rsa_mapping: RsaMapping::Coop(8),
        ..cuda_cfg()
    };
    let Some(mut gpus) = gpus("rsa_mappings", &cfg) else {
        return;
    };
    let mut gpu = gpus.swap_remove(0);
    let gpu = Arc::get_mut(&mut gpu).expect("the only handle");
    assert_eq!(gpu.rsa_mapping(), RsaMapping::Coop(8));
    assert_eq!(gpu.describe()["rsa_mapping"], "coop:8");
    let keys: Vec<Arc<Key>> = [KeyKind::Rsa2048, KeyKind::Rsa3072, KeyKind::Rsa4096]
        .into_iter()
        .map(|k| Key::ephemeral("gpu-test", k).unwrap())
        .collect();
    // Batch sizes: one item (a block of mostly idle threads), a partial
    // last block, and many blocks (coop:16 holds 4 items per block).
    let mut batches = vec![
        (Scheme::RsaPkcs1Sha256, 1),
        (Scheme::RsaPkcs1Sha256, 37),
        (Scheme::RsaPssRsaeSha384, scaled(37, 9)),
        (Scheme::RsaRaw, 5),
    ];
    if !fake_driver() {
        batches.push((Scheme::RsaPkcs1Sha256, 300));
    }
    // PKCS#1 v1.5 and raw RSA are deterministic: every mapping must give
    // the very bytes the first one gave.
    let mut first: std::collections::HashMap<(usize, Scheme, u32), Vec<Vec<u8>>> =
        Default::default();
    for mapping in [
        RsaMapping::Coop(8),
        RsaMapping::Coop(16),
        RsaMapping::Wide,
        RsaMapping::Thread,
    ] {
        gpu.set_rsa_mapping(mapping);
        assert_eq!(gpu.describe()["rsa_mapping"], mapping.to_string());
        for (k, key) in keys.iter().enumerate() {
            for &(scheme, n) in &batches {
                let items: Vec<Vec<u8>> =
                    inputs(key, scheme, n).into_iter().map(|(i, _)| i).collect();
                let sigs = gpu
                    .sign_batch(key, scheme, &items)
                    .unwrap_or_else(|e| panic!("{mapping} {} {scheme}: {e}", key.kind()));
                assert_eq!(sigs.len(), n as usize);
                for (i, (input, sig)) in items.iter().zip(&sigs).enumerate() {
                    assert!(
                        verifies(key, scheme, input, sig),
                        "{mapping} {} {scheme}: item {i} of {n} does not verify",
                        key.kind()
                    );
                }
                if !scheme.is_pss() {
                    let want = first.entry((k, scheme, n)).or_insert_with(|| sigs.clone());
                    assert!(
                        *want == sigs,
                        "{mapping} {} {scheme}: differs from coop:8",
                        key.kind()
                    );
                }
            }
            eprintln!("{mapping} {}: every batch verified", key.kind());
        }
    }
    // A wrong result under a coop mapping is caught by the same check.
    gpu.set_rsa_mapping(RsaMapping::Coop(16));
    gpu.inject_faults_for_test(1);
    let before = gpu.device_check_faults();
    let d = vec![Scheme::RsaPkcs1Sha256.hash().unwrap().digest(b"x"); 8];
    let err = gpu
        .sign_batch(&keys[0], Scheme::RsaPkcs1Sha256, &d)
        .unwrap_err();
    assert!(matches!(err, sigmux::Error::WrongResult { .. }), "{err}");
    assert_eq!(gpu.device_check_faults(), before + 1);
}

#[test]
fn concurrent_rsa_batches_with_more_lanes_than_key_slots_use_their_own_keys() {
    // The one-thread RSA kernels read the key from their lane's constant
    // memory slot: 20 lanes share 16 slots, so lanes 16..19 take turns with
    // lanes 0..3. 24 threads sign at once with four keys of two sizes,
    // changing key from batch to batch, so a slot is refilled with another
    // key while other lanes' kernels run; every signature must verify under
    // its own key (a stale or foreign key would fail the device check and
    // the call).
    let cfg = CudaConfig {
        streams: 20,
        ..cuda_cfg()
    };
    let Some(mut gpus) = gpus("key_slots", &cfg) else {
        return;
    };
    let mut gpu = gpus.swap_remove(0);
    let keys: Vec<Arc<Key>> = [
        KeyKind::Rsa2048,
        KeyKind::Rsa2048,
        KeyKind::Rsa4096,
        KeyKind::Rsa2048,
    ]
    .into_iter()
    .map(|k| Key::ephemeral("gpu-test", k).unwrap())
    .collect();
    for mapping in [RsaMapping::Thread, RsaMapping::Wide] {
        Arc::get_mut(&mut gpu)
            .expect("no other handle between runs")
            .set_rsa_mapping(mapping);
        let workers: Vec<_> = (0..24)
            .map(|t| {
                let (gpu, keys) = (gpu.clone(), keys.clone());
                std::thread::spawn(move || {
                    for b in 0..scaled(6, 2) as usize {
                        let key = &keys[(t + b) % keys.len()];
                        let scheme = Scheme::RsaPkcs1Sha256;
                        let items: Vec<Vec<u8>> = inputs(key, scheme, scaled(48, 4))
                            .into_iter()
                            .map(|(i, _)| i)
                            .collect();
                        let sigs = gpu
                            .sign_batch(key, scheme, &items)
                            .unwrap_or_else(|e| panic!("{mapping} thread {t} batch {b}: {e}"));
                        for (i, (input, sig)) in items.iter().zip(&sigs).enumerate() {
                            assert!(
                                verifies(key, scheme, input, sig),
                                "{mapping} thread {t} batch {b} item {i} does not verify"
                            );
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a signing thread failed");
        }
        eprintln!(
            "{mapping}: 24 threads x {} batches on 20 lanes verified",
            scaled(6, 2)
        );
    }
    assert_eq!(gpu.device_check_faults(), 0);
}

#[test]
fn sampled_ecdsa_checks_still_give_valid_signatures() {
    let cfg = CudaConfig {
        check: CheckPolicy::Sample(8),
        ..cuda_cfg()
    };
    let Some(gpus) = gpus("sampled_checks", &cfg) else {
        return;
    };
    let gpu = gpus[0].clone();
    assert!(!gpu.checks_own_results(Scheme::EcdsaSecp256r1Sha256));
    assert!(gpu.checks_own_results(Scheme::RsaPkcs1Sha256));
    let key = Key::ephemeral("gpu-test", KeyKind::P256).unwrap();
    let items = inputs(&key, Scheme::EcdsaSecp256r1Sha256, scaled(1000, 200));
    let digests: Vec<Vec<u8>> = items.iter().map(|(d, _)| d.clone()).collect();
    let sigs = gpu
        .sign_batch(&key, Scheme::EcdsaSecp256r1Sha256, &digests)
        .unwrap();
    for (d, s) in digests.iter().zip(&sigs) {
        assert!(verifies(&key, Scheme::EcdsaSecp256r1Sha256, d, s));
    }
    assert!(!gpu.checks_own_results(Scheme::Ed25519));
    let key = Key::ephemeral("gpu-test", KeyKind::Ed25519).unwrap();
    let msgs: Vec<Vec<u8>> = inputs(&key, Scheme::Ed25519, scaled(1000, 200))
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let sigs = gpu.sign_batch(&key, Scheme::Ed25519, &msgs).unwrap();
    for (m, s) in msgs.iter().zip(&sigs) {
        assert!(verifies(&key, Scheme::Ed25519, m, s));
    }
    // A corrupted sample is caught by the sampled check.
    gpu.inject_faults_for_test(1);
    let before = gpu.device_check_faults();
    let err = gpu.sign_batch(&key, Scheme::Ed25519, &msgs).unwrap_err();
    assert!(matches!(err, sigmux::Error::WrongResult { .. }), "{err}");
    assert_eq!(gpu.device_check_faults(), before + 1);
}

#[test]
fn the_key_cache_evicts_least_recently_used_and_uploads_again() {
    // Room for two RSA-2048 blobs (whatever their layout), not three.
    let probe = CudaConfig {
        key_cache_bytes: 1 << 20,
        ..cuda_cfg()
    };
    let Some(first) = gpus("key_cache", &probe) else {
        return;
    };
    let keys: Vec<Arc<Key>> = (0..3)
        .map(|_| Key::ephemeral("gpu-test", KeyKind::Rsa2048).unwrap())
        .collect();
    let d = vec![Scheme::RsaPkcs1Sha256.hash().unwrap().digest(b"x")];
    first[0]
        .sign_batch(&keys[0], Scheme::RsaPkcs1Sha256, &d)
        .unwrap();
    let blob = first[0].key_cache_stats().1;
    drop(first);
    let small = CudaConfig {
        key_cache_bytes: 2 * blob,
        ..cuda_cfg()
    };
    let gpu = gpus("key_cache", &small).unwrap().remove(0);
    // Start-up calibration uploads (and drops) keys of its own.
    let uploads = gpu.describe()["key_cache"]["uploads"].as_u64().unwrap();
    let evictions_before = gpu.key_cache_stats().2;
    for k in keys.iter().chain(keys.iter()) {
        let sig = gpu.sign_batch(k, Scheme::RsaPkcs1Sha256, &d).unwrap();
        assert!(verifies(k, Scheme::RsaPkcs1Sha256, &d[0], &sig[0]));
    }
    let (held, bytes, evictions) = gpu.key_cache_stats();
    assert_eq!(held, 2);
    assert!(bytes <= 2 * blob);
    assert!(evictions - evictions_before >= 4, "evictions {evictions}");
    assert_eq!(gpu.describe()["key_cache"]["uploads"], uploads + 6);
    // The calibration keys are gone from the cache; the seeds stay.
    let cal = &gpu.describe()["calibration"];
    assert!(
        cal["rsa2048"]["per_op_us"].as_f64().unwrap() > 0.0,
        "{cal:#}"
    );
    // Dropping the backend wipes (zeroes) and frees every cached copy.
    drop(gpu);
}

/// The CPU backend with a cost seed far above any GPU's, so that a test's
/// first batch goes to the GPU (small batches might otherwise measure
/// faster on the CPU). Everything else is the CPU backend's own.
struct SlowSeededCpu(Arc<CpuBackend>);

impl Backend for SlowSeededCpu {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> &sigmux::backend::Capabilities {
        self.0.capabilities()
    }
    fn sign_batch(
        &self,
        key: &Arc<Key>,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> sigmux::Result<Vec<Vec<u8>>> {
        self.0.sign_batch(key, scheme, inputs)
    }
    fn needs_check(&self, scheme: Scheme) -> bool {
        self.0.needs_check(scheme)
    }
    fn checks_own_results(&self, scheme: Scheme) -> bool {
        self.0.checks_own_results(scheme)
    }
    fn cost_seed(&self, _kind: KeyKind, _scheme: Scheme) -> Option<sigmux::backend::CostSeed> {
        Some(sigmux::backend::CostSeed {
            per_batch_us: 1e7,
            per_op_us: 1e6,
        })
    }
    fn executor(&self) -> Option<&rayon::ThreadPool> {
        self.0.executor()
    }
}

#[test]
fn an_injected_device_fault_quarantines_the_gpu_and_the_cpu_answers() {
    let Some(gpus) = gpus("injected_fault", &cuda_cfg()) else {
        return;
    };
    for (kind, scheme) in [
        (KeyKind::Rsa2048, Scheme::RsaPssRsaeSha256),
        (KeyKind::P256, Scheme::EcdsaSecp256r1Sha256),
        (KeyKind::Ed25519, Scheme::Ed25519),
    ] {
        let gpu = gpus[0].clone();
        gpu.inject_faults_for_test(1);
        let before = gpu.device_check_faults();
        // The CPU claims to be slow, so the scheduler sends the first
        // batch to the GPU whatever the two measured at start.
        let engine = gpu_then_cpu(&gpu);
        let key = Key::ephemeral("gpu-test", kind).unwrap();
        sign_verified(&engine, &key, scheme, 64, scheme.name());
        assert_eq!(gpu.device_check_faults(), before + 1, "{scheme}");
        let report = engine.report();
        let b = &report["backends"][0];
        assert_eq!(b["health"]["state"], "quarantined", "{b:#}");
    }
}

#[test]
fn a_device_fault_takes_the_gpu_out_of_rotation_and_the_cpu_answers_everything() {
    // A faulted context (an Xid error: every later CUDA call fails) cannot
    // be caused on purpose on a real GPU; the fake driver does it on
    // request, and this test runs in a process of its own, since the fault
    // outlives it.
    if std::env::var_os("SIGMUX_FAKE_CUDA_FAULT").is_none() {
        eprintln!("device_fault: run by the fake-driver test only; skipped");
        return;
    }
    let gpus = gpus("device_fault", &cuda_cfg()).expect("the fake driver");
    let gpu = gpus[0].clone();
    let engine = gpu_then_cpu(&gpu);
    // SAFETY: the fake libcuda.so is loaded (cudarc opened it); the symbol
    // is its test hook, `void (void)`.
    unsafe {
        let lib = libc::dlopen(c"libcuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        assert!(!lib.is_null(), "libcuda.so is not loaded");
        let hook = libc::dlsym(lib, c"sigmux_fake_cuda_fault_next_launch".as_ptr());
        assert!(!hook.is_null(), "not the fake driver");
        std::mem::transmute::<*mut libc::c_void, extern "C" fn()>(hook)();
    }
    let scheme = Scheme::EcdsaSecp256r1Sha256;
    let key = Key::ephemeral("gpu-test", KeyKind::P256).unwrap();
    for round in 0..3 {
        for sig in sign_verified(&engine, &key, scheme, 24, &format!("round {round}")) {
            if round > 0 {
                assert_eq!(sig.backend, "cpu", "round {round}");
            }
        }
    }
    let report = engine.report();
    let b = &report["backends"][0];
    assert_eq!(b["name"], "cuda:0");
    assert_eq!(b["health"]["state"], "failing", "{b:#}");
    assert!(
        b["health"]["reason"]
            .as_str()
            .unwrap()
            .contains("CUDA_ERROR_ILLEGAL_ADDRESS"),
        "{b:#}"
    );
    assert!(
        b["health"]["reason"]
            .as_str()
            .unwrap()
            .contains("context is lost: restart sigmux"),
        "{b:#}"
    );
    drop(engine);
    // Dropping the backend on a dead context (the wipes fail) must not
    // hang or panic.
    drop(gpus);
    drop(gpu);
}

#[test]
fn without_a_gpu_the_backend_is_unavailable_with_a_reason() {
    let reason = match cuda::discover(&cuda_cfg()) {
        Ok(_) => {
            eprintln!("unavailable_with_a_reason: GPU PATH: nothing to check here");
            return;
        }
        Err(r) => r,
    };
    eprintln!("unavailable_with_a_reason: NO-GPU PATH ({reason})");
    assert!(!reason.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sigmux"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("SIGMUX_LOG", "error")
            .output()
            .unwrap()
    };
    let out = run(&["backends"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("cuda: unavailable: {reason}");
    assert!(text.contains(&want), "want {want:?} in:\n{text}");

    let out = run(&["backends", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cuda = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "cuda")
        .unwrap_or_else(|| panic!("no cuda entry: {v:#}"));
    assert_eq!(cuda["availability"]["state"], "unavailable");
    assert_eq!(cuda["availability"]["reason"], reason.as_str());

    // Asking for the GPU is one clear line naming the reason.
    let out = run(&[
        "bench",
        "--backend",
        "cuda",
        "--scheme",
        "rsa_pkcs1_sha256",
        "--duration",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!("sigmux: error: backend cuda: {reason}"),
        "{err}"
    );
}

/// The device tests of this file, the CLI's `backends` and a bench run,
/// on a machine without a GPU: against tests/fake_cuda/driver.cpp, a mock
/// libcuda whose launches run the kernels' host build (kernels/host/) over
/// the buffers the backend really uploaded. So the CUDA backend's host side
/// (module loading from NVRTC's real CUBINs, key slots, pinned buffers,
/// deferred streams, launch arguments, the device check, quarantine, the
/// key cache) runs in CI. The driver is strict where a GPU is unforgiving:
/// stream work runs only at a synchronisation, new memory is garbage, every
/// kernel argument and copy must lie inside a live allocation; a breach is
/// a "fake-cuda: VIOLATION" line and a device fault. On a machine with a
/// GPU the tests above run on it instead and this one has nothing to do.
#[test]
fn the_device_tests_pass_against_a_fake_driver_running_the_kernels_host_build() {
    if fake_driver() {
        return; // the child run itself
    }
    if let Ok((_, devices @ 1..)) = cuda::device::driver_status() {
        eprintln!("fake_driver: {devices} real GPU(s) present; the tests above ran there");
        return;
    }
    if let Err(e) = cuda::nvrtc::load(None) {
        assert!(
            std::env::var("SIGMUX_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "fake_driver: SIGMUX_REQUIRE_NVRTC=1 but NVRTC cannot be loaded: {e}"
        );
        eprintln!("fake_driver: SKIPPED, no NVRTC ({e}); source scripts/deps.sh to install it");
        return;
    }
    let lib_dir = build_fake_driver();
    let library_path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", lib_dir.display()),
        _ => lib_dir.display().to_string(),
    };
    let tests = [
        "every_scheme_signs_on_the_gpu_through_the_engine_and_verifies",
        "rsa_signs_under_every_thread_mapping_and_verifies",
        "concurrent_rsa_batches_with_more_lanes_than_key_slots_use_their_own_keys",
        "sampled_ecdsa_checks_still_give_valid_signatures",
        "the_key_cache_evicts_least_recently_used_and_uploads_again",
        "an_injected_device_fault_quarantines_the_gpu_and_the_cpu_answers",
    ];
    let out = Command::new(std::env::current_exe().unwrap())
        .args(tests)
        .args(["--exact", "--test-threads=1", "--nocapture"])
        .env("LD_LIBRARY_PATH", &library_path)
        .env("SIGMUX_FAKE_CUDA", "1")
        .env("SIGMUX_REQUIRE_GPU", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "device tests failed:\n{stdout}");
    assert!(
        stdout.contains(&format!("{} passed; 0 failed", tests.len())),
        "{stdout}"
    );
    assert!(!stderr.contains("fake-cuda: VIOLATION"), "{stderr}");
    assert_eq!(
        stderr
            .matches("GPU PATH on sigmux fake CUDA driver (host emulation)")
            .count(),
        tests.len() + 1, // the key cache test starts two backends
        "{stderr}"
    );

    // A faulted device, in a process of its own.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_device_fault_takes_the_gpu_out_of_rotation_and_the_cpu_answers_everything",
            "--exact",
            "--nocapture",
        ])
        .env("LD_LIBRARY_PATH", &library_path)
        .env("SIGMUX_FAKE_CUDA", "1")
        .env("SIGMUX_FAKE_CUDA_FAULT", "1")
        .env("SIGMUX_REQUIRE_GPU", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed; 0 failed"),
        "device fault test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("fake-cuda: injected device fault"),
        "{stderr}"
    );

    // The CLI as the GPU runbook (scripts/gpu-bench.sh) drives it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sigmux.toml");
    std::fs::write(
        &config,
        format!(
            "[backends.cuda]\nmax_batch = 16\ncache_dir = {:?}\n",
            cuda_cfg().cache_dir.unwrap()
        ),
    )
    .unwrap();
    let sigmux = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("LD_LIBRARY_PATH", &library_path)
            .env("SIGMUX_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "sigmux {args:?}: {stderr}");
        assert!(!stderr.contains("fake-cuda: VIOLATION"), "{stderr}");
        out.stdout
    };
    let v: serde_json::Value = serde_json::from_slice(&sigmux(&["backends", "--json"])).unwrap();
    let gpu = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "cuda:0")
        .unwrap_or_else(|| panic!("no cuda:0: {v:#}"));
    assert_eq!(gpu["availability"]["state"], "available", "{gpu:#}");
    assert_eq!(
        gpu["details"]["device"], "sigmux fake CUDA driver (host emulation)",
        "{gpu:#}"
    );
    // name, seconds, batch, concurrency, the run's own flags.
    for (name, secs, batch, concurrency, args) in [
        // Emulated RSA is slow: long enough for groups to finish on a busy
        // machine.
        (
            "rsa2048 coop:8",
            "4",
            "4",
            "16",
            &[
                "--scheme",
                "rsa_pkcs1_sha256",
                "--kind",
                "rsa2048",
                "--cuda-rsa-mapping",
                "coop:8",
            ][..],
        ),
        (
            "p256 sample:4",
            "1",
            "16",
            "64",
            &[
                "--scheme",
                "ecdsa_secp256r1_sha256",
                "--cuda-check",
                "sample:4",
            ][..],
        ),
        ("ed25519", "1", "16", "64", &["--scheme", "ed25519"][..]),
    ] {
        let json = dir.path().join("bench.json");
        sigmux(
            &[
                &[
                    "bench",
                    "--backend",
                    "cuda",
                    "--duration",
                    secs,
                    "--batch",
                    batch,
                    "--concurrency",
                    concurrency,
                    "--compare-raw",
                    "--json",
                    json.to_str().unwrap(),
                ][..],
                args,
            ]
            .concat(),
        );
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        eprintln!("fake_driver: bench {name}: {r}");
        assert!(r["ops"].as_u64().unwrap() > 0, "{name}: {r:#}");
        assert!(
            r["raw_ops_per_sec"].as_f64().unwrap() > 0.0,
            "{name}: {r:#}"
        );
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{name}: {r:#}");
        assert!(
            r["device"].as_str().unwrap().contains("fake CUDA driver"),
            "{name}: {r:#}"
        );
    }
}

/// Compiles tests/fake_cuda/driver.cpp with the kernels' host build into a
/// `libcuda.so` (once per source content) and returns its folder.
fn build_fake_driver() -> std::path::PathBuf {
    use std::hash::{Hash, Hasher};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("tests/fake_cuda/driver.cpp")];
    let mut dirs = vec![root.join("kernels")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                sources.push(p);
            }
        }
    }
    sources.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for s in &sources {
        s.hash(&mut h);
        std::fs::read(s).unwrap().hash(&mut h);
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fake-cuda-{:016x}", h.finish()));
    let lib = dir.join("libcuda.so");
    if lib.exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let partial = dir.join("libcuda.so.partial");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut cmd = Command::new(&cxx);
    cmd.args([
        "-std=c++17",
        "-O3",
        "-shared",
        "-fPIC",
        "-Wall",
        "-Werror",
        "-o",
    ])
    .arg(&partial)
    .arg("-I")
    .arg(root.join("kernels"))
    .arg(root.join("tests/fake_cuda/driver.cpp"));
    for s in &sources {
        if s.parent() == Some(&root.join("kernels/host"))
            && s.extension().is_some_and(|x| x == "cpp")
        {
            cmd.arg(s);
        }
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{cxx}: {e}"));
    assert!(
        out.status.success(),
        "building the fake driver failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &lib).unwrap();
    dir
}
