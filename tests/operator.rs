//! The operator's path through the real binary: a daemon's log across reloads and logrotate,
//! `iceprod ctl` with a broken config or a closed pipe, health that tells the truth, and
//! worker threads that panic without losing a request.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{base_config, wait_until, Server, WAIT};
use serde_json::json;

/// The pid in `dir/var/iceprod.pid`.
fn pid_in(dir: &std::path::Path) -> i32 {
    std::fs::read_to_string(dir.join("var/iceprod.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// `iceprod ctl ARGS` with `--config config` and no `--socket`: (success, stdout, stderr).
fn ctl_by_config(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    common::ctl_with("--config", config, args)
}

#[test]
fn a_daemon_keeps_logging_to_its_file_after_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::free_port();
    let config = dir.path().join("iceprod.toml");
    std::fs::write(&config, base_config(port, "", "")).expect("write config");
    let out = Command::new(common::binary())
        .args(["server", "--config"])
        .arg(&config)
        .output()
        .expect("start the daemon");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = pid_in(dir.path());
    let log = dir.path().join("var/iceprod.log");
    // The file is unchanged: nothing changed, [logging] included (the daemon's default log
    // file is not a change).
    let (ok, stdout, stderr) = ctl_by_config(&config, &["reload"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "no changes");
    // SIGHUP does the same; the log file still gets every line after it.
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(wait_until(WAIT, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("reload: no changes")
            .count()
            == 2
    }));
    let (ok, _, stderr) = ctl_by_config(&config, &["restart", "schedule"]);
    assert!(ok, "{stderr}");
    assert!(wait_until(WAIT, || std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("schedule: ready")
        && std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("schedule: ready")
            .count()
            == 2));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(wait_until(WAIT, || !dir
        .path()
        .join("var/iceprod.pid")
        .exists()));
    assert!(std::fs::read_to_string(&log)
        .expect("log")
        .contains("all modules stopped"));
}

#[test]
fn sigusr1_and_ctl_reopen_logs_start_a_fresh_file_after_logrotate() {
    let server = Server::start_with(|port| {
        base_config(port, "", "").replace("[logging]\n", "[logging]\nfile = \"logs/iceprod.log\"\n")
    });
    let logs = server.dir.path().join("logs");
    let log = logs.join("iceprod.log");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(read(&log).contains("all modules started"));
    // logrotate's default: rename, then tell the server.
    std::fs::rename(&log, logs.join("iceprod.log.1")).expect("rotate");
    server.signal(libc::SIGUSR1);
    assert!(wait_until(WAIT, || read(&log).contains("log file reopened")));
    let (ok, _, err) = server.ctl(&["restart", "schedule"]);
    assert!(ok, "{err}");
    assert!(wait_until(WAIT, || read(&log).contains("schedule: ready")));
    // The rotated file got nothing after the rotation (its one `ready` is from the start).
    assert_eq!(
        read(&logs.join("iceprod.log.1"))
            .matches("schedule: ready")
            .count(),
        1
    );

    std::fs::rename(&log, logs.join("iceprod.log.2")).expect("rotate");
    let (ok, out, err) = server.ctl(&["reopen-logs"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "log file reopened");
    let (ok, _, err) = server.ctl(&["restart", "schedule"]);
    assert!(ok, "{err}");
    assert!(wait_until(WAIT, || read(&log).contains("schedule: ready")));
    assert!(server.echo_ok());
}

#[test]
fn ctl_finds_the_running_server_when_the_config_file_is_broken() {
    let server = Server::start("");
    let config = server.config_path();
    let good = std::fs::read_to_string(&config).expect("config");
    for broken in ["[website\nport = 1\n", "[website]\nprot = 1\n"] {
        std::fs::write(&config, broken).expect("break the config");
        let (ok, out, err) = ctl_by_config(&config, &["status"]);
        assert!(ok, "{out}{err}");
        assert!(out.starts_with("iceprod "), "{out}");
        // It says why it did not use the config, and what it used instead.
        assert!(err.contains("the config has errors"), "{err}");
        assert!(err.contains(&format!("pid {}", server.pid())), "{err}");
        assert!(err.contains("iceprod.sock"), "{err}");
    }
    // A broken file that still names the socket, with no pid file to go by.
    std::fs::write(
        &config,
        format!(
            "[controller]\ncontrol_socket = \"var/iceprod.sock\"\npid_file = \"elsewhere.pid\"\n\
             [website\n{good}"
        ),
    )
    .expect("write");
    let (ok, out, err) = ctl_by_config(&config, &["status"]);
    assert!(ok, "{out}{err}");
    assert!(err.contains("named in the config"), "{err}");
    // A valid config whose socket key was edited since the server started: the running
    // server still listens on the old socket, and ctl finds it (to reload, for one).
    std::fs::write(
        &config,
        format!("{good}\n[controller]\ncontrol_socket = \"var/new.sock\"\n"),
    )
    .expect("write");
    let (ok, out, err) = ctl_by_config(&config, &["status"]);
    assert!(ok, "{out}{err}");
    assert!(err.contains("edited since the server started"), "{err}");
}

#[test]
fn ctl_output_into_a_closed_pipe_ends_quietly() {
    let server = Server::start("");
    let socket = server.dir.path().join("var/iceprod.sock");
    let errors = server.dir.path().join("ctl.err");
    for _ in 0..10 {
        // `true` exits before ctl writes, so every write hits a closed pipe.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "'{bin}' ctl --socket '{}' status 2>>'{err}' | true; \
                 '{bin}' --help 2>>'{err}' | true",
                socket.display(),
                bin = common::binary(),
                err = errors.display()
            ))
            .status()
            .expect("run sh");
        assert!(status.success());
    }
    let errors = std::fs::read_to_string(&errors).unwrap_or_default();
    assert!(!errors.contains("panicked"), "{errors}");
}

#[test]
fn healthz_names_a_module_that_is_down_and_metrics_leave_out_disabled_ones() {
    let server = Server::start("");
    assert_eq!(server.get("/healthz"), Some((200, "ok\n".into())));
    let (ok, _, err) = server.ctl(&["stop", "schedule"]);
    assert!(ok, "{err}");
    assert!(wait_until(WAIT, || server.get("/healthz")
        == Some((503, "down: schedule\n".into()))));
    let (ok, _, err) = server.ctl(&["start", "schedule"]);
    assert!(ok, "{err}");
    assert!(wait_until(WAIT, || server.get("/healthz")
        == Some((200, "ok\n".into()))));
    // The queue is off in this config: no `up` gauge that an `== 0` alert would fire on.
    let (_, metrics) = server.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("iceprod_module_up{module=\"db\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("iceprod_module_up{module=\"queue\"}"),
        "{metrics}"
    );
}

/// Public db reads on fresh connections until stopped. Counts requests that got no
/// JSON-RPC answer at all, and answers that are errors.
struct Reads {
    stop: Arc<AtomicBool>,
    unanswered: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reads {
    fn start(port: u16) -> Reads {
        let stop = Arc::new(AtomicBool::new(false));
        let unanswered = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let (s, u, e, d) = (
            stop.clone(),
            unanswered.clone(),
            errors.clone(),
            done.clone(),
        );
        let thread = std::thread::spawn(move || {
            let body = json!({"jsonrpc": "2.0", "method": "public_get_datasets_by_status",
                "params": {}, "id": 1})
            .to_string();
            for _ in 0..100_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let answer = common::http(
                    port,
                    &format!(
                        "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                         Content-Length: {}\r\n\r\n",
                        body.len()
                    ),
                    body.as_bytes(),
                );
                let rpc = answer
                    .as_ref()
                    .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(text).ok());
                match rpc {
                    None => {
                        u.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(v) if v.get("result").is_none() => {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                }
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        Reads {
            stop,
            unanswered,
            errors,
            done,
            thread: Some(thread),
        }
    }

    /// Stops; (requests, unanswered, errors).
    fn finish(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("reads thread");
        }
        (
            self.done.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn a_panicking_db_worker_restarts_the_db_and_every_request_is_answered() {
    let server = Server::start("");
    let reads = Reads::start(server.port);
    assert!(wait_until(WAIT, || reads.done.load(Ordering::Relaxed) > 20));
    let (ok, out, err) = server.ctl(&["inject", "panic-worker", "db"]);
    assert!(ok, "{out}{err}");
    assert!(wait_until(WAIT, || {
        let db = server.module("db");
        db["generation"] == 2 && db["state"] == "running"
    }));
    let db = server.module("db");
    assert!(
        db["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("iceprod-db-") && e.contains("panicked")),
        "{db}"
    );
    let before = reads.done.load(Ordering::Relaxed);
    assert!(wait_until(WAIT, || reads.done.load(Ordering::Relaxed) > before + 20));
    let (done, unanswered, errors) = reads.finish();
    assert_eq!(
        unanswered, 0,
        "{unanswered} of {done} requests got no answer"
    );
    // Only the read in the panicking worker's hands fails (its caller hears it at once);
    // the rest are served, before and after the restart.
    assert!(errors <= 1, "{errors} of {done} reads failed");
    // Other modules were not touched.
    assert_eq!(server.module("website")["generation"], 1);
}

#[test]
fn a_panicking_queue_command_worker_restarts_the_queue_and_loses_no_task() {
    let grids = "[queue.grids.local]\ntype = \"local\"\nmax_running = 2\n";
    let server = Server::start(&common::grids::queue_config("lost_grace = \"2s\"", grids));
    let (ok, out, err) = server.ctl(&["inject", "panic-worker", "queue"]);
    assert!(ok, "{out}{err}");
    // The first submission's command worker panics: the queue restarts at once rather
    // than its cycle waiting for the watchdog, and every task still runs.
    let dataset = common::grids::submit(&server, common::example("two-tasks.json"), 2);
    assert!(wait_until(WAIT, || server.module("queue")["generation"] == 2));
    assert!(server.module("queue")["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("iceprod-queue-cmd-") && e.contains("panicked")));
    common::grids::wait_for(&server, &dataset, "complete", 4, Duration::from_secs(90));
}

#[test]
fn a_panicking_website_worker_restarts_the_website_which_serves_again() {
    let server = Server::start("");
    let (ok, out, err) = server.ctl(&["inject", "panic-worker", "website"]);
    assert!(ok, "{out}{err}");
    // The next answer a responder writes is the one that panics (tiny_http answers that
    // request 500); the website restarts with fresh workers.
    let _ = server.get("/healthz");
    assert!(wait_until(WAIT, || {
        let w = server.module("website");
        w["generation"] == 2 && w["state"] == "running"
    }));
    assert!(server.module("website")["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("iceprod-web-") && e.contains("panicked")));
    assert!(wait_until(WAIT, || server.echo_ok()));
    assert_eq!(server.module("db")["generation"], 1);
}

#[test]
fn a_json_rpc_client_on_an_old_connection_gets_a_json_rpc_error_while_the_website_restarts() {
    use std::io::{BufReader, Write};
    let server = Server::start("");
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reader = BufReader::new(stream);
    let body =
        json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": "x"}, "id": 1}).to_string();
    let head = format!(
        "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let send = |reader: &mut BufReader<std::net::TcpStream>| {
        let stream = reader.get_mut();
        stream.write_all(head.as_bytes()).expect("write");
        stream.write_all(body.as_bytes()).expect("write");
        common::read_response(reader).expect("an answer")
    };
    assert_eq!(send(&mut reader).0, 200);
    let (ok, _, err) = server.ctl(&["restart", "website"]);
    assert!(ok, "{err}");
    assert!(wait_until(WAIT, || server.module("website")["generation"] == 2));
    // This connection belongs to the website that stopped: it is answered 503, in JSON-RPC.
    let (status, text) = send(&mut reader);
    assert_eq!(status, 503, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON-RPC answer");
    assert_eq!(v["error"]["code"], -32000, "{v}");
    // The new website serves new connections (its listener may take a moment to bind).
    assert!(wait_until(WAIT, || server.echo_ok()));
}
