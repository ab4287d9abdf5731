//! The HTTP request path, top to bottom:
//! snapshot → listener → virtual host → route → action (direct / redirect / forward) →
//! endpoint pick → upstream call with timeout → response → stats.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::cluster::ActiveRequest;
use crate::headers;
use crate::pool::{Lease, SendError};
use crate::router::{Action, Forward, Route};
use crate::server::Shared;
use crate::snapshot::ListenerKind;
use crate::stats::ListenerStats;

/// Response body: a streamed upstream body, or a small local one.
pub type RespBody = Either<Upstream<Incoming>, Full<Bytes>>;

/// Per-connection context, built once at accept.
#[derive(Debug)]
pub struct Conn {
    /// Process-wide state (snapshot, stats).
    pub shared: Arc<Shared>,
    /// Local address the connection was accepted on (selects the listener in the snapshot).
    pub local: SocketAddr,
    /// The client's IP as a header value, for `x-forwarded-for`.
    pub peer_ip: HeaderValue,
}

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
        }
    }

    fn response(self) -> Response<RespBody> {
        let (status, body) = self.parts();
        text(status, Bytes::from_static(body.as_bytes()))
    }
}

fn text(status: StatusCode, body: Bytes) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves one request on an HTTP listener.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Result<Response<RespBody>, Infallible> {
    // One snapshot per request: a reload mid-request does not change what this request sees.
    let snap = conn.shared.snapshot.load_full();
    let Some(listener) = snap.listeners.get(&conn.local) else {
        return Ok(LocalReply::ListenerGone.response());
    };
    let ListenerKind::Http(router) = &listener.kind else {
        return Ok(LocalReply::ListenerGone.response());
    };
    let stats = &listener.stats;
    stats.downstream_rq_total.inc();
    stats.downstream_rq_active.inc();
    let _active = ActiveGauge(stats);

    let mut req = req;
    let request_id = headers::ensure_request_id(req.headers_mut());
    let host = headers::authority(&req).unwrap_or_default();
    let route = router
        .virtual_host(&host)
        .and_then(|vh| vh.route(req.uri(), req.headers()));
    let mut resp = match route {
        None => {
            stats.no_route.inc();
            LocalReply::NoRoute.response()
        }
        Some(route) => match &route.action {
            Action::Direct { status, body } => {
                let mut r = text(*status, body.clone());
                if body.is_empty() {
                    r.headers_mut().remove(CONTENT_TYPE);
                }
                r
            }
            Action::Redirect(rd) => {
                let loc = rd.location(route, "http", &host, req.uri());
                let mut r = text(rd.code(), Bytes::new());
                r.headers_mut().remove(CONTENT_TYPE);
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    r.headers_mut().insert(LOCATION, v);
                }
                r
            }
            Action::Forward(fwd) => match forward(req, fwd, route, &conn, host).await {
                Ok(r) => r,
                Err(local) => local.response(),
            },
        },
    };
    stats.downstream_rq_xx.record(resp.status().as_u16());
    resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
    Ok(resp)
}

struct ActiveGauge<'a>(&'a ListenerStats);

impl Drop for ActiveGauge<'_> {
    fn drop(&mut self) {
        self.0.downstream_rq_active.dec();
    }
}

async fn forward(
    req: Request<Incoming>,
    fwd: &Forward,
    route: &Route,
    conn: &Conn,
    host: String,
) -> Result<Response<RespBody>, LocalReply> {
    let cluster = &fwd.cluster;
    let cs = &cluster.stats;
    cs.upstream_rq_total.inc();
    let Some(idx) = cluster.pick() else {
        cs.upstream_rq_no_healthy.inc();
        return Err(LocalReply::NoHealthyUpstream);
    };
    let ep = &cluster.endpoints[idx];

    let (mut parts, body) = req.into_parts();
    let pq = match fwd
        .prefix_rewrite
        .as_deref()
        .and_then(|rw| route.rewrite_path(&parts.uri, rw))
    {
        Some(p) => PathAndQuery::try_from(p).map_err(|_| LocalReply::NoRoute)?,
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    // Origin-form request target: the upstream gets `GET /path?q HTTP/1.1` plus Host.
    parts.uri = Uri::from(pq);
    headers::strip_hop_by_hop(&mut parts.headers);
    match &fwd.host_rewrite {
        Some(h) => {
            parts.headers.insert(HOST, h.clone());
        }
        None if parts.version == Version::HTTP_2 || !parts.headers.contains_key(HOST) => {
            // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs it as Host.
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(HOST, v);
            }
        }
        None => {}
    }
    headers::append_forwarded(&mut parts.headers, &conn.peer_ip);
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);

    let active = ActiveRequest::start(cluster, idx);
    let call = ep.pool.send(
        &ep.address,
        ep.resolved,
        cluster.connect_timeout,
        upstream_req,
    );
    let result = match fwd.timeout {
        Some(t) => match tokio::time::timeout(t, call).await {
            Ok(r) => r,
            Err(_) => {
                cs.upstream_rq_timeout.inc();
                return Err(LocalReply::UpstreamTimeout);
            }
        },
        None => call.await,
    };
    match result {
        Ok((resp, lease)) => {
            cs.upstream_rq_xx.record(resp.status().as_u16());
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                Either::Left(Upstream {
                    inner: body,
                    lease: Some(lease),
                    _active: active,
                }),
            ))
        }
        Err(SendError::Connect(e)) => {
            cs.upstream_cx_connect_fail.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream connect error");
            Err(LocalReply::ConnectFailure)
        }
        Err(SendError::Reset(e)) => {
            cs.upstream_rq_reset.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream reset");
            Err(LocalReply::UpstreamReset)
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body that keeps its endpoint counted as busy until it ends, and
    /// returns its connection to the pool if it was read to the end.
    pub struct Upstream<B: Body> {
        #[pin]
        inner: B,
        lease: Option<Lease>,
        _active: ActiveRequest,
    }

    impl<B: Body> PinnedDrop for Upstream<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.inner.is_end_stream() {
                if let Some(lease) = this.lease.take() {
                    lease.release();
                }
            }
        }
    }
}

impl<B: Body> Body for Upstream<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
