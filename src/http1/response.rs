//! An upstream's HTTP/1.x response head, parsed with `httparse` straight into [`Fields`]
//! (values share the connection's read buffer), and the response framing rules of RFC 9112 §6.3
//! with Envoy's strictness: a HEAD request's answer and 1xx, 204 and 304 have no body; a
//! `Transfer-Encoding` must be exactly `chunked` (Envoy: anything else is refused); with a
//! `Content-Length` too, or `Content-Length` values that are malformed or differ, the response is
//! refused — its body cannot be delimited the one way both ends agree on. Repeated equal values
//! (`2, 2`) are accepted (RFC 9110 §8.6), forwarded as one, and the connection is not reused.
//! Bare LF line ends, obs-fold, whitespace before the colon and control bytes are refused too.
//! A `Connection` field that lists only `keep-alive` / `close` is this hop's alone: read here for
//! the connection's reuse and not kept in the map (the proxy removes hop-by-hop fields anyway),
//! except on a 101, whose client switches with it.

use std::fmt;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, StatusCode, Version};

use crate::message::{Fields, ResponseParts};

use super::decode::Decoder;
use super::parse_length;
use super::request::{field_name, is, Known};

/// The largest response head accepted (the upstream buffer limit, like Envoy's
/// `max_response_headers_kb`).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields accepted in a response (Envoy's `max_headers_count` default).
pub(crate) const MAX_HEADERS: usize = 100;

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not a well-formed status line and field lines (`httparse`'s verdict, or a bare LF).
    Malformed(&'static str),
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields.
    TooLarge,
    /// A `Content-Length` that is not digits, or two that differ.
    BadContentLength,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    BadTransferEncoding,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(what) => write!(f, "malformed response head: {what}"),
            HeadError::TooLarge => f.write_str("response head too large"),
            HeadError::BadContentLength => f.write_str("invalid content-length"),
            HeadError::BadTransferEncoding => f.write_str("unsupported transfer-encoding"),
            HeadError::LengthAndChunked => f.write_str("both content-length and transfer-encoding"),
        }
    }
}

impl std::error::Error for HeadError {}

/// A parsed response head and how its body is read.
#[derive(Debug)]
pub(crate) struct Head {
    /// Status, version and headers (the framing headers as the upstream sent them, `2, 2`
    /// normalised to `2`; a `Connection` of only `keep-alive` / `close` left out but on a 101).
    pub(crate) parts: Box<ResponseParts>,
    /// How the body is delimited.
    pub(crate) body: Decoder,
    /// Whether the connection may carry another request after this response (HTTP/1.1 without
    /// `Connection: close`, HTTP/1.0 with `keep-alive`, a length that is not the close, nothing
    /// normalised).
    pub(crate) reusable: bool,
}

/// Parses the response head at the front of `buf`, consuming it when complete; `Ok(None)`
/// while more bytes are needed. `head_request`: the request was HEAD (no body follows).
pub(crate) fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, HeadError> {
    // Most heads have a few fields: a small array first (no cost for the 100 slots), the full
    // bound only for a head that needs it.
    match parse_with::<FEW_HEADERS>(buf, head_request) {
        Err(HeadError::TooLarge) => parse_many(buf, head_request),
        r => r,
    }
}

/// Fields parsed at first: a larger head is parsed again with room for [`MAX_HEADERS`].
const FEW_HEADERS: usize = 24;

#[inline(never)]
fn parse_many(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, HeadError> {
    parse_with::<MAX_HEADERS>(buf, head_request)
}

fn parse_with<const N: usize>(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Head>, HeadError> {
    // The exchange asks before the first read too: nothing to parse yet.
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialised: nothing is written per call but the fields found.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut r = httparse::Response::new(&mut []);
    // The default config, as `Response::parse` uses.
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => {
            return Err(HeadError::Malformed(match e {
                httparse::Error::HeaderName => "header name",
                httparse::Error::HeaderValue => "header value",
                httparse::Error::NewLine => "line end",
                httparse::Error::Status => "status",
                httparse::Error::Version => "version",
                _ => "token",
            }))
        }
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let version = match r.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Malformed("status code"))?;
    // Where each name and value sits in the head, so that both can be read from it once it is
    // split off the buffer (the values share its bytes: no copy).
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); N];
    let count = r.headers.len();
    for (span, f) in spans.iter_mut().zip(r.headers.iter()) {
        let at = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(base) as u32;
        *span = (
            at(f.name.as_bytes()),
            f.name.len() as u32,
            at(f.value),
            f.value.len() as u32,
        );
    }
    if has_bare_lf(&buf[..len], spans[..count].iter().map(|s| s.0 as usize)) {
        return Err(HeadError::Malformed("bare LF"));
    }
    let head: Bytes = buf.split_to(len).freeze();
    // Room for the one field the proxy adds (`x-request-id`) without growing the list.
    let mut headers = Fields::with_capacity(count + 1);
    let mut framing = Framing::default();
    for &(n, nl, v, vl) in &spans[..count] {
        let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
        let (name, known) = head
            .get(n..n + nl)
            .and_then(|b| field_name(b).ok())
            .ok_or(HeadError::Malformed("header name"))?;
        // An empty value's slice need not point into the head.
        let v = match vl {
            0 => 0,
            _ if v + vl <= head.len() => v,
            _ => return Err(HeadError::Malformed("header value")),
        };
        // This hop's options alone are read, not kept (the proxy would strip the field, RFC
        // 9110 §7.6.1, for a removal). A 101 keeps them: the client switches with them.
        if known != Known::Other
            && !framing.see(known, &head[v..v + vl])?
            && status != StatusCode::SWITCHING_PROTOCOLS
        {
            continue;
        }
        // The value stays in the head: httparse allowed only the bytes `HeaderValue` takes.
        headers.push_raw(name, v, vl);
    }
    headers.set_block(head);
    let (body, normalised) = framing.body(status, head_request)?;
    if let (true, Some(n)) = (normalised, framing.length) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    let reusable = !normalised
        && !body.is_eof()
        && match version {
            Version::HTTP_10 => framing.keep_alive,
            _ => !framing.close,
        };
    Ok(Some(Head {
        parts: Box::new(ResponseParts {
            status,
            version,
            headers,
            extensions: http::Extensions::new(),
        }),
        body,
        reusable,
    }))
}

/// Whether a line of `head` ends in a LF without its CR. `head` is what httparse accepted,
/// `names` where its field names start. Each field line starts right after the LF that ends the
/// line before it (obs-fold and empty lines inside are refused), and the head ends with the empty
/// line: the byte before each of those LFs tells, with no search through the head. A head with
/// empty lines before its status line is searched whole.
fn has_bare_lf(head: &[u8], names: impl Iterator<Item = usize>) -> bool {
    // Whether the LF at `lf` lacks its CR.
    let bare = |lf: usize| lf == 0 || head.get(lf - 1) != Some(&b'\r');
    if head.first() != Some(&b'H') {
        return memchr::memchr_iter(b'\n', head).any(bare);
    }
    let len = head.len();
    // The empty line's LF; with its CR, the line before it ends at `len - 3`.
    if len < 4 || bare(len - 1) || bare(len - 3) {
        return true;
    }
    for at in names {
        if at == 0 || bare(at - 1) {
            return true;
        }
    }
    false
}

/// What the framing headers of a head said.
#[derive(Debug, Default)]
struct Framing {
    /// The one `Content-Length`, if any.
    length: Option<u64>,
    /// `Content-Length` values seen (more than one: normalised).
    lengths: u32,
    /// `Transfer-Encoding` lines seen.
    codings: u32,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
}

impl Framing {
    /// Reads one framing field. `Ok(false)`: the field is this hop's alone and need not be kept
    /// (a `Connection` listing only `keep-alive` / `close`: nothing else for the proxy's
    /// hop-by-hop removal to take with it).
    fn see(&mut self, name: Known, value: &[u8]) -> Result<bool, HeadError> {
        match name {
            Known::ContentLength => {
                // Digits alone (nearly every length): one value, no list to split.
                let one = parse_length(value);
                let values = match one {
                    Some(_) => None,
                    None => Some(value.split(|&b| b == b',')),
                };
                for v in values.into_iter().flatten() {
                    let n = parse_length(v.trim_ascii()).ok_or(HeadError::BadContentLength)?;
                    if self.length.is_some_and(|l| l != n) {
                        return Err(HeadError::BadContentLength);
                    }
                    self.length = Some(n);
                    self.lengths += 1;
                }
                if let Some(n) = one {
                    if self.length.is_some_and(|l| l != n) {
                        return Err(HeadError::BadContentLength);
                    }
                    self.length = Some(n);
                    self.lengths += 1;
                }
            }
            Known::TransferEncoding => {
                self.codings += 1;
                if self.codings > 1 || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::BadTransferEncoding);
                }
            }
            Known::Connection => {
                // The usual one-token values first.
                if is(value, b"keep-alive") {
                    self.keep_alive = true;
                    return Ok(false);
                }
                if is(value, b"close") {
                    self.close = true;
                    return Ok(false);
                }
                let mut options_only = true;
                for t in value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    // A value has no CR (httparse): the word compare is exact.
                    if is(t, b"close") {
                        self.close = true;
                    } else if is(t, b"keep-alive") {
                        self.keep_alive = true;
                    } else if !t.is_empty() {
                        options_only = false;
                    }
                }
                return Ok(!options_only);
            }
            _ => {}
        }
        Ok(true)
    }

    /// The body's framing (RFC 9112 §6.3), and whether a repeated length was normalised.
    fn body(&self, status: StatusCode, head_request: bool) -> Result<(Decoder, bool), HeadError> {
        if self.codings > 0 && self.lengths > 0 {
            return Err(HeadError::LengthAndChunked);
        }
        let normalised = self.lengths > 1;
        let no_body = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let d = if no_body {
            Decoder::length(0)
        } else if self.codings > 0 {
            Decoder::chunked()
        } else if let Some(n) = self.length {
            Decoder::length(n)
        } else {
            Decoder::eof()
        };
        Ok((d, normalised))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &[u8]) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(s), false)
    }

    fn ok(s: &str) -> Head {
        head(s.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_head_becomes_parts_and_framing() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"[..],
        );
        let h = parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.parts.status, 200);
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.body, Decoder::length(5));
        assert!(h.reusable);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");

        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n").body,
            Decoder::chunked()
        );
        let h = ok("HTTP/1.1 200 OK\r\nx-empty:\r\nx-b:  v  \r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.parts.headers.get("x-empty").unwrap(), "");
        assert_eq!(h.parts.headers.get("x-b").unwrap(), "v");
        let h = ok("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.body, h.reusable), (Decoder::eof(), false));
        assert!(
            !ok("HTTP/1.1 200 OK\r\nConnection: x, Close\r\ncontent-length: 0\r\n\r\n").reusable
        );
        assert!(!ok("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").reusable);
        assert!(
            ok("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").reusable
        );
    }

    #[test]
    fn a_connection_field_of_this_hops_options_alone_is_read_and_not_kept() {
        let h = ok("HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n");
        assert!(h.reusable);
        assert!(!h.parts.headers.contains_key("connection"));
        let h = ok("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.reusable);
        assert!(!h.parts.headers.contains_key("connection"));
        // Naming another field: kept, for the proxy to remove that one too.
        let h =
            ok("HTTP/1.1 200 OK\r\nconnection: close, x-a\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.reusable);
        assert_eq!(h.parts.headers.get("connection").unwrap(), "close, x-a");
        let h = ok("HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nconnection: x-a\r\ncontent-length: 0\r\n\r\n");
        let v: Vec<_> = h.parts.headers.get_all("connection").iter().collect();
        assert_eq!(v, ["x-a"]);
        // A switch keeps it.
        let h = ok(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        );
        assert_eq!(h.parts.headers.get("connection").unwrap(), "upgrade");
        let h = ok("HTTP/1.1 101 Switching Protocols\r\nconnection: keep-alive\r\n\r\n");
        assert_eq!(h.parts.headers.get("connection").unwrap(), "keep-alive");
        // What the proxy forwards is the same either way.
        for s in [
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, , CLOSE\r\nx-b: 2\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-b\r\nx-b: 2\r\ncontent-length: 0\r\n\r\n",
        ] {
            let mut kept = ok(s).parts.headers;
            crate::headers::strip_hop_by_hop(&mut kept);
            let mut all = Fields::new();
            for line in s.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
                let (n, v) = line.split_once(": ").unwrap();
                all.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            crate::headers::strip_hop_by_hop(&mut all);
            assert_eq!(kept, all, "{s}");
        }
    }

    #[test]
    fn no_body_for_head_1xx_204_304() {
        for s in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 204 x\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            let h = ok(s);
            assert_eq!(h.body, Decoder::length(0), "{s}");
            assert!(h.reusable, "{s}");
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"[..]);
        let h = parse(&mut buf, true).unwrap().unwrap();
        assert_eq!(h.body, Decoder::length(0));
        assert_eq!(
            h.parts.headers.get("content-length").unwrap(),
            "9",
            "a HEAD answer keeps its length"
        );
    }

    #[test]
    fn the_largest_length_is_read_as_the_request_parser_reads_it() {
        // One `Content-Length` rule for both sides: up to u64::MAX, one more is refused.
        let h = ok("HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n");
        assert_eq!(h.body, Decoder::length(u64::MAX));
        let over = "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n";
        assert_eq!(
            head(over.as_bytes()).unwrap_err(),
            HeadError::BadContentLength
        );
    }

    #[test]
    fn repeated_equal_lengths_are_one_and_the_connection_closes() {
        let h = ok("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\n");
        assert_eq!(h.body, Decoder::length(2));
        assert!(!h.reusable);
        let v: Vec<_> = h.parts.headers.get_all("content-length").iter().collect();
        assert_eq!(v, ["2"]);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        use HeadError::*;
        let bad: &[(&str, HeadError)] = &[
            (
                "content-length: 5\r\ntransfer-encoding: chunked",
                LengthAndChunked,
            ),
            (
                "transfer-encoding: chunked\r\ncontent-length: 5",
                LengthAndChunked,
            ),
            ("content-length: 5\r\ncontent-length: 6", BadContentLength),
            ("content-length: 5, 6", BadContentLength),
            ("content-length: +5", BadContentLength),
            ("content-length: -5", BadContentLength),
            ("content-length: 0x5", BadContentLength),
            ("content-length: 5 5", BadContentLength),
            ("content-length: ", BadContentLength),
            ("content-length: 5,", BadContentLength),
            ("content-length: 99999999999999999999", BadContentLength),
            ("transfer-encoding: gzip", BadTransferEncoding),
            ("transfer-encoding: gzip, chunked", BadTransferEncoding),
            ("transfer-encoding: chunked, chunked", BadTransferEncoding),
            (
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
                BadTransferEncoding,
            ),
            ("transfer-encoding: identity", BadTransferEncoding),
            ("transfer-encoding: xchunked", BadTransferEncoding),
        ];
        for (h, e) in bad {
            let s = format!("HTTP/1.1 200 OK\r\n{h}\r\n\r\n");
            assert_eq!(head(s.as_bytes()).unwrap_err(), *e, "{h}");
        }
    }

    #[test]
    fn malformed_heads_are_refused() {
        for s in [
            &b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nx : a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\x00b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\nx: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\n\n",
            b"\nHTTP/1.1 200 OK\r\n\r\n",
            b"\r\n\nHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\ny: b\n\r\n",
            b"HTTP/1.1 200 O\rK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 000 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx\r\n\r\n",
        ] {
            assert!(
                matches!(head(s), Err(HeadError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(s),
                head(s)
            );
        }
    }

    #[test]
    fn a_bare_lf_is_found_on_any_line() {
        // Against a search of every LF, on every way to drop one CR from a head, and on heads
        // with empty lines before the status line.
        let base = b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b:  2  \r\nx-c:\r\ncontent-length: 0\r\n\r\n";
        let mut heads = vec![base.to_vec(), b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()];
        for i in memchr::memchr_iter(b'\r', base) {
            let mut h = base.to_vec();
            h.remove(i);
            heads.push(h);
        }
        for lead in [&b"\r\n"[..], b"\n", b"\r\n\n", b"\n\r\n"] {
            heads.push([lead, &base[..]].concat());
        }
        heads.push(b"HTTP/1.1 200\r\n\r\n".to_vec());
        heads.push(b"HTTP/1.1 200\n\r\n".to_vec());
        heads.push(b"HTTP/1.1 200 OK\r\nx:\n\r\n".to_vec());
        for h in heads {
            let reference = memchr::memchr_iter(b'\n', &h).any(|i| i == 0 || h[i - 1] != b'\r');
            let parsed = head(&h);
            let shown = String::from_utf8_lossy(&h);
            if reference {
                assert!(
                    matches!(parsed, Err(HeadError::Malformed(_))),
                    "{shown:?}: {parsed:?}"
                );
            } else {
                assert!(parsed.unwrap().is_some(), "{shown:?}");
            }
        }
    }

    #[test]
    fn heads_are_bounded() {
        let mut s = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            s.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        s.extend_from_slice(b"\r\n");
        assert_eq!(head(&s).unwrap_err(), HeadError::TooLarge);
        // Past the first parse's small array, within the bound: parsed again, whole.
        let mut s = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            s.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        s.extend_from_slice(b"\r\n");
        assert_eq!(head(&s).unwrap().unwrap().parts.headers.len(), MAX_HEADERS);
        let mut s = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        s.resize(MAX_HEAD, b'v');
        assert_eq!(head(&s).unwrap_err(), HeadError::TooLarge);
        assert!(
            head(b"HTTP/1.1 200 OK\r\nx: v").unwrap().is_none(),
            "partial"
        );
        assert!(head(b"").unwrap().is_none(), "nothing read yet");
        // Past the first parse's array, a head stays whole in the buffer until it is complete.
        let mut s = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..30 {
            s.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        let mut buf = BytesMut::from(&s[..]);
        assert!(parse(&mut buf, false).unwrap().is_none());
        assert_eq!(buf.len(), s.len());
    }
}
