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
/// Listener `upgrade_configs` when it sets none: WebSocket only (Envoy's default is none; a
/// WebSocket through a proxy is common enough to work without configuration).
pub const UPGRADE_TYPES: &[&str] = &["websocket"];

/// Listener `listener_filters_timeout`: time for a PROXY protocol header (Envoy's).
pub const LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);
/// Cluster `idle_timeout`: an upstream connection idle this long is closed, not reused. Below
/// the 60 s that ALBs, nginx (75 s) and Node.js (5 s, the exception) keep idle connections, so
/// the proxy lets go first and never sends on a connection the upstream is closing. Envoy's is 1h.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Access log sink buffer, in lines.
pub const ACCESS_LOG_BUFFER_LINES: usize = 8192;
/// OTLP `service_name`.
pub const SERVICE_NAME: &str = "tern";

/// Largest configuration file read (`--max-file-size`): far above any real file, far below what
/// would hurt the proxy's memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most YAML nodes (mappings, lists, scalars) in one file (`--max-yaml-nodes`): room for 100,000
/// routes of a dozen nodes each, with what surrounds them.
pub const MAX_YAML_NODES: usize = 3_000_000;

/// Admin `request_headers_timeout`: the admin endpoint is for operators and probes, which send
/// their request at once.
pub const ADMIN_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once (not configurable): a flood of them cannot take descriptors
/// from the listeners.
pub const ADMIN_MAX_CONNECTIONS: u64 = 256;

/// Listener `max_request_headers_kb` (Envoy's).
pub const MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Upper bound of `max_request_headers_kb` (Envoy's).
pub const MAX_REQUEST_HEADERS_KB_LIMIT: u32 = 8192;
/// Listener `max_headers_count` (Envoy's).
pub const MAX_HEADERS_COUNT: u32 = 100;
/// Listener `per_connection_buffer_limit_bytes` (Envoy's edge recommendation; its default is
/// 1 MiB).
pub const PER_CONNECTION_BUFFER_LIMIT_BYTES: u32 = 32 * 1024;
/// Listener HTTP/2 `max_concurrent_streams` (Envoy's edge recommendation). A cluster has no cap
/// of its own by default: the endpoint's `SETTINGS_MAX_CONCURRENT_STREAMS` decides.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 `initial_stream_window_size` of listeners and clusters (the protocol's default;
/// Envoy's edge recommendation is 64 KiB, for listeners and clusters alike).
pub const H2_INITIAL_STREAM_WINDOW_SIZE: u32 = 65_535;
/// HTTP/2 `initial_connection_window_size` of listeners and clusters (Envoy's edge
/// recommendation).
pub const H2_INITIAL_CONNECTION_WINDOW_SIZE: u32 = 1024 * 1024;
/// Streams an upstream HTTP/2 connection is assumed to take until the endpoint's SETTINGS say
/// how many (RFC 9113 §6.5.2 asks peers to allow at least 100; hyper's and h2's default).
pub const H2_INITIAL_MAX_SEND_STREAMS: u32 = 100;
/// Smallest HTTP/2 window (the protocol's initial window).
pub const H2_MIN_WINDOW_SIZE: u32 = 65_535;
/// Largest HTTP/2 window (2^31 - 1).
pub const H2_MAX_WINDOW_SIZE: u32 = 2_147_483_647;
/// Overload `refresh_interval` (Envoy's).
pub const OVERLOAD_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A certificate expiring within this is warned about (`tern-validate --cert-expiry-warn`).
pub const CERT_EXPIRY_WARN: Duration = Duration::from_secs(30 * 24 * 3600);
/// ALPN protocols an HTTP listener with TLS offers (HTTP/2 preferred, as Envoy's edge does).
pub const LISTENER_ALPN: &[&str] = &["h2", "http/1.1"];
/// Time a TLS handshake may take on a listener, from accept (Envoy's
/// `transport_socket_connect_timeout` is off by default; a silent client would hold a slot).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
