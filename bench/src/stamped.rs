//! Payloads that carry their send time, and taking them off a subscription.
//!
//! One message in [`STAMP_EVERY`] starts with the [`Clock`] time it was sent (8 bytes,
//! big-endian); the others start with zeros, so that "no timestamp" costs nothing to
//! recognise. A subscriber subtracts the stamp from its own reading of the same clock.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_client::Subscription;

use crate::report::{Clock, Latency};

/// One message in this many carries a send timestamp.
pub const STAMP_EVERY: u64 = 100;
/// Bytes of the timestamp at the start of a stamped payload.
const STAMP_LEN: usize = 8;

/// The payload of a run: the same bytes every time, with a timestamp in the
/// stamped ones.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Sent as is, 99 times in 100: cloning it costs a reference count, not a copy.
    pub plain: Bytes,
    /// Whether payloads are long enough to carry a timestamp.
    pub stamped: bool,
}

impl Payload {
    pub fn new(size: usize) -> Self {
        // Zeros where the timestamp goes (so "not stamped"), a recognisable filler after.
        let mut bytes = vec![0xab; size];
        if let Some(stamp) = bytes.get_mut(..STAMP_LEN) {
            stamp.fill(0);
        }
        Self {
            plain: Bytes::from(bytes),
            stamped: size >= STAMP_LEN,
        }
    }

    /// Message `n` of a sender: stamped with `clock`'s time one time in
    /// [`STAMP_EVERY`], else the plain payload.
    pub fn message(&self, n: u64, buf: &mut BytesMut, clock: Clock) -> Bytes {
        if self.stamped && n % STAMP_EVERY == 0 {
            self.stamp(buf, clock.now_ns())
        } else {
            self.plain.clone()
        }
    }

    /// A copy of the payload with `now_ns` in its first 8 bytes.
    fn stamp(&self, buf: &mut BytesMut, now_ns: u64) -> Bytes {
        buf.extend_from_slice(&now_ns.to_be_bytes());
        buf.extend_from_slice(self.plain.get(STAMP_LEN..).unwrap_or_default());
        buf.split().freeze()
    }
}

/// The send time in a stamped payload.
fn sent_ns(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    match u64::from_be_bytes(bytes) {
        0 => None,
        ns => Some(ns),
    }
}

/// What a subscriber saw.
#[derive(Debug)]
pub struct Received {
    pub count: u64,
    /// When the last message was taken from the subscription.
    pub last: Option<Instant>,
    pub latency: Latency,
}

/// Takes messages from `sub` until `want` arrived or none came for `quiet`. With a
/// `clock`, records the latency of stamped messages.
///
/// Drains what is already buffered without touching a timer, and reads the clock once
/// per drained batch rather than once per message.
pub async fn receive(
    sub: &mut Subscription,
    want: u64,
    quiet: Duration,
    clock: Option<Clock>,
) -> Received {
    let mut got = Received {
        count: 0,
        last: None,
        latency: Latency::new(),
    };
    while got.count < want {
        let Ok(Some(first)) = tokio::time::timeout(quiet, sub.next()).await else {
            break; // quiet for too long, or the client closed
        };
        let mut next = Some(first);
        while let Some(msg) = next {
            got.count += 1;
            if let (Some(clock), Some(sent)) = (clock, sent_ns(&msg.payload)) {
                got.latency.record_ns(clock.now_ns().saturating_sub(sent));
            }
            next = if got.count < want {
                sub.try_next()
            } else {
                None
            };
        }
        got.last = Some(Instant::now());
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_payloads_round_trip() {
        let p = Payload::new(32);
        assert_eq!(sent_ns(&p.plain), None, "the shared payload is unstamped");
        let clock = Clock::new();
        let mut buf = BytesMut::new();
        let s = p.message(0, &mut buf, clock);
        assert_eq!(s.len(), 32);
        assert!(sent_ns(&s).is_some());
        assert_eq!(
            p.message(1, &mut buf, clock),
            p.plain,
            "1 in 100 is stamped"
        );
        assert_eq!(sent_ns(&p.stamp(&mut buf, 12_345)), Some(12_345));
        assert!(!Payload::new(7).stamped);
        assert_eq!(sent_ns(&Payload::new(7).message(0, &mut buf, clock)), None);
    }
}
