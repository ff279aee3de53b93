//! What the link tests share: configurations, a test [`Handler`] and a server running
//! it, and certificates made with rcgen for the mutual TLS tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{serve, Handler, HandlerFuture, LinkConfig, Peer, DEFAULT_MAX_FRAME};
use crate::config::cluster::{ClusterConfig, NodeId};
use crate::tls::TlsFiles;

pub(super) const SECRET: &[u8] = b"the cluster's shared secret";
/// Bound on every wait for a condition; far above what any of them takes.
pub(super) const LONG: Duration = Duration::from_secs(10);

pub(super) fn plain(node_id: NodeId, secret: &[u8]) -> LinkConfig {
    LinkConfig {
        node_id,
        secret: Some(secret.to_vec()),
        tls: None,
        max_frame: DEFAULT_MAX_FRAME,
        connect_timeout: Duration::from_secs(5),
        dead_after: Duration::from_secs(60),
    }
}

pub(super) fn config(node_id: NodeId, secret: &[u8]) -> Arc<LinkConfig> {
    Arc::new(plain(node_id, secret))
}

/// Answers `from:request`; `fail` with an error; `slow` once `release` is notified.
#[derive(Default)]
pub(super) struct TestHandler {
    calls: AtomicUsize,
    pub(super) release: Arc<Notify>,
}

pub(super) fn answer(from: NodeId, request: &[u8]) -> Bytes {
    let mut out = format!("{from}:").into_bytes();
    out.extend_from_slice(request);
    out.into()
}

impl Handler for TestHandler {
    fn handle(&self, from: NodeId, request: Bytes) -> HandlerFuture {
        self.calls.fetch_add(1, Relaxed);
        let release = Arc::clone(&self.release);
        Box::pin(async move {
            match request.as_ref() {
                b"fail" => Err("no such thing".to_string()),
                b"slow" => {
                    release.notified().await;
                    Ok(Bytes::from_static(b"late"))
                }
                _ => {
                    // Finish out of order: later requests overtake earlier ones.
                    for _ in 0..request.len() % 5 {
                        tokio::task::yield_now().await;
                    }
                    Ok(answer(from, &request))
                }
            }
        })
    }
}

pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) handler: Arc<TestHandler>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

pub(super) async fn start(config: Arc<LinkConfig>) -> Server {
    start_on("127.0.0.1:0".parse().unwrap(), config).await
}

pub(super) async fn start_on(addr: SocketAddr, config: Arc<LinkConfig>) -> Server {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(TestHandler::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        config,
        Arc::clone(&handler) as Arc<dyn Handler>,
        shutdown.clone(),
    ));
    Server {
        addr,
        handler,
        shutdown,
        task,
    }
}

impl Server {
    pub(super) fn calls(&self) -> usize {
        self.handler.calls.load(Relaxed)
    }

    pub(super) fn peer(&self, config: Arc<LinkConfig>, target: NodeId) -> Peer {
        Peer::new(config, target, self.addr.to_string())
    }

    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(LONG, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

pub(super) fn request(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub(super) struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: PathBuf,
}

pub(super) fn ca(dir: &Path, name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("tern test CA {name}"));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = dir.join(format!("ca-{name}.pem"));
    std::fs::write(&pem, cert.pem()).unwrap();
    Ca { cert, key, pem }
}

/// A node certificate for 127.0.0.1 and localhost signed by `signer`, trusting
/// `trusted` for the other nodes.
pub(super) fn node(dir: &Path, name: &str, signer: &Ca, trusted: &Ca) -> TlsFiles {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &signer.cert, &signer.key).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        client_ca: Some(trusted.pem.clone()),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

pub(super) fn tls_config(
    node_id: NodeId,
    files: &TlsFiles,
    secret: Option<&[u8]>,
) -> Arc<LinkConfig> {
    let cluster = ClusterConfig {
        node_id,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: BTreeMap::new(),
        secret: secret.map(<[u8]>::to_vec),
        tls: Some(files.clone()),
        join: false,
    };
    let mut config = LinkConfig::from_cluster(&cluster).unwrap();
    config.connect_timeout = Duration::from_secs(5);
    Arc::new(config)
}
