//! `tern-import envoy PATH... --out DIR`: turns Envoy v3 configuration into a split Tern
//! configuration, reports every Envoy field, filter and extension that did not map, then loads
//! the result with the proxy's own loader and reports its diagnostics too.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tern_config::{self as config, Report};
use tern_validate::import::{self, tree, Ctx};
use tern_validate::{render, Outcome};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "tern-import",
    version,
    about = "Import another proxy's configuration as a Tern configuration",
    after_help = "Exit status: 0 imported whole and valid; 1 something was dropped (unless --allow-partial) \
                  or the result is invalid; 2 usage or I/O error.\nMapping and codes: docs/migrate-from-envoy.md"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Envoy v3 YAML or JSON: a bootstrap (static_resources, admin) and/or file-based xDS
    /// resource files (LDS, RDS, CDS, EDS).
    Envoy {
        /// Envoy files, or directories searched for *.yaml, *.yml and *.json.
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
        /// Directory the Tern configuration is written to (created; files an earlier import
        /// wrote there are replaced, any other YAML file there stops the import).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Exit 0 even when something was dropped (each drop is still reported, as a warning).
        #[arg(long)]
        allow_partial: bool,
        /// Output format of the report.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
}

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// rustc-style messages with source snippets.
    Human,
    /// One JSON document (the `tern-validate --format json` document).
    Json,
    /// GitHub Actions workflow commands.
    Github,
}

fn main() -> ExitCode {
    let cli: Cli = match tern_validate::parse_cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Command::Envoy {
        paths,
        out,
        allow_partial,
        format,
    } = cli.command;
    run(&paths, &out, allow_partial, format)
}

fn run(paths: &[PathBuf], out: &Path, allow_partial: bool, format: Format) -> ExitCode {
    let limits = config::Limits {
        offline: true,
        ..Default::default()
    };
    for p in paths {
        if let Err(e) = std::fs::metadata(p) {
            eprintln!("tern-import: cannot read {}: {e}", p.display());
            return ExitCode::from(2);
        }
    }
    let (files, io_errors) = import::read_inputs(paths, limits);
    if !io_errors.is_empty() {
        for d in &io_errors {
            eprintln!("tern-import: {d}");
        }
        return ExitCode::from(2);
    }

    let mut cx = Ctx {
        allow_partial,
        ..Default::default()
    };
    let mut trees = Vec::new();
    for (_, f) in &files {
        match tree::parse(&f.text, &limits.clone()) {
            Ok(n) => trees.push((f.path.as_path(), n)),
            Err((pos, msg)) => cx.bad_input(&f.path, pos, format!("cannot parse: {msg}")),
        }
    }
    let refs: Vec<(&Path, &tree::Node)> = trees.iter().map(|(p, n)| (*p, n)).collect();
    let imported = import::map(&mut cx, &refs);
    let generated = match import::render(&imported) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("tern-import: cannot write the configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = import::write(out, &generated) {
        eprintln!("tern-import: {e}");
        return ExitCode::from(2);
    }

    // One outcome per Envoy PATH (its files and what was reported in them), then the loader's
    // report on the written directory.
    let mut outcomes: Vec<Outcome> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let own: Vec<config::SourceFile> = files
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, f)| f.clone())
                .collect();
            let sources = config::Sources {
                root: p.clone(),
                files: own,
                limits,
                ..Default::default()
            };
            let mut diagnostics: Vec<config::Diagnostic> = cx
                .diags
                .iter()
                .filter(|d| sources.files.iter().any(|f| f.path == d.file))
                .cloned()
                .collect();
            diagnostics
                .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            Outcome {
                path: p.clone(),
                report: Report {
                    version: Some(sources.version()),
                    sources: Some(sources),
                    config: None,
                    diagnostics,
                    secrets: Default::default(),
                },
                io_failure: false,
            }
        })
        .collect();
    let loaded = if generated.is_empty() {
        None
    } else {
        Some(config::load_with(out, limits))
    };
    let invalid = loaded.as_ref().is_some_and(|r| r.error_count() > 0) || generated.is_empty();
    if let Some(report) = loaded {
        outcomes.push(Outcome {
            path: out.to_path_buf(),
            report,
            io_failure: false,
        });
    }
    let partial = cx.dropped > 0;
    let ok = !invalid && (!partial || allow_partial);

    let mut stdout = std::io::stdout().lock();
    let color = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let written = match format {
        Format::Human => render::human(&mut stdout, &outcomes, color, ok),
        Format::Json => render::json(&mut stdout, &outcomes, false, ok),
        Format::Github => render::github(&mut stdout, &outcomes, false, "tern-import"),
    };
    if let Err(e) = written.and_then(|_| stdout.flush()) {
        eprintln!("tern-import: cannot write the report: {e}");
        return ExitCode::from(2);
    }
    eprintln!(
        "tern-import: wrote {} file{} to {}: {} listener{}, {} route config{}, {} cluster{}{}; {} dropped{}",
        generated.len(),
        if generated.len() == 1 { "" } else { "s" },
        out.display(),
        imported.listeners.len(),
        if imported.listeners.len() == 1 { "" } else { "s" },
        imported.route_configs.len(),
        if imported.route_configs.len() == 1 { "" } else { "s" },
        imported.clusters.len(),
        if imported.clusters.len() == 1 { "" } else { "s" },
        if imported.admin.is_some() { ", admin" } else { "" },
        cx.dropped,
        if invalid { "; the result is not valid" } else { "" },
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
