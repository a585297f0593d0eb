//! The website crate's one error enum: why the HTTP side could not start. (A request the edge
//! refuses is answered on the wire: 400, 408, 413, 431.)
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
    /// The edge or a stream thread could not be started.
    Spawn { thread: String, source: io::Error },
}

impl fmt::Display for WebsiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebsiteError::Bind { addr, source } => write!(f, "binding {addr}: {source}"),
            WebsiteError::Spawn { thread, source } => {
                write!(f, "starting thread {thread}: {source}")
            }
        }
    }
}

impl std::error::Error for WebsiteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WebsiteError::Bind { source, .. } | WebsiteError::Spawn { source, .. } => Some(source),
        }
    }
}

impl From<WebsiteError> for ModuleError {
    fn from(e: WebsiteError) -> ModuleError {
        match e {
            WebsiteError::Bind { addr, source } => {
                ModuleError::io(format!("binding {addr}"), source)
            }
            WebsiteError::Spawn { thread, source } => {
                ModuleError::io(format!("starting thread {thread}"), source)
            }
        }
    }
}
