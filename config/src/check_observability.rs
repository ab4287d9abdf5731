//! Checks of the observability settings (access logs, tracing): formats that compile, values
//! in range, and settings that only make sense on HTTP listeners.

use super::diag::{codes, Diagnostic};
use super::Config;

/// Reports every problem in the listeners' `access_log` and `tracing` settings.
pub fn check(cfg: &Config, diags: &mut Vec<Diagnostic>) {
    for l in &cfg.listeners {
        let file = &cfg.files[l.file];
        let lv = &l.value;
        let http = lv.route_config.is_some();
        for al in &lv.access_log {
            if !http {
                diags.push(Diagnostic::error(
                    codes::BAD_VALUE,
                    file,
                    al.pos,
                    "access_log is only supported on HTTP listeners (with route_config)",
                ));
            }
            if al.path.trim().is_empty() {
                diags.push(Diagnostic::error(
                    codes::BAD_VALUE,
                    file,
                    al.path.pos,
                    "access_log path must not be empty",
                ));
            }
            if let Some(f) = &al.format {
                // The same compiler the snapshot uses, so a format that passes here cannot fail there.
                if let Err(e) =
                    crate::log_format::compile(&f.value, &mut Vec::new(), &mut Vec::new())
                {
                    diags.push(Diagnostic::error(codes::BAD_VALUE, file, f.pos, e));
                }
            }
            if let Some(b) = &al.buffer_lines {
                if b.value == 0 {
                    diags.push(Diagnostic::error(
                        codes::BAD_VALUE,
                        file,
                        b.pos,
                        "buffer_lines must be at least 1",
                    ));
                }
            }
        }
        if let Some(t) = &lv.tracing {
            if !http {
                diags.push(Diagnostic::error(
                    codes::BAD_VALUE,
                    file,
                    t.pos,
                    "tracing is only supported on HTTP listeners (with route_config)",
                ));
            }
            if let Some(s) = &t.sampling {
                if !(0.0..=1.0).contains(&s.value) || s.value.is_nan() {
                    diags.push(Diagnostic::error(
                        codes::BAD_VALUE,
                        file,
                        s.pos,
                        format!("sampling {} must be between 0 and 1", s.value),
                    ));
                }
            }
            if let Some(o) = &t.otlp {
                // The same resolution the exporter uses, so an endpoint that passes here loads.
                let protocol = o.protocol.unwrap_or(super::OtlpProtocol::Grpc);
                let resolved = crate::otlp::resolve_endpoint(&o.endpoint, protocol);
                if let Err(e) = &resolved {
                    diags.push(Diagnostic::error(codes::BAD_VALUE, file, o.endpoint.pos, e));
                }
                if let Some(tls) = &o.tls {
                    // TLS settings on a plain-text endpoint would silently do nothing.
                    if resolved.as_ref().is_ok_and(|u| !u.starts_with("https://")) {
                        diags.push(Diagnostic::error(
                            codes::BAD_VALUE,
                            file,
                            tls.pos,
                            "otlp tls applies to https:// endpoints only",
                        ));
                    }
                    if let Some(ca) = &tls.ca_file {
                        // The same reader the exporter uses: a file that passes here loads.
                        if let Err(e) = crate::otlp::read_ca_file(ca) {
                            diags.push(Diagnostic::error(codes::BAD_VALUE, file, ca.pos, e));
                        }
                    }
                }
                let mut seen = std::collections::HashSet::new();
                // In file order, so a case-insensitive duplicate is reported at the later one.
                let mut headers: Vec<_> = o.headers.iter().collect();
                headers.sort_by_key(|(n, _)| n.pos);
                for (name, value) in headers {
                    if let Err(e) = crate::otlp::check_header_name(name, protocol) {
                        diags.push(Diagnostic::error(codes::BAD_VALUE, file, name.pos, e));
                    } else if !seen.insert(name.to_ascii_lowercase()) {
                        // Header names ignore case, so these would both be sent or one lost.
                        diags.push(Diagnostic::error(
                            codes::BAD_VALUE,
                            file,
                            name.pos,
                            format!(
                                "otlp header `{}` is given twice (names ignore case)",
                                **name
                            ),
                        ));
                    }
                    if let Err(e) = crate::otlp::check_header_value(name, value) {
                        diags.push(Diagnostic::error(codes::BAD_VALUE, file, value.pos, e));
                    }
                }
            }
            if let Some(n) = &t.service_name {
                if n.trim().is_empty() {
                    diags.push(Diagnostic::error(
                        codes::BAD_VALUE,
                        file,
                        n.pos,
                        "service_name must not be empty",
                    ));
                }
            }
        }
    }
}
