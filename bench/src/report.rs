//! Measurements and their output: the latency histogram, rates, the process's peak
//! memory, and a [`Report`] printed as aligned lines or as one JSON object.
//!
//! A scenario adds named figures to a [`Report`] in the order a reader wants them; the
//! same entries produce both outputs, so the human and JSON forms cannot disagree.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Nanoseconds since a shared epoch, as carried in message payloads.
///
/// Every task of a run measures against the same `Instant`, so a timestamp taken by a
/// publisher and one taken by a subscriber subtract without clock skew.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch; never 0, so 0 can mean "no timestamp". A run
    /// would have to last 584 years to overflow it.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// One-way latencies, recorded in nanoseconds and reported in microseconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

/// Highest latency the histogram tracks (larger values are clamped to it): 60 s.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

impl Latency {
    pub fn new() -> Self {
        // Three significant digits from 1 ns to 60 s: a few hundred KiB, made once per
        // task before measuring.
        let hist = Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
            // The bounds are constants that satisfy the constructor's rules
            // (low >= 1, high >= 2 * low, sigfig <= 5).
            .unwrap_or_else(|e| unreachable!("constant histogram bounds: {e}"));
        Self(hist)
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds another task's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Both have the same bounds, so the addition cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    fn quantile_us(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// Adds `<prefix>_{p50,p99,p999,max}_us` and the sample count to `report`.
    pub fn add_to(&self, report: &mut Report, prefix: &str, label: &str) {
        if self.count() == 0 {
            report.add(
                &format!("{prefix}_samples"),
                &format!("{label} samples"),
                json!(0),
                "(none: payload shorter than the 8-byte timestamp, or nothing arrived)",
            );
            return;
        }
        for (key, name, q) in [
            ("p50", "p50", 0.5),
            ("p99", "p99", 0.99),
            ("p999", "p99.9", 0.999),
        ] {
            report.add(
                &format!("{prefix}_{key}_us"),
                &format!("{label} {name}"),
                json!(round2(self.quantile_us(q))),
                "µs",
            );
        }
        report.add(
            &format!("{prefix}_max_us"),
            &format!("{label} max"),
            json!(round2(self.0.max() as f64 / 1000.0)),
            "µs",
        );
        report.add(
            &format!("{prefix}_samples"),
            &format!("{label} samples"),
            json!(self.count()),
            "",
        );
    }
}

/// `count` per second over `elapsed`; 0 when nothing was timed.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// The process's peak resident set size in bytes (`VmHWM` in `/proc/self/status`), on
/// Linux; `None` elsewhere.
pub fn process_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A rate, rounded to a whole number for output.
pub fn rate_value(x: f64) -> Value {
    json!(x.round() as u64)
}

/// A duration in seconds, to the microsecond.
pub fn seconds(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1e6).round() / 1e6)
}

/// MB (10^6 bytes) per second, with two decimals.
pub fn mb_per_second(bytes: u64, elapsed: Duration) -> Value {
    json!(round2(per_second(bytes, elapsed) / 1e6))
}

/// One figure: its JSON key, its human label, its value and unit.
#[derive(Debug)]
struct Entry {
    key: String,
    label: String,
    value: Value,
    unit: String,
}

/// The figures of one run, in order.
#[derive(Debug)]
pub struct Report {
    scenario: &'static str,
    entries: Vec<Entry>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            entries: Vec::new(),
        }
    }

    /// Adds a figure. `key` names it in JSON; `label` and `unit` in the human output.
    pub fn add(&mut self, key: &str, label: &str, value: Value, unit: &str) {
        self.entries.push(Entry {
            key: key.to_owned(),
            label: label.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }

    /// The JSON summary: `{"scenario": .., <key>: <value>, ..}`.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("scenario".into(), json!(self.scenario));
        for e in &self.entries {
            map.insert(e.key.clone(), e.value.clone());
        }
        Value::Object(map)
    }

    /// Prints the report: one JSON object when `json`, aligned lines otherwise.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
            return;
        }
        println!("== {} ==", self.scenario);
        let width = self
            .entries
            .iter()
            .map(|e| e.label.chars().count())
            .max()
            .unwrap_or(0);
        for e in &self.entries {
            let value = human(&e.value);
            let sep = if e.unit.is_empty() { "" } else { " " };
            println!("{:<width$}  {value}{sep}{}", e.label, e.unit);
        }
    }
}

/// A value for people: integers with thousands separators, arrays joined by " / " (a
/// comma would read as one more thousands separator).
fn human(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_u64() => n.as_u64().map_or_else(|| n.to_string(), thousands),
        Value::Array(items) => items.iter().map(human).collect::<Vec<_>>().join(" / "),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn latency_percentiles_in_microseconds() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=1000u64 {
            if us % 2 == 0 {
                a.record_ns(us * 1000)
            } else {
                b.record_ns(us * 1000)
            }
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        let p50 = a.quantile_us(0.5);
        assert!((499.0..=501.0).contains(&p50), "{p50}");
        let mut r = Report::new("t");
        a.add_to(&mut r, "latency", "latency");
        let j = r.to_json();
        assert_eq!(j["scenario"], "t");
        assert!(j["latency_p99_us"]
            .as_f64()
            .is_some_and(|v| (989.0..=991.0).contains(&v)));
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_peak_rss().is_some_and(|b| b > 0));
        }
    }
}
