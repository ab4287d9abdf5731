//! Load balancers: pick an endpoint index without taking a lock.
//!
//! Every policy takes an `available(i)` predicate (health checks, outlier ejection, and the
//! endpoint a retry wants to avoid) and never returns an unavailable endpoint while another one is
//! available; when none is, the caller decides whether to fail open.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rand::Rng;
use xxhash_rust::xxh64::xxh64;

use tern_config::LbPolicy;

/// Longest precomputed round-robin schedule; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;
/// Ring size for `ring_hash` (Envoy's minimum_ring_size default).
const RING_SIZE: u64 = 1024;
/// Lookup table size for `maglev` (Envoy's default; prime).
const MAGLEV_SIZE: usize = 65537;

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
    /// Weighted random.
    Random {
        /// Running sums of the weights.
        cumulative: Box<[u64]>,
    },
    /// Consistent hashing on a sorted ring of (hash, endpoint).
    RingHash {
        /// The ring, sorted by hash.
        ring: Box<[(u64, u32)]>,
    },
    /// Maglev lookup table.
    Maglev {
        /// Endpoint per slot.
        table: Box<[u32]>,
    },
}

impl Balancer {
    /// A balancer for endpoints with these addresses and weights (all weights ≥ 1).
    pub fn new(policy: LbPolicy, addresses: &[&str], weights: &[u32]) -> Balancer {
        match policy {
            LbPolicy::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(weights).into_boxed_slice(),
                next: AtomicUsize::new(0),
            },
            LbPolicy::LeastRequest => Balancer::LeastRequest {
                weights: weights.into(),
            },
            LbPolicy::Random => Balancer::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |acc, &w| {
                        *acc += w as u64;
                        Some(*acc)
                    })
                    .collect(),
            },
            LbPolicy::RingHash => Balancer::RingHash {
                ring: build_ring(addresses, weights).into_boxed_slice(),
            },
            LbPolicy::Maglev => Balancer::Maglev {
                table: build_maglev(addresses, weights).into_boxed_slice(),
            },
        }
    }

    /// The next endpoint among those `available`; `hash` feeds consistent hashing (random when absent).
    #[inline]
    pub fn pick(
        &self,
        hash: Option<u64>,
        available: impl Fn(usize) -> bool,
        active: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin { schedule, next } => {
                let n = schedule.len();
                if n == 0 {
                    return None;
                }
                let start = next.fetch_add(1, Relaxed);
                (0..n)
                    .map(|k| schedule[(start + k) % n] as usize)
                    .find(|&i| available(i))
            }
            Balancer::LeastRequest { weights } => {
                let n = weights.len();
                let mut rng = rand::rng();
                let mut choose = || {
                    // A few random draws find an available endpoint quickly when most are.
                    for _ in 0..8 {
                        let i = rng.random_range(0..n);
                        if available(i) {
                            return Some(i);
                        }
                    }
                    (0..n).find(|&i| available(i))
                };
                match n {
                    0 => None,
                    1 => available(0).then_some(0),
                    _ => {
                        let a = choose()?;
                        let b = choose().unwrap_or(a);
                        // active/weight compared without division.
                        let (wa, wb) = (weights[a] as u64, weights[b] as u64);
                        Some(if active(a) * wb <= active(b) * wa {
                            a
                        } else {
                            b
                        })
                    }
                }
            }
            Balancer::Random { cumulative } => {
                let total = *cumulative.last()?;
                let mut rng = rand::rng();
                for _ in 0..8 {
                    let r = rng.random_range(0..total);
                    let i = cumulative.partition_point(|&c| c <= r);
                    if available(i) {
                        return Some(i);
                    }
                }
                (0..cumulative.len()).find(|&i| available(i))
            }
            Balancer::RingHash { ring } => {
                if ring.is_empty() {
                    return None;
                }
                let h = hash.unwrap_or_else(|| rand::rng().random());
                let start = ring.partition_point(|&(p, _)| p < h);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|&i| available(i))
            }
            Balancer::Maglev { table } => {
                if table.is_empty() {
                    return None;
                }
                let h = hash.unwrap_or_else(|| rand::rng().random());
                let start = (h % table.len() as u64) as usize;
                // Unavailable: walk the table, which visits other endpoints in a hash-determined order.
                (0..table.len())
                    .map(|k| table[(start + k) % table.len()] as usize)
                    .find(|&i| available(i))
            }
        }
    }
}

/// Stable 64-bit hash of request data for consistent hashing (same on every proxy and version).
pub fn hash_key(data: &[u8]) -> u64 {
    xxh64(data, 0)
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

/// Ketama-style ring: points per endpoint proportional to weight, hashed from `address_N`.
fn build_ring(addresses: &[&str], weights: &[u32]) -> Vec<(u64, u32)> {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut ring = Vec::new();
    for (i, (addr, &w)) in addresses.iter().zip(weights).enumerate() {
        let points = ((w as u64 * RING_SIZE).div_ceil(total)).max(1);
        for p in 0..points {
            ring.push((hash_key(format!("{addr}_{p}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Maglev (Eisenbud et al. 2016), weighted by letting heavier endpoints take more turns.
fn build_maglev(addresses: &[&str], weights: &[u32]) -> Vec<u32> {
    let n = addresses.len();
    if n == 0 {
        return Vec::new();
    }
    let m = MAGLEV_SIZE as u64;
    let offset: Vec<u64> = addresses
        .iter()
        .map(|a| xxh64(a.as_bytes(), 0) % m)
        .collect();
    let skip: Vec<u64> = addresses
        .iter()
        .map(|a| xxh64(a.as_bytes(), 1) % (m - 1) + 1)
        .collect();
    let max_w = *weights.iter().max().unwrap_or(&1) as f64;
    let mut next = vec![0u64; n];
    let mut credit = vec![0f64; n];
    let mut table = vec![u32::MAX; MAGLEV_SIZE];
    let mut filled = 0;
    'fill: loop {
        for i in 0..n {
            credit[i] += weights[i] as f64 / max_w;
            while credit[i] >= 1.0 {
                credit[i] -= 1.0;
                loop {
                    let slot = ((offset[i] + next[i] * skip[i]) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == MAGLEV_SIZE {
                    break 'fill;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: usize) -> bool {
        true
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        let s = smooth_schedule(&[100_000, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 1 && s.contains(&1));
    }

    #[test]
    fn round_robin_cycles_and_skips_unavailable() {
        let b = Balancer::new(LbPolicy::RoundRobin, &["a", "b"], &[1, 2]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(None, all, |_| 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 4);
        for _ in 0..10 {
            assert_eq!(b.pick(None, |i| i == 0, |_| 0), Some(0));
        }
        assert_eq!(b.pick(None, |_| false, |_| 0), None);
        assert!(Balancer::new(LbPolicy::RoundRobin, &[], &[])
            .pick(None, all, |_| 0)
            .is_none());
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let b = Balancer::new(LbPolicy::LeastRequest, &["a", "b"], &[1, 1]);
        for _ in 0..100 {
            let p = b.pick(None, all, |i| if i == 0 { 10 } else { 0 });
            // Both draws may land on endpoint 0; it only wins when it is the only candidate.
            assert!(p == Some(1) || p == Some(0));
        }
        let ones = (0..1000)
            .filter(|_| b.pick(None, all, |i| if i == 0 { 10 } else { 0 }) == Some(1))
            .count();
        // P(at least one draw is endpoint 1) = 3/4.
        assert!((650..=850).contains(&ones), "{ones}");
    }

    #[test]
    fn random_follows_weights() {
        let b = Balancer::new(LbPolicy::Random, &["a", "b"], &[1, 3]);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| b.pick(None, all, |_| 0) == Some(1))
            .count();
        // Expected 15,000; 6 standard deviations is about ±370.
        assert!((14_600..=15_400).contains(&ones), "{ones}");
    }

    fn consistent(policy: LbPolicy) {
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let b1 = Balancer::new(policy, &addrs, &[1, 1, 1]);
        let b2 = Balancer::new(policy, &addrs, &[1, 1, 1]);
        let mut counts = [0usize; 3];
        for k in 0..3000u32 {
            let h = hash_key(&k.to_le_bytes());
            let a = b1.pick(Some(h), all, |_| 0).unwrap();
            assert_eq!(
                Some(a),
                b2.pick(Some(h), all, |_| 0),
                "same table on every proxy"
            );
            counts[a] += 1;
            // Removing another endpoint from service does not move keys that were not on it.
            if a != 2 {
                assert_eq!(b1.pick(Some(h), |i| i != 2, |_| 0), Some(a));
            }
        }
        for c in counts {
            assert!((700..=1300).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn ring_hash_is_consistent_and_balanced() {
        consistent(LbPolicy::RingHash);
    }

    #[test]
    fn maglev_is_consistent_and_balanced() {
        consistent(LbPolicy::Maglev);
    }
}
