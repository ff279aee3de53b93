//! Consuming from durable queues.
//!
//! A [`Consumer`] is a stream of [`Delivery`]s; the broker sends it at most `prefetch`
//! unsettled at once. Each delivery is settled with [`Delivery::ack`] (processed) or
//! [`Delivery::nack`] (not processed: requeue, or dead-letter).
//!
//! An auto-ack consumer's deliveries are settled as the broker sends them; the client
//! credits the broker (CREDIT) as the application takes them, every half prefetch, so
//! the broker still sends no more than `prefetch` the application has not taken and
//! the rest wait in the queue. The broker stores those settles as it stores acks, in
//! group commits: a message sent just before the broker crashed, or before its queue's
//! leader changed, may be delivered again (its delivery count as stored, so possibly
//! not flagged [`Delivery::redelivered`]). An auto-ack consumer is at least once
//! across failures, like the others, and never holds the queue back.
//!
//! Exactly-once consumers (a durable name, [`ConsumeBuilder::exactly_once`]) do a
//! two-step handshake: before a delivery is handed to the application, the client
//! sends RECEIVED and waits for the broker to record, in its store, that this consumer
//! has the message; the application's ack then removes it. The client remembers the
//! sequence numbers it handed out and has not acked yet — in memory, and, with
//! [`ConsumeBuilder::state_file`], in a file that survives the process. A message the
//! broker delivers again after a reconnect or restart (flagged as received before) is
//! handed to the application only if it is not in that set; otherwise it is acked
//! without being handed out twice.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::{Future, IntoFuture};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tern_codec::names::validate_name;
use tern_codec::{
    Ack, AckMode, Cancel, Consume, Credit, Delivery as DeliveryFrame, Nack, Received,
};
use tokio::sync::oneshot;

use crate::queue::SubQueue;
use crate::state::{ConsumerEntry, Request};
use crate::{Client, Error, Message};

/// A consumer about to be attached. Set options, then `.await` it.
#[must_use = "a consumer is attached only when awaited"]
#[derive(Debug)]
pub struct ConsumeBuilder<'a> {
    client: &'a Client,
    queue: &'a str,
    prefetch: u32,
    mode: AckMode,
    name: Option<&'a str>,
    state_file: Option<PathBuf>,
}

impl<'a> ConsumeBuilder<'a> {
    pub(crate) fn new(client: &'a Client, queue: &'a str) -> Self {
        Self {
            client,
            queue,
            prefetch: 64,
            mode: AckMode::Manual,
            name: None,
            state_file: None,
        }
    }

    /// The most deliveries held unsettled at once (default 64); for an auto-ack
    /// consumer, the most sent and not yet taken by the application. 1 gives fair
    /// dispatch among competing consumers: none holds a second message while busy.
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n;
        self
    }

    /// Settle each delivery as it is sent: no acks. The settle is stored like an ack,
    /// so a message whose settle a crash or a leader change lost before it was stored
    /// is delivered again (see the module docs).
    pub fn auto_ack(mut self) -> Self {
        self.mode = AckMode::Auto;
        self
    }

    /// Exactly-once delivery under a durable consumer name (see the module docs).
    pub fn exactly_once(mut self, name: &'a str) -> Self {
        self.mode = AckMode::ExactlyOnce;
        self.name = Some(name);
        self
    }

    /// Keep an exactly-once consumer's handed-out sequence numbers in this file, so
    /// that a restarted process does not hand a message out twice.
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    async fn attach(self) -> Result<Consumer, Error> {
        validate_name(self.queue).map_err(Error::Usage)?;
        match (self.mode, self.name) {
            (AckMode::ExactlyOnce, None) => {
                return Err(Error::Usage("an exactly-once consumer needs a name".into()))
            }
            (_, Some(name)) => {
                validate_name(name).map_err(|e| Error::Usage(format!("consumer name: {e}")))?;
            }
            _ => {}
        }
        let handed = match (&self.state_file, self.mode) {
            (Some(path), AckMode::ExactlyOnce) => HandedOut::open(path)?,
            (Some(_), _) => {
                return Err(Error::Usage(
                    "a state file is for exactly-once consumers".into(),
                ))
            }
            (None, _) => HandedOut::default(),
        };
        let inner = &self.client.inner;
        let cid = inner.next_sid();
        let id = inner.next_id();
        // The broker sends at most `prefetch` outstanding per connection; twice that
        // leaves room for those of a lost connection still waiting to be taken.
        let capacity = usize::try_from(self.prefetch)
            .unwrap_or(usize::MAX)
            .saturating_mul(2);
        let deliveries = Arc::new(SubQueue::new(capacity));
        let (ready, ready_rx) = oneshot::channel();
        let frame = Consume {
            id,
            cid,
            queue: self.queue.into(),
            prefetch: self.prefetch,
            mode: self.mode,
            name: self.name.map(Into::into),
        };
        {
            let mut state = inner.state();
            state.add_consumer(
                cid,
                ConsumerEntry {
                    queue_name: frame.queue.clone(),
                    prefetch: self.prefetch,
                    mode: self.mode,
                    name: frame.name.clone(),
                    deliveries: Arc::clone(&deliveries),
                    ready: Some(ready),
                },
            );
            state.add_request(id, Request::Consume(cid));
        }
        let mut consumer = Consumer {
            cid,
            deliveries,
            local: VecDeque::new(),
            client: self.client.clone(),
            mode: self.mode,
            handed: Arc::new(Mutex::new(handed)),
            handshake: None,
            taken: 0,
            credit_every: (self.prefetch / 2).max(1),
            active: true,
        };
        inner.out.push_control(&frame)?;
        match tokio::time::timeout(inner.options.request_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(consumer),
            Ok(Ok(Err(e))) => {
                consumer.active = false;
                Err(e)
            }
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                inner.state().cancel_request(id);
                Err(Error::Timeout)
            }
        }
    }
}

impl<'a> IntoFuture for ConsumeBuilder<'a> {
    type Output = Result<Consumer, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.attach())
    }
}

/// Sequence numbers an exactly-once consumer handed to the application and has not
/// acked. The file, when there is one, is a log of `+seq` and `-seq` lines, synced on
/// every write: it must survive the process.
#[derive(Debug, Default)]
struct HandedOut {
    seqs: HashSet<u64>,
    file: Option<File>,
}

impl HandedOut {
    fn open(path: &Path) -> Result<Self, Error> {
        let io = |e: std::io::Error| Error::Usage(format!("state file {}: {e}", path.display()));
        let mut seqs = HashSet::new();
        if path.exists() {
            for line in BufReader::new(File::open(path).map_err(io)?).lines() {
                let line = line.map_err(io)?;
                let parsed = match line.split_at_checked(1) {
                    Some(("+", n)) => n.parse().map(|n| (true, n)),
                    Some(("-", n)) => n.parse().map(|n| (false, n)),
                    _ => "x".parse::<u64>().map(|n| (false, n)),
                };
                match parsed {
                    Ok((true, n)) => {
                        seqs.insert(n);
                    }
                    Ok((false, n)) => {
                        seqs.remove(&n);
                    }
                    Err(_) => {
                        return Err(Error::Usage(format!(
                            "state file {} has a line that is not +N or -N: '{line}'",
                            path.display()
                        )))
                    }
                }
            }
        }
        // Rewritten compact: only what is still handed out.
        let mut file = File::create(path).map_err(io)?;
        for n in &seqs {
            writeln!(file, "+{n}").map_err(io)?;
        }
        file.sync_data().map_err(io)?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self {
            seqs,
            file: Some(file),
        })
    }

    fn record(&mut self, line: &str) -> Result<(), Error> {
        if let Some(f) = &mut self.file {
            f.write_all(line.as_bytes())
                .and_then(|()| f.sync_data())
                .map_err(|e| Error::Usage(format!("writing the state file: {e}")))?;
        }
        Ok(())
    }

    fn insert(&mut self, seq: u64) -> Result<(), Error> {
        self.seqs.insert(seq);
        self.record(&format!("+{seq}\n"))
    }

    fn remove(&mut self, seq: u64) -> Result<(), Error> {
        if self.seqs.remove(&seq) {
            self.record(&format!("-{seq}\n"))?;
        }
        Ok(())
    }
}

fn lock(h: &Mutex<HandedOut>) -> std::sync::MutexGuard<'_, HandedOut> {
    // Inserts and removes leave the set whole; a poisoned lock still guards good data.
    h.lock().unwrap_or_else(|p| p.into_inner())
}

type Handshake = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Deliveries from a queue, as a [`Stream`](futures_core::Stream).
///
/// Dropping it cancels the consumer: unsettled deliveries go back to the queue.
pub struct Consumer {
    cid: u32,
    deliveries: Arc<SubQueue<DeliveryFrame>>,
    local: VecDeque<DeliveryFrame>,
    client: Client,
    mode: AckMode,
    handed: Arc<Mutex<HandedOut>>,
    /// An exactly-once delivery waiting for the broker to record its RECEIVED.
    handshake: Option<(DeliveryFrame, Handshake)>,
    /// Auto-ack deliveries taken and not yet credited to the broker.
    taken: u32,
    /// How many auto-ack deliveries are credited at once.
    credit_every: u32,
    active: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("cid", &self.cid)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// The next delivery, or `None` once the consumer or client has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a delivery is never lost by dropping this future (an exactly-once
    /// handshake in progress is resumed by the next call).
    pub async fn next(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    fn delivery(&self, frame: DeliveryFrame) -> Delivery {
        Delivery {
            message: frame.envelope.into(),
            delivery_id: frame.head.delivery_id,
            delivery_count: frame.head.delivery_count,
            seq: frame.head.seq,
            settle: Settle {
                client: self.client.clone(),
                cid: self.cid,
                mode: self.mode,
                handed: Arc::clone(&self.handed),
            },
        }
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            if let Some((_, handshake)) = &mut self.handshake {
                let result = match handshake.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                let Some((frame, _)) = self.handshake.take() else {
                    continue;
                };
                match result.and_then(|()| lock(&self.handed).insert(frame.head.seq)) {
                    Ok(()) => return Poll::Ready(Some(self.delivery(frame))),
                    // Not recorded: the broker will deliver it again.
                    Err(e) => {
                        tracing::debug!(error = %e, "RECEIVED refused; waiting for redelivery");
                        continue;
                    }
                }
            }
            let frame = match self.local.pop_front() {
                Some(f) => f,
                None => match self.deliveries.poll_take(&mut self.local, cx.waker()) {
                    Some(true) => continue,
                    Some(false) => return Poll::Ready(None),
                    None => return Poll::Pending,
                },
            };
            if self.mode == AckMode::Auto {
                self.credit_taken();
            }
            if self.mode != AckMode::ExactlyOnce {
                return Poll::Ready(Some(self.delivery(frame)));
            }
            if frame.head.received_before && lock(&self.handed).seqs.contains(&frame.head.seq) {
                // Handed out already, before a reconnect or restart: the application
                // has it, so complete it without handing it out again.
                let delivery = self.delivery(frame);
                tokio::spawn(async move {
                    if let Err(e) = delivery.ack().await {
                        tracing::debug!(error = %e, "completing a redelivered exactly-once message failed");
                    }
                });
                continue;
            }
            let inner = Arc::clone(&self.client.inner);
            let received = Received {
                id: inner.next_id(),
                cid: self.cid,
                delivery_id: frame.head.delivery_id,
            };
            let handshake: Handshake =
                Box::pin(
                    async move { inner.request(&received, received.id, Request::Settle).await },
                );
            self.handshake = Some((frame, handshake));
        }
    }

    /// Counts an auto-ack delivery taken, and credits the broker every
    /// `credit_every`: one small frame per half prefetch, not one per message.
    fn credit_taken(&mut self) {
        self.taken += 1;
        if self.taken >= self.credit_every {
            let credit = Credit {
                cid: self.cid,
                credit: std::mem::take(&mut self.taken),
            };
            // Fails only once the client is closed, and then there is nothing to pace.
            let _ = self.client.inner.out.push_control(&credit);
        }
    }

    /// Stops consuming; unsettled deliveries go back to the queue.
    ///
    /// # Errors
    ///
    /// The server refused, or the client is closed.
    pub async fn cancel(mut self) -> Result<(), Error> {
        self.active = false;
        let inner = &self.client.inner;
        inner.state().remove_consumer(self.cid);
        let id = inner.next_id();
        inner
            .request(&Cancel { id, cid: self.cid }, id, Request::Release)
            .await
    }
}

impl futures_core::Stream for Consumer {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.poll_delivery(cx)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let inner = &self.client.inner;
        if inner.state().remove_consumer(self.cid) {
            // Best effort: if the client is closing, the server forgets it anyway.
            let id = inner.next_id();
            let _ = inner.out.push_control(&Cancel { id, cid: self.cid });
        }
    }
}

/// A message delivered from a queue.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    /// This delivery attempt's id; a settle for an older attempt is refused.
    pub delivery_id: u64,
    /// 1 on the first attempt.
    pub delivery_count: u32,
    /// The message's position in its queue, the same on every attempt.
    pub seq: u64,
    settle: Settle,
}

/// What a delivery needs to settle itself.
#[derive(Debug, Clone)]
struct Settle {
    client: Client,
    cid: u32,
    mode: AckMode,
    handed: Arc<Mutex<HandedOut>>,
}

impl Settle {
    async fn ack(&self, delivery_id: u64, seq: u64) -> Result<(), Error> {
        if self.mode == AckMode::Auto {
            return Ok(());
        }
        let inner = &self.client.inner;
        let id = inner.next_id();
        let frame = Ack {
            id,
            cid: self.cid,
            delivery_id,
        };
        inner.request(&frame, id, Request::Settle).await?;
        if self.mode == AckMode::ExactlyOnce {
            lock(&self.handed).remove(seq)?;
        }
        Ok(())
    }
}

impl Delivery {
    /// Whether an earlier attempt of this message was made.
    pub fn redelivered(&self) -> bool {
        self.delivery_count > 1
    }

    /// The message was processed: remove it from the queue.
    ///
    /// # Errors
    ///
    /// `stale_delivery` if this attempt timed out and the message was redelivered (the
    /// newer attempt is not affected), or the connection dropped (the message goes back
    /// to the queue).
    pub async fn ack(&self) -> Result<(), Error> {
        self.settle.ack(self.delivery_id, self.seq).await
    }

    /// The message was not processed. `requeue`: deliver it again (to any consumer);
    /// otherwise it is dead-lettered as rejected.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub async fn nack(&self, requeue: bool) -> Result<(), Error> {
        self.nack_inner(requeue, Duration::ZERO).await
    }

    /// The message was not processed: deliver it again, no sooner than `delay` from now.
    ///
    /// # Errors
    ///
    /// As [`Delivery::ack`].
    pub async fn nack_after(&self, delay: Duration) -> Result<(), Error> {
        self.nack_inner(true, delay).await
    }

    async fn nack_inner(&self, requeue: bool, delay: Duration) -> Result<(), Error> {
        let s = &self.settle;
        if s.mode == AckMode::Auto {
            return Err(Error::Usage("auto-ack deliveries cannot be nacked".into()));
        }
        let delay_ms = u32::try_from(delay.as_millis())
            .map_err(|_| Error::Usage("a nack delay must be under 49 days".into()))?;
        let inner = &s.client.inner;
        let id = inner.next_id();
        let frame = Nack {
            id,
            cid: s.cid,
            delivery_id: self.delivery_id,
            requeue,
            delay_ms,
        };
        inner.request(&frame, id, Request::Settle).await
    }
}
