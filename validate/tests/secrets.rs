//! Secret values (OTLP export header values, credentials in URLs) are never printed: not in
//! messages, not in the source lines the human output quotes, in no output format, and not by
//! `tern --check`. Before, a snippet quoted an API key whenever an error was on its line.

use std::process::Command;

use tern_testkit::{tern_bin, tern_validate_bin, ConfigDir};

const KEY: &str = "sk-live-0123456789abcdef";
const PASSWORD: &str = "hunter2-very-secret";

fn config() -> ConfigDir {
    ConfigDir::with_files(&[(
        "listeners.yaml",
        format!(
            "listeners:\n  - name: ingress\n    address: 127.0.0.1:10000\n    route_config: main\n    tracing:\n      otlp:\n        endpoint: https://user:{PASSWORD}@otlp.example.com\n        headers:\n          \"bad name\": {KEY}\nroute_configs:\n  - {{ name: main, virtual_hosts: [{{ name: all, domains: [\"*\"], routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 200 }} }}] }}] }}\nx-stray: {{ api: {KEY} }}\n"
        ),
    )])
}

#[test]
fn no_output_format_prints_a_secret() {
    let cfg = config();
    for format in ["human", "json", "github", "gitlab"] {
        let out = Command::new(tern_validate_bin())
            .args(["--color", "never", "--format", format])
            .arg(cfg.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{format}: {text}");
        assert!(!text.contains(KEY), "{format} prints the API key:\n{text}");
        assert!(
            !text.contains(PASSWORD),
            "{format} prints the password:\n{text}"
        );
        if format == "human" {
            // The errors are still shown where they are, with the values hidden.
            for shown in [
                "\"bad name\": <redacted>",
                "https://<redacted>@otlp.example.com",
                "x-stray: { api: <redacted> }",
            ] {
                assert!(text.contains(shown), "{shown}: {text}");
            }
        }
    }
    let out = Command::new(tern_bin())
        .args(["--check", "--config"])
        .arg(cfg.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains(KEY) && !text.contains(PASSWORD), "{text}");
}

/// An inline private key with an error on its own lines (it does not match the certificate) is
/// reported there, in every format, without a line of the key.
#[test]
fn inline_private_keys_are_never_printed() {
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/testdata/tls");
    let key = std::fs::read_to_string(testdata.join("other.key")).unwrap();
    let indented: String = key
        .lines()
        .map(|l| format!("              {l}\n"))
        .collect();
    let cfg = ConfigDir::with_files(&[
        ("ec.pem", std::fs::read_to_string(testdata.join("ec.pem")).unwrap()),
        (
            "listeners.yaml",
            format!(
                "listeners:\n  - name: tls\n    address: 127.0.0.1:10443\n    route_config: main\n    tls:\n      certificates:\n        - certificate_chain: {{ file: ec.pem }}\n          private_key:\n            inline: |\n{indented}route_configs:\n  - {{ name: main, virtual_hosts: [{{ name: all, domains: [\"*\"], routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 200 }} }}] }}] }}\n"
            ),
        ),
    ]);
    let secret_lines: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for format in ["human", "json", "github", "gitlab"] {
        let out = Command::new(tern_validate_bin())
            .args(["--color", "never", "--format", format])
            .arg(cfg.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{format}: {text}");
        assert!(text.contains("E011"), "{format}: {text}");
        for l in &secret_lines {
            assert!(!text.contains(l), "{format} prints the key:\n{text}");
        }
    }
}
