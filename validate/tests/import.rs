//! Runs the real `tern-import` binary on the Envoy setups under `tests/envoy/` and checks what it
//! wrote (with the proxy's loader), what it reported, and its exit status in every format.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tern-import");

fn envoy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/envoy")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn import(inputs: &[&Path], out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["envoy".to_string()];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    args.push("--out".into());
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The merged configuration the proxy would load from `dir`.
fn load(dir: &Path) -> tern_config::Config {
    let r = tern_config::load_with(
        dir,
        tern_config::Limits {
            offline: true,
            ..Default::default()
        },
    );
    assert_eq!(r.error_count(), 0, "{:#?}", r.diagnostics);
    r.config.unwrap()
}

#[test]
fn a_bootstrap_imports_whole_and_loads() {
    let out = tempfile::tempdir().unwrap();
    let o = import(&[&envoy("bootstrap")], out.path(), &["--format", "json"]);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let dropped: Vec<&Value> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["code"].as_str().unwrap().starts_with('I') && d["code"] != "I005")
        .collect();
    assert!(dropped.is_empty(), "{dropped:#?}");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let files: Vec<String> = walk(out.path());
    assert_eq!(
        files,
        [
            "admin.yaml",
            "clusters.yaml",
            "listeners.yaml",
            "routes/main.yaml"
        ]
    );
    let listeners = std::fs::read_to_string(out.path().join("listeners.yaml")).unwrap();
    assert!(listeners.contains("# from envoy: "), "{listeners}");
    assert!(
        listeners.contains("bootstrap/envoy.yaml:7:5\n  - name: ingress\n"),
        "{listeners}"
    );

    let cfg = load(out.path());
    assert_eq!(cfg.admin.address.to_string(), "127.0.0.1:9901");
    let ingress = &cfg.listeners[0].value;
    assert_eq!(ingress.xff_num_trusted_hops.as_ref().unwrap().value, 1);
    assert!(ingress.access_log[0]
        .format
        .as_ref()
        .unwrap()
        .starts_with("[%START_TIME%]"));
    let tcp = &cfg.listeners[1].value;
    assert_eq!(
        tcp.tcp_proxy
            .as_ref()
            .unwrap()
            .cluster
            .as_ref()
            .unwrap()
            .value,
        "db"
    );
    let rc = &cfg.route_configs[0].value;
    let api = &rc.virtual_hosts[0];
    assert_eq!(api.routes.len(), 3);
    let split = api.routes[1]
        .route
        .as_ref()
        .unwrap()
        .weighted_clusters
        .as_ref()
        .unwrap();
    assert_eq!(
        split.clusters.iter().map(|c| c.weight).collect::<Vec<_>>(),
        [90, 10]
    );
    // The listener's fault filter is on every virtual host; the per-route rate limit on its route.
    assert!(api.fault.is_some() && rc.virtual_hosts[1].fault.is_some());
    let web_route = &rc.virtual_hosts[1].routes[3];
    assert_eq!(
        web_route
            .rate_limit
            .as_ref()
            .unwrap()
            .requests_per_unit
            .value,
        100
    );
    let canary = cfg
        .clusters
        .iter()
        .find(|c| c.value.name.value == "api-canary")
        .unwrap();
    assert_eq!(canary.value.protocol(), tern_config::ClusterProtocol::Http2);
    assert_eq!(canary.value.endpoints[0].weight, 2);
}

#[test]
fn a_split_lds_rds_cds_eds_set_imports_across_files() {
    let out = tempfile::tempdir().unwrap();
    let dir = envoy("appmesh");
    let o = import(&[&dir], out.path(), &[]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    // Notes only: the locality and traffic_direction change nothing in Tern.
    assert!(text.contains("warning[I005]"), "{text}");
    assert!(!text.contains("error["), "{text}");
    assert_eq!(
        walk(out.path()),
        [
            "clusters.yaml",
            "listeners.yaml",
            "routes/rds_egress_http_15001.yaml",
            "routes/rds_ingress_http_8080.yaml"
        ]
    );
    let cfg = load(out.path());
    let blue = cfg
        .clusters
        .iter()
        .find(|c| c.value.name.value == "cds_egress_colorteller-blue")
        .unwrap();
    let addrs: Vec<&str> = blue
        .value
        .endpoints
        .iter()
        .map(|e| e.address.value.as_str())
        .collect();
    assert_eq!(addrs, ["10.0.1.10:9080", "10.0.2.10:9080"]);
    let egress = cfg
        .listeners
        .iter()
        .find(|l| l.value.name.value == "lds_egress_0.0.0.0_15001")
        .unwrap();
    let tracing = egress.value.tracing.as_ref().unwrap();
    assert_eq!(
        tracing.otlp.as_ref().unwrap().endpoint.value,
        "http://127.0.0.1:4317"
    );
    assert_eq!(tracing.sampling.as_ref().unwrap().value, 0.1);
    // An EDS cluster names both its CDS and its EDS source.
    let clusters = std::fs::read_to_string(out.path().join("clusters.yaml")).unwrap();
    let from = format!(
        "# from envoy: {}:12:3 (endpoints: {}:4:5)\n  - name: cds_egress_colorteller-blue\n",
        dir.join("cds.yaml").display(),
        dir.join("eds.json").display()
    );
    assert!(clusters.contains(&from), "{clusters}");
    let routes =
        std::fs::read_to_string(out.path().join("routes/rds_egress_http_15001.yaml")).unwrap();
    assert!(
        routes.contains(&format!(
            "# from envoy: {}:11:3",
            dir.join("rds.yaml").display()
        )),
        "{routes}"
    );

    // Without the EDS file the clusters' endpoints are unresolved: reported, exit 1.
    let out2 = tempfile::tempdir().unwrap();
    let o = import(
        &[
            &dir.join("lds.yaml"),
            &dir.join("rds.yaml"),
            &dir.join("cds.yaml"),
        ],
        out2.path(),
        &[],
    );
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert_eq!(text.matches("error[I004]").count(), 2, "{text}");
}

#[test]
fn unsupported_filters_and_fields_are_reported_in_every_format_and_fail_unless_partial() {
    let input = envoy("unsupported");
    let file = input.join("envoy.yaml");
    let expected = [
        ("I001", 13, 11), // generate_request_id
        ("I001", 19, 15), // cors
        ("I001", 24, 19), // regex_rewrite
        ("I002", 30, 15), // ext_authz
        ("I002", 34, 15), // lua
        ("I001", 44, 5),  // least_request_lb_config
    ];

    let out = tempfile::tempdir().unwrap();
    let o = import(&[&input], out.path(), &["--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut got: Vec<(String, u64, u64)> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["code"] != "I005")
        .map(|d| {
            assert_eq!(d["file"].as_str().unwrap(), file.to_str().unwrap());
            assert_eq!(d["severity"], "error");
            (
                d["code"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort_by_key(|g| (g.1, g.2));
    let want: Vec<(String, u64, u64)> = expected
        .iter()
        .map(|(c, l, col)| (c.to_string(), *l, *col))
        .collect();
    assert_eq!(got, want);
    assert_eq!(doc["valid"], false);
    // What does map is written and loads.
    let cfg = load(out.path());
    assert_eq!(cfg.route_configs[0].value.virtual_hosts[0].routes.len(), 2);

    // --allow-partial: the same report as warnings, exit 0.
    let o = import(&[&input], out.path(), &["--allow-partial"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert_eq!(
        text.matches("warning[I00").count() - text.matches("warning[I005]").count(),
        expected.len(),
        "{text}"
    );
    assert!(
        text.contains(&format!("--> {}:30:15", file.display())),
        "{text}"
    );

    let o = import(&[&input], out.path(), &["--format", "github"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "::error file={},line=30,col=15,title=tern-import I002::",
            file.display()
        )),
        "{text}"
    );
}

#[test]
fn usage_and_io_errors_exit_2_and_foreign_files_are_never_overwritten() {
    assert_eq!(run(&["envoy", "--out", "/tmp/x"]).status.code(), Some(2));
    assert_eq!(
        run(&["nginx", "a", "--out", "/tmp/x"]).status.code(),
        Some(2)
    );
    let out = tempfile::tempdir().unwrap();
    let o = import(&[Path::new("/nonexistent/envoy.yaml")], out.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(out.path().join("mine.yaml"), "clusters: []\n").unwrap();
    let o = import(&[&envoy("bootstrap")], out.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mine.yaml"));
    assert_eq!(walk(out.path()), ["mine.yaml"]);
}

/// Files below `dir`, relative, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}
