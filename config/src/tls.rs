//! Key material: reading PEM certificates and keys, and the facts the checks and the proxy need
//! from them (subject, names, validity, whether a key belongs to its certificate).
//!
//! Parsing is the configuration's: the same code rejects a bad certificate in `tern-validate`
//! and in a reload, before anything runs. It links no cryptography (the proxy's rustls/ring does
//! the signatures): whether a key matches its certificate is decided by comparing the public key
//! the private key carries with the certificate's, which PKCS#1 and SEC1/PKCS#8 EC keys always
//! or usually hold. When a key holds none (an Ed25519 PKCS#8 v1 key), the proxy's own check, with
//! ring, decides when the snapshot is built.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::asn1_rs::{Any, Class, FromDer, Tag};
use x509_parser::prelude::{GeneralName, ParsedExtension, X509Certificate};

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject in RFC 2253 form (`CN=api,O=Example`), as Envoy prints it.
    pub subject: String,
    /// Issuer in the same form.
    pub issuer: String,
    /// Not valid before (Unix seconds).
    pub not_before: i64,
    /// Not valid after (Unix seconds).
    pub not_after: i64,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs, ...).
    pub uris: Vec<String>,
    /// IP address subject alternative names.
    pub ips: Vec<std::net::IpAddr>,
    /// Whether it is a CA certificate (basic constraints).
    pub is_ca: bool,
    /// The subject's raw DER (to compare with the next certificate's issuer).
    subject_der: Vec<u8>,
    /// The issuer's raw DER.
    issuer_der: Vec<u8>,
}

impl CertFacts {
    /// Reads the facts of one DER certificate.
    pub fn of(der: &[u8]) -> Result<CertFacts, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let mut f = CertFacts {
            subject: rfc2253(cert.subject()),
            issuer: rfc2253(cert.issuer()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns_names: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            is_ca: cert.is_ca(),
            subject_der: cert.subject().as_raw().to_vec(),
            issuer_der: cert.issuer().as_raw().to_vec(),
        };
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => f.dns_names.push(d.to_string()),
                        GeneralName::URI(u) => f.uris.push(u.to_string()),
                        GeneralName::IPAddress(b) => {
                            if let Ok(a) = <[u8; 4]>::try_from(*b) {
                                f.ips.push(a.into());
                            } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                                f.ips.push(a.into());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(f)
    }

    /// Whether the certificate is valid for `name` (a DNS name): a DNS SAN equal to it, or a
    /// `*.` SAN whose one label it replaces (RFC 6125). Without DNS SANs, the subject's CN is
    /// not considered, as in browsers and rustls.
    pub fn covers(&self, name: &str) -> bool {
        self.dns_names.iter().any(|san| name_matches(san, name))
    }

    /// Whether `self` was issued by (the subject of) `issuer`.
    pub fn issued_by(&self, issuer: &CertFacts) -> bool {
        self.issuer_der == issuer.subject_der
    }
}

/// Whether `pattern` (`example.com` or `*.example.com`) matches the DNS name `name`,
/// ignoring case; a wildcard stands for exactly one label.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let pattern = pattern.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// A distinguished name as RFC 2253 writes it: the last RDN first, `,` between them.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        let attrs: Vec<String> = rdn
            .iter()
            .map(|a| {
                let oid = a.attr_type();
                let key = match registry.get(oid).map(|e| e.sn()) {
                    Some("commonName") => "CN".to_string(),
                    Some("countryName") => "C".to_string(),
                    Some("localityName") => "L".to_string(),
                    Some("stateOrProvinceName") => "ST".to_string(),
                    Some("organizationName") => "O".to_string(),
                    Some("organizationalUnitName") => "OU".to_string(),
                    Some("streetAddress") => "STREET".to_string(),
                    Some("domainComponent") => "DC".to_string(),
                    Some("userId") => "UID".to_string(),
                    Some(other) => other.to_string(),
                    None => oid.to_id_string(),
                };
                let value = a
                    .as_str()
                    .map(escape_dn_value)
                    .unwrap_or_else(|_| format!("#{}", hex::encode(a.attr_value().data)));
                format!("{key}={value}")
            })
            .collect();
        parts.push(attrs.join("+"));
    }
    parts.reverse();
    parts.join(",")
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The certificates of a PEM text, in order (at least one).
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for (i, c) in CertificateDer::pem_slice_iter(pem).enumerate() {
        out.push(c.map_err(|e| format!("certificate {} is not valid PEM: {e}", i + 1))?);
    }
    if out.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(out)
}

/// The one private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .to_string()
        }
        e => format!("the private key is not valid PEM: {e}"),
    })
}

/// Checks a certificate chain: each certificate parses, and each is issued by the next one
/// (leaf first). Returns the facts of each.
pub fn check_chain(chain: &[CertificateDer<'_>]) -> Result<Vec<CertFacts>, String> {
    let facts = chain
        .iter()
        .enumerate()
        .map(|(i, c)| CertFacts::of(c).map_err(|e| format!("certificate {}: {e}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, pair) in facts.windows(2).enumerate() {
        if !pair[0].issued_by(&pair[1]) {
            return Err(format!(
                "the chain is out of order: certificate {} ({}) is not issued by certificate {} \
                 ({}); put the server's own certificate first, then each issuer",
                i + 1,
                pair[0].subject,
                i + 2,
                pair[1].subject
            ));
        }
    }
    Ok(facts)
}

/// Checks PEM CA certificates: each can be a trust anchor (the parse rustls's root store makes).
pub fn check_ca(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = certificates(pem)?;
    for (i, c) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(c)
            .map_err(|e| format!("CA certificate {} is not usable: {e}", i + 1))?;
    }
    Ok(certs)
}

/// Whether the proxy can sign with the key of `cert` (ring's algorithms): ECDSA P-256 or
/// P-384, Ed25519, RSA of 2048 to 8192 bits. Checked here so the validator refuses what the
/// proxy could not serve, at the line that names it.
pub fn key_usable(cert: &CertificateDer<'_>) -> Result<(), String> {
    use x509_parser::public_key::PublicKey;
    let (_, c) =
        X509Certificate::from_der(cert).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = c.public_key();
    let curve = || {
        spki.algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .unwrap_or_default()
    };
    match spki.parsed() {
        Ok(PublicKey::RSA(r)) => {
            let bits = r.key_size();
            if (2048..=8192).contains(&bits) {
                Ok(())
            } else {
                Err(format!(
                    "an RSA key of {bits} bits cannot be used (2048 to 8192 bits can)"
                ))
            }
        }
        Ok(PublicKey::EC(_)) => match curve().as_str() {
            "1.2.840.10045.3.1.7" | "1.3.132.0.34" => Ok(()),
            "1.3.132.0.35" => Err("a P-521 key cannot be used (P-256 and P-384 can)".into()),
            other => Err(format!(
                "an EC key on curve {other} cannot be used (P-256 and P-384 can)"
            )),
        },
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => Ok(()),
        _ => Err(format!(
            "a key of algorithm {} cannot be used (ECDSA P-256/P-384, Ed25519 or RSA can)",
            spki.algorithm.algorithm.to_id_string()
        )),
    }
}

/// Whether `key` belongs to `cert`: `Some(true)` or `Some(false)` when the key holds its public
/// part, `None` when it does not say (the proxy decides, with ring); an error for a key that
/// does not parse.
pub fn key_matches(
    cert: &CertificateDer<'_>,
    key: &PrivateKeyDer<'_>,
) -> Result<Option<bool>, String> {
    let (_, c) =
        X509Certificate::from_der(cert).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = c.public_key();
    let cert_point = spki.subject_public_key.data.as_ref();
    let bad = |what: &str| format!("the private key is not a valid {what} key");
    let public = match key {
        PrivateKeyDer::Pkcs1(k) => {
            Public::Rsa(rsa_public(k.secret_pkcs1_der()).ok_or_else(|| bad("RSA"))?)
        }
        PrivateKeyDer::Sec1(k) => match ec_public(k.secret_sec1_der()).ok_or_else(|| bad("EC"))? {
            Some(p) => Public::Point(p),
            None => Public::Unknown,
        },
        PrivateKeyDer::Pkcs8(k) => {
            pkcs8_public(k.secret_pkcs8_der()).ok_or_else(|| bad("PKCS#8"))?
        }
        _ => Public::Unknown,
    };
    Ok(match public {
        Public::Rsa((n, e)) => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(r)) => {
                Some(unsigned(r.modulus) == unsigned(n) && unsigned(r.exponent) == unsigned(e))
            }
            _ => Some(false),
        },
        Public::Point(p) => Some(p == cert_point),
        Public::Unknown => None,
    })
}

/// The public part a private key holds.
enum Public<'a> {
    /// RSA modulus and exponent.
    Rsa((&'a [u8], &'a [u8])),
    /// An EC point or an Ed25519 public key: the bytes of the certificate's key BIT STRING.
    Point(&'a [u8]),
    /// The key does not hold it.
    Unknown,
}

/// The elements of a DER SEQUENCE (or of any constructed value's contents).
fn elements(data: &[u8]) -> Option<Vec<Any<'_>>> {
    let mut rest = data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (r, any) = Any::from_der(rest).ok()?;
        out.push(any);
        rest = r;
    }
    Some(out)
}

fn sequence(der: &[u8]) -> Option<Vec<Any<'_>>> {
    let (_, any) = Any::from_der(der).ok()?;
    (any.tag() == Tag::Sequence).then_some(())?;
    elements(any.data)
}

/// The bytes of a BIT STRING's contents without its unused-bits byte.
fn bit_string<'a>(any: &Any<'a>) -> Option<&'a [u8]> {
    any.data.split_first().map(|(_, b)| b)
}

/// RSAPrivateKey (RFC 8017): version, modulus, publicExponent, ...
fn rsa_public(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = sequence(der)?;
    Some((s.get(1)?.data, s.get(2)?.data))
}

/// ECPrivateKey (RFC 5915): version, privateKey, [0] parameters, [1] publicKey; the public key
/// when present.
fn ec_public(der: &[u8]) -> Option<Option<&[u8]>> {
    let s = sequence(der)?;
    let tagged = s
        .iter()
        .skip(2)
        .find(|a| a.class() == Class::ContextSpecific && a.tag() == Tag(1));
    Some(match tagged {
        Some(t) => {
            let (_, inner) = Any::from_der(t.data).ok()?;
            Some(bit_string(&inner)?)
        }
        None => None,
    })
}

/// PKCS#8 (RFC 5958): version, algorithm, privateKey, [0] attributes, [1] publicKey.
fn pkcs8_public(der: &[u8]) -> Option<Public<'_>> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let s = sequence(der)?;
    let alg = elements(s.get(1)?.data)?;
    let oid = alg.first()?;
    let private = s.get(2)?.data;
    if oid.data == RSA {
        return rsa_public(private).map(Public::Rsa);
    }
    if oid.data == EC {
        return Some(match ec_public(private)? {
            Some(p) => Public::Point(p),
            None => Public::Unknown,
        });
    }
    // Ed25519 and others: the v2 (OneAsymmetricKey) public key, when present.
    let tagged = s
        .iter()
        .skip(3)
        .find(|a| a.class() == Class::ContextSpecific && a.tag() == Tag(1));
    Some(match tagged {
        // IMPLICIT BIT STRING: the tagged value's contents are the bit string's.
        Some(t) => Public::Point(t.data.split_first().map(|(_, b)| b)?),
        None => Public::Unknown,
    })
}

/// An INTEGER's bytes without leading zero bytes.
fn unsigned(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stand_for_one_label() {
        assert!(name_matches("*.example.com", "api.example.com"));
        assert!(name_matches("*.example.com", "API.Example.COM"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("example.com", "example.com."));
        assert!(!name_matches("example.com", "other.com"));
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("a,b"), "a\\,b");
        assert_eq!(escape_dn_value(" x "), "\\ x\\ ");
        assert_eq!(escape_dn_value("plain"), "plain");
    }

    fn pem(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/tls")
            .join(name);
        std::fs::read(p).unwrap()
    }

    fn matches(cert: &str, key: &str) -> Option<bool> {
        let c = certificates(&pem(cert)).unwrap();
        key_matches(&c[0], &private_key(&pem(key)).unwrap()).unwrap()
    }

    #[test]
    fn keys_match_their_certificates_in_every_format() {
        assert_eq!(matches("ec.pem", "ec.key"), Some(true));
        assert_eq!(matches("ec.pem", "ec-sec1.key"), Some(true));
        assert_eq!(matches("rsa.pem", "rsa.key"), Some(true));
        assert_eq!(matches("rsa.pem", "rsa-pkcs8.key"), Some(true));
        assert_eq!(matches("ec.pem", "other.key"), Some(false));
        assert_eq!(matches("rsa.pem", "ec.key"), Some(false));
        assert_eq!(matches("ec.pem", "rsa.key"), Some(false));
        // A PKCS#8 v1 Ed25519 key holds no public key: the proxy's ring check decides.
        assert_eq!(matches("ed25519.pem", "ed25519.key"), None);
    }

    #[test]
    fn facts_and_chain_order() {
        let chain = certificates(&pem("ec-chain.pem")).unwrap();
        let facts = check_chain(&chain).unwrap();
        let leaf = &facts[0];
        assert_eq!(leaf.subject, "CN=api.example.com,O=Tern Test");
        assert_eq!(leaf.issuer, "CN=Tern Test CA,O=Tern Test");
        assert_eq!(leaf.dns_names, ["api.example.com", "*.example.com"]);
        assert_eq!(leaf.uris, ["spiffe://example.com/api"]);
        assert_eq!(leaf.ips, [std::net::IpAddr::from([127, 0, 0, 1])]);
        assert!(leaf.covers("www.example.com") && !leaf.covers("example.org"));
        assert!(!leaf.is_ca && facts[1].is_ca);
        assert_eq!(leaf.not_after, 4_891_363_200);
        let reversed = certificates(&pem("ec-chain-reversed.pem")).unwrap();
        assert!(check_chain(&reversed).unwrap_err().contains("out of order"));
        assert!(check_ca(&pem("ca.pem")).is_ok());
        assert!(check_ca(&pem("ec.key")).is_err());
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(certificates(b"hello")
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(private_key(b"hello")
            .unwrap_err()
            .contains("no PEM private key"));
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let c = certificates(broken).unwrap();
        assert!(check_chain(&c).unwrap_err().contains("certificate 1"));
    }
}
