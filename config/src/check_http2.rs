//! Checks of the HTTP/2 settings: a cluster's `protocol` and what goes with it (ALPN, its
//! `http2_protocol_options`), and the `http2_protocol_options` of clusters and listeners
//! (stream limit, flow-control windows, PING keep-alive).

use std::path::PathBuf;

use super::defaults::{H2_MAX_WINDOW_SIZE, H2_MIN_WINDOW_SIZE};
use super::diag::{codes, Diagnostic};
use super::model::*;
use super::value::{Pos, Spanned};
use super::Config;

/// Reports every problem of the HTTP/2 settings.
pub fn check(cfg: &Config, diags: &mut Vec<Diagnostic>) {
    for l in &cfg.listeners {
        let mut ck = Ck {
            files: &cfg.files,
            file: l.file,
            diags,
        };
        if let Some(h2) = &l.value.http2_protocol_options {
            ck.options(h2);
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

struct Ck<'a> {
    files: &'a [PathBuf],
    file: usize,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ck<'_> {
    fn bad(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(
            codes::BAD_VALUE,
            &self.files[self.file],
            pos,
            msg,
        ));
    }

    fn cluster(&mut self, c: &Cluster) {
        let protocol = c.protocol();
        if let Some(h2) = &c.http2_protocol_options {
            if protocol == ClusterProtocol::Http1 {
                self.diags.push(
                    Diagnostic::error(
                        codes::BAD_VALUE,
                        &self.files[self.file],
                        h2.pos,
                        format!(
                            "cluster `{}` speaks HTTP/1.1: http2_protocol_options apply to protocol http2 or auto",
                            c.name.value
                        ),
                    )
                    .with_help("set `protocol: http2` (or `auto` with `tls`)"),
                );
            }
            self.options(h2);
        }
        // The protocol chooses what the cluster's HTTP connections offer; a list of its own
        // would contradict it.
        let alpn = c.tls.as_ref().and_then(|t| t.alpn.first());
        if let (Some(a), ClusterProtocol::Http2 | ClusterProtocol::Auto) = (alpn, protocol) {
            let offered = match protocol {
                ClusterProtocol::Http2 => "h2",
                _ => "h2,http/1.1",
            };
            self.bad(
                a.pos,
                format!("tls.alpn cannot be set with protocol {protocol:?}: the cluster offers {offered} by itself")
                    .replace("Http2", "http2")
                    .replace("Auto", "auto"),
            );
        }
    }

    fn options(&mut self, h2: &Spanned<Http2ProtocolOptions>) {
        if let Some(m) = &h2.max_concurrent_streams {
            if m.value == 0 {
                self.bad(m.pos, "max_concurrent_streams must be at least 1");
            }
        }
        for w in [
            &h2.initial_stream_window_size,
            &h2.initial_connection_window_size,
        ]
        .into_iter()
        .flatten()
        {
            if !(H2_MIN_WINDOW_SIZE..=H2_MAX_WINDOW_SIZE).contains(&w.value) {
                self.bad(
                    w.pos,
                    format!(
                        "an HTTP/2 window must be {H2_MIN_WINDOW_SIZE}..={H2_MAX_WINDOW_SIZE} bytes"
                    ),
                );
            }
        }
        if let Some(ka) = &h2.connection_keepalive {
            for (what, d) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                if d.0.is_zero() {
                    self.bad(
                        d.pos,
                        format!("connection_keepalive.{what} must be more than 0"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    fn load(yaml: &str) -> crate::Report {
        crate::check_sources(crate::Sources {
            files: vec![crate::SourceFile {
                path: "c.yaml".into(),
                text: yaml.into(),
            }],
            ..Default::default()
        })
    }

    fn errors(yaml: &str) -> Vec<(u32, String)> {
        let r = load(yaml);
        r.diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                assert_eq!(d.code, "E004", "{d}");
                (d.line, d.message.clone())
            })
            .collect()
    }

    #[test]
    fn protocol_and_http2_options_are_checked() {
        let ok = "clusters:
  - name: a
    protocol: http2
    http2_protocol_options:
      max_concurrent_streams: 10
      initial_stream_window_size: 1048576
      initial_connection_window_size: 2097152
      connection_keepalive: { interval: 30s, timeout: 5s }
    endpoints: [{ address: 127.0.0.1:1 }]
  - name: b
    protocol: auto
    endpoints: [{ address: 127.0.0.1:2 }]
";
        assert_eq!(errors(ok), vec![]);
        let bad = "clusters:
  - name: a
    http2_protocol_options:
      max_concurrent_streams: 0
      initial_stream_window_size: 1000
      connection_keepalive: { interval: 0s, timeout: 5s }
    endpoints: [{ address: 127.0.0.1:1 }]
  - name: b
    protocol: http2
    tls: { alpn: [h2], insecure_skip_verify: true }
    endpoints: [{ address: 127.0.0.1:2 }]
listeners:
  - name: l
    address: 127.0.0.1:3
    route_config: r
    http2_protocol_options:
      initial_connection_window_size: 4294967295
      connection_keepalive: { interval: 1s, timeout: 0s }
route_configs: [{ name: r, virtual_hosts: [] }]
";
        let e = errors(bad);
        let lines: Vec<u32> = e.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![4, 4, 5, 6, 10, 17, 18], "{e:?}");
        assert!(e[0].1.contains("apply to protocol http2 or auto"), "{e:?}");
        assert!(
            e[4].1.contains("protocol http2: the cluster offers h2"),
            "{e:?}"
        );
    }

    #[test]
    fn an_unknown_protocol_is_refused_where_it_is_written() {
        let r = load("clusters:\n  - name: a\n    protocol: h2c\n    endpoints: []\n");
        let d = r.diagnostics.iter().find(|d| d.is_error()).unwrap();
        assert_eq!(d.line, 3, "{d}");
        assert!(d.message.contains("http2"), "{d}");
    }
}
