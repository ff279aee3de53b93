//! How a client reaches its server: TCP, TLS over TCP (`tls://host:port`), or any byte
//! stream a custom connector opens (an in-process pipe, say). The connector is called
//! for the first connection and for every reconnect.
//!
//! TLS offers versions 1.2 and 1.3 only and always checks that the server's
//! certificate names the host connected to; it trusts the system's root certificates
//! unless a CA file is given.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

/// A bidirectional byte stream a custom connector may return.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

type BoxStream = Box<dyn AsyncStream>;
type Connect =
    dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>> + Send + Sync;

/// Opens connections.
#[derive(Clone)]
pub(crate) enum Connector {
    Tcp(String),
    Tls {
        addr: String,
        server_name: ServerName<'static>,
        connector: TlsConnector,
    },
    Custom(Arc<Connect>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connector::Tcp(addr) => write!(f, "Tcp({addr})"),
            Connector::Tls { addr, .. } => write!(f, "Tls({addr})"),
            Connector::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl Connector {
    pub fn custom<F, Fut, S>(connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncStream,
    {
        Connector::Custom(Arc::new(move || {
            let fut = connect();
            Box::pin(async move { fut.await.map(|s| Box::new(s) as BoxStream) })
        }))
    }

    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            Connector::Tcp(addr) => {
                let stream = TcpStream::connect(addr.as_str()).await?;
                // Best effort: without it small frames wait for Nagle's timer.
                let _ = stream.set_nodelay(true);
                Ok(Either::Left(stream))
            }
            Connector::Tls {
                addr,
                server_name,
                connector,
            } => {
                let stream = TcpStream::connect(addr.as_str()).await?;
                let _ = stream.set_nodelay(true);
                let tls = connector.connect(server_name.clone(), stream).await?;
                Ok(Either::Right(Box::new(tls)))
            }
            Connector::Custom(connect) => Ok(Either::Right(connect().await?)),
        }
    }
}

/// TLS settings for a client: whom to trust, and the client's own certificate for
/// mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// The client's certificate chain (PEM), for servers that require one.
    pub cert: Option<PathBuf>,
    /// The client's private key (PEM).
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// A connector for `host:port`, verifying that the server's certificate names
    /// `host`.
    pub(crate) fn connector(&self, addr: &str) -> Result<Connector, String> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("'{host}' cannot be checked against a certificate: {e}"))?;
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    // A system root rustls cannot use is skipped, as browsers do.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err("no system root certificates found; pass a CA file".into());
                }
            }
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("a client certificate needs both the certificate and its key".into()),
        };
        Ok(Connector::Tls {
            addr: addr.to_string(),
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// An open connection: TCP, or any other byte stream (TLS, a custom connector's).
pub(crate) type Stream = Either<TcpStream, BoxStream>;
/// The reading half of a [`Stream`].
pub(crate) type ReadHalf = Either<OwnedReadHalf, tokio::io::ReadHalf<BoxStream>>;
/// The writing half of a [`Stream`].
pub(crate) type WriteHalf = Either<OwnedWriteHalf, tokio::io::WriteHalf<BoxStream>>;

/// Splits `stream` into halves the reader and the writer own. TCP splits without a lock.
pub(crate) fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
    match stream {
        Either::Left(s) => {
            let (r, w) = s.into_split();
            (Either::Left(r), Either::Left(w))
        }
        Either::Right(s) => {
            let (r, w) = tokio::io::split(s);
            (Either::Right(r), Either::Right(w))
        }
    }
}
