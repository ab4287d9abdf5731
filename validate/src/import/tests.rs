//! Mapping tests: small Envoy documents in, Tern model values and diagnostics out.

use super::*;
use tern_config::{AppendAction, ClusterProtocol, RateUnit};

/// Imports the documents `(file name, text)`.
fn import(docs: &[(&str, &str)]) -> (Imported, Ctx) {
    let trees: Vec<(PathBuf, Node)> = docs
        .iter()
        .map(|(p, t)| {
            (
                PathBuf::from(p),
                tree::parse(t, &Limits::default()).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&Path, &Node)> = trees.iter().map(|(p, n)| (p.as_path(), n)).collect();
    let mut cx = Ctx::default();
    let out = map(&mut cx, &refs);
    (out, cx)
}

fn codes_at(cx: &Ctx) -> Vec<String> {
    cx.diags
        .iter()
        .map(|d| format!("{}:{}:{} {}", d.file.display(), d.line, d.column, d.code))
        .collect()
}

fn hcm(extra: &str, routes: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: web
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 8080 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
{extra}
          route_config:
            name: rc
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
{routes}
"#
    )
}

const ROUTER: &str = r#"          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#;

#[test]
fn extensions_without_settings_may_be_named_alone() {
    let routes = "              - match: { prefix: / }\n                route: { cluster: app }";
    let filters = "          http_filters:\n          - name: envoy.filters.http.router\n          - name: envoy.filters.http.cors";
    let (out, cx) = import(&[("e.yaml", &hcm(filters, routes))]);
    assert_eq!(codes_at(&cx), ["e.yaml:13:13 I003"]);
    assert_eq!(out.listeners.len(), 1);
}

#[test]
fn a_simple_listener_route_and_cluster_map_whole() {
    let routes = "              - match: { prefix: / }\n                route: { cluster: app, timeout: 2s }";
    let (out, cx) = import(&[("envoy.yaml", &hcm(ROUTER, routes))]);
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    assert_eq!(out.listeners.len(), 1);
    let l = &out.listeners[0];
    assert_eq!(l.from, "envoy.yaml:3:5");
    assert_eq!(l.value.address.to_string(), "0.0.0.0:8080");
    assert_eq!(l.value.route_config.as_ref().unwrap().value, "rc");
    let rc = &out.route_configs[0].value;
    let r = &rc.virtual_hosts[0].routes[0];
    assert_eq!(r.matcher.prefix.as_ref().unwrap().value, "/");
    let a = r.route.as_ref().unwrap();
    assert_eq!(a.cluster.as_ref().unwrap().value, "app");
    assert_eq!(
        a.timeout.as_ref().unwrap().value.0,
        std::time::Duration::from_secs(2)
    );
}

#[test]
fn unmapped_fields_filters_and_values_are_reported_where_they_are() {
    let extra = r#"          generate_request_id: false
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, grpc_service: {} }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#;
    let routes = "              - match: { prefix: /, case_sensitive: false }\n                route: { cluster: app, regex_rewrite: { pattern: { regex: x }, substitution: y } }";
    let (out, cx) = import(&[("e.yaml", &hcm(extra, routes))]);
    let got = codes_at(&cx);
    assert!(got.contains(&"e.yaml:11:11 I001".to_string()), "{got:?}");
    assert!(got.contains(&"e.yaml:14:27 I002".to_string()), "{got:?}");
    assert!(
        got.iter()
            .any(|g| g.starts_with("e.yaml:23:") && g.ends_with("I003")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("e.yaml:24:") && g.ends_with("I001")),
        "{got:?}"
    );
    assert_eq!(cx.dropped, 4);
    assert!(cx
        .diags
        .iter()
        .filter(|d| d.code != codes::NO_EFFECT)
        .all(|d| d.is_error()));
    // The rest still maps.
    assert_eq!(out.route_configs[0].value.virtual_hosts[0].routes.len(), 1);
}

#[test]
fn allow_partial_makes_drops_warnings() {
    let routes = "              - match: { prefix: / }\n                route: { cluster: app, auto_host_rewrite: true }";
    let trees = [(
        PathBuf::from("e.yaml"),
        tree::parse(&hcm(ROUTER, routes), &Limits::default()).unwrap(),
    )];
    let refs: Vec<(&Path, &Node)> = trees.iter().map(|(p, n)| (p.as_path(), n)).collect();
    let mut cx = Ctx {
        allow_partial: true,
        ..Default::default()
    };
    map(&mut cx, &refs);
    assert_eq!(cx.dropped, 1);
    assert!(cx.diags.iter().all(|d| !d.is_error()), "{:?}", cx.diags);
}

#[test]
fn rds_and_eds_resolve_across_files_or_are_reported() {
    let lds = r#"resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: l
  address: { socket_address: { address: 127.0.0.1, port_value: 80 } }
  filter_chains:
  - filters:
    - name: hcm
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: l
        rds: { route_config_name: main, config_source: { path_config_source: { path: /etc/envoy/rds.yaml } } }
        http_filters:
        - name: envoy.filters.http.router
          typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let rds = r#"resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: main
  virtual_hosts: [{ name: a, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: svc } }] }]
"#;
    let cds = r#"resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: svc
  type: EDS
  eds_cluster_config: { service_name: svc-v1, eds_config: { path_config_source: { path: eds.yaml } } }
"#;
    let eds = r#"{"resources": [{"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
  "cluster_name": "svc-v1",
  "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "10.0.0.7", "port_value": "8080"}}}, "load_balancing_weight": 3}]}]}]}
"#;
    let (out, cx) = import(&[
        ("lds.yaml", lds),
        ("rds.yaml", rds),
        ("cds.yaml", cds),
        ("eds.json", eds),
    ]);
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    assert_eq!(out.route_configs[0].from, "rds.yaml:2:3");
    let ep = &out.clusters[0].value.endpoints[0];
    assert_eq!((ep.address.value.as_str(), ep.weight), ("10.0.0.7:8080", 3));

    let (_, cx) = import(&[("lds.yaml", lds), ("cds.yaml", cds)]);
    let got = codes_at(&cx);
    assert!(got.contains(&"lds.yaml:11:35 I004".to_string()), "{got:?}");
    assert!(got.contains(&"cds.yaml:2:3 I004".to_string()), "{got:?}");
}

#[test]
fn header_rules_retries_and_filters_keep_envoy_semantics() {
    let extra = r#"          use_remote_address: true
          xff_num_trusted_hops: 1
          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: { max_tokens: 20, tokens_per_fill: 5, fill_interval: 0.5s }
              filter_enabled: { default_value: { numerator: 100 }, runtime_key: a }
              filter_enforced: { default_value: { numerator: 100 }, runtime_key: b }
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { http_status: 503, percentage: { numerator: 5, denominator: TEN_THOUSAND } }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#;
    let routes = r#"              - match: { path_separated_prefix: /api, headers: [{ name: x-v, string_match: { suffix: ".2", ignore_case: true } }], grpc: {} }
                request_headers_to_add: [{ header: { key: x-a, value: "1" }, append: false }]
                response_headers_to_remove: [server]
                route:
                  cluster: app
                  retry_policy: { retry_on: 5xx, num_retries: 2, per_try_timeout: 0.25s }"#;
    let (out, cx) = import(&[("e.yaml", &hcm(extra, routes))]);
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    let l = &out.listeners[0].value;
    assert_eq!(l.xff_num_trusted_hops.as_ref().unwrap().value, 1);
    assert!(!l.skip_xff_append);
    let vh = &out.route_configs[0].value.virtual_hosts[0];
    let rl = vh.rate_limit.as_ref().unwrap();
    assert_eq!(
        (
            rl.requests_per_unit.value,
            rl.unit,
            rl.burst.as_ref().unwrap().value
        ),
        (10, RateUnit::Second, 20)
    );
    let abort = vh.fault.as_ref().unwrap().abort.as_ref().unwrap();
    assert_eq!(abort.percentage.as_ref().unwrap().value, 0.05);
    let r = &vh.routes[0];
    let re = r.matcher.regex.as_ref().unwrap();
    assert!(re.is_match("/api") && re.is_match("/api/x") && !re.is_match("/apix"));
    let hv = &r.matcher.headers[0];
    assert!(
        hv.regex.as_ref().unwrap().is_match("A.2") && !hv.regex.as_ref().unwrap().is_match("a-2")
    );
    assert_eq!(
        r.matcher.headers[1].prefix.as_deref(),
        Some("application/grpc")
    );
    assert_eq!(
        r.request_headers_to_add[0].append_action,
        Some(AppendAction::OverwriteIfExistsOrAdd)
    );
    assert_eq!(r.response_headers_to_remove[0].value, "server");
    let rp = r.route.as_ref().unwrap().retry_policy.as_ref().unwrap();
    assert!(rp.retry_non_idempotent, "Envoy retries every method");
    assert_eq!(rp.num_retries.as_ref().unwrap().value, 2);
}

#[test]
fn a_rate_limit_envoy_leaves_off_is_not_turned_on() {
    let extra = r#"          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: { max_tokens: 20, fill_interval: 1s }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#;
    let routes = "              - match: { prefix: / }\n                route: { cluster: app }";
    let (out, cx) = import(&[("e.yaml", &hcm(extra, routes))]);
    assert_eq!(
        codes_at(&cx).iter().filter(|c| c.ends_with("I003")).count(),
        1
    );
    assert!(out.route_configs[0].value.virtual_hosts[0]
        .rate_limit
        .is_none());
}

#[test]
fn clusters_map_tls_http2_breakers_outliers_and_health_checks() {
    let cds = r#"static_resources:
  clusters:
  - name: up
    type: STRICT_DNS
    connect_timeout: 0.5s
    lb_policy: LEAST_REQUEST
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: up
      endpoints:
      - locality: { zone: us-east-1a }
        lb_endpoints:
        - endpoint: { address: { socket_address: { address: up.internal, port_value: 443 } } }
    circuit_breakers:
      thresholds:
      - { priority: DEFAULT, max_connections: 100, max_retries: 5, retry_budget: { budget_percent: { value: 25 } } }
    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 10s, max_ejection_percent: 50 }
    health_checks:
    - timeout: 1s
      interval: 5s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: { path: /health, expected_statuses: [{ start: 200, end: 205 }] }
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: { max_concurrent_streams: 50 } }
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: up.internal
        common_tls_context:
          validation_context:
            trusted_ca: { filename: /etc/ssl/ca.pem }
            match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: up.internal } }]
"#;
    let (out, cx) = import(&[("c.yaml", cds)]);
    // Everything maps; the locality is a note.
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    assert_eq!(codes_at(&cx), ["c.yaml:11:9 I005"]);
    let c = &out.clusters[0].value;
    assert_eq!(c.endpoints[0].address.value, "up.internal:443");
    assert_eq!(c.protocol.as_ref().unwrap().value, ClusterProtocol::Http2);
    assert_eq!(
        c.http2_protocol_options
            .as_ref()
            .unwrap()
            .max_concurrent_streams
            .as_ref()
            .unwrap()
            .value,
        50
    );
    let cb = c.circuit_breakers.as_ref().unwrap();
    assert_eq!(cb.max_connections.as_ref().unwrap().value, 100);
    assert_eq!(
        cb.retry_budget
            .as_ref()
            .unwrap()
            .budget_percent
            .as_ref()
            .unwrap()
            .value,
        25.0
    );
    assert_eq!(
        c.outlier_detection.as_ref().unwrap().consecutive_5xx,
        Some(3)
    );
    assert_eq!(
        c.health_checks[0]
            .http
            .as_ref()
            .unwrap()
            .expected_statuses
            .len(),
        5
    );
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(
        tls.ca.as_ref().unwrap().file.as_ref().unwrap().value,
        "/etc/ssl/ca.pem"
    );
    assert_eq!(tls.verify_subject_alt_names[0].value, "up.internal");
    assert!(!tls.skips_verification());
}

#[test]
fn tls_without_validation_context_is_marked_unverified_like_envoy() {
    let cds = r#"static_resources:
  clusters:
  - name: up
    load_assignment: { cluster_name: up, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 443 } } } }] }] }
    transport_socket:
      name: tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates: [{ certificate_chain: { inline_string: "PEM" }, private_key: { filename: /k.pem } }]
"#;
    let (out, cx) = import(&[("c.yaml", cds)]);
    assert!(out.clusters[0]
        .value
        .tls
        .as_ref()
        .unwrap()
        .skips_verification());
    // Inline key material is not written into the generated files.
    assert_eq!(codes_at(&cx), ["c.yaml:10:53 I003"]);
}

#[test]
fn files_that_are_not_envoy_configuration_are_reported() {
    let (_, cx) = import(&[
        ("a.yaml", "listeners: []\n"),
        ("b.yaml", "- 1\n"),
        (
            "c.yaml",
            "resources: [{ \"@type\": x/envoy.config.core.v3.TypedExtensionConfig }]\n",
        ),
    ]);
    assert_eq!(
        codes_at(&cx),
        ["a.yaml:1:1 I006", "b.yaml:1:1 I006", "c.yaml:1:13 I002"]
    );
}

#[test]
fn rendered_files_carry_their_origin_and_load() {
    let routes = "              - match: { prefix: / }\n                route: { cluster: app }";
    let mut doc = hcm(ROUTER, routes);
    doc.push_str("  clusters:\n  - name: app\n    load_assignment: { cluster_name: app, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9000 } } } }] }] }\n");
    let (out, _) = import(&[("e.yaml", &doc)]);
    let files = render(&out).unwrap();
    let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(names, ["listeners.yaml", "routes/rc.yaml", "clusters.yaml"]);
    assert!(
        files[0]
            .1
            .contains("  # from envoy: e.yaml:3:5\n  - name: web\n"),
        "{}",
        files[0].1
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &files).unwrap();
    let report = tern_config::load(dir.path());
    assert_eq!(report.error_count(), 0, "{:?}", report.diagnostics);
    // A second import replaces the first; a file someone wrote stops it.
    write(dir.path(), &files).unwrap();
    std::fs::write(dir.path().join("mine.yaml"), "clusters: []\n").unwrap();
    assert!(write(dir.path(), &files).unwrap_err().contains("mine.yaml"));
}

#[test]
fn listener_tls_sni_tcp_routes_and_proxy_protocol_map() {
    let lds = r#"static_resources:
  listeners:
  - name: tls
    address: { socket_address: { address: "::", port_value: 443 } }
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }
    - name: envoy.filters.listener.proxy_protocol
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol }
    filter_chains:
    - filter_chain_match: { server_names: [a.example.com] }
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: { tls_minimum_protocol_version: TLSv1_3 }
            tls_certificates: [{ certificate_chain: { filename: /etc/tls/a.pem }, private_key: { filename: /etc/tls/a.key } }]
            validation_context: { trusted_ca: { filename: /etc/tls/ca.pem } }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: a }
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: { tls_minimum_protocol_version: TLSv1_3 }
            tls_certificates: [{ certificate_chain: { filename: /etc/tls/any.pem }, private_key: { filename: /etc/tls/any.key } }]
            validation_context: { trusted_ca: { filename: /etc/tls/ca.pem } }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: rest, cluster: rest }
"#;
    let (out, cx) = import(&[("l.yaml", lds)]);
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    let l = &out.listeners[0].value;
    assert_eq!(l.address.to_string(), "[::]:443");
    assert!(l.proxy_protocol);
    let tls = l.tls.as_ref().unwrap();
    assert!(tls.require_client_certificate);
    assert_eq!(
        tls.client_ca.as_ref().unwrap().file.as_ref().unwrap().value,
        "/etc/tls/ca.pem"
    );
    // The chain without server names is Envoy's fallback: Tern's is the first certificate.
    let keys: Vec<(&str, usize)> = tls
        .certificates
        .iter()
        .map(|c| {
            (
                c.private_key.file.as_ref().unwrap().value.as_str(),
                c.server_names.len(),
            )
        })
        .collect();
    assert_eq!(keys, [("/etc/tls/any.key", 0), ("/etc/tls/a.key", 1)]);
    assert_eq!(
        tls.min_version.as_ref().unwrap().value,
        tern_config::TlsVersion::TlsV1_3
    );
    let tp = l.tcp_proxy.as_ref().unwrap();
    assert_eq!(tp.cluster.as_ref().unwrap().value, "rest");
    assert_eq!(tp.sni_routes[0].server_names[0].value, "a.example.com");
    assert_eq!(tp.sni_routes[0].cluster.value, "a");
}

#[test]
fn access_log_formats_keep_envoy_meaning() {
    let mut cx = Ctx::default();
    let f = Path::new("a.yaml");
    let got = listener::tests_log_format(
        &mut cx,
        f,
        "[%START_TIME%] %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE%\n",
    );
    assert_eq!(
        got.as_deref(),
        Some("[%START_TIME%] %REQ(:PATH)% %RESPONSE_CODE%")
    );
    assert_eq!(cx.dropped, 0);
    assert_eq!(
        listener::tests_log_format(&mut cx, f, "%REQ(X-A?X-B)%"),
        None
    );
    assert_eq!(codes_at(&cx), ["a.yaml:0:0 I003"]);
}

#[test]
fn an_http_listener_with_a_chain_per_server_name_gets_one_certificate_per_name() {
    let chain = |names: &str, cert: &str| {
        format!(
            r#"    - {names}
      transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{ certificate_chain: {{ filename: /c/{cert}.pem }}, private_key: {{ filename: /c/{cert}.key }} }}]
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          rds: {{ route_config_name: main }}
          http_filters: [{{ name: r, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
"#
        )
    };
    let lds = format!(
        "static_resources:\n  listeners:\n  - name: web\n    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 443 }} }}\n    filter_chains:\n{}{}{}",
        chain("filter_chain_match: { server_names: [a.example.com] }", "a"),
        chain("filter_chain_match: { server_names: [\"*.b.example.com\"] }", "b"),
        chain("filter_chain_match: {}", "default"),
    );
    let rds = "resources:\n- { \"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration, name: main }\n";
    let (out, cx) = import(&[("l.yaml", &lds), ("r.yaml", rds)]);
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    let certs: Vec<(String, Vec<String>)> = out.listeners[0]
        .value
        .tls
        .as_ref()
        .unwrap()
        .certificates
        .iter()
        .map(|c| {
            (
                c.certificate_chain.file.as_ref().unwrap().value.clone(),
                c.server_names.iter().map(|s| s.value.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        certs,
        [
            ("/c/default.pem".to_string(), vec![]),
            ("/c/a.pem".to_string(), vec!["a.example.com".to_string()]),
            ("/c/b.pem".to_string(), vec!["*.b.example.com".to_string()]),
        ]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Damaged Envoy files (lines dropped, repeated or cut) are reported, never a panic.
    #[test]
    fn damaged_input_never_panics(cuts in proptest::collection::vec((0usize..200, 0u8..3, 0usize..40), 1..6)) {
        let setups = [
            include_str!("../../tests/envoy/bootstrap/envoy.yaml"),
            include_str!("../../tests/envoy/appmesh/lds.yaml"),
            include_str!("../../tests/envoy/appmesh/cds.yaml"),
            include_str!("../../tests/envoy/unsupported/envoy.yaml"),
        ];
        for text in setups {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            for &(at, op, len) in &cuts {
                let i = at % lines.len().max(1);
                match op {
                    0 if !lines.is_empty() => { lines.remove(i); }
                    1 if !lines.is_empty() => { let l = lines[i].clone(); lines.insert(i, l); }
                    _ if !lines.is_empty() => {
                        let l = &mut lines[i];
                        let mut cut = len.min(l.len());
                        while !l.is_char_boundary(cut) { cut -= 1; }
                        l.truncate(cut);
                    }
                    _ => {}
                }
            }
            let damaged = lines.join("\n");
            if let Ok(n) = tree::parse(&damaged, &Limits::default()) {
                let mut cx = Ctx::default();
                let out = map(&mut cx, &[(Path::new("x.yaml"), &n)]);
                let _ = render(&out);
            }
        }
    }
}

#[test]
fn a_route_whose_match_cannot_be_expressed_is_dropped_not_widened() {
    let routes = r#"              - match: { prefix: /a, headers: [{ name: x-n, range_match: { start: 1, end: 9 } }] }
                route: { cluster: narrow }
              - match: { prefix: /b, runtime_fraction: { default_value: { numerator: 5 } } }
                route: { cluster: narrow }
              - match: { prefix: /, headers: [{ name: x-v, exact_match: "1" }] }
                per_request_buffer_limit_bytes: 1024
                route: { cluster: wide }"#;
    let (out, cx) = import(&[("e.yaml", &hcm(ROUTER, routes))]);
    let got = codes_at(&cx);
    // The unknown parts, and each route they were in.
    assert_eq!(
        got.iter().filter(|g| g.ends_with("I001")).count(),
        2,
        "{got:?}"
    );
    assert_eq!(
        got.iter().filter(|g| g.ends_with("I003")).count(),
        2,
        "{got:?}"
    );
    let routes = &out.route_configs[0].value.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].matcher.headers[0].exact.as_deref(), Some("1"));
    assert_eq!(
        routes[0]
            .route
            .as_ref()
            .unwrap()
            .per_request_buffer_limit_bytes,
        Some(1024)
    );
}

#[test]
fn envoy_loader_leniencies_are_followed() {
    // No listener name, lower-case enums, a single object where a list belongs, a router named
    // with an empty typed_config, an admin log to /dev/null.
    let doc = r#"static_resources:
  listeners:
  - address: { socket_address: { address: 0.0.0.0, port_value: 8080 } }
    filter_chains:
    - filters:
        name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          codec_type: auto
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: / }
                redirect: { response_code: temporary_redirect, https_redirect: true }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {}
  clusters:
  - name: s
    type: strict_dns
    lb_policy: round_robin
    load_assignment:
      cluster_name: s
      endpoints:
      - lb_endpoints:
          endpoint: { address: { socket_address: { address: service1, port_value: 8000 } } }
admin:
  access_log_path: /dev/null
  address: { socket_address: { address: 127.0.0.1, port_value: 8001 } }
"#;
    let (out, cx) = import(&[("e.yaml", doc)]);
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    let l = &out.listeners[0].value;
    assert_eq!(l.name.value, "listener_8080");
    assert_eq!(l.route_config.as_ref().unwrap().value, "listener_8080");
    let r = &out.route_configs[0].value.virtual_hosts[0].routes[0];
    assert_eq!(
        r.redirect
            .as_ref()
            .unwrap()
            .response_code
            .as_ref()
            .unwrap()
            .value,
        307
    );
    let c = &out.clusters[0].value;
    assert_eq!(
        c.discovery.as_ref().unwrap().value,
        tern_config::DiscoveryType::StrictDns
    );
    assert_eq!(c.endpoints[0].address.value, "service1:8000");
}

#[test]
fn an_item_missing_what_it_needs_is_reported_not_lost() {
    let routes = "              - match: { prefix: / }\n                route: { cluster: app }\n              - route: { cluster: app }";
    let (out, cx) = import(&[("e.yaml", &hcm(ROUTER, routes))]);
    assert_eq!(codes_at(&cx), ["e.yaml:22:17 I003"]);
    assert!(
        cx.diags[0].message.contains("route dropped"),
        "{}",
        cx.diags[0].message
    );
    assert_eq!(out.route_configs[0].value.virtual_hosts[0].routes.len(), 1);
}

#[test]
fn tcp_chains_that_terminate_and_pass_through_tls_on_one_listener_are_reported() {
    let lds = r#"static_resources:
  listeners:
  - name: mixed
    address: { socket_address: { address: 0.0.0.0, port_value: 443 } }
    filter_chains:
    - filter_chain_match: { server_names: [a.example.com] }
      transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context: { tls_certificates: [{ certificate_chain: { filename: /a.pem }, private_key: { filename: /a.key } }] }
      filters: [{ name: t, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: a } }]
    - filter_chain_match: { server_names: [b.example.com] }
      filters: [{ name: t, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: b, cluster: b } }]
"#;
    let (_, cx) = import(&[("l.yaml", lds)]);
    assert_eq!(codes_at(&cx), ["l.yaml:13:7 I003"]);
}

#[test]
fn retry_conditions_tern_lacks_are_dropped_and_a_policy_left_with_none_goes() {
    let routes = r#"              - match: { prefix: /a }
                route: { cluster: app, retry_policy: { retry_on: "5xx,retriable-headers", num_retries: 2 } }
              - match: { prefix: /b }
                route: { cluster: app, retry_policy: { retry_on: "reset-before-request" } }
              - match: { prefix: /c }
                route: { cluster: app, retry_policy: { num_retries: 2 } }"#;
    let (out, cx) = import(&[("e.yaml", &hcm(ROUTER, routes))]);
    assert_eq!(codes_at(&cx).len(), 4, "{:?}", codes_at(&cx));
    let routes = &out.route_configs[0].value.virtual_hosts[0].routes;
    let a = routes[0]
        .route
        .as_ref()
        .unwrap()
        .retry_policy
        .as_ref()
        .unwrap();
    assert_eq!(a.retry_on.as_ref().unwrap().value, "5xx");
    assert!(routes[1].route.as_ref().unwrap().retry_policy.is_none());
    assert!(routes[2].route.as_ref().unwrap().retry_policy.is_none());
}

#[test]
fn cluster_dns_resolvers_become_the_one_dns_resolver() {
    let cds = r#"static_resources:
  clusters:
  - name: a
    type: STRICT_DNS
    dns_resolvers: [{ socket_address: { address: 10.0.0.2, port_value: 53 } }]
    load_assignment: { cluster_name: a, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.internal, port_value: 80 } } } }] }] }
  - name: b
    type: STRICT_DNS
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{ socket_address: { address: 10.0.0.3, port_value: 53 } }]
    load_assignment: { cluster_name: b, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: b.internal, port_value: 80 } } } }] }] }
"#;
    let (out, cx) = import(&[("c.yaml", cds)]);
    assert_eq!(codes_at(&cx), ["c.yaml:9:5 I003"]);
    let dns = out.dns.as_ref().unwrap();
    assert_eq!(dns.from, "c.yaml:5:5");
    assert_eq!(dns.value.resolvers[0].value, "10.0.0.2:53");
    let files = render(&out).unwrap();
    assert!(
        files
            .iter()
            .any(|(p, t)| p == Path::new("dns.yaml") && t.contains("- 10.0.0.2:53")),
        "{files:?}"
    );
}

#[test]
fn header_controlled_faults_map_with_the_header_names_pointed_out() {
    let extra = r#"          http_filters:
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { header_abort: {}, percentage: { numerator: 100 } }
              delay: { header_delay: {}, percentage: { numerator: 50 } }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }"#;
    let routes = "              - { match: { prefix: / }, route: { cluster: app } }";
    let (out, cx) = import(&[("e.yaml", &hcm(extra, routes))]);
    assert_eq!(cx.dropped, 0, "{:?}", codes_at(&cx));
    let fault = out.route_configs[0].value.virtual_hosts[0]
        .fault
        .as_ref()
        .unwrap();
    assert!(fault.header_controlled);
    let notes: Vec<&str> = cx
        .diags
        .iter()
        .filter(|d| d.code == "I007")
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes
        .iter()
        .any(|m| m.contains("x-tern-fault-abort-request")));
    assert!(notes
        .iter()
        .any(|m| m.contains("x-tern-fault-delay-request")));
}

#[test]
fn header_rule_order_is_pointed_out_only_where_it_differs() {
    let rc = |wins: &str| {
        format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n  name: rc\n  most_specific_header_mutations_wins: {wins}\n  virtual_hosts: []\n"
        )
    };
    let (_, same) = import(&[("rds.yaml", &rc("true"))]);
    assert!(same.diags.is_empty(), "{:?}", codes_at(&same));
    let (_, differs) = import(&[("rds.yaml", &rc("false"))]);
    assert_eq!(codes_at(&differs), ["rds.yaml:4:3 I007"]);
    assert_eq!(differs.dropped, 0);
}

#[test]
fn dynamic_resources_read_the_files_given_with_the_bootstrap() {
    let boot = r#"dynamic_resources:
  lds_config: { path_config_source: { path: /etc/envoy/lds.yaml }, resource_api_version: V3 }
  cds_config: { path: /etc/envoy/cds.yaml }
"#;
    let lds = "resources: []\n";
    let (_, given) = import(&[("b.yaml", boot), ("lds.yaml", lds), ("cds.yaml", lds)]);
    assert!(given.diags.is_empty(), "{:?}", codes_at(&given));
    let (_, missing) = import(&[("b.yaml", boot), ("lds.yaml", lds)]);
    assert_eq!(codes_at(&missing), ["b.yaml:3:15 I004"]);
    let ads = "dynamic_resources:\n  cds_config: { ads: {} }\n";
    let (_, control_plane) = import(&[("b.yaml", ads)]);
    assert_eq!(codes_at(&control_plane), ["b.yaml:2:15 I003"]);
}
