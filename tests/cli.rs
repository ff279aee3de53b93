//! The `tern` command-line tool as a child process against an in-process broker.
//!
//! Every child runs with a clean environment (no TERN_SERVER, no RUST_LOG from the
//! caller) and is killed if a test fails before it exits.

mod common;

use std::process::{Command, Stdio};

use common::{drain, run_cmd, settle, texts, wait_for, within, Proc, TestBroker};
use serde_json::{json, Value};
use tern::Client;

/// `tern ARGS...`, talking to `server` when given.
fn tern(server: Option<&TestBroker>, args: &[&str]) -> Command {
    common::tern_cmd(server.map(TestBroker::url).as_deref(), args)
}

/// Starts `tern sub ...` and waits until the broker has its subscription.
async fn start_sub(b: &TestBroker, args: &[&str]) -> Proc {
    let before = b.server.subscription_count();
    let mut cmd = tern(Some(b), args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let proc = Proc::spawn(&mut cmd);
    wait_for("`tern sub` to subscribe", || {
        b.server.subscription_count() > before
    })
    .await;
    proc
}

/// Runs `tern pub ...` to a successful end.
async fn tern_pub(b: &TestBroker, args: &[&str], stdin: Option<&str>) {
    let (status, out, err) = run_cmd(&mut tern(Some(b), args), stdin).await;
    assert!(status.success(), "tern {args:?} failed: {err}");
    assert!(out.is_empty(), "tern pub printed: {out}");
    assert!(err.is_empty(), "tern pub complained: {err}");
}

/// Each stdout line parsed as JSON.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_json_prints_one_object_per_message() {
    common::bin("tern");
    let b = common::start_broker().await;
    let mut sub = start_sub(&b, &["sub", "cli.>", "--json", "--count", "3"]).await;

    tern_pub(
        &b,
        &[
            "pub",
            "cli.a",
            "hello world",
            "-H",
            "k=v",
            "-H",
            "k=w",
            "-H",
            "x=a=b",
        ],
        None,
    )
    .await;
    tern_pub(&b, &["pub", "cli.b", "ping", "--reply-to", "r.x"], None).await;
    tern_pub(
        &b,
        &["pub", "cli.c.d", "-"],
        Some("from stdin \"quoted\"\n"),
    )
    .await;

    let (status, out, err) = sub.output().await;
    assert!(status.success(), "tern sub failed: {err}");
    assert!(err.is_empty(), "stderr: {err}");
    assert_eq!(out.lines().count(), 3, "stdout:\n{out}");
    let got = json_lines(&out);
    assert_eq!(
        got[0],
        json!({
            "subject": "cli.a",
            "headers": {"k": ["v", "w"], "x": "a=b"},
            "payload": "hello world",
        })
    );
    assert_eq!(
        got[1],
        json!({
            "subject": "cli.b",
            "reply_to": "r.x",
            "headers": {},
            "payload": "ping",
        })
    );
    assert_eq!(
        got[2],
        json!({
            "subject": "cli.c.d",
            "headers": {},
            "payload": "from stdin \"quoted\"",
        })
    );
    wait_for("the sub's subscription to go", || {
        b.server.subscription_count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_json_gives_non_utf8_payloads_as_base64() {
    common::bin("tern");
    let b = common::start_broker().await;
    let mut sub = start_sub(&b, &["sub", "bin.*", "--json", "--count", "2"]).await;
    let c = Client::connect(b.url()).await.unwrap();
    c.publish("bin.x", vec![0xffu8, 0xfe, 0x00]).await.unwrap();
    c.publish("bin.y", Vec::new()).await.unwrap();
    c.flush().await.unwrap();

    let (status, out, err) = sub.output().await;
    assert!(status.success(), "tern sub failed: {err}");
    let got = json_lines(&out);
    assert_eq!(
        got,
        [
            json!({"subject": "bin.x", "headers": {}, "payload_base64": "//4A"}),
            json!({"subject": "bin.y", "headers": {}, "payload": ""}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sends_one_message_per_stdin_line_and_repeats_with_count() {
    common::bin("tern");
    let b = common::start_broker().await;
    let c = Client::connect(b.url()).await.unwrap();
    let mut lines = c.subscribe("lines").await.unwrap();
    let mut counted = c.subscribe("a.b").await.unwrap();

    // `tern pub` exits only after the broker confirmed its messages (it flushes), so a
    // flush of the subscriber afterwards makes them all visible.
    tern_pub(&b, &["pub", "lines", "-"], Some("one\ntwo words\nthree")).await;
    tern_pub(&b, &["pub", "lines"], Some("four\n")).await;
    tern_pub(&b, &["pub", "a.b", "x", "--count", "5"], None).await;
    let probe = Client::connect(b.url()).await.unwrap();
    settle(&probe, &[&c]).await;

    assert_eq!(
        texts(&drain(&mut lines)),
        ["one", "two words", "three", "four"]
    );
    assert_eq!(texts(&drain(&mut counted)), ["x"; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_one_line_on_stderr() {
    common::bin("tern");
    for args in [
        &["--server", "127.0.0.1:1", "pub", "a.b", "x"][..],
        &["--server", "127.0.0.1:1", "sub", "a.>"][..],
    ] {
        let (status, out, err) = run_cmd(&mut tern(None, args), None).await;
        assert!(!status.success(), "{args:?}");
        assert_eq!(status.code(), Some(1), "{args:?}: {status:?}");
        assert!(out.is_empty(), "{args:?} printed to stdout: {out}");
        assert_eq!(
            err.lines().count(),
            1,
            "{args:?}: one line on stderr:\n{err}"
        );
        assert!(err.contains("127.0.0.1:1"), "names the server: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_subject_is_one_line_naming_it() {
    common::bin("tern");
    let b = common::start_broker().await;
    let c = Client::connect(b.url()).await.unwrap();
    let mut all = c.subscribe(">").await.unwrap();
    for args in [
        &["pub", "a..b", "x"][..],
        &["pub", "a.*", "x"][..],
        &["pub", "ok", "x", "--reply-to", "a..b"][..],
        &["sub", "a..b"][..],
    ] {
        let (status, out, err) = run_cmd(&mut tern(Some(&b), args), None).await;
        assert!(!status.success(), "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line:\n{err}");
        let bad = if args.contains(&"a.*") { "a.*" } else { "a..b" };
        assert!(err.contains(bad), "{args:?}: names the subject: {err}");
    }
    settle(&c, &[]).await;
    assert!(drain(&mut all).is_empty(), "nothing was published");
    assert_eq!(b.server.subscription_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_server_environment_variable_is_honoured() {
    common::bin("tern");
    let b = common::start_broker().await;
    let c = Client::connect(b.url()).await.unwrap();
    let mut sub = c.subscribe("env.x").await.unwrap();
    let (status, _, err) = run_cmd(
        tern(None, &["pub", "env.x", "via env"]).env("TERN_SERVER", b.url()),
        None,
    )
    .await;
    assert!(status.success(), "{err}");
    // The flag wins over the variable.
    let (status, _, err) = run_cmd(
        tern(Some(&b), &["pub", "env.x", "via flag"]).env("TERN_SERVER", "127.0.0.1:1"),
        None,
    )
    .await;
    assert!(status.success(), "{err}");
    // And a wrong variable alone is used (and fails).
    let (status, _, err) = run_cmd(
        tern(None, &["pub", "env.x", "nowhere"]).env("TERN_SERVER", "127.0.0.1:1"),
        None,
    )
    .await;
    assert!(!status.success());
    assert!(err.contains("127.0.0.1:1"), "{err}");

    let probe = Client::connect(b.url()).await.unwrap();
    settle(&probe, &[&c]).await;
    assert_eq!(texts(&drain(&mut sub)), ["via env", "via flag"]);
    let _ = within("close", c.close()).await;
}
