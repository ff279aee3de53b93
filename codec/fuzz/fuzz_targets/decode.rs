//! Feeds arbitrary bytes to `Frame::decode` as a stream, the way a connection does.
//!
//! Invariants checked on every input:
//! * decoding never panics and never consumes more than it was given;
//! * after a non-fatal error (an unknown frame type) the stream goes on;
//! * every decoded frame re-encodes to `encoded_len()` bytes that decode to the same
//!   frame (and, the encoding being canonical, to the very bytes that were consumed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_codec::{BytesMut, Encode, Frame};

/// 64 KiB: small enough that the fuzzer reaches "frame too large" and "need more" often.
const MAX_FRAME_SIZE: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let consumed_so_far = data.len() - before;
        match Frame::decode(&mut buf, MAX_FRAME_SIZE) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                let original = &data[consumed_so_far..consumed_so_far + used];

                let mut again = BytesMut::new();
                frame
                    .encode(&mut again)
                    .expect("a decoded frame re-encodes");
                assert_eq!(again.len(), frame.encoded_len());
                assert_eq!(&again[..], original, "encoding is not canonical");

                let decoded = Frame::decode(&mut again, MAX_FRAME_SIZE)
                    .expect("a re-encoded frame decodes")
                    .expect("a re-encoded frame is whole");
                assert_eq!(decoded, frame);
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                break;
            }
            Err(e) if !e.is_fatal() => {
                assert!(buf.len() < before, "a skipped frame was not consumed");
            }
            Err(_) => break,
        }
    }
});
