//! Tests for the filter language: an evaluation table, an error table, limits, the
//! equality index, and property tests (no panics on any input, canonical printing
//! round-trips, `IN` agrees with its `OR` expansion, the index agrees with brute force).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tern_codec::Headers;

use super::*;

fn compile(text: &str) -> Filter {
    Filter::compile(text, &FilterLimits::default())
        .unwrap_or_else(|e| panic!("{text:?} should compile: {e}"))
}

/// Limits high enough that only the test's own input decides.
fn roomy() -> FilterLimits {
    FilterLimits {
        max_len: 1 << 20,
        max_depth: 64,
        max_in_items: 1 << 16,
    }
}

/// An owned message, to build a [`MessageView`] from.
#[derive(Debug)]
struct Msg {
    subject: &'static str,
    headers: Headers,
    payload: Vec<u8>,
}

impl Msg {
    fn new(subject: &'static str, headers: &[(&str, &str)], payload: &str) -> Self {
        Self {
            subject,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn view(&self) -> MessageView<'_> {
        MessageView::new(self.subject, &self.headers, &self.payload)
    }
}

const PAYLOAD: &str = r#"{
    "temp": 31.5, "n": 42, "name": "kitchen", "ok": true, "off": false, "nothing": null,
    "readings": [1, 2.5, "x", null, {"a": 1}],
    "nested": {"a": {"b": "deep"}},
    "big": 9007199254740993, "huge": 18446744073709551615,
    "weird key": 7, "s42": "42", "obj": {}, "arr": []
}"#;

/// The messages the table refers to by index.
fn messages() -> Vec<Msg> {
    vec![
        // 0: everything.
        Msg::new(
            "sensors.eu.42.temp",
            &[
                ("region", "eu"),
                ("count", "42"),
                ("ten", "10"),
                ("abc", "abc"),
                ("empty", ""),
                ("neg", "-5"),
                ("flag", "true"),
                ("FLAG2", "False"),
                ("pi", "3.14"),
                ("big", "9007199254740993"),
                ("dup", "first"),
                ("dup", "second"),
                ("weird key", "w"),
                ("subject", "hdr-subject"),
                ("a.b", "dotted"),
                ("sub\"ject", "q"),
                ("zero", "0"),
                ("and", "kw"),
            ],
            PAYLOAD,
        ),
        // 1: no headers, a payload that is not JSON.
        Msg::new("a", &[], "not json {"),
        // 2: a JSON scalar payload.
        Msg::new("x.y", &[], "42"),
        // 3: an empty payload.
        Msg::new("x", &[("region", "us")], ""),
    ]
}

const T: Option<bool> = Some(true);
const F: Option<bool> = Some(false);
const N: Option<bool> = None;

/// (filter, message index, expected value)
const TABLE: &[(&str, usize, Option<bool>)] = &[
    // --- literals and three-valued logic truth tables
    ("TRUE", 0, T),
    ("FALSE", 0, F),
    ("NULL", 0, N),
    ("TRUE AND TRUE", 0, T),
    ("TRUE AND FALSE", 0, F),
    ("TRUE AND NULL", 0, N),
    ("FALSE AND NULL", 0, F),
    ("NULL AND FALSE", 0, F),
    ("NULL AND NULL", 0, N),
    ("TRUE OR NULL", 0, T),
    ("NULL OR TRUE", 0, T),
    ("FALSE OR NULL", 0, N),
    ("NULL OR FALSE", 0, N),
    ("NULL OR NULL", 0, N),
    ("FALSE OR FALSE", 0, F),
    ("NOT TRUE", 0, F),
    ("NOT FALSE", 0, T),
    ("NOT NULL", 0, N),
    ("NOT NOT TRUE", 0, T),
    ("NOT NOT NOT NULL", 0, N),
    ("missing = 1 AND FALSE", 0, F),
    ("missing = 1 OR TRUE", 0, T),
    ("missing = 1 OR region = 'eu'", 0, T),
    ("missing = 1 AND region = 'eu'", 0, N),
    ("TRUE AND TRUE AND NULL AND FALSE", 0, F),
    ("FALSE OR FALSE OR NULL OR TRUE", 0, T),
    // --- precedence
    ("FALSE AND FALSE OR TRUE", 0, T),
    ("TRUE OR FALSE AND FALSE", 0, T),
    ("(TRUE OR FALSE) AND FALSE", 0, F),
    ("NOT FALSE AND FALSE", 0, F),
    ("NOT (FALSE AND FALSE)", 0, T),
    ("NOT count = 1", 0, T),
    ("NOT region IN ('eu')", 0, F),
    ("2 + 3 * 4 = 14", 0, T),
    ("(2 + 3) * 4 = 20", 0, T),
    ("10 - 2 - 3 = 5", 0, T),
    ("2 * 3 % 4 = 2", 0, T),
    ("100 / 10 / 5 = 2", 0, T),
    ("-2 * 3 = -6", 0, T),
    ("- 2 + 3 = 1", 0, T),
    ("-(2 + 3) = -5", 0, T),
    ("2 - -3 = 5", 0, T),
    ("1 + 1 = 2 AND 2 * 2 = 4", 0, T),
    // --- comparisons: numbers
    ("count = 42", 0, T),
    ("count <> 41", 0, T),
    ("count != 42", 0, F),
    ("count < 43", 0, T),
    ("count <= 42", 0, T),
    ("count > 41", 0, T),
    ("count >= 43", 0, F),
    ("42 = count", 0, T),
    ("count = 42.0", 0, T),
    ("count = 4.2e1", 0, T),
    ("1e3 = 1000", 0, T),
    ("1.5e-1 = 0.15", 0, T),
    ("2.5E+1 = 25", 0, T),
    ("0.1 + 0.2 = 0.3", 0, F),
    ("9223372036854775807 + 1 > 9223372036854775807", 0, T),
    ("-9223372036854775808 = -9223372036854775807 - 1", 0, T),
    ("9007199254740993 > 9007199254740992", 0, T),
    ("9007199254740993 = 9007199254740992.0", 0, F),
    // --- comparisons: strings, bytewise
    ("region = 'eu'", 0, T),
    ("region <> 'eu'", 0, F),
    ("region < 'f'", 0, T),
    ("'abc' < 'abd'", 0, T),
    ("'B' < 'a'", 0, T),
    ("'é' > 'z'", 0, T),
    ("'' < 'a'", 0, T),
    ("empty = ''", 0, T),
    ("'it''s' = 'it''s'", 0, T),
    ("'10' > '9'", 0, F),
    // --- header coercion
    ("count = '42'", 0, T),
    ("ten > 9", 0, T),
    ("ten > '9'", 0, F),
    ("ten > ten - 1", 0, T),
    ("abc > 1", 0, N),
    ("abc = 1", 0, N),
    ("abc <> 1", 0, N),
    ("empty = 0", 0, N),
    ("neg < 0", 0, T),
    ("neg = -5", 0, T),
    ("pi > 3", 0, T),
    ("pi = 3.14", 0, T),
    ("big = 9007199254740993", 0, T),
    ("big = 9007199254740992", 0, F),
    ("zero = 0", 0, T),
    ("flag = TRUE", 0, T),
    ("flag <> FALSE", 0, T),
    ("FLAG2 = FALSE", 0, T),
    ("flag = 1", 0, N),
    ("region = TRUE", 0, N),
    ("flag", 0, T),
    ("NOT flag", 0, F),
    ("FLAG2", 0, F),
    ("region", 0, N),
    ("flag < TRUE", 0, N),
    // --- typed values do not coerce
    ("'42' = 42", 0, N),
    ("payload.s42 = 42", 0, N),
    ("payload.s42 = '42'", 0, T),
    ("payload.n = '42'", 0, N),
    ("TRUE = 1", 0, N),
    ("TRUE = TRUE", 0, T),
    ("TRUE <> FALSE", 0, T),
    ("FALSE < TRUE", 0, N),
    // --- arithmetic
    ("count + 1 = 43", 0, T),
    ("count * 2 - 4 = 80", 0, T),
    ("count - 2 = 40", 0, T),
    ("ten + ten = 20", 0, T),
    ("-count = -42", 0, T),
    ("- -count = 42", 0, T),
    ("-neg = 5", 0, T),
    ("7 / 2 = 3.5", 0, T),
    ("6 / 3 = 2", 0, T),
    ("-7 % 3 = -1", 0, T),
    ("7.5 % 2 = 1.5", 0, T),
    ("1 / 0 IS NULL", 0, T),
    ("1 % 0 IS NULL", 0, T),
    ("1.5 / 0.0 IS NULL", 0, T),
    ("count / zero > 1", 0, N),
    ("abc + 1 IS NULL", 0, T),
    ("-abc IS NULL", 0, T),
    ("missing + 1 IS NULL", 0, T),
    ("NULL + 1 IS NULL", 0, T),
    ("-NULL IS NULL", 0, T),
    ("payload.temp * 2 = 63", 0, T),
    ("payload.name + 1 IS NULL", 0, T),
    ("payload.ok + 1 IS NULL", 0, T),
    ("1e300 * 1e300 IS NULL", 0, T),
    // --- IN
    ("region IN ('us', 'eu')", 0, T),
    ("region NOT IN ('us', 'eu')", 0, F),
    ("region IN ('us')", 0, F),
    ("region NOT IN ('us')", 0, T),
    ("region IN ('us', NULL)", 0, N),
    ("region IN ('eu', NULL)", 0, T),
    ("region NOT IN ('us', NULL)", 0, N),
    ("region NOT IN ('eu', NULL)", 0, F),
    ("missing IN ('a')", 0, N),
    ("missing NOT IN ('a')", 0, N),
    ("NULL IN (NULL)", 0, N),
    ("count IN (1, 42)", 0, T),
    ("count IN ('42')", 0, T),
    ("count IN (41, 43)", 0, F),
    ("count IN (42.0)", 0, T),
    ("abc IN (1, 2)", 0, N),
    ("abc IN (1, 'abc')", 0, T),
    ("abc IN ('x', 'y')", 0, F),
    ("neg IN (-5, 3)", 0, T),
    ("flag IN (TRUE)", 0, T),
    ("flag IN (FALSE)", 0, F),
    ("region IN (TRUE)", 0, N),
    ("payload.n IN (41, 42.0)", 0, T),
    ("payload.n IN ('42')", 0, N),
    ("payload.temp IN (31.5, 2)", 0, T),
    ("payload.temp IN (31, 32)", 0, F),
    ("payload.ok IN (TRUE, FALSE)", 0, T),
    ("payload.name IN ('kitchen')", 0, T),
    ("payload.obj IN (1)", 0, N),
    ("'a' IN ('a', 1)", 0, T),
    ("'b' IN ('a', 1)", 0, N),
    ("1 IN (1.0)", 0, T),
    ("0.5 IN (0.25, 0.5)", 0, T),
    ("-0.0 IN (0)", 0, T),
    // --- BETWEEN
    ("count BETWEEN 40 AND 50", 0, T),
    ("count BETWEEN 42 AND 42", 0, T),
    ("count BETWEEN 43 AND 50", 0, F),
    ("count NOT BETWEEN 40 AND 50", 0, F),
    ("count NOT BETWEEN 43 AND 50", 0, T),
    ("count BETWEEN 50 AND 40", 0, F),
    ("missing BETWEEN 1 AND 2", 0, N),
    ("missing NOT BETWEEN 1 AND 2", 0, N),
    ("count BETWEEN NULL AND 10", 0, F),
    ("count BETWEEN NULL AND 50", 0, N),
    ("count BETWEEN 50 AND NULL", 0, F),
    ("count NOT BETWEEN NULL AND 10", 0, T),
    ("region BETWEEN 'a' AND 'f'", 0, T),
    ("payload.temp BETWEEN 30 AND 32", 0, T),
    ("count BETWEEN 40 AND 50 AND region = 'eu'", 0, T),
    ("count BETWEEN 1 + 1 AND 50 - 1", 0, T),
    ("count BETWEEN 'a' AND 'z'", 0, F),
    ("abc BETWEEN 1 AND 2", 0, N),
    // --- LIKE
    ("region LIKE 'e%'", 0, T),
    ("region LIKE 'E%'", 0, F),
    ("region LIKE '_u'", 0, T),
    ("region LIKE '_'", 0, F),
    ("region LIKE 'eu'", 0, T),
    ("region LIKE '%'", 0, T),
    ("empty LIKE '%'", 0, T),
    ("empty LIKE '_%'", 0, F),
    ("region NOT LIKE 'x%'", 0, T),
    ("region NOT LIKE 'e%'", 0, F),
    ("subject LIKE 'sensors.%.temp'", 0, T),
    ("subject LIKE 'sensors._.%'", 0, F),
    ("subject LIKE 'sensors.__.%'", 0, T),
    ("payload.name LIKE '%tch%'", 0, T),
    ("payload.name LIKE 'k%n'", 0, T),
    ("payload.name LIKE 'k%t%n'", 0, T),
    ("payload.name LIKE 'k%x%n'", 0, F),
    ("missing LIKE '%'", 0, N),
    ("missing NOT LIKE '%'", 0, N),
    ("count LIKE '4%'", 0, T),
    ("payload.n LIKE '4%'", 0, N),
    ("'100%' LIKE '100!%' ESCAPE '!'", 0, T),
    ("'1000' LIKE '100!%' ESCAPE '!'", 0, F),
    ("'100%' LIKE '100%'", 0, T),
    ("'a_b' LIKE 'a\\_b' ESCAPE '\\'", 0, T),
    ("'axb' LIKE 'a\\_b' ESCAPE '\\'", 0, F),
    ("'axb' LIKE 'a_b'", 0, T),
    ("'a\\b' LIKE 'a\\\\b' ESCAPE '\\'", 0, T),
    ("'a%b' LIKE 'a%%b' ESCAPE '%'", 0, T),
    ("'axb' LIKE 'a%%b' ESCAPE '%'", 0, F),
    ("'it''s' LIKE 'it''%'", 0, T),
    ("'éa' LIKE '_a'", 0, T),
    ("'ab' LIKE 'a' OR 'ab' LIKE 'ab'", 0, T),
    // --- IS [NOT] NULL
    ("missing IS NULL", 0, T),
    ("missing IS NOT NULL", 0, F),
    ("region IS NULL", 0, F),
    ("region IS NOT NULL", 0, T),
    ("empty IS NOT NULL", 0, T),
    ("NULL IS NULL", 0, T),
    ("1 IS NULL", 0, F),
    ("(count = 1) IS NULL", 0, F),
    ("(missing = 1) IS NULL", 0, T),
    ("(missing = 1) IS NOT NULL", 0, F),
    ("payload.nothing IS NULL", 0, T),
    ("payload.obj IS NOT NULL", 0, T),
    ("payload.arr IS NOT NULL", 0, T),
    ("payload.obj = 1", 0, N),
    ("payload.arr = payload.arr", 0, N),
    ("payload.nope IS NULL", 0, T),
    ("payload IS NOT NULL", 0, T),
    // --- subject
    ("subject = 'sensors.eu.42.temp'", 0, T),
    ("subject[0] = 'sensors'", 0, T),
    ("subject[1] = 'eu'", 0, T),
    ("subject[2] = 42", 0, T),
    ("subject[2] > 40", 0, T),
    ("subject[3] = 'temp'", 0, T),
    ("subject[4] IS NULL", 0, T),
    ("subject[99999999] IS NULL", 0, T),
    ("SUBJECT[1] = 'eu'", 0, T),
    ("Subject = 'x'", 0, F),
    ("\"subject\" = 'hdr-subject'", 0, T),
    ("subject = 'a'", 1, T),
    ("subject[0] = 'a' AND subject[1] IS NULL", 1, T),
    // --- payload fields of every JSON type, arrays, missing fields
    ("payload.temp > 30", 0, T),
    ("payload.temp > 31.5", 0, F),
    ("payload.temp = 31.5", 0, T),
    ("payload.n = 42", 0, T),
    ("payload.name = 'kitchen'", 0, T),
    ("payload.ok", 0, T),
    ("payload.ok = TRUE", 0, T),
    ("payload.off", 0, F),
    ("NOT payload.off", 0, T),
    ("payload.ok < TRUE", 0, N),
    ("payload.name", 0, N),
    ("payload.n", 0, N),
    ("payload.readings[0] = 1", 0, T),
    ("payload.readings[1] = 2.5", 0, T),
    ("payload.readings[2] = 'x'", 0, T),
    ("payload.readings[3] IS NULL", 0, T),
    ("payload.readings[4].a = 1", 0, T),
    ("payload.readings[5] IS NULL", 0, T),
    ("payload.readings[18446744073709551615] IS NULL", 0, T),
    ("payload.nested.a.b = 'deep'", 0, T),
    ("payload.nested.a IS NOT NULL", 0, T),
    ("payload.nested.a.b.c IS NULL", 0, T),
    ("payload.\"weird key\" = 7", 0, T),
    ("payload.name.x IS NULL", 0, T),
    ("payload.readings.a IS NULL", 0, T),
    ("payload.readings.0 IS NULL", 0, T),
    ("payload.temp[0] IS NULL", 0, T),
    ("payload.big = 9007199254740993", 0, T),
    ("payload.big > 9007199254740992", 0, T),
    ("payload.huge > 9223372036854775807", 0, T),
    ("payload.big = big", 0, T),
    ("PAYLOAD.temp > 30", 0, T),
    ("payload.missing = 1", 0, N),
    ("payload.temp > 30", 1, N),
    ("payload.temp IS NULL", 1, T),
    ("payload IS NULL", 1, T),
    ("payload = 42", 2, T),
    ("payload > 41 AND payload.x IS NULL", 2, T),
    ("payload IS NULL", 3, T),
    ("payload.a = 1 OR region = 'us'", 3, T),
    // --- keywords are case-insensitive
    (
        "region in ('eu') and not count between 1 and 2 or false",
        0,
        T,
    ),
    ("region Like 'e%' EsCaPe '!'", 0, T),
    ("missing is null", 0, T),
    ("region is not null", 0, T),
    ("true", 0, T),
    ("True AND tRuE", 0, T),
    ("count not in (1) AND region not like 'x'", 0, T),
    // --- quoted identifiers
    ("\"weird key\" = 'w'", 0, T),
    ("\"a.b\" = 'dotted'", 0, T),
    ("\"region\" = 'eu'", 0, T),
    ("\"sub\"\"ject\" = 'q'", 0, T),
    ("\"and\" = 'kw'", 0, T),
    ("\"payload\" IS NULL", 0, T),
    // --- identifiers with '-' and '_'
    ("weird-name IS NULL AND _x IS NULL AND a1 IS NULL", 0, T),
    // --- repeated headers: the first value counts
    ("dup = 'first'", 0, T),
    ("dup = 'second'", 0, F),
    ("dup IN ('second')", 0, F),
    // --- missing headers
    ("missing = 1", 0, N),
    ("missing <> 1", 0, N),
    ("NOT missing = 1", 0, N),
    ("missing = missing", 0, N),
    ("region = 'eu'", 1, N),
    ("region = 'us'", 3, T),
];

#[test]
fn evaluation_table() {
    let msgs = messages();
    let mut failures = Vec::new();
    for &(text, m, want) in TABLE {
        let filter = match Filter::compile(text, &FilterLimits::default()) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("{text:?}: does not compile: {e}"));
                continue;
            }
        };
        let view = msgs[m].view();
        let got = filter.evaluate(&view);
        if got != want {
            failures.push(format!(
                "{text:?} on message {m}: got {got:?}, want {want:?}"
            ));
        }
        assert_eq!(filter.matches(&view), got == Some(true));
        // The canonical form means the same thing.
        let again = Filter::compile(&filter.canonical(), &roomy())
            .unwrap_or_else(|e| panic!("canonical of {text:?} does not compile: {e}"));
        assert_eq!(
            again.evaluate(&msgs[m].view()),
            got,
            "canonical of {text:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
}

/// (filter, column, message)
const ERRORS: &[(&str, usize, &str)] = &[
    ("", 1, "the filter is empty: expected a condition"),
    ("   ", 4, "the filter is empty: expected a condition"),
    ("temperature >", 14, "expected a value after '>'"),
    ("temperature > ", 15, "expected a value after '>'"),
    ("a > AND b", 5, "expected a value after '>', found AND"),
    ("a = )", 5, "expected a value after '=', found ')'"),
    ("a + * 2 > 1", 5, "expected a value after '+', found '*'"),
    ("= 1", 1, "expected a condition, found '='"),
    ("AND a = 1", 1, "expected a condition, found AND"),
    ("a = 1 AND", 10, "expected a condition after AND"),
    ("a = 1 OR OR b = 1", 10, "expected a condition after OR, found OR"),
    ("NOT", 4, "expected a condition after NOT"),
    ("(", 2, "expected a condition after '('"),
    ("()", 2, "expected a condition after '(', found ')'"),
    ("a > (", 6, "expected a value after '('"),
    ("a = 'eu", 5, "unterminated string: the string that starts here has no closing '"),
    ("'it''s", 1, "unterminated string: the string that starts here has no closing '"),
    ("\"weird = 1", 1, "unterminated quoted name: the name that starts here has no closing \""),
    ("\"\" = 1", 1, "a quoted header name must not be empty"),
    ("a # 1", 3, "unknown character '#'"),
    ("a = 1 ; b = 2", 7, "unknown character ';'"),
    ("a = `b`", 5, "unknown character '`'"),
    ("a == 1", 3, "use '=' to compare, not '=='"),
    ("a = 1 && b = 2", 7, "use AND instead of '&&'"),
    ("a = 1 || b = 2", 7, "use OR instead of '||'"),
    ("!a", 1, "use NOT instead of '!'"),
    ("(a = 1", 7, "expected ')' to close the '(' at column 1"),
    ("((a = 1) OR b = 2", 18, "expected ')' to close the '(' at column 1"),
    ("(a = 1 b", 8, "expected ')' to close the '(' at column 1, found b"),
    ("a = 1)", 6, "unexpected ')' without a matching '('"),
    (
        "a = 1 b = 2",
        7,
        "expected AND, OR or the end of the filter after a complete condition, found b",
    ),
    (
        "region = 'eu' region = 'us'",
        15,
        "expected AND, OR or the end of the filter after a complete condition, found region",
    ),
    (
        "a = 1 2",
        7,
        "expected AND, OR or the end of the filter after a complete condition, found 2",
    ),
    ("a BETWEEN 1 2", 13, "expected AND between the two bounds of BETWEEN (x BETWEEN low AND high), found 2"),
    ("a BETWEEN 1", 12, "expected AND between the two bounds of BETWEEN (x BETWEEN low AND high)"),
    ("a BETWEEN 1 AND", 16, "expected a value after AND"),
    ("a BETWEEN AND 2", 11, "expected a value after BETWEEN, found AND"),
    ("a LIKE 5", 8, "LIKE needs a string pattern in single quotes, found 5"),
    ("a LIKE b", 8, "LIKE needs a string pattern in single quotes, found b"),
    ("a LIKE", 7, "LIKE needs a string pattern in single quotes"),
    ("a LIKE 'x' ESCAPE 'ab'", 19, "ESCAPE must be exactly one character, found 'ab'"),
    ("a LIKE 'x' ESCAPE ''", 19, "ESCAPE must be exactly one character, found ''"),
    ("a LIKE 'x' ESCAPE !", 19, "use NOT instead of '!'"),
    ("a LIKE 'x' ESCAPE 1", 19, "ESCAPE needs one character in single quotes, found 1"),
    (
        "a LIKE 'x!' ESCAPE '!'",
        8,
        "the LIKE pattern ends with its escape character '!', which must be followed by '%', '_' or '!'",
    ),
    (
        "a LIKE 'x!y' ESCAPE '!'",
        8,
        "in the LIKE pattern, the escape character '!' is followed by 'y'; it may only precede '%', '_' or '!'",
    ),
    ("a IN 'x'", 6, "expected '(' after IN, as in x IN ('a', 'b'), found 'x'"),
    ("a IN", 5, "expected '(' after IN, as in x IN ('a', 'b')"),
    ("a IN ()", 7, "an IN list needs at least one value"),
    ("a IN ('x' 'y')", 11, "expected ',' or ')' in the IN list that opens at column 6, found 'y'"),
    ("a IN ('x',", 11, "an IN list holds only literals (strings, numbers, TRUE, FALSE, NULL)"),
    ("a IN ('x'", 10, "expected ',' or ')' in the IN list that opens at column 6"),
    ("a IN (b)", 7, "an IN list holds only literals (strings, numbers, TRUE, FALSE, NULL), found b"),
    ("a IN (1 + 1)", 9, "expected ',' or ')' in the IN list that opens at column 6, found '+'"),
    ("a IN (-'x')", 8, "an IN list holds only literals (strings, numbers, TRUE, FALSE, NULL), found 'x'"),
    ("a IS 5", 6, "expected NULL or NOT NULL after IS, found 5"),
    ("a IS", 5, "expected NULL or NOT NULL after IS"),
    ("a IS NOT TRUE", 10, "expected NULL after IS NOT, found TRUE"),
    ("a NOT 5", 7, "expected IN, BETWEEN or LIKE after NOT, found 5"),
    ("a NOT = 5", 7, "expected IN, BETWEEN or LIKE after NOT, found '='"),
    (
        "a = 1 = 2",
        7,
        "unexpected '=' after a comparison: comparisons do not chain; join them with AND or OR, or use parentheses",
    ),
    (
        "1 < a < 3",
        7,
        "unexpected '<' after a comparison: comparisons do not chain; join them with AND or OR, or use parentheses",
    ),
    (
        "a IS NULL IS NULL",
        11,
        "unexpected IS after a comparison: comparisons do not chain; join them with AND or OR, or use parentheses",
    ),
    ("5", 1, "expected a condition (such as a comparison), found a number"),
    ("a + 1", 1, "expected a condition (such as a comparison), found a number"),
    ("'x'", 1, "expected a condition (such as a comparison), found a string"),
    ("a = 1 AND 'x'", 11, "expected a condition (such as a comparison), found a string"),
    ("NOT 5", 5, "expected a condition (such as a comparison), found a number"),
    ("(5) OR a", 1, "expected a condition (such as a comparison), found a number"),
    ("'a' + 1 > 0", 1, "'+' needs numbers, found a string"),
    ("1 * 'a' > 0", 5, "'*' needs numbers, found a string"),
    ("-'a' = 1", 2, "'-' needs numbers, found a string"),
    ("(a = 1) + 1 > 0", 1, "'+' needs numbers, found a condition"),
    ("TRUE + 1 > 0", 1, "'+' needs numbers, found a condition"),
    ("payload. = 1", 9, "expected a field name after '.' (write other names in double quotes, e.g. payload.\"a b\")"),
    ("payload.a..b = 1", 11, "expected a field name after '.' (write other names in double quotes, e.g. payload.\"a b\")"),
    ("payload.a[ = 1", 11, "expected an index after '[': a whole number counting from 0"),
    ("payload.a[x] = 1", 11, "expected an index after '[': a whole number counting from 0"),
    ("payload.a[-1] = 1", 11, "expected an index after '[': a whole number counting from 0"),
    ("payload.a[1 = 1", 12, "expected ']' after the index"),
    ("payload.a[99999999999999999999999] = 1", 11, "the index is too large"),
    ("payload.\"a = 1", 9, "unterminated quoted name: the name that starts here has no closing \""),
    ("subject.a = 1", 8, "subject has no fields: write subject[n] for its n-th token, counting from 0"),
    ("subject[] = 1", 9, "expected an index after '[': a whole number counting from 0"),
    (
        "region.x = 1",
        7,
        "unexpected '.': only payload fields have dotted paths (payload.a.b); write a header name that contains '.' in double quotes, e.g. \"a.b\"",
    ),
    (
        "payload [0] = 1",
        9,
        "unexpected '[': an index follows payload fields or subject directly, without a space, e.g. payload.readings[0] or subject[1]",
    ),
    ("a = 1.", 5, "expected a digit after the decimal point"),
    ("a = 1.e5", 5, "expected a digit after the decimal point"),
    ("a = 1e+", 5, "expected a digit in the exponent"),
    ("a = 12abc", 5, "invalid number '12abc': a number must not run into letters"),
    ("a = 1e999", 5, "number '1e999' is out of range"),
    ("a = .5", 5, "a number needs a digit before the decimal point, e.g. 0.5"),
    ("a = +1", 5, "expected a value after '=', found '+'"),
    ("a, b", 2, "expected AND, OR or the end of the filter after a complete condition, found ','"),
    ("région = 'é' AND #", 18, "unknown character '#'"),
    ("a = 'ééé' AND", 14, "expected a condition after AND"),
    (
        "a = 1 averyveryverylongheadername_xyz",
        7,
        "expected AND, OR or the end of the filter after a complete condition, found averyveryverylonghea...",
    ),
];

#[test]
fn error_table() {
    let mut failures = Vec::new();
    for &(text, column, message) in ERRORS {
        match Filter::compile(text, &FilterLimits::default()) {
            Ok(_) => failures.push(format!("{text:?}: compiled, want an error")),
            Err(e) if e.column != column || e.message != message => failures.push(format!(
                "{text:?}:\n   got column {} {:?}\n  want column {column} {message:?}",
                e.column, e.message
            )),
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        ERRORS.len(),
        failures.join("\n")
    );
}

#[test]
fn error_display() {
    let e = Filter::compile("temperature >", &FilterLimits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "filter error at column 14: expected a value after '>'"
    );
}

#[test]
fn length_limit() {
    let limits = FilterLimits::default();
    let ok = format!("a = '{}'", "x".repeat(limits.max_len - 6));
    assert_eq!(ok.len(), limits.max_len);
    assert!(Filter::compile(&ok, &limits).is_ok());
    let long = format!("a = '{}'", "x".repeat(limits.max_len - 5));
    let e = Filter::compile(&long, &limits).unwrap_err();
    assert_eq!(e.column, 1);
    assert_eq!(
        e.message,
        "the filter is 4097 bytes long; the limit is 4096"
    );
}

#[test]
fn in_items_limit() {
    let limits = FilterLimits {
        max_in_items: 3,
        ..FilterLimits::default()
    };
    assert!(Filter::compile("a IN (1, 2, 3)", &limits).is_ok());
    let e = Filter::compile("a IN (1, 2, 3, 4)", &limits).unwrap_err();
    assert_eq!(
        (e.column, e.message.as_str()),
        (16, "the IN list has more than 3 items")
    );
    let list = (0..1024)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(Filter::compile(&format!("a IN ({list})"), &roomy()).is_ok());
    let e = Filter::compile(&format!("a IN ({list},1)"), &roomy().tap_in(1024)).unwrap_err();
    assert_eq!(e.message, "the IN list has more than 1024 items");
}

trait TapIn {
    fn tap_in(self, n: usize) -> Self;
}

impl TapIn for FilterLimits {
    fn tap_in(mut self, n: usize) -> Self {
        self.max_in_items = n;
        self
    }
}

#[test]
fn depth_limit() {
    let limits = FilterLimits::default();
    let too_deep = "the filter nests too deeply (more than 64 levels)";
    let at = |n: usize| format!("{}a{} = 1", "(".repeat(n), ")".repeat(n));
    assert!(Filter::compile(&at(64), &limits).is_ok());
    let e = Filter::compile(&at(65), &limits).unwrap_err();
    assert_eq!((e.column, e.message.as_str()), (65, too_deep));
    assert!(Filter::compile(&format!("{}TRUE", "NOT ".repeat(64)), &limits).is_ok());
    let e = Filter::compile(&format!("{}TRUE", "NOT ".repeat(65)), &limits).unwrap_err();
    assert_eq!((e.column, e.message.as_str()), (257, too_deep));
    assert!(Filter::compile(&format!("{}a = 1", "-".repeat(64)), &limits).is_ok());
    assert!(Filter::compile(&format!("{}a = 1", "-".repeat(65)), &limits).is_err());
    // Mixed: 32 parentheses each holding a NOT is 64 levels.
    let mixed = format!("{}TRUE{}", "(NOT ".repeat(32), ")".repeat(32));
    assert!(Filter::compile(&mixed, &limits).is_ok());
    let mixed = format!("{}TRUE{}", "(NOT ".repeat(33), ")".repeat(33));
    assert!(Filter::compile(&mixed, &limits).is_err());
    // An operand of a tighter operator is one level down: `x = (` is two levels.
    let eq = |n: usize| format!("{}TRUE{}", "x = (".repeat(n), ")".repeat(n));
    assert!(Filter::compile(&eq(32), &limits).is_ok());
    assert!(Filter::compile(&eq(33), &limits).is_err());
    // Siblings do not add up: depth is nesting, not count.
    let siblings = vec!["(((a = 1)))"; 200].join(" OR ");
    assert!(Filter::compile(&siblings, &limits).is_ok());
}

#[test]
fn long_chains_are_not_deep() {
    // 1,000-term chains at every level compile (the tree is flat) and evaluate.
    let msgs = messages();
    let view = msgs[0].view();
    let or = vec!["region = 'x'"; 999].join(" OR ") + " OR region = 'eu'";
    assert_eq!(compile_roomy(&or).evaluate(&view), Some(true));
    let and = vec!["count > 1"; 1000].join(" AND ");
    assert_eq!(compile_roomy(&and).evaluate(&view), Some(true));
    let sum = vec!["count"; 1000].join(" + ") + " = 42000";
    assert_eq!(compile_roomy(&sum).evaluate(&view), Some(true));
    let product = vec!["1"; 1000].join(" * ") + " = 1";
    assert_eq!(compile_roomy(&product).evaluate(&view), Some(true));
}

fn compile_roomy(text: &str) -> Filter {
    Filter::compile(text, &roomy()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn hostile_nesting_fails_fast() {
    let limits = roomy();
    for unit in ["(", "NOT ", "-", "(NOT -"] {
        let text = unit.repeat(100_000);
        let start = Instant::now();
        let e = Filter::compile(&text, &limits).unwrap_err();
        assert!(e.message.contains("nests too deeply"), "{unit:?}: {e}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{unit:?} took {:?}",
            start.elapsed()
        );
    }
    // With the default limits the length check refuses it before lexing.
    let e = Filter::compile(&"(".repeat(100_000), &FilterLimits::default()).unwrap_err();
    assert!(e.message.contains("bytes long"));
}

/// The deepest filters the default limits allow, compiled, evaluated, printed, cloned
/// and dropped on a thread with a small stack: the recursion really is bounded. (An
/// unoptimized build needs about 6 KiB of stack per level, an optimized one 1.5 KiB.)
#[test]
fn deepest_filters_fit_a_small_stack() {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let deep = [
                format!("{}TRUE{}", "(".repeat(64), ")".repeat(64)),
                format!("{}TRUE", "NOT ".repeat(64)),
                format!("{}count = 1", "-".repeat(64)),
                format!("{}-count{} = 1", "(".repeat(63), ")".repeat(63)),
                // Each `(NOT` is two levels, and the `+` and `=` operands one each.
                format!("{}payload.n + 1 = 43{}", "(NOT ".repeat(31), ")".repeat(31)),
                // Three levels a unit: AND's right side, the `(`, and OR's right side.
                format!(
                    "{}TRUE{}",
                    "a = 1 OR b = 2 AND (".repeat(21),
                    ")".repeat(21)
                ),
                // Four: the operands of `+`, `*` and `-`, and the `(`.
                format!("{}1{} = 1", "1 + 2 * -(".repeat(16), ")".repeat(16)),
            ];
            let msgs = messages();
            for text in deep {
                let f = Filter::compile(&text, &FilterLimits::default())
                    .unwrap_or_else(|e| panic!("{text}: {e}"));
                let _ = f.evaluate(&msgs[0].view());
                let printed = f.canonical();
                assert!(!printed.is_empty());
                let copy = f.clone();
                drop(f);
                let _ = copy.evaluate(&msgs[0].view());
                let _ = format!("{copy:?}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn filters_and_indexes_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Filter>();
    send_sync::<FilterError>();
    send_sync::<EqualityIndex<std::sync::Arc<u64>>>();
}

#[test]
fn payload_is_parsed_lazily_and_once() {
    let msgs = messages();
    let view = msgs[0].view();
    let header_only = compile("region = 'eu' AND subject[1] = 'eu'");
    assert!(!header_only.reads_payload());
    assert!(header_only.matches(&view));
    assert!(
        !view.is_payload_parsed(),
        "a header filter must not parse the payload"
    );
    // Short-circuit: the payload term is never reached.
    let short = compile("region = 'us' AND payload.temp > 30");
    assert!(short.reads_payload());
    assert!(!short.matches(&view));
    assert!(!view.is_payload_parsed());
    let reads = compile("payload.temp > 30");
    assert!(reads.matches(&view));
    assert!(view.is_payload_parsed());
    let first = view.json().map(|v| v as *const serde_json::Value);
    assert!(compile("payload.n = 42").matches(&view));
    assert_eq!(view.json().map(|v| v as *const serde_json::Value), first);
}

#[test]
fn header_equality_shape() {
    assert_eq!(
        compile("region = 'eu-7'").header_equality(),
        Some(("region", "eu-7"))
    );
    assert_eq!(
        compile("'eu-7' = region").header_equality(),
        Some(("region", "eu-7"))
    );
    assert_eq!(
        compile("\"device id\" = 'd''1'").header_equality(),
        Some(("device id", "d'1"))
    );
    for not_it in [
        "region = 'eu' AND a = 'b'",
        "region <> 'eu'",
        "region = 5",
        "region = other",
        "'a' = 'b'",
        "payload.region = 'eu'",
        "subject = 'eu'",
        "(region = 'eu') = TRUE",
        "region IN ('eu')",
        "NOT region = 'eu'",
    ] {
        assert_eq!(compile(not_it).header_equality(), None, "{not_it}");
    }
}

#[test]
fn text_and_display() {
    let f = compile("region  =  'eu'");
    assert_eq!(f.text(), "region  =  'eu'");
    assert_eq!(f.to_string(), "region  =  'eu'");
    assert_eq!(f.canonical(), "(\"region\" = 'eu')");
    let f =
        compile("a in (1, -2.5, 'x', null) and not b like 'a!%' escape '!' or c between -1 and 2");
    assert_eq!(
        f.canonical(),
        "(((\"a\" IN (1, -2.5, 'x', NULL)) AND (NOT (\"b\" LIKE 'a!%' ESCAPE '!'))) OR \
         (\"c\" BETWEEN (-1) AND 2))"
    );
}

#[test]
fn big_in_list_uses_the_same_rules() {
    // More than 8 items: the hashed form. Same answers as the short form.
    let msgs = messages();
    let view = msgs[0].view();
    let many: Vec<String> = (100..120).map(|i| i.to_string()).collect();
    let strs: Vec<String> = (0..20).map(|i| format!("'s{i}'")).collect();
    let cases = [
        (format!("count IN ({}, 42)", many.join(", ")), Some(true)),
        (format!("count IN ({})", many.join(", ")), Some(false)),
        (format!("count IN ({}, NULL)", many.join(", ")), None),
        (format!("region IN ({}, 'eu')", strs.join(", ")), Some(true)),
        (format!("region IN ({})", strs.join(", ")), Some(false)),
        (format!("abc IN ({})", many.join(", ")), None),
        (format!("count IN ({}, '42')", strs.join(", ")), Some(true)),
    ];
    for (text, want) in cases {
        assert_eq!(compile(&text).evaluate(&view), want, "{text}");
    }
}

// ---------------------------------------------------------------------------------
// Equality index

#[test]
fn index_basics() {
    let mut idx = EqualityIndex::new();
    idx.insert(compile("device = 'd1'"), 1);
    idx.insert(compile("'d2' = device"), 2);
    idx.insert(compile("device IN ('d1', 'd3', NULL)"), 3);
    idx.insert(compile("device = 'd1' AND payload.temp > 30"), 4);
    idx.insert(compile("region = 'eu' OR device = 'd1'"), 5);
    assert_eq!(idx.len(), 5);
    assert_eq!(idx.unindexed(), 1);
    assert!(idx.reads_payload());

    let hot = Msg::new(
        "c",
        &[("device", "d1"), ("region", "us")],
        r#"{"temp": 40}"#,
    );
    let cold = Msg::new("c", &[("device", "d1")], r#"{"temp": 10}"#);
    let other = Msg::new("c", &[("device", "d3")], "");
    let none = Msg::new("c", &[], "");
    fn ids(idx: &EqualityIndex<i32>, m: &Msg) -> Vec<i32> {
        let view = m.view();
        let mut v: Vec<i32> = idx.matching(&view).copied().collect();
        v.sort_unstable();
        v
    }
    assert_eq!(ids(&idx, &hot), [1, 3, 4, 5]);
    assert_eq!(ids(&idx, &cold), [1, 3, 5]);
    assert_eq!(ids(&idx, &other), [3]);
    assert_eq!(ids(&idx, &none), Vec::<i32>::new());

    assert!(idx.remove(&compile("device IN ('d1', 'd3', NULL)"), |&id| id == 3));
    assert!(idx.remove(&compile("region = 'eu' OR device = 'd1'"), |&id| id == 5));
    assert!(
        !idx.remove(&compile("device = 'd1'"), |&id| id == 2),
        "not filed under that filter"
    );
    assert_eq!(idx.len(), 3);
    assert_eq!(ids(&idx, &hot), [1, 4]);
    assert_eq!(ids(&idx, &other), Vec::<i32>::new());
    assert!(idx.remove(&compile("device = 'd1'"), |&id| id == 1));
    assert!(idx.remove(&compile("'d2' = device"), |&id| id == 2));
    assert!(
        idx.remove(&compile("device = 'd1' AND payload.temp > 30"), |&id| id
            == 4)
    );
    assert!(idx.is_empty());
}

#[test]
fn index_scales_by_hash() {
    let mut idx = EqualityIndex::new();
    for i in 0..10_000 {
        idx.insert(compile(&format!("device_id = 'dev-{i}'")), i);
    }
    assert_eq!(idx.unindexed(), 0);
    let m = Msg::new("commands.x", &[("device_id", "dev-7777")], "");
    let view = m.view();
    assert_eq!(idx.matching(&view).copied().collect::<Vec<_>>(), [7777]);
    assert!(!view.is_payload_parsed());
}

// ---------------------------------------------------------------------------------
// Property tests

/// Header names the generators use, bare or quoted.
const HEADERS: &[&str] = &[
    "region",
    "count",
    "ten",
    "abc",
    "missing",
    "flag",
    "neg",
    "pi",
    "big",
    "empty",
    "\"weird key\"",
    "dup",
];
const PATHS: &[&str] = &[
    "payload.temp",
    "payload.n",
    "payload.name",
    "payload.readings[1]",
    "payload.readings[2]",
    "payload.nested.a.b",
    "payload.ok",
    "payload.nothing",
    "payload.obj",
    "payload.big",
    "payload",
    "subject",
    "subject[1]",
    "subject[2]",
];

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(HEADERS).prop_map(str::to_owned),
        prop::sample::select(PATHS).prop_map(str::to_owned),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        (-50_i64..50).prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        prop::sample::select(vec!["0.5", "42.0", "3.14", "1e3", "2.5E-1"]).prop_map(str::to_owned),
    ]
}

fn string_lit() -> impl Strategy<Value = String> {
    "[a-zé'%_!4 ]{0,6}".prop_map(|s| format!("'{}'", s.replace('\'', "''")))
}

/// A literal that may appear in an IN list.
fn in_item() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => number(),
        4 => string_lit(),
        1 => prop::sample::select(vec!["TRUE", "FALSE", "NULL", "'eu'", "42", "'42'"])
            .prop_map(str::to_owned),
    ]
}

/// An expression that is statically numeric (or a field, or NULL).
fn numeric() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![field(), number(), Just("NULL".to_owned())];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", "%"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("-({a})")),
        ]
    })
}

/// Any value operand.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => numeric(),
        1 => string_lit(),
        1 => prop::sample::select(vec!["TRUE", "FALSE"]).prop_map(str::to_owned),
    ]
}

fn predicate() -> impl Strategy<Value = String> {
    let not = || prop::sample::select(vec!["", "NOT "]);
    prop_oneof![
        (
            value(),
            prop::sample::select(vec!["=", "<>", "!=", "<", "<=", ">", ">="]),
            value()
        )
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (value(), not(), prop::collection::vec(in_item(), 1..12))
            .prop_map(|(a, n, items)| format!("{a} {n}IN ({})", items.join(", "))),
        (value(), not(), value(), value())
            .prop_map(|(a, n, lo, hi)| format!("{a} {n}BETWEEN {lo} AND {hi}")),
        (value(), not(), "[a-z%_]{0,5}", prop::option::of(Just('!'))).prop_map(|(a, n, p, e)| {
            match e {
                Some(_) => format!("{a} {n}LIKE '{p}!%' ESCAPE '!'"),
                None => format!("{a} {n}LIKE '{p}'"),
            }
        }),
        (
            value(),
            prop::sample::select(vec!["IS NULL", "IS NOT NULL"])
        )
            .prop_map(|(a, t)| format!("{a} {t}")),
        field(),
        prop::sample::select(vec!["TRUE", "FALSE", "NULL"]).prop_map(str::to_owned),
    ]
}

/// A whole, valid filter.
fn condition() -> impl Strategy<Value = String> {
    predicate().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|v| format!("({})", v.join(" AND "))),
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|v| format!("({})", v.join(" OR "))),
            inner.clone().prop_map(|c| format!("NOT ({c})")),
            inner.prop_map(|c| format!("({c})")),
        ]
    })
}

fn header_message() -> impl Strategy<Value = Msg> {
    let values = prop::sample::select(vec![
        "eu", "42", "10", "abc", "-5", "true", "FALSE", "3.14", "", "1e3", "é",
    ]);
    (
        prop::collection::vec((prop::sample::select(HEADERS), values), 0..8),
        prop::sample::select(vec![
            PAYLOAD,
            "",
            "[1, 2]",
            "\"s\"",
            "7",
            "{\"temp\": \"hot\"}",
        ]),
    )
        .prop_map(|(headers, payload)| {
            let headers: Vec<(&str, &str)> = headers
                .into_iter()
                .map(|(k, v)| (k.trim_matches('"'), v))
                .collect();
            Msg::new("sensors.eu.42", &headers, payload)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiling_any_string_never_panics(text in any::<String>()) {
        let start = Instant::now();
        let _ = Filter::compile(&text, &FilterLimits::default());
        prop_assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn compiling_filter_like_text_never_panics(
        text in "([a-z0-9 '\"().,=<>!%_*+\\-\\[\\]é]|AND |OR |NOT |IN |LIKE |BETWEEN |IS |NULL |ESCAPE |payload|subject){0,40}"
    ) {
        let start = Instant::now();
        if let Ok(f) = Filter::compile(&text, &FilterLimits::default()) {
            for m in messages() {
                let _ = f.evaluate(&m.view());
            }
            let again = Filter::compile(&f.canonical(), &roomy());
            prop_assert!(again.is_ok(), "canonical of {:?}: {:?}", text, again);
        }
        prop_assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash(
        unit in prop::sample::select(vec!["(", "NOT ", "-", "(NOT ", "(-", "NOT (", "a + "]),
        n in prop_oneof![0_usize..3000, 28_usize..70],
    ) {
        let close = ")".repeat(unit.matches('(').count() * n);
        // Innermost: a condition for NOT, else a value compared at the top level, so
        // the levels are exactly those of the units.
        let text = if unit.contains("NOT") {
            format!("{}TRUE{close}", unit.repeat(n))
        } else {
            format!("{}a{close} = 1", unit.repeat(n))
        };
        let limits = roomy();
        // `a + a + ...` is a flat chain: no levels however long.
        let levels = n * (unit.matches(['(', '-']).count() + unit.matches("NOT").count());
        let start = Instant::now();
        match Filter::compile(&text, &limits) {
            Ok(f) => {
                prop_assert!(levels <= limits.max_depth, "{} levels accepted", levels);
                let _ = f.evaluate(&messages()[0].view());
                let _ = f.canonical();
            }
            Err(e) => {
                prop_assert!(levels > limits.max_depth, "{}", e);
                prop_assert_eq!(e.message, "the filter nests too deeply (more than 64 levels)");
            }
        }
        prop_assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn valid_expressions_compile_evaluate_and_round_trip(
        text in condition(),
        extra in header_message(),
    ) {
        let f = Filter::compile(&text, &roomy())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let canonical = f.canonical();
        let again = Filter::compile(&canonical, &roomy())
            .map_err(|e| TestCaseError::fail(format!("{canonical}: {e}")))?;
        prop_assert_eq!(again.canonical(), canonical.clone(), "canonical form is a fixed point");
        prop_assert_eq!(f.reads_payload(), again.reads_payload());
        let mut msgs = messages();
        msgs.push(extra);
        for m in &msgs {
            prop_assert_eq!(f.evaluate(&m.view()), again.evaluate(&m.view()), "{}", canonical);
        }
    }

    #[test]
    fn in_agrees_with_or_expansion(
        lhs in prop_oneof![field(), in_item()],
        items in prop::collection::vec(in_item(), 1..24),
        m in header_message(),
    ) {
        let list = items.join(", ");
        let ors = items.iter().map(|i| format!("{lhs} = {i}")).collect::<Vec<_>>().join(" OR ");
        let pairs = [
            (format!("{lhs} IN ({list})"), format!("({ors})")),
            (format!("{lhs} NOT IN ({list})"), format!("NOT ({ors})")),
        ];
        for (a, b) in pairs {
            let fa = Filter::compile(&a, &roomy()).map_err(|e| TestCaseError::fail(format!("{a}: {e}")))?;
            let fb = Filter::compile(&b, &roomy()).map_err(|e| TestCaseError::fail(format!("{b}: {e}")))?;
            for msg in [&m, &messages()[0]] {
                prop_assert_eq!(fa.evaluate(&msg.view()), fb.evaluate(&msg.view()), "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn between_agrees_with_its_definition(
        x in numeric(), lo in value(), hi in value(), m in header_message(),
    ) {
        let a = compile_roomy(&format!("{x} BETWEEN {lo} AND {hi}"));
        let b = compile_roomy(&format!("{x} >= {lo} AND {x} <= {hi}"));
        let na = compile_roomy(&format!("{x} NOT BETWEEN {lo} AND {hi}"));
        let view = m.view();
        prop_assert_eq!(a.evaluate(&view), b.evaluate(&view));
        prop_assert_eq!(na.evaluate(&view), b.evaluate(&view).map(|v| !v));
    }

    #[test]
    fn index_agrees_with_brute_force(
        filters in prop::collection::vec(index_filter(), 0..40),
        msgs in prop::collection::vec(index_message(), 1..8),
        drop_every in 2_usize..5,
    ) {
        let compiled: Vec<Filter> = filters.iter().map(|f| compile(f)).collect();
        let mut idx = EqualityIndex::new();
        for (i, f) in compiled.iter().enumerate() {
            idx.insert(f.clone(), i);
        }
        prop_assert_eq!(idx.len(), compiled.len());
        let check = |idx: &EqualityIndex<usize>, alive: &dyn Fn(usize) -> bool| -> Result<(), TestCaseError> {
            for m in &msgs {
                let view = m.view();
                let mut got: Vec<usize> = idx.matching(&view).copied().collect();
                got.sort_unstable();
                let want: Vec<usize> = (0..compiled.len())
                    .filter(|&i| alive(i) && compiled[i].matches(&view))
                    .collect();
                prop_assert_eq!(got, want);
            }
            Ok(())
        };
        check(&idx, &|_| true)?;
        let mut removed = 0;
        for (i, f) in compiled.iter().enumerate().filter(|(i, _)| i % drop_every == 0) {
            prop_assert!(idx.remove(f, |&j| j == i));
            removed += 1;
        }
        prop_assert_eq!(idx.len(), compiled.len() - removed);
        check(&idx, &|i| i % drop_every != 0)?;
    }
}

fn index_filter() -> impl Strategy<Value = String> {
    let h = || prop::sample::select(vec!["a", "b", "\"a\""]);
    let v = || prop::sample::select(vec!["x", "y", "z", "1"]);
    prop_oneof![
        (h(), v()).prop_map(|(h, v)| format!("{h} = '{v}'")),
        (h(), v()).prop_map(|(h, v)| format!("'{v}' = {h}")),
        (h(), v(), v()).prop_map(|(h, v, w)| format!("{h} IN ('{v}', '{w}')")),
        (h(), v()).prop_map(|(h, v)| format!("{h} IN ('{v}', NULL, '{v}')")),
        (h(), v()).prop_map(|(h, v)| format!("{h} = '{v}' AND c > 1")),
        (h(), v()).prop_map(|(h, v)| format!("c > 1 AND {h} IN ('{v}') AND b <> 'y'")),
        (h(), v()).prop_map(|(h, v)| format!("{h} <> '{v}'")),
        (h(), v()).prop_map(|(h, v)| format!("{h} = '{v}' OR c = 1")),
        (h(), v()).prop_map(|(h, v)| format!("NOT {h} = '{v}'")),
        h().prop_map(|h| format!("{h} = 1")),
        (h(), v()).prop_map(|(h, v)| format!("{h} IN ('{v}', 1)")),
        Just("TRUE".to_owned()),
        Just("a LIKE 'x%'".to_owned()),
    ]
}

fn index_message() -> impl Strategy<Value = Msg> {
    let name = prop::sample::select(vec!["a", "b", "c"]);
    let value = prop::sample::select(vec!["x", "y", "z", "1", "1.0", "2", "X"]);
    prop::collection::vec((name, value), 0..5).prop_map(|headers| Msg::new("s", &headers, ""))
}

// ---------------------------------------------------------------------------------
// docs/FILTERS.md says what the code does

const DOC: &str = include_str!("../../../docs/FILTERS.md");

/// The lines of the section that starts with `heading`.
fn doc_section(heading: &'static str) -> impl Iterator<Item = &'static str> {
    DOC.lines()
        .skip_while(move |l| *l != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
}

#[test]
fn doc_examples_compile() {
    let mut n = 0;
    for line in doc_section("## Examples") {
        let line = line.trim();
        if line.is_empty() || line.starts_with("--") || line.starts_with("```") {
            continue;
        }
        compile(line);
        n += 1;
    }
    assert!(n >= 8, "found only {n} examples");
}

#[test]
fn doc_error_table_is_accurate() {
    let mut n = 0;
    for line in doc_section("## Errors") {
        // | `filter` | `column N: message` |
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let (filter, rest) = rest.split_once("` | `").unwrap();
        let error = rest.strip_suffix("` |").unwrap();
        let e = Filter::compile(filter, &FilterLimits::default()).unwrap_err();
        assert_eq!(
            format!("column {}: {}", e.column, e.message),
            error,
            "{filter}"
        );
        n += 1;
    }
    assert!(n >= 20, "found only {n} rows");
}

#[test]
fn doc_type_table_is_accurate() {
    let m = Msg::new("s", &[("count", "42")], r#"{"n": 42, "s": "42"}"#);
    let mut n = 0;
    for line in doc_section("## Types") {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((filter, rest)) = rest.split_once("` | ") else {
            continue;
        };
        let want = match rest.split_whitespace().next() {
            Some("TRUE") => Some(true),
            Some("FALSE") => Some(false),
            Some("NULL") => None,
            _ => continue,
        };
        assert_eq!(compile(filter).evaluate(&m.view()), want, "{filter}");
        n += 1;
    }
    assert!(n >= 10, "found only {n} rows");
}
