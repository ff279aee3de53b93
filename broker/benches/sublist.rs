//! Sublist micro-benchmarks: matching a subject against 10,000 and 100,000
//! subscriptions, with the match cache hit, missed, and turned off, and the cost of a
//! subscribe + unsubscribe pair.
//!
//! The subscriptions model a sensor fleet: 90% literal patterns
//! `sensors.<site>.<device>.temp` and 10% wildcards, a third each of
//! `sensors.<site>.*.temp`, `sensors.*.<device>.temp` and `sensors.<site>.>`. Sites grow
//! with the subscription count (100 devices per site), so a subject matches about 10
//! subscriptions at 10,000 and about 40 at 100,000. Subscribers are `Arc<u64>`, so
//! building a result pays the same reference-count traffic as the broker's
//! `Arc<Subscriber>`.
//!
//! Run: `cargo bench -p tern-broker --bench sublist -- --warm-up-time 1 --measurement-time 3`.
//! Every bench does one operation per iteration, so criterion's time is the per-op time.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_broker::sublist::Sublist;

/// Subscription counts to measure at.
const SIZES: [usize; 2] = [10_000, 100_000];
/// Devices per site: the second literal token varies over `n / DEVICES` sites.
const DEVICES: usize = 100;
/// Distinct subjects the miss benches rotate over: well above the cache's 1,024, so
/// the cached variant really misses.
const ROTATION: usize = 16_384;

type Id = Arc<u64>;

/// The pattern of subscription `i` out of `n`, under the first token `root`.
fn pattern(root: &str, i: usize, n: usize) -> String {
    let sites = (n / DEVICES).max(1);
    let (site, device) = (i % sites, (i / sites) % DEVICES);
    if i % 10 != 0 {
        return format!("{root}.site{site}.dev{device}.temp");
    }
    // Spread the wildcard forms evenly, and over different sites and devices.
    match (i / 10) % 3 {
        0 => format!("{root}.site{site}.*.temp"),
        1 => format!("{root}.*.dev{device}.temp"),
        _ => format!("{root}.site{site}.>"),
    }
}

/// A sublist holding `n` subscriptions.
fn sublist(n: usize, cached: bool) -> Sublist<Id> {
    let mut sl = if cached {
        Sublist::new()
    } else {
        Sublist::without_cache()
    };
    for i in 0..n {
        sl.insert(&pattern("sensors", i, n), Arc::new(i as u64));
    }
    sl
}

/// `count` published subjects spread over every site and device (seeded, so every run
/// matches the same ones).
fn subjects(n: usize, count: usize) -> Vec<String> {
    let sites = (n / DEVICES).max(1);
    let mut rng = fastrand::Rng::with_seed(7);
    (0..count)
        .map(|_| {
            format!(
                "sensors.site{}.dev{}.temp",
                rng.usize(..sites),
                rng.usize(..DEVICES)
            )
        })
        .collect()
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("sublist/match");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let rotation = subjects(n, ROTATION);
        let cached = sublist(n, true);
        let uncached = sublist(n, false);
        let avg: f64 = rotation
            .iter()
            .take(1000)
            .map(|s| uncached.matches(s).len() as f64)
            .sum::<f64>()
            / 1000.0;
        eprintln!("sublist of {n}: {avg:.1} matching subscriptions per subject on average");

        // (a) The same subject every time: a lock, a hash lookup, an Arc clone.
        let hot = rotation[0].as_str();
        group.bench_with_input(BenchmarkId::new("cache_hit", n), &n, |b, _| {
            b.iter(|| black_box(cached.matches(black_box(hot))));
        });

        // (b) A trie walk and a fresh result for every call.
        group.bench_with_input(BenchmarkId::new("no_cache", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % rotation.len();
                black_box(uncached.matches(&rotation[i]))
            });
        });

        // (b') The cache turned on but too small for the working set: the trie walk
        // plus the cache insert and its periodic eviction.
        group.bench_with_input(BenchmarkId::new("cache_miss", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % rotation.len();
                black_box(cached.matches(&rotation[i]))
            });
        });
    }
    group.finish();
}

/// (c) Subscribe + unsubscribe on a populated sublist: one insert and one remove per
/// iteration (the sublist is the same size before and after). With the cache on, each
/// change also sweeps the whole cache for results it invalidates, so that variant
/// starts with a full cache; the churned patterns live under their own first token
/// (`spares.`), so they never evict the cached `sensors.` results and the cache stays
/// full (the steady state of a broker whose subscribers come and go while the hot
/// subjects stay hot).
fn bench_insert_remove(c: &mut Criterion) {
    let mut group = c.benchmark_group("sublist/insert_remove");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let churn: Vec<String> = (0..ROTATION).map(|i| pattern("spares", i, n)).collect();
        for cached in [false, true] {
            let mut sl = sublist(n, cached);
            if cached {
                for s in subjects(n, 1024) {
                    sl.matches(&s);
                }
            }
            let name = if cached { "cache_on" } else { "no_cache" };
            let id: Id = Arc::new(u64::MAX);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % churn.len();
                    let p = &churn[i];
                    sl.insert(p, Arc::clone(&id));
                    black_box(sl.remove(p, &id))
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_match, bench_insert_remove);
criterion_main!(benches);
