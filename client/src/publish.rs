//! The publish builder.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tern_codec::subject::validate_subject;
use tern_codec::{EnvelopeRef, Headers, Publish as PublishFrame, Qos, SubjectLimits};

use crate::{Client, Error};

/// A message about to be published. Set headers or a reply-to, then `.await` it.
///
/// ```no_run
/// # async fn f(client: tern_client::Client) -> Result<(), tern_client::Error> {
/// client
///     .publish("orders.created", "{\"id\": 7}")
///     .header("content-type", "application/json")
///     .reply_to("orders.replies")
///     .await?;
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
}

impl<'a> Publish<'a> {
    pub(crate) fn new(client: &'a Client, subject: &'a str, payload: Bytes) -> Self {
        Self {
            client,
            subject,
            reply_to: None,
            headers: Headers::new(),
            payload,
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

    fn envelope(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            subject: self.subject,
            reply_to: self.reply_to,
            headers: &self.headers,
            payload: &self.payload,
        }
    }

    /// Checks everything that can be checked before sending.
    fn validate(&self) -> Result<usize, Error> {
        let limits = SubjectLimits::default();
        validate_subject(self.subject, &limits)
            .map_err(|e| Error::invalid("subject", self.subject, e))?;
        if let Some(r) = self.reply_to {
            validate_subject(r, &limits).map_err(|e| Error::invalid("reply-to subject", r, e))?;
        }
        let len = PublishFrame::parts_len(self.envelope());
        let max = self.client.inner.max_frame_size();
        if len - tern_codec::FRAME_HEADER_LEN + 1 > max as usize {
            return Err(Error::TooLarge { size: len, max });
        }
        Ok(len)
    }
}

/// The future of an awaited [`Publish`]. When the write buffer has room — the usual
/// case — the message is buffered without any allocation and the future is ready at
/// once; only a full buffer makes it wait.
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

    /// Buffers the message right away if there is room.
    fn into_future(self) -> PublishFuture<'a> {
        let len = match self.validate() {
            Ok(len) => len,
            Err(e) => return PublishFuture(PublishState::Ready(Some(Err(e)))),
        };
        let out = &self.client.inner.out;
        let encode = |dst: &mut bytes::BytesMut| {
            PublishFrame::encode_parts(0, Qos::AtMostOnce, self.envelope(), dst)
        };
        match out.try_push(len, &encode) {
            Ok(true) => PublishFuture(PublishState::Ready(Some(Ok(())))),
            Err(e) => PublishFuture(PublishState::Ready(Some(Err(e)))),
            Ok(false) => PublishFuture(PublishState::Waiting(Box::pin(async move {
                let encode = |dst: &mut bytes::BytesMut| {
                    PublishFrame::encode_parts(0, Qos::AtMostOnce, self.envelope(), dst)
                };
                self.client.inner.out.push(len, &encode).await
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
