//! Differential tests against a real Envoy (issue 18): for each setup in `tests/envoy/`, Envoy runs
//! on the Envoy configuration and Tern on the configuration `tern-import envoy` makes of it (the
//! same files, with Tern's own ports), in front of the same recording backends; every probe of
//! the setup's corpus goes to both, and what matters is compared: the status, which backend got
//! the request and the method, target, host and headers it saw, the redirect `Location`, the body
//! of the proxy's own answers, the response headers and, where the setup has one, the access log
//! line. Envoy is `envoy` on `PATH` (`scripts/install-test-deps`).
//!
//! A difference that is known and explained is listed in [`KNOWN`] (and in
//! docs/migrate-from-envoy.md, "Differences a real Envoy shows"); any other fails the test, and so does a listed one
//! that no longer shows, so the list stays true. One Envoy and one Tern start per setup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_testkit::{free_port, request, Backend, ConfigDir, Envoy, Resp, Seen, Tern};

/// Request headers the proxies add of their own that are not compared: random ids, trace
/// context (Tern propagates W3C by default, Envoy only with tracing configured) and Envoy's
/// `x-envoy-*` headers.
const OWN_REQUEST_HEADERS: &[&str] = &["x-request-id", "traceparent", "tracestate"];
/// Response headers not compared: framing, dates, the proxy's name and timings, ids.
const OWN_RESPONSE_HEADERS: &[&str] = &[
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-request-id",
];

/// A setup: a directory of `tests/envoy/` and the test backends its configuration names.
struct Setup {
    dir: &'static str,
    /// The file Envoy starts on (`-c`), relative to the setup's directory.
    bootstrap: &'static str,
    backends: &'static [&'static str],
    /// Listeners (`{{LISTEN}}`, then `{{LISTEN2}}`).
    listeners: usize,
    /// Whether the setup terminates TLS: a certificate for `api.example.test` from a test CA is
    /// written as `certs/api.pem` and `certs/api.key` next to the configuration.
    certs: bool,
    /// Whether the setup writes an access log to `{{DIR}}/access.log`: each probe's lines are
    /// compared too.
    logs: bool,
}

/// The SNI name the TLS setups' certificate is for.
const TLS_NAME: &str = "api.example.test";

/// How the tries of a probe are compared when which endpoint of a cluster gets a request is the
/// load balancer's choice (Envoy's round robin starts at a random endpoint, least request and
/// hashing pick differently): never by order.
#[derive(Clone, Copy, PartialEq)]
enum Spread {
    /// Each try as it came (the default for a single request): backend, method, target, headers.
    Exact,
    /// How many requests each backend got.
    Named,
    /// How many requests the busiest, second, ... backend got, whichever they were.
    Shape,
    /// How many requests this backend got.
    Count(&'static str),
    /// How many requests the backends got in all (least request with no load picks at random).
    Total,
}

/// What a backend does for the requests of one probe.
#[derive(Clone, Copy)]
enum Act {
    /// The backend answers its next N requests with this status.
    Fail(&'static str, usize, u16),
    /// The backend answers its next N requests after this many milliseconds.
    Delay(&'static str, usize, u64),
}

/// One request (or `repeat` of them) of a corpus.
struct Probe {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: &'static [(&'static str, &'static str)],
    before: &'static [Act],
    /// Sent this many times in a row.
    repeat: usize,
    spread: Spread,
    /// Index of the listener it goes to.
    listener: usize,
    /// Sent over TLS with this SNI name (and `Host`), by curl.
    tls: Option<&'static str>,
}

const fn get(name: &'static str, path: &'static str) -> Probe {
    Probe {
        name,
        method: "GET",
        path,
        host: "example.com",
        headers: &[],
        before: &[],
        repeat: 1,
        spread: Spread::Exact,
        listener: 0,
        tls: None,
    }
}

impl Probe {
    const fn host(mut self, host: &'static str) -> Probe {
        self.host = host;
        self
    }
    const fn method(mut self, method: &'static str) -> Probe {
        self.method = method;
        self
    }
    const fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Probe {
        self.headers = headers;
        self
    }
    const fn before(mut self, before: &'static [Act]) -> Probe {
        self.before = before;
        self
    }
    /// Sent `n` times; the tries are compared as `spread` says.
    const fn repeat(mut self, n: usize, spread: Spread) -> Probe {
        self.repeat = n;
        self.spread = spread;
        self
    }
    const fn tls(mut self, sni: &'static str) -> Probe {
        self.tls = Some(sni);
        self
    }
    const fn on(mut self, listener: usize) -> Probe {
        self.listener = listener;
        self
    }
}

/// A difference between Envoy and Tern that is known, with its reason.
struct Known {
    /// A setup, or `*` for all.
    setup: &'static str,
    /// A probe of the setup, or `*` for all.
    probe: &'static str,
    field: &'static str,
    why: &'static str,
}

const NO_ROUTE_BODY: &str = "Envoy's 404 for no route has no body; Tern's says `no route`";
const NO_ROUTE_HEADERS: &str = "Tern adds the route config's and virtual host's response headers \
to its 404 no route (and other local replies); Envoy adds none without a route";
const ROUTE_NAME: &str = "%ROUTE_NAME% of a route without a name: Envoy logs `-`, Tern the name \
it gives it in stats, `<virtual host>/<index>`";
const REQ_PATH: &str = "%REQ(:PATH)% and %REQ(:AUTHORITY)%: Envoy logs them as rewritten \
(prefix_rewrite, host_rewrite_literal), Tern as received (Envoy's original path is \
%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%, which Tern logs the same)";
const HOST_PORT: &str = "Envoy matches domains against Host with its port (unless \
strip_any_host_port); Tern always removes the port first";

/// The known differences (docs/migrate-from-envoy.md, "Differences a real Envoy shows", explains each). `field: "*"`
/// stands for every field of that probe.
const KNOWN: &[Known] = &[
    Known {
        setup: "*",
        probe: "*",
        field: "content-type",
        why: "Tern's own replies say `text/plain; charset=utf-8`, Envoy's `text/plain` \
              (and Envoy's no-route 404 has none)",
    },
    Known {
        setup: "quickstart",
        probe: "exact path only",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "quickstart",
        probe: "api no slash",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "quickstart",
        probe: "no route",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "mesh",
        probe: "ping with a port",
        field: "*",
        why: HOST_PORT,
    },
    Known {
        setup: "mesh",
        probe: "legacy with port",
        field: "*",
        why: HOST_PORT,
    },
    Known {
        setup: "mesh",
        probe: "route timeout",
        field: "body",
        why: "local reply text: Envoy `upstream request timeout`, Tern `upstream timeout`",
    },
    Known {
        setup: "mesh",
        probe: "connect failure",
        field: "body",
        why: "local reply text: Envoy `upstream connect error or disconnect/reset before \
              headers. reset reason: remote connection failure`, Tern `upstream connect error`",
    },
    Known {
        setup: "mesh",
        probe: "teapot without header",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "mesh",
        probe: "teapot without header",
        field: "response headers",
        why: NO_ROUTE_HEADERS,
    },
    Known {
        setup: "mesh",
        probe: "inverted present with header",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "mesh",
        probe: "inverted present with header",
        field: "response headers",
        why: NO_ROUTE_HEADERS,
    },
    Known {
        setup: "mesh",
        probe: "inverted match without header",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "mesh",
        probe: "inverted match without header",
        field: "response headers",
        why: NO_ROUTE_HEADERS,
    },
    Known {
        setup: "mesh",
        probe: "inverted match with header",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "mesh",
        probe: "inverted match with header",
        field: "response headers",
        why: NO_ROUTE_HEADERS,
    },
    Known {
        setup: "mesh",
        probe: "items regex is whole path",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "mesh",
        probe: "items regex is whole path",
        field: "response headers",
        why: NO_ROUTE_HEADERS,
    },
    Known {
        setup: "gateway",
        probe: "no virtual host",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "gateway",
        probe: "no virtual host",
        field: "response headers",
        why: NO_ROUTE_HEADERS,
    },
    Known {
        setup: "gateway",
        probe: "header rule levels",
        field: "upstream",
        why: "without most_specific_header_mutations_wins Envoy applies the route's rules \
              first and the route config's last (its overwrite wins); Tern always applies the \
              least specific level first",
    },
    Known {
        setup: "mesh",
        probe: "unknown host",
        field: "access log",
        why: ROUTE_NAME,
    },
    Known {
        setup: "mesh",
        probe: "web exact",
        field: "access log",
        why: ROUTE_NAME,
    },
    Known {
        setup: "mesh",
        probe: "web suffix",
        field: "access log",
        why: ROUTE_NAME,
    },
    Known {
        setup: "mesh",
        probe: "web suffix needs a label",
        field: "access log",
        why: ROUTE_NAME,
    },
    Known {
        setup: "mesh",
        probe: "items regex",
        field: "access log",
        why: REQ_PATH,
    },
    Known {
        setup: "quickstart",
        probe: "encoded slash",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "quickstart",
        probe: "case of the path",
        field: "body",
        why: NO_ROUTE_BODY,
    },
    Known {
        setup: "mesh",
        probe: "host with a trailing dot",
        field: "access log",
        why: ROUTE_NAME,
    },
    Known {
        setup: "gateway",
        probe: "fault abort",
        field: "body",
        why: "Tern's local replies end with a newline: `fault filter abort\\n`",
    },
    Known {
        setup: "gateway",
        probe: "fault abort",
        field: "access log",
        why: "%UPSTREAM_CLUSTER% of a request the fault filter aborted: Envoy logs the route's \
              cluster (known once the route is), Tern `-` (it records the cluster when it \
              forwards)",
    },
    Known {
        setup: "gateway",
        probe: "www rewrite",
        field: "access log",
        why: REQ_PATH,
    },
    Known {
        setup: "tls",
        probe: "unknown server name",
        field: "status",
        why: "Envoy closes a handshake whose SNI no filter chain matches (curl 35) when there is \
              no default chain; Tern answers it with its first certificate, which the client \
              then rejects for the name (curl 60)",
    },
    Known {
        setup: "resilience",
        probe: "cart retry",
        field: "*",
        why: "a retry: Envoy hashes again and lands on the same replica (unless the policy has \
              retry_host_predicate previous_hosts); Tern always moves to another endpoint when \
              there is one",
    },
];

/// What one proxy did with one probe.
#[derive(Debug, Default)]
struct Observed {
    fields: BTreeMap<&'static str, String>,
}

fn setup_dir(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/envoy")
        .join(dir)
}

/// Copies the templates below `from` into `to`, replacing the placeholders.
fn render(from: &Path, to: &Path, vars: &BTreeMap<String, String>) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let src = entry.path();
        let dst = to.join(&name);
        if src.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            render(&src, &dst, vars);
            continue;
        }
        if name == "README.md" {
            continue;
        }
        let mut text = std::fs::read_to_string(&src).unwrap();
        for (k, v) in vars {
            text = text.replace(&format!("{{{{{k}}}}}"), v);
        }
        assert!(
            !text.contains("{{"),
            "{}: a placeholder was left: {}",
            src.display(),
            text.lines().find(|l| l.contains("{{")).unwrap()
        );
        std::fs::write(dst, text).unwrap();
    }
}

/// What `tern-import` reports as dropped from a setup although Tern behaves the same (gaps of the
/// importer, explained): an error matching one of these does not fail the import here. Any other
/// error does, and so does an entry that no longer shows.
struct ImportGap {
    setup: &'static str,
    code: &'static str,
    /// A part of the message.
    message: &'static str,
    why: &'static str,
}

// Empty: the importer maps every setup here whole. (`dynamic_resources` naming the files passed
// with the bootstrap and `most_specific_header_mutations_wins: true` were gaps once.)
const IMPORT_GAPS: &[ImportGap] = &[];

/// The Tern configuration of a setup: what `tern-import envoy` makes of the Envoy files rendered
/// with Tern's ports in `src`. What the import drops must be an explained [`IMPORT_GAPS`] entry.
fn tern_config(setup: &Setup, src: &Path) -> ConfigDir {
    static IMPORTER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let importer =
        IMPORTER.get_or_init(|| tern_testkit::workspace_binary("tern-validate", "tern-import"));
    let out = ConfigDir::new();
    let run = std::process::Command::new(importer)
        .arg("envoy")
        .arg(src)
        .arg("--out")
        .arg(out.path())
        .args(["--format", "json"])
        .output()
        .expect("run tern-import");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "tern-import envoy {}: {e}; exit {}:\n{}{}",
            src.display(),
            run.status,
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let errors: Vec<(String, String)> = report["diagnostics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["severity"] == "error")
        .map(|d| {
            (
                d["code"].as_str().unwrap_or("").to_string(),
                format!(
                    "{} at {}:{}",
                    d["message"].as_str().unwrap_or(""),
                    d["file"].as_str().unwrap_or(""),
                    d["line"]
                ),
            )
        })
        .collect();
    let gaps: Vec<&ImportGap> = IMPORT_GAPS
        .iter()
        .filter(|g| g.setup == setup.dir)
        .collect();
    let is_gap = |c: &str, m: &str| gaps.iter().any(|g| g.code == c && m.contains(g.message));
    let unexplained: Vec<String> = errors
        .iter()
        .filter(|(c, m)| !is_gap(c, m))
        .map(|(c, m)| format!("{c} {m}"))
        .collect();
    let stale: Vec<&str> = gaps
        .iter()
        .filter(|g| {
            !errors
                .iter()
                .any(|(c, m)| *c == g.code && m.contains(g.message))
        })
        .map(|g| g.message)
        .collect();
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "tern-import envoy {} (exit {}): dropped what no IMPORT_GAPS entry explains: \
         {unexplained:#?}; entries that no longer show: {stale:?}",
        setup.dir,
        run.status,
    );
    for g in gaps {
        eprintln!("known import gap: {} {} ({})", g.code, g.message, g.why);
    }
    out
}

/// Sends one probe to `port` and records what the client got and the backends saw.
/// Sends `probe` over TLS with curl (a real client), trusting `ca`; a failed connection or
/// handshake is an `Err` naming curl's exit status.
async fn curl_tls(ca: &Path, port: u16, probe: &Probe, sni: &str) -> Result<Resp, String> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-s",
        "-i",
        "--http1.1",
        "--max-time",
        "10",
        "-X",
        probe.method,
    ])
    .arg("--cacert")
    .arg(ca)
    .arg("--resolve")
    .arg(format!("{sni}:{port}:127.0.0.1"));
    for (k, v) in probe.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd
        .arg(format!("https://{sni}:{port}{}", probe.path))
        .output()
        .await
        .expect("run curl");
    if !out.status.success() {
        return Err(format!("curl {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl printed no status line: {text}"));
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.append(
                http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                v.trim().parse().unwrap(),
            );
        }
    }
    Ok(Resp {
        status,
        headers,
        body: body.to_string(),
    })
}

/// One proxy under test: its listener ports and, when the setup has one, its access log.
struct Proxy {
    ports: Vec<u16>,
    access_log: PathBuf,
}

impl Proxy {
    /// The access log's lines so far (none when the setup has no access log).
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

async fn observe(
    proxy: &Proxy,
    ca: &Path,
    probe: &Probe,
    backends: &BTreeMap<&str, Backend>,
    logs: bool,
) -> Observed {
    let port = proxy.ports[probe.listener];
    let logged = proxy.log_lines().len();
    for b in backends.values() {
        b.ctl.reset_script();
        b.ctl.take_seen();
    }
    for act in probe.before {
        match *act {
            Act::Fail(b, n, status) => backends[b].ctl.fail_next(n, status),
            Act::Delay(b, n, ms) => backends[b].ctl.delay_next(n, Duration::from_millis(ms)),
        }
    }
    let url = format!("http://127.0.0.1:{port}{}", probe.path);
    let mut headers = vec![("host", probe.host)];
    headers.extend_from_slice(probe.headers);
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..probe.repeat {
        let r = match probe.tls {
            Some(sni) => curl_tls(ca, port, probe, sni).await,
            None => request(probe.method, &url, &headers, "").await,
        };
        let r = match r {
            Ok(r) => r,
            // Only a TLS probe may fail to get an answer (a handshake refused).
            Err(e) if probe.tls.is_some() => {
                let mut o = Observed::default();
                o.fields.insert("status", format!("no answer ({e})"));
                return o;
            }
            Err(e) => panic!("{}: {e}", probe.name),
        };
        statuses.push(r.status);
        last = Some(r);
    }
    let r = last.expect("repeat is at least 1");
    // Every request gets its access log line once its response is done: wait for all of them.
    let lines = if logs {
        tern_testkit::wait_for("the probe's access log lines", || {
            let lines = proxy.log_lines();
            let n = lines.len();
            async move { (n >= logged + probe.repeat).then(|| lines[logged..].to_vec()) }
        })
        .await
    } else {
        Vec::new()
    };
    let mut seen: Vec<(String, Seen)> = Vec::new();
    for (name, b) in backends {
        seen.extend(b.ctl.take_seen().into_iter().map(|s| (name.to_string(), s)));
    }
    let mut o = Observed::default();
    if probe.spread != Spread::Exact {
        let mut by_status = BTreeMap::new();
        for s in &statuses {
            *by_status.entry(*s).or_insert(0) += 1;
        }
        o.fields.insert("statuses", format!("{by_status:?}"));
        let mut by_backend = BTreeMap::new();
        for (b, _) in &seen {
            *by_backend.entry(b.as_str()).or_insert(0) += 1;
        }
        let backends = match probe.spread {
            Spread::Named | Spread::Exact => format!("{by_backend:?}"),
            Spread::Shape => {
                let mut shape: Vec<usize> = by_backend.values().copied().collect();
                shape.sort_unstable_by(|a, b| b.cmp(a));
                format!("{shape:?}")
            }
            Spread::Count(name) => format!("{name}: {}", by_backend.get(name).unwrap_or(&0)),
            Spread::Total => format!("{} in all", seen.len()),
        };
        o.fields.insert("backends", backends);
        return o;
    }
    o.fields.insert("status", r.status.to_string());
    if logs {
        o.fields.insert("access log", lines.join("\n"));
    }
    // Tries in the order they came (one backend at a time in a probe, or retries in order).
    let client_xff: Vec<&str> = probe
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    let tries: Vec<String> = seen
        .iter()
        .map(|(b, s)| {
            let mut h: Vec<(&str, &str)> = s
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("?")))
                .filter(|(k, v)| {
                    *k != "host"
                        && *k != "x-forwarded-for"
                        && !k.starts_with("x-envoy-")
                        && !OWN_REQUEST_HEADERS.contains(k)
                        // Envoy adds it to a POST or PUT without a body; the client sent none.
                        && !(*k == "content-length" && *v == "0")
                })
                .collect();
            // By name; the values of one name stay in the order they came (header rules of
            // several levels append in an order that is compared).
            h.sort_by_key(|(k, _)| *k);
            let h: Vec<String> = h.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!(
                "{b} {} {} host={} [{}]",
                s.method,
                s.uri,
                s.host,
                h.join("; ")
            )
        })
        .collect();
    o.fields.insert("upstream", tries.join("\n  then "));
    // x-forwarded-for as a list, the entries a proxy appended (not the client's) as `<appended>`:
    // for a loopback peer Envoy appends its host's own address, Tern the peer's, and Envoy joins
    // with `,` where Tern writes `, ` (both mean the same list).
    let xff: Vec<String> = seen
        .iter()
        .map(|(_, s)| {
            s.headers
                .get_all("x-forwarded-for")
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("?").split(','))
                .map(str::trim)
                .map(|e| {
                    if client_xff.contains(&e) {
                        e.to_string()
                    } else {
                        "<appended>".to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    o.fields.insert("x-forwarded-for", xff.join(" | "));
    let mut rh: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k != "content-type" && !k.starts_with("x-envoy-") && !OWN_RESPONSE_HEADERS.contains(&k)
        })
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
        .collect();
    rh.sort();
    o.fields.insert("response headers", rh.join("; "));
    let ct = r
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("?"));
    o.fields
        .insert("content-type", ct.unwrap_or("").to_string());
    // The proxy's own answers: their body matters (a backend's is its echo of what it saw, or
    // `NAME STATUS` when it was told to fail).
    let from_backend = r.headers.contains_key("x-backend") || r.body.starts_with("{\"backend\":");
    if !from_backend {
        o.fields.insert("body", r.body.clone());
    }
    o
}

/// Runs a setup's corpus against Envoy and Tern and checks the differences against [`KNOWN`].
async fn differential(setup: &Setup, corpus: &[Probe]) {
    let mut backends = BTreeMap::new();
    for name in setup.backends {
        let b = Backend::start(name).await;
        b.ctl.record(true);
        backends.insert(*name, b);
    }
    let mut vars: BTreeMap<String, String> = backends
        .iter()
        .map(|(n, b)| (format!("PORT:{n}"), b.addr.port().to_string()))
        .collect();
    // A port where nothing listens, for connect failures.
    vars.insert("PORT:closed".into(), free_port().to_string());

    // Each proxy's own admin and listener ports.
    let proxy_vars = |dir: &Path| {
        let mut v = vars.clone();
        let admin = free_port();
        v.insert("ADMIN".into(), admin.to_string());
        v.insert("DIR".into(), dir.display().to_string());
        let ports: Vec<u16> = (0..setup.listeners).map(|_| free_port()).collect();
        for (i, p) in ports.iter().enumerate() {
            let key = if i == 0 {
                "LISTEN".to_string()
            } else {
                format!("LISTEN{}", i + 1)
            };
            v.insert(key, p.to_string());
        }
        (v, admin, ports)
    };
    // The TLS setups' certificate, written next to both configurations; curl trusts the CA.
    let ca = tern_testkit::Ca::new("differential test CA");
    let leaf = ca.leaf(TLS_NAME, &[TLS_NAME]);
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    let certs = |dir: &Path| {
        if setup.certs {
            tern_testkit::write_files(
                dir,
                &[("certs/api.pem", &leaf.cert), ("certs/api.key", &leaf.key)],
            );
        }
    };
    let envoy_dir = tempfile::tempdir().unwrap();
    let (ev, envoy_admin, envoy_ports) = proxy_vars(envoy_dir.path());
    render(&setup_dir(setup.dir), envoy_dir.path(), &ev);
    certs(envoy_dir.path());
    let envoy_proxy = Proxy {
        ports: envoy_ports.clone(),
        access_log: envoy_dir.path().join("access.log"),
    };
    let envoy = Envoy::start(
        &envoy_dir.path().join(setup.bootstrap),
        envoy_admin,
        &envoy_ports,
    )
    .await;

    let tern_src = tempfile::tempdir().unwrap();
    let (tv, tern_admin, tern_ports) = proxy_vars(tern_src.path());
    render(&setup_dir(setup.dir), tern_src.path(), &tv);
    certs(tern_src.path());
    let tern_proxy = Proxy {
        ports: tern_ports.clone(),
        access_log: tern_src.path().join("access.log"),
    };
    let tern_cfg = tern_config(setup, tern_src.path());
    let tern = Tern::start(tern_cfg.path(), tern_admin, &[]).await;

    let mut found = Vec::new();
    for probe in corpus {
        let e = observe(&envoy_proxy, ca_file.path(), probe, &backends, setup.logs).await;
        let t = observe(&tern_proxy, ca_file.path(), probe, &backends, setup.logs).await;
        for (field, ev) in &e.fields {
            let tv = t.fields.get(field).cloned().unwrap_or_default();
            if *ev != tv {
                found.push((probe.name, *field, ev.clone(), tv));
            }
        }
        for field in t.fields.keys().filter(|f| !e.fields.contains_key(*f)) {
            found.push((probe.name, *field, String::new(), t.fields[field].clone()));
        }
    }
    let known = |p: &str, f: &str| {
        KNOWN.iter().find(|k| {
            (k.setup == setup.dir || k.setup == "*")
                && (k.probe == p || k.probe == "*")
                && (k.field == f || k.field == "*")
        })
    };
    let unexplained: Vec<String> = found
        .iter()
        .filter(|(p, f, _, _)| known(p, f).is_none())
        .map(|(p, f, e, t)| format!("{p}: {f}\n  envoy: {e}\n  tern:  {t}"))
        .collect();
    for (p, f, e, t) in &found {
        if let Some(k) = known(p, f) {
            eprintln!(
                "known difference {p}: {f} ({})\n  envoy: {e}\n  tern:  {t}",
                k.why
            );
        }
    }
    let stale: Vec<String> = KNOWN
        .iter()
        .filter(|k| k.setup == setup.dir || k.setup == "*")
        .filter(|k| {
            !found.iter().any(|(p, f, _, _)| {
                (*p == k.probe || k.probe == "*") && (*f == k.field || k.field == "*")
            })
        })
        .map(|k| format!("{}: {}", k.probe, k.field))
        .collect();
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "{}: {} unexplained differences between Envoy and Tern:\n{}\n\nknown differences that no longer show: {stale:?}\n\nenvoy log:\n{}\ntern log:\n{}",
        setup.dir,
        unexplained.len(),
        unexplained.join("\n"),
        envoy.logs(),
        tern.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_behaves_like_envoy() {
    let setup = Setup {
        dir: "quickstart",
        bootstrap: "envoy.yaml",
        backends: &["api"],
        listeners: 1,
        certs: false,
        logs: false,
    };
    let corpus = [
        get("root", "/"),
        get("healthz", "/healthz"),
        get("healthz with query", "/healthz?verbose=1"),
        get("exact path only", "/healthz/"),
        get("redirect", "/old/page?x=1"),
        get("redirect keeps the host", "/old/a/b").host("shop.example.com:8080"),
        get("api rewritten", "/api/hello?x=1"),
        get("api client headers", "/api/h").headers(&[
            ("x-custom", "1"),
            ("x-forwarded-for", "203.0.113.7"),
            ("cookie", "a=b"),
        ]),
        get("api post", "/api/orders").method("POST"),
        get("api no slash", "/api"),
        get("no route", "/nothing"),
        get("api 503 from upstream", "/api/x").before(&[Act::Fail("api", 1, 503)]),
        // Paths as they come: no normalisation in either (Envoy's defaults).
        get("dot segments", "/api/../healthz"),
        get("double slash", "/api//x"),
        get("encoded slash", "/api%2Fx"),
        get("case of the path", "/API/x"),
        get("encoded in the rest", "/api/a%20b?q=%41"),
        get("head of a direct response", "/healthz").method("HEAD"),
        get("options", "/api/x").method("OPTIONS"),
        get("host with a trailing dot", "/api/x").host("example.com."),
    ];
    differential(&setup, &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_sidecar_behaves_like_envoy() {
    let setup = Setup {
        dir: "mesh",
        bootstrap: "bootstrap.yaml",
        backends: &["v1", "v2", "web", "flaky", "slow", "pa", "pb"],
        listeners: 1,
        certs: false,
        logs: true,
    };
    const O: &str = "orders.mesh.local";
    let corpus = [
        // Virtual hosts by Host.
        get("ping", "/ping").host(O),
        get("ping by the short name", "/ping").host("orders"),
        get("ping with a port", "/ping").host("orders.mesh.local:8080"),
        get("ping upper case host", "/ping").host("ORDERS.mesh.local"),
        get("unknown host", "/ping").host("elsewhere.example"),
        get("host with a trailing dot", "/ping").host("orders.mesh.local."),
        get("web exact", "/index.html").host("web.mesh.local"),
        get("web suffix", "/index.html").host("eu.web.mesh.local"),
        get("web suffix needs a label", "/").host("web.mesh.local.evil"),
        // Header matches.
        get("teapot without header", "/teapot").host(O),
        get("teapot with header", "/teapot")
            .host(O)
            .headers(&[("x-brew", "")]),
        get("inverted present without header", "/brew").host(O),
        get("inverted present with header", "/brew")
            .host(O)
            .headers(&[("x-brew", "1")]),
        get("canary header", "/v2/orders/7")
            .host(O)
            .headers(&[("x-canary", "1")]),
        get("canary header other value", "/v2/orders/7")
            .host(O)
            .headers(&[("x-canary", "2")]),
        get("stable", "/v2/orders/7?q=1").host(O),
        get("inverted match without header", "/admin/x").host(O),
        get("inverted match with header", "/admin/x")
            .host(O)
            .headers(&[("x-internal", "yes")]),
        // Regex, query, rewrites.
        get("items regex", "/items/42").host(O),
        get("items regex is whole path", "/items/42/x").host(O),
        get("search debug", "/search?debug").host(O),
        get("search debug with value", "/search?debug=1&x=2").host(O),
        get("search", "/search?nodebug=1").host(O),
        // Redirects.
        get("moved", "/old-api/v1/x?y=1").host(O),
        get("moved post", "/old-api/v1/x").host(O).method("POST"),
        get("legacy", "/legacy?a=b").host(O),
        get("legacy with port", "/legacy").host("orders.mesh.local:8080"),
        // Header rules at every level; the client's own headers.
        get("api headers", "/api/list?page=2").host(O).headers(&[
            ("x-debug", "1"),
            ("x-remove-me", "1"),
            ("x-mesh", "from-client"),
            ("x-chain", "client"),
            ("x-user", "alice"),
            ("x-forwarded-for", "198.51.100.1"),
        ]),
        get("api without x-user", "/api/list").host(O),
        get("api delete", "/api/list/1").host(O).method("DELETE"),
        // Retries, timeouts, connect failures, outlier detection.
        get("retry then success", "/flaky/a")
            .host(O)
            .before(&[Act::Fail("flaky", 2, 503)]),
        get("retries exhausted", "/flaky/a")
            .host(O)
            .before(&[Act::Fail("flaky", 5, 500)]),
        get("4xx not retried", "/flaky/a")
            .host(O)
            .before(&[Act::Fail("flaky", 1, 404)]),
        get("gateway error retried", "/gw/a")
            .host(O)
            .before(&[Act::Fail("flaky", 1, 502)]),
        get("500 is not a gateway error", "/gw/a")
            .host(O)
            .before(&[Act::Fail("flaky", 1, 500)]),
        get("post retried", "/flaky/a")
            .host(O)
            .method("POST")
            .before(&[Act::Fail("flaky", 1, 503)]),
        get("route timeout", "/slow/a")
            .host(O)
            .before(&[Act::Delay("slow", 1, 1500)]),
        get("per-try timeout retried", "/per-try/a")
            .host(O)
            .before(&[Act::Delay("slow", 1, 1500)]),
        get("connect failure", "/down/a").host(O),
        get("outlier ejection", "/eject/a")
            .host(O)
            .before(&[Act::Fail("pb", usize::MAX, 500)])
            .repeat(12, Spread::Named),
    ];
    differential(&setup, &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilience_example_behaves_like_envoy() {
    let setup = Setup {
        dir: "resilience",
        bootstrap: "envoy.yaml",
        backends: &[
            "o1", "o2", "cat1", "cat2", "canary", "c1", "c2", "c3", "inv1", "inv2", "inv3",
        ],
        listeners: 2,
        certs: false,
        logs: false,
    };
    let corpus = [
        get("healthz", "/healthz"),
        get("orders", "/orders/1").repeat(4, Spread::Total),
        // Route policy (5xx, 2 retries) replaces the virtual host's: a 500 is retried.
        get("orders retried on 500", "/orders/1")
            .before(&[Act::Fail("o1", 9, 500), Act::Fail("o2", 9, 500)])
            .repeat(1, Spread::Total),
        get("orders 404 not retried", "/orders/1")
            .before(&[Act::Fail("o1", 1, 404), Act::Fail("o2", 1, 404)])
            .repeat(1, Spread::Total),
        // The virtual host's policy (gateway-error, 1 retry): a 500 is not retried, a 503 is.
        // (Every endpoint fails: which one a weighted split and round robin pick is random.)
        get("catalogue 500 not retried", "/catalogue/x")
            .before(&[
                Act::Fail("cat1", 9, 500),
                Act::Fail("cat2", 9, 500),
                Act::Fail("canary", 9, 500),
            ])
            .repeat(1, Spread::Total),
        get("catalogue 503 retried", "/catalogue/x")
            .before(&[
                Act::Fail("cat1", 9, 503),
                Act::Fail("cat2", 9, 503),
                Act::Fail("canary", 9, 503),
            ])
            .repeat(1, Spread::Total),
        // Consistent hashing: one session, one replica.
        get("cart session sticks", "/cart/items")
            .headers(&[("cookie", "session=abc")])
            .repeat(6, Spread::Shape),
        get("cart by source address", "/cart/items").repeat(6, Spread::Shape),
        get("cart retry", "/cart/items")
            .headers(&[("cookie", "session=abc")])
            .before(&[
                Act::Fail("c1", 1, 503),
                Act::Fail("c2", 1, 503),
                Act::Fail("c3", 1, 503),
            ])
            .repeat(1, Spread::Shape),
        // Inventory: retries go to other endpoints; outlier detection takes the bad one out.
        get("inventory", "/stock/1").on(1).repeat(1, Spread::Shape),
        get("inventory retries", "/stock/1")
            .on(1)
            .before(&[
                Act::Fail("inv1", 1, 500),
                Act::Fail("inv2", 1, 500),
                Act::Fail("inv3", 1, 500),
            ])
            .repeat(1, Spread::Shape),
        get("inventory ejects a failing endpoint", "/stock/1")
            .on(1)
            .before(&[Act::Fail("inv3", usize::MAX, 502)])
            .repeat(15, Spread::Count("inv3")),
    ];
    differential(&setup, &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_gateway_behaves_like_envoy() {
    let setup = Setup {
        dir: "gateway",
        bootstrap: "bootstrap.json",
        backends: &["reads", "writes", "u1", "u2", "u3"],
        listeners: 1,
        certs: false,
        logs: true,
    };
    const A: &str = "api.example.com";
    let corpus = [
        get("healthz", "/healthz").host(A),
        get("healthz by host prefix", "/healthz").host("api.internal"),
        get("maintenance", "/maintenance/now").host(A),
        get("orders read", "/orders/1").host(A),
        get("orders write", "/orders").host(A).method("POST"),
        get("orders put", "/orders/1").host(A).method("PUT"),
        get("see other", "/go?x=1").host(A),
        get("temporary to https", "/tmp/file?x=1").host("api.example.com:8080"),
        // Without the hash policy's header the ring picks at random.
        get("users v2", "/users/7?v=2")
            .host(A)
            .repeat(1, Spread::Total),
        get("users v3", "/users/7?v=3")
            .host(A)
            .repeat(1, Spread::Total),
        get("user sticks", "/users/7")
            .host(A)
            .headers(&[("x-user-id", "42")])
            .repeat(6, Spread::Shape),
        get("conflict retried", "/conflict")
            .host(A)
            .before(&[Act::Fail("reads", 1, 409)]),
        get("conflict retried once", "/conflict")
            .host(A)
            .method("POST")
            .before(&[Act::Fail("reads", 5, 409)]),
        get("header rule levels", "/chain")
            .host(A)
            .headers(&[("x-env", "client"), ("x-forwarded-for", "203.0.113.1")]),
        get("www rewrite", "/app.js?v=1").host("www.example.com"),
        // Faults and local rate limits configured per route.
        get("fault abort", "/fault/abort/x").host(A),
        get("fault delay", "/fault/delay/x").host(A),
        get("rate limited", "/limited")
            .host(A)
            .repeat(3, Spread::Total),
        get("no virtual host", "/").host("other.example.com"),
    ];
    differential(&setup, &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_example_behaves_like_envoy() {
    let setup = Setup {
        dir: "tls",
        bootstrap: "envoy.yaml",
        backends: &[],
        listeners: 2,
        certs: true,
        logs: false,
    };
    let corpus = [
        get("over TLS", "/orders?x=1").tls(TLS_NAME),
        get("over TLS post", "/orders").tls(TLS_NAME).method("POST"),
        get("unknown server name", "/").tls("other.example.test"),
        get("plaintext redirected", "/orders?x=1")
            .host(TLS_NAME)
            .on(1),
        get("plaintext redirected keeps no port", "/a")
            .host("api.example.test:8080")
            .on(1),
    ];
    differential(&setup, &corpus).await;
}
