//! The one error a filter can have: it did not compile.

/// Why a filter was refused, and where.
///
/// Shown to users as is (the CLI prints it, the broker sends it back in an error frame),
/// so every message says what was expected and, when there is one, what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter error at column {column}: {message}")]
pub struct FilterError {
    /// 1-based column, counted in characters (not bytes), of the token the error is
    /// about; one past the last character when the filter ended too early.
    pub column: usize,
    /// What was expected, and what was found instead.
    pub message: String,
}

impl FilterError {
    /// An error about the character at byte offset `at` of `src`.
    pub(crate) fn at(src: &str, at: usize, message: impl Into<String>) -> Self {
        Self {
            column: column(src, at),
            message: message.into(),
        }
    }
}

/// The 1-based character column of byte offset `at` in `src`.
pub(crate) fn column(src: &str, at: usize) -> usize {
    // `at` is always a char boundary (the lexer only records those); should it not be,
    // counting the bytes is still a usable position, and nothing panics.
    src.get(..at).map_or(at, |s| s.chars().count()) + 1
}
