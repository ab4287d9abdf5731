//! End to end: `publish` → `tern-sync run` → a real `tern` process serving the new route.

use std::process::Command;
use std::time::Instant;

use tern_testkit::s3::{self, shared_endpoint, Agent, Bucket};
use tern_testkit::{
    config_files, free_port, http_get, tern_bin, wait_until_within, ConfigDir, Proc,
};

#[test]
fn publish_reaches_a_running_proxy() {
    let tern = tern_bin();
    let b = Bucket::new(&shared_endpoint(), "e2e");
    let (listen, admin) = (free_port(), free_port());
    let src = ConfigDir::with_files(&config_files(listen, admin, "v1"));
    let v1 = b.publish_ok("edge", src.path());
    let agent = Agent::start(&b, "edge", None, &[]);
    agent.wait_current(&v1);

    let log = agent.dest.parent().unwrap().join("tern.log");
    let _proxy = Proc::spawn_logged(
        Command::new(&tern)
            .arg("--config")
            .arg(agent.dest.join("current"))
            .args(["--poll-interval", "0"]),
        log,
    );
    wait_until_within(s3::DEADLINE, "tern ready", || {
        http_get(admin, "/ready").is_some_and(|r| r.0 == 200)
    });
    assert_eq!(http_get(listen, "/hello").unwrap().1, "v1");

    src.write_files(&config_files(listen, admin, "v2"));
    let v2 = b.publish_ok("edge", src.path());
    let published = Instant::now();
    wait_until_within(s3::DEADLINE, "tern serving v2", || {
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
