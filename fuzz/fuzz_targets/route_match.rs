//! Route matching: route configs that pass the loader's checks, compiled as the proxy compiles
//! them, then requests routed through them. Input: a configuration file (YAML), a line `---`,
//! then one request per line as `HOST PATH [NAME:VALUE]...`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::fuzzing::{self, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, requests) = text.split_once("\n---\n").unwrap_or((text, "x /"));
    // What the loader accepts, with its checks, is what the proxy compiles.
    let report = tern_config::check_sources(tern_config::Sources {
        files: vec![tern_config::SourceFile {
            path: "fuzz.yaml".into(),
            text: yaml.to_string(),
        }],
        ..Default::default()
    });
    let Some(cfg) = report.config else {
        return;
    };
    let requests: Vec<Request<'_>> = requests
        .lines()
        .map(|l| {
            let mut words = l.split(' ');
            Request {
                host: words.next().unwrap_or(""),
                path_and_query: words.next().unwrap_or("/"),
                headers: words
                    .filter_map(|h| h.split_once(':'))
                    .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                    .collect(),
            }
        })
        .collect();
    for rc in &cfg.route_configs {
        if let Some(chosen) = fuzzing::route(&rc.value, &requests) {
            assert_eq!(chosen.len(), requests.len());
        }
    }
});
