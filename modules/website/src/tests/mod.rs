//! Tests of the real module on its own thread (`iceprod_runtime::harness::Harness`) with plain
//! HTTP/1.1 clients over TCP. They live inside the crate so the test-only deferred method
//! (`test_ping`, see `methods.rs`) is in the table.

mod client;
mod fuzz;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceprod_runtime::harness::Harness;
use iceprod_runtime::{
    Config, Ctl, Mailbox, ModuleKind, ReloadAction, Reply, Request, ScheduledMessage, Status,
    StopReason,
};
use serde_json::{json, Value};

use crate::Website;
use client::{get, Client};

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

fn config(port: u16, website: &str, site_id: Option<&str>) -> Config {
    let site = site_id.map_or(String::new(), |id| format!("id = \"{id}\"\n"));
    let text = format!("[site]\n{site}[website]\nport = {port}\n{website}\n");
    Config::parse(
        &text,
        Path::new("/tmp/iceprod-website-test/iceprod.toml"),
        &ModuleKind::ALL,
    )
    .expect("test config is valid")
}

/// A harness running the website on a free port with extra `[website]` lines.
fn start_with(website: &str, site_id: Option<&str>) -> (Harness, u16) {
    let port = free_port();
    let mut harness = Harness::new(config(port, website, site_id));
    harness.start::<Website>().expect("the website starts");
    (harness, port)
}

fn start() -> (Harness, u16) {
    start_with("", Some("site1"))
}

fn rpc(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
}

/// Polls `condition` until it holds; the deadline is a safety net, not an assertion on timing.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn echo_round_trips_over_http() {
    let (_h, port) = start();
    let value = json!({"nested": [1, 2.5, null, {"s": "é\u{0}"}], "big": "z".repeat(5000)});
    let r = Client::connect(port).post_json(&rpc("echo", json!({ "value": value })));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"jsonrpc": "2.0", "result": value, "id": 1})
    );
}

#[test]
fn site_id_comes_from_the_config() {
    let (_h, port) = start();
    let r = Client::connect(port).post_json(&rpc("public_get_site_id", json!({})));
    assert_eq!(
        (r.status, r.json()["result"].clone()),
        (200, json!("site1"))
    );
}

#[test]
fn each_error_kind_has_its_http_status() {
    let (h, port) = start_with("", None);
    // A db that never answers, so an internal call times out (-32001).
    let (db, _db_inbox, _) = Mailbox::new();
    h.directory().set(ModuleKind::Db, Some(db));
    let mut c = Client::connect(port);
    let cases: Vec<(Vec<u8>, i64, u16)> = vec![
        (b"{oops".to_vec(), -32700, 400),
        (br#"{"jsonrpc":"2.0","method":"_echo","id":1}"#.to_vec(), -32600, 400),
        (br#"{"jsonrpc":"1.0","method":"echo","id":1}"#.to_vec(), -32600, 400),
        (br#"{"jsonrpc":"2.0","method":"nope","id":1}"#.to_vec(), -32601, 400),
        (br#"{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}"#.to_vec(), -32602, 400),
        (br#"{"jsonrpc":"2.0","method":"echo","params":{},"id":1}"#.to_vec(), -32602, 400),
        // No site id in this config.
        (br#"{"jsonrpc":"2.0","method":"public_get_site_id","id":1}"#.to_vec(), -32000, 500),
        (br#"{"jsonrpc":"2.0","method":"test_ping","params":{"module":"queue"},"id":1}"#.to_vec(), -32000, 500),
        (br#"{"jsonrpc":"2.0","method":"test_ping","params":{"module":"db","timeout_ms":20},"id":1}"#.to_vec(), -32001, 503),
        (b"\xff\xfe".to_vec(), -32700, 400),
    ];
    for (body, code, status) in cases {
        let r = c.request("POST", "/jsonrpc", &body);
        let shown = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(r.status, status, "{shown}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], code, "{shown}");
    }
    let r = c.post_json(&rpc("echo", json!({})));
    assert_eq!(r.json()["error"]["message"], "missing parameter 'value'");
}

#[test]
fn deferred_call_answers_from_its_callback() {
    let (_h, port) = start();
    let r = Client::connect(port).post_json(&rpc("test_ping", json!({})));
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!("pong")));
}

#[test]
fn batch_mixes_immediate_deferred_invalid_and_notifications() {
    let (_h, port) = start();
    let batch = json!([
        {"jsonrpc": "2.0", "method": "test_ping", "id": "a"},
        {"jsonrpc": "2.0", "method": "echo", "params": {"value": 1}},
        {"jsonrpc": "2.0", "method": "echo", "params": {"value": 2}, "id": "b"},
        {"jsonrpc": "2.0", "method": "missing", "id": "c"},
        "not a request",
    ]);
    let r = Client::connect(port).post_json(&batch);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!([
            {"jsonrpc": "2.0", "result": "pong", "id": "a"},
            {"jsonrpc": "2.0", "result": 2, "id": "b"},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "method not found: missing"}, "id": "c"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "a request must be an object"}, "id": null},
        ])
    );
}

#[test]
fn notifications_get_an_empty_200() {
    let (_h, port) = start();
    let mut c = Client::connect(port);
    let r = c.post_json(&json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": 1}}));
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = c.post_json(&json!([{"jsonrpc": "2.0", "method": "test_ping"}]));
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn announced_body_over_the_limit_is_refused_unread() {
    let (_h, port) = start_with("body_limit = 4096", Some("s"));
    // Far beyond any memory: refused from the head alone.
    let mut c = Client::connect(port);
    c.send_raw(b"POST /jsonrpc HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000000\r\n\r\n");
    assert_eq!(c.read_response().status, 413);
    // Just over the limit, with the body sent anyway: the client still reads the whole
    // refusal (no reset), which closes the connection.
    let mut c = Client::connect(port);
    let mut request = b"POST /jsonrpc HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b' '; 5000]);
    c.send_raw(&request);
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert!(
        r.text().contains("over the limit of 4096 bytes"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("Connection"), Some("close"));
    // The server still serves everyone else.
    assert_eq!(get(port, "/healthz").status, 200);
}

#[test]
fn chunked_body_over_the_limit_is_refused() {
    let (_h, port) = start_with("body_limit = 4096", Some("s"));
    let mut c = Client::connect(port);
    let data = vec![b'x'; 8192];
    let mut request =
        b"POST /jsonrpc HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    request.extend_from_slice(&data);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    c.send_raw(&request);
    assert_eq!(c.read_response().status, 413);
    // A chunked body within the limit is read and answered.
    let body = rpc("echo", json!({"value": "chunked"})).to_string();
    let mut c = Client::connect(port);
    let mut request =
        b"POST /jsonrpc HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes());
    c.send_raw(&request);
    let r = c.read_response();
    assert_eq!(
        (r.status, r.json()["result"].clone()),
        (200, json!("chunked"))
    );
}

#[test]
fn body_at_the_limit_is_accepted() {
    let body = rpc("echo", json!({"value": "v".repeat(3000)})).to_string();
    let (_h, port) = start_with(&format!("body_limit = {}", body.len()), Some("s"));
    let r = Client::connect(port).request("POST", "/jsonrpc", body.as_bytes());
    assert_eq!(r.status, 200);
}

#[test]
fn megabyte_echo_is_served() {
    let (_h, port) = start();
    let value = "m".repeat(1 << 20);
    let r = Client::connect(port).post_json(&rpc("echo", json!({ "value": value })));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"].as_str().map(str::len), Some(1 << 20));
}

#[test]
fn keep_alive_connection_serves_several_requests() {
    let (_h, port) = start();
    let mut c = Client::connect(port);
    for i in 0..5 {
        let r = c.post_json(&rpc("echo", json!({ "value": i })));
        assert_eq!(r.json()["result"], i);
        assert_eq!(c.request("GET", "/healthz", b"").status, 200);
    }
    assert_eq!(c.request("GET", "/nowhere", b"").status, 404);
}

#[test]
fn healthz_answers_ok() {
    let (_h, port) = start();
    let r = get(port, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405() {
    let (_h, port) = start();
    let r = get(port, "/no/such/page");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("<h1>404 Not Found</h1>"));
    let r = get(port, "/jsonrpc");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    let r = Client::connect(port).request("PUT", "/jsonrpc", b"{}");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    let r = Client::connect(port).request("POST", "/healthz", b"");
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
}

#[test]
fn metrics_count_requests_after_traffic() {
    let (h, port) = start();
    h.stats()
        .module(ModuleKind::Website)
        .running
        .store(true, Ordering::Relaxed);
    h.stats().count_schedule_run("tick");
    let mut c = Client::connect(port);
    c.post_json(&rpc("echo", json!({"value": 1})));
    c.post_json(&rpc("echo", json!({"value": 2})));
    c.post_json(&rpc("no_such_method", json!({})));
    c.post_json(&rpc("another_unknown", json!({})));
    c.request("GET", "/healthz", b"");
    c.request("GET", "/missing", b"");
    let r = c.request("GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/plain; version=0.0.4"));
    let page = r.text();
    for line in [
        "iceprod_http_requests_total{route=\"/jsonrpc\",status=\"200\"} 2",
        "iceprod_http_requests_total{route=\"/jsonrpc\",status=\"400\"} 2",
        "iceprod_http_requests_total{route=\"/healthz\",status=\"200\"} 1",
        "iceprod_http_requests_total{route=\"other\",status=\"404\"} 1",
        "iceprod_jsonrpc_requests_total{method=\"echo\",code=\"0\"} 2",
        "iceprod_jsonrpc_requests_total{method=\"unknown\",code=\"-32601\"} 2",
        "iceprod_module_up{module=\"website\"} 1",
        "iceprod_module_restarts_total{module=\"website\"} 0",
        "iceprod_mailbox_depth{module=\"website\"} 0",
        "iceprod_config_reloads_total 0",
        "iceprod_schedule_runs_total{job=\"tick\"} 1",
        "# TYPE iceprod_website_in_flight gauge",
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "missing {line:?} in\n{page}"
        );
    }
    // The metrics request itself is in flight while the page is rendered (the previous one on
    // this connection may not be counted out yet: its ticket drops just after its write).
    let in_flight: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("iceprod_website_in_flight "))
        .and_then(|v| v.parse().ok())
        .expect("an in-flight sample");
    assert!((1..=2).contains(&in_flight), "{page}");
    for disabled in ["mailbox_depth{module=\"db\"}", "module_up{module=\"db\"}"] {
        assert!(!page.contains(disabled), "db is not enabled: {page}");
    }
}

#[test]
fn refused_bodies_are_counted_in_metrics() {
    let (_h, port) = start_with("body_limit = 100", Some("s"));
    let r = Client::connect(port).request("POST", "/jsonrpc", &[b'x'; 200]);
    assert_eq!(r.status, 413);
    let page = get(port, "/metrics").text();
    assert!(
        page.contains("iceprod_http_requests_total{route=\"/jsonrpc\",status=\"413\"} 1"),
        "{page}"
    );
}

#[test]
fn stop_lets_a_request_whose_body_is_still_arriving_finish() {
    let (mut h, port) = start();
    let value = "s".repeat(3000);
    let body = rpc("echo", json!({ "value": value })).to_string();
    let mut slow = Client::connect(port);
    slow.send_raw(
        format!(
            "POST /jsonrpc HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // The website sends 100 Continue when a pump starts reading the body: from here on the
    // request is in flight.
    assert_eq!(slow.read_response().status, 100);
    slow.send_raw(&body.as_bytes()[..1000]);
    h.ctl(
        ModuleKind::Website,
        Ctl::Stop {
            deadline: Instant::now() + Duration::from_secs(120),
        },
    );
    // The listener refuses new connections once the module took the stop.
    wait_until("the listener refuses connections", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    slow.send_raw(&body.as_bytes()[1000..]);
    let r = slow.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], json!(value));
    assert_eq!(
        h.wait_stopped(ModuleKind::Website, WAIT),
        StopReason::Requested
    );
}

#[test]
fn stop_without_traffic_is_immediate_and_requested() {
    let (mut h, _port) = start();
    assert_eq!(h.stop(ModuleKind::Website, WAIT), StopReason::Requested);
}

#[test]
fn port_can_be_bound_again_right_after_stop() {
    let (mut h, port) = start();
    for _ in 0..3 {
        assert_eq!(get(port, "/healthz").status, 200);
        assert_eq!(h.stop(ModuleKind::Website, WAIT), StopReason::Requested);
        h.start::<Website>()
            .expect("a new website binds the same port at once");
    }
    assert_eq!(get(port, "/healthz").status, 200);
}

#[test]
fn init_fails_naming_the_address_when_the_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut h = Harness::new(config(port, "", Some("s")));
    match h.start::<Website>() {
        Err(StopReason::Failed(message)) => {
            assert!(
                message.contains(&format!("binding 127.0.0.1:{port}")),
                "{message}"
            )
        }
        other => panic!("expected a bind failure, got {other:?}"),
    }
}

#[test]
fn reload_applies_body_limit_in_place_and_restarts_for_the_rest() {
    let (h, port) = start();
    let body = rpc("echo", json!({"value": "r".repeat(500)})).to_string();
    let mut c = Client::connect(port);
    assert_eq!(c.request("POST", "/jsonrpc", body.as_bytes()).status, 200);

    h.ctl(
        ModuleKind::Website,
        Ctl::Reload {
            id: 1,
            config: Arc::new(config(port, "body_limit = 200", Some("site1"))),
        },
    );
    assert_eq!(
        h.wait_status(ModuleKind::Website, WAIT),
        Some(Status::Reloaded {
            id: 1,
            action: ReloadAction::Applied
        })
    );
    // Same connection: the new limit applies to the next request.
    assert_eq!(c.request("POST", "/jsonrpc", body.as_bytes()).status, 413);

    for changed in [
        "stream_threads = 3",
        "max_connections = 5",
        "idle_timeout = \"5s\"",
        "address = \"0.0.0.0\"",
    ] {
        h.ctl(
            ModuleKind::Website,
            Ctl::Reload {
                id: 1,
                config: Arc::new(config(port, changed, Some("site1"))),
            },
        );
        assert_eq!(
            h.wait_status(ModuleKind::Website, WAIT),
            Some(Status::Reloaded {
                id: 1,
                action: ReloadAction::NeedsRestart
            }),
            "{changed}"
        );
    }
    h.ctl(
        ModuleKind::Website,
        Ctl::Reload {
            id: 1,
            config: Arc::new(config(port + 1, "", Some("site1"))),
        },
    );
    assert_eq!(
        h.wait_status(ModuleKind::Website, WAIT),
        Some(Status::Reloaded {
            id: 1,
            action: ReloadAction::NeedsRestart
        })
    );
}

#[test]
fn scheduled_messages_are_acknowledged() {
    let (mut h, _port) = start();
    let reply = h.call(
        ModuleKind::Website,
        Request::Scheduled {
            job: "tick".into(),
            message: ScheduledMessage::Ping,
        },
        WAIT,
    );
    assert_eq!(reply, Ok(Reply::Done));
    assert_eq!(
        h.call(ModuleKind::Website, Request::Ping, WAIT),
        Ok(Reply::Pong)
    );
}

#[test]
fn head_requests_get_headers_only() {
    let (_h, port) = start();
    let mut c = Client::connect(port);
    c.send_raw(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let status_line_and_headers = c.read_response_head();
    assert_eq!(status_line_and_headers, 200);
    // The connection is still in sync: the next response is the one for the next request.
    assert_eq!(c.request("GET", "/healthz", b"").text(), "ok\n");
}
