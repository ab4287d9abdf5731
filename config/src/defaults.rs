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
/// Retry body buffer when a route sets no `per_request_buffer_limit_bytes` (Envoy's is 1 MiB
/// per connection; this one is per request, for replaying a body on a retry).
pub const BUFFER_LIMIT: u64 = 64 * 1024;

/// Outlier detection `consecutive_5xx` (Envoy's).
pub const CONSECUTIVE_5XX: u32 = 5;
/// Outlier detection `interval` (Envoy's).
pub const OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Outlier detection `base_ejection_time` (Envoy's).
pub const BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Outlier detection `max_ejection_time` (Envoy's).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Outlier detection `max_ejection_percent` (Envoy's).
pub const MAX_EJECTION_PERCENT: f64 = 10.0;

/// DNS clusters' `dns_refresh_rate` (Envoy's).
pub const DNS_REFRESH_RATE: Duration = Duration::from_secs(5);
/// The shortest time between two resolutions of a name, whatever the TTL or refresh rate says.
pub const DNS_MIN_REFRESH: Duration = Duration::from_secs(1);
/// `dns_failure_refresh_rate.max_interval` as a multiple of its `base_interval` (Envoy's).
pub const DNS_FAILURE_MAX_FACTOR: u32 = 10;

/// Listener `idle_timeout`: a connection without requests closes (Envoy's).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Listener `request_headers_timeout` (Envoy has none; hyper's default, kept against slowloris).
pub const REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// Listener `stream_idle_timeout` (Envoy's).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Access log sink buffer, in lines.
pub const ACCESS_LOG_BUFFER_LINES: usize = 8192;
/// OTLP `service_name`.
pub const SERVICE_NAME: &str = "tern";
