//! Python's ways of writing values, which IceProd's expressions inherit: `str()` of a number
//! (`2.0`, `1e+16`, `True`), `json.dumps` of a list (`[1, 2]`), and `%`-formatting for
//! `$sprintf`. Byte-for-byte agreement with an IceProd worker is the point, so the rules here
//! follow Python, not Rust.

use serde_json::Value;

use crate::dataset::error::ExprError;

/// Python's `repr(float)`: the shortest digits that read back to the same number, positional
/// for exponents from -4 to 15, else scientific with a signed two-digit exponent.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = shortest_sci(x.abs());
    let (mantissa, exp) = split_sci(&sci);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let point = exp as usize + 1;
            if digits.len() <= point {
                format!("{digits}{}.0", "0".repeat(point - digits.len()))
            } else {
                format!("{}.{}", &digits[..point], &digits[point..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        format!("{sign}{mantissa}e{}", exp_suffix(exp))
    }
}

/// The shortest digits that read back to `x`, in `{:e}` form. Where two strings of that length
/// both read back, Python takes the one nearest `x` (ties to even); Rust's shortest form may
/// take the other, so the correctly rounded string of the same length is preferred.
fn shortest_sci(x: f64) -> String {
    let shortest = format!("{x:e}");
    let digits = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.bytes().filter(u8::is_ascii_digit).count());
    let nearest = format!("{:.*e}", digits.saturating_sub(1), x);
    if nearest.parse::<f64>() == Ok(x) {
        nearest
    } else {
        shortest
    }
}

/// Splits Rust's `{:e}` output (`1.5e-7`) into mantissa and exponent.
fn split_sci(s: &str) -> (&str, i32) {
    match s.split_once('e') {
        Some((m, e)) => (m, e.parse().unwrap_or(0)),
        None => (s, 0),
    }
}

/// Python's exponent: sign always, at least two digits (`+16`, `-05`).
fn exp_suffix(exp: i32) -> String {
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{:02}", exp.unsigned_abs())
}

/// Python's `str()` of a JSON value as IceProd prints an expression's result: strings as they
/// are, numbers as Python writes them, booleans `True`/`False`, lists and objects as
/// `json.dumps`.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => number_str(n),
        Value::Array(_) | Value::Object(_) => json_dumps(value),
    }
}

fn number_str(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        float_repr(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Python's `json.dumps` with its defaults: `, ` and `: ` separators, non-ASCII escaped.
/// (Object keys come out sorted: the config's maps do not keep the author's order.)
pub fn json_dumps(value: &Value) -> String {
    let mut out = String::new();
    dump_into(value, &mut out);
    out
}

fn dump_into(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number_str(n)),
        Value::String(s) => dump_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_into(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_str(k, out);
                out.push_str(": ");
                dump_into(v, out);
            }
            out.push('}');
        }
    }
}

fn dump_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---- $sprintf ----

const SPRINTF: &str = "sprintf";

fn bad(message: impl Into<String>) -> ExprError {
    ExprError::BadArgument {
        function: SPRINTF,
        message: message.into(),
    }
}

/// `$sprintf(fmt,arg,…)` as IceProd does it: the format is the text between the first quote
/// and the next same quote (or, unquoted, up to the first comma); the arguments are the pieces
/// between the following commas, untrimmed. Arguments beyond the format's conversions are
/// ignored, as IceProd ignores them.
pub fn sprintf(param: &str) -> Result<String, ExprError> {
    let (fmt, rest) = split_format(param)?;
    let args: Vec<&str> = match rest.find(',') {
        Some(i) => rest[i + 1..].split(',').collect(),
        None => Vec::new(),
    };
    let specs = parse_format(fmt)?;
    if !specs.iter().any(|p| matches!(p, Piece::Spec(_))) {
        // IceProd formats only when it finds a conversion; else the text comes back as
        // written, `%%` included.
        return Ok(fmt.to_string());
    }
    let mut out = String::new();
    let mut next_arg = args.iter();
    for piece in &specs {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Spec(spec) => {
                let arg = next_arg
                    .next()
                    .ok_or_else(|| bad("not enough arguments for the format string"))?;
                out.push_str(&spec.format(arg)?);
            }
        }
    }
    Ok(out)
}

fn split_format(param: &str) -> Result<(&str, &str), ExprError> {
    match param.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let close = param[1..]
                .find(q)
                .ok_or_else(|| bad("the format string has no closing quote"))?;
            Ok((&param[1..1 + close], &param[close + 2..]))
        }
        Some(_) => {
            let comma = param
                .find(',')
                .ok_or_else(|| bad("cannot find the end of the format string (a comma)"))?;
            Ok((&param[..comma], &param[comma..]))
        }
        None => Err(bad("no format string")),
    }
}

enum Piece<'a> {
    Text(&'a str),
    Spec(Spec),
}

#[derive(Default)]
struct Spec {
    left: bool,
    zero: bool,
    plus: bool,
    space: bool,
    alt: bool,
    width: usize,
    precision: Option<usize>,
    conv: char,
}

/// Width and precision above this are refused rather than padding gigabytes.
const MAX_WIDTH: usize = 10_000;

fn parse_format(fmt: &str) -> Result<Vec<Piece<'_>>, ExprError> {
    let mut pieces = Vec::new();
    let mut rest = fmt;
    while let Some(pct) = rest.find('%') {
        if pct > 0 {
            pieces.push(Piece::Text(&rest[..pct]));
        }
        let bytes = rest.as_bytes();
        let mut i = pct + 1;
        if bytes.get(i) == Some(&b'%') {
            pieces.push(Piece::Text("%"));
            rest = &rest[i + 1..];
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&b) = bytes.get(i) {
            match b {
                b'-' => spec.left = true,
                b'0' => spec.zero = true,
                b'+' => spec.plus = true,
                b' ' => spec.space = true,
                b'#' => spec.alt = true,
                _ => break,
            }
            i += 1;
        }
        let (width, after) = read_number(bytes, i)?;
        spec.width = width.unwrap_or(0);
        i = after;
        if bytes.get(i) == Some(&b'.') {
            let (precision, after) = read_number(bytes, i + 1)?;
            spec.precision = Some(precision.unwrap_or(0));
            i = after;
        }
        let conv = rest[i..]
            .chars()
            .next()
            .ok_or_else(|| bad("the format string ends inside a conversion"))?;
        if !"diusfFeEgGxXoc".contains(conv) {
            return Err(bad(format!("unsupported format character `{conv}`")));
        }
        spec.conv = conv;
        pieces.push(Piece::Spec(spec));
        rest = &rest[i + conv.len_utf8()..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

fn read_number(bytes: &[u8], start: usize) -> Result<(Option<usize>, usize), ExprError> {
    let mut i = start;
    let mut n: usize = 0;
    while let Some(d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        n = n * 10 + usize::from(d - b'0');
        if n > MAX_WIDTH {
            return Err(bad(format!("a width or precision above {MAX_WIDTH}")));
        }
        i += 1;
    }
    Ok(((i > start).then_some(n), i))
}

impl Spec {
    /// Casts `arg` the way IceProd does for this conversion, then formats it as Python would.
    fn format(&self, arg: &str) -> Result<String, ExprError> {
        match self.conv {
            's' => {
                let s = unquote(arg)?;
                let s: String = match self.precision {
                    Some(p) => s.chars().take(p).collect(),
                    None => s.to_string(),
                };
                Ok(self.pad(String::new(), s, false))
            }
            'c' => {
                let s = unquote(arg)?;
                if s.chars().count() != 1 {
                    return Err(bad(format!("%c needs one character, got `{s}`")));
                }
                Ok(self.pad(String::new(), s.to_string(), false))
            }
            'x' | 'X' | 'o' => {
                let n = parse_py_int(arg)?;
                let (prefix, digits) = match self.conv {
                    'x' => ("0x", format!("{:x}", n.unsigned_abs())),
                    'X' => ("0X", format!("{:X}", n.unsigned_abs())),
                    _ => ("0o", format!("{:o}", n.unsigned_abs())),
                };
                let digits = self.min_digits(digits);
                let mut sign = self.sign(n < 0);
                if self.alt {
                    sign.push_str(prefix);
                }
                Ok(self.pad(sign, digits, true))
            }
            'd' | 'i' | 'u' => {
                let x = parse_py_float(arg)?;
                if !x.is_finite() {
                    return Err(bad(format!("cannot write `{}` as an integer", arg.trim())));
                }
                // Python's %d truncates a float toward zero.
                let t = x.trunc();
                if t.abs() >= 1e38 {
                    return Err(ExprError::Overflow);
                }
                let n = t as i128;
                let digits = self.min_digits(n.unsigned_abs().to_string());
                Ok(self.pad(self.sign(x < 0.0 && n != 0), digits, true))
            }
            _ => {
                let x = parse_py_float(arg)?;
                let p = self.precision.unwrap_or(6);
                let body = match self.conv {
                    'f' | 'F' => finite_or(x, self.conv, || {
                        let s = format!("{:.*}", p, x.abs());
                        if self.alt {
                            with_point(&s)
                        } else {
                            s
                        }
                    }),
                    'e' | 'E' => finite_or(x, self.conv, || {
                        let s = sci(x.abs(), p, self.conv == 'E');
                        if self.alt {
                            with_point(&s)
                        } else {
                            s
                        }
                    }),
                    _ => finite_or(x, self.conv, || general(x.abs(), p, self.alt, self.conv)),
                };
                let numeric = x.is_finite();
                Ok(self.pad(
                    self.sign(x.is_sign_negative() && !x.is_nan()),
                    body,
                    numeric,
                ))
            }
        }
    }

    fn sign(&self, negative: bool) -> String {
        if negative {
            "-".into()
        } else if self.plus {
            "+".into()
        } else if self.space {
            " ".into()
        } else {
            String::new()
        }
    }

    /// Integer precision pads digits with zeros (`%.3d` of 5 is `005`).
    fn min_digits(&self, digits: String) -> String {
        match self.precision {
            Some(p) if p > digits.len() => format!("{}{digits}", "0".repeat(p - digits.len())),
            _ => digits,
        }
    }

    /// Pads to the width: left-justified with `-`, zeros after the sign with `0` (numbers only).
    fn pad(&self, sign: String, body: String, numeric: bool) -> String {
        let len = sign.chars().count() + body.chars().count();
        if len >= self.width {
            return sign + &body;
        }
        let fill = self.width - len;
        if self.left {
            format!("{sign}{body}{}", " ".repeat(fill))
        } else if self.zero && numeric {
            format!("{sign}{}{body}", "0".repeat(fill))
        } else {
            format!("{}{sign}{body}", " ".repeat(fill))
        }
    }
}

fn finite_or(x: f64, conv: char, f: impl FnOnce() -> String) -> String {
    let special = if x.is_nan() {
        "nan"
    } else if x.is_infinite() {
        "inf"
    } else {
        return f();
    };
    if conv.is_ascii_uppercase() {
        special.to_ascii_uppercase()
    } else {
        special.to_string()
    }
}

/// `%e`: mantissa with `p` decimals, exponent signed with at least two digits.
fn sci(x: f64, p: usize, upper: bool) -> String {
    let s = format!("{:.*e}", p, x);
    let (m, e) = split_sci(&s);
    let out = format!("{m}e{}", exp_suffix(e));
    if upper {
        out.to_ascii_uppercase()
    } else {
        out
    }
}

/// `%g`: `p` significant digits, positional when the exponent is from -4 to p-1, trailing
/// zeros removed unless `#`.
fn general(x: f64, p: usize, alt: bool, conv: char) -> String {
    let p = p.max(1);
    let s = format!("{:.*e}", p - 1, x);
    let (_, exp) = split_sci(&s);
    let out = if exp >= -4 && (exp as i64) < p as i64 {
        let decimals = (p as i64 - 1 - exp as i64).max(0) as usize;
        let s = format!("{:.*}", decimals, x);
        if alt {
            with_point(&s)
        } else {
            trim_zeros(&s)
        }
    } else {
        let s = sci(x, p - 1, false);
        if alt {
            with_point(&s)
        } else {
            let (m, e) = s.split_once('e').unwrap_or((&s, ""));
            format!("{}e{e}", trim_zeros(m))
        }
    };
    if conv == 'G' {
        out.to_ascii_uppercase()
    } else {
        out
    }
}

/// `#` keeps the decimal point even with no decimals (`3.`, `1.e+04`).
fn with_point(s: &str) -> String {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    if mantissa.contains('.') {
        s.to_string()
    } else {
        format!("{mantissa}.{exponent}")
    }
}

fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// IceProd strips one pair of surrounding quotes from a `%s` argument.
fn unquote(arg: &str) -> Result<&str, ExprError> {
    let mut chars = arg.chars();
    match chars.next() {
        None => Err(bad("an empty argument")),
        Some('"' | '\'') => {
            // Python's arg[1:-1]: drops the last character, whatever it is.
            chars.next_back();
            Ok(chars.as_str())
        }
        Some(_) => Ok(arg),
    }
}

/// Python's `int(text)`: surrounding blanks, a sign, decimal digits, `_` between digits.
pub fn parse_py_int(text: &str) -> Result<i64, ExprError> {
    let t = text.trim();
    let cleaned = strip_underscores(t).ok_or_else(|| bad(format!("`{t}` is not an integer")))?;
    cleaned.parse::<i64>().map_err(|e| {
        if matches!(
            e.kind(),
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
        ) {
            ExprError::Overflow
        } else {
            bad(format!("`{t}` is not an integer"))
        }
    })
}

/// Python's `float(text)`: blanks, sign, decimal or exponent form, `inf`, `nan`.
pub fn parse_py_float(text: &str) -> Result<f64, ExprError> {
    let t = text.trim();
    let cleaned = strip_underscores(t).ok_or_else(|| bad(format!("`{t}` is not a number")))?;
    let lower = cleaned.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    let special = matches!(body, "inf" | "infinity" | "nan");
    let plain = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-'));
    if !(special || plain) {
        return Err(bad(format!("`{t}` is not a number")));
    }
    lower
        .parse::<f64>()
        .map_err(|_| bad(format!("`{t}` is not a number")))
}

/// Removes `_` that stands between two digits, as Python allows; `None` if one stands
/// anywhere else.
fn strip_underscores(t: &str) -> Option<String> {
    if !t.contains('_') {
        return Some(t.to_string());
    }
    let b = t.as_bytes();
    let mut out = String::with_capacity(t.len());
    for (i, c) in t.char_indices() {
        if c == '_' {
            let before = i > 0 && b[i - 1].is_ascii_digit();
            let after = b.get(i + 1).is_some_and(|x| x.is_ascii_digit());
            if !(before && after) {
                return None;
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}
