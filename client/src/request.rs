//! Request-reply: requests, scatter-gather, and responders.
//!
//! A request is a publish with a reply-to subject in the client's inbox
//! (`_INBOX.<client id>.<token>`): one wildcard subscription per client serves every
//! request, and the reply finds its caller by the token. The publish is *mandatory*, so
//! when nothing at all is subscribed to the subject (and no queue is bound to it) the
//! broker answers `no_route` at once and the request fails with
//! [`Error::NoResponders`] instead of waiting for its timeout.
//!
//! A request carries its deadline in the `tern-deadline` header (milliseconds since the
//! Unix epoch). A request waiting in a durable queue past its deadline is dead-lettered
//! as expired instead of being delivered, and responders hand their handler the time
//! that is left, so no work is done for a caller that has given up. The deadline is
//! wall-clock time: caller, broker and responders need clocks that roughly agree.
//!
//! A responder's handler error travels back as a reply with the `tern-error` header,
//! which the caller's `request` turns into [`Error::Service`].

use std::fmt::Display;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tern_codec::{Headers, Qos};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::state::ReplyWaiter;
use crate::{Client, Error, Message};

pub use tern_codec::DEADLINE_HEADER;
/// Header of an error reply; its value is the responder's error message.
pub const ERROR_HEADER: &str = "tern-error";

/// Default time a request waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Client {
    /// The inbox prefix, subscribing to `<prefix>.>` on first use.
    async fn inbox(&self) -> Result<&str, Error> {
        let inner = &self.inner;
        inner
            .inbox_ready
            .get_or_try_init(|| async {
                let sub = self.subscribe(&format!("{}.>", inner.inbox_prefix)).await?;
                // The subscription lives as long as the client; replies are routed by
                // the client's state, not through this stream.
                let sid = sub.into_sid();
                inner.state().inbox.sid = Some(sid);
                Ok::<(), Error>(())
            })
            .await?;
        Ok(&inner.inbox_prefix)
    }

    /// Sends a request and waits for its reply; set headers, a timeout (default 5 s)
    /// or QoS 1 (to go through a durable queue) on the returned builder, then `.await`.
    ///
    /// ```no_run
    /// # async fn f(client: tern_client::Client) -> Result<(), tern_client::Error> {
    /// let reply = client.request("orders.price", "{\"sku\": 7}").await?;
    /// # Ok(()) }
    /// ```
    pub fn request<'a>(&'a self, subject: &'a str, payload: impl Into<Bytes>) -> Request<'a> {
        Request {
            client: self,
            subject,
            payload: payload.into(),
            headers: Headers::new(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            qos: Qos::AtMostOnce,
        }
    }

    /// Publishes one request and collects replies from every responder (scatter-gather):
    /// until `max_replies`, the timeout, or a quiet gap with no reply.
    pub fn request_many<'a>(
        &'a self,
        subject: &'a str,
        payload: impl Into<Bytes>,
    ) -> RequestMany<'a> {
        RequestMany {
            client: self,
            subject,
            payload: payload.into(),
            headers: Headers::new(),
            max_replies: usize::MAX,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            quiet: None,
        }
    }

    /// Publishes `payload` to `subject`, replying to a new token in this client's inbox
    /// that `waiter` waits on; returns the token and the broker's answer to the
    /// (mandatory) publish.
    async fn send_request(
        &self,
        subject: &str,
        payload: Bytes,
        headers: Headers,
        timeout: Duration,
        qos: Qos,
        waiter: ReplyWaiter,
    ) -> Result<(u64, crate::PendingConfirm), Error> {
        let prefix = self.inbox().await?;
        let token = self.inner.next_token();
        let reply_to = format!("{prefix}.{token}");
        let mut headers = headers;
        headers.insert(
            DEADLINE_HEADER,
            epoch_ms(SystemTime::now() + timeout).to_string(),
        );
        self.inner.state().inbox.wait(token, waiter);
        let sent = self
            .publish(subject, payload)
            .headers(headers)
            .reply_to(&reply_to)
            .qos(qos)
            .mandatory()
            .send()
            .await;
        match sent {
            Ok(confirm) => Ok((token, confirm)),
            Err(e) => {
                self.inner.state().inbox.forget(token);
                Err(e)
            }
        }
    }

    /// Answers requests on `pattern`: each request runs `handler` in a task of its own
    /// and its result is sent to the request's reply-to. Set a queue group (so that
    /// several responders share the load) or the concurrency on the returned builder.
    pub fn serve<'a>(&'a self, pattern: &'a str) -> Serve<'a> {
        Serve {
            client: self,
            pattern,
            group: None,
            concurrency: 256,
        }
    }

    /// Answers requests that wait in the durable queue `queue` (requests published with
    /// QoS 1): each delivery runs `handler`, its result is sent to the reply-to, then
    /// the delivery is acked. If this responder dies before acking, the request is
    /// redelivered to another one: handlers must be idempotent (at least once).
    pub fn serve_queue<'a>(&'a self, queue: &'a str) -> ServeQueue<'a> {
        ServeQueue {
            client: self,
            queue,
            prefetch: 16,
        }
    }
}

/// A request about to be sent.
#[must_use = "a request is sent only when awaited"]
#[derive(Debug)]
pub struct Request<'a> {
    client: &'a Client,
    subject: &'a str,
    payload: Bytes,
    headers: Headers,
    timeout: Duration,
    qos: Qos,
}

impl Request<'_> {
    /// Adds a header (keys may repeat; order is kept).
    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.append(key, value);
        self
    }

    /// Replaces all headers (the deadline header is added when the request is sent).
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// How long to wait for the reply (default 5 s). Also the request's deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// [`Qos::AtLeastOnce`] sends the request through a durable queue bound to its
    /// subject: it survives a responder's (or the broker's) crash.
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    async fn run(self) -> Result<Message, Error> {
        let (tx, rx) = oneshot::channel();
        let client = self.client;
        let (token, confirm) = client
            .send_request(
                self.subject,
                self.payload,
                self.headers,
                self.timeout,
                self.qos,
                ReplyWaiter::One(tx),
            )
            .await?;
        let _waiter = ForgetOnDrop { client, token };
        let subject = self.subject;
        let outcome = tokio::time::timeout(self.timeout, async move {
            tokio::pin!(rx, confirm);
            let mut confirmed = false;
            loop {
                tokio::select! {
                    reply = &mut rx => return reply.map_err(|_| Error::Closed),
                    answer = &mut confirm, if !confirmed => match answer {
                        Ok(_) => confirmed = true,
                        Err(e) if e.code() == Some(tern_codec::ErrorCode::NoRoute) => {
                            return Err(Error::NoResponders { subject: subject.to_string() })
                        }
                        Err(e) => return Err(e),
                    },
                }
            }
        })
        .await;
        let reply = match outcome {
            Ok(reply) => reply?,
            Err(_) => return Err(Error::Timeout),
        };
        match reply.headers.get(ERROR_HEADER) {
            Some(message) => Err(Error::Service {
                message: message.to_string(),
            }),
            None => Ok(reply),
        }
    }
}

impl<'a> IntoFuture for Request<'a> {
    type Output = Result<Message, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A scatter-gather request about to be sent.
#[must_use = "a request is sent only when awaited"]
#[derive(Debug)]
pub struct RequestMany<'a> {
    client: &'a Client,
    subject: &'a str,
    payload: Bytes,
    headers: Headers,
    max_replies: usize,
    timeout: Duration,
    quiet: Option<Duration>,
}

impl RequestMany<'_> {
    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.append(key, value);
        self
    }

    /// Stop after this many replies.
    pub fn max_replies(mut self, n: usize) -> Self {
        self.max_replies = n.max(1);
        self
    }

    /// Stop this long after sending, whatever has arrived (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stop when no reply has arrived for this long (after the first one, or after
    /// sending).
    pub fn quiet(mut self, gap: Duration) -> Self {
        self.quiet = Some(gap);
        self
    }

    async fn run(self) -> Result<Vec<Message>, Error> {
        let capacity = self.max_replies.min(4096);
        let (tx, mut rx) = mpsc::channel(capacity);
        let client = self.client;
        let (token, confirm) = client
            .send_request(
                self.subject,
                self.payload,
                self.headers,
                self.timeout,
                Qos::AtMostOnce,
                ReplyWaiter::Many(tx),
            )
            .await?;
        let _waiter = ForgetOnDrop { client, token };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut replies = Vec::new();
        let mut confirm = Some(confirm);
        let result = loop {
            if replies.len() >= self.max_replies {
                break Ok(());
            }
            let gap = match self.quiet {
                Some(q) => (tokio::time::Instant::now() + q).min(deadline),
                None => deadline,
            };
            tokio::select! {
                reply = rx.recv() => match reply {
                    Some(m) => replies.push(m),
                    None => break Err(Error::Closed),
                },
                answer = async {
                    match confirm.as_mut() {
                        Some(c) => c.await,
                        None => std::future::pending().await,
                    }
                }, if confirm.is_some() => {
                    confirm = None;
                    match answer {
                        Ok(_) => {}
                        Err(e) if e.code() == Some(tern_codec::ErrorCode::NoRoute) => {
                            break Err(Error::NoResponders { subject: self.subject.to_string() });
                        }
                        Err(e) => break Err(e),
                    }
                }
                () = tokio::time::sleep_until(gap) => break Ok(()),
            }
        };
        result.map(|()| replies)
    }
}

/// Removes a request's reply waiter from the inbox when the request ends, however it
/// ends: answered, failed, timed out, or dropped unfinished (by a `select!`, say), so
/// that abandoned requests do not pile up waiters.
struct ForgetOnDrop<'a> {
    client: &'a Client,
    token: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.client.inner.state().inbox.forget(self.token);
    }
}

impl<'a> IntoFuture for RequestMany<'a> {
    type Output = Result<Vec<Message>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A request as a responder's handler sees it.
#[derive(Debug)]
pub struct ServiceRequest {
    pub message: Message,
    /// When the caller gives up, if it said.
    pub deadline: Option<SystemTime>,
}

impl ServiceRequest {
    /// Time left before the caller gives up (`None`: no deadline was given).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| {
            d.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }

    fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    fn new(message: Message) -> Self {
        let deadline = message
            .headers
            .get(DEADLINE_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        Self { message, deadline }
    }
}

/// A responder's answer: a payload and optional headers.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub payload: Bytes,
    pub headers: Headers,
}

impl Reply {
    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.append(key, value);
        self
    }
}

impl<T: Into<Bytes>> From<T> for Reply {
    fn from(payload: T) -> Self {
        Self {
            payload: payload.into(),
            headers: Headers::new(),
        }
    }
}

/// A running responder. Stops when dropped (requests being handled finish).
#[derive(Debug)]
pub struct Service {
    task: JoinHandle<()>,
}

impl Service {
    /// Stops answering.
    pub fn stop(self) {}

    /// Waits until the responder ends by itself (its subscription or consumer ended:
    /// the client was closed, or the queue deleted).
    pub async fn finished(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends a handler's result to `reply_to`.
async fn respond<R, E>(client: &Client, reply_to: &str, result: Result<R, E>)
where
    R: Into<Reply>,
    E: Display,
{
    let outcome = match result {
        Ok(reply) => {
            let reply = reply.into();
            client
                .publish(reply_to, reply.payload)
                .headers(reply.headers)
                .await
        }
        Err(e) => {
            client
                .publish(reply_to, Bytes::new())
                .header(ERROR_HEADER, &e.to_string())
                .await
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, reply_to, "sending a reply failed");
    }
}

/// A responder about to start.
#[must_use = "a responder starts only with run()"]
#[derive(Debug)]
pub struct Serve<'a> {
    client: &'a Client,
    pattern: &'a str,
    group: Option<&'a str>,
    concurrency: usize,
}

impl<'a> Serve<'a> {
    /// Join queue group `group`: each request goes to one responder of the group.
    pub fn group(mut self, group: &'a str) -> Self {
        self.group = Some(group);
        self
    }

    /// Most requests handled at once (default 256); further ones wait.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Subscribes and starts answering with `handler`.
    ///
    /// # Errors
    ///
    /// The subscription was refused.
    pub async fn run<F, Fut, R, E>(self, handler: F) -> Result<Service, Error>
    where
        F: Fn(ServiceRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Reply> + Send + 'static,
        E: Display + Send + 'static,
    {
        let mut builder = self.client.subscribe(self.pattern);
        if let Some(g) = self.group {
            builder = builder.group(g);
        }
        let mut sub = builder.await?;
        let client = self.client.clone();
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let task = tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                let Some(reply_to) = message.reply_to.clone() else {
                    tracing::debug!(subject = %message.subject, "a request without reply-to; ignored");
                    continue;
                };
                let request = ServiceRequest::new(message);
                if request.expired() {
                    continue;
                }
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let (client, handler) = (client.clone(), Arc::clone(&handler));
                tokio::spawn(async move {
                    let result = handler(request).await;
                    respond(&client, &reply_to, result).await;
                    drop(slot);
                });
            }
        });
        Ok(Service { task })
    }
}

/// A durable-queue responder about to start.
#[must_use = "a responder starts only with run()"]
#[derive(Debug)]
pub struct ServeQueue<'a> {
    client: &'a Client,
    queue: &'a str,
    prefetch: u32,
}

impl ServeQueue<'_> {
    /// Requests held (and handled concurrently) at once (default 16). 1 gives fair
    /// dispatch among responders.
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Starts consuming and answering with `handler`.
    ///
    /// # Errors
    ///
    /// The queue does not exist, or consuming was refused.
    pub async fn run<F, Fut, R, E>(self, handler: F) -> Result<Service, Error>
    where
        F: Fn(ServiceRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Reply> + Send + 'static,
        E: Display + Send + 'static,
    {
        let mut consumer = self
            .client
            .consume(self.queue)
            .prefetch(self.prefetch)
            .await?;
        let client = self.client.clone();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let (client, handler) = (client.clone(), Arc::clone(&handler));
                // Prefetch bounds how many of these run at once.
                tokio::spawn(async move {
                    let reply_to = delivery.message.reply_to.clone();
                    let request = ServiceRequest::new(delivery.message.clone());
                    if let Some(reply_to) = reply_to.filter(|_| !request.expired()) {
                        let result = handler(request).await;
                        respond(&client, &reply_to, result).await;
                    }
                    if let Err(e) = delivery.ack().await {
                        tracing::debug!(error = %e, "acking a request failed; it will be redelivered");
                    }
                });
            }
        });
        Ok(Service { task })
    }
}
