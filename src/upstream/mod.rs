//! The upstream side: clusters and their endpoints, the load balancer that picks one, the
//! connection pools, active health checking and outlier detection.
//!
//! Endpoint state (pool, health, ejection, counters) outlives snapshots and is carried across
//! reloads by address; everything else here is rebuilt with the snapshot that owns it.

pub mod cluster;
pub mod health;
pub mod lb;
pub mod outlier;
pub mod pool;
