//! Filter micro-benchmarks: evaluating one compiled filter against one message, and
//! routing through an [`EqualityIndex`] of 10 and 10,000 header-equality filters.
//!
//! Every evaluation builds a fresh [`MessageView`], as the router does per published
//! message, so the benches that read the payload include parsing it as JSON (about
//! 150 bytes here); the header-only ones show that they never parse it.
//!
//! Run: `cargo bench -p tern-broker --bench filter -- --warm-up-time 1 --measurement-time 3`.
//! Every bench does one operation per iteration, so criterion's time is the per-op time.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tern_broker::filter::{EqualityIndex, Filter, FilterLimits, MessageView};
use tern_codec::Headers;

/// A sensor reading: a few headers, as a device would send, and a small JSON body.
fn message() -> (Headers, Vec<u8>) {
    let headers: Headers = [
        ("content-type", "application/json"),
        ("device", "sensor-0042"),
        ("firmware", "2.4.1"),
        ("region", "eu"),
        ("priority", "3"),
    ]
    .into_iter()
    .collect();
    let payload = br#"{"temp": 31.5, "humidity": 0.41, "alarm": false, "site": "kitchen",
        "readings": [30.9, 31.2, 31.5], "battery": {"level": 87, "charging": false}}"#;
    (headers, payload.to_vec())
}

const SUBJECT: &str = "sensors.eu.sensor-0042.temp";

fn compile(text: &str) -> Filter {
    match Filter::compile(text, &FilterLimits::default()) {
        Ok(f) => f,
        Err(e) => panic!("{text}: {e}"),
    }
}

fn evaluate(c: &mut Criterion) {
    let (headers, payload) = message();
    let cases = [
        ("header_eq", "region = 'eu'"),
        ("header_numeric", "priority >= 2"),
        ("json_range", "payload.temp > 30"),
        (
            "compound",
            "region IN ('eu', 'us') AND device LIKE 'sensor-%' \
             AND payload.temp BETWEEN 20 AND 40 AND NOT payload.alarm",
        ),
        (
            "compound_headers",
            "(region = 'eu' OR region = 'us') AND priority > 1 AND device LIKE 'sensor-%' \
             AND subject[3] = 'temp'",
        ),
    ];
    let mut group = c.benchmark_group("evaluate");
    for (name, text) in cases {
        let filter = compile(text);
        assert!(filter.matches(&MessageView::new(SUBJECT, &headers, &payload)));
        group.bench_function(name, |b| {
            b.iter(|| {
                let view = MessageView::new(SUBJECT, black_box(&headers), black_box(&payload));
                black_box(filter.matches(&view))
            })
        });
    }
    group.finish();
}

fn compile_bench(c: &mut Criterion) {
    let text = "region IN ('eu', 'us') AND device LIKE 'sensor-%' \
                AND payload.temp BETWEEN 20 AND 40 AND NOT payload.alarm";
    c.bench_function("compile/compound", |b| {
        b.iter(|| black_box(Filter::compile(black_box(text), &FilterLimits::default())))
    });
}

/// 10 versus 10,000 subscriptions with `device = '<id>'`, one of which matches: the
/// index makes them cost about the same; evaluating every filter does not.
fn index(c: &mut Criterion) {
    let (headers, payload) = message();
    let mut group = c.benchmark_group("route");
    for n in [10_usize, 10_000] {
        let filters: Vec<Filter> = (0..n)
            .map(|i| compile(&format!("device = 'sensor-{i:04}'")))
            .collect();
        let mut idx = EqualityIndex::new();
        for (i, f) in filters.iter().enumerate() {
            idx.insert(f.clone(), i);
        }
        let view = MessageView::new(SUBJECT, &headers, &payload);
        let want = usize::from(n > 42);
        assert_eq!(idx.matching(&view).count(), want);
        group.bench_with_input(BenchmarkId::new("index", n), &idx, |b, idx| {
            b.iter(|| {
                let view = MessageView::new(SUBJECT, black_box(&headers), black_box(&payload));
                black_box(idx.matching(&view).count())
            })
        });
        group.bench_with_input(BenchmarkId::new("each", n), &filters, |b, filters| {
            b.iter(|| {
                let view = MessageView::new(SUBJECT, black_box(&headers), black_box(&payload));
                black_box(filters.iter().filter(|f| f.matches(&view)).count())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate, compile_bench, index);
criterion_main!(benches);
