//! Upstream clusters: endpoints, their balancer, and their connection pools.
//!
//! A cluster whose configuration did not change is carried into the next snapshot as the same
//! `Arc` (pools, balancer position and active counts intact). A changed cluster keeps the pools of
//! the endpoints that are still configured (pools are per endpoint address), so connections to
//! unchanged endpoints stay warm.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::config;
use crate::lb::Balancer;
use crate::pool::Pool;
use crate::stats::{ClusterStats, Stats};

/// Default cluster connect timeout (Envoy's).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The address when it is an IP literal (no DNS lookup per connect).
    pub resolved: Option<SocketAddr>,
    /// Keep-alive connections to this endpoint.
    pub pool: Arc<Pool>,
    /// Relative weight.
    pub weight: u32,
    /// Requests in flight to this endpoint.
    pub active: AtomicU64,
}

/// A running cluster.
pub struct Cluster {
    /// Cluster name.
    pub name: Arc<str>,
    spec: config::Cluster,
    /// Endpoints in configuration order.
    pub endpoints: Box<[Endpoint]>,
    lb: Balancer,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Statistics (shared with earlier and later versions of this cluster).
    pub stats: Arc<ClusterStats>,
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
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        for e in &spec.endpoints {
            let pool = prev
                .and_then(|p| p.endpoints.iter().find(|o| *o.address == *e.address.value))
                .map(|o| o.pool.clone())
                .unwrap_or_default();
            endpoints.push(Endpoint {
                address: e.address.as_str().into(),
                resolved: e.address.parse().ok(),
                pool,
                weight: e.weight,
                active: AtomicU64::new(0),
            });
        }
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        Ok(Arc::new(Cluster {
            name: spec.name.as_str().into(),
            spec: spec.clone(),
            lb: Balancer::new(spec.lb_policy, &weights),
            endpoints: endpoints.into_boxed_slice(),
            connect_timeout,
            stats: stats.cluster(&spec.name),
        }))
    }

    /// Picks the index of an endpoint for the next request, or `None` when the cluster has none.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        let eps = &self.endpoints;
        self.lb.pick(|i| eps[i].active.load(Relaxed))
    }
}

/// Decrements an endpoint's (and its cluster's) in-flight count when dropped.
pub struct ActiveRequest {
    cluster: Arc<Cluster>,
    index: usize,
}

impl ActiveRequest {
    /// Marks a request to endpoint `index` of `cluster` as in flight.
    pub fn start(cluster: &Arc<Cluster>, index: usize) -> ActiveRequest {
        cluster.endpoints[index].active.fetch_add(1, Relaxed);
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
            .active
            .fetch_sub(1, Relaxed);
        self.cluster.stats.upstream_rq_active.dec();
    }
}
