//! What the tern-broker fuzz targets share: how an input is split into its parts, a
//! naive subject matcher that serves as the oracle, the literal subjects a pattern can
//! match, and arbitrary JSON for the filter target.
//!
//! Inputs are text, split into sections by a line holding only `%%`, so that the seed
//! files can be written (and read) by hand:
//!
//! ```text
//! region = 'eu' AND payload.temp > 30
//! %%
//! sensors.eu.kitchen
//! ```

use serde_json::{Map, Number, Value};

/// The line that separates the sections of an input.
pub const SEPARATOR: &[u8] = b"\n%%\n";

/// Splits `data` into at most `max` sections at [`SEPARATOR`]; the last section keeps
/// any further separators. Missing sections are empty.
pub fn sections(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(max);
    let mut rest = data;
    while out.len() + 1 < max {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(max, &[]);
    out
}

/// Whether `pattern` matches the literal `subject`, written independently of
/// `tern_codec::subject::matches` and the sublist, as the oracle for both: `*` is one
/// token, `>` (last) one or more.
pub fn naive_matches(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    match p.split_last() {
        Some((&">", head)) => {
            s.len() > head.len() && head.iter().zip(&s).all(|(p, s)| *p == "*" || p == s)
        }
        _ => p.len() == s.len() && p.iter().zip(&s).all(|(p, s)| *p == "*" || p == s),
    }
}

/// A token that none of `patterns` spells, so it stands for every token the patterns
/// cannot tell apart.
pub fn fresh_token<'a>(patterns: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let mut fresh = "fresh".to_string();
    while patterns
        .clone()
        .into_iter()
        .any(|p| p.split('.').any(|t| t == fresh))
    {
        fresh.push('_');
    }
    fresh
}

/// Literal subjects that the valid `pattern` matches, enough to decide any question
/// about `pattern` against the valid patterns `others`: every wildcard is replaced by
/// each literal that some pattern of `others` (or `pattern`) has at that position, or
/// by a fresh token, and `>` by one token up to as many as reach one past the longest
/// of `others`.
///
/// Returns `None` when there would be more than `budget` subjects.
pub fn instances(pattern: &str, others: &[&str], budget: usize) -> Option<Vec<String>> {
    let toks: Vec<&str> = pattern.split('.').collect();
    let longest = others
        .iter()
        .map(|p| p.split('.').count())
        .chain([toks.len()])
        .max()
        .unwrap_or(0);
    let fresh = fresh_token(others.iter().copied().chain([pattern]));
    // Candidates for position i: literals at i in any pattern, and the fresh token.
    let candidates = |i: usize| -> Vec<String> {
        let mut c: Vec<String> = others
            .iter()
            .copied()
            .chain([pattern])
            .filter_map(|p| p.split('.').nth(i))
            .filter(|t| *t != "*" && *t != ">")
            .map(str::to_string)
            .collect();
        c.push(fresh.clone());
        c.sort();
        c.dedup();
        c
    };
    // The shapes: one per length of what `>` stands for.
    let mut shapes: Vec<Vec<Option<&str>>> = Vec::new();
    match toks.split_last() {
        Some((&">", head)) => {
            for extra in 1..=(longest + 1).saturating_sub(head.len()).max(1) {
                let mut shape: Vec<Option<&str>> =
                    head.iter().map(|t| (*t != "*").then_some(*t)).collect();
                shape.extend(std::iter::repeat_n(None, extra));
                shapes.push(shape);
            }
        }
        _ => shapes.push(toks.iter().map(|t| (*t != "*").then_some(*t)).collect()),
    }
    let mut out = Vec::new();
    for shape in shapes {
        let choices: Vec<Vec<String>> = shape
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Some(t) => vec![(*t).to_string()],
                None => candidates(i),
            })
            .collect();
        let count = choices
            .iter()
            .try_fold(1usize, |n, c| n.checked_mul(c.len()))?;
        if out.len().checked_add(count)? > budget {
            return None;
        }
        // Odometer over the choices.
        let mut idx = vec![0usize; choices.len()];
        loop {
            let s: Vec<&str> = idx
                .iter()
                .zip(&choices)
                .map(|(i, c)| c[*i].as_str())
                .collect();
            out.push(s.join("."));
            let mut pos = choices.len();
            loop {
                if pos == 0 {
                    break;
                }
                pos -= 1;
                idx[pos] += 1;
                if idx[pos] < choices[pos].len() {
                    break;
                }
                idx[pos] = 0;
            }
            if idx.iter().all(|i| *i == 0) {
                break;
            }
        }
    }
    Some(out)
}

/// Reads bytes one at a time, and zeros once they run out, so that every input
/// decodes to something.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Numbers at the edges of what the filter's arithmetic and comparisons handle.
const EDGE_NUMBERS: [f64; 8] = [
    0.5,
    -0.0,
    1e300,
    -1e-300,
    3.5,
    9007199254740993.0,
    1e19,
    -2.5,
];
const EDGE_INTS: [i64; 6] = [0, -1, i64::MAX, i64::MIN, 9_007_199_254_740_993, 42];

/// An arbitrary JSON value decoded from `bytes`, with object keys and strings taken
/// from `words` (the filter's own identifiers and literals, so that the filter's
/// payload paths find something), nested at most `depth` deep.
pub fn json_value(bytes: &mut Bytes<'_>, words: &[String], depth: u32) -> Value {
    let word = |bytes: &mut Bytes<'_>| -> String {
        if words.is_empty() {
            return "a".into();
        }
        words[usize::from(bytes.byte()) % words.len()].clone()
    };
    let kind = if bytes.is_empty() {
        0
    } else {
        bytes.byte() % 12
    };
    match kind {
        0 => Value::Null,
        1 => Value::Bool(true),
        2 => Value::Bool(false),
        3 => Value::from(i64::from(bytes.byte()) - 128),
        4 => Value::from(EDGE_INTS[usize::from(bytes.byte()) % EDGE_INTS.len()]),
        5 => Value::from(u64::MAX - u64::from(bytes.byte())),
        6 => Number::from_f64(EDGE_NUMBERS[usize::from(bytes.byte()) % EDGE_NUMBERS.len()])
            .map_or(Value::Null, Value::Number),
        7 => Value::String(word(bytes)),
        8 if depth > 0 => {
            let n = bytes.byte() % 4;
            Value::Array(
                (0..n)
                    .map(|_| json_value(bytes, words, depth - 1))
                    .collect(),
            )
        }
        9 | 10 if depth > 0 => json_object(bytes, words, depth - 1),
        _ => Value::String(format!("{}{}", word(bytes), bytes.byte() % 3)),
    }
}

/// An arbitrary JSON object: what a filter's `payload.x` paths mostly read.
pub fn json_object(bytes: &mut Bytes<'_>, words: &[String], depth: u32) -> Value {
    let mut map = Map::new();
    for _ in 0..(bytes.byte() % 5) {
        let key = if words.is_empty() {
            "a".to_string()
        } else {
            words[usize::from(bytes.byte()) % words.len()].clone()
        };
        map.insert(key, json_value(bytes, words, depth));
    }
    Value::Object(map)
}

/// The words of a filter text: its identifiers, payload path keys and the contents of
/// its string literals (at most `max`), to build messages the filter can see into.
pub fn words(text: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .chain(text.split(['\'', '"']).skip(1).step_by(2))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out.truncate(max);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_split_on_the_separator_line() {
        assert_eq!(
            sections(b"a\n%%\nb\n%%\nc", 2),
            [&b"a"[..], &b"b\n%%\nc"[..]]
        );
        assert_eq!(sections(b"a", 3), [&b"a"[..], &b""[..], &b""[..]]);
    }

    #[test]
    fn naive_matcher() {
        assert!(naive_matches("a.*", "a.b"));
        assert!(!naive_matches("a.>", "a"));
        assert!(naive_matches("a.>", "a.b.c"));
        assert!(naive_matches(">", "a"));
        assert!(!naive_matches("*", "a.b"));
    }

    #[test]
    fn instances_cover_the_other_patterns_literals() {
        let i = instances("a.*", &["a.b", "x.c"], 100).unwrap();
        assert_eq!(i, ["a.b", "a.c", "a.fresh"]);
        let i = instances(">", &["a.b"], 100).unwrap();
        assert!(i.contains(&"a.b".to_string()));
        assert!(i.contains(&"a.fresh.fresh".to_string()));
        assert!(instances("*.*.*", &["a", "b", "c"], 3).is_none());
    }
}
