//! What the store keeps, and its byte encoding.
//!
//! Integers are big-endian; strings are a `u16` length and UTF-8. A message's envelope
//! is kept as the broker hands it over — its wire form (`codec/PROTOCOL.md`) — so a
//! stored message needs no translation on its way back out, and the store never has to
//! understand it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::QueueId;

/// A message in a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Position in its queue; unique and increasing per queue.
    pub seq: u64,
    /// When it entered the queue, in ms since the Unix epoch.
    pub enqueued_ms: u64,
    /// When it expires (ms since the epoch), if it does.
    pub expires_ms: Option<u64>,
    /// Subject, reply-to, headers and payload in their wire form; opaque to the store.
    pub envelope: Bytes,
}

/// A queue's name and definition. The definition is the broker's business: the store
/// keeps its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub id: QueueId,
    pub name: String,
    pub definition: Vec<u8>,
}

/// What the broker must remember about one message beyond its content.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageMeta {
    /// Delivery attempts made so far.
    pub delivery_count: u32,
    /// The exactly-once consumer that has received it, if any.
    pub held_by: Option<String>,
}

/// One remembered (producer, sequence) pair of the exactly-once deduplication window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DedupEntry {
    pub producer: String,
    pub sequence: u64,
    /// When it was recorded, in ms since the epoch.
    pub at_ms: u64,
}

/// A decoding failure; the caller adds the path and key.
pub(crate) type Corrupt = String;

struct Cursor(Bytes);

impl Cursor {
    fn need(&self, n: usize, what: &str) -> Result<(), Corrupt> {
        if self.0.remaining() < n {
            return Err(format!("{what} runs past the end of the value"));
        }
        Ok(())
    }

    fn u16(&mut self, what: &str) -> Result<u16, Corrupt> {
        self.need(2, what)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self, what: &str) -> Result<u32, Corrupt> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self, what: &str) -> Result<u64, Corrupt> {
        self.need(8, what)?;
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, Corrupt> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }

    fn string(&mut self, what: &str) -> Result<String, Corrupt> {
        let len = usize::from(self.u16(what)?);
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn end(&self, what: &str) -> Result<(), Corrupt> {
        match self.0.remaining() {
            0 => Ok(()),
            n => Err(format!("{n} unexpected bytes after {what}")),
        }
    }
}

/// Names, producer ids and consumer names are validated to be short before they get
/// here; a longer one is refused rather than cut.
fn put_string(dst: &mut BytesMut, s: &str) -> Result<(), Corrupt> {
    let len = u16::try_from(s.len())
        .map_err(|_| format!("string of {} bytes is too long to store", s.len()))?;
    dst.put_u16(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

/// Fixed bytes of a record before its envelope.
const RECORD_HEAD: usize = 8 + 8 + 8;

/// Encodes the messages of one chunk.
pub(crate) fn encode_chunk(messages: &[StoredMessage]) -> Result<BytesMut, Corrupt> {
    let size: usize = messages
        .iter()
        .map(|m| 4 + RECORD_HEAD + m.envelope.len())
        .sum();
    let mut dst = BytesMut::with_capacity(4 + size);
    let count = u32::try_from(messages.len()).map_err(|_| "too many messages in one chunk")?;
    dst.put_u32(count);
    for m in messages {
        let len = u32::try_from(RECORD_HEAD + m.envelope.len()).map_err(|_| "record too large")?;
        dst.put_u32(len);
        dst.put_u64(m.seq);
        dst.put_u64(m.enqueued_ms);
        dst.put_u64(m.expires_ms.unwrap_or(0));
        dst.put_slice(&m.envelope);
    }
    Ok(dst)
}

/// Decodes a chunk, calling `each(index, message)` for every record.
pub(crate) fn decode_chunk(
    value: Bytes,
    mut each: impl FnMut(u32, StoredMessage) -> Result<(), Corrupt>,
) -> Result<u32, Corrupt> {
    let mut c = Cursor(value);
    let count = c.u32("chunk count")?;
    for i in 0..count {
        let len = c.u32("record length")?;
        let len = usize::try_from(len).map_err(|_| "record length overflows")?;
        let mut r = Cursor(c.bytes(len, "record")?);
        let seq = r.u64("seq")?;
        let enqueued_ms = r.u64("enqueued time")?;
        let expires_ms = r.u64("expiry time")?;
        let envelope = r.0;
        each(
            i,
            StoredMessage {
                seq,
                enqueued_ms,
                expires_ms: (expires_ms != 0).then_some(expires_ms),
                envelope,
            },
        )?;
    }
    c.end("the last record")?;
    Ok(count)
}

pub(crate) fn encode_queue(q: &QueueRecord) -> Result<BytesMut, Corrupt> {
    let mut dst = BytesMut::with_capacity(2 + q.name.len() + q.definition.len());
    put_string(&mut dst, &q.name)?;
    dst.put_slice(&q.definition);
    Ok(dst)
}

pub(crate) fn decode_queue(id: QueueId, value: Bytes) -> Result<QueueRecord, Corrupt> {
    let mut c = Cursor(value);
    let name = c.string("queue name")?;
    Ok(QueueRecord {
        id,
        name,
        definition: c.0.to_vec(),
    })
}

pub(crate) fn encode_meta(m: &MessageMeta) -> Result<BytesMut, Corrupt> {
    let mut dst = BytesMut::with_capacity(8);
    dst.put_u32(m.delivery_count);
    put_string(&mut dst, m.held_by.as_deref().unwrap_or(""))?;
    Ok(dst)
}

pub(crate) fn decode_meta(value: Bytes) -> Result<MessageMeta, Corrupt> {
    let mut c = Cursor(value);
    let delivery_count = c.u32("delivery count")?;
    let held_by = c.string("holder")?;
    c.end("message meta")?;
    Ok(MessageMeta {
        delivery_count,
        held_by: (!held_by.is_empty()).then_some(held_by),
    })
}

/// Dedup entries written in one commit share a key; their time is in the key.
pub(crate) fn encode_dedup(entries: &[&DedupEntry]) -> Result<BytesMut, Corrupt> {
    let mut dst = BytesMut::new();
    dst.put_u32(u32::try_from(entries.len()).map_err(|_| "too many dedup entries")?);
    for e in entries {
        put_string(&mut dst, &e.producer)?;
        dst.put_u64(e.sequence);
    }
    Ok(dst)
}

pub(crate) fn decode_dedup(at_ms: u64, value: Bytes) -> Result<Vec<DedupEntry>, Corrupt> {
    let mut c = Cursor(value);
    let count = c.u32("dedup count")?;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(4096));
    for _ in 0..count {
        out.push(DedupEntry {
            producer: c.string("producer")?,
            sequence: c.u64("sequence")?,
            at_ms,
        });
    }
    c.end("dedup entries")?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn message(seq: u64, payload: &str) -> StoredMessage {
        StoredMessage {
            seq,
            enqueued_ms: 1_700_000_000_000 + seq,
            expires_ms: (seq % 2 == 0).then_some(1_800_000_000_000),
            envelope: Bytes::from(format!("envelope {seq} {payload}")),
        }
    }

    #[test]
    fn chunk_round_trip() {
        let msgs: Vec<_> = (10..20).map(|s| message(s, &format!("p{s}"))).collect();
        let bytes = encode_chunk(&msgs).unwrap().freeze();
        let mut back = Vec::new();
        let n = decode_chunk(bytes.clone(), |_, m| {
            back.push(m);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 10);
        assert_eq!(back, msgs);
        let empty = encode_chunk(&[message(1, "")]).unwrap().freeze();
        decode_chunk(empty, |_, m| {
            assert_eq!(m, message(1, ""));
            Ok(())
        })
        .unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode_chunk(bytes.slice(..cut), |_, _| Ok(())).is_err(),
                "truncated at {cut}"
            );
        }
    }

    #[test]
    fn small_records_round_trip() {
        let q = QueueRecord {
            id: 3,
            name: "orders".into(),
            definition: b"{}".to_vec(),
        };
        assert_eq!(
            decode_queue(3, encode_queue(&q).unwrap().freeze()).unwrap(),
            q
        );
        for m in [
            MessageMeta::default(),
            MessageMeta {
                delivery_count: 4,
                held_by: Some("billing".into()),
            },
        ] {
            assert_eq!(decode_meta(encode_meta(&m).unwrap().freeze()).unwrap(), m);
        }
        let e = DedupEntry {
            producer: "p1".into(),
            sequence: 9,
            at_ms: 77,
        };
        assert_eq!(
            decode_dedup(77, encode_dedup(&[&e, &e]).unwrap().freeze()).unwrap(),
            vec![e.clone(), e]
        );
    }
}
