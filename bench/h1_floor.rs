//! The floor under Tern's HTTP/1 path: the least a tokio + httparse reverse proxy can do per
//! request, to read Tern's instruction count against (`bench/profile.sh --floor`). Not a proxy:
//! no routing, no header edits, no timeouts, no errors handled beyond closing; one upstream
//! connection per client connection; `content-length` bodies only (the bench's GETs and the nginx
//! backend's fixed answer).
//!
//! Usage: h1-floor LISTEN ADMIN BACKEND [--headermap | --block]
//!   LISTEN, ADMIN, BACKEND: `127.0.0.1:PORT`. ADMIN answers `200` to anything (bench/profile.sh
//!   waits for `/ready` there). `--headermap` also does what Tern's layers do with the `http`
//!   crate's types: each head is parsed into `http` request/response parts (a `HeaderMap`) and
//!   written out again from them, which measures what those types cost per request. `--block`
//!   instead forwards each head as a header block with a proxy's usual edits: fields indexed
//!   where they lie in the read buffer (the names a proxy acts on recognised once), hop-by-hop
//!   fields dropped, `x-forwarded-for`, `x-forwarded-proto` and `x-request-id` added to
//!   requests, every other field copied as it came.
//!
//! Runs on a multi-thread runtime with one worker, as `tern --worker-threads 1` does.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEADERS: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: h1-floor LISTEN ADMIN BACKEND [--headermap]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[0].parse().expect("LISTEN");
    let admin: SocketAddr = args[1].parse().expect("ADMIN");
    let backend: SocketAddr = args[2].parse().expect("BACKEND");
    let mode = if args.iter().any(|a| a == "--headermap") {
        Mode::HeaderMap
    } else if args.iter().any(|a| a == "--block") {
        Mode::Block
    } else {
        Mode::Raw
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let admin = TcpListener::bind(admin).await.expect("bind admin");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = admin.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        let l = TcpListener::bind(listen).await.expect("bind");
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = serve(s, backend, mode).await;
            });
        }
    });
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Head bytes forwarded as read.
    Raw,
    /// Heads built into `http` parts and written from them.
    HeaderMap,
    /// Heads forwarded as indexed blocks with edits.
    Block,
}

/// One client connection: each request forwarded on this connection's own upstream connection.
async fn serve(mut down: TcpStream, backend: SocketAddr, mode: Mode) -> Option<()> {
    let headermap = mode != Mode::Raw;
    let mut ids = 0u64;
    let mut up: Option<TcpStream> = None;
    let mut rbuf = BytesMut::with_capacity(8192);
    let mut ubuf = BytesMut::with_capacity(8192);
    let mut wbuf = BytesMut::with_capacity(8192);
    loop {
        // The request head (and its body, if any, up to content-length).
        let (head_len, body_len) = loop {
            if let Some(h) = request_head(&rbuf, mode, &mut wbuf, &mut ids) {
                break h;
            }
            if down.read_buf(&mut rbuf).await.ok()? == 0 {
                return Some(());
            }
        };
        while rbuf.len() < head_len + body_len {
            if down.read_buf(&mut rbuf).await.ok()? == 0 {
                return None;
            }
        }
        let msg = rbuf.split_to(head_len + body_len);
        if up.is_none() {
            let s = TcpStream::connect(backend).await.ok()?;
            let _ = s.set_nodelay(true);
            up = Some(s);
        }
        let u = up.as_mut()?;
        if headermap {
            wbuf.extend_from_slice(&msg[head_len..]);
            u.write_all(&wbuf).await.ok()?;
            wbuf.clear();
        } else {
            u.write_all(&msg).await.ok()?;
        }
        // The response head and its content-length body.
        let (head_len, body_len) = loop {
            if let Some(h) = response_head(&ubuf, mode, &mut wbuf) {
                break h;
            }
            if u.read_buf(&mut ubuf).await.ok()? == 0 {
                return None;
            }
        };
        while ubuf.len() < head_len + body_len {
            if u.read_buf(&mut ubuf).await.ok()? == 0 {
                return None;
            }
        }
        let msg = ubuf.split_to(head_len + body_len);
        if headermap {
            wbuf.extend_from_slice(&msg[head_len..]);
            down.write_all(&wbuf).await.ok()?;
            wbuf.clear();
        } else {
            down.write_all(&msg).await.ok()?;
        }
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Parses a request head in `buf`: `(head length, body length)` once complete, and unless the
/// mode is `Raw`, writes the head to forward into `out`.
fn request_head(
    buf: &[u8],
    mode: Mode,
    out: &mut BytesMut,
    ids: &mut u64,
) -> Option<(usize, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let httparse::Status::Complete(n) = req.parse(buf).ok()? else {
        return None;
    };
    let body = content_length(req.headers);
    if mode == Mode::Block {
        out.put_slice(req.method?.as_bytes());
        out.put_u8(b' ');
        out.put_slice(req.path?.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        let mut has_id = false;
        for h in req.headers.iter() {
            match known(h.name) {
                Known::HopByHop => continue,
                Known::RequestId => has_id = true,
                Known::Other => {}
            }
            put_field(out, h.name.as_bytes(), h.value);
        }
        put_field(out, b"x-forwarded-for", b"127.0.0.1");
        put_field(out, b"x-forwarded-proto", b"http");
        if !has_id {
            *ids += 1;
            let mut id = [0u8; 36];
            hex_id(*ids, &mut id);
            put_field(out, b"x-request-id", &id);
        }
        out.put_slice(b"\r\n");
    } else if mode == Mode::HeaderMap {
        let mut b = http::Request::builder()
            .method(req.method?)
            .uri(req.path?)
            .version(http::Version::HTTP_11);
        let map = b.headers_mut()?;
        fill(map, req.headers);
        let (parts, ()) = b.body(()).ok()?.into_parts();
        out.put_slice(parts.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(parts.uri.path_and_query()?.as_str().as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        put_fields(out, &parts.headers);
    }
    Some((n, body))
}

/// As [`request_head`], for a response head.
fn response_head(buf: &[u8], mode: Mode, out: &mut BytesMut) -> Option<(usize, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    let httparse::Status::Complete(n) = resp.parse(buf).ok()? else {
        return None;
    };
    let body = content_length(resp.headers);
    if mode == Mode::Block {
        put_status_line(out, resp.code?)?;
        for h in resp.headers.iter() {
            if known(h.name) != Known::HopByHop {
                put_field(out, h.name.as_bytes(), h.value);
            }
        }
        out.put_slice(b"\r\n");
    } else if mode == Mode::HeaderMap {
        let mut map = HeaderMap::with_capacity(resp.headers.len());
        fill(&mut map, resp.headers);
        put_status_line(out, resp.code?)?;
        put_fields(out, &map);
    }
    Some((n, body))
}

#[derive(PartialEq)]
enum Known {
    HopByHop,
    RequestId,
    Other,
}

/// The names the block mode acts on, recognised by length first (as a proxy's classifier would).
fn known(name: &str) -> Known {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => Known::HopByHop,
        7 if is("trailer") || is("upgrade") => Known::HopByHop,
        10 if is("connection") || is("keep-alive") => Known::HopByHop,
        12 if is("x-request-id") => Known::RequestId,
        16 if is("proxy-connection") => Known::HopByHop,
        17 if is("transfer-encoding") => Known::HopByHop,
        _ => Known::Other,
    }
}

fn put_status_line(out: &mut BytesMut, code: u16) -> Option<()> {
    let status = http::StatusCode::from_u16(code).ok()?;
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    Some(())
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// A request id in the shape of a UUID (8-4-4-4-12 hex digits) from a counter.
fn hex_id(n: u64, out: &mut [u8; 36]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = (n as u128) | (0x4000u128 << 64);
    let mut shift = 128;
    for (i, b) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *b = b'-';
            continue;
        }
        shift -= 4;
        *b = HEX[((v >> shift) & 0xf) as usize];
    }
}

fn fill(map: &mut HeaderMap, headers: &[httparse::Header<'_>]) {
    for h in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
}

fn put_fields(out: &mut BytesMut, map: &HeaderMap) {
    for (n, v) in map {
        out.put_slice(n.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(v.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}
