//! The configuration as written in YAML: one `Fragment` per file.
//!
//! Field names follow Envoy's where the concept is the same. Every struct denies unknown fields,
//! so a typo is an error at its own line rather than a silently ignored setting.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::value::{Dur, Pattern, Spanned};

/// One YAML file. Any file may hold any of these keys; lists are merged by `name` across files.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    /// The admin endpoint (at most one file may set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Spanned<Admin>>,
    /// Listeners (sockets the proxy accepts on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Spanned<Listener>>,
    /// Named route tables, referenced by HTTP listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_configs: Vec<Spanned<RouteConfig>>,
    /// Upstream clusters, referenced by routes and TCP listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Spanned<Cluster>>,
}

/// The admin endpoint: readiness, stats, config dump.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to listen on; keep it on loopback (default `127.0.0.1:9901`).
    #[schemars(with = "String")]
    pub address: Spanned<SocketAddr>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: Spanned::unplaced(SocketAddr::from(([127, 0, 0, 1], 9901))),
        }
    }
}

/// A socket the proxy accepts connections on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique listener name (used in stats).
    pub name: Spanned<String>,
    /// `ip:port` to bind, e.g. `0.0.0.0:10000`.
    #[schemars(with = "String")]
    pub address: Spanned<SocketAddr>,
    /// HTTP listener: the name of the route config that routes its requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<Spanned<String>>,
    /// TCP (L4) listener: forward every connection to a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_proxy: Option<TcpProxy>,
}

/// L4 forwarding of whole TCP connections.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    /// The cluster that receives the connections.
    pub cluster: Spanned<String>,
}

/// A named route table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route config name.
    pub name: Spanned<String>,
    /// Virtual hosts, chosen by the request's Host (exact, then suffix, prefix, `*`).
    #[serde(default)]
    pub virtual_hosts: Vec<Spanned<VirtualHost>>,
}

/// A set of domains and the routes that serve them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Name, unique within the route config.
    pub name: Spanned<String>,
    /// Host patterns: `example.com`, `*.example.com`, `example.*` or `*`. A port in Host is ignored.
    pub domains: Vec<Spanned<String>>,
    /// Routes, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
}

/// One route: a match and exactly one action.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional name (used in stats and logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the request must look like.
    #[serde(rename = "match")]
    pub matcher: Spanned<RouteMatch>,
    /// Forward to a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Spanned<RouteAction>>,
    /// Answer directly from the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<Spanned<DirectResponse>>,
    /// Answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Spanned<Redirect>>,
}

/// Request matching. Exactly one of `prefix`, `path`, `regex`; all header and query matchers must match too.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Spanned<String>>,
    /// Path equals this (query excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    /// Path matches this regex as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Spanned<Pattern>>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Spanned<ValueMatcher>>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<Spanned<ValueMatcher>>,
}

/// A condition on a named header or query parameter: exactly one of `exact`, `prefix`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatcher {
    /// Header (case-insensitive) or query parameter name.
    pub name: Spanned<String>,
    /// Value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Value matches this regex as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Spanned<Pattern>>,
    /// `true`: present with any value; `false`: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negate the result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_match: bool,
}

/// Forwarding to an upstream cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    /// The cluster to forward to.
    pub cluster: Spanned<String>,
    /// Replace the matched `prefix` (or the whole path for `path` matches) with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Set the upstream Host header to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<Spanned<String>>,
    /// Time from sending the request upstream to receiving response headers (default 15s, 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Dur>>,
}

/// A response generated by the proxy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// HTTP status (100-599).
    pub status: Spanned<u16>,
    /// Body, sent as text/plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A redirect generated by the proxy; unset parts keep the request's own.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Replace the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    /// Replace the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u16>,
    /// Replace the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<Spanned<String>>,
    /// Replace the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Replace the scheme (`http` or `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<Spanned<String>>,
    /// Shorthand for `scheme_redirect: https`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<Spanned<u16>>,
    /// Drop the query string.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

/// A group of upstream endpoints that serve the same thing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique cluster name (used in routes and stats).
    pub name: Spanned<String>,
    /// Time allowed to establish a TCP connection (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Spanned<Dur>>,
    /// How requests are spread over endpoints (default `round_robin`).
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<Spanned<Endpoint>>,
}

/// Load-balancing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two random choices, fewest active requests (weighted).
    LeastRequest,
}

/// One upstream address.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `host:port`; a DNS name is resolved when connecting.
    pub address: Spanned<String>,
    /// Relative weight (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}
