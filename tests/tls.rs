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
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_testkit::{admin_yaml, free_port, get, wait_for, ConfigDir, Tern};

/// A private CA that issues certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `sans` (DNS names, IPs, or `spiffe://` URIs), with CN `cn`.
    fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        for s in sans {
            p.subject_alt_names.push(if let Ok(ip) = s.parse() {
                SanType::IpAddress(ip)
            } else if s.contains("://") {
                SanType::URI(s.to_string().try_into().unwrap())
            } else {
                SanType::DnsName(s.to_string().try_into().unwrap())
            });
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

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
        &["bysni", "byip", "wrongca", "wrongsan", "bysan", "plain"],
    ));
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
