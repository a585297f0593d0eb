//! A small blocking JSON-RPC client for the server's `/jsonrpc` (SPEC §5.1): what the CLI's
//! `submit` uses, and what the task runner will use. Ids count from 0 as an IceProd worker's
//! do; params are always named.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

/// An error the server answered with, or why there was no answer.
#[derive(Debug)]
pub enum RpcClientError {
    /// The server answered with a JSON-RPC error.
    Server { code: i64, message: String },
    /// No usable answer (connection, HTTP or JSON trouble).
    Transport(String),
}

impl std::fmt::Display for RpcClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcClientError::Server { code, message } => write!(f, "{message} (error {code})"),
            RpcClientError::Transport(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RpcClientError {}

pub struct RpcClient {
    url: String,
    agent: ureq::Agent,
    next_id: AtomicU64,
}

impl RpcClient {
    /// A client for the server at `base` (`http://host:port`; `/jsonrpc` is appended).
    pub fn new(base: &str, timeout: Duration) -> RpcClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // JSON-RPC errors come with 4xx/5xx statuses and a body we want to read.
            .http_status_as_error(false)
            .build()
            .into();
        RpcClient {
            url: format!("{}/jsonrpc", base.trim_end_matches('/')),
            agent,
            next_id: AtomicU64::new(0),
        }
    }

    /// Calls `method` with named `params`; the result, or the server's error.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        let transport =
            |e: &dyn std::fmt::Display| RpcClientError::Transport(format!("{}: {e}", self.url));
        let mut response = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| transport(&e))?;
        let answer: Value = serde_json::from_str(&text).map_err(|_| {
            transport(&format!(
                "HTTP {status}, not a JSON-RPC answer: {text:.200}"
            ))
        })?;
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            return Err(RpcClientError::Server {
                code: error["code"].as_i64().unwrap_or(0),
                message: error["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }
}
