//! Replies the proxy makes by itself: why (each cause has a status, a short body naming it, and
//! an Envoy response flag) and the small responses that carry them.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::RespBody;
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
    /// The upstream closed or reset before sending response headers (503).
    UpstreamReset,
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
    /// The request body could not be read (400).
    BadRequestBody,
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
            LocalReply::UpstreamReset => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream reset before response\n",
            ),
            LocalReply::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timeout\n"),
            LocalReply::ListenerGone => (StatusCode::SERVICE_UNAVAILABLE, "listener draining\n"),
            LocalReply::Overflow => (StatusCode::SERVICE_UNAVAILABLE, "upstream overflow\n"),
            LocalReply::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate limited\n"),
            LocalReply::FaultAbort(s) => (s, "fault filter abort\n"),
            LocalReply::BadRequestBody => (StatusCode::BAD_REQUEST, "bad request body\n"),
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
            LocalReply::ConnectFailure => Flags::UF,
            LocalReply::UpstreamReset => Flags::UR,
            LocalReply::UpstreamTimeout => Flags::UT,
            LocalReply::Overflow => Flags::UO,
            LocalReply::RateLimited(_) => Flags::RL,
            LocalReply::FaultAbort(_) => Flags::FI,
            LocalReply::Overloaded => Flags::OM,
            LocalReply::ListenerGone | LocalReply::BadRequestBody | LocalReply::TooManyHeaders => {
                Flags::default()
            }
        }
    }

    /// The reply sent to the client.
    pub fn response(self) -> Response<RespBody> {
        let (status, body) = self.parts();
        let mut r = text(status, Bytes::from_static(body.as_bytes()));
        match self {
            LocalReply::Overflow => {
                r.headers_mut()
                    .insert(X_OVERLOADED, HeaderValue::from_static("true"));
            }
            LocalReply::RateLimited(secs) => {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        r
    }
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
