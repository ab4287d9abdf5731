//! Certificates made in the tests: a private CA and the leaves it issues, in PEM, for real TLS
//! handshakes (listeners, upstreams, mutual TLS) without any file from outside the test.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A private CA that issues certificates.
pub struct Ca {
    /// The CA's certificate and key (its DER for a trust store: `issuer.der()`).
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

impl Ca {
    /// A self-signed CA with common name `name`.
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// The CA's certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `sans` (DNS names, IPs, or `spiffe://` URIs), with CN `cn`.
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
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
