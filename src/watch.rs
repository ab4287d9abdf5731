//! Watching the configuration path for changes.
//!
//! inotify watches directories, not paths, and follows symlinks only when the watch is added. So
//! we watch (non-recursively) every directory the last load walked, the real directory of every
//! file, and the parent of the configured path and of every symlink on the way to it. That catches
//! in-place edits, save-by-rename, new and deleted files, a re-pointed directory symlink
//! (`current -> .snapshots/v2`) and Kubernetes' `..data` swap. Events are debounced here (a write
//! in several steps is one change); the reloader then re-reads and skips content whose hash did
//! not change. A slow periodic re-read covers filesystems that deliver no events (NFS/EFS).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

#[derive(Debug, Default)]
struct Filter {
    /// Directories whose every entry matters.
    dirs: BTreeSet<PathBuf>,
    /// The configured path and its ancestors: only events naming these matter in their parents.
    chain: BTreeSet<PathBuf>,
}

impl Filter {
    fn relevant(&self, ev: &notify::Event) -> bool {
        // Our own reads cause open/close events: reacting to them would loop.
        match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            _ => {}
        }
        ev.paths.iter().any(|p| {
            self.chain.contains(p)
                || self.dirs.contains(p)
                || p.parent().is_some_and(|d| self.dirs.contains(d))
        })
    }
}

/// What an event says about the write in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Data is still being written (a modify, a new empty file).
    Partial,
    /// A write finished: closed after writing, renamed into place, or deleted.
    Complete,
}

fn wake_kind(kind: &EventKind) -> Wake {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        | EventKind::Remove(_) => Wake::Complete,
        _ => Wake::Partial,
    }
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

/// A filesystem watcher that tells the reloader when the configuration may have changed.
pub struct Watcher {
    inner: RecommendedWatcher,
    rx: mpsc::Receiver<Wake>,
    opts: WatchOptions,
    ticker: tokio::time::Interval,
    watched: BTreeSet<PathBuf>,
    chain_parents: BTreeSet<PathBuf>,
    filter: Arc<ArcSwap<Filter>>,
}

impl Watcher {
    /// Watches `root`. Must be called within a tokio runtime (for the periodic re-read).
    pub fn new(root: &Path, opts: WatchOptions) -> notify::Result<Watcher> {
        let (tx, rx) = mpsc::channel(64);
        let root = std::path::absolute(root)?;
        let mut chain = BTreeSet::new();
        let mut chain_parents = BTreeSet::new();
        if let Some(p) = root.parent() {
            chain_parents.insert(p.to_path_buf());
        }
        for a in root.ancestors() {
            chain.insert(a.to_path_buf());
            let is_link = std::fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                if let Some(p) = a.parent() {
                    chain_parents.insert(p.to_path_buf());
                }
            }
        }
        let filter = Arc::new(ArcSwap::from_pointee(Filter {
            dirs: BTreeSet::new(),
            chain,
        }));
        let f = filter.clone();
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let relevant = f.load().relevant(&ev);
                tracing::trace!(?ev, relevant, "config path event");
                if relevant {
                    // A full channel already holds wake-ups: nothing is lost by dropping this one.
                    let _ = tx.try_send(wake_kind(&ev.kind));
                }
            }
        })?;
        let poll = if opts.poll_interval.is_zero() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            opts.poll_interval
        };
        let start = tokio::time::Instant::now() + poll;
        let mut ticker = tokio::time::interval_at(start, poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut w = Watcher {
            inner,
            rx,
            opts,
            ticker,
            watched: BTreeSet::new(),
            chain_parents,
            filter,
        };
        w.update(&BTreeSet::new());
        Ok(w)
    }

    /// Watches exactly `dirs` (from the last load) plus the configured path's parents.
    ///
    /// Returns true when a directory was added: anything written there between the read and the
    /// new watch produced no event, so the caller must read once more.
    pub fn update(&mut self, dirs: &BTreeSet<PathBuf>) -> bool {
        let want: BTreeSet<PathBuf> = dirs.union(&self.chain_parents).cloned().collect();
        for gone in self.watched.difference(&want) {
            let _ = self.inner.unwatch(gone);
        }
        let mut now = BTreeSet::new();
        for d in &want {
            // Re-adding is cheap and heals a directory that was deleted and recreated.
            if self.inner.watch(d, RecursiveMode::NonRecursive).is_ok() {
                now.insert(d.clone());
            }
        }
        let added = now.difference(&self.watched).next().is_some();
        self.watched = now;
        let chain = self.filter.load().chain.clone();
        self.filter.store(Arc::new(Filter {
            dirs: dirs.clone(),
            chain,
        }));
        added
    }
}

impl Watcher {
    /// Waits for a change: an event followed by a quiet time (an editor or a copy writes in
    /// several steps; a finished write needs only a short settle to catch a follow-up event), or
    /// the periodic re-read.
    pub async fn changed(&mut self) {
        let first = tokio::select! {
            Some(w) = self.rx.recv() => w,
            _ = self.ticker.tick() => return,
        };
        let quiet = |w| {
            if w == Wake::Complete {
                self.opts.settle
            } else {
                self.opts.debounce
            }
        };
        let mut wait = quiet(first);
        while let Ok(Some(w)) = tokio::time::timeout(wait, self.rx.recv()).await {
            wait = quiet(w);
        }
    }
}
