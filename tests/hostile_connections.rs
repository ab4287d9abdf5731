//! Hostile clients against a real `tern` process: silent and slowloris connections, connection
//! floods over the listener and global limits, running out of descriptors, memory overload,
//! oversized and too many headers, HTTP/2 stream and CONTINUATION floods, and cross-site admin
//! mutations. Each test checks that a well-behaved client keeps being served and that memory
//! stays bounded, with short timeouts and small limits so the whole file runs in seconds.

use std::io::Read as _;
use std::time::Duration;

use tern_testkit::{
    admin_yaml, direct_yaml, free_port, get, request, tern_bin, wait_for, ConfigDir, Proc, Tern,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// tern with one HTTP listener `ingress` answering `ok` directly; `listener_extra` goes into the
/// listener, `top` at the top level, `admin_extra` into the admin block.
async fn start(listener_extra: &str, top: &str, admin_extra: &str) -> (Tern, u16, ConfigDir) {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write(
        "all.yaml",
        &config(admin, port, listener_extra, top, admin_extra),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    (tern, port, cfg)
}

fn config(admin: u16, port: u16, listener_extra: &str, top: &str, admin_extra: &str) -> String {
    format!(
        "{}{admin_extra}listeners:\n  - name: ingress\n    address: 127.0.0.1:{port}\n    route_config: main\n{listener_extra}{}{top}",
        admin_yaml(admin),
        direct_yaml("main", "ok"),
    )
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

/// A well-behaved client: a fresh connection and one request, answered 200 `ok`.
async fn served(port: u16) {
    let r = tokio::time::timeout(Duration::from_secs(10), get(&url(port), &[]))
        .await
        .expect("a well-behaved client is answered in time");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
}

/// A memory figure of `/proc/PID/status` (`VmRSS`, `RssAnon`), in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in {s}"))
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Reads until the peer closes (Ok(bytes)) or `within` passes (Err(bytes so far)).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match r {
        Ok(()) => Ok(got),
        Err(_) => Err(got),
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK block of `GET /` for authority `x` (static-table entries and one literal, no indexing).
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'x'];

/// Frames of the server, as `(type, flags, stream, payload)`.
fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 9 {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        if b.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
        out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
        b = &b[9 + len..];
    }
    out
}

/// Connects with the HTTP/2 preface and an empty SETTINGS, and acknowledges the server's.
async fn h2_connect(port: u16) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !frames(&got).iter().any(|f| f.0 == 4 && f.1 & 1 == 0) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("server SETTINGS")
            .unwrap();
        assert!(n > 0, "closed before SETTINGS");
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(&frame(4, 1, 0, &[])).await.unwrap();
    (s, got)
}

#[tokio::test]
async fn silent_and_partial_connections_are_closed_by_the_header_timeout() {
    let (tern, port, _c) = start("    request_headers_timeout: 300ms\n", "", "").await;
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut partial_line = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    partial_line.write_all(b"GE").await.unwrap();
    let mut partial_preface = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    partial_preface.write_all(&PREFACE[..10]).await.unwrap();
    // A whole HTTP/2 connection setup, then never a HEADERS frame.
    let (mut no_headers, _) = h2_connect(port).await;
    served(port).await;
    let within = Duration::from_secs(10);
    let got = read_until_closed(&mut silent, within)
        .await
        .expect("a silent connection is closed");
    assert!(
        got.is_empty(),
        "nothing is sent to a silent connection: {got:?}"
    );
    let got = read_until_closed(&mut partial_line, within)
        .await
        .expect("a partial request line is closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    read_until_closed(&mut partial_preface, within)
        .await
        .expect("a partial HTTP/2 preface is closed");
    read_until_closed(&mut no_headers, within)
        .await
        .expect("an HTTP/2 connection without HEADERS is closed");
    wait_for("four header timeouts counted", || async {
        (tern
            .stat("listener.ingress.downstream_rq_header_timeout")
            .await
            >= 4)
            .then_some(())
    })
    .await;
    served(port).await;
}

#[tokio::test]
async fn slowloris_flood_is_cut_and_a_good_client_is_served() {
    let (tern, port, _c) = start("    request_headers_timeout: 400ms\n", "", "").await;
    let pid = tern.child.id();
    let base = rss_kib(pid);
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // Half of them trickle a request line that never ends.
        if i % 2 == 0 {
            s.write_all(b"GET /").await.unwrap();
        }
        conns.push(s);
    }
    served(port).await;
    for s in &mut conns {
        let _ = s.write_all(b"a").await;
    }
    for s in &mut conns {
        read_until_closed(s, Duration::from_secs(10))
            .await
            .expect("every slowloris connection is closed");
    }
    wait_for("slowloris connections gone", || async {
        (tern.stat("listener.ingress.downstream_cx_active").await == 0).then_some(())
    })
    .await;
    served(port).await;
    assert!(
        rss_kib(pid) < base + 20 * 1024,
        "RSS {} KiB (from {base})",
        rss_kib(pid)
    );
}

#[tokio::test]
async fn admin_closes_silent_connections() {
    let (tern, _port, _c) = start("", "", "  request_headers_timeout: 300ms\n").await;
    let mut silent = TcpStream::connect(("127.0.0.1", tern.admin)).await.unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", tern.admin)).await.unwrap();
    partial.write_all(b"GET /ready HTT").await.unwrap();
    read_until_closed(&mut silent, Duration::from_secs(10))
        .await
        .expect("the admin endpoint closes a silent connection");
    read_until_closed(&mut partial, Duration::from_secs(10))
        .await
        .expect("the admin endpoint closes a partial request");
    let r = get(&tern.admin_url("/ready"), &[]).await;
    assert_eq!(r.status, 200);
    // Counted once hyper has given the connection up, just after it closed.
    wait_for("both header timeouts counted", || async {
        (tern.stat("server.admin_rq_header_timeout").await >= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn each_client_connection_holds_one_descriptor() {
    let (tern, port, _c) = start("", "", "").await;
    let pid = tern.child.id();
    served(port).await;
    let before = fds(pid);
    let mut conns = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        conns.push(s);
    }
    let after = fds(pid);
    assert!(
        after - before <= 42,
        "40 client connections hold {} descriptors",
        after - before
    );
}

#[tokio::test]
async fn listener_connection_limit_refuses_new_connections_and_spares_established_ones() {
    let (tern, port, _c) = start("    max_connections: 3\n", "", "").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut over = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = over.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let got = read_until_closed(&mut over, Duration::from_secs(10))
        .await
        .expect("a connection over the limit is closed at once");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(
        tern.stat("listener.ingress.downstream_cx_overflow").await,
        1
    );
    // The established connections are untouched.
    for s in &mut held {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // Under the limit again: served.
    held.pop();
    wait_for("a connection slot frees", || async {
        (tern.stat("listener.ingress.downstream_cx_active").await == 2).then_some(())
    })
    .await;
    served(port).await;
}

#[tokio::test]
async fn global_connection_limit_spares_the_admin_endpoint() {
    let (tern, port, _c) = start(
        "",
        "overload:\n  global_downstream_max_connections: 2\n",
        "",
    )
    .await;
    let a = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let b = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    wait_for("two connections open", || async {
        (tern.stat("listener.ingress.downstream_cx_active").await == 2).then_some(())
    })
    .await;
    let mut over = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    read_until_closed(&mut over, Duration::from_secs(10))
        .await
        .expect("a connection over the global limit is closed at once");
    assert_eq!(
        tern.stat("listener.ingress.downstream_global_cx_overflow")
            .await,
        1
    );
    // The admin endpoint does not count against the limit.
    assert_eq!(get(&tern.admin_url("/ready"), &[]).await.status, 200);
    assert_eq!(tern.stat("server.total_connections").await, 2);
    drop((a, b));
    wait_for("connections closed", || async {
        (tern.stat("server.total_connections").await == 0).then_some(())
    })
    .await;
    served(port).await;
}

#[tokio::test]
async fn memory_overload_refuses_new_connections_and_answers_503_om() {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let listener =
        format!("    access_log:\n      - path: {}\n        format: \"%RESPONSE_CODE% %RESPONSE_FLAGS%\\n\"\n", log.display());
    cfg.write("all.yaml", &config(admin, port, &listener, "", ""));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let ask = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    kept.write_all(ask).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A heap limit far below what any process uses: overloaded at the next sample.
    let top = "overload:\n  max_heap_size_bytes: 1048576\n  refresh_interval: 50ms\n";
    cfg.write("all.yaml", &config(admin, port, &listener, top, ""));
    wait_for("overload active", || async {
        (tern.stat("server.overload_active").await == 1).then_some(())
    })
    .await;
    kept.write_all(ask).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    read_until_closed(&mut fresh, Duration::from_secs(10))
        .await
        .expect("a new connection is refused while overloaded");
    assert!(
        tern.stat("listener.ingress.downstream_cx_overload_reject")
            .await
            >= 1
    );
    assert_eq!(
        tern.stat("listener.ingress.downstream_rq_overload_close")
            .await,
        1
    );
    // The admin endpoint keeps working.
    assert_eq!(get(&tern.admin_url("/ready"), &[]).await.status, 200);
    wait_for("the 503 logged with OM", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| l == "503 OM").then_some(())
    })
    .await;
    // Limit lifted: served again.
    cfg.write("all.yaml", &config(admin, port, &listener, "", ""));
    wait_for("overload over", || async {
        (tern.stat("server.overload_active").await == 0).then_some(())
    })
    .await;
    served(port).await;
}

#[tokio::test]
async fn header_size_and_count_limits_answer_431_on_http1() {
    let (tern, port, _c) = start(
        "    max_request_headers_kb: 8\n    max_headers_count: 20\n",
        "",
        "",
    )
    .await;
    let send = |head: String| async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .unwrap_or_else(|g| g);
        String::from_utf8_lossy(&got).into_owned()
    };
    let many: String = (0..21).map(|i| format!("x-h{i}: v\r\n")).collect();
    let got = send(format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n")).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let big = "a".repeat(9 * 1024);
    let got = send(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n")).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let few: String = (0..10).map(|i| format!("x-h{i}: v\r\n")).collect();
    let got = send(format!(
        "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{few}\r\n"
    ))
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(
        tern.stat("listener.ingress.downstream_rq_header_overflow")
            .await,
        2
    );
}

#[tokio::test]
async fn header_size_and_count_limits_answer_431_on_http2() {
    let (_tern, port, _c) = start(
        "    max_request_headers_kb: 8\n    max_headers_count: 20\n",
        "",
        "",
    )
    .await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let send = |n: usize, size: usize| {
        let mut b = http::Request::get(url(port));
        for i in 0..n {
            b = b.header(format!("x-h{i}"), "v".repeat(size));
        }
        client.request(b.body(http_body_util::Empty::new()).unwrap())
    };
    assert_eq!(send(21, 1).await.unwrap().status(), 431);
    assert_eq!(send(2, 9 * 1024).await.unwrap().status(), 431);
    assert_eq!(send(10, 1).await.unwrap().status(), 200);
}

#[tokio::test]
async fn http2_stream_flood_is_held_to_max_concurrent_streams() {
    let (tern, port, _c) = start(
        "    http2_protocol_options:\n      max_concurrent_streams: 10\n",
        "",
        "",
    )
    .await;
    let pid = tern.child.id();
    let base = rss_kib(pid);
    let (mut s, _) = h2_connect(port).await;
    // 150 requests whose bodies never end: each stream stays open.
    let mut flood = Vec::new();
    for i in 0..150u32 {
        flood.extend(frame(1, 0x4, 2 * i + 1, GET_BLOCK));
    }
    s.write_all(&flood).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let refused = |got: &[u8]| {
        frames(got)
            .iter()
            .filter(|f| f.0 == 3 && f.3 == [0, 0, 0, 7])
            .count()
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while refused(&got) < 140 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        refused(&got) >= 140,
        "streams over the limit are refused (REFUSED_STREAM): {} of 150",
        refused(&got)
    );
    served(port).await;
    assert!(
        rss_kib(pid) < base + 20 * 1024,
        "RSS {} KiB (from {base})",
        rss_kib(pid)
    );
}

#[tokio::test]
async fn http2_continuation_flood_is_cut() {
    let (tern, port, _c) = start("    max_request_headers_kb: 16\n", "", "").await;
    let pid = tern.child.id();
    let base = rss_kib(pid);
    let (mut s, _) = h2_connect(port).await;
    s.write_all(&frame(1, 0, 1, GET_BLOCK)).await.unwrap();
    // Endless CONTINUATION frames of literal headers (no END_HEADERS).
    let mut block = Vec::new();
    while block.len() < 16000 {
        block.extend_from_slice(&[0x00, 0x03, b'x', b'-', b'a', 0x7f, 0x00]);
        block.extend(std::iter::repeat_n(b'v', 127));
    }
    let cont = frame(9, 0, 1, &block);
    let mut sent = 0usize;
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        while sent < 64 * 1024 * 1024 {
            if s.write_all(&cont).await.is_err() {
                return true;
            }
            sent += cont.len();
        }
        false
    })
    .await;
    assert!(
        matches!(cut, Ok(true))
            || read_until_closed(&mut s, Duration::from_secs(5))
                .await
                .is_ok(),
        "the flood is cut (sent {sent} bytes)"
    );
    served(port).await;
    assert!(
        rss_kib(pid) < base + 20 * 1024,
        "RSS {} KiB (from {base})",
        rss_kib(pid)
    );
}

#[tokio::test]
async fn http2_rapid_reset_flood_is_cut() {
    // CVE-2023-44487: streams opened and reset at once, faster than they can be served.
    let (tern, port, _c) = start("", "", "").await;
    let pid = tern.child.id();
    let base = rss_kib(pid);
    let (mut s, _) = h2_connect(port).await;
    let mut flood = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(1, 0x4, id, GET_BLOCK));
        flood.extend(frame(3, 0, id, &[0, 0, 0, 8]));
    }
    let _ = s.write_all(&flood).await;
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the flooding connection is closed");
    assert!(
        frames(&got).iter().any(|f| f.0 == 7),
        "closed with a GOAWAY"
    );
    served(port).await;
    assert!(
        rss_kib(pid) < base + 20 * 1024,
        "RSS {} KiB (from {base})",
        rss_kib(pid)
    );
}

#[tokio::test]
async fn admin_refuses_cross_site_mutations() {
    let (tern, _port, _c) = start("", "", "").await;
    let fail = tern.admin_url("/healthcheck/fail");
    let host = format!("127.0.0.1:{}", tern.admin);
    let own = format!("http://{host}");
    for h in [
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        // DNS rebinding: the attacker's name resolves to the admin address.
        vec![
            ("host", "evil.example:9901"),
            ("origin", "http://evil.example:9901"),
        ],
    ] {
        let r = request("POST", &fail, &h, "x=1").await.unwrap();
        assert_eq!(r.status, 403, "{h:?}: {}", r.body);
        assert_eq!(get(&tern.admin_url("/ready"), &[]).await.status, 200);
    }
    // Same origin (a page the admin itself served) and non-browser clients still work.
    let r = request("POST", &fail, &[("origin", &own)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = request("POST", &tern.admin_url("/healthcheck/ok"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(get(&tern.admin_url("/ready"), &[]).await.status, 200);
    let _ = host;
}

/// Starts tern under `prlimit` (hard and soft open-files limit `nofile`), waiting for `/ready`.
async fn start_limited(nofile: &str, cfg: &ConfigDir, admin: u16) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}"))
        .arg("--")
        .arg(tern_bin())
        .arg("--config")
        .arg(cfg.path())
        .args(["--poll-interval", "0", "--log-level", "info"])
        .env_remove("RUST_LOG");
    let p = Proc::spawn_logged(&mut cmd, dir.path().join("tern.log"));
    let ready = format!("http://127.0.0.1:{admin}/ready");
    wait_for("tern /ready", || async {
        request("GET", &ready, &[], "")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    (p, dir)
}

#[tokio::test]
async fn open_files_soft_limit_is_raised_to_the_hard_limit() {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("all.yaml", &config(admin, port, "", "", ""));
    let (p, _d) = start_limited("256:4096", &cfg, admin).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(soft[3], "4096", "{line}");
    assert!(p.logs().contains("open files limit raised"), "{}", p.logs());
}

#[tokio::test]
async fn out_of_descriptors_backs_off_and_recovers() {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("all.yaml", &config(admin, port, "", "", ""));
    let (p, _d) = start_limited("64:64", &cfg, admin).await;
    let pid = p.child.id();
    let mut held = Vec::new();
    for i in 0..90 {
        let to = if i % 3 == 0 { admin } else { port };
        held.push(std::net::TcpStream::connect(("127.0.0.1", to)).unwrap());
    }
    wait_for("accept failures logged", || async {
        p.logs().contains("accept failed").then_some(())
    })
    .await;
    // Out of descriptors for a while: no spinning, one log line per episode.
    let t0 = cpu_ticks(pid);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let used = cpu_ticks(pid) - t0;
    assert!(
        used < 50,
        "{used} ticks of CPU in 1.5 s while out of descriptors"
    );
    let lines = p.logs().matches("accept failed").count();
    assert!(lines <= 2, "{lines} log lines:\n{}", p.logs());
    drop(held);
    // Descriptors back: the admin endpoint and the listener serve again.
    let ready = format!("http://127.0.0.1:{admin}/ready");
    wait_for("admin back", || async {
        request("GET", &ready, &[], "")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    served(port).await;
    let stats = get(&format!("http://127.0.0.1:{admin}/stats"), &[])
        .await
        .body;
    let errors: i64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("server.downstream_cx_accept_error: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(errors >= 1, "{stats}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
}

#[tokio::test]
async fn idle_memory_stays_small() {
    let (tern, port, _c) = start("", "", "").await;
    served(port).await;
    // The process's own memory; the file-backed part of its RSS is mostly the binary, about
    // 25 MB for the unoptimized test build (the release build's whole idle RSS is measured by
    // bench/memory.sh).
    let anon = status_kib(tern.child.id(), "RssAnon");
    assert!(anon <= 10 * 1024, "idle anonymous RSS {anon} KiB");
}

#[tokio::test]
async fn the_allocator_runs_with_one_arena() {
    // glibc reads its tunables at exec: tern runs itself again with them (bench/memory.py shows
    // RSS after repeated connection bursts climbing without it).
    let (tern, _port, _c) = start("", "", "").await;
    let env = std::fs::read(format!("/proc/{}/environ", tern.child.id())).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(
        env.split('\0')
            .any(|v| v == "GLIBC_TUNABLES=glibc.malloc.arena_max=1"),
        "{env}"
    );
}
