//! Subjects and subscription patterns.
//!
//! A subject is a `.`-separated list of non-empty tokens, such as `sensors.kitchen.temp`.
//! A pattern may also use two wildcards, each of which must be a whole token:
//! `*` matches exactly one token, and `>`, only as the last token, matches one or more.
//!
//! Validation happens once, at the edge (the client before sending, the broker on
//! receipt), and the result is a [`Subject`] or [`Pattern`] newtype, so code further in
//! never has to wonder whether a string was checked.

use std::fmt;

use bytestring::ByteString;

/// Limits on subjects and patterns. The broker's are configurable; these defaults are
/// what a client checks before sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectLimits {
    /// Maximum length in bytes.
    pub max_len: usize,
    /// Maximum number of tokens.
    pub max_tokens: usize,
}

impl Default for SubjectLimits {
    fn default() -> Self {
        Self {
            max_len: 1024,
            max_tokens: 128,
        }
    }
}

/// Why a string is not a valid subject or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("subject has {count} tokens; the limit is {max}")]
    TooManyTokens { count: usize, max: usize },
    #[error("token {position} is empty (subjects look like 'a.b.c')")]
    EmptyToken { position: usize },
    #[error("token {position} contains whitespace or a control character")]
    Whitespace { position: usize },
    #[error("token {position} is a wildcard; a published subject must be literal")]
    Wildcard { position: usize },
    #[error(
        "token {position} mixes a wildcard with other characters; '*' and '>' must be whole tokens"
    )]
    PartialWildcard { position: usize },
    #[error("'>' may only be the last token")]
    TailNotLast,
}

/// Tokens of a subject or pattern. Never empty for a validated string.
pub fn tokens(s: &str) -> std::str::Split<'_, char> {
    s.split('.')
}

fn validate(s: &str, limits: &SubjectLimits, wildcards: bool) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > limits.max_len {
        return Err(SubjectError::TooLong {
            len: s.len(),
            max: limits.max_len,
        });
    }
    // One pass over the bytes: this runs for every publish, so ASCII is checked byte by
    // byte and only tokens with non-ASCII bytes pay for decoding characters. Splitting
    // on the ASCII '.' never cuts a UTF-8 sequence.
    let mut count = 0;
    let mut tail_seen = false;
    for (i, token) in s.as_bytes().split(|&b| b == b'.').enumerate() {
        let position = i + 1;
        count = position;
        if tail_seen {
            return Err(SubjectError::TailNotLast);
        }
        match token {
            [] => return Err(SubjectError::EmptyToken { position }),
            b"*" | b">" if !wildcards => return Err(SubjectError::Wildcard { position }),
            b"*" => continue,
            b">" => {
                tail_seen = true;
                continue;
            }
            _ => {}
        }
        let mut non_ascii = false;
        for &b in token {
            match b {
                0..=b' ' | 0x7f => return Err(SubjectError::Whitespace { position }),
                b'*' | b'>' if wildcards => return Err(SubjectError::PartialWildcard { position }),
                b'*' | b'>' => return Err(SubjectError::Wildcard { position }),
                0x80.. => non_ascii = true,
                _ => {}
            }
        }
        if non_ascii
            && String::from_utf8_lossy(token)
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(SubjectError::Whitespace { position });
        }
    }
    if count > limits.max_tokens {
        return Err(SubjectError::TooManyTokens {
            count,
            max: limits.max_tokens,
        });
    }
    Ok(())
}

/// Checks that `s` is a literal subject within `limits`.
///
/// # Errors
///
/// The first rule `s` breaks.
pub fn validate_subject(s: &str, limits: &SubjectLimits) -> Result<(), SubjectError> {
    validate(s, limits, false)
}

/// Checks that `s` is a subscription pattern within `limits`.
///
/// # Errors
///
/// The first rule `s` breaks.
pub fn validate_pattern(s: &str, limits: &SubjectLimits) -> Result<(), SubjectError> {
    validate(s, limits, true)
}

/// Whether `pattern` matches `subject`, token by token.
///
/// This is the reference definition — simple and obviously right — that the broker's
/// trie is property-tested against. It is not used on the hot path.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = tokens(pattern);
    let mut s = tokens(subject);
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $validate:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(ByteString);

        impl $name {
            /// Validates `s` against `limits`.
            ///
            /// # Errors
            ///
            /// The first rule `s` breaks.
            pub fn new(s: impl Into<ByteString>, limits: &SubjectLimits) -> Result<Self, SubjectError> {
                let s = s.into();
                $validate(&s, limits)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The underlying shared string (cheap to clone).
            pub fn into_inner(self) -> ByteString {
                self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = SubjectError;

            /// Validates against the default [`SubjectLimits`].
            fn try_from(s: &str) -> Result<Self, SubjectError> {
                Self::new(s, &SubjectLimits::default())
            }
        }

        impl TryFrom<String> for $name {
            type Error = SubjectError;

            fn try_from(s: String) -> Result<Self, SubjectError> {
                Self::new(s, &SubjectLimits::default())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

validated_string!(
    /// A literal subject (no wildcards), such as `sensors.kitchen.temp`.
    Subject,
    validate_subject
);

validated_string!(
    /// A subscription pattern, such as `sensors.*.temp` or `sensors.>`.
    Pattern,
    validate_pattern
);

impl Pattern {
    /// Whether this pattern matches `subject`.
    pub fn matches(&self, subject: &str) -> bool {
        matches(self, subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_table() {
        let table = [
            ("a", "a", true),
            ("a", "b", false),
            ("a.b", "a.b", true),
            ("a.b", "a", false),
            ("a", "a.b", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a", false),
            ("*.*", "a.b", true),
            ("*.b", "a.b", true),
            ("*.b", "a.c", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.>", "a", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c.d", true),
            ("a.>", "b.c", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*.>", "a", false),
            ("*.>", "a.b", true),
            ("a.*.>", "a.b", false),
            ("a.*.>", "a.b.c", true),
        ];
        for (pattern, subject, want) in table {
            assert_eq!(matches(pattern, subject), want, "{pattern} vs {subject}");
        }
    }

    #[test]
    fn subject_validation() {
        let l = SubjectLimits::default();
        assert!(validate_subject("a.b.c", &l).is_ok());
        assert!(validate_subject("sensors.kitchen-1.temp_c", &l).is_ok());
        assert_eq!(validate_subject("", &l), Err(SubjectError::Empty));
        assert_eq!(
            validate_subject("a..b", &l),
            Err(SubjectError::EmptyToken { position: 2 })
        );
        assert_eq!(
            validate_subject(".a", &l),
            Err(SubjectError::EmptyToken { position: 1 })
        );
        assert_eq!(
            validate_subject("a.", &l),
            Err(SubjectError::EmptyToken { position: 2 })
        );
        assert_eq!(
            validate_subject("a.*", &l),
            Err(SubjectError::Wildcard { position: 2 })
        );
        assert_eq!(
            validate_subject(">", &l),
            Err(SubjectError::Wildcard { position: 1 })
        );
        assert_eq!(
            validate_subject("a.b*", &l),
            Err(SubjectError::Wildcard { position: 2 })
        );
        assert_eq!(
            validate_subject("a b", &l),
            Err(SubjectError::Whitespace { position: 1 })
        );
        assert_eq!(
            validate_subject("a.\tb", &l),
            Err(SubjectError::Whitespace { position: 2 })
        );
        assert_eq!(
            validate_subject("a.b\u{00a0}c", &l),
            Err(SubjectError::Whitespace { position: 2 }),
            "non-ASCII whitespace"
        );
        assert_eq!(
            validate_subject("a.\u{0085}", &l),
            Err(SubjectError::Whitespace { position: 2 }),
            "non-ASCII control"
        );
        assert!(validate_subject("capteurs.température.salle-à-manger", &l).is_ok());
        let long = "a".repeat(1025);
        assert_eq!(
            validate_subject(&long, &l),
            Err(SubjectError::TooLong {
                len: 1025,
                max: 1024
            })
        );
        let many = vec!["a"; 129].join(".");
        assert_eq!(
            validate_subject(&many, &l),
            Err(SubjectError::TooManyTokens {
                count: 129,
                max: 128
            })
        );
        assert!(validate_subject(&vec!["a"; 128].join("."), &l).is_ok());
    }

    #[test]
    fn pattern_validation() {
        let l = SubjectLimits::default();
        for ok in ["a", "*", ">", "a.*", "a.>", "*.*.>", "a.*.c"] {
            assert!(validate_pattern(ok, &l).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_pattern("a.>.b", &l),
            Err(SubjectError::TailNotLast)
        );
        assert_eq!(
            validate_pattern("a*", &l),
            Err(SubjectError::PartialWildcard { position: 1 })
        );
        assert_eq!(
            validate_pattern("a.b>", &l),
            Err(SubjectError::PartialWildcard { position: 2 })
        );
        assert_eq!(
            validate_pattern("a..*", &l),
            Err(SubjectError::EmptyToken { position: 2 })
        );
    }

    #[test]
    fn newtypes_validate() {
        assert!(Subject::try_from("a.b").is_ok());
        assert!(Subject::try_from("a.*").is_err());
        let p = Pattern::try_from("a.*").unwrap();
        assert!(p.matches("a.b"));
        assert_eq!(p.to_string(), "a.*");
    }
}
