//! Reconnect pacing and connection-state logging, with no I/O (unit-tested).

use std::time::Duration;

/// Exponential back-off with jitter: attempt `n` waits a random time between half
/// and all of `min * 2^n`, capped at `max`. The jitter keeps many bridges (or many
/// brokers' bridges) that lost the same remote from reconnecting in lock-step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=spread))
    }

    /// After a successful connection: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What to say about the connection, once per change of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// `info`: connected (the first time, or again).
    Connected(String),
    /// `warn`: lost the connection, or could not make the first one.
    Down(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Never connected yet; `attempts` failed so far.
    Starting {
        attempts: u32,
    },
    Connected,
    /// Lost a connection; `attempts` failed to restore it so far.
    Lost {
        attempts: u32,
    },
}

/// Turns connection events into log lines: one when the state changes, none for each
/// failed attempt while the remote stays away.
#[derive(Debug)]
pub(crate) struct ConnLog {
    url: String,
    state: State,
}

impl ConnLog {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            state: State::Starting { attempts: 0 },
        }
    }

    /// A connection was made. Returns the line to log and whether it is a reconnect.
    pub fn connected(&mut self) -> (Note, bool) {
        let url = &self.url;
        let (note, reconnect) = match self.state {
            State::Starting { attempts: 0 } => (format!("connected to {url}"), false),
            State::Starting { attempts } => (
                format!("connected to {url} after {}", tries(attempts + 1)),
                false,
            ),
            State::Lost { attempts } => (
                format!("reconnected to {url} after {}", tries(attempts + 1)),
                true,
            ),
            // Cannot happen (a connection is made only after the last one failed);
            // saying so is harmless.
            State::Connected => (format!("connected to {url} again"), true),
        };
        self.state = State::Connected;
        (Note::Connected(note), reconnect)
    }

    /// A connection failed or an attempt to make one did. Returns a line only for the
    /// first failure after a change of state.
    pub fn failed(&mut self, reason: &str) -> Option<Note> {
        let url = &self.url;
        match &mut self.state {
            State::Connected => {
                self.state = State::Lost { attempts: 0 };
                Some(Note::Down(format!(
                    "disconnected from {url}: {reason}; reconnecting with back-off"
                )))
            }
            State::Starting { attempts: 0 } => {
                self.state = State::Starting { attempts: 1 };
                Some(Note::Down(format!(
                    "cannot connect to {url}: {reason}; retrying with back-off"
                )))
            }
            State::Starting { attempts } | State::Lost { attempts } => {
                *attempts = attempts.saturating_add(1);
                None
            }
        }
    }

    #[cfg(test)]
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }
}

fn tries(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_string()
    } else {
        format!("{n} attempts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for n in 0..10u32 {
            let ceiling = (100u64 << n).min(2000);
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {n}: {d} ms");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(huge.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn each_state_change_is_logged_once() {
        let mut log = ConnLog::new("mqtt://h:1883");
        assert!(
            matches!(log.failed("refused"), Some(Note::Down(m)) if m.contains("cannot connect"))
        );
        assert_eq!(log.failed("refused"), None);
        assert_eq!(log.failed("refused"), None);
        let (note, reconnect) = log.connected();
        assert_eq!(
            note,
            Note::Connected("connected to mqtt://h:1883 after 4 attempts".into())
        );
        assert!(!reconnect);
        assert!(
            matches!(log.failed("reset by peer"), Some(Note::Down(m)) if m.contains("disconnected") && m.contains("reset by peer"))
        );
        for _ in 0..50 {
            assert_eq!(log.failed("refused"), None);
        }
        let (note, reconnect) = log.connected();
        assert_eq!(
            note,
            Note::Connected("reconnected to mqtt://h:1883 after 51 attempts".into())
        );
        assert!(reconnect);
        // Lost and back at the first attempt.
        assert!(log.failed("eof").is_some());
        assert_eq!(
            log.connected().0,
            Note::Connected("reconnected to mqtt://h:1883 after 1 attempt".into())
        );
    }

    #[test]
    fn a_first_connection_is_plain() {
        let mut log = ConnLog::new("u");
        assert_eq!(
            log.connected(),
            (Note::Connected("connected to u".into()), false)
        );
        assert!(log.is_connected());
    }
}
