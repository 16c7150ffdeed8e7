//! TLS for every client of the fleet, decided in one place: which
//! certificate authorities are trusted, which crypto provider does the work,
//! and what a failed handshake tells the operator.
//!
//! **Trust: the platform store plus the extra CAs given the usual way.**
//! `SSL_CERT_FILE` (a PEM bundle) and `SSL_CERT_DIR` (directories of PEM
//! files, `:`-separated) add CAs for RabbitMQ (`amqps://`), Redis
//! (`rediss://`), the search cluster and the management API (`https://`),
//! and PostgreSQL (with `sslmode=verify-full`); PostgreSQL also takes
//! `sslrootcert=` in `DATABASE_URL`, which adds to both.
//!
//! Why one place: each client library loads the platform store by itself
//! (rustls-native-certs), and there `SSL_CERT_FILE` *replaces* the platform
//! store rather than adding to it, while redis's own CA option replaces the
//! roots and PostgreSQL's `sslrootcert` adds to them. Left alone, one
//! variable would mean four different trust decisions. So when an extra CA
//! is configured, every client is given the same explicit list, built here
//! once per process: the platform's roots (read from the system's
//! certificate directories, the variables ignored) plus the extra CAs.
//! Without an extra CA nothing changes: every client uses the platform store.
//!
//! **One crypto provider.** The build has one rustls with ring as its only
//! provider (`shared/CRATES.md`, "TLS"); [`install_crypto_provider`] makes
//! it the process default the first time any client asks for trust, so no
//! library has to guess (redis panics when it cannot).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Service, ServiceError};

/// The variable naming a PEM bundle of extra CAs.
pub const CERT_FILE_VAR: &str = "SSL_CERT_FILE";
/// The variable naming directories of extra CA files (`:`-separated).
pub const CERT_DIR_VAR: &str = "SSL_CERT_DIR";

/// Well-known bundle files of the platform store (openssl-probe's list, the
/// common ones); the directories come from `openssl_probe::candidate_cert_dirs`.
const PLATFORM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The process's trust decision (see the module documentation).
pub struct Trust {
    /// Where the extra CAs came from (`SSL_CERT_FILE=/path …`), for messages;
    /// `None` when only the platform store is trusted.
    extra_source: Option<String>,
    /// Platform roots plus the extra CAs as one PEM bundle, only when extra
    /// CAs are configured: what the clients that take a PEM get.
    bundle: Option<Vec<u8>>,
    /// The same roots for the clients that take a rustls configuration
    /// (AMQP, the management API); always set.
    config: Arc<ClientConfig>,
    /// How many roots `config` trusts (for the start-up log).
    roots: usize,
}

impl Trust {
    /// The process's trust, loaded on first use. A configured extra CA that
    /// cannot be read is an error naming the variable and the file.
    pub fn get() -> Result<&'static Trust, String> {
        static TRUST: OnceLock<Result<Trust, String>> = OnceLock::new();
        TRUST
            .get_or_init(Trust::load)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// [`get`](Self::get) for a client of `service`: the error is a
    /// [`ServiceError`] for that service.
    pub fn for_service(service: Service) -> Result<&'static Trust, ServiceError> {
        Self::get().map_err(|e| {
            ServiceError::new(service, format!("cannot set up TLS for {service}: {e}"))
        })
    }

    fn load() -> Result<Trust, String> {
        install_crypto_provider();
        let (extra, extra_source) = extra_cas()?;
        let mut roots = if extra.is_empty() {
            // Exactly what each client loads by itself without the variables.
            rustls_native_certs::load_native_certs().certs
        } else {
            platform_roots()
        };
        roots.extend(extra.iter().cloned());
        let roots = usable(roots);
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(roots.iter().cloned());
        let count = store.len();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("rustls refuses its default protocol versions: {e}"))?
                .with_root_certificates(store)
                .with_no_client_auth();
        let bundle = (!extra.is_empty()).then(|| pem_bundle(&roots));
        if let Some(source) = &extra_source {
            tracing::debug!(
                extra = %source,
                roots = count,
                "TLS trusts the platform store plus the extra CAs."
            );
        }
        Ok(Trust {
            extra_source,
            bundle,
            config: Arc::new(config),
            roots: count,
        })
    }

    /// A rustls client configuration trusting the platform store plus the
    /// extra CAs (ring provider, safe default protocol versions).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Platform roots plus the extra CAs as PEM, when extra CAs are
    /// configured (`None`: the client's own platform store is the same trust).
    pub fn bundle_pem(&self) -> Option<&[u8]> {
        self.bundle.as_deref()
    }

    /// Where the extra CAs came from, when there are any.
    pub fn extra_source(&self) -> Option<&str> {
        self.extra_source.as_deref()
    }

    /// How many roots are trusted.
    pub fn roots(&self) -> usize {
        self.roots
    }
}

/// Makes ring the process's default rustls provider (once; a provider
/// already installed by someone else stays). Called by [`Trust::get`], so
/// every client in `shared` has it before its first handshake; a binary may
/// call it earlier.
pub fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // `Err` only when a provider is installed already: that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The CAs of `SSL_CERT_FILE` and `SSL_CERT_DIR`, and a description of
/// where they came from.
fn extra_cas() -> Result<(Vec<CertificateDer<'static>>, Option<String>), String> {
    let mut certs = Vec::new();
    let mut sources = Vec::new();
    if let Some(file) = std::env::var_os(CERT_FILE_VAR).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(file);
        let found = read_pem_certs(&path).map_err(|e| {
            format!(
                "{CERT_FILE_VAR}={}: cannot read it ({e}); it must name a PEM file of CA certificates",
                path.display()
            )
        })?;
        if found.is_empty() {
            return Err(format!(
                "{CERT_FILE_VAR}={}: no PEM certificate in it (\"-----BEGIN CERTIFICATE-----\")",
                path.display()
            ));
        }
        certs.extend(found);
        sources.push(format!("{CERT_FILE_VAR}={}", path.display()));
    }
    if let Some(dirs) = std::env::var_os(CERT_DIR_VAR).filter(|v| !v.is_empty()) {
        for dir in std::env::split_paths(&dirs) {
            let entries = std::fs::read_dir(&dir).map_err(|e| {
                format!(
                    "{CERT_DIR_VAR}: cannot read directory {} ({e})",
                    dir.display()
                )
            })?;
            for entry in entries.flatten() {
                // Files that are no PEM (hash links to the same file, READMEs) add nothing.
                certs.extend(read_pem_certs(&entry.path()).unwrap_or_default());
            }
            sources.push(format!("{CERT_DIR_VAR} {}", dir.display()));
        }
    }
    let source = (!sources.is_empty()).then(|| sources.join(", "));
    Ok((certs, source))
}

/// The platform's roots, read from its bundle files and certificate
/// directories, whatever `SSL_CERT_FILE`/`SSL_CERT_DIR` say.
fn platform_roots() -> Vec<CertificateDer<'static>> {
    let mut certs = Vec::new();
    if let Some(bundle) = PLATFORM_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
        certs.extend(read_pem_certs(bundle).unwrap_or_default());
    }
    for dir in openssl_probe::candidate_cert_dirs() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                certs.extend(read_pem_certs(&entry.path()).unwrap_or_default());
            }
        }
    }
    certs
}

/// Every certificate of a PEM file (other PEM sections are skipped).
fn read_pem_certs(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(path)?;
    Ok(CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .collect())
}

/// Without duplicates, and only certificates that parse as trust anchors: a
/// PEM bundle given to redis or sqlx fails as a whole on one that does not.
fn usable(certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    let mut seen = HashSet::new();
    certs
        .into_iter()
        .filter(|c| seen.insert(c.as_ref().to_vec()))
        .filter(|c| RootCertStore::empty().add(c.clone()).is_ok())
        .collect()
}

/// Certificates as one PEM bundle.
fn pem_bundle(certs: &[CertificateDer<'static>]) -> Vec<u8> {
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            // `unwrap`: base64 output is ASCII.
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

/// An error and its sources, each cause once (`a: b: c`): libraries often
/// hide the TLS reason (`invalid peer certificate: UnknownIssuer`) in a
/// source that their own message leaves out.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !s.is_empty() && !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// What a failed connection's error text means for TLS, in words an
/// operator can act on, if it is a TLS failure: an untrusted certificate,
/// a certificate for another name, an expired one, or a server that does
/// not speak TLS on that port.
pub fn hint(service: Service, error_text: &str) -> Option<String> {
    let t = error_text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
    // rustls words a refused server certificate `invalid peer certificate: <why>`.
    let certificate = t.contains("certificate");
    if certificate && has(&["unknownissuer", "unknown issuer", "badsignature"]) {
        let how = match service {
            Service::PostgreSql => {
                "add sslrootcert=/path/to/ca.pem (with sslmode=verify-full) to DATABASE_URL, \
                 or set SSL_CERT_FILE to the CA bundle"
            }
            _ => {
                "set SSL_CERT_FILE to the CA bundle that signed the server's certificate \
                 (it is added to the platform store)"
            }
        };
        return Some(format!("certificate not trusted: {how}"));
    }
    if certificate && has(&["notvalidforname", "not valid for name"]) {
        return Some(
            "the server's certificate is not valid for this host name: use a name or address \
             its certificate lists (subject alternative names)"
                .into(),
        );
    }
    if certificate && has(&["expired", "notvalidyet", "not valid yet"]) {
        return Some(
            "the server's certificate has expired or is not valid yet (check it and this \
             machine's clock)"
                .into(),
        );
    }
    if has(&[
        "invalidcontenttype",
        "corrupt message",
        "wrong version number",
        "record overflow",
        "invalidmessage",
    ]) {
        let what = match service {
            Service::RabbitMq => {
                "amqps:// needs the broker's TLS listener (5671 by default); use amqp:// \
                 for a plaintext port"
            }
            Service::Redis => {
                "rediss:// needs redis-server's tls-port; use redis:// for a plaintext port"
            }
            Service::PostgreSql => "the server refused TLS",
            _ => "https:// needs a TLS endpoint; use http:// for a plaintext one",
        };
        return Some(format!(
            "the server does not speak TLS on this port: {what}"
        ));
    }
    None
}

/// `text` with the TLS hint for it appended (`text (hint)`), if it has one.
pub fn explain(service: Service, text: &str) -> String {
    match hint(service, text) {
        Some(h) => format!("{text} ({h})"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_certificates_say_how_to_trust_them() {
        let h = hint(
            Service::RabbitMq,
            "IO error: invalid peer certificate: UnknownIssuer",
        )
        .unwrap();
        assert!(
            h.contains("certificate not trusted") && h.contains("SSL_CERT_FILE"),
            "{h}"
        );
        let h = hint(
            Service::PostgreSql,
            "invalid peer certificate: UnknownIssuer",
        )
        .unwrap();
        assert!(h.contains("sslrootcert"), "{h}");
    }

    #[test]
    fn a_plaintext_port_is_named_as_such() {
        let h = hint(
            Service::RabbitMq,
            "received corrupt message of type InvalidContentType",
        )
        .unwrap();
        assert!(
            h.contains("does not speak TLS") && h.contains("amqp://"),
            "{h}"
        );
        assert_eq!(hint(Service::Redis, "connection refused"), None);
    }

    #[test]
    fn a_pem_bundle_reads_back_as_the_same_certificates() {
        let certs = usable(rustls_native_certs::load_native_certs().certs);
        if certs.is_empty() {
            return; // No platform store on this machine: nothing to round-trip.
        }
        let pem = pem_bundle(&certs[..3.min(certs.len())]);
        let back: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .map(Result::unwrap)
            .collect();
        assert_eq!(back, certs[..3.min(certs.len())]);
    }
}
