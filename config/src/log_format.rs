//! The access-log format language: `json` or an Envoy-style format string with `%OPERATOR%`
//! command operators, compiled once at load time. Header values of header rules
//! (`request_headers_to_add`, ...) are format strings of the same language ([`compile_text`]).
//!
//! It lives in the configuration model so that `tern-validate` rejects exactly the formats the
//! proxy would; the proxy's access log and header rules only render what this compiles.

use std::collections::HashMap;

use http::HeaderName;

/// A value an access log line can show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `%START_TIME%`: RFC 3339 with milliseconds, UTC.
    StartTime,
    /// `%REQ(:METHOD)%`.
    Method,
    /// `%REQ(:PATH)%`: path and query as received.
    Path,
    /// `%REQ(:AUTHORITY)%`.
    Authority,
    /// `%REQ(NAME)%`: a request header, by index into the log's captured headers.
    ReqHeader(usize),
    /// `%RESP(NAME)%`: a response header, by index into the log's captured headers.
    RespHeader(usize),
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`.
    Protocol,
    /// `%RESPONSE_CODE%`.
    ResponseCode,
    /// `%RESPONSE_FLAGS%`.
    ResponseFlags,
    /// `%BYTES_RECEIVED%`: request body bytes.
    BytesReceived,
    /// `%BYTES_SENT%`: response body bytes.
    BytesSent,
    /// `%DURATION%`: ms from request start to the end of the response.
    Duration,
    /// `%UPSTREAM_HOST%`: the endpoint of the last try.
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`.
    UpstreamCluster,
    /// `%UPSTREAM_SERVICE_TIME%`: ms from sending the last try to its response headers.
    UpstreamServiceTime,
    /// `%ROUTE_NAME%`.
    RouteName,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the trusted client (`x-forwarded-for` with trusted hops,
    /// else the PROXY protocol source, else the peer), `ip:port`.
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`: the connection's peer, `ip:port`.
    DownstreamDirectRemoteAddress,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamDirectRemoteAddressWithoutPort,
    /// `%TRACE_ID%`: 32 hex digits.
    TraceId,
    /// `%UPSTREAM_TLS_VERSION%`: `TLSv1.2` or `TLSv1.3` of the last try's connection.
    UpstreamTlsVersion,
    /// `%DOWNSTREAM_TLS_VERSION%`: `TLSv1.2` or `TLSv1.3` of the client's connection.
    DownstreamTlsVersion,
    /// `%DOWNSTREAM_TLS_CIPHER%`: the cipher suite of the client's connection (IANA name).
    DownstreamTlsCipher,
    /// `%REQUESTED_SERVER_NAME%`: the SNI the client sent.
    RequestedServerName,
    /// `%DOWNSTREAM_PEER_SUBJECT%`: the subject of the client's certificate (RFC 2253).
    DownstreamPeerSubject,
    /// `%DOWNSTREAM_PEER_URI_SAN%`: the URI SANs of the client's certificate, `,`-separated.
    DownstreamPeerUriSan,
    /// `%GRPC_STATUS(CAMEL_STRING|SNAKE_STRING|NUMBER)%`: a gRPC request's status (trailers, else
    /// trailers-only headers, else Envoy's mapping of the HTTP status); `CAMEL_STRING` when no
    /// argument (Envoy's default).
    GrpcStatus(GrpcStatusFormat),
}

/// How `%GRPC_STATUS%` writes a status (Envoy's formatter arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcStatusFormat {
    /// `DeadlineExceeded`.
    CamelString,
    /// `DEADLINE_EXCEEDED`.
    SnakeString,
    /// `4`.
    Number,
}

/// One piece of a compiled format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is.
    Lit(String),
    /// A value.
    Field(Field),
}

/// A compiled log line format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line with every field.
    Json,
    /// A format string.
    Text(Vec<Part>),
}

/// The format used when none is configured (Envoy's default, plus the trace id).
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_SERVICE_TIME% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %TRACE_ID%";

/// The command operators a format string may use.
pub const OPERATORS: &[&str] = &[
    "START_TIME",
    "REQ(NAME)",
    "RESP(NAME)",
    "PROTOCOL",
    "RESPONSE_CODE",
    "RESPONSE_FLAGS",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DURATION",
    "UPSTREAM_HOST",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_SERVICE_TIME",
    "ROUTE_NAME",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "TRACE_ID",
    "UPSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "REQUESTED_SERVER_NAME",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_URI_SAN",
    "GRPC_STATUS(CAMEL_STRING|SNAKE_STRING|NUMBER)",
];

impl Field {
    /// Whether the value is known before the request goes upstream, so a request header rule
    /// can show it (the response, its timing and the endpoint are not known yet).
    pub fn known_for_request(&self) -> bool {
        !matches!(
            self,
            Field::RespHeader(_)
                | Field::ResponseCode
                | Field::ResponseFlags
                | Field::BytesReceived
                | Field::BytesSent
                | Field::Duration
                | Field::UpstreamHost
                | Field::UpstreamServiceTime
                | Field::UpstreamTlsVersion
                | Field::GrpcStatus(_)
        ) && !self.is_downstream_tls()
    }

    /// The connection's TLS facts: access logs only (header rules have XFCC for them).
    fn is_downstream_tls(&self) -> bool {
        matches!(
            self,
            Field::DownstreamTlsVersion
                | Field::DownstreamTlsCipher
                | Field::RequestedServerName
                | Field::DownstreamPeerSubject
                | Field::DownstreamPeerUriSan
        )
    }

    /// Whether a response header rule can show it: what the request path knows when the response
    /// head is sent (the request, the status and the response's headers; not what is measured
    /// when the response ends, nor the endpoint).
    pub fn known_for_response(&self) -> bool {
        !matches!(
            self,
            Field::ResponseFlags
                | Field::BytesReceived
                | Field::BytesSent
                | Field::Duration
                | Field::UpstreamHost
                | Field::UpstreamServiceTime
                | Field::UpstreamCluster
                | Field::UpstreamTlsVersion
                | Field::GrpcStatus(_)
        ) && !self.is_downstream_tls()
    }
}

/// Compiles `json` or a format string. Header names used by `%REQ()%`/`%RESP()%` are added to
/// `req`/`resp` (shared by all sinks of a listener, so each header is captured once).
pub fn compile(
    s: &str,
    req: &mut Vec<HeaderName>,
    resp: &mut Vec<HeaderName>,
) -> Result<Format, String> {
    if s.trim() == "json" {
        return Ok(Format::Json);
    }
    compile_text(s, req, resp).map(Format::Text)
}

/// Compiles a format string (no `json` shorthand: a header value `json` is just text).
pub fn compile_text(
    s: &str,
    req: &mut Vec<HeaderName>,
    resp: &mut Vec<HeaderName>,
) -> Result<Vec<Part>, String> {
    // Header slots by name, so a format of many `%REQ()%`s compiles in linear time.
    let mut slots = Slots {
        req: Slot::new(req),
        resp: Slot::new(resp),
    };
    let mut parts = Vec::new();
    let mut rest = s;
    let mut lit = String::new();
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find('%') else {
            return Err(format!(
                "unterminated `%` in access log format at {:?}",
                &rest[i..]
            ));
        };
        let op = &after[..j];
        rest = &after[j + 1..];
        if op.is_empty() {
            // `%%` is a literal percent sign.
            lit.push('%');
            continue;
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit)));
        }
        parts.push(Part::Field(operator(op, &mut slots)?));
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

/// A list of captured headers and its index by name.
struct Slot<'a> {
    list: &'a mut Vec<HeaderName>,
    index: HashMap<HeaderName, usize>,
}

impl<'a> Slot<'a> {
    fn new(list: &'a mut Vec<HeaderName>) -> Slot<'a> {
        let index = list
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), i))
            .collect();
        Slot { list, index }
    }

    fn index(&mut self, name: &str) -> Result<usize, String> {
        let n = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        let next = self.list.len();
        let i = *self.index.entry(n.clone()).or_insert(next);
        if i == next {
            self.list.push(n);
        }
        Ok(i)
    }
}

struct Slots<'a> {
    req: Slot<'a>,
    resp: Slot<'a>,
}

fn operator(op: &str, slots: &mut Slots<'_>) -> Result<Field, String> {
    // `NAME(ARG)` optionally followed by Envoy's `:LEN` truncation, which is not supported.
    let (name, arg) = match op.split_once('(') {
        Some((n, a)) => {
            let a = a.strip_suffix(')').ok_or_else(|| {
                format!("`%{op}%`: expected `NAME(ARG)` (a length limit `:N` is not supported)")
            })?;
            (n, Some(a))
        }
        None => (op, None),
    };
    let f = match (name, arg) {
        ("START_TIME", None) => Field::StartTime,
        ("REQ", Some(a)) => match a.to_ascii_lowercase().as_str() {
            ":method" => Field::Method,
            ":path" => Field::Path,
            ":authority" | "host" => Field::Authority,
            _ if a.starts_with(':') => {
                return Err(format!("`%{op}%`: pseudo-header `{a}` is not supported"))
            }
            _ => Field::ReqHeader(slots.req.index(a)?),
        },
        ("RESP", Some(a)) => Field::RespHeader(slots.resp.index(a)?),
        ("PROTOCOL", None) => Field::Protocol,
        ("RESPONSE_CODE", None) => Field::ResponseCode,
        ("RESPONSE_FLAGS", None) => Field::ResponseFlags,
        ("BYTES_RECEIVED", None) => Field::BytesReceived,
        ("BYTES_SENT", None) => Field::BytesSent,
        ("DURATION", None) => Field::Duration,
        ("UPSTREAM_HOST", None) => Field::UpstreamHost,
        ("UPSTREAM_CLUSTER", None) => Field::UpstreamCluster,
        ("UPSTREAM_SERVICE_TIME", None) => Field::UpstreamServiceTime,
        ("ROUTE_NAME", None) => Field::RouteName,
        ("DOWNSTREAM_REMOTE_ADDRESS", None) => Field::DownstreamRemoteAddress,
        ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", None) => {
            Field::DownstreamRemoteAddressWithoutPort
        }
        ("DOWNSTREAM_DIRECT_REMOTE_ADDRESS", None) => Field::DownstreamDirectRemoteAddress,
        ("DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", None) => {
            Field::DownstreamDirectRemoteAddressWithoutPort
        }
        ("TRACE_ID", None) => Field::TraceId,
        ("UPSTREAM_TLS_VERSION", None) => Field::UpstreamTlsVersion,
        ("DOWNSTREAM_TLS_VERSION", None) => Field::DownstreamTlsVersion,
        ("DOWNSTREAM_TLS_CIPHER", None) => Field::DownstreamTlsCipher,
        ("REQUESTED_SERVER_NAME", None) => Field::RequestedServerName,
        ("DOWNSTREAM_PEER_SUBJECT", None) => Field::DownstreamPeerSubject,
        ("DOWNSTREAM_PEER_URI_SAN", None) => Field::DownstreamPeerUriSan,
        ("GRPC_STATUS", None | Some("CAMEL_STRING")) => {
            Field::GrpcStatus(GrpcStatusFormat::CamelString)
        }
        ("GRPC_STATUS", Some("SNAKE_STRING")) => Field::GrpcStatus(GrpcStatusFormat::SnakeString),
        ("GRPC_STATUS", Some("NUMBER")) => Field::GrpcStatus(GrpcStatusFormat::Number),
        ("GRPC_STATUS", Some(a)) => {
            return Err(format!(
                "`%{op}%`: `{a}` is not a gRPC status format (CAMEL_STRING, SNAKE_STRING, NUMBER)"
            ))
        }
        _ => {
            return Err(format!(
                "unknown access log operator `%{op}%`; known: {}",
                OPERATORS
                    .iter()
                    .map(|o| format!("%{o}%"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        }
    };
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_strings_compile_to_parts_and_share_header_slots() {
        let (mut rq, mut rs) = (Vec::new(), Vec::new());
        let f = compile(
            "a %REQ(X-A)% %RESP(x-b)% %REQ(x-a)% 100%%",
            &mut rq,
            &mut rs,
        )
        .unwrap();
        assert_eq!(
            f,
            Format::Text(vec![
                Part::Lit("a ".into()),
                Part::Field(Field::ReqHeader(0)),
                Part::Lit(" ".into()),
                Part::Field(Field::RespHeader(0)),
                Part::Lit(" ".into()),
                Part::Field(Field::ReqHeader(0)),
                Part::Lit(" 100%".into()),
            ])
        );
        assert_eq!(rq, vec![HeaderName::from_static("x-a")]);
        assert_eq!(rs, vec![HeaderName::from_static("x-b")]);
        assert_eq!(compile(" json ", &mut rq, &mut rs), Ok(Format::Json));
        assert_eq!(
            compile_text("json", &mut rq, &mut rs),
            Ok(vec![Part::Lit("json".into())]),
            "a header value `json` is text"
        );
        assert_eq!(
            compile_text(
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
                &mut rq,
                &mut rs
            ),
            Ok(vec![
                Part::Field(Field::DownstreamRemoteAddressWithoutPort),
                Part::Field(Field::DownstreamDirectRemoteAddress),
            ])
        );
        assert!(compile(DEFAULT_FORMAT, &mut rq, &mut rs).is_ok());
        assert_eq!(
            compile_text(
                "%GRPC_STATUS%%GRPC_STATUS(SNAKE_STRING)%%GRPC_STATUS(NUMBER)%",
                &mut rq,
                &mut rs
            ),
            Ok(vec![
                Part::Field(Field::GrpcStatus(GrpcStatusFormat::CamelString)),
                Part::Field(Field::GrpcStatus(GrpcStatusFormat::SnakeString)),
                Part::Field(Field::GrpcStatus(GrpcStatusFormat::Number)),
            ])
        );
    }

    #[test]
    fn bad_format_strings_are_rejected() {
        for (bad, want) in [
            ("%NOPE%", "unknown access log operator `%NOPE%`"),
            ("%REQ(:SCHEME)%", "pseudo-header"),
            ("%START_TIME", "unterminated"),
            ("%REQ(X-A):10%", "length limit"),
            ("%REQ(bad header)%", "not a valid header name"),
            ("%DURATION(1)%", "unknown"),
            ("%GRPC_STATUS(NAME)%", "not a gRPC status format"),
        ] {
            let e = compile(bad, &mut Vec::new(), &mut Vec::new()).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
