//! The route table of a TCP listener: a default cluster and clusters by the SNI of the client's
//! TLS ClientHello (Envoy's `filter_chain_match.server_names`: the exact name first, else the
//! longest matching `*.` wildcard).

use std::sync::Arc;

use crate::upstream::cluster::Cluster;

/// Where a TCP listener sends a connection.
#[derive(Debug)]
pub struct TcpRoutes {
    /// For connections no SNI route takes (`None`: they are closed).
    pub default: Option<Arc<Cluster>>,
    /// `(server name, cluster)`, names lowercase, in configuration order.
    pub by_sni: Vec<(String, Arc<Cluster>)>,
}

impl TcpRoutes {
    /// Whether the listener looks at SNI at all.
    pub fn uses_sni(&self) -> bool {
        !self.by_sni.is_empty()
    }

    /// The cluster for a connection whose ClientHello named `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<Cluster>> {
        let by_name = sni.and_then(|sni| {
            let sni = sni.trim_end_matches('.');
            let exact = self
                .by_sni
                .iter()
                .find(|(n, _)| !n.starts_with("*.") && n.eq_ignore_ascii_case(sni));
            exact.or_else(|| {
                self.by_sni
                    .iter()
                    .filter(|(n, _)| n.starts_with("*.") && tern_config::tls::name_matches(n, sni))
                    .max_by_key(|(n, _)| n.len())
            })
        });
        by_name.map(|(_, c)| c).or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_wildcard_then_default() {
        let c = |name: &str| {
            let mut spec = crate::upstream::cluster::test_spec(0, 1);
            spec.name = tern_config::Spanned::unplaced(name.into());
            Cluster::build(&spec, None, &crate::stats::Stats::default(), None).unwrap()
        };
        let r = TcpRoutes {
            default: Some(c("default")),
            by_sni: vec![
                ("*.example.com".into(), c("wild")),
                ("db.example.com".into(), c("db")),
            ],
        };
        let name = |sni| r.pick(sni).map(|c| c.name.to_string());
        assert_eq!(name(Some("db.example.com")).as_deref(), Some("db"));
        assert_eq!(name(Some("DB.example.com.")).as_deref(), Some("db"));
        assert_eq!(name(Some("web.example.com")).as_deref(), Some("wild"));
        assert_eq!(name(Some("a.b.example.com")).as_deref(), Some("default"));
        assert_eq!(name(None).as_deref(), Some("default"));
    }
}
