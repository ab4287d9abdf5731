//! Envoy `RouteConfiguration` → Tern `route_configs`: virtual hosts, routes (matches, actions,
//! redirects, direct responses), header rules at every level, retry and hash policies, and the
//! per-route `fault` and `local_ratelimit` filter configs.

use std::path::Path;

use tern_config::{
    AppendAction, DirectResponse, Fault, FaultAbort, FaultDelay, HashConnection, HashCookie,
    HashHeader, HashPolicy, HeaderKeyValue, HeaderValueOption, MaxStreamDuration, Pattern,
    RateLimit, RateUnit, Redirect, RetryBackOff, RetryPolicy, Route, RouteAction, RouteConfig,
    RouteMatch, Spanned, UpgradeConfig, ValueMatcher, VirtualHost, WeightedCluster,
    WeightedClusters,
};

use super::ctx::Ctx;
use super::tree::{Key, Node, Obj};

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::unplaced(v)
}

/// Header rules of one level, in Tern's shape.
#[derive(Default)]
struct HeaderRules {
    req_add: Vec<Spanned<HeaderValueOption>>,
    req_remove: Vec<Spanned<String>>,
    resp_add: Vec<Spanned<HeaderValueOption>>,
    resp_remove: Vec<Spanned<String>>,
}

/// Takes the four header-rule fields of `o`.
fn header_rules(cx: &mut Ctx, f: &Path, o: &mut Obj<'_>) -> HeaderRules {
    let mut r = HeaderRules::default();
    for (key, add) in [
        ("request_headers_to_add", true),
        ("response_headers_to_add", false),
    ] {
        for n in o.take(key).map(Node::items).unwrap_or_default() {
            if let Some(h) = cx.item(f, n.pos, "header option", |cx| {
                header_value_option(cx, f, n)
            }) {
                if add {
                    r.req_add.push(sp(h));
                } else {
                    r.resp_add.push(sp(h));
                }
            }
        }
    }
    for (key, req) in [
        ("request_headers_to_remove", true),
        ("response_headers_to_remove", false),
    ] {
        for n in o.take(key).map(Node::items).unwrap_or_default() {
            if let Some(s) = cx.str(f, n, key) {
                if req {
                    r.req_remove.push(s);
                } else {
                    r.resp_remove.push(s);
                }
            }
        }
    }
    r
}

/// An Envoy `HeaderValueOption`.
fn header_value_option(cx: &mut Ctx, f: &Path, n: &Node) -> Option<HeaderValueOption> {
    let mut o = cx.obj(f, n, "header option")?;
    let mut h = o.take("header").and_then(|h| cx.obj(f, h, "header"))?;
    let key = h.take("key").and_then(|k| cx.str(f, k, "key"))?;
    let value = match h.take("value") {
        Some(v) => cx.str(f, v, "value")?,
        None => sp(String::new()),
    };
    if let Some((k, _)) = h.take_kv("raw_value") {
        cx.field(f, k, "header", Some("write the value as `value`"));
    }
    cx.rest(f, &h, "header");
    if tern_config::secrets::sensitive_header(&key) {
        // Tern prints credential header values as `<redacted>`: the generated file would carry
        // that text instead of the credential.
        cx.value(
            f,
            n.pos,
            format!("a rule adding the credential header `{}` is not carried over (its value would be written in the clear); add it by hand", key.value),
        );
        return None;
    }
    let mut append_action = None;
    if let Some(a) = o.take("append_action") {
        append_action = match a.as_enum().as_deref() {
            Some("APPEND_IF_EXISTS_OR_ADD") => Some(AppendAction::AppendIfExistsOrAdd),
            Some("ADD_IF_ABSENT") => Some(AppendAction::AddIfAbsent),
            Some("OVERWRITE_IF_EXISTS_OR_ADD") => Some(AppendAction::OverwriteIfExistsOrAdd),
            Some("OVERWRITE_IF_EXISTS") => Some(AppendAction::OverwriteIfExists),
            _ => {
                cx.value(f, a.pos, "unknown append_action");
                return None;
            }
        };
    } else if let Some(a) = o.take("append") {
        // The deprecated `append: false` replaces the header.
        if !cx.bool(f, a, "append")? {
            append_action = Some(AppendAction::OverwriteIfExistsOrAdd);
        }
    }
    let keep_empty_value = match o.take("keep_empty_value") {
        Some(b) => cx.bool(f, b, "keep_empty_value")?,
        None => false,
    };
    cx.rest(f, &o, "header option");
    Some(HeaderValueOption {
        header: HeaderKeyValue { key, value },
        append_action,
        keep_empty_value,
    })
}

/// What listeners give the route configs they use: their HTTP filters' configs, applied to the
/// virtual hosts (Tern has the filters per virtual host and route, not per listener).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerFilters {
    /// The fault filter's listener-wide config.
    pub fault: Option<Fault>,
    /// The local rate limit filter's listener-wide config.
    pub rate_limit: Option<RateLimit>,
}

/// Maps one `RouteConfiguration` (`name` given for an inline one without a name).
pub fn route_config(cx: &mut Ctx, f: &Path, n: &Node, name: Option<String>) -> Option<RouteConfig> {
    let mut o = cx.obj(f, n, "route configuration")?;
    let name = match o.take("name").and_then(|v| cx.str(f, v, "name")) {
        Some(s) if !s.is_empty() => s,
        _ => sp(name.unwrap_or_else(|| "routes".into())),
    };
    let mut virtual_hosts = Vec::new();
    for vh in o.take("virtual_hosts").map(Node::items).unwrap_or_default() {
        if let Some(v) = cx.item(f, vh.pos, "virtual host", |cx| virtual_host(cx, f, vh)) {
            virtual_hosts.push(sp(v));
        }
    }
    let h = header_rules(cx, f, &mut o);
    if let Some((k, v)) = o.take_kv("most_specific_header_mutations_wins") {
        // `true` is what Tern always does.
        if v.as_bool() != Some(true) {
            cx.differs(
                f,
                k,
                "Tern applies header rules least specific first, as `most_specific_header_mutations_wins: true`",
                "a header set at several levels takes the more specific level's value in Tern",
            );
        }
    }
    if let Some((k, v)) = o.take_kv("validate_clusters") {
        if v.as_bool() == Some(false) {
            cx.no_effect(
                f,
                k,
                "Tern always checks that every cluster a route names exists",
            );
        }
    }
    cx.rest(f, &o, "route configuration");
    Some(RouteConfig {
        name,
        virtual_hosts,
        request_headers_to_add: h.req_add,
        request_headers_to_remove: h.req_remove,
        response_headers_to_add: h.resp_add,
        response_headers_to_remove: h.resp_remove,
    })
}

fn virtual_host(cx: &mut Ctx, f: &Path, n: &Node) -> Option<VirtualHost> {
    let mut o = cx.obj(f, n, "virtual host")?;
    let name = o.take("name").and_then(|v| cx.str(f, v, "name"))?;
    let domains = o
        .take("domains")
        .map(Node::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| cx.str(f, d, "domain"))
        .collect();
    let mut routes = Vec::new();
    for r in o.take("routes").map(Node::items).unwrap_or_default() {
        if let Some(r) = cx.item(f, r.pos, "route", |cx| route(cx, f, r)) {
            routes.push(sp(r));
        }
    }
    let retry_policy = o
        .take("retry_policy")
        .and_then(|r| retry_policy(cx, f, r))
        .map(sp);
    let h = header_rules(cx, f, &mut o);
    let (fault, rate_limit) = match o.take("typed_per_filter_config") {
        Some(t) => per_filter(cx, f, t),
        None => (None, None),
    };
    cx.rest(f, &o, "virtual host");
    Some(VirtualHost {
        name,
        domains,
        routes,
        retry_policy,
        fault: fault.map(sp),
        rate_limit: rate_limit.map(sp),
        request_headers_to_add: h.req_add,
        request_headers_to_remove: h.req_remove,
        response_headers_to_add: h.resp_add,
        response_headers_to_remove: h.resp_remove,
    })
}

/// `typed_per_filter_config`: the fault and local rate limit configs; others reported.
fn per_filter(cx: &mut Ctx, f: &Path, n: &Node) -> (Option<Fault>, Option<RateLimit>) {
    let mut fault = None;
    let mut rate_limit = None;
    let Some(o) = cx.obj(f, n, "typed_per_filter_config") else {
        return (None, None);
    };
    for (k, v) in o.rest() {
        let Some(mut c) = cx.obj(f, v, "filter config") else {
            continue;
        };
        let url = c.take("@type").and_then(Node::as_str).unwrap_or_default();
        let ty = url.rsplit('/').next().unwrap_or_default();
        match ty {
            "envoy.extensions.filters.http.fault.v3.HTTPFault" => fault = fault_filter(cx, f, c),
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
                rate_limit = local_rate_limit(cx, f, c, v.pos)
            }
            _ => cx.type_url(
                f,
                k.pos,
                &format!("per-route config of `{}`", k.name),
                url,
                None,
            ),
        }
    }
    (fault, rate_limit)
}

/// Envoy's `HTTPFault` (filter or per-route config).
pub fn fault_filter(cx: &mut Ctx, f: &Path, mut c: Obj<'_>) -> Option<Fault> {
    let mut fault = Fault::default();
    if let Some(d) = c.take("delay").and_then(|d| cx.obj(f, d, "delay")) {
        let mut d = d;
        let mut fd = FaultDelay::default();
        if let Some(v) = d.take("fixed_delay") {
            fd.fixed_delay = cx.dur(f, v, "fixed_delay");
        }
        if let Some((k, _)) = d.take_kv("header_delay") {
            header_controlled(cx, f, k, &mut fault, "delay");
        }
        // Envoy reads an unset percentage as 0% (Tern's default is 100%).
        fd.percentage = match d.take("percentage") {
            Some(p) => cx.fraction(f, p, "percentage").map(sp),
            None => Some(sp(0.0)),
        };
        cx.rest(f, &d, "fault delay");
        fault.delay = Some(sp(fd));
    }
    if let Some(a) = c.take("abort").and_then(|a| cx.obj(f, a, "abort")) {
        let mut a = a;
        let mut fa = FaultAbort::default();
        if let Some(v) = a.take("http_status") {
            fa.http_status = cx
                .u32(f, v, "http_status")
                .and_then(|s| u16::try_from(s).ok())
                .map(sp);
        }
        if let Some(v) = a.take("grpc_status") {
            fa.grpc_status = cx.u32(f, v, "grpc_status").map(sp);
        }
        if let Some((k, _)) = a.take_kv("header_abort") {
            header_controlled(cx, f, k, &mut fault, "abort");
        }
        fa.percentage = match a.take("percentage") {
            Some(p) => cx.fraction(f, p, "percentage").map(sp),
            None => Some(sp(0.0)),
        };
        cx.rest(f, &a, "fault abort");
        fault.abort = Some(sp(fa));
    }
    if let Some(v) = c.take("max_active_faults") {
        fault.max_active_faults = cx.u32(f, v, "max_active_faults");
    }
    cx.rest(f, &c, "fault filter");
    Some(fault)
}

/// Envoy's `header_delay` / `header_abort`: Tern's `header_controlled` (one switch for both, read
/// from `x-tern-fault-*` headers, capped by the configured percentages as in Envoy).
fn header_controlled(cx: &mut Ctx, f: &Path, k: &Key, fault: &mut Fault, what: &str) {
    fault.header_controlled = true;
    cx.differs(
        f,
        k,
        format!("header-controlled {what}: Tern reads `x-tern-fault-{what}-request` (Envoy: `x-envoy-fault-{what}-request`)"),
        "rename the header in the clients and tools that send it; Tern's `header_controlled` lets headers ask for both delays and aborts",
    );
}

/// Envoy's `LocalRateLimit` (filter or per-route config): a token bucket that refills
/// `tokens_per_fill` every `fill_interval`, as Tern's tokens per second or minute.
pub fn local_rate_limit(
    cx: &mut Ctx,
    f: &Path,
    mut c: Obj<'_>,
    at: tern_config::Pos,
) -> Option<RateLimit> {
    c.take("stat_prefix");
    // Envoy enforces only the share `filter_enabled` × `filter_enforced` says; unset, the
    // filter is off. Tern's rate limit is always on, so only 100% maps.
    for key in ["filter_enabled", "filter_enforced"] {
        match c.take(key) {
            Some(p) => {
                if cx.fraction(f, p, key)? < 100.0 {
                    cx.value(f, p.pos, format!("{key} below 100% is not supported: Tern's rate limit applies to every request"));
                    return None;
                }
            }
            None => {
                cx.value(
                    f,
                    at,
                    format!("local rate limit without `{key}` is off in Envoy; not carried over"),
                );
                return None;
            }
        }
    }
    let mut tb = c
        .take("token_bucket")
        .and_then(|t| cx.obj(f, t, "token_bucket"))?;
    let max = tb
        .take("max_tokens")
        .and_then(|v| cx.u32(f, v, "max_tokens"))?;
    let per_fill = match tb.take("tokens_per_fill") {
        Some(v) => cx.u32(f, v, "tokens_per_fill")?,
        None => 1,
    };
    let fill = tb
        .take("fill_interval")
        .and_then(|v| cx.dur(f, v, "fill_interval"))?;
    cx.rest(f, &tb, "token_bucket");
    cx.rest(f, &c, "local rate limit");
    let ms = fill.value.0.as_millis();
    let (per_unit, unit) = if ms > 0 && 1000 % ms == 0 {
        (u64::from(per_fill) * (1000 / ms) as u64, RateUnit::Second)
    } else if ms > 0 && 60_000 % ms == 0 {
        (u64::from(per_fill) * (60_000 / ms) as u64, RateUnit::Minute)
    } else {
        cx.value(
            f,
            at,
            format!(
                "fill_interval {} is not a whole fraction of a second or a minute",
                fill.value
            ),
        );
        return None;
    };
    Some(RateLimit {
        requests_per_unit: sp(u32::try_from(per_unit).ok()?),
        unit,
        burst: Some(sp(max)),
        key: None,
    })
}

fn route(cx: &mut Ctx, f: &Path, n: &Node) -> Option<Route> {
    let mut o = cx.obj(f, n, "route")?;
    let name = o
        .take("name")
        .and_then(|v| cx.str(f, v, "name"))
        .map(|s| s.value);
    let matcher = o.take("match").and_then(|m| route_match(cx, f, m))?;
    let is_regex = matcher.regex.is_some();
    let mut r = Route {
        name,
        matcher: sp(matcher),
        route: None,
        direct_response: None,
        redirect: None,
        fault: None,
        rate_limit: None,
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_add: Vec::new(),
        response_headers_to_remove: Vec::new(),
    };
    if let Some(a) = o.take("route") {
        r.route = Some(sp(route_action(cx, f, a, is_regex)?));
    } else if let Some(d) = o.take("direct_response") {
        r.direct_response = Some(sp(direct_response(cx, f, d)?));
    } else if let Some(d) = o.take("redirect") {
        r.redirect = Some(sp(redirect(cx, f, d)?));
    } else {
        cx.value(
            f,
            n.pos,
            "route without a `route`, `redirect` or `direct_response` action; dropped",
        );
        cx.rest(f, &o, "route");
        return None;
    }
    if let Some(v) = o.take("per_request_buffer_limit_bytes") {
        let limit = cx
            .u32(f, v, "per_request_buffer_limit_bytes")
            .map(u64::from);
        match &mut r.route {
            Some(a) => a.value.per_request_buffer_limit_bytes = limit,
            None => cx.value(
                f,
                v.pos,
                "per_request_buffer_limit_bytes only applies to a route that forwards",
            ),
        }
    }
    let h = header_rules(cx, f, &mut o);
    r.request_headers_to_add = h.req_add;
    r.request_headers_to_remove = h.req_remove;
    r.response_headers_to_add = h.resp_add;
    r.response_headers_to_remove = h.resp_remove;
    if let Some(t) = o.take("typed_per_filter_config") {
        let (fault, rl) = per_filter(cx, f, t);
        r.fault = fault.map(sp);
        r.rate_limit = rl.map(sp);
    }
    cx.rest(f, &o, "route");
    Some(r)
}

fn pattern(cx: &mut Ctx, f: &Path, n: &Node, source: &str) -> Option<Spanned<Pattern>> {
    match Pattern::new(source) {
        Ok(p) => Some(sp(p)),
        Err(e) => {
            cx.value(
                f,
                n.pos,
                format!("{e} (Tern's regex syntax; RE2's is nearly the same)"),
            );
            None
        }
    }
}

/// `safe_regex: {regex, google_re2}`: the regex text.
fn safe_regex(cx: &mut Ctx, f: &Path, n: &Node) -> Option<String> {
    let mut o = cx.obj(f, n, "safe_regex")?;
    let r = o.take("regex").and_then(|r| cx.str(f, r, "regex"))?;
    o.take("google_re2");
    cx.rest(f, &o, "safe_regex");
    Some(r.value)
}

fn route_match(cx: &mut Ctx, f: &Path, n: &Node) -> Option<RouteMatch> {
    let mut o = cx.obj(f, n, "route match")?;
    let mut m = RouteMatch::default();
    if let Some(p) = o.take("prefix") {
        m.prefix = cx.str(f, p, "prefix");
    } else if let Some(p) = o.take("path") {
        m.path = cx.str(f, p, "path");
    } else if let Some(p) = o.take("safe_regex") {
        let r = safe_regex(cx, f, p)?;
        m.regex = pattern(cx, f, p, &r);
    } else if let Some(p) = o.take("path_separated_prefix") {
        // Envoy: the path is the prefix, or the prefix then `/…`; the query is not looked at.
        let s = cx.str(f, p, "path_separated_prefix")?;
        m.regex = pattern(cx, f, p, &format!("{}(/.*)?", regex::escape(&s)));
    } else {
        cx.value(f, n.pos, "route match without prefix, path, safe_regex or path_separated_prefix (path_match_policy and connect_matcher are not supported)");
        cx.rest(f, &o, "route match");
        return None;
    }
    if let Some(cs) = o.take("case_sensitive") {
        if cs.as_bool() == Some(false) {
            cx.value(f, cs.pos, "case-insensitive path matching is not supported; the route matches case-sensitively");
        }
    }
    // A condition that cannot be expressed must not be left out: the route would match more
    // than it does in Envoy. The whole route goes instead.
    let mut whole = m.prefix.is_some() || m.path.is_some() || m.regex.is_some();
    for h in o.take("headers").map(Node::items).unwrap_or_default() {
        match value_matcher(cx, f, h, true) {
            Some(v) => m.headers.push(sp(v)),
            None => whole = false,
        }
    }
    for q in o
        .take("query_parameters")
        .map(Node::items)
        .unwrap_or_default()
    {
        match value_matcher(cx, f, q, false) {
            Some(v) => m.query_parameters.push(sp(v)),
            None => whole = false,
        }
    }
    if let Some(g) = o.take("grpc") {
        // Envoy's gRPC matcher is a content-type that starts with application/grpc.
        if g.is_empty() {
            m.headers.push(sp(ValueMatcher {
                name: sp("content-type".into()),
                exact: None,
                prefix: Some("application/grpc".into()),
                regex: None,
                present: None,
                invert_match: false,
            }));
        } else {
            cx.value(f, g.pos, "grpc route match options are not supported");
            whole = false;
        }
    }
    if o.rest().next().is_some() {
        whole = false;
    }
    cx.rest(f, &o, "route match");
    if !whole {
        cx.value(f, n.pos, "route dropped: part of its match cannot be expressed in Tern, and without it the route would take requests Envoy does not give it");
        return None;
    }
    Some(m)
}

/// A header matcher (`headers`) or query parameter matcher (`query_parameters`).
fn value_matcher(cx: &mut Ctx, f: &Path, n: &Node, header: bool) -> Option<ValueMatcher> {
    let what = if header {
        "header matcher"
    } else {
        "query parameter matcher"
    };
    let mut o = cx.obj(f, n, what)?;
    let name = o.take("name").and_then(|v| cx.str(f, v, "name"))?;
    let mut v = ValueMatcher {
        name,
        exact: None,
        prefix: None,
        regex: None,
        present: None,
        invert_match: false,
    };
    if let Some(i) = o.take("invert_match") {
        v.invert_match = cx.bool(f, i, "invert_match")?;
    }
    if let Some(p) = o.take("present_match") {
        v.present = Some(cx.bool(f, p, "present_match")?);
    } else if let Some(sm) = o.take("string_match") {
        string_match(cx, f, sm, &mut v)?;
    } else if let Some(e) = o.take("exact_match") {
        v.exact = cx.str(f, e, "exact_match").map(|s| s.value);
    } else if let Some(p) = o.take("prefix_match") {
        v.prefix = cx.str(f, p, "prefix_match").map(|s| s.value);
    } else if let Some(s) = o.take("suffix_match") {
        let s = cx.str(f, s, "suffix_match")?;
        v.regex = pattern(cx, f, n, &format!(".*{}", regex::escape(&s)));
    } else if let Some(c) = o.take("contains_match") {
        let s = cx.str(f, c, "contains_match")?;
        v.regex = pattern(cx, f, n, &format!(".*{}.*", regex::escape(&s)));
    } else if let Some(r) = o.take("safe_regex_match") {
        let r = safe_regex(cx, f, r)?;
        v.regex = pattern(cx, f, n, &r);
    } else if header {
        // Envoy: a header matcher with nothing but a name matches when the header is there.
        v.present = Some(true);
    } else {
        v.present = Some(true);
    }
    if let Some((k, _)) = o.take_kv("treat_missing_header_as_empty") {
        cx.field(f, k, what, None);
    }
    let unknown = o.rest().next().is_some();
    cx.rest(f, &o, what);
    let condition =
        v.exact.is_some() || v.prefix.is_some() || v.regex.is_some() || v.present.is_some();
    (condition && !unknown).then_some(v)
}

/// A `StringMatcher` into the matcher `v`; suffix, contains and `ignore_case` become regexes.
fn string_match(cx: &mut Ctx, f: &Path, n: &Node, v: &mut ValueMatcher) -> Option<()> {
    let mut o = cx.obj(f, n, "string_match")?;
    let ignore_case = match o.take("ignore_case") {
        Some(b) => cx.bool(f, b, "ignore_case")?,
        None => false,
    };
    let ci = if ignore_case { "(?i)" } else { "" };
    if let Some(e) = o.take("exact") {
        let s = cx.str(f, e, "exact")?.value;
        if ignore_case {
            v.regex = pattern(cx, f, e, &format!("{ci}{}", regex::escape(&s)));
        } else {
            v.exact = Some(s);
        }
    } else if let Some(p) = o.take("prefix") {
        let s = cx.str(f, p, "prefix")?.value;
        if ignore_case {
            v.regex = pattern(cx, f, p, &format!("{ci}{}.*", regex::escape(&s)));
        } else {
            v.prefix = Some(s);
        }
    } else if let Some(s) = o.take("suffix") {
        let s2 = cx.str(f, s, "suffix")?.value;
        v.regex = pattern(cx, f, s, &format!("{ci}.*{}", regex::escape(&s2)));
    } else if let Some(c) = o.take("contains") {
        let s = cx.str(f, c, "contains")?.value;
        v.regex = pattern(cx, f, c, &format!("{ci}.*{}.*", regex::escape(&s)));
    } else if let Some(r) = o.take("safe_regex") {
        let s = safe_regex(cx, f, r)?;
        v.regex = pattern(cx, f, r, &format!("{ci}{s}"));
    } else {
        cx.value(
            f,
            n.pos,
            "string_match without exact, prefix, suffix, contains or safe_regex",
        );
        cx.rest(f, &o, "string_match");
        return None;
    }
    cx.rest(f, &o, "string_match");
    Some(())
}

fn route_action(cx: &mut Ctx, f: &Path, n: &Node, regex_match: bool) -> Option<RouteAction> {
    let mut o = cx.obj(f, n, "route action")?;
    let mut a = RouteAction {
        cluster: None,
        weighted_clusters: None,
        prefix_rewrite: None,
        host_rewrite: None,
        timeout: None,
        idle_timeout: None,
        retry_policy: None,
        hash_policy: Vec::new(),
        per_request_buffer_limit_bytes: None,
        upgrade_configs: Vec::new(),
        max_stream_duration: None,
    };
    if let Some(c) = o.take("cluster") {
        a.cluster = cx.str(f, c, "cluster");
    } else if let Some(w) = o.take("weighted_clusters") {
        a.weighted_clusters = weighted(cx, f, w).map(sp);
    } else {
        cx.value(f, n.pos, "route action without `cluster` or `weighted_clusters` (cluster_header and cluster_specifier_plugin are not supported); route dropped");
        cx.rest(f, &o, "route action");
        return None;
    }
    if a.cluster.is_none() && a.weighted_clusters.is_none() {
        return None;
    }
    if let Some(p) = o.take("prefix_rewrite") {
        if regex_match {
            cx.value(f, p.pos, "prefix_rewrite on a regex match is not supported by Tern; use a prefix or path match");
        } else {
            a.prefix_rewrite = cx.str(f, p, "prefix_rewrite").map(|s| s.value);
        }
    }
    if let Some(h) = o.take("host_rewrite_literal") {
        a.host_rewrite = cx.str(f, h, "host_rewrite_literal");
    }
    if let Some(t) = o.take("timeout") {
        a.timeout = cx.dur(f, t, "timeout");
    }
    if let Some(t) = o.take("idle_timeout") {
        a.idle_timeout = cx.dur(f, t, "idle_timeout");
    }
    if let Some(r) = o.take("retry_policy") {
        a.retry_policy = retry_policy(cx, f, r).map(sp);
    }
    for h in o.take("hash_policy").map(Node::items).unwrap_or_default() {
        if let Some(h) = cx.item(f, h.pos, "hash policy", |cx| hash_policy(cx, f, h)) {
            a.hash_policy.push(sp(h));
        }
    }
    for u in o
        .take("upgrade_configs")
        .map(Node::items)
        .unwrap_or_default()
    {
        if let Some(u) = cx.item(f, u.pos, "upgrade config", |cx| upgrade_config(cx, f, u)) {
            a.upgrade_configs.push(sp(u));
        }
    }
    if let Some(m) = o
        .take("max_stream_duration")
        .and_then(|m| cx.obj(f, m, "max_stream_duration"))
    {
        let mut m = m;
        let mut msd = MaxStreamDuration::default();
        if let Some(v) = m.take("max_stream_duration") {
            msd.max_stream_duration = cx.dur(f, v, "max_stream_duration");
        }
        if let Some(v) = m.take("grpc_timeout_header_max") {
            msd.grpc_timeout_header_max = cx.dur(f, v, "grpc_timeout_header_max");
        }
        if let Some(v) = m.take("grpc_timeout_header_offset") {
            msd.grpc_timeout_header_offset = cx.dur(f, v, "grpc_timeout_header_offset");
        }
        cx.rest(f, &m, "max_stream_duration");
        a.max_stream_duration = Some(sp(msd));
    }
    if let Some((k, _)) = o.take_kv("auto_host_rewrite") {
        cx.field(f, k, "route action", Some("Tern keeps the client's Host unless host_rewrite names one; set host_rewrite to the upstream's name"));
    }
    if let Some((k, _)) = o.take_kv("regex_rewrite") {
        cx.field(
            f,
            k,
            "route action",
            Some("Tern rewrites by prefix only (prefix_rewrite)"),
        );
    }
    cx.rest(f, &o, "route action");
    Some(a)
}

fn weighted(cx: &mut Ctx, f: &Path, n: &Node) -> Option<WeightedClusters> {
    let mut o = cx.obj(f, n, "weighted_clusters")?;
    let mut clusters = Vec::new();
    for c in o.take("clusters").map(Node::items).unwrap_or_default() {
        let Some(mut co) = cx.obj(f, c, "weighted cluster") else {
            continue;
        };
        let Some(name) = co.take("name").and_then(|v| cx.str(f, v, "name")) else {
            cx.value(f, c.pos, "weighted cluster without a name");
            continue;
        };
        let weight = co
            .take("weight")
            .and_then(|w| cx.u32(f, w, "weight"))
            .unwrap_or(0);
        let h = header_rules(cx, f, &mut co);
        cx.rest(f, &co, "weighted cluster");
        clusters.push(sp(WeightedCluster {
            name,
            weight,
            request_headers_to_add: h.req_add,
            request_headers_to_remove: h.req_remove,
            response_headers_to_add: h.resp_add,
            response_headers_to_remove: h.resp_remove,
        }));
    }
    if let Some(t) = o.take("total_weight") {
        let sum: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
        if t.as_int() != Some(i128::from(sum)) {
            cx.value(f, t.pos, format!("total_weight differs from the sum of the weights ({sum}); Tern splits by the weights' sum"));
        }
    }
    cx.rest(f, &o, "weighted_clusters");
    Some(WeightedClusters { clusters })
}

/// An Envoy `RetryPolicy`. Envoy retries every method; Tern only idempotent ones unless
/// `retry_non_idempotent` says so, so it is set (the validator warns about it: W006).
pub fn retry_policy(cx: &mut Ctx, f: &Path, n: &Node) -> Option<RetryPolicy> {
    let mut o = cx.obj(f, n, "retry policy")?;
    let mut r = RetryPolicy {
        retry_non_idempotent: true,
        ..Default::default()
    };
    if let Some(v) = o.take("retry_on") {
        let on = cx.str(f, v, "retry_on")?;
        let (known, unknown): (Vec<&str>, Vec<&str>) = on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .partition(|c| tern_config::check_resilience::RETRY_ON.contains(c));
        if !unknown.is_empty() {
            cx.value(
                f,
                v.pos,
                format!(
                    "retry conditions Tern does not have are dropped: {}",
                    unknown.join(", ")
                ),
            );
        }
        if known.is_empty() {
            // Tern's default condition (5xx) would retry what Envoy does not.
            cx.value(
                f,
                n.pos,
                "retry policy dropped: none of its conditions exists in Tern",
            );
            return None;
        }
        r.retry_on = Some(sp(known.join(",")));
    } else {
        cx.value(f, n.pos, "retry policy without retry_on never retries in Envoy; Tern's would retry on 5xx, so it is dropped");
        return None;
    }
    if let Some(v) = o.take("num_retries") {
        r.num_retries = cx.u32(f, v, "num_retries").map(sp);
    }
    if let Some(v) = o.take("per_try_timeout") {
        r.per_try_timeout = cx.dur(f, v, "per_try_timeout");
    }
    if let Some(b) = o
        .take("retry_back_off")
        .and_then(|b| cx.obj(f, b, "retry_back_off"))
    {
        let mut b = b;
        let mut back = RetryBackOff::default();
        if let Some(v) = b.take("base_interval") {
            back.base_interval = cx.dur(f, v, "base_interval");
        }
        if let Some(v) = b.take("max_interval") {
            back.max_interval = cx.dur(f, v, "max_interval");
        }
        cx.rest(f, &b, "retry_back_off");
        r.retry_back_off = Some(sp(back));
    }
    for s in o
        .take("retriable_status_codes")
        .map(Node::items)
        .unwrap_or_default()
    {
        if let Some(c) = cx.u32(f, s, "status").and_then(|c| u16::try_from(c).ok()) {
            r.retriable_status_codes.push(sp(c));
        }
    }
    cx.rest(f, &o, "retry policy");
    Some(r)
}

fn hash_policy(cx: &mut Ctx, f: &Path, n: &Node) -> Option<HashPolicy> {
    let mut o = cx.obj(f, n, "hash policy")?;
    let mut h = HashPolicy::default();
    if let Some(t) = o.take("terminal") {
        h.terminal = cx.bool(f, t, "terminal")?;
    }
    if let Some(v) = o.take("header").and_then(|v| cx.obj(f, v, "header")) {
        let mut v = v;
        let header_name = v
            .take("header_name")
            .and_then(|x| cx.str(f, x, "header_name"))?;
        cx.rest(f, &v, "hash policy header");
        h.header = Some(HashHeader { header_name });
    } else if let Some(v) = o.take("cookie").and_then(|v| cx.obj(f, v, "cookie")) {
        let mut v = v;
        let name = v.take("name").and_then(|x| cx.str(f, x, "name"))?;
        cx.rest(f, &v, "hash policy cookie");
        h.cookie = Some(HashCookie { name });
    } else if let Some(v) = o
        .take("connection_properties")
        .and_then(|v| cx.obj(f, v, "connection_properties"))
    {
        let mut v = v;
        let source_ip = v
            .take("source_ip")
            .and_then(|x| cx.bool(f, x, "source_ip"))
            .unwrap_or(false);
        cx.rest(f, &v, "hash policy connection_properties");
        h.connection_properties = Some(HashConnection { source_ip });
    } else {
        cx.rest(f, &o, "hash policy");
        return None;
    }
    cx.rest(f, &o, "hash policy");
    Some(h)
}

/// An `UpgradeConfig` of a listener or route.
pub fn upgrade_config(cx: &mut Ctx, f: &Path, n: &Node) -> Option<UpgradeConfig> {
    let mut o = cx.obj(f, n, "upgrade config")?;
    let upgrade_type = o
        .take("upgrade_type")
        .and_then(|v| cx.str(f, v, "upgrade_type"))?;
    let enabled = o.take("enabled").and_then(|v| cx.bool(f, v, "enabled"));
    cx.rest(f, &o, "upgrade config");
    Some(UpgradeConfig {
        upgrade_type,
        enabled,
    })
}

fn direct_response(cx: &mut Ctx, f: &Path, n: &Node) -> Option<DirectResponse> {
    let mut o = cx.obj(f, n, "direct_response")?;
    let status = o
        .take("status")
        .and_then(|s| cx.u32(f, s, "status"))
        .and_then(|s| u16::try_from(s).ok())?;
    let mut body = None;
    if let Some(b) = o.take("body").and_then(|b| cx.obj(f, b, "body")) {
        let mut b = b;
        if let Some(s) = b.take("inline_string") {
            body = cx.str(f, s, "inline_string").map(|s| s.value);
        }
        for (k, _) in b.rest() {
            cx.value(
                f,
                k.pos,
                format!(
                    "direct_response body from `{}` is not supported; write it as inline_string",
                    k.name
                ),
            );
        }
    }
    cx.rest(f, &o, "direct_response");
    Some(DirectResponse {
        status: sp(status),
        body,
    })
}

fn redirect(cx: &mut Ctx, f: &Path, n: &Node) -> Option<Redirect> {
    let mut o = cx.obj(f, n, "redirect")?;
    let mut r = Redirect::default();
    if let Some(v) = o.take("host_redirect") {
        r.host_redirect = cx.str(f, v, "host_redirect").map(|s| s.value);
    }
    if let Some(v) = o.take("port_redirect") {
        r.port_redirect = cx
            .u32(f, v, "port_redirect")
            .and_then(|p| u16::try_from(p).ok());
    }
    if let Some(v) = o.take("path_redirect") {
        r.path_redirect = cx.str(f, v, "path_redirect");
    }
    if let Some(v) = o.take("prefix_rewrite") {
        r.prefix_rewrite = cx.str(f, v, "prefix_rewrite").map(|s| s.value);
    }
    if let Some(v) = o.take("scheme_redirect") {
        r.scheme_redirect = cx.str(f, v, "scheme_redirect");
    }
    if let Some(v) = o.take("https_redirect") {
        r.https_redirect = cx.bool(f, v, "https_redirect").unwrap_or(false);
    }
    if let Some(v) = o.take("strip_query") {
        r.strip_query = cx.bool(f, v, "strip_query").unwrap_or(false);
    }
    if let Some(v) = o.take("response_code") {
        let code = match v.as_enum().as_deref() {
            Some("MOVED_PERMANENTLY") => Some(301),
            Some("FOUND") => Some(302),
            Some("SEE_OTHER") => Some(303),
            Some("TEMPORARY_REDIRECT") => Some(307),
            Some("PERMANENT_REDIRECT") => Some(308),
            _ => {
                cx.value(f, v.pos, "unknown redirect response_code");
                None
            }
        };
        r.response_code = code.map(sp);
    }
    if let Some((k, _)) = o.take_kv("regex_rewrite") {
        cx.field(
            f,
            k,
            "redirect",
            Some("Tern rewrites redirect paths by prefix only (prefix_rewrite)"),
        );
    }
    cx.rest(f, &o, "redirect");
    Some(r)
}

/// Puts the listener-wide filters on every virtual host that has none of its own.
pub fn apply_filters(rc: &mut RouteConfig, filters: &ListenerFilters) {
    for vh in &mut rc.virtual_hosts {
        if vh.fault.is_none() {
            vh.value.fault = filters.fault.clone().map(sp);
        }
        if vh.rate_limit.is_none() {
            vh.value.rate_limit = filters.rate_limit.clone().map(sp);
        }
    }
}
