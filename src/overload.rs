//! Overload protection, Envoy's overload manager in small: the process-wide count of downstream
//! connections (what `overload.global_downstream_max_connections` limits) and the memory state
//! (resident memory over `overload.max_heap_size_bytes`).
//!
//! The memory state is set by a sampler off the request path (the server reads the resident set
//! size every `refresh_interval`); the accept loops and the request path only load atomics. While
//! overloaded, listeners close new connections at accept and new requests are answered 503 with
//! the response flag `OM`; established connections, requests in flight and the admin endpoint
//! are left alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Process-wide overload state.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Downstream connections open on all listeners.
    connections: AtomicU64,
    /// Resident memory is over the configured limit.
    overloaded: AtomicBool,
}

impl Monitor {
    /// Counts a new downstream connection unless `max` are already open; `false`: refused.
    pub fn admit(&self, max: Option<u64>) -> bool {
        let open = self.connections.fetch_add(1, Relaxed);
        if max.is_some_and(|m| open >= m) {
            self.connections.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// A connection counted by [`Monitor::admit`] closed.
    pub fn release(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// Whether memory is over its limit (new connections and requests are refused).
    #[inline]
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Relaxed)
    }

    /// Sets the memory state; returns whether it changed.
    pub fn set_overloaded(&self, on: bool) -> bool {
        self.overloaded.swap(on, Relaxed) != on
    }
}

/// The process's resident set size in bytes (from `/proc/self/statm`), or `None` where that
/// cannot be read.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_counts_up_to_the_limit_and_release_frees_a_slot() {
        let m = Monitor::default();
        assert!(m.admit(Some(2)));
        assert!(m.admit(Some(2)));
        assert!(!m.admit(Some(2)));
        assert_eq!(m.connections.load(Relaxed), 2);
        m.release();
        assert!(m.admit(Some(2)));
        assert!(m.admit(None));
        assert_eq!(m.connections.load(Relaxed), 3);
    }

    #[test]
    fn the_overload_state_reports_changes() {
        let m = Monitor::default();
        assert!(!m.overloaded());
        assert!(m.set_overloaded(true));
        assert!(!m.set_overloaded(true));
        assert!(m.overloaded());
        assert!(m.set_overloaded(false));
    }

    #[test]
    fn rss_is_read() {
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }
}
