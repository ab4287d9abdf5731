//! OTLP span export against real receivers: a tonic `TraceService` (gRPC) and a hyper server
//! decoding `ExportTraceServiceRequest` at `/v1/traces` (HTTP/protobuf), a real `tern` and real
//! backends. Batches are sent every 50 ms (`OTEL_BSP_SCHEDULE_DELAY`) so no test waits 5 s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use tern_testkit::{
    admin_yaml, direct_yaml, free_port, get, tern_check_fails, wait_for, Backend, ConfigDir, Resp,
    Tern,
};

const FAST: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "50")];

/// One received span with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    span: Span,
}

impl Got {
    fn attr(&self, key: &str) -> Option<Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }
    fn s(&self, key: &str) -> Option<String> {
        match self.attr(key)? {
            Value::StringValue(s) => Some(s),
            other => panic!("{key} is not a string: {other:?}"),
        }
    }
    fn i(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            Value::IntValue(i) => Some(i),
            other => panic!("{key} is not an int: {other:?}"),
        }
    }
    fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    fn parent_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
}

/// What a receiver got: spans, HTTP request paths and content types, the headers (gRPC
/// metadata) of each export, connections accepted.
#[derive(Debug, Default)]
struct Sink {
    spans: Mutex<Vec<Got>>,
    http: Mutex<Vec<(String, String)>>,
    headers: Mutex<Vec<http::HeaderMap>>,
    conns: AtomicUsize,
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.clone()?.value? {
            Value::StringValue(s) => Some(s),
            _ => None,
        })
}

impl Sink {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut out = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn all(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for the span with this span id (hex).
    async fn span(&self, span_id: &str) -> Got {
        wait_for(&format!("span {span_id}"), || async {
            self.all().into_iter().find(|g| g.span_id() == span_id)
        })
        .await
    }
}

struct Receiver {
    addr: SocketAddr,
    sink: Arc<Sink>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Grpc(Arc<Sink>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.headers.lock().unwrap().push(headers);
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A self-signed CA and a server certificate it signed for `127.0.0.1` and `localhost`, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "tern test collector CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        Pki {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// The CA certificate written to `dir/name`, for `tls.ca_file` or `SSL_CERT_FILE`.
    fn write_ca(&self, dir: &ConfigDir, name: &str) -> String {
        dir.write(name, &self.ca).to_str().unwrap().to_string()
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap();
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

/// A gRPC OTLP receiver (tonic `TraceService`) on 127.0.0.1, counting connections.
async fn grpc_receiver() -> Receiver {
    grpc_receiver_tls(None).await
}

/// [`grpc_receiver`], serving TLS with `pki`'s server certificate when given (tonic's server TLS).
async fn grpc_receiver_tls(pki: Option<&Pki>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = Arc::new(Sink::default());
    let counted = sink.clone();
    let incoming = Box::pin(futures_util::stream::unfold(listener, move |l| {
        let sink = counted.clone();
        async move {
            let r = l.accept().await.map(|(s, _)| s);
            sink.conns.fetch_add(1, SeqCst);
            Some((r, l))
        }
    }));
    let svc = TraceServiceServer::new(Grpc(sink.clone()));
    let mut server = tonic::transport::Server::builder();
    if let Some(pki) = pki {
        // Test builds link two rustls providers (tern's ring, the test crates' aws-lc): tonic
        // needs a process default to pick one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let identity = tonic::transport::Identity::from_pem(&pki.cert, &pki.key);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
    }
    let task = tokio::spawn(async move {
        let _ = server.add_service(svc).serve_with_incoming(incoming).await;
    });
    Receiver { addr, sink, task }
}

/// An OTLP/HTTP receiver: decodes protobuf `ExportTraceServiceRequest` bodies at `/v1/traces`.
async fn http_receiver() -> Receiver {
    http_receiver_tls(None).await
}

/// [`http_receiver`] behind tokio-rustls with `pki`'s server certificate when given.
async fn http_receiver_tls(pki: Option<&Pki>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = Arc::new(Sink::default());
    let s2 = sink.clone();
    let tls = pki.map(|p| tokio_rustls::TlsAcceptor::from(p.server_config()));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            s2.conns.fetch_add(1, SeqCst);
            let sink = s2.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    // A failed handshake (an untrusting client) just ends the connection.
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve_otlp_http(stream, sink).await;
                        }
                    }
                    None => serve_otlp_http(stream, sink).await,
                }
            });
        }
    });
    Receiver { addr, sink, task }
}

async fn serve_otlp_http<S>(stream: S, sink: Arc<Sink>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            let path = req.uri().path().to_string();
            let ctype = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            sink.headers.lock().unwrap().push(req.headers().clone());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            sink.http.lock().unwrap().push((path.clone(), ctype));
            let mut resp = if path == "/v1/traces" {
                sink.add(ExportTraceServiceRequest::decode(body).unwrap());
                hyper::Response::new(Full::new(Bytes::from(
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )))
            } else {
                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                r
            };
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// Listener `ingress` with `tracing` as given (YAML flow mapping); routes `/api` (named `api`,
/// rewritten to `/v2`) and `/slow` to the backend and `/broken` to a dead endpoint.
fn config(port: u16, backend: &Backend, dead: u16, tracing: &str) -> String {
    format!(
        r#"listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    tracing: {tracing}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: api
            match: {{ prefix: /api }}
            route: {{ cluster: be, prefix_rewrite: /v2 }}
          - name: slow
            match: {{ prefix: /slow }}
            route: {{ cluster: be }}
          - name: broken
            match: {{ prefix: /broken }}
            route: {{ cluster: dead }}
clusters:
  - name: be
    endpoints: [{{ address: "{backend}" }}]
  - name: dead
    connect_timeout: 1s
    endpoints: [{{ address: "127.0.0.1:{dead}" }}]
"#,
        backend = backend.addr
    )
}

struct Setup {
    tern: Tern,
    base: String,
    backend: Backend,
    cfg: ConfigDir,
    port: u16,
    dead: u16,
}

async fn setup(tracing: &str, env: &[(&str, &str)]) -> Setup {
    let backend = Backend::start("b1").await;
    let (port, admin, dead) = (free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("main.yaml", &config(port, &backend, dead, tracing));
    let tern = Tern::start_env(cfg.path(), admin, &[], env).await;
    Setup {
        tern,
        base: format!("http://127.0.0.1:{port}"),
        backend,
        cfg,
        port,
        dead,
    }
}

/// The `traceparent` the backend received, as (trace id, span id, flags).
fn backend_traceparent(r: &Resp) -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let tp = v["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("backend saw no traceparent: {}", r.body));
    let p: Vec<&str> = tp.split('-').collect();
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Sends requests that continue a trace, start one, and fail, and checks every exported span.
async fn spans_carry_ids_names_and_attributes(s: &Setup, rx: &Receiver) {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = get(
        &format!("{}/api/items?q=1", s.base),
        &[
            ("traceparent", tp.as_str()),
            ("host", "shop.example:8443"),
            ("user-agent", "otlp-test/1.0"),
            ("x-request-id", "req-123"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, span_id, flags) = backend_traceparent(&r);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(span_id, PARENT, "the backend's parent is tern's span");

    let got = rx.sink.span(&span_id).await;
    assert_eq!(got.trace_id(), TRACE);
    assert_eq!(got.parent_id(), PARENT);
    assert_eq!(got.span.name, "api");
    assert_eq!(got.span.kind, SpanKind::Server as i32);
    assert_eq!(got.service, "edge");
    assert_eq!(got.s("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        got.s("url.path").as_deref(),
        Some("/api/items"),
        "the path the client sent, before the rewrite"
    );
    assert_eq!(got.s("server.address").as_deref(), Some("shop.example"));
    assert_eq!(got.i("http.response.status_code"), Some(200));
    assert_eq!(got.s("network.protocol.version").as_deref(), Some("1.1"));
    // No trusted hop on this listener: the client is the peer.
    assert_eq!(got.s("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.s("network.peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        got.s("user_agent.original").as_deref(),
        Some("otlp-test/1.0")
    );
    assert_eq!(got.s("upstream.cluster").as_deref(), Some("be"));
    let backend_addr = s.backend.addr.to_string();
    assert_eq!(
        got.s("upstream.address").as_deref(),
        Some(backend_addr.as_str())
    );
    assert_eq!(got.s("tern.route").as_deref(), Some("api"));
    assert_eq!(got.s("tern.response_flags").as_deref(), Some("-"));
    assert_eq!(got.s("request_id").as_deref(), Some("req-123"));
    let status = got.span.status.clone().unwrap_or_default();
    assert_eq!(status.code, StatusCode::Unset as i32);
    assert!(got.span.end_time_unix_nano >= got.span.start_time_unix_nano);
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now_ns - got.span.start_time_unix_nano < 60_000_000_000,
        "start time is wall-clock time"
    );

    // A new trace: no parent, and the backend continues it under tern's span.
    let r = get(&format!("{}/slow?ms=60", s.base), &[]).await;
    assert_eq!(r.status, 200);
    let r = get(&format!("{}/api/new", s.base), &[]).await;
    let (trace, span_id, flags) = backend_traceparent(&r);
    assert_eq!(flags, "01");
    let got = rx.sink.span(&span_id).await;
    assert_eq!(got.trace_id(), trace);
    assert!(got.span.parent_span_id.is_empty(), "root span: {got:?}");
    assert!(got.s("user_agent.original").is_none());

    // The slow one (60 ms before the backend answers) lasts at least that long: the span ends
    // with the response, not when the request is sent upstream.
    let slow = rx
        .sink
        .all()
        .into_iter()
        .find(|g| g.s("url.path").as_deref() == Some("/slow"))
        .expect("slow span exported before the later one");
    let took = slow.span.end_time_unix_nano - slow.span.start_time_unix_nano;
    assert!(took >= 60_000_000, "span lasted {took} ns");

    // A local 503 after the span started: status error, Envoy's flag.
    let tp2 = format!("00-{TRACE}-1111111111111111-01");
    let r = get(
        &format!("{}/broken", s.base),
        &[("traceparent", tp2.as_str())],
    )
    .await;
    assert_eq!(r.status, 503);
    let got = wait_for("the 503 span", || async {
        rx.sink
            .all()
            .into_iter()
            .find(|g| g.parent_id() == "1111111111111111")
    })
    .await;
    assert_eq!(got.span.name, "broken");
    assert_eq!(got.i("http.response.status_code"), Some(503));
    assert_eq!(got.s("tern.response_flags").as_deref(), Some("UF"));
    let dead_addr = format!("127.0.0.1:{}", s.dead);
    assert_eq!(
        got.s("upstream.address").as_deref(),
        Some(dead_addr.as_str())
    );
    let status = got.span.status.clone().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);

    wait_for("exported counter", || async {
        (s.tern.stat("listener.ingress.tracing_spans_exported").await == 4).then_some(())
    })
    .await;
    assert_eq!(
        s.tern.stat("listener.ingress.tracing_spans_dropped").await,
        0
    );
}

#[tokio::test]
async fn grpc_export_has_ids_names_and_attributes() {
    let rx = grpc_receiver().await;
    let tracing = format!(
        "{{ otlp: {{ endpoint: \"http://{}\" }}, service_name: edge }}",
        rx.addr
    );
    let s = setup(&tracing, FAST).await;
    spans_carry_ids_names_and_attributes(&s, &rx).await;
    let prom = get(&s.tern.admin_url("/stats/prometheus"), &[]).await.body;
    assert!(
        prom.contains("tern_tracing_spans_exported_total{listener=\"ingress\"} 4\n"),
        "{prom}"
    );
    assert!(prom.contains("tern_tracing_spans_dropped_total{listener=\"ingress\"} 0\n"));
}

#[tokio::test]
async fn http_protobuf_export_posts_to_v1_traces() {
    let rx = http_receiver().await;
    let tracing = format!(
        "{{ otlp: {{ endpoint: \"http://{}\", protocol: http }}, service_name: edge }}",
        rx.addr
    );
    let s = setup(&tracing, FAST).await;
    spans_carry_ids_names_and_attributes(&s, &rx).await;
    let posts = rx.sink.http.lock().unwrap().clone();
    assert!(!posts.is_empty());
    for (path, ctype) in posts {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ctype, "application/x-protobuf");
    }
}

#[tokio::test]
async fn sampling_zero_exports_only_traces_sampled_upstream() {
    let rx = grpc_receiver().await;
    let tracing = format!(
        "{{ sampling: 0, otlp: {{ endpoint: \"http://{}\", protocol: grpc }} }}",
        rx.addr
    );
    let s = setup(&tracing, FAST).await;
    for _ in 0..3 {
        let r = get(&format!("{}/api/new", s.base), &[]).await;
        assert_eq!(
            backend_traceparent(&r).2,
            "00",
            "new traces are not sampled"
        );
    }
    let unsampled = format!("00-{TRACE}-2222222222222222-00");
    let r = get(
        &format!("{}/api/no", s.base),
        &[("traceparent", unsampled.as_str())],
    )
    .await;
    assert_eq!(backend_traceparent(&r).2, "00");
    let mut ids = Vec::new();
    for parent in ["3333333333333333", "4444444444444444"] {
        let tp = format!("00-{TRACE}-{parent}-01");
        let r = get(
            &format!("{}/api/yes", s.base),
            &[("traceparent", tp.as_str())],
        )
        .await;
        ids.push(backend_traceparent(&r).1);
    }
    // Spans are queued and sent in order, so once the last one is in, any earlier one would be.
    let last = rx.sink.span(&ids[1]).await;
    assert_eq!(last.parent_id(), "4444444444444444");
    assert_eq!(last.service, "tern", "default service.name");
    let all = rx.sink.all();
    let got: Vec<String> = all.iter().map(Got::span_id).collect();
    assert_eq!(got, ids, "only the two sampled requests: {all:?}");
    wait_for("exported counter", || async {
        (s.tern.stat("listener.ingress.tracing_spans_exported").await == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn collector_down_requests_still_succeed_and_spans_are_counted_dropped() {
    // Nothing listens on this port; a queue of 2 also exercises the full-queue drop.
    let nobody = free_port();
    let tracing = format!("{{ otlp: {{ endpoint: \"http://127.0.0.1:{nobody}\" }} }}");
    let env = [
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
    ];
    let s = setup(&tracing, &env).await;
    for i in 0..20 {
        let r = get(&format!("{}/api/{i}", s.base), &[]).await;
        assert_eq!(r.status, 200);
    }
    wait_for("all 20 spans counted as dropped", || async {
        (s.tern.stat("listener.ingress.tracing_spans_dropped").await == 20).then_some(())
    })
    .await;
    assert_eq!(
        s.tern.stat("listener.ingress.tracing_spans_exported").await,
        0
    );
    assert!(
        s.tern.logs().contains("otlp export failed"),
        "{}",
        s.tern.logs()
    );
}

#[tokio::test]
async fn exporter_survives_unrelated_reloads_and_is_replaced_when_its_settings_change() {
    let rx = grpc_receiver().await;
    let tracing = format!("{{ otlp: {{ endpoint: \"http://{}\" }} }}", rx.addr);
    let s = setup(&tracing, FAST).await;
    let send = |path: &'static str| {
        let url = format!("{}{path}", s.base);
        async move { backend_traceparent(&get(&url, &[]).await).1 }
    };
    let id = send("/api/one").await;
    assert_eq!(rx.sink.span(&id).await.service, "tern");
    assert_eq!(rx.sink.conns.load(SeqCst), 1);

    // A reload that changes a route but not the exporter: same exporter, same connection.
    let text = config(s.port, &s.backend, s.dead, &tracing).replace("/v2", "/v3");
    s.cfg.write("main.yaml", &text);
    wait_for("reload", || async {
        let r = get(&format!("{}/api/x", s.base), &[]).await;
        r.body.contains("/v3/x").then_some(())
    })
    .await;
    let id = send("/api/two").await;
    rx.sink.span(&id).await;
    assert_eq!(rx.sink.conns.load(SeqCst), 1, "exporter kept across reload");

    // A new service name is a new exporter.
    let tracing2 = format!(
        "{{ otlp: {{ endpoint: \"http://{}\" }}, service_name: renamed }}",
        rx.addr
    );
    s.cfg
        .write("main.yaml", &config(s.port, &s.backend, s.dead, &tracing2));
    let got = wait_for("spans from the new exporter", || async {
        let id = send("/api/three").await;
        let got = rx.sink.span(&id).await;
        (got.service == "renamed").then_some(got)
    })
    .await;
    assert_eq!(got.span.name, "api");
    assert_eq!(rx.sink.conns.load(SeqCst), 2);
}

#[tokio::test]
async fn a_client_that_leaves_early_gets_a_dc_span_with_its_route() {
    use tokio::io::AsyncWriteExt;
    let rx = grpc_receiver().await;
    let tracing = format!("{{ otlp: {{ endpoint: \"http://{}\" }} }}", rx.addr);
    let s = setup(&tracing, FAST).await;
    let before = s.backend.ctl.requests();
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    c.write_all(b"GET /slow?ms=5000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Leave once the backend is working on it.
    wait_for("backend got the request", || async {
        (s.backend.ctl.requests() > before).then_some(())
    })
    .await;
    drop(c);
    let got = wait_for("the slow request's span", || async {
        rx.sink
            .all()
            .into_iter()
            .find(|g| g.s("tern.route").as_deref() == Some("slow"))
    })
    .await;
    assert_eq!(got.span.name, "slow");
    assert_eq!(got.s("tern.response_flags").as_deref(), Some("DC"));
    assert_eq!(got.s("upstream.cluster").as_deref(), Some("be"));
    assert_eq!(got.i("http.response.status_code"), None);
}

#[tokio::test]
async fn sigterm_flushes_queued_spans_before_exit() {
    let rx = grpc_receiver().await;
    let tracing = format!("{{ otlp: {{ endpoint: \"http://{}\" }} }}", rx.addr);
    // Batches every 10 minutes: only the shutdown flush can send this span.
    let mut s = setup(&tracing, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]).await;
    let r = get(&format!("{}/api/last", s.base), &[]).await;
    let id = backend_traceparent(&r).1;
    assert!(rx.sink.all().is_empty());
    s.tern.signal("TERM");
    let status = s.tern.wait_exit().await;
    assert!(status.success(), "{}", s.tern.logs());
    let got = rx.sink.span(&id).await;
    assert_eq!(got.s("url.path").as_deref(), Some("/api/last"));
}

const API_KEY: &str = "k-7f3a9c";

/// `tracing` for an `https` collector at `addr` with an API-key header and, if given,
/// `tls.ca_file`.
fn tls_tracing(protocol: &str, addr: SocketAddr, ca_file: Option<&str>) -> String {
    let tls = ca_file.map_or(String::new(), |f| format!(", tls: {{ ca_file: \"{f}\" }}"));
    format!(
        "{{ otlp: {{ endpoint: \"https://{addr}\", protocol: {protocol}{tls}, \
         headers: {{ X-Api-Key: \"{API_KEY}\" }} }}, service_name: edge }}"
    )
}

/// Every export the receiver got carried the configured header.
fn api_key_reached(rx: &Receiver) {
    let all = rx.sink.headers.lock().unwrap().clone();
    assert!(!all.is_empty(), "no export requests recorded");
    for h in all {
        assert_eq!(
            h.get("x-api-key").map(|v| v.to_str().unwrap()),
            Some(API_KEY),
            "{h:?}"
        );
    }
}

/// The header's value is not in `/config_dump`; its name is.
async fn api_key_redacted_in_config_dump(s: &Setup) {
    let dump = s.tern.config_dump().await.to_string();
    assert!(!dump.contains(API_KEY), "{dump}");
    assert!(dump.contains("\"X-Api-Key\":\"<redacted>\""), "{dump}");
}

#[tokio::test]
async fn grpc_export_over_tls_trusts_ca_file_and_sends_headers() {
    let pki = Pki::new();
    let rx = grpc_receiver_tls(Some(&pki)).await;
    let certs = ConfigDir::new();
    let ca = pki.write_ca(&certs, "ca.pem");
    let s = setup(&tls_tracing("grpc", rx.addr, Some(&ca)), FAST).await;
    spans_carry_ids_names_and_attributes(&s, &rx).await;
    api_key_reached(&rx);
    api_key_redacted_in_config_dump(&s).await;
}

#[tokio::test]
async fn http_protobuf_export_over_tls_trusts_ca_file_and_sends_headers() {
    let pki = Pki::new();
    let rx = http_receiver_tls(Some(&pki)).await;
    let certs = ConfigDir::new();
    let ca = pki.write_ca(&certs, "ca.pem");
    let s = setup(&tls_tracing("http", rx.addr, Some(&ca)), FAST).await;
    spans_carry_ids_names_and_attributes(&s, &rx).await;
    api_key_reached(&rx);
    let posts = rx.sink.http.lock().unwrap().clone();
    assert!(!posts.is_empty());
    for (path, ctype) in posts {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ctype, "application/x-protobuf");
    }
    api_key_redacted_in_config_dump(&s).await;
}

#[tokio::test]
async fn https_collector_is_verified_against_the_system_roots() {
    // SSL_CERT_FILE replaces the system's roots (rustls-native-certs): here, the test CA.
    let pki = Pki::new();
    let certs = ConfigDir::new();
    let ca = pki.write_ca(&certs, "ca.pem");
    let env = [FAST[0], ("SSL_CERT_FILE", ca.as_str())];
    for protocol in ["grpc", "http"] {
        let rx = match protocol {
            "grpc" => grpc_receiver_tls(Some(&pki)).await,
            _ => http_receiver_tls(Some(&pki)).await,
        };
        let s = setup(&tls_tracing(protocol, rx.addr, None), &env).await;
        let r = get(&format!("{}/api/roots", s.base), &[]).await;
        let id = backend_traceparent(&r).1;
        let got = rx.sink.span(&id).await;
        assert_eq!(got.span.name, "api", "{protocol}");
        assert_eq!(
            got.s("url.path").as_deref(),
            Some("/api/roots"),
            "{protocol}"
        );
        api_key_reached(&rx);
    }
}

#[tokio::test]
async fn untrusted_collector_certificate_drops_spans_and_requests_still_succeed() {
    // The system's roots are another CA's (SSL_CERT_FILE) and no ca_file is set: the
    // collector's self-signed chain is not trusted.
    let pki = Pki::new();
    let certs = ConfigDir::new();
    let other_ca = Pki::new().write_ca(&certs, "other-ca.pem");
    let env = [FAST[0], ("SSL_CERT_FILE", other_ca.as_str())];
    for protocol in ["grpc", "http"] {
        let rx = match protocol {
            "grpc" => grpc_receiver_tls(Some(&pki)).await,
            _ => http_receiver_tls(Some(&pki)).await,
        };
        let s = setup(&tls_tracing(protocol, rx.addr, None), &env).await;
        for i in 0..3 {
            let r = get(&format!("{}/api/{i}", s.base), &[]).await;
            assert_eq!(r.status, 200, "{protocol}: {}", r.body);
        }
        wait_for(
            &format!("{protocol}: 3 spans counted as dropped"),
            || async {
                (s.tern.stat("listener.ingress.tracing_spans_dropped").await == 3).then_some(())
            },
        )
        .await;
        assert_eq!(
            s.tern.stat("listener.ingress.tracing_spans_exported").await,
            0,
            "{protocol}"
        );
        // Tern reached the collector (so the drop is the certificate, not a refused connection)
        // but never got a request through.
        assert!(rx.sink.conns.load(SeqCst) >= 1, "{protocol}: no connection");
        assert!(rx.sink.all().is_empty(), "{protocol}: {:?}", rx.sink.all());
        assert!(rx.sink.headers.lock().unwrap().is_empty(), "{protocol}");
        assert!(
            s.tern.logs().contains("otlp export failed"),
            "{protocol}: {}",
            s.tern.logs()
        );
    }
}

#[test]
fn bad_otlp_settings_are_rejected_with_positions() {
    let check = |tracing: &str| {
        let cfg = ConfigDir::new();
        cfg.write(
            "l.yaml",
            &format!("listeners:\n  - name: ingress\n    address: 127.0.0.1:1\n    route_config: main\n    tracing:\n{tracing}"),
        );
        cfg.write("r.yaml", &direct_yaml("main", "x"));
        tern_check_fails(cfg.path())
    };
    let err = check("      otlp: { endpoint: \"localhost:4317\" }\n");
    assert!(
        err.contains("l.yaml:6:25") && err.contains("must be an http:// or https:// URL"),
        "{err}"
    );
    let err = check(
        "      otlp:\n        endpoint: http://c:4317\n        tls: { ca_file: /nonexistent/ca.pem }\n",
    );
    assert!(
        err.contains("l.yaml:8:14") && err.contains("tls applies to https:// endpoints only"),
        "{err}"
    );
    assert!(
        err.contains("l.yaml:8:25") && err.contains("ca_file `/nonexistent/ca.pem`: cannot read"),
        "{err}"
    );
    let err = check(
        "      otlp:\n        endpoint: https://c:4317\n        headers: { x-key: a, X-Key: b, \"a b\": c, x-ok: \"\\u00e9\" }\n",
    );
    assert!(
        err.contains("l.yaml:8:30") && err.contains("given twice"),
        "{err}"
    );
    assert!(
        err.contains("l.yaml:8:40") && err.contains("not a valid HTTP header name"),
        "{err}"
    );
    assert!(
        err.contains("l.yaml:8:56") && err.contains("printable ASCII"),
        "{err}"
    );
    let err = check("      otlp: { endpoint: \"http://c:4317\", protcol: http }\n");
    assert!(
        err.contains("l.yaml:6:") && err.contains("protcol"),
        "{err}"
    );
    let err = check("      otlp: { endpoint: \"http://c:4317\", protocol: thrift }\n");
    assert!(err.contains("l.yaml:6:") && err.contains("thrift"), "{err}");
    let err = check("      service_name: \"  \"\n");
    assert!(
        err.contains("l.yaml:6:") && err.contains("service_name must not be empty"),
        "{err}"
    );
}

/// A gRPC call's span is named after its method and carries the RPC attributes, the status
/// included (here the proxy's own UNAVAILABLE for a dead upstream, sent trailers-only).
#[tokio::test]
async fn grpc_call_spans_are_named_after_the_method() {
    let rx = grpc_receiver().await;
    let tracing = format!("{{ otlp: {{ endpoint: \"http://{}\" }} }}", rx.addr);
    let s = setup(&tracing, FAST).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://shop/broken.Cart/Add")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("traceparent", format!("00-{TRACE}-2222222222222222-01"))
        .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00")))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14");
    let got = wait_for("the gRPC span", || async {
        rx.sink
            .all()
            .into_iter()
            .find(|g| g.parent_id() == "2222222222222222")
    })
    .await;
    assert_eq!(got.span.name, "broken.Cart/Add");
    assert_eq!(got.s("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(got.s("rpc.service").as_deref(), Some("broken.Cart"));
    assert_eq!(got.s("rpc.method").as_deref(), Some("Add"));
    assert_eq!(got.i("rpc.grpc.status_code"), Some(14));
    assert_eq!(got.i("http.response.status_code"), Some(503));
    assert_eq!(got.s("tern.response_flags").as_deref(), Some("UF"));
    // A plain request's span has none of them.
    let r = get(&format!("{}/api/x", s.base), &[]).await;
    let (_, span_id, _) = backend_traceparent(&r);
    let plain = rx.sink.span(&span_id).await;
    assert_eq!(plain.span.name, "api");
    assert!(plain.s("rpc.system").is_none() && plain.i("rpc.grpc.status_code").is_none());
}
