//! Hostile and broken requests, byte for byte, through a real `tern` to a raw-socket upstream
//! that records what it receives: stalled and slow uploads, malformed bodies, smuggling attempts
//! (absolute-form targets, duplicate or odd `Host`, `h2c` and unconfigured upgrades), hung and
//! idle upgrades, and upstream responses with broken framing. Each test also checks that a
//! well-behaved client keeps being served, and that a client's fault is never held against the
//! upstream (no 5xx, no outlier ejection).
//!
//! The HTTP/1 server engine will be replaced; these tests pin its behaviour at the byte level.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_testkit::{admin_yaml, free_port, get, request, wait_for, ConfigDir, Tern};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest a test waits for an answer that must come (a passing test never waits this long).
const ANSWER: Duration = Duration::from_secs(10);

/// How the raw upstream answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Reads the whole request (Content-Length or chunked), then answers 200 `ok <body length>`.
    Normal,
    /// Answers 200 as soon as the head is read, then reads the body (an early answer, such as a
    /// 401 or 413); keeps the connection.
    Early,
    /// Answers an `Upgrade` request with 101 and echoes the bytes that follow; else `Normal`.
    Upgrades,
    /// Never answers an `Upgrade` request; else `Normal`.
    HangUpgrades,
    /// Reads the request, then answers with these exact bytes and closes.
    Fixed(&'static [u8]),
    /// Reads the head and nothing else, and never answers.
    Deaf,
    /// Answers 200 as soon as the head is read, then reads nothing more.
    EarlyDeaf,
}

/// One request as the upstream read it: the head (lower case) and the decoded body.
#[derive(Debug, Clone, Default)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    /// Every value of header `name` (lower case), in order.
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// A raw HTTP/1.1 upstream on 127.0.0.1 that records every request it reads.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads from `s` into `buf` until `buf` holds `\r\n\r\n`; returns the head (without it).
async fn read_head(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf[..i].to_vec();
            buf.drain(..i + 4);
            return Some(head);
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Reads exactly `n` bytes, taking what `buf` already holds first.
async fn read_n(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        let mut tmp = [0u8; 4096];
        let got = s.read(&mut tmp).await.ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..got]);
    }
    Some(buf.drain(..n).collect())
}

/// Reads one CRLF-terminated line.
async fn read_line(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(line);
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Reads a message body framed as `head` says (chunked, Content-Length, or none); calls
/// `progress` with the body read so far after each piece.
async fn read_body(
    s: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    head: &str,
    mut progress: impl FnMut(&[u8]),
) -> Option<Vec<u8>> {
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        loop {
            let line = read_line(s, buf).await?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                while !read_line(s, buf).await?.is_empty() {}
                return Some(body);
            }
            body.extend(read_n(s, buf, size).await?);
            read_n(s, buf, 2).await?;
            progress(&body);
        }
    }
    let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap_or(0));
    while body.len() < len {
        let take = (len - body.len()).min(buf.len().max(1));
        body.extend(read_n(s, buf, take).await?);
        progress(&body);
    }
    Some(body)
}

impl Upstream {
    async fn start(mode: Mode) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(serve(s, mode, log.clone()));
            }
        });
        Upstream { addr, seen, task }
    }

    /// What it has read so far.
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut s: TcpStream, mode: Mode, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf).await {
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let i = {
            let mut l = log.lock().unwrap();
            l.push(Seen {
                head: head.clone(),
                body: Vec::new(),
            });
            l.len() - 1
        };
        // The protocol asked for, which a 101 names back (RFC 9110 §7.8).
        let asked = head
            .lines()
            .find_map(|l| l.strip_prefix("upgrade:"))
            .map(|v| v.trim().to_string());
        let upgrade = asked.is_some();
        match mode {
            Mode::Deaf => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::EarlyDeaf => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                    .await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::HangUpgrades if upgrade => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::Upgrades if upgrade => {
                let switch = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: {}\r\nconnection: upgrade\r\n\r\n",
                    asked.as_deref().unwrap_or_default()
                );
                let _ = s.write_all(switch.as_bytes()).await;
                let _ = s.write_all(&buf).await;
                let mut tmp = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut tmp).await {
                    if s.write_all(&tmp[..n]).await.is_err() {
                        return;
                    }
                }
                return;
            }
            _ => {}
        }
        // Only uploads are answered early; the well-behaved client's GETs get the normal answer.
        let early = matches!(mode, Mode::Early) && head.starts_with("post");
        if early
            && s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                .await
                .is_err()
        {
            return;
        }
        let Some(body) = read_body(&mut s, &mut buf, &head, |b| {
            log.lock().unwrap()[i].body = b.to_vec();
        })
        .await
        else {
            return;
        };
        log.lock().unwrap()[i].body = body.clone();
        match mode {
            _ if early => {}
            Mode::Fixed(bytes) => {
                let _ = s.write_all(bytes).await;
                return;
            }
            _ => {
                let text = format!("ok {}", body.len());
                // A response to HEAD has no body, only its length.
                let shown = if head.starts_with("head") { "" } else { &text };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{shown}",
                    text.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A running tern in front of an [`Upstream`].
struct Setup {
    tern: Tern,
    port: u16,
    _cfg: ConfigDir,
}

/// Starts tern: listener `ingress` (plus `listener_extra` lines), virtual host
/// `admin.example.com` denied (403), and `*` with `/denied` denied and everything else routed
/// to cluster `c` (route fields `route_extra`, cluster lines `cluster_extra`) at `upstream`.
async fn start(
    listener_extra: &str,
    route_extra: &str,
    cluster_extra: &str,
    upstream: SocketAddr,
) -> Setup {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write(
        "all.yaml",
        &format!(
            r#"{admin}listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
{listener_extra}route_configs:
  - name: main
    virtual_hosts:
      - name: admin
        domains: ["admin.example.com"]
        routes:
          - match: {{ prefix: / }}
            direct_response: {{ status: 403, body: "denied" }}
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: /denied }}
            direct_response: {{ status: 403, body: "denied" }}
          - match: {{ prefix: / }}
            route: {{ cluster: c{route_extra} }}
clusters:
  - name: c
    endpoints: [{{ address: "{upstream}" }}]
{cluster_extra}"#,
            admin = admin_yaml(admin)
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Setup {
        tern,
        port,
        _cfg: cfg,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.unwrap()
    }

    /// Sends `bytes` on a new connection and returns everything the proxy sends back until it
    /// closes the connection.
    async fn raw(&self, bytes: &[u8]) -> String {
        let mut s = self.connect().await;
        s.write_all(bytes).await.unwrap();
        read_to_close(&mut s).await
    }

    /// A well-behaved client's GET: must be answered by the upstream.
    async fn good_get(&self) {
        let r = tokio::time::timeout(ANSWER, request("GET", &self.url("/good"), &[], ""))
            .await
            .expect("a good request is answered")
            .expect("a good request gets a response");
        assert_eq!((r.status, r.body.as_str()), (200, "ok 0"), "good client");
    }

    async fn stat(&self, name: &str) -> i64 {
        self.tern.stat(name).await
    }
}

/// Everything read from `s` until the peer closes (or [`ANSWER`] passes).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(ANSWER, s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one response (head and body) from `s`: (status, head in lower case, body).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, String) {
    let head = tokio::time::timeout(ANSWER, read_head(s, buf))
        .await
        .expect("a response head in time")
        .expect("a response head");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = tokio::time::timeout(ANSWER, read_body(s, buf, &head, |_| {}))
        .await
        .expect("a response body in time")
        .expect("a response body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"))
}

// ---- Item 1: a stalled upload must not fail other clients ----

#[tokio::test]
async fn a_stalled_upload_after_an_early_answer_fails_nobody_else() {
    // The upstream answers before it has read the body (as with a 401 or 413), and a client
    // stops sending half way. The connection the answer came on still expects the body: it must
    // not be handed to the next request.
    let up = Upstream::start(Mode::Early).await;
    let t = start(
        "    stream_idle_timeout: 500ms\n",
        ", timeout: 1s",
        "    outlier_detection: { consecutive_5xx: 2, interval: 100ms }\n",
        up.addr,
    )
    .await;
    let mut stalled = Vec::new();
    let mut failures = Vec::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let mut s = t.connect().await;
        s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n0123456789")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let (status, _, body) = read_response(&mut s, &mut buf).await;
        assert_eq!((status, body.as_str()), (200, "early"));
        stalled.push(s);
        for _ in 0..3 {
            match tokio::time::timeout(ANSWER, request("GET", &t.url("/good"), &[], "")).await {
                Ok(Ok(r)) if r.status == 200 => {}
                other => failures.push(format!("{other:?}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        failures.is_empty(),
        "{} innocent requests failed: {failures:?}",
        failures.len()
    );
    // The stalled uploads are the clients' problem: cut by the stream idle timeout (their
    // connections closed), never counted against the endpoint.
    for mut s in stalled {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(ANSWER, s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a stalled upload's connection is closed");
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    assert!(t.stat("listener.ingress.downstream_rq_idle_timeout").await >= 1);
    assert_eq!(t.stat("cluster.c.upstream_rq_timeout").await, 0);
    assert_eq!(t.stat("cluster.c.outlier_detection_ejections").await, 0);
    t.good_get().await;
}

// ---- Item 2: absolute-form targets ----

#[tokio::test]
async fn an_absolute_form_target_replaces_host_for_routing_and_upstream() {
    let up = Upstream::start(Mode::Normal).await;
    let t = start("", "", "", up.addr).await;
    // Routed by the target's authority (www: forwarded), so the upstream must see that
    // authority, not the admin host the client also sent.
    let r = t
        .raw(b"GET http://www.example.com/secret HTTP/1.1\r\nhost: admin.example.com\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].head.starts_with("get /secret http/1.1"),
        "{}",
        seen[0].head
    );
    assert_eq!(
        seen[0].header("host"),
        vec!["www.example.com"],
        "{}",
        seen[0].head
    );
    // The other way round the admin virtual host's deny applies.
    let r = t
        .raw(b"GET http://admin.example.com/secret HTTP/1.1\r\nhost: www.example.com\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 403, "{r}");
    assert_eq!(up.seen().len(), 1);
    t.good_get().await;
}

// ---- Item 6: Host validation ----

#[tokio::test]
async fn host_must_be_one_valid_authority() {
    let up = Upstream::start(Mode::Normal).await;
    let t = start("", "", "", up.addr).await;
    let bad: [&[u8]; 6] = [
        // Two Host lines (routed by the first, both forwarded before).
        b"GET / HTTP/1.1\r\nhost: www.example.com\r\nhost: admin.example.com\r\nconnection: close\r\n\r\n",
        // HTTP/1.1 without Host.
        b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n",
        // An empty Host.
        b"GET / HTTP/1.1\r\nhost: \r\nconnection: close\r\n\r\n",
        // Not an authority.
        b"GET / HTTP/1.1\r\nhost: a/b@c\r\nconnection: close\r\n\r\n",
        // Userinfo in Host.
        b"GET / HTTP/1.1\r\nhost: user@www.example.com\r\nconnection: close\r\n\r\n",
        // Userinfo in an absolute-form target.
        b"GET http://user@www.example.com/ HTTP/1.1\r\nhost: www.example.com\r\nconnection: close\r\n\r\n",
    ];
    for req in bad {
        let r = t.raw(req).await;
        assert_eq!(
            status_of(&r),
            400,
            "{:?} → {r:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // HTTP/1.0 has no Host requirement: it is routed by the `*` virtual host.
    let r = t.raw(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&r), 200, "{r}");
    // HTTP/2: userinfo in :authority.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::get(format!("http://user@127.0.0.1:{}/x", t.port))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(up.seen().len(), 1, "only the HTTP/1.0 request went up");
    assert!(t.stat("listener.ingress.downstream_rq_4xx").await >= 7);
    t.good_get().await;
}

// ---- Item 3: upgrade handshakes ----

#[tokio::test]
async fn hung_upgrade_handshakes_time_out_and_free_their_slots() {
    let up = Upstream::start(Mode::HangUpgrades).await;
    let t = start(
        "",
        ", timeout: 300ms",
        "    circuit_breakers: { max_requests: 2 }\n",
        up.addr,
    )
    .await;
    let mut hung = Vec::new();
    for _ in 0..4 {
        let mut s = t.connect().await;
        s.write_all(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        )
        .await
        .unwrap();
        hung.push(s);
    }
    // Each handshake is answered: 504 once the route timeout passes (or 503 when the slots
    // were full), never left hanging.
    for mut s in hung {
        let mut buf = Vec::new();
        let (status, _, _) = read_response(&mut s, &mut buf).await;
        assert!(status == 504 || status == 503, "{status}");
    }
    assert!(t.stat("cluster.c.upstream_rq_timeout").await >= 2);
    assert_eq!(t.stat("cluster.c.upstream_rq_active").await, 0);
    t.good_get().await;
}

#[tokio::test]
async fn an_upgrade_handshake_with_a_body_is_refused() {
    let up = Upstream::start(Mode::Upgrades).await;
    let t = start("", "", "", up.addr).await;
    for req in [
        &b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 5\r\n\r\nhello"[..],
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let r = t.raw(req).await;
        assert_eq!(status_of(&r), 400, "{r}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // Content-Length: 0 is no body: the handshake goes through.
    let mut s = t.connect().await;
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await.unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    t.good_get().await;
}

// ---- Item 7: only configured upgrades; h2c never ----

#[tokio::test]
async fn h2c_is_never_tunnelled() {
    // A backend that answers any Upgrade with 101 would otherwise get a raw tunnel, and every
    // later request on it would skip the route table.
    let up = Upstream::start(Mode::Upgrades).await;
    let t = start("", "", "", up.addr).await;
    let mut s = t.connect().await;
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok 0"),
        "served as a plain request"
    );
    let seen = up.seen();
    assert!(seen[0].header("upgrade").is_empty(), "{}", seen[0].head);
    assert!(
        seen[0].header("http2-settings").is_empty(),
        "{}",
        seen[0].head
    );
    // The connection is still HTTP: the next request on it meets the route table.
    s.write_all(b"GET /denied HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((status, body.as_str()), (403, "denied"));
    assert_eq!(up.seen().len(), 1);
    t.good_get().await;

    // An upstream that switches protocols unasked does not get the client's connection.
    let rogue = Upstream::start(Mode::Fixed(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
    ))
    .await;
    let t = start("", "", "", rogue.addr).await;
    let r = t
        .raw(b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 502, "{r}");
    assert_eq!(t.stat("cluster.c.upstream_cx_protocol_error").await, 1);
}

async fn upgrade_status(t: &Setup, upgrade: &str) -> (u16, String) {
    let mut s = t.connect().await;
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: {upgrade}\r\nconnection: upgrade\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let head = tokio::time::timeout(ANSWER, read_head(&mut s, &mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    (status_of(&head), head)
}

#[tokio::test]
async fn only_configured_upgrade_types_are_tunnelled() {
    let up = Upstream::start(Mode::Upgrades).await;
    // Default: websocket only, in any case.
    let t = start("", "", "", up.addr).await;
    assert_eq!(upgrade_status(&t, "WebSocket").await.0, 101);
    let (status, head) = upgrade_status(&t, "foo").await;
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(
        t.stat("listener.ingress.downstream_rq_ws_on_non_ws_route")
            .await,
        1
    );
    assert_eq!(up.seen().len(), 1, "the refused upgrade never went up");
    t.good_get().await;
    drop(t);

    // A route enables another type and disables websocket; the listener allows none by itself.
    let t = start(
        "    upgrade_configs: []\n",
        ", upgrade_configs: [{ upgrade_type: Foo }, { upgrade_type: websocket, enabled: false }]",
        "",
        up.addr,
    )
    .await;
    assert_eq!(upgrade_status(&t, "foo").await.0, 101);
    assert_eq!(upgrade_status(&t, "websocket").await.0, 403);
    drop(t);
    let t = start(
        "    upgrade_configs: [{ upgrade_type: websocket, enabled: false }]\n",
        "",
        "",
        up.addr,
    )
    .await;
    assert_eq!(upgrade_status(&t, "websocket").await.0, 403);
}

// ---- Item 8: tunnels are bounded by the stream idle timeout and counted ----

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_counted_while_open() {
    let up = Upstream::start(Mode::Upgrades).await;
    let t = start("    stream_idle_timeout: 400ms\n", "", "", up.addr).await;
    let mut s = t.connect().await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s.write_all(b"ping").await.unwrap();
    let echo = read_n(&mut s, &mut buf, 4).await.unwrap();
    assert_eq!(echo, b"ping");
    wait_for("the tunnel counted as an open connection", || async {
        (t.stat("listener.ingress.downstream_cx_active").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        t.stat("listener.ingress.downstream_cx_upgrades_active")
            .await,
        1
    );
    // It also counts toward the process's connections (the global connection limit).
    assert_eq!(t.stat("server.total_connections").await, 1);
    // Then silence: the tunnel is closed by the idle timeout.
    let rest = read_to_close(&mut s).await;
    assert!(rest.is_empty(), "{rest:?}");
    wait_for("the tunnel no longer counted", || async {
        (t.stat("listener.ingress.downstream_cx_active").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        t.stat("listener.ingress.downstream_cx_upgrades_active")
            .await,
        0
    );
    assert_eq!(t.stat("cluster.c.upstream_rq_active").await, 0);
    assert!(t.stat("listener.ingress.downstream_rq_idle_timeout").await >= 1);
    assert_eq!(t.stat("server.total_connections").await, 0);
}

// ---- Item 4: a client's fault is the client's ----

#[tokio::test]
async fn client_body_faults_are_answered_as_such_and_eject_nothing() {
    let up = Upstream::start(Mode::Normal).await;
    let t = start(
        "",
        ", timeout: 2s, retry_policy: { retry_on: \"5xx,reset\", num_retries: 2, retry_back_off: { base_interval: 1ms } }",
        "    outlier_detection: { consecutive_5xx: 2, interval: 100ms }\n",
        up.addr,
    )
    .await;
    for _ in 0..6 {
        // A malformed chunk size: 400, the connection closed.
        let r = t
            .raw(b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
            .await;
        assert_eq!(status_of(&r), 400, "{r}");
        // A body cut short by the client (streamed: chunked, no declared length).
        let mut s = t.connect().await;
        s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let r = read_to_close(&mut s).await;
        assert!(!r.contains("HTTP/1.1 5"), "{r:?}");
        // A body cut short by the client (buffered for retries: declared length).
        let mut s = t.connect().await;
        s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhel")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let r = read_to_close(&mut s).await;
        assert!(!r.contains("HTTP/1.1 5"), "{r:?}");
    }
    assert_eq!(t.stat("cluster.c.outlier_detection_ejections").await, 0);
    assert_eq!(t.stat("cluster.c.upstream_rq_reset").await, 0);
    assert_eq!(t.stat("cluster.c.upstream_rq_retry").await, 0);
    assert_eq!(t.stat("listener.ingress.downstream_rq_5xx").await, 0);
    for _ in 0..5 {
        t.good_get().await;
    }
}

#[tokio::test]
async fn a_slow_honest_upload_outlasts_the_route_timeout() {
    // The route timeout starts when the request is complete, as in Envoy.
    let up = Upstream::start(Mode::Normal).await;
    let t = start("", ", timeout: 300ms", "", up.addr).await;
    let mut s = t.connect().await;
    s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 25\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"abcde").await.unwrap();
    }
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "ok 25"));
    assert_eq!(up.seen()[0].body, b"abcdeabcdeabcdeabcdeabcde");
    assert_eq!(t.stat("cluster.c.upstream_rq_timeout").await, 0);
}

#[tokio::test]
async fn an_upstream_that_never_reads_the_body_is_the_upstreams_timeout() {
    // The route timeout waits for the body to go up, so the upstream not taking it is bounded
    // by the stream idle timeout instead, and it is the upstream's fault.
    let up = Upstream::start(Mode::Deaf).await;
    let t = start(
        "    stream_idle_timeout: 300ms\n",
        ", timeout: 200ms",
        "",
        up.addr,
    )
    .await;
    let mut s = t.connect().await;
    let size = 64 << 20;
    s.write_all(
        format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(ANSWER, rd.read_to_end(&mut got)).await;
    writer.abort();
    let r = String::from_utf8_lossy(&got);
    assert_eq!(status_of(&r), 504, "{r}");
    // The upstream connection, and with it the client's body, is let go: the client's
    // connection closes instead of hanging on a body nobody reads.
    assert!(closed.is_ok(), "the client's connection is closed");
    assert_eq!(t.stat("cluster.c.upstream_rq_timeout").await, 1);
    assert_eq!(
        t.stat("listener.ingress.downstream_rq_idle_timeout").await,
        0
    );
}

#[tokio::test]
async fn an_upstream_that_answers_early_and_stops_reading_is_let_go() {
    // The upload outlasts a complete early answer; the upstream no longer reads it. The
    // connection is not reused, and it is closed after the stream idle timeout, releasing the
    // client's connection too.
    let up = Upstream::start(Mode::EarlyDeaf).await;
    let t = start("    stream_idle_timeout: 300ms\n", "", "", up.addr).await;
    let mut s = t.connect().await;
    let size = 64 << 20;
    s.write_all(
        format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(ANSWER, rd.read_to_end(&mut got)).await;
    writer.abort();
    let r = String::from_utf8_lossy(&got);
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(closed.is_ok(), "the client's connection is closed");
    wait_for("the upstream connection closed", || async {
        (t.stat("cluster.c.upstream_cx_active").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stalled_and_endless_uploads_get_408() {
    let up = Upstream::start(Mode::Normal).await;
    let t = start(
        "    stream_idle_timeout: 300ms\n    request_timeout: 1s\n",
        ", timeout: 200ms",
        "    outlier_detection: { consecutive_5xx: 1, interval: 100ms }\n",
        up.addr,
    )
    .await;
    // Stalled: the stream idle timeout covers the request body.
    let mut s = t.connect().await;
    s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let r = read_to_close(&mut s).await;
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(r.ends_with("stream timeout\n"), "{r:?}");
    assert_eq!(
        t.stat("listener.ingress.downstream_rq_idle_timeout").await,
        1
    );
    // Never idle, never done: request_timeout bounds the whole request.
    let mut s = t.connect().await;
    s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let r = loop {
        if s.write_all(b"x").await.is_err() {
            break read_to_close(&mut s).await;
        }
        let mut b = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await {
            Ok(Ok(n)) => {
                let mut r = b[..n].to_vec();
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(ANSWER, s.read_to_end(&mut rest)).await;
                r.extend(rest);
                break String::from_utf8_lossy(&r).into_owned();
            }
            Ok(Err(_)) => break String::new(),
            Err(_) => assert!(started.elapsed() < ANSWER, "request_timeout never fired"),
        }
    };
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(r.ends_with("request timeout\n"), "{r:?}");
    assert_eq!(t.stat("listener.ingress.downstream_rq_timeout").await, 1);
    assert_eq!(t.stat("cluster.c.outlier_detection_ejections").await, 0);
    assert_eq!(t.stat("cluster.c.upstream_rq_timeout").await, 0);
    t.good_get().await;
}

// ---- Item 9: upstream framing ----

#[tokio::test]
async fn content_length_with_chunked_from_upstream_is_a_protocol_error() {
    let up = Upstream::start(Mode::Fixed(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ))
    .await;
    let t = start("", "", "", up.addr).await;
    let r = t
        .raw(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 502, "{r}");
    assert!(r.ends_with("upstream protocol error\n"), "{r:?}");
    assert_eq!(t.stat("cluster.c.upstream_cx_protocol_error").await, 1);
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_from_upstream_is_a_protocol_error() {
    let up = Upstream::start(Mode::Fixed(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nnot really gzip",
    ))
    .await;
    let t = start("", "", "", up.addr).await;
    let r = t
        .raw(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 502, "{r}");
}

#[tokio::test]
async fn a_repeated_content_length_is_sent_once() {
    let up = Upstream::start(Mode::Fixed(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nhi",
    ))
    .await;
    let t = start("", "", "", up.addr).await;
    let r = t
        .raw(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let lines: Vec<&str> = r
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .collect();
    assert_eq!(lines, vec!["content-length: 2"], "{r}");
    assert!(r.ends_with("\r\n\r\nhi"), "{r:?}");

    // A body larger than what is in flight at once still arrives whole: the connection that is
    // not reused carries it to its end.
    let body = "x".repeat(300_000);
    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 300000, 300000\r\n\r\n{body}");
    let up = Upstream::start(Mode::Fixed(Box::leak(resp.into_bytes().into_boxed_slice()))).await;
    let t = start("", "", "", up.addr).await;
    let r = t
        .raw(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 200);
    assert!(r.ends_with(&format!("\r\n\r\n{body}")), "{} bytes", r.len());
}

// ---- Item 10: bodies on any method ----

#[tokio::test]
async fn a_chunked_body_on_get_and_head_is_forwarded() {
    let up = Upstream::start(Mode::Normal).await;
    let t = start("", "", "", up.addr).await;
    for method in ["GET", "HEAD"] {
        let r = t
            .raw(format!("{method} /q HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_bytes())
            .await;
        assert_eq!(status_of(&r), 200, "{r}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.body, b"hello world", "{}", s.head);
    }
    // With a declared length, too.
    let r = t
        .raw(b"GET /q HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc")
        .await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(up.seen()[2].body, b"abc");
    let _ = get(&t.url("/good"), &[]).await;
}

#[tokio::test]
async fn an_http2_stalled_upload_gets_408_and_ejects_nothing() {
    use http_body_util::BodyExt;
    let up = Upstream::start(Mode::Normal).await;
    let t = start(
        "    stream_idle_timeout: 300ms\n",
        ", timeout: 200ms",
        "    outlier_detection: { consecutive_5xx: 1, interval: 100ms }\n",
        up.addr,
    )
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let frames = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|b| b.map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))))
    });
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::post(t.url("/up"))
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    tx.send(bytes::Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    // The sender stays alive and silent: a stalled upload.
    let resp = tokio::time::timeout(ANSWER, client.request(req))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), 408);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"stream timeout\n");
    drop(tx);
    assert_eq!(t.stat("cluster.c.outlier_detection_ejections").await, 0);
    assert_eq!(t.stat("cluster.c.upstream_rq_timeout").await, 0);
    t.good_get().await;
}

// ---- Request framing that hyper's HTTP/1 server resolves itself (pinned for the next engine) ----

#[tokio::test]
async fn ambiguous_request_framing_never_smuggles_a_request() {
    let up = Upstream::start(Mode::Normal).await;
    let t = start("", "", "", up.addr).await;
    // Content-Length with chunked (CL.TE): 400 and closed, as Envoy's default; nothing of it
    // goes up (hyper's server used to drop the length and forward the chunked body).
    let r = t
        .raw(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // A transfer coding other than chunked, a comma list in Content-Length, and two different
    // lengths: refused (hyper: 400; Envoy: 501 for the coding, 400 otherwise).
    for req in [
        &b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nabc"[..],
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 3\r\n\r\nabc",
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"POST /a HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ] {
        let r = t.raw(req).await;
        let status = status_of(&r);
        assert!(
            status == 400 || status == 501,
            "{:?} → {r}",
            String::from_utf8_lossy(req)
        );
    }
    assert!(
        up.seen().iter().all(|s| !s.head.contains("/smuggled")),
        "{:?}",
        up.seen()
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    t.good_get().await;
}
