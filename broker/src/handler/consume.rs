//! CONSUME, ACK, NACK, RECEIVED, CANCEL: a connection's side of consuming from queues.
//!
//! The session checks what it can (the queue exists, the consumer id is free, the
//! options are sane) and passes the request to the queue's task, which answers it:
//! only the queue knows whether a delivery is still outstanding.

use std::sync::Arc;

use tern_codec::{Ack, AckMode, Cancel, Consume, Credit, ErrorCode, Nack, Received};

use super::Reject;
use crate::queue::def::validate_name;
use crate::queue::state::{Consumer, ConsumerKey};
use crate::queue::{QueueHandle, QueueInput};
use crate::session::state::Session;

/// Attaches a consumer to a queue.
///
/// # Errors
///
/// No such queue, the consumer id in use, a prefetch of 0 or over the server's
/// maximum, or an exactly-once consumer without a valid name.
pub(crate) fn consume(session: &mut Session, c: Consume) -> Result<(), Reject> {
    if !session.principal.permissions.consume.allows(&c.queue) {
        return Err(Reject::denied("consume from", &c.queue));
    }
    Reject::unless_leader(session, &c.queue)?;
    let queue = session
        .shared
        .durable
        .queues
        .get(&c.queue)
        .ok_or_else(|| not_found(&c.queue))?;
    let max = session.shared.config.queues.max_prefetch;
    if c.prefetch == 0 || c.prefetch > max {
        return Err(Reject::new(
            ErrorCode::InvalidQueue,
            format!("prefetch must be 1 to {max}; {} was asked for", c.prefetch),
        ));
    }
    let name: Option<Arc<str>> = match (&c.name, c.mode) {
        (Some(n), _) => {
            validate_name(n)
                .map_err(|e| Reject::new(ErrorCode::InvalidQueue, format!("consumer name: {e}")))?;
            Some(Arc::from(&**n))
        }
        (None, AckMode::ExactlyOnce) => {
            return Err(Reject::new(
                ErrorCode::InvalidQueue,
                "an exactly-once consumer needs a durable name",
            ))
        }
        (None, _) => None,
    };
    if session.consumers.contains_key(&c.cid) {
        return Err(Reject::new(
            ErrorCode::ConsumerIdInUse,
            format!("consumer id {} is already in use on this connection", c.cid),
        ));
    }
    let key = ConsumerKey {
        conn: session.id,
        cid: c.cid,
    };
    let consumer = Consumer::new(
        key,
        Arc::clone(&session.outbound),
        session.replies.clone(),
        c.prefetch,
        c.mode,
        name,
    );
    session.consumers.insert(c.cid, Arc::clone(&queue));
    let reply = (Arc::clone(&session.outbound), c.id);
    session.tell_queue(&queue, QueueInput::Attach { consumer, reply });
    Ok(())
}

fn not_found(name: &str) -> Reject {
    Reject::new(ErrorCode::QueueNotFound, format!("no queue named '{name}'"))
}

fn consumer_queue(session: &Session, cid: u32) -> Result<Arc<QueueHandle>, Reject> {
    session.consumers.get(&cid).cloned().ok_or_else(|| {
        Reject::new(
            ErrorCode::UnknownConsumer,
            format!("no consumer with id {cid} on this connection"),
        )
    })
}

/// # Errors
///
/// Unknown consumer id (the queue answers the rest).
pub(crate) fn ack(session: &mut Session, a: Ack) -> Result<(), Reject> {
    let queue = consumer_queue(session, a.cid)?;
    let input = QueueInput::Ack {
        key: session.key(a.cid),
        delivery_id: a.delivery_id,
        reply: (Arc::clone(&session.outbound), a.id),
    };
    session.tell_queue(&queue, input);
    Ok(())
}

/// # Errors
///
/// Unknown consumer id (the queue answers the rest).
pub(crate) fn nack(session: &mut Session, n: Nack) -> Result<(), Reject> {
    let queue = consumer_queue(session, n.cid)?;
    let input = QueueInput::Nack {
        key: session.key(n.cid),
        delivery_id: n.delivery_id,
        requeue: n.requeue,
        delay_ms: n.delay_ms,
        reply: (Arc::clone(&session.outbound), n.id),
    };
    session.tell_queue(&queue, input);
    Ok(())
}

/// # Errors
///
/// Unknown consumer id (the queue answers the rest).
pub(crate) fn credit(session: &mut Session, c: Credit) -> Result<(), Reject> {
    let queue = consumer_queue(session, c.cid)?;
    let input = QueueInput::Credit {
        key: session.key(c.cid),
        credit: c.credit,
        reply: (Arc::clone(&session.outbound), 0),
    };
    session.tell_queue(&queue, input);
    Ok(())
}

/// # Errors
///
/// Unknown consumer id (the queue answers the rest).
pub(crate) fn received(session: &mut Session, r: Received) -> Result<(), Reject> {
    let queue = consumer_queue(session, r.cid)?;
    let input = QueueInput::Received {
        key: session.key(r.cid),
        delivery_id: r.delivery_id,
        reply: (Arc::clone(&session.outbound), r.id),
    };
    session.tell_queue(&queue, input);
    Ok(())
}

/// # Errors
///
/// Unknown consumer id.
pub(crate) fn cancel(session: &mut Session, c: Cancel) -> Result<(), Reject> {
    let queue = consumer_queue(session, c.cid)?;
    session.consumers.remove(&c.cid);
    let input = QueueInput::Cancel {
        key: session.key(c.cid),
        reply: (Arc::clone(&session.outbound), c.id),
    };
    session.tell_queue(&queue, input);
    Ok(())
}
