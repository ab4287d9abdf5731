//! gRPC through the proxy with real gRPC peers: a tonic client (HTTP/2 to Tern), raw HTTP/2
//! requests (hyper) to read the exact headers, tonic-health servers (h2c and TLS) for health
//! checks, and HTTP/1.1 upstreams that answer the way gRPC servers do (a message with
//! `grpc-status` in chunked trailers, or trailers-only) and record the `grpc-timeout` they were
//! sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tern_testkit::{admin_yaml, free_port, wait_for, ConfigDir, Tern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How a [`GrpcUpstream`] answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// `SERVING`, with `grpc-status: 0` in chunked trailers.
    Serving,
    /// Trailers-only `grpc-status: 14`.
    Unavailable,
    /// Reads the request and never answers.
    Hang,
}

/// An HTTP/1.1 upstream answering gRPC calls as `answer` says; records each request's
/// `grpc-timeout` (`None`: not sent).
struct GrpcUpstream {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
    timeouts: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head, then a body by content-length or chunked); returns its head.
async fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let (head, mut body) = loop {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            break (head, buf[i + 4..].to_vec());
        }
    };
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap_or(0));
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let complete = match len {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => true,
        };
        if complete {
            return Some(head);
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
}

impl GrpcUpstream {
    async fn start(answer: Answer) -> GrpcUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let timeouts = Arc::new(Mutex::new(Vec::new()));
        let (c, t, n) = (calls.clone(), timeouts.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                n.fetch_add(1, SeqCst);
                let (c, t) = (c.clone(), t.clone());
                tokio::spawn(async move {
                    while let Some(head) = read_request(&mut s).await {
                        let timeout = head
                            .lines()
                            .find_map(|l| l.strip_prefix("grpc-timeout:"))
                            .map(|v| v.trim().to_string());
                        t.lock().unwrap().push(timeout);
                        c.fetch_add(1, SeqCst);
                        let reply: &[u8] = match answer {
                            // One message: HealthCheckResponse { status: SERVING } (field 1 = 1).
                            Answer::Serving => b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n7\r\n\x00\x00\x00\x00\x02\x08\x01\r\n0\r\ngrpc-status: 0\r\n\r\n",
                            Answer::Unavailable => b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ngrpc-message: try%20later\r\ncontent-length: 0\r\n\r\n",
                            Answer::Hang => {
                                std::future::pending::<()>().await;
                                return;
                            }
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        GrpcUpstream {
            addr,
            calls,
            conns,
            timeouts,
            task,
        }
    }
}

/// A tonic health client to Tern on `port`, with `authority` as its `:authority`.
async fn client(port: u16, authority: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// One `Check` call: its status code (`Ok` on success).
async fn call(c: &mut HealthClient<tonic::transport::Channel>) -> Code {
    match c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// One raw HTTP/2 gRPC request to Tern: the response head and the body (data and trailers).
async fn raw(
    port: u16,
    authority: &str,
    extra: &[(&str, &str)],
) -> (http::response::Parts, http_body_util::Collected<Bytes>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let body = Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00"));
    let resp = tx.send_request(req.body(body).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.unwrap())
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every local reply a gRPC client can get is trailers-only, with Envoy's status: the tonic
/// client reads the status it names, the raw headers are Envoy's, and the access log keeps the
/// HTTP status and the flag. A plain HTTP request to the same route still gets plain text.
#[tokio::test]
async fn local_replies_are_trailers_only_with_envoys_statuses() {
    let hang = GrpcUpstream::start(Answer::Hang).await;
    let ok = GrpcUpstream::start(Answer::Serving).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let log = cfg.path().join("access.log");
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "main.yaml",
        &format!(
            r#"listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - path: {log}
        format: "%REQ(:AUTHORITY)% %RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS% %GRPC_STATUS(NUMBER)%"
route_configs:
  - name: main
    virtual_hosts:
      - {{ name: uh, domains: [uh], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: empty }} }}] }}
      - {{ name: uf, domains: [uf], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: dead }} }}] }}
      - {{ name: uo, domains: [uo], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: one, timeout: 0s }} }}] }}
      - name: rl
        domains: [rl]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: ok }}
            rate_limit: {{ requests_per_unit: 1, unit: minute }}
      - {{ name: ut, domains: [ut], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: hang, timeout: 200ms }} }}] }}
      - name: fault
        domains: [fault]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: ok }}
            fault: {{ abort: {{ grpc_status: 8 }} }}
      - name: direct
        domains: [direct]
        routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 403, body: "not for you" }} }}]
clusters:
  - {{ name: empty, endpoints: [] }}
  - {{ name: dead, connect_timeout: 1s, endpoints: [{{ address: "{dead}" }}] }}
  - name: one
    circuit_breakers: {{ max_requests: 1 }}
    endpoints: [{{ address: "{hang}" }}]
  - {{ name: ok, endpoints: [{{ address: "{ok}" }}] }}
  - {{ name: hang, endpoints: [{{ address: "{hang}" }}] }}
"#,
            log = log.display(),
            hang = hang.addr,
            ok = ok.addr,
        ),
    );
    let t = Tern::start(cfg.path(), admin, &[]).await;

    // No route (NR), no healthy upstream (UH), upstream down (UF): one tonic call each.
    assert_eq!(
        call(&mut client(port, "nothing").await).await,
        Code::Unimplemented
    );
    assert_eq!(call(&mut client(port, "uh").await).await, Code::Unavailable);
    assert_eq!(call(&mut client(port, "uf").await).await, Code::Unavailable);
    // Rate limit (RL): the first call goes through, the second is refused.
    let mut rl = client(port, "rl").await;
    assert_eq!(call(&mut rl).await, Code::Ok);
    assert_eq!(call(&mut rl).await, Code::Unavailable);
    // Route timeout (UT): DEADLINE_EXCEEDED, as Envoy's router answers.
    let started = Instant::now();
    assert_eq!(
        call(&mut client(port, "ut").await).await,
        Code::DeadlineExceeded
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Overflow (UO): one call holds the only request slot, the next is refused.
    let mut held = client(port, "uo").await;
    let before = hang.calls.load(SeqCst);
    let holder = tokio::spawn(async move { call(&mut held).await });
    wait_for("the first call to reach the upstream", || {
        let n = hang.calls.load(SeqCst);
        async move { (n > before).then_some(()) }
    })
    .await;
    assert_eq!(call(&mut client(port, "uo").await).await, Code::Unavailable);
    holder.abort();
    // A direct response is a local reply too (Envoy's router sends it with sendLocalReply).
    assert_eq!(
        call(&mut client(port, "direct").await).await,
        Code::PermissionDenied
    );

    // A fault abort with a gRPC status (Envoy's grpc_status): that status; HTTP 200 otherwise.
    assert_eq!(
        call(&mut client(port, "fault").await).await,
        Code::ResourceExhausted
    );
    let plain = tern_testkit::get(&format!("http://127.0.0.1:{port}/"), &[("host", "fault")]).await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (200, "fault filter abort\n")
    );

    // The exact headers: HTTP 200, application/grpc, grpc-status, percent-encoded grpc-message,
    // and nothing after them.
    let (head, body) = raw(port, "uh", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-type"], "application/grpc");
    assert_eq!(head.headers["grpc-status"], "14");
    assert_eq!(head.headers["grpc-message"], "no healthy upstream");
    assert!(body.trailers().is_none());
    assert!(body.to_bytes().is_empty());
    let (head, _) = raw(port, "direct", &[]).await;
    assert_eq!(
        (&head.headers["grpc-status"], &head.headers["grpc-message"]),
        (&"7".parse().unwrap(), &"not for you".parse().unwrap())
    );
    // Plain HTTP to the same route: the plain reply, unchanged.
    let plain = tern_testkit::get(&format!("http://127.0.0.1:{port}/"), &[("host", "uh")]).await;
    assert_eq!(plain.status, 503);
    assert_eq!(plain.body, "no healthy upstream\n");

    let want = [
        "nothing 404 NR Unimplemented 12",
        "uh 503 UH Unavailable 14",
        "uf 503 UF Unavailable 14",
        // Trailers end the response: no DC.
        "rl 200 - OK 0",
        "rl 429 RL Unavailable 14",
        "ut 504 UT DeadlineExceeded 4",
        "uo 503 UO Unavailable 14",
        "direct 403 - PermissionDenied 7",
        "fault 200 FI ResourceExhausted 8",
        "fault 200 FI - -",
        "uh 503 UH - -",
    ];
    let lines = wait_for("the access log lines", || {
        let lines = log_lines(&log);
        async move {
            want.iter()
                .all(|w| lines.iter().any(|l| l == w))
                .then_some(lines)
        }
    })
    .await;
    assert!(lines.len() >= want.len(), "{lines:?}");
    drop(t);
}

/// `max_stream_duration`: the client's `grpc-timeout` less the offset, capped at
/// `grpc_timeout_header_max`, is the stream's limit and goes upstream as the time left; with a
/// cap of 0 the header's own value is the limit; a hanging upstream gets DEADLINE_EXCEEDED at
/// that limit, logged 504 UT, long before the route timeout.
#[tokio::test]
async fn grpc_timeout_caps_the_route_and_goes_upstream() {
    let ok = GrpcUpstream::start(Answer::Serving).await;
    let hang = GrpcUpstream::start(Answer::Hang).await;
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let log = cfg.path().join("access.log");
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "main.yaml",
        &format!(
            r#"listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - path: {log}
        format: "%REQ(:AUTHORITY)% %RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS(SNAKE_STRING)% %DURATION%"
route_configs:
  - name: main
    virtual_hosts:
      - name: capped
        domains: [capped]
        routes:
          - match: {{ prefix: / }}
            route:
              cluster: ok
              max_stream_duration: {{ grpc_timeout_header_max: 1s, grpc_timeout_header_offset: 50ms }}
      - name: uncapped
        domains: [uncapped]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: ok, max_stream_duration: {{ grpc_timeout_header_max: 0s }} }}
      - name: hang
        domains: [hang]
        routes:
          - match: {{ prefix: / }}
            route:
              cluster: hang
              timeout: 30s
              max_stream_duration: {{ grpc_timeout_header_max: 10s, grpc_timeout_header_offset: 500ms }}
clusters:
  - {{ name: ok, endpoints: [{{ address: "{ok}" }}] }}
  - {{ name: hang, endpoints: [{{ address: "{hang}" }}] }}
"#,
            log = log.display(),
            ok = ok.addr,
            hang = hang.addr,
        ),
    );
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let ms = |v: &Option<String>| -> u64 {
        let v = v.as_deref().expect("grpc-timeout sent upstream");
        v.strip_suffix('m')
            .expect("in milliseconds")
            .parse()
            .unwrap()
    };

    // 300 ms asked, 50 ms offset: at most 250 ms left upstream (and not much less).
    let (_, body) = raw(port, "capped", &[("grpc-timeout", "300m")]).await;
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    // 10 s asked: capped at 1 s, less the offset.
    raw(port, "capped", &[("grpc-timeout", "10S")]).await;
    // No header: nothing is sent (no max_stream_duration either).
    raw(port, "capped", &[]).await;
    // Invalid: ignored, as Envoy does.
    raw(port, "capped", &[("grpc-timeout", "1.5S")]).await;
    // Cap 0: the header as it is.
    raw(port, "uncapped", &[("grpc-timeout", "20S")]).await;
    let seen = ok.timeouts.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!((150..=250).contains(&ms(&seen[0])), "{seen:?}");
    assert!((900..=950).contains(&ms(&seen[1])), "{seen:?}");
    assert_eq!(seen[2], None);
    assert_eq!(
        seen[3].as_deref(),
        Some("1.5s"),
        "an invalid value passes as it is"
    );
    assert!((19_000..=20_000).contains(&ms(&seen[4])), "{seen:?}");
    // A response that ends with trailers was read to its end: its connection is reused.
    assert_eq!(ok.conns.load(SeqCst), 1);

    // A hanging upstream: the client's 800 ms less the offset, not the route's 30 s.
    let started = Instant::now();
    let (head, _) = raw(port, "hang", &[("grpc-timeout", "800m")]).await;
    let took = started.elapsed();
    assert_eq!(head.headers["grpc-status"], "4");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A tonic deadline: the offset has the proxy answer 500 ms before the client's own timer
    // would (it reports CANCELLED), so the client sees the proxy's status.
    let mut c = client(port, "hang").await;
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_secs(1));
    assert_eq!(
        c.check(req).await.unwrap_err().code(),
        Code::DeadlineExceeded
    );
    wait_for("the timed-out call's log line", || {
        let lines = log_lines(&log);
        async move {
            lines
                .iter()
                .any(|l| l.starts_with("hang 504 UT DEADLINE_EXCEEDED "))
                .then_some(())
        }
    })
    .await;
    drop(t);
}

/// `retry_on: unavailable`: a trailers-only UNAVAILABLE from one of two endpoints is retried on
/// the other; every call succeeds; the gRPC status counter sees both statuses.
#[tokio::test]
async fn unavailable_is_retried_on_the_other_endpoint() {
    let bad = GrpcUpstream::start(Answer::Unavailable).await;
    let good = GrpcUpstream::start(Answer::Serving).await;
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let log = cfg.path().join("access.log");
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "main.yaml",
        &format!(
            r#"listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - {{ path: {log}, format: "%RESPONSE_CODE% %GRPC_STATUS% %UPSTREAM_HOST%" }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route:
              cluster: be
              retry_policy: {{ retry_on: unavailable, num_retries: 1, retry_back_off: {{ base_interval: 1ms }} }}
      - name: none
        domains: [none]
        routes: [{{ match: {{ prefix: / }}, route: {{ cluster: be }} }}]
clusters:
  - name: be
    endpoints: [{{ address: "{bad}" }}, {{ address: "{good}" }}]
"#,
            log = log.display(),
            bad = bad.addr,
            good = good.addr,
        ),
    );
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let mut c = client(port, "svc").await;
    for _ in 0..6 {
        assert_eq!(call(&mut c).await, Code::Ok);
    }
    assert!(
        bad.calls.load(SeqCst) >= 2,
        "round robin reached the bad endpoint"
    );
    assert!(t.stat("cluster.be.upstream_rq_retry").await >= 2);
    assert_eq!(t.stat("cluster.be.upstream_rq_grpc_status.0").await, 6);
    assert_eq!(
        t.stat("cluster.be.upstream_rq_grpc_status.14").await,
        bad.calls.load(SeqCst) as i64
    );
    // Without the condition the client sees UNAVAILABLE from the bad endpoint.
    let mut plain = client(port, "none").await;
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(call(&mut plain).await);
    }
    assert!(codes.contains(&Code::Unavailable), "{codes:?}");
    let line = format!("200 OK {}", good.addr);
    wait_for("the log shows the retried calls' last try", || {
        let lines = log_lines(&log);
        let line = line.clone();
        async move { (lines.iter().filter(|l| **l == line).count() >= 6).then_some(()) }
    })
    .await;
    drop(t);
}

/// `grpc_health_check`: a real tonic-health server behind the cluster; flipping it to
/// NOT_SERVING takes the endpoint out, SERVING brings it back.
#[tokio::test]
async fn grpc_health_checks_take_an_endpoint_out_and_back() {
    let (mut reporter, service) = tonic_health::server::health_reporter();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_of(l)),
    );
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "main.yaml",
        &format!(
            r#"listeners:
  - {{ name: ingress, address: 127.0.0.1:{port}, route_config: main }}
route_configs:
  - name: main
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: be }} }}] }}
clusters:
  - name: be
    endpoints: [{{ address: "{addr}" }}]
    health_checks:
      - timeout: 200ms
        interval: 200ms
        unhealthy_threshold: 1
        healthy_threshold: 1
        grpc_health_check: {{ service_name: shop.Cart, authority: cart.internal }}
"#
        ),
    );
    reporter
        .set_service_status("shop.Cart", tonic_health::ServingStatus::Serving)
        .await;
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let healthy = |want: i64| {
        let t = &t;
        async move {
            wait_for(&format!("membership_healthy {want}"), || async move {
                (t.stat("cluster.be.membership_healthy").await == want).then_some(())
            })
            .await
        }
    };
    healthy(1).await;
    reporter
        .set_service_status("shop.Cart", tonic_health::ServingStatus::NotServing)
        .await;
    healthy(0).await;
    reporter
        .set_service_status("shop.Cart", tonic_health::ServingStatus::Serving)
        .await;
    healthy(1).await;
    // An unknown service is NOT_FOUND: a failed check too.
    reporter.clear_service_status("shop.Cart").await;
    healthy(0).await;
    assert!(t.stat("cluster.be.health_check_failure").await >= 2);
    drop(t);
    server.abort();
}

/// A listener's connections as the stream tonic's server takes.
fn tokio_stream_of(l: TcpListener) -> impl futures_util::Stream<Item = std::io::Result<TcpStream>> {
    futures_util::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

/// The gRPC health check over the cluster's TLS: a tonic-health server behind TLS (a private CA,
/// certificates made here) is checked, goes out when NOT_SERVING and comes back.
#[tokio::test]
async fn grpc_health_checks_speak_the_clusters_tls() {
    // Both providers are linked into the tests; tonic's server takes the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = tern_testkit::Ca::new("gRPC CA");
    let leaf = ca.leaf("cart", &["cart.internal"]);
    let identity = tonic::transport::Identity::from_pem(&leaf.cert, &leaf.key);

    let (reporter, service) = tonic_health::server::health_reporter();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(service)
            .serve_with_incoming(tokio_stream_of(l)),
    );
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("ca.pem", &ca.pem());
    cfg.write(
        "main.yaml",
        &format!(
            r#"listeners:
  - {{ name: ingress, address: 127.0.0.1:{port}, route_config: main }}
route_configs:
  - name: main
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: be }} }}] }}
clusters:
  - name: be
    endpoints: [{{ address: "{addr}" }}]
    tls: {{ sni: cart.internal, ca: {{ file: ca.pem }} }}
    health_checks:
      - timeout: 200ms
        interval: 200ms
        unhealthy_threshold: 1
        healthy_threshold: 1
        grpc_health_check: {{}}
"#
        ),
    );
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let healthy = |want: i64| {
        let t = &t;
        async move {
            wait_for(&format!("membership_healthy {want}"), || async move {
                (t.stat("cluster.be.membership_healthy").await == want).then_some(())
            })
            .await
        }
    };
    healthy(1).await;
    assert!(t.stat("cluster.be.upstream_ssl.handshake").await >= 1);
    // The server as a whole (service "") goes NOT_SERVING, then SERVING again.
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    healthy(0).await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    healthy(1).await;
    drop(t);
    server.abort();
}
