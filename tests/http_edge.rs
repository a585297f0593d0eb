//! The website's HTTP edge against hostile and careless clients, through the real binary:
//! descriptors and threads are counted from `/proc`, so a leak shows as a number.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{wait_until, KeepAlive, Server, WAIT};

/// Open descriptors and threads of the server process.
fn fds_and_threads(server: &Server) -> (usize, usize) {
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{}/{what}", server.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    (count("fd"), count("task"))
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

/// Reads until the server closes; the bytes read. Fails the test if it never closes.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    String::from_utf8_lossy(&all).into_owned()
}

fn echo_body(value: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": value}, "id": 1})
        .to_string()
}

#[test]
fn requests_announcing_huge_bodies_are_refused_and_leak_no_descriptor_or_thread() {
    let server = Server::start("");
    assert!(server.echo_ok());
    let (fds, threads) = fds_and_threads(&server);
    for _ in 0..150 {
        let mut s = connect(server.port);
        s.write_all(b"POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\n\r\nx")
            .expect("write");
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    }
    // Closing is asynchronous (a refusal lingers until the client's close is read).
    assert!(
        wait_until(WAIT, || fds_and_threads(&server).0 <= fds + 2),
        "descriptors {fds} -> {:?}",
        fds_and_threads(&server)
    );
    assert_eq!(fds_and_threads(&server).1, threads, "no thread was added");
    assert!(server.echo_ok());
}

#[test]
fn slow_uploaders_and_silent_clients_delay_nobody_and_are_timed_out() {
    let website = "header_timeout = \"2s\"\nbody_timeout = \"2s\"\nidle_timeout = \"3s\"";
    let server = Server::start_with(|port| common::base_config(port, website, ""));
    let (_, threads) = fds_and_threads(&server);
    // Twice as many of each as the server has threads: none of them may hold one.
    let mut silent: Vec<TcpStream> = (0..2 * threads).map(|_| connect(server.port)).collect();
    let mut uploaders: Vec<TcpStream> = (0..2 * threads)
        .map(|_| {
            let mut s = connect(server.port);
            s.write_all(b"POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
                .expect("write");
            s
        })
        .collect();
    let mut half_heads: Vec<TcpStream> = (0..threads)
        .map(|_| {
            let mut s = connect(server.port);
            s.write_all(b"POST /jsonrpc HTTP/1.1\r\nHost:")
                .expect("write");
            s
        })
        .collect();
    for i in 0..5 {
        let started = Instant::now();
        assert!(server.echo_ok(), "echo {i}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "echo {i} took {took:?}");
    }
    // Each kind is ended by its deadline: a body or head not received gets 408, a silent
    // connection is closed.
    for s in &mut uploaders {
        let answer = read_to_close(s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("body not received in time"), "{answer}");
    }
    for s in &mut half_heads {
        let answer = read_to_close(s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }
    for s in &mut silent {
        assert_eq!(read_to_close(s), "");
    }
}

#[test]
fn connections_over_the_cap_are_answered_503_and_closed() {
    let server = Server::start_with(|port| common::base_config(port, "max_connections = 4", ""));
    let mut held: Vec<KeepAlive> = (0..4).map(|_| KeepAlive::connect(server.port)).collect();
    for conn in &mut held {
        assert!(conn.echo("held"));
    }
    let mut over = connect(server.port);
    let answer = read_to_close(&mut over);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    // One closes: there is room again.
    held.pop();
    assert!(wait_until(WAIT, || server.echo_ok()));
    for conn in &mut held {
        assert!(conn.echo("still served"));
    }
}

#[test]
fn keep_alive_connections_from_before_a_restart_are_answered_503_then_closed() {
    let server = Server::start("");
    let mut asking = connect(server.port);
    let mut idle = connect(server.port);
    for s in [&mut asking, &mut idle] {
        let body = echo_body("before");
        let head = format!(
            "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|()| s.write_all(body.as_bytes()))
            .expect("write");
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        assert_eq!(common::read_response(&mut reader).map(|r| r.0), Some(200));
    }
    let (ok, _, err) = server.ctl(&["restart", "website"]);
    assert!(ok, "{err}");
    assert!(wait_until(WAIT, || server.module("website")["generation"] == 2));
    // A request on an old connection: 503 with Connection: close, then the close.
    asking
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let answer = read_to_close(&mut asking);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    // An old connection that asks nothing is closed, not left open forever.
    let started = Instant::now();
    assert_eq!(read_to_close(&mut idle), "");
    assert!(started.elapsed() < WAIT);
    assert!(wait_until(WAIT, || server.echo_ok()));
}

#[test]
fn sixteen_keep_alive_connections_opened_at_once_after_a_quiet_spell_are_all_served() {
    let server = Server::start("");
    assert!(server.echo_ok());
    // tiny_http's pool shrank after 5 s of quiet, then left some of a burst unserved.
    std::thread::sleep(Duration::from_millis(5500));
    let barrier = Arc::new(Barrier::new(16));
    let port = server.port;
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = KeepAlive::connect(port);
                barrier.wait();
                (0..50).filter(|n| conn.echo(&format!("c{i}-{n}"))).count()
            })
        })
        .collect();
    let served: Vec<usize> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    assert_eq!(served, vec![50; 16], "requests served per connection");
}

#[test]
fn malformed_heads_get_a_clear_refusal() {
    let server = Server::start("");
    for (request, status, says) in [
        (&b"GARBAGE\r\n\r\n"[..], 400, "malformed request"),
        (
            b"POST /jsonrpc HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both Transfer-Encoding and Content-Length",
        ),
        (
            b"POST /jsonrpc HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
            400,
            "is not a number",
        ),
        (
            b"POST /jsonrpc HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "only Transfer-Encoding taken is chunked",
        ),
        (
            b"POST /jsonrpc HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            "chunk size",
        ),
        (
            b"GET / HTTP/1.1\r\nX-A: \xff\r\n\r\n",
            400,
            "not valid UTF-8",
        ),
    ] {
        let mut s = connect(server.port);
        s.write_all(request).expect("write");
        let answer = read_to_close(&mut s);
        let shown = String::from_utf8_lossy(request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{shown}: {answer}"
        );
        assert!(answer.contains(says), "{shown}: {answer}");
    }
    let mut s = connect(server.port);
    let huge = format!("GET / HTTP/1.1\r\nX-A: {}\r\n\r\n", "a".repeat(20_000));
    let _ = s.write_all(huge.as_bytes());
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(server.echo_ok());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start("");
    let mut s = connect(server.port);
    let mut wire = Vec::new();
    for v in ["one", "two", "three"] {
        let body = echo_body(v);
        wire.extend_from_slice(
            format!(
                "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(&wire).expect("write");
    let all = read_to_close(&mut s);
    let one = all.find("\"one\"").expect("one");
    let two = all.find("\"two\"").expect("two");
    let three = all.find("\"three\"").expect("three");
    assert!(one < two && two < three, "{all}");
    assert!(all.trim_end().ends_with("ok"), "{all}");
}

#[test]
fn head_requests_get_the_head_without_a_body() {
    let server = Server::start("");
    let mut s = connect(server.port);
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("Content-Length: 3\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer:?}");
}
