//! Warnings about configurations that load but look wrong or risky (unreachable routes, ...).
//!
//! Lints never stop the proxy from loading; `tern-validate --strict` turns them into failures.

use std::collections::HashMap;

use super::diag::{codes, Diagnostic};
use super::model::{RouteMatch, VirtualHost};
use super::value::{Pos, Spanned};
use super::Config;

/// Adds warnings for `cfg` to `diags`.
pub fn lint(cfg: &Config, diags: &mut Vec<Diagnostic>) {
    for rc in &cfg.route_configs {
        let file = &cfg.files[rc.file];
        domains(&rc.value.virtual_hosts, |d| diags.push(d.into_diag(file)));
        for vh in &rc.value.virtual_hosts {
            unreachable_routes(vh, |d| diags.push(d.into_diag(file)));
        }
    }
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
    // Only earlier routes that could shadow anything are kept: for large tables this is the
    // few catch-alls, not every route.
    let mut earlier: Vec<(&RouteMatch, Pos)> = Vec::new();
    for r in &vh.routes {
        let m = &r.matcher.value;
        if let Some((by, pos)) = earlier.iter().find(|(e, _)| shadows(e, m)) {
            let message = if *by == m {
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
                related: Some(("matched first here".into(), *pos)),
                help: Some(
                    "routes are tried in order: move this route above the other one, or make the other one more specific (e.g. a header matcher)".into(),
                ),
            });
        }
        earlier.push((m, r.matcher.pos));
    }
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

/// True when every request matching `b` also matches `a`.
///
/// Conservative: only certain cases are reported (a prefix covering a prefix, path or regex-free
/// catch-all; equal paths; a regex matching a literal path), with `a`'s header and query
/// conditions all present in `b`.
fn shadows(a: &RouteMatch, b: &RouteMatch) -> bool {
    let subset = |x: &[Spanned<_>], y: &[Spanned<_>]| x.iter().all(|c| y.contains(c));
    if !subset(&a.headers, &b.headers) || !subset(&a.query_parameters, &b.query_parameters) {
        return false;
    }
    if let Some(pa) = &a.prefix {
        if let Some(pb) = b.prefix.as_ref().or(b.path.as_ref()) {
            return pb.starts_with(pa.as_str());
        }
        // Request paths always start with `/`, so `prefix: /` also covers every regex route.
        return b.regex.is_some() && pa.as_str() == "/";
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> RouteMatch {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn shadowing_cases() {
        let all = m("prefix: /");
        assert!(shadows(&all, &m("prefix: /api")));
        assert!(shadows(&all, &m("path: /x")));
        assert!(shadows(&all, &m("regex: /v[0-9]+")));
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
