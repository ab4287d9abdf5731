//! Parsing fragments, merging them by name, and the semantic checks that need the whole set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::diag::{codes, Diagnostic};
use super::model::*;
use super::source::Sources;
use super::value::{Pos, Spanned};
use super::{Config, Def};

/// Parses and checks a set of sources. Returns the merged configuration only when there is no error.
pub fn check(sources: &Sources) -> (Option<Config>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let files: Vec<PathBuf> = sources.files.iter().map(|f| f.path.clone()).collect();
    let mut fragments = Vec::new();
    let mut parse_failed = false;
    for (i, f) in sources.files.iter().enumerate() {
        match serde_saphyr::from_str::<Fragment>(&f.text) {
            Ok(frag) => {
                if frag.admin.is_none()
                    && frag.listeners.is_empty()
                    && frag.route_configs.is_empty()
                    && frag.clusters.is_empty()
                {
                    diags.push(Diagnostic::warning(
                        codes::EMPTY_FILE,
                        &f.path,
                        Pos { line: 1, column: 1 },
                        "file defines nothing (no admin, listeners, route_configs or clusters)",
                    ));
                }
                fragments.push((i, frag));
            }
            Err(e) => {
                parse_failed = true;
                diags.push(yaml_error(&f.path, &e));
            }
        }
    }

    let mut cfg = Config {
        files,
        ..Default::default()
    };
    let mut admin_at: Option<(usize, Pos)> = None;
    for (file, frag) in fragments {
        if let Some(a) = frag.admin {
            if let Some((f0, p0)) = admin_at {
                diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        &cfg.files[file],
                        a.pos,
                        "admin is defined twice",
                    )
                    .with_related("first defined here", &cfg.files[f0], p0),
                );
            } else {
                admin_at = Some((file, a.pos));
                cfg.admin = a.value;
            }
        }
        let def = |s: Spanned<_>| Def {
            file,
            pos: s.pos,
            value: s.value,
        };
        cfg.listeners.extend(frag.listeners.into_iter().map(def));
        cfg.route_configs
            .extend(frag.route_configs.into_iter().map(|s| Def {
                file,
                pos: s.pos,
                value: s.value,
            }));
        cfg.clusters.extend(frag.clusters.into_iter().map(|s| Def {
            file,
            pos: s.pos,
            value: s.value,
        }));
    }

    let mut ck = Checker {
        files: &cfg.files,
        diags: &mut diags,
    };
    ck.unique(
        "listener",
        cfg.listeners.iter().map(|d| (d.file, &d.value.name)),
    );
    ck.unique(
        "route config",
        cfg.route_configs.iter().map(|d| (d.file, &d.value.name)),
    );
    ck.unique(
        "cluster",
        cfg.clusters.iter().map(|d| (d.file, &d.value.name)),
    );
    for l in &cfg.listeners {
        ck.listener(l);
    }
    for rc in &cfg.route_configs {
        ck.route_config(rc);
    }
    for c in &cfg.clusters {
        ck.cluster(c);
    }
    ck.addresses(&cfg, admin_at);
    // References into a file that failed to parse would all look dangling: report the parse error alone.
    if !parse_failed {
        ck.references(&cfg);
    }
    super::check_resilience::check(&cfg, &mut diags);
    super::check_observability::check(&cfg, &mut diags);
    super::lint::lint(&cfg, &mut diags);

    diags.sort_by(|a, b| {
        (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
    });
    if diags.iter().any(Diagnostic::is_error) {
        (None, diags)
    } else {
        (Some(cfg), diags)
    }
}

/// Turns a serde-saphyr error into a diagnostic with a stable code and, for typos, a suggestion.
fn yaml_error(file: &Path, e: &serde_saphyr::Error) -> Diagnostic {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line() as u32,
            column: l.column() as u32,
        })
        .unwrap_or_default();
    let full = e.without_snippet().to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
    let mut inner = e;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    use serde_saphyr::Error as E;
    let code = match inner {
        E::SerdeUnknownField { .. } => codes::UNKNOWN_FIELD,
        E::SerdeInvalidType { .. }
        | E::SerdeInvalidLength { .. }
        | E::SerdeMissingField { .. }
        | E::Unexpected { .. }
        | E::NullIntoString { .. }
        | E::InvalidBooleanStrict { .. } => codes::WRONG_TYPE,
        E::SerdeUnknownVariant { .. } | E::SerdeInvalidValue { .. } | E::Message { .. } => {
            codes::BAD_VALUE
        }
        E::DuplicateMappingKey { .. } => codes::DUPLICATE,
        _ => codes::SYNTAX,
    };
    let mut d = Diagnostic::error(code, file, pos, msg.clone());
    if let Some(s) = suggestion(&msg) {
        d = d.with_help(format!("did you mean `{s}`?"));
    }
    d
}

/// For "unknown field `x`, expected one of a, b" (or variant), the closest expected name.
fn suggestion(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    let got = &msg[start..end];
    let rest = &msg[end..];
    let list = rest
        .split_once("expected one of ")
        .map(|(_, l)| l)
        .or_else(|| rest.split_once("expected ").map(|(_, l)| l))?;
    list.split(',')
        .map(|s| s.trim().trim_matches('`'))
        .filter(|s| !s.is_empty())
        .map(|s| (strsim::jaro_winkler(got, s), s))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| s.to_string())
}

struct Checker<'a> {
    files: &'a [PathBuf],
    diags: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    fn err(&mut self, code: &'static str, file: usize, pos: Pos, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(code, &self.files[file], pos, msg));
    }

    fn bad(&mut self, file: usize, pos: Pos, msg: impl Into<String>) {
        self.err(codes::BAD_VALUE, file, pos, msg)
    }

    fn name(&mut self, what: &str, file: usize, name: &Spanned<String>) {
        if name.trim().is_empty() {
            self.bad(file, name.pos, format!("{what} name must not be empty"));
        }
    }

    /// Names must be unique across all files; the error names both places.
    fn unique<'n>(
        &mut self,
        what: &str,
        names: impl Iterator<Item = (usize, &'n Spanned<String>)>,
    ) {
        let mut seen: HashMap<&str, (usize, Pos)> = HashMap::new();
        for (file, name) in names {
            if let Some(&(f0, p0)) = seen.get(name.as_str()) {
                let d = Diagnostic::error(
                    codes::DUPLICATE,
                    &self.files[file],
                    name.pos,
                    format!("{what} `{}` is defined twice", name.value),
                )
                .with_related("first defined here", &self.files[f0], p0);
                self.diags.push(d);
            } else {
                seen.insert(name.as_str(), (file, name.pos));
            }
        }
    }

    fn listener(&mut self, l: &Def<Listener>) {
        let v = &l.value;
        self.name("listener", l.file, &v.name);
        match (&v.route_config, &v.tcp_proxy) {
            (Some(_), Some(_)) => self.bad(
                l.file,
                l.pos,
                format!(
                    "listener `{}` sets both route_config and tcp_proxy; choose one",
                    v.name.value
                ),
            ),
            (None, None) => self.bad(
                l.file,
                l.pos,
                format!(
                    "listener `{}` needs route_config (HTTP) or tcp_proxy (TCP)",
                    v.name.value
                ),
            ),
            _ => {}
        }
        if v.address.port() == 0 {
            self.bad(l.file, v.address.pos, "listener port must not be 0");
        }
    }

    fn route_config(&mut self, rc: &Def<RouteConfig>) {
        let f = rc.file;
        self.name("route config", f, &rc.value.name);
        self.unique(
            "virtual host",
            rc.value.virtual_hosts.iter().map(|v| (f, &v.name)),
        );
        for vh in &rc.value.virtual_hosts {
            self.name("virtual host", f, &vh.name);
            if vh.domains.is_empty() {
                self.bad(
                    f,
                    vh.pos,
                    format!("virtual host `{}` has no domains", vh.name.value),
                );
            }
            for d in &vh.domains {
                if let Err(e) = domain_pattern_ok(d) {
                    self.bad(f, d.pos, e);
                }
            }
            for r in &vh.routes {
                self.route(f, r);
            }
        }
    }

    fn route(&mut self, f: usize, r: &Spanned<Route>) {
        let m = &r.matcher;
        let kinds = m.prefix.is_some() as u8 + m.path.is_some() as u8 + m.regex.is_some() as u8;
        if kinds != 1 {
            self.bad(f, m.pos, "match needs exactly one of prefix, path or regex");
        }
        for p in [&m.prefix, &m.path].into_iter().flatten() {
            if !p.starts_with('/') {
                self.bad(f, p.pos, format!("path {:?} must start with /", p.value));
            }
        }
        for h in m.headers.iter().chain(&m.query_parameters) {
            let n = h.exact.is_some() as u8
                + h.prefix.is_some() as u8
                + h.regex.is_some() as u8
                + h.present.is_some() as u8;
            if n != 1 {
                self.bad(
                    f,
                    h.pos,
                    format!(
                        "matcher for `{}` needs exactly one of exact, prefix, regex or present",
                        h.name.value
                    ),
                );
            }
            if h.name.is_empty() {
                self.bad(f, h.name.pos, "matcher name must not be empty");
            }
        }
        for h in &m.headers {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() && !h.name.is_empty() {
                self.bad(
                    f,
                    h.name.pos,
                    format!("{:?} is not a valid header name", h.name.value),
                );
            }
        }
        let actions = r.route.is_some() as u8
            + r.direct_response.is_some() as u8
            + r.redirect.is_some() as u8;
        if actions != 1 {
            self.bad(
                f,
                r.pos,
                "route needs exactly one of route, direct_response or redirect",
            );
        }
        if let Some(a) = &r.route {
            if let Some(h) = &a.host_rewrite {
                if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                    self.bad(
                        f,
                        h.pos,
                        format!("host_rewrite {:?} is not a valid Host", h.value),
                    );
                }
            }
        }
        if let Some(d) = &r.direct_response {
            if !(100..=599).contains(&d.status.value) {
                self.bad(
                    f,
                    d.status.pos,
                    format!("status {} is not an HTTP status (100-599)", d.status.value),
                );
            }
        }
        if let Some(rd) = &r.redirect {
            if let Some(c) = &rd.response_code {
                if ![301, 302, 303, 307, 308].contains(&c.value) {
                    self.bad(
                        f,
                        c.pos,
                        format!(
                            "redirect response_code {} must be 301, 302, 303, 307 or 308",
                            c.value
                        ),
                    );
                }
            }
            if let Some(s) = &rd.scheme_redirect {
                if s.as_str() != "http" && s.as_str() != "https" {
                    self.bad(
                        f,
                        s.pos,
                        format!("scheme_redirect {:?} must be http or https", s.value),
                    );
                }
            }
            if let Some(p) = &rd.path_redirect {
                if !p.starts_with('/') {
                    self.bad(
                        f,
                        p.pos,
                        format!("path_redirect {:?} must start with /", p.value),
                    );
                }
            }
        }
    }

    fn cluster(&mut self, c: &Def<Cluster>) {
        let f = c.file;
        self.name("cluster", f, &c.value.name);
        if let Some(t) = &c.value.connect_timeout {
            if t.0.is_zero() {
                self.bad(f, t.pos, "connect_timeout must be greater than 0");
            }
        }
        for e in &c.value.endpoints {
            if let Err(msg) = endpoint_address_ok(&e.address) {
                self.bad(f, e.address.pos, msg);
            }
            if e.weight == 0 {
                self.bad(f, e.pos, "endpoint weight must be at least 1");
            }
        }
    }

    /// Two listeners (or a listener and the admin endpoint) cannot share a port on overlapping IPs.
    fn addresses(&mut self, cfg: &Config, admin_at: Option<(usize, Pos)>) {
        let mut seen: Vec<(SocketAddr, usize, Pos, String)> = Vec::new();
        if let Some((file, _)) = admin_at {
            seen.push((
                *cfg.admin.address,
                file,
                cfg.admin.address.pos,
                "the admin endpoint".into(),
            ));
        }
        for l in &cfg.listeners {
            let addr = *l.value.address;
            if let Some((_, f0, p0, what)) = seen.iter().find(|(a, ..)| overlaps(*a, addr)) {
                let d = Diagnostic::error(
                    codes::ADDRESS_CONFLICT,
                    &self.files[l.file],
                    l.value.address.pos,
                    format!(
                        "listener `{}` uses address {addr}, already used by {what}",
                        l.value.name.value
                    ),
                )
                .with_related("first used here", &self.files[*f0], *p0);
                self.diags.push(d);
            } else {
                seen.push((
                    addr,
                    l.file,
                    l.value.address.pos,
                    format!("listener `{}`", l.value.name.value),
                ));
            }
        }
    }

    fn references(&mut self, cfg: &Config) {
        let clusters: HashMap<&str, ()> = cfg
            .clusters
            .iter()
            .map(|c| (c.value.name.as_str(), ()))
            .collect();
        let route_configs: HashMap<&str, ()> = cfg
            .route_configs
            .iter()
            .map(|c| (c.value.name.as_str(), ()))
            .collect();
        let mut missing = Vec::new();
        for l in &cfg.listeners {
            if let Some(rc) = &l.value.route_config {
                if !route_configs.contains_key(rc.as_str()) {
                    missing.push((l.file, rc, "route config", route_configs.keys()));
                }
            }
            if let Some(t) = &l.value.tcp_proxy {
                if !clusters.contains_key(t.cluster.as_str()) {
                    missing.push((l.file, &t.cluster, "cluster", clusters.keys()));
                }
            }
        }
        for rc in &cfg.route_configs {
            for vh in &rc.value.virtual_hosts {
                for r in &vh.routes {
                    if let Some(a) = &r.route {
                        let weighted = a
                            .weighted_clusters
                            .iter()
                            .flat_map(|w| w.clusters.iter().map(|c| &c.name));
                        for name in a.cluster.iter().chain(weighted) {
                            if !clusters.contains_key(name.as_str()) {
                                missing.push((rc.file, name, "cluster", clusters.keys()));
                            }
                        }
                    }
                }
            }
        }
        for (file, name, what, known) in missing {
            let mut d = Diagnostic::error(
                codes::DANGLING_REFERENCE,
                &self.files[file],
                name.pos,
                format!("{what} `{}` is not defined in any file", name.value),
            );
            let best = known
                .map(|k| (strsim::jaro_winkler(k, name), *k))
                .filter(|(s, _)| *s > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((_, k)) = best {
                d = d.with_help(format!("did you mean `{k}`?"));
            }
            self.diags.push(d);
        }
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
            || (b.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4()))
}

/// `host:port` where host is an IP or a DNS name and port is 1-65535.
pub fn endpoint_address_ok(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        format!(
            "endpoint address {addr:?} must be host:port (e.g. 10.0.0.5:8080 or api.internal:80)"
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0
        || host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad());
    }
    Ok(())
}

/// Exact, `*.suffix`, `prefix.*` or `*`.
fn domain_pattern_ok(d: &str) -> Result<(), String> {
    let inner = d
        .strip_prefix('*')
        .or_else(|| d.strip_suffix('*'))
        .unwrap_or(d);
    if d.is_empty() || inner.contains('*') {
        return Err(format!(
            "domain {d:?} is not valid: use example.com, *.example.com, example.* or *"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_closest_name() {
        assert_eq!(
            suggestion("unknown field `timout`, expected one of cluster, prefix_rewrite, timeout")
                .as_deref(),
            Some("timeout")
        );
        assert_eq!(
            suggestion("unknown field `zzz`, expected one of name, address"),
            None
        );
    }

    #[test]
    fn address_overlap() {
        let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:81".parse().unwrap();
        assert!(overlaps(a, b));
        assert!(!overlaps(b, c));
    }

    #[test]
    fn endpoint_addresses() {
        assert!(endpoint_address_ok("127.0.0.1:8080").is_ok());
        assert!(endpoint_address_ok("backend:80").is_ok());
        assert!(endpoint_address_ok("backend").is_err());
        assert!(endpoint_address_ok("backend:0").is_err());
        assert!(endpoint_address_ok("http://x:80").is_err());
    }
}
