//! Faults: the S3 server goes away mid-run and comes back, and the agent restarts while it is away.

use tern_testkit::s3::{self, current_version, shared_endpoint, Agent, Bucket, Moto};
use tern_testkit::{
    config_files, free_port, http_get, tern_sync_bin, wait_until_within, ConfigDir, Proc,
};

#[test]
fn s3_outage_keeps_current_and_recovers_on_restart() {
    let mut moto = Moto::start();
    let b = Bucket::new(&moto.url(), "outage");
    let (listen, admin) = (free_port(), free_port());
    let v1 = b.publish_ok(
        "",
        ConfigDir::with_files(&config_files(listen, admin, "before")).path(),
    );
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
    let v2 = b.publish_ok(
        "",
        ConfigDir::with_files(&config_files(listen, admin, "after")).path(),
    );
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
        ConfigDir::with_files(&config_files(free_port(), free_port(), "kept")).path(),
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

#[test]
fn write_error_mid_snapshot_removes_the_partial_one() {
    let b = Bucket::new(&shared_endpoint(), "diskfull");
    let mut files = config_files(free_port(), free_port(), "small");
    let src = ConfigDir::with_files(&files);
    let v1 = b.publish_ok("", src.path());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let port = free_port();
    // A file size limit stands in for a full disk: writes past 8 KiB fail with EFBIG (the
    // signal that would kill the process is ignored, and that disposition survives exec).
    let cmd = b.cmd("run");
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into()).collect();
    let mut sh = std::process::Command::new("bash");
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let _child = Proc::adopt(
        sh.args(["-c", "trap '' XFSZ; ulimit -f 8; exec \"$0\" \"$@\""])
            .arg(tern_sync_bin())
            .args(&args)
            .arg("--dest")
            .arg(&dest)
            .args(["--interval", "200ms", "--backoff-max", "500ms"])
            .args(["--health-address", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let metric = |series: &str| -> f64 {
        http_get(port, "/metrics")
            .and_then(|(_, t)| {
                t.lines()
                    .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            })
            .unwrap_or(0.0)
    };
    wait_until_within(s3::DEADLINE, "first snapshot", || {
        current_version(&dest) == Some(v1.clone())
    });

    files.push(("big.yaml".into(), format!("# {}\n", "x".repeat(20_000))));
    src.write_files(&files);
    let v2 = b.publish_ok("", src.path());
    wait_until_within(s3::DEADLINE, "a failed write", || {
        metric("tern_sync_polls_total{result=\"error\"}") >= 2.0
    });
    let (_, h) = http_get(port, "/healthz").unwrap();
    assert!(h.contains("writing snapshot"), "{h}");
    assert_eq!(current_version(&dest), Some(v1.clone()));
    let leftovers: Vec<String> = std::fs::read_dir(dest.join(".snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(&v1))
        .collect();
    assert!(leftovers.is_empty(), "partial snapshot left: {leftovers:?}");
    assert!(!dest.join(".snapshots").join(&v2).exists());
}

/// A pass-through TCP proxy in front of moto that answers the next `fail` requests itself with
/// S3's throttling error (503 SlowDown), the way S3 does under load.
struct Throttle {
    port: u16,
    fail: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Throttle {
    fn start(upstream: u16) -> Throttle {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let f = fail.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let take = f
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                std::thread::spawn(move || {
                    if take {
                        let mut buf = [0u8; 65536];
                        let _ = client.read(&mut buf);
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                        let _ = write!(
                            client,
                            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        return;
                    }
                    let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream))
                    else {
                        return;
                    };
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut s2);
                        let _ = s2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Throttle { port, fail }
    }
}

#[test]
fn throttling_is_retried_with_backoff_and_recovers() {
    let moto_url = shared_endpoint();
    let moto_port: u16 = moto_url.rsplit(':').next().unwrap().parse().unwrap();
    let throttle = Throttle::start(moto_port);
    let direct = Bucket::new(&moto_url, "throttle");
    let v1 = direct.publish_ok(
        "",
        ConfigDir::with_files(&config_files(free_port(), free_port(), "t1")).path(),
    );
    // The agent talks to S3 only through the throttling proxy.
    let via = direct.via(&format!("http://127.0.0.1:{}", throttle.port));
    let agent = Agent::start(&via, "", None, &[]);
    agent.wait_current(&v1);

    throttle.fail.store(4, std::sync::atomic::Ordering::SeqCst);
    agent.wait_metric("tern_sync_polls_total{result=\"error\"}", 1.0);
    let (_, h) = agent.healthz().unwrap();
    assert!(
        h["last_error"].as_str().unwrap().contains("SlowDown"),
        "{h}"
    );
    agent.wait_metric("tern_sync_polls_total{result=\"error\"}", 4.0);
    let v2 = direct.publish_ok(
        "",
        ConfigDir::with_files(&config_files(free_port(), free_port(), "t2")).path(),
    );
    agent.wait_current(&v2);
    assert_eq!(agent.metric("tern_sync_polls_total{result=\"error\"}"), 4.0);
    assert_eq!(agent.healthz().unwrap().1["consecutive_failures"], 0);
}
