//! The request head parser of the downstream HTTP/1 engine: `httparse` into `http` request
//! parts, with the framing rules and limits that keep a request from meaning two things.
//!
//! The strictness table (RFC 9112, Envoy's defaults where the RFC leaves a choice; every row has
//! a unit test below):
//!
//! | input | answer |
//! | --- | --- |
//! | both `Content-Length` and `Transfer-Encoding` | 400 (Envoy's default) |
//! | `Content-Length` not `1*DIGIT`, a comma list, overflowing, or two different values | 400 |
//! | `Transfer-Encoding` not ending in `chunked`, `chunked` twice, not a token list | 400 |
//! | `Transfer-Encoding` with other codings before a final `chunked` | 501 (Envoy's) |
//! | `Transfer-Encoding` on an HTTP/1.0 request | 400 |
//! | obs-fold, whitespace before the colon, bare CR, NUL, DEL or other control bytes | 400 |
//! | a request line that is not `method SP target SP HTTP/1.x`, a target with a fragment | 400 |
//! | a target longer than [`Limits::max_uri`] (the `http` crate's limit), a request line longer than the head limit | 414 |
//! | a head larger than `max_request_headers_kb`, more than `max_headers_count` fields | 431 |
//!
//! Keep-alive: HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 closes unless
//! `Connection: keep-alive`. Absolute-form, authority-form and `*` targets are parsed as
//! `http::Uri` does (as hyper did); which authority routes is `proxy`'s rule, not this one's.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, Method, StatusCode, Uri, Version};

use crate::message::{Fields, RequestParts};

use super::parse_length;

/// The limits a request head is parsed with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest head (request line and fields), in bytes (`max_request_headers_kb`).
    pub max_head: usize,
    /// The most header fields (`max_headers_count`).
    pub max_headers: usize,
    /// The longest request target.
    pub max_uri: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 60 * 1024,
            max_headers: 100,
            max_uri: MAX_URI,
        }
    }
}

/// The `http` crate's longest URI: a longer one cannot be represented at all.
pub(crate) const MAX_URI: usize = u16::MAX as usize - 1;

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// `Content-Length` bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head and what it means for the connection.
#[derive(Debug)]
pub(crate) struct Head {
    /// Method, target, version and fields (extensions empty).
    pub parts: Box<RequestParts>,
    /// The body's framing.
    pub body: BodyLength,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expect_continue: bool,
    /// `TE: trailers`: the client takes trailers in a chunked response.
    pub te_trailers: bool,
    /// `Upgrade` asked: `Some(true)` for `h2c` (served as a plain request), else `Some(false)`.
    pub upgrade: Option<bool>,
}

/// Why a request head was refused: the connection answers with the status and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// 400 with the reason.
    BadRequest(&'static str),
    /// 414: the target is too long.
    UriTooLong,
    /// 431: the head is too large or has too many fields.
    HeadersTooLarge,
    /// 501: a transfer coding Tern does not implement.
    NotImplemented,
}

impl Reject {
    /// The status answered.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::UriTooLong => StatusCode::URI_TOO_LONG,
            Reject::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::BadRequest(why) => write!(f, "bad request: {why}"),
            Reject::UriTooLong => f.write_str("request target too long"),
            Reject::HeadersTooLarge => f.write_str("request headers too large"),
            Reject::NotImplemented => f.write_str("transfer coding not implemented"),
        }
    }
}

/// Parses one request head from the front of `buf`. `Ok(None)`: more bytes are needed (nothing
/// is consumed); `Ok(Some(head))`: the head was taken from `buf` (its fields share its memory),
/// the body or the next request follows.
pub(crate) fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Head>, Reject> {
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2); httparse skips them.
    // Uninitialised: nothing is written per request but the fields found.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut heap;
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= storage.len() {
        &mut storage[..limits.max_headers]
    } else {
        heap = Vec::new();
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let line_done = memchr_lf(buf);
            // Still in the request line and already over a limit: it is the target's fault.
            if !line_done && buf.len() > limits.max_head.min(limits.max_uri + 32) {
                return Err(Reject::UriTooLong);
            }
            if buf.len() > limits.max_head {
                return Err(Reject::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(e) => return Err(Reject::BadRequest(error_reason(e))),
    };
    if len > limits.max_head {
        // A request line alone over the limit is answered as a long target (RFC 9112 §3).
        let line = buf.iter().position(|b| *b == b'\n').unwrap_or(len);
        return Err(if line > limits.max_head {
            Reject::UriTooLong
        } else {
            Reject::HeadersTooLarge
        });
    }
    let base = buf.as_ptr() as usize;
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if path.len() > limits.max_uri {
        return Err(Reject::UriTooLong);
    }
    // A fragment is never sent (RFC 9112 §3.2): a target with one is malformed.
    if path.as_bytes().contains(&b'#') {
        return Err(Reject::BadRequest("target"));
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Reject::BadRequest("method"))?;
    let path_at = path.as_ptr() as usize - base;
    let path_len = path.len();
    // Offsets of every field, so the head can be frozen and the values share its memory.
    let mut at = [(0u32, 0u32, 0u32, 0u32); 128];
    let mut at_heap;
    let n = req.headers.len();
    let offs: &mut [(u32, u32, u32, u32)] = if n <= at.len() {
        &mut at[..n]
    } else {
        at_heap = vec![(0, 0, 0, 0); n];
        &mut at_heap
    };
    for (o, h) in offs.iter_mut().zip(req.headers.iter()) {
        // The head is at most `max_head` (a u32 of kilobytes) long: offsets fit a u32.
        *o = (
            (h.name.as_ptr() as usize - base) as u32,
            h.name.len() as u32,
            (h.value.as_ptr() as usize - base) as u32,
            h.value.len() as u32,
        );
    }
    let head: Bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at..path_at + path_len))
        .map_err(|_| Reject::BadRequest("target"))?;
    // Room for the fields the proxy adds (request id, forwarding headers, a trace context): a
    // list grown on the request path is a reallocation and a copy.
    let mut headers = Fields::with_capacity(n + 4);
    let mut length: Option<u64> = None;
    let mut te: Option<Codings> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut te_trailers = false;
    let mut upgrade = None;
    for &(na, nl, va, vl) in offs.iter() {
        let (na, nl, va, vl) = (na as usize, nl as usize, va as usize, vl as usize);
        let (name, known) =
            field_name(&head[na..na + nl]).map_err(|_| Reject::BadRequest("field name"))?;
        let raw = &head[va..va + vl];
        match known {
            Known::Other => {}
            Known::ContentLength => {
                let n = parse_length(raw).ok_or(Reject::BadRequest("content-length"))?;
                match length {
                    Some(l) if l != n => return Err(Reject::BadRequest("content-length")),
                    // The same length twice: kept once, so it goes on as one field.
                    Some(_) => continue,
                    None => length = Some(n),
                }
            }
            Known::TransferEncoding => te.get_or_insert_default().read(raw)?,
            Known::Connection => {
                for t in raw.split(|b| *b == b',') {
                    let t = t.trim_ascii();
                    if is(t, b"close") {
                        close = true;
                    } else if is(t, b"keep-alive") {
                        keep_alive_token = true;
                    }
                }
            }
            Known::Expect => {
                expect_continue = raw.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            Known::Te => {
                te_trailers |= raw
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            }
            Known::Upgrade => upgrade = Some(raw.trim_ascii().eq_ignore_ascii_case(b"h2c")),
        }
        // The value stays in the head: httparse allowed only HTAB, SP..~ and obs-text (no CR,
        // NUL, DEL), exactly the bytes `HeaderValue` takes, so it need not be checked again.
        // Host is read as text and kept on every request: made a `HeaderValue` once.
        if name == http::header::HOST {
            headers
                .push_shared(name, &head, va, vl)
                .map_err(|_| Reject::BadRequest("field value"))?;
        } else {
            headers.push_raw(name, va, vl);
        }
    }
    headers.set_block(head);
    let body = match (te, length) {
        (Some(_), Some(_)) => {
            return Err(Reject::BadRequest(
                "both content-length and transfer-encoding",
            ))
        }
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(Reject::BadRequest("transfer-encoding on HTTP/1.0"))
        }
        (Some(codings), None) => {
            codings.decide()?;
            BodyLength::Chunked
        }
        (None, l) => BodyLength::Length(l.unwrap_or(0)),
    };
    let keep_alive = match version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    Ok(Some(Head {
        parts: Box::new(RequestParts {
            method,
            uri,
            version,
            headers,
            extensions: http::Extensions::new(),
        }),
        body,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
        te_trailers,
        upgrade,
    }))
}

/// Whether the buffer holds a line end (the request line is complete).
fn memchr_lf(buf: &[u8]) -> bool {
    buf.contains(&b'\n')
}

/// The fields whose values the head parsers read (framing, keep-alive, upgrades).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    /// Any other field.
    Other,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Expect`.
    Expect,
    /// `TE`.
    Te,
    /// `Upgrade`.
    Upgrade,
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
// With the trace and gRPC names below: what an ALB, a tracer and gRPC put on nearly every
// request and response of an ECS service. Outside the `http` crate's table, each would be a
// lowercase copy on the heap.
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// A field name `httparse` found (a token, RFC 9110 §5.1) as a `HeaderName`, and which of the
/// [`Known`] fields it is. The common names are recognised by their length and a case-blind
/// comparison of a word or two, where `HeaderName::from_bytes` copies the name lowercased and
/// searches the standard names byte by byte (about 120 instructions a field, and a copy on the
/// heap for a name outside its table); any other name goes that way, so the result is the same.
/// Every spelling of a [`Known`] field is in the table: a name that misses it is `Other`.
pub(super) fn field_name(b: &[u8]) -> Result<(HeaderName, Known), http::header::InvalidHeaderName> {
    use http::header::*;
    let known = |n: HeaderName| Ok((n, Known::Other));
    match b.len() {
        2 if is(b, b"te") => return Ok((TE, Known::Te)),
        4 if is(b, b"host") => return known(HOST),
        4 if is(b, b"date") => return known(DATE),
        4 if is(b, b"vary") => return known(VARY),
        4 if is(b, b"etag") => return known(ETAG),
        6 if is(b, b"accept") => return known(ACCEPT),
        6 if is(b, b"server") => return known(SERVER),
        6 if is(b, b"cookie") => return known(COOKIE),
        6 if is(b, b"origin") => return known(ORIGIN),
        6 if is(b, b"expect") => return Ok((EXPECT, Known::Expect)),
        7 if is(b, b"upgrade") => return Ok((UPGRADE, Known::Upgrade)),
        7 if is(b, b"referer") => return known(REFERER),
        7 if is(b, b"expires") => return known(EXPIRES),
        8 if is(b, b"location") => return known(LOCATION),
        10 if is(b, b"connection") => return Ok((CONNECTION, Known::Connection)),
        10 if is(b, b"user-agent") => return known(USER_AGENT),
        10 if is(b, b"set-cookie") => return known(SET_COOKIE),
        10 if is(b, b"keep-alive") => return known(KEEP_ALIVE),
        10 if is(b, b"tracestate") => return known(crate::trace::TRACESTATE),
        11 if is(b, b"traceparent") => return known(crate::trace::TRACEPARENT),
        11 if is(b, b"grpc-status") => return known(crate::grpc::GRPC_STATUS),
        12 if is(b, b"content-type") => return known(CONTENT_TYPE),
        12 if is(b, b"x-request-id") => return known(X_REQUEST_ID),
        12 if is(b, b"grpc-message") => return known(crate::grpc::GRPC_MESSAGE),
        12 if is(b, b"grpc-timeout") => return known(crate::grpc::GRPC_TIMEOUT),
        13 if is(b, b"cache-control") => return known(CACHE_CONTROL),
        13 if is(b, b"authorization") => return known(AUTHORIZATION),
        13 if is(b, b"last-modified") => return known(LAST_MODIFIED),
        13 if is(b, b"accept-ranges") => return known(ACCEPT_RANGES),
        14 if is(b, b"content-length") => return Ok((CONTENT_LENGTH, Known::ContentLength)),
        15 if is(b, b"accept-encoding") => return known(ACCEPT_ENCODING),
        15 if is(b, b"accept-language") => return known(ACCEPT_LANGUAGE),
        15 if is(b, b"x-forwarded-for") => return known(X_FORWARDED_FOR),
        15 if is(b, b"x-amzn-trace-id") => return known(crate::trace::XRAY),
        16 if is(b, b"content-encoding") => return known(CONTENT_ENCODING),
        16 if is(b, b"x-forwarded-port") => return known(X_FORWARDED_PORT),
        17 if is(b, b"transfer-encoding") => {
            return Ok((TRANSFER_ENCODING, Known::TransferEncoding))
        }
        17 if is(b, b"x-forwarded-proto") => return known(X_FORWARDED_PROTO),
        _ => {}
    }
    HeaderName::from_bytes(b).map(|n| (n, Known::Other))
}

/// Whether `b` (a token, or a field value: httparse lets neither hold a CR) is `name`
/// (lowercase letters and `-`, at most 24 bytes) in any case. A letter's cases differ in the 0x20
/// bit alone, which `-` has set; the one other byte that ORs to `-` is CR. Compared a word at a
/// time (the last word may overlap).
#[inline(always)]
pub(super) fn is(b: &[u8], name: &[u8]) -> bool {
    fn w8(s: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or_default())
    }
    fn w4(s: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(s[at..at + 4].try_into().unwrap_or_default())
    }
    const C8: u64 = 0x2020_2020_2020_2020;
    const C4: u32 = 0x2020_2020;
    let n = name.len();
    if b.len() != n {
        return false;
    }
    match n {
        0..4 => b.iter().zip(name).all(|(x, y)| x | 0x20 == *y),
        4..8 => w4(b, 0) | C4 == w4(name, 0) && w4(b, n - 4) | C4 == w4(name, n - 4),
        8..=16 => w8(b, 0) | C8 == w8(name, 0) && w8(b, n - 8) | C8 == w8(name, n - 8),
        _ => {
            w8(b, 0) | C8 == w8(name, 0)
                && w8(b, 8) | C8 == w8(name, 8)
                && w8(b, n - 8) | C8 == w8(name, n - 8)
        }
    }
}

/// The `Transfer-Encoding` fields read so far.
#[derive(Debug, Default, Clone, Copy)]
struct Codings {
    count: usize,
    /// The last coding is exactly `chunked`.
    last_chunked: bool,
}

impl Codings {
    /// Reads one field's list. `Err`: malformed, or a coding after `chunked` (400).
    fn read(&mut self, v: &[u8]) -> Result<(), Reject> {
        for item in v.split(|b| *b == b',') {
            let item = item.trim_ascii();
            // A coding with parameters (`gzip;q=1`) is still a coding: `token=token` each.
            let mut pieces = item.split(|b| *b == b';');
            let name = pieces.next().unwrap_or_default().trim_ascii();
            if !is_token(name) {
                return Err(Reject::BadRequest("transfer-encoding"));
            }
            for param in pieces {
                let mut kv = param.trim_ascii().splitn(2, |b| *b == b'=');
                let (k, v) = (kv.next().unwrap_or_default(), kv.next().unwrap_or_default());
                if !is_token(k.trim_ascii()) || !is_token(v.trim_ascii()) {
                    return Err(Reject::BadRequest("transfer-encoding"));
                }
            }
            if self.last_chunked {
                // chunked must be the last coding, applied once.
                return Err(Reject::BadRequest("transfer-encoding"));
            }
            self.count += 1;
            self.last_chunked = name.eq_ignore_ascii_case(b"chunked") && name.len() == item.len();
        }
        Ok(())
    }

    /// The whole list: `Ok(())` when it is exactly `chunked`; 400 when `chunked` is not last
    /// (the body's end is unknown, RFC 9112 §6.3 (4)); 501 for other codings before it.
    fn decide(self) -> Result<(), Reject> {
        match (self.last_chunked, self.count) {
            (false, _) => Err(Reject::BadRequest("transfer-encoding")),
            (true, 1) => Ok(()),
            (true, _) => Err(Reject::NotImplemented),
        }
    }
}

/// A non-empty token (RFC 9110 §5.6.2).
fn is_token(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().all(|b| is_tchar(*b))
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    matches!(b, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

fn error_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "field name",
        httparse::Error::HeaderValue => "field value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status | httparse::Error::Token => "request line",
        httparse::Error::Version => "version",
        httparse::Error::TooManyHeaders => "too many fields",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_LENGTH;

    fn p(s: &[u8]) -> Result<Option<Head>, Reject> {
        parse(&mut BytesMut::from(s), &Limits::default())
    }

    fn ok(s: &[u8]) -> Head {
        p(s).expect("parses").expect("complete")
    }

    fn status(s: &[u8]) -> u16 {
        p(s).expect_err("refused").status().as_u16()
    }

    #[test]
    fn a_simple_request_and_what_follows_it() {
        let mut buf =
            BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nNEXT"[..]);
        let h = parse(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.headers.get("host").unwrap(), "x");
        let xa: Vec<_> = h.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(h.body, BodyLength::Length(0));
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn a_partial_head_needs_more_and_consumes_nothing() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(parse(&mut buf, &Limits::default()).unwrap().is_none());
        assert_eq!(buf.len(), 25);
    }

    #[test]
    fn both_lengths_are_refused() {
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"),
            400
        );
    }

    #[test]
    fn content_length_must_be_one_number() {
        for v in [
            "3, 3",
            "+3",
            "-1",
            "0x3",
            " ",
            "3 3",
            "99999999999999999999",
            "1e3",
        ] {
            let req = format!("POST / HTTP/1.1\r\ncontent-length: {v}\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{v:?}");
        }
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"),
            400
        );
        // The same value twice is one length, kept once.
        let h = ok(b"POST / HTTP/1.1\r\ncontent-length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(h.body, BodyLength::Length(3));
        assert_eq!(h.parts.headers.get_all(CONTENT_LENGTH).iter().count(), 1);
        let h = ok(b"POST / HTTP/1.1\r\ncontent-length: 18446744073709551615\r\n\r\n");
        assert_eq!(h.body, BodyLength::Length(u64::MAX));
    }

    #[test]
    fn transfer_encoding_must_be_one_final_chunked() {
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n").body,
            BodyLength::Chunked
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nTransfer-Encoding: ChUnKeD\r\n\r\n").body,
            BodyLength::Chunked
        );
        // Codings Tern does not implement before a final chunked: 501, as Envoy.
        for v in ["gzip, chunked", "identity, chunked", "gzip;q=1, chunked"] {
            let req = format!("POST / HTTP/1.1\r\ntransfer-encoding: {v}\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 501, "{v:?}");
        }
        assert_eq!(
            status(
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            501
        );
        // Malformed, or chunked not last (the body's end is unknown) or twice: 400.
        for v in [
            "gzip",
            "identity",
            "xchunked",
            "chunked, identity",
            "chunked, gzip",
            "chunked, chunked",
            "",
            ",",
            "chunked;",
            "chun ked",
            "\"chunked\"",
            "chunked, ",
        ] {
            let req = format!("POST / HTTP/1.1\r\ntransfer-encoding: {v}\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{v:?}");
        }
        assert_eq!(status(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n"), 400);
        // A parameter on chunked is not chunked.
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked;x=1\r\n\r\n"),
            400
        );
        // HTTP/1.0 has no transfer codings.
        assert_eq!(
            status(b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn malformed_fields_are_refused() {
        for req in [
            &b"GET / HTTP/1.1\r\nx-a: 1\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nx-a: 1\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-a : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-a\t: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length : 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-a: 1\r2\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-a: 1\x002\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-a: 1\x7f\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-a: 1\x0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-a: \x1b[0m\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
            b"GET / HTTP/1.1\r\nx(a): 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert_eq!(status(req), 400, "{:?}", String::from_utf8_lossy(req));
        }
        // obs-text is allowed in values (RFC 9110 §5.5), as hyper did.
        let h = ok(b"GET / HTTP/1.1\r\nx-a: caf\xc3\xa9\r\n\r\n");
        assert_eq!(
            h.parts.headers.get("x-a").unwrap().as_bytes(),
            b"caf\xc3\xa9"
        );
    }

    #[test]
    fn malformed_request_lines_are_refused() {
        for req in [
            &b"GET  / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / x HTTP/1.1\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\rHost: x\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(req), 400, "{:?}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn long_targets_and_large_heads_are_refused() {
        let limits = Limits {
            max_head: 200_000,
            ..Limits::default()
        };
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        let r = parse(&mut BytesMut::from(long.as_bytes()), &limits);
        assert_eq!(r.unwrap_err(), Reject::UriTooLong);
        // A request line still arriving that is already too long.
        let partial = format!("GET /{}", "a".repeat(MAX_URI + 100));
        let r = parse(&mut BytesMut::from(partial.as_bytes()), &limits);
        assert_eq!(r.unwrap_err(), Reject::UriTooLong);

        let small = Limits {
            max_head: 1024,
            max_headers: 4,
            max_uri: MAX_URI,
        };
        let big = format!("GET / HTTP/1.1\r\nx-a: {}\r\n\r\n", "b".repeat(1100));
        let r = parse(&mut BytesMut::from(big.as_bytes()), &small);
        assert_eq!(r.unwrap_err(), Reject::HeadersTooLarge);
        // Still arriving, and already over the limit.
        let r = parse(&mut BytesMut::from(&big.as_bytes()[..1060]), &small);
        assert_eq!(r.unwrap_err(), Reject::HeadersTooLarge);
        // A request line over the head limit: 414, whole or still arriving.
        let line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1100));
        let r = parse(&mut BytesMut::from(line.as_bytes()), &small);
        assert_eq!(r.unwrap_err(), Reject::UriTooLong);
        let r = parse(&mut BytesMut::from(&line.as_bytes()[..1060]), &small);
        assert_eq!(r.unwrap_err(), Reject::UriTooLong);
        let many = b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
        let r = parse(&mut BytesMut::from(&many[..]), &small);
        assert_eq!(r.unwrap_err(), Reject::HeadersTooLarge);
        let four = b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\n\r\n";
        assert!(parse(&mut BytesMut::from(&four[..]), &small)
            .unwrap()
            .is_some());
        // More fields than the stack array: the limit still holds.
        let lots = Limits {
            max_headers: 300,
            ..Limits::default()
        };
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..250 {
            req.push_str(&format!("x-{i}: {i}\r\n"));
        }
        req.push_str("\r\n");
        let h = parse(&mut BytesMut::from(req.as_bytes()), &lots)
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.headers.len(), 250);
        assert_eq!(h.parts.headers.get("x-249").unwrap(), "249");
    }

    #[test]
    fn keep_alive_rules() {
        assert!(ok(b"GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        let h = ok(b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        assert_eq!(h.parts.version, Version::HTTP_10);
    }

    #[test]
    fn expect_continue_on_http11_only() {
        assert!(
            ok(b"POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(
            !ok(b"POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(!ok(b"POST / HTTP/1.1\r\nexpect: something\r\n\r\n").expect_continue);
    }

    #[test]
    fn target_forms() {
        let h = ok(b"GET http://example.com:8080/p?q HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(h.parts.uri.authority().unwrap(), "example.com:8080");
        assert_eq!(h.parts.uri.path(), "/p");
        assert_eq!(ok(b"OPTIONS * HTTP/1.1\r\n\r\n").parts.uri, "*");
        assert_eq!(
            ok(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
                .parts
                .uri
                .authority()
                .unwrap(),
            "example.com:443"
        );
        assert_eq!(status(b"GET http:// HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn field_names_are_what_the_http_crate_makes_of_them() {
        let table = [
            "te",
            "host",
            "date",
            "vary",
            "etag",
            "accept",
            "server",
            "cookie",
            "origin",
            "expect",
            "upgrade",
            "referer",
            "expires",
            "location",
            "connection",
            "user-agent",
            "set-cookie",
            "keep-alive",
            "content-type",
            "x-request-id",
            "cache-control",
            "authorization",
            "last-modified",
            "accept-ranges",
            "content-length",
            "accept-encoding",
            "accept-language",
            "x-forwarded-for",
            "content-encoding",
            "transfer-encoding",
            "x-forwarded-proto",
            "x-forwarded-port",
            "x-amzn-trace-id",
            "traceparent",
            "tracestate",
            "grpc-status",
            "grpc-message",
            "grpc-timeout",
        ];
        // Each name of the table in three cases, and near misses of each (one byte changed at
        // either end or in the middle, one byte more or less), and other names: the same
        // `HeaderName` as `from_bytes` (equal and hashing alike), and `Known` exactly for the
        // framing fields.
        let mut names: Vec<Vec<u8>> = Vec::new();
        for n in table {
            names.push(n.into());
            names.push(n.to_ascii_uppercase().into());
            names.push(
                n.bytes()
                    .enumerate()
                    .map(|(i, b)| {
                        if i % 2 == 0 {
                            b.to_ascii_uppercase()
                        } else {
                            b
                        }
                    })
                    .collect(),
            );
            for at in [0, n.len() / 2, n.len() - 1] {
                for by in [b'x', b'_', b'^', b'`', b'~', b'0', b'-', b'|', b'.'] {
                    let mut m = n.as_bytes().to_vec();
                    m[at] = by;
                    names.push(m);
                }
            }
            names.push(format!("{n}s").into());
            names.push(n[1..].into());
        }
        for n in ["x", "a-b", "x-forwarded-client-cert", "content-md5", "ab"] {
            names.push(n.into());
        }
        for n in names {
            let (name, known) = field_name(&n).unwrap();
            let want = HeaderName::from_bytes(&n).unwrap();
            assert_eq!(name, want, "{:?}", String::from_utf8_lossy(&n));
            assert_eq!(name.as_str(), want.as_str());
            let expected = match want.as_str() {
                "content-length" => Known::ContentLength,
                "transfer-encoding" => Known::TransferEncoding,
                "connection" => Known::Connection,
                "expect" => Known::Expect,
                "te" => Known::Te,
                "upgrade" => Known::Upgrade,
                _ => Known::Other,
            };
            assert_eq!(known, expected, "{want}");
            let mut map = http::HeaderMap::new();
            map.insert(want.clone(), http::HeaderValue::from_static("1"));
            assert!(map.contains_key(&name), "{want} hashes alike");
        }
        assert!(field_name(b"a b").is_err());
        assert!(field_name(b"").is_err());
    }

    #[test]
    fn a_cr_inside_a_name_is_refused_before_names_are_read() {
        // The case-blind comparison would take CR for `-`: httparse refuses it first.
        for req in [
            &b"POST / HTTP/1.1\r\ncontent\rlength: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\ntransfer\rencoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nx\rrequest-id: 1\r\n\r\n",
        ] {
            assert_eq!(status(req), 400, "{:?}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        assert_eq!(
            ok(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n").parts.method,
            Method::GET
        );
    }
}
