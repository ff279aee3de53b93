//! A full disk, for real: the broker's store on a small tmpfs that a filler file fills.
//!
//! Mounting the tmpfs needs root (CI runs as root): the test says so and fails when it
//! cannot mount, rather than passing without having tried.

mod common;

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{http_get, wait_until, within};
use tern::{Client, Error, ErrorCode, Qos, QueueConfig};
use tokio::net::TcpListener;

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "this test mounts a tmpfs to fill a disk for real, which needs root (CI runs \
             as root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `bytes` of zeros to `path` (really allocated: tmpfs has no holes to cheat).
fn fill(path: &PathBuf, bytes: usize) {
    std::fs::write(path, vec![1u8; bytes]).unwrap();
}

/// The disk alarm end to end: below `store.min_free_bytes` confirmed publishes are
/// refused with a reason and `/healthz` says 503; acks still work; once the filler is
/// removed, `/healthz` says 200 and publishing resumes without a restart, and every
/// message confirmed before the alarm is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_messages_and_publishing_resumes_when_space_returns() {
    let fs = Tmpfs::mount("24m");
    let filler = fs.path().join("filler");
    fill(&filler, 8 << 20);
    let home = tempfile::tempdir().unwrap();
    let mut config = common::config_in(&home, "127.0.0.1:0".parse().unwrap());
    config.data_dir = fs.path().join("data");
    config.store.min_free_bytes = 4 << 20;
    let b = common::start_on(config, home).await;
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = metrics.local_addr().unwrap();
    let server = b.server.clone();
    tokio::spawn(async move { server.serve_metrics(metrics).await });
    assert_eq!(
        http_get(health, "/healthz").await,
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );

    let c = Client::connect(b.url()).await.unwrap();
    within(
        "declare",
        c.declare_queue(&QueueConfig::new("big").bind("big")),
    )
    .await
    .unwrap();
    let payload = vec![7u8; 256 << 10];
    let mut confirmed = 0;
    let refusal = loop {
        assert!(confirmed < 200, "24 MiB cannot hold 200 × 256 KiB");
        let sent = within(
            "a confirm",
            c.publish("big", payload.clone())
                .qos(Qos::AtLeastOnce)
                .into_future(),
        )
        .await;
        match sent {
            Ok(()) => confirmed += 1,
            Err(e) => break e,
        }
    };
    match &refusal {
        Error::Server { code, message, .. } => {
            assert_eq!(*code, Some(ErrorCode::StorageFailed), "{refusal}");
            assert!(message.contains("disk alarm"), "{message}");
        }
        other => panic!("expected storage_failed, got {other:?}"),
    }
    assert!(confirmed > 0, "the disk took nothing");
    let (status, body) = http_get(health, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains("store.min_free_bytes"), "{body}");

    // Consumers still settle messages under the alarm: that is how space comes back.
    let mut consumer = within("consume", c.consume("big").into_future())
        .await
        .unwrap();
    let first = within("a delivery", consumer.next()).await.unwrap();
    within("the ack", first.ack()).await.unwrap();
    drop(consumer);

    // Space returns: healthy again and publishing resumes, no restart.
    std::fs::remove_file(&filler).unwrap();
    wait_until("/healthz to say 200", || async {
        http_get(health, "/healthz").await.0 == "HTTP/1.1 200 OK"
    })
    .await;
    within(
        "a confirm",
        c.publish("big", "after")
            .qos(Qos::AtLeastOnce)
            .into_future(),
    )
    .await
    .unwrap();
    common::queue_until(
        &c,
        "big",
        "every confirmed message but the acked one",
        |s| s.ready + s.unacked == confirmed,
    )
    .await;
}
