//! `tern`: the proxy binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tern::server::{self, Options, WatchOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Tern: an HTTP/TCP proxy configured by a directory of YAML files, reloaded atomically on change.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Configuration directory (every *.yaml/*.yml below it) or a single file.
    #[arg(long, env = "TERN_CONFIG")]
    config: PathBuf,
    /// Load and check the configuration (as a reload would), print problems, and exit 0 or 1.
    #[arg(long)]
    check: bool,
    /// Time in-flight requests get to finish on shutdown or when their listener is removed.
    #[arg(long, env = "TERN_DRAIN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Quiet time after a file change before reloading, while a write may still be going on.
    #[arg(long, env = "TERN_RELOAD_DEBOUNCE", default_value = "100ms", value_parser = parse_duration)]
    reload_debounce: Duration,
    /// Quiet time after a finished write (file closed, renamed into place, deleted) before reloading.
    #[arg(long, env = "TERN_RELOAD_SETTLE", default_value = "10ms", value_parser = parse_duration)]
    reload_settle: Duration,
    /// Re-read the files this often even without change events (for NFS/EFS); 0 turns it off.
    #[arg(long, env = "TERN_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, env = "TERN_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log output format.
    #[arg(long, env = "TERN_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long, env = "TERN_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tern::config::Dur::parse(s).map(|d| d.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return match server::check(&args.config) {
            Ok(v) => {
                println!("configuration OK (version {v})");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::from(1)
            }
        };
    }
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log_level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let threads = args
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One CPU: the current-thread scheduler avoids the work-stealing machinery entirely.
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = Options {
        config: args.config,
        drain_timeout: args.drain_timeout,
    };
    let watch = WatchOptions {
        debounce: args.reload_debounce,
        settle: args.reload_settle.min(args.reload_debounce),
        poll_interval: args.poll_interval,
    };
    match rt.block_on(server::run(opts, watch)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tern: {e}");
            ExitCode::from(1)
        }
    }
}
