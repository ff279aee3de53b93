//! Permissions (`tern_broker::auth::acl`): arbitrary rule sets against arbitrary
//! subjects and patterns.
//!
//! Input, in sections separated by a `%%` line: allow patterns, deny patterns and
//! queries, each a whitespace-separated list (at most eight of each).
//!
//! ```text
//! sensors.*.temp commands.>
//! %%
//! commands.admin.>
//! %%
//! commands.*.wipe sensors.kitchen.temp
//! ```
//!
//! Invariants checked:
//! * nothing panics, whatever the strings;
//! * for a literal subject, `allows_pattern` is `allows`;
//! * when every rule and the query are valid patterns: `allows_pattern(p)` holds iff
//!   `allows(s)` holds for every literal subject `s` that `p` matches among those
//!   `tern_broker_fuzz::instances` builds (every rule literal at every wildcard
//!   position, a fresh token, and `>` standing for up to one token more than the
//!   longest rule: enough to tell, see there);
//! * `covers(a, b)` iff `a` matches every such instance of `b`; `overlaps(a, b)` iff
//!   some instance of `a` matches `b`, and it is symmetric.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_broker::auth::acl::{covers, overlaps, Rules};
use tern_broker_fuzz::{instances, naive_matches, sections};
use tern_codec::subject::{validate_pattern, validate_subject};
use tern_codec::SubjectLimits;

/// Most instances enumerated for one question; past it the question is skipped.
const BUDGET: usize = 4096;

fn list(section: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(section)
        .split_whitespace()
        .take(8)
        .map(str::to_string)
        .collect()
}

fn valid(p: &str) -> bool {
    validate_pattern(p, &SubjectLimits::default()).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let parts = sections(data, 3);
    let (allow, deny, queries) = (list(parts[0]), list(parts[1]), list(parts[2]));
    let rules = Rules::new(allow.clone(), deny.clone());
    let rule_strs: Vec<&str> = allow.iter().chain(&deny).map(String::as_str).collect();
    let all_valid = rule_strs.iter().all(|p| valid(p));

    for q in &queries {
        let allows_pattern = rules.allows_pattern(q);
        let allows = rules.allows(q);
        if validate_subject(q, &SubjectLimits::default()).is_ok() {
            assert_eq!(allows_pattern, allows, "literal {q}");
        }
        if !(all_valid && valid(q)) {
            continue;
        }
        if let Some(subjects) = instances(q, &rule_strs, BUDGET) {
            let denied = subjects
                .iter()
                .find(|s| naive_matches(q, s) && !rules.allows(s));
            match denied {
                Some(s) if allows_pattern => {
                    panic!("allow {allow:?} deny {deny:?}: {q} allowed but {s} is not")
                }
                None if !allows_pattern => {
                    panic!(
                        "allow {allow:?} deny {deny:?}: {q} refused but all it matches is allowed"
                    )
                }
                _ => {}
            }
        }
    }

    // Pairs of valid patterns among the rules and queries.
    let patterns: Vec<&str> = rule_strs
        .iter()
        .copied()
        .chain(queries.iter().map(String::as_str))
        .filter(|p| valid(p))
        .collect();
    for a in &patterns {
        for b in &patterns {
            let (c, o) = (covers(a, b), overlaps(a, b));
            assert_eq!(o, overlaps(b, a), "overlaps({a}, {b}) is not symmetric");
            if let Some(of_b) = instances(b, &[a], BUDGET) {
                let all = of_b.iter().all(|s| naive_matches(a, s));
                assert_eq!(c, all, "covers({a}, {b})");
                if c {
                    assert!(o, "{a} covers {b} but does not overlap it");
                }
            }
            if let Some(of_a) = instances(a, &[b], BUDGET) {
                let some = of_a.iter().any(|s| naive_matches(b, s));
                assert_eq!(o, some, "overlaps({a}, {b})");
            }
        }
    }
});
