//! A subscription's (or consumer's) message queue, between the connection driver and
//! the application.
//!
//! The driver pushes every message of a read batch under the lock it already holds for
//! the batch and wakes the reader once per batch; the reader takes everything queued in
//! one swap. So the cost per message is a `VecDeque` push and pop, not a channel
//! operation and a wake. The queue is bounded: when the application falls behind, new
//! messages are dropped and counted rather than stalling every other subscription on
//! the connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use futures_util::task::AtomicWaker;

/// What happened to a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; the queue was empty before, so the reader must be woken.
    First,
    /// Queued behind others; the reader has been woken already.
    Queued,
    /// The queue is full; the message was dropped and counted.
    Dropped,
    /// The queue was closed (the subscription ended); ignored.
    Closed,
}

#[derive(Debug)]
struct Inner<T> {
    messages: VecDeque<T>,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct SubQueue<T> {
    /// A std `Mutex`: held for a push or a swap, never across an `.await`.
    inner: Mutex<Inner<T>>,
    waker: AtomicWaker,
    capacity: usize,
    dropped: AtomicU64,
}

/// A queue whose reader can be woken, whatever it holds.
pub(crate) trait Wake: Send + Sync {
    fn wake(&self);
}

impl<T: Send> Wake for SubQueue<T> {
    fn wake(&self) {
        self.waker.wake();
    }
}

impl<T> SubQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                messages: VecDeque::new(),
                closed: false,
            }),
            waker: AtomicWaker::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Pushes and swaps leave the queue whole; a poisoned lock guards good data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, message: T) -> Pushed {
        let mut q = self.lock();
        if q.closed {
            return Pushed::Closed;
        }
        if q.messages.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Pushed::Dropped;
        }
        q.messages.push_back(message);
        if q.messages.len() == 1 {
            Pushed::First
        } else {
            Pushed::Queued
        }
    }

    /// Ends the queue: the reader gets what is queued, then the end.
    pub fn close(&self) {
        self.lock().closed = true;
        self.waker.wake();
    }

    /// Moves every queued message to `into` (empty). `false` once closed and drained.
    fn take_all(&self, into: &mut VecDeque<T>) -> bool {
        let mut q = self.lock();
        std::mem::swap(&mut q.messages, into);
        !(into.is_empty() && q.closed)
    }

    /// Moves queued messages to `into`, or registers `waker` to be woken when some
    /// arrive. `Some(false)` means the queue is closed and drained.
    pub fn poll_take(&self, into: &mut VecDeque<T>, waker: &Waker) -> Option<bool> {
        if !self.take_all(into) {
            return Some(false);
        }
        if !into.is_empty() {
            return Some(true);
        }
        // Registered before checking again, so a push in between cannot be missed.
        self.waker.register(waker);
        if !self.take_all(into) {
            return Some(false);
        }
        (!into.is_empty()).then_some(true)
    }

    pub fn try_take(&self, into: &mut VecDeque<T>) {
        self.take_all(into);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
