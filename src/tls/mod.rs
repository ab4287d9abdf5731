//! TLS with rustls and its ring provider: what listeners (termination) and clusters
//! (origination) share. `client` builds a cluster's configuration and verifier and carries the
//! upstream stream; `server` builds a listener's configuration (SNI certificate selection, client
//! certificates, session tickets) and reads what a handshake established (`info`).
//!
//! Configurations are built when a snapshot is built, from key material the configuration
//! checks already read and validated; the request path only clones `Arc`s.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tern_config::{DataSource, TlsVersion};

pub mod client;
pub mod server;
pub mod stream;
pub mod xfcc;

/// The one crypto provider: ring (aws-lc raised the idle RSS past its target). Named explicitly,
/// so a process that also links another provider (tests) still uses this one.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The protocol versions from `min` to `max` (TLS 1.0 and 1.1 count as 1.2: rustls has neither).
pub fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let lo = min.unwrap_or(TlsVersion::TlsV1_2).max(TlsVersion::TlsV1_2);
    let hi = max.unwrap_or(TlsVersion::TlsV1_3).max(TlsVersion::TlsV1_2);
    let mut v = Vec::new();
    if lo <= TlsVersion::TlsV1_2 && hi >= TlsVersion::TlsV1_2 {
        v.push(&rustls::version::TLS12);
    }
    if hi >= TlsVersion::TlsV1_3 {
        v.push(&rustls::version::TLS13);
    }
    v
}

/// Envoy's name of a protocol version (`%DOWNSTREAM_TLS_VERSION%`): `TLSv1.2`, `TLSv1.3`.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> Option<&'static str> {
    match v? {
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        _ => Some("unknown"),
    }
}

/// The certificates of a checked data source.
pub fn chain_of(ds: &DataSource) -> Result<Vec<CertificateDer<'static>>, String> {
    tern_config::tls::certificates(ds.bytes()).map_err(|e| format!("{} {e}", ds.describe()))
}

/// A certificate chain and its key, ready to sign: the key is one ring can use, and it belongs
/// to the certificate (ring's check, which also covers keys the configuration check could not).
pub fn certified_key(chain: &DataSource, key: &DataSource) -> Result<Arc<CertifiedKey>, String> {
    let certs = chain_of(chain)?;
    let der: PrivateKeyDer<'static> = tern_config::tls::private_key(key.bytes())
        .map_err(|e| format!("private_key ({}) {e}", key.describe()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("private_key ({}): not usable: {e}", key.describe()))?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        // Ring cannot tell for some key types: the configuration check compared them already.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(format!(
                "private_key ({}) does not match the certificate of certificate_chain ({}): {e}",
                key.describe(),
                chain.describe()
            ))
        }
    }
    Ok(Arc::new(ck))
}

/// A root store of the CA certificates of a checked data source.
pub fn roots_of(ds: &DataSource) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in chain_of(ds)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: CA not usable: {e}", ds.describe()))?;
    }
    Ok(roots)
}

/// The system's root certificates (read once per process: a few hundred certificates).
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "cannot read some system root certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system root certificates loaded");
            Arc::new(roots)
        })
        .clone()
}
