//! Runs the real `tern-validate` binary on the fixtures and parses its output back.
//!
//! Each directory under `tests/fixtures/` is one configuration; its `expect.json` lists the exit
//! status and every diagnostic (code, severity, file relative to the fixture, line, column, help,
//! related places). The loader ignores `expect.json` because it only reads `*.yaml`/`*.yml`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use tern_testkit::tern_check_code;

const BIN: &str = env!("CARGO_BIN_EXE_tern-validate");

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures")
}

fn fixtures() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Runs the binary with `args` in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("tern-validate runs")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A diagnostic reduced to what `expect.json` states, with paths relative to the fixture.
fn reduce(d: &Value, fixture: &str) -> Value {
    let rel = |p: &Value| {
        let p = p.as_str().unwrap();
        let r = p.strip_prefix(fixture).expect("file is inside the fixture");
        Value::from(r.trim_start_matches('/'))
    };
    let mut o = json!({
        "severity": d["severity"],
        "code": d["code"],
        "file": rel(&d["file"]),
        "line": d["line"],
        "column": d["column"],
    });
    if let Some(h) = d["help"].as_str() {
        o["help"] = h.into();
    }
    let related: Vec<Value> = d["related"]
        .as_array()
        .expect("related is always an array")
        .iter()
        .map(|r| json!({"file": rel(&r["file"]), "line": r["line"], "column": r["column"]}))
        .collect();
    if !related.is_empty() {
        o["related"] = related.into();
    }
    o
}

#[test]
fn every_fixture_reports_exactly_its_expected_diagnostics() {
    let list = fixtures();
    assert!(list.len() >= 30, "fixtures missing: {list:?}");
    for name in list {
        let expect: Value = serde_json::from_str(
            &fs::read_to_string(fixtures_dir().join(&name).join("expect.json")).unwrap(),
        )
        .unwrap();
        let mut args = fixture_args(&name);
        args.extend(["--format".into(), "json".into(), name.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_in(&fixtures_dir(), &args);
        let doc = json_of(&out);
        let got: Vec<Value> = doc["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| reduce(d, &name))
            .collect();
        assert_eq!(
            Value::from(got),
            expect["diagnostics"],
            "fixture {name}: diagnostics differ"
        );
        assert_eq!(
            out.status.code().unwrap() as i64,
            expect["exit"].as_i64().unwrap(),
            "fixture {name}: exit status"
        );
        // Every diagnostic object has the documented fields, always present.
        for d in doc["diagnostics"].as_array().unwrap() {
            let keys: BTreeSet<&str> = d.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            let want: BTreeSet<&str> = [
                "severity", "code", "message", "file", "line", "column", "help", "related",
            ]
            .into();
            assert_eq!(keys, want, "fixture {name}");
            assert!(!d["message"].as_str().unwrap().is_empty());
        }
        // The name says which code the fixture is about; that code must be among the results.
        let code = name.split('-').next().unwrap();
        if code != "valid" && code != "multi" {
            assert!(
                doc["diagnostics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["code"] == code),
                "fixture {name} does not report {code}"
            );
        }
    }
}

/// Options a fixture is checked with (`args` in its expect.json): a limit lowered so that a
/// small file shows what a huge one would.
fn fixture_args(name: &str) -> Vec<String> {
    let expect: Value = serde_json::from_str(
        &fs::read_to_string(fixtures_dir().join(name).join("expect.json")).unwrap(),
    )
    .unwrap();
    expect["args"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The limits the programs take from `args`.
fn limits_of(args: &[String]) -> tern_config::Limits {
    let mut limits = tern_config::Limits::default();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--max-yaml-nodes" => limits.max_yaml_nodes = w[1].parse().unwrap(),
            "--max-file-size" => {
                limits.max_file_bytes = tern_config::source::parse_size(&w[1]).unwrap()
            }
            "--cert-expiry-warn" => {
                limits.cert_expiry_warn = tern_config::Dur::parse(&w[1]).unwrap().0
            }
            _ => {}
        }
    }
    // The validator's loader: an environment variable that is not set is not checked.
    limits.offline = true;
    limits
}

/// The options of `args` that `tern` takes too (the limits; not the validator's own).
fn tern_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for w in args.chunks(2) {
        if w[0] != "--cert-expiry-warn" {
            out.extend(w.iter().cloned());
        }
    }
    out
}

/// The codes declared in the shared diagnostics module.
fn declared_codes() -> Vec<String> {
    let src = fs::read_to_string(manifest_dir().join("../config/src/diag.rs")).unwrap();
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_code_has_a_fixture_and_a_documented_section() {
    let codes = declared_codes();
    assert!(codes.len() >= 11, "{codes:?}");
    let names = fixtures();
    let docs = fs::read_to_string(manifest_dir().join("../docs/validate.md")).unwrap();
    for c in &codes {
        assert!(
            names.iter().any(|n| n.starts_with(&format!("{c}-"))),
            "no fixture for {c}"
        );
        assert!(
            docs.contains(&format!("\n### {c} ")),
            "docs/validate.md has no section for {c}"
        );
    }
}

#[test]
fn validator_loader_and_tern_check_agree_on_fixtures_and_examples() {
    let mut dirs: Vec<(PathBuf, Vec<String>)> = fixtures()
        .iter()
        .map(|n| (fixtures_dir().join(n), fixture_args(n)))
        .collect();
    for e in fs::read_dir(manifest_dir().join("../config-examples")).unwrap() {
        dirs.push((e.unwrap().path(), Vec::new()));
    }
    for (d, extra) in dirs {
        let loads = tern_config::load_with(&d, limits_of(&extra))
            .config
            .is_some();
        let mut args = extra.clone();
        args.extend(["--format".into(), "json".into(), d.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_in(&manifest_dir(), &args);
        assert_eq!(
            out.status.code() == Some(0),
            loads,
            "{}: validator and loader disagree",
            d.display()
        );
        // The proxy needs the secrets the validator may go without (W015: not checked), and
        // serves an expired certificate the validator refuses (E012; see docs/config.md).
        if d.ends_with("W015-key-not-checked") || d.ends_with("E012-expired-certificate") {
            continue;
        }
        let extra = tern_args(&extra);
        let tern = if extra.is_empty() {
            tern_check_code(&d)
        } else {
            let out = std::process::Command::new(tern_testkit::tern_bin())
                .args(&extra)
                .arg("--check")
                .arg("--config")
                .arg(&d)
                .output()
                .unwrap();
            out.status.code().unwrap()
        };
        assert_eq!(
            tern == 0,
            loads,
            "{}: `tern --check` and the loader disagree",
            d.display()
        );
    }
}

/// Parses `::error file=F,line=L,col=C,title=T::MESSAGE` back into its parts.
fn parse_github(line: &str) -> (String, Vec<(String, String)>, String) {
    let unescape = |s: &str| {
        s.replace("%0A", "\n")
            .replace("%0D", "\r")
            .replace("%3A", ":")
            .replace("%2C", ",")
            .replace("%25", "%")
    };
    let rest = line.strip_prefix("::").expect("workflow command");
    let (cmd, rest) = rest.split_once(' ').unwrap();
    let (props, msg) = rest.split_once("::").unwrap();
    let props = props
        .split(',')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), unescape(v))
        })
        .collect();
    (cmd.to_string(), props, unescape(msg))
}

#[test]
fn github_annotations_carry_the_same_diagnostics_as_json() {
    let dir = fixtures_dir();
    for name in [
        "multi-errors-across-files",
        "E005-duplicate-cluster",
        "W003-domain-collision",
    ] {
        let json_doc = json_of(&run_in(&dir, &["--format", "json", name]));
        let out = run_in(&dir, &["--format", "github", name]);
        let text = String::from_utf8(out.stdout).unwrap();
        let annotations: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("::"))
            .map(parse_github)
            .collect();
        let diags = json_doc["diagnostics"].as_array().unwrap();
        assert_eq!(annotations.len(), diags.len(), "{text}");
        for ((cmd, props, msg), d) in annotations.iter().zip(diags) {
            assert_eq!(cmd, d["severity"].as_str().unwrap());
            let get = |k: &str| props.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
            assert_eq!(get("file"), d["file"].as_str());
            assert_eq!(get("line"), Some(d["line"].to_string().as_str()));
            assert_eq!(get("col"), Some(d["column"].to_string().as_str()));
            assert_eq!(
                get("title"),
                Some(format!("tern-validate {}", d["code"].as_str().unwrap()).as_str())
            );
            assert!(msg.starts_with(d["message"].as_str().unwrap()), "{msg}");
            if let Some(h) = d["help"].as_str() {
                assert!(msg.contains(&format!("help: {h}")), "{msg}");
            }
        }
        assert!(text.lines().last().unwrap().starts_with("tern-validate: "));
    }
    // With --strict a warning is an error annotation, so the check fails on the pull request.
    let out = run_in(&dir, &["--format", "github", "--strict", "W001-empty-file"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(
            "::error file=W001-empty-file/notes.yaml,line=1,col=1,title=tern-validate W001::"
        ),
        "{text}"
    );
}

#[test]
fn human_output_shows_location_snippet_caret_related_and_help() {
    let out = run_in(
        &fixtures_dir(),
        &["multi-errors-across-files", "E005-duplicate-cluster"],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let expected_dangling = "\
error[E006]: cluster `apii` is not defined in any file
 --> multi-errors-across-files/routes.yaml:8:31
  |
8 |             route: { cluster: apii }
  |                               ^^^^
  |
  = help: did you mean `api`?
";
    assert!(text.contains(expected_dangling), "{text}");
    let expected_duplicate = "\
error[E005]: cluster `api` is defined twice
 --> E005-duplicate-cluster/b/more.yml:3:11
  |
3 |   - name: api
  |           ^^^
  |
 ::: E005-duplicate-cluster/a.yaml:2:11
  |
2 |   - name: api
  |           --- first defined here
";
    assert!(text.contains(expected_duplicate), "{text}");
    assert!(
        text.contains("error[E002]: unknown field `timeout`"),
        "{text}"
    );
    assert!(
        text.contains("warning[W002]: route can never match"),
        "{text}"
    );
    assert!(text.ends_with("invalid: 6 errors, 1 warning\n"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colors when NO_COLOR is set");
}

#[test]
fn exit_status_two_for_missing_path_and_usage_errors() {
    let dir = fixtures_dir();
    let out = run_in(&dir, &["--format", "json", "valid-split", "does-not-exist"]);
    assert_eq!(out.status.code(), Some(2));
    let doc = json_of(&out);
    assert_eq!(doc["diagnostics"][0]["code"], "E008");
    assert_eq!(doc["diagnostics"][0]["file"], "does-not-exist");
    assert_eq!(doc["paths"][0]["valid"], true);
    assert_eq!(doc["paths"][1]["valid"], false);

    assert_eq!(run_in(&dir, &[]).status.code(), Some(2), "PATH is required");
    assert_eq!(run_in(&dir, &["--bogus", "x"]).status.code(), Some(2));
    assert_eq!(
        run_in(&dir, &["--format", "xml", "valid-split"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run_in(&dir, &["--help"]).status.code(), Some(0));
}

#[test]
fn strict_fails_on_warnings_and_several_paths_are_checked_in_one_run() {
    let dir = fixtures_dir();
    assert_eq!(
        run_in(&dir, &["W002-duplicate-match"]).status.code(),
        Some(0)
    );
    let out = run_in(
        &dir,
        &["--strict", "--format", "json", "W002-duplicate-match"],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc = json_of(&out);
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["strict"], true);
    assert_eq!(doc["warnings"], 1);

    let out = run_in(
        &dir,
        &[
            "--format",
            "json",
            "valid-split",
            "E004-regex",
            "--skip-files",
            "E006-dangling-cluster",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc = json_of(&out);
    assert_eq!(doc["errors"], 2);
    let codes: Vec<&str> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["E004", "E006"]);
    let paths: Vec<(&str, bool)> = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["valid"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            ("valid-split", true),
            ("E004-regex", false),
            ("E006-dangling-cluster", false)
        ]
    );
    assert_eq!(doc["paths"][0]["files"].as_array().unwrap().len(), 6);
    assert_eq!(doc["format_version"], 1);
}

/// The merged configuration as JSON, for comparing two loads.
fn merged(dir: &Path) -> Value {
    let r = tern_config::load(dir);
    serde_json::to_value(r.config.expect("loads")).unwrap()
}

#[test]
fn print_effective_output_loads_back_to_the_same_configuration() {
    let out = run_in(&fixtures_dir(), &["--print-effective", "valid-split"]);
    assert_eq!(out.status.code(), Some(0));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("route_configs:"), "{yaml}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ok: valid-split"));
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("effective.yaml"), &yaml).unwrap();
    assert_eq!(
        merged(tmp.path()),
        merged(&fixtures_dir().join("valid-split"))
    );

    // An invalid configuration prints no YAML, only diagnostics on stderr.
    let out = run_in(&fixtures_dir(), &["--print-effective", "E004-regex"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[E004]"));
}

/// YAML text to a JSON value, through serde-saphyr as the loader reads it.
fn yaml_to_json(text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text).unwrap()
}

#[test]
fn schema_accepts_every_example_and_valid_fixture_and_rejects_typos() {
    let out = run_in(&manifest_dir(), &["--schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = json_of(&out);
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");

    let mut files = Vec::new();
    let mut roots: Vec<PathBuf> = fixtures()
        .iter()
        .filter(|n| n.starts_with("valid-"))
        .map(|n| fixtures_dir().join(n))
        .collect();
    for e in fs::read_dir(manifest_dir().join("../config-examples")).unwrap() {
        roots.push(e.unwrap().path());
    }
    while let Some(d) = roots.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                roots.push(p);
            } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 10, "{files:?}");
    for f in &files {
        let v = yaml_to_json(&fs::read_to_string(f).unwrap());
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
    for bad in [
        "E002-unknown-field/clusters.yaml",
        "E003-wrong-type/clusters.yaml",
    ] {
        let v = yaml_to_json(&fs::read_to_string(fixtures_dir().join(bad)).unwrap());
        assert!(!validator.is_valid(&v), "schema accepts {bad}");
    }
}

/// `text` with every "(in 123 days)" as "(in N days)".
fn without_day_counts(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("(in ") {
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(" days)") {
            out.push('N');
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn docs_examples_match_the_binary() {
    let docs = fs::read_to_string(manifest_dir().join("../docs/validate.md")).unwrap();
    let mut checked = 0;
    let mut rest = docs.as_str();
    while let Some(i) = rest.find("```console\n$ tern-validate ") {
        let block = &rest[i + "```console\n$ tern-validate ".len()..];
        let end = block.find("```\n").expect("closed block");
        let (cmd, expected) = block[..end].split_once('\n').unwrap();
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let out = run_in(&fixtures_dir(), &args);
        // A certificate's remaining days change every day: compared without the count.
        assert_eq!(
            without_day_counts(&String::from_utf8_lossy(&out.stdout)),
            without_day_counts(expected),
            "docs/validate.md example `tern-validate {cmd}` is out of date: run validate/docs-gen/generate.py"
        );
        checked += 1;
        rest = &block[end..];
    }
    assert!(checked >= 15, "only {checked} examples found");
}

#[test]
fn color_only_when_asked_or_on_a_terminal() {
    let dir = fixtures_dir();
    let colored = run_in(&dir, &["--color", "always", "E004-regex"]);
    assert!(String::from_utf8_lossy(&colored.stdout).contains("\u{1b}["));
    // `auto` with stdout captured (not a terminal) stays plain even without NO_COLOR.
    let out = Command::new(BIN)
        .arg("E004-regex")
        .current_dir(&dir)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\u{1b}'));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn print_effective_with_several_paths_prints_one_document_each() {
    let out = run_in(
        &manifest_dir().join(".."),
        &[
            "--print-effective",
            "config-examples/quickstart",
            "validate/tests/fixtures/valid-split",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs = serde_saphyr::from_multiple::<Value>(&yaml).expect("a YAML stream");
    assert_eq!(docs.len(), 2, "{yaml}");
    assert_eq!(docs[0]["clusters"][0]["name"], "api");
    assert_eq!(docs[1]["listeners"].as_array().unwrap().len(), 2);
    assert!(yaml.starts_with("# config-examples/quickstart\n"), "{yaml}");

    // An invalid PATH among them prints no document and no stray separator.
    let out = run_in(
        &manifest_dir().join(".."),
        &[
            "--print-effective",
            "validate/tests/fixtures/E004-regex",
            "config-examples/quickstart",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.starts_with("# config-examples/quickstart\nadmin:"),
        "{yaml}"
    );
}

#[test]
fn json_output_of_every_fixture_matches_the_documented_schema() {
    let docs = fs::read_to_string(manifest_dir().join("../docs/validate.md")).unwrap();
    let start = docs
        .find("<!-- output-schema -->\n```json\n")
        .expect("schema in docs")
        + "<!-- output-schema -->\n```json\n".len();
    let end = start + docs[start..].find("```").unwrap();
    let schema: Value = serde_json::from_str(&docs[start..end]).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let mut names = fixtures();
    names.push("does-not-exist".into());
    for name in names {
        let doc = json_of(&run_in(&fixtures_dir(), &["--format", "json", &name]));
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
    // The schema is strict enough to notice a missing field.
    let mut doc = json_of(&run_in(
        &fixtures_dir(),
        &["--format", "json", "E004-regex"],
    ));
    doc["diagnostics"][0]
        .as_object_mut()
        .unwrap()
        .remove("help");
    assert!(!validator.is_valid(&doc));
}

#[test]
fn gitlab_code_quality_report_lists_every_diagnostic() {
    let dir = fixtures_dir();
    let name = "multi-errors-across-files";
    let json_doc = json_of(&run_in(&dir, &["--format", "json", name]));
    let out = run_in(&dir, &["--format", "gitlab", name]);
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out);
    let issues = report.as_array().unwrap();
    let diags = json_doc["diagnostics"].as_array().unwrap();
    assert_eq!(issues.len(), diags.len());
    let mut fingerprints = BTreeSet::new();
    for (i, d) in issues.iter().zip(diags) {
        assert_eq!(i["check_name"], d["code"]);
        assert_eq!(i["location"]["path"], d["file"]);
        assert_eq!(i["location"]["lines"]["begin"], d["line"]);
        let sev = if d["severity"] == "error" {
            "major"
        } else {
            "minor"
        };
        assert_eq!(i["severity"], sev);
        assert!(i["description"]
            .as_str()
            .unwrap()
            .contains(d["message"].as_str().unwrap()));
        assert!(fingerprints.insert(i["fingerprint"].as_str().unwrap().to_string()));
    }
    // Same input, same fingerprints: GitLab compares them between branches.
    assert_eq!(
        json_of(&run_in(&dir, &["--format", "gitlab", name])),
        report
    );
    // A valid configuration is an empty report.
    let out = run_in(&dir, &["--format", "gitlab", "valid-split"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_of(&out), json!([]));
}
