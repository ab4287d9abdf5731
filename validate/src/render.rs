//! The output formats: human (rustc style), JSON, GitHub Actions annotations and GitLab Code
//! Quality; `tern-validate` and `tern-import` share them.

use std::collections::HashMap;
use std::io::{self, Write};
use std::ops::Range;
use std::path::Path;

use annotate_snippets::{AnnotationKind, Group, Level, Origin, Renderer, Snippet};
use serde::Serialize;
use tern_config::lines::Lines;
use tern_config::secrets::Secrets;
use tern_config::{Diagnostic, Severity};

use crate::{counts, Outcome};

/// Version of the JSON document; bumped only on incompatible changes.
pub const JSON_FORMAT_VERSION: u32 = 1;

/// Source texts of every file read, by path and indexed by line, with the secrets to hide
/// when quoting their lines in snippets.
fn texts(outcomes: &[Outcome]) -> HashMap<&Path, (Lines<'_>, &Secrets)> {
    let mut m = HashMap::new();
    for o in outcomes {
        if let Some(s) = &o.report.sources {
            for f in &s.files {
                m.insert(f.path.as_path(), (Lines::new(&f.text), &o.report.secrets));
            }
        }
    }
    m
}

/// Lines longer than this are quoted in part: the part around the caret.
const MAX_QUOTED_LINE: usize = 240;

/// `line` cut to at most about [`MAX_QUOTED_LINE`] bytes around byte `at`, and `at` in the cut.
/// Rendering a whole megabyte-long line (a flow list on one line) for each of its problems
/// would be quadratic, and unreadable.
fn around(line: &str, at: usize) -> (&str, usize) {
    if line.len() <= MAX_QUOTED_LINE {
        return (line, at);
    }
    let floor = |mut i: usize| {
        while !line.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let from = floor(at.saturating_sub(MAX_QUOTED_LINE / 4));
    let to = floor((from + MAX_QUOTED_LINE).min(line.len()));
    (&line[from..to], at - from)
}

/// Byte range of the token starting at byte `start` of `line`: a quoted string, or up to the
/// next separator. Diagnostics carry only a position, so the caret covers the word there.
pub fn token_span(line: &str, start: usize) -> Range<usize> {
    let start = start.min(line.len());
    let rest = &line[start..];
    let mut len = 0;
    let mut chars = rest.char_indices().peekable();
    if let Some(&(_, q @ ('"' | '\''))) = chars.peek() {
        chars.next();
        len = rest.len();
        for (i, c) in chars {
            if c == q {
                len = i + c.len_utf8();
                break;
            }
        }
    } else if let Some(&(_, open @ ('{' | '['))) = chars.peek() {
        // A flow collection: up to its closing bracket (or the end of the line).
        let close = if open == '{' { '}' } else { ']' };
        let mut depth = 0;
        len = rest.len();
        for (i, c) in chars {
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    len = i + 1;
                    break;
                }
            }
        }
    } else {
        while let Some((i, c)) = chars.next() {
            let key_end = c == ':' && chars.peek().is_none_or(|(_, n)| n.is_whitespace());
            if matches!(c, ',' | ']' | '}' | '#') || key_end {
                break;
            }
            len = i + c.len_utf8();
        }
        len = rest[..len].trim_end().len();
    }
    if len == 0 {
        // Point at one character (or just past the end of the line) rather than nothing.
        len = rest.chars().next().map_or(0, char::len_utf8);
    }
    start..start + len
}

/// The quoted line of a place, with its caret: a snippet and, when the line was cut, the
/// origin (`--> file:line:column`) that the cut snippet cannot compute itself.
fn snippet<'a>(
    texts: &HashMap<&Path, (Lines<'a>, &Secrets)>,
    file: &'a Path,
    line: u32,
    column: u32,
    kind: AnnotationKind,
    label: Option<&'a str>,
) -> Option<(
    Option<Origin<'a>>,
    Snippet<'a, annotate_snippets::Annotation<'a>>,
)> {
    let (lines, secrets) = texts.get(file)?;
    let (full, at) = secrets.redact_line(file, line, lines.get(line)?, lines.byte_of(line, column));
    let (text, at) = around(&full, at);
    let span = token_span(text, at);
    let cut = text.len() != full.len();
    let text = text.to_string();
    let snippet = Snippet::source(text)
        .line_start(line as usize)
        .annotation(kind.span(span).label(label));
    if !cut {
        Some((None, snippet.path(file.to_string_lossy())))
    } else {
        let origin = Origin::path(file.to_string_lossy())
            .line(line as usize)
            .char_column(column as usize);
        Some((Some(origin), snippet))
    }
}

/// Writes diagnostics like rustc does: header, location, quoted line with a caret, notes, help.
pub fn human(
    out: &mut dyn Write,
    outcomes: &[Outcome],
    color: bool,
    valid: bool,
) -> io::Result<()> {
    let texts = texts(outcomes);
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    for o in outcomes {
        for d in &o.report.diagnostics {
            let level = match d.severity {
                Severity::Error => Level::ERROR,
                Severity::Warning => Level::WARNING,
            };
            let mut group = Group::with_title(level.primary_title(d.message.as_str()).id(d.code));
            match snippet(
                &texts,
                &d.file,
                d.line,
                d.column,
                AnnotationKind::Primary,
                None,
            ) {
                Some((origin, s)) => {
                    if let Some(o) = origin {
                        group = group.element(o);
                    }
                    group = group.element(s)
                }
                None => {
                    let mut origin = Origin::path(d.file.to_string_lossy());
                    if d.line > 0 {
                        origin = origin.line(d.line as usize).char_column(d.column as usize);
                    }
                    group = group.element(origin);
                }
            }
            for r in &d.related {
                match snippet(
                    &texts,
                    &r.file,
                    r.line,
                    r.column,
                    AnnotationKind::Context,
                    Some(r.message.as_str()),
                ) {
                    Some((origin, s)) => {
                        if let Some(o) = origin {
                            group = group.element(o);
                        }
                        group = group.element(s)
                    }
                    None => {
                        group = group.element(Level::NOTE.message(format!(
                            "{} at {}:{}:{}",
                            r.message,
                            r.file.display(),
                            r.line,
                            r.column
                        )))
                    }
                }
            }
            if let Some(h) = &d.help {
                group = group.element(Level::HELP.message(h.as_str()));
            }
            writeln!(out, "{}\n", renderer.render(&[group]))?;
        }
    }
    let (errors, warnings) = counts(outcomes);
    for o in outcomes {
        if o.report.error_count() == 0 {
            if let Some(s) = &o.report.sources {
                writeln!(
                    out,
                    "ok: {} ({} file{}, version {})",
                    o.path.display(),
                    s.files.len(),
                    if s.files.len() == 1 { "" } else { "s" },
                    o.report.version.as_deref().unwrap_or("-")
                )?;
            }
        }
    }
    if errors + warnings > 0 {
        writeln!(
            out,
            "{}: {} error{}, {} warning{}",
            if valid { "valid" } else { "invalid" },
            errors,
            if errors == 1 { "" } else { "s" },
            warnings,
            if warnings == 1 { "" } else { "s" },
        )?;
    }
    Ok(())
}

/// One PATH in the JSON document.
#[derive(Serialize)]
struct JsonPath<'a> {
    path: &'a Path,
    valid: bool,
    version: Option<&'a str>,
    files: Vec<&'a Path>,
}

/// The JSON document (documented in docs/validate.md).
#[derive(Serialize)]
struct JsonDoc<'a> {
    format_version: u32,
    valid: bool,
    strict: bool,
    errors: usize,
    warnings: usize,
    paths: Vec<JsonPath<'a>>,
    diagnostics: Vec<&'a Diagnostic>,
}

/// Writes one JSON document with every diagnostic.
pub fn json(
    out: &mut dyn Write,
    outcomes: &[Outcome],
    strict: bool,
    valid: bool,
) -> io::Result<()> {
    let (errors, warnings) = counts(outcomes);
    let doc = JsonDoc {
        format_version: JSON_FORMAT_VERSION,
        valid,
        strict,
        errors,
        warnings,
        paths: outcomes
            .iter()
            .map(|o| JsonPath {
                path: &o.path,
                // No errors: the loader's report then has a config; tern-import's report on Envoy
                // input has none to give.
                valid: o.report.error_count() == 0 && (!strict || o.report.diagnostics.is_empty()),
                version: o.report.version.as_deref(),
                files: o
                    .report
                    .sources
                    .iter()
                    .flat_map(|s| s.files.iter().map(|f| f.path.as_path()))
                    .collect(),
            })
            .collect(),
        diagnostics: outcomes
            .iter()
            .flat_map(|o| &o.report.diagnostics)
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(io::Error::other)?;
    writeln!(out)
}

/// Escapes the message part of a workflow command.
fn gh_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value of a workflow command.
fn gh_prop(s: &str) -> String {
    gh_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// Writes GitHub Actions workflow commands; with `--strict` warnings become `::error`. `tool`
/// (`tern-validate`, `tern-import`) titles the annotations.
pub fn github(
    out: &mut dyn Write,
    outcomes: &[Outcome],
    strict: bool,
    tool: &str,
) -> io::Result<()> {
    for d in outcomes.iter().flat_map(|o| &o.report.diagnostics) {
        let cmd = match d.severity {
            Severity::Error => "error",
            Severity::Warning if strict => "error",
            Severity::Warning => "warning",
        };
        let mut props = format!("file={}", gh_prop(&d.file.to_string_lossy()));
        if d.line > 0 {
            props.push_str(&format!(",line={}", d.line));
            if d.column > 0 {
                props.push_str(&format!(",col={}", d.column));
            }
        }
        props.push_str(&format!(
            ",title={}",
            gh_prop(&format!("{tool} {}", d.code))
        ));
        let mut msg = d.message.clone();
        for r in &d.related {
            msg.push_str(&format!(
                "\n{}: {}:{}:{}",
                r.message,
                r.file.display(),
                r.line,
                r.column
            ));
        }
        if let Some(h) = &d.help {
            msg.push_str(&format!("\nhelp: {h}"));
        }
        writeln!(out, "::{cmd} {props}::{}", gh_data(&msg))?;
    }
    let (errors, warnings) = counts(outcomes);
    writeln!(out, "{tool}: {errors} errors, {warnings} warnings")
}

/// One issue of a GitLab Code Quality report.
#[derive(Serialize)]
struct CodeQualityIssue {
    description: String,
    check_name: &'static str,
    fingerprint: String,
    severity: &'static str,
    location: CodeQualityLocation,
}

#[derive(Serialize)]
struct CodeQualityLocation {
    path: String,
    lines: CodeQualityLines,
}

#[derive(Serialize)]
struct CodeQualityLines {
    begin: u32,
}

/// FNV-1a: a fingerprint that stays the same across runs and builds, so GitLab can tell which
/// issues a merge request adds or fixes.
fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// Writes a GitLab Code Quality report: a JSON array of issues (`artifacts:reports:codequality`).
pub fn gitlab(out: &mut dyn Write, outcomes: &[Outcome], strict: bool) -> io::Result<()> {
    let issues: Vec<CodeQualityIssue> = outcomes
        .iter()
        .flat_map(|o| &o.report.diagnostics)
        .map(|d| {
            let path = d.file.to_string_lossy().into_owned();
            let mut description = format!("{}: {}", d.code, d.message);
            if let Some(h) = &d.help {
                description.push_str(&format!(" (help: {h})"));
            }
            CodeQualityIssue {
                fingerprint: fingerprint(&[d.code, &path, &d.message, &d.line.to_string()]),
                check_name: d.code,
                severity: match d.severity {
                    Severity::Error => "major",
                    Severity::Warning if strict => "major",
                    Severity::Warning => "minor",
                },
                location: CodeQualityLocation {
                    path,
                    lines: CodeQualityLines {
                        begin: d.line.max(1),
                    },
                },
                description,
            }
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &issues).map_err(io::Error::other)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_spans() {
        let l = "    conect_timeout: 1s";
        assert_eq!(&l[token_span(l, 4)], "conect_timeout");
        let l = "  - { name: a, address: 0.0.0.0:8080, tcp_proxy: { cluster: c } }";
        assert_eq!(&l[token_span(l, 24)], "0.0.0.0:8080");
        let l = "    route: { cluster: \"a b\" }";
        assert_eq!(&l[token_span(l, 22)], "\"a b\"");
        assert_eq!(token_span("ab", 8), 2..2);
        let l = "  - match: { prefix: /, headers: [{ name: a }] } # x";
        assert_eq!(
            &l[token_span(l, 11)],
            "{ prefix: /, headers: [{ name: a }] }"
        );
    }

    #[test]
    fn long_lines_are_quoted_around_the_caret() {
        let l = format!("{}é{}", "a".repeat(1000), "b".repeat(1000));
        let (cut, at) = around(&l, 1500);
        assert!(cut.len() <= MAX_QUOTED_LINE, "{}", cut.len());
        assert_eq!(&cut[at..at + 1], "b");
        assert_eq!(around("short", 2), ("short", 2));
        // Never cut inside a character.
        for at in 990..1010 {
            let (cut, _) = around(&l, at);
            assert!(cut.len() <= MAX_QUOTED_LINE);
        }
    }

    #[test]
    fn fingerprints_are_stable() {
        assert_eq!(
            fingerprint(&["E006", "a.yaml"]),
            fingerprint(&["E006", "a.yaml"])
        );
        assert_ne!(
            fingerprint(&["E006", "a.yaml"]),
            fingerprint(&["E006a", ".yaml"])
        );
        assert_eq!(fingerprint(&[]), "cbf29ce484222325");
    }

    #[test]
    fn github_escaping() {
        assert_eq!(gh_prop("a:b,c%"), "a%3Ab%2Cc%25");
        assert_eq!(gh_data("x\ny: z"), "x%0Ay: z");
    }
}
