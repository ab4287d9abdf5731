//! Outlier detection, active health checks and `/clusters`, through a real `tern` process
//! against real backends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_testkit::{admin_yaml, free_port, get, listener_yaml, wait_for, Backend, ConfigDir, Tern};

/// The cluster file: cluster `svc` over `addrs`, with `extra` YAML lines (indented 4 spaces).
fn clusters_yaml(addrs: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        "clusters:\n  - name: svc\n    endpoints: [{}]\n{extra}",
        eps.join(", ")
    )
}

/// Starts tern routing everything to cluster `svc`.
async fn start(addrs: &[SocketAddr], extra: &str) -> (Tern, u16, ConfigDir) {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listeners.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write(
        "routes.yaml",
        "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: / }\n            route: { cluster: svc }\n",
    );
    cfg.write("clusters.yaml", &clusters_yaml(addrs, extra));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    (tern, port, cfg)
}

/// Sends `n` requests; returns the `x-backend` of each (or `status:<code>` when absent).
async fn hits(port: u16, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(&format!("http://127.0.0.1:{port}/x"), &[]).await;
        out.push(match r.headers.get("x-backend") {
            Some(b) => b.to_str().unwrap().to_string(),
            None => format!("status:{}", r.status),
        });
    }
    out
}

async fn clusters_text(t: &Tern) -> String {
    let r = get(&t.admin_url("/clusters"), &[]).await;
    assert_eq!(r.status, 200);
    r.body
}

async fn clusters_json(t: &Tern) -> serde_json::Value {
    let r = get(&t.admin_url("/clusters?format=json"), &[]).await;
    assert_eq!(r.status, 200);
    serde_json::from_str(&r.body).unwrap()
}

/// Waits until `/clusters` has the line `line`.
async fn wait_line(t: &Tern, line: &str) -> String {
    wait_for(&format!("/clusters line {line:?}"), || async {
        let body = clusters_text(t).await;
        body.lines().any(|l| l == line).then_some(body)
    })
    .await
}

/// Waits until stat `name` is at least `min`.
async fn wait_stat(t: &Tern, name: &str, min: i64) -> i64 {
    wait_for(&format!("{name} >= {min}"), || async {
        let v = t.stat(name).await;
        (v >= min).then_some(v)
    })
    .await
}

#[tokio::test]
async fn consecutive_5xx_ejects_until_the_ejection_time_is_over() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.ctl.set_status(503);
    let (t, port, _cfg) = start(
        &[a.addr, b.addr],
        "    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 1500ms, max_ejection_percent: 50 }\n",
    )
    .await;
    // Round robin alternates: b's third 503 in a row ejects it.
    let first = hits(port, 6).await;
    assert_eq!(first.iter().filter(|h| *h == "b").count(), 3, "{first:?}");
    let ejected_at = Instant::now();
    assert_eq!(t.stat("cluster.svc.outlier_detection_ejections").await, 1);
    assert_eq!(
        t.stat("cluster.svc.outlier_detection_ejections_active")
            .await,
        1
    );
    assert_eq!(t.stat("cluster.svc.membership_healthy").await, 1);
    let body = clusters_text(&t).await;
    let bl = format!("svc::{}::health_flags::/failed_outlier_check", b.addr);
    assert!(body.lines().any(|l| l == bl), "{body}");
    assert!(
        body.contains(&format!("svc::{}::ejected_until::", b.addr)),
        "{body}"
    );
    assert!(
        body.contains(&format!("svc::{}::rq_error::3\n", b.addr)),
        "{body}"
    );
    assert!(
        body.contains(&format!("svc::{}::health_flags::healthy\n", a.addr)),
        "{body}"
    );
    let j = clusters_json(&t).await;
    let hosts = &j["cluster_statuses"][0]["host_statuses"];
    assert_eq!(
        hosts[1]["health_status"]["flags"][0],
        "failed_outlier_check"
    );
    assert!(
        hosts[1]["health_status"]["ejection_remaining_ms"]
            .as_u64()
            .unwrap()
            <= 1500
    );
    assert_eq!(hosts[0]["health_status"]["healthy"], true);

    // While ejected, everything goes to a (only requests made well inside the window count).
    let mut during = Vec::new();
    while during.len() < 10 && ejected_at.elapsed() < Duration::from_millis(1200) {
        during.extend(hits(port, 1).await);
    }
    assert!(during.len() >= 3, "too slow to observe the ejection window");
    assert!(during.iter().all(|h| h == "a"), "{during:?}");

    // After the ejection time, b takes traffic again.
    b.ctl.set_status(0);
    let before = b.ctl.requests();
    wait_for("b back in rotation", || async {
        hits(port, 2).await.iter().any(|h| h == "b").then_some(())
    })
    .await;
    let back_after = ejected_at.elapsed();
    assert!(
        back_after >= Duration::from_millis(1300),
        "returned after {back_after:?}"
    );
    assert!(b.ctl.requests() > before);
    wait_line(&t, &format!("svc::{}::health_flags::healthy", b.addr)).await;
    wait_stat(&t, "cluster.svc.membership_healthy", 2).await;
    assert_eq!(
        t.stat("cluster.svc.outlier_detection_ejections_active")
            .await,
        0
    );
}

#[tokio::test]
async fn gateway_failures_eject_when_configured() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.ctl.set_status(502);
    let (t, port, _cfg) = start(
        &[a.addr, b.addr],
        "    outlier_detection: { consecutive_5xx: 0, consecutive_gateway_failure: 2, max_ejection_percent: 50 }\n",
    )
    .await;
    hits(port, 4).await;
    assert_eq!(
        t.stat("cluster.svc.outlier_detection_ejections_consecutive_gateway_failure")
            .await,
        1
    );
    let after = hits(port, 6).await;
    assert!(after.iter().all(|h| h == "a"), "{after:?}");
}

#[tokio::test]
async fn max_ejection_percent_is_honoured() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    b.ctl.set_status(500);
    c.ctl.set_status(500);
    // Default max_ejection_percent (10 %) of three endpoints: only the "at least one" rule
    // lets one be ejected; the other keeps its traffic.
    let (t, port, _cfg) = start(
        &[a.addr, b.addr, c.addr],
        "    outlier_detection: { consecutive_5xx: 2 }\n",
    )
    .await;
    let got = hits(port, 30).await;
    assert_eq!(t.stat("cluster.svc.outlier_detection_ejections").await, 1);
    assert!(
        t.stat("cluster.svc.outlier_detection_ejections_overflow")
            .await
            >= 1
    );
    assert_eq!(
        t.stat("cluster.svc.outlier_detection_ejections_active")
            .await,
        1
    );
    let body = clusters_text(&t).await;
    assert_eq!(
        body.matches("::health_flags::/failed_outlier_check")
            .count(),
        1,
        "{body}"
    );
    // The endpoint that was not ejected still gets its share.
    let last = &got[15..];
    assert!(last.iter().any(|h| h == "b" || h == "c"), "{got:?}");
}

const HC: &str = "    health_checks:\n      - { timeout: 100ms, interval: 100ms, unhealthy_threshold: 2, healthy_threshold: 2, http: { path: /_hc } }\n";

#[tokio::test]
async fn http_health_check_takes_an_endpoint_out_and_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (t, port, _cfg) = start(&[a.addr, b.addr], HC).await;
    wait_stat(&t, "cluster.svc.membership_healthy", 2).await;
    assert!(b.ctl.hc_requests() >= 1);

    // An unexpected status marks it unhealthy at the first failed check.
    b.ctl.set_hc_status(500);
    let body = wait_line(
        &t,
        &format!("svc::{}::health_flags::/failed_active_hc", b.addr),
    )
    .await;
    assert!(
        body.contains("svc::default_priority::max_connections::1024\n"),
        "{body}"
    );
    assert!(body.contains("svc::circuit_breakers::rq_open::"), "{body}");
    assert_eq!(t.stat("cluster.svc.membership_healthy").await, 1);
    assert!(t.stat("cluster.svc.health_check_failure").await >= 1);
    let before = b.ctl.requests();
    let got = hits(port, 10).await;
    assert!(got.iter().all(|h| h == "a"), "{got:?}");
    assert_eq!(
        b.ctl.requests(),
        before,
        "no traffic to an unhealthy endpoint"
    );
    let j = clusters_json(&t).await;
    assert_eq!(j["cluster_statuses"][0]["health_checked"], true);
    assert_eq!(
        j["cluster_statuses"][0]["host_statuses"][1]["health_status"]["healthy"],
        false
    );

    // Two passes in a row bring it back.
    b.ctl.set_hc_status(200);
    wait_line(&t, &format!("svc::{}::health_flags::healthy", b.addr)).await;
    wait_stat(&t, "cluster.svc.membership_healthy", 2).await;
    let got = hits(port, 4).await;
    assert!(got.iter().any(|h| h == "b"), "{got:?}");
    assert!(t.stat("cluster.svc.health_check_success").await >= 3);
}

#[tokio::test]
async fn tcp_health_check_notices_a_stopped_backend() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let baddr = b.addr;
    let (t, port, _cfg) = start(
        &[a.addr, b.addr],
        "    health_checks:\n      - { timeout: 100ms, interval: 100ms, unhealthy_threshold: 2, healthy_threshold: 1, tcp: {} }\n",
    )
    .await;
    wait_stat(&t, "cluster.svc.membership_healthy", 2).await;
    drop(b);
    wait_line(
        &t,
        &format!("svc::{baddr}::health_flags::/failed_active_hc"),
    )
    .await;
    let got = hits(port, 6).await;
    assert!(got.iter().all(|h| h == "a"), "{got:?}");
}

#[tokio::test]
async fn health_state_survives_a_reload_and_new_endpoints_wait_for_a_check() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    // One failure marks unhealthy; it takes 100 passes in a row (10 s) to come back.
    let hc = "    health_checks:\n      - { timeout: 100ms, interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 100, http: { path: /_hc } }\n";
    let (t, port, cfg) = start(&[a.addr, b.addr], hc).await;
    wait_stat(&t, "cluster.svc.membership_healthy", 2).await;
    b.ctl.set_hc_status(503);
    wait_line(
        &t,
        &format!("svc::{}::health_flags::/failed_active_hc", b.addr),
    )
    .await;
    b.ctl.set_hc_status(200);
    c.ctl.set_hc_status(500);

    // Change another field of the cluster (a new cluster version) and add endpoint c.
    let applied = t.stat("server.config_update_success").await;
    cfg.write(
        "clusters.yaml",
        &clusters_yaml(
            &[a.addr, b.addr, c.addr],
            &format!("    connect_timeout: 2s\n{hc}"),
        ),
    );
    wait_stat(&t, "server.config_update_success", applied + 1).await;
    let dump = t.config_dump().await;
    assert_eq!(dump["config"]["clusters"][0]["connect_timeout"], "2s");

    // The new checker continues from b's carried state: passing checks, still unhealthy.
    let hc_before = b.ctl.hc_requests();
    wait_for("the new checker to check b", || async {
        (b.ctl.hc_requests() >= hc_before + 3).then_some(())
    })
    .await;
    let body = clusters_text(&t).await;
    assert!(
        body.contains(&format!(
            "svc::{}::health_flags::/failed_active_hc\n",
            b.addr
        )),
        "{body}"
    );
    // c is new: unhealthy until a check passes, and its checks fail.
    assert!(
        body.contains(&format!(
            "svc::{}::health_flags::/failed_active_hc\n",
            c.addr
        )),
        "{body}"
    );
    assert!(c.ctl.hc_requests() >= 1);
    let got = hits(port, 8).await;
    assert!(got.iter().all(|h| h == "a"), "{got:?}");
    assert_eq!(b.ctl.requests() + c.ctl.requests(), 0);
    assert_eq!(t.stat("cluster.svc.membership_healthy").await, 1);
    assert_eq!(t.stat("cluster.svc.membership_total").await, 3);
}

#[tokio::test]
async fn all_unhealthy_fails_open() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.ctl.set_hc_status(500);
    b.ctl.set_hc_status(500);
    let (t, port, _cfg) = start(&[a.addr, b.addr], HC).await;
    wait_line(
        &t,
        &format!("svc::{}::health_flags::/failed_active_hc", a.addr),
    )
    .await;
    wait_line(
        &t,
        &format!("svc::{}::health_flags::/failed_active_hc", b.addr),
    )
    .await;
    assert_eq!(t.stat("cluster.svc.membership_healthy").await, 0);
    let panics = t.stat("cluster.svc.lb_healthy_panic").await;
    let got = hits(port, 6).await;
    assert!(
        got.iter().any(|h| h == "a") && got.iter().any(|h| h == "b"),
        "{got:?}"
    );
    assert!(t.stat("cluster.svc.lb_healthy_panic").await >= panics + 6);
}

/// `(code, line, severity is error)` of every diagnostic of a one-file configuration.
fn diags_of(yaml: &str) -> Vec<(&'static str, u32, bool)> {
    let d = ConfigDir::new();
    d.write("x.yaml", yaml);
    tern_config::load(d.path())
        .diagnostics
        .into_iter()
        .map(|d| (d.code, d.line, d.is_error()))
        .collect()
}

#[test]
fn outlier_and_health_check_values_are_checked() {
    let base = "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1 }]\n";
    // Percent out of range, zero interval, max below (default) base.
    let r = diags_of(&format!(
        "{base}    outlier_detection:\n      max_ejection_percent: 150\n      interval: 0\n      max_ejection_time: 10s\n"
    ));
    assert_eq!(
        r,
        vec![("E004", 5, true), ("E004", 6, true), ("E004", 7, true)],
        "{r:?}"
    );
    // Both detectors off is allowed (nothing is ejected).
    assert!(diags_of(&format!(
        "{base}    outlier_detection: {{ consecutive_5xx: 0 }}\n"
    ))
    .is_empty());
    // A path that is not a path (line 5); a second health check and a bad Host value (line 6).
    let hc = "{ timeout: 1s, interval: 1s, unhealthy_threshold: 2, healthy_threshold: 1";
    let r = diags_of(&format!(
        "{base}    health_checks:\n      - {hc}, http: {{ path: \"/a b\" }} }}\n      - {hc}, http: {{ path: /ok, host: \"bad\\nhost\" }} }}\n"
    ));
    assert_eq!(
        r,
        vec![("E004", 5, true), ("E004", 6, true), ("E004", 6, true)],
        "{r:?}"
    );
}

#[test]
fn resilience_example_with_health_checks_loads() {
    let r = tern_config::load(std::path::Path::new("config-examples/resilience"));
    assert_eq!(r.error_count(), 0, "{:#?}", r.diagnostics);
    let c = r.config.unwrap();
    let inv = c
        .clusters
        .iter()
        .find(|c| c.value.name.as_str() == "inventory")
        .expect("health.yaml defines inventory");
    assert!(inv.value.outlier_detection.is_some());
    assert_eq!(inv.value.health_checks.len(), 1);
}

#[tokio::test]
async fn an_ejection_survives_a_reload_and_ends_when_outlier_detection_is_removed() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.ctl.set_status(500);
    let od = "    outlier_detection: { consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 50 }\n";
    let (t, port, cfg) = start(&[a.addr, b.addr], od).await;
    hits(port, 4).await;
    assert_eq!(t.stat("cluster.svc.outlier_detection_ejections").await, 1);
    b.ctl.set_status(0);

    // A new cluster version (connect_timeout changed) keeps the running ejection.
    let applied = t.stat("server.config_update_success").await;
    cfg.write(
        "clusters.yaml",
        &clusters_yaml(&[a.addr, b.addr], &format!("    connect_timeout: 2s\n{od}")),
    );
    wait_stat(&t, "server.config_update_success", applied + 1).await;
    let got = hits(port, 6).await;
    assert!(got.iter().all(|h| h == "a"), "{got:?}");
    let body = clusters_text(&t).await;
    assert!(
        body.contains(&format!(
            "svc::{}::health_flags::/failed_outlier_check\n",
            b.addr
        )),
        "{body}"
    );

    // Without outlier detection the endpoint is back at once.
    cfg.write("clusters.yaml", &clusters_yaml(&[a.addr, b.addr], ""));
    wait_stat(&t, "server.config_update_success", applied + 2).await;
    wait_line(&t, &format!("svc::{}::health_flags::healthy", b.addr)).await;
    let got = hits(port, 4).await;
    assert!(got.iter().any(|h| h == "b"), "{got:?}");
}

#[tokio::test]
async fn removing_health_checks_stops_the_checkers_and_restores_endpoints() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.ctl.set_hc_status(500);
    let (t, port, cfg) = start(&[a.addr, b.addr], HC).await;
    wait_line(
        &t,
        &format!("svc::{}::health_flags::/failed_active_hc", b.addr),
    )
    .await;
    let applied = t.stat("server.config_update_success").await;
    cfg.write("clusters.yaml", &clusters_yaml(&[a.addr, b.addr], ""));
    wait_stat(&t, "server.config_update_success", applied + 1).await;
    wait_line(&t, &format!("svc::{}::health_flags::healthy", b.addr)).await;
    let got = hits(port, 4).await;
    assert!(got.iter().any(|h| h == "b"), "{got:?}");
    // The old checkers stop at their next round (interval 100ms): give them a few rounds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = a.ctl.hc_requests() + b.ctl.hc_requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.ctl.hc_requests() + b.ctl.hc_requests(),
        n,
        "checkers still running"
    );
}
