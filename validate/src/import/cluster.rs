//! Envoy `Cluster` (and `ClusterLoadAssignment`) → Tern `clusters`: discovery type, load
//! balancing, endpoints (inline or EDS), circuit breakers, outlier detection, health checks,
//! upstream TLS, the HTTP protocol and its HTTP/2 options, DNS settings.

use std::collections::HashMap;
use std::path::Path;

use tern_config::{
    CircuitBreakers, ClientCertificate, Cluster, ClusterProtocol, ClusterTls, DiscoveryType,
    DnsLookupFamily, Endpoint, GrpcHealthCheck, HealthCheck, Http2Keepalive, Http2ProtocolOptions,
    HttpHealthCheck, LbPolicy, OutlierDetection, RefreshRate, RetryBudget, Spanned, TcpHealthCheck,
    TcpKeepalive, TlsVersion, UpstreamConnectionOptions,
};

use super::ctx::{host_port, Ctx};
use super::tree::{Node, Obj};
use super::Res;

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::unplaced(v)
}

/// Maps one Envoy cluster; `eds` holds the input's load assignments by cluster name.
pub fn cluster(
    cx: &mut Ctx,
    f: &Path,
    n: &Node,
    eds: &HashMap<String, Res<'_>>,
) -> Option<Cluster> {
    let mut o = cx.obj(f, n, "cluster")?;
    let name = o.take("name").and_then(|v| cx.str(f, v, "name"))?;
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: None,
        discovery: None,
        dns_refresh_rate: None,
        respect_dns_ttl: None,
        dns_failure_refresh_rate: None,
        dns_lookup_family: None,
        lb_policy: LbPolicy::RoundRobin,
        endpoints: Vec::new(),
        circuit_breakers: None,
        outlier_detection: None,
        health_checks: Vec::new(),
        max_requests_per_connection: None,
        idle_timeout: None,
        upstream_connection_options: None,
        tls: None,
        protocol: None,
        http2_protocol_options: None,
    };
    if let Some(v) = o.take("connect_timeout") {
        c.connect_timeout = cx.dur(f, v, "connect_timeout");
    }
    let mut is_eds = false;
    if let Some(t) = o.take("type") {
        c.discovery = match t.as_enum().as_deref() {
            Some("STATIC") => Some(DiscoveryType::Static),
            Some("STRICT_DNS") => Some(DiscoveryType::StrictDns),
            Some("LOGICAL_DNS") => Some(DiscoveryType::LogicalDns),
            Some("EDS") => {
                is_eds = true;
                Some(DiscoveryType::Static)
            }
            _ => {
                cx.value(f, t.pos, format!("cluster type {} is not supported (STATIC, STRICT_DNS, LOGICAL_DNS and file-based EDS are)", t.as_str().unwrap_or("?")));
                None
            }
        }
        .map(sp);
    }
    if let Some(v) = o.take("lb_policy") {
        c.lb_policy = match v.as_enum().as_deref() {
            Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
            Some("LEAST_REQUEST") => LbPolicy::LeastRequest,
            Some("RANDOM") => LbPolicy::Random,
            Some("RING_HASH") => LbPolicy::RingHash,
            Some("MAGLEV") => LbPolicy::Maglev,
            _ => {
                cx.value(f, v.pos, "lb_policy not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV are); round_robin used");
                LbPolicy::RoundRobin
            }
        };
    }
    if let Some(la) = o.take("load_assignment") {
        c.endpoints = load_assignment(cx, f, la);
    }
    if is_eds {
        let mut service = name.value.clone();
        if let Some(e) = o
            .take("eds_cluster_config")
            .and_then(|e| cx.obj(f, e, "eds_cluster_config"))
        {
            let mut e = e;
            if let Some(s) = e
                .take("service_name")
                .and_then(|s| cx.str(f, s, "service_name"))
            {
                service = s.value;
            }
            // Where the assignments come from is the files given to the import.
            e.take("eds_config");
            cx.rest(f, &e, "eds_cluster_config");
        }
        match eds.get(&service) {
            Some(r) => c.endpoints = load_assignment(cx, r.file, &super::without_type(r.node)),
            None => cx.unresolved(
                f,
                n.pos,
                format!("EDS cluster `{}`: no ClusterLoadAssignment for `{service}` in the input; it has no endpoints", name.value),
                "pass the EDS resource file (resources: with @type ClusterLoadAssignment) to the import",
            ),
        }
    }
    if let Some(v) = o.take("dns_refresh_rate") {
        c.dns_refresh_rate = cx.dur(f, v, "dns_refresh_rate");
    }
    if let Some(v) = o.take("respect_dns_ttl") {
        c.respect_dns_ttl = cx.bool(f, v, "respect_dns_ttl");
    }
    if let Some(r) = o
        .take("dns_failure_refresh_rate")
        .and_then(|r| cx.obj(f, r, "dns_failure_refresh_rate"))
    {
        let mut r = r;
        let base = r
            .take("base_interval")
            .and_then(|v| cx.dur(f, v, "base_interval"));
        let max = r
            .take("max_interval")
            .and_then(|v| cx.dur(f, v, "max_interval"));
        cx.rest(f, &r, "dns_failure_refresh_rate");
        c.dns_failure_refresh_rate = base.map(|b| {
            sp(RefreshRate {
                base_interval: b,
                max_interval: max,
            })
        });
    }
    for key in ["dns_resolvers", "typed_dns_resolver_config"] {
        if let Some((k, v)) = o.take_kv(key) {
            super::ctx::dns_resolvers(cx, f, k, v);
        }
    }
    if let Some(v) = o.take("dns_lookup_family") {
        c.dns_lookup_family = match v.as_enum().as_deref() {
            Some("AUTO") => Some(DnsLookupFamily::Auto),
            Some("V4_ONLY") => Some(DnsLookupFamily::V4Only),
            Some("V6_ONLY") => Some(DnsLookupFamily::V6Only),
            Some("V4_PREFERRED") => Some(DnsLookupFamily::V4Preferred),
            Some("ALL") => Some(DnsLookupFamily::All),
            _ => {
                cx.value(f, v.pos, "unknown dns_lookup_family");
                None
            }
        };
    }
    if let Some(cb) = o.take("circuit_breakers") {
        c.circuit_breakers = circuit_breakers(cx, f, cb).map(sp);
    }
    if let Some(od) = o.take("outlier_detection") {
        c.outlier_detection = outlier(cx, f, od).map(sp);
    }
    for hc in o.take("health_checks").map(Node::items).unwrap_or_default() {
        if !c.health_checks.is_empty() {
            cx.value(
                f,
                hc.pos,
                "Tern runs one health check per cluster; this one is dropped",
            );
            continue;
        }
        if let Some(h) = cx.item(f, hc.pos, "health check", |cx| health_check(cx, f, hc)) {
            c.health_checks.push(sp(h));
        }
    }
    if let Some(v) = o.take("max_requests_per_connection") {
        c.max_requests_per_connection = cx.u32(f, v, "max_requests_per_connection").map(sp);
    }
    if let Some(u) = o.take("upstream_connection_options") {
        c.upstream_connection_options = connection_options(cx, f, u).map(sp);
    }
    if let Some(ts) = o.take("transport_socket") {
        c.tls = upstream_tls(cx, f, ts).map(sp);
    }
    if let Some(h2) = o.take("http2_protocol_options") {
        c.protocol = Some(sp(ClusterProtocol::Http2));
        c.http2_protocol_options = http2_options(cx, f, h2).map(sp);
    }
    if let Some(p) = o.take("typed_extension_protocol_options") {
        protocol_options(cx, f, p, &mut c);
    }
    if let Some((k, v)) = o.take_kv("common_http_protocol_options") {
        // The deprecated cluster-level spelling.
        if let Some(mut cp) = cx.obj(f, v, &k.name) {
            common_options(cx, f, &mut cp, &mut c);
        }
    }
    cx.rest(f, &o, "cluster");
    Some(c)
}

/// The endpoints of a `ClusterLoadAssignment` (inline `load_assignment` or an EDS resource).
pub fn load_assignment(cx: &mut Ctx, f: &Path, n: &Node) -> Vec<Spanned<Endpoint>> {
    let mut out = Vec::new();
    let Some(mut o) = cx.obj(f, n, "load assignment") else {
        return out;
    };
    o.take("cluster_name");
    for le in o.take("endpoints").map(Node::items).unwrap_or_default() {
        let Some(mut lo) = cx.obj(f, le, "locality endpoints") else {
            continue;
        };
        if let Some((k, _)) = lo.take_kv("locality") {
            cx.no_effect(
                f,
                k,
                "Tern has no zone-aware balancing; the endpoints are used alike",
            );
        }
        if let Some(p) = lo.take("priority") {
            if p.as_int() != Some(0) {
                cx.value(f, p.pos, "priorities other than 0 are not supported (Tern has one priority); these endpoints are dropped");
                continue;
            }
        }
        if let Some((k, _)) = lo.take_kv("load_balancing_weight") {
            cx.field(
                f,
                k,
                "locality endpoints",
                Some("locality weights need locality-weighted balancing, which Tern lacks"),
            );
        }
        for lb in lo.take("lb_endpoints").map(Node::items).unwrap_or_default() {
            if let Some(e) = cx.item(f, lb.pos, "endpoint", |cx| lb_endpoint(cx, f, lb)) {
                out.push(sp(e));
            }
        }
        cx.rest(f, &lo, "locality endpoints");
    }
    if let Some((k, _)) = o.take_kv("policy") {
        cx.field(f, k, "load assignment", None);
    }
    cx.rest(f, &o, "load assignment");
    out
}

fn lb_endpoint(cx: &mut Ctx, f: &Path, n: &Node) -> Option<Endpoint> {
    let mut o = cx.obj(f, n, "lb endpoint")?;
    let mut e = o.take("endpoint").and_then(|e| cx.obj(f, e, "endpoint"))?;
    let (host, port) = e
        .take("address")
        .and_then(|a| cx.address(f, a, "endpoint address"))?;
    if let Some((k, _)) = e.take_kv("hostname") {
        cx.no_effect(f, k, "Tern names an endpoint by its address");
    }
    cx.rest(f, &e, "endpoint");
    let weight = match o.take("load_balancing_weight") {
        Some(w) => cx.u32(f, w, "load_balancing_weight")?,
        None => 1,
    };
    if let Some(h) = o.take("health_status") {
        if !matches!(h.as_enum().as_deref(), Some("HEALTHY" | "UNKNOWN")) {
            cx.value(f, h.pos, "a health_status other than HEALTHY or UNKNOWN is not carried over; the endpoint is used");
        }
    }
    if let Some((k, _)) = o.take_kv("metadata") {
        cx.no_effect(f, k, "Tern has no subset balancing or metadata matching");
    }
    cx.rest(f, &o, "lb endpoint");
    Some(Endpoint {
        address: sp(host_port(&host, port)),
        weight,
    })
}

fn circuit_breakers(cx: &mut Ctx, f: &Path, n: &Node) -> Option<CircuitBreakers> {
    let mut o = cx.obj(f, n, "circuit_breakers")?;
    let mut cb = None;
    for t in o.take("thresholds").map(Node::items).unwrap_or_default() {
        let Some(mut to) = cx.obj(f, t, "threshold") else {
            continue;
        };
        if let Some(p) = to.take("priority") {
            if p.as_enum().as_deref() != Some("DEFAULT") {
                cx.value(
                    f,
                    p.pos,
                    "only DEFAULT priority thresholds map (Tern has one priority); dropped",
                );
                continue;
            }
        }
        let mut c = CircuitBreakers::default();
        for (key, slot) in [
            ("max_connections", &mut c.max_connections),
            ("max_pending_requests", &mut c.max_pending_requests),
            ("max_requests", &mut c.max_requests),
            ("max_retries", &mut c.max_retries),
        ] {
            if let Some(v) = to.take(key) {
                *slot = cx.u32(f, v, key).map(sp);
            }
        }
        if let Some(b) = to
            .take("retry_budget")
            .and_then(|b| cx.obj(f, b, "retry_budget"))
        {
            let mut b = b;
            let mut rb = RetryBudget::default();
            if let Some(p) = b.take("budget_percent") {
                rb.budget_percent = cx.percent(f, p, "budget_percent").map(sp);
            }
            if let Some(m) = b.take("min_retry_concurrency") {
                rb.min_retry_concurrency = cx.u32(f, m, "min_retry_concurrency");
            }
            cx.rest(f, &b, "retry_budget");
            c.retry_budget = Some(sp(rb));
        }
        if let Some((k, _)) = to.take_kv("track_remaining") {
            cx.no_effect(f, k, "Tern's circuit-breaker gauges are always kept");
        }
        cx.rest(f, &to, "threshold");
        cb = Some(c);
    }
    cx.rest(f, &o, "circuit_breakers");
    cb
}

fn outlier(cx: &mut Ctx, f: &Path, n: &Node) -> Option<OutlierDetection> {
    let mut o = cx.obj(f, n, "outlier_detection")?;
    let mut od = OutlierDetection::default();
    if let Some(v) = o.take("consecutive_5xx") {
        od.consecutive_5xx = cx.u32(f, v, "consecutive_5xx");
    }
    if let Some(v) = o.take("consecutive_gateway_failure") {
        od.consecutive_gateway_failure = cx.u32(f, v, "consecutive_gateway_failure");
    }
    // Envoy enforces gateway failures at 0% unless told otherwise: with it unset, they are
    // counted but never eject. Tern ejects on what it counts, so only 100% maps.
    match o.take("enforcing_consecutive_gateway_failure") {
        Some(v) if cx.u32(f, v, "enforcing_consecutive_gateway_failure") == Some(100) => {}
        Some(v) => {
            cx.value(
                f,
                v.pos,
                "enforcing_consecutive_gateway_failure below 100 is not supported",
            );
            od.consecutive_gateway_failure = None;
        }
        None if od.consecutive_gateway_failure.is_some() => {
            cx.value(f, n.pos, "consecutive_gateway_failure without enforcing_consecutive_gateway_failure: 100 never ejects in Envoy; not carried over");
            od.consecutive_gateway_failure = None;
        }
        None => {}
    }
    if let Some(v) = o.take("enforcing_consecutive_5xx") {
        if cx.u32(f, v, "enforcing_consecutive_5xx") != Some(100) {
            cx.value(
                f,
                v.pos,
                "enforcing_consecutive_5xx below 100 is not supported; Tern always ejects",
            );
        }
    }
    for key in ["interval", "base_ejection_time", "max_ejection_time"] {
        if let Some(v) = o.take(key) {
            let d = cx.dur(f, v, key);
            match key {
                "interval" => od.interval = d,
                "base_ejection_time" => od.base_ejection_time = d,
                _ => od.max_ejection_time = d,
            }
        }
    }
    if let Some(v) = o.take("max_ejection_percent") {
        od.max_ejection_percent = cx.percent(f, v, "max_ejection_percent").map(sp);
    }
    // Envoy's success-rate detection is on by default (enforcing 100%); Tern has none.
    if let Some(v) = o.take("enforcing_success_rate") {
        if cx.u32(f, v, "enforcing_success_rate") != Some(0) {
            cx.value(
                f,
                v.pos,
                "success-rate outlier detection is not supported by Tern",
            );
        }
    }
    cx.rest(f, &o, "outlier_detection");
    Some(od)
}

fn health_check(cx: &mut Ctx, f: &Path, n: &Node) -> Option<HealthCheck> {
    let mut o = cx.obj(f, n, "health check")?;
    let timeout = o.take("timeout").and_then(|v| cx.dur(f, v, "timeout"))?;
    let interval = o.take("interval").and_then(|v| cx.dur(f, v, "interval"))?;
    let unhealthy_threshold = o
        .take("unhealthy_threshold")
        .and_then(|v| cx.u32(f, v, "unhealthy_threshold"))?;
    let healthy_threshold = o
        .take("healthy_threshold")
        .and_then(|v| cx.u32(f, v, "healthy_threshold"))?;
    let mut h = HealthCheck {
        timeout,
        interval,
        unhealthy_threshold: sp(unhealthy_threshold),
        healthy_threshold: sp(healthy_threshold),
        interval_jitter: None,
        http: None,
        tcp: None,
        grpc_health_check: None,
    };
    if let Some(v) = o.take("interval_jitter") {
        h.interval_jitter = cx.dur(f, v, "interval_jitter");
    }
    if let Some(v) = o
        .take("http_health_check")
        .and_then(|v| cx.obj(f, v, "http_health_check"))
    {
        let mut v = v;
        let path = v.take("path").and_then(|p| cx.str(f, p, "path"))?;
        let host = v
            .take("host")
            .and_then(|p| cx.str(f, p, "host"))
            .map(|s| s.value);
        let mut expected = Vec::new();
        for r in v
            .take("expected_statuses")
            .map(Node::items)
            .unwrap_or_default()
        {
            let (Some(s), Some(e)) = (
                r.get("start").and_then(Node::as_int),
                r.get("end").and_then(Node::as_int),
            ) else {
                cx.value(f, r.pos, "expected_statuses range needs start and end");
                continue;
            };
            if !(100..=600).contains(&s) || !(s..=600).contains(&e) || e - s > 100 {
                cx.value(
                    f,
                    r.pos,
                    "expected_statuses range is not a range of HTTP statuses",
                );
                continue;
            }
            expected.extend((s..e).map(|c| sp(c as u16)));
        }
        if let Some(c) = v.take("codec_client_type") {
            if c.as_enum().as_deref() != Some("HTTP1") {
                cx.value(
                    f,
                    c.pos,
                    "HTTP health checks are sent over HTTP/1.1 by Tern",
                );
            }
        }
        cx.rest(f, &v, "http_health_check");
        h.http = Some(HttpHealthCheck {
            path,
            host,
            expected_statuses: expected,
        });
    } else if let Some(v) = o
        .take("tcp_health_check")
        .and_then(|v| cx.obj(f, v, "tcp_health_check"))
    {
        cx.rest(f, &v, "tcp_health_check");
        h.tcp = Some(TcpHealthCheck {});
    } else if let Some(v) = o
        .take("grpc_health_check")
        .and_then(|v| cx.obj(f, v, "grpc_health_check"))
    {
        let mut v = v;
        let g = GrpcHealthCheck {
            service_name: v
                .take("service_name")
                .and_then(|s| cx.str(f, s, "service_name"))
                .map(|s| s.value),
            authority: v
                .take("authority")
                .and_then(|s| cx.str(f, s, "authority"))
                .map(|s| s.value),
        };
        cx.rest(f, &v, "grpc_health_check");
        h.grpc_health_check = Some(g);
    } else {
        cx.value(f, n.pos, "health check without an http, tcp or grpc check (custom checks are not supported); dropped");
        cx.rest(f, &o, "health check");
        return None;
    }
    cx.rest(f, &o, "health check");
    Some(h)
}

fn connection_options(cx: &mut Ctx, f: &Path, n: &Node) -> Option<UpstreamConnectionOptions> {
    let mut o = cx.obj(f, n, "upstream_connection_options")?;
    let mut k = o
        .take("tcp_keepalive")
        .and_then(|k| cx.obj(f, k, "tcp_keepalive"));
    let mut ka = TcpKeepalive::default();
    if let Some(k) = &mut k {
        if let Some(v) = k.take("keepalive_probes") {
            ka.keepalive_probes = cx.u32(f, v, "keepalive_probes").map(sp);
        }
        // Envoy writes these as whole seconds.
        for key in ["keepalive_time", "keepalive_interval"] {
            if let Some(v) = k.take(key) {
                let d = cx
                    .u32(f, v, key)
                    .map(|s| sp(tern_config::Dur(std::time::Duration::from_secs(s.into()))));
                if key == "keepalive_time" {
                    ka.keepalive_time = d;
                } else {
                    ka.keepalive_interval = d;
                }
            }
        }
        cx.rest(f, k, "tcp_keepalive");
    }
    cx.rest(f, &o, "upstream_connection_options");
    Some(UpstreamConnectionOptions {
        tcp_keepalive: k.map(|_| sp(ka)),
    })
}

/// `tls_params`' versions.
pub fn tls_version(cx: &mut Ctx, f: &Path, n: &Node) -> Option<Spanned<TlsVersion>> {
    let v = match n.as_str() {
        Some("TLSv1_0") => TlsVersion::TlsV1_0,
        Some("TLSv1_1") => TlsVersion::TlsV1_1,
        Some("TLSv1_2") => TlsVersion::TlsV1_2,
        Some("TLSv1_3") => TlsVersion::TlsV1_3,
        Some("TLS_AUTO") => return None,
        _ => {
            cx.value(f, n.pos, "unknown TLS protocol version");
            return None;
        }
    };
    Some(sp(v))
}

/// The parts of a `CommonTlsContext` both sides share: versions, certificates, ALPN; the
/// validation context is returned for the caller.
pub struct CommonTls<'a> {
    /// `tls_minimum_protocol_version`.
    pub min: Option<Spanned<TlsVersion>>,
    /// `tls_maximum_protocol_version`.
    pub max: Option<Spanned<TlsVersion>>,
    /// `tls_certificates`: (chain, key) pairs from files or environment variables.
    pub certs: Vec<(tern_config::DataSource, tern_config::DataSource)>,
    /// `alpn_protocols`.
    pub alpn: Vec<Spanned<String>>,
    /// `validation_context`, for the caller to read (its fields differ by side).
    pub validation: Option<Obj<'a>>,
}

/// Reads a `CommonTlsContext`.
pub fn common_tls<'a>(cx: &mut Ctx, f: &Path, n: &'a Node) -> Option<CommonTls<'a>> {
    let mut o = cx.obj(f, n, "common_tls_context")?;
    let mut c = CommonTls {
        min: None,
        max: None,
        certs: Vec::new(),
        alpn: Vec::new(),
        validation: None,
    };
    if let Some(p) = o
        .take("tls_params")
        .and_then(|p| cx.obj(f, p, "tls_params"))
    {
        let mut p = p;
        c.min = p
            .take("tls_minimum_protocol_version")
            .and_then(|v| tls_version(cx, f, v));
        c.max = p
            .take("tls_maximum_protocol_version")
            .and_then(|v| tls_version(cx, f, v));
        cx.rest(f, &p, "tls_params");
    }
    for t in o
        .take("tls_certificates")
        .map(Node::items)
        .unwrap_or_default()
    {
        let Some(mut to) = cx.obj(f, t, "tls_certificate") else {
            continue;
        };
        let chain = to
            .take("certificate_chain")
            .and_then(|v| cx.data_source(f, v, "certificate_chain"));
        let key = to
            .take("private_key")
            .and_then(|v| cx.data_source(f, v, "private_key"));
        cx.rest(f, &to, "tls_certificate");
        if let (Some(chain), Some(key)) = (chain, key) {
            c.certs.push((chain, key));
        }
    }
    for a in o
        .take("alpn_protocols")
        .map(Node::items)
        .unwrap_or_default()
    {
        if let Some(s) = cx.str(f, a, "alpn_protocols") {
            c.alpn.push(s);
        }
    }
    if let Some(v) = o.take("validation_context") {
        c.validation = cx.obj(f, v, "validation_context");
    }
    if let Some((k, _)) = o.take_kv("tls_certificate_sds_secret_configs") {
        cx.field(
            f,
            k,
            "common_tls_context",
            Some("Tern reads key material from files or environment variables, not SDS"),
        );
    }
    cx.rest(f, &o, "common_tls_context");
    Some(c)
}

/// A cluster's `transport_socket`: the TLS transport socket's `UpstreamTlsContext`.
fn upstream_tls(cx: &mut Ctx, f: &Path, n: &Node) -> Option<ClusterTls> {
    let (ty, mut o, pos) = cx.typed(f, n, "transport socket")?;
    if ty != "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
        cx.type_url(f, pos, "transport socket", &ty, None);
        return None;
    }
    let mut t = ClusterTls::default();
    if let Some(s) = o.take("sni") {
        t.sni = cx.str(f, s, "sni");
    }
    if let Some(ctx) = o.take("common_tls_context") {
        let common = common_tls(cx, f, ctx)?;
        t.min_version = common.min;
        t.max_version = common.max;
        t.alpn = common.alpn;
        if let Some((chain, key)) = common.certs.into_iter().next() {
            t.client_certificate = Some(sp(ClientCertificate {
                certificate_chain: sp(chain),
                private_key: sp(key),
            }));
        }
        if let Some(mut v) = common.validation {
            if let Some(ca) = v.take("trusted_ca") {
                t.ca = cx.data_source(f, ca, "trusted_ca").map(sp);
            }
            for m in v
                .take("match_typed_subject_alt_names")
                .map(Node::items)
                .unwrap_or_default()
            {
                let exact = m
                    .get("matcher")
                    .and_then(|x| x.get("exact"))
                    .and_then(Node::as_str);
                match exact {
                    Some(e)
                        if m.get("matcher").is_some_and(
                            |x| matches!(&x.kind, super::tree::Kind::Map(e) if e.len() == 1),
                        ) =>
                    {
                        t.verify_subject_alt_names.push(sp(e.to_string()));
                    }
                    _ => cx.value(
                        f,
                        m.pos,
                        "only exact subject alternative name matchers are supported",
                    ),
                }
            }
            for m in v
                .take("match_subject_alt_names")
                .map(Node::items)
                .unwrap_or_default()
            {
                match (m.get("exact").and_then(Node::as_str), m.is_empty()) {
                    (Some(e), _) if matches!(&m.kind, super::tree::Kind::Map(x) if x.len() == 1) => {
                        t.verify_subject_alt_names.push(sp(e.to_string()));
                    }
                    _ => cx.value(
                        f,
                        m.pos,
                        "only exact subject alternative name matchers are supported",
                    ),
                }
            }
            if let Some(tv) = v.take("trust_chain_verification") {
                if tv.as_enum().as_deref() == Some("ACCEPT_UNTRUSTED") {
                    t.insecure_skip_verify = Some(sp(true));
                }
            }
            cx.rest(f, &v, "validation_context");
        } else {
            // Envoy verifies nothing without a validation context; Tern verifies by default.
            t.insecure_skip_verify = Some(sp(true));
        }
    } else {
        t.insecure_skip_verify = Some(sp(true));
    }
    if let Some((k, _)) = o.take_kv("auto_sni") {
        cx.no_effect(
            f,
            k,
            "Tern sends the endpoint's host name as SNI unless `sni` is set",
        );
    }
    cx.rest(f, &o, "UpstreamTlsContext");
    Some(t)
}

/// `Http2ProtocolOptions`.
pub fn http2_options(cx: &mut Ctx, f: &Path, n: &Node) -> Option<Http2ProtocolOptions> {
    let mut o = cx.obj(f, n, "http2_protocol_options")?;
    let mut h = Http2ProtocolOptions::default();
    for (key, slot) in [
        ("max_concurrent_streams", &mut h.max_concurrent_streams),
        (
            "initial_stream_window_size",
            &mut h.initial_stream_window_size,
        ),
        (
            "initial_connection_window_size",
            &mut h.initial_connection_window_size,
        ),
    ] {
        if let Some(v) = o.take(key) {
            *slot = cx.u32(f, v, key).map(sp);
        }
    }
    if let Some(k) = o
        .take("connection_keepalive")
        .and_then(|k| cx.obj(f, k, "connection_keepalive"))
    {
        let mut k = k;
        let interval = k.take("interval").and_then(|v| cx.dur(f, v, "interval"));
        let timeout = k.take("timeout").and_then(|v| cx.dur(f, v, "timeout"));
        cx.rest(f, &k, "connection_keepalive");
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            h.connection_keepalive = Some(sp(Http2Keepalive { interval, timeout }));
        }
    }
    cx.rest(f, &o, "http2_protocol_options");
    Some(h)
}

/// `common_http_protocol_options` of a cluster: idle timeout and requests per connection.
fn common_options(cx: &mut Ctx, f: &Path, o: &mut Obj<'_>, c: &mut Cluster) {
    if let Some(v) = o.take("idle_timeout") {
        c.idle_timeout = cx.dur(f, v, "idle_timeout");
    }
    if let Some(v) = o
        .take("max_requests_per_stream")
        .or_else(|| o.take("max_requests_per_connection"))
    {
        c.max_requests_per_connection = cx.u32(f, v, "max_requests_per_connection").map(sp);
    }
    cx.rest(f, o, "common_http_protocol_options");
}

/// `typed_extension_protocol_options`: the upstream `HttpProtocolOptions` (explicit HTTP/1.1
/// or HTTP/2, or `auto_config`, and the common options).
fn protocol_options(cx: &mut Ctx, f: &Path, n: &Node, c: &mut Cluster) {
    let Some(o) = cx.obj(f, n, "typed_extension_protocol_options") else {
        return;
    };
    for (k, v) in o.rest() {
        let Some(mut po) = cx.obj(f, v, "protocol options") else {
            continue;
        };
        let url = po.take("@type").and_then(Node::as_str).unwrap_or_default();
        if url.rsplit('/').next() != Some("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        {
            cx.type_url(
                f,
                k.pos,
                &format!("protocol options `{}`", k.name),
                url,
                None,
            );
            continue;
        }
        if let Some(e) = po
            .take("explicit_http_config")
            .and_then(|e| cx.obj(f, e, "explicit_http_config"))
        {
            let mut e = e;
            if let Some(h2) = e.take("http2_protocol_options") {
                c.protocol = Some(sp(ClusterProtocol::Http2));
                c.http2_protocol_options = http2_options(cx, f, h2)
                    .filter(|h| *h != Default::default())
                    .map(sp);
            } else if let Some(h1) = e.take("http_protocol_options") {
                c.protocol = Some(sp(ClusterProtocol::Http1));
                if let Some(h1) = Obj::new(h1) {
                    cx.rest(f, &h1, "http_protocol_options");
                }
            }
            cx.rest(f, &e, "explicit_http_config");
        } else if let Some(a) = po
            .take("auto_config")
            .and_then(|a| cx.obj(f, a, "auto_config"))
        {
            let mut a = a;
            c.protocol = Some(sp(ClusterProtocol::Auto));
            if let Some(h2) = a.take("http2_protocol_options") {
                c.http2_protocol_options = http2_options(cx, f, h2)
                    .filter(|h| *h != Default::default())
                    .map(sp);
            }
            if let Some(h1) = a.take("http_protocol_options").and_then(Obj::new) {
                cx.rest(f, &h1, "http_protocol_options");
            }
            cx.rest(f, &a, "auto_config");
        } else if let Some(u) = po.take("use_downstream_protocol_config") {
            cx.value(f, u.pos, "use_downstream_protocol_config is not supported; Tern speaks the cluster's one protocol");
        }
        if let Some(mut cp) = po
            .take("common_http_protocol_options")
            .and_then(|x| cx.obj(f, x, "common_http_protocol_options"))
        {
            common_options(cx, f, &mut cp, c);
        }
        cx.rest(f, &po, "HttpProtocolOptions");
    }
}
