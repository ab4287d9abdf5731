//! Outlier detection: endpoints that keep failing are ejected for a while (passive health).
//!
//! Envoy's consecutive-error detectors:
//!
//! - `consecutive_5xx` (default 5): 5xx responses and local-origin failures (connect failure,
//!   reset before response headers, per-try/route timeout) in a row;
//! - `consecutive_gateway_failure` (off unless set): 502/503/504 and the same local-origin
//!   failures in a row (Envoy maps connect failures and resets to 503 and timeouts to 504 when
//!   local and external errors are not split, its default).
//!
//! Any other response resets the counters. Reaching a threshold resets that counter and ejects
//! the endpoint unless `max_ejection_percent` of the cluster is already ejected (one endpoint
//! can always be ejected). The ejection lasts `base_ejection_time × multiplier`, capped by
//! `max_ejection_time`; the multiplier grows by one per ejection and shrinks by one per `interval`
//! the endpoint spent not ejected (Envoy's ejection-time back-off). The decay is computed when
//! the next ejection happens, so no timer runs per endpoint.
//!
//! Unlike Envoy, which un-ejects on its next `interval` tick, an endpoint returns exactly when its
//! ejection time is over: availability is a deadline check on the request path. A per-cluster
//! task (started with the health checkers) only logs the return and refreshes the gauges.
//!
//! The request path calls [`report`] after every try: relaxed atomics only, and a load without a
//! store on success when the counters are already zero. Ejecting takes a per-cluster mutex (rare).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::timer::now_ms;
use crate::upstream::cluster::{Cluster, Endpoint};
use tern_config::{self as config, defaults};

/// A cluster's outlier detection settings, compiled once when the cluster is built.
#[derive(Debug)]
pub struct Settings {
    /// Consecutive 5xx / local-origin failures that eject (0 = detector off).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 / local-origin failures that eject (0 = detector off).
    pub consecutive_gateway_failure: u32,
    /// Time not ejected that takes one off the ejection multiplier.
    pub interval_ms: u64,
    /// Ejection time per unit of multiplier.
    pub base_ejection_ms: u64,
    /// Longest ejection (never below `base_ejection_ms`).
    pub max_ejection_ms: u64,
    /// Largest share of the cluster's endpoints ejected at once.
    pub max_ejection_percent: f64,
    /// Serializes ejection decisions so `max_ejection_percent` holds under concurrency.
    eject_lock: Mutex<()>,
    /// Wakes the cluster's sweeper when an endpoint is ejected.
    wake: Arc<Notify>,
}

impl Settings {
    /// Applies the defaults to the configured values.
    pub fn from_config(o: &config::OutlierDetection) -> Settings {
        let ms = |d: &Option<config::Spanned<config::Dur>>, default: Duration| {
            d.as_ref().map_or(default, |d| d.0).as_millis() as u64
        };
        let base = ms(&o.base_ejection_time, defaults::BASE_EJECTION_TIME).max(1);
        Settings {
            consecutive_5xx: o.consecutive_5xx.unwrap_or(defaults::CONSECUTIVE_5XX),
            consecutive_gateway_failure: o.consecutive_gateway_failure.unwrap_or(0),
            interval_ms: ms(&o.interval, defaults::OUTLIER_INTERVAL).max(1),
            base_ejection_ms: base,
            // Envoy: max_ejection_time, or base_ejection_time when that is larger.
            max_ejection_ms: ms(&o.max_ejection_time, defaults::MAX_EJECTION_TIME).max(base),
            max_ejection_percent: o
                .max_ejection_percent
                .as_ref()
                .map_or(defaults::MAX_EJECTION_PERCENT, |p| p.value),
            eject_lock: Mutex::new(()),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The largest useful multiplier: the one whose ejection time reaches the cap.
    fn max_multiplier(&self) -> u32 {
        self.max_ejection_ms
            .div_ceil(self.base_ejection_ms)
            .clamp(1, u32::MAX as u64) as u32
    }

    /// Ejection time for `multiplier`.
    pub fn ejection_ms(&self, multiplier: u32) -> u64 {
        (self.base_ejection_ms.saturating_mul(multiplier as u64)).min(self.max_ejection_ms)
    }
}

/// Whether one more endpoint may be ejected when `ejected` of `total` already are.
pub fn may_eject(ejected: usize, total: usize, max_percent: f64) -> bool {
    ejected == 0 || (100.0 * (ejected + 1) as f64 / total.max(1) as f64) <= max_percent
}

/// Per-endpoint outlier state (carried across reloads with the endpoint).
#[derive(Debug, Default)]
pub struct EndpointOutlier {
    /// Ejected until this [`now_ms`] time; 0 when not ejected.
    pub ejected_until_ms: AtomicU64,
    /// 5xx and local-origin failures in a row.
    consecutive_5xx: AtomicU32,
    /// 502/503/504 and local-origin failures in a row.
    consecutive_gateway: AtomicU32,
    /// Ejection-time multiplier as of `last_end_ms`.
    multiplier: AtomicU32,
    /// When the last ejection ended (or was cut short by a health check); 0 = never ejected.
    last_end_ms: AtomicU64,
    /// Times this endpoint was ejected.
    pub ejections: AtomicU64,
}

impl EndpointOutlier {
    /// True while ejected.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        // No clock read unless an ejection is set (the sweeper clears finished ones).
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && now_ms() < until
    }

    /// True while ejected at time `now` (ms of [`now_ms`]).
    #[inline]
    pub fn is_ejected_at(&self, now: u64) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && now < until
    }

    /// Remaining ejection time at `now`, if ejected.
    pub fn remaining_ms(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Relaxed);
        (until != 0 && now < until).then(|| until - now)
    }

    /// Current consecutive 5xx count.
    pub fn consecutive_5xx(&self) -> u32 {
        self.consecutive_5xx.load(Relaxed)
    }

    /// Current consecutive gateway-failure count.
    pub fn consecutive_gateway_failure(&self) -> u32 {
        self.consecutive_gateway.load(Relaxed)
    }

    /// Multiplier the next ejection would start from at `now` (after the decay).
    fn decayed_multiplier(&self, now: u64, interval_ms: u64) -> u32 {
        let m = self.multiplier.load(Relaxed);
        let last = self.last_end_ms.load(Relaxed);
        if m == 0 || last == 0 {
            return m;
        }
        let intervals = now.saturating_sub(last) / interval_ms.max(1);
        m.saturating_sub(intervals.min(u32::MAX as u64) as u32)
    }
}

/// The result of one try to an endpoint, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this status.
    Status(u16),
    /// The connection could not be opened.
    ConnectFailure,
    /// The connection failed before response headers.
    Reset,
    /// No response headers within the (per-try) timeout.
    Timeout,
}

impl Outcome {
    /// `(counts for consecutive_5xx, counts for consecutive_gateway_failure)`.
    #[inline]
    fn classify(self) -> (bool, bool) {
        match self {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => (true, true),
        }
    }
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_5xx` reached.
    Consecutive5xx,
    /// `consecutive_gateway_failure` reached.
    ConsecutiveGatewayFailure,
}

/// Adds one to `counter` on failure (true when `threshold` was reached: the counter is then
/// reset, so exactly one caller sees it), or resets it on success.
#[inline]
fn count(counter: &AtomicU32, failed: bool, threshold: u32) -> bool {
    if threshold == 0 {
        return false;
    }
    if failed {
        counter.fetch_add(1, Relaxed) + 1 >= threshold && counter.swap(0, Relaxed) >= threshold
    } else {
        if counter.load(Relaxed) != 0 {
            counter.store(0, Relaxed);
        }
        false
    }
}

/// Records the outcome of a try to endpoint `ep` of `cluster`.
#[inline]
pub fn report(cluster: &Cluster, ep: &Endpoint, outcome: Outcome) {
    let state = &ep.state;
    let (is_5xx, is_gateway) = outcome.classify();
    if is_5xx {
        state.rq_error.fetch_add(1, Relaxed);
    }
    let Some(s) = cluster.outlier.as_ref() else {
        return;
    };
    let o = &state.outlier;
    let trip_5xx = count(&o.consecutive_5xx, is_5xx, s.consecutive_5xx);
    let trip_gw = count(
        &o.consecutive_gateway,
        is_gateway,
        s.consecutive_gateway_failure,
    );
    if trip_5xx {
        eject(cluster, ep, Reason::Consecutive5xx, now_ms());
    } else if trip_gw {
        eject(cluster, ep, Reason::ConsecutiveGatewayFailure, now_ms());
    }
}

/// Ejects endpoint `ep` at time `now` unless it is ejected already or `max_ejection_percent`
/// (of the cluster's current endpoints) forbids it. Returns whether it was ejected.
pub fn eject(cluster: &Cluster, ep: &Endpoint, reason: Reason, now: u64) -> bool {
    let Some(s) = cluster.outlier.as_ref() else {
        return false;
    };
    let stats = &cluster.stats;
    let ejected: usize = {
        let _g = s.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
        let o = &ep.state.outlier;
        if o.is_ejected_at(now) {
            return false;
        }
        let hosts = cluster.hosts();
        let ejected = hosts
            .endpoints
            .iter()
            .filter(|e| e.state.outlier.is_ejected_at(now))
            .count();
        if !may_eject(ejected, hosts.endpoints.len(), s.max_ejection_percent) {
            stats.outlier_detection_ejections_overflow.inc();
            tracing::info!(cluster = %cluster.name, endpoint = %ep.address, ?reason,
                ejected, "outlier not ejected: max_ejection_percent reached");
            return false;
        }
        let m = (o.decayed_multiplier(now, s.interval_ms) + 1).min(s.max_multiplier());
        let ms = s.ejection_ms(m);
        let until = now + ms;
        o.multiplier.store(m, Relaxed);
        o.last_end_ms.store(until, Relaxed);
        o.ejected_until_ms.store(until, Relaxed);
        o.ejections.fetch_add(1, Relaxed);
        tracing::warn!(cluster = %cluster.name, endpoint = %ep.address, ?reason,
            ejection_ms = ms, multiplier = m, "outlier ejected");
        ejected + 1
    };
    stats.outlier_detection_ejections_total.inc();
    match reason {
        Reason::Consecutive5xx => stats.outlier_detection_ejections_consecutive_5xx.inc(),
        Reason::ConsecutiveGatewayFailure => stats
            .outlier_detection_ejections_consecutive_gateway_failure
            .inc(),
    }
    let _ = ejected;
    cluster.refresh_membership();
    s.wake.notify_one();
    true
}

/// Ends the ejection of endpoint `ep` early (a passing active health check). Returns whether
/// it was ejected.
pub fn uneject(cluster: &Cluster, ep: &Endpoint, now: u64) -> bool {
    let o = &ep.state.outlier;
    let until = o.ejected_until_ms.load(Relaxed);
    if until == 0 || now >= until {
        return false;
    }
    if o.ejected_until_ms
        .compare_exchange(until, 0, Relaxed, Relaxed)
        .is_err()
    {
        return false;
    }
    o.last_end_ms.store(now, Relaxed);
    tracing::info!(cluster = %cluster.name, endpoint = %ep.address,
        "outlier ejection ended by a passing health check");
    cluster.refresh_membership();
    true
}

/// Notes ejections that are over (log, gauges). Returns the earliest end of a running ejection.
pub fn sweep(cluster: &Cluster, now: u64) -> Option<u64> {
    let mut next: Option<u64> = None;
    let mut changed = false;
    for e in cluster.hosts().endpoints.iter() {
        let o = &e.state.outlier;
        let until = o.ejected_until_ms.load(Relaxed);
        if until == 0 {
            continue;
        }
        if now >= until {
            if o.ejected_until_ms
                .compare_exchange(until, 0, Relaxed, Relaxed)
                .is_ok()
            {
                changed = true;
                tracing::info!(cluster = %cluster.name, endpoint = %e.address, "outlier ejection over; endpoint back in service");
            }
        } else {
            next = Some(next.map_or(until, |n| n.min(until)));
        }
    }
    if changed {
        cluster.refresh_membership();
    }
    next
}

/// Ends every ejection of `cluster` (its outlier detection was removed by a reload).
pub fn clear(cluster: &Cluster) {
    for e in cluster.hosts().endpoints.iter() {
        let o = &e.state.outlier;
        o.consecutive_5xx.store(0, Relaxed);
        o.consecutive_gateway.store(0, Relaxed);
        if o.ejected_until_ms.swap(0, Relaxed) != 0 {
            tracing::info!(cluster = %cluster.name, endpoint = %e.address, "outlier detection removed; endpoint back in service");
        }
    }
    cluster.refresh_membership();
}

/// Runs the cluster's sweeper until `token` is cancelled or the cluster is dropped; without
/// outlier detection, ends ejections carried over from a version that had it.
pub fn spawn_sweeper(cluster: &Arc<Cluster>, token: CancellationToken) {
    let Some(s) = cluster.outlier.as_ref() else {
        clear(cluster);
        return;
    };
    let wake = s.wake.clone();
    let weak: Weak<Cluster> = Arc::downgrade(cluster);
    tokio::spawn(async move {
        loop {
            let now = now_ms();
            let next = match weak.upgrade() {
                Some(c) => sweep(&c, now),
                None => return,
            };
            let wait = next.map_or(Duration::from_secs(3600), |t| {
                Duration::from_millis(t.saturating_sub(now))
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = token.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use tern_config::{Dur, Spanned};

    fn cluster(n: usize, od: config::OutlierDetection) -> Arc<Cluster> {
        let mut spec = crate::upstream::cluster::test_spec(n, 1000);
        spec.outlier_detection = Some(Spanned::unplaced(od));
        Cluster::build(&spec, None, &Stats::default(), None).unwrap()
    }

    /// Endpoint `i` of the cluster's current set.
    fn ep(c: &Cluster, i: usize) -> Arc<Endpoint> {
        c.hosts().endpoints[i].clone()
    }

    fn dur(ms: u64) -> Option<Spanned<Dur>> {
        Some(Spanned::unplaced(Dur(Duration::from_millis(ms))))
    }

    #[test]
    fn defaults_follow_envoy() {
        let s = Settings::from_config(&config::OutlierDetection::default());
        assert_eq!(s.consecutive_5xx, 5);
        assert_eq!(s.consecutive_gateway_failure, 0);
        assert_eq!(s.interval_ms, 10_000);
        assert_eq!(s.base_ejection_ms, 30_000);
        assert_eq!(s.max_ejection_ms, 300_000);
        assert_eq!(s.max_ejection_percent, 10.0);
        assert_eq!(s.ejection_ms(1), 30_000);
        assert_eq!(s.ejection_ms(3), 90_000);
        assert_eq!(s.ejection_ms(50), 300_000);
        assert_eq!(s.max_multiplier(), 10);
        // A base above the maximum raises the maximum (Envoy).
        let s = Settings::from_config(&config::OutlierDetection {
            base_ejection_time: dur(400_000),
            ..Default::default()
        });
        assert_eq!(s.max_ejection_ms, 400_000);
    }

    #[test]
    fn max_ejection_percent_allows_at_least_one() {
        assert!(may_eject(0, 3, 10.0));
        assert!(!may_eject(1, 3, 10.0));
        assert!(may_eject(1, 4, 50.0));
        assert!(!may_eject(2, 4, 50.0));
        assert!(may_eject(0, 1, 0.0));
        assert!(may_eject(9, 10, 100.0));
    }

    #[test]
    fn consecutive_5xx_ejects_and_success_resets() {
        let c = cluster(
            2,
            config::OutlierDetection {
                consecutive_5xx: Some(3),
                max_ejection_percent: Some(Spanned::unplaced(100.0)),
                ..Default::default()
            },
        );
        let o = &ep(&c, 0).state.outlier;
        report(&c, &ep(&c, 0), Outcome::Status(500));
        report(&c, &ep(&c, 0), Outcome::Status(503));
        report(&c, &ep(&c, 0), Outcome::Status(200));
        assert_eq!(o.consecutive_5xx(), 0, "success resets");
        report(&c, &ep(&c, 0), Outcome::Status(404));
        report(&c, &ep(&c, 0), Outcome::ConnectFailure);
        report(&c, &ep(&c, 0), Outcome::Reset);
        assert!(!o.is_ejected());
        report(&c, &ep(&c, 0), Outcome::Timeout);
        assert!(o.is_ejected());
        assert_eq!(o.consecutive_5xx(), 0, "reset when it trips");
        assert_eq!(c.stats.outlier_detection_ejections_total.get(), 1);
        assert_eq!(c.stats.outlier_detection_ejections_consecutive_5xx.get(), 1);
        assert_eq!(c.stats.outlier_detection_ejections_active.get(), 1);
        assert_eq!(c.stats.membership_healthy.get(), 1);
        assert_eq!(ep(&c, 0).state.rq_error.load(Relaxed), 5);
        let rem = o.remaining_ms(now_ms()).unwrap();
        assert!(rem > 29_000 && rem <= 30_000, "{rem}");
        assert!(!ep(&c, 1).state.outlier.is_ejected());
    }

    #[test]
    fn gateway_failures_only_when_configured() {
        let c = cluster(
            2,
            config::OutlierDetection {
                consecutive_5xx: Some(0),
                consecutive_gateway_failure: Some(2),
                max_ejection_percent: Some(Spanned::unplaced(100.0)),
                ..Default::default()
            },
        );
        for _ in 0..10 {
            report(&c, &ep(&c, 0), Outcome::Status(500));
        }
        assert!(
            !ep(&c, 0).state.outlier.is_ejected(),
            "500 is not a gateway failure"
        );
        report(&c, &ep(&c, 0), Outcome::Status(502));
        report(&c, &ep(&c, 0), Outcome::ConnectFailure);
        assert!(ep(&c, 0).state.outlier.is_ejected());
        assert_eq!(
            c.stats
                .outlier_detection_ejections_consecutive_gateway_failure
                .get(),
            1
        );
        // Off by default: 5xx detector only.
        let d = cluster(2, config::OutlierDetection::default());
        for _ in 0..4 {
            report(&d, &ep(&d, 1), Outcome::Status(503));
        }
        assert!(!ep(&d, 1).state.outlier.is_ejected());
        report(&d, &ep(&d, 1), Outcome::Status(503));
        assert!(ep(&d, 1).state.outlier.is_ejected());
    }

    #[test]
    fn max_percent_limits_ejections() {
        let c = cluster(
            4,
            config::OutlierDetection {
                max_ejection_percent: Some(Spanned::unplaced(25.0)),
                ..Default::default()
            },
        );
        let now = now_ms();
        assert!(eject(&c, &ep(&c, 0), Reason::Consecutive5xx, now));
        assert!(
            !eject(&c, &ep(&c, 0), Reason::Consecutive5xx, now),
            "already ejected"
        );
        assert!(!eject(&c, &ep(&c, 1), Reason::Consecutive5xx, now));
        assert_eq!(c.stats.outlier_detection_ejections_overflow.get(), 1);
        let available = c
            .hosts()
            .endpoints
            .iter()
            .filter(|e| e.state.available())
            .count();
        assert_eq!(available, 3);
    }

    #[test]
    fn ejection_time_grows_and_decays_per_interval() {
        let c = cluster(
            1,
            config::OutlierDetection {
                interval: dur(1_000),
                base_ejection_time: dur(100),
                max_ejection_time: dur(250),
                ..Default::default()
            },
        );
        let o = &ep(&c, 0).state.outlier;
        let t0 = 1_000_000;
        assert!(eject(&c, &ep(&c, 0), Reason::Consecutive5xx, t0));
        assert_eq!(o.remaining_ms(t0), Some(100));
        assert!(!o.is_ejected_at(t0 + 100), "returns when the time is over");
        // Second ejection right after: 2 × base.
        assert!(eject(&c, &ep(&c, 0), Reason::Consecutive5xx, t0 + 150));
        assert_eq!(o.remaining_ms(t0 + 150), Some(200));
        // Third: 3 × base capped at 250.
        assert!(eject(&c, &ep(&c, 0), Reason::Consecutive5xx, t0 + 400));
        assert_eq!(o.remaining_ms(t0 + 400), Some(250));
        // Ended at t0+650; two intervals healthy take the multiplier from 3 to 1, +1 = 2.
        assert!(eject(
            &c,
            &ep(&c, 0),
            Reason::Consecutive5xx,
            t0 + 650 + 2_000
        ));
        assert_eq!(o.remaining_ms(t0 + 2_650), Some(200));
        // A health check cuts it short.
        assert!(uneject(&c, &ep(&c, 0), t0 + 2_700));
        assert!(!o.is_ejected_at(t0 + 2_701));
        assert!(!uneject(&c, &ep(&c, 0), t0 + 2_702));
        assert_eq!(o.ejections.load(Relaxed), 4);
    }

    #[test]
    fn sweep_reports_the_next_return_and_clears_finished_ejections() {
        let c = cluster(
            3,
            config::OutlierDetection {
                base_ejection_time: dur(100),
                max_ejection_percent: Some(Spanned::unplaced(100.0)),
                ..Default::default()
            },
        );
        let now = now_ms();
        eject(&c, &ep(&c, 0), Reason::Consecutive5xx, now);
        eject(&c, &ep(&c, 1), Reason::Consecutive5xx, now + 50);
        assert_eq!(c.stats.outlier_detection_ejections_active.get(), 2);
        assert_eq!(sweep(&c, now + 10), Some(now + 100));
        assert_eq!(sweep(&c, now + 120), Some(now + 150));
        assert_eq!(ep(&c, 0).state.outlier.ejected_until_ms.load(Relaxed), 0);
        assert_eq!(sweep(&c, now + 200), None);
    }
}
