//! Checks of service discovery: a cluster's `type` against its endpoint addresses, the DNS
//! refresh settings, and the top-level `dns` resolver settings.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::diag::{codes, Diagnostic};
use super::model::*;
use super::value::Pos;
use super::{Config, Def};

struct Ck<'a> {
    files: &'a [PathBuf],
    file: usize,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ck<'_> {
    fn bad(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(
            codes::BAD_VALUE,
            &self.files[self.file],
            pos,
            msg,
        ));
        self.diags.last_mut().expect("just pushed")
    }

    fn cluster(&mut self, c: &Def<Cluster>) {
        let v = &c.value;
        let name = &v.name.value;
        let kind = v.discovery_type();
        let type_pos = v.discovery.as_ref().map_or(c.pos, |t| t.pos);
        match kind {
            DiscoveryType::Static => {
                for e in &v.endpoints {
                    // A malformed address is reported by the address check already.
                    if !e.is_ip() && super::check::endpoint_address_ok(&e.address).is_ok() {
                        let d = self.bad(
                            e.address.pos,
                            format!(
                                "endpoint `{}` is a host name, but cluster `{name}` is `type: static` (IP addresses only)",
                                e.address.value
                            ),
                        );
                        d.help = Some(
                            "use `type: strict_dns` (every address the name resolves to is an endpoint) or `type: logical_dns`"
                                .into(),
                        );
                    }
                }
                let dns_fields = [
                    (
                        "dns_refresh_rate",
                        v.dns_refresh_rate.as_ref().map(|d| d.pos),
                    ),
                    ("respect_dns_ttl", v.respect_dns_ttl.map(|_| c.pos)),
                    (
                        "dns_failure_refresh_rate",
                        v.dns_failure_refresh_rate.as_ref().map(|d| d.pos),
                    ),
                    ("dns_lookup_family", v.dns_lookup_family.map(|_| c.pos)),
                ];
                for (field, pos) in dns_fields {
                    if let Some(pos) = pos {
                        self.bad(
                            pos,
                            format!(
                                "{field} applies to strict_dns and logical_dns clusters; cluster `{name}` is static (its endpoints are IP addresses)"
                            ),
                        );
                    }
                }
            }
            DiscoveryType::LogicalDns if v.endpoints.len() != 1 => {
                self.bad(
                    type_pos,
                    format!(
                        "a logical_dns cluster has exactly one endpoint; cluster `{name}` has {}",
                        v.endpoints.len()
                    ),
                );
            }
            _ => {}
        }
        if let Some(r) = &v.dns_refresh_rate {
            if r.0 < crate::defaults::DNS_MIN_REFRESH {
                self.bad(
                    r.pos,
                    format!("dns_refresh_rate {} must be at least 1s", r.value),
                );
            }
        }
        if let Some(f) = &v.dns_failure_refresh_rate {
            if f.base_interval.0.is_zero() {
                self.bad(f.base_interval.pos, "base_interval must be greater than 0");
            }
            if let Some(max) = &f.max_interval {
                if max.0 < f.base_interval.0 {
                    self.bad(
                        max.pos,
                        format!(
                            "max_interval {} is below base_interval {}",
                            max.value, f.base_interval.value
                        ),
                    );
                }
            }
        }
    }

    fn dns(&mut self, d: &Def<Dns>) {
        for r in &d.value.resolvers {
            if let Err(e) = resolver_address(r) {
                self.bad(r.pos, e);
            }
        }
        if let Some(t) = &d.value.timeout {
            if t.0.is_zero() {
                self.bad(t.pos, "dns timeout must be greater than 0");
            }
        }
        if let Some(a) = &d.value.attempts {
            if a.value == 0 {
                self.bad(a.pos, "dns attempts must be at least 1");
            }
        }
    }
}

/// A `dns.resolvers` entry: `ip` (port 53) or `ip:port`.
pub fn resolver_address(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => SocketAddr::new(
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|_| {
                    format!(
                        "resolver {s:?} must be an IP address, optionally with a port (10.0.0.2 or 10.0.0.2:53)"
                    )
                })?,
            53,
        ),
    };
    if addr.port() == 0 {
        return Err(format!("resolver {s:?}: port must not be 0"));
    }
    Ok(addr)
}

/// Adds errors for discovery settings that do not fit the cluster's endpoints or are out of range.
pub fn check(cfg: &Config, diags: &mut Vec<Diagnostic>) {
    for c in &cfg.clusters {
        Ck {
            files: &cfg.files,
            file: c.file,
            diags,
        }
        .cluster(c);
    }
    if let Some(d) = &cfg.dns {
        Ck {
            files: &cfg.files,
            file: d.file,
            diags,
        }
        .dns(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(files: &[(&str, &str)]) -> crate::Report {
        crate::check_sources(crate::Sources {
            root: "cfg".into(),
            files: files
                .iter()
                .map(|(p, t)| crate::SourceFile {
                    path: (*p).into(),
                    text: (*t).into(),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn diags(yaml: &str) -> Vec<Diagnostic> {
        report(&[("c.yaml", yaml)]).diagnostics
    }

    fn errors(yaml: &str) -> Vec<(u32, String)> {
        diags(yaml)
            .into_iter()
            .filter(|d| d.is_error())
            .map(|d| {
                assert_eq!(d.code, "E004", "{d}");
                (d.line, d.message)
            })
            .collect()
    }

    #[test]
    fn host_names_default_to_strict_dns_and_ip_literals_to_static() {
        let c = |eps: &str| {
            let yaml = format!("clusters:\n  - name: c\n    endpoints: [{eps}]\n");
            report(&[("c.yaml", &yaml)]).config.unwrap().clusters[0]
                .value
                .discovery_type()
        };
        assert_eq!(c("{ address: 10.0.0.1:80 }"), DiscoveryType::Static);
        assert_eq!(c("{ address: \"[::1]:80\" }"), DiscoveryType::Static);
        assert_eq!(c(""), DiscoveryType::Static);
        assert_eq!(
            c("{ address: 10.0.0.1:80 }, { address: api.internal:80 }"),
            DiscoveryType::StrictDns
        );
    }

    #[test]
    fn a_host_name_under_static_is_an_error_at_the_address() {
        let e = errors(
            "clusters:\n  - name: c\n    type: static\n    endpoints:\n      - address: 10.0.0.1:80\n      - address: api.internal:80\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, 6);
        assert!(e[0].1.contains("`api.internal:80` is a host name"), "{e:?}");
        let d = &diags(
            "clusters:\n  - name: c\n    type: static\n    endpoints: [{ address: api:80 }]\n",
        )[0];
        assert!(d.help.as_deref().unwrap().contains("strict_dns"));
    }

    #[test]
    fn logical_dns_has_exactly_one_endpoint() {
        let e = errors(
            "clusters:\n  - name: c\n    type: logical_dns\n    endpoints: [{ address: a:80 }, { address: b:80 }]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, 3);
        assert!(errors(
            "clusters:\n  - name: c\n    type: logical_dns\n    endpoints: [{ address: a:80 }]\n"
        )
        .is_empty());
    }

    #[test]
    fn dns_settings_are_checked() {
        let e = errors(
            "clusters:\n  - name: c\n    dns_refresh_rate: 500ms\n    dns_failure_refresh_rate: { base_interval: 2s, max_interval: 1s }\n    endpoints: [{ address: a:80 }]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].1.contains("at least 1s"), "{e:?}");
        assert!(e[1].1.contains("below base_interval"), "{e:?}");
        // DNS settings on a cluster of IP addresses do nothing: said so.
        let e = errors(
            "clusters:\n  - name: c\n    dns_lookup_family: v6_only\n    dns_refresh_rate: 2s\n    endpoints: [{ address: 10.0.0.1:80 }]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|(_, m)| m.contains("is static")), "{e:?}");
        assert!(errors(
            "clusters:\n  - name: c\n    type: strict_dns\n    dns_lookup_family: all\n    respect_dns_ttl: false\n    dns_refresh_rate: 2s\n    dns_failure_refresh_rate: { base_interval: 100ms }\n    endpoints: [{ address: 10.0.0.1:80 }]\n"
        )
        .is_empty());
        // Unknown values are parse errors with the field's place.
        let d = diags("clusters:\n  - name: c\n    type: eds\n    endpoints: []\n");
        assert!(d.iter().any(|d| d.is_error() && d.line == 3), "{d:?}");
    }

    #[test]
    fn the_dns_block_is_checked_and_defined_once() {
        let e = errors(
            "dns:\n  resolvers: [10.0.0.2, \"127.0.0.1:5353\", \"[fd00::2]:53\", \"fd00::3\", dns.internal, \"10.0.0.2:0\"]\n  timeout: 0s\n  attempts: 0\n",
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].1.contains("\"dns.internal\""), "{e:?}");
        assert_eq!(
            resolver_address("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            resolver_address("fd00::3").unwrap(),
            "[fd00::3]:53".parse().unwrap()
        );
        let a = ("a.yaml", "dns: { resolvers: [10.0.0.2] }\n");
        let r = report(&[a, ("b.yaml", "dns: { timeout: 1s }\n")]);
        assert_eq!(r.diagnostics.len(), 1, "{:?}", r.diagnostics);
        assert_eq!(r.diagnostics[0].code, "E005");
        let cfg = report(&[a]).config.unwrap();
        assert_eq!(cfg.dns.unwrap().value.resolvers[0].value, "10.0.0.2");
    }

    #[test]
    fn a_broken_dns_block_is_recovered_like_admin() {
        let d = diags(
            "dns:\n  resolvers: [10.0.0.2]\n  tiemout: 1s\nclusters:\n  - name: c\n    endpoints: [{ address: a:80 }]\n  - name: d\n    type: stattic\n    endpoints: []\n",
        );
        let errs: Vec<_> = d.iter().filter(|d| d.is_error()).collect();
        assert!(
            errs.iter().any(|d| d.line == 3 && d.code == "E002"),
            "{errs:?}"
        );
        assert!(errs.iter().any(|d| d.line == 8), "{errs:?}");
    }
}
