//! Finding and reading the YAML files that make up one configuration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::diag::{codes, Diagnostic};
use super::value::Pos;

/// One YAML file as read from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as found below the configured root (not canonicalised, so messages show what the user wrote).
    pub path: PathBuf,
    /// File contents.
    pub text: String,
}

/// All files of one configuration, in sorted path order, and the directories they were found in.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The configured root (directory or single file).
    pub root: PathBuf,
    /// The fragments, sorted by path.
    pub files: Vec<SourceFile>,
    /// Canonical paths of every directory walked (what a watcher must watch).
    pub dirs: BTreeSet<PathBuf>,
}

impl Sources {
    /// Content hash of the whole set (paths and bytes): equal hashes mean nothing changed.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            let p = f.path.to_string_lossy();
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
            h.update((f.text.len() as u64).to_le_bytes());
            h.update(f.text.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|s| s.starts_with('.'))
}

fn io_error(path: &Path, message: String) -> Diagnostic {
    Diagnostic::error(codes::IO, path, Pos::default(), message)
}

/// Reads every non-hidden `*.yaml`/`*.yml` file below `root` (recursively, following symlinks).
///
/// Hidden entries are skipped, which also skips Kubernetes' `..data` and `..<timestamp>` directories
/// while still reading the files that point into them.
pub fn read(root: &Path) -> Result<Sources, Vec<Diagnostic>> {
    let meta = std::fs::metadata(root).map_err(|e| {
        vec![io_error(
            root,
            format!("cannot read {}: {e}", root.display()),
        )]
    })?;
    let mut sources = Sources {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let mut errors = Vec::new();
    let mut paths = Vec::new();
    if meta.is_file() {
        paths.push(root.to_path_buf());
        if let Some(parent) = root.parent().and_then(|p| p.canonicalize().ok()) {
            sources.dirs.insert(parent);
        }
    } else {
        let walker = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
        for entry in walker {
            match entry {
                Ok(e) if e.file_type().is_dir() => {
                    if let Ok(c) = e.path().canonicalize() {
                        sources.dirs.insert(c);
                    }
                }
                Ok(e) if e.file_type().is_file() && is_yaml(e.path()) => {
                    paths.push(e.path().to_path_buf())
                }
                Ok(_) => {}
                Err(e) => {
                    let p = e.path().unwrap_or(root).to_path_buf();
                    // A dangling symlink mid-swap is normal; everything else is worth reporting.
                    errors.push(io_error(&p, format!("cannot read {}: {e}", p.display())));
                }
            }
        }
        if paths.is_empty() && errors.is_empty() {
            errors.push(io_error(
                root,
                format!("no *.yaml or *.yml files under {}", root.display()),
            ));
        }
    }
    paths.sort();
    for path in paths {
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => sources.files.push(SourceFile { path, text }),
                Err(_) => errors.push(io_error(&path, "file is not valid UTF-8".into())),
            },
            Err(e) => errors.push(io_error(&path, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}
