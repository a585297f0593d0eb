//! The JSON-RPC 2.0 envelope (SPEC §5.1, §5.2.1), hand-written on serde_json: parse and
//! validate a body, split a batch into calls, collect their answers in any order, and encode
//! the HTTP reply with its status.
//!
//! One HTTP request is one [`Exchange`]: a slot per request object (one for a single call, one
//! per element of a batch). Slots of malformed elements are answered while parsing; the calls
//! that remain go to the method table, and each answers its slot now or later. The HTTP reply
//! is sent when the last slot is answered. This file knows no method and no module: what names
//! exist is asked of the caller.
//!
//! Status of a single (non-batch) reply: 200 on success or for a notification; 400 for parse
//! error, invalid request, not authorized, unknown method and invalid params; 500 for -32000
//! (and any other server-side code); 503 for -32001. A batch is always 200.

use serde::Serialize;
use serde_json::{Map, Value};

pub use jsonrpc_core::types::error::{Error as RpcError, ErrorCode};

use crate::jsonclass;

/// Not authorized (the passkey does not allow this call).
pub const NOT_AUTHORIZED: i64 = 403;
/// An internal call did not answer in time.
pub const TIMEOUT: i64 = -32001;
/// The server could not carry out the call; the message is safe to show.
pub const SERVER_ERROR: i64 = -32000;

/// Longest method name echoed back in an error message.
const ECHOED_NAME_CHARS: usize = 64;

pub fn parse_error(detail: impl std::fmt::Display) -> RpcError {
    RpcError {
        code: ErrorCode::ParseError,
        message: format!("parse error: {detail}"),
        data: None,
    }
}

pub fn invalid_request(message: impl Into<String>) -> RpcError {
    RpcError {
        code: ErrorCode::InvalidRequest,
        message: message.into(),
        data: None,
    }
}

pub fn method_not_found(name: &str) -> RpcError {
    let shown: String = name.chars().take(ECHOED_NAME_CHARS).collect();
    RpcError {
        code: ErrorCode::MethodNotFound,
        message: format!("method not found: {shown}"),
        data: None,
    }
}

pub fn invalid_params(message: impl Into<String>) -> RpcError {
    RpcError::invalid_params(message)
}

pub fn missing_param(name: &str) -> RpcError {
    invalid_params(format!("missing parameter '{name}'"))
}

pub fn not_authorized(message: impl Into<String>) -> RpcError {
    RpcError {
        code: ErrorCode::ServerError(NOT_AUTHORIZED),
        message: message.into(),
        data: None,
    }
}

pub fn timeout() -> RpcError {
    RpcError {
        code: ErrorCode::ServerError(TIMEOUT),
        message: "timeout".into(),
        data: None,
    }
}

/// A -32000 error; `message` is shown to the client, so it must not carry internals.
pub fn server_error(message: impl Into<String>) -> RpcError {
    RpcError {
        code: ErrorCode::ServerError(SERVER_ERROR),
        message: message.into(),
        data: None,
    }
}

/// The HTTP status of a single reply carrying an error with `code` (SPEC §5.2.1).
pub fn http_status(code: i64) -> u16 {
    match code {
        -32700 | -32600 | -32601 | -32602 | NOT_AUTHORIZED => 400,
        TIMEOUT => 503,
        _ => 500,
    }
}

/// The params of a call: named values, `__jsonclass__` already decoded. A key `args` carries
/// positional arguments (IceProd clients send `f(*args, **kwargs)` this way).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    named: Map<String, Value>,
}

impl Params {
    /// Validates the `params` member of a request: absent or an object, `args` a list if given.
    pub fn from_value(params: Option<Value>) -> Result<Params, RpcError> {
        let Some(mut params) = params else {
            return Ok(Params::default());
        };
        jsonclass::decode(&mut params, "params").map_err(invalid_params)?;
        let Value::Object(named) = params else {
            return Err(invalid_params(
                "params must be an object of named parameters",
            ));
        };
        if named.get("args").is_some_and(|a| !a.is_array()) {
            return Err(invalid_params("parameter 'args' must be a list"));
        }
        Ok(Params { named })
    }

    /// The named parameter `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.named.get(name)
    }

    /// The parameter `name`, given by name or as positional argument `position` in `args`.
    pub fn arg(&self, name: &str, position: usize) -> Option<&Value> {
        self.get(name).or_else(|| self.args().get(position))
    }

    /// Like [`Self::arg`], but a missing parameter is -32602 naming it.
    pub fn required(&self, name: &str, position: usize) -> Result<&Value, RpcError> {
        self.arg(name, position).ok_or_else(|| missing_param(name))
    }

    /// The positional arguments (`args`), empty if none were sent.
    pub fn args(&self) -> &[Value] {
        match self.named.get("args") {
            Some(Value::Array(args)) => args,
            _ => &[],
        }
    }

    /// Every named parameter (including `args`).
    pub fn named(&self) -> &Map<String, Value> {
        &self.named
    }
}

/// A valid call to a method that exists, waiting for its answer.
#[derive(Debug)]
pub struct Call {
    pub method: String,
    pub params: Params,
}

/// A call and the slot its answer goes to.
#[derive(Debug)]
pub struct Incoming {
    pub slot: usize,
    pub call: Call,
}

/// The answer of an exchange, ready to send.
#[derive(Debug, PartialEq)]
pub struct HttpAnswer {
    pub status: u16,
    /// JSON, or empty when only notifications were sent.
    pub body: Vec<u8>,
}

struct Slot {
    /// `None` for a notification, which gets no response object.
    id: Option<Value>,
    /// The method name as sent, for metrics; `None` if there was none.
    method: Option<String>,
    answer: Option<Result<Value, RpcError>>,
}

/// One HTTP request's worth of JSON-RPC: a slot per request object and their answers.
pub struct Exchange {
    batch: bool,
    slots: Vec<Slot>,
    unanswered: usize,
}

impl Exchange {
    /// Parses `body`. Malformed parts are answered at once; the returned calls are to methods
    /// for which `is_method` is true and must each be answered with [`Self::answer`].
    pub fn parse(body: &[u8], is_method: impl Fn(&str) -> bool) -> (Exchange, Vec<Incoming>) {
        let document: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return (Exchange::refused(parse_error(e)), Vec::new()),
        };
        let (batch, elements) = match document {
            Value::Array(items) if items.is_empty() => {
                return (
                    Exchange::refused(invalid_request("empty batch")),
                    Vec::new(),
                )
            }
            Value::Array(items) => (true, items),
            single => (false, vec![single]),
        };
        let mut exchange = Exchange {
            batch,
            slots: Vec::with_capacity(elements.len()),
            unanswered: 0,
        };
        let mut calls = Vec::new();
        for element in elements {
            let slot = exchange.slots.len();
            let (id, method, outcome) = read_request(element, &is_method);
            let answer = match outcome {
                Ok(call) => {
                    calls.push(Incoming { slot, call });
                    exchange.unanswered += 1;
                    None
                }
                Err(e) => Some(Err(e)),
            };
            exchange.slots.push(Slot { id, method, answer });
        }
        (exchange, calls)
    }

    /// A whole body refused before any call (parse error, empty batch): one error, id null.
    fn refused(error: RpcError) -> Exchange {
        Exchange {
            batch: false,
            slots: vec![Slot {
                id: Some(Value::Null),
                method: None,
                answer: Some(Err(error)),
            }],
            unanswered: 0,
        }
    }

    /// Answers `slot`. A second answer to the same slot is ignored (and logged).
    pub fn answer(&mut self, slot: usize, result: Result<Value, RpcError>) {
        match self.slots.get_mut(slot) {
            Some(s) if s.answer.is_none() => {
                s.answer = Some(result);
                self.unanswered -= 1;
            }
            _ => log::warn!("jsonrpc: ignored a second or stray answer for slot {slot}"),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.unanswered == 0
    }

    /// For metrics: each request object's method as sent and its code (0 for success).
    pub fn outcomes(&self) -> impl Iterator<Item = (Option<&str>, i64)> + '_ {
        self.slots.iter().map(|s| {
            let code = match &s.answer {
                Some(Ok(_)) => 0,
                Some(Err(e)) => e.code.code(),
                None => SERVER_ERROR,
            };
            (s.method.as_deref(), code)
        })
    }

    /// Encodes the reply. Slots still unanswered (never expected) answer -32000.
    pub fn into_answer(self) -> HttpAnswer {
        let mut status = 200;
        let mut responses = Vec::with_capacity(self.slots.len());
        for slot in self.slots {
            let Some(id) = slot.id else { continue };
            let answer = slot
                .answer
                .unwrap_or_else(|| Err(server_error("no answer")));
            if let Err(e) = &answer {
                status = http_status(e.code.code());
            }
            responses.push((id, answer));
        }
        if responses.is_empty() {
            return HttpAnswer {
                status: 200,
                body: Vec::new(),
            };
        }
        let wire: Vec<Wire<'_>> = responses.iter().map(|(id, a)| Wire::new(id, a)).collect();
        // Serializing serde_json values and plain structs cannot fail.
        let body = if self.batch {
            serde_json::to_vec(&wire)
        } else {
            serde_json::to_vec(&wire[0])
        }
        .unwrap_or_default();
        HttpAnswer {
            status: if self.batch { 200 } else { status },
            body,
        }
    }
}

/// A response object on the wire.
#[derive(Serialize)]
#[serde(untagged)]
enum Wire<'a> {
    Success {
        jsonrpc: &'static str,
        result: &'a Value,
        id: &'a Value,
    },
    Failure {
        jsonrpc: &'static str,
        error: &'a RpcError,
        id: &'a Value,
    },
}

impl<'a> Wire<'a> {
    fn new(id: &'a Value, answer: &'a Result<Value, RpcError>) -> Wire<'a> {
        match answer {
            Ok(result) => Wire::Success {
                jsonrpc: "2.0",
                result,
                id,
            },
            Err(error) => Wire::Failure {
                jsonrpc: "2.0",
                error,
                id,
            },
        }
    }
}

type RequestParts = (Option<Value>, Option<String>, Result<Call, RpcError>);

/// Validates one request object: returns its id (`None` for a notification), its method name
/// and the call, or the error that answers it.
fn read_request(element: Value, is_method: &impl Fn(&str) -> bool) -> RequestParts {
    let Value::Object(mut object) = element else {
        return (
            Some(Value::Null),
            None,
            Err(invalid_request("a request must be an object")),
        );
    };
    let id = object.remove("id");
    // An envelope error is answered even without an id (with id null), as JSON-RPC asks.
    let answered_id = match &id {
        Some(v @ (Value::Null | Value::Number(_) | Value::String(_))) => v.clone(),
        Some(_) => {
            return (
                Some(Value::Null),
                None,
                Err(invalid_request("id must be a number, a string or null")),
            )
        }
        None => Value::Null,
    };
    let refuse = |message: &str, method: Option<String>| {
        (
            Some(answered_id.clone()),
            method,
            Err(invalid_request(message)),
        )
    };
    let version_ok = match object.get("jsonrpc") {
        Some(Value::String(s)) => s == "2.0",
        Some(Value::Number(n)) => n.as_f64() == Some(2.0),
        _ => false,
    };
    if !version_ok {
        return refuse("jsonrpc must be \"2.0\"", None);
    }
    let method = match object.remove("method") {
        Some(Value::String(m)) => m,
        _ => return refuse("method must be a string", None),
    };
    if method.starts_with('_') {
        return refuse("methods starting with '_' are private", Some(method));
    }
    if !is_method(&method) {
        let e = method_not_found(&method);
        return (id, Some(method), Err(e));
    }
    match Params::from_value(object.remove("params")) {
        Ok(params) => (id, Some(method.clone()), Ok(Call { method, params })),
        Err(e) => (id, Some(method), Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A method table for envelope tests: `echo` (value), `fail` (answers `error` by code),
    /// `later` (answered by the test after the fact).
    fn is_method(name: &str) -> bool {
        matches!(name, "echo" | "fail" | "later")
    }

    fn answer_now(call: &Call) -> Option<Result<Value, RpcError>> {
        match call.method.as_str() {
            "echo" => Some(call.params.required("value", 0).cloned()),
            "fail" => {
                let code = call.params.get("code").and_then(Value::as_i64).unwrap_or(0);
                Some(Err(match code {
                    NOT_AUTHORIZED => not_authorized("passkey not valid for this task"),
                    TIMEOUT => timeout(),
                    _ => server_error("database unavailable"),
                }))
            }
            _ => None,
        }
    }

    /// Runs `body` through parse, immediate dispatch and encoding.
    fn run(body: &[u8]) -> (u16, Value) {
        let (mut exchange, calls) = Exchange::parse(body, is_method);
        for Incoming { slot, call } in calls {
            let result = answer_now(&call).expect("test sends no deferred calls here");
            exchange.answer(slot, result);
        }
        assert!(exchange.is_complete());
        let answer = exchange.into_answer();
        let body = if answer.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&answer.body).expect("replies are JSON")
        };
        (answer.status, body)
    }

    fn run_json(body: Value) -> (u16, Value) {
        run(body.to_string().as_bytes())
    }

    fn code_of(reply: &Value) -> i64 {
        reply["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error in {reply}"))
    }

    #[test]
    fn success_echoes_result_and_id() {
        let (status, reply) = run_json(
            json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": [1, "a"]}, "id": 7}),
        );
        assert_eq!(status, 200);
        assert_eq!(
            reply,
            json!({"jsonrpc": "2.0", "result": [1, "a"], "id": 7})
        );
    }

    #[test]
    fn string_and_null_ids_are_echoed() {
        let (_, reply) = run_json(
            json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": 1}, "id": "abc"}),
        );
        assert_eq!(reply["id"], "abc");
        let (_, reply) = run_json(
            json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": 1}, "id": null}),
        );
        assert_eq!(reply, json!({"jsonrpc": "2.0", "result": 1, "id": null}));
    }

    #[test]
    fn version_may_be_the_number_2_0() {
        let (status, reply) =
            run(br#"{"jsonrpc": 2.0, "method": "echo", "params": {"value": 1}, "id": 0}"#);
        assert_eq!((status, reply["result"].clone()), (200, json!(1)));
    }

    #[test]
    fn missing_or_wrong_version_is_an_invalid_request() {
        for body in [
            json!({"method": "echo", "params": {"value": 1}, "id": 1}),
            json!({"jsonrpc": "1.0", "method": "echo", "params": {"value": 1}, "id": 1}),
            json!({"jsonrpc": 2.1, "method": "echo", "params": {"value": 1}, "id": 1}),
            json!({"jsonrpc": null, "method": "echo", "id": 1}),
        ] {
            let (status, reply) = run_json(body.clone());
            assert_eq!((status, code_of(&reply)), (400, -32600), "{body}");
            assert_eq!(reply["id"], 1, "{body}");
        }
    }

    #[test]
    fn every_error_code_has_its_http_status() {
        let cases: [(&[u8], i64, u16); 8] = [
            (b"{not json", -32700, 400),
            (br#"{"jsonrpc":"2.0","method":5,"id":1}"#, -32600, 400),
            (br#"{"jsonrpc":"2.0","method":"nope","id":1}"#, -32601, 400),
            (
                br#"{"jsonrpc":"2.0","method":"echo","params":{},"id":1}"#,
                -32602,
                400,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"fail","params":{"code":403},"id":1}"#,
                403,
                400,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"fail","params":{"code":-32000},"id":1}"#,
                -32000,
                500,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"fail","params":{"code":-32001},"id":1}"#,
                -32001,
                503,
            ),
            (br#"[]"#, -32600, 400),
        ];
        for (body, code, status) in cases {
            let (got_status, reply) = run(body);
            assert_eq!(code_of(&reply), code, "{}", String::from_utf8_lossy(body));
            assert_eq!(got_status, status, "{}", String::from_utf8_lossy(body));
            assert!(reply["error"]["message"].is_string());
        }
    }

    #[test]
    fn parse_errors_answer_with_a_null_id() {
        let (_, reply) = run(br#"{"jsonrpc":"2.0","method":"echo","id":3"#);
        assert_eq!(code_of(&reply), -32700);
        assert_eq!(reply["id"], Value::Null);
    }

    #[test]
    fn invalid_utf8_is_a_parse_error() {
        let (status, reply) = run(b"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"value\":\"\xff\xfe\"},\"id\":1}");
        assert_eq!((status, code_of(&reply)), (400, -32700));
    }

    #[test]
    fn missing_parameter_is_named() {
        let (_, reply) =
            run_json(json!({"jsonrpc": "2.0", "method": "echo", "params": {"valeu": 1}, "id": 1}));
        assert_eq!(reply["error"]["message"], "missing parameter 'value'");
    }

    #[test]
    fn private_method_names_are_invalid_requests() {
        let (status, reply) =
            run_json(json!({"jsonrpc": "2.0", "method": "_echo", "params": {"value": 1}, "id": 1}));
        assert_eq!((status, code_of(&reply)), (400, -32600));
        assert_eq!(reply["id"], 1);
    }

    #[test]
    fn params_must_be_an_object_or_absent() {
        for params in [json!([1, 2]), json!("x"), json!(3), json!(null)] {
            let (status, reply) =
                run_json(json!({"jsonrpc": "2.0", "method": "echo", "params": params, "id": 1}));
            assert_eq!((status, code_of(&reply)), (400, -32602), "{params}");
        }
        let (_, reply) =
            run_json(json!({"jsonrpc": "2.0", "method": "echo", "params": {"args": 5}, "id": 1}));
        assert_eq!(reply["error"]["message"], "parameter 'args' must be a list");
        // Absent params reach the method, which names what it misses.
        let (_, reply) = run_json(json!({"jsonrpc": "2.0", "method": "echo", "id": 1}));
        assert_eq!(reply["error"]["message"], "missing parameter 'value'");
    }

    #[test]
    fn args_carry_positional_arguments() {
        let (_, reply) = run_json(
            json!({"jsonrpc": "2.0", "method": "echo", "params": {"args": ["pos"]}, "id": 1}),
        );
        assert_eq!(reply["result"], "pos");
    }

    #[test]
    fn ids_of_other_types_are_invalid_requests() {
        for id in [json!([1]), json!({"a": 1}), json!(true)] {
            let (status, reply) = run_json(
                json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": 1}, "id": id}),
            );
            assert_eq!((status, code_of(&reply)), (400, -32600), "{id}");
            assert_eq!(reply["id"], Value::Null);
        }
    }

    #[test]
    fn non_object_requests_are_invalid() {
        for body in ["5", "\"echo\"", "null", "true"] {
            let (status, reply) = run(body.as_bytes());
            assert_eq!((status, code_of(&reply)), (400, -32600), "{body}");
        }
    }

    #[test]
    fn notification_gets_an_empty_reply() {
        let (status, reply) =
            run_json(json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": 1}}));
        assert_eq!((status, reply), (200, Value::Null));
        // Errors of a notification are not answered either.
        let (status, reply) = run_json(json!({"jsonrpc": "2.0", "method": "nope"}));
        assert_eq!((status, reply), (200, Value::Null));
        let (status, reply) = run_json(json!({"jsonrpc": "2.0", "method": "echo", "params": {}}));
        assert_eq!((status, reply), (200, Value::Null));
    }

    #[test]
    fn malformed_notification_is_still_answered_with_null_id() {
        let (status, reply) = run_json(json!({"jsonrpc": "2.0", "method": 1}));
        assert_eq!((status, code_of(&reply)), (400, -32600));
        assert_eq!(reply["id"], Value::Null);
    }

    #[test]
    fn batch_answers_each_element_in_order_with_200() {
        let (status, reply) = run_json(json!([
            {"jsonrpc": "2.0", "method": "echo", "params": {"value": "a"}, "id": 1},
            {"jsonrpc": "2.0", "method": "echo", "params": {"value": "n"}},
            {"jsonrpc": "2.0", "method": "nope", "id": 2},
            5,
            {"jsonrpc": "2.0", "method": "fail", "params": {"code": -32001}, "id": "t"},
            {"jsonrpc": "2.0", "method": "_x", "id": 3},
        ]));
        assert_eq!(status, 200);
        let replies = reply.as_array().expect("a batch answers an array");
        assert_eq!(replies.len(), 5, "the notification gets no entry: {reply}");
        assert_eq!(
            replies[0],
            json!({"jsonrpc": "2.0", "result": "a", "id": 1})
        );
        assert_eq!(
            (code_of(&replies[1]), replies[1]["id"].clone()),
            (-32601, json!(2))
        );
        assert_eq!(
            (code_of(&replies[2]), replies[2]["id"].clone()),
            (-32600, Value::Null)
        );
        assert_eq!(
            (code_of(&replies[3]), replies[3]["id"].clone()),
            (-32001, json!("t"))
        );
        assert_eq!(
            (code_of(&replies[4]), replies[4]["id"].clone()),
            (-32600, json!(3))
        );
    }

    #[test]
    fn batch_of_only_notifications_gets_an_empty_reply() {
        let (status, reply) = run_json(json!([
            {"jsonrpc": "2.0", "method": "echo", "params": {"value": 1}},
            {"jsonrpc": "2.0", "method": "nope"},
        ]));
        assert_eq!((status, reply), (200, Value::Null));
    }

    #[test]
    fn batch_of_invalid_elements_answers_each() {
        let (status, reply) = run(b"[1, 2]");
        assert_eq!(status, 200);
        assert_eq!(reply.as_array().map(Vec::len), Some(2));
        assert!(reply
            .as_array()
            .unwrap()
            .iter()
            .all(|r| code_of(r) == -32600));
    }

    #[test]
    fn deferred_answers_complete_the_exchange_in_any_order() {
        let body = json!([
            {"jsonrpc": "2.0", "method": "later", "id": 1},
            {"jsonrpc": "2.0", "method": "echo", "params": {"value": 2}, "id": 2},
            {"jsonrpc": "2.0", "method": "later", "id": 3},
        ]);
        let (mut exchange, calls) = Exchange::parse(body.to_string().as_bytes(), is_method);
        let mut later = Vec::new();
        for Incoming { slot, call } in calls {
            match answer_now(&call) {
                Some(result) => exchange.answer(slot, result),
                None => later.push(slot),
            }
        }
        assert!(!exchange.is_complete());
        exchange.answer(later[1], Ok(json!("third")));
        assert!(!exchange.is_complete());
        exchange.answer(later[0], Err(timeout()));
        assert!(exchange.is_complete());
        let outcomes: Vec<_> = exchange
            .outcomes()
            .map(|(m, c)| (m.map(str::to_string), c))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (Some("later".into()), -32001),
                (Some("echo".into()), 0),
                (Some("later".into()), 0)
            ]
        );
        let answer = exchange.into_answer();
        let reply: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(reply[0]["error"]["code"], -32001);
        assert_eq!(reply[1]["result"], 2);
        assert_eq!(reply[2]["result"], "third");
    }

    #[test]
    fn a_second_answer_to_a_slot_is_ignored() {
        let body = br#"{"jsonrpc":"2.0","method":"later","id":1}"#;
        let (mut exchange, calls) = Exchange::parse(body, is_method);
        exchange.answer(calls[0].slot, Ok(json!(1)));
        exchange.answer(calls[0].slot, Ok(json!(2)));
        exchange.answer(99, Ok(json!(3)));
        let reply: Value = serde_json::from_slice(&exchange.into_answer().body).unwrap();
        assert_eq!(reply["result"], 1);
    }

    #[test]
    fn jsonclass_params_are_decoded_before_dispatch() {
        let (_, reply) = run_json(json!({"jsonrpc": "2.0", "method": "echo", "id": 1,
            "params": {"value": {"when": {"__jsonclass__": ["datetime", "2024-05-01T10:00:00"]},
                                 "ids": {"__jsonclass__": ["set", [1, 2]]}}}}));
        assert_eq!(
            reply["result"],
            json!({"when": "2024-05-01T10:00:00", "ids": [1, 2]})
        );
        let (status, reply) = run_json(json!({"jsonrpc": "2.0", "method": "echo", "id": 1,
            "params": {"value": 1, "when": {"__jsonclass__": ["datetime", "yesterday"]}}}));
        assert_eq!((status, code_of(&reply)), (400, -32602));
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("params.when: bad datetime"),
            "{message}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_as_a_parse_error_not_a_crash() {
        let depth = 100_000;
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let (status, reply) = run(body.as_bytes());
        assert_eq!((status, code_of(&reply)), (400, -32700));
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"echo","id":1,"params":{{"value":{}1{}}}}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        let (status, reply) = run(body.as_bytes());
        assert_eq!((status, code_of(&reply)), (400, -32700));
    }

    #[test]
    fn moderate_nesting_round_trips() {
        let mut value = json!("leaf");
        for _ in 0..100 {
            value = json!([value]);
        }
        let (status, reply) = run_json(
            json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": value.clone()}, "id": 1}),
        );
        assert_eq!((status, reply["result"].clone()), (200, value));
    }

    #[test]
    fn megabyte_strings_and_nul_characters_round_trip() {
        let big = "x".repeat(1 << 20);
        let (status, reply) = run_json(
            json!({"jsonrpc": "2.0", "method": "echo", "params": {"value": big}, "id": 1}),
        );
        assert_eq!(status, 200);
        assert_eq!(reply["result"].as_str().map(str::len), Some(1 << 20));
        let (_, reply) =
            run(br#"{"jsonrpc":"2.0","method":"echo","params":{"value":"a\u0000b"},"id":1}"#);
        assert_eq!(reply["result"], "a\u{0}b");
    }

    #[test]
    fn long_unknown_method_names_are_cut_in_the_message() {
        let name = "m".repeat(10_000);
        let (_, reply) = run_json(json!({"jsonrpc": "2.0", "method": name, "id": 1}));
        assert_eq!(code_of(&reply), -32601);
        assert!(reply["error"]["message"].as_str().unwrap().len() < 100);
    }

    #[test]
    fn http_status_follows_the_spec() {
        assert_eq!(http_status(-32700), 400);
        assert_eq!(http_status(-32600), 400);
        assert_eq!(http_status(-32601), 400);
        assert_eq!(http_status(-32602), 400);
        assert_eq!(http_status(403), 400);
        assert_eq!(http_status(-32000), 500);
        assert_eq!(http_status(-32603), 500);
        assert_eq!(http_status(-32001), 503);
    }
}
