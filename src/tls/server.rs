//! TLS termination: a listener's rustls server configuration (certificates chosen by SNI, client
//! certificates, versions, ALPN, session resumption), the accepted stream, plain or TLS, and
//! what a handshake established ([`TlsInfo`]).
//!
//! SNI picks the first certificate with an exact `server_names` match, else the first with a
//! matching `*.` wildcard, else the listener's first certificate (Envoy's filter chain order). The
//! session ticket keys (rustls' rotating ticketer) are carried from the listener's previous
//! configuration, so a reload, a certificate rotation included, does not end resumption.

use std::io;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tern_config::tls::{name_matches, CertFacts};
use tokio::net::TcpStream;

use super::provider;

/// One certificate of a listener.
#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    /// `server_names`, lowercase.
    names: Vec<String>,
    /// Its first URI SAN: the `By` of `x-forwarded-client-cert`.
    uri: Option<Arc<str>>,
}

/// Facts of a certificate a listener or cluster presents, for the expiration gauge.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Where it came from (file path, `env NAME`, `inline`).
    pub origin: String,
    /// Its subject.
    pub subject: String,
    /// Not valid after (Unix seconds).
    pub not_after: i64,
}

impl CertInfo {
    /// The facts of a loaded chain's certificate.
    pub fn of(chain: &tern_config::DataSource, key: &CertifiedKey) -> Result<CertInfo, String> {
        let facts = key
            .cert
            .first()
            .map(|d| CertFacts::of(d))
            .transpose()?
            .ok_or("certificate_chain is empty")?;
        Ok(CertInfo {
            origin: chain
                .loaded
                .as_ref()
                .map_or_else(|| chain.describe(), |l| l.origin.clone()),
            subject: facts.subject,
            not_after: facts.not_after,
        })
    }
}

/// A listener's TLS, built once per snapshot.
#[derive(Debug)]
pub struct DownstreamTls {
    config: Arc<rustls::ServerConfig>,
    resolver: Arc<Resolver>,
    /// Whether client certificates are asked for.
    pub asks_client_cert: bool,
    /// The certificates, for the expiration gauge.
    pub certs: Vec<CertInfo>,
    /// What a client had to prove (the CA's bytes, whether a certificate was required): a
    /// resumed session skips that proof, so tickets outlive a reload only when it is unchanged.
    client_auth: (Option<Vec<u8>>, bool),
}

#[derive(Debug)]
struct Resolver {
    certs: Vec<Served>,
}

impl Resolver {
    /// The index of the certificate for `sni`.
    fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return 0 };
        let exact = self.certs.iter().position(|c| {
            c.names
                .iter()
                .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(sni))
        });
        exact
            .or_else(|| {
                self.certs.iter().position(|c| {
                    c.names
                        .iter()
                        .any(|n| n.starts_with("*.") && name_matches(n, sni))
                })
            })
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = self.pick(hello.server_name());
        self.certs.get(i).map(|c| c.key.clone())
    }
}

impl DownstreamTls {
    /// Builds a listener's TLS from its checked settings; `http` picks the default ALPN, `prev`
    /// is the same listener's TLS in the running snapshot (its ticket keys are kept).
    pub fn build(
        t: &tern_config::ListenerTls,
        http: bool,
        prev: Option<&DownstreamTls>,
    ) -> Result<DownstreamTls, String> {
        let provider = provider();
        let mut served = Vec::new();
        let mut certs = Vec::new();
        for c in &t.certificates {
            let key = super::certified_key(&c.certificate_chain, &c.private_key)?;
            certs.push(CertInfo::of(&c.certificate_chain, &key)?);
            let uri = match key.cert.first() {
                Some(d) => CertFacts::of(d)?
                    .uris
                    .first()
                    .map(|u| Arc::from(u.as_str())),
                None => None,
            };
            served.push(Served {
                key,
                names: c
                    .server_names
                    .iter()
                    .map(|n| n.to_ascii_lowercase())
                    .collect(),
                uri,
            });
        }
        if served.is_empty() {
            return Err("tls needs at least one certificate".into());
        }
        let versions = super::versions(
            t.min_version.as_ref().map(|v| v.value),
            t.max_version.as_ref().map(|v| v.value),
        );
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match &t.client_ca {
            Some(ca) => {
                let roots = Arc::new(super::roots_of(ca)?);
                let v = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                let v = if t.require_client_certificate {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| format!("client_ca: {e}"))?)
            }
            None => builder.with_no_client_auth(),
        };
        let resolver = Arc::new(Resolver { certs: served });
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = match &t.alpn {
            Some(list) => list.iter().map(|a| a.as_bytes().to_vec()).collect(),
            None if http => tern_config::defaults::LISTENER_ALPN
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect(),
            None => Vec::new(),
        };
        let client_auth = (
            t.client_ca.as_ref().map(|ca| ca.bytes().to_vec()),
            t.require_client_certificate,
        );
        if t.session_resumption.unwrap_or(true) {
            // Envoy likewise puts the validation context in the session id context.
            let carried =
                prev.filter(|p| p.config.ticketer.enabled() && p.client_auth == client_auth);
            match carried {
                Some(p) => {
                    config.ticketer = p.config.ticketer.clone();
                    config.session_storage = p.config.session_storage.clone();
                }
                None => {
                    config.ticketer = rustls::crypto::ring::Ticketer::new()
                        .map_err(|e| format!("session tickets: {e}"))?;
                }
            }
        } else {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        let config = Arc::new(config);
        Ok(DownstreamTls {
            config,
            resolver,
            asks_client_cert: t.client_ca.is_some(),
            certs,
            client_auth,
        })
    }

    /// What new connections are accepted with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// What the handshake of `conn` established.
    pub fn info(&self, conn: &rustls::ServerConnection) -> TlsInfo {
        let sni = conn.server_name().map(Arc::from);
        let peer = conn.peer_certificates().and_then(|chain| {
            let leaf = chain.first()?;
            Some(Box::new(Peer {
                facts: CertFacts::of(leaf).ok()?,
                chain: chain.to_vec(),
            }))
        });
        TlsInfo {
            version: super::version_name(conn.protocol_version()),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|s| openssl_name(s.suite())),
            local_uri: self.resolver.certs[self.resolver.pick(conn.server_name())]
                .uri
                .clone(),
            sni,
            peer,
        }
    }
}

/// A cipher suite by the name Envoy logs (BoringSSL's: `TLS_AES_128_GCM_SHA256`,
/// `ECDHE-ECDSA-AES128-GCM-SHA256`), so log parsers written for Envoy keep working.
fn openssl_name(s: rustls::CipherSuite) -> &'static str {
    use rustls::CipherSuite as C;
    match s {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => other.as_str().unwrap_or("unknown"),
    }
}

/// What a downstream TLS handshake established (per connection; read by the access log and XFCC).
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: Option<&'static str>,
    /// The cipher suite, by Envoy's (BoringSSL's) name.
    pub cipher: Option<&'static str>,
    /// The SNI the client sent (`%REQUESTED_SERVER_NAME%`).
    pub sni: Option<Arc<str>>,
    /// The URI SAN of the certificate the listener presented (XFCC `By`).
    pub local_uri: Option<Arc<str>>,
    /// The client's certificate, when it sent one (it was verified).
    pub peer: Option<Box<Peer>>,
}

/// A verified client certificate.
#[derive(Debug)]
pub struct Peer {
    /// Its facts.
    pub facts: CertFacts,
    /// The chain it sent, its own certificate first.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// How a downstream handshake failed, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A required client certificate was not sent.
    NoCert,
    /// The client certificate did not verify.
    Verify,
    /// Anything else.
    Other,
}

impl Failure {
    /// Classifies a handshake's I/O error.
    pub fn of(e: &io::Error) -> Failure {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented) => Failure::NoCert,
            Some(rustls::Error::InvalidCertificate(_)) => Failure::Verify,
            _ => Failure::Other,
        }
    }
}

/// A downstream connection: plain TCP, or TLS over it.
pub type DownStream = super::stream::Stream<tokio_rustls::server::TlsStream<TcpStream>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let key = |names: &[&str]| Served {
            key: Arc::new(CertifiedKey::new(
                Vec::new(),
                provider()
                    .key_provider
                    .load_private_key(
                        tern_config::tls::private_key(include_bytes!(
                            "../../config/testdata/tls/ec.key"
                        ))
                        .unwrap(),
                    )
                    .unwrap(),
            )),
            names: names.iter().map(|s| s.to_string()).collect(),
            uri: None,
        };
        let r = Resolver {
            certs: vec![
                key(&["default.example"]),
                key(&["*.example.com"]),
                key(&["api.example.com"]),
            ],
        };
        assert_eq!(r.pick(Some("api.example.com")), 2);
        assert_eq!(r.pick(Some("www.example.com")), 1);
        assert_eq!(r.pick(Some("a.b.example.com")), 0);
        assert_eq!(r.pick(Some("other.org")), 0);
        assert_eq!(r.pick(None), 0);
    }
}
