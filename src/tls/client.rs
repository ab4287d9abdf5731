//! TLS origination: a cluster's rustls client configuration (roots, verification, client
//! certificate, ALPN, versions), the server name each endpoint is reached and verified by, and
//! the upstream stream, plain or TLS.
//!
//! Verification is on unless `insecure_skip_verify`: the chain to the configured CA (or the
//! system's roots), and the name: the SNI name (Envoy's `auto_sni` with its SAN check), the
//! endpoint's IP for an endpoint written as one, or one of `verify_subject_alt_names`.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::provider;

/// A cluster's TLS settings, built once per cluster version.
#[derive(Debug)]
pub struct UpstreamTls {
    config: Arc<rustls::ClientConfig>,
    /// The configuration of the cluster's HTTP connections when its protocol sets their ALPN
    /// (`http2`: h2; `auto`: h2, http/1.1); `None`: `config`.
    http: Option<Arc<rustls::ClientConfig>>,
    /// `sni`: the name every endpoint is reached by.
    sni: Option<ServerName<'static>>,
    /// The client certificate, for the expiration gauge.
    pub client_cert: Option<super::server::CertInfo>,
}

/// How a handshake failed, for the stats and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The certificate's chain did not verify (unknown CA, expired, bad signature).
    Verify,
    /// The certificate is not for the expected name (SNI or `verify_subject_alt_names`).
    San,
    /// Anything else (protocol, version or cipher mismatch, reset during the handshake).
    Other,
}

impl Failure {
    /// Classifies a handshake's I/O error.
    pub fn of(e: &io::Error) -> Failure {
        use rustls::CertificateError as C;
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Failure::San,
            Some(rustls::Error::InvalidCertificate(_)) => Failure::Verify,
            _ => Failure::Other,
        }
    }
}

impl UpstreamTls {
    /// Builds a cluster's TLS from its checked settings.
    pub fn build(t: &tern_config::ClusterTls) -> Result<UpstreamTls, String> {
        let provider = provider();
        let roots = match &t.ca {
            Some(ca) => Arc::new(super::roots_of(ca)?),
            None => super::system_roots(),
        };
        let verifier: Arc<dyn ServerCertVerifier> = if t.skips_verification() {
            Arc::new(Verifier {
                roots,
                names: Names::Any,
                provider: provider.clone(),
            })
        } else if !t.verify_subject_alt_names.is_empty() {
            Arc::new(Verifier {
                roots,
                names: Names::List(
                    t.verify_subject_alt_names
                        .iter()
                        .map(|s| s.value.clone())
                        .collect(),
                ),
                provider: provider.clone(),
            })
        } else {
            if roots.is_empty() {
                return Err(
                    "no CA to verify upstreams against: the system has no root certificates; set `ca`"
                        .into(),
                );
            }
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("cannot verify upstreams: {e}"))?
        };
        let versions = super::versions(
            t.min_version.as_ref().map(|v| v.value),
            t.max_version.as_ref().map(|v| v.value),
        );
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut client_cert = None;
        let mut config = match &t.client_certificate {
            Some(cc) => {
                let ck = super::certified_key(&cc.certificate_chain, &cc.private_key)?;
                client_cert = Some(super::server::CertInfo::of(&cc.certificate_chain, &ck)?);
                builder
                    .with_client_auth_cert(ck.cert.clone(), private_key_of(&cc.private_key)?)
                    .map_err(|e| format!("client_certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        let sni = match &t.sni {
            Some(s) => Some(
                ServerName::try_from(s.value.clone())
                    .map_err(|e| format!("sni {:?}: {e}", s.value))?,
            ),
            None => None,
        };
        Ok(UpstreamTls {
            config: Arc::new(config),
            http: None,
            sni,
            client_cert,
        })
    }

    /// The name an endpoint is reached and verified by: `sni`, else the host name it was
    /// resolved from, else its IP address (no SNI is sent for an IP).
    pub fn server_name(
        &self,
        hostname: Option<&str>,
        addr: std::net::SocketAddr,
    ) -> ServerName<'static> {
        if let Some(s) = &self.sni {
            return s.clone();
        }
        hostname
            .and_then(|h| ServerName::try_from(h.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// The same settings, with HTTP connections offering `alpn` (the cluster's protocol's).
    pub fn with_http_alpn(mut self, alpn: &[&str]) -> UpstreamTls {
        let mut c = (*self.config).clone();
        c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.http = Some(Arc::new(c));
        self
    }

    /// Runs the handshake on a connected socket; `http`: for an HTTP connection of the pool
    /// (the protocol's ALPN), else with the cluster's `alpn` (health checks, upgrades, TCP).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        name: ServerName<'static>,
        http: bool,
    ) -> io::Result<TlsStream<TcpStream>> {
        let config = match (&self.http, http) {
            (Some(c), true) => c,
            _ => &self.config,
        };
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
    }
}

fn private_key_of(
    ds: &tern_config::DataSource,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    tern_config::tls::private_key(ds.bytes()).map_err(|e| format!("private_key: {e}"))
}

/// Which names a certificate must have.
#[derive(Debug)]
enum Names {
    /// One of these DNS or URI SANs (or IPs).
    List(Vec<String>),
    /// None at all, and no chain either (`insecure_skip_verify`).
    Any,
}

/// Verification with a name rule other than the SNI name's.
#[derive(Debug)]
struct Verifier {
    roots: Arc<rustls::RootCertStore>,
    names: Names,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Names::List(names) = &self.names else {
            return Ok(ServerCertVerified::assertion());
        };
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let facts = tern_config::tls::CertFacts::of(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let ok = names.iter().any(|n| {
            facts.covers(n)
                || facts.uris.iter().any(|u| u == n)
                || n.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| facts.ips.contains(&ip))
        });
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An upstream connection: plain TCP, or TLS over it.
pub type UpStream = super::stream::Stream<TlsStream<TcpStream>>;

impl UpStream {
    /// The negotiated TLS version (`%UPSTREAM_TLS_VERSION%`), `None` for plain TCP.
    pub fn tls_version(&self) -> Option<&'static str> {
        match self {
            UpStream::Plain(_) => None,
            UpStream::Tls(t) => super::version_name(t.get_ref().1.protocol_version()),
        }
    }

    /// The protocol ALPN chose (`None`: plain TCP, or none chosen).
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpStream::Plain(_) => None,
            UpStream::Tls(t) => t.get_ref().1.alpn_protocol(),
        }
    }
}
