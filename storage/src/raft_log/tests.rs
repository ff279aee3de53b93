use super::*;

fn entries(range: std::ops::Range<u64>, tag: u8) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, vec![tag; 10])).collect()
}

/// A log whose files start over every `file_bytes`.
fn open(dir: &Path, file_bytes: u64) -> RaftLog {
    RaftLog::open_files(dir, file_bytes).unwrap()
}

/// The last file of the log in `dir`.
fn last_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().unwrap()
}

#[test]
fn appends_truncates_and_purges_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), FILE_BYTES);
    log.append(1, entries(1..6, b'a')).unwrap();
    log.append(2, entries(1..3, b'b')).unwrap();
    log.truncate(1, 4).unwrap();
    log.append(1, entries(4..5, b'c')).unwrap();
    log.purge(1, 2, b"id2".to_vec()).unwrap();
    log.sync().unwrap();
    let got = log.entries(1, 0, 100, usize::MAX).unwrap();
    assert_eq!(
        got.iter().map(|(i, v)| (*i, v[0])).collect::<Vec<_>>(),
        vec![(3, b'a'), (4, b'c')]
    );
    let state = log.state(1).unwrap();
    assert_eq!(state.last, Some((4, vec![b'c'; 10])));
    assert_eq!(state.last_purged.as_deref(), Some(&b"id2"[..]));
    assert_eq!(log.state(2).unwrap().last.map(|l| l.0), Some(2));
    assert_eq!(log.state(3).unwrap(), RaftLogState::default());
}

#[test]
fn reads_stop_at_the_byte_budget_but_return_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), FILE_BYTES);
    log.append(1, entries(1..11, b'x')).unwrap();
    // Each entry of 10 bytes is a record of 14.
    assert_eq!(log.entries(1, 1, 11, 45).unwrap().len(), 3);
    assert_eq!(log.entries(1, 1, 11, 1).unwrap().len(), 1);
    assert!(log.entries(1, 5, 5, 100).unwrap().is_empty());
}

#[test]
fn survives_a_restart_across_truncations_and_new_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 4096);
        for i in 0..50u64 {
            log.append(1, vec![(i + 1, vec![i as u8; 100])]).unwrap();
            if i % 7 == 0 {
                log.truncate(1, i + 1).unwrap();
                log.append(1, vec![(i + 1, vec![200; 100])]).unwrap();
            }
        }
        log.save_vote(1, b"vote".to_vec()).unwrap();
        log.save_committed(1, b"c49".to_vec()).unwrap();
        log.sync().unwrap();
        assert!(log.files().len() > 1, "the files started over");
    }
    let log = open(dir.path(), 4096);
    let all = log.entries(1, 0, u64::MAX, usize::MAX).unwrap();
    assert_eq!(all.len(), 50);
    for (i, v) in &all {
        let want = if (i - 1) % 7 == 0 { 200 } else { (i - 1) as u8 };
        assert_eq!(v[0], want, "entry {i}");
    }
    let state = log.state(1).unwrap();
    assert_eq!(state.vote.as_deref(), Some(&b"vote"[..]));
    assert_eq!(state.committed.as_deref(), Some(&b"c49"[..]));
}

/// Purged files go, and what they held of the vote, the committed id and the purge
/// point is not lost with them: the next file starts with it.
#[test]
fn files_of_purged_entries_go_and_the_state_stays() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 2048);
        log.save_vote(1, b"vote".to_vec()).unwrap();
        log.save_committed(1, b"c".to_vec()).unwrap();
        for i in 1..=100u64 {
            log.append(1, vec![(i, vec![1; 100])]).unwrap();
        }
        log.sync().unwrap();
        let before = log.files();
        log.purge(1, 90, b"p90".to_vec()).unwrap();
        // Gone only once the purge is durable.
        assert_eq!(log.files(), before);
        log.sync().unwrap();
        let after = log.files();
        assert!(after.len() < before.len(), "{before:?} -> {after:?}");
        assert_eq!(after.first(), before.iter().find(|n| after.contains(n)));
    }
    let log = open(dir.path(), 2048);
    let left = log.entries(1, 0, u64::MAX, usize::MAX).unwrap();
    assert_eq!(left.first().map(|e| e.0), Some(91));
    assert_eq!(left.len(), 10);
    let state = log.state(1).unwrap();
    assert_eq!(state.vote.as_deref(), Some(&b"vote"[..]));
    assert_eq!(state.committed.as_deref(), Some(&b"c"[..]));
    assert_eq!(state.last_purged.as_deref(), Some(&b"p90"[..]));
}

/// A crash cuts the last record short (or leaves garbage after it): the log ends at
/// the last whole record, and goes on from there.
#[test]
fn a_torn_last_record_is_dropped_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), FILE_BYTES);
        log.append(1, entries(1..4, b'a')).unwrap();
        log.sync().unwrap();
    }
    let file = last_file(dir.path());
    let len = std::fs::metadata(&file).unwrap().len();
    // The last record loses its last bytes, and garbage follows where they were.
    let torn = OpenOptions::new().write(true).open(&file).unwrap();
    torn.set_len(len - 3).unwrap();
    torn.write_all_at(b"\x05\0\0\0garbage", len - 3).unwrap();
    {
        let log = open(dir.path(), FILE_BYTES);
        let got = log.entries(1, 0, 100, usize::MAX).unwrap();
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
        log.append(1, entries(3..5, b'b')).unwrap();
        log.sync().unwrap();
    }
    let log = open(dir.path(), FILE_BYTES);
    let got = log.entries(1, 0, 100, usize::MAX).unwrap();
    assert_eq!(
        got.iter().map(|(i, v)| (*i, v[0])).collect::<Vec<_>>(),
        vec![(1, b'a'), (2, b'a'), (3, b'b'), (4, b'b')]
    );
}

#[test]
fn damage_before_the_last_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 1024);
        for i in 1..=40u64 {
            log.append(1, vec![(i, vec![7; 100])]).unwrap();
        }
        log.sync().unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() > 2);
    let first = &files[0];
    let mut bytes = std::fs::read(first).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(first, bytes).unwrap();
    let err = RaftLog::open_files(dir.path(), 1024).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}

#[test]
fn a_file_that_is_not_a_raft_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(file_name(dir.path(), 1), b"something else entirely").unwrap();
    assert!(matches!(
        RaftLog::open_files(dir.path(), 1024),
        Err(StorageError::Corrupt { .. })
    ));
}

/// A crash right after a new file was created leaves it empty, or with part of its
/// first line: it is started again.
#[test]
fn a_new_file_cut_short_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), FILE_BYTES);
        log.append(1, entries(1..3, b'a')).unwrap();
        log.sync().unwrap();
    }
    std::fs::write(file_name(dir.path(), 2), &MAGIC[..5]).unwrap();
    {
        let log = open(dir.path(), FILE_BYTES);
        log.append(1, entries(3..4, b'b')).unwrap();
        log.sync().unwrap();
    }
    let log = open(dir.path(), FILE_BYTES);
    let got = log.entries(1, 0, 100, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        std::fs::read(file_name(dir.path(), 2)).unwrap()[..16],
        MAGIC[..]
    );
}

/// Groups that append while another group's sync is under way share the next sync:
/// one `fdatasync` makes all their writes durable, and a sync with nothing new to
/// cover does none.
#[test]
fn one_sync_covers_every_group_that_wrote_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), FILE_BYTES);
    let before = log.syncs();
    let written = log.written();
    // As if a sync were under way: the groups' syncs wait for it.
    let under_way = log.syncing.lock().unwrap();
    let waiting: Vec<_> = (1..=3)
        .map(|group| {
            let log = log.clone();
            std::thread::spawn(move || {
                log.append(group, entries(1..3, group as u8)).unwrap();
                log.sync().unwrap();
            })
        })
        .collect();
    while log.written() < written + 3 {
        std::thread::yield_now();
    }
    drop(under_way);
    for w in waiting {
        w.join().unwrap();
    }
    assert_eq!(log.syncs(), before + 1);
    log.sync().unwrap();
    assert_eq!(log.syncs(), before + 1, "nothing new: no sync");
    drop(log);
    let log = open(dir.path(), FILE_BYTES);
    for group in 1..=3 {
        assert_eq!(log.entries(group, 1, 3, usize::MAX).unwrap().len(), 2);
    }
}
