//! Start, stop, crash isolation and control of the real binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::{base_config, Server, WAIT};

fn start_refused(config: &str) -> String {
    start_refused_after(config, |_| {})
}

/// Starts a server on `config` in a new folder that `prepare` may fill first; expects it to
/// refuse and returns what it said.
fn start_refused_after(config: &str, prepare: impl FnOnce(&std::path::Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    std::fs::write(dir.path().join("iceprod.toml"), config).unwrap();
    let out = Command::new(common::binary())
        .args(["server", "--foreground", "--config"])
        .arg(dir.path().join("iceprod.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "server started on a bad config");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn start_refuses_a_bad_config_with_the_key_and_line() {
    let port = common::free_port();
    let e = start_refused(&base_config(port, "prot = 80", ""));
    assert!(e.contains("line 7") && e.contains("website.prot"), "{e}");
    let e = start_refused(&base_config(port, "stream_threads = \"two\"", ""));
    assert!(e.contains("website.stream_threads"), "{e}");
    let e = start_refused("[website\n");
    assert!(e.contains("line 1"), "{e}");
    let e = start_refused("[controller]\nstop_timeout = \"forever\"\n");
    assert!(e.contains("controller.stop_timeout"), "{e}");

    let out = Command::new(common::binary())
        .args([
            "server",
            "--foreground",
            "--config",
            "/nonexistent/iceprod.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/nonexistent/iceprod.toml") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn start_refuses_when_the_port_is_taken_or_a_server_runs() {
    let server = Server::start("");
    // Same port, other folder: the website cannot bind, and the start fails with why.
    let e = start_refused(&base_config(server.port, "", ""));
    assert!(
        e.contains("website") && e.contains(&server.port.to_string()),
        "{e}"
    );
    // Same folder: the pid file says a server is running.
    let out = Command::new(common::binary())
        .args(["server", "--foreground", "--config"])
        .arg(server.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    assert!(server.echo_ok());
}

#[test]
fn an_injected_panic_restarts_only_that_module_while_echo_keeps_answering() {
    let server = Server::start("");
    let (ok, _, err) = server.ctl(&["inject", "panic", "schedule"]);
    assert!(ok, "{err}");
    assert!(common::wait_until(WAIT, || {
        let s = server.module("schedule");
        s["restarts"] == 1 && s["state"] == "running"
    }));
    let s = server.module("schedule");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("injected fault")),
        "{s}"
    );
    assert!(server.echo_ok());
    assert_eq!(server.module("website")["generation"], 1);

    // The website itself: it comes back on its own, on the same port.
    let (ok, _, err) = server.ctl(&["inject", "panic", "website"]);
    assert!(ok, "{err}");
    assert!(common::wait_until(WAIT, || server.module("website")
        ["restarts"]
        == 1));
    assert!(common::wait_until(WAIT, || server.echo_ok()));
    let metrics = server.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("iceprod_module_restarts_total{module=\"website\"} 1"),
        "{metrics}"
    );
}

#[test]
fn repeated_panics_in_init_back_off_then_recover() {
    let server = Server::start("");
    let (ok, _, err) = server.ctl(&["inject", "panic-init", "schedule", "--times", "3"]);
    assert!(ok, "{err}");
    // One requested restart, three failed starts, one that succeeds.
    assert!(common::wait_until(WAIT, || {
        let s = server.module("schedule");
        s["generation"] == 5 && s["state"] == "running"
    }));
    let s = server.module("schedule");
    assert_eq!(s["failures"], 3, "{s}");
    assert!(
        s["last_error"].as_str().is_some_and(|e| e.contains("init")),
        "{s}"
    );
    assert!(server.echo_ok());
}

#[test]
fn a_message_sent_during_a_restart_is_delivered_after_it() {
    let server = Server::start("");
    // Five failed starts keep the website down for 100+200+400+800+1600 ms.
    let (ok, _, err) = server.ctl(&["inject", "panic-init", "website", "--times", "5"]);
    assert!(ok, "{err}");
    assert!(common::wait_until(WAIT, || server.module("website")
        ["state"]
        == "restarting"));
    let generation_then = server.module("website")["generation"].as_u64().unwrap();
    let (ok, out, err) = server.ctl(&["--json", "ping", "website"]);
    assert!(ok, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    let answered_by = answer["result"]["generation"].as_u64().unwrap();
    assert!(
        answered_by > generation_then,
        "{answered_by} <= {generation_then}"
    );
    assert_eq!(answered_by, 7);
    assert!(server.echo_ok());
}

#[test]
fn ctl_stop_kill_and_start_act_on_one_module() {
    let server = Server::start("");
    let (ok, _, _) = server.ctl(&["stop", "website"]);
    assert!(ok);
    assert!(common::wait_until(WAIT, || server.module("website")
        ["state"]
        == "stopped"));
    assert!(!server.echo_ok());
    assert!(server.ctl(&["start", "website"]).0);
    assert!(common::wait_until(WAIT, || server.echo_ok()));

    assert!(server.ctl(&["kill", "schedule"]).0);
    assert_eq!(server.module("schedule")["state"], "killed");
    // Stays killed (no automatic restart) until started.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.module("schedule")["state"], "killed");
    assert!(server.ctl(&["start", "schedule"]).0);
    assert!(common::wait_until(WAIT, || server.module("schedule")
        ["state"]
        == "running"));
    assert!(server.ctl(&["restart", "schedule"]).0);
    assert!(common::wait_until(WAIT, || server.module("schedule")
        ["generation"]
        == 3));

    let (ok, _, err) = server.ctl(&["restart", "nosuch"]);
    assert!(!ok && err.contains("no module named"), "{err}");
    let (ok, _, err) = server.ctl(&["start", "queue"]);
    assert!(!ok && err.contains("disabled"), "{err}");
}

#[test]
fn fault_injection_is_refused_unless_enabled() {
    let server = Server::start_with(|port| {
        base_config(port, "", "").replace("fault_injection = true", "fault_injection = false")
    });
    let (ok, _, err) = server.ctl(&["inject", "panic", "website"]);
    assert!(!ok && err.contains("fault injection is off"), "{err}");
    assert_eq!(server.module("website")["generation"], 1);
}

#[test]
fn garbage_on_the_control_socket_gets_an_error_and_changes_nothing() {
    let server = Server::start("");
    let socket = server.dir.path().join("var/iceprod.sock");
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for garbage in [
        &b"hello\n"[..],
        b"{\"cmd\":\"format-disk\"}\n",
        b"{\"cmd\":\"status\",\"extra\":1}\n",
        b"\xff\xfe\x00\n",
        b"[1,2,3]\n",
    ] {
        s.write_all(garbage).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false, "{line}");
    }
    // A line that never ends is cut off and the connection closed.
    let mut s2 = UnixStream::connect(&socket).unwrap();
    s2.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s2.write_all(&vec![b'x'; 200 * 1024]);
    let mut reader2 = BufReader::new(s2);
    let mut line = String::new();
    reader2.read_line(&mut line).unwrap();
    assert!(line.contains("longer than"), "{line}");
    line.clear();
    assert_eq!(reader2.read_line(&mut line).unwrap_or(0), 0, "not closed");
    assert!(server.echo_ok());
    assert_eq!(server.status()["reloads"], 0);
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let mut server = Server::start("");
    // Over 1 KiB: tiny_http buffers smaller bodies itself before it hands the request on, so
    // only a larger one is in the server's hands while its body still arrives.
    let body = format!(
        r#"{{"jsonrpc":"2.0","method":"echo","params":{{"value":"slow{}"}},"id":1}}"#,
        "o".repeat(2000)
    );
    let body = body.as_bytes();
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..10]).unwrap();
    // Let the server take the request before the signal.
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&body[10..]).unwrap();
    let mut reader = BufReader::new(stream);
    let (status, text) = common::read_response(&mut reader).expect("an answer");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"result\":\"slowooo"), "{text}");
    let exit = server.wait_exit(WAIT).expect("server exited");
    assert!(exit.success(), "{exit:?}\n{}", server.log());
    assert!(!server.dir.path().join("var/iceprod.pid").exists());
    assert!(!server.dir.path().join("var/iceprod.sock").exists());
}

#[test]
fn a_second_stop_signal_exits_at_once() {
    let mut server = Server::start_with(|port| {
        base_config(port, "", "")
            .replace("[debug]", "[controller]\nstop_timeout = \"20s\"\n\n[debug]")
    });
    // Hold the website's stop open with an unfinished request.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        stream,
        "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.exited().is_none(),
        "stopped before the request finished"
    );
    server.signal(libc::SIGINT);
    let exit = server.wait_exit(WAIT).expect("exited at once");
    assert_eq!(exit.code(), Some(1));
}

#[test]
fn version_and_help_show_examples() {
    let out = Command::new(common::binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("iceprod "));
    let out = Command::new(common::binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Examples:") && help.contains("iceprod ctl reload"),
        "{help}"
    );
}

#[test]
fn a_daemon_reports_its_start_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(dir.path().join("iceprod.toml"), base_config(port, "", "")).unwrap();
    let out = Command::new(common::binary())
        .args(["server", "--config"])
        .arg(dir.path().join("iceprod.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("started (pid"));
    let pid: i32 = std::fs::read_to_string(dir.path().join("var/iceprod.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The daemon made a session of its own: kill what is left of it when the test ends.
    let _daemon = iceprod_runtime::session::Session::of_leader(pid);
    assert!(common::http(
        port,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b""
    )
    .is_some_and(|(s, _)| s == 200));
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(common::wait_until(WAIT, || !dir
        .path()
        .join("var/iceprod.pid")
        .exists()));
    assert!(std::fs::read_to_string(dir.path().join("var/iceprod.log"))
        .unwrap()
        .contains("all modules stopped"));
}

#[test]
fn two_stop_signals_at_once_are_one_graceful_stop() {
    // timeout(1) and process managers signal the process and its group: one intent, twice.
    let mut server = Server::start("");
    let body = format!(
        r#"{{"jsonrpc":"2.0","method":"echo","params":{{"value":"{}"}},"id":1}}"#,
        "p".repeat(2000)
    );
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body.as_bytes()[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.exited().is_none(),
        "the pair was taken as a second signal"
    );
    stream.write_all(&body.as_bytes()[10..]).unwrap();
    let (status, _) = common::read_response(&mut BufReader::new(stream)).expect("an answer");
    assert_eq!(status, 200);
    assert!(server.wait_exit(WAIT).expect("exited").success());
}

#[test]
fn a_corrupt_database_file_refuses_the_start_with_its_name() {
    let e = start_refused_after(&base_config(common::free_port(), "", ""), |dir| {
        std::fs::create_dir_all(dir.join("var")).unwrap();
        std::fs::write(dir.join("var/iceprod.db"), vec![0x42u8; 8192]).unwrap();
    });
    assert!(
        e.contains("var/iceprod.db") && e.contains("not a database"),
        "{e}"
    );
}

fn shipped_config() -> String {
    std::fs::read_to_string(format!("{}/conf/iceprod.toml", env!("CARGO_MANIFEST_DIR")))
        .expect("conf/iceprod.toml")
}

#[test]
fn the_shipped_config_starts_a_site() {
    // conf/iceprod.toml, as the README runs it, with its state moved to a private folder.
    let shipped = shipped_config();
    let server = Server::start_with(|port| {
        let config = shipped
            .replace("state_dir = \"../var\"", "state_dir = \"var\"")
            .replace("# port = 8080", &format!("port = {port}"));
        assert_eq!(
            config.lines().filter(|l| !l.starts_with('#')).count(),
            shipped.lines().filter(|l| !l.starts_with('#')).count() + 1,
            "the shipped config changed shape; update this test"
        );
        config
    });
    assert!(server.echo_ok());
    let status = server.status();
    for module in ["db", "queue", "website", "schedule"] {
        assert_eq!(server.module(module)["state"], "running", "{status}");
    }
    // The one local grid of the shipped config runs cycles and reports them.
    assert!(
        common::wait_until(WAIT, || server.status()["grids"][0]["cycles"]
            .as_u64()
            .is_some_and(|n| n >= 1)),
        "{}",
        server.status()
    );
    let grid = &server.status()["grids"][0];
    assert_eq!(grid["name"], "local");
    assert_eq!(grid["type"], "local");
}

#[test]
fn the_shipped_config_comments_out_exactly_the_built_in_defaults() {
    // Uncommenting every `# key = value` and `# [table]` line of conf/iceprod.toml, with
    // `<state_dir>/NAME` written out, must leave the config as it was: what the file shows as
    // a default is the binary's default.
    let shipped = shipped_config();
    let state_dir = "../var";
    let key = |l: &str| {
        (l.starts_with('[') && l.ends_with(']'))
            || l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
    };
    let mut uncommented = 0;
    let spelled_out: String = shipped
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if key(rest) => {
                uncommented += 1;
                format!("{}\n", rest.replace("<state_dir>", state_dir))
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented > 60, "only {uncommented} commented keys");
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/iceprod.toml");
    let modules = iceprod_runtime::ModuleKind::ALL;
    let as_shipped = iceprod_runtime::Config::parse(&shipped, &file, &modules)
        .expect("the shipped config is valid");
    let with_defaults_written = iceprod_runtime::Config::parse(&spelled_out, &file, &modules)
        .unwrap_or_else(|e| panic!("{e}\n{spelled_out}"));
    assert_eq!(as_shipped, with_defaults_written);
    // And the shipped file sets nothing but state_dir.
    let empty = iceprod_runtime::Config::parse(
        &format!("site.state_dir = \"{state_dir}\""),
        &file,
        &modules,
    )
    .expect("one line is a config");
    assert_eq!(as_shipped, empty);
}

#[test]
fn a_config_naming_only_state_dir_and_port_keeps_every_file_in_state_dir() {
    let server =
        Server::start_with(|port| format!("site.state_dir = \"state\"\nwebsite.port = {port}\n"));
    assert!(server.echo_ok());
    let state = server.dir.path().join("state");
    for name in [
        "iceprod.pid",
        "iceprod.sock",
        "iceprod.db",
        "iceprod.db.lock",
        "admin.passkey",
    ] {
        assert!(state.join(name).exists(), "{name} is not in state_dir");
    }
    assert!(!server.dir.path().join("var").exists());
    // `ctl` finds the socket through the same config.
    let (ok, _, err) = common::ctl_with("--config", &server.config_path(), &["status"]);
    assert!(ok, "{err}");
}

#[test]
fn without_a_config_the_error_names_every_place_tried() {
    if std::path::Path::new("/etc/iceprod/iceprod.toml").exists() {
        eprintln!("skipped: this machine has /etc/iceprod/iceprod.toml, which would be found");
        return;
    }
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(common::binary())
        .args(["ctl", "status"])
        .current_dir(cwd.path())
        .env_remove("ICEPROD_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for place in [
        "$ICEPROD_CONFIG",
        "/etc/iceprod/iceprod.toml",
        "conf/iceprod.toml",
        "--config",
    ] {
        assert!(err.contains(place), "{place} missing from: {err}");
    }
}
