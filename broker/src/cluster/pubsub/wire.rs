//! What one node sends another for pub/sub: postcard-encoded [`Batch`]es, answered
//! with a [`Reply`]. The batches decoded here are outside input (the `peer_request`
//! fuzz target drives [`decode`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::router::remote::InterestKey;

/// What the sender's interest did and the messages for the receiver's subscribers, in
/// the order they happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Batch {
    /// Chosen at random each time the sender starts: a receiver that sees a new one
    /// knows nothing of the sender's interest until a full one comes.
    pub incarnation: u64,
    /// Counts the sender's batches to this receiver, from 1 within an incarnation: a
    /// gap means a batch was lost, and with it maybe a change of interest.
    pub seq: u64,
    pub items: Vec<Item>,
}

/// One thing a [`Batch`] carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Item {
    /// The sender's whole interest, replacing what the receiver knew of it.
    Interest(Vec<InterestKey>),
    /// The sender's first subscription with this key.
    Added(InterestKey),
    /// The sender's last subscription with this key went.
    Removed(InterestKey),
    /// A message for the receiver's plain subscribers (`plain`) and for one member of
    /// each of `groups`. The envelope is in the client protocol's wire form.
    Message {
        envelope: Bytes,
        plain: bool,
        groups: Vec<String>,
    },
}

/// The receiver's answer to a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Everything was applied.
    Taken,
    /// The receiver does not know the sender's interest (it restarted, or a batch was
    /// lost): the messages were delivered, the changes ignored, and the next batch is
    /// to start with the whole interest.
    Resync,
}

/// A batch as another node sent it.
///
/// # Errors
///
/// The bytes are no batch of this version.
pub(crate) fn decode(bytes: &[u8]) -> Result<Batch, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable pub/sub batch: {e}"))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode for a peer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_survive_encoding_and_garbage_is_refused() {
        let batch = Batch {
            incarnation: 7,
            seq: 1,
            items: vec![
                Item::Interest(vec![InterestKey {
                    pattern: "a.>".into(),
                    group: Some("g".into()),
                }]),
                Item::Message {
                    envelope: Bytes::from_static(b"\x00\x01a\x00\x00\x00\x00"),
                    plain: true,
                    groups: vec!["g".into()],
                },
            ],
        };
        let bytes = encode(&batch).unwrap();
        assert_eq!(decode(&bytes).unwrap(), batch);
        for garbage in [&b""[..], b"\xff", b"\x01\x01\x09"] {
            assert!(decode(garbage).is_err(), "{garbage:02x?}");
        }
    }
}
