//! Accounts, sessions, groups and roles through the db module's messages, on SQLite and on
//! MariaDB (see `support`): logins, expiry, logout, CSRF on every change, admin-only requests,
//! passwords, groups, roles, and input meant to break things.

mod support;

use std::time::Duration;

use iceprod_db::accounts::{self, PBKDF2_ITERATIONS};
use iceprod_db::args;
use iceprod_runtime::harness::Harness;
use iceprod_runtime::web::{AccountReply, AccountRequest, Group, SessionInfo, UserAuth};
use iceprod_runtime::{CallError, DatasetSubmission, DbReply, DbRequest, PublicQuery, UserAction};
use serde_json::json;
use support::{call_db as db, TestDb};

on_both_backends!(
    a_login_opens_a_session_and_every_failure_looks_the_same,
    an_expired_session_is_refused_and_removed,
    logout_needs_the_csrf_token,
    a_session_changes_nothing_without_its_csrf_token,
    admin_only_requests_refuse_users,
    users_set_their_own_password_and_admins_anyones,
    admins_create_users_with_plain_names_only,
    groups_are_replaced_whole_and_checked_first,
    roles_and_the_admin_flag_agree,
    the_first_admin_has_a_password_hash_and_both_roles,
    plain_users_made_before_the_first_start_still_get_an_admin,
);

const HOUR: Duration = Duration::from_secs(3600);

/// Adds `name` with `password` straight into the database (as `iceprod user add` does).
fn add(d: &TestDb, name: &str, password: &str, admin: bool) {
    let rules = iceprod_db::rules_of(&d.config(""));
    let hash = accounts::hash_password(password).unwrap();
    d.tx(|tx| accounts::add_user(tx, rules, name, &hash, admin));
}

fn login(h: &mut Harness, username: &str, password: &str) -> Result<SessionInfo, CallError> {
    let reply = db(
        h,
        DbRequest::Account(AccountRequest::Login {
            username: username.into(),
            password: password.into(),
            ttl: HOUR,
        }),
    )?;
    match reply {
        DbReply::Account(AccountReply::Session(s)) => Ok(s),
        other => panic!("{other:?}"),
    }
}

fn account(h: &mut Harness, request: AccountRequest) -> Result<DbReply, CallError> {
    db(h, DbRequest::Account(request))
}

/// The session as a browser presents it: with its CSRF token, or with `csrf`.
fn with_csrf(s: &SessionInfo) -> UserAuth {
    UserAuth::Session {
        session_id: s.session_id.clone(),
        csrf_token: Some(s.csrf_token.clone()),
    }
}

fn without_csrf(s: &SessionInfo) -> UserAuth {
    UserAuth::Session {
        session_id: s.session_id.clone(),
        csrf_token: None,
    }
}

fn forbidden(result: Result<impl std::fmt::Debug, CallError>) -> String {
    match result {
        Err(CallError::Forbidden(why)) => why,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

fn refused(result: Result<impl std::fmt::Debug, CallError>) -> String {
    match result {
        Err(CallError::Refused(why)) => why,
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn a_login_opens_a_session_and_every_failure_looks_the_same(d: &TestDb) {
    let mut h = d.start("");
    add(d, "bob", "s3cret 'quoted' <b>", false);
    let session = login(&mut h, "bob", "s3cret 'quoted' <b>").unwrap();
    assert_eq!((session.username.as_str(), session.admin), ("bob", false));
    assert!(session.session_id.len() >= 43, "{}", session.session_id);
    assert!(session.csrf_token.len() >= 43, "{}", session.csrf_token);
    assert!(session.expire.ends_with('Z'), "{}", session.expire);
    // The table holds a hash of the id, never the id itself.
    let stored = d.texts("SELECT session_id FROM session", args![]);
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], session.session_id);
    assert!(!d.texts(
        "SELECT last_login_time FROM user WHERE username = 'bob'",
        args![]
    )[0]
    .is_empty());
    // The lookup gives the same session.
    let found = account(
        &mut h,
        AccountRequest::Session {
            session_id: session.session_id.clone(),
        },
    );
    assert_eq!(
        found,
        Ok(DbReply::Account(AccountReply::Session(session.clone())))
    );
    // Wrong password, unknown user, hostile or empty input: one answer, no session.
    let wrong = forbidden(login(&mut h, "bob", "s3cret"));
    let long = "x".repeat(100_000);
    for (user, password) in [
        ("nobody", "s3cret 'quoted' <b>"),
        ("bob", ""),
        ("bob' OR '1'='1", "x' OR '1'='1"),
        ("", ""),
        ("<script>alert(1)</script>", "pw"),
        (long.as_str(), long.as_str()),
    ] {
        assert_eq!(
            forbidden(login(&mut h, user, password)),
            wrong,
            "{user:.20}"
        );
    }
    assert_eq!(d.count("SELECT count(*) FROM session", args![]), 1);
    // Two logins, two sessions.
    let again = login(&mut h, "bob", "s3cret 'quoted' <b>").unwrap();
    assert_ne!(again.session_id, session.session_id);
    assert_ne!(again.csrf_token, session.csrf_token);
}

fn an_expired_session_is_refused_and_removed(d: &TestDb) {
    let mut h = d.start("");
    add(d, "bob", "pw", false);
    let old = login(&mut h, "bob", "pw").unwrap();
    let live = login(&mut h, "bob", "pw").unwrap();
    d.exec(
        "UPDATE session SET expire = '2000-01-01T00:00:00.000000Z' WHERE expire = ?",
        args![old.expire.as_str()],
    );
    // (The two logins are a password check apart, so their expiry times differ.)
    assert_eq!(
        d.count(
            "SELECT count(*) FROM session WHERE expire > '2001'",
            args![]
        ),
        1
    );
    assert!(forbidden(account(
        &mut h,
        AccountRequest::Session {
            session_id: old.session_id.clone()
        }
    ))
    .contains("expired"));
    let read = UserAction::Read(PublicQuery::DatasetsByStatus);
    forbidden(db(
        &mut h,
        DbRequest::AsUser {
            auth: without_csrf(&old),
            action: read.clone(),
        },
    ));
    assert!(db(
        &mut h,
        DbRequest::AsUser {
            auth: without_csrf(&live),
            action: read,
        },
    )
    .is_ok());
    // The schedule's cleanup removes the expired session and keeps the live one.
    assert_eq!(db(&mut h, DbRequest::RemoveExpired), Ok(DbReply::Rows(1)));
    assert_eq!(d.count("SELECT count(*) FROM session", args![]), 1);
    assert!(account(
        &mut h,
        AccountRequest::Session {
            session_id: live.session_id.clone()
        }
    )
    .is_ok());
    // A session of no time is refused rather than opened already expired.
    refused(account(
        &mut h,
        AccountRequest::Login {
            username: "bob".into(),
            password: "pw".into(),
            ttl: Duration::ZERO,
        },
    ));
}

fn logout_needs_the_csrf_token(d: &TestDb) {
    let mut h = d.start("");
    add(d, "bob", "pw", false);
    let s = login(&mut h, "bob", "pw").unwrap();
    let other = login(&mut h, "bob", "pw").unwrap();
    for token in ["", "nope", other.csrf_token.as_str()] {
        forbidden(account(
            &mut h,
            AccountRequest::Logout {
                session_id: s.session_id.clone(),
                csrf_token: token.into(),
            },
        ));
    }
    let lookup = |h: &mut Harness, s: &SessionInfo| {
        account(
            h,
            AccountRequest::Session {
                session_id: s.session_id.clone(),
            },
        )
    };
    assert!(lookup(&mut h, &s).is_ok(), "a refused logout ends nothing");
    assert_eq!(
        account(
            &mut h,
            AccountRequest::Logout {
                session_id: s.session_id.clone(),
                csrf_token: s.csrf_token.clone(),
            },
        ),
        Ok(DbReply::Done)
    );
    forbidden(lookup(&mut h, &s));
    assert!(lookup(&mut h, &other).is_ok(), "only that session ended");
}

fn submission(description: &str) -> UserAction {
    UserAction::SubmitDataset(Box::new(DatasetSubmission {
        config: json!({"version": 3, "tasks": [{"name": "gen"}]}).to_string(),
        description: description.into(),
        njobs: 1,
        gridspec: String::new(),
        debug: false,
        group: None,
        username: String::new(),
        stat_keys: vec![],
    }))
}

fn a_session_changes_nothing_without_its_csrf_token(d: &TestDb) {
    let mut h = d.start("");
    add(d, "bob", "pw", false);
    let s = login(&mut h, "bob", "pw").unwrap();
    let other = login(&mut h, "bob", "pw").unwrap();
    let dataset_id = match db(
        &mut h,
        DbRequest::AsUser {
            auth: with_csrf(&s),
            action: submission("<script>alert('x')</script>"),
        },
    ) {
        Ok(DbReply::Dataset { dataset_id, .. }) => dataset_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        d.texts("SELECT username FROM dataset", args![]),
        vec!["bob"]
    );
    let stale = UserAuth::Session {
        session_id: s.session_id.clone(),
        csrf_token: Some(other.csrf_token.clone()),
    };
    for auth in [without_csrf(&s), stale] {
        let why = forbidden(db(
            &mut h,
            DbRequest::AsUser {
                auth: auth.clone(),
                action: UserAction::SetDescription {
                    dataset_id: dataset_id.clone(),
                    description: "changed".into(),
                },
            },
        ));
        assert!(why.contains("CSRF"), "{why}");
        forbidden(db(
            &mut h,
            DbRequest::AsUser {
                auth,
                action: submission("another"),
            },
        ));
    }
    assert_eq!(
        d.texts("SELECT description FROM dataset", args![]),
        vec!["<script>alert('x')</script>"],
        "stored as given, and unchanged by the refused requests"
    );
    assert_eq!(d.count("SELECT count(*) FROM history", args![]), 1);
    // A read needs no token.
    assert!(db(
        &mut h,
        DbRequest::AsUser {
            auth: without_csrf(&s),
            action: UserAction::Read(PublicQuery::DatasetsByStatus),
        },
    )
    .is_ok());
    // An unknown session is refused whatever it carries.
    forbidden(db(
        &mut h,
        DbRequest::AsUser {
            auth: UserAuth::Session {
                session_id: "forged".into(),
                csrf_token: Some(s.csrf_token.clone()),
            },
            action: submission("forged"),
        },
    ));
}

fn groups(list: &[(&str, f64)]) -> Vec<Group> {
    list.iter()
        .map(|(name, priority)| Group {
            name: name.to_string(),
            description: format!("{name} group"),
            priority: *priority,
        })
        .collect()
}

fn admin_only_requests_refuse_users(d: &TestDb) {
    let mut h = d.start("");
    add(d, "bob", "pw", false);
    add(d, "root", "pw", true);
    let bob = login(&mut h, "bob", "pw").unwrap();
    let root = login(&mut h, "root", "pw").unwrap();
    let before_users = d.count("SELECT count(*) FROM user", args![]);
    forbidden(account(
        &mut h,
        AccountRequest::CreateUser {
            auth: with_csrf(&bob),
            username: "carol".into(),
            password: "pw".into(),
            admin: true,
        },
    ));
    forbidden(account(
        &mut h,
        AccountRequest::SetGroups {
            auth: with_csrf(&bob),
            groups: groups(&[("/sim", 2.0)]),
        },
    ));
    forbidden(account(
        &mut h,
        AccountRequest::SetUserRoles {
            auth: with_csrf(&bob),
            username: "bob".into(),
            roles: vec!["admin".into()],
        },
    ));
    forbidden(account(
        &mut h,
        AccountRequest::ListUsers {
            auth: with_csrf(&bob),
        },
    ));
    forbidden(account(
        &mut h,
        AccountRequest::GetUserRoles {
            auth: with_csrf(&bob),
            username: "root".into(),
        },
    ));
    forbidden(account(
        &mut h,
        AccountRequest::SetPassword {
            auth: with_csrf(&bob),
            username: "root".into(),
            password: "mine now".into(),
        },
    ));
    assert_eq!(d.count("SELECT count(*) FROM user", args![]), before_users);
    assert_eq!(d.count("SELECT count(*) FROM `groups`", args![]), 0);
    assert!(login(&mut h, "root", "pw").is_ok());
    assert_eq!(
        d.count("SELECT count(*) FROM user WHERE admin = 1", args![]),
        2
    );
    // Their own roles they may see; an admin sees everyone's, and the list, without a token.
    assert_eq!(
        account(
            &mut h,
            AccountRequest::GetUserRoles {
                auth: without_csrf(&bob),
                username: "bob".into(),
            },
        ),
        Ok(DbReply::Account(AccountReply::Roles(vec!["user".into()])))
    );
    let users = match account(
        &mut h,
        AccountRequest::ListUsers {
            auth: without_csrf(&root),
        },
    ) {
        Ok(DbReply::Account(AccountReply::Users(users))) => users,
        other => panic!("{other:?}"),
    };
    let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["admin", "bob", "root"]);
    assert!(users[2].admin && users[2].last_login_time.is_some());
    // An admin's session still needs its token to change anything.
    forbidden(account(
        &mut h,
        AccountRequest::SetGroups {
            auth: without_csrf(&root),
            groups: groups(&[("/sim", 2.0)]),
        },
    ));
    assert_eq!(d.count("SELECT count(*) FROM `groups`", args![]), 0);
}

fn users_set_their_own_password_and_admins_anyones(d: &TestDb) {
    let mut h = d.start("");
    add(d, "bob", "old", false);
    add(d, "root", "pw", true);
    let bob = login(&mut h, "bob", "old").unwrap();
    let bob_elsewhere = login(&mut h, "bob", "old").unwrap();
    let set = |h: &mut Harness, auth: UserAuth, username: &str, password: &str| {
        account(
            h,
            AccountRequest::SetPassword {
                auth,
                username: username.into(),
                password: password.into(),
            },
        )
    };
    // Without the token nothing changes.
    forbidden(set(&mut h, without_csrf(&bob), "bob", "new"));
    assert!(login(&mut h, "bob", "old").is_ok());
    // Empty and oversized passwords are refused.
    refused(set(&mut h, with_csrf(&bob), "bob", ""));
    refused(set(&mut h, with_csrf(&bob), "bob", &"x".repeat(1025)));
    assert_eq!(
        set(&mut h, with_csrf(&bob), "bob", "new 'one'"),
        Ok(DbReply::Done)
    );
    forbidden(login(&mut h, "bob", "old"));
    let hash = &d.texts(
        "SELECT password_hash FROM user WHERE username = 'bob'",
        args![],
    )[0];
    assert!(
        hash.starts_with(&format!("pbkdf2-sha256${PBKDF2_ITERATIONS}$")),
        "{hash}"
    );
    assert!(!hash.contains("new"));
    // The session that changed it goes on; the others ended.
    let lookup = |h: &mut Harness, s: &SessionInfo| {
        account(
            h,
            AccountRequest::Session {
                session_id: s.session_id.clone(),
            },
        )
    };
    assert!(lookup(&mut h, &bob).is_ok());
    forbidden(lookup(&mut h, &bob_elsewhere));
    // An admin sets anyone's; an unknown user is named.
    let root = login(&mut h, "root", "pw").unwrap();
    assert_eq!(
        set(&mut h, with_csrf(&root), "bob", "from root"),
        Ok(DbReply::Done)
    );
    assert!(login(&mut h, "bob", "from root").is_ok());
    assert!(refused(set(&mut h, with_csrf(&root), "nobody", "x")).contains("nobody"));
}

fn admins_create_users_with_plain_names_only(d: &TestDb) {
    let mut h = d.start("");
    add(d, "root", "pw", true);
    let root = login(&mut h, "root", "pw").unwrap();
    let create = |h: &mut Harness, username: &str, password: &str, admin: bool| {
        account(
            h,
            AccountRequest::CreateUser {
                auth: with_csrf(&root),
                username: username.into(),
                password: password.into(),
                admin,
            },
        )
    };
    assert_eq!(create(&mut h, "carol", "c pw", false), Ok(DbReply::Done));
    let carol = login(&mut h, "carol", "c pw").unwrap();
    assert!(!carol.admin);
    assert!(refused(create(&mut h, "carol", "other", false)).contains("already exists"));
    assert!(
        login(&mut h, "carol", "c pw").is_ok(),
        "the first carol stays"
    );
    let before = d.count("SELECT count(*) FROM user", args![]);
    let long = "a".repeat(65);
    for name in [
        "",
        "o'brien",
        "a\"b",
        "<img src=x onerror=alert(1)>",
        "x; DROP TABLE user",
        long.as_str(),
    ] {
        refused(create(&mut h, name, "pw", false));
    }
    refused(create(&mut h, "dave", "", false));
    assert_eq!(d.count("SELECT count(*) FROM user", args![]), before);
    assert_eq!(create(&mut h, "dave", "d", true), Ok(DbReply::Done));
    assert!(login(&mut h, "dave", "d").unwrap().admin);
    assert_eq!(
        d.texts(
            "SELECT action FROM history WHERE subject IN ('carol', 'dave') ORDER BY subject",
            args![]
        ),
        vec!["create_user", "create_user"]
    );
}

fn get_groups(h: &mut Harness) -> Vec<Group> {
    match account(h, AccountRequest::GetGroups { auth: None }) {
        Ok(DbReply::Account(AccountReply::Groups(g))) => g,
        other => panic!("{other:?}"),
    }
}

fn groups_are_replaced_whole_and_checked_first(d: &TestDb) {
    let mut h = d.start("");
    add(d, "root", "pw", true);
    let root = login(&mut h, "root", "pw").unwrap();
    let set = |h: &mut Harness, groups: Vec<Group>| {
        account(
            h,
            AccountRequest::SetGroups {
                auth: with_csrf(&root),
                groups,
            },
        )
    };
    let mut first = groups(&[("/sim", 2.0), ("/sim/high", 0.5)]);
    first[0].description = "it's <b>\"quoted\"</b>".into();
    assert_eq!(set(&mut h, first.clone()), Ok(DbReply::Done));
    assert_eq!(get_groups(&mut h), first);
    let high_id = d.texts(
        "SELECT groups_id FROM `groups` WHERE name = '/sim/high'",
        args![],
    );
    // Replaced: /sim goes, /sim/high keeps its id, /ana comes.
    let second = groups(&[("/sim/high", 3.0), ("/ana", 1.0)]);
    assert_eq!(set(&mut h, second.clone()), Ok(DbReply::Done));
    let mut sorted = second.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(get_groups(&mut h), sorted);
    assert_eq!(
        d.texts(
            "SELECT groups_id FROM `groups` WHERE name = '/sim/high'",
            args![]
        ),
        high_id
    );
    // Anything wrong and nothing changes; the message names the entry.
    let long = format!("/{}", "a".repeat(255));
    let bad: Vec<(Vec<Group>, &str)> = vec![
        (
            groups(&[("/ok", 1.0), ("/zero", 0.0)]),
            "groups[1].priority",
        ),
        (groups(&[("/neg", -1.0)]), "groups[0].priority"),
        (groups(&[("/nan", f64::NAN)]), "groups[0].priority"),
        (groups(&[("/inf", f64::INFINITY)]), "groups[0].priority"),
        (groups(&[("noslash", 1.0)]), "groups[0].name"),
        (groups(&[("/", 1.0)]), "groups[0].name"),
        (groups(&[("/a//b", 1.0)]), "groups[0].name"),
        (groups(&[("/<script>", 1.0)]), "groups[0].name"),
        (groups(&[("/it's", 1.0)]), "groups[0].name"),
        (groups(&[(long.as_str(), 1.0)]), "groups[0].name"),
        (groups(&[("/a", 1.0), ("/a", 2.0)]), "listed twice"),
    ];
    for (groups, expect) in bad {
        let why = refused(set(&mut h, groups.clone()));
        assert!(why.contains(expect), "{groups:?}: {why}");
    }
    assert_eq!(get_groups(&mut h), sorted);
    // An empty list removes every group.
    assert_eq!(set(&mut h, vec![]), Ok(DbReply::Done));
    assert_eq!(get_groups(&mut h), vec![]);
}

fn roles(h: &mut Harness, auth: UserAuth, username: &str) -> Vec<String> {
    match account(
        h,
        AccountRequest::GetUserRoles {
            auth,
            username: username.into(),
        },
    ) {
        Ok(DbReply::Account(AccountReply::Roles(r))) => r,
        other => panic!("{other:?}"),
    }
}

fn roles_and_the_admin_flag_agree(d: &TestDb) {
    let mut h = d.start("");
    add(d, "bob", "pw", false);
    add(d, "root", "pw", true);
    let root = login(&mut h, "root", "pw").unwrap();
    let set = |h: &mut Harness, username: &str, roles: &[&str]| {
        account(
            h,
            AccountRequest::SetUserRoles {
                auth: with_csrf(&root),
                username: username.into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
            },
        )
    };
    assert_eq!(roles(&mut h, with_csrf(&root), "root"), ["admin", "user"]);
    assert_eq!(
        set(&mut h, "bob", &["user", "admin", "user"]),
        Ok(DbReply::Done)
    );
    assert_eq!(roles(&mut h, with_csrf(&root), "bob"), ["admin", "user"]);
    assert_eq!(
        d.count("SELECT admin FROM user WHERE username = 'bob'", args![]),
        1
    );
    assert!(login(&mut h, "bob", "pw").unwrap().admin);
    assert_eq!(set(&mut h, "bob", &["user"]), Ok(DbReply::Done));
    assert_eq!(
        d.count("SELECT admin FROM user WHERE username = 'bob'", args![]),
        0
    );
    // Unknown roles and users are named; nothing changes.
    assert!(refused(set(&mut h, "bob", &["user", "root<script>"])).contains("unknown role"));
    assert!(refused(set(&mut h, "nobody", &["user"])).contains("nobody"));
    assert_eq!(roles(&mut h, with_csrf(&root), "bob"), ["user"]);
    // The last admin keeps the role: first `admin` (made by the first start) steps down,
    // then `root`, the last, cannot.
    assert_eq!(set(&mut h, "admin", &["user"]), Ok(DbReply::Done));
    assert!(refused(set(&mut h, "root", &["user"])).contains("last admin"));
    assert_eq!(
        d.count("SELECT count(*) FROM user WHERE admin = 1", args![]),
        1
    );
}

fn the_first_admin_has_a_password_hash_and_both_roles(d: &TestDb) {
    let _h = d.start("");
    let rows = d.rows(
        "SELECT password_hash, roles, admin FROM user WHERE username = 'admin'",
        args![],
    );
    assert_eq!(rows.len(), 1);
    let hash = rows[0].text(0).unwrap();
    assert!(hash.starts_with("pbkdf2-sha256$"), "{hash}");
    assert_eq!(rows[0].text(1).unwrap(), r#"["admin","user"]"#);
    assert!(rows[0].bool(2).unwrap());
    // Its passkey is written, as before.
    let key = std::fs::read_to_string(
        d.config("")
            .site
            .state_dir
            .join(iceprod_db::users::ADMIN_PASSKEY_FILE),
    )
    .unwrap();
    assert!(!key.trim().is_empty());
}

fn plain_users_made_before_the_first_start_still_get_an_admin(d: &TestDb) {
    // As `iceprod user add` does before the server ever ran.
    add(d, "alice", "pw", false);
    let _h = d.start("");
    assert_eq!(
        d.texts("SELECT username FROM user WHERE admin = 1", args![]),
        vec!["admin"]
    );
    // A site whose admin was made before the first start gets no second one.
    let other = TestDb::sqlite();
    add(&other, "root", "pw", true);
    let _h = other.start("");
    assert_eq!(
        other.texts("SELECT username FROM user", args![]),
        vec!["root"]
    );
}
