//! `tern-sync`: keeps a local directory in sync with Tern configuration published to S3.
//!
//! See `docs/sync.md` for the layout in S3 and on disk, and the guarantees.

mod cli;
mod health;
mod keys;
mod manifest;
mod metrics;
mod poll;
mod publish;
mod s3;
mod snapshot;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TERN_SYNC_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,aws=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Two worker threads are plenty: the agent does one request at a time.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern-sync: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => {
                tokio::select! {
                    r = poll::run(args) => r,
                    r = shutdown() => r,
                }
            }
            Command::Publish(args) => publish::run(args).await,
            Command::Health(args) => health::check(args.health_address).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-sync: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns on SIGTERM or SIGINT: as PID 1 in a container, an unhandled SIGTERM would be ignored.
async fn shutdown() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    Ok(())
}
