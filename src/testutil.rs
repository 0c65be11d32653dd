//! Helpers shared by unit tests.

/// xorshift64: a small deterministic generator for fuzz-style inputs.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An engine over a one-thread CPU backend on AWS-LC: enough for tests that
/// sign a few certificates or CRLs.
pub(crate) fn cpu_engine() -> crate::engine::Engine {
    use crate::backend::cpu::{CpuBackend, CpuConfig, CpuEngine, EngineChoice};
    let cpu = CpuBackend::new(&CpuConfig {
        threads: 1,
        engine: EngineChoice::Fixed(CpuEngine::AwsLc),
        max_batch: 16,
    })
    .unwrap();
    crate::engine::Engine::new(
        crate::engine::EngineConfig::default(),
        vec![std::sync::Arc::new(cpu)],
    )
    .unwrap()
}

/// A key store in `dir` under a fixed test KEK.
pub(crate) fn key_store(dir: &std::path::Path) -> crate::keys::KeyStore {
    let kek = crate::keys::Kek::from_bytes(&[7u8; 32]).unwrap();
    crate::keys::KeyStore::open(dir, Some(kek)).unwrap()
}
