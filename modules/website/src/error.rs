//! The website crate's one error enum: why the HTTP side could not start, and why a request
//! body was refused.
//!
//! JSON-RPC errors are not here: they are wire values a client receives (see
//! [`crate::jsonrpc::RpcError`]), not failures of this crate.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use iceprod_runtime::ModuleError;

#[derive(Debug)]
pub enum WebsiteError {
    /// The listening socket could not be opened (`binding 127.0.0.1:8080: address in use`).
    Bind { addr: SocketAddr, source: io::Error },
    /// A pump or responder thread could not be started.
    Spawn { thread: String, source: io::Error },
    /// The request body is larger than `[website] body_limit`.
    BodyTooLarge { limit: u64 },
    /// The client closed the connection before sending the body it announced.
    BodyIncomplete { announced: usize, received: usize },
    /// Reading the body failed (a broken chunked encoding, a reset connection).
    BodyUnreadable(io::Error),
}

impl fmt::Display for WebsiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebsiteError::Bind { addr, source } => write!(f, "binding {addr}: {source}"),
            WebsiteError::Spawn { thread, source } => {
                write!(f, "starting thread {thread}: {source}")
            }
            WebsiteError::BodyTooLarge { limit } => {
                write!(f, "request body larger than the limit of {limit} bytes")
            }
            WebsiteError::BodyIncomplete {
                announced,
                received,
            } => write!(
                f,
                "request body incomplete: {received} of {announced} announced bytes"
            ),
            WebsiteError::BodyUnreadable(e) => write!(f, "cannot read the request body: {e}"),
        }
    }
}

impl std::error::Error for WebsiteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WebsiteError::Bind { source, .. } | WebsiteError::Spawn { source, .. } => Some(source),
            WebsiteError::BodyUnreadable(e) => Some(e),
            WebsiteError::BodyTooLarge { .. } | WebsiteError::BodyIncomplete { .. } => None,
        }
    }
}

impl From<WebsiteError> for ModuleError {
    /// Only start-up errors reach the runtime; body errors are answered by the pump that met
    /// them, so their arm exists for completeness.
    fn from(e: WebsiteError) -> ModuleError {
        match e {
            WebsiteError::Bind { addr, source } => {
                ModuleError::io(format!("binding {addr}"), source)
            }
            WebsiteError::Spawn { thread, source } => {
                ModuleError::io(format!("starting thread {thread}"), source)
            }
            other => ModuleError::io("serving HTTP", io::Error::other(other.to_string())),
        }
    }
}
