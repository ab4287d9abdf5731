//! The CI templates and the pre-commit hook definition parse, and use only options that exist.

use std::fs;
use std::process::Command;

use serde_json::Value;
use tern_testkit::workspace_root;

const BIN: &str = env!("CARGO_BIN_EXE_tern-validate");

fn yaml(path: &str) -> (String, Value) {
    let text = fs::read_to_string(workspace_root().join(path)).unwrap();
    let v = serde_saphyr::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    (text, v)
}

/// Every `tern-validate ...` command line in `text`.
fn validate_commands(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.find("tern-validate --").map(|i| l[i..].to_string()))
        .collect()
}

fn assert_options_exist(cmds: &[String]) {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for c in cmds {
        for opt in c.split_whitespace().filter(|w| w.starts_with("--")) {
            let known = help
                .lines()
                .any(|l| l.split_whitespace().any(|w| w.trim_end_matches(',') == opt));
            assert!(known, "`{c}` uses unknown option {opt}");
        }
    }
}

#[test]
fn github_workflow_validates_pull_requests_and_publishes_main() {
    let (text, v) = yaml("ci/github-actions.yml");
    assert!(v["on"].get("pull_request").is_some());
    let validate = &v["jobs"]["validate"];
    let runs: Vec<&str> = validate["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    assert!(runs
        .iter()
        .any(|r| r.contains("tern-validate --format github")));
    let publish = &v["jobs"]["publish"];
    assert_eq!(publish["needs"], "validate");
    assert!(publish["if"].as_str().unwrap().contains("refs/heads/main"));
    assert!(text.contains("tern-sync publish --bucket"));
    assert!(text.contains("--prefix"));
    let cmds = validate_commands(&text);
    assert!(cmds.len() >= 2);
    assert_options_exist(&cmds);
}

#[test]
fn gitlab_pipeline_validates_merge_requests_and_publishes_default_branch() {
    let (text, v) = yaml("ci/gitlab-ci.yml");
    let job = &v["tern-validate"];
    assert!(job["rules"][0]["if"]
        .as_str()
        .unwrap()
        .contains("merge_request_event"));
    assert_eq!(
        job["artifacts"]["reports"]["codequality"],
        "gl-code-quality-report.json"
    );
    assert!(text.contains(
        "tern-validate --format gitlab --strict \"$TERN_CONFIG_DIR\" > gl-code-quality-report.json"
    ));
    let publish = &v["tern-publish"];
    assert!(publish["rules"][0]["if"]
        .as_str()
        .unwrap()
        .contains("CI_DEFAULT_BRANCH"));
    assert!(publish["script"][0]
        .as_str()
        .unwrap()
        .starts_with("tern-sync publish --bucket"));
    assert_options_exist(&validate_commands(&text));
}

#[test]
fn pre_commit_hooks_point_at_a_runnable_entry() {
    let (_, v) = yaml(".pre-commit-hooks.yaml");
    let hooks = v.as_array().unwrap();
    let script = hooks.iter().find(|h| h["id"] == "tern-validate").unwrap();
    assert_eq!(script["language"], "script");
    assert_eq!(script["pass_filenames"], false);
    let entry = workspace_root().join(script["entry"].as_str().unwrap());
    let out = Command::new(&entry).output().expect("entry is executable");
    // Without args it explains what to pass instead of validating nothing.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("args"));
    let system = hooks
        .iter()
        .find(|h| h["id"] == "tern-validate-system")
        .unwrap();
    assert_eq!(system["entry"], "tern-validate");
}
