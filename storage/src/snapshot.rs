//! The store's state as one stream of bytes, and back: how a replica far behind (or new)
//! gets the state of the others when the log it lacks has been purged.
//!
//! # Format
//!
//! ```text
//! "TERNSNAP" | version: u32
//! then records:   1 | key_len: u32 | key | value_len: u32 | value
//! then the end:   0 | crc32 of every byte before it: u32          (integers big-endian)
//! ```
//!
//! Every key of the store is written except the Raft log's (entries, votes, committed
//! and purge points: each node keeps its own) and the format marker. A chunk's value is
//! its bytes (as format 1 stored them inline), not its segment pointer: the receiver
//! writes them to segments of its own.

use std::io::{self, Read, Write};

use crate::segments::Pointer;
use crate::sled_store::{SledStore, CHUNK, FORMAT_KEY};
use crate::{StorageError, Store};

const MAGIC: &[u8; 8] = b"TERNSNAP";
const VERSION: u32 = 1;
const RECORD: u8 = 1;
const END: u8 = 0;

/// Keys that are the node's own, never part of a snapshot: the Raft log's.
fn node_local(key: &[u8]) -> bool {
    key == FORMAT_KEY || matches!(key.first(), Some(b'R' | b'V' | b'K' | b'P'))
}

/// A writer that keeps the checksum of what went through it.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// A reader that keeps the checksum of what came through it.
struct Checked<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Checked<R> {
    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.take(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// A length-prefixed byte string, refused past `max` bytes so that a damaged length
    /// cannot make us allocate gigabytes.
    fn bytes(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a snapshot record of {len} bytes"),
            ));
        }
        let mut v = vec![0; len];
        self.take(&mut v)?;
        Ok(v)
    }
}

/// Longest key or value in a snapshot: a chunk holds at most one commit's messages.
const MAX_VALUE: usize = 1 << 30;

impl SledStore {
    /// Writes everything the store holds (but the Raft log) to `out`. The caller makes
    /// sure nothing is applied meanwhile.
    ///
    /// # Errors
    ///
    /// The store or a segment cannot be read, or `out` cannot be written.
    pub fn export(&self, out: &mut dyn Write) -> Result<(), StorageError> {
        let io = |e: io::Error| StorageError::Refused {
            detail: format!("writing a snapshot failed: {e}"),
        };
        let mut out = Summed {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        out.put(MAGIC).map_err(io)?;
        out.put(&VERSION.to_be_bytes()).map_err(io)?;
        for item in self.db().iter() {
            let (key, value) = item?;
            if node_local(&key) {
                continue;
            }
            let body = match (key.first(), Pointer::decode(&value)) {
                (Some(&CHUNK), Some(p)) => self
                    .segments()
                    .read(&p)
                    .map_err(StorageError::Segments)?
                    .ok_or_else(|| StorageError::Corrupt {
                        path: self.path().to_owned(),
                        detail: format!("key {:02x?}: the chunk's bytes are missing", &*key),
                    })?
                    .to_vec(),
                _ => value.to_vec(),
            };
            for part in [&[RECORD][..], &len32(&key)?, &key, &len32(&body)?, &body] {
                out.put(part).map_err(io)?;
            }
        }
        out.put(&[END]).map_err(io)?;
        let crc = out.crc.clone().finalize();
        out.inner.write_all(&crc.to_be_bytes()).map_err(io)?;
        out.inner.flush().map_err(io)
    }

    /// Replaces everything the store holds (but the Raft log) with the snapshot read
    /// from `input`, and flushes. On an error the store may hold part of it: the caller
    /// must not use it before a snapshot is imported whole.
    ///
    /// # Errors
    ///
    /// `input` is not a whole, undamaged snapshot of this version, or the store cannot
    /// be written.
    pub fn import(&self, input: &mut dyn Read) -> Result<(), StorageError> {
        let bad = |e: io::Error| StorageError::Refused {
            detail: format!("not a usable snapshot: {e}"),
        };
        let mut input = Checked {
            inner: input,
            crc: crc32fast::Hasher::new(),
        };
        let mut magic = [0; 8];
        input.take(&mut magic).map_err(bad)?;
        let version = input.u32().map_err(bad)?;
        if &magic != MAGIC || version != VERSION {
            return Err(bad(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("magic {magic:02x?}, version {version}"),
            )));
        }
        // Everything of ours goes first; chunks release their segments.
        let mut batch = sled::Batch::default();
        for item in self.db().iter() {
            let (key, value) = item?;
            if node_local(&key) {
                continue;
            }
            if key.first() == Some(&CHUNK) {
                if let Some(p) = Pointer::decode(&value) {
                    self.segments().release(&p);
                }
            }
            batch.remove(key);
        }
        self.db().apply_batch(batch)?;
        loop {
            let mut tag = [0; 1];
            input.take(&mut tag).map_err(bad)?;
            match tag[0] {
                END => break,
                RECORD => {}
                other => {
                    return Err(bad(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("record tag {other}"),
                    )))
                }
            }
            let key = input.bytes(MAX_VALUE).map_err(bad)?;
            let value = input.bytes(MAX_VALUE).map_err(bad)?;
            if node_local(&key) {
                continue;
            }
            if key.first() == Some(&CHUNK) {
                let p = self
                    .segments()
                    .append(&value)
                    .map_err(StorageError::Segments)?;
                self.db().insert(key, &p.encode())?;
            } else {
                self.db().insert(key, value)?;
            }
        }
        let want = input.crc.clone().finalize();
        let mut crc = [0; 4];
        input.inner.read_exact(&mut crc).map_err(bad)?;
        if u32::from_be_bytes(crc) != want {
            return Err(bad(io::Error::new(
                io::ErrorKind::InvalidData,
                "checksum mismatch",
            )));
        }
        self.flush()
    }
}

fn len32(bytes: &[u8]) -> Result<[u8; 4], StorageError> {
    u32::try_from(bytes.len())
        .map(u32::to_be_bytes)
        .map_err(|_| StorageError::Refused {
            detail: format!("a snapshot record of {} bytes", bytes.len()),
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Commit, QueueRecord, RaftLog, StoredMessage};

    fn message(seq: u64, body: &str) -> StoredMessage {
        StoredMessage {
            seq,
            envelope: bytes::Bytes::from(body.to_owned()),
            enqueued_ms: 1,
            expires_ms: None,
        }
    }

    fn commit() -> Commit {
        Commit {
            put_queues: vec![QueueRecord {
                id: 1,
                name: "orders".into(),
                definition: b"def".to_vec(),
            }],
            chunks: vec![(1, vec![message(1, "one"), message(2, "two")])],
            next_seqs: vec![(1, 3)],
            log_index: Some(7),
            applied: Some(b"applied".to_vec()),
            ..Commit::default()
        }
    }

    #[test]
    fn a_snapshot_moves_the_state_but_not_the_raft_log() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from = Arc::new(SledStore::open(a.path()).unwrap());
        from.apply(&commit()).unwrap();
        let from_log = RaftLog::open(&from, a.path()).unwrap();
        from_log.append(1, vec![(1, b"entry".to_vec())]).unwrap();
        let mut snap = Vec::new();
        from.export(&mut snap).unwrap();

        let to = Arc::new(SledStore::open(b.path()).unwrap());
        to.apply(&Commit {
            put_queues: vec![QueueRecord {
                id: 9,
                name: "stale".into(),
                definition: Vec::new(),
            }],
            chunks: vec![(9, vec![message(1, "stale")])],
            ..Commit::default()
        })
        .unwrap();
        let to_log = RaftLog::open(&to, b.path()).unwrap();
        to_log.append(1, vec![(5, b"mine".to_vec())]).unwrap();
        to.import(&mut snap.as_slice()).unwrap();

        assert_eq!(
            to.read_chunk(1, 2).unwrap(),
            vec![message(1, "one"), message(2, "two")]
        );
        assert!(to.read_chunk(9, 1).unwrap().is_empty());
        assert_eq!(to.log_index().unwrap(), 7);
        assert_eq!(to.applied().unwrap().as_deref(), Some(&b"applied"[..]));
        let kept = to_log.entries(1, 0, 10, usize::MAX).unwrap();
        assert_eq!(kept, vec![(5, b"mine".to_vec())]);
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let store = SledStore::open(a.path()).unwrap();
        store.apply(&commit()).unwrap();
        let mut snap = Vec::new();
        store.export(&mut snap).unwrap();
        for cut in [0, 5, 12, snap.len() / 2, snap.len() - 1] {
            assert!(store.import(&mut &snap[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = snap.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        assert!(store.import(&mut flipped.as_slice()).is_err());
        store.import(&mut snap.as_slice()).unwrap();
        assert_eq!(store.read_chunk(1, 1).unwrap().len(), 2);
    }
}
