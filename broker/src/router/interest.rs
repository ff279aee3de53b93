//! Who takes messages on one subject, grouped for delivery, and the delivery itself.

use std::collections::HashMap;
use std::sync::Arc;

use bytestring::ByteString;
use tern_codec::Envelope;
use tern_storage::QueueId;

use super::remote::RemoteNode;
use super::{FilteredSubs, Route, Subscriber};
use crate::filter::MessageView;
use crate::outbound::{Push, Wakes};

/// A queue a subject routes to, and which of its bindings match the subject.
#[derive(Debug)]
struct QueueRoute {
    queue: Arc<crate::queue::QueueHandle>,
    bindings: Vec<usize>,
}

impl QueueRoute {
    /// Whether one of the matching bindings takes the message: it has no filter, or
    /// its filter accepts the message.
    fn takes(&self, view: &MessageView<'_>) -> bool {
        self.bindings
            .iter()
            .any(|&b| self.queue.filter(b).is_none_or(|f| f.matches(view)))
    }
}

/// A queue group's members on this node.
#[derive(Debug)]
struct Group {
    name: ByteString,
    members: Vec<Arc<Subscriber>>,
}

/// Another node of the cluster whose clients subscribed to the subject.
#[derive(Debug)]
struct RemoteTarget {
    node: Arc<dyn RemoteNode>,
    /// Some subscription there has no queue group: it gets every message.
    plain: bool,
    /// Queue groups with members there.
    groups: Vec<ByteString>,
}

/// Who takes messages on one subject, grouped for delivery.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    /// Subscribers without a queue group or filter: each gets every message.
    plain: Vec<Arc<Subscriber>>,
    /// Filtered subscribers without a queue group, one set per matching pattern: each
    /// gets the messages its filter accepts. Header equalities are found by hash, so
    /// thousands of them cost about as much per message as a few.
    filtered: Vec<Arc<FilteredSubs>>,
    /// Members of each queue group: one member (whose filter accepts the message) per
    /// group gets each message.
    groups: Vec<Group>,
    /// Durable queues bound to the subject, each once however many bindings match.
    queues: Vec<QueueRoute>,
    /// In a cluster: the other nodes with subscribers, each once.
    remote: Vec<RemoteTarget>,
}

impl Interest {
    pub(super) fn new(routes: &[Route]) -> Self {
        let mut interest = Interest::default();
        let mut by_group: HashMap<&str, usize> = HashMap::new();
        for route in routes {
            let s = match route {
                Route::Subscriber(s) => s,
                Route::Filtered(f) => {
                    interest.filtered.push(Arc::clone(f));
                    continue;
                }
                Route::Queue(q, binding) => {
                    match interest.queues.iter_mut().find(|r| r.queue.id == q.id) {
                        Some(r) => r.bindings.push(*binding),
                        None => interest.queues.push(QueueRoute {
                            queue: Arc::clone(q),
                            bindings: vec![*binding],
                        }),
                    }
                    continue;
                }
                Route::Remote(node, group) => {
                    interest.add_remote(node, group.as_ref());
                    continue;
                }
            };
            match &s.group {
                None => interest.plain.push(Arc::clone(s)),
                Some(g) => {
                    let i = *by_group.entry(g).or_insert_with(|| {
                        interest.groups.push(Group {
                            name: g.clone(),
                            members: Vec::new(),
                        });
                        interest.groups.len() - 1
                    });
                    if let Some(group) = interest.groups.get_mut(i) {
                        group.members.push(Arc::clone(s));
                    }
                }
            }
        }
        interest
    }

    fn add_remote(&mut self, node: &Arc<dyn RemoteNode>, group: Option<&ByteString>) {
        let i = match self
            .remote
            .iter()
            .position(|r| r.node.node() == node.node())
        {
            Some(i) => i,
            None => {
                self.remote.push(RemoteTarget {
                    node: Arc::clone(node),
                    plain: false,
                    groups: Vec::new(),
                });
                self.remote.len() - 1
            }
        };
        if let Some(target) = self.remote.get_mut(i) {
            match group {
                None => target.plain = true,
                Some(g) if !target.groups.contains(g) => target.groups.push(g.clone()),
                Some(_) => {}
            }
        }
    }

    /// The queues that take the message (their binding filters accepting it).
    pub fn queues(&self, view: &MessageView<'_>) -> Vec<QueueId> {
        self.queues
            .iter()
            .filter(|r| r.takes(view))
            .map(|r| r.queue.id)
            .collect()
    }

    /// Whether some live subscriber would take the message (queues aside): what a
    /// mandatory publish needs besides a queue. Another node's subscribers count (their
    /// filters are that node's to apply).
    pub fn has_taker(&self, view: &MessageView<'_>) -> bool {
        !self.plain.is_empty()
            || !self.remote.is_empty()
            || self
                .filtered
                .iter()
                .any(|f| f.read().matching(view).next().is_some())
            || self
                .groups
                .iter()
                .flat_map(|g| &g.members)
                .any(|s| s.filter.as_ref().is_none_or(|f| f.matches(view)))
    }

    /// Delivers to every plain subscriber, to every filtered one whose filter accepts
    /// the message, and to one member of each group; in a cluster, forwards the message
    /// once to each other node with subscribers, naming the groups it is to serve: a
    /// group with a member here is served here (as NATS does), one without by a node
    /// picked at random among those with members.
    ///
    /// A group member is picked at random; if it refuses (full or closing, or its
    /// filter does not accept the message), the next one is tried, so a slow member
    /// sheds load to its peers instead of losing it. `publisher` is the sending
    /// connection. Returns `(delivered, dropped)`.
    pub fn deliver(
        &self,
        envelope: &Envelope,
        view: &MessageView<'_>,
        publisher: u64,
        wakes: &mut Wakes,
    ) -> (u64, u64) {
        let (mut delivered, mut dropped) =
            self.deliver_local(envelope, view, publisher, true, |_| true, wakes);
        if self.remote.is_empty() {
            return (delivered, dropped);
        }
        // The groups no member here took, each given to one node with members.
        let mut served: Vec<Vec<ByteString>> = vec![Vec::new(); self.remote.len()];
        let unserved = self.remote.iter().flat_map(|r| &r.groups).filter(|g| {
            !self
                .groups
                .iter()
                .any(|local| local.name == **g && !local.members.is_empty())
        });
        for group in unserved {
            if served.iter().flatten().any(|g| g == group) {
                continue;
            }
            let with: Vec<usize> = (0..self.remote.len())
                .filter(|&i| self.remote.get(i).is_some_and(|r| r.groups.contains(group)))
                .collect();
            if let Some(&i) = with.get(fastrand::usize(..with.len().max(1))) {
                if let Some(s) = served.get_mut(i) {
                    s.push(group.clone());
                }
            }
        }
        for (target, groups) in self.remote.iter().zip(served) {
            if !target.plain && groups.is_empty() {
                continue;
            }
            if target.node.forward(envelope, target.plain, &groups) {
                delivered += 1;
            } else {
                dropped += 1;
            }
        }
        (delivered, dropped)
    }

    /// Delivers a message another node forwarded: to the subscribers here only (it is
    /// never forwarded again), to the plain and filtered ones when `plain`, and to one
    /// member of each of `groups`.
    pub fn deliver_forwarded(
        &self,
        envelope: &Envelope,
        view: &MessageView<'_>,
        plain: bool,
        groups: &[ByteString],
        wakes: &mut Wakes,
    ) -> (u64, u64) {
        self.deliver_local(envelope, view, 0, plain, |g| groups.contains(g), wakes)
    }

    /// Delivers to this node's plain and filtered subscribers when `plain`, and to one
    /// member of each group `serve` names.
    fn deliver_local(
        &self,
        envelope: &Envelope,
        view: &MessageView<'_>,
        publisher: u64,
        plain: bool,
        serve: impl Fn(&ByteString) -> bool,
        wakes: &mut Wakes,
    ) -> (u64, u64) {
        let (mut delivered, mut dropped) = if plain {
            self.deliver_plain(envelope, view, publisher, wakes)
        } else {
            (0, 0)
        };
        for group in self.groups.iter().filter(|g| serve(&g.name)) {
            match deliver_to_one(&group.members, envelope, view, publisher, wakes) {
                Some(true) => delivered += 1,
                Some(false) => dropped += 1,
                None => {}
            }
        }
        (delivered, dropped)
    }

    fn deliver_plain(
        &self,
        envelope: &Envelope,
        view: &MessageView<'_>,
        publisher: u64,
        wakes: &mut Wakes,
    ) -> (u64, u64) {
        let (mut delivered, mut dropped) = (0, 0);
        let mut deliver = |s: &Subscriber| match s.deliver(envelope, publisher, wakes) {
            Push::Queued => delivered += 1,
            Push::Dropped => {
                s.outbound.count_drop();
                dropped += 1;
            }
            Push::Closed => {}
        };
        for s in &self.plain {
            deliver(s);
        }
        for set in &self.filtered {
            for s in set.read().matching(view) {
                deliver(s);
            }
        }
        (delivered, dropped)
    }
}

/// Delivers to one member of a group, starting at a random one and going on past those
/// that refuse. `Some(true)`: one took it; `Some(false)`: dropped (charged to the first
/// member that had no room); `None`: no member's filter accepts it, or all are closing.
fn deliver_to_one(
    members: &[Arc<Subscriber>],
    envelope: &Envelope,
    view: &MessageView<'_>,
    publisher: u64,
    wakes: &mut Wakes,
) -> Option<bool> {
    if members.is_empty() {
        return None;
    }
    let start = fastrand::usize(..members.len());
    let mut first_full = None;
    let taken = members
        .iter()
        .cycle()
        .skip(start)
        .take(members.len())
        .filter(|s| s.filter.as_ref().is_none_or(|f| f.matches(view)))
        .any(|s| match s.deliver(envelope, publisher, wakes) {
            Push::Queued => true,
            Push::Dropped => {
                first_full.get_or_insert(s);
                false
            }
            Push::Closed => false,
        });
    if taken {
        return Some(true);
    }
    first_full.map(|s| {
        s.outbound.count_drop();
        false
    })
}
