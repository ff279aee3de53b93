//! Codec micro-benchmarks: encode and decode of a small PUBLISH, one at a time and in a
//! batch from one read buffer (the broker's read loop decodes everything a read brought).
//!
//! Run: `cargo bench -p tern-codec --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tern_codec::{
    Bytes, BytesMut, Encode, Envelope, Frame, Headers, Publish, Qos, DEFAULT_MAX_FRAME_SIZE,
};

const BATCH: usize = 1000;

/// The frame every bench uses: subject `bench.subject.one`, no reply-to, no headers,
/// a 128-byte payload.
fn publish_128() -> Frame {
    Frame::Publish(Publish {
        id: 1,
        qos: Qos::AtMostOnce,
        envelope: Envelope {
            subject: "bench.subject.one".into(),
            reply_to: None,
            headers: Headers::new(),
            payload: Bytes::from(vec![0xab; 128]),
        },
    })
}

fn encoded(frames: usize) -> BytesMut {
    let frame = publish_128();
    let mut buf = BytesMut::with_capacity(frame.encoded_len() * frames);
    for _ in 0..frames {
        frame.encode(&mut buf).expect("bench frame encodes");
    }
    buf
}

fn bench_encode(c: &mut Criterion) {
    let frame = publish_128();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode publish 128B", |b| {
        let mut buf = BytesMut::with_capacity(frame.encoded_len());
        b.iter(|| {
            // Reuses the allocation, as a connection's write buffer does.
            buf.clear();
            black_box(&frame).encode(&mut buf).expect("encodes");
            black_box(buf.len());
        });
    });
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let one = encoded(1);
    let many = encoded(BATCH);
    let mut group = c.benchmark_group("codec");

    group.throughput(Throughput::Elements(1));
    group.bench_function("decode publish 128B", |b| {
        b.iter_batched(
            || one.clone(),
            |mut buf| {
                let frame = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).expect("decodes");
                black_box(frame)
            },
            BatchSize::SmallInput,
        );
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode 1000 publishes from one buffer", |b| {
        b.iter_batched(
            || many.clone(),
            |mut buf| {
                let mut n = 0usize;
                while let Some(frame) =
                    Frame::decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).expect("decodes")
                {
                    black_box(frame);
                    n += 1;
                }
                assert_eq!(n, BATCH);
                buf
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
