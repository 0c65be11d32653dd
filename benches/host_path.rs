//! What a GPU batch costs the host, measured without a GPU. At a device's
//! rate (millions of signatures a second) the per-request work around the
//! kernels decides whether the device is kept busy. There are two parts:
//!
//! - `cuda-host/*`: the CUDA backend's encoding of a batch of 65,536 into
//!   the kernels' layout and its decoding of the results (in parallel on
//!   rayon's pool, as the backend runs it);
//! - `engine/*`: the engine's own cost per request, for a group of 65,536
//!   through a backend that answers at once, with the caller's share (the
//!   group built, its answers dropped) included.
//!
//! Elements/s here is an upper bound on what one lane (CUDA) or one caller
//! thread (engine) can feed; `sigmux bench --backend cuda --compare-raw`
//! on a GPU measures the whole.
//!
//! ```text
//! cargo bench --bench host_path
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sigmux::backend::cuda::{codec, ec_layout::Curve, ed_layout};
use sigmux::backend::{Backend, Capabilities, CostSeed};
use sigmux::{Engine, EngineConfig, Key, KeyKind, Placement, Scheme, SignInput};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 65_536;

fn digests(len: usize) -> Vec<Vec<u8>> {
    (0..N)
        .map(|i| (0..len).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect()
}

fn cuda_host(c: &mut Criterion) {
    let mut g = c.benchmark_group("cuda-host");
    g.throughput(Throughput::Elements(N as u64));
    let rsa = Key::ephemeral("bench", KeyKind::Rsa2048).expect("key");
    let inputs = digests(32);
    let mut words = vec![0u32; 64 * N];
    for scheme in [Scheme::RsaPkcs1Sha256, Scheme::RsaPssRsaeSha256] {
        g.bench_function(format!("rsa2048/{scheme}/encode"), |b| {
            b.iter(|| {
                codec::rsa_encode(&rsa, scheme, black_box(&inputs), &mut words).expect("encode")
            })
        });
    }
    g.bench_function("rsa2048/decode", |b| {
        b.iter(|| codec::rsa_signatures(black_box(&words), N, 64))
    });
    let mut z = vec![0u32; 8 * N];
    g.bench_function("p256/z", |b| {
        b.iter(|| {
            codec::ec_z_into(
                Curve::P256,
                Scheme::EcdsaSecp256r1Sha256,
                black_box(&inputs),
                &mut z,
            )
            .expect("z")
        })
    });
    let r: Vec<u32> = z.iter().map(|w| w | 0x8000_0000).collect();
    g.bench_function("p256/der", |b| {
        b.iter(|| codec::ec_der(black_box(&r), black_box(&z), N, 8).expect("der"))
    });
    let sigs = [r.clone(), r].concat();
    g.bench_function("ed25519/decode", |b| {
        b.iter(|| ed_layout::signatures(black_box(&sigs), N))
    });
    g.finish();
}

/// Answers every batch at once with one fixed, valid signature, and says
/// it checked its own results, so the engine adds no check of its own.
struct Instant0 {
    caps: Capabilities,
    sig: Vec<u8>,
}

impl Backend for Instant0 {
    fn name(&self) -> &str {
        "instant"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn sign_batch(
        &self,
        _key: &Arc<Key>,
        _scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> sigmux::Result<Vec<Vec<u8>>> {
        Ok(inputs.iter().map(|_| self.sig.clone()).collect())
    }
    fn checks_own_results(&self, _scheme: Scheme) -> bool {
        true
    }
    fn cost_seed(&self, _kind: KeyKind, _scheme: Scheme) -> Option<CostSeed> {
        None
    }
}

fn engine(c: &mut Criterion) {
    let key = Key::ephemeral("bench", KeyKind::P256).expect("key");
    let scheme = Scheme::EcdsaSecp256r1Sha256;
    let backend = Arc::new(Instant0 {
        caps: Capabilities {
            schemes: vec![scheme],
            placements: vec![Placement::Soft],
            max_batch: N,
            parallelism: 4,
        },
        sig: vec![0x30; 72],
    });
    let cfg = EngineConfig {
        max_batch: N,
        queue_capacity: 4 * N,
        ..EngineConfig::default()
    };
    let engine = Engine::new(cfg, vec![backend as Arc<dyn Backend>]).expect("engine");
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("p256/group-65536", |b| {
        b.iter(|| {
            let inputs = (0..N).map(|_| SignInput::Digest(vec![1; 32])).collect();
            let answers = engine
                .submit_group(key.clone(), scheme, inputs, None)
                .expect("admitted")
                .wait();
            assert!(answers.iter().all(Result::is_ok));
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = cuda_host, engine
}
criterion_main!(benches);
