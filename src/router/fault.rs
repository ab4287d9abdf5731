//! Fault injection: delays and aborts for a share of requests, optionally driven by headers.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use rand::Rng;

use tern_config as config;

use crate::message::Fields;

/// Header: delay this request by N milliseconds.
pub const DELAY_HEADER: &str = "x-tern-fault-delay-request";
/// Header: percentage for the header-requested delay.
pub const DELAY_PCT_HEADER: &str = "x-tern-fault-delay-request-percentage";
/// Header: abort this request with status N.
pub const ABORT_HEADER: &str = "x-tern-fault-abort-request";
/// Header: abort this request with gRPC status N (when it has no `ABORT_HEADER`).
pub const ABORT_GRPC_HEADER: &str = "x-tern-fault-abort-grpc-request";
/// Header: percentage for the header-requested abort.
pub const ABORT_PCT_HEADER: &str = "x-tern-fault-abort-request-percentage";

/// A compiled `fault` block; counts its own active faults.
#[derive(Debug)]
pub struct Fault {
    delay: Option<(Option<Duration>, f64)>,
    abort: Option<(Option<Abort>, f64)>,
    max_active: Option<u32>,
    header_controlled: bool,
    active: AtomicU32,
}

/// What to do to one request.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this instead of forwarding.
    pub abort: Option<Abort>,
}

/// How an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// This HTTP status (mapped for a gRPC request).
    Http(StatusCode),
    /// HTTP 200 with this gRPC status (Envoy's fault filter `grpc_status`): a gRPC request gets
    /// it trailers-only, another request a plain 200.
    Grpc(u8),
}

/// Holds a fault's active count up while the faulted request runs.
pub struct ActiveFault<'a>(&'a AtomicU32);

impl Drop for ActiveFault<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn header<T: std::str::FromStr>(h: &Fields, name: &str) -> Option<T> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn roll(pct: f64) -> bool {
    pct >= 100.0 || (pct > 0.0 && rand::rng().random_range(0.0..100.0) < pct)
}

impl Fault {
    /// Compiles a checked `fault` block.
    pub fn compile(f: &config::Fault) -> Fault {
        let pct = |p: &Option<config::Spanned<f64>>| p.as_ref().map_or(100.0, |p| p.value);
        Fault {
            delay: f
                .delay
                .as_ref()
                .map(|d| (d.fixed_delay.as_ref().map(|x| x.0), pct(&d.percentage))),
            abort: f.abort.as_ref().map(|a| {
                let http = a
                    .http_status
                    .as_ref()
                    .and_then(|s| StatusCode::from_u16(s.value).ok())
                    .map(Abort::Http);
                let grpc = a
                    .grpc_status
                    .as_ref()
                    .and_then(|g| u8::try_from(g.value).ok())
                    .map(Abort::Grpc);
                (http.or(grpc), pct(&a.percentage))
            }),
            max_active: f.max_active_faults,
            header_controlled: f.header_controlled,
            active: AtomicU32::new(0),
        }
    }

    /// Decides for one request. Header values apply only with `header_controlled`, and a header
    /// percentage never exceeds the configured one.
    pub fn decide(&self, h: &Fields) -> Decision {
        let mut d = Decision::default();
        if let Some((fixed, pct)) = self.delay {
            let (delay, p) = match (self.header_controlled, header::<u64>(h, DELAY_HEADER)) {
                (true, Some(ms)) => (
                    Some(Duration::from_millis(ms)),
                    header::<f64>(h, DELAY_PCT_HEADER).map_or(pct, |hp| hp.min(pct)),
                ),
                _ => (fixed, pct),
            };
            if delay.is_some() && roll(p) {
                d.delay = delay;
            }
        }
        if let Some((status, pct)) = self.abort {
            // As Envoy's headers: an HTTP status first, else a gRPC one.
            let asked = match self.header_controlled {
                true => header::<u16>(h, ABORT_HEADER)
                    .map(|code| {
                        StatusCode::from_u16(code)
                            .ok()
                            .filter(|s| s.as_u16() >= 200)
                            .map(Abort::Http)
                    })
                    .or_else(|| {
                        header::<u8>(h, ABORT_GRPC_HEADER)
                            .map(|c| (c <= crate::grpc::MAX_CODE).then_some(Abort::Grpc(c)))
                    }),
                false => None,
            };
            let (status, p) = match asked {
                Some(a) => (
                    a,
                    header::<f64>(h, ABORT_PCT_HEADER).map_or(pct, |hp| hp.min(pct)),
                ),
                None => (status, pct),
            };
            if status.is_some() && roll(p) {
                d.abort = status;
            }
        }
        d
    }

    /// Claims an active-fault slot; `None` when `max_active_faults` is reached.
    pub fn enter(&self) -> Option<ActiveFault<'_>> {
        let n = self.active.fetch_add(1, Relaxed);
        if self.max_active.is_some_and(|m| n >= m) {
            self.active.fetch_sub(1, Relaxed);
            return None;
        }
        Some(ActiveFault(&self.active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(yaml: &str) -> Fault {
        Fault::compile(&serde_saphyr::from_str(yaml).unwrap())
    }

    #[test]
    fn configured_and_header_faults() {
        let f = fault("abort: { http_status: 503, percentage: 100 }\n");
        assert_eq!(
            f.decide(&Fields::new()).abort,
            Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE))
        );
        let f = fault("abort: { grpc_status: 14 }\n");
        assert_eq!(f.decide(&Fields::new()).abort, Some(Abort::Grpc(14)));
        let f = fault("abort: { http_status: 503, percentage: 0 }\ndelay: { fixed_delay: 1s, percentage: 0 }\n");
        assert_eq!(f.decide(&Fields::new()), Decision::default());

        let f = fault(
            "header_controlled: true\nabort: { percentage: 100 }\ndelay: { percentage: 100 }\n",
        );
        let mut h = Fields::new();
        assert_eq!(f.decide(&h), Decision::default());
        h.insert(ABORT_HEADER, "418".parse().unwrap());
        h.insert(DELAY_HEADER, "20".parse().unwrap());
        let d = f.decide(&h);
        assert_eq!(d.abort, Some(Abort::Http(StatusCode::IM_A_TEAPOT)));
        assert_eq!(d.delay, Some(Duration::from_millis(20)));
        // A gRPC status by header, when no HTTP status is asked for (Envoy's order).
        h.insert(ABORT_GRPC_HEADER, "8".parse().unwrap());
        assert_eq!(
            f.decide(&h).abort,
            Some(Abort::Http(StatusCode::IM_A_TEAPOT))
        );
        h.remove(ABORT_HEADER);
        assert_eq!(f.decide(&h).abort, Some(Abort::Grpc(8)));
        h.insert(ABORT_GRPC_HEADER, "17".parse().unwrap());
        assert_eq!(f.decide(&h).abort, None, "not a gRPC status");
        // Headers are ignored unless the config enables them.
        let f = fault("abort: { percentage: 100 }\n");
        assert_eq!(f.decide(&h).abort, None);
    }

    #[test]
    fn header_percentage_is_capped_by_config() {
        let f = fault("header_controlled: true\nabort: { percentage: 0 }\n");
        let mut h = Fields::new();
        h.insert(ABORT_HEADER, "500".parse().unwrap());
        h.insert(ABORT_PCT_HEADER, "100".parse().unwrap());
        assert_eq!(f.decide(&h).abort, None);
    }

    #[test]
    fn max_active_faults() {
        let f = fault("max_active_faults: 1\nabort: { http_status: 500 }\n");
        let a = f.enter();
        assert!(a.is_some());
        assert!(f.enter().is_none());
        drop(a);
        assert!(f.enter().is_some());
    }
}
