//! Configuration directories in temp dirs, and the YAML fragments tests build them from.

use std::path::{Path, PathBuf};

use crate::backend::Backend;

/// A config directory in a temp dir (removed on drop), with helpers to write files.
pub struct ConfigDir {
    /// The directory (removed when dropped).
    pub dir: tempfile::TempDir,
}

impl Default for ConfigDir {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigDir {
    /// An empty directory.
    pub fn new() -> Self {
        ConfigDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A directory holding `files` (relative path, content).
    pub fn with_files<P: AsRef<Path>, T: AsRef<[u8]>>(files: &[(P, T)]) -> Self {
        let d = Self::new();
        d.write_files(files);
        d
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `rel` (creating directories).
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes several files (relative path, content), creating directories.
    pub fn write_files<P: AsRef<Path>, T: AsRef<[u8]>>(&self, files: &[(P, T)]) {
        write_files(self.path(), files);
    }
}

/// Writes files (relative path, content) below `root`, creating directories.
pub fn write_files<P: AsRef<Path>, T: AsRef<[u8]>>(root: &Path, files: &[(P, T)]) {
    for (rel, text) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// The standard admin fragment.
pub fn admin_yaml(port: u16) -> String {
    format!("admin:\n  address: 127.0.0.1:{port}\n")
}

/// An HTTP listener fragment.
pub fn listener_yaml(name: &str, port: u16, route_config: &str) -> String {
    format!("listeners:\n  - name: {name}\n    address: 127.0.0.1:{port}\n    route_config: {route_config}\n")
}

/// A route config with one catch-all direct response.
pub fn direct_yaml(name: &str, body: &str) -> String {
    format!(
        "route_configs:\n  - name: {name}\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            direct_response: {{ status: 200, body: \"{body}\" }}\n"
    )
}

/// admin.yaml, listener.yaml and routes.yaml: listener `ingress` on `port` forwarding everything
/// to cluster `be` (the one `backend`).
pub fn forward_config(cfg: &ConfigDir, admin: u16, port: u16, backend: &Backend) {
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listener.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write(
        "routes.yaml",
        &format!(
            "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: be }}\nclusters:\n  - name: be\n    endpoints: [{{ address: \"{}\" }}]\n",
            backend.addr
        ),
    );
}

/// A small valid config as files (relative path, content): admin and listener `ingress` on the
/// given ports, `/hello` answering `body` directly.
pub fn config_files(listen: u16, admin: u16, body: &str) -> Vec<(String, String)> {
    vec![
        ("admin.yaml".into(), admin_yaml(admin)),
        (
            "listeners.yaml".into(),
            listener_yaml("ingress", listen, "main"),
        ),
        (
            "routes/main.yaml".into(),
            format!(
                "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ path: /hello }}\n            direct_response: {{ status: 200, body: \"{body}\" }}\n"
            ),
        ),
    ]
}
