//! The one TLS configuration of a function instance, shared by the AWS SDK's
//! HTTP client ([`crate::aws_http`]) and the provider client
//! ([`crate::oauth::http_client`]): rustls on aws-lc-rs, with roots that
//! need no directory scan.
//!
//! - [`TlsRoots::Compiled`] (the default): Mozilla's root program compiled
//!   in (`webpki-roots`). Building the store copies about 150 static trust
//!   anchors; no file is opened. `scripts/bench warm` measures it.
//! - [`TlsRoots::System`] (`TLS_ROOTS=system`): the platform's bundle, one
//!   file (`SSL_CERT_FILE`, else the first of [`SYSTEM_BUNDLES`]), parsed
//!   once. For operators whose policy is the OS store; it costs a file read
//!   and ~150 certificate parses.
//! - `EXTRA_CA_FILE`: PEM certificates added to either set, for
//!   self-hosted providers behind a private CA
//!   (`tls::tests::extra_ca_file_is_trusted_on_top_of_the_roots`).

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the trust anchors come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsRoots {
    /// Mozilla's roots compiled into the binary (`webpki-roots`).
    #[default]
    Compiled,
    /// The platform's PEM bundle, one file.
    System,
}

/// The TLS settings from the environment (see [`crate::Config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub roots: TlsRoots,
    /// PEM file of extra trusted certificates (`EXTRA_CA_FILE`).
    pub extra_ca_file: Option<PathBuf>,
    /// `SSL_CERT_FILE`, the bundle [`TlsRoots::System`] reads first.
    pub system_bundle: Option<PathBuf>,
}

/// Where distributions keep the one-file bundle: Debian and Ubuntu, then
/// Amazon Linux (Lambda's `provided.al2023`) and Fedora.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The trust anchors cannot be built; the function must not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("TLS: {path} holds no usable certificate")]
    Empty { path: String },
    #[error("TLS: {path} holds {count} certificate(s) that cannot be parsed or used")]
    Unusable { path: String, count: usize },
    #[error("TLS: no system certificate bundle found (set SSL_CERT_FILE)")]
    NoSystemBundle,
}

/// The two client configurations of a process: the AWS SDK's trusts the
/// roots only; the provider client's also trusts `EXTRA_CA_FILE`, so a
/// private CA meant for a self-hosted provider can never vouch for an AWS
/// endpoint (`an_extra_ca_is_trusted_for_providers_not_for_aws`).
pub struct ClientConfigs {
    pub aws: Arc<rustls::ClientConfig>,
    pub providers: Arc<rustls::ClientConfig>,
}

/// Both configurations, the roots read once.
pub fn client_configs(settings: &TlsSettings) -> Result<ClientConfigs, TlsError> {
    let base = base_store(settings)?;
    let providers = match &settings.extra_ca_file {
        None => None,
        Some(path) => {
            let mut with = base.clone();
            add_pem_file(&mut with, path, true)?;
            Some(config(with))
        }
    };
    let aws = config(base);
    Ok(ClientConfigs {
        providers: providers.unwrap_or_else(|| aws.clone()),
        aws,
    })
}

/// The provider client's configuration: the roots and `EXTRA_CA_FILE`.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(config(root_store(settings)?))
}

fn config(roots: RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The trust anchors `settings` name, `EXTRA_CA_FILE` included.
pub fn root_store(settings: &TlsSettings) -> Result<RootCertStore, TlsError> {
    let mut roots = base_store(settings)?;
    if let Some(path) = &settings.extra_ca_file {
        add_pem_file(&mut roots, path, true)?;
    }
    Ok(roots)
}

/// The compiled or system roots, without `EXTRA_CA_FILE`.
fn base_store(settings: &TlsSettings) -> Result<RootCertStore, TlsError> {
    Ok(match settings.roots {
        TlsRoots::Compiled => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        TlsRoots::System => {
            let path = match &settings.system_bundle {
                Some(p) => p.clone(),
                None => SYSTEM_BUNDLES
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
                    .ok_or(TlsError::NoSystemBundle)?,
            };
            let mut store = RootCertStore::empty();
            add_pem_file(&mut store, &path, false)?;
            store
        }
    })
}

/// Adds the certificates of a PEM file. `strict` (the operator's own CA
/// file): every block must parse and be usable, or the start fails, so a
/// half-broken file is not found at the first handshake. A system bundle
/// may hold certificates rustls cannot use; they are skipped.
fn add_pem_file(store: &mut RootCertStore, path: &Path, strict: bool) -> Result<(), TlsError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| TlsError::Read {
        path: shown.clone(),
        error: e.to_string(),
    })?;
    let parsed: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect();
    let broken = parsed.iter().filter(|c| c.is_err()).count();
    let certs: Vec<CertificateDer<'static>> = parsed.into_iter().filter_map(Result::ok).collect();
    let (added, unusable) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Empty { path: shown });
    }
    if strict && (broken > 0 || unusable > 0) {
        return Err(TlsError::Unusable {
            path: shown,
            count: broken + unusable,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A self-signed CA (`openssl req -x509 -newkey ec -pkeyopt
    // ec_paramgen_curve:P-256 -subj /CN=broker-test-ca -days 36500`).
    const TEST_CA: &str = include_str!("../tests/fixtures/test-ca.pem");

    fn temp_file(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("broker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn compiled_roots_open_no_file() {
        let settings = TlsSettings {
            // A bundle that does not exist: compiled roots never look.
            system_bundle: Some("/nonexistent/bundle.pem".into()),
            ..TlsSettings::default()
        };
        let roots = root_store(&settings).unwrap();
        assert!(roots.len() > 100, "Mozilla's program has ~150 roots");
    }

    #[test]
    fn system_roots_parse_the_one_bundle() {
        let path = temp_file("bundle.pem", TEST_CA);
        let settings = TlsSettings {
            roots: TlsRoots::System,
            system_bundle: Some(path),
            ..TlsSettings::default()
        };
        assert_eq!(root_store(&settings).unwrap().len(), 1);
    }

    #[test]
    fn extra_ca_file_is_trusted_on_top_of_the_roots() {
        let path = temp_file("extra.pem", TEST_CA);
        let settings = TlsSettings {
            extra_ca_file: Some(path),
            ..TlsSettings::default()
        };
        let with = root_store(&settings).unwrap().len();
        let without = root_store(&TlsSettings::default()).unwrap().len();
        assert_eq!(with, without + 1);
    }

    /// Runs a TLS handshake in memory between `client` and `server`, for
    /// `provider.internal`; the client's refusal, if any.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(), rustls::Error> {
        let name = rustls::pki_types::ServerName::try_from("provider.internal").unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..8 {
            let mut bytes = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut bytes).unwrap();
            }
            s.read_tls(&mut &bytes[..]).unwrap();
            s.process_new_packets()?;
            let mut bytes = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut bytes).unwrap();
            }
            c.read_tls(&mut &bytes[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General(
            "the handshake did not finish".into(),
        ))
    }

    #[test]
    fn an_extra_ca_is_trusted_for_providers_not_for_aws() {
        // A private CA, and a provider's server certificate it signed.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["provider.internal".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let server = Arc::new(server);
        let settings = TlsSettings {
            extra_ca_file: Some(temp_file("extra-split.pem", &ca.pem())),
            ..TlsSettings::default()
        };
        let both = client_configs(&settings).unwrap();
        handshake(both.providers.clone(), server.clone()).expect("the provider client trusts it");
        let refused = handshake(both.aws.clone(), server.clone()).unwrap_err();
        assert!(
            matches!(
                refused,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "the AWS client does not: {refused:?}"
        );
        let plain = client_configs(&TlsSettings::default()).unwrap();
        assert!(
            handshake(plain.providers, server).is_err(),
            "without the CA file, nobody does"
        );
    }

    #[test]
    fn a_ca_file_with_one_broken_certificate_stops_the_start() {
        let broken = format!(
            "{TEST_CA}-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
        );
        let settings = TlsSettings {
            extra_ca_file: Some(temp_file("half.pem", &broken)),
            ..TlsSettings::default()
        };
        assert!(
            matches!(
                root_store(&settings),
                Err(TlsError::Unusable { count: 1, .. })
            ),
            "{:?}",
            root_store(&settings).err()
        );
        assert!(client_configs(&settings).is_err());
    }

    #[test]
    fn unreadable_or_empty_ca_files_stop_the_start() {
        let missing = TlsSettings {
            extra_ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        assert!(matches!(root_store(&missing), Err(TlsError::Read { .. })));
        let empty = TlsSettings {
            extra_ca_file: Some(temp_file("empty.pem", "not a certificate\n")),
            ..TlsSettings::default()
        };
        assert!(matches!(root_store(&empty), Err(TlsError::Empty { .. })));
        assert!(client_config(&empty).is_err());
    }
}
