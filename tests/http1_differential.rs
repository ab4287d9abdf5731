//! Differential tests of Tern's HTTP/1 request handling against a plain hyper 1.x HTTP/1 server
//! (the oracle, in this process): the smuggling corpus (`tests/corpus`) and a few hundred request
//! heads made by a seeded generator of random mutations are sent, each followed by the probe, to
//! Tern (whose upstream is a recording [`RawBackend`]) and to the oracle. For each input the
//! requests that got through are compared: accepted or rejected, and when both accept, method,
//! path, end-to-end headers and body as the upstream saw them against what hyper parsed.
//!
//! Every disagreement is expected explicitly: the corpus rows by name in [`KNOWN`], the generated
//! inputs by a rule in [`RULES`], each with its reason (Tern stricter on purpose, Tern's routing
//! policy, a limit). A new disagreement fails the test, and so does a listed corpus row that
//! agrees again (the list is kept exact); the count each rule explains is printed.

mod corpus;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corpus::{exchange, request_cases, start, strict_cases, ANSWER, PROBE};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_testkit::RawBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the receiving side saw it, normalised for comparison.
#[derive(Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    /// Origin form: path and query.
    path: String,
    /// End-to-end headers, sorted: (lower-case name, value).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Headers one side adds or removes by design: hop-by-hop ones and their framing (compared
/// through the body), and what a proxy adds (`x-forwarded-*`, `x-request-id`).
const NOT_COMPARED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

/// Shown as text, long values cut: a failure message stays readable.
impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cut = |b: &[u8]| {
            let t = String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned();
            if b.len() > 40 {
                format!("{t}...({} bytes)", b.len())
            } else {
                t
            }
        };
        write!(f, "{} {} [", self.method, cut(self.path.as_bytes()))?;
        for (n, v) in &self.headers {
            write!(f, "{n}: {:?}; ", cut(v))?;
        }
        write!(f, "] body {:?}", cut(&self.body))
    }
}

fn normalise(
    method: &str,
    path: &str,
    headers: impl Iterator<Item = (String, Vec<u8>)>,
    body: Vec<u8>,
) -> Seen {
    let headers: Vec<(String, Vec<u8>)> = headers.collect();
    // Headers the Connection header names are hop-by-hop too (RFC 9110 §7.6.1).
    let nominated: BTreeSet<String> = headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut headers: Vec<(String, Vec<u8>)> = headers
        .into_iter()
        .filter(|(n, _)| !NOT_COMPARED.contains(&n.as_str()) && !nominated.contains(n))
        .collect();
    headers.sort();
    Seen {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
    }
}

/// The oracle: hyper's HTTP/1 server with its defaults, recording every request it parses.
struct Oracle {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Oracle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Oracle {
    async fn start() -> Oracle {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            if let Ok(body) = body {
                                let path = parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/".to_string(), |p| p.to_string());
                                let headers = parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()));
                                log.lock().unwrap().push(normalise(
                                    parts.method.as_str(),
                                    &path,
                                    headers,
                                    body.to_vec(),
                                ));
                            }
                            let text = "ok";
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Oracle { addr, seen, task }
    }
}

/// What one side let through for one input: the requests, or `None` when the exchange hung.
type Outcome = Option<Vec<Seen>>;

async fn oracle_exchange(o: &Oracle, bytes: &[u8]) -> Outcome {
    let before = o.seen.lock().unwrap().len();
    let mut s = TcpStream::connect(o.addr).await.unwrap();
    // As for Tern (`exchange`): a refused input may be closed on before it is all written or
    // read, and the end may be a reset; what the service saw is the outcome.
    let _ = s.write_all(&[bytes, PROBE].concat()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(ANSWER, s.read_to_end(&mut got))
        .await
        .ok()?;
    Some(o.seen.lock().unwrap()[before..].to_vec())
}

async fn tern_exchange(port: u16, be: &RawBackend, bytes: &[u8]) -> Outcome {
    let before = be.requests().len();
    exchange(port, bytes).await.ok()?;
    let seen = be.requests()[before..]
        .iter()
        .map(|r| {
            normalise(
                &r.method,
                &r.target,
                r.headers.iter().cloned(),
                r.body.clone(),
            )
        })
        .collect();
    Some(seen)
}

/// Corpus rows on which Tern and hyper's server disagree today, and why.
const KNOWN: &[(&str, &str)] = &[
    (
        "websocket_not_enabled",
        "Tern answers an upgrade its listener does not enable 403 and closes (Envoy's); hyper \
         hands it to the service",
    ),
    (
        "websocket_with_a_body",
        "the same: an upgrade that is not enabled is refused before its body is read",
    ),
    (
        "connect_not_routed",
        "Tern routes CONNECT only to a route made for it (Envoy's `connect_matcher`): 404",
    ),
    // The strict rows (`strict_cases`), which Tern's own engine refuses and hyper takes.
    (
        "cl_te_both",
        "Tern refuses a request with both Content-Length and Transfer-Encoding (Envoy's 400); \
         hyper reads it as chunked",
    ),
    ("te_cl_both", "the same (the TE.CL shape)"),
    (
        "te_gzip_then_chunked",
        "Tern answers 501 to a coding it does not implement (RFC 9112 §6.1, Envoy); hyper \
         de-chunks and hands on a body still gzip-coded",
    ),
    (
        "te_identity_then_chunked",
        "the same for `identity`, which is no longer a transfer coding",
    ),
    (
        "te_chunked_twice",
        "chunked applied twice is invalid (RFC 9112 §6.1); hyper reads it once",
    ),
    (
        "chunk_size_trailing_space",
        "a chunk size is 1*HEXDIG, BWS only before `;` (RFC 9112 §7.1); hyper skips spaces",
    ),
    (
        "chunk_extension_ctl",
        "chunk extensions are token / quoted-string (RFC 9112 §7.1.1); hyper skips their bytes",
    ),
    (
        "fragment_in_target",
        "an origin-form target has no fragment (RFC 9112 §3.2): 400; hyper drops the fragment",
    ),
    (
        "header_over_60_kib",
        "max_request_headers_kb is a limit on the head, whole or not: 431; hyper's buffer takes it",
    ),
    (
        "uri_over_60_kib",
        "a request line over max_request_headers_kb: 414 (RFC 9112 §3); hyper's limit is 64 KiB",
    ),
    (
        "header_far_over_limit",
        "Tern's max_request_headers_kb is 60 (Envoy's default): 431; hyper's default buffer \
         (~400 KiB) takes a 200 KiB header",
    ),
];

/// A disagreement on a generated input is expected when one of these rules explains it.
struct Rule {
    reason: &'static str,
    applies: fn(&[u8], &Outcome, &Outcome) -> bool,
}

/// The lines of the first request head of `input`, up to the first empty line.
fn head_lines(input: &[u8]) -> Vec<&[u8]> {
    let end = input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(input.len());
    input[..end].split(|&b| b == b'\n').collect()
}

/// The values of the Host lines of the first request of `input`.
fn host_lines(input: &[u8]) -> Vec<&[u8]> {
    head_lines(input)
        .into_iter()
        .skip(1)
        .filter_map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let i = l.iter().position(|&b| b == b':')?;
            l[..i]
                .eq_ignore_ascii_case(b"host")
                .then(|| l[i + 1..].trim_ascii())
        })
        .collect()
}

/// A plain `name[:port]`: what Tern's Host check lets through.
fn plain_host(v: &[u8]) -> bool {
    let (name, port) = match v.iter().rposition(|&b| b == b':') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(b))
        && port.is_none_or(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
}

/// The first request line of `input` ends in `HTTP/1.0`.
fn http10(input: &[u8]) -> bool {
    head_lines(input)
        .first()
        .is_some_and(|l| l.trim_ascii_end().ends_with(b"HTTP/1.0"))
}

const RULES: &[Rule] = &[
    Rule {
        reason: "Tern requires one valid Host authority to route (400, the connection kept); \
                 hyper passes any Host, several, or none",
        applies: |input, tern, oracle| {
            let hosts = host_lines(input);
            let one_valid = hosts.len() == 1 && plain_host(hosts[0]);
            let no_host_10 = hosts.is_empty() && http10(input);
            !one_valid
                && !no_host_10
                && matches!((tern, oracle), (Some(t), Some(o)) if !o.is_empty() && *t == o[1..])
        },
    },
    Rule {
        reason: "an HTTP/1.0 request without Host goes upstream as HTTP/1.1 with an empty Host \
                 (RFC 9112 §3.2: a client MUST send one, empty when the target has no authority)",
        applies: |input, tern, oracle| {
            let (Some(t), Some(o)) = (tern, oracle) else {
                return false;
            };
            let mut t = t.clone();
            if let Some(first) = t.first_mut() {
                first
                    .headers
                    .retain(|(n, v)| !(n == "host" && v.is_empty()));
            }
            host_lines(input).is_empty() && http10(input) && t == *o
        },
    },
];

/// Bytes a mutation inserts: the ones framing and header parsing hinge on.
const INTERESTING: &[u8] = b"\0\r\n\t\x0b\x0c\x7f :,;\"\\/\x80\xff_-=";

/// Header lines a mutation inserts (values small enough that the probe still ends the input).
const LINES: &[&str] = &[
    "transfer-encoding: chunked\r\n",
    "transfer-encoding: identity\r\n",
    "content-length: 0\r\n",
    "content-length: 3\r\n",
    "connection: keep-alive\r\n",
    "connection: close\r\n",
    "expect: nothing\r\n",
    "x-a:  spaced  \r\n",
    "host: y\r\n",
];

const BASES: &[&str] = &[
    "GET /a HTTP/1.1\r\nhost: x\r\nuser-agent: gen\r\naccept: */*\r\n\r\n",
    "POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nx-a: b\r\n\r\n",
    "GET /a?q=1&r=%20 HTTP/1.1\r\nhost: x:80\r\nx-b: c, d\r\n\r\n",
    "DELETE /b HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
];

/// `n` request heads: a base head with one to three random mutations each, from `seed`.
fn generated(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut b = BASES[rng.random_range(0..BASES.len())].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..=3) {
                // Never inside the final CRLF CRLF: the head stays one head.
                let at = rng.random_range(0..b.len() - 2);
                match rng.random_range(0..5) {
                    0 => b.insert(at, INTERESTING[rng.random_range(0..INTERESTING.len())]),
                    1 => b[at] = INTERESTING[rng.random_range(0..INTERESTING.len())],
                    2 => {
                        b.remove(at);
                    }
                    3 => {
                        // A header line inserted after the request line.
                        let line_end = b.iter().position(|&c| c == b'\n').unwrap() + 1;
                        let l = LINES[rng.random_range(0..LINES.len())];
                        b.splice(line_end..line_end, l.bytes());
                    }
                    _ => {
                        // The case of a letter flipped.
                        b[at] = if b[at].is_ascii_lowercase() {
                            b[at].to_ascii_uppercase()
                        } else {
                            b[at].to_ascii_lowercase()
                        };
                    }
                }
            }
            b
        })
        .collect()
}

/// How many generated inputs, and the seed (change the seed to explore; keep it fixed in CI).
const GENERATED: usize = 300;
const SEED: u64 = 17;

#[tokio::test]
async fn tern_and_hyper_agree_on_the_corpus_or_the_difference_is_listed() {
    let be = RawBackend::ok().await;
    let t = start(&be).await;
    let oracle = Oracle::start().await;
    let mut differ = Vec::new();
    for c in request_cases().into_iter().chain(strict_cases()) {
        let tern = tern_exchange(t.port, &be, &c.send).await;
        let hyper = oracle_exchange(&oracle, &c.send).await;
        if tern != hyper {
            differ.push((c.name, format!("tern {tern:?}\n  hyper {hyper:?}")));
        }
    }
    let got: BTreeSet<&str> = differ.iter().map(|(n, _)| *n).collect();
    let want: BTreeSet<&str> = KNOWN.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        got,
        want,
        "disagreements not as listed:\n{}",
        differ
            .iter()
            .map(|(n, d)| format!("{n}:\n  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn tern_and_hyper_agree_on_generated_heads_or_a_rule_explains_it() {
    let be = RawBackend::ok().await;
    let t = start(&be).await;
    let oracle = Oracle::start().await;
    let mut unexplained = Vec::new();
    let mut explained = vec![0usize; RULES.len()];
    let mut accepted = 0;
    for input in generated(SEED, GENERATED) {
        let tern = tern_exchange(t.port, &be, &input).await;
        let hyper = oracle_exchange(&oracle, &input).await;
        if tern == hyper {
            accepted += usize::from(
                tern.as_ref()
                    .is_some_and(|s| s.iter().any(|r| r.path != "/last")),
            );
            continue;
        }
        match RULES
            .iter()
            .position(|r| (r.applies)(&input, &tern, &hyper))
        {
            Some(i) => explained[i] += 1,
            None => unexplained.push(format!(
                "{:?}\n  tern {tern:?}\n  hyper {hyper:?}",
                String::from_utf8_lossy(&input)
            )),
        }
    }
    assert!(
        unexplained.is_empty(),
        "{} unexplained disagreements:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    // The generator must reach both sides of the parsers, or the comparison says little.
    assert!(
        (GENERATED / 10..GENERATED * 9 / 10).contains(&accepted),
        "{accepted} of {GENERATED} inputs accepted"
    );
    eprintln!(
        "{GENERATED} generated heads: {accepted} accepted by both; explained disagreements: {:?}",
        RULES
            .iter()
            .zip(&explained)
            .map(|(r, n)| (n, r.reason))
            .collect::<Vec<_>>()
    );
}
