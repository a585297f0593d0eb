//! What the db test files share: a test database on SQLite or on a fresh MariaDB database
//! (when `ICEPROD_TEST_MYSQL_URL` names a server; `scripts/mariadb.sh start DIR` starts one),
//! the db module on it, and `on_both_backends!`, which runs each test body on both.
//! Seeding and checking go through the backend-neutral `Tx`, so both variants run the same SQL.

#![allow(dead_code)] // each test file uses its own part of this

use std::path::Path;
use std::time::Duration;

use iceprod_db::mysql::prelude::Queryable;
use iceprod_db::sql::{Row, SqlValue, Tx};
use iceprod_db::{mysql, Db, DbError};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::states::TaskEvent;
use iceprod_runtime::{CallError, Config, DatasetSubmission, DbReply, DbRequest, ModuleKind};
use iceprod_runtime::{QueuedTask, Reply, Request, Resources};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(60);
pub const MYSQL_URL_VAR: &str = "ICEPROD_TEST_MYSQL_URL";

/// Where one test's data lives: a temporary folder (the config's home and the SQLite files),
/// and on MariaDB a database of its own, dropped afterwards.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub mysql: Option<MysqlDatabase>,
}

pub struct MysqlDatabase {
    /// The url of this test's database.
    pub url: String,
    pub name: String,
    /// The server as `ICEPROD_TEST_MYSQL_URL` names it, to drop the database at the end.
    pub server_url: String,
}

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        let dropped = mysql::Conn::new(self.server_url.as_str())
            .and_then(|mut c| c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name)));
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `url` with its database replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..authority_end])
}

pub fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        TestDb {
            dir: tempfile::tempdir().expect("a temporary folder"),
            mysql: None,
        }
    }

    /// A fresh database on the server of `ICEPROD_TEST_MYSQL_URL`, or `None` (said on stderr)
    /// when the variable is unset.
    pub fn mariadb(test: &str) -> Option<TestDb> {
        let Ok(server_url) = std::env::var(MYSQL_URL_VAR) else {
            eprintln!("{MYSQL_URL_VAR} is not set: the MariaDB variant of {test} did not run");
            return None;
        };
        let name = format!("iceprod_t_{}", random_hex(6));
        let mut conn = mysql::Conn::new(server_url.as_str())
            .unwrap_or_else(|e| panic!("{MYSQL_URL_VAR} does not connect: {e}"));
        conn.query_drop(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .expect("the test user may create databases");
        Some(TestDb {
            dir: tempfile::tempdir().expect("a temporary folder"),
            mysql: Some(MysqlDatabase {
                url: with_database(&server_url, &name),
                name,
                server_url,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The config text: `[db]` for this backend plus `db_keys`, then `extra` sections.
    pub fn config_text(&self, db_keys: &str, extra: &str) -> String {
        let db = match &self.mysql {
            None => "path = \"iceprod.db\"\n".to_string(),
            Some(m) => format!("backend = \"mysql\"\nurl = {}\n", toml_string(&m.url)),
        };
        format!("[modules]\ndb = true\n[db]\n{db}{db_keys}{extra}")
    }

    pub fn config_with(&self, db_keys: &str, extra: &str) -> Config {
        Config::parse(
            &self.config_text(db_keys, extra),
            &self.path().join("iceprod.toml"),
            &ModuleKind::ALL,
        )
        .expect("test config")
    }

    pub fn config(&self, extra: &str) -> Config {
        self.config_with("", extra)
    }

    /// Runs `body` in one committed transaction on this test's database.
    pub fn tx<R>(&self, body: impl FnOnce(&mut dyn Tx) -> Result<R, DbError>) -> R {
        iceprod_db::transaction(&self.config("").db, body).expect("the test's transaction")
    }

    pub fn exec(&self, sql: &str, args: &[SqlValue]) -> u64 {
        self.tx(|tx| tx.exec(sql, args))
    }

    pub fn rows(&self, sql: &str, args: &[SqlValue]) -> Vec<Row> {
        self.tx(|tx| tx.query(sql, args))
    }

    /// The first column of every row, as text.
    pub fn texts(&self, sql: &str, args: &[SqlValue]) -> Vec<String> {
        self.rows(sql, args)
            .iter()
            .map(|r| r.text(0).expect("a text column"))
            .collect()
    }

    pub fn count(&self, sql: &str, args: &[SqlValue]) -> i64 {
        self.rows(sql, args)[0].int(0).expect("a count")
    }

    /// The db module on this database with more `[db]` keys and other sections.
    pub fn start_with(&self, db_keys: &str, extra: &str) -> Harness {
        let mut h = Harness::new(self.config_with(db_keys, extra));
        h.start::<Db>().expect("the db module starts");
        h
    }

    pub fn start(&self, extra: &str) -> Harness {
        self.start_with("", extra)
    }

    /// A plain connection to this test's MariaDB database.
    pub fn mysql_conn(&self) -> mysql::Conn {
        let m = self.mysql.as_ref().expect("a MariaDB test");
        mysql::Conn::new(m.url.as_str()).expect("the test database connects")
    }
}

/// Calls the db module and expects a db reply.
pub fn call_db(h: &mut Harness, request: DbRequest) -> Result<DbReply, CallError> {
    match h.call(ModuleKind::Db, Request::Db(request), WAIT)? {
        Reply::Db(reply) => Ok(reply),
        other => panic!("not a db reply: {other:?}"),
    }
}

/// Calls the db module and expects the number of rows it changed.
pub fn rows(h: &mut Harness, request: DbRequest) -> u64 {
    match call_db(h, request).unwrap() {
        DbReply::Rows(n) => n,
        other => panic!("{other:?}"),
    }
}

// The queue's requests, shared by the queueing and grid tests.

/// Alice's submission of a dataset of `njobs` jobs of `config` for `gridspec`.
pub fn submission(config: &Value, njobs: u32, gridspec: &str, debug: bool) -> DbRequest {
    DbRequest::SubmitDataset(Box::new(DatasetSubmission {
        config: config.to_string(),
        description: String::new(),
        njobs,
        gridspec: gridspec.into(),
        debug,
        group: None,
        username: "alice".into(),
        stat_keys: vec![],
    }))
}

/// Submits a dataset for `gridspec` and creates all its jobs; answers its id.
pub fn submit_dataset(
    h: &mut Harness,
    config: &Value,
    njobs: u32,
    gridspec: &str,
    debug: bool,
) -> String {
    let reply = call_db(h, submission(config, njobs, gridspec, debug)).unwrap();
    let DbReply::Dataset { dataset_id, .. } = reply else {
        panic!("{reply:?}");
    };
    call_db(h, DbRequest::BufferJobs { max_jobs: 1000 }).unwrap();
    dataset_id
}

/// A dataset config of one task named `main` with these requirements.
pub fn one_task(requirements: Value) -> Value {
    json!({"version": 3, "tasks": [
        {"name": "main", "requirements": requirements,
         "trays": [{"modules": [{"src": "run.sh"}]}]}]})
}

/// Queues up to `num` tasks on `gridspec` that fit `largest`.
/// A grid's largest slot with no limits: zeros are unlimited, and it has gpus (a grid
/// without gpus never gets a gpu task).
pub fn unlimited() -> Resources {
    Resources {
        gpu: 8,
        ..Resources::default()
    }
}

pub fn queue_tasks(
    h: &mut Harness,
    gridspec: &str,
    num: u32,
    largest: Resources,
    pilot_mode: bool,
) -> Vec<QueuedTask> {
    let request = DbRequest::QueueTasks {
        gridspec: gridspec.into(),
        num,
        largest,
        pilot_mode,
    };
    match call_db(h, request).unwrap() {
        DbReply::Queued(tasks) => tasks,
        other => panic!("{other:?}"),
    }
}

/// Moves a task on `event`.
pub fn change(h: &mut Harness, task: &str, event: TaskEvent) {
    let request = DbRequest::ChangeTaskState {
        task_id: task.into(),
        event,
    };
    call_db(h, request).unwrap();
}

/// A slot with these cpus, gpus and memory, and room for the disk and time any test asks.
pub fn slot(cpu: u32, gpu: u32, memory: f64) -> Resources {
    Resources {
        cpu,
        gpu,
        memory,
        disk: 100.0,
        time: 24.0,
    }
}

/// Creates a pilot on `gridspec` asking `requirements`; answers its id and passkey.
pub fn create_pilot(h: &mut Harness, gridspec: &str, requirements: Resources) -> (String, String) {
    let request = DbRequest::CreatePilot {
        gridspec: gridspec.into(),
        requirements,
    };
    match call_db(h, request).unwrap() {
        DbReply::Pilot { pilot_id, passkey } => (pilot_id, passkey),
        other => panic!("{other:?}"),
    }
}

/// The task configs `NewTask` hands the pilot of `passkey` on `gridspec` (host `node1`).
pub fn new_task_configs(
    h: &mut Harness,
    passkey: &str,
    gridspec: &str,
    available: Resources,
    os: Option<&str>,
) -> Result<Vec<Value>, CallError> {
    let request = DbRequest::NewTask {
        passkey: passkey.into(),
        gridspec: gridspec.into(),
        available,
        os: os.map(str::to_string),
        hostname: "node1".into(),
    };
    call_db(h, request).map(|reply| match reply {
        DbReply::TaskConfigs(configs) => configs,
        other => panic!("{other:?}"),
    })
}

/// The task ids of task configs.
pub fn config_task_ids(configs: &[Value]) -> Vec<String> {
    configs
        .iter()
        .map(|c| c["options"]["task_id"].as_str().unwrap().to_string())
        .collect()
}

/// Each named body (`fn NAME(db: &TestDb)`, with `TestDb` in scope) as two tests:
/// `NAME::sqlite` and `NAME::mariadb`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(&super::TestDb::sqlite());
            }

            #[test]
            fn mariadb() {
                if let Some(db) = super::TestDb::mariadb(stringify!($name)) {
                    super::$name(&db);
                }
            }
        }
    )*};
}
