//! A small blocking JSON-RPC client for the server's `/jsonrpc` (SPEC §5.1): what the CLI's
//! `submit` and `iceprod task` use. Ids count from 0 as an IceProd worker's do; params are
//! always named. [`http_agent`] builds the one ureq agent (native-tls, the system's roots or
//! the site CA) that the task runner also uses for its downloads and uploads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

/// An error the server answered with, or why there was no answer.
#[derive(Debug)]
pub enum RpcClientError {
    /// The server answered with a JSON-RPC error.
    Server { code: i64, message: String },
    /// No usable answer (connection, timeout, or trouble reading the answer).
    Transport(String),
    /// An HTTP answer that is not JSON-RPC (a proxy's 502 page, a wrong URL's 404).
    Http { status: u16, text: String },
}

impl std::fmt::Display for RpcClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcClientError::Server { code, message } => write!(f, "{message} (error {code})"),
            RpcClientError::Transport(why) => f.write_str(why),
            RpcClientError::Http { status, text } => {
                write!(f, "HTTP {status}, not a JSON-RPC answer: {text:.200}")
            }
        }
    }
}

impl std::error::Error for RpcClientError {}

/// The longest a pooled connection may have been idle and still be reused.
const IDLE_REUSE: Duration = Duration::from_secs(2);

/// A blocking HTTP agent over native-tls that keeps 4xx/5xx answers readable. With `ca_pem`
/// (the site CA, PEM) https servers are verified against it alone; without it, against the
/// system's roots.
pub fn http_agent(timeout: Duration, ca_pem: Option<&[u8]>) -> Result<ureq::Agent, String> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let roots = match ca_pem {
        Some(pem) => {
            let certs = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<Certificate<'static>>, _>>()
                .map_err(|e| format!("cannot read the CA certificate: {e}"))?;
            if certs.is_empty() {
                return Err("the CA file holds no PEM certificate".into());
            }
            RootCerts::new_with_certs(&certs)
        }
        None => RootCerts::PlatformVerifier,
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(roots)
        .build();
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // A connection idle for a while is not reused: a server that restarted meanwhile
        // may have left it open with nobody reading (tiny_http keeps idle keep-alive
        // connections of a stopped server), and a call on it would wait out the timeout.
        // Back-to-back calls (log uploads, then finish_task) still share one connection.
        .max_idle_age(IDLE_REUSE)
        .tls_config(tls)
        // JSON-RPC errors come with 4xx/5xx statuses and a body we want to read.
        .http_status_as_error(false)
        .build()
        .into())
}

pub struct RpcClient {
    url: String,
    agent: ureq::Agent,
    next_id: AtomicU64,
}

impl RpcClient {
    /// A client for the server at `base` (`http://host:port`; `/jsonrpc` is appended).
    pub fn new(base: &str, timeout: Duration) -> RpcClient {
        // Without a CA file there is nothing that can fail.
        let agent = http_agent(timeout, None).expect("an agent without a CA file");
        RpcClient::with_agent(base, agent)
    }

    /// A client for the server at `base` over `agent` (see [`http_agent`]).
    pub fn with_agent(base: &str, agent: ureq::Agent) -> RpcClient {
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
        let answer: Value = match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Err(RpcClientError::Http { status, text }),
        };
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            return Err(RpcClientError::Server {
                code: error["code"].as_i64().unwrap_or(0),
                message: error["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }
}
