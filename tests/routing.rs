//! Routing and proxying through a real `tern` process to real backends.

use tern_testkit::{
    admin_yaml, forward_config, free_port, get, listener_yaml, wait_for, Backend, ConfigDir, Tern,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    tern: Tern,
    port: u16,
    _cfg: ConfigDir,
    _backends: Vec<Backend>,
}

async fn setup() -> Setup {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("canary").await;
    let (admin, port, tcp_port) = (free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "listeners/http.yaml",
        &format!("{}  - name: tcp\n    address: 127.0.0.1:{tcp_port}\n    tcp_proxy: {{ cluster: canary }}\n", listener_yaml("ingress", port, "main")),
    );
    cfg.write(
        "routes/main.yaml",
        r#"
route_configs:
  - name: main
    virtual_hosts:
      - name: api
        domains: ["api.example.com", "*.api.example.com"]
        routes:
          - match: { prefix: /v1/, headers: [{ name: x-canary, exact: "1" }] }
            route: { cluster: canary, prefix_rewrite: / }
          - match: { prefix: /v1/, query_parameters: [{ name: pin, exact: "b" }] }
            route: { cluster: only_b, host_rewrite: internal.b }
          - match: { regex: "/items/[0-9]+" }
            route: { cluster: canary }
          - match: { prefix: /v1/ }
            route: { cluster: ab, prefix_rewrite: /internal/ }
          - match: { prefix: /slow }
            route: { cluster: ab, timeout: 200ms }
          - match: { prefix: /nowhere }
            route: { cluster: dead }
          - match: { prefix: /empty }
            route: { cluster: empty }
      - name: default
        domains: ["*"]
        routes:
          - match: { path: /healthz }
            direct_response: { status: 200, body: "ok\n" }
          - match: { prefix: /old/ }
            redirect: { prefix_rewrite: /new/, response_code: 308 }
          - match: { prefix: / }
            route: { cluster: ab }
"#,
    );
    cfg.write(
        "clusters.yaml",
        &format!(
            r#"
clusters:
  - name: ab
    endpoints: [{{ address: "{a}" }}, {{ address: "{b}", weight: 3 }}]
  - name: only_b
    lb_policy: least_request
    endpoints: [{{ address: "{b}" }}]
  - name: canary
    endpoints: [{{ address: "{c}" }}]
  - name: dead
    connect_timeout: 500ms
    endpoints: [{{ address: "127.0.0.1:{dead}" }}]
  - name: empty
    endpoints: []
"#,
            a = a.addr,
            b = b.addr,
            c = c.addr,
            dead = free_port()
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Setup {
        tern,
        port,
        _cfg: cfg,
        _backends: vec![a, b, c],
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn routes_by_host_path_header_and_query() {
    let s = setup().await;
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", s.port);

    let r = get(
        &url("/v1/users?x=1"),
        &[("host", "api.example.com"), ("x-canary", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let j = json(&r.body);
    assert_eq!(j["backend"], "canary");
    assert_eq!(
        j["uri"], "/users?x=1",
        "prefix_rewrite keeps the rest and the query"
    );

    let r = get(
        &url("/v1/users?pin=b"),
        &[("host", "eu.api.example.com:8080")],
    )
    .await;
    let j = json(&r.body);
    assert_eq!(j["backend"], "b");
    assert_eq!(j["headers"]["host"], "internal.b");

    let r = get(&url("/items/42"), &[("host", "api.example.com")]).await;
    assert_eq!(json(&r.body)["backend"], "canary");

    let r = get(&url("/v1/x"), &[("host", "api.example.com")]).await;
    assert_eq!(json(&r.body)["uri"], "/internal/x");

    let r = get(&url("/healthz"), &[("host", "other.example.org")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    let r = get(&url("/old/a?b=c"), &[("host", "x.org")]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "http://x.org/new/a?b=c");
}

#[tokio::test]
async fn proxy_headers_are_set_and_hop_by_hop_removed() {
    let s = setup().await;
    let url = format!("http://127.0.0.1:{}/anything", s.port);
    let r = get(
        &url,
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
        ],
    )
    .await;
    let j = json(&r.body);
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-private").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
    let id = h["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(
        r.headers["x-request-id"], id,
        "the id is returned to the client"
    );

    let r = get(&url, &[("x-request-id", "abc-123")]).await;
    assert_eq!(json(&r.body)["headers"]["x-request-id"], "abc-123");
    // No `tracing` block: no span is started, and a client's trace context passes untouched.
    assert!(h.get("traceparent").is_none(), "{h}");
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = get(&url, &[("traceparent", tp)]).await;
    assert_eq!(json(&r.body)["headers"]["traceparent"], tp);
}

#[tokio::test]
async fn local_replies_name_the_cause() {
    let s = setup().await;
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", s.port);
    let host = [("host", "api.example.com")];
    let r = get(&url("/nope"), &host).await;
    assert_eq!((r.status, r.body.as_str()), (404, "no route\n"));
    let r = get(&url("/nowhere"), &host).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "upstream connect error\n")
    );
    let r = get(&url("/empty"), &host).await;
    assert_eq!((r.status, r.body.as_str()), (503, "no healthy upstream\n"));
    let r = get(&url("/slow?ms=3000"), &host).await;
    assert_eq!((r.status, r.body.as_str()), (504, "upstream timeout\n"));
    assert_eq!(s.tern.stat("cluster.ab.upstream_rq_timeout").await, 1);
    assert_eq!(
        s.tern.stat("cluster.dead.upstream_cx_connect_fail").await,
        1
    );
    assert_eq!(s.tern.stat("listener.ingress.downstream_rq_4xx").await, 1);
    assert_eq!(s.tern.stat("listener.ingress.downstream_rq_5xx").await, 3);
}

#[tokio::test]
async fn weighted_round_robin_spreads_by_weight() {
    let s = setup().await;
    let url = format!("http://127.0.0.1:{}/rr", s.port);
    let mut b = 0;
    for _ in 0..40 {
        if get(&url, &[]).await.headers["x-backend"] == "b" {
            b += 1;
        }
    }
    // Weights 1:3 with a precomputed smooth schedule: exactly 30 of 40.
    assert_eq!(b, 30);
}

#[tokio::test]
async fn http2_prior_knowledge_downstream() {
    let s = setup().await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::get(format!("http://127.0.0.1:{}/h2?q=1", s.port))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j = json(std::str::from_utf8(&body).unwrap());
    assert_eq!(j["uri"], "/h2?q=1");
    assert_eq!(j["headers"]["host"], format!("127.0.0.1:{}", s.port));
}

#[tokio::test]
async fn streams_50_mb_both_ways() {
    let s = setup().await;
    const N: u64 = 50 * 1024 * 1024;
    // Upload: a streamed body the backend counts.
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(
        (0..N / (1024 * 1024)).map(|_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
                vec![7u8; 1024 * 1024],
            )))
        }),
    ));
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::post(format!("http://127.0.0.1:{}/upload", s.port))
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    use http_body_util::BodyExt;
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&got).unwrap(), N.to_string());

    // Download: count frames as they arrive rather than buffering 50 MB.
    let req = http::Request::get(format!("http://127.0.0.1:{}/download?bytes={N}", s.port))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut body = client.request(req).await.unwrap().into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len() as u64;
        }
    }
    assert_eq!(n, N);
}

#[tokio::test]
async fn tcp_listener_forwards_bytes() {
    let s = setup().await;
    let cfg = s.tern.config_dump().await;
    let tcp = cfg["config"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "tcp")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sock = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    sock.write_all(b"GET /raw HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-backend: canary"), "{out}");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let be = Backend::start("pooled").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    forward_config(&cfg, admin, port, &be);
    let _tern = Tern::start(cfg.path(), admin, &[]).await;
    for _ in 0..20 {
        assert_eq!(
            get(&format!("http://127.0.0.1:{port}/a"), &[]).await.status,
            200
        );
    }
    let n = be.conns.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 1, "20 sequential requests share one upstream connection");
}

#[tokio::test]
async fn connections_closed_by_the_upstream_are_replaced() {
    let be = Backend::start_with("closing", false).await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    forward_config(&cfg, admin, port, &be);
    let _tern = Tern::start(cfg.path(), admin, &[]).await;
    for _ in 0..10 {
        assert_eq!(
            get(&format!("http://127.0.0.1:{port}/a"), &[]).await.status,
            200
        );
    }
    assert_eq!(be.conns.load(std::sync::atomic::Ordering::SeqCst), 10);
}

/// A backend that accepts `Upgrade: websocket` with 101 and then echoes every byte, upper-cased.
async fn upgrade_echo_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: websocket") || !head.contains("connection: upgrade") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\n\r\nno upgrade\n",
                        )
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: x\r\n\r\n")
                    .await;
                let mut buf = [0u8; 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let up: Vec<u8> = buf[..n].to_ascii_uppercase();
                    if s.write_all(&up).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// A tern with one logging listener that forwards everything to the upgrade echo backend.
struct WsSetup {
    tern: Tern,
    port: u16,
    log: std::path::PathBuf,
    be_addr: std::net::SocketAddr,
    _be: tokio::task::JoinHandle<()>,
    _cfg: ConfigDir,
    _logdir: tempfile::TempDir,
}

async fn ws_setup(extra: &[&str]) -> WsSetup {
    let (be_addr, be) = upgrade_echo_backend().await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("access.log");
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "l.yaml",
        &format!(
            "listeners:\n  - name: ingress\n    address: 127.0.0.1:{port}\n    route_config: main\n    access_log: [{{ path: \"{}\", format: json }}]\n",
            log.display()
        ),
    );
    cfg.write(
        "r.yaml",
        &format!(
            "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: ws }}\nclusters:\n  - name: ws\n    endpoints: [{{ address: \"{be_addr}\" }}]\n"
        ),
    );
    let tern = Tern::start(cfg.path(), admin, extra).await;
    WsSetup {
        tern,
        port,
        log,
        be_addr,
        _be: be,
        _cfg: cfg,
        _logdir: logdir,
    }
}

/// Sends a WebSocket handshake to `port`; returns the stream and the response head (lower case).
async fn ws_open(port: u16) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: k\r\nsec-websocket-version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let setup = ws_setup(&[]).await;
    let (tern, port, log, be_addr) = (&setup.tern, setup.port, &setup.log, setup.be_addr);
    let (mut s, head) = ws_open(port).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
        "{head}"
    );
    // The tunnel carries bytes both ways, several times.
    for msg in [&b"hello"[..], b"again"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg.to_ascii_uppercase());
    }
    // While the tunnel is open the endpoint counts as busy.
    assert_eq!(tern.stat("cluster.ws.upstream_rq_active").await, 1);
    drop(s);
    wait_for("tunnel closed", || async {
        (tern.stat("cluster.ws.upstream_rq_active").await == 0).then_some(())
    })
    .await;
    // The upgrade is logged when the tunnel closes, with the bytes that went through each way.
    let line = wait_for("access log line", || async {
        std::fs::read_to_string(log)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .await;
    let e: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(e["response_code"], 101, "{line}");
    assert_eq!(e["upstream_host"], be_addr.to_string());
    assert_eq!(
        (e["bytes_received"].as_u64(), e["bytes_sent"].as_u64()),
        (Some(10), Some(10)),
        "{line}"
    );
    // A plain request to the same backend is refused by it, and that answer passes through.
    let r = get(&format!("http://127.0.0.1:{port}/chat"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (400, "no upgrade\n"));
}

#[tokio::test]
async fn websocket_open_at_shutdown_is_closed_after_the_drain_and_logged() {
    let mut setup = ws_setup(&["--drain-timeout", "300ms"]).await;
    let (mut s, head) = ws_open(setup.port).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (tern, log) = (&mut setup.tern, &setup.log);
    s.write_all(b"abc").await.unwrap();
    let mut got = [0u8; 3];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ABC");
    // Nothing is logged while the tunnel is open.
    assert_eq!(std::fs::read_to_string(log).unwrap_or_default(), "");
    // The client keeps the tunnel open: the drain ends it, logs it, and the process exits 0.
    tern.signal("TERM");
    let status = tern.wait_exit().await;
    assert!(status.success(), "{status:?}\n{}", tern.logs());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let e: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(e["response_code"], 101);
    assert_eq!(
        (e["bytes_received"].as_u64(), e["bytes_sent"].as_u64()),
        (Some(3), Some(3)),
        "{text}"
    );
}
