//! What stride adds to sqlx's TLS (rustls with ring) so that certificates mean
//! what they mean to libpq: the trust store holds only what `sslrootcert` names,
//! `sslrootcert=system` is the operating system's roots (or Mozilla's, compiled
//! in, where the system has none: a static binary in an empty container), and a
//! failed handshake is explained in the user's terms.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use rustls::{AlertDescription, CertificateError};

use crate::engine::postgres::libpq::RootCert;

/// `SSL_CERT_FILE` and `SSL_CERT_DIR` as the user set them, before
/// [`isolate_trust_store`] pointed them away.
static USER_CERT_PATHS: OnceLock<(Option<PathBuf>, Option<PathBuf>)> = OnceLock::new();

/// sqlx (built with `rustls-native-certs`) adds the platform's roots to every
/// handshake that verifies, so `sslrootcert=private-ca.pem` with `verify-ca` would
/// also accept any publicly issued certificate, which libpq does not. Pointing
/// `rustls-native-certs` at an empty file (it reads `SSL_CERT_FILE` first) leaves
/// exactly the certificates stride hands sqlx. Call once, before any thread is
/// started (it sets process environment variables).
pub fn isolate_trust_store() {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    USER_CERT_PATHS.get_or_init(|| (var("SSL_CERT_FILE"), var("SSL_CERT_DIR")));
    std::env::set_var("SSL_CERT_FILE", "/dev/null");
    std::env::remove_var("SSL_CERT_DIR");
}

/// CA bundles of the common Linux distributions and BSDs, where OpenSSL (and so
/// libpq's `sslrootcert=system`) finds them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The PEM roots `sslrootcert=system` trusts: `SSL_CERT_FILE` / `SSL_CERT_DIR` as
/// OpenSSL reads them, else the system's bundle, else the Mozilla roots compiled
/// into stride.
pub fn system_roots_pem() -> Vec<u8> {
    let (file, dir) = USER_CERT_PATHS.get().cloned().unwrap_or_default();
    let mut pem = Vec::new();
    if let Some(file) = file {
        pem.extend(std::fs::read(file).unwrap_or_default());
    }
    if let Some(dir) = dir {
        pem.extend(read_dir_pem(&dir));
    }
    if pem.is_empty() {
        if let Some(bundle) = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| std::fs::read(p).ok().filter(|b| !b.is_empty()))
        {
            pem = bundle;
        }
    }
    if pem.is_empty() {
        tracing::debug!(
            "no system CA bundle found: trusting the Mozilla roots compiled into stride"
        );
        pem = compiled_in_roots_pem();
    }
    pem
}

fn read_dir_pem(dir: &Path) -> Vec<u8> {
    let mut pem = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path()) {
            pem.extend(bytes);
            pem.push(b'\n');
        }
    }
    pem
}

/// Mozilla's roots (webpki-root-certs), as PEM.
fn compiled_in_roots_pem() -> Vec<u8> {
    let mut pem = String::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
}

/// What a failed handshake means and what to do about it.
pub fn explain(error: &rustls::Error, sslmode: &str, root: Option<&RootCert>) -> String {
    let roots = match root {
        Some(RootCert::File(path)) => format!("sslrootcert ({})", path.display()),
        Some(RootCert::System) => "the system's trusted roots (sslrootcert=system)".to_string(),
        None => "no root certificate".to_string(),
    };
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's certificate is not signed by a CA in {roots}: unknown issuer (set sslrootcert to the CA bundle of your server or provider, e.g. RDS's global-bundle.pem, Azure's DigiCert Global Root G2, Cloud SQL's server-ca.pem; or sslrootcert=system for a publicly signed server)"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            let (host, names) = match error {
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                }) => (
                    format!(" \"{}\"", expected.to_str()),
                    format!(
                        " (it names {})",
                        presented.iter().map(|n| bare_name(n)).collect::<Vec<_>>().join(", ")
                    ),
                ),
                _ => (String::new(), String::new()),
            };
            format!(
                "the server's certificate is not valid for host{host}{names}: name mismatch (connect with a host name the certificate names, or use sslmode=verify-ca to check the chain only)"
            )
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired (its administrator must renew it; check this machine's clock too)".to_string(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the server's certificate is not valid yet (check this machine's clock)".to_string(),
        rustls::Error::InvalidCertificate(other) => format!(
            "the server's certificate did not verify against {roots}: {other:?} (sslmode={sslmode})"
        ),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
        ) => "the server asked for a client certificate and none was sent (set sslcert and sslkey, or put them in ~/.postgresql/postgresql.crt and postgresql.key)".to_string(),
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::DecryptError,
        ) => "the server rejected the client certificate (sslcert): it is not signed by a CA the server trusts (its ssl_ca_file)".to_string(),
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => {
            "the server rejected the client certificate (sslcert): it has expired".to_string()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// `DnsName("db.example.com")` (rustls's way of listing a certificate's names)
/// as `db.example.com`.
fn bare_name(name: &str) -> &str {
    name.split_once("(\"")
        .and_then(|(_, rest)| rest.strip_suffix("\")"))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_roots_are_pem_that_rustls_reads_back() {
        use rustls::pki_types::pem::PemObject;
        let pem = compiled_in_roots_pem();
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(certs.len() > 100);
        assert_eq!(
            certs[0].as_ref(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref()
        );
    }

    #[test]
    fn each_verification_failure_says_what_failed_and_what_to_do() {
        let root = RootCert::File(PathBuf::from("/ca.pem"));
        let unknown = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "verify-full",
            Some(&root),
        );
        assert!(
            unknown.contains("not signed by a CA in sslrootcert (/ca.pem): unknown issuer"),
            "{unknown}"
        );
        assert!(unknown.contains("set sslrootcert"), "{unknown}");
        let name = explain(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            "verify-full",
            Some(&root),
        );
        assert!(name.contains("name mismatch"), "{name}");
        let name = explain(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("db.example.com").unwrap(),
                presented: vec!["DnsName(\"localhost\")".to_string()],
            }),
            "verify-full",
            Some(&root),
        );
        assert!(
            name.starts_with("the server's certificate is not valid for host \"db.example.com\" (it names localhost): name mismatch"),
            "{name}"
        );
        let expired = explain(
            &rustls::Error::InvalidCertificate(CertificateError::Expired),
            "verify-ca",
            Some(&root),
        );
        assert!(expired.contains("has expired"), "{expired}");
        let client = explain(
            &rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            "require",
            None,
        );
        assert!(client.contains("set sslcert and sslkey"), "{client}");
    }
}
