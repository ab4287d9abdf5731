//! The immutable runtime snapshot: everything the request path needs, built off the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::router::Router;
use crate::stats::{ListenerStats, Stats};
use crate::stream_info::Observers;
use crate::upstream::cluster::Cluster;
use crate::upstream::dns;
use tern_config::Config;

/// One loaded configuration, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the source files.
    pub version: String,
    /// When it was built.
    pub loaded_at: SystemTime,
    /// The merged configuration (for `/config_dump`).
    pub config: Config,
    /// Listeners by bound address: a renamed listener on the same address keeps its socket.
    pub listeners: HashMap<SocketAddr, Arc<ListenerRt>, foldhash::fast::RandomState>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// The key material files the configuration names (part of its version; watched).
    pub data_files: Vec<PathBuf>,
}

/// A listener's view of the snapshot.
#[derive(Debug)]
pub struct ListenerRt {
    /// HTTP or TCP.
    pub kind: ListenerKind,
    /// Its statistics.
    pub stats: Arc<ListenerStats>,
    /// Close a connection when no request has started for this long.
    pub idle_timeout: Option<Duration>,
    /// Time allowed for a request's headers (HTTP/1.1).
    pub request_headers_timeout: Option<Duration>,
    /// Time a request or response body, or an upgraded connection, may go without data.
    pub stream_idle_timeout: Option<Duration>,
    /// Time allowed to receive a whole request (headers to the last body byte).
    pub request_timeout: Option<Duration>,
    /// Protocol upgrades tunnelled unless a route says otherwise.
    pub upgrades: crate::router::UpgradeMap,
    /// Who reads request records (access logs, span export); `None`: no record is kept, which
    /// costs the request path nothing.
    pub observers: Option<Arc<Observers>>,
    /// Trace context propagation.
    pub tracing: Option<crate::trace::Policy>,
    /// Whether sampled requests are exported as spans (`tracing.otlp`).
    pub exports_spans: bool,
    /// Keep a client's `x-request-id`.
    pub preserve_request_id: bool,
    /// Trusted hops and `x-forwarded-for` appending.
    pub forwarding: crate::headers::Forwarding,
    /// PROXY protocol settings, when connections start with a PROXY header.
    pub proxy_protocol: Option<crate::proxy_protocol::Settings>,
    /// Connections open at once; more are closed at accept.
    pub max_connections: Option<u64>,
    /// Header, buffer and HTTP/2 limits of each connection.
    pub limits: ConnLimits,
    /// TLS termination (`None`: plain TCP).
    pub tls: Option<Arc<crate::tls::server::DownstreamTls>>,
    /// `x-forwarded-client-cert` handling.
    pub xfcc: crate::tls::xfcc::Xfcc,
}

/// Limits of one downstream connection, with their defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Largest request head, in bytes (`max_request_headers_kb`).
    pub max_request_headers_bytes: u32,
    /// Most request headers (`max_headers_count`).
    pub max_headers_count: u32,
    /// What a connection buffers for a slow reader (`per_connection_buffer_limit_bytes`).
    pub buffer_limit_bytes: u32,
    /// HTTP/2 `max_concurrent_streams`.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 `initial_stream_window_size`.
    pub h2_initial_stream_window_size: u32,
    /// HTTP/2 `initial_connection_window_size`.
    pub h2_initial_connection_window_size: u32,
    /// HTTP/2 `connection_keepalive` as `(interval, timeout)`.
    pub h2_keepalive: Option<(Duration, Duration)>,
}

impl ConnLimits {
    /// The limits a listener configures.
    pub fn of(l: &tern_config::Listener) -> ConnLimits {
        use tern_config::defaults as d;
        let h2 = l.http2_protocol_options.as_ref().map(|h| &h.value);
        let h2v = |f: fn(&tern_config::Http2ProtocolOptions) -> Option<u32>, default| {
            h2.and_then(f).unwrap_or(default)
        };
        ConnLimits {
            max_request_headers_bytes: l
                .max_request_headers_kb
                .as_ref()
                .map_or(d::MAX_REQUEST_HEADERS_KB, |k| k.value)
                * 1024,
            max_headers_count: l
                .max_headers_count
                .as_ref()
                .map_or(d::MAX_HEADERS_COUNT, |c| c.value),
            buffer_limit_bytes: l
                .per_connection_buffer_limit_bytes
                .as_ref()
                .map_or(d::PER_CONNECTION_BUFFER_LIMIT_BYTES, |b| b.value),
            h2_max_concurrent_streams: h2v(
                |h| h.max_concurrent_streams.as_ref().map(|v| v.value),
                d::H2_MAX_CONCURRENT_STREAMS,
            ),
            h2_initial_stream_window_size: h2v(
                |h| h.initial_stream_window_size.as_ref().map(|v| v.value),
                d::H2_INITIAL_STREAM_WINDOW_SIZE,
            ),
            h2_initial_connection_window_size: h2v(
                |h| h.initial_connection_window_size.as_ref().map(|v| v.value),
                d::H2_INITIAL_CONNECTION_WINDOW_SIZE,
            ),
            h2_keepalive: h2
                .and_then(|h| h.connection_keepalive.as_ref())
                .map(|k| (k.interval.0, k.timeout.0)),
        }
    }
}

/// `None` for zero (off), the configured value, or the default.
pub fn timeout_or(
    v: Option<&tern_config::Spanned<tern_config::Dur>>,
    default: Duration,
) -> Option<Duration> {
    match v.map(|d| d.0) {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(default),
    }
}

/// A listener's trace policy from its `tracing` settings; `None` (no spans, headers passed
/// through untouched) when the listener has no `tracing` block.
fn trace_policy(t: Option<&tern_config::Tracing>) -> Option<crate::trace::Policy> {
    use crate::trace::Formats;
    use tern_config::TraceFormat;
    let mut p = crate::trace::Policy::default();
    let t = t?;
    {
        if let Some(list) = &t.propagation {
            p.formats = Formats::NONE;
            for f in list {
                p.formats |= match f {
                    TraceFormat::W3c => Formats::W3C,
                    TraceFormat::B3 => Formats::B3,
                    TraceFormat::B3Single => Formats::B3_SINGLE,
                    TraceFormat::Xray => Formats::XRAY,
                };
            }
        }
        if let Some(s) = &t.sampling {
            p.sampling = s.value;
        }
    }
    Some(p)
}

/// The exporter a listener's spans go to: shared with every listener (and the previous
/// snapshot) of the same endpoint, protocol, service name, CA and headers.
fn otlp_exporter(
    t: Option<&tern_config::Tracing>,
) -> Result<Option<Arc<crate::otlp::Exporter>>, String> {
    let Some((t, o)) = t.and_then(|t| Some((t, &t.otlp.as_ref()?.value))) else {
        return Ok(None);
    };
    let protocol = o.protocol.unwrap_or(tern_config::OtlpProtocol::Grpc);
    let settings = crate::otlp::Settings {
        endpoint: tern_config::otlp::resolve_endpoint(&o.endpoint, protocol)?,
        protocol,
        service_name: t.service_name.as_ref().map_or_else(
            || tern_config::defaults::SERVICE_NAME.to_string(),
            |s| s.value.clone(),
        ),
        ca_pem: match o.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            Some(path) => Some(tern_config::otlp::read_ca_file(path)?),
            None => None,
        },
        headers: o
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.value.clone()))
            .collect(),
    };
    crate::otlp::Exporter::get(&settings).map(Some)
}

/// A listener's observers of request records: its access log sinks and its span export.
/// Returns them (`None` when there are none) and whether spans are exported.
fn observers(
    l: &tern_config::Listener,
    tracing: Option<&tern_config::Tracing>,
    stats: &Arc<ListenerStats>,
) -> Result<(Option<Arc<Observers>>, bool), String> {
    let mut obs = Observers::default();
    if !l.access_log.is_empty() {
        let specs: Vec<_> = l
            .access_log
            .iter()
            .map(|a| crate::access_log::SinkSpec {
                path: a.path.as_str(),
                format: a.format.as_ref().map(|f| f.as_str()),
                buffer_lines: a.buffer_lines.as_ref().map(|b| b.value as usize),
            })
            .collect();
        let log = crate::access_log::AccessLog::build(&specs, stats.clone())?;
        obs.req_headers = log.req_headers().to_vec();
        obs.resp_headers = log.resp_headers().to_vec();
        obs.list.push(Arc::new(log));
    }
    let exports_spans = match otlp_exporter(tracing)? {
        Some(e) => {
            obs.list
                .push(Arc::new(crate::otlp::SpanExport::new(e, stats.clone())));
            true
        }
        None => false,
    };
    Ok(((!obs.list.is_empty()).then(|| Arc::new(obs)), exports_spans))
}

/// What a listener does with a connection.
#[derive(Debug)]
pub enum ListenerKind {
    /// Serve HTTP/1.1 and HTTP/2 and route requests.
    Http(Arc<Router>),
    /// Forward the bytes to a cluster (chosen by SNI when it has SNI routes).
    Tcp(Arc<crate::router::sni::TcpRoutes>),
}

impl Snapshot {
    /// Builds a snapshot from a checked configuration, carrying unchanged clusters over from `prev`.
    pub fn build(
        config: Config,
        version: String,
        data_files: Vec<PathBuf>,
        prev: Option<&Snapshot>,
        stats: &Stats,
    ) -> Result<Snapshot, String> {
        let mut clusters = HashMap::with_capacity(config.clusters.len());
        // One resolver per `dns` settings, shared with the running snapshot when they are the same.
        let resolver = config
            .clusters
            .iter()
            .any(|c| c.value.discovery_type() != tern_config::DiscoveryType::Static)
            .then(|| {
                let settings = dns::Settings::from_config(config.dns.as_ref().map(|d| &d.value));
                dns::Resolver::get(&settings)
            });
        for c in &config.clusters {
            let old = prev.and_then(|p| p.clusters.get(c.value.name.as_str()));
            clusters.insert(
                c.value.name.value.clone(),
                Cluster::build(&c.value, old, stats, resolver.as_ref())?,
            );
        }
        let mut routers = HashMap::new();
        for rc in &config.route_configs {
            let mut r = Router::build(&rc.value, &clusters)
                .map_err(|e| format!("route config `{}`: {e}", rc.value.name.value))?;
            r.attach_stats(&rc.value.name, stats);
            routers.insert(rc.value.name.value.clone(), Arc::new(r));
        }
        // Looked up on every request; the keys are our own addresses, so a fast hash is safe.
        let mut listeners = HashMap::default();
        for l in &config.listeners {
            let l = &l.value;
            let kind = if let Some(rc) = &l.route_config {
                ListenerKind::Http(
                    routers
                        .get(rc.as_str())
                        .ok_or_else(|| format!("route config `{}` is not defined", rc.value))?
                        .clone(),
                )
            } else if let Some(t) = &l.tcp_proxy {
                let get = |name: &tern_config::Spanned<String>| {
                    clusters
                        .get(name.as_str())
                        .cloned()
                        .ok_or_else(|| format!("cluster `{}` is not defined", name.value))
                };
                let mut routes = Vec::new();
                for r in &t.sni_routes {
                    let c = get(&r.cluster)?;
                    routes.extend(
                        r.server_names
                            .iter()
                            .map(|n| (n.to_ascii_lowercase(), c.clone())),
                    );
                }
                ListenerKind::Tcp(Arc::new(crate::router::sni::TcpRoutes {
                    default: t.cluster.as_ref().map(get).transpose()?,
                    by_sni: routes,
                }))
            } else {
                return Err(format!("listener `{}` has nothing to do", l.name.value));
            };
            let lstats = stats.listener(&l.name);
            let tls = match &l.tls {
                Some(t) => {
                    let prev = prev
                        .and_then(|p| p.listeners.get(&*l.address))
                        .and_then(|p| p.tls.as_deref());
                    let http = l.route_config.is_some();
                    Some(Arc::new(
                        crate::tls::server::DownstreamTls::build(t, http, prev)
                            .map_err(|e| format!("listener `{}` tls: {e}", l.name.value))?,
                    ))
                }
                None => None,
            };
            let tracing = l.tracing.as_ref().map(|t| &t.value);
            let (observers, exports_spans) = observers(l, tracing, &lstats)
                .map_err(|e| format!("listener `{}`: {e}", l.name.value))?;
            listeners.insert(
                *l.address,
                Arc::new(ListenerRt {
                    kind,
                    observers,
                    tracing: trace_policy(tracing),
                    exports_spans,
                    preserve_request_id: l.preserve_external_request_id.unwrap_or(true),
                    forwarding: crate::headers::Forwarding {
                        trusted_hops: l.xff_num_trusted_hops.as_ref().map_or(0, |h| h.value),
                        skip_append: l.skip_xff_append,
                        https: tls.is_some(),
                    },
                    xfcc: crate::tls::xfcc::Xfcc::of(l),
                    tls,
                    proxy_protocol: l.proxy_protocol.then(|| crate::proxy_protocol::Settings {
                        allow_missing: l.allow_requests_without_proxy_protocol,
                        timeout: timeout_or(
                            l.listener_filters_timeout.as_ref(),
                            tern_config::defaults::LISTENER_FILTERS_TIMEOUT,
                        ),
                    }),
                    max_connections: l.max_connections.as_ref().map(|m| m.value),
                    limits: ConnLimits::of(l),
                    stats: lstats,
                    idle_timeout: timeout_or(
                        l.idle_timeout.as_ref(),
                        tern_config::defaults::IDLE_TIMEOUT,
                    ),
                    request_headers_timeout: timeout_or(
                        l.request_headers_timeout.as_ref(),
                        tern_config::defaults::REQUEST_HEADERS_TIMEOUT,
                    ),
                    stream_idle_timeout: timeout_or(
                        l.stream_idle_timeout.as_ref(),
                        tern_config::defaults::STREAM_IDLE_TIMEOUT,
                    ),
                    request_timeout: l
                        .request_timeout
                        .as_ref()
                        .map(|d| d.0)
                        .filter(|d| !d.is_zero()),
                    upgrades: crate::router::UpgradeMap::listener(l.upgrade_configs.as_deref()),
                }),
            );
        }
        Ok(Snapshot {
            version,
            loaded_at: SystemTime::now(),
            config,
            listeners,
            clusters,
            data_files,
        })
    }

    /// What serves before the first configuration is applied: nothing.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: String::new(),
            loaded_at: SystemTime::now(),
            config: Config::default(),
            listeners: HashMap::default(),
            clusters: HashMap::new(),
            data_files: Vec::new(),
        }
    }

    /// Starts the DNS discovery of its clusters and waits, up to `within`, until each of their
    /// host names was resolved once (answered or failed), so that a new DNS cluster does not
    /// serve its first requests empty (Envoy's cluster warming). Called before it serves.
    pub async fn warm(&self, within: Duration) {
        let waits = self
            .clusters
            .values()
            .filter_map(|c| Some(c.discovery.as_ref()?.warm(c, within)));
        futures_util::future::join_all(waits).await;
    }

    /// Starts the background tasks of its clusters that have none running yet (a cluster carried
    /// over unchanged keeps the ones it has). Called by the owner once this snapshot serves.
    pub fn start_background(&self) {
        for cluster in self.clusters.values() {
            crate::upstream::start_background(cluster);
        }
    }

    /// The source files of this snapshot.
    pub fn files(&self) -> &[PathBuf] {
        &self.config.files
    }
}
