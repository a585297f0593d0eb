//! Base-62 ids (SPEC §2): alphabet `a-z`, `A-Z`, `0-9`, bijective numbering, so 0 → `a`,
//! 61 → `9`, 62 → `aa`. Global ids put the site number in front of a local counter.

const ALPHABET: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// How far the site number is shifted in a global id.
pub const SITE_FACTOR: u128 = 1_000_000_000_000_000;

/// Writes `n` in bijective base 62.
pub fn encode(mut n: u128) -> String {
    let mut out = Vec::new();
    loop {
        out.push(ALPHABET[(n % 62) as usize]);
        if n < 62 {
            break;
        }
        n = n / 62 - 1;
    }
    out.reverse();
    String::from_utf8(out).expect("the alphabet is ASCII")
}

/// Reads an id written by [`encode`]; `None` for anything else (empty, foreign characters,
/// or too large).
pub fn decode(s: &str) -> Option<u128> {
    if s.is_empty() {
        return None;
    }
    let mut n: u128 = 0;
    for (i, b) in s.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == b)? as u128;
        n = if i == 0 {
            digit
        } else {
            (n.checked_add(1)?).checked_mul(62)?.checked_add(digit)?
        };
    }
    Some(n)
}

/// The global id of local number `local` minted on site number `site`.
pub fn global_id(site: u128, local: u128) -> String {
    encode(site * SITE_FACTOR + local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_match_the_spec() {
        assert_eq!(encode(0), "a");
        assert_eq!(encode(61), "9");
        assert_eq!(encode(62), "aa");
        assert_eq!(encode(63), "ab");
        assert_eq!(encode(3905), "99");
        assert_eq!(encode(3906), "aaa");
    }

    #[test]
    fn decode_inverts_encode() {
        for n in (0..20_000u128).chain([u64::MAX as u128, SITE_FACTOR * 9_999_999_999]) {
            assert_eq!(decode(&encode(n)), Some(n), "{n}");
        }
    }

    #[test]
    fn decode_refuses_what_is_not_an_id() {
        assert_eq!(decode(""), None);
        assert_eq!(decode("a-b"), None);
        assert_eq!(decode("é"), None);
        assert_eq!(decode(&"9".repeat(40)), None);
    }

    #[test]
    fn global_ids_of_different_sites_differ() {
        assert_ne!(global_id(1, 5), global_id(2, 5));
        assert_eq!(decode(&global_id(3, 7)), Some(3 * SITE_FACTOR + 7));
    }
}
