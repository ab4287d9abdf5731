//! L4 proxying: a downstream connection spliced to one upstream endpoint (over TLS when the
//! cluster originates it).

use std::sync::Arc;

use crate::upstream::cluster::{ActiveRequest, Cluster};
use crate::upstream::connect::Connector;
use crate::upstream::outlier::{self, Outcome};

/// Connects to an endpoint of `cluster` and copies bytes both ways until both sides close.
pub async fn proxy<S>(mut down: S, cluster: Arc<Cluster>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    let Some(ep) = cluster.pick(None, None) else {
        stats.upstream_rq_no_healthy.inc();
        return;
    };
    let mut up = match Connector::of(&cluster).connect(&ep).await {
        Ok(s) => s,
        Err(e) => {
            stats.upstream_cx_connect_fail.inc();
            outlier::report(&cluster, &ep, Outcome::ConnectFailure);
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "tcp connect failed");
            return;
        }
    };
    // A connection that opens is a success for outlier detection (resets its failure streak).
    outlier::report(&cluster, &ep, Outcome::Status(200));
    let _active = ActiveRequest::start(&cluster, ep);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(cluster = %cluster.name, error = %e, "tcp proxy ended with error");
    }
}
