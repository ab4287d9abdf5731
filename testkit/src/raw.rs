//! A raw-socket HTTP/1.1 upstream that records the exact bytes it receives on each connection and
//! answers with scripted raw responses: a valid one, or hostile ones (broken framing, extra bytes,
//! a body cut short, a `101` and a tunnel).
//!
//! It is the evidence side of the request-smuggling corpus and the differential tests: what a
//! proxy sent upstream is kept byte for byte and parsed here strictly (`httparse` for heads,
//! chunk sizes and trailers), never by an HTTP library that would repair or hide it. A request
//! that is complete on the wire is recorded with its exact bytes; bytes that do not parse as
//! requests mark the connection `malformed`; bytes of a request still incomplete are counted as
//! `unparsed`, so a test can tell "nothing reached the upstream" from "a request was started and
//! cut" (its connection then closed by the proxy: `eof`). [`parse_responses`] is the client side:
//! it splits what a client read off a connection into responses as strictly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wait::wait_for;

/// Most header lines of a request or trailer section the backend parses.
const MAX_HEADERS: usize = 256;

/// How the backend answers one complete request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `200 OK` with the body `ok <request body length>` (a `HEAD` gets the length and no body);
    /// keeps the connection.
    Ok,
    /// These bytes, then keeps reading the connection (more requests may follow).
    Raw(Vec<u8>),
    /// These bytes, then closes the write side (the peer sees the end of the response body, or a
    /// cut one); keeps recording what the peer still sends until it closes.
    Close(Vec<u8>),
    /// These bytes (a `101`), then echoes every byte that follows, as a tunnel would.
    Tunnel(Vec<u8>),
    /// No answer at all; keeps reading.
    Silent,
}

/// One connection as the backend saw it.
#[derive(Clone, Debug, Default)]
pub struct RawConn {
    /// Every byte received on it, in order.
    pub bytes: Vec<u8>,
    /// Bytes received that are not (yet) part of a complete request: a request started and
    /// not finished. Zero when everything received was whole requests.
    pub unparsed: usize,
    /// The peer closed the connection (end of stream or an error).
    pub eof: bool,
    /// Set when bytes did not parse as an HTTP/1.1 request: what was wrong. A proxy must never
    /// send these; nothing after them is parsed.
    pub malformed: Option<String>,
}

/// One complete request read off a connection.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// Index of its connection in [`RawBackend::conns`].
    pub conn: usize,
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// The minor version: `HTTP/1.<version>`.
    pub version: u8,
    /// The header lines in order: name in lower case, value as sent (without surrounding OWS).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, decoded (chunked framing removed).
    pub body: Vec<u8>,
    /// The trailer lines of a chunked body, like `headers`.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Its exact bytes on the wire: head and framed body.
    pub wire: Vec<u8>,
}

impl RawRequest {
    /// `METHOD target`, e.g. `POST /a`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }

    /// Every value of header `name` (lower case), in order, as text (lossy).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

type Script = dyn Fn(&RawRequest) -> Reply + Send + Sync;

#[derive(Default)]
struct State {
    conns: Vec<RawConn>,
    requests: Vec<RawRequest>,
}

/// A raw HTTP/1.1 backend on 127.0.0.1 (see the module docs). Every complete request is answered
/// as the script says; the recording is read with [`RawBackend::conns`] and
/// [`RawBackend::requests`]. Stops when dropped.
pub struct RawBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    /// A backend answering every request [`Reply::Ok`].
    pub async fn ok() -> RawBackend {
        Self::start(|_| Reply::Ok).await
    }

    /// A backend answering each complete request as `script` says.
    pub async fn start(
        script: impl Fn(&RawRequest) -> Reply + Send + Sync + 'static,
    ) -> RawBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let id = {
                    let mut st = st.lock().unwrap();
                    st.conns.push(RawConn::default());
                    st.conns.len() - 1
                };
                // Connection tasks end with the backend (the JoinSet aborts them when dropped).
                tasks.spawn(serve(s, id, st.clone(), script.clone()));
            }
        });
        RawBackend { addr, state, task }
    }

    /// Every connection accepted so far, in order.
    pub fn conns(&self) -> Vec<RawConn> {
        self.state.lock().unwrap().conns.clone()
    }

    /// Every complete request read so far, in the order they were completed.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Waits (polling, with the kit's deadline) until the peer closed connection `conn`.
    pub async fn wait_eof(&self, conn: usize) {
        wait_for(
            &format!("the peer to close upstream connection {conn}"),
            || {
                let eof = self
                    .state
                    .lock()
                    .unwrap()
                    .conns
                    .get(conn)
                    .is_some_and(|c| c.eof);
                async move { eof.then_some(()) }
            },
        )
        .await
    }
}

/// The outcome of trying to read one request from the front of a buffer.
enum Parsed {
    /// A complete request and how many bytes it took.
    Request(Box<RawRequest>, usize),
    /// More bytes are needed.
    Partial,
    /// Not HTTP/1.1.
    Bad(String),
}

fn owned_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    hs.iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// Reads one request off the front of `buf` (strictly: a proxy's output must be clean).
fn parse(buf: &[u8], conn: usize) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Bad(format!("request head: {e}")),
    };
    let headers = owned_headers(req.headers);
    let values = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
            .collect()
    };
    let (te, cl) = (values("transfer-encoding"), values("content-length"));
    let mut out = RawRequest {
        conn,
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        version: req.version.unwrap_or_default(),
        headers: headers.clone(),
        body: Vec::new(),
        trailers: Vec::new(),
        wire: Vec::new(),
    };
    if !te.is_empty() && !cl.is_empty() {
        return Parsed::Bad("both Transfer-Encoding and Content-Length".into());
    }
    let end = if !te.is_empty() {
        if te.join(",") != "chunked" {
            return Parsed::Bad(format!("Transfer-Encoding {te:?}"));
        }
        let mut at = head_len;
        loop {
            let (skip, size) = match httparse::parse_chunk_size(&buf[at..]) {
                Ok(httparse::Status::Complete(x)) => x,
                Ok(httparse::Status::Partial) => return Parsed::Partial,
                Err(_) => return Parsed::Bad("chunk size line".into()),
            };
            at += skip;
            if size == 0 {
                let mut ts = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(&buf[at..], &mut ts) {
                    Ok(httparse::Status::Complete((n, ts))) => {
                        out.trailers = owned_headers(ts);
                        break at + n;
                    }
                    Ok(httparse::Status::Partial) => return Parsed::Partial,
                    Err(e) => return Parsed::Bad(format!("trailers: {e}")),
                }
            }
            let size = size as usize;
            if buf.len() < at + size + 2 {
                return Parsed::Partial;
            }
            out.body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Parsed::Bad("no CRLF after chunk data".into());
            }
            at += size + 2;
        }
    } else if let Some(v) = cl.first() {
        if cl.len() > 1 {
            return Parsed::Bad(format!("Content-Length {cl:?}"));
        }
        let Ok(n) = v.parse::<usize>() else {
            return Parsed::Bad(format!("Content-Length {v:?}"));
        };
        if buf.len() < head_len + n {
            return Parsed::Partial;
        }
        out.body = buf[head_len..head_len + n].to_vec();
        head_len + n
    } else {
        head_len
    };
    out.wire = buf[..end].to_vec();
    Parsed::Request(Box::new(out), end)
}

fn ok_reply(req: &RawRequest) -> Vec<u8> {
    let text = format!("ok {}", req.body.len());
    let shown = if req.method == "HEAD" { "" } else { &text };
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{shown}",
        text.len()
    )
    .into_bytes()
}

async fn serve(mut s: TcpStream, id: usize, state: Arc<Mutex<State>>, script: Arc<Script>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tunnel = false;
    let mut parsing = true;
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut tmp).await {
            Ok(0) | Err(_) => {
                state.lock().unwrap().conns[id].eof = true;
                return;
            }
            Ok(n) => n,
        };
        let got = &tmp[..n];
        state.lock().unwrap().conns[id].bytes.extend_from_slice(got);
        if tunnel {
            if s.write_all(got).await.is_err() {
                return;
            }
            continue;
        }
        if !parsing {
            continue;
        }
        buf.extend_from_slice(got);
        loop {
            let parsed = parse(&buf, id);
            // The lock is never held across an await: the block ends before any write.
            let reply = {
                let mut st = state.lock().unwrap();
                match parsed {
                    Parsed::Partial => {
                        st.conns[id].unparsed = buf.len();
                        break;
                    }
                    Parsed::Bad(why) => {
                        st.conns[id].unparsed = buf.len();
                        st.conns[id].malformed = Some(why);
                        parsing = false;
                        break;
                    }
                    Parsed::Request(req, used) => {
                        buf.drain(..used);
                        st.conns[id].unparsed = buf.len();
                        let reply = script(&req);
                        let reply = match reply {
                            Reply::Ok => Reply::Raw(ok_reply(&req)),
                            r => r,
                        };
                        st.requests.push(*req);
                        reply
                    }
                }
            };
            match reply {
                Reply::Raw(b) => {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Reply::Close(b) => {
                    let _ = s.write_all(&b).await;
                    let _ = s.shutdown().await;
                    parsing = false;
                    break;
                }
                Reply::Tunnel(b) => {
                    if s.write_all(&b).await.is_err() || s.write_all(&buf).await.is_err() {
                        return;
                    }
                    buf.clear();
                    state.lock().unwrap().conns[id].unparsed = 0;
                    tunnel = true;
                    break;
                }
                Reply::Silent | Reply::Ok => {}
            }
        }
    }
}

/// One response as a client read it off a connection.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The header lines in order: name in lower case, value as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, decoded (chunked framing removed).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of header `name` (lower case), in order, as text (lossy).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// Splits what a client read off a connection into responses, strictly: `1xx`, `204` and `304`
/// have no body, nor do the first `heads` final responses (answers to `HEAD`); otherwise
/// chunked, Content-Length, or everything to the end (the connection closed). Returns the
/// responses and the bytes left over that are not a whole response (a response cut short, or
/// garbage).
pub fn parse_responses(mut bytes: &[u8], mut heads: usize) -> (Vec<RawResponse>, Vec<u8>) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut hs);
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(bytes) else {
            break;
        };
        let status = resp.code.unwrap_or_default();
        let headers = owned_headers(resp.headers);
        let mut r = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let interim = (100..200).contains(&status);
        let no_body = interim || status == 204 || status == 304 || heads > 0;
        if !interim && heads > 0 {
            heads -= 1;
        }
        let te = r.header("transfer-encoding");
        let cl = r.header("content-length");
        let end = if no_body {
            head_len
        } else if te.iter().any(|v| v.trim().eq_ignore_ascii_case("chunked")) {
            let mut at = head_len;
            let done = loop {
                let Ok(httparse::Status::Complete((skip, size))) =
                    httparse::parse_chunk_size(&bytes[at..])
                else {
                    break None;
                };
                at += skip;
                if size == 0 {
                    let mut ts = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&bytes[at..], &mut ts) {
                        Ok(httparse::Status::Complete((n, _))) => break Some(at + n),
                        _ => break None,
                    }
                }
                let size = size as usize;
                if bytes.len() < at + size + 2 || &bytes[at + size..at + size + 2] != b"\r\n" {
                    break None;
                }
                r.body.extend_from_slice(&bytes[at..at + size]);
                at += size + 2;
            };
            match done {
                Some(end) => end,
                None => break,
            }
        } else if let Some(n) = cl.first().and_then(|v| v.trim().parse::<usize>().ok()) {
            if bytes.len() < head_len + n {
                break;
            }
            r.body = bytes[head_len..head_len + n].to_vec();
            head_len + n
        } else {
            r.body = bytes[head_len..].to_vec();
            bytes.len()
        };
        out.push(r);
        bytes = &bytes[end..];
    }
    (out, bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> RawRequest {
        match parse(bytes, 0) {
            Parsed::Request(r, n) => {
                assert_eq!(n, bytes.len());
                *r
            }
            Parsed::Partial => panic!("partial"),
            Parsed::Bad(w) => panic!("bad: {w}"),
        }
    }

    #[test]
    fn parses_lengths_chunks_and_trailers_exactly() {
        let r = request(b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\nabc");
        assert_eq!(
            (r.line(), r.body.as_slice()),
            ("POST /a".into(), &b"abc"[..])
        );
        assert_eq!(r.header("host"), vec!["x"]);
        let r = request(
            b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nt: 1\r\n\r\n",
        );
        assert_eq!(r.body, b"abcd");
        assert_eq!(r.trailers, vec![("t".to_string(), b"1".to_vec())]);
    }

    #[test]
    fn incomplete_and_malformed_requests_are_told_apart() {
        for partial in [
            &b"GET / HTTP/1.1\r\nhost: x\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nabc",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab",
        ] {
            assert!(matches!(parse(partial, 0), Parsed::Partial));
        }
        for bad in [
            &b"GET / HTTP/1.1\r\nho st: x\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            assert!(matches!(parse(bad, 0), Parsed::Bad(_)), "{bad:?}");
        }
    }

    #[test]
    fn responses_are_split_by_their_framing() {
        let (rs, rest) = parse_responses(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncut",
            1,
        );
        let got: Vec<(u16, &[u8])> = rs.iter().map(|r| (r.status, r.body.as_slice())).collect();
        assert_eq!(got, [(100, &b""[..]), (200, b""), (200, b"hi")]);
        assert!(rest.starts_with(b"HTTP/1.1 200 OK") && rest.ends_with(b"cut"));
    }

    #[tokio::test]
    async fn records_bytes_per_connection_and_answers_as_scripted() {
        let b = RawBackend::start(|r| {
            if r.target == "/bye" {
                Reply::Close(b"HTTP/1.1 200 OK\r\n\r\nbye".to_vec())
            } else {
                Reply::Ok
            }
        })
        .await;
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        let sent = b"POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nhiGET /bye HTTP/1.1\r\n\r\n";
        s.write_all(sent).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok 2HTTP/1.1 200 OK\r\n\r\nbye"
        );
        drop(s);
        b.wait_eof(0).await;
        let c = &b.conns()[0];
        assert_eq!((c.bytes.as_slice(), c.unparsed), (&sent[..], 0));
        let lines: Vec<String> = b.requests().iter().map(RawRequest::line).collect();
        assert_eq!(lines, ["POST /a", "GET /bye"]);
    }
}
