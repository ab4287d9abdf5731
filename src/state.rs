//! Process state that outlives snapshots and that every layer above the snapshot reads: the
//! current snapshot, the statistics, the outcome of the last reload, the drain and health-check
//! switches, the overload state and the open tunnels.
//!
//! It sits below the listeners, the request path and the admin endpoint, which only read it;
//! the server (the reloader) is the one writer of the snapshot and the reload status.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tern_config::Diagnostic;

use crate::snapshot::Snapshot;
use crate::stats::Stats;

/// State shared by the request path, the admin endpoint and the reloader.
#[derive(Debug)]
pub struct Shared {
    /// The snapshot new requests use.
    pub snapshot: ArcSwap<Snapshot>,
    /// All statistics.
    pub stats: Stats,
    /// Outcome of the last reload (admin only; never touched by the request path).
    pub status: Mutex<ReloadStatus>,
    /// Set once shutdown has begun.
    pub draining: AtomicBool,
    /// Set by `POST /healthcheck/fail`.
    pub hc_failed: AtomicBool,
    /// The configured path.
    pub config_path: PathBuf,
    /// Upgraded (WebSocket) connections, which outlive the HTTP connection that opened them.
    pub tunnels: Tunnels,
    /// Downstream connections of all listeners and the memory state (overload protection).
    pub overload: crate::overload::Monitor,
}

/// What the admin endpoint reports about reloads.
#[derive(Debug, Default, Clone)]
pub struct ReloadStatus {
    /// The last rejected reload, cleared by the next applied one.
    pub last_error: Option<ReloadError>,
}

/// A rejected reload.
#[derive(Debug, Clone)]
pub struct ReloadError {
    /// When it was rejected.
    pub at: SystemTime,
    /// Content hash of the rejected files, when they could be read.
    pub version: Option<String>,
    /// Summary line.
    pub message: String,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
}

/// Open tunnels and the tasks that log them, so a shutdown can wait for them, close them, and
/// still write their log lines.
#[derive(Debug, Default)]
pub struct Tunnels {
    tracker: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

impl Tunnels {
    /// Cancelled when the drain time is over: open tunnels close.
    pub fn stop_token(&self) -> tokio_util::sync::CancellationToken {
        self.stop.clone()
    }

    /// Runs `fut` as a tracked task.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(fut);
    }

    /// Waits up to `grace` for the tunnels to end by themselves, then closes the rest and waits
    /// (bounded) for them to report.
    pub async fn close(&self, grace: std::time::Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.tracker.len(),
                "drain timeout: closing upgraded connections"
            );
            self.stop.cancel();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), self.tracker.wait()).await;
        }
    }
}
