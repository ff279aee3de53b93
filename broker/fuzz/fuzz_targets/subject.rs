//! Subjects, patterns and the sublist: the `tern_codec` validators against a naive
//! validator, and `Sublist` (with its cache and without) against a list of
//! `(pattern, id)` pairs matched by a naive matcher.
//!
//! Input: one operation per line.
//!
//! ```text
//! + a.*.c        insert pattern a.*.c for subscriber 0
//! +3 a.>         insert a.> for subscriber 3
//! - a.*.c        remove one (a.*.c, 0)
//! ? a.b.c        match subject a.b.c
//! ```
//!
//! Every line's text (after the operation, or the whole line) is also validated as a
//! subject and as a pattern, under the default limits and under tiny ones.
//!
//! Invariants checked:
//! * `validate_subject`/`validate_pattern` (and the `Subject`/`Pattern` newtypes)
//!   accept exactly what the naive validator accepts, and every subject is a pattern;
//! * `tern_codec::subject::matches` agrees with the naive matcher;
//! * both sublists return, for every subject, exactly the ids of the live pairs whose
//!   pattern matches, as a multiset; `remove` reports whether the pair was live; `len`
//!   counts the live pairs; the generation changes on every insert and removal and on
//!   nothing else;
//! * once every pair is removed, nothing matches any subject seen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_broker::sublist::Sublist;
use tern_broker_fuzz::naive_matches;
use tern_codec::subject::{validate_pattern, validate_subject, Pattern, Subject};
use tern_codec::SubjectLimits;

/// What the codec's validators promise (`codec/src/subject.rs`), written plainly.
fn naive_valid(s: &str, limits: &SubjectLimits, wildcards: bool) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && s.len() <= limits.max_len
        && tokens.len() <= limits.max_tokens
        && tokens.iter().enumerate().all(|(i, t)| {
            let whole_wildcard = *t == "*" || (*t == ">" && i + 1 == tokens.len());
            !t.is_empty()
                && (wildcards && whole_wildcard
                    || t.chars()
                        .all(|c| !(c.is_whitespace() || c.is_control() || c == '*' || c == '>')))
        })
}

const TINY: SubjectLimits = SubjectLimits {
    max_len: 12,
    max_tokens: 3,
};

fn check_validation(s: &str) {
    for limits in [SubjectLimits::default(), TINY] {
        let subject = validate_subject(s, &limits);
        let pattern = validate_pattern(s, &limits);
        assert_eq!(
            subject.is_ok(),
            naive_valid(s, &limits, false),
            "subject {s:?}: {subject:?}"
        );
        assert_eq!(
            pattern.is_ok(),
            naive_valid(s, &limits, true),
            "pattern {s:?}: {pattern:?}"
        );
        assert!(
            subject.is_err() || pattern.is_ok(),
            "subject but not pattern: {s:?}"
        );
        assert_eq!(Subject::new(s, &limits).is_ok(), subject.is_ok());
        assert_eq!(Pattern::new(s, &limits).is_ok(), pattern.is_ok());
    }
}

fn sorted(v: impl IntoIterator<Item = u8>) -> Vec<u8> {
    let mut v: Vec<u8> = v.into_iter().collect();
    v.sort_unstable();
    v
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let limits = SubjectLimits::default();
    let mut lists = [Sublist::new(), Sublist::without_cache()];
    let mut live: Vec<(String, u8)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();

    for line in text.lines().take(64) {
        check_validation(line);
        let (op, arg) = match line.split_once(' ') {
            Some((op, arg)) => (op, arg),
            None => (line, ""),
        };
        check_validation(arg);
        let id = op.get(1..).and_then(|d| d.parse::<u8>().ok()).unwrap_or(0) % 8;
        match op.as_bytes().first() {
            Some(b'+') if validate_pattern(arg, &limits).is_ok() => {
                for l in &mut lists {
                    let g = l.generation();
                    l.insert(arg, id);
                    assert_ne!(l.generation(), g, "insert kept the generation");
                }
                live.push((arg.to_string(), id));
            }
            Some(b'-') if validate_pattern(arg, &limits).is_ok() => {
                let at = live.iter().position(|(p, i)| p == arg && *i == id);
                for l in &mut lists {
                    let g = l.generation();
                    assert_eq!(l.remove(arg, &id), at.is_some(), "remove {arg} {id}");
                    assert_eq!(l.generation() != g, at.is_some(), "generation on remove");
                }
                if let Some(at) = at {
                    live.swap_remove(at);
                }
            }
            Some(b'?') if validate_subject(arg, &limits).is_ok() => {
                for (p, _) in &live {
                    assert_eq!(
                        tern_codec::subject::matches(p, arg),
                        naive_matches(p, arg),
                        "{p} vs {arg}"
                    );
                }
                let want = sorted(
                    live.iter()
                        .filter(|(p, _)| naive_matches(p, arg))
                        .map(|(_, i)| *i),
                );
                for l in &lists {
                    let g = l.generation();
                    assert_eq!(
                        sorted(l.matches(arg).iter().copied()),
                        want,
                        "subject {arg}"
                    );
                    assert_eq!(l.generation(), g, "matching changed the generation");
                }
                if seen.len() < 64 {
                    seen.push(arg.to_string());
                }
            }
            _ => {}
        }
        for l in &lists {
            assert_eq!(l.len(), live.len());
        }
    }

    for (p, i) in live.drain(..) {
        for l in &mut lists {
            assert!(l.remove(&p, &i), "live pair {p} {i} missing");
        }
    }
    for l in &lists {
        assert!(l.is_empty());
        for s in &seen {
            assert!(l.matches(s).is_empty(), "{s} matches in an empty sublist");
        }
    }
});
