//! One handler per frame family, mirroring `tern_codec::frame`.
//!
//! Handlers are synchronous: they validate, update the router and queue replies, and
//! never wait. A handler's `Err(Reject)` becomes an ERROR frame with the request's id;
//! the connection stays open.

pub(crate) mod cluster;
pub(crate) mod consume;
pub(crate) mod hello;
pub(crate) mod publish;
pub(crate) mod queue;
pub(crate) mod server;
pub(crate) mod subscribe;

use tern_codec::ErrorCode;

/// A refused request: the code and a message naming what was wrong.
#[derive(Debug)]
pub(crate) struct Reject {
    pub code: ErrorCode,
    pub message: String,
}

/// Why the journal did not do something, as the client is told: a cluster without a
/// leader is `not_leader` (try again, maybe elsewhere), never a storage failure.
impl From<crate::journal::Refused> for Reject {
    fn from(refused: crate::journal::Refused) -> Self {
        use crate::journal::Refused;
        use crate::queue::machine::QueueError;
        let code = match &refused {
            Refused::Queue(QueueError::Full(_)) => ErrorCode::QueueFull,
            Refused::Queue(QueueError::Exists(_)) => ErrorCode::QueueExists,
            // No leader took it (one is being elected, or the one this node knew is
            // gone): the client retries, here or on another node.
            Refused::NotLeader(_)
            | Refused::Queue(QueueError::NotLeader | QueueError::Creating(_)) => {
                ErrorCode::NotLeader
            }
            Refused::Store(_) => ErrorCode::StorageFailed,
            Refused::ShuttingDown => ErrorCode::ShuttingDown,
        };
        Self::new(code, refused.to_string())
    }
}

impl Reject {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// In a cluster, what only the node running queue `name` does is refused
    /// elsewhere, with where to go (`not_leader`).
    pub fn unless_leader(session: &crate::session::state::Session, name: &str) -> Result<(), Self> {
        match session.shared.durable.not_leader_of(name) {
            Some(redirect) => Err(Self::new(ErrorCode::NotLeader, redirect)),
            None => Ok(()),
        }
    }

    /// The user may not do `operation` on `target`.
    pub fn denied(operation: &str, target: &str) -> Self {
        Self::new(
            ErrorCode::PermissionDenied,
            format!("permission denied: {operation} '{target}'"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Refused;
    use crate::queue::machine::QueueError;

    /// A settle or declare the journal could not get a leader to take is `not_leader`,
    /// which clients retry, and only a store's failure is `storage_failed`.
    #[test]
    fn journal_refusals_keep_their_kind() {
        let code = |r: Refused| Reject::from(r).code;
        assert_eq!(
            code(Refused::NotLeader("node 2 runs the queues now".into())),
            ErrorCode::NotLeader
        );
        assert_eq!(
            code(Refused::Queue(QueueError::NotLeader)),
            ErrorCode::NotLeader
        );
        assert_eq!(
            code(Refused::Store("no space left".into())),
            ErrorCode::StorageFailed
        );
        assert_eq!(code(Refused::ShuttingDown), ErrorCode::ShuttingDown);
    }
}
