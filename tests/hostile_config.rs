//! Configuration bombs against a running proxy: a huge file, deep nesting, a YAML "billion
//! laughs", a FIFO, 100,000 routes. Each one is rejected (or, for the routes, applied) within the
//! usual wait (two minutes for the routes), the proxy keeps serving its last good configuration, its peak memory stays
//! bounded, and a good change afterwards still applies (the reload task is alive).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tern_testkit::{
    admin_yaml, direct_yaml, free_port, get, listener_yaml, request, wait_body, wait_for,
    wait_for_within, ConfigDir, Tern,
};

/// Peak resident memory of a process in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

/// A proxy serving "good" on `port`, with its configuration in `cfg`.
async fn serving() -> (ConfigDir, Tern, u16) {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listener.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write("routes.yaml", &direct_yaml("main", "good"));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    assert_eq!(body(port).await, "good");
    (cfg, tern, port)
}

async fn body(port: u16) -> String {
    get(&format!("http://127.0.0.1:{port}/"), &[]).await.body
}

/// Waits for the reload of the bomb to be rejected; returns the error's message and diagnostics.
async fn rejected(tern: &Tern) -> String {
    let dump = wait_for("the bomb to be rejected", || async {
        let d = tern.config_dump().await;
        (!d["last_reload_error"].is_null()).then_some(d)
    })
    .await;
    dump["last_reload_error"].to_string()
}

/// After the bomb: still serving the good configuration, memory bounded, and a good change
/// (the bomb removed, a new body) applies.
async fn survives(cfg: &ConfigDir, tern: &Tern, port: u16, bomb: &Path, max_mib: u64) {
    assert_eq!(
        body(port).await,
        "good",
        "the last good configuration serves"
    );
    let peak = peak_rss_mib(tern.child.id());
    assert!(peak < max_mib, "peak RSS {peak} MiB, over {max_mib} MiB");
    std::fs::remove_file(bomb).unwrap();
    cfg.write("routes.yaml", &direct_yaml("main", "after"));
    wait_body(&format!("http://127.0.0.1:{port}/"), &[], "after").await;
}

#[tokio::test]
async fn a_huge_file_is_refused_before_it_is_read() {
    let (cfg, tern, port) = serving().await;
    // 2 GiB, sparse: the size is what the loader sees; before, it read it all into memory.
    let bomb = cfg.path().join("huge.yaml");
    std::fs::File::create(&bomb)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let err = rejected(&tern).await;
    assert!(
        err.contains("E009") && err.contains("over the limit of 16777216 bytes"),
        "{err}"
    );
    assert!(
        err.contains("--max-file-size"),
        "the message says how to raise it: {err}"
    );
    survives(&cfg, &tern, port, &bomb, 150).await;
}

#[tokio::test]
async fn deep_nesting_is_rejected() {
    let (cfg, tern, port) = serving().await;
    let bomb = cfg.write(
        "deep.yaml",
        &format!(
            "clusters:\n  - name: c\n    endpoints: {}{}\nroute_configs: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000),
            "{ a: ".repeat(20_000),
            "}".repeat(20_000)
        ),
    );
    let err = rejected(&tern).await;
    assert!(err.contains("deep.yaml"), "{err}");
    survives(&cfg, &tern, port, &bomb, 150).await;
}

#[tokio::test]
async fn a_billion_laughs_is_rejected() {
    let (cfg, tern, port) = serving().await;
    // Ten levels of ten aliases each: 10^10 scalars if expanded.
    let mut text =
        String::from("x-laughs:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let prev = format!("*l{}", i - 1);
        text.push_str(&format!(
            "  l{i}: &l{i} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    text.push_str("clusters: *l9\nroute_configs:\n  - name: x\n    virtual_hosts: *l9\n");
    let bomb = cfg.write("laughs.yaml", &text);
    let err = rejected(&tern).await;
    assert!(err.contains("laughs.yaml"), "{err}");
    survives(&cfg, &tern, port, &bomb, 200).await;
}

#[tokio::test]
async fn a_fifo_is_an_error_and_never_opened() {
    let (cfg, tern, port) = serving().await;
    let bomb = cfg.path().join("pipe.yaml");
    let made = Command::new("mkfifo").arg(&bomb).status().unwrap();
    assert!(made.success());
    let err = rejected(&tern).await;
    assert!(err.contains("E008") && err.contains("FIFO"), "{err}");
    survives(&cfg, &tern, port, &bomb, 150).await;
}

#[tokio::test]
async fn a_hundred_thousand_routes_load_with_bounded_memory() {
    let (cfg, tern, port) = serving().await;
    let mut text = String::from(
        "route_configs:\n  - name: many\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n",
    );
    for i in 0..100_000 {
        text.push_str(&format!(
            "          - {{ match: {{ prefix: /r{i}/ }}, direct_response: {{ status: 200, body: r{i} }} }}\n"
        ));
    }
    let many_port = free_port();
    cfg.write("many.yaml", &text);
    cfg.write(
        "many-listener.yaml",
        &listener_yaml("many", many_port, "many"),
    );
    // Two minutes, not the kit's 20 s: a debug build loads 100,000 routes in seconds alone, and
    // the suite runs this beside other tests on two cores.
    let url = format!("http://127.0.0.1:{many_port}/r99999/");
    wait_for_within(
        Duration::from_secs(120),
        "the 100,000-route set",
        || async {
            request("GET", &url, &[], "")
                .await
                .ok()
                .filter(|r| r.body.contains("r99999"))
        },
    )
    .await;
    assert_eq!(body(port).await, "good");
    let peak = peak_rss_mib(tern.child.id());
    assert!(peak < 1024, "peak RSS {peak} MiB");
}
