//! The client's write buffer: frames waiting for the connection's writer.
//!
//! Publishers encode straight into one shared buffer, and the writer swaps the whole
//! buffer out and sends it with one `write_all`, so a burst of publishes costs one
//! syscall and no per-message allocation. The buffer is bounded: when it is full a
//! publisher waits for the writer to make room (back-pressure); while disconnected the
//! same bound caps how much is held for the next connection, and a publisher that hits
//! it gets [`Error::Disconnected`] instead of waiting for a server that may never come.

use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use tern_codec::{Encode, EncodeError, FrameType};
use tokio::sync::Notify;

use crate::Error;

/// Whether there is a connection to write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Up,
    Down,
    Closed,
}

/// Whether a frame is held for the next connection while disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    WhileDown,
    WhileUp,
}

#[derive(Debug)]
struct Buf {
    bytes: BytesMut,
    link: Link,
}

#[derive(Debug)]
pub(crate) struct WriteBuffer {
    /// A std `Mutex`: held only to append an encoded frame or swap the buffer out.
    buf: Mutex<Buf>,
    /// Wakes the writer when there is something to send.
    ready: Notify,
    /// Wakes publishers waiting for room.
    space: Notify,
    max: usize,
}

/// A frame encoder: appends one whole frame.
pub(crate) type EncodeFn<'a> = &'a (dyn Fn(&mut BytesMut) -> Result<(), EncodeError> + Sync);

impl WriteBuffer {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Mutex::new(Buf {
                bytes: BytesMut::new(),
                link: Link::Down,
            }),
            ready: Notify::new(),
            space: Notify::new(),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buf> {
        // Every update leaves `Buf` whole, so a poisoned lock still guards good data.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a frame of `len` bytes if it fits. `Ok(false)` means full: wait and retry.
    ///
    /// # Errors
    ///
    /// Closed, disconnected with a full buffer, or the frame does not encode.
    pub fn try_push(&self, len: usize, encode: EncodeFn<'_>) -> Result<bool, Error> {
        self.try_append(len, encode, Hold::WhileDown)
    }

    fn try_append(&self, len: usize, encode: EncodeFn<'_>, hold: Hold) -> Result<bool, Error> {
        let mut b = self.lock();
        if b.link == Link::Down && hold == Hold::WhileUp {
            return Err(Error::Disconnected);
        }
        let was_empty = b.bytes.is_empty();
        if !was_empty && b.bytes.len() + len > self.max {
            return match b.link {
                Link::Up => Ok(false),
                Link::Down => Err(Error::Disconnected),
                Link::Closed => Err(Error::Closed),
            };
        }
        if b.link == Link::Closed {
            return Err(Error::Closed);
        }
        encode(&mut b.bytes)?;
        drop(b);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(true)
    }

    /// Appends a frame, waiting for room while connected.
    ///
    /// # Errors
    ///
    /// As [`WriteBuffer::try_push`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the frame is appended whole or not at all.
    pub async fn push(&self, len: usize, encode: EncodeFn<'_>) -> Result<(), Error> {
        self.append(len, encode, Hold::WhileDown).await
    }

    /// Appends the frame of a request that a new connection re-sends by itself (a
    /// confirmed publish), waiting for room while connected. While disconnected the
    /// frame is not held: it would go out twice, once re-sent and once from here.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] while disconnected; otherwise as
    /// [`WriteBuffer::try_push`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the frame is appended whole or not at all.
    pub async fn push_request(&self, len: usize, encode: EncodeFn<'_>) -> Result<(), Error> {
        self.append(len, encode, Hold::WhileUp).await
    }

    async fn append(&self, len: usize, encode: EncodeFn<'_>, hold: Hold) -> Result<(), Error> {
        loop {
            // Registered before checking, so a writer that makes room in between
            // cannot be missed.
            let room = self.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.try_append(len, encode, hold)? {
                return Ok(());
            }
            room.await;
        }
    }

    /// Drops every buffered frame but fire-and-forget publishes (PUBLISH with id 0),
    /// when the connection is lost. Every other frame belongs to a request that the
    /// lost connection settles: it fails, succeeds, or is re-sent on the next
    /// connection (see `state`), so sending it as well would do it twice.
    pub fn keep_only_unanswered_publishes(&self) {
        let mut b = self.lock();
        let mut kept = BytesMut::with_capacity(b.bytes.len());
        let mut rest = &b.bytes[..];
        // The buffer holds whole frames only: each push appends one entirely.
        while let Some(len) = rest
            .get(..4)
            .and_then(|l| l.try_into().ok())
            .map(|l| 4 + u32::from_be_bytes(l) as usize)
        {
            let Some((frame, tail)) = rest.split_at_checked(len) else {
                break;
            };
            let publish = frame.get(4) == Some(&(FrameType::Publish as u8));
            if publish && frame.get(5..9) == Some(&[0, 0, 0, 0]) {
                kept.extend_from_slice(frame);
            }
            rest = tail;
        }
        b.bytes = kept;
    }

    /// Appends a small control frame (PING, SUBSCRIBE, ...) regardless of the bound:
    /// such frames are few, each waits for its own answer, and they must not queue
    /// behind a full buffer of publishes forever.
    ///
    /// # Errors
    ///
    /// Closed, or the frame does not encode.
    pub fn push_control(&self, frame: &impl Encode) -> Result<(), Error> {
        let mut b = self.lock();
        if b.link == Link::Closed {
            return Err(Error::Closed);
        }
        let was_empty = b.bytes.is_empty();
        frame.encode(&mut b.bytes)?;
        drop(b);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves everything pending into `batch` (empty), waiting until there is some.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is taken until the future completes.
    pub async fn take(&self, batch: &mut BytesMut) {
        loop {
            let ready = self.ready.notified();
            {
                let mut b = self.lock();
                if !b.bytes.is_empty() {
                    std::mem::swap(&mut b.bytes, batch);
                    drop(b);
                    self.space.notify_waiters();
                    return;
                }
            }
            ready.await;
        }
    }

    /// Moves everything pending into `batch` without waiting.
    pub fn take_now(&self, batch: &mut BytesMut) {
        std::mem::swap(&mut self.lock().bytes, batch);
        self.space.notify_waiters();
    }

    pub fn set_link(&self, link: Link) {
        let mut b = self.lock();
        if b.link != Link::Closed {
            b.link = link;
        }
        drop(b);
        // Waiting publishers re-check: a closed or down link turns waiting into an error.
        self.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn bytes(n: usize) -> impl Fn(&mut BytesMut) -> Result<(), EncodeError> + Sync {
        move |b: &mut BytesMut| {
            b.put_bytes(0, n);
            Ok(())
        }
    }

    #[tokio::test]
    async fn full_buffer_waits_for_the_writer() {
        let wb = std::sync::Arc::new(WriteBuffer::new(100));
        wb.set_link(Link::Up);
        assert!(wb.try_push(80, &bytes(80)).unwrap());
        assert!(!wb.try_push(80, &bytes(80)).unwrap(), "full");
        let waiter = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.push(80, &bytes(80)).await })
        };
        let mut batch = BytesMut::new();
        wb.take(&mut batch).await;
        assert_eq!(batch.len(), 80);
        waiter.await.unwrap().unwrap();
    }

    #[test]
    fn disconnected_and_full_is_an_error() {
        let wb = WriteBuffer::new(100);
        assert!(wb.try_push(80, &bytes(80)).unwrap(), "buffered while down");
        assert!(matches!(
            wb.try_push(80, &bytes(80)),
            Err(Error::Disconnected)
        ));
        wb.set_link(Link::Closed);
        wb.set_link(Link::Up);
        assert!(
            matches!(wb.try_push(1, &bytes(1)), Err(Error::Closed)),
            "closed is final"
        );
    }

    #[tokio::test]
    async fn requests_are_not_held_while_down() {
        let wb = WriteBuffer::new(100);
        assert!(matches!(
            wb.push_request(8, &bytes(8)).await,
            Err(Error::Disconnected)
        ));
        wb.set_link(Link::Up);
        wb.push_request(8, &bytes(8)).await.unwrap();
        let mut batch = BytesMut::new();
        wb.take_now(&mut batch);
        assert_eq!(batch.len(), 8);
    }

    #[test]
    fn a_lost_connection_keeps_only_fire_and_forget_publishes() {
        use tern_codec::{Envelope, Ping, Publish, Qos};
        let publish = |id: u32, qos: Qos, payload: &'static str| Publish {
            id,
            qos,
            mandatory: false,
            producer: None,
            envelope: Envelope {
                subject: "a".into(),
                reply_to: None,
                headers: tern_codec::Headers::default(),
                payload: payload.into(),
            },
        };
        let wb = WriteBuffer::new(1 << 20);
        wb.push_control(&publish(0, Qos::AtMostOnce, "keep-1"))
            .unwrap();
        wb.push_control(&publish(3, Qos::AtLeastOnce, "resent"))
            .unwrap();
        wb.push_control(&Ping { id: 4 }).unwrap();
        wb.push_control(&publish(0, Qos::AtMostOnce, "keep-2"))
            .unwrap();
        wb.push_control(&publish(5, Qos::AtMostOnce, "answered"))
            .unwrap();
        wb.keep_only_unanswered_publishes();

        let mut batch = BytesMut::new();
        wb.take_now(&mut batch);
        let mut payloads = Vec::new();
        while let Some(frame) = tern_codec::Frame::decode(&mut batch, 1 << 20).unwrap() {
            match frame {
                tern_codec::Frame::Publish(p) => {
                    assert_eq!(p.id, 0);
                    payloads.push(p.envelope.payload);
                }
                other => panic!("kept {other:?}"),
            }
        }
        assert_eq!(payloads, ["keep-1", "keep-2"]);
    }

    #[tokio::test]
    async fn waiting_publisher_fails_when_the_link_goes_down() {
        let wb = std::sync::Arc::new(WriteBuffer::new(100));
        wb.set_link(Link::Up);
        assert!(wb.try_push(80, &bytes(80)).unwrap());
        let waiter = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.push(80, &bytes(80)).await })
        };
        tokio::task::yield_now().await;
        wb.set_link(Link::Down);
        assert!(matches!(waiter.await.unwrap(), Err(Error::Disconnected)));
    }
}
