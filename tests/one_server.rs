//! One server per database (issue 10), through the real binary: a second server on a
//! database another server holds fails at start naming the first, the first goes on serving;
//! the site id lives in the database (docs/operations.md), so it survives losing the state folder, an
//! older server's `site_id` file is adopted, and a pin that contradicts the database is
//! refused; the db module's restarts keep the database locked.

mod common;

use std::path::{Path, PathBuf};

use common::{base_config, db_text, Server, WAIT};
use serde_json::json;

fn toml_path(path: &Path) -> String {
    format!(
        "\"{}\"",
        path.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name is readable")
        .trim()
        .to_string()
}

/// The SQLite file of `server` (the default `[db] path`).
fn database_of(server: &Server) -> PathBuf {
    server.dir.path().join("var/iceprod.db")
}

/// Starts a second server in a folder of its own (its own state folder, pid file and control
/// socket) on `first`'s database, and returns its log once it has exited, failing the test if
/// it started.
fn second_server_on_the_database_of(first: &Server) -> String {
    let db = database_of(first);
    let archive = first.dir.path().join("var/iceprod-archive.db");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut second = Server::spawn_in(
        dir,
        |port| {
            base_config(
                port,
                "",
                &format!(
                    "[db]\npath = {}\narchive_path = {}\n",
                    toml_path(&db),
                    toml_path(&archive)
                ),
            )
        },
        &[],
    );
    let exit = second.wait_exit(WAIT);
    let log = second.log();
    let exit = exit.unwrap_or_else(|| panic!("a second server started on the database:\n{log}"));
    assert!(!exit.success(), "{exit:?}\n{log}");
    log
}

/// The refusal a second server must print while `first` runs.
fn refusal_naming(first: &Server) -> String {
    format!(
        "database {} is in use by another iceprod server (pid {} on host {}); stop it or point \
         [db] path elsewhere",
        database_of(first).display(),
        first.pid(),
        hostname()
    )
}

/// A request the db module answers.
fn db_answers(server: &Server) -> bool {
    matches!(
        server.rpc("public_get_number_of_tasks_in_each_state", json!({})),
        Some((200, v)) if v.get("result").is_some()
    )
}

#[test]
fn a_second_server_on_the_same_database_fails_to_start_naming_the_first_which_keeps_serving() {
    let first = Server::start("");
    let log = second_server_on_the_database_of(&first);
    assert!(log.contains(&refusal_naming(&first)), "{log}");
    assert!(db_answers(&first));
    assert_eq!(first.module("db")["state"], "running");
    assert_eq!(first.module("db")["restarts"], 0);
}

#[test]
fn ctl_restart_db_and_a_db_panic_take_the_lock_again() {
    let server = Server::start("");
    let (ok, _, err) = server.ctl(&["restart", "db"]);
    assert!(ok, "{err}");
    assert!(common::wait_until(WAIT, || {
        let db = server.module("db");
        db["generation"] == 2 && db["state"] == "running"
    }));
    assert!(db_answers(&server));
    let log = second_server_on_the_database_of(&server);
    assert!(log.contains(&refusal_naming(&server)), "{log}");

    let (ok, _, err) = server.ctl(&["inject", "panic", "db"]);
    assert!(ok, "{err}");
    assert!(
        common::wait_until(WAIT, || {
            let db = server.module("db");
            db["generation"] == 3 && db["failures"] == 1 && db["state"] == "running"
        }),
        "{}\n{}",
        server.module("db"),
        server.log()
    );
    assert!(common::wait_until(WAIT, || db_answers(&server)));
    let log = second_server_on_the_database_of(&server);
    assert!(log.contains(&refusal_naming(&server)), "{log}");
}

/// A config with the database outside the state folder, so the folder can be lost alone.
fn database_apart(port: u16) -> String {
    base_config(
        port,
        "",
        "[db]\npath = \"data/iceprod.db\"\narchive_path = \"data/iceprod-archive.db\"\n",
    )
}

fn stop(server: &mut Server) {
    server.signal(libc::SIGTERM);
    let exit = server.wait_exit(WAIT).expect("the server stops");
    assert!(exit.success(), "{exit:?}\n{}", server.log());
}

fn site_id_of(server: &Server) -> String {
    let site = server.status()["site_id"]
        .as_str()
        .expect("a site id")
        .to_string();
    assert_eq!(
        server.rpc("public_get_site_id", json!({})).map(|(_, v)| v),
        Some(json!({"jsonrpc": "2.0", "result": site, "id": 1}))
    );
    site
}

fn stored_site_id(server: &Server) -> String {
    let db = server.dir.path().join("data/iceprod.db");
    iceprod_db::store::open(&db)
        .expect("open the db")
        .query_row("SELECT site_id FROM this_site", [], |r| r.get(0))
        .expect("the database has a site id")
}

#[test]
fn the_site_id_survives_losing_the_state_folder_because_it_lives_in_the_database() {
    let mut server = Server::start_with(database_apart);
    let site = site_id_of(&server);
    assert_eq!(stored_site_id(&server), site);
    stop(&mut server);
    std::fs::remove_dir_all(server.dir.path().join("var")).expect("the state folder goes");
    server.relaunch();
    server.wait_up();
    assert_eq!(site_id_of(&server), site);
}

#[test]
fn an_older_servers_site_id_file_is_adopted_into_the_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("var")).unwrap();
    std::fs::write(dir.path().join("var/site_id"), "OldSite7\n").unwrap();
    let mut server = Server::start_in(dir, database_apart, &[]);
    assert_eq!(site_id_of(&server), "OldSite7");
    assert_eq!(stored_site_id(&server), "OldSite7");
    stop(&mut server);
    std::fs::remove_file(server.dir.path().join("var/site_id")).unwrap();
    server.relaunch();
    server.wait_up();
    assert_eq!(site_id_of(&server), "OldSite7");
}

#[test]
fn a_pinned_site_id_other_than_the_databases_is_refused_naming_both() {
    let mut server = Server::start("");
    let site = site_id_of(&server);
    assert_eq!(db_text(&server, "SELECT site_id FROM this_site"), site);
    stop(&mut server);
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    server.write_config(&format!("{config}\n[site]\nid = \"Pinned9\"\n"));
    server.relaunch();
    let exit = server.wait_exit(WAIT);
    let log = server.log();
    let exit = exit.unwrap_or_else(|| panic!("a contradicting pin started:\n{log}"));
    assert!(!exit.success(), "{exit:?}");
    assert!(
        log.contains(&format!(
            "database {} belongs to site {site}, but [site] id pins Pinned9",
            database_of(&server).display()
        )),
        "{log}"
    );
    // The same pin as the database's starts.
    server.write_config(&format!("{config}\n[site]\nid = \"{site}\"\n"));
    server.relaunch();
    server.wait_up();
    assert_eq!(site_id_of(&server), site);
}
