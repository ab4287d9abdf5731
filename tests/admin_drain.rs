//! The admin endpoint and graceful drain on SIGTERM.

use std::time::Duration;

use tern_testkit::{
    forward_config, free_port, get, request, tern_bin, wait_for, Backend, ConfigDir, Tern,
};

#[tokio::test]
async fn admin_endpoints() {
    let be = Backend::start("be").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    forward_config(&cfg, admin, port, &be);
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/x"), &[]).await.status,
        200
    );

    // Readiness flips for draining before a deploy stops the task.
    let fail = request("POST", &tern.admin_url("/healthcheck/fail"), &[], "")
        .await
        .unwrap();
    assert_eq!(fail.status, 200);
    let r = get(&tern.admin_url("/ready"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "HEALTH CHECK FAILED\n"));
    request("POST", &tern.admin_url("/healthcheck/ok"), &[], "")
        .await
        .unwrap();
    assert_eq!(get(&tern.admin_url("/ready"), &[]).await.status, 200);
    // Mutations are POST only.
    assert_eq!(
        get(&tern.admin_url("/healthcheck/fail"), &[]).await.status,
        405
    );
    assert_eq!(get(&tern.admin_url("/ready"), &[]).await.status, 200);

    let dump = tern.config_dump().await;
    assert_eq!(dump["version"].as_str().unwrap().len(), 16);
    assert!(dump["loaded_at"].as_str().unwrap().ends_with('Z'));
    let files: Vec<&str> = dump["source_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3);
    assert!(files[0].ends_with("admin.yaml") && files[2].ends_with("routes.yaml"));
    assert_eq!(dump["config"]["clusters"][0]["name"], "be");
    assert!(dump["last_reload_error"].is_null());

    let stats = get(
        &tern.admin_url("/stats?filter=^cluster\\.be\\.upstream_rq_2xx$"),
        &[],
    )
    .await
    .body;
    assert_eq!(stats, "cluster.be.upstream_rq_2xx: 1\n");
    assert_eq!(tern.stat("listener.ingress.downstream_rq_2xx").await, 1);
    assert_eq!(
        get(&tern.admin_url("/stats?filter=("), &[]).await.status,
        400
    );

    let prom = get(&tern.admin_url("/stats/prometheus"), &[]).await;
    assert!(prom.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    for line in [
        "tern_downstream_rq_total{listener=\"ingress\"} 1",
        "tern_downstream_rq_xx_total{listener=\"ingress\",class=\"2xx\"} 1",
        "tern_upstream_rq_total{cluster=\"be\"} 1",
        "tern_config_update_success_total 1",
    ] {
        assert!(prom.body.contains(line), "missing {line} in\n{}", prom.body);
    }
    assert!(prom.body.contains(&format!(
        "tern_config_version_info{{version=\"{}\"}} 1",
        dump["version"].as_str().unwrap()
    )));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let be = Backend::start("be").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    forward_config(&cfg, admin, port, &be);
    let mut tern = Tern::start(cfg.path(), admin, &["--drain-timeout", "10s"]).await;

    let inflight =
        tokio::spawn(
            async move { get(&format!("http://127.0.0.1:{port}/slow?ms=1500"), &[]).await },
        );
    wait_for("request in flight", || async {
        (tern.stat("cluster.be.upstream_rq_active").await == 1).then_some(())
    })
    .await;
    tern.signal("TERM");
    // While draining: /ready says so and the listener accepts no new connections.
    let r = wait_for("ready to turn 503", || async {
        request("GET", &tern.admin_url("/ready"), &[], "")
            .await
            .ok()
            .filter(|r| r.status == 503)
    })
    .await;
    assert_eq!(r.body, "DRAINING\n");
    wait_for("listener to close", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .err()
            .map(|_| ())
    })
    .await;
    let r = inflight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slow be\n"));
    let status = tern.wait_exit().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn drain_timeout_cuts_requests_that_take_too_long() {
    let be = Backend::start("be").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    forward_config(&cfg, admin, port, &be);
    let mut tern = Tern::start(cfg.path(), admin, &["--drain-timeout", "200ms"]).await;
    let inflight = tokio::spawn(async move {
        request(
            "GET",
            &format!("http://127.0.0.1:{port}/slow?ms=30000"),
            &[],
            "",
        )
        .await
    });
    wait_for("request in flight", || async {
        (tern.stat("cluster.be.upstream_rq_active").await == 1).then_some(())
    })
    .await;
    tern.signal("TERM");
    let status = tern.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    let r = tokio::time::timeout(Duration::from_secs(10), inflight)
        .await
        .unwrap()
        .unwrap();
    assert!(
        r.is_err(),
        "the cut request fails instead of hanging: {r:?}"
    );
}

fn tern_health(addr: &str) -> Option<i32> {
    std::process::Command::new(tern_bin())
        .args(["health", "--admin-address", addr, "--timeout", "500ms"])
        .env_remove("TERN_CONFIG")
        .output()
        .unwrap()
        .status
        .code()
}

#[tokio::test]
async fn health_subcommand_follows_ready() {
    let be = Backend::start("be").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    forward_config(&cfg, admin, port, &be);
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    let addr = format!("127.0.0.1:{admin}");
    assert_eq!(tern_health(&addr), Some(0));
    request("POST", &tern.admin_url("/healthcheck/fail"), &[], "")
        .await
        .unwrap();
    assert_eq!(tern_health(&addr), Some(1));
    // Nothing listening.
    assert_eq!(tern_health(&format!("127.0.0.1:{}", free_port())), Some(1));
    // Accepts but never answers: gives up after its timeout.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap().to_string();
    assert_eq!(tern_health(&hang_addr), Some(1));
}
