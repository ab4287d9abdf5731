//! Outlier detection: endpoints that keep failing are ejected for a while (passive health).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

use crate::cluster::Cluster;

/// Milliseconds since the first call (a monotonic clock for ejection deadlines).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Per-endpoint outlier state.
#[derive(Debug, Default)]
pub struct EndpointOutlier {
    /// Ejected until this [`now_ms`] time; 0 when not ejected.
    pub ejected_until_ms: AtomicU64,
}

impl EndpointOutlier {
    /// True while ejected.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && now_ms() < until
    }
}

/// The result of one try to an endpoint, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this status.
    Status(u16),
    /// The connection could not be opened.
    ConnectFailure,
    /// The connection failed before response headers.
    Reset,
    /// No response headers within the (per-try) timeout.
    Timeout,
}

/// Records the outcome of a try to endpoint `index` of `cluster`.
pub fn report(cluster: &Cluster, index: usize, outcome: Outcome) {
    let failed = match outcome {
        Outcome::Status(s) => s >= 500,
        _ => true,
    };
    if failed {
        cluster.endpoints[index]
            .state
            .rq_error
            .fetch_add(1, Relaxed);
    }
}
