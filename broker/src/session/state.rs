//! What a session is to its handlers: the state of one greeted connection, and the
//! few operations handlers use on it. Apart from the session's loop (`session`), which
//! dispatches frames to the handlers: handlers depend on this, not on the loop.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use tern_codec::Encode;

use crate::auth::replies::ReplyPermits;
use crate::auth::Principal;
use crate::journal::PublishOp;
use crate::outbound::{Outbound, Wakes};
use crate::queue::state::ConsumerKey;
use crate::queue::{QueueHandle, QueueInput};
use crate::router::{RouteCache, Subscriber};
use crate::shared::Shared;
use crate::stats::BatchCounts;

/// The state of one greeted connection, as the handlers see it.
pub(crate) struct Session {
    pub id: u64,
    /// Who the connection is, and what it may do.
    pub principal: Principal,
    /// Reply subjects this connection may publish to beyond its permissions; `None`
    /// when it may publish anywhere anyway.
    pub replies: Option<Arc<ReplyPermits>>,
    pub shared: Arc<Shared>,
    pub outbound: Arc<Outbound>,
    /// This connection's subscriptions by the client's subscription id.
    pub subs: FxHashMap<u32, Arc<Subscriber>>,
    pub routes: RouteCache,
    pub wakes: Wakes,
    pub counts: BatchCounts,
    /// This connection's consumers by the client's consumer id.
    pub consumers: FxHashMap<u32, Arc<QueueHandle>>,
    /// Messages for the journal, gathered during a read batch.
    pub publishes: Vec<PublishOp>,
    /// Inputs for queue tasks, gathered during a read batch.
    pub queue_inputs: Vec<(Arc<QueueHandle>, QueueInput)>,
}

impl Session {
    /// Queues a reply on this connection.
    pub fn reply(&mut self, frame: &impl Encode) {
        self.outbound.push_control(frame, &mut self.wakes);
    }

    /// The consumer `cid` of this connection, as queues know it.
    pub fn key(&self, cid: u32) -> ConsumerKey {
        ConsumerKey { conn: self.id, cid }
    }

    /// Queues an input for a queue task, sent at the end of the read batch.
    pub fn tell_queue(&mut self, queue: &Arc<QueueHandle>, input: QueueInput) {
        self.queue_inputs.push((Arc::clone(queue), input));
    }
}
