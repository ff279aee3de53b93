//! Codec micro-benchmarks: encode and decode of a small PUBLISH, one at a time and in a
//! batch from one read buffer (the broker's read loop decodes everything a read brought),
//! and the queue delivery path: a DELIVERY encoded from a stored envelope's wire bytes.
//!
//! Run: `cargo bench -p tern-codec --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tern_codec::{
    Bytes, BytesMut, Delivery, DeliveryHead, Encode, Envelope, Frame, Headers, Publish, Qos,
    DEFAULT_MAX_FRAME_SIZE,
};

const BATCH: usize = 1000;

/// The envelope every bench uses: subject `bench.subject.one`, no reply-to, no
/// headers, a 128-byte payload.
fn envelope_128() -> Envelope {
    Envelope {
        subject: "bench.subject.one".into(),
        reply_to: None,
        headers: Headers::new(),
        payload: Bytes::from(vec![0xab; 128]),
    }
}

/// A QoS 0 PUBLISH with no flags carrying [`envelope_128`].
fn publish_128() -> Frame {
    Frame::Publish(Publish {
        id: 1,
        qos: Qos::AtMostOnce,
        mandatory: false,
        producer: None,
        envelope: envelope_128(),
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

/// A queue hands out messages it stored as envelope bytes: decode the stored envelope
/// (zero-copy) and encode a DELIVERY from it, as the broker's consumer path does.
fn bench_delivery(c: &mut Criterion) {
    let mut stored = BytesMut::new();
    envelope_128()
        .as_ref()
        .encode(&mut stored)
        .expect("bench envelope encodes");
    let stored = stored.freeze();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("stored envelope to delivery 128B", |b| {
        let mut buf = BytesMut::with_capacity(256);
        let mut delivery_id = 0u64;
        b.iter(|| {
            buf.clear();
            delivery_id += 1;
            let envelope =
                Envelope::decode_bytes(black_box(&stored).clone()).expect("stored envelope");
            let head = DeliveryHead {
                cid: 1,
                delivery_id,
                seq: delivery_id,
                delivery_count: 1,
                received_before: false,
            };
            Delivery::encode_parts(&head, envelope.as_ref(), &mut buf).expect("encodes");
            black_box(buf.len());
        });
    });
    group.finish();
}

criterion_group!(benches, bench_encode, bench_decode, bench_delivery);
criterion_main!(benches);
