//! The `run` loop: one cheap poll per interval, snapshot on change, backoff on errors.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::cli::RunArgs;
use crate::health::{self, Health, Refused, Shared};
use crate::keys;
use crate::manifest::{self, Layout, Manifest};
use crate::metrics::Metrics;
use crate::s3::{Backoff, Got, S3Error, S3};
use crate::snapshot::{self, SnapFile, State, Store};

/// Manifests larger than this are refused (a manifest lists files, it is never big).
const MANIFEST_LIMIT: u64 = 16 << 20;
/// Snapshots with more files are refused: a configuration has tens of files, and each costs a GET.
pub const MAX_FILES: usize = 10_000;

/// Which kind of source the prefix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not known yet: the first poll tries the manifest.
    Unknown,
    /// `P/.tern/manifest.json` exists: conditional GET of it per poll.
    Manifest,
    /// Plain files: one listing per poll.
    Plain,
}

/// What one successful poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing new.
    Unchanged,
    /// A new snapshot is current.
    Changed(String),
    /// Plain mode: a changed listing seen once, waiting for it to stay unchanged for one more poll.
    Pending,
    /// A new version was refused; the current snapshot stays.
    Invalid(String, Vec<String>),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Changed(_) => "changed",
            Outcome::Pending => "pending",
            Outcome::Invalid(..) => "invalid",
        }
    }
}

/// Why a poll failed (it is retried with backoff; nothing on disk changes).
#[derive(Debug)]
pub enum PollError {
    /// S3 request failed.
    S3(S3Error),
    /// Writing the snapshot failed (the partial snapshot was removed).
    Io(io::Error),
    /// Anything else worth retrying.
    Other(String),
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::S3(e) => write!(f, "S3: {e}"),
            PollError::Io(e) => write!(f, "writing snapshot: {e}"),
            PollError::Other(e) => f.write_str(e),
        }
    }
}

impl From<S3Error> for PollError {
    fn from(e: S3Error) -> Self {
        PollError::S3(e)
    }
}

impl From<io::Error> for PollError {
    fn from(e: io::Error) -> Self {
        PollError::Io(e)
    }
}

/// The agent's state between polls.
pub struct Agent {
    args: RunArgs,
    s3: S3,
    layout: Layout,
    store: Store,
    metrics: Arc<Metrics>,
    /// The snapshot `current` points to.
    current: Option<State>,
    mode: Mode,
    /// Manifest ETag already handled (built or refused): sent as If-None-Match.
    manifest_etag: Option<String>,
    /// Plain mode: a changed listing seen once.
    pending: Option<String>,
    /// Plain mode: a listing whose snapshot was refused (not retried until it changes).
    refused_listing: Option<String>,
    /// Keys rejected by the last build.
    rejected: Vec<String>,
}

/// One file to put in a snapshot.
struct Want {
    rel: String,
    key: String,
    size: u64,
    sha256: Option<String>,
    etag: Option<String>,
}

impl Agent {
    /// Prepares the agent; reads what is already current on disk.
    pub fn new(args: RunArgs, s3: S3, store: Store, metrics: Arc<Metrics>) -> Self {
        let current = store.current();
        let manifest_etag = current.as_ref().and_then(|s| s.manifest_etag.clone());
        Agent {
            layout: Layout::new(&args.s3.prefix),
            args,
            s3,
            store,
            metrics,
            current,
            mode: Mode::Unknown,
            manifest_etag,
            pending: None,
            refused_listing: None,
            rejected: vec![],
        }
    }

    /// The current snapshot's version.
    pub fn current_version(&self) -> Option<&str> {
        self.current.as_ref().map(|s| s.version.as_str())
    }

    /// One poll: exactly one S3 request when nothing changed.
    pub async fn poll(&mut self) -> Result<Outcome, PollError> {
        match self.mode {
            Mode::Plain => self.poll_plain().await,
            Mode::Unknown | Mode::Manifest => self.poll_manifest().await,
        }
    }

    async fn poll_manifest(&mut self) -> Result<Outcome, PollError> {
        let key = self.layout.manifest();
        let got = self
            .s3
            .get(&key, self.manifest_etag.as_deref(), MANIFEST_LIMIT)
            .await?;
        let (body, etag) = match got {
            Got::NotModified => {
                self.mode = Mode::Manifest;
                return Ok(Outcome::Unchanged);
            }
            Got::NotFound => {
                if self.mode != Mode::Plain {
                    info!(
                        "no manifest at {key}: plain mode (listing {})",
                        self.where_()
                    );
                }
                self.mode = Mode::Plain;
                self.manifest_etag = None;
                return self.poll_plain().await;
            }
            Got::TooLarge(n) => {
                return Ok(Outcome::Invalid(
                    "manifest".into(),
                    vec![format!("manifest is {n} bytes, over {MANIFEST_LIMIT}")],
                ))
            }
            Got::Object { body, etag } => (body, etag),
        };
        if self.mode != Mode::Manifest {
            info!("manifest mode ({key})");
        }
        self.mode = Mode::Manifest;
        let m = match serde_json::from_slice::<Manifest>(&body) {
            Ok(m) if manifest::valid_version(&m.version) => m,
            Ok(m) => {
                self.manifest_etag = etag;
                return Ok(Outcome::Invalid(
                    "manifest".into(),
                    vec![format!("invalid version id {:?}", m.version)],
                ));
            }
            Err(e) => {
                self.manifest_etag = etag;
                return Ok(Outcome::Invalid(
                    "manifest".into(),
                    vec![format!("{key} is not a valid manifest: {e}")],
                ));
            }
        };
        if self.current_version() == Some(m.version.as_str()) {
            self.manifest_etag = etag;
            return Ok(Outcome::Unchanged);
        }
        let mut wants = Vec::new();
        let mut bad_hash = Vec::new();
        for f in &m.files {
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bad_hash.push(format!("{}: invalid sha256", f.path));
            }
            wants.push(Want {
                rel: f.path.clone(),
                key: self.layout.blob(&f.sha256.to_ascii_lowercase()),
                size: f.size,
                sha256: Some(f.sha256.to_ascii_lowercase()),
                etag: None,
            });
        }
        let outcome = if bad_hash.is_empty() {
            self.build(&m.version, wants, etag.clone(), None).await?
        } else {
            Outcome::Invalid(m.version.clone(), bad_hash)
        };
        // Built or refused, this manifest is handled: later polls ask "changed since this one?".
        self.manifest_etag = etag;
        Ok(outcome)
    }

    fn where_(&self) -> String {
        format!("s3://{}/{}", self.s3.bucket, self.layout.base)
    }

    async fn poll_plain(&mut self) -> Result<Outcome, PollError> {
        let listing = self.s3.list(&self.layout.base).await?;
        if listing.iter().any(|o| o.key == self.layout.manifest()) {
            // Someone started publishing with manifests: switch (one extra request, once).
            self.mode = Mode::Manifest;
            self.pending = None;
            return Box::pin(self.poll_manifest()).await;
        }
        let tern_dir = format!("{}.tern/", self.layout.base);
        let objects: Vec<_> = listing
            .into_iter()
            .filter(|o| !o.key.starts_with(&tern_dir) && !o.key.ends_with('/'))
            .collect();
        let mut h = Sha256::new();
        for o in &objects {
            for part in [o.key.as_bytes(), o.etag.as_bytes(), &o.size.to_le_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
        let sig = hex::encode(&h.finalize()[..8]);
        let current_sig = self.current.as_ref().and_then(|s| s.listing.as_deref());
        if current_sig == Some(sig.as_str()) || self.refused_listing.as_deref() == Some(&sig) {
            self.pending = None;
            return Ok(Outcome::Unchanged);
        }
        if objects.is_empty() {
            return Err(PollError::Other(format!(
                "nothing to sync: no objects under {}",
                self.where_()
            )));
        }
        if self.pending.as_deref() != Some(&sig) {
            // A multi-file upload may be half done: take it only if the next listing is the same.
            self.pending = Some(sig);
            return Ok(Outcome::Pending);
        }
        self.pending = None;
        let wants = objects
            .iter()
            .map(|o| Want {
                rel: self.layout.relative(&o.key).unwrap_or(&o.key).to_string(),
                key: o.key.clone(),
                size: o.size,
                sha256: None,
                etag: Some(o.etag.clone()),
            })
            .collect();
        let version = format!("plain-{sig}");
        let outcome = self.build(&version, wants, None, Some(sig.clone())).await?;
        if matches!(outcome, Outcome::Invalid(..)) {
            self.refused_listing = Some(sig);
        }
        Ok(outcome)
    }

    /// Downloads (or reuses), writes, validates and activates a snapshot.
    async fn build(
        &mut self,
        version: &str,
        wants: Vec<Want>,
        manifest_etag: Option<String>,
        listing: Option<String>,
    ) -> Result<Outcome, PollError> {
        let (accepted, rejected) = keys::filter(wants.iter().map(|w| w.rel.as_str()));
        self.rejected = rejected
            .iter()
            .map(|r| format!("{:?}: {}", r.key, r.reason))
            .collect();
        for r in &self.rejected {
            error!("skipping key {r}");
        }
        self.metrics
            .keys_rejected
            .fetch_add(rejected.len() as u64, Relaxed);
        let accepted: std::collections::BTreeSet<String> = accepted.into_iter().collect();
        let wants: Vec<Want> = wants
            .into_iter()
            .filter(|w| accepted.contains(&w.rel))
            .collect();
        let mut limits = Vec::new();
        for w in &wants {
            if w.size > self.args.max_object_size {
                limits.push(format!(
                    "{}: {} bytes, over the per-object limit of {}",
                    w.rel, w.size, self.args.max_object_size
                ));
            }
        }
        if wants.len() > MAX_FILES {
            limits.push(format!(
                "{} files, over the limit of {MAX_FILES}",
                wants.len()
            ));
        }
        let total: u64 = wants.iter().map(|w| w.size).sum();
        if total > self.args.max_total_size {
            limits.push(format!(
                "total {total} bytes, over the limit of {}",
                self.args.max_total_size
            ));
        }
        if !limits.is_empty() {
            return Ok(Outcome::Invalid(version.to_string(), limits));
        }
        if wants.is_empty() {
            return Ok(Outcome::Invalid(
                version.to_string(),
                vec!["no usable files".into()],
            ));
        }

        let mut builder = self.store.begin(version)?;
        let mut files = BTreeMap::new();
        for w in &wants {
            let (data, etag) = match self.reusable(w) {
                Some(d) => (d, w.etag.clone()),
                None => self.download(w).await?,
            };
            builder.write(&w.rel, &data)?;
            files.insert(
                w.rel.clone(),
                SnapFile {
                    size: data.len() as u64,
                    sha256: manifest::sha256_hex(&data),
                    etag,
                },
            );
        }
        let dir = builder.finish()?;
        if !self.args.no_validate {
            match snapshot::validate(&dir) {
                Ok(warnings) => {
                    for w in warnings {
                        warn!("{version}: {w}");
                    }
                }
                Err(diags) => {
                    self.store.discard(version);
                    return Ok(Outcome::Invalid(version.to_string(), diags));
                }
            }
        }
        let state = State {
            version: version.to_string(),
            manifest_etag,
            listing,
            files,
        };
        if let Err(e) = self.store.activate(&state) {
            self.store.discard(version);
            return Err(e.into());
        }
        self.current = Some(state);
        match self.store.prune(self.args.keep as usize) {
            Ok(removed) if !removed.is_empty() => info!("pruned snapshots {removed:?}"),
            Ok(_) => {}
            Err(e) => warn!("pruning old snapshots: {e}"),
        }
        Ok(Outcome::Changed(version.to_string()))
    }

    /// The bytes of a wanted file if the current snapshot already has them (same hash or ETag).
    fn reusable(&self, w: &Want) -> Option<Vec<u8>> {
        let cur = self.current.as_ref()?;
        let (rel, f) = match (&w.sha256, &w.etag) {
            (Some(sha), _) => cur.files.iter().find(|(_, f)| &f.sha256 == sha)?,
            (None, Some(etag)) => {
                let f = cur.files.get(&w.rel)?;
                (f.etag.as_ref() == Some(etag)).then_some((&w.rel, f))?
            }
            (None, None) => return None,
        };
        self.store.reuse(&cur.version, rel, &f.sha256)
    }

    async fn download(&self, w: &Want) -> Result<(Vec<u8>, Option<String>), PollError> {
        match self.s3.get(&w.key, None, self.args.max_object_size).await? {
            Got::Object { body, etag } => {
                if let Some(sha) = &w.sha256 {
                    let got = manifest::sha256_hex(&body);
                    if body.len() as u64 != w.size || &got != sha {
                        return Err(PollError::Other(format!(
                            "{}: blob {} has {} bytes and sha256 {got}, manifest says {} and {sha}",
                            w.rel,
                            w.key,
                            body.len(),
                            w.size
                        )));
                    }
                }
                if let (Some(want), Some(got)) = (&w.etag, &etag) {
                    if want != got {
                        return Err(PollError::Other(format!(
                            "{} changed while downloading; retrying",
                            w.key
                        )));
                    }
                }
                Ok((body.to_vec(), etag))
            }
            Got::NotFound => Err(PollError::Other(format!("{} disappeared; retrying", w.key))),
            Got::TooLarge(n) => Err(PollError::Other(format!(
                "{} is {n} bytes, over the per-object limit",
                w.key
            ))),
            Got::NotModified => Err(PollError::Other(format!("unexpected 304 for {}", w.key))),
        }
    }
}

/// Runs the agent until stopped (or, with `--once`, until a valid snapshot is current).
pub async fn run(args: RunArgs) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(&args.dest)
        .map_err(|e| format!("cannot use --dest {}: {e}", args.dest.display()))?;
    let s3 = S3::new(&args.s3, metrics.clone(), false, args.request_timeout).await;
    let mut agent = Agent::new(args.clone(), s3, store, metrics.clone());
    let existing = agent.current_version().map(str::to_string);
    if let Some(v) = &existing {
        info!("current snapshot on disk: {v}");
        *metrics.version.lock().unwrap() = Some(v.clone());
    }
    let health: Shared = Arc::new(std::sync::Mutex::new(Health::new(args.interval, existing)));
    if !args.once {
        let addr = health::serve(args.health_address, health.clone(), metrics.clone())
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.health_address))?;
        info!("health and metrics on http://{addr}/healthz and /metrics");
    }
    let started = Instant::now();
    let mut backoff = Backoff::new(args.interval, args.backoff_max);
    loop {
        let poll_started = tokio::time::Instant::now();
        let delay = match agent.poll().await {
            Ok(outcome) => {
                backoff.succeed();
                record_success(&agent, &outcome, &metrics, &health);
                if args.once {
                    if let Some(done) = once_result(&agent, &outcome) {
                        return done;
                    }
                }
                // Fixed rate: polls start one interval apart, however long the poll took.
                (poll_started + args.interval)
                    .saturating_duration_since(tokio::time::Instant::now())
            }
            Err(e) => {
                let delay = backoff.fail();
                record_failure(&agent, &e, backoff.failures(), delay, &metrics, &health);
                if args.once && started.elapsed() + delay > args.once_timeout {
                    return Err(format!(
                        "no valid snapshot after {:?}: {e}",
                        started.elapsed()
                    ));
                }
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Records a successful poll: metrics first, then health (readers of health see final metrics).
fn record_success(agent: &Agent, outcome: &Outcome, metrics: &Metrics, health: &Shared) {
    metrics.poll(outcome.label());
    let now = health::unix(SystemTime::now());
    metrics.last_success.store(now, Relaxed);
    match outcome {
        Outcome::Changed(v) => {
            info!("snapshot {v} is current");
            *metrics.version.lock().unwrap() = Some(v.clone());
        }
        Outcome::Invalid(v, errors) => {
            metrics.snapshots_invalid.fetch_add(1, Relaxed);
            error!(
                "configuration {v} refused, keeping {}:",
                agent.current_version().unwrap_or("nothing")
            );
            for e in errors {
                error!("  {e}");
            }
        }
        Outcome::Unchanged | Outcome::Pending => {}
    }
    let mut h = health.lock().unwrap();
    h.mode = match agent.mode {
        Mode::Manifest => "manifest",
        Mode::Plain => "plain",
        Mode::Unknown => "",
    };
    h.last_poll_ok = true;
    h.last_success = Some(now);
    h.consecutive_failures = 0;
    h.last_error = None;
    h.rejected_keys = agent.rejected.clone();
    match outcome {
        Outcome::Changed(v) => {
            h.current = Some(v.clone());
            h.refused = None;
        }
        Outcome::Invalid(v, errors) => {
            h.refused = Some(Refused {
                version: v.clone(),
                errors: errors.clone(),
            })
        }
        Outcome::Unchanged | Outcome::Pending => {}
    }
}

/// Records a failed poll; the current snapshot stays.
fn record_failure(
    agent: &Agent,
    e: &PollError,
    failures: u32,
    delay: std::time::Duration,
    metrics: &Metrics,
    health: &Shared,
) {
    metrics.poll("error");
    warn!(
        "poll failed ({failures} in a row), keeping {}; retrying in {delay:?}: {e}",
        agent.current_version().unwrap_or("no snapshot")
    );
    let mut h = health.lock().unwrap();
    h.last_poll_ok = false;
    h.consecutive_failures = failures;
    h.last_error = Some(e.to_string());
}

/// With `--once`: whether to exit after this outcome, and how.
fn once_result(agent: &Agent, outcome: &Outcome) -> Option<Result<(), String>> {
    match (outcome, agent.current_version()) {
        (Outcome::Invalid(v, errors), _) => Some(Err(format!(
            "configuration {v} is invalid:\n  {}",
            errors.join("\n  ")
        ))),
        // Plain mode: the listing must be seen unchanged once more.
        (Outcome::Pending, _) => None,
        (_, Some(v)) => {
            println!("snapshot {v} is current");
            Some(Ok(()))
        }
        _ => None,
    }
}
