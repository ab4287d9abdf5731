//! Envoy `Listener` → Tern `listeners`: the HTTP connection manager (routes inline or by RDS
//! name, timeouts, access logs, tracing, client address settings, HTTP filters), the TCP proxy,
//! listener TLS (`DownstreamTlsContext`) and the PROXY protocol listener filter.

use std::path::Path;

use tern_config::{
    AccessLog, Cluster, ForwardClientCertDetails, Listener, ListenerTls, Otlp, OtlpProtocol,
    RouteConfig, SetCurrentClientCertDetails, SniRoute, Spanned, TcpProxy, TlsCertificate, Tracing,
};

use super::cluster::{common_tls, http2_options};
use super::ctx::{host_port, Ctx};
use super::route::{self, ListenerFilters};
use super::tree::{self, Node, Obj};

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::unplaced(v)
}

/// One listener as mapped: the Tern listener, its inline route config, the RDS name it uses,
/// and the HTTP filters its route config gets.
pub struct Mapped {
    /// The listener.
    pub listener: Listener,
    /// A route config written inline in the HTTP connection manager.
    pub inline_routes: Option<RouteConfig>,
    /// The route config named by `rds.route_config_name`, and where.
    pub rds: Option<(String, tern_config::Pos)>,
    /// The fault and local rate limit filters of its HTTP connection manager.
    pub filters: ListenerFilters,
}

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const DOWNSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// Maps one Envoy listener; `clusters` (already mapped) give a tracer's collector address.
pub fn listener(cx: &mut Ctx, f: &Path, n: &Node, clusters: &[Cluster]) -> Option<Mapped> {
    let mut o = cx.obj(f, n, "listener")?;
    let name = o.take("name").and_then(|v| cx.str(f, v, "name"));
    let (host, port) = o
        .take("address")
        .and_then(|a| cx.address(f, a, "listener address"))?;
    // Envoy names a listener without a name itself; Tern needs one, made from the port.
    let name = name.unwrap_or_else(|| sp(format!("listener_{port}")));
    let Ok(address) = host_port(&host, port).parse() else {
        cx.value(
            f,
            n.pos,
            format!("listener address `{host}` is not an IP address"),
        );
        return None;
    };
    let mut l = Listener {
        name: name.clone(),
        address: sp(address),
        route_config: None,
        tcp_proxy: None,
        idle_timeout: None,
        request_headers_timeout: None,
        stream_idle_timeout: None,
        request_timeout: None,
        upgrade_configs: None,
        access_log: Vec::new(),
        preserve_external_request_id: None,
        tracing: None,
        xff_num_trusted_hops: None,
        skip_xff_append: false,
        proxy_protocol: false,
        allow_requests_without_proxy_protocol: false,
        listener_filters_timeout: None,
        max_connections: None,
        max_request_headers_kb: None,
        max_headers_count: None,
        per_connection_buffer_limit_bytes: None,
        http2_protocol_options: None,
        tls: None,
        forward_client_cert_details: None,
        set_current_client_cert_details: None,
    };
    let mut m = Mapped {
        listener: l.clone(),
        inline_routes: None,
        rds: None,
        filters: ListenerFilters::default(),
    };
    let chains = o.take("filter_chains").map(Node::items).unwrap_or_default();
    let mut sni_routes = Vec::new();
    let mut first_hcm: Option<&Node> = None;
    let mut tcp_terminated = Vec::new();
    for chain in chains {
        let Some(mut c) = cx.obj(f, chain, "filter chain") else {
            continue;
        };
        let mut server_names = Vec::new();
        if let Some(fcm) = c
            .take("filter_chain_match")
            .and_then(|x| cx.obj(f, x, "filter_chain_match"))
        {
            let mut fcm = fcm;
            for s in fcm
                .take("server_names")
                .map(Node::items)
                .unwrap_or_default()
            {
                if let Some(s) = cx.str(f, s, "server_names") {
                    server_names.push(s);
                }
            }
            if let Some(tp) = fcm.take("transport_protocol") {
                // `tls` only says the chain takes TLS connections: what `tls` or SNI routes
                // do in Tern anyway.
                if tp.as_str() != Some("tls") && tp.as_str() != Some("raw_buffer") {
                    cx.value(f, tp.pos, "unknown transport_protocol");
                }
            }
            cx.rest(f, &fcm, "filter_chain_match");
        }
        let chain_tls = c
            .take("transport_socket")
            .and_then(|ts| downstream_tls(cx, f, ts).map(|t| (t, ts.pos)));
        let filters = c.take("filters").map(Node::items).unwrap_or_default();
        let mut tcp_cluster: Option<Spanned<String>> = None;
        let mut http = false;
        for filter in filters {
            let Some((ty, cfg, pos)) = cx.typed(f, filter, "network filter") else {
                continue;
            };
            match ty.as_str() {
                HCM => {
                    http = true;
                    let Some(tc) = filter.get("typed_config") else {
                        continue;
                    };
                    match first_hcm {
                        None => {
                            first_hcm = Some(tc);
                            hcm(cx, f, cfg, &mut l, &mut m, clusters);
                        }
                        // Chains that differ only in their match and certificate (one per
                        // SNI name) repeat the same manager: it is mapped once.
                        Some(first) if tree::same(first, tc) => {}
                        Some(_) => cx.value(f, pos, "a different HTTP connection manager per filter chain is not supported (Tern has one per listener); only the first is mapped"),
                    }
                }
                TCP_PROXY => {
                    tcp_cluster = tcp_proxy(cx, f, cfg);
                }
                _ => cx.type_url(f, pos, "network filter", &ty, None),
            }
        }
        let terminated = chain_tls.is_some();
        if let Some((mut t, pos)) = chain_tls {
            // A chain's server names pick its certificate, as Tern's `server_names` do.
            for cert in &mut t.certificates {
                cert.value.server_names = server_names.clone();
            }
            match &mut l.tls {
                None => l.tls = Some(sp(t)),
                Some(have) => {
                    let certs = std::mem::take(&mut t.certificates);
                    let mut others = have.value.clone();
                    others.certificates = Vec::new();
                    if others != t {
                        cx.value(f, pos, "this chain's TLS settings (client CA, versions, ALPN) differ from the first chain's; Tern has one set per listener, so only its certificates are kept");
                    }
                    // Envoy's chain without server names takes any other name: Tern's first
                    // certificate does.
                    if server_names.is_empty() {
                        let tail = std::mem::replace(&mut have.value.certificates, certs);
                        have.value.certificates.extend(tail);
                    } else {
                        have.value.certificates.extend(certs);
                    }
                }
            }
        } else if http && !server_names.is_empty() {
            cx.value(
                f,
                chain.pos,
                "server_names on an HTTP filter chain without TLS is not supported",
            );
        }
        if let Some(cl) = tcp_cluster {
            tcp_terminated.push((terminated, chain.pos));
            if server_names.is_empty() {
                let tp = l.tcp_proxy.get_or_insert(TcpProxy {
                    cluster: None,
                    sni_routes: Vec::new(),
                });
                tp.cluster = Some(cl);
            } else {
                sni_routes.push(sp(SniRoute {
                    server_names,
                    cluster: cl,
                }));
            }
        }
        cx.rest(f, &c, "filter chain");
    }
    // Tern terminates TLS on all of a TCP listener's connections or on none.
    if let Some(&(_, at)) = tcp_terminated.iter().find(|(t, _)| *t != l.tls.is_some()) {
        cx.value(f, at, "TCP proxy chains that terminate TLS and chains that pass it through on one listener are not supported: Tern does the same for every connection of a listener (as the chains with a transport_socket do)");
    }
    if l.route_config.is_some() && (l.tcp_proxy.is_some() || !sni_routes.is_empty()) {
        cx.value(f, n.pos, "a listener with both HTTP and TCP proxy filter chains is not supported; its TCP proxy chains are dropped");
        l.tcp_proxy = None;
        sni_routes.clear();
    }
    if !sni_routes.is_empty() {
        let tp = l.tcp_proxy.get_or_insert(TcpProxy {
            cluster: None,
            sni_routes: Vec::new(),
        });
        tp.sni_routes = sni_routes;
    }
    if let Some(dfc) = o.take("default_filter_chain") {
        cx.value(f, dfc.pos, "default_filter_chain is not supported; give the TCP proxy chain without server_names instead");
    }
    for lf in o
        .take("listener_filters")
        .map(Node::items)
        .unwrap_or_default()
    {
        let Some((ty, cfg, pos)) = cx.typed(f, lf, "listener filter") else {
            continue;
        };
        match ty.as_str() {
            "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol" => {
                let mut cfg = cfg;
                l.proxy_protocol = true;
                if let Some(v) = cfg.take("allow_requests_without_proxy_protocol") {
                    l.allow_requests_without_proxy_protocol = cx
                        .bool(f, v, "allow_requests_without_proxy_protocol")
                        .unwrap_or(false);
                }
                cx.rest(f, &cfg, "proxy_protocol listener filter");
            }
            // Tern reads the ClientHello itself wherever SNI matters.
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => {
                cx.rest(f, &cfg, "tls_inspector");
            }
            _ => cx.type_url(f, pos, "listener filter", &ty, None),
        }
    }
    if let Some(v) = o.take("listener_filters_timeout") {
        l.listener_filters_timeout = cx.dur(f, v, "listener_filters_timeout");
    }
    if let Some(v) = o.take("per_connection_buffer_limit_bytes") {
        l.per_connection_buffer_limit_bytes =
            cx.u32(f, v, "per_connection_buffer_limit_bytes").map(sp);
    }
    if let Some((k, _)) = o.take_kv("traffic_direction") {
        cx.no_effect(
            f,
            k,
            "informational in Envoy too (stats and tracing); Tern does not use it",
        );
    }
    cx.rest(f, &o, "listener");
    if l.route_config.is_none() && l.tcp_proxy.is_none() {
        cx.value(
            f,
            n.pos,
            format!(
                "listener `{}` has no HTTP connection manager or TCP proxy that maps; dropped",
                name.value
            ),
        );
        return None;
    }
    m.listener = l;
    Some(m)
}

/// The HTTP connection manager's config onto the listener.
fn hcm(
    cx: &mut Ctx,
    f: &Path,
    mut h: Obj<'_>,
    l: &mut Listener,
    m: &mut Mapped,
    clusters: &[Cluster],
) {
    if let Some((k, v)) = h.take_kv("stat_prefix") {
        if v.as_str() != Some(l.name.as_str()) {
            cx.no_effect(f, k, "Tern's stats are named by the listener's name");
        }
    }
    if let Some(c) = h.take("codec_type") {
        if !matches!(c.as_enum().as_deref(), Some("AUTO")) {
            cx.value(
                f,
                c.pos,
                "Tern serves HTTP/1.1 and HTTP/2 on every HTTP listener (codec_type AUTO)",
            );
        }
    }
    if let Some(rc) = h.take("route_config") {
        let name = l.name.value.clone();
        if let Some(rc) = cx.item(f, rc.pos, "route configuration", |cx| {
            route::route_config(cx, f, rc, Some(name))
        }) {
            l.route_config = Some(rc.name.clone());
            m.inline_routes = Some(rc);
        }
    } else if let Some(rds) = h.take("rds").and_then(|r| cx.obj(f, r, "rds")) {
        let mut rds = rds;
        if let Some(n) = rds.take("route_config_name") {
            if let Some(s) = cx.str(f, n, "route_config_name") {
                l.route_config = Some(s.clone());
                m.rds = Some((s.value, n.pos));
            }
        }
        // Where RDS comes from is the files given to the import.
        rds.take("config_source");
        cx.rest(f, &rds, "rds");
    } else {
        cx.value(
            f,
            h.pos,
            "HTTP connection manager without route_config or rds (scoped routes are not supported)",
        );
    }
    for (key, slot) in [
        ("request_timeout", &mut l.request_timeout),
        ("request_headers_timeout", &mut l.request_headers_timeout),
        ("stream_idle_timeout", &mut l.stream_idle_timeout),
    ] {
        if let Some(v) = h.take(key) {
            *slot = cx.dur(f, v, key);
        }
    }
    if let Some(mut c) = h
        .take("common_http_protocol_options")
        .and_then(|c| cx.obj(f, c, "common_http_protocol_options"))
    {
        if let Some(v) = c.take("idle_timeout") {
            l.idle_timeout = cx.dur(f, v, "idle_timeout");
        }
        if let Some(v) = c.take("max_headers_count") {
            l.max_headers_count = cx.u32(f, v, "max_headers_count").map(sp);
        }
        cx.rest(f, &c, "common_http_protocol_options");
    }
    if let Some(v) = h.take("max_request_headers_kb") {
        l.max_request_headers_kb = cx.u32(f, v, "max_request_headers_kb").map(sp);
    }
    if let Some(v) = h.take("http2_protocol_options") {
        l.http2_protocol_options = http2_options(cx, f, v).map(sp);
    }
    if let Some(v) = h.take("preserve_external_request_id") {
        l.preserve_external_request_id = cx.bool(f, v, "preserve_external_request_id");
    }
    let use_remote = match h.take("use_remote_address") {
        Some(v) => cx.bool(f, v, "use_remote_address").unwrap_or(false),
        None => false,
    };
    let hops = h
        .take("xff_num_trusted_hops")
        .and_then(|v| cx.u32(f, v, "xff_num_trusted_hops"));
    let skip = match h.take("skip_xff_append") {
        Some(v) => cx.bool(f, v, "skip_xff_append").unwrap_or(false),
        None => false,
    };
    if use_remote {
        l.xff_num_trusted_hops = hops.map(sp);
        l.skip_xff_append = skip;
    } else {
        // Envoy appends the peer to x-forwarded-for only with use_remote_address.
        l.skip_xff_append = true;
        if let Some(v) = hops {
            cx.value(f, h.pos, format!("xff_num_trusted_hops {v} without use_remote_address is not supported: Tern takes the client from the connection (or the trusted hops of x-forwarded-for with use_remote_address)"));
        }
    }
    for u in h
        .take("upgrade_configs")
        .map(Node::items)
        .unwrap_or_default()
    {
        if let Some(u) = cx.item(f, u.pos, "upgrade config", |cx| {
            route::upgrade_config(cx, f, u)
        }) {
            l.upgrade_configs.get_or_insert_with(Vec::new).push(sp(u));
        }
    }
    if let Some(v) = h.take("forward_client_cert_details") {
        l.forward_client_cert_details = match v.as_enum().as_deref() {
            Some("SANITIZE") => Some(ForwardClientCertDetails::Sanitize),
            Some("FORWARD_ONLY") => Some(ForwardClientCertDetails::ForwardOnly),
            Some("APPEND_FORWARD") => Some(ForwardClientCertDetails::AppendForward),
            Some("SANITIZE_SET") => Some(ForwardClientCertDetails::SanitizeSet),
            Some("ALWAYS_FORWARD_ONLY") => Some(ForwardClientCertDetails::AlwaysForwardOnly),
            _ => {
                cx.value(f, v.pos, "unknown forward_client_cert_details");
                None
            }
        }
        .map(sp);
    }
    if let Some(mut s) = h
        .take("set_current_client_cert_details")
        .and_then(|s| cx.obj(f, s, "set_current_client_cert_details"))
    {
        let mut d = SetCurrentClientCertDetails::default();
        for (key, slot) in [
            ("subject", &mut d.subject),
            ("cert", &mut d.cert),
            ("chain", &mut d.chain),
            ("dns", &mut d.dns),
            ("uri", &mut d.uri),
        ] {
            if let Some(v) = s.take(key) {
                *slot = cx.bool(f, v, key).unwrap_or(false);
            }
        }
        cx.rest(f, &s, "set_current_client_cert_details");
        l.set_current_client_cert_details = Some(sp(d));
    }
    for a in h.take("access_log").map(Node::items).unwrap_or_default() {
        if let Some(a) = cx.item(f, a.pos, "access logger", |cx| access_log(cx, f, a)) {
            l.access_log.push(sp(a));
        }
    }
    if let Some(t) = h.take("tracing") {
        l.tracing = tracing(cx, f, t, clusters).map(sp);
    }
    for filter in h.take("http_filters").map(Node::items).unwrap_or_default() {
        let Some((ty, cfg, pos)) = cx.typed(f, filter, "HTTP filter") else {
            continue;
        };
        match ty.as_str() {
            "envoy.extensions.filters.http.router.v3.Router" => {
                cx.rest(f, &cfg, "router");
            }
            // Without settings of their own, these filters only enable the per-route configs.
            "envoy.extensions.filters.http.fault.v3.HTTPFault" => {
                m.filters.fault =
                    route::fault_filter(cx, f, cfg).filter(|x| *x != Default::default());
            }
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
                if cfg.peek("token_bucket").is_none() =>
            {
                let mut cfg = cfg;
                cfg.take("stat_prefix");
                cx.rest(f, &cfg, "local rate limit");
            }
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
                m.filters.rate_limit = route::local_rate_limit(cx, f, cfg, pos);
            }
            _ => cx.type_url(
                f,
                pos,
                "HTTP filter",
                &ty,
                Some("Tern has no such filter; the requests it handled pass unfiltered"),
            ),
        }
    }
    cx.rest(f, &h, "HTTP connection manager");
}

fn tcp_proxy(cx: &mut Ctx, f: &Path, mut c: Obj<'_>) -> Option<Spanned<String>> {
    c.take("stat_prefix");
    let cluster = match c.take("cluster") {
        Some(v) => cx.str(f, v, "cluster"),
        None => {
            if let Some(w) = c.peek("weighted_clusters") {
                cx.value(f, w.pos, "weighted TCP proxy clusters are not supported");
            }
            None
        }
    };
    if let Some(v) = c.take("idle_timeout") {
        cx.value(f, v.pos, "the TCP proxy's idle_timeout is not supported (Tern keeps a TCP tunnel open until a side closes it)");
    }
    cx.rest(f, &c, "TCP proxy");
    cluster
}

/// A listener's `transport_socket`: the `DownstreamTlsContext`.
fn downstream_tls(cx: &mut Ctx, f: &Path, n: &Node) -> Option<ListenerTls> {
    let (ty, mut o, pos) = cx.typed(f, n, "transport socket")?;
    if ty != DOWNSTREAM_TLS {
        cx.type_url(f, pos, "transport socket", &ty, None);
        return None;
    }
    let common = o
        .take("common_tls_context")
        .and_then(|c| common_tls(cx, f, c))?;
    let mut t = ListenerTls {
        certificates: common
            .certs
            .into_iter()
            .map(|(chain, key)| {
                sp(TlsCertificate {
                    certificate_chain: sp(chain),
                    private_key: sp(key),
                    server_names: Vec::new(),
                })
            })
            .collect(),
        client_ca: None,
        require_client_certificate: false,
        min_version: common.min,
        max_version: common.max,
        alpn: (!common.alpn.is_empty()).then_some(common.alpn),
        session_resumption: None,
    };
    if let Some(mut v) = common.validation {
        if let Some(ca) = v.take("trusted_ca") {
            t.client_ca = cx.data_source(f, ca, "trusted_ca").map(sp);
        }
        cx.rest(f, &v, "validation_context");
    }
    if let Some(v) = o.take("require_client_certificate") {
        t.require_client_certificate = cx.bool(f, v, "require_client_certificate").unwrap_or(false);
    }
    if let Some(v) = o.take("disable_stateless_session_resumption") {
        if cx.bool(f, v, "disable_stateless_session_resumption") == Some(true) {
            t.session_resumption = Some(false);
        }
    }
    cx.rest(f, &o, "DownstreamTlsContext");
    if t.certificates.is_empty() {
        cx.value(
            f,
            n.pos,
            "listener TLS without a file-based certificate; dropped",
        );
        return None;
    }
    Some(t)
}

/// An access logger: the file, stdout and stderr loggers with a text format string.
fn access_log(cx: &mut Ctx, f: &Path, n: &Node) -> Option<AccessLog> {
    if let Some(filter) = n.get("filter") {
        cx.value(
            f,
            filter.pos,
            "access log filters are not supported: Tern logs every request; logger dropped",
        );
        return None;
    }
    let (ty, mut o, pos) = cx.typed(f, n, "access logger")?;
    let path = match ty.as_str() {
        "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
            o.take("path").and_then(|p| cx.str(f, p, "path"))?
        }
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
            sp("/dev/stdout".to_string())
        }
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
            sp("/dev/stderr".to_string())
        }
        _ => {
            cx.type_url(f, pos, "access logger", &ty, None);
            return None;
        }
    };
    let mut format = None;
    if let Some(v) = o.take("format") {
        format = cx.str(f, v, "format");
    }
    if let Some(lf) = o
        .take("log_format")
        .and_then(|x| cx.obj(f, x, "log_format"))
    {
        let mut lf = lf;
        if let Some(t) = lf.take("text_format") {
            format = cx.str(f, t, "text_format");
        } else if let Some(src) = lf
            .take("text_format_source")
            .and_then(|x| cx.obj(f, x, "text_format_source"))
        {
            let mut src = src;
            if let Some(s) = src.take("inline_string") {
                format = cx.str(f, s, "inline_string");
            }
            cx.rest(f, &src, "text_format_source");
        } else if let Some(j) = lf.take("json_format") {
            cx.value(f, j.pos, "json_format with its own keys is not supported: Tern's `format: json` has fixed keys; the default line is logged");
        }
        if let Some(v) = lf.take("omit_empty_values") {
            cx.value(f, v.pos, "omit_empty_values is not supported");
        }
        cx.rest(f, &lf, "log_format");
    }
    cx.rest(f, &o, "access logger");
    let format = match format {
        Some(s) => Some(sp(log_format(cx, f, &s.value, pos)?)),
        None => None,
    };
    Some(AccessLog {
        path,
        format,
        buffer_lines: None,
    })
}

/// The HTTP connection manager's `tracing`: sampling, and an OpenTelemetry provider's collector.
fn tracing(cx: &mut Ctx, f: &Path, n: &Node, clusters: &[Cluster]) -> Option<Tracing> {
    let mut o = cx.obj(f, n, "tracing")?;
    let mut t = Tracing::default();
    if let Some(v) = o.take("random_sampling") {
        t.sampling = cx.percent(f, v, "random_sampling").map(|p| sp(p / 100.0));
    }
    for key in ["client_sampling", "overall_sampling"] {
        if let Some(v) = o.take(key) {
            if cx.percent(f, v, key) != Some(100.0) {
                cx.value(
                    f,
                    v.pos,
                    format!("{key} is not supported (Tern samples new traces by one share)"),
                );
            }
        }
    }
    if let Some(p) = o.take("provider") {
        if let Some((ty, mut c, pos)) = cx.typed(f, p, "tracer") {
            if ty == "envoy.config.trace.v3.OpenTelemetryConfig" {
                if let Some(s) = c.take("service_name") {
                    t.service_name = cx.str(f, s, "service_name");
                }
                if let Some(g) = c.take("grpc_service") {
                    let cluster = g
                        .get("envoy_grpc")
                        .and_then(|e| e.get("cluster_name"))
                        .and_then(Node::as_str);
                    match cluster.and_then(|c| clusters.iter().find(|x| x.name.value == c)) {
                        Some(cl) if !cl.endpoints.is_empty() => {
                            let scheme = if cl.tls.is_some() { "https" } else { "http" };
                            t.otlp = Some(sp(Otlp {
                                endpoint: sp(format!("{scheme}://{}", cl.endpoints[0].address.value)),
                                protocol: None,
                                tls: None,
                                headers: Default::default(),
                            }));
                        }
                        _ => cx.unresolved(f, g.pos, "the tracer's gRPC service names no cluster of the input with an endpoint; spans are not exported", "Tern exports to a collector URL: set tracing.otlp.endpoint by hand"),
                    }
                } else if let Some(h) = c.take("http_service") {
                    match h
                        .get("http_uri")
                        .and_then(|u| u.get("uri"))
                        .and_then(Node::as_str)
                    {
                        Some(uri) => {
                            t.otlp = Some(sp(Otlp {
                                endpoint: sp(uri.to_string()),
                                protocol: Some(OtlpProtocol::Http),
                                tls: None,
                                headers: Default::default(),
                            }))
                        }
                        None => cx.value(f, h.pos, "http_service without http_uri.uri"),
                    }
                }
                cx.rest(f, &c, "OpenTelemetry tracer");
            } else {
                cx.type_url(f, pos, "tracer", &ty, Some("Tern exports spans over OTLP only; trace context still propagates (w3c, b3, xray)"));
            }
        }
    }
    cx.rest(f, &o, "tracing");
    Some(t)
}

/// An Envoy access-log format string in Tern's terms: Envoy's line break at the end goes (Tern
/// ends lines itself), and `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%` (Envoy's default: the path before
/// any rewrite) is Tern's `%REQ(:PATH)%`, which is the path as received. Other `A?B` fallbacks
/// are reported.
fn log_format(cx: &mut Ctx, f: &Path, s: &str, at: tern_config::Pos) -> Option<String> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let re = regex::Regex::new(r"(?i)%REQ\(X-ENVOY-ORIGINAL-PATH\?:PATH\)((:[0-9]+)?)%")
        .expect("the pattern compiles");
    let s = re.replace_all(s, "%REQ(:PATH)$1%").into_owned();
    let fallback =
        regex::Regex::new(r"%(REQ|RESP|TRAILER)\([^)]*\?[^)]*\)").expect("the pattern compiles");
    if let Some(m) = fallback.find(&s) {
        cx.value(f, at, format!("access log operator `{}` with a fallback header (`A?B`) is not supported; the logger is dropped", m.as_str()));
        return None;
    }
    Some(s)
}

/// [`log_format`] for the mapping tests.
#[cfg(test)]
pub(crate) fn tests_log_format(cx: &mut Ctx, f: &Path, s: &str) -> Option<String> {
    log_format(cx, f, s, tern_config::Pos::default())
}
