//! Evaluating a compiled expression against one message, in SQL's three-valued logic:
//! `Option<bool>` with `None` for NULL (unknown).

use serde_json::Value as Json;

use super::ast::Expr;
use super::lexer::Seg;
use super::value::{self, arith, as_num, compare, neg, truth, CmpOp, Origin, Val};
use super::MessageView;

impl Expr {
    /// The expression as a condition.
    pub(crate) fn truth(&self, msg: &MessageView<'_>) -> Option<bool> {
        match self {
            Expr::Not(e) => e.truth(msg).map(|b| !b),
            Expr::And(terms) => {
                // FALSE wins over NULL, so keep going past a NULL looking for a FALSE.
                let mut unknown = false;
                for t in terms.iter() {
                    match t.truth(msg) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(true)
                }
            }
            Expr::Or(terms) => {
                let mut unknown = false;
                for t in terms.iter() {
                    match t.truth(msg) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(false)
                }
            }
            Expr::Cmp(op, a, b) => compare(*op, a.value(msg), b.value(msg)),
            Expr::Between {
                negated,
                expr,
                low,
                high,
            } => {
                let v = expr.value(msg);
                let above = compare(CmpOp::Ge, v, low.value(msg));
                // Same as `v >= low AND v <= high`, including NULL AND FALSE = FALSE.
                let r = match above {
                    Some(false) => Some(false),
                    _ => match compare(CmpOp::Le, v, high.value(msg)) {
                        Some(false) => Some(false),
                        Some(true) => above,
                        None => None,
                    },
                };
                r.map(|b| b != *negated)
            }
            Expr::In {
                negated,
                expr,
                list,
            } => list.contains(expr.value(msg)).map(|b| b != *negated),
            Expr::Like {
                negated,
                expr,
                pattern,
            } => match expr.value(msg) {
                Val::Str(s, _) => Some(pattern.matches(s) != *negated),
                _ => None,
            },
            Expr::IsNull { negated, expr } => {
                Some(matches!(expr.value(msg), Val::Null) != *negated)
            }
            Expr::Lit(_)
            | Expr::Header(_)
            | Expr::Subject
            | Expr::SubjectToken(_)
            | Expr::Payload(_)
            | Expr::Neg(_)
            | Expr::Arith(..) => truth(self.value(msg)),
        }
    }

    /// The expression as a value. Borrowed strings come from the filter or the message.
    pub(crate) fn value<'a>(&'a self, msg: &'a MessageView<'_>) -> Val<'a> {
        match self {
            Expr::Lit(l) => l.val(),
            Expr::Header(name) => msg
                .headers
                .get(name)
                .map_or(Val::Null, |v| Val::Str(v, Origin::Text)),
            Expr::Subject => Val::Str(msg.subject, Origin::Text),
            Expr::SubjectToken(i) => msg
                .subject
                .split('.')
                .nth(*i)
                .map_or(Val::Null, |t| Val::Str(t, Origin::Text)),
            Expr::Payload(path) => msg
                .json()
                .and_then(|root| walk(root, path))
                .map_or(Val::Null, json_val),
            Expr::Neg(e) => as_num(e.value(msg)).map_or(Val::Null, |n| Val::Num(neg(n))),
            Expr::Arith(first, rest) => {
                let Some(mut acc) = as_num(first.value(msg)) else {
                    return Val::Null;
                };
                for (op, e) in rest.iter() {
                    let Some(n) = as_num(e.value(msg)).and_then(|n| arith(*op, acc, n)) else {
                        return Val::Null;
                    };
                    acc = n;
                }
                Val::Num(acc)
            }
            Expr::Cmp(..)
            | Expr::Between { .. }
            | Expr::In { .. }
            | Expr::Like { .. }
            | Expr::IsNull { .. }
            | Expr::Not(_)
            | Expr::And(_)
            | Expr::Or(_) => self.truth(msg).map_or(Val::Null, Val::Bool),
        }
    }
}

fn walk<'j>(mut v: &'j Json, path: &[Seg]) -> Option<&'j Json> {
    for seg in path {
        v = match (seg, v) {
            (Seg::Key(k), Json::Object(m)) => m.get(&**k)?,
            (Seg::Index(i), Json::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn json_val(v: &Json) -> Val<'_> {
    match v {
        Json::Null => Val::Null,
        Json::Bool(b) => Val::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Val::Num(value::Num::Int(i)),
            // u64 above i64::MAX, or a float: serde_json keeps them finite.
            None => n
                .as_f64()
                .map_or(Val::Null, |f| Val::Num(value::Num::Float(f))),
        },
        Json::String(s) => Val::Str(s, Origin::Typed),
        Json::Array(_) | Json::Object(_) => Val::Opaque,
    }
}
