//! The Raft log as tern kept it before `raft-log/`: records of a write-ahead log of
//! their own (`raft-wal`), applied to sled ("R", "V", "K", "P" keys). Read once, at
//! the first start of a newer version, to move the log into `raft-log/`
//! ([`super::RaftLog::open`]); nothing writes it any more.
//!
//! Each record sets its keys to absolute values, so applying again what sled already
//! holds changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{RaftLog, Record, DIR};
use crate::sled_store::SledStore;
use crate::{StorageError, Store, Wal};

const ENTRY: u8 = b'R';
const VOTE: u8 = b'V';
const COMMITTED: u8 = b'K';
const PURGED: u8 = b'P';

fn group_key(prefix: u8, group: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&group.to_be_bytes());
    k
}

fn entry_key(group: u64, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = ENTRY;
    k[1..9].copy_from_slice(&group.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

fn index_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

/// One change to the log, as a write-ahead log record of the earlier layout: a frozen
/// on-disk format, kept apart from the new log's `Record` (which has one entry per
/// record) so that neither can change the other.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Append {
        group: u64,
        entries: Vec<(u64, Vec<u8>)>,
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

/// The earlier version's write-ahead log, in the data directory.
const WAL: &str = "raft-wal";

/// Moves a log kept in sled by an earlier version into `dir`, once: written to a
/// directory beside it, synced, renamed into place; then sled's copy and `raft-wal` go.
/// A crash before the rename starts the move over; one after it only finishes the
/// cleanup.
///
/// # Errors
///
/// The old log cannot be read, the new one written, or the old one removed.
pub(super) fn migrate(store: &SledStore, data_dir: &Path, dir: &Path) -> Result<(), StorageError> {
    let wal = data_dir.join(WAL);
    if !wal.exists() {
        return Ok(());
    }
    if !dir.exists() {
        replay(store, &wal)?;
        let groups = read(store)?;
        let moving = data_dir.join(format!("{DIR}.new"));
        let _ = std::fs::remove_dir_all(&moving);
        let log = RaftLog::open_dir(&moving)?;
        let mut entries = 0usize;
        for (group, g) in groups {
            if let Some(vote) = g.vote {
                log.write(vec![Record::Vote { group, vote }])?;
            }
            if let Some(id) = g.committed {
                log.write(vec![Record::Committed { group, id }])?;
            }
            if let Some((upto, id)) = g.purged {
                log.write(vec![Record::Purge { group, upto, id }])?;
            }
            entries += g.entries.len();
            for chunk in g.entries.chunks(64) {
                log.append(group, chunk.to_vec())?;
            }
        }
        log.sync()?;
        drop(log);
        std::fs::rename(&moving, dir).map_err(super::io)?;
        sync_dir(data_dir)?;
        tracing::info!(entries, "moved the raft log out of sled into {DIR}/");
    }
    remove(store)?;
    std::fs::remove_file(&wal).map_err(super::io)?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::Sync)
}

/// Replays the write-ahead log at `wal_path` into `store`'s sled and checkpoints it:
/// afterwards the log is all in sled.
fn replay(store: &SledStore, wal_path: &Path) -> Result<(), StorageError> {
    let (_, records) = Wal::open(wal_path, u64::MAX).map_err(StorageError::Wal)?;
    let mut records = records.into_iter();
    let marker = records.next().filter(|r| r.payload.is_empty());
    let first = marker.as_ref().map_or(0, |m| m.index + 1);
    for (expected, r) in (first..).zip(records.take_while(|_| marker.is_some())) {
        if r.index != expected {
            break;
        }
        let op: Op = postcard::from_bytes(&r.payload).map_err(|e| StorageError::Corrupt {
            path: wal_path.to_owned(),
            detail: format!("raft log record {}: {e}", r.index),
        })?;
        apply(store.db(), &op)?;
    }
    store.flush()
}

/// One group's log as sled holds it.
#[derive(Debug, Default)]
struct Group {
    entries: Vec<(u64, Vec<u8>)>,
    /// The last purged entry: its index (the one before the first entry) and id.
    purged: Option<(u64, Vec<u8>)>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
}

/// Every group's log in `store`'s sled.
fn read(store: &SledStore) -> Result<BTreeMap<u64, Group>, StorageError> {
    let db = store.db();
    let mut groups: BTreeMap<u64, Group> = BTreeMap::new();
    for prefix in [ENTRY, VOTE, COMMITTED, PURGED] {
        for item in db.scan_prefix([prefix]) {
            let (k, v) = item?;
            let Some(group) = k.get(1..9).and_then(|g| g.try_into().ok()) else {
                continue;
            };
            let g = groups.entry(u64::from_be_bytes(group)).or_default();
            match prefix {
                ENTRY => g.entries.extend(index_of(&k).map(|i| (i, v.to_vec()))),
                VOTE => g.vote = Some(v.to_vec()),
                COMMITTED => g.committed = Some(v.to_vec()),
                _ => g.purged = Some((0, v.to_vec())),
            }
        }
    }
    for g in groups.values_mut() {
        // The purge point is the index before the first entry left (or, with none
        // left, the last entry's: openraft keeps one after a purge).
        if let Some((index, _)) = &mut g.purged {
            *index = g
                .entries
                .first()
                .map_or(0, |(first, _)| first.saturating_sub(1));
        }
    }
    Ok(groups)
}

/// Removes every group's log from `store`'s sled, durably.
fn remove(store: &SledStore) -> Result<(), StorageError> {
    let db = store.db();
    let mut batch = sled::Batch::default();
    for prefix in [ENTRY, VOTE, COMMITTED, PURGED] {
        for key in db.scan_prefix([prefix]).keys() {
            batch.remove(key?);
        }
    }
    db.apply_batch(batch)?;
    store.flush()
}

/// Applies `op` to sled, atomically.
fn apply(db: &sled::Db, op: &Op) -> Result<(), StorageError> {
    let mut batch = sled::Batch::default();
    match op {
        Op::Append { group, entries } => {
            for (index, bytes) in entries {
                batch.insert(&entry_key(*group, *index), bytes.as_slice());
            }
        }
        Op::Truncate { group, from } => {
            for key in db
                .range(entry_key(*group, *from)..=entry_key(*group, u64::MAX))
                .keys()
            {
                batch.remove(key?);
            }
        }
        Op::Purge { group, upto, id } => {
            for key in db
                .range(entry_key(*group, 0)..=entry_key(*group, *upto))
                .keys()
            {
                batch.remove(key?);
            }
            batch.insert(&group_key(PURGED, *group), id.as_slice());
        }
        Op::Vote { group, vote } => batch.insert(&group_key(VOTE, *group), vote.as_slice()),
        Op::Committed { group, id } => batch.insert(&group_key(COMMITTED, *group), id.as_slice()),
    }
    db.apply_batch(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory of the earlier layout: entries 1–5 and the vote in sled, then
    /// a purge up to 2 and entry 6 only in `raft-wal`, not yet applied to sled.
    fn earlier_layout(dir: &Path) -> SledStore {
        let store = crate::sled_store::tests::reopen(dir).unwrap();
        let entries = (1..=5).map(|i| (i, vec![i as u8; 10])).collect();
        apply(store.db(), &Op::Append { group: 1, entries }).unwrap();
        let vote = b"vote".to_vec();
        apply(store.db(), &Op::Vote { group: 1, vote }).unwrap();
        store.flush().unwrap();
        let (mut wal, _) = Wal::open(&dir.join(WAL), 1 << 20).unwrap();
        wal.checkpointed(0).unwrap();
        let later = [
            Op::Purge {
                group: 1,
                upto: 2,
                id: b"p2".to_vec(),
            },
            Op::Append {
                group: 1,
                entries: vec![(6, vec![6; 10])],
            },
        ];
        for (i, op) in later.iter().enumerate() {
            let payload = postcard::to_stdvec(op).unwrap();
            assert!(wal.append(i as u64 + 1, &payload).unwrap());
        }
        wal.sync().unwrap();
        store
    }

    #[test]
    fn a_log_of_the_earlier_layout_moves_out_of_sled_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = earlier_layout(dir.path());
        for _ in 0..2 {
            let log = RaftLog::open(&store, dir.path()).unwrap();
            let got = log.entries(1, 0, 100, usize::MAX).unwrap();
            assert_eq!(
                got.iter().map(|(i, v)| (*i, v[0])).collect::<Vec<_>>(),
                vec![(3, 3), (4, 4), (5, 5), (6, 6)]
            );
            let state = log.state(1).unwrap();
            assert_eq!(state.vote.as_deref(), Some(&b"vote"[..]));
            assert_eq!(state.last_purged.as_deref(), Some(&b"p2"[..]));
            assert!(!dir.path().join(WAL).exists());
            assert!(read(&store).unwrap().is_empty(), "nothing left in sled");
        }
    }

    /// A crash after the new log was renamed into place but before the old one was
    /// removed: the next start only removes it.
    #[test]
    fn a_move_cut_short_after_the_rename_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = earlier_layout(dir.path());
        drop(RaftLog::open(&store, dir.path()).unwrap());
        let _ = earlier_layout_wal_again(dir.path());
        let log = RaftLog::open(&store, dir.path()).unwrap();
        assert_eq!(log.entries(1, 0, 100, usize::MAX).unwrap().len(), 4);
        assert!(!dir.path().join(WAL).exists());
    }

    fn earlier_layout_wal_again(dir: &Path) -> Wal {
        let (mut wal, _) = Wal::open(&dir.join(WAL), 1 << 20).unwrap();
        wal.checkpointed(0).unwrap();
        wal
    }
}
