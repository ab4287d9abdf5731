//! Retries, circuit breakers, faults, rate limits and load balancing against real misbehaving upstreams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tern_testkit::{
    admin_yaml, free_port, get, listener_yaml, request, wait_for, Backend, ConfigDir, Tern,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a [`Flaky`] upstream behaves for each request.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The first `n` requests get `status`, then 200.
    FailFirst(usize, u16),
    /// Close the connection without answering.
    Reset,
    /// Read the request and never answer.
    Hang,
    /// Answer 200 after this many milliseconds.
    Slow(u64),
    /// Send headers announcing 1000 bytes, send 10, close.
    CloseMidBody,
    /// Send headers announcing 1000 bytes, send 10, then stall.
    StallBody,
}

/// A raw-TCP HTTP/1.1 upstream that misbehaves on purpose. Answers carry `x-backend: NAME`
/// and a body `NAME <bytes of request body>`.
struct Flaky {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(s: &mut TcpStream) -> Option<usize> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut have = buf.len() - (i + 4);
            while have < len {
                let n = s.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                have += n;
            }
            return Some(len);
        }
    }
}

impl Flaky {
    async fn start(name: &'static str, mode: Mode) -> Flaky {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    while let Some(body_len) = read_request(&mut s).await {
                        let n = count.fetch_add(1, SeqCst);
                        let status = match mode {
                            Mode::FailFirst(k, st) if n < k => st,
                            Mode::Reset => return,
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            Mode::Slow(ms) => {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                200
                            }
                            Mode::StallBody => {
                                let _ = s
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                                    .await;
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            Mode::CloseMidBody => {
                                let _ = s
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                                    .await;
                                return;
                            }
                            _ => 200,
                        };
                        let body = format!("{name} {body_len}");
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Flaky {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }
}

/// Starts tern with one listener routing everything per `route_yaml` (the `route:` body) to
/// cluster `c` over `endpoints`, with extra cluster YAML lines.
async fn proxy(
    route: &str,
    endpoints: &[SocketAddr],
    cluster_extra: &str,
    route_extra: &str,
) -> (Tern, u16, ConfigDir) {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    cfg.write(
        "all.yaml",
        &format!(
            "{}{}route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {route}\n{route_extra}clusters:\n  - name: c\n    endpoints: [{}]\n{cluster_extra}",
            admin_yaml(admin),
            listener_yaml("ingress", port, "main"),
            eps.join(", ")
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    (tern, port, cfg)
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[tokio::test]
async fn retries_5xx_until_success_and_counts() {
    let be = Flaky::start("be", Mode::FailFirst(2, 503)).await;
    let (tern, port, _c) = proxy(
        "{ cluster: c, retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 5ms } } }",
        &[be.addr],
        "",
        "",
    )
    .await;
    let r = get(&url(port, "/x"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "be 0"));
    assert_eq!(be.requests(), 3);
    assert_eq!(tern.stat("cluster.c.upstream_rq_retry").await, 2);
    assert_eq!(tern.stat("cluster.c.upstream_rq_retry_success").await, 1);
}

#[tokio::test]
async fn retry_limit_exceeded_returns_the_upstream_answer() {
    let be = Flaky::start("be", Mode::FailFirst(usize::MAX, 502)).await;
    let (tern, port, _c) = proxy(
        "{ cluster: c, retry_policy: { retry_on: gateway-error, num_retries: 2, retry_back_off: { base_interval: 1ms } } }",
        &[be.addr],
        "",
        "",
    )
    .await;
    let r = get(&url(port, "/x"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (502, "be 0"));
    assert_eq!(be.requests(), 3);
    assert_eq!(
        tern.stat("cluster.c.upstream_rq_retry_limit_exceeded")
            .await,
        1
    );
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint() {
    let bad = Flaky::start("bad", Mode::FailFirst(usize::MAX, 503)).await;
    let good = Flaky::start("good", Mode::FailFirst(0, 200)).await;
    let (_tern, port, _c) = proxy(
        "{ cluster: c, retry_policy: { retry_on: 5xx, num_retries: 1, retry_back_off: { base_interval: 1ms } } }",
        &[bad.addr, good.addr],
        "",
        "",
    )
    .await;
    for _ in 0..20 {
        let r = get(&url(port, "/x"), &[]).await;
        assert_eq!(
            (r.status, r.headers["x-backend"].to_str().unwrap()),
            (200, "good")
        );
    }
    // With two endpoints the retry's own pick advances round robin, so every first try lands on
    // `bad` (as in Envoy); what matters is that no request was retried on `bad` itself.
    assert_eq!(bad.requests(), 20);
    assert_eq!(good.requests(), 20);
}

#[tokio::test]
async fn connect_failures_resets_and_per_try_timeouts_are_retried_elsewhere() {
    let good = Flaky::start("good", Mode::FailFirst(0, 200)).await;
    let reset = Flaky::start("reset", Mode::Reset).await;
    let hang = Flaky::start("hang", Mode::Hang).await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (tern, port, _c) = proxy(
        "{ cluster: c, timeout: 5s, retry_policy: { retry_on: \"connect-failure,reset\", num_retries: 3, per_try_timeout: 200ms, retry_back_off: { base_interval: 1ms } } }",
        &[dead, reset.addr, hang.addr, good.addr],
        "",
        "",
    )
    .await;
    for _ in 0..8 {
        let r = get(&url(port, "/x"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(tern.stat("cluster.c.upstream_cx_connect_fail").await >= 1);
    assert!(tern.stat("cluster.c.upstream_rq_reset").await >= 1);
    assert!(tern.stat("cluster.c.upstream_rq_per_try_timeout").await >= 1);
}

#[tokio::test]
async fn route_timeout_covers_all_tries() {
    let hang = Flaky::start("hang", Mode::Hang).await;
    let (tern, port, _c) = proxy(
        "{ cluster: c, timeout: 300ms, retry_policy: { retry_on: 5xx, num_retries: 10, per_try_timeout: 100ms, retry_back_off: { base_interval: 1ms } } }",
        &[hang.addr],
        "",
        "",
    )
    .await;
    let r = get(&url(port, "/x"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (504, "upstream timeout\n"));
    // 300 ms allow at most three 100 ms tries (plus back-off), never the eleven configured.
    assert!(hang.requests() <= 3, "{} tries", hang.requests());
    assert!(tern.stat("cluster.c.upstream_rq_timeout").await >= 1);
}

#[tokio::test]
async fn non_idempotent_requests_retry_only_when_opted_in_and_bodies_are_replayed() {
    let be = Flaky::start("be", Mode::FailFirst(1, 503)).await;
    let (_t, port, _c) = proxy(
        "{ cluster: c, retry_policy: { retry_on: 5xx, num_retries: 1, retry_back_off: { base_interval: 1ms } } }",
        &[be.addr],
        "",
        "",
    )
    .await;
    let r = request("POST", &url(port, "/x"), &[], "hello")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "POST is not retried by default");
    let be2 = Flaky::start("be2", Mode::FailFirst(1, 503)).await;
    let (_t2, port2, _c2) = proxy(
        "{ cluster: c, retry_policy: { retry_on: 5xx, num_retries: 1, retry_non_idempotent: true, retry_back_off: { base_interval: 1ms } } }",
        &[be2.addr],
        "",
        "",
    )
    .await;
    let r = request("POST", &url(port2, "/x"), &[], "hello")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "be2 5"),
        "the 5-byte body was sent again"
    );
}

#[tokio::test]
async fn max_retries_breaker_stops_retry_storms() {
    let be = Flaky::start("be", Mode::FailFirst(usize::MAX, 503)).await;
    let (tern, port, _c) = proxy(
        "{ cluster: c, retry_policy: { retry_on: 5xx, num_retries: 3 } }",
        &[be.addr],
        "    circuit_breakers: { max_retries: 0 }\n",
        "",
    )
    .await;
    assert_eq!(get(&url(port, "/x"), &[]).await.status, 503);
    assert_eq!(be.requests(), 1, "no retry was allowed");
    assert_eq!(tern.stat("cluster.c.upstream_rq_retry_overflow").await, 1);
}

#[tokio::test]
async fn max_requests_and_max_connections_overflow_at_once() {
    let slow = Flaky::start("slow", Mode::Slow(1500)).await;
    for (breaker, counter) in [
        ("max_requests: 1", "cluster.c.upstream_rq_pending_overflow"),
        ("max_connections: 1", "cluster.c.upstream_cx_overflow"),
    ] {
        let (tern, port, _c) = proxy(
            "{ cluster: c }",
            &[slow.addr],
            &format!("    circuit_breakers: {{ {breaker} }}\n"),
            "",
        )
        .await;
        let first = tokio::spawn(async move { get(&url(port, "/slow"), &[]).await });
        wait_for("first request in flight", || async {
            (tern.stat("cluster.c.upstream_rq_active").await == 1).then_some(())
        })
        .await;
        let r = get(&url(port, "/x"), &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "upstream overflow\n"),
            "{breaker}"
        );
        assert_eq!(r.headers["x-tern-overloaded"], "true");
        assert_eq!(tern.stat(counter).await, 1, "{breaker}");
        if breaker.starts_with("max_requests") {
            // The one allowed request is in flight: no headroom left.
            assert_eq!(
                tern.stat("cluster.c.circuit_breakers_remaining_rq").await,
                0
            );
            assert_eq!(
                tern.stat("cluster.c.circuit_breakers_remaining_cx").await,
                1023
            );
        }
        assert_eq!(first.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn fault_abort_delay_and_header_control() {
    let be = Flaky::start("be", Mode::FailFirst(0, 200)).await;
    let (tern, port, cfg) = proxy(
        "{ cluster: c, timeout: 100ms }",
        &[be.addr],
        "",
        "            fault: { abort: { http_status: 418, percentage: 100 } }\n",
    )
    .await;
    let r = get(&url(port, "/x"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (418, "fault filter abort\n"));
    assert_eq!(be.requests(), 0);
    assert_eq!(tern.stat("listener.ingress.fault_aborts_injected").await, 1);

    // A 300 ms delay before a route whose timeout is 100 ms: the delay does not count against it.
    let text = std::fs::read_to_string(cfg.path().join("all.yaml")).unwrap().replace(
        "fault: { abort: { http_status: 418, percentage: 100 } }",
        "fault: { delay: { fixed_delay: 300ms }, abort: { percentage: 100 }, header_controlled: true }",
    );
    cfg.write("all.yaml", &text);
    let r = wait_for("delay config", || async {
        let t = std::time::Instant::now();
        let r = get(&url(port, "/x"), &[]).await;
        (t.elapsed() >= Duration::from_millis(300)).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
    assert!(tern.stat("listener.ingress.fault_delays_injected").await >= 1);
    // Header-controlled abort.
    let r = get(&url(port, "/x"), &[("x-tern-fault-abort-request", "503")]).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_per_key() {
    let be = Flaky::start("be", Mode::FailFirst(0, 200)).await;
    let (tern, port, _c) = proxy(
        "{ cluster: c }",
        &[be.addr],
        "",
        "            rate_limit: { requests_per_unit: 2, unit: minute, key: { header: x-api-key } }\n",
    )
    .await;
    let a = [("x-api-key", "a")];
    assert_eq!(get(&url(port, "/x"), &a).await.status, 200);
    assert_eq!(get(&url(port, "/x"), &a).await.status, 200);
    let r = get(&url(port, "/x"), &a).await;
    assert_eq!((r.status, r.body.as_str()), (429, "rate limited\n"));
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(
        get(&url(port, "/x"), &[("x-api-key", "b")]).await.status,
        200
    );
    assert_eq!(tern.stat("listener.ingress.rate_limited").await, 1);
}

#[tokio::test]
async fn weighted_clusters_split_traffic() {
    let a = Backend::start("stable").await;
    let b = Backend::start("canary").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write(
        "all.yaml",
        &format!(
            "{}{}route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ weighted_clusters: {{ clusters: [{{ name: stable, weight: 80 }}, {{ name: canary, weight: 20 }}] }} }}\nclusters:\n  - {{ name: stable, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: canary, endpoints: [{{ address: \"{}\" }}] }}\n",
            admin_yaml(admin),
            listener_yaml("ingress", port, "main"),
            a.addr,
            b.addr
        ),
    );
    let _t = Tern::start(cfg.path(), admin, &[]).await;
    let n = 400;
    let mut canary = 0;
    for _ in 0..n {
        if get(&url(port, "/x"), &[]).await.headers["x-backend"] == "canary" {
            canary += 1;
        }
    }
    // Binomial(400, 0.2): mean 80, sd 8; ±5 sd.
    assert!((40..=120).contains(&canary), "{canary} of {n} to canary");
}

#[tokio::test]
async fn ring_hash_keeps_a_key_on_one_endpoint() {
    let bs = [
        Backend::start("h1").await,
        Backend::start("h2").await,
        Backend::start("h3").await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let (_t, port, _c) = proxy(
        "{ cluster: c, hash_policy: [{ header: { header_name: x-user } }] }",
        &addrs,
        "    lb_policy: ring_hash\n",
        "",
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let u = user.to_string();
        let first = get(&url(port, "/x"), &[("x-user", &u)]).await.headers["x-backend"].clone();
        for _ in 0..3 {
            assert_eq!(
                get(&url(port, "/x"), &[("x-user", &u)]).await.headers["x-backend"],
                first
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "30 keys spread over all three endpoints");
}

#[tokio::test]
async fn upstream_closing_mid_body_does_not_hurt_the_next_request() {
    let bad = Flaky::start("bad", Mode::CloseMidBody).await;
    let (_t, port, _c) = proxy("{ cluster: c }", &[bad.addr], "", "").await;
    let r = request("GET", &url(port, "/x"), &[], "").await;
    assert!(
        r.is_err(),
        "a truncated body is an error for the client, not a silent short read: {r:?}"
    );
    let r = request("GET", &url(port, "/x"), &[], "").await;
    assert!(r.is_err());
    assert_eq!(bad.requests(), 2, "each request got a fresh connection");
}

/// tern with one listener (extra listener fields) forwarding to `upstream`.
async fn proxy_with_listener(listener_extra: &str, upstream: SocketAddr) -> (Tern, u16, ConfigDir) {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write(
        "all.yaml",
        &format!(
            "{}listeners:\n  - name: ingress\n    address: 127.0.0.1:{port}\n    route_config: main\n{listener_extra}route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: c }}\nclusters:\n  - name: c\n    endpoints: [{{ address: \"{upstream}\" }}]\n",
            admin_yaml(admin)
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    (tern, port, cfg)
}

#[tokio::test]
async fn stream_idle_timeout_cuts_a_stalled_body() {
    let stall = Flaky::start("stall", Mode::StallBody).await;
    let (tern, port, _c) =
        proxy_with_listener("    stream_idle_timeout: 200ms\n", stall.addr).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        request("GET", &url(port, "/x"), &[], ""),
    )
    .await;
    assert!(r.expect("the body is cut, not left hanging").is_err());
    assert_eq!(
        tern.stat("listener.ingress.downstream_rq_idle_timeout")
            .await,
        1
    );
}

#[tokio::test]
async fn idle_connections_and_slow_headers_are_closed() {
    let be = Flaky::start("be", Mode::FailFirst(0, 200)).await;
    let (tern, port, _c) = proxy_with_listener(
        "    idle_timeout: 300ms\n    request_headers_timeout: 5s\n",
        be.addr,
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle after one request: the proxy closes the connection (read returns 0).
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        tern.stat("listener.ingress.downstream_cx_idle_timeout")
            .await,
        1
    );

    let (tern, port, _c) =
        proxy_with_listener("    request_headers_timeout: 200ms\n", be.addr).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout"), "{got:?}");
    assert!(got.ends_with("request headers timeout\n"), "{got:?}");
    wait_for("header timeout counted", || async {
        (tern
            .stat("listener.ingress.downstream_rq_header_timeout")
            .await
            == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn header_timeout_spares_a_slow_request_and_closes_an_idle_keep_alive_connection() {
    // The header timer runs while an HTTP/1 connection waits for a request, not while one is
    // being served: an upstream slower than the header timeout still gets its answer through.
    let slow = Flaky::start("slow", Mode::Slow(900)).await;
    let (tern, port, _c) =
        proxy_with_listener("    request_headers_timeout: 300ms\n", slow.addr).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Then idle: closed without an answer (a 408 could be taken for the next request's).
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(
        tern.stat("listener.ingress.downstream_rq_header_timeout")
            .await,
        1
    );
}

#[tokio::test]
async fn route_timeout_over_http2() {
    // HTTP/2 streams run as tasks of their own, with tokio's timers (HTTP/1 uses lazy ones).
    let hang = Flaky::start("hang", Mode::Hang).await;
    let (tern, port, _c) = proxy("{ cluster: c, timeout: 300ms }", &[hang.addr], "", "").await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::get(url(port, "/x"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answered within the route timeout")
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 504);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"upstream timeout\n");
    assert_eq!(tern.stat("cluster.c.upstream_rq_timeout").await, 1);
}
