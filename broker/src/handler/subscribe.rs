//! SUBSCRIBE and UNSUBSCRIBE.

use std::sync::Arc;

use tern_codec::{ErrorCode, Ok as OkFrame, Pattern, Subscribe, Unsubscribe};

use super::Reject;
use crate::filter::Filter;
use crate::router::Subscriber;
use crate::session::state::Session;

/// Longest queue group name, in bytes.
const MAX_GROUP_LEN: usize = 255;

/// Adds a subscription to the router and answers OK.
///
/// # Errors
///
/// An invalid pattern or group, a content filter (not offered yet), a subscription id
/// already in use on this connection, or too many subscriptions.
pub(crate) fn subscribe(session: &mut Session, sub: Subscribe) -> Result<(), Reject> {
    let limits = &session.shared.config.limits;
    let pattern = Pattern::new(sub.pattern.clone(), &limits.subject).map_err(|e| {
        Reject::new(
            ErrorCode::InvalidPattern,
            format!("invalid pattern '{}': {e}", sub.pattern),
        )
    })?;
    if !session
        .principal
        .permissions
        .subscribe
        .allows_pattern(&pattern)
    {
        return Err(Reject::denied("subscribe to", &pattern));
    }
    if let Some(group) = &sub.group {
        if group.len() > MAX_GROUP_LEN || group.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Reject::new(
                ErrorCode::InvalidQueueGroup,
                format!(
                    "invalid queue group '{group}': at most {MAX_GROUP_LEN} bytes, no whitespace or control characters"
                ),
            ));
        }
    }
    // Compiled once, here; a bad filter is refused with the column at fault.
    let filter = sub
        .filter
        .as_deref()
        .map(|text| Filter::compile(text, &session.shared.config.limits.filter))
        .transpose()
        .map_err(|e| Reject::new(ErrorCode::InvalidFilter, e.to_string()))?;
    if session.subs.contains_key(&sub.sid) {
        return Err(Reject::new(
            ErrorCode::SubscriptionIdInUse,
            format!(
                "subscription id {} is already in use on this connection",
                sub.sid
            ),
        ));
    }
    if session.subs.len() >= limits.max_subscriptions {
        return Err(Reject::new(
            ErrorCode::TooManySubscriptions,
            format!(
                "this connection already holds {} subscriptions, the limit",
                session.subs.len()
            ),
        ));
    }
    let subscriber = Arc::new(Subscriber::new(
        session.id,
        sub.sid,
        pattern,
        sub.group,
        filter,
        Arc::clone(&session.outbound),
        session.replies.clone(),
    ));
    session.shared.router.subscribe(Arc::clone(&subscriber));
    session.subs.insert(sub.sid, subscriber);
    session.reply(&OkFrame { id: sub.id });
    Ok(())
}

/// Removes a subscription and answers OK. No message for it is sent after the OK.
///
/// # Errors
///
/// The subscription id is not active on this connection.
pub(crate) fn unsubscribe(session: &mut Session, unsub: Unsubscribe) -> Result<(), Reject> {
    let Some(subscriber) = session.subs.remove(&unsub.sid) else {
        return Err(Reject::new(
            ErrorCode::UnknownSubscription,
            format!("no subscription with id {} on this connection", unsub.sid),
        ));
    };
    session.shared.router.unsubscribe(&subscriber);
    session.reply(&OkFrame { id: unsub.id });
    Ok(())
}
