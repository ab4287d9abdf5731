//! `tern --check` runners: whether the proxy would load and run a configuration directory.

use std::path::Path;
use std::process::{Command, Output};

use crate::bin::{tern_bin, workspace_root};

/// Runs `tern --check --config DIR` from the workspace root (no server is started).
pub fn tern_check(dir: &Path) -> Output {
    Command::new(tern_bin())
        .arg("--check")
        .arg("--config")
        .arg(dir)
        .current_dir(workspace_root())
        .output()
        .expect("run tern --check")
}

/// Exit status of `tern --check --config DIR`: 0 when the proxy would load and run it.
pub fn tern_check_code(dir: &Path) -> i32 {
    tern_check(dir).status.code().expect("tern exits normally")
}

/// Asserts that `tern --check --config DIR` rejects the configuration (exit status 1) and
/// returns its diagnostics (stderr) for the caller's assertions.
pub fn tern_check_fails(dir: &Path) -> String {
    let out = tern_check(dir);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "tern --check --config {} did not reject the configuration:\n{err}",
        dir.display()
    );
    err
}
