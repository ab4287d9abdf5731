//! TLS through a real `tern` process, with certificates made here (rcgen) and real TLS peers:
//! HTTPS upstreams verified against a private CA (by SNI, by IP, by SAN list), the 503 and flag
//! of a failed verification, upstream mutual TLS, TLS health checks and the upstream TLS version
//! in the access log.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_testkit::{admin_yaml, free_port, get, wait_for, Ca, ConfigDir, Leaf, Tern};

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// An HTTPS backend with `leaf`; with `client_ca`, it requires a client certificate from it.
/// Answers `sni=NAME client=CN` (what the TLS handshake told it), on HTTP/1.1.
async fn https_backend(leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
    let builder = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                ring(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs(&leaf.cert), key(&leaf.key))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let sni = conn.server_name().unwrap_or("-").to_string();
                let client = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| tern_config::tls::CertFacts::of(c).unwrap().subject)
                    .unwrap_or_else(|| "-".into());
                let body = format!("sni={sni} client={client}");
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// One HTTP listener on `port` routing `/NAME/...` to cluster `NAME` for each cluster given,
/// with an access log at `log`.
fn routes_yaml(port: u16, log: &Path, clusters: &[&str]) -> String {
    let mut y = format!(
        "listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    route_config: main
    access_log:
      - path: {}
        format: \"%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_TLS_VERSION%\"
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes:
",
        log.display()
    );
    for c in clusters {
        y.push_str(&format!(
            "          - match: {{ prefix: /{c}/ }}\n            route: {{ cluster: {c}, timeout: 5s }}\n"
        ));
    }
    y
}

/// Reads the access log until it has a line starting with `path `.
async fn log_line(log: &Path, path: &str) -> String {
    wait_for(&format!("an access log line for {path}"), || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(&format!("{path} ")))
            .map(str::to_string)
    })
    .await
}

/// Waits until stat `name` is above zero.
async fn stat_above_zero(tern: &Tern, name: &str) {
    wait_for(name, || async { (tern.stat(name).await > 0).then_some(()) }).await;
}

#[tokio::test]
async fn https_upstreams_are_verified_and_failures_are_503_upstream_tls_error() {
    let ca = Ca::new("Upstream CA");
    let other_ca = Ca::new("Someone Else");
    let api = https_backend(&ca.leaf("api", &["api.internal", "127.0.0.1"]), None).await;
    let spiffe = https_backend(&ca.leaf("pay", &["spiffe://prod/payments"]), None).await;
    let port = free_port();
    let admin = free_port();
    let cfg = ConfigDir::new();
    cfg.write("certs/upstream-ca.pem", &ca.pem());
    cfg.write("certs/other-ca.pem", &other_ca.pem());
    let log = cfg.path().join("access.log");
    let mut y = admin_yaml(admin);
    y.push_str(&routes_yaml(
        port,
        &log,
        &[
            "bysni", "byip", "wrongca", "wrongsan", "bysan", "plain", "silent", "auto",
        ],
    ));
    // A host name endpoint (from DNS): its name is the SNI and what is verified (auto_sni).
    let dns = tern_testkit::DnsServer::start().await;
    dns.set("api.internal", &["127.0.0.1"], 60);
    y.push_str(&format!(
        "dns: {{ resolvers: [\"{}\"], timeout: 200ms, attempts: 1 }}\n",
        dns.resolver()
    ));
    // Accepts (the kernel does) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let api_port = api.port();
    y.push_str(&format!(
        "clusters:
  - name: bysni
    endpoints: [{{ address: \"{api}\" }}]
    tls: {{ sni: api.internal, ca: {{ file: certs/upstream-ca.pem }} }}
  - name: byip
    endpoints: [{{ address: \"{api}\" }}]
    tls: {{ ca: {{ file: certs/upstream-ca.pem }}, min_version: TLSv1_2, max_version: TLSv1_2 }}
  - name: wrongca
    endpoints: [{{ address: \"{api}\" }}]
    tls: {{ sni: api.internal, ca: {{ file: certs/other-ca.pem }} }}
  - name: wrongsan
    endpoints: [{{ address: \"{api}\" }}]
    tls: {{ sni: db.internal, ca: {{ file: certs/upstream-ca.pem }} }}
  - name: bysan
    endpoints: [{{ address: \"{spiffe}\" }}]
    tls:
      ca: {{ file: certs/upstream-ca.pem }}
      verify_subject_alt_names: [spiffe://prod/orders, spiffe://prod/payments]
  - name: plain
    endpoints: [{{ address: \"{api}\" }}]
  - name: auto
    endpoints: [{{ address: \"api.internal:{api_port}\" }}]
    tls: {{ ca: {{ file: certs/upstream-ca.pem }} }}
  - name: silent
    connect_timeout: 0.3s
    endpoints: [{{ address: \"{silent_addr}\" }}]
    tls: {{ sni: api.internal, ca: {{ file: certs/upstream-ca.pem }} }}
"
    ));
    cfg.write("tern.yaml", &y);
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // Verified by the configured SNI name, which the upstream receives.
    let r = get(&url("/bysni/x"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=api.internal client=-")
    );
    let r = get(&url("/auto/x"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=api.internal client=-")
    );
    // An endpoint written as an IP: no SNI, verified by the certificate's IP address.
    let r = get(&url("/byip/x"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "sni=- client=-"));
    // Verified by a URI SAN of the list.
    assert_eq!(get(&url("/bysan/x"), &[]).await.status, 200);
    for bad in ["/wrongca/x", "/wrongsan/x"] {
        let r = get(&url(bad), &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "upstream TLS error\n"),
            "{bad}"
        );
    }
    // A handshake that never completes within connect_timeout is a TLS failure too.
    let r = get(&url("/silent/x"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "upstream TLS error\n"));
    assert_eq!(
        tern.stat("cluster.silent.upstream_ssl.connection_error")
            .await,
        1
    );
    // Plain HTTP to a TLS port is no TLS error: the upstream just fails.
    assert_ne!(get(&url("/plain/x"), &[]).await.status, 200);

    assert_eq!(log_line(&log, "/bysni/x").await, "/bysni/x 200 - TLSv1.3");
    assert_eq!(log_line(&log, "/byip/x").await, "/byip/x 200 - TLSv1.2");
    assert_eq!(log_line(&log, "/wrongca/x").await, "/wrongca/x 503 UF -");
    assert_eq!(
        tern.stat("cluster.wrongca.upstream_ssl.fail_verify_error")
            .await,
        1
    );
    assert_eq!(
        tern.stat("cluster.wrongsan.upstream_ssl.fail_verify_san")
            .await,
        1
    );
    assert_eq!(
        tern.stat("cluster.wrongsan.upstream_ssl.connection_error")
            .await,
        1
    );
    assert_eq!(tern.stat("cluster.bysni.upstream_ssl.handshake").await, 1);
    // The CA is shown by its file, never its content.
    let dump = tern.config_dump().await.to_string();
    assert!(dump.contains("certs/upstream-ca.pem") && !dump.contains("BEGIN"));

    // A reload that changes a cluster's TLS leaves no connection verified under the old rules:
    // the pooled connection of /bysni is not reused once its CA no longer vouches for it.
    let before = tern.config_dump().await["version"].clone();
    let changed = y.replacen(
        "tls: { sni: api.internal, ca: { file: certs/upstream-ca.pem } }",
        "tls: { sni: api.internal, ca: { file: certs/other-ca.pem } }",
        1,
    );
    assert_ne!(changed, y);
    cfg.write("tern.yaml", &changed);
    wait_for("the reload", || async {
        (tern.config_dump().await["version"] != before).then_some(())
    })
    .await;
    let r = get(&url("/bysni/again"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "upstream TLS error\n"));
}

#[tokio::test]
async fn upstream_mutual_tls_and_tls_health_checks() {
    let ca = Ca::new("Mesh CA");
    let server = ca.leaf("orders", &["orders.mesh"]);
    let client = ca.leaf("edge-proxy", &["spiffe://mesh/edge"]);
    let mtls = https_backend(&server, Some(&ca)).await;
    let port = free_port();
    let admin = free_port();
    let cfg = ConfigDir::new();
    cfg.write("pki/ca.pem", &ca.pem());
    cfg.write("pki/client.pem", &client.cert);
    cfg.write("pki/client.key", &client.key);
    let log = cfg.path().join("access.log");
    let mut y = admin_yaml(admin);
    y.push_str(&routes_yaml(port, &log, &["mtls", "nocert"]));
    let hc = "health_checks:
      - { timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http: { path: /health } }";
    y.push_str(&format!(
        "clusters:
  - name: mtls
    endpoints: [{{ address: \"{mtls}\" }}]
    {hc}
    tls:
      sni: orders.mesh
      ca: {{ file: pki/ca.pem }}
      client_certificate:
        certificate_chain: {{ file: pki/client.pem }}
        private_key: {{ file: pki/client.key }}
  - name: nocert
    endpoints: [{{ address: \"{mtls}\" }}]
    {hc}
    tls: {{ sni: orders.mesh, ca: {{ file: pki/ca.pem }} }}
"
    ));
    cfg.write("tern.yaml", &y);
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    // The health check speaks TLS with the client certificate: the endpoint becomes healthy.
    stat_above_zero(&tern, "cluster.mtls.health_check_success").await;
    let r = get(&format!("http://127.0.0.1:{port}/mtls/x"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=orders.mesh client=CN=edge-proxy")
    );
    // Without a client certificate the handshake fails: health checks fail, requests get 503.
    stat_above_zero(&tern, "cluster.nocert.health_check_failure").await;
    assert_eq!(tern.stat("cluster.nocert.health_check_success").await, 0);
    let r = get(&format!("http://127.0.0.1:{port}/nocert/x"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
}

// ---------------------------------------------------------------------------------------------
// Termination: listeners
// ---------------------------------------------------------------------------------------------

/// A client configuration trusting `ca`, offering `alpn`, presenting `cert` if given; its
/// session cache lets a second connection resume.
fn client_config(ca: &Ca, alpn: &[&str], cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match cert {
        Some(l) => b
            .with_client_auth_cert(certs(&l.cert), key(&l.key))
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(c)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(
    port: u16,
    sni: &str,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
}

/// The subject of the certificate the server presented.
fn server_subject(s: &Tls) -> String {
    let c = s.get_ref().1.peer_certificates().unwrap();
    tern_config::tls::CertFacts::of(&c[0]).unwrap().subject
}

/// One GET over an established TLS stream, HTTP/2 when ALPN chose it: status, body, version.
async fn get_over(
    s: Tls,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, http::Version), String> {
    use http_body_util::BodyExt;
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut b = hyper::Request::get(if h2 {
        format!("https://{host}{path}")
    } else {
        path.to_string()
    });
    if !h2 {
        b = b.header("host", host);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(s),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        version,
    ))
}

/// The request headers the echo backend got.
fn echoed(body: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(body).unwrap_or_else(|e| panic!("{e}: {body}"))
        ["headers"]
        .clone()
}

struct Edge {
    tern: Tern,
    cfg: ConfigDir,
    ca: Ca,
    client: Leaf,
    /// Plain, TLS (three certificates), mTLS required (sanitize_set), mTLS optional
    /// (append_forward), mTLS optional (forward_only), plain (always_forward_only).
    ports: [u16; 6],
    log: std::path::PathBuf,
    _app: tern_testkit::Backend,
}

async fn edge() -> Edge {
    let app = tern_testkit::Backend::start("app").await;
    let ca = Ca::new("Edge CA");
    let client = ca.leaf("mobile-app", &["spiffe://prod/mobile", "app.clients.test"]);
    let cfg = ConfigDir::new();
    cfg.write("certs/ca.pem", &ca.pem());
    for (name, cn, sans) in [
        ("default", "default", vec!["default.test"]),
        ("api", "api", vec!["api.test", "spiffe://prod/edge"]),
        ("wild", "wildcard", vec!["*.apps.test"]),
    ] {
        let l = ca.leaf(cn, &sans);
        cfg.write(&format!("certs/{name}.pem"), &l.cert);
        cfg.write(&format!("certs/{name}.key"), &l.key);
    }
    let ports = [(); 6].map(|_| free_port());
    let admin = free_port();
    let log = cfg.path().join("access.log");
    let cert = |n: &str, names: &str| {
        format!("        - {{ certificate_chain: {{ file: certs/{n}.pem }}, private_key: {{ file: certs/{n}.key }}, server_names: {names} }}\n")
    };
    let certs3 = format!(
        "{}{}{}",
        cert("default", "[]"),
        cert("api", "[api.test]"),
        cert("wild", "[\"*.apps.test\"]")
    );
    let api_only = cert("api", "[]");
    let y = format!(
        "{admin_yaml}listeners:
  - name: plain
    address: 127.0.0.1:{p0}
    route_config: main
  - name: tls
    address: 127.0.0.1:{p1}
    route_config: main
    access_log:
      - path: {log}
        format: \"%REQ(:PATH)% %DOWNSTREAM_TLS_VERSION% %REQUESTED_SERVER_NAME% %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_URI_SAN% %PROTOCOL% %DOWNSTREAM_TLS_CIPHER%\"
    tls:
      certificates:
{certs3}  - name: mtls
    address: 127.0.0.1:{p2}
    route_config: main
    forward_client_cert_details: sanitize_set
    set_current_client_cert_details: {{ subject: true, uri: true, dns: true }}
    access_log:
      - path: {log}
        format: \"%REQ(:PATH)% %DOWNSTREAM_TLS_VERSION% %REQUESTED_SERVER_NAME% %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_URI_SAN% %PROTOCOL%\"
    tls:
      certificates:
{api_only}      client_ca: {{ file: certs/ca.pem }}
      require_client_certificate: true
  - name: optional
    address: 127.0.0.1:{p3}
    route_config: main
    forward_client_cert_details: append_forward
    set_current_client_cert_details: {{ subject: true }}
    tls:
      certificates:
{api_only}      client_ca: {{ file: certs/ca.pem }}
  - name: forward-only
    address: 127.0.0.1:{p4}
    route_config: main
    forward_client_cert_details: forward_only
    tls:
      certificates:
{api_only}      client_ca: {{ file: certs/ca.pem }}
  - name: trusting
    address: 127.0.0.1:{p5}
    route_config: main
    forward_client_cert_details: always_forward_only
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes:
          - match: {{ prefix: /secure }}
            redirect: {{ https_redirect: true, port_redirect: {p1} }}
          - match: {{ prefix: / }}
            route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: \"{app}\" }}]
",
        admin_yaml = admin_yaml(admin),
        p0 = ports[0],
        p1 = ports[1],
        p2 = ports[2],
        p3 = ports[3],
        p4 = ports[4],
        p5 = ports[5],
        log = log.display(),
        app = app.addr,
    );
    cfg.write("tern.yaml", &y);
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    Edge {
        tern,
        cfg,
        ca,
        client,
        ports,
        log,
        _app: app,
    }
}

#[tokio::test]
async fn sni_selects_the_certificate_and_alpn_serves_h2_and_http1_to_rust_and_curl() {
    let e = edge().await;
    let port = e.ports[1];
    let h2 = client_config(&e.ca, &["h2", "http/1.1"], None);
    let h1 = client_config(&e.ca, &["http/1.1"], None);
    // Exact name, wildcard (one label), and the first certificate for anything else.
    for (sni, subject) in [
        ("api.test", "CN=api"),
        ("x.apps.test", "CN=wildcard"),
        ("default.test", "CN=default"),
    ] {
        let s = tls_connect(port, sni, &h2).await.unwrap();
        assert_eq!(server_subject(&s), subject, "{sni}");
    }
    // HTTP/2 over TLS (ALPN h2), and HTTP/1.1 when the client offers only that.
    let s = tls_connect(port, "api.test", &h2).await.unwrap();
    let (status, body, version) = get_over(s, "api.test", "/h2", &[]).await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_2));
    assert_eq!(echoed(&body)["x-forwarded-proto"], "https");
    let s = tls_connect(port, "api.test", &h1).await.unwrap();
    let (status, body, version) = get_over(s, "api.test", "/h1", &[]).await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_11));
    assert_eq!(echoed(&body)["x-forwarded-proto"], "https");
    // curl, both ways.
    let ca = e.cfg.path().join("certs/ca.pem");
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        // Async: the backend runs on this test's runtime, which a blocking wait would stall.
        let out = tokio::process::Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(&ca)
            .args([
                "--resolve",
                &format!("api.test:{port}:127.0.0.1"),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                &format!("https://api.test:{port}/curl"),
            ])
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {want}"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The access log shows the connection's TLS facts.
    assert_eq!(
        log_line(&e.log, "/h2").await,
        "/h2 TLSv1.3 api.test - - HTTP/2 TLS_AES_256_GCM_SHA384"
    );
    // Session resumption: a second connection of the same client resumes.
    let s = tls_connect(port, "api.test", &h1).await.unwrap();
    assert_eq!(
        s.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    stat_above_zero(&e.tern, "listener.tls.ssl.session_reused").await;
    assert!(e.tern.stat("listener.tls.ssl.handshake").await >= 7);
    // Each certificate's expiry is a gauge.
    let prom = get(&e.tern.admin_url("/stats/prometheus"), &[]).await.body;
    assert!(
        prom.contains("tern_expiration_unix_time_seconds{listener=\"tls\",certificate=")
            && prom.contains("subject=\"CN=wildcard\"}"),
        "{prom}"
    );
}

#[tokio::test]
async fn https_redirect_is_for_plaintext_and_x_forwarded_proto_says_http() {
    let e = edge().await;
    let r = get(&format!("http://127.0.0.1:{}/secure/x", e.ports[0]), &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers.get("location").unwrap(),
        &format!("https://127.0.0.1:{}/secure/x", e.ports[1])
    );
    let r = get(&format!("http://127.0.0.1:{}/plain", e.ports[0]), &[]).await;
    assert_eq!(echoed(&r.body)["x-forwarded-proto"], "http");
    // Over TLS the redirect route is passed over: the request is served.
    let s = tls_connect(e.ports[1], "api.test", &client_config(&e.ca, &[], None))
        .await
        .unwrap();
    let (status, body, _) = get_over(s, "api.test", "/secure/x", &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(echoed(&body)["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn mutual_tls_required_optional_and_xfcc_in_each_mode() {
    let e = edge().await;
    let forged = [(
        "x-forwarded-client-cert",
        "By=spiffe://evil;Hash=00;Subject=\"CN=admin\"",
    )];
    let anon = client_config(&e.ca, &[], None);
    let with_cert = client_config(&e.ca, &[], Some(&e.client));

    // Required: without a certificate the handshake is refused (and counted).
    let refused = match tls_connect(e.ports[2], "api.test", &anon).await {
        Err(_) => true,
        // TLS 1.3: the server's refusal arrives after the client's side of the handshake.
        Ok(s) => get_over(s, "api.test", "/x", &[]).await.is_err(),
    };
    assert!(refused);
    stat_above_zero(&e.tern, "listener.mtls.ssl.fail_verify_no_cert").await;
    // A certificate from another CA: refused too, and counted as a verification failure.
    let stranger = Ca::new("Stranger CA").leaf("mobile-app", &["app.clients.test"]);
    let foreign = client_config(&e.ca, &[], Some(&stranger));
    let refused = match tls_connect(e.ports[2], "api.test", &foreign).await {
        Err(_) => true,
        Ok(s) => get_over(s, "api.test", "/x", &[]).await.is_err(),
    };
    assert!(refused);
    stat_above_zero(&e.tern, "listener.mtls.ssl.fail_verify_error").await;
    // With one: sanitize_set replaces the forged XFCC with this client's element.
    let s = tls_connect(e.ports[2], "api.test", &with_cert)
        .await
        .unwrap();
    let (status, body, _) = get_over(s, "api.test", "/mtls", &forged).await.unwrap();
    assert_eq!(status, 200);
    let xfcc = echoed(&body)["x-forwarded-client-cert"]
        .as_str()
        .unwrap()
        .to_string();
    let hash = {
        use sha2::Digest;
        data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&certs(&e.client.cert)[0]))
    };
    assert_eq!(
        xfcc,
        format!("By=spiffe://prod/edge;Hash={hash};Subject=\"CN=mobile-app\";URI=spiffe://prod/mobile;DNS=app.clients.test")
    );
    assert_eq!(
        log_line(&e.log, "/mtls").await,
        "/mtls TLSv1.3 api.test CN=mobile-app spiffe://prod/mobile HTTP/1.1"
    );

    // Optional, append_forward: without a certificate served, no XFCC (the forged one removed).
    let s = tls_connect(e.ports[3], "api.test", &anon).await.unwrap();
    let (status, body, _) = get_over(s, "api.test", "/opt", &forged).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        echoed(&body).get("x-forwarded-client-cert").is_none(),
        "{body}"
    );
    stat_above_zero(&e.tern, "listener.optional.ssl.no_certificate").await;
    // With one: appended to what the client sent.
    let s = tls_connect(e.ports[3], "api.test", &with_cert)
        .await
        .unwrap();
    let (_, body, _) = get_over(s, "api.test", "/opt", &forged).await.unwrap();
    assert_eq!(
        echoed(&body)["x-forwarded-client-cert"],
        format!(
            "{},By=spiffe://prod/edge;Hash={hash};Subject=\"CN=mobile-app\"",
            forged[0].1
        )
    );

    // forward_only: forwarded as sent on mutual TLS, removed otherwise.
    let s = tls_connect(e.ports[4], "api.test", &with_cert)
        .await
        .unwrap();
    let (_, body, _) = get_over(s, "api.test", "/fwd", &forged).await.unwrap();
    assert_eq!(echoed(&body)["x-forwarded-client-cert"], forged[0].1);
    let s = tls_connect(e.ports[4], "api.test", &anon).await.unwrap();
    let (_, body, _) = get_over(s, "api.test", "/fwd", &forged).await.unwrap();
    assert!(echoed(&body).get("x-forwarded-client-cert").is_none());

    // The default (sanitize) removes a client's XFCC, TLS or not; always_forward_only keeps it.
    let r = get(&format!("http://127.0.0.1:{}/x", e.ports[0]), &forged).await;
    assert!(echoed(&r.body).get("x-forwarded-client-cert").is_none());
    let s = tls_connect(e.ports[1], "api.test", &anon).await.unwrap();
    let (_, body, _) = get_over(s, "api.test", "/x", &forged).await.unwrap();
    assert!(echoed(&body).get("x-forwarded-client-cert").is_none());
    let r = get(&format!("http://127.0.0.1:{}/x", e.ports[5]), &forged).await;
    assert_eq!(echoed(&r.body)["x-forwarded-client-cert"], forged[0].1);
}

/// Writes the edge's configuration and waits until it is the running one.
async fn reload(e: &Edge, text: String) {
    let before = e.tern.config_dump().await["version"].clone();
    e.cfg.write("tern.yaml", &text);
    wait_for("the reload", || async {
        (e.tern.config_dump().await["version"] != before).then_some(())
    })
    .await;
}

/// A resumed session skips the client's proof: tickets outlive a reload that leaves client
/// authentication alone, and none from before it works once a certificate is required.
#[tokio::test]
async fn session_tickets_outlive_a_reload_unless_client_authentication_changes() {
    let e = edge().await;
    let anon = client_config(&e.ca, &[], None);
    // A session (and its ticket) on the optional-certificate listener.
    let s = tls_connect(e.ports[3], "api.test", &anon).await.unwrap();
    let (status, _, _) = get_over(s, "api.test", "/a", &[]).await.unwrap();
    assert_eq!(status, 200);
    // A reload that changes something else: the ticket still resumes.
    let yaml = std::fs::read_to_string(e.cfg.path().join("tern.yaml")).unwrap();
    reload(&e, yaml.replace("prefix: /secure", "prefix: /secured")).await;
    let s = tls_connect(e.ports[3], "api.test", &anon).await.unwrap();
    assert_eq!(
        s.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let (status, _, _) = get_over(s, "api.test", "/b", &[]).await.unwrap();
    assert_eq!(status, 200);
    // Now the listener requires a certificate: the old ticket must not let the client in.
    let optional = "    forward_client_cert_details: append_forward\n";
    assert!(yaml.contains(optional));
    let required = yaml.replacen(
        "      client_ca: { file: certs/ca.pem }\n  - name: forward-only",
        "      client_ca: { file: certs/ca.pem }\n      require_client_certificate: true\n  - name: forward-only",
        1,
    );
    assert_ne!(required, yaml);
    reload(&e, required.replace("prefix: /secure", "prefix: /secured")).await;
    let let_in = match tls_connect(e.ports[3], "api.test", &anon).await {
        Err(_) => false,
        Ok(s) => {
            assert_ne!(
                s.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "resumed past a newly required client certificate"
            );
            get_over(s, "api.test", "/c", &[]).await.is_ok()
        }
    };
    assert!(!let_in, "a client without a certificate got in");
}

// ---------------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------------

/// Writes `text` to `path` atomically (a temporary file renamed into place), as a secrets
/// agent or `tern-sync` does.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_failed_handshake_and_bad_ones_are_refused() {
    let ca = Ca::new("Rotation CA");
    let old = ca.leaf("old", &["rot.test"]);
    let new = ca.leaf("new", &["rot.test"]);
    // The key material lives outside the configuration directory: it is watched too.
    let secrets = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (
        secrets.path().join("tls.pem"),
        secrets.path().join("tls.key"),
    );
    std::fs::write(&cert_path, &old.cert).unwrap();
    std::fs::write(&key_path, &old.key).unwrap();
    let port = free_port();
    let admin = free_port();
    let cfg = ConfigDir::new();
    cfg.write(
        "tern.yaml",
        &format!(
            "{}listeners:
  - name: tls
    address: 127.0.0.1:{port}
    route_config: main
    tls:
      certificates:
        - certificate_chain: {{ file: {} }}
          private_key: {{ file: {} }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 200, body: ok }} }}]
",
            admin_yaml(admin),
            cert_path.display(),
            key_path.display()
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    // Full handshakes only: a resumed session would not show (nor use) the new certificate.
    let mut full = (*client_config(&ca, &["http/1.1"], None)).clone();
    full.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(full);
    // Load: new connections (full handshakes) in a loop, each with a request, on four tasks,
    // until told to stop; every failure is counted, every served certificate noted.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen_new = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, seen_new, client) = (
            stop.clone(),
            failures.clone(),
            seen_new.clone(),
            client.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded: the test stops it, and it stops by itself after 30 s.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                let ok = match tls_connect(port, "rot.test", &client).await {
                    Ok(s) => {
                        if server_subject(&s) == "CN=new" {
                            seen_new.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        matches!(get_over(s, "rot.test", "/", &[]).await, Ok((200, _, _)))
                    }
                    Err(_) => false,
                };
                if !ok {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += 1;
            }
            n
        }));
    }
    wait_for("handshakes before the rotation", || async {
        (tern.stat("listener.tls.ssl.handshake").await > 20).then_some(())
    })
    .await;
    // Rotate: key first (the pair mismatches until the certificate follows: that reload is
    // refused and the old pair keeps serving), then the certificate.
    replace_file(&key_path, &new.key);
    replace_file(&cert_path, &new.cert);
    wait_for("the new certificate on new connections", || async {
        (seen_new.load(std::sync::atomic::Ordering::Relaxed) > 20).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut handshakes = 0;
    for t in load {
        handshakes += t.await.unwrap();
    }
    assert!(handshakes > 40, "{handshakes}");
    assert_eq!(
        failures.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "failed handshakes or requests during the rotation"
    );
    // The expiry gauge follows the rotation at once.
    let prom = get(&tern.admin_url("/stats/prometheus"), &[]).await.body;
    assert!(prom.contains("subject=\"CN=new\""), "{prom}");

    // A certificate that does not parse is refused at the line that names it; the running one
    // keeps serving.
    let rejected = tern.stat("server.config_update_rejected").await;
    replace_file(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    wait_for("the bad certificate refused", || async {
        (tern.stat("server.config_update_rejected").await > rejected).then_some(())
    })
    .await;
    let dump = tern.config_dump().await;
    let diag = &dump["last_reload_error"]["diagnostics"][0];
    assert_eq!(diag["code"], "E011", "{dump}");
    assert_eq!(diag["line"], 9, "{dump}");
    let s = tls_connect(port, "rot.test", &client).await.unwrap();
    assert_eq!(server_subject(&s), "CN=new");
    assert!(matches!(
        get_over(s, "rot.test", "/", &[]).await,
        Ok((200, _, _))
    ));
}

#[tokio::test]
async fn a_key_from_an_environment_variable_serves() {
    let ca = Ca::new("Env CA");
    let leaf = ca.leaf("env", &["env.test"]);
    let port = free_port();
    let admin = free_port();
    let cfg = ConfigDir::new();
    cfg.write("tls.pem", &leaf.cert);
    cfg.write(
        "tern.yaml",
        &format!(
            "{}listeners:
  - name: tls
    address: 127.0.0.1:{port}
    route_config: main
    tls:
      certificates:
        - {{ certificate_chain: {{ file: tls.pem }}, private_key: {{ env: TERN_TEST_TLS_KEY }} }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 200, body: ok }} }}]
",
            admin_yaml(admin)
        ),
    );
    let tern = Tern::start_env(cfg.path(), admin, &[], &[("TERN_TEST_TLS_KEY", &leaf.key)]).await;
    let s = tls_connect(port, "env.test", &client_config(&ca, &[], None))
        .await
        .unwrap();
    assert_eq!(server_subject(&s), "CN=env");
    // The dump names the variable, never the key.
    let dump = tern.config_dump().await.to_string();
    assert!(dump.contains("TERN_TEST_TLS_KEY") && !dump.contains("PRIVATE KEY"));
    // Without it the proxy refuses to start, naming the variable.
    let mut t = Tern::spawn(cfg.path(), free_port(), &[]);
    assert!(!t.wait_exit().await.success());
    assert!(t
        .logs()
        .contains("environment variable `TERN_TEST_TLS_KEY` is not set"));
    // Set but empty (a secret that failed to resolve): refused likewise.
    let mut t = Tern::spawn_env(cfg.path(), free_port(), &[], &[("TERN_TEST_TLS_KEY", "")]);
    assert!(!t.wait_exit().await.success());
    assert!(t
        .logs()
        .contains("environment variable `TERN_TEST_TLS_KEY` is empty"));
}

// ---------------------------------------------------------------------------------------------
// TCP listeners
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_listeners_terminate_tls_and_route_by_sni_without_terminating() {
    let ca = Ca::new("L4 CA");
    let a = https_backend(&ca.leaf("a", &["a.test"]), None).await;
    let wild = https_backend(&ca.leaf("wild", &["*.wild.test"]), None).await;
    let app = tern_testkit::Backend::start("app").await;
    let listener = ca.leaf("l4", &["l4.test"]);
    let (passthrough, terminating, admin) = (free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("l4.pem", &listener.cert);
    cfg.write("l4.key", &listener.key);
    cfg.write(
        "tern.yaml",
        &format!(
            "{}listeners:
  - name: passthrough
    address: 127.0.0.1:{passthrough}
    tcp_proxy:
      sni_routes:
        - {{ server_names: [a.test], cluster: a }}
        - {{ server_names: [\"*.wild.test\"], cluster: wild }}
  - name: terminating
    address: 127.0.0.1:{terminating}
    tcp_proxy: {{ cluster: app }}
    tls:
      certificates: [{{ certificate_chain: {{ file: l4.pem }}, private_key: {{ file: l4.key }} }}]
clusters:
  - {{ name: a, endpoints: [{{ address: \"{a}\" }}] }}
  - {{ name: wild, endpoints: [{{ address: \"{wild}\" }}] }}
  - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}
",
            admin_yaml(admin),
            app.addr
        ),
    );
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    let client = client_config(&ca, &[], None);
    // Passthrough: the upstream's own certificate and TLS session, chosen by the SNI.
    for (sni, subject) in [("a.test", "CN=a"), ("x.wild.test", "CN=wild")] {
        let s = tls_connect(passthrough, sni, &client).await.unwrap();
        assert_eq!(server_subject(&s), subject);
        let (status, body, _) = get_over(s, sni, "/", &[]).await.unwrap();
        assert_eq!((status, body), (200, format!("sni={sni} client=-")));
    }
    // No route and no default cluster: closed, counted.
    assert!(tls_connect(passthrough, "other.test", &client)
        .await
        .is_err());
    stat_above_zero(&tern, "listener.passthrough.downstream_cx_sni_no_route").await;
    // Not TLS at all: closed, counted.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", passthrough))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    stat_above_zero(&tern, "listener.passthrough.downstream_cx_sni_error").await;
    // Termination: the plaintext goes to the cluster.
    let s = tls_connect(terminating, "l4.test", &client).await.unwrap();
    assert_eq!(server_subject(&s), "CN=l4");
    let (status, body, _) = get_over(s, "l4.test", "/echo", &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(echoed(&body)["host"], "l4.test");
    assert_eq!(tern.stat("listener.terminating.ssl.handshake").await, 1);
}
