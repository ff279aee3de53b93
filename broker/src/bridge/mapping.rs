//! MQTT topics and filters ↔ tern subjects and patterns.
//!
//! Levels map to tokens one to one: `/` ↔ `.`, `+` ↔ `*`, `#` ↔ `>`. A tern token cannot
//! be empty or hold `.`, `*`, `>`, whitespace or control characters, all of which an
//! MQTT level may; such levels are escaped with `%`, so that every MQTT topic maps to a
//! valid subject and back:
//!
//! ```text
//! MQTT level                         tern token
//! (empty)                        ↔   %
//! each '%' '.' '*' '>'           ↔   %XX per UTF-8 byte, upper-case hex
//!   whitespace, control char         ('.' → %2E, ' ' → %20, U+3000 → %E3%80%80)
//! anything else                  ↔   itself ('$', '-', non-ASCII letters, ...)
//!
//! sensors/kitchen/temp    ↔  sensors.kitchen.temp
//! $SYS/broker/load        ↔  $SYS.broker.load
//! a//b                    ↔  a.%.b
//! /leading                ↔  %.leading
//! v1.2/living room        ↔  v1%2E2.living%20room
//! 50%                     ↔  50%25
//! ```
//!
//! A lone `%` cannot come from a non-empty level (escapes always have two hex digits
//! after the `%`), so the empty level is unambiguous. [`mqtt_to_subject`] is total;
//! [`subject_to_mqtt`] accepts exactly its image of valid MQTT topics and refuses the
//! rest — a token with an escape that the forward direction would not have written
//! (`%2e`, `%41`, a stray `%`), or one that decodes to a `/` or a NUL (`%00`), which no
//! MQTT level can hold, and the subject `%`, whose topic would be the empty one, which
//! MQTT forbids too — so the two are exact inverses on valid topics.
//!
//! [`Route`] maps between one MQTT filter and one tern pattern whose wildcards
//! correspond (same kind, same level); literal levels may be renamed.

use std::fmt::Write as _;

/// Why a topic, subject, filter or pattern cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("token '{0}' has an escape that no MQTT level maps to (escapes are %XX in upper-case hex, for '%', '.', '*', '>', whitespace and control characters only)")]
    NotCanonical(String),
    #[error("token '{0}' holds '/', which an MQTT level cannot")]
    Slash(String),
    /// MQTT forbids U+0000 in every string; a broker may close the connection of a
    /// client that sends one.
    #[error("token '{0}' holds a NUL character (%00), which MQTT topics and filters cannot")]
    Nul(String),
    /// MQTT topics and filters must be at least one character long.
    #[error("'{0}' maps to the empty MQTT topic, which MQTT does not allow")]
    Empty(String),
    #[error("token '{0}' holds '+' or '#', which are wildcards in an MQTT filter")]
    WildcardChar(String),
    #[error("'{0}' is not an MQTT filter: {1}")]
    BadFilter(String, &'static str),
    #[error("'{0}' is not a tern pattern: {1}")]
    BadPattern(String, String),
    #[error("{0}")]
    Mismatch(String),
}

/// Whether `c` is written `%XX` in a tern token.
fn escaped(c: char) -> bool {
    matches!(c, '%' | '.' | '*' | '>') || c.is_whitespace() || c.is_control()
}

/// Appends the tern token for MQTT level `level`.
fn push_token(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for c in level.chars() {
        if escaped(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// The tern token for one MQTT level.
pub fn level_to_token(level: &str) -> String {
    let mut out = String::with_capacity(level.len() + 2);
    push_token(level, &mut out);
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The MQTT level for one tern token: the inverse of [`level_to_token`].
///
/// # Errors
///
/// The token is not one that [`level_to_token`] writes, or decodes to a level with a
/// `/` or a NUL.
pub fn token_to_level(token: &str) -> Result<String, MapError> {
    if token == "%" {
        return Ok(String::new());
    }
    let not_canonical = || MapError::NotCanonical(token.to_string());
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            match tail {
                [h, l, after @ ..] => {
                    let (h, l) = hex(*h).zip(hex(*l)).ok_or_else(not_canonical)?;
                    bytes.push(h << 4 | l);
                    rest = after;
                }
                _ => return Err(not_canonical()),
            }
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let level = String::from_utf8(bytes).map_err(|_| not_canonical())?;
    // Decoding is lenient (lower-case hex, any character); re-encoding tells whether
    // the token is exactly what the forward direction writes.
    if level.is_empty() || level_to_token(&level) != token {
        return Err(not_canonical());
    }
    if level.contains('/') {
        return Err(MapError::Slash(token.to_string()));
    }
    if level.contains('\0') {
        return Err(MapError::Nul(token.to_string()));
    }
    Ok(level)
}

/// The tern subject for an MQTT topic name. Total: every string maps (the result may
/// still be over the broker's subject limits).
pub fn mqtt_to_subject(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_token(level, &mut out);
    }
    out
}

/// The MQTT topic for a tern subject: the inverse of [`mqtt_to_subject`].
///
/// # Errors
///
/// A token that [`mqtt_to_subject`] never writes for a valid topic (see
/// [`token_to_level`]), or the subject `%`, whose topic would be empty.
pub fn subject_to_mqtt(subject: &str) -> Result<String, MapError> {
    if subject == "%" {
        return Err(MapError::Empty(subject.to_string()));
    }
    let mut out = String::with_capacity(subject.len());
    for (i, token) in subject.split('.').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&token_to_level(token)?);
    }
    Ok(out)
}

/// One level of a filter or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// An MQTT level (raw) or a tern token (escaped), depending on the side.
    Literal(String),
    /// `+` / `*`: exactly one level.
    One,
    /// `#` / `>`: the rest.
    Rest,
}

/// Parses an MQTT filter into levels.
fn parse_filter(filter: &str) -> Result<Vec<Level>, MapError> {
    let bad = |why| MapError::BadFilter(filter.to_string(), why);
    if filter.is_empty() {
        return Err(bad("it is empty"));
    }
    let count = filter.split('/').count();
    filter
        .split('/')
        .enumerate()
        .map(|(i, level)| match level {
            "+" => Ok(Level::One),
            "#" if i + 1 == count => Ok(Level::Rest),
            "#" => Err(bad("'#' may only be the last level")),
            l if l.contains(['+', '#']) => Err(bad("'+' and '#' must be whole levels")),
            l if l.contains('\0') => Err(bad("it holds a NUL character")),
            l => Ok(Level::Literal(l.to_string())),
        })
        .collect()
}

/// Parses a tern pattern into levels.
fn parse_pattern(pattern: &str) -> Result<Vec<Level>, MapError> {
    tern_codec::subject::validate_pattern(pattern, &tern_codec::SubjectLimits::default())
        .map_err(|e| MapError::BadPattern(pattern.to_string(), e.to_string()))?;
    Ok(pattern
        .split('.')
        .map(|t| match t {
            "*" => Level::One,
            ">" => Level::Rest,
            t => Level::Literal(t.to_string()),
        })
        .collect())
}

/// The tern pattern for an MQTT filter (`+` → `*`, `#` → `>`, levels escaped).
///
/// # Errors
///
/// `filter` is not a valid MQTT filter.
pub fn filter_to_pattern(filter: &str) -> Result<String, MapError> {
    let levels = parse_filter(filter)?;
    let tokens: Vec<String> = levels
        .iter()
        .map(|l| match l {
            Level::One => "*".to_string(),
            Level::Rest => ">".to_string(),
            Level::Literal(l) => level_to_token(l),
        })
        .collect();
    Ok(tokens.join("."))
}

/// The MQTT filter for a tern pattern: the inverse of [`filter_to_pattern`].
///
/// # Errors
///
/// `pattern` is not a valid pattern, or has a token that maps to no MQTT level (or to
/// one holding `+` or `#`), or is `%`, whose filter would be empty.
pub fn pattern_to_filter(pattern: &str) -> Result<String, MapError> {
    let levels = parse_pattern(pattern)?;
    if pattern == "%" {
        return Err(MapError::Empty(pattern.to_string()));
    }
    let mut out = Vec::with_capacity(levels.len());
    for l in &levels {
        out.push(match l {
            Level::One => "+".to_string(),
            Level::Rest => "#".to_string(),
            Level::Literal(t) => filter_level(t)?,
        });
    }
    Ok(out.join("/"))
}

/// A literal pattern token as a literal filter level: it must not read as a wildcard.
fn filter_level(token: &str) -> Result<String, MapError> {
    let level = token_to_level(token)?;
    if level.contains(['+', '#']) {
        return Err(MapError::WildcardChar(token.to_string()));
    }
    Ok(level)
}

/// Whether MQTT filter levels `filter` match `topic`, and the levels the wildcards
/// matched, in order (a `#` contributes every remaining level, possibly none).
///
/// MQTT rules: `#` also matches the parent level (`a/#` matches `a`), and a filter
/// starting with a wildcard does not match a topic starting with `$`.
fn mqtt_match<'t>(filter: &[Level], topic: &'t str) -> Option<Vec<Vec<&'t str>>> {
    if topic.starts_with('$') && matches!(filter.first(), Some(Level::One | Level::Rest)) {
        return None;
    }
    let mut levels = topic.split('/');
    let mut captures = Vec::new();
    for f in filter {
        match f {
            Level::Rest => {
                captures.push(levels.by_ref().collect());
                return Some(captures);
            }
            Level::One => captures.push(vec![levels.next()?]),
            Level::Literal(l) => {
                if levels.next()? != l {
                    return None;
                }
            }
        }
    }
    levels.next().is_none().then_some(captures)
}

/// Whether tern pattern levels `pattern` match `subject`, and the captures.
fn tern_match<'s>(pattern: &[Level], subject: &'s str) -> Option<Vec<Vec<&'s str>>> {
    let mut tokens = subject.split('.');
    let mut captures = Vec::new();
    for p in pattern {
        match p {
            Level::Rest => {
                let rest: Vec<&str> = tokens.by_ref().collect();
                if rest.is_empty() {
                    return None;
                }
                captures.push(rest);
                return Some(captures);
            }
            Level::One => captures.push(vec![tokens.next()?]),
            Level::Literal(l) => {
                if tokens.next()? != l {
                    return None;
                }
            }
        }
    }
    tokens.next().is_none().then_some(captures)
}

/// Whether MQTT `filter` matches `topic` (a filter that does not parse matches nothing).
pub fn mqtt_matches(filter: &str, topic: &str) -> bool {
    parse_filter(filter).is_ok_and(|f| mqtt_match(&f, topic).is_some())
}

/// A mapping between one MQTT filter and one tern pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    mqtt: Vec<Level>,
    tern: Vec<Level>,
}

/// Where wildcards are: (level index, is `#`/`>`).
fn wildcards(levels: &[Level]) -> Vec<(usize, bool)> {
    levels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l {
            Level::One => Some((i, false)),
            Level::Rest => Some((i, true)),
            Level::Literal(_) => None,
        })
        .collect()
}

impl Route {
    /// A route between `mqtt` (a filter) and `tern` (a pattern); a missing side is the
    /// mechanical mapping of the other.
    ///
    /// # Errors
    ///
    /// The filter or pattern is invalid, or their wildcards do not correspond: every
    /// wildcard must have a partner of the same kind (`+`/`*`, `#`/`>`) at the same
    /// level. The error says which side (`"mqtt"` or `"tern"`) is at fault.
    pub fn new(mqtt: Option<&str>, tern: Option<&str>) -> Result<Route, (&'static str, MapError)> {
        let (mqtt, tern) = match (mqtt, tern) {
            (Some(m), Some(t)) => (m.to_string(), t.to_string()),
            (Some(m), None) => {
                let t = filter_to_pattern(m).map_err(|e| ("mqtt", e))?;
                (m.to_string(), t)
            }
            (None, Some(t)) => {
                let m = pattern_to_filter(t).map_err(|e| ("tern", e))?;
                (m, t.to_string())
            }
            (None, None) => {
                return Err((
                    "mqtt",
                    MapError::Mismatch("give an MQTT filter or a tern pattern".into()),
                ))
            }
        };
        let mqtt_levels = parse_filter(&mqtt).map_err(|e| ("mqtt", e))?;
        let tern_levels = parse_pattern(&tern).map_err(|e| ("tern", e))?;
        let (wm, wt) = (wildcards(&mqtt_levels), wildcards(&tern_levels));
        if wm != wt {
            let show = |w: &[(usize, bool)], one: &str, rest: &str| {
                if w.is_empty() {
                    return "no wildcards".to_string();
                }
                w.iter()
                    .map(|(i, r)| format!("'{}' at level {}", if *r { rest } else { one }, i + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err((
                "tern",
                MapError::Mismatch(format!(
                    "the wildcards of tern pattern '{tern}' ({}) do not correspond to those of MQTT filter '{mqtt}' ({}): '+' maps to '*' and '#' to '>', each at the same level",
                    show(&wt, "*", ">"),
                    show(&wm, "+", "#"),
                )),
            ));
        }
        Ok(Route {
            mqtt: mqtt_levels,
            tern: tern_levels,
        })
    }

    /// The MQTT filter, as MQTT writes it.
    pub fn mqtt_filter(&self) -> String {
        join(&self.mqtt, "/", "+", "#")
    }

    /// The tern pattern.
    pub fn tern_pattern(&self) -> String {
        join(&self.tern, ".", "*", ">")
    }

    /// Whether `topic` matches the MQTT filter.
    pub fn matches_topic(&self, topic: &str) -> bool {
        mqtt_match(&self.mqtt, topic).is_some()
    }

    /// The subject an MQTT message on `topic` is imported as; `None` when the topic
    /// does not match the filter. Always a syntactically valid subject, though it may
    /// be over the broker's length limits.
    pub fn import(&self, topic: &str) -> Option<String> {
        let captures = mqtt_match(&self.mqtt, topic)?;
        let mut captures = captures.into_iter();
        let mut tokens: Vec<String> = Vec::with_capacity(self.tern.len());
        for l in &self.tern {
            match l {
                Level::Literal(t) => tokens.push(t.clone()),
                Level::One | Level::Rest => {
                    tokens.extend(captures.next()?.into_iter().map(level_to_token));
                }
            }
        }
        Some(tokens.join("."))
    }

    /// The MQTT topic a tern message on `subject` is exported to; `None` when the
    /// subject does not match the pattern.
    ///
    /// # Errors
    ///
    /// A token the wildcards matched maps to no MQTT level (see [`token_to_level`]),
    /// or the topic would be empty (a `+` or `#` filter and the subject `%`).
    pub fn export(&self, subject: &str) -> Option<Result<String, MapError>> {
        let captures = tern_match(&self.tern, subject)?;
        let mut captures = captures.into_iter();
        let mut levels: Vec<String> = Vec::with_capacity(self.mqtt.len());
        for l in &self.mqtt {
            match l {
                Level::Literal(m) => levels.push(m.clone()),
                Level::One | Level::Rest => {
                    for token in captures.next()? {
                        match token_to_level(token) {
                            Ok(level) => levels.push(level),
                            Err(e) => return Some(Err(e)),
                        }
                    }
                }
            }
        }
        let topic = levels.join("/");
        if topic.is_empty() {
            return Some(Err(MapError::Empty(subject.to_string())));
        }
        Some(Ok(topic))
    }
}

fn join(levels: &[Level], sep: &str, one: &str, rest: &str) -> String {
    levels
        .iter()
        .map(|l| match l {
            Level::Literal(s) => s.as_str(),
            Level::One => one,
            Level::Rest => rest,
        })
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tern_codec::subject::{validate_pattern, validate_subject};
    use tern_codec::SubjectLimits;

    const TABLE: &[(&str, &str)] = &[
        ("sensors/kitchen/temperature", "sensors.kitchen.temperature"),
        ("$SYS/broker/load", "$SYS.broker.load"),
        ("a//b", "a.%.b"),
        ("/leading", "%.leading"),
        ("trailing/", "trailing.%"),
        ("/", "%.%"),
        ("v1.2/x", "v1%2E2.x"),
        ("living room/temp", "living%20room.temp"),
        ("50%", "50%25"),
        ("%", "%25"),
        ("a*b/>", "a%2Ab.%3E"),
        ("*", "%2A"),
        ("tab\there", "tab%09here"),
        ("température/Küche/温度", "température.Küche.温度"),
        ("ideographic\u{3000}space", "ideographic%E3%80%80space"),
        ("a+b/c#d", "a+b.c#d"),
        ("dash-under_score:colon", "dash-under_score:colon"),
    ];

    #[test]
    fn table_round_trips() {
        for (topic, subject) in TABLE {
            assert_eq!(mqtt_to_subject(topic), *subject, "{topic:?}");
            assert_eq!(
                subject_to_mqtt(subject).as_deref(),
                Ok(*topic),
                "{subject:?}"
            );
            validate_subject(subject, &SubjectLimits::default())
                .unwrap_or_else(|e| panic!("{subject}: {e}"));
        }
    }

    #[test]
    fn subjects_outside_the_image_are_refused() {
        for bad in [
            "a.%2e", "a.%41", "a.50%", "a.%2", "a.%ZZ", "a.%FF", "a/b.c", "%%",
        ] {
            assert!(subject_to_mqtt(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            subject_to_mqtt("dev/7.reboot"),
            Err(MapError::Slash(_))
        ));
    }

    /// Found by the `mqtt_mapping` fuzz target: `%00` decoded to a level holding NUL,
    /// so `pattern_to_filter("a.%00")` gave a filter that `filter_to_pattern` refuses,
    /// and a tern message on `commands.%00` was exported to the topic `commands/\0`,
    /// which MQTT forbids (a broker may drop the bridge's connection for it, and the
    /// export would send it again after every reconnect).
    #[test]
    fn nul_maps_to_no_mqtt_level() {
        assert_eq!(token_to_level("%00"), Err(MapError::Nul("%00".into())));
        assert_eq!(token_to_level("a%00b"), Err(MapError::Nul("a%00b".into())));
        assert!(subject_to_mqtt("commands.%00").is_err());
        assert!(pattern_to_filter("a.%00").is_err());
        assert!(filter_to_pattern("a/\0").is_err());
        let r = Route::new(None, Some("commands.>")).unwrap();
        assert!(matches!(
            r.export("commands.%00"),
            Some(Err(MapError::Nul(_)))
        ));
        // The forward direction stays total.
        assert_eq!(mqtt_to_subject("a/\0"), "a.%00");
    }

    /// Found by the `mqtt_mapping` fuzz target: the subject and the pattern `%` (one
    /// empty level) mapped to the empty topic and filter, which MQTT forbids, so
    /// `pattern_to_filter("%")` gave a filter that `filter_to_pattern` refuses, and a
    /// `>` export sent a tern message on `%` to the topic "".
    #[test]
    fn nothing_maps_to_the_empty_topic() {
        assert_eq!(
            mqtt_to_subject(""),
            "%",
            "the forward direction stays total"
        );
        assert_eq!(subject_to_mqtt("%"), Err(MapError::Empty("%".into())));
        assert_eq!(pattern_to_filter("%"), Err(MapError::Empty("%".into())));
        assert_eq!(subject_to_mqtt("%.%").as_deref(), Ok("/"));
        for (mqtt, tern) in [("#", ">"), ("+", "*")] {
            let r = Route::new(Some(mqtt), Some(tern)).unwrap();
            assert!(matches!(r.export("%"), Some(Err(MapError::Empty(_)))));
        }
        let r = Route::new(Some("#"), None).unwrap();
        assert_eq!(r.export("%.%").unwrap().as_deref(), Ok("/"));
    }

    #[test]
    fn filters_map_both_ways() {
        for (filter, pattern) in [
            ("sensors/+/temperature", "sensors.*.temperature"),
            ("commands/#", "commands.>"),
            ("#", ">"),
            ("+/+", "*.*"),
            ("a//+/#", "a.%.*.>"),
            ("$SYS/#", "$SYS.>"),
        ] {
            assert_eq!(filter_to_pattern(filter).as_deref(), Ok(pattern));
            assert_eq!(pattern_to_filter(pattern).as_deref(), Ok(filter));
        }
        for bad in ["a/#/b", "a/b#", "a+/b", ""] {
            assert!(filter_to_pattern(bad).is_err(), "{bad}");
        }
        // A literal '+' in a tern token would read as a wildcard in MQTT.
        assert!(pattern_to_filter("a.+").is_err());
        assert!(pattern_to_filter("a..b").is_err());
    }

    #[test]
    fn routes_refuse_wildcards_that_do_not_correspond() {
        for (m, t) in [
            ("a/#", "a.*"),
            ("a/+", "a.>"),
            ("a/+/b", "a.b.*"),
            ("a/+/+", "a.*.b"),
            ("a/b", "a.*"),
            ("+/b", "a.*"),
        ] {
            let err = Route::new(Some(m), Some(t)).unwrap_err();
            assert_eq!(err.0, "tern", "{m} {t}");
            assert!(
                matches!(err.1, MapError::Mismatch(_)),
                "{m} {t}: {:?}",
                err.1
            );
        }
        assert!(Route::new(Some("site-a/+/temp"), Some("plant.*.temperature")).is_ok());
        assert!(Route::new(Some("a/+/b/#"), Some("x.*.y.>")).is_ok());
    }

    #[test]
    fn routes_map_with_renamed_literals() {
        let r = Route::new(Some("site-a/+/temp/#"), Some("plant.*.temperature.>")).unwrap();
        assert_eq!(
            r.import("site-a/kitchen room/temp/x/y").as_deref(),
            Some("plant.kitchen%20room.temperature.x.y")
        );
        assert_eq!(r.import("site-b/k/temp/x"), None);
        assert_eq!(
            r.export("plant.k%2E1.temperature.a").unwrap().as_deref(),
            Ok("site-a/k.1/temp/a")
        );
        assert!(r.export("plant.k/1.temperature.a").unwrap().is_err());
        assert_eq!(r.export("other.k.temperature.a"), None);
        // '#' matches the parent level too.
        let r = Route::new(Some("x/#"), None).unwrap();
        assert_eq!(r.import("x").as_deref(), Some("x"));
        assert_eq!(r.tern_pattern(), "x.>");
    }

    #[test]
    fn wildcards_do_not_match_dollar_topics() {
        assert!(!mqtt_matches("#", "$SYS/broker/load"));
        assert!(!mqtt_matches("+/broker/load", "$SYS/broker/load"));
        assert!(mqtt_matches("$SYS/#", "$SYS/broker/load"));
        assert!(mqtt_matches("a/+", "a/"));
        assert!(!mqtt_matches("a/+", "a"));
    }

    fn topic() -> impl Strategy<Value = String> {
        // Weighted towards the characters that need escaping.
        let ch = prop_oneof![
            4 => any::<char>(),
            2 => prop::sample::select(vec!['/', '.', '%', '*', '>', ' ', '\t', '\0', '+', '#', '$', '\u{3000}', '\u{85}']),
            2 => prop::char::range('a', 'z'),
        ];
        prop::collection::vec(ch, 0..48).prop_map(|v| v.into_iter().collect())
    }

    fn token() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            3 => prop::char::range('a', 'f'),
            2 => prop::sample::select(vec!['%', '/', '+', '#', '2', 'E', 'A', '0', 'é']),
        ];
        prop::collection::vec(ch, 1..8).prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn every_topic_round_trips(t in topic()) {
            let s = mqtt_to_subject(&t);
            prop_assert!(validate_subject(&s, &SubjectLimits::default()).is_ok(), "{:?} -> {:?}", t, s);
            if t.contains('\0') {
                // Not an MQTT topic: it maps, but nothing maps back to it.
                prop_assert!(matches!(subject_to_mqtt(&s), Err(MapError::Nul(_))));
            } else if t.is_empty() {
                prop_assert!(matches!(subject_to_mqtt(&s), Err(MapError::Empty(_))));
            } else {
                prop_assert_eq!(subject_to_mqtt(&s), Ok(t));
            }
        }

        #[test]
        fn mapped_subjects_map_back(tokens in prop::collection::vec(token(), 1..6)) {
            let s = tokens.join(".");
            if let Ok(t) = subject_to_mqtt(&s) {
                prop_assert_eq!(mqtt_to_subject(&t), s);
            }
        }

        #[test]
        fn every_filter_maps_to_a_valid_pattern(
            levels in prop::collection::vec(
                prop_oneof![3 => topic().prop_map(|t| t.replace(['/', '+', '#', '\0'], "")), 1 => Just("+".to_string())],
                1..6,
            ),
            tail in any::<bool>(),
        ) {
            let mut filter = levels.join("/");
            if tail {
                filter.push_str("/#");
            }
            prop_assume!(!filter.is_empty(), "an MQTT filter has at least one character");
            let p = filter_to_pattern(&filter).unwrap();
            prop_assert!(validate_pattern(&p, &SubjectLimits::default()).is_ok(), "{:?} -> {:?}", filter, p);
            prop_assert_eq!(pattern_to_filter(&p), Ok(filter.clone()));
            let route = Route::new(Some(&filter), None).unwrap();
            prop_assert_eq!(route.tern_pattern(), p);
        }

        #[test]
        fn imported_subjects_match_the_pattern_and_export_back(t in topic()) {
            let route = Route::new(Some("#"), None).unwrap();
            if let Some(s) = route.import(&t) {
                prop_assert!(tern_codec::subject::matches(&route.tern_pattern(), &s));
                if t.contains('\0') || t.is_empty() {
                    // No MQTT broker sends such a topic, and none may be sent.
                    prop_assert!(matches!(route.export(&s), Some(Err(_))));
                } else {
                    prop_assert_eq!(route.export(&s), Some(Ok(t)));
                }
            }
        }
    }
}
