//! Counters, gauges and histograms, keyed by listener, cluster and route name so they survive
//! reloads.
//!
//! The request path holds `Arc`s to its listener's and cluster's stats (resolved when the snapshot
//! is built) and only does relaxed atomic adds: no lock, no lookup per request.
//!
//! Each scope (listener, cluster, route, endpoint, configuration) declares its stats once, in a
//! `stats_table!` table: field, type, exported name and HELP text on one line. The table makes
//! the struct and a visitor that every output (Prometheus, `/stats` text and its JSON form) is
//! rendered from, so a stat cannot be exported without its HELP text, and a test keeps
//! docs/observability.md's list equal to the tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether counters and histograms record (gauges always do: circuit breakers read them).
static RECORDING: AtomicBool = AtomicBool::new(true);

/// Turns counter and histogram recording off (the `TERN_STATS_DISABLED` bench comparison).
pub fn set_recording(on: bool) {
    RECORDING.store(on, Relaxed);
}

/// Whether counters and histograms record.
#[inline]
pub fn recording() -> bool {
    RECORDING.load(Relaxed)
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        if recording() {
            self.0.fetch_add(1, Relaxed);
        }
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Latency bucket upper bounds in milliseconds: Envoy's defaults, so dashboards carry over.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

const BUCKETS_US: [u64; 19] = {
    let mut b = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        b[i] = (BUCKETS_MS[i] * 1000.0) as u64;
        i += 1;
    }
    b
};

/// A latency histogram: one atomic counter per bucket (not cumulative) and a sum; the count
/// is the sum of the buckets, so `+Inf` and `_count` always agree. Lock-free: recording is a
/// bucket search over 19 constants and two relaxed adds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 20],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn record(&self, d: Duration) {
        if !recording() {
            return;
        }
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Cumulative counts per bucket of [`BUCKETS_MS`] then `+Inf`, the sum in ms, and the count.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect::<Vec<_>>();
        (cumulative, self.sum_us.load(Relaxed) as f64 / 1000.0, acc)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Counts by status class (1xx..5xx).
#[derive(Debug, Default)]
pub struct StatusClasses([Counter; 5]);

impl StatusClasses {
    /// Counts one response with `status`.
    #[inline]
    pub fn record(&self, status: u16) {
        let i = (status / 100).clamp(1, 5) as usize - 1;
        self.0[i].inc();
    }
    /// Count for class `1..=5`.
    pub fn get(&self, class: usize) -> u64 {
        self.0[class - 1].get()
    }

    /// `("1xx", count)` .. `("5xx", count)`.
    fn by_class(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        (1..=5).map(|c| (format!("{c}xx"), self.get(c) as i64))
    }
}

/// Counts by gRPC status code (0..=16; a code above the known ones counts as 2, `UNKNOWN`).
#[derive(Debug, Default)]
pub struct GrpcStatuses([Counter; 17]);

impl GrpcStatuses {
    /// Counts one response with gRPC status `code`.
    #[inline]
    pub fn record(&self, code: u8) {
        let i = if code > 16 { 2 } else { code as usize };
        self.0[i].inc();
    }
    /// Count for `code`.
    pub fn get(&self, code: u8) -> u64 {
        self.0.get(code as usize).map_or(0, Counter::get)
    }

    /// `("14", count)` for each code seen at least once (a bounded label set: 17 values).
    fn by_code(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        (0..=16u8)
            .map(|c| (c.to_string(), self.get(c) as i64))
            .filter(|(_, n)| *n > 0)
    }
}

/// How a family is exported.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported family: its name in `/stats` (Prometheus adds `tern_`, and `_total` to counters),
/// its type and its HELP text. Each is written once, in a scope's `stats_table!`.
#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

/// A stat as a table's visitor hands it out (status classes and histograms expand to several
/// series when rendered).
enum Value<'a> {
    Int(i64),
    Classes(&'a StatusClasses),
    Grpc(&'a GrpcStatuses),
    Histogram(&'a Histogram),
}

impl From<&Counter> for Value<'_> {
    fn from(c: &Counter) -> Self {
        Value::Int(c.get() as i64)
    }
}
impl From<&Gauge> for Value<'_> {
    fn from(g: &Gauge) -> Self {
        Value::Int(g.get())
    }
}
impl<'a> From<&'a StatusClasses> for Value<'a> {
    fn from(c: &'a StatusClasses) -> Self {
        Value::Classes(c)
    }
}
impl<'a> From<&'a GrpcStatuses> for Value<'a> {
    fn from(c: &'a GrpcStatuses) -> Self {
        Value::Grpc(c)
    }
}
impl<'a> From<&'a Histogram> for Value<'a> {
    fn from(h: &'a Histogram) -> Self {
        Value::Histogram(h)
    }
}
impl From<&u64> for Value<'_> {
    fn from(v: &u64) -> Self {
        Value::Int(*v as i64)
    }
}
impl From<&bool> for Value<'_> {
    fn from(v: &bool) -> Self {
        Value::Int(i64::from(*v))
    }
}

/// The family type a stat type exports as (a plain `u64` or `bool` field names it: `u64 as Gauge`).
trait Stat {
    const KIND: Kind;
}
impl Stat for Counter {
    const KIND: Kind = Kind::Counter;
}
impl Stat for Gauge {
    const KIND: Kind = Kind::Gauge;
}
impl Stat for StatusClasses {
    const KIND: Kind = Kind::Counter;
}
impl Stat for GrpcStatuses {
    const KIND: Kind = Kind::Counter;
}
impl Stat for Histogram {
    const KIND: Kind = Kind::Histogram;
}

/// A table entry's family type: the one it names (`u64 as Counter`), else its field type's.
macro_rules! kind {
    ($ty:ty) => {
        <$ty as Stat>::KIND
    };
    ($ty:ty, $kind:ident) => {
        Kind::$kind
    };
}

/// A table entry's exported name: the one it names (`=> "route_rq_total"`), else the field's.
macro_rules! exposed {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $name:literal) => {
        $name
    };
}

/// One scope's stats, each declared once as
/// `field: Type [as Kind] [=> "exported_name"], "HELP text";` (the HELP text is also the field's
/// doc). Makes the struct (the table's fields, then the `other` ones, which are not exported)
/// and `visit`, which hands every exported family with its value to a closure in table order
/// (the `/stats` line order); `derived` families are computed from the struct by an expression.
macro_rules! stats_table {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $field:ident : $ty:ty $(as $kind:ident)? $(=> $exposed:literal)?, $help:literal; )*
        }
        $( other { $( $(#[$ometa:meta])* $ovis:vis $ofield:ident : $oty:ty, )* } )?
        $( derived |$s:ident| {
            $( $dname:ident : $dkind:ident, $dhelp:literal = $dexpr:expr; )*
        } )?
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( #[doc = $help] pub $field: $ty, )*
            $($( $(#[$ometa])* $ovis $ofield: $oty, )*)?
        }

        impl $name {
            /// Every exported family of the scope with its value, in table order.
            fn visit(&self, mut f: impl FnMut(&'static Family, Value<'_>)) {
                $( f(
                    const {
                        &Family {
                            name: exposed!($field $(, $exposed)?),
                            kind: kind!($ty $(, $kind)?),
                            help: $help,
                        }
                    },
                    Value::from(&self.$field),
                ); )*
                $(
                    let $s = self;
                    $( f(
                        const {
                            &Family { name: stringify!($dname), kind: Kind::$dkind, help: $dhelp }
                        },
                        Value::Int($dexpr),
                    ); )*
                )?
            }

            /// Every exported family of the scope, in table order.
            #[cfg(test)]
            fn families() -> Vec<&'static Family> {
                let mut out = Vec::new();
                Self::default().visit(|f, _| out.push(f));
                out
            }
        }
    };
}

stats_table! {
    /// Per-listener statistics (Envoy's `downstream_*`).
    #[derive(Debug, Default)]
    pub struct ListenerStats {
        downstream_cx_total: Counter, "Downstream connections accepted.";
        downstream_rq_total: Counter, "Downstream requests received.";
        no_route: Counter, "Requests that matched no route.";
        fault_delays_injected: Counter, "Requests delayed by fault injection.";
        fault_aborts_injected: Counter, "Requests aborted by fault injection.";
        fault_overflow: Counter, "Faults not injected because max_active_faults was reached.";
        rate_limited: Counter, "Requests refused by a local rate limit (429).";
        downstream_rq_idle_timeout: Counter,
            "Request bodies, response bodies and tunnels cut by the stream idle timeout.";
        access_log_dropped: Counter, "Access log lines dropped because a sink's buffer was full.";
        tracing_spans_exported: Counter, "Spans accepted by the OTLP collector.";
        tracing_spans_dropped: Counter,
            "Sampled spans not exported (export queue full or export failed).";
        downstream_cx_idle_timeout: Counter,
            "Downstream connections closed by the listener idle timeout.";
        downstream_rq_header_timeout: Counter,
            "Downstream connections closed because request headers did not arrive in time.";
        downstream_rq_timeout: Counter,
            "Requests answered 408 because they were not complete within request_timeout.";
        downstream_rq_rx_reset: Counter,
            "Requests whose body the client ended early (closed or reset the stream).";
        downstream_cx_protocol_error: Counter,
            "Requests refused as malformed: Host, request body, upgrade with a body (400).";
        downstream_rq_ws_on_non_ws_route: Counter,
            "Upgrade requests refused (403) because the listener and route do not enable the type.";
        downstream_cx_upgrades_total: Counter, "Downstream connections upgraded (tunnels opened).";
        downstream_cx_active: Gauge, "Downstream connections open (upgraded ones included).";
        downstream_cx_upgrades_active: Gauge, "Upgraded connections (tunnels) open.";
        downstream_cx_proxy_proto_error: Counter,
            "Connections closed because their PROXY protocol header was malformed or late.";
        downstream_cx_proxy_proto_not_found: Counter,
            "Connections without a PROXY protocol header (closed unless allowed).";
        downstream_cx_overflow: Counter,
            "Connections closed at accept because the listener's max_connections were open.";
        downstream_global_cx_overflow: Counter,
            "Connections closed at accept because global_downstream_max_connections were open.";
        downstream_cx_overload_reject: Counter,
            "Connections closed at accept because memory was over max_heap_size_bytes.";
        downstream_rq_overload_close: Counter,
            "Requests answered 503 (flag OM) because memory was over max_heap_size_bytes.";
        downstream_rq_header_overflow: Counter,
            "Requests refused with 431: headers over max_request_headers_kb or max_headers_count.";
        downstream_cx_sni_error: Counter,
            "TCP connections closed on an SNI-routed listener because they sent no TLS ClientHello in time.";
        downstream_cx_sni_no_route: Counter,
            "TCP connections closed because no SNI route matched and tcp_proxy has no default cluster.";
        ssl_handshake: Counter => "ssl.handshake", "TLS handshakes completed.";
        ssl_connection_error: Counter => "ssl.connection_error",
            "TLS handshakes that failed, whatever the reason (timeouts included).";
        ssl_fail_verify_no_cert: Counter => "ssl.fail_verify_no_cert",
            "TLS handshakes refused because a required client certificate was not sent.";
        ssl_fail_verify_error: Counter => "ssl.fail_verify_error",
            "TLS handshakes refused because the client certificate did not verify.";
        ssl_no_certificate: Counter => "ssl.no_certificate",
            "TLS connections without a client certificate, on listeners that ask for one.";
        ssl_session_reused: Counter => "ssl.session_reused",
            "TLS handshakes that resumed an earlier session (no full handshake).";
        downstream_rq_active: Gauge, "Downstream requests in flight.";
        fault_active: Gauge, "Faults in progress.";
        downstream_rq_xx: StatusClasses, "Downstream responses by status class.";
        downstream_rq_time: Histogram,
            "Downstream request time (request start to response end), milliseconds.";
    }
}

stats_table! {
    /// Per-cluster statistics (Envoy's `upstream_*`).
    #[derive(Debug, Default)]
    pub struct ClusterStats {
        upstream_rq_total: Counter, "Upstream requests attempted.";
        upstream_cx_connect_fail: Counter, "Upstream connection failures and connect timeouts.";
        upstream_rq_timeout: Counter, "Upstream requests that hit the route timeout.";
        upstream_rq_reset: Counter, "Upstream requests reset before response headers.";
        upstream_cx_protocol_error: Counter,
            "Upstream responses refused as malformed or ambiguously framed (502).";
        upstream_rq_no_healthy: Counter, "Requests with no healthy endpoint to go to.";
        upstream_cx_total: Counter, "Upstream connections opened by the TCP proxy.";
        upstream_cx_http1_total: Counter, "Upstream HTTP/1.1 connections opened.";
        upstream_cx_http2_total: Counter, "Upstream HTTP/2 connections opened.";
        upstream_rq_active: Gauge, "Upstream requests in flight.";
        upstream_rq_xx: StatusClasses, "Upstream responses by status class.";
        upstream_rq_grpc_status: GrpcStatuses,
            "Upstream gRPC responses by grpc-status (trailers-only headers or trailers).";
        upstream_cx_overflow: Counter, "Requests refused because max_connections was reached.";
        upstream_rq_pending_overflow: Counter,
            "Requests refused because max_pending_requests or max_requests was reached.";
        upstream_rq_retry_overflow: Counter,
            "Retries not made because the retry budget or max_retries was reached.";
        upstream_rq_retry: Counter, "Retries made.";
        upstream_rq_retry_success: Counter, "Requests that succeeded after at least one retry.";
        upstream_rq_retry_limit_exceeded: Counter,
            "Requests whose retries ran out (response flag URX).";
        upstream_rq_per_try_timeout: Counter, "Upstream tries that hit per_try_timeout.";
        lb_healthy_panic: Counter,
            "Picks made while no endpoint was available (the balancer failed open).";
        outlier_detection_ejections_total: Counter => "outlier_detection_ejections",
            "Endpoints ejected by outlier detection (total ejections).";
        outlier_detection_ejections_overflow: Counter,
            "Ejections refused because max_ejection_percent was reached.";
        outlier_detection_ejections_consecutive_5xx: Counter,
            "Ejections by the consecutive_5xx detector.";
        outlier_detection_ejections_consecutive_gateway_failure: Counter,
            "Ejections by the consecutive_gateway_failure detector.";
        health_check_attempt: Counter, "Active health checks made.";
        health_check_success: Counter, "Active health checks that passed.";
        health_check_failure: Counter, "Active health checks that failed.";
        upstream_cx_active: Gauge, "Upstream connections open or being opened.";
        upstream_rq_pending_active: Gauge, "Requests waiting for a new upstream connection.";
        upstream_rq_retry_active: Gauge, "Retries in flight.";
        update_attempt: Counter, "DNS resolutions of the cluster's host names started.";
        update_success: Counter, "DNS resolutions answered (with addresses or without any).";
        update_failure: Counter,
            "DNS resolutions that failed (timeout, SERVFAIL, unreachable resolver); the last answer stays.";
        update_empty: Counter,
            "DNS resolutions answered with no address (NXDOMAIN or no record of the family).";
        membership_change: Counter, "Changes of the cluster's endpoint set by DNS.";
        membership_total: Gauge,
            "Endpoints in the cluster (configured, or resolved for strict_dns).";
        membership_healthy: Gauge, "Endpoints available (healthy and not ejected).";
        outlier_detection_ejections_active: Gauge, "Endpoints ejected by outlier detection now.";
        ssl_handshake: Counter => "upstream_ssl.handshake",
            "TLS handshakes completed with endpoints (Envoy's cluster ssl.handshake).";
        ssl_connection_error: Counter => "upstream_ssl.connection_error",
            "TLS handshakes with endpoints that failed, whatever the reason (503 upstream TLS error).";
        ssl_fail_verify_error: Counter => "upstream_ssl.fail_verify_error",
            "Endpoint certificates refused because their chain did not verify (unknown CA, expired).";
        ssl_fail_verify_san: Counter => "upstream_ssl.fail_verify_san",
            "Endpoint certificates refused because they are not for the expected name or SANs.";
        upstream_rq_time: Histogram,
            "Upstream request time (request sent to response end), milliseconds.";
    }
    other {
        /// Circuit-breaker limits of the running cluster version (set at load; for the remaining
        /// gauges): `max_connections`, `max_pending_requests`, `max_requests`.
        pub cb_limits: [Gauge; 3],
    }
    // Envoy's circuit_breakers.default.remaining_*: headroom before each breaker opens.
    derived |s| {
        circuit_breakers_remaining_cx: Gauge,
            "Upstream connections that can still open before max_connections is reached."
            = (s.cb_limits[0].get() - s.upstream_cx_active.get()).max(0);
        circuit_breakers_remaining_pending: Gauge,
            "Requests that can still wait for a connection before max_pending_requests is reached."
            = (s.cb_limits[1].get() - s.upstream_rq_pending_active.get()).max(0);
        circuit_breakers_remaining_rq: Gauge,
            "Upstream requests that can still start before max_requests is reached."
            = (s.cb_limits[2].get() - s.upstream_rq_active.get()).max(0);
    }
}

stats_table! {
    /// Per-route statistics (route config, virtual host and route name as labels).
    #[derive(Debug, Default)]
    pub struct RouteStats {
        rq_total: Counter => "route_rq_total", "Requests matched to the route.";
        rq_xx: StatusClasses => "route_rq_xx", "Responses by route and status class.";
        rq_time: Histogram => "route_rq_time",
            "Request time per route (request start to response end), milliseconds.";
    }
}

/// Identifies a route: route config, virtual host, route name.
type RouteKey = (String, String, String);

stats_table! {
    /// Configuration reload outcomes (Envoy's `update_*`).
    #[derive(Debug, Default)]
    pub struct ConfigStats {
        update_attempt: Counter => "config_update_attempt", "Configuration reloads attempted.";
        update_success: Counter => "config_update_success", "Configuration reloads applied.";
        update_rejected: Counter => "config_update_rejected", "Configuration reloads rejected.";
        update_unchanged: Counter => "config_update_unchanged",
            "Change notifications with unchanged content.";
        last_success_timestamp: Gauge => "config_last_success_timestamp_seconds",
            "Unix time of the last applied configuration.";
    }
}

stats_table! {
    /// Process-wide statistics (Envoy's `server.*`), shown with the `server.` prefix.
    #[derive(Debug, Default)]
    pub struct ServerStats {
        total_connections: Gauge,
            "Downstream connections open on all listeners (global_downstream_max_connections).";
        memory_physical_size: Gauge,
            "Resident memory in bytes, as last sampled (while max_heap_size_bytes is set).";
        overload_active: Gauge,
            "1 while memory is over max_heap_size_bytes (new connections and requests refused).";
        downstream_cx_accept_error: Counter,
            "Accepts that failed on a listener or the admin endpoint (e.g. out of descriptors).";
        admin_cx_overflow: Counter,
            "Admin connections closed at accept because the admin connection limit was reached.";
        admin_rq_header_timeout: Counter,
            "Admin connections closed because a request's headers did not arrive in time.";
    }
}

/// The configuration scope's one family that is not a stored stat: a constant 1 whose `version`
/// label is the running version (`server.config_version` in `/stats`).
static CONFIG_VERSION_INFO: Family = Family {
    name: "config_version_info",
    kind: Kind::Gauge,
    help: "Content hash of the running configuration.",
};

stats_table! {
    /// One endpoint's counters, read from the running snapshot at scrape time (endpoint state lives
    /// with the cluster, carried across reloads by address, not in [`Stats`]).
    #[derive(Debug, Clone, Default)]
    pub struct EndpointSample {
        rq_total: u64 as Counter => "endpoint_rq_total", "Requests sent to the endpoint.";
        rq_error: u64 as Counter => "endpoint_rq_error",
            "Requests to the endpoint that failed (5xx, connect failure, reset, timeout).";
        rq_active: u64 as Gauge => "endpoint_rq_active", "Requests in flight to the endpoint.";
        cx_idle: u64 as Gauge => "endpoint_cx_idle", "Idle pooled connections to the endpoint.";
        healthy: bool as Gauge => "endpoint_healthy",
            "1 when neither health checking nor outlier detection has taken the endpoint out.";
    }
    other {
        /// Cluster name.
        pub cluster: String,
        /// Endpoint `host:port`.
        pub endpoint: String,
    }
}

stats_table! {
    /// One certificate the proxy presents (a listener's, or a cluster's client certificate),
    /// read from the running snapshot at scrape time.
    #[derive(Debug, Clone, Default)]
    pub struct CertificateSample {
        expiration_unix_time_seconds: u64 as Gauge,
            "When the certificate expires, Unix seconds (Envoy's ssl.certificate expiration): alert before it does.";
    }
    other {
        /// `listener` or `cluster`.
        pub owner_kind: &'static str,
        /// The listener's or cluster's name.
        pub owner: String,
        /// Where the certificate came from (file path, `env NAME`, `inline`).
        pub certificate: String,
        /// Its subject.
        pub subject: String,
    }
}

/// What the stats outputs read from the running snapshot at scrape time.
#[derive(Debug, Default)]
pub struct Scraped {
    /// Every endpoint of every cluster.
    pub endpoints: Vec<EndpointSample>,
    /// Every certificate the proxy presents.
    pub certificates: Vec<CertificateSample>,
}

/// All statistics of the process.
#[derive(Debug, Default)]
pub struct Stats {
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
    routes: Mutex<BTreeMap<RouteKey, Arc<RouteStats>>>,
    /// Reload counters.
    pub config: ConfigStats,
    /// Process-wide stats.
    pub server: ServerStats,
}

/// A counter or gauge series: its family, labels and value.
struct Sample {
    family: &'static Family,
    labels: Vec<(&'static str, String)>,
    value: i64,
}

/// A histogram series: `(cumulative buckets, sum ms, count)` of [`Histogram::snapshot`].
struct HistSample {
    family: &'static Family,
    labels: Vec<(&'static str, String)>,
    snapshot: (Vec<u64>, f64, u64),
}

/// The series of every scope, as the tables' visitors hand them out.
#[derive(Default)]
struct Samples {
    /// Counters and gauges, a status-class family as one series per class (`class` label last).
    values: Vec<Sample>,
    histograms: Vec<HistSample>,
}

impl Samples {
    fn push(&mut self, family: &'static Family, labels: &[(&'static str, &str)], value: Value<'_>) {
        let owned = || -> Vec<(&'static str, String)> {
            labels.iter().map(|&(k, v)| (k, v.to_string())).collect()
        };
        match value {
            Value::Int(value) => self.values.push(Sample {
                family,
                labels: owned(),
                value,
            }),
            Value::Classes(c) => {
                for (class, value) in c.by_class() {
                    let mut labels = owned();
                    labels.push(("class", class));
                    self.values.push(Sample {
                        family,
                        labels,
                        value,
                    });
                }
            }
            Value::Grpc(c) => {
                for (code, value) in c.by_code() {
                    let mut labels = owned();
                    labels.push(("code", code));
                    self.values.push(Sample {
                        family,
                        labels,
                        value,
                    });
                }
            }
            Value::Histogram(h) => self.histograms.push(HistSample {
                family,
                labels: owned(),
                snapshot: h.snapshot(),
            }),
        }
    }
}

/// A `/stats` value: a number, or the version of `server.config_version`.
enum Entry {
    Int(i64),
    Uint(u64),
    Str(String),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Int(v) => v.fmt(f),
            Entry::Uint(v) => v.fmt(f),
            Entry::Str(v) => v.fmt(f),
        }
    }
}

impl Stats {
    /// The stats of listener `name`, created on first use (config load time only).
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        let mut m = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    /// The stats of cluster `name`, created on first use (config load time only).
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        let mut m = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    fn each_listener(&self) -> Vec<(String, Arc<ListenerStats>)> {
        let m = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The stats of a route, created on first use (config load time only).
    pub fn route(&self, route_config: &str, virtual_host: &str, route: &str) -> Arc<RouteStats> {
        let mut m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((
            route_config.to_string(),
            virtual_host.to_string(),
            route.to_string(),
        ))
        .or_default()
        .clone()
    }

    fn each_route(&self) -> Vec<(RouteKey, Arc<RouteStats>)> {
        let m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn each_cluster(&self) -> Vec<(String, Arc<ClusterStats>)> {
        let m = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every series, scope by scope through the tables: the one list all output formats are
    /// made from.
    fn samples(&self, version: &str, scraped: &Scraped) -> Samples {
        let mut out = Samples::default();
        for c in &scraped.certificates {
            let labels = [
                (c.owner_kind, &*c.owner),
                ("certificate", &*c.certificate),
                ("subject", &*c.subject),
            ];
            c.visit(|f, v| out.push(f, &labels, v));
        }
        for (n, s) in self.each_listener() {
            s.visit(|f, v| out.push(f, &[("listener", n.as_str())], v));
        }
        for (n, s) in self.each_cluster() {
            s.visit(|f, v| out.push(f, &[("cluster", n.as_str())], v));
        }
        for e in &scraped.endpoints {
            let labels = [("cluster", &*e.cluster), ("endpoint", &*e.endpoint)];
            e.visit(|f, v| out.push(f, &labels, v));
        }
        for ((rc, vh, r), s) in self.each_route() {
            let labels = [
                ("route_config", &*rc),
                ("virtual_host", &*vh),
                ("route", &*r),
            ];
            s.visit(|f, v| out.push(f, &labels, v));
        }
        self.config.visit(|f, v| out.push(f, &[], v));
        self.server.visit(|f, v| out.push(f, &[], v));
        out.push(&CONFIG_VERSION_INFO, &[("version", version)], Value::Int(1));
        out
    }

    /// Prometheus text exposition format 0.0.4, every name prefixed `tern_`.
    pub fn prometheus(&self, version: &str, scraped: &Scraped) -> String {
        let Samples {
            mut values,
            histograms,
        } = self.samples(version, scraped);
        let mut out = String::with_capacity(4096);
        // One family's series must be contiguous, under one HELP and TYPE line.
        values.sort_by_key(|s| s.family.name);
        let mut last = "";
        for s in &values {
            let full = prometheus_name(s.family);
            if s.family.name != last {
                family_header(&mut out, &full, s.family);
                last = s.family.name;
            }
            out.push_str(&full);
            if !s.labels.is_empty() {
                let _ = write!(out, "{{{}}}", prometheus_labels(&s.labels));
            }
            let _ = writeln!(out, " {}", s.value);
        }
        // Each scope has one histogram family, so its series are already contiguous.
        for h in &histograms {
            let full = prometheus_name(h.family);
            if h.family.name != last {
                family_header(&mut out, &full, h.family);
                last = h.family.name;
            }
            let labels = prometheus_labels(&h.labels);
            let (buckets, sum, count) = &h.snapshot;
            for (i, c) in buckets.iter().enumerate() {
                let le = match BUCKETS_MS.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(out, "{full}_bucket{{{labels},le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "{full}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{full}_count{{{labels}}} {count}");
        }
        out
    }

    /// Envoy-style text: `listener.ingress.downstream_rq_total: 10`, optionally filtered by a regex.
    pub fn text(&self, version: &str, filter: Option<&regex::Regex>, scraped: &Scraped) -> String {
        let mut out = String::new();
        for (name, v) in self.entries(version, filter, scraped) {
            let _ = writeln!(out, "{name}: {v}");
        }
        out
    }

    /// The `/stats` entries as one JSON object (`?format=json`): numbers, and the version as a
    /// string.
    pub fn json(
        &self,
        version: &str,
        filter: Option<&regex::Regex>,
        scraped: &Scraped,
    ) -> serde_json::Value {
        let map = self
            .entries(version, filter, scraped)
            .into_iter()
            .map(|(name, v)| {
                let v = match v {
                    Entry::Int(v) => v.into(),
                    Entry::Uint(v) => v.into(),
                    Entry::Str(v) => v.into(),
                };
                (name, v)
            })
            .collect();
        serde_json::Value::Object(map)
    }

    /// The `/stats` entries in order, those `filter` keeps: labels as name prefixes
    /// (`listener.ingress.`, `server.` without), a status class in the name, and each histogram as
    /// its count and sum.
    fn entries(
        &self,
        version: &str,
        filter: Option<&regex::Regex>,
        scraped: &Scraped,
    ) -> Vec<(String, Entry)> {
        let mut out = Vec::new();
        let samples = self.samples(version, scraped);
        for s in samples.values {
            if std::ptr::eq(s.family, &CONFIG_VERSION_INFO) {
                // The filter sees the whole line here, as the version is the point.
                let line = format!("server.config_version: {version}");
                if filter.is_none_or(|f| f.is_match(&line)) {
                    out.push(("server.config_version".into(), Entry::Str(version.into())));
                }
                continue;
            }
            let mut name = String::new();
            let mut class = None;
            let mut code = None;
            for (k, v) in &s.labels {
                if *k == "class" {
                    class = Some(v);
                    continue;
                }
                if *k == "code" {
                    code = Some(v);
                    continue;
                }
                let _ = write!(name, "{k}.{v}.");
            }
            if s.labels.is_empty() {
                name.push_str("server.");
            }
            match class {
                Some(c) => name.push_str(&s.family.name.replace("_xx", &format!("_{c}"))),
                None => name.push_str(s.family.name),
            }
            // A gRPC status family: one line per code seen, `..._grpc_status.14`.
            if let Some(c) = code {
                let _ = write!(name, ".{c}");
            }
            if filter.is_none_or(|f| f.is_match(&name)) {
                out.push((name, Entry::Int(s.value)));
            }
        }
        // Histograms as Envoy-style derived values: count and sum (ms, rounded).
        for h in samples.histograms {
            let prefix: String = h.labels.iter().map(|(k, v)| format!("{k}.{v}.")).collect();
            let (_, sum, count) = h.snapshot;
            for (suffix, v) in [("count", count), ("sum_ms", sum.round() as u64)] {
                let name = format!("{prefix}{}_{suffix}", h.family.name);
                if filter.is_none_or(|f| f.is_match(&name)) {
                    out.push((name, Entry::Uint(v)));
                }
            }
        }
        out
    }
}

/// A family's Prometheus name.
fn prometheus_name(f: &Family) -> String {
    // Envoy's `ssl.handshake` is `ssl_handshake` in Prometheus, as Envoy exports it.
    let name = f.name.replace('.', "_");
    match f.kind {
        Kind::Counter => format!("tern_{}_total", name.trim_end_matches("_total")),
        // Prometheus reserves `_total` for counters (promtool rejects it on a gauge).
        Kind::Gauge => match name.strip_suffix("_total") {
            Some("membership") => "tern_membership_endpoints".to_string(),
            Some(stem) => format!("tern_{stem}_all"),
            None => format!("tern_{name}"),
        },
        Kind::Histogram => format!("tern_{name}"),
    }
}

/// `# HELP` and `# TYPE` of a family (promtool requires both, once).
fn family_header(out: &mut String, full: &str, f: &Family) {
    let t = match f.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {full} {}", f.help);
    let _ = writeln!(out, "# TYPE {full} {t}");
}

/// `k="v",k2="v2"`, escaped.
fn prometheus_labels(labels: &[(&'static str, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_output_has_types_labels_and_values() {
        let s = Stats::default();
        let l = s.listener("ingress");
        l.downstream_rq_total.inc();
        l.downstream_rq_xx.record(503);
        s.cluster("api").upstream_rq_total.inc();
        let p = s.prometheus("abc", &Scraped::default());
        assert!(p.contains("# TYPE tern_downstream_rq_total counter\n"));
        assert!(p.contains("tern_downstream_rq_total{listener=\"ingress\"} 1\n"));
        assert!(p.contains("tern_downstream_rq_xx_total{listener=\"ingress\",class=\"5xx\"} 1\n"));
        let c = s.cluster("api");
        c.upstream_rq_grpc_status.record(14);
        c.upstream_rq_grpc_status.record(14);
        c.upstream_rq_grpc_status.record(99);
        let g = s.prometheus("v1", &Scraped::default());
        assert!(g.contains("tern_upstream_rq_grpc_status_total{cluster=\"api\",code=\"14\"} 2\n"));
        assert!(g.contains("tern_upstream_rq_grpc_status_total{cluster=\"api\",code=\"2\"} 1\n"));
        assert!(
            !g.contains("code=\"0\""),
            "codes never seen are not exported"
        );
        let t = s.text("v1", None, &Scraped::default());
        assert!(
            t.contains("cluster.api.upstream_rq_grpc_status.14: 2\n"),
            "{t}"
        );
        assert!(p.contains("tern_upstream_rq_total{cluster=\"api\"} 1\n"));
        assert!(p.contains("tern_config_version_info{version=\"abc\"} 1\n"));
        let t = s.text(
            "abc",
            Some(&regex::Regex::new("downstream.*5xx").unwrap()),
            &Scraped::default(),
        );
        assert_eq!(t, "listener.ingress.downstream_rq_5xx: 1\n");
        s.listener("egress").downstream_rq_total.inc();
        let p = s.prometheus("abc", &Scraped::default());
        assert_eq!(
            p.matches("# TYPE tern_downstream_rq_total counter").count(),
            1
        );
        assert!(s
            .text("abc", None, &Scraped::default())
            .contains("server.config_version: abc\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_rendered() {
        let s = Stats::default();
        let l = s.listener("ingress");
        l.downstream_rq_time.record(Duration::from_micros(300));
        l.downstream_rq_time.record(Duration::from_millis(3));
        l.downstream_rq_time.record(Duration::from_secs(7200));
        let (b, sum, count) = l.downstream_rq_time.snapshot();
        assert_eq!(count, 3);
        assert_eq!(b[0], 1); // <= 0.5 ms
        assert_eq!(b[2], 2); // <= 5 ms
        assert_eq!(b[18], 2); // <= 3600000 ms
        assert_eq!(b[19], 3); // +Inf
        assert!((sum - 7_200_003.3).abs() < 0.01, "{sum}");
        let p = s.prometheus("v", &Scraped::default());
        assert!(p.contains("# TYPE tern_downstream_rq_time histogram\n"));
        assert!(p.contains("tern_downstream_rq_time_bucket{listener=\"ingress\",le=\"0.5\"} 1\n"));
        assert!(p.contains("tern_downstream_rq_time_bucket{listener=\"ingress\",le=\"+Inf\"} 3\n"));
        assert!(p.contains("tern_downstream_rq_time_count{listener=\"ingress\"} 3\n"));
        assert!(s
            .text("v", None, &Scraped::default())
            .contains("listener.ingress.downstream_rq_time_count: 3\n"));
        // A value exactly on a bound falls into that bucket (le is inclusive).
        let h = Histogram::default();
        h.record(Duration::from_millis(1));
        assert_eq!(h.snapshot().0[1], 1);
        assert_eq!(h.snapshot().0[0], 0);
    }

    /// At least two series of every scope, so a family split in two would show.
    fn populated() -> (Stats, Scraped) {
        let s = Stats::default();
        for name in ["ingress", "egress"] {
            let l = s.listener(name);
            l.downstream_rq_xx.record(200);
            l.downstream_rq_time.record(Duration::from_millis(3));
            s.cluster(name).upstream_cx_total.inc();
            // Codes are exported once seen.
            s.cluster(name).upstream_rq_grpc_status.record(14);
            s.route("main", "all", name).rq_total.inc();
        }
        s.config.update_success.inc();
        let endpoints = ["10.0.0.7:8080", "10.0.0.8:8080"]
            .map(|e| EndpointSample {
                cluster: "ingress".into(),
                endpoint: e.into(),
                rq_total: 4,
                healthy: true,
                ..Default::default()
            })
            .to_vec();
        let certificates = ["a.pem", "b.pem"]
            .map(|c| CertificateSample {
                owner_kind: "listener",
                owner: "ingress".into(),
                certificate: c.into(),
                subject: "CN=a".into(),
                expiration_unix_time_seconds: 4_891_363_200,
            })
            .to_vec();
        (
            s,
            Scraped {
                endpoints,
                certificates,
            },
        )
    }

    /// Every family, by the docs/observability.md heading it is listed under.
    fn scopes() -> [(&'static str, Vec<&'static Family>); 6] {
        let mut server = ConfigStats::families();
        server.push(&CONFIG_VERSION_INFO);
        server.extend(ServerStats::families());
        [
            ("Listener", ListenerStats::families()),
            ("Cluster", ClusterStats::families()),
            ("Endpoint", EndpointSample::families()),
            ("Route", RouteStats::families()),
            ("Certificate", CertificateSample::families()),
            ("Server", server),
        ]
    }

    fn kind_name(k: Kind) -> &'static str {
        match k {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    #[test]
    fn every_family_has_one_real_help_and_one_type_line() {
        let (s, endpoints) = populated();
        let p = s.prometheus("v1", &endpoints);
        let mut help = BTreeMap::<&str, usize>::new();
        let mut types = BTreeMap::<&str, &str>::new();
        let mut series = Vec::new();
        for line in p.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(
                    !text.trim().is_empty() && !text.starts_with("Tern statistic"),
                    "{name} has no real HELP text: {text:?}"
                );
                *help.entry(name).or_default() += 1;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, t) = rest.split_once(' ').unwrap();
                assert!(types.insert(name, t).is_none(), "two TYPE lines for {name}");
            } else {
                series.push(line.split(['{', ' ']).next().unwrap());
            }
        }
        assert!(
            help.values().all(|&n| n == 1),
            "HELP lines per family: {help:?}"
        );
        assert_eq!(
            help.keys().collect::<Vec<_>>(),
            types.keys().collect::<Vec<_>>()
        );
        // Every family of the tables is rendered, under a name no other family has.
        let mut expected = BTreeMap::new();
        for (_, families) in scopes() {
            for f in families {
                let name = prometheus_name(f);
                assert!(
                    expected.insert(name.clone(), kind_name(f.kind)).is_none(),
                    "two families are exported as {name}"
                );
            }
        }
        assert_eq!(
            types,
            expected.iter().map(|(k, v)| (k.as_str(), *v)).collect()
        );
        // Every series belongs to a family with a header.
        for name in series {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|f| types.get(f) == Some(&"histogram"))
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} has no TYPE line");
        }
    }

    #[test]
    fn docs_list_every_family_and_no_other() {
        let doc = include_str!("../docs/observability.md");
        let start = doc
            .find("\n## Statistics\n")
            .expect("## Statistics in the doc");
        let stats = &doc[start + 1..];
        let stats = &stats[..stats.find("\n## ").unwrap_or(stats.len())];
        let mut problems = Vec::new();
        for (heading, families) in scopes() {
            let at = stats
                .find(&format!("\n### {heading}"))
                .unwrap_or_else(|| panic!("no ### {heading} under ## Statistics"));
            let section = &stats[at + 1..];
            let section = &section[..section.find("\n### ").unwrap_or(section.len())];
            // A row is `| `name` (other spellings) | type | meaning |`.
            let mut listed = BTreeMap::new();
            for row in section.lines().filter(|l| l.starts_with("| `")) {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let name = cells[1].split('`').nth(1).unwrap();
                let name = name.split('{').next().unwrap();
                assert!(
                    listed.insert(name, cells[2]).is_none(),
                    "{name} is listed twice under ### {heading}"
                );
            }
            let missing: Vec<&str> = families
                .iter()
                .map(|f| f.name)
                .filter(|n| !listed.contains_key(n))
                .collect();
            let gone: Vec<&&str> = listed
                .keys()
                .filter(|n| !families.iter().any(|f| f.name == **n))
                .collect();
            let wrong_type: Vec<&str> = families
                .iter()
                .filter(|f| {
                    listed
                        .get(f.name)
                        .is_some_and(|t| !t.starts_with(kind_name(f.kind)))
                })
                .map(|f| f.name)
                .collect();
            if !(missing.is_empty() && gone.is_empty() && wrong_type.is_empty()) {
                problems.push(format!(
                    "### {heading}: missing {missing:?}, no longer exported {gone:?}, \
                     wrong type {wrong_type:?}"
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "docs/observability.md's lists differ from the stats tables:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn json_has_the_text_entries() {
        let (s, endpoints) = populated();
        let re = regex::Regex::new("5xx|config|_count").unwrap();
        for filter in [None, Some(&re)] {
            let text = s.text("abc", filter, &endpoints);
            let json = s.json("abc", filter, &endpoints);
            let json = json.as_object().unwrap();
            assert_eq!(json.len(), text.lines().count());
            for line in text.lines() {
                let (k, v) = line.split_once(": ").unwrap();
                let want = match v.parse::<i64>() {
                    Ok(n) => n.into(),
                    Err(_) => serde_json::Value::from(v),
                };
                assert_eq!(json[k], want, "{k}");
            }
        }
        // The version stays a string even when it looks like a number.
        assert_eq!(
            s.json("1234", None, &endpoints)["server.config_version"],
            "1234"
        );
    }
}
