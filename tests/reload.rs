//! SIGHUP and `ctl reload` on the real binary: only changed sections are touched, bad files
//! change nothing, storms fold into one reload.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{base_config, KeepAlive, Server, WAIT};

fn schedule_job(name: &str, every: &str) -> String {
    format!(
        "[schedule.jobs.{name}]\nevery = \"{every}\"\ntarget = \"website\"\nmessage = \"ping\"\n"
    )
}

/// Echo requests on their own keep-alive connection until stopped; counts failures.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let (s, f, d) = (stop.clone(), failures.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut conn = KeepAlive::connect(port);
            // Bounded: at most 200,000 requests even if nobody stops it.
            for i in 0..200_000u32 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if !conn.echo(&format!("v{i}")) {
                    f.fetch_add(1, Ordering::Relaxed);
                    conn = KeepAlive::connect(port);
                }
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        Load {
            stop,
            failures,
            done,
            thread: Some(thread),
        }
    }

    /// Stops the load; (requests done, failures).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        (
            self.done.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

fn reloads(server: &Server) -> u64 {
    server.status()["reloads"].as_u64().unwrap_or(0)
}

#[test]
fn reload_changing_only_schedule_touches_only_schedule() {
    let server = Server::start(&schedule_job("tick", "1s"));
    let mut keepalive = KeepAlive::connect(server.port);
    assert!(keepalive.echo("before"));
    let load = Load::start(server.port);
    assert!(common::wait_until(WAIT, || load
        .done
        .load(Ordering::Relaxed)
        > 20));

    let port = server.port;
    server.write_config(&base_config(port, "", &schedule_job("tock", "1s")));
    server.signal(libc::SIGHUP);
    assert!(common::wait_until(WAIT, || reloads(&server) == 1));

    let status = server.status();
    assert_eq!(status["last_reload"]["ok"], true, "{status}");
    let message = status["last_reload"]["message"].as_str().unwrap_or("");
    assert!(message.contains("[schedule]"), "{message}");
    let website = server.module("website");
    let schedule = server.module("schedule");
    assert_eq!(website["generation"], 1, "website was restarted: {website}");
    assert_eq!(website["last_reload"], serde_json::Value::Null);
    assert_eq!(
        schedule["generation"], 1,
        "schedule was restarted: {schedule}"
    );
    assert!(common::wait_until(WAIT, || server.module("schedule")
        ["last_reload"]
        == "applied in place"));
    // The renamed job runs now.
    assert!(common::wait_until(WAIT, || server
        .get("/metrics")
        .is_some_and(|(_, m)| m.contains("job=\"tock\""))));

    // The connection opened before the reload still works, and no request failed.
    assert!(keepalive.echo("after"));
    let (done, failed) = load.finish();
    assert!(done > 20);
    assert_eq!(
        failed, 0,
        "{failed} of {done} requests failed during the reload"
    );
}

#[test]
fn reload_changing_website_restarts_only_the_website() {
    let server = Server::start(&schedule_job("tick", "1s"));
    let port = server.port;
    server.write_config(&base_config(
        port,
        "pump_threads = 3",
        &schedule_job("tick", "1s"),
    ));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("[website]"), "{out}");
    assert!(common::wait_until(WAIT, || {
        let w = server.module("website");
        w["generation"] == 2 && w["state"] == "running"
    }));
    assert_eq!(server.module("website")["last_reload"], "restarted");
    assert_eq!(server.module("schedule")["generation"], 1);
    assert_eq!(server.module("website")["restarts"], 1);
    assert!(server.echo_ok());
}

#[test]
fn body_limit_change_applies_in_place() {
    let server = Server::start("");
    let port = server.port;
    server.write_config(&base_config(port, "body_limit = 100", ""));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(common::wait_until(WAIT, || server.module("website")
        ["last_reload"]
        == "applied in place"));
    assert_eq!(server.module("website")["generation"], 1);
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{{\"value\":\"{}\"}},\"id\":1}}",
        "x".repeat(200)
    );
    assert_eq!(server.post(big.as_bytes()).map(|r| r.0), Some(413));
    assert!(server.echo_ok());
}

#[test]
fn reload_with_a_broken_file_keeps_the_running_config() {
    let server = Server::start(&schedule_job("tick", "1s"));
    let port = server.port;
    let cases = [
        ("[website\nport = 1\n".to_string(), "line 1"),
        (base_config(port, "prot = 1", ""), "website.prot"),
        (base_config(port, "port = \"eighty\"", ""), "website.port"),
        (
            base_config(port, "", "[modules]\nmaster = true\n"),
            "modules.master",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        server.write_config(text);
        server.signal(libc::SIGHUP);
        assert!(
            common::wait_until(WAIT, || server.status()["last_reload"]["ok"] == false
                && server.status()["last_reload"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(expected))),
            "case {i}: {}",
            server.status()
        );
        let (ok, _, err) = server.ctl(&["reload"]);
        assert!(!ok);
        assert!(err.contains(expected), "case {i}: {err}");
    }
    // A missing file is refused the same way.
    std::fs::remove_file(server.config_path()).unwrap();
    let (ok, _, err) = server.ctl(&["reload"]);
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");

    assert_eq!(reloads(&server), 0);
    assert_eq!(server.module("website")["generation"], 1);
    assert_eq!(server.module("schedule")["generation"], 1);
    assert!(server.echo_ok());
    // The status table shows the refusal too.
    let (_, table, _) = server.ctl(&["status"]);
    assert!(table.contains("REFUSED"), "{table}");
}

#[test]
fn a_sighup_storm_gives_one_reload_and_no_crash() {
    let server = Server::start("");
    let port = server.port;
    server.write_config(&base_config(port, "", &schedule_job("storm", "1s")));
    for _ in 0..10 {
        server.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(common::wait_until(WAIT, || reloads(&server) >= 1));
    // Later HUPs of the storm were folded into the first; nothing else is pending.
    std::thread::sleep(common::reload_window());
    assert_eq!(reloads(&server), 1, "{}", server.status());
    assert!(server.echo_ok());
}
