//! Checks of the edge settings: the listener's client-address settings (trusted hops, PROXY
//! protocol), header rules at every level, and clusters' connection options.
//!
//! A header value is compiled here with the access log's compiler ([`crate::log_format`]), the
//! same call the proxy makes, so a value that passes loads.

use std::path::PathBuf;

use super::diag::{codes, Diagnostic};
use super::log_format::{compile_text, Field, Part};
use super::model::*;
use super::value::{Pos, Spanned};
use super::Config;

/// Headers no rule may set or remove: hop-by-hop headers (the proxy removes them on every hop)
/// and, on requests, `host` (Envoy's rule; `host_rewrite` changes it).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// Which way a header rule goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Applied to the request before it goes upstream.
    Request,
    /// Applied to the response sent to the client.
    Response,
}

/// Why a rule may not touch header `name` (lowercase), or `None` when it may.
pub fn immutable(name: &str, dir: Direction) -> Option<&'static str> {
    if name.starts_with(':') {
        Some("pseudo-headers cannot be changed by header rules")
    } else if HOP_BY_HOP.contains(&name) {
        Some("hop-by-hop headers are removed on every hop and cannot be set or removed")
    } else if name == "content-length" {
        // The body's framing: a rule could only truncate a body or leave a peer waiting for one.
        Some("`content-length` is the body's framing and cannot be set or removed by header rules")
    } else if dir == Direction::Request && name == "host" {
        Some("`host` cannot be changed by header rules; use the route's `host_rewrite`")
    } else {
        None
    }
}

/// Compiles a header rule's value for `dir`: the parts, or why it cannot be used there.
pub fn compile_value(
    value: &str,
    dir: Direction,
    req: &mut Vec<http::HeaderName>,
    resp: &mut Vec<http::HeaderName>,
) -> Result<Vec<Part>, String> {
    let parts = compile_text(value, req, resp).map_err(|e| e.replace("access log ", ""))?;
    for p in &parts {
        let Part::Field(f) = p else { continue };
        let known = match dir {
            Direction::Request => f.known_for_request(),
            Direction::Response => f.known_for_response(),
        };
        if !known {
            let when = match dir {
                Direction::Request => "before the request goes upstream",
                Direction::Response => "when the response headers are sent",
            };
            return Err(format!(
                "{} is not known {when}, so a {} header rule cannot use it",
                operator_name(f),
                match dir {
                    Direction::Request => "request",
                    Direction::Response => "response",
                }
            ));
        }
    }
    if let [Part::Lit(text)] = parts.as_slice() {
        if http::HeaderValue::from_str(text).is_err() {
            return Err(format!("{text:?} is not a valid header value"));
        }
    }
    Ok(parts)
}

fn operator_name(f: &Field) -> &'static str {
    match f {
        Field::RespHeader(_) => "`%RESP(..)%`",
        Field::ResponseCode => "`%RESPONSE_CODE%`",
        Field::ResponseFlags => "`%RESPONSE_FLAGS%`",
        Field::BytesReceived => "`%BYTES_RECEIVED%`",
        Field::BytesSent => "`%BYTES_SENT%`",
        Field::Duration => "`%DURATION%`",
        Field::UpstreamHost => "`%UPSTREAM_HOST%`",
        Field::UpstreamServiceTime => "`%UPSTREAM_SERVICE_TIME%`",
        Field::UpstreamCluster => "`%UPSTREAM_CLUSTER%`",
        _ => "this operator",
    }
}

struct Ck<'a> {
    files: &'a [PathBuf],
    file: usize,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ck<'_> {
    fn err(&mut self, code: &'static str, pos: Pos, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(code, &self.files[self.file], pos, msg));
    }

    fn name(&mut self, name: &Spanned<String>, dir: Direction) {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() && !lower.starts_with(':') {
            self.err(
                codes::BAD_VALUE,
                name.pos,
                format!("{:?} is not a valid header name", name.value),
            );
        } else if let Some(why) = immutable(&lower, dir) {
            self.err(
                codes::HEADER_NOT_MUTABLE,
                name.pos,
                format!("header `{lower}`: {why}"),
            );
        }
    }

    fn rules(
        &mut self,
        add: &[Spanned<HeaderValueOption>],
        remove: &[Spanned<String>],
        dir: Direction,
    ) {
        for h in add {
            self.name(&h.header.key, dir);
            let v = &h.header.value;
            if let Err(e) = compile_value(v, dir, &mut Vec::new(), &mut Vec::new()) {
                self.err(codes::BAD_VALUE, v.pos, e);
            }
        }
        for name in remove {
            self.name(name, dir);
        }
    }

    fn all_rules(
        &mut self,
        rq_add: &[Spanned<HeaderValueOption>],
        rq_remove: &[Spanned<String>],
        rs_add: &[Spanned<HeaderValueOption>],
        rs_remove: &[Spanned<String>],
    ) {
        self.rules(rq_add, rq_remove, Direction::Request);
        self.rules(rs_add, rs_remove, Direction::Response);
    }

    fn listener(&mut self, pos: Pos, l: &Listener) {
        let http = l.route_config.is_some();
        if !http {
            if let Some(h) = &l.xff_num_trusted_hops {
                self.err(
                    codes::BAD_VALUE,
                    h.pos,
                    "xff_num_trusted_hops applies to HTTP listeners (with route_config) only",
                );
            }
            if l.skip_xff_append {
                self.err(
                    codes::BAD_VALUE,
                    pos,
                    "skip_xff_append applies to HTTP listeners (with route_config) only",
                );
            }
        }
        if !l.proxy_protocol {
            if l.allow_requests_without_proxy_protocol {
                self.err(
                    codes::BAD_VALUE,
                    pos,
                    "allow_requests_without_proxy_protocol does nothing without proxy_protocol: true",
                );
            }
            if let Some(t) = &l.listener_filters_timeout {
                self.err(
                    codes::BAD_VALUE,
                    t.pos,
                    "listener_filters_timeout does nothing without proxy_protocol: true",
                );
            }
        }
    }

    fn cluster(&mut self, c: &Cluster) {
        if let Some(m) = &c.max_requests_per_connection {
            if m.value == 0 {
                self.err(
                    codes::BAD_VALUE,
                    m.pos,
                    "max_requests_per_connection must be at least 1 (leave it out for no limit)",
                );
            }
        }
        let Some(ka) = c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref())
        else {
            return;
        };
        if let Some(p) = &ka.keepalive_probes {
            if p.value == 0 {
                self.err(
                    codes::BAD_VALUE,
                    p.pos,
                    "keepalive_probes must be at least 1",
                );
            }
        }
        for (what, d) in [
            ("keepalive_time", &ka.keepalive_time),
            ("keepalive_interval", &ka.keepalive_interval),
        ] {
            if let Some(d) = d {
                if d.0.as_secs() == 0 || d.0.subsec_nanos() != 0 {
                    self.err(
                        codes::BAD_VALUE,
                        d.pos,
                        format!("{what} must be a whole number of seconds, at least 1s (the kernel counts in seconds)"),
                    );
                }
            }
        }
    }
}

/// Reports every problem of the edge settings.
pub fn check(cfg: &Config, diags: &mut Vec<Diagnostic>) {
    for l in &cfg.listeners {
        let mut ck = Ck {
            files: &cfg.files,
            file: l.file,
            diags,
        };
        ck.listener(l.pos, &l.value);
    }
    for rc in &cfg.route_configs {
        let mut ck = Ck {
            files: &cfg.files,
            file: rc.file,
            diags,
        };
        let r = &rc.value;
        ck.all_rules(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        );
        for vh in &r.virtual_hosts {
            ck.all_rules(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            );
            for route in &vh.routes {
                ck.all_rules(
                    &route.request_headers_to_add,
                    &route.request_headers_to_remove,
                    &route.response_headers_to_add,
                    &route.response_headers_to_remove,
                );
                let weighted = route
                    .route
                    .iter()
                    .flat_map(|a| a.weighted_clusters.iter())
                    .flat_map(|w| w.clusters.iter());
                for wc in weighted {
                    ck.all_rules(
                        &wc.request_headers_to_add,
                        &wc.request_headers_to_remove,
                        &wc.response_headers_to_add,
                        &wc.response_headers_to_remove,
                    );
                }
            }
        }
    }
    for c in &cfg.clusters {
        let mut ck = Ck {
            files: &cfg.files,
            file: c.file,
            diags,
        };
        ck.cluster(&c.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_may_not_touch_pseudo_hop_by_hop_or_request_host() {
        assert!(immutable(":path", Direction::Request).is_some());
        assert!(immutable("transfer-encoding", Direction::Response).is_some());
        assert!(immutable("host", Direction::Request).is_some());
        assert!(immutable("host", Direction::Response).is_none());
        assert!(immutable("x-forwarded-for", Direction::Request).is_none());
    }

    #[test]
    fn values_compile_for_their_direction() {
        let c = |v: &str, d| compile_value(v, d, &mut Vec::new(), &mut Vec::new());
        assert!(c(
            "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            Direction::Request
        )
        .is_ok());
        assert!(c("%REQ(x-a)% %RESPONSE_CODE%", Direction::Response).is_ok());
        let e = c("%RESPONSE_CODE%", Direction::Request).unwrap_err();
        assert!(
            e.contains("not known before the request goes upstream"),
            "{e}"
        );
        let e = c("%DURATION%", Direction::Response).unwrap_err();
        assert!(e.contains("%DURATION%"), "{e}");
        let e = c("%NOPE%", Direction::Request).unwrap_err();
        assert!(e.starts_with("unknown operator"), "{e}");
        assert!(c("a\u{7}b", Direction::Request).is_err());
        assert!(c("", Direction::Request).is_ok());
    }
}
