//! The MQTT bridge's mapping (`tern_broker::bridge::mapping`): topics and filters to
//! subjects and patterns and back, and routes between the two.
//!
//! Input, in sections separated by a `%%` line: an MQTT filter, an MQTT topic, a tern
//! pattern and a tern subject.
//!
//! Invariants checked (each is promised by the module's docs):
//! * nothing panics;
//! * `mqtt_to_subject` is total and gives a valid subject (length limits aside) that
//!   `subject_to_mqtt` maps back to the topic (or refuses, for the empty topic and
//!   one holding NUL, which MQTT forbids); a subject `subject_to_mqtt` accepts maps
//!   back to itself; the same for `level_to_token`/`token_to_level`;
//! * `filter_to_pattern` gives a valid pattern that `pattern_to_filter` maps back to
//!   the filter, and the other way round;
//! * a filter matches a topic iff the mapped pattern matches the mapped subject, but
//!   for MQTT's two rules tern does not have: `a/#` also matches `a`, and a filter that
//!   starts with a wildcard does not match a topic starting with `$`;
//! * a route made from one side has the other side's mechanical mapping; a route's
//!   `import` is `Some` exactly when the topic matches, and gives a valid subject that
//!   `export` takes back to the topic (unless `#` matched no level); `export` of a
//!   subject the pattern matches gives a topic that `import` takes back to the subject
//!   (unless the `$` rule keeps the topic out).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_broker::bridge::mapping::{
    filter_to_pattern, level_to_token, mqtt_matches, mqtt_to_subject, pattern_to_filter,
    subject_to_mqtt, token_to_level, MapError, Route,
};
use tern_broker_fuzz::{naive_matches, sections};
use tern_codec::subject::{validate_pattern, validate_subject};
use tern_codec::SubjectLimits;

/// Syntax only: the mapping promises valid subjects, not short ones.
const UNLIMITED: SubjectLimits = SubjectLimits {
    max_len: usize::MAX,
    max_tokens: usize::MAX,
};

fn check_topic(topic: &str) -> String {
    let subject = mqtt_to_subject(topic);
    validate_subject(&subject, &UNLIMITED)
        .unwrap_or_else(|e| panic!("{topic:?} maps to invalid {subject:?}: {e}"));
    if topic.contains('\0') {
        // Not an MQTT topic (MQTT forbids U+0000): nothing maps back to it.
        assert!(matches!(subject_to_mqtt(&subject), Err(MapError::Nul(_))));
    } else if topic.is_empty() {
        // Nor is the empty topic.
        assert_eq!(
            subject_to_mqtt(&subject),
            Err(MapError::Empty(subject.clone()))
        );
    } else {
        assert_eq!(subject_to_mqtt(&subject).as_deref(), Ok(topic));
    }
    for level in topic.split('/').filter(|l| !l.contains('\0')) {
        let token = level_to_token(level);
        assert_eq!(token_to_level(&token).as_deref(), Ok(level));
    }
    subject
}

fn check_subject(subject: &str) -> Option<String> {
    for token in subject.split('.') {
        if let Ok(level) = token_to_level(token) {
            assert_eq!(level_to_token(&level), token);
        }
    }
    let topic = subject_to_mqtt(subject).ok()?;
    assert_eq!(mqtt_to_subject(&topic), subject);
    Some(topic)
}

/// Whether MQTT's `$` rule keeps `topic` from `filter`.
fn dollar_rule(filter: &str, topic: &str) -> bool {
    topic.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#"))
}

/// `filter` and its pattern against `topic` and its subject.
fn check_match(filter: &str, pattern: &str, topic: &str, subject: &str) {
    let tern = naive_matches(pattern, subject);
    assert_eq!(
        tern_codec::subject::matches(pattern, subject),
        tern,
        "{pattern} vs {subject}"
    );
    // `a/#` matches `a` too: the parent is the pattern without its `.>`.
    let parent = filter.strip_suffix("/#").is_some_and(|_| {
        pattern
            .strip_suffix(".>")
            .is_some_and(|p| naive_matches(p, subject))
    });
    let want = (tern || parent) && !dollar_rule(filter, topic);
    assert_eq!(
        mqtt_matches(filter, topic),
        want,
        "filter {filter:?} topic {topic:?} (pattern {pattern:?} subject {subject:?})"
    );
}

fn check_route(route: &Route, topic: &str, subject: &str) {
    let (filter, pattern) = (route.mqtt_filter(), route.tern_pattern());
    assert_eq!(route.matches_topic(topic), mqtt_matches(&filter, topic));
    let imported = route.import(topic);
    assert_eq!(
        imported.is_some(),
        route.matches_topic(topic),
        "{filter} {topic:?}"
    );
    if let Some(s) = &imported {
        validate_subject(s, &UNLIMITED).unwrap_or_else(|e| panic!("import gave {s:?}: {e}"));
        if naive_matches(&pattern, s) && (topic.contains('\0') || topic.is_empty()) {
            assert!(matches!(route.export(s), Some(Err(_))), "{topic:?}");
        } else if naive_matches(&pattern, s) {
            assert_eq!(
                route.export(s),
                Some(Ok(topic.to_string())),
                "{filter} -> {pattern}: {topic:?} imported as {s:?}"
            );
        } else {
            // Only `#` matching no level makes a subject the pattern does not match.
            assert!(
                filter == "#" || filter.ends_with("/#"),
                "{filter} {topic:?} {s:?}"
            );
        }
    }
    if validate_subject(subject, &UNLIMITED).is_ok() {
        let exported = route.export(subject);
        assert_eq!(exported.is_some(), naive_matches(&pattern, subject));
        if let Some(Ok(t)) = exported {
            if !dollar_rule(&filter, &t) {
                assert_eq!(
                    route.import(&t).as_deref(),
                    Some(subject),
                    "{pattern} -> {filter}: {subject:?} exported as {t:?}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parts = sections(data, 4);
    let [filter, topic, pattern, subject] =
        [0, 1, 2, 3].map(|i| String::from_utf8_lossy(parts[i]).into_owned());

    let mapped_subject = check_topic(&topic);
    let mapped_topic = check_subject(&subject);

    let mapped_pattern = filter_to_pattern(&filter);
    if let Ok(p) = &mapped_pattern {
        validate_pattern(p, &UNLIMITED).unwrap_or_else(|e| panic!("{filter:?} -> {p:?}: {e}"));
        if validate_pattern(p, &SubjectLimits::default()).is_ok() {
            assert_eq!(pattern_to_filter(p).as_deref(), Ok(filter.as_str()));
        }
        check_match(&filter, p, &topic, &mapped_subject);
    }
    if let Ok(f) = pattern_to_filter(&pattern) {
        assert_eq!(filter_to_pattern(&f).as_deref(), Ok(pattern.as_str()));
        if let Some(t) = &mapped_topic {
            check_match(&f, &pattern, t, &subject);
        }
    }

    let mut routes = Vec::new();
    if let Ok(r) = Route::new(Some(&filter), None) {
        assert_eq!(r.mqtt_filter(), filter);
        assert_eq!(Ok(r.tern_pattern()), mapped_pattern);
        routes.push(r);
    }
    if let Ok(r) = Route::new(None, Some(&pattern)) {
        assert_eq!(r.tern_pattern(), pattern);
        assert_eq!(Ok(r.mqtt_filter()), pattern_to_filter(&pattern));
        routes.push(r);
    }
    if let Ok(r) = Route::new(Some(&filter), Some(&pattern)) {
        assert_eq!(
            (r.mqtt_filter(), r.tern_pattern()),
            (filter.clone(), pattern.clone())
        );
        routes.push(r);
    }
    for r in &routes {
        check_route(r, &topic, &subject);
        check_route(r, &topic, &mapped_subject);
        if let Some(t) = &mapped_topic {
            check_route(r, t, &subject);
        }
    }
});
