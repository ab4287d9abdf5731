//! The configuration as written in YAML: one `Fragment` per file.
//!
//! Field names follow Envoy's where the concept is the same. Every struct denies unknown fields,
//! so a typo is an error at its own line rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::value::{Dur, Pattern, Spanned};

/// One YAML file. Any file may hold any of these keys; lists are merged by `name` across files.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    /// The admin endpoint (at most one file may set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Spanned<Admin>>,
    /// Process-wide overload protection (at most one file may set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload: Option<Spanned<Overload>>,
    /// Listeners (sockets the proxy accepts on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Spanned<Listener>>,
    /// Named route tables, referenced by HTTP listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_configs: Vec<Spanned<RouteConfig>>,
    /// Upstream clusters, referenced by routes and TCP listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Spanned<Cluster>>,
    /// The DNS resolver of `strict_dns` and `logical_dns` clusters (at most one file may set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Spanned<Dns>>,
}

/// The DNS resolver that `strict_dns` and `logical_dns` clusters resolve their host names with.
/// Unset fields come from the system configuration (`/etc/resolv.conf`; on ECS and Fargate it
/// points at the VPC resolver).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers as `ip` or `ip:port` (port 53 when absent), asked over UDP (TCP for long
    /// answers); replaces the `nameserver` lines of resolv.conf (its `search` domains are not used then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<Spanned<String>>,
    /// Time allowed for one query (default: resolv.conf's `timeout`, else 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Dur>>,
    /// Tries of a query before it fails (default: resolv.conf's `attempts`, else 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Spanned<u32>>,
}

/// The admin endpoint: readiness, stats, config dump.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to listen on; keep it on loopback (default `127.0.0.1:9901`).
    #[schemars(with = "String")]
    pub address: Spanned<SocketAddr>,
    /// Time a connection gets to send a request's headers, from accept or from the previous
    /// response (default 10s; 0 = no limit): silent and idle admin connections close after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Spanned<Dur>>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: Spanned::unplaced(SocketAddr::from(([127, 0, 0, 1], 9901))),
            request_headers_timeout: None,
        }
    }
}

/// Overload protection (Envoy's overload manager in small): above a limit the proxy refuses new
/// connections, and above the memory limit it also answers new requests 503 (flag `OM`).
/// Established connections and the admin endpoint are never refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    /// Downstream connections open at once on all listeners together (Envoy's
    /// `global_downstream_max_connections`); new ones beyond it are closed at accept (default:
    /// no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_downstream_max_connections: Option<Spanned<u64>>,
    /// Resident memory at which the proxy is overloaded (Envoy's fixed_heap
    /// `max_heap_size_bytes`; here the process RSS): new connections are refused and new requests
    /// answered 503 until it drops below (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_heap_size_bytes: Option<Spanned<u64>>,
    /// How often memory is sampled (Envoy's `refresh_interval`, default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<Spanned<Dur>>,
}

/// A socket the proxy accepts connections on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique listener name (used in stats).
    pub name: Spanned<String>,
    /// `ip:port` to bind, e.g. `0.0.0.0:10000`.
    #[schemars(with = "String")]
    pub address: Spanned<SocketAddr>,
    /// HTTP listener: the name of the route config that routes its requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<Spanned<String>>,
    /// TCP (L4) listener: forward every connection to a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_proxy: Option<TcpProxy>,
    /// Close a connection with no request in flight after this long (default 1h; 0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Time allowed to receive a request's headers (default 30s; 0 = no limit). Expiry closes the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Spanned<Dur>>,
    /// Time a request or response body (or an upgraded connection) may go without data
    /// (default 5m; 0 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Spanned<Dur>>,
    /// Time allowed to receive a whole request, body included, counted from its headers
    /// (Envoy's HTTP connection manager `request_timeout`; default 0 = no limit). Expiry
    /// before the response started answers 408.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Spanned<Dur>>,
    /// Protocol upgrades the listener tunnels (Envoy's `upgrade_configs`; default: `websocket`
    /// only, `[]`: none). A route's `upgrade_configs` can enable or disable a type for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_configs: Option<Vec<Spanned<UpgradeConfig>>>,
    /// Access logs: one line per request to each sink (HTTP listeners).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<Spanned<AccessLog>>,
    /// Keep a client's `x-request-id` (default true); false replaces it with a new UUID v4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_external_request_id: Option<bool>,
    /// Trace context: each proxied request becomes a span (HTTP listeners). Without it, trace
    /// headers pass through untouched and no span is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Spanned<Tracing>>,
    /// Proxies in front of this listener whose `x-forwarded-for` entries are trusted (default 0):
    /// the client is the Nth address from the right, and their `x-forwarded-proto` is kept
    /// (Envoy's `xff_num_trusted_hops` with `use_remote_address: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xff_num_trusted_hops: Option<Spanned<u32>>,
    /// Do not append the peer's address to `x-forwarded-for` (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_xff_append: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) giving the client's
    /// address, as an NLB or HAProxy sends it (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: also accept connections that send no PROXY header (default false:
    /// they are closed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_requests_without_proxy_protocol: bool,
    /// Time allowed for a connection's PROXY protocol header (default 15s; 0 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_filters_timeout: Option<Spanned<Dur>>,
    /// Connections open at once on this listener; new ones beyond it are closed at accept and
    /// counted in `downstream_cx_overflow` (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Spanned<u64>>,
    /// Largest request head accepted, in KiB (Envoy's, default 60, at most 8192); larger gets 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers_kb: Option<Spanned<u32>>,
    /// Most request headers accepted (Envoy's `max_headers_count`, default 100); more gets 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers_count: Option<Spanned<u32>>,
    /// What one HTTP/2 stream buffers for a slow reader, in bytes (Envoy's
    /// `per_connection_buffer_limit_bytes`; default 32 KiB, Envoy's edge recommendation). An
    /// HTTP/1 connection's buffers are bounded by `max_request_headers_kb` instead (hyper has one
    /// buffer limit there, and the request head must fit in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_connection_buffer_limit_bytes: Option<Spanned<u32>>,
    /// HTTP/2 settings of the listener's connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Spanned<Http2ProtocolOptions>>,
    /// TLS termination (Envoy's `DownstreamTlsContext`): connections are TLS, served with the
    /// certificate their SNI selects. HTTP and TCP listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<ListenerTls>>,
    /// What happens to `x-forwarded-client-cert` (XFCC) going upstream (Envoy's
    /// `forward_client_cert_details`; default `sanitize`: a client's XFCC is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_client_cert_details: Option<Spanned<ForwardClientCertDetails>>,
    /// With `sanitize_set` or `append_forward`: what the XFCC element of this proxy's client
    /// holds besides `By` and `Hash` (Envoy's `set_current_client_cert_details`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_current_client_cert_details: Option<Spanned<SetCurrentClientCertDetails>>,
}

/// Key material (Envoy's `DataSource`): exactly one of `file`, `env` and `inline`.
///
/// What was read is kept with it (never serialized), so two configurations whose files differ
/// are different even when their YAML is the same.
#[derive(Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// A PEM file; a relative path is relative to the YAML file that names it.
    #[serde(default, alias = "filename", skip_serializing_if = "Option::is_none")]
    pub file: Option<Spanned<String>>,
    /// An environment variable holding the PEM text (ECS injects Secrets Manager secrets so).
    #[serde(
        default,
        alias = "environment_variable",
        skip_serializing_if = "Option::is_none"
    )]
    pub env: Option<Spanned<String>>,
    /// The PEM text itself (shown as `<redacted>` in `/config_dump`).
    #[serde(
        default,
        alias = "inline_string",
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_inline"
    )]
    pub inline: Option<Spanned<String>>,
    /// The bytes read at load time (set by the checks; `None` before, or when not read).
    #[serde(skip)]
    #[schemars(skip)]
    pub loaded: Option<Loaded>,
}

/// The contents of a [`DataSource`], as read when the configuration was loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The PEM bytes.
    pub bytes: std::sync::Arc<[u8]>,
    /// Where they came from: the resolved file path, `env NAME`, or `inline`.
    pub origin: String,
}

impl std::fmt::Debug for Loaded {
    // Key material never reaches a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes from {}>", self.bytes.len(), self.origin)
    }
}

impl std::fmt::Debug for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("DataSource");
        if let Some(p) = &self.file {
            d.field("file", &p.value);
        }
        if let Some(e) = &self.env {
            d.field("env", &e.value);
        }
        if self.inline.is_some() {
            d.field("inline", &crate::secrets::REDACTED);
        }
        d.field("loaded", &self.loaded).finish()
    }
}

impl DataSource {
    /// What the source names, for messages: the file, `env NAME` or `inline` (never the text).
    pub fn describe(&self) -> String {
        match (&self.file, &self.env) {
            (Some(p), _) => format!("file `{}`", p.value),
            (None, Some(e)) => format!("environment variable `{}`", e.value),
            (None, None) => "inline PEM".to_string(),
        }
    }

    /// The loaded bytes (empty before the checks ran).
    pub fn bytes(&self) -> &[u8] {
        self.loaded.as_ref().map_or(&[], |l| &l.bytes)
    }
}

// Inline PEM may be a private key: the config dump shows that there is one, not what it is.
fn redacted_inline<S: serde::Serializer>(
    v: &Option<Spanned<String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(crate::secrets::REDACTED),
        None => s.serialize_none(),
    }
}

/// A TLS protocol version (Envoy's `tls_minimum_protocol_version` names; `1.2` works too).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
pub enum TlsVersion {
    /// TLS 1.0: not supported (rustls speaks 1.2 and 1.3); accepted with a warning, acts as 1.2.
    #[serde(rename = "TLSv1_0", alias = "1.0")]
    TlsV1_0,
    /// TLS 1.1: not supported; accepted with a warning, acts as 1.2.
    #[serde(rename = "TLSv1_1", alias = "1.1")]
    TlsV1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSv1_2", alias = "1.2")]
    TlsV1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSv1_3", alias = "1.3")]
    TlsV1_3,
}

/// TLS termination of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// The listener's certificates: SNI picks the one whose `server_names` match (exact, then
    /// `*.` wildcard), else the first.
    pub certificates: Vec<Spanned<TlsCertificate>>,
    /// CA certificates that client certificates are verified against (mutual TLS); without it
    /// no client certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<Spanned<DataSource>>,
    /// With `client_ca`: refuse a client without a valid certificate (default false: a client
    /// may send none, but one it sends must be valid).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_client_certificate: bool,
    /// Lowest version accepted (default `TLSv1_2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Spanned<TlsVersion>>,
    /// Highest version accepted (default `TLSv1_3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<Spanned<TlsVersion>>,
    /// ALPN protocols offered, in order of preference (default `[h2, http/1.1]` on HTTP
    /// listeners, none on TCP listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<Spanned<String>>>,
    /// Session resumption with tickets whose keys rotate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_resumption: Option<bool>,
}

/// One certificate of a listener, with its key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// The certificate, then its intermediates, in PEM.
    pub certificate_chain: Spanned<DataSource>,
    /// Its private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Spanned<DataSource>,
    /// SNI names this certificate serves: `example.com` or `*.example.com` (default: none; the
    /// first certificate also serves any name no other one does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<Spanned<String>>,
}

/// A client certificate and key that a cluster presents to its upstreams (mutual TLS).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    /// The certificate, then its intermediates, in PEM.
    pub certificate_chain: Spanned<DataSource>,
    /// Its private key in PEM.
    pub private_key: Spanned<DataSource>,
}

/// TLS origination of a cluster (Envoy's `UpstreamTlsContext`). Verification is on by default.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// Server name sent as SNI and verified (default: the endpoint's host name, Envoy's
    /// `auto_sni`; an endpoint written as an IP address sends none and is verified by its IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<Spanned<String>>,
    /// CA certificates the upstream's certificate is verified against (default: the system's
    /// root certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<Spanned<DataSource>>,
    /// Accept the upstream only if its certificate has one of these DNS or URI subject
    /// alternative names (instead of the SNI name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_subject_alt_names: Vec<Spanned<String>>,
    /// Certificate presented to upstreams that ask for one (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<Spanned<ClientCertificate>>,
    /// ALPN protocols offered (default none) on an `http1` cluster; `protocol: http2` and `auto`
    /// set their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<Spanned<String>>,
    /// Lowest version accepted (default `TLSv1_2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Spanned<TlsVersion>>,
    /// Highest version accepted (default `TLSv1_3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<Spanned<TlsVersion>>,
    /// Accept any upstream certificate (default false). Anyone on the path can then read and
    /// change the traffic; the validator warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

impl ClusterTls {
    /// Whether `insecure_skip_verify` is set to true.
    pub fn skips_verification(&self) -> bool {
        self.insecure_skip_verify.as_ref().is_some_and(|s| s.value)
    }
}

/// Envoy's `forward_client_cert_details`: what becomes of `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCertDetails {
    /// Remove it (a client could forge it).
    #[default]
    Sanitize,
    /// Forward it as the client sent it on mutual TLS connections, else remove it.
    ForwardOnly,
    /// Forward it and, on mutual TLS connections, append this client's element.
    AppendForward,
    /// Replace it with this client's element (mutual TLS connections), else remove it.
    SanitizeSet,
    /// Always forward it as the client sent it, TLS or not (only behind a proxy you trust to
    /// set it).
    AlwaysForwardOnly,
}

/// Envoy's `set_current_client_cert_details`: the XFCC fields added besides `By` and `Hash`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCurrentClientCertDetails {
    /// `Subject`: the client certificate's subject.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subject: bool,
    /// `Cert`: the client certificate, URL-encoded PEM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cert: bool,
    /// `Chain`: the client's certificate chain, URL-encoded PEM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chain: bool,
    /// `DNS`: each DNS subject alternative name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dns: bool,
    /// `URI`: the URI subject alternative names.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uri: bool,
}

/// One protocol upgrade type (the request's `Upgrade` value, compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    /// The upgrade, e.g. `websocket`. `h2c` is never tunnelled.
    pub upgrade_type: Spanned<String>,
    /// Whether it is allowed (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// HTTP/2 settings (Envoy's `http2_protocol_options`; defaults are Envoy's edge-proxy
/// recommendations, not its unbounded service-mesh defaults).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {
    /// Streams a client may have open at once on one connection (default 100); more are refused
    /// with `REFUSED_STREAM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<Spanned<u32>>,
    /// Flow-control window of each stream, in bytes (default 65535, 65535..2147483647).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_stream_window_size: Option<Spanned<u32>>,
    /// Flow-control window of the connection, in bytes (default 1 MiB, 65535..2147483647).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_connection_window_size: Option<Spanned<u32>>,
    /// PING frames that find a dead connection: one is sent when nothing arrived for `interval`,
    /// and the connection is closed when it is not answered within `timeout` (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_keepalive: Option<Spanned<Http2Keepalive>>,
}

/// HTTP/2 PING keep-alive (Envoy's `connection_keepalive`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2Keepalive {
    /// Time without a frame from the peer after which a PING is sent.
    pub interval: Spanned<Dur>,
    /// Time a PING has to be answered; unanswered, the connection is closed.
    pub timeout: Spanned<Dur>,
}

/// One access log sink.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `/dev/stdout`, `/dev/stderr` or a file (appended to; reopened on SIGUSR1).
    pub path: Spanned<String>,
    /// `json`, or a format string of Envoy command operators (`%RESPONSE_CODE%`, ...); default
    /// Envoy's default line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Spanned<String>>,
    /// Lines buffered while the sink is slow; beyond it lines are dropped and counted (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_lines: Option<Spanned<u32>>,
}

/// Trace context settings of a listener.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Formats every upstream request carries (default `[w3c]`); the format a request arrived in
    /// is always kept too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Vec<TraceFormat>>,
    /// Share of new traces marked sampled, 0 to 1 (default 1). An incoming sampling decision
    /// is kept (parent-based); only sampled spans are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Spanned<f64>>,
    /// Export each sampled request's span over OTLP (default: no export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<Spanned<Otlp>>,
    /// `service.name` of the exported spans (default `tern`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Spanned<String>>,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// Collector URL: `http://host:4317` for gRPC; for HTTP the base URL (`/v1/traces` is
    /// appended unless the path already ends with it), e.g. `http://host:4318`.
    pub endpoint: Spanned<String>,
    /// `grpc` (default) or `http` (protobuf over HTTP/1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// TLS of an `https://` endpoint (default: verify against the system's root certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<OtlpTls>>,
    /// Headers sent with every export (gRPC metadata or HTTP headers), e.g. a hosted
    /// collector's API key. Values are shown as `<redacted>` in `/config_dump`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "redacted_values"
    )]
    pub headers: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// TLS settings of an OTLP exporter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpTls {
    /// PEM file of the CA certificate(s) that sign the collector's certificate; replaces the
    /// system's roots (a private CA or a self-signed collector). Read at load time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<Spanned<String>>,
}

// Header values are often credentials; the config dump is for seeing the shape, not the secrets.
fn redacted_values<S: serde::Serializer>(
    headers: &BTreeMap<Spanned<String>, Spanned<String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(headers.keys().map(|k| (k, "<redacted>")))
}

/// OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    Http,
}

/// Trace context header formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraceFormat {
    /// W3C `traceparent` / `tracestate`.
    W3c,
    /// B3 multi-header (`x-b3-traceid`, `x-b3-spanid`, ...).
    B3,
    /// B3 single header (`b3`).
    B3Single,
    /// AWS X-Ray `X-Amzn-Trace-Id`.
    Xray,
}

/// L4 forwarding of whole TCP connections.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    /// The cluster that receives the connections (with `sni_routes`: those no route matches,
    /// or that send no SNI; without it they are closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Spanned<String>>,
    /// Routes by the SNI of the client's TLS ClientHello (Envoy's
    /// `filter_chain_match.server_names`): the exact name, else the longest `*.` wildcard. On a
    /// listener without `tls` the connection is passed through untouched (the upstream
    /// terminates TLS); with `tls`, it is terminated and its plaintext routed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<Spanned<SniRoute>>,
}

/// One route of a TCP listener by SNI.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// Server names: `example.com` or `*.example.com`.
    pub server_names: Vec<Spanned<String>>,
    /// The cluster that receives the connections.
    pub cluster: Spanned<String>,
}

/// A named route table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route config name.
    pub name: Spanned<String>,
    /// Virtual hosts, chosen by the request's Host (exact, then suffix, prefix, `*`).
    #[serde(default)]
    pub virtual_hosts: Vec<Spanned<VirtualHost>>,
    /// Headers added to requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<Spanned<String>>,
    /// Headers added to responses (also the proxy's own replies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<Spanned<String>>,
}

/// A set of domains and the routes that serve them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Name, unique within the route config.
    pub name: Spanned<String>,
    /// Host patterns: `example.com`, `*.example.com`, `example.*` or `*`. A port in Host is ignored.
    pub domains: Vec<Spanned<String>>,
    /// Routes, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
    /// Retry policy for routes that have none of their own (a route's policy replaces it, no merge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<Spanned<RetryPolicy>>,
    /// Fault injection for routes that have none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Spanned<Fault>>,
    /// Local rate limit for routes that have none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Spanned<RateLimit>>,
    /// Headers added to requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<Spanned<String>>,
    /// Headers added to responses (also the proxy's own replies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<Spanned<String>>,
}

/// One route: a match and exactly one action.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional name (used in stats and logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the request must look like.
    #[serde(rename = "match")]
    pub matcher: Spanned<RouteMatch>,
    /// Forward to a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Spanned<RouteAction>>,
    /// Answer directly from the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<Spanned<DirectResponse>>,
    /// Answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Spanned<Redirect>>,
    /// Fault injection (replaces the virtual host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Spanned<Fault>>,
    /// Local rate limit (replaces the virtual host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Spanned<RateLimit>>,
    /// Headers added to requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<Spanned<String>>,
    /// Headers added to responses (also the proxy's own replies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<Spanned<String>>,
}

/// Request matching. Exactly one of `prefix`, `path`, `regex`; all header and query matchers must match too.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Spanned<String>>,
    /// Path equals this (query excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    /// Path matches this regex as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Spanned<Pattern>>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Spanned<ValueMatcher>>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<Spanned<ValueMatcher>>,
}

/// A condition on a named header or query parameter: exactly one of `exact`, `prefix`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatcher {
    /// Header (case-insensitive) or query parameter name.
    pub name: Spanned<String>,
    /// Value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Value matches this regex as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Spanned<Pattern>>,
    /// `true`: present with any value; `false`: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negate the result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_match: bool,
}

/// Forwarding to an upstream cluster. Exactly one of `cluster` and `weighted_clusters`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    /// The cluster to forward to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Spanned<String>>,
    /// Split traffic across clusters by weight (canary releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Spanned<WeightedClusters>>,
    /// Replace the matched `prefix` (or the whole path for `path` matches) with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Set the upstream Host header to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<Spanned<String>>,
    /// Time from the end of the request (its last body byte received) to the response
    /// headers, all retries included (default 15s, 0 = off). Also bounds an upgrade handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Dur>>,
    /// Body idle timeout for this route (replaces the listener's `stream_idle_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Retries (replaces the virtual host's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<Spanned<RetryPolicy>>,
    /// How `ring_hash` / `maglev` clusters hash a request; the first policy that yields a value wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<Spanned<HashPolicy>>,
    /// Request bodies up to this size are buffered so a retry can resend them (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request_buffer_limit_bytes: Option<u64>,
    /// Upgrades enabled or disabled on this route, replacing the listener's setting for
    /// each type listed (Envoy's route `upgrade_configs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade_configs: Vec<Spanned<UpgradeConfig>>,
    /// A limit on the whole stream, from the request's start to the response's end, and how a
    /// client's `grpc-timeout` sets it (Envoy's `RouteAction.MaxStreamDuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Spanned<MaxStreamDuration>>,
}

/// Envoy's `RouteAction.MaxStreamDuration`: the stream's time limit, and the client's
/// `grpc-timeout` as that limit.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxStreamDuration {
    /// The longest a stream may last, from the request's start to the response's end (0 or
    /// unset = no limit), when `grpc_timeout_header_max` does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Spanned<Dur>>,
    /// When set, a request's `grpc-timeout` is the stream's limit, capped at this (0 = no cap:
    /// the header as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_timeout_header_max: Option<Spanned<Dur>>,
    /// Taken off the `grpc-timeout` limit, so the proxy answers before the client gives up
    /// (an offset as long as the timeout leaves no time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_timeout_header_offset: Option<Spanned<Dur>>,
}

/// Weighted traffic split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusters {
    /// The clusters and their weights.
    pub clusters: Vec<Spanned<WeightedCluster>>,
}

/// One cluster of a weighted split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: Spanned<String>,
    /// Relative weight (0 = no traffic).
    pub weight: u32,
    /// Headers added to requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from requests (before they go upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<Spanned<String>>,
    /// Headers added to responses (also the proxy's own replies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<Spanned<HeaderValueOption>>,
    /// Headers removed from responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<Spanned<String>>,
}

/// A header to add (Envoy's `HeaderValueOption`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    /// The header.
    pub header: HeaderKeyValue,
    /// What to do when the header is already there (default `append_if_exists_or_add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_action: Option<AppendAction>,
    /// Add the header even when its value renders empty (default false: it is left out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_empty_value: bool,
}

/// A header name and its value.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderKeyValue {
    /// Header name (case-insensitive).
    pub key: Spanned<String>,
    /// Value: text and access-log operators such as `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`
    /// or `%REQ(X-NAME)%` (`%%` is a `%`). The value of a credential header (`authorization`, a
    /// cookie, an API key or token) is shown as `<redacted>` in `/config_dump` and diagnostics.
    pub value: Spanned<String>,
}

// By hand: a credential a rule adds upstream must not show in `/config_dump`.
impl Serialize for HeaderKeyValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HeaderKeyValue", 2)?;
        st.serialize_field("key", &self.key)?;
        if crate::secrets::sensitive_header(&self.key) {
            st.serialize_field("value", crate::secrets::REDACTED)?;
        } else {
            st.serialize_field("value", &self.value)?;
        }
        st.end()
    }
}

/// Envoy's `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppendAction {
    /// Add another value when the header is there, else add it.
    #[default]
    AppendIfExistsOrAdd,
    /// Add it only when the header is not there.
    AddIfAbsent,
    /// Replace every value when the header is there, else add it.
    OverwriteIfExistsOrAdd,
    /// Replace every value when the header is there, else do nothing.
    OverwriteIfExists,
}

/// One way to compute a request's hash for consistent hashing.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    /// Hash a request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HashHeader>,
    /// Hash a cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    /// Hash connection properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_properties: Option<HashConnection>,
    /// Stop at this policy if it yields a hash, even when later ones would too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
}

/// Hash on a header's value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashHeader {
    /// Header name.
    pub header_name: Spanned<String>,
}

/// Hash on a cookie's value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashCookie {
    /// Cookie name.
    pub name: Spanned<String>,
}

/// Hash on the client address.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashConnection {
    /// Use the client's IP.
    pub source_ip: bool,
}

/// When and how often to retry a request.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Comma-separated conditions: `5xx`, `gateway-error`, `reset`, `connect-failure`,
    /// `retriable-4xx`, `refused-stream`, `retriable-status-codes` (default `5xx`); for gRPC,
    /// read from `grpc-status` in the response headers: `cancelled`, `deadline-exceeded`,
    /// `internal`, `resource-exhausted`, `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Spanned<String>>,
    /// Maximum retries (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<Spanned<u32>>,
    /// Timeout of each try; unset means the route timeout alone applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Spanned<Dur>>,
    /// Back-off between tries (full jitter exponential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_back_off: Option<Spanned<RetryBackOff>>,
    /// Statuses retried with `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<Spanned<u16>>,
    /// Also retry methods that are not idempotent (POST, PATCH, CONNECT). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
}

/// Exponential back-off with full jitter.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    /// First interval (default 25ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<Spanned<Dur>>,
    /// Cap (default 10 × base_interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Spanned<Dur>>,
}

/// Fault injection: delays and aborts for a share of requests.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay requests before they are routed upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Spanned<FaultDelay>>,
    /// Answer requests with an error status instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Spanned<FaultAbort>>,
    /// At most this many requests faulted at once (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
    /// Honour `x-tern-fault-*` request headers (capped by the configured percentages).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub header_controlled: bool,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long (required unless header-controlled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Spanned<Dur>>,
    /// Share of requests delayed, 0-100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Spanned<f64>>,
}

/// An injected error response.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Status to answer with, 200-599 (required unless header-controlled or `grpc_status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<Spanned<u16>>,
    /// gRPC status (0-16) to answer gRPC requests with, trailers-only with HTTP 200 (Envoy's
    /// `grpc_status`; instead of `http_status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<Spanned<u32>>,
    /// Share of requests aborted, 0-100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Spanned<f64>>,
}

/// Local token-bucket rate limit.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per unit.
    pub requests_per_unit: Spanned<u32>,
    /// `second` or `minute`.
    pub unit: RateUnit,
    /// Bucket size (default `requests_per_unit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Spanned<u32>>,
    /// One bucket per value of this key instead of one for the whole route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Spanned<RateLimitKey>>,
}

/// Rate-limit time units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
}

/// What a keyed rate limit counts by: exactly one of `header` and `source_ip`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitKey {
    /// A request header's value (requests without it share one bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Spanned<String>>,
    /// The client IP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
}

/// A response generated by the proxy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// HTTP status (100-599).
    pub status: Spanned<u16>,
    /// Body, sent as text/plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A redirect generated by the proxy; unset parts keep the request's own.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Replace the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    /// Replace the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u16>,
    /// Replace the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<Spanned<String>>,
    /// Replace the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Replace the scheme (`http` or `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<Spanned<String>>,
    /// Shorthand for `scheme_redirect: https`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<Spanned<u16>>,
    /// Drop the query string.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

/// A group of upstream endpoints that serve the same thing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique cluster name (used in routes and stats).
    pub name: Spanned<String>,
    /// Time allowed to establish a TCP connection (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Spanned<Dur>>,
    /// How the endpoints are found (Envoy's `type`): `static`, `strict_dns` or `logical_dns`
    /// (default `strict_dns` when an endpoint address is a host name, else `static`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Spanned<DiscoveryType>>,
    /// Time between two resolutions of each host name (default 5s; at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Spanned<Dur>>,
    /// Resolve again when the answer's TTL runs out, if that is sooner than `dns_refresh_rate`
    /// (default true; never more often than once a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respect_dns_ttl: Option<bool>,
    /// Back-off between resolutions after a failed one (default: `dns_refresh_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_failure_refresh_rate: Option<Spanned<RefreshRate>>,
    /// Address families asked for (default `v4_preferred`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_lookup_family: Option<DnsLookupFamily>,
    /// How requests are spread over endpoints (default `round_robin`).
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<Spanned<Endpoint>>,
    /// Limits that shed load at once instead of queueing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<Spanned<CircuitBreakers>>,
    /// Passive health: eject endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    /// Active health checks (at most one per cluster: each endpoint has one health verdict).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<Spanned<HealthCheck>>,
    /// Requests sent on one upstream connection before it is closed (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<Spanned<u32>>,
    /// An upstream connection idle this long is not reused, but closed (default 50s; 0 = no
    /// limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Socket options of upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_connection_options: Option<Spanned<UpstreamConnectionOptions>>,
    /// TLS to the endpoints (HTTPS upstreams, mutual TLS); health checks use it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<ClusterTls>>,
    /// The HTTP version spoken to the endpoints (default `http1`): `http2` (prior knowledge on
    /// plain TCP, ALPN `h2` over TLS) or `auto` (ALPN `h2,http/1.1` over TLS, HTTP/1.1 on plain
    /// TCP: Envoy's `auto_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Spanned<ClusterProtocol>>,
    /// HTTP/2 settings of the cluster's connections (`protocol: http2` or `auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Spanned<Http2ProtocolOptions>>,
}

/// The HTTP version a cluster speaks to its endpoints (Envoy's `explicit_http_config` and
/// `auto_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterProtocol {
    /// HTTP/1.1 with keep-alive pooling.
    #[default]
    Http1,
    /// HTTP/2: multiplexed connections (h2c with prior knowledge on plain TCP).
    Http2,
    /// HTTP/2 or HTTP/1.1 as ALPN decides over TLS; HTTP/1.1 on plain TCP.
    Auto,
}

impl Cluster {
    /// The protocol as written (default `http1`).
    pub fn protocol(&self) -> ClusterProtocol {
        self.protocol
            .as_ref()
            .map_or_else(Default::default, |p| p.value)
    }
}

/// Socket options of upstream connections (Envoy's `upstream_connection_options`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConnectionOptions {
    /// TCP keep-alive probes on every upstream connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<Spanned<TcpKeepalive>>,
}

/// TCP keep-alive settings; an unset field keeps the system's value.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_probes: Option<Spanned<u32>>,
    /// Idle time before the first probe (whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<Spanned<Dur>>,
    /// Time between probes (whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<Spanned<Dur>>,
}

impl Cluster {
    /// The discovery type: as written, else `strict_dns` when an endpoint address is a host name
    /// and `static` when all are IP addresses.
    pub fn discovery_type(&self) -> DiscoveryType {
        match &self.discovery {
            Some(t) => t.value,
            None if self.endpoints.iter().any(|e| !e.is_ip()) => DiscoveryType::StrictDns,
            None => DiscoveryType::Static,
        }
    }
}

impl Endpoint {
    /// Whether the address is an IP literal with a port (`10.0.0.5:8080`, `[::1]:80`).
    pub fn is_ip(&self) -> bool {
        self.address.parse::<SocketAddr>().is_ok()
    }
}

/// Cluster service discovery types (Envoy's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryType {
    /// The endpoints are IP addresses, used as written.
    Static,
    /// Every address a host name resolves to is an endpoint, re-resolved in the background.
    StrictDns,
    /// One endpoint per host name; new connections go to the first address of the latest answer.
    LogicalDns,
}

/// Address families a DNS cluster asks for (Envoy's `dns_lookup_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DnsLookupFamily {
    /// IPv6 (AAAA); IPv4 (A) when there is none.
    Auto,
    /// IPv4 only.
    V4Only,
    /// IPv6 only.
    V6Only,
    /// IPv4; IPv6 when there is none.
    #[default]
    V4Preferred,
    /// IPv4 and IPv6.
    All,
}

/// Exponential back-off between retried resolutions (Envoy's `RefreshRate`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRate {
    /// First wait after a failure.
    pub base_interval: Spanned<Dur>,
    /// Longest wait (default 10 × `base_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Spanned<Dur>>,
}

/// Per-cluster limits (Envoy's default-priority thresholds, flattened).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Open upstream connections (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Spanned<u32>>,
    /// Requests waiting for a connection (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<Spanned<u32>>,
    /// Requests in flight (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<Spanned<u32>>,
    /// Retries in flight (default 3; replaced by `retry_budget` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<Spanned<u32>>,
    /// Retries in flight as a share of requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<Spanned<RetryBudget>>,
}

/// Retry concurrency as a share of active requests.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of active requests that may be retries (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<Spanned<f64>>,
    /// Retries always allowed regardless of the percentage (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

/// Outlier detection (Envoy's names and defaults).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx (or connect failures/resets) that eject an endpoint (default 5; 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 (or connect failures) that eject an endpoint (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    /// Each interval an endpoint spends not ejected takes one off its ejection multiplier (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Spanned<Dur>>,
    /// Ejection time, multiplied by the endpoint's number of ejections (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Spanned<Dur>>,
    /// Cap on the ejection time (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Spanned<Dur>>,
    /// At most this percent of endpoints ejected at once; at least one may be (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<Spanned<f64>>,
}

/// An active health check. Exactly one of `http`, `tcp` and `grpc_health_check`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Time allowed for one check.
    pub timeout: Spanned<Dur>,
    /// Time between checks.
    pub interval: Spanned<Dur>,
    /// Failed checks in a row that mark an endpoint unhealthy.
    pub unhealthy_threshold: Spanned<u32>,
    /// Passed checks in a row that mark an unhealthy endpoint healthy again.
    pub healthy_threshold: Spanned<u32>,
    /// Random extra time added to each interval (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<Spanned<Dur>>,
    /// Check with an HTTP GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// Check that a TCP connection opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// Check with the standard gRPC health protocol, `grpc.health.v1.Health/Check` over
    /// HTTP/2 (Envoy's `grpc_health_check`; `grpc` is accepted too).
    #[serde(default, alias = "grpc", skip_serializing_if = "Option::is_none")]
    pub grpc_health_check: Option<GrpcHealthCheck>,
}

/// gRPC health check settings (Envoy's `GrpcHealthCheck`): healthy when the endpoint answers
/// `SERVING`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// The service asked about (default empty: the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The request's `:authority` (default the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// HTTP health check settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Path to GET.
    pub path: Spanned<String>,
    /// Host header (default the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as healthy (default [200]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<Spanned<u16>>,
}

/// TCP health check settings (none yet: a connection that opens is healthy).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// Load-balancing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two random choices, fewest active requests (weighted).
    LeastRequest,
    /// Uniformly random (weighted).
    Random,
    /// Consistent hashing on a ring (Ketama-style), keyed by the route's `hash_policy`.
    RingHash,
    /// Maglev consistent hashing, keyed by the route's `hash_policy`.
    Maglev,
}

/// One upstream address.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port`, or `host:port` for `strict_dns` and `logical_dns` clusters.
    pub address: Spanned<String>,
    /// Relative weight (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}
