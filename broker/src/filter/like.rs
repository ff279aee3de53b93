//! `LIKE` patterns, compiled once: `%` is any run of characters (including none), `_`
//! is exactly one character, and an optional escape character makes the next `%`, `_`
//! or escape character literal. Matching is case-sensitive and counts characters
//! (Unicode scalar values), not bytes.
//!
//! The common shapes (`abc`, `abc%`, `%abc`, `%abc%`, `%`) become a plain string test;
//! the rest uses the classic greedy wildcard matcher that remembers only the last `%`,
//! so a match costs O(text × pattern) at worst, never exponential backtracking.

/// Why a pattern does not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternError {
    /// The escape character is the last character.
    DanglingEscape,
    /// The escape character is followed by something other than `%`, `_` or itself.
    BadEscape(char),
}

/// A compiled pattern, with its source kept for printing.
#[derive(Debug, Clone)]
pub(crate) struct LikePattern {
    source: Box<str>,
    escape: Option<char>,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    /// `%`: every string.
    Any,
    General(Box<[Piece]>),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(Box<str>),
    /// `_`
    One,
    /// `%` (consecutive ones merged)
    Many,
}

impl LikePattern {
    pub(crate) fn compile(source: &str, escape: Option<char>) -> Result<Self, PatternError> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            let wildcard = if Some(c) == escape {
                match chars.next() {
                    None => return Err(PatternError::DanglingEscape),
                    Some(n) if n == '%' || n == '_' || Some(n) == escape => {
                        lit.push(n);
                        continue;
                    }
                    Some(n) => return Err(PatternError::BadEscape(n)),
                }
            } else {
                match c {
                    '%' => Piece::Many,
                    '_' => Piece::One,
                    _ => {
                        lit.push(c);
                        continue;
                    }
                }
            };
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
            }
            if !(wildcard == Piece::Many && pieces.last() == Some(&Piece::Many)) {
                pieces.push(wildcard);
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit.into()));
        }
        let shape = match pieces.as_slice() {
            [] => Shape::Exact("".into()),
            [Piece::Lit(s)] => Shape::Exact(s.clone()),
            [Piece::Many] => Shape::Any,
            [Piece::Lit(s), Piece::Many] => Shape::Prefix(s.clone()),
            [Piece::Many, Piece::Lit(s)] => Shape::Suffix(s.clone()),
            [Piece::Many, Piece::Lit(s), Piece::Many] => Shape::Contains(s.clone()),
            _ => Shape::General(pieces.into()),
        };
        Ok(Self {
            source: source.into(),
            escape,
            shape,
        })
    }

    /// The pattern as written (inside the quotes, with `''` already unescaped).
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn escape(&self) -> Option<char> {
        self.escape
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        match &self.shape {
            Shape::Exact(s) => text == &**s,
            Shape::Prefix(s) => text.starts_with(&**s),
            Shape::Suffix(s) => text.ends_with(&**s),
            Shape::Contains(s) => text.contains(&**s),
            Shape::Any => true,
            Shape::General(pieces) => general(pieces, text),
        }
    }
}

/// The greedy matcher. On a mismatch it retries from the last `%` with that `%`
/// swallowing one more character; earlier `%`s never need revisiting, because the last
/// one can absorb anything they could have.
fn general(pieces: &[Piece], text: &str) -> bool {
    let (mut p, mut t) = (0, 0);
    // (piece after the last `%`, text position that `%` currently stops at)
    let mut star: Option<(usize, usize)> = None;
    loop {
        let rest = text.get(t..).unwrap_or_default();
        let step = match pieces.get(p) {
            Some(Piece::Many) => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(Piece::One) => rest.chars().next().map(char::len_utf8),
            Some(Piece::Lit(s)) => rest.starts_with(&**s).then_some(s.len()),
            None if rest.is_empty() => return true,
            None => None,
        };
        if let Some(n) = step {
            p += 1;
            t += n;
            continue;
        }
        // Backtrack: let the last `%` take one more character.
        let Some((sp, st)) = star else {
            return false;
        };
        let Some(c) = text.get(st..).and_then(|s| s.chars().next()) else {
            return false;
        };
        let st = st + c.len_utf8();
        star = Some((sp, st));
        p = sp;
        t = st;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A slow but obviously right matcher over chars: dynamic programming.
    fn oracle(pattern: &str, escape: Option<char>, text: &str) -> bool {
        #[derive(Clone, Copy, PartialEq)]
        enum P {
            C(char),
            One,
            Many,
        }
        let mut ps = Vec::new();
        let mut it = pattern.chars();
        while let Some(c) = it.next() {
            if Some(c) == escape {
                ps.push(P::C(it.next().unwrap()));
            } else if c == '%' {
                ps.push(P::Many);
            } else if c == '_' {
                ps.push(P::One);
            } else {
                ps.push(P::C(c));
            }
        }
        let t: Vec<char> = text.chars().collect();
        // dp[i][j]: ps[i..] matches t[j..]
        let mut dp = vec![vec![false; t.len() + 1]; ps.len() + 1];
        dp[ps.len()][t.len()] = true;
        for i in (0..ps.len()).rev() {
            for j in (0..=t.len()).rev() {
                dp[i][j] = match ps[i] {
                    P::Many => dp[i + 1][j] || (j < t.len() && dp[i][j + 1]),
                    P::One => j < t.len() && dp[i + 1][j + 1],
                    P::C(c) => j < t.len() && t[j] == c && dp[i + 1][j + 1],
                };
            }
        }
        dp[0][0]
    }

    fn like(p: &str, t: &str) -> bool {
        LikePattern::compile(p, Some('!')).unwrap().matches(t)
    }

    #[test]
    fn shapes_and_wildcards() {
        assert!(like("abc", "abc"));
        assert!(!like("abc", "abcd"));
        assert!(like("ab%", "abcd"));
        assert!(like("%cd", "abcd"));
        assert!(like("%bc%", "abcd"));
        assert!(like("%", ""));
        assert!(like("", ""));
        assert!(!like("", "a"));
        assert!(like("a_c", "abc"));
        assert!(like("a_c", "aéc"), "_ is one character, not one byte");
        assert!(!like("a_c", "ac"));
        assert!(like("a%b%c", "aXXbYYc"));
        assert!(like("%a%b%", "xxaxxbxx"));
        assert!(!like("%a%b%", "xxbxxaxx"));
        assert!(like("__", "éé"));
        assert!(like("a%%%b", "ab"));
        assert!(like("%_", "x"));
        assert!(!like("%_", ""));
        assert!(like("%aab", "aaab"));
        assert!(like("100!%", "100%"));
        assert!(!like("100!%", "1000"));
        assert!(like("a!_b", "a_b"));
        assert!(!like("a!_b", "axb"));
        assert!(like("a!!b", "a!b"));
        assert!(like("!%%", "%anything"));
    }

    #[test]
    fn bad_escapes() {
        assert_eq!(
            LikePattern::compile("ab!", Some('!')).unwrap_err(),
            PatternError::DanglingEscape
        );
        assert_eq!(
            LikePattern::compile("a!b", Some('!')).unwrap_err(),
            PatternError::BadEscape('b')
        );
        // Without ESCAPE there is no escape character at all.
        assert!(LikePattern::compile("a\\b", None).is_ok());
    }

    #[test]
    fn no_exponential_backtracking() {
        let pattern = "%a".repeat(30) + "b";
        let text = "a".repeat(4000);
        let p = LikePattern::compile(&pattern, None).unwrap();
        let start = std::time::Instant::now();
        assert!(!p.matches(&text));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn agrees_with_oracle(
            pattern in "[ab%_!é]{0,8}",
            text in "[abé%_!]{0,10}",
        ) {
            // Keep only well-formed patterns (escape followed by a special character).
            if let Ok(p) = LikePattern::compile(&pattern, Some('!')) {
                prop_assert_eq!(p.matches(&text), oracle(&pattern, Some('!'), &text));
            }
            let p = LikePattern::compile(&pattern, None).unwrap();
            prop_assert_eq!(p.matches(&text), oracle(&pattern, None, &text));
        }
    }
}
