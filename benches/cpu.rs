//! Per-operation cost of each CPU library, per key kind and scheme, and of
//! the release check. `sigmux bench` measures the engine as a whole; this
//! measures the pieces it is made of.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sigmux::backend::cpu::{CpuEngine, CpuKey};
use sigmux::engine::check;
use sigmux::{Key, KeyKind, SignInput};

fn per_operation(c: &mut Criterion) {
    for kind in [
        KeyKind::Rsa2048,
        KeyKind::Rsa3072,
        KeyKind::Rsa4096,
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
    ] {
        let key = Key::ephemeral("bench", kind).expect("key generation");
        let ck = CpuKey::load(&key).expect("key loads");
        let scheme = sigmux::Scheme::default_for(kind);
        let input = scheme
            .prepare(SignInput::Message(b"criterion".to_vec()))
            .expect("input");
        let mut group = c.benchmark_group(format!("{kind}/{scheme}"));
        for engine in CpuEngine::ALL {
            group.bench_function(format!("sign/{engine}"), |b| {
                b.iter(|| ck.sign(engine, scheme, black_box(&input)).expect("sign"))
            });
        }
        let sig = ck.sign(CpuEngine::AwsLc, scheme, &input).expect("sign");
        group.bench_function("release-check", |b| {
            b.iter(|| {
                assert!(check::verify(
                    &key,
                    scheme,
                    black_box(&input),
                    black_box(&sig)
                ))
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = per_operation
}
criterion_main!(benches);
