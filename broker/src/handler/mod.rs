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

impl Reject {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// In a cluster, what only the node running the queues does is refused elsewhere,
    /// with where to go (`not_leader`).
    pub fn unless_leader(session: &crate::session::state::Session) -> Result<(), Self> {
        match session.shared.durable.not_leader() {
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
