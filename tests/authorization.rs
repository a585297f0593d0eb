//! Who may call what: every JSON-RPC method of the method table against every kind of
//! credential, through the real binary, as one table. A row is `(method, whose credential is
//! the rightful one, params builder, the expected outcome per credential)`; a method the
//! server has without a row (or a row for a method it lacks) fails the test, so a new method
//! cannot slip in unjudged.
//!
//! The server runs with `public_reads = false`, so the public reads need a user too; with
//! them on, they are open to anyone (the last test).
//!
//! The credentials, in column order:
//! - `NONE`: no passkey and no session;
//! - `WRONG`: a passkey that was never issued;
//! - `EXPIRED`, `REVOKED`: the rightful holder's passkey (the task's, the pilot's or the
//!   owner's, by the row's [`Holder`]), past its expiry or revoked;
//! - `OTHER_TASK`: task A's passkey, used on task B (B is the task every task row names);
//! - `OWN_TASK`: task B's own passkey;
//! - `PILOT`: the passkey of the pilot running task B;
//! - `NON_OWNER`: a user who does not own the dataset (bob);
//! - `OWNER`: the user who owns it (alice);
//! - `ADMIN`: the first admin's passkey;
//! - `NO_CSRF`: alice's website session (cookie) without its CSRF header.
//!
//! A site key (federation) is one more column, added when federation lands.

mod common;

use std::cell::Cell;

use common::{add_website_user, admin_key, base_config, db, db_text, example, Server};
use iceprod_db::rusqlite::params;
use serde_json::{json, Value};

/// What one cell expects: a result, or an error with this JSON-RPC code.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Ok,
    Err(i64),
}

const OK: Want = Want::Ok;
/// Refused: not authorised.
const NO: Want = Want::Err(403);
/// Refused: no credential where one is needed (`missing parameter 'passkey'`).
const MISSING: Want = Want::Err(-32602);

#[derive(Clone, Copy, Debug)]
enum Cred {
    None,
    Wrong,
    Expired,
    Revoked,
    OtherTask,
    OwnTask,
    Pilot,
    NonOwner,
    Owner,
    Admin,
    NoCsrf,
}

const CREDS: [Cred; 11] = [
    Cred::None,
    Cred::Wrong,
    Cred::Expired,
    Cred::Revoked,
    Cred::OtherTask,
    Cred::OwnTask,
    Cred::Pilot,
    Cred::NonOwner,
    Cred::Owner,
    Cred::Admin,
    Cred::NoCsrf,
];

/// Whose passkey the row's method is for: the `EXPIRED` and `REVOKED` columns use that
/// holder's expired and revoked passkeys.
#[derive(Clone, Copy)]
enum Holder {
    Task,
    Pilot,
    Person,
}

struct Row {
    method: &'static str,
    holder: Holder,
    params: fn(&Fixture) -> Value,
    want: [Want; 11],
}

/// The outcome per credential, in the column order of [`CREDS`] (`MIS`: missing passkey).
#[rustfmt::skip]
mod outcome {
    use super::{Want, MISSING as MIS, NO, OK};
    //                                  NONE WRONG EXPIRED REVOKED OTHER_TASK OWN_TASK PILOT NON_OWNER OWNER ADMIN NO_CSRF
    pub const OPEN: [Want; 11]       = [OK,  OK,   OK,     OK,     OK,        OK,      OK,   OK,       OK,   OK,   OK ];
    pub const USER_READ: [Want; 11]  = [MIS, NO,   NO,     NO,     NO,        NO,      NO,   OK,       OK,   OK,   OK ];
    pub const TASK: [Want; 11]       = [MIS, NO,   NO,     NO,     NO,        OK,      OK,   NO,       NO,   NO,   MIS];
    pub const PILOT: [Want; 11]      = [MIS, NO,   NO,     NO,     NO,        NO,      OK,   NO,       NO,   NO,   MIS];
    pub const ANY_USER: [Want; 11]   = [MIS, NO,   NO,     NO,     NO,        NO,      NO,   OK,       OK,   OK,   NO ];
    pub const OWNER_ACT: [Want; 11]  = [MIS, NO,   NO,     NO,     NO,        NO,      NO,   NO,       OK,   OK,   NO ];
    pub const OWN_READ: [Want; 11]   = [MIS, NO,   NO,     NO,     NO,        NO,      NO,   NO,       OK,   OK,   OK ];
    pub const ADMIN_ONLY: [Want; 11] = [MIS, NO,   NO,     NO,     NO,        NO,      NO,   NO,       NO,   OK,   NO ];
}
use outcome::*;

fn rows() -> Vec<Row> {
    use Holder::{Person, Pilot, Task};
    let by_dataset = |f: &Fixture| json!({"dataset_id": f.dataset});
    vec![
        // Connection checks: open to anyone.
        row("echo", Person, |_| json!({"value": 1}), OPEN),
        row("public_get_site_id", Person, |_| json!({}), OPEN),
        // Public reads (users only here: public_reads = false).
        row(
            "public_get_graphs",
            Person,
            |_| json!({"start": 60}),
            USER_READ,
        ),
        row(
            "public_get_number_of_tasks_in_each_state",
            Person,
            by_dataset,
            USER_READ,
        ),
        row(
            "public_get_datasets_by_status",
            Person,
            |_| json!({}),
            USER_READ,
        ),
        row("public_get_config", Person, by_dataset, USER_READ),
        row(
            "public_get_dataset_description",
            Person,
            by_dataset,
            USER_READ,
        ),
        row("public_get_dataset_steering", Person, by_dataset, USER_READ),
        row(
            "public_get_dataset_completion",
            Person,
            by_dataset,
            USER_READ,
        ),
        row(
            "public_get_all_dataset_completion",
            Person,
            |_| json!({}),
            USER_READ,
        ),
        row("public_get_task_ids", Person, by_dataset, USER_READ),
        row("public_get_task_stats", Person, by_dataset, USER_READ),
        row("public_get_task_walltime", Person, by_dataset, USER_READ),
        row(
            "public_get_tasks_by_name",
            Person,
            |f| json!({"dataset_id": f.dataset, "name": "generate"}),
            USER_READ,
        ),
        row("public_get_cpu_gpu_usage", Person, |_| json!({}), USER_READ),
        row("get_groups", Person, |_| json!({}), USER_READ),
        // A worker's calls about task B.
        row(
            "set_processing",
            Task,
            |f| f.task_b("queued", json!({})),
            TASK,
        ),
        row(
            "stillrunning",
            Task,
            |f| f.task_b("processing", json!({})),
            TASK,
        ),
        row(
            "get_task_config",
            Task,
            |f| f.task_b("processing", json!({})),
            TASK,
        ),
        row(
            "finish_task",
            Task,
            |f| f.task_b("processing", json!({"stats": {"hostname": "n1"}})),
            TASK,
        ),
        row(
            "task_error",
            Task,
            |f| f.task_b("processing", json!({"error_info": {"error_summary": "x"}})),
            TASK,
        ),
        row(
            "upload_logfile",
            Task,
            |f| {
                let mut p = f.task_b("processing", json!({"name": "stdout", "data": ""}));
                p["task"] = p["task_id"].take();
                p
            },
            TASK,
        ),
        // A pilot's calls.
        row(
            "new_task",
            Pilot,
            // No room for any task: the answer is null, and nothing changes.
            |_| {
                json!({"gridspec": "g1", "hostname": "n1", "domain": "x", "ifaces": [],
                       "os": null, "cpu": 0, "gpu": 0, "memory": 0, "disk": 0, "time": 0})
            },
            PILOT,
        ),
        row(
            "update_pilot",
            Pilot,
            |_| {
                json!({"pilot_id": "p1", "tasks": "tB", "resources_available": {},
                       "resources_claimed": {}})
            },
            PILOT,
        ),
        // What people do with datasets: any user submits; the owner and admins act.
        row(
            "submit_dataset",
            Person,
            |_| json!({"config": example("two-tasks.json"), "njobs": 1, "description": "m"}),
            ANY_USER,
        ),
        row(
            "update_dataset_config",
            Person,
            |f| json!({"dataset_id": f.dataset, "config": example("two-tasks.json")}),
            OWNER_ACT,
        ),
        row(
            "set_dataset_description",
            Person,
            |f| json!({"dataset_id": f.dataset, "description": "d2"}),
            OWNER_ACT,
        ),
        row(
            "set_dataset_priority",
            Person,
            |f| json!({"dataset_id": f.dataset, "priority": 2.0}),
            OWNER_ACT,
        ),
        row("reset_task", Person, |f| f.task_a("failed"), OWNER_ACT),
        row("resume_task", Person, |f| f.task_a("suspended"), OWNER_ACT),
        row(
            "suspend_task",
            Person,
            |f| f.task_a("processing"),
            OWNER_ACT,
        ),
        row(
            "reset_jobs",
            Person,
            |_| json!({"job_ids": "j0"}),
            OWNER_ACT,
        ),
        row(
            "hard_reset_jobs",
            Person,
            |_| json!({"job_ids": "j0"}),
            OWNER_ACT,
        ),
        row(
            "suspend_jobs",
            Person,
            |_| json!({"job_ids": "j0"}),
            OWNER_ACT,
        ),
        row("reset_dataset", Person, by_dataset, OWNER_ACT),
        row("hard_reset_dataset", Person, by_dataset, OWNER_ACT),
        row("suspend_dataset", Person, by_dataset, OWNER_ACT),
        row(
            "resume_dataset",
            Person,
            |f| f.dataset_in("suspended"),
            OWNER_ACT,
        ),
        row(
            "truncate_dataset",
            Person,
            |f| f.dataset_in("processing"),
            OWNER_ACT,
        ),
        // Accounts: a user sees and sets their own; admins everyone's.
        row("set_groups", Person, |_| json!({"groups": []}), ADMIN_ONLY),
        row(
            "get_user_roles",
            Person,
            |_| json!({"username": "alice"}),
            OWN_READ,
        ),
        row(
            "set_user_roles",
            Person,
            |_| json!({"username": "bob", "roles": ["user"]}),
            ADMIN_ONLY,
        ),
        row(
            "create_user",
            Person,
            |f| json!({"username": f.fresh_name(), "password": "pw-new!"}),
            ADMIN_ONLY,
        ),
        row(
            "set_user_password",
            Person,
            |_| json!({"username": "alice", "password": ALICE_PW}),
            OWNER_ACT,
        ),
        // The server itself: admins only.
        row(
            "start_module",
            Person,
            |f| {
                f.as_admin("stop_module", json!({"module": "schedule"}));
                json!({"module": "schedule"})
            },
            ADMIN_ONLY,
        ),
        row(
            "stop_module",
            Person,
            |f| {
                f.as_admin("start_module", json!({"module": "schedule"}));
                json!({"module": "schedule"})
            },
            ADMIN_ONLY,
        ),
        row(
            "restart_module",
            Person,
            |f| {
                f.as_admin("start_module", json!({"module": "schedule"}));
                json!({"module": "schedule"})
            },
            ADMIN_ONLY,
        ),
        row("get_running_modules", Person, |_| json!({}), ADMIN_ONLY),
        row("reload_config", Person, |_| json!({}), ADMIN_ONLY),
    ]
}

fn row(
    method: &'static str,
    holder: Holder,
    params: fn(&Fixture) -> Value,
    want: [Want; 11],
) -> Row {
    Row {
        method,
        holder,
        params,
        want,
    }
}

const ALICE_PW: &str = "pw-alice!";

/// The server and what the rows name: alice's dataset with job `j0` and tasks `tA`, `tB`,
/// pilot `p1` running `tB`, and a passkey per credential.
struct Fixture {
    server: Server,
    dataset: String,
    alice_id: String,
    /// alice's website session (a password change ends it; [`Fixture::session`] opens a new
    /// one then).
    session: std::cell::RefCell<String>,
    names: Cell<u32>,
}

fn add_passkey(
    server: &Server,
    key: &str,
    scope: &str,
    subject: &str,
    expire: &str,
    revoked: bool,
) {
    db(server)
        .execute(
            "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire, revoked) \
             VALUES (?1, ?1, ?2, ?3, ?4, ?5)",
            params![key, scope, subject, expire, revoked],
        )
        .unwrap();
}

impl Fixture {
    fn start(website: &str) -> Fixture {
        let server = Server::start_with(|port| base_config(port, website, ""));
        add_website_user(&server, "alice", ALICE_PW, false);
        add_website_user(&server, "bob", "pw-bob!", false);
        let user_id = |name: &str| {
            db_text(
                &server,
                &format!("SELECT user_id FROM user WHERE username = '{name}'"),
            )
        };
        let (alice_id, bob_id) = (user_id("alice"), user_id("bob"));
        const LIVE: &str = "2999-01-01T00:00:00Z";
        const PAST: &str = "2000-01-01T00:00:00Z";
        for (prefix, scope, subject) in [
            ("key-alice", "user", alice_id.as_str()),
            ("key-tB", "task", "tB"),
            ("key-p1", "pilot", "p1"),
        ] {
            add_passkey(&server, prefix, scope, subject, LIVE, false);
            add_passkey(
                &server,
                &format!("{prefix}-expired"),
                scope,
                subject,
                PAST,
                false,
            );
            add_passkey(
                &server,
                &format!("{prefix}-revoked"),
                scope,
                subject,
                LIVE,
                true,
            );
        }
        add_passkey(&server, "key-bob", "user", &bob_id, LIVE, false);
        add_passkey(&server, "key-tA", "task", "tA", LIVE, false);

        let (status, v) = server
            .rpc(
                "submit_dataset",
                json!({"passkey": "key-alice", "config": example("two-tasks.json"), "njobs": 1,
                       "description": "alice's"}),
            )
            .unwrap();
        assert_eq!(status, 200, "{v}");
        let dataset = v["result"].as_str().expect("a dataset id").to_string();
        let conn = db(&server);
        let rels: Vec<String> = conn
            .prepare("SELECT task_rel_id FROM task_rel WHERE dataset_id = ?1 ORDER BY task_index")
            .unwrap()
            .query_map([&dataset], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        conn.execute(
            "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
             VALUES ('j0', ?1, 0, 'processing', 'x')",
            params![dataset],
        )
        .unwrap();
        for (i, task) in ["tA", "tB"].into_iter().enumerate() {
            conn.execute(
                "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
                 status_changed, requirements) VALUES (?1, 'j0', ?2, ?3, ?4, 'queued', 'x', '{}')",
                params![task, dataset, rels[i], i as i64],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO pilot (pilot_id, gridspec, submit_time, tasks, last_update) \
             VALUES ('p1', 'g1', 'x', 'tB', 'x')",
            [],
        )
        .unwrap();
        let session = common::login(&server.config_path(), "alice", ALICE_PW)
            .expect("alice logs in")
            .session_id;
        Fixture {
            server,
            dataset,
            alice_id,
            session: std::cell::RefCell::new(session),
            names: Cell::new(0),
        }
    }

    fn sql(&self, sql: &str, args: impl iceprod_db::rusqlite::Params) {
        db(&self.server).execute(sql, args).unwrap();
    }

    /// Task B in `status`, run by pilot p1: the params of a worker's call about it.
    fn task_b(&self, status: &str, mut params: Value) -> Value {
        self.sql(
            "UPDATE task SET status = ?1 WHERE task_id = 'tB'",
            params![status],
        );
        self.sql("UPDATE pilot SET tasks = 'tB' WHERE pilot_id = 'p1'", []);
        params["task_id"] = json!("tB");
        params
    }

    /// Task A in `status`: the params of a person's action on it.
    fn task_a(&self, status: &str) -> Value {
        self.sql(
            "UPDATE task SET status = ?1 WHERE task_id = 'tA'",
            params![status],
        );
        json!({"tasks": "tA"})
    }

    fn dataset_in(&self, status: &str) -> Value {
        self.sql(
            "UPDATE dataset SET status = ?1 WHERE dataset_id = ?2",
            params![status, self.dataset],
        );
        json!({"dataset_id": self.dataset})
    }

    /// A username not taken yet.
    fn fresh_name(&self) -> String {
        self.names.set(self.names.get() + 1);
        format!("new{}", self.names.get())
    }

    /// Calls `method` as the admin, whatever it answers (to set the stage).
    fn as_admin(&self, method: &str, mut params: Value) {
        params["passkey"] = json!(admin_key(&self.server));
        self.server.rpc(method, params).expect("an answer");
    }

    /// alice's live session; a new one if a password change ended hers.
    fn session(&self) -> String {
        let live = db_text(
            &self.server,
            &format!(
                "SELECT CAST(count(*) AS TEXT) FROM session WHERE user_id = '{}'",
                self.alice_id
            ),
        );
        if live == "0" {
            *self.session.borrow_mut() =
                common::login(&self.server.config_path(), "alice", ALICE_PW)
                    .expect("alice logs in again")
                    .session_id;
        }
        self.session.borrow().clone()
    }

    /// Calls `method` with `params` as `cred` would: the JSON-RPC error code, or OK.
    fn call(&self, method: &str, holder: Holder, cred: Cred, mut params: Value) -> (Want, Value) {
        let holder_key = match holder {
            Holder::Task => "key-tB",
            Holder::Pilot => "key-p1",
            Holder::Person => "key-alice",
        };
        let passkey = match cred {
            Cred::None | Cred::NoCsrf => None,
            Cred::Wrong => Some("never-issued".to_string()),
            Cred::Expired => Some(format!("{holder_key}-expired")),
            Cred::Revoked => Some(format!("{holder_key}-revoked")),
            Cred::OtherTask => Some("key-tA".into()),
            Cred::OwnTask => Some("key-tB".into()),
            Cred::Pilot => Some("key-p1".into()),
            Cred::NonOwner => Some("key-bob".into()),
            Cred::Owner => Some("key-alice".into()),
            Cred::Admin => Some(admin_key(&self.server)),
        };
        if let Some(key) = passkey {
            params["passkey"] = json!(key);
        }
        let answer = match cred {
            Cred::NoCsrf => self
                .server
                .rpc_in_session(method, params, &self.session(), None),
            _ => self.server.rpc(method, params),
        };
        let (_, v) = answer.expect("an answer");
        let got = match v["error"]["code"].as_i64() {
            Some(code) => Want::Err(code),
            None => OK,
        };
        (got, v)
    }
}

#[test]
fn every_method_answers_every_credential_as_its_row_says() {
    let f = Fixture::start("public_reads = false");
    let rows = rows();

    // The table and the server's method table name the same methods.
    let served: Vec<&str> = iceprod_website::methods::METHODS
        .iter()
        .map(|m| m.name)
        .collect();
    let judged: Vec<&str> = rows.iter().map(|r| r.method).collect();
    let unjudged: Vec<&&str> = served.iter().filter(|m| !judged.contains(m)).collect();
    let unknown: Vec<&&str> = judged.iter().filter(|m| !served.contains(m)).collect();
    assert!(
        unjudged.is_empty(),
        "methods without a row in the authorization table: {unjudged:?}"
    );
    assert!(
        unknown.is_empty(),
        "rows for methods the server lacks: {unknown:?}"
    );
    assert_eq!(judged.len(), served.len(), "a method has two rows");

    let mut wrong = Vec::new();
    for r in &rows {
        for (cred, want) in CREDS.into_iter().zip(r.want) {
            let params = (r.params)(&f);
            let (got, answer) = f.call(r.method, r.holder, cred, params);
            if got != want {
                wrong.push(format!(
                    "{} with {cred:?}: want {want:?}, got {got:?}: {answer}",
                    r.method
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn with_public_reads_on_the_reads_are_open_to_anyone() {
    let f = Fixture::start("public_reads = true");
    let reads = rows().into_iter().filter(|r| r.want == USER_READ);
    let mut wrong = Vec::new();
    for r in reads {
        for cred in [Cred::None, Cred::Wrong, Cred::Revoked, Cred::OtherTask] {
            let (got, answer) = f.call(r.method, r.holder, cred, (r.params)(&f));
            if got != OK {
                wrong.push(format!("{} with {cred:?}: {answer}", r.method));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
