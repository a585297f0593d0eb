//! Decoding of `{"__jsonclass__": [TYPE, VALUE]}` values (SPEC §5.1): the way IceProd clients
//! send what JSON lacks. Decoding happens on the params of every call before dispatch, so
//! methods only ever see plain JSON:
//!
//! | TYPE       | VALUE                            | becomes                          |
//! |------------|----------------------------------|----------------------------------|
//! | `datetime` | `YYYY-MM-DDTHH:MM:SS[.ffffff]`   | the same string, validated       |
//! | `date`     | `YYYY-MM-DD`                     | the same string, validated       |
//! | `time`     | `HH:MM:SS[.ffffff]`              | the same string, validated       |
//! | `binary`   | base64 (padding optional)        | canonical standard base64        |
//! | `set`      | a JSON array                     | the array, its items decoded too |
//!
//! Errors name the path of the bad value (`params.when: bad datetime …`); the caller turns them
//! into -32602. This file must not know about methods or the envelope.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{Map, Value};

/// The key that marks an encoded value.
pub const KEY: &str = "__jsonclass__";

/// Standard alphabet; clients differ on padding, so both forms are accepted.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes every `__jsonclass__` value inside `value`, which sits at `path` (for messages).
///
/// Recursion depth is bounded by serde_json's nesting limit on the parsed document.
pub fn decode(value: &mut Value, path: &str) -> Result<(), String> {
    let mut path = path.to_string();
    decode_at(value, &mut path)
}

fn decode_at(value: &mut Value, path: &mut String) -> Result<(), String> {
    match value {
        Value::Object(map) if map.contains_key(KEY) => {
            *value = decode_class(map, path)?;
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                decode_at(item, path)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => decode_items(items, path)?,
        _ => {}
    }
    Ok(())
}

fn decode_items(items: &mut [Value], path: &mut String) -> Result<(), String> {
    for (i, item) in items.iter_mut().enumerate() {
        let len = path.len();
        path.push_str(&format!("[{i}]"));
        decode_at(item, path)?;
        path.truncate(len);
    }
    Ok(())
}

fn decode_class(map: &mut Map<String, Value>, path: &mut String) -> Result<Value, String> {
    if map.len() != 1 {
        return Err(format!("{path}: a {KEY} object must have no other keys"));
    }
    let pair = match map.remove(KEY) {
        Some(Value::Array(pair)) if pair.len() == 2 => pair,
        _ => return Err(format!("{path}: {KEY} must be [TYPE, VALUE]")),
    };
    let mut pair = pair.into_iter();
    let (Some(kind), Some(inner)) = (pair.next(), pair.next()) else {
        // Unreachable: the length was checked to be 2 just above.
        return Err(format!("{path}: {KEY} must be [TYPE, VALUE]"));
    };
    let Value::String(kind) = kind else {
        return Err(format!("{path}: {KEY} TYPE must be a string"));
    };
    match (kind.as_str(), inner) {
        ("datetime", Value::String(s)) if is_datetime(&s) => Ok(Value::String(s)),
        ("datetime", _) => Err(format!(
            "{path}: bad datetime (expected YYYY-MM-DDTHH:MM:SS[.ffffff])"
        )),
        ("date", Value::String(s)) if is_date(&s) => Ok(Value::String(s)),
        ("date", _) => Err(format!("{path}: bad date (expected YYYY-MM-DD)")),
        ("time", Value::String(s)) if is_time(&s) => Ok(Value::String(s)),
        ("time", _) => Err(format!("{path}: bad time (expected HH:MM:SS[.ffffff])")),
        ("binary", Value::String(s)) => match LENIENT_BASE64.decode(s.as_bytes()) {
            Ok(bytes) => Ok(Value::String(STANDARD.encode(bytes))),
            Err(_) => Err(format!("{path}: bad binary (expected base64)")),
        },
        ("binary", _) => Err(format!("{path}: bad binary (expected a base64 string)")),
        ("set", Value::Array(mut items)) => {
            decode_items(&mut items, path)?;
            Ok(Value::Array(items))
        }
        ("set", _) => Err(format!("{path}: bad set (expected an array)")),
        (other, _) => Err(format!(
            "{path}: unknown {KEY} type '{}'",
            other.chars().take(32).collect::<String>()
        )),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]`, as Python's `datetime.isoformat()` writes a naive datetime.
pub fn is_datetime(s: &str) -> bool {
    match s.split_once('T') {
        Some((date, time)) => is_date(date) && is_time(time),
        None => false,
    }
}

/// `YYYY-MM-DD` with a real day of that month (leap years included); years 0001 to 9999.
pub fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(year), Some(month), Some(day)) =
        (digits(&b[0..4]), digits(&b[5..7]), digits(&b[8..10]))
    else {
        return false;
    };
    year >= 1 && (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month)
}

/// `HH:MM:SS` with an optional fraction of 1 to 6 digits.
pub fn is_time(s: &str) -> bool {
    let (clock, fraction) = match s.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (s, None),
    };
    let b = clock.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let (Some(h), Some(m), Some(sec)) = (digits(&b[0..2]), digits(&b[3..5]), digits(&b[6..8]))
    else {
        return false;
    };
    let fraction_ok = match fraction {
        None => true,
        Some(f) => (1..=6).contains(&f.len()) && f.bytes().all(|c| c.is_ascii_digit()),
    };
    h < 24 && m < 60 && sec < 60 && fraction_ok
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decoded(mut v: Value) -> Result<Value, String> {
        decode(&mut v, "params").map(|()| v)
    }

    fn class(kind: &str, value: Value) -> Value {
        json!({ KEY: [kind, value] })
    }

    #[test]
    fn every_type_decodes_to_plain_json() {
        let v = json!({
            "when": class("datetime", json!("2024-02-29T23:59:59.123456")),
            "whole": class("datetime", json!("2024-01-01T00:00:00")),
            "day": class("date", json!("2000-02-29")),
            "at": class("time", json!("12:30:00.5")),
            "data": class("binary", json!("aGVsbG8")),
            "tags": class("set", json!(["a", class("date", json!("2020-01-31"))])),
        });
        assert_eq!(
            decoded(v).unwrap(),
            json!({
                "when": "2024-02-29T23:59:59.123456",
                "whole": "2024-01-01T00:00:00",
                "day": "2000-02-29",
                "at": "12:30:00.5",
                "data": "aGVsbG8=",
                "tags": ["a", "2020-01-31"],
            })
        );
    }

    #[test]
    fn values_deep_in_objects_and_arrays_are_decoded() {
        let v = json!({"a": [{"b": class("binary", json!(""))}]});
        assert_eq!(decoded(v).unwrap(), json!({"a": [{"b": ""}]}));
    }

    #[test]
    fn malformed_values_name_their_path() {
        for (v, expected) in [
            (
                json!({"when": class("datetime", json!("2023-02-29T00:00:00"))}),
                "params.when: bad datetime",
            ),
            (
                json!({"when": class("datetime", json!("2023-01-01 00:00:00"))}),
                "params.when: bad datetime",
            ),
            (
                json!({"when": class("datetime", json!(5))}),
                "params.when: bad datetime",
            ),
            (
                json!({"d": class("date", json!("2023-13-01"))}),
                "params.d: bad date",
            ),
            (
                json!({"t": class("time", json!("24:00:00"))}),
                "params.t: bad time",
            ),
            (
                json!({"t": class("time", json!("12:00:00.1234567"))}),
                "params.t: bad time",
            ),
            (
                json!({"b": class("binary", json!("not base64!"))}),
                "params.b: bad binary",
            ),
            (
                json!({"s": class("set", json!("abc"))}),
                "params.s: bad set",
            ),
            (
                json!({"x": [1, class("complex", json!([1, 2]))]}),
                "params.x[1]: unknown __jsonclass__ type 'complex'",
            ),
            (
                json!({"x": {KEY: ["date"]}}),
                "params.x: __jsonclass__ must be [TYPE, VALUE]",
            ),
            (
                json!({"x": {KEY: "date"}}),
                "params.x: __jsonclass__ must be [TYPE, VALUE]",
            ),
            (
                json!({"x": {KEY: [1, "2020-01-01"]}}),
                "params.x: __jsonclass__ TYPE must be a string",
            ),
            (
                json!({"x": {KEY: ["date", "2020-01-01"], "y": 1}}),
                "params.x: a __jsonclass__ object must have no other keys",
            ),
            (
                json!({"s": class("set", json!([class("time", json!("x"))]))}),
                "params.s[0]: bad time",
            ),
        ] {
            let e = decoded(v.clone()).unwrap_err();
            assert!(e.starts_with(expected), "{v}: got {e}");
        }
    }

    #[test]
    fn dates_respect_month_lengths_and_leap_years() {
        assert!(is_date("2024-02-29"));
        assert!(is_date("2000-02-29"));
        assert!(!is_date("1900-02-29"));
        assert!(!is_date("2023-04-31"));
        assert!(!is_date("0000-01-01"));
        assert!(!is_date("2023-1-01"));
        assert!(!is_date("２０２３-01-01"));
        assert!(is_time("00:00:00"));
        assert!(!is_time("00:60:00"));
        assert!(!is_time("00:00:00."));
        assert!(!is_datetime("2024-01-01T00:00:00Z"));
    }
}
