//! The edge of a deployment, through a real `tern` process, real backends and raw sockets: the
//! client behind trusted proxies (`xff_num_trusted_hops`, `skip_xff_append`) as forwarding
//! headers, rate limits, hash policies and access logs see it; the PROXY protocol (v1, v2,
//! malformed, missing, late) on HTTP and TCP listeners; header rules at every level with every
//! append action, on forwarded requests, upstream responses and the proxy's own replies; and the
//! clusters' connection reuse limits.

use std::collections::BTreeSet;
use std::time::Duration;

use tern_testkit::{admin_yaml, free_port, get, wait_for, Backend, ConfigDir, Tern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The request headers the echo backend got.
fn got(body: &str) -> serde_json::Value {
    json(body)["headers"].clone()
}

/// Writes `bytes` on a new connection to `port` and reads until the proxy closes it (or 10 s
/// pass): what came back, as text.
async fn raw(port: u16, chunks: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    for c in chunks {
        // A refused connection may be closed before every chunk is written.
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const GET_CLOSE: &[u8] = b"GET /echo HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n";

/// The body of a raw HTTP/1.1 response (after the head).
fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// v2 PROXY TCP4 198.51.100.20:4444 → 10.0.0.1:80, with an AWS VPC endpoint TLV.
fn v2_nlb() -> Vec<u8> {
    let mut body = vec![198, 51, 100, 20, 10, 0, 0, 1, 0x11, 0x5c, 0, 80];
    body.extend_from_slice(&[
        0xEA, 0, 9, 1, b'v', b'p', b'c', b'e', b'-', b'a', b'b', b'c',
    ]);
    v2(1, 0x11, &body)
}

// ---------------------------------------------------------------------------------------------
// The client behind trusted proxies
// ---------------------------------------------------------------------------------------------

struct Xff {
    tern: Tern,
    /// Listener ports: 0, 1 and 2 trusted hops; 1 hop with `skip_xff_append`.
    ports: [u16; 4],
    log: std::path::PathBuf,
    _cfg: ConfigDir,
    _backends: Vec<Backend>,
}

async fn xff_setup() -> Xff {
    let app = Backend::start("app").await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let admin = free_port();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let cfg = ConfigDir::new();
    let log = cfg.path().join("logs/access.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let listener = |name: &str, port: u16, extra: &str| {
        format!(
            "  - name: {name}\n    address: 127.0.0.1:{port}\n    route_config: main\n{extra}    access_log:\n      - {{ path: {}, format: \"{name} %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% %RESPONSE_CODE%\" }}\n",
            log.display()
        )
    };
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "listeners.yaml",
        &format!(
            "listeners:\n{}{}{}{}",
            listener("hops0", ports[0], ""),
            listener("hops1", ports[1], "    xff_num_trusted_hops: 1\n"),
            listener("hops2", ports[2], "    xff_num_trusted_hops: 2\n"),
            listener(
                "noappend",
                ports[3],
                "    xff_num_trusted_hops: 1\n    skip_xff_append: true\n"
            ),
        ),
    );
    cfg.write(
        "routes.yaml",
        &format!(
            r#"
route_configs:
  - name: main
    request_headers_to_add:
      - header: {{ key: x-client-ip, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }}
        append_action: overwrite_if_exists_or_add
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: /limited }}
            route: {{ cluster: app }}
            rate_limit: {{ requests_per_unit: 1, unit: minute, key: {{ source_ip: true }} }}
          - match: {{ prefix: /hashed }}
            route:
              cluster: ab
              hash_policy: [{{ connection_properties: {{ source_ip: true }} }}]
          - match: {{ prefix: / }}
            route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{}" }}]
  - name: ab
    lb_policy: ring_hash
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}]
"#,
            app.addr, a.addr, b.addr
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Xff {
        tern,
        ports,
        log,
        _cfg: cfg,
        _backends: vec![app, a, b],
    }
}

#[tokio::test]
async fn the_client_is_found_with_0_1_and_2_trusted_hops() {
    let s = xff_setup().await;
    let url = |i: usize| format!("http://127.0.0.1:{}/echo", s.ports[i]);
    let alb = [
        ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
        ("x-forwarded-proto", "https"),
    ];

    // No trusted hop: the peer is the client, the header is the client's own claim.
    let h = got(&get(&url(0), &alb).await.body);
    assert_eq!(h["x-forwarded-for"], "198.51.100.1, 203.0.113.9, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "an untrusted claim is overwritten"
    );
    assert_eq!(h["x-client-ip"], "127.0.0.1");

    // One trusted hop (an ALB): the address it appended is the client; its scheme is kept.
    let h = got(&get(&url(1), &alb).await.body);
    assert_eq!(h["x-forwarded-for"], "198.51.100.1, 203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-client-ip"], "203.0.113.9");
    // Without the header the trusted hop sent nothing to trust: the peer, and http.
    let h = got(&get(&url(1), &[]).await.body);
    assert_eq!(h["x-client-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");

    // Two trusted hops: the second address from the right.
    let h = got(&get(&url(2), &alb).await.body);
    assert_eq!(h["x-client-ip"], "198.51.100.1");
    // Fewer addresses than trusted hops, or garbage: the peer.
    let short = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(
        got(&get(&url(2), &short).await.body)["x-client-ip"],
        "127.0.0.1"
    );
    let bad = [("x-forwarded-for", "nonsense, 203.0.113.9")];
    assert_eq!(
        got(&get(&url(2), &bad).await.body)["x-client-ip"],
        "127.0.0.1"
    );

    // skip_xff_append: the list goes on as received, the client is still found.
    let h = got(&get(&url(3), &alb).await.body);
    assert_eq!(h["x-forwarded-for"], "198.51.100.1, 203.0.113.9");
    assert_eq!(h["x-client-ip"], "203.0.113.9");

    // The access log shows the client (port 0: it came from a header) and the direct peer.
    let lines = wait_for("access log lines of every listener", || async {
        let t = std::fs::read_to_string(&s.log).unwrap_or_default();
        (t.lines().count() >= 7).then_some(t)
    })
    .await;
    assert!(
        lines.contains("hops0 127.0.0.1:"),
        "peer with its port: {lines}"
    );
    assert!(
        lines.contains("hops1 203.0.113.9:0 203.0.113.9 127.0.0.1 200"),
        "{lines}"
    );
    assert!(
        lines.contains("hops2 198.51.100.1:0 198.51.100.1 127.0.0.1 200"),
        "{lines}"
    );
}

#[tokio::test]
async fn rate_limits_and_hash_policies_key_on_the_real_client() {
    let s = xff_setup().await;
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", s.ports[1]);
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    // Every request comes from the same peer (127.0.0.1, "the ALB"): only the client differs.
    assert_eq!(
        get(&url("/limited"), &from("203.0.113.1")).await.status,
        200
    );
    let r = get(&url("/limited"), &from("203.0.113.1")).await;
    assert_eq!(r.status, 429, "the same client again: {}", r.body);
    assert_eq!(
        get(&url("/limited"), &from("203.0.113.2")).await.status,
        200,
        "another client behind the same ALB has its own bucket"
    );

    // ring_hash on source_ip: one client always lands on the same endpoint, clients spread.
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let ip: &'static str = Box::leak(format!("198.51.100.{i}").into_boxed_str());
        let first = json(&get(&url("/hashed"), &from(ip)).await.body)["backend"].clone();
        let again = json(&get(&url("/hashed"), &from(ip)).await.body)["backend"].clone();
        assert_eq!(first, again, "client {ip} moved");
        seen.insert(first.to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "20 clients all hashed to one endpoint: {seen:?}"
    );
    drop(s.tern);
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------------

struct Pp {
    tern: Tern,
    /// HTTP, header required.
    http: u16,
    /// HTTP, header optional.
    optional: u16,
    /// TCP proxy to the echo backend, header required.
    tcp: u16,
    _cfg: ConfigDir,
    _app: Backend,
}

async fn pp_setup() -> Pp {
    let app = Backend::start("app").await;
    let (admin, http, optional, tcp) = (free_port(), free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "config.yaml",
        &format!(
            r#"
listeners:
  - name: nlb
    address: 127.0.0.1:{http}
    route_config: main
    proxy_protocol: true
    listener_filters_timeout: 500ms
  - name: mixed
    address: 127.0.0.1:{optional}
    route_config: main
    proxy_protocol: true
    allow_requests_without_proxy_protocol: true
  - name: tcp
    address: 127.0.0.1:{tcp}
    tcp_proxy: {{ cluster: app }}
    proxy_protocol: true
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        request_headers_to_add:
          - header: {{ key: x-direct, value: "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%" }}
          - header: {{ key: x-remote, value: "%DOWNSTREAM_REMOTE_ADDRESS%" }}
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{}" }}]
"#,
            app.addr
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Pp {
        tern,
        http,
        optional,
        tcp,
        _cfg: cfg,
        _app: app,
    }
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_give_the_client_address() {
    let s = pp_setup().await;
    // v1, then the request in the same segment.
    let r = raw(
        s.http,
        &[&[
            b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n".as_slice(),
            GET_CLOSE,
        ]
        .concat()],
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let h = got(body_of(&r));
    assert_eq!(h["x-forwarded-for"], "198.51.100.7");
    assert_eq!(h["x-remote"], "198.51.100.7:40000");
    assert_eq!(h["x-direct"], "127.0.0.1");

    // v1 over IPv6, in pieces: shorter than the signature, then the rest, then the request.
    let r = raw(
        s.http,
        &[
            b"PRO",
            b"XY TCP6 2001:db8::7 2001:db8::1 40001 80\r",
            b"\n",
            GET_CLOSE,
        ],
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(got(body_of(&r))["x-forwarded-for"], "2001:db8::7");

    // v2 as an NLB sends it (with a TLV).
    let r = raw(s.http, &[&v2_nlb(), GET_CLOSE]).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(got(body_of(&r))["x-remote"], "198.51.100.20:4444");

    // v2 LOCAL (the NLB's own health check) and v1 UNKNOWN: the connection's peer stands.
    let r = raw(s.http, &[&v2(0, 0, &[]), GET_CLOSE]).await;
    assert_eq!(got(body_of(&r))["x-forwarded-for"], "127.0.0.1", "{r}");
    let r = raw(s.http, &[b"PROXY UNKNOWN\r\n", GET_CLOSE]).await;
    assert_eq!(got(body_of(&r))["x-forwarded-for"], "127.0.0.1", "{r}");

    // Where the header is optional: with one, and without.
    let r = raw(s.optional, &[&v2_nlb(), GET_CLOSE]).await;
    assert_eq!(got(body_of(&r))["x-forwarded-for"], "198.51.100.20", "{r}");
    let r = get(&format!("http://127.0.0.1:{}/plain", s.optional), &[]).await;
    assert_eq!(got(&r.body)["x-forwarded-for"], "127.0.0.1");

    // TCP listener: the header is taken off, the bytes after it reach the backend as they were.
    let r = raw(s.tcp, &[&v2_nlb(), GET_CLOSE]).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(json(body_of(&r))["uri"], "/echo");
    let r = raw(
        s.tcp,
        &[&[
            b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n".as_slice(),
            GET_CLOSE,
        ]
        .concat()],
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(
        s.tern
            .stat("listener.nlb.downstream_cx_proxy_proto_error")
            .await,
        0
    );
}

#[tokio::test]
async fn missing_malformed_and_late_proxy_headers_are_refused_and_counted() {
    let s = pp_setup().await;
    let stat = |name: &'static str, what: &'static str| {
        let t = &s.tern;
        async move {
            t.stat(&format!("listener.{name}.downstream_cx_proxy_proto_{what}"))
                .await
        }
    };
    // Missing where required: closed without an answer, on HTTP and TCP listeners.
    assert_eq!(raw(s.http, &[GET_CLOSE]).await, "");
    assert_eq!(raw(s.tcp, &[GET_CLOSE]).await, "");
    assert_eq!(stat("nlb", "not_found").await, 1);
    assert_eq!(stat("tcp", "not_found").await, 1);

    // Malformed: each closed, none answered.
    let too_long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 300], b"\r\n"].concat();
    let mut bad_family = v2_nlb();
    bad_family[13] = 0x91;
    let mut huge_garbage = b"PROXY ".to_vec();
    huge_garbage.extend((0..64 * 1024).map(|i| (i * 7 % 251) as u8));
    let hostile: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 198.51.100.7 10.0.0.1 99999 80\r\n".to_vec(),
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        b"PROXY \r\n".to_vec(),
        too_long,
        bad_family,
        v2(1, 0x21, &[1, 2, 3, 4]),
        huge_garbage,
    ];
    for h in &hostile {
        let r = raw(s.http, &[h, GET_CLOSE]).await;
        assert_eq!(
            r,
            "",
            "answered a malformed header {:?}",
            &h[..h.len().min(40)]
        );
    }
    let r = raw(s.tcp, &[b"PROXY TCP4 nope\r\n", GET_CLOSE]).await;
    assert_eq!(r, "");
    assert_eq!(stat("nlb", "error").await, hostile.len() as i64);
    assert_eq!(stat("tcp", "error").await, 1);

    // Late: a header that never ends is cut at listener_filters_timeout (500ms here).
    let mut c = TcpStream::connect(("127.0.0.1", s.http)).await.unwrap();
    c.write_all(b"PROXY TCP4 198.51.100.7").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed after the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // So is one that stops before its signature is whole.
    let mut c = TcpStream::connect(("127.0.0.1", s.http)).await.unwrap();
    c.write_all(b"\r\n\r\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed after the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(stat("nlb", "error").await, hostile.len() as i64 + 2);

    // The proxy keeps serving.
    let r = raw(s.http, &[&v2_nlb(), GET_CLOSE]).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

// ---------------------------------------------------------------------------------------------
// Header rules
// ---------------------------------------------------------------------------------------------

const RULES: &str = r#"
route_configs:
  - name: main
    request_headers_to_add:
      - { header: { key: x-level, value: rc }, append_action: overwrite_if_exists_or_add }
      - { header: { key: x-trail, value: rc } }
      - { header: { key: x-env, value: prod }, append_action: add_if_absent }
    request_headers_to_remove: [x-secret]
    response_headers_to_add:
      - { header: { key: x-level, value: rc }, append_action: overwrite_if_exists_or_add }
      - { header: { key: x-trail, value: rc } }
      - { header: { key: cache-control, value: no-store }, append_action: overwrite_if_exists }
    response_headers_to_remove: [x-backend]
    virtual_hosts:
      - name: all
        domains: ["*"]
        request_headers_to_add:
          - { header: { key: x-level, value: vh }, append_action: overwrite_if_exists_or_add }
          - { header: { key: x-trail, value: vh } }
        response_headers_to_add:
          - { header: { key: x-level, value: vh }, append_action: overwrite_if_exists_or_add }
          - { header: { key: x-trail, value: vh } }
          - { header: { key: x-asked, value: "%REQ(x-ask)%" } }
          - { header: { key: x-status, value: "%RESPONSE_CODE% via %ROUTE_NAME%" } }
        routes:
          - name: split
            match: { prefix: /split }
            request_headers_to_add:
              - { header: { key: x-level, value: route }, append_action: overwrite_if_exists_or_add }
              - { header: { key: x-trail, value: route } }
              - { header: { key: x-only-if, value: replaced }, append_action: overwrite_if_exists }
              - { header: { key: x-never, value: added }, append_action: overwrite_if_exists }
              - { header: { key: x-empty, value: "%REQ(x-missing)%" } }
              - { header: { key: x-kept, value: "%REQ(x-missing)%" }, keep_empty_value: true }
              - { header: { key: x-path, value: "%REQ(:METHOD)% %REQ(:PATH)% %UPSTREAM_CLUSTER%" } }
            response_headers_to_add:
              - { header: { key: x-level, value: route }, append_action: overwrite_if_exists_or_add }
              - { header: { key: x-trail, value: route } }
            route:
              prefix_rewrite: /rewritten
              weighted_clusters:
                clusters:
                  - name: app
                    weight: 1
                    request_headers_to_add:
                      - { header: { key: x-level, value: cluster }, append_action: overwrite_if_exists_or_add }
                      - { header: { key: x-trail, value: cluster } }
                    response_headers_to_add:
                      - { header: { key: x-level, value: cluster }, append_action: overwrite_if_exists_or_add }
                      - { header: { key: x-trail, value: cluster } }
                      - { header: { key: x-cluster-asked, value: "%REQ(x-ask2)%" } }
          - name: direct
            match: { prefix: /direct }
            direct_response: { status: 202, body: "direct\n" }
            response_headers_to_add:
              - { header: { key: x-level, value: route }, append_action: overwrite_if_exists_or_add }
          - name: limited
            match: { prefix: /limited }
            rate_limit: { requests_per_unit: 1, unit: minute }
            route: { cluster: app }
          - name: dead
            match: { prefix: /dead }
            route: { cluster: dead }
"#;

#[tokio::test]
async fn header_rules_apply_at_every_level_most_specific_last() {
    let app = Backend::start("app").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "listener.yaml",
        &format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:{port}\n    route_config: main\n"
        ),
    );
    cfg.write("routes.yaml", RULES);
    cfg.write(
        "clusters.yaml",
        &format!(
            "clusters:\n  - name: app\n    endpoints: [{{ address: \"{}\" }}]\n  - name: dead\n    connect_timeout: 200ms\n    endpoints: [{{ address: \"127.0.0.1:{}\" }}]\n",
            app.addr,
            free_port()
        ),
    );
    let t = Tern::start(cfg.path(), admin, &[]).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let r = get(
        &url("/split/x?q=1"),
        &[
            ("x-secret", "s"),
            ("x-env", "staging"),
            ("x-trail", "client"),
            ("x-only-if", "client"),
            ("x-ask", "asked"),
            ("x-ask2", "asked2"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = json(&r.body);
    assert_eq!(j["uri"], "/rewritten/x?q=1");
    let h = &j["headers"];
    // Overwrites: the most specific level (the weighted cluster) is applied last and wins.
    assert_eq!(h["x-level"], "cluster");
    // Appends keep every level's value, least specific first, after the client's.
    assert_eq!(h["x-trail"], "client, rc, vh, route, cluster");
    assert_eq!(h["x-env"], "staging", "add_if_absent keeps the client's");
    assert_eq!(
        h["x-only-if"], "replaced",
        "overwrite_if_exists replaces one that is there"
    );
    assert!(
        h.get("x-never").is_none(),
        "overwrite_if_exists adds nothing"
    );
    assert!(h.get("x-secret").is_none(), "removed");
    assert!(h.get("x-empty").is_none(), "an empty value is left out");
    assert_eq!(h["x-kept"], "", "unless keep_empty_value");
    assert_eq!(
        h["x-path"], "GET /split/x?q=1 app",
        "the request as received"
    );

    // The response, through the same levels.
    assert_eq!(r.headers["x-level"], "cluster");
    let trail: Vec<&str> = r
        .headers
        .get_all("x-trail")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(trail, ["rc", "vh", "route", "cluster"]);
    assert!(
        r.headers.get("x-backend").is_none(),
        "removed from the response"
    );
    assert!(
        r.headers.get("cache-control").is_none(),
        "overwrite_if_exists: absent stays absent"
    );
    assert_eq!(
        r.headers["x-asked"], "asked",
        "%REQ()% of the request, in a response rule"
    );
    assert_eq!(r.headers["x-cluster-asked"], "asked2");
    assert_eq!(r.headers["x-status"], "200 via split");

    // The proxy's own replies carry the response rules of their levels too.
    let r = get(&url("/direct"), &[("x-ask", "d")]).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.headers["x-level"], "route");
    assert_eq!(r.headers["x-asked"], "d");
    assert_eq!(r.headers["x-status"], "202 via direct");
    assert_eq!(get(&url("/limited"), &[]).await.status, 200);
    let r = get(&url("/limited"), &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["x-level"], "vh");
    assert_eq!(r.headers["x-status"], "429 via limited");
    let r = get(&url("/dead"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-level"], "vh");
    let trail: Vec<_> = r.headers.get_all("x-trail").iter().collect();
    assert_eq!(trail, ["rc", "vh"]);
    drop(t);
}

#[tokio::test]
async fn requests_without_rules_keep_their_headers_and_no_route_replies_get_route_config_rules() {
    let app = Backend::start("app").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "config.yaml",
        &format!(
            r#"
listeners:
  - {{ name: l, address: "127.0.0.1:{port}", route_config: main }}
route_configs:
  - name: main
    response_headers_to_add:
      - {{ header: {{ key: x-served-by, value: tern }} }}
    virtual_hosts:
      - name: only
        domains: ["only.example"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{}" }}]
"#,
            app.addr
        ),
    );
    let _t = Tern::start(cfg.path(), admin, &[]).await;
    let r = get(
        &format!("http://127.0.0.1:{port}/x"),
        &[("host", "other.example")],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-served-by"], "tern");
    let r = get(
        &format!("http://127.0.0.1:{port}/x"),
        &[("host", "only.example"), ("x-a", "1")],
    )
    .await;
    assert_eq!(r.headers["x-served-by"], "tern");
    assert_eq!(got(&r.body)["x-a"], "1");
}

#[test]
fn header_rules_that_touch_protected_headers_or_unknown_values_are_config_errors() {
    let cfg = ConfigDir::new();
    cfg.write(
        "bad.yaml",
        r#"
listeners:
  - { name: l, address: "127.0.0.1:1", route_config: main, skip_xff_append: true }
  - { name: t, address: "127.0.0.1:2", tcp_proxy: { cluster: c }, xff_num_trusted_hops: 1, allow_requests_without_proxy_protocol: true }
route_configs:
  - name: main
    request_headers_to_add:
      - { header: { key: ":path", value: /x } }
      - { header: { key: Connection, value: close } }
      - { header: { key: host, value: evil } }
      - { header: { key: x-code, value: "%RESPONSE_CODE%" } }
      - { header: { key: "bad name", value: x } }
    response_headers_to_remove: [transfer-encoding]
    response_headers_to_add:
      - { header: { key: host, value: fine-on-a-response } }
      - { header: { key: x-took, value: "%DURATION%" } }
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: { prefix: / }
            direct_response: { status: 200 }
clusters:
  - name: c
    max_requests_per_connection: 0
    upstream_connection_options: { tcp_keepalive: { keepalive_time: 1500ms, keepalive_probes: 0 } }
    endpoints: [{ address: "127.0.0.1:3" }]
"#,
    );
    let report = tern_config::load(cfg.path());
    let got: Vec<(u32, &str)> = report
        .diagnostics
        .iter()
        .map(|d| (d.line, d.code))
        .collect();
    let want = [
        (4, "E004"),  // xff_num_trusted_hops on a TCP listener
        (4, "E004"),  // allow_requests_without_proxy_protocol without proxy_protocol
        (8, "E010"),  // :path
        (9, "E010"),  // connection
        (10, "E010"), // host on a request
        (11, "E004"), // %RESPONSE_CODE% before the response
        (12, "E004"), // bad name
        (13, "E010"), // transfer-encoding
        (16, "E004"), // %DURATION% when headers are sent
        (25, "E004"), // max_requests_per_connection 0
        (26, "E004"), // keepalive_time not whole seconds, keepalive_probes 0
    ];
    for w in want {
        assert!(got.contains(&w), "{w:?} missing: {:#?}", report.diagnostics);
    }
    assert_eq!(got.len(), 12, "{:#?}", report.diagnostics);
    assert!(
        !got.iter().any(|(l, _)| *l == 3 || *l == 15),
        "skip_xff_append on an HTTP listener and `host` on a response are fine: {got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream connection reuse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn max_requests_per_connection_and_idle_timeout_bound_reuse() {
    let (limited, idle) = (
        Backend::start("limited").await,
        Backend::start("idle").await,
    );
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write(
        "config.yaml",
        &format!(
            r#"
listeners:
  - {{ name: l, address: "127.0.0.1:{port}", route_config: main }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: /limited }}
            route: {{ cluster: limited }}
          - match: {{ prefix: /idle }}
            route: {{ cluster: idle }}
clusters:
  - name: limited
    max_requests_per_connection: 2
    upstream_connection_options: {{ tcp_keepalive: {{ keepalive_time: 30s, keepalive_interval: 5s, keepalive_probes: 3 }} }}
    endpoints: [{{ address: "{}" }}]
  - name: idle
    idle_timeout: 300ms
    endpoints: [{{ address: "{}" }}]
"#,
            limited.addr, idle.addr
        ),
    );
    let _t = Tern::start(cfg.path(), admin, &[]).await;
    let conns = |b: &Backend| b.conns.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(
            get(&format!("http://127.0.0.1:{port}/limited"), &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        conns(&limited),
        3,
        "two requests per connection: 5 requests, 3 connections"
    );

    let url = format!("http://127.0.0.1:{port}/idle");
    get(&url, &[]).await;
    get(&url, &[]).await;
    assert_eq!(conns(&idle), 1, "reused while fresh");
    // The idle timeout has to pass (any longer wait gives the same answer).
    tokio::time::sleep(Duration::from_millis(600)).await;
    get(&url, &[]).await;
    assert_eq!(
        conns(&idle),
        2,
        "an idle connection older than idle_timeout is not reused"
    );
}
