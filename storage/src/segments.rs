//! Message bodies out of sled: each chunk in an append-only segment file, and in sled a
//! pointer to it.
//!
//! sled 0.34 keeps the values it was given in memory, whatever its `cache_capacity`
//! (measured with heaptrack: all 35 MB of chunk values of a 200 k-message backlog stayed
//! resident, and 600 MB of 100 KB messages took ternd to 800 MB RSS; sled issues #986
//! and #1410 report the same). So the bytes of a chunk are appended to a segment file
//! (`segments/<n>`, a new one past [`SEGMENT_BYTES`]) and sled keeps a 25-byte
//! [`Pointer`]. A segment is deleted once none of its chunks is live, after the flush
//! that made the removal of their pointers durable.
//!
//! # Durability
//!
//! Segment writes are not synced per commit: the broker's write-ahead log holds each
//! commit, chunk bytes included. They are synced at every flush of the store, before
//! sled's own, so a pointer that a flush made durable points at durable bytes. Commits
//! after the last flush are applied again from the write-ahead log at start, which
//! writes their chunks again. A pointer whose bytes are missing or damaged belongs to a
//! commit that sled wrote out on its own and that no synced log record covers — one
//! never confirmed — and recovery drops its chunk.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

/// A segment takes chunks until it is this long; a larger chunk gets one of its own.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;

/// First byte of a pointer value. A chunk stored inline (by an older version) starts
/// with its record count, a `u32` below 2^24, so its first byte is 0.
const POINTER_TAG: u8 = 0xff;
const POINTER_LEN: usize = 1 + 8 + 8 + 4 + 4;

/// Where a chunk's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pointer {
    segment: u64,
    offset: u64,
    len: u32,
    crc: u32,
}

impl Pointer {
    pub fn encode(&self) -> [u8; POINTER_LEN] {
        let mut v = [0u8; POINTER_LEN];
        v[0] = POINTER_TAG;
        v[1..9].copy_from_slice(&self.segment.to_be_bytes());
        v[9..17].copy_from_slice(&self.offset.to_be_bytes());
        v[17..21].copy_from_slice(&self.len.to_be_bytes());
        v[21..25].copy_from_slice(&self.crc.to_be_bytes());
        v
    }

    /// The pointer in a chunk value, or `None` when the value is an inline chunk.
    pub fn decode(value: &[u8]) -> Option<Self> {
        let v: &[u8; POINTER_LEN] = value.try_into().ok()?;
        if v[0] != POINTER_TAG {
            return None;
        }
        let u64_at = |i: usize| {
            v.get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let u32_at = |i: usize| {
            v.get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
        };
        Some(Self {
            segment: u64_at(1)?,
            offset: u64_at(9)?,
            len: u32_at(17)?,
            crc: u32_at(21)?,
        })
    }
}

/// The segment files of one store.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    /// A std `Mutex`: appends come from the one writer thread, reads take no lock.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The segment appended to: its number, file and length.
    current: Option<(u64, File, u64)>,
    /// The number of the next segment.
    next: u64,
    /// Live chunks per segment.
    live: HashMap<u64, u32>,
    /// Segments written since the last sync.
    unsynced: HashSet<u64>,
    /// A segment file was created since the last sync: the directory needs one too.
    created: bool,
    /// Segments with no live chunk, deleted after the next flush of the store.
    dead: HashSet<u64>,
}

impl Segments {
    /// Opens (creating) the segment directory `dir`.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or listed.
    pub fn open(dir: &Path) -> io::Result<Self> {
        if !dir.exists() {
            std::fs::create_dir(dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let next = Self::numbers(dir)?.max().map_or(0, |n| n + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                next,
                ..State::default()
            }),
        })
    }

    fn numbers(dir: &Path) -> io::Result<impl Iterator<Item = u64>> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())))
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(segment.to_string())
    }

    // Each update is a single field or map operation: a poisoned state is still whole.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a chunk's bytes (unsynced) and counts it live.
    ///
    /// # Errors
    ///
    /// The segment could not be created or written.
    pub fn append(&self, bytes: &[u8]) -> io::Result<Pointer> {
        let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("chunk too large"))?;
        let mut st = self.state();
        let full = st
            .current
            .as_ref()
            .is_some_and(|(_, _, end)| *end > 0 && *end + u64::from(len) > SEGMENT_BYTES);
        if full {
            if let Some((n, _, _)) = st.current.take() {
                if st.live.get(&n).copied().unwrap_or(0) == 0 {
                    st.dead.insert(n);
                }
            }
        }
        if st.current.is_none() {
            let n = st.next;
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.path(n))?;
            st.next += 1;
            st.created = true;
            st.current = Some((n, file, 0));
        }
        let Some((segment, file, end)) = st.current.as_mut() else {
            return Err(io::Error::other("no current segment"));
        };
        let (segment, offset) = (*segment, *end);
        file.write_all_at(bytes, offset)?;
        *end += u64::from(len);
        st.unsynced.insert(segment);
        *st.live.entry(segment).or_default() += 1;
        Ok(Pointer {
            segment,
            offset,
            len,
            crc: crc32fast::hash(bytes),
        })
    }

    /// Counts a chunk found in the store live.
    pub fn recovered(&self, p: &Pointer) {
        *self.state().live.entry(p.segment).or_default() += 1;
    }

    /// A chunk is gone (settled, its queue deleted, or overwritten): its segment is
    /// deleted after the next flush once it holds no live chunk.
    pub fn release(&self, p: &Pointer) {
        let mut st = self.state();
        let left = match st.live.get_mut(&p.segment) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        let current = st.current.as_ref().is_some_and(|(n, _, _)| *n == p.segment);
        if left == 0 && !current {
            st.live.remove(&p.segment);
            st.dead.insert(p.segment);
        }
    }

    /// The chunk bytes `p` points at, or `None` when they are missing or damaged.
    ///
    /// # Errors
    ///
    /// The segment exists but cannot be read.
    pub fn read(&self, p: &Pointer) -> io::Result<Option<Bytes>> {
        let file = match File::open(self.path(p.segment)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0; usize::try_from(p.len).unwrap_or(usize::MAX)];
        match file.read_exact_at(&mut buf, p.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok((crc32fast::hash(&buf) == p.crc).then(|| Bytes::from(buf)))
    }

    /// Makes every segment write so far durable: before sled's flush, so that no
    /// durable pointer points at bytes that are not.
    ///
    /// # Errors
    ///
    /// A sync failed.
    pub fn sync(&self) -> io::Result<()> {
        let (unsynced, created) = {
            let mut st = self.state();
            (
                std::mem::take(&mut st.unsynced),
                std::mem::take(&mut st.created),
            )
        };
        for n in unsynced {
            match File::open(self.path(n)) {
                Ok(f) => f.sync_data()?,
                // Deleted since: nothing of it is needed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Deletes the segments that hold no live chunk, once the store's flush made the
    /// removal of their pointers durable.
    pub fn delete_dead(&self) {
        let dead = std::mem::take(&mut self.state().dead);
        for n in dead {
            // One that cannot be deleted now holds no live chunk at the next start,
            // and is deleted then.
            let _ = std::fs::remove_file(self.path(n));
        }
    }

    /// Starts a recovery count: forgets every live count and the current segment, so
    /// that appends after recovery go to a new one.
    pub fn begin_recovery(&self) {
        let mut st = self.state();
        st.live.clear();
        st.current = None;
    }

    /// Ends a recovery count: segments no recovered chunk points at are deleted with
    /// the next flush.
    ///
    /// # Errors
    ///
    /// The directory cannot be listed.
    pub fn end_recovery(&self) -> io::Result<()> {
        let numbers: Vec<u64> = Self::numbers(&self.dir)?.collect();
        let mut st = self.state();
        for n in numbers {
            if !st.live.contains_key(&n) {
                st.dead.insert(n);
            }
        }
        Ok(())
    }

    /// Bytes the segment files take.
    ///
    /// # Errors
    ///
    /// The directory cannot be listed.
    pub fn size(&self) -> io::Result<u64> {
        let mut total = 0;
        for e in std::fs::read_dir(&self.dir)? {
            total += e?.metadata()?.len();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_inline_chunks_are_not_pointers() {
        let p = Pointer {
            segment: 7,
            offset: 1 << 33,
            len: 99,
            crc: 0xdead_beef,
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(p));
        let mut inline = vec![0u8; POINTER_LEN];
        inline[3] = 1;
        assert_eq!(Pointer::decode(&inline), None);
        assert_eq!(Pointer::decode(&p.encode()[..24]), None);
    }

    #[test]
    fn segments_roll_and_die_when_their_chunks_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(&dir.path().join("segments")).unwrap();
        let half = vec![1u8; usize::try_from(SEGMENT_BYTES / 2 + 1).unwrap()];
        let a = segs.append(&half).unwrap();
        let b = segs.append(&half).unwrap();
        assert_ne!(
            a.segment, b.segment,
            "the second does not fit the first segment"
        );
        assert_eq!(segs.read(&a).unwrap().as_deref(), Some(&half[..]));
        segs.sync().unwrap();

        segs.release(&a);
        assert!(segs.path(a.segment).exists(), "deleted only after a flush");
        segs.delete_dead();
        assert!(!segs.path(a.segment).exists());
        assert_eq!(segs.read(&a).unwrap(), None, "missing bytes read as none");

        // The current segment stays, even with nothing live in it.
        segs.release(&b);
        segs.delete_dead();
        assert!(segs.path(b.segment).exists());

        // Damaged bytes read as none.
        let c = segs.append(b"chunk").unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(segs.path(c.segment))
            .unwrap();
        file.write_all_at(b"X", c.offset).unwrap();
        assert_eq!(segs.read(&c).unwrap(), None);
    }
}
