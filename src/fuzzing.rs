//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`): the proxy's pure parsers and
//! its route matching, reachable without making the runtime modules public. Hidden from the
//! documentation; not an API.

use std::collections::HashMap;

pub use crate::trace::{parse_b3_single, parse_traceparent, parse_xray};

/// B3 multi-header context from `headers` (the fuzz target builds an `http` map).
pub fn parse_b3_multi(headers: &http::HeaderMap) -> Option<crate::trace::SpanContext> {
    crate::trace::parse_b3_multi(&crate::message::Fields::from(headers))
}

/// Every trace format read from `headers` at once (what a request's arrival does).
pub fn extract_trace(headers: &http::HeaderMap) {
    let _ = crate::trace::extract(&crate::message::Fields::from(headers));
}

/// One request to route: host, path with query, headers.
pub struct Request<'a> {
    /// `Host` / `:authority`.
    pub host: &'a str,
    /// Path and query.
    pub path_and_query: &'a str,
    /// Header names and values (invalid ones are skipped).
    pub headers: Vec<(&'a [u8], &'a [u8])>,
}

/// Compiles a route config (its routes may not forward to a cluster: there are none) and routes
/// each request as the proxy would; returns the route names chosen. `None` when the route
/// config does not compile.
pub fn route(
    rc: &tern_config::RouteConfig,
    requests: &[Request<'_>],
) -> Option<Vec<Option<String>>> {
    let router = crate::router::Router::build(rc, &HashMap::new()).ok()?;
    let mut chosen = Vec::with_capacity(requests.len());
    for r in requests {
        let Ok(uri) = r.path_and_query.parse::<http::Uri>() else {
            chosen.push(None);
            continue;
        };
        let mut headers = crate::message::Fields::new();
        for (n, v) in &r.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n),
                http::HeaderValue::from_bytes(v),
            ) {
                headers.append(n, v);
            }
        }
        let route = router
            .virtual_host(r.host)
            .and_then(|vh| vh.route(&http::Method::GET, &uri, &headers, false));
        if let Some(route) = route {
            // Rewrites and redirects are computed on the matched route, as the request path does.
            let _ = route.rewrite_path(&uri, "/rewritten/");
        }
        chosen.push(route.map(|rt| rt.name.to_string()));
    }
    Some(chosen)
}

/// Reads a `grpc-timeout` value as the proxy does; what it accepts is written back in the wire
/// format and read again (never shorter than what was read, rounded to whole milliseconds).
pub fn grpc_timeout(value: &[u8]) -> Option<std::time::Duration> {
    let d = crate::grpc::parse_timeout(value)?;
    let written = crate::grpc::format_timeout(d);
    let back = crate::grpc::parse_timeout(written.as_bytes());
    // Written in the wire format, and never shorter (past 8 digits of milliseconds the unit
    // grows and rounds down, as Envoy's does).
    assert!(
        back.is_some_and(|b| b >= d || d > std::time::Duration::from_millis(99_999_999)),
        "{d:?} written as {written:?}"
    );
    Some(d)
}

/// What the HTTP/1 body decoder made of an input: the data, the trailers, and whether the body
/// ended (`Ok(true)`), needs more (`Ok(false)`), or was refused.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// The body's data, concatenated.
    pub data: Vec<u8>,
    /// The trailer fields, in order.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Done, not done, or the framing error's text.
    pub end: Result<bool, String>,
}

fn decode_pieces(mut d: crate::http1::decode::Decoder, pieces: &[&[u8]]) -> Decoded {
    let mut buf = bytes::BytesMut::new();
    let mut out = Decoded {
        data: Vec::new(),
        trailers: Vec::new(),
        end: Ok(false),
    };
    for p in pieces {
        buf.extend_from_slice(p);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => match f.into_data() {
                    Ok(b) => {
                        assert!(!b.is_empty(), "an empty data frame");
                        out.data.extend_from_slice(&b);
                    }
                    Err(f) => {
                        assert!(out.trailers.is_empty(), "two trailer frames");
                        let t = f.into_trailers().expect("data or trailers");
                        out.trailers = t
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                            .collect();
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    out.end = Err(e.to_string());
                    return out;
                }
            }
        }
    }
    out.end = Ok(d.is_done());
    out
}

/// A chunked body through the HTTP/1 decoder, whole and split where the first two bytes (little
/// endian) say: the outcome is the same (the split points are where a connection's reads end).
/// A body that decodes whole is encoded again by the encoder and decodes to the same data and
/// trailers.
pub fn http1_chunked(input: &[u8]) -> Decoded {
    use crate::http1::decode::Decoder;
    let (split, data) = match input {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, input),
    };
    let whole = decode_pieces(Decoder::chunked(), &[data]);
    let at = split % (data.len() + 1);
    let parts = decode_pieces(Decoder::chunked(), &[&data[..at], &data[at..]]);
    assert_eq!(parts, whole, "split at {at}");
    if whole.end == Ok(true) {
        let mut e = crate::http1::encode::Encoder::chunked();
        let mut wire = bytes::BytesMut::new();
        e.data(whole.data.len(), &mut wire)
            .expect("chunked takes any data");
        wire.extend_from_slice(&whole.data);
        wire.extend_from_slice(e.tail());
        let mut t = http::HeaderMap::new();
        for (k, v) in &whole.trailers {
            t.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("decoded name"),
                http::HeaderValue::from_bytes(v).expect("decoded value"),
            );
        }
        e.end(Some(&t), &mut wire).expect("chunked ends");
        let again = decode_pieces(Decoder::chunked(), &[&wire]);
        assert_eq!(again.data, whole.data);
        assert_eq!(again.trailers, whole.trailers);
        assert_eq!(again.end, Ok(true));
    }
    whole
}

/// An upstream's response (head and body bytes) through the HTTP/1 client's head parser and
/// body decoder, as the proxy reads it: the head is refused or parsed with a framing, and the
/// body decodes the same whatever the split. The first byte: bit 0, the request was HEAD; the
/// rest, where the body's bytes split. Returns the status and the body's outcome.
pub fn http1_response(input: &[u8]) -> Option<(u16, Decoded)> {
    let (&first, data) = input.split_first()?;
    let (head_request, split) = (first & 1 == 1, usize::from(first >> 1));
    let mut buf = bytes::BytesMut::from(data);
    let head = crate::http1::response::parse(&mut buf, head_request).ok()??;
    assert!(buf.len() < data.len(), "a head consumes bytes");
    values_are_header_values(&head.parts.headers);
    let rest = buf.to_vec();
    let at = split % (rest.len() + 1);
    let whole = decode_pieces(head.body.clone(), &[&rest]);
    let parts = decode_pieces(head.body.clone(), &[&rest[..at], &rest[at..]]);
    assert_eq!(parts, whole, "split at {at}");
    assert!(whole.data.len() <= rest.len());
    if head.body.is_eof() {
        assert!(
            !head.reusable,
            "a body read to the close ends its connection"
        );
    }
    Some((head.parts.status.as_u16(), whole))
}

#[cfg(test)]
mod tests {
    /// The seed corpus goes through the fuzz target's checks in every test run.
    #[test]
    fn grpc_timeout_corpus_holds_the_invariants() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/grpc_timeout");
        let mut accepted = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            accepted += usize::from(super::grpc_timeout(&bytes).is_some());
        }
        assert!(accepted >= 4, "the corpus has valid values too");
    }

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    #[test]
    fn http1_corpora_hold_the_invariants() {
        let mut done = 0;
        for mut bytes in corpus("http1_chunked") {
            // Every split point of each seed, not only the one its first bytes choose.
            for split in 0..=bytes.len() as u16 {
                bytes[..2].copy_from_slice(&split.to_le_bytes());
                done += usize::from(super::http1_chunked(&bytes).end == Ok(true));
            }
        }
        assert!(done >= 3, "the chunked corpus has valid bodies too");
        let mut parsed = 0;
        for mut bytes in corpus("http1_response") {
            for first in 0..=255u8 {
                bytes[0] = first;
                parsed += usize::from(super::http1_response(&bytes).is_some());
            }
        }
        assert!(parsed >= 8 * 256, "the response corpus has valid heads too");
    }
}

/// The parsers keep values as offsets into the head, unchecked, because httparse accepts exactly
/// the bytes a `HeaderValue` does: every value of an accepted head must be one. Returns the count.
fn values_are_header_values(fields: &crate::message::Fields) -> usize {
    for (name, v) in fields {
        assert!(
            http::HeaderValue::from_bytes(v.as_bytes()).is_ok(),
            "{name}: {:?} was accepted but is no header value",
            v.as_bytes()
        );
    }
    fields.len()
}

/// A request head as Tern's HTTP/1 engine reads it, and the framing it decides.
#[derive(Debug, PartialEq, Eq)]
pub struct Http1Head {
    /// Bytes the head took from the front of the input.
    pub consumed: usize,
    /// The body's declared length; `None` when it is chunked.
    pub content_length: Option<u64>,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// Header fields kept.
    pub fields: usize,
    /// Whether `content-length` and `transfer-encoding` fields are present.
    pub has_length_field: bool,
    /// Whether a `transfer-encoding` field is present.
    pub has_te_field: bool,
}

/// Parses the front of `data` as a request head with the default limits (60 KiB, 100 fields):
/// `Ok(None)` when more bytes are needed, `Err(status)` when refused.
pub fn http1_request(data: &[u8]) -> Result<Option<Http1Head>, u16> {
    use crate::http1::request::{parse, BodyLength, Limits};
    let mut buf = bytes::BytesMut::from(data);
    match parse(&mut buf, &Limits::default()) {
        Ok(None) => Ok(None),
        Err(r) => Err(r.status().as_u16()),
        Ok(Some(h)) => Ok(Some(Http1Head {
            fields: values_are_header_values(&h.parts.headers),
            consumed: data.len() - buf.len(),
            content_length: match h.body {
                BodyLength::Length(n) => Some(n),
                BodyLength::Chunked => None,
            },
            keep_alive: h.keep_alive,
            has_length_field: h.parts.headers.contains_key(http::header::CONTENT_LENGTH),
            has_te_field: h
                .parts
                .headers
                .contains_key(http::header::TRANSFER_ENCODING),
        })),
    }
}
