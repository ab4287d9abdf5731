//! A real `tern` process on a config directory, with its admin API at hand.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bin::tern_bin;
use crate::client::{get, request};
use crate::wait::DEADLINE;

/// A running `tern` process, killed on drop.
pub struct Tern {
    /// The process.
    pub child: Child,
    /// Its admin port.
    pub admin: u16,
    /// The file its stderr goes to.
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Tern {
    /// Starts `tern --config <path>` with fast reload settings and waits for `/ready`.
    pub async fn start(config: &Path, admin: u16, extra: &[&str]) -> Tern {
        let t = Self::spawn(config, admin, extra);
        t.wait_ready().await;
        t
    }

    /// [`Tern::start`] with extra environment variables.
    pub async fn start_env(
        config: &Path,
        admin: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Tern {
        let t = Self::spawn_env(config, admin, extra, env);
        t.wait_ready().await;
        t
    }

    /// Starts without waiting.
    pub fn spawn(config: &Path, admin: u16, extra: &[&str]) -> Tern {
        Self::spawn_env(config, admin, extra, &[])
    }

    /// Starts without waiting, with extra environment variables.
    pub fn spawn_env(config: &Path, admin: u16, extra: &[&str], env: &[(&str, &str)]) -> Tern {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("tern.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(tern_bin())
            .arg("--config")
            .arg(config)
            .args([
                "--reload-debounce",
                "50ms",
                "--poll-interval",
                "0",
                "--log-level",
                "debug",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start tern");
        Tern {
            child,
            admin,
            log,
            _logdir: logdir,
        }
    }

    /// The admin endpoint URL of `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let url = self.admin_url("/ready");
        let start = Instant::now();
        loop {
            if request("GET", &url, &[], "")
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            // A tern that exited (say, a port taken) will never be ready: say why at once.
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let exited = text.lines().any(|l| l.starts_with("tern: "));
            assert!(!exited, "tern exited during start:\n{text}");
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for tern /ready; log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (polling, with the deadline) for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "tern did not exit; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        let r = get(&self.admin_url("/config_dump"), &[]).await;
        serde_json::from_str(&r.body).unwrap()
    }

    /// One value from `/stats?format=json`.
    pub async fn stat(&self, name: &str) -> i64 {
        let r = get(&self.admin_url("/stats?format=json"), &[]).await;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v[name]
            .as_i64()
            .unwrap_or_else(|| panic!("no stat {name} in {}", r.body))
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {sig} failed");
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
