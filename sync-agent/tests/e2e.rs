//! End to end: `publish` → `tern-sync run` → a real `tern` process serving the new route.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::*;

/// Builds the proxy binary with the same cargo, profile and target dir, and returns its path.
fn tern_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--bin", "tern", "--message-format=json"]);
    if env!("CARGO_BIN_EXE_tern-sync").contains("/release/") {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build --bin tern failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "tern")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no tern executable")
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn publish_reaches_a_running_proxy() {
    let tern = tern_binary();
    let b = Bucket::new(&shared_endpoint(), "e2e");
    let (listen, admin) = (free_port(), free_port());
    let src = dir_with(&config_files(listen, admin, "v1"));
    let v1 = b.publish_ok("edge", src.path());
    let agent = Agent::start(&b, "edge", None, &[]);
    agent.wait_current(&v1);

    let log = agent.dest.parent().unwrap().join("tern.log");
    let _proxy = Proxy(
        Command::new(&tern)
            .arg("--config")
            .arg(agent.dest.join("current"))
            .args(["--poll-interval", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tern"),
    );
    wait_until("tern ready", || {
        http_get(admin, "/ready").is_some_and(|r| r.0 == 200)
    });
    assert_eq!(http_get(listen, "/hello").unwrap().1, "v1");

    write_files(src.path(), &config_files(listen, admin, "v2"));
    let v2 = b.publish_ok("edge", src.path());
    let published = Instant::now();
    wait_until("tern serving v2", || {
        http_get(listen, "/hello").is_some_and(|r| r.1 == "v2")
    });
    eprintln!("publish → served in {:?}", published.elapsed());
    assert_eq!(agent.current().as_deref(), Some(v2.as_str()));
    let (_, dump) = http_get(admin, "/config_dump").unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert!(dump["version"].is_string(), "{dump}");
    // The proxy read the snapshot through the symlink, never the directory of an older one.
    assert!(
        dump["config_path"].as_str().unwrap().ends_with("current"),
        "{dump}"
    );
}
