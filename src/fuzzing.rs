//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`): the proxy's pure parsers and
//! its route matching, reachable without making the runtime modules public. Hidden from the
//! documentation; not an API.

use std::collections::HashMap;

pub use crate::trace::{parse_b3_multi, parse_b3_single, parse_traceparent, parse_xray};

/// Every trace format read from `headers` at once (what a request's arrival does).
pub fn extract_trace(headers: &http::HeaderMap) {
    let _ = crate::trace::extract(headers);
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
        let mut headers = http::HeaderMap::new();
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
            .and_then(|vh| vh.route(&uri, &headers, false));
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
            consumed: data.len() - buf.len(),
            content_length: match h.body {
                BodyLength::Length(n) => Some(n),
                BodyLength::Chunked => None,
            },
            keep_alive: h.keep_alive,
            fields: h.parts.headers.len(),
            has_length_field: h.parts.headers.contains_key(http::header::CONTENT_LENGTH),
            has_te_field: h
                .parts
                .headers
                .contains_key(http::header::TRANSFER_ENCODING),
        })),
    }
}
