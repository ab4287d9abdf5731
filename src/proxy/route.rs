//! The route phases, in order: fault injection, local rate limit, then the route's action
//! (direct response, redirect, or forward upstream). A direct response or redirect to a gRPC
//! request goes out trailers-only, as Envoy's router sends both through `sendLocalReply`.
//!
//! A fault delay happens here, before the route timeout starts: that timeout starts when the
//! request is complete and goes upstream, as with Envoy's fault filter placed before the router.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Request, Response};

use super::local_reply::{text, trailers_only, LocalReply};
use super::{forward, Ctx, RespBody};
use crate::router::fault::Abort;
use crate::router::{Action, Route};
use crate::stats::ListenerStats;
use crate::stream_info::Flags;
use crate::upstream::body::ReqBody;

/// Serves `req` on `route`: the route's filters, then its action.
pub(super) async fn serve(
    req: Request<ReqBody>,
    route: &Route,
    cx: &mut Ctx<'_>,
) -> Result<Response<RespBody>, LocalReply> {
    let stats = &*cx.listener.stats;
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
        }
    }
    if let Some(rl) = &route.rate_limit {
        if let Err(wait) = rl.check(req.headers(), cx.client.ip()) {
            stats.rate_limited.inc();
            return Err(LocalReply::RateLimited(
                wait.as_secs_f64().ceil().max(1.0) as u64
            ));
        }
    }
    match &route.action {
        Action::Direct { status, body } if cx.grpc => {
            cx.local_status = Some(status.as_u16());
            let message = String::from_utf8_lossy(body);
            Ok(trailers_only(
                crate::grpc::from_http(status.as_u16()),
                &message,
            ))
        }
        Action::Direct { status, body } => {
            let mut r = text(*status, body.clone());
            if body.is_empty() {
                r.headers_mut().remove(CONTENT_TYPE);
            }
            Ok(r)
        }
        Action::Redirect(rd) => {
            let scheme = if cx.conn.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let loc = rd.location(route, scheme, &cx.host, req.uri());
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
            Ok(r)
        }
        Action::Forward(fwd) => forward::forward(req, fwd, route, cx).await,
    }
}

struct ActiveFaultGauge<'a>(&'a ListenerStats);

impl Drop for ActiveFaultGauge<'_> {
    fn drop(&mut self) {
        self.0.fault_active.dec();
    }
}
