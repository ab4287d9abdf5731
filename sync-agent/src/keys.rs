//! Turning untrusted S3 keys (or manifest paths) into safe relative paths inside a snapshot.
//!
//! Everything here is pure so it can be tested without S3: a key that could escape the snapshot,
//! confuse a filesystem, or collide with another key on a case-insensitive or normalising
//! filesystem is rejected with a reason, never written.

use std::collections::{BTreeMap, BTreeSet};

use unicode_normalization::UnicodeNormalization;

/// Longest allowed path component in bytes (the common `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;
/// Longest allowed relative path in bytes.
pub const MAX_PATH: usize = 1024;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The key as found in S3 or in the manifest.
    pub key: String,
    /// Human-readable reason.
    pub reason: String,
}

/// Checks one relative path (already stripped of the prefix); returns the reason it is unsafe.
pub fn check_relative(rel: &str) -> Result<(), String> {
    if rel.is_empty() {
        return Err("empty path".into());
    }
    if rel.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    if rel.starts_with('/') {
        return Err("absolute path".into());
    }
    if rel.contains('\\') {
        return Err("backslash in path".into());
    }
    if let Some(c) = rel.chars().find(|c| c.is_control()) {
        return Err(format!("control character U+{:04X} in path", c as u32));
    }
    for part in rel.split('/') {
        match part {
            "" => return Err("empty path segment".into()),
            "." | ".." => return Err(format!("`{part}` segment")),
            p if p.len() > MAX_COMPONENT => {
                return Err(format!("path segment longer than {MAX_COMPONENT} bytes"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The form two paths share when a case-insensitive or normalising filesystem would confuse them.
fn fold(rel: &str) -> String {
    rel.nfc().collect::<String>().to_lowercase()
}

/// Filters a set of relative paths: returns the accepted ones and the rejected ones with reasons.
///
/// Paths that collide after case folding and Unicode normalisation are all rejected (which one was
/// meant cannot be known), as are files whose path is also used as a directory by another path.
pub fn filter<'a>(rels: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut ok = Vec::new();
    for rel in rels {
        match check_relative(rel) {
            Ok(()) => ok.push(rel.to_string()),
            Err(reason) => rejected.push(Rejected {
                key: rel.to_string(),
                reason,
            }),
        }
    }
    let mut by_fold: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rel in &ok {
        by_fold.entry(fold(rel)).or_default().push(rel.clone());
    }
    let mut dirs = BTreeSet::new();
    for folded in by_fold.keys() {
        let mut parts: Vec<&str> = folded.split('/').collect();
        parts.pop();
        while !parts.is_empty() {
            dirs.insert(parts.join("/"));
            parts.pop();
        }
    }
    let mut accepted = Vec::new();
    for (folded, group) in by_fold {
        if group.len() > 1 {
            for rel in group {
                rejected.push(Rejected {
                    key: rel,
                    reason: "collides with another key after case folding/normalisation".into(),
                });
            }
        } else if dirs.contains(&folded) {
            rejected.push(Rejected {
                key: group[0].clone(),
                reason: "is both a file and a directory of another key".into(),
            });
        } else {
            accepted.push(group[0].clone());
        }
    }
    accepted.sort();
    (accepted, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes_and_odd_names() {
        for bad in [
            "../x.yaml",
            "a/../../x",
            "/etc/passwd",
            "a\\b.yaml",
            "a\0b",
            "a\nb",
            "a//b",
            "./a",
            "",
            &"x".repeat(256),
            &format!("{}/y", "a/".repeat(600)),
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a.yaml", "sub/dir/b.yml", "été.yaml", "..hidden", "a..b"] {
            assert_eq!(check_relative(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn collisions_rejected_all() {
        let (ok, bad) = filter([
            "A.yaml",
            "a.yaml",
            "caf\u{e9}.yaml",
            "cafe\u{301}.yaml",
            "d",
            "d/x.yaml",
            "keep.yaml",
        ]);
        assert_eq!(ok, vec!["d/x.yaml", "keep.yaml"]);
        let keys: BTreeSet<_> = bad.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys.len(), 5, "{bad:?}");
        assert!(keys.contains("d"));
    }
}
