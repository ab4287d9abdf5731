//! One configuration file, as bytes, through the loader: parse, recover, merge, check, lint and
//! find secrets, as `tern`, `tern --check` and `tern-validate` do on every file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_config::{Limits, SourceFile, Sources};

fuzz_target!(|data: &[u8]| {
    // The loader refuses non-UTF-8 files before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = Sources {
        files: vec![SourceFile {
            path: "fuzz.yaml".into(),
            text: text.to_string(),
        }],
        // Small budgets keep each run fast; the limits' own code paths run as in the proxy.
        limits: Limits {
            max_file_bytes: 1 << 20,
            max_yaml_nodes: 50_000,
            ..Limits::default()
        },
        ..Default::default()
    };
    let report = tern_config::check_sources(sources);
    // Lines as the parser counts them (a lone CR is a line break too).
    let read = &report.sources.as_ref().expect("sources kept").files[0].text;
    let lines = read.split('\n').count() as u32;
    for d in &report.diagnostics {
        // Every problem is placed in the file (or at 0:0 for the whole file).
        assert!(d.line <= lines + 1, "{d} is past the end ({lines} lines)");
    }
    assert_eq!(report.config.is_some(), report.error_count() == 0);
});
