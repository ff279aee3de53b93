//! [`EqualityIndex`]: many filters on one subject pattern, with the header equalities
//! looked up by hash instead of evaluated one by one.
//!
//! The case it exists for: 10,000 devices subscribed to `commands.>`, each with
//! `device_id = '<own id>'`. Evaluating every filter per message costs 10,000
//! evaluations; here a message costs one header lookup and one hash probe per distinct
//! indexed header name, plus the filters that could not be indexed.
//!
//! ```text
//! by_header: "device_id" -> { "dev-1" -> [entry, ...], "dev-2" -> [...], ... }
//!            "region"    -> { "eu" -> [...] }
//! rest:      [(filter, item), ...]   evaluated one by one
//! ```
//!
//! A filter is indexed when it is `h = 'v'` / `'v' = h` / `h IN ('v1', 'v2', ...)` with
//! string literals (an exact entry: found means matched), or a top-level `AND` with such
//! a conjunct (the entry keeps the filter, evaluated only for messages the hash lookup
//! found). The lookup compares the header's first value byte for byte, exactly as the
//! filter's `=` does for a header against a string literal.

use std::fmt;

use rustc_hash::FxHashMap;

use super::{Filter, MessageView};

/// Filters and what they belong to (`T`: a subscriber id, a queue binding, ...), for
/// finding every `T` whose filter matches a message.
///
/// Pure data; the caller keeps one per subject pattern (or per sublist entry) and
/// provides the locking. Iteration order of [`matching`](Self::matching) is unspecified.
pub struct EqualityIndex<T> {
    /// header name -> header value -> entries. A filter with an `IN` list is filed
    /// under each of its values, which is why `insert` needs `T: Clone`; a message has
    /// one first value per header, so it still finds the filter at most once.
    by_header: FxHashMap<Box<str>, ByValue<T>>,
    /// Filters with no indexable equality, evaluated one by one.
    rest: Vec<(Filter, T)>,
    /// Filters inserted and not removed (an `IN` filter counts once).
    len: usize,
}

/// One header's filters, by the value they want.
type ByValue<T> = FxHashMap<Box<str>, Vec<Entry<T>>>;

struct Entry<T> {
    item: T,
    /// The whole filter, when the equality is only part of it; `None` when the
    /// equality is the whole filter, so finding the entry is matching it.
    check: Option<Filter>,
    /// Whether this is the copy that counts in `len` (the first of an `IN` filter's).
    counted: bool,
}

impl<T> Default for EqualityIndex<T> {
    fn default() -> Self {
        Self {
            by_header: FxHashMap::default(),
            rest: Vec::new(),
            len: 0,
        }
    }
}

impl<T> EqualityIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of filters held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many filters are evaluated one by one for every message (the rest are found
    /// by hash).
    pub fn unindexed(&self) -> usize {
        self.rest.len()
    }

    /// Whether matching a message may read its payload.
    pub fn reads_payload(&self) -> bool {
        self.rest.iter().any(|(f, _)| f.reads_payload())
            || self
                .by_header
                .values()
                .flat_map(FxHashMap::values)
                .flatten()
                .any(|e| e.check.as_ref().is_some_and(Filter::reads_payload))
    }

    /// Adds `filter` for `item`.
    pub fn insert(&mut self, filter: Filter, item: T)
    where
        T: Clone,
    {
        self.len += 1;
        let Some((header, values, exact)) = filter.index_key() else {
            self.rest.push((filter, item));
            return;
        };
        let header: Box<str> = header.into();
        let values: Vec<Box<str>> = values.into_iter().map(Box::from).collect();
        let check = (!exact).then_some(filter);
        let by_value = self.by_header.entry(header).or_default();
        for (i, value) in values.into_iter().enumerate() {
            let entry = Entry {
                item: item.clone(),
                check: check.clone(),
                counted: i == 0,
            };
            by_value.entry(value).or_default().push(entry);
        }
    }

    /// Removes what [`insert`](Self::insert) filed for `filter` and the item that `is`
    /// picks. The filter says where its entries are, so an indexed filter is found by
    /// hash, not by a scan of the whole index: unsubscribing one of 10,000 devices
    /// costs one lookup. Returns whether it was there.
    pub fn remove(&mut self, filter: &Filter, mut is: impl FnMut(&T) -> bool) -> bool {
        let removed = match filter.index_key() {
            None => match self.rest.iter().position(|(_, t)| is(t)) {
                Some(i) => {
                    self.rest.swap_remove(i);
                    true
                }
                None => false,
            },
            Some((header, values, _)) => {
                let mut removed = false;
                if let Some(by_value) = self.by_header.get_mut(header) {
                    for value in values {
                        if let Some(entries) = by_value.get_mut(value) {
                            if let Some(i) = entries.iter().position(|e| is(&e.item)) {
                                removed |= entries.swap_remove(i).counted;
                            }
                            if entries.is_empty() {
                                by_value.remove(value);
                            }
                        }
                    }
                    if by_value.is_empty() {
                        self.by_header.remove(header);
                    }
                }
                removed
            }
        };
        self.len -= usize::from(removed);
        removed
    }

    /// Every item whose filter matches `msg`, each once, in no particular order.
    pub fn matching<'s>(&'s self, msg: &'s MessageView<'_>) -> impl Iterator<Item = &'s T> + 's {
        let indexed = self
            .by_header
            .iter()
            .filter_map(move |(header, by_value)| by_value.get(msg.headers().get(header)?))
            .flatten()
            .filter(move |e| e.check.as_ref().is_none_or(|f| f.matches(msg)))
            .map(|e| &e.item);
        let rest = self
            .rest
            .iter()
            .filter(move |(f, _)| f.matches(msg))
            .map(|(_, t)| t);
        indexed.chain(rest)
    }
}

impl<T: fmt::Debug> fmt::Debug for EqualityIndex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EqualityIndex")
            .field("len", &self.len)
            .field("indexed_headers", &self.by_header.len())
            .field("unindexed", &self.rest.len())
            .finish()
    }
}
