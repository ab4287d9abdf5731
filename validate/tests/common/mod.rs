//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The proxy binary `tern`, built once per test process with the same cargo that runs the tests.
///
/// Cargo only provides `CARGO_BIN_EXE_*` for the package's own binaries, and the agreement tests
/// need the proxy's `tern --check` too.
pub fn tern_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--bin",
                "tern",
                "--message-format=json",
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building tern failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tern")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reports the tern executable")
    })
}

/// Exit status of `tern --check --config DIR`: 0 when the proxy would load and run it.
pub fn tern_check(dir: &Path) -> i32 {
    let out = Command::new(tern_bin())
        .arg("--check")
        .arg("--config")
        .arg(dir)
        .output()
        .expect("tern runs");
    out.status.code().expect("tern exits normally")
}
