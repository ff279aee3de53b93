//! Whether the store takes new messages: the free-disk alarm and write failures.
//!
//! sled cannot be trusted to come back from a full disk: once one of its writes fails
//! it stops making anything durable, and a later flush may wait forever. So the
//! journal never lets it get there. Before each commit that adds messages it asks the
//! filesystem how much room is left ([`StoreHealth::check_disk`]); below `store.min_free_bytes` it
//! refuses the new messages with `storage_failed` (acks, nacks and deletions still
//! go through: they are small, and they are how space comes back) until there is room
//! again. RabbitMQ's disk alarm works the same way. Each transition is logged once and
//! counted (`tern_store_disk_alarm`, `tern_store_disk_alarms_total`); [`StoreHealth`]
//! is what `/healthz` reports meanwhile.

use std::sync::Mutex;

use tern_storage::Store;

/// Why the store does not take new messages, if it does not: the free-disk alarm and
/// the last commit's failure. Shared by the journal, which checks it before each
/// commit that adds messages, and `/healthz`, which checks it on every request (so a
/// broker with nothing to write still reports the alarm cleared once space is back).
#[derive(Debug)]
pub(crate) struct StoreHealth {
    min_free: u64,
    /// The raised alarm's reason. A std `Mutex`: one statvfs and a swap per check.
    alarm: Mutex<Option<String>>,
    /// The last commit's failure, until a commit succeeds.
    failure: Mutex<Option<String>>,
    /// 1 while the alarm is raised.
    gauge: metrics::Gauge,
    /// Times the alarm was raised.
    raised_total: metrics::Counter,
}

fn lock(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    // A whole `Option` is written at once: a poisoned lock still guards a value.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreHealth {
    pub fn new(min_free: u64, gauge: metrics::Gauge, raised_total: metrics::Counter) -> Self {
        gauge.set(0.0);
        Self {
            min_free,
            alarm: Mutex::new(None),
            failure: Mutex::new(None),
            gauge,
            raised_total,
        }
    }

    /// Why new messages are refused now, or `None` when the store takes them.
    pub fn problem(&self) -> Option<String> {
        lock(&self.alarm)
            .clone()
            .or_else(|| lock(&self.failure).clone())
    }

    /// Records how a commit went; logs when that changes the health.
    pub fn commit_result(&self, result: Result<(), &str>) {
        let mut failure = lock(&self.failure);
        match (failure.is_some(), result) {
            (true, Ok(())) => {
                tracing::warn!("store writes succeed again");
                *failure = None;
            }
            (had, Err(e)) => {
                if !had {
                    tracing::error!(error = %e, "store write failed; publishers get storage_failed");
                }
                *failure = Some(format!("the last store write failed: {e}"));
            }
            (false, Ok(())) => {}
        }
    }

    /// Asks the filesystem how much room the store has, raising or clearing the alarm;
    /// returns why new messages must be refused, while they must. A filesystem that
    /// cannot be asked raises nothing (a write would then fail on its own).
    pub fn check_disk(&self, store: &dyn Store) -> Option<String> {
        let free = match store.free_bytes() {
            Ok(free) => free,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask the filesystem for free space");
                return None;
            }
        };
        let reason = (free < self.min_free).then(|| {
            format!(
                "disk alarm: {free} bytes free on the store's filesystem, below \
                 store.min_free_bytes = {}; new messages are refused until space is freed",
                self.min_free
            )
        });
        let mut alarm = lock(&self.alarm);
        match (alarm.is_some(), reason.is_some()) {
            (false, true) => {
                self.gauge.set(1.0);
                self.raised_total.increment(1);
                tracing::error!(
                    free_bytes = free,
                    min_free_bytes = self.min_free,
                    "disk alarm: free space is below store.min_free_bytes; new messages \
                     are refused with storage_failed until space is freed"
                );
            }
            (true, false) => {
                self.gauge.set(0.0);
                tracing::warn!(
                    free_bytes = free,
                    "disk alarm cleared: new messages are taken again"
                );
            }
            _ => {}
        }
        alarm.clone_from(&reason);
        reason
    }
}
