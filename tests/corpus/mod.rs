//! The HTTP/1 request corpus shared by `tests/smuggling.rs` (which asserts each row's answer and
//! what reached the upstream) and `tests/http1_differential.rs` (which sends the same bytes to
//! Tern and to hyper's HTTP/1 server and compares): the rows, the probe that follows each row,
//! and a tern in front of a [`RawBackend`]. The rows are written from the published descriptions
//! of the request-smuggling classes (PortSwigger's research, the HTTP Garden), not copied.
// Each test file uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use tern_testkit::{admin_yaml, free_port, ConfigDir, RawBackend, Tern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a row waits for the proxy to close the connection (a passing row never waits this
/// long: the probe asks for the close).
pub const ANSWER: Duration = Duration::from_secs(10);

/// Appended to every row: answered only if the connection was kept open.
pub const PROBE: &[u8] = b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

/// What the upstream must have received for a row.
#[derive(Debug)]
pub enum Up {
    /// Exactly these requests (`METHOD target`, body), whole, in order, and nothing else.
    Got(&'static [(&'static str, &'static [u8])]),
    /// No complete request: the start of the rejected one (its streamed head, perhaps part of its
    /// body), on an upstream connection the proxy then closed.
    Cut,
}

/// Nothing reached the upstream.
pub const NOTHING: Up = Up::Got(&[]);

/// One row of the corpus.
pub struct Case {
    /// The row's name (in failure messages, docs/http1.md and the differential's list).
    pub name: &'static str,
    /// The bytes the client sends (the probe follows).
    pub send: Vec<u8>,
    /// The statuses the client gets, in order (the probe's not counted).
    pub answers: &'static [u16],
    /// The connection stays open: the probe is answered 200 and reaches the upstream.
    pub open: bool,
    /// What reached the upstream.
    pub up: Up,
    /// The first answered request is a HEAD (its response has no body).
    pub head: bool,
}

pub fn case(
    name: &'static str,
    send: impl AsRef<[u8]>,
    answers: &'static [u16],
    open: bool,
    up: Up,
) -> Case {
    Case {
        name,
        send: send.as_ref().to_vec(),
        answers,
        open,
        up,
        head: false,
    }
}

/// A request that is refused before anything reaches the upstream: `status`, connection closed.
pub fn refused(name: &'static str, send: impl AsRef<[u8]>, status: &'static [u16]) -> Case {
    case(name, send, status, false, NOTHING)
}

/// A chunked POST to `/a` whose body (as sent) is `body`.
pub fn chunked(body: &str) -> Vec<u8> {
    format!("POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{body}").into_bytes()
}

/// A POST to `/a` with the given extra header lines (each ending in CRLF) and body.
pub fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /a HTTP/1.1\r\nhost: x\r\n{headers}\r\n{body}").into_bytes()
}

/// A GET of `/a` with the given extra header lines (each ending in CRLF).
pub fn get(headers: &str) -> Vec<u8> {
    format!("GET /a HTTP/1.1\r\nhost: x\r\n{headers}\r\n").into_bytes()
}

pub const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
const HELLO: Up = Up::Got(&[("POST /a", b"hello")]);
const GET_A: Up = Up::Got(&[("GET /a", b"")]);

/// The request side of the corpus: rows every engine must pass.
pub fn request_cases() -> Vec<Case> {
    let smuggle_after = |body: &str| format!("{body}{SMUGGLED}");
    vec![
        // ---- Transfer-Encoding obfuscations (TE.TE): only a final `chunked` frames a body ----
        refused(
            "te_xchunked",
            post("transfer-encoding: xchunked\r\n", "0\r\n\r\n"),
            &[400],
        ),
        refused(
            "te_chunked_then_identity",
            post(
                "transfer-encoding: chunked, identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
        ),
        refused(
            "te_two_lines_chunked_first",
            post(
                "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
        ),
        refused(
            "te_vertical_tab",
            post("transfer-encoding:\x0bchunked\r\n", "0\r\n\r\n"),
            &[400],
        ),
        refused(
            "te_quoted",
            post("transfer-encoding: \"chunked\"\r\n", "0\r\n\r\n"),
            &[400],
        ),
        refused(
            "te_space_before_colon",
            post("transfer-encoding : chunked\r\n", "0\r\n\r\n"),
            &[400],
        ),
        refused(
            "te_on_http10",
            b"POST /a HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &[400],
        ),
        refused(
            "te_gzip_alone",
            post("transfer-encoding: gzip\r\n", "hello"),
            &[400],
        ),
        refused(
            "te_xchunked_with_cl",
            post(
                "content-length: 5\r\ntransfer-encoding: xchunked\r\n",
                "hello",
            ),
            &[400],
        ),
        // Optional whitespace and case are not obfuscation: the value is `chunked`.
        case(
            "te_leading_space",
            post("transfer-encoding:  chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            &[200],
            true,
            HELLO,
        ),
        case(
            "te_tab",
            post("transfer-encoding:\tchunked\t\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            &[200],
            true,
            HELLO,
        ),
        case(
            "te_upper_case",
            post("transfer-encoding: CHUNKED\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            &[200],
            true,
            HELLO,
        ),
        // ---- Content-Length tricks ----
        refused("cl_plus", post("content-length: +5\r\n", "hello"), &[400]),
        refused("cl_minus", post("content-length: -5\r\n", "hello"), &[400]),
        refused("cl_hex", post("content-length: 0x5\r\n", "hello"), &[400]),
        refused(
            "cl_comma_list",
            post("content-length: 5, 5\r\n", "hello"),
            &[400],
        ),
        refused(
            "cl_two_different",
            post("content-length: 5\r\ncontent-length: 6\r\n", "hello!"),
            &[400],
        ),
        refused(
            "cl_overflow",
            post("content-length: 99999999999999999999999\r\n", "hello"),
            &[400],
        ),
        refused(
            "cl_space_inside",
            post("content-length: 5 5\r\n", "hello"),
            &[400],
        ),
        refused("cl_empty", post("content-length: \r\n", "hello"), &[400]),
        case(
            "cl_leading_zeros",
            post("content-length: 005\r\n", "hello"),
            &[200],
            true,
            HELLO,
        ),
        case(
            "cl_surrounding_whitespace",
            post("content-length:  5 \r\n", "hello"),
            &[200],
            true,
            HELLO,
        ),
        // RFC 9110 §8.6: a repeated identical length may be taken as one.
        case(
            "cl_two_same",
            post("content-length: 5\r\ncontent-length: 5\r\n", "hello"),
            &[200],
            true,
            HELLO,
        ),
        // ---- chunk-size, chunk-extension and chunk-data tricks: 400 and close ----
        case(
            "chunk_size_overflow",
            chunked("10000000000000005\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_size_0x",
            chunked("0x5\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_size_plus",
            chunked("+5\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_size_minus",
            chunked("-5\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_size_leading_space",
            chunked(" 5\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_size_bare_lf",
            chunked("5\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_data_bare_lf",
            chunked(&smuggle_after("5\r\nhello\n0\r\n\r\n")),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_data_no_crlf",
            chunked(&smuggle_after("5\r\nhelloXX0\r\n\r\n")),
            &[400],
            false,
            Up::Cut,
        ),
        // The size covers more than the data: what follows (the probe) is eaten as data, then
        // no CRLF.
        case(
            "chunk_size_above_data",
            chunked("10\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_size_below_data",
            chunked(&smuggle_after("3\r\nhello\r\n0\r\n\r\n")),
            &[400],
            false,
            Up::Cut,
        ),
        // The last chunk without the empty line: the probe's request line is read as a trailer.
        case(
            "last_chunk_without_end",
            chunked("5\r\nhello\r\n0\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_extension_bare_cr",
            chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_extension_long",
            chunked(&format!("5;a={}\r\nhello\r\n0\r\n\r\n", "b".repeat(20_000))),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_extension",
            chunked("5;name=value\r\nhello\r\n0\r\n\r\n"),
            &[200],
            true,
            HELLO,
        ),
        case(
            "chunk_extension_quoted",
            chunked("5;name=\"a b\"\r\nhello\r\n0\r\n\r\n"),
            &[200],
            true,
            HELLO,
        ),
        case(
            "chunked_trailers",
            chunked("5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n"),
            &[200],
            true,
            HELLO,
        ),
        // ---- header tricks ----
        refused("obs_fold", get("x-a: a\r\n b\r\n"), &[400]),
        refused("obs_fold_tab", get("x-a: a\r\n\tb\r\n"), &[400]),
        refused("space_before_colon", get("x-a : b\r\n"), &[400]),
        refused("tab_before_colon", get("x-a\t: b\r\n"), &[400]),
        refused("nul_in_value", get("x-a: a\0b\r\n"), &[400]),
        refused("bare_cr_in_value", get("x-a: a\rb\r\n"), &[400]),
        refused("ctl_in_value", get("x-a: a\x01b\r\n"), &[400]),
        refused("vt_in_value", get("x-a: a\x0bb\r\n"), &[400]),
        refused("del_in_value", get("x-a: a\x7fb\r\n"), &[400]),
        refused("nul_in_name", get("x\0a: b\r\n"), &[400]),
        refused("ctl_in_name", get("x\x01a: b\r\n"), &[400]),
        refused("space_in_name", get("x a: b\r\n"), &[400]),
        refused("empty_name", get(": b\r\n"), &[400]),
        refused("no_colon", get("x-a\r\n"), &[400]),
        refused("request_line_double_space", b"GET  /a HTTP/1.1\r\nhost: x\r\n\r\n", &[400]),
        refused("request_line_nul", b"GET /a\0 HTTP/1.1\r\nhost: x\r\n\r\n", &[400]),
        // RFC 9110 §15.6.6 lets a server answer 505; Envoy's codec answers 400.
        refused(
            "http_2_0_version",
            b"GET /a HTTP/2.0\r\nhost: x\r\n\r\n",
            &[400],
        ),
        case(
            "obs_text_in_value",
            get("x-a: caf\u{e9}\r\n"),
            &[200],
            true,
            GET_A,
        ),
        // RFC 9112 §2.2: an empty line before the request line is ignored.
        case(
            "empty_line_before_request",
            [&b"\r\n"[..], &get("")].concat(),
            &[200],
            true,
            GET_A,
        ),
        // RFC 9112 §2.2: a recipient MAY take a bare LF as a line end; the head goes upstream
        // re-written with CRLF, so no hop reads it differently.
        case(
            "bare_lf_line_ends",
            b"GET /a HTTP/1.1\nhost: x\n\n",
            &[200],
            true,
            GET_A,
        ),
        case(
            "absolute_form_target",
            b"GET http://x/a HTTP/1.1\r\nhost: x\r\n\r\n",
            &[200],
            true,
            GET_A,
        ),
        // ---- limits (max_request_headers_kb 60, max_headers_count 100: Envoy's) ----
        refused(
            "header_far_over_limit",
            get(&format!("x-big: {}\r\n", "a".repeat(200 * 1024))),
            &[431],
        ),
        refused(
            "headers_over_100",
            get(&(0..101).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()),
            &[431],
        ),
        // ---- pipelining: answered in order; a rejected request stops the connection ----
        case(
            "pipelined_gets",
            b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\n\r\n",
            &[200, 200],
            true,
            Up::Got(&[("GET /1", b""), ("GET /2", b"")]),
        ),
        case(
            "pipelined_bodies",
            [
                post("content-length: 5\r\n", "hello"),
                chunked("3\r\nabc\r\n0\r\n\r\n"),
            ]
            .concat(),
            &[200, 200],
            true,
            Up::Got(&[("POST /a", b"hello"), ("POST /a", b"abc")]),
        ),
        refused(
            "pipelined_after_a_bad_head",
            [get("x a: b\r\n"), SMUGGLED.as_bytes().to_vec()].concat(),
            &[400],
        ),
        case(
            "pipelined_good_then_bad",
            [get(""), get("x a: b\r\n"), SMUGGLED.as_bytes().to_vec()].concat(),
            &[200, 400],
            false,
            GET_A,
        ),
        // ---- upgrades: none is enabled on this listener ----
        refused(
            "websocket_not_enabled",
            [
                get("connection: upgrade\r\nupgrade: websocket\r\n"),
                SMUGGLED.as_bytes().to_vec(),
            ]
            .concat(),
            &[403],
        ),
        refused(
            "websocket_with_a_body",
            [
                get("connection: upgrade\r\nupgrade: websocket\r\ncontent-length: 5\r\n"),
                b"hello".to_vec(),
            ]
            .concat(),
            &[403],
        ),
        // CONNECT matches no route (Envoy's: only a `connect_matcher` route does); the
        // connection is kept.
        case(
            "connect_not_routed",
            b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n",
            &[404],
            true,
            NOTHING,
        ),
        // h2c is never tunnelled: served as plain HTTP/1.1, its headers stripped.
        case(
            "h2c_upgrade_served_plain",
            get("connection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
            &[200],
            true,
            GET_A,
        ),
        // ---- HTTP/1.0 and keep-alive (RFC 9112 §9.3) ----
        case(
            "http10_closes",
            b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n",
            &[200],
            false,
            GET_A,
        ),
        case(
            "http10_keep_alive",
            b"GET /a HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
            &[200],
            true,
            GET_A,
        ),
        case(
            "http11_connection_close",
            get("connection: close\r\n"),
            &[200],
            false,
            GET_A,
        ),
        Case {
            head: true,
            ..case("head_then_more", b"HEAD /a HTTP/1.1\r\nhost: x\r\n\r\n", &[200], true,
                Up::Got(&[("HEAD /a", b"")]))
        },
    ]
}

/// Rows of the issue's strictness table that today's hyper-based engine does not meet (what it
/// does instead is in docs/http1.md, "What today's engine does differently"); they pass with
/// Tern's own HTTP/1 engine. None of them smuggles a request on today's engine.
pub fn strict_cases() -> Vec<Case> {
    vec![
        refused(
            "cl_te_both",
            post(
                "content-length: 42\r\ntransfer-encoding: chunked\r\n",
                &format!("0\r\n\r\n{SMUGGLED}"),
            ),
            &[400],
        ),
        refused(
            "te_cl_both",
            post(
                "content-length: 4\r\ntransfer-encoding: chunked\r\n",
                &format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
            &[400],
        ),
        refused(
            "te_gzip_then_chunked",
            post(
                "transfer-encoding: gzip, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            &[501],
        ),
        refused(
            "te_identity_then_chunked",
            post(
                "transfer-encoding: identity, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            &[501],
        ),
        refused(
            "te_chunked_twice",
            post(
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
        ),
        case(
            "chunk_size_trailing_space",
            chunked("5 \r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        case(
            "chunk_extension_ctl",
            chunked("5;na\x01me\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
            Up::Cut,
        ),
        refused(
            "fragment_in_target",
            b"GET /a#frag HTTP/1.1\r\nhost: x\r\n\r\n",
            &[400],
        ),
        refused(
            "header_over_60_kib",
            get(&format!("x-big: {}\r\n", "a".repeat(61 * 1024))),
            &[431],
        ),
        refused(
            "uri_over_60_kib",
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(61 * 1024)),
            &[414],
        ),
        refused(
            "uri_far_over_limit",
            format!(
                "GET /{} HTTP/1.1\r\nhost: x\r\n\r\n",
                "a".repeat(200 * 1024)
            ),
            &[414],
        ),
    ]
}

/// A running tern in front of a recording backend: WebSocket enabled on `/ws` only, `/denied`
/// answered 403 by the proxy itself, everything else forwarded.
pub struct Setup {
    pub tern: Tern,
    pub port: u16,
    /// The access log: `PATH STATUS FLAGS` per request.
    pub log: std::path::PathBuf,
    _cfg: ConfigDir,
}

pub async fn start(backend: &RawBackend) -> Setup {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write(
        "all.yaml",
        &format!(
            r#"{admin}listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    upgrade_configs: []
    access_log:
      - {{ path: "{log}", format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%" }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: /denied }}
            direct_response: {{ status: 403, body: "denied" }}
          - match: {{ prefix: /ws }}
            route: {{ cluster: c, upgrade_configs: [{{ upgrade_type: websocket, enabled: true }}] }}
          - match: {{ prefix: / }}
            route: {{ cluster: c }}
clusters:
  - name: c
    endpoints: [{{ address: "{up}" }}]
"#,
            admin = admin_yaml(admin),
            up = backend.addr,
            log = cfg.path().join("access.log").display()
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Setup {
        tern,
        log: cfg.path().join("access.log"),
        port,
        _cfg: cfg,
    }
}

/// Sends `bytes` then the probe on one connection; everything read until the proxy closes it.
pub async fn exchange(port: u16, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The proxy may answer and close before it read everything (a head over the limit): the
    // write then fails, and the answer is still there to read.
    let _ = s.write_all(&[bytes, PROBE].concat()).await;
    let mut got = Vec::new();
    // A reset after the answer (the proxy closed with bytes unread) still leaves what was read.
    match tokio::time::timeout(ANSWER, s.read_to_end(&mut got)).await {
        Ok(_) => Ok(got),
        Err(_) => Err(format!(
            "the connection was not closed; read {:?}",
            String::from_utf8_lossy(&got)
        )),
    }
}
