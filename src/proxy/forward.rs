//! The forward phase: admission to the cluster, the request head as the upstream gets it, and
//! the tries, each bounded by the per-try timeout and the route deadline, with the retry
//! decisions of [`crate::router::retry`] (policy, replay body, outcome, back-off, budget).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Incoming};

use super::local_reply::LocalReply;
use super::response::{Finish, IdleTimer, Upstream};
use super::{upgrade, Ctx, RespBody};
use crate::headers;
use crate::router::retry::{self, BodyPlan, TryOutcome};
use crate::router::{Forward, Route};
use crate::stream_info::{Flags, SpanIds};
use crate::timer::{Deadline, Elapsed, LazyTimer, Timed};
use crate::upstream::cluster::{ActiveRequest, Cluster, Endpoint};
use crate::upstream::outlier::{self, Outcome};
use crate::upstream::pool::{Counted, Lease, SendError, Target, UpBody};

/// Forwards `req` to the route's cluster and returns the response to stream back.
pub(super) async fn forward(
    req: Request<Incoming>,
    fwd: &Forward,
    route: &Route,
    cx: &mut Ctx<'_>,
) -> Result<Response<RespBody>, LocalReply> {
    let cluster = fwd.cluster();
    let cs = &cluster.stats;
    cx.record(|i| i.upstream_cluster = Some(cluster.name.clone()));
    cs.upstream_rq_total.inc();
    admit(cluster)?;
    let hash = if cluster.uses_hash() {
        fwd.hash(req.headers(), cx.conn.peer.ip())
    } else {
        None
    };

    let mut req = req;
    let upgrade = if upgrade::is_upgrade(req.headers()) {
        req.headers()
            .get(http::header::UPGRADE)
            .cloned()
            .map(|proto| (proto, hyper::upgrade::on(&mut req)))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    // HTTP/1: this future is polled by the connection's task, which runs the lazy deadlines.
    let lazy = (parts.version <= Version::HTTP_11).then_some(&cx.conn.timer);
    upstream_head(&mut parts, fwd, route, cx)?;
    if let Some((proto, on_upgrade)) = upgrade {
        // Boxed: rare, and its future would otherwise enlarge every request's.
        return Box::pin(upgrade::forward(
            cluster, hash, parts, proto, on_upgrade, cx,
        ))
        .await;
    }

    let policy = retry::policy_for(fwd.retry.as_deref(), &parts.method);
    let declared = || {
        parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    };
    let plan = retry::body_plan(
        policy.is_some(),
        body.is_end_stream(),
        policy.and_then(|_| declared()),
        fwd.buffer_limit,
    );
    let mut stream_body = None;
    let replay: Option<Bytes> = match plan {
        BodyPlan::Empty => Some(Bytes::new()),
        BodyPlan::Buffer => {
            // Boxed for the same reason as the upgrade path: only retried requests with a body.
            let collected = Box::pin(Limited::new(body, fwd.buffer_limit as usize).collect())
                .await
                .map_err(|_| LocalReply::BadRequestBody)?;
            Some(collected.to_bytes())
        }
        BodyPlan::Stream => {
            stream_body = Some(body);
            None
        }
    };
    if let Some(b) = &replay {
        cx.record(|i| i.bytes_received = b.len() as u64);
    }
    let max_retries = match (policy, &replay) {
        (Some(p), Some(_)) => p.num_retries,
        _ => 0,
    };

    // One clock read per try: it is the try's start, and the route deadline counts from the first.
    let mut now = Instant::now();
    let deadline = fwd.timeout.map(|t| now + t);
    let mut head = Some(parts);
    let mut prev: Option<Arc<Endpoint>> = None;
    let mut retries = 0u32;
    loop {
        let Some(ep) = cluster.pick(hash, prev.as_deref()) else {
            cs.upstream_rq_no_healthy.inc();
            return Err(LocalReply::NoHealthyUpstream);
        };
        cx.record(|i| i.upstream_host = Some(ep.address.clone()));
        let body: UpBody = match &replay {
            Some(b) => Either::Right(Full::new(b.clone())),
            None => {
                let b = stream_body.take().expect("single try streams the body");
                Either::Left(Counted::new(b, cx.rec.clone()))
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
        let result = try_once(cluster, &ep, upstream_req, per_try, sent, deadline, lazy).await;
        if let Try::Response(..) = &result {
            cx.record(|i| i.upstream_service_time = Some(sent.elapsed()));
        }

        let retryable = policy.is_some_and(|p| {
            let outcome = result.outcome();
            // The clock is read only for the one outcome whose retry depends on it.
            let passed =
                outcome == TryOutcome::Timeout && deadline.is_some_and(|d| Instant::now() >= d);
            p.retries(outcome, passed)
        });
        let give_up = !retryable || retries >= max_retries;
        if !give_up && !cluster.retry_allowed() {
            cs.upstream_rq_retry_overflow.inc();
        } else if !give_up {
            let backoff = policy.map_or(Duration::ZERO, |p| p.backoff(retries + 1));
            // The clock is read only when there is a deadline to cut the back-off at.
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let backoff = retry::backoff_within(backoff, remaining);
            drop(result);
            tokio::time::sleep(backoff).await;
            now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                cs.upstream_rq_timeout.inc();
                return Err(LocalReply::UpstreamTimeout);
            }
            retries += 1;
            cs.upstream_rq_retry.inc();
            prev = Some(ep);
            continue;
        }
        if retryable {
            cs.upstream_rq_retry_limit_exceeded.inc();
            cx.flag(Flags::URX);
        }
        return match result {
            Try::Response(resp, lease, active) => {
                if retries > 0 && !retryable {
                    cs.upstream_rq_retry_success.inc();
                }
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let listener = cx.listener;
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
                            start: cx.start,
                            sent,
                            listener: listener.stats.clone(),
                            cluster: cluster.stats.clone(),
                            route: route.stats.clone(),
                            rec: None,
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
    parts: &mut http::request::Parts,
    fwd: &Forward,
    route: &Route,
    cx: &Ctx<'_>,
) -> Result<(), LocalReply> {
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
            if let Ok(v) = HeaderValue::from_str(&cx.host) {
                parts.headers.insert(HOST, v);
            }
        }
        None => {}
    }
    headers::append_forwarded(&mut parts.headers, &cx.conn.peer_ip);
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
enum Try {
    Response(Response<Incoming>, Lease, ActiveRequest),
    Failed(LocalReply),
}

impl Try {
    /// The outcome, as the retry policy sees it.
    fn outcome(&self) -> TryOutcome {
        match self {
            Try::Response(r, ..) => TryOutcome::Status(r.status().as_u16()),
            Try::Failed(LocalReply::ConnectFailure) => TryOutcome::ConnectFailure,
            Try::Failed(LocalReply::UpstreamReset) => TryOutcome::Reset,
            Try::Failed(LocalReply::UpstreamTimeout) => TryOutcome::Timeout,
            Try::Failed(_) => TryOutcome::Refused,
        }
    }
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

/// One upstream try to endpoint `ep`, bounded by the per-try timeout and the route deadline.
async fn try_once(
    cluster: &Arc<Cluster>,
    ep: &Arc<Endpoint>,
    req: Request<UpBody>,
    per_try: Option<Duration>,
    now: Instant,
    deadline: Option<Instant>,
    lazy: Option<&LazyTimer>,
) -> Try {
    let cs = &cluster.stats;
    let active = ActiveRequest::start(cluster, ep.clone());
    let target = Target {
        addr: ep.addr,
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
            outlier::report(cluster, ep, Outcome::Timeout);
            return Try::Failed(LocalReply::UpstreamTimeout);
        }
    };
    match result {
        Ok((resp, lease)) => {
            let status = resp.status().as_u16();
            cs.upstream_rq_xx.record(status);
            outlier::report(cluster, ep, Outcome::Status(status));
            Try::Response(resp, lease, active)
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
            Try::Failed(LocalReply::UpstreamReset)
        }
        Err(SendError::ConnectionOverflow | SendError::PendingOverflow) => {
            Try::Failed(LocalReply::Overflow)
        }
    }
}
