//! Claims on backends' thread pools. An engine slot whose backend offers a
//! pool ([`Backend::executor`](crate::backend::Backend::executor)) turns
//! every thread of that pool into one of its workers: each runs the slot's
//! worker loop until the engine stops. A second slot doing the same to the
//! same pool (two engines over one backend, or one backend listed twice)
//! would queue its loops behind loops that never end, and its batches would
//! never run. So a pool has at most one claim at a time; a slot that cannot
//! claim its backend's pool runs the backend on threads of its own instead.

use std::collections::HashSet;
use std::sync::OnceLock;

use parking_lot::Mutex;

/// Pools claimed now, by address. A pool lives inside its backend, which the
/// claiming slot keeps alive, so an address cannot be reused while claimed.
fn claimed() -> &'static Mutex<HashSet<usize>> {
    static CLAIMED: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    CLAIMED.get_or_init(Default::default)
}

/// The exclusive right to run worker loops on one pool, released on drop.
#[derive(Debug)]
pub(crate) struct PoolClaim {
    addr: usize,
}

impl PoolClaim {
    /// Claims `pool`, or `None` when another slot holds it.
    pub(crate) fn try_claim(pool: &rayon::ThreadPool) -> Option<PoolClaim> {
        let addr = std::ptr::from_ref(pool) as usize;
        let fresh = claimed().lock().insert(addr);
        // Built only when claimed: a claim dropped unclaimed would release
        // the holder's.
        fresh.then(|| PoolClaim { addr })
    }
}

impl Drop for PoolClaim {
    fn drop(&mut self) {
        claimed().lock().remove(&self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_has_one_claim_at_a_time() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let other = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let first = PoolClaim::try_claim(&pool).expect("a free pool can be claimed");
        assert!(PoolClaim::try_claim(&pool).is_none());
        let _other = PoolClaim::try_claim(&other).expect("claims are per pool");
        drop(first);
        assert!(PoolClaim::try_claim(&pool).is_some());
    }
}
