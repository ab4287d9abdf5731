//! `tern-validate`'s library: the report renderers (human, JSON, GitHub, GitLab) shared by the
//! `tern-validate` and `tern-import` binaries, and the Envoy importer ([`import`]).

pub mod import;
pub mod render;

use std::path::PathBuf;

use tern_config::{Report, Severity};

/// Parses a binary's command line; on `--help`, `--version` or a usage error, prints what clap
/// says and gives the exit status both tools document (0 for help, 2 for usage errors).
pub fn parse_cli<T: clap::Parser>() -> Result<T, std::process::ExitCode> {
    T::try_parse().map_err(|e| {
        let code = if e.use_stderr() { 2 } else { 0 };
        let _ = e.print();
        std::process::ExitCode::from(code)
    })
}

/// What happened to one PATH argument.
pub struct Outcome {
    /// The PATH as given.
    pub path: PathBuf,
    /// The loader's report.
    pub report: Report,
    /// True when PATH itself could not be read (exit status 2).
    pub io_failure: bool,
}

/// Counts errors and warnings over all outcomes.
pub fn counts(outcomes: &[Outcome]) -> (usize, usize) {
    let mut e = 0;
    let mut w = 0;
    for o in outcomes {
        for d in &o.report.diagnostics {
            match d.severity {
                Severity::Error => e += 1,
                Severity::Warning => w += 1,
            }
        }
    }
    (e, w)
}
