//! Finding and reading the YAML files that make up one configuration, within the [`Limits`].
//!
//! Only regular files (or symlinks to them) are read, and each is checked against the size cap
//! before it is opened: a FIFO would block the reader forever, a device may act on an open, and
//! a huge file would be held in memory whole.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::defaults;
use super::diag::{codes, Diagnostic};
use super::value::Pos;

/// Bounds on what one load reads and parses, and how key material is checked; the same in the
/// proxy and in `tern-validate` (`--max-file-size`, `--max-yaml-nodes`, `--cert-expiry-warn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file read, in bytes (checked before the file is opened); key material files too.
    pub max_file_bytes: u64,
    /// Most YAML nodes (mappings, lists, scalars) one file may hold.
    pub max_yaml_nodes: usize,
    /// A certificate that expires within this is warned about (W011).
    pub cert_expiry_warn: std::time::Duration,
    /// Checking away from the proxy (`tern-validate`): an environment variable that is not set
    /// is reported as not checked (W015) instead of an error.
    pub offline: bool,
    /// Do not read key material files at all (`tern-validate --skip-files`).
    pub skip_files: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: defaults::MAX_FILE_BYTES,
            max_yaml_nodes: defaults::MAX_YAML_NODES,
            cert_expiry_warn: defaults::CERT_EXPIRY_WARN,
            offline: false,
            skip_files: false,
        }
    }
}

/// Parses a size such as `16MiB`, `500kB` or `1048576` (the `--max-file-size` syntax).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s.trim())
        .map_err(|e| format!("invalid size {s:?} ({e}); write e.g. 16MiB, 500KiB or 1048576"))
}

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
    /// The limits the files were read with; parsing applies them too.
    pub limits: Limits,
    /// Key material files the configuration names (certificates, keys, CAs), as read.
    pub data: DataFiles,
}

impl Sources {
    /// Content hash of the whole set (paths and bytes of the YAML files and of the key material
    /// files they name): equal hashes mean nothing changed.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        let mut add = |path: &Path, bytes: &[u8]| {
            let p = path.to_string_lossy();
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        for f in &self.files {
            add(&f.path, f.text.as_bytes());
        }
        for (path, read) in &self.data.files {
            match read {
                Ok(bytes) => add(path, bytes),
                // An unreadable file hashes as its error: it differs from any content.
                Err(e) => add(path, format!("\0unreadable: {e}").as_bytes()),
            }
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// Key material files named by a configuration, read once per load (by absolute path) and part
/// of its content hash: a rotated certificate is a new configuration even when no YAML changed.
#[derive(Debug, Clone, Default)]
pub struct DataFiles {
    files: std::collections::BTreeMap<PathBuf, Result<std::sync::Arc<[u8]>, String>>,
    used: BTreeSet<PathBuf>,
}

impl DataFiles {
    /// Reads `paths` now (the files a running configuration named), so that their content can
    /// be hashed before the configuration is parsed again; a later [`DataFiles::read`] of the
    /// same path uses these bytes.
    pub fn preread<'a>(paths: impl IntoIterator<Item = &'a PathBuf>, limits: &Limits) -> DataFiles {
        let mut d = DataFiles::default();
        for p in paths {
            let r = read_bytes(p, limits).map(Into::into);
            d.files.insert(p.clone(), r);
        }
        d
    }

    /// The bytes of `path` (absolute), read at most once per load.
    pub fn read(&mut self, path: &Path, limits: &Limits) -> Result<std::sync::Arc<[u8]>, String> {
        self.used.insert(path.to_path_buf());
        self.files
            .entry(path.to_path_buf())
            .or_insert_with(|| read_bytes(path, limits).map(Into::into))
            .clone()
    }

    /// Forgets files read before but no longer named (called once the configuration is checked).
    pub fn keep_used(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.files.retain(|p, _| used.contains(p));
        self.used = used;
    }

    /// The paths of the files, in order.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.keys()
    }
}

/// True for a name the loader reads: `*.yaml` or `*.yml`.
pub fn is_yaml(path: &Path) -> bool {
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

/// What a file type is, for the error about a file that is not a regular file.
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, t: std::fs::FileType) -> Diagnostic {
    io_error(
        path,
        format!(
            "{} is {}: only regular files (or symlinks to them) are read as configuration",
            path.display(),
            kind_of(t)
        ),
    )
}

/// The error for a file over [`Limits::max_file_bytes`].
fn too_large(path: &Path, size: u64, limits: &Limits) -> Diagnostic {
    Diagnostic::error(
        codes::LIMIT,
        path,
        Pos::default(),
        format!(
            "{} is {size} bytes, over the limit of {} bytes per configuration file",
            path.display(),
            limits.max_file_bytes
        ),
    )
    .with_help(
        "split it into several files, or raise the limit with --max-file-size (env TERN_MAX_FILE_SIZE), \
         given to tern and tern-validate alike",
    )
}

/// Reads every non-hidden `*.yaml`/`*.yml` file below `root` (recursively, following symlinks)
/// with the default [`Limits`].
pub fn read(root: &Path) -> Result<Sources, Vec<Diagnostic>> {
    read_with(root, Limits::default())
}

/// Reads every non-hidden `*.yaml`/`*.yml` file below `root` (recursively, following symlinks).
///
/// Hidden entries are skipped, which also skips Kubernetes' `..data` and `..<timestamp>` directories
/// while still reading the files that point into them. A YAML-named entry that is not a regular
/// file (a FIFO, socket or device) is an error at its path, and is never opened.
pub fn read_with(root: &Path, limits: Limits) -> Result<Sources, Vec<Diagnostic>> {
    let meta = std::fs::metadata(root).map_err(|e| {
        vec![io_error(
            root,
            format!("cannot read {}: {e}", root.display()),
        )]
    })?;
    let mut sources = Sources {
        root: root.to_path_buf(),
        limits,
        ..Default::default()
    };
    let mut errors = Vec::new();
    let mut paths = Vec::new();
    if meta.is_file() {
        paths.push(root.to_path_buf());
        if let Some(parent) = root.parent().and_then(|p| p.canonicalize().ok()) {
            sources.dirs.insert(parent);
        }
    } else if !meta.is_dir() {
        return Err(vec![not_regular(root, meta.file_type())]);
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
                Ok(e) if is_yaml(e.path()) => {
                    if e.file_type().is_file() {
                        paths.push(e.path().to_path_buf())
                    } else {
                        errors.push(not_regular(e.path(), e.file_type()));
                    }
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
        match read_file(&path, &limits) {
            Ok(text) => sources.files.push(SourceFile { path, text }),
            Err(d) => errors.push(*d),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

/// Reads a key material file with the same care as a configuration file; the error says why not.
fn read_bytes(path: &Path, limits: &Limits) -> Result<Vec<u8>, String> {
    read_raw(path, limits).map_err(|d| d.message)
}

/// Reads one file: checked (type and size) before it is opened, and again on the open handle,
/// since the path may have been replaced in between; never more than the cap is read.
fn read_file(path: &Path, limits: &Limits) -> Result<String, Box<Diagnostic>> {
    let bytes = read_raw(path, limits)?;
    String::from_utf8(bytes)
        .map(super::lines::normalize_line_breaks)
        .map_err(|_| Box::new(io_error(path, "file is not valid UTF-8".into())))
}

/// [`read_file`]'s bytes.
fn read_raw(path: &Path, limits: &Limits) -> Result<Vec<u8>, Box<Diagnostic>> {
    let cannot = |e: std::io::Error| Box::new(io_error(path, format!("cannot read: {e}")));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(Box::new(not_regular(path, meta.file_type())));
    }
    if meta.len() > limits.max_file_bytes {
        return Err(Box::new(too_large(path, meta.len(), limits)));
    }
    // Non-blocking: should a FIFO have taken the file's place since the check, opening it
    // returns at once instead of waiting for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(Box::new(not_regular(path, meta.file_type())));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limits.max_file_bytes) as usize);
    // One byte over the cap tells a file that grew while it was read.
    File::take(file, limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Box::new(too_large(path, bytes.len() as u64, limits)));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(parse_size("1048576"), Ok(1048576));
        assert_eq!(parse_size(" 2 KiB "), Ok(2048));
        assert!(parse_size("lots").unwrap_err().contains("invalid size"));
    }
}
