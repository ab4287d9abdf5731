//! Defaults of settings a configuration may leave out: one place for the runtime and the lints.

use std::time::Duration;

/// Route timeout when a route sets none (Envoy's).
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Cluster connect timeout (Envoy's).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries when a retry policy sets no `num_retries` (Envoy's).
pub const NUM_RETRIES: u32 = 1;
/// Circuit-breaker limits on connections, pending requests and requests (Envoy's).
pub const MAX_CONNECTIONS: u32 = 1024;
/// See [`MAX_CONNECTIONS`].
pub const MAX_PENDING_REQUESTS: u32 = 1024;
/// See [`MAX_CONNECTIONS`].
pub const MAX_REQUESTS: u32 = 1024;
/// Retries in flight per cluster without `max_retries` or a budget (Envoy's).
pub const MAX_RETRIES: u32 = 3;
/// Retry budget share of requests in flight (Envoy's).
pub const BUDGET_PERCENT: f64 = 20.0;
/// Retries always allowed by a retry budget (Envoy's).
pub const MIN_RETRY_CONCURRENCY: u32 = 3;
