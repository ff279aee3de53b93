//! Replays the fuzz corpus (`fuzz/corpus/decode/`) and any saved crash
//! (`fuzz/artifacts/decode/`) through the same checks as the `decode` fuzz target, so
//! they run on stable in the ordinary test suite and a fixed crash stays fixed.

use std::path::Path;

use tern_codec::{BytesMut, Encode, Frame};

/// As in `fuzz/fuzz_targets/decode.rs`.
const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// The fuzz target's body. Returns how many frames decoded.
fn check(data: &[u8]) -> usize {
    let mut buf = BytesMut::from(data);
    let mut frames = 0;
    loop {
        let before = buf.len();
        let consumed_so_far = data.len() - before;
        match Frame::decode(&mut buf, MAX_FRAME_SIZE) {
            Ok(Some(frame)) => {
                frames += 1;
                let used = before - buf.len();
                let original = &data[consumed_so_far..consumed_so_far + used];
                let mut again = BytesMut::new();
                frame.encode(&mut again).unwrap();
                assert_eq!(again.len(), frame.encoded_len());
                assert_eq!(&again[..], original);
                let decoded = Frame::decode(&mut again, MAX_FRAME_SIZE).unwrap();
                assert_eq!(decoded, Some(frame));
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return frames;
            }
            Err(e) if !e.is_fatal() => assert!(buf.len() < before),
            Err(_) => return frames,
        }
    }
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files(&fuzz.join("corpus/decode"));
    assert!(
        corpus.len() >= 10,
        "seed corpus missing: {}",
        fuzz.display()
    );
    let mut frames = 0;
    for path in corpus.iter().chain(&files(&fuzz.join("artifacts/decode"))) {
        let data = std::fs::read(path).unwrap();
        frames += check(&data);
    }
    // The conversation seed holds thirteen frames, the queue session fifteen, and
    // there is a golden seed of one frame for every frame type.
    assert!(
        frames >= 13 + 15 + tern_codec::codes::FRAME_TYPES.len(),
        "only {frames} frames decoded from the corpus"
    );
}

#[test]
fn conversation_seed_is_the_worked_example() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode/conversation");
    let data = std::fs::read(path).unwrap();
    let mut buf = BytesMut::from(&data[..]);
    let mut types = Vec::new();
    while let Some(frame) = Frame::decode(&mut buf, MAX_FRAME_SIZE).unwrap() {
        types.push(frame.frame_type().name());
    }
    assert!(buf.is_empty());
    assert_eq!(
        types,
        [
            "HELLO",
            "WELCOME",
            "SUBSCRIBE",
            "OK",
            "PUBLISH",
            "OK",
            "MESSAGE",
            "PUBLISH",
            "ERROR",
            "UNSUBSCRIBE",
            "OK",
            "PING",
            "PONG",
        ]
    );
}

#[test]
fn queue_session_seed_holds_every_queue_frame() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode/queue_session");
    let data = std::fs::read(path).unwrap();
    let mut buf = BytesMut::from(&data[..]);
    let mut types = Vec::new();
    while let Some(frame) = Frame::decode(&mut buf, MAX_FRAME_SIZE).unwrap() {
        types.push(frame.frame_type().name());
    }
    assert!(buf.is_empty());
    assert_eq!(
        types,
        [
            "QUEUE_DECLARE",
            "QUEUE_QUERY",
            "QUEUE_INFO",
            "DONE",
            "PUBLISH",
            "CONFIRM",
            "CONSUME",
            "DELIVERY",
            "RECEIVED",
            "ACK",
            "NACK",
            "CANCEL",
            "QUEUE_PURGE",
            "QUEUE_MOVE",
            "QUEUE_DELETE",
        ]
    );
}
