//! Route tables compiled from a route config: virtual host by Host, then the first matching route.
//!
//! Everything that can be decided at load time is: domains are split into exact/suffix/prefix
//! tables, regexes are compiled, direct-response bodies are `Bytes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri};

use crate::message::Fields;
use crate::router::fault::Fault;
use crate::router::header_rules::{HeaderRules, Rules};
use crate::router::rate_limit::RateLimiter;
use crate::router::retry::RetryPolicy;
use crate::upstream::cluster::Cluster;
use tern_config::check_edge::Direction;
use tern_config::{self as config, Pattern};

pub mod fault;
pub mod header_rules;
pub mod rate_limit;
pub mod retry;
pub mod sni;
pub mod stream_duration;

/// A compiled route config.
#[derive(Debug)]
pub struct Router {
    vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.example.com` → ".example.com", longest first.
    suffix: Vec<(String, usize)>,
    /// `example.*` → "example.", longest first.
    prefix: Vec<(String, usize)>,
    any: Option<usize>,
    /// The route config's header rules (for requests no virtual host takes).
    pub header_rules: Option<Arc<HeaderRules>>,
}

/// A compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    /// Its name.
    pub name: Arc<str>,
    routes: Vec<Route>,
    /// Header rules of the route config and the virtual host (for requests no route takes).
    pub header_rules: Option<Arc<HeaderRules>>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name for stats/logs (`<vhost>/<index>` when unnamed).
    pub name: Arc<str>,
    path: PathMatch,
    headers: Vec<ValueMatch>,
    query: Vec<ValueMatch>,
    /// What to do with a matching request.
    pub action: Action,
    /// Fault injection (the route's, else the virtual host's).
    pub fault: Option<Arc<Fault>>,
    /// Rate limit (the route's, else the virtual host's, shared by its routes).
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Its statistics (see [`Router::attach_stats`]).
    pub stats: Arc<crate::stats::RouteStats>,
    /// Header rules of the route config, virtual host and route; `None` when none of them, nor
    /// a weighted cluster of the route, has any.
    pub header_rules: Option<Arc<HeaderRules>>,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Pattern),
}

#[derive(Debug)]
struct ValueMatch {
    name: String,
    kind: ValueKind,
    invert: bool,
}

#[derive(Debug)]
enum ValueKind {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
    Present(bool),
}

/// What a route does.
#[derive(Debug)]
pub enum Action {
    /// Forward upstream.
    Forward(Forward),
    /// Answer with a fixed response.
    Direct {
        /// Status to send.
        status: StatusCode,
        /// Body to send.
        body: Bytes,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
}

/// Where a route sends requests.
#[derive(Debug)]
pub enum Target {
    /// One cluster.
    Single(Arc<Cluster>),
    /// A weighted split: clusters with running weight sums, and the total.
    Weighted(Vec<Weighted>, u64),
}

/// One cluster of a weighted split.
#[derive(Debug)]
pub struct Weighted {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Running weight sum up to and including this cluster.
    cum: u64,
    /// Its header rules, applied after the route's.
    pub headers: Option<Arc<ClusterRules>>,
}

/// A weighted cluster's header rules.
#[derive(Debug)]
pub struct ClusterRules {
    /// Request rules.
    pub request: Option<Arc<Rules>>,
    /// Response rules.
    pub response: Option<Arc<Rules>>,
}

/// How a request's hash is computed for consistent hashing.
#[derive(Debug)]
pub enum HashOn {
    /// A header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client IP.
    SourceIp,
}

/// Forwarding settings of a route.
#[derive(Debug)]
pub struct Forward {
    /// The cluster(s), resolved at load time.
    pub target: Target,
    /// Retry policy (the route's, else the virtual host's).
    pub retry: Option<Arc<RetryPolicy>>,
    /// Hash policies, in order, each with its `terminal` flag.
    pub hash_policy: Vec<(HashOn, bool)>,
    /// Largest request body buffered for retries.
    pub buffer_limit: u64,
    /// Body idle timeout set on the route (`Some(None)`: turned off), else the listener's applies.
    pub idle_timeout: Option<Option<Duration>>,
    /// Replacement for the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Upstream Host override.
    pub host_rewrite: Option<HeaderValue>,
    /// Time to response headers; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Upgrades this route enables or disables, over the listener's setting.
    pub upgrades: UpgradeMap,
    /// `max_stream_duration`: the stream's limit, and the client's `grpc-timeout` as it.
    pub stream_duration: Option<stream_duration::StreamDuration>,
}

/// Upgrade types (lower case) with whether each is allowed, from `upgrade_configs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeMap(Vec<(Box<str>, bool)>);

impl UpgradeMap {
    /// The map of a checked `upgrade_configs` list (a later entry for a type wins).
    pub fn compile(list: &[config::Spanned<config::UpgradeConfig>]) -> UpgradeMap {
        let mut m = UpgradeMap::default();
        for u in list {
            let ty = u.upgrade_type.to_ascii_lowercase();
            m.0.retain(|(t, _)| **t != *ty);
            m.0.push((ty.into(), u.enabled.unwrap_or(true)));
        }
        m
    }

    /// A listener's map: its `upgrade_configs`, or the default types when it sets none.
    pub fn listener(list: Option<&[config::Spanned<config::UpgradeConfig>]>) -> UpgradeMap {
        match list {
            Some(l) => UpgradeMap::compile(l),
            None => UpgradeMap(
                config::defaults::UPGRADE_TYPES
                    .iter()
                    .map(|t| ((*t).into(), true))
                    .collect(),
            ),
        }
    }

    /// The setting for upgrade `ty` (any case), if the map has one.
    pub fn get(&self, ty: &str) -> Option<bool> {
        self.0
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(ty))
            .map(|(_, on)| *on)
    }
}

/// Whether an upgrade to `ty` is tunnelled: the route's setting for it, else the listener's, as
/// Envoy combines them (a route may enable a type its listener does not list). `h2c` never is.
pub fn upgrade_allowed(route: &UpgradeMap, listener: &UpgradeMap, ty: &str) -> bool {
    !ty.eq_ignore_ascii_case("h2c") && route.get(ty).or_else(|| listener.get(ty)).unwrap_or(false)
}

/// Redirect settings of a route.
#[derive(Debug)]
pub struct Redirect {
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix_rewrite: Option<String>,
    scheme: Option<String>,
    code: StatusCode,
    strip_query: bool,
}

impl Router {
    /// Compiles a route config; `clusters` resolves cluster names (checked to exist at load).
    pub fn build(
        rc: &config::RouteConfig,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<Router, String> {
        let mut r = Router {
            vhosts: Vec::new(),
            exact: HashMap::new(),
            suffix: Vec::new(),
            prefix: Vec::new(),
            any: None,
            header_rules: HeaderRules::chain(
                None,
                Rules::compile(
                    &rc.request_headers_to_add,
                    &rc.request_headers_to_remove,
                    Direction::Request,
                )?,
                Rules::compile(
                    &rc.response_headers_to_add,
                    &rc.response_headers_to_remove,
                    Direction::Response,
                )?,
            ),
        };
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                if d == "*" {
                    r.any.get_or_insert(i);
                } else if let Some(s) = d.strip_prefix('*') {
                    r.suffix.push((s.to_string(), i));
                } else if let Some(p) = d.strip_suffix('*') {
                    r.prefix.push((p.to_string(), i));
                } else {
                    r.exact.entry(d).or_insert(i);
                }
            }
            let vh_headers = HeaderRules::chain(
                r.header_rules.as_deref(),
                Rules::compile(
                    &vh.request_headers_to_add,
                    &vh.request_headers_to_remove,
                    Direction::Request,
                )?,
                Rules::compile(
                    &vh.response_headers_to_add,
                    &vh.response_headers_to_remove,
                    Direction::Response,
                )?,
            )
            .or_else(|| r.header_rules.clone());
            let shared = VhostPolicies {
                headers: vh_headers.clone(),
                retry: vh
                    .retry_policy
                    .as_ref()
                    .map(|p| Arc::new(RetryPolicy::compile(p))),
                fault: vh.fault.as_ref().map(|f| Arc::new(Fault::compile(f))),
                rate_limit: vh
                    .rate_limit
                    .as_ref()
                    .map(|r| Arc::new(RateLimiter::compile(r))),
            };
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (j, route) in vh.routes.iter().enumerate() {
                routes.push(compile_route(&vh.name, j, route, clusters, &shared)?);
            }
            r.vhosts.push(VirtualHost {
                name: vh.name.as_str().into(),
                routes,
                header_rules: vh_headers,
            });
        }
        // Longest wildcard wins, as in Envoy; stable sort keeps file order among equals.
        r.suffix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        r.prefix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(r)
    }

    /// Points every route at its stats in `stats`, keyed by names so they survive reloads.
    pub fn attach_stats(&mut self, route_config: &str, stats: &crate::stats::Stats) {
        for vh in &mut self.vhosts {
            for r in &mut vh.routes {
                r.stats = stats.route(route_config, &vh.name, &r.name);
            }
        }
    }

    /// The virtual host for `host` (lowercase not required; a port is ignored).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = crate::headers::strip_port(host);
        let idx = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.lookup(&host.to_ascii_lowercase())
        } else {
            self.lookup(host)
        };
        idx.map(|i| &self.vhosts[i])
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        if let Some((_, i)) = self
            .suffix
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
        {
            return Some(*i);
        }
        if let Some((_, i)) = self
            .prefix
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
        {
            return Some(*i);
        }
        self.any
    }
}

impl VirtualHost {
    /// The first route matching the request.
    pub fn route(
        &self,
        method: &http::Method,
        uri: &Uri,
        headers: &Fields,
        tls: bool,
    ) -> Option<&Route> {
        let path = uri.path();
        let query = uri.query();
        // A redirect to https is for plaintext requests: on a TLS connection the route is
        // passed over (a route config shared by the :80 and :443 listeners does not loop).
        self.routes
            .iter()
            .find(|r| !(tls && r.to_https()) && r.matches(method, path, query, headers))
    }
}

impl Route {
    /// Whether the route redirects to `https` (`https_redirect`, `scheme_redirect: https`).
    fn to_https(&self) -> bool {
        matches!(&self.action, Action::Redirect(r) if r.scheme.as_deref() == Some("https"))
    }

    fn matches(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        headers: &Fields,
    ) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(re) => re.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|m| {
                // `:method` is the one pseudo-header a matcher may name (Envoy's way to route by
                // method, which App Mesh's `method` match generates).
                if m.name == ":method" {
                    return m.matches(Some(method.as_str()));
                }
                // Several values of one header are matched as one comma-joined value, as Envoy does.
                let mut it = headers.get_all(m.name.as_str()).iter();
                let value = match (it.next(), it.next()) {
                    (None, _) => None,
                    (Some(v), None) => Some(std::borrow::Cow::Borrowed(v.to_str().unwrap_or(""))),
                    (Some(_), Some(_)) => Some(std::borrow::Cow::Owned(
                        headers
                            .get_all(m.name.as_str())
                            .iter()
                            .map(|v| v.to_str().unwrap_or(""))
                            .collect::<Vec<_>>()
                            .join(","),
                    )),
                };
                m.matches(value.as_deref())
            })
            && self
                .query
                .iter()
                .all(|m| m.matches(query_param(query, &m.name)))
    }

    /// The path the upstream sees: the matched prefix (or exact path) replaced by `prefix_rewrite`.
    pub fn rewrite_path(&self, uri: &Uri, rewrite: &str) -> Option<String> {
        let path = uri.path();
        let rest = match &self.path {
            PathMatch::Prefix(p) => &path[p.len()..],
            PathMatch::Exact(_) => "",
            PathMatch::Regex(_) => return None,
        };
        let mut out = String::with_capacity(rewrite.len() + rest.len() + 16);
        out.push_str(rewrite);
        out.push_str(rest);
        if let Some(q) = uri.query() {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

impl ValueMatch {
    fn matches(&self, value: Option<&str>) -> bool {
        let r = match (&self.kind, value) {
            (ValueKind::Present(want), v) => v.is_some() == *want,
            // As in Envoy: a missing header or parameter fails a value matcher, inverted or not
            // (`invert_match` on `exact: "yes"` means "there and not yes", not "not yes").
            (_, None) => return false,
            (ValueKind::Exact(e), Some(v)) => v == e,
            (ValueKind::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (ValueKind::Regex(re), Some(v)) => re.is_match(v),
        };
        r != self.invert
    }
}

impl Redirect {
    /// The `Location` for a request to `uri` on `host` with `scheme`, given the matched route.
    pub fn location(&self, route: &Route, scheme: &str, host: &str, uri: &Uri) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let base_host = self
            .host
            .as_deref()
            .unwrap_or_else(|| crate::headers::strip_port(host));
        let port = match self.port {
            Some(p) => Some(p.to_string()),
            // Keep the request's port unless the host or scheme is being replaced.
            None if self.host.is_none() && self.scheme.is_none() => {
                host.rsplit_once(':').map(|(_, p)| p.to_string())
            }
            None => None,
        };
        let mut path = match (&self.path, &self.prefix_rewrite) {
            (Some(p), _) => p.clone(),
            (None, Some(rw)) => match &route.path {
                PathMatch::Prefix(p) => format!("{rw}{}", &uri.path()[p.len()..]),
                _ => rw.clone(),
            },
            (None, None) => uri.path().to_string(),
        };
        if !self.strip_query {
            if let Some(q) = uri.query() {
                path.push('?');
                path.push_str(q);
            }
        }
        match port {
            Some(p) => format!("{scheme}://{base_host}:{p}{path}"),
            None => format!("{scheme}://{base_host}{path}"),
        }
    }

    /// The redirect status.
    pub fn code(&self) -> StatusCode {
        self.code
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn value_match(m: &config::ValueMatcher, lowercase_name: bool) -> ValueMatch {
    let kind = if let Some(e) = &m.exact {
        ValueKind::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        ValueKind::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        ValueKind::Regex(r.value.clone())
    } else {
        ValueKind::Present(m.present.unwrap_or(true))
    };
    let name = if lowercase_name {
        m.name.to_ascii_lowercase()
    } else {
        m.name.value.clone()
    };
    ValueMatch {
        name,
        kind,
        invert: m.invert_match,
    }
}

/// Virtual-host-level policies, shared by the routes that have none of their own.
struct VhostPolicies {
    /// Header rules of the route config and the virtual host.
    headers: Option<Arc<HeaderRules>>,
    retry: Option<Arc<RetryPolicy>>,
    fault: Option<Arc<Fault>>,
    rate_limit: Option<Arc<RateLimiter>>,
}

impl Forward {
    /// The cluster for this request (a weighted pick for splits) and, for a weighted split, the
    /// picked cluster's header rules.
    #[inline]
    pub fn pick(&self) -> (&Arc<Cluster>, Option<&Arc<ClusterRules>>) {
        match &self.target {
            Target::Single(c) => (c, None),
            Target::Weighted(cs, total) => {
                use rand::Rng;
                let r = rand::rng().random_range(0..*total);
                let i = cs.partition_point(|w| w.cum <= r);
                let w = &cs[i.min(cs.len() - 1)];
                (&w.cluster, w.headers.as_ref())
            }
        }
    }

    /// The request's hash for consistent hashing, from the first policy that yields a value
    /// (all that yield one are combined unless one is `terminal`).
    pub fn hash(&self, headers: &Fields, peer: std::net::IpAddr) -> Option<u64> {
        let mut acc: Option<u64> = None;
        for (on, terminal) in &self.hash_policy {
            let v = match on {
                HashOn::Header(h) => headers
                    .get(h)
                    .map(|v| crate::upstream::lb::hash_key(v.as_bytes())),
                HashOn::Cookie(name) => {
                    cookie(headers, name).map(|c| crate::upstream::lb::hash_key(c.as_bytes()))
                }
                HashOn::SourceIp => {
                    Some(crate::upstream::lb::hash_key(peer.to_string().as_bytes()))
                }
            };
            if let Some(v) = v {
                acc = Some(match acc {
                    Some(a) => a.rotate_left(1) ^ v,
                    None => v,
                });
                if *terminal {
                    break;
                }
            }
        }
        acc
    }
}

fn cookie<'a>(headers: &'a Fields, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn compile_route(
    vhost: &str,
    index: usize,
    r: &config::Route,
    clusters: &HashMap<String, Arc<Cluster>>,
    shared: &VhostPolicies,
) -> Result<Route, String> {
    let m = &r.matcher;
    let path = if let Some(p) = &m.prefix {
        PathMatch::Prefix(p.value.clone())
    } else if let Some(p) = &m.path {
        PathMatch::Exact(p.value.clone())
    } else if let Some(re) = &m.regex {
        PathMatch::Regex(re.value.clone())
    } else {
        return Err(format!("route {index} of {vhost} has no path match"));
    };
    let find = |name: &str| {
        clusters
            .get(name)
            .cloned()
            .ok_or_else(|| format!("cluster `{name}` is not defined"))
    };
    let action = if let Some(a) = &r.route {
        let target = match (&a.cluster, &a.weighted_clusters) {
            (Some(c), _) => Target::Single(find(c)?),
            (None, Some(w)) => {
                let mut cum = 0u64;
                let mut v = Vec::new();
                for c in w.clusters.iter().filter(|c| c.weight > 0) {
                    cum += c.weight as u64;
                    let request = Rules::compile(
                        &c.request_headers_to_add,
                        &c.request_headers_to_remove,
                        Direction::Request,
                    )?;
                    let response = Rules::compile(
                        &c.response_headers_to_add,
                        &c.response_headers_to_remove,
                        Direction::Response,
                    )?;
                    let headers = (request.is_some() || response.is_some())
                        .then(|| Arc::new(ClusterRules { request, response }));
                    v.push(Weighted {
                        cluster: find(&c.name)?,
                        cum,
                        headers,
                    });
                }
                if v.is_empty() {
                    return Err("weighted_clusters has no weight".into());
                }
                Target::Weighted(v, cum)
            }
            (None, None) => return Err(format!("route {index} of {vhost} has no cluster")),
        };
        let hash_policy = a
            .hash_policy
            .iter()
            .filter_map(|h| {
                let on = if let Some(hh) = &h.header {
                    HashOn::Header(http::HeaderName::from_bytes(hh.header_name.as_bytes()).ok()?)
                } else if let Some(c) = &h.cookie {
                    HashOn::Cookie(c.name.value.clone())
                } else if h
                    .connection_properties
                    .as_ref()
                    .is_some_and(|c| c.source_ip)
                {
                    HashOn::SourceIp
                } else {
                    return None;
                };
                Some((on, h.terminal))
            })
            .collect();
        let timeout = match a.timeout.as_ref().map(|t| t.0) {
            None => Some(config::defaults::ROUTE_TIMEOUT),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        };
        Action::Forward(Forward {
            target,
            retry: match &a.retry_policy {
                Some(p) => Some(Arc::new(RetryPolicy::compile(p))),
                None => shared.retry.clone(),
            },
            hash_policy,
            buffer_limit: a
                .per_request_buffer_limit_bytes
                .unwrap_or(config::defaults::BUFFER_LIMIT),
            idle_timeout: a
                .idle_timeout
                .as_ref()
                .map(|d| (!d.0.is_zero()).then_some(d.0)),
            upgrades: UpgradeMap::compile(&a.upgrade_configs),
            prefix_rewrite: a.prefix_rewrite.clone(),
            host_rewrite: a
                .host_rewrite
                .as_ref()
                .map(|h| HeaderValue::from_str(h).map_err(|e| e.to_string()))
                .transpose()?,
            timeout,
            stream_duration: a
                .max_stream_duration
                .as_ref()
                .map(|m| stream_duration::StreamDuration::compile(m)),
        })
    } else if let Some(d) = &r.direct_response {
        Action::Direct {
            status: StatusCode::from_u16(*d.status).map_err(|e| e.to_string())?,
            body: Bytes::from(d.body.clone().unwrap_or_default()),
        }
    } else if let Some(rd) = &r.redirect {
        Action::Redirect(Redirect {
            host: rd.host_redirect.clone(),
            port: rd.port_redirect,
            path: rd.path_redirect.as_ref().map(|p| p.value.clone()),
            prefix_rewrite: rd.prefix_rewrite.clone(),
            scheme: if rd.https_redirect {
                Some("https".into())
            } else {
                rd.scheme_redirect.as_ref().map(|s| s.value.clone())
            },
            code: StatusCode::from_u16(rd.response_code.as_ref().map(|c| c.value).unwrap_or(301))
                .map_err(|e| e.to_string())?,
            strip_query: rd.strip_query,
        })
    } else {
        return Err(format!("route {index} of {vhost} has no action"));
    };
    let mut headers = HeaderRules::chain(
        shared.headers.as_deref(),
        Rules::compile(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            Direction::Request,
        )?,
        Rules::compile(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            Direction::Response,
        )?,
    )
    .or_else(|| shared.headers.clone());
    if let Action::Forward(Forward {
        target: Target::Weighted(ws, _),
        ..
    }) = &action
    {
        // A weighted cluster's rules apply after the route's: the route needs a chain (even an
        // empty one) that captures what their response rules read.
        let clusters: Vec<Arc<Rules>> = ws
            .iter()
            .filter_map(|w| w.headers.as_ref()?.response.clone())
            .collect();
        if ws.iter().any(|w| w.headers.is_some()) {
            headers = Some(HeaderRules::with_clusters(headers.as_deref(), &clusters));
        }
    }
    Ok(Route {
        header_rules: headers,
        name: r
            .name
            .clone()
            .unwrap_or_else(|| format!("{vhost}/{index}"))
            .into(),
        path,
        headers: m.headers.iter().map(|h| value_match(h, true)).collect(),
        query: m
            .query_parameters
            .iter()
            .map(|q| value_match(q, false))
            .collect(),
        action,
        fault: match &r.fault {
            Some(f) => Some(Arc::new(Fault::compile(f))),
            None => shared.fault.clone(),
        },
        rate_limit: match &r.rate_limit {
            Some(rl) => Some(Arc::new(RateLimiter::compile(rl))),
            None => shared.rate_limit.clone(),
        },
        stats: Arc::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_route_setting_first_then_listener_h2c_never() {
        let list = |yaml: &str| -> Vec<config::Spanned<config::UpgradeConfig>> {
            serde_saphyr::from_str(yaml).unwrap()
        };
        let default = UpgradeMap::listener(None);
        let none = UpgradeMap::listener(Some(&[]));
        let route = UpgradeMap::compile(&list(
            "[{ upgrade_type: Foo }, { upgrade_type: WEBSOCKET, enabled: false }]",
        ));
        let empty = UpgradeMap::default();
        assert!(upgrade_allowed(&empty, &default, "WebSocket"));
        assert!(!upgrade_allowed(&empty, &default, "foo"));
        assert!(!upgrade_allowed(&empty, &none, "websocket"));
        assert!(upgrade_allowed(&route, &none, "foo"));
        assert!(!upgrade_allowed(&route, &default, "websocket"));
        let h2c = UpgradeMap(vec![("h2c".into(), true)]);
        assert!(!upgrade_allowed(&h2c, &h2c, "H2C"));
    }

    fn router(yaml: &str) -> Router {
        let rc: config::RouteConfig = serde_saphyr::from_str(yaml).unwrap();
        Router::build(&rc, &HashMap::new()).unwrap()
    }

    const RC: &str = r#"
name: main
virtual_hosts:
  - name: exact
    domains: ["api.example.com"]
    routes:
      - match: { prefix: /, headers: [{ name: X-Canary, exact: "1" }] }
        direct_response: { status: 201 }
      - match: { prefix: /, query_parameters: [{ name: debug, present: true }] }
        direct_response: { status: 202 }
      - match: { regex: "/v[0-9]+/items" }
        direct_response: { status: 203 }
      - match: { prefix: / }
        direct_response: { status: 200 }
  - name: suffix
    domains: ["*.example.com"]
    routes:
      - match: { path: /x }
        direct_response: { status: 204 }
  - name: prefix
    domains: ["www.*"]
    routes: []
  - name: any
    domains: ["*"]
    routes: []
"#;

    fn status(r: &Router, host: &str, uri: &str, headers: &[(&str, &str)]) -> Option<u16> {
        let uri: Uri = uri.parse().unwrap();
        let mut h = Fields::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let method = h
            .get("x-test-method")
            .map_or(http::Method::GET, |m| m.to_str().unwrap().parse().unwrap());
        match &r
            .virtual_host(host)?
            .route(&method, &uri, &h, false)?
            .action
        {
            Action::Direct { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }

    #[test]
    fn domains_pick_exact_then_suffix_then_prefix_then_any() {
        let r = router(RC);
        assert_eq!(
            r.virtual_host("API.example.com:8080")
                .unwrap()
                .name
                .as_ref(),
            "exact"
        );
        assert_eq!(
            r.virtual_host("a.example.com").unwrap().name.as_ref(),
            "suffix"
        );
        assert_eq!(
            r.virtual_host("www.other.org").unwrap().name.as_ref(),
            "prefix"
        );
        assert_eq!(r.virtual_host("other.org").unwrap().name.as_ref(), "any");
        assert_eq!(r.virtual_host("[::1]:80").unwrap().name.as_ref(), "any");
    }

    #[test]
    fn routes_match_headers_query_and_regex_in_order() {
        let r = router(RC);
        let h = "api.example.com";
        assert_eq!(status(&r, h, "/a", &[("x-canary", "1")]), Some(201));
        assert_eq!(status(&r, h, "/a", &[("x-canary", "2")]), Some(200));
        assert_eq!(status(&r, h, "/a?x=1&debug", &[]), Some(202));
        assert_eq!(status(&r, h, "/v2/items", &[]), Some(203));
        assert_eq!(status(&r, h, "/v2/items/3", &[]), Some(200));
        assert_eq!(status(&r, "b.example.com", "/x", &[]), Some(204));
        assert_eq!(status(&r, "b.example.com", "/y", &[]), None);
    }

    #[test]
    fn a_method_matcher_routes_by_method() {
        let r = router(
            r#"
name: main
virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
      - match: { prefix: /, headers: [{ name: ":method", exact: POST }] }
        direct_response: { status: 201 }
      - match: { prefix: /, headers: [{ name: ":METHOD", regex: "PUT|PATCH", invert_match: true }] }
        direct_response: { status: 202 }
      - match: { prefix: / }
        direct_response: { status: 200 }
"#,
        );
        let m = |method: &str| status(&r, "h", "/", &[("x-test-method", method)]);
        assert_eq!(m("POST"), Some(201));
        assert_eq!(m("GET"), Some(202));
        assert_eq!(m("PUT"), Some(200));
        // A header named like it is not the method.
        assert_eq!(status(&r, "h", "/", &[("method", "POST")]), Some(202));
    }

    #[test]
    fn a_missing_header_fails_every_value_matcher_even_inverted() {
        // Envoy's HeaderMatcher: a header that is not there fails an exact, prefix or regex
        // matcher whether inverted or not; only `present` sees the absence (and inverts).
        // tests/envoy_differential.rs shows both against a real Envoy.
        let r = router(
            r#"
name: main
virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
      - match: { prefix: /, headers: [{ name: x-internal, exact: "yes", invert_match: true }] }
        direct_response: { status: 201 }
      - match: { prefix: /, headers: [{ name: x-tag, prefix: "a", invert_match: true }] }
        direct_response: { status: 202 }
      - match: { prefix: /, headers: [{ name: x-brew, present: true, invert_match: true }] }
        direct_response: { status: 203 }
      - match: { prefix: / }
        direct_response: { status: 200 }
"#,
        );
        let yes = ("x-internal", "yes");
        assert_eq!(status(&r, "h", "/", &[("x-internal", "no")]), Some(201));
        assert_eq!(status(&r, "h", "/", &[yes, ("x-tag", "b")]), Some(202));
        assert_eq!(
            status(&r, "h", "/", &[yes, ("x-tag", "a"), ("x-brew", "")]),
            Some(200)
        );
        assert_eq!(status(&r, "h", "/", &[yes, ("x-tag", "a")]), Some(203));
        assert_eq!(status(&r, "h", "/", &[("x-brew", "1")]), Some(200));
        assert_eq!(status(&r, "h", "/", &[]), Some(203));
    }
}
