//! Watching the configuration path for changes.
//!
//! inotify watches directories, not paths, and follows symlinks only when the watch is added. So
//! we watch (non-recursively) every directory the last load walked, the real directory of every
//! file, and the parent of the configured path and of every symlink on the way to it. That catches
//! in-place edits, save-by-rename, new and deleted files, a re-pointed directory symlink
//! (`current -> .snapshots/v2`) and Kubernetes' `..data` swap. Events are debounced here (a write
//! in several steps is one change); the reloader then re-reads and skips content whose hash did
//! not change. A slow periodic re-read covers filesystems that deliver no events (NFS/EFS).
//!
//! A file modified in place is not read while its writer still has it open (inotify's
//! close-after-write tells when it is done), however long the writer pauses, up to
//! [`WatchOptions::max_wait`]: reading it mid-write would apply half a configuration.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
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

/// Configuration files written in place and not closed yet, with when the write was first seen.
#[derive(Debug, Default)]
struct OpenWrites {
    since: HashMap<PathBuf, tokio::time::Instant>,
}

impl OpenWrites {
    /// Follows one event: a regular configuration file created or modified is being written
    /// until it is closed after writing, deleted or renamed away.
    fn track(&mut self, ev: &notify::Event, is_config_file: impl Fn(&Path) -> bool) {
        let writing = matches!(
            ev.kind,
            EventKind::Create(CreateKind::File | CreateKind::Any)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
        );
        let done = matches!(
            ev.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_))
        );
        for p in &ev.paths {
            if done {
                self.since.remove(p);
            } else if writing
                && is_config_file(p)
                // Only a regular file is ever closed after writing: a FIFO or a symlink
                // created here would hold the reload for nothing.
                && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
            {
                self.since
                    .entry(p.clone())
                    .or_insert_with(tokio::time::Instant::now);
            }
        }
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
    /// Longest wait for a file being written to be closed; after it, the file is read as it is.
    pub max_wait: Duration,
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
    writes: Arc<Mutex<OpenWrites>>,
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
        let writes = Arc::new(Mutex::new(OpenWrites::default()));
        let w = writes.clone();
        let single_file = root.clone();
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let relevant = f.load().relevant(&ev);
                tracing::trace!(?ev, relevant, "config path event");
                if relevant {
                    // What the loader would read: the configured file, or a visible YAML file.
                    let is_config_file = |p: &Path| {
                        p == single_file
                            || (tern_config::source::is_yaml(p)
                                && p.file_name()
                                    .and_then(|n| n.to_str())
                                    .is_some_and(|n| !n.starts_with('.')))
                    };
                    w.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .track(&ev, is_config_file);
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
            writes,
        };
        // The configured directory itself from the start: the first read happens after this,
        // so a file written during or after it is seen (and waited for while open).
        // It stays watched (a second watch of the same directory under another name shares its
        // inotify watch, which an unwatch would remove).
        let first: BTreeSet<PathBuf> = [root].into_iter().filter(|r| r.is_dir()).collect();
        w.chain_parents.extend(first.iter().cloned());
        w.update(&first);
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
    ///
    /// Then, while a configuration file written in place is still open for writing, waits for
    /// it to be closed (up to [`WatchOptions::max_wait`] from the start of its write).
    pub async fn changed(&mut self) {
        let first = tokio::select! {
            Some(w) = self.rx.recv() => Some(w),
            _ = self.ticker.tick() => None,
        };
        if let Some(first) = first {
            self.quiet(first).await;
        }
        self.writes_closed().await;
    }

    /// Waits while a configuration file written in place is still open for writing (up to
    /// [`WatchOptions::max_wait`] from the start of its write): before any read, so a read
    /// that no event asked for (after a new directory is watched) never takes half a file.
    pub async fn writes_closed(&mut self) {
        loop {
            let now = tokio::time::Instant::now();
            let Some(until) = self.open_writes_until(now) else {
                return;
            };
            // A wake-up is a close (or another write): look again after its quiet time.
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some(w)) => self.quiet(w).await,
                Ok(None) => return,
                Err(_) => {}
            }
        }
    }

    /// Waits until no event came for the quiet time of the last one.
    async fn quiet(&mut self, first: Wake) {
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

    /// When the wait for the files still open for writing ends, or `None` if there are none
    /// (writes open longer than the maximum wait are given up on, with a warning).
    fn open_writes_until(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let max = self.opts.max_wait;
        writes.since.retain(|path, since| {
            let keep = now < *since + max;
            if !keep {
                tracing::warn!(
                    path = %path.display(),
                    "still open for writing after {}; reading it as it is (publish with an \
                     atomic rename or tern-sync instead of writing in place)",
                    tern_config::Dur(max)
                );
            }
            keep
        });
        writes.since.values().map(|s| *s + max).min()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn watch(dir: &Path, max_wait: Duration) -> Watcher {
        let mut w = Watcher::new(
            dir,
            WatchOptions {
                debounce: Duration::from_millis(50),
                settle: Duration::from_millis(10),
                max_wait,
                poll_interval: Duration::ZERO,
            },
        )
        .unwrap();
        w.update(&BTreeSet::from([dir.canonicalize().unwrap()]));
        w
    }

    /// Longer than the debounce many times over: the old watcher reloaded after 50 ms of quiet.
    const PAUSE: Duration = Duration::from_millis(600);

    #[tokio::test]
    async fn a_file_open_for_writing_is_waited_for_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, "clusters: []\n").unwrap();
        let mut w = watch(dir.path(), Duration::from_secs(60));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"clusters:\n").unwrap();
        // The writer pauses with the file open: no change is reported however long it pauses.
        assert!(
            tokio::time::timeout(PAUSE, w.changed()).await.is_err(),
            "a change was reported while the file was still being written"
        );
        f.write_all(b"  - name: c\n").unwrap();
        drop(f);
        tokio::time::timeout(Duration::from_secs(20), w.changed())
            .await
            .expect("the change is reported once the file is closed");
    }

    #[tokio::test]
    async fn a_writer_that_never_closes_is_waited_for_at_most_max_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        let mut w = watch(dir.path(), Duration::from_millis(300));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"clusters: []\n").unwrap();
        let began = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(20), w.changed())
            .await
            .expect("the change is reported after the maximum wait");
        assert!(began.elapsed() >= Duration::from_millis(250));
        drop(f);
    }

    #[tokio::test]
    async fn other_files_open_for_writing_do_not_hold_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = watch(dir.path(), Duration::from_secs(60));
        // An editor's swap file stays open for the whole session; a FIFO is never "closed".
        let mut swap = std::fs::File::create(dir.path().join(".routes.yaml.swp")).unwrap();
        swap.write_all(b"x").unwrap();
        std::fs::write(dir.path().join("routes.yaml"), "clusters: []\n").unwrap();
        tokio::time::timeout(Duration::from_secs(20), w.changed())
            .await
            .expect("a closed configuration file is reported");
        drop(swap);
    }
}
