//! Reply permits: a responder may always reply to the requests it was handed, even
//! when its permissions do not let it publish to the requester's inbox otherwise.
//!
//! When a message with a reply-to subject is delivered to a connection whose publish
//! permissions are restricted, the reply-to subject is granted to it for a while.
//! Bounded in number and age, so a flood of requests cannot grow it without limit.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most reply subjects a connection holds permits for at once.
const MAX_PERMITS: usize = 10_000;
/// How long a permit lasts.
const PERMIT_TTL: Duration = Duration::from_secs(600);

/// One connection's reply permits.
#[derive(Debug, Default)]
pub(crate) struct ReplyPermits {
    /// A std `Mutex`: a set insert or lookup, never held across an `.await`.
    inner: Mutex<Permits>,
}

#[derive(Debug, Default)]
struct Permits {
    subjects: HashSet<Box<str>>,
    order: VecDeque<(Instant, Box<str>)>,
}

impl Permits {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < PERMIT_TTL && self.order.len() <= MAX_PERMITS {
                break;
            }
            if let Some((_, s)) = self.order.pop_front() {
                self.subjects.remove(&s);
            }
        }
    }
}

impl ReplyPermits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Permits> {
        // Inserts and removes leave the set whole; a poisoned lock still guards it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the connection publish to `subject` (a request's reply-to).
    pub fn grant(&self, subject: &str) {
        let mut p = self.lock();
        if p.subjects.insert(subject.into()) {
            p.order.push_back((Instant::now(), subject.into()));
        }
        p.expire(Instant::now());
    }

    /// Whether the connection holds a permit for `subject`.
    pub fn allows(&self, subject: &str) -> bool {
        let mut p = self.lock();
        p.expire(Instant::now());
        p.subjects.contains(subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_bounded() {
        let r = ReplyPermits::default();
        r.grant("_INBOX.a.1");
        assert!(r.allows("_INBOX.a.1"));
        assert!(!r.allows("_INBOX.a.2"));
        for i in 0..MAX_PERMITS + 10 {
            r.grant(&format!("x.{i}"));
        }
        assert!(!r.allows("_INBOX.a.1"), "the oldest went first");
        assert!(r.lock().subjects.len() <= MAX_PERMITS);
    }
}
