//! The one configuration model shared by `tern`, `tern-validate` and `tern-sync`:
//! types, discovery of split files, parsing with source positions, merging, checks and lints.
//!
//! This crate depends on no runtime code (no tokio networking, hyper, rustls, notify or
//! OpenTelemetry): the validator and the sync agent link only what reading YAML needs, and the
//! one-way flow files → checked model → runtime snapshot is a compile-time fact. Rules the
//! runtime shares with the checks (the access-log format compiler, OTLP endpoint rules, defaults)
//! live here so that what passes `tern-validate` loads in the proxy.
//!
//! YAML is read with `serde-saphyr` (maintained, panic-free, and its `Spanned<T>` and error
//! locations give every diagnostic a `file:line:column`); see `docs/config.md`.

#![forbid(unsafe_code)]

pub mod check;
pub mod check_discovery;
pub mod check_edge;
pub mod check_http2;
pub mod check_observability;
pub mod check_resilience;
pub mod check_tls;
pub mod defaults;
pub mod diag;
pub mod lines;
pub mod lint;
pub mod log_format;
pub mod model;
pub mod otlp;
pub mod secrets;
pub mod source;
pub mod tls;
pub mod value;

use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

pub use diag::{Diagnostic, Severity};
pub use model::*;
pub use source::{DataFiles, Limits, SourceFile, Sources};
pub use value::{Dur, Pattern, Pos, Spanned};

/// An item of a list merged from several files, with the file and position it came from.
#[derive(Debug, Clone)]
pub struct Def<T> {
    /// Index into [`Config::files`].
    pub file: usize,
    /// Position of the item in its file.
    pub pos: Pos,
    /// The item.
    pub value: T,
}

impl<T: Serialize> Serialize for Def<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// A complete, checked configuration merged from all files.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Config {
    /// The admin endpoint.
    pub admin: Admin,
    /// Overload protection.
    pub overload: Overload,
    /// All listeners, in file order.
    pub listeners: Vec<Def<Listener>>,
    /// All route configs, in file order.
    pub route_configs: Vec<Def<RouteConfig>>,
    /// All clusters, in file order.
    pub clusters: Vec<Def<Cluster>>,
    /// The DNS resolver settings (system configuration when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Def<Dns>>,
    /// The files, indexed by [`Def::file`].
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

impl Config {
    /// The file a definition came from.
    pub fn file_of<T>(&self, d: &Def<T>) -> &Path {
        &self.files[d.file]
    }
}

/// Everything known after loading a configuration path.
#[derive(Debug, Default)]
pub struct Report {
    /// The files read (absent when the path itself could not be read).
    pub sources: Option<Sources>,
    /// The merged configuration, present only when there are no errors.
    pub config: Option<Config>,
    /// Content hash of the files (see [`Sources::version`]).
    pub version: Option<String>,
    /// Errors and warnings, sorted by severity, file, line; secret values already hidden.
    pub diagnostics: Vec<Diagnostic>,
    /// The secrets of the files: a program that quotes source lines hides them with it.
    pub secrets: secrets::Secrets,
}

impl Report {
    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// Loads, merges and checks the configuration at `path` (a directory or a single file).
///
/// This is the function every program uses: `tern` at start and on reload, `tern-validate`,
/// and `tern-sync` before making a snapshot current.
pub fn load(path: &Path) -> Report {
    load_with(path, Limits::default())
}

/// [`load`] within `limits` (the programs' `--max-file-size` and `--max-yaml-nodes`).
pub fn load_with(path: &Path, limits: Limits) -> Report {
    match source::read_with(path, limits) {
        Ok(sources) => check_sources(sources),
        Err(diagnostics) => Report {
            diagnostics,
            ..Default::default()
        },
    }
}

/// Parses and checks sources already read (the watcher reads first to skip unchanged content).
pub fn check_sources(mut sources: Sources) -> Report {
    // The parser's lines are the ones diagnostics and quoted lines count (read already does
    // this; sources made some other way may not have).
    for f in &mut sources.files {
        f.text = lines::normalize_line_breaks(std::mem::take(&mut f.text));
    }
    let (config, diagnostics, secrets) = check::check(&mut sources);
    Report {
        version: Some(sources.version()),
        sources: Some(sources),
        config,
        diagnostics,
        secrets,
    }
}
