//! What people do over JSON-RPC (SPEC §5.3) through the real binary, authorised by user
//! passkeys or by a website session (cookie `iceprod_session` plus header `X-CSRF-Token`):
//! submit datasets (also with `iceprod submit`), act on tasks, jobs and datasets, manage
//! groups, roles and users. Owners act on their datasets, admins on all.

mod common;

use std::process::Command;

use common::{add_website_user, admin_key, db, db_text as text, example, login, Server};
use iceprod_db::rusqlite::params;
use serde_json::{json, Value};

/// Adds user `name` (not an admin) with passkey `key-NAME`.
fn add_user(server: &Server, name: &str) -> String {
    let conn = db(server);
    conn.execute(
        "INSERT INTO user (user_id, username) VALUES (?1, ?1)",
        params![name],
    )
    .unwrap();
    let key = format!("key-{name}");
    conn.execute(
        "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
         VALUES (?1, ?2, 'user', ?3, '2999-01-01T00:00:00Z')",
        params![format!("pk-{name}"), key, name],
    )
    .unwrap();
    key
}

fn submit(server: &Server, passkey: &str, config: Value, njobs: u64) -> (u16, Value) {
    server
        .rpc(
            "submit_dataset",
            json!({"passkey": passkey, "config": config, "njobs": njobs, "description": "d"}),
        )
        .unwrap()
}

#[test]
fn the_first_start_creates_an_admin_whose_passkey_submits_every_example() {
    let server = Server::start("");
    let key = admin_key(&server);
    for name in ["two-tasks.json", "data-staging.json", "parameterised.json"] {
        let (status, v) = submit(&server, &key, example(name), 3);
        assert_eq!(status, 200, "{name}: {v}");
        assert!(v["result"].is_string(), "{v}");
    }
    assert_eq!(
        text(
            &server,
            "SELECT group_concat(DISTINCT username) FROM dataset"
        ),
        "admin"
    );
    assert_eq!(
        text(&server, "SELECT group_concat(action) FROM history"),
        "submit_dataset,submit_dataset,submit_dataset"
    );
}

#[test]
fn iceprod_submit_checks_the_file_then_submits_it() {
    let server = Server::start("");
    let run = |args: &[&str]| {
        Command::new(common::binary())
            .arg("submit")
            .arg("--config")
            .arg(server.config_path())
            .args(args)
            .output()
            .unwrap()
    };
    let examples = format!("{}/examples", env!("CARGO_MANIFEST_DIR"));
    let out = run(&[&format!("{examples}/two-tasks.json"), "--njobs", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        text(
            &server,
            &format!("SELECT CAST(jobs_submitted AS TEXT) FROM dataset WHERE dataset_id = '{id}'")
        ),
        "5"
    );
    // A broken file is refused before anything is sent, with every error's path.
    let broken = server.dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"version": 3, "tasks": [{"name": "a", "depends": ["zz"]}, {"name": "a"}]}"#,
    )
    .unwrap();
    let out = run(&[broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tasks[0].depends[0]") && err.contains("tasks[1]"),
        "{err}"
    );
    // A bad passkey is the server's refusal, shown as such.
    let out = run(&[&format!("{examples}/two-tasks.json"), "--passkey", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_submissions_name_the_problem_and_store_nothing() {
    let server = Server::start("");
    let key = admin_key(&server);
    let cycle = json!({"version": 3, "tasks": [
        {"name": "a", "depends": ["b"]}, {"name": "b", "depends": ["a"]}]});
    for (config, njobs, needle) in [
        (json!("{not json"), 1, "line 1"),
        (cycle, 1, "cycle"),
        (example("two-tasks.json"), 0, "njobs"),
        (example("two-tasks.json"), 1_000_000_000, "njobs"),
        (
            json!({"version": 3, "tasks": [{"name": "x", "requirements": {"memory": "$eval(1+"}}]}),
            1,
            "tasks[0].requirements.memory",
        ),
        (json!(42), 1, "config"),
    ] {
        let (status, v) = submit(&server, &key, config, njobs);
        assert_eq!(status, 400, "{needle}: {v}");
        assert_eq!(v["error"]["code"], -32602, "{needle}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    assert_eq!(
        text(&server, "SELECT CAST(count(*) AS TEXT) FROM dataset"),
        "0"
    );
    let (_, v) = submit(&server, "not-a-key", example("two-tasks.json"), 1);
    assert_eq!(v["error"]["code"], 403);
}

#[test]
fn owners_act_on_their_datasets_and_admins_on_all() {
    let server = Server::start("");
    let admin = admin_key(&server);
    let bob = add_user(&server, "bob");
    let carol = add_user(&server, "carol");
    let (_, v) = submit(&server, &bob, example("two-tasks.json"), 1);
    let dataset = v["result"].as_str().unwrap().to_string();
    let act = |key: &str, method: &str| {
        server
            .rpc(method, json!({"passkey": key, "dataset_id": dataset}))
            .unwrap()
    };
    let (_, v) = act(&carol, "suspend_dataset");
    assert_eq!(v["error"]["code"], 403, "{v}");
    assert_eq!(act(&bob, "suspend_dataset").0, 200);
    assert_eq!(text(&server, "SELECT status FROM dataset"), "suspended");
    assert_eq!(act(&admin, "resume_dataset").0, 200);
    assert_eq!(text(&server, "SELECT status FROM dataset"), "processing");
    let (status, v) = act(&bob, "resume_dataset");
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!(-32602)),
        "{v}"
    );
    assert_eq!(act(&bob, "truncate_dataset").0, 200);
    assert_eq!(text(&server, "SELECT status FROM dataset"), "truncated");
    let (_, v) = server
        .rpc(
            "set_dataset_description",
            json!({"passkey": bob, "dataset_id": dataset,
              "description": "<script>alert(1)</script> 'quoted'"}),
        )
        .unwrap();
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(
        text(&server, "SELECT description FROM dataset"),
        "<script>alert(1)</script> 'quoted'"
    );
    let (_, v) = act(&bob, "hard_reset_dataset");
    assert!(v["error"].is_null(), "{v}");
    let (_, v) = server
        .rpc(
            "suspend_dataset",
            json!({"passkey": bob, "dataset_id": "nosuch"}),
        )
        .unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
}

#[test]
fn task_and_job_actions_follow_the_state_rules() {
    let server = Server::start("");
    let admin = admin_key(&server);
    let (_, v) = submit(&server, &admin, example("two-tasks.json"), 1);
    let dataset = v["result"].as_str().unwrap().to_string();
    // Tasks as buffering would create them (the queue module does that; not here yet).
    let conn = db(&server);
    conn.execute(
        "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
         VALUES ('j1', ?1, 0, 'processing', 'now')",
        params![dataset],
    )
    .unwrap();
    for (id, status, failures) in [
        ("t1", "failed", 10),
        ("t2", "complete", 0),
        ("t3", "processing", 2),
    ] {
        conn.execute(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             status_changed, failures) VALUES (?1, 'j1', ?2, 'r', 0, ?3, 'now', ?4)",
            params![id, dataset, status, failures],
        )
        .unwrap();
    }
    let call = |method: &str, params: Value| {
        let mut p = params;
        p["passkey"] = json!(admin);
        server.rpc(method, p).unwrap()
    };
    let status = |id: &str| {
        text(
            &server,
            &format!("SELECT status || '/' || failures FROM task WHERE task_id = '{id}'"),
        )
    };
    assert_eq!(call("reset_task", json!({"tasks": "t1"})).0, 200);
    assert_eq!(status("t1"), "reset/0");
    // A list acts on every task or on none: t2 is complete, so t3 is not suspended either.
    let (code, v) = call("suspend_task", json!({"tasks": ["t3", "t2"]}));
    assert_eq!(code, 400, "{v}");
    assert_eq!(status("t3"), "processing/2");
    assert_eq!(call("suspend_task", json!({"tasks": ["t3"]})).0, 200);
    assert_eq!(call("resume_task", json!({"tasks": ["t3"]})).0, 200);
    assert_eq!(status("t3"), "idle/2");
    // A job reset leaves the complete task alone; a hard reset takes it back too.
    assert_eq!(call("reset_jobs", json!({"job_ids": ["j1"]})).0, 200);
    assert_eq!(status("t2"), "complete/0");
    assert_eq!(call("hard_reset_jobs", json!({"job_ids": "j1"})).0, 200);
    assert_eq!(status("t2"), "idle/0");
    for bad in [json!({"tasks": []}), json!({"tasks": [1]}), json!({})] {
        let (code, v) = call("reset_task", bad);
        assert_eq!(
            (code, v["error"]["code"].clone()),
            (400, json!(-32602)),
            "{v}"
        );
    }
}

#[test]
fn a_config_update_keeps_the_tasks_and_changes_what_is_allowed() {
    let server = Server::start("");
    let admin = admin_key(&server);
    let bob = add_user(&server, "bob");
    let (_, v) = submit(&server, &admin, example("two-tasks.json"), 2);
    let dataset = v["result"].as_str().unwrap().to_string();
    let mut config = example("two-tasks.json");
    config["tasks"][0]["requirements"]["memory"] = json!(3.5);
    let update = |key: &str, config: &Value| {
        server
            .rpc(
                "update_dataset_config",
                json!({"passkey": key, "dataset_id": dataset, "config": config}),
            )
            .unwrap()
    };
    let (status, v) = update(&admin, &config);
    assert_eq!(status, 200, "{v}");
    assert!(text(
        &server,
        "SELECT requirements FROM task_rel WHERE task_index = 0"
    )
    .contains("3.5"));
    assert!(text(&server, "SELECT config_data FROM config").contains("3.5"));
    let (_, v) = update(&bob, &config);
    assert_eq!(v["error"]["code"], 403, "{v}");
    let mut renamed = config.clone();
    renamed["tasks"][0]["name"] = json!("other");
    renamed["tasks"][1]["depends"] = json!(["other"]);
    let (_, v) = update(&admin, &renamed);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tasks[0].name"),
        "{v}"
    );
    let mut rewired = config.clone();
    rewired["tasks"][1]["depends"] = json!([]);
    let (_, v) = update(&admin, &rewired);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tasks[1].depends"),
        "{v}"
    );
    assert!(text(&server, "SELECT config_data FROM config").contains("3.5"));
    assert_eq!(
        text(
            &server,
            "SELECT group_concat(action) FROM history WHERE action = 'update_dataset_config'"
        ),
        "update_dataset_config"
    );
}

/// The error code of a JSON-RPC answer, and its message.
fn error_of(v: &Value) -> (i64, String) {
    (
        v["error"]["code"].as_i64().unwrap_or(0),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn a_session_acts_with_its_csrf_header_and_changes_nothing_without_it() {
    let server = Server::start("");
    add_website_user(&server, "bob", "bob pw", false);
    let s = login(&server.config_path(), "bob", "bob pw").unwrap();
    let other = login(&server.config_path(), "bob", "bob pw").unwrap();
    let call = |method: &str, params: Value, csrf: Option<&str>| {
        server
            .rpc_in_session(method, params, &s.session_id, csrf)
            .unwrap()
    };
    let (status, v) = call(
        "submit_dataset",
        json!({"config": example("two-tasks.json"), "njobs": 1, "description": "mine"}),
        Some(&s.csrf_token),
    );
    assert_eq!(status, 200, "{v}");
    let dataset = v["result"].as_str().unwrap().to_string();
    assert_eq!(text(&server, "SELECT username FROM dataset"), "bob");
    // No header, another session's token, an empty one: 403 and nothing changed.
    for csrf in [None, Some(other.csrf_token.as_str()), Some("")] {
        let (status, v) = call(
            "set_dataset_description",
            json!({"dataset_id": dataset, "description": "changed"}),
            csrf,
        );
        assert_eq!((status, error_of(&v).0), (400, 403), "{csrf:?}: {v}");
        let (_, v) = call("suspend_dataset", json!({"dataset_id": dataset}), csrf);
        assert_eq!(error_of(&v).0, 403, "{v}");
    }
    assert_eq!(text(&server, "SELECT description FROM dataset"), "mine");
    assert_eq!(text(&server, "SELECT status FROM dataset"), "processing");
    // With it: done.
    let (_, v) = call(
        "suspend_dataset",
        json!({"dataset_id": dataset}),
        Some(&s.csrf_token),
    );
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(text(&server, "SELECT status FROM dataset"), "suspended");
    // A passkey in the params wins over the cookie.
    let (_, v) = call(
        "resume_dataset",
        json!({"dataset_id": dataset, "passkey": "nosuch"}),
        Some(&s.csrf_token),
    );
    assert_eq!(error_of(&v).0, 403, "{v}");
    // A forged or ended session is refused; without cookie or passkey the passkey is missing.
    let (_, v) = server
        .rpc_in_session(
            "resume_dataset",
            json!({"dataset_id": dataset}),
            "forged",
            Some(&s.csrf_token),
        )
        .unwrap();
    assert_eq!(error_of(&v).0, 403, "{v}");
    let (_, v) = server
        .rpc("resume_dataset", json!({"dataset_id": dataset}))
        .unwrap();
    assert_eq!(
        error_of(&v),
        (-32602, "missing parameter 'passkey'".into()),
        "{v}"
    );
    assert_eq!(text(&server, "SELECT status FROM dataset"), "suspended");
}

#[test]
fn groups_roles_and_users_over_jsonrpc_are_for_admins() {
    let server = Server::start("");
    add_website_user(&server, "root", "root pw", true);
    add_website_user(&server, "bob", "bob pw", false);
    let config = server.config_path();
    let root = login(&config, "root", "root pw").unwrap();
    let bob = login(&config, "bob", "bob pw").unwrap();
    let as_root = |method: &str, params: Value| {
        server
            .rpc_in_session(method, params, &root.session_id, Some(&root.csrf_token))
            .unwrap()
            .1
    };
    let as_bob = |method: &str, params: Value| {
        server
            .rpc_in_session(method, params, &bob.session_id, Some(&bob.csrf_token))
            .unwrap()
            .1
    };

    // Groups: typed params named, values checked by the db, then replaced and public to read.
    for (params, needle) in [
        (json!({}), "'groups'"),
        (json!({"groups": {"name": "/a"}}), "'groups'"),
        (json!({"groups": [7]}), "'groups[0]'"),
        (json!({"groups": [{"priority": 1}]}), "'groups[0].name'"),
        (
            json!({"groups": [{"name": "/a", "priority": "high"}]}),
            "'groups[0].priority'",
        ),
        (
            json!({"groups": [{"name": "/a", "priority": 1, "description": 5}]}),
            "'groups[0].description'",
        ),
        (
            json!({"groups": [{"name": "/a", "priority": 1}, {"name": "/b", "priority": 0}]}),
            "groups[1].priority",
        ),
        (
            json!({"groups": [{"name": "<b>", "priority": 1}]}),
            "groups[0].name",
        ),
    ] {
        let v = as_root("set_groups", params.clone());
        let (code, message) = error_of(&v);
        assert_eq!(code, -32602, "{params}: {v}");
        assert!(message.contains(needle), "{params}: {message}");
    }
    let groups = json!([
        {"name": "/sim", "description": "<i>sim</i> 'q'", "priority": 2.0},
        {"name": "/sim/high", "description": "", "priority": 0.5}
    ]);
    let v = as_bob("set_groups", json!({ "groups": groups }));
    assert_eq!(error_of(&v).0, 403, "{v}");
    assert_eq!(
        server.rpc("get_groups", json!({})).unwrap().1["result"],
        json!([])
    );
    let v = as_root("set_groups", json!({ "groups": groups }));
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(
        server.rpc("get_groups", json!({})).unwrap().1["result"],
        groups
    );

    // Roles.
    assert_eq!(
        as_bob("get_user_roles", json!({"username": "bob"}))["result"],
        json!(["user"])
    );
    assert_eq!(
        error_of(&as_bob("get_user_roles", json!({"username": "root"}))).0,
        403
    );
    assert_eq!(
        error_of(&as_root("set_user_roles", json!({"username": "bob"}))),
        (-32602, "missing parameter 'roles'".into())
    );
    let v = as_root(
        "set_user_roles",
        json!({"username": "bob", "roles": ["wizard"]}),
    );
    assert!(error_of(&v).1.contains("unknown role"), "{v}");
    assert_eq!(
        error_of(&as_bob(
            "set_user_roles",
            json!({"username": "bob", "roles": ["admin"]})
        ))
        .0,
        403
    );
    let v = as_root(
        "set_user_roles",
        json!({"username": "bob", "roles": ["admin", "user"]}),
    );
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(
        text(
            &server,
            "SELECT CAST(admin AS TEXT) FROM user WHERE username = 'bob'"
        ),
        "1"
    );
    let v = as_root(
        "set_user_roles",
        json!({"username": "bob", "roles": ["user"]}),
    );
    assert!(v["error"].is_null(), "{v}");

    // Users: admins create them (here with the first admin's passkey); bob may not.
    let v = as_bob("create_user", json!({"username": "eve", "password": "pw"}));
    assert_eq!(error_of(&v).0, 403, "{v}");
    let v = server
        .rpc(
            "create_user",
            json!({"passkey": admin_key(&server), "username": "carol", "password": "c pw"}),
        )
        .unwrap()
        .1;
    assert!(v["error"].is_null(), "{v}");
    assert!(!login(&config, "carol", "c pw").unwrap().admin);
    for (params, needle) in [
        (json!({"password": "pw"}), "missing parameter 'username'"),
        (json!({"username": "dave"}), "missing parameter 'password'"),
        (
            json!({"username": "dave", "password": ""}),
            "'password' must not be empty",
        ),
        (
            json!({"username": "dave", "password": "pw", "admin": "yes"}),
            "'admin' must be true or false",
        ),
        (
            json!({"username": "carol", "password": "pw"}),
            "already exists",
        ),
        (
            json!({"username": "o'brien", "password": "pw"}),
            "a username is",
        ),
    ] {
        let (code, message) = error_of(&as_root("create_user", params.clone()));
        assert_eq!(code, -32602, "{params}");
        assert!(message.contains(needle), "{params}: {message}");
    }
    assert_eq!(
        text(&server, "SELECT CAST(count(*) AS TEXT) FROM user"),
        "4"
    );

    // Passwords: bob sets his own, not carol's; an admin sets anyone's.
    let v = as_bob(
        "set_user_password",
        json!({"username": "carol", "password": "x"}),
    );
    assert_eq!(error_of(&v).0, 403, "{v}");
    let v = as_bob(
        "set_user_password",
        json!({"username": "bob", "password": "bob new"}),
    );
    assert!(v["error"].is_null(), "{v}");
    assert!(login(&config, "bob", "bob pw").is_err());
    assert!(login(&config, "bob", "bob new").is_ok());
    let v = as_root(
        "set_user_password",
        json!({"username": "carol", "password": "from root"}),
    );
    assert!(v["error"].is_null(), "{v}");
    assert!(login(&config, "carol", "from root").is_ok());
}

#[test]
fn admins_start_stop_and_restart_modules_and_reload_the_config_over_jsonrpc() {
    let server = Server::start("");
    let key = admin_key(&server);
    add_website_user(&server, "bob", "bob pw", false);
    let bob = login(&server.config_path(), "bob", "bob pw").unwrap();
    let admin = |method: &str, params: Value| {
        let mut params = params;
        params["passkey"] = json!(key);
        server.rpc(method, params).unwrap().1
    };

    let running = admin("get_running_modules", json!({}));
    assert_eq!(
        running["result"],
        json!(["db", "website", "schedule"]),
        "{running}"
    );
    let v = admin("reload_config", json!({}));
    assert_eq!(v["result"], "no changes", "{v}");
    let v = admin("stop_module", json!({"module": "schedule"}));
    assert_eq!(v["result"], "schedule stopping", "{v}");
    until("the schedule to stop", || {
        admin("get_running_modules", json!({}))["result"] == json!(["db", "website"])
    });
    let v = admin("start_module", json!({"module": "schedule"}));
    assert_eq!(v["result"], "schedule starting", "{v}");
    until("the schedule to run again", || {
        admin("get_running_modules", json!({}))["result"] == json!(["db", "website", "schedule"])
    });
    let v = admin("restart_module", json!({"module": "schedule"}));
    assert_eq!(v["result"], "schedule restarting", "{v}");

    // The controller's refusals name the reason; bad params name the parameter.
    let v = admin("start_module", json!({"module": "queue"}));
    assert_eq!(error_of(&v).0, -32602, "{v}");
    assert!(error_of(&v).1.contains("disabled"), "{v}");
    let v = admin("restart_module", json!({"module": "<script>"}));
    assert_eq!(error_of(&v).0, -32602, "{v}");
    assert!(error_of(&v).1.contains("parameter 'module'"), "{v}");
    let v = admin("stop_module", json!({}));
    assert_eq!(
        error_of(&v),
        (-32602, "missing parameter 'module'".into()),
        "{v}"
    );
    // A broken config file is refused and the running config stays.
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    server.write_config(&format!("{config}\nno_such_key = 1\n"));
    let v = admin("reload_config", json!({}));
    assert_eq!(error_of(&v).0, -32602, "{v}");
    assert!(error_of(&v).1.contains("no_such_key"), "{v}");
    server.write_config(&config);

    // Not an admin, or an admin's session without its CSRF token: 403, nothing done.
    let (_, v) = server
        .rpc_in_session(
            "stop_module",
            json!({"module": "website"}),
            &bob.session_id,
            Some(&bob.csrf_token),
        )
        .unwrap();
    assert_eq!(error_of(&v).0, 403, "{v}");
    add_website_user(&server, "root", "root pw", true);
    let root = login(&server.config_path(), "root", "root pw").unwrap();
    let (_, v) = server
        .rpc_in_session(
            "stop_module",
            json!({"module": "website"}),
            &root.session_id,
            None,
        )
        .unwrap();
    assert_eq!(error_of(&v).0, 403, "{v}");
    let (_, v) = server
        .rpc_in_session(
            "get_running_modules",
            json!({}),
            &root.session_id,
            Some(&root.csrf_token),
        )
        .unwrap();
    assert_eq!(v["result"], json!(["db", "website", "schedule"]), "{v}");
    let v = server.rpc("reload_config", json!({})).unwrap().1;
    assert_eq!(
        error_of(&v),
        (-32602, "missing parameter 'passkey'".into()),
        "{v}"
    );
}

/// Waits up to 20 s for `done`.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
