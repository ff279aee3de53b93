//! The task that runs one queue: it feeds inputs and the clock to the
//! [`QueueState`] and carries out the actions it returns.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_codec::{Cancel, Envelope, ErrorFrame, Ok as OkFrame};
use tern_storage::{QueueId, Store};
use tokio::sync::mpsc;

use super::state::{Action, DeadReason, Entry, QueueState};
use super::{QueueInput, Queues, ReplyTo};
use crate::clock::now_ms;
use crate::handler::Reject;
use crate::journal::{Done, Journal, Op, Refused};
use crate::outbound::Wakes;

/// Everything a queue task uses besides its state.
pub(crate) struct QueueTask {
    pub id: QueueId,
    pub state: QueueState,
    pub journal: Journal,
    pub store: Arc<dyn Store>,
    pub queues: Arc<Queues>,
    /// Enqueue-to-first-delivery time of this server's queues.
    pub delivery_latency: metrics::Histogram,
    /// Bodies of the chunk last read back from the store, not yet delivered.
    pub read_back: ReadBack,
}

/// Bodies read back from the store, one chunk at a time. A queue delivers in sequence
/// order, so the messages after one it had to read back are mostly in the same chunk:
/// reading and decoding the chunk once serves them all, where a read per message would
/// copy and decode the whole chunk each time. Holds at most one chunk, and each body is
/// handed out once.
#[derive(Debug, Default)]
pub(crate) struct ReadBack {
    /// (seq, envelope), in sequence order.
    bodies: std::collections::VecDeque<(u64, Bytes)>,
}

impl ReadBack {
    /// The body of `seq`, if the chunk in hand has it.
    fn take(&mut self, seq: u64) -> Option<Bytes> {
        // Older ones were settled or are redeliveries for later: let them go.
        while self.bodies.front().is_some_and(|(s, _)| *s < seq) {
            self.bodies.pop_front();
        }
        match self.bodies.front() {
            Some((s, _)) if *s == seq => self.bodies.pop_front().map(|(_, b)| b),
            _ => None,
        }
    }
}

/// Starts the queue's task on `runtime`.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    task: QueueTask,
    rx: mpsc::Receiver<QueueInput>,
) -> tokio::task::JoinHandle<()> {
    runtime.spawn(task.run(rx))
}

impl QueueTask {
    async fn run(mut self, mut rx: mpsc::Receiver<QueueInput>) {
        let mut actions = Vec::new();
        let mut wakes = Wakes::default();
        loop {
            let sleep = self
                .state
                .next_wake()
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms()).saturating_add(1)));
            let input = tokio::select! {
                input = rx.recv() => input,
                () = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() => {
                    self.state.tick(now_ms(), &mut actions);
                    self.perform(&mut actions, &mut wakes);
                    continue;
                }
            };
            let Some(input) = input else { break };
            if matches!(input, QueueInput::Stop) {
                self.stop(&mut wakes);
                break;
            }
            self.handle(input, &mut actions, &mut wakes);
            // Take whatever else is already waiting before performing, so that a burst
            // of acks costs one round of wakes.
            while let Ok(input) = rx.try_recv() {
                if matches!(input, QueueInput::Stop) {
                    self.perform(&mut actions, &mut wakes);
                    self.stop(&mut wakes);
                    return;
                }
                self.handle(input, &mut actions, &mut wakes);
                if actions.len() > 1024 {
                    break;
                }
            }
            self.perform(&mut actions, &mut wakes);
        }
    }

    fn handle(&mut self, input: QueueInput, actions: &mut Vec<Action>, wakes: &mut Wakes) {
        let now = now_ms();
        let s = &mut self.state;
        match input {
            QueueInput::Appended(messages) => s.append(messages, now, actions),
            QueueInput::Attach { consumer, reply } => {
                let r = s.attach(consumer, now, actions);
                answer(reply, r, wakes);
            }
            QueueInput::Cancel { key, reply } => {
                s.detach(key, now, actions);
                answer(reply, Ok(()), wakes);
            }
            QueueInput::ConnectionClosed { conn } => s.detach_connection(conn, now, actions),
            QueueInput::Ack {
                key,
                delivery_id,
                reply,
            } => {
                // Answered by the actions: at once, or once the settle is durable.
                if let Err(e) = s.ack(key, delivery_id, &reply, now, actions) {
                    answer(reply, Err(e), wakes);
                }
            }
            QueueInput::Nack {
                key,
                delivery_id,
                requeue,
                delay_ms,
                reply,
            } => {
                let r = s.nack(key, delivery_id, requeue, delay_ms, now, actions);
                answer(reply, r, wakes);
            }
            QueueInput::Received {
                key,
                delivery_id,
                reply,
            } => {
                // Answered once the hold is durable, by the Meta action's completion.
                if let Err(e) = s.received(key, delivery_id, Some(reply.clone()), actions) {
                    answer(reply, Err(e), wakes);
                }
            }
            QueueInput::Credit { key, credit, reply } => {
                if let Err(e) = s.credit(key, credit, now, actions) {
                    answer(reply, Err(e), wakes);
                }
            }
            QueueInput::Stats { reply } => {
                let _ = reply.send(s.stats());
            }
            QueueInput::Purge { reply } => {
                let n = s.purge(actions);
                let _ = reply.send(n);
            }
            QueueInput::MoveTo { to, max, reply } => {
                let entries = s.take_waiting(max);
                let n = entries.len() as u64;
                for (entry, body) in entries {
                    self.transfer(entry, body, to, None);
                }
                let _ = reply.send(n);
            }
            QueueInput::Stop => {}
        }
    }

    /// Tells every consumer its queue is gone, and forgets them.
    fn stop(&mut self, wakes: &mut Wakes) {
        for c in self.state.consumers() {
            c.outbound.push_control(
                &Cancel {
                    id: 0,
                    cid: c.key.cid,
                },
                wakes,
            );
        }
        wakes.wake_all();
    }

    fn perform(&mut self, actions: &mut Vec<Action>, wakes: &mut Wakes) {
        self.carry_out(actions, wakes);
        self.state.performed();
    }

    fn carry_out(&mut self, actions: &mut Vec<Action>, wakes: &mut Wakes) {
        for action in actions.drain(..) {
            match action {
                Action::Deliver {
                    outbound,
                    replies,
                    own,
                    head,
                    body,
                    enqueued_ms,
                } => match self.body(head.seq, body) {
                    Some(env) => {
                        if let Some(permits) = replies {
                            if let Ok(request) = Envelope::decode_bytes(env.clone()) {
                                permits.grant_for(&request, own);
                            }
                        }
                        if head.delivery_count == 1 {
                            let waited = now_ms().saturating_sub(enqueued_ms);
                            self.delivery_latency.record(Duration::from_millis(waited));
                        }
                        outbound.push_delivery(&head, &env, wakes);
                    }
                    None => {
                        // Gone from the store underneath us: nothing to deliver. The
                        // delivery stays outstanding and its ack timeout returns it.
                        tracing::error!(queue = %self.state.def.name, seq = head.seq, "message body missing from the store");
                    }
                },
                Action::Settle {
                    seq,
                    forget_meta,
                    reply,
                } => self.journal.send(Op::Settle {
                    queue: self.id,
                    seq,
                    forget_meta,
                    done: reply.map(answer_when_durable),
                }),
                Action::Meta { seq, meta, reply } => self.journal.send(Op::Meta {
                    queue: self.id,
                    seq,
                    meta,
                    done: reply.map(answer_when_durable),
                }),
                Action::DeadLetter {
                    entry,
                    body,
                    reason,
                } => self.dead_letter(entry, body, reason),
                Action::Ok { outbound, id } => {
                    outbound.push_control(&OkFrame { id }, wakes);
                }
            }
        }
        wakes.wake_all();
    }

    /// A message body, from memory, from the chunk last read back, or read back from
    /// the store with the rest of its chunk.
    fn body(&mut self, seq: u64, body: Option<Bytes>) -> Option<Bytes> {
        if body.is_some() {
            return body;
        }
        if let Some(b) = self.read_back.take(seq) {
            return Some(b);
        }
        match self.store.read_chunk(self.id, seq) {
            Ok(messages) => {
                self.read_back.bodies = messages.into_iter().map(|m| (m.seq, m.envelope)).collect();
                self.read_back.take(seq)
            }
            Err(e) => {
                tracing::error!(queue = %self.state.def.name, seq, error = %e, "cannot read a message back");
                None
            }
        }
    }

    fn dead_letter(&mut self, entry: Entry, body: Option<Bytes>, reason: DeadReason) {
        let target = self
            .state
            .def
            .dead_letter
            .as_deref()
            .and_then(|name| self.queues.get(name));
        match target {
            Some(dlq) => {
                self.transfer(entry, body, dlq.id, Some(reason));
                self.state.dead_lettered(true);
            }
            None => {
                self.journal.send(Op::Settle {
                    queue: self.id,
                    seq: entry.seq,
                    forget_meta: entry.has_meta,
                    done: None,
                });
                self.state.dead_lettered(false);
            }
        }
    }

    /// Moves a message to queue `to`; with `reason`, as a dead letter with headers
    /// saying why, from where, after how many deliveries and from whom.
    fn transfer(
        &mut self,
        entry: Entry,
        body: Option<Bytes>,
        to: QueueId,
        reason: Option<DeadReason>,
    ) {
        let Some(body) = self.body(entry.seq, body) else {
            return;
        };
        let envelope = match reason {
            Some(reason) => match dead_letter_envelope(&body, &self.state.def.name, &entry, reason)
            {
                Some(e) => e,
                None => body,
            },
            None => body,
        };
        self.journal.send(Op::Transfer {
            from: self.id,
            seq: entry.seq,
            forget_meta: entry.has_meta,
            to,
            envelope,
            enqueued_ms: now_ms(),
        });
    }
}

/// The envelope with the dead-letter headers added.
fn dead_letter_envelope(
    body: &Bytes,
    queue: &str,
    entry: &Entry,
    reason: DeadReason,
) -> Option<Bytes> {
    let mut env = Envelope::decode_bytes(body.clone()).ok()?;
    env.headers
        .insert("tern-dead-letter-reason", reason.as_str());
    env.headers.insert("tern-dead-letter-queue", queue);
    env.headers
        .insert("tern-delivery-count", entry.delivery_count.to_string());
    match &entry.last_consumer {
        Some(c) => env.headers.insert("tern-last-consumer", &**c),
        None => env.headers.remove("tern-last-consumer"),
    }
    let r = env.as_ref();
    let mut buf = BytesMut::with_capacity(r.encoded_len());
    r.encode(&mut buf).ok()?;
    Some(buf.freeze())
}

/// What answers `reply` once the journal has committed the change it waits for.
fn answer_when_durable(reply: ReplyTo) -> Done {
    Box::new(move |result: Result<(), Refused>| {
        let mut wakes = Wakes::default();
        answer(reply, result.map_err(Reject::from), &mut wakes);
        wakes.wake_all();
    })
}

/// Answers a request: OK (when it has an id) or ERROR.
pub(crate) fn answer(reply: ReplyTo, result: Result<(), Reject>, wakes: &mut Wakes) {
    let (outbound, id) = reply;
    match result {
        Ok(()) if id != 0 => outbound.push_control(&OkFrame { id }, wakes),
        Ok(()) => {}
        Err(r) => outbound.push_control(&ErrorFrame::new(id, r.code, r.message), wakes),
    }
}
