//! An in-process broker for scenarios run without `--server`.
//!
//! The broker runs a real [`tern_broker::Server`] on `127.0.0.1:0`, with a temporary
//! data directory and the metrics endpoint off, on a multi-thread tokio runtime of its
//! own, so its scheduling is not mixed with the load generator's tasks. It is still
//! the same process on the same machine: the broker's worker threads and the bench's
//! share the machine's cores (on a 2-core machine, 2 + 2 threads on 2 cores), so
//! figures from an in-process run are a lower bound for a broker on its own host.
//! Pass `--server` to measure a broker running elsewhere.

use std::net::SocketAddr;

use anyhow::Context;
use tern_broker::config::Listen;
use tern_broker::{Config, Running, Server, StatsSnapshot};
use tokio::runtime::Runtime;

/// A broker serving on loopback until [`InProcessBroker::stop`].
#[derive(Debug)]
pub struct InProcessBroker {
    running: Running,
    /// Owns the broker's worker threads; dropped (after the server stopped) in `stop`.
    runtime: Runtime,
    /// The sled store's directory, deleted on drop (after the runtime is gone).
    _data_dir: tempfile::TempDir,
}

impl InProcessBroker {
    /// Starts a broker with `worker_threads` runtime threads (the number of cores when
    /// `None`).
    ///
    /// Must be called outside any tokio runtime: it builds its own.
    ///
    /// # Errors
    ///
    /// The runtime, the temporary directory, the store or the listener could not be made.
    pub fn start(worker_threads: Option<usize>) -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("tern-bench-")
            .tempdir()
            .context("creating the broker's data directory")?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("tern-broker");
        if let Some(n) = worker_threads {
            builder.worker_threads(n);
        }
        let runtime = builder.build().context("building the broker runtime")?;

        let config = Config {
            listen: Listen::On(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: data_dir.path().to_owned(),
            metrics_listen: Listen::Off,
            ..Config::default()
        };
        let running = runtime
            .block_on(Server::start(config))
            .context("starting the broker")?;
        Ok(Self {
            running,
            runtime,
            _data_dir: data_dir,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        // `start` turns the plaintext listener on.
        self.running.addr().expect("a plaintext listener")
    }

    /// The broker's counters since it started.
    pub fn stats(&self) -> StatsSnapshot {
        self.running.server().stats()
    }

    /// Shuts the broker down gracefully and waits for it.
    ///
    /// Must be called outside any tokio runtime.
    ///
    /// # Errors
    ///
    /// The server reported an error while shutting down.
    pub fn stop(self) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.running.stop())
            .context("broker shutdown")
    }
}
