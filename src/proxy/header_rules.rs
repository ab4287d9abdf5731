//! The request path's side of header rules ([`crate::router::header_rules`]): the facts their
//! values show, taken from the request and the connection, and the two places they apply — the
//! request head as it goes upstream, and every response, the proxy's own replies included.
//!
//! A route without rules costs one branch at each place.

use std::sync::Arc;

use http::{Method, Uri, Version};

use super::{Ctx, RespBody};
use crate::message::{Fields, RequestParts, Response};
use crate::router::header_rules::{Facts, HeaderRules};
use crate::router::{ClusterRules, Route};

/// The request's target and version as received, kept while the head is rewritten when request
/// rules will show them; `None` when there is no request rule.
pub(super) fn original(
    parts: &RequestParts,
    route: &Route,
    cluster: Option<&Arc<ClusterRules>>,
) -> Option<(Uri, Version)> {
    let any = route
        .header_rules
        .as_ref()
        .is_some_and(|h| !h.request.is_empty())
        || cluster.is_some_and(|c| c.request.is_some());
    any.then(|| (parts.uri.clone(), parts.version))
}

/// Applies the request rules of the route's levels, then the weighted cluster's, to the head
/// going upstream (after the forwarding and trace headers, so rules can change those too).
pub(super) fn request(
    parts: &mut RequestParts,
    original: Option<(Uri, Version)>,
    route: &Route,
    cluster_name: &str,
    cluster: Option<&Arc<ClusterRules>>,
    cx: &Ctx<'_>,
) {
    let Some((uri, version)) = original else {
        return;
    };
    let facts = Facts {
        start: cx.start,
        method: &parts.method,
        path: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        authority: cx.host(),
        version,
        client: cx.client,
        client_ip: (cx.client == cx.conn.peer).then_some(&cx.conn.peer_ip),
        direct: cx.conn.direct,
        route_name: Some(&route.name),
        cluster: Some(cluster_name),
        status: 0,
        request: None,
        trace_id: None,
    };
    let headers = &mut parts.headers;
    if let Some(h) = &route.header_rules {
        for r in &h.request {
            r.apply(headers, &facts);
        }
    }
    if let Some(r) = cluster.and_then(|c| c.request.as_ref()) {
        r.apply(headers, &facts);
    }
}

/// Applies the response rules of `rules` (the route's, else the virtual host's or the route
/// config's), then the picked weighted cluster's, to the response sent to the client.
pub(super) fn response(
    resp: &mut Response<RespBody>,
    rules: &HeaderRules,
    route: Option<&Route>,
    cx: &Ctx<'_>,
) {
    let get = Method::GET;
    let empty = Fields::new();
    let c = cx.captured.as_deref();
    let facts = Facts {
        start: cx.start,
        method: c.map_or(&get, |c| &c.method),
        path: c.map_or("", |c| &c.path),
        authority: cx.host(),
        version: c.map_or(Version::HTTP_11, |c| c.version),
        client: cx.client,
        client_ip: (cx.client == cx.conn.peer).then_some(&cx.conn.peer_ip),
        direct: cx.conn.direct,
        route_name: route.map(|r| &*r.name),
        cluster: None,
        status: resp.status().as_u16(),
        request: Some(c.map_or(&empty, |c| &c.headers)),
        trace_id: c.and_then(|c| c.trace_id),
    };
    let headers = resp.headers_mut();
    for r in &rules.response {
        r.apply(headers, &facts);
    }
    if let Some(r) = cx.cluster_rules.as_ref().and_then(|c| c.response.as_ref()) {
        r.apply(headers, &facts);
    }
}
