//! Replies the proxy makes by itself: why (each cause has a status, a short body naming it, and
//! an Envoy response flag) and the small responses that carry them. A gRPC client gets them as
//! trailers-only responses (HTTP 200, `grpc-status`, `grpc-message`, no body), as Envoy's
//! `Http::Utility::sendLocalReply` sends them: the status from Envoy's HTTP → gRPC mapping
//! ([`crate::grpc::from_http`]), except a route timeout, which is `DEADLINE_EXCEEDED` as in
//! Envoy's router.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use http_body_util::{Either, Full};

use super::RespBody;
use crate::message::Response;
use crate::stream_info::Flags;

/// `x-tern-overloaded`, set on replies refused by a circuit breaker.
pub const X_OVERLOADED: http::HeaderName = http::HeaderName::from_static("x-tern-overloaded");

/// Why the proxy answered by itself; each maps to a status and a short body naming the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReply {
    /// No virtual host or route matched (404).
    NoRoute,
    /// The cluster has no endpoint (503).
    NoHealthyUpstream,
    /// Connecting to the endpoint failed or timed out (503).
    ConnectFailure,
    /// The TLS handshake with the endpoint failed: its certificate did not verify, or the
    /// protocol (503, flag `UF` as in Envoy).
    UpstreamTlsError,
    /// The upstream reset the stream before sending response headers (503, `UR`).
    UpstreamReset,
    /// The upstream connection ended before response headers (503, `UC`).
    UpstreamConnectionTermination,
    /// No response headers within the route timeout (504).
    UpstreamTimeout,
    /// The listener was removed by a reload while this connection was open (503).
    ListenerGone,
    /// A circuit breaker refused the request (503, `x-tern-overloaded: true`).
    Overflow,
    /// A local rate limit refused the request (429 with `retry-after`, in seconds).
    RateLimited(u64),
    /// Fault injection answered with this status.
    FaultAbort(StatusCode),
    /// Fault injection answered with this gRPC status (HTTP 200; plain for other requests).
    FaultAbortGrpc(u8),
    /// The request body is malformed (400, `DPE`).
    BadRequestBody,
    /// The client ended its connection before the request body did (400, `DC`; rarely seen).
    RequestAborted,
    /// The request body got no data for the stream idle timeout (408, `SI`).
    RequestIdleTimeout,
    /// The request was not complete within the listener's `request_timeout` (408).
    RequestTimeout,
    /// Host or `:authority` missing, repeated or not `host[:port]` (400, `DPE`).
    InvalidHost,
    /// An upgrade type the listener and route do not enable (403, connection closed).
    UpgradeRejected,
    /// An upgrade request with a body (400, `DPE`).
    UpgradeWithBody,
    /// The upstream response's framing is broken or ambiguous (502, `UPE`).
    UpstreamProtocolError,
    /// Memory is over the overload limit (503, flag `OM`).
    Overloaded,
    /// More request headers than `max_headers_count` (431).
    TooManyHeaders,
}

impl LocalReply {
    /// Status and body.
    pub fn parts(self) -> (StatusCode, &'static str) {
        match self {
            LocalReply::NoRoute => (StatusCode::NOT_FOUND, "no route\n"),
            LocalReply::NoHealthyUpstream => {
                (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n")
            }
            LocalReply::ConnectFailure => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
            }
            LocalReply::UpstreamTlsError => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream TLS error\n")
            }
            LocalReply::UpstreamReset => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream reset before response\n",
            ),
            LocalReply::UpstreamConnectionTermination => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connection closed before response\n",
            ),
            LocalReply::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timeout\n"),
            LocalReply::ListenerGone => (StatusCode::SERVICE_UNAVAILABLE, "listener draining\n"),
            LocalReply::Overflow => (StatusCode::SERVICE_UNAVAILABLE, "upstream overflow\n"),
            LocalReply::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate limited\n"),
            LocalReply::FaultAbort(s) => (s, "fault filter abort\n"),
            LocalReply::FaultAbortGrpc(_) => (StatusCode::OK, "fault filter abort\n"),
            LocalReply::BadRequestBody => (StatusCode::BAD_REQUEST, "bad request body\n"),
            LocalReply::RequestAborted => (StatusCode::BAD_REQUEST, "request body aborted\n"),
            LocalReply::RequestIdleTimeout => (StatusCode::REQUEST_TIMEOUT, "stream timeout\n"),
            LocalReply::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request timeout\n"),
            LocalReply::InvalidHost => (StatusCode::BAD_REQUEST, "invalid host\n"),
            LocalReply::UpgradeRejected => (StatusCode::FORBIDDEN, "upgrade not allowed\n"),
            LocalReply::UpgradeWithBody => (StatusCode::BAD_REQUEST, "upgrade with a body\n"),
            LocalReply::UpstreamProtocolError => {
                (StatusCode::BAD_GATEWAY, "upstream protocol error\n")
            }
            LocalReply::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n"),
            LocalReply::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers\n",
            ),
        }
    }

    /// The access log response flag for this reply.
    pub fn flag(self) -> Flags {
        match self {
            LocalReply::NoRoute => Flags::NR,
            LocalReply::NoHealthyUpstream => Flags::UH,
            LocalReply::ConnectFailure | LocalReply::UpstreamTlsError => Flags::UF,
            LocalReply::UpstreamReset => Flags::UR,
            LocalReply::UpstreamConnectionTermination => Flags::UC,
            LocalReply::UpstreamTimeout => Flags::UT,
            LocalReply::Overflow => Flags::UO,
            LocalReply::RateLimited(_) => Flags::RL,
            LocalReply::FaultAbort(_) | LocalReply::FaultAbortGrpc(_) => Flags::FI,
            LocalReply::BadRequestBody | LocalReply::InvalidHost | LocalReply::UpgradeWithBody => {
                Flags::DPE
            }
            LocalReply::RequestAborted => Flags::DC,
            LocalReply::RequestIdleTimeout => Flags::SI,
            LocalReply::UpstreamProtocolError => Flags::UPE,
            LocalReply::Overloaded => Flags::OM,
            LocalReply::ListenerGone
            | LocalReply::RequestTimeout
            | LocalReply::UpgradeRejected
            | LocalReply::TooManyHeaders => Flags::default(),
        }
    }

    /// The gRPC status this reply stands for: `DEADLINE_EXCEEDED` for a route timeout (Envoy's
    /// router), else Envoy's mapping of its HTTP status.
    pub fn grpc_status(self) -> u8 {
        match self {
            LocalReply::UpstreamTimeout => crate::grpc::DEADLINE_EXCEEDED,
            LocalReply::FaultAbortGrpc(code) => code,
            _ => crate::grpc::from_http(self.parts().0.as_u16()),
        }
    }

    /// The reply sent to the client: plain text, or trailers-only for a gRPC request.
    pub fn reply(self, grpc: bool) -> Response<RespBody> {
        if !grpc {
            return self.response();
        }
        let mut r = trailers_only(self.grpc_status(), self.parts().1);
        self.extras(&mut r);
        r
    }

    /// The reply sent to the client.
    pub fn response(self) -> Response<RespBody> {
        let (status, body) = self.parts();
        let mut r = text(status, Bytes::from_static(body.as_bytes()));
        self.extras(&mut r);
        r
    }

    /// The headers this reply adds to either form.
    fn extras(self, r: &mut Response<RespBody>) {
        match self {
            LocalReply::Overflow => {
                r.headers_mut()
                    .insert(X_OVERLOADED, HeaderValue::from_static("true"));
            }
            LocalReply::RateLimited(secs) => {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            // The connection is not used again: the bytes after a refused upgrade or an
            // unreadable request could be anything (Envoy closes it too).
            LocalReply::UpgradeRejected
            | LocalReply::UpgradeWithBody
            | LocalReply::BadRequestBody
            | LocalReply::RequestAborted
            | LocalReply::RequestIdleTimeout
            | LocalReply::RequestTimeout => {
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
    }
}

/// A gRPC trailers-only response: HTTP 200, `content-type: application/grpc`, `grpc-status`,
/// `grpc-message` (percent-encoded `message`, left out when empty), no body.
pub fn trailers_only(code: u8, message: &str) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(crate::grpc::GRPC_STATUS, HeaderValue::from(u16::from(code)));
    let message = crate::grpc::message(message);
    if !message.is_empty() {
        h.insert(crate::grpc::GRPC_MESSAGE, message);
    }
    r
}

/// A small plain-text response.
pub fn text(status: StatusCode, body: Bytes) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
