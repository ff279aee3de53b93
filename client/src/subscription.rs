//! Subscriptions: a stream of messages on a pattern.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytestring::ByteString;
use tern_codec::{Pattern, SubjectLimits, Subscribe, Unsubscribe};
use tokio::sync::oneshot;

use crate::queue::SubQueue;
use crate::state::{Request, SubEntry};
use crate::{Client, Error, Message};

/// A subscription about to be made. Set a queue group or a filter, then `.await` it.
#[must_use = "a subscription is made only when awaited"]
#[derive(Debug)]
pub struct SubscribeBuilder<'a> {
    client: &'a Client,
    pattern: &'a str,
    group: Option<&'a str>,
    filter: Option<&'a str>,
}

impl<'a> SubscribeBuilder<'a> {
    pub(crate) fn new(client: &'a Client, pattern: &'a str) -> Self {
        Self {
            client,
            pattern,
            group: None,
            filter: None,
        }
    }

    /// Joins queue group `group`: each message goes to one member of the group.
    pub fn group(mut self, group: &'a str) -> Self {
        self.group = Some(group);
        self
    }

    /// Receives only messages for which the content filter `expr` is true.
    pub fn filter(mut self, expr: &'a str) -> Self {
        self.filter = Some(expr);
        self
    }

    async fn subscribe(self) -> Result<Subscription, Error> {
        let pattern = Pattern::new(self.pattern, &SubjectLimits::default())
            .map_err(|e| Error::invalid("pattern", self.pattern, e))?;
        let inner = &self.client.inner;
        let sid = inner.next_sid();
        let id = inner.next_id();
        let queue = Arc::new(SubQueue::new(inner.options.subscription_capacity));
        let (ready_tx, ready_rx) = oneshot::channel();
        let pattern: ByteString = pattern.into_inner();
        let group: Option<ByteString> = self.group.map(Into::into);
        let filter: Option<ByteString> = self.filter.map(Into::into);
        let frame = Subscribe {
            id,
            sid,
            pattern: pattern.clone(),
            group: group.clone(),
            filter: filter.clone(),
        };
        {
            // Registered before sending, so that a message right behind the OK finds it.
            let mut state = inner.state();
            state.add_subscription(
                sid,
                SubEntry {
                    pattern,
                    group,
                    filter,
                    queue: Arc::clone(&queue),
                    ready: Some(ready_tx),
                },
            );
            state.add_request(id, Request::Subscribe(sid));
        }
        let mut subscription = Subscription {
            sid,
            queue,
            local: VecDeque::new(),
            client: self.client.clone(),
            active: true,
        };
        inner.out.push_control(&frame)?;
        // On error or timeout, dropping `subscription` removes it again.
        match tokio::time::timeout(inner.options.request_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(e))) => {
                subscription.active = false;
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

impl<'a> IntoFuture for SubscribeBuilder<'a> {
    type Output = Result<Subscription, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.subscribe())
    }
}

/// Messages on a subscription, as a [`Stream`](futures_core::Stream).
///
/// Dropping it unsubscribes. The stream ends when the client is closed.
#[derive(Debug)]
pub struct Subscription {
    sid: u32,
    queue: Arc<SubQueue<Message>>,
    /// Messages taken from `queue` in one swap and not yet handed out.
    local: VecDeque<Message>,
    client: Client,
    /// Whether the server may still hold this subscription (and `Drop` must remove it).
    active: bool,
}

impl Subscription {
    /// The next message, or `None` once the subscription or client has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost by dropping this future.
    pub async fn next(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    /// The next message if one has already arrived, without waiting.
    pub fn try_next(&mut self) -> Option<Message> {
        if self.local.is_empty() {
            self.queue.try_take(&mut self.local);
        }
        self.local.pop_front()
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if let Some(m) = self.local.pop_front() {
            return Poll::Ready(Some(m));
        }
        match self.queue.poll_take(&mut self.local, cx.waker()) {
            Some(true) => Poll::Ready(self.local.pop_front()),
            Some(false) => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Keeps the subscription on the server (and in the client's state) but gives up
    /// this handle to its messages. Returns the subscription id.
    pub(crate) fn into_sid(mut self) -> u32 {
        self.active = false;
        self.sid
    }

    /// The subscription id used on the wire.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// Messages dropped because this subscription's buffer was full (the application
    /// did not read fast enough).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Ends the subscription and waits for the server to confirm: no message arrives
    /// on it afterwards.
    ///
    /// # Errors
    ///
    /// The server refused, or the client is closed.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.active = false;
        let inner = &self.client.inner;
        inner.state().remove_subscription(self.sid);
        let id = inner.next_id();
        inner
            .request(&Unsubscribe { id, sid: self.sid }, id, Request::Release)
            .await
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.poll_message(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let inner = &self.client.inner;
        if inner.state().remove_subscription(self.sid) {
            // Best effort: if the client is closing, the server forgets it anyway.
            let id = inner.next_id();
            let _ = inner.out.push_control(&Unsubscribe { id, sid: self.sid });
        }
    }
}
