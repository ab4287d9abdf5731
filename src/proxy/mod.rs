//! The HTTP request path, one module per phase, top to bottom:
//!
//! 1. entry (here): snapshot and listener, request id, the request record, the authority (one
//!    valid Host or the target's; 400 otherwise), virtual host and route, status stats, and the
//!    record's hand-over to whatever still moves bytes;
//! 2. [`route`]: fault injection → local rate limit → the action (direct response, redirect,
//!    forward);
//! 3. [`forward`]: cluster (weighted pick, `max_requests`) → the upstream head (rewrites,
//!    forwarding and trace headers) → tries (endpoint pick, pool, per-try and route timeouts) with
//!    the retry decisions of [`crate::router::retry`]; [`upgrade`] for protocol upgrades;
//! 4. [`response`]: the upstream head's framing checked, its body streamed back (idle timeout,
//!    pool return once both directions are complete, latency, record).
//!
//! Replies the proxy makes itself are [`LocalReply`]s. One [`Ctx`] per request carries what the
//! phases share instead of long argument lists.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Version};
use http_body_util::{Either, Full};
use hyper::body::Body;

use crate::headers;
use crate::message::{Request, Response};
use crate::snapshot::{ListenerKind, ListenerRt};
use crate::state::Shared;
use crate::stats::ListenerStats;
use crate::stream_info::{Flags, Recorder, StreamInfo};
use crate::timer::LazyTimer;
pub use crate::upstream::body::ReqBody;

mod forward;
mod header_rules;
mod local_reply;
mod response;
mod route;
pub mod upgrade;

pub use local_reply::LocalReply;
pub use response::Upstream;

/// Response body: a streamed upstream body, or a small local one.
///
/// The upstream body is boxed once when made: the response is moved by value through every
/// phase up to the connection, and each move copied its 240 bytes (an allocation within
/// malloc's thread cache costs less than the copies).
pub type RespBody = Either<Pin<Box<Upstream>>, Full<Bytes>>;

/// Per-connection context, built once at accept.
#[derive(Debug)]
pub struct Conn {
    /// Process-wide state (snapshot, stats).
    pub shared: Arc<Shared>,
    /// Local address the connection was accepted on (selects the listener in the snapshot).
    pub local: SocketAddr,
    /// The connection's remote address: the PROXY protocol header's source when the listener
    /// reads one, else the peer (Envoy's downstream remote address before `x-forwarded-for`).
    pub peer: SocketAddr,
    /// Its IP as a header value, for `x-forwarded-for`.
    pub peer_ip: HeaderValue,
    /// The connection's peer, whatever a PROXY header said (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`).
    pub direct: SocketAddr,
    /// When the last request started ([`crate::timer::now_ms`]), for the idle timeout
    /// (HTTP/2: the HTTP/1 engine keeps its own).
    pub last_request_ms: AtomicU64,
    /// Requests started on this connection (HTTP/2, for the header timeout).
    pub requests: AtomicU32,
    /// Deadlines of HTTP/1 requests, checked when the connection's task polls them.
    pub timer: LazyTimer,
    /// What the TLS handshake established (`None`: plain TCP).
    pub tls: Option<Arc<crate::tls::server::TlsInfo>>,
}

impl Conn {
    /// Takes what the TLS handshake established. Called before the connection serves its first
    /// request, while nothing else holds it.
    pub fn secured(conn: &mut Arc<Conn>, info: Arc<crate::tls::server::TlsInfo>) {
        if let Some(c) = Arc::get_mut(conn) {
            c.tls = Some(info);
        }
    }

    /// Takes the client address a PROXY protocol header gave (`None`: the peer stands). Called
    /// before the connection serves its first request, while nothing else holds it.
    pub fn proxied(conn: &mut Arc<Conn>, source: Option<SocketAddr>) {
        if let (Some(c), Some(a)) = (Arc::get_mut(conn), source) {
            c.peer = a;
            c.peer_ip = HeaderValue::from_str(&a.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown"));
        }
    }
}

/// What the phases of one request share.
pub(crate) struct Ctx<'a> {
    /// The connection.
    conn: &'a Conn,
    /// The listener, from the request's snapshot.
    listener: &'a ListenerRt,
    /// The request's authority, as routed (a valid `host[:port]`, or empty).
    host: HeaderValue,
    /// The trusted client address (`x-forwarded-for` with trusted hops, else the remote address).
    client: SocketAddr,
    /// What response header rules show of the request, when they show any of it.
    captured: Option<Box<crate::router::header_rules::Captured>>,
    /// The picked weighted cluster's header rules, applied after the route's.
    cluster_rules: Option<Arc<crate::router::ClusterRules>>,
    /// When the request started.
    start: Instant,
    /// The request's record, when the listener has observers.
    rec: Option<Recorder>,
    /// The record went to an upgraded connection, which finishes it when it closes.
    tunnel: bool,
    /// The request is gRPC: the proxy's own replies are trailers-only.
    grpc: bool,
    /// The HTTP status a reply the proxy made stands for, when it went out as gRPC (HTTP 200):
    /// stats and the record show this one.
    local_status: Option<u16>,
}

impl Ctx<'_> {
    /// The request's authority, as routed.
    fn host(&self) -> &str {
        self.host.to_str().unwrap_or_default()
    }

    /// Changes the record, if there is one (the closure runs only then).
    #[inline]
    fn record(&self, f: impl FnOnce(&mut StreamInfo)) {
        if let Some(r) = &self.rec {
            r.update(f);
        }
    }

    /// Adds a response flag to the record.
    #[inline]
    fn flag(&self, f: Flags) {
        self.record(|i| i.flags.set(f));
    }
}

/// Serves one request on an HTTP listener; `start` is when it started (its head was read).
///
/// An HTTP/1 connection's future holds this one (no box per request), so it is kept small:
/// `req` and `conn` are the async block's own (an `async fn` would hold its arguments twice),
/// and the phases below add little of their own.
// Not an `async fn`: that would hold `req` twice.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    mut req: Request<ReqBody>,
    conn: Arc<Conn>,
    start: Instant,
) -> impl std::future::Future<Output = Response<RespBody>> + Send {
    async move {
        // One snapshot per request: a reload mid-request does not change what this request sees.
        let snap = conn.shared.snapshot.load_full();
        let Some(listener) = snap.listeners.get(&conn.local) else {
            return LocalReply::ListenerGone.reply(crate::grpc::is_grpc(req.headers()));
        };
        let ListenerKind::Http(router) = &listener.kind else {
            return LocalReply::ListenerGone.reply(crate::grpc::is_grpc(req.headers()));
        };
        let stats = &listener.stats;
        // HTTP/2's idle and header timeouts read these; Tern's HTTP/1 engine keeps its own.
        if req.version() == Version::HTTP_2 {
            conn.last_request_ms
                .store(crate::timer::ms_at(start), Relaxed);
            conn.requests.fetch_add(1, Relaxed);
        }
        stats.downstream_rq_total.inc();
        stats.downstream_rq_active.inc();
        let _active = ActiveGauge(stats);

        let request_id =
            headers::ensure_request_id(req.headers_mut(), listener.preserve_request_id);
        let host = headers::authority(&req);
        let client =
            headers::trusted_client(req.headers(), listener.forwarding.trusted_hops, conn.peer);
        // Without observers this stays `None`: no record, no header copies.
        let rec = listener.observers.as_ref().map(|obs| {
            let shown = host.unwrap_or_default();
            let mut info = StreamInfo::begin(obs, &req, shown, (client, conn.direct), start);
            info.downstream_tls = conn.tls.clone();
            Recorder::new(obs.clone(), info)
        });
        let bad_host = host.is_err();
        let mut cx = Ctx {
            conn: &conn,
            listener,
            host: host.map_or(HeaderValue::from_static(""), |a| authority_value(&req, a)),
            client,
            captured: None,
            cluster_rules: None,
            start,
            rec,
            tunnel: false,
            grpc: crate::grpc::is_grpc(req.headers()),
            local_status: None,
        };
        // Overloaded (memory over its limit): no route, a 503 with flag OM.
        let overloaded = conn.shared.overload.overloaded();
        // A request without one valid authority is refused before routing: routed by one Host and
        // forwarded with another, it would reach a virtual host it was not routed to.
        let vhost = (!bad_host && !overloaded)
            .then(|| router.virtual_host(host.unwrap_or_default()))
            .flatten();
        let route = vhost
            .and_then(|vh| vh.route(req.method(), req.uri(), req.headers(), conn.tls.is_some()));
        let rules = match route {
            Some(r) => r.header_rules.as_deref(),
            None => vhost.map_or(router.header_rules.as_deref(), |v| {
                v.header_rules.as_deref()
            }),
        };
        if let Some(r) = rules {
            cx.captured = r.capture(&req);
        }
        let route_stats = route.map(|r| {
            r.stats.rq_total.inc();
            &*r.stats
        });
        let served = match route {
            None if overloaded => {
                stats.downstream_rq_overload_close.inc();
                Err(LocalReply::Overloaded)
            }
            None if bad_host => {
                stats.downstream_cx_protocol_error.inc();
                Err(LocalReply::InvalidHost)
            }
            None => {
                stats.no_route.inc();
                Err(LocalReply::NoRoute)
            }
            Some(route) => {
                cx.record(|i| i.route_name = Some(route.name.clone()));
                match route::serve(&req, route, &mut cx) {
                    route::Step::Forward(fwd) => forward::forward(req, fwd, route, &mut cx).await,
                    // Boxed: rare, and its future would otherwise enlarge every request's.
                    route::Step::Faulted(fault, d) => {
                        Box::pin(route::faulted(req, route, &mut cx, fault, d)).await
                    }
                    route::Step::Done(r) => r,
                }
            }
        };
        let mut resp = match served {
            Ok(r) => r,
            Err(local) => {
                cx.flag(local.flag());
                if cx.grpc {
                    cx.local_status = Some(local.parts().0.as_u16());
                }
                local.reply(cx.grpc)
            }
        };
        // A reply sent to a gRPC client as HTTP 200 counts as the status it stands for.
        let status = cx.local_status.unwrap_or_else(|| resp.status().as_u16());
        stats.downstream_rq_xx.record(status);
        if let Some(rs) = route_stats {
            rs.rq_xx.record(status);
        }
        resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
        if let Some(r) = rules {
            header_rules::response(&mut resp, r, route, &cx);
        }
        if let Some(r) = &cx.rec {
            r.update(|i| i.response(r.observers(), status, resp.headers()));
        }
        match resp.body_mut() {
            // The upstream body records the time and ends the response in the record.
            Either::Left(up) => up.as_mut().project().fin.rec = cx.rec.take(),
            Either::Right(local) => {
                let took = start.elapsed();
                stats.downstream_rq_time.record(took);
                if let Some(rs) = route_stats {
                    rs.rq_time.record(took);
                }
                match cx.rec.take() {
                    // An upgraded connection's record ends with the tunnel, with the bytes each way.
                    Some(_) if cx.tunnel => {}
                    Some(r) => {
                        r.response_done(local.size_hint().exact().unwrap_or(0), Flags::default())
                    }
                    None => {}
                }
            }
        }
        resp
    }
}

/// The authority `a` of `req` as a header value: the Host field itself when it came from there
/// (its bytes are shared, not copied), else a copy.
fn authority_value<B>(req: &Request<B>, a: &str) -> HeaderValue {
    if req.uri().authority().is_none() {
        if let Some(h) = req.headers().get(http::header::HOST) {
            return h.to_owned();
        }
    }
    HeaderValue::from_str(a).unwrap_or(HeaderValue::from_static(""))
}

struct ActiveGauge<'a>(&'a ListenerStats);

impl Drop for ActiveGauge<'_> {
    fn drop(&mut self) {
        self.0.downstream_rq_active.dec();
    }
}
