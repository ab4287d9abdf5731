//! `tern-sync` against a real S3 server (moto): publish, manifest and plain polling, request
//! counts, refusals, hostile keys, limits, `--once`, rollback and GC.

use std::fs;

use tern_testkit::s3::{self, current_version, shared_endpoint, Agent, Bucket};
use tern_testkit::{config_files, free_port, wait_until_within, ConfigDir};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn publish_then_run_manifest_mode_and_dedup() {
    let b = Bucket::new(&shared_endpoint(), "manifest");
    let src = ConfigDir::with_files(&config_files(free_port(), free_port(), "one"));
    let v1 = b.publish_ok("cfg", src.path());
    let keys = b.keys("cfg/");
    assert!(
        keys.contains(&"cfg/.tern/manifest.json".to_string()),
        "{keys:?}"
    );
    assert!(keys.contains(&format!("cfg/.tern/manifests/{v1}.json")));
    assert_eq!(keys.iter().filter(|k| k.contains("/blobs/")).count(), 3);

    let agent = Agent::start(&b, "cfg", None, &[]);
    agent.wait_current(&v1);
    let hello = fs::read_to_string(agent.dest.join("current/routes/main.yaml")).unwrap();
    assert!(hello.contains("\"one\""));
    let (status, h) = agent.healthz().unwrap();
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["mode"], "manifest");
    let health = b
        .bare("health")
        .args(["--health-address", &format!("127.0.0.1:{}", agent.port)])
        .status()
        .unwrap();
    assert!(health.success());

    // Change one file: only its blob is new, and only it is downloaded.
    let bytes_before = agent.metric("tern_sync_bytes_downloaded_total");
    let route = "routes/main.yaml".to_string();
    src.write_files(
        &config_files(0, 0, "two")
            .into_iter()
            .filter(|(p, _)| *p == route)
            .collect::<Vec<_>>(),
    );
    let out = b.publish("cfg", &[src.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("(3 files, 1 new blobs)"), "{stdout}");
    let v2 = stdout.split_whitespace().nth(1).unwrap().to_string();
    agent.wait_current(&v2);
    let size = fs::metadata(agent.dest.join("current/routes/main.yaml"))
        .unwrap()
        .len() as f64;
    let manifest_size = b.keys("cfg/.tern/manifest.json").len();
    assert_eq!(manifest_size, 1);
    let downloaded = agent.metric("tern_sync_bytes_downloaded_total") - bytes_before;
    // The manifest plus the one changed blob; never the two unchanged files.
    assert!(
        downloaded >= size && downloaded < size + 2000.0,
        "{downloaded} bytes downloaded for a {size}-byte change"
    );
    // Publishing the same content again writes nothing.
    let again = b.publish("cfg", &[src.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
}

#[test]
fn idle_manifest_polls_are_one_conditional_get_each() {
    let b = Bucket::new(&shared_endpoint(), "idle");
    let src = ConfigDir::with_files(&config_files(free_port(), free_port(), "idle"));
    let v = b.publish_ok("", src.path());
    let agent = Agent::start(&b, "", None, &[]);
    agent.wait_current(&v);
    let series = [
        "tern_sync_s3_requests_total{op=\"GetObject\"}",
        "tern_sync_polls_total{result=\"unchanged\"}",
        "tern_sync_bytes_downloaded_total",
    ];
    let before = agent.metrics(&series);
    agent.wait_metric(series[1], before[1] + 8.0);
    let after = agent.metrics(&series);
    let (gets, polls) = (after[0] - before[0], after[1] - before[1]);
    // One GET per poll (a request may be in flight at either scrape).
    assert!((gets - polls).abs() <= 1.0, "{gets} GETs for {polls} polls");
    let bytes0 = before[2];
    // All of them 304s: no object body was transferred.
    assert_eq!(agent.metric("tern_sync_bytes_downloaded_total"), bytes0);
    for op in ["ListObjectsV2", "HeadObject", "PutObject", "DeleteObject"] {
        assert_eq!(
            agent.metric(&format!("tern_sync_s3_requests_total{{op=\"{op}\"}}")),
            0.0,
            "{op}"
        );
    }
}

#[test]
fn plain_mode_takes_a_two_step_upload_only_when_complete() {
    let b = Bucket::new(&shared_endpoint(), "plain");
    let (listen, admin) = (free_port(), free_port());
    for (rel, text) in config_files(listen, admin, "first") {
        b.put(&format!("p/{rel}"), text);
    }
    // A longer interval leaves room to finish the second step between two polls.
    let agent = Agent::start(&b, "p", None, &["--interval", "1500ms"]);
    let first = agent.wait_any_current();
    assert!(first.starts_with("plain-"));
    assert_eq!(agent.healthz().unwrap().1["mode"], "plain");
    let changed0 = agent.metric("tern_sync_polls_total{result=\"changed\"}");
    let pending0 = agent.metric("tern_sync_polls_total{result=\"pending\"}");
    let bytes0 = agent.metric("tern_sync_bytes_downloaded_total");

    // Step 1: a listener that needs a route config that is not uploaded yet.
    let second = format!(
        "listeners:\n  - name: second\n    address: 127.0.0.1:{}\n    route_config: extra\n",
        free_port()
    );
    b.put("p/second.yaml", second.clone());
    agent.wait_metric("tern_sync_polls_total{result=\"pending\"}", pending0 + 1.0);
    // Step 2, right after the agent saw step 1 once.
    let extra = "route_configs:\n  - name: extra\n    virtual_hosts: []\n";
    b.put("p/extra.yaml", extra);
    wait_until_within(s3::DEADLINE, "snapshot with both files", || {
        agent.current().is_some_and(|v| v != first)
            && agent.dest.join("current/extra.yaml").exists()
    });
    agent.wait_current(&agent.current().unwrap());
    assert!(agent.dest.join("current/second.yaml").exists());
    // Exactly one new snapshot, never a half one, nothing refused.
    assert_eq!(
        agent.metric("tern_sync_polls_total{result=\"changed\"}"),
        changed0 + 1.0,
        "{}",
        agent.log()
    );
    assert_eq!(agent.metric("tern_sync_snapshots_invalid_total"), 0.0);
    // Only the two new objects were downloaded; the rest came from the previous snapshot.
    let downloaded = agent.metric("tern_sync_bytes_downloaded_total") - bytes0;
    assert_eq!(downloaded as usize, second.len() + extra.len());

    // Idle plain mode: LISTs only, no GETs.
    let gets = agent.metric("tern_sync_s3_requests_total{op=\"GetObject\"}");
    let lists = agent.metric("tern_sync_s3_requests_total{op=\"ListObjectsV2\"}");
    agent.wait_metric(
        "tern_sync_s3_requests_total{op=\"ListObjectsV2\"}",
        lists + 2.0,
    );
    assert_eq!(
        agent.metric("tern_sync_s3_requests_total{op=\"GetObject\"}"),
        gets
    );
}

#[test]
fn invalid_config_uploaded_by_hand_is_never_current() {
    let b = Bucket::new(&shared_endpoint(), "invalid");
    for (rel, text) in config_files(free_port(), free_port(), "good") {
        b.put(&rel, text);
    }
    let agent = Agent::start(&b, "", None, &[]);
    let good = agent.wait_any_current();
    b.put(
        "broken.yaml",
        "listeners:\n  - name: broken\n    address: 127.0.0.1:1\n    route_config: nowhere\n",
    );
    agent.wait_metric("tern_sync_snapshots_invalid_total", 1.0);
    assert_eq!(agent.current().as_deref(), Some(good.as_str()));
    assert!(!agent.dest.join("current/broken.yaml").exists());
    let (status, h) = agent.healthz().unwrap();
    assert_eq!(status, 200, "the last good snapshot still serves: {h}");
    let errors = h["refused"]["errors"].to_string();
    assert!(
        errors.contains("broken.yaml:4") && errors.contains("E006"),
        "{errors}"
    );
    assert!(agent.log().contains("E006"));
    // The refused snapshot was removed from disk; only the good one remains.
    let snaps: Vec<_> = fs::read_dir(agent.dest.join(".snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(snaps.len(), 1);
    // Refused once, not re-downloaded every poll.
    let polls = agent.metric("tern_sync_polls_total{result=\"unchanged\"}");
    agent.wait_metric("tern_sync_polls_total{result=\"unchanged\"}", polls + 3.0);
    assert_eq!(agent.metric("tern_sync_snapshots_invalid_total"), 1.0);
}

#[test]
fn hostile_keys_are_skipped_counted_and_never_escape() {
    let b = Bucket::new(&shared_endpoint(), "hostile");
    for (rel, text) in config_files(free_port(), free_port(), "safe") {
        b.put(&format!("h/{rel}"), text);
    }
    let long = "x".repeat(300);
    let hostile = [
        "h/../escape.yaml".to_string(),
        "h/a/../../escape2.yaml".to_string(),
        "h//abs.yaml".to_string(),
        "h/back\\slash.yaml".to_string(),
        "h/ctl\u{1}.yaml".to_string(),
        format!("h/{long}.yaml"),
        "h/Dup.yaml".to_string(),
        "h/dup.yaml".to_string(),
    ];
    for k in &hostile {
        b.put(k, "# not for you\n");
    }
    let stored = hostile.len();
    let agent = Agent::start(&b, "h", None, &[]);
    agent.wait_any_current();
    assert_eq!(
        agent.metric("tern_sync_keys_rejected_total"),
        stored as f64,
        "{}",
        agent.log()
    );
    let root = agent.dest.parent().unwrap();
    assert!(!root.join("escape.yaml").exists() && !agent.dest.join("escape.yaml").exists());
    assert!(!agent.dest.join(".snapshots/escape2.yaml").exists());
    let mut files = Vec::new();
    let cur = agent.dest.join("current");
    for e in fs::read_dir(&cur).unwrap() {
        files.push(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    files.sort();
    assert_eq!(files, vec!["admin.yaml", "listeners.yaml", "routes"]);
    let h = agent.healthz().unwrap().1;
    assert_eq!(h["rejected_keys"].as_array().unwrap().len(), stored);
}

#[test]
fn size_limits_refuse_the_snapshot() {
    let b = Bucket::new(&shared_endpoint(), "limits");
    let mut files = config_files(free_port(), free_port(), "big");
    files.push(("big.yaml".into(), format!("# {}\n", "x".repeat(3000))));
    let src = ConfigDir::with_files(&files);
    b.publish_ok("", src.path());
    let dest = tempfile::tempdir().unwrap();
    let once = |args: &[&str]| {
        b.cmd("run")
            .args(["--once", "--interval", "100ms", "--dest"])
            .arg(dest.path())
            .args(args)
            .output()
            .unwrap()
    };
    let o = once(&["--max-object-size", "2KiB"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("over the per-object limit"),
        "{}",
        stderr(&o)
    );
    assert!(current_version(dest.path()).is_none());
    let o = once(&["--max-total-size", "3KiB"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("total"), "{}", stderr(&o));
    assert!(current_version(dest.path()).is_none());
    let o = once(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dest.path().join("current/big.yaml").exists());
}

#[test]
fn once_succeeds_or_fails_clearly() {
    let b = Bucket::new(&shared_endpoint(), "once");
    let dest = tempfile::tempdir().unwrap();
    let run_once = |prefix: &str| {
        b.cmd("run")
            .args(["--prefix", prefix, "--once", "--interval", "100ms"])
            .args(["--once-timeout", "1s", "--dest"])
            .arg(dest.path())
            .output()
            .unwrap()
    };
    // Nothing there at all.
    let o = run_once("empty");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nothing to sync"), "{}", stderr(&o));

    // A broken config published without validation.
    let bad = ConfigDir::with_files(&[(
        "a.yaml",
        "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    route_config: mian\n",
    )]);
    let refused = b.publish("bad", &[bad.path().to_str().unwrap()]);
    assert!(!refused.status.success(), "publish must validate");
    assert!(stderr(&refused).contains("E006"), "{}", stderr(&refused));
    assert!(b.keys("bad/").is_empty(), "nothing uploaded when invalid");
    let forced = b.publish("bad", &[bad.path().to_str().unwrap(), "--no-validate"]);
    assert!(forced.status.success());
    let o = run_once("bad");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("is invalid") && e.contains("a.yaml:4"), "{e}");
    assert!(current_version(dest.path()).is_none());

    // A good one.
    let good = ConfigDir::with_files(&config_files(free_port(), free_port(), "ok"));
    let v = b.publish_ok("good", good.path());
    let o = run_once("good");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(current_version(dest.path()), Some(v));
}

#[test]
fn rollback_and_retention() {
    let b = Bucket::new(&shared_endpoint(), "rollback");
    let (listen, admin) = (free_port(), free_port());
    let mut versions = Vec::new();
    for body in ["r1", "r2", "r3", "r4"] {
        let src = ConfigDir::with_files(&config_files(listen, admin, body));
        let out = b.publish(
            "",
            &[
                src.path().to_str().unwrap(),
                "--retain",
                "3",
                "--gc-grace",
                "0s",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        versions.push(stdout.split_whitespace().nth(1).unwrap().to_string());
        // Version ids have one-second resolution: distinct content still gives distinct ids.
    }
    // Retention: the oldest manifest and its unique blob are gone.
    let manifests = b.keys(".tern/manifests/");
    assert_eq!(manifests.len(), 3, "{manifests:?}");
    assert_eq!(
        b.keys(".tern/blobs/").len(),
        2 + 3,
        "admin, listeners, 3 routes"
    );
    let agent = Agent::start(&b, "", None, &[]);
    agent.wait_current(&versions[3]);

    let out = b.publish("", &["--rollback", &versions[1]]);
    assert!(out.status.success(), "{}", stderr(&out));
    agent.wait_current(&versions[1]);
    let route = fs::read_to_string(agent.dest.join("current/routes/main.yaml")).unwrap();
    assert!(route.contains("\"r2\""));

    let gone = b.publish("", &["--rollback", &versions[0]]);
    assert!(!gone.status.success());
    assert!(stderr(&gone).contains("not found"), "{}", stderr(&gone));
    // `--keep 3` default: at most three snapshots on disk.
    let snaps = fs::read_dir(agent.dest.join(".snapshots"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert!(snaps <= 3);
}

#[test]
fn health_command_fails_without_an_agent() {
    let b = Bucket::new(&shared_endpoint(), "nohealth");
    let o = b
        .bare("health")
        .args(["--health-address", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
}
