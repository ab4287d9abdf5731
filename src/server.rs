//! The running proxy: the start, reloads (all-or-nothing), listener set changes and drain, and
//! the overload manager's memory sampler.
//!
//! The start is the first reload. A reload reads the files, skips them if their content hash is
//! unchanged, then *prepares* (checks them, builds a complete snapshot, binds every new socket)
//! and only then *applies* (swaps the snapshot in, starts its background tasks, starts and stops
//! listeners). A failure while preparing leaves the running snapshot and sockets exactly as they
//! were.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tern_config::{self as config, Diagnostic};

use crate::listener::{self, Running};
use crate::snapshot::Snapshot;
use crate::state::{ReloadError, ReloadStatus, Shared, Tunnels};
use crate::stats::Stats;
use crate::watch::{WatchOptions, Watcher};

/// Result of one reload, each counted and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Same content as the running snapshot.
    Unchanged,
    /// A new snapshot serves, with this version.
    Applied(String),
    /// The running snapshot stays; the reason.
    Rejected(String),
}

/// The longest a start or reload waits for new DNS clusters' first answers.
const DNS_WARM_TIMEOUT: Duration = Duration::from_secs(5);

/// Process-level settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Configuration directory or file.
    pub config: PathBuf,
    /// Time given to open connections when a listener stops.
    pub drain_timeout: Duration,
    /// Bounds on the configuration files read and parsed.
    pub limits: config::Limits,
}

/// The running proxy.
pub(crate) struct Server {
    /// Shared state.
    pub shared: Arc<Shared>,
    opts: Options,
    listeners: HashMap<SocketAddr, Running>,
    admin: Option<(SocketAddr, Running)>,
    /// Directories that held the last files read (for the watcher).
    pub watch_dirs: BTreeSet<PathBuf>,
}

/// A configuration ready to serve: its snapshot built, every new socket bound.
struct Prepared {
    snap: Snapshot,
    warnings: Vec<Diagnostic>,
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
}

/// Why a configuration was not applied.
struct Rejection {
    version: Option<String>,
    message: String,
    diagnostics: Vec<Diagnostic>,
}

impl Rejection {
    fn diagnostics(version: Option<String>, diagnostics: Vec<Diagnostic>) -> Rejection {
        let errors: Vec<String> = diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        Rejection {
            version,
            message: format!("{} error(s): {}", errors.len(), errors.join("; ")),
            diagnostics,
        }
    }

    fn message(version: Option<String>, message: String) -> Rejection {
        Rejection {
            version,
            message,
            diagnostics: Vec::new(),
        }
    }
}

/// Loads and builds a snapshot without binding anything (`tern --check`).
pub fn check(path: &Path, limits: config::Limits) -> Result<String, Vec<String>> {
    let report = config::load_with(path, limits);
    let Some(cfg) = report.config else {
        return Err(report.diagnostics.iter().map(|d| d.to_string()).collect());
    };
    let version = report.version.unwrap_or_default();
    Snapshot::build(cfg, version.clone(), Vec::new(), None, &Stats::default())
        .map(|_| version)
        .map_err(|e| vec![e])
}

impl Server {
    /// Loads the configuration, binds every socket and starts serving. Fails on any error.
    pub async fn start(opts: Options) -> Result<Server, String> {
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            stats: Stats::default(),
            status: Mutex::new(ReloadStatus::default()),
            draining: AtomicBool::new(false),
            hc_failed: AtomicBool::new(false),
            config_path: opts.config.clone(),
            tunnels: Tunnels::default(),
            overload: Default::default(),
        });
        let mut server = Server {
            shared,
            opts,
            listeners: HashMap::new(),
            admin: None,
            watch_dirs: BTreeSet::new(),
        };
        let version = match server.load(true).await {
            Ok(Some(v)) => v,
            Ok(None) => unreachable!("a forced load never finds the content unchanged"),
            Err(r) => return Err(r.message),
        };
        let snap = server.shared.snapshot.load();
        let mut down: Vec<String> = snap
            .listeners
            .keys()
            .filter(|a| !server.listeners.contains_key(a))
            .map(|a| format!("listener {a}"))
            .collect();
        if server.admin.is_none() {
            down.push(format!("admin {}", *snap.config.admin.address));
        }
        if !down.is_empty() {
            return Err(format!("could not start: {}", down.join(", ")));
        }
        tracing::info!(version = %version, listeners = server.listeners.len(), admin = %snap.config.admin.address.value, "configuration loaded");
        tokio::spawn(sample_memory(server.shared.clone()));
        Ok(server)
    }

    /// Re-reads the configuration and applies it if it changed and is valid (`force`: even if unchanged).
    pub async fn reload(&mut self, force: bool) -> Outcome {
        match self.load(force).await {
            Ok(None) => Outcome::Unchanged,
            Ok(Some(version)) => {
                tracing::info!(version = %version, "configuration applied");
                Outcome::Applied(version)
            }
            Err(r) => self.reject(r),
        }
    }

    /// Reads, prepares and applies; `Ok(None)` when the content is unchanged.
    async fn load(&mut self, force: bool) -> Result<Option<String>, Rejection> {
        let shared = self.shared.clone();
        let stats = &shared.stats.config;
        let running = shared.snapshot.load_full();
        // An update attempt is a change to a running configuration: the start is not one.
        let attempt = || {
            if !running.version.is_empty() {
                stats.update_attempt.inc();
            }
        };
        let mut sources =
            config::source::read_with(&self.opts.config, self.opts.limits).map_err(|d| {
                attempt();
                Rejection::diagnostics(None, d)
            })?;
        // The key material files the running configuration names are part of its content: a
        // renewed certificate is a change even when no YAML changed.
        sources.data = config::DataFiles::preread(&running.data_files, &self.opts.limits);
        let version = sources.version();
        self.watch_dirs = watch_dirs_of(&sources);
        if !force && version == running.version {
            stats.update_unchanged.inc();
            return Ok(None);
        }
        attempt();
        let report = config::check_sources(sources);
        // The files this configuration names (which may be new ones) and their content.
        let version = report.version.clone().unwrap_or(version);
        if let Some(s) = &report.sources {
            self.watch_dirs = watch_dirs_of(s);
        }
        let prepared = self.prepare(report, &version)?;
        // New DNS clusters resolve before they serve (bounded: a dead resolver delays, not blocks).
        prepared.snap.warm(DNS_WARM_TIMEOUT).await;
        for e in self.apply(prepared) {
            tracing::error!("{e}");
        }
        stats.update_success.inc();
        stats.last_success_timestamp.set(unix_now());
        shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = None;
        Ok(Some(version))
    }

    /// Builds the snapshot of `report` (carrying state over from the running one) and binds every
    /// socket it needs that is not open yet. Touches nothing that runs.
    fn prepare(&self, report: config::Report, version: &str) -> Result<Prepared, Rejection> {
        let v = || Some(version.to_string());
        let Some(cfg) = report.config else {
            return Err(Rejection::diagnostics(v(), report.diagnostics));
        };
        let admin_addr = *cfg.admin.address;
        let current = self.shared.snapshot.load_full();
        let data_files = report
            .sources
            .as_ref()
            .map(|s| s.data.paths().cloned().collect())
            .unwrap_or_default();
        let snap = Snapshot::build(
            cfg,
            version.to_string(),
            data_files,
            Some(&current),
            &self.shared.stats,
        )
        .map_err(|e| Rejection::message(v(), e))?;
        let mut listeners = Vec::new();
        for addr in snap.listeners.keys() {
            if !self.listeners.contains_key(addr) {
                let l = listener::bind(*addr).map_err(|e| {
                    Rejection::message(v(), format!("cannot bind listener {addr}: {e}"))
                })?;
                listeners.push((*addr, l));
            }
        }
        let admin = match &self.admin {
            Some((running, _)) if *running == admin_addr => None,
            _ => Some((
                admin_addr,
                listener::bind(admin_addr).map_err(|e| {
                    Rejection::message(v(), format!("cannot bind admin {admin_addr}: {e}"))
                })?,
            )),
        };
        Ok(Prepared {
            snap,
            warnings: report.diagnostics,
            listeners,
            admin,
        })
    }

    /// Makes `p` the running configuration; returns what could not be started.
    fn apply(&mut self, p: Prepared) -> Vec<String> {
        for w in p.warnings.iter().filter(|d| !d.is_error()) {
            tracing::warn!("{w}");
        }
        let keep: BTreeSet<SocketAddr> = p.snap.listeners.keys().copied().collect();
        let snap = Arc::new(p.snap);
        self.shared.snapshot.store(snap.clone());
        snap.start_background();
        let mut failed = Vec::new();
        for (addr, l) in p.listeners {
            match listener::spawn(l, self.shared.clone(), self.opts.drain_timeout) {
                Ok(r) => {
                    tracing::info!(%addr, "listener added");
                    self.listeners.insert(addr, r);
                }
                Err(e) => failed.push(format!("cannot start listener {addr}: {e}")),
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
        if let Some((addr, sock)) = p.admin {
            match crate::admin::spawn(sock, self.shared.clone()) {
                Ok(r) => {
                    if let Some((_, old)) = self.admin.replace((addr, r)) {
                        old.stop();
                    }
                }
                Err(e) => failed.push(format!("cannot start admin endpoint {addr}: {e}")),
            }
        }
        failed
    }

    /// Logs, counts and records a rejected configuration; the running one stays.
    fn reject(&self, r: Rejection) -> Outcome {
        for d in &r.diagnostics {
            if d.is_error() {
                tracing::error!("{d}");
            } else {
                tracing::warn!("{d}");
            }
        }
        if r.diagnostics.is_empty() {
            tracing::error!("{}", r.message);
        }
        self.shared.stats.config.update_rejected.inc();
        match &*self.shared.snapshot.load().version {
            "" => tracing::error!("configuration rejected; nothing is serving"),
            v => tracing::error!("configuration rejected; still serving version {v}"),
        }
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = Some(ReloadError {
            at: SystemTime::now(),
            version: r.version,
            message: r.message.clone(),
            diagnostics: r.diagnostics,
        });
        Outcome::Rejected(r.message)
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
        if let Some((_, admin)) = self.admin {
            admin.stop();
        }
    }
}

/// The overload manager's memory monitor: while `overload.max_heap_size_bytes` is set, samples
/// the resident set size every `overload.refresh_interval` (both read from the running
/// configuration each time, so a reload changes them) and sets the overload state when it is at
/// or over the limit. Without a limit it only checks the configuration, every second.
async fn sample_memory(shared: Arc<Shared>) {
    loop {
        let (max, every) = {
            let snap = shared.snapshot.load();
            let o = &snap.config.overload;
            (
                o.max_heap_size_bytes.as_ref().map(|m| m.value),
                o.refresh_interval
                    .as_ref()
                    .map_or(config::defaults::OVERLOAD_REFRESH_INTERVAL, |r| r.value.0),
            )
        };
        if let Some(rss) = max.and_then(|_| crate::overload::rss_bytes()) {
            let server = &shared.stats.server;
            server.memory_physical_size.set(rss as i64);
            let over = max.is_some_and(|m| rss >= m);
            if shared.overload.set_overloaded(over) {
                server.overload_active.set(i64::from(over));
                if over {
                    tracing::warn!(
                        rss,
                        max_heap_size_bytes = max,
                        "overloaded: refusing new connections and answering new requests 503"
                    );
                } else {
                    tracing::info!(rss, "no longer overloaded");
                }
            }
        }
        if max.is_none() && shared.overload.set_overloaded(false) {
            shared.stats.server.overload_active.set(0);
            tracing::info!("no longer overloaded (max_heap_size_bytes removed)");
        }
        tokio::time::sleep(every).await;
    }
}

/// Directories a watcher must watch for this set of files: every directory walked, and the
/// directory of each file's real location (files may be symlinks into other directories), key
/// material files included (they may live outside the configuration directory).
fn watch_dirs_of(s: &config::Sources) -> BTreeSet<PathBuf> {
    let mut dirs = s.dirs.clone();
    let files = s.files.iter().map(|f| &f.path).chain(s.data.paths());
    for path in files {
        if let Some(p) = path
            .canonicalize()
            .ok()
            .and_then(|c| c.parent().map(Path::to_path_buf))
        {
            dirs.insert(p);
        }
        // The directory of the name itself, where a rename into place happens.
        if let Some(p) = std::path::absolute(path)
            .ok()
            .and_then(|a| a.parent().map(Path::to_path_buf))
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
    // Watching starts before the first read, so a write during the start is not missed.
    let mut watcher = Watcher::new(&opts.config, watch)
        .map_err(|e| format!("cannot watch {}: {e}", opts.config.display()))?;
    let mut server = Server::start(opts.clone()).await?;
    if watcher.update(&server.watch_dirs) {
        // Files may have changed in directories watched only now.
        watcher.writes_closed().await;
        server.reload(false).await;
        watcher.update(&server.watch_dirs);
    }
    loop {
        let force = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { tracing::info!("SIGHUP: forced reload"); true }
            () = watcher.changed() => false,
        };
        server.reload(force).await;
        // A directory that appeared during the read may have received files before it was
        // watched; read again until the watch set is stable (bounded: each round adds a directory).
        for _ in 0..16 {
            if !watcher.update(&server.watch_dirs) {
                break;
            }
            watcher.writes_closed().await;
            server.reload(false).await;
        }
    }
    tracing::info!(timeout = ?opts.drain_timeout, "shutting down: draining listeners");
    server.shutdown().await;
    tracing::info!("drained; exiting");
    Ok(())
}
