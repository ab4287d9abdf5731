//! DNS service discovery for `strict_dns` and `logical_dns` clusters (Envoy's semantics).
//!
//! - [`Resolver`]: one async stub resolver (hickory-resolver on tokio) per `dns` settings, shared
//!   by every cluster and snapshot that uses them, so it survives reloads. It asks the configured
//!   servers, or those of `/etc/resolv.conf`, and reports each answer's TTL. Nothing here runs on
//!   the request path: connections go to addresses resolved beforehand.
//! - [`Discovery`]: a cluster version's host names and what they last resolved to. One task per
//!   name resolves it at once, then again after `min(TTL, dns_refresh_rate)` (`respect_dns_ttl`,
//!   never sooner than 1 s) or `dns_refresh_rate`, and after a failure with the back-off of
//!   `dns_failure_refresh_rate`. An answer that changes the addresses gives the cluster a new host
//!   set ([`Cluster::install`]). A failed resolution keeps the last answer; an answer with no
//!   address (NXDOMAIN, NODATA) empties the name (`strict_dns`) as Envoy does, while a
//!   `logical_dns` endpoint keeps its last address.
//!
//! A new version of a cluster whose discovery settings did not change starts from the previous
//! version's answers and schedule (no extra query, no empty moment); with other settings it starts
//! from the answers and resolves again at once. Only the newest version's tasks resolve: a shared
//! generation stops the older ones.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::upstream::cluster::Cluster;
use tern_config::{self as config, defaults, DiscoveryType, DnsLookupFamily};

/// The resolver settings of the top-level `dns` block (empty: the system's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Settings {
    /// Name servers; empty: those of resolv.conf.
    pub resolvers: Vec<SocketAddr>,
    /// Time allowed for one query.
    pub timeout: Option<Duration>,
    /// Tries of a query.
    pub attempts: Option<u32>,
}

impl Settings {
    /// The settings of a checked configuration.
    pub fn from_config(d: Option<&config::Dns>) -> Settings {
        let Some(d) = d else {
            return Settings::default();
        };
        Settings {
            resolvers: d
                .resolvers
                .iter()
                .filter_map(|r| config::check_discovery::resolver_address(r).ok())
                .collect(),
            timeout: d.timeout.as_ref().map(|t| t.0),
            attempts: d.attempts.as_ref().map(|a| a.value),
        }
    }
}

/// What a name resolved to: its addresses (none: NXDOMAIN or NODATA) and the smallest TTL (the
/// negative TTL for an answer without addresses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// Addresses in answer order, without repeats.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the records, or the negative TTL (`None`: not given).
    pub ttl: Option<Duration>,
}

/// An async DNS resolver, shared by every cluster with the same `dns` settings.
pub struct Resolver {
    settings: Settings,
    // Built on first use: `tern --check` builds snapshots without a runtime or DNS.
    client: OnceLock<Result<TokioResolver, String>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("settings", &self.settings)
            .finish()
    }
}

fn registry() -> &'static Mutex<HashMap<Settings, Weak<Resolver>>> {
    static R: OnceLock<Mutex<HashMap<Settings, Weak<Resolver>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Resolver {
    /// The resolver for `settings`, reusing the running one (config load time only).
    pub fn get(settings: &Settings) -> Arc<Resolver> {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = reg.get(settings).and_then(Weak::upgrade) {
            return r;
        }
        let r = Arc::new(Resolver {
            settings: settings.clone(),
            client: OnceLock::new(),
        });
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(settings.clone(), Arc::downgrade(&r));
        r
    }

    fn client(&self) -> Result<&TokioResolver, String> {
        self.client
            .get_or_init(|| build(&self.settings))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Resolves `host` for `family`. `Ok` with no address: the name or the family has no record.
    pub async fn resolve(&self, host: &str, family: DnsLookupFamily) -> Result<Answer, String> {
        let r = self.client()?;
        let (a, aaaa) = (RecordType::A, RecordType::AAAA);
        match family {
            DnsLookupFamily::V4Only => query(r, host, a).await,
            DnsLookupFamily::V6Only => query(r, host, aaaa).await,
            DnsLookupFamily::V4Preferred => preferred(r, host, a, aaaa).await,
            DnsLookupFamily::Auto => preferred(r, host, aaaa, a).await,
            DnsLookupFamily::All => {
                let (v4, v6) = tokio::join!(query(r, host, a), query(r, host, aaaa));
                match (v4, v6) {
                    (Ok(x), Ok(y)) => Ok(merge(x, y)),
                    // One family answered with addresses: use them; else the failure stands.
                    (Ok(x), Err(e)) | (Err(e), Ok(x)) => {
                        if x.addrs.is_empty() {
                            Err(e)
                        } else {
                            Ok(x)
                        }
                    }
                    (Err(e), Err(_)) => Err(e),
                }
            }
        }
    }
}

/// The resolver of `s`: the configured servers (UDP, TCP for truncated answers) or resolv.conf,
/// with the configured timeout and attempts.
fn build(s: &Settings) -> Result<TokioResolver, String> {
    let (config, mut opts) = if s.resolvers.is_empty() {
        hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
    } else {
        let servers = s
            .resolvers
            .iter()
            .map(|a| {
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                udp.port = a.port();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    if let Some(t) = s.timeout {
        opts.timeout = t;
    }
    if let Some(a) = s.attempts {
        opts.attempts = a as usize;
    }
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| format!("cannot start the DNS resolver: {e}"))
}

/// One query; NXDOMAIN and NODATA are an answer without addresses.
async fn query(r: &TokioResolver, host: &str, rt: RecordType) -> Result<Answer, String> {
    // Every refresh asks the server: the TTL decides when to ask, not a cache.
    r.clear_lookup_cache(host, rt);
    match r.lookup(host, rt).await {
        Ok(lookup) => {
            let mut out = Answer::default();
            for rec in lookup.answers() {
                let ip = match &rec.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                if !out.addrs.contains(&ip) {
                    out.addrs.push(ip);
                }
                let ttl = Duration::from_secs(rec.ttl.into());
                out.ttl = Some(out.ttl.map_or(ttl, |t| t.min(ttl)));
            }
            Ok(out)
        }
        // The negative TTL (the SOA's) says when to ask again, like a positive one.
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => Ok(Answer {
            addrs: Vec::new(),
            ttl: nr.negative_ttl.map(|t| Duration::from_secs(t.into())),
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// `first`'s addresses, or `second`'s when `first` has none (or failed).
async fn preferred(
    r: &TokioResolver,
    host: &str,
    first: RecordType,
    second: RecordType,
) -> Result<Answer, String> {
    let a = query(r, host, first).await;
    if a.as_ref().is_ok_and(|x| !x.addrs.is_empty()) {
        return a;
    }
    match (a, query(r, host, second).await) {
        (_, Ok(b)) if !b.addrs.is_empty() => Ok(b),
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(a), Ok(_)) => Ok(a),
    }
}

fn merge(mut a: Answer, b: Answer) -> Answer {
    for ip in b.addrs {
        if !a.addrs.contains(&ip) {
            a.addrs.push(ip);
        }
    }
    a.ttl = match (a.ttl, b.ttl) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    a
}

/// What one name of a cluster resolved to, and when to ask again.
#[derive(Debug, Clone, Default)]
struct Resolution {
    /// The last answer's addresses (`strict_dns`: sorted); `None` before the first answer.
    addrs: Option<Vec<IpAddr>>,
    /// When to resolve next; `None`: at once.
    due: Option<Instant>,
    /// Failed resolutions in a row (the back-off's exponent).
    failures: u32,
    /// Whether a resolution finished (answered or failed) since the name was added.
    tried: bool,
}

/// One configured endpoint of a DNS cluster: a host name, or an IP address used as is.
#[derive(Debug)]
struct Target {
    host: Arc<str>,
    port: u16,
    weight: u32,
    /// An IP address: never resolved.
    fixed: bool,
    state: Mutex<Resolution>,
}

/// Part of an endpoint list: `(address, key, host name, weight)`.
pub(crate) type EndpointSpec = (SocketAddr, Option<Arc<str>>, Option<Arc<str>>, u32);

/// The DNS discovery of one cluster version.
pub struct Discovery {
    resolver: Arc<Resolver>,
    logical: bool,
    family: DnsLookupFamily,
    refresh: Duration,
    respect_ttl: bool,
    /// `(base_interval, max_interval)` of the back-off after failures; `None`: `refresh`.
    failure: Option<(Duration, Duration)>,
    targets: Vec<Target>,
    /// Shared by every version of the cluster: the version whose tasks resolve.
    generation: Arc<AtomicU64>,
    started: AtomicBool,
    /// Names not resolved (or failed) once yet: a new configuration waits for them.
    pending: watch::Sender<usize>,
    /// Serializes building host sets from the answers.
    rebuild: Mutex<()>,
    stop: CancellationToken,
    _stop: DropGuard,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("logical", &self.logical)
            .field("targets", &self.targets)
            .finish()
    }
}

impl Discovery {
    /// The discovery of `spec`, starting from `prev`'s answers (and schedule, when the discovery
    /// settings are the same).
    pub fn new(
        spec: &config::Cluster,
        kind: DiscoveryType,
        resolver: Arc<Resolver>,
        prev: Option<&Discovery>,
    ) -> Discovery {
        let logical = kind == DiscoveryType::LogicalDns;
        let family = spec.dns_lookup_family.unwrap_or_default();
        let refresh = spec
            .dns_refresh_rate
            .as_ref()
            .map_or(defaults::DNS_REFRESH_RATE, |d| d.0);
        let respect_ttl = spec.respect_dns_ttl.unwrap_or(true);
        let failure = spec.dns_failure_refresh_rate.as_ref().map(|f| {
            let base = f.base_interval.0;
            let max = f
                .max_interval
                .as_ref()
                .map_or(base * defaults::DNS_FAILURE_MAX_FACTOR, |m| m.0);
            (base, max)
        });
        // Other settings: the old answers are a starting point (endpoint state is carried by
        // address), resolved again at once and waited for.
        let same = prev.is_some_and(|p| {
            Arc::ptr_eq(&p.resolver, &resolver)
                && (p.family, p.logical, p.refresh, p.respect_ttl, p.failure)
                    == (family, logical, refresh, respect_ttl, failure)
        });
        let mut pending = 0;
        let targets: Vec<Target> = spec
            .endpoints
            .iter()
            .filter_map(|e| {
                let (host, port) = e.address.rsplit_once(':')?;
                let port: u16 = port.parse().ok()?;
                let fixed = e.is_ip();
                let mut state = Resolution::default();
                if fixed {
                    let addr: SocketAddr = e.address.parse().ok()?;
                    state.addrs = Some(vec![addr.ip()]);
                    state.tried = true;
                } else if let Some(old) =
                    prev.and_then(|p| p.targets.iter().find(|t| !t.fixed && *t.host == *host))
                {
                    let old = old.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    state.addrs = old.addrs;
                    if same {
                        state.tried = old.tried;
                        state.due = old.due;
                        state.failures = old.failures;
                    }
                }
                pending += usize::from(!state.tried);
                Some(Target {
                    host: host.into(),
                    port,
                    weight: e.weight,
                    fixed,
                    state: Mutex::new(state),
                })
            })
            .collect();
        let stop = CancellationToken::new();
        Discovery {
            resolver,
            logical,
            family,
            refresh,
            respect_ttl,
            failure,
            targets,
            generation: prev.map_or_else(Default::default, |p| p.generation.clone()),
            started: AtomicBool::new(false),
            pending: watch::Sender::new(pending),
            rebuild: Mutex::new(()),
            _stop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// The resolver it asks.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// The endpoints the answers make: each address of each name (the first one only for
    /// `logical_dns`), in configuration then answer order, an address listed once.
    pub(crate) fn endpoints(&self) -> Vec<EndpointSpec> {
        let mut out: Vec<EndpointSpec> = Vec::new();
        for t in &self.targets {
            let addrs = t
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .addrs
                .clone()
                .unwrap_or_default();
            let hostname = (!t.fixed).then(|| t.host.clone());
            if self.logical {
                if let Some(ip) = addrs.first() {
                    let key: Arc<str> = format!("{}:{}", t.host, t.port).into();
                    out.push((SocketAddr::new(*ip, t.port), Some(key), hostname, t.weight));
                }
                continue;
            }
            for ip in addrs {
                let addr = SocketAddr::new(ip, t.port);
                if !out.iter().any(|e| e.0 == addr) {
                    out.push((addr, None, hostname.clone(), t.weight));
                }
            }
        }
        out
    }

    /// Starts resolving (once per version), taking over from earlier versions of the cluster.
    pub fn start(&self, cluster: &Arc<Cluster>) {
        if self.started.swap(true, Relaxed) {
            return;
        }
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        for (i, t) in self.targets.iter().enumerate().filter(|(_, t)| !t.fixed) {
            let task = Task {
                cluster: Arc::downgrade(cluster),
                index: i,
                host: t.host.clone(),
                generation,
                shared: self.generation.clone(),
                resolver: self.resolver.clone(),
                family: self.family,
                stats: cluster.stats.clone(),
                stop: self.stop.clone(),
            };
            tokio::spawn(task.run());
        }
    }

    /// Starts resolving and waits (up to `within`) until every name was resolved once, so a new
    /// configuration does not begin with an empty cluster.
    pub async fn warm(&self, cluster: &Arc<Cluster>, within: Duration) {
        self.start(cluster);
        let mut rx = self.pending.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
    }

    /// The wait before the next resolution after an answer with `ttl`.
    fn after_answer(&self, ttl: Option<Duration>) -> Duration {
        let wait = match ttl {
            // Envoy: a TTL of 0 means the refresh rate.
            Some(t) if self.respect_ttl && !t.is_zero() => t.min(self.refresh),
            _ => self.refresh,
        };
        wait.max(defaults::DNS_MIN_REFRESH)
    }

    /// The wait after `failures` failed resolutions in a row: doubling from `base_interval` up to
    /// `max_interval`, jittered (the later half of the interval), else the refresh rate.
    fn after_failure(&self, failures: u32) -> Duration {
        let Some((base, max)) = self.failure else {
            return self.refresh;
        };
        let interval = base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(max);
        let ms = interval.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// Applies the outcome of resolving name `index`; rebuilds the host set when it changed.
    fn apply(&self, cluster: &Arc<Cluster>, index: usize, result: Result<Answer, String>) {
        let t = &self.targets[index];
        let stats = &cluster.stats;
        let now = Instant::now();
        let mut st = t.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match result {
            Ok(mut answer) => {
                stats.update_success.inc();
                if answer.addrs.is_empty() {
                    stats.update_empty.inc();
                }
                if st.failures > 0 {
                    tracing::info!(cluster = %cluster.name, host = %t.host, "DNS resolution works again");
                }
                st.failures = 0;
                st.due = Some(now + self.after_answer(answer.ttl));
                if !self.logical {
                    // Answers rotate (round-robin DNS): only the set counts.
                    answer.addrs.sort_unstable();
                }
                let keep = self.logical && answer.addrs.is_empty() && st.addrs.is_some();
                if keep {
                    // Envoy's logical DNS: an empty answer does not take the endpoint away.
                    false
                } else if st.addrs.as_ref() != Some(&answer.addrs) {
                    if answer.addrs.is_empty() {
                        tracing::warn!(cluster = %cluster.name, host = %t.host, "DNS: the name has no address (NXDOMAIN or no record); its endpoints are removed");
                    }
                    st.addrs = Some(answer.addrs);
                    true
                } else {
                    false
                }
            }
            Err(e) => {
                stats.update_failure.inc();
                st.failures += 1;
                let wait = self.after_failure(st.failures);
                st.due = Some(now + wait);
                if st.failures == 1 {
                    tracing::warn!(cluster = %cluster.name, host = %t.host, error = %e, retry_in = ?wait,
                        "DNS resolution failed; the last answer stays in use");
                } else {
                    tracing::debug!(cluster = %cluster.name, host = %t.host, error = %e, retry_in = ?wait, "DNS resolution failed");
                }
                false
            }
        };
        let first = !std::mem::replace(&mut st.tried, true);
        drop(st);
        if changed {
            self.rebuild(cluster);
        }
        if first {
            self.pending.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// Gives the cluster the host set of the current answers, if it differs from the running one.
    fn rebuild(&self, cluster: &Arc<Cluster>) {
        let _g = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let list = self.endpoints();
        let current = cluster.hosts();
        let same = current.endpoints.len() == list.len()
            && current
                .endpoints
                .iter()
                .zip(&list)
                .all(|(e, (addr, key, _, w))| {
                    e.addr == *addr && e.weight == *w && key.as_ref().is_none_or(|k| *k == e.key)
                });
        if same {
            return;
        }
        let added: Vec<String> = list
            .iter()
            .filter(|e| !current.endpoints.iter().any(|c| c.addr == e.0))
            .map(|e| e.0.to_string())
            .collect();
        let removed: Vec<String> = current
            .endpoints
            .iter()
            .filter(|c| !list.iter().any(|e| e.0 == c.addr))
            .map(|c| c.address.to_string())
            .collect();
        drop(current);
        let endpoints = cluster.endpoints_from(list, None);
        tracing::info!(cluster = %cluster.name, endpoints = endpoints.len(), ?added, ?removed, "DNS: cluster membership changed");
        cluster.install(endpoints, true);
    }
}

/// The task that keeps one name of a cluster version resolved.
struct Task {
    cluster: Weak<Cluster>,
    index: usize,
    host: Arc<str>,
    generation: u64,
    shared: Arc<AtomicU64>,
    resolver: Arc<Resolver>,
    family: DnsLookupFamily,
    stats: Arc<crate::stats::ClusterStats>,
    stop: CancellationToken,
}

impl Task {
    fn current(&self) -> bool {
        self.shared.load(Relaxed) == self.generation
    }

    async fn run(self) {
        loop {
            // The cluster is not kept alive while waiting.
            let due = {
                let Some(c) = self.cluster.upgrade() else {
                    return;
                };
                let Some(d) = &c.discovery else {
                    return;
                };
                let st = d.targets[self.index]
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                st.due
            };
            if let Some(due) = due {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = self.stop.cancelled() => return,
                }
            }
            if !self.current() {
                return;
            }
            self.stats.update_attempt.inc();
            let result = tokio::select! {
                r = self.resolver.resolve(&self.host, self.family) => r,
                _ = self.stop.cancelled() => return,
            };
            if !self.current() {
                return;
            }
            let Some(c) = self.cluster.upgrade() else {
                return;
            };
            if let Some(d) = &c.discovery {
                d.apply(&c, self.index, result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_config::{Dur, Spanned};

    fn discovery(yaml_fields: impl FnOnce(&mut config::Cluster)) -> Discovery {
        let mut spec = crate::upstream::cluster::test_spec(0, 0);
        spec.endpoints = vec![Spanned::unplaced(config::Endpoint {
            address: Spanned::unplaced("svc.test:80".into()),
            weight: 1,
        })];
        yaml_fields(&mut spec);
        Discovery::new(
            &spec,
            spec.discovery_type(),
            Resolver::get(&Settings::default()),
            None,
        )
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let d = discovery(|_| {});
        let s = Duration::from_secs;
        assert_eq!(
            d.after_answer(Some(s(60))),
            s(5),
            "refresh rate caps the TTL"
        );
        assert_eq!(d.after_answer(Some(s(2))), s(2));
        assert_eq!(d.after_answer(Some(s(0))), s(5), "TTL 0: the refresh rate");
        assert_eq!(d.after_answer(None), s(5));
        let d = discovery(|c| {
            c.dns_refresh_rate = Some(Spanned::unplaced(Dur(s(30))));
            c.respect_dns_ttl = Some(false);
        });
        assert_eq!(d.after_answer(Some(s(2))), s(30), "TTL ignored");
        assert_eq!(
            d.after_failure(3),
            s(30),
            "no back-off set: the refresh rate"
        );
        let d = discovery(|c| {
            c.dns_refresh_rate = Some(Spanned::unplaced(Dur(s(1))));
        });
        assert_eq!(
            d.after_answer(Some(Duration::from_millis(300))),
            s(1),
            "never sooner than 1 s"
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_maximum() {
        let d = discovery(|c| {
            c.dns_failure_refresh_rate = Some(Spanned::unplaced(config::RefreshRate {
                base_interval: Spanned::unplaced(Dur(Duration::from_millis(100))),
                max_interval: Some(Spanned::unplaced(Dur(Duration::from_millis(500)))),
            }));
        });
        for (n, max) in [(1, 100), (2, 200), (3, 400), (4, 500), (40, 500)] {
            for _ in 0..20 {
                let w = d.after_failure(n).as_millis() as u64;
                assert!(w >= max / 2 && w <= max, "{n}: {w}");
            }
        }
    }

    #[test]
    fn answers_merge_and_resolvers_are_shared_by_settings() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = Answer {
            addrs: vec![ip("10.0.0.1"), ip("10.0.0.2")],
            ttl: Some(Duration::from_secs(9)),
        };
        let b = Answer {
            addrs: vec![ip("10.0.0.2"), ip("fd00::1")],
            ttl: Some(Duration::from_secs(4)),
        };
        let m = merge(a, b);
        assert_eq!(m.addrs.len(), 3);
        assert_eq!(m.ttl, Some(Duration::from_secs(4)));
        let s = Settings {
            resolvers: vec!["127.0.0.1:5353".parse().unwrap()],
            ..Default::default()
        };
        let r1 = Resolver::get(&s);
        assert!(Arc::ptr_eq(&r1, &Resolver::get(&s)));
        assert!(!Arc::ptr_eq(&r1, &Resolver::get(&Settings::default())));
    }
}
