//! Permissions: which subjects a user may publish to and subscribe to, which queues it
//! may consume from, and whether it may administer queues.
//!
//! Each operation has an allow list and a deny list of patterns; deny wins. For a
//! literal subject the rule is plain matching. For a subscription pattern the rule is
//! stricter: it is allowed only if **every** subject it could match is allowed — the
//! allow patterns must *cover* it (usually one alone; see [`Rules::allows_pattern`]),
//! and no deny pattern may *overlap* it. So allowing `sensors.*.temp` does not permit
//! subscribing to `sensors.>`, and denying `sensors.secret.>` forbids subscribing to
//! `sensors.>`.
//!
//! Queue names are `.`-separated like subjects, so queue permissions use the same
//! patterns (`orders`, `orders.>`).

use serde::Deserialize;
use tern_codec::subject::tokens;

/// Allow and deny patterns for one kind of operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Rules {
    /// Everything allowed.
    pub fn all() -> Self {
        Self {
            allow: vec![">".into()],
            deny: Vec::new(),
        }
    }

    pub fn new(allow: Vec<String>, deny: Vec<String>) -> Self {
        Self { allow, deny }
    }

    /// Whether the literal `subject` (or queue name) is allowed.
    pub fn allows(&self, subject: &str) -> bool {
        !self
            .deny
            .iter()
            .any(|d| tern_codec::subject::matches(d, subject))
            && self
                .allow
                .iter()
                .any(|a| tern_codec::subject::matches(a, subject))
    }

    /// Whether every subject `pattern` could match is allowed: no deny pattern
    /// overlaps it, and the allow patterns cover it, one alone or together.
    ///
    /// Together matters only for a pattern ending in `>`. A fixed-length pattern is
    /// covered by several allow patterns only if one covers it alone: the subject with
    /// a token no allow pattern spells at every `*` is matched only by allow patterns
    /// that cover the whole pattern. But `q.>` is `q.*`, `q.*.*`, ... at once, and
    /// allow patterns of different lengths can cover those one each (`a.*` and
    /// `a.*.>` allow `a.>`; `*` and `*.>` allow `>`). Past the longest allow pattern
    /// only those ending in `>` match, the same ones at every length, so the lengths
    /// up to one more than the longest allow pattern decide.
    pub fn allows_pattern(&self, pattern: &str) -> bool {
        if self.deny.iter().any(|d| overlaps(d, pattern)) {
            return false;
        }
        if self.allow.iter().any(|a| covers(a, pattern)) {
            return true;
        }
        let mut head: Vec<&str> = tokens(pattern).collect();
        if head.pop() != Some(">") {
            return false;
        }
        let longest = self.allow.iter().map(|a| tokens(a).count()).max();
        let last = longest.unwrap_or(0).max(head.len()) + 1;
        let mut slice = head.join(".");
        for _ in head.len()..last {
            if !slice.is_empty() {
                slice.push('.');
            }
            slice.push('*');
            if !self.allow.iter().any(|a| covers(a, &slice)) {
                return false;
            }
        }
        true
    }
}

/// Whether every subject matched by `inner` is matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = tokens(outer);
    let mut i = tokens(inner);
    loop {
        match (o.next(), i.next()) {
            // `>` covers one or more remaining tokens of any kind.
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b && a != "*" && a != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject is matched by both patterns.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut x = tokens(a);
    let mut y = tokens(b);
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Permissions as written in the config file: every list optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSettings {
    pub publish: Option<Vec<String>>,
    #[serde(default)]
    pub publish_deny: Vec<String>,
    pub subscribe: Option<Vec<String>>,
    #[serde(default)]
    pub subscribe_deny: Vec<String>,
    /// Queues the user may consume from.
    pub consume: Option<Vec<String>>,
    #[serde(default)]
    pub consume_deny: Vec<String>,
    /// Whether the user may create, delete, purge and move queues.
    pub admin: Option<bool>,
}

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Rules,
    pub subscribe: Rules,
    pub consume: Rules,
    pub admin: bool,
}

impl Permissions {
    /// Everything, administration included: a broker with no users configured, and
    /// the broker's own in-process connections.
    pub fn all() -> Self {
        Self {
            publish: Rules::all(),
            subscribe: Rules::all(),
            consume: Rules::all(),
            admin: true,
        }
    }

    /// Resolves settings: an absent allow list allows everything; `admin` defaults
    /// to false. Patterns must be valid (checked by the caller).
    pub fn from_settings(s: PermissionSettings) -> Self {
        let rules = |allow: Option<Vec<String>>, deny: Vec<String>| {
            Rules::new(allow.unwrap_or_else(|| vec![">".into()]), deny)
        };
        Self {
            publish: rules(s.publish, s.publish_deny),
            subscribe: rules(s.subscribe, s.subscribe_deny),
            consume: rules(s.consume, s.consume_deny),
            admin: s.admin.unwrap_or(false),
        }
    }
}

impl PermissionSettings {
    /// Every pattern in these settings, with the key it is under.
    pub fn patterns(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let lists: [(&'static str, &[String]); 6] = [
            ("publish", self.publish.as_deref().unwrap_or_default()),
            ("publish_deny", &self.publish_deny),
            ("subscribe", self.subscribe.as_deref().unwrap_or_default()),
            ("subscribe_deny", &self.subscribe_deny),
            ("consume", self.consume.as_deref().unwrap_or_default()),
            ("consume_deny", &self.consume_deny),
        ];
        lists
            .into_iter()
            .flat_map(|(key, list)| list.iter().map(move |p| (key, p.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cover_table() {
        for (outer, inner, want) in [
            (">", "a", true),
            (">", "a.>", true),
            ("a.>", "a.b", true),
            ("a.>", "a.*", true),
            ("a.>", "a.>", true),
            ("a.>", "a", false),
            ("a.>", ">", false),
            ("a.*", "a.b", true),
            ("a.*", "a.*", true),
            ("a.*", "a.>", false),
            ("a.*", "a.b.c", false),
            ("sensors.*.temp", "sensors.>", false),
            ("sensors.*.temp", "sensors.kitchen.temp", true),
            ("sensors.*.temp", "sensors.*.temp", true),
            ("a.b", "a.*", false),
            ("a.b", "a.b", true),
            ("*", ">", false),
        ] {
            assert_eq!(covers(outer, inner), want, "{outer} covers {inner}");
        }
    }

    #[test]
    fn overlap_table() {
        for (a, b, want) in [
            ("a.>", "a.b", true),
            ("a.>", "a", false),
            ("a.*", "*.b", true),
            ("a.b", "a.c", false),
            ("sensors.secret.>", "sensors.>", true),
            ("sensors.secret.>", "sensors.*.temp", true),
            ("sensors.secret.>", "sensors.public.*", false),
            ("*", "a.b", false),
            (">", "a.b", true),
        ] {
            assert_eq!(overlaps(a, b), want, "{a} overlaps {b}");
            assert_eq!(overlaps(b, a), want, "overlap is symmetric: {b} {a}");
        }
    }

    #[test]
    fn deny_wins_and_wildcards_do_not_widen() {
        let r = Rules::new(
            vec!["sensors.*.temp".into(), "commands.>".into()],
            vec!["commands.admin.>".into()],
        );
        assert!(r.allows("sensors.kitchen.temp"));
        assert!(!r.allows("sensors.kitchen.humidity"));
        assert!(r.allows("commands.dev7.reboot"));
        assert!(!r.allows("commands.admin.wipe"), "deny wins");
        assert!(r.allows_pattern("sensors.*.temp"));
        assert!(!r.allows_pattern("sensors.>"), "wider than allowed");
        assert!(r.allows_pattern("commands.dev7.>"));
        assert!(!r.allows_pattern("commands.>"), "overlaps a denied pattern");
        assert!(
            !r.allows_pattern("commands.*.wipe"),
            "could match commands.admin.wipe"
        );
    }

    /// Found by `allows_pattern_iff_every_matched_subject_is_allowed`: allow patterns
    /// of different lengths that cover a `>` pattern only together.
    #[test]
    fn allow_patterns_cover_a_tail_together() {
        let r = Rules::new(vec!["*".into(), "*.>".into()], vec![]);
        assert!(r.allows_pattern(">"));
        let r = Rules::new(vec!["a.*".into(), "a.*.>".into()], vec![]);
        assert!(r.allows_pattern("a.>"));
        assert!(r.allows_pattern("a.b.>"));
        assert!(!r.allows_pattern(">"), "b.c is not allowed");
        let r = Rules::new(
            vec!["a.*".into(), "a.*.*".into(), "a.*.*.*.>".into()],
            vec![],
        );
        assert!(!r.allows_pattern("a.>"), "a.b.c.d is not allowed");
        let r = Rules::new(vec!["a.*".into(), "a.*.>".into()], vec!["a.b.c".into()]);
        assert!(!r.allows_pattern("a.>"), "deny still wins");
        assert!(r.allows_pattern("a.c.>"));
    }

    #[test]
    fn absent_lists_allow_everything_but_admin() {
        let p = Permissions::from_settings(PermissionSettings::default());
        assert!(p.publish.allows("anything.at.all"));
        assert!(p.subscribe.allows_pattern(">"));
        assert!(!p.admin);
        let p = Permissions::from_settings(PermissionSettings {
            publish: Some(vec![]),
            ..PermissionSettings::default()
        });
        assert!(!p.publish.allows("a"), "an empty list allows nothing");
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 1..4),
            any::<bool>(),
        )
            .prop_map(|(t, tail)| {
                let mut p = t.join(".");
                if tail {
                    p.push_str(".>");
                }
                p
            })
    }

    fn subject() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..6)
            .prop_map(|t| t.join("."))
    }

    /// A rule or subscription pattern over the tokens `a`, `b`, `c`: up to three of
    /// them or `*`, then maybe `>` (so `>` alone too).
    fn small_pattern() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 0..=3),
            any::<bool>(),
        )
            .prop_map(|(mut t, tail)| {
                if tail || t.is_empty() {
                    t.push(">");
                }
                t.join(".")
            })
    }

    /// Every literal subject of 1 to `depth` tokens over `alphabet`.
    fn subjects(alphabet: &[&str], depth: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut last: Vec<String> = vec![String::new()];
        for _ in 0..depth {
            last = last
                .iter()
                .flat_map(|s| {
                    alphabet.iter().map(move |t| {
                        if s.is_empty() {
                            (*t).to_string()
                        } else {
                            format!("{s}.{t}")
                        }
                    })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    proptest! {
        // More cases than the default: rule sets that cover a pattern only together
        // are rare among random ones.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// `allows_pattern` is exactly "every subject the pattern can match is
        /// allowed", checked against every subject there is to check:
        ///
        /// * **Tokens.** Rules and patterns spell only `a`, `b` and `c`. Any other
        ///   token is matched by exactly the wildcards, at any position, so all of them
        ///   behave like the one token `x` and the subjects are built from `a`, `b`,
        ///   `c` and `x`. (Without `x`, allowing `a.a`, `a.b` and `a.c` would wrongly
        ///   seem to allow `a.*`, which also matches `a.zzz`.)
        /// * **Depth.** `>` matches subjects of any length, so the enumeration must
        ///   stop somewhere safe. Let `k` be the most tokens (`>` included) of any rule
        ///   or the pattern. A subject longer than `k` is matched by no rule of fixed
        ///   length, and by a rule ending in `>` exactly when its first tokens are:
        ///   whether it is allowed depends only on its first `k` tokens. A subject
        ///   longer than `k + 1` that the pattern matches can therefore be cut to its
        ///   first `k + 1` tokens: the pattern (at most `k` tokens, the last one `>`
        ///   since it matched something longer) still matches it, and it is allowed
        ///   exactly when the longer one is. So subjects of 1 to `k + 1` tokens decide.
        #[test]
        fn allows_pattern_iff_every_matched_subject_is_allowed(
            allow in prop::collection::vec(small_pattern(), 0..4),
            deny in prop::collection::vec(small_pattern(), 0..3),
            pattern in small_pattern(),
        ) {
            let rules = Rules::new(allow.clone(), deny.clone());
            let k = allow
                .iter()
                .chain(&deny)
                .chain([&pattern])
                .map(|p| tokens(p).count())
                .max()
                .unwrap_or(0);
            let denied = subjects(&["a", "b", "c", "x"], k + 1)
                .into_iter()
                .find(|s| {
                    tern_codec::subject::matches(&pattern, s) && !rules.allows(s)
                });
            prop_assert_eq!(
                rules.allows_pattern(&pattern),
                denied.is_none(),
                "allow {:?} deny {:?} pattern {}: first subject refused {:?}",
                allow,
                deny,
                pattern,
                denied
            );
        }

        /// If `outer` covers `inner`, every subject `inner` matches, `outer` matches; if
        /// a subject matches both, the patterns overlap.
        #[test]
        fn cover_and_overlap_agree_with_matching(outer in pattern(), inner in pattern(), s in subject()) {
            let (mo, mi) = (
                tern_codec::subject::matches(&outer, &s),
                tern_codec::subject::matches(&inner, &s),
            );
            if covers(&outer, &inner) && mi {
                prop_assert!(mo, "{} covers {} but not {}", outer, inner, s);
            }
            if mo && mi {
                prop_assert!(overlaps(&outer, &inner), "{} and {} both match {}", outer, inner, s);
            }
        }
    }
}
