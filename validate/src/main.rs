//! `tern-validate`: checks split Tern configurations with the proxy's own loader
//! (`tern_config::load`) and reports every problem at `file:line:column`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tern_config::{self as config, diag::codes, Diagnostic, Pos, Report};
use tern_validate::{render, Outcome};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "tern-validate",
    version,
    about = "Validate Tern configuration directories or files with the proxy's own loader",
    after_help = "Exit status: 0 valid, 1 invalid (or warnings with --strict), 2 usage or I/O error.\n\
                  Codes and output formats: docs/validate.md"
)]
struct Cli {
    /// Configuration directories or files, each loaded as `tern --config PATH` would load it.
    #[arg(value_name = "PATH", required_unless_present = "schema")]
    paths: Vec<PathBuf>,

    /// Output format of the diagnostics.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// Treat warnings as errors (exit 1 when there is any warning).
    #[arg(long)]
    strict: bool,

    /// Print the merged configuration of each valid PATH as YAML on stdout (diagnostics go to stderr).
    #[arg(long)]
    print_effective: bool,

    /// Do not check files the configuration refers to (TLS certificates and keys), for CI without secrets.
    #[arg(long)]
    skip_files: bool,

    /// Warn about certificates that expire within this long (W011), e.g. 30d, 2w, 90days.
    #[arg(long, value_name = "DURATION", default_value = "30days", value_parser = parse_duration)]
    cert_expiry_warn: std::time::Duration,

    /// Print the JSON Schema of one configuration file and exit.
    #[arg(long, conflicts_with_all = ["paths", "print_effective"])]
    schema: bool,

    /// When to color human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,

    /// Largest configuration file read, e.g. 16MiB (as `tern --max-file-size`).
    #[arg(long, env = "TERN_MAX_FILE_SIZE", default_value = "16MiB", value_parser = config::source::parse_size)]
    max_file_size: u64,

    /// Most YAML nodes (mappings, lists, scalars) in one file (as `tern --max-yaml-nodes`).
    #[arg(long, env = "TERN_MAX_YAML_NODES", default_value_t = config::defaults::MAX_YAML_NODES)]
    max_yaml_nodes: usize,
}

/// How diagnostics are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// rustc-style messages with source snippets.
    Human,
    /// One JSON document holding every diagnostic (see docs/validate.md).
    Json,
    /// GitHub Actions workflow commands (`::error file=...`), shown inline on pull requests.
    Github,
    /// GitLab Code Quality report (Code Climate JSON), shown in merge requests.
    Gitlab,
}

/// When to use ANSI colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Color {
    /// When writing to a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

fn main() -> ExitCode {
    let cli: Cli = match tern_validate::parse_cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cli.schema {
        let schema = schemars::schema_for!(tern_config::Fragment);
        let text = serde_json::to_string_pretty(&schema).expect("schema serializes");
        println!("{text}");
        return ExitCode::SUCCESS;
    }
    let limits = config::Limits {
        max_file_bytes: cli.max_file_size,
        max_yaml_nodes: cli.max_yaml_nodes,
        cert_expiry_warn: cli.cert_expiry_warn,
        // Secrets injected into the proxy's environment are not in CI's: reported, not failed.
        offline: true,
        skip_files: cli.skip_files,
    };
    let outcomes: Vec<Outcome> = cli.paths.iter().map(|p| validate(p, limits)).collect();

    let errors: usize = outcomes.iter().map(|o| o.report.error_count()).sum();
    let warnings: usize = outcomes
        .iter()
        .map(|o| o.report.diagnostics.len() - o.report.error_count())
        .sum();
    let io_failure = outcomes.iter().any(|o| o.io_failure);
    let valid = errors == 0 && !(cli.strict && warnings > 0);

    // stdout carries the effective YAML when asked for, so diagnostics move to stderr then.
    let mut out: Box<dyn Write> = if cli.print_effective {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    let to_terminal = if cli.print_effective {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => to_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let written = match cli.format {
        Format::Human => render::human(&mut out, &outcomes, color, valid),
        Format::Json => render::json(&mut out, &outcomes, cli.strict, valid),
        Format::Github => render::github(&mut out, &outcomes, cli.strict, "tern-validate"),
        Format::Gitlab => render::gitlab(&mut out, &outcomes, cli.strict),
    };
    if let Err(e) = written.and_then(|_| out.flush()) {
        drop(out);
        eprintln!("tern-validate: cannot write the report: {e}");
        return ExitCode::from(2);
    }
    drop(out);

    if cli.print_effective {
        let mut stdout = std::io::stdout().lock();
        let mut printed = 0;
        for o in &outcomes {
            let Some(cfg) = &o.report.config else {
                continue;
            };
            // Several PATHs become several YAML documents, each named by a comment.
            let mut doc = String::new();
            if printed > 0 {
                doc.push_str("---\n");
            }
            if outcomes.len() > 1 {
                doc.push_str(&format!("# {}\n", o.path.display()));
            }
            let result = serde_saphyr::to_string(cfg)
                .map_err(|e| e.to_string())
                .and_then(|yaml| {
                    doc.push_str(&yaml);
                    stdout.write_all(doc.as_bytes()).map_err(|e| e.to_string())
                });
            if let Err(e) = result {
                eprintln!("tern-validate: cannot print {}: {e}", o.path.display());
                return ExitCode::from(2);
            }
            printed += 1;
        }
    }

    if io_failure {
        ExitCode::from(2)
    } else if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--cert-expiry-warn`'s syntax: a duration such as `30d`, `2w` or `720h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    config::Dur::parse(s).map(|d| d.0)
}

/// Loads one PATH with the proxy's loader; a PATH that does not exist is an I/O failure (exit 2).
fn validate(path: &Path, limits: config::Limits) -> Outcome {
    if let Err(e) = std::fs::metadata(path) {
        let d = Diagnostic::error(
            codes::IO,
            path,
            Pos::default(),
            format!("cannot read {}: {e}", path.display()),
        );
        return Outcome {
            path: path.to_path_buf(),
            report: Report {
                diagnostics: vec![d],
                ..Default::default()
            },
            io_failure: true,
        };
    }
    let report = config::load_with(path, limits);
    Outcome {
        path: path.to_path_buf(),
        report,
        io_failure: false,
    }
}
