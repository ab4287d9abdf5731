//! The S3 harness: a real moto S3 server, buckets seeded through the AWS SDK, and the real
//! `tern-sync` agent run against them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;

use crate::bin::tern_sync_bin;
use crate::client::http_get;
use crate::ports::free_port;
use crate::process::Proc;
use crate::wait::wait_until_within;

/// Deadline for the S3 harness's waits (moto and the agent's polls are slower than the proxy).
pub const DEADLINE: Duration = Duration::from_secs(30);

const INSTALL: &str = "moto's S3 server is required for these tests; install with: python3 -m pip install 'moto[server]' (or scripts/install-test-deps)";

/// Runs moto in-process under a watchdog thread that exits when stdin closes, so the server
/// dies with the test binary even when no destructor runs (statics are never dropped).
const MOTO_SCRIPT: &str = "import sys, os, threading\n\
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()\n\
from moto.server import main\n\
main(sys.argv[1:])\n";

/// A moto server process (killed on drop).
pub struct Moto {
    proc: Proc,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts moto on `port` and waits until `/moto-api/` answers 200.
    pub fn start_on(port: u16) -> Moto {
        let ok = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "{INSTALL}");
        let child = Command::new("python3")
            .args([
                "-c",
                MOTO_SCRIPT,
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3: {e}; {INSTALL}"));
        let mut m = Moto {
            proc: Proc::adopt(child),
            port,
        };
        let start = Instant::now();
        while http_get(port, "/moto-api/").map(|r| r.0) != Some(200) {
            if let Some(st) = m.proc.child.try_wait().unwrap() {
                panic!("moto exited with {st} before answering; {INSTALL}");
            }
            assert!(start.elapsed() < DEADLINE, "moto did not become ready");
            crate::wait::pause();
        }
        m
    }

    /// Starts moto on a free port.
    pub fn start() -> Moto {
        Self::start_on(free_port())
    }

    /// Its endpoint URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits for it to be gone.
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// The endpoint shared by the tests of one binary: `AWS_ENDPOINT_URL_S3` if set, else one moto.
pub fn shared_endpoint() -> String {
    static MOTO: OnceLock<(String, Option<Moto>)> = OnceLock::new();
    MOTO.get_or_init(|| match std::env::var("AWS_ENDPOINT_URL_S3") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let m = Moto::start();
            (m.url(), Some(m))
        }
    })
    .0
    .clone()
}

/// Sets a hermetic AWS environment on a command (no profile, no metadata service).
pub fn hermetic(cmd: &mut Command, endpoint: &str) {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("TERN_SYNC_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_ENDPOINT_URL_S3", endpoint)
        .env("TERN_SYNC_FORCE_PATH_STYLE", "true")
        .env("TERN_SYNC_LOG", "info,aws=warn");
}

/// One bucket on an S3 endpoint, with a blocking SDK client for seeding data by hand.
pub struct Bucket {
    /// Bucket name.
    pub name: String,
    /// Endpoint URL.
    pub endpoint: String,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl Bucket {
    /// Creates a fresh bucket named after `hint`.
    pub fn new(endpoint: &str, hint: &str) -> Bucket {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t-{hint}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let b = Self::connect(endpoint, &name);
        b.create();
        b
    }

    /// The same bucket reached through another endpoint (e.g. a fault-injecting proxy).
    pub fn via(&self, endpoint: &str) -> Bucket {
        Self::connect(endpoint, &self.name)
    }

    fn connect(endpoint: &str, name: &str) -> Bucket {
        let name = name.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let creds = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "tests");
            let conf = aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .credentials_provider(creds)
                .endpoint_url(endpoint)
                .force_path_style(true)
                .build();
            aws_sdk_s3::Client::from_conf(conf)
        });
        Bucket {
            name,
            endpoint: endpoint.to_string(),
            rt,
            client,
        }
    }

    /// (Re)creates the bucket (moto forgets everything on restart).
    pub fn create(&self) {
        self.rt
            .block_on(self.client.create_bucket().bucket(&self.name).send())
            .expect("create bucket");
    }

    /// Puts one object.
    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        let body = ByteStream::from(body.into());
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .body(body)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// Deletes one object.
    pub fn delete(&self, key: &str) {
        self.rt
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.name)
                    .key(key)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
    }

    /// All keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(
                self.client
                    .list_objects_v2()
                    .bucket(&self.name)
                    .prefix(prefix)
                    .send(),
            )
            .expect("list");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    /// A `tern-sync` command with the hermetic environment and `--bucket`.
    pub fn cmd(&self, sub: &str) -> Command {
        let mut c = self.bare(sub);
        c.args(["--bucket", &self.name]);
        c
    }

    /// A `tern-sync` command with the hermetic environment only.
    pub fn bare(&self, sub: &str) -> Command {
        let mut c = Command::new(tern_sync_bin());
        hermetic(&mut c, &self.endpoint);
        c.arg(sub);
        c
    }

    /// `tern-sync publish` with extra args; returns the output.
    pub fn publish(&self, prefix: &str, args: &[&str]) -> Output {
        self.cmd("publish")
            .args(["--prefix", prefix])
            .args(args)
            .output()
            .expect("run tern-sync publish")
    }

    /// Publishes `dir` and returns the new version (panics on failure).
    pub fn publish_ok(&self, prefix: &str, dir: &Path) -> String {
        let out = self.publish(prefix, &[dir.to_str().unwrap(), "--gc-grace", "0s"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "publish failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .split_whitespace()
            .nth(1)
            .expect("version in publish output")
            .to_string()
    }
}

/// A running `tern-sync run` (killed on drop); its log is kept for failure messages.
pub struct Agent {
    proc: Proc,
    /// Health/metrics port.
    pub port: u16,
    /// The destination directory.
    pub dest: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// Starts `tern-sync run` for `bucket`/`prefix` into a new temp dir (or `dest`).
    pub fn start(bucket: &Bucket, prefix: &str, dest: Option<&Path>, args: &[&str]) -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        let dest = dest
            .map(Path::to_path_buf)
            .unwrap_or_else(|| tmp.path().join("dest"));
        let log = tmp.path().join("agent.log");
        let port = free_port();
        let mut cmd = bucket.cmd("run");
        cmd.args(["--prefix", prefix, "--dest"])
            .arg(&dest)
            .args(["--health-address", &format!("127.0.0.1:{port}")])
            .args(if args.contains(&"--interval") {
                &[][..]
            } else {
                &["--interval", "200ms"][..]
            })
            .args(["--backoff-max", "1s"])
            .args(args);
        let a = Agent {
            proc: Proc::spawn_logged(&mut cmd, log),
            port,
            dest,
            _tmp: tmp,
        };
        wait_until_within(DEADLINE, "agent health endpoint", || a.healthz().is_some());
        a
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.proc.logs()
    }

    /// `/healthz`: (status, JSON body).
    pub fn healthz(&self) -> Option<(u16, serde_json::Value)> {
        let (s, b) = http_get(self.port, "/healthz")?;
        Some((s, serde_json::from_str(&b).ok()?))
    }

    /// A metric value from `/metrics` (full name with labels), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics(&[series])[0]
    }

    /// Several metric values read from one scrape.
    pub fn metrics(&self, series: &[&str]) -> Vec<f64> {
        let (_, text) = http_get(self.port, "/metrics").expect("metrics");
        series
            .iter()
            .map(|s| {
                text.lines()
                    .find_map(|l| l.strip_prefix(s)?.strip_prefix(' ')?.parse().ok())
                    .unwrap_or(0.0)
            })
            .collect()
    }

    /// The version `current` points to.
    pub fn current(&self) -> Option<String> {
        current_version(&self.dest)
    }

    /// Waits until `current` is `version` and the agent has finished that poll (health and
    /// metrics are updated just after the symlink swap).
    pub fn wait_current(&self, version: &str) {
        let start = Instant::now();
        while !(self.current().as_deref() == Some(version)
            && self
                .healthz()
                .is_some_and(|(_, h)| h["current"].as_str() == Some(version)))
        {
            assert!(
                start.elapsed() < DEADLINE,
                "agent never made {version} current; log:\n{}",
                self.log()
            );
            crate::wait::pause();
        }
    }

    /// Waits for a first snapshot (any version) and returns its version.
    pub fn wait_any_current(&self) -> String {
        wait_until_within(DEADLINE, "a first snapshot", || self.current().is_some());
        let v = self.current().unwrap();
        self.wait_current(&v);
        v
    }

    /// Waits until `metric` reaches at least `n`.
    pub fn wait_metric(&self, series: &str, n: f64) {
        let start = Instant::now();
        while self.metric(series) < n {
            assert!(
                start.elapsed() < DEADLINE,
                "{series} never reached {n}; log:\n{}",
                self.log()
            );
            crate::wait::pause();
        }
    }

    /// Stops the agent.
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// The version a `current` symlink in `dest` points to.
pub fn current_version(dest: &Path) -> Option<String> {
    let t = std::fs::read_link(dest.join("current")).ok()?;
    Some(t.file_name()?.to_str()?.to_string())
}
