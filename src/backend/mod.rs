//! The [`Backend`] trait: something that can sign a batch for one key and
//! scheme. The engine chooses among backends; backends never know which
//! front door a request came from.

pub mod cpu;
pub mod cuda;
pub mod pkcs11;

use std::sync::Arc;

use serde::Serialize;

use crate::error::Result;
use crate::keys::{Key, Placement};
use crate::scheme::{KeyKind, Scheme};

/// What a backend can do, fixed when it starts.
#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    /// Schemes it signs.
    pub schemes: Vec<Scheme>,
    /// Key placements it can use.
    pub placements: Vec<Placement>,
    /// The largest batch it accepts in one call.
    pub max_batch: usize,
    /// How many operations it runs at the same time (threads, sessions,
    /// streams); the engine keeps at most this many batches in flight on it.
    pub parallelism: usize,
}

/// Whether a backend may be given work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Availability {
    /// Ready.
    Available,
    /// Cannot run here at all (no device, no driver, no token).
    Unavailable(String),
}

/// A backend's per-operation cost seed for one key kind and scheme, from
/// calibration at start.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CostSeed {
    /// Fixed cost of one batch call, in microseconds.
    pub per_batch_us: f64,
    /// Cost of one operation when the backend is busy, in microseconds of
    /// wall time (already divided by its internal parallelism).
    pub per_op_us: f64,
}

/// Something that signs batches. Implementations are blocking: the engine
/// calls `sign_batch` from its own worker threads.
pub trait Backend: Send + Sync {
    /// A short unique name, e.g. `cpu` or `pkcs11:token-a`.
    fn name(&self) -> &str;

    /// What it can do.
    fn capabilities(&self) -> &Capabilities;

    /// Whether it can run here.
    fn availability(&self) -> Availability {
        Availability::Available
    }

    /// Whether this backend holds (or can load) `key`. Soft backends can
    /// use any soft key; an HSM backend only the keys in its token.
    fn holds(&self, key: &Key) -> bool {
        self.capabilities().placements.contains(&key.placement())
    }

    /// Signs each input with `key` under `scheme`. Inputs are digests of the
    /// scheme's hash for RSA and ECDSA and messages for Ed25519. Returns one
    /// signature per input, in order: RSA as big-endian integers of the
    /// modulus length, ECDSA as DER, Ed25519 as 64 bytes.
    fn sign_batch(
        &self,
        key: &Arc<Key>,
        scheme: Scheme,
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>>;

    /// Whether the engine must verify this backend's non-RSA signatures
    /// before release (RSA signatures are always verified, by the engine or
    /// by the backend itself: see [`Backend::checks_own_results`]).
    fn needs_check(&self, _scheme: Scheme) -> bool {
        false
    }

    /// Whether this backend checks every signature of `scheme` itself,
    /// against the public key (e.g. `s^e mod n` for RSA, ECDSA verification
    /// for ECDSA), before it returns them, and never returns one that
    /// fails: it reports the mismatch as
    /// [`Error::WrongResult`](crate::error::Error::WrongResult) or computes
    /// the signature again by another way. The engine then does not check
    /// those signatures a second time (unless `engine.recheck_self_checked`
    /// asks it to): at GPU rates its CPU check would be the bottleneck, and
    /// on the CPU it would repeat the libraries' own check. Only a backend
    /// that really does this, and has a test that shows it, may answer
    /// `true`.
    fn checks_own_results(&self, _scheme: Scheme) -> bool {
        false
    }

    /// Calibration results at start, for seeding the scheduler's cost model.
    fn cost_seed(&self, kind: KeyKind, scheme: Scheme) -> Option<CostSeed>;

    /// A thread pool the engine should run this backend's batches on, so
    /// that signing and checking share its threads without hand-offs;
    /// `None` means the engine's own worker threads call `sign_batch`.
    fn executor(&self) -> Option<&rayon::ThreadPool> {
        None
    }

    /// Backend-specific facts for `sigmux backends` (chosen engines etc.).
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
