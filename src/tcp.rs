//! L4 proxying: a downstream TCP connection spliced to one upstream endpoint.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::upstream::cluster::{ActiveRequest, Cluster};
use crate::upstream::outlier::{self, Outcome};

/// Connects to an endpoint of `cluster` and copies bytes both ways until both sides close.
pub async fn proxy(mut down: TcpStream, cluster: Arc<Cluster>) {
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    let Some(ep) = cluster.pick(None, None) else {
        stats.upstream_rq_no_healthy.inc();
        return;
    };
    let connect = TcpStream::connect(ep.addr);
    let mut up = match tokio::time::timeout(cluster.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats.upstream_cx_connect_fail.inc();
            outlier::report(&cluster, &ep, Outcome::ConnectFailure);
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "tcp connect failed");
            return;
        }
        Err(_) => {
            stats.upstream_cx_connect_fail.inc();
            outlier::report(&cluster, &ep, Outcome::Timeout);
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, "tcp connect timeout");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    cluster.conn.apply(&up);
    // A connection that opens is a success for outlier detection (resets its failure streak).
    outlier::report(&cluster, &ep, Outcome::Status(200));
    let _active = ActiveRequest::start(&cluster, ep);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(cluster = %cluster.name, error = %e, "tcp proxy ended with error");
    }
}
