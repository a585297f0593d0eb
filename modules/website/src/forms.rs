//! What people send: query strings and urlencoded form bodies ([`Form`]), paging parameters
//! ([`paging`]), and the `Cookie` header ([`cookie`]).
//!
//! Paging is strict rather than clamped: an `offset` or `limit` that is negative, not a number,
//! or over its maximum is answered 400 naming the parameter, so a mistyped link never silently
//! shows a different page than asked for. `limit` defaults to [`DEFAULT_LIMIT`] and may be at
//! most [`MAX_LIMIT`]; `offset` at most [`MAX_OFFSET`].

use iceprod_runtime::web::Paging;

pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 1000;
/// Far beyond any real table, small enough to stay exact in every backend's integer type.
pub const MAX_OFFSET: u64 = 1 << 40;

/// Decoded `name=value` pairs, in order (a name may repeat: bulk checkboxes).
#[derive(Debug, Default, PartialEq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Parses `a=1&b=x+y%21` (a query string or an `application/x-www-form-urlencoded` body).
    /// Bad percent escapes are kept literally; invalid UTF-8 is replaced.
    pub fn parse(text: &[u8]) -> Form {
        Form(
            text.split(|b| *b == b'&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let mut parts = pair.splitn(2, |b| *b == b'=');
                    let name = decode(parts.next().unwrap_or_default());
                    let value = decode(parts.next().unwrap_or_default());
                    (name, value)
                })
                .collect(),
        )
    }

    /// The query string of a request target.
    pub fn query(url: &str) -> Form {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let query = query.split('#').next().unwrap_or_default();
        Form::parse(query.as_bytes())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, `None` when absent or empty.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The pairs, for carrying fields over (the hard-reset confirmation).
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Percent-decoding with `+` as space.
pub fn decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => match (hex(raw[i + 1]), hex(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encodes a value for a URL query or a form (unreserved characters kept).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A bad parameter: its name and why (shown on the 400 page).
#[derive(Debug, PartialEq, Eq)]
pub struct BadParam {
    pub name: &'static str,
    pub reason: String,
}

impl std::fmt::Display for BadParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "parameter '{}' {}", self.name, self.reason)
    }
}

/// A whole number `0..=max` from the form, or `default` when absent or empty.
pub fn number(form: &Form, name: &'static str, default: u64, max: u64) -> Result<u64, BadParam> {
    let Some(text) = form.non_empty(name) else {
        return Ok(default);
    };
    let bad = |reason: String| BadParam { name, reason };
    if text.starts_with('-') {
        return Err(bad("must not be negative".into()));
    }
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(bad(format!("must be at most {max}"))),
        Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => {
            Err(bad(format!("must be at most {max}")))
        }
        Err(_) => Err(bad("must be a whole number".into())),
    }
}

/// `offset` and `limit` of a list page (see the module doc).
pub fn paging(form: &Form) -> Result<Paging, BadParam> {
    Ok(Paging {
        offset: number(form, "offset", 0, MAX_OFFSET)?,
        limit: match number(form, "limit", DEFAULT_LIMIT, MAX_LIMIT)? {
            0 => {
                return Err(BadParam {
                    name: "limit",
                    reason: "must be at least 1".into(),
                })
            }
            n => n,
        },
    })
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (n, v) = pair.trim().split_once('=')?;
        (n.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// Whether `next` is a path on this site (`/dataset/1`), not another host (`//evil`,
/// `https://…`, `/\evil`): the only kind of target a login redirects to.
pub fn local_path(next: &str) -> bool {
    // Printable ASCII only: browsers drop tabs and newlines from a URL (`/\t/evil` is
    // `//evil`, another origin) and read `\` as `/`; anything else (non-ASCII) cannot go
    // into a `Location` header unencoded.
    let printable = next
        .bytes()
        .all(|b| (b'!'..=b'~').contains(&b) && b != b'\\');
    printable && next.starts_with('/') && !next.starts_with("//")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_percent_and_repeats() {
        let f = Form::parse(b"a=1&b=x+y%21&task_id=t1&task_id=t2&empty=&bad=%zz%4");
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), Some("x y!"));
        assert_eq!(f.all("task_id"), vec!["t1", "t2"]);
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.non_empty("empty"), None);
        assert_eq!(f.get("bad"), Some("%zz%4"));
        assert_eq!(f.get("missing"), None);
        let q = Form::query("/task?dataset_id=abc&status=failed#x");
        assert_eq!(q.get("status"), Some("failed"));
        assert_eq!(decode(b"%E2%9C%93"), "\u{2713}");
        assert_eq!(
            decode(encode("a b&c=\u{2713}").as_bytes()),
            "a b&c=\u{2713}"
        );
    }

    #[test]
    fn paging_refuses_negative_huge_and_non_numbers_by_name() {
        let p = |q: &str| paging(&Form::parse(q.as_bytes()));
        assert_eq!(
            p("").unwrap(),
            Paging {
                offset: 0,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            p("offset=20&limit=10").unwrap(),
            Paging {
                offset: 20,
                limit: 10
            }
        );
        for (q, name) in [
            ("offset=-1", "offset"),
            ("offset=abc", "offset"),
            ("offset=1e3", "offset"),
            ("offset=99999999999999999999999", "offset"),
            ("limit=1001", "limit"),
            ("limit=0", "limit"),
            ("limit=-5", "limit"),
            ("limit=1.5", "limit"),
        ] {
            assert_eq!(p(q).unwrap_err().name, name, "{q}");
        }
        assert_eq!(p("limit=1000").unwrap().limit, MAX_LIMIT);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = "other=1; iceprod_session=abc123; x_iceprod_session=no";
        assert_eq!(cookie(h, "iceprod_session"), Some("abc123"));
        assert_eq!(
            cookie("iceprod_session=\"q\"", "iceprod_session"),
            Some("q")
        );
        assert_eq!(cookie("a=1", "iceprod_session"), None);
        assert_eq!(cookie("", "iceprod_session"), None);
    }

    #[test]
    fn login_redirects_only_to_local_paths() {
        assert!(local_path("/dataset/3?x=1"));
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "",
            "dataset",
            "/a\r\nSet-Cookie: x",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /x",
            "/a/\\evil",
            "/caf\u{e9}",
        ] {
            assert!(!local_path(bad), "{bad}");
        }
    }
}
