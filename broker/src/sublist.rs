//! The subscription trie: which subscribers want a subject.
//!
//! A NATS-style token trie. Each level maps literal tokens to nodes and has its own slots
//! for `*` and `>`, so matching a subject walks at most three branches per token instead
//! of testing every pattern. Results are cached (bounded) per subject and shared as
//! `Arc<[T]>`; every insert or remove bumps [`Sublist::generation`], which lets a
//! connection keep its own lock-free first-level cache and know when it went stale.
//!
//! Pure data: no async, no I/O. The broker wraps it in a `RwLock` that is taken for
//! reading only on a cache miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tern_codec::subject::tokens;

/// Most subjects a [`Sublist`] keeps match results for.
const CACHE_MAX: usize = 1024;
/// Size the cache is cut back to when it overflows, so an overflow is not paid for on
/// every following miss.
const CACHE_KEEP: usize = CACHE_MAX * 3 / 4;

/// Match results by subject.
type MatchCache<T> = HashMap<Box<str>, Arc<[T]>>;

/// Subscriptions indexed by pattern.
///
/// `T` is whatever identifies a subscription to the caller; `remove` finds it by `==`.
#[derive(Debug)]
pub struct Sublist<T> {
    root: Level<T>,
    count: usize,
    /// Match results by subject. A `Mutex` inside an otherwise `&self`-readable structure:
    /// it is held only for a map lookup or insert, never while matching.
    cache: Option<Mutex<MatchCache<T>>>,
    /// Shared so that readers can check it without taking whatever lock guards the
    /// sublist (see [`Sublist::generation_handle`]).
    generation: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Level<T> {
    literal: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    tail: Option<Box<Node<T>>>,
}

#[derive(Debug)]
struct Node<T> {
    next: Option<Box<Level<T>>>,
    subs: Vec<T>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            star: None,
            tail: None,
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            next: None,
            subs: Vec::new(),
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.tail.is_none()
    }

    fn node_mut(&mut self, token: &str) -> &mut Node<T> {
        match token {
            "*" => self.star.get_or_insert_with(Box::default),
            ">" => self.tail.get_or_insert_with(Box::default),
            _ => self.literal.entry(token.into()).or_default(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.next.as_ref().is_none_or(|l| l.is_empty())
    }
}

impl<T: Clone + PartialEq> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + PartialEq> Sublist<T> {
    /// An empty sublist with a match cache.
    pub fn new() -> Self {
        Self {
            root: Level::default(),
            count: 0,
            cache: Some(Mutex::new(HashMap::new())),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// An empty sublist that matches through the trie every time (for tests and
    /// benchmarks that compare the two).
    pub fn without_cache() -> Self {
        Self {
            cache: None,
            ..Self::new()
        }
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Changes every time a subscription is inserted or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation counter itself, to read without a lock around the sublist. It is
    /// bumped after each change is complete, so a reader that sees an unchanged value
    /// knows its earlier results are still current.
    pub fn generation_handle(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.generation)
    }

    /// Adds `sub` under `pattern`. The pattern must already be validated
    /// ([`tern_codec::Pattern`]).
    pub fn insert(&mut self, pattern: &str, sub: T) {
        let mut level = &mut self.root;
        let mut toks = tokens(pattern).peekable();
        while let Some(token) = toks.next() {
            let node = level.node_mut(token);
            if toks.peek().is_none() {
                node.subs.push(sub);
                break;
            }
            level = node.next.get_or_insert_with(Box::default);
        }
        self.count += 1;
        self.changed(pattern);
    }

    /// Removes `sub` from `pattern`, pruning nodes left empty. Returns whether it was there.
    pub fn remove(&mut self, pattern: &str, sub: &T) -> bool {
        let toks: Vec<&str> = tokens(pattern).collect();
        let removed = remove_from(&mut self.root, &toks, sub);
        if removed {
            self.count -= 1;
            self.changed(pattern);
        }
        removed
    }

    /// Every subscription whose pattern matches the literal `subject`.
    pub fn matches(&self, subject: &str) -> Arc<[T]> {
        if let Some(cache) = &self.cache {
            if let Some(hit) = lock(cache).get(subject) {
                return Arc::clone(hit);
            }
        }
        let toks: Vec<&str> = tokens(subject).collect();
        let mut out = Vec::new();
        match_level(&self.root, &toks, &mut out);
        let result: Arc<[T]> = out.into();
        if let Some(cache) = &self.cache {
            let mut cache = lock(cache);
            if cache.len() >= CACHE_MAX {
                let mut keep = CACHE_KEEP;
                cache.retain(|_, _| {
                    keep = keep.saturating_sub(1);
                    keep > 0
                });
            }
            cache.insert(subject.into(), Arc::clone(&result));
        }
        result
    }

    /// Drops cached results the changed pattern could affect and bumps the generation.
    fn changed(&mut self, pattern: &str) {
        if let Some(cache) = &mut self.cache {
            let cache = cache.get_mut().unwrap_or_else(|p| p.into_inner());
            if pattern.split('.').any(|t| t == "*" || t == ">") {
                cache.retain(|subject, _| !tern_codec::subject::matches(pattern, subject));
            } else {
                // A literal pattern matches only the subject spelled the same.
                cache.remove(pattern);
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The cache holds no invariant that a panicking holder could break, so a poisoned lock
/// is still good to use.
fn lock<K, V>(m: &Mutex<HashMap<K, V>>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn match_level<T: Clone>(level: &Level<T>, toks: &[&str], out: &mut Vec<T>) {
    let Some((token, rest)) = toks.split_first() else {
        return;
    };
    if let Some(tail) = &level.tail {
        out.extend_from_slice(&tail.subs);
    }
    let literal = level.literal.get(*token);
    for node in literal.into_iter().chain(level.star.as_deref()) {
        if rest.is_empty() {
            out.extend_from_slice(&node.subs);
        } else if let Some(next) = &node.next {
            match_level(next, rest, out);
        }
    }
}

fn remove_from<T: PartialEq>(level: &mut Level<T>, toks: &[&str], sub: &T) -> bool {
    let Some((token, rest)) = toks.split_first() else {
        return false;
    };
    let node = match *token {
        "*" => level.star.as_deref_mut(),
        ">" => level.tail.as_deref_mut(),
        t => level.literal.get_mut(t),
    };
    let Some(node) = node else {
        return false;
    };
    let removed = if rest.is_empty() {
        match node.subs.iter().position(|s| s == sub) {
            Some(i) => {
                node.subs.swap_remove(i);
                true
            }
            None => false,
        }
    } else {
        let removed = node
            .next
            .as_deref_mut()
            .is_some_and(|next| remove_from(next, rest, sub));
        if node.next.as_ref().is_some_and(|l| l.is_empty()) {
            node.next = None;
        }
        removed
    };
    if removed && node.is_empty() {
        match *token {
            "*" => level.star = None,
            ">" => level.tail = None,
            t => {
                level.literal.remove(t);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs a test body against a sublist with the cache on and one with it off, as NATS
    /// does for every sublist test.
    fn both(test: impl Fn(Sublist<u32>)) {
        test(Sublist::new());
        test(Sublist::without_cache());
    }

    fn sorted(r: Arc<[u32]>) -> Vec<u32> {
        let mut v = r.to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn match_table() {
        let patterns = [
            "a", "a.b", "*", "*.*", "a.*", "*.b", "a.>", ">", "a.*.c", "*.>", "a.b.c",
        ];
        let subjects = ["a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "a.b.c.d"];
        both(|mut sl| {
            for (i, p) in (0u32..).zip(patterns) {
                sl.insert(p, i);
            }
            for subject in subjects {
                let want: Vec<u32> = (0u32..)
                    .zip(patterns)
                    .filter(|(_, p)| tern_codec::subject::matches(p, subject))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(sorted(sl.matches(subject)), want, "subject {subject}");
            }
        });
    }

    #[test]
    fn edge_cases() {
        both(|mut sl| {
            sl.insert("a.>", 1);
            sl.insert("*.*", 2);
            sl.insert(">", 3);
            assert_eq!(sorted(sl.matches("a")), [3], "a.> and *.* do not match a");
            assert_eq!(sorted(sl.matches("a.b")), [1, 2, 3]);
            assert_eq!(sorted(sl.matches("x.y.z")), [3]);
        });
    }

    #[test]
    fn remove_prunes_and_invalidates() {
        both(|mut sl| {
            sl.insert("a.b.c", 1);
            sl.insert("a.*.c", 2);
            sl.insert("a.b.c", 3);
            let g0 = sl.generation();
            assert_eq!(sorted(sl.matches("a.b.c")), [1, 2, 3]);
            assert!(sl.remove("a.b.c", &1));
            assert!(sl.generation() > g0);
            assert_eq!(sorted(sl.matches("a.b.c")), [2, 3]);
            assert!(!sl.remove("a.b.c", &1), "already removed");
            assert!(!sl.remove("x.y", &2), "never there");
            assert!(sl.remove("a.*.c", &2));
            assert!(sl.remove("a.b.c", &3));
            assert!(sl.is_empty());
            assert!(sl.root.is_empty(), "every node pruned");
            assert!(sl.matches("a.b.c").is_empty());
        });
    }

    #[test]
    fn duplicates_are_kept_per_insert() {
        both(|mut sl| {
            sl.insert("a", 7);
            sl.insert("a", 7);
            assert_eq!(sl.len(), 2);
            assert_eq!(sorted(sl.matches("a")), [7, 7]);
            assert!(sl.remove("a", &7));
            assert_eq!(sorted(sl.matches("a")), [7]);
        });
    }

    #[test]
    fn cache_is_bounded() {
        let mut sl = Sublist::new();
        sl.insert(">", 1u32);
        for i in 0..CACHE_MAX * 3 {
            assert_eq!(sl.matches(&format!("s.{i}")).len(), 1);
        }
        let len = sl.cache.as_ref().map(|c| lock(c).len()).unwrap_or_default();
        assert!(len <= CACHE_MAX, "cache grew to {len}");
    }

    fn token() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c"])
    }

    fn pattern_token() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c", "*"])
    }

    fn pattern() -> impl Strategy<Value = String> {
        (prop::collection::vec(pattern_token(), 1..4), any::<bool>()).prop_map(|(t, tail)| {
            let mut p = t.join(".");
            if tail {
                p.push_str(".>");
            }
            p
        })
    }

    fn subject() -> impl Strategy<Value = String> {
        prop::collection::vec(token(), 1..6).prop_map(|t| t.join("."))
    }

    proptest! {
        /// The trie agrees with the naive definition, with and without the cache, while
        /// subscriptions come and go.
        #[test]
        fn agrees_with_oracle(
            patterns in prop::collection::vec(pattern(), 1..30),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            subjects in prop::collection::vec(subject(), 1..20),
        ) {
            for mut sl in [Sublist::new(), Sublist::without_cache()] {
                let mut live: Vec<(String, u32)> = Vec::new();
                for (i, p) in (0u32..).zip(&patterns) {
                    sl.insert(p, i);
                    live.push((p.clone(), i));
                }
                // Warm the cache before removing, so stale entries would show.
                for s in &subjects {
                    sl.matches(s);
                }
                for r in &removals {
                    if live.is_empty() {
                        break;
                    }
                    let (p, i) = live.swap_remove(r.index(live.len()));
                    prop_assert!(sl.remove(&p, &i));
                }
                for s in &subjects {
                    let mut want: Vec<u32> = live
                        .iter()
                        .filter(|(p, _)| tern_codec::subject::matches(p, s))
                        .map(|(_, i)| *i)
                        .collect();
                    want.sort_unstable();
                    prop_assert_eq!(sorted(sl.matches(s)), want, "subject {}", s);
                }
            }
        }
    }
}
