//! The read side of a connection: bytes in, frames out.

use bytes::BytesMut;
use tern_codec::{DecodeError, Frame};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ReadError;

/// Bytes reserved for each socket read. Large enough that a stream of small publishes
/// is decoded hundreds of frames per syscall.
const READ_CHUNK: usize = 64 * 1024;

/// Decodes frames from a socket's read half.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame_size: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_frame_size: u32) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame_size,
        }
    }

    /// The next frame already in the buffer, without touching the socket.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, DecodeError> {
        Frame::decode(&mut self.buf, self.max_frame_size)
    }

    /// Reads more bytes. `Ok(false)` is a clean end of stream.
    ///
    /// # Errors
    ///
    /// The socket failed, or the peer closed it in the middle of a frame.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: `read_buf` either appends bytes or does nothing.
    pub async fn fill(&mut self) -> Result<bool, ReadError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        if self.io.read_buf(&mut self.buf).await? > 0 {
            return Ok(true);
        }
        if self.buf.is_empty() {
            Ok(false)
        } else {
            Err(ReadError::EofMidFrame)
        }
    }

    /// The next frame, reading as needed. `Ok(None)` is a clean end of stream.
    ///
    /// # Errors
    ///
    /// As [`FrameReader::fill`] and [`Frame::decode`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes read before cancellation stay buffered for the next call.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{Encode, Ping, Publish, Qos};

    fn stream() -> (Vec<Frame>, Vec<u8>) {
        let frames: Vec<Frame> = vec![
            Ping { id: 1 }.into(),
            Publish {
                id: 0,
                qos: Qos::AtMostOnce,
                mandatory: false,
                producer: None,
                envelope: tern_codec::Envelope {
                    subject: "a.b".into(),
                    reply_to: Some("r".into()),
                    headers: [("k", "v")].into_iter().collect(),
                    payload: vec![1u8; 300].into(),
                },
            }
            .into(),
            Ping { id: 2 }.into(),
        ];
        let mut bytes = BytesMut::new();
        for f in &frames {
            f.encode(&mut bytes).unwrap();
        }
        (frames, bytes.to_vec())
    }

    /// Delivers the byte stream split at every position; the frames come out the same.
    #[tokio::test]
    async fn reads_frames_split_at_every_byte() {
        let (frames, bytes) = stream();
        for split in 1..bytes.len() {
            let (a, b) = bytes.split_at(split);
            let io = tokio_test_io(vec![a.to_vec(), b.to_vec()]);
            let mut r = FrameReader::new(io, 1 << 20);
            let mut got = Vec::new();
            while let Some(f) = r.read_frame().await.unwrap() {
                got.push(f);
            }
            assert_eq!(got, frames, "split at {split}");
        }
    }

    #[tokio::test]
    async fn eof_mid_frame_is_an_error() {
        let (_, bytes) = stream();
        let io = tokio_test_io(vec![bytes[..7].to_vec()]);
        let mut r = FrameReader::new(io, 1 << 20);
        assert!(matches!(r.read_frame().await, Err(ReadError::EofMidFrame)));
    }

    /// An in-memory reader that yields the given chunks one read at a time.
    fn tokio_test_io(chunks: Vec<Vec<u8>>) -> impl AsyncRead + Unpin {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in chunks {
                w.write_all(&c).await.unwrap();
                w.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        r
    }
}
