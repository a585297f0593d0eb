//! The arithmetic of `$eval(…)`: what IceProd's safe evaluator accepts of Python — integers
//! and floats; `+ - * / // % **`, `^` (xor) and `~` on integers; unary `+ -`; parentheses —
//! with Python's precedence and results (`/` always gives a float, `//` and `%` round toward
//! minus infinity, `-2**2` is -4).
//!
//! Python integers never overflow; these are 128-bit, and a result that does not fit is an
//! error rather than a wrong number or a hang (`10**10**10` fails at once). Nesting deeper than
//! [`MAX_NESTING`] is refused so hostile input cannot overflow the stack.

use crate::dataset::error::ExprError;
use crate::dataset::pyfmt::float_repr;

/// Deepest nesting of parentheses and unary operators accepted.
const MAX_NESTING: usize = 100;

/// A number as Python keeps it: an integer or a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// How IceProd prints the result: Python's `str()`.
    pub fn to_py_string(self) -> String {
        match self {
            Num::Int(i) => i.to_string(),
            Num::Float(f) => float_repr(f),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Evaluates `text` as arithmetic.
pub fn eval(text: &str) -> Result<Num, ExprError> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        nesting: 0,
    };
    let value = p.xor()?;
    match p.tokens.get(p.pos) {
        None => Ok(value),
        Some(t) => Err(syntax(format!("unexpected `{t}`"))),
    }
}

fn syntax(message: impl Into<String>) -> ExprError {
    ExprError::Arithmetic {
        message: message.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Token {
    Num(Num),
    Plus,
    Minus,
    Star,
    Slash,
    SlashSlash,
    Percent,
    StarStar,
    Caret,
    Tilde,
    Open,
    Close,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Token::Num(n) => return f.write_str(&n.to_py_string()),
            Token::Plus => "+",
            Token::Minus => "-",
            Token::Star => "*",
            Token::Slash => "/",
            Token::SlashSlash => "//",
            Token::Percent => "%",
            Token::StarStar => "**",
            Token::Caret => "^",
            Token::Tilde => "~",
            Token::Open => "(",
            Token::Close => ")",
        };
        f.write_str(s)
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, ExprError> {
    let b = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let two = b.get(i + 1).copied();
        let (token, len) = match b[i] {
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'0'..=b'9' | b'.' => {
                let (n, len) = number(&text[i..])?;
                (Token::Num(n), len)
            }
            b'+' => (Token::Plus, 1),
            b'-' => (Token::Minus, 1),
            b'*' if two == Some(b'*') => (Token::StarStar, 2),
            b'*' => (Token::Star, 1),
            b'/' if two == Some(b'/') => (Token::SlashSlash, 2),
            b'/' => (Token::Slash, 1),
            b'%' => (Token::Percent, 1),
            b'^' => (Token::Caret, 1),
            b'~' => (Token::Tilde, 1),
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            _ => {
                let c = text[i..].chars().next().unwrap_or('?');
                return Err(syntax(format!(
                    "`{c}` is not arithmetic (numbers, + - * / // % ** and parentheses)"
                )));
            }
        };
        tokens.push(token);
        i += len;
    }
    Ok(tokens)
}

/// Reads a Python number literal at the start of `s`: `12`, `0x1f`, `0o17`, `0b101`, `1.5`,
/// `.5`, `5.`, `1e3`.
fn number(s: &str) -> Result<(Num, usize), ExprError> {
    let b = s.as_bytes();
    if b.len() > 1 && b[0] == b'0' && matches!(b[1], b'x' | b'X' | b'o' | b'O' | b'b' | b'B') {
        let radix = match b[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            _ => 2,
        };
        let end = 2 + s[2..]
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        return i128::from_str_radix(&s[2..end], radix)
            .map(|n| (Num::Int(n), end))
            .map_err(|_| syntax(format!("`{}` is not a number", &s[..end])));
    }
    let mut end = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut is_float = false;
    if b.get(end) == Some(&b'.') {
        is_float = true;
        end += 1;
        end += b[end..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut j = end + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            is_float = true;
            end = j + digits;
        }
    }
    let literal = &s[..end];
    if literal == "." {
        return Err(syntax("`.` is not a number"));
    }
    // A letter glued to a number (`12abc`) is a syntax error in Python too.
    if b.get(end)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        return Err(syntax(format!("`{literal}…` is not a number")));
    }
    if is_float {
        let f: f64 = literal
            .parse()
            .map_err(|_| syntax(format!("`{literal}` is not a number")))?;
        return Ok((Num::Float(f), end));
    }
    if literal.len() > 1 && literal.starts_with('0') && literal.bytes().any(|c| c != b'0') {
        return Err(syntax(format!(
            "`{literal}`: leading zeros are not allowed in Python integers"
        )));
    }
    match literal.parse::<i128>() {
        Ok(n) => Ok((Num::Int(n), end)),
        Err(_) => Err(ExprError::Overflow),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    nesting: usize,
}

impl Parser {
    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.pos).copied()
    }

    fn eat(&mut self, t: Token) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(syntax(format!("nested more than {MAX_NESTING} deep")));
        }
        Ok(())
    }

    /// `a ^ b`: lowest precedence of what is supported.
    fn xor(&mut self) -> Result<Num, ExprError> {
        let mut left = self.sum()?;
        while self.eat(Token::Caret) {
            let right = self.sum()?;
            left = Num::Int(int_operand(left, "^")? ^ int_operand(right, "^")?);
        }
        Ok(left)
    }

    fn sum(&mut self) -> Result<Num, ExprError> {
        let mut left = self.term()?;
        loop {
            if self.eat(Token::Plus) {
                let right = self.term()?;
                left = int_or_float(left, right, i128::checked_add, |a, b| a + b)?;
            } else if self.eat(Token::Minus) {
                let right = self.term()?;
                left = int_or_float(left, right, i128::checked_sub, |a, b| a - b)?;
            } else {
                return Ok(left);
            }
        }
    }

    fn term(&mut self) -> Result<Num, ExprError> {
        let mut left = self.factor()?;
        loop {
            let op = match self.peek() {
                Some(t @ (Token::Star | Token::Slash | Token::SlashSlash | Token::Percent)) => t,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.factor()?;
            left = match op {
                Token::Star => int_or_float(left, right, i128::checked_mul, |a, b| a * b)?,
                Token::Slash => true_div(left, right)?,
                Token::SlashSlash => floor_div(left, right)?,
                _ => modulo(left, right)?,
            };
        }
    }

    /// Unary `+ - ~`, which bind looser than `**` on their right (`-2**2` is -4).
    fn factor(&mut self) -> Result<Num, ExprError> {
        let op = match self.peek() {
            Some(t @ (Token::Plus | Token::Minus | Token::Tilde)) => t,
            _ => return self.power(),
        };
        self.pos += 1;
        self.enter()?;
        let operand = self.factor()?;
        self.nesting -= 1;
        match op {
            Token::Plus => Ok(operand),
            Token::Minus => match operand {
                Num::Int(i) => i.checked_neg().map(Num::Int).ok_or(ExprError::Overflow),
                Num::Float(f) => Ok(Num::Float(-f)),
            },
            _ => Ok(Num::Int(!int_operand(operand, "~")?)),
        }
    }

    /// `a ** b`, right-associative; the exponent may carry a unary sign (`2**-1`).
    fn power(&mut self) -> Result<Num, ExprError> {
        let base = self.atom()?;
        if !self.eat(Token::StarStar) {
            return Ok(base);
        }
        self.enter()?;
        let exponent = self.factor()?;
        self.nesting -= 1;
        pow(base, exponent)
    }

    fn atom(&mut self) -> Result<Num, ExprError> {
        match self.peek() {
            Some(Token::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(Token::Open) => {
                self.pos += 1;
                self.enter()?;
                let inner = self.xor()?;
                self.nesting -= 1;
                if !self.eat(Token::Close) {
                    return Err(syntax("a `(` is never closed"));
                }
                Ok(inner)
            }
            Some(t) => Err(syntax(format!("unexpected `{t}`"))),
            None => Err(syntax("the expression ends too early")),
        }
    }
}

fn int_operand(n: Num, op: &str) -> Result<i128, ExprError> {
    match n {
        Num::Int(i) => Ok(i),
        Num::Float(_) => Err(syntax(format!("`{op}` needs integers"))),
    }
}

/// Integers stay integers (an overflow is an error); a float on either side makes a float.
fn int_or_float(
    a: Num,
    b: Num,
    int_op: fn(i128, i128) -> Option<i128>,
    float_op: fn(f64, f64) -> f64,
) -> Result<Num, ExprError> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => int_op(x, y).map(Num::Int).ok_or(ExprError::Overflow),
        _ => Ok(Num::Float(float_op(a.as_f64(), b.as_f64()))),
    }
}

fn true_div(a: Num, b: Num) -> Result<Num, ExprError> {
    if b.as_f64() == 0.0 {
        return Err(ExprError::DivisionByZero);
    }
    Ok(Num::Float(a.as_f64() / b.as_f64()))
}

fn floor_div(a: Num, b: Num) -> Result<Num, ExprError> {
    match (a, b) {
        (Num::Int(_), Num::Int(0)) => Err(ExprError::DivisionByZero),
        (Num::Int(x), Num::Int(y)) => {
            let q = x.checked_div(y).ok_or(ExprError::Overflow)?;
            // Rust truncates toward zero; Python floors.
            let floored = if x % y != 0 && ((x < 0) != (y < 0)) {
                q - 1
            } else {
                q
            };
            Ok(Num::Int(floored))
        }
        _ => {
            let (x, y) = (a.as_f64(), b.as_f64());
            if y == 0.0 {
                return Err(ExprError::DivisionByZero);
            }
            Ok(Num::Float(py_float_divmod(x, y).0))
        }
    }
}

fn modulo(a: Num, b: Num) -> Result<Num, ExprError> {
    match (a, b) {
        (Num::Int(_), Num::Int(0)) => Err(ExprError::DivisionByZero),
        (Num::Int(x), Num::Int(y)) => {
            // i128::MIN % -1 overflows in Rust; mathematically (and in Python) it is 0.
            let r = x.checked_rem(y).unwrap_or(0);
            Ok(Num::Int(if r != 0 && ((r < 0) != (y < 0)) {
                r + y
            } else {
                r
            }))
        }
        _ => {
            let (x, y) = (a.as_f64(), b.as_f64());
            if y == 0.0 {
                return Err(ExprError::DivisionByZero);
            }
            Ok(Num::Float(py_float_divmod(x, y).1))
        }
    }
}

/// Python's float `divmod`: the remainder takes the divisor's sign.
fn py_float_divmod(x: f64, y: f64) -> (f64, f64) {
    let mut m = x % y;
    let mut div = (x - m) / y;
    if m != 0.0 {
        if (y < 0.0) != (m < 0.0) {
            m += y;
            div -= 1.0;
        }
    } else {
        m = 0.0_f64.copysign(y);
    }
    let floordiv = if div != 0.0 {
        let mut f = div.floor();
        if div - f > 0.5 {
            f += 1.0;
        }
        f
    } else {
        0.0_f64.copysign(x / y)
    };
    (floordiv, m)
}

fn pow(base: Num, exponent: Num) -> Result<Num, ExprError> {
    match (base, exponent) {
        (Num::Int(b), Num::Int(e)) if e >= 0 => match b {
            0 => Ok(Num::Int(if e == 0 { 1 } else { 0 })),
            1 => Ok(Num::Int(1)),
            -1 => Ok(Num::Int(if e % 2 == 0 { 1 } else { -1 })),
            _ => {
                // |b| >= 2, so an exponent of 128 or more cannot fit; checking first keeps
                // `10**10**10` from doing any work.
                let e = u32::try_from(e)
                    .ok()
                    .filter(|e| *e < 128)
                    .ok_or(ExprError::Overflow)?;
                b.checked_pow(e).map(Num::Int).ok_or(ExprError::Overflow)
            }
        },
        _ => {
            let (b, e) = (base.as_f64(), exponent.as_f64());
            if b == 0.0 && e < 0.0 {
                return Err(ExprError::DivisionByZero);
            }
            if b < 0.0 && e.fract() != 0.0 && e.is_finite() {
                return Err(syntax("a negative number to a fractional power is complex"));
            }
            let r = b.powf(e);
            if r.is_infinite() && b.is_finite() && e.is_finite() {
                return Err(ExprError::Overflow);
            }
            Ok(Num::Float(r))
        }
    }
}
