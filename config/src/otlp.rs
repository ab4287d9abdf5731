//! The rules for OTLP exporter settings (endpoint URL, CA file, export headers), shared by the
//! checks here and the exporter in the proxy, so a setting that passes `tern-validate` loads.

use http::Uri;

use crate::OtlpProtocol;

/// The URL an exporter sends to, from the configured `endpoint`; the error says what is wrong.
///
/// gRPC takes `http(s)://host:port` (a path has no meaning: the method path comes from the
/// service). HTTP takes the collector's base URL and appends `/v1/traces`, as the OTel exporter
/// spec does for `OTEL_EXPORTER_OTLP_ENDPOINT`, unless the path already ends with `/v1/traces`.
pub fn resolve_endpoint(endpoint: &str, protocol: OtlpProtocol) -> Result<String, String> {
    let e = endpoint.trim();
    let uri: Uri = e
        .parse()
        .map_err(|err| format!("otlp endpoint `{e}` is not a URL: {err}"))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => {
            return Err(format!(
                "otlp endpoint `{e}` must be an http:// or https:// URL such as \
                 http://127.0.0.1:4317"
            ))
        }
    };
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("otlp endpoint `{e}` has no host"))?;
    if uri.query().is_some() {
        return Err(format!("otlp endpoint `{e}` must not have a query"));
    }
    // Credentials in the URL would end up in logs and /config_dump.
    if authority.as_str().contains('@') {
        return Err(
            "otlp endpoint must not carry credentials (user:password@); send them in `headers` \
             (e.g. authorization), which are never logged"
                .to_string(),
        );
    }
    let path = uri.path().trim_end_matches('/');
    match protocol {
        OtlpProtocol::Grpc if !path.is_empty() => Err(format!(
            "otlp endpoint `{e}`: a gRPC endpoint takes no path (the service defines it); \
             use {scheme}://{authority}"
        )),
        OtlpProtocol::Grpc => Ok(format!("{scheme}://{authority}")),
        OtlpProtocol::Http if path.ends_with("/v1/traces") => {
            Ok(format!("{scheme}://{authority}{path}"))
        }
        OtlpProtocol::Http => Ok(format!("{scheme}://{authority}{path}/v1/traces")),
    }
}

/// Reads `tls.ca_file`: its PEM text, once it is known to hold at least one certificate and
/// every certificate in it can be a trust anchor (the check and the exporter share this).
pub fn read_ca_file(path: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("ca_file `{path}`: cannot read: {e}"))?;
    let mut found = 0;
    for (i, cert) in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| format!("ca_file `{path}`: bad PEM: {e}"))?;
        // The parse rustls's root store makes when the exporter adds the certificate.
        webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| format!("ca_file `{path}`: certificate {} is not usable: {e}", i + 1))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!(
            "ca_file `{path}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(pem)
}

/// Headers the transport sets itself: a configured one would clash with it or break the call.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Checks a configured export header name; the error says what is wrong.
pub fn check_header_name(name: &str, protocol: OtlpProtocol) -> Result<(), String> {
    let n = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("otlp header name `{name}` is not a valid HTTP header name"))?;
    if RESERVED_HEADERS.contains(&n.as_str()) {
        return Err(format!(
            "otlp header `{name}` is set by the exporter and cannot be configured"
        ));
    }
    if protocol == OtlpProtocol::Grpc {
        if n.as_str().starts_with("grpc-") {
            return Err(format!(
                "otlp header `{name}`: grpc-* names are reserved by gRPC"
            ));
        }
        // gRPC sends `-bin` metadata base64-encoded; a text value would not survive that.
        if n.as_str().ends_with("-bin") {
            return Err(format!(
                "otlp header `{name}`: -bin names are binary gRPC metadata, not supported"
            ));
        }
    }
    Ok(())
}

/// Checks a configured export header value: printable ASCII (gRPC metadata allows no more).
pub fn check_header_value(name: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("otlp header `{name}` has an empty value"));
    }
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(format!(
            "otlp header `{name}`: the value must be printable ASCII (no control or non-ASCII \
             characters)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_per_protocol() {
        use OtlpProtocol::*;
        let ok = |e, p| resolve_endpoint(e, p).unwrap();
        let err = resolve_endpoint("https://user:key@collector:4318", Http).unwrap_err();
        assert!(
            err.contains("credentials") && !err.contains("key@"),
            "{err}"
        );
        assert_eq!(ok("http://collector:4317", Grpc), "http://collector:4317");
        assert_eq!(ok("http://collector:4317/", Grpc), "http://collector:4317");
        assert_eq!(
            ok("http://collector:4318", Http),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            ok("http://collector:4318/", Http),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            ok("http://collector:4318/otlp", Http),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(
            ok("http://collector:4318/v1/traces", Http),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            ok("https://collector:4317/", Grpc),
            "https://collector:4317"
        );
        assert_eq!(
            ok("https://otlp.example.com/otlp", Http),
            "https://otlp.example.com/otlp/v1/traces"
        );
        for (bad, p, why) in [
            ("collector:4317", Grpc, "http:// or https:// URL"),
            ("ftp://collector", Http, "http:// or https:// URL"),
            ("http://collector:4317/v1", Grpc, "takes no path"),
            ("http://collector:4318/?a=1", Http, "query"),
            ("not a url", Http, "not a URL"),
            ("", Grpc, "not a URL"),
        ] {
            let e = resolve_endpoint(bad, p).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn export_headers_are_checked_per_protocol() {
        use OtlpProtocol::*;
        assert_eq!(check_header_name("X-Api-Key", Grpc), Ok(()));
        assert_eq!(check_header_name("x-honeycomb-team", Http), Ok(()));
        assert_eq!(check_header_name("x-trace-bin", Http), Ok(()));
        for (bad, p, why) in [
            ("bad name", Http, "not a valid HTTP header name"),
            ("", Grpc, "not a valid HTTP header name"),
            ("Content-Type", Http, "set by the exporter"),
            ("te", Grpc, "set by the exporter"),
            ("grpc-timeout", Grpc, "reserved by gRPC"),
            ("x-trace-bin", Grpc, "binary gRPC metadata"),
        ] {
            let e = check_header_name(bad, p).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(check_header_value("k", "Bearer abc=="), Ok(()));
        for (bad, why) in [
            ("", "empty value"),
            ("  ", "empty value"),
            ("a\nb", "printable ASCII"),
            ("clé", "printable ASCII"),
        ] {
            let e = check_header_value("k", bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ca_file_must_hold_pem_certificates() {
        let dir = std::env::temp_dir().join(format!("tern-otlp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = read_ca_file(missing.to_str().unwrap()).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let text = dir.join("text.pem");
        std::fs::write(&text, "not a certificate\n").unwrap();
        let e = read_ca_file(text.to_str().unwrap()).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_ca_file(garbage.to_str().unwrap()).unwrap_err();
        assert!(e.contains("certificate 1 is not usable"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
