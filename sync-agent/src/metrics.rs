//! Counters exported on `/metrics` in the Prometheus text format.
//!
//! Plain atomics rather than a metrics crate: the set is small and fixed, and tests read the text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Outcomes of one poll, used as the `result` label.
pub const POLL_RESULTS: [&str; 5] = ["unchanged", "changed", "pending", "invalid", "error"];
/// S3 operations, used as the `op` label.
pub const S3_OPS: [&str; 5] = [
    "GetObject",
    "ListObjectsV2",
    "HeadObject",
    "PutObject",
    "DeleteObject",
];

/// All agent counters.
#[derive(Debug, Default)]
pub struct Metrics {
    polls: [AtomicU64; 5],
    s3: [AtomicU64; 5],
    /// Unix time of the last successful poll (0 = never).
    pub last_success: AtomicU64,
    /// Body bytes received from S3 for objects.
    pub bytes_downloaded: AtomicU64,
    /// Keys skipped because they were unsafe or colliding.
    pub keys_rejected: AtomicU64,
    /// Snapshots refused (validation errors or size limits).
    pub snapshots_invalid: AtomicU64,
    /// Version of the current snapshot.
    pub version: Mutex<Option<String>>,
}

fn index(names: &[&str], name: &str) -> usize {
    names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("unknown metric label {name}"))
}

impl Metrics {
    /// Counts one poll with the given result (one of [`POLL_RESULTS`]).
    pub fn poll(&self, result: &str) {
        self.polls[index(&POLL_RESULTS, result)].fetch_add(1, Relaxed);
    }

    /// Counts one S3 request (one of [`S3_OPS`]).
    pub fn s3(&self, op: &str) {
        self.s3[index(&S3_OPS, op)].fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP tern_sync_polls_total Polls of S3 by result.");
        let _ = writeln!(o, "# TYPE tern_sync_polls_total counter");
        for (i, r) in POLL_RESULTS.iter().enumerate() {
            let _ = writeln!(
                o,
                "tern_sync_polls_total{{result=\"{r}\"}} {}",
                self.polls[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP tern_sync_s3_requests_total S3 requests by operation."
        );
        let _ = writeln!(o, "# TYPE tern_sync_s3_requests_total counter");
        for (i, op) in S3_OPS.iter().enumerate() {
            let _ = writeln!(
                o,
                "tern_sync_s3_requests_total{{op=\"{op}\"}} {}",
                self.s3[i].load(Relaxed)
            );
        }
        let scalars = [
            (
                "tern_sync_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last successful poll.",
                &self.last_success,
            ),
            (
                "tern_sync_bytes_downloaded_total",
                "counter",
                "Object bytes downloaded from S3.",
                &self.bytes_downloaded,
            ),
            (
                "tern_sync_keys_rejected_total",
                "counter",
                "Keys skipped as unsafe or colliding.",
                &self.keys_rejected,
            ),
            (
                "tern_sync_snapshots_invalid_total",
                "counter",
                "Snapshots refused by validation or size limits.",
                &self.snapshots_invalid,
            ),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            let _ = writeln!(o, "{name} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            o,
            "# HELP tern_sync_snapshot_version The current snapshot (info gauge, version as label)."
        );
        let _ = writeln!(o, "# TYPE tern_sync_snapshot_version gauge");
        if let Some(v) = self.version.lock().unwrap().as_deref() {
            let _ = writeln!(o, "tern_sync_snapshot_version{{version=\"{v}\"}} 1");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_values() {
        let m = Metrics::default();
        m.poll("unchanged");
        m.poll("unchanged");
        m.s3("GetObject");
        *m.version.lock().unwrap() = Some("v1".into());
        let t = m.render();
        assert!(t.contains("tern_sync_polls_total{result=\"unchanged\"} 2\n"));
        assert!(t.contains("tern_sync_s3_requests_total{op=\"GetObject\"} 1\n"));
        assert!(t.contains("tern_sync_s3_requests_total{op=\"ListObjectsV2\"} 0\n"));
        assert!(t.contains("tern_sync_snapshot_version{version=\"v1\"} 1\n"));
    }
}
