//! Connecting to an endpoint: TCP, then TLS when the cluster originates it, within the cluster's
//! `connect_timeout` (both together), with the cluster's socket options. The HTTP pool, upgrades,
//! health checks and the TCP proxy all connect here, so they all speak the cluster's TLS; the
//! pool's connections offer its protocol's ALPN ([`Connector::connect_http`]).

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::stats::ClusterStats;
use crate::tls::client::{Failure, UpStream, UpstreamTls};
use crate::upstream::cluster::{Cluster, Endpoint};

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect failed or timed out (the reason).
    Tcp(String),
    /// The TLS handshake failed (counted by how in the cluster's stats): the reason.
    Tls(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Tcp(e) => write!(f, "{e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

/// What a connection needs from its cluster, without holding the cluster.
#[derive(Clone, Copy)]
pub struct Connector<'a> {
    /// Time for TCP and the TLS handshake together.
    pub timeout: std::time::Duration,
    /// The cluster's TLS, if it originates it.
    pub tls: Option<&'a UpstreamTls>,
    /// Socket options.
    pub options: &'a crate::upstream::cluster::ConnOptions,
    /// Where handshakes are counted.
    pub stats: &'a Arc<ClusterStats>,
}

impl<'a> Connector<'a> {
    /// The connector of `cluster`.
    pub fn of(cluster: &'a Cluster) -> Connector<'a> {
        Connector {
            timeout: cluster.connect_timeout,
            tls: cluster.tls.as_deref(),
            options: &cluster.conn,
            stats: &cluster.stats,
        }
    }

    /// Connects to `ep`, offering the cluster's `alpn` over TLS (health checks, upgrades, the TCP
    /// proxy).
    pub async fn connect(&self, ep: &Endpoint) -> Result<UpStream, ConnectError> {
        self.open(ep, false).await
    }

    /// Connects to `ep` for the HTTP pool: over TLS, ALPN offers what the cluster's protocol
    /// speaks (`http2`: h2; `auto`: h2, http/1.1; `http1`: the cluster's `alpn`).
    pub async fn connect_http(&self, ep: &Endpoint) -> Result<UpStream, ConnectError> {
        self.open(ep, true).await
    }

    /// TCP and the TLS handshake together within the connect timeout.
    async fn open(&self, ep: &Endpoint, http: bool) -> Result<UpStream, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || format!("timed out after {:?}", self.timeout);
        let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(ep.addr)).await {
            Ok(r) => r.map_err(|e| ConnectError::Tcp(e.to_string()))?,
            Err(_) => return Err(ConnectError::Tcp(timed_out())),
        };
        let work = async {
            let _ = tcp.set_nodelay(true);
            self.options.apply(&tcp);
            let Some(tls) = self.tls else {
                return Ok(UpStream::Plain(tcp));
            };
            let name = tls.server_name(ep.hostname.as_deref(), ep.addr);
            match tls.connect(tcp, name, http).await {
                Ok(s) => {
                    self.stats.ssl_handshake.inc();
                    Ok(UpStream::Tls(Box::new(s)))
                }
                Err(e) => {
                    self.stats.ssl_connection_error.inc();
                    match Failure::of(&e) {
                        Failure::Verify => self.stats.ssl_fail_verify_error.inc(),
                        Failure::San => self.stats.ssl_fail_verify_san.inc(),
                        Failure::Other => {}
                    }
                    Err(ConnectError::Tls(e.to_string()))
                }
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            // A peer that accepts but never finishes the handshake is a TLS failure.
            Err(_) => {
                self.stats.ssl_connection_error.inc();
                Err(ConnectError::Tls(format!("handshake {}", timed_out())))
            }
        }
    }
}
