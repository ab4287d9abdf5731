//! Span export over OTLP: one SERVER span per proxied, sampled request, batched and sent to a
//! collector (gRPC or HTTP/protobuf) by the OpenTelemetry exporter, off the request path.
//!
//! The exporter is an observer of the request record ([`crate::stream_info`]): a finished,
//! sampled request is `try_send`-ed into a bounded queue, with no lock and no waiting. Each exporter runs on its own thread with a current-thread runtime, so a slow or
//! absent collector costs the proxy's workers nothing: the queue fills, further spans are
//! dropped and counted (`tracing_spans_dropped`), and serving goes on.
//!
//! Exporters are shared by every listener with the same settings (endpoint, protocol, service
//! name) and carried across reloads: the registry holds them weakly, like access log sinks, so an
//! unchanged exporter keeps its connection and queue, and one no snapshot uses any more drains
//! its queue and stops.
//!
//! The batching follows the SDK's batch span processor and reads the same environment variables
//! (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
//! `OTEL_BSP_EXPORT_TIMEOUT`); it is our own loop rather than the SDK's processor because the SDK
//! neither counts what it drops nor exposes per-span export outcomes, and both are stats here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http::{HeaderValue, Version};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::{mpsc, oneshot};

use crate::stats::ListenerStats;
use crate::stream_info::{Observer, SpanIds, StreamInfo};
use tern_config::OtlpProtocol;

/// How long a graceful shutdown waits for queued spans to be sent.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What identifies an exporter: listeners (and reloads) with equal settings share one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    /// The URL the exporter sends to (see [`tern_config::otlp::resolve_endpoint`]).
    pub endpoint: String,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// PEM of the CA certificates an `https` collector is verified against (`tls.ca_file`, as
    /// read at load time, so a changed file makes a new exporter); `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Headers sent with every export, names lowercased (the check rules out duplicates).
    pub headers: Vec<(String, String)>,
}

// By hand so that header values (API keys) never reach a log line.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("service_name", &self.service_name)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Whether a resolved endpoint is sent to over TLS.
fn is_https(endpoint: &str) -> bool {
    endpoint.starts_with("https://")
}

/// Batching limits (the SDK's batch span processor defaults, overridable by its env vars).
#[derive(Debug, Clone, Copy)]
struct Batching {
    delay: Duration,
    queue: usize,
    batch: usize,
    timeout: Duration,
}

impl Batching {
    fn from_env() -> Batching {
        let ms = |name: &str, default: u64| {
            Duration::from_millis(
                std::env::var(name)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(default),
            )
        };
        let n = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let queue = n("OTEL_BSP_MAX_QUEUE_SIZE", 2048);
        Batching {
            delay: ms("OTEL_BSP_SCHEDULE_DELAY", 5000).max(Duration::from_millis(1)),
            queue,
            batch: n("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).min(queue),
            timeout: ms("OTEL_BSP_EXPORT_TIMEOUT", 30_000),
        }
    }
}

/// A running exporter: the sending side of its queue. Dropping the last handle lets its thread
/// send what is queued and stop.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Record>,
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

fn registry() -> &'static Mutex<HashMap<Settings, Weak<Exporter>>> {
    static R: OnceLock<Mutex<HashMap<Settings, Weak<Exporter>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Exporter {
    /// The exporter for `settings`, reusing a running one. Runs at config load only.
    pub fn get(settings: &Settings) -> Result<Arc<Exporter>, String> {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = reg.get(settings).and_then(Weak::upgrade) {
            return Ok(e);
        }
        let e = Arc::new(Exporter::spawn(settings.clone(), Batching::from_env())?);
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(settings.clone(), Arc::downgrade(&e));
        Ok(e)
    }

    fn spawn(settings: Settings, batching: Batching) -> Result<Exporter, String> {
        let (tx, rx) = mpsc::channel(batching.queue);
        let (flush, flush_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let s = settings.clone();
        std::thread::Builder::new()
            .name("tern-otlp".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    // Built on this runtime: the gRPC channel spawns its worker task here.
                    let exporter = match build(&s) {
                        Ok(x) => {
                            let _ = ready_tx.send(Ok(()));
                            x
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    run(exporter, &s, batching, rx, flush_rx).await;
                });
            })
            .map_err(|e| format!("otlp exporter: cannot start thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "otlp exporter thread died while starting".to_string())?
            .map_err(|e| format!("otlp exporter for {}: {e}", settings.endpoint))?;
        Ok(Exporter { tx, flush })
    }

    /// Queues a finished span without waiting; a full queue drops it and counts it.
    fn submit(&self, r: Record) {
        if let Err(e) = self.tx.try_send(r) {
            let r = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            r.stats.tracing_spans_dropped.inc();
        }
    }
}

/// One listener's span export: the exporter it shares with other listeners, and its own counters.
#[derive(Debug)]
pub struct SpanExport {
    exporter: Arc<Exporter>,
    stats: Arc<ListenerStats>,
}

impl SpanExport {
    /// Exports the spans of the listener with `stats` through `exporter`.
    pub fn new(exporter: Arc<Exporter>, stats: Arc<ListenerStats>) -> SpanExport {
        SpanExport { exporter, stats }
    }
}

impl Observer for SpanExport {
    /// Queues the request's span, if it was sampled for export.
    fn observe(&self, info: &Arc<StreamInfo>) {
        if info.span.is_some() && info.trace_id.is_some() {
            self.exporter.submit(Record {
                info: info.clone(),
                stats: self.stats.clone(),
            });
        }
    }
}

/// A finished, sampled request; turned into OTel span data on the exporter thread.
#[derive(Debug)]
struct Record {
    info: Arc<StreamInfo>,
    stats: Arc<ListenerStats>,
}

fn build(s: &Settings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
    let b = opentelemetry_otlp::SpanExporter::builder();
    let mut e = match s.protocol {
        OtlpProtocol::Grpc => {
            let mut b = b.with_tonic().with_endpoint(&s.endpoint);
            if is_https(&s.endpoint) {
                use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
                let tls = ClientTlsConfig::new();
                b = b.with_tls_config(match &s.ca_pem {
                    Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                    None => tls.with_native_roots(),
                });
            }
            if !s.headers.is_empty() {
                b = b.with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                        header_map(&s.headers)?,
                    ),
                );
            }
            b.build()
        }
        OtlpProtocol::Http => {
            let mut b = b
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&s.endpoint)
                .with_headers(s.headers.iter().cloned().collect());
            if is_https(&s.endpoint) {
                b = b.with_http_client(https_client(s.ca_pem.as_deref())?);
            }
            b.build()
        }
    }
    .map_err(|e| e.to_string())?;
    e.set_resource(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(s.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    Ok(e)
}

fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (n, v) in headers {
        let name = http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("bad header name `{n}`"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("bad value of header `{n}`"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The OTLP/HTTP client for an `https` collector: hyper over rustls, verifying the collector's
/// certificate against `ca_pem` or else the system's roots.
fn https_client(
    ca_pem: Option<&[u8]>,
) -> Result<
    opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    String,
> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(|e| format!("ca_file: {e}"))?)
                    .map_err(|e| format!("ca_file: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            // Same rule as the gRPC transport (tonic): no roots at all is an error, not an
            // exporter that can never connect.
            if roots.is_empty() {
                return Err(format!(
                    "no system root certificates found ({:?}); set tls.ca_file",
                    native.errors
                ));
            }
        }
    }
    // The provider named rather than the process default: whichever crate enabled another
    // rustls provider, this one is compiled in.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector,
        request_timeout(),
        None,
    ))
}

/// The per-request timeout the exporter's own HTTP client would have: a client we supply
/// must honour `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT` the same way.
fn request_timeout() -> Duration {
    [
        opentelemetry_otlp::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
        opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT,
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
    .map_or(
        opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT,
        Duration::from_millis,
    )
}

/// The exporter thread: collect spans, send a batch when it is full or the delay passed,
/// answer flush requests, and send what is left when the last handle is gone.
async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    s: &Settings,
    b: Batching,
    mut rx: mpsc::Receiver<Record>,
    mut flush_rx: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let scope = InstrumentationScope::builder("tern")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut out = Out {
        exporter,
        scope,
        timeout: b.timeout,
        failing: false,
        endpoint: s.endpoint.clone(),
    };
    let mut batch: Vec<Record> = Vec::with_capacity(b.batch);
    let mut tick = tokio::time::interval(b.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => {
                    batch.push(r);
                    if batch.len() >= b.batch {
                        out.send(&mut batch).await;
                    }
                }
                None => break,
            },
            Some(ack) = flush_rx.recv() => {
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                    if batch.len() >= b.batch {
                        out.send(&mut batch).await;
                    }
                }
                out.send(&mut batch).await;
                let _ = ack.send(());
            }
            _ = tick.tick() => out.send(&mut batch).await,
        }
    }
    out.send(&mut batch).await;
    let _ = out.exporter.shutdown();
}

struct Out {
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    timeout: Duration,
    failing: bool,
    endpoint: String,
}

impl Out {
    /// Exports `batch` (emptying it) and counts each span as exported or dropped.
    async fn send(&mut self, batch: &mut Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let data: Vec<SpanData> = batch.iter().map(|r| span_data(r, &self.scope)).collect();
        let result = match tokio::time::timeout(self.timeout, self.exporter.export(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match &result {
            Ok(()) => {
                for r in batch.iter() {
                    r.stats.tracing_spans_exported.inc();
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!(endpoint = %self.endpoint, "otlp export works again");
                }
            }
            Err(e) => {
                for r in batch.iter() {
                    r.stats.tracing_spans_dropped.inc();
                }
                // Once per outage at warn: a down collector must not flood the log.
                if self.failing {
                    tracing::debug!(endpoint = %self.endpoint, error = %e, spans = batch.len(), "otlp export failed; spans dropped");
                } else {
                    self.failing = true;
                    tracing::warn!(endpoint = %self.endpoint, error = %e, spans = batch.len(), "otlp export failed; spans dropped (counted in tracing_spans_dropped)");
                }
            }
        }
        batch.clear();
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "",
    }
}

fn hv(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// The OTel span of a record: kind SERVER, named after the route (a gRPC call after its method,
/// `package.Service/Method`, as OpenTelemetry's RPC conventions name spans), HTTP
/// semantic-convention attributes (and RPC ones for gRPC) plus Tern's own.
fn span_data(r: &Record, scope: &InstrumentationScope) -> SpanData {
    let i = &*r.info;
    let ids = i.span.unwrap_or(SpanIds {
        span_id: 0,
        parent: None,
    });
    let mut attrs = vec![
        KeyValue::new("http.request.method", i.method.as_str().to_string()),
        KeyValue::new("url.path", i.path_only().to_string()),
        KeyValue::new(
            "server.address",
            crate::headers::strip_port(&i.authority).to_string(),
        ),
        KeyValue::new("network.protocol.version", protocol_version(i.version)),
        KeyValue::new("tern.response_flags", i.flags.render()),
        // The trusted client (behind trusted proxies or a PROXY header) and the direct peer.
        KeyValue::new("client.address", i.peer.ip().to_string()),
        KeyValue::new("network.peer.address", i.direct_peer.ip().to_string()),
    ];
    if i.status != 0 {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(i.status),
        ));
    }
    let mut opt = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            attrs.push(KeyValue::new(k, v));
        }
    };
    opt("user_agent.original", i.user_agent.as_ref().map(hv));
    opt("request_id", i.request_id.as_ref().map(hv));
    opt("tern.route", i.route_name.as_deref().map(str::to_string));
    opt(
        "upstream.cluster",
        i.upstream_cluster.as_deref().map(str::to_string),
    );
    opt(
        "upstream.address",
        i.upstream_host.as_deref().map(str::to_string),
    );
    let method = i.grpc.then(|| crate::grpc::method(i.path_only())).flatten();
    if i.grpc {
        attrs.push(KeyValue::new("rpc.system", "grpc"));
        if let Some((service, m)) = method.and_then(|m| m[1..].split_once('/')) {
            attrs.push(KeyValue::new("rpc.service", service.to_string()));
            attrs.push(KeyValue::new("rpc.method", m.to_string()));
        }
        let code = i
            .grpc_status
            .or_else(|| (i.status != 0).then(|| crate::grpc::from_http(i.status)));
        if let Some(code) = code {
            attrs.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
    }
    let status = if i.status >= 500 {
        Status::error(format!("HTTP {}", i.status))
    } else {
        Status::Unset
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(i.trace_id.unwrap_or(0)),
            SpanId::from(ids.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: ids.parent.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: ids.parent.is_some(),
        span_kind: SpanKind::Server,
        name: match (method, i.route_name.as_deref()) {
            (Some(m), _) => m[1..].to_string().into(),
            (None, Some(n)) => n.to_string().into(),
            (None, None) => "ingress".into(),
        },
        start_time: i.start_time,
        end_time: i.start_time + i.duration,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// Sends every queued span of every running exporter, waiting at most `timeout` in all
/// (graceful shutdown: after the listeners drained, before the process exits).
pub async fn flush_all(timeout: Duration) {
    let live: Vec<Arc<Exporter>> = {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.values().filter_map(Weak::upgrade).collect()
    };
    if live.is_empty() {
        return;
    }
    let mut acks = Vec::new();
    for e in &live {
        let (tx, rx) = oneshot::channel();
        if e.flush.send(tx).is_ok() {
            acks.push(rx);
        }
    }
    let all = futures_util::future::join_all(acks);
    if tokio::time::timeout(timeout, all).await.is_err() {
        tracing::warn!(
            ?timeout,
            "otlp: spans not all sent before the shutdown deadline"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_debug_hides_header_values() {
        let s = Settings {
            endpoint: "https://c:4317".into(),
            protocol: OtlpProtocol::Grpc,
            service_name: "tern".into(),
            ca_pem: None,
            headers: vec![("x-api-key".into(), "s3cret".into())],
        };
        let d = format!("{s:?}");
        assert!(d.contains("x-api-key") && !d.contains("s3cret"), "{d}");
    }
}
