//! Header rules (Envoy's `request_headers_to_add`, `request_headers_to_remove`,
//! `response_headers_to_add`, `response_headers_to_remove`), compiled per level — route config,
//! virtual host, route, weighted cluster — and applied in that order, the most specific last
//! (Envoy with `most_specific_header_mutations_wins: true`).
//!
//! Values are format strings of the access log's language, compiled once at load time by
//! [`tern_config::check_edge::compile_value`], the call the checks make; a value without
//! operators is a ready `HeaderValue`. A route whose levels have no rule has no [`HeaderRules`]
//! at all, so the request path does nothing for it.
//!
//! One level is applied as Envoy's `HeaderParser` does: removals first, then every value is
//! rendered against the headers as they are, then overwrites, then additions. A value that
//! renders empty is left out unless `keep_empty_value`; one that is not a valid header value
//! (a `%REQ()%` copy with a bad byte) is left out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderName, HeaderValue, Method, Version};

use tern_config::check_edge::{compile_value, Direction};
use tern_config::log_format::{Field, Part};
use tern_config::{self as config, AppendAction, Spanned};

use crate::message::{self, Fields, Request};

/// One level's rules for one direction.
#[derive(Debug, Default)]
pub struct Rules {
    remove: Vec<HeaderName>,
    add: Vec<Add>,
    /// No value reads the headers this level changes and no name is added twice: each addition
    /// can be made as it is rendered, with the same result as Envoy's render-all-then-apply,
    /// and without collecting them first.
    direct: bool,
}

#[derive(Debug)]
struct Add {
    name: HeaderName,
    value: Value,
    action: AppendAction,
    keep_empty: bool,
}

#[derive(Debug)]
enum Value {
    Fixed(HeaderValue),
    Format {
        parts: Vec<Part>,
        /// Names of `%REQ(..)%`, by the index in `Field::ReqHeader`.
        req: Vec<HeaderName>,
        /// Names of `%RESP(..)%`.
        resp: Vec<HeaderName>,
    },
}

impl Rules {
    /// Compiles one level's rules for `dir` (checked at load: a failure here is a bug).
    pub fn compile(
        add: &[Spanned<config::HeaderValueOption>],
        remove: &[Spanned<String>],
        dir: Direction,
    ) -> Result<Option<Arc<Rules>>, String> {
        if add.is_empty() && remove.is_empty() {
            return Ok(None);
        }
        let name = |n: &str| {
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("{n:?} is not a valid header name"))
        };
        let mut rules = Rules::default();
        for r in remove {
            rules.remove.push(name(r)?);
        }
        // What reads the map the rules change: request headers in a request rule, response
        // headers in a response rule; the trace id is read from the request's headers.
        let reads_map = |f: &Field| match dir {
            Direction::Request => matches!(f, Field::ReqHeader(_) | Field::TraceId),
            Direction::Response => matches!(f, Field::RespHeader(_)),
        };
        for h in add {
            let (mut req, mut resp) = (Vec::new(), Vec::new());
            let parts = compile_value(&h.header.value, dir, &mut req, &mut resp)?;
            let value = match parts.as_slice() {
                [] => Value::Fixed(HeaderValue::from_static("")),
                [Part::Lit(s)] => {
                    Value::Fixed(HeaderValue::from_str(s).map_err(|e| e.to_string())?)
                }
                _ => Value::Format { parts, req, resp },
            };
            rules.add.push(Add {
                name: name(&h.header.key)?,
                value,
                action: h.append_action.unwrap_or_default(),
                keep_empty: h.keep_empty_value,
            });
        }
        let mut names: Vec<&HeaderName> = rules.add.iter().map(|a| &a.name).collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        let distinct = names.windows(2).all(|w| w[0] != w[1]);
        rules.direct = distinct && !rules.uses(reads_map);
        Ok(Some(Arc::new(rules)))
    }

    fn uses(&self, f: impl Fn(&Field) -> bool) -> bool {
        self.add.iter().any(|a| match &a.value {
            Value::Fixed(_) => false,
            Value::Format { parts, .. } => parts.iter().any(|p| match p {
                Part::Field(x) => f(x),
                Part::Lit(_) => false,
            }),
        })
    }

    /// Applies the rules to `map` (the request's headers for request rules, the response's for
    /// response rules).
    pub fn apply(&self, map: &mut Fields, facts: &Facts<'_>) {
        for n in &self.remove {
            map.remove(n);
        }
        if self.direct {
            for a in &self.add {
                let v = match &a.value {
                    Value::Fixed(v) => v.clone(),
                    Value::Format { parts, req, resp } => {
                        match facts.render(parts, req, resp, map) {
                            Some(v) => v,
                            None => continue,
                        }
                    }
                };
                if v.is_empty() && !a.keep_empty {
                    continue;
                }
                match a.action {
                    AppendAction::AppendIfExistsOrAdd => {
                        map.append(&a.name, v);
                    }
                    AppendAction::AddIfAbsent => {
                        if !map.contains_key(&a.name) {
                            map.push(a.name.clone(), v);
                        }
                    }
                    AppendAction::OverwriteIfExists => {
                        if map.contains_key(&a.name) {
                            map.insert(&a.name, v);
                        }
                    }
                    AppendAction::OverwriteIfExistsOrAdd => {
                        map.insert(&a.name, v);
                    }
                }
            }
            return;
        }
        // Rendered against the headers as they are before this level adds any.
        let mut overwrite: Vec<(&HeaderName, HeaderValue)> = Vec::new();
        let mut append: Vec<(&HeaderName, HeaderValue)> = Vec::new();
        for a in &self.add {
            let v = match &a.value {
                Value::Fixed(v) => v.clone(),
                Value::Format { parts, req, resp } => match facts.render(parts, req, resp, map) {
                    Some(v) => v,
                    None => continue,
                },
            };
            if v.is_empty() && !a.keep_empty {
                continue;
            }
            match a.action {
                AppendAction::AppendIfExistsOrAdd => append.push((&a.name, v)),
                AppendAction::AddIfAbsent if !map.contains_key(&a.name) => {
                    append.push((&a.name, v))
                }
                AppendAction::AddIfAbsent => {}
                AppendAction::OverwriteIfExists if !map.contains_key(&a.name) => {}
                AppendAction::OverwriteIfExists | AppendAction::OverwriteIfExistsOrAdd => {
                    overwrite.push((&a.name, v))
                }
            }
        }
        for (n, v) in overwrite {
            map.insert(n, v);
        }
        for (n, v) in append {
            map.append(n, v);
        }
    }
}

/// A route's (or virtual host's, or route config's) rules of every level, least specific first.
#[derive(Debug, Default)]
pub struct HeaderRules {
    /// Request rules, route config first.
    pub request: Vec<Arc<Rules>>,
    /// Response rules, route config first.
    pub response: Vec<Arc<Rules>>,
    /// Request headers that response rules show (`%REQ(..)%`, including weighted clusters'):
    /// captured before the request goes upstream.
    response_reads: Vec<HeaderName>,
    /// Whether any response rule (weighted clusters' included) has a value with an operator:
    /// then the request's facts are captured for it.
    response_formats: bool,
    /// Whether a response rule shows `%TRACE_ID%`.
    response_trace: bool,
}

impl HeaderRules {
    /// The rules of `parent` (a less specific level) followed by this level's; `None` when there
    /// is no rule at all.
    pub fn chain(
        parent: Option<&HeaderRules>,
        request: Option<Arc<Rules>>,
        response: Option<Arc<Rules>>,
    ) -> Option<Arc<HeaderRules>> {
        let mut h = HeaderRules::default();
        if let Some(p) = parent {
            h.request.extend(p.request.iter().cloned());
            h.response.extend(p.response.iter().cloned());
        }
        h.request.extend(request);
        h.response.extend(response);
        if h.request.is_empty() && h.response.is_empty() {
            return None;
        }
        h.note_response_reads(&h.response.clone());
        Some(Arc::new(h))
    }

    /// `base` (a route's chain, or none) made to also capture what the response rules of its
    /// weighted `clusters` read from the request.
    pub fn with_clusters(base: Option<&HeaderRules>, clusters: &[Arc<Rules>]) -> Arc<HeaderRules> {
        let mut h = HeaderRules::default();
        if let Some(b) = base {
            h.request.clone_from(&b.request);
            h.response.clone_from(&b.response);
        }
        let own = h.response.clone();
        h.note_response_reads(&own);
        h.note_response_reads(clusters);
        Arc::new(h)
    }

    /// Notes what `response` rules (this chain's, or a weighted cluster's applied after it) read
    /// from the request.
    fn note_response_reads(&mut self, response: &[Arc<Rules>]) {
        for r in response {
            for a in &r.add {
                if let Value::Format { parts, req, .. } = &a.value {
                    self.response_formats = true;
                    for (i, n) in req.iter().enumerate() {
                        let used = parts.contains(&Part::Field(Field::ReqHeader(i)));
                        if used && !self.response_reads.contains(n) {
                            self.response_reads.push(n.clone());
                        }
                    }
                }
            }
            self.response_trace |= r.uses(|f| *f == Field::TraceId);
        }
    }

    /// What the response rules need of the request, taken from it before it goes upstream;
    /// `None` when they need nothing (no rule with an operator).
    pub fn capture<B>(&self, req: &Request<B>) -> Option<Box<Captured>> {
        if !self.response_formats {
            return None;
        }
        let h = req.headers();
        let mut headers = Fields::new();
        for n in &self.response_reads {
            for v in h.get_all(n) {
                headers.push(n.clone(), v.to_owned());
            }
        }
        Some(Box::new(Captured {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
            version: req.version(),
            headers,
            trace_id: if self.response_trace {
                crate::trace::extract(h).0.map(|c| c.trace_id)
            } else {
                None
            },
        }))
    }
}

/// The request's facts that response rules show, taken before the request went upstream.
#[derive(Debug)]
pub struct Captured {
    /// Method.
    pub method: Method,
    /// Path and query as received.
    pub path: String,
    /// Protocol version as received.
    pub version: Version,
    /// The request headers response rules read.
    pub headers: Fields,
    /// Trace id of the request, when a response rule shows it.
    pub trace_id: Option<u128>,
}

/// What a header value can show, as the request path knows it when the rules apply.
#[derive(Debug)]
pub struct Facts<'a> {
    /// Request start.
    pub start: Instant,
    /// Method.
    pub method: &'a Method,
    /// Path and query as received.
    pub path: &'a str,
    /// Authority (Host / `:authority`) as routed.
    pub authority: &'a str,
    /// Protocol version as received.
    pub version: Version,
    /// The trusted client address.
    pub client: SocketAddr,
    /// Its IP as a header value, when the connection has it ready (the client is the remote
    /// address, not one from `x-forwarded-for`).
    pub client_ip: Option<&'a HeaderValue>,
    /// The connection's peer.
    pub direct: SocketAddr,
    /// Route name.
    pub route_name: Option<&'a str>,
    /// Cluster (request rules).
    pub cluster: Option<&'a str>,
    /// Response status (response rules; 0 for request rules).
    pub status: u16,
    /// For response rules: the request headers they read; `None` for request rules, which read
    /// the headers they change.
    pub request: Option<&'a Fields>,
    /// For response rules: the request's trace id.
    pub trace_id: Option<u128>,
}

impl Facts<'_> {
    /// Renders `parts`; `map` is the header map the rules change. `None` when the result is not
    /// a valid header value.
    fn render(
        &self,
        parts: &[Part],
        req: &[HeaderName],
        resp: &[HeaderName],
        map: &Fields,
    ) -> Option<HeaderValue> {
        // One header copied as it is, or the client's address the connection already has as a
        // header value: no rendering.
        match parts {
            [Part::Field(Field::ReqHeader(i))] => {
                let from = self.request.unwrap_or(map);
                return Some(
                    req.get(*i)
                        .and_then(|n| from.get(n))
                        .map(|v| v.to_owned())
                        .unwrap_or(EMPTY),
                );
            }
            [Part::Field(Field::DownstreamRemoteAddressWithoutPort)]
                if self.client_ip.is_some() =>
            {
                return self.client_ip.cloned();
            }
            _ => {}
        }
        let mut buf = [0u8; 256];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        if self.render_into(parts, req, resp, map, &mut cur).is_ok() {
            let n = cur.position() as usize;
            return HeaderValue::from_bytes(&buf[..n]).ok();
        }
        // Longer than the stack buffer.
        let mut out = Vec::with_capacity(512);
        self.render_into(parts, req, resp, map, &mut out).ok()?;
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
    }

    fn render_into(
        &self,
        parts: &[Part],
        req: &[HeaderName],
        resp: &[HeaderName],
        map: &Fields,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        for p in parts {
            let f = match p {
                Part::Lit(s) => {
                    out.write_all(s.as_bytes())?;
                    continue;
                }
                Part::Field(f) => f,
            };
            let header = |v: Option<message::Value<'_>>, out: &mut dyn std::io::Write| match v {
                Some(v) => out.write_all(v.as_bytes()),
                None => Ok(()),
            };
            match f {
                Field::StartTime => {
                    let t = SystemTime::now() - self.start.elapsed();
                    write!(out, "{}", humantime::format_rfc3339_millis(t))
                }
                Field::Method => write!(out, "{}", self.method),
                Field::Path => write!(out, "{}", self.path),
                Field::Authority => write!(out, "{}", self.authority),
                Field::ReqHeader(i) => {
                    let from = self.request.unwrap_or(map);
                    header(req.get(*i).and_then(|n| from.get(n)), out)
                }
                Field::RespHeader(i) if self.request.is_some() => {
                    header(resp.get(*i).and_then(|n| map.get(n)), out)
                }
                Field::Protocol => write!(out, "{}", protocol(self.version)),
                Field::ResponseCode if self.status != 0 => write!(out, "{}", self.status),
                Field::RouteName => write!(out, "{}", self.route_name.unwrap_or("")),
                Field::UpstreamCluster => write!(out, "{}", self.cluster.unwrap_or("")),
                Field::DownstreamRemoteAddress => write!(out, "{}", self.client),
                Field::DownstreamRemoteAddressWithoutPort => match self.client_ip {
                    Some(v) => out.write_all(v.as_bytes()),
                    None => write!(out, "{}", self.client.ip()),
                },
                Field::DownstreamDirectRemoteAddress => write!(out, "{}", self.direct),
                Field::DownstreamDirectRemoteAddressWithoutPort => {
                    write!(out, "{}", self.direct.ip())
                }
                Field::TraceId => {
                    let id = match self.request {
                        Some(_) => self.trace_id,
                        None => crate::trace::extract(map).0.map(|c| c.trace_id),
                    };
                    match id {
                        Some(id) => write!(out, "{id:032x}"),
                        None => Ok(()),
                    }
                }
                // Refused at load time for the direction where they are not known.
                _ => Ok(()),
            }?;
        }
        Ok(())
    }
}

const EMPTY: HeaderValue = HeaderValue::from_static("");

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str, dir: Direction) -> Arc<Rules> {
        let add: Vec<Spanned<config::HeaderValueOption>> = serde_saphyr::from_str(yaml).unwrap();
        Rules::compile(&add, &[], dir).unwrap().unwrap()
    }

    fn facts<'a>(m: &'a Method, request: Option<&'a Fields>) -> Facts<'a> {
        Facts {
            start: Instant::now(),
            method: m,
            path: "/p?q=1",
            authority: "example.com",
            version: Version::HTTP_11,
            client: "203.0.113.7:0".parse().unwrap(),
            client_ip: None,
            direct: "10.0.0.2:5555".parse().unwrap(),
            route_name: Some("r"),
            cluster: Some("c"),
            status: if request.is_some() { 503 } else { 0 },
            request,
            trace_id: None,
        }
    }

    fn values(h: &Fields, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn append_actions_follow_envoy() {
        let r = rules(
            r#"
- { header: { key: x-append, value: b } }
- { header: { key: x-new, value: n } }
- { header: { key: x-absent, value: b }, append_action: add_if_absent }
- { header: { key: x-absent-new, value: n }, append_action: add_if_absent }
- { header: { key: x-over, value: b }, append_action: overwrite_if_exists_or_add }
- { header: { key: x-over-new, value: n }, append_action: overwrite_if_exists_or_add }
- { header: { key: x-if, value: b }, append_action: overwrite_if_exists }
- { header: { key: x-if-new, value: n }, append_action: overwrite_if_exists }
- { header: { key: x-empty, value: "%REQ(x-missing)%" } }
- { header: { key: x-kept-empty, value: "%REQ(x-missing)%" }, keep_empty_value: true }
- { header: { key: X-Upper, value: "" } }
"#,
            Direction::Request,
        );
        let mut h = Fields::new();
        for n in ["x-append", "x-absent", "x-over", "x-if"] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static("a1"));
            h.append(HeaderName::from_static(n), HeaderValue::from_static("a2"));
        }
        let m = Method::GET;
        r.apply(&mut h, &facts(&m, None));
        assert_eq!(values(&h, "x-append"), ["a1", "a2", "b"]);
        assert_eq!(values(&h, "x-new"), ["n"]);
        assert_eq!(values(&h, "x-absent"), ["a1", "a2"]);
        assert_eq!(values(&h, "x-absent-new"), ["n"]);
        assert_eq!(values(&h, "x-over"), ["b"]);
        assert_eq!(values(&h, "x-over-new"), ["n"]);
        assert_eq!(values(&h, "x-if"), ["b"]);
        assert!(values(&h, "x-if-new").is_empty());
        assert!(values(&h, "x-empty").is_empty(), "empty value left out");
        assert_eq!(values(&h, "x-kept-empty"), [""]);
        assert!(
            values(&h, "x-upper").is_empty(),
            "an empty fixed value is left out too"
        );
    }

    #[test]
    fn rules_applied_as_rendered_agree_with_rules_collected_first() {
        let yaml = r#"
- { header: { key: x-append, value: b } }
- { header: { key: x-absent, value: b }, append_action: add_if_absent }
- { header: { key: x-absent-new, value: "%ROUTE_NAME%" }, append_action: add_if_absent }
- { header: { key: x-over, value: b }, append_action: overwrite_if_exists_or_add }
- { header: { key: x-if, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }, append_action: overwrite_if_exists }
- { header: { key: x-if-new, value: n }, append_action: overwrite_if_exists }
- { header: { key: x-ip, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" } }
"#;
        let direct = rules(yaml, Direction::Request);
        assert!(direct.direct);
        let mut collected = rules(yaml, Direction::Request);
        Arc::get_mut(&mut collected).unwrap().direct = false;
        let m = Method::GET;
        let ip = HeaderValue::from_static("192.0.2.1");
        let mut f = facts(&m, None);
        let mut out = Vec::new();
        for (r, client_ip) in [(&direct, None), (&collected, None), (&direct, Some(&ip))] {
            f.client_ip = client_ip;
            let mut h = Fields::new();
            for n in ["x-append", "x-absent", "x-over", "x-if"] {
                h.append(HeaderName::from_static(n), HeaderValue::from_static("a1"));
                h.append(HeaderName::from_static(n), HeaderValue::from_static("a2"));
            }
            r.apply(&mut h, &f);
            out.push(h);
        }
        assert_eq!(out[0], out[1]);
        assert_eq!(values(&out[0], "x-append"), ["a1", "a2", "b"]);
        assert_eq!(values(&out[0], "x-absent"), ["a1", "a2"]);
        assert_eq!(values(&out[0], "x-absent-new"), ["r"]);
        assert_eq!(values(&out[0], "x-if"), ["203.0.113.7"]);
        assert!(values(&out[0], "x-if-new").is_empty());
        // The connection's ready header value is used when the client is the remote address.
        assert_eq!(values(&out[2], "x-ip"), ["192.0.2.1"]);
        // Rules that read the headers they change, or add one name twice, are collected first.
        assert!(
            !rules(
                r#"[{ header: { key: x-a, value: "%REQ(x-b)%" } }]"#,
                Direction::Request
            )
            .direct
        );
        assert!(
            !rules(
                r#"[{ header: { key: x-a, value: "1" } }, { header: { key: X-A, value: "2" } }]"#,
                Direction::Request
            )
            .direct
        );
        assert!(
            rules(
                r#"[{ header: { key: x-a, value: "%REQ(x-b)%" } }]"#,
                Direction::Response
            )
            .direct
        );
        // A value longer than the stack buffer renders all the same.
        let long = "x".repeat(300);
        let r = rules(
            &format!(r#"[{{ header: {{ key: x-long, value: "{long}%ROUTE_NAME%" }} }}]"#),
            Direction::Request,
        );
        let mut h = Fields::new();
        r.apply(&mut h, &facts(&m, None));
        assert_eq!(h.get("x-long").unwrap().len(), 301);
    }

    #[test]
    fn removals_come_first_and_values_see_the_headers_before_additions() {
        let add: Vec<Spanned<config::HeaderValueOption>> = serde_saphyr::from_str(
            r#"
- { header: { key: x-a, value: "new" }, append_action: overwrite_if_exists_or_add }
- { header: { key: x-copy, value: "%REQ(x-a)%|%REQ(x-gone)%" } }
"#,
        )
        .unwrap();
        let r = Rules::compile(
            &add,
            &[Spanned::unplaced("X-Gone".into())],
            Direction::Request,
        )
        .unwrap()
        .unwrap();
        let mut h = Fields::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("g"));
        let m = Method::GET;
        r.apply(&mut h, &facts(&m, None));
        assert_eq!(values(&h, "x-a"), ["new"]);
        assert_eq!(values(&h, "x-copy"), ["old|"]);
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn values_render_what_the_request_path_knows() {
        let r = rules(
            r#"
- { header: { key: x-client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" } }
- { header: { key: x-all, value: "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %PROTOCOL% %ROUTE_NAME% %RESPONSE_CODE% %REQ(x-in)% %RESP(x-up)% 100%%" } }
- { header: { key: x-time, value: "%START_TIME%" } }
"#,
            Direction::Response,
        );
        let mut request = Fields::new();
        request.insert("x-in", HeaderValue::from_static("in"));
        let mut h = Fields::new();
        h.insert("x-up", HeaderValue::from_static("up"));
        let m = Method::POST;
        r.apply(&mut h, &facts(&m, Some(&request)));
        assert_eq!(values(&h, "x-client"), ["203.0.113.7"]);
        assert_eq!(
            values(&h, "x-all"),
            ["203.0.113.7:0 10.0.0.2:5555 10.0.0.2 POST /p?q=1 example.com HTTP/1.1 r 503 in up 100%"]
        );
        let t = values(&h, "x-time");
        assert!(t[0].ends_with('Z') && t[0].len() == 24, "{t:?}");
    }

    #[test]
    fn obs_text_bytes_of_a_copied_header_are_kept() {
        let r = rules(
            r#"[{ header: { key: x-copy, value: "a%REQ(x-bin)%" } }]"#,
            Direction::Request,
        );
        let mut h = Fields::new();
        h.insert("x-bin", HeaderValue::from_bytes(b"\xff ok").unwrap());
        let m = Method::GET;
        r.apply(&mut h, &facts(&m, None));
        // Bytes above 0x7f are valid header value bytes (obs-text): copied as they are.
        assert_eq!(h.get("x-copy").unwrap().as_bytes(), b"a\xff ok");
    }

    #[test]
    fn chains_keep_the_order_and_capture_only_what_responses_read() {
        let rc = rules(
            r#"[{ header: { key: x-l, value: rc } }]"#,
            Direction::Response,
        );
        let route = rules(
            r#"[{ header: { key: x-l, value: "%REQ(x-want)%" } }]"#,
            Direction::Response,
        );
        let top = HeaderRules::chain(None, None, Some(rc)).unwrap();
        assert!(
            top.capture(&Request::new(())).is_none(),
            "fixed values need nothing"
        );
        let h = HeaderRules::chain(Some(&top), None, Some(route)).unwrap();
        assert_eq!(h.response.len(), 2);
        let req = Request::from(
            http::Request::builder()
                .header("x-want", "w")
                .header("x-other", "o")
                .body(())
                .unwrap(),
        );
        let c = h.capture(&req).unwrap();
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers.get("x-want").unwrap(), "w");
        assert!(HeaderRules::chain(None, None, None).is_none());
    }
}
