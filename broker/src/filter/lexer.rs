//! Filter text to tokens.
//!
//! Paths are single tokens: `payload.a.b[0]` and `subject[1]` are read here, without
//! spaces inside, so the parser never sees a `.` or a `[`. Everything the lexer refuses
//! gets its own message (an unterminated string, `==`, `&&`, a `.` after a header
//! name, ...), because these are the mistakes people actually make.

use super::error::FilterError;
use super::value::{parse_number, ArithOp, CmpOp, Num};

/// A reserved word. Keywords are case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kw {
    And,
    Or,
    Not,
    In,
    Between,
    Like,
    Escape,
    Is,
    Null,
    True,
    False,
}

const KEYWORDS: [(&str, Kw); 11] = [
    ("AND", Kw::And),
    ("OR", Kw::Or),
    ("NOT", Kw::Not),
    ("IN", Kw::In),
    ("BETWEEN", Kw::Between),
    ("LIKE", Kw::Like),
    ("ESCAPE", Kw::Escape),
    ("IS", Kw::Is),
    ("NULL", Kw::Null),
    ("TRUE", Kw::True),
    ("FALSE", Kw::False),
];

/// One step of a payload path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// `.name` or `."name"`
    Key(Box<str>),
    /// `[n]`
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A header name, bare or double-quoted.
    Ident(Box<str>),
    Kw(Kw),
    /// A string literal, with `''` already turned into `'`.
    Str(Box<str>),
    /// An unsigned number literal (a sign is a separate `-` token).
    Num(Num),
    /// `subject`, or `subject[n]`.
    Subject(Option<usize>),
    /// `payload` followed by its path (empty for the whole payload).
    Payload(Box<[Seg]>),
    Cmp(CmpOp),
    Arith(ArithOp),
    LParen,
    RParen,
    Comma,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    /// Byte offsets into the source.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// Splits `src` into tokens, ending with one `Tok::End` at `src.len()`.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, FilterError> {
    let mut lx = Lexer { src, pos: 0 };
    let mut out = Vec::new();
    loop {
        while lx.peek().is_some_and(char::is_whitespace) {
            lx.bump();
        }
        let start = lx.pos;
        let Some(c) = lx.peek() else {
            out.push(Token {
                tok: Tok::End,
                start,
                end: start,
            });
            return Ok(out);
        };
        let tok = lx.token(c)?;
        out.push(Token {
            tok,
            start,
            end: lx.pos,
        });
    }
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

struct Lexer<'s> {
    src: &'s str,
    /// Byte offset of the next character; always a char boundary.
    pos: usize,
}

impl<'s> Lexer<'s> {
    fn rest(&self) -> &'s str {
        self.src.get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn err(&self, at: usize, message: impl Into<String>) -> FilterError {
        FilterError::at(self.src, at, message)
    }

    /// Consumes characters while `f` holds and returns them.
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'s str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        self.src.get(start..self.pos).unwrap_or_default()
    }

    fn token(&mut self, c: char) -> Result<Tok, FilterError> {
        let start = self.pos;
        let single = |lx: &mut Self, tok| {
            lx.bump();
            Ok(tok)
        };
        match c {
            '\'' => self.quoted('\'').map(Tok::Str),
            '"' => self.quoted_name(),
            '0'..='9' => self.number(),
            c if is_word_start(c) => self.word(),
            '(' => single(self, Tok::LParen),
            ')' => single(self, Tok::RParen),
            ',' => single(self, Tok::Comma),
            '+' => single(self, Tok::Arith(ArithOp::Add)),
            '-' => single(self, Tok::Arith(ArithOp::Sub)),
            '*' => single(self, Tok::Arith(ArithOp::Mul)),
            '/' => single(self, Tok::Arith(ArithOp::Div)),
            '%' => single(self, Tok::Arith(ArithOp::Rem)),
            '=' if self.peek2() == Some('=') => {
                Err(self.err(start, "use '=' to compare, not '=='"))
            }
            '=' => single(self, Tok::Cmp(CmpOp::Eq)),
            '!' if self.peek2() == Some('=') => {
                self.bump();
                single(self, Tok::Cmp(CmpOp::Ne))
            }
            '!' => Err(self.err(start, "use NOT instead of '!'")),
            '<' => {
                self.bump();
                match self.peek() {
                    Some('>') => single(self, Tok::Cmp(CmpOp::Ne)),
                    Some('=') => single(self, Tok::Cmp(CmpOp::Le)),
                    _ => Ok(Tok::Cmp(CmpOp::Lt)),
                }
            }
            '>' => {
                self.bump();
                match self.peek() {
                    Some('=') => single(self, Tok::Cmp(CmpOp::Ge)),
                    _ => Ok(Tok::Cmp(CmpOp::Gt)),
                }
            }
            '&' => Err(self.err(start, "use AND instead of '&&'")),
            '|' => Err(self.err(start, "use OR instead of '||'")),
            '.' if self.peek2().is_some_and(|c| c.is_ascii_digit()) => Err(self.err(
                start,
                "a number needs a digit before the decimal point, e.g. 0.5",
            )),
            '.' => Err(self.err(
                start,
                "unexpected '.': only payload fields have dotted paths (payload.a.b); \
                 write a header name that contains '.' in double quotes, e.g. \"a.b\"",
            )),
            '[' => Err(self.err(
                start,
                "unexpected '[': an index follows payload fields or subject directly, \
                 without a space, e.g. payload.readings[0] or subject[1]",
            )),
            c => Err(self.err(start, format!("unknown character {c:?}"))),
        }
    }

    /// A `'…'` string or `"…"` name; a doubled quote stands for one. The error points
    /// at the opening quote, which is what the user has to find.
    fn quoted(&mut self, quote: char) -> Result<Box<str>, FilterError> {
        let open = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    let message = if quote == '\'' {
                        "unterminated string: the string that starts here has no closing '"
                    } else {
                        "unterminated quoted name: the name that starts here has no closing \""
                    };
                    return Err(self.err(open, message));
                }
                Some(c) if c == quote => {
                    self.bump();
                    if self.peek() == Some(quote) {
                        self.bump();
                        out.push(quote);
                    } else {
                        return Ok(out.into());
                    }
                }
                Some(c) => {
                    self.bump();
                    out.push(c);
                }
            }
        }
    }

    fn quoted_name(&mut self) -> Result<Tok, FilterError> {
        let open = self.pos;
        let name = self.quoted('"')?;
        if name.is_empty() {
            return Err(self.err(open, "a quoted header name must not be empty"));
        }
        Ok(Tok::Ident(name))
    }

    /// An unsigned number: `digits[.digits][(e|E)[+-]digits]`.
    fn number(&mut self) -> Result<Tok, FilterError> {
        let start = self.pos;
        self.take_while(|c| c.is_ascii_digit());
        if self.peek() == Some('.') {
            self.bump();
            if self.take_while(|c| c.is_ascii_digit()).is_empty() {
                return Err(self.err(start, "expected a digit after the decimal point"));
            }
        }
        if matches!(self.peek(), Some('e' | 'E'))
            && matches!(self.peek2(), Some('0'..='9' | '+' | '-'))
        {
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if self.take_while(|c| c.is_ascii_digit()).is_empty() {
                return Err(self.err(start, "expected a digit in the exponent"));
            }
        }
        if self.peek().is_some_and(is_word_char) {
            self.take_while(is_word_char);
            let text = self.src.get(start..self.pos).unwrap_or_default();
            return Err(self.err(
                start,
                format!("invalid number '{text}': a number must not run into letters"),
            ));
        }
        let text = self.src.get(start..self.pos).unwrap_or_default();
        match parse_number(text) {
            Some(n) => Ok(Tok::Num(n)),
            None => Err(self.err(start, format!("number '{text}' is out of range"))),
        }
    }

    fn word(&mut self) -> Result<Tok, FilterError> {
        let word = self.take_while(is_word_char);
        if word.eq_ignore_ascii_case("subject") {
            return self.subject();
        }
        if word.eq_ignore_ascii_case("payload") {
            return self.payload();
        }
        for (name, kw) in KEYWORDS {
            if word.eq_ignore_ascii_case(name) {
                return Ok(Tok::Kw(kw));
            }
        }
        Ok(Tok::Ident(word.into()))
    }

    fn subject(&mut self) -> Result<Tok, FilterError> {
        match self.peek() {
            Some('[') => Ok(Tok::Subject(Some(self.index()?))),
            Some('.') => Err(self.err(
                self.pos,
                "subject has no fields: write subject[n] for its n-th token, counting from 0",
            )),
            _ => Ok(Tok::Subject(None)),
        }
    }

    fn payload(&mut self) -> Result<Tok, FilterError> {
        let mut path = Vec::new();
        loop {
            match self.peek() {
                Some('[') => path.push(Seg::Index(self.index()?)),
                Some('.') => {
                    self.bump();
                    let key: Box<str> = if self.peek() == Some('"') {
                        self.quoted('"')?
                    } else {
                        self.take_while(is_word_char).into()
                    };
                    if key.is_empty() {
                        return Err(self.err(
                            self.pos,
                            "expected a field name after '.' (write other names in double \
                             quotes, e.g. payload.\"a b\")",
                        ));
                    }
                    path.push(Seg::Key(key));
                }
                _ => return Ok(Tok::Payload(path.into())),
            }
        }
    }

    /// `[digits]`, the cursor on the `[`.
    fn index(&mut self) -> Result<usize, FilterError> {
        self.bump();
        let at = self.pos;
        let digits = self.take_while(|c| c.is_ascii_digit());
        if digits.is_empty() {
            return Err(self.err(
                at,
                "expected an index after '[': a whole number counting from 0",
            ));
        }
        let Ok(n) = digits.parse::<usize>() else {
            return Err(self.err(at, "the index is too large"));
        };
        if self.peek() != Some(']') {
            return Err(self.err(self.pos, "expected ']' after the index"));
        }
        self.bump();
        Ok(n)
    }
}
