//! Frames in and out of a link's socket: [`FrameReader`] decodes what arrives, and
//! [`write_frames`] is a connection's writer task. Both sides of a link use them, in
//! the handshake and after it.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame::{decode_frame, Frame, FrameError};

/// Bytes reserved per socket read. The buffer grows only as bytes arrive, never to
/// the length a frame announces.
const READ_CHUNK: usize = 64 * 1024;
/// The writer gathers queued frames up to about this many bytes into one write.
const WRITE_BATCH: usize = 256 * 1024;
/// A write buffer grown past this (by a large frame) is released after the write, so
/// an idle connection does not keep a snapshot chunk's worth of memory.
const KEEP_BUFFER: usize = 1024 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the connection closed in the middle of a frame")]
    Truncated,
}

/// A connection's byte stream, plain TCP or TLS.
pub(super) trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

pub(super) type Reader = FrameReader<ReadHalf<Box<dyn PeerIo>>>;
pub(super) type Writer = WriteHalf<Box<dyn PeerIo>>;

/// Decodes frames from a read half. Kept from the handshake into the request phase, so
/// bytes read ahead are not lost.
pub(super) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: bytes read stay in the buffer and a frame is taken off it only
    /// when complete.
    pub(super) async fn read_frame(&mut self, max_frame: u32) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, max_frame)? {
                return Ok(Some(frame));
            }
            // A chunk at a time, whatever length the prefix announces: memory follows
            // the bytes that arrive, so four bytes cannot make this side allocate
            // `max_frame`.
            self.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }
}

/// The writer task of a connection: writes frames from `rx` until it closes, a write
/// fails or `stop` is cancelled, then cancels `stop` so that the reader ends too.
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Frame>,
    max_frame: u32,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::new();
    let end = 'connection: loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break "stopped".to_string(),
            f = rx.recv() => f,
        };
        let Some(mut frame) = first else {
            break "no more frames".to_string();
        };
        // Everything already queued goes out in the same write.
        loop {
            // Callers check payloads against `max_payload`, so this fails only on a bug.
            if let Err(e) = frame.encode(&mut buf, max_frame) {
                break 'connection format!("cannot send a {} frame: {e}", frame.name());
            }
            if buf.len() >= WRITE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            _ = stop.cancelled() => break "stopped".to_string(),
            r = async {
                io.write_all(&buf).await?;
                io.flush().await
            } => r,
        };
        if let Err(e) = written {
            break format!("write failed: {e}");
        }
        buf.clear();
        if buf.capacity() > KEEP_BUFFER {
            buf = BytesMut::new();
        }
    };
    debug!(reason = %end, "peer link writer ended");
    stop.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::link::frame::kind;
    use crate::cluster::link::DEFAULT_MAX_FRAME;

    #[tokio::test]
    async fn a_reader_allocates_only_what_arrives() {
        // A frame announcing the full 64 MiB, of which 1000 bytes arrive.
        let mut input = DEFAULT_MAX_FRAME.to_be_bytes().to_vec();
        input.push(kind::REQUEST);
        input.extend_from_slice(&[0; 1000]);
        let mut reader = FrameReader::new(input.as_slice());
        let result = reader.read_frame(DEFAULT_MAX_FRAME).await;
        assert!(matches!(result, Err(ReadError::Truncated)), "{result:?}");
        assert!(
            reader.buf.capacity() < 1024 * 1024,
            "{}",
            reader.buf.capacity()
        );

        let too_large = u32::MAX.to_be_bytes();
        let mut reader = FrameReader::new(&too_large[..]);
        let result = reader.read_frame(DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(result, Err(ReadError::Frame(FrameError::TooLarge { .. }))),
            "{result:?}"
        );
        assert!(
            reader.buf.capacity() < 1024 * 1024,
            "{}",
            reader.buf.capacity()
        );
    }
}
