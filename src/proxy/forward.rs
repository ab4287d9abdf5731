//! The forward phase: upgrades sorted out (enabled ones to [`super::upgrade`], `h2c` served
//! plain, others refused), admission to the cluster, the request head as the upstream gets it
//! (Host = the routed authority), the request body (none, buffered for retries, or streamed as a
//! [`ClientBody`] bounded by the stream idle timeout and `request_timeout`), and the tries, with
//! the retry decisions of [`crate::router::retry`] (policy, replay body, outcome, back-off,
//! budget). A try's per-try timeout and the route deadline start when the request is complete:
//! a streamed body is followed until it went up whole. A failure of the client's body is the
//! client's ([`BodyFault`]: 400/408, never scored or retried); an upstream response whose framing
//! cannot be forwarded faithfully is a 502 protocol error.
//!
//! gRPC: the route's `max_stream_duration` (or the client's `grpc-timeout` under it) caps the
//! route deadline, counting from the request's start, and goes upstream as the time left in
//! `grpc-timeout`; a trailers-only `grpc-status` is counted and is a retry outcome; a call's
//! body streams up at once with a copy kept for a retry ([`Exchange::with_copy`]).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderValue, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body;

use super::local_reply::LocalReply;
use super::response::{check_framing, Finish, Framing, IdleTimer, Upstream};
use super::{header_rules, upgrade, Ctx, RespBody};
use crate::headers;
use crate::http1::server::OnUpgrade;
use crate::message::{Request, RequestParts, Response};
use crate::router::retry::{self, BodyPlan, TryOutcome};
use crate::router::{upgrade_allowed, Forward, Route};
use crate::stream_info::{Flags, SpanIds};
use crate::timer::{Deadline, Elapsed, LazyTimer, Timed};
use crate::upstream::body::{BodyFault, BodyLimits, ClientBody, Exchange, ReqBody};
use crate::upstream::cluster::{ActiveRequest, Cluster, Endpoint};
use crate::upstream::connect::Connector;
use crate::upstream::h2::{Failure, Protocol};
use crate::upstream::outlier::{self, Outcome};
use crate::upstream::pool::{Lease, SendError, Target, UpBody, UpResp};

/// Forwards `req` to the route's cluster and returns the response to stream back.
///
/// This future is part of every proxied request's (an HTTP/1 connection's future holds it):
/// what is only needed before the first try is worked out by [`prepare`], so it is not kept
/// across the tries, and the rare branches (an upgrade, a body buffered for retries) are boxed.
/// [`super::handle`] awaits it directly (not through the route phase's future), so it is made
/// once where it is polled.
pub(super) async fn forward(
    req: Request<ReqBody>,
    fwd: &Forward,
    route: &Route,
    cx: &mut Ctx<'_>,
) -> Result<Response<RespBody>, LocalReply> {
    // Filled in place by `prepare` (not returned by value and moved again into this future).
    let mut head = None;
    let mut stream_body = None;
    let Go {
        cluster,
        hash,
        h1,
        policy,
        cap,
        idle,
        mut exchange,
        mut replay,
        buffered,
    } = match prepare(req, fwd, route, cx, &mut head, &mut stream_body)? {
        Prepared::Go(go) => go,
        Prepared::Upgrade(u) => {
            // Boxed: rare, and its future would otherwise enlarge every request's.
            let Upgrade {
                cluster,
                hash,
                proto,
                on,
                limits,
            } = u;
            let parts = head.take().expect("prepare made the head");
            return Box::pin(upgrade::forward(
                cluster, hash, parts, proto, on, limits, cx,
            ))
            .await;
        }
    };
    if buffered {
        let body = stream_body.take().expect("prepare made the body to buffer");
        // Boxed for the same reason as the upgrade path: only retried requests with a body.
        let collected = Box::pin(Limited::new(body, fwd.buffer_limit as usize).collect())
            .await
            .map_err(|e| match e.downcast_ref::<BodyFault>() {
                Some(f) => fault_reply(*f),
                None => LocalReply::BadRequestBody,
            })?;
        replay = Some(collected.to_bytes());
    }
    // HTTP/1: this future is polled by the connection's task, which runs the lazy deadlines.
    let lazy = h1.then_some(&cx.conn.timer);
    if let Some(b) = &replay {
        cx.record(|i| i.bytes_received = b.len() as u64);
    }
    let copied = exchange.is_some() && policy.is_some() && cx.grpc;
    let max_retries = match (policy, &replay) {
        (Some(p), Some(_)) => p.num_retries,
        (Some(p), None) if copied => p.num_retries,
        _ => 0,
    };
    let cs = &cluster.stats;

    // One clock read per try: it is the try's start, and the route deadline counts from the first.
    let mut now = Instant::now();
    let deadline = earliest(fwd.timeout.map(|t| now + t), cap);
    let mut prev: Option<Arc<Endpoint>> = None;
    let mut retries = 0u32;
    loop {
        // No time left of the stream's limit (the client's deadline passed): no try.
        if cap.is_some_and(|c| now >= c) {
            cs.upstream_rq_timeout.inc();
            return Err(LocalReply::UpstreamTimeout);
        }
        let Some(ep) = cluster.pick(hash, prev.as_deref()) else {
            cs.upstream_rq_no_healthy.inc();
            return Err(LocalReply::NoHealthyUpstream);
        };
        cx.record(|i| i.upstream_host = Some(ep.address.clone()));
        let _retry_gauge = (retries > 0).then(|| {
            cs.upstream_rq_retry_active.inc();
            RetryGauge(cluster)
        });
        let sent = now;
        // The try and what it returned live in this block only: not kept across the back-off.
        let backoff = {
            let body: UpBody = match &replay {
                Some(b) => Either::Right(Full::new(b.clone())),
                None => Either::Left(stream_body.take().expect("single try streams the body")),
            };
            let last = retries >= max_retries;
            let grpc_cap = cap.filter(|_| cx.grpc);
            let upstream_req = upstream_request(&mut head, last, body, grpc_cap, now);
            let limits = TryLimits {
                per_try: policy.and_then(|p| p.per_try_timeout),
                deadline,
                timeout: fwd.timeout,
                cap,
                idle,
            };
            let active = ActiveRequest::start(cluster, ep.clone());
            let target = Target {
                endpoint: &ep,
                connector: Connector::of(cluster),
                limits: &cluster.limits,
                stats: &cluster.stats,
                options: &cluster.conn,
            };
            // Pinned here rather than inside `try_once`, whose argument it would otherwise be
            // (an argument is held twice in an `async fn`'s future).
            let send = std::pin::pin!(ep.state.pool.send(&target, upstream_req, sent));
            let result = try_once(
                cluster,
                &ep,
                send,
                active,
                sent,
                &limits,
                exchange.as_ref(),
                lazy,
            )
            .await;
            if let Try::Response(resp, _, active) = &result {
                if cx.grpc {
                    if let Some(code) = crate::grpc::status_of(resp.headers()) {
                        cs.upstream_rq_grpc_status.record(code);
                    }
                }
                cx.record(|i| {
                    i.upstream_service_time = Some(sent.elapsed());
                    i.upstream_tls_version = active.tls_version;
                });
                if let Some(ex) = &exchange {
                    ex.responded();
                }
            }

            let retryable = policy.is_some_and(|p| {
                let outcome = result.outcome(cx.grpc);
                // The clock is read only for the one outcome whose retry depends on it.
                let passed =
                    outcome == TryOutcome::Timeout && deadline.is_some_and(|d| Instant::now() >= d);
                p.retries(outcome, passed)
            });
            let mut give_up = !retryable || retries >= max_retries;
            // A streamed body goes again only from its copy: whole, and within the buffer limit.
            let mut refill = None;
            let mut unreplayable = false;
            if !give_up && replay.is_none() {
                refill = exchange.as_ref().and_then(|e| e.replay());
                unreplayable = refill.is_none();
                give_up = unreplayable;
            }
            if !give_up && !cluster.retry_allowed() {
                cs.upstream_rq_retry_overflow.inc();
                give_up = true;
            }
            if give_up {
                if retryable && !unreplayable {
                    cs.upstream_rq_retry_limit_exceeded.inc();
                    cx.flag(Flags::URX);
                }
                let exchange = exchange.take();
                return answer(
                    result, cluster, retries, retryable, exchange, idle, cap, sent, route, cx,
                );
            }
            let backoff = policy.map_or(Duration::ZERO, |p| p.backoff(retries + 1));
            // The clock is read only when there is a deadline to cut the back-off at.
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let backoff = retry::backoff_within(backoff, remaining);
            drop(result);
            if let Some(b) = refill {
                cx.record(|i| i.bytes_received = b.len() as u64);
                replay = Some(b);
                exchange = None;
            }
            backoff
        };
        tokio::time::sleep(backoff).await;
        now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            cs.upstream_rq_timeout.inc();
            return Err(LocalReply::UpstreamTimeout);
        }
        retries += 1;
        cs.upstream_rq_retry.inc();
        prev = Some(ep);
    }
}

/// What [`prepare`] decided for a request (the head and the body are in the caller's slots).
enum Prepared<'r> {
    /// Forward it with tries.
    Go(Go<'r>),
    /// Forward it as an upgrade (boxed: rare).
    Upgrade(Upgrade<'r>),
}

/// A request ready for its tries: the clocks and retry policy that bound them, and its body's
/// plan (the upstream head and the client's body are in the caller's slots).
struct Go<'r> {
    cluster: &'r Arc<Cluster>,
    hash: Option<u64>,
    /// The client's request came on HTTP/1 (its connection's task polls the lazy deadlines).
    h1: bool,
    policy: Option<&'r retry::RetryPolicy>,
    /// The stream's limit (`max_stream_duration`, the client's `grpc-timeout`).
    cap: Option<Instant>,
    /// The stream idle timeout.
    idle: Option<Duration>,
    exchange: Option<Arc<Exchange>>,
    /// A body in memory (none, or buffered), sent by every try.
    replay: Option<Bytes>,
    /// The client body `prepare` made is to be buffered before the first try (a retry may need
    /// to send it again), not streamed up by the first try.
    buffered: bool,
}

/// An upgrade to forward.
struct Upgrade<'r> {
    cluster: &'r Arc<Cluster>,
    hash: Option<u64>,
    proto: HeaderValue,
    on: OnUpgrade,
    limits: upgrade::Limits,
}

/// Everything of [`forward`] before the first try that does not wait: upgrades sorted out,
/// cluster admission, the upstream head (into `head`), the retry policy, the body's plan (a
/// body to stream or buffer into `client_body`). The slots are the caller's future's own: the
/// head and the body are written once where the tries use them, not moved there.
fn prepare<'r>(
    mut req: Request<ReqBody>,
    fwd: &'r Forward,
    route: &Route,
    cx: &mut Ctx<'_>,
    head: &mut Option<Box<RequestParts>>,
    client_body: &mut Option<ClientBody>,
) -> Result<Prepared<'r>, LocalReply> {
    // Only HTTP/1.1 switches protocols; elsewhere `Upgrade` is a hop-by-hop header and goes.
    let asked = (req.version() == Version::HTTP_11)
        .then(|| upgrade::requested(req.headers()))
        .flatten();
    let upgrade = match asked {
        None => None,
        // Never tunnelled: served as the plain request it also is (Envoy's codec does the same).
        Some(proto) if upgrade::is_h2c(proto.as_bytes()) => {
            upgrade::strip_h2c(req.headers_mut());
            None
        }
        Some(proto) => {
            let ty = proto.to_str().unwrap_or_default().trim();
            if !upgrade_allowed(&fwd.upgrades, &cx.listener.upgrades, ty) {
                cx.listener.stats.downstream_rq_ws_on_non_ws_route.inc();
                return Err(LocalReply::UpgradeRejected);
            }
            // Its bytes would be the tunnel's first ones to one side and a body to the other.
            if !req.body().is_end_stream() {
                cx.listener.stats.downstream_cx_protocol_error.inc();
                return Err(LocalReply::UpgradeWithBody);
            }
            let proto = proto.to_owned();
            // Only Tern's HTTP/1 engine hands over a connection (HTTP/1.1 requests come from it).
            let Some(on) = OnUpgrade::on(&mut req) else {
                cx.listener.stats.downstream_rq_ws_on_non_ws_route.inc();
                return Err(LocalReply::UpgradeRejected);
            };
            Some((proto, on))
        }
    };
    let (cluster, cluster_rules) = fwd.pick();
    // An HTTP/1.1 upgrade cannot be carried over HTTP/2 (RFC 8441's extended CONNECT is not
    // spoken): refused as an upgrade the route does not take.
    if upgrade.is_some() && cluster.conn.protocol == Protocol::Http2 {
        cx.listener.stats.downstream_rq_ws_on_non_ws_route.inc();
        return Err(LocalReply::UpgradeRejected);
    }
    cx.cluster_rules = cluster_rules.cloned();
    let cs = &cluster.stats;
    cx.record(|i| i.upstream_cluster = Some(cluster.name.clone()));
    cs.upstream_rq_total.inc();
    admit(cluster)?;
    let hash = if cluster.uses_hash() {
        fwd.hash(req.headers(), cx.client.ip())
    } else {
        None
    };

    let (mut parts, body) = req.into_parts();
    let h1 = parts.version <= Version::HTTP_11;
    let original = header_rules::original(&parts, route, cluster_rules);
    upstream_head(&mut parts, fwd, route, cx)?;
    header_rules::request(
        &mut parts,
        original,
        route,
        &cluster.name,
        cluster_rules,
        cx,
    );
    if let Some((proto, on)) = upgrade {
        let limits = upgrade::Limits {
            timeout: fwd.timeout,
            idle: fwd.idle_timeout.unwrap_or(cx.listener.stream_idle_timeout),
        };
        *head = Some(parts);
        return Ok(Prepared::Upgrade(Upgrade {
            cluster,
            hash,
            proto,
            on,
            limits,
        }));
    }

    let policy = retry::policy_for(fwd.retry.as_deref(), &parts.method, cx.grpc);
    // The stream's limit counts from the request's start (Envoy's max stream duration).
    let cap = fwd
        .stream_duration
        .and_then(|s| s.limit(crate::grpc::timeout_of(&parts.headers)))
        .map(|d| cx.start + d);
    let declared = || {
        parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    };
    let idle = fwd.idle_timeout.unwrap_or(cx.listener.stream_idle_timeout);
    let limits = BodyLimits {
        idle,
        deadline: cx
            .listener
            .request_timeout
            .map(|t| tokio::time::Instant::from_std(cx.start + t)),
    };
    // A request without a body is complete already: nothing to stream, nothing to wait for.
    let plan = match body.is_end_stream() {
        true => BodyPlan::Empty,
        false => retry::body_plan(
            policy.is_some(),
            false,
            policy.and_then(|_| declared()),
            fwd.buffer_limit,
        ),
    };
    let mut exchange = None;
    let mut buffered = false;
    let replay: Option<Bytes> = match plan {
        BodyPlan::Empty => Some(Bytes::new()),
        BodyPlan::Buffer => {
            buffered = true;
            *client_body = Some(ClientBody::new(
                body,
                None,
                None,
                limits,
                cx.listener.stats.clone(),
            ));
            None
        }
        BodyPlan::Stream => {
            // hyper sends no body of unknown length on GET, HEAD and CONNECT unless told to:
            // every method's body is forwarded, as Envoy does.
            if body.size_hint().exact().is_none() && !parts.headers.contains_key(CONTENT_LENGTH) {
                parts
                    .headers
                    .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            // A gRPC call's body streams (it may be a client stream); a copy is kept so that a
            // unary call can be retried once its body went up whole.
            let ex = Arc::new(match policy.is_some() && cx.grpc {
                true => Exchange::with_copy(fwd.buffer_limit),
                false => Exchange::default(),
            });
            let stats = cx.listener.stats.clone();
            *client_body = Some(ClientBody::new(
                body,
                cx.rec.clone(),
                Some(ex.clone()),
                limits,
                stats,
            ));
            exchange = Some(ex);
            None
        }
    };
    *head = Some(parts);
    Ok(Prepared::Go(Go {
        cluster,
        hash,
        h1,
        policy,
        cap,
        idle,
        exchange,
        replay,
        buffered,
    }))
}

/// The response of the try that is the request's answer (or its failure), its body bounded by
/// the stream idle timeout and the stream's limit, the request's end recorded when it ends.
#[allow(clippy::too_many_arguments)]
fn answer(
    result: Try,
    cluster: &Arc<Cluster>,
    retries: u32,
    retryable: bool,
    exchange: Option<Arc<Exchange>>,
    idle: Option<Duration>,
    cap: Option<Instant>,
    sent: Instant,
    route: &Route,
    cx: &Ctx<'_>,
) -> Result<Response<RespBody>, LocalReply> {
    match result {
        Try::Response(resp, lease, active) => {
            if retries > 0 && !retryable {
                cluster.stats.upstream_rq_retry_success.inc();
            }
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            let listener = cx.listener;
            Ok(Response::from_parts(
                parts,
                Either::Left(Box::pin(Upstream {
                    inner: body,
                    lease,
                    exchange,
                    _active: active,
                    idle: idle.map(|d| IdleTimer {
                        timeout: d,
                        sleep: None,
                        stats: listener.stats.clone(),
                    }),
                    fin: Finish {
                        start: cx.start,
                        sent,
                        listener: listener.stats.clone(),
                        cluster: cluster.stats.clone(),
                        route: route.stats.clone(),
                        rec: None,
                        bytes: 0,
                        ended: false,
                        outcome: Flags::default(),
                        grpc: cx.grpc,
                    },
                    cap: cap.map(|c| Box::pin(tokio::time::sleep_until(c.into()))),
                })),
            ))
        }
        Try::Failed(local) => Err(local),
        Try::RefusedStream => Err(LocalReply::UpstreamReset),
        Try::ClientFault(f) => Err(fault_reply(f)),
    }
}

/// The answer to a client's own fault with its request body.
fn fault_reply(f: BodyFault) -> LocalReply {
    match f {
        BodyFault::Malformed => LocalReply::BadRequestBody,
        BodyFault::Aborted => LocalReply::RequestAborted,
        BodyFault::Idle => LocalReply::RequestIdleTimeout,
        BodyFault::Timeout => LocalReply::RequestTimeout,
    }
}

/// The cluster's admission: an endpoint to send to, and room under `max_requests`.
fn admit(cluster: &Cluster) -> Result<(), LocalReply> {
    let cs = &cluster.stats;
    if !cluster.has_endpoints() {
        cs.upstream_rq_no_healthy.inc();
        return Err(LocalReply::NoHealthyUpstream);
    }
    if cs.upstream_rq_active.get() >= cluster.limits.max_requests {
        cs.upstream_rq_pending_overflow.inc();
        return Err(LocalReply::Overflow);
    }
    Ok(())
}

/// Turns the client's request head into the upstream's: origin-form target (rewritten),
/// hop-by-hop headers gone, Host, `x-forwarded-*`, trace context; HTTP/1.1 upstream.
fn upstream_head(
    parts: &mut RequestParts,
    fwd: &Forward,
    route: &Route,
    cx: &Ctx<'_>,
) -> Result<(), LocalReply> {
    // The routed authority came from the request target (absolute-form, `:authority`), or the
    // request had no Host (HTTP/1.0): Host is set to it. Otherwise the one valid Host is it.
    let set_host = parts.uri.authority().is_some() || !parts.headers.contains_key(HOST);
    let rewritten = fwd
        .prefix_rewrite
        .as_deref()
        .and_then(|rw| route.rewrite_path(&parts.uri, rw));
    // Origin-form request target: the upstream gets `GET /path?q HTTP/1.1` plus Host. A target
    // that is origin-form already and not rewritten (nearly all) is kept as it is.
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    if rewritten.is_some() || !origin_form {
        let pq = match rewritten {
            Some(p) => PathAndQuery::try_from(p).map_err(|_| LocalReply::NoRoute)?,
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        parts.uri = Uri::from(pq);
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    match &fwd.host_rewrite {
        Some(h) => {
            parts.headers.insert(HOST, h.clone());
        }
        None if set_host => {
            // An HTTP/1.1 upstream needs the authority as Host (RFC 9112 §3.2.2: the target's
            // replaces the client's Host).
            parts.headers.insert(HOST, cx.host.clone());
        }
        None => {}
    }
    headers::append_forwarded(&mut parts.headers, &cx.conn.peer_ip, cx.listener.forwarding);
    cx.listener
        .xfcc
        .apply(&mut parts.headers, cx.conn.tls.as_deref());
    // Tracing off: the client's trace headers pass through untouched (the record has its id).
    if let Some(policy) = &cx.listener.tracing {
        let (span, parent) = crate::trace::propagate(&mut parts.headers, policy);
        let export = cx.listener.exports_spans && span.sampled == Some(true);
        cx.record(|i| {
            i.trace_id = Some(span.trace_id);
            if export {
                i.span = Some(SpanIds {
                    span_id: span.span_id,
                    parent: parent.filter(|p| *p != 0),
                });
            }
        });
    }
    parts.version = Version::HTTP_11;
    Ok(())
}

struct RetryGauge<'a>(&'a Cluster);

impl Drop for RetryGauge<'_> {
    fn drop(&mut self) {
        self.0.stats.upstream_rq_retry_active.dec();
    }
}

/// What one try produced.
// Lives on the stack for one try and is matched at once: boxing the response would cost an
// allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Try {
    /// The response, and its connection's lease unless the connection must not be reused.
    Response(Response<UpResp>, Option<Lease>, ActiveRequest),
    Failed(LocalReply),
    /// The upstream refused the stream (`REFUSED_STREAM`): 503 `UR`, retried by `refused-stream`.
    RefusedStream,
    /// The client's request body failed: its fault, not the upstream's (never scored or retried).
    ClientFault(BodyFault),
}

impl Try {
    /// The outcome, as the retry policy sees it (for a gRPC call, with the `grpc-status` of a
    /// trailers-only response).
    fn outcome(&self, grpc: bool) -> TryOutcome {
        match self {
            Try::Response(r, ..) => {
                let status = r.status().as_u16();
                match grpc.then(|| crate::grpc::status_of(r.headers())).flatten() {
                    Some(code) => TryOutcome::Grpc(status, code),
                    None => TryOutcome::Status(status),
                }
            }
            Try::Failed(LocalReply::ConnectFailure | LocalReply::UpstreamTlsError) => {
                TryOutcome::ConnectFailure
            }
            Try::Failed(
                LocalReply::UpstreamReset
                | LocalReply::UpstreamConnectionTermination
                | LocalReply::UpstreamProtocolError,
            ) => TryOutcome::Reset,
            Try::RefusedStream => TryOutcome::RefusedStream,
            Try::Failed(LocalReply::UpstreamTimeout) => TryOutcome::Timeout,
            Try::Failed(_) | Try::ClientFault(_) => TryOutcome::Refused,
        }
    }
}

/// A response the proxy cannot forward faithfully: 502, scored like a reset (Envoy: `UPE`).
fn protocol_error(cluster: &Arc<Cluster>, ep: &Arc<Endpoint>, what: &str) -> Try {
    cluster.stats.upstream_cx_protocol_error.inc();
    tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, what, "upstream protocol error");
    outlier::report(cluster, ep, Outcome::Reset);
    Try::Failed(LocalReply::UpstreamProtocolError)
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The request of one try: the head itself for the last possible try (no copy on the common
/// path), else a copy; a gRPC call's head tells the time left of the stream's limit `cap`.
fn upstream_request(
    head: &mut Option<Box<RequestParts>>,
    last: bool,
    body: UpBody,
    cap: Option<Instant>,
    now: Instant,
) -> Request<UpBody> {
    let mut req = if last {
        Request::from_parts(head.take().expect("head used once"), body)
    } else {
        head_copy(head.as_ref().expect("head kept for retries")).map(|()| body)
    };
    if let Some(c) = cap {
        req.headers_mut().insert(
            crate::grpc::GRPC_TIMEOUT,
            crate::grpc::format_timeout(c.saturating_duration_since(now)),
        );
    }
    req
}

/// A copy of the request head for another try.
fn head_copy(p: &RequestParts) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r
}

/// The clocks of one try.
struct TryLimits {
    /// `per_try_timeout`.
    per_try: Option<Duration>,
    /// The route deadline, when the request was complete at the first try.
    deadline: Option<Instant>,
    /// The route timeout, for a streamed body: it starts when the body has gone up whole.
    timeout: Option<Duration>,
    /// The stream's limit (`max_stream_duration`, the client's `grpc-timeout`), from the
    /// request's start: no deadline passes it.
    cap: Option<Instant>,
    /// The stream idle timeout: how long a streamed body may go without moving.
    idle: Option<Duration>,
}

/// What came first while a streamed body was still going up.
enum Streaming<T> {
    /// The upstream's answer (an early one, or its failure).
    Sent(T),
    /// The body went up whole: the route timeout starts now.
    Done,
    /// The client's fault ended the body.
    Fault(BodyFault),
    /// The upstream took none of the body for the stream idle timeout.
    Stalled,
    /// The stream's limit passed.
    Expired,
}

/// Polls `send` until it resolves or `ex`'s body ends. The upstream not reading the body (no
/// progress while the body is not waiting for the client) for `idle` is its stall.
async fn while_streaming<F: Future>(
    mut send: std::pin::Pin<&mut F>,
    ex: &Exchange,
    idle: Option<Duration>,
    cap: Option<Instant>,
    lazy: Option<&LazyTimer>,
) -> Streaming<F::Output> {
    // Armed at the first wait (a small body is often up before that); lazy on HTTP/1.
    let mut watchdog: Option<(Duration, Deadline, u64)> = None;
    let mut cap = cap.map_or(Deadline::None, |c| Deadline::at(c, lazy));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = send.as_mut().poll(cx) {
            return Poll::Ready(Streaming::Sent(r));
        }
        ex.register(cx.waker());
        if let Some(f) = ex.fault() {
            return Poll::Ready(Streaming::Fault(f));
        }
        if ex.done() {
            return Poll::Ready(Streaming::Done);
        }
        if cap.poll_passed(cx) {
            return Poll::Ready(Streaming::Expired);
        }
        let Some(idle) = idle else {
            return Poll::Pending;
        };
        let (d, deadline, seen) = watchdog.get_or_insert_with(|| {
            let at = Instant::now() + idle;
            (idle, Deadline::at(at, lazy), ex.progress())
        });
        while deadline.poll_passed(cx) {
            let now = ex.progress();
            if now == *seen && !ex.waiting_on_client() {
                return Poll::Ready(Streaming::Stalled);
            }
            *seen = now;
            *deadline = Deadline::at(Instant::now() + *d, lazy);
        }
        Poll::Pending
    })
    .await
}

/// One upstream try to endpoint `ep` (`send`, made by the caller), bounded by the per-try
/// timeout and the route deadline, which start when the request is complete (a streamed body:
/// when it has gone up whole). `active` counts the request on the endpoint.
#[allow(clippy::too_many_arguments)]
async fn try_once<F>(
    cluster: &Arc<Cluster>,
    ep: &Arc<Endpoint>,
    mut send: std::pin::Pin<&mut F>,
    active: ActiveRequest,
    now: Instant,
    limits: &TryLimits,
    exchange: Option<&Arc<Exchange>>,
    lazy: Option<&LazyTimer>,
) -> Try
where
    F: Future<Output = Result<(Response<UpResp>, Lease), SendError>>,
{
    let cs = &cluster.stats;
    let (mut now, mut deadline) = (now, limits.deadline);
    let result = 'wait: {
        if let Some(ex) = exchange.filter(|e| !e.done()) {
            match while_streaming(send.as_mut(), ex, limits.idle, limits.cap, lazy).await {
                Streaming::Sent(r) => break 'wait r,
                Streaming::Fault(f) => return Try::ClientFault(f),
                Streaming::Stalled => {
                    cs.upstream_rq_timeout.inc();
                    outlier::report(cluster, ep, Outcome::Timeout);
                    return Try::Failed(LocalReply::UpstreamTimeout);
                }
                Streaming::Expired => {
                    cs.upstream_rq_timeout.inc();
                    return Try::Failed(LocalReply::UpstreamTimeout);
                }
                Streaming::Done => {
                    now = Instant::now();
                    deadline = earliest(limits.timeout.map(|t| now + t), limits.cap);
                }
            }
        }
        // The per-try timeout's end when it comes before the route deadline (compared as
        // instants: no time-left subtraction, which the deadline would add back).
        let (at, is_per_try) = match (limits.per_try.map(|p| now + p), deadline) {
            (Some(p), Some(d)) if p < d => (Some(p), true),
            (Some(p), None) => (Some(p), true),
            (_, d) => (d, false),
        };
        let deadline = match at {
            Some(at) => Deadline::at_from(at, now, lazy),
            None => Deadline::None,
        };
        match Timed::new(send, deadline).await {
            Ok(r) => r,
            Err(Elapsed) => {
                if is_per_try {
                    cs.upstream_rq_per_try_timeout.inc();
                } else {
                    cs.upstream_rq_timeout.inc();
                }
                outlier::report(cluster, ep, Outcome::Timeout);
                return Try::Failed(LocalReply::UpstreamTimeout);
            }
        }
    };
    // The exchange failed because the client's body did: the upstream is not to blame.
    if let (Err(_), Some(f)) = (&result, exchange.and_then(|e| e.fault())) {
        return Try::ClientFault(f);
    }
    match result {
        Ok((mut resp, lease)) => {
            // No upgrade was asked for, so a 101 would hand the client's connection over.
            // HTTP/1.1 framing was checked by its parser (refused, or normalised and the
            // connection not reused); an HTTP/2 head is checked here.
            let framing = match resp.status() {
                StatusCode::SWITCHING_PROTOCOLS => Framing::Broken,
                _ if matches!(resp.body(), UpResp::H1(_)) => Framing::Clean,
                _ => check_framing(resp.headers_mut()),
            };
            if framing == Framing::Broken {
                return protocol_error(cluster, ep, "response framing");
            }
            let status = resp.status().as_u16();
            cs.upstream_rq_xx.record(status);
            outlier::report(cluster, ep, Outcome::Status(status));
            // After a framing problem the connection is not trusted with another request; it
            // still carries this response to its end (dropping it would cut the body short).
            let mut active = active;
            active.tls_version = lease.tls_version();
            let lease = match framing {
                Framing::Clean => lease,
                _ => lease.no_reuse(),
            };
            Try::Response(resp, Some(lease), active)
        }
        Err(SendError::Protocol(e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream protocol error");
            protocol_error(cluster, ep, "response head")
        }
        Err(SendError::Closed(e)) => {
            cs.upstream_rq_reset.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream connection ended");
            outlier::report(cluster, ep, Outcome::Reset);
            Try::Failed(LocalReply::UpstreamConnectionTermination)
        }
        Err(SendError::Reset(e)) if e.is_parse() => {
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream protocol error");
            protocol_error(cluster, ep, "response head")
        }
        Err(SendError::Tls(e)) => {
            cs.upstream_cx_connect_fail.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream TLS error");
            outlier::report(cluster, ep, Outcome::ConnectFailure);
            Try::Failed(LocalReply::UpstreamTlsError)
        }
        Err(SendError::Connect(e)) => {
            cs.upstream_cx_connect_fail.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream connect error");
            outlier::report(cluster, ep, Outcome::ConnectFailure);
            Try::Failed(LocalReply::ConnectFailure)
        }
        Err(SendError::Reset(e)) => {
            cs.upstream_rq_reset.inc();
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "upstream reset");
            outlier::report(cluster, ep, Outcome::Reset);
            match Failure::of(&e) {
                Failure::RemoteReset => Try::Failed(LocalReply::UpstreamReset),
                Failure::RefusedStream => Try::RefusedStream,
                Failure::GoAway | Failure::ConnectionTermination => {
                    Try::Failed(LocalReply::UpstreamConnectionTermination)
                }
            }
        }
        Err(SendError::ConnectionOverflow | SendError::PendingOverflow) => {
            Try::Failed(LocalReply::Overflow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::pool::Pool;

    /// The size of what `f` returns (a future), without calling it.
    macro_rules! returns {
        ($f:expr; $($t:ty),*) => {{
            #[allow(clippy::extra_unused_lifetimes)]
            fn size<'a, R>(_: impl FnOnce($($t),*) -> R) -> usize {
                std::mem::size_of::<R>()
            }
            size($f)
        }};
    }

    /// The request path's futures, outermost first (each holds the next): what the connection
    /// holds per request is the sum of what each phase keeps across its waits.
    #[test]
    fn request_path_futures_stay_small() {
        let sizes = [
            (
                "proxy::handle",
                returns!(super::super::handle; Request<ReqBody>, Arc<super::super::Conn>, Instant),
            ),
            (
                "forward::forward",
                returns!(forward; Request<ReqBody>, &'a Forward, &'a Route, &'a mut Ctx<'a>),
            ),
            (
                "forward::try_once",
                returns!(try_once::<std::future::Pending<Result<(Response<UpResp>, Lease), SendError>>>; &'a Arc<Cluster>, &'a Arc<Endpoint>, std::pin::Pin<&'a mut std::future::Pending<Result<(Response<UpResp>, Lease), SendError>>>, ActiveRequest, Instant, &'a TryLimits, Option<&'a Arc<Exchange>>, Option<&'a LazyTimer>),
            ),
            (
                "Pool::send",
                returns!(Pool::send; &'a Arc<Pool>, &'a Target<'a>, Request<UpBody>, Instant),
            ),
            (
                "client::send",
                returns!(crate::http1::client::send::<crate::tls::client::UpStream, crate::upstream::pool::Open, UpBody>; Box<crate::upstream::pool::H1Conn>, Request<UpBody>),
            ),
        ];
        for (name, size) in sizes {
            eprintln!("{name}: {size} bytes");
        }
        // Moved by value from the pool up to the connection (each move a copy).
        let response = std::mem::size_of::<Response<RespBody>>();
        eprintln!(
            "Response<RespBody>: {response} bytes (Upstream {}, UpResp {}, Parts {})",
            std::mem::size_of::<Upstream>(),
            std::mem::size_of::<UpResp>(),
            std::mem::size_of::<crate::message::ResponseParts>()
        );
        // The connection's future holds the request's for its life (HTTP/1: no box per
        // request). It was 7 KB (debug build) when each phase was an `async fn` holding its
        // arguments twice and its locals across every wait.
        let handle = sizes[0].1;
        assert!(handle <= 3072, "proxy::handle's future is {handle} bytes");
        // 352 bytes when the upstream body was not boxed.
        assert!(response <= 192, "Response<RespBody> is {response} bytes");
    }
}
