//! The JSON-RPC envelope of SPEC §5.1 through the real binary: codes, HTTP statuses, batches,
//! notifications, oversized bodies. Error codes that only methods of later modules produce
//! (403, -32001) are covered by the website crate's envelope tests.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;

use common::{Server, WAIT};
use serde_json::{json, Value};

fn post(server: &Server, body: &str) -> (u16, Value) {
    let (status, text) = server.post(body.as_bytes()).expect("an answer");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, value)
}

#[test]
fn echo_and_site_id_answer() {
    let server = Server::start("");
    let (status, v) = post(
        &server,
        r#"{"jsonrpc":"2.0","method":"echo","params":{"value":{"a":[1,"x",null]}},"id":7}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"jsonrpc":"2.0","result":{"a":[1,"x",null]},"id":7})
    );
    let (status, v) = post(
        &server,
        r#"{"jsonrpc":2.0,"method":"public_get_site_id","id":"s"}"#,
    );
    assert_eq!(status, 200);
    // The site id lives in the database (docs/operations.md).
    let site = common::db_text(&server, "SELECT site_id FROM this_site");
    assert_eq!(v["result"], site);
    assert_eq!(v["id"], "s");
}

#[test]
fn every_envelope_error_has_its_code_and_http_status() {
    let server = Server::start("");
    let cases: &[(&str, i64, u16)] = &[
        ("{not json", -32700, 400),
        ("\"just a string\"", -32600, 400),
        (r#"{"jsonrpc":"1.0","method":"echo","id":1}"#, -32600, 400),
        (
            r#"{"method":"echo","params":{"value":1},"id":1}"#,
            -32600,
            400,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"_private","id":1}"#,
            -32600,
            400,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"echo","id":{"x":1}}"#,
            -32600,
            400,
        ),
        (r#"{"jsonrpc":"2.0","method":"nosuch","id":1}"#, -32601, 400),
        (
            r#"{"jsonrpc":"2.0","method":"echo","params":{},"id":1}"#,
            -32602,
            400,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}"#,
            -32602,
            400,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"echo","params":{"value":{"__jsonclass__":["datetime","yesterday"]}},"id":1}"#,
            -32602,
            400,
        ),
        ("[]", -32600, 400),
    ];
    for (body, code, http) in cases {
        let (status, v) = post(&server, body);
        assert_eq!(v["error"]["code"], *code, "{body} → {v}");
        assert_eq!(status, *http, "{body} → {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (_, v) = post(
        &server,
        r#"{"jsonrpc":"2.0","method":"echo","params":{},"id":1}"#,
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("value"),
        "{v}"
    );
    let metrics = server.get("/metrics").unwrap().1;
    assert!(metrics.contains("method=\"unknown\""), "{metrics}");
    assert!(
        !metrics.contains("nosuch"),
        "unknown method names must not become labels"
    );
}

#[test]
fn batches_and_notifications() {
    let server = Server::start("");
    let (status, v) = post(
        &server,
        r#"[{"jsonrpc":"2.0","method":"echo","params":{"value":1},"id":1},
            {"jsonrpc":"2.0","method":"echo","params":{"value":2}},
            {"jsonrpc":"2.0","method":"nosuch","id":3},
            {"bad":true}]"#,
    );
    assert_eq!(status, 200);
    let answers = v.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 3, "{v}");
    assert_eq!(answers[0]["result"], 1);
    assert_eq!(answers[1]["error"]["code"], -32601);
    assert_eq!(answers[2]["error"]["code"], -32600);
    // Notifications only: an empty 200.
    let (status, text) = server
        .post(br#"{"jsonrpc":"2.0","method":"echo","params":{"value":1}}"#)
        .unwrap();
    assert_eq!((status, text.as_str()), (200, ""));
}

#[test]
fn jsonclass_values_are_decoded() {
    let server = Server::start("");
    let (status, v) = post(
        &server,
        r#"{"jsonrpc":"2.0","method":"echo","params":{"value":[
            {"__jsonclass__":["datetime","2026-11-27T10:11:12.5"]},
            {"__jsonclass__":["set",[1,2]]}]},"id":1}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"][0], "2026-11-27T10:11:12.5");
    assert_eq!(v["result"][1], json!([1, 2]));
}

#[test]
fn a_100_mib_body_is_refused_with_413_before_it_is_read() {
    let server = Server::start("");
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        100u64 << 20
    )
    .unwrap();
    let (status, _) = common::read_response(&mut BufReader::new(stream)).expect("an answer");
    assert_eq!(status, 413);

    // A chunked body that grows past the limit (10 MiB by default) is cut off too.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..11 {
        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
            || stream.write_all(&chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let (status, _) = common::read_response(&mut BufReader::new(stream)).expect("an answer");
    assert_eq!(status, 413);
    assert!(server.echo_ok());
}

#[test]
fn health_metrics_and_unknown_paths() {
    let server = Server::start("");
    assert!(server.echo_ok());
    assert_eq!(server.get("/healthz").unwrap().0, 200);
    assert_eq!(server.get("/nothing/here").unwrap().0, 404);
    assert_eq!(server.get("/jsonrpc").unwrap().0, 405);
    let (status, metrics) = server.get("/metrics").unwrap();
    assert_eq!(status, 200);
    for needle in [
        "iceprod_jsonrpc_requests_total{method=\"echo\",code=\"0\"}",
        "iceprod_module_restarts_total{module=\"website\"} 0",
        "iceprod_mailbox_depth{module=\"website\"}",
        "iceprod_config_reloads_total 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
}
