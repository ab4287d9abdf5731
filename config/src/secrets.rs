//! Values that are never printed: OTLP export header values (what `/config_dump` shows as
//! `<redacted>`), inline key material (`inline:` PEM, private keys among it) and credentials in
//! URLs. Found in each file's text, line by line, so that they
//! are hidden whether or not the file parses; diagnostics (messages, and the source lines
//! `tern-validate` quotes) go through [`Secrets`] before anything prints them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;

use super::diag::Diagnostic;
use super::source::Sources;

/// What a secret is shown as.
pub const REDACTED: &str = "<redacted>";

/// Whether a header carries a credential, so that a header rule's value for it is never shown:
/// `authorization`, `proxy-authorization`, cookies, and names that say key, token, secret or
/// password.
pub fn sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || [
        "key",
        "token",
        "secret",
        "password",
        "credential",
        "session",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Values shorter than this are not searched for in messages (they would hide ordinary words);
/// they are still hidden in quoted lines, by position.
const MIN_SCRUBBED_LEN: usize = 4;

/// The secrets of one configuration: their places in the files and their values.
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    /// Byte ranges to hide, by file and 0-based line.
    spans: HashMap<PathBuf, HashMap<usize, Vec<Range<usize>>>>,
    /// The secret values themselves, to scrub from messages.
    values: Vec<String>,
    /// The values' matcher, built on first use.
    matcher: std::sync::OnceLock<Option<AhoCorasick>>,
}

impl Secrets {
    /// Finds the secrets in every file of `sources`.
    pub fn find(sources: &Sources) -> Secrets {
        let mut s = Secrets::default();
        let mut values = HashSet::new();
        for f in &sources.files {
            let spans = in_text(&f.text);
            let lines: Vec<&str> = f.text.split('\n').collect();
            for (&n, ranges) in &spans {
                for r in ranges {
                    let v = &lines[n][r.clone()];
                    let v = v.split(" #").next().unwrap_or(v);
                    let v = v.trim().trim_matches(['"', '\'']).trim();
                    if v.len() >= MIN_SCRUBBED_LEN {
                        values.insert(v.to_string());
                    }
                }
            }
            if !spans.is_empty() {
                s.spans.insert(f.path.clone(), spans);
            }
        }
        s.values = values.into_iter().collect();
        // Longest first: a value that contains another is hidden whole.
        s.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        s
    }

    /// Adds values known from the parsed model (an anchor's value used as a header, say).
    pub fn add_values(&mut self, more: impl IntoIterator<Item = String>) {
        self.values
            .extend(more.into_iter().filter(|v| v.len() >= MIN_SCRUBBED_LEN));
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        self.values.dedup();
        self.matcher = std::sync::OnceLock::new();
    }

    /// True when there is nothing to hide.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.values.is_empty()
    }

    /// `text`, 1-based line `line` of `file`, with its secrets replaced by [`REDACTED`], and where
    /// byte `at` of the original line is in the result.
    pub fn redact_line<'a>(
        &self,
        file: &Path,
        line: u32,
        text: &'a str,
        at: usize,
    ) -> (Cow<'a, str>, usize) {
        let mut ranges: Vec<Range<usize>> = self
            .spans
            .get(file)
            .and_then(|f| f.get(&(line as usize).wrapping_sub(1)))
            .cloned()
            .unwrap_or_default();
        if let Some(m) = self.matcher() {
            ranges.extend(m.find_iter(text).map(|m| m.range()));
        }
        if ranges.is_empty() {
            return (Cow::Borrowed(text), at);
        }
        ranges.sort_by_key(|r| r.start);
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        let mut new_at = None;
        for r in ranges {
            if r.end <= from || r.start >= text.len() {
                continue;
            }
            let start = r.start.max(from);
            if new_at.is_none() && at < start {
                new_at = Some(out.len() + at - from);
            }
            out.push_str(&text[from..start]);
            if new_at.is_none() && at < r.end {
                new_at = Some(out.len());
            }
            out.push_str(REDACTED);
            from = r.end.min(text.len());
        }
        let at = new_at.unwrap_or(out.len() + at.saturating_sub(from));
        out.push_str(&text[from..]);
        let at = at.min(out.len());
        (Cow::Owned(out), at)
    }

    /// Replaces every secret value in the texts of `d` (message, help, related notes).
    pub fn scrub(&self, d: &mut Diagnostic) {
        let Some(m) = self.matcher() else { return };
        let fix = |s: &mut String| {
            if m.is_match(s.as_str()) {
                *s = m.replace_all(s, &vec![REDACTED; self.values.len()]);
            }
        };
        fix(&mut d.message);
        if let Some(h) = &mut d.help {
            fix(h);
        }
        for r in &mut d.related {
            fix(&mut r.message);
        }
    }

    fn matcher(&self) -> Option<&AhoCorasick> {
        self.matcher
            .get_or_init(|| {
                if self.values.is_empty() {
                    return None;
                }
                AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(&self.values)
                    .ok()
            })
            .as_ref()
    }
}

/// Credentials in a URL (`scheme://user:password@host`): the `user:password` part.
fn url_credentials(line: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = line[from..].find("://") {
        let start = from + i + 3;
        let rest = &line[start..];
        let end = rest
            .find(|c: char| {
                c == '/'
                    || c == '?'
                    || c == '#'
                    || c.is_whitespace()
                    || c == ','
                    || c == '}'
                    || c == ']'
                    || c == '"'
                    || c == '\''
            })
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            out.push(start..start + at);
        }
        from = start;
    }
    out
}

/// The key of a `key: value` line (after any `- ` markers), its indentation, and where its value
/// starts; `None` for a line without a key.
fn key_of(line: &str) -> (usize, Option<(&str, usize)>) {
    let mut indent = line.len() - line.trim_start().len();
    let mut rest = &line[indent..];
    while let Some(r) = rest.strip_prefix("- ") {
        let skip = 2 + (r.len() - r.trim_start().len());
        indent += skip;
        rest = &line[indent..];
    }
    let Some(colon) = rest
        .find(": ")
        .or_else(|| rest.strip_suffix(':').map(|r| r.len()))
    else {
        return (indent, None);
    };
    let key = rest[..colon].trim().trim_matches(['"', '\'']);
    if key.is_empty() || key.starts_with(['{', '[', '#']) {
        return (indent, None);
    }
    (indent, Some((key, indent + colon + 1)))
}

/// The secrets of one file's text: byte ranges by 0-based line.
///
/// A line is inside an OTLP `headers` mapping when the keys above it (by indentation) hold
/// `otlp` and then `headers`; its value is secret. A `headers:` written inline on a line under
/// (or mentioning) `otlp` hides everything after it on the line. `headers: *name` makes the
/// anchor `&name` and what is nested under it secret too.
fn in_text(text: &str) -> HashMap<usize, Vec<Range<usize>>> {
    let lines: Vec<&str> = text.split('\n').collect();
    // Anchors used as OTLP headers, found in a first pass (they may be defined before use).
    let mut anchors: HashSet<&str> = HashSet::new();
    let mut out: HashMap<usize, Vec<Range<usize>>> = HashMap::new();
    for pass in 0..2 {
        let mut stack: Vec<(usize, &str)> = Vec::new();
        // Indentation below which an anchored secret block ends.
        let mut anchored: Option<usize> = None;
        // Indentation below which an inline PEM block scalar (`inline: |`) ends.
        let mut pem_block: Option<usize> = None;
        for (n, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let (indent, key) = key_of(line);
            while stack.last().is_some_and(|&(i, _)| i >= indent) {
                stack.pop();
            }
            if anchored.is_some_and(|i| indent <= i) {
                anchored = None;
            }
            if pem_block.is_some_and(|i| indent <= i) {
                pem_block = None;
            }
            let otlp_at = stack.iter().rposition(|&(_, k)| k == "otlp");
            let under_headers =
                otlp_at.is_some_and(|o| stack[o + 1..].iter().any(|&(_, k)| k == "headers"));
            let mut ranges = Vec::new();
            let value_from = |i: usize| i + line[i..].len() - line[i..].trim_start().len();
            if pem_block.is_some() {
                ranges.push(indent..line.len());
            } else if let Some(i) = ["inline:", "inline_string:"]
                .iter()
                .filter_map(|k| line.find(k).map(|i| i + k.len()))
                .min()
            {
                // Inline key material: its value, and the lines of a block scalar under it.
                let from = value_from(i);
                let value = line[from..].trim();
                if value.is_empty() || value.starts_with(['|', '>']) {
                    pem_block = Some(indent);
                }
                if from < line.len() {
                    ranges.push(from..line.len());
                }
            } else if under_headers || anchored.is_some() {
                let from = value_from(key.map_or(indent, |(_, v)| v));
                if from < line.len() {
                    ranges.push(from..line.len());
                }
            } else if otlp_at.is_some() || line.contains("otlp") {
                if let Some(h) = line.find("headers:") {
                    let from = h + "headers:".len();
                    let value = line[from..].trim();
                    if let Some(name) = value.strip_prefix('*') {
                        anchors.insert(name.trim_end_matches([',', '}', ' ']));
                    } else if !value.is_empty() {
                        ranges.push(value_from(from)..line.len());
                    }
                }
            }
            if pass == 1 && !anchors.is_empty() {
                // Each `&name` on the line, looked up (not each anchor searched for: linear).
                for (i, _) in line.match_indices('&') {
                    let rest = &line[i + 1..];
                    let name = &rest[..rest
                        .find(|c: char| c.is_whitespace() || ",[]{}".contains(c))
                        .unwrap_or(rest.len())];
                    if name.is_empty() || !anchors.contains(name) {
                        continue;
                    }
                    let from = value_from(i + 1 + name.len());
                    if line[from..].trim().is_empty() {
                        anchored = Some(indent);
                    } else {
                        ranges.push(from..line.len());
                    }
                }
            }
            if pass == 1 {
                ranges.extend(url_credentials(line));
                if !ranges.is_empty() {
                    out.insert(n, ranges);
                }
            }
            if let Some((k, _)) = key {
                stack.push((indent, k));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(text: &str) -> Vec<String> {
        let spans = in_text(text);
        let lines: Vec<&str> = text.split('\n').collect();
        let mut v: Vec<(usize, String)> = spans
            .iter()
            .flat_map(|(&n, rs)| rs.iter().map(move |r| (n, r.clone())))
            .map(|(n, r)| (n, lines[n][r].trim().to_string()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn otlp_header_values_in_every_layout() {
        let block = "listeners:\n  - name: l\n    tracing:\n      otlp:\n        endpoint: http://c:4317\n        headers:\n          x-api-key: sk-live-1234\n          \"x-team\": 'abcd'\n    access_log: []\n";
        assert_eq!(hidden(block), ["sk-live-1234", "'abcd'"]);
        let flow =
            "      otlp: { endpoint: http://c:4317, headers: { x-api-key: sk-live-1234 } }\n";
        assert_eq!(hidden(flow), ["{ x-api-key: sk-live-1234 } }"]);
        let inline = "    tracing:\n      otlp:\n        headers: { authorization: Bearer xyz1 }\n";
        assert_eq!(hidden(inline), ["{ authorization: Bearer xyz1 }"]);
        let anchored = "x-keys: &k\n  x-api-key: sk-anchored\nlisteners:\n  - tracing:\n      otlp:\n        headers: *k\n";
        assert_eq!(hidden(anchored), ["sk-anchored"]);
        // Route header matchers are not secrets.
        let routes =
            "routes:\n  - match: { prefix: /, headers: [{ name: x-canary, exact: \"1\" }] }\n";
        assert!(hidden(routes).is_empty());
        let pem = "tls:\n  certificates:\n    - private_key:\n        inline: |\n          -----BEGIN PRIVATE KEY-----\n          MIGHAgEAMBMGByqGSM49\n\n          -----END PRIVATE KEY-----\n      certificate_chain: { file: a.pem }\n    - private_key: { inline: \"-----BEGIN PRIVATE KEY-----\\nMIGH\" }\n";
        assert_eq!(
            hidden(pem),
            [
                "|",
                "-----BEGIN PRIVATE KEY-----",
                "MIGHAgEAMBMGByqGSM49",
                "-----END PRIVATE KEY-----",
                "\"-----BEGIN PRIVATE KEY-----\\nMIGH\" }"
            ]
        );
        let url = "        endpoint: https://user:pa55word@collector:4318\n";
        assert_eq!(hidden(url), ["user:pa55word"]);
    }

    #[test]
    fn lines_and_messages_are_redacted() {
        let sources = Sources {
            files: vec![crate::SourceFile {
                path: "a.yaml".into(),
                text: "otlp:\n  headers:\n    x-api-key: sk-live-1234 # key\n".into(),
            }],
            ..Default::default()
        };
        let s = Secrets::find(&sources);
        let line = "    x-api-key: sk-live-1234 # key";
        let (red, at) = s.redact_line(Path::new("a.yaml"), 3, line, 4);
        assert_eq!(red, "    x-api-key: <redacted>");
        assert_eq!(at, 4);
        let (_, at) = s.redact_line(Path::new("a.yaml"), 3, line, 20);
        assert_eq!(at, 15, "a position inside the secret moves to its start");
        let mut d = Diagnostic::error(
            "E004",
            Path::new("a.yaml"),
            Default::default(),
            "found `sk-live-1234`",
        );
        s.scrub(&mut d);
        assert_eq!(d.message, "found `<redacted>`");
    }

    #[test]
    fn credential_header_rules_are_never_shown() {
        assert!(sensitive_header("Authorization") && sensitive_header("x-api-key"));
        assert!(sensitive_header("X-Auth-Token") && sensitive_header("set-cookie"));
        assert!(!sensitive_header("x-canary") && !sensitive_header("keep-alive"));
        // A rule that adds a credential upstream, and an error on the same route.
        let text = "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: / }\n            route: { cluster: nowhere }\n            request_headers_to_add:\n              - header: { key: authorization, value: \"Bearer sk-live-9876\" }\n              - header: { key: x-team, value: payments }\n";
        let mut sources = Sources {
            files: vec![crate::SourceFile {
                path: "routes.yaml".into(),
                text: text.into(),
            }],
            ..Default::default()
        };
        let (cfg, diags, secrets) = crate::check::check(&mut sources);
        assert!(cfg.is_none(), "the cluster is not defined");
        let line = "              - header: { key: authorization, value: \"Bearer sk-live-9876\" }";
        let (red, _) = secrets.redact_line(Path::new("routes.yaml"), 10, line, 0);
        assert!(!red.contains("sk-live-9876"), "{red}");
        assert!(diags.iter().all(|d| !d.message.contains("sk-live-9876")));
        // And `/config_dump`: the model serialises the value as redacted, other values as they are.
        let kv: crate::HeaderKeyValue =
            serde_saphyr::from_str("{ key: authorization, value: \"Bearer sk-live-9876\" }")
                .unwrap();
        let json = serde_json::to_string(&kv).unwrap();
        assert!(
            json.contains(REDACTED) && !json.contains("sk-live"),
            "{json}"
        );
        let kv: crate::HeaderKeyValue =
            serde_saphyr::from_str("{ key: x-team, value: payments }").unwrap();
        assert!(serde_json::to_string(&kv).unwrap().contains("payments"));
    }
}
