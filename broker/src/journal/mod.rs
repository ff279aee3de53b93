//! The journal: the one writer of the durable queues, with group commit.
//!
//! Every change to the durable queues — published messages, settles, redelivery counts,
//! queue definitions, dead-letter moves — goes through this thread. It takes everything
//! waiting in its channels, turns it into one [`Entry`] of [`Command`]s and appends that
//! to the [`Log`], which applies it to the queues' state machine
//! ([`Machine`](crate::queue::machine::Machine)) and makes it durable. Only then does the
//! journal hand the queue tasks their new messages, send the confirms and answer the
//! requests. While one sync runs, the next batch gathers, so a busy broker makes one
//! fsync serve hundreds of confirms.
//!
//! The journal owns what cannot be replicated — connection handles, completion
//! callbacks, the queue tasks' channels — and routes each command's answer back to its
//! asker by the command's place in the entry. The queue rules are the machine's; the
//! encoding of the answers is the session's ([`Confirms`]).
//!
//! Two channels feed it. Publishes come through a bounded one: when the disk falls
//! behind, sessions wait to send and stop reading from their publishers, so memory does
//! not fill up. Queue tasks use an unbounded one: what they send (settles, counts,
//! dead-letter moves) is bounded by the messages they hold, and a queue task must never
//! wait on the journal while the journal may be waiting on it.

mod log;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_storage::{DedupEntry, MessageMeta, QueueId};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

pub(crate) use self::log::{Appending, Log, LogError, LogMetrics, StoreLog, WAL_BYTES};
use crate::clock::now_ms;
use crate::dedup::DedupWindow;
use crate::outbound::Wakes;
use crate::queue::def::QueueDef;
use crate::queue::machine::{Command, Effects, Entry, Outcome, QueueError};
use crate::queue::runtime::{Applied, QueueRuntime};
use crate::queue::FIRST_GROUP;
use crate::store_health::StoreHealth;

/// Most operations taken into one commit, to bound its latency.
const MAX_BATCH: usize = 4096;

/// Message bytes waiting for or in a commit, across all publishers. A publisher past
/// it waits — and so stops reading its socket: TCP slows it down — instead of the
/// journal's queue holding whatever clients send faster than the disk takes it (its
/// bound in operations alone let 1,024 publishes of up to a frame each wait there).
const MAX_PENDING_BYTES: usize = 32 << 20;

/// How often the dedup window is trimmed.
const DEDUP_EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// Where a publish's answer goes. The session's side encodes it into a frame
/// (`handler::publish`); the journal only says what happened.
pub(crate) trait Confirms: Send + Sync + std::fmt::Debug {
    /// Answers publish `id`: how many queues took the message (or that it was a
    /// duplicate), or why it was not stored.
    fn answer(self: Arc<Self>, id: u32, result: Result<Outcome, Refused>, wakes: &mut Wakes);
}

/// Why a durable publish was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The store did not take it (the disk alarm, a failed write or sync).
    #[error("{0}")]
    Store(String),
    /// In a cluster: no leader took it; the client may retry.
    #[error("{0}")]
    NotLeader(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Where to send a publish's CONFIRM.
#[derive(Debug)]
pub(crate) struct ConfirmTo {
    pub to: Arc<dyn Confirms>,
    pub id: u32,
    /// When the publish arrived, for the confirm-latency histogram.
    pub received: Instant,
}

impl ConfirmTo {
    pub fn answer(self, result: Result<Outcome, Refused>, wakes: &mut Wakes) {
        self.to.answer(self.id, result, wakes);
    }
}

/// A message for one or more queues.
#[derive(Debug)]
pub(crate) struct PublishOp {
    pub queues: Vec<QueueId>,
    /// The queues are the leader's to pick (`Command::Publish::route_on_leader`).
    pub route_on_leader: bool,
    /// The publishing connection, so that its own request earns it no reply permit.
    pub publisher: u64,
    /// The envelope in wire form, in its own allocation.
    pub envelope: Bytes,
    pub enqueued_ms: u64,
    /// Expiry set by the publisher (a request deadline), before any queue TTL.
    pub deadline_ms: Option<u64>,
    pub dedup: Option<DedupEntry>,
    pub confirm: Option<ConfirmTo>,
    /// Its share of [`MAX_PENDING_BYTES`], held until its commit is done; set by
    /// [`Journal::publish`].
    pub held: Option<OwnedSemaphorePermit>,
}

/// Called once an operation's commit is durable (a declared queue runs then), or with
/// why it is not.
pub(crate) type Done = Box<dyn FnOnce(Result<(), Refused>) + Send>;

/// What queue tasks and the queue registry ask of the journal.
pub(crate) enum Op {
    /// A message is settled (acked, purged): remove it.
    Settle {
        queue: QueueId,
        seq: u64,
        forget_meta: bool,
        /// Called once the settle is committed.
        done: Option<Done>,
    },
    /// Record or forget a message's meta.
    Meta {
        queue: QueueId,
        seq: u64,
        meta: Option<MessageMeta>,
        done: Option<Done>,
    },
    /// Settle a message in one queue and append it (maybe changed) to another, in one
    /// commit: dead-lettering and moving.
    Transfer {
        from: QueueId,
        seq: u64,
        forget_meta: bool,
        to: QueueId,
        envelope: Bytes,
        enqueued_ms: u64,
    },
    /// Create a queue (its task starts once the commit is applied).
    /// Declares a queue; in a cluster, of `replicas` replicas (0: the default).
    PutQueue {
        def: QueueDef,
        replicas: u8,
        done: Done,
    },
    /// Delete a queue and everything in it.
    DeleteQueue { queue: QueueId, done: Done },
    /// Answer once everything sent before it is committed.
    Barrier { done: Done },
    /// Commit what was sent before, flush, and stop.
    Shutdown { done: Done },
}

/// The journal's senders.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    publish: mpsc::Sender<PublishOp>,
    internal: mpsc::UnboundedSender<Op>,
    /// [`MAX_PENDING_BYTES`] as permits, one per byte.
    pending_bytes: Arc<Semaphore>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Settle { .. } => "Settle",
            Op::Meta { .. } => "Meta",
            Op::Transfer { .. } => "Transfer",
            Op::PutQueue { .. } => "PutQueue",
            Op::DeleteQueue { .. } => "DeleteQueue",
            Op::Barrier { .. } => "Barrier",
            Op::Shutdown { .. } => "Shutdown",
        })
    }
}

impl Journal {
    /// Queues a publish, waiting while the journal is full.
    ///
    /// # Errors
    ///
    /// The journal has stopped (the server is shutting down).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled send loses the operation.
    pub async fn publish(&self, mut op: PublishOp) -> Result<(), PublishOp> {
        // A message larger than the whole budget goes through alone.
        let bytes = op.envelope.len().clamp(1, MAX_PENDING_BYTES);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        match Arc::clone(&self.pending_bytes)
            .acquire_many_owned(bytes)
            .await
        {
            Ok(permit) => op.held = Some(permit),
            Err(_) => return Err(op),
        }
        self.publish.send(op).await.map_err(|e| e.0)
    }

    /// Queues an internal operation. Never waits.
    pub fn send(&self, op: Op) {
        if let Err(mpsc::error::SendError(op)) = self.internal.send(op) {
            tracing::debug!(?op, "journal stopped; operation dropped");
        }
    }

    /// Waits until everything sent before is committed.
    pub async fn barrier(&self) -> Result<(), Refused> {
        self.wait(|done| Op::Barrier { done }).await
    }

    /// Commits everything sent before, flushes the store, and stops the journal.
    pub async fn shutdown(&self) -> Result<(), Refused> {
        self.wait(|done| Op::Shutdown { done }).await
    }

    async fn wait(&self, op: impl FnOnce(Done) -> Op) -> Result<(), Refused> {
        let (tx, rx) = oneshot::channel();
        self.send(op(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.await.unwrap_or(Err(Refused::ShuttingDown))
    }
}

/// What the journal owes a command once its entry is durable (or failed): the parts
/// of a request that stay on this node.
enum After {
    Nothing,
    Publish {
        confirm: Option<ConfirmTo>,
        dedup: Option<DedupEntry>,
    },
    Done(Option<Done>),
}

/// One group commit in the making.
#[derive(Default)]
struct Batch {
    entry: Entry,
    /// What each command of the entry is owed, by index.
    after: Vec<After>,
    /// Barriers, answered after the entry.
    barriers: Vec<Done>,
    shutdown: Option<Done>,
    /// The publishes' shares of the byte budget, released when the commit is done.
    held: Vec<OwnedSemaphorePermit>,
}

impl Batch {
    /// Whether anyone waits for this batch to be durable: a publisher for its confirm,
    /// an answer promised once a settle or declare sticks, a barrier, a shutdown.
    fn awaited(&self) -> bool {
        !self.barriers.is_empty()
            || self.shutdown.is_some()
            || self.after.iter().any(|a| match a {
                After::Nothing => false,
                After::Publish { confirm, .. } => confirm.is_some(),
                After::Done(done) => done.is_some(),
            })
    }

    fn push(&mut self, command: Command, after: After) {
        self.entry.commands.push(command);
        self.after.push(after);
    }
}

/// An entry on its way, and what its batch owes once it is answered.
struct OnTheWay {
    batch: Batch,
    appending: Appending,
}

/// The journal thread's state.
pub(crate) struct Writer<L> {
    log: L,
    /// The disk alarm and write failures, shared with `/healthz`.
    health: Arc<StoreHealth>,
    confirm_latency: metrics::Histogram,
    /// The queues, which carry out what each entry did.
    runtime: Arc<QueueRuntime>,
    dedup: Arc<Mutex<DedupWindow>>,
    /// Set by [`Op::Shutdown`]: stop after this commit.
    stopping: bool,
}

impl<L: Log> Writer<L> {
    /// A writer over `log`.
    pub fn new(
        log: L,
        health: Arc<StoreHealth>,
        dedup: Arc<Mutex<DedupWindow>>,
        confirm_latency: metrics::Histogram,
        runtime: Arc<QueueRuntime>,
    ) -> Self {
        Self {
            log,
            health,
            confirm_latency,
            runtime,
            dedup,
            stopping: false,
        }
    }

    /// Starts the journal thread. Returns its senders and a handle that completes when
    /// it has flushed and stopped (after every sender is dropped).
    pub fn spawn(self) -> std::io::Result<(Journal, std::thread::JoinHandle<()>)> {
        let (publish_tx, publish_rx) = mpsc::channel(1024);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let handle = std::thread::Builder::new()
            .name("tern-journal".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(self.run(publish_rx, internal_rx)),
                    Err(e) => tracing::error!(error = %e, "journal cannot start"),
                }
            })?;
        Ok((
            Journal {
                publish: publish_tx,
                internal: internal_tx,
                pending_bytes: Arc::new(Semaphore::new(MAX_PENDING_BYTES)),
            },
            handle,
        ))
    }

    async fn run(
        mut self,
        mut publish: mpsc::Receiver<PublishOp>,
        mut internal: mpsc::UnboundedReceiver<Op>,
    ) {
        let mut last_expiry = Instant::now();
        let (mut publish_open, mut internal_open) = (true, true);
        // Appended, in order, and not yet answered (`Log::depth`).
        let mut on_the_way: VecDeque<OnTheWay> = VecDeque::new();
        loop {
            let taking = (publish_open || internal_open)
                && !self.stopping
                && on_the_way.len() < self.log.depth();
            if !taking && on_the_way.is_empty() {
                break;
            }
            let mut publishes = Vec::new();
            let mut ops = Vec::new();
            tokio::select! {
                biased;
                result = async {
                    match on_the_way.front_mut() {
                        Some(first) => first.appending.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if !on_the_way.is_empty() => {
                    if let Some(done) = on_the_way.pop_front() {
                        self.finish(done.batch, result).await;
                    }
                    continue;
                }
                op = internal.recv(), if internal_open && taking => match op {
                    Some(op) => ops.push(op),
                    None => internal_open = false,
                },
                op = publish.recv(), if publish_open && taking => match op {
                    Some(op) => publishes.push(op),
                    None => publish_open = false,
                },
                () = tokio::time::sleep(log::until(self.log.sync_due())) => {
                    // The sync interval is up with nothing new to write.
                    let synced = self.log.sync();
                    self.report(&synced);
                    continue;
                }
            }
            if ops.is_empty() && publishes.is_empty() {
                // A channel closed.
                continue;
            }
            let max_bytes = self.log.max_entry_bytes();
            let mut bytes: usize = publishes.iter().map(|p| p.envelope.len()).sum();
            while ops.len() + publishes.len() < MAX_BATCH && bytes < max_bytes {
                if let Ok(op) = internal.try_recv() {
                    ops.push(op);
                } else if let Ok(op) = publish.try_recv() {
                    bytes += op.envelope.len();
                    publishes.push(op);
                } else {
                    break;
                }
            }
            let expire = last_expiry.elapsed() >= DEDUP_EXPIRY_EVERY;
            if expire {
                last_expiry = Instant::now();
            }
            on_the_way.push_back(self.append(publishes, ops, expire).await);
        }
        if let Err(e) = self.log.compact() {
            tracing::error!(error = %e, "final flush of the store failed");
        }
    }

    /// Turns one batch into an entry and appends it to the log.
    async fn append(
        &mut self,
        publishes: Vec<PublishOp>,
        ops: Vec<Op>,
        expire_dedup: bool,
    ) -> OnTheWay {
        let mut batch = Batch::default();
        for op in ops {
            self.stage_op(op, &mut batch);
        }
        for p in self.admit(publishes) {
            batch.held.extend(p.held);
            batch.push(
                Command::Publish {
                    queues: p.queues,
                    route_on_leader: p.route_on_leader,
                    publisher: p.publisher,
                    envelope: p.envelope,
                    enqueued_ms: p.enqueued_ms,
                    deadline_ms: p.deadline_ms,
                    dedup: p.dedup.clone(),
                },
                After::Publish {
                    confirm: p.confirm,
                    dedup: p.dedup,
                },
            );
        }
        if expire_dedup {
            // This node's window expires by itself; the machine's, by the bounds the
            // entry carries (on a follower, the log drops them: the leader's count).
            let now = now_ms();
            let (before_ms, keep) = {
                let mut window = lock(&self.dedup);
                window.expire(now);
                window.bounds(now)
            };
            batch.push(Command::ForgetDedup { before_ms, keep }, After::Nothing);
        }
        let awaited = batch.awaited();
        let entry = std::mem::take(&mut batch.entry);
        let appending = self.log.append(entry, awaited).await;
        OnTheWay { batch, appending }
    }

    /// Settles what a batch owes once its entry is applied, or failed.
    async fn finish(&mut self, mut batch: Batch, result: Result<Effects, LogError>) {
        self.report(&result);
        let shutdown = batch.shutdown.take();
        match result {
            Ok(fx) => self.succeeded(fx, batch).await,
            Err(e) => Self::failed(&self.dedup, &e, batch),
        }
        if let Some(done) = shutdown {
            done(
                self.log
                    .compact()
                    .map_err(|e| Refused::Store(e.to_string())),
            );
        }
    }

    /// Tells `/healthz` how the last write went.
    fn report<T>(&self, result: &Result<T, LogError>) {
        match result {
            Ok(_) => self.health.commit_result(Ok(())),
            // Not the store's failure: the cluster is electing a leader.
            Err(LogError::NoLeader(_)) => {}
            Err(e) => self.health.commit_result(Err(&e.to_string())),
        }
    }

    fn stage_op(&mut self, op: Op, batch: &mut Batch) {
        match op {
            Op::Settle {
                queue,
                seq,
                forget_meta,
                done,
            } => batch.push(
                Command::Settle {
                    queue,
                    seq,
                    forget_meta,
                },
                After::Done(done),
            ),
            Op::Meta {
                queue,
                seq,
                meta,
                done,
            } => batch.push(Command::SetMeta { queue, seq, meta }, After::Done(done)),
            Op::Transfer {
                from,
                seq,
                forget_meta,
                to,
                envelope,
                enqueued_ms,
            } => batch.push(
                Command::Transfer {
                    from,
                    seq,
                    forget_meta,
                    to,
                    envelope,
                    enqueued_ms,
                },
                After::Nothing,
            ),
            Op::PutQueue {
                def,
                replicas,
                done,
            } => {
                let declare = match replicas {
                    0 => Command::Declare { def },
                    replicas => Command::Create { def, replicas },
                };
                batch.push(declare, After::Done(Some(done)));
            }
            Op::DeleteQueue { queue, done } => {
                batch.push(Command::Delete { queue }, After::Done(Some(done)));
            }
            Op::Barrier { done } => batch.barriers.push(done),
            Op::Shutdown { done } => {
                self.stopping = true;
                batch.shutdown = Some(done);
            }
        }
    }

    /// The publishes the store may take now: all of them, or none while the disk alarm
    /// is raised. Those refused are answered `storage_failed` with the alarm's reason
    /// and leave the dedup window, so that a retry after the alarm is stored.
    fn admit(&mut self, publishes: Vec<PublishOp>) -> Vec<PublishOp> {
        if publishes.is_empty() {
            return publishes;
        }
        let Some(reason) = self.log.refuses_new_messages() else {
            return publishes;
        };
        let mut wakes = Wakes::default();
        let mut window = lock(&self.dedup);
        for p in publishes {
            if let Some(d) = &p.dedup {
                window.failed(&d.producer, d.sequence);
            }
            if let Some(to) = p.confirm {
                to.answer(Err(Refused::Store(reason.clone())), &mut wakes);
            }
        }
        drop(window);
        wakes.wake_all();
        Vec::new()
    }

    async fn succeeded(&mut self, fx: Effects, batch: Batch) {
        // The queues first: a client that has its confirm (or its declare answered) and
        // then asks the queue (info, consume) is served after the queue task took the
        // message in, as its inputs are handled in order.
        // (Effects only come from the local log, whose queues are all in the first
        // group; in a cluster each group's state machine hands over its own.)
        self.runtime
            .apply(
                FIRST_GROUP,
                Applied {
                    deleted: fx.deleted,
                    declared: fx.declared,
                    placed: fx.placed,
                    appended: fx.appended.into_iter().collect(),
                },
            )
            .await;
        let after = batch.after;
        // The window learns which copies were stored before any answer goes out: the
        // publisher may retry the moment it reads its error.
        {
            let mut window = lock(&self.dedup);
            for (a, answer) in after.iter().zip(&fx.answers) {
                if let After::Publish { dedup: Some(d), .. } = a {
                    match answer {
                        Ok(_) => window.stored(&d.producer, d.sequence),
                        Err(_) => window.failed(&d.producer, d.sequence),
                    }
                }
            }
        }
        let mut wakes = Wakes::default();
        for (a, answer) in after.into_iter().zip(fx.answers) {
            match a {
                After::Nothing => {}
                After::Publish { confirm, .. } => {
                    if let Some(to) = confirm {
                        self.confirm_latency.record(to.received.elapsed());
                        to.answer(answer.map_err(Refused::from), &mut wakes);
                    }
                }
                After::Done(done) => {
                    if let Some(done) = done {
                        done(answer.map(|_| ()).map_err(Refused::from));
                    }
                }
            }
        }
        wakes.wake_all();
        for done in batch.barriers {
            done(Ok(()));
        }
    }

    fn failed(dedup: &Mutex<DedupWindow>, error: &LogError, batch: Batch) {
        // Out of the window before any answer goes out, as above.
        {
            let mut window = lock(dedup);
            for a in &batch.after {
                if let After::Publish { dedup: Some(d), .. } = a {
                    window.failed(&d.producer, d.sequence);
                }
            }
        }
        let refused = || match error {
            LogError::NoLeader(why) => Refused::NotLeader(why.clone()),
            _ => Refused::Store(format!("the message could not be stored: {error}")),
        };
        let mut wakes = Wakes::default();
        for a in batch.after {
            match a {
                After::Nothing => {}
                After::Publish { confirm, .. } => {
                    if let Some(to) = confirm {
                        to.answer(Err(refused()), &mut wakes);
                    }
                }
                After::Done(done) => {
                    if let Some(done) = done {
                        done(Err(refused()));
                    }
                }
            }
        }
        wakes.wake_all();
        for done in batch.barriers {
            done(Err(refused()));
        }
    }
}

/// The window holds no invariant a panic could break; a poisoned lock is still usable.
pub(crate) fn lock(m: &Mutex<DedupWindow>) -> std::sync::MutexGuard<'_, DedupWindow> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
