//! Everything we ship as an example works:
//!
//! - every configuration directory under `config-examples/` passes `tern --check` and a real `tern`
//!   process started on it answers requests the way the example says it does;
//! - `docker-compose.yml` is a valid compose file (`docker-compose -f docker-compose.yml config -q`)
//!   whose services use the binaries the image builds and the example the tests run;
//! - the ECS task definition and IAM policies agree with each other, with the image and with the
//!   ECS example configuration (ports, drain timeout vs `stopTimeout`, bucket and prefix);
//! - every command quoted in the deployment docs is run here or marked as needing AWS or Docker.
//!
//! Examples bind fixed ports (10000, 8000, 9901). The tests never use those: each example is copied
//! to a temp dir and every address it *binds* (listeners, admin) is rewritten to a free port on
//! 127.0.0.1, and the upstreams it names are rewritten to real test backends. So these tests run in
//! parallel with each other and with the rest of the suite.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tern_testkit::{
    admin_yaml, free_port, get, request, tern_bin, tern_check, tern_validate_bin, workspace_root,
    Backend, ConfigDir, DnsServer, Tern,
};

fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn read_json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: invalid JSON: {e}"))
}

fn is_yaml(p: &Path) -> bool {
    p.is_file()
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        )
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Every example configuration: a directory under `config-examples/` that holds YAML files
/// itself. Its subdirectories belong to it (a split configuration may use them).
fn example_dirs() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !is_hidden(p))
            .collect();
        entries.sort();
        if entries.iter().any(|p| is_yaml(p)) {
            out.push(dir.to_path_buf());
            return;
        }
        for p in entries.into_iter().filter(|p| p.is_dir()) {
            walk(&p, out);
        }
    }
    let mut found = Vec::new();
    walk(&workspace_root().join("config-examples"), &mut found);
    found
        .into_iter()
        .map(|p| {
            p.strip_prefix(workspace_root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// One request against a running example and what it must answer.
struct Check {
    /// The listener, by the address written in the example (`0.0.0.0:10000`).
    listener: &'static str,
    path: &'static str,
    status: u16,
    /// The body contains each of these.
    body: &'static [&'static str],
    /// A response header and how its value ends.
    header: Option<(&'static str, &'static str)>,
}

/// What each example is meant to do. Every directory `example_dirs` finds must be listed here.
struct Example {
    dir: &'static str,
    /// Upstream addresses written in the example (`orders.internal:8080`) that the test replaces with
    /// a real backend of this name (it answers JSON with `"backend":"<name>"` and the `"uri"` it got).
    backends: &'static [(&'static str, &'static str)],
    checks: &'static [Check],
}

const fn check(
    listener: &'static str,
    path: &'static str,
    status: u16,
    body: &'static [&'static str],
) -> Check {
    Check {
        listener,
        path,
        status,
        body,
        header: None,
    }
}

const EXAMPLES: &[Example] = &[
    Example {
        dir: "config-examples/observability",
        backends: &[("127.0.0.1:8080", "app")],
        checks: &[check(
            "0.0.0.0:10000",
            "/orders?id=7",
            200,
            &[
                r#""backend":"app""#,
                r#""uri":"/orders?id=7""#,
                "traceparent",
            ],
        )],
    },
    Example {
        dir: "config-examples/resilience",
        backends: &[
            ("127.0.0.1:18201", "orders"),
            ("127.0.0.1:18202", "orders"),
            ("127.0.0.1:18211", "catalogue"),
            ("127.0.0.1:18212", "catalogue"),
            ("127.0.0.1:18213", "catalogue-canary"),
            ("127.0.0.1:18221", "cart"),
            ("127.0.0.1:18222", "cart"),
            ("127.0.0.1:18223", "cart"),
            ("127.0.0.1:18231", "inventory"),
            ("127.0.0.1:18232", "inventory"),
            ("127.0.0.1:18233", "inventory"),
        ],
        checks: &[
            check("127.0.0.1:10100", "/healthz", 200, &["ok"]),
            check(
                "127.0.0.1:10100",
                "/orders/42",
                200,
                &[r#""backend":"orders""#, r#""uri":"/orders/42""#],
            ),
            check(
                "127.0.0.1:10100",
                "/catalogue/books",
                200,
                &[r#""backend":"catalogue"#],
            ),
            check(
                "127.0.0.1:10100",
                "/cart/mine",
                200,
                &[r#""backend":"cart""#],
            ),
            check(
                "127.0.0.1:10101",
                "/stock",
                200,
                &[r#""backend":"inventory""#],
            ),
        ],
    },
    Example {
        dir: "config-examples/observability",
        backends: &[("127.0.0.1:8080", "app")],
        checks: &[
            // The app gets the trace in both configured formats (a new trace: none came in).
            check(
                "0.0.0.0:10000",
                "/hello",
                200,
                &[
                    r#""backend":"app""#,
                    r#""traceparent":"00-"#,
                    r#""x-amzn-trace-id":"Root=1-"#,
                ],
            ),
        ],
    },
    Example {
        dir: "config-examples/tls",
        backends: &[],
        checks: &[Check {
            listener: "0.0.0.0:8080",
            path: "/hello",
            status: 301,
            body: &[],
            header: Some(("location", "/hello")),
        }],
    },
    Example {
        dir: "config-examples/quickstart",
        backends: &[],
        checks: &[
            check("127.0.0.1:10000", "/", 200, &["Tern is running."]),
            check("127.0.0.1:10000", "/healthz", 200, &["ok"]),
            // The api cluster points at a closed port on purpose.
            check(
                "127.0.0.1:10000",
                "/api/hello",
                503,
                &["upstream connect error"],
            ),
            Check {
                listener: "127.0.0.1:10000",
                path: "/old/page",
                status: 302,
                body: &[],
                header: Some(("location", "/new/page")),
            },
        ],
    },
    Example {
        dir: "config-examples/compose",
        backends: &[("backend:5678", "demo-backend")],
        checks: &[
            check(
                "0.0.0.0:10000",
                "/",
                200,
                &["Hello from Tern, configured from S3 by tern-sync"],
            ),
            check("0.0.0.0:10000", "/healthz", 200, &["ok"]),
            check(
                "0.0.0.0:10000",
                "/api/hello",
                200,
                &[r#""backend":"demo-backend""#, r#""uri":"/hello""#],
            ),
        ],
    },
    Example {
        dir: "config-examples/ecs/config",
        backends: &[
            ("127.0.0.1:8080", "app"),
            ("orders.internal:8080", "orders"),
            ("payments.internal:8080", "payments"),
        ],
        checks: &[
            // Inbound: the load balancer's requests reach the app unchanged.
            check(
                "0.0.0.0:8000",
                "/users/42",
                200,
                &[r#""backend":"app""#, r#""uri":"/users/42""#],
            ),
            // The target group health check answers with tern's own readiness.
            check("0.0.0.0:8000", "/ready", 200, &["LIVE"]),
            // Outbound: the app calls its dependencies through the egress listener.
            check(
                "127.0.0.1:10000",
                "/orders/items?id=1",
                200,
                &[r#""backend":"orders""#, r#""uri":"/items?id=1""#],
            ),
            check(
                "127.0.0.1:10000",
                "/payments/charge",
                200,
                &[r#""backend":"payments""#, r#""uri":"/charge""#],
            ),
            check(
                "127.0.0.1:10000",
                "/inventory/x",
                404,
                &["no such dependency"],
            ),
        ],
    },
];

/// An example copied to a temp dir with its bound addresses and upstreams rewritten, and the
/// backends those upstreams now point at.
struct Prepared {
    dir: ConfigDir,
    /// Address as written in the example -> address in the copy.
    map: BTreeMap<String, String>,
    admin_port: u16,
    _backends: Vec<Backend>,
    /// Answers the host names the example's upstreams use, when it has any.
    _dns: Option<DnsServer>,
}

impl Prepared {
    fn url(&self, listener: &str, path: &str) -> String {
        let addr = self
            .map
            .get(listener)
            .unwrap_or_else(|| panic!("{listener} is not a listener address of the example"));
        format!("http://{addr}{path}")
    }
}

/// Copies `ex` to a temp dir, rewriting every address it binds (listeners, admin) to a free port
/// on 127.0.0.1 and every upstream in `ex.backends` to a freshly started backend. An upstream
/// written as a host name stays one: a test DNS server (the copy's `dns.resolvers`) resolves it
/// to 127.0.0.1 and only its port changes, so DNS discovery runs as where the example is deployed.
async fn prepare(ex: &Example) -> Prepared {
    let src = workspace_root().join(ex.dir);
    let report = tern_config::load(&src);
    let config = report.config.unwrap_or_else(|| {
        panic!(
            "{} does not load: {:?}",
            ex.dir,
            report
                .diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
        )
    });

    let mut map = BTreeMap::new();
    let admin = config.admin.address.value.to_string();
    let admin_port = free_port();
    map.insert(admin.clone(), format!("127.0.0.1:{admin_port}"));
    for l in &config.listeners {
        let addr = l.value.address.value.to_string();
        map.entry(addr)
            .or_insert_with(|| format!("127.0.0.1:{}", free_port()));
    }
    let mut backends = Vec::new();
    let mut dns: Option<DnsServer> = None;
    for (upstream, name) in ex.backends {
        let b = Backend::start(name).await;
        let (host, _) = upstream.rsplit_once(':').unwrap();
        if host.parse::<std::net::IpAddr>().is_ok() {
            map.insert(upstream.to_string(), b.addr.to_string());
        } else {
            if dns.is_none() {
                dns = Some(DnsServer::start().await);
            }
            if let Some(d) = &dns {
                d.set(host, &["127.0.0.1"], 5);
            }
            map.insert(upstream.to_string(), format!("{host}:{}", b.addr.port()));
        }
        backends.push(b);
    }

    // One pass over each file, longest address first, so that a replacement is never rewritten
    // again and no address is rewritten inside another.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let alternation: Vec<String> = keys.iter().map(|k| regex::escape(k)).collect();
    let addresses = regex::Regex::new(&alternation.join("|")).unwrap();

    let dir = ConfigDir::new();
    let mut admin_written = false;
    for entry in walkdir::WalkDir::new(&src).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(&src).unwrap();
        if rel
            .components()
            .any(|c| is_hidden(Path::new(c.as_os_str())))
        {
            continue;
        }
        // Key material named by the example travels with it, unchanged.
        if matches!(
            entry.path().extension().and_then(|e| e.to_str()),
            Some("pem" | "key")
        ) {
            let bytes = std::fs::read_to_string(entry.path()).unwrap();
            dir.write(&rel.to_string_lossy(), &bytes);
            continue;
        }
        if !is_yaml(entry.path()) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = addresses.replace_all(&text, |c: &regex::Captures| map[&c[0]].clone());
        admin_written |= text.contains(&map[&admin]);
        dir.write(&rel.to_string_lossy(), &text);
    }
    if !admin_written {
        // The example relies on the default admin address: set it explicitly in the copy.
        dir.write("zz-test-admin.yaml", &admin_yaml(admin_port));
    }
    if let Some(d) = &dns {
        assert!(
            config.dns.is_none(),
            "{}: sets dns; the test would replace it",
            ex.dir
        );
        dir.write(
            "zz-test-dns.yaml",
            &format!("dns:\n  resolvers: [\"{}\"]\n", d.resolver()),
        );
    }
    Prepared {
        dir,
        map,
        admin_port,
        _backends: backends,
        _dns: dns,
    }
}

fn example(dir: &str) -> &'static Example {
    EXAMPLES
        .iter()
        .find(|e| e.dir == dir)
        .unwrap_or_else(|| {
            panic!("{dir} contains YAML but has no entry in EXAMPLES (tests/examples.rs): say what it must answer")
        })
}

/// The validator leg: `tern-validate --strict DIR` must exit 0 (no errors, no warnings).
#[allow(dead_code)]
fn validator_leg(validator_bin: &Path, dir: &str) {
    let out = Command::new(validator_bin)
        .args(["--strict", dir])
        .current_dir(workspace_root())
        .output()
        .expect("run tern-validate");
    assert!(
        out.status.success(),
        "tern-validate --strict {dir} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every example through the validator (`--strict`: no warnings either).
#[test]
fn every_example_passes_tern_validate() {
    let bin = tern_validate_bin();
    for dir in example_dirs() {
        validator_leg(&bin, &dir);
    }
}

#[test]
fn examples_are_found_and_listed() {
    let dirs = example_dirs();
    for want in [
        "config-examples/quickstart",
        "config-examples/compose",
        "config-examples/ecs/config",
    ] {
        assert!(
            dirs.iter().any(|d| d == want),
            "{want} not found in {dirs:?}"
        );
    }
    for d in &dirs {
        example(d);
    }
    for ex in EXAMPLES {
        assert!(
            dirs.iter().any(|d| d == ex.dir),
            "EXAMPLES lists {} but it holds no YAML",
            ex.dir
        );
        assert!(!ex.checks.is_empty(), "{}: no request checked", ex.dir);
    }
}

#[test]
fn every_example_passes_tern_check() {
    for dir in example_dirs() {
        let out = tern_check(std::path::Path::new(&dir));
        assert!(
            out.status.success(),
            "tern --check --config {dir} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    }
}

/// Starts a real `tern` on every example (rewritten to free ports) and checks its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_answers_as_documented() {
    for dir in example_dirs() {
        let ex = example(&dir);
        let p = prepare(ex).await;
        let tern = Tern::start(p.dir.path(), p.admin_port, &[]).await;
        for c in ex.checks {
            let url = p.url(c.listener, c.path);
            let r = request("GET", &url, &[], "")
                .await
                .unwrap_or_else(|e| panic!("{dir}: GET {url}: {e}\n{}", tern.logs()));
            assert_eq!(
                r.status, c.status,
                "{dir}: GET {} on {}: body {:?}",
                c.path, c.listener, r.body
            );
            for needle in c.body {
                assert!(
                    r.body.contains(needle),
                    "{dir}: GET {} on {}: {:?} not in {:?}",
                    c.path,
                    c.listener,
                    needle,
                    r.body
                );
            }
            if let Some((name, suffix)) = c.header {
                let got = r.headers.get(name).and_then(|v| v.to_str().ok());
                assert!(
                    got.is_some_and(|v| v.ends_with(suffix)),
                    "{dir}: GET {}: header {name}: {got:?}, want ...{suffix}",
                    c.path
                );
            }
        }
    }
}

/// The ECS example's load balancer health check path follows `/healthcheck/fail` and `/ok`:
/// that is how a task is taken out of the target group before it stops (docs/ecs.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_health_check_path_follows_healthcheck_fail() {
    let p = prepare(example("config-examples/ecs/config")).await;
    let tern = Tern::start(p.dir.path(), p.admin_port, &[]).await;
    let ready = p.url("0.0.0.0:8000", "/ready");
    assert_eq!(get(&ready, &[]).await.status, 200);

    let r = request("POST", &tern.admin_url("/healthcheck/fail"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&ready, &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    // The app keeps being served while the load balancer takes the task out.
    let app = get(&p.url("0.0.0.0:8000", "/x"), &[]).await;
    assert_eq!(app.status, 200, "{}", app.body);

    request("POST", &tern.admin_url("/healthcheck/ok"), &[], "")
        .await
        .unwrap();
    assert_eq!(get(&ready, &[]).await.status, 200);
}

/// The ECS example's ingress sits behind an ALB (`xff_num_trusted_hops: 1`): the scheme the ALB
/// saw reaches the app, and the ALB's node address is not mistaken for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_ingress_trusts_the_load_balancer_hop() {
    let p = prepare(example("config-examples/ecs/config")).await;
    let _tern = Tern::start(p.dir.path(), p.admin_port, &[]).await;
    let alb = [
        ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
        ("x-forwarded-proto", "https"),
    ];
    let r = get(&p.url("0.0.0.0:8000", "/users/42"), &alb).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{}", r.body);
    assert_eq!(
        j["headers"]["x-forwarded-for"], "198.51.100.1, 203.0.113.9, 127.0.0.1",
        "{}",
        r.body
    );
    // The egress listener (the app's own calls) trusts no hop: a claimed scheme is overwritten.
    let r = get(&p.url("127.0.0.1:10000", "/orders/x"), &alb).await;
    let j: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(j["headers"]["x-forwarded-proto"], "http", "{}", r.body);
}

// ---------------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------------

/// The workspace packages (root, validate, sync-agent): `(package, [[bin]] names)`.
fn workspace_packages() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for manifest in ["Cargo.toml", "validate/Cargo.toml", "sync-agent/Cargo.toml"] {
        let text = read(manifest);
        let mut section = String::new();
        let mut package = None;
        let mut bins = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
            } else if let Some(v) = line.strip_prefix("name") {
                let Some(v) = v.trim_start().strip_prefix('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"').to_string();
                match section.as_str() {
                    "[package]" => package = Some(v),
                    "[[bin]]" => bins.push(v),
                    _ => {}
                }
            }
        }
        out.push((package.expect("package name"), bins));
    }
    out
}

/// Every binary the workspace builds.
fn workspace_binaries() -> BTreeSet<String> {
    workspace_packages()
        .into_iter()
        .flat_map(|(_, bins)| bins)
        .collect()
}

/// The `["...", ...]` JSON array that follows `key` on one Dockerfile line.
fn exec_form_after(line: &str, key: &str) -> Option<Vec<String>> {
    let rest = &line[line.find(key)? + key.len()..];
    serde_json::from_str(rest.trim()).ok()
}

#[test]
fn dockerfile_builds_every_binary_and_needs_no_shell() {
    let bins = workspace_binaries();
    assert_eq!(
        bins,
        ["tern", "tern-import", "tern-sync", "tern-validate"]
            .map(String::from)
            .into(),
        "workspace binaries changed: update the Dockerfile and this test"
    );
    let df = read("Dockerfile");
    // Joined continuation lines.
    let joined = df.replace("\\\n", " ");
    let build = joined
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        build.contains("--locked") && build.contains("--bins"),
        "{build}"
    );
    for (package, bins) in workspace_packages() {
        assert!(
            build.contains(&format!("-p {package} ")),
            "{package} not built: {build}"
        );
        for b in bins {
            assert!(
                build.contains(&format!("target/release/{b} ")),
                "{b} not copied: {build}"
            );
        }
    }
    let stages: Vec<&str> = joined
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let runtime = stages.last().unwrap();
    assert!(
        runtime.contains("distroless") && runtime.contains(":nonroot"),
        "small runtime without a shell, non-root: {runtime}"
    );
    let user = joined
        .lines()
        .rfind(|l| l.trim_start().starts_with("USER "))
        .expect("USER");
    assert!(
        !user.contains(" root") && !user.contains(" 0"),
        "non-root: {user}"
    );
    let hc = joined
        .lines()
        .find(|l| l.trim_start().starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    let cmd = exec_form_after(hc, " CMD ").expect("HEALTHCHECK in exec form (no shell)");
    assert!(bins.contains(&cmd[0]), "health check runs {cmd:?}");
    let cmd = joined
        .lines()
        .rfind(|l| l.trim_start().starts_with("CMD "))
        .and_then(|l| exec_form_after(l, "CMD "))
        .expect("CMD in exec form");
    assert!(bins.contains(&cmd[0]), "{cmd:?}");

    // The build context keeps what cargo needs and drops build output.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "validate",
        "sync-agent",
        "*.rs",
    ] {
        assert!(!patterns.contains(&needed), ".dockerignore drops {needed}");
    }
    assert!(patterns.contains(&"**/target"), "target/ must not be sent");
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------

/// The compose client: `docker-compose` (v1) or the `docker compose` plugin. Fails, never skips,
/// when neither is installed.
fn compose_command() -> Command {
    let works = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("docker-compose", &["version"]) {
        Command::new("docker-compose")
    } else if works("docker", &["compose", "version"]) {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        panic!(
            "docker-compose is not installed; it validates docker-compose.yml without a Docker \
             engine. Install it with: apt-get install -y docker-compose \
             (or run scripts/install-test-deps)"
        );
    }
}

/// `docker-compose -f docker-compose.yml config [args]` in the repository root.
fn compose_config(args: &[&str]) -> std::process::Output {
    compose_command()
        .args(["-f", "docker-compose.yml", "config"])
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("run docker-compose")
}

#[test]
fn compose_file_is_valid() {
    let out = compose_config(&["-q"]);
    assert!(
        out.status.success(),
        "docker-compose -f docker-compose.yml config -q:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compose file, as the compose client resolves it (anchors merged, paths absolute).
fn compose_resolved() -> Value {
    let out = compose_config(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("compose config output")
}

/// The source of a service volume mounted at `target`: `SRC:TARGET[:MODE]` (docker-compose v1
/// output) or `{ source, target }` (the `docker compose` plugin's output).
fn volume_source(v: &Value, target: &str) -> Option<String> {
    match v {
        Value::String(s) => {
            let mut parts = s.split(':');
            let src = parts.next()?;
            (parts.next()? == target).then(|| src.to_string())
        }
        _ => (v["target"] == target).then(|| v["source"].as_str().unwrap().to_string()),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn compose_services_use_the_image_and_the_tested_example() {
    let c = compose_resolved();
    let bins = workspace_binaries();
    let services = c["services"].as_object().expect("services");
    for want in [
        "s3",
        "create-bucket",
        "publish",
        "tern-sync",
        "tern",
        "backend",
    ] {
        assert!(services.contains_key(want), "service {want} missing");
    }
    // Services running our image: exec-form commands and health checks with our binaries
    // (the image has no shell and no curl).
    let ours: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["image"] == "tern:dev")
        .collect();
    assert_eq!(ours.len(), 3, "publish, tern-sync, tern");
    for (name, s) in &ours {
        let cmd = strings(&s["command"]);
        assert!(bins.contains(&cmd[0]), "{name}: {cmd:?}");
        // `healthcheck: { disable: true }` comes out of `config` as `test: ["NONE"]`.
        let test = strings(&s["healthcheck"]["test"]);
        if test != ["NONE"] {
            assert_eq!(test[0], "CMD", "{name}: exec form, no shell: {test:?}");
            assert!(bins.contains(&test[1]), "{name}: {test:?}");
        }
    }
    // The publish job publishes the compose example, which the tests above run.
    let publish = &services["publish"];
    let src = publish["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| volume_source(v, "/src"))
        .expect("publish mounts /src");
    assert_eq!(
        Path::new(&src),
        workspace_root().join("config-examples/compose")
    );
    assert_eq!(strings(&publish["command"])[..2], ["tern-sync", "publish"]);
    // tern reads what tern-sync writes.
    let sync_cmd = strings(&services["tern-sync"]["command"]);
    let dest = sync_cmd
        .windows(2)
        .find(|w| w[0] == "--dest")
        .map(|w| w[1].clone())
        .expect("--dest");
    let tern_cmd = strings(&services["tern"]["command"]);
    assert!(
        tern_cmd
            .windows(2)
            .any(|w| w[0] == "--config" && w[1] == format!("{dest}/current")),
        "{tern_cmd:?} vs --dest {dest}"
    );
    // The published port is the compose example's listener.
    let ports = services["tern"]["ports"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| p["target"].as_u64() == Some(10000)),
        "{ports:?}"
    );
    assert!(read("config-examples/compose/listeners.yaml").contains("0.0.0.0:10000"));
    // Compose waits stop_grace_period before SIGKILL: longer than tern's drain.
    let drain = secs(&flag(&tern_cmd, "--drain-timeout").unwrap_or("15s".into()));
    let grace = secs(
        services["tern"]["stop_grace_period"]
            .as_str()
            .expect("tern stop_grace_period"),
    );
    assert!(drain < grace, "drain {drain}s, stop_grace_period {grace}s");
    // Start order: bucket, publish, first sync, proxy.
    let cond = |svc: &str, dep: &str| {
        services[svc]["depends_on"][dep]["condition"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        cond("publish", "create-bucket"),
        "service_completed_successfully"
    );
    assert_eq!(
        cond("tern-sync", "publish"),
        "service_completed_successfully"
    );
    assert_eq!(cond("tern", "tern-sync"), "service_healthy");
}

// ---------------------------------------------------------------------------------------------
// ECS task definition and IAM
// ---------------------------------------------------------------------------------------------

fn container<'a>(td: &'a Value, name: &str) -> &'a Value {
    td["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} missing"))
}

fn env_of(c: &Value, key: &str) -> Option<String> {
    c["environment"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == key)
        .map(|e| e["value"].as_str().unwrap().to_string())
}

fn flag(cmd: &[String], name: &str) -> Option<String> {
    cmd.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn depends_on(c: &Value, on: &str) -> Option<String> {
    c["dependsOn"]
        .as_array()?
        .iter()
        .find(|d| d["containerName"] == on)
        .map(|d| d["condition"].as_str().unwrap().to_string())
}

fn secs(d: &str) -> u64 {
    tern_config::Dur::parse(d)
        .unwrap_or_else(|e| panic!("{d}: {e}"))
        .0
        .as_secs()
}

#[test]
fn ecs_task_definition_is_consistent() {
    let td = read_json("config-examples/ecs/task-definition.json");
    let bins = workspace_binaries();
    assert_eq!(td["networkMode"], "awsvpc", "containers share 127.0.0.1");
    let volumes: BTreeSet<String> = td["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();

    let init = container(&td, "tern-sync-init");
    let sync = container(&td, "tern-sync");
    let tern = container(&td, "tern");
    let app = container(&td, "app");

    for c in td["containerDefinitions"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let lc = &c["logConfiguration"];
        assert_eq!(lc["logDriver"], "awslogs", "{name}");
        for opt in ["awslogs-group", "awslogs-region", "awslogs-stream-prefix"] {
            assert!(lc["options"][opt].is_string(), "{name}: {opt}");
        }
        for m in c["mountPoints"].as_array().into_iter().flatten() {
            assert!(
                volumes.contains(m["sourceVolume"].as_str().unwrap()),
                "{name}: {m}"
            );
        }
        if c["image"] != tern["image"] {
            continue;
        }
        // Our image: no shell, so exec-form commands and health checks with our binaries.
        let cmd = strings(&c["command"]);
        assert!(bins.contains(&cmd[0]), "{name}: {cmd:?}");
        if let Some(hc) = c.get("healthCheck") {
            let test = strings(&hc["command"]);
            assert_eq!(test[0], "CMD", "{name}: exec form: {test:?}");
            assert!(bins.contains(&test[1]), "{name}: {test:?}");
        }
        assert_eq!(c["readonlyRootFilesystem"], true, "{name}");
    }

    // The first sync is an init container; tern and the long-running agent start after it.
    assert_eq!(
        init["essential"], false,
        "SUCCESS needs a non-essential container"
    );
    assert_eq!(
        strings(&init["command"])[..3],
        ["tern-sync", "run", "--once"]
    );
    assert_eq!(
        depends_on(tern, "tern-sync-init").as_deref(),
        Some("SUCCESS")
    );
    assert_eq!(
        depends_on(sync, "tern-sync-init").as_deref(),
        Some("SUCCESS")
    );
    assert_eq!(strings(&sync["command"])[..2], ["tern-sync", "run"]);
    assert_eq!(
        strings(&sync["healthCheck"]["command"]),
        ["CMD", "tern-sync", "health"]
    );
    assert_eq!(strings(&tern["healthCheck"]["command"])[1..2], ["tern"]);
    assert_eq!(tern["essential"], true);
    // The app starts once tern is healthy, and so stops before it (shutdown order is reversed).
    assert_eq!(depends_on(app, "tern").as_deref(), Some("HEALTHY"));

    // Both agents write the same directory tern reads.
    let dest = env_of(init, "TERN_SYNC_DEST").expect("TERN_SYNC_DEST");
    assert_eq!(
        env_of(sync, "TERN_SYNC_DEST").as_deref(),
        Some(dest.as_str())
    );
    for key in ["TERN_SYNC_BUCKET", "TERN_SYNC_PREFIX", "TERN_SYNC_REGION"] {
        assert_eq!(env_of(init, key), env_of(sync, key), "{key}");
        assert!(env_of(init, key).is_some(), "{key}");
    }
    let mount = |c: &Value| {
        c["mountPoints"][0]["containerPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(mount(init), dest);
    assert_eq!(mount(sync), dest);
    assert_eq!(mount(tern), dest);
    assert_eq!(tern["mountPoints"][0]["readOnly"], true);
    assert_eq!(init["mountPoints"][0]["readOnly"], false);
    let tern_cmd = strings(&tern["command"]);
    assert_eq!(flag(&tern_cmd, "--config"), Some(format!("{dest}/current")));
    // The Dockerfile makes /config writable by the non-root user (VOLUME with that ownership).
    assert!(read("Dockerfile").contains(&format!("VOLUME [\"{dest}\"]")));

    // Draining: tern's drain timeout fits in its stopTimeout, so it exits 0 before SIGKILL.
    let drain = secs(&flag(&tern_cmd, "--drain-timeout").unwrap_or("15s".into()));
    let stop = tern["stopTimeout"].as_u64().expect("tern stopTimeout");
    assert!(
        drain + 5 <= stop,
        "drain timeout {drain}s needs a margin below stopTimeout {stop}s"
    );
    assert!(stop <= 120, "Fargate allows at most 120 s");

    // Ports: the load balancer targets tern's ingress listener; the app calls the egress one.
    let ecs_config = tern_config::load(&workspace_root().join("config-examples/ecs/config"))
        .config
        .expect("ecs config loads");
    let listener = |name: &str| {
        ecs_config
            .listeners
            .iter()
            .find(|l| *l.value.name.value == *name)
            .unwrap_or_else(|| panic!("listener {name}"))
            .value
            .address
            .value
    };
    let ingress = listener("ingress");
    assert_eq!(
        tern["portMappings"][0]["containerPort"].as_u64(),
        Some(ingress.port() as u64)
    );
    assert!(
        ingress.ip().is_unspecified(),
        "reachable from the load balancer"
    );
    let egress = listener("egress");
    assert!(
        egress.ip().is_loopback(),
        "only the task's containers use it"
    );
    for key in ["ORDERS_URL", "PAYMENTS_URL"] {
        let url = env_of(app, key).unwrap();
        assert!(url.starts_with(&format!("http://{egress}/")), "{key}={url}");
    }
    let app_addr = env_of(app, "LISTEN_ADDRESS").unwrap();
    let app_cluster = read("config-examples/ecs/config/clusters.yaml");
    assert!(app_cluster.contains(&format!("address: {app_addr}")));
    assert_eq!(
        ecs_config.admin.address.value.to_string(),
        "127.0.0.1:9901",
        "the default address `tern health` queries"
    );
}

/// Checks the task definition against the ECS API's own model of `RegisterTaskDefinition` (unknown
/// keys, types, required fields), with botocore's parameter validator: what
/// `aws ecs register-task-definition --cli-input-json` does before sending. botocore comes with
/// moto, which `scripts/install-test-deps` installs for the sync agent's tests.
#[test]
fn ecs_task_definition_matches_the_ecs_api_model() {
    const SCRIPT: &str = r#"
import json, sys
try:
    import botocore.session
    from botocore.validate import validate_parameters
except ImportError:
    sys.exit("botocore is not installed: python3 -m pip install 'moto[server]' (scripts/install-test-deps)")
model = botocore.session.get_session().get_service_model("ecs")
shape = model.operation_model("RegisterTaskDefinition").input_shape
validate_parameters(json.load(open(sys.argv[1])), shape)
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT, "config-examples/ecs/task-definition.json"])
        .current_dir(workspace_root())
        .output()
        .expect("python3 is needed to check the task definition against the ECS API model");
    assert!(
        out.status.success(),
        "config-examples/ecs/task-definition.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Statements of an IAM policy, by Sid.
fn statements(policy: &Value) -> BTreeMap<String, Value> {
    assert_eq!(policy["Version"], "2012-10-17");
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["Sid"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

fn actions(s: &Value) -> BTreeSet<String> {
    match &s["Action"] {
        Value::String(a) => [a.clone()].into(),
        a => strings(a).into_iter().collect(),
    }
}

#[test]
fn iam_policies_are_least_privilege_for_the_task_definition_prefix() {
    let td = read_json("config-examples/ecs/task-definition.json");
    let init = container(&td, "tern-sync-init");
    let bucket = env_of(init, "TERN_SYNC_BUCKET").unwrap();
    let prefix = env_of(init, "TERN_SYNC_PREFIX").unwrap();
    let objects = format!("arn:aws:s3:::{bucket}/{prefix}/*");
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let prefix_condition =
        serde_json::json!({ "StringLike": { "s3:prefix": [format!("{prefix}/*")] } });

    for (file, object_actions) in [
        (
            "config-examples/ecs/task-role-policy.json",
            vec!["s3:GetObject"],
        ),
        (
            "config-examples/ecs/publish-policy.json",
            vec!["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
        ),
    ] {
        let policy = read_json(file);
        let st = statements(&policy);
        assert_eq!(st.len(), 2, "{file}: objects and listing only");
        for s in st.values() {
            assert_eq!(s["Effect"], "Allow", "{file}");
            assert!(
                actions(s).iter().all(|a| !a.contains('*')),
                "{file}: no wildcard actions"
            );
        }
        let obj = st
            .values()
            .find(|s| s["Resource"] == objects.as_str())
            .unwrap_or_else(|| panic!("{file}: no statement on {objects}"));
        assert_eq!(
            actions(obj),
            object_actions.iter().map(|a| a.to_string()).collect(),
            "{file}"
        );
        let list = st
            .values()
            .find(|s| s["Resource"] == bucket_arn.as_str())
            .unwrap_or_else(|| panic!("{file}: no statement on {bucket_arn}"));
        assert_eq!(
            actions(list),
            ["s3:ListBucket".to_string()].into(),
            "{file}"
        );
        assert_eq!(list["Condition"], prefix_condition, "{file}");
    }
}

// ---------------------------------------------------------------------------------------------
// Commands quoted in the docs
// ---------------------------------------------------------------------------------------------

/// Markers for commands that cannot run here (no AWS account, no Docker engine).
/// Commands that cannot run here, or that start long-running processes another test covers
/// (`# tested by <test>` names it).
const MARKERS: &[&str] = &["# needs AWS", "# needs Docker", "tested by "];

/// Shell commands in ```sh blocks (continuation lines joined, comment-only lines dropped).
fn doc_commands(text: &str) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && (t == "```sh" || t == "```bash" || t == "```shell");
            continue;
        }
        if !in_sh || (pending.is_empty() && (t.is_empty() || t.starts_with('#'))) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        cmds.push(std::mem::take(&mut pending));
    }
    assert!(pending.is_empty(), "unterminated command: {pending}");
    cmds
}

/// Runs a documented command that needs neither AWS nor Docker, from the repository root.
/// Returns false when the command is not one this test knows how to run.
fn run_doc_command(cmd: &str) -> bool {
    // A trailing `# comment` is for the reader, not an argument.
    let words: Vec<&str> = cmd
        .split(" #")
        .next()
        .unwrap_or(cmd)
        .split_whitespace()
        .collect();
    let out = match words.as_slice() {
        ["tern", args @ ..] => Command::new(tern_bin())
            .args(args)
            .current_dir(workspace_root())
            .output()
            .unwrap(),
        ["docker-compose", "-f", "docker-compose.yml", "config", rest @ ..] => compose_config(rest),
        ["tern-validate", args @ ..] | ["cargo", "run", "-p", "tern-validate", "--", args @ ..] => {
            Command::new(tern_validate_bin())
                .args(args)
                .current_dir(workspace_root())
                .output()
                .unwrap()
        }
        _ => return false,
    };
    assert!(
        out.status.success(),
        "documented command failed: {cmd}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn documented_commands_are_run_here_or_marked() {
    let mut docs = vec!["README.md".to_string()];
    for e in std::fs::read_dir(workspace_root().join("docs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    docs.sort();
    let mut ran = 0;
    for doc in &docs {
        let cmds = doc_commands(&read(doc));
        for cmd in cmds {
            if MARKERS.iter().any(|m| cmd.contains(m)) {
                continue;
            }
            assert!(
                run_doc_command(&cmd),
                "{doc}: `{cmd}` is neither run by tests/examples.rs nor marked with one of {MARKERS:?}"
            );
            ran += 1;
        }
    }
    assert!(ran > 0, "no documented command was run");
}
