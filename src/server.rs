//! The running proxy: initial load, reloads (all-or-nothing), listener set changes and drain.
//!
//! A reload reads the files, skips them if their content hash is unchanged, checks them, builds a
//! complete snapshot, binds any new sockets, and only then swaps the snapshot in. Any failure on
//! the way leaves the running snapshot and sockets exactly as they were.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::listener::{self, Running};
use crate::snapshot::Snapshot;
use crate::stats::Stats;
use tern_config::{self as config, Diagnostic};

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
    pub tunnels: crate::upgrade::Tunnels,
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

/// Result of one reload, each counted and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Same content as the running snapshot.
    Unchanged,
    /// A new snapshot serves, with this version.
    Applied(String),
    /// The running snapshot stays; the reason.
    Rejected(String),
}

/// Process-level settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Configuration directory or file.
    pub config: PathBuf,
    /// Time given to open connections when a listener stops.
    pub drain_timeout: Duration,
}

/// The running proxy.
pub struct Server {
    /// Shared state.
    pub shared: Arc<Shared>,
    opts: Options,
    listeners: HashMap<SocketAddr, Running>,
    admin: (SocketAddr, Running),
    /// Directories that held the last files read (for the watcher).
    pub watch_dirs: BTreeSet<PathBuf>,
}

fn diagnostics_summary(diags: &[Diagnostic]) -> String {
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    format!("{} error(s): {}", errors.len(), errors.join("; "))
}

/// Loads and builds a snapshot without binding anything (`tern --check`).
pub fn check(path: &Path) -> Result<String, Vec<String>> {
    let report = config::load(path);
    let Some(cfg) = report.config else {
        return Err(report.diagnostics.iter().map(|d| d.to_string()).collect());
    };
    let version = report.version.unwrap_or_default();
    Snapshot::build(cfg, version.clone(), None, &Stats::default())
        .map(|_| version)
        .map_err(|e| vec![e])
}

impl Server {
    /// Loads the configuration, binds every socket and starts serving. Fails on any error.
    pub async fn start(opts: Options) -> Result<Server, String> {
        let report = config::load(&opts.config);
        for w in report.diagnostics.iter().filter(|d| !d.is_error()) {
            tracing::warn!("{w}");
        }
        let Some(cfg) = report.config else {
            return Err(diagnostics_summary(&report.diagnostics));
        };
        let watch_dirs = watch_dirs_of(report.sources.as_ref());
        let version = report.version.unwrap_or_default();
        let stats = Stats::default();
        let admin_addr = *cfg.admin.address;
        let snap = Snapshot::build(cfg, version.clone(), None, &stats)?;
        let mut bound = Vec::new();
        for addr in snap.listeners.keys() {
            let l =
                listener::bind(*addr).map_err(|e| format!("cannot bind listener {addr}: {e}"))?;
            bound.push((*addr, l));
        }
        let admin_sock = listener::bind(admin_addr)
            .map_err(|e| format!("cannot bind admin {admin_addr}: {e}"))?;
        stats.config.update_success.inc();
        stats.config.last_success_timestamp.set(unix_now());
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snap),
            stats,
            status: Mutex::new(ReloadStatus::default()),
            draining: AtomicBool::new(false),
            hc_failed: AtomicBool::new(false),
            config_path: opts.config.clone(),
            tunnels: crate::upgrade::Tunnels::default(),
        });
        let mut listeners = HashMap::new();
        for (addr, l) in bound {
            listeners.insert(
                addr,
                listener::spawn(l, shared.clone(), opts.drain_timeout)
                    .map_err(|e| e.to_string())?,
            );
        }
        crate::health::start(&shared.snapshot.load_full());
        let admin = crate::admin::spawn(admin_sock, shared.clone()).map_err(|e| e.to_string())?;
        tracing::info!(version = %version, listeners = listeners.len(), admin = %admin_addr, "configuration loaded");
        Ok(Server {
            shared,
            opts,
            listeners,
            admin: (admin_addr, admin),
            watch_dirs,
        })
    }

    /// The addresses of the running listeners.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.keys().copied().collect()
    }

    /// Re-reads the configuration and applies it if it changed and is valid (`force`: even if unchanged).
    pub async fn reload(&mut self, force: bool) -> Outcome {
        let stats = &self.shared.stats.config;
        let sources = match config::source::read(&self.opts.config) {
            Ok(s) => s,
            Err(diags) => {
                stats.update_attempt.inc();
                return self.reject(None, diags);
            }
        };
        let current = self.shared.snapshot.load_full();
        let version = sources.version();
        if !force && version == current.version {
            stats.update_unchanged.inc();
            self.watch_dirs = watch_dirs_of(Some(&sources));
            return Outcome::Unchanged;
        }
        stats.update_attempt.inc();
        let watch_dirs = watch_dirs_of(Some(&sources));
        let report = config::check_sources(sources);
        self.watch_dirs = watch_dirs;
        let Some(cfg) = report.config else {
            return self.reject(Some(version), report.diagnostics);
        };
        let admin_addr = *cfg.admin.address;
        let snap = match Snapshot::build(cfg, version.clone(), Some(&current), &self.shared.stats) {
            Ok(s) => s,
            Err(e) => return self.reject_msg(Some(version), e),
        };
        // Bind everything new before touching anything running.
        let mut bound = Vec::new();
        for addr in snap
            .listeners
            .keys()
            .filter(|a| !self.listeners.contains_key(a))
        {
            match listener::bind(*addr) {
                Ok(l) => bound.push((*addr, l)),
                Err(e) => {
                    return self
                        .reject_msg(Some(version), format!("cannot bind listener {addr}: {e}"))
                }
            }
        }
        let new_admin = if admin_addr != self.admin.0 {
            match listener::bind(admin_addr) {
                Ok(l) => Some(l),
                Err(e) => {
                    return self.reject_msg(
                        Some(version),
                        format!("cannot bind admin {admin_addr}: {e}"),
                    )
                }
            }
        } else {
            None
        };
        for w in report.diagnostics.iter().filter(|d| !d.is_error()) {
            tracing::warn!("{w}");
        }
        let keep: BTreeSet<SocketAddr> = snap.listeners.keys().copied().collect();
        let snap = Arc::new(snap);
        self.shared.snapshot.store(snap.clone());
        crate::health::start(&snap);

        for (addr, l) in bound {
            match listener::spawn(l, self.shared.clone(), self.opts.drain_timeout) {
                Ok(r) => {
                    tracing::info!(%addr, "listener added");
                    self.listeners.insert(addr, r);
                }
                Err(e) => tracing::error!(%addr, error = %e, "cannot start listener"),
            }
        }
        let removed: Vec<SocketAddr> = self
            .listeners
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for addr in removed {
            if let Some(r) = self.listeners.remove(&addr) {
                tracing::info!(%addr, "listener removed; draining its connections");
                r.stop();
                tokio::spawn(r.join());
            }
        }
        if let Some(sock) = new_admin {
            match crate::admin::spawn(sock, self.shared.clone()) {
                Ok(r) => {
                    let (_, old) = std::mem::replace(&mut self.admin, (admin_addr, r));
                    old.stop();
                }
                Err(e) => tracing::error!(error = %e, "cannot start admin endpoint"),
            }
        }
        stats.update_success.inc();
        stats.last_success_timestamp.set(unix_now());
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = None;
        tracing::info!(version = %version, "configuration applied");
        Outcome::Applied(version)
    }

    fn reject(&self, version: Option<String>, diags: Vec<Diagnostic>) -> Outcome {
        for d in &diags {
            if d.is_error() {
                tracing::error!("{d}");
            }
        }
        let message = diagnostics_summary(&diags);
        self.record_rejection(version, message.clone(), diags);
        Outcome::Rejected(message)
    }

    fn reject_msg(&self, version: Option<String>, message: String) -> Outcome {
        tracing::error!("{message}");
        self.record_rejection(version, message.clone(), Vec::new());
        Outcome::Rejected(message)
    }

    fn record_rejection(
        &self,
        version: Option<String>,
        message: String,
        diagnostics: Vec<Diagnostic>,
    ) {
        self.shared.stats.config.update_rejected.inc();
        tracing::error!(
            "configuration rejected; still serving version {}",
            self.shared.snapshot.load().version
        );
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = Some(ReloadError {
            at: SystemTime::now(),
            version,
            message,
            diagnostics,
        });
    }

    /// Stops accepting everywhere, lets in-flight requests finish (up to the drain timeout),
    /// sends the spans still queued (bounded) and returns.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let began = tokio::time::Instant::now();
        for r in self.listeners.values() {
            r.stop();
        }
        for (_, r) in self.listeners {
            r.join().await;
        }
        // Tunnels get what is left of the drain time, then are closed; either way each writes
        // its access log line and ends its span before the spans are flushed.
        let left = self.opts.drain_timeout.saturating_sub(began.elapsed());
        self.shared.tunnels.close(left).await;
        crate::access_log::flush_all(Duration::from_secs(2)).await;
        // After the drain: the last requests' spans are queued by now.
        crate::otlp::flush_all(crate::otlp::SHUTDOWN_FLUSH_TIMEOUT).await;
        self.admin.1.stop();
    }
}

/// Directories a watcher must watch for this set of files: every directory walked, and the
/// directory of each file's real location (files may be symlinks into other directories).
fn watch_dirs_of(sources: Option<&config::Sources>) -> BTreeSet<PathBuf> {
    let Some(s) = sources else {
        return BTreeSet::new();
    };
    let mut dirs = s.dirs.clone();
    for f in &s.files {
        if let Some(p) = f
            .path
            .canonicalize()
            .ok()
            .and_then(|c| c.parent().map(Path::to_path_buf))
        {
            dirs.insert(p);
        }
    }
    dirs
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How changes are noticed.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after the last event before reloading, while a write may still be going on.
    pub debounce: Duration,
    /// Quiet time after an event that shows a finished write (close-after-write, rename, delete).
    pub settle: Duration,
    /// Periodic re-read for filesystems without change events (zero: off).
    pub poll_interval: Duration,
}

/// Runs the proxy until SIGTERM/SIGINT (drain, then return) — reloading on changes and SIGHUP.
pub async fn run(opts: Options, watch: WatchOptions) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: /ready answers as soon as the server starts, and a SIGTERM sent right
    // after must drain, not kill the process with the default action.
    let sig = |k| signal(k).map_err(|e| format!("cannot install signal handler: {e}"));
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    // SIGUSR1 (log rotation) likewise: its default action would kill the process.
    let mut usr1 = sig(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening access log files");
            crate::access_log::reopen_all();
        }
    });
    let mut server = Server::start(opts.clone()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let mut watcher = crate::watch::Watcher::new(&opts.config, tx)
        .map_err(|e| format!("cannot watch {}: {e}", opts.config.display()))?;
    if watcher.update(&server.watch_dirs) {
        // Files may have changed between the initial read and the watches being in place.
        server.reload(false).await;
        watcher.update(&server.watch_dirs);
    }
    let poll = if watch.poll_interval.is_zero() {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        watch.poll_interval
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let force = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { tracing::info!("SIGHUP: forced reload"); true }
            Some(first) = rx.recv() => {
                // Debounce: wait until the burst is over (an editor or a copy writes in several
                // steps). A finished write needs only a short settle to catch a follow-up event.
                let quiet = |w| if w == crate::watch::Wake::Complete { watch.settle } else { watch.debounce };
                let mut wait = quiet(first);
                while let Ok(Some(w)) = tokio::time::timeout(wait, rx.recv()).await {
                    wait = quiet(w);
                }
                false
            }
            _ = ticker.tick() => false,
        };
        server.reload(force).await;
        // A directory that appeared during the read may have received files before it was
        // watched; read again until the watch set is stable (bounded: each round adds a directory).
        for _ in 0..16 {
            if !watcher.update(&server.watch_dirs) {
                break;
            }
            server.reload(false).await;
        }
    }
    tracing::info!(timeout = ?opts.drain_timeout, "shutting down: draining listeners");
    server.shutdown().await;
    tracing::info!("drained; exiting");
    Ok(())
}
