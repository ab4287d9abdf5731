//! The HTTP request path, top to bottom:
//! snapshot → listener → virtual host → route → fault → rate limit → action (direct / redirect /
//! forward) → cluster (weighted pick, `max_requests`) → endpoint (balancer, health, ejection) →
//! upstream try (pool, `max_connections`/`max_pending_requests`, per-try and route timeouts) →
//! retry decision (policy, budget, back-off, another endpoint) → response → stats.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::{Entry, Flags, Pending};
use crate::cluster::{ActiveRequest, Cluster};
use crate::headers;
use crate::outlier::{self, Outcome};
use crate::pool::{Counted, Lease, SendError, Target, UpBody};
use crate::router::{Action, Forward, Route};
use crate::server::Shared;
use crate::snapshot::{ListenerKind, ListenerRt};
use crate::stats::{ClusterStats, ListenerStats};
use crate::timer::{Deadline, Elapsed, LazyTimer, Timed};

/// Response body: a streamed upstream body, or a small local one.
pub type RespBody = Either<Upstream<Incoming>, Full<Bytes>>;

/// `x-tern-overloaded`, set on replies refused by a circuit breaker.
pub const X_OVERLOADED: http::HeaderName = http::HeaderName::from_static("x-tern-overloaded");

/// Per-connection context, built once at accept.
#[derive(Debug)]
pub struct Conn {
    /// Process-wide state (snapshot, stats).
    pub shared: Arc<Shared>,
    /// Local address the connection was accepted on (selects the listener in the snapshot).
    pub local: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as a header value, for `x-forwarded-for`.
    pub peer_ip: HeaderValue,
    /// When the last request started ([`crate::outlier::now_ms`]), for the idle timeout.
    pub last_request_ms: std::sync::atomic::AtomicU64,
    /// Requests started on this connection.
    pub requests: std::sync::atomic::AtomicU32,
    /// Deadlines of HTTP/1 requests, checked when the connection's task polls them.
    pub timer: crate::timer::LazyTimer,
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
    /// A circuit breaker refused the request (503, `x-tern-overloaded: true`).
    Overflow,
    /// A local rate limit refused the request (429 with `retry-after`, in seconds).
    RateLimited(u64),
    /// Fault injection answered with this status.
    FaultAbort(StatusCode),
    /// The request body could not be read (400).
    BadRequestBody,
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
            LocalReply::ListenerGone | LocalReply::BadRequestBody => Flags::default(),
        }
    }

    fn response(self) -> Response<RespBody> {
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
    let start = Instant::now();
    conn.last_request_ms
        .store(outlier::ms_at(start), std::sync::atomic::Ordering::Relaxed);
    conn.requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    stats.downstream_rq_total.inc();
    stats.downstream_rq_active.inc();
    let _active = ActiveGauge(stats);

    let mut req = req;
    let request_id = headers::ensure_request_id(req.headers_mut(), listener.preserve_request_id);
    let host = headers::authority(&req).unwrap_or_default();
    // Without an access log this stays empty: no entry, no header copies.
    let mut pending = Pending::default();
    if let Some(al) = &listener.access_log {
        let e = Entry::begin(al, &req, &host, conn.peer);
        pending.0 = Some((al.clone(), Box::new(e), start));
    }
    let mut tx = Tx {
        start,
        log: pending.0.is_some() || listener.otlp.is_some(),
        access_log: pending.0.is_some(),
        ..Tx::new(start)
    };
    let route = router
        .virtual_host(&host)
        .and_then(|vh| vh.route(req.uri(), req.headers()));
    let route_stats = route.map(|r| {
        r.stats.rq_total.inc();
        &*r.stats
    });
    let mut resp = match route {
        None => {
            stats.no_route.inc();
            tx.flags.set(Flags::NR);
            LocalReply::NoRoute.response()
        }
        Some(route) => {
            if tx.log {
                tx.route = Some(route.name.clone());
            }
            match serve_route(req, route, &conn, host, listener, &mut tx).await {
                Ok(r) => r,
                Err(local) => {
                    tx.flags.set(local.flag());
                    local.response()
                }
            }
        }
    };
    let status = resp.status().as_u16();
    stats.downstream_rq_xx.record(status);
    if let Some(rs) = route_stats {
        rs.rq_xx.record(status);
    }
    resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
    // The span copies the details before the access log entry takes them out of `tx`.
    let span = tx.span.take().map(|mut s| {
        s.response(status, &tx);
        s
    });
    if let Some((al, e, _)) = pending.0.as_mut() {
        e.response(al, status, resp.headers());
        e.flags = tx.flags;
        e.upstream_host = tx.upstream_host.take();
        e.upstream_cluster = tx.cluster.take();
        e.upstream_service_time = tx.service_time;
        e.route_name = tx.route.take();
        if tx.trace_id.is_some() {
            e.trace_id = tx.trace_id;
        }
        if let Some(n) = tx.bytes_received {
            e.bytes_received = n;
        }
        // A streamed body that went up before the try failed still counts.
        if let (Some(c), Either::Right(_)) = (&tx.rx_count, resp.body()) {
            e.bytes_received = c.load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    match resp.body_mut() {
        // The upstream body records the time and writes the log line when it ends.
        Either::Left(up) => {
            up.fin.log = std::mem::take(&mut pending);
            up.fin.span = span;
        }
        Either::Right(local) => {
            let took = start.elapsed();
            stats.downstream_rq_time.record(took);
            if let Some(rs) = route_stats {
                rs.rq_time.record(took);
            }
            match tx.tunnel.take() {
                // An upgraded connection is logged when it closes, with the bytes each way.
                Some(closed) if status == 101 => {
                    conn.shared.tunnels.spawn(async move {
                        let (rx, sent) = closed.await.unwrap_or((0, 0));
                        if let Some((_, e, _)) = pending.0.as_mut() {
                            e.bytes_received = rx;
                        }
                        pending.finish(sent, Flags::default());
                        if let Some(s) = span {
                            s.end(Flags::default());
                        }
                    });
                }
                _ => {
                    let n = local.size_hint().exact().unwrap_or(0);
                    pending.finish(n, Flags::default());
                    if let Some(s) = span {
                        s.end(Flags::default());
                    }
                }
            }
        }
    }
    Ok(resp)
}

/// What happened to one request along the way, for stats and the access log. The optional
/// parts are only filled when the listener logs.
#[derive(Debug)]
pub struct Tx {
    /// When the request started.
    pub start: Instant,
    /// Whether the listener has an access log or exports spans (fill in the details below).
    pub log: bool,
    /// Whether the listener has an access log (byte counts are only for it).
    pub access_log: bool,
    /// Response flags so far.
    pub flags: Flags,
    /// Endpoint of the last try.
    pub upstream_host: Option<Arc<str>>,
    /// Cluster.
    pub cluster: Option<Arc<str>>,
    /// Last try: sent to response headers.
    pub service_time: Option<Duration>,
    /// Route name.
    pub route: Option<Arc<str>>,
    /// Trace id of the upstream span.
    pub trace_id: Option<u128>,
    /// Request body bytes when the body was buffered.
    pub bytes_received: Option<u64>,
    /// Request body bytes as they stream upstream (bodies of undeclared length, when logging).
    pub rx_count: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Bytes each way through an upgraded connection, sent when the tunnel closes.
    pub tunnel: Option<tokio::sync::oneshot::Receiver<(u64, u64)>>,
    /// The span being recorded for export (sampled requests on listeners with `otlp`).
    pub span: Option<crate::otlp::Span>,
}

impl Tx {
    fn new(start: Instant) -> Tx {
        Tx {
            start,
            log: false,
            access_log: false,
            flags: Flags::default(),
            upstream_host: None,
            cluster: None,
            service_time: None,
            route: None,
            trace_id: None,
            bytes_received: None,
            rx_count: None,
            tunnel: None,
            span: None,
        }
    }
}

async fn serve_route(
    req: Request<Incoming>,
    route: &Route,
    conn: &Conn,
    host: String,
    listener: &ListenerRt,
    tx: &mut Tx,
) -> Result<Response<RespBody>, LocalReply> {
    let stats = &*listener.stats;
    // Fault injection first: a delay here does not count against the route timeout, which
    // starts when the request goes upstream (as with Envoy's fault filter before the router).
    let mut _fault_slot = None;
    if let Some(fault) = &route.fault {
        let d = fault.decide(req.headers());
        if d.delay.is_some() || d.abort.is_some() {
            match fault.enter() {
                None => stats.fault_overflow.inc(),
                Some(slot) => {
                    stats.fault_active.inc();
                    let _g = ActiveFaultGauge(stats);
                    if let Some(delay) = d.delay {
                        stats.fault_delays_injected.inc();
                        tx.flags.set(Flags::DI);
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(status) = d.abort {
                        stats.fault_aborts_injected.inc();
                        return Err(LocalReply::FaultAbort(status));
                    }
                    _fault_slot = Some(slot);
                }
            }
        }
    }
    if let Some(rl) = &route.rate_limit {
        if let Err(wait) = rl.check(req.headers(), conn.peer.ip()) {
            stats.rate_limited.inc();
            return Err(LocalReply::RateLimited(
                wait.as_secs_f64().ceil().max(1.0) as u64
            ));
        }
    }
    match &route.action {
        Action::Direct { status, body } => {
            let mut r = text(*status, body.clone());
            if body.is_empty() {
                r.headers_mut().remove(CONTENT_TYPE);
            }
            Ok(r)
        }
        Action::Redirect(rd) => {
            let loc = rd.location(route, "http", &host, req.uri());
            let mut r = text(rd.code(), Bytes::new());
            r.headers_mut().remove(CONTENT_TYPE);
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(LOCATION, v);
            }
            Ok(r)
        }
        Action::Forward(fwd) => forward(req, fwd, route, conn, host, listener, tx).await,
    }
}

struct ActiveGauge<'a>(&'a ListenerStats);

impl Drop for ActiveGauge<'_> {
    fn drop(&mut self) {
        self.0.downstream_rq_active.dec();
    }
}

struct ActiveFaultGauge<'a>(&'a ListenerStats);

impl Drop for ActiveFaultGauge<'_> {
    fn drop(&mut self) {
        self.0.fault_active.dec();
    }
}

struct RetryGauge<'a>(&'a Cluster);

impl Drop for RetryGauge<'_> {
    fn drop(&mut self) {
        self.0.stats.upstream_rq_retry_active.dec();
    }
}

/// What one try produced.
enum Try {
    Response(Response<Incoming>, Lease, ActiveRequest),
    Failed(LocalReply),
}

/// A copy of the request head for another try.
fn head_copy(p: &http::request::Parts) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r
}

async fn forward(
    req: Request<Incoming>,
    fwd: &Forward,
    route: &Route,
    conn: &Conn,
    host: String,
    listener: &ListenerRt,
    tx: &mut Tx,
) -> Result<Response<RespBody>, LocalReply> {
    let cluster = fwd.cluster();
    let cs = &cluster.stats;
    if tx.log {
        tx.cluster = Some(cluster.name.clone());
    }
    cs.upstream_rq_total.inc();
    if cluster.endpoints.is_empty() {
        cs.upstream_rq_no_healthy.inc();
        return Err(LocalReply::NoHealthyUpstream);
    }
    if cs.upstream_rq_active.get() >= cluster.limits.max_requests {
        cs.upstream_rq_pending_overflow.inc();
        return Err(LocalReply::Overflow);
    }
    let hash = if cluster.uses_hash() {
        fwd.hash(req.headers(), conn.peer.ip())
    } else {
        None
    };

    let mut req = req;
    let upgrade = if crate::upgrade::is_upgrade(req.headers()) {
        req.headers()
            .get(http::header::UPGRADE)
            .cloned()
            .map(|proto| (proto, hyper::upgrade::on(&mut req)))
    } else {
        None
    };
    // The span shows the path as the client sent it, before any rewrite.
    let span_uri = listener.otlp.as_ref().map(|_| req.uri().clone());
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
    match &listener.tracing {
        Some(policy) => {
            let (span, parent) = crate::trace::propagate_child(&mut parts.headers, policy);
            if tx.log {
                tx.trace_id = Some(span.trace_id);
            }
            if let (Some(exp), Some(uri)) = (&listener.otlp, &span_uri) {
                let stats = &listener.stats;
                let mut s = exp.start_span(&span, parent, &parts, uri, &host, stats, tx.start);
                // Route and cluster known now: a client that leaves early still gets them.
                if let Some(s) = s.as_mut() {
                    s.response(0, tx);
                }
                tx.span = s;
            }
        }
        // Tracing off: the client's trace headers pass through untouched; the log shows its id.
        None if tx.log => tx.trace_id = crate::trace::extract(&parts.headers).0.map(|c| c.trace_id),
        None => {}
    }
    // Not kept in the future's state across the awaits below.
    drop(span_uri);
    // HTTP/1: this future is polled by the connection's task, which runs the lazy deadlines.
    let lazy = (parts.version <= Version::HTTP_11).then_some(&conn.timer);
    parts.version = Version::HTTP_11;
    if let Some((proto, on_upgrade)) = upgrade {
        // Boxed: rare, and its future would otherwise enlarge every request's.
        let tunnels = &conn.shared.tunnels;
        return Box::pin(forward_upgrade(
            cluster, hash, parts, proto, on_upgrade, tx, tunnels,
        ))
        .await;
    }

    // A retry needs the body again: buffer it when the policy allows retrying this method and
    // the body is known to fit; otherwise stream it and make a single try.
    let policy = fwd.retry.as_deref().filter(|p| {
        p.num_retries > 0 && (p.non_idempotent || crate::router::is_idempotent(&parts.method))
    });
    let mut stream_body = Some(body);
    let mut replay: Option<Bytes> = None;
    if policy.is_some() {
        let b = stream_body.as_ref().expect("body present");
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if b.is_end_stream() {
            replay = Some(Bytes::new());
        } else if declared.is_some_and(|n| n <= fwd.buffer_limit) {
            let body = stream_body.take().expect("body present");
            // Boxed for the same reason as the upgrade path: only retried requests with a body.
            let collected = Box::pin(Limited::new(body, fwd.buffer_limit as usize).collect())
                .await
                .map_err(|_| LocalReply::BadRequestBody)?;
            replay = Some(collected.to_bytes());
        }
    }
    if let (true, Some(b)) = (tx.log, &replay) {
        tx.bytes_received = Some(b.len() as u64);
    }
    let max_retries = match (policy, &replay) {
        (Some(p), Some(_)) => p.num_retries,
        _ => 0,
    };

    // One clock read per try: it is the try's start, and the route deadline counts from the first.
    let mut now = Instant::now();
    let deadline = fwd.timeout.map(|t| now + t);
    let mut head = Some(parts);
    let mut prev: Option<usize> = None;
    let mut retries = 0u32;
    loop {
        let Some(idx) = cluster.pick(hash, prev) else {
            cs.upstream_rq_no_healthy.inc();
            return Err(LocalReply::NoHealthyUpstream);
        };
        if tx.log {
            tx.upstream_host = Some(cluster.endpoints[idx].address.clone());
        }
        let body: UpBody = match &replay {
            Some(b) => Either::Right(Full::new(b.clone())),
            None => {
                let b = stream_body.take().expect("single try streams the body");
                // Counted for the log only when there is a body whose length is not declared.
                if tx.access_log && !b.is_end_stream() && b.size_hint().exact().is_none() {
                    tx.rx_count = Some(Arc::default());
                }
                Either::Left(Counted::new(b, tx.rx_count.clone()))
            }
        };
        let upstream_req = if retries < max_retries {
            head_copy(head.as_ref().expect("head kept for retries")).map(|()| body)
        } else {
            // The last possible try takes the head itself: no copy on the common path.
            Request::from_parts(head.take().expect("head used once"), body)
        };
        let _retry_gauge = (retries > 0).then(|| {
            cs.upstream_rq_retry_active.inc();
            RetryGauge(cluster)
        });
        let per_try = policy.and_then(|p| p.per_try_timeout);
        let sent = now;
        let result = try_once(cluster, idx, upstream_req, per_try, sent, deadline, lazy).await;
        if let (true, Try::Response(..)) = (tx.log, &result) {
            tx.service_time = Some(sent.elapsed());
        }

        let retryable = match (&result, policy) {
            (_, None) => false,
            (Try::Response(r, ..), Some(p)) => p.on_status(r.status().as_u16()),
            (Try::Failed(LocalReply::ConnectFailure), Some(p)) => p.on_connect_failure(),
            (Try::Failed(LocalReply::UpstreamReset), Some(p)) => p.on_reset(),
            // A per-try timeout (the route deadline has not passed) is retried like a reset.
            (Try::Failed(LocalReply::UpstreamTimeout), Some(p)) => {
                p.on_reset() && deadline.is_none_or(|d| Instant::now() < d)
            }
            (Try::Failed(_), _) => false,
        };
        let give_up = !retryable || retries >= max_retries;
        if !give_up && !cluster.retry_allowed() {
            cs.upstream_rq_retry_overflow.inc();
        } else if !give_up {
            let backoff = policy.map_or(Duration::ZERO, |p| p.backoff(retries + 1));
            let backoff = match deadline {
                Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                None => backoff,
            };
            drop(result);
            tokio::time::sleep(backoff).await;
            now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                cs.upstream_rq_timeout.inc();
                return Err(LocalReply::UpstreamTimeout);
            }
            retries += 1;
            cs.upstream_rq_retry.inc();
            prev = Some(idx);
            continue;
        }
        if retryable {
            cs.upstream_rq_retry_limit_exceeded.inc();
            tx.flags.set(Flags::URX);
        }
        return match result {
            Try::Response(resp, lease, active) => {
                if retries > 0 && !retryable {
                    cs.upstream_rq_retry_success.inc();
                }
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let idle = fwd.idle_timeout.unwrap_or(listener.stream_idle_timeout);
                Ok(Response::from_parts(
                    parts,
                    Either::Left(Upstream {
                        inner: body,
                        lease: Some(lease),
                        _active: active,
                        idle: idle.map(|d| IdleTimer {
                            timeout: d,
                            sleep: None,
                            stats: listener.stats.clone(),
                        }),
                        fin: Finish {
                            start: tx.start,
                            sent,
                            listener: listener.stats.clone(),
                            cluster: cluster.stats.clone(),
                            route: route.stats.clone(),
                            log: Pending::default(),
                            rx: tx.rx_count.take(),
                            span: None,
                            bytes: 0,
                            ended: false,
                            outcome: Flags::default(),
                        },
                    }),
                ))
            }
            Try::Failed(local) => Err(local),
        };
    }
}

/// A protocol upgrade (WebSocket): one try on a dedicated connection, then a spliced tunnel.
async fn forward_upgrade(
    cluster: &Arc<Cluster>,
    hash: Option<u64>,
    parts: http::request::Parts,
    proto: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    tx: &mut Tx,
    tunnels: &crate::upgrade::Tunnels,
) -> Result<Response<RespBody>, LocalReply> {
    let Some(idx) = cluster.pick(hash, None) else {
        cluster.stats.upstream_rq_no_healthy.inc();
        return Err(LocalReply::NoHealthyUpstream);
    };
    // The log line waits for the tunnel to close, to carry its bytes and lifetime.
    let done = tx.log.then(|| {
        tx.upstream_host = Some(cluster.endpoints[idx].address.clone());
        let (s, r) = tokio::sync::oneshot::channel();
        tx.tunnel = Some(r);
        s
    });
    let resp = crate::upgrade::proxy(cluster, idx, parts, proto, on_upgrade, done, tunnels)
        .await
        .map_err(|e| match e {
            crate::upgrade::UpgradeError::Connect => LocalReply::ConnectFailure,
            crate::upgrade::UpgradeError::Reset => LocalReply::UpstreamReset,
        })?;
    let (mut head, body) = resp.into_parts();
    let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let keep = switching.then(|| {
        (
            head.headers.get(http::header::UPGRADE).cloned(),
            head.headers.get(http::header::CONNECTION).cloned(),
        )
    });
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some((up, conn)) = keep {
        // The client needs these to switch too.
        if let Some(v) = up {
            head.headers.insert(http::header::UPGRADE, v);
        }
        head.headers.insert(
            http::header::CONNECTION,
            conn.unwrap_or(HeaderValue::from_static("upgrade")),
        );
        return Ok(Response::from_parts(
            head,
            Either::Right(Full::new(Bytes::new())),
        ));
    }
    // A refused handshake has a small body (an error page): read it, bounded.
    let body = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(Response::from_parts(head, Either::Right(Full::new(body))))
}

/// One upstream try: pick-independent, bounded by the per-try timeout and the route deadline.
async fn try_once(
    cluster: &Arc<Cluster>,
    idx: usize,
    req: Request<UpBody>,
    per_try: Option<Duration>,
    now: Instant,
    deadline: Option<Instant>,
    lazy: Option<&LazyTimer>,
) -> Try {
    let cs = &cluster.stats;
    let ep = &cluster.endpoints[idx];
    let active = ActiveRequest::start(cluster, idx);
    let target = Target {
        addr: &ep.address,
        resolved: ep.resolved,
        connect_timeout: cluster.connect_timeout,
        limits: &cluster.limits,
        stats: &cluster.stats,
    };
    let remaining = deadline.map(|d| d.saturating_duration_since(now));
    let (limit, is_per_try) = match (per_try, remaining) {
        (Some(p), Some(r)) if p < r => (Some(p), true),
        (Some(p), None) => (Some(p), true),
        (_, r) => (r, false),
    };
    let deadline = match (limit, lazy) {
        (Some(t), Some(lazy)) => Deadline::Lazy(lazy.sleep_until(now + t)),
        (Some(t), None) => Deadline::Tokio(Box::pin(tokio::time::sleep(t))),
        (None, _) => Deadline::None,
    };
    // Built in place: a named local for the send future would take a second slot in this future.
    let result = match Timed::new(ep.state.pool.send(&target, req, now), deadline).await {
        Ok(r) => r,
        Err(Elapsed) => {
            if is_per_try {
                cs.upstream_rq_per_try_timeout.inc();
            } else {
                cs.upstream_rq_timeout.inc();
            }
            outlier::report(cluster, idx, Outcome::Timeout);
            return Try::Failed(LocalReply::UpstreamTimeout);
        }
    };
    match result {
        Ok((resp, lease)) => {
            let status = resp.status().as_u16();
            cs.upstream_rq_xx.record(status);
            outlier::report(cluster, idx, Outcome::Status(status));
            Try::Response(resp, lease, active)
        }
        Err(SendError::Connect(e)) => {
            cs.upstream_cx_connect_fail.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream connect error");
            outlier::report(cluster, idx, Outcome::ConnectFailure);
            Try::Failed(LocalReply::ConnectFailure)
        }
        Err(SendError::Reset(e)) => {
            cs.upstream_rq_reset.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream reset");
            outlier::report(cluster, idx, Outcome::Reset);
            Try::Failed(LocalReply::UpstreamReset)
        }
        Err(SendError::ConnectionOverflow | SendError::PendingOverflow) => {
            Try::Failed(LocalReply::Overflow)
        }
    }
}

/// A lazily armed body idle timer: no timer exists while data keeps arriving.
pub struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<ListenerStats>,
}

/// The error a body ends with when the stream idle timeout expires.
#[derive(Debug)]
pub struct StreamIdleTimeout;

impl std::fmt::Display for StreamIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout")
    }
}

impl std::error::Error for StreamIdleTimeout {}

/// End-of-response bookkeeping carried by an upstream body: latency histograms and the
/// access log line, written when the body ends or is dropped.
pub struct Finish {
    start: Instant,
    sent: Instant,
    listener: Arc<ListenerStats>,
    cluster: Arc<ClusterStats>,
    route: Arc<crate::stats::RouteStats>,
    log: Pending,
    rx: Option<Arc<std::sync::atomic::AtomicU64>>,
    span: Option<crate::otlp::Span>,
    bytes: u64,
    ended: bool,
    // Set when the body ended with an error (idle timeout: SI; an upstream error: no flag).
    outcome: Flags,
}

impl Finish {
    /// Records the request's end; returns the time read for it.
    fn done(&mut self, at_end: bool) -> Instant {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.start);
        self.listener.downstream_rq_time.record(took);
        self.route.rq_time.record(took);
        self.cluster
            .upstream_rq_time
            .record(now.saturating_duration_since(self.sent));
        let mut flags = self.outcome;
        if !at_end && !self.ended && self.outcome == Flags::default() {
            flags.set(Flags::DC);
        }
        if let (Some(c), Some((_, e, _))) = (&self.rx, self.log.0.as_mut()) {
            e.bytes_received = c.load(std::sync::atomic::Ordering::Relaxed);
        }
        self.log.finish(self.bytes, flags);
        if let Some(s) = self.span.take() {
            s.end(flags);
        }
        now
    }
}

const ERRORED: Flags = Flags::UR;

pin_project_lite::pin_project! {
    /// An upstream response body that keeps its endpoint counted as busy until it ends, returns
    /// its connection to the pool if it was read to the end, and ends with an error when no data
    /// arrives for the stream idle timeout.
    pub struct Upstream<B: Body> {
        #[pin]
        inner: B,
        lease: Option<Lease>,
        _active: ActiveRequest,
        idle: Option<IdleTimer>,
        fin: Finish,
    }

    impl<B: Body> PinnedDrop for Upstream<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let now = this.fin.done(this.inner.is_end_stream());
            if this.inner.is_end_stream() {
                if let Some(lease) = this.lease.take() {
                    lease.release(now);
                }
            }
        }
    }
}

impl<B> Body for Upstream<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(r) => {
                if let Some(t) = this.idle.as_mut() {
                    t.sleep = None;
                }
                match &r {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            this.fin.bytes += bytes::Buf::remaining(d) as u64;
                        }
                    }
                    Some(Err(_)) => this.fin.outcome.set(ERRORED),
                    None => this.fin.ended = true,
                }
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if let Some(t) = this.idle.as_mut() {
                    let timeout = t.timeout;
                    let sleep = t
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                        t.stats.downstream_rq_idle_timeout.inc();
                        this.fin.outcome.set(Flags::SI);
                        return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
