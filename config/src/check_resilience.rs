//! Checks of the resilience settings (retries, breakers, outlier detection, health checks,
//! faults, rate limits, weighted clusters): values in range and fields that go together.

use std::path::PathBuf;

use super::diag::{codes, Diagnostic};
use super::model::*;
use super::value::{Pos, Spanned};
use super::Config;

/// The retry conditions `retry_on` accepts.
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The `retry_on` conditions read from a gRPC response's `grpc-status` (Envoy's
/// `x-envoy-retry-grpc-on` values, accepted in `retry_on` as Envoy's route config does).
pub const GRPC_RETRY_ON: &[&str] = &[
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

struct Ck<'a> {
    files: &'a [PathBuf],
    file: usize,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ck<'_> {
    fn bad(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(
            codes::BAD_VALUE,
            &self.files[self.file],
            pos,
            msg,
        ));
    }

    fn percent(&mut self, what: &str, p: &Option<Spanned<f64>>) {
        if let Some(p) = p {
            if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
                self.bad(
                    p.pos,
                    format!("{what} {} must be between 0 and 100", p.value),
                );
            }
        }
    }

    fn at_least_one(&mut self, what: &str, v: &Option<Spanned<u32>>) {
        if let Some(v) = v {
            if v.value == 0 {
                self.bad(v.pos, format!("{what} must be at least 1"));
            }
        }
    }

    fn retry(&mut self, rp: &Spanned<RetryPolicy>) {
        if let Some(on) = &rp.retry_on {
            for c in on.split(',').map(str::trim) {
                if !RETRY_ON.contains(&c) {
                    let mut d = Diagnostic::error(
                        codes::BAD_VALUE,
                        &self.files[self.file],
                        on.pos,
                        format!(
                            "retry_on condition {c:?} is not known; use {}",
                            RETRY_ON.join(", ")
                        ),
                    );
                    if let Some(best) = RETRY_ON
                        .iter()
                        .map(|k| (strsim::jaro_winkler(k, c), k))
                        .filter(|(s, _)| *s > 0.8)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                    {
                        d = d.with_help(format!("did you mean `{}`?", best.1));
                    }
                    self.diags.push(d);
                }
            }
            if on.contains("retriable-status-codes") && rp.retriable_status_codes.is_empty() {
                self.bad(
                    on.pos,
                    "retry_on has retriable-status-codes but retriable_status_codes is empty",
                );
            }
        }
        for c in &rp.retriable_status_codes {
            if !(100..=599).contains(&c.value) {
                self.bad(
                    c.pos,
                    format!("status {} is not an HTTP status (100-599)", c.value),
                );
            }
        }
        if let Some(t) = &rp.per_try_timeout {
            if t.0.is_zero() {
                self.bad(t.pos, "per_try_timeout must be greater than 0 (leave it out to use the route timeout)");
            }
        }
        if let Some(b) = &rp.retry_back_off {
            if let Some(base) = &b.base_interval {
                if base.0.is_zero() {
                    self.bad(base.pos, "base_interval must be greater than 0");
                }
                if let Some(max) = &b.max_interval {
                    if max.0 < base.0 {
                        self.bad(
                            max.pos,
                            format!(
                                "max_interval {} is below base_interval {}",
                                max.value, base.value
                            ),
                        );
                    }
                }
            }
        }
    }

    fn fault(&mut self, f: &Spanned<Fault>) {
        if f.delay.is_none() && f.abort.is_none() {
            self.bad(f.pos, "fault needs delay or abort");
        }
        if let Some(d) = &f.delay {
            self.percent("delay percentage", &d.percentage);
            if d.fixed_delay.is_none() && !f.header_controlled {
                self.bad(
                    d.pos,
                    "delay needs fixed_delay (or header_controlled: true)",
                );
            }
        }
        if let Some(a) = &f.abort {
            self.percent("abort percentage", &a.percentage);
            match (&a.http_status, &a.grpc_status) {
                (Some(s), _) if !(200..=599).contains(&s.value) => self.bad(
                    s.pos,
                    format!("abort http_status {} must be 200-599", s.value),
                ),
                (_, Some(g)) if g.value > 16 => self.bad(
                    g.pos,
                    format!("abort grpc_status {} must be a gRPC status (0-16)", g.value),
                ),
                (Some(_), Some(g)) => {
                    self.bad(g.pos, "abort takes http_status or grpc_status, not both")
                }
                (None, None) if !f.header_controlled => self.bad(
                    a.pos,
                    "abort needs http_status or grpc_status (or header_controlled: true)",
                ),
                _ => {}
            }
        }
    }

    fn rate_limit(&mut self, r: &Spanned<RateLimit>) {
        if r.requests_per_unit.value == 0 {
            self.bad(
                r.requests_per_unit.pos,
                "requests_per_unit must be at least 1",
            );
        }
        self.at_least_one("burst", &r.burst);
        if let Some(k) = &r.key {
            if k.header.is_some() == k.source_ip {
                self.bad(
                    k.pos,
                    "rate limit key needs exactly one of header or source_ip: true",
                );
            }
            if let Some(h) = &k.header {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    self.bad(h.pos, format!("{:?} is not a valid header name", h.value));
                }
            }
        }
    }

    fn action(&mut self, a: &Spanned<RouteAction>) {
        match (&a.cluster, &a.weighted_clusters) {
            (Some(_), Some(_)) | (None, None) => self.bad(
                a.pos,
                "route needs exactly one of cluster or weighted_clusters",
            ),
            (None, Some(w))
                if w.clusters.is_empty() || w.clusters.iter().all(|c| c.weight == 0) =>
            {
                self.bad(
                    w.pos,
                    "weighted_clusters needs at least one cluster with weight above 0",
                )
            }
            _ => {}
        }
        if let Some(rp) = &a.retry_policy {
            self.retry(rp);
        }
        for h in &a.hash_policy {
            let n = h.header.is_some() as u8
                + h.cookie.is_some() as u8
                + h.connection_properties.is_some() as u8;
            if n != 1 {
                self.bad(h.pos, "hash_policy entry needs exactly one of header, cookie or connection_properties");
            }
        }
    }

    fn cluster(&mut self, c: &Cluster) {
        if let Some(cb) = &c.circuit_breakers {
            self.at_least_one("max_connections", &cb.max_connections);
            self.at_least_one("max_pending_requests", &cb.max_pending_requests);
            self.at_least_one("max_requests", &cb.max_requests);
            if let Some(b) = &cb.retry_budget {
                self.percent("budget_percent", &b.budget_percent);
            }
        }
        if let Some(o) = &c.outlier_detection {
            self.percent("max_ejection_percent", &o.max_ejection_percent);
            for t in [&o.interval, &o.base_ejection_time, &o.max_ejection_time]
                .into_iter()
                .flatten()
            {
                if t.0.is_zero() {
                    self.bad(t.pos, "must be greater than 0");
                }
            }
            if let Some(max) = &o.max_ejection_time {
                let base = o
                    .base_ejection_time
                    .as_ref()
                    .map_or(crate::defaults::BASE_EJECTION_TIME, |b| b.0);
                if !max.0.is_zero() && max.0 < base {
                    self.bad(
                        max.pos,
                        format!(
                            "max_ejection_time {} is below base_ejection_time {}",
                            max.value,
                            super::value::Dur(base)
                        ),
                    );
                }
            }
        }
        if let Some(second) = c.health_checks.get(1) {
            self.bad(
                second.pos,
                "only one health check per cluster is supported (each endpoint has one health verdict)",
            );
        }
        for hc in &c.health_checks {
            let kinds = [
                hc.http.is_some(),
                hc.tcp.is_some(),
                hc.grpc_health_check.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                self.bad(
                    hc.pos,
                    "health check needs exactly one of http, tcp or grpc_health_check",
                );
            }
            if let Some(g) = &hc.grpc_health_check {
                if let Some(a) = &g.authority {
                    if a.is_empty() || http::uri::Authority::try_from(a.as_str()).is_err() {
                        self.bad(
                            hc.pos,
                            format!("grpc_health_check authority {a:?} is not a valid authority"),
                        );
                    }
                }
            }
            for t in [&hc.timeout, &hc.interval] {
                if t.0.is_zero() {
                    self.bad(t.pos, "must be greater than 0");
                }
            }
            if hc.timeout.0 > hc.interval.0 {
                self.bad(
                    hc.timeout.pos,
                    format!(
                        "timeout {} is longer than interval {}",
                        hc.timeout.value, hc.interval.value
                    ),
                );
            }
            for t in [&hc.unhealthy_threshold, &hc.healthy_threshold] {
                if t.value == 0 {
                    self.bad(t.pos, "threshold must be at least 1");
                }
            }
            if let Some(h) = &hc.http {
                if !h.path.starts_with('/') {
                    self.bad(
                        h.path.pos,
                        format!("health check path {:?} must start with /", h.path.value),
                    );
                } else if http::uri::PathAndQuery::try_from(h.path.as_str()).is_err() {
                    self.bad(
                        h.path.pos,
                        format!(
                            "health check path {:?} is not a valid request path",
                            h.path.value
                        ),
                    );
                }
                if let Some(host) = &h.host {
                    if host.is_empty() || http::HeaderValue::from_str(host).is_err() {
                        self.bad(
                            hc.pos,
                            format!("health check host {host:?} is not a valid Host header value"),
                        );
                    }
                }
                for s in &h.expected_statuses {
                    if !(100..=599).contains(&s.value) {
                        self.bad(
                            s.pos,
                            format!("status {} is not an HTTP status (100-599)", s.value),
                        );
                    }
                }
            }
        }
    }
}

/// Adds errors for out-of-range or inconsistent resilience settings.
pub fn check(cfg: &Config, diags: &mut Vec<Diagnostic>) {
    for rc in &cfg.route_configs {
        let mut ck = Ck {
            files: &cfg.files,
            file: rc.file,
            diags,
        };
        for vh in &rc.value.virtual_hosts {
            if let Some(rp) = &vh.retry_policy {
                ck.retry(rp);
            }
            for f in vh
                .fault
                .iter()
                .chain(vh.routes.iter().filter_map(|r| r.fault.as_ref()))
            {
                ck.fault(f);
            }
            for r in vh
                .rate_limit
                .iter()
                .chain(vh.routes.iter().filter_map(|r| r.rate_limit.as_ref()))
            {
                ck.rate_limit(r);
            }
            for r in &vh.routes {
                if let Some(a) = &r.route {
                    ck.action(a);
                }
            }
        }
    }
    for c in &cfg.clusters {
        let mut ck = Ck {
            files: &cfg.files,
            file: c.file,
            diags,
        };
        ck.cluster(&c.value);
    }
}
