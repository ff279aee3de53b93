//! The compiled form of a filter: a tree of enums with everything that can be decided
//! at compile time already decided (literals parsed, `LIKE` patterns compiled, `IN`
//! lists hashed, payload paths split). Its depth is bounded by the parser's nesting
//! limit, and every walk over it (evaluation, printing, dropping) recurses at most that
//! deep.

use std::borrow::Borrow;
use std::fmt::{self, Write as _};
use std::hash::Hash;

use rustc_hash::FxHashSet;

use super::lexer::Seg;
use super::like::LikePattern;
use super::value::{float_as_int, parse_bool, parse_number, ArithOp, CmpOp, Num, Origin, Val};

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Num(Num),
    Str(Box<str>),
}

impl Lit {
    pub(crate) fn val(&self) -> Val<'_> {
        match self {
            Lit::Null => Val::Null,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Num(n) => Val::Num(*n),
            Lit::Str(s) => Val::Str(s, Origin::Typed),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Lit(Lit),
    /// The first value of a header.
    Header(Box<str>),
    /// The whole subject.
    Subject,
    /// One token of the subject, 0-based.
    SubjectToken(usize),
    /// A payload field; an empty path is the whole payload.
    Payload(Box<[Seg]>),
    Neg(Box<Expr>),
    /// `first op1 e1 op2 e2 ...`, folded left to right. One node for a whole chain at
    /// one precedence level keeps the tree shallow: `a + b + ... + z` is depth 2.
    Arith(Box<Expr>, Box<[(ArithOp, Expr)]>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Between {
        negated: bool,
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
    },
    In {
        negated: bool,
        expr: Box<Expr>,
        list: Box<InList>,
    },
    Like {
        negated: bool,
        expr: Box<Expr>,
        pattern: Box<LikePattern>,
    },
    IsNull {
        negated: bool,
        expr: Box<Expr>,
    },
    Not(Box<Expr>),
    /// Flattened like `Arith`, so a long `OR` chain stays shallow.
    And(Box<[Expr]>),
    Or(Box<[Expr]>),
}

impl Expr {
    /// Whether evaluating reads the JSON payload.
    pub(crate) fn reads_payload(&self) -> bool {
        match self {
            Expr::Payload(_) => true,
            Expr::Lit(_) | Expr::Header(_) | Expr::Subject | Expr::SubjectToken(_) => false,
            Expr::Neg(e) | Expr::Not(e) => e.reads_payload(),
            Expr::In { expr, .. } | Expr::Like { expr, .. } | Expr::IsNull { expr, .. } => {
                expr.reads_payload()
            }
            Expr::Arith(first, rest) => {
                first.reads_payload() || rest.iter().any(|(_, e)| e.reads_payload())
            }
            Expr::Cmp(_, a, b) => a.reads_payload() || b.reads_payload(),
            Expr::Between {
                expr, low, high, ..
            } => expr.reads_payload() || low.reads_payload() || high.reads_payload(),
            Expr::And(terms) | Expr::Or(terms) => terms.iter().any(Expr::reads_payload),
        }
    }

    /// `(header, values)` if this is `header = 'v'`, `'v' = header` or
    /// `header IN ('v1', 'v2', ...)` with only string literals (NULL items allowed: they
    /// can only turn a non-match into NULL, which does not match either). Such a
    /// predicate is TRUE exactly when the header's first value is one of `values`.
    pub(crate) fn header_equality(&self) -> Option<(&str, Vec<&str>)> {
        match self {
            Expr::Cmp(CmpOp::Eq, a, b) => match (&**a, &**b) {
                (Expr::Header(h), Expr::Lit(Lit::Str(v)))
                | (Expr::Lit(Lit::Str(v)), Expr::Header(h)) => Some((h, vec![&**v])),
                _ => None,
            },
            Expr::In {
                negated: false,
                expr,
                list,
            } => {
                let Expr::Header(h) = &**expr else {
                    return None;
                };
                let mut values = Vec::new();
                for item in list.items() {
                    match item {
                        Lit::Str(s) => values.push(&**s),
                        Lit::Null => {}
                        _ => return None,
                    }
                }
                values.sort_unstable();
                values.dedup();
                (!values.is_empty()).then_some((&**h, values))
            }
            _ => None,
        }
    }
}

/// A set of literals: a short `Vec` is faster to scan than hashing for a few items.
#[derive(Debug, Clone)]
enum LitSet<K> {
    Few(Vec<K>),
    Many(FxHashSet<K>),
}

/// Above this many items a set is hashed.
const HASH_ABOVE: usize = 8;

impl<K: Hash + Eq> LitSet<K> {
    fn new(mut items: Vec<K>) -> Self {
        if items.len() > HASH_ABOVE {
            LitSet::Many(items.into_iter().collect())
        } else {
            items.shrink_to_fit();
            LitSet::Few(items)
        }
    }

    fn contains<Q: Hash + Eq + ?Sized>(&self, q: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        match self {
            LitSet::Few(v) => v.iter().any(|k| k.borrow() == q),
            LitSet::Many(s) => s.contains(q),
        }
    }
}

/// The literals of an `IN` list, split by type so that a lookup is one hash probe and
/// still gives exactly the result of `x = item1 OR x = item2 OR ...`.
#[derive(Debug, Clone)]
pub(crate) struct InList {
    /// As written, for printing and for the equality index.
    items: Box<[Lit]>,
    strs: LitSet<Box<str>>,
    /// Integers, and floats that are whole numbers in `i64` range (so `1.0` finds `1`).
    ints: LitSet<i64>,
    /// The other floats, sorted.
    floats: Box<[f64]>,
    has_true: bool,
    has_false: bool,
    has_null: bool,
}

impl InList {
    pub(crate) fn new(items: Vec<Lit>) -> Self {
        let (mut strs, mut ints, mut floats) = (Vec::new(), Vec::new(), Vec::new());
        let (mut has_true, mut has_false, mut has_null) = (false, false, false);
        for item in &items {
            match item {
                Lit::Null => has_null = true,
                Lit::Bool(true) => has_true = true,
                Lit::Bool(false) => has_false = true,
                Lit::Str(s) => strs.push(s.clone()),
                Lit::Num(Num::Int(i)) => ints.push(*i),
                Lit::Num(Num::Float(f)) => match float_as_int(*f) {
                    Some(i) => ints.push(i),
                    None => floats.push(*f),
                },
            }
        }
        floats.sort_by(f64::total_cmp);
        floats.dedup();
        Self {
            items: items.into(),
            strs: LitSet::new(strs),
            ints: LitSet::new(ints),
            floats: floats.into(),
            has_true,
            has_false,
            has_null,
        }
    }

    pub(crate) fn items(&self) -> &[Lit] {
        &self.items
    }

    fn has_str(&self) -> bool {
        !matches!(&self.strs, LitSet::Few(v) if v.is_empty())
    }

    fn has_num(&self) -> bool {
        !(matches!(&self.ints, LitSet::Few(v) if v.is_empty()) && self.floats.is_empty())
    }

    fn has_bool(&self) -> bool {
        self.has_true || self.has_false
    }

    fn contains_num(&self, n: Num) -> bool {
        let as_int = match n {
            Num::Int(i) => Some(i),
            Num::Float(f) => float_as_int(f),
        };
        match (as_int, n) {
            (Some(i), _) => self.ints.contains(&i),
            (None, Num::Float(f)) => self.floats.binary_search_by(|x| x.total_cmp(&f)).is_ok(),
            (None, Num::Int(_)) => false,
        }
    }

    fn contains_bool(&self, b: bool) -> bool {
        if b {
            self.has_true
        } else {
            self.has_false
        }
    }

    /// `v IN (items)`: TRUE if some item equals `v`; otherwise NULL if some comparison
    /// was NULL (a NULL item, or an item of a type `v` cannot be compared with), else
    /// FALSE. Same rules as [`super::value::compare`], item by item.
    pub(crate) fn contains(&self, v: Val<'_>) -> Option<bool> {
        let (found, unknown) = match v {
            Val::Null | Val::Opaque => return None,
            Val::Bool(b) => (self.contains_bool(b), self.has_str() || self.has_num()),
            Val::Num(n) => (self.contains_num(n), self.has_str() || self.has_bool()),
            Val::Str(s, Origin::Typed) => {
                (self.strs.contains(s), self.has_num() || self.has_bool())
            }
            Val::Str(s, Origin::Text) => {
                let num = if self.has_num() {
                    parse_number(s)
                } else {
                    None
                };
                let boolean = if self.has_bool() { parse_bool(s) } else { None };
                let found = self.strs.contains(s)
                    || num.is_some_and(|n| self.contains_num(n))
                    || boolean.is_some_and(|b| self.contains_bool(b));
                let unknown =
                    (self.has_num() && num.is_none()) || (self.has_bool() && boolean.is_none());
                (found, unknown)
            }
        };
        if found {
            Some(true)
        } else if unknown || self.has_null {
            None
        } else {
            Some(false)
        }
    }
}

/// Canonical, fully parenthesized source that compiles back to the same tree.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |negated: bool| if negated { "NOT " } else { "" };
        match self {
            Expr::Lit(l) => write_lit(f, l, true),
            Expr::Header(h) => write_quoted(f, h, '"'),
            Expr::Subject => f.write_str("subject"),
            Expr::SubjectToken(i) => write!(f, "subject[{i}]"),
            Expr::Payload(path) => {
                f.write_str("payload")?;
                for seg in path.iter() {
                    match seg {
                        Seg::Key(k) => {
                            f.write_char('.')?;
                            write_quoted(f, k, '"')?;
                        }
                        Seg::Index(i) => write!(f, "[{i}]")?,
                    }
                }
                Ok(())
            }
            Expr::Neg(e) => write!(f, "(-{e})"),
            Expr::Arith(first, rest) => {
                write!(f, "({first}")?;
                for (op, e) in rest.iter() {
                    write!(f, " {} {e}", op.as_str())?;
                }
                f.write_char(')')
            }
            Expr::Cmp(op, a, b) => write!(f, "({a} {} {b})", op.as_str()),
            Expr::Between {
                negated,
                expr,
                low,
                high,
            } => write!(f, "({expr} {}BETWEEN {low} AND {high})", not(*negated)),
            Expr::In {
                negated,
                expr,
                list,
            } => {
                write!(f, "({expr} {}IN (", not(*negated))?;
                for (i, item) in list.items().iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_lit(f, item, false)?;
                }
                f.write_str("))")
            }
            Expr::Like {
                negated,
                expr,
                pattern,
            } => {
                write!(f, "({expr} {}LIKE ", not(*negated))?;
                write_quoted(f, pattern.source(), '\'')?;
                if let Some(c) = pattern.escape() {
                    f.write_str(" ESCAPE ")?;
                    write_quoted(f, c.encode_utf8(&mut [0; 4]), '\'')?;
                }
                f.write_char(')')
            }
            Expr::IsNull { negated, expr } => write!(f, "({expr} IS {}NULL)", not(*negated)),
            Expr::Not(e) => write!(f, "(NOT {e})"),
            Expr::And(terms) | Expr::Or(terms) => {
                let op = if matches!(self, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                f.write_char('(')?;
                for (i, t) in terms.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_char(')')
            }
        }
    }
}

/// `parens`: put a negative number in parentheses (everywhere but in an `IN` list,
/// whose grammar takes `-5` as a literal and nothing else).
fn write_lit(f: &mut fmt::Formatter<'_>, l: &Lit, parens: bool) -> fmt::Result {
    let (open, close) = if parens { ("(", ")") } else { ("", "") };
    match l {
        Lit::Null => f.write_str("NULL"),
        Lit::Bool(true) => f.write_str("TRUE"),
        Lit::Bool(false) => f.write_str("FALSE"),
        // Negative numbers in parentheses: the sign is an operator in the grammar, and
        // `a - -1` or `a--1` (a header name) would not read back the same.
        Lit::Num(Num::Int(i)) if *i < 0 => write!(f, "{open}-{}{close}", i.unsigned_abs()),
        Lit::Num(Num::Int(i)) => write!(f, "{i}"),
        // `{:?}` is the shortest text that parses back to the same `f64`, with an
        // exponent for very large or small values; both forms are valid literals.
        Lit::Num(Num::Float(x)) if x.is_sign_negative() => write!(f, "{open}-{:?}{close}", -x),
        Lit::Num(Num::Float(x)) => write!(f, "{x:?}"),
        Lit::Str(s) => write_quoted(f, s, '\''),
    }
}

fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str, quote: char) -> fmt::Result {
    f.write_char(quote)?;
    for c in s.chars() {
        if c == quote {
            f.write_char(quote)?;
        }
        f.write_char(c)?;
    }
    f.write_char(quote)
}
