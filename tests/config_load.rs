//! Loading split configurations: merging, positions, and errors across files.

use std::fs;
use std::path::Path;

use tern_config::{self as config, Severity};
use tern_testkit::ConfigDir;

#[test]
fn quickstart_loads() {
    let r = config::load(Path::new("config-examples/quickstart"));
    assert_eq!(r.error_count(), 0, "{:#?}", r.diagnostics);
    let c = r.config.unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.clusters[0].value.name.as_str(), "api");
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
}

#[test]
fn duplicates_name_both_files_and_lines() {
    let d = ConfigDir::with_files(&[
        ("a.yaml", "clusters:\n  - name: api\n    endpoints: []\n"),
        ("sub/b.yml", "# b\nclusters:\n  - name: api\n"),
    ]);
    let r = config::load(d.path());
    assert!(r.config.is_none());
    let e = &r.diagnostics[0];
    assert_eq!(e.code, "E005");
    assert!(e.file.ends_with("sub/b.yml"));
    assert_eq!((e.line, e.column), (3, 11));
    assert!(e.related[0].file.ends_with("a.yaml"));
    assert_eq!(e.related[0].line, 2);
}

#[test]
fn dangling_reference_at_referencing_line_and_typo_suggestion() {
    let d = ConfigDir::with_files(&[(
        "x.yaml",
        "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    route_config: mian\nroute_configs:\n  - name: main\n    virtual_hosts: []\n",
    )]);
    let r = config::load(d.path());
    let e = &r.diagnostics[0];
    assert_eq!((e.code, e.line, e.column), ("E006", 4, 19));
    assert_eq!(e.help.as_deref(), Some("did you mean `main`?"));
}

#[test]
fn unknown_field_and_bad_duration_are_located() {
    let d = ConfigDir::with_files(&[
        ("a.yaml", "clusters:\n  - name: a\n    conect_timeout: 1s\n"),
        ("b.yaml", "clusters:\n  - name: b\n    connect_timeout: 5\n"),
    ]);
    let r = config::load(d.path());
    let codes: Vec<_> = r
        .diagnostics
        .iter()
        .map(|d| (d.code, d.line, d.column))
        .collect();
    assert_eq!(codes, vec![("E002", 3, 5), ("E004", 3, 22)]);
    assert_eq!(
        r.diagnostics[0].help.as_deref(),
        Some("did you mean `connect_timeout`?")
    );
}

#[test]
fn two_listeners_on_one_address() {
    let d = ConfigDir::with_files(&[(
        "a.yaml",
        "listeners:\n  - { name: a, address: 0.0.0.0:8080, tcp_proxy: { cluster: c } }\n  - { name: b, address: 127.0.0.1:8080, tcp_proxy: { cluster: c } }\nclusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1 }]\n",
    )]);
    let r = config::load(d.path());
    assert_eq!(r.diagnostics.len(), 1, "{:#?}", r.diagnostics);
    assert_eq!(r.diagnostics[0].code, "E007");
    assert_eq!(r.diagnostics[0].line, 3);
}

#[test]
fn hidden_files_skipped_empty_file_warns() {
    let d = ConfigDir::with_files(&[
        (".hidden.yaml", "this: is: not: yaml"),
        ("empty.yaml", "# nothing\n"),
        ("c.yaml", "clusters: [{ name: c }]\n"),
    ]);
    let r = config::load(d.path());
    assert!(r.config.is_some(), "{:#?}", r.diagnostics);
    assert_eq!(r.diagnostics.len(), 1);
    assert_eq!(r.diagnostics[0].severity, Severity::Warning);
    assert_eq!(r.diagnostics[0].code, "W001");
}

#[test]
fn version_changes_with_content_only() {
    let d = ConfigDir::with_files(&[("c.yaml", "clusters: [{ name: c }]\n")]);
    let v1 = config::load(d.path()).version.unwrap();
    assert_eq!(v1, config::load(d.path()).version.unwrap());
    fs::write(d.path().join("c.yaml"), "clusters: [{ name: d }]\n").unwrap();
    assert_ne!(v1, config::load(d.path()).version.unwrap());
}

fn codes_of(yaml: &str) -> Vec<(&'static str, u32, u32, String)> {
    let d = ConfigDir::with_files(&[("x.yaml", yaml)]);
    config::load(d.path())
        .diagnostics
        .into_iter()
        .map(|d| (d.code, d.line, d.column, d.help.unwrap_or_default()))
        .collect()
}

#[test]
fn resilience_values_are_checked_where_written() {
    let base = "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1 }]\n";
    // Unknown retry condition, with a suggestion.
    let r = codes_of(&format!(
        "{base}route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: c, retry_policy: {{ retry_on: \"5xx,gateway-eror\" }} }}\n"
    ));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0].0, r[0].1), ("E004", 11));
    assert_eq!(r[0].3, "did you mean `gateway-error`?");
    // cluster and weighted_clusters together; a fault percentage out of range.
    let r = codes_of(&format!(
        "{base}route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: c, weighted_clusters: {{ clusters: [{{ name: c, weight: 1 }}] }} }}\n            fault: {{ abort: {{ http_status: 503, percentage: 150 }} }}\n"
    ));
    let codes: Vec<_> = r.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(codes, vec![("E004", 11), ("E004", 12)], "{r:?}");
    // A weighted cluster that does not exist is a dangling reference at its own line.
    let r = codes_of(&format!(
        "{base}route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route:\n              weighted_clusters:\n                clusters:\n                  - {{ name: c, weight: 9 }}\n                  - {{ name: nope, weight: 1 }}\n"
    ));
    assert_eq!(
        r.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
        vec![("E006", 15)]
    );
    // Health check with both kinds, timeout above interval; breaker limit 0; budget 120 %.
    let r = codes_of(
        "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1 }]\n    circuit_breakers: { max_requests: 0, retry_budget: { budget_percent: 120 } }\n    health_checks:\n      - { timeout: 2s, interval: 1s, unhealthy_threshold: 2, healthy_threshold: 1, http: { path: /h }, tcp: {} }\n",
    );
    let lines: Vec<_> = r.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(
        lines,
        vec![("E004", 4), ("E004", 4), ("E004", 6), ("E004", 6)],
        "{r:?}"
    );
    // gRPC: a fault abort with both statuses and one out of range; max_stream_duration with a
    // bad duration; a health check with two kinds (`grpc` is accepted for grpc_health_check) and
    // a bad authority.
    let r = codes_of(&format!(
        "{base}route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: /a }}\n            route: {{ cluster: c, max_stream_duration: {{ grpc_timeout_header_max: 1s }} }}\n            fault: {{ abort: {{ http_status: 503, grpc_status: 14 }} }}\n          - match: {{ prefix: /b }}\n            route: {{ cluster: c }}\n            fault: {{ abort: {{ grpc_status: 17 }} }}\n"
    ));
    let lines: Vec<_> = r.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(lines, vec![("E004", 12), ("E004", 15)], "{r:?}");
    let r = codes_of(&format!(
        "{base}route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: c, max_stream_duration: {{ grpc_timeout_header_offset: 1x }} }}\n"
    ));
    assert_eq!(
        r.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
        vec![("E004", 11)],
        "{r:?}"
    );
    let r = codes_of(
        "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1 }]\n    health_checks:\n      - { timeout: 1s, interval: 1s, unhealthy_threshold: 2, healthy_threshold: 1, tcp: {}, grpc: { service_name: s } }\n      - { timeout: 1s, interval: 1s, unhealthy_threshold: 2, healthy_threshold: 1, grpc_health_check: { authority: \"a b\" } }\n",
    );
    let lines: Vec<_> = r.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(lines, vec![("E004", 5), ("E004", 6), ("E004", 6)], "{r:?}");
    // Rate limit of zero and a bad key.
    let r = codes_of(&format!(
        "{base}route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        rate_limit: {{ requests_per_unit: 0, unit: second, key: {{ source_ip: true, header: x }} }}\n        routes: []\n"
    ));
    assert_eq!(r.len(), 2, "{r:?}");
}

#[test]
fn upgrade_types_are_checked_where_written() {
    let r = codes_of(
        "listeners:\n  - name: l\n    address: 127.0.0.1:8080\n    route_config: m\n    upgrade_configs: [{ upgrade_type: h2c }, { upgrade_type: \"web socket\" }]\nroute_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: / }\n            route: { cluster: c, upgrade_configs: [{ upgrade_type: H2C, enabled: false }] }\nclusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1 }]\n",
    );
    let lines: Vec<_> = r.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(lines, vec![("E004", 5), ("E004", 5), ("E004", 13)], "{r:?}");
}
