//! Peer links (`tern_broker::cluster::link`): arbitrary bytes read as the stream of
//! frames a node receives from a peer, or from a stranger before the handshake.
//!
//! Input: the raw stream, length prefixes included (the seeds are encoded frames:
//! handshakes, requests, responses, a truncated frame, an oversized length). It is
//! decoded twice, under the handshake limit (`HANDSHAKE_MAX_FRAME`) and under the
//! default limit (`DEFAULT_MAX_FRAME`), frame after frame until one is incomplete or
//! an error.
//!
//! Invariants checked:
//! * `decode_frame` never panics, whatever the bytes and the limit;
//! * `Ok(None)` (incomplete) and a bad length prefix (`TooLarge`, `Empty`) consume
//!   nothing; a complete frame with a bad body consumes exactly that frame;
//! * a decoded frame re-encodes to exactly the bytes it came from (one encoding per
//!   frame), and `body_len` is its length prefix;
//! * every strict prefix of a decoded frame's bytes is `Ok(None)`;
//! * a length over the limit is refused from its four bytes alone, before the body.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_broker::cluster::link::{
    decode_frame, frame_len, FrameError, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME,
};

fn check(data: &[u8], max: u32) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf, max) {
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete frame consumed bytes");
                return;
            }
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                let raw = &before[..used];
                assert_eq!(frame.body_len() + 4, used, "{frame:?}");
                let mut again = BytesMut::new();
                frame
                    .encode(&mut again, max)
                    .expect("a decoded frame encodes within its limit");
                assert_eq!(&again[..], raw, "{frame:?} re-encodes differently");
                // The length prefix and the last bytes are where a prefix can go wrong;
                // checking every cut would make long frames quadratic.
                for cut in (0..used).filter(|c| *c < 16 || used - c <= 16) {
                    let mut prefix = BytesMut::from(&raw[..cut]);
                    assert_eq!(decode_frame(&mut prefix, max), Ok(None), "cut at {cut}");
                }
            }
            Err(e @ (FrameError::TooLarge { .. } | FrameError::Empty)) => {
                assert_eq!(buf, before, "a bad length consumed bytes");
                // Decided from the prefix alone.
                assert_eq!(frame_len(&before[..4], max), Err(e));
                return;
            }
            Err(_) => {
                let total = frame_len(&before, max)
                    .expect("the length was accepted")
                    .expect("the frame was complete");
                assert_eq!(before.len() - buf.len(), total, "a bad body consumed more");
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, HANDSHAKE_MAX_FRAME);
    check(data, DEFAULT_MAX_FRAME);
});
