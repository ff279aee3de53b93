//! TLS for the client listener: certificates from PEM files, optional mutual TLS,
//! and reloading on SIGHUP without dropping connections.
//!
//! Only TLS 1.2 and 1.3 are offered (rustls supports nothing older). With a client CA
//! configured, the TLS listener requires a client certificate signed by it; the
//! certificate's subject — its common name, or else its first DNS name — then names
//! the connection's user.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Where the TLS material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; `None`: no
    /// client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the certificate and key in {cert} / {key} are not usable: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The CA certificates in `path`, as the roots to verify the other side against.
fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| read_err(path, e))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Reads the files and builds a server configuration.
    ///
    /// # Errors
    ///
    /// A file cannot be read or holds nothing usable.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let chain = certificates(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| read_err(&self.key, e))?;
        let config_err = |reason: String| TlsError::Config {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason,
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| config_err(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| read_err(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(chain, key)
            .map_err(|e| config_err(e.to_string()))
    }

    /// Reads the files and builds a client configuration for the cluster's peer links:
    /// it trusts only `client_ca` (the CA every node's certificate chains to, so each
    /// node checks the other's certificate against the same CA both ways) and presents
    /// this node's own certificate and key as its client certificate (mutual TLS).
    ///
    /// # Errors
    ///
    /// A file cannot be read or holds nothing usable, or `client_ca` is not set.
    pub(crate) fn load_client(&self) -> Result<ClientConfig, TlsError> {
        let config_err = |reason: String| TlsError::Config {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason,
        };
        let ca = self.client_ca.as_ref().ok_or_else(|| {
            config_err("no client CA: peer links verify each other against it".to_string())
        })?;
        let roots = roots(ca)?;
        let chain = certificates(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| read_err(&self.key, e))?;
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| config_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_err(e.to_string()))
    }
}

/// The TLS acceptor in force, replaceable while connections are open.
pub(crate) struct Tls {
    files: TlsFiles,
    /// A std `RwLock`: read once per accepted connection, written on reload.
    current: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(files.load()?));
        Ok(Self {
            files,
            current: RwLock::new(acceptor),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the certificate files. Connections already open keep their session;
    /// new ones get the new certificate. On error the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(self.files.load()?));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        Ok(())
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

/// The identity a client certificate gives: its common name, or else its first DNS
/// name. `None` if it has neither (or does not parse).
pub(crate) fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_string()),
        _ => None,
    })
}
