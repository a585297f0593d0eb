//! Accounts, sessions, groups and roles (SPEC §7): every [`AccountRequest`], and the password,
//! session and user helpers that `users.rs` and the `iceprod user` commands use.
//!
//! Passwords are stored in `user.password_hash` as `pbkdf2-sha256$ITERATIONS$SALT$HASH` (salt
//! and hash in unpadded standard base64): PBKDF2-HMAC-SHA256 over a random 16-byte salt of the
//! user's own. The iteration count travels in the string, so raising [`PBKDF2_ITERATIONS`]
//! later leaves the hashes already stored valid.
//!
//! Sessions: the id handed to the browser is 32 random bytes (base64url); the `session` table
//! keeps only its SHA-256 (hex), so a copy of the database opens no session. The CSRF token is
//! stored as it is: without the session id it authorises nothing.
//!
//! Hashing is slow on purpose (about 0.1 s) and the db has one writer, which every task update
//! waits for. So the requests that hash (`Login`, `CreateUser`, `SetPassword`, see
//! [`needs_hashing`]) are served in two halves: a reader thread reads what it needs
//! ([`prepare`], in a read transaction) and hashes or checks the password outside any
//! transaction ([`Unhashed::hash`]); the writer then only writes ([`finish`]), checking again
//! everything it relies on (the caller's rights, that the hash it verified is still the
//! stored one). [`execute`] runs the halves in one transaction, for tools and tests.
//!
//! Roles: `user.roles` is a JSON list of [`ROLES`]; `admin` is in it exactly when
//! `user.admin = 1`, and every write here keeps the two together (the flag is what the
//! permission checks read).

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use iceprod_runtime::web::{
    same_secret, AccountReply, AccountRequest, Group, SessionInfo, UserAuth, UserInfo,
};
use iceprod_runtime::DbReply;
use ring::rand::SecureRandom as _;
use serde_json::json;

use crate::args;
use crate::error::DbError;
use crate::ops::{new_global_id, now, stamp, OpRules};
use crate::sql::Tx;
use crate::users::{authenticate, record, User};

/// PBKDF2 rounds of a new hash: above the 100,000 the issue asks for, and about 0.1 s on
/// one core of a current server (release build).
pub const PBKDF2_ITERATIONS: u32 = 200_000;
/// Most rounds a stored hash may name: a hand-edited row must not stall a reader for minutes.
const MAX_ITERATIONS: u32 = 10_000_000;
const SCHEME: &str = "pbkdf2-sha256";
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
/// Longest password taken, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest username, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;
/// Longest group name (`/a/b/…`), in characters: it is an indexed `VARCHAR(255)` on MariaDB.
const MAX_GROUP_NAME_CHARS: usize = 255;
/// Longest group description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 4096;
/// The roles there are.
pub const ROLES: &[&str] = &["admin", "user"];

// ---- passwords ----------------------------------------------------------------------------

/// Refuses an empty or oversized password.
pub fn check_password(password: &str) -> Result<(), DbError> {
    if password.is_empty() {
        return Err(DbError::Refused("the password must not be empty".into()));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(DbError::Refused(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A new stored hash of `password`, with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, DbError> {
    check_password(password)?;
    let mut salt = [0u8; SALT_BYTES];
    fill_random(&mut salt)?;
    let hash = derive(password, &salt, PBKDF2_ITERATIONS);
    Ok(format!(
        "{SCHEME}${PBKDF2_ITERATIONS}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    ))
}

/// Whether `password` matches the stored hash, compared in constant time. A stored value that
/// is no hash (empty: a user without a password) matches nothing, after the same work as a
/// real check, so the time taken does not tell the two apart.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let Some((iterations, salt, expected)) = parse_hash(stored) else {
        std::hint::black_box(derive(password, &[0; SALT_BYTES], PBKDF2_ITERATIONS));
        return false;
    };
    if check_password(password).is_err() {
        return false;
    }
    same_secret(&derive(password, &salt, iterations), &expected)
}

fn derive(password: &str, salt: &[u8], iterations: u32) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    // Iterations come from PBKDF2_ITERATIONS or a parsed hash, both at least 1.
    let rounds = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// (iterations, salt, hash) of a stored hash, `None` if it is not one this build reads.
fn parse_hash(stored: &str) -> Option<(u32, Vec<u8>, Vec<u8>)> {
    let mut parts = stored.split('$');
    if parts.next()? != SCHEME {
        return None;
    }
    let iterations: u32 = parts.next()?.parse().ok()?;
    let salt = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
    let hash = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
    let sane = (1..=MAX_ITERATIONS).contains(&iterations)
        && salt.len() >= SALT_BYTES
        && hash.len() == HASH_BYTES
        && parts.next().is_none();
    sane.then_some((iterations, salt, hash))
}

// ---- randomness and tokens ----------------------------------------------------------------

fn fill_random(buf: &mut [u8]) -> Result<(), DbError> {
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| DbError::Refused("the system gave no random bytes".into()))
}

/// `bytes` random bytes as unpadded base64url.
fn random_token(bytes: usize) -> Result<String, DbError> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A password to hand out once (the first admin, `iceprod user add` without a password):
/// 24 characters of base64url, 144 random bits.
pub fn random_password() -> Result<String, DbError> {
    random_token(18)
}

/// What the `session` table stores for a session id: its SHA-256, in hex.
fn session_key(session_id: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, session_id.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- validation ---------------------------------------------------------------------------

/// Refuses a username that is empty, too long, or has characters other than letters, digits
/// and `. _ - @` (so that it is safe in paths, logs and pages as it is).
pub fn check_username(name: &str) -> Result<(), DbError> {
    let valid = name.chars().count() <= MAX_USERNAME_CHARS
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if valid {
        Ok(())
    } else {
        Err(DbError::Refused(format!(
            "a username is 1 to {MAX_USERNAME_CHARS} letters, digits, '.', '_', '-' or '@', \
             starting with a letter or digit"
        )))
    }
}

/// Refuses a group that is not a path of names (`/sim/high`) or whose priority is not a
/// number > 0; `at` names it in the message.
fn check_group(at: &str, group: &Group) -> Result<(), DbError> {
    let name = &group.name;
    let segments_ok = name.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
    });
    if !segments_ok || name.chars().count() > MAX_GROUP_NAME_CHARS {
        return Err(DbError::Refused(format!(
            "{at}.name must be a path like /sim/high: '/'-separated names of letters, digits, \
             '.', '_' or '-', at most {MAX_GROUP_NAME_CHARS} characters"
        )));
    }
    if !(group.priority.is_finite() && group.priority > 0.0) {
        return Err(DbError::Refused(format!(
            "{at}.priority must be a number > 0"
        )));
    }
    if group.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(DbError::Refused(format!(
            "{at}.description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(())
}

/// Known roles, sorted and without repeats; an unknown one is refused by name.
fn check_roles(roles: &[String]) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    for role in roles {
        if !ROLES.contains(&role.as_str()) {
            let shown: String = role.chars().take(40).collect();
            return Err(DbError::Refused(format!(
                "unknown role {shown:?}; the roles are {}",
                ROLES.join(", ")
            )));
        }
        out.push(role.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The roles of a user as stored, made to agree with its admin flag (the flag wins: it is
/// what the permission checks read).
fn roles_of(username: &str, admin: bool, stored: &str) -> Result<Vec<String>, DbError> {
    let mut roles: Vec<String> = serde_json::from_str(stored)
        .map_err(|_| DbError::Schema(format!("user {username} has roles {stored}")))?;
    roles.retain(|r| r != "admin");
    if admin {
        roles.push("admin".into());
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

// ---- the requests -------------------------------------------------------------------------

/// Whether a request hashes a password, and so is served in halves (see the module doc).
pub fn needs_hashing(request: &AccountRequest) -> bool {
    matches!(
        request,
        AccountRequest::Login { .. }
            | AccountRequest::CreateUser { .. }
            | AccountRequest::SetPassword { .. }
    )
}

/// Serves one request in one transaction.
pub fn execute(
    tx: &mut dyn Tx,
    rules: OpRules,
    request: &AccountRequest,
) -> Result<DbReply, DbError> {
    match request {
        AccountRequest::Login { .. }
        | AccountRequest::CreateUser { .. }
        | AccountRequest::SetPassword { .. } => {
            let prepared = prepare(tx, request)?.hash()?;
            finish(tx, rules, &prepared)
        }
        AccountRequest::Session { session_id } => {
            let session = live_session(tx, session_id)?.ok_or_else(no_session)?;
            Ok(DbReply::Account(AccountReply::Session(
                session.info(session_id),
            )))
        }
        AccountRequest::Logout {
            session_id,
            csrf_token,
        } => {
            let session = live_session(tx, session_id)?.ok_or_else(no_session)?;
            if !same_secret(csrf_token.as_bytes(), session.csrf_token.as_bytes()) {
                return Err(stale_csrf());
            }
            tx.exec(
                "DELETE FROM session WHERE session_id = ?",
                args![session.key.as_str()],
            )?;
            Ok(DbReply::Done)
        }
        AccountRequest::ListUsers { auth } => {
            admin_only(tx, auth, false, "list the users")?;
            list_users(tx).map(|users| DbReply::Account(AccountReply::Users(users)))
        }
        AccountRequest::RequireAdmin { auth } => {
            admin_only(tx, auth, true, "act on the server")?;
            Ok(DbReply::Done)
        }
        AccountRequest::GetGroups { auth } => {
            if let Some(auth) = auth {
                authenticate(tx, auth, false)?;
            }
            get_groups(tx).map(|groups| DbReply::Account(AccountReply::Groups(groups)))
        }
        AccountRequest::SetGroups { auth, groups } => {
            let user = admin_only(tx, auth, true, "change the groups")?;
            set_groups(tx, rules, groups)?;
            let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            record(
                tx,
                rules,
                &user,
                "set_groups",
                "groups",
                json!({ "groups": names }),
            )?;
            Ok(DbReply::Done)
        }
        AccountRequest::GetUserRoles { auth, username } => {
            let user = authenticate(tx, auth, false)?;
            if !user.admin && user.username != *username {
                return Err(DbError::Forbidden(
                    "only an admin may see another user's roles".into(),
                ));
            }
            let row = user_row(tx, username)?;
            Ok(DbReply::Account(AccountReply::Roles(row.roles()?)))
        }
        AccountRequest::SetUserRoles {
            auth,
            username,
            roles,
        } => {
            let user = admin_only(tx, auth, true, "set roles")?;
            let roles = check_roles(roles)?;
            set_roles(tx, username, &roles)?;
            record(
                tx,
                rules,
                &user,
                "set_user_roles",
                username,
                json!({ "roles": roles }),
            )?;
            Ok(DbReply::Done)
        }
    }
}

/// A hashing request after its reads, before its hashing.
pub enum Unhashed {
    Login {
        password: String,
        ttl: Duration,
        /// The user's id and stored hash; `None` for an unknown user.
        stored: Option<(String, String)>,
    },
    CreateUser {
        auth: UserAuth,
        username: String,
        password: String,
        admin: bool,
    },
    SetPassword {
        auth: UserAuth,
        username: String,
        password: String,
    },
}

/// A hashing request after its hashing: what the writer does.
#[derive(Debug)]
pub enum Prepared {
    /// A login whose password matched `hash`, the stored hash of `user_id`.
    Login {
        user_id: String,
        hash: String,
        ttl: Duration,
    },
    CreateUser {
        auth: UserAuth,
        username: String,
        hash: String,
        admin: bool,
    },
    SetPassword {
        auth: UserAuth,
        username: String,
        hash: String,
    },
}

/// The reads of a hashing request (any other request is refused): the stored hash for a
/// login; for the others the caller's rights and the input, so that no one hashes for
/// nothing. The writer checks the rights again.
pub fn prepare(tx: &mut dyn Tx, request: &AccountRequest) -> Result<Unhashed, DbError> {
    match request {
        AccountRequest::Login {
            username,
            password,
            ttl,
        } => {
            if ttl.is_zero() {
                return Err(DbError::Refused(
                    "a session must last longer than 0 s".into(),
                ));
            }
            let stored = tx
                .query_opt(
                    "SELECT user_id, password_hash FROM user WHERE username = ?",
                    args![username.as_str()],
                )?
                .map(|row| Ok::<_, DbError>((row.text(0)?, row.text(1)?)))
                .transpose()?;
            Ok(Unhashed::Login {
                password: password.clone(),
                ttl: *ttl,
                stored,
            })
        }
        AccountRequest::CreateUser {
            auth,
            username,
            password,
            admin,
        } => {
            admin_only(tx, auth, true, "create users")?;
            check_username(username)?;
            check_password(password)?;
            if user_exists(tx, username)? {
                return Err(user_taken(username));
            }
            Ok(Unhashed::CreateUser {
                auth: auth.clone(),
                username: username.clone(),
                password: password.clone(),
                admin: *admin,
            })
        }
        AccountRequest::SetPassword {
            auth,
            username,
            password,
        } => {
            may_set_password(tx, auth, username)?;
            check_password(password)?;
            Ok(Unhashed::SetPassword {
                auth: auth.clone(),
                username: username.clone(),
                password: password.clone(),
            })
        }
        _ => Err(DbError::Refused(
            "this account request hashes no password".into(),
        )),
    }
}

impl Unhashed {
    /// The slow part, outside any transaction: checks a login's password (an unknown user
    /// costs the same time and gets the same error as a wrong password) or hashes a new one.
    pub fn hash(self) -> Result<Prepared, DbError> {
        match self {
            Unhashed::Login {
                password,
                ttl,
                stored,
            } => {
                let (user_id, hash) = stored.unwrap_or_default();
                if verify_password(&password, &hash) {
                    Ok(Prepared::Login { user_id, hash, ttl })
                } else {
                    Err(bad_login())
                }
            }
            Unhashed::CreateUser {
                auth,
                username,
                password,
                admin,
            } => Ok(Prepared::CreateUser {
                auth,
                username,
                hash: hash_password(&password)?,
                admin,
            }),
            Unhashed::SetPassword {
                auth,
                username,
                password,
            } => Ok(Prepared::SetPassword {
                auth,
                username,
                hash: hash_password(&password)?,
            }),
        }
    }
}

/// The writes of a hashing request, after checking again what the reads found.
pub fn finish(tx: &mut dyn Tx, rules: OpRules, prepared: &Prepared) -> Result<DbReply, DbError> {
    match prepared {
        Prepared::Login { user_id, hash, ttl } => {
            // The password may have changed (or the user gone) since the reader checked it.
            let row = tx.query_opt(
                "SELECT username, admin, password_hash FROM user WHERE user_id = ?",
                args![user_id.as_str()],
            )?;
            let Some(row) = row else {
                return Err(bad_login());
            };
            if !same_secret(hash.as_bytes(), row.text(2)?.as_bytes()) {
                return Err(bad_login());
            }
            let user = User {
                user_id: user_id.clone(),
                username: row.text(0)?,
                admin: row.bool(1)?,
            };
            let info = open_session(tx, &user, *ttl)?;
            tx.exec(
                "UPDATE user SET last_login_time = ? WHERE user_id = ?",
                args![now(), user_id.as_str()],
            )?;
            Ok(DbReply::Account(AccountReply::Session(info)))
        }
        Prepared::CreateUser {
            auth,
            username,
            hash,
            admin,
        } => {
            let user = admin_only(tx, auth, true, "create users")?;
            add_user(tx, rules, username, hash, *admin)?;
            record(
                tx,
                rules,
                &user,
                "create_user",
                username,
                json!({ "admin": admin }),
            )?;
            Ok(DbReply::Done)
        }
        Prepared::SetPassword {
            auth,
            username,
            hash,
        } => {
            let user = may_set_password(tx, auth, username)?;
            let keep = match auth {
                UserAuth::Session { session_id, .. } if user.username == *username => {
                    Some(session_key(session_id))
                }
                _ => None,
            };
            set_password_hash(tx, username, hash, keep.as_deref())?;
            record(tx, rules, &user, "set_user_password", username, json!({}))?;
            Ok(DbReply::Done)
        }
    }
}

// ---- errors -------------------------------------------------------------------------------

/// The one answer to a failed login, whatever failed.
fn bad_login() -> DbError {
    DbError::Forbidden("wrong username or password".into())
}

fn no_session() -> DbError {
    DbError::Forbidden("unknown or expired session; log in again".into())
}

fn stale_csrf() -> DbError {
    DbError::Forbidden("missing or stale CSRF token; reload the page and try again".into())
}

fn user_taken(username: &str) -> DbError {
    DbError::Refused(format!("user {username} already exists"))
}

fn no_user(username: &str) -> DbError {
    DbError::NotFound {
        what: "user",
        id: username.to_string(),
    }
}

// ---- sessions -----------------------------------------------------------------------------

/// A live session as stored, with its user.
pub(crate) struct LiveSession {
    /// The stored key (the SHA-256 of the id).
    key: String,
    csrf_token: String,
    expire: String,
    pub(crate) user: User,
}

impl LiveSession {
    fn info(&self, session_id: &str) -> SessionInfo {
        SessionInfo {
            session_id: session_id.to_string(),
            csrf_token: self.csrf_token.clone(),
            username: self.user.username.clone(),
            admin: self.user.admin,
            expire: self.expire.clone(),
        }
    }
}

/// The unexpired session `session_id` and its (existing) user.
fn live_session(tx: &mut dyn Tx, session_id: &str) -> Result<Option<LiveSession>, DbError> {
    let key = session_key(session_id);
    let row = tx.query_opt(
        "SELECT session.csrf_token, session.expire, user.user_id, user.username, user.admin \
         FROM session JOIN user ON user.user_id = session.user_id \
         WHERE session.session_id = ? AND session.expire > ?",
        args![key.as_str(), now()],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(LiveSession {
        key,
        csrf_token: row.text(0)?,
        expire: row.text(1)?,
        user: User {
            user_id: row.text(2)?,
            username: row.text(3)?,
            admin: row.bool(4)?,
        },
    }))
}

/// The user of a live session; with `changes` (anything but a read) only if `csrf_token` is
/// the session's.
pub(crate) fn session_user(
    tx: &mut dyn Tx,
    session_id: &str,
    csrf_token: Option<&str>,
    changes: bool,
) -> Result<User, DbError> {
    let session = live_session(tx, session_id)?.ok_or_else(no_session)?;
    if changes
        && !csrf_token.is_some_and(|t| same_secret(t.as_bytes(), session.csrf_token.as_bytes()))
    {
        return Err(stale_csrf());
    }
    Ok(session.user)
}

fn open_session(tx: &mut dyn Tx, user: &User, ttl: Duration) -> Result<SessionInfo, DbError> {
    let session_id = random_token(32)?;
    let csrf_token = random_token(32)?;
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(36_500));
    let expire = stamp(
        chrono::Utc::now()
            .checked_add_signed(ttl)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
    );
    tx.exec(
        "INSERT INTO session (session_id, user_id, csrf_token, expire) VALUES (?, ?, ?, ?)",
        args![
            session_key(&session_id),
            user.user_id.as_str(),
            csrf_token.as_str(),
            expire.as_str()
        ],
    )?;
    Ok(SessionInfo {
        session_id,
        csrf_token,
        username: user.username.clone(),
        admin: user.admin,
        expire,
    })
}

// ---- users --------------------------------------------------------------------------------

/// The caller, if an admin; `what` says what was refused.
fn admin_only(
    tx: &mut dyn Tx,
    auth: &UserAuth,
    changes: bool,
    what: &str,
) -> Result<User, DbError> {
    let user = authenticate(tx, auth, changes)?;
    if user.admin {
        Ok(user)
    } else {
        Err(DbError::Forbidden(format!("only an admin may {what}")))
    }
}

/// The caller, if it may set `username`'s password: an admin, or that user.
fn may_set_password(tx: &mut dyn Tx, auth: &UserAuth, username: &str) -> Result<User, DbError> {
    let user = authenticate(tx, auth, true)?;
    if !user.admin && user.username != username {
        return Err(DbError::Forbidden(
            "only an admin may set another user's password".into(),
        ));
    }
    if !user_exists(tx, username)? {
        return Err(no_user(username));
    }
    Ok(user)
}

fn user_exists(tx: &mut dyn Tx, username: &str) -> Result<bool, DbError> {
    Ok(tx
        .query_opt(
            "SELECT user_id FROM user WHERE username = ?",
            args![username],
        )?
        .is_some())
}

struct UserRow {
    username: String,
    admin: bool,
    roles: String,
}

impl UserRow {
    fn roles(&self) -> Result<Vec<String>, DbError> {
        roles_of(&self.username, self.admin, &self.roles)
    }
}

fn user_row(tx: &mut dyn Tx, username: &str) -> Result<UserRow, DbError> {
    let row = tx
        .query_opt(
            "SELECT username, admin, roles FROM user WHERE username = ?",
            args![username],
        )?
        .ok_or_else(|| no_user(username))?;
    Ok(UserRow {
        username: row.text(0)?,
        admin: row.bool(1)?,
        roles: row.text(2)?,
    })
}

/// Creates a user with a stored hash (from [`hash_password`]). No rights are checked: the
/// callers are the admin-only request and the shell (`iceprod user add`).
pub fn add_user(
    tx: &mut dyn Tx,
    rules: OpRules,
    username: &str,
    password_hash: &str,
    admin: bool,
) -> Result<(), DbError> {
    check_username(username)?;
    if user_exists(tx, username)? {
        return Err(user_taken(username));
    }
    let roles: &[&str] = if admin { &["admin", "user"] } else { &["user"] };
    let user_id = new_global_id(tx, rules, "user")?;
    tx.exec(
        "INSERT INTO user (user_id, username, admin, password_hash, roles) VALUES (?, ?, ?, ?, ?)",
        args![
            user_id.as_str(),
            username,
            admin,
            password_hash,
            json!(roles).to_string()
        ],
    )?;
    Ok(())
}

/// Sets a user's stored hash and ends their sessions (but `keep`, the stored key of the
/// session that made the change), so a changed password locks out whoever knew the old one.
/// No rights are checked (see [`add_user`]).
pub fn set_password_hash(
    tx: &mut dyn Tx,
    username: &str,
    password_hash: &str,
    keep: Option<&str>,
) -> Result<(), DbError> {
    let user_id = tx
        .query_opt(
            "SELECT user_id FROM user WHERE username = ?",
            args![username],
        )?
        .ok_or_else(|| no_user(username))?
        .text(0)?;
    tx.exec(
        "UPDATE user SET password_hash = ? WHERE user_id = ?",
        args![password_hash, user_id.as_str()],
    )?;
    tx.exec(
        "DELETE FROM session WHERE user_id = ? AND session_id <> ?",
        args![user_id.as_str(), keep.unwrap_or("")],
    )?;
    Ok(())
}

/// Every user, by name, without hashes.
pub fn list_users(tx: &mut dyn Tx) -> Result<Vec<UserInfo>, DbError> {
    let rows = tx.query(
        "SELECT username, admin, roles, `groups`, last_login_time FROM user ORDER BY username",
        args![],
    )?;
    rows.iter()
        .map(|row| {
            let username = row.text(0)?;
            let admin = row.bool(1)?;
            let roles = roles_of(&username, admin, &row.text(2)?)?;
            let groups_text = row.text(3)?;
            let groups = serde_json::from_str(&groups_text).map_err(|_| {
                DbError::Schema(format!("user {username} has groups {groups_text}"))
            })?;
            Ok(UserInfo {
                username,
                admin,
                roles,
                groups,
                last_login_time: row.opt_text(4)?,
            })
        })
        .collect()
}

/// Sets a user's roles (checked by [`check_roles`]) and its admin flag with them. The last
/// admin keeps the role: without one, no one could manage users from the website.
fn set_roles(tx: &mut dyn Tx, username: &str, roles: &[String]) -> Result<(), DbError> {
    let row = user_row(tx, username)?;
    let admin = roles.iter().any(|r| r == "admin");
    if row.admin && !admin {
        let admins = tx
            .query_opt("SELECT count(*) FROM user WHERE admin = 1", args![])?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0);
        if admins <= 1 {
            return Err(DbError::Refused(format!(
                "{username} is the last admin; make another user an admin first"
            )));
        }
    }
    tx.exec(
        "UPDATE user SET roles = ?, admin = ? WHERE username = ?",
        args![json!(roles).to_string(), admin, username],
    )?;
    Ok(())
}

// ---- groups -------------------------------------------------------------------------------

pub fn get_groups(tx: &mut dyn Tx) -> Result<Vec<Group>, DbError> {
    let rows = tx.query(
        "SELECT name, description, priority FROM `groups` ORDER BY name",
        args![],
    )?;
    rows.iter()
        .map(|row| {
            Ok(Group {
                name: row.text(0)?,
                description: row.text(1)?,
                priority: row.real(2)?,
            })
        })
        .collect()
}

/// Replaces the groups with `groups`, all checked before anything is written. A group that
/// stays keeps its id (datasets refer to it); the others are removed.
fn set_groups(tx: &mut dyn Tx, rules: OpRules, groups: &[Group]) -> Result<(), DbError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, group) in groups.iter().enumerate() {
        let at = format!("groups[{i}]");
        check_group(&at, group)?;
        if !names.insert(group.name.as_str()) {
            return Err(DbError::Refused(format!(
                "{at}.name {} is listed twice",
                group.name
            )));
        }
    }
    let existing = tx.query("SELECT groups_id, name FROM `groups`", args![])?;
    for row in &existing {
        let name = row.text(1)?;
        if !names.contains(name.as_str()) {
            tx.exec(
                "DELETE FROM `groups` WHERE groups_id = ?",
                args![row.text(0)?],
            )?;
        }
    }
    for group in groups {
        let updated = tx.exec(
            "UPDATE `groups` SET description = ?, priority = ? WHERE name = ?",
            args![
                group.description.as_str(),
                group.priority,
                group.name.as_str()
            ],
        )?;
        // MariaDB counts only rows whose values changed: look before inserting.
        if updated == 0
            && tx
                .query_opt(
                    "SELECT groups_id FROM `groups` WHERE name = ?",
                    args![group.name.as_str()],
                )?
                .is_none()
        {
            let id = new_global_id(tx, rules, "groups")?;
            tx.exec(
                "INSERT INTO `groups` (groups_id, name, description, priority) \
                 VALUES (?, ?, ?, ?)",
                args![
                    id,
                    group.name.as_str(),
                    group.description.as_str(),
                    group.priority
                ],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_names_its_scheme_and_rounds_and_verifies_only_its_password() {
        let stored = hash_password("correct horse").unwrap();
        let parts: Vec<&str> = stored.split('$').collect();
        assert_eq!(parts[0], "pbkdf2-sha256");
        assert_eq!(parts[1], PBKDF2_ITERATIONS.to_string());
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("correct horsf", &stored));
        assert!(!verify_password("", &stored));
        // Salted: the same password hashes differently each time.
        assert_ne!(stored, hash_password("correct horse").unwrap());
    }

    #[test]
    fn a_hash_with_fewer_rounds_still_verifies() {
        let salt = [7u8; SALT_BYTES];
        let stored = format!(
            "{SCHEME}$1000${}${}",
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(derive("pw", &salt, 1000))
        );
        assert!(verify_password("pw", &stored));
        assert!(!verify_password("pw", &stored.replace("$1000$", "$1001$")));
    }

    #[test]
    fn values_that_are_no_hash_match_nothing() {
        for stored in [
            "",
            "pw",
            "pbkdf2-sha256$0$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pbkdf2-sha256$99999999999$AAAA$AAAA",
            "md5$1$a$b",
        ] {
            assert!(!verify_password("pw", stored), "{stored}");
            assert!(!verify_password("", stored), "{stored}");
        }
    }

    #[test]
    fn passwords_are_refused_when_empty_or_too_long() {
        assert!(hash_password("").is_err());
        assert!(hash_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES)).is_ok());
    }

    #[test]
    fn usernames_are_plain_words() {
        for ok in ["admin", "a", "jane.doe@icecube", "x_1-2"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_USERNAME_CHARS + 1);
        for bad in [
            "",
            " admin",
            "-x",
            "a b",
            "o'brien",
            "<script>",
            "a\"b",
            "é",
            long.as_str(),
        ] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_ids_are_stored_hashed() {
        let key = session_key("abc");
        assert_eq!(key.len(), 64);
        assert_ne!(key, "abc");
        assert_eq!(key, session_key("abc"));
    }

    #[test]
    fn roles_follow_the_admin_flag() {
        assert_eq!(roles_of("u", true, "[]").unwrap(), ["admin"]);
        assert_eq!(
            roles_of("u", false, r#"["admin","user"]"#).unwrap(),
            ["user"]
        );
        assert!(roles_of("u", false, "not json").is_err());
        assert!(check_roles(&["root".into()]).is_err());
        assert_eq!(
            check_roles(&["user".into(), "admin".into(), "user".into()]).unwrap(),
            ["admin", "user"]
        );
    }
}
