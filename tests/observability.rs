//! Access logs, trace propagation, Prometheus output, runtime log level and the dashboard,
//! against a real `tern` process, real backends and real clients.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use tern_testkit::{
    admin_yaml, direct_yaml, free_port, get, request, tern_check_fails, wait_for, workspace_root,
    Backend, ConfigDir, Resp, Tern, DEADLINE,
};

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_lines(p: &Path, n: usize) -> Vec<String> {
    wait_for(&format!("{n} lines in {}", p.display()), || async {
        let l = lines(p);
        (l.len() >= n).then_some(l)
    })
    .await
}

/// Routes used by the access log test, one per response flag.
fn flags_config(port: u16, backend: &str, dead: u16, log: &Path) -> String {
    format!(
        r#"listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - {{ path: "{log}", format: json }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: ok
            match: {{ prefix: /ok }}
            route: {{ cluster: api }}
          - match: {{ prefix: /slow }}
            route: {{ cluster: api, timeout: 50ms }}
          - match: {{ prefix: /dead }}
            route: {{ cluster: dead }}
          - match: {{ prefix: /empty }}
            route: {{ cluster: empty }}
          - match: {{ prefix: /retry }}
            route:
              cluster: dead
              retry_policy: {{ retry_on: connect-failure, num_retries: 1, retry_back_off: {{ base_interval: 1ms }} }}
          - match: {{ prefix: /limited }}
            direct_response: {{ status: 200, body: "fine" }}
            rate_limit: {{ requests_per_unit: 1, unit: minute }}
          - match: {{ prefix: /abort }}
            direct_response: {{ status: 200, body: "never" }}
            fault: {{ abort: {{ http_status: 418 }} }}
          - match: {{ prefix: /delay }}
            route: {{ cluster: api }}
            fault: {{ delay: {{ fixed_delay: 5ms }} }}
clusters:
  - name: api
    endpoints: [{{ address: "{backend}" }}]
  - name: empty
    endpoints: []
  - name: dead
    connect_timeout: 1s
    endpoints: [{{ address: "127.0.0.1:{dead}" }}]
"#,
        log = log.display()
    )
}

/// A running tern on [`flags_config`] (one healthy backend, one dead endpoint, a JSON access
/// log), its config text passed through `edit` first; keeps the backend and temp dirs alive.
struct FlagsSetup {
    tern: Tern,
    port: u16,
    log: std::path::PathBuf,
    backend: Backend,
    dead: u16,
    _cfg: ConfigDir,
    _logdir: tempfile::TempDir,
}

async fn flags_tern(edit: impl Fn(String) -> String) -> FlagsSetup {
    let backend = Backend::start("b1").await;
    let upstream = backend.addr.to_string();
    flags_tern_to(&upstream, backend, edit).await
}

/// [`flags_tern`] with cluster `api` pointing at `upstream` instead of `backend`.
async fn flags_tern_to(
    upstream: &str,
    backend: Backend,
    edit: impl Fn(String) -> String,
) -> FlagsSetup {
    let (port, admin, dead) = (free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("access.log");
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("main.yaml", &edit(flags_config(port, upstream, dead, &log)));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    FlagsSetup {
        tern,
        port,
        log,
        backend,
        dead,
        _cfg: cfg,
        _logdir: logdir,
    }
}

#[tokio::test]
async fn access_log_json_has_every_field_and_response_flags() {
    let setup = flags_tern(|c| c).await;
    let (port, log, dead, backend) = (setup.port, setup.log.clone(), setup.dead, &setup.backend);
    let base = format!("http://127.0.0.1:{port}");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let ok = get(
        &format!("{base}/ok?x=1"),
        &[
            ("user-agent", "obs-test/1"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "rid-1"),
            ("traceparent", tp),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    let post = request("POST", &format!("{base}/ok"), &[], "hello")
        .await
        .unwrap();
    assert_eq!(post.status, 200);
    assert_eq!(get(&format!("{base}/slow?ms=2000"), &[]).await.status, 504);
    assert_eq!(get(&format!("{base}/dead"), &[]).await.status, 503);
    assert_eq!(get(&format!("{base}/retry"), &[]).await.status, 503);
    assert_eq!(get(&format!("{base}/limited"), &[]).await.status, 200);
    assert_eq!(get(&format!("{base}/limited"), &[]).await.status, 429);
    assert_eq!(get(&format!("{base}/abort"), &[]).await.status, 418);
    assert_eq!(get(&format!("{base}/delay"), &[]).await.status, 200);
    assert_eq!(get(&format!("{base}/nothing"), &[]).await.status, 404);
    assert_eq!(get(&format!("{base}/empty"), &[]).await.status, 503);

    let all = wait_lines(&log, 11).await;
    let entries: Vec<serde_json::Value> = all
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let by = |path: &str, method: &str| -> Vec<&serde_json::Value> {
        entries
            .iter()
            .filter(|e| e["path"] == path && e["method"] == method)
            .collect()
    };
    let e = by("/ok?x=1", "GET")[0];
    assert_eq!(e["authority"], format!("127.0.0.1:{port}"));
    assert_eq!(e["protocol"], "HTTP/1.1");
    assert_eq!(e["response_code"], 200);
    assert_eq!(e["response_flags"], "-");
    assert_eq!(e["bytes_sent"], ok.body.len() as u64);
    assert!(e["duration_ms"].is_u64());
    assert!(e["upstream_service_time_ms"].is_u64());
    assert_eq!(e["upstream_host"], backend.addr.to_string());
    assert_eq!(e["upstream_cluster"], "api");
    assert_eq!(e["route_name"], "ok");
    assert_eq!(e["request_id"], "rid-1");
    assert_eq!(e["x_forwarded_for"], "1.2.3.4");
    assert_eq!(e["user_agent"], "obs-test/1");
    assert_eq!(e["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(e["start_time"].as_str().unwrap().ends_with('Z'));
    assert!(e["downstream_remote_address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let e = by("/ok", "POST")[0];
    assert_eq!(e["bytes_received"], 5);
    // A generated request id is logged as sent to the client.
    assert_eq!(
        e["request_id"].as_str().unwrap(),
        post.headers["x-request-id"].to_str().unwrap()
    );
    let flags = |path: &str| by(path, "GET")[0]["response_flags"].clone();
    assert_eq!(flags("/slow?ms=2000"), "UT");
    assert_eq!(flags("/dead"), "UF");
    assert_eq!(flags("/retry"), "UF,URX");
    assert_eq!(flags("/abort"), "FI");
    assert_eq!(flags("/delay"), "DI");
    assert_eq!(flags("/nothing"), "NR");
    assert_eq!(flags("/empty"), "UH");
    let limited: Vec<_> = by("/limited", "GET")
        .iter()
        .map(|e| e["response_flags"].clone())
        .collect();
    assert_eq!(limited, vec!["-", "RL"]);
    assert_eq!(
        by("/dead", "GET")[0]["upstream_host"],
        format!("127.0.0.1:{dead}")
    );
}

/// A raw upstream that answers as soon as it has a request head, then goes on reading the
/// chunked body to its end (as a server streaming its answer to an upload does), and says on
/// `body_read` when it has all of it.
async fn early_answer_backend() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut answered = false;
        while !got.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "upstream connection closed before the body ended");
            got.extend_from_slice(&buf[..n]);
            if !answered && got.windows(4).any(|w| w == b"\r\n\r\n") {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                answered = true;
            }
        }
        let _ = tx.send(());
        // Keep the connection open until the proxy is done with it.
        let _ = s.read(&mut buf).await;
    });
    (addr, rx)
}

#[tokio::test]
async fn access_log_line_waits_for_a_request_body_that_outlasts_the_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, body_read) = early_answer_backend().await;
    let setup = flags_tern_to(&upstream.to_string(), Backend::start("b1").await, |c| c).await;
    let (port, log) = (setup.port, setup.log.clone());
    // No content-length: the size is only known from the bytes that stream through.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    // The whole response arrives while half of the body is still to be sent.
    let mut resp = Vec::new();
    let mut buf = [0u8; 1024];
    while !resp.ends_with(b"\r\n\r\nok") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before the response: {}",
            String::from_utf8_lossy(&resp)
        );
        resp.extend_from_slice(&buf[..n]);
    }
    assert!(resp.starts_with(b"HTTP/1.1 200"));
    s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    tokio::time::timeout(tern_testkit::DEADLINE, body_read)
        .await
        .expect("the upstream got the whole body")
        .unwrap();
    // One line, written once both directions were done: it counts the whole body.
    let line = wait_lines(&log, 1).await.remove(0);
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (e["method"].as_str(), e["path"].as_str()),
        (Some("POST"), Some("/ok"))
    );
    assert_eq!(e["bytes_received"], 11, "{line}");
    assert_eq!(e["response_flags"], "-", "{line}");
}

#[tokio::test]
async fn access_log_downstream_disconnect_is_flagged_dc() {
    let setup = flags_tern(|c| c.replace("timeout: 50ms", "timeout: 10s")).await;
    let (port, log) = (setup.port, setup.log.clone());
    // The client gives up while the upstream is still thinking.
    let url = format!("http://127.0.0.1:{port}/slow?ms=1500");
    let r = tokio::time::timeout(std::time::Duration::from_millis(200), get(&url, &[])).await;
    assert!(r.is_err(), "the request should still be waiting");
    let l = wait_lines(&log, 1).await;
    let e: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(e["response_flags"], "DC");
    assert_eq!(e["response_code"], 0);
}

#[tokio::test]
async fn access_log_format_string_and_reopen_on_sigusr1() {
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("access.log");
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "l.yaml",
        &format!(
            "listeners:\n  - name: ingress\n    address: 127.0.0.1:{port}\n    route_config: main\n    access_log:\n      - path: {}\n        format: \"%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT% %REQ(X-REQUEST-ID)% %UPSTREAM_HOST% %RESP(content-type)% 100%%\"\n",
            log.display()
        ),
    );
    cfg.write("r.yaml", &direct_yaml("main", "hello"));
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let url = format!("http://127.0.0.1:{port}");
    get(&format!("{url}/a"), &[("x-request-id", "r1")]).await;
    let l = wait_lines(&log, 1).await;
    assert_eq!(l[0], "GET /a 200 - 5 r1 - text/plain; charset=utf-8 100%");

    // Rotate: move the file away, signal, and new lines go to a new file at the old path.
    let rotated = logdir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    t.signal("USR1");
    wait_for("a new access.log after SIGUSR1", || async {
        get(&format!("{url}/b"), &[("x-request-id", "r2")]).await;
        lines(&log)
            .iter()
            .any(|l| l.starts_with("GET /b 200"))
            .then_some(())
    })
    .await;
    assert_eq!(lines(&rotated)[0], l[0]);
    assert!(t.child.id() > 0, "still running after SIGUSR1");
    assert_eq!(get(&t.admin_url("/ready"), &[]).await.status, 200);
}

#[tokio::test]
async fn access_log_drops_and_counts_when_the_sink_stalls() {
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let logdir = tempfile::tempdir().unwrap();
    // A FIFO nobody reads: the writer blocks opening it, like a stuck disk.
    let fifo = logdir.path().join("stalled.log");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "l.yaml",
        &format!(
            "listeners:\n  - name: ingress\n    address: 127.0.0.1:{port}\n    route_config: main\n    access_log:\n      - {{ path: {}, format: \"%REQ(:PATH)%\", buffer_lines: 4 }}\n",
            fifo.display()
        ),
    );
    cfg.write("r.yaml", &direct_yaml("main", "hello"));
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let start = std::time::Instant::now();
    for i in 0..20 {
        let r = get(&format!("http://127.0.0.1:{port}/r{i}"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "requests were slowed by a stalled log"
    );
    assert_eq!(t.stat("listener.ingress.access_log_dropped").await, 16);
    // Once someone reads, the buffered lines come out in order.
    let reader = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&fifo).unwrap();
        std::io::BufReader::new(f)
            .lines()
            .take(4)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    let got = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec!["/r0", "/r1", "/r2", "/r3"]);
}

#[tokio::test]
async fn trace_context_is_translated_for_the_backend() {
    let backend = Backend::start("b1").await;
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "main.yaml",
        &format!(
            r#"listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    tracing: {{ propagation: [w3c, b3, xray] }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: api }}
clusters:
  - name: api
    endpoints: [{{ address: "{}" }}]
"#,
            backend.addr
        ),
    );
    let _t = Tern::start(cfg.path(), admin, &[]).await;
    let url = format!("http://127.0.0.1:{port}/echo");
    let seen = |r: Resp| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["headers"].clone()
    };
    let h = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();

    // X-Ray in: the backend gets the same trace as W3C, B3 and X-Ray, as a child span.
    let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let b = seen(get(&url, &[("x-amzn-trace-id", xray)]).await);
    let tp = h(&b, "traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "5759e988bd862e3fe1be46a994272793", "{tp}");
    assert_ne!(parts[2], "53995c3f42cd8ad8", "a new span id");
    assert_eq!(parts[3], "01");
    assert_eq!(
        h(&b, "x-amzn-trace-id"),
        format!(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent={};Sampled=1",
            parts[2]
        )
    );
    assert_eq!(h(&b, "x-b3-traceid"), "5759e988bd862e3fe1be46a994272793");
    assert_eq!(h(&b, "x-b3-spanid"), parts[2]);
    assert_eq!(h(&b, "x-b3-parentspanid"), "53995c3f42cd8ad8");
    assert_eq!(h(&b, "x-b3-sampled"), "1");

    // W3C in: X-Ray out with the same 128 bits; tracestate passes through.
    let b = seen(
        get(
            &url,
            &[
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                ),
                ("tracestate", "vendor=opaque"),
            ],
        )
        .await,
    );
    assert!(
        h(&b, "x-amzn-trace-id").starts_with("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=")
    );
    assert!(h(&b, "x-amzn-trace-id").ends_with(";Sampled=0"));
    assert_eq!(h(&b, "tracestate"), "vendor=opaque");
    assert_eq!(h(&b, "x-b3-parentspanid"), "00f067aa0ba902b7");

    // B3 single in (not configured): kept, and translated to the configured formats.
    let b = seen(get(&url, &[("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-1")]).await);
    assert!(h(&b, "b3").starts_with("463ac35c9f6413ad-"));
    assert!(h(&b, "b3").ends_with("-1-a2fb4a1d1a96d312"));
    assert!(h(&b, "traceparent").starts_with("00-0000000000000000463ac35c9f6413ad-"));

    // Nothing in: a new trace, in every configured format, X-Ray compatible.
    let b = seen(get(&url, &[]).await);
    let tp = h(&b, "traceparent");
    assert_eq!(tp.len(), 55, "{tp}");
    let trace = &tp[3..35];
    let secs = u64::from_str_radix(&trace[..8], 16).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(secs) < 60,
        "X-Ray wants the time in the first 8 hex digits"
    );
    assert!(h(&b, "x-amzn-trace-id").starts_with(&format!(
        "Root=1-{}-{}",
        &trace[..8],
        &trace[8..]
    )));
    assert_eq!(h(&b, "x-b3-traceid"), trace);
    assert!(
        h(&b, "x-b3-parentspanid").is_empty(),
        "a root span has no parent"
    );
    assert!(b.get("b3").is_none(), "b3 single is not configured");
}

fn promtool_check(text: &str) -> (bool, String) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is required for this test ({e}); install it with scripts/install-test-deps \
             (Debian package `prometheus`)"
        ),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn prometheus_output_passes_promtool_and_has_latency_histograms() {
    let setup = flags_tern(|c| c).await;
    let (t, port) = (&setup.tern, setup.port);
    for _ in 0..5 {
        assert_eq!(
            get(&format!("http://127.0.0.1:{port}/ok"), &[])
                .await
                .status,
            200
        );
    }
    get(&format!("http://127.0.0.1:{port}/nothing"), &[]).await;
    // The response body ends (and is timed) just after the client has it: poll.
    let p = wait_for("6 timed requests", || async {
        let p = get(&t.admin_url("/stats/prometheus"), &[]).await.body;
        p.contains("tern_downstream_rq_time_count{listener=\"ingress\"} 6\n")
            .then_some(p)
    })
    .await;
    let (ok, out) = promtool_check(&p);
    assert!(ok, "promtool check metrics failed:\n{out}\n---\n{p}");
    assert!(p.contains("# TYPE tern_downstream_rq_time histogram\n"));
    assert!(p.contains("tern_downstream_rq_time_bucket{listener=\"ingress\",le=\"+Inf\"} 6\n"));
    assert!(p.contains("tern_upstream_rq_time_count{cluster=\"api\"} 5\n"));
    assert!(p.contains("tern_upstream_rq_time_bucket{cluster=\"api\",le=\"0.5\"}"));
    assert!(p.contains("# TYPE tern_access_log_dropped_total counter\n"));
    // Per route: route config, virtual host and route name as labels.
    let route = "route_config=\"main\",virtual_host=\"all\",route=\"ok\"";
    assert!(
        p.contains(&format!("tern_route_rq_total{{{route}}} 5\n")),
        "{p}"
    );
    assert!(p.contains(&format!(
        "tern_route_rq_xx_total{{{route},class=\"2xx\"}} 5\n"
    )));
    assert!(p.contains(&format!("tern_route_rq_time_count{{{route}}} 5\n")));
    assert!(p.contains(&format!(
        "tern_route_rq_time_bucket{{{route},le=\"+Inf\"}} 5\n"
    )));
    // Per endpoint: cluster and endpoint as labels, read from the running snapshot.
    let ep = format!("cluster=\"api\",endpoint=\"{}\"", setup.backend.addr);
    assert!(
        p.contains(&format!("tern_endpoint_rq_total{{{ep}}} 5\n")),
        "{p}"
    );
    assert!(p.contains(&format!("tern_endpoint_rq_error_total{{{ep}}} 0\n")));
    assert!(p.contains(&format!("tern_endpoint_healthy{{{ep}}} 1\n")));
    assert!(p.contains(&format!("tern_endpoint_rq_active{{{ep}}} 0\n")));
    assert!(p.contains("# TYPE tern_endpoint_cx_idle gauge\n"));
    // Bad output must fail, or the check above proves nothing.
    let (ok, _) = promtool_check("# TYPE x counter\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n");
    assert!(!ok, "promtool accepted a duplicate series");
    // The JSON view has the histogram summaries too.
    assert_eq!(t.stat("listener.ingress.downstream_rq_time_count").await, 6);
    assert_eq!(t.stat("cluster.api.upstream_rq_time_count").await, 5);
    let ep_stat = format!(
        "cluster.api.endpoint.{}.endpoint_rq_total",
        setup.backend.addr
    );
    assert_eq!(t.stat(&ep_stat).await, 5);
}

#[tokio::test]
async fn log_level_changes_at_runtime() {
    let (port, admin, dead) = (free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "main.yaml",
        &format!(
            "listeners:\n  - {{ name: ingress, address: 127.0.0.1:{port}, route_config: main }}\nroute_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: dead }}\nclusters:\n  - name: dead\n    endpoints: [{{ address: \"127.0.0.1:{dead}\" }}]\n"
        ),
    );
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let url = format!("http://127.0.0.1:{port}/");
    let count = || t.logs().matches("upstream connect error").count();
    // Started at debug (the harness): connect errors are logged.
    get(&url, &[]).await;
    wait_for("a debug line", || async { (count() == 1).then_some(()) }).await;

    let r = request("POST", &t.admin_url("/logging?level=warn"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&t.admin_url("/logging"), &[]).await.body, "warn\n");
    for _ in 0..3 {
        assert_eq!(get(&url, &[]).await.status, 503);
    }
    // Back to debug, then one more failure: only that one is logged.
    let r = request("POST", &t.admin_url("/logging?level=debug"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    get(&url, &[]).await;
    wait_for("the debug line after re-enabling", || async {
        (count() == 2).then_some(())
    })
    .await;
    assert_eq!(count(), 2, "nothing was logged at warn:\n{}", t.logs());

    let r = request("POST", &t.admin_url("/logging?level=no[such"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let r = request("POST", &t.admin_url("/logging"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        get(&t.admin_url("/logging?level=info"), &[]).await.status,
        200,
        "GET only reads"
    );
    assert_eq!(get(&t.admin_url("/logging"), &[]).await.body, "debug\n");
    // A per-target filter arrives percent-encoded.
    let r = request(
        "POST",
        &t.admin_url("/logging?level=warn,tern%3Ddebug"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get(&t.admin_url("/logging"), &[]).await.body,
        "warn,tern=debug\n"
    );
    get(&url, &[]).await;
    wait_for("tern's own debug line under warn,tern=debug", || async {
        (count() == 3).then_some(())
    })
    .await;
}

#[test]
fn bad_observability_settings_are_rejected_with_positions() {
    let cfg = ConfigDir::new();
    cfg.write(
        "l.yaml",
        "listeners:\n  - name: ingress\n    address: 127.0.0.1:1\n    route_config: main\n    access_log:\n      - { path: /dev/stdout, format: \"%NOPE%\" }\n      - { path: /dev/stdout, buffer_lines: 0 }\n    tracing: { sampling: 2 }\n  - name: tcp\n    address: 127.0.0.1:2\n    tcp_proxy: { cluster: c }\n    access_log: [{ path: /dev/stdout }]\n",
    );
    cfg.write("r.yaml", &direct_yaml("main", "x"));
    cfg.write(
        "c.yaml",
        "clusters:\n  - name: c\n    endpoints: [{ address: \"127.0.0.1:3\" }]\n",
    );
    let err = tern_check_fails(cfg.path());
    assert!(
        err.contains("l.yaml:6:") && err.contains("unknown access log operator `%NOPE%`"),
        "{err}"
    );
    assert!(
        err.contains("l.yaml:7:") && err.contains("buffer_lines must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains("l.yaml:8:") && err.contains("sampling 2 must be between 0 and 1"),
        "{err}"
    );
    assert!(
        err.contains("access_log is only supported on HTTP listeners"),
        "{err}"
    );
    // Unknown propagation formats are caught by the schema.
    let cfg2 = ConfigDir::new();
    cfg2.write(
        "l.yaml",
        "listeners:\n  - name: ingress\n    address: 127.0.0.1:1\n    route_config: main\n    tracing: { propagation: [w3c, zipkin] }\n",
    );
    cfg2.write("r.yaml", &direct_yaml("main", "x"));
    assert!(tern_check_fails(cfg2.path()).contains("zipkin"));
}

/// Metric names in a PromQL expression (`tern_...` identifiers).
fn metric_names(expr: &str) -> Vec<String> {
    regex::Regex::new(r"\btern_[a-z0-9_]+")
        .unwrap()
        .find_iter(expr)
        .map(|m| m.as_str().to_string())
        .collect()
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_queries_only_metrics_tern_exports() {
    let dir = workspace_root().join("config-examples/observability");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for p in panels {
        assert!(
            !p["targets"].as_array().expect("targets").is_empty(),
            "{}",
            p["title"]
        );
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let mut names: Vec<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");

    // A running Tern with a listener and a cluster, so every labelled family has samples.
    let setup = flags_tern(|c| c).await;
    let t = &setup.tern;
    let p = get(&t.admin_url("/stats/prometheus"), &[]).await.body;
    let exported: std::collections::HashSet<&str> = p
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics Tern does not export: {missing:?}"
    );

    // The scrape config is a valid Prometheus config pointing at the right path.
    let scrape = dir.join("prometheus.yml.example");
    assert!(std::fs::read_to_string(&scrape)
        .unwrap()
        .contains("metrics_path: /stats/prometheus"));
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&scrape)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is required ({e}); run scripts/install-test-deps (Debian package `prometheus`)")
        });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn request_id_is_kept_or_replaced_per_listener() {
    let backend = Backend::start("b1").await;
    let (keep, replace, admin) = (free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "main.yaml",
        &format!(
            "listeners:\n  - {{ name: keep, address: 127.0.0.1:{keep}, route_config: main }}\n  - {{ name: edge, address: 127.0.0.1:{replace}, route_config: main, preserve_external_request_id: false }}\nroute_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: api }}\nclusters:\n  - name: api\n    endpoints: [{{ address: \"{}\" }}]\n",
            backend.addr
        ),
    );
    let _t = Tern::start(cfg.path(), admin, &[]).await;
    let seen = |r: &Resp| -> String {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["headers"]["x-request-id"].as_str().unwrap().to_string()
    };
    let r = get(
        &format!("http://127.0.0.1:{keep}/"),
        &[("x-request-id", "mine")],
    )
    .await;
    assert_eq!(seen(&r), "mine");
    assert_eq!(r.headers["x-request-id"], "mine");
    let r = get(
        &format!("http://127.0.0.1:{replace}/"),
        &[("x-request-id", "mine")],
    )
    .await;
    let id = seen(&r);
    assert_ne!(id, "mine");
    assert!(uuid_like(&id), "{id}");
    assert_eq!(r.headers["x-request-id"], id.as_str());
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}
