//! PUBLISH: validate, deduplicate, route to subscribers and queues, confirm.
//!
//! QoS 0 goes to live subscribers at once and to queues through the journal, with no
//! confirm. QoS 1 and 2 are confirmed only once the message is durable in every queue
//! it was routed to (the journal sends the CONFIRM after its group commit). An
//! exactly-once pair (producer, sequence) is recorded in the dedup window before
//! anything is delivered, so a retried publish reaches nobody twice; a retry that comes
//! while the first copy is still on its way to the store goes there too (that copy may
//! fail), and the queues' state machine keeps one of them.

use std::sync::Arc;

use bytes::BytesMut;
use tern_codec::subject::{validate_subject, SubjectError};
use tern_codec::{Confirm, ErrorCode, ErrorFrame, Ok as OkFrame, Publish, Qos, DEADLINE_HEADER};
use tern_storage::DedupEntry;

use super::Reject;
use crate::queue::machine::Outcome;
use crate::queue::FIRST_GROUP;

use crate::clock::now_ms;
use crate::dedup::{ProducerKey, Seen, MAX_PRODUCER_LEN};
use crate::filter::MessageView;
use crate::journal::{self, ConfirmTo, Confirms, PublishOp, Refused};
use crate::outbound::{Outbound, Wakes};
use crate::session::state::Session;

/// Routes a publish to every interested subscriber and queue.
///
/// # Errors
///
/// An invalid subject, reply-to, header or producer id; QoS 1/2 without an id, QoS 2
/// without a producer sequence; a mandatory publish nobody takes.
pub(crate) fn handle(session: &mut Session, publish: Publish) -> Result<(), Reject> {
    let limits = &session.shared.config.limits;
    let router = &session.shared.router;
    let env = &publish.envelope;
    // A cached route means the subject was valid and permitted when first seen: the
    // checks below run once per subject, not once per message.
    let interest = match router.cached(&mut session.routes, &env.subject) {
        Some(interest) => interest,
        None => {
            validate_subject(&env.subject, &limits.subject)
                .map_err(|e| invalid_subject("subject", &env.subject, &e))?;
            if session.principal.permissions.publish.allows(&env.subject) {
                router.lookup(&mut session.routes, &env.subject)
            } else if session
                .replies
                .as_ref()
                .is_some_and(|r| r.take(&env.subject))
            {
                // The one reply to a request another connection handed this one; not
                // cached, so the permit is used up (`auth::replies`).
                router.lookup_uncached(&env.subject)
            } else {
                return Err(Reject::denied("publish to", &env.subject));
            }
        }
    };
    if let Some(reply_to) = &env.reply_to {
        validate_subject(reply_to, &limits.subject)
            .map_err(|e| invalid_subject("reply-to subject", reply_to, &e))?;
        // A reply-to hands the responder a permit to publish there: it must be a
        // subject the requester could read the reply on.
        if !session.principal.permissions.subscribe.allows(reply_to) {
            return Err(Reject::denied("use as reply-to", reply_to));
        }
    }
    if env.headers.len() > limits.max_headers {
        return Err(Reject::new(
            ErrorCode::InvalidHeaders,
            format!(
                "message has {} headers; the limit is {}",
                env.headers.len(),
                limits.max_headers
            ),
        ));
    }
    if env.headers.iter().any(|(k, _)| k.is_empty()) {
        return Err(Reject::new(
            ErrorCode::InvalidHeaders,
            "a header key is empty",
        ));
    }
    let confirmed = publish.qos != Qos::AtMostOnce;
    if confirmed && publish.id == 0 {
        return Err(Reject::new(
            ErrorCode::UnsupportedQos,
            "QoS 1 and 2 publishes need a non-zero id for their confirm",
        ));
    }
    if publish.qos == Qos::ExactlyOnce && publish.producer.is_none() {
        return Err(Reject::new(
            ErrorCode::UnsupportedQos,
            "QoS 2 publishes carry a producer id and sequence number (the IDEMPOTENT flag)",
        ));
    }

    let now = now_ms();
    let mut dedup = None;
    // Another copy of this message is on its way to the store: it reached subscribers.
    let mut in_flight = false;
    if let Some(p) = &publish.producer {
        if p.producer.is_empty() || p.producer.len() > MAX_PRODUCER_LEN {
            return Err(Reject::new(
                ErrorCode::InvalidProducer,
                format!("producer ids are 1 to {MAX_PRODUCER_LEN} bytes"),
            ));
        }
        let producer = ProducerKey::new(session.principal.user.as_deref(), &p.producer);
        let seen =
            journal::lock(&session.shared.durable.dedup).insert(producer.as_str(), p.sequence, now);
        match seen {
            Seen::New => {}
            Seen::InFlight => in_flight = true,
            Seen::Stored => {
                session.counts.duplicates += 1;
                if publish.id != 0 {
                    session.reply(&Confirm {
                        id: publish.id,
                        queues: 0,
                        duplicate: true,
                    });
                }
                return Ok(());
            }
        }
        dedup = Some(DedupEntry {
            producer: producer.into_string(),
            sequence: p.sequence,
            at_ms: now,
        });
    }
    let view = MessageView::new(&env.subject, &env.headers, &env.payload);
    let queues = interest.queues(&view);
    // In a cluster, a node that does not run the queues may not have applied the
    // latest declares yet: the leader picks the queues of a confirmed publish, so that
    // a stale view can never confirm a message into no queue.
    let route_on_leader = confirmed && session.shared.durable.not_leader(FIRST_GROUP).is_some();
    if publish.mandatory && queues.is_empty() && !interest.has_taker(&view) {
        if let Some(d) = &dedup {
            journal::lock(&session.shared.durable.dedup).failed(&d.producer, d.sequence);
        }
        return Err(Reject::new(
            ErrorCode::NoRoute,
            format!(
                "no subscriber and no queue takes messages on '{}'",
                env.subject
            ),
        ));
    }

    session.counts.messages_in += 1;
    session.counts.bytes_in += env.payload.len() as u64;
    if let Some(q) = session.counts.by_qos.get_mut(publish.qos as usize) {
        q.0 += 1;
        q.1 += env.payload.len() as u64;
    }
    if !in_flight {
        let (delivered, dropped) = interest.deliver(env, &view, session.id, &mut session.wakes);
        session.counts.messages_out += delivered;
        session.counts.drops += dropped;
    }

    if queues.is_empty() && dedup.is_none() && !route_on_leader {
        if confirmed {
            session.reply(&Confirm {
                id: publish.id,
                queues: 0,
                duplicate: false,
            });
        } else if publish.id != 0 {
            session.reply(&OkFrame { id: publish.id });
        }
        return Ok(());
    }
    // The message is copied out of the read buffer into one allocation of its own:
    // a queue may keep it for long, and must not pin the whole buffer it came in.
    let wire = env.as_ref();
    let mut envelope = BytesMut::with_capacity(wire.encoded_len());
    wire.encode(&mut envelope)
        .map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))?;
    if !confirmed && publish.id != 0 {
        session.reply(&OkFrame { id: publish.id });
    }
    session.publishes.push(PublishOp {
        queues,
        route_on_leader,
        publisher: session.id,
        envelope: envelope.freeze(),
        enqueued_ms: now,
        // A request's deadline: past it, waiting in a queue is pointless.
        deadline_ms: env
            .headers
            .get(DEADLINE_HEADER)
            .and_then(|v| v.parse().ok()),
        dedup,
        confirm: confirmed.then(|| ConfirmTo {
            to: session.outbound.clone(),
            id: publish.id,
            received: std::time::Instant::now(),
        }),
        held: None,
    });
    Ok(())
}

/// The journal's answer to a durable publish, as the publisher's CONFIRM or ERROR.
impl Confirms for Outbound {
    fn answer(self: Arc<Self>, id: u32, result: Result<Outcome, Refused>, wakes: &mut Wakes) {
        match result {
            Ok(outcome) => self.push_control(
                &Confirm {
                    id,
                    queues: outcome.queues,
                    duplicate: outcome.duplicate,
                },
                wakes,
            ),
            Err(refused) => {
                let r = Reject::from(refused);
                self.push_control(&ErrorFrame::new(id, r.code, r.message), wakes);
            }
        }
    }
}

fn invalid_subject(what: &str, subject: &str, e: &SubjectError) -> Reject {
    Reject::new(
        ErrorCode::InvalidSubject,
        format!("invalid {what} '{subject}': {e}"),
    )
}
