//! The router: who receives a published message.
//!
//! Subscriptions live in a [`Sublist`] behind a `RwLock` that publishers take for
//! reading only when their own [`RouteCache`] misses. The cache is keyed by the
//! sublist's generation, so a subscribe or unsubscribe anywhere makes every cache
//! refresh on its next publish and nothing stale is ever used. A cache hit costs one
//! atomic load and one hash lookup: publishes do not contend on a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytestring::ByteString;
use rustc_hash::FxHashMap;
use tern_codec::{Envelope, Pattern};

use crate::outbound::{Outbound, Push, Wakes};
use crate::sublist::Sublist;

/// Most subjects one connection's [`RouteCache`] remembers.
const ROUTE_CACHE_MAX: usize = 512;

/// One subscription, as the router sees it.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub conn: u64,
    pub sid: u32,
    pub pattern: Pattern,
    pub group: Option<ByteString>,
    pub outbound: Arc<Outbound>,
    /// Cleared on unsubscribe, before the OK goes out: a publisher holding an older
    /// route must not deliver on a subscription the client has been told is gone.
    active: AtomicBool,
}

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        self.conn == other.conn && self.sid == other.sid
    }
}

impl Subscriber {
    pub fn new(
        conn: u64,
        sid: u32,
        pattern: Pattern,
        group: Option<ByteString>,
        outbound: Arc<Outbound>,
    ) -> Self {
        Self {
            conn,
            sid,
            pattern,
            group,
            outbound,
            active: AtomicBool::new(true),
        }
    }

    fn deliver(&self, envelope: &Envelope, wakes: &mut Wakes) -> Push {
        self.outbound
            .push_message(self.sid, &self.active, envelope, wakes)
    }
}

/// The subscribers of one subject, grouped for delivery.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    /// Subscribers without a queue group: each gets every message.
    plain: Vec<Arc<Subscriber>>,
    /// Members of each queue group: one member per group gets each message.
    groups: Vec<Vec<Arc<Subscriber>>>,
}

impl Interest {
    fn new(subs: &[Arc<Subscriber>]) -> Self {
        let mut interest = Interest::default();
        let mut by_group: HashMap<&str, usize> = HashMap::new();
        for s in subs {
            match &s.group {
                None => interest.plain.push(Arc::clone(s)),
                Some(g) => {
                    let i = *by_group.entry(g).or_insert_with(|| {
                        interest.groups.push(Vec::new());
                        interest.groups.len() - 1
                    });
                    if let Some(members) = interest.groups.get_mut(i) {
                        members.push(Arc::clone(s));
                    }
                }
            }
        }
        interest
    }

    /// Delivers to every plain subscriber and to one member of each group.
    ///
    /// A group member is picked at random; if it refuses (full or closing), the next
    /// one is tried, so a slow member sheds load to its peers instead of losing it.
    /// Returns `(delivered, dropped)`.
    pub fn deliver(&self, envelope: &Envelope, wakes: &mut Wakes) -> (u64, u64) {
        let (mut delivered, mut dropped) = (0, 0);
        for s in &self.plain {
            match s.deliver(envelope, wakes) {
                Push::Queued => delivered += 1,
                Push::Dropped => dropped += 1,
                Push::Closed => {}
            }
        }
        for members in &self.groups {
            let start = fastrand::usize(..members.len());
            let mut any_dropped = false;
            let taken = members
                .iter()
                .cycle()
                .skip(start)
                .take(members.len())
                .any(|s| match s.deliver(envelope, wakes) {
                    Push::Queued => true,
                    Push::Dropped => {
                        any_dropped = true;
                        false
                    }
                    Push::Closed => false,
                });
            if taken {
                delivered += 1;
            } else if any_dropped {
                dropped += 1;
            }
        }
        (delivered, dropped)
    }
}

/// A connection's private cache of routes, valid for one sublist generation.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    generation: u64,
    /// FxHash: this lookup runs for every publish, and its keys are subjects the
    /// connection itself sent, so a flooding attack would only slow that connection.
    routes: FxHashMap<Box<str>, Arc<Interest>>,
}

/// Every subscription on the server.
#[derive(Debug)]
pub(crate) struct Router {
    subs: RwLock<Sublist<Arc<Subscriber>>>,
    /// The sublist's generation, readable without the lock.
    generation: Arc<AtomicU64>,
}

impl Default for Router {
    fn default() -> Self {
        let subs = Sublist::new();
        let generation = subs.generation_handle();
        Self {
            subs: RwLock::new(subs),
            generation,
        }
    }
}

impl Router {
    // Sublist operations leave the trie consistent at every step, so a poisoned lock
    // still guards good data.
    fn read(&self) -> RwLockReadGuard<'_, Sublist<Arc<Subscriber>>> {
        self.subs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Sublist<Arc<Subscriber>>> {
        self.subs.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self, sub: Arc<Subscriber>) {
        let pattern = sub.pattern.clone();
        self.write().insert(&pattern, sub);
    }

    /// Removes `sub`; no message is delivered on it once this returns.
    pub fn unsubscribe(&self, sub: &Arc<Subscriber>) {
        sub.outbound.deactivate(&sub.active);
        self.write().remove(&sub.pattern, sub);
    }

    /// Number of subscriptions on the server.
    pub fn subscription_count(&self) -> usize {
        self.read().len()
    }

    /// Who wants `subject`, if `cache` remembers it for the current generation.
    ///
    /// A hit also means the subject was valid: it was checked before it was first
    /// looked up, and the key is the same string.
    pub fn cached(&self, cache: &mut RouteCache, subject: &str) -> Option<Arc<Interest>> {
        // Reading the generation without the lock is safe: it is bumped only after a
        // change is complete, and a route is always stored with the generation read
        // under the same lock as the match that built it.
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation != generation {
            cache.routes.clear();
            return None;
        }
        cache.routes.get(subject).cloned()
    }

    /// Who wants `subject`, matched through the sublist and remembered in `cache`.
    pub fn lookup(&self, cache: &mut RouteCache, subject: &str) -> Arc<Interest> {
        let (generation, subs) = {
            let sl = self.read();
            (sl.generation(), sl.matches(subject))
        };
        let interest = Arc::new(Interest::new(&subs));
        if cache.generation != generation || cache.routes.len() >= ROUTE_CACHE_MAX {
            cache.routes.clear();
            cache.generation = generation;
        }
        cache.routes.insert(subject.into(), Arc::clone(&interest));
        interest
    }
}
