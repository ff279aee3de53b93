//! Reply permits: a responder may answer the requests it was handed, even when its
//! permissions do not let it publish to the requester's inbox otherwise.
//!
//! What a permit allows, exactly (NATS's `allow_responses` with a budget of one):
//!
//! * it is granted when a message with a reply-to subject is delivered to a connection
//!   whose publish permissions are restricted, and **only if another connection
//!   published that message** — a client cannot grant itself permits with its own
//!   messages, live or through a durable queue (a queue remembers the publishing
//!   connection until a restart, after which that connection is gone anyway);
//! * it allows **one** publish to **exactly** that reply subject;
//! * it lapses at the request's deadline (the `tern-deadline` header), and in any case
//!   after [`PERMIT_TTL`].
//!
//! The requester's side is checked at publish time (`handler::publish`): a reply-to
//! must be a subject the requester may subscribe to, so a permit can never point a
//! responder at a subject that its requester could not have read anyway.
//!
//! Bounded in number and age, so a flood of requests cannot grow it without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_codec::{Envelope, DEADLINE_HEADER};

use crate::clock::now_ms;

/// Most unused permits a connection holds at once; the oldest go first.
const MAX_PERMITS: usize = 10_000;
/// How long a permit lasts when its request carries no earlier deadline.
pub const PERMIT_TTL: Duration = Duration::from_secs(600);

/// One connection's reply permits.
#[derive(Debug, Default)]
pub(crate) struct ReplyPermits {
    /// A std `Mutex`: a map insert or lookup, never held across an `.await`.
    inner: Mutex<Permits>,
}

#[derive(Debug, Default)]
struct Permits {
    /// Unused permits by reply subject: each grant's number and when it lapses.
    subjects: HashMap<Box<str>, Vec<(u64, Instant)>>,
    /// Every grant in the order made, to drop the oldest when too many are held. A
    /// grant used or lapsed meanwhile is skipped by its number.
    order: VecDeque<(u64, Instant, Box<str>)>,
    next: u64,
    held: usize,
}

impl Permits {
    /// Drops the grant `(subject, id)` if still held.
    fn remove(&mut self, subject: &str, id: u64) {
        if let Some(grants) = self.subjects.get_mut(subject) {
            if let Some(i) = grants.iter().position(|(g, _)| *g == id) {
                grants.swap_remove(i);
                self.held -= 1;
            }
            if grants.is_empty() {
                self.subjects.remove(subject);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, granted, _)) = self.order.front() {
            if now.duration_since(*granted) < PERMIT_TTL && self.held <= MAX_PERMITS {
                break;
            }
            if let Some((id, _, subject)) = self.order.pop_front() {
                self.remove(&subject, id);
            }
        }
        // Used grants leave their place in `order` behind; they are dropped once they
        // are older than the TTL, and never outnumber the limit by more than that.
        if self.order.len() > 2 * MAX_PERMITS {
            let subjects = &self.subjects;
            self.order.retain(|(id, _, s)| {
                subjects
                    .get(s)
                    .is_some_and(|g| g.iter().any(|(x, _)| x == id))
            });
        }
    }
}

impl ReplyPermits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Permits> {
        // Inserts and removes leave the map whole; a poisoned lock still guards it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants one reply to `envelope`'s reply-to, if it has one, until its deadline;
    /// nothing for a message the receiving connection published itself (`own`).
    pub fn grant_for(&self, envelope: &Envelope, own: bool) {
        let Some(reply_to) = &envelope.reply_to else {
            return;
        };
        if own {
            return;
        }
        let now = Instant::now();
        let lapses = match envelope
            .headers
            .get(DEADLINE_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(deadline) => {
                let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
                now + left.min(PERMIT_TTL)
            }
            None => now + PERMIT_TTL,
        };
        self.grant(reply_to, now, lapses);
    }

    fn grant(&self, subject: &str, now: Instant, lapses: Instant) {
        let mut p = self.lock();
        let id = p.next;
        p.next += 1;
        p.subjects
            .entry(subject.into())
            .or_default()
            .push((id, lapses));
        p.held += 1;
        p.order.push_back((id, now, subject.into()));
        p.expire(now);
    }

    /// Uses up a permit for `subject`, if the connection holds one that has not
    /// lapsed: whether the publish is allowed.
    pub fn take(&self, subject: &str) -> bool {
        let now = Instant::now();
        let mut p = self.lock();
        p.expire(now);
        let Some(grants) = p.subjects.get_mut(subject) else {
            return false;
        };
        let dropped = grants.len();
        grants.retain(|(_, lapses)| *lapses > now);
        let lapsed = dropped - grants.len();
        // The grant that lapses first is the one used.
        let first = grants
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, lapses))| *lapses)
            .map(|(i, _)| i);
        let used = first.map(|i| grants.swap_remove(i)).is_some();
        if grants.is_empty() {
            p.subjects.remove(subject);
        }
        p.held -= lapsed + usize::from(used);
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + PERMIT_TTL
    }

    fn request(subject: &str, reply_to: &str) -> Envelope {
        Envelope {
            subject: subject.into(),
            reply_to: Some(reply_to.into()),
            headers: tern_codec::Headers::new(),
            payload: tern_codec::Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn a_permit_allows_one_reply_to_exactly_its_subject() {
        let r = ReplyPermits::default();
        r.grant("_INBOX.a.1", Instant::now(), far());
        assert!(!r.take("_INBOX.a.2"));
        assert!(!r.take("_INBOX.a"));
        assert!(r.take("_INBOX.a.1"));
        assert!(!r.take("_INBOX.a.1"), "used up");
        r.grant("_INBOX.a.1", Instant::now(), far());
        r.grant("_INBOX.a.1", Instant::now(), far());
        assert!(r.take("_INBOX.a.1"));
        assert!(r.take("_INBOX.a.1"), "two requests, two replies");
        assert!(!r.take("_INBOX.a.1"));
        assert_eq!(r.lock().held, 0);
    }

    #[test]
    fn a_lapsed_permit_allows_nothing() {
        let r = ReplyPermits::default();
        let now = Instant::now();
        r.grant("_INBOX.a.1", now, now);
        assert!(!r.take("_INBOX.a.1"));
        assert_eq!(r.lock().held, 0);
    }

    #[test]
    fn no_permit_for_a_connections_own_message() {
        let r = ReplyPermits::default();
        let env = request("a.b.x", "secret.target");
        r.grant_for(&env, true);
        assert!(!r.take("secret.target"));
        r.grant_for(&env, false);
        assert!(r.take("secret.target"));
    }

    #[test]
    fn a_deadline_in_the_past_grants_nothing_usable() {
        let r = ReplyPermits::default();
        let mut env = request("svc", "_INBOX.a.1");
        env.headers
            .append(DEADLINE_HEADER, now_ms().saturating_sub(1).to_string());
        r.grant_for(&env, false);
        assert!(!r.take("_INBOX.a.1"));
    }

    #[test]
    fn grants_are_bounded() {
        let r = ReplyPermits::default();
        r.grant("_INBOX.a.1", Instant::now(), far());
        for i in 0..MAX_PERMITS + 10 {
            r.grant(&format!("x.{i}"), Instant::now(), far());
        }
        assert!(!r.take("_INBOX.a.1"), "the oldest went first");
        let p = r.lock();
        assert!(p.held <= MAX_PERMITS);
        assert!(p.order.len() <= 2 * MAX_PERMITS + 1);
    }
}
