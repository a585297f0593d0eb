//! Runs the real `iceprod` binary for integration tests: a private folder with a config, a
//! free port, the server in the foreground (again in the same folder after it exited, or
//! expected to fail at start), and small blocking HTTP and control clients.
//! Every wait is bounded. The server runs in a session of its own: when the test ends, pass
//! or fail, it is killed with every process it started (local grid jobs and their tasks).

#![allow(dead_code)] // each test file uses its own part of this

pub mod browser;
pub mod grids;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use iceprod_runtime::session::SessionChild;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_iceprod")
}

/// The config every test starts from; `extra` is appended (more tables). The queue module
/// is off unless `extra` has its own `[modules]` table: most tests drive the task states
/// themselves and must not race a queue cycle.
pub fn base_config(port: u16, website: &str, extra: &str) -> String {
    let modules = if extra.contains("[modules]") {
        ""
    } else {
        "[modules]\nqueue = false\n\n"
    };
    format!(
        "[logging]\nlevel = \"debug\"\n\n[website]\naddress = \"127.0.0.1\"\nport = {port}\n{website}\n\n\
         [debug]\nfault_injection = true\n\n{modules}{extra}"
    )
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The server; dropping it kills the server's whole session.
    pub child: Option<SessionChild>,
}

impl Server {
    /// Starts a server on `config` (from [`base_config`]) and waits until /healthz answers.
    pub fn start_with(config: impl FnOnce(u16) -> String) -> Server {
        Server::start_with_env(config, &[])
    }

    /// As [`Server::start_with`], with more environment variables for the server (and so
    /// for the grid tools it runs).
    pub fn start_with_env(config: impl FnOnce(u16) -> String, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        Server::start_in(dir, config, env)
    }

    /// As [`Server::start_with_env`], in a folder the test prepared (files the server finds
    /// at its first start).
    pub fn start_in(
        dir: tempfile::TempDir,
        config: impl FnOnce(u16) -> String,
        env: &[(&str, &str)],
    ) -> Server {
        let mut server = Server::spawn_in(dir, config, env);
        server.wait_up();
        server
    }

    /// Starts a server on `config` in `dir` without waiting for it to come up: for a server
    /// expected to fail at start (see [`Server::wait_exit`] and [`Server::log`]).
    pub fn spawn_in(
        dir: tempfile::TempDir,
        config: impl FnOnce(u16) -> String,
        env: &[(&str, &str)],
    ) -> Server {
        let port = free_port();
        std::fs::write(dir.path().join("iceprod.toml"), config(port)).expect("write config");
        let mut server = Server {
            dir,
            port,
            child: None,
        };
        server.child = Some(server.launch(env));
        server
    }

    /// Starts the server again after it exited, in the same folder on the same config file
    /// (rewrite it first with [`Server::write_config`] to change it), without waiting; its
    /// output goes on in the same log.
    pub fn relaunch(&mut self) {
        assert!(
            self.child.is_none() || self.exited().is_some(),
            "relaunch while the server runs"
        );
        self.child = Some(self.launch(&[]));
    }

    fn launch(&self, env: &[(&str, &str)]) -> SessionChild {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        SessionChild::spawn(
            Command::new(binary())
                .args(["server", "--foreground", "--config"])
                .arg(self.config_path())
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log),
        )
        .expect("spawn iceprod")
    }

    /// Waits until /healthz answers; fails the test with the log if the server exits first.
    pub fn wait_up(&mut self) {
        let up = wait_until(WAIT, || {
            self.exited().is_some() || self.get("/healthz").is_some_and(|(s, _)| s == 200)
        });
        assert!(
            up && self.exited().is_none(),
            "server did not come up:\n{}",
            self.log()
        );
    }

    pub fn start(extra: &str) -> Server {
        Server::start_with(|port| base_config(port, "", extra))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("iceprod.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// The exit status if the server has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.exited();
            status.is_some()
        });
        status
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("rewrite config");
    }

    /// Runs `iceprod ctl ARGS` against this server; (success, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let socket = self.dir.path().join("var/iceprod.sock");
        ctl_with("--socket", &socket, args)
    }

    /// `ctl --json status` as JSON (the `result` object).
    pub fn status(&self) -> Value {
        let (ok, out, err) = self.ctl(&["--json", "status"]);
        assert!(ok, "ctl status failed: {err}");
        let v: Value = serde_json::from_str(&out).expect("status is JSON");
        v["result"].clone()
    }

    pub fn module(&self, name: &str) -> Value {
        let status = self.status();
        status["modules"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http(
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    }

    /// POSTs `body` to /jsonrpc on a new connection.
    pub fn post(&self, body: &[u8]) -> Option<(u16, String)> {
        http(
            self.port,
            &format!(
                "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
            body,
        )
    }

    pub fn rpc(&self, method: &str, params: Value) -> Option<(u16, Value)> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        let (status, text) = self.post(body.to_string().as_bytes())?;
        Some((status, serde_json::from_str(&text).ok()?))
    }

    pub fn echo_ok(&self) -> bool {
        matches!(self.rpc("echo", serde_json::json!({"value": "hi"})),
            Some((200, v)) if v["result"] == "hi")
    }
}

impl Server {
    /// The server's session id (its pid): every process it started, whatever their process
    /// group, is in it.
    pub fn session(&self) -> i32 {
        self.child.as_ref().expect("running").session().id()
    }
}

/// Runs `iceprod ctl OPTION PATH ARGS` (`--socket` or `--config`); (success, stdout, stderr).
pub fn ctl_with(option: &str, path: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .arg("ctl")
        .arg(option)
        .arg(path)
        .args(args)
        .output()
        .expect("run iceprod ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One request on a fresh connection; (status, body).
pub fn http(port: u16, head: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader)
}

/// Reads one HTTP/1.1 response with a Content-Length (or to EOF without one).
pub fn read_response(reader: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).ok()?;
        }
        None => {
            reader.read_to_end(&mut body).ok()?;
        }
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A keep-alive HTTP/1.1 connection that sends echo requests.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        KeepAlive {
            reader: BufReader::new(stream),
        }
    }

    /// Sends echo of `value` and checks the answer; false on any failure.
    pub fn echo(&mut self, value: &str) -> bool {
        let body =
            serde_json::json!({"jsonrpc":"2.0","method":"echo","params":{"value":value},"id":1})
                .to_string();
        let head = format!(
            "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body.as_bytes()).is_err()
        {
            return false;
        }
        match read_response(&mut self.reader) {
            Some((200, text)) => {
                serde_json::from_str::<Value>(&text).is_ok_and(|v| v["result"] == value)
            }
            _ => false,
        }
    }
}

pub fn config_dir(server: &Server) -> &Path {
    server.dir.path()
}

/// Longer than the controller's SIGHUP debounce window, so a pending reload would have run.
pub fn reload_window() -> Duration {
    Duration::from_millis(750)
}

/// The server's SQLite database, for seeding and checking rows.
pub fn db(server: &Server) -> iceprod_db::rusqlite::Connection {
    iceprod_db::store::open(&server.dir.path().join("var/iceprod.db")).expect("open the db")
}

/// The passkey of the admin created at the first start.
pub fn admin_key(server: &Server) -> String {
    std::fs::read_to_string(server.dir.path().join("var/admin.passkey"))
        .expect("admin passkey file")
        .trim()
        .to_string()
}

/// One text value from the server's database.
pub fn db_text(server: &Server, sql: &str) -> String {
    db(server)
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The text of `examples/NAME`, the example datasets the README points to.
pub fn example_text(name: &str) -> String {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `examples/NAME` as JSON.
pub fn example(name: &str) -> Value {
    serde_json::from_str(&example_text(name)).expect("the example is JSON")
}

/// Submits `examples/two-tasks.json` with one job and writes job `j1` and its first `tasks`
/// tasks `t0`, `t1`… straight into the database: queued for grid `g1` and in the pilot
/// lookup, with task passkeys `key-tN` when `task_passkeys`; and pilot `p1` (passkey
/// `key-p1`). Answers the dataset id.
pub fn seed_pilot_tasks(server: &Server, tasks: usize, task_passkeys: bool) -> String {
    use iceprod_db::rusqlite::params;
    let config = example("two-tasks.json");
    let (_, v) = server
        .rpc(
            "submit_dataset",
            serde_json::json!({"passkey": admin_key(server), "config": config, "njobs": 1}),
        )
        .unwrap();
    let dataset = v["result"].as_str().expect("a dataset id").to_string();
    let conn = db(server);
    let now = iceprod_db::ops::now();
    conn.execute(
        "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
         VALUES ('j1', ?1, 0, 'processing', ?2)",
        params![dataset, now],
    )
    .unwrap();
    for i in 0..tasks {
        let task = format!("t{i}");
        conn.execute(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             status_changed, requirements, gridspec) SELECT ?3, 'j1', ?1, task_rel_id, ?4, \
             'queued', ?2, '{\"cpu\":1,\"memory\":1.0}', 'g1' FROM task_rel WHERE task_index = ?4",
            params![dataset, now, task, i as i64],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO task_lookup (task_id, gridspec, insert_time, req_cpu, req_memory, \
             req_disk, req_time) VALUES (?1, 'g1', ?2, 1, 1.0, 1.0, 0.5)",
            params![task, now],
        )
        .unwrap();
        if task_passkeys {
            conn.execute(
                "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
                 VALUES (?1, ?2, 'task', ?1, '2999-01-01T00:00:00Z')",
                params![task, format!("key-{task}")],
            )
            .unwrap();
        }
    }
    conn.execute(
        "INSERT INTO pilot (pilot_id, gridspec, submit_time, last_update) VALUES ('p1', 'g1', ?1, ?1)",
        params![now],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
         VALUES ('pk1', 'key-p1', 'pilot', 'p1', '2999-01-01T00:00:00Z')",
        [],
    )
    .unwrap();
    dataset
}

/// Runs `iceprod user ARGS --config CONFIG`, with `stdin` as its standard input;
/// (success, stdout, stderr).
pub fn user_cli(config: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(binary())
        .arg("user")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iceprod user");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("iceprod user ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates website user `name` with `password` through `iceprod user add --password-stdin`.
pub fn add_website_user(server: &Server, name: &str, password: &str, admin: bool) {
    let mut args = vec!["add", name, "--password-stdin"];
    if admin {
        args.push("--admin");
    }
    let (ok, out, err) = user_cli(&server.config_path(), &args, &format!("{password}\n"));
    assert!(ok, "iceprod user add {name}: {out}{err}");
}

/// Logs in as the website's login page does (the db's `Login`, on the database of the config
/// at `config`): the session, or the db's refusal.
pub fn login(
    config: &Path,
    username: &str,
    password: &str,
) -> Result<iceprod_runtime::web::SessionInfo, iceprod_db::DbError> {
    use iceprod_runtime::web::{AccountReply, AccountRequest};
    let config = iceprod_runtime::Config::load(config, &iceprod_runtime::ModuleKind::ALL)
        .expect("the test's config loads");
    let rules = iceprod_db::rules_of(&config);
    let request = AccountRequest::Login {
        username: username.into(),
        password: password.into(),
        ttl: Duration::from_secs(3600),
    };
    let reply = iceprod_db::transaction(&config.db, |tx| {
        iceprod_db::accounts::execute(tx, rules, &request)
    })?;
    match reply {
        iceprod_runtime::DbReply::Account(AccountReply::Session(session)) => Ok(session),
        other => panic!("login answered {other:?}"),
    }
}

impl Server {
    /// A JSON-RPC call as a page's script makes it: with the session cookie and, when given,
    /// the CSRF header.
    pub fn rpc_in_session(
        &self,
        method: &str,
        params: Value,
        session_id: &str,
        csrf_token: Option<&str>,
    ) -> Option<(u16, Value)> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
                .to_string();
        let csrf = csrf_token.map_or(String::new(), |t| format!("X-CSRF-Token: {t}\r\n"));
        let (status, text) = http(
            self.port,
            &format!(
                "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Cookie: theme=dark; iceprod_session={session_id}\r\n{csrf}\r\n",
                body.len()
            ),
            body.as_bytes(),
        )?;
        Some((status, serde_json::from_str(&text).ok()?))
    }
}
