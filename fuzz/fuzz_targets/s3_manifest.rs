//! The sync agent's S3 manifest (`.tern/manifest.json`), as untrusted bytes from a bucket:
//! parsed, its version id and paths checked, its keys laid out, as `tern-sync` does before it
//! writes anything.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The sync agent is a binary crate: its pure modules are included by path.
#[allow(dead_code, missing_docs)]
#[path = "../../sync-agent/src/keys.rs"]
mod keys;
#[allow(dead_code, missing_docs)]
#[path = "../../sync-agent/src/manifest.rs"]
mod manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<manifest::Manifest>(data) else {
        return;
    };
    if manifest::valid_version(&m.version) {
        let layout = manifest::Layout::new("config/prod/");
        let _ = layout.version(&m.version);
    }
    let _ = m.content_hash();
    let layout = manifest::Layout::new("p/");
    for f in &m.files {
        let _ = keys::check_relative(&f.path);
        let blob = layout.blob(&f.sha256.to_ascii_lowercase());
        let _ = layout.relative(&blob);
    }
    let (ok, rejected) = keys::filter(m.files.iter().map(|f| f.path.as_str()));
    assert_eq!(ok.len() + rejected.len(), m.files.len());
});
