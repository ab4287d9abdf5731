//! The request-smuggling and framing corpus (issue 17, "Evidence that it is safe"): CL.TE, TE.CL
//! and TE.TE obfuscations, Content-Length tricks, chunk-size and chunk-extension tricks, header
//! tricks, limits, pipelining, upgrade games, HTTP/1.0 keep-alive, and upstream responses with
//! broken framing. Written from the published descriptions of the attack classes (PortSwigger's
//! request-smuggling research, the HTTP Garden's differential findings), not copied from them.
//!
//! Each row runs on one client connection against a real `tern` whose upstream is a
//! [`RawBackend`] recording the exact bytes it receives. A row states the statuses the client
//! gets (Envoy's defaults where RFC 9112 leaves a choice: the table in docs/http1.md), whether the
//! connection stays open, and exactly which requests (request line and body) reached the
//! upstream: nothing of a rejected request, never a smuggled one. Every row's bytes are followed
//! by a probe request (`GET /last`, `connection: close`) in the same write: the probe is answered
//! only if the connection was kept, and must never reach the upstream after a framing error, so
//! "the connection is closed" is proven without a timed wait. The rows hold for any correct
//! HTTP/1 engine: hyper's today and Tern's own.

mod corpus;

use corpus::{exchange, request_cases, start, Case, Setup, Up};
use tern_testkit::{parse_responses, wait_for, RawBackend, RawRequest, Reply};

/// Runs one row; the failure, if any, as text.
async fn run(t: &Setup, be: &RawBackend, c: &Case) -> Result<(), String> {
    let before = be.requests().len();
    let bytes_before = received(be);
    let cut_before = cut_conns(be);
    let got = exchange(t.port, &c.send).await?;
    if matches!(c.up, Up::Cut) {
        // Tern streams a request's head upstream before its body goes bad, then closes that
        // connection: wait until the backend has read it to its close, so that its bytes are
        // this row's and not counted in the next one (the backend reads each connection on its
        // own task, after the client already has its answer).
        wait_for("the cut upstream connection", || {
            let n = cut_conns(be);
            async move { (n > cut_before).then_some(()) }
        })
        .await;
    }
    let (resps, rest) = parse_responses(&got, usize::from(c.head));
    let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
    let mut want = c.answers.to_vec();
    if c.open {
        want.push(200);
    }
    let text = String::from_utf8_lossy(&got);
    if statuses != want || !rest.is_empty() {
        return Err(format!("client got {statuses:?}, want {want:?}: {text:?}"));
    }
    if c.open && resps.last().is_some_and(|r| r.body != b"ok 0") {
        return Err(format!("the probe's answer: {text:?}"));
    }
    let reqs: Vec<RawRequest> = be.requests()[before..].to_vec();
    let seen: Vec<(String, Vec<u8>)> = reqs.iter().map(|r| (r.line(), r.body.clone())).collect();
    let mut expected: Vec<(String, Vec<u8>)> = match &c.up {
        Up::Got(list) => list
            .iter()
            .map(|(l, b)| (l.to_string(), b.to_vec()))
            .collect(),
        Up::Cut => Vec::new(),
    };
    if c.open {
        expected.push(("GET /last".into(), Vec::new()));
    }
    if seen != expected {
        return Err(format!(
            "the upstream got {:?}, want {:?}",
            reqs.iter()
                .map(|r| String::from_utf8_lossy(&r.wire).into_owned())
                .collect::<Vec<_>>(),
            expected
        ));
    }
    for r in &reqs {
        for h in ["upgrade", "http2-settings"] {
            if !r.header(h).is_empty() {
                return Err(format!("`{h}` reached the upstream: {:?}", r.headers));
            }
        }
    }
    // Byte for byte: the upstream received exactly the requests listed (no byte of a refused
    // one), or for a cut row at most the start of one more.
    let extra = received(be) - bytes_before - reqs.iter().map(|r| r.wire.len()).sum::<usize>();
    if extra > 0 && !matches!(c.up, Up::Cut) {
        return Err(format!(
            "{extra} more bytes reached the upstream: {:?}",
            be.conns()
        ));
    }
    // A request started upstream and not finished must be cut: its connection closed.
    for (i, conn) in be.conns().iter().enumerate() {
        if let Some(m) = &conn.malformed {
            return Err(format!(
                "the proxy sent malformed bytes upstream ({m}): {conn:?}"
            ));
        }
        if conn.unparsed > 0 && !conn.eof {
            if !matches!(c.up, Up::Cut) {
                return Err(format!("a request was started upstream: {conn:?}"));
            }
            be.wait_eof(i).await;
        }
    }
    Ok(())
}

/// Upstream connections closed with a request started and not finished.
fn cut_conns(be: &RawBackend) -> usize {
    be.conns()
        .iter()
        .filter(|c| c.unparsed > 0 && c.eof)
        .count()
}

/// Bytes the backend received so far, on all connections.
fn received(be: &RawBackend) -> usize {
    be.conns().iter().map(|c| c.bytes.len()).sum()
}

/// Runs rows one after the other on one tern and fails with every failing row listed.
async fn run_all(cases: Vec<Case>) {
    let be = RawBackend::ok().await;
    let t = start(&be).await;
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = run(&t, &be, c).await {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    assert!(
        be.requests().iter().all(|r| r.target != "/smuggled"),
        "a smuggled request reached the upstream"
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn request_framing_corpus() {
    run_all(request_cases()).await;
}

/// The rows today's hyper-based engine does not meet (docs/http1.md, "What today's engine does
/// differently"): they land with Tern's own HTTP/1 engine (issue 17).
#[tokio::test]
async fn strict_framing_the_new_engine_brings() {
    run_all(corpus::strict_cases()).await;
}

/// Fields go on in the order they came, both ways: a repeated name is not regrouped with its
/// first line (a hash map would move `x-a: 3` up beside `x-a: 1`), so readers for whom the
/// order of lines matters (`set-cookie`, a list split over lines) see what the peer sent.
#[tokio::test]
async fn fields_keep_their_order_both_ways() {
    let be = RawBackend::start(|r| {
        if r.target != "/order" {
            return Reply::Ok;
        }
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nx-r: 1\r\nSet-Cookie: b=2\r\n\
              content-length: 2\r\n\r\nok"
                .to_vec(),
        )
    })
    .await;
    let t = start(&be).await;
    let got = exchange(
        t.port,
        b"GET /order HTTP/1.1\r\nhost: x\r\nX-A: 1\r\nx-b: 2\r\nx-a: 3\r\n\r\n",
    )
    .await
    .unwrap();
    let (resps, _) = parse_responses(&got, 0);
    let names = |h: &[(String, Vec<u8>)]| -> Vec<String> {
        h.iter()
            .filter(|(n, _)| ["x-a", "x-b", "set-cookie", "x-r"].contains(&n.as_str()))
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
            .collect()
    };
    assert_eq!(
        names(&resps[0].headers),
        ["set-cookie: a=1", "x-r: 1", "set-cookie: b=2"]
    );
    let up = be.requests();
    let order = up.iter().find(|r| r.target == "/order").expect("forwarded");
    assert_eq!(names(&order.headers), ["x-a: 1", "x-b: 2", "x-a: 3"]);
}

// ---- Upgrades the upstream refuses ----

/// WebSocket smuggling: a client asks for an upgrade the route allows and sends a request
/// behind it at once; the upstream refuses the upgrade (no `101`). A proxy that took the
/// connection for a tunnel would pass the next bytes upstream unread, past its own rules (here:
/// `/denied`, which the proxy answers 403 itself). The refused upgrade is an ordinary exchange:
/// what follows is read as requests, or the connection is closed.
#[tokio::test]
async fn a_refused_upgrade_never_opens_a_tunnel() {
    refused_upgrade(
        b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n",
        426,
    )
    .await;
    refused_upgrade(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno", 200).await;
}

/// A `101` naming another protocol than the one asked for is the upstream's protocol error
/// (RFC 9110 §7.8: a server switches only to a protocol the client listed): 502, and no tunnel.
/// (The hyper-based engine opened the tunnel: the request behind it reached the upstream unread.)
#[tokio::test]
async fn strict_a_101_for_another_protocol_opens_no_tunnel() {
    refused_upgrade(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
        502,
    )
    .await;
}

/// The upstream answers the upgrade request to `/ws` with `refusal`; the client must get
/// `status` for it, and the request behind it must not reach the upstream.
async fn refused_upgrade(refusal: &'static [u8], status: u16) {
    let be = RawBackend::start(move |r| {
        if r.target == "/ws" {
            Reply::Raw(refusal.to_vec())
        } else {
            Reply::Ok
        }
    })
    .await;
    let t = start(&be).await;
    let upgrade =
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let denied = b"GET /denied HTTP/1.1\r\nhost: x\r\n\r\n";
    let got = exchange(t.port, &[&upgrade[..], denied].concat())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    let (resps, _) = parse_responses(&got, 0);
    let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
    // The answer to the upgrade, then `/denied` is the proxy's own 403 and the probe goes up;
    // or the connection ends after the answer.
    assert!(
        statuses == [status, 403, 200] || statuses == [status],
        "{statuses:?}: {text:?}"
    );
    let lines: Vec<String> = be.requests().iter().map(RawRequest::line).collect();
    assert!(
        lines.iter().all(|l| l != "GET /denied"),
        "a request behind a refused upgrade reached the upstream: {lines:?}"
    );
    assert_eq!(lines[0], "GET /ws");
    // Byte for byte: whole requests only, nothing passed through as a tunnel would.
    for c in be.conns() {
        assert!(c.malformed.is_none() && c.unparsed == 0, "{c:?}");
    }
}

// ---- Upstream responses with broken framing ----

/// One upstream response row: the backend answers `GET /r` with `reply`.
struct RespCase {
    name: &'static str,
    reply: Reply,
    method: &'static str,
    /// What the client gets: status and body, or `None` when the response is cut (its head
    /// arrived, then the connection closed).
    client: Option<(u16, &'static [u8])>,
    /// The upstream connection may be used again (the response was well framed).
    reusable: bool,
    /// The access log's `%RESPONSE_FLAGS%` (Envoy's: `UPE` a response that broke the protocol,
    /// `UC` an upstream connection that ended before its response did, `-` none).
    flag: &'static str,
}

fn resp(
    name: &'static str,
    reply: Reply,
    client: Option<(u16, &'static [u8])>,
    reusable: bool,
    flag: &'static str,
) -> RespCase {
    RespCase {
        name,
        reply,
        method: "GET",
        client,
        reusable,
        flag,
    }
}

fn raw(b: &[u8]) -> Reply {
    Reply::Raw(b.to_vec())
}

fn response_cases() -> Vec<RespCase> {
    vec![
        resp(
            "valid",
            raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"),
            Some((200, b"hi")),
            true,
            "-",
        ),
        resp(
            "cl_and_te",
            raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        resp(
            "cl_differing",
            raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi!"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        resp(
            "te_not_chunked",
            raw(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nhi"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        resp(
            "bad_status_line",
            raw(b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nhi"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        // Bytes after a complete body: the response is delivered, the connection never reused.
        resp(
            "extra_bytes_after_body",
            raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"),
            Some((200, b"hi")),
            false,
            "-",
        ),
        resp(
            "short_body_then_close",
            Reply::Close(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhi".to_vec()),
            None,
            false,
            "UC",
        ),
        resp(
            "cl_negative",
            raw(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nhi"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        resp(
            "obs_fold_header",
            raw(b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 2\r\n\r\nhi"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        resp(
            "nul_in_header",
            raw(b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nhi"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        // A 101 to a request that asked for no upgrade.
        resp(
            "unasked_switching_protocols",
            raw(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"),
            Some((502, b"upstream protocol error\n")),
            false,
            "UPE",
        ),
        // An interim 1xx is followed by the final answer on the same connection.
        resp(
            "interim_then_final",
            raw(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"),
            Some((200, b"hi")),
            true,
            "-",
        ),
        resp(
            "close_delimited_body",
            Reply::Close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()),
            Some((200, b"until the end")),
            false,
            "-",
        ),
        // A 204 or 304 has no body, whatever its headers say; a 1xx is followed by the answer.
        resp(
            "no_content_with_length",
            raw(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            Some((204, b"")),
            true,
            "-",
        ),
        resp(
            "not_modified_with_length",
            raw(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
            Some((304, b"")),
            true,
            "-",
        ),
        RespCase {
            method: "HEAD",
            ..resp(
                "head_with_length",
                raw(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
                Some((200, b"")),
                true,
                "-",
            )
        },
    ]
}

/// The upstream rows today's engine does not meet: a broken chunk in a response body is flagged
/// `UC` (the connection ended) instead of `UPE` (a protocol error, Envoy's).
fn strict_response_cases() -> Vec<RespCase> {
    vec![resp(
        "bad_chunk_size",
        raw(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\nzz\r\n"),
        None,
        false,
        "UPE",
    )]
}

#[tokio::test]
async fn upstream_response_framing_corpus() {
    run_responses(response_cases()).await;
}

#[tokio::test]
async fn strict_upstream_framing_the_new_engine_brings() {
    run_responses(strict_response_cases()).await;
}

/// Runs upstream response rows one after the other on one tern and fails with every failing row
/// listed.
async fn run_responses(cases: Vec<RespCase>) {
    let replies: Vec<(String, Reply)> = cases
        .iter()
        .map(|c| (format!("/r/{}", c.name), c.reply.clone()))
        .collect();
    let be = RawBackend::start(move |r| {
        replies
            .iter()
            .find(|(p, _)| *p == r.target)
            .map_or(Reply::Ok, |(_, reply)| reply.clone())
    })
    .await;
    let t = start(&be).await;
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = run_response(&t, &be, c).await {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

async fn run_response(t: &Setup, be: &RawBackend, c: &RespCase) -> Result<(), String> {
    let before = be.requests().len();
    let req = format!("{} /r/{} HTTP/1.1\r\nhost: x\r\n\r\n", c.method, c.name);
    let got = exchange(t.port, req.as_bytes()).await?;
    let (resps, rest) = parse_responses(&got, usize::from(c.method == "HEAD"));
    let text = String::from_utf8_lossy(&got);
    match c.client {
        Some((status, body)) => {
            // Answered whole, and the client connection kept: the probe is answered too.
            let r: Vec<(u16, &[u8])> = resps
                .iter()
                .map(|r| (r.status, r.body.as_slice()))
                .collect();
            if r != [(status, body), (200, &b"ok 0"[..])] || !rest.is_empty() {
                return Err(format!("client got {text:?}"));
            }
        }
        None => {
            // The head went out, the body was cut: the client connection closes mid-body.
            if !resps.is_empty() || !rest.starts_with(b"HTTP/1.1 200") {
                return Err(format!("want a cut 200, client got {text:?}"));
            }
        }
    }
    let reqs = be.requests()[before..].to_vec();
    let lines: Vec<String> = reqs.iter().map(RawRequest::line).collect();
    let want_lines: Vec<String> = match c.client {
        Some(_) => vec![format!("{} /r/{}", c.method, c.name), "GET /last".into()],
        None => vec![format!("{} /r/{}", c.method, c.name)],
    };
    if lines != want_lines {
        return Err(format!("the upstream got {lines:?}"));
    }
    let path = format!("/r/{}", c.name);
    let line = wait_for(&format!("the access log line of {path}"), || {
        let text = std::fs::read_to_string(&t.log).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.split(' ').next() == Some(path.as_str()))
            .map(str::to_string);
        async move { line }
    })
    .await;
    if line.split(' ').nth(2) != Some(c.flag) {
        return Err(format!("access log {line:?}, want flag {}", c.flag));
    }
    if !c.reusable {
        // Never reused: the probe came on another connection, and this one was closed.
        if reqs.len() > 1 && reqs[1].conn == reqs[0].conn {
            return Err("the broken upstream connection was reused".into());
        }
        be.wait_eof(reqs[0].conn).await;
    }
    Ok(())
}
