//! The sled engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::file_sync::FileSync;
use crate::record::{self, Corrupt};
use crate::segments::{Pointer, Segments};
use crate::{
    Commit, GroupRecord, QueueId, Recover, RecoveredChunk, StorageError, Store, StoredMessage,
    FORMAT_VERSION,
};

/// Key of the format marker in sled's default tree.
pub(crate) const FORMAT_KEY: &[u8] = b"tern.format";

/// A file of our own, written once the format marker is durable. sled discards a log
/// it cannot read and opens empty; this file is how a damaged store is told apart from
/// a new one (or from a crash before the first marker reached the disk).
const STORE_FILE: &str = "tern-store";

const QUEUE: u8 = b'q';
const NEXT_SEQ: u8 = b'n';
pub(crate) const CHUNK: u8 = b'c';
const SETTLED: u8 = b'a';
const META: u8 = b'm';
const DEDUP: u8 = b'd';
/// A queue's replica group, when another group holds its messages.
const PLACEMENT: u8 = b'p';
/// A replica group's members.
const GROUP: u8 = b'g';
/// The index of the last log entry whose commit the store holds.
const LOG_INDEX: &[u8] = b"w";
/// The number the next declared queue gets.
const NEXT_QUEUE_ID: &[u8] = b"i";
/// A replicated log's applied state ([`Commit::applied`]).
const APPLIED: &[u8] = b"r";
/// The segment files of chunk bodies, in the data directory.
const SEGMENTS_DIR: &str = "segments";

fn key5(prefix: u8, queue: QueueId) -> [u8; 5] {
    let mut k = [prefix, 0, 0, 0, 0];
    k[1..].copy_from_slice(&queue.to_be_bytes());
    k
}

fn key9(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The `u64`s of `bytes`, if it is made of whole ones.
fn u64s(bytes: &[u8]) -> Option<Vec<u64>> {
    let words = bytes.chunks_exact(8);
    if !words.remainder().is_empty() {
        return None;
    }
    Some(
        words
            .map(|w| u64::from_be_bytes(w.try_into().unwrap_or_default()))
            .collect(),
    )
}

fn key13(prefix: u8, a: u32, b: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = prefix;
    k[1..5].copy_from_slice(&a.to_be_bytes());
    k[5..].copy_from_slice(&b.to_be_bytes());
    k
}

fn key17(prefix: u8, a: u64, b: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..].copy_from_slice(&b.to_be_bytes());
    k
}

/// The `u32` at bytes 1..5 and the `u64` at 5..13 of a key, if it is that long.
fn split13(key: &[u8]) -> Option<(u32, u64)> {
    let a = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?);
    let b = u64::from_be_bytes(key.get(5..13)?.try_into().ok()?);
    Some((a, b))
}

/// sled's page cache when none is given.
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

/// The broker's store on sled.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    /// The syncs sled's own flush leaves out.
    files: FileSync,
    /// Chunk bodies, which sled holds pointers to.
    segments: Segments,
    path: PathBuf,
    /// Distinguishes dedup keys written in the same millisecond.
    dedup_counter: AtomicU64,
    /// Sync new chunk bodies before their pointers are written ([`SledStore::sync_bodies`]).
    sync_bodies: bool,
}

impl SledStore {
    /// Opens the store in `dir`, creating it when `dir` is missing or empty.
    ///
    /// Blocks on file I/O; call it before serving or from `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// * [`StorageError::NotATernStore`]: `dir` holds files but no tern store.
    /// * [`StorageError::IncompatibleFormat`]: written by another format version.
    /// * [`StorageError::Open`]: sled cannot open it (locked by another broker, corrupt,
    ///   permissions).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// As [`SledStore::open`], with sled's page cache bounded to `cache_bytes`. The
    /// broker keeps its own index of every queue (and the bodies its memory budget
    /// allows), so sled's cache only serves recovery and bodies read back from disk:
    /// sled's default of 1 GiB would mostly hold copies of what the broker already has.
    ///
    /// # Errors
    ///
    /// As [`SledStore::open`].
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StorageError> {
        let path = dir.to_path_buf();
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                return Err(StorageError::Open {
                    path,
                    source: sled::Error::Io(e),
                })
            }
        };
        if !fresh && !dir.join("conf").exists() {
            return Err(StorageError::NotATernStore { path });
        }
        // The broker decides when to flush (group commit, sync policy); sled's own
        // timer would only add fsyncs nobody waits for.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|source| StorageError::Open {
                path: path.clone(),
                source,
            })?;
        let files = FileSync::open(dir).map_err(StorageError::Sync)?;
        let segments = Segments::open(&dir.join(SEGMENTS_DIR)).map_err(StorageError::Segments)?;
        let store = Self {
            db,
            files,
            segments,
            path,
            dedup_counter: AtomicU64::new(0),
            sync_bodies: false,
        };
        store.check_format(fresh)?;
        // Chunks are released as commits settle them, from the first commit on (a
        // replay of the write-ahead log comes before recovery): their segments' live
        // counts must be known from the start.
        for item in store.db.scan_prefix([CHUNK]) {
            let (_, value) = item?;
            if let Some(p) = Pointer::decode(&value) {
                store.segments.recovered(&p);
            }
        }
        Ok(store)
    }

    fn check_format(&self, fresh: bool) -> Result<(), StorageError> {
        match self.db.get(FORMAT_KEY)? {
            Some(v) => {
                let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("format marker has {} bytes, expected 4", v.len()),
                })?;
                let found = u32::from_be_bytes(bytes);
                if found == FORMAT_VERSION {
                    Ok(())
                } else {
                    Err(StorageError::IncompatibleFormat {
                        path: self.path.clone(),
                        found,
                        expected: FORMAT_VERSION,
                    })
                }
            }
            None if self.path.join(STORE_FILE).exists() => Err(StorageError::Corrupt {
                path: self.path.clone(),
                detail: "the format marker is gone: the store's log is damaged or was \
                         truncated (restore the data directory from a backup)"
                    .into(),
            }),
            None if fresh || self.db.is_empty() => {
                self.db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
                self.flush()
            }
            None => Err(StorageError::NotATernStore {
                path: self.path.clone(),
            }),
        }?;
        self.write_store_file()
    }

    /// Writes [`STORE_FILE`] (once) and makes it durable.
    fn write_store_file(&self) -> Result<(), StorageError> {
        let file = self.path.join(STORE_FILE);
        if file.exists() {
            return Ok(());
        }
        let io = |e| StorageError::Io(sled::Error::Io(e));
        let tmp = self.path.join(format!("{STORE_FILE}.tmp"));
        std::fs::write(&tmp, format!("tern store, format {FORMAT_VERSION}\n")).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &file).map_err(io)?;
        // The rename is durable only once the directory is.
        std::fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// Makes [`Store::apply`] sync the bodies of new chunks before it writes their
    /// pointers, so that no pointer can outlive a crash without its bytes. A replicated
    /// log needs this: it applies entries that are durable in the Raft log without
    /// syncing the store, and re-applies after a crash only the entries after the last
    /// one the store holds — a chunk pointer that survived without its bytes would be a
    /// committed message lost on this replica. The embedded write-ahead log does not: it
    /// replays every commit since its checkpoint, rewriting the chunks.
    #[must_use]
    pub fn sync_bodies(mut self) -> Self {
        self.sync_bodies = true;
        self
    }

    /// The sled database, for the Raft log that shares it (`raft_log`) and snapshots.
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The segment files, for snapshots.
    pub(crate) fn segments(&self) -> &Segments {
        &self.segments
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, key: &[u8], detail: Corrupt) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            detail: format!("key {key:02x?}: {detail}"),
        }
    }

    fn scan(
        &self,
        prefix: u8,
        mut each: impl FnMut(&[u8], Bytes) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        for item in self.db.scan_prefix([prefix]) {
            let (k, v) = item?;
            each(&k, Bytes::copy_from_slice(&v))?;
        }
        Ok(())
    }

    /// Appends `commit`'s chunks to segments, recording their pointers in `appended`
    /// as they go, in the order [`SledStore::apply_batch`] takes them.
    fn write_bodies(
        &self,
        commit: &Commit,
        appended: &mut Vec<Pointer>,
    ) -> Result<(), StorageError> {
        for messages in commit
            .chunks
            .iter()
            .map(|(_, m)| m)
            .filter(|m| !m.is_empty())
        {
            let bytes = record::encode_chunk(messages)
                .map_err(|detail| StorageError::Refused { detail })?;
            let pointer = self
                .segments
                .append(&bytes)
                .map_err(|e| StorageError::Refused {
                    detail: format!("writing a message segment failed: {e}"),
                })?;
            appended.push(pointer);
        }
        Ok(())
    }

    /// Builds and applies `commit`'s batch, its chunks at `bodies` (from
    /// [`SledStore::write_bodies`]); returns the chunk pointers it removed or replaced.
    fn apply_batch(
        &self,
        commit: &Commit,
        bodies: &[Pointer],
    ) -> Result<Vec<Pointer>, StorageError> {
        let mut bodies = bodies.iter();
        let mut batch = sled::Batch::default();
        let mut released = Vec::new();
        let refuse = |detail: Corrupt| StorageError::Refused { detail };
        for &id in &commit.delete_queues {
            batch.remove(&key5(QUEUE, id));
            batch.remove(&key5(NEXT_SEQ, id));
            batch.remove(&key5(PLACEMENT, id));
            for prefix in [CHUNK, SETTLED, META] {
                for item in self.db.scan_prefix(key5(prefix, id)) {
                    let (key, value) = item?;
                    released.extend(Pointer::decode(&value).filter(|_| prefix == CHUNK));
                    batch.remove(key);
                }
            }
        }
        for q in &commit.put_queues {
            batch.insert(
                &key5(QUEUE, q.id),
                record::encode_queue(q).map_err(refuse)?.as_ref(),
            );
        }
        for (queue, messages) in &commit.chunks {
            if let Some(first) = messages.first() {
                let key = key13(CHUNK, *queue, first.seq);
                // A commit applied again (from the write-ahead log) writes the chunk
                // again: the copy it replaces is released.
                released.extend(self.pointer_at(&key)?);
                let pointer = bodies.next().ok_or_else(|| StorageError::Refused {
                    detail: "a chunk without its body written".into(),
                })?;
                batch.insert(&key, &pointer.encode());
            }
        }
        for (queue, next) in &commit.next_seqs {
            batch.insert(&key5(NEXT_SEQ, *queue), &next.to_be_bytes());
        }
        for (queue, first_seq, bitmap) in &commit.settled {
            let key = key13(SETTLED, *queue, *first_seq);
            match bitmap {
                Some(bits) => batch.insert(&key, bits.as_slice()),
                None => {
                    batch.remove(&key);
                    let chunk = key13(CHUNK, *queue, *first_seq);
                    released.extend(self.pointer_at(&chunk)?);
                    batch.remove(&chunk);
                }
            }
        }
        for (queue, seq, meta) in &commit.metas {
            let key = key13(META, *queue, *seq);
            match meta {
                Some(m) => batch.insert(&key, record::encode_meta(m).map_err(refuse)?.as_ref()),
                None => batch.remove(&key),
            }
        }
        if let Some(first) = commit.dedup.first() {
            // The log index keeps the key the same when a commit is replayed from the
            // write-ahead log; the counter separates commits made without one.
            let n = match commit.log_index {
                Some(i) => i,
                None => self.dedup_counter.fetch_add(1, Ordering::Relaxed) | 1 << 63,
            };
            let entries: Vec<_> = commit.dedup.iter().collect();
            let value = record::encode_dedup(&entries).map_err(refuse)?;
            batch.insert(&key17(DEDUP, first.at_ms, n), value.as_ref());
        }
        if let Some(before) = commit.dedup_forget_before {
            for key in self
                .db
                .range(key17(DEDUP, 0, 0)..key17(DEDUP, before, 0))
                .keys()
            {
                batch.remove(key?);
            }
        }
        if let Some(i) = commit.log_index {
            batch.insert(LOG_INDEX, &i.to_be_bytes());
        }
        if let Some(id) = commit.next_queue_id {
            batch.insert(NEXT_QUEUE_ID, &id.to_be_bytes());
        }
        if let Some(applied) = &commit.applied {
            batch.insert(APPLIED, applied.as_slice());
        }
        for (queue, group) in &commit.placements {
            batch.insert(&key5(PLACEMENT, *queue), &group.to_be_bytes());
        }
        for (group, record) in &commit.groups {
            let key = key9(GROUP, *group);
            match record {
                // The number of members, the members, the founders.
                Some(r) => {
                    let value: Vec<u8> = std::iter::once(r.members.len() as u64)
                        .chain(r.members.iter().copied())
                        .chain(r.founders.iter().copied())
                        .flat_map(u64::to_be_bytes)
                        .collect();
                    batch.insert(&key, value);
                }
                None => batch.remove(&key),
            }
        }
        self.db.apply_batch(batch)?;
        Ok(released)
    }

    /// The segment pointer stored at chunk key `key`, if any.
    fn pointer_at(&self, key: &[u8]) -> Result<Option<Pointer>, StorageError> {
        Ok(self.db.get(key)?.and_then(|v| Pointer::decode(&v)))
    }

    /// Settled bitmaps by (queue, first seq).
    fn settled_maps(&self) -> Result<HashMap<(QueueId, u64), Vec<u8>>, StorageError> {
        let mut maps = HashMap::new();
        self.scan(SETTLED, |k, v| {
            let id = split13(k).ok_or_else(|| self.corrupt(k, "short key".into()))?;
            maps.insert(id, v.to_vec());
            Ok(())
        })?;
        Ok(maps)
    }
}

/// Whether bit `i` of a settled bitmap is set.
pub(crate) fn is_settled(bitmap: &[u8], i: u32) -> bool {
    let byte = usize::try_from(i / 8).ok().and_then(|b| bitmap.get(b));
    byte.is_some_and(|b| b & (1 << (i % 8)) != 0)
}

impl Store for SledStore {
    fn recover(&self, into: &mut dyn Recover) -> Result<(), StorageError> {
        self.scan(QUEUE, |k, v| {
            let id = k
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| self.corrupt(k, "short key".into()))?;
            let q = record::decode_queue(id, v).map_err(|e| self.corrupt(k, e))?;
            into.queue(q);
            Ok(())
        })?;
        self.scan(PLACEMENT, |k, v| {
            let id = k
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| self.corrupt(k, "short key".into()))?;
            let group = match u64s(v.as_ref()).as_deref() {
                Some([group]) => *group,
                _ => return Err(self.corrupt(k, format!("{} bytes, expected 8", v.len()))),
            };
            into.placement(id, group);
            Ok(())
        })?;
        self.scan(GROUP, |k, v| {
            let group = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| self.corrupt(k, "short key".into()))?;
            let words = u64s(v.as_ref()).unwrap_or_default();
            let record = match words.split_first() {
                Some((n, rest)) if usize::try_from(*n).is_ok_and(|n| n <= rest.len()) => {
                    let (members, founders) = rest.split_at(*n as usize);
                    GroupRecord {
                        members: members.to_vec(),
                        founders: founders.to_vec(),
                    }
                }
                _ => return Err(self.corrupt(k, format!("{} bytes, not a group", v.len()))),
            };
            into.group(group, record);
            Ok(())
        })?;
        self.scan(NEXT_SEQ, |k, v| {
            let id = k
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| self.corrupt(k, "short key".into()))?;
            let next = v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| self.corrupt(k, format!("{} bytes, expected 8", v.len())))?;
            into.next_seq(id, next);
            Ok(())
        })?;
        self.scan(META, |k, v| {
            let (queue, seq) = split13(k).ok_or_else(|| self.corrupt(k, "short key".into()))?;
            into.meta(
                queue,
                seq,
                record::decode_meta(v).map_err(|e| self.corrupt(k, e))?,
            );
            Ok(())
        })?;
        let mut settled = self.settled_maps()?;
        self.segments.begin_recovery();
        self.scan(CHUNK, |k, v| {
            let (queue, first_seq) =
                split13(k).ok_or_else(|| self.corrupt(k, "short key".into()))?;
            let bitmap = settled.remove(&(queue, first_seq)).unwrap_or_default();
            let v = match Pointer::decode(&v) {
                None => v,
                Some(p) => match self.segments.read(&p).map_err(StorageError::Segments)? {
                    Some(bytes) => {
                        self.segments.recovered(&p);
                        bytes
                    }
                    None => {
                        // Written by sled on its own after the last flush, and covered
                        // by no synced log record: never confirmed.
                        tracing::warn!(queue, first_seq, "a chunk's bytes are missing or damaged; its unconfirmed messages are dropped");
                        return Ok(());
                    }
                },
            };
            let mut live = Vec::new();
            let len = record::decode_chunk(v, |i, m| {
                if !is_settled(&bitmap, i) {
                    live.push(m);
                }
                Ok(())
            })
            .map_err(|e| self.corrupt(k, e))?;
            into.chunk(RecoveredChunk {
                queue,
                first_seq,
                len,
                settled: bitmap,
                live,
            });
            Ok(())
        })?;
        self.segments
            .end_recovery()
            .map_err(StorageError::Segments)?;
        into.log_index(Store::log_index(self)?);
        if let Some(v) = self.db.get(NEXT_QUEUE_ID)? {
            let id = v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                self.corrupt(NEXT_QUEUE_ID, format!("{} bytes, expected 4", v.len()))
            })?;
            into.next_queue_id(id);
        }
        self.scan(DEDUP, |k, v| {
            let at_ms = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| self.corrupt(k, "short key".into()))?;
            for e in record::decode_dedup(at_ms, v).map_err(|e| self.corrupt(k, e))? {
                into.dedup(e);
            }
            Ok(())
        })
    }

    fn apply(&self, commit: &Commit) -> Result<(), StorageError> {
        self.apply_all(std::slice::from_ref(commit))
    }

    /// Writes the bodies of every commit, syncs them once (with `sync_bodies`), then
    /// applies each commit's batch in order: one sync for a run of entries.
    fn apply_all(&self, commits: &[Commit]) -> Result<(), StorageError> {
        let mut appended = Vec::new();
        let mut bodies = Vec::with_capacity(commits.len());
        let mut written = Ok(());
        for commit in commits {
            let start = appended.len();
            written = self.write_bodies(commit, &mut appended);
            if written.is_err() {
                break;
            }
            bodies.push(start..appended.len());
        }
        if written.is_ok() && self.sync_bodies && !appended.is_empty() {
            // The pointers must never reach the disk before the bytes they point at.
            written = self.segments.sync().map_err(StorageError::Sync);
        }
        let mut applied = 0;
        let mut result = written;
        if result.is_ok() {
            for (commit, at) in commits.iter().zip(&bodies) {
                match self.apply_batch(commit, appended.get(at.clone()).unwrap_or_default()) {
                    Ok(released) => {
                        for p in &released {
                            self.segments.release(p);
                        }
                        applied = at.end;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        // The bytes of commits not applied stay in their segment, unreferenced.
        for p in appended.get(applied..).unwrap_or_default() {
            self.segments.release(p);
        }
        result
    }

    /// The segment files' syncs, sled's flush, then the syncs sled leaves out
    /// (`file_sync`); then the segments nothing points at any more are deleted.
    fn flush(&self) -> Result<(), StorageError> {
        self.segments.sync().map_err(StorageError::Sync)?;
        self.db.flush()?;
        self.files.sync().map_err(StorageError::Sync)?;
        self.segments.delete_dead();
        Ok(())
    }

    fn read_chunk(&self, queue: QueueId, seq: u64) -> Result<Vec<StoredMessage>, StorageError> {
        let last = self
            .db
            .range(key13(CHUNK, queue, 0)..=key13(CHUNK, queue, seq))
            .next_back()
            .transpose()?;
        let Some((k, v)) = last else {
            return Ok(Vec::new());
        };
        let Some((_, first_seq)) = split13(&k) else {
            return Err(self.corrupt(&k, "short key".into()));
        };
        let bitmap = self
            .db
            .get(key13(SETTLED, queue, first_seq))?
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let bytes = match Pointer::decode(&v) {
            None => Bytes::copy_from_slice(&v),
            Some(p) => self
                .segments
                .read(&p)
                .map_err(StorageError::Segments)?
                .ok_or_else(|| self.corrupt(&k, "its segment bytes are missing".into()))?,
        };
        let mut live = Vec::new();
        let len = record::decode_chunk(bytes, |i, m| {
            if !is_settled(&bitmap, i) {
                live.push(m);
            }
            Ok(())
        })
        .map_err(|e| self.corrupt(&k, e))?;
        if seq - first_seq >= u64::from(len) {
            // The chunk before `seq` ends before it: no chunk holds it.
            return Ok(Vec::new());
        }
        Ok(live)
    }

    fn log_index(&self) -> Result<u64, StorageError> {
        match self.db.get(LOG_INDEX)? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| self.corrupt(LOG_INDEX, format!("{} bytes, expected 8", v.len()))),
            None => Ok(0),
        }
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(APPLIED)?.map(|v| v.to_vec()))
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        let segments = self.segments.size().map_err(StorageError::Segments)?;
        Ok(self.db.size_on_disk()? + segments)
    }

    fn free_bytes(&self) -> Result<u64, StorageError> {
        crate::file_sync::free_bytes(&self.path).map_err(StorageError::Sync)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens the store at `path` once the one dropped before has let go of it: sled
    /// releases its file lock when its I/O threads finish with the dropped store, a
    /// moment after the drop.
    pub(crate) fn reopen(path: &Path) -> Result<SledStore, StorageError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(path) {
                Err(StorageError::Open { source, .. })
                    if source.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                result => return result,
            }
        }
    }
    use crate::record::tests::message;
    use crate::{DedupEntry, MessageMeta, QueueRecord};

    /// Everything `recover` reports, collected.
    #[derive(Default, Debug)]
    struct Collected {
        queues: Vec<QueueRecord>,
        next_seqs: Vec<(QueueId, u64)>,
        chunks: Vec<RecoveredChunk>,
        metas: Vec<(QueueId, u64, MessageMeta)>,
        dedup: Vec<DedupEntry>,
        placements: Vec<(QueueId, u64)>,
        groups: Vec<(u64, GroupRecord)>,
    }

    impl Recover for Collected {
        fn queue(&mut self, record: QueueRecord) {
            self.queues.push(record);
        }
        fn next_seq(&mut self, queue: QueueId, next: u64) {
            self.next_seqs.push((queue, next));
        }
        fn chunk(&mut self, chunk: RecoveredChunk) {
            self.chunks.push(chunk);
        }
        fn meta(&mut self, queue: QueueId, seq: u64, meta: MessageMeta) {
            self.metas.push((queue, seq, meta));
        }
        fn dedup(&mut self, entry: DedupEntry) {
            self.dedup.push(entry);
        }
        fn log_index(&mut self, _: u64) {}
        fn next_queue_id(&mut self, _: QueueId) {}
        fn placement(&mut self, queue: QueueId, group: u64) {
            self.placements.push((queue, group));
        }
        fn group(&mut self, group: u64, record: GroupRecord) {
            self.groups.push((group, record));
        }
    }

    fn group(members: &[u64], founders: &[u64]) -> GroupRecord {
        GroupRecord {
            members: members.to_vec(),
            founders: founders.to_vec(),
        }
    }

    /// A cluster's directory: where queues are placed and who is in each group, kept
    /// across a restart, gone with the queue or the group.
    #[test]
    fn placements_and_groups_survive_and_go_with_their_queue_or_group() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .apply(&Commit {
                    put_queues: vec![queue(1, "a"), queue(2, "b")],
                    placements: vec![(1, 7), (2, 8)],
                    groups: vec![
                        (7, Some(group(&[1, 2, 4], &[1, 2, 3]))),
                        (8, Some(group(&[2], &[2]))),
                    ],
                    ..Commit::default()
                })
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path()).unwrap();
        let c = recovered(&store);
        assert_eq!(c.placements, vec![(1, 7), (2, 8)]);
        assert_eq!(
            c.groups,
            vec![(7, group(&[1, 2, 4], &[1, 2, 3])), (8, group(&[2], &[2]))]
        );
        store
            .apply(&Commit {
                delete_queues: vec![2],
                groups: vec![(8, None)],
                ..Commit::default()
            })
            .unwrap();
        let c = recovered(&store);
        assert_eq!(c.placements, vec![(1, 7)]);
        assert_eq!(c.groups, vec![(7, group(&[1, 2, 4], &[1, 2, 3]))]);
    }

    fn recovered(store: &SledStore) -> Collected {
        let mut c = Collected::default();
        store.recover(&mut c).unwrap();
        c
    }

    fn queue(id: QueueId, name: &str) -> QueueRecord {
        QueueRecord {
            id,
            name: name.into(),
            definition: format!("def of {name}").into_bytes(),
        }
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = reopen(dir.path()).unwrap();
            store
                .apply(&Commit {
                    put_queues: vec![queue(1, "orders"), queue(2, "audit")],
                    chunks: vec![
                        (1, (0..4).map(|s| message(s, "a")).collect()),
                        (2, vec![message(0, "b")]),
                    ],
                    next_seqs: vec![(1, 4), (2, 1)],
                    dedup: vec![DedupEntry {
                        producer: "p".into(),
                        sequence: 1,
                        at_ms: 1000,
                    }],
                    ..Commit::default()
                })
                .unwrap();
            // Settle records 1 and 3 of the first chunk, record a redelivery of 2.
            store
                .apply(&Commit {
                    settled: vec![(1, 0, Some(vec![0b1010]))],
                    metas: vec![(
                        1,
                        2,
                        Some(MessageMeta {
                            delivery_count: 2,
                            held_by: None,
                        }),
                    )],
                    ..Commit::default()
                })
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path()).unwrap();
        let c = recovered(&store);
        assert_eq!(c.queues, vec![queue(1, "orders"), queue(2, "audit")]);
        assert_eq!(c.next_seqs, vec![(1, 4), (2, 1)]);
        assert_eq!(c.chunks.len(), 2);
        let q1 = &c.chunks[0];
        assert_eq!((q1.queue, q1.first_seq, q1.len), (1, 0, 4));
        assert_eq!(
            q1.live.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [0, 2],
            "settled records are not recovered"
        );
        assert_eq!(c.chunks[1].live, vec![message(0, "b")]);
        assert_eq!(c.metas.len(), 1);
        assert_eq!(c.dedup.len(), 1);

        let seqs = |q, seq| {
            store
                .read_chunk(q, seq)
                .unwrap()
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(store.read_chunk(1, 2).unwrap()[1], message(2, "a"));
        assert_eq!(seqs(1, 3), [0, 2], "settled records are left out");
        assert_eq!(seqs(1, 9), [0u64; 0], "never stored");
        assert_eq!(seqs(3, 0), [0u64; 0], "no such queue");
    }

    #[test]
    fn chunk_bodies_live_in_segments_deleted_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let segments = dir.path().join(SEGMENTS_DIR);
        let files = || std::fs::read_dir(&segments).unwrap().count();
        {
            let store = reopen(dir.path()).unwrap();
            store
                .apply(&Commit {
                    chunks: vec![(1, vec![message(0, "a"), message(1, "b")])],
                    ..Commit::default()
                })
                .unwrap();
            store.flush().unwrap();
            assert_eq!(files(), 1);
            assert_eq!(store.read_chunk(1, 1).unwrap()[1], message(1, "b"));
            store
                .apply(&Commit {
                    settled: vec![(1, 0, None)],
                    ..Commit::default()
                })
                .unwrap();
            store.flush().unwrap();
        }
        // The segment was being appended to; at the next start nothing points at it.
        let store = reopen(dir.path()).unwrap();
        assert!(recovered(&store).chunks.is_empty());
        store.flush().unwrap();
        assert_eq!(files(), 0);
    }

    #[test]
    fn a_segment_outlives_one_of_its_chunks_settled_before_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let two = Commit {
            chunks: vec![(1, vec![message(0, "a")]), (2, vec![message(0, "b")])],
            ..Commit::default()
        };
        {
            let store = reopen(dir.path()).unwrap();
            store.apply(&two).unwrap();
            store.flush().unwrap();
        }
        // As when the write-ahead log is replayed: commits before recovery.
        let store = reopen(dir.path()).unwrap();
        store
            .apply(&Commit {
                settled: vec![(1, 0, None)],
                ..Commit::default()
            })
            .unwrap();
        store.flush().unwrap();
        assert_eq!(store.read_chunk(2, 0).unwrap(), vec![message(0, "b")]);
    }

    #[test]
    fn chunks_stored_inline_by_an_older_version_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        let inline = record::encode_chunk(&[message(0, "old")]).unwrap();
        store
            .db
            .insert(key13(CHUNK, 2, 0), inline.as_ref())
            .unwrap();
        assert_eq!(recovered(&store).chunks[0].live, vec![message(0, "old")]);
        assert_eq!(store.read_chunk(2, 0).unwrap(), vec![message(0, "old")]);
    }

    #[test]
    fn commits_applied_together_are_applied_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap().sync_bodies();
        store
            .apply_all(&[
                Commit {
                    chunks: vec![(1, vec![message(5, "x"), message(6, "y")])],
                    ..Commit::default()
                },
                Commit::default(),
                Commit {
                    chunks: vec![(2, vec![message(0, "z")]), (1, vec![message(7, "w")])],
                    ..Commit::default()
                },
                // The first chunk, settled by a later commit of the same run.
                Commit {
                    settled: vec![(1, 5, None)],
                    ..Commit::default()
                },
            ])
            .unwrap();
        assert!(store.read_chunk(1, 6).unwrap().is_empty());
        assert_eq!(store.read_chunk(1, 7).unwrap(), vec![message(7, "w")]);
        assert_eq!(store.read_chunk(2, 0).unwrap(), vec![message(0, "z")]);
        drop(store);
        let store = reopen(dir.path()).unwrap();
        let chunks: Vec<_> = recovered(&store)
            .chunks
            .iter()
            .map(|c| c.live.clone())
            .collect();
        assert_eq!(chunks, [vec![message(7, "w")], vec![message(0, "z")]]);
    }

    #[test]
    fn settling_a_whole_chunk_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        store
            .apply(&Commit {
                chunks: vec![(1, vec![message(5, "x"), message(6, "y")])],
                ..Commit::default()
            })
            .unwrap();
        store
            .apply(&Commit {
                settled: vec![(1, 5, None)],
                ..Commit::default()
            })
            .unwrap();
        assert!(recovered(&store).chunks.is_empty());
        assert!(store.read_chunk(1, 6).unwrap().is_empty());
    }

    #[test]
    fn deleting_a_queue_removes_its_data_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        store
            .apply(&Commit {
                put_queues: vec![queue(1, "a"), queue(2, "b")],
                chunks: vec![(1, vec![message(0, "x")]), (2, vec![message(0, "y")])],
                next_seqs: vec![(1, 1), (2, 1)],
                metas: vec![(1, 0, Some(MessageMeta::default()))],
                ..Commit::default()
            })
            .unwrap();
        store
            .apply(&Commit {
                delete_queues: vec![1],
                ..Commit::default()
            })
            .unwrap();
        let c = recovered(&store);
        assert_eq!(c.queues, vec![queue(2, "b")]);
        assert_eq!(c.next_seqs, vec![(2, 1)]);
        assert_eq!(c.chunks.len(), 1);
        assert_eq!(c.chunks[0].queue, 2);
        assert!(c.metas.is_empty());
    }

    #[test]
    fn dedup_entries_are_forgotten_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        for at_ms in [100, 200, 300] {
            store
                .apply(&Commit {
                    dedup: vec![DedupEntry {
                        producer: "p".into(),
                        sequence: at_ms,
                        at_ms,
                    }],
                    ..Commit::default()
                })
                .unwrap();
        }
        store
            .apply(&Commit {
                dedup_forget_before: Some(250),
                ..Commit::default()
            })
            .unwrap();
        let seqs: Vec<u64> = recovered(&store).dedup.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, [300]);
    }

    #[test]
    fn a_corrupt_chunk_is_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        store
            .db
            .insert(key13(CHUNK, 1, 0), &b"\x00\x00\x00\x05junk"[..])
            .unwrap();
        let mut c = Collected::default();
        let err = store.recover(&mut c).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn creates_then_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        drop(reopen(&path).unwrap());
        reopen(&path).unwrap();
    }

    #[test]
    fn refuses_a_directory_of_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let err = reopen(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::NotATernStore { .. }), "{err}");
        assert!(dir.path().join("notes.txt").exists(), "nothing wiped");
    }

    #[test]
    fn refuses_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = reopen(dir.path()).unwrap();
            s.db.insert(FORMAT_KEY, &99u32.to_be_bytes()).unwrap();
            s.db.flush().unwrap();
        }
        let err = reopen(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::IncompatibleFormat { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_store_whose_log_was_overwritten_is_corrupt_not_new() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = reopen(dir.path()).unwrap();
            store
                .apply(&Commit {
                    put_queues: vec![queue(1, "orders")],
                    ..Commit::default()
                })
                .unwrap();
            store.flush().unwrap();
        }
        let db = dir.path().join("db");
        let len = usize::try_from(std::fs::metadata(&db).unwrap().len()).unwrap();
        std::fs::write(&db, vec![0xAB; len]).unwrap();
        // sled either reads the garbage as an empty log (then the format marker is
        // missing where our own file says a store was) or refuses it outright, as the
        // garbage's length happens to fall; either way the store is refused, naming the
        // directory, and never opened as a new one.
        let err = reopen(dir.path()).unwrap_err();
        match &err {
            StorageError::Corrupt { .. } => {
                assert!(err.to_string().contains("format marker is gone"), "{err}");
            }
            StorageError::Open { path, .. } => assert_eq!(path, dir.path()),
            other => panic!("expected the store to be refused as damaged, got {other}"),
        }
    }

    #[test]
    fn refuses_garbage_in_sled_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"\xff\xfe garbage").unwrap();
        std::fs::write(dir.path().join("db"), vec![0xAB; 4096]).unwrap();
        assert!(reopen(dir.path()).is_err());
    }
}
