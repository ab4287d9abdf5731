//! Parsing fragments, merging them by name, and the semantic checks that need the whole set.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::diag::{codes, Diagnostic};
use super::lines::Lines;
use super::model::*;
use super::secrets::Secrets;
use super::source::{Limits, Sources};
use super::value::{Pos, Shift, Spanned};
use super::{Config, Def};

/// The parser's options for `limits`: the node budget from `--max-yaml-nodes`, the others at
/// serde-saphyr's defaults or derived from it.
pub fn yaml_options(limits: &Limits) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = limits.max_yaml_nodes;
    // Every node has at most one end event (and a stream a few more): the node budget decides.
    budget.max_events = limits.max_yaml_nodes.saturating_mul(2).saturating_add(16);
    budget.max_total_scalar_bytes = budget
        .max_total_scalar_bytes
        .max(usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX));
    // Sharing one anchor among many routes (`retry_policy: *default`) is normal; what aliases
    // may cost is bounded by the replay limit instead.
    budget.enforce_alias_anchor_ratio = false;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    limits: &Limits,
) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, yaml_options(limits))
}

/// Parses and checks a set of sources. Returns the merged configuration only when there is no
/// error, the diagnostics (with secret values hidden), and the secrets of the files.
pub fn check(sources: &mut Sources) -> (Option<Config>, Vec<Diagnostic>, Secrets) {
    let mut diags = Vec::new();
    let files: Vec<PathBuf> = sources.files.iter().map(|f| f.path.clone()).collect();
    let mut fragments = Vec::new();
    // Names that files which failed to parse may define: references to them are not reported as
    // dangling, so one broken file does not hide (or fake) problems in the others.
    let mut maybe_defined: HashSet<String> = HashSet::new();
    let limits = &sources.limits;
    for (i, (f, parsed)) in sources.files.iter().zip(parse_all(sources)).enumerate() {
        match parsed {
            Ok(frag) => {
                if frag.admin.is_none()
                    && frag.overload.is_none()
                    && frag.dns.is_none()
                    && frag.listeners.is_empty()
                    && frag.route_configs.is_empty()
                    && frag.clusters.is_empty()
                {
                    diags.push(Diagnostic::warning(
                        codes::EMPTY_FILE,
                        &f.path,
                        Pos { line: 1, column: 1 },
                        "file defines nothing (no admin, dns, listeners, route_configs or clusters)",
                    ));
                }
                fragments.push((i, frag));
            }
            Err(e) => {
                maybe_defined.extend(names_in_text(&f.text));
                let lines = Lines::new(&f.text);
                let first = yaml_error(&f.path, &lines, &e, Shift::default(), limits);
                // serde stops at the first error of a file; parsing each list item on its own
                // finds the others, and the items that do parse still take part in the checks.
                // Not after a breached budget: that is about the file as a whole.
                let recovered = match innermost(&e) {
                    serde_saphyr::Error::Budget { .. }
                    | serde_saphyr::Error::AliasReplayLimitExceeded { .. }
                    | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => None,
                    _ => recover(&f.text, first.line as usize, limits),
                };
                if let Some((partial, errors)) = recovered {
                    for (e, shift) in errors {
                        let d = yaml_error(&f.path, &lines, &e, shift, limits);
                        if (d.line, d.column, d.code) != (first.line, first.column, first.code) {
                            diags.push(d);
                        }
                    }
                    fragments.push((i, partial));
                }
                diags.push(first);
            }
        }
    }

    let mut cfg = Config {
        files,
        ..Default::default()
    };
    let mut admin_at: Option<(usize, Pos)> = None;
    let mut overload_at: Option<(usize, Pos)> = None;
    for (file, frag) in fragments {
        if let Some(o) = frag.overload {
            if let Some((f0, p0)) = overload_at {
                diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        &cfg.files[file],
                        o.pos,
                        "overload is defined twice",
                    )
                    .with_related("first defined here", &cfg.files[f0], p0),
                );
            } else {
                overload_at = Some((file, o.pos));
                cfg.overload = o.value;
            }
        }
        if let Some(a) = frag.admin {
            if let Some((f0, p0)) = admin_at {
                diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        &cfg.files[file],
                        a.pos,
                        "admin is defined twice",
                    )
                    .with_related("first defined here", &cfg.files[f0], p0),
                );
            } else {
                admin_at = Some((file, a.pos));
                cfg.admin = a.value;
            }
        }
        if let Some(d) = frag.dns {
            if let Some(first) = &cfg.dns {
                diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        &cfg.files[file],
                        d.pos,
                        "dns is defined twice",
                    )
                    .with_related(
                        "first defined here",
                        &cfg.files[first.file],
                        first.pos,
                    ),
                );
            } else {
                cfg.dns = Some(Def {
                    file,
                    pos: d.pos,
                    value: d.value,
                });
            }
        }
        let def = |s: Spanned<_>| Def {
            file,
            pos: s.pos,
            value: s.value,
        };
        cfg.listeners.extend(frag.listeners.into_iter().map(def));
        cfg.route_configs
            .extend(frag.route_configs.into_iter().map(|s| Def {
                file,
                pos: s.pos,
                value: s.value,
            }));
        cfg.clusters.extend(frag.clusters.into_iter().map(|s| Def {
            file,
            pos: s.pos,
            value: s.value,
        }));
    }

    let mut ck = Checker {
        files: &cfg.files,
        diags: &mut diags,
    };
    ck.unique(
        "listener",
        cfg.listeners.iter().map(|d| (d.file, &d.value.name)),
    );
    ck.unique(
        "route config",
        cfg.route_configs.iter().map(|d| (d.file, &d.value.name)),
    );
    ck.unique(
        "cluster",
        cfg.clusters.iter().map(|d| (d.file, &d.value.name)),
    );
    for l in &cfg.listeners {
        ck.listener(l);
    }
    for rc in &cfg.route_configs {
        ck.route_config(rc);
    }
    for c in &cfg.clusters {
        ck.cluster(c);
    }
    ck.addresses(&cfg, admin_at);
    if let Some((file, _)) = overload_at {
        ck.overload(file, &cfg.overload);
    }
    ck.references(&cfg, &maybe_defined);
    let limits = sources.limits;
    super::check_tls::check(&mut cfg, &mut sources.data, &limits, &mut diags);
    super::check_resilience::check(&cfg, &mut diags);
    super::check_discovery::check(&cfg, &mut diags);
    super::check_observability::check(&cfg, &mut diags);
    super::check_edge::check(&cfg, &mut diags);
    super::check_http2::check(&cfg, &mut diags);
    super::lint::lint(&cfg, admin_at, &mut diags);

    // A message may quote a value (`found `...``): never a secret one.
    let mut secrets = Secrets::find(sources);
    secrets.add_values(cfg.listeners.iter().flat_map(|l| {
        let otlp = l.value.tracing.as_ref().and_then(|t| t.otlp.as_ref());
        otlp.into_iter()
            .flat_map(|o| o.headers.values().map(|v| v.value.clone()))
    }));
    secrets.add_values(inline_pem_lines(&cfg));
    secrets.add_values(sensitive_rule_values(&cfg));
    for d in &mut diags {
        secrets.scrub(d);
    }
    diags.sort_by(|a, b| {
        (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
    });
    if diags.iter().any(Diagnostic::is_error) {
        (None, diags, secrets)
    } else {
        (Some(cfg), diags, secrets)
    }
}

/// The lines of every inline PEM text (a private key's among them): never quoted in a message.
fn inline_pem_lines(cfg: &Config) -> Vec<String> {
    let mut sources: Vec<&DataSource> = Vec::new();
    for l in &cfg.listeners {
        if let Some(t) = &l.value.tls {
            for c in &t.certificates {
                sources.push(&c.certificate_chain);
                sources.push(&c.private_key);
            }
            sources.extend(t.client_ca.as_deref());
        }
    }
    for c in &cfg.clusters {
        if let Some(t) = &c.value.tls {
            sources.extend(t.ca.as_deref());
            if let Some(cc) = &t.client_certificate {
                sources.push(&cc.certificate_chain);
                sources.push(&cc.private_key);
            }
        }
    }
    sources
        .into_iter()
        .filter_map(|d| d.inline.as_ref())
        .flat_map(|i| i.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>())
        // The armour lines are no secret, and messages name them ("no -----BEGIN ...").
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// Values that header rules set on credential headers ([`super::secrets::sensitive_header`]),
/// at every level: never quoted in a diagnostic.
fn sensitive_rule_values(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut take = |rules: &[Spanned<super::HeaderValueOption>]| {
        out.extend(
            rules
                .iter()
                .filter(|r| super::secrets::sensitive_header(&r.header.key))
                .map(|r| r.header.value.value.clone()),
        );
    };
    for rc in &cfg.route_configs {
        let rc = &rc.value;
        take(&rc.request_headers_to_add);
        take(&rc.response_headers_to_add);
        for vh in &rc.virtual_hosts {
            take(&vh.request_headers_to_add);
            take(&vh.response_headers_to_add);
            for r in &vh.routes {
                take(&r.request_headers_to_add);
                take(&r.response_headers_to_add);
                let split = r.route.as_ref().and_then(|a| a.weighted_clusters.as_ref());
                for w in split.iter().flat_map(|w| w.clusters.iter()) {
                    take(&w.request_headers_to_add);
                    take(&w.response_headers_to_add);
                }
            }
        }
    }
    out
}

/// The top level of a file with every item left unparsed, to find where each item is.
#[derive(serde::Deserialize)]
struct Outline {
    #[serde(default)]
    admin: Option<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    overload: Option<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
    dns: Option<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    listeners: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    route_configs: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    clusters: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
}

/// After a file failed to parse: parses its items on their own. Returns the items that parse and
/// the errors of the others, or `None` when nothing can be recovered.
///
/// Block-style lists (`- ` items) are cut into items by lines and parsed in halving groups, so
/// that a file of thousands of items with a few bad ones costs a few dozen parses, not thousands.
/// Other lists (flow style) are parsed item by item when the file is well-formed YAML. After a
/// syntax error (the file is not well-formed), only errors of items that begin after
/// `first_line` are kept: the parser may notice a mistake an item late, at `first_line`.
fn recover(
    text: &str,
    first_line: usize,
    limits: &Limits,
) -> Option<(Fragment, Vec<(serde_saphyr::Error, Shift)>)> {
    let outline = parse::<Outline>(text, limits).ok();
    let lines: Vec<&str> = text.lines().collect();
    let chunks = block_items(&lines);
    let mut frag = Fragment::default();
    let mut errors = Vec::new();
    if !chunks.is_empty() {
        let keep_from = if outline.is_some() { 0 } else { first_line };
        let mut i = 0;
        while i < chunks.len() {
            // Chunks of one key are contiguous lines: parse them as groups.
            let j = i + chunks[i..]
                .iter()
                .take_while(|c| c.0 == chunks[i].0)
                .count();
            parse_chunks(
                &lines,
                &chunks[i..j],
                keep_from,
                limits,
                &mut frag,
                &mut errors,
            );
            i = j;
        }
        return Some((frag, errors));
    }
    let outline = outline?;
    fn each<T: serde::de::DeserializeOwned>(
        items: &[serde_saphyr::Spanned<serde::de::IgnoredAny>],
        lines: &Lines<'_>,
        limits: &Limits,
        errors: &mut Vec<(serde_saphyr::Error, Shift)>,
    ) -> Vec<Spanned<T>> {
        let mut ok = Vec::new();
        for item in items {
            let at = &item.referenced;
            let (text, shift) = item_text(lines, at.line() as u32, at.column() as u32);
            match shift.during(|| parse::<Spanned<T>>(&text, limits)) {
                Ok(v) => ok.push(v),
                // An alias to an anchor in another item cannot resolve in the item alone: that
                // is not a problem of the configuration, so the item is just left out.
                Err(e) if matches!(innermost(&e), serde_saphyr::Error::UnknownAnchor { .. }) => {}
                Err(e) => errors.push((e, shift)),
            }
        }
        ok
    }
    let lines = Lines::new(text);
    if let Some(a) = &outline.admin {
        let mut v = each::<Admin>(std::slice::from_ref(a), &lines, limits, &mut errors);
        frag.admin = v.pop();
    }
    if let Some(o) = &outline.overload {
        let mut v = each::<Overload>(std::slice::from_ref(o), &lines, limits, &mut errors);
        frag.overload = v.pop();
    }
    if let Some(d) = &outline.dns {
        let mut v = each::<Dns>(std::slice::from_ref(d), &lines, limits, &mut errors);
        frag.dns = v.pop();
    }
    frag.listeners = each(&outline.listeners, &lines, limits, &mut errors);
    frag.route_configs = each(&outline.route_configs, &lines, limits, &mut errors);
    frag.clusters = each(&outline.clusters, &lines, limits, &mut errors);
    Some((frag, errors))
}

/// Parses chunks `(key line, first line, end line)` of one key together; when that fails, each
/// half on its own, down to single chunks, whose errors are kept if they begin after `keep_from`.
fn parse_chunks(
    lines: &[&str],
    chunks: &[(usize, usize, usize)],
    keep_from: usize,
    limits: &Limits,
    frag: &mut Fragment,
    errors: &mut Vec<(serde_saphyr::Error, Shift)>,
) {
    let (key, start, _) = chunks[0];
    let end = chunks[chunks.len() - 1].2;
    // The key line, then the items: positions are shifted back to the whole file's.
    let mut t = String::from(lines[key]);
    t.push('\n');
    for l in &lines[start..end] {
        t.push_str(l);
        t.push('\n');
    }
    let shift = Shift {
        first: Pos {
            line: key as u32 + 1,
            column: 0,
        },
        lines: start as u32 - 1,
    };
    match shift.during(|| parse::<Fragment>(&t, limits)) {
        Ok(part) => {
            if part.admin.is_some() {
                frag.admin = part.admin;
            }
            if part.overload.is_some() {
                frag.overload = part.overload;
            }
            if part.dns.is_some() {
                frag.dns = part.dns;
            }
            frag.listeners.extend(part.listeners);
            frag.route_configs.extend(part.route_configs);
            frag.clusters.extend(part.clusters);
        }
        Err(_) if chunks.len() > 1 => {
            let (a, b) = chunks.split_at(chunks.len() / 2);
            parse_chunks(lines, a, keep_from, limits, frag, errors);
            parse_chunks(lines, b, keep_from, limits, frag, errors);
        }
        // See `recover`: an alias into another item is not an error of this one.
        Err(e) if matches!(innermost(&e), serde_saphyr::Error::UnknownAnchor { .. }) => {}
        Err(e) if start + 1 > keep_from => errors.push((e, shift)),
        Err(_) => {}
    }
}

/// A line that starts a top-level block such as `clusters:` (nothing but a comment after the colon).
fn top_level_key(line: &str) -> Option<&str> {
    let (key, rest) = line.split_once(':')?;
    let rest = rest.trim();
    let known = matches!(
        key,
        "admin" | "overload" | "dns" | "listeners" | "route_configs" | "clusters"
    );
    (known && (rest.is_empty() || rest.starts_with('#'))).then_some(key)
}

/// A line that ends the previous top-level block: text at column 1 that is not a comment and not
/// a `-` item (a list may be written at the indentation of its key).
fn at_top_level(line: &str) -> bool {
    line.chars()
        .next()
        .is_some_and(|c| !c.is_whitespace() && c != '#' && c != '-')
}

/// The items of the block-style top-level lists, as `(key line, first line, end line)`, 0-based
/// with the end exclusive; `admin` and `dns` are one item each. Lists in flow style (`[...]`) have none.
fn block_items(lines: &[&str]) -> Vec<(usize, usize, usize)> {
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(key) = top_level_key(lines[i]) else {
            i += 1;
            continue;
        };
        let end = (i + 1..lines.len())
            .find(|&n| at_top_level(lines[n]))
            .unwrap_or(lines.len());
        if key == "admin" || key == "overload" || key == "dns" {
            chunks.push((i, i + 1, end));
        } else {
            let mut indent = None;
            let mut start = None;
            for (n, l) in lines.iter().enumerate().take(end).skip(i + 1) {
                let t = l.trim_start();
                let ind = l.len() - t.len();
                if (t.starts_with("- ") || t == "-") && indent.is_none_or(|x| x == ind) {
                    indent = Some(ind);
                    if let Some(s) = start.replace(n) {
                        chunks.push((i, s, n));
                    }
                }
            }
            if let Some(s) = start {
                chunks.push((i, s, end));
            }
        }
        i = end;
    }
    chunks
}

/// The text of the node starting at `line:column`, and the shift that puts positions in it back
/// where they are in the whole file. The node ends before the first non-blank line indented
/// less than its own column.
fn item_text(lines: &Lines<'_>, line: u32, column: u32) -> (String, Shift) {
    let (line, col) = (line.max(1), column.max(1));
    let mut out = String::new();
    let mut shift = Shift {
        first: Pos { line, column: 0 },
        lines: line - 1,
    };
    let Some(first) = lines.get(line) else {
        return (out, shift);
    };
    let start = lines.byte_of(line, col);
    let rest = (line..).map_while(|n| lines.get(n));
    if first[start..].starts_with(['{', '[']) {
        // Flow collections ignore indentation: the item starts at column 1 of the piece.
        shift.first.column = col - 1;
        // A flow collection ends at its closing bracket, possibly lines later.
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        for (n, l) in rest.enumerate() {
            let from = if n == 0 { start } else { 0 };
            for (i, c) in l[from..].char_indices() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '{' | '[') => depth += 1,
                    (None, '}' | ']') => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            out.push_str(&l[from..from + i + 1]);
                            out.push('\n');
                            return (out, shift);
                        }
                    }
                    _ => {}
                }
            }
            out.push_str(&l[from..]);
            out.push('\n');
        }
        return (out, shift);
    }
    // A block node: its first line keeps its indentation (the lines after it are indented so).
    out.push_str(&" ".repeat(col as usize - 1));
    out.push_str(&first[start..]);
    out.push('\n');
    for l in rest.skip(1) {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        if !t.is_empty() && !t.starts_with('#') && indent < col as usize - 1 {
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    (out, shift)
}

/// Below this much YAML, parsing on one thread is faster than starting others.
const PARALLEL_PARSE_BYTES: usize = 256 * 1024;

/// Parses every file, in order. Large configurations are parsed on all cores: YAML parsing is
/// most of the cost of loading, and files are independent until they are merged.
fn parse_all(sources: &Sources) -> Vec<Result<Fragment, serde_saphyr::Error>> {
    let parse = |f: &super::source::SourceFile| parse::<Fragment>(&f.text, &sources.limits);
    let total: usize = sources.files.iter().map(|f| f.text.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || total < PARALLEL_PARSE_BYTES || sources.files.len() < 2 {
        return sources.files.iter().map(parse).collect();
    }
    let chunk = sources.files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        // A thread that cannot be started (resource limits) leaves its part to this thread.
        let handles: Vec<_> = sources
            .files
            .chunks(chunk)
            .map(|part| {
                let h = std::thread::Builder::new()
                    .name("tern-config-parse".into())
                    .spawn_scoped(scope, move || part.iter().map(parse).collect::<Vec<_>>());
                (part, h.ok())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(part, h)| match h {
                Some(h) => h.join().expect("YAML parsing does not panic"),
                None => part.iter().map(parse).collect(),
            })
            .collect()
    })
}

/// Turns a serde-saphyr error into a diagnostic with a stable code and, for typos, a suggestion.
/// `shift` places the error of a piece parsed alone (see [`recover`]) in the file.
fn yaml_error(
    file: &Path,
    lines: &Lines<'_>,
    e: &serde_saphyr::Error,
    shift: Shift,
    limits: &Limits,
) -> Diagnostic {
    let pos = e
        .location()
        .map(|l| {
            shift.apply(Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            })
        })
        .unwrap_or_default();
    if let Some(d) = limit_error(file, pos, innermost(e), limits) {
        return d;
    }
    let full = e.without_snippet().to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
    let inner = innermost(e);
    use serde_saphyr::Error as E;
    let code = match inner {
        E::SerdeUnknownField { .. } => codes::UNKNOWN_FIELD,
        E::SerdeInvalidType { .. }
        | E::SerdeInvalidLength { .. }
        | E::SerdeMissingField { .. }
        | E::Unexpected { .. }
        | E::NullIntoString { .. }
        | E::InvalidBooleanStrict { .. } => codes::WRONG_TYPE,
        E::SerdeUnknownVariant { .. } | E::SerdeInvalidValue { .. } | E::Message { .. } => {
            codes::BAD_VALUE
        }
        E::DuplicateMappingKey { .. } => codes::DUPLICATE,
        _ => codes::SYNTAX,
    };
    // serde-saphyr's advice about its own options means nothing to someone writing config.
    let msg = match msg.find(", set DuplicateKeyPolicy") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let (code, msg) = match inner {
        E::InvalidScalar { ty, .. } => scalar_message(ty, scalar_at(lines, pos)),
        _ => (code, plain_message(msg)),
    };
    let mut d = Diagnostic::error(code, file, pos, msg.clone());
    if let Some(s) = suggestion(&msg) {
        d = d.with_help(format!("did you mean `{s}`?"));
    } else if msg.contains("invalid socket address syntax") {
        d = d.with_help(
            "write an IP address and port, e.g. 0.0.0.0:10000 or [::]:10000 (not a host name)",
        );
    }
    d
}

/// A breached parser budget, said in terms of the configuration: which limit, and how to raise
/// it when it can be raised.
fn limit_error(
    file: &Path,
    pos: Pos,
    e: &serde_saphyr::Error,
    limits: &Limits,
) -> Option<Diagnostic> {
    use serde_saphyr::budget::BudgetBreach as B;
    use serde_saphyr::Error as E;
    let name = file.display();
    let nodes = || {
        let d = Diagnostic::error(
            codes::LIMIT,
            file,
            pos,
            format!(
                "{name} holds more than {} YAML nodes (mappings, lists and scalars), the limit \
                 per configuration file",
                limits.max_yaml_nodes
            ),
        );
        Some(d.with_help(
            "split it into several files, or raise the limit with --max-yaml-nodes (env \
             TERN_MAX_YAML_NODES), given to tern and tern-validate alike",
        ))
    };
    let fixed = |what: String| {
        Some(Diagnostic::error(
            codes::LIMIT,
            file,
            pos,
            format!("{name}: {what}"),
        ))
    };
    match e {
        E::Budget { breach, .. } => match breach {
            B::Nodes { .. } | B::Events { .. } => nodes(),
            B::Depth { depth } => fixed(format!(
                "nesting {depth} levels deep is over the limit of {} levels",
                serde_saphyr::Budget::default().max_depth
            )),
            B::Aliases { .. } | B::Anchors { .. } | B::MergeKeys { .. } => fixed(format!(
                "too many anchors, aliases or merge keys ({breach:?}); a configuration needs \
                 far fewer"
            )),
            B::ScalarBytes { .. } => fixed(
                "more text in values than the file size limit allows (--max-file-size)".into(),
            ),
            B::Documents { .. } => fixed("too many YAML documents (`---`) in one file".into()),
            other => fixed(format!("YAML parser budget exceeded: {other:?}")),
        },
        E::AliasReplayLimitExceeded { .. } | E::AliasReplayStackDepthExceeded { .. } => fixed(
            "aliases expand to more than the YAML parser's limit (a \"billion laughs\" of \
             nested anchors?); write the values out or share less"
                .into(),
        ),
        _ => None,
    }
}

/// The plain scalar written at `pos` (up to a flow separator, comment or end of line).
fn scalar_at<'a>(lines: &Lines<'a>, pos: Pos) -> &'a str {
    let Some(line) = lines.get(pos.line) else {
        return "";
    };
    let rest = &line[lines.byte_of(pos.line, pos.column)..];
    let end = rest.find([',', '}', ']', '#']).unwrap_or(rest.len());
    rest[..end].trim()
}

/// A scalar that does not fit the field's type: a number out of range is a bad value (E004),
/// anything else is the wrong type (E003).
fn scalar_message(ty: &str, written: &str) -> (&'static str, String) {
    let expected = match ty {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number from 0",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" => "true or false",
        other => other,
    };
    let is_number = written
        .trim_start_matches(['-', '+'])
        .parse::<u128>()
        .is_ok();
    if is_number {
        (
            codes::BAD_VALUE,
            format!("{written} is out of range: expected {expected}"),
        )
    } else {
        (
            codes::WRONG_TYPE,
            format!("expected {expected}, found `{written}`"),
        )
    }
}

/// The error itself, without the wrappers that add a snippet or an alias location.
fn innermost(e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    let mut inner = e;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    inner
}

/// Rewords serde-saphyr messages that speak of parser events or Rust types in YAML terms.
fn plain_message(msg: String) -> String {
    let plain = match msg.as_str() {
        "expected sequence start" => "expected a list (`[a, b]` or one `- item` per line)",
        "expected mapping start" => "expected a mapping (`key: value` fields)",
        "expected string scalar" => "expected a string",
        m if m.starts_with("cannot deserialize null into string") => {
            "expected a string, found nothing (null)"
        }
        _ => return msg,
    };
    plain.to_string()
}

/// For "unknown field `x`, expected one of a, b" (or variant), the closest expected name.
fn suggestion(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    let got = &msg[start..end];
    let rest = &msg[end..];
    let list = rest
        .split_once("expected one of ")
        .map(|(_, l)| l)
        .or_else(|| rest.split_once("expected ").map(|(_, l)| l))?;
    list.split(',')
        .map(|s| s.trim().trim_matches('`'))
        .filter(|s| !s.is_empty() && similar_lengths(got, s))
        .map(|s| (strsim::jaro_winkler(got, s), s))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| s.to_string())
}

struct Checker<'a> {
    files: &'a [PathBuf],
    diags: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    fn err(&mut self, code: &'static str, file: usize, pos: Pos, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(code, &self.files[file], pos, msg));
    }

    fn bad(&mut self, file: usize, pos: Pos, msg: impl Into<String>) {
        self.err(codes::BAD_VALUE, file, pos, msg)
    }

    fn name(&mut self, what: &str, file: usize, name: &Spanned<String>) {
        if name.trim().is_empty() {
            self.bad(file, name.pos, format!("{what} name must not be empty"));
        }
    }

    /// Names must be unique across all files; the error names both places.
    fn unique<'n>(
        &mut self,
        what: &str,
        names: impl Iterator<Item = (usize, &'n Spanned<String>)>,
    ) {
        let mut seen: HashMap<&str, (usize, Pos)> = HashMap::new();
        for (file, name) in names {
            if let Some(&(f0, p0)) = seen.get(name.as_str()) {
                let d = Diagnostic::error(
                    codes::DUPLICATE,
                    &self.files[file],
                    name.pos,
                    format!("{what} `{}` is defined twice", name.value),
                )
                .with_related("first defined here", &self.files[f0], p0);
                self.diags.push(d);
            } else {
                seen.insert(name.as_str(), (file, name.pos));
            }
        }
    }

    fn listener(&mut self, l: &Def<Listener>) {
        let v = &l.value;
        self.name("listener", l.file, &v.name);
        match (&v.route_config, &v.tcp_proxy) {
            (Some(_), Some(_)) => self.bad(
                l.file,
                l.pos,
                format!(
                    "listener `{}` sets both route_config and tcp_proxy; choose one",
                    v.name.value
                ),
            ),
            (None, None) => self.bad(
                l.file,
                l.pos,
                format!(
                    "listener `{}` needs route_config (HTTP) or tcp_proxy (TCP)",
                    v.name.value
                ),
            ),
            _ => {}
        }
        if v.address.port() == 0 {
            self.bad(l.file, v.address.pos, "listener port must not be 0");
        }
        if let Some(rc) = &v.route_config {
            if rc.trim().is_empty() {
                self.bad(l.file, rc.pos, "route_config must not be empty");
            }
        }
        if let Some(t) = &v.tcp_proxy {
            let routes = t.sni_routes.iter().map(|r| &r.cluster);
            for c in t.cluster.iter().chain(routes) {
                if c.trim().is_empty() {
                    self.bad(l.file, c.pos, "tcp_proxy cluster must not be empty");
                }
            }
            if t.cluster.is_none() && t.sni_routes.is_empty() {
                self.bad(l.file, l.pos, "tcp_proxy needs a cluster or sni_routes");
            }
            for r in &t.sni_routes {
                if r.server_names.is_empty() {
                    self.bad(l.file, r.pos, "an SNI route needs server_names");
                }
                for n in &r.server_names {
                    if !super::check_tls::server_name_ok(n) {
                        self.bad(
                            l.file,
                            n.pos,
                            format!(
                                "server name {:?} is not a DNS name or a `*.` wildcard",
                                n.value
                            ),
                        );
                    }
                }
            }
        }
        for u in v.upgrade_configs.iter().flatten() {
            self.upgrade_config(l.file, u);
        }
        self.limits(l);
    }

    /// An upgrade type is a token (RFC 9110 §7.8), and never `h2c`: an h2c upgrade is served as
    /// a plain request, as in Envoy.
    fn upgrade_config(&mut self, f: usize, u: &Spanned<UpgradeConfig>) {
        let t = &u.upgrade_type;
        if t.eq_ignore_ascii_case("h2c") {
            self.bad(
                f,
                t.pos,
                "upgrade_type h2c cannot be enabled: h2c upgrades are always served as plain requests",
            );
        } else if !upgrade_type_ok(t) {
            self.bad(
                f,
                t.pos,
                format!("upgrade_type {:?} is not a protocol name", t.value),
            );
        }
    }

    /// Connection and header limits of a listener.
    fn limits(&mut self, l: &Def<Listener>) {
        use super::defaults::MAX_REQUEST_HEADERS_KB_LIMIT;
        let (f, v) = (l.file, &l.value);
        if let Some(m) = &v.max_connections {
            if m.value == 0 {
                self.bad(f, m.pos, "max_connections must be at least 1");
            }
        }
        if let Some(k) = &v.max_request_headers_kb {
            if !(1..=MAX_REQUEST_HEADERS_KB_LIMIT).contains(&k.value) {
                self.bad(
                    f,
                    k.pos,
                    format!("max_request_headers_kb must be 1..={MAX_REQUEST_HEADERS_KB_LIMIT}"),
                );
            }
        }
        if let Some(c) = &v.max_headers_count {
            if c.value == 0 {
                self.bad(f, c.pos, "max_headers_count must be at least 1");
            }
        }
        if let Some(b) = &v.per_connection_buffer_limit_bytes {
            if b.value < 1024 {
                self.bad(
                    f,
                    b.pos,
                    "per_connection_buffer_limit_bytes must be at least 1024",
                );
            }
        }
    }

    fn overload(&mut self, file: usize, o: &Overload) {
        if let Some(m) = &o.global_downstream_max_connections {
            if m.value == 0 {
                self.bad(
                    file,
                    m.pos,
                    "global_downstream_max_connections must be at least 1",
                );
            }
        }
        if let Some(m) = &o.max_heap_size_bytes {
            if m.value == 0 {
                self.bad(file, m.pos, "max_heap_size_bytes must be at least 1");
            }
        }
        if let Some(r) = &o.refresh_interval {
            if r.value.0.is_zero() {
                self.bad(file, r.pos, "refresh_interval must be more than 0");
            }
        }
    }

    fn route_config(&mut self, rc: &Def<RouteConfig>) {
        let f = rc.file;
        self.name("route config", f, &rc.value.name);
        self.unique(
            "virtual host",
            rc.value.virtual_hosts.iter().map(|v| (f, &v.name)),
        );
        for vh in &rc.value.virtual_hosts {
            self.name("virtual host", f, &vh.name);
            if vh.domains.is_empty() {
                self.bad(
                    f,
                    vh.pos,
                    format!("virtual host `{}` has no domains", vh.name.value),
                );
            }
            for d in &vh.domains {
                if let Err(e) = domain_pattern_ok(d) {
                    self.bad(f, d.pos, e);
                }
            }
            for r in &vh.routes {
                self.route(f, r);
            }
        }
    }

    fn route(&mut self, f: usize, r: &Spanned<Route>) {
        let m = &r.matcher;
        let kinds = m.prefix.is_some() as u8 + m.path.is_some() as u8 + m.regex.is_some() as u8;
        if kinds != 1 {
            self.bad(f, m.pos, "match needs exactly one of prefix, path or regex");
        }
        for p in [&m.prefix, &m.path].into_iter().flatten() {
            if !p.starts_with('/') {
                self.bad(f, p.pos, format!("path {:?} must start with /", p.value));
            }
        }
        for h in m.headers.iter().chain(&m.query_parameters) {
            let n = h.exact.is_some() as u8
                + h.prefix.is_some() as u8
                + h.regex.is_some() as u8
                + h.present.is_some() as u8;
            if n != 1 {
                self.bad(
                    f,
                    h.pos,
                    format!(
                        "matcher for `{}` needs exactly one of exact, prefix, regex or present",
                        h.name.value
                    ),
                );
            }
            if h.name.is_empty() {
                self.bad(f, h.name.pos, "matcher name must not be empty");
            }
        }
        for h in &m.headers {
            // `:method` is the one pseudo-header a route can match (Envoy's method routing).
            if h.name.eq_ignore_ascii_case(":method") {
                continue;
            }
            if h.name.starts_with(':') {
                self.bad(
                    f,
                    h.name.pos,
                    format!(
                        "{:?} cannot be matched: of the pseudo-headers only `:method` can (use `path`, `prefix` or `regex` for the path, `domains` for the authority)",
                        h.name.value
                    ),
                );
            } else if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() && !h.name.is_empty()
            {
                self.bad(
                    f,
                    h.name.pos,
                    format!("{:?} is not a valid header name", h.name.value),
                );
            }
        }
        let actions = r.route.is_some() as u8
            + r.direct_response.is_some() as u8
            + r.redirect.is_some() as u8;
        if actions != 1 {
            self.bad(
                f,
                r.pos,
                "route needs exactly one of route, direct_response or redirect",
            );
        }
        if let Some(a) = &r.route {
            if let Some(c) = a.cluster.as_ref().filter(|c| c.trim().is_empty()) {
                self.bad(f, c.pos, "route cluster must not be empty");
            }
            for u in &a.upgrade_configs {
                self.upgrade_config(f, u);
            }
            if let Some(h) = &a.host_rewrite {
                if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                    self.bad(
                        f,
                        h.pos,
                        format!("host_rewrite {:?} is not a valid Host", h.value),
                    );
                }
            }
        }
        if let Some(d) = &r.direct_response {
            if !(100..=599).contains(&d.status.value) {
                self.bad(
                    f,
                    d.status.pos,
                    format!("status {} is not an HTTP status (100-599)", d.status.value),
                );
            }
        }
        if let Some(rd) = &r.redirect {
            if rd.port_redirect == Some(0) {
                self.bad(f, rd.pos, "redirect port_redirect must be 1-65535, not 0");
            }
            if let Some(c) = &rd.response_code {
                if ![301, 302, 303, 307, 308].contains(&c.value) {
                    self.bad(
                        f,
                        c.pos,
                        format!(
                            "redirect response_code {} must be 301, 302, 303, 307 or 308",
                            c.value
                        ),
                    );
                }
            }
            if let Some(s) = &rd.scheme_redirect {
                if s.as_str() != "http" && s.as_str() != "https" {
                    self.bad(
                        f,
                        s.pos,
                        format!("scheme_redirect {:?} must be http or https", s.value),
                    );
                }
            }
            if let Some(p) = &rd.path_redirect {
                if !p.starts_with('/') {
                    self.bad(
                        f,
                        p.pos,
                        format!("path_redirect {:?} must start with /", p.value),
                    );
                }
            }
        }
    }

    fn cluster(&mut self, c: &Def<Cluster>) {
        let f = c.file;
        self.name("cluster", f, &c.value.name);
        if let Some(t) = &c.value.connect_timeout {
            if t.0.is_zero() {
                self.bad(f, t.pos, "connect_timeout must be greater than 0");
            }
        }
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for e in &c.value.endpoints {
            if let Err(msg) = endpoint_address_ok(&e.address) {
                self.bad(f, e.address.pos, msg);
            }
            if e.weight == 0 {
                self.bad(f, e.pos, "endpoint weight must be at least 1");
            }
            // Endpoint state (pools, health, counters) is keyed by address: one entry each.
            match seen.get(e.address.as_str()) {
                Some(&p0) => {
                    let d = Diagnostic::error(
                        codes::DUPLICATE,
                        &self.files[f],
                        e.address.pos,
                        format!(
                            "endpoint `{}` is listed twice in cluster `{}`; give it a weight instead",
                            e.address.value, c.value.name.value
                        ),
                    )
                    .with_related("first listed here", &self.files[f], p0);
                    self.diags.push(d);
                }
                None => {
                    seen.insert(e.address.as_str(), e.address.pos);
                }
            }
        }
    }

    /// Two listeners (or a listener and the admin endpoint) cannot share a port on overlapping IPs.
    fn addresses(&mut self, cfg: &Config, admin_at: Option<(usize, Pos)>) {
        let mut seen = AddressIndex::default();
        if let Some((file, _)) = admin_at {
            if cfg.admin.address.port() == 0 {
                self.bad(file, cfg.admin.address.pos, "admin port must not be 0");
            }
            seen.insert(
                *cfg.admin.address,
                (file, cfg.admin.address.pos, "the admin endpoint".into()),
            );
        }
        for l in &cfg.listeners {
            let addr = *l.value.address;
            if let Some((f0, p0, what)) = seen.first_overlapping(addr) {
                let d = Diagnostic::error(
                    codes::ADDRESS_CONFLICT,
                    &self.files[l.file],
                    l.value.address.pos,
                    format!(
                        "listener `{}` uses address {addr}, already used by {what}",
                        l.value.name.value
                    ),
                )
                .with_related("first used here", &self.files[*f0], *p0);
                self.diags.push(d);
            } else {
                seen.insert(
                    addr,
                    (
                        l.file,
                        l.value.address.pos,
                        format!("listener `{}`", l.value.name.value),
                    ),
                );
            }
        }
    }

    fn references(&mut self, cfg: &Config, maybe_defined: &HashSet<String>) {
        let clusters: HashMap<&str, ()> = cfg
            .clusters
            .iter()
            .map(|c| (c.value.name.as_str(), ()))
            .collect();
        let route_configs: HashMap<&str, ()> = cfg
            .route_configs
            .iter()
            .map(|c| (c.value.name.as_str(), ()))
            .collect();
        let mut missing = Vec::new();
        for l in &cfg.listeners {
            if let Some(rc) = &l.value.route_config {
                if !route_configs.contains_key(rc.as_str()) {
                    missing.push((l.file, rc, "route config", route_configs.keys()));
                }
            }
            if let Some(t) = &l.value.tcp_proxy {
                let routes = t.sni_routes.iter().map(|r| &r.cluster);
                for c in t.cluster.iter().chain(routes) {
                    if !clusters.contains_key(c.as_str()) {
                        missing.push((l.file, c, "cluster", clusters.keys()));
                    }
                }
            }
        }
        for rc in &cfg.route_configs {
            for vh in &rc.value.virtual_hosts {
                for r in &vh.routes {
                    if let Some(a) = &r.route {
                        let weighted = a
                            .weighted_clusters
                            .iter()
                            .flat_map(|w| w.clusters.iter().map(|c| &c.name));
                        for name in a.cluster.iter().chain(weighted) {
                            if !clusters.contains_key(name.as_str()) {
                                missing.push((rc.file, name, "cluster", clusters.keys()));
                            }
                        }
                    }
                }
            }
        }
        // Suggestions compare a name with every defined name; with thousands of dangling
        // references (a renamed cluster) that dominates, so each distinct name is looked up once,
        // and only the first few distinct names get a suggestion.
        const MAX_SUGGESTED: usize = 100;
        let mut suggested: HashMap<(&str, &str), Option<&str>> = HashMap::new();
        for (file, name, what, known) in missing {
            // An empty name is already reported as a bad value.
            if name.trim().is_empty() || maybe_defined.contains(name.as_str()) {
                continue;
            }
            let mut d = Diagnostic::error(
                codes::DANGLING_REFERENCE,
                &self.files[file],
                name.pos,
                format!("{what} `{}` is not defined in any file", name.value),
            );
            let key = (what, name.as_str());
            let best = match suggested.get(&key) {
                Some(b) => *b,
                None if suggested.len() < MAX_SUGGESTED => {
                    let b = known
                        .copied()
                        .chain(maybe_defined.iter().map(String::as_str))
                        .filter(|k| similar_lengths(k, name))
                        .map(|k| (strsim::jaro_winkler(k, name), k))
                        .filter(|(s, _)| *s > 0.8)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .map(|(_, k)| k);
                    suggested.insert(key, b);
                    b
                }
                None => None,
            };
            if let Some(k) = best {
                d = d.with_help(format!("did you mean `{k}`?"));
            }
            self.diags.push(d);
        }
    }
}

/// Names worth comparing for a "did you mean": Jaro-Winkler costs the product of the lengths,
/// and a long name is not mistyped, it is pasted.
fn similar_lengths(a: &str, b: &str) -> bool {
    const MAX_LEN: usize = 256;
    a.len() <= MAX_LEN && b.len() <= MAX_LEN
}

/// Every `name:` value in a file's text, found without parsing it (it may not be valid YAML).
fn names_in_text(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("name:") {
            let before = rest[..i].chars().next_back();
            let value = &rest[i + 5..];
            rest = value;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let end = value.find([',', '}', '#', ']']).unwrap_or(value.len());
            let v = value[..end].trim().trim_matches(['"', '\'']);
            if !v.is_empty() {
                names.insert(v.to_string());
            }
        }
    }
    names
}

/// `protocol-name ["/" protocol-version]`, both tokens (RFC 9110 §7.8).
fn upgrade_type_ok(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match t.split_once('/') {
        Some((name, version)) => token(name) && token(version),
        None => token(t),
    }
}

/// Sockets taken so far, none overlapping another, indexed so that finding the one a new
/// address overlaps is a few lookups (not a scan: thousands of listeners must stay cheap).
#[derive(Default)]
struct AddressIndex {
    /// By exact address.
    exact: HashMap<SocketAddr, (usize, Pos, String)>,
    /// The first socket on each (port, IPv4?): what an unspecified address overlaps.
    first_on_port: HashMap<(u16, bool), SocketAddr>,
}

impl AddressIndex {
    fn insert(&mut self, addr: SocketAddr, what: (usize, Pos, String)) {
        self.first_on_port
            .entry((addr.port(), addr.is_ipv4()))
            .or_insert(addr);
        self.exact.insert(addr, what);
    }

    /// The socket `addr` overlaps (see [`overlaps`]); as no two taken sockets overlap, at most
    /// one can.
    fn first_overlapping(&self, addr: SocketAddr) -> Option<&(usize, Pos, String)> {
        let same_family = (addr.port(), addr.is_ipv4());
        let found = if addr.ip().is_unspecified() {
            self.first_on_port.get(&same_family).copied()
        } else {
            let any = SocketAddr::new(
                if addr.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                },
                addr.port(),
            );
            [addr, any].into_iter().find(|a| self.exact.contains_key(a))
        };
        let found = found?;
        debug_assert!(overlaps(found, addr));
        self.exact.get(&found)
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
            || (b.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4()))
}

/// `host:port` where host is an IP or a DNS name and port is 1-65535.
pub fn endpoint_address_ok(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        format!(
            "endpoint address {addr:?} must be host:port (e.g. 10.0.0.5:8080 or api.internal:80)"
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0
        || host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad());
    }
    Ok(())
}

/// Exact, `*.suffix`, `prefix.*` or `*`.
fn domain_pattern_ok(d: &str) -> Result<(), String> {
    let inner = d
        .strip_prefix('*')
        .or_else(|| d.strip_suffix('*'))
        .unwrap_or(d);
    if d.is_empty() || inner.contains('*') {
        return Err(format!(
            "domain {d:?} is not valid: use example.com, *.example.com, example.* or *"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_closest_name() {
        assert_eq!(
            suggestion("unknown field `timout`, expected one of cluster, prefix_rewrite, timeout")
                .as_deref(),
            Some("timeout")
        );
        assert_eq!(
            suggestion("unknown field `zzz`, expected one of name, address"),
            None
        );
    }

    #[test]
    fn items_are_cut_out_with_their_positions() {
        let text = "clusters:\n  - name: a\n    endpoints: []\n\n    # c\n  - { name: b }\nlisteners: []\n";
        let lines = Lines::new(text);
        let (t, shift) = item_text(&lines, 2, 5);
        assert_eq!(t, "    name: a\n    endpoints: []\n\n    # c\n");
        assert_eq!(shift.apply(Pos { line: 2, column: 5 }).line, 3);
        let (t, shift) = item_text(&lines, 6, 5);
        assert_eq!(t, "{ name: b }\n");
        assert_eq!(
            shift.apply(Pos { line: 1, column: 3 }),
            Pos { line: 6, column: 7 }
        );
    }

    #[test]
    fn recovery_reports_each_bad_item_and_keeps_good_ones() {
        let text =
            "clusters:\n  - name: a\n    x: 1\n  - name: b\n  - name: c\n    connect_timeout: 5\n";
        let (frag, errors) = recover(text, 3, &Limits::default()).unwrap();
        assert_eq!(frag.clusters.len(), 1);
        assert_eq!(frag.clusters[0].name.as_str(), "b");
        assert_eq!(frag.clusters[0].pos, Pos { line: 4, column: 5 });
        let at: Vec<_> = errors
            .iter()
            .map(|(e, s)| {
                e.location().map(|l| {
                    let p = s.apply(Pos {
                        line: l.line() as u32,
                        column: l.column() as u32,
                    });
                    (p.line as u64, p.column as u64)
                })
            })
            .collect();
        assert_eq!(at, vec![Some((3, 5)), Some((6, 22))]);
        assert!(recover("clusters: [ { name: a\n", 1, &Limits::default()).is_none());
    }

    #[test]
    fn syntax_errors_in_several_items_are_all_found() {
        // Item 1 lacks a `]`; the parser notices at item 2's `-` (line 4). Item 3 has a stray `]`,
        // item 4 is fine.
        let text = "clusters:\n  - name: a\n    endpoints: [{ address: 127.0.0.1:1 }\n  - name: b\n  - name: c: d\n  - name: d\nadmin:\n  address: 127.0.0.1:9901\n";
        let first = serde_saphyr::from_str::<Fragment>(text).unwrap_err();
        let first_line = first.location().unwrap().line() as usize;
        assert_eq!(first_line, 4);
        let (frag, errors) = recover(text, first_line, &Limits::default()).unwrap();
        let names: Vec<&str> = frag.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(frag.clusters[1].pos, Pos { line: 6, column: 5 });
        assert!(frag.admin.is_some());
        let lines: Vec<_> = errors
            .iter()
            .map(|(e, s)| {
                s.apply(Pos {
                    line: e.location().unwrap().line() as u32,
                    column: 1,
                })
                .line as u64
            })
            .collect();
        assert_eq!(lines, [5]);
    }

    #[test]
    fn recovery_of_flow_lists_and_lists_at_the_key_indentation() {
        let flow = "clusters: [{ name: a, x: 1 }, { name: b }, { name: c, connect_timeout: 5 }]\n";
        let (frag, errors) = recover(flow, 1, &Limits::default()).unwrap();
        assert_eq!(frag.clusters.len(), 1);
        assert_eq!(errors.len(), 2);
        let flush = "clusters:\n- name: a\n  x: 1\n- name: b\nlisteners:\n- name: l\n  port: 1\n";
        let (frag, errors) = recover(flush, 3, &Limits::default()).unwrap();
        assert_eq!(frag.clusters[0].pos, Pos { line: 4, column: 3 });
        let at: Vec<_> = errors
            .iter()
            .map(|(e, s)| {
                e.location().map(|l| {
                    let p = s.apply(Pos {
                        line: l.line() as u32,
                        column: l.column() as u32,
                    });
                    (p.line as u64, p.column as u64)
                })
            })
            .collect();
        assert_eq!(at, vec![Some((3, 3)), Some((7, 3))]);
    }

    #[test]
    fn large_configurations_parse_in_parallel_in_file_order() {
        // Over PARALLEL_PARSE_BYTES in 64 files, one of them broken.
        let mut files = Vec::new();
        for i in 0..64 {
            let mut text = String::from("clusters:\n");
            for j in 0..60 {
                text.push_str(&format!(
                    "  - name: c{i}-{j}\n    connect_timeout: 1s\n    endpoints: [{{ address: 10.0.0.1:80 }}]\n"
                ));
            }
            if i == 40 {
                text.push_str("  - name: bad\n    connect_timeout: soon\n");
            }
            files.push(crate::SourceFile {
                path: format!("f{i:02}.yaml").into(),
                text,
            });
        }
        let mut sources = Sources {
            files,
            ..Default::default()
        };
        assert!(sources.files.iter().map(|f| f.text.len()).sum::<usize>() > PARALLEL_PARSE_BYTES);
        let parsed = parse_all(&sources);
        assert_eq!(parsed.len(), 64);
        assert!(parsed
            .iter()
            .enumerate()
            .all(|(i, r)| r.is_err() == (i == 40)));
        let first = parsed[1].as_ref().unwrap();
        assert_eq!(first.clusters[0].name.as_str(), "c1-0");
        let (cfg, diags, _) = check(&mut sources);
        assert!(cfg.is_none());
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].code, diags[0].line), ("E004", 183));
        assert!(diags[0].file.ends_with("f40.yaml"));
    }

    #[test]
    fn a_route_may_match_the_method_and_no_other_pseudo_header() {
        let errors = |name: &str| -> Vec<String> {
            let text = format!(
                "route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: /, headers: [{{ name: \"{name}\", exact: POST }}] }}\n            direct_response: {{ status: 200 }}\n"
            );
            let report = crate::check_sources(Sources {
                files: vec![crate::SourceFile {
                    path: "m.yaml".into(),
                    text,
                }],
                ..Default::default()
            });
            report
                .diagnostics
                .into_iter()
                .filter(|d| d.is_error())
                .map(|d| d.message)
                .collect()
        };
        assert_eq!(errors(":method"), Vec::<String>::new());
        assert_eq!(errors(":Method"), Vec::<String>::new());
        let path = errors(":path");
        assert!(
            path.len() == 1 && path[0].contains("only `:method`"),
            "{path:?}"
        );
    }

    /// Found by the `config_load` fuzz target: YAML breaks lines at a lone CR too, so the
    /// parser's line numbers ran past the end of the file as `\n` counts it, and quoted lines
    /// were the wrong ones.
    #[test]
    fn positions_in_files_with_carriage_return_line_breaks() {
        let text =
            "clusters:\r  - name: a\r    connect_timeout: soon\r  - name: b\r    weight: x\r";
        let report = crate::check_sources(Sources {
            files: vec![crate::SourceFile {
                path: "cr.yaml".into(),
                text: text.into(),
            }],
            ..Default::default()
        });
        let read = &report.sources.as_ref().unwrap().files[0].text;
        let lines = Lines::new(read);
        assert!(!report.diagnostics.is_empty());
        for d in &report.diagnostics {
            let line = lines
                .get(d.line)
                .unwrap_or_else(|| panic!("{d} is past the end"));
            assert!(
                line.contains("connect_timeout") || line.contains("weight"),
                "{d}: {line:?}"
            );
        }
    }

    #[test]
    fn names_found_in_broken_text() {
        let n = names_in_text("clusters:\n  - name: api\n    oops: [\n  - { name: \"web\", x: 1 }\nroute_config_name: no\n");
        assert!(n.contains("api") && n.contains("web"));
        assert!(!n.contains("no"));
    }

    #[test]
    fn upgrade_types_are_protocol_names() {
        for ok in ["websocket", "WebSocket", "foo/1.0", "CONNECT-UDP"] {
            assert!(upgrade_type_ok(ok), "{ok}");
        }
        for bad in ["", "web socket", "/1", "foo/", "a/b/c", "x\u{e9}"] {
            assert!(!upgrade_type_ok(bad), "{bad}");
        }
    }

    #[test]
    fn address_overlap() {
        let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:81".parse().unwrap();
        assert!(overlaps(a, b));
        assert!(!overlaps(b, c));
    }

    #[test]
    fn endpoint_addresses() {
        assert!(endpoint_address_ok("127.0.0.1:8080").is_ok());
        assert!(endpoint_address_ok("backend:80").is_ok());
        assert!(endpoint_address_ok("backend").is_err());
        assert!(endpoint_address_ok("backend:0").is_err());
        assert!(endpoint_address_ok("http://x:80").is_err());
    }
}
