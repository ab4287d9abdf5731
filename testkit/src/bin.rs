//! The workspace's binaries, built with the same cargo, profile and target directory as the
//! running test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the workspace")
}

/// The cargo profile the running test was built with, as `cargo build` arguments.
///
/// A test executable lives in `TARGET/PROFILE-DIR/deps/`: `debug` is the dev profile (also
/// `test`), `release` the release profile (also `bench`), any other name a custom profile.
fn profile_args() -> Vec<String> {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    match dir {
        None | Some("debug") => vec![],
        Some("release") => vec!["--release".into()],
        Some(custom) => vec!["--profile".into(), custom.into()],
    }
}

/// Builds binary `name` of workspace package `package` (`cargo build -p PACKAGE --bin NAME`, with
/// the running test's profile) and returns its path.
///
/// Cargo gives a test only its own package's binaries (`CARGO_BIN_EXE_*`); this builds the
/// others, incrementally, into the same target directory.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            package,
            "--bin",
            name,
            "--message-format=json",
        ])
        .args(profile_args())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {name} executable"))
}

/// Binary `name` of workspace package `package`, resolved once per test process.
///
/// In the tests of the package that owns it, cargo names it in `CARGO_BIN_EXE_<name>` (already
/// built, at run time as well as at compile time); anywhere else it is built with
/// [`workspace_binary`].
pub fn binary(package: &str, name: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(name.to_string())
        .or_insert_with(|| match std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => workspace_binary(package, name),
        })
        .clone()
}

/// The proxy, `tern`.
pub fn tern_bin() -> PathBuf {
    binary("tern", "tern")
}

/// The sync agent, `tern-sync`.
pub fn tern_sync_bin() -> PathBuf {
    binary("tern-sync", "tern-sync")
}

/// The validator, `tern-validate`.
pub fn tern_validate_bin() -> PathBuf {
    binary("tern-validate", "tern-validate")
}
