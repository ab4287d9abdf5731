//! Warnings about configurations that load but look wrong or risky (unreachable routes, ...).
//!
//! Lints never stop the proxy from loading; `tern-validate --strict` turns them into failures.

use std::collections::HashMap;

use patricia_tree::PatriciaMap;

use super::diag::{codes, Diagnostic};
use super::model::{RouteMatch, ValueMatcher, VirtualHost};
use super::value::{Pos, Spanned};
use super::Config;

/// Adds warnings for `cfg` to `diags`; `admin_at` is where `admin` is defined, if it is.
pub fn lint(cfg: &Config, admin_at: Option<(usize, Pos)>, diags: &mut Vec<Diagnostic>) {
    if let Some((file, _)) = admin_at {
        admin_exposed(cfg, &cfg.files[file], diags);
    }
    for rc in &cfg.route_configs {
        let file = &cfg.files[rc.file];
        domains(&rc.value.virtual_hosts, |d| diags.push(d.into_diag(file)));
        for vh in &rc.value.virtual_hosts {
            unreachable_routes(vh, |d| diags.push(d.into_diag(file)));
        }
    }
    // Tuning advice waits until the configuration loads: next to an error in the same retry
    // policy or fault it would only be noise.
    if !diags.iter().any(Diagnostic::is_error) {
        resilience::lint(cfg, diags);
    }
}

/// The admin endpoint on an address other hosts can reach. It serves `/healthcheck/fail`
/// (drains the proxy), `/logging` and `/config_dump` without authentication; Envoy's docs give
/// the same advice: keep it on loopback, reach it with `kubectl port-forward` or ECS Exec.
fn admin_exposed(cfg: &Config, file: &std::path::Path, diags: &mut Vec<Diagnostic>) {
    let addr = &cfg.admin.address;
    if addr.ip().is_loopback() {
        return;
    }
    diags.push(
        Diagnostic::warning(
            codes::ADMIN_NOT_LOOPBACK,
            file,
            addr.pos,
            format!(
                "the admin endpoint listens on {}, reachable from other hosts: anyone who \
                 reaches it can fail health checks (draining the proxy), change the log level \
                 and read the configuration, without authentication",
                addr.value
            ),
        )
        .with_help(
            "bind it to loopback (127.0.0.1:9901); for a container health check use \
             `tern health`, which runs inside the task",
        ),
    );
}

/// A warning within one file, before the file's path is attached.
struct Local {
    code: &'static str,
    pos: Pos,
    message: String,
    related: Option<(String, Pos)>,
    help: Option<String>,
}

impl Local {
    fn into_diag(self, file: &std::path::Path) -> Diagnostic {
        let mut d = Diagnostic::warning(self.code, file, self.pos, self.message);
        if let Some((m, p)) = self.related {
            d = d.with_related(m, file, p);
        }
        if let Some(h) = self.help {
            d = d.with_help(h);
        }
        d
    }
}

/// The same domain pattern (case-insensitive) in two virtual hosts, or twice in one.
fn domains(vhs: &[Spanned<VirtualHost>], mut out: impl FnMut(Local)) {
    let mut seen: HashMap<String, (&str, Pos)> = HashMap::new();
    for vh in vhs {
        for d in &vh.domains {
            let key = d.to_ascii_lowercase();
            if let Some(&(first_vh, first_pos)) = seen.get(&key) {
                let message = if first_vh == vh.name.as_str() {
                    format!(
                        "domain `{}` is listed twice in virtual host `{first_vh}`",
                        d.value
                    )
                } else {
                    format!(
                        "domain `{}` is also served by virtual host `{first_vh}`, which comes first: \
                         virtual host `{}` never sees these requests",
                        d.value, vh.name.value
                    )
                };
                out(Local {
                    code: codes::DOMAIN_COLLISION,
                    pos: d.pos,
                    message,
                    related: Some(("first listed here".into(), first_pos)),
                    help: Some("each domain pattern may appear in one virtual host only".into()),
                });
            } else {
                seen.insert(key, (vh.name.as_str(), d.pos));
            }
        }
    }
}

/// Routes that an earlier route of the same virtual host always takes first.
fn unreachable_routes(vh: &VirtualHost, mut out: impl FnMut(Local)) {
    let mut earlier = Earlier::default();
    for r in &vh.routes {
        let m = &r.matcher.value;
        if let Some((by, pos)) = earlier.first_shadowing(m) {
            let message = if by == m {
                format!(
                    "route can never match: the route at line {} has the same match",
                    pos.line
                )
            } else {
                format!(
                    "route can never match: the route at line {} ({}) takes every request it would",
                    pos.line,
                    describe(by)
                )
            };
            out(Local {
                code: codes::UNREACHABLE_ROUTE,
                pos: r.matcher.pos,
                message,
                related: Some(("matched first here".into(), pos)),
                help: Some(
                    "routes are tried in order: move this route above the other one, or make the other one more specific (e.g. a header matcher)".into(),
                ),
            });
        }
        // A redirect to https takes only plaintext requests: those over TLS pass it over.
        let to_https = r.redirect.as_ref().is_some_and(|rd| {
            rd.https_redirect
                || rd
                    .scheme_redirect
                    .as_ref()
                    .is_some_and(|s| s.value == "https")
        });
        if !to_https {
            earlier.add(m, r.matcher.pos);
        }
    }
}

/// A header or query matcher as a hashable key (equal keys: equal matchers, as in [`shadows`]).
type MatcherKey<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<bool>,
    bool,
);

fn matcher_key(m: &ValueMatcher) -> MatcherKey<'_> {
    (
        m.name.as_str(),
        m.exact.as_deref(),
        m.prefix.as_deref(),
        m.regex.as_ref().map(|r| r.as_str()),
        m.present,
        m.invert_match,
    )
}

/// The header and query matchers of a route, sorted and without repeats.
type Conditions<'a> = (Vec<MatcherKey<'a>>, Vec<MatcherKey<'a>>);

fn conditions(m: &RouteMatch) -> Conditions<'_> {
    (matcher_set(&m.headers), matcher_set(&m.query_parameters))
}

fn matcher_set(v: &[Spanned<ValueMatcher>]) -> Vec<MatcherKey<'_>> {
    let mut keys: Vec<_> = v.iter().map(|c| matcher_key(c)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Routes with more matchers than this are compared only with earlier routes that have none,
/// one, or all of their matchers (a route with n matchers has 2^n subsets of them).
const MAX_SUBSET_MATCHERS: usize = 6;

/// Regex routes tried against one `path` route: a lint may miss a case, but must not make a
/// table of thousands of regexes and paths cost their product.
const MAX_REGEX_TRIES: usize = 64;

/// The earlier routes of a virtual host, indexed so that checking a table of n routes costs
/// time linear in its size rather than n² comparisons (tables of thousands of routes exist,
/// and a prefix may be long).
///
/// Gives the same answer as trying [`shadows`] on every earlier route in order, except past
/// [`MAX_SUBSET_MATCHERS`] and [`MAX_REGEX_TRIES`], where it may miss a shadowing route.
#[derive(Default)]
struct Earlier<'a> {
    /// By the header and query matchers of the routes (most routes have none).
    groups: HashMap<Conditions<'a>, PathIndex<'a>>,
    /// Bytes looked at so far (what the tests bound).
    work: usize,
}

/// The earlier routes with the same header and query matchers, by their path condition; the
/// first route of each condition only (a later one is shadowed by it).
#[derive(Default)]
struct PathIndex<'a> {
    /// By `prefix`: walking the tree along a path finds every prefix of it in one pass.
    prefixes: PatriciaMap<(&'a RouteMatch, Pos)>,
    /// By `path`.
    paths: HashMap<&'a str, (&'a RouteMatch, Pos)>,
    /// By `regex` source.
    regexes: HashMap<&'a str, (&'a RouteMatch, Pos)>,
    /// Regex routes by the literal text every match starts with, in route order.
    regex_starts: PatriciaMap<Vec<(&'a RouteMatch, Pos)>>,
}

impl<'a> Earlier<'a> {
    fn add(&mut self, m: &'a RouteMatch, pos: Pos) {
        let index = self.groups.entry(conditions(m)).or_default();
        if let Some(p) = &m.prefix {
            if index.prefixes.get(p.as_str()).is_none() {
                index.prefixes.insert(p.as_str(), (m, pos));
            }
        } else if let Some(p) = &m.path {
            index.paths.entry(p.as_str()).or_insert((m, pos));
        } else if let Some(r) = &m.regex {
            if !index.regexes.contains_key(r.as_str()) {
                index.regexes.insert(r.as_str(), (m, pos));
                let lit = literal_prefix(r.as_str());
                match index.regex_starts.get_mut(lit) {
                    Some(v) => v.push((m, pos)),
                    None => {
                        index.regex_starts.insert(lit, vec![(m, pos)]);
                    }
                }
            }
        }
    }

    /// The earliest route that takes every request `m` would match.
    fn first_shadowing(&mut self, m: &RouteMatch) -> Option<(&'a RouteMatch, Pos)> {
        let (headers, query) = conditions(m);
        let mut best: Option<(&'a RouteMatch, Pos)> = None;
        // A route shadows `m` only if its matchers are all among `m`'s: look in the group of
        // each subset of them.
        let all: Vec<(bool, MatcherKey<'_>)> = headers
            .iter()
            .map(|k| (true, *k))
            .chain(query.iter().map(|k| (false, *k)))
            .collect();
        let pick = |chosen: &dyn Fn(usize) -> bool| -> Conditions<'_> {
            let of = |header: bool| {
                all.iter()
                    .enumerate()
                    .filter(|&(i, &(h, _))| h == header && chosen(i))
                    .map(|(_, &(_, k))| k)
                    .collect()
            };
            (of(true), of(false))
        };
        let mut keys = Vec::new();
        if all.len() <= MAX_SUBSET_MATCHERS {
            for mask in 0..1u32 << all.len() {
                keys.push(pick(&|i| mask & (1 << i) != 0));
            }
        } else {
            keys.push(pick(&|_| false));
            for one in 0..all.len() {
                keys.push(pick(&|i| i == one));
            }
            keys.push(pick(&|_| true));
        }
        for key in keys {
            self.work += 1 + key.0.len() + key.1.len();
            if let Some(index) = self.groups.get(&key) {
                let found = index.first_shadowing(m, &mut self.work);
                if let Some((r, p)) = found {
                    if best.is_none_or(|(_, b)| p < b) {
                        best = Some((r, p));
                    }
                }
            }
        }
        best
    }
}

impl<'a> PathIndex<'a> {
    /// The earliest route of this group whose path condition covers `m`'s.
    fn first_shadowing(&self, m: &RouteMatch, work: &mut usize) -> Option<(&'a RouteMatch, Pos)> {
        let mut best: Option<(&'a RouteMatch, Pos)> = None;
        let mut consider = |c: Option<&(&'a RouteMatch, Pos)>| {
            if let Some(&(r, p)) = c {
                if best.is_none_or(|(_, b)| p < b) {
                    best = Some((r, p));
                }
            }
        };
        if let Some(p) = m.prefix.as_ref().or(m.path.as_ref()) {
            *work += p.len();
            for (_, c) in self.prefixes.common_prefixes(p.as_bytes()) {
                consider(Some(c));
            }
        }
        if let Some(p) = &m.path {
            consider(self.paths.get(p.as_str()));
            *work += p.len();
            let mut tries = 0;
            'starts: for (_, routes) in self.regex_starts.common_prefixes(p.as_bytes()) {
                for &(r, pos) in routes {
                    if tries == MAX_REGEX_TRIES {
                        break 'starts;
                    }
                    tries += 1;
                    *work += p.len();
                    if r.regex.as_ref().is_some_and(|re| re.is_match(p)) {
                        consider(Some(&(r, pos)));
                        // Later routes of this list come after this one.
                        break;
                    }
                }
            }
        }
        if let Some(r) = &m.regex {
            consider(self.regexes.get(r.as_str()));
            let lit = literal_prefix(r.as_str());
            *work += lit.len();
            for (_, c) in self.prefixes.common_prefixes(lit.as_bytes()) {
                consider(Some(c));
            }
        }
        best
    }
}

/// Literal text that every match of `regex` starts with (possibly empty), for a cheap pre-filter.
fn literal_prefix(regex: &str) -> &str {
    if regex.contains('|') {
        // An alternation may let a match start with anything.
        return "";
    }
    let mut end = 0;
    let mut chars = regex.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '~')) {
            break;
        }
        // A character followed by `?`, `*` or `{` may be absent (or repeated in ways we do not
        // follow): it is not part of the literal prefix.
        if chars
            .peek()
            .is_some_and(|(_, n)| matches!(n, '?' | '*' | '{'))
        {
            break;
        }
        end = i + c.len_utf8();
    }
    &regex[..end]
}

fn describe(m: &RouteMatch) -> String {
    let mut s = if let Some(p) = &m.prefix {
        format!("prefix `{}`", p.value)
    } else if let Some(p) = &m.path {
        format!("path `{}`", p.value)
    } else if let Some(p) = &m.regex {
        format!("regex `{}`", p.as_str())
    } else {
        "no path condition".into()
    };
    if m.headers.is_empty() && m.query_parameters.is_empty() {
        s.push_str(", no header or query matcher");
    }
    s
}

/// True when every request matching `b` also matches `a`: what [`Earlier`] answers for all
/// earlier routes at once (the tests compare the two).
///
/// Conservative: only certain cases are reported (a prefix covering a prefix, a path, or the
/// literal start of a regex; equal paths; equal regexes; a regex matching a literal path), with
/// `a`'s header and query conditions all present in `b`.
#[cfg(test)]
fn shadows(a: &RouteMatch, b: &RouteMatch) -> bool {
    let subset = |x: &[Spanned<_>], y: &[Spanned<_>]| x.iter().all(|c| y.contains(c));
    if !subset(&a.headers, &b.headers) || !subset(&a.query_parameters, &b.query_parameters) {
        return false;
    }
    if let Some(pa) = &a.prefix {
        if let Some(pb) = b.prefix.as_ref().or(b.path.as_ref()) {
            return pb.starts_with(pa.as_str());
        }
        // A regex whose every match starts with the prefix (by its literal start) is covered.
        return b
            .regex
            .as_ref()
            .is_some_and(|rb| literal_prefix(rb.as_str()).starts_with(pa.as_str()));
    }
    if let Some(pa) = &a.path {
        return b.path.as_ref().is_some_and(|pb| pb.value == pa.value);
    }
    if let Some(ra) = &a.regex {
        if let Some(rb) = &b.regex {
            return ra.as_str() == rb.as_str();
        }
        return b.path.as_ref().is_some_and(|pb| ra.is_match(pb));
    }
    false
}

/// Warnings about risky resilience settings; each message says why, with the numbers.
mod resilience {
    use std::collections::{HashMap, HashSet};
    use std::path::Path;
    use std::time::Duration;

    use super::super::diag::{codes, Diagnostic};
    use super::super::model::{Cluster, Fault, RetryPolicy, RouteAction};
    use super::super::value::{Dur, Pos, Spanned};
    use super::super::{Config, Def};

    use super::super::defaults::{
        MAX_RETRIES as DEFAULT_MAX_RETRIES, MIN_RETRY_CONCURRENCY as DEFAULT_MIN_RETRY_CONCURRENCY,
        NUM_RETRIES as DEFAULT_NUM_RETRIES, ROUTE_TIMEOUT as DEFAULT_ROUTE_TIMEOUT,
    };
    /// Retry conditions after which the upstream may already have acted on the request.
    const AFTER_PROCESSING: &[&str] = &[
        "5xx",
        "gateway-error",
        "reset",
        "retriable-4xx",
        "retriable-status-codes",
    ];

    fn show(d: Duration) -> String {
        Dur(d).to_string()
    }

    /// Adds the resilience warnings for `cfg`.
    pub fn lint(cfg: &Config, diags: &mut Vec<Diagnostic>) {
        let clusters: HashMap<&str, &Def<Cluster>> = cfg
            .clusters
            .iter()
            .map(|c| (c.value.name.as_str(), c))
            .collect();
        // A virtual host's policy applies to many routes: say each thing about it once.
        let mut said: HashSet<(&'static str, Pos, Pos)> = HashSet::new();
        for rc in &cfg.route_configs {
            let file = cfg.files[rc.file].as_path();
            for vh in &rc.value.virtual_hosts {
                for r in &vh.routes {
                    let Some(action) = &r.route else { continue };
                    // A route's own policy and fault replace the virtual host's.
                    let policy = action.retry_policy.as_ref().or(vh.retry_policy.as_ref());
                    let fault = r.fault.as_ref().or(vh.fault.as_ref());
                    let timeout = route_timeout(action);
                    if let Some(p) = policy {
                        retry(cfg, file, p, action, timeout, &clusters, &mut said, diags);
                    }
                    if let Some(f) = fault {
                        if said.insert((codes::FAULT_DELAY_EXCEEDS_TIMEOUT, f.pos, action.pos)) {
                            fault_delay(file, f, timeout, diags);
                        }
                    }
                }
            }
        }
        for c in &cfg.clusters {
            breakers(&cfg.files[c.file], &c.value, diags);
            grpc_health_check_on_http1(&cfg.files[c.file], &c.value, diags);
        }
    }

    /// Whether a cluster can speak HTTP/2 upstream: `http2`, or `auto` over TLS (ALPN).
    fn speaks_http2(c: &Cluster) -> bool {
        match c.protocol() {
            crate::ClusterProtocol::Http2 => true,
            crate::ClusterProtocol::Auto => c.tls.is_some(),
            crate::ClusterProtocol::Http1 => false,
        }
    }

    fn grpc_needs_http2(file: &Path, at: Pos, c: &Cluster, what: &str) -> Diagnostic {
        Diagnostic::warning(
            codes::GRPC_NEEDS_HTTP2,
            file,
            at,
            format!(
                "{what} for cluster `{}`, which does not speak HTTP/2 upstream: gRPC servers speak \
                 HTTP/2 only, so its requests go to them as HTTP/1.1",
                c.name.value
            ),
        )
        .with_help("give the cluster protocol: http2 (h2c) or auto (TLS with ALPN h2)")
    }

    /// A gRPC health check on a cluster whose requests go upstream as HTTP/1.1: the check
    /// passes (it speaks HTTP/2 on its own connection) while the traffic cannot.
    fn grpc_health_check_on_http1(file: &Path, c: &Cluster, diags: &mut Vec<Diagnostic>) {
        if speaks_http2(c) {
            return;
        }
        for hc in c
            .health_checks
            .iter()
            .filter(|h| h.grpc_health_check.is_some())
        {
            diags.push(grpc_needs_http2(file, hc.pos, c, "grpc_health_check"));
        }
    }

    /// The route timeout and where it was set (`None` when off).
    fn route_timeout(a: &Spanned<RouteAction>) -> Option<(Duration, Pos, bool)> {
        match &a.timeout {
            None => Some((DEFAULT_ROUTE_TIMEOUT, a.pos, false)),
            Some(t) if t.0.is_zero() => None,
            Some(t) => Some((t.0, t.pos, true)),
        }
    }

    fn timeout_words(explicit: bool, t: Duration) -> String {
        if explicit {
            format!("the route timeout {}", show(t))
        } else {
            format!("the default route timeout {}", show(t))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn retry(
        cfg: &Config,
        file: &Path,
        p: &Spanned<RetryPolicy>,
        action: &Spanned<RouteAction>,
        timeout: Option<(Duration, Pos, bool)>,
        clusters: &HashMap<&str, &Def<Cluster>>,
        said: &mut HashSet<(&'static str, Pos, Pos)>,
        diags: &mut Vec<Diagnostic>,
    ) {
        let n = p
            .num_retries
            .as_ref()
            .map_or(DEFAULT_NUM_RETRIES, |n| n.value);
        if n == 0 {
            return;
        }
        let at = p.num_retries.as_ref().map_or(p.pos, |n| n.pos);
        match (&p.per_try_timeout, timeout) {
            (Some(per_try), Some((t, t_pos, explicit))) => {
                let total = per_try.0.saturating_mul(n + 1);
                if total > t && said.insert((codes::RETRIES_EXCEED_TIMEOUT, per_try.pos, t_pos)) {
                    diags.push(
                        Diagnostic::warning(
                            codes::RETRIES_EXCEED_TIMEOUT,
                            file,
                            per_try.pos,
                            format!(
                                "per_try_timeout {} × ({n} retries + 1) = {} is longer than {}: \
                                 the route gives up before the last tries can run",
                                per_try.value,
                                show(total),
                                timeout_words(explicit, t)
                            ),
                        )
                        .with_related("route timeout", file, t_pos)
                        .with_help(format!(
                            "raise the route timeout to at least {}, or lower per_try_timeout or num_retries",
                            show(total)
                        )),
                    );
                }
            }
            (None, _) if said.insert((codes::RETRY_WITHOUT_PER_TRY_TIMEOUT, p.pos, p.pos)) => {
                diags.push(
                    Diagnostic::warning(
                        codes::RETRY_WITHOUT_PER_TRY_TIMEOUT,
                        file,
                        at,
                        format!(
                            "retry_policy allows {n} retr{} but sets no per_try_timeout: one slow \
                             try can use up the whole route timeout ({} unless the route sets \
                             one), leaving no time to retry",
                            if n == 1 { "y" } else { "ies" },
                            show(DEFAULT_ROUTE_TIMEOUT)
                        ),
                    )
                    .with_help("set per_try_timeout to a fraction of the route timeout"),
                );
            }
            _ => {}
        }
        if p.retry_non_idempotent && said.insert((codes::RETRY_NON_IDEMPOTENT, p.pos, p.pos)) {
            let on = p.retry_on.as_ref().map_or("5xx", |o| o.as_str());
            let risky: Vec<&str> = on
                .split(',')
                .map(str::trim)
                .filter(|c| AFTER_PROCESSING.contains(c))
                .collect();
            if !risky.is_empty() {
                let pos = p.retry_on.as_ref().map_or(p.pos, |o| o.pos);
                diags.push(
                    Diagnostic::warning(
                        codes::RETRY_NON_IDEMPOTENT,
                        file,
                        pos,
                        format!(
                            "retry_non_idempotent retries POST, PATCH and CONNECT on {}: the upstream \
                             may already have acted on the request, so it can take effect twice",
                            risky.join(", ")
                        ),
                    )
                    .with_help(
                        "retry non-idempotent requests only on connect-failure or refused-stream, which \
                         happen before the upstream sees the request",
                    ),
                );
            }
        }
        let targets = action.cluster.iter().chain(
            action
                .weighted_clusters
                .iter()
                .flat_map(|w| w.clusters.iter().map(|c| &c.name)),
        );
        for name in targets {
            let Some(c) = clusters.get(name.as_str()) else {
                continue;
            };
            let on = p.retry_on.as_ref().map_or("5xx", |o| o.as_str());
            let grpc: Vec<&str> = on
                .split(',')
                .map(str::trim)
                .filter(|c| crate::check_resilience::GRPC_RETRY_ON.contains(c))
                .collect();
            if !grpc.is_empty()
                && !speaks_http2(&c.value)
                && said.insert((codes::GRPC_NEEDS_HTTP2, p.pos, c.pos))
            {
                let pos = p.retry_on.as_ref().map_or(p.pos, |o| o.pos);
                let what = format!("retry_on {}", grpc.join(", "));
                diags.push(grpc_needs_http2(file, pos, &c.value, &what).with_related(
                    "cluster defined here",
                    &cfg.files[c.file],
                    c.value.name.pos,
                ));
            }
            let cb = c.value.circuit_breakers.as_ref();
            let limited = cb.is_some_and(|b| b.max_retries.is_some() || b.retry_budget.is_some());
            if !limited && said.insert((codes::RETRY_WITHOUT_BUDGET, p.pos, c.pos)) {
                diags.push(
                    Diagnostic::warning(
                        codes::RETRY_WITHOUT_BUDGET,
                        file,
                        at,
                        format!(
                            "retries to cluster `{}`, which sets neither a retry_budget nor max_retries: \
                             only the default {DEFAULT_MAX_RETRIES} retries may be in flight in the whole \
                             cluster, whatever its traffic",
                            name.value
                        ),
                    )
                    .with_related("cluster defined here", &cfg.files[c.file], c.value.name.pos)
                    .with_help(
                        "size retries with circuit_breakers.retry_budget (e.g. budget_percent: 20) or max_retries",
                    ),
                );
            }
        }
    }

    fn fault_delay(
        file: &Path,
        f: &Spanned<Fault>,
        timeout: Option<(Duration, Pos, bool)>,
        diags: &mut Vec<Diagnostic>,
    ) {
        let (Some(delay), Some((t, t_pos, explicit))) = (
            f.delay.as_ref().and_then(|d| d.fixed_delay.as_ref()),
            timeout,
        ) else {
            return;
        };
        if delay.0 <= t {
            return;
        }
        diags.push(
            Diagnostic::warning(
                codes::FAULT_DELAY_EXCEEDS_TIMEOUT,
                file,
                delay.pos,
                format!(
                    "fault delay {} is longer than {}: the delay comes before the route timeout starts, \
                     so delayed requests take over {} in all instead of timing out, and clients with \
                     shorter timeouts give up first",
                    delay.value,
                    timeout_words(explicit, t),
                    show(delay.0 + t)
                ),
            )
            .with_related("route timeout", file, t_pos)
            .with_help("to test the route timeout, delay the upstream instead; otherwise shorten fixed_delay"),
        );
    }

    /// Thresholds that cap retries before the retry limit does.
    fn breakers(file: &Path, c: &Cluster, diags: &mut Vec<Diagnostic>) {
        let Some(cb) = &c.circuit_breakers else {
            return;
        };
        let (retries, what) = match &cb.retry_budget {
            Some(b) => (
                b.min_retry_concurrency
                    .unwrap_or(DEFAULT_MIN_RETRY_CONCURRENCY),
                "min_retry_concurrency of the retry budget",
            ),
            None => (
                cb.max_retries
                    .as_ref()
                    .map_or(DEFAULT_MAX_RETRIES, |m| m.value),
                "max_retries",
            ),
        };
        for (name, t) in [
            ("max_requests", &cb.max_requests),
            ("max_pending_requests", &cb.max_pending_requests),
        ] {
            let Some(t) = t else { continue };
            if t.value < retries {
                diags.push(
                    Diagnostic::warning(
                        codes::BREAKER_BELOW_RETRIES,
                        file,
                        t.pos,
                        format!(
                            "{name} {} in cluster `{}` is below the {retries} retries it allows in flight \
                             ({what}): retries count as requests, so {name} rejects them first",
                            t.value, c.name.value
                        ),
                    )
                    .with_help(format!(
                        "raise {name} above {retries}, or lower the retry limit"
                    )),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> RouteMatch {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn codes(yaml: &str) -> Vec<&'static str> {
        let sources = crate::Sources {
            files: vec![crate::SourceFile {
                path: "x.yaml".into(),
                text: yaml.into(),
            }],
            ..Default::default()
        };
        crate::check_sources(sources)
            .diagnostics
            .iter()
            .map(|d| d.code)
            .collect()
    }

    #[test]
    fn resilience_advice_waits_for_a_loadable_configuration() {
        let ok = "clusters: [{ name: c, endpoints: [{ address: 127.0.0.1:1 }] }]\nroute_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: / }\n            route: { cluster: c, retry_policy: { num_retries: 2 } }\n";
        assert_eq!(codes(ok), ["W005", "W007"]);
        let broken =
            format!("{ok}listeners: [{{ name: l, address: 127.0.0.1:0, route_config: m }}]\n");
        assert_eq!(codes(&broken), ["E004"]);
        // No retries at all: nothing to say.
        assert!(codes(&ok.replace("num_retries: 2", "num_retries: 0")).is_empty());
    }

    /// W016 speaks for `http1` clusters (and `auto` without TLS) only.
    #[test]
    fn grpc_conditions_warn_only_where_http2_cannot_be_spoken() {
        let cfg = |proto: &str| {
            format!("clusters: [{{ name: c, endpoints: [{{ address: 127.0.0.1:1 }}]{proto} }}]\nroute_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: c, retry_policy: {{ retry_on: unavailable, num_retries: 1 }} }}\n")
        };
        assert!(codes(&cfg("")).contains(&"W016"));
        assert!(codes(&cfg(", protocol: auto")).contains(&"W016"));
        assert!(!codes(&cfg(", protocol: http2")).contains(&"W016"));
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("/api/v[0-9]+"), "/api/v");
        assert_eq!(literal_prefix("/ab?c"), "/a");
        assert_eq!(literal_prefix("/a|/b"), "");
        assert_eq!(literal_prefix("(?i)/x"), "");
        assert_eq!(literal_prefix("/x.y"), "/x");
    }

    /// The index agrees with comparing every earlier route in order.
    #[test]
    fn index_agrees_with_pairwise_comparison() {
        let pool = [
            "prefix: /",
            "prefix: /a",
            "prefix: /ab",
            "path: /ab",
            "path: /abc",
            "regex: /a[b-c]+",
            "regex: /ab?",
            "regex: \"/x|/ab\"",
            "regex: /abc[0-9]",
            "prefix: /a\nheaders: [{ name: h, present: true }]",
            "path: /ab\nheaders: [{ name: h, present: true }]",
            "prefix: /\nquery_parameters: [{ name: q, exact: \"1\" }]",
            "path: /abc\nheaders: [{ name: h, present: true }]\nquery_parameters: [{ name: q, exact: \"1\" }]",
        ];
        let ms: Vec<RouteMatch> = pool.iter().map(|y| m(y)).collect();
        // Every ordered sequence of 3 matchers from the pool.
        for a in 0..ms.len() {
            for b in 0..ms.len() {
                for c in 0..ms.len() {
                    let seq = [&ms[a], &ms[b], &ms[c]];
                    let mut earlier = Earlier::default();
                    for (i, x) in seq.iter().enumerate() {
                        let pos = Pos {
                            line: i as u32 + 1,
                            column: 1,
                        };
                        let naive = seq[..i].iter().position(|e| shadows(e, x));
                        let indexed = earlier.first_shadowing(x).map(|(_, p)| p.line as usize - 1);
                        assert_eq!(naive, indexed, "{:?} then {:?}", &seq[..i], x);
                        earlier.add(x, pos);
                    }
                }
            }
        }
    }

    /// The index looks at each route's text a bounded number of times, whatever the table: long
    /// prefixes (a 300 KB one took 8.5 s), many routes with header matchers, many regexes
    /// against many paths.
    #[test]
    fn index_work_is_linear_in_the_table() {
        let long = format!("/{}", "a".repeat(300_000));
        let mut yamls = vec![
            format!("prefix: {long}"),
            format!("prefix: {long}b"),
            format!("path: {long}bc"),
        ];
        for i in 0..2000 {
            yamls.push(format!(
                "prefix: /\nheaders: [{{ name: x-tenant, exact: \"{i}\" }}]"
            ));
            yamls.push(format!("regex: \"/api/v[0-9]+/{i}\""));
            yamls.push(format!("path: /api/v1/{i}x"));
        }
        let ms: Vec<RouteMatch> = yamls.iter().map(|y| m(y)).collect();
        let size: usize = yamls.iter().map(String::len).sum();
        let mut earlier = Earlier::default();
        let mut shadowed = 0;
        for (i, x) in ms.iter().enumerate() {
            shadowed += earlier.first_shadowing(x).is_some() as usize;
            earlier.add(
                x,
                Pos {
                    line: i as u32 + 1,
                    column: 1,
                },
            );
        }
        assert_eq!(shadowed, 2, "the two long routes under the first");
        assert!(
            earlier.work < 4 * size,
            "work {} for {size} bytes of routes",
            earlier.work
        );
    }

    #[test]
    fn shadowing_cases() {
        let all = m("prefix: /");
        assert!(shadows(&all, &m("prefix: /api")));
        assert!(shadows(&all, &m("path: /x")));
        assert!(shadows(&all, &m("regex: /v[0-9]+")));
        assert!(shadows(&m("prefix: /api/"), &m("regex: /api/v[0-9]+")));
        assert!(!shadows(&m("prefix: /api/"), &m("regex: /ap[i]/v1")));
        // `OPTIONS *` has the path `*`: a regex that may match it is not covered by `/`.
        assert!(!shadows(&all, &m("regex: \"[*]|/x\"")));
        assert!(shadows(&m("prefix: /api"), &m("path: /api/x")));
        assert!(!shadows(&m("prefix: /api"), &m("prefix: /ap")));
        assert!(shadows(&m("path: /a"), &m("path: /a")));
        assert!(shadows(&m("regex: /v[0-9]+"), &m("path: /v2")));
        assert!(!shadows(&m("regex: /v[0-9]+"), &m("path: /v2/x")));
        let hdr = m("prefix: /\nheaders: [{ name: x-canary, present: true }]");
        assert!(!shadows(&hdr, &m("prefix: /api")));
        assert!(shadows(
            &hdr,
            &m("prefix: /api\nheaders: [{ name: x-canary, present: true }]")
        ));
        let q = m("prefix: /\nquery_parameters: [{ name: debug, present: true }]");
        assert!(!shadows(&q, &m("prefix: /api")));
    }
}
