//! PUBLISH: validate, route, deliver.

use tern_codec::subject::{validate_subject, SubjectError};
use tern_codec::{ErrorCode, Ok as OkFrame, Publish, Qos};

use super::Reject;
use crate::session::Session;

/// Routes a publish to every interested subscriber.
///
/// # Errors
///
/// An invalid subject or reply-to, too many headers, an empty header key, or a QoS
/// this server does not offer.
pub(crate) fn handle(session: &mut Session, publish: Publish) -> Result<(), Reject> {
    let limits = &session.shared.config.limits;
    let router = &session.shared.router;
    let env = &publish.envelope;
    let interest = match router.cached(&mut session.routes, &env.subject) {
        Some(interest) => interest,
        None => {
            validate_subject(&env.subject, &limits.subject)
                .map_err(|e| invalid_subject("subject", &env.subject, &e))?;
            router.lookup(&mut session.routes, &env.subject)
        }
    };
    if let Some(reply_to) = &env.reply_to {
        validate_subject(reply_to, &limits.subject)
            .map_err(|e| invalid_subject("reply-to subject", reply_to, &e))?;
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
    if publish.qos != Qos::AtMostOnce {
        return Err(Reject::new(
            ErrorCode::UnsupportedQos,
            format!(
                "QoS {} needs a durable queue, which this server version does not offer yet",
                publish.qos as u8
            ),
        ));
    }

    session.counts.messages_in += 1;
    session.counts.bytes_in += env.payload.len() as u64;
    let (delivered, dropped) = interest.deliver(env, &mut session.wakes);
    session.counts.messages_out += delivered;
    session.counts.drops += dropped;

    if publish.id != 0 {
        session.reply(&OkFrame { id: publish.id });
    }
    Ok(())
}

fn invalid_subject(what: &str, subject: &str, e: &SubjectError) -> Reject {
    Reject::new(
        ErrorCode::InvalidSubject,
        format!("invalid {what} '{subject}': {e}"),
    )
}
