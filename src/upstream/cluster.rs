//! Upstream clusters: endpoints, their balancer, circuit-breaker limits, and per-endpoint state.
//!
//! A cluster whose configuration did not change is carried into the next snapshot as the same
//! `Arc`. A changed cluster keeps the [`EndpointState`] (connection pool, health and outlier
//! state, counters) of every endpoint that is still configured, matched by address, so a reload
//! neither drops warm connections nor forgets that an endpoint is unhealthy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stats::{ClusterStats, Stats};
use crate::upstream::health::{self, EndpointHealth};
use crate::upstream::lb::Balancer;
use crate::upstream::outlier::{self, EndpointOutlier};
use crate::upstream::pool::Pool;
use tern_config as config;

/// State of one endpoint that outlives snapshots.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Keep-alive connections.
    pub pool: Arc<Pool>,
    /// Requests in flight.
    pub active: AtomicU64,
    /// Requests sent.
    pub rq_total: AtomicU64,
    /// Requests that failed (5xx, connect failure, reset, timeout).
    pub rq_error: AtomicU64,
    /// Set while active health checking considers it unhealthy.
    pub hc_failed: AtomicBool,
    /// Outlier detection state.
    pub outlier: EndpointOutlier,
    /// Active health checking state (counters in a row, pending first check).
    pub health: EndpointHealth,
}

impl EndpointState {
    /// True when neither health checking nor outlier detection has taken it out.
    #[inline]
    pub fn available(&self) -> bool {
        !self.hc_failed.load(Relaxed) && !self.outlier.is_ejected()
    }
}

/// One upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The address when it is an IP literal (no DNS lookup per connect).
    pub resolved: Option<SocketAddr>,
    /// Relative weight.
    pub weight: u32,
    /// Shared state, carried across reloads by address.
    pub state: Arc<EndpointState>,
}

/// Circuit-breaker limits (Envoy's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open connections.
    pub max_connections: i64,
    /// Requests waiting for a new connection.
    pub max_pending_requests: i64,
    /// Requests in flight.
    pub max_requests: i64,
    /// Retries in flight (when no budget is set).
    pub max_retries: i64,
    /// `(percent of active requests, minimum)` retry budget.
    pub retry_budget: Option<(f64, i64)>,
}

impl Limits {
    /// Whether one more retry may start while `open` retries and `active` requests are in
    /// flight: the budget's share of `active` (at least its minimum) when a budget is set, else
    /// `max_retries` (Envoy's breaker semantics).
    pub fn retry_allowed(&self, open: i64, active: i64) -> bool {
        let limit = match self.retry_budget {
            Some((pct, min)) => min.max((active as f64 * pct / 100.0) as i64),
            None => self.max_retries,
        };
        open < limit
    }

    fn from_config(cb: Option<&config::CircuitBreakers>) -> Limits {
        let get = |v: Option<&config::Spanned<u32>>, d: u32| v.map_or(d, |s| s.value) as i64;
        Limits {
            max_connections: get(
                cb.and_then(|c| c.max_connections.as_ref()),
                config::defaults::MAX_CONNECTIONS,
            ),
            max_pending_requests: get(
                cb.and_then(|c| c.max_pending_requests.as_ref()),
                config::defaults::MAX_PENDING_REQUESTS,
            ),
            max_requests: get(
                cb.and_then(|c| c.max_requests.as_ref()),
                config::defaults::MAX_REQUESTS,
            ),
            max_retries: get(
                cb.and_then(|c| c.max_retries.as_ref()),
                config::defaults::MAX_RETRIES,
            ),
            retry_budget: cb.and_then(|c| c.retry_budget.as_ref()).map(|b| {
                (
                    b.budget_percent
                        .as_ref()
                        .map_or(config::defaults::BUDGET_PERCENT, |p| p.value),
                    b.min_retry_concurrency
                        .unwrap_or(config::defaults::MIN_RETRY_CONCURRENCY)
                        as i64,
                )
            }),
        }
    }
}

/// How the cluster's upstream connections are kept: reuse limits and socket options.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// A pooled connection idle this long is closed instead of reused (`None`: no limit).
    pub idle_timeout: Option<Duration>,
    /// Requests per connection before it is closed (`None`: no limit).
    pub max_requests_per_connection: Option<u32>,
    /// TCP keep-alive on every upstream connection.
    pub keepalive: Option<socket2::TcpKeepalive>,
}

impl ConnOptions {
    fn from_config(spec: &config::Cluster) -> ConnOptions {
        let ka = spec
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref());
        ConnOptions {
            idle_timeout: match spec.idle_timeout.as_ref().map(|d| d.0) {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => Some(config::defaults::UPSTREAM_IDLE_TIMEOUT),
            },
            max_requests_per_connection: spec.max_requests_per_connection.as_ref().map(|m| m.value),
            keepalive: ka.map(|k| {
                let mut t = socket2::TcpKeepalive::new();
                if let Some(d) = &k.keepalive_time {
                    t = t.with_time(d.0);
                }
                if let Some(d) = &k.keepalive_interval {
                    t = t.with_interval(d.0);
                }
                if let Some(n) = &k.keepalive_probes {
                    t = t.with_retries(n.value);
                }
                t
            }),
        }
    }

    /// Sets the socket options of a new upstream connection (best effort: a socket that refuses
    /// an option is used as it is).
    pub fn apply(&self, stream: &tokio::net::TcpStream) {
        if let Some(ka) = &self.keepalive {
            if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(ka) {
                tracing::debug!(error = %e, "cannot set TCP keep-alive on an upstream connection");
            }
        }
    }
}

/// A running cluster.
pub struct Cluster {
    /// Cluster name.
    pub name: Arc<str>,
    /// The configuration it was built from.
    pub spec: config::Cluster,
    /// Endpoints in configuration order.
    pub endpoints: Box<[Endpoint]>,
    lb: Balancer,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Circuit-breaker limits.
    pub limits: Limits,
    /// Connection reuse and socket options.
    pub conn: ConnOptions,
    /// Statistics (shared with earlier and later versions of this cluster).
    pub stats: Arc<ClusterStats>,
    /// Outlier detection settings (`None`: off).
    pub outlier: Option<outlier::Settings>,
    /// Active health check settings (`None`: no checks).
    pub health: Option<Arc<health::Settings>>,
    /// Round-robin position used while failing open.
    panic_next: AtomicUsize,
    /// Stops this cluster's background tasks (health checks) when the cluster is dropped.
    pub background: Mutex<Option<tokio_util::sync::DropGuard>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Cluster {
    /// Builds cluster `spec`, reusing what it can from `prev` (the same-named cluster of the running snapshot).
    pub fn build(
        spec: &config::Cluster,
        prev: Option<&Arc<Cluster>>,
        stats: &Stats,
    ) -> Result<Arc<Cluster>, String> {
        if let Some(p) = prev {
            if p.spec == *spec {
                return Ok(p.clone());
            }
        }
        let connect_timeout = spec
            .connect_timeout
            .as_ref()
            .map(|d| d.0)
            .unwrap_or(config::defaults::CONNECT_TIMEOUT);
        let health = spec
            .health_checks
            .first()
            .map(|hc| Arc::new(health::Settings::from_config(&spec.name, hc)));
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        for e in &spec.endpoints {
            let state = prev
                .and_then(|p| p.endpoints.iter().find(|o| *o.address == *e.address.value))
                .map(|o| o.state.clone())
                .unwrap_or_else(|| {
                    let s = EndpointState::default();
                    if health.is_some() {
                        // Envoy: a new endpoint of a health-checked cluster takes traffic once
                        // its first check passes.
                        s.hc_failed.store(true, Relaxed);
                        s.health.pending.store(true, Relaxed);
                    }
                    Arc::new(s)
                });
            endpoints.push(Endpoint {
                address: e.address.as_str().into(),
                resolved: e.address.parse().ok(),
                weight: e.weight,
                state,
            });
        }
        let addrs: Vec<&str> = endpoints.iter().map(|e| &*e.address).collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let cluster_stats = stats.cluster(&spec.name);
        let limits = Limits::from_config(spec.circuit_breakers.as_ref().map(|c| &c.value));
        for (g, v) in cluster_stats.cb_limits.iter().zip([
            limits.max_connections,
            limits.max_pending_requests,
            limits.max_requests,
        ]) {
            g.set(v);
        }
        cluster_stats.membership_total.set(endpoints.len() as i64);
        let cluster = Arc::new(Cluster {
            name: spec.name.as_str().into(),
            lb: Balancer::new(spec.lb_policy, &addrs, &weights),
            spec: spec.clone(),
            endpoints: endpoints.into_boxed_slice(),
            connect_timeout,
            limits,
            conn: ConnOptions::from_config(spec),
            stats: cluster_stats,
            outlier: spec
                .outlier_detection
                .as_ref()
                .map(|o| outlier::Settings::from_config(o)),
            health,
            panic_next: AtomicUsize::new(0),
            background: Mutex::new(None),
        });
        cluster.refresh_membership();
        Ok(cluster)
    }

    /// Sets the `membership_healthy` and `outlier_detection_ejections_active` gauges from the
    /// endpoints' state (called when health or ejection changes; not on the request path).
    pub fn refresh_membership(&self) {
        let now = crate::timer::now_ms();
        let (mut healthy, mut ejected) = (0i64, 0i64);
        for e in self.endpoints.iter() {
            let ej = e.state.outlier.is_ejected_at(now);
            ejected += ej as i64;
            healthy += (!ej && !e.state.hc_failed.load(Relaxed)) as i64;
        }
        self.stats.membership_healthy.set(healthy);
        self.stats.outlier_detection_ejections_active.set(ejected);
    }

    /// True when the balancer hashes requests (`ring_hash`, `maglev`).
    pub fn uses_hash(&self) -> bool {
        self.lb.uses_hash()
    }

    /// Picks an endpoint, avoiding `avoid` (the previous try's) when another is available.
    ///
    /// Unavailable endpoints (failed health checks, ejected) are skipped; when every endpoint
    /// is unavailable the pick fails open over all of them (`lb_healthy_panic` counts it).
    #[inline]
    pub fn pick(&self, hash: Option<u64>, avoid: Option<usize>) -> Option<usize> {
        let eps = &self.endpoints;
        let active = |i: usize| eps[i].state.active.load(Relaxed);
        if let Some(i) = self.lb.pick(
            hash,
            |i| Some(i) != avoid && eps[i].state.available(),
            active,
        ) {
            return Some(i);
        }
        if avoid.is_some() {
            if let Some(i) = self.lb.pick(hash, |i| eps[i].state.available(), active) {
                return Some(i);
            }
        }
        if eps.is_empty() {
            return None;
        }
        self.stats.lb_healthy_panic.inc();
        let usable = |i: usize| Some(i) != avoid || eps.len() == 1;
        if let Balancer::RoundRobin { schedule, .. } = &self.lb {
            // The failed pick above advanced the shared position too; walking the schedule with
            // a position of its own keeps the fail-open spread even (and weighted).
            let n = schedule.len();
            let k = self.panic_next.fetch_add(1, Relaxed);
            return (0..n)
                .map(|j| schedule[(k + j) % n] as usize)
                .find(|&i| usable(i));
        }
        self.lb.pick(hash, usable, active)
    }

    /// Whether another retry fits the retry budget or `max_retries`.
    pub fn retry_allowed(&self) -> bool {
        self.limits.retry_allowed(
            self.stats.upstream_rq_retry_active.get(),
            self.stats.upstream_rq_active.get(),
        )
    }
}

/// Counts a request to endpoint `index` as in flight until dropped.
pub struct ActiveRequest {
    cluster: Arc<Cluster>,
    index: usize,
}

impl ActiveRequest {
    /// Marks a request to endpoint `index` of `cluster` as in flight.
    pub fn start(cluster: &Arc<Cluster>, index: usize) -> ActiveRequest {
        let s = &cluster.endpoints[index].state;
        s.active.fetch_add(1, Relaxed);
        s.rq_total.fetch_add(1, Relaxed);
        cluster.stats.upstream_rq_active.inc();
        ActiveRequest {
            cluster: cluster.clone(),
            index,
        }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.endpoints[self.index]
            .state
            .active
            .fetch_sub(1, Relaxed);
        self.cluster.stats.upstream_rq_active.dec();
    }
}

/// A cluster spec with `n` endpoints on 127.0.0.1 from `base_port` (for unit tests).
#[cfg(test)]
pub(crate) fn test_spec(n: usize, base_port: usize) -> config::Cluster {
    use tern_config::Spanned;
    config::Cluster {
        name: Spanned::unplaced("c".into()),
        connect_timeout: None,
        lb_policy: Default::default(),
        endpoints: (0..n)
            .map(|i| {
                Spanned::unplaced(config::Endpoint {
                    address: Spanned::unplaced(format!("127.0.0.1:{}", base_port + i)),
                    weight: 1,
                })
            })
            .collect(),
        circuit_breakers: None,
        outlier_detection: None,
        health_checks: vec![],
        max_requests_per_connection: None,
        idle_timeout: None,
        upstream_connection_options: None,
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn keepalive_settings_reach_the_upstream_socket() {
        let mut spec = test_spec(1, 1);
        spec.upstream_connection_options = serde_saphyr::from_str(
            "tcp_keepalive: { keepalive_time: 42s, keepalive_interval: 7s, keepalive_probes: 4 }",
        )
        .unwrap();
        let o = ConnOptions::from_config(&spec);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        o.apply(&s);
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        // Unset: no keep-alive, and the idle default.
        let o = ConnOptions::from_config(&test_spec(1, 1));
        assert!(o.keepalive.is_none());
        assert_eq!(
            o.idle_timeout,
            Some(config::defaults::UPSTREAM_IDLE_TIMEOUT)
        );
        assert_eq!(o.max_requests_per_connection, None);
    }
    use super::*;

    fn cluster(n: usize) -> Arc<Cluster> {
        let spec = test_spec(n, 2000);
        Cluster::build(&spec, None, &Stats::default()).unwrap()
    }

    #[test]
    fn fail_open_spreads_over_every_endpoint() {
        let c = cluster(2);
        for e in c.endpoints.iter() {
            e.state.hc_failed.store(true, Relaxed);
        }
        let picks: Vec<usize> = (0..10).map(|_| c.pick(None, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5, "{picks:?}");
        assert_eq!(c.stats.lb_healthy_panic.get(), 10);
        // A retry still avoids the endpoint it just tried.
        for _ in 0..4 {
            assert_eq!(c.pick(None, Some(1)), Some(0));
        }
        c.endpoints[1].state.hc_failed.store(false, Relaxed);
        assert_eq!(c.pick(None, None), Some(1));
        c.refresh_membership();
        assert_eq!(c.stats.membership_healthy.get(), 1);
    }

    #[test]
    fn retries_are_bounded_by_max_retries_or_the_budget() {
        let mut l = Limits::from_config(None);
        assert!(l.retry_allowed(2, 0) && !l.retry_allowed(3, 0));
        l.retry_budget = Some((20.0, 3));
        // The minimum holds at low load; 20 % of the requests in flight above it.
        assert!(l.retry_allowed(2, 1) && !l.retry_allowed(3, 1));
        assert!(l.retry_allowed(19, 100) && !l.retry_allowed(20, 100));
    }
}
