//! The manifest format and where its objects live under a prefix.
//!
//! Layout under prefix `P/`:
//! - `P/.tern/manifest.json`: the current manifest (written last by `publish`);
//! - `P/.tern/manifests/<version>.json`: every retained manifest (for rollback);
//! - `P/.tern/blobs/<sha256>`: file contents, content-addressed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Manifest format version written by this program.
pub const FORMAT: u32 = 1;

/// One published configuration version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// Version id: `<UTC time>-<content hash>`, sorting in publication order.
    pub version: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// The files, sorted by path.
    pub files: Vec<FileEntry>,
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the configuration root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the contents (also the blob name).
    pub sha256: String,
}

/// Keys of the objects belonging to one prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The prefix, empty or ending in `/`.
    pub base: String,
}

impl Layout {
    /// Normalises a user prefix (`cfg`, `cfg/`, `/cfg/` all mean `cfg/`).
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_matches('/');
        Layout {
            base: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }
    /// Key of the current manifest.
    pub fn manifest(&self) -> String {
        format!("{}.tern/manifest.json", self.base)
    }
    /// Prefix of the retained manifests.
    pub fn manifests_dir(&self) -> String {
        format!("{}.tern/manifests/", self.base)
    }
    /// Key of a retained manifest.
    pub fn version(&self, version: &str) -> String {
        format!("{}{version}.json", self.manifests_dir())
    }
    /// Prefix of the blobs.
    pub fn blobs_dir(&self) -> String {
        format!("{}.tern/blobs/", self.base)
    }
    /// Key of a blob.
    pub fn blob(&self, sha256: &str) -> String {
        format!("{}{sha256}", self.blobs_dir())
    }
    /// The key relative to the prefix, or None when it is outside it.
    pub fn relative<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.base.as_str())
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Hash of a set of (path, sha256) pairs: equal content, equal hash.
pub fn content_hash<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (path, sha) in files {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(sha.as_bytes());
    }
    hex::encode(&h.finalize()[..6])
}

/// A version id is used as a directory name: only `[A-Za-z0-9._-]`, at most 128 bytes, no leading dot.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new version id for content hash `hash` created at `now`, e.g. `20261122T022412.345Z-1a2b3c4d5e6f`
/// (milliseconds, so versions published in one second still sort in publication order).
pub fn new_version(now: std::time::SystemTime, hash: &str) -> String {
    let t = humantime::format_rfc3339_millis(now).to_string();
    let compact: String = t.chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{compact}-{hash}")
}

impl Manifest {
    /// The content hash of this manifest's files.
    pub fn content_hash(&self) -> String {
        content_hash(
            self.files
                .iter()
                .map(|f| (f.path.as_str(), f.sha256.as_str())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_versions() {
        assert_eq!(Layout::new("").manifest(), ".tern/manifest.json");
        assert_eq!(Layout::new("/a/b/").blob("ff"), "a/b/.tern/blobs/ff");
        let v = new_version(std::time::UNIX_EPOCH, "abc");
        assert_eq!(v, "19700101T000000.000Z-abc");
        assert!(valid_version(&v));
        assert!(!valid_version("../x"));
        assert!(!valid_version(".x"));
    }
}
