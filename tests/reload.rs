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
        "max_connections = 300",
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

/// `GET path` with the session cookie of `session`; (status, body).
fn get_in_session(port: u16, path: &str, session: &str) -> (u16, String) {
    common::http(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: iceprod_session={session}\r\n\r\n"
        ),
        b"",
    )
    .expect("an answer")
}

fn grid(name: &str) -> String {
    format!("[queue.grids.{name}]\ntype = \"local\"\n")
}

#[test]
fn a_reload_adding_or_removing_a_grid_reaches_the_submit_page() {
    let server = Server::start(&grid("first"));
    let port = server.port;
    common::add_website_user(&server, "ann", "a long passphrase", false);
    let session = common::login(&server.config_path(), "ann", "a long passphrase")
        .expect("ann logs in")
        .session_id;
    let (status, page) = get_in_session(port, "/submit", &session);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(">first</option>") && !page.contains(">second</option>"));

    // The grids are [queue]'s, which the website reads for this page.
    server.write_config(&base_config(port, "", &grid("second")));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("website: applied in place"), "{out}");
    let (_, page) = get_in_session(port, "/submit", &session);
    assert!(
        page.contains(">second</option>") && !page.contains(">first</option>"),
        "the submit page still offers the old grids"
    );
}

#[test]
fn a_website_port_change_reaches_the_queue_so_new_workers_reach_the_server() {
    let grids = "[queue.grids.local]\ntype = \"local\"\nmax_running = 2\n";
    let mut server = Server::start(&common::grids::queue_config("", grids));
    let new_port = common::free_port();
    server.write_config(&base_config(
        new_port,
        "",
        &common::grids::queue_config("", grids),
    ));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    // The website restarts on the new port; the queue, whose workers' URL follows the
    // website's address while [queue] server_url is unset, hears the change in place.
    assert!(out.contains("website: restarted"), "{out}");
    assert!(out.contains("queue: applied in place"), "{out}");
    server.port = new_port;
    assert!(common::wait_until(WAIT, || server.echo_ok()));
    let dataset = common::grids::submit(&server, common::example("two-tasks.json"), 1);
    common::grids::wait_for(&server, &dataset, "complete", 2, Duration::from_secs(90));
    let job_files: Vec<String> = std::fs::read_dir(server.dir.path().join("var/submit/local"))
        .expect("the local grid's submit folders")
        .map(|d| std::fs::read_to_string(d.expect("entry").path().join("job.sh")).unwrap())
        .collect();
    assert!(!job_files.is_empty());
    for job in job_files {
        assert!(job.contains(&format!(":{new_port}")), "{job}");
    }
}

#[test]
fn a_reload_one_module_refuses_changes_nothing_anywhere_under_load() {
    let server = Server::start("");
    let port = server.port;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let taken_port = taken.local_addr().expect("its address").port();
    let load = Load::start(port);
    assert!(common::wait_until(WAIT, || load
        .done
        .load(Ordering::Relaxed)
        > 20));
    // The website cannot move to a port another process holds; the schedule job and the
    // body limit that change with it must not be applied either.
    server.write_config(&base_config(
        taken_port,
        "body_limit = 100",
        &schedule_job("refused", "1s"),
    ));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("website refused: cannot listen on 127.0.0.1:")
            && err.contains("nothing changed"),
        "{err}"
    );
    let status = server.status();
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    assert_eq!(reloads(&server), 0);
    for module in ["website", "schedule"] {
        let m = server.module(module);
        assert_eq!(m["generation"], 1, "{m}");
        assert!(m["last_reload"].is_null(), "{m}");
    }
    // The old body limit still holds: a 200-byte echo is served.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{{\"value\":\"{}\"}},\"id\":1}}",
        "x".repeat(200)
    );
    assert_eq!(server.post(big.as_bytes()).map(|r| r.0), Some(200));
    // The admin RPC hears the same refusal.
    let v = server
        .rpc(
            "reload_config",
            serde_json::json!({"passkey": common::admin_key(&server)}),
        )
        .expect("an answer")
        .1;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("website refused")),
        "{v}"
    );
    let (done, failed) = load.finish();
    assert!(done > 20);
    assert_eq!(failed, 0, "{failed} of {done} requests failed");
    drop(taken);
}

#[test]
fn ctl_reload_answers_with_each_module_once_they_applied_it() {
    let server = Server::start(&schedule_job("tick", "1s"));
    let port = server.port;
    let load = Load::start(port);
    server.write_config(&base_config(
        port,
        "body_limit = 100000",
        &schedule_job("tock", "2s"),
    ));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    // One line per module, each the module's own answer, there when ctl returns.
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(lines[0].starts_with("changed [website, schedule]"), "{out}");
    assert!(lines.contains(&"website: applied in place"), "{out}");
    assert!(lines.contains(&"schedule: applied in place"), "{out}");
    assert_eq!(server.module("website")["last_reload"], "applied in place");
    let (done, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {done} requests failed");
}

#[test]
fn the_website_may_move_to_another_address_on_its_port_but_not_to_one_the_host_lacks() {
    let server = Server::start("");
    let port = server.port;
    // 192.0.2.1 (TEST-NET-1) is no address of this host: refused, nothing changes.
    let elsewhere =
        base_config(port, "", "").replace("address = \"127.0.0.1\"", "address = \"192.0.2.1\"");
    server.write_config(&elsewhere);
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!(
            "website refused: cannot listen on 192.0.2.1:{port}"
        )),
        "{err}"
    );
    assert_eq!(server.module("website")["generation"], 1);
    // Every address on the same port: not a collision with its own listener.
    let everywhere =
        base_config(port, "", "").replace("address = \"127.0.0.1\"", "address = \"0.0.0.0\"");
    server.write_config(&everywhere);
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("website: restarted"), "{out}");
    assert!(common::wait_until(WAIT, || server.echo_ok()));
}

#[test]
fn a_site_change_is_checked_too_and_a_refusal_restarts_nothing() {
    let server = Server::start("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let taken_port = taken.local_addr().expect("its address").port();
    // A changed [site] restarts every module, but only after each whose view changed
    // accepted it: the website cannot move to a held port, so nothing restarts. (The state
    // folder changes; every file keeps its place through explicit keys.)
    let text = format!(
        "{}\n[site]\nstate_dir = \"var2\"\n\n[controller]\npid_file = \"var/iceprod.pid\"\n\
         control_socket = \"var/iceprod.sock\"\n\n[db]\npath = \"var/iceprod.db\"\n\
         archive_path = \"var/iceprod-archive.db\"\n",
        base_config(taken_port, "", "")
    );
    server.write_config(&text);
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(!ok, "{out}");
    assert!(err.contains("website refused: cannot listen on"), "{err}");
    for module in ["db", "website", "schedule"] {
        assert_eq!(server.module(module)["generation"], 1, "{module}");
    }
    assert!(server.echo_ok());
    drop(taken);
}
