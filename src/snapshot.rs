//! The immutable runtime snapshot: everything the request path needs, built off the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::router::Router;
use crate::stats::{ListenerStats, Stats};

/// One loaded configuration, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the source files.
    pub version: String,
    /// When it was built.
    pub loaded_at: SystemTime,
    /// The merged configuration (for `/config_dump`).
    pub config: Config,
    /// Listeners by bound address: a renamed listener on the same address keeps its socket.
    pub listeners: HashMap<SocketAddr, Arc<ListenerRt>>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
}

/// A listener's view of the snapshot.
#[derive(Debug)]
pub struct ListenerRt {
    /// Listener name.
    pub name: Arc<str>,
    /// HTTP or TCP.
    pub kind: ListenerKind,
    /// Its statistics.
    pub stats: Arc<ListenerStats>,
}

/// What a listener does with a connection.
#[derive(Debug)]
pub enum ListenerKind {
    /// Serve HTTP/1.1 and HTTP/2 and route requests.
    Http(Arc<Router>),
    /// Forward the bytes to a cluster.
    Tcp(Arc<Cluster>),
}

impl Snapshot {
    /// Builds a snapshot from a checked configuration, carrying unchanged clusters over from `prev`.
    pub fn build(
        config: Config,
        version: String,
        prev: Option<&Snapshot>,
        stats: &Stats,
    ) -> Result<Snapshot, String> {
        let mut clusters = HashMap::with_capacity(config.clusters.len());
        for c in &config.clusters {
            let old = prev.and_then(|p| p.clusters.get(c.value.name.as_str()));
            clusters.insert(
                c.value.name.value.clone(),
                Cluster::build(&c.value, old, stats)?,
            );
        }
        let mut routers = HashMap::new();
        for rc in &config.route_configs {
            let r = Router::build(&rc.value, &clusters)
                .map_err(|e| format!("route config `{}`: {e}", rc.value.name.value))?;
            routers.insert(rc.value.name.value.clone(), Arc::new(r));
        }
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let l = &l.value;
            let kind = if let Some(rc) = &l.route_config {
                ListenerKind::Http(
                    routers
                        .get(rc.as_str())
                        .ok_or_else(|| format!("route config `{}` is not defined", rc.value))?
                        .clone(),
                )
            } else if let Some(t) = &l.tcp_proxy {
                ListenerKind::Tcp(
                    clusters
                        .get(t.cluster.as_str())
                        .ok_or_else(|| format!("cluster `{}` is not defined", t.cluster.value))?
                        .clone(),
                )
            } else {
                return Err(format!("listener `{}` has nothing to do", l.name.value));
            };
            listeners.insert(
                *l.address,
                Arc::new(ListenerRt {
                    name: l.name.as_str().into(),
                    kind,
                    stats: stats.listener(&l.name),
                }),
            );
        }
        Ok(Snapshot {
            version,
            loaded_at: SystemTime::now(),
            config,
            listeners,
            clusters,
        })
    }

    /// The source files of this snapshot.
    pub fn files(&self) -> &[PathBuf] {
        &self.config.files
    }
}
