//! Content filters: compiles arbitrary text with the default limits and evaluates every
//! filter that compiles against an arbitrary message.
//!
//! Input, in sections separated by a `%%` line (see `tern_broker_fuzz::sections`):
//! filter text, subject, headers (`name: value` per line) and payload bytes. Each
//! filter is evaluated twice: on the payload bytes as given, and on a JSON object
//! decoded from the same bytes whose keys and strings are the filter's own words.
//!
//! Invariants checked:
//! * compiling never panics; an error's column is within the text (1 to one past the
//!   last character);
//! * `matches` is `evaluate == Some(true)`;
//! * a filter that does not read the payload leaves it unparsed;
//! * `canonical()` compiles to a filter with the same canonical text, the same
//!   `reads_payload` and the same verdict, and `NOT (canonical)` to the negated verdict
//!   (three-valued: NULL stays NULL);
//! * a filter that says it is `header = 'literal'` matches exactly when the header's
//!   first value is the literal;
//! * an `EqualityIndex` holding the filter finds it exactly when it matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_broker::filter::{EqualityIndex, Filter, FilterLimits, MessageView};
use tern_broker_fuzz::{json_object, sections, words, Bytes};
use tern_codec::Headers;

/// For compiling a canonical form again: it is longer than the filter text and adds a
/// level of parentheses for every node, so it may need more than the default limits.
/// Every parse level of the original tree stacks at most six nodes (a prefix, then
/// `*`, `+`, a predicate, `AND`, `OR`) and each prints with at most two levels, so
/// twelve times the default depth is always enough.
fn roomy() -> FilterLimits {
    let d = FilterLimits::default();
    FilterLimits {
        max_len: usize::MAX,
        max_depth: 12 * (d.max_depth + 1),
        max_in_items: d.max_in_items,
    }
}

fn headers(text: &str) -> Headers {
    let mut h = Headers::default();
    for line in text.lines().take(16) {
        let (k, v) = line.split_once(": ").unwrap_or((line, ""));
        h.append(k.to_string(), v.to_string());
    }
    h
}

fn check(f: &Filter, subject: &str, headers: &Headers, payload: &[u8]) {
    let view = MessageView::new(subject, headers, payload);
    let verdict = f.evaluate(&view);
    assert_eq!(f.matches(&view), verdict == Some(true));
    if !f.reads_payload() {
        assert!(
            !view.is_payload_parsed(),
            "{:?} parsed the payload",
            f.text()
        );
    }

    let canonical = f.canonical();
    let again = Filter::compile(&canonical, &roomy())
        .unwrap_or_else(|e| panic!("canonical {canonical:?} of {:?}: {e}", f.text()));
    assert_eq!(
        again.canonical(),
        canonical,
        "canonical is not a fixed point"
    );
    assert_eq!(again.reads_payload(), f.reads_payload());
    assert_eq!(
        again.evaluate(&view),
        verdict,
        "canonical {canonical:?} of {:?}",
        f.text()
    );
    let not = Filter::compile(&format!("NOT {canonical}"), &roomy())
        .unwrap_or_else(|e| panic!("NOT {canonical:?}: {e}"));
    assert_eq!(
        not.evaluate(&view),
        verdict.map(|b| !b),
        "NOT {canonical:?}"
    );

    if let Some((header, literal)) = f.header_equality() {
        assert_eq!(
            verdict == Some(true),
            headers.get(header) == Some(literal),
            "{:?}",
            f.text()
        );
    }

    let mut index = EqualityIndex::new();
    index.insert(f.clone(), 7u8);
    let found = index.matching(&view).count();
    assert_eq!(found, usize::from(verdict == Some(true)), "{:?}", f.text());
    assert!(index.remove(f, |i| *i == 7));
    assert!(index.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let parts = sections(data, 4);
    let text = String::from_utf8_lossy(parts[0]);
    let subject = String::from_utf8_lossy(parts[1]);
    let headers = headers(&String::from_utf8_lossy(parts[2]));
    let payload = parts[3];

    let f = match Filter::compile(&text, &FilterLimits::default()) {
        Ok(f) => f,
        Err(e) => {
            let chars = text.chars().count();
            assert!(
                (1..=chars + 1).contains(&e.column),
                "column {} of {chars} characters: {e}",
                e.column
            );
            assert!(!e.message.is_empty());
            return;
        }
    };
    assert_eq!(f.text(), text);
    check(&f, &subject, &headers, payload);

    let words = words(&text, 16);
    let json = json_object(&mut Bytes::new(payload), &words, 3);
    let json = serde_json::to_vec(&json).expect("a JSON value serializes");
    check(&f, &subject, &headers, &json);
});
