//! `iceprod user add|passwd|list` through the real binary, with the server stopped and
//! running, and the first start's admin password: each password made or set here logs in.

mod common;

use common::{login, user_cli, Server};
use serde_json::json;

/// The password a command printed once (`password: PW`).
fn printed_password(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password printed in {out}"))
        .trim()
        .to_string()
}

#[test]
fn users_are_added_listed_and_given_passwords_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("iceprod.toml");
    std::fs::write(&config, "[website]\nport = 1\n").unwrap();
    let user = |args: &[&str], stdin: &str| user_cli(&config, args, stdin);

    let (ok, out, err) = user(&["add", "alice"], "");
    assert!(ok, "{out}{err}");
    assert!(out.contains("created user alice"), "{out}");
    let alice_pw = printed_password(&out);
    assert!(alice_pw.len() >= 20, "{alice_pw}");
    let (ok, out, err) = user(&["add", "bob", "--admin", "--password-stdin"], "b0b's pw\n");
    assert!(ok, "{out}{err}");
    assert!(
        !out.contains("password:"),
        "a given password is not printed: {out}"
    );

    let (ok, out, _) = user(&["list"], "");
    assert!(ok);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![vec!["alice", "user", "-"], vec!["bob", "admin,user", "-"]]
    );

    assert_eq!(
        login(&config, "alice", &alice_pw).unwrap().username,
        "alice"
    );
    assert!(login(&config, "bob", "b0b's pw").unwrap().admin);

    // Mistakes are named and change nothing.
    let (ok, _, err) = user(&["add", "alice", "--password-stdin"], "other\n");
    assert!(!ok && err.contains("user alice already exists"), "{err}");
    let (ok, _, err) = user(&["passwd", "carol"], "");
    assert!(!ok && err.contains("no user carol"), "{err}");
    let (ok, _, err) = user(&["passwd", "alice", "--password-stdin"], "\n");
    assert!(!ok && err.contains("must not be empty"), "{err}");
    let (ok, _, err) = user(&["add", "<script>", "--password-stdin"], "pw\n");
    assert!(!ok && err.contains("a username is"), "{err}");
    assert!(login(&config, "alice", &alice_pw).is_ok());

    // A new password replaces the old one.
    let (ok, out, err) = user(&["passwd", "alice", "--password-stdin"], "new one\r\n");
    assert!(ok, "{out}{err}");
    assert!(login(&config, "alice", &alice_pw).is_err());
    assert!(login(&config, "alice", "new one").is_ok());
    let (ok, out, _) = user(&["passwd", "alice"], "");
    assert!(ok);
    assert!(login(&config, "alice", &printed_password(&out)).is_ok());
    assert!(login(&config, "alice", "new one").is_err());
}

#[test]
fn the_first_start_logs_the_admin_password_once_and_the_commands_work_while_it_runs() {
    let server = Server::start("");
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("password: ")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("user admin"), "{}", lines[0]);
    let password = lines[0]
        .split("password: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let config = server.config_path();
    assert!(login(&config, "admin", password).unwrap().admin);

    // While the server runs: a new user, who then acts over JSON-RPC in a session.
    let (ok, out, err) = user_cli(&config, &["add", "carol"], "");
    assert!(ok, "{out}{err}");
    let session = login(&config, "carol", &printed_password(&out)).unwrap();
    let (status, v) = server
        .rpc_in_session(
            "get_user_roles",
            json!({"username": "carol"}),
            &session.session_id,
            None,
        )
        .unwrap();
    assert_eq!((status, &v["result"]), (200, &json!(["user"])), "{v}");
    let (ok, out, _) = user_cli(&config, &["list"], "");
    assert!(ok);
    assert!(out.lines().any(|l| l.starts_with("carol ")), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("admin ") && l.contains("admin,user") && !l.ends_with(" -")),
        "admin logged in above: {out}"
    );
}
