//! The Raft log of a cluster node: every group's entries, votes, committed ids and
//! purge points, in files of their own (`raft-log/`), not in sled.
//!
//! Each change is a record appended to the current file: a length, a CRC-32 and the
//! postcard-encoded [`Record`]. One `fdatasync` ([`RaftLog::sync`]) covers whatever
//! every group wrote since the last one: it runs outside the log's lock, so the groups
//! go on appending meanwhile, and a caller whose writes an earlier sync covered returns
//! at once — the node's groups share each sync, as RabbitMQ's Ra shares its WAL's. An entry is written once, where it stays until
//! it is purged or truncated: memory holds where each entry is (file and offset), and
//! reads go to the file. Entries of up to a MiB in sled cost a blob file each, written,
//! synced and deleted again, and sled's own log rewrote their bytes: on a follower,
//! sled took more than half of the CPU under replicated publishing.
//!
//! A file holds at most about [`FILE_BYTES`]; the next one starts with every group's
//! vote, committed id and purge point, so that a file none of whose entries is still
//! in the log can go — once the sync that made the purge or truncation durable is done
//! (a crash before would otherwise leave a gap at the log's start).
//!
//! After a crash the files are read in order. A record cut short or damaged at the end
//! of the last file is a write the crash interrupted, never synced: the file is cut
//! there. Anywhere else it is corruption, and the node refuses to start.
//!
//! Entries, votes and ids are opaque bytes here: the broker's Raft adapter encodes them.
//! A data directory written by an earlier version (the log in sled, `raft-wal`) is
//! moved here at the first start ([`legacy`]).

mod legacy;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::sled_store::SledStore;
use crate::StorageError;

/// About how many bytes a file holds before the next one starts.
pub const FILE_BYTES: u64 = 64 << 20;

/// The first bytes of every file.
const MAGIC: &[u8; 16] = b"tern raft log 1\n";

/// Length and CRC-32 before each record's payload.
const HEADER: usize = 8;

/// The directory of the log, in the data directory.
const DIR: &str = "raft-log";

/// One change to the log.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Entry {
        group: u64,
        index: u64,
        bytes: Vec<u8>,
    },
    /// Deletes the entries from `from` on.
    Truncate {
        group: u64,
        from: u64,
    },
    /// Deletes the entries up to `upto`, and records `id` as the last purged.
    Purge {
        group: u64,
        upto: u64,
        id: Vec<u8>,
    },
    Vote {
        group: u64,
        vote: Vec<u8>,
    },
    Committed {
        group: u64,
        id: Vec<u8>,
    },
}

/// What a group's log holds, at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RaftLogState {
    /// The last entry.
    pub last: Option<(u64, Vec<u8>)>,
    pub last_purged: Option<Vec<u8>>,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
}

/// The node's Raft log. Cheap to share.
#[derive(Debug, Clone)]
pub struct RaftLog {
    inner: Arc<Mutex<Inner>>,
    /// Held through an `fdatasync`: one at a time, and whoever waited for it finds
    /// its writes covered.
    syncing: Arc<Mutex<()>>,
}

/// Where an entry's record is.
#[derive(Debug, Clone, Copy)]
struct At {
    file: u64,
    /// Of the record's payload.
    offset: u64,
    len: u32,
}

#[derive(Debug, Default)]
struct Group {
    entries: BTreeMap<u64, At>,
    /// The last purged entry's index and id.
    purged: Option<(u64, Vec<u8>)>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
}

#[derive(Debug)]
struct LogFile {
    file: Arc<File>,
    /// Entries of the log in this file.
    live: usize,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    groups: BTreeMap<u64, Group>,
    files: BTreeMap<u64, LogFile>,
    /// The file appended to, and its length.
    current: u64,
    len: u64,
    /// When the next file starts ([`FILE_BYTES`]; less in tests).
    file_bytes: u64,
    /// A file was created since the last sync: the directory must be synced too.
    created: bool,
    /// Files with no entry of the log left, deleted after the next sync.
    dead: Vec<u64>,
    /// Set by a failed write or sync: nothing written after it may be called durable,
    /// so every later write fails too, until the node restarts.
    failed: Option<String>,
    /// Writes made, and how many of the first ones are durable.
    written: u64,
    synced: u64,
    /// `fdatasync`s of the log's files.
    syncs: u64,
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::RaftLog(e)
}

fn file_name(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.log"))
}

impl RaftLog {
    /// Opens the log in `data_dir/raft-log` (created if missing), reading every file
    /// in order; moves a log an earlier version kept in `store` there first.
    ///
    /// # Errors
    ///
    /// A file cannot be read or is damaged before its end, or the move failed.
    pub fn open(store: &SledStore, data_dir: &Path) -> Result<Self, StorageError> {
        let dir = data_dir.join(DIR);
        legacy::migrate(store, data_dir, &dir)?;
        Self::open_dir(&dir)
    }

    /// Opens the log in `dir` (created if missing), reading every file in order.
    fn open_dir(dir: &Path) -> Result<Self, StorageError> {
        Self::open_files(dir, FILE_BYTES)
    }

    fn open_files(dir: &Path, file_bytes: u64) -> Result<Self, StorageError> {
        let dir = dir.to_owned();
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut numbers: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io)?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut inner = Inner {
            dir: dir.clone(),
            groups: BTreeMap::new(),
            files: BTreeMap::new(),
            current: 0,
            len: 0,
            file_bytes,
            created: false,
            dead: Vec::new(),
            failed: None,
            written: 0,
            synced: 0,
            syncs: 0,
        };
        let last = numbers.last().copied();
        for n in numbers {
            let path = file_name(&dir, n);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
            let end = inner.replay(n, &file, &path, Some(n) == last)?;
            inner.files.insert(
                n,
                LogFile {
                    file: Arc::new(file),
                    live: 0,
                },
            );
            inner.current = n;
            inner.len = end;
        }
        inner.count_live();
        if last.is_none() {
            inner.start_file(1)?;
            inner.sync()?;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            syncing: Arc::default(),
        })
    }

    /// Appends `entries` (index, bytes) to `group`'s log: readable at once, durable
    /// after the next [`RaftLog::sync`].
    ///
    /// # Errors
    ///
    /// The write failed, or an earlier one did.
    pub fn append(&self, group: u64, entries: Vec<(u64, Vec<u8>)>) -> Result<(), StorageError> {
        let records = entries
            .into_iter()
            .map(|(index, bytes)| Record::Entry {
                group,
                index,
                bytes,
            })
            .collect();
        self.write(records)
    }

    /// Deletes `group`'s entries from index `from` on; durable after the next sync.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`].
    pub fn truncate(&self, group: u64, from: u64) -> Result<(), StorageError> {
        self.write(vec![Record::Truncate { group, from }])
    }

    /// Deletes `group`'s entries up to index `upto` and records `id` as the last one
    /// purged; durable after the next sync.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`].
    pub fn purge(&self, group: u64, upto: u64, id: Vec<u8>) -> Result<(), StorageError> {
        self.write(vec![Record::Purge { group, upto, id }])
    }

    /// Records `group`'s committed entry id; durable after the next sync.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`].
    pub fn save_committed(&self, group: u64, id: Vec<u8>) -> Result<(), StorageError> {
        self.write(vec![Record::Committed { group, id }])
    }

    /// Records `group`'s vote, durably: Raft's safety rests on a node never voting
    /// twice in a term, across restarts.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::append`], or the sync failed.
    pub fn save_vote(&self, group: u64, vote: Vec<u8>) -> Result<(), StorageError> {
        self.write(vec![Record::Vote { group, vote }])?;
        self.sync()
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    ///
    /// The sync failed (and the log refuses every write from now on: what the sync
    /// covered may or may not be on disk), or an earlier write did.
    pub fn sync(&self) -> Result<(), StorageError> {
        let target = {
            let inner = self.lock();
            inner.check()?;
            inner.written
        };
        let _syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let (file, created, dead, upto) = {
            let mut inner = self.lock();
            inner.check()?;
            if inner.synced >= target {
                return Ok(());
            }
            // Files nothing lives in since a record up to `upto`: deleted once it is
            // durable.
            let dead = std::mem::take(&mut inner.dead);
            let created = std::mem::take(&mut inner.created).then(|| inner.dir.clone());
            (inner.file(inner.current)?, created, dead, inner.written)
        };
        // Outside the lock: writes go on meanwhile. Those before `upto` are in this
        // file, or in one before it, synced when this one started.
        let synced = file.sync_data().and_then(|()| match created {
            // A file was created: its directory entry must be durable too.
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        });
        let mut inner = self.lock();
        inner.syncs += 1;
        inner.fail_on(synced.map_err(StorageError::Sync))?;
        inner.synced = inner.synced.max(upto);
        inner.delete(dead);
        Ok(())
    }

    /// What `group`'s log holds.
    ///
    /// # Errors
    ///
    /// The last entry cannot be read.
    pub fn state(&self, group: u64) -> Result<RaftLogState, StorageError> {
        let (last, state) = {
            let inner = self.lock();
            let Some(g) = inner.groups.get(&group) else {
                return Ok(RaftLogState::default());
            };
            let last = g
                .entries
                .iter()
                .next_back()
                .map(|(index, at)| (*index, *at, inner.file(at.file)));
            let state = RaftLogState {
                last: None,
                last_purged: g.purged.as_ref().map(|(_, id)| id.clone()),
                vote: g.vote.clone(),
                committed: g.committed.clone(),
            };
            (last, state)
        };
        let last = match last {
            Some((index, at, file)) => Some((index, read_entry(file?.as_ref(), at)?)),
            None => None,
        };
        Ok(RaftLogState { last, ..state })
    }

    /// `group`'s entries with indices in `from..to`, in order, stopping once they add
    /// up to `max_bytes` (always at least one, if there is one).
    ///
    /// # Errors
    ///
    /// A file cannot be read.
    pub fn entries(
        &self,
        group: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        if from >= to {
            return Ok(Vec::new());
        }
        // Where they are, under the lock; read outside it: records never change, and
        // an open file stays readable after it is deleted.
        let wanted = {
            let inner = self.lock();
            let Some(g) = inner.groups.get(&group) else {
                return Ok(Vec::new());
            };
            let mut wanted = Vec::new();
            let mut bytes = 0usize;
            for (index, at) in g.entries.range(from..to) {
                if !wanted.is_empty() && bytes + at.len as usize > max_bytes {
                    break;
                }
                bytes += at.len as usize;
                wanted.push((*index, *at, inner.file(at.file)?));
            }
            wanted
        };
        wanted
            .into_iter()
            .map(|(index, at, file)| Ok((index, read_entry(&file, at)?)))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic mid-write leaves a record half-written at worst, which a restart's
        // scan drops: the log is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, records: Vec<Record>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.check()?;
        let written = inner.append(records);
        inner.fail_on(written)
    }
}

/// Reads the entry whose record is `at`.
fn read_entry(file: &File, at: At) -> Result<Vec<u8>, StorageError> {
    let mut payload = vec![0; at.len as usize];
    file.read_exact_at(&mut payload, at.offset).map_err(io)?;
    match postcard::from_bytes(&payload) {
        Ok(Record::Entry { bytes, .. }) => Ok(bytes),
        Ok(_) | Err(_) => Err(StorageError::Corrupt {
            path: PathBuf::from(DIR),
            detail: format!("no entry record at offset {}", at.offset),
        }),
    }
}

impl Inner {
    fn file(&self, n: u64) -> Result<Arc<File>, StorageError> {
        self.files
            .get(&n)
            .map(|f| Arc::clone(&f.file))
            .ok_or_else(|| StorageError::Corrupt {
                path: file_name(&self.dir, n),
                detail: "an entry's file is missing".into(),
            })
    }

    fn check(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(e) => Err(StorageError::Refused {
                detail: format!(
                    "the raft log stopped after a failed write or sync ({e}); restart the node"
                ),
            }),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        if let Err(e) = &result {
            tracing::error!(error = %e, "the raft log failed: this node stops writing until it restarts");
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Reads file `n` from its start, applying each record; returns where the file's
    /// records end. A damaged or short record ends the last file (the file is cut
    /// there); in any other it is corruption.
    fn replay(
        &mut self,
        n: u64,
        file: &File,
        path: &Path,
        last: bool,
    ) -> Result<u64, StorageError> {
        let mut bytes = Vec::new();
        (&*file).read_to_end(&mut bytes).map_err(io)?;
        let corrupt = |detail: String| StorageError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            if last && bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                // Created, and cut off by a crash before its first record.
                file.set_len(0).map_err(io)?;
                file.write_all_at(MAGIC, 0).map_err(io)?;
                return Ok(MAGIC.len() as u64);
            }
            return Err(corrupt("not a tern raft log file".into()));
        }
        let mut at = MAGIC.len();
        while let Some((payload, next)) = parse(&bytes, at) {
            let record: Record = postcard::from_bytes(payload)
                .map_err(|e| corrupt(format!("record at offset {at}: {e}")))?;
            self.apply(
                record,
                At {
                    file: n,
                    offset: (at + HEADER) as u64,
                    len: payload.len() as u32,
                },
            );
            at = next;
        }
        if at < bytes.len() {
            if !last {
                return Err(corrupt(format!("a damaged record at offset {at}")));
            }
            tracing::warn!(
                file = %path.display(),
                offset = at,
                "the raft log ends in a record a crash cut short; dropped"
            );
            file.set_len(at as u64).map_err(io)?;
        }
        Ok(at as u64)
    }

    /// Counts each file's entries, after a replay.
    fn count_live(&mut self) {
        for f in self.files.values_mut() {
            f.live = 0;
        }
        for g in self.groups.values() {
            for at in g.entries.values() {
                if let Some(f) = self.files.get_mut(&at.file) {
                    f.live += 1;
                }
            }
        }
        let current = self.current;
        self.dead = self
            .files
            .iter()
            .filter(|(n, f)| f.live == 0 && **n != current)
            .map(|(n, _)| *n)
            .collect();
    }

    /// Applies `record`, found at `at`, to what memory holds.
    fn apply(&mut self, record: Record, at: At) {
        match record {
            Record::Entry { group, index, .. } => {
                let g = self.groups.entry(group).or_default();
                if let Some(old) = g.entries.insert(index, at) {
                    self.dropped(old);
                }
                self.added(at);
            }
            Record::Truncate { group, from } => {
                let g = self.groups.entry(group).or_default();
                let gone = g.entries.split_off(&from);
                for old in gone.into_values() {
                    self.dropped(old);
                }
            }
            Record::Purge { group, upto, id } => {
                let g = self.groups.entry(group).or_default();
                let kept = g.entries.split_off(&upto.saturating_add(1));
                let gone = std::mem::replace(&mut g.entries, kept);
                g.purged = Some((upto, id));
                for old in gone.into_values() {
                    self.dropped(old);
                }
            }
            Record::Vote { group, vote } => self.groups.entry(group).or_default().vote = Some(vote),
            Record::Committed { group, id } => {
                self.groups.entry(group).or_default().committed = Some(id);
            }
        }
    }

    fn added(&mut self, at: At) {
        if let Some(f) = self.files.get_mut(&at.file) {
            f.live += 1;
        }
    }

    /// An entry left the log: its file may go once nothing of the log is in it.
    fn dropped(&mut self, at: At) {
        if let Some(f) = self.files.get_mut(&at.file) {
            f.live = f.live.saturating_sub(1);
            if f.live == 0 && at.file != self.current {
                self.dead.push(at.file);
            }
        }
    }

    /// Writes `records` at the end of the current file (starting the next one first
    /// if it is full), and applies them.
    fn append(&mut self, records: Vec<Record>) -> Result<(), StorageError> {
        if self.len >= self.file_bytes {
            let next = self.current + 1;
            // The file ends here: what it holds must be durable before the next
            // one's records can count.
            self.sync()?;
            self.start_file(next)?;
        }
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(records.len());
        for record in records {
            let payload = postcard::to_stdvec(&record).map_err(|e| StorageError::Refused {
                detail: format!("cannot encode a raft log record: {e}"),
            })?;
            let len = u32::try_from(payload.len()).map_err(|_| StorageError::Refused {
                detail: "a raft log record over 4 GiB".into(),
            })?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            let offset = self.len + (buf.len() as u64);
            buf.extend_from_slice(&payload);
            placed.push((
                record,
                At {
                    file: self.current,
                    offset,
                    len,
                },
            ));
        }
        let file = self.file(self.current)?;
        file.write_all_at(&buf, self.len).map_err(io)?;
        self.len += buf.len() as u64;
        self.written += 1;
        for (record, at) in placed {
            self.apply(record, at);
        }
        Ok(())
    }

    /// Starts file `n`, with every group's vote, committed id and purge point first,
    /// so that the files before it may go once their entries are out of the log.
    fn start_file(&mut self, n: u64) -> Result<(), StorageError> {
        let path = file_name(&self.dir, n);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        file.write_all(MAGIC).map_err(io)?;
        self.files.insert(
            n,
            LogFile {
                file: Arc::new(file),
                live: 0,
            },
        );
        let previous = self.current;
        self.current = n;
        self.len = MAGIC.len() as u64;
        self.created = true;
        if self.files.get(&previous).is_some_and(|f| f.live == 0) && previous != n {
            self.dead.push(previous);
        }
        let mut state = Vec::new();
        for (group, g) in &self.groups {
            let group = *group;
            if let Some(vote) = &g.vote {
                state.push(Record::Vote {
                    group,
                    vote: vote.clone(),
                });
            }
            if let Some(id) = &g.committed {
                state.push(Record::Committed {
                    group,
                    id: id.clone(),
                });
            }
            if let Some((upto, id)) = &g.purged {
                state.push(Record::Purge {
                    group,
                    upto: *upto,
                    id: id.clone(),
                });
            }
        }
        if state.is_empty() {
            Ok(())
        } else {
            self.append(state)
        }
    }

    /// `fdatasync`s the current file (and the directory, when a file was created),
    /// then deletes the files nothing of the log is in any more.
    fn sync(&mut self) -> Result<(), StorageError> {
        self.file(self.current)?
            .sync_data()
            .map_err(StorageError::Sync)?;
        self.syncs += 1;
        if self.created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(StorageError::Sync)?;
            self.created = false;
        }
        self.synced = self.written;
        let dead = std::mem::take(&mut self.dead);
        self.delete(dead);
        Ok(())
    }

    /// Deletes the files of `dead` that nothing of the log is in (once the records
    /// that emptied them are durable).
    fn delete(&mut self, mut dead: Vec<u64>) {
        dead.sort_unstable();
        dead.dedup();
        for n in dead {
            let still_dead = self.files.get(&n).is_some_and(|f| f.live == 0);
            if still_dead && n != self.current {
                self.files.remove(&n);
                if let Err(e) = std::fs::remove_file(file_name(&self.dir, n)) {
                    tracing::warn!(file = n, error = %e, "cannot delete a raft log file");
                }
            }
        }
    }
}

/// The record at `at` in `bytes`: its payload and where the next record starts, or
/// `None` if none starts there whole and undamaged.
fn parse(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header.get(4..)?.try_into().ok()?);
    let start = at + HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, start + len))
}

/// The log's files, for tests.
#[cfg(test)]
impl RaftLog {
    fn files(&self) -> Vec<u64> {
        self.lock().files.keys().copied().collect()
    }

    fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    fn written(&self) -> u64 {
        self.lock().written
    }
}

#[cfg(test)]
mod tests;
