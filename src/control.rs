//! The control socket's protocol (`iceprod ctl …`): one JSON request per line, one JSON
//! response per line. The server side lives in the controller; this file holds the message
//! types and the blocking client the CLI uses.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use iceprod_runtime::status::ServerStatus;
use iceprod_runtime::Fault;
use serde::{Deserialize, Serialize};

/// Longest request line the server reads before refusing the connection.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CtlRequest {
    // Braced so that `deny_unknown_fields` applies to them too (serde ignores extra keys
    // next to the tag of a unit variant).
    /// The server, its config reloads and every module.
    Status {},
    /// Read the config file again (as SIGHUP does, without the debounce); answered once
    /// every module that hears the change answered.
    Reload {},
    /// Open the log file again (after logrotate moved it), as SIGUSR1 does.
    ReopenLogs {},
    Start {
        module: String,
    },
    Stop {
        module: String,
    },
    Restart {
        module: String,
    },
    /// Abandon the module's thread; its mailbox is kept; no replacement until `start`.
    Kill {
        module: String,
    },
    /// Round trip through the module's mailbox; answered once the module serves it.
    Ping {
        module: String,
    },
    /// Fault injection, refused unless `[debug] fault_injection = true`.
    Inject {
        module: String,
        fault: Fault,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CtlResponse {
    pub fn ok(result: serde_json::Value) -> CtlResponse {
        CtlResponse {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// The answer to `status`: the typed status as JSON.
    pub fn status(status: &ServerStatus) -> CtlResponse {
        // A struct of strings, numbers and options always serializes.
        CtlResponse::ok(serde_json::to_value(status).unwrap_or_default())
    }

    pub fn error(message: impl Into<String>) -> CtlResponse {
        CtlResponse {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }
}

/// Sends one request and waits up to `timeout` for the answer.
pub fn request(
    socket: &Path,
    request: &CtlRequest,
    timeout: Duration,
) -> anyhow::Result<CtlResponse> {
    use anyhow::Context as _;
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the control socket {} (is the server running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("no answer from the server")?;
    if answer.is_empty() {
        anyhow::bail!("the server closed the control connection without answering");
    }
    serde_json::from_str(&answer).context("the server's answer is not a control response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r: CtlRequest =
            serde_json::from_str(r#"{"cmd":"inject","module":"website","fault":"panic"}"#).unwrap();
        assert_eq!(
            r,
            CtlRequest::Inject {
                module: "website".into(),
                fault: Fault::Panic
            }
        );
        let r: CtlRequest =
            serde_json::from_str(r#"{"cmd":"inject","module":"website","fault":{"panic-init":3}}"#)
                .unwrap();
        assert!(matches!(
            r,
            CtlRequest::Inject {
                fault: Fault::PanicInit(3),
                ..
            }
        ));
        assert!(serde_json::from_str::<CtlRequest>(r#"{"cmd":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<CtlRequest>(r#"{"cmd":"format-disk"}"#).is_err());
    }
}
