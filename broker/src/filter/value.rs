//! Runtime values, and the rules for comparing them and doing arithmetic on them.
//!
//! Numbers are `i64` while they can be, so that integers compare and add exactly (JSON
//! ids and counters above 2^53 stay exact), and `f64` otherwise. An integer and a float
//! are compared exactly too, not by converting the integer to `f64`. Floats are always
//! finite: literals and header values that would be infinite are refused, and an
//! arithmetic result that is not finite is NULL.

use std::cmp::Ordering;

/// A number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    /// Always finite.
    Float(f64),
}

/// Where a string came from, which decides whether it may stand for a number or a
/// boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Untyped text from the message envelope: a header value, the subject or a subject
    /// token. Compared with a number it is read as one (if it parses), compared with a
    /// boolean it is read as `true`/`false`.
    Text,
    /// A string literal in the filter or a JSON string: it is a string, nothing else.
    Typed,
}

/// The value of an expression for one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(&'a str, Origin),
    /// A JSON object or array: only `IS [NOT] NULL` can look at it.
    Opaque,
}

/// 2^63 as an `f64` (exact): the first float above every `i64`.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// Parses a whole string as a number: `[+-]digits[.digits][(e|E)[+-]digits]`, nothing
/// else (no spaces, no `inf`, no `0x`). Integers that fit are `Int`; anything else that
/// is finite is `Float`.
pub(crate) fn parse_number(s: &str) -> Option<Num> {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_end = digits(i);
    if int_end == i {
        return None;
    }
    i = int_end;
    let mut integral = true;
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
        integral = false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
        integral = false;
    }
    if i != b.len() {
        return None;
    }
    if integral {
        if let Ok(v) = s.parse::<i64>() {
            return Some(Num::Int(v));
        }
    }
    // The grammar above is a subset of what `f64::from_str` accepts.
    let f: f64 = s.parse().ok()?;
    f.is_finite().then_some(Num::Float(f))
}

/// `true`/`false` in any ASCII case.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The value as a condition: a boolean, or envelope text reading `true`/`false`.
pub(crate) fn truth(v: Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(b),
        Val::Str(s, Origin::Text) => parse_bool(s),
        _ => None,
    }
}

/// The value as a number: a number, or envelope text that parses as one.
pub(crate) fn as_num(v: Val<'_>) -> Option<Num> {
    match v {
        Val::Num(n) => Some(n),
        Val::Str(s, Origin::Text) => parse_number(s),
        _ => None,
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    fn test(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o.is_eq(),
            CmpOp::Ne => o.is_ne(),
            CmpOp::Lt => o.is_lt(),
            CmpOp::Le => o.is_le(),
            CmpOp::Gt => o.is_gt(),
            CmpOp::Ge => o.is_ge(),
        }
    }
}

/// `a op b` in three-valued logic: `None` is NULL (unknown).
///
/// * numbers compare as numbers (exactly, see [`cmp_num`]);
/// * strings compare byte by byte (which is also code point order);
/// * envelope text compared with a number is read as a number, compared with a boolean
///   as a boolean; if it does not parse, the comparison is NULL;
/// * booleans support only `=` and `<>`;
/// * anything else (NULL, objects, arrays, a string literal against a number, ...) is
///   NULL.
pub(crate) fn compare(op: CmpOp, a: Val<'_>, b: Val<'_>) -> Option<bool> {
    let equality_only = |equal: bool| match op {
        CmpOp::Eq => Some(equal),
        CmpOp::Ne => Some(!equal),
        _ => None,
    };
    match (a, b) {
        (Val::Bool(x), Val::Bool(y)) => equality_only(x == y),
        (Val::Bool(x), Val::Str(s, Origin::Text)) | (Val::Str(s, Origin::Text), Val::Bool(x)) => {
            equality_only(x == parse_bool(s)?)
        }
        _ => Some(op.test(order(a, b)?)),
    }
}

/// The order of two non-boolean values, if they are comparable.
fn order(a: Val<'_>, b: Val<'_>) -> Option<Ordering> {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => cmp_num(x, y),
        (Val::Str(x, _), Val::Str(y, _)) => Some(x.cmp(y)),
        (Val::Num(x), Val::Str(s, Origin::Text)) => cmp_num(x, parse_number(s)?),
        (Val::Str(s, Origin::Text), Val::Num(y)) => cmp_num(parse_number(s)?, y),
        _ => None,
    }
}

/// Compares two numbers exactly; `None` only if a float is NaN (which cannot happen, as
/// floats are kept finite, but the comparison does not rely on it).
pub(crate) fn cmp_num(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).map(Ordering::reverse),
    }
}

/// `i` against `f` without rounding `i` to the nearest `f64`.
fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    // In range: -2^63 <= whole < 2^63, and integral, so the cast is exact.
    let whole_int = whole as i64;
    Some(match i.cmp(&whole_int) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(f - whole))?,
        o => o,
    })
}

/// `f` as an `i64` if it is one exactly (`-0.0` is `0`).
pub(crate) fn float_as_int(f: f64) -> Option<i64> {
    // The range test keeps the cast exact; NaN fails it.
    (f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f)).then_some(f as i64)
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

/// `a op b`, or `None` (NULL) for a division by zero or a result that is not finite.
///
/// Integers stay integers while the result is exact and fits (on overflow the result
/// is a float); `/` of two integers is an integer only when it divides exactly, so
/// `7 / 2` is `3.5`, not `3`.
pub(crate) fn arith(op: ArithOp, a: Num, b: Num) -> Option<Num> {
    if let (Num::Int(x), Num::Int(y)) = (a, b) {
        let exact = match op {
            ArithOp::Add => x.checked_add(y),
            ArithOp::Sub => x.checked_sub(y),
            ArithOp::Mul => x.checked_mul(y),
            ArithOp::Div => {
                if y == 0 {
                    return None;
                }
                // `checked_*` are `None` only for `i64::MIN / -1`, which the float
                // fallback below gets right.
                match x.checked_rem(y) {
                    Some(0) => x.checked_div(y),
                    _ => None,
                }
            }
            ArithOp::Rem => {
                if y == 0 {
                    return None;
                }
                // `i64::MIN % -1` is 0, and `wrapping_rem` says so instead of overflowing.
                Some(x.wrapping_rem(y))
            }
        };
        if let Some(v) = exact {
            return Some(Num::Int(v));
        }
    }
    let (x, y) = (to_f64(a), to_f64(b));
    if matches!(op, ArithOp::Div | ArithOp::Rem) && y == 0.0 {
        return None;
    }
    let r = match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div => x / y,
        ArithOp::Rem => x % y,
    };
    r.is_finite().then_some(Num::Float(r))
}

/// `-n`; `-i64::MIN` becomes a float.
pub(crate) fn neg(n: Num) -> Num {
    match n {
        Num::Int(i) => i.checked_neg().map_or(Num::Float(-(i as f64)), Num::Int),
        // 2^63 is the literal `9223372036854775808`, too big for an `i64`; negated it is
        // exactly `i64::MIN`, and kept as an integer so `-9223372036854775808` is exact.
        Num::Float(f) if f == TWO_63 => Num::Int(i64::MIN),
        Num::Float(f) => Num::Float(-f),
    }
}

fn to_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(parse_number("42"), Some(Num::Int(42)));
        assert_eq!(parse_number("-42"), Some(Num::Int(-42)));
        assert_eq!(parse_number("+7"), Some(Num::Int(7)));
        assert_eq!(parse_number("1.5"), Some(Num::Float(1.5)));
        assert_eq!(parse_number("1e3"), Some(Num::Float(1000.0)));
        assert_eq!(parse_number("2.5E-1"), Some(Num::Float(0.25)));
        assert_eq!(
            parse_number("9223372036854775808"),
            Some(Num::Float(TWO_63))
        );
        for bad in [
            "", "-", "+", "1.", ".5", "1e", "1e+", " 1", "1 ", "inf", "NaN", "0x10", "1_0",
            "1e999", "--1", "1.2.3",
        ] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn int_float_comparison_is_exact() {
        let big = (1_i64 << 53) + 1;
        // As f64, 2^53 + 1 rounds to 2^53: a naive comparison would call these equal.
        assert_eq!(
            cmp_num(Num::Int(big), Num::Float(9_007_199_254_740_992.0)),
            Some(Ordering::Greater)
        );
        assert_eq!(cmp_num(Num::Int(1), Num::Float(1.0)), Some(Ordering::Equal));
        assert_eq!(cmp_num(Num::Int(1), Num::Float(1.5)), Some(Ordering::Less));
        assert_eq!(
            cmp_num(Num::Int(-1), Num::Float(-1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            cmp_num(Num::Int(i64::MAX), Num::Float(TWO_63)),
            Some(Ordering::Less)
        );
        assert_eq!(
            cmp_num(Num::Int(i64::MIN), Num::Float(-TWO_63)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            cmp_num(Num::Float(-1e300), Num::Int(i64::MIN)),
            Some(Ordering::Less)
        );
    }

    #[test]
    fn arithmetic() {
        use ArithOp::*;
        let (i, f) = (Num::Int, Num::Float);
        assert_eq!(arith(Add, i(2), i(3)), Some(i(5)));
        assert_eq!(arith(Div, i(6), i(3)), Some(i(2)));
        assert_eq!(arith(Div, i(7), i(2)), Some(f(3.5)));
        assert_eq!(arith(Div, i(7), i(0)), None);
        assert_eq!(arith(Div, f(7.0), f(0.0)), None);
        assert_eq!(arith(Rem, i(7), i(0)), None);
        assert_eq!(arith(Rem, i(-7), i(3)), Some(i(-1)));
        assert_eq!(arith(Rem, i(i64::MIN), i(-1)), Some(i(0)));
        assert_eq!(arith(Div, i(i64::MIN), i(-1)), Some(f(TWO_63)));
        assert_eq!(arith(Add, i(i64::MAX), i(1)), Some(f(TWO_63)));
        assert_eq!(arith(Mul, f(1e300), f(1e300)), None);
        assert_eq!(neg(i(i64::MIN)), f(TWO_63));
        assert_eq!(neg(f(TWO_63)), i(i64::MIN));
    }
}
