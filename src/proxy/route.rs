//! The route phases, in order: fault injection, local rate limit, then the route's action
//! (direct response, redirect, or forward upstream). A direct response or redirect to a gRPC
//! request goes out trailers-only, as Envoy's router sends both through `sendLocalReply`.
//!
//! A fault delay happens here, before the route timeout starts: that timeout starts when the
//! request is complete and goes upstream, as with Envoy's fault filter placed before the router.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, StatusCode};

use super::local_reply::{text, trailers_only, LocalReply};
use super::{forward, Ctx, RespBody};
use crate::message::{Request, Response};
use crate::router::fault::{Abort, Decision, Fault};
use crate::router::{Action, Redirect, Route};
use crate::stats::ListenerStats;
use crate::stream_info::Flags;
use crate::upstream::body::ReqBody;

/// What [`serve`] decided for a request.
// Returned and matched at once, never held across a wait: boxing the reply would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step<'a> {
    /// Forward it: the caller awaits [`forward::forward`] itself, so the forward phase's future
    /// is made once where it is polled (not moved through this phase's future).
    Forward(&'a crate::router::Forward),
    /// A fault applies: [`faulted`], boxed (rare).
    Faulted(&'a Fault, Decision),
    /// A reply made here (rate limit, direct response, redirect).
    Done(Result<Response<RespBody>, LocalReply>),
}

/// The route's filters and its action for `req` on `route`.
///
/// Nothing here waits but a fault's delay: without one, the request goes to the forward phase
/// or gets its reply at once, so this phase adds nothing to every request's future; a request
/// a fault applies to goes the boxed way ([`faulted`]).
pub(super) fn serve<'a>(req: &Request<ReqBody>, route: &'a Route, cx: &mut Ctx<'_>) -> Step<'a> {
    if let Some(fault) = &route.fault {
        let d = fault.decide(req.headers());
        if d.delay.is_some() || d.abort.is_some() {
            return Step::Faulted(fault, d);
        }
    }
    if let Some(limited) = rate_limited(req, route, cx) {
        return Step::Done(Err(limited));
    }
    match &route.action {
        Action::Forward(fwd) => Step::Forward(fwd),
        Action::Direct { status, body } => Step::Done(Ok(direct(*status, body, cx))),
        Action::Redirect(rd) => Step::Done(Ok(redirect(rd, req, route, cx))),
    }
}

/// [`serve`] for a request a fault applies to: its delay, its abort, then the rest.
pub(super) async fn faulted(
    req: Request<ReqBody>,
    route: &Route,
    cx: &mut Ctx<'_>,
    fault: &Fault,
    d: Decision,
) -> Result<Response<RespBody>, LocalReply> {
    let stats = &*cx.listener.stats;
    let mut _fault_slot = None;
    match fault.enter() {
        None => stats.fault_overflow.inc(),
        Some(slot) => {
            stats.fault_active.inc();
            let _g = ActiveFaultGauge(stats);
            if let Some(delay) = d.delay {
                stats.fault_delays_injected.inc();
                cx.flag(Flags::DI);
                tokio::time::sleep(delay).await;
            }
            if let Some(abort) = d.abort {
                stats.fault_aborts_injected.inc();
                return Err(match abort {
                    Abort::Http(status) => LocalReply::FaultAbort(status),
                    Abort::Grpc(code) => LocalReply::FaultAbortGrpc(code),
                });
            }
            _fault_slot = Some(slot);
        }
    }
    if let Some(limited) = rate_limited(&req, route, cx) {
        return Err(limited);
    }
    match &route.action {
        Action::Forward(fwd) => forward::forward(req, fwd, route, cx).await,
        Action::Direct { status, body } => Ok(direct(*status, body, cx)),
        Action::Redirect(rd) => Ok(redirect(rd, &req, route, cx)),
    }
}

/// The local rate limit: the reply when the request is over it.
fn rate_limited(req: &Request<ReqBody>, route: &Route, cx: &Ctx<'_>) -> Option<LocalReply> {
    let rl = route.rate_limit.as_ref()?;
    let wait = rl.check(req.headers(), cx.client.ip()).err()?;
    cx.listener.stats.rate_limited.inc();
    Some(LocalReply::RateLimited(
        wait.as_secs_f64().ceil().max(1.0) as u64
    ))
}

/// The reply of a route whose action is a direct response.
fn direct(status: StatusCode, body: &Bytes, cx: &mut Ctx<'_>) -> Response<RespBody> {
    if cx.grpc {
        cx.local_status = Some(status.as_u16());
        let message = String::from_utf8_lossy(body);
        return trailers_only(crate::grpc::from_http(status.as_u16()), &message);
    }
    let mut r = text(status, body.clone());
    if body.is_empty() {
        r.headers_mut().remove(CONTENT_TYPE);
    }
    r
}

/// The reply of a route whose action is a redirect.
fn redirect(
    rd: &Redirect,
    req: &Request<ReqBody>,
    route: &Route,
    cx: &mut Ctx<'_>,
) -> Response<RespBody> {
    let scheme = if cx.conn.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let loc = rd.location(route, scheme, cx.host(), req.uri());
    let mut r = if cx.grpc {
        cx.local_status = Some(rd.code().as_u16());
        trailers_only(crate::grpc::from_http(rd.code().as_u16()), "")
    } else {
        let mut r = text(rd.code(), Bytes::new());
        r.headers_mut().remove(CONTENT_TYPE);
        r
    };
    if let Ok(v) = HeaderValue::from_str(&loc) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

struct ActiveFaultGauge<'a>(&'a ListenerStats);

impl Drop for ActiveFaultGauge<'_> {
    fn drop(&mut self) {
        self.0.fault_active.dec();
    }
}
