//! Queue definitions: a name, bindings and options, validated and with defaults filled
//! in. What the store keeps (as JSON, so that later versions can add options with
//! defaults) and what QUEUE_INFO reports.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use tern_codec::subject::validate_pattern;
use tern_codec::{Binding, ErrorCode, Overflow, QueueDeclare, QueueOptions, SubjectLimits};

use crate::config::QueueDefaults;
use crate::filter::{Filter, FilterError, FilterLimits};
use crate::handler::Reject;
use crate::queue::BindingFilters;

pub use tern_codec::names::validate_name;

/// A binding's content filter that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("binding '{pattern}': {source}")]
pub struct BindingFilterError {
    pub pattern: String,
    #[source]
    pub source: FilterError,
}

/// A binding: messages on subjects matching `pattern` (and, when set, `filter`) go to
/// the queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindingDef {
    pub pattern: String,
    #[serde(default)]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowDef {
    DropHead,
    Reject,
}

/// A queue as declared, with every option resolved. Stored as JSON in the store and
/// carried in the write-ahead log in postcard, which is not self-describing: every
/// field is always written (`default` only reads definitions stored by older versions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    pub bindings: Vec<BindingDef>,
    pub max_deliver: u32,
    pub ack_timeout_ms: u64,
    #[serde(default)]
    pub dead_letter: Option<String>,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    #[serde(default)]
    pub max_length: Option<u64>,
    pub overflow: OverflowDef,
}

fn invalid(message: String) -> Reject {
    Reject::new(ErrorCode::InvalidQueue, message)
}

impl QueueDef {
    /// Validates a declare and fills in defaults.
    ///
    /// # Errors
    ///
    /// An invalid name, pattern or dead-letter name, or a queue that dead-letters into
    /// itself. (Binding filters are checked by [`QueueDef::compile_filters`].)
    pub fn from_declare(
        d: &QueueDeclare,
        defaults: &QueueDefaults,
        subjects: &SubjectLimits,
    ) -> Result<Self, Reject> {
        validate_name(&d.name).map_err(invalid)?;
        let mut bindings = Vec::with_capacity(d.bindings.len());
        for b in &d.bindings {
            validate_pattern(&b.pattern, subjects).map_err(|e| {
                invalid(format!("binding pattern '{}' is not valid: {e}", b.pattern))
            })?;
            let def = BindingDef {
                pattern: b.pattern.to_string(),
                filter: b.filter.as_ref().map(ToString::to_string),
            };
            if !bindings.contains(&def) {
                bindings.push(def);
            }
        }
        bindings.sort();
        let o = &d.options;
        if let Some(dl) = &o.dead_letter {
            validate_name(dl).map_err(|e| invalid(format!("dead_letter: {e}")))?;
            if **dl == *d.name {
                return Err(invalid(format!(
                    "queue '{}' cannot be its own dead-letter queue",
                    d.name
                )));
            }
        }
        Ok(Self {
            name: d.name.to_string(),
            bindings,
            max_deliver: match o.max_deliver {
                0 => defaults.max_deliver,
                n => n,
            },
            ack_timeout_ms: match o.ack_timeout_ms {
                0 => u64::try_from(defaults.ack_timeout.as_millis()).unwrap_or(u64::MAX),
                n => u64::from(n),
            },
            dead_letter: o.dead_letter.as_ref().map(ToString::to_string),
            ttl_ms: (o.ttl_ms != 0).then_some(o.ttl_ms),
            max_length: (o.max_length != 0).then_some(o.max_length),
            overflow: match o.overflow {
                Overflow::DropHead => OverflowDef::DropHead,
                Overflow::Reject => OverflowDef::Reject,
            },
        })
    }

    /// Each binding's compiled filter, in order.
    ///
    /// # Errors
    ///
    /// A filter that does not compile: a bad declare, or a stored filter over limits
    /// lowered since it was declared.
    pub fn compile_filters(
        &self,
        limits: &FilterLimits,
    ) -> Result<BindingFilters, BindingFilterError> {
        self.bindings
            .iter()
            .map(|b| {
                b.filter
                    .as_deref()
                    .map(|text| Filter::compile(text, limits))
                    .transpose()
                    .map_err(|source| BindingFilterError {
                        pattern: b.pattern.clone(),
                        source,
                    })
            })
            .collect()
    }

    /// The bindings in their wire form.
    pub fn wire_bindings(&self) -> Vec<Binding> {
        self.bindings
            .iter()
            .map(|b| Binding {
                pattern: b.pattern.as_str().into(),
                filter: b.filter.as_deref().map(ByteString::from),
            })
            .collect()
    }

    /// The options in their wire form, with the values in force.
    pub fn wire_options(&self) -> QueueOptions {
        QueueOptions {
            max_deliver: self.max_deliver,
            ack_timeout_ms: u32::try_from(self.ack_timeout_ms).unwrap_or(u32::MAX),
            dead_letter: self.dead_letter.as_deref().map(ByteString::from),
            ttl_ms: self.ttl_ms.unwrap_or(0),
            max_length: self.max_length.unwrap_or(0),
            overflow: match self.overflow {
                OverflowDef::DropHead => Overflow::DropHead,
                OverflowDef::Reject => Overflow::Reject,
            },
        }
    }

    /// The bytes the store keeps.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a definition the store kept.
    ///
    /// # Errors
    ///
    /// The bytes are not a definition (a corrupt store).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declare(name: &str, patterns: &[&str]) -> QueueDeclare {
        QueueDeclare {
            id: 1,
            name: name.into(),
            bindings: patterns
                .iter()
                .map(|p| Binding {
                    pattern: (*p).into(),
                    filter: None,
                })
                .collect(),
            options: QueueOptions::default(),
        }
    }

    #[test]
    fn defaults_are_filled_in_and_bindings_normalised() {
        let d = QueueDef::from_declare(
            &declare("orders", &["orders.>", "b.*", "orders.>"]),
            &QueueDefaults::default(),
            &SubjectLimits::default(),
        )
        .unwrap();
        assert_eq!(d.max_deliver, 5);
        assert_eq!(d.ack_timeout_ms, 30_000);
        assert_eq!(d.ttl_ms, None);
        assert_eq!(
            d.bindings
                .iter()
                .map(|b| b.pattern.as_str())
                .collect::<Vec<_>>(),
            ["b.*", "orders.>"]
        );
        assert_eq!(QueueDef::from_bytes(&d.to_bytes()).unwrap(), d);
    }

    #[test]
    fn bad_declares_are_refused() {
        let defaults = QueueDefaults::default();
        let limits = SubjectLimits::default();
        for (d, code) in [
            (declare("", &[]), ErrorCode::InvalidQueue),
            (declare("a b", &[]), ErrorCode::InvalidQueue),
            (declare(&"x".repeat(256), &[]), ErrorCode::InvalidQueue),
            (declare("q", &["a..b"]), ErrorCode::InvalidQueue),
        ] {
            let err = QueueDef::from_declare(&d, &defaults, &limits).unwrap_err();
            assert_eq!(err.code, code, "{}", err.message);
        }
        let mut own = declare("q", &[]);
        own.options.dead_letter = Some("q".into());
        assert!(QueueDef::from_declare(&own, &defaults, &limits).is_err());
    }
}
