//! Shared helpers for the end-to-end tests: a real broker on an ephemeral port with a
//! temporary data directory, raw protocol connections for abuse tests, the workspace's
//! binaries, and condition waits (never bare sleeps).
#![allow(dead_code)] // each test crate uses a different subset of these helpers

pub mod mqtt;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::config::Listen;
use tern_broker::{Config, Server};
use tern_codec::{Encode, ErrorCode, ErrorFrame, Frame, Hello, Ping, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any wait in a test may take before the test fails. Generous: CI machines
/// are slow, and a correct test never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A broker running in this process, and its data directory.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub server: Server,
    running: tern_broker::Running,
    pub dir: tempfile::TempDir,
}

/// A broker with default limits.
pub async fn start_broker() -> TestBroker {
    start_broker_with(|_| {}).await
}

/// A broker whose config `adjust` may change (limits, say) before it starts.
pub async fn start_broker_with(adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        metrics_listen: Listen::Off,
        ..Config::default()
    };
    adjust(&mut config);
    start_on(config, dir).await
}

/// A broker on `config` exactly (its `listen` may be a fixed port, to restart a broker
/// where clients expect it), keeping `dir` alive with it.
pub async fn start_on(config: Config, dir: tempfile::TempDir) -> TestBroker {
    let running = Server::start(config).await.unwrap();
    TestBroker {
        addr: running.addr().expect("a plaintext listener"),
        server: running.server().clone(),
        running,
        dir,
    }
}

impl TestBroker {
    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    /// Shuts the broker down gracefully and waits for it. Returns the data directory.
    /// (Dropping a `TestBroker` stops its broker without waiting.)
    pub async fn shutdown(self) -> tempfile::TempDir {
        tokio::time::timeout(PATIENCE, self.running.stop())
            .await
            .expect("broker shut down in time")
            .unwrap();
        self.dir
    }
}

/// Polls `condition` until it holds; fails the test after [`PATIENCE`].
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// An HTTP GET, the way Prometheus scrapes: returns status line and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    within("the HTTP response", s.read_to_string(&mut response))
        .await
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// A raw protocol connection, for tests that must send what the client never would.
pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    /// Connects without greeting.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes the handshake.
    pub async fn greeted(addr: SocketAddr) -> RawConn {
        let mut c = RawConn::connect(addr).await;
        c.send(&Hello {
            version: PROTOCOL_VERSION,
            name: "raw".into(),
            credentials: None,
        })
        .await;
        match c.recv().await {
            Some(Frame::Welcome(_)) => c,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: &impl Encode) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf).unwrap();
        self.send_bytes(&buf).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame; `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        within("a frame from the server", async {
            loop {
                if let Some(f) = Frame::decode(&mut self.buf, 64 << 20).unwrap() {
                    return Some(f);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }
}

/// Path of a binary of this workspace (`tern`, `ternd`), built on first use so that a
/// test never runs a stale one.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo_build(&["-p", "ternd", "-p", "tern-client", "--bins"]);
    });
    profile_dir().join(name)
}

/// The path of example `name` of the `tern` package (`examples/NAME.rs`), built on
/// first use.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        cargo_build(&["-p", "tern", "--example", name]);
        built.push(name.to_owned());
    }
    profile_dir().join("examples").join(name)
}

/// Where cargo puts this profile's binaries: test executables live in
/// `<target>/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `cargo build --quiet WHAT...` in this test's profile.
fn cargo_build(what: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet"]).args(what);
    if profile_dir().ends_with("release") {
        cmd.arg("--release");
    }
    // Cargo gives this test process its package's variables; a build script that
    // watches them (ring's does) would see them change and rebuild everything, here
    // and again on the next outer cargo run.
    for (k, _) in std::env::vars() {
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| k.starts_with(p));
        if per_package || k == "CARGO_PRIMARY_PACKAGE" || k == "CARGO_TARGET_TMPDIR" {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "cargo build {what:?} failed");
}

/// `tern ARGS...` talking to `server` when given, with a clean environment (no TERN_*
/// or RUST_LOG from the caller).
pub fn tern_cmd(server: Option<&str>, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin("tern"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    if let Some(server) = server {
        cmd.args(["--server", server]);
    }
    cmd.args(args);
    cmd
}

// ---------------------------------------------------------------------------------------
// Delivery checks with the client library.
// ---------------------------------------------------------------------------------------

/// Makes every message `publisher` sent so far visible to `subscribers`' subscriptions.
///
/// After the publisher's flush the broker has processed (and queued to subscribers)
/// everything published before it. A subscriber's flush then returns only after its PONG,
/// which the broker queued behind those messages, so they are already in the
/// subscriptions' buffers: [`drain`] sees all of them, and a message it does not see was
/// really not delivered. No waiting for timeouts.
pub async fn settle(publisher: &tern::Client, subscribers: &[&tern::Client]) {
    within("the publisher's flush", publisher.flush())
        .await
        .expect("publisher flush");
    for s in subscribers {
        within("a subscriber's flush", s.flush())
            .await
            .expect("subscriber flush");
    }
}

/// Every message already buffered in `sub`, without waiting.
pub fn drain(sub: &mut tern::Subscription) -> Vec<tern::Message> {
    std::iter::from_fn(|| sub.try_next()).collect()
}

/// The payloads of `msgs` as UTF-8 strings.
pub fn texts(msgs: &[tern::Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).expect("UTF-8 payload"))
        .collect()
}

/// The subjects of `msgs`.
pub fn subjects(msgs: &[tern::Message]) -> Vec<String> {
    msgs.iter().map(|m| m.subject.to_string()).collect()
}

/// Polls the async `attempt` until it yields a value; fails the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the async `check` until it holds; fails the test after [`PATIENCE`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Raw protocol helpers.
// ---------------------------------------------------------------------------------------

/// The bytes of `frames`, encoded back to back (to send in one write).
pub fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        f.encode(&mut buf).unwrap();
    }
    buf
}

impl RawConn {
    /// Sends a HELLO with `version` (and nothing else).
    pub async fn hello(&mut self, version: u16) {
        self.send(&Hello {
            version,
            name: "raw".into(),
            credentials: None,
        })
        .await;
    }

    /// The next frame, which must be an ERROR with `code` and `id`.
    pub async fn expect_error(&mut self, code: ErrorCode, id: u32) -> ErrorFrame {
        match self.recv().await {
            Some(Frame::Error(e)) => {
                assert_eq!(e.code(), Some(code), "wrong code in {e:?}");
                assert_eq!(e.id, id, "wrong id in {e:?}");
                e
            }
            other => panic!("expected ERROR {code}, got {other:?}"),
        }
    }

    /// The next frame, which must be a PONG with `id`.
    pub async fn expect_pong(&mut self, id: u32) {
        match self.recv().await {
            Some(Frame::Pong(p)) if p.id == id => {}
            other => panic!("expected PONG {id}, got {other:?}"),
        }
    }

    /// The next frame, which must be an OK with `id`.
    pub async fn expect_ok(&mut self, id: u32) {
        match self.recv().await {
            Some(Frame::Ok(ok)) if ok.id == id => {}
            other => panic!("expected OK {id}, got {other:?}"),
        }
    }

    /// The server must close the connection now, sending nothing more.
    pub async fn expect_eof(&mut self) {
        if let Some(f) = self.recv().await {
            panic!("expected the server to close the connection, got {f:?}");
        }
    }

    /// Sends a PING and checks that its PONG is the next frame: the connection is open
    /// and nothing else was queued for it.
    pub async fn ping_pong(&mut self, id: u32) {
        self.send(&Ping { id }).await;
        self.expect_pong(id).await;
    }
}

// ---------------------------------------------------------------------------------------
// Child processes (the `tern` and `ternd` binaries).
// ---------------------------------------------------------------------------------------

/// A child process that is killed if the test ends (or fails) before it exits.
pub struct Proc {
    pub child: std::process::Child,
}

impl Proc {
    pub fn spawn(cmd: &mut std::process::Command) -> Proc {
        Proc {
            child: cmd.spawn().expect("the binary starts"),
        }
    }

    /// Waits for the process to exit, failing the test after [`PATIENCE`].
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        wait_for("the child process to exit", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        })
        .await;
        status.expect("exited")
    }

    /// Waits for the exit, then returns the status and everything on stdout and stderr
    /// (both must be piped).
    pub async fn output(&mut self) -> (std::process::ExitStatus, String, String) {
        use std::io::Read;
        let status = self.wait().await;
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut err).unwrap();
        }
        (status, out, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion with piped output (and stdin from `stdin`, if given).
pub async fn run_cmd(
    cmd: &mut std::process::Command,
    stdin: Option<&str>,
) -> (std::process::ExitStatus, String, String) {
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut p = Proc::spawn(cmd);
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = p.child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).unwrap();
        // Dropped here: the child sees the end of its input.
    }
    p.output().await
}

// ---------------------------------------------------------------------------------------
// Durable queues: restarts in process, queue counters.
// ---------------------------------------------------------------------------------------

/// A config for a broker on exactly `listen`, storing in `dir` (as [`start_broker_with`]
/// lays it out), so that a broker can be restarted on the same data.
pub fn config_in(dir: &tempfile::TempDir, listen: SocketAddr) -> Config {
    Config {
        listen: Listen::On(listen),
        data_dir: dir.path().join("data"),
        metrics_listen: Listen::Off,
        ..Config::default()
    }
}

/// Shuts `b` down gracefully and starts a new broker on the same address and data
/// directory, with `adjust` applied to the config (give it the adjustments `b` was
/// started with). Clients that reconnect find it where they left the old one.
pub async fn restart(b: TestBroker, adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let addr = b.addr;
    let dir = b.shutdown().await;
    let mut config = config_in(&dir, addr);
    adjust(&mut config);
    start_on(config, dir).await
}

/// Polls `client.queue_info(name)` until `condition` holds for it and returns that
/// info; fails the test after [`PATIENCE`], showing the last info seen.
pub async fn queue_until(
    client: &tern::Client,
    name: &str,
    what: &str,
    mut condition: impl FnMut(&tern::QueueStats) -> bool,
) -> tern::QueueInfo {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info = within("queue_info", client.queue_info(name))
            .await
            .unwrap_or_else(|e| panic!("queue_info({name}): {e}"));
        if condition(&info.stats) {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what} on queue {name}; last stats: {:?}",
            info.stats
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// `ternd` as a child process.
// ---------------------------------------------------------------------------------------

/// `ternd ARGS...` with a clean environment (no TERN_* from the caller) and info logs.
pub fn ternd_cmd(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin("ternd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").args(args);
    cmd
}

/// `ternd` on 127.0.0.1:0 with its store in `data_dir`, the metrics endpoint off, plus
/// `extra` flags.
pub fn ternd_on(data_dir: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ];
    args.extend_from_slice(extra);
    ternd_cmd(&args)
}

/// A running `ternd` on an ephemeral port, and the lines it writes to stderr.
pub struct Ternd {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Ternd {
    /// Starts [`ternd_on`]`(data_dir, extra)` and waits for its `listening on ADDR` line.
    pub async fn start(data_dir: &std::path::Path, extra: &[&str]) -> Ternd {
        Ternd::spawn(ternd_on(data_dir, extra)).await
    }

    /// Starts `cmd` and waits for its `listening on ADDR` line.
    pub async fn spawn(cmd: std::process::Command) -> Ternd {
        match Ternd::try_spawn(cmd).await {
            Ok(t) => t,
            Err((status, lines)) => {
                panic!(
                    "ternd exited ({status:?}) before listening:\n{}",
                    lines.join("\n")
                )
            }
        }
    }

    /// Starts `cmd` and waits until it listens, or exits: then its status and every
    /// line it wrote to stderr.
    pub async fn try_spawn(
        mut cmd: std::process::Command,
    ) -> Result<Ternd, (std::process::ExitStatus, Vec<String>)> {
        use std::io::BufRead;
        use std::process::Stdio;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(&mut cmd);
        let stderr = proc.child.stderr.take().unwrap();
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match within("ternd to listen or exit", lines.recv()).await {
                Some(line) => {
                    if let Some((_, rest)) = line.split_once("listening on ") {
                        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        return Ok(Ternd { proc, addr, lines });
                    }
                    seen.push(line);
                }
                None => return Err((proc.wait().await, seen)),
            }
        }
    }

    /// Sends SIGTERM, without waiting.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Every stderr line from here until the process closes it.
    pub async fn rest_of_stderr(&mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(l) = within("ternd's stderr", self.lines.recv()).await {
            rest.push(l);
        }
        rest
    }

    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// SIGKILL: no chance to flush or clean up. Waits until the process is gone.
    pub async fn kill9(&mut self) {
        self.proc.child.kill().expect("SIGKILL");
        let status = self.proc.wait().await;
        assert!(status.code().is_none(), "killed by a signal: {status:?}");
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(&mut self) {
        self.sigterm();
        let status = self.proc.wait().await;
        assert_eq!(status.code(), Some(0), "ternd exits 0 on SIGTERM");
    }
}

// ---------------------------------------------------------------------------------------
// A part of a test that can crash.
// ---------------------------------------------------------------------------------------

/// A piece of the test that runs like a separate process: its own single-threaded
/// runtime on its own thread. [`Crashable::kill`] stops that runtime between two polls
/// and drops it with every task and socket in it, as a crash would: no unsubscribe, no
/// cancel, no final flush, no ack.
pub struct Crashable {
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Crashable {
    pub fn spawn<F, Fut>(body: F) -> Crashable
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (kill, killed) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                tokio::select! {
                    _ = killed => {}
                    () = body() => {}
                }
            });
            // Dropping the runtime drops every task it still has, and their sockets.
            drop(runtime);
        });
        Crashable {
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Kills the process and waits until it is gone (its sockets are closed).
    pub async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            within(
                "the killed process to end",
                tokio::task::spawn_blocking(move || thread.join()),
            )
            .await
            .unwrap()
            .expect("the process's thread did not panic");
        }
    }
}

impl Drop for Crashable {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// A TCP proxy that can cut connections.
// ---------------------------------------------------------------------------------------

/// A TCP proxy on 127.0.0.1:0 in front of `upstream`. It can hold back what the
/// server sends (the client's requests still go through: the server acts on them, but
/// its answers do not arrive), and cut every current connection, as a network failure
/// would.
pub struct Proxy {
    pub addr: SocketAddr,
    state: std::sync::Arc<ProxyState>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    links: std::sync::Mutex<Vec<JoinHandle<()>>>,
    hold: tokio::sync::watch::Sender<bool>,
    refuse: std::sync::atomic::AtomicBool,
    accepted: std::sync::atomic::AtomicUsize,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, _) = tokio::sync::watch::channel(false);
        let state = std::sync::Arc::new(ProxyState {
            links: std::sync::Mutex::new(Vec::new()),
            hold,
            refuse: std::sync::atomic::AtomicBool::new(false),
            accepted: std::sync::atomic::AtomicUsize::new(0),
        });
        let accept = tokio::spawn({
            let state = std::sync::Arc::clone(&state);
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if state.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                        drop(client);
                        state
                            .accepted
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue; // dropping `client` refuses it
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_rd, client_wr) = client.into_split();
                    let (server_rd, server_wr) = server.into_split();
                    let hold = state.hold.subscribe();
                    let link = tokio::spawn(async move {
                        tokio::join!(
                            pump(client_rd, server_wr, None),
                            pump(server_rd, client_wr, Some(hold))
                        );
                    });
                    state.links.lock().unwrap().push(link);
                    state
                        .accepted
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    /// While `true`, new connections are closed as soon as they are accepted (the
    /// server seems down to clients); current ones are left alone.
    pub fn refuse(&self, refuse: bool) {
        self.state
            .refuse
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many connections the proxy has accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.state
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Holds back (true) or lets through (false) everything the server sends, on
    /// current and future connections. Bytes already on their way may still arrive.
    pub fn hold_downstream(&self, hold: bool) {
        self.state.hold.send_replace(hold);
    }

    /// Closes every current connection, both sides; new ones are accepted as before.
    pub fn cut(&self) {
        for link in self.state.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to` until either ends, pausing while `hold` is true.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(h) = &mut hold {
            if *h.borrow_and_update() {
                if h.changed().await.is_err() {
                    hold = None;
                }
                continue;
            }
        }
        let changed = async {
            match &mut hold {
                Some(h) => h.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            still = changed => {
                if !still {
                    hold = None;
                }
            }
        }
    }
}
