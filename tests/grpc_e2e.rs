//! gRPC end to end over HTTP/2 upstreams: a real tonic server (a small hand-written service, no
//! code generation: unary, server, client and bidirectional streaming, with `ProstCodec`) behind
//! Tern on an `http2` (h2c) cluster and on a TLS cluster with `protocol: auto`, called by a tonic
//! client. Streams pass through without buffering, trailers arrive unchanged, UNAVAILABLE is
//! retried, `grpc-timeout` reaches the server reduced, concurrent calls share one upstream
//! connection, the gRPC status from real HTTP/2 trailers reaches the access log and the counter,
//! gRPC health checks take an endpoint out and back, and an upstream reset or closed connection
//! (an `h2` crate peer) is UNAVAILABLE to the client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::uri::PathAndQuery;
use tern_testkit::{admin_yaml, free_port, get, wait_for, ConfigDir, Tern};
use tokio::net::TcpListener;
use tonic::codegen::{BoxFuture, BoxStream, Service};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{
    ClientStreamingService, Grpc, NamedService, ServerStreamingService, StreamingService,
    UnaryService,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

/// The one message of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.to_string(),
    }
}

/// What a backend was asked and how it answers.
struct State {
    /// Prefixes its answers, so a test sees which endpoint answered.
    name: &'static str,
    /// `Unary` answers UNAVAILABLE (trailers-only, as tonic sends errors).
    unavailable: AtomicBool,
    unary_calls: AtomicUsize,
    /// The `grpc-timeout` of each unary call (`None`: not sent).
    timeouts: Mutex<Vec<Option<String>>>,
    /// `Unary("wait")` waits here until this many calls are in flight at once.
    barrier: tokio::sync::Barrier,
    /// `Watch` sends its second message only after this.
    go: tokio::sync::Notify,
    /// `Collect` got its first message.
    first: tokio::sync::Notify,
}

/// The trailer metadata `Watch` ends with, next to its status.
fn watch_trailers() -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert("x-shop", "cart-7".parse().unwrap());
    md.insert_bin("x-shop-bin", MetadataValue::from_bytes(b"\x00\xffraw"));
    md
}

struct Unary(Arc<State>);

impl UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<tonic::Response<Msg>, Status>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        let st = self.0.clone();
        Box::pin(async move {
            st.unary_calls.fetch_add(1, SeqCst);
            let timeout = req.metadata().get("grpc-timeout");
            let timeout = timeout.map(|v| v.to_str().unwrap().to_string());
            st.timeouts.lock().unwrap().push(timeout);
            if st.unavailable.load(SeqCst) {
                return Err(Status::unavailable("try later"));
            }
            let text = req.into_inner().text;
            match text.as_str() {
                "slow" => std::future::pending::<()>().await,
                "wait" => {
                    st.barrier.wait().await;
                }
                _ => {}
            }
            Ok(tonic::Response::new(msg(&format!("{}:{text}", st.name))))
        })
    }
}

/// Server streaming: "1", then (after `go`) "2", then FAILED_PRECONDITION with metadata in the
/// trailers.
struct Watch(Arc<State>);

impl ServerStreamingService<Msg> for Watch {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<tonic::Response<BoxStream<Msg>>, Status>;
    fn call(&mut self, _: tonic::Request<Msg>) -> Self::Future {
        let st = self.0.clone();
        let s = futures_util::stream::unfold(0, move |i| {
            let st = st.clone();
            async move {
                let item = match i {
                    0 => Ok(msg("1")),
                    1 => {
                        st.go.notified().await;
                        Ok(msg("2"))
                    }
                    2 => Err(Status::with_metadata(
                        Code::FailedPrecondition,
                        "cart closed: 100%",
                        watch_trailers(),
                    )),
                    _ => return None,
                };
                Some((item, i + 1))
            }
        });
        Box::pin(async move { Ok(tonic::Response::new(Box::pin(s) as BoxStream<Msg>)) })
    }
}

/// Client streaming: the texts joined by ",", after signalling the first one.
struct Collect(Arc<State>);

impl ClientStreamingService<Msg> for Collect {
    type Response = Msg;
    type Future = BoxFuture<tonic::Response<Msg>, Status>;
    fn call(&mut self, req: tonic::Request<Streaming<Msg>>) -> Self::Future {
        let st = self.0.clone();
        Box::pin(async move {
            let mut s = req.into_inner();
            let mut got = Vec::new();
            while let Some(m) = s.message().await? {
                got.push(m.text);
                if got.len() == 1 {
                    st.first.notify_one();
                }
            }
            Ok(tonic::Response::new(msg(&got.join(","))))
        })
    }
}

/// Bidirectional: each message echoed as it comes.
struct Chat;

impl StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<tonic::Response<BoxStream<Msg>>, Status>;
    fn call(&mut self, req: tonic::Request<Streaming<Msg>>) -> Self::Future {
        let s = req
            .into_inner()
            .map(|m| m.map(|m| msg(&format!("echo:{}", m.text))));
        Box::pin(async move { Ok(tonic::Response::new(Box::pin(s) as BoxStream<Msg>)) })
    }
}

/// The service `e2e.Echo`, routed by hand as tonic's generated code does.
#[derive(Clone)]
struct Echo(Arc<State>);

impl NamedService for Echo {
    const NAME: &'static str = "e2e.Echo";
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let st = self.0.clone();
        Box::pin(async move {
            let mut g = Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(match req.uri().path() {
                "/e2e.Echo/Unary" => g.unary(Unary(st), req).await,
                "/e2e.Echo/Watch" => g.server_streaming(Watch(st), req).await,
                "/e2e.Echo/Collect" => g.client_streaming(Collect(st), req).await,
                "/e2e.Echo/Chat" => g.streaming(Chat, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server with `e2e.Echo` and `grpc.health.v1` on a free port, counting the
/// connections it accepts.
struct Backend {
    addr: SocketAddr,
    st: Arc<State>,
    accepts: Arc<AtomicUsize>,
    health: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Served by tonic's own server, which also enforces each call's `grpc-timeout` (it answers
    /// CANCELLED "Timeout expired" at the deadline it reads).
    async fn start(name: &'static str, barrier: usize, tls: Option<&Pki>) -> Backend {
        Backend::serve(name, barrier, Serve::Tonic(tls)).await
    }

    /// `e2e.Echo` alone, served by hyper's bare HTTP/2 server: nothing on the backend enforces
    /// `grpc-timeout`, so a test of the proxy's deadline does not race the backend's own.
    async fn start_bare(name: &'static str) -> Backend {
        Backend::serve(name, 1, Serve::Bare).await
    }

    async fn serve(name: &'static str, barrier: usize, how: Serve<'_>) -> Backend {
        let st = Arc::new(State {
            name,
            unavailable: AtomicBool::new(false),
            unary_calls: AtomicUsize::new(0),
            timeouts: Mutex::new(Vec::new()),
            barrier: tokio::sync::Barrier::new(barrier),
            go: tokio::sync::Notify::new(),
            first: tokio::sync::Notify::new(),
        });
        let (health, health_svc) = tonic_health::server::health_reporter();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let n = accepts.clone();
        let incoming = futures_util::stream::unfold(l, move |l| {
            let n = n.clone();
            async move {
                let r = l.accept().await.map(|(s, _)| s);
                n.fetch_add(1, SeqCst);
                Some((r, l))
            }
        });
        let task = match how {
            Serve::Tonic(tls) => {
                let mut b = tonic::transport::Server::builder();
                if let Some(pki) = tls {
                    let identity = tonic::transport::Identity::from_pem(&pki.cert, &pki.key);
                    b = b
                        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                        .unwrap();
                }
                let router = b.add_service(health_svc).add_service(Echo(st.clone()));
                tokio::spawn(async move {
                    let _ = router.serve_with_incoming(incoming).await;
                })
            }
            Serve::Bare => {
                let st = st.clone();
                tokio::spawn(incoming.for_each(move |s| {
                    let st = st.clone();
                    async move {
                        let Ok(s) = s else { return };
                        let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                            Echo(st.clone()).call(req.map(tonic::body::Body::new))
                        });
                        tokio::spawn(
                            hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                        );
                    }
                }))
            }
        };
        Backend {
            addr,
            st,
            accepts,
            health,
            task,
        }
    }
}

/// How a [`Backend`] serves.
enum Serve<'a> {
    /// tonic's server, with TLS if given, and `grpc.health.v1` next to `e2e.Echo`.
    Tonic(Option<&'a Pki>),
    Bare,
}

/// A private CA and a server certificate for `grpc.internal`, made here.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    // Both providers are linked into the tests; tonic's server takes the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = tern_testkit::Ca::new("e2e CA");
    let leaf = ca.leaf("grpc", &["grpc.internal"]);
    Pki {
        ca: ca.pem(),
        cert: leaf.cert,
        key: leaf.key,
    }
}

type Client = tonic::client::Grpc<Channel>;

/// A tonic client on its own HTTP/2 connection to Tern.
async fn client(port: u16) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

fn path(method: &str) -> PathAndQuery {
    format!("/e2e.Echo/{method}").parse().unwrap()
}

async fn unary_req(c: &mut Client, req: tonic::Request<Msg>) -> Result<String, Status> {
    c.ready().await.unwrap();
    c.unary(req, path("Unary"), codec())
        .await
        .map(|r| r.into_inner().text)
}

async fn unary(c: &mut Client, text: &str) -> Result<String, Status> {
    unary_req(c, tonic::Request::new(msg(text))).await
}

/// Waits for `f` with a generous deadline: a stream that is buffered never gets there.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A client stream fed message by message from the test.
fn feed() -> (
    tokio::sync::mpsc::UnboundedSender<Msg>,
    impl futures_util::Stream<Item = Msg> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let s =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    (tx, s)
}

/// One Tern with an access log (`%REQ(:PATH)% %RESPONSE_CODE% %GRPC_STATUS% %UPSTREAM_HOST%
/// %RESPONSE_FLAGS%`),
/// every request to cluster `be` with `route` extra fields, and `cluster` as the cluster's
/// extra fields.
async fn tern(route: &str, cluster: &str, files: &[(&str, &str)]) -> (Tern, u16, ConfigDir) {
    let (port, admin) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let log = cfg.path().join("access.log");
    cfg.write("admin.yaml", &admin_yaml(admin));
    for (name, text) in files {
        cfg.write(name, text);
    }
    cfg.write(
        "main.yaml",
        &format!(
            r#"listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - {{ path: {log}, format: "%REQ(:PATH)% %RESPONSE_CODE% %GRPC_STATUS% %UPSTREAM_HOST% %RESPONSE_FLAGS%" }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: be{route} }}
clusters:
  - name: be
{cluster}"#,
            log = log.display(),
        ),
    );
    let t = Tern::start(cfg.path(), admin, &[]).await;
    (t, port, cfg)
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the access log has `n` lines equal to `want`.
async fn logged(cfg: &ConfigDir, want: &str, n: usize) {
    let log = cfg.path().join("access.log");
    wait_for(&format!("{n} × {want:?} in the access log"), || {
        let lines = log_lines(&log);
        async move { (lines.iter().filter(|l| *l == want).count() >= n).then_some(()) }
    })
    .await;
}

/// Unary and the three streaming kinds through Tern to `be`: each stream's first message
/// arrives while the other side still holds the rest (nothing is buffered), and the trailers
/// (status, message, ASCII and binary metadata) arrive unchanged.
async fn every_kind_of_call(port: u16, be: &Backend) {
    let mut c = client(port).await;
    assert_eq!(
        unary(&mut c, "hi").await.unwrap(),
        format!("{}:hi", be.st.name)
    );

    // Server streaming: "2" is only sent once the client has "1".
    c.ready().await.unwrap();
    let mut watch = c
        .server_streaming(tonic::Request::new(msg("w")), path("Watch"), codec())
        .await
        .unwrap()
        .into_inner();
    let first = within("the first streamed message", watch.message()).await;
    assert_eq!(first.unwrap().unwrap().text, "1");
    be.st.go.notify_one();
    assert_eq!(watch.message().await.unwrap().unwrap().text, "2");
    let end = watch.message().await.unwrap_err();
    assert_eq!(end.code(), Code::FailedPrecondition);
    assert_eq!(end.message(), "cart closed: 100%");
    assert_eq!(end.metadata().get("x-shop").unwrap(), "cart-7");
    assert_eq!(
        end.metadata()
            .get_bin("x-shop-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        b"\x00\xffraw"
    );

    // Client streaming: the server has "a" before the client sends "b".
    let (tx, s) = feed();
    tx.send(msg("a")).unwrap();
    let mut c2 = c.clone();
    c2.ready().await.unwrap();
    let call = tokio::spawn(async move {
        c2.client_streaming(tonic::Request::new(s), path("Collect"), codec())
            .await
            .map(|r| r.into_inner().text)
    });
    within(
        "the server's first client-streamed message",
        be.st.first.notified(),
    )
    .await;
    tx.send(msg("b")).unwrap();
    drop(tx);
    assert_eq!(call.await.unwrap().unwrap(), "a,b");

    // Bidirectional: each echo arrives before the next message is sent.
    let (tx, s) = feed();
    tx.send(msg("p")).unwrap();
    c.ready().await.unwrap();
    let mut chat = c
        .streaming(tonic::Request::new(s), path("Chat"), codec())
        .await
        .unwrap()
        .into_inner();
    let echo = within("the first echo", chat.message()).await;
    assert_eq!(echo.unwrap().unwrap().text, "echo:p");
    tx.send(msg("q")).unwrap();
    let echo = within("the second echo", chat.message()).await;
    assert_eq!(echo.unwrap().unwrap().text, "echo:q");
    drop(tx);
    assert!(chat.message().await.unwrap().is_none(), "ends with OK");
}

/// h2c (`protocol: http2`): every kind of call; the gRPC status of the streamed call comes from
/// its real HTTP/2 trailers into the access log, the counter and the Prometheus family.
#[tokio::test]
async fn every_kind_of_call_passes_through_an_h2c_cluster() {
    let be = Backend::start("a", 1, None).await;
    let cluster = format!(
        "    protocol: http2\n    endpoints: [{{ address: \"{}\" }}]\n",
        be.addr
    );
    let (t, port, cfg) = tern("", &cluster, &[]).await;
    every_kind_of_call(port, &be).await;
    let host = be.addr;
    logged(&cfg, &format!("/e2e.Echo/Unary 200 OK {host} -"), 1).await;
    logged(
        &cfg,
        &format!("/e2e.Echo/Watch 200 FailedPrecondition {host} -"),
        1,
    )
    .await;
    logged(&cfg, &format!("/e2e.Echo/Collect 200 OK {host} -"), 1).await;
    logged(&cfg, &format!("/e2e.Echo/Chat 200 OK {host} -"), 1).await;
    assert_eq!(t.stat("cluster.be.upstream_rq_grpc_status.0").await, 3);
    assert_eq!(t.stat("cluster.be.upstream_rq_grpc_status.9").await, 1);
    let prom = get(&t.admin_url("/stats/prometheus"), &[]).await.body;
    assert!(
        prom.contains("tern_upstream_rq_grpc_status_total{cluster=\"be\",code=\"9\"} 1\n"),
        "{prom}"
    );
    // Four calls from one client, one upstream connection.
    assert_eq!(be.accepts.load(SeqCst), 1);
}

/// TLS with `protocol: auto`: ALPN picks h2 (the tonic server speaks nothing else) and every
/// kind of call works as on h2c.
#[tokio::test]
async fn every_kind_of_call_passes_through_tls_with_auto() {
    let pki = pki();
    let be = Backend::start("tls", 1, Some(&pki)).await;
    let cluster = format!(
        "    protocol: auto\n    tls: {{ sni: grpc.internal, ca: {{ file: ca.pem }} }}\n    endpoints: [{{ address: \"{}\" }}]\n",
        be.addr
    );
    let (t, port, cfg) = tern("", &cluster, &[("ca.pem", &pki.ca)]).await;
    every_kind_of_call(port, &be).await;
    logged(
        &cfg,
        &format!("/e2e.Echo/Watch 200 FailedPrecondition {} -", be.addr),
        1,
    )
    .await;
    assert!(t.stat("cluster.be.upstream_ssl.handshake").await >= 1);
    assert_eq!(be.accepts.load(SeqCst), 1);
}

/// N calls at once from N client connections: the server holds each until all N are in flight,
/// and all of them came over one upstream connection.
#[tokio::test]
async fn concurrent_calls_share_one_upstream_connection() {
    const N: usize = 16;
    let be = Backend::start("a", N, None).await;
    let cluster = format!(
        "    protocol: http2\n    endpoints: [{{ address: \"{}\" }}]\n",
        be.addr
    );
    let (_t, port, _cfg) = tern("", &cluster, &[]).await;
    let mut calls = Vec::new();
    for _ in 0..N {
        let mut c = client(port).await;
        calls.push(tokio::spawn(async move { unary(&mut c, "wait").await }));
    }
    for call in calls {
        let r = within("the concurrent calls", call).await.unwrap();
        assert_eq!(r.unwrap(), "a:wait");
    }
    assert_eq!(be.accepts.load(SeqCst), 1);
}

/// `retry_on: unavailable` over h2c: one of two endpoints answers UNAVAILABLE (trailers-only,
/// as tonic answers errors); no call fails; the counter and the log see both statuses.
#[tokio::test]
async fn unavailable_from_one_endpoint_is_retried_with_no_failure() {
    let bad = Backend::start("bad", 1, None).await;
    bad.st.unavailable.store(true, SeqCst);
    let good = Backend::start("good", 1, None).await;
    let cluster = format!(
        "    protocol: http2\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n",
        bad.addr, good.addr
    );
    let route = ", retry_policy: { retry_on: unavailable, num_retries: 2, retry_back_off: { base_interval: 1ms } }";
    let (t, port, cfg) = tern(route, &cluster, &[]).await;
    let mut c = client(port).await;
    for i in 0..10 {
        assert_eq!(
            unary(&mut c, &i.to_string()).await.unwrap(),
            format!("good:{i}")
        );
    }
    let tried_bad = bad.st.unary_calls.load(SeqCst);
    assert!(tried_bad >= 1, "round robin reached the bad endpoint");
    assert_eq!(t.stat("cluster.be.upstream_rq_grpc_status.0").await, 10);
    assert_eq!(
        t.stat("cluster.be.upstream_rq_grpc_status.14").await,
        tried_bad as i64
    );
    assert_eq!(
        t.stat("cluster.be.upstream_rq_retry").await,
        tried_bad as i64
    );
    logged(&cfg, &format!("/e2e.Echo/Unary 200 OK {} -", good.addr), 10).await;
}

/// `max_stream_duration`: the client's 10 s `grpc-timeout` reaches the server capped at 3 s less
/// the 1 s offset; a call that the server never answers gets DEADLINE_EXCEEDED at the client's
/// own (shorter) deadline less the offset. Only the proxy may time that call out: tonic's client
/// enforces its own deadline (the offset keeps it 1 s behind the proxy's), and the backend is bare
/// because tonic's server would answer CANCELLED at the proxy's deadline (CI saw that win once).
#[tokio::test]
async fn grpc_timeout_reaches_the_server_reduced_and_slow_calls_exceed_it() {
    let be = Backend::start_bare("a").await;
    let cluster = format!(
        "    protocol: http2\n    endpoints: [{{ address: \"{}\" }}]\n",
        be.addr
    );
    let route = ", timeout: 30s, max_stream_duration: { grpc_timeout_header_max: 3s, grpc_timeout_header_offset: 1s }";
    let (_t, port, cfg) = tern(route, &cluster, &[]).await;
    let mut c = client(port).await;
    let mut req = tonic::Request::new(msg("hi"));
    req.set_timeout(Duration::from_secs(10));
    unary_req(&mut c, req).await.unwrap();
    let seen = be.st.timeouts.lock().unwrap()[0]
        .clone()
        .expect("grpc-timeout sent");
    let ms: u64 = seen
        .strip_suffix('m')
        .expect("in milliseconds")
        .parse()
        .unwrap();
    assert!((1_500..=2_000).contains(&ms), "{seen}");

    let started = Instant::now();
    let mut req = tonic::Request::new(msg("slow"));
    req.set_timeout(Duration::from_millis(1_500));
    let err = unary_req(&mut c, req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(350), "{took:?}");
    logged(
        &cfg,
        &format!("/e2e.Echo/Unary 504 DeadlineExceeded {} UT", be.addr),
        1,
    )
    .await;
}

/// `grpc_health_check` on an `http2` cluster of two tonic servers: NOT_SERVING takes one out
/// (every call goes to the other), SERVING brings it back.
#[tokio::test]
async fn grpc_health_checks_take_an_h2_endpoint_out_and_back() {
    let mut a = Backend::start("a", 1, None).await;
    let mut b = Backend::start("b", 1, None).await;
    for be in [&mut a, &mut b] {
        be.health
            .set_service_status("e2e.Echo", tonic_health::ServingStatus::Serving)
            .await;
    }
    let cluster = format!(
        r#"    protocol: http2
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}]
    health_checks:
      - timeout: 100ms
        interval: 100ms
        unhealthy_threshold: 1
        healthy_threshold: 1
        grpc_health_check: {{ service_name: e2e.Echo }}
"#,
        a.addr, b.addr
    );
    let (t, port, _cfg) = tern("", &cluster, &[]).await;
    let healthy = |want: i64| {
        let t = &t;
        async move {
            wait_for(&format!("membership_healthy {want}"), || async move {
                (t.stat("cluster.be.membership_healthy").await == want).then_some(())
            })
            .await
        }
    };
    healthy(2).await;
    a.health
        .set_service_status("e2e.Echo", tonic_health::ServingStatus::NotServing)
        .await;
    healthy(1).await;
    let mut c = client(port).await;
    let before = a.st.unary_calls.load(SeqCst);
    for _ in 0..6 {
        assert_eq!(unary(&mut c, "x").await.unwrap(), "b:x");
    }
    assert_eq!(a.st.unary_calls.load(SeqCst), before);
    a.health
        .set_service_status("e2e.Echo", tonic_health::ServingStatus::Serving)
        .await;
    healthy(2).await;
    wait_for("a call to reach the endpoint again", || {
        let mut c = c.clone();
        async move { (unary(&mut c, "x").await.ok()? == "a:x").then_some(()) }
    })
    .await;
    // The checks and the calls share the endpoint's HTTP/2 server; nothing failed.
    assert!(t.stat("cluster.be.health_check_failure").await >= 1);
}

/// What [`h2_peer`] does with each stream it receives.
#[derive(Clone, Copy)]
enum Peer {
    /// RST_STREAM(INTERNAL_ERROR) before any response headers.
    Reset,
    /// Closes the connection under the request.
    Close,
}

/// An HTTP/2 server (the `h2` crate) that never answers a stream: it resets it or closes the
/// connection, as `act` says.
async fn h2_peer(act: Peer) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    match act {
                        Peer::Reset => respond.send_reset(h2::Reason::INTERNAL_ERROR),
                        // Dropping the connection closes the socket, no GOAWAY sent.
                        Peer::Close => return,
                    }
                }
            });
        }
    });
    addr
}

/// Part A's new local replies reach a gRPC client as trailers-only UNAVAILABLE (Envoy's
/// `httpToGrpcStatus` of their 503), with the flag in the access log: an upstream reset (`UR`)
/// and a closed upstream connection (`UC`).
#[tokio::test]
async fn upstream_resets_and_closed_connections_are_unavailable_to_grpc_clients() {
    for (act, flag, message) in [
        (Peer::Reset, "UR", "upstream reset before response"),
        (
            Peer::Close,
            "UC",
            "upstream connection closed before response",
        ),
    ] {
        let be = h2_peer(act).await;
        let cluster = format!("    protocol: http2\n    endpoints: [{{ address: \"{be}\" }}]\n");
        let (_t, port, cfg) = tern("", &cluster, &[]).await;
        let err = unary(&mut client(port).await, "hi").await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::Unavailable, message));
        logged(
            &cfg,
            &format!("/e2e.Echo/Unary 503 Unavailable {be} {flag}"),
            1,
        )
        .await;
    }
}
