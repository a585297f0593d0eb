//! `iceprod task`, the worker side, run as the real binary: against a fake JSON-RPC server
//! written here (it records every call, answers like the real server unless a test says
//! otherwise, serves files and takes PUTs, and can refuse connections for a while), and
//! against the real server binary in direct and pilot mode.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{wait_until, Server};
use iceprod_runtime::session::SessionChild;
use serde_json::{json, Value};

// ---- the fake server ----

/// How the fake answers one JSON-RPC call.
enum Reply {
    Result(Value),
    Error {
        status: u16,
        code: i64,
        message: String,
    },
    /// Close the connection without answering (an answer lost on the way back).
    Drop,
}

type Responder = dyn Fn(&str, &Value, usize) -> Option<Reply> + Send + Sync;

#[derive(Default)]
struct State {
    /// (method, params) of every JSON-RPC call, in order.
    calls: Vec<(String, Value)>,
    files: HashMap<String, Vec<u8>>,
    puts: HashMap<String, Vec<u8>>,
    down_until: Option<Instant>,
}

struct Fake {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Fake {
    /// A fake server answering as the real one does, except where `responder` answers
    /// (method, params, how many calls of that method came before).
    fn start(
        responder: impl Fn(&str, &Value, usize) -> Option<Reply> + Send + Sync + 'static,
    ) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let responder: Arc<Responder> = Arc::new(responder);
        let st = state.clone();
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            while let Some(l) = listener.as_ref() {
                let Ok((stream, _)) = l.accept() else {
                    continue;
                };
                let down = st.lock().unwrap().down_until.take();
                if let Some(until) = down {
                    // Refuse connections: no listener until then.
                    drop(stream);
                    drop(listener.take());
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    listener = Some(TcpListener::bind(("127.0.0.1", port)).unwrap());
                    continue;
                }
                let (st, responder) = (st.clone(), responder.clone());
                std::thread::spawn(move || serve(stream, &st, &*responder));
            }
        });
        Fake { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().calls.clone()
    }

    fn methods(&self) -> Vec<String> {
        self.calls().into_iter().map(|(m, _)| m).collect()
    }

    fn params_of(&self, method: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|(m, _)| m == method)
            .map(|(_, p)| p)
            .collect()
    }

    /// The decoded log `name` the worker uploaded last.
    fn log(&self, name: &str) -> String {
        let data = self
            .params_of("upload_logfile")
            .into_iter()
            .rev()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} uploaded"))["data"]
            .as_str()
            .unwrap()
            .to_string();
        decode_log(&data)
    }

    fn serve_file(&self, path: &str, body: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.into(), body.into());
    }

    /// Refuses connections for `how_long` from now.
    fn go_down(&self, how_long: Duration) {
        self.state.lock().unwrap().down_until = Some(Instant::now() + how_long);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

fn decode_log(data: &str) -> String {
    if data.is_empty() {
        return String::new();
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("zlib");
    text
}

fn serve(stream: TcpStream, state: &Mutex<State>, responder: &Responder) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (verb, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut stream = reader.into_inner();
    let mut answer = |status: u16, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    match verb.as_str() {
        "GET" => match state.lock().unwrap().files.get(&path) {
            Some(f) => answer(200, f),
            None => answer(404, b"not found"),
        },
        "PUT" => {
            state.lock().unwrap().puts.insert(path, body);
            answer(201, b"");
        }
        _ => {
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let method = request["method"].as_str().unwrap_or("").to_string();
            let params = request["params"].clone();
            let before = {
                let mut st = state.lock().unwrap();
                let n = st.calls.iter().filter(|(m, _)| *m == method).count();
                st.calls.push((method.clone(), params.clone()));
                n
            };
            let reply =
                responder(&method, &params, before).unwrap_or_else(|| default_reply(&method));
            let id = request["id"].clone();
            match reply {
                Reply::Result(v) => answer(
                    200,
                    json!({"jsonrpc": "2.0", "result": v, "id": id}).to_string().as_bytes(),
                ),
                Reply::Error {
                    status,
                    code,
                    message,
                } => answer(
                    status,
                    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id})
                        .to_string()
                        .as_bytes(),
                ),
                Reply::Drop => {}
            }
        }
    }
}

/// What the real server answers to a well-formed call on a task it runs.
fn default_reply(method: &str) -> Reply {
    match method {
        "stillrunning" => Reply::Result(Value::Bool(true)),
        "new_task" => Reply::Result(Value::Null),
        "set_processing" | "finish_task" | "task_error" | "upload_logfile" | "update_pilot" => {
            Reply::Result(Value::Null)
        }
        other => Reply::Error {
            status: 400,
            code: -32601,
            message: format!("method not found: {other}"),
        },
    }
}

fn answers_as_usual(_: &str, _: &Value, _: usize) -> Option<Reply> {
    None
}

// ---- running the worker ----

/// A task config of one task `gen` with one tray of `modules`, task id `t1`.
fn task_config(modules: Value, tray: Value) -> Value {
    let mut tray_obj = json!({"name": "main", "modules": modules});
    if let Value::Object(extra) = tray {
        tray_obj.as_object_mut().unwrap().extend(extra);
    }
    json!({
        "version": 3,
        "dataset": 7,
        "steering": {"parameters": {"x": "sx"}},
        "tasks": [{"name": "gen", "parameters": {"param": "tp"}, "trays": [tray_obj]}],
        "options": {"task_id": "t1", "task": "gen", "dataset_id": "d1", "job": 0,
                    "jobs_submitted": 1, "debug": false, "stillrunninginterval": 60,
                    "resources": {"cpu": 1, "gpu": 0, "memory": 1, "disk": 1, "time": 1}}
    })
}

fn sh(script: &str) -> Value {
    json!({"name": "gen", "src": "/bin/sh", "args": ["-c", script]})
}

/// A folder holding `task.cfg` = `config`.
fn task_folder(config: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("task.cfg"), config.to_string()).unwrap();
    dir
}

fn worker(dir: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::binary());
    cmd.arg("task")
        .args(["--url", url, "--passkey", "key-t1", "--cfgfile", "task.cfg"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Starts a worker in a session of its own: when the test ends, it and its modules are killed.
fn start(mut worker: Command) -> SessionChild {
    SessionChild::spawn(&mut worker).expect("start iceprod task")
}

fn run(dir: &Path, fake: &Fake, extra: &[&str]) -> Output {
    worker(dir, &fake.url(), extra)
        .output()
        .expect("run iceprod task")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The error summary of the one task_error call.
fn error_summary(fake: &Fake) -> String {
    let errors = fake.params_of("task_error");
    assert_eq!(errors.len(), 1, "{:?}", fake.methods());
    errors[0]["error_info"]["error_summary"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// True while the process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn read_pid(dir: &Path) -> i32 {
    assert!(wait_until(common::WAIT, || std::fs::read_to_string(
        dir.join("pid")
    )
    .is_ok_and(|s| s.trim().parse::<i32>().is_ok())));
    std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

// ---- against the fake server ----

#[test]
fn a_trivial_task_reports_in_order_and_uploads_its_logs() {
    let fake = Fake::start(answers_as_usual);
    let dir = task_folder(&task_config(
        json!([sh("echo hello; echo oops >&2")]),
        Value::Null,
    ));
    let out = run(dir.path(), &fake, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let methods = fake.methods();
    let mut rest: Vec<&str> = methods.iter().map(String::as_str).collect();
    assert_eq!(rest.remove(0), "set_processing");
    rest.retain(|m| *m != "stillrunning");
    assert_eq!(
        rest,
        ["upload_logfile"; 3]
            .iter()
            .copied()
            .chain(["finish_task"])
            .collect::<Vec<_>>()
    );
    let names: Vec<Value> = fake
        .params_of("upload_logfile")
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, ["stdlog", "stderr", "stdout"]);
    for (_, p) in fake.calls() {
        assert_eq!(p["passkey"], "key-t1");
    }
    assert_eq!(fake.log("stdout"), "hello\n");
    assert_eq!(fake.log("stderr"), "oops\n");
    assert!(fake
        .log("stdlog")
        .contains("running module gen (tray 0, iteration 0)"));
    let stats = &fake.params_of("finish_task")[0];
    assert_eq!(stats["task_id"], "t1");
    let stats = &stats["stats"];
    assert!(stats["hostname"].is_string() && stats["time_used"].as_f64().unwrap() >= 0.0);
    assert!(stats["task_stats"].is_object());
    for key in ["cpu", "memory", "disk", "time"] {
        assert!(stats["resources"][key].is_number(), "{stats}");
    }
    assert!(
        stats["resources"]["memory"].as_f64().unwrap() > 0.0,
        "peak RSS: {stats}"
    );
}

#[test]
fn a_module_exiting_3_in_its_second_iteration_ends_in_task_error() {
    let fake = Fake::start(answers_as_usual);
    let dir = task_folder(&task_config(
        json!([{"name": "gen", "src": "gen.sh", "args": "$(iter)"}]),
        json!({"iterations": 3}),
    ));
    std::fs::write(
        dir.path().join("gen.sh"),
        "echo iter $1\n[ \"$1\" = 1 ] && exit 3\nexit 0\n",
    )
    .unwrap();
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    assert_eq!(
        error_summary(&fake),
        "module gen (tray 0, iteration 1) exited with 3"
    );
    assert_eq!(fake.log("stdout"), "iter 0\niter 1\n");
    assert!(fake.params_of("finish_task").is_empty());
    let info = &fake.params_of("task_error")[0]["error_info"];
    assert!(
        info["hostname"].is_string() && info["resources"]["time"].is_number(),
        "{info}"
    );
}

#[test]
fn a_missing_script_ends_in_task_error_naming_it() {
    let fake = Fake::start(answers_as_usual);
    let dir = task_folder(&task_config(
        json!([{"name": "gen", "src": "nosuch.sh"}]),
        Value::Null,
    ));
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    assert_eq!(
        error_summary(&fake),
        "module gen (tray 0, iteration 0): script nosuch.sh not found"
    );
}

#[test]
fn a_script_that_cannot_be_executed_ends_in_task_error() {
    let fake = Fake::start(answers_as_usual);
    let dir = task_folder(&task_config(
        json!([{"name": "gen", "src": "gen"}]),
        Value::Null,
    ));
    // No #! line and no known extension: not a program the kernel can run.
    std::fs::write(dir.path().join("gen"), "just text\n").unwrap();
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    let summary = error_summary(&fake);
    assert!(
        summary.starts_with("module gen (tray 0, iteration 0): cannot run ")
            && !summary.contains('\n'),
        "{summary}"
    );
}

#[test]
fn a_hundred_mb_of_output_is_bounded_on_disk_and_in_the_upload() {
    let fake = Fake::start(answers_as_usual);
    let dir = task_folder(&task_config(
        json!([sh("echo start; yes x | head -c 100000000")]),
        Value::Null,
    ));
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    assert_eq!(
        error_summary(&fake),
        "module gen (tray 0, iteration 0) wrote more than 64 MiB to stdout"
    );
    let on_disk = std::fs::metadata(dir.path().join("stdout")).unwrap().len();
    assert_eq!(on_disk, 64 << 20);
    let uploaded = fake.log("stdout");
    assert!(
        uploaded.starts_with("[iceprod: log truncated: the first "),
        "{:.100}",
        uploaded
    );
    assert!(uploaded.len() <= (6 << 20) + 200, "{}", uploaded.len());
    assert!(uploaded.ends_with("x\nx\n"));
}

#[test]
fn an_input_that_404s_ends_in_task_error_before_any_module_runs() {
    let fake = Fake::start(answers_as_usual);
    let mut config = task_config(json!([sh("echo ran > ran")]), Value::Null);
    let remote = format!("{}/files/missing.dat", fake.url());
    config["tasks"][0]["data"] =
        json!([{"remote": remote, "local": "in.dat", "movement": "input"}]);
    let dir = task_folder(&config);
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    assert_eq!(error_summary(&fake), format!("input {remote}: HTTP 404"));
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn stillrunning_false_kills_the_module_and_reports_nothing_more() {
    let fake = Fake::start(|method, _, n| {
        (method == "stillrunning" && n >= 1).then_some(Reply::Result(Value::Bool(false)))
    });
    let dir = task_folder(&task_config(
        json!([sh("echo $$ > pid; exec sleep 30")]),
        Value::Null,
    ));
    let started = Instant::now();
    let mut child = start(worker(
        dir.path(),
        &fake.url(),
        &["--stillrunning-interval", "0.2"],
    ));
    let pid = read_pid(dir.path());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("the worker stops");
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!alive(pid), "the module was killed");
    let methods = fake.methods();
    assert_eq!(
        methods.last().map(String::as_str),
        Some("stillrunning"),
        "{methods:?}"
    );
    assert!(methods.iter().filter(|m| *m == "stillrunning").count() >= 2);
    assert!(!methods
        .iter()
        .any(|m| m == "task_error" || m == "finish_task" || m == "upload_logfile"));
}

#[test]
fn a_revoked_passkey_on_stillrunning_stops_the_attempt() {
    // The server reset this attempt and queued the task again with a new passkey.
    let fake = Fake::start(|method, _, n| {
        (method == "stillrunning" && n >= 1).then(|| Reply::Error {
            status: 400,
            code: 403,
            message: "unknown, expired or revoked passkey".into(),
        })
    });
    let dir = task_folder(&task_config(
        json!([sh("echo $$ > pid; exec sleep 30")]),
        Value::Null,
    ));
    let mut child = start(worker(
        dir.path(),
        &fake.url(),
        &["--stillrunning-interval", "0.2"],
    ));
    let pid = read_pid(dir.path());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("the worker stops");
    assert!(!status.success());
    assert!(!alive(pid), "the module was killed");
    let methods = fake.methods();
    assert!(!methods
        .iter()
        .any(|m| m == "task_error" || m == "finish_task" || m == "upload_logfile"));
}

#[test]
fn sigterm_kills_the_module_and_reports_task_error() {
    let fake = Fake::start(answers_as_usual);
    let dir = task_folder(&task_config(
        json!([sh("echo $$ > pid; exec sleep 30")]),
        Value::Null,
    ));
    let mut child = start(worker(dir.path(), &fake.url(), &[]));
    let pid = read_pid(dir.path());
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("the worker stops");
    assert!(!status.success());
    assert!(!alive(pid));
    assert_eq!(error_summary(&fake), "killed by SIGTERM");
    assert!(fake.params_of("finish_task").is_empty());
}

#[test]
fn a_server_refusing_connections_for_five_seconds_gets_one_report_after_it_returns() {
    let fake = Fake::start(answers_as_usual);
    let dir = task_folder(&task_config(json!([sh("sleep 1; echo done")]), Value::Null));
    let mut child = start(worker(
        dir.path(),
        &fake.url(),
        &["--stillrunning-interval", "0.3"],
    ));
    assert!(wait_until(common::WAIT, || fake
        .methods()
        .contains(&"set_processing".to_string())));
    let down_at = Instant::now();
    fake.go_down(Duration::from_secs(5));
    let status = wait_exit(&mut child, Duration::from_secs(40)).expect("the worker ends");
    let mut out = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    assert!(down_at.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        fake.params_of("finish_task").len(),
        1,
        "{:?}",
        fake.methods()
    );
    assert!(fake.params_of("task_error").is_empty());
    assert_eq!(fake.log("stdout"), "done\n");
    assert!(out.contains("the task keeps running"), "{out}");
}

#[test]
fn a_finish_task_whose_answer_was_lost_counts_as_delivered() {
    // The first finish_task is applied but its answer never arrives; the retry meets a task
    // that is complete already.
    let fake = Fake::start(|method, _, n| match (method, n) {
        ("finish_task", 0) => Some(Reply::Drop),
        ("finish_task", _) => Some(Reply::Error {
            status: 400,
            code: -32602,
            message: "task t1: a complete task cannot take Finish".into(),
        }),
        _ => None,
    });
    let dir = task_folder(&task_config(json!([sh("true")]), Value::Null));
    let out = run(dir.path(), &fake, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fake.params_of("finish_task").len(), 2);
    assert!(fake.params_of("task_error").is_empty());
}

#[test]
fn a_refused_call_is_not_retried() {
    let fake = Fake::start(|method, _, _| {
        (method == "set_processing").then(|| Reply::Error {
            status: 400,
            code: 403,
            message: "this passkey may not act on task t1".into(),
        })
    });
    let dir = task_folder(&task_config(json!([sh("echo ran > ran")]), Value::Null));
    let started = Instant::now();
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(fake.methods(), ["set_processing"]);
    assert!(!dir.path().join("ran").exists());

    // A finish_task refused at its first attempt is a failure, not delivered.
    let fake = Fake::start(|method, _, _| {
        (method == "finish_task").then(|| Reply::Error {
            status: 400,
            code: -32602,
            message: "task t1: a reset task cannot take Finish".into(),
        })
    });
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    assert_eq!(fake.params_of("finish_task").len(), 1);
}

#[test]
fn expressions_in_args_see_iter_steering_and_parameters() {
    let fake = Fake::start(answers_as_usual);
    let module = json!({"name": "gen", "src": "/bin/sh",
        "args": "-c 'echo $1 $2 $3 $4' x $(iter) $steering(x) $(param) $(dataset)"});
    let dir = task_folder(&task_config(json!([module]), json!({"iterations": 2})));
    let out = run(dir.path(), &fake, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fake.log("stdout"), "0 sx tp 7\n1 sx tp 7\n");
}

#[test]
fn env_clear_hides_the_worker_environment_and_the_passkey() {
    let fake = Fake::start(answers_as_usual);
    let script = "echo \"[$SECRET][$ICEPROD_TASK_ID][$ICEPROD_PASSKEY][$HOME]\"";
    let mut open = sh(script);
    open["env_clear"] = json!(false);
    let dir = task_folder(&task_config(json!([sh(script), open]), Value::Null));
    let out = worker(dir.path(), &fake.url(), &[])
        .env("SECRET", "s3")
        .env("HOME", "/home/x")
        .env("ICEPROD_PASSKEY", "key-t1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fake.log("stdout"),
        "[][t1][][/home/x]\n[s3][t1][][/home/x]\n"
    );
}

#[test]
fn env_shell_wraps_the_module() {
    let fake = Fake::start(answers_as_usual);
    let mut module = sh("echo inner $0");
    module["env_shell"] = json!("wrap.sh $(param)");
    let dir = task_folder(&task_config(json!([module]), Value::Null));
    std::fs::write(
        dir.path().join("wrap.sh"),
        "#!/bin/sh\necho wrapped $1\nshift\nexec \"$@\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &fake, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fake.log("stdout"), "wrapped tp\ninner /bin/sh\n");
}

#[test]
fn data_is_staged_in_and_out_by_file_url_and_http() {
    let fake = Fake::start(answers_as_usual);
    let store = tempfile::tempdir().unwrap();
    std::fs::write(store.path().join("in.dat"), "from file\n").unwrap();
    fake.serve_file("/files/web.dat", b"from http\n");
    let mut config = task_config(json!([sh("cat in.dat web.dat > out.dat")]), Value::Null);
    let store_url = format!("file://{}", store.path().display());
    config["tasks"][0]["data"] = json!([
        {"remote": format!("{store_url}/in.dat"), "movement": "input"},
        {"remote": format!("{}/files/web.dat", fake.url()), "movement": "input"},
        {"remote": format!("{store_url}/out/$(dataset)/out.dat"), "local": "out.dat", "movement": "output"},
        {"remote": format!("{}/put/out.dat", fake.url()), "local": "out.dat", "movement": "output"},
    ]);
    let dir = task_folder(&config);
    let out = run(dir.path(), &fake, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let both = "from file\nfrom http\n";
    assert_eq!(
        std::fs::read_to_string(store.path().join("out/7/out.dat")).unwrap(),
        both
    );
    assert_eq!(
        fake.state.lock().unwrap().puts["/put/out.dat"],
        both.as_bytes()
    );
    assert_eq!(fake.params_of("finish_task").len(), 1);
}

#[test]
fn a_gridftp_input_fails_with_a_clear_summary() {
    let fake = Fake::start(answers_as_usual);
    let mut config = task_config(json!([sh("true")]), Value::Null);
    config["tasks"][0]["data"] =
        json!([{"remote": "gsiftp://gridftp.example/x.dat", "movement": "input"}]);
    let dir = task_folder(&config);
    let out = run(dir.path(), &fake, &[]);
    assert!(!out.status.success());
    assert_eq!(
        error_summary(&fake),
        "input gsiftp://gridftp.example/x.dat: GridFTP needs the gridftp build"
    );
}

// ---- against the real server ----

fn status_of(server: &Server, task: &str) -> String {
    common::db_text(
        server,
        &format!("SELECT status FROM task WHERE task_id = '{task}'"),
    )
}

fn real_worker(server: &Server, dir: &Path, passkey: &str, args: &[&str]) -> Output {
    Command::new(common::binary())
        .arg("task")
        .args(args)
        .current_dir(dir)
        .env(
            "ICEPROD_SERVER_URL",
            format!("http://127.0.0.1:{}", server.port),
        )
        .env("ICEPROD_PASSKEY", passkey)
        .output()
        .expect("run iceprod task")
}

#[test]
fn direct_mode_completes_tasks_on_the_real_server_by_task_id_and_by_cfgfile() {
    let server = Server::start("");
    common::seed_pilot_tasks(&server, 2, true);
    common::db(&server)
        .execute("DELETE FROM task_lookup", [])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = real_worker(&server, dir.path(), "key-t0", &["--task-id", "t0"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), server.log());
    assert_eq!(status_of(&server, "t0"), "complete");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("gen.txt")).unwrap(),
        "generating 1000 events for job 0\n"
    );
    let logs = common::db_text(
        &server,
        "SELECT group_concat(name) FROM (SELECT name FROM task_log WHERE task_id = 't0' ORDER BY name)",
    );
    assert_eq!(logs, "stderr,stdlog,stdout");

    // The queue writes task.cfg with what get_task_config answers.
    let (_, v) = server
        .rpc(
            "get_task_config",
            json!({"passkey": "key-t1", "task_id": "t1"}),
        )
        .unwrap();
    let config = v["result"].clone();
    assert_eq!(config["options"]["task_id"], "t1", "{v}");
    let dir = task_folder(&config);
    let out = real_worker(&server, dir.path(), "key-t1", &["--cfgfile", "task.cfg"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(status_of(&server, "t1"), "complete");
    let stdout = common::db_text(
        &server,
        "SELECT data FROM task_log WHERE task_id = 't1' AND name = 'stdout'",
    );
    let dataset_num = config["dataset"].as_u64().unwrap();
    assert_eq!(
        decode_log(&stdout),
        format!("filtering job 0 of dataset {dataset_num}\n")
    );
}

#[test]
fn a_pilot_runs_two_tasks_on_the_real_server_and_exits_when_idle() {
    let server = Server::start("");
    common::seed_pilot_tasks(&server, 2, true);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pilot.cfg"),
        json!({"tasks": [], "options": {"task_id": "pilot", "pilot_id": "p1", "gridspec": "g1",
               "resources": {"cpu": 2, "gpu": 0, "memory": 4, "disk": 10, "time": 2}}})
        .to_string(),
    )
    .unwrap();
    let started = Instant::now();
    let out = real_worker(
        &server,
        dir.path(),
        "key-p1",
        &["--pilot", "--cfgfile", "pilot.cfg", "--idle-timeout", "2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(status_of(&server, "t0"), "complete");
    assert_eq!(status_of(&server, "t1"), "complete");
    assert!(dir.path().join("t0/gen.txt").exists());
    assert!(dir.path().join("t1/stdlog").exists());
    assert_eq!(
        common::db_text(&server, "SELECT tasks FROM pilot WHERE pilot_id = 'p1'"),
        ""
    );
}

/// SIGTERM to the worker at `child`, then how long it took to exit (at most `grace`).
fn sigterm_and_wait(child: &mut SessionChild, grace: Duration) -> Duration {
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(child, grace).expect("the worker exits within its grace after SIGTERM");
    assert!(!status.success());
    sent.elapsed()
}

#[test]
fn sigterm_stops_a_tray_of_endless_iterations_without_modules() {
    let fake = Fake::start(answers_as_usual);
    // No modules: nothing is ever killed, so only the runner itself can notice the signal.
    let config = task_config(json!([]), json!({"iterations": i64::MAX}));
    let dir = task_folder(&config);
    let mut child = start(worker(dir.path(), &fake.url(), &[]));
    assert!(wait_until(common::WAIT, || fake
        .methods()
        .iter()
        .any(|m| m == "set_processing")));
    std::thread::sleep(Duration::from_millis(300));
    sigterm_and_wait(&mut child, Duration::from_secs(10));
    assert_eq!(error_summary(&fake), "killed by SIGTERM");
}

#[test]
fn sigterm_stops_a_long_module_in_a_tray_of_a_billion_iterations() {
    let fake = Fake::start(answers_as_usual);
    let config = task_config(
        json!([sh("echo $$ > pid; exec sleep 300")]),
        json!({"iterations": 1_000_000_000i64}),
    );
    let dir = task_folder(&config);
    let mut child = start(worker(dir.path(), &fake.url(), &[]));
    let pid = read_pid(dir.path());
    sigterm_and_wait(&mut child, Duration::from_secs(10));
    assert!(!alive(pid), "the module was killed");
    assert_eq!(error_summary(&fake), "killed by SIGTERM");
}

#[test]
fn choice_picks_the_same_in_data_urls_and_module_arguments() {
    use iceprod_runtime::dataset::{expand, Env, Job};
    let choice = "$choice(a,b,c,d,e,f,g,h)";
    // A job whose seed picks differently from seed 0, so a worker that expanded data URLs
    // with seed 0 would stage another file than its arguments name.
    let job = Job::default();
    let pick = |seed: u64| expand(choice, &Env::new(&job).with_seed(seed)).unwrap();
    let index = (1..100u64)
        .find(|i| pick(*i) != pick(0))
        .expect("some seed picks differently");
    let fake = Fake::start(answers_as_usual);
    let store = tempfile::tempdir().unwrap();
    for letter in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        std::fs::write(store.path().join(format!("{letter}.dat")), letter).unwrap();
    }
    let module = json!({"name": "gen", "src": "/bin/sh",
        "args": format!("-c 'echo `cat in.dat` $1' x {choice}")});
    let mut config = task_config(json!([module]), Value::Null);
    config["options"]["job"] = json!(index);
    config["tasks"][0]["data"] = json!([{
        "remote": format!("file://{}/{choice}.dat", store.path().display()),
        "local": "in.dat", "movement": "input"}]);
    let dir = task_folder(&config);
    let out = run(dir.path(), &fake, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = pick(index);
    assert_eq!(fake.log("stdout"), format!("{want} {want}\n"));
}
