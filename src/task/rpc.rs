//! The worker's calls to the server: every call carries the passkey, and a call the server
//! could not answer (connection refused, timeout, HTTP 5xx, -32000, -32001) is retried with
//! backoff (1 s doubling to 30 s) for a bounded time. A call the server answered with any
//! other error (-32602, 403, a refused transition) is final and never retried, so nothing is
//! reported twice. This file must not decide what a task does after a call fails.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::client::{RpcClient, RpcClientError};

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Why a call did not succeed.
#[derive(Debug)]
pub enum CallError {
    /// The server answered with an error that retrying cannot change.
    Refused { code: i64, message: String },
    /// No answer within the retry window; the last reason.
    GaveUp(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { code, message } => write!(f, "refused: {message} (error {code})"),
            CallError::GaveUp(why) => write!(f, "no answer: {why}"),
        }
    }
}

/// The task methods of SPEC §5.2 over one [`RpcClient`], with one passkey.
pub struct TaskRpc {
    client: RpcClient,
    passkey: String,
    retry_for: Duration,
}

/// True for errors that say nothing about the request itself, only that the server (or the
/// way to it) could not answer now.
pub fn is_transient(error: &RpcClientError) -> bool {
    match error {
        RpcClientError::Transport(_) => true,
        RpcClientError::Http { status, .. } => *status >= 500 || *status == 429,
        RpcClientError::Server { code, .. } => matches!(code, -32000 | -32001),
    }
}

/// The delay after `delay`: doubling, at most 30 s.
pub fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(MAX_DELAY)
}

impl TaskRpc {
    pub fn new(client: RpcClient, passkey: &str, retry_for: Duration) -> TaskRpc {
        TaskRpc {
            client,
            passkey: passkey.to_string(),
            retry_for,
        }
    }

    /// One attempt, no retry (heartbeats: the next one comes soon enough).
    pub fn call_once(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.attempts(method, params, Duration::ZERO).0
    }

    /// Retries transient failures for the configured window.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.attempts(method, params, self.retry_for).0
    }

    /// Retries transient failures for `window` at most.
    pub fn call_within(
        &self,
        method: &str,
        params: Value,
        window: Duration,
    ) -> Result<Value, CallError> {
        self.attempts(method, params, window).0
    }

    /// `finish_task` or `task_error`, retried for at most `window`. When an attempt got no
    /// answer, the server may still have applied it (the answer was lost on the way back); a
    /// later attempt then meets a task that already left `processing` and is refused as an
    /// illegal transition. That refusal means the first attempt was delivered, so it counts
    /// as success: reporting it as a failure would make the worker report the task twice.
    pub fn report(&self, method: &str, params: Value, window: Duration) -> Result<(), CallError> {
        match self.attempts(method, params, window) {
            (Ok(_), _) => Ok(()),
            (Err(CallError::Refused { code, message }), attempts)
                if attempts > 1 && code == -32602 && message.contains("task cannot take") =>
            {
                Ok(())
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Calls `method` until it succeeds, fails for good, or `window` has passed; the result
    /// and the number of attempts made.
    fn attempts(
        &self,
        method: &str,
        mut params: Value,
        window: Duration,
    ) -> (Result<Value, CallError>, u32) {
        if !params.is_object() {
            params = Value::Object(Map::new());
        }
        params["passkey"] = Value::String(self.passkey.clone());
        let start = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.client.call(method, params.clone()) {
                Ok(v) => return (Ok(v), attempts),
                Err(e) if !is_transient(&e) => {
                    let refused = match e {
                        RpcClientError::Server { code, message } => {
                            CallError::Refused { code, message }
                        }
                        RpcClientError::Http { status, .. } => CallError::Refused {
                            code: i64::from(status),
                            message: e.to_string(),
                        },
                        RpcClientError::Transport(why) => CallError::GaveUp(why),
                    };
                    return (Err(refused), attempts);
                }
                Err(e) => {
                    let left = window.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return (Err(CallError::GaveUp(e.to_string())), attempts);
                    }
                    std::thread::sleep(delay.min(left));
                    delay = next_delay(delay);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let mut d = FIRST_DELAY;
        let mut seen = vec![d.as_secs()];
        for _ in 0..6 {
            d = next_delay(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn only_unanswered_calls_and_server_errors_are_transient() {
        let server = |code| RpcClientError::Server {
            code,
            message: String::new(),
        };
        assert!(is_transient(&RpcClientError::Transport("refused".into())));
        assert!(is_transient(&server(-32000)));
        assert!(is_transient(&server(-32001)));
        assert!(is_transient(&RpcClientError::Http {
            status: 502,
            text: String::new()
        }));
        assert!(!is_transient(&server(-32602)));
        assert!(!is_transient(&server(403)));
        assert!(!is_transient(&server(-32601)));
        assert!(!is_transient(&RpcClientError::Http {
            status: 404,
            text: String::new()
        }));
    }
}
