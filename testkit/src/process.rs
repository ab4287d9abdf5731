//! Child processes that never outlive their test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) on drop, also when an assertion fails; optionally with
/// its stderr in a log file that failure messages can quote.
pub struct Proc {
    /// The process.
    pub child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    /// Takes charge of an already spawned child.
    pub fn adopt(child: Child) -> Proc {
        Proc { child, log: None }
    }

    /// Spawns `cmd` with stdout discarded and stderr written to `log`.
    pub fn spawn_logged(cmd: &mut Command, log: impl Into<PathBuf>) -> Proc {
        let log = log.into();
        let f =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc {
            child,
            log: Some(log),
        }
    }

    /// The log file, when there is one.
    pub fn log_path(&self) -> Option<&std::path::Path> {
        self.log.as_deref()
    }

    /// The log so far (empty without a log file).
    pub fn logs(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Kills the process and waits for it to be gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
