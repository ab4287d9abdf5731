//! HTTP/2 to upstreams through a real `tern`: h2c with prior knowledge and ALPN over TLS against
//! real hyper HTTP/2 servers, streams multiplexed within the peer's limit, connections rotated by
//! `max_requests_per_connection` and closed by `idle_timeout`, GOAWAY under load, trailers both
//! ways, bidirectional streaming, and, against a hand-driven HTTP/2 peer (raw frames), refused and
//! reset streams (flags `UR` / `UC`, `refused-stream`), streams a GOAWAY refused, PING keep-alive
//! on both sides and the SETTINGS Tern sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tern_testkit::{admin_yaml, free_port, get, request, wait_for, ConfigDir, Tern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|e| match e {}).boxed()
}

/// What a test server counts.
#[derive(Default)]
struct Seen {
    /// Connections accepted.
    conns: AtomicUsize,
    /// Connections that ended.
    closed: AtomicUsize,
    /// Requests being handled now.
    inflight: AtomicUsize,
}

/// How a test server's connections are served.
#[derive(Clone, Copy, Default)]
struct ServeOpts {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    max_streams: Option<u32>,
    /// Graceful shutdown (GOAWAY) after this many requests on a connection.
    goaway_after: Option<usize>,
}

/// An HTTP/2 (h2c) server on a free port answering with `handler`.
async fn h2c_server<F, Fut>(opts: ServeOpts, handler: F) -> (SocketAddr, Arc<Seen>)
where
    F: Fn(Request<Incoming>, Arc<Seen>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            s.conns.fetch_add(1, SeqCst);
            let (s, handler) = (s.clone(), handler.clone());
            tokio::spawn(serve_h2(TokioIo::new(tcp), opts, s, handler));
        }
    });
    (addr, seen)
}

/// Serves one HTTP/2 connection; counts it closed when it ends.
async fn serve_h2<IO, F, Fut>(io: IO, opts: ServeOpts, seen: Arc<Seen>, handler: F)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, Arc<Seen>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let served = Arc::new(AtomicUsize::new(0));
    let goaway = Arc::new(tokio::sync::Notify::new());
    let (sv, g, s2) = (served.clone(), goaway.clone(), seen.clone());
    let svc = service_fn(move |req| {
        let n = sv.fetch_add(1, SeqCst) + 1;
        if opts.goaway_after == Some(n) {
            g.notify_one();
        }
        let (h, s) = (handler.clone(), s2.clone());
        async move { Ok::<_, Infallible>(h(req, s).await) }
    });
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(m) = opts.max_streams {
        b.max_concurrent_streams(m);
    }
    let conn = b.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = goaway.notified() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    seen.closed.fetch_add(1, SeqCst);
}

/// A route per `(prefix, cluster, extra route fields)`, on a listener with an access log.
fn config(
    port: u16,
    admin: u16,
    log: &Path,
    routes: &[(&str, &str, &str)],
    clusters: &str,
) -> String {
    let mut y = admin_yaml(admin);
    y.push_str(&format!(
        "listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - path: {}
        format: \"%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\"
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes:
",
        log.display()
    ));
    for (prefix, cluster, extra) in routes {
        y.push_str(&format!(
            "          - match: {{ prefix: {prefix} }}\n            route: {{ cluster: {cluster}, timeout: 20s{extra} }}\n"
        ));
    }
    y.push_str("clusters:\n");
    y.push_str(clusters);
    y
}

async fn start(routes: &[(&str, &str, &str)], clusters: &str) -> (Tern, u16, ConfigDir) {
    let port = free_port();
    let admin = free_port();
    let cfg = ConfigDir::new();
    let log = cfg.path().join("access.log");
    cfg.write("tern.yaml", &config(port, admin, &log, routes, clusters));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    (tern, port, cfg)
}

/// The access log line of `path` (the first one).
async fn log_line(cfg: &ConfigDir, path: &str) -> String {
    let log = cfg.path().join("access.log");
    wait_for(&format!("an access log line for {path}"), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(&format!("{path} ")))
            .map(str::to_string)
    })
    .await
}

/// An HTTP/2 client connection (prior knowledge) to the proxy.
async fn h2_client(port: u16) -> hyper::client::conn::http2::SendRequest<Body> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// Answers `VERSION METHOD URI` of the request, and its body's length.
async fn describe(req: Request<Incoming>, _: Arc<Seen>) -> Response<Body> {
    let head = format!("{:?} {} {}", req.version(), req.method(), req.uri());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    Response::new(full(format!("{head} {}", body.len())))
}

#[tokio::test]
async fn h2c_upstreams_serve_http1_and_http2_clients_on_one_connection() {
    let (be, seen) = h2c_server(ServeOpts::default(), describe).await;
    let clusters = format!(
        "  - name: grpc
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (tern, port, _cfg) = start(&[("/", "grpc", "")], &clusters).await;
    let url = format!("http://127.0.0.1:{port}/svc/m?q=1");
    // HTTP/1.1 in, HTTP/2 (h2c) up: the target goes up in absolute form, its authority the Host.
    let r = get(&url, &[("host", "api.internal")]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "HTTP/2.0 GET http://api.internal/svc/m?q=1 0")
    );
    let r = request("POST", &url, &[("host", "api.internal")], "hello")
        .await
        .unwrap();
    assert_eq!(r.body, "HTTP/2.0 POST http://api.internal/svc/m?q=1 5");
    // HTTP/2 in, HTTP/2 up.
    let mut c = h2_client(port).await;
    for _ in 0..3 {
        let req = Request::post(&url).body(full("abc")).unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            format!("HTTP/2.0 POST http://127.0.0.1:{port}/svc/m?q=1 3")
        );
    }
    // One upstream connection carried all of them.
    assert_eq!(seen.conns.load(SeqCst), 1);
    assert_eq!(tern.stat("cluster.grpc.upstream_cx_http2_total").await, 1);
    assert_eq!(tern.stat("cluster.grpc.upstream_cx_http1_total").await, 0);
    assert_eq!(tern.stat("cluster.grpc.upstream_cx_active").await, 1);
    let clusters = get(&tern.admin_url("/clusters?format=json"), &[]).await;
    assert!(
        clusters.body.contains("\"protocol\": \"http2\""),
        "{}",
        clusters.body
    );
    // An HTTP/1.1 upgrade cannot go over HTTP/2: refused like an upgrade the route does not take.
    let r = get(&url, &[("connection", "upgrade"), ("upgrade", "websocket")]).await;
    assert_eq!(r.status, 403, "{}", r.body);
}

#[tokio::test]
async fn streams_share_a_connection_up_to_the_peers_limit() {
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let o2 = open.clone();
    let opts = ServeOpts {
        max_streams: Some(4),
        ..Default::default()
    };
    let (be, seen) = h2c_server(opts, move |req, seen| {
        let open = o2.clone();
        async move {
            if req.uri().path() == "/hold" {
                seen.inflight.fetch_add(1, SeqCst);
                // Held until the test lets every held request go.
                open.acquire().await.unwrap().forget();
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let clusters = format!(
        "  - name: be
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (tern, port, _cfg) = start(&[("/", "be", "")], &clusters).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // The first response shows the peer's SETTINGS were applied: its limit of 4 is known.
    assert_eq!(get(&url("/warm"), &[]).await.status, 200);
    let hold = |n: usize| {
        (0..n)
            .map(|_| {
                let u = url("/hold");
                tokio::spawn(async move { get(&u, &[]).await.status })
            })
            .collect::<Vec<_>>()
    };
    let mut held = hold(4);
    wait_for("4 streams in flight", || async {
        (seen.inflight.load(SeqCst) == 4).then_some(())
    })
    .await;
    assert_eq!(
        seen.conns.load(SeqCst),
        1,
        "4 streams fit in one connection"
    );
    // Two more than the peer allows on one connection: a second connection takes them.
    held.extend(hold(2));
    wait_for("6 streams in flight", || async {
        (seen.inflight.load(SeqCst) == 6).then_some(())
    })
    .await;
    assert_eq!(seen.conns.load(SeqCst), 2);
    open.add_permits(6);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(tern.stat("cluster.be.upstream_cx_http2_total").await, 2);
}

#[tokio::test]
async fn connections_rotate_by_max_requests_and_close_when_idle() {
    let (be, seen) = h2c_server(ServeOpts::default(), describe).await;
    let (idle_be, idle_seen) = h2c_server(ServeOpts::default(), describe).await;
    let clusters = format!(
        "  - name: rotate
    protocol: http2
    max_requests_per_connection: 2
    endpoints: [{{ address: \"{be}\" }}]
  - name: idle
    protocol: http2
    idle_timeout: 200ms
    endpoints: [{{ address: \"{idle_be}\" }}]
"
    );
    let (tern, port, _cfg) = start(&[("/r", "rotate", ""), ("/i", "idle", "")], &clusters).await;
    for _ in 0..6 {
        assert_eq!(
            get(&format!("http://127.0.0.1:{port}/r"), &[]).await.status,
            200
        );
    }
    assert_eq!(seen.conns.load(SeqCst), 3);
    // A connection that reached the limit closes once its streams are done.
    wait_for("used-up connections to close", || async {
        (seen.closed.load(SeqCst) == 3).then_some(())
    })
    .await;
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/i"), &[]).await.status,
        200
    );
    wait_for("the idle connection to close", || async {
        (idle_seen.closed.load(SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/i"), &[]).await.status,
        200
    );
    assert_eq!(idle_seen.conns.load(SeqCst), 2);
    wait_for("no upstream connection open", || async {
        (tern.stat("cluster.rotate.upstream_cx_active").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn graceful_goaway_under_load_fails_no_request() {
    let opts = ServeOpts {
        goaway_after: Some(25),
        ..Default::default()
    };
    let (be, seen) = h2c_server(opts, describe).await;
    let clusters = format!(
        "  - name: be
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (tern, port, _cfg) = start(&[("/", "be", "")], &clusters).await;
    let url = format!("http://127.0.0.1:{port}/load");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut bad = Vec::new();
                for _ in 0..40 {
                    match request("GET", &url, &[], "").await {
                        Ok(r) if r.status == 200 => {}
                        other => bad.push(format!("{other:?}")),
                    }
                }
                bad
            })
        })
        .collect();
    for t in tasks {
        let bad = t.await.unwrap();
        assert!(bad.is_empty(), "{bad:?}");
    }
    // Connections went away after 25 requests (and the ones that raced the GOAWAY).
    assert!(seen.conns.load(SeqCst) >= 5, "{}", seen.conns.load(SeqCst));
    assert_eq!(tern.stat("cluster.be.upstream_rq_reset").await, 0);
    assert_eq!(tern.stat("cluster.be.upstream_rq_retry").await, 0);
}

#[tokio::test]
async fn trailers_pass_through_both_ways() {
    let (be, _) = h2c_server(ServeOpts::default(), |req, _| async move {
        let mut body = req.into_body();
        let mut data = Vec::new();
        let mut got = String::from("-");
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            if let Some(d) = f.data_ref() {
                data.extend_from_slice(d);
            } else if let Some(t) = f.trailers_ref() {
                got = t["x-req-trailer"].to_str().unwrap().to_string();
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-echo", HeaderValue::from_str(&got).unwrap());
        let frames = vec![
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(data))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        r
    })
    .await;
    let clusters = format!(
        "  - name: be
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (_tern, port, _cfg) = start(&[("/", "be", "")], &clusters).await;
    let mut c = h2_client(port).await;
    let mut t = HeaderMap::new();
    t.insert("x-req-trailer", HeaderValue::from_static("from-client"));
    let frames = vec![
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
            b"payload",
        ))),
        Ok(Frame::trailers(t)),
    ];
    let req = Request::post(format!("http://127.0.0.1:{port}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(collected.to_bytes(), "payload");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo"], "from-client");
}

#[tokio::test]
async fn bidirectional_streams_flow_without_buffering() {
    // Echoes each chunk of the request body as it arrives, before the request ends.
    let (be, _) = h2c_server(ServeOpts::default(), |req, _| async move {
        Response::new(req.into_body().map_err(Into::into).boxed())
    })
    .await;
    let clusters = format!(
        "  - name: be
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (_tern, port, _cfg) = start(&[("/", "be", "")], &clusters).await;
    let mut c = h2_client(port).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(1);
    let body = StreamBody::new(tokio_stream(rx)).boxed();
    let req = Request::post(format!("http://127.0.0.1:{port}/chat"))
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
        .await
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    // Each answer comes back while the request is still open.
    assert_eq!(next_data(&mut body).await, "one");
    tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .await
        .unwrap();
    assert_eq!(next_data(&mut body).await, "two");
    tx.send(Ok(Frame::data(Bytes::from_static(b"three"))))
        .await
        .unwrap();
    assert_eq!(next_data(&mut body).await, "three");
    drop(tx);
    // The response ends with the request (an empty DATA frame may carry its end).
    let rest = tokio::time::timeout(tern_testkit::wait::DEADLINE, body.collect())
        .await
        .expect("the response ends")
        .unwrap();
    assert!(rest.to_bytes().is_empty());
}

/// The next non-empty data frame of `body`, as text.
async fn next_data(body: &mut Incoming) -> String {
    loop {
        let f = tokio::time::timeout(tern_testkit::wait::DEADLINE, body.frame())
            .await
            .expect("a response frame")
            .expect("not the end")
            .unwrap();
        if let Some(d) = f.data_ref().filter(|d| !d.is_empty()) {
            return String::from_utf8_lossy(d).into_owned();
        }
    }
}

/// A stream of a channel's items.
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------------------------------------
// TLS: ALPN
// ---------------------------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server for `127.0.0.1` offering `alpn`; serves HTTP/2 or HTTP/1.1 as negotiated.
/// Records, per connection, the ALPN list the client offered and the HTTP version served.
async fn tls_server(alpn: &[&str]) -> (SocketAddr, String, Arc<Mutex<Vec<String>>>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let config = Arc::new(config);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (config, log) = (config.clone(), log2.clone());
            tokio::spawn(async move {
                let acceptor = rustls::server::Acceptor::default();
                let Ok(start) = tokio_rustls::LazyConfigAcceptor::new(acceptor, tcp).await else {
                    return;
                };
                let offered: Vec<String> = start
                    .client_hello()
                    .alpn()
                    .map(|i| i.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    .unwrap_or_default();
                let Ok(tls) = start.into_stream(config).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                log.lock().unwrap().push(format!(
                    "{} {}",
                    offered.join(","),
                    if h2 { "h2" } else { "http/1.1" }
                ));
                let io = TokioIo::new(tls);
                if h2 {
                    serve_h2(
                        io,
                        ServeOpts::default(),
                        Arc::new(Seen::default()),
                        describe,
                    )
                    .await;
                } else {
                    let svc = service_fn(|req| async move {
                        Ok::<_, Infallible>(describe(req, Arc::new(Seen::default())).await)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (addr, ca.pem(), log)
}

#[tokio::test]
async fn auto_negotiates_h2_over_tls_and_falls_back_to_http1() {
    let (both, ca_both, log_both) = tls_server(&["h2", "http/1.1"]).await;
    let (h1, ca_h1, log_h1) = tls_server(&["http/1.1"]).await;
    let port = free_port();
    let admin = free_port();
    let cfg = ConfigDir::new();
    cfg.write("both.pem", &ca_both);
    cfg.write("h1.pem", &ca_h1);
    let clusters = format!(
        "  - name: auto2
    protocol: auto
    tls: {{ ca: {{ file: both.pem }} }}
    endpoints: [{{ address: \"{both}\" }}]
  - name: auto1
    protocol: auto
    tls: {{ ca: {{ file: h1.pem }} }}
    endpoints: [{{ address: \"{h1}\" }}]
  - name: h2only
    protocol: http2
    tls: {{ ca: {{ file: both.pem }} }}
    endpoints: [{{ address: \"{both}\" }}]
"
    );
    let routes = [
        ("/a2", "auto2", ""),
        ("/a1", "auto1", ""),
        ("/h2", "h2only", ""),
    ];
    let log = cfg.path().join("access.log");
    cfg.write("tern.yaml", &config(port, admin, &log, &routes, &clusters));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for _ in 0..3 {
        let r = get(&url("/a2"), &[]).await;
        assert_eq!(
            r.body,
            format!("HTTP/2.0 GET https://127.0.0.1:{port}/a2 0")
        );
        let r = get(&url("/a1"), &[]).await;
        assert_eq!(r.body, "HTTP/1.1 GET /a1 0");
    }
    let r = get(&url("/h2"), &[]).await;
    assert!(r.body.starts_with("HTTP/2.0 GET https://"), "{}", r.body);
    // auto offers h2 and http/1.1 and keeps the one HTTP/2 connection; http2 offers h2 alone.
    assert_eq!(
        *log_both.lock().unwrap(),
        vec!["h2,http/1.1 h2".to_string(), "h2 h2".to_string()]
    );
    let h1_conns = log_h1.lock().unwrap().clone();
    assert!(
        !h1_conns.is_empty() && h1_conns.iter().all(|c| c == "h2,http/1.1 http/1.1"),
        "{h1_conns:?}"
    );
    assert_eq!(tern.stat("cluster.auto2.upstream_cx_http2_total").await, 1);
    assert_eq!(tern.stat("cluster.auto2.upstream_cx_http1_total").await, 0);
    assert_eq!(tern.stat("cluster.auto1.upstream_cx_http2_total").await, 0);
    assert!(tern.stat("cluster.auto1.upstream_cx_http1_total").await >= 1);
}

// ---------------------------------------------------------------------------------------------
// A hand-driven HTTP/2 peer
// ---------------------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 1;

/// One HTTP/2 frame: type, flags, stream, payload.
type RawFrame = (u8, u8, u32, Vec<u8>);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A response head `:status: 200` (HPACK static index 8), ending the stream.
fn ok(stream: u32) -> Vec<u8> {
    frame(HEADERS, 4 | END_STREAM, stream, &[0x88])
}

/// An HTTP/2 connection driven frame by frame.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// The next frame; `None` when the peer closed.
    async fn next(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 9 {
                let b = &self.buf;
                let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
                if b.len() >= 9 + len {
                    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
                    let f = (b[3], b[4], stream, b[9..9 + len].to_vec());
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, f: &[u8]) {
        let _ = self.s.write_all(f).await;
    }

    /// Server side: reads the client preface and sends empty SETTINGS.
    async fn accept(s: TcpStream) -> Raw {
        let mut raw = Raw { s, buf: Vec::new() };
        let mut preface = [0u8; 24];
        raw.s.read_exact(&mut preface).await.unwrap();
        assert_eq!(preface, PREFACE);
        raw.send(&frame(SETTINGS, 0, 0, &[])).await;
        raw
    }

    /// The next frame that opens or ends a stream or matters to the test (SETTINGS acked on
    /// the way, WINDOW_UPDATE and DATA skipped).
    async fn next_event(&mut self) -> Option<RawFrame> {
        loop {
            let f = self.next().await?;
            match f.0 {
                SETTINGS if f.1 & 1 == 0 => self.send(&frame(SETTINGS, 1, 0, &[])).await,
                SETTINGS | WINDOW_UPDATE | DATA => {}
                _ => return Some(f),
            }
        }
    }
}

/// What the hand-driven server does with the Nth stream it receives (over all connections).
#[derive(Debug, Clone, Copy)]
enum Act {
    Ok,
    Reset(u32),
    Close,
}

/// A server that treats the streams it receives by `script`, in order (`Ok` past its end).
async fn scripted_server(script: Vec<Act>) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let (s, script) = (seen.clone(), Arc::new(Mutex::new(script.into_iter())));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            s.conns.fetch_add(1, SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut raw = Raw::accept(tcp).await;
                while let Some(f) = raw.next_event().await {
                    if f.0 != HEADERS {
                        continue;
                    }
                    let act = script.lock().unwrap().next().unwrap_or(Act::Ok);
                    match act {
                        Act::Ok => raw.send(&ok(f.2)).await,
                        Act::Reset(code) => {
                            raw.send(&frame(RST_STREAM, 0, f.2, &code.to_be_bytes()))
                                .await
                        }
                        Act::Close => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn resets_refusals_and_closed_connections_have_envoys_flags() {
    const REFUSED_STREAM: u32 = 7;
    const INTERNAL_ERROR: u32 = 2;
    let (be, _) = scripted_server(vec![
        Act::Reset(REFUSED_STREAM),
        Act::Reset(REFUSED_STREAM),
        Act::Ok,
        Act::Reset(INTERNAL_ERROR),
        Act::Close,
    ])
    .await;
    let clusters = format!(
        "  - name: be
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let retry = ", retry_policy: { retry_on: refused-stream, num_retries: 1 }";
    let (tern, port, cfg) =
        start(&[("/plain", "be", ""), ("/retry", "be", retry)], &clusters).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // Refused, no retry policy: 503 with UR.
    let r = get(&url("/plain/refused"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "upstream reset before response\n")
    );
    // Refused, `refused-stream`: the second try is answered.
    assert_eq!(get(&url("/retry/refused"), &[]).await.status, 200);
    // Reset with another reason: `refused-stream` does not retry it.
    assert_eq!(get(&url("/retry/reset"), &[]).await.status, 503);
    // The connection closed under the request: UC.
    let r = get(&url("/plain/closed"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "upstream connection closed before response\n")
    );
    assert_eq!(
        log_line(&cfg, "/plain/refused").await,
        "/plain/refused 503 UR"
    );
    assert_eq!(
        log_line(&cfg, "/retry/refused").await,
        "/retry/refused 200 -"
    );
    assert_eq!(log_line(&cfg, "/retry/reset").await, "/retry/reset 503 UR");
    assert_eq!(
        log_line(&cfg, "/plain/closed").await,
        "/plain/closed 503 UC"
    );
    assert_eq!(tern.stat("cluster.be.upstream_rq_retry").await, 1);
    assert_eq!(tern.stat("cluster.be.upstream_rq_reset").await, 4);
}

/// A server whose first connection, once it has two streams, sends GOAWAY with the first as
/// the last one it processes, answers it and closes; later connections answer every stream.
async fn goaway_server() -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let first = s.conns.fetch_add(1, SeqCst) == 0;
            let s = s.clone();
            tokio::spawn(async move {
                let mut raw = Raw::accept(tcp).await;
                let mut streams = Vec::new();
                while let Some(f) = raw.next_event().await {
                    if f.0 != HEADERS {
                        continue;
                    }
                    if !first {
                        raw.send(&ok(f.2)).await;
                        continue;
                    }
                    streams.push(f.2);
                    s.inflight.fetch_add(1, SeqCst);
                    if streams.len() == 2 {
                        let mut goaway = streams[0].to_be_bytes().to_vec();
                        goaway.extend_from_slice(&0u32.to_be_bytes());
                        raw.send(&frame(GOAWAY, 0, 0, &goaway)).await;
                        raw.send(&ok(streams[0])).await;
                        let _ = raw.s.shutdown().await;
                        // Reads on until the client closes: the response must get there.
                        while raw.next().await.is_some() {}
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn streams_a_goaway_refused_go_to_another_connection_unless_their_body_is_gone() {
    let (be, seen) = goaway_server().await;
    let (be2, seen2) = goaway_server().await;
    let clusters = format!(
        "  - name: be
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
  - name: be2
    protocol: http2
    endpoints: [{{ address: \"{be2}\" }}]
"
    );
    let (tern, port, cfg) = start(&[("/a", "be", ""), ("/b", "be2", "")], &clusters).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // Two GETs on one connection; the second is above the GOAWAY's last stream: never
    // processed, so it goes to a new connection without any retry policy.
    let first = tokio::spawn(get_status(url("/a/1")));
    wait_for("the first stream to arrive", || async {
        (seen.inflight.load(SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(get_status(url("/a/2")).await, 200);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(seen.conns.load(SeqCst), 2);
    assert_eq!(tern.stat("cluster.be.upstream_rq_retry").await, 0);
    // A streamed body went up with the refused stream: it cannot be sent again.
    let first = tokio::spawn(get_status(url("/b/1")));
    wait_for("the first stream to arrive", || async {
        (seen2.inflight.load(SeqCst) == 1).then_some(())
    })
    .await;
    let r = request("POST", &url("/b/2"), &[], "a body").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(log_line(&cfg, "/b/2").await, "/b/2 503 UC");
}

async fn get_status(url: String) -> u16 {
    get(&url, &[]).await.status
}

#[tokio::test]
async fn an_unanswered_ping_closes_the_upstream_connection() {
    // Completes the setup, then reads on but never answers: not a stream, not a PING.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let be = l.local_addr().unwrap();
    let pinged = Arc::new(AtomicUsize::new(0));
    let p = pinged.clone();
    let ended = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut raw = Raw::accept(tcp).await;
        while let Some(f) = raw.next_event().await {
            if f.0 == PING {
                p.fetch_add(1, SeqCst);
            }
        }
    });
    let clusters = format!(
        "  - name: be
    protocol: http2
    http2_protocol_options:
      connection_keepalive: {{ interval: 200ms, timeout: 300ms }}
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (_tern, port, cfg) = start(&[("/", "be", "")], &clusters).await;
    // The route timeout is 20s: the dead connection is found by the PING long before.
    let r = get(&format!("http://127.0.0.1:{port}/dead"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(log_line(&cfg, "/dead").await, "/dead 503 UC");
    tokio::time::timeout(tern_testkit::wait::DEADLINE, ended)
        .await
        .expect("the connection is closed")
        .unwrap();
    assert!(pinged.load(SeqCst) >= 1);
}

#[tokio::test]
async fn an_unanswered_ping_closes_a_client_connection() {
    let port = free_port();
    let admin = free_port();
    let cfg = ConfigDir::new();
    let mut y = admin_yaml(admin);
    y.push_str(&format!(
        "listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    request_headers_timeout: 0s
    http2_protocol_options:
      connection_keepalive: {{ interval: 200ms, timeout: 300ms }}
route_configs:
  - name: main
    virtual_hosts: [{{ name: all, domains: [\"*\"], routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 200 }} }}] }}]
"
    ));
    cfg.write("tern.yaml", &y);
    let _tern = Tern::start(cfg.path(), admin, &[]).await;
    let mut raw = Raw {
        s: TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        buf: Vec::new(),
    };
    raw.send(PREFACE).await;
    raw.send(&frame(SETTINGS, 0, 0, &[])).await;
    let mut pings = 0;
    let read = async {
        while let Some(f) = raw.next().await {
            pings += usize::from(f.0 == PING && f.1 & 1 == 0);
        }
    };
    tokio::time::timeout(tern_testkit::wait::DEADLINE, read)
        .await
        .expect("the connection is closed");
    assert!(pings >= 1);
}

#[tokio::test]
async fn the_clusters_http2_settings_reach_the_endpoint() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let be = l.local_addr().unwrap();
    let got = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut raw = Raw::accept(tcp).await;
        let (mut settings, mut conn_window) = (None, None);
        while settings.is_none() || conn_window.is_none() {
            let f = raw.next().await.expect("frames");
            match f {
                (SETTINGS, 0, 0, p) => settings = Some(p),
                (WINDOW_UPDATE, _, 0, p) => {
                    conn_window = Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) + 65_535)
                }
                _ => {}
            }
        }
        let settings = settings.unwrap();
        let values: Vec<(u16, u32)> = settings
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        (values, conn_window.unwrap())
    });
    let clusters = format!(
        "  - name: be
    protocol: http2
    http2_protocol_options:
      initial_stream_window_size: 1048576
      initial_connection_window_size: 4194304
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (_tern, port, _cfg) = start(&[("/", "be", "")], &clusters).await;
    let url = format!("http://127.0.0.1:{port}/x");
    let client = tokio::spawn(async move { request("GET", &url, &[], "").await });
    let (values, conn_window) = tokio::time::timeout(tern_testkit::wait::DEADLINE, got)
        .await
        .expect("SETTINGS")
        .unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE (4), and the connection window raised by WINDOW_UPDATE.
    assert!(values.contains(&(4, 1_048_576)), "{values:?}");
    // No server push (SETTINGS_ENABLE_PUSH 0).
    assert!(values.contains(&(2, 0)), "{values:?}");
    assert_eq!(conn_window, 4_194_304);
    let _ = client.await;
}

#[tokio::test]
async fn an_upstream_that_breaks_http2_fails_its_request_not_the_proxy() {
    // An HTTP/1.1 server behind an http2 cluster answers the preface with a 400 and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h1 = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    // A peer that answers a request with DATA on stream 0 (a connection error), or with a
    // response head on a stream the client never opened.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((tcp, _)) = l.accept().await {
            n += 1;
            let unopened = n.is_multiple_of(2);
            tokio::spawn(async move {
                let mut raw = Raw::accept(tcp).await;
                while let Some(f) = raw.next_event().await {
                    if f.0 == HEADERS {
                        let wrong = match unopened {
                            false => frame(DATA, 0, 0, b"x"),
                            true => ok(f.2 + 100),
                        };
                        raw.send(&wrong).await;
                    }
                }
            });
        }
    });
    let clusters = format!(
        "  - name: h1
    protocol: http2
    endpoints: [{{ address: \"{h1}\" }}]
  - name: bad
    protocol: http2
    max_requests_per_connection: 1
    endpoints: [{{ address: \"{bad}\" }}]
"
    );
    let (be, _) = h2c_server(ServeOpts::default(), describe).await;
    let clusters = format!(
        "{clusters}  - name: good
    protocol: http2
    endpoints: [{{ address: \"{be}\" }}]
"
    );
    let (tern, port, cfg) = start(
        &[
            ("/h1", "h1", ""),
            ("/bad", "bad", ""),
            ("/good", "good", ""),
        ],
        &clusters,
    )
    .await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    assert_eq!(get(&url("/h1"), &[]).await.status, 503);
    assert_eq!(log_line(&cfg, "/h1").await, "/h1 503 UC");
    for p in ["/bad/0", "/bad/1"] {
        assert_eq!(get(&url(p), &[]).await.status, 503, "{p}");
    }
    assert_eq!(get(&url("/good"), &[]).await.status, 200);
    wait_for("the broken connections to close", || async {
        let open = tern.stat("cluster.h1.upstream_cx_active").await
            + tern.stat("cluster.bad.upstream_cx_active").await;
        (open == 0).then_some(())
    })
    .await;
}
