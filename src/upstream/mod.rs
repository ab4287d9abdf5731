//! The upstream side: clusters and their endpoints, the load balancer that picks one, the
//! connection pools and the request bodies they carry, active health checking and outlier
//! detection.
//!
//! Endpoint state (pool, health, ejection, counters) outlives snapshots and is carried across
//! reloads by address; everything else here is rebuilt with the snapshot that owns it.

pub mod body;
pub mod cluster;
pub mod health;
pub mod lb;
pub mod outlier;
pub mod pool;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use cluster::Cluster;

/// Starts the background work of a cluster version that has none running: one health checker
/// per endpoint and the outlier detection sweeper. Its tasks stop when that version is dropped.
pub fn start_background(cluster: &Arc<Cluster>) {
    let mut bg = cluster.background.lock().unwrap_or_else(|e| e.into_inner());
    if bg.is_some() {
        return;
    }
    let token = CancellationToken::new();
    *bg = Some(token.clone().drop_guard());
    drop(bg);
    outlier::spawn_sweeper(cluster, token.clone());
    match &cluster.health {
        Some(s) => {
            for idx in 0..cluster.endpoints.len() {
                health::spawn_checker(cluster, idx, s.clone(), token.clone());
            }
        }
        None => health::forget(cluster),
    }
}
