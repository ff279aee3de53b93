//! Connection-state logging, with no I/O (unit-tested): one line per change of state.

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
