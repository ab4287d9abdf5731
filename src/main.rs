//! `tern`: the proxy binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tern::server::{self, Options};
use tern::watch::WatchOptions;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Tern: an HTTP/TCP proxy configured by a directory of YAML files, reloaded atomically on change.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration directory (every *.yaml/*.yml below it) or a single file.
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
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
    /// After a change, wait at most this long for files being written to be closed before
    /// reloading (a writer that keeps a file open longer gets it read as it is then).
    #[arg(long, env = "TERN_RELOAD_MAX_WAIT", default_value = "5s", value_parser = parse_duration)]
    reload_max_wait: Duration,
    /// Largest configuration file read, e.g. 16MiB (as `tern-validate --max-file-size`).
    #[arg(long, env = "TERN_MAX_FILE_SIZE", default_value = "16MiB", value_parser = tern_config::source::parse_size)]
    max_file_size: u64,
    /// Most YAML nodes (mappings, lists, scalars) in one configuration file.
    #[arg(long, env = "TERN_MAX_YAML_NODES", default_value_t = tern_config::defaults::MAX_YAML_NODES)]
    max_yaml_nodes: usize,
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Exit 0 if the local proxy's admin `/ready` answers 200, else 1 (container health checks
    /// without a shell or curl).
    Health {
        /// The admin endpoint's address.
        #[arg(long, env = "TERN_ADMIN_ADDRESS", default_value = "127.0.0.1:9901")]
        admin_address: String,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// `GET /ready` with the standard library only: no runtime, no configuration.
fn health(addr: &str, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    // A one-shot command with no runtime: blocking resolution is what it wants.
    #[allow(clippy::disallowed_methods)]
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("bad admin address {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("bad admin address {addr}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("no answer from {addr}: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("{addr}/ready answered {code}")),
        None => Err(format!("{addr}/ready gave no HTTP answer")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tern_config::Dur::parse(s).map(|d| d.0)
}

/// Logging with a reload layer in front of the filter, so `POST /logging` can change it.
fn init_logging(args: &Args) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let text = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log_level.clone());
    let (filter, text) = match EnvFilter::try_new(&text) {
        Ok(f) => (f, text),
        Err(_) => (EnvFilter::new("info"), "info".to_string()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = fmt::layer().with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    tern::logging::install(
        &text,
        Box::new(move |s| {
            let f = EnvFilter::try_new(s).map_err(|e| format!("bad log filter {s:?}: {e}"))?;
            handle.reload(f).map_err(|e| e.to_string())
        }),
    );
}

/// Raises the open-files soft limit to the hard limit: each client connection holds a
/// descriptor, and the usual soft limit (1024) would cap the proxy near a thousand clients while
/// the hard limit allows far more. Logged either way, so the capacity is known.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    // An unlimited hard limit is not a valid soft one: the kernel caps it at fs.nr_open.
    let target = lim.maximum.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    });
    if soft >= target {
        tracing::info!(limit = soft, "open files limit");
        return;
    }
    lim.current = Some(target);
    match setrlimit(Resource::Nofile, lim) {
        Ok(()) => tracing::info!(
            from = soft,
            to = target,
            "open files limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(limit = soft, error = %e, "cannot raise the open files limit"),
    }
}

/// glibc's allocator settings for the proxy: one arena (glibc's default is up to eight per core).
/// With an arena per worker thread, every arena keeps the pages it grew to in a burst of
/// connections, and the next burst lands in another: RSS after eight bursts of 2,000 connections
/// climbed from 120 to 145 MiB (two arenas: 78 to 128). With one it stays flat: 67 to 70 MiB
/// (`bench/memory.py`). Small allocations still come from each thread's own cache (tcache)
/// without taking the arena's lock.
const GLIBC_TUNABLES: &str = "glibc.malloc.arena_max=1";

/// glibc reads `GLIBC_TUNABLES` only when a process starts, and setting it needs no unsafe code
/// only this way: the proxy runs itself again with it (same process id, arguments and
/// environment). Skipped when the variable is already set (by the operator, or by the first
/// run), so it happens at most once; if the exec fails the proxy just goes on.
fn tune_allocator() {
    if cfg!(not(target_env = "gnu")) || std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let Some(arg0) = args.next() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", GLIBC_TUNABLES)
        .exec();
    eprintln!("tern: cannot apply {GLIBC_TUNABLES} ({err}); going on without");
}

fn main() -> ExitCode {
    // TLS (OTLP to an https collector) uses ring; named as the process default so that a build
    // that also links another rustls provider (the workspace's test crates) still picks one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(Command::Health {
        admin_address,
        timeout,
    }) = &args.command
    {
        return match health(admin_address, *timeout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern health: {e}");
                ExitCode::from(1)
            }
        };
    }
    let Some(config) = args.config.clone() else {
        eprintln!("tern: --config PATH (or TERN_CONFIG) is required");
        return ExitCode::from(2);
    };
    let limits = tern_config::Limits {
        max_file_bytes: args.max_file_size,
        max_yaml_nodes: args.max_yaml_nodes,
        ..tern_config::Limits::default()
    };
    if args.check {
        return match server::check(&config, limits) {
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
    tune_allocator();
    init_logging(&args);
    raise_open_files_limit();
    if std::env::var_os("TERN_STATS_DISABLED").is_some_and(|v| v == "1") {
        // Only for measuring what stats cost (bench/README.md); gauges still work.
        tern::set_recording(false);
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
        config,
        drain_timeout: args.drain_timeout,
        limits,
    };
    let watch = WatchOptions {
        debounce: args.reload_debounce,
        settle: args.reload_settle.min(args.reload_debounce),
        max_wait: args.reload_max_wait,
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
