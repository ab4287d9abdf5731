//! Load balancers: pick an endpoint index without taking a lock.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rand::Rng;

use crate::config::LbPolicy;

/// Longest precomputed round-robin schedule; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

/// A load balancer over a fixed endpoint list.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round robin, precomputed at load time and walked with one atomic counter.
    RoundRobin {
        /// Endpoint indexes in visiting order.
        schedule: Box<[u32]>,
        /// Position in `schedule`.
        next: AtomicUsize,
    },
    /// Power of two random choices; the one with fewer active requests per unit of weight wins.
    LeastRequest {
        /// Endpoint weights.
        weights: Box<[u32]>,
    },
}

impl Balancer {
    /// A balancer for endpoints with these weights (all ≥ 1).
    pub fn new(policy: LbPolicy, weights: &[u32]) -> Balancer {
        match policy {
            LbPolicy::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(weights).into_boxed_slice(),
                next: AtomicUsize::new(0),
            },
            LbPolicy::LeastRequest => Balancer::LeastRequest {
                weights: weights.into(),
            },
        }
    }

    /// The next endpoint; `active(i)` tells endpoint `i`'s requests in flight. `None` when empty.
    #[inline]
    pub fn pick(&self, active: impl Fn(usize) -> u64) -> Option<usize> {
        match self {
            Balancer::RoundRobin { schedule, next } => {
                if schedule.is_empty() {
                    return None;
                }
                let i = next.fetch_add(1, Relaxed) % schedule.len();
                Some(schedule[i] as usize)
            }
            Balancer::LeastRequest { weights } => match weights.len() {
                0 => None,
                1 => Some(0),
                n => {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    let mut b = rng.random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    // active/weight compared without division.
                    let (wa, wb) = (weights[a] as u64, weights[b] as u64);
                    if active(a) * wb <= active(b) * wa {
                        Some(a)
                    } else {
                        Some(b)
                    }
                }
            },
        }
    }
}

/// nginx's smooth weighted round robin, unrolled into a schedule (e.g. 5,1,1 → a a b a c a a).
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| x as u64 / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in w.iter_mut() {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        let s = smooth_schedule(&[100_000, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 1 && s.contains(&1));
    }

    #[test]
    fn round_robin_cycles() {
        let b = Balancer::new(LbPolicy::RoundRobin, &[1, 2]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(|_| 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 4);
        assert!(Balancer::new(LbPolicy::RoundRobin, &[])
            .pick(|_| 0)
            .is_none());
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let b = Balancer::new(LbPolicy::LeastRequest, &[1, 1]);
        // Endpoint 0 is busy: with two distinct choices out of two, endpoint 1 always wins.
        for _ in 0..100 {
            assert_eq!(b.pick(|i| if i == 0 { 10 } else { 0 }), Some(1));
        }
    }
}
