//! The publish builder.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tern_codec::subject::validate_subject;
use tern_codec::{EnvelopeRef, Headers, Publish as PublishFrame, PublishHead, Qos, SubjectLimits};
use tokio::sync::oneshot;

use crate::state::{Confirmation, Request};
use crate::{Client, Error};

/// A message about to be published. Set headers, a reply-to or a quality of service,
/// then `.await` it.
///
/// ```no_run
/// # async fn f(client: tern_client::Client) -> Result<(), tern_client::Error> {
/// use tern_client::Qos;
///
/// // At most once: returns as soon as the message is buffered.
/// client.publish("orders.created", "{\"id\": 7}").header("source", "web").await?;
///
/// // At least once: returns when the broker confirms the message is durable.
/// client.publish("orders.created", "{\"id\": 8}").qos(Qos::AtLeastOnce).await?;
///
/// // Many in flight at once: send now, collect the confirms later.
/// let mut pending = Vec::new();
/// for i in 0..1000 {
///     pending.push(client.publish("metrics", format!("{i}")).qos(Qos::AtLeastOnce).send().await?);
/// }
/// for confirm in pending {
///     confirm.await?;
/// }
/// # Ok(()) }
/// ```
#[must_use = "a publish does nothing until it is awaited"]
#[derive(Debug)]
pub struct Publish<'a> {
    client: &'a Client,
    subject: &'a str,
    reply_to: Option<&'a str>,
    headers: Headers,
    payload: Bytes,
    qos: Qos,
    mandatory: bool,
    producer: Option<(&'a str, u64)>,
}

impl<'a> Publish<'a> {
    pub(crate) fn new(client: &'a Client, subject: &'a str, payload: Bytes) -> Self {
        Self {
            client,
            subject,
            reply_to: None,
            headers: Headers::new(),
            payload,
            qos: Qos::AtMostOnce,
            mandatory: false,
            producer: None,
        }
    }

    /// Adds a header (keys may repeat; order is kept).
    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.append(key, value);
        self
    }

    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Where subscribers should send replies.
    pub fn reply_to(mut self, subject: &'a str) -> Self {
        self.reply_to = Some(subject);
        self
    }

    /// The delivery guarantee. With [`Qos::AtLeastOnce`] or [`Qos::ExactlyOnce`],
    /// awaiting the publish waits for the broker's confirm that the message is durable
    /// in every queue it routed to. [`Qos::ExactlyOnce`] also needs
    /// [`Publish::idempotent`].
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Fail with `no_route` if no subscriber and no queue takes the message.
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    /// Exactly-once publishing: the broker remembers `(producer, sequence)` for a
    /// while (its dedup window) and stores a retry of the same pair only once. A
    /// producer id names one publisher; give each message a new sequence number and
    /// reuse it only to retry that message. Sets QoS 2.
    pub fn idempotent(mut self, producer: &'a str, sequence: u64) -> Self {
        self.producer = Some((producer, sequence));
        self.qos = Qos::ExactlyOnce;
        self
    }

    fn envelope(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            subject: self.subject,
            reply_to: self.reply_to,
            headers: &self.headers,
            payload: &self.payload,
        }
    }

    fn head(&self, id: u32) -> PublishHead<'a> {
        PublishHead {
            id,
            qos: self.qos,
            mandatory: self.mandatory,
            producer: self.producer,
        }
    }

    /// Whether the broker answers this publish (and so it needs an id).
    fn answered(&self) -> bool {
        self.qos != Qos::AtMostOnce || self.mandatory
    }

    /// Checks everything that can be checked before sending.
    fn validate(&self) -> Result<usize, Error> {
        let limits = SubjectLimits::default();
        validate_subject(self.subject, &limits)
            .map_err(|e| Error::invalid("subject", self.subject, e))?;
        if let Some(r) = self.reply_to {
            validate_subject(r, &limits).map_err(|e| Error::invalid("reply-to subject", r, e))?;
        }
        if self.qos == Qos::ExactlyOnce && self.producer.is_none() {
            return Err(Error::Usage(
                "QoS 2 needs a producer id and sequence: use Publish::idempotent".into(),
            ));
        }
        let len = PublishFrame::parts_len(&self.head(1), self.envelope());
        let max = self.client.inner.max_frame_size();
        if len - tern_codec::FRAME_HEADER_LEN + 1 > max as usize {
            return Err(Error::TooLarge { size: len, max });
        }
        Ok(len)
    }

    /// Sends the message and returns without waiting for the broker's answer: await
    /// the returned [`PendingConfirm`] for it. This is how many confirmed publishes are
    /// kept in flight at once. Waits only while the write buffer is full or the
    /// client's limit of unconfirmed publishes is reached.
    ///
    /// Unconfirmed publishes survive a reconnect: they are sent again on the new
    /// connection. One the broker had received before the connection dropped is
    /// then stored twice at QoS 1 (at least once), and deduplicated at QoS 2.
    ///
    /// # Errors
    ///
    /// An invalid subject, a message over the server's frame size, a closed client.
    pub async fn send(self) -> Result<PendingConfirm, Error> {
        let len = self.validate()?;
        let inner = &self.client.inner;
        if !self.answered() {
            let encode = |dst: &mut BytesMut| {
                PublishFrame::encode_parts(&self.head(0), self.envelope(), dst)
            };
            inner.out.push(len, &encode).await?;
            return Ok(PendingConfirm(Pending::Ready(Some(Ok(Confirmation {
                queues: 0,
                duplicate: false,
            })))));
        }
        let slot = Arc::clone(&inner.inflight)
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let id = inner.next_id();
        let mut frame = BytesMut::with_capacity(len);
        PublishFrame::encode_parts(&self.head(id), self.envelope(), &mut frame)?;
        let frame = frame.freeze();
        let (reply, rx) = oneshot::channel();
        // Registered before sending, so that a quick answer finds it.
        inner.state().add_request(
            id,
            Request::Publish {
                frame: frame.clone(),
                reply,
                _slot: slot,
            },
        );
        let copy = |dst: &mut BytesMut| {
            dst.extend_from_slice(&frame);
            Ok(())
        };
        match inner.out.push_request(frame.len(), &copy).await {
            // While disconnected the request itself is the copy that matters: it is
            // sent again on the next connection.
            Ok(()) | Err(Error::Disconnected) => Ok(PendingConfirm(Pending::Waiting(rx))),
            Err(e) => {
                inner.state().cancel_request(id);
                Err(e)
            }
        }
    }
}

/// A publish's answer from the broker, to await.
#[must_use = "await it to learn whether the broker stored the message"]
#[derive(Debug)]
pub struct PendingConfirm(Pending);

#[derive(Debug)]
enum Pending {
    Ready(Option<Result<Confirmation, Error>>),
    Waiting(oneshot::Receiver<Result<Confirmation, Error>>),
}

impl Future for PendingConfirm {
    type Output = Result<Confirmation, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Pending::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(Error::Closed))),
            Pending::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
        }
    }
}

/// The future of an awaited [`Publish`]. For a QoS 0 publish with room in the write
/// buffer — the usual case — the message is buffered without any allocation and the
/// future is ready at once; otherwise it waits for room or for the broker's confirm.
pub struct PublishFuture<'a>(PublishState<'a>);

enum PublishState<'a> {
    Ready(Option<Result<(), Error>>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>),
}

impl std::fmt::Debug for PublishFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishFuture")
    }
}

impl<'a> IntoFuture for Publish<'a> {
    type Output = Result<(), Error>;
    type IntoFuture = PublishFuture<'a>;

    /// Buffers a QoS 0 message right away if there is room.
    fn into_future(self) -> PublishFuture<'a> {
        if self.answered() {
            return PublishFuture(PublishState::Waiting(Box::pin(async move {
                self.send().await?.await.map(|_| ())
            })));
        }
        let len = match self.validate() {
            Ok(len) => len,
            Err(e) => return PublishFuture(PublishState::Ready(Some(Err(e)))),
        };
        let out = &self.client.inner.out;
        let encode =
            |dst: &mut BytesMut| PublishFrame::encode_parts(&self.head(0), self.envelope(), dst);
        match out.try_push(len, &encode) {
            Ok(true) => PublishFuture(PublishState::Ready(Some(Ok(())))),
            Err(e) => PublishFuture(PublishState::Ready(Some(Err(e)))),
            Ok(false) => PublishFuture(PublishState::Waiting(Box::pin(async move {
                self.send().await.map(|_| ())
            }))),
        }
    }
}

impl Future for PublishFuture<'_> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            PublishState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(Error::Closed))),
            PublishState::Waiting(fut) => fut.as_mut().poll(cx),
        }
    }
}
