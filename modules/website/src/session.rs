//! Who is asking: the session cookie, CSRF checks, a short cache of session lookups, and the
//! login throttle.
//!
//! - The cookie is `iceprod_session` (`Path=/; HttpOnly; SameSite=Lax; Max-Age=TTL`, plus
//!   `Secure` when configured or forwarded over https). Its value is the db's session id.
//! - Each state-changing form carries `csrf_token`, compared in constant time with the
//!   session's token here, and handed to the db too, which compares it again in the same
//!   transaction as the change.
//! - [`SessionCache`] keeps a session looked up in the last few seconds, so a page and its
//!   follow-up requests do not each ask the db; logging out removes the entry at once, and a
//!   password or role change relayed by this website ([`SessionCache::forget_user`]) drops
//!   every entry of that user, so the next request asks the db: a revoked session gets the
//!   login page, a changed role shows at once. A change made with `iceprod user passwd`
//!   (which writes to the database itself, not through the server) reaches a cached entry
//!   only when it expires, within [`CACHE_TTL`]; the db refuses every action of the revoked
//!   session at once anyway, since actions always go through it.
//! - The login form carries its own token ([`LOGIN_COOKIE`], [`login_cookie`]): a random value
//!   in a cookie and in a hidden field, compared on `POST /login`. Another site can make a
//!   browser post the form but neither read nor set the cookie, so it cannot log the browser
//!   into the attacker's account (login CSRF).
//! - [`Throttle`] counts failed logins per username and per client address; the next attempt
//!   waits 0, 0, 1, 2, 4, … seconds (capped at [`MAX_DELAY`]) before its password is checked.
//!   The wait is a loop timer, never a sleep. An attempt counts as a failure from the moment it
//!   starts ([`Throttle::begin`]), so many attempts sent at once wait longer and longer rather
//!   than all the same short time; a success takes its count back ([`Throttle::succeeded`]) and
//!   forgets the username's failures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use iceprod_runtime::web::SessionInfo;

pub const COOKIE: &str = "iceprod_session";

/// The cookie holding the login form's token (see the module doc).
pub const LOGIN_COOKIE: &str = "iceprod_login";

/// The hidden field of the login form that repeats [`LOGIN_COOKIE`].
pub const LOGIN_FIELD: &str = "login_token";

/// How long a looked-up session is trusted without asking the db again. Short, because an
/// expiry or a logout elsewhere (another server process, the CLI) shows only after it.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Longest wait before a login attempt is checked.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Failures forgotten after this long without another failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The cache stays small: one entry per live browser, pruned when it grows.
const CACHE_MAX: usize = 10_000;

/// The `Set-Cookie` value that opens a session.
pub fn set_cookie(session_id: &str, ttl: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={session_id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that clears the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", Duration::ZERO, secure)
}

/// The `Set-Cookie` value that hands the login form's token to the browser: for `/login` only,
/// and for the browser's session (no `Max-Age`), as a login page may stay open a long time.
pub fn login_cookie(token: &str, secure: bool) -> String {
    format!(
        "{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether `token` looks like one [`new_login_token`] made (a cookie sent back may be
/// anything; a bad one gets a fresh token).
pub fn valid_login_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh login token: 32 random bytes, base64url (43 characters).
pub fn new_login_token() -> std::io::Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Session lookups of the last [`CACHE_TTL`].
#[derive(Default)]
pub struct SessionCache {
    entries: HashMap<String, (SessionInfo, Instant)>,
    /// Counts [`Self::forget_user`] calls. A lookup started before a change may answer after
    /// it with what the db held before: [`Self::put`] keeps it only if no change came since.
    generation: u64,
}

impl SessionCache {
    /// The current generation, taken before asking the db for a session.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Drops every cached session of `username` (their password or roles changed).
    pub fn forget_user(&mut self, username: &str) {
        self.generation += 1;
        self.entries.retain(|_, (s, _)| s.username != username);
    }

    pub fn get(&self, session_id: &str, now: Instant) -> Option<&SessionInfo> {
        self.entries
            .get(session_id)
            .filter(|(_, at)| now.duration_since(*at) < CACHE_TTL)
            .map(|(s, _)| s)
    }

    /// Keeps `info`, looked up when the generation was `asked_at`, unless a user's
    /// credentials changed since.
    pub fn put(&mut self, info: SessionInfo, now: Instant, asked_at: u64) {
        if asked_at != self.generation {
            return;
        }
        if self.entries.len() >= CACHE_MAX {
            self.entries
                .retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
        }
        self.entries.insert(info.session_id.clone(), (info, now));
    }

    pub fn remove(&mut self, session_id: &str) {
        self.entries.remove(session_id);
    }
}

/// Failed logins by key (`user:NAME`, `ip:ADDR`).
#[derive(Default)]
pub struct Throttle {
    failures: HashMap<String, (u32, Instant)>,
}

/// The wait before attempt number `failures + 1`: 0, 0, 1, 2, 4, … seconds, capped.
pub fn delay_after(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(5)).min(MAX_DELAY),
    }
}

impl Throttle {
    /// How long the next attempt for `keys` must wait: the longest of theirs.
    pub fn delay(&self, keys: &[String], now: Instant) -> Duration {
        keys.iter()
            .filter_map(|k| self.failures.get(k))
            .filter(|(_, at)| now.duration_since(*at) < FORGET_AFTER)
            .map(|(n, _)| delay_after(*n))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Counts an attempt that is about to be checked; answers how long it must wait first.
    pub fn begin(&mut self, keys: &[String], now: Instant) -> Duration {
        let wait = self.delay(keys, now);
        self.fail(keys, now);
        wait
    }

    /// An attempt counted by [`Self::begin`] succeeded: the username's failures are forgotten,
    /// and the attempt no longer counts against the other keys (the client address), so
    /// people who log in fine from one address never slow each other down.
    pub fn succeeded(&mut self, keys: &[String]) {
        let Some((user, others)) = keys.split_first() else {
            return;
        };
        self.failures.remove(user);
        for key in others {
            if let Some(entry) = self.failures.get_mut(key) {
                entry.0 = entry.0.saturating_sub(1);
                if entry.0 == 0 {
                    self.failures.remove(key);
                }
            }
        }
    }

    fn fail(&mut self, keys: &[String], now: Instant) {
        if self.failures.len() > CACHE_MAX {
            self.failures
                .retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        }
        for key in keys {
            let entry = self.failures.entry(key.clone()).or_insert((0, now));
            if now.duration_since(entry.1) >= FORGET_AFTER {
                entry.0 = 0;
            }
            entry.0 = entry.0.saturating_add(1);
            entry.1 = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> SessionInfo {
        SessionInfo {
            session_id: id.into(),
            csrf_token: "tok".into(),
            username: "alice".into(),
            admin: false,
            expire: "2030-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn cookies_carry_the_contract_attributes() {
        let c = set_cookie("abc", Duration::from_secs(86_400), false);
        assert_eq!(
            c,
            "iceprod_session=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400"
        );
        assert!(set_cookie("abc", Duration::from_secs(1), true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn throttle_grows_caps_and_resets_on_success() {
        let now = Instant::now();
        let mut t = Throttle::default();
        let keys = vec!["user:bob".to_string(), "ip:1.2.3.4".to_string()];
        let waits: Vec<u64> = (0..10).map(|_| t.begin(&keys, now).as_secs()).collect();
        assert_eq!(waits, vec![0, 0, 1, 2, 4, 8, 16, 30, 30, 30]);
        t.succeeded(&keys);
        // The address keeps the failures; another address for the same name starts afresh.
        assert_eq!(t.delay(&keys[1..], now), MAX_DELAY);
        let elsewhere = ["user:bob".to_string(), "ip:5.6.7.8".to_string()];
        assert_eq!(t.delay(&elsewhere, now), Duration::ZERO);
        assert_eq!(t.delay(&keys[1..], now + FORGET_AFTER), Duration::ZERO);
    }

    #[test]
    fn successful_logins_from_one_address_never_slow_it_down() {
        let now = Instant::now();
        let mut t = Throttle::default();
        for user in ["a", "b", "c", "d", "e"] {
            let keys = vec![format!("user:{user}"), "ip:10.0.0.1".to_string()];
            assert_eq!(t.begin(&keys, now), Duration::ZERO, "{user}");
            t.succeeded(&keys);
        }
    }

    #[test]
    fn attempts_sent_at_once_wait_longer_and_longer() {
        let now = Instant::now();
        let mut t = Throttle::default();
        let keys = vec!["user:bob".to_string()];
        let waits: Vec<u64> = (0..4).map(|_| t.begin(&keys, now).as_secs()).collect();
        assert_eq!(waits, vec![0, 0, 1, 2]);
    }

    #[test]
    fn cached_sessions_expire_and_logout_removes_them() {
        let now = Instant::now();
        let mut c = SessionCache::default();
        c.put(info("s1"), now, c.generation());
        assert!(c.get("s1", now).is_some());
        assert!(c.get("s1", now + CACHE_TTL).is_none());
        c.remove("s1");
        assert!(c.get("s1", now).is_none());
    }

    #[test]
    fn a_credentials_change_drops_the_users_sessions_and_late_lookups() {
        let now = Instant::now();
        let mut c = SessionCache::default();
        let mut bob = info("s2");
        bob.username = "bob".into();
        c.put(info("s1"), now, c.generation());
        c.put(bob, now, c.generation());
        // A lookup of alice's session is on its way when her password changes.
        let asked_at = c.generation();
        c.forget_user("alice");
        assert!(c.get("s1", now).is_none());
        assert!(c.get("s2", now).is_some(), "other users keep theirs");
        c.put(info("s1"), now, asked_at);
        assert!(
            c.get("s1", now).is_none(),
            "a lookup from before the change"
        );
        c.put(info("s1"), now, c.generation());
        assert!(c.get("s1", now).is_some());
    }

    #[test]
    fn login_tokens_are_random_and_recognised() {
        let a = new_login_token().unwrap();
        let b = new_login_token().unwrap();
        assert_ne!(a, b);
        assert!(valid_login_token(&a), "{a}");
        for bad in [
            "",
            "short",
            &format!("{a}x"),
            &a.replace(|_: char| true, ";"),
        ] {
            assert!(!valid_login_token(bad), "{bad}");
        }
        assert_eq!(
            login_cookie(&a, true),
            format!("iceprod_login={a}; Path=/login; HttpOnly; SameSite=Lax; Secure")
        );
    }
}
