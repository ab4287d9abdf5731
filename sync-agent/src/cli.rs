//! Command-line interface: every flag can also be set with a `TERN_SYNC_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Syncs Tern configuration from S3 into a local directory, atomically, or publishes it.
#[derive(Debug, Parser)]
#[command(name = "tern-sync", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Poll S3 and keep DEST/current pointing at the newest valid snapshot.
    Run(RunArgs),
    /// Validate a configuration directory and publish it to S3 (manifest written last).
    Publish(PublishArgs),
    /// Exit 0 if the local agent's /healthz answers 200 (for container health checks).
    Health(HealthArgs),
}

/// Where the configuration lives in S3 and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// Bucket name.
    #[arg(long, env = "TERN_SYNC_BUCKET")]
    pub bucket: String,
    /// Key prefix of the configuration inside the bucket.
    #[arg(long, env = "TERN_SYNC_PREFIX", default_value = "")]
    pub prefix: String,
    /// S3 endpoint for S3-compatible stores (AWS_ENDPOINT_URL_S3 works too).
    #[arg(long, env = "TERN_SYNC_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Use path-style addressing (bucket in the path), needed by most S3-compatible stores.
    #[arg(long, env = "TERN_SYNC_FORCE_PATH_STYLE")]
    pub force_path_style: bool,
    /// AWS region when none is configured by the environment or profile.
    #[arg(long, env = "TERN_SYNC_REGION")]
    pub region: Option<String>,
}

/// Options of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// S3 location.
    #[command(flatten)]
    pub s3: S3Args,
    /// Directory holding `.snapshots/` and the `current` symlink.
    #[arg(long, env = "TERN_SYNC_DEST")]
    pub dest: PathBuf,
    /// Time between polls.
    #[arg(long, env = "TERN_SYNC_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Sync once, exit 0 when a valid snapshot is current, non-zero otherwise.
    #[arg(long, env = "TERN_SYNC_ONCE")]
    pub once: bool,
    /// With --once: give up after this long when S3 cannot be reached.
    #[arg(long, env = "TERN_SYNC_ONCE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub once_timeout: Duration,
    /// Do not validate snapshots with the proxy's loader.
    #[arg(long, env = "TERN_SYNC_NO_VALIDATE")]
    pub no_validate: bool,
    /// Number of snapshots kept on disk (the current one always is).
    #[arg(long, env = "TERN_SYNC_KEEP", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,
    /// Address of the /healthz and /metrics endpoint.
    #[arg(
        long,
        env = "TERN_SYNC_HEALTH_ADDRESS",
        default_value = "127.0.0.1:9902"
    )]
    pub health_address: SocketAddr,
    /// Largest object accepted, in bytes (suffixes KiB, MiB, GiB allowed).
    #[arg(long, env = "TERN_SYNC_MAX_OBJECT_SIZE", default_value = "10MiB", value_parser = parse_size)]
    pub max_object_size: u64,
    /// Largest total snapshot size accepted.
    #[arg(long, env = "TERN_SYNC_MAX_TOTAL_SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub max_total_size: u64,
    /// Upper bound of the retry delay after S3 errors.
    #[arg(long, env = "TERN_SYNC_BACKOFF_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Timeout of one S3 request.
    #[arg(long, env = "TERN_SYNC_REQUEST_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

/// Options of `publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// S3 location.
    #[command(flatten)]
    pub s3: S3Args,
    /// The configuration directory to publish.
    #[arg(required_unless_present = "rollback", conflicts_with = "rollback")]
    pub src_dir: Option<PathBuf>,
    /// Do not validate SRC_DIR before publishing.
    #[arg(long, env = "TERN_SYNC_NO_VALIDATE")]
    pub no_validate: bool,
    /// Re-point the current manifest to this earlier version instead of publishing.
    #[arg(long, env = "TERN_SYNC_ROLLBACK")]
    pub rollback: Option<String>,
    /// Manifests kept for rollback (the current one always is); at least 2 so an agent mid-download keeps its blobs.
    #[arg(long, env = "TERN_SYNC_RETAIN", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..))]
    pub retain: u32,
    /// Blobs younger than this are never garbage-collected (a concurrent publish may be about to use them).
    #[arg(long, env = "TERN_SYNC_GC_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_grace: Duration,
}

/// Options of `health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Address of the agent's health endpoint.
    #[arg(
        long,
        env = "TERN_SYNC_HEALTH_ADDRESS",
        default_value = "127.0.0.1:9902"
    )]
    pub health_address: SocketAddr,
}

/// Parses `1048576`, `512KiB`, `10MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size `{s}`"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("unknown size unit `{u}` (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("12"), Ok(12));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
