//! Content filters: which messages a subscription or queue binding wants, by what they
//! say rather than where they were published.
//!
//! A filter is an SQL `WHERE`-style boolean expression over a message's headers, subject
//! and JSON payload, such as `region = 'eu' AND payload.temp > 30`. `docs/FILTERS.md` is
//! the user's reference for the language; this module is its implementation.
//!
//! # Design
//!
//! * **Compile once, evaluate per message.** [`Filter::compile`] runs at subscribe/bind
//!   time and refuses a bad filter with a [`FilterError`] naming the column and what was
//!   expected. The compiled tree has literals parsed, `LIKE` patterns compiled, `IN`
//!   lists hashed and payload paths split, so [`Filter::matches`] does no parsing of the
//!   filter and allocates nothing.
//! * **The payload is parsed lazily, once.** A [`MessageView`] parses the payload as
//!   JSON the first time a filter reads a payload field, and every other filter
//!   evaluated on the same view reuses it. Messages whose filters never touch the
//!   payload never pay for it ([`Filter::reads_payload`]).
//! * **Bounded everything.** Filter length, nesting depth and `IN` list size are capped
//!   by [`FilterLimits`]; the parser counts depth before recursing, and evaluation
//!   recurses only as deep as the compiled tree. Nothing here panics on any input.
//! * **Indexable equality.** [`EqualityIndex`] buckets filters of the shape
//!   `header = 'literal'` (and `header IN ('a', 'b')`, and either as a conjunct of a
//!   top-level `AND`) by header value, so 10,000 such subscriptions cost a hash lookup
//!   per message rather than 10,000 evaluations.
//!
//! Pure: no async, no I/O.
//!
//! # Layout
//!
//! ```text
//! lexer.rs   text -> tokens (paths such as payload.a[0] are one token)
//! parser.rs  tokens -> ast::Expr, with the depth and size limits and static checks
//! ast.rs     the compiled tree, IN lists, and a canonical printer
//! like.rs    LIKE pattern compilation and matching
//! value.rs   runtime values; comparison, coercion and arithmetic rules
//! eval.rs    three-valued evaluation of the tree against a MessageView
//! index.rs   EqualityIndex
//! ```

mod ast;
mod error;
mod eval;
mod index;
mod lexer;
mod like;
mod parser;
mod value;

#[cfg(test)]
mod tests;

use std::cell::OnceCell;
use std::fmt;

use tern_codec::Headers;

pub use error::FilterError;
pub use index::EqualityIndex;

/// Limits on what [`Filter::compile`] accepts, so that a subscriber cannot make the
/// broker spend unbounded memory, time or stack on its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Longest filter text, in bytes. Default 4096.
    pub max_len: usize,
    /// Deepest nesting, default 64. A level is a parenthesized expression, the operand
    /// of `NOT` or unary minus, or the right operand of an operator; a chain of one
    /// operator (`a OR b OR c`, `a + b + c`) counts once however long
    /// (`docs/FILTERS.md`, "Limits").
    ///
    /// Each level is one step of the parser's recursion, checked before it is taken:
    /// about 1.5 KiB of stack in an optimized build (6 KiB unoptimized). The default
    /// needs about 100 KiB; keep the limit in the hundreds at most.
    pub max_depth: usize,
    /// Most items in one `IN` list. Default 1024.
    pub max_in_items: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_len: 4096,
            max_depth: 64,
            max_in_items: 1024,
        }
    }
}

/// A compiled filter: parsed once at subscribe/bind time, evaluated per message.
#[derive(Debug, Clone)]
pub struct Filter {
    text: Box<str>,
    root: ast::Expr,
    /// Computed once at compile time: the router asks for every message.
    reads_payload: bool,
}

impl Filter {
    /// Compiles `text`.
    ///
    /// # Errors
    ///
    /// A [`FilterError`] naming the 1-based column and what was expected there, for a
    /// syntax error, a type error that could never evaluate to anything but NULL (such
    /// as `5 AND x` or `'a' + 1`), or a filter over one of `limits`.
    pub fn compile(text: &str, limits: &FilterLimits) -> Result<Filter, FilterError> {
        let root = parser::parse(text, limits)?;
        Ok(Filter {
            text: text.into(),
            reads_payload: root.reads_payload(),
            root,
        })
    }

    /// Whether evaluating needs the JSON payload (so the router parses it only if some
    /// filter does).
    pub fn reads_payload(&self) -> bool {
        self.reads_payload
    }

    /// The source text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the message matches: the filter evaluates to TRUE (not FALSE, not NULL).
    pub fn matches(&self, msg: &MessageView<'_>) -> bool {
        self.evaluate(msg) == Some(true)
    }

    /// The filter's value for `msg` in three-valued logic: `None` is NULL (unknown).
    pub fn evaluate(&self, msg: &MessageView<'_>) -> Option<bool> {
        self.root.truth(msg)
    }

    /// `Some((header, literal))` if the whole filter is `header = 'literal'` or
    /// `'literal' = header`: it matches exactly the messages whose header's first value
    /// is the literal, byte for byte, so it can be looked up in a hash map instead of
    /// evaluated (see [`EqualityIndex`]).
    pub fn header_equality(&self) -> Option<(&str, &str)> {
        if !matches!(self.root, ast::Expr::Cmp(..)) {
            return None;
        }
        let (header, values) = self.root.header_equality()?;
        match values.as_slice() {
            [value] => Some((header, *value)),
            _ => None,
        }
    }

    /// How [`EqualityIndex`] can file this filter: `(header, values, exact)` when the
    /// filter is, or is an `AND` with a conjunct that is, `header = 'v'` or
    /// `header IN ('v1', ...)` with string literals. A message can match only if the
    /// header's first value is one of `values`; `exact` says that is also enough.
    fn index_key(&self) -> Option<(&str, Vec<&str>, bool)> {
        if let Some((header, values)) = self.root.header_equality() {
            return Some((header, values, true));
        }
        let ast::Expr::And(terms) = &self.root else {
            return None;
        };
        let (header, values) = terms.iter().find_map(ast::Expr::header_equality)?;
        Some((header, values, false))
    }

    /// The filter in a canonical, fully parenthesized form that compiles back to the
    /// same filter. Useful in logs and to compare filters written differently.
    pub fn canonical(&self) -> String {
        self.root.to_string()
    }
}

impl fmt::Display for Filter {
    /// The source text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a filter can read of a message. The payload is parsed as JSON at most once per
/// message, lazily, and shared by every filter evaluated on that message.
///
/// Build one per published message and evaluate all candidate filters against it. It
/// is not `Sync` (the lazy parse uses a `OnceCell`): it lives on the routing thread.
pub struct MessageView<'a> {
    subject: &'a str,
    headers: &'a Headers,
    payload: &'a [u8],
    /// `None` inside: the payload is not valid JSON (every payload field is NULL).
    parsed: OnceCell<Option<serde_json::Value>>,
}

impl<'a> MessageView<'a> {
    pub fn new(subject: &'a str, headers: &'a Headers, payload: &'a [u8]) -> Self {
        Self {
            subject,
            headers,
            payload,
            parsed: OnceCell::new(),
        }
    }

    pub fn subject(&self) -> &'a str {
        self.subject
    }

    pub fn headers(&self) -> &'a Headers {
        self.headers
    }

    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The payload parsed as JSON, parsing it on first use; `None` if it is not valid
    /// JSON (including an empty payload).
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.parsed
            .get_or_init(|| serde_json::from_slice(self.payload).ok())
            .as_ref()
    }

    /// Whether the payload has been parsed yet (for tests and metrics).
    pub fn is_payload_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }
}

impl fmt::Debug for MessageView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageView")
            .field("subject", &self.subject)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("payload_parsed", &self.is_payload_parsed())
            .finish()
    }
}
