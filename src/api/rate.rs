//! Per-caller issuance rate: a token bucket per caller, one token per SVID
//! asked for, so one runaway caller cannot take the CA's whole signing
//! capacity from the others (`issuance.svids_per_caller_per_second`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Callers tracked before full buckets (the same as no bucket) are
/// dropped.
const TIDY_ABOVE: usize = 4096;

/// Token buckets by caller.
pub struct CallerRate {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl CallerRate {
    /// `per_second` SVIDs per caller on average, up to `burst` at once.
    #[must_use]
    pub fn new(per_second: f64, burst: f64) -> CallerRate {
        CallerRate {
            per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens from `caller`'s bucket at `now`, or, when it holds
    /// fewer, takes none and returns how long until it holds `n` (never
    /// more than the time to fill a whole bucket, since `n` above the burst
    /// is taken from a full one).
    pub fn take(&self, caller: &str, n: usize, now: Instant) -> Result<(), Duration> {
        let want = (n as f64).min(self.burst);
        let mut buckets = self.buckets.lock();
        if buckets.len() > TIDY_ABOVE {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
        }
        let b = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = b.refilled(now, self.per_second, self.burst);
        b.at = now;
        if b.tokens >= want {
            b.tokens -= want;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((want - b.tokens) / self.per_second))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let r = CallerRate::new(10.0, 20.0);
        let t0 = Instant::now();
        assert_eq!(r.take("a", 15, t0), Ok(()));
        // 5 left: 8 more needs 0.3 s of refill.
        assert_eq!(r.take("a", 8, t0), Err(Duration::from_secs_f64(0.3)));
        assert_eq!(r.take("b", 20, t0), Ok(()));
        let t1 = t0 + Duration::from_millis(400);
        assert_eq!(r.take("a", 8, t1), Ok(()));
        // Refill stops at the burst; a request above it takes a full bucket.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(r.take("a", 1000, t2), Ok(()));
        assert!(r.take("a", 1, t2).is_err());
    }
}
