//! `x-forwarded-client-cert` (XFCC) in Envoy's format and with Envoy's
//! `forward_client_cert_details` modes: what the upstream learns of the client's certificate.
//!
//! An element is `By=<our URI SAN>;Hash=<SHA-256 of the client certificate>` followed by the
//! fields `set_current_client_cert_details` asks for: `Cert="<URL-encoded PEM>"`,
//! `Chain="<URL-encoded PEM>"`, `Subject="<RFC 2253>"`, `URI=<URI SAN>`, `DNS=<DNS SAN>` (one per
//! name). Elements of successive proxies are separated by `,`. A client's own XFCC is removed
//! unless the mode forwards it: anyone could send one.

use http::{HeaderName, HeaderValue};

use sha2::{Digest, Sha256};
use tern_config::{ForwardClientCertDetails as Mode, SetCurrentClientCertDetails};

use super::server::TlsInfo;
use crate::message::Fields;

/// `x-forwarded-client-cert`.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A listener's XFCC settings.
#[derive(Debug, Clone, Default)]
pub struct Xfcc {
    mode: Mode,
    details: SetCurrentClientCertDetails,
}

impl Xfcc {
    /// The settings of listener `l`.
    pub fn of(l: &tern_config::Listener) -> Xfcc {
        Xfcc {
            mode: l
                .forward_client_cert_details
                .as_ref()
                .map_or_else(Mode::default, |m| m.value),
            details: l
                .set_current_client_cert_details
                .as_ref()
                .map(|d| d.value.clone())
                .unwrap_or_default(),
        }
    }

    /// Sets the request's XFCC for a connection whose TLS is `tls`.
    pub fn apply(&self, h: &mut Fields, tls: Option<&TlsInfo>) {
        // Mutual TLS: the client sent a certificate, which was verified.
        let mtls = tls.filter(|t| t.peer.is_some());
        match (self.mode, mtls) {
            (Mode::AlwaysForwardOnly, _) | (Mode::ForwardOnly, Some(_)) => {}
            (Mode::AppendForward, Some(t)) => {
                let mine = self.element(t);
                let v = match h.get(&XFCC).and_then(|v| v.to_str().ok()) {
                    Some(prev) if !prev.is_empty() => format!("{prev},{mine}"),
                    _ => mine,
                };
                set(h, v);
            }
            (Mode::SanitizeSet, Some(t)) => {
                let mine = self.element(t);
                set(h, mine);
            }
            _ => {
                h.remove(&XFCC);
            }
        }
    }

    /// This connection's element.
    fn element(&self, t: &TlsInfo) -> String {
        let mut parts = Vec::new();
        if let Some(by) = &t.local_uri {
            parts.push(format!("By={}", value(by)));
        }
        let Some(peer) = &t.peer else {
            return parts.join(";");
        };
        let leaf = &peer.chain[0];
        parts.push(format!(
            "Hash={}",
            data_encoding::HEXLOWER.encode(&Sha256::digest(leaf))
        ));
        let d = &self.details;
        if d.cert {
            parts.push(format!("Cert=\"{}\"", url_pem(std::slice::from_ref(leaf))));
        }
        if d.chain {
            parts.push(format!("Chain=\"{}\"", url_pem(&peer.chain)));
        }
        if d.subject {
            parts.push(format!(
                "Subject=\"{}\"",
                peer.facts
                    .subject
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
            ));
        }
        if d.uri {
            if let Some(u) = peer.facts.uris.first() {
                parts.push(format!("URI={}", value(u)));
            }
        }
        if d.dns {
            for n in &peer.facts.dns_names {
                parts.push(format!("DNS={}", value(n)));
            }
        }
        parts.join(";")
    }
}

fn set(h: &mut Fields, v: String) {
    match HeaderValue::try_from(v) {
        Ok(v) => {
            h.insert(XFCC, v);
        }
        // A value that cannot be a header (never from the fields above) is not forwarded.
        Err(_) => {
            h.remove(&XFCC);
        }
    }
}

/// A value quoted when it holds a separator (`,`, `;`, `=`), as Envoy writes it.
fn value(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", v.replace('"', "\\\""))
    } else {
        v.to_string()
    }
}

/// Certificates as URL-encoded PEM.
fn url_pem(chain: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    let mut pem = String::new();
    for c in chain {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = data_encoding::BASE64.encode(c);
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}
