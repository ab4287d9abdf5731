//! The upstream side: clusters and their host sets, DNS service discovery, the load balancer
//! that picks an endpoint, the connection pools (HTTP/1.1 and multiplexed HTTP/2) and the request
//! bodies they carry, active health checking and outlier detection.
//!
//! Endpoint state (pool, health, ejection, counters) outlives host sets and snapshots and is
//! carried by endpoint key; everything else here is rebuilt with the snapshot that owns it.

pub mod body;
pub mod cluster;
pub mod connect;
pub mod dns;
pub mod h2;
pub mod health;
pub mod lb;
pub mod outlier;
pub mod pool;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use cluster::Cluster;

/// Starts the background work of a cluster version that has none running: DNS discovery (if
/// [`dns::Discovery::warm`] did not start it already), one health checker per endpoint (following
/// the host set from then on) and the outlier detection sweeper. Its tasks stop when that version
/// is dropped.
pub fn start_background(cluster: &Arc<Cluster>) {
    let token = {
        let mut bg = cluster.background.lock().unwrap_or_else(|e| e.into_inner());
        if bg.is_some() {
            return;
        }
        let token = CancellationToken::new();
        *bg = Some((token.clone(), token.clone().drop_guard()));
        token
    };
    if let Some(d) = &cluster.discovery {
        d.start(cluster);
    }
    outlier::spawn_sweeper(cluster, token);
    match &cluster.health {
        Some(_) => health::sync_checkers(cluster),
        None => health::forget(cluster),
    }
}
