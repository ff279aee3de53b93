//! Wall-clock time as the broker stamps it on messages: milliseconds since the Unix
//! epoch. Its own module, below every other, because sessions, queues, the journal and
//! reply permits all read it.

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
