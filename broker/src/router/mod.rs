//! The router: who receives a published message.
//!
//! Subscriptions live in a [`Sublist`] behind a `RwLock` that publishers take for
//! reading only when their own [`RouteCache`] misses. The cache is keyed by the
//! sublist's generation, so a subscribe or unsubscribe anywhere makes every cache
//! refresh on its next publish and nothing stale is ever used. A cache hit costs one
//! atomic load and one hash lookup: publishes do not contend on a lock.
//!
//! * `interest`: who takes one subject's messages, and the delivery.
//! * `remote`: in a cluster, this node's interest for the others, and theirs.

mod interest;
pub(crate) mod remote;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytestring::ByteString;
use rustc_hash::FxHashMap;
use tern_codec::{Envelope, Pattern};

pub(crate) use self::interest::Interest;
use self::remote::{InterestKey, LocalInterest, RemoteNode};
use crate::auth::replies::ReplyPermits;
use crate::filter::{EqualityIndex, Filter};
use crate::outbound::{Outbound, Push, Wakes};
use crate::queue::QueueHandle;
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
    /// Only messages this accepts are delivered (compiled at subscribe time).
    pub filter: Option<Arc<Filter>>,
    /// The subscriber's reply permits, when its own permissions would not let it
    /// reply to the requests it receives.
    pub replies: Option<Arc<ReplyPermits>>,
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
        filter: Option<Filter>,
        outbound: Arc<Outbound>,
        replies: Option<Arc<ReplyPermits>>,
    ) -> Self {
        Self {
            conn,
            sid,
            pattern,
            group,
            filter: filter.map(Arc::new),
            outbound,
            replies,
            active: AtomicBool::new(true),
        }
    }

    /// Delivers a message that connection `publisher` sent.
    fn deliver(&self, envelope: &Envelope, publisher: u64, wakes: &mut Wakes) -> Push {
        let pushed = self
            .outbound
            .push_message(self.sid, &self.active, envelope, wakes);
        if let (Push::Queued, Some(permits)) = (pushed, &self.replies) {
            permits.grant_for(envelope, publisher == self.conn);
        }
        pushed
    }
}

/// Filtered subscriptions without a queue group on one pattern, indexed on their
/// header equalities.
///
/// One per pattern, shared by every route the pattern is part of and changed in place.
/// So a filtered subscribe costs one index insert rather than a rebuild of every
/// publisher's routes, and building a route for a new subject of `commands.>` costs
/// the same with 10 devices subscribed as with 10,000.
#[derive(Debug, Default)]
pub(crate) struct FilteredSubs {
    index: RwLock<EqualityIndex<Arc<Subscriber>>>,
}

impl FilteredSubs {
    // Index updates leave it whole at every step: a poisoned lock guards good data.
    fn read(&self) -> RwLockReadGuard<'_, EqualityIndex<Arc<Subscriber>>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, EqualityIndex<Arc<Subscriber>>> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a sublist entry routes to: a live subscription, a pattern's filtered
/// subscriptions, one binding of a durable queue (its number in the queue's
/// definition), or another node's subscriptions with one queue group (or none).
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Subscriber(Arc<Subscriber>),
    Filtered(Arc<FilteredSubs>),
    Queue(Arc<QueueHandle>, usize),
    Remote(Arc<dyn RemoteNode>, Option<ByteString>),
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Route::Subscriber(a), Route::Subscriber(b)) => a == b,
            (Route::Filtered(a), Route::Filtered(b)) => Arc::ptr_eq(a, b),
            (Route::Queue(a, i), Route::Queue(b, j)) => Arc::ptr_eq(a, b) && i == j,
            (Route::Remote(a, g), Route::Remote(b, h)) => a.node() == b.node() && g == h,
            _ => false,
        }
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

/// The sublist, and the filtered subscriptions of each pattern that has some.
#[derive(Debug)]
struct Routes {
    sublist: Sublist<Route>,
    filtered: HashMap<Box<str>, Arc<FilteredSubs>>,
}

/// Every subscription on the server.
#[derive(Debug)]
pub(crate) struct Router {
    subs: RwLock<Routes>,
    /// The sublist's generation, readable without the lock.
    generation: Arc<AtomicU64>,
    subscriptions: AtomicUsize,
    /// This node's subscriptions by key, for the other nodes of a cluster.
    pub local: LocalInterest,
}

impl Default for Router {
    fn default() -> Self {
        let subs = Sublist::new();
        let generation = subs.generation_handle();
        Self {
            subs: RwLock::new(Routes {
                sublist: subs,
                filtered: HashMap::new(),
            }),
            generation,
            subscriptions: AtomicUsize::new(0),
            local: LocalInterest::default(),
        }
    }
}

impl Router {
    // Sublist operations leave the trie consistent at every step, so a poisoned lock
    // still guards good data.
    fn read(&self) -> RwLockReadGuard<'_, Routes> {
        self.subs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Routes> {
        self.subs.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self, sub: Arc<Subscriber>) {
        let mut routes = self.write();
        let Routes { sublist, filtered } = &mut *routes;
        match (&sub.group, &sub.filter) {
            (None, Some(filter)) => {
                let set = match filtered.get(sub.pattern.as_str()) {
                    Some(set) => Arc::clone(set),
                    None => {
                        let set = Arc::new(FilteredSubs::default());
                        sublist.insert(&sub.pattern, Route::Filtered(Arc::clone(&set)));
                        filtered.insert(sub.pattern.as_str().into(), Arc::clone(&set));
                        set
                    }
                };
                set.write().insert((**filter).clone(), Arc::clone(&sub));
            }
            _ => sublist.insert(&sub.pattern, Route::Subscriber(Arc::clone(&sub))),
        }
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.local.add(interest_key(&sub));
    }

    /// Removes `sub`; no message is delivered on it once this returns.
    pub fn unsubscribe(&self, sub: &Arc<Subscriber>) {
        sub.outbound.deactivate(&sub.active);
        let mut routes = self.write();
        let Routes { sublist, filtered } = &mut *routes;
        let removed = match (&sub.group, &sub.filter) {
            (None, Some(filter)) => match filtered.get(sub.pattern.as_str()).cloned() {
                Some(set) => {
                    let mut index = set.write();
                    let removed = index.remove(filter, |s| Arc::ptr_eq(s, sub));
                    if index.is_empty() {
                        sublist.remove(&sub.pattern, &Route::Filtered(Arc::clone(&set)));
                        filtered.remove(sub.pattern.as_str());
                    }
                    removed
                }
                None => false,
            },
            _ => sublist.remove(&sub.pattern, &Route::Subscriber(Arc::clone(sub))),
        };
        if removed {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
            self.local.remove(interest_key(sub));
        }
    }

    /// Routes messages on `key` to another node. The caller adds each key of a node
    /// once (`cluster::pubsub` keeps each node's set).
    pub fn add_remote(&self, node: &Arc<dyn RemoteNode>, key: &InterestKey) {
        let route = Route::Remote(Arc::clone(node), key.group.as_deref().map(Into::into));
        self.write().sublist.insert(&key.pattern, route);
    }

    /// Stops routing messages on `key` to another node.
    pub fn remove_remote(&self, node: &Arc<dyn RemoteNode>, key: &InterestKey) {
        let route = Route::Remote(Arc::clone(node), key.group.as_deref().map(Into::into));
        self.write().sublist.remove(&key.pattern, &route);
    }

    /// Routes messages on the queue's binding patterns to it.
    pub fn bind_queue(&self, queue: &Arc<QueueHandle>) {
        let sublist = &mut self.write().sublist;
        for (i, b) in queue.def.bindings.iter().enumerate() {
            sublist.insert(&b.pattern, Route::Queue(Arc::clone(queue), i));
        }
    }

    /// Stops routing messages to the queue.
    pub fn unbind_queue(&self, queue: &Arc<QueueHandle>) {
        let sublist = &mut self.write().sublist;
        for (i, b) in queue.def.bindings.iter().enumerate() {
            sublist.remove(&b.pattern, &Route::Queue(Arc::clone(queue), i));
        }
    }

    /// Number of live subscriptions on the server (queue bindings not counted).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
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

    /// Who wants `subject`, matched through the sublist and not remembered.
    pub fn lookup_uncached(&self, subject: &str) -> Arc<Interest> {
        Arc::new(Interest::new(&self.read().sublist.matches(subject)))
    }

    /// Who wants `subject`, matched through the sublist and remembered in `cache`.
    pub fn lookup(&self, cache: &mut RouteCache, subject: &str) -> Arc<Interest> {
        let (generation, subs) = {
            let routes = self.read();
            (routes.sublist.generation(), routes.sublist.matches(subject))
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

/// The key a subscription counts under for the other nodes.
fn interest_key(sub: &Subscriber) -> InterestKey {
    InterestKey {
        pattern: sub.pattern.as_str().to_string(),
        group: sub.group.as_ref().map(ToString::to_string),
    }
}
