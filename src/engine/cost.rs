//! The cost model the scheduler uses: the time of a batch of `n`
//! operations is `per_batch + n * per_op`, fitted live from observed
//! batches by exponentially weighted least squares and seeded by
//! calibration.

use serde::Serialize;

/// How fast old observations fade: each new batch weighs this much of the
/// fit's memory.
const ALPHA: f64 = 0.1;

/// A live estimate of one backend's cost for one key kind and scheme.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CostModel {
    /// Fixed cost per batch, microseconds.
    pub per_batch_us: f64,
    /// Marginal cost per operation, microseconds.
    pub per_op_us: f64,
    /// Batches observed since start.
    pub observed: u64,
    // Weighted moments of (n, t) for the least-squares fit.
    #[serde(skip)]
    m_n: f64,
    #[serde(skip)]
    m_t: f64,
    #[serde(skip)]
    m_nn: f64,
    #[serde(skip)]
    m_nt: f64,
}

impl CostModel {
    /// A model seeded from calibration.
    pub fn seeded(per_batch_us: f64, per_op_us: f64) -> CostModel {
        CostModel {
            per_batch_us: per_batch_us.max(0.0),
            per_op_us: per_op_us.max(0.01),
            observed: 0,
            m_n: 0.0,
            m_t: 0.0,
            m_nn: 0.0,
            m_nt: 0.0,
        }
    }

    /// Estimated time to run a batch of `n`, microseconds.
    pub fn batch_us(&self, n: usize) -> f64 {
        self.per_batch_us + self.per_op_us * n as f64
    }

    /// Into how many parts (1 to `workers`) a batch of `n` is worth cutting
    /// for a backend that runs `workers` batches at once: each part must
    /// carry at least its own fixed cost in operations. On a CPU pool the
    /// fixed cost is tiny and every worker gets a share; on a GPU, whose
    /// streams share one device, a batch too small to fill it costs a
    /// launch's latency whatever its size, so cutting it only queues the
    /// pieces behind each other (measured on an H200: RSA-2048 groups of
    /// 64 cut in four took four times the latency of one launch).
    pub fn parts(&self, n: usize, workers: usize) -> usize {
        let workers = workers.max(1);
        if self.per_batch_us <= 0.0 {
            return workers.min(n.max(1));
        }
        let worth = (n as f64 * self.per_op_us / self.per_batch_us).floor();
        (worth.min(workers as f64) as usize).clamp(1, workers.min(n.max(1)))
    }

    /// Folds in one observed batch of `n` operations that took `t_us`.
    pub fn observe(&mut self, n: usize, t_us: f64) {
        let n = n as f64;
        if self.observed == 0 {
            // Start the moments at the seed so early batches refine it
            // rather than replace it.
            self.m_n = n;
            self.m_t = self.batch_us(n as usize);
            self.m_nn = n * n;
            self.m_nt = n * self.m_t;
        }
        self.observed += 1;
        self.m_n += ALPHA * (n - self.m_n);
        self.m_t += ALPHA * (t_us - self.m_t);
        self.m_nn += ALPHA * (n * n - self.m_nn);
        self.m_nt += ALPHA * (n * t_us - self.m_nt);
        let var = self.m_nn - self.m_n * self.m_n;
        if var > 0.25 {
            let slope = (self.m_nt - self.m_n * self.m_t) / var;
            if slope > 0.0 {
                self.per_op_us = slope;
                self.per_batch_us = (self.m_t - slope * self.m_n).max(0.0);
                return;
            }
        }
        // Batch sizes have not varied enough to separate the two costs:
        // keep the fixed cost and attribute the rest to the operations.
        self.per_op_us = ((self.m_t - self.per_batch_us) / self.m_n.max(1.0)).max(0.01);
    }
}

/// One candidate backend as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Microseconds of work already queued on it.
    pub queued_us: f64,
    /// Its cost model for this key kind and scheme.
    pub cost: CostModel,
    /// Its largest batch.
    pub max_batch: usize,
}

impl Candidate {
    fn finish_us(&self, n: usize) -> f64 {
        if n == 0 {
            return self.queued_us;
        }
        let chunks = n.div_ceil(self.max_batch.max(1));
        self.queued_us + chunks as f64 * self.cost.per_batch_us + n as f64 * self.cost.per_op_us
    }

    /// The most operations it can finish by `t_us`.
    fn capacity_by(&self, t_us: f64) -> usize {
        let room = t_us - self.queued_us - self.cost.per_batch_us;
        if room <= 0.0 {
            return 0;
        }
        let mut n = (room / self.cost.per_op_us).floor() as usize;
        while n > 0 && self.finish_us(n) > t_us {
            n -= 1;
        }
        n
    }
}

/// Splits `n` operations across `candidates` so that the last of them
/// finishes as early as possible. Returns `(candidate index, count)` pairs
/// with non-zero counts. A batch is split only when that beats the best
/// single backend by a clear margin, since splitting has its own costs.
pub fn plan(n: usize, candidates: &[Candidate]) -> Vec<(usize, usize)> {
    let Some((best, best_finish)) = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.finish_us(n)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
    else {
        return Vec::new();
    };
    if candidates.len() == 1 || n < 2 {
        return vec![(best, n)];
    }
    // Binary search the earliest time by which all n can be done.
    let (mut lo, mut hi) = (0.0f64, best_finish);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        let cap: usize = candidates.iter().map(|c| c.capacity_by(mid)).sum();
        if cap >= n {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let mut left = n;
    let mut parts = Vec::new();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        candidates[a]
            .cost
            .per_op_us
            .total_cmp(&candidates[b].cost.per_op_us)
    });
    for i in order {
        if left == 0 {
            break;
        }
        let take = candidates[i].capacity_by(hi).min(left);
        if take > 0 {
            parts.push((i, take));
            left -= take;
        }
    }
    if left > 0 {
        // Rounding left a remainder: give it to the best single backend.
        match parts.iter_mut().find(|(i, _)| *i == best) {
            Some(p) => p.1 += left,
            None => parts.push((best, left)),
        }
    }
    let split_finish = parts
        .iter()
        .map(|&(i, k)| candidates[i].finish_us(k))
        .fold(0.0, f64::max);
    if parts.len() > 1 && split_finish < 0.9 * best_finish {
        parts
    } else {
        vec![(best, n)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(queued: f64, per_batch: f64, per_op: f64) -> Candidate {
        Candidate {
            queued_us: queued,
            cost: CostModel::seeded(per_batch, per_op),
            max_batch: 1 << 20,
        }
    }

    #[test]
    fn picks_earliest_finish_not_fastest_per_op() {
        // A GPU-like backend with a large fixed cost loses a small batch.
        let c = [cand(0.0, 2000.0, 1.0), cand(0.0, 5.0, 50.0)];
        assert_eq!(plan(4, &c), vec![(1, 4)]);
        assert_eq!(plan(10_000, &c), vec![(0, 10_000)]);
        // A busy backend loses to an idle one.
        let c = [cand(10_000.0, 5.0, 10.0), cand(0.0, 5.0, 20.0)];
        assert_eq!(plan(10, &c), vec![(1, 10)]);
    }

    #[test]
    fn splits_when_that_finishes_sooner() {
        let c = [cand(0.0, 10.0, 10.0), cand(0.0, 10.0, 10.0)];
        let p = plan(1000, &c);
        assert_eq!(p.len(), 2);
        assert_eq!(p.iter().map(|x| x.1).sum::<usize>(), 1000);
        assert!(p.iter().all(|x| x.1 >= 450));
        // Unequal speeds: the faster one takes about twice as much.
        let c = [cand(0.0, 10.0, 10.0), cand(0.0, 10.0, 20.0)];
        let p = plan(900, &c);
        let fast = p.iter().find(|x| x.0 == 0).unwrap().1;
        assert!((580..=620).contains(&fast), "{p:?}");
    }

    #[test]
    fn batches_are_cut_only_into_parts_that_outweigh_their_fixed_cost() {
        // A CPU pool: a fixed cost far under one operation's.
        let cpu = CostModel::seeded(5.0, 20.0);
        assert_eq!(cpu.parts(1, 16), 1);
        assert_eq!(cpu.parts(3, 16), 3);
        assert_eq!(cpu.parts(1000, 16), 16);
        // An H200's RSA-2048 calibration: 19.9 ms a launch, 1.7 us an item.
        let gpu = CostModel::seeded(19_908.0, 1.704);
        assert_eq!(gpu.parts(64, 4), 1);
        assert_eq!(gpu.parts(16_384, 4), 1);
        assert_eq!(gpu.parts(24_000, 4), 2);
        assert_eq!(gpu.parts(65_536, 4), 4);
        assert_eq!(CostModel::seeded(0.0, 1.0).parts(100, 4), 4);
        assert_eq!(gpu.parts(0, 4), 1);
        assert_eq!(cpu.parts(10, 0), 1);
    }

    #[test]
    fn model_learns_from_observations() {
        let mut m = CostModel::seeded(10.0, 100.0);
        for i in 0..200 {
            let n = 1 + (i % 7) * 10;
            m.observe(n, 50.0 + 20.0 * n as f64);
        }
        assert!((m.per_op_us - 20.0).abs() < 1.0, "{m:?}");
        assert!((m.per_batch_us - 50.0).abs() < 15.0, "{m:?}");
        let mut m = CostModel::seeded(10.0, 100.0);
        for _ in 0..100 {
            m.observe(8, 10.0 + 8.0 * 30.0);
        }
        assert!((m.per_op_us - 30.0).abs() < 1.0, "{m:?}");
    }
}
