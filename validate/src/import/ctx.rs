//! The import's diagnostics (codes `I001`..`I005`) and the readers of Envoy's value types
//! (durations, percentages, addresses, data sources) that report what they cannot map.

use std::path::Path;
use std::time::Duration;

use tern_config::{Diagnostic, Dur, Pos, Spanned};

use super::tree::{Key, Kind, Node, Obj};

/// Stable codes of the importer (documented in `docs/migrate-from-envoy.md`).
pub mod codes {
    /// An Envoy field Tern has no equivalent of: dropped.
    pub const UNSUPPORTED_FIELD: &str = "I001";
    /// A filter, extension or resource of a type (URL) the importer does not map: dropped.
    pub const UNSUPPORTED_TYPE: &str = "I002";
    /// A value of a mapped field that Tern cannot express (an enum value, a range, a combination).
    pub const UNSUPPORTED_VALUE: &str = "I003";
    /// An RDS or EDS name (or a cluster a tracer names) that no input file defines.
    pub const UNRESOLVED: &str = "I004";
    /// A field read and accepted that changes nothing in Tern (stat names, metadata): a note,
    /// not a drop.
    pub const NO_EFFECT: &str = "I005";
    /// An Envoy file that cannot be parsed or is not a bootstrap or xDS resource file.
    pub const BAD_INPUT: &str = "I006";
    /// Mapped, but it works differently in Tern in a way to act on (a header name, an order): a
    /// warning, not a drop.
    pub const DIFFERS: &str = "I007";
}

/// What the import found, as it goes.
#[derive(Debug, Default)]
pub struct Ctx {
    /// Everything reported, in the order found.
    pub diags: Vec<Diagnostic>,
    /// Things dropped (`I001`..`I004`, `I006`): the import is partial when this is not zero.
    pub dropped: usize,
    /// `--allow-partial`: drops are warnings, not errors.
    pub allow_partial: bool,
    /// DNS resolvers named by clusters or the bootstrap, with where: Tern has one resolver
    /// for all DNS clusters (`dns.resolvers`).
    pub dns_resolvers: Vec<(Vec<String>, std::path::PathBuf, Pos)>,
    /// Files a bootstrap's `dynamic_resources` reads (`path_config_source`), with where: each
    /// must be among the inputs.
    pub xds_paths: Vec<(String, std::path::PathBuf, Pos)>,
}

impl Ctx {
    fn drop_diag(
        &mut self,
        code: &'static str,
        file: &Path,
        pos: Pos,
        msg: String,
    ) -> &mut Diagnostic {
        self.dropped += 1;
        let d = if self.allow_partial {
            Diagnostic::warning(code, file, pos, msg)
        } else {
            Diagnostic::error(code, file, pos, msg)
        };
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    /// `I001`: `key` of `what` has no Tern field.
    pub fn field(&mut self, file: &Path, key: &Key, what: &str, why: Option<&str>) {
        let d = self.drop_diag(
            codes::UNSUPPORTED_FIELD,
            file,
            key.pos,
            format!(
                "{what} field `{}` is not supported by Tern; dropped",
                key.name
            ),
        );
        if let Some(w) = why {
            d.help = Some(w.to_string());
        }
    }

    /// `I001` for every field of `o` nobody took.
    pub fn rest(&mut self, file: &Path, o: &Obj<'_>, what: &str) {
        let keys: Vec<&Key> = o.rest().map(|(k, _)| k).collect();
        for k in keys {
            self.field(file, k, what, None);
        }
    }

    /// `I002`: a typed extension or resource type that is not mapped.
    pub fn type_url(&mut self, file: &Path, pos: Pos, what: &str, url: &str, help: Option<&str>) {
        let d = self.drop_diag(
            codes::UNSUPPORTED_TYPE,
            file,
            pos,
            format!("{what} `{url}` is not supported by Tern; dropped"),
        );
        if let Some(h) = help {
            d.help = Some(h.to_string());
        }
    }

    /// `I003`: a value Tern cannot express.
    pub fn value(&mut self, file: &Path, pos: Pos, msg: impl Into<String>) {
        self.drop_diag(codes::UNSUPPORTED_VALUE, file, pos, msg.into());
    }

    /// `I004`: a name no input defines.
    pub fn unresolved(&mut self, file: &Path, pos: Pos, msg: impl Into<String>, help: &str) {
        let d = self.drop_diag(codes::UNRESOLVED, file, pos, msg.into());
        d.help = Some(help.to_string());
    }

    /// `I006`: an input file that is not Envoy configuration.
    pub fn bad_input(&mut self, file: &Path, pos: Pos, msg: impl Into<String>) {
        self.drop_diag(codes::BAD_INPUT, file, pos, msg.into());
    }

    /// Runs the mapper of one item; an item dropped without saying why (a field it needs is
    /// missing) is reported here, so that no item disappears silently.
    pub fn item<T>(
        &mut self,
        file: &Path,
        pos: Pos,
        what: &str,
        map: impl FnOnce(&mut Ctx) -> Option<T>,
    ) -> Option<T> {
        let before = self.dropped;
        let r = map(self);
        if r.is_none() && self.dropped == before {
            self.value(
                file,
                pos,
                format!("{what} dropped: a field it needs is missing or not understood"),
            );
        }
        r
    }

    /// `I005`: accepted, no effect in Tern (a warning; the import is not partial for it).
    pub fn no_effect(&mut self, file: &Path, key: &Key, why: &str) {
        self.diags.push(
            Diagnostic::warning(
                codes::NO_EFFECT,
                file,
                key.pos,
                format!("`{}` has no effect in Tern", key.name),
            )
            .with_help(why),
        );
    }

    /// `I007`: mapped, with a difference to act on (a warning; the import is not partial for it).
    pub fn differs(&mut self, file: &Path, key: &Key, msg: impl Into<String>, help: &str) {
        self.diags
            .push(Diagnostic::warning(codes::DIFFERS, file, key.pos, msg.into()).with_help(help));
    }

    /// A field that must be a mapping: its reader, or `I003` and `None`.
    pub fn obj<'a>(&mut self, file: &Path, n: &'a Node, what: &str) -> Option<Obj<'a>> {
        let o = Obj::new(n);
        if o.is_none() {
            self.value(file, n.pos, format!("{what} must be a mapping"));
        }
        o
    }

    /// A string field.
    pub fn str(&mut self, file: &Path, n: &Node, what: &str) -> Option<Spanned<String>> {
        match &n.kind {
            Kind::Str(s) => Some(Spanned {
                value: s.clone(),
                pos: Pos::default(),
            }),
            _ => {
                self.value(file, n.pos, format!("{what} must be a string"));
                None
            }
        }
    }

    /// A whole number within `u32`.
    pub fn u32(&mut self, file: &Path, n: &Node, what: &str) -> Option<u32> {
        // Wrapped values (`UInt32Value`) may be written as `{value: N}`.
        let n = n.get("value").unwrap_or(n);
        match n.as_int().and_then(|i| u32::try_from(i).ok()) {
            Some(v) => Some(v),
            None => {
                self.value(
                    file,
                    n.pos,
                    format!("{what} must be a whole number from 0 to 4294967295"),
                );
                None
            }
        }
    }

    /// A boolean (`BoolValue` as `{value: b}` too).
    pub fn bool(&mut self, file: &Path, n: &Node, what: &str) -> Option<bool> {
        let n = n.get("value").unwrap_or(n);
        let b = n.as_bool();
        if b.is_none() {
            self.value(file, n.pos, format!("{what} must be true or false"));
        }
        b
    }

    /// An Envoy `Duration`: `"1.5s"`, or `{seconds, nanos}`.
    pub fn dur(&mut self, file: &Path, n: &Node, what: &str) -> Option<Spanned<Dur>> {
        match duration(n) {
            Some(d) => Some(Spanned::unplaced(Dur(d))),
            None => {
                self.value(
                    file,
                    n.pos,
                    format!("{what} is not an Envoy duration such as \"1.5s\""),
                );
                None
            }
        }
    }

    /// A `Percent` (`{value: 20.0}`) or bare number, as a percentage.
    pub fn percent(&mut self, file: &Path, n: &Node, what: &str) -> Option<f64> {
        let v = n.get("value").unwrap_or(n);
        match v.as_f64() {
            Some(p) if (0.0..=100.0).contains(&p) => Some(p),
            _ => {
                self.value(
                    file,
                    n.pos,
                    format!("{what} must be a percentage from 0 to 100"),
                );
                None
            }
        }
    }

    /// A `FractionalPercent` (`{numerator, denominator: HUNDRED|TEN_THOUSAND|MILLION}`) or a
    /// `RuntimeFractionalPercent` (its `default_value`; the runtime key is reported), as a
    /// percentage.
    pub fn fraction(&mut self, file: &Path, n: &Node, what: &str) -> Option<f64> {
        let mut o = self.obj(file, n, what)?;
        if let Some(dv) = o.take("default_value") {
            if let Some((k, _)) = o.take_kv("runtime_key") {
                self.no_effect(file, k, "Tern has no runtime; the default value is used");
            }
            self.rest(file, &o, what);
            return self.fraction(file, dv, what);
        }
        let num = match o.take("numerator") {
            Some(n) => self.u32(file, n, "numerator")?,
            None => 0,
        };
        let den = match o.take("denominator").map(|d| (d, d.as_enum())) {
            None => 100.0,
            Some((_, Some(d))) if d == "HUNDRED" => 100.0,
            Some((_, Some(d))) if d == "TEN_THOUSAND" => 10_000.0,
            Some((_, Some(d))) if d == "MILLION" => 1_000_000.0,
            Some((d, _)) => {
                self.value(
                    file,
                    d.pos,
                    "denominator must be HUNDRED, TEN_THOUSAND or MILLION",
                );
                return None;
            }
        };
        self.rest(file, &o, what);
        Some((f64::from(num) * 100.0 / den).min(100.0))
    }

    /// An Envoy `Address` with a `socket_address` (TCP, IP literal): `ip:port`.
    pub fn address(&mut self, file: &Path, n: &Node, what: &str) -> Option<(String, u16)> {
        let mut o = self.obj(file, n, what)?;
        let Some(sa) = o.take("socket_address") else {
            self.value(file, n.pos, format!("{what}: only `socket_address` addresses are supported (no pipes or internal addresses)"));
            self.rest(file, &o, what);
            return None;
        };
        self.rest(file, &o, what);
        let mut s = self.obj(file, sa, "socket_address")?;
        let host = s.take("address").and_then(|a| self.str(file, a, "address"));
        let port = match s.take("port_value") {
            Some(p) => match p.as_int().and_then(|i| u16::try_from(i).ok()) {
                Some(v) => Some(v),
                None => {
                    self.value(file, p.pos, "port_value must be a port number");
                    None
                }
            },
            None => {
                if let Some(np) = s.peek("named_port") {
                    self.value(
                        file,
                        np.pos,
                        "named ports are not supported; write port_value",
                    );
                } else {
                    self.value(file, sa.pos, "socket_address without port_value");
                }
                None
            }
        };
        if let Some(p) = s.take("protocol") {
            if p.as_enum().as_deref() != Some("TCP") {
                self.value(file, p.pos, "only TCP socket addresses are supported");
            }
        }
        self.rest(file, &s, "socket_address");
        let host = host?.value;
        Some((host, port?))
    }

    /// An Envoy `DataSource`: only `filename` is carried over. Inline key material would be
    /// written into the generated files in the clear, and `/config_dump` redaction makes it
    /// unprintable anyway: reported.
    pub fn data_source(
        &mut self,
        file: &Path,
        n: &Node,
        what: &str,
    ) -> Option<tern_config::DataSource> {
        let mut o = self.obj(file, n, what)?;
        let mut ds = tern_config::DataSource::default();
        if let Some(f) = o.take("filename") {
            ds.file = self.str(file, f, "filename");
        } else if let Some(e) = o.take("environment_variable") {
            ds.env = self.str(file, e, "environment_variable");
        }
        for (k, _) in o.rest() {
            self.value(
                file,
                k.pos,
                format!("{what}: `{}` data sources are not carried over; put the PEM in a file (or an environment variable)", k.name),
            );
        }
        (ds.file.is_some() || ds.env.is_some()).then_some(ds)
    }

    /// A typed extension (`{name, typed_config: {"@type": URL, ...}}`): its type name (the part
    /// of the URL after the last `/`) and the config's reader (`@type` taken).
    pub fn typed<'a>(
        &mut self,
        file: &Path,
        n: &'a Node,
        what: &str,
    ) -> Option<(String, Obj<'a>, Pos)> {
        let mut o = self.obj(file, n, what)?;
        let name = o.take("name").and_then(Node::as_str);
        let Some(tc) = o.take("typed_config") else {
            // Extensions without settings may be named without a typed_config.
            if let Some(ty) = name.and_then(bare_extension) {
                self.rest(file, &o, what);
                return Obj::new(&NULL).map(|c| (ty.to_string(), c, n.pos));
            }
            self.value(file, n.pos, format!("{what} without `typed_config` (a bare `name` is read only for extensions without settings, such as the router); add its typed_config"));
            self.rest(file, &o, what);
            return None;
        };
        self.rest(file, &o, what);
        let mut c = self.obj(file, tc, "typed_config")?;
        let url = c.take("@type").and_then(|u| u.as_str()).unwrap_or_default();
        let ty = url.rsplit('/').next().unwrap_or_default();
        if ty.is_empty() {
            // `typed_config: {}` on an extension without settings names it by `name`.
            let empty = c.rest().next().is_none();
            if let (Some(t), true) = (name.and_then(bare_extension), empty) {
                return Some((t.to_string(), c, tc.pos));
            }
            self.value(
                file,
                tc.pos,
                format!("{what}'s typed_config has no `@type`"),
            );
            return None;
        }
        Some((ty.to_string(), c, tc.pos))
    }
}

/// DNS resolvers: the deprecated `dns_resolvers` address list, or a `typed_dns_resolver_config`
/// (c-ares) with `resolvers`; noted in [`Ctx::dns_resolvers`].
pub fn dns_resolvers(cx: &mut Ctx, file: &Path, key: &Key, n: &Node) {
    let list = if key.name == "dns_resolvers" {
        n
    } else {
        let Some((ty, mut c, pos)) = cx.typed(file, n, "DNS resolver") else {
            return;
        };
        if ty != "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig" {
            cx.type_url(file, pos, "DNS resolver", &ty, None);
            return;
        }
        let Some(r) = c.take("resolvers") else {
            cx.rest(file, &c, "DNS resolver");
            return;
        };
        cx.rest(file, &c, "DNS resolver");
        r
    };
    let mut out = Vec::new();
    for a in list.items() {
        if let Some((h, p)) = cx.address(file, a, "DNS resolver address") {
            out.push(host_port(&h, p));
        }
    }
    if !out.is_empty() {
        cx.dns_resolvers.push((out, file.to_path_buf(), key.pos));
    }
}

/// An empty mapping: the settings of an extension named without a `typed_config`.
static NULL: Node = Node {
    pos: Pos { line: 0, column: 0 },
    kind: Kind::Null,
};

/// The type of an extension that may be named without a `typed_config` (it has no settings).
fn bare_extension(name: &str) -> Option<&'static str> {
    Some(match name {
        "envoy.filters.http.router" => "envoy.extensions.filters.http.router.v3.Router",
        "envoy.filters.listener.tls_inspector" => {
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
        }
        "envoy.filters.listener.proxy_protocol" => {
            "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
        }
        _ => return None,
    })
}

/// `"1.5s"`, `"0.250s"`, `"5s"` or `{seconds, nanos}`.
pub fn duration(n: &Node) -> Option<Duration> {
    match &n.kind {
        Kind::Str(s) => {
            let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
            (0.0..1e12)
                .contains(&secs)
                .then(|| Duration::from_secs_f64(secs))
        }
        Kind::Map(_) => {
            let s = n.get("seconds").map_or(Some(0), |v| v.as_int())?;
            let ns = n.get("nanos").map_or(Some(0), |v| v.as_int())?;
            let s = u64::try_from(s).ok()?;
            let ns = u32::try_from(ns).ok().filter(|v| *v < 1_000_000_000)?;
            Some(Duration::new(s, ns))
        }
        _ => None,
    }
}

/// `host:port`, with brackets around an IPv6 literal.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::tree::parse;

    fn node(text: &str) -> Node {
        parse(text, &tern_config::Limits::default()).unwrap()
    }

    #[test]
    fn durations_in_both_spellings() {
        assert_eq!(
            duration(&node("\"1.5s\"")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(duration(&node("0.250s")), Some(Duration::from_millis(250)));
        assert_eq!(
            duration(&node("{seconds: 2, nanos: 5000000}")),
            Some(Duration::from_millis(2005))
        );
        assert_eq!(duration(&node("5")), None);
        assert_eq!(duration(&node("-1s")), None);
        assert_eq!(duration(&node("1e400s")), None);
    }

    #[test]
    fn fractions_and_addresses() {
        let mut cx = Ctx::default();
        let f = Path::new("x.yaml");
        let p = cx.fraction(f, &node("{numerator: 25, denominator: TEN_THOUSAND}"), "p");
        assert_eq!(p, Some(0.25));
        let p = cx.fraction(f, &node("{default_value: {numerator: 50}}"), "p");
        assert_eq!(p, Some(50.0));
        let a = cx.address(
            f,
            &node("socket_address: {address: '::1', port_value: 80}"),
            "a",
        );
        assert_eq!(
            a.map(|(h, p)| host_port(&h, p)).as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(cx.dropped, 0, "{:?}", cx.diags);
        assert!(cx.address(f, &node("pipe: {path: /x}"), "a").is_none());
        assert_eq!(cx.diags[0].code, codes::UNSUPPORTED_VALUE);
    }
}
