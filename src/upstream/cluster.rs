//! Upstream clusters: the host set (endpoints and their balancer), circuit-breaker limits, and
//! per-endpoint state.
//!
//! A cluster's endpoints live in an immutable [`HostSet`] behind an `ArcSwap`: a static cluster
//! has one for its whole life, a DNS cluster gets a new one from its resolver task whenever the
//! answers change (built off the request path). The request path loads the current set, picks an
//! endpoint and keeps that endpoint's `Arc`, never an index, so a swap never invalidates a request
//! in flight. An endpoint that leaves the set keeps serving the requests that hold it; its idle
//! connections close and its connections are not pooled again.
//!
//! A cluster whose configuration did not change is carried into the next snapshot as the same
//! `Arc`. A changed cluster keeps the [`EndpointState`] (connection pool, health and outlier
//! state, counters) of every endpoint that is still there, matched by its key (`ip:port`; the
//! host name for `logical_dns`), and its DNS answers when the discovery settings did not change,
//! so a reload neither drops warm connections nor forgets that an endpoint is unhealthy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::stats::{ClusterStats, Stats};
use crate::upstream::dns::{self, Discovery};
use crate::upstream::h2::{H2Settings, Protocol};
use crate::upstream::health::{self, EndpointHealth};
use crate::upstream::lb::Balancer;
use crate::upstream::outlier::{self, EndpointOutlier};
use crate::upstream::pool::Pool;
use tern_config as config;

/// State of one endpoint that outlives snapshots and host sets.
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

    /// A new endpoint's state: in a health-checked cluster it takes traffic once its first check
    /// passes (Envoy's `pending_active_hc`).
    fn new(health_checked: bool) -> Arc<EndpointState> {
        let s = EndpointState::default();
        if health_checked {
            s.hc_failed.store(true, Relaxed);
            s.health.pending.store(true, Relaxed);
        }
        Arc::new(s)
    }
}

/// One upstream endpoint of a host set (immutable; a changed address is a new `Endpoint`).
#[derive(Debug)]
pub struct Endpoint {
    /// What its state is carried by: `ip:port`, or `host:port` for a `logical_dns` endpoint
    /// (whose address changes with the answers). The `endpoint` label of its stats.
    pub key: Arc<str>,
    /// `ip:port` as shown in `/clusters` and logged as the upstream host.
    pub address: Arc<str>,
    /// Where connections go.
    pub addr: SocketAddr,
    /// The host name it was resolved from (`None` for an IP address in the configuration).
    pub hostname: Option<Arc<str>>,
    /// Relative weight (the configured endpoint's).
    pub weight: u32,
    /// Shared state, carried across host sets and reloads by key.
    pub state: Arc<EndpointState>,
}

impl Endpoint {
    /// An endpoint at `addr`, keyed by `key` (its address when `None`).
    pub fn new(
        addr: SocketAddr,
        key: Option<Arc<str>>,
        hostname: Option<Arc<str>>,
        weight: u32,
        state: Arc<EndpointState>,
    ) -> Endpoint {
        let address: Arc<str> = addr.to_string().into();
        Endpoint {
            key: key.unwrap_or_else(|| address.clone()),
            address,
            addr,
            hostname,
            weight,
            state,
        }
    }
}

/// The endpoints of a cluster at one moment, with the balancer built for them.
#[derive(Debug)]
pub struct HostSet {
    /// Endpoints in configuration (then answer) order.
    pub endpoints: Box<[Arc<Endpoint>]>,
    lb: Balancer,
    /// Round-robin position used while failing open.
    panic_next: AtomicUsize,
}

impl HostSet {
    fn new(policy: config::LbPolicy, endpoints: Vec<Arc<Endpoint>>) -> HostSet {
        let addrs: Vec<&str> = endpoints.iter().map(|e| &*e.address).collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        HostSet {
            lb: Balancer::new(policy, &addrs, &weights),
            endpoints: endpoints.into_boxed_slice(),
            panic_next: AtomicUsize::new(0),
        }
    }

    /// The endpoint with `key`, if it is in this set.
    pub fn get(&self, key: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| *e.key == *key)
    }
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
    /// The HTTP version spoken to the endpoints.
    pub protocol: Protocol,
    /// HTTP/2 settings (`http2_protocol_options`).
    pub h2: H2Settings,
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
            protocol: Protocol::of(spec.protocol(), spec.tls.is_some()),
            h2: H2Settings::of(spec.http2_protocol_options.as_deref()),
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

/// The background work of a running cluster version: its token (health checkers are its
/// children) and the guard that cancels everything when the version is dropped.
pub(crate) type Background = Option<(CancellationToken, DropGuard)>;

/// A running cluster.
pub struct Cluster {
    /// Cluster name.
    pub name: Arc<str>,
    /// The configuration it was built from.
    pub spec: config::Cluster,
    /// The current endpoints; swapped by DNS discovery.
    hosts: ArcSwap<HostSet>,
    /// Endpoints in the current set (read on the request path without loading the set).
    host_count: AtomicUsize,
    /// Serializes host set changes (several DNS names resolve at once).
    update: Mutex<()>,
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
    /// DNS discovery (`strict_dns`, `logical_dns`); `None` for a static cluster.
    pub discovery: Option<Discovery>,
    /// TLS origination (`None`: plain TCP).
    pub tls: Option<Arc<crate::tls::client::UpstreamTls>>,
    /// Stops this cluster's background tasks (health checks, sweeper) when it is dropped.
    pub(crate) background: Mutex<Background>,
    /// The running health checkers by endpoint key: where each checks, and its stop guard.
    pub(crate) checkers: Mutex<HashMap<Arc<str>, (SocketAddr, DropGuard)>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("endpoints", &self.hosts.load().endpoints)
            .finish()
    }
}

impl Cluster {
    /// Builds cluster `spec`, reusing what it can from `prev` (the same-named cluster of the
    /// running snapshot). `resolver` resolves its host names (present when it has any).
    pub fn build(
        spec: &config::Cluster,
        prev: Option<&Arc<Cluster>>,
        stats: &Stats,
        resolver: Option<&Arc<dns::Resolver>>,
    ) -> Result<Arc<Cluster>, String> {
        if let Some(p) = prev {
            let same_resolver = match (&p.discovery, resolver) {
                (Some(d), Some(r)) => Arc::ptr_eq(d.resolver(), r),
                (None, _) => true,
                (Some(_), None) => false,
            };
            if p.spec == *spec && same_resolver {
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
        let cluster_stats = stats.cluster(&spec.name);
        let limits = Limits::from_config(spec.circuit_breakers.as_ref().map(|c| &c.value));
        for (g, v) in cluster_stats.cb_limits.iter().zip([
            limits.max_connections,
            limits.max_pending_requests,
            limits.max_requests,
        ]) {
            g.set(v);
        }
        let discovery = match spec.discovery_type() {
            config::DiscoveryType::Static => None,
            kind => {
                let resolver = resolver
                    .ok_or_else(|| format!("cluster `{}`: no DNS resolver", spec.name.value))?;
                Some(Discovery::new(
                    spec,
                    kind,
                    resolver.clone(),
                    prev.and_then(|p| p.discovery.as_ref()),
                ))
            }
        };
        let conn = ConnOptions::from_config(spec);
        let tls = match &spec.tls {
            Some(t) => {
                let tls = crate::tls::client::UpstreamTls::build(t)
                    .map_err(|e| format!("cluster `{}` tls: {e}", spec.name.value))?;
                Some(Arc::new(match conn.protocol.alpn() {
                    Some(alpn) => tls.with_http_alpn(alpn),
                    None => tls,
                }))
            }
            None => None,
        };
        let cluster = Arc::new(Cluster {
            name: spec.name.as_str().into(),
            spec: spec.clone(),
            hosts: ArcSwap::from_pointee(HostSet::new(spec.lb_policy, Vec::new())),
            host_count: AtomicUsize::new(0),
            update: Mutex::new(()),
            connect_timeout,
            limits,
            conn,
            stats: cluster_stats,
            outlier: spec
                .outlier_detection
                .as_ref()
                .map(|o| outlier::Settings::from_config(o)),
            health,
            discovery,
            tls,
            background: Mutex::new(None),
            checkers: Mutex::new(HashMap::new()),
        });
        // The first host set: the configured addresses, or what earlier answers resolved to.
        // Endpoint state (pools among it) carries over only while the TLS settings stay: a
        // pooled connection was verified under the old ones (Envoy rebuilds such a cluster).
        let carried = prev.filter(|p| p.spec.tls == spec.tls).map(|p| p.hosts());
        let endpoints = match &cluster.discovery {
            None => spec
                .endpoints
                .iter()
                .filter_map(|e| {
                    let addr: SocketAddr = e.address.parse().ok()?;
                    Some((addr, None, None, e.weight))
                })
                .collect(),
            Some(d) => d.endpoints(),
        };
        let endpoints = cluster.endpoints_from(endpoints, carried.as_ref().map(|h| &***h));
        cluster.install(endpoints, false);
        Ok(cluster)
    }

    /// Endpoints for `(addr, key, hostname, weight)`, each with the state its key has in `from`
    /// (or in the current set), else a new one.
    pub(crate) fn endpoints_from(
        &self,
        list: Vec<dns::EndpointSpec>,
        from: Option<&HostSet>,
    ) -> Vec<Arc<Endpoint>> {
        let current = self.hosts();
        let from = from.unwrap_or(&current);
        list.into_iter()
            .map(|(addr, key, hostname, weight)| {
                let key: Arc<str> = key.unwrap_or_else(|| addr.to_string().into());
                let state = from
                    .get(&key)
                    .map(|e| e.state.clone())
                    .unwrap_or_else(|| EndpointState::new(self.health.is_some()));
                Arc::new(Endpoint::new(addr, Some(key), hostname, weight, state))
            })
            .collect()
    }

    /// Makes `endpoints` the host set (off the request path). Endpoints that left close their
    /// idle connections; health checkers follow the set; `changed` counts a membership change.
    pub(crate) fn install(self: &Arc<Self>, endpoints: Vec<Arc<Endpoint>>, changed: bool) {
        let _g = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self
            .hosts
            .swap(Arc::new(HostSet::new(self.spec.lb_policy, endpoints)));
        let new = self.hosts();
        self.host_count.store(new.endpoints.len(), Relaxed);
        for e in old.endpoints.iter() {
            if new
                .get(&e.key)
                .is_none_or(|n| !Arc::ptr_eq(&n.state, &e.state))
            {
                // Gone: requests that hold it finish; nothing new goes there.
                e.state.pool.close();
            }
        }
        if changed {
            self.stats.membership_change.inc();
        }
        self.stats.membership_total.set(new.endpoints.len() as i64);
        drop(_g);
        self.refresh_membership();
        health::sync_checkers(self);
    }

    /// The current host set (for admin and background work; the request path uses [`Self::pick`]).
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Whether the cluster has any endpoint now.
    #[inline]
    pub fn has_endpoints(&self) -> bool {
        self.host_count.load(Relaxed) != 0
    }

    /// Sets the `membership_healthy` and `outlier_detection_ejections_active` gauges from the
    /// endpoints' state (called when health, ejection or membership changes; not on the request
    /// path).
    pub fn refresh_membership(&self) {
        let now = crate::timer::now_ms();
        let (mut healthy, mut ejected) = (0i64, 0i64);
        for e in self.hosts().endpoints.iter() {
            let ej = e.state.outlier.is_ejected_at(now);
            ejected += ej as i64;
            healthy += (!ej && !e.state.hc_failed.load(Relaxed)) as i64;
        }
        self.stats.membership_healthy.set(healthy);
        self.stats.outlier_detection_ejections_active.set(ejected);
    }

    /// True when the balancer hashes requests (`ring_hash`, `maglev`).
    pub fn uses_hash(&self) -> bool {
        matches!(
            self.spec.lb_policy,
            config::LbPolicy::RingHash | config::LbPolicy::Maglev
        )
    }

    /// Picks an endpoint, avoiding `avoid` (the previous try's) when another is available.
    ///
    /// Unavailable endpoints (failed health checks, ejected) are skipped; when every endpoint
    /// is unavailable the pick fails open over all of them (`lb_healthy_panic` counts it).
    #[inline]
    pub fn pick(&self, hash: Option<u64>, avoid: Option<&Endpoint>) -> Option<Arc<Endpoint>> {
        let set = self.hosts.load();
        let eps = &set.endpoints;
        // By state: a logical_dns endpoint whose address changed is still the one to avoid.
        let avoid = avoid.map(|a| Arc::as_ptr(&a.state));
        let avoided = |i: usize| avoid.is_some_and(|p| std::ptr::eq(Arc::as_ptr(&eps[i].state), p));
        let active = |i: usize| eps[i].state.active.load(Relaxed);
        let lb = &set.lb;
        if let Some(i) = lb.pick(hash, |i| !avoided(i) && eps[i].state.available(), active) {
            return Some(eps[i].clone());
        }
        if avoid.is_some() {
            if let Some(i) = lb.pick(hash, |i| eps[i].state.available(), active) {
                return Some(eps[i].clone());
            }
        }
        if eps.is_empty() {
            return None;
        }
        self.stats.lb_healthy_panic.inc();
        let usable = |i: usize| !avoided(i) || eps.len() == 1;
        let i = if let Balancer::RoundRobin { schedule, .. } = lb {
            // The failed pick above advanced the shared position too; walking the schedule with
            // a position of its own keeps the fail-open spread even (and weighted).
            let n = schedule.len();
            let k = set.panic_next.fetch_add(1, Relaxed);
            (0..n)
                .map(|j| schedule[(k + j) % n] as usize)
                .find(|&i| usable(i))
        } else {
            lb.pick(hash, usable, active)
        };
        i.map(|i| eps[i].clone())
    }

    /// Whether another retry fits the retry budget or `max_retries`.
    pub fn retry_allowed(&self) -> bool {
        self.limits.retry_allowed(
            self.stats.upstream_rq_retry_active.get(),
            self.stats.upstream_rq_active.get(),
        )
    }
}

/// Counts a request to an endpoint as in flight until dropped; keeps the endpoint alive.
pub struct ActiveRequest {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
    /// The TLS version of the connection it went on (`None`: plain TCP, or not sent yet).
    pub tls_version: Option<&'static str>,
}

impl ActiveRequest {
    /// Marks a request to `endpoint` of `cluster` as in flight.
    pub fn start(cluster: &Arc<Cluster>, endpoint: Arc<Endpoint>) -> ActiveRequest {
        let s = &endpoint.state;
        s.active.fetch_add(1, Relaxed);
        s.rq_total.fetch_add(1, Relaxed);
        cluster.stats.upstream_rq_active.inc();
        ActiveRequest {
            cluster: cluster.clone(),
            endpoint,
            tls_version: None,
        }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.endpoint.state.active.fetch_sub(1, Relaxed);
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
        discovery: None,
        dns_refresh_rate: None,
        respect_dns_ttl: None,
        dns_failure_refresh_rate: None,
        dns_lookup_family: None,
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
        tls: None,
        protocol: None,
        http2_protocol_options: None,
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
        Cluster::build(&spec, None, &Stats::default(), None).unwrap()
    }

    #[test]
    fn fail_open_spreads_over_every_endpoint() {
        let c = cluster(2);
        let h = c.hosts();
        for e in h.endpoints.iter() {
            e.state.hc_failed.store(true, Relaxed);
        }
        let picks: Vec<Arc<Endpoint>> = (0..10).map(|_| c.pick(None, None).unwrap()).collect();
        let first = picks.iter().filter(|e| e.addr.port() == 2000).count();
        assert_eq!(first, 5);
        assert_eq!(c.stats.lb_healthy_panic.get(), 10);
        // A retry still avoids the endpoint it just tried.
        for _ in 0..4 {
            assert_eq!(
                c.pick(None, Some(&h.endpoints[1])).unwrap().addr.port(),
                2000
            );
        }
        h.endpoints[1].state.hc_failed.store(false, Relaxed);
        assert_eq!(c.pick(None, None).unwrap().addr.port(), 2001);
        c.refresh_membership();
        assert_eq!(c.stats.membership_healthy.get(), 1);
    }

    #[test]
    fn a_new_host_set_keeps_state_by_key_and_closes_what_left() {
        let c = cluster(2);
        let before = c.hosts();
        before.endpoints[0].state.rq_total.store(7, Relaxed);
        let held = before.endpoints[1].clone();
        let list = vec![
            (
                "127.0.0.1:2000".parse().unwrap(),
                None,
                Some("svc".into()),
                1,
            ),
            (
                "127.0.0.1:2002".parse().unwrap(),
                None,
                Some("svc".into()),
                1,
            ),
        ];
        let eps = c.endpoints_from(list, None);
        c.install(eps, true);
        let after = c.hosts();
        assert_eq!(after.endpoints.len(), 2);
        assert!(Arc::ptr_eq(
            &after.endpoints[0].state,
            &before.endpoints[0].state
        ));
        assert_eq!(after.endpoints[0].state.rq_total.load(Relaxed), 7);
        assert_eq!(after.endpoints[1].state.rq_total.load(Relaxed), 0);
        assert!(held.state.pool.is_closed() && !after.endpoints[0].state.pool.is_closed());
        assert_eq!(c.stats.membership_change.get(), 1);
        assert_eq!(c.stats.membership_total.get(), 2);
        // The endpoint a request still holds is never picked again.
        for _ in 0..10 {
            assert_ne!(c.pick(None, None).unwrap().addr.port(), 2001);
        }
        c.install(Vec::new(), true);
        assert!(!c.has_endpoints() && c.pick(None, None).is_none());
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
