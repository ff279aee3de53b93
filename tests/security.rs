//! The broker at its edge, end to end: TLS (server verification, mutual TLS, reloading
//! certificates), logins (passwords, tokens, certificates, anonymous), per-subject
//! permissions, and the limits that keep one client from hurting the others.
//!
//! A real broker in this process, the real client library and the real binaries.
//! Certificates are made here with rcgen (a CA, an unrelated CA, a server certificate
//! for `localhost` and 127.0.0.1, client certificates) and written as PEM files into a
//! temporary directory. Passwords are hashed with a tiny argon2 cost so that the tests
//! stay fast unoptimised; only the `ternd passwd` test checks a hash of default cost.

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{drain, run_cmd, settle, subjects, texts, wait_for, within, RawConn};
use tern::{Client, ClientBuilder, Error, ErrorCode, Qos, QueueConfig, Service, TlsOptions};
use tern_broker::auth::acl::PermissionSettings;
use tern_broker::auth::{token_sha256, Auth, UserSettings};
use tern_broker::config::{Listen, TlsListen};
use tern_broker::tls::TlsFiles;
use tern_broker::{Config, Server, Settings};
use tern_codec::{Credentials, Encode, Frame, Hello, Ping, Pong, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Certificates.
// ---------------------------------------------------------------------------------------

/// A certificate authority: its certificate (also written to `pem`) and its key.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tern test CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A certificate signed by this CA, written to `<file>.pem` and `<file>.key`.
    /// `common_name: None` leaves the subject empty, so that only the DNS names in
    /// `names` identify it.
    fn issue(
        &self,
        dir: &Path,
        file: &str,
        common_name: Option<&str>,
        names: &[&str],
        server: bool,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

/// Every certificate the tests use, in one temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA the broker's certificates and the good client certificates come from.
    ca: Ca,
    /// A CA nobody configured.
    other: Ca,
    /// The broker's certificate: `localhost` and 127.0.0.1, signed by `ca`.
    server: Leaf,
    /// Client certificates signed by `ca`: CN `sensor-7`, CN `stranger`, and one with
    /// no CN whose only DNS name is `sensor-9`.
    sensor7: Leaf,
    stranger: Leaf,
    sensor9: Leaf,
    /// CN `sensor-7` again, but signed by `other`.
    forged7: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = Ca::new(d, "ca");
        let other = Ca::new(d, "other-ca");
        let server = ca.issue(
            d,
            "server",
            Some("localhost"),
            &["localhost", "127.0.0.1"],
            true,
        );
        let sensor7 = ca.issue(d, "sensor-7", Some("sensor-7"), &[], false);
        let stranger = ca.issue(d, "stranger", Some("stranger"), &[], false);
        let sensor9 = ca.issue(d, "sensor-9", None, &["sensor-9"], false);
        let forged7 = other.issue(d, "forged-7", Some("sensor-7"), &[], false);
        Pki {
            dir,
            ca,
            other,
            server,
            sensor7,
            stranger,
            sensor9,
            forged7,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The broker's TLS files; with `client_ca`, mutual TLS.
    fn server_files(&self, client_ca: Option<&Path>) -> TlsFiles {
        TlsFiles {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            client_ca: client_ca.map(Path::to_path_buf),
        }
    }
}

/// TLS options trusting `ca` only, with no client certificate.
fn trusting(ca: &Path) -> TlsOptions {
    TlsOptions {
        ca: Some(ca.to_path_buf()),
        cert: None,
        key: None,
    }
}

/// TLS options trusting `ca` and presenting `leaf`.
fn presenting(ca: &Path, leaf: &Leaf) -> TlsOptions {
    TlsOptions {
        ca: Some(ca.to_path_buf()),
        cert: Some(leaf.cert.clone()),
        key: Some(leaf.key.clone()),
    }
}

// ---------------------------------------------------------------------------------------
// Brokers.
// ---------------------------------------------------------------------------------------

/// A broker in this process with a plain and a TLS listener.
struct TlsBroker {
    addr: SocketAddr,
    tls_addr: SocketAddr,
    server: Server,
    _running: tern_broker::Running,
    _dir: tempfile::TempDir,
}

impl TlsBroker {
    fn url(&self) -> String {
        self.addr.to_string()
    }

    /// The TLS listener by the name its certificate carries.
    fn tls_url(&self) -> String {
        format!("tls://localhost:{}", self.tls_addr.port())
    }
}

/// Starts a broker presenting `files` on a TLS listener (both listeners on
/// 127.0.0.1:0), with `adjust` applied to its config.
async fn start_tls(files: TlsFiles, adjust: impl FnOnce(&mut Config)) -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        metrics_listen: Listen::Off,
        tls: Some(TlsListen {
            listen: "127.0.0.1:0".parse().unwrap(),
            files,
        }),
        ..Config::default()
    };
    adjust(&mut config);
    let running = Server::start(config).await.unwrap();
    TlsBroker {
        addr: running.addr().expect("a plaintext listener"),
        tls_addr: running.tls_addr().expect("a TLS listener"),
        server: running.server().clone(),
        _running: running,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------
// Users and permissions.
// ---------------------------------------------------------------------------------------

/// An argon2id hash with a tiny cost, so that logins are fast unoptimised.
fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A pattern list as the config has it.
fn list(patterns: &[&str]) -> Option<Vec<String>> {
    Some(patterns.iter().map(|p| p.to_string()).collect())
}

fn user(name: &str, password: Option<&str>, permissions: PermissionSettings) -> UserSettings {
    UserSettings {
        name: name.into(),
        password_hash: password.map(cheap_hash),
        token_sha256: None,
        permissions,
    }
}

/// A broker with `users` (and no anonymous clients).
async fn with_users(users: Vec<UserSettings>) -> common::TestBroker {
    common::start_broker_with(|c| c.auth = auth(users, None, PermissionSettings::default())).await
}

/// User `ops` (password `pw`), who may administer queues and do everything else.
fn ops() -> UserSettings {
    user(
        "ops",
        Some("pw"),
        PermissionSettings {
            admin: Some(true),
            ..PermissionSettings::default()
        },
    )
}

fn token_user(name: &str, token: &str, permissions: PermissionSettings) -> UserSettings {
    UserSettings {
        name: name.into(),
        password_hash: None,
        token_sha256: Some(token_sha256(token)),
        permissions,
    }
}

fn auth(
    users: Vec<UserSettings>,
    allow_anonymous: Option<bool>,
    anonymous: PermissionSettings,
) -> Arc<Auth> {
    Arc::new(Auth::new(users, allow_anonymous, anonymous, &Default::default()).unwrap())
}

/// A client logged in as `name` with `password`.
async fn login(url: &str, name: &str, password: &str) -> Client {
    within(
        "a login",
        Client::builder()
            .name(name)
            .credentials(name, password)
            .connect(url),
    )
    .await
    .unwrap_or_else(|e| panic!("{name} could not log in: {e}"))
}

/// Connects with `builder`, not waiting longer than the test's patience.
async fn try_connect(builder: ClientBuilder, url: &str) -> Result<Client, Error> {
    within(
        "a connection attempt",
        builder.reconnect(false).connect(url),
    )
    .await
}

/// The `(code, message)` of a refused handshake.
#[track_caller]
fn refusal(result: Result<Client, Error>) -> (String, String) {
    match result {
        Err(Error::Refused { code, message, .. }) => (code, message),
        Err(other) => panic!("expected the handshake to be refused, got {other:?}"),
        Ok(_) => panic!("expected the handshake to be refused, but it was accepted"),
    }
}

/// The reason of a failed connection (TLS, socket).
#[track_caller]
fn connect_failure(result: Result<Client, Error>) -> String {
    match result {
        Err(Error::Connect { reason, .. }) => reason,
        Err(other) => panic!("expected Error::Connect, got {other:?}"),
        Ok(_) => panic!("expected the connection to fail, but it was accepted"),
    }
}

/// `result` must be the broker's `permission_denied` naming `operation` and `target`.
#[track_caller]
fn assert_denied<T: std::fmt::Debug>(result: Result<T, Error>, operation: &str, target: &str) {
    match result {
        Err(Error::Server {
            code: Some(ErrorCode::PermissionDenied),
            name,
            message,
        }) => {
            assert_eq!(name, "permission_denied");
            assert_eq!(
                message,
                format!("permission denied: {operation} '{target}'"),
                "the message names the operation and the subject"
            );
        }
        other => panic!("expected permission_denied for {operation} '{target}', got {other:?}"),
    }
}

/// A confirmed publish: the broker's answer to it.
async fn publish_confirmed(c: &Client, subject: &str, payload: &str) -> Result<(), Error> {
    within(
        "a publish confirm",
        c.publish(subject, payload.to_string())
            .qos(Qos::AtLeastOnce)
            .into_future(),
    )
    .await
}

async fn subscribe(c: &Client, pattern: &str) -> Result<tern::Subscription, Error> {
    within("a subscribe", c.subscribe(pattern).into_future()).await
}

// ---------------------------------------------------------------------------------------
// Raw bytes.
// ---------------------------------------------------------------------------------------

/// Everything `stream` yields until the peer closes it (or resets it).
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    within("the server to close the connection", async {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

/// Every frame in `bytes`, which must hold whole frames only.
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = Frame::decode(&mut buf, 1 << 20).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "trailing bytes: {buf:?}");
    out
}

/// The next frame on any byte stream; `None` at the end of it.
async fn next_frame(stream: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Option<Frame> {
    within("a frame from the server", async {
        loop {
            if let Some(f) = Frame::decode(buf, 1 << 20).unwrap() {
                return Some(f);
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
}

fn hello(credentials: Option<Credentials>) -> BytesMut {
    let mut buf = BytesMut::new();
    Hello {
        version: PROTOCOL_VERSION,
        name: "raw".into(),
        credentials,
    }
    .encode(&mut buf)
    .unwrap();
    buf
}

fn password(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials::Password {
        user: user.into(),
        password: password.into(),
    })
}

/// A TLS 1.1 ClientHello, as an old client sends it: version 3.2 and no
/// supported_versions extension, but an ECDHE-ECDSA suite, curve and signature scheme
/// that the broker's certificate could serve.
fn client_hello_1_1() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2b]); // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions = [
        &[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03][..], // ecdsa_secp256r1_sha256
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17][..], // secp256r1
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..],             // uncompressed points
        &[0x00, 0x00, 0x00, 0x0e, 0x00, 0x0c, 0x00, 0x00, 0x09][..], // server_name:
    ]
    .concat();
    let extensions = [&extensions[..], b"localhost"].concat();
    body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&extensions);
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut handshake = vec![0x01, len[1], len[2], len[3]];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// A TLS client of our own making (not the tern client), offering only `versions`.
async fn raw_tls(
    addr: SocketAddr,
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, socket)
        .await
}

// ---------------------------------------------------------------------------------------
// TLS.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_clients_exchange_messages_on_one_broker() {
    let pki = Pki::new();
    let b = start_tls(pki.server_files(None), |_| {}).await;
    let tls = || Client::builder().tls(trusting(&pki.ca.pem));

    let tls_pub = try_connect(tls(), &b.tls_url()).await.unwrap();
    let tls_sub = try_connect(tls(), &b.tls_url()).await.unwrap();
    let plain = try_connect(Client::builder(), &b.url()).await.unwrap();
    let mut over_tls = subscribe(&tls_sub, "secure.>").await.unwrap();
    let mut over_tcp = subscribe(&plain, "secure.>").await.unwrap();

    // TLS publisher to a plain subscriber (and a TLS one).
    tls_pub.publish("secure.a", "from tls").await.unwrap();
    settle(&tls_pub, &[&plain, &tls_sub]).await;
    assert_eq!(texts(&drain(&mut over_tcp)), ["from tls"]);
    assert_eq!(texts(&drain(&mut over_tls)), ["from tls"]);

    // Plain publisher to a TLS subscriber; a confirmed publish over TLS.
    plain.publish("secure.b", "from tcp").await.unwrap();
    settle(&plain, &[&tls_sub, &plain]).await;
    assert_eq!(texts(&drain(&mut over_tls)), ["from tcp"]);
    assert_eq!(texts(&drain(&mut over_tcp)), ["from tcp"]);
    publish_confirmed(&tls_pub, "secure.c", "confirmed")
        .await
        .unwrap();
    settle(&tls_pub, &[&tls_sub, &plain]).await;
    assert_eq!(texts(&drain(&mut over_tls)), ["confirmed"]);
    assert_eq!(texts(&drain(&mut over_tcp)), ["confirmed"]);

    // A plain `host:port` with TLS options is TLS too; the certificate's IP name works.
    let by_option = try_connect(tls(), &format!("localhost:{}", b.tls_addr.port()))
        .await
        .unwrap();
    let by_ip = try_connect(tls(), &format!("tls://127.0.0.1:{}", b.tls_addr.port()))
        .await
        .unwrap();
    for c in [&by_option, &by_ip] {
        c.publish("secure.d", "again").await.unwrap();
        settle(c, &[&tls_sub]).await;
        assert_eq!(texts(&drain(&mut over_tls)), ["again"]);
    }
    assert_eq!(b.server.connections().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_verify_the_server_and_nothing_falls_back_to_plaintext() {
    let pki = Pki::new();
    let b = start_tls(pki.server_files(None), |_| {}).await;
    let bystander = try_connect(Client::builder(), &b.url()).await.unwrap();
    let mut watch = subscribe(&bystander, "still.here").await.unwrap();

    // A client that trusts another CA refuses the server's certificate.
    let reason = connect_failure(
        try_connect(
            Client::builder().tls(trusting(&pki.other.pem)),
            &b.tls_url(),
        )
        .await,
    );
    assert!(
        reason.contains("invalid peer certificate") && reason.contains("UnknownIssuer"),
        "{reason}"
    );

    // A certificate for another name is refused, even from the trusted CA.
    let elsewhere = pki
        .ca
        .issue(pki.dir.path(), "elsewhere", None, &["elsewhere.test"], true);
    let misnamed = start_tls(
        TlsFiles {
            cert: elsewhere.cert,
            key: elsewhere.key,
            client_ca: None,
        },
        |_| {},
    )
    .await;
    let reason = connect_failure(
        try_connect(
            Client::builder().tls(trusting(&pki.ca.pem)),
            &misnamed.tls_url(),
        )
        .await,
    );
    assert!(
        reason.contains("invalid peer certificate")
            && reason.contains("not valid for name \"localhost\""),
        "{reason}"
    );

    // Plain tern protocol on the TLS port: no WELCOME, only a TLS alert and a close.
    let mut raw = TcpStream::connect(b.tls_addr).await.unwrap();
    raw.write_all(&hello(None)).await.unwrap();
    let answer = read_to_close(&mut raw).await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS alert record, not a tern frame: {answer:?}"
    );
    // The client library fails the same way.
    let plain_on_tls = try_connect(
        Client::builder(),
        &format!("127.0.0.1:{}", b.tls_addr.port()),
    )
    .await;
    assert!(
        matches!(
            &plain_on_tls,
            Err(Error::Protocol(_) | Error::Connect { .. })
        ),
        "{plain_on_tls:?}"
    );

    // TLS on the plain port: the broker takes the ClientHello for a huge frame.
    let reason = connect_failure(
        try_connect(
            Client::builder().tls(trusting(&pki.ca.pem)),
            &format!("tls://localhost:{}", b.addr.port()),
        )
        .await,
    );
    assert!(reason.contains("corrupt message"), "{reason}");

    // None of it got in, or disturbed anyone.
    assert_eq!(b.server.connections().len(), 1);
    bystander.publish("still.here", "yes").await.unwrap();
    settle(&bystander, &[]).await;
    assert_eq!(texts(&drain(&mut watch)), ["yes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_versions_1_2_and_1_3_only() {
    let pki = Pki::new();
    let b = start_tls(pki.server_files(None), |c| {
        c.limits.handshake_timeout = Duration::from_millis(500);
    })
    .await;

    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut tls = raw_tls(b.tls_addr, &pki.ca.pem, &[version]).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        tls.write_all(&hello(None)).await.unwrap();
        let mut buf = BytesMut::new();
        match next_frame(&mut tls, &mut buf).await {
            Some(Frame::Welcome(_)) => {}
            other => panic!("{expected:?}: expected WELCOME, got {other:?}"),
        }
    }

    // A TLS 1.1 ClientHello (no supported_versions extension) that the server could
    // otherwise answer: refused with a fatal protocol_version alert.
    let mut raw = TcpStream::connect(b.tls_addr).await.unwrap();
    raw.write_all(&client_hello_1_1()).await.unwrap();
    let answer = read_to_close(&mut raw).await;
    assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    assert_eq!(
        answer.get(answer.len().saturating_sub(2)..),
        Some(&[2u8, 70][..]),
        "fatal protocol_version: {answer:?}"
    );

    // A TLS session that never says HELLO is timed out like a plain one.
    let started = Instant::now();
    let mut silent = raw_tls(b.tls_addr, &pki.ca.pem, &[&rustls::version::TLS13])
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    match next_frame(&mut silent, &mut buf).await {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code(), Some(ErrorCode::HandshakeTimeout), "{e:?}");
            assert_eq!(e.id, 0);
        }
        other => panic!("expected ERROR handshake_timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        next_frame(&mut silent, &mut buf).await.is_none(),
        "then closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_names_the_user_by_certificate() {
    let pki = Pki::new();
    let sensor = |n: u8| PermissionSettings {
        publish: list(&[&format!("sensors.{n}.>")]),
        ..PermissionSettings::default()
    };
    let b = start_tls(pki.server_files(Some(&pki.ca.pem)), |c| {
        c.auth = auth(
            vec![
                user("sensor-7", None, sensor(7)),
                user("sensor-9", None, sensor(9)),
                user("alice", Some("s3cret"), PermissionSettings::default()),
            ],
            None,
            PermissionSettings::default(),
        );
    })
    .await;
    let watcher = login(&b.url(), "alice", "s3cret").await;
    let mut seen = subscribe(&watcher, "sensors.>").await.unwrap();

    // No certificate: the TLS handshake itself fails.
    let reason = connect_failure(
        try_connect(Client::builder().tls(trusting(&pki.ca.pem)), &b.tls_url()).await,
    );
    assert!(reason.contains("CertificateRequired"), "{reason}");

    // sensor-7's certificate logs in as sensor-7, with sensor-7's permissions.
    let seven = try_connect(
        Client::builder().tls(presenting(&pki.ca.pem, &pki.sensor7)),
        &b.tls_url(),
    )
    .await
    .unwrap();
    publish_confirmed(&seven, "sensors.7.temp", "21.5")
        .await
        .unwrap();
    assert_denied(
        publish_confirmed(&seven, "sensors.8.temp", "spoofed").await,
        "publish to",
        "sensors.8.temp",
    );
    publish_confirmed(&seven, "sensors.7.humidity", "40")
        .await
        .unwrap();

    // A certificate with no CN is named by its first DNS name.
    let nine = try_connect(
        Client::builder().tls(presenting(&pki.ca.pem, &pki.sensor9)),
        &b.tls_url(),
    )
    .await
    .unwrap();
    publish_confirmed(&nine, "sensors.9.temp", "19")
        .await
        .unwrap();
    assert_denied(
        publish_confirmed(&nine, "sensors.7.temp", "spoofed").await,
        "publish to",
        "sensors.7.temp",
    );
    settle(&seven, &[&watcher]).await;
    settle(&nine, &[&watcher]).await;
    assert_eq!(
        subjects(&drain(&mut seen)),
        ["sensors.7.temp", "sensors.7.humidity", "sensors.9.temp"]
    );

    // A valid certificate for nobody configured: refused like a bad password.
    let before = b.server.stats().auth_failures;
    let (code, message) = refusal(
        try_connect(
            Client::builder().tls(presenting(&pki.ca.pem, &pki.stranger)),
            &b.tls_url(),
        )
        .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("authentication_failed", "authentication failed")
    );
    assert_eq!(b.server.stats().auth_failures, before + 1);

    // sensor-7's name on a certificate from another CA: the TLS handshake fails.
    let reason = connect_failure(
        try_connect(
            Client::builder().tls(presenting(&pki.ca.pem, &pki.forged7)),
            &b.tls_url(),
        )
        .await,
    );
    assert!(reason.contains("alert"), "{reason}");
    assert_eq!(b.server.stats().auth_failures, before + 1);

    // The logged-in clients were not disturbed.
    assert_eq!(b.server.connections().len(), 3);
    watcher.flush().await.unwrap();
    seven.flush().await.unwrap();
}

/// Writes `leaf`'s files over `live`'s.
fn install(leaf: &Leaf, live: &Leaf) {
    std::fs::copy(&leaf.cert, &live.cert).unwrap();
    std::fs::copy(&leaf.key, &live.key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_certificates_serve_new_clients_and_keep_open_ones() {
    let pki = Pki::new();
    let live = Leaf {
        cert: pki.path("live.pem"),
        key: pki.path("live.key"),
    };
    install(&pki.server, &live);
    let b = start_tls(
        TlsFiles {
            cert: live.cert.clone(),
            key: live.key.clone(),
            client_ca: None,
        },
        |_| {},
    )
    .await;
    let old_ca = || Client::builder().tls(trusting(&pki.ca.pem));
    let new_ca = || Client::builder().tls(trusting(&pki.other.pem));
    let open = try_connect(old_ca(), &b.tls_url()).await.unwrap();
    let mut open_sub = subscribe(&open, "reload.>").await.unwrap();
    let plain = try_connect(Client::builder(), &b.url()).await.unwrap();

    // A broken file: the reload fails, naming it, and the old certificate stays.
    std::fs::write(&live.cert, "not a certificate\n").unwrap();
    let err = b.server.reload_tls().unwrap_err().to_string();
    assert!(err.contains("live.pem"), "{err}");
    let still_old = try_connect(old_ca(), &b.tls_url()).await.unwrap();
    still_old.flush().await.unwrap();
    install(&pki.server, &live);
    std::fs::write(&live.key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    let err = b.server.reload_tls().unwrap_err().to_string();
    assert!(err.contains("live.key"), "{err}");
    try_connect(old_ca(), &b.tls_url()).await.unwrap();

    // A certificate from another CA.
    let renewed = pki.other.issue(
        pki.dir.path(),
        "renewed",
        Some("localhost"),
        &["localhost", "127.0.0.1"],
        true,
    );
    install(&renewed, &live);
    b.server.reload_tls().unwrap();

    // Open connections keep their sessions, both ways.
    plain.publish("reload.a", "to the open one").await.unwrap();
    settle(&plain, &[&open]).await;
    open.publish("reload.b", "from the open one").await.unwrap();
    settle(&open, &[&open]).await;
    assert_eq!(
        texts(&drain(&mut open_sub)),
        ["to the open one", "from the open one"]
    );
    still_old.flush().await.unwrap();

    // New clients get the new certificate.
    let reason = connect_failure(try_connect(old_ca(), &b.tls_url()).await);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    let fresh = try_connect(new_ca(), &b.tls_url()).await.unwrap();
    fresh.publish("reload.c", "new cert").await.unwrap();
    settle(&fresh, &[&open]).await;
    assert_eq!(texts(&drain(&mut open_sub)), ["new cert"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_reloads_its_certificates_on_sighup() {
    let pki = Pki::new();
    let live = Leaf {
        cert: pki.path("live.pem"),
        key: pki.path("live.key"),
    };
    install(&pki.server, &live);
    let data = tempfile::tempdir().unwrap();
    let mut d = common::Ternd::start(
        &data.path().join("store"),
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            live.cert.to_str().unwrap(),
            "--tls-key",
            live.key.to_str().unwrap(),
        ],
    )
    .await;
    let tls_addr = within("the TLS listener", async {
        loop {
            let line = d.lines.recv().await.expect("ternd exited");
            if let Some((_, rest)) = line.split_once("listening for TLS on ") {
                let addr = rest.split_whitespace().next().unwrap();
                return addr.parse::<SocketAddr>().unwrap();
            }
        }
    })
    .await;
    let url = format!("tls://localhost:{}", tls_addr.port());
    let open = try_connect(Client::builder().tls(trusting(&pki.ca.pem)), &url)
        .await
        .unwrap();

    let renewed = pki.other.issue(
        pki.dir.path(),
        "renewed",
        Some("localhost"),
        &["localhost"],
        true,
    );
    install(&renewed, &live);
    let status = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    within("the reload to be logged", async {
        loop {
            let line = d.lines.recv().await.expect("ternd exited");
            assert!(!line.contains("TLS reload failed"), "{line}");
            if line.contains("TLS certificates reloaded") {
                return;
            }
        }
    })
    .await;

    open.flush().await.unwrap();
    let reason =
        connect_failure(try_connect(Client::builder().tls(trusting(&pki.ca.pem)), &url).await);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    let fresh = try_connect(Client::builder().tls(trusting(&pki.other.pem)), &url)
        .await
        .unwrap();
    fresh.flush().await.unwrap();
    open.close().await.unwrap();
    fresh.close().await.unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_does_not_stop_ternd() {
    let data = tempfile::tempdir().unwrap();
    let mut d = common::Ternd::start(&data.path().join("store"), &[]).await;
    let client = try_connect(Client::builder(), &d.url()).await.unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Nothing to reload, but the open connection must go on being served (operators
    // send SIGHUP to reload whatever the config has).
    if let Err(e) = within("a flush after SIGHUP", client.flush()).await {
        let status = d.proc.wait().await;
        panic!("SIGHUP to a ternd without TLS dropped its connections ({e}); ternd: {status}");
    }
    client.close().await.unwrap();
    d.stop().await;
}

// ---------------------------------------------------------------------------------------
// Authentication.
// ---------------------------------------------------------------------------------------

/// A broker with user `alice` (password `s3cret`) and token user `bot` (`tok-123`),
/// both allowed everything; anonymous clients refused.
async fn alice_and_bot() -> common::TestBroker {
    with_users(vec![
        user("alice", Some("s3cret"), PermissionSettings::default()),
        token_user("bot", "tok-123", PermissionSettings::default()),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_log_in_and_every_refusal_looks_the_same() {
    let b = alice_and_bot().await;
    let url = b.url();

    let alice = login(&url, "alice", "s3cret").await;
    alice.flush().await.unwrap();
    let bot = try_connect(Client::builder().token("tok-123"), &url)
        .await
        .unwrap();
    bot.flush().await.unwrap();
    assert_eq!(b.server.stats().auth_failures, 0);

    let attempts = [
        (
            "wrong password",
            Client::builder().credentials("alice", "S3cret"),
        ),
        (
            "unknown user",
            Client::builder().credentials("mallory", "s3cret"),
        ),
        (
            "password for a token user",
            Client::builder().credentials("bot", "tok-123"),
        ),
        ("wrong token", Client::builder().token("tok-124")),
        ("no credentials", Client::builder()),
    ];
    // At once: each refusal takes the broker's deliberate delay.
    let refusals = futures_util::future::join_all(attempts.into_iter().map(|(what, builder)| {
        let url = url.clone();
        async move { (what, refusal(try_connect(builder, &url).await)) }
    }))
    .await;
    for (what, (code, message)) in &refusals {
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("authentication_failed", "authentication failed"),
            "{what}: every refusal is the same, saying nothing about why"
        );
    }
    assert_eq!(b.server.stats().auth_failures, 5);
    assert_eq!(b.server.connections().len(), 2, "only alice and bot got in");
    alice.flush().await.unwrap();
    bot.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_answered_after_a_delay_then_closed() {
    let b = with_users(vec![user(
        "alice",
        Some("s3cret"),
        PermissionSettings::default(),
    )])
    .await;
    // A wrong password, an unknown user, no credentials: at once, as each waits.
    let attempts = [
        password("alice", "nope"),
        password("nobody", "s3cret"),
        None,
    ];
    futures_util::future::join_all(attempts.into_iter().map(|credentials| async move {
        let mut raw = RawConn::connect(b.addr).await;
        raw.send_bytes(&hello(credentials)).await;
        let sent = Instant::now();
        let e = raw.expect_error(ErrorCode::AuthenticationFailed, 0).await;
        let waited = sent.elapsed();
        assert_eq!(e.message, "authentication failed");
        assert!(
            waited >= Duration::from_millis(400),
            "refused after only {waited:?}"
        );
        raw.expect_eof().await;
    }))
    .await;
    assert_eq!(b.server.stats().auth_failures, 3);

    // The right password gets a WELCOME on the same kind of connection.
    let mut raw = RawConn::connect(b.addr).await;
    raw.send_bytes(&hello(password("alice", "s3cret"))).await;
    match raw.recv().await {
        Some(Frame::Welcome(_)) => {}
        other => panic!("expected WELCOME, got {other:?}"),
    }
    raw.ping_pong(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_get_the_anonymous_permissions_when_allowed() {
    let b = common::start_broker_with(|c| {
        c.auth = auth(
            vec![user("alice", Some("s3cret"), PermissionSettings::default())],
            Some(true),
            PermissionSettings {
                publish: list(&["public.>"]),
                subscribe: list(&["public.>"]),
                ..PermissionSettings::default()
            },
        );
    })
    .await;
    let anon = try_connect(Client::builder(), &b.url()).await.unwrap();
    let alice = login(&b.url(), "alice", "s3cret").await;

    let mut news = subscribe(&anon, "public.news").await.unwrap();
    assert_denied(
        subscribe(&anon, "private.x").await,
        "subscribe to",
        "private.x",
    );
    assert_denied(subscribe(&anon, ">").await, "subscribe to", ">");
    assert_denied(
        publish_confirmed(&anon, "private.x", "no").await,
        "publish to",
        "private.x",
    );
    assert_denied(
        within(
            "declare",
            anon.declare_queue(&QueueConfig::new("anon-q").bind("public.>")),
        )
        .await,
        "declare queue",
        "anon-q",
    );

    // Users keep their own permissions.
    let mut private = subscribe(&alice, "private.>").await.unwrap();
    publish_confirmed(&anon, "public.news", "hello")
        .await
        .unwrap();
    publish_confirmed(&alice, "private.x", "mine")
        .await
        .unwrap();
    settle(&alice, &[&anon, &alice]).await;
    settle(&anon, &[&alice]).await;
    assert_eq!(texts(&drain(&mut news)), ["hello"]);
    assert_eq!(texts(&drain(&mut private)), ["mine"]);
    assert_eq!(b.server.stats().auth_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_users_every_client_is_anonymous_with_every_permission() {
    let b = common::start_broker().await;
    let c = try_connect(Client::builder(), &b.url()).await.unwrap();
    let mut all = subscribe(&c, ">").await.unwrap();
    publish_confirmed(&c, "any.thing", "x").await.unwrap();
    settle(&c, &[&c]).await;
    assert_eq!(texts(&drain(&mut all)), ["x"]);
    // Administration too.
    within("declare", c.declare_queue(&QueueConfig::new("q").bind("q")))
        .await
        .unwrap();
    within("delete", c.delete_queue("q")).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Authorization.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_table_end_to_end() {
    let b = with_users(vec![
        user(
            "app",
            Some("pw"),
            PermissionSettings {
                publish: list(&["orders.>", "sensors.>"]),
                publish_deny: vec!["orders.secret.>".into()],
                subscribe: list(&["sensors.*.temp", "public.>"]),
                subscribe_deny: vec!["public.secret.>".into()],
                consume: list(&["jobs.>"]),
                consume_deny: vec!["jobs.private".into()],
                admin: None,
            },
        ),
        ops(),
        user("plain", Some("pw"), PermissionSettings::default()),
    ])
    .await;
    let url = b.url();
    let app = login(&url, "app", "pw").await;
    let ops = login(&url, "ops", "pw").await;
    let plain = login(&url, "plain", "pw").await;
    let mut everything = subscribe(&ops, ">").await.unwrap();

    // Publish: allow list, deny list (deny wins), anything else.
    for (subject, allowed) in [
        ("orders.new", true),
        ("orders.secret.plans", false),
        ("orders.secret", true),
        ("sensors.kitchen.temp", true),
        ("billing.invoice", false),
    ] {
        let result = publish_confirmed(&app, subject, "x").await;
        if allowed {
            result.unwrap_or_else(|e| panic!("publish to {subject}: {e}"));
        } else {
            assert_denied(result, "publish to", subject);
        }
    }
    settle(&app, &[&ops]).await;
    assert_eq!(
        subjects(&drain(&mut everything)),
        ["orders.new", "orders.secret", "sensors.kitchen.temp"],
        "denied publishes reach nobody"
    );

    // Subscribe: a wildcard must be covered by one allow pattern and overlap no deny.
    let mut kept = Vec::new();
    for (pattern, allowed) in [
        ("sensors.kitchen.temp", true),
        ("sensors.*.temp", true),
        ("sensors.>", false),
        ("sensors.kitchen.*", false),
        ("sensors.*.*", false),
        ("*.kitchen.temp", false),
        ("public.news", true),
        ("public.*", true),
        ("public.>", false),
        ("public.*.x", false),
        ("public.secret.x", false),
        ("orders.new", false),
    ] {
        let result = subscribe(&app, pattern).await;
        if allowed {
            kept.push(result.unwrap_or_else(|e| panic!("subscribe to {pattern}: {e}")));
        } else {
            assert_denied(result, "subscribe to", pattern);
        }
    }
    assert_eq!(b.server.subscription_count(), 1 + 4);
    publish_confirmed(&ops, "sensors.kitchen.temp", "21")
        .await
        .unwrap();
    settle(&ops, &[&app]).await;
    let got: Vec<Vec<String>> = kept.iter_mut().map(|s| texts(&drain(s))).collect();
    assert_eq!(got, [vec!["21"], vec!["21"], vec![], vec![]]);

    // Consume: by queue name.
    for q in ["jobs.a", "jobs.private", "billing"] {
        within("declare", ops.declare_queue(&QueueConfig::new(q).bind(q)))
            .await
            .unwrap();
    }
    let consumer = within("consume", app.consume("jobs.a").into_future())
        .await
        .unwrap();
    assert_denied(
        within("consume", app.consume("jobs.private").into_future()).await,
        "consume from",
        "jobs.private",
    );
    assert_denied(
        within("consume", app.consume("billing").into_future()).await,
        "consume from",
        "billing",
    );

    // An admin may ask to change the membership, but a server alone has none.
    let e = within("add node", ops.add_node(9, "127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MembershipRefused), "{e}");

    // Queue administration needs admin (which defaults to false); info does not, but
    // a user sees only the queues it may consume from.
    let may_consume: [&[&str]; 2] = [&["jobs.a"], &["billing", "jobs.a", "jobs.private"]];
    for (who, visible) in [&app, &plain].into_iter().zip(may_consume) {
        assert_denied(
            within(
                "declare",
                who.declare_queue(&QueueConfig::new("jobs.b").bind("jobs.b")),
            )
            .await,
            "declare queue",
            "jobs.b",
        );
        assert_denied(
            within("delete", who.delete_queue("jobs.a")).await,
            "delete queue",
            "jobs.a",
        );
        assert_denied(
            within("purge", who.purge_queue("jobs.a")).await,
            "purge queue",
            "jobs.a",
        );
        assert_denied(
            within("move", who.move_messages("jobs.a", "billing", None)).await,
            "move messages from queue",
            "jobs.a",
        );
        // So does changing a cluster's membership; anyone may look at it.
        let added = within("add node", who.add_node(9, "127.0.0.1:1")).await;
        let removed = within("remove node", who.remove_node(9)).await;
        for e in [added.unwrap_err(), removed.unwrap_err()] {
            assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
        }
        let cluster = within("cluster info", who.cluster_info()).await.unwrap();
        assert_eq!(cluster.node_id, 0, "a server alone is no cluster");
        let info = within("queue_info", who.queue_info("jobs.a"))
            .await
            .unwrap();
        assert_eq!(info.name.to_string(), "jobs.a");
        let names: Vec<String> = within("queues", who.queues())
            .await
            .unwrap()
            .iter()
            .map(|q| q.name.to_string())
            .collect();
        assert_eq!(names, visible);
    }
    assert_eq!(b.server.queue_count(), 3);
    within("purge", ops.purge_queue("billing")).await.unwrap();
    within("delete", ops.delete_queue("billing")).await.unwrap();
    within(
        "declare",
        ops.declare_queue(&QueueConfig::new("jobs.b").bind("jobs.b")),
    )
    .await
    .unwrap();

    // Every denial left the connection up.
    assert_eq!(b.server.connections().len(), 3);
    app.flush().await.unwrap();
    publish_confirmed(&ops, "jobs.a", "work").await.unwrap();
    let mut consumer = consumer;
    let d = within("a delivery", consumer.next()).await.unwrap();
    assert_eq!(d.message.payload, "work");
    d.ack().await.unwrap();
    assert_eq!(b.server.stats().auth_failures, 0);
}

/// A broker with `responder` (may publish only on svc.status; may subscribe to and
/// consume from svc.>), `requester` (everything) and `ops` (queue admin), logged in.
async fn responder_and_requester() -> (common::TestBroker, Client, Client, Client) {
    let b = with_users(vec![
        user(
            "responder",
            Some("pw"),
            PermissionSettings {
                publish: list(&["svc.status"]),
                subscribe: list(&["svc.>"]),
                consume: list(&["svc.>"]),
                ..PermissionSettings::default()
            },
        ),
        user("requester", Some("pw"), PermissionSettings::default()),
        ops(),
    ])
    .await;
    let url = b.url();
    let responder = login(&url, "responder", "pw").await;
    let requester = login(&url, "requester", "pw").await;
    let ops = login(&url, "ops", "pw").await;
    (b, responder, requester, ops)
}

/// `requester` asks svc.echo with `timeout`, in a task; returns that task and the
/// request as the responder's `requests` received it.
async fn ask(
    requester: &Client,
    requests: &mut tern::Subscription,
    payload: &'static str,
    timeout: Duration,
) -> (
    tokio::task::JoinHandle<Result<tern::Message, Error>>,
    tern::Message,
) {
    let asking = tokio::spawn({
        let requester = requester.clone();
        async move {
            requester
                .request("svc.echo", payload)
                .timeout(timeout)
                .await
        }
    });
    let request = within("the request", requests.next()).await.unwrap();
    (asking, request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_may_reply_to_the_requests_it_was_handed_and_nowhere_else() {
    let (b, responder, requester, ops) = responder_and_requester().await;

    // Live request-reply.
    let mut requests = subscribe(&responder, "svc.echo").await.unwrap();
    let (asking, request) = ask(&requester, &mut requests, "ping", common::PATIENCE).await;
    let inbox = request.reply_to.clone().expect("a reply-to").to_string();
    assert!(inbox.starts_with("_INBOX."), "{inbox}");
    publish_confirmed(&responder, &inbox, "pong").await.unwrap();
    let reply = within("the reply", asking).await.unwrap().unwrap();
    assert_eq!(reply.payload, "pong");

    // Not another inbox, not even the requester's with another token.
    let (prefix, _) = inbox.rsplit_once('.').unwrap();
    let other_token = format!("{prefix}.999999");
    for subject in [other_token.as_str(), "_INBOX.elsewhere.1", "svc.echo"] {
        assert_denied(
            publish_confirmed(&responder, subject, "sneaky").await,
            "publish to",
            subject,
        );
    }
    publish_confirmed(&responder, "svc.status", "up")
        .await
        .unwrap();

    // Through a durable queue: the delivery grants the permit.
    within(
        "declare",
        ops.declare_queue(&QueueConfig::new("svc.jobs").bind("svc.work")),
    )
    .await
    .unwrap();
    let mut jobs = within("consume", responder.consume("svc.jobs").into_future())
        .await
        .unwrap();
    let asking = tokio::spawn({
        let requester = requester.clone();
        async move {
            requester
                .request("svc.work", "job")
                .qos(Qos::AtLeastOnce)
                .await
        }
    });
    let job = within("the job", jobs.next()).await.unwrap();
    let inbox = job
        .message
        .reply_to
        .clone()
        .expect("a reply-to")
        .to_string();
    publish_confirmed(&responder, &inbox, "done").await.unwrap();
    job.ack().await.unwrap();
    let reply = within("the reply", asking).await.unwrap().unwrap();
    assert_eq!(reply.payload, "done");
    assert_eq!(b.server.connections().len(), 3);
}

/// Alice's attack from the audit: allowed to publish only on `a.b.*`, she named a
/// subject she may not publish to as the reply-to of her own message, received it,
/// and used the reply permit it granted to publish there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_does_not_launder_publish_permissions() {
    let b = with_users(vec![
        user(
            "alice",
            Some("pw"),
            PermissionSettings {
                publish: list(&["a.b.*"]),
                subscribe: list(&["a.b.*", "watch.>", "_INBOX.>"]),
                ..PermissionSettings::default()
            },
        ),
        user("bob", Some("pw"), PermissionSettings::default()),
    ])
    .await;
    let url = b.url();
    let alice = login(&url, "alice", "pw").await;
    let bob = login(&url, "bob", "pw").await;
    let mut secret = subscribe(&bob, "secret.target").await.unwrap();
    let mut watched = subscribe(&bob, "watch.x").await.unwrap();
    let mut own = subscribe(&alice, "a.b.x").await.unwrap();

    // A reply-to she could not read the answer on is refused outright.
    let named = within(
        "the publish",
        alice
            .publish("a.b.x", "hi")
            .reply_to("secret.target")
            .qos(Qos::AtLeastOnce)
            .into_future(),
    )
    .await;
    assert_denied(named, "use as reply-to", "secret.target");

    // One she may read, on her own message: delivered to her, but it grants nothing.
    within(
        "the publish",
        alice
            .publish("a.b.x", "hi")
            .reply_to("watch.x")
            .qos(Qos::AtLeastOnce)
            .into_future(),
    )
    .await
    .unwrap();
    let mine = within("her own message", own.next()).await.unwrap();
    assert_eq!(mine.reply_to.as_deref(), Some("watch.x"));
    for subject in ["watch.x", "secret.target"] {
        assert_denied(
            publish_confirmed(&alice, subject, "forged").await,
            "publish to",
            subject,
        );
    }
    settle(&alice, &[&bob]).await;
    assert!(drain(&mut secret).is_empty());
    assert!(drain(&mut watched).is_empty());
    assert_eq!(b.server.connections().len(), 2);
}

/// A permit allows one reply, to exactly the reply subject, before the request's
/// deadline: not a second reply, and nothing once the requester has given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_permit_allows_one_reply_before_the_deadline() {
    let (_b, responder, requester, _ops) = responder_and_requester().await;
    let mut requests = subscribe(&responder, "svc.echo").await.unwrap();

    // Answered once; the second answer to the same request is refused.
    let (asking, request) = ask(&requester, &mut requests, "ping", common::PATIENCE).await;
    let inbox = request.reply_to.clone().expect("a reply-to").to_string();
    publish_confirmed(&responder, &inbox, "pong").await.unwrap();
    assert_denied(
        publish_confirmed(&responder, &inbox, "again").await,
        "publish to",
        &inbox,
    );
    let reply = within("the reply", asking).await.unwrap().unwrap();
    assert_eq!(reply.payload, "pong");

    // A request whose deadline has passed can no longer be answered.
    let timeout = Duration::from_millis(300);
    let asked = Instant::now();
    let (asking, request) = ask(&requester, &mut requests, "late", timeout).await;
    let inbox = request.reply_to.clone().expect("a reply-to").to_string();
    assert!(matches!(
        within("the requester to give up", asking).await.unwrap(),
        Err(Error::Timeout)
    ));
    assert!(asked.elapsed() >= timeout);
    let deadline: u128 = request
        .headers
        .get(tern::DEADLINE_HEADER)
        .unwrap()
        .parse()
        .unwrap();
    wait_for("the request's deadline to pass", || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_millis() > deadline
    })
    .await;
    assert_denied(
        publish_confirmed(&responder, &inbox, "too late").await,
        "publish to",
        &inbox,
    );
}

/// Through a durable queue too, a connection's own request earns it no reply permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_consumed_from_a_queue_by_its_own_connection_grants_nothing() {
    let b = with_users(vec![
        user(
            "worker",
            Some("pw"),
            PermissionSettings {
                publish: list(&["jobs.in"]),
                subscribe: list(&["notes.>"]),
                consume: list(&["jobs"]),
                ..PermissionSettings::default()
            },
        ),
        ops(),
    ])
    .await;
    let url = b.url();
    let ops = login(&url, "ops", "pw").await;
    within(
        "declare",
        ops.declare_queue(&QueueConfig::new("jobs").bind("jobs.in")),
    )
    .await
    .unwrap();
    let mut notes = subscribe(&ops, "notes.x").await.unwrap();
    let worker = login(&url, "worker", "pw").await;
    within(
        "the publish",
        worker
            .publish("jobs.in", "job")
            .reply_to("notes.x")
            .qos(Qos::AtLeastOnce)
            .into_future(),
    )
    .await
    .unwrap();
    let mut jobs = within("consume", worker.consume("jobs").into_future())
        .await
        .unwrap();
    let job = within("the job", jobs.next()).await.unwrap();
    assert_eq!(job.message.reply_to.as_deref(), Some("notes.x"));
    assert_denied(
        publish_confirmed(&worker, "notes.x", "forged").await,
        "publish to",
        "notes.x",
    );
    job.ack().await.unwrap();
    settle(&worker, &[&ops]).await;
    assert!(drain(&mut notes).is_empty());
}

/// Exactly-once deduplication keys on the user as well as the producer id: Bob's
/// real publish was answered "duplicate" and never stored because Alice had used the
/// same producer id and sequence. Checked before and after a restart, so the store
/// keeps the namespaces too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_make_anothers_exactly_once_publish_a_duplicate() {
    let users = |c: &mut Config| {
        c.auth = auth(
            vec![
                user("alice", Some("pw"), PermissionSettings::default()),
                user(
                    "bob",
                    Some("pw"),
                    PermissionSettings {
                        admin: Some(true),
                        ..PermissionSettings::default()
                    },
                ),
            ],
            None,
            PermissionSettings::default(),
        );
    };
    let b = common::start_broker_with(users).await;
    let publish = |c: Client, payload: &'static str| async move {
        within("an exactly-once publish", async {
            c.publish("ledger", payload)
                .idempotent("sensor", 1)
                .send()
                .await?
                .await
        })
        .await
        .unwrap()
    };
    let bob = login(&b.url(), "bob", "pw").await;
    within(
        "declare",
        bob.declare_queue(&QueueConfig::new("ledger").bind("ledger")),
    )
    .await
    .unwrap();
    let alice = login(&b.url(), "alice", "pw").await;
    assert!(!publish(alice.clone(), "alice's").await.duplicate);
    let bobs = publish(bob.clone(), "bob's").await;
    assert!(!bobs.duplicate, "bob's publish was taken for alice's");
    assert_eq!(bobs.queues, 1);
    assert!(
        publish(bob.clone(), "bob's").await.duplicate,
        "bob's own retry"
    );
    drop((alice, bob));

    let b = common::restart(b, users).await;
    let alice = login(&b.url(), "alice", "pw").await;
    let bob = login(&b.url(), "bob", "pw").await;
    assert!(publish(alice, "alice's").await.duplicate);
    assert!(publish(bob.clone(), "bob's").await.duplicate);
    let mut ledger = within("consume", bob.consume("ledger").into_future())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = within("a message", ledger.next()).await.unwrap();
        got.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(got, ["alice's", "bob's"]);
    let s = bob.queue_info("ledger").await.unwrap().stats;
    assert_eq!(s.ready, 0, "nothing else was stored");
}

/// A user sees only the queues it may consume from or administer; asking for another
/// by name is answered as if it did not exist. Through the library and `tern queue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_listings_show_only_the_queues_a_user_may_consume_or_administer() {
    common::bin("tern");
    let b = with_users(vec![
        user(
            "carol",
            Some("pw"),
            PermissionSettings {
                consume: list(&["mine", "mine.>"]),
                ..PermissionSettings::default()
            },
        ),
        user(
            "ops",
            Some("pw"),
            PermissionSettings {
                admin: Some(true),
                consume: list(&[]),
                ..PermissionSettings::default()
            },
        ),
    ])
    .await;
    let url = b.url();
    let ops = login(&url, "ops", "pw").await;
    for name in ["mine", "mine.jobs", "theirs", "payroll.secret"] {
        within(
            "declare",
            ops.declare_queue(&QueueConfig::new(name).bind(format!("in.{name}"))),
        )
        .await
        .unwrap();
    }
    let names = |infos: Vec<tern::QueueInfo>| {
        let mut names: Vec<String> = infos.into_iter().map(|i| i.name.to_string()).collect();
        names.sort();
        names
    };
    let carol = login(&url, "carol", "pw").await;
    let seen = within("list", carol.queues()).await.unwrap();
    assert_eq!(names(seen), ["mine", "mine.jobs"]);
    let all = within("list", ops.queues()).await.unwrap();
    assert_eq!(
        names(all),
        ["mine", "mine.jobs", "payroll.secret", "theirs"]
    );

    let hidden = within("info", carol.queue_info("theirs")).await;
    let absent = within("info", carol.queue_info("nowhere")).await;
    match (&hidden, &absent) {
        (Err(Error::Server { code: h, .. }), Err(Error::Server { code: a, .. })) => {
            assert_eq!(*h, Some(ErrorCode::QueueNotFound));
            assert_eq!(h, a);
        }
        other => panic!("expected queue_not_found twice, got {other:?}"),
    }
    assert_eq!(
        within("info", carol.queue_info("mine")).await.unwrap().name,
        "mine"
    );

    let out = succeeds(&mut tern(&format!(
        "--server {url} --user carol --password pw queue ls"
    )))
    .await;
    assert!(out.contains("mine.jobs"), "{out}");
    assert!(!out.contains("theirs") && !out.contains("payroll"), "{out}");
}

// ---------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_limit_are_refused_and_other_addresses_get_in() {
    let b = common::start_broker_with(|c| c.limits.max_connections_per_ip = 2).await;
    let mut first = RawConn::greeted(b.addr).await;
    let mut second = RawConn::greeted(b.addr).await;

    let mut third = RawConn::connect(b.addr).await;
    let e = third.expect_error(ErrorCode::TooManyConnections, 0).await;
    assert_eq!(
        e.message,
        "127.0.0.1 already has 2 connections, the limit per address"
    );
    third.expect_eof().await;
    let (code, _) = refusal(try_connect(Client::builder(), &b.url()).await);
    assert_eq!(code, "too_many_connections");
    let stats = b.server.stats();
    assert_eq!(stats.connections_rejected_per_ip, 2);
    assert_eq!(stats.connections_rejected, 0, "the total limit was not hit");

    // Another source address (all of 127/8 is loopback on Linux) is not affected.
    let addr = b.addr;
    let other = within(
        "a client from 127.0.0.2",
        Client::builder()
            .reconnect(false)
            .connect_with("from-127.0.0.2", move || async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind("127.0.0.2:0".parse().unwrap())?;
                socket.connect(addr).await
            }),
    )
    .await
    .unwrap();
    other.flush().await.unwrap();
    first.ping_pong(1).await;
    second.ping_pong(2).await;

    // A freed slot can be taken again.
    drop(first);
    let mut again = common::eventually("a slot to free up", || async move {
        let mut c = RawConn::connect(addr).await;
        c.stream.write_all(&hello(None)).await.ok()?;
        match c.recv().await {
            Some(Frame::Welcome(_)) => Some(c),
            Some(Frame::Error(e)) if e.code() == Some(ErrorCode::TooManyConnections) => None,
            None => None,
            Some(other) => panic!("unexpected {other:?}"),
        }
    })
    .await;
    again.ping_pong(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_over_the_connection_limit_learns_why() {
    let pki = Pki::new();
    let b = start_tls(pki.server_files(None), |c| c.limits.max_connections = 1).await;
    let first = try_connect(Client::builder().tls(trusting(&pki.ca.pem)), &b.tls_url())
        .await
        .unwrap();

    // A plain client is told in the protocol's words.
    let (code, _) = refusal(try_connect(Client::builder(), &b.url()).await);
    assert_eq!(code, "too_many_connections");
    // So must a TLS client be: a plaintext ERROR frame on the TLS port reads as a
    // corrupt TLS record to it.
    let second = try_connect(Client::builder().tls(trusting(&pki.ca.pem)), &b.tls_url()).await;
    match &second {
        Err(Error::Refused { code, .. }) => assert_eq!(code, "too_many_connections"),
        other => panic!(
            "a TLS client refused at the connection limit should get too_many_connections, \
             got {other:?}"
        ),
    }
    assert_eq!(b.server.stats().connections_rejected, 2);
    first.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_pinged_then_closed_and_answering_ones_stay() {
    let idle = Duration::from_millis(300);
    let b = common::start_broker_with(|c| c.limits.idle_timeout = idle).await;
    let client = try_connect(Client::builder(), &b.url()).await.unwrap();

    // Says nothing after the handshake: a PING, then an ERROR and a close.
    let greeted = Instant::now();
    let mut silent = RawConn::greeted(b.addr).await;
    match silent.recv().await {
        Some(Frame::Ping(Ping { id: 0 })) => {}
        other => panic!("expected PING 0, got {other:?}"),
    }
    assert!(
        greeted.elapsed() >= idle,
        "pinged after {:?}",
        greeted.elapsed()
    );
    let e = silent.expect_error(ErrorCode::IdleTimeout, 0).await;
    assert!(
        greeted.elapsed() >= idle * 2,
        "closed after {:?}",
        greeted.elapsed()
    );
    assert_eq!(e.message, "nothing received for 600ms; closing");
    silent.expect_eof().await;
    assert_eq!(b.server.stats().idle_disconnects, 1);

    // Answers every PING: still there after more than twice the idle timeout.
    let greeted = Instant::now();
    let mut alive = RawConn::greeted(b.addr).await;
    let mut pings = 0;
    while greeted.elapsed() < idle * 3 {
        match alive.recv().await {
            Some(Frame::Ping(Ping { id: 0 })) => alive.send(&Pong { id: 0 }).await,
            other => panic!("expected PING 0, got {other:?}"),
        }
        pings += 1;
    }
    assert!(pings >= 3, "{pings} pings");
    alive.ping_pong(7).await;

    // The idle client library answered the broker's pings too: never disconnected.
    client.flush().await.unwrap();
    let stats = b.server.stats();
    assert_eq!(stats.idle_disconnects, 1);
    assert_eq!(stats.connections_opened, 3, "no reconnects");
}

#[tokio::test]
async fn subject_limits_are_enforced_by_the_broker() {
    let b = common::start_broker_with(|c| {
        c.limits.subject.max_len = 16;
        c.limits.subject.max_tokens = 3;
    })
    .await;
    let c = try_connect(Client::builder(), &b.url()).await.unwrap();
    let mut kept = Vec::new();
    let long = "a".repeat(17);
    for (subject, ok) in [
        ("a".repeat(16), true),
        (long.clone(), false),
        ("a.b.c".to_string(), true),
        ("a.b.c.d".to_string(), false),
    ] {
        let result = publish_confirmed(&c, &subject, "x").await;
        if ok {
            result.unwrap();
        } else {
            match result {
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::InvalidSubject), "{subject}: {e}"),
                Ok(()) => panic!("{subject} was accepted"),
            }
        }
        let result = subscribe(&c, &subject).await;
        if ok {
            kept.push(result.unwrap());
        } else {
            match result {
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::InvalidPattern), "{subject}: {e}"),
                Ok(_) => panic!("{subject} was accepted as a pattern"),
            }
        }
    }
    c.flush().await.unwrap();
    assert_eq!(b.server.subscription_count(), 2);
}

/// How many silent connections this process can hold, both ends, up to `wanted`:
/// raises the soft open-file limit if it is low (CI machines often have 1,024).
fn silent_connection_budget(wanted: usize) -> usize {
    // Both ends of every connection live in this process, plus a margin for the
    // store, the runtime and the other tests running alongside.
    const MARGIN: u64 = 1000;
    let need = (wanted as u64 * 2 + MARGIN).max(5000);
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some_and(|cur| cur < need) {
            let raised = limit.maximum.map_or(need, |max| max.min(need));
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(raised),
                    maximum: limit.maximum,
                },
            );
        }
        let have = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        let fit = have.saturating_sub(MARGIN) / 2;
        usize::try_from(fit).unwrap_or(usize::MAX).min(wanted)
    }
    #[cfg(not(unix))]
    {
        let _ = need;
        wanted
    }
}

/// A slowloris flood: `n` connections that say nothing, one in four on the TLS port,
/// each with the moment it was opened. In batches, so that the listen backlog never
/// overflows.
async fn silent_flood(b: &TlsBroker, n: usize, note: &str) -> Vec<(TcpStream, bool, Instant)> {
    let mut silent = Vec::with_capacity(n);
    while silent.len() < n {
        let batch = (n - silent.len()).min(25);
        let start = silent.len();
        let conns = futures_util::future::join_all((start..start + batch).map(|i| {
            let tls = i % 4 == 0;
            let addr = if tls { b.tls_addr } else { b.addr };
            async move {
                let at = Instant::now();
                (TcpStream::connect(addr).await, tls, at)
            }
        }))
        .await;
        for (s, tls, at) in conns {
            silent.push((
                s.unwrap_or_else(|e| panic!("{note}: connect: {e}")),
                tls,
                at,
            ));
        }
    }
    silent
}

/// A broker with room for `wanted` silent connections and the given handshake timeout,
/// an echo service (kept alive by the returned client and handle), and a second client
/// connected before any flood.
async fn flood_target(
    wanted: usize,
    handshake_timeout: Duration,
) -> (TlsBroker, (Client, Service), Client) {
    let pki = Pki::new();
    let b = start_tls(pki.server_files(None), |c| {
        c.limits.handshake_timeout = handshake_timeout;
        c.limits.max_connections = 3 * wanted;
        c.limits.max_connections_per_ip = 3 * wanted;
    })
    .await;
    let responder = try_connect(Client::builder(), &b.url()).await.unwrap();
    let echo = responder
        .serve("echo")
        .run(|req| async move { Ok::<_, std::convert::Infallible>(req.message.payload) })
        .await
        .unwrap();
    let earlier = try_connect(Client::builder(), &b.url()).await.unwrap();
    (b, (responder, echo), earlier)
}

/// Serving while flooded and dropping the flood are two behaviours, checked on two
/// brokers: with a timeout that cannot fire during the test, every silent connection
/// is certainly still open during the round trip, however slowly a loaded machine
/// opens them; with a short one, every silent connection is closed, none early.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_silent_connections_are_dropped_while_the_broker_keeps_serving() {
    const WANTED: usize = 2000;
    let n = silent_connection_budget(WANTED);
    let note =
        format!("{n} silent connections (wanted {WANTED}; the open-file limit allows no more)");
    assert!(n >= 200, "{note}");

    // While all of them are held, a new client gets in and a request-reply round trip
    // completes; an existing client is served too.
    {
        let (b, _responder, earlier) = flood_target(WANTED, Duration::from_secs(3600)).await;
        let silent = silent_flood(&b, n, &note).await;
        let fresh = try_connect(Client::builder(), &b.url()).await.unwrap();
        let reply = within(
            "the echo",
            fresh.request("echo", "still serving").into_future(),
        )
        .await
        .unwrap();
        assert_eq!(reply.payload, "still serving");
        earlier.flush().await.unwrap();
        assert_eq!(
            b.server.stats().protocol_errors,
            0,
            "{note}: nothing timed out"
        );
        drop(silent);
    }

    // Every silent connection is closed by the broker, none before the timeout: plain
    // ones get ERROR handshake_timeout first; on the TLS port there is nobody to tell.
    // The broker goes on serving afterwards.
    let timeout = Duration::from_secs(1);
    let (b, _responder, earlier) = flood_target(WANTED, timeout).await;
    let silent = silent_flood(&b, n, &note).await;
    let closed =
        futures_util::future::join_all(silent.into_iter().map(|(mut s, tls, at)| async move {
            let bytes = read_to_close(&mut s).await;
            (bytes, tls, at.elapsed())
        }))
        .await;
    for (i, (bytes, tls, open_for)) in closed.iter().enumerate() {
        assert!(
            *open_for >= timeout,
            "{note}: connection {i} was closed after {open_for:?}"
        );
        if *tls {
            assert!(bytes.is_empty(), "connection {i} (TLS) got {bytes:?}");
        } else {
            match &frames(bytes)[..] {
                [Frame::Error(e)] => {
                    assert_eq!(e.code(), Some(ErrorCode::HandshakeTimeout), "{i}: {e:?}");
                    assert_eq!(e.message, "no HELLO within 1s");
                }
                other => panic!("connection {i}: expected one ERROR, got {other:?}"),
            }
        }
    }
    let dropped = u64::try_from(n).unwrap();
    wait_for("every timeout to be counted", || {
        b.server.stats().protocol_errors == dropped
    })
    .await;
    assert_eq!(b.server.connections().len(), 2, "{note}");
    let fresh = try_connect(Client::builder(), &b.url()).await.unwrap();
    let reply = within("the echo", fresh.request("echo", "after").into_future())
        .await
        .unwrap();
    assert_eq!(reply.payload, "after");
    earlier.flush().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The command-line tools.
// ---------------------------------------------------------------------------------------

/// `tern` with the whitespace-separated `args` (no argument here holds a space) and
/// a clean environment.
fn tern(args: &str) -> Command {
    common::tern_cmd(None, &args.split_whitespace().collect::<Vec<_>>())
}

/// Runs `cmd` and expects success with nothing on stderr.
async fn succeeds(cmd: &mut Command) -> String {
    let (status, out, err) = run_cmd(cmd, None).await;
    assert!(status.success(), "{cmd:?} failed: {err}");
    assert!(err.is_empty(), "{cmd:?} complained: {err}");
    out
}

/// Runs `cmd` and expects exit code 1 with one line on stderr, which it returns.
async fn fails(cmd: &mut Command) -> String {
    let (status, out, err) = run_cmd(cmd, None).await;
    assert_eq!(status.code(), Some(1), "{cmd:?}: {status:?} {err}");
    assert!(out.is_empty(), "{cmd:?} printed: {out}");
    assert_eq!(err.lines().count(), 1, "{cmd:?}: one line:\n{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_logs_in_with_a_password_a_password_file_or_a_token() {
    common::bin("tern");
    let b = alice_and_bot().await;
    let url = b.url();
    let watcher = login(&url, "alice", "s3cret").await;
    let mut seen = subscribe(&watcher, "cli.>").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "s3cret\nignored\n").unwrap();
    let pw_file = pw_file.display();

    let s = format!("--server {url}");
    succeeds(&mut tern(&format!(
        "{s} --user alice --password s3cret pub cli.a flag"
    )))
    .await;
    succeeds(&mut tern(&format!(
        "{s} --user alice --password-file {pw_file} pub cli.b file"
    )))
    .await;
    succeeds(
        tern(&format!("{s} pub cli.c env"))
            .env("TERN_USER", "alice")
            .env("TERN_PASSWORD", "s3cret"),
    )
    .await;
    succeeds(tern(&format!("{s} pub cli.d env-token")).env("TERN_TOKEN", "tok-123")).await;
    succeeds(&mut tern(&format!("{s} --token tok-123 pub cli.e token"))).await;

    let wrong = fails(&mut tern(&format!(
        "{s} --user alice --password nope pub cli.x no"
    )))
    .await;
    assert!(wrong.contains("authentication_failed"), "{wrong}");
    let unknown = fails(&mut tern(&format!(
        "{s} --user mallory --password nope pub cli.x no"
    )))
    .await;
    assert_eq!(
        wrong, unknown,
        "a wrong password and an unknown user read the same"
    );
    let anonymous = fails(&mut tern(&format!("{s} pub cli.x no"))).await;
    assert!(anonymous.contains("authentication_failed"), "{anonymous}");
    let no_password = fails(&mut tern(&format!("{s} --user alice pub cli.x no"))).await;
    assert!(no_password.contains("--password"), "{no_password}");

    settle(&watcher, &[&watcher]).await;
    assert_eq!(
        texts(&drain(&mut seen)),
        ["flag", "file", "env", "env-token", "token"]
    );
}

/// A QoS 0 publish is sent without waiting for an answer; its refusal must still reach
/// the application (after a flush) and fail `tern pub`, naming subject and permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_qos0_publish_is_reported_to_the_library_and_fails_the_cli() {
    common::bin("tern");
    let b = with_users(vec![user(
        "carol",
        Some("pw"),
        PermissionSettings {
            publish: list(&["public.>"]),
            ..PermissionSettings::default()
        },
    )])
    .await;
    let url = b.url();
    let carol = login(&url, "carol", "pw").await;
    carol.publish("public.x", "fine").await.unwrap();
    carol.publish("admin.x", "1").await.unwrap();
    carol.publish("public.y", "fine").await.unwrap();
    within("the flush", carol.flush()).await.unwrap();
    let errors = carol.take_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_denied(
        Err::<(), _>(errors.into_iter().next().unwrap()),
        "publish to",
        "admin.x",
    );
    assert!(carol.take_errors().is_empty(), "taken once");

    let s = format!("--server {url} --user carol --password pw");
    let refused = fails(&mut tern(&format!("{s} pub admin.x 1"))).await;
    assert!(
        refused.contains("permission denied: publish to 'admin.x'"),
        "{refused}"
    );
    succeeds(&mut tern(&format!("{s} pub public.x 1"))).await;
}

/// With TLS configured the plaintext listener can be turned off; without TLS that is a
/// config error naming the key (no client could connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_listener_can_be_turned_off() {
    let pki = Pki::new();
    let b = start_tls_only(pki.server_files(None)).await;
    let c = try_connect(Client::builder().tls(trusting(&pki.ca.pem)), &b.tls_url)
        .await
        .unwrap();
    let info = within("server info", c.server_info()).await.unwrap();
    assert_eq!(info.listeners, [format!("tls://{}", b.tls_addr)]);
    assert_eq!(
        config_error("listen = \"off\"\n"),
        "invalid value for `listen`: is off and there is no TLS listener (tls.listen): \
         no client could connect"
    );
}

/// A TLS-only broker: `--listen off`.
struct TlsOnly {
    tls_addr: SocketAddr,
    tls_url: String,
    _running: tern_broker::Running,
    _dir: tempfile::TempDir,
}

async fn start_tls_only(files: TlsFiles) -> TlsOnly {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: Listen::Off,
        data_dir: dir.path().join("data"),
        metrics_listen: Listen::Off,
        tls: Some(TlsListen {
            listen: "127.0.0.1:0".parse().unwrap(),
            files,
        }),
        ..Config::default()
    };
    let running = Server::start(config).await.unwrap();
    assert_eq!(running.addr(), None, "no plaintext listener");
    let tls_addr = running.tls_addr().expect("a TLS listener");
    TlsOnly {
        tls_addr,
        tls_url: format!("tls://localhost:{}", tls_addr.port()),
        _running: running,
        _dir: dir,
    }
}

/// Passwords on a plaintext listener that is not loopback travel in the clear: ternd
/// warns at start (and not on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_warns_of_passwords_on_a_remote_plaintext_listener() {
    common::bin("ternd");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[users]]\nname = \"alice\"\npassword_hash = \"{}\"\n",
            cheap_hash("s3cret")
        ),
    )
    .unwrap();
    let users = users.to_str().unwrap();
    for (listen, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        let store = dir.path().join(format!("store-{warned}"));
        let mut d = common::Ternd::spawn(common::ternd_cmd(&[
            "--listen",
            listen,
            "--data-dir",
            store.to_str().unwrap(),
            "--metrics-listen",
            "off",
            "--config",
            users,
        ]))
        .await;
        d.sigterm();
        let rest = d.rest_of_stderr().await;
        let warning = rest.iter().find(|l| l.contains("in the clear"));
        assert_eq!(warning.is_some(), warned, "{listen}: {rest:#?}");
        if let Some(w) = warning {
            assert!(w.contains("WARN") && w.contains("TLS"), "{w}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_speaks_tls_and_mutual_tls() {
    common::bin("tern");
    let pki = Pki::new();
    let b = start_tls(pki.server_files(None), |_| {}).await;
    let ca = pki.ca.pem.display();
    let url = b.tls_url();

    let mut cmd = tern(&format!(
        "--tls --ca {ca} --server {url} sub cli.tls --count 1"
    ));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut sub = common::Proc::spawn(&mut cmd);
    wait_for("`tern sub` to subscribe", || {
        b.server.subscription_count() == 1
    })
    .await;
    succeeds(&mut tern(&format!(
        "--ca {ca} --server {url} pub cli.tls secret"
    )))
    .await;
    let (status, out, err) = sub.output().await;
    assert!(status.success(), "{err}");
    assert_eq!(out, "[#1] cli.tls\nsecret\n\n");

    // Not trusting the server's CA: one line naming the problem.
    let other = pki.other.pem.display();
    let err = fails(&mut tern(&format!(
        "--ca {other} --server {url} pub cli.tls x"
    )))
    .await;
    assert!(err.contains("UnknownIssuer"), "{err}");

    // Mutual TLS: the certificate is the login.
    let m = start_tls(pki.server_files(Some(&pki.ca.pem)), |c| {
        c.auth = auth(
            vec![user(
                "sensor-7",
                None,
                PermissionSettings {
                    publish: list(&["sensors.7.>"]),
                    ..PermissionSettings::default()
                },
            )],
            None,
            PermissionSettings::default(),
        );
    })
    .await;
    let as_sensor7 = format!(
        "--ca {ca} --cert {} --key {} --server {}",
        pki.sensor7.cert.display(),
        pki.sensor7.key.display(),
        m.tls_url()
    );
    succeeds(&mut tern(&format!(
        "{as_sensor7} pub sensors.7.t 1 --qos 1"
    )))
    .await;
    let err = fails(&mut tern(&format!(
        "{as_sensor7} pub sensors.8.t 1 --qos 1"
    )))
    .await;
    assert!(
        err.contains("permission_denied") && err.contains("sensors.8.t"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_passwd_and_token_print_what_the_config_needs() {
    common::bin("ternd");
    let (status, out, err) = run_cmd(&mut common::ternd_cmd(&["passwd"]), Some("hunter2\n")).await;
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let hash = out.trim_end();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!out.contains("hunter2"));

    let (status, out, err) = run_cmd(&mut common::ternd_cmd(&["token"]), None).await;
    assert!(status.success(), "{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line in {out}"))
            .trim()
            .to_string()
    };
    let token = field("token:");
    let digest = field("token_sha256:");
    assert_eq!(digest, token_sha256(&token));

    let settings = Settings::from_toml(&format!(
        r#"
        [[users]]
        name = "carol"
        password_hash = "{hash}"

        [[users]]
        name = "robot"
        token_sha256 = "{digest}"
        "#
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_settings(settings).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    config.metrics_listen = Listen::Off;
    let b = common::start_on(config, dir).await;

    login(&b.url(), "carol", "hunter2")
        .await
        .flush()
        .await
        .unwrap();
    try_connect(Client::builder().token(token.as_str()), &b.url())
        .await
        .unwrap()
        .flush()
        .await
        .unwrap();
    let (code, _) = refusal(try_connect(Client::builder().token("tern_guess"), &b.url()).await);
    assert_eq!(code, "authentication_failed");
}

/// `[[users]]` and `[tls]` from a config file must reach the broker `ternd` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternd_applies_users_and_tls_from_its_config_file() {
    common::bin("ternd");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // A running ternd with users in its file refuses anonymous clients.
    std::fs::write(
        path("users.toml"),
        format!(
            "[[users]]\nname = \"alice\"\npassword_hash = \"{}\"\n",
            cheap_hash("s3cret")
        ),
    )
    .unwrap();
    let d = common::Ternd::start(
        &path("store"),
        &["--config", path("users.toml").to_str().unwrap()],
    )
    .await;
    let anonymous = try_connect(Client::builder(), &d.url()).await;
    assert!(
        matches!(&anonymous, Err(Error::Refused { code, .. }) if code == "authentication_failed"),
        "ternd -c users.toml let an anonymous client in: the file's [[users]] were dropped \
         ({:?})",
        anonymous.map(|_| "accepted")
    );
    login(&d.url(), "alice", "s3cret")
        .await
        .flush()
        .await
        .unwrap();

    // --check-config validates the users and the TLS settings in the file.
    std::fs::write(
        path("bad-user.toml"),
        "[[users]]\nname = \"alice\"\npassword_hash = \"plaintext\"\n",
    )
    .unwrap();
    let err = fails(&mut common::ternd_cmd(&[
        "--check-config",
        path("bad-user.toml").to_str().unwrap(),
    ]))
    .await;
    assert!(err.contains("users[alice].password_hash"), "{err}");
    std::fs::write(path("bad-tls.toml"), "[tls]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let err = fails(&mut common::ternd_cmd(&[
        "--check-config",
        path("bad-tls.toml").to_str().unwrap(),
    ]))
    .await;
    assert!(err.contains("tls.cert"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Config errors.
// ---------------------------------------------------------------------------------------

/// The error `Config::from_settings` gives for `toml`.
fn config_error(toml: &str) -> String {
    let settings = Settings::from_toml(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
    match Config::from_settings(settings) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_key() {
    let pki = Pki::new();
    let cert = pki.server.cert.display().to_string();
    let key = pki.server.key.display().to_string();
    let missing = pki.path("missing.pem").display().to_string();

    let err = config_error("[[users]]\nname = \"alice\"\npassword_hash = \"hunter2\"\n");
    assert!(
        err.starts_with("invalid value for `users[alice].password_hash`: not an argon2 hash"),
        "{err}"
    );
    assert!(err.contains("ternd passwd"), "{err}");

    let err = config_error("[[users]]\nname = \"bot\"\ntoken_sha256 = \"abc\"\n");
    assert_eq!(
        err,
        "invalid value for `users[bot].token_sha256`: must be 64 hex digits; make one with `ternd token`"
    );

    let err = config_error(
        "[[users]]\nname = \"carol\"\n[users.permissions]\nsubscribe = [\"ok.>\", \"a..b\"]\n",
    );
    assert!(
        err.starts_with(
            "invalid value for `users[carol].permissions.subscribe`: 'a..b' is not a valid pattern"
        ),
        "{err}"
    );
    let err = config_error("[anonymous]\npublish_deny = [\"x.>.y\"]\n");
    assert!(
        err.starts_with("invalid value for `anonymous.publish_deny`: 'x.>.y'"),
        "{err}"
    );

    let err = config_error("[tls]\nlisten = \"127.0.0.1:0\"\n");
    assert_eq!(
        err,
        "invalid value for `tls.cert`: the TLS listener needs it (a PEM file)"
    );
    let err = config_error(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\n"
    ));
    assert_eq!(
        err,
        "invalid value for `tls.key`: the TLS listener needs it (a PEM file)"
    );

    let err = config_error(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{missing}\"\nkey = \"{key}\"\n"
    ));
    assert!(
        err.starts_with("invalid value for `tls.cert`: cannot read") && err.contains(&missing),
        "{err}"
    );
    // A key where the certificate should be.
    let not_a_cert = pki.path("not-a-cert.pem");
    std::fs::copy(&pki.server.key, &not_a_cert).unwrap();
    let not_a_cert = not_a_cert.display().to_string();
    let err = config_error(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{not_a_cert}\"\nkey = \"{key}\"\n"
    ));
    assert_eq!(
        err,
        format!("invalid value for `tls.cert`: {not_a_cert} holds no certificate")
    );
    let err = config_error(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{missing}\"\n"
    ));
    assert!(
        err.starts_with("invalid value for `tls.key`: cannot read") && err.contains(&missing),
        "{err}"
    );
    let err = config_error(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{missing}\"\n"
    ));
    assert!(
        err.starts_with("invalid value for `tls.client_ca`: cannot read") && err.contains(&missing),
        "{err}"
    );

    // And the good files pass.
    let settings = Settings::from_toml(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{}\"\n",
        pki.ca.pem.display()
    ))
    .unwrap();
    let config = Config::from_settings(settings).unwrap();
    let tls = config.tls.expect("a TLS listener");
    assert_eq!(tls.files.client_ca.as_deref(), Some(pki.ca.pem.as_path()));
}
