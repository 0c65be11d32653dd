//! The keyless server's own work per request, around the signature:
//! decode the frame, look the key up and check the client may use it, map
//! the opcode, then build and encode the answer. Target: under 3 µs.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sigmux::backend::cpu::{CpuBackend, CpuConfig, CpuEngine, EngineChoice};
use sigmux::engine::Signature;
use sigmux::keyless::auth::{ClientIdentity, ClientMatch, Policy, Rule};
use sigmux::keyless::handler::{Handler, Step, encode};
use sigmux::keyless::protocol::{HEADER_LEN, Op, Request, split_frame};
use sigmux::{Engine, EngineConfig, Key, KeyKind, KeyStore};

fn per_request(c: &mut Criterion) {
    let cpu = CpuBackend::new(&CpuConfig {
        threads: 1,
        engine: EngineChoice::Fixed(CpuEngine::AwsLc),
        max_batch: 64,
    })
    .expect("cpu backend");
    let engine =
        Arc::new(Engine::new(EngineConfig::default(), vec![Arc::new(cpu)]).expect("engine"));
    let keys = Arc::new(KeyStore::in_memory());
    // A realistic store: the wanted key among a thousand others.
    for i in 0..1000 {
        keys.insert(Key::ephemeral(&format!("k{i}"), KeyKind::Ed25519).expect("key"));
    }
    let key = Key::ephemeral("edge", KeyKind::P256).expect("key");
    keys.insert(key.clone());
    let who = ClientIdentity {
        spiffe_id: Some("spiffe://example.org/proxy".into()),
        fingerprint: [0; 32],
    };
    let policy = Policy::new(vec![Rule {
        client: ClientMatch::SpiffeId("spiffe://example.org/proxy".into()),
        keys: vec!["edge".into()],
    }]);
    let handler = Handler::new(engine, keys, policy);
    let mut req = Request::new(7, Op::EcdsaSignSha256, vec![0x42; 32]);
    req.ski = Some(key.info().ski.0);
    req.sni = Some("www.example.com".into());
    let frame = req.encode().expect("encode");
    let signature = Signature {
        bytes: vec![0x30; 71],
        backend: "cpu",
    };
    c.bench_function("keyless/per_request_around_signature", |b| {
        b.iter(|| {
            let (h, len) = split_frame(black_box(&frame))
                .expect("frame")
                .expect("whole");
            let req = Request::decode(&h, &frame[HEADER_LEN..len]).expect("decode");
            let Step::Sign(id, sign) = handler.plan(req, &who) else {
                panic!("expected a signing step");
            };
            black_box(&sign);
            let resp = handler.finish(id, Ok(signature.clone()), &who);
            black_box(encode(id, &resp))
        })
    });
}

criterion_group!(benches, per_request);
criterion_main!(benches);
