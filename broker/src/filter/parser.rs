//! Tokens to a compiled [`Expr`], by precedence climbing. Binding strength, loosest
//! first:
//!
//! ```text
//! OR < AND < NOT < predicates (= <> < IN BETWEEN LIKE IS ...) < + - < * / % < unary -
//! ```
//!
//! Recursion and stack: one function, [`Parser::expr`], recurses, once per operand that
//! nests (a parenthesized expression, the operand of `NOT` or unary minus, the right
//! side of an operator that binds tighter than the one around it). Every such call
//! counts one level against [`FilterLimits::max_depth`] *before* it recurses, so the
//! limit bounds the parser's stack one-to-one and hostile input such as 100,000 `(`
//! fails fast with an error. Chains of one operator (`a OR b OR c`, `a + b + c`) are
//! loops building one flat node, so they do not nest. The tree built is at most a small
//! constant times deeper than the parser went, which bounds evaluation too.
//!
//! A few type errors that can never be right are caught here rather than left to
//! evaluate to NULL forever: a number or string where a condition is needed (`5 AND
//! x`), and a string or condition in arithmetic (`'a' + 1`).

use super::ast::{Expr, InList, Lit};
use super::error::{column, FilterError};
use super::lexer::{lex, Kw, Tok, Token};
use super::like::{LikePattern, PatternError};
use super::value::{neg, ArithOp};
use super::FilterLimits;

/// Compiles `src`, checking every limit.
pub(crate) fn parse(src: &str, limits: &FilterLimits) -> Result<Expr, FilterError> {
    if src.len() > limits.max_len {
        return Err(FilterError {
            column: 1,
            message: format!(
                "the filter is {} bytes long; the limit is {}",
                src.len(),
                limits.max_len
            ),
        });
    }
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        depth: 0,
        limits,
        end: Token {
            tok: Tok::End,
            start: src.len(),
            end: src.len(),
        },
    };
    p.filter()
}

/// Binding strengths. An operator's right operand is parsed at one more than its own
/// (so chains of it are left to the loop); the operands of the prefix operators at
/// their own (so `NOT NOT x` and `- -x` nest).
const OR: u8 = 1;
const AND: u8 = 2;
const NOT: u8 = 3;
const PRED: u8 = 4;
const ADD: u8 = 5;
const MUL: u8 = 6;
const UNARY: u8 = 7;

/// An operator in infix position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Infix {
    Or,
    And,
    /// A comparison, `[NOT] IN`, `[NOT] BETWEEN`, `[NOT] LIKE` or `IS`.
    Pred,
    Add,
    Mul,
    /// `NOT` followed by something other than IN, BETWEEN or LIKE: always an error.
    BadNot,
}

impl Infix {
    fn prec(self) -> u8 {
        match self {
            Infix::Or => OR,
            Infix::And => AND,
            Infix::Pred | Infix::BadNot => PRED,
            Infix::Add => ADD,
            Infix::Mul => MUL,
        }
    }
}

/// What an expression is known to be before evaluation, for the static checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A comparison, a logical operation, TRUE or FALSE.
    Cond,
    /// A number literal or arithmetic.
    Num,
    /// A string literal.
    Str,
    /// The NULL literal: fits anywhere.
    Null,
    /// A header, subject or payload field: its type is known only per message.
    Any,
}

struct Parsed {
    expr: Expr,
    kind: Kind,
    /// Byte offset where the expression starts, for errors about all of it.
    start: usize,
}

/// What the parser needs next, for the "expected ..." message.
#[derive(Clone, Copy)]
struct Want {
    noun: &'static str,
    /// The token this one must follow, if any.
    after: Option<usize>,
}

const CONDITION: &str = "a condition";
const VALUE: &str = "a value";

impl Want {
    fn condition_after(i: usize) -> Self {
        Self {
            noun: CONDITION,
            after: Some(i),
        }
    }

    fn value_after(i: usize) -> Self {
        Self {
            noun: VALUE,
            after: Some(i),
        }
    }
}

struct Parser<'s, 'l> {
    src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    /// Nested calls of `expr` below the top one.
    depth: usize,
    limits: &'l FilterLimits,
    /// Returned by `tok_at` past the end, so no lookup can fail.
    end: Token,
}

impl Parser<'_, '_> {
    fn tok_at(&self, i: usize) -> &Token {
        self.toks.get(i).unwrap_or(&self.end)
    }

    fn peek(&self) -> &Token {
        self.tok_at(self.pos)
    }

    fn at_kw(&self, kw: Kw) -> bool {
        self.peek().tok == Tok::Kw(kw)
    }

    // Error builders are kept out of line: `expr` recurses, and formatting temporaries
    // inlined into it would be paid for in every frame.

    #[cold]
    #[inline(never)]
    fn err_at(&self, i: usize, message: String) -> FilterError {
        FilterError::at(self.src, self.tok_at(i).start, message)
    }

    /// How a token is named in messages: its source text, punctuation quoted,
    /// keywords in capitals, long text cut short. `None` for the end of the filter.
    fn describe(&self, i: usize) -> Option<String> {
        let t = self.tok_at(i);
        let raw = self.src.get(t.start..t.end).unwrap_or_default();
        Some(match &t.tok {
            Tok::End => return None,
            Tok::Kw(_) => raw.to_ascii_uppercase(),
            Tok::Cmp(_) | Tok::Arith(_) | Tok::LParen | Tok::RParen | Tok::Comma => {
                format!("'{raw}'")
            }
            _ if raw.chars().count() > 24 => {
                let cut: String = raw.chars().take(20).collect();
                format!("{cut}...")
            }
            _ => raw.to_owned(),
        })
    }

    /// `message`, then ", found X" naming the current token (nothing at the end).
    #[cold]
    #[inline(never)]
    fn err_found(&self, message: &str) -> FilterError {
        let message = match self.describe(self.pos) {
            Some(found) => format!("{message}, found {found}"),
            None => message.to_owned(),
        };
        self.err_at(self.pos, message)
    }

    #[cold]
    #[inline(never)]
    fn expected(&self, want: Want) -> FilterError {
        let mut message = format!("expected {}", want.noun);
        if let Some(after) = want.after.and_then(|a| self.describe(a)) {
            message.push_str(" after ");
            message.push_str(&after);
        }
        self.err_found(&message)
    }

    #[cold]
    #[inline(never)]
    fn too_deep(&self, opener: usize) -> FilterError {
        self.err_at(
            opener,
            format!(
                "the filter nests too deeply (more than {} levels)",
                self.limits.max_depth
            ),
        )
    }

    fn filter(&mut self) -> Result<Expr, FilterError> {
        if self.peek().tok == Tok::End {
            return Err(self.err_at(self.pos, "the filter is empty: expected a condition".into()));
        }
        let want = Want {
            noun: CONDITION,
            after: None,
        };
        let p = self.level(0, want)?;
        self.condition(&p)?;
        match self.peek().tok {
            Tok::End => Ok(p.expr),
            Tok::RParen => {
                Err(self.err_at(self.pos, "unexpected ')' without a matching '('".into()))
            }
            _ => Err(self
                .err_found("expected AND, OR or the end of the filter after a complete condition")),
        }
    }

    /// Refuses an expression that can never be a condition.
    fn condition(&self, p: &Parsed) -> Result<(), FilterError> {
        let found = match p.kind {
            Kind::Num => "a number",
            Kind::Str => "a string",
            Kind::Cond | Kind::Null | Kind::Any => return Ok(()),
        };
        Err(FilterError::at(
            self.src,
            p.start,
            format!("expected a condition (such as a comparison), found {found}"),
        ))
    }

    /// Refuses an expression that can never be a number, as an operand of `op`.
    fn numeric(&self, kind: Kind, start: usize, op: ArithOp) -> Result<(), FilterError> {
        let found = match kind {
            Kind::Str => "a string",
            Kind::Cond => "a condition",
            Kind::Num | Kind::Null | Kind::Any => return Ok(()),
        };
        Err(FilterError::at(
            self.src,
            start,
            format!("'{}' needs numbers, found {found}", op.as_str()),
        ))
    }

    /// A nested expression binding at least as tightly as `min`, one level deeper than
    /// the caller; `opener` is the token that opened the level (for the depth error).
    fn expr(&mut self, min: u8, want: Want, opener: usize) -> Result<Parsed, FilterError> {
        if self.depth >= self.limits.max_depth {
            return Err(self.too_deep(opener));
        }
        self.depth += 1;
        let p = self.level(min, want);
        self.depth -= 1;
        p
    }

    /// The expression at the current depth: a prefix form, then infix operators that
    /// bind at least as tightly as `min`.
    fn level(&mut self, min: u8, want: Want) -> Result<Parsed, FilterError> {
        let mut left = self.prefix(min, want)?;
        while let Some(op) = self.infix() {
            if op.prec() < min {
                break;
            }
            left = match op {
                Infix::Or => self.chain(left, Kw::Or)?,
                Infix::And => self.chain(left, Kw::And)?,
                Infix::Pred => self.predicate(left)?,
                Infix::Add => self.arith(left, ADD)?,
                Infix::Mul => self.arith(left, MUL)?,
                Infix::BadNot => {
                    self.pos += 1;
                    return Err(self.err_found("expected IN, BETWEEN or LIKE after NOT"));
                }
            };
        }
        Ok(left)
    }

    /// The infix operator at the cursor, if any.
    fn infix(&self) -> Option<Infix> {
        Some(match self.peek().tok {
            Tok::Kw(Kw::Or) => Infix::Or,
            Tok::Kw(Kw::And) => Infix::And,
            Tok::Cmp(_) | Tok::Kw(Kw::In | Kw::Between | Kw::Like | Kw::Is) => Infix::Pred,
            Tok::Kw(Kw::Not) => match self.tok_at(self.pos + 1).tok {
                Tok::Kw(Kw::In | Kw::Between | Kw::Like) => Infix::Pred,
                _ => Infix::BadNot,
            },
            Tok::Arith(ArithOp::Add | ArithOp::Sub) => Infix::Add,
            Tok::Arith(ArithOp::Mul | ArithOp::Div | ArithOp::Rem) => Infix::Mul,
            _ => return None,
        })
    }

    /// `first (kw operand)*`, as one flat node.
    fn chain(&mut self, first: Parsed, kw: Kw) -> Result<Parsed, FilterError> {
        self.condition(&first)?;
        let prec = if kw == Kw::And { AND } else { OR };
        let start = first.start;
        let mut terms = vec![first.expr];
        while self.at_kw(kw) {
            let op = self.pos;
            self.pos += 1;
            let next = self.expr(prec + 1, Want::condition_after(op), op)?;
            self.condition(&next)?;
            terms.push(next.expr);
        }
        let terms = terms.into_boxed_slice();
        let expr = if kw == Kw::And {
            Expr::And(terms)
        } else {
            Expr::Or(terms)
        };
        Ok(Parsed {
            expr,
            kind: Kind::Cond,
            start,
        })
    }

    /// `first (op operand)*` for the arithmetic operators of one precedence, as one
    /// flat node.
    fn arith(&mut self, first: Parsed, prec: u8) -> Result<Parsed, FilterError> {
        let op_here = |p: &Self| match p.peek().tok {
            Tok::Arith(op @ (ArithOp::Add | ArithOp::Sub)) if prec == ADD => Some(op),
            Tok::Arith(op @ (ArithOp::Mul | ArithOp::Div | ArithOp::Rem)) if prec == MUL => {
                Some(op)
            }
            _ => None,
        };
        let start = first.start;
        let first_expr = first.expr;
        let mut rest = Vec::new();
        let mut check = Some(first.kind);
        while let Some(op) = op_here(self) {
            if let Some(kind) = check.take() {
                self.numeric(kind, start, op)?;
            }
            let at = self.pos;
            self.pos += 1;
            let next = self.expr(prec + 1, Want::value_after(at), at)?;
            self.numeric(next.kind, next.start, op)?;
            rest.push((op, next.expr));
        }
        Ok(Parsed {
            expr: Expr::Arith(Box::new(first_expr), rest.into_boxed_slice()),
            kind: Kind::Num,
            start,
        })
    }

    /// The rest of a predicate whose left side is `left`, the cursor on its operator.
    fn predicate(&mut self, left: Parsed) -> Result<Parsed, FilterError> {
        let start = left.start;
        let expr = Box::new(left.expr);
        let negated = self.at_kw(Kw::Not);
        if negated {
            self.pos += 1;
        }
        let op = self.pos;
        self.pos += 1;
        let expr = match self.tok_at(op).tok {
            Tok::Cmp(cmp) => {
                let right = self.expr(ADD, Want::value_after(op), op)?;
                Expr::Cmp(cmp, expr, Box::new(right.expr))
            }
            Tok::Kw(Kw::In) => Expr::In {
                negated,
                expr,
                list: Box::new(self.in_list()?),
            },
            Tok::Kw(Kw::Between) => {
                let low = self.expr(ADD, Want::value_after(op), op)?;
                if !self.at_kw(Kw::And) {
                    return Err(self.err_found(
                        "expected AND between the two bounds of BETWEEN (x BETWEEN low AND high)",
                    ));
                }
                let and = self.pos;
                self.pos += 1;
                let high = self.expr(ADD, Want::value_after(and), and)?;
                Expr::Between {
                    negated,
                    expr,
                    low: Box::new(low.expr),
                    high: Box::new(high.expr),
                }
            }
            Tok::Kw(Kw::Like) => Expr::Like {
                negated,
                expr,
                pattern: Box::new(self.like_pattern()?),
            },
            // IS (the only operator left that `infix` calls a predicate).
            _ => {
                let negated = self.at_kw(Kw::Not);
                if negated {
                    self.pos += 1;
                }
                if !self.at_kw(Kw::Null) {
                    return Err(self.err_found(if negated {
                        "expected NULL after IS NOT"
                    } else {
                        "expected NULL or NOT NULL after IS"
                    }));
                }
                self.pos += 1;
                Expr::IsNull { negated, expr }
            }
        };
        if self.infix() == Some(Infix::Pred) {
            return Err(self.chained());
        }
        Ok(Parsed {
            expr,
            kind: Kind::Cond,
            start,
        })
    }

    #[cold]
    #[inline(never)]
    fn chained(&self) -> FilterError {
        let what = self.describe(self.pos).unwrap_or_default();
        self.err_at(
            self.pos,
            format!(
                "unexpected {what} after a comparison: comparisons do not chain; join them \
                 with AND or OR, or use parentheses"
            ),
        )
    }

    /// `( literal, ... )`, the cursor after `IN`.
    fn in_list(&mut self) -> Result<InList, FilterError> {
        if self.peek().tok != Tok::LParen {
            return Err(self.err_found("expected '(' after IN, as in x IN ('a', 'b')"));
        }
        let open = self.pos;
        self.pos += 1;
        if self.peek().tok == Tok::RParen {
            return Err(self.err_at(self.pos, "an IN list needs at least one value".into()));
        }
        let mut items = Vec::new();
        loop {
            if items.len() == self.limits.max_in_items {
                return Err(self.err_at(
                    self.pos,
                    format!(
                        "the IN list has more than {} items",
                        self.limits.max_in_items
                    ),
                ));
            }
            items.push(self.in_item()?);
            match self.peek().tok {
                Tok::Comma => self.pos += 1,
                Tok::RParen => {
                    self.pos += 1;
                    return Ok(InList::new(items));
                }
                _ => {
                    let col = column(self.src, self.tok_at(open).start);
                    return Err(self.err_found(&format!(
                        "expected ',' or ')' in the IN list that opens at column {col}"
                    )));
                }
            }
        }
    }

    fn in_item(&mut self) -> Result<Lit, FilterError> {
        let minus = self.peek().tok == Tok::Arith(ArithOp::Sub);
        if minus {
            self.pos += 1;
        }
        let lit = match &self.peek().tok {
            Tok::Num(n) if minus => Lit::Num(neg(*n)),
            Tok::Num(n) => Lit::Num(*n),
            Tok::Str(s) if !minus => Lit::Str(s.clone()),
            Tok::Kw(Kw::True) if !minus => Lit::Bool(true),
            Tok::Kw(Kw::False) if !minus => Lit::Bool(false),
            Tok::Kw(Kw::Null) if !minus => Lit::Null,
            _ => {
                return Err(self.err_found(
                    "an IN list holds only literals (strings, numbers, TRUE, FALSE, NULL)",
                ))
            }
        };
        self.pos += 1;
        Ok(lit)
    }

    /// `'pattern' [ESCAPE 'c']`, the cursor after `LIKE`.
    fn like_pattern(&mut self) -> Result<LikePattern, FilterError> {
        let Tok::Str(pattern) = &self.peek().tok else {
            return Err(self.err_found("LIKE needs a string pattern in single quotes"));
        };
        let (pattern, at) = (pattern.clone(), self.pos);
        self.pos += 1;
        let mut escape = None;
        if self.at_kw(Kw::Escape) {
            self.pos += 1;
            let Tok::Str(e) = &self.peek().tok else {
                return Err(self.err_found("ESCAPE needs one character in single quotes"));
            };
            let mut chars = e.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => escape = Some(c),
                _ => return Err(self.err_found("ESCAPE must be exactly one character")),
            }
            self.pos += 1;
        }
        LikePattern::compile(&pattern, escape).map_err(|e| {
            let e_char = escape.unwrap_or_default();
            let message = match e {
                PatternError::DanglingEscape => format!(
                    "the LIKE pattern ends with its escape character '{e_char}', which must be \
                     followed by '%', '_' or '{e_char}'"
                ),
                PatternError::BadEscape(c) => format!(
                    "in the LIKE pattern, the escape character '{e_char}' is followed by \
                     '{c}'; it may only precede '%', '_' or '{e_char}'"
                ),
            };
            self.err_at(at, message)
        })
    }

    /// A literal, a field, a parenthesized expression, or `NOT` / unary minus and their
    /// operand.
    /// `NOT` is accepted only where a condition may start (`a = NOT b` is refused).
    fn prefix(&mut self, min: u8, want: Want) -> Result<Parsed, FilterError> {
        let i = self.pos;
        let start = self.peek().start;
        let (expr, kind) = match &self.peek().tok {
            Tok::Num(n) => (Expr::Lit(Lit::Num(*n)), Kind::Num),
            Tok::Str(s) => (Expr::Lit(Lit::Str(s.clone())), Kind::Str),
            Tok::Kw(Kw::True) => (Expr::Lit(Lit::Bool(true)), Kind::Cond),
            Tok::Kw(Kw::False) => (Expr::Lit(Lit::Bool(false)), Kind::Cond),
            Tok::Kw(Kw::Null) => (Expr::Lit(Lit::Null), Kind::Null),
            Tok::Ident(name) => (Expr::Header(name.clone()), Kind::Any),
            Tok::Subject(None) => (Expr::Subject, Kind::Any),
            Tok::Subject(Some(n)) => (Expr::SubjectToken(*n), Kind::Any),
            Tok::Payload(path) => (Expr::Payload(path.clone()), Kind::Any),
            Tok::Kw(Kw::Not) if min <= NOT => {
                self.pos += 1;
                let p = self.expr(NOT, Want::condition_after(i), i)?;
                self.condition(&p)?;
                return Ok(Parsed {
                    expr: Expr::Not(Box::new(p.expr)),
                    kind: Kind::Cond,
                    start,
                });
            }
            Tok::Arith(ArithOp::Sub) => {
                self.pos += 1;
                let p = self.expr(UNARY, Want::value_after(i), i)?;
                self.numeric(p.kind, p.start, ArithOp::Sub)?;
                let (expr, kind) = match p.expr {
                    // A negative literal is a literal, not an operation per message.
                    Expr::Lit(Lit::Num(n)) => (Expr::Lit(Lit::Num(neg(n))), Kind::Num),
                    Expr::Lit(Lit::Null) => (Expr::Lit(Lit::Null), Kind::Null),
                    e => (Expr::Neg(Box::new(e)), Kind::Num),
                };
                return Ok(Parsed { expr, kind, start });
            }
            Tok::LParen => {
                self.pos += 1;
                let want = Want {
                    noun: want.noun,
                    after: Some(i),
                };
                let inner = self.expr(0, want, i)?;
                if self.peek().tok != Tok::RParen {
                    return Err(self.unclosed(start));
                }
                self.pos += 1;
                return Ok(Parsed { start, ..inner });
            }
            _ => return Err(self.expected(want)),
        };
        self.pos += 1;
        Ok(Parsed { expr, kind, start })
    }

    #[cold]
    #[inline(never)]
    fn unclosed(&self, open: usize) -> FilterError {
        let col = column(self.src, open);
        self.err_found(&format!("expected ')' to close the '(' at column {col}"))
    }
}
