//! Message headers: an ordered list of UTF-8 key/value pairs.
//!
//! Order is kept and a key may repeat, as in HTTP: a bridge or a filter sees exactly what
//! the publisher sent.
//!
//! ```text
//! count: u16, then count × (key: string, value: string)
//! ```

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::wire::{self, Reader};

/// Header in which a request carries its deadline, in milliseconds since the Unix
/// epoch (decimal): a message still in a queue past it expires, and a responder's
/// permit to reply to it lapses.
pub const DEADLINE_HEADER: &str = "tern-deadline";

/// Ordered message headers. Keys are case-sensitive and may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(ByteString, ByteString)>);

impl Headers {
    /// No headers. Does not allocate.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header, keeping any earlier value of the same key.
    pub fn append(&mut self, key: impl Into<ByteString>, value: impl Into<ByteString>) {
        self.0.push((key.into(), value.into()));
    }

    /// Sets a header, replacing every earlier value of the same key.
    pub fn insert(&mut self, key: impl Into<ByteString>, value: impl Into<ByteString>) {
        let key = key.into();
        self.0.retain(|(k, _)| *k != key);
        self.0.push((key, value.into()));
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn encoded_len(&self) -> usize {
        2 + self
            .0
            .iter()
            .map(|(k, v)| wire::string_len(k) + wire::string_len(v))
            .sum::<usize>()
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let count = u16::try_from(self.0.len()).map_err(|_| EncodeError::TooManyHeaders {
            count: self.0.len(),
        })?;
        dst.put_u16(count);
        for (k, v) in &self.0 {
            wire::put_string(dst, k, "header key")?;
            wire::put_string(dst, v, "header value")?;
        }
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let count = r.u16("header count")?;
        // Each header takes at least 4 bytes, so `count` is bounded by the frame size
        // the decoder already accepted; no peer can make this allocate more than that.
        let mut headers = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let k = r.string("header key")?;
            let v = r.string("header value")?;
            headers.push((k, v));
        }
        Ok(Self(headers))
    }
}

impl<K: Into<ByteString>, V: Into<ByteString>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_repeats() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("b", "2");
        h.append("a", "3");
        assert_eq!(h.get("a"), Some("1"));
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("a", "3")]
        );
        h.insert("a", "4");
        assert_eq!(h.iter().collect::<Vec<_>>(), [("b", "2"), ("a", "4")]);
        assert_eq!(h.get("missing"), None);
    }
}
