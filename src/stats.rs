//! Counters and gauges, keyed by listener and cluster name so they survive reloads.
//!
//! The request path holds `Arc`s to its listener's and cluster's stats (resolved when the snapshot
//! is built) and only does relaxed atomic adds: no lock, no lookup per request.

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

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
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

/// Per-listener statistics (Envoy's `downstream_*`).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub downstream_cx_total: Counter,
    /// Connections open now.
    pub downstream_cx_active: Gauge,
    /// Requests received.
    pub downstream_rq_total: Counter,
    /// Requests in flight.
    pub downstream_rq_active: Gauge,
    /// Responses by status class.
    pub downstream_rq_xx: StatusClasses,
    /// Requests that matched no route.
    pub no_route: Counter,
    /// Requests delayed by fault injection.
    pub fault_delays_injected: Counter,
    /// Requests aborted by fault injection.
    pub fault_aborts_injected: Counter,
    /// Faults not injected because `max_active_faults` was reached.
    pub fault_overflow: Counter,
    /// Faults in progress.
    pub fault_active: Gauge,
    /// Requests refused by a local rate limit (429).
    pub rate_limited: Counter,
    /// Requests or responses cut by the stream idle timeout.
    pub downstream_rq_idle_timeout: Counter,
    /// Connections closed by the listener idle timeout.
    pub downstream_cx_idle_timeout: Counter,
    /// Connections closed because request headers did not arrive in time.
    pub downstream_rq_header_timeout: Counter,
    /// Time from request start to the end of the response, in ms.
    pub downstream_rq_time: Histogram,
    /// Access log lines dropped because a sink's buffer was full.
    pub access_log_dropped: Counter,
    /// Spans the OTLP collector accepted.
    pub tracing_spans_exported: Counter,
    /// Sampled spans not exported: the queue was full or the export failed.
    pub tracing_spans_dropped: Counter,
}

/// Per-cluster statistics (Envoy's `upstream_*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Requests sent upstream (or attempted).
    pub upstream_rq_total: Counter,
    /// Upstream requests in flight.
    pub upstream_rq_active: Gauge,
    /// Upstream responses by status class.
    pub upstream_rq_xx: StatusClasses,
    /// Connection attempts that failed or timed out.
    pub upstream_cx_connect_fail: Counter,
    /// Requests that hit the route timeout.
    pub upstream_rq_timeout: Counter,
    /// Requests reset by the upstream before a response.
    pub upstream_rq_reset: Counter,
    /// Requests that found no endpoint to send to.
    pub upstream_rq_no_healthy: Counter,
    /// TCP proxy connections opened.
    pub upstream_cx_total: Counter,
    /// Upstream connections open now.
    pub upstream_cx_active: Gauge,
    /// Requests waiting for a new connection.
    pub upstream_rq_pending_active: Gauge,
    /// Retries in flight.
    pub upstream_rq_retry_active: Gauge,
    /// Requests refused because `max_connections` was reached.
    pub upstream_cx_overflow: Counter,
    /// Requests refused because `max_pending_requests` or `max_requests` was reached.
    pub upstream_rq_pending_overflow: Counter,
    /// Retries not made because the retry budget or `max_retries` was reached.
    pub upstream_rq_retry_overflow: Counter,
    /// Retries made.
    pub upstream_rq_retry: Counter,
    /// Requests that succeeded after at least one retry.
    pub upstream_rq_retry_success: Counter,
    /// Requests whose retries ran out (response flag URX).
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// Tries that hit `per_try_timeout`.
    pub upstream_rq_per_try_timeout: Counter,
    /// Picks made while no endpoint was available (the balancer failed open).
    pub lb_healthy_panic: Counter,
    /// Configured endpoints.
    pub membership_total: Gauge,
    /// Circuit-breaker limits of the running cluster version (set at load; for the remaining gauges).
    pub cb_limits: [Gauge; 3],
    /// Endpoints ejected by outlier detection (total ejections).
    pub outlier_detection_ejections_total: Counter,
    /// Endpoints ejected now.
    pub outlier_detection_ejections_active: Gauge,
    /// Ejections refused because `max_ejection_percent` was reached.
    pub outlier_detection_ejections_overflow: Counter,
    /// Ejections by the `consecutive_5xx` detector.
    pub outlier_detection_ejections_consecutive_5xx: Counter,
    /// Ejections by the `consecutive_gateway_failure` detector.
    pub outlier_detection_ejections_consecutive_gateway_failure: Counter,
    /// Endpoints available now (not failing active health checks, not ejected).
    pub membership_healthy: Gauge,
    /// Health checks made.
    pub health_check_attempt: Counter,
    /// Health checks that passed / failed.
    pub health_check_success: Counter,
    /// Health checks that failed.
    pub health_check_failure: Counter,
    /// Time from sending the (last) try upstream to the end of the upstream response, in ms.
    pub upstream_rq_time: Histogram,
}

/// Per-route statistics (route config, virtual host and route name as labels).
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Requests matched to the route.
    pub rq_total: Counter,
    /// Responses by status class.
    pub rq_xx: StatusClasses,
    /// Request start to response end, in ms.
    pub rq_time: Histogram,
}

/// Identifies a route: route config, virtual host, route name.
type RouteKey = (String, String, String);

/// Configuration reload outcomes (Envoy's `update_*`).
#[derive(Debug, Default)]
pub struct ConfigStats {
    /// Reloads attempted (changed content, or forced).
    pub update_attempt: Counter,
    /// Reloads applied.
    pub update_success: Counter,
    /// Reloads refused because the new set was invalid.
    pub update_rejected: Counter,
    /// Change notifications whose content was unchanged.
    pub update_unchanged: Counter,
    /// Unix time of the last applied configuration.
    pub last_success_timestamp: Gauge,
}

/// All statistics of the process.
#[derive(Debug, Default)]
pub struct Stats {
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
    routes: Mutex<BTreeMap<RouteKey, Arc<RouteStats>>>,
    /// Reload counters.
    pub config: ConfigStats,
}

/// One endpoint's counters, read from the running snapshot at scrape time (endpoint state lives
/// with the cluster, carried across reloads by address, not in [`Stats`]).
#[derive(Debug, Clone, Default)]
pub struct EndpointSample {
    /// Cluster name.
    pub cluster: String,
    /// Endpoint `host:port`.
    pub endpoint: String,
    /// Requests sent.
    pub rq_total: u64,
    /// Requests that failed (5xx, connect failure, reset, timeout).
    pub rq_error: u64,
    /// Requests in flight.
    pub rq_active: u64,
    /// Idle pooled connections.
    pub cx_idle: u64,
    /// 1 when neither active health checking nor outlier detection has taken it out.
    pub healthy: bool,
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

    /// Every value as `(name, labels, value, kind)`, the one list both output formats are made from.
    fn samples(&self, version: &str, endpoints: &[EndpointSample]) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut push =
            |name: &'static str, kind: Kind, labels: Vec<(&'static str, String)>, v: i64| {
                out.push(Sample {
                    name,
                    kind,
                    labels,
                    value: v,
                })
            };
        for (n, s) in self.each_listener() {
            let l = || vec![("listener", n.clone())];
            let counters: [(&'static str, &Counter); 13] = [
                ("downstream_cx_total", &s.downstream_cx_total),
                ("downstream_rq_total", &s.downstream_rq_total),
                ("no_route", &s.no_route),
                ("fault_delays_injected", &s.fault_delays_injected),
                ("fault_aborts_injected", &s.fault_aborts_injected),
                ("fault_overflow", &s.fault_overflow),
                ("rate_limited", &s.rate_limited),
                ("downstream_rq_idle_timeout", &s.downstream_rq_idle_timeout),
                ("access_log_dropped", &s.access_log_dropped),
                ("tracing_spans_exported", &s.tracing_spans_exported),
                ("tracing_spans_dropped", &s.tracing_spans_dropped),
                ("downstream_cx_idle_timeout", &s.downstream_cx_idle_timeout),
                (
                    "downstream_rq_header_timeout",
                    &s.downstream_rq_header_timeout,
                ),
            ];
            for (name, c) in counters {
                push(name, Kind::Counter, l(), c.get() as i64);
            }
            for (name, g) in [
                ("downstream_cx_active", &s.downstream_cx_active),
                ("downstream_rq_active", &s.downstream_rq_active),
                ("fault_active", &s.fault_active),
            ] {
                push(name, Kind::Gauge, l(), g.get());
            }
            for (class, v) in s.downstream_rq_xx.by_class() {
                let mut labels = l();
                labels.push(("class", class));
                push("downstream_rq_xx", Kind::Counter, labels, v);
            }
        }
        for (n, s) in self.each_cluster() {
            let l = || vec![("cluster", n.clone())];
            for (name, c) in [
                ("upstream_rq_total", &s.upstream_rq_total),
                ("upstream_cx_connect_fail", &s.upstream_cx_connect_fail),
                ("upstream_rq_timeout", &s.upstream_rq_timeout),
                ("upstream_rq_reset", &s.upstream_rq_reset),
                ("upstream_rq_no_healthy", &s.upstream_rq_no_healthy),
                ("upstream_cx_total", &s.upstream_cx_total),
            ] {
                push(name, Kind::Counter, l(), c.get() as i64);
            }
            push(
                "upstream_rq_active",
                Kind::Gauge,
                l(),
                s.upstream_rq_active.get(),
            );
            for (class, v) in s.upstream_rq_xx.by_class() {
                let mut labels = l();
                labels.push(("class", class));
                push("upstream_rq_xx", Kind::Counter, labels, v);
            }
            let counters: [(&'static str, &Counter); 15] = [
                ("upstream_cx_overflow", &s.upstream_cx_overflow),
                (
                    "upstream_rq_pending_overflow",
                    &s.upstream_rq_pending_overflow,
                ),
                ("upstream_rq_retry_overflow", &s.upstream_rq_retry_overflow),
                ("upstream_rq_retry", &s.upstream_rq_retry),
                ("upstream_rq_retry_success", &s.upstream_rq_retry_success),
                (
                    "upstream_rq_retry_limit_exceeded",
                    &s.upstream_rq_retry_limit_exceeded,
                ),
                (
                    "upstream_rq_per_try_timeout",
                    &s.upstream_rq_per_try_timeout,
                ),
                ("lb_healthy_panic", &s.lb_healthy_panic),
                (
                    "outlier_detection_ejections",
                    &s.outlier_detection_ejections_total,
                ),
                (
                    "outlier_detection_ejections_overflow",
                    &s.outlier_detection_ejections_overflow,
                ),
                (
                    "outlier_detection_ejections_consecutive_5xx",
                    &s.outlier_detection_ejections_consecutive_5xx,
                ),
                (
                    "outlier_detection_ejections_consecutive_gateway_failure",
                    &s.outlier_detection_ejections_consecutive_gateway_failure,
                ),
                ("health_check_attempt", &s.health_check_attempt),
                ("health_check_success", &s.health_check_success),
                ("health_check_failure", &s.health_check_failure),
            ];
            for (name, c) in counters {
                push(name, Kind::Counter, l(), c.get() as i64);
            }
            let gauges: [(&'static str, &Gauge); 6] = [
                ("upstream_cx_active", &s.upstream_cx_active),
                ("upstream_rq_pending_active", &s.upstream_rq_pending_active),
                ("upstream_rq_retry_active", &s.upstream_rq_retry_active),
                ("membership_total", &s.membership_total),
                ("membership_healthy", &s.membership_healthy),
                (
                    "outlier_detection_ejections_active",
                    &s.outlier_detection_ejections_active,
                ),
            ];
            for (name, g) in gauges {
                push(name, Kind::Gauge, l(), g.get());
            }
            // Envoy's circuit_breakers.default.remaining_*: headroom before each breaker opens.
            let open = [
                s.upstream_cx_active.get(),
                s.upstream_rq_pending_active.get(),
                s.upstream_rq_active.get(),
            ];
            for (i, name) in [
                "circuit_breakers_remaining_cx",
                "circuit_breakers_remaining_pending",
                "circuit_breakers_remaining_rq",
            ]
            .into_iter()
            .enumerate()
            {
                push(
                    name,
                    Kind::Gauge,
                    l(),
                    (s.cb_limits[i].get() - open[i]).max(0),
                );
            }
        }
        for e in endpoints {
            let l = || {
                vec![
                    ("cluster", e.cluster.clone()),
                    ("endpoint", e.endpoint.clone()),
                ]
            };
            push("endpoint_rq_total", Kind::Counter, l(), e.rq_total as i64);
            push("endpoint_rq_error", Kind::Counter, l(), e.rq_error as i64);
            push("endpoint_rq_active", Kind::Gauge, l(), e.rq_active as i64);
            push("endpoint_cx_idle", Kind::Gauge, l(), e.cx_idle as i64);
            push("endpoint_healthy", Kind::Gauge, l(), i64::from(e.healthy));
        }
        for ((rc, vh, r), s) in self.each_route() {
            let l = || {
                vec![
                    ("route_config", rc.clone()),
                    ("virtual_host", vh.clone()),
                    ("route", r.clone()),
                ]
            };
            push(
                "route_rq_total",
                Kind::Counter,
                l(),
                s.rq_total.get() as i64,
            );
            for c in 1..=5 {
                let mut labels = l();
                labels.push(("class", format!("{c}xx")));
                push("route_rq_xx", Kind::Counter, labels, s.rq_xx.get(c) as i64);
            }
        }
        let c = &self.config;
        push(
            "config_update_attempt",
            Kind::Counter,
            vec![],
            c.update_attempt.get() as i64,
        );
        push(
            "config_update_success",
            Kind::Counter,
            vec![],
            c.update_success.get() as i64,
        );
        push(
            "config_update_rejected",
            Kind::Counter,
            vec![],
            c.update_rejected.get() as i64,
        );
        push(
            "config_update_unchanged",
            Kind::Counter,
            vec![],
            c.update_unchanged.get() as i64,
        );
        push(
            "config_last_success_timestamp_seconds",
            Kind::Gauge,
            vec![],
            c.last_success_timestamp.get(),
        );
        push(
            "config_version_info",
            Kind::Gauge,
            vec![("version", version.to_string())],
            1,
        );
        out
    }

    /// Every histogram as `(name, label name, label value, snapshot)`.
    fn histograms(&self) -> Vec<HistSample> {
        let mut out = Vec::new();
        for (n, s) in self.each_listener() {
            out.push((
                "downstream_rq_time",
                vec![("listener", n)],
                s.downstream_rq_time.snapshot(),
            ));
        }
        for (n, s) in self.each_cluster() {
            out.push((
                "upstream_rq_time",
                vec![("cluster", n)],
                s.upstream_rq_time.snapshot(),
            ));
        }
        for ((rc, vh, r), s) in self.each_route() {
            out.push((
                "route_rq_time",
                vec![("route_config", rc), ("virtual_host", vh), ("route", r)],
                s.rq_time.snapshot(),
            ));
        }
        out
    }

    /// Prometheus text exposition format 0.0.4, every name prefixed `tern_`.
    pub fn prometheus(&self, version: &str, endpoints: &[EndpointSample]) -> String {
        let mut out = self.prometheus_samples(version, endpoints);
        let mut last = "";
        for (name, labels, (buckets, sum, count)) in self.histograms() {
            if name != last {
                let _ = writeln!(out, "# HELP tern_{name} {}", help(name));
                let _ = writeln!(out, "# TYPE tern_{name} histogram");
                last = name;
            }
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect::<Vec<_>>()
                .join(",");
            for (i, c) in buckets.iter().enumerate() {
                let le = match BUCKETS_MS.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(out, "tern_{name}_bucket{{{labels},le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "tern_{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "tern_{name}_count{{{labels}}} {count}");
        }
        out
    }

    fn prometheus_samples(&self, version: &str, endpoints: &[EndpointSample]) -> String {
        let mut out = String::with_capacity(4096);
        let mut samples = self.samples(version, endpoints);
        // One family's samples must be contiguous, under one TYPE line.
        samples.sort_by_key(|s| s.name);
        let mut last = "";
        for s in &samples {
            let full = match s.kind {
                Kind::Counter => format!("tern_{}_total", s.name.trim_end_matches("_total")),
                // Prometheus reserves `_total` for counters (promtool rejects it on a gauge).
                Kind::Gauge => match s.name.strip_suffix("_total") {
                    Some("membership") => "tern_membership_endpoints".to_string(),
                    Some(stem) => format!("tern_{stem}_all"),
                    None => format!("tern_{}", s.name),
                },
            };
            if s.name != last {
                let t = match s.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {full} {}", help(s.name));
                let _ = writeln!(out, "# TYPE {full} {t}");
                last = s.name;
            }
            out.push_str(&full);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", s.value);
        }
        out
    }

    /// Envoy-style text: `listener.ingress.downstream_rq_total: 10`, optionally filtered by a regex.
    pub fn text(
        &self,
        version: &str,
        filter: Option<&regex::Regex>,
        endpoints: &[EndpointSample],
    ) -> String {
        let mut out = String::new();
        for s in self.samples(version, endpoints) {
            if s.name == "config_version_info" {
                let line = format!("server.config_version: {version}");
                if filter.is_none_or(|f| f.is_match(&line)) {
                    let _ = writeln!(out, "{line}");
                }
                continue;
            }
            let mut name = String::new();
            for (k, v) in &s.labels {
                if *k == "class" {
                    continue;
                }
                let _ = write!(name, "{k}.{v}.");
            }
            if s.labels.is_empty() {
                name.push_str("server.");
            }
            name.push_str(s.name);
            if let Some((_, c)) = s.labels.iter().find(|(k, _)| *k == "class") {
                name = name.replace("_xx", &format!("_{c}"));
            }
            if filter.is_some_and(|f| !f.is_match(&name)) {
                continue;
            }
            let _ = writeln!(out, "{name}: {}", s.value);
        }
        // Histograms as Envoy-style derived values: count and sum (ms, rounded).
        for (name, labels, (_, sum, count)) in self.histograms() {
            let prefix: String = labels.iter().map(|(k, v)| format!("{k}.{v}.")).collect();
            for (suffix, v) in [("count", count), ("sum_ms", sum.round() as u64)] {
                let line = format!("{prefix}{name}_{suffix}");
                if filter.is_none_or(|f| f.is_match(&line)) {
                    let _ = writeln!(out, "{line}: {v}");
                }
            }
        }
        out
    }
}

/// `# HELP` text for a metric (promtool requires one per family).
fn help(name: &str) -> &'static str {
    match name {
        "downstream_cx_total" => "Downstream connections accepted.",
        "downstream_cx_active" => "Downstream connections open.",
        "downstream_rq_total" => "Downstream requests received.",
        "downstream_rq_active" => "Downstream requests in flight.",
        "downstream_rq_xx" => "Downstream responses by status class.",
        "downstream_rq_time" => {
            "Downstream request time (request start to response end), milliseconds."
        }
        "upstream_rq_time" => "Upstream request time (request sent to response end), milliseconds.",
        "route_rq_time" => "Request time per route (request start to response end), milliseconds.",
        "route_rq_total" => "Requests matched to the route.",
        "endpoint_rq_total" => "Requests sent to the endpoint.",
        "endpoint_rq_error" => {
            "Requests to the endpoint that failed (5xx, connect failure, reset, timeout)."
        }
        "endpoint_rq_active" => "Requests in flight to the endpoint.",
        "endpoint_cx_idle" => "Idle pooled connections to the endpoint.",
        "endpoint_healthy" => {
            "1 when neither health checking nor outlier detection has taken the endpoint out."
        }
        "route_rq_xx" => "Responses by route and status class.",
        "access_log_dropped" => "Access log lines dropped because a sink's buffer was full.",
        "tracing_spans_exported" => "Spans accepted by the OTLP collector.",
        "tracing_spans_dropped" => {
            "Sampled spans not exported (export queue full or export failed)."
        }
        "no_route" => "Requests that matched no route.",
        "upstream_rq_total" => "Upstream requests attempted.",
        "upstream_rq_active" => "Upstream requests in flight.",
        "upstream_rq_xx" => "Upstream responses by status class.",
        "upstream_cx_connect_fail" => "Upstream connection failures and connect timeouts.",
        "upstream_rq_timeout" => "Upstream requests that hit the route timeout.",
        "upstream_rq_reset" => "Upstream requests reset before response headers.",
        "upstream_rq_no_healthy" => "Requests with no healthy endpoint to go to.",
        "upstream_rq_retry" => "Retries made.",
        "upstream_rq_pending_overflow" => "Requests refused by a circuit breaker.",
        "membership_healthy" => "Endpoints available (healthy and not ejected).",
        "membership_total" => "Configured endpoints.",
        "config_update_attempt" => "Configuration reloads attempted.",
        "config_update_success" => "Configuration reloads applied.",
        "config_update_rejected" => "Configuration reloads rejected.",
        "config_update_unchanged" => "Change notifications with unchanged content.",
        "config_version_info" => "Content hash of the running configuration.",
        "config_last_success_timestamp_seconds" => "Unix time of the last applied configuration.",
        _ => "Tern statistic (see docs/observability.md).",
    }
}

/// `(name, labels, (cumulative buckets, sum ms, count))`.
type HistSample = (
    &'static str,
    Vec<(&'static str, String)>,
    (Vec<u64>, f64, u64),
);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

struct Sample {
    name: &'static str,
    kind: Kind,
    labels: Vec<(&'static str, String)>,
    value: i64,
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
        let p = s.prometheus("abc", &[]);
        assert!(p.contains("# TYPE tern_downstream_rq_total counter\n"));
        assert!(p.contains("tern_downstream_rq_total{listener=\"ingress\"} 1\n"));
        assert!(p.contains("tern_downstream_rq_xx_total{listener=\"ingress\",class=\"5xx\"} 1\n"));
        assert!(p.contains("tern_upstream_rq_total{cluster=\"api\"} 1\n"));
        assert!(p.contains("tern_config_version_info{version=\"abc\"} 1\n"));
        let t = s.text(
            "abc",
            Some(&regex::Regex::new("downstream.*5xx").unwrap()),
            &[],
        );
        assert_eq!(t, "listener.ingress.downstream_rq_5xx: 1\n");
        s.listener("egress").downstream_rq_total.inc();
        let p = s.prometheus("abc", &[]);
        assert_eq!(
            p.matches("# TYPE tern_downstream_rq_total counter").count(),
            1
        );
        assert!(s
            .text("abc", None, &[])
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
        let p = s.prometheus("v", &[]);
        assert!(p.contains("# TYPE tern_downstream_rq_time histogram\n"));
        assert!(p.contains("tern_downstream_rq_time_bucket{listener=\"ingress\",le=\"0.5\"} 1\n"));
        assert!(p.contains("tern_downstream_rq_time_bucket{listener=\"ingress\",le=\"+Inf\"} 3\n"));
        assert!(p.contains("tern_downstream_rq_time_count{listener=\"ingress\"} 3\n"));
        assert!(s
            .text("v", None, &[])
            .contains("listener.ingress.downstream_rq_time_count: 3\n"));
        // A value exactly on a bound falls into that bucket (le is inclusive).
        let h = Histogram::default();
        h.record(Duration::from_millis(1));
        assert_eq!(h.snapshot().0[1], 1);
        assert_eq!(h.snapshot().0[0], 0);
    }
}
