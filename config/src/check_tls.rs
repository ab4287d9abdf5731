//! TLS settings: key material read from its data sources (files relative to the YAML file that
//! names them, environment variables, inline PEM) and checked as the proxy would use it, plus
//! the TLS warnings (expiring certificates, names not covered, verification off, old versions).
//!
//! Every error is reported at the YAML value that names the material, and a configuration with
//! one is rejected whole: a reload with a bad certificate keeps the running ones serving.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::diag::{codes, Diagnostic};
use super::model::*;
use super::source::{DataFiles, Limits};
use super::tls::{self, CertFacts};
use super::value::{Pos, Spanned};
use super::Config;

/// Reads every data source of `cfg` (storing what was read in it) and checks the TLS settings.
pub fn check(cfg: &mut Config, data: &mut DataFiles, limits: &Limits, diags: &mut Vec<Diagnostic>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let Config {
        listeners,
        clusters,
        files,
        ..
    } = cfg;
    for l in listeners.iter_mut() {
        let mut ck = Ck {
            file: &files[l.file],
            data,
            limits,
            now,
            diags,
        };
        let http = l.value.route_config.is_some();
        if let Some(t) = &mut l.value.tls {
            ck.listener_tls(t, http);
        }
        let v = &l.value;
        if !http {
            for (set, pos) in [
                (
                    v.forward_client_cert_details.is_some(),
                    v.forward_client_cert_details.as_ref().map(|f| f.pos),
                ),
                (
                    v.set_current_client_cert_details.is_some(),
                    v.set_current_client_cert_details.as_ref().map(|f| f.pos),
                ),
            ] {
                if set {
                    ck.bad(
                        pos.unwrap_or(l.pos),
                        "x-forwarded-client-cert settings apply to HTTP listeners (with route_config)",
                    );
                }
            }
        }
    }
    for c in clusters.iter_mut() {
        let mut ck = Ck {
            file: &files[c.file],
            data,
            limits,
            now,
            diags,
        };
        let protocol = c.value.protocol();
        if let Some(t) = &mut c.value.tls {
            ck.cluster_tls(t, protocol);
        }
    }
    data.keep_used();
}

/// Where a data source is reported: the value that names it.
fn pos_of(ds: &Spanned<DataSource>) -> Pos {
    ds.file
        .as_ref()
        .or(ds.env.as_ref())
        .or(ds.inline.as_ref())
        .map_or(ds.pos, |s| s.pos)
}

struct Ck<'a> {
    file: &'a Path,
    data: &'a mut DataFiles,
    limits: &'a Limits,
    now: i64,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ck<'_> {
    fn bad(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(codes::BAD_VALUE, self.file, pos, msg));
    }

    fn key_error(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(codes::KEY_MATERIAL, self.file, pos, msg));
    }

    /// Reads a data source into `ds.loaded`; `None` when it could not be read (reported) or was
    /// not read on purpose (`--skip-files`, an unset variable in `tern-validate`).
    fn load(&mut self, ds: &mut Spanned<DataSource>, what: &str) -> Option<std::sync::Arc<[u8]>> {
        let pos = pos_of(ds);
        let n = ds.file.is_some() as u8 + ds.env.is_some() as u8 + ds.inline.is_some() as u8;
        if n != 1 {
            self.bad(
                ds.pos,
                format!("{what} needs exactly one of file, env or inline"),
            );
            return None;
        }
        let (bytes, origin) = if let Some(f) = &ds.file {
            if f.trim().is_empty() {
                self.bad(f.pos, format!("{what} file must not be empty"));
                return None;
            }
            if self.limits.skip_files {
                return None;
            }
            let path = resolve(self.file, f);
            match self.data.read(&path, self.limits) {
                Ok(b) => (b, path.display().to_string()),
                Err(e) => {
                    self.key_error(pos, format!("{what} file `{}`: {e}", path.display()));
                    return None;
                }
            }
        } else if let Some(e) = &ds.env {
            match std::env::var_os(e.as_str()) {
                None if self.limits.offline => {
                    self.diags.push(
                        Diagnostic::warning(
                            codes::KEY_NOT_CHECKED,
                            self.file,
                            pos,
                            format!(
                                "{what} from environment variable `{}` not checked: it is not set here",
                                e.value
                            ),
                        )
                        .with_help("set it (to a test certificate, say) to have it checked"),
                    );
                    return None;
                }
                None => {
                    self.key_error(
                        pos,
                        format!("{what}: environment variable `{}` is not set", e.value),
                    );
                    return None;
                }
                Some(v) if v.is_empty() => {
                    self.key_error(
                        pos,
                        format!("{what}: environment variable `{}` is empty", e.value),
                    );
                    return None;
                }
                Some(v) => (
                    std::sync::Arc::from(v.into_encoded_bytes()),
                    format!("env {}", e.value),
                ),
            }
        } else {
            let text = ds.inline.as_ref().map_or("", |s| s.as_str());
            (std::sync::Arc::from(text.as_bytes()), "inline".to_string())
        };
        ds.value.loaded = Some(Loaded {
            bytes: bytes.clone(),
            origin,
        });
        Some(bytes)
    }

    /// A certificate chain and its key: both load, the chain parses in order, the key parses and
    /// belongs to the first certificate, and the certificate is valid now. Returns the leaf's
    /// facts when it could be read.
    fn certified_key(
        &mut self,
        chain: &mut Spanned<DataSource>,
        key: &mut Spanned<DataSource>,
    ) -> Option<CertFacts> {
        let chain_bytes = self.load(chain, "certificate_chain");
        let key_bytes = self.load(key, "private_key");
        let (cpos, kpos) = (pos_of(chain), pos_of(key));
        let origin = |ds: &Spanned<DataSource>| ds.value.describe();
        let certs = match chain_bytes.map(|b| tls::certificates(&b)) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                self.key_error(cpos, format!("certificate_chain ({}) {e}", origin(chain)));
                None
            }
            None => None,
        };
        let facts = match certs.as_ref().map(|c| tls::check_chain(c)) {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                self.key_error(cpos, format!("certificate_chain ({}): {e}", origin(chain)));
                None
            }
            None => None,
        };
        let parsed_key = match key_bytes.map(|b| tls::private_key(&b)) {
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                // Never the key's text: only where it came from.
                self.key_error(kpos, format!("private_key ({}) {e}", origin(key)));
                None
            }
            None => None,
        };
        if let (Some(certs), Some(k), Some(_)) = (&certs, &parsed_key, &facts) {
            if let Err(e) = tls::key_usable(&certs[0]) {
                self.key_error(kpos, format!("private_key ({}): {e}", origin(key)));
                return None;
            }
            match tls::key_matches(&certs[0], k) {
                Ok(Some(true)) | Ok(None) => {}
                Ok(Some(false)) => self.key_error(
                    kpos,
                    format!(
                        "private_key ({}) does not match the certificate of certificate_chain ({})",
                        origin(key),
                        origin(chain)
                    ),
                ),
                Err(e) => self.key_error(kpos, format!("private_key ({}): {e}", origin(key))),
            }
        }
        let leaf = facts?.into_iter().next()?;
        self.validity(&leaf, cpos, &origin(chain));
        Some(leaf)
    }

    /// An expired (or not yet valid) certificate is an error for the validator, one expiring
    /// soon a warning. In the proxy an expired one is a warning too (and its gauge shows it):
    /// refusing it would refuse every later reload and even a restart, taking the plaintext
    /// listeners down with it, while serving it fails only its own handshakes (Envoy serves it).
    fn validity(&mut self, leaf: &CertFacts, pos: Pos, origin: &str) {
        let when = |t: i64| {
            humantime::format_rfc3339_seconds(
                UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
            )
            .to_string()
        };
        if !self.limits.offline && (leaf.not_after < self.now || leaf.not_before > self.now) {
            let what = if leaf.not_after < self.now {
                format!("expired on {}", when(leaf.not_after))
            } else {
                format!("is not valid before {}", when(leaf.not_before))
            };
            self.diags.push(
                Diagnostic::warning(
                    codes::CERT_EXPIRING,
                    self.file,
                    pos,
                    format!(
                        "certificate `{}` ({origin}) {what}; served anyway",
                        leaf.subject
                    ),
                )
                .with_help("renew it: clients refuse it"),
            );
        } else if leaf.not_after < self.now {
            self.diags.push(
                Diagnostic::error(
                    codes::CERT_EXPIRED,
                    self.file,
                    pos,
                    format!(
                        "certificate `{}` ({origin}) expired on {}",
                        leaf.subject,
                        when(leaf.not_after)
                    ),
                )
                .with_help("renew it: clients refuse an expired certificate"),
            );
        } else if leaf.not_before > self.now {
            self.diags.push(Diagnostic::error(
                codes::CERT_EXPIRED,
                self.file,
                pos,
                format!(
                    "certificate `{}` ({origin}) is not valid before {}",
                    leaf.subject,
                    when(leaf.not_before)
                ),
            ));
        } else if leaf.not_after - self.now < self.limits.cert_expiry_warn.as_secs() as i64 {
            let days = (leaf.not_after - self.now) / 86_400;
            self.diags.push(
                Diagnostic::warning(
                    codes::CERT_EXPIRING,
                    self.file,
                    pos,
                    format!(
                        "certificate `{}` ({origin}) expires on {} (in {days} days)",
                        leaf.subject,
                        when(leaf.not_after)
                    ),
                )
                .with_help("renew it; the proxy exports expiration_unix_time_seconds to alert on"),
            );
        }
    }

    fn versions(&mut self, min: &Option<Spanned<TlsVersion>>, max: &Option<Spanned<TlsVersion>>) {
        for v in [min, max].into_iter().flatten() {
            if v.value < TlsVersion::TlsV1_2 {
                self.diags.push(
                    Diagnostic::warning(
                        codes::LEGACY_TLS_VERSION,
                        self.file,
                        v.pos,
                        "TLS 1.0 and 1.1 are obsolete (RFC 8996) and not spoken: TLS 1.2 is the lowest version used",
                    )
                    .with_help("write TLSv1_2 (or leave it out)"),
                );
            }
        }
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo.value.max(TlsVersion::TlsV1_2) > hi.value.max(TlsVersion::TlsV1_2) {
                self.bad(hi.pos, "max_version is below min_version");
            }
        }
    }

    fn listener_tls(&mut self, t: &mut Spanned<ListenerTls>, http: bool) {
        if t.certificates.is_empty() {
            self.bad(t.pos, "tls needs at least one certificate");
        }
        for c in t.value.certificates.iter_mut() {
            for n in &c.server_names {
                if !server_name_ok(n) {
                    self.bad(
                        n.pos,
                        format!(
                            "server name {:?} is not a DNS name or a `*.` wildcard",
                            n.value
                        ),
                    );
                }
            }
            let c = &mut c.value;
            let Some(leaf) = self.certified_key(&mut c.certificate_chain, &mut c.private_key)
            else {
                continue;
            };
            for n in c.server_names.iter().filter(|n| server_name_ok(n)) {
                if !covered(&leaf, n) {
                    self.diags.push(
                        Diagnostic::warning(
                            codes::SERVER_NAME_NOT_COVERED,
                            self.file,
                            n.pos,
                            format!(
                                "server name `{}` is not among the certificate's subject alternative names ({}): clients that verify the name refuse it",
                                n.value,
                                if leaf.dns_names.is_empty() {
                                    "none".to_string()
                                } else {
                                    leaf.dns_names.join(", ")
                                }
                            ),
                        ),
                    );
                }
            }
        }
        if let Some(ca) = &mut t.value.client_ca {
            self.ca(ca, "client_ca");
        } else if t.require_client_certificate {
            self.bad(
                t.pos,
                "require_client_certificate needs client_ca (the CAs client certificates are verified against)",
            );
        }
        self.versions(&t.min_version, &t.max_version);
        if let Some(alpn) = &t.alpn {
            for a in alpn {
                if a.is_empty() || a.len() > 255 {
                    self.bad(a.pos, "an ALPN protocol name is 1 to 255 bytes");
                } else if http && a.as_str() != "h2" && a.as_str() != "http/1.1" {
                    self.bad(
                        a.pos,
                        format!(
                            "ALPN {:?}: an HTTP listener speaks h2 and http/1.1",
                            a.value
                        ),
                    );
                }
            }
        }
    }

    fn ca(&mut self, ca: &mut Spanned<DataSource>, what: &str) {
        if let Some(b) = self.load(ca, what) {
            if let Err(e) = tls::check_ca(&b) {
                let pos = pos_of(ca);
                self.key_error(pos, format!("{what} ({}): {e}", ca.value.describe()));
            }
        }
    }

    fn cluster_tls(&mut self, t: &mut Spanned<ClusterTls>, protocol: ClusterProtocol) {
        if let Some(s) = &t.sni {
            if !sni_ok(s) {
                self.bad(s.pos, format!("sni {:?} is not a DNS name", s.value));
            }
        }
        if let Some(skip) = t.insecure_skip_verify.as_ref().filter(|s| s.value) {
            self.diags.push(
                Diagnostic::warning(
                    codes::INSECURE_SKIP_VERIFY,
                    self.file,
                    skip.pos,
                    "insecure_skip_verify: upstream certificates are not verified, so anyone on the path can read and change this traffic",
                )
                .with_help("give the upstream's CA in `ca` instead"),
            );
            if t.ca.is_some() || !t.verify_subject_alt_names.is_empty() {
                self.bad(
                    skip.pos,
                    "insecure_skip_verify turns off the verification that ca and verify_subject_alt_names configure; remove one",
                );
            }
        }
        for n in &t.verify_subject_alt_names {
            if n.trim().is_empty() {
                self.bad(n.pos, "a subject alternative name must not be empty");
            }
        }
        if let Some(ca) = &mut t.value.ca {
            self.ca(ca, "ca");
        }
        if let Some(cc) = &mut t.value.client_certificate {
            let cc = &mut cc.value;
            self.certified_key(&mut cc.certificate_chain, &mut cc.private_key);
        }
        for a in &t.alpn {
            if a.is_empty() || a.len() > 255 {
                self.bad(a.pos, "an ALPN protocol name is 1 to 255 bytes");
            } else if a.as_str() == "h2" && protocol == ClusterProtocol::Http1 {
                self.diags.push(
                    Diagnostic::error(
                        codes::BAD_VALUE,
                        self.file,
                        a.pos,
                        "this cluster speaks HTTP/1.1 (protocol http1): it cannot offer h2",
                    )
                    .with_help("set `protocol: http2` or `auto` instead; the cluster then offers h2 itself"),
                );
            }
        }
        self.versions(&t.min_version, &t.max_version);
    }
}

/// A data source's file, relative to the directory of the YAML file that names it (as that
/// file was found: relative to the working directory when the configuration path is).
pub fn resolve(yaml: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        yaml.parent().unwrap_or(Path::new("")).join(p)
    }
}

/// `example.com` or `*.example.com`.
pub fn server_name_ok(n: &str) -> bool {
    sni_ok(n.strip_prefix("*.").unwrap_or(n))
}

/// A DNS name: labels of letters, digits, `-` and `_`, 1-63 bytes each, 253 in all.
fn sni_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.parse::<std::net::IpAddr>().is_err()
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether a `server_names` entry is covered by the certificate: an exact name by any SAN that
/// matches it, a wildcard only by the same wildcard.
fn covered(leaf: &CertFacts, n: &str) -> bool {
    if n.starts_with("*.") {
        leaf.dns_names.iter().any(|s| s.eq_ignore_ascii_case(n))
    } else {
        leaf.covers(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(server_name_ok("*.example.com"));
        assert!(server_name_ok("api.example.com"));
        assert!(!server_name_ok("*"));
        assert!(!server_name_ok("a.*.com"));
        assert!(!server_name_ok("10.0.0.1"));
        assert!(sni_ok("localhost"));
        assert!(!sni_ok("bad name"));
    }

    fn load(text: &str, limits: Limits) -> crate::Report {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls");
        crate::check_sources(crate::Sources {
            files: vec![crate::SourceFile {
                path: dir.join("conf.yaml"),
                text: text.into(),
            }],
            limits,
            ..Default::default()
        })
    }

    fn codes(r: &crate::Report) -> Vec<(&'static str, u32)> {
        r.diagnostics.iter().map(|d| (d.code, d.line)).collect()
    }

    const LISTENER: &str = "listeners:
  - name: l
    address: 127.0.0.1:8443
    route_config: r
    tls:
      certificates:
        - certificate_chain: { file: ec-chain.pem }
          private_key: { file: KEY }
          server_names: [api.example.com, \"*.example.com\", www.example.org]
route_configs:
  - name: r
    virtual_hosts: [{ name: v, domains: [\"*\"], routes: [{ match: { prefix: / }, direct_response: { status: 200 } }] }]
";

    #[test]
    fn key_material_is_read_relative_to_the_yaml_and_checked() {
        let ok = load(&LISTENER.replace("KEY", "ec.key"), Limits::default());
        assert_eq!(codes(&ok), [("W012", 9)], "{:?}", ok.diagnostics);
        let cfg = ok.config.as_ref().unwrap();
        let tls = cfg.listeners[0].value.tls.as_ref().unwrap();
        let loaded = tls.certificates[0].private_key.loaded.as_ref().unwrap();
        assert!(loaded.origin.ends_with("testdata/tls/ec.key"));
        // The key file is part of the content hash.
        let files: Vec<_> = ok.sources.as_ref().unwrap().data.paths().cloned().collect();
        assert_eq!(files.len(), 2);
        let bad = load(&LISTENER.replace("KEY", "other.key"), Limits::default());
        assert_eq!(codes(&bad), [("E011", 8), ("W012", 9)]);
        assert!(bad.diagnostics[0].message.contains("does not match"));
        assert_ne!(ok.version, bad.version);
        let missing = load(&LISTENER.replace("KEY", "nope.key"), Limits::default());
        assert_eq!(codes(&missing)[0], ("E011", 8));
        assert!(missing.diagnostics[0]
            .message
            .contains("testdata/tls/nope.key"));
        let skipped = load(
            &LISTENER.replace("KEY", "nope.key"),
            Limits {
                skip_files: true,
                ..Limits::default()
            },
        );
        assert!(skipped.config.is_some(), "{:?}", skipped.diagnostics);
    }

    #[test]
    fn expiry_chain_order_and_environment_sources() {
        let text = LISTENER
            .replace("ec-chain.pem", "expired.pem")
            .replace("KEY", "expired.key");
        let offline = Limits {
            offline: true,
            ..Limits::default()
        };
        // The validator refuses it; the proxy serves it with a warning.
        assert_eq!(codes(&load(&text, offline))[0], ("E012", 7));
        let served = load(&text, Limits::default());
        assert!(served.config.is_some(), "{:?}", served.diagnostics);
        assert_eq!(codes(&served)[0], ("W011", 7));
        assert!(served.diagnostics[0].message.contains("served anyway"));
        let soon = Limits {
            cert_expiry_warn: std::time::Duration::from_secs(200 * 365 * 86_400),
            ..Limits::default()
        };
        let r = load(&LISTENER.replace("KEY", "ec.key"), soon);
        assert!(codes(&r).contains(&("W011", 7)), "{:?}", r.diagnostics);
        let text = LISTENER
            .replace("ec-chain.pem", "ec-chain-reversed.pem")
            .replace("KEY", "ec.key");
        assert_eq!(codes(&load(&text, Limits::default()))[0], ("E011", 7));
        // Keys ring cannot sign with: refused here, not later by the proxy without a line.
        for (chain, key, says) in [
            ("p521.pem", "p521.key", "P-521"),
            ("rsa1024.pem", "rsa1024.key", "1024 bits"),
        ] {
            let text = LISTENER.replace("ec-chain.pem", chain).replace("KEY", key);
            let r = load(&text, Limits::default());
            assert_eq!(codes(&r)[0], ("E011", 8), "{:?}", r.diagnostics);
            assert!(
                r.diagnostics[0].message.contains(says),
                "{:?}",
                r.diagnostics
            );
        }
        let env = LISTENER.replace("{ file: KEY }", "{ env: TERN_TEST_UNSET_KEY_VARIABLE }");
        assert_eq!(codes(&load(&env, Limits::default()))[0], ("E011", 8));
        assert_eq!(codes(&load(&env, offline))[0], ("W015", 8));
    }

    #[test]
    fn inline_pem_is_never_dumped_nor_quoted() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls");
        let key = std::fs::read_to_string(dir.join("other.key")).unwrap();
        let indented: String = key
            .lines()
            .map(|l| format!("              {l}\n"))
            .collect();
        let text = LISTENER.replace(
            "private_key: { file: KEY }",
            &format!("private_key:\n            inline: |\n{indented}"),
        );
        let r = load(&text, Limits::default());
        assert!(codes(&r).contains(&("E011", 10)), "{:?}", r.diagnostics);
        let cfg = load(&LISTENER.replace("KEY", "ec.key"), Limits::default())
            .config
            .unwrap();
        let mut cfg = cfg;
        let tls = cfg.listeners[0].value.tls.as_mut().unwrap();
        tls.value.certificates[0].value.private_key.value.inline =
            Some(Spanned::unplaced(key.clone()));
        let dump = serde_json::to_string(&cfg).unwrap();
        assert!(
            !dump.contains("PRIVATE KEY") && dump.contains("<redacted>"),
            "{dump}"
        );
        assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));
        let line = key.lines().nth(1).unwrap();
        let text_line = format!("              {line}");
        let (quoted, _) = r
            .secrets
            .redact_line(&dir.join("conf.yaml"), 11, &text_line, 0);
        assert!(!quoted.contains(line), "{quoted}");
    }

    #[test]
    fn files_are_relative_to_their_yaml() {
        let p = resolve(Path::new("/etc/tern/conf/listeners.yaml"), "certs/a.pem");
        assert_eq!(p, Path::new("/etc/tern/conf/certs/a.pem"));
        let p = resolve(Path::new("/etc/tern/l.yaml"), "/abs/a.pem");
        assert_eq!(p, Path::new("/abs/a.pem"));
    }
}
