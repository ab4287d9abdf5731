//! Faults: the S3 server goes away mid-run and comes back, and the agent restarts while it is away.

mod common;

use common::*;

#[test]
fn s3_outage_keeps_current_and_recovers_on_restart() {
    let mut moto = Moto::start();
    let b = Bucket::new(&moto.url(), "outage");
    let (listen, admin) = (free_port(), free_port());
    let v1 = b.publish_ok("", dir_with(&config_files(listen, admin, "before")).path());
    let agent = Agent::start(&b, "", None, &[]);
    agent.wait_current(&v1);

    moto.stop();
    agent.wait_metric("tern_sync_polls_total{result=\"error\"}", 2.0);
    assert_eq!(agent.current().as_deref(), Some(v1.as_str()));
    let (status, h) = agent.healthz().unwrap();
    assert_eq!(status, 200, "a recent success keeps it healthy: {h}");
    assert_eq!(h["last_poll_ok"], false);
    assert!(h["consecutive_failures"].as_u64().unwrap() >= 2);
    assert!(h["last_error"].as_str().unwrap().contains("S3"), "{h}");

    // Back on the same port (empty, as moto keeps nothing): publish again.
    let _moto2 = Moto::start_on(moto.port);
    b.create();
    let v2 = b.publish_ok("", dir_with(&config_files(listen, admin, "after")).path());
    agent.wait_current(&v2);
    let (status, h) = agent.healthz().unwrap();
    assert_eq!((status, h["last_poll_ok"].as_bool()), (200, Some(true)));
    assert!(h["last_error"].is_null());
}

#[test]
fn restart_while_s3_is_unreachable_keeps_the_snapshot() {
    let mut moto = Moto::start();
    let b = Bucket::new(&moto.url(), "restart");
    let v1 = b.publish_ok(
        "p",
        dir_with(&config_files(free_port(), free_port(), "kept")).path(),
    );
    let dest = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&b, "p", Some(dest.path()), &[]);
    agent.wait_current(&v1);
    agent.stop();
    moto.stop();

    let agent = Agent::start(&b, "p", Some(dest.path()), &[]);
    agent.wait_metric("tern_sync_polls_total{result=\"error\"}", 1.0);
    assert_eq!(agent.current().as_deref(), Some(v1.as_str()));
    let (status, h) = agent.healthz().unwrap();
    assert_eq!(status, 200, "grace period after start with a snapshot: {h}");
    assert_eq!(h["current"], v1.as_str());
    assert!(!h["last_error"].is_null());
    assert!(agent.metric(&format!("tern_sync_snapshot_version{{version=\"{v1}\"}}")) == 1.0);
    assert!(agent.dest.join("current/routes/main.yaml").exists());

    // An init container in the same situation fails clearly and leaves the snapshot alone.
    let o = b
        .cmd("run")
        .args(["--prefix", "p", "--once", "--once-timeout", "1s"])
        .args(["--interval", "100ms", "--dest"])
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no valid snapshot after"), "{e}");
    assert_eq!(current_version(dest.path()).as_deref(), Some(v1.as_str()));
}
