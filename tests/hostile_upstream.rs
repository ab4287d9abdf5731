//! Hostile upstream responses through a real `tern` (its own HTTP/1 client engine) from a
//! raw-socket upstream: ambiguous framing (Content-Length with chunked, two lengths), malformed
//! heads (obs-fold, a NUL), bad chunks, bytes after the body, a body cut short. Each answer is
//! refused with 502 `UPE`, or cut if its head was already forwarded, and the connection that
//! carried it is never used again: the upstream counts its accepted connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tern_testkit::{admin_yaml, free_port, wait_for, ConfigDir, Tern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The answer to `/good`: well framed, keep-alive.
const GOOD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood";

/// A raw upstream: answers `/bad` with `bad` (then closes if `close`), anything else with
/// [`GOOD`], on keep-alive connections it counts.
struct Upstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(bad: &'static [u8], close: bool) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let count = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut tmp = [0u8; 4096];
                            match s.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                            continue;
                        };
                        let head: Vec<u8> = buf.drain(..i + 4).collect();
                        if head.starts_with(b"GET /bad") {
                            let _ = s.write_all(bad).await;
                            if close {
                                return;
                            }
                        } else if s.write_all(GOOD).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            accepts,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(SeqCst)
    }
}

struct Setup {
    _tern: Tern,
    port: u16,
    cfg: ConfigDir,
}

async fn start(up: SocketAddr) -> Setup {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let log = cfg.path().join("access.log");
    cfg.write(
        "all.yaml",
        &format!(
            r#"{admin}listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - path: {log}
        format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%"
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: c, timeout: 10s }}
clusters:
  - name: c
    endpoints: [{{ address: "{up}" }}]
"#,
            admin = admin_yaml(admin),
            log = log.display()
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Setup {
        _tern: tern,
        port,
        cfg,
    }
}

impl Setup {
    /// `GET path` on a new client connection; everything sent back until the proxy closes.
    async fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The access log line of `path`.
    async fn logged(&self, path: &str) -> String {
        let log = self.cfg.path().join("access.log");
        wait_for(&format!("an access log line for {path}"), || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| l.starts_with(&format!("{path} ")))
                .map(str::to_string)
        })
        .await
    }
}

/// Whether the client got a cut response: the connection closed before a whole one (nothing at
/// all when the head was still in the proxy's buffer, else a head and less body than it says).
fn cut(r: &str) -> bool {
    match status_of(r) {
        0 => r.is_empty(),
        200 => {
            let (head, body) = r.split_once("\r\n\r\n").unwrap_or((r, ""));
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            match length {
                Some(n) => body.len() < n,
                None => !body.ends_with("0\r\n\r\n"),
            }
        }
        _ => false,
    }
}

fn status_of(r: &str) -> u16 {
    r.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `/good` on a pooled connection, then `bad` on that same connection; returns what the
/// client got for `/bad` after checking that the connection was not used again.
async fn through(bad: &'static [u8], close: bool) -> (String, String) {
    let up = Upstream::start(bad, close).await;
    let t = start(up.addr).await;
    assert!(t.get("/good").await.ends_with("\r\n\r\ngood"));
    let r = t.get("/bad").await;
    assert_eq!(up.accepts(), 1, "/bad went on the pooled connection");
    let line = t.logged("/bad").await;
    let again = t.get("/good").await;
    assert!(again.ends_with("\r\n\r\ngood"), "{again}");
    assert_eq!(up.accepts(), 2, "the connection of /bad was not reused");
    (r, line)
}

#[tokio::test]
async fn a_clean_connection_is_reused() {
    // The control of the tests below: a well-framed exchange keeps its connection.
    let up = Upstream::start(GOOD, false).await;
    let t = start(up.addr).await;
    for _ in 0..3 {
        assert!(t.get("/good").await.ends_with("\r\n\r\ngood"));
    }
    assert_eq!(up.accepts(), 1);
}

#[tokio::test]
async fn ambiguous_or_malformed_heads_are_502_upe_and_close_the_connection() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, identity\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: one\r\n folded\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
    ] {
        let (r, line) = through(bad, false).await;
        let what = String::from_utf8_lossy(bad);
        assert_eq!(status_of(&r), 502, "{what:?}: {r}");
        assert!(r.ends_with("upstream protocol error\n"), "{r:?}");
        assert_eq!(line, "/bad 502 UPE", "{what:?}");
    }
}

#[tokio::test]
async fn a_bad_chunk_cuts_the_response_with_upe() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ] {
        let (r, line) = through(bad, false).await;
        assert!(cut(&r), "the response is cut: {r:?}");
        assert_eq!(line, "/bad 200 UPE");
    }
}

#[tokio::test]
async fn a_body_cut_short_is_cut_downstream_with_uc() {
    let (r, line) = through(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true).await;
    assert!(cut(&r), "the response is cut: {r:?}");
    assert_eq!(line, "/bad 200 UC");
}

#[tokio::test]
async fn bytes_after_the_body_close_the_connection() {
    // The response itself is whole and forwarded; what follows it is not trusted as the next
    // response, so the connection goes.
    let (r, line) = through(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil", false).await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.ends_with("\r\n\r\nok"), "{r:?}");
    assert_eq!(line, "/bad 200 -");
}
