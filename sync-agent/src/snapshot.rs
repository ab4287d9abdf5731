//! Snapshots on disk: writing a complete directory, validating it, making it current with an
//! atomic symlink swap, and pruning old ones.
//!
//! Layout under DEST: `.snapshots/<version>/` (the files), `.snapshots/<version>.json` (what the
//! agent knows about it: hashes and ETags, so a restart needs no download), and `current`, a
//! relative symlink to `.snapshots/<version>` so the volume works wherever it is mounted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::sha256_hex;

/// Name of the symlink the proxy reads.
pub const CURRENT: &str = "current";
/// Directory holding the snapshots.
pub const SNAPSHOTS: &str = ".snapshots";

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapFile {
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
    /// S3 ETag of the object it came from (plain mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// What the agent records beside each snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Snapshot version (also the directory name).
    pub version: String,
    /// ETag of the manifest it was built from (manifest mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_etag: Option<String>,
    /// Signature of the listing it was built from (plain mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<String>,
    /// Files by relative path.
    pub files: BTreeMap<String, SnapFile>,
}

/// The destination directory.
#[derive(Debug, Clone)]
pub struct Store {
    dest: PathBuf,
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

impl Store {
    /// Opens DEST, creating it and `.snapshots/` and removing leftovers of interrupted writes.
    pub fn open(dest: &Path) -> io::Result<Store> {
        fs::create_dir_all(dest.join(SNAPSHOTS))?;
        let s = Store {
            dest: dest.to_path_buf(),
        };
        for e in fs::read_dir(s.snapshots())? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        for e in fs::read_dir(dest)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(".current.tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(s)
    }

    fn snapshots(&self) -> PathBuf {
        self.dest.join(SNAPSHOTS)
    }

    /// Directory of a snapshot.
    pub fn dir(&self, version: &str) -> PathBuf {
        self.snapshots().join(version)
    }

    fn state_path(&self, version: &str) -> PathBuf {
        self.snapshots().join(format!("{version}.json"))
    }

    /// The version `current` points to, if it points at an existing snapshot.
    pub fn current_version(&self) -> Option<String> {
        let target = fs::read_link(self.dest.join(CURRENT)).ok()?;
        let v = target.file_name()?.to_str()?.to_string();
        self.dir(&v).is_dir().then_some(v)
    }

    /// The current snapshot's state; rebuilt by hashing its files when the record is missing.
    pub fn current(&self) -> Option<State> {
        let v = self.current_version()?;
        if let Some(s) = fs::read(self.state_path(&v))
            .ok()
            .and_then(|b| serde_json::from_slice::<State>(&b).ok())
            .filter(|s| s.version == v)
        {
            return Some(s);
        }
        let dir = self.dir(&v);
        let mut files = BTreeMap::new();
        for e in walk(&dir).ok()? {
            let bytes = fs::read(dir.join(&e)).ok()?;
            files.insert(
                e,
                SnapFile {
                    size: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                    etag: None,
                },
            );
        }
        Some(State {
            version: v,
            files,
            ..Default::default()
        })
    }

    /// Reads a file of an existing snapshot if its content still has the given hash.
    pub fn reuse(&self, version: &str, rel: &str, sha256: &str) -> Option<Vec<u8>> {
        let bytes = fs::read(self.dir(version).join(rel)).ok()?;
        (sha256_hex(&bytes) == sha256).then_some(bytes)
    }

    /// Starts writing a snapshot in a temporary directory (removed again if not finished).
    pub fn begin(&self, version: &str) -> io::Result<Builder> {
        let tmp = self.snapshots().join(format!(
            ".tmp-{version}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir(&tmp)?;
        Ok(Builder {
            tmp,
            store: self.clone(),
            version: version.to_string(),
            dirs: vec![],
            done: false,
        })
    }

    /// Makes a finished snapshot current: records its state, then swaps the symlink atomically.
    pub fn activate(&self, state: &State) -> io::Result<()> {
        let path = self.state_path(&state.version);
        let mut f = File::create(&path)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
        f.sync_all()?;
        let tmp = self
            .dest
            .join(format!(".current.tmp-{:08x}", rand::random::<u32>()));
        let target = Path::new(SNAPSHOTS).join(&state.version);
        std::os::unix::fs::symlink(&target, &tmp)?;
        // rename(2) replaces the old link in one step: readers see the old or the new target, never none.
        if let Err(e) = fs::rename(&tmp, self.dest.join(CURRENT)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fsync_dir(&self.dest)
    }

    /// Removes a snapshot that will not be used (never the current one).
    pub fn discard(&self, version: &str) {
        if self.current_version().as_deref() != Some(version) {
            let _ = fs::remove_dir_all(self.dir(version));
            let _ = fs::remove_file(self.state_path(version));
        }
    }

    /// Keeps the current snapshot and the newest others up to `keep` in total; removes the rest.
    pub fn prune(&self, keep: usize) -> io::Result<Vec<String>> {
        let current = self.current_version();
        let mut snaps = Vec::new();
        for e in fs::read_dir(self.snapshots())? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !e.file_type()?.is_dir() {
                continue;
            }
            // Activation time: the state record is written when a snapshot is made current.
            let t = fs::metadata(self.state_path(&name))
                .or_else(|_| e.metadata())?
                .modified()?;
            snaps.push((t, name));
        }
        snaps.sort_by(|a, b| b.cmp(a));
        let mut kept = usize::from(current.is_some());
        let mut removed = Vec::new();
        for (_, name) in snaps {
            if Some(&name) == current.as_ref() {
                continue;
            }
            if kept < keep {
                kept += 1;
            } else {
                fs::remove_dir_all(self.dir(&name))?;
                let _ = fs::remove_file(self.state_path(&name));
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// Relative paths of all regular files below `root`, `/`-separated.
pub fn walk(root: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let ft = fs::metadata(e.path())?.file_type();
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                out.push(r.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A snapshot being written. Dropping it unfinished removes the partial directory.
#[derive(Debug)]
pub struct Builder {
    tmp: PathBuf,
    store: Store,
    version: String,
    dirs: Vec<PathBuf>,
    done: bool,
}

impl Builder {
    /// Writes one file (relative path already checked by [`crate::keys`]) and fsyncs it.
    pub fn write(&mut self, rel: &str, data: &[u8]) -> io::Result<()> {
        let path = self.tmp.join(rel);
        if let Some(parent) = path.parent() {
            if !parent.is_dir() {
                fs::create_dir_all(parent)?;
                self.dirs.push(parent.to_path_buf());
            }
        }
        // create_new: never follow or overwrite something already there.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(data)?;
        f.sync_all()
    }

    /// Fsyncs the directories and moves the snapshot to `.snapshots/<version>/`.
    pub fn finish(mut self) -> io::Result<PathBuf> {
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &self.dirs {
            let mut p = d.as_path();
            while p != self.tmp {
                fsync_dir(p)?;
                match p.parent() {
                    Some(parent) => p = parent,
                    None => break,
                }
            }
        }
        fsync_dir(&self.tmp)?;
        let dir = self.store.dir(&self.version);
        if dir.exists() {
            // An older build of the same version (e.g. a rollback target still on disk); never current here.
            fs::remove_dir_all(&dir)?;
        }
        fs::rename(&self.tmp, &dir)?;
        fsync_dir(&self.store.snapshots())?;
        self.done = true;
        Ok(dir)
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// How the agent checks a configuration: as `tern-validate` does, away from the proxy. Keys from
/// `{ env: ... }` are injected into the proxy's container, not this one, so an unset variable
/// is "not checked" (W015) rather than an error that would refuse every such snapshot.
pub fn offline() -> tern_config::Limits {
    tern_config::Limits {
        offline: true,
        ..Default::default()
    }
}

/// Validates a snapshot directory with the proxy's loader; on errors returns the diagnostics
/// (paths shown relative to the snapshot).
pub fn validate(dir: &Path) -> Result<Vec<String>, Vec<String>> {
    let report = tern_config::load_with(dir, offline());
    let lines = report
        .diagnostics
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if let Ok(rel) = d.file.strip_prefix(dir) {
                d.file = rel.to_path_buf();
            }
            d.to_string()
        })
        .collect();
    if report.config.is_some() {
        Ok(lines)
    } else {
        Err(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key from `{ env: ... }` is injected into the proxy's container, not the agent's: the
    /// snapshot is published (the variable "not checked"), while a broken one is still refused.
    #[test]
    fn keys_from_environment_variables_do_not_block_a_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let chain =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/testdata/tls/ec-chain.pem");
        fs::copy(chain, d.path().join("chain.pem")).unwrap();
        let yaml = "listeners:\n  - name: https\n    address: 127.0.0.1:8443\n    route_config: main\n    tls:\n      certificates:\n        - certificate_chain: { file: chain.pem }\n          private_key: { env: TERN_SYNC_TEST_UNSET_KEY }\nroute_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: / }\n            direct_response: { status: 200 }\n";
        fs::write(d.path().join("tern.yaml"), yaml).unwrap();
        let warnings = validate(d.path()).expect("published");
        assert!(warnings.iter().any(|w| w.contains("W015")), "{warnings:?}");
        fs::write(d.path().join("chain.pem"), "not a certificate").unwrap();
        let errors = validate(d.path()).expect_err("a broken chain is refused");
        assert!(errors.iter().any(|e| e.contains("E011")), "{errors:?}");
    }

    #[test]
    fn write_activate_prune_and_abandon() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        for (i, v) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
            let mut b = store.begin(v).unwrap();
            b.write("sub/a.yaml", format!("# {i}\n").as_bytes())
                .unwrap();
            b.finish().unwrap();
            store
                .activate(&State {
                    version: v.to_string(),
                    ..Default::default()
                })
                .unwrap();
        }
        assert_eq!(store.current_version().as_deref(), Some("v4"));
        assert_eq!(
            fs::read_to_string(d.path().join("current/sub/a.yaml")).unwrap(),
            "# 3\n"
        );
        let mut removed = store.prune(2).unwrap();
        removed.sort();
        assert_eq!(removed, vec!["v1", "v2"]);
        // An unfinished builder leaves nothing behind.
        let mut b = store.begin("v5").unwrap();
        b.write("x.yaml", b"x").unwrap();
        drop(b);
        let names: Vec<_> = fs::read_dir(d.path().join(SNAPSHOTS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.ends_with(".json"))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // State is rebuilt from the files when the record is missing.
        fs::remove_file(d.path().join(".snapshots/v4.json")).unwrap();
        let s = store.current().unwrap();
        assert_eq!(s.files["sub/a.yaml"].sha256, sha256_hex(b"# 3\n"));
    }
}
