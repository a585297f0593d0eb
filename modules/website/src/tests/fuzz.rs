//! Property tests of what visitors send: the form and query parser, percent-decoding, the
//! `Cookie` header, the login redirect check and the paging parameters. Random input never
//! panics, and what the website writes (links, cookies) reads back as it was.
//!
//! The number of cases per property is `ICEPROD_FUZZ_CASES` (default 256).

use proptest::prelude::*;

use crate::forms::{
    cookie, decode, encode, local_path, number, paging, Form, MAX_LIMIT, MAX_OFFSET,
};
use crate::session;

fn config() -> ProptestConfig {
    let cases = std::env::var("ICEPROD_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

/// Text with the characters that matter to these parsers more often than chance gives them.
fn tricky_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('&'),
            Just('='),
            Just('%'),
            Just('+'),
            Just(';'),
            Just('"'),
            Just('/'),
            Just('\\'),
            Just(' '),
            Just('\t'),
            any::<char>(),
            proptest::char::range('0', 'f'),
        ],
        0..40,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A cookie name or value as the website writes them (base64url ids, plain names).
fn cookie_word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,20}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_parse_as_a_form_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let form = Form::parse(&bytes);
        let pieces = bytes.split(|b| *b == b'&').filter(|p| !p.is_empty()).count();
        prop_assert_eq!(form.pairs().len(), pieces);
        let _ = decode(&bytes);
    }

    #[test]
    fn any_text_parses_as_a_query_and_pages_within_bounds(url in tricky_text()) {
        let form = Form::query(&url);
        if let Ok(p) = paging(&form) {
            prop_assert!((1..=MAX_LIMIT).contains(&p.limit));
            prop_assert!(p.offset <= MAX_OFFSET);
        }
    }

    #[test]
    fn encoded_values_decode_to_themselves(value in tricky_text()) {
        let encoded = encode(&value);
        prop_assert!(!encoded.contains(['&', '=', '+', ' ', '#', '?']), "{}", encoded);
        prop_assert_eq!(decode(encoded.as_bytes()), value);
    }

    #[test]
    fn encoded_pairs_parse_back_in_order(pairs in proptest::collection::vec((tricky_text(), tricky_text()), 0..8)) {
        let body: Vec<String> = pairs
            .iter()
            .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
            .collect();
        let form = Form::parse(body.join("&").as_bytes());
        prop_assert_eq!(form.pairs(), pairs.as_slice());
        let query = Form::query(&format!("/task?{}#frag", body.join("&")));
        prop_assert_eq!(query.pairs(), pairs.as_slice());
    }

    #[test]
    fn whole_numbers_within_the_maximum_are_read_back(n in 0..=MAX_OFFSET, junk in tricky_text()) {
        let form = Form::parse(format!("x={n}").as_bytes());
        prop_assert_eq!(number(&form, "x", 7, MAX_OFFSET), Ok(n));
        // Anything else is a number within bounds or a refusal naming the parameter.
        let form = Form::parse(format!("x={}", encode(&junk)).as_bytes());
        match number(&form, "x", 7, MAX_OFFSET) {
            Ok(v) => prop_assert!(v <= MAX_OFFSET),
            Err(e) => prop_assert_eq!(e.name, "x"),
        }
    }

    #[test]
    fn any_cookie_header_is_searched_without_panicking(header in tricky_text(), name in tricky_text()) {
        if let Some(value) = cookie(&header, &name) {
            prop_assert!(header.contains(value));
        }
        let _ = cookie(&header, session::COOKIE);
        let _ = session::valid_login_token(&header);
    }

    #[test]
    fn cookies_are_found_among_others_by_exact_name(
        others in proptest::collection::vec((cookie_word(), cookie_word()), 0..5),
        id in cookie_word(),
    ) {
        let mut pairs: Vec<String> = others
            .iter()
            .filter(|(n, _)| n != session::COOKIE)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let at = pairs.len() / 2;
        pairs.insert(at, format!("{}={id}", session::COOKIE));
        let header = pairs.join("; ");
        prop_assert_eq!(cookie(&header, session::COOKIE), Some(id.as_str()));
        // What the server sets is what the browser sends back.
        let set = session::set_cookie(&id, std::time::Duration::from_secs(60), true);
        prop_assert_eq!(cookie(&set, session::COOKIE), Some(id.as_str()));
        let set = session::login_cookie(&id, false);
        prop_assert_eq!(cookie(&set, session::LOGIN_COOKIE), Some(id.as_str()));
    }

    #[test]
    fn a_local_path_never_leads_to_another_host(next in tricky_text()) {
        if local_path(&next) {
            prop_assert!(next.starts_with('/') && !next.starts_with("//"));
            prop_assert!(next.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'\\'));
        }
        // A decoded `next` (as the login form carries it) is held to the same rule.
        let decoded = decode(next.as_bytes());
        if local_path(&decoded) {
            prop_assert!(!decoded.starts_with("//") && !decoded.contains('\\'));
        }
    }
}
