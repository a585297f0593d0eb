//! The control socket's server side: a Unix listener and its connections on the controller's
//! loop. Each line a client writes is one request; each answer is one line. Garbage gets an
//! error answer; an over-long line gets an error and the connection is closed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::control::{CtlRequest, CtlResponse, MAX_REQUEST};

/// Binds the control socket, replacing a stale socket file but never a live server's.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the folder of {}", path.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another server is answering on the control socket {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    // Control is for the server's owner and group only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

struct Connection {
    stream: UnixStream,
    read: Vec<u8>,
    write: Vec<u8>,
    /// Close once the pending answer is written: the write side is shut first and what the
    /// client still sends is read and dropped until it closes, because closing a socket with
    /// unread input resets it and the client would lose the answer.
    closing: bool,
    /// An answer was queued since the connection started closing.
    answered: bool,
}

pub struct Connections {
    conns: HashMap<Token, Connection>,
    next: usize,
}

impl Connections {
    pub fn new(first_token: usize) -> Connections {
        Connections {
            conns: HashMap::new(),
            next: first_token,
        }
    }

    pub fn add(&mut self, registry: &Registry, mut stream: UnixStream) -> io::Result<()> {
        let token = Token(self.next);
        self.next += 1;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        self.conns.insert(
            token,
            Connection {
                stream,
                read: Vec::new(),
                write: Vec::new(),
                closing: false,
                answered: false,
            },
        );
        Ok(())
    }

    /// Reads what arrived; returns the complete requests (or why a line is not one).
    pub fn on_event(
        &mut self,
        registry: &Registry,
        token: Token,
        event: &mio::event::Event,
    ) -> Vec<Result<CtlRequest, String>> {
        let mut requests = Vec::new();
        let Some(conn) = self.conns.get_mut(&token) else {
            return requests;
        };
        let mut eof = false;
        if event.is_readable() {
            let mut buf = [0u8; 4096];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) if conn.closing => {}
                    Ok(n) => conn.read.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            while let Some(end) = conn.read.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = conn.read.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if line.trim().is_empty() {
                    continue;
                }
                requests.push(
                    serde_json::from_str::<CtlRequest>(line.trim())
                        .map_err(|e| format!("bad control request: {e}")),
                );
            }
            if conn.read.len() > MAX_REQUEST {
                conn.read.clear();
                conn.closing = true;
                conn.answered = false;
                requests.push(Err(format!(
                    "control request longer than {MAX_REQUEST} bytes"
                )));
            }
        }
        if eof && (conn.closing || (requests.is_empty() && conn.write.is_empty())) {
            self.close(registry, token);
            return requests;
        }
        if event.is_writable() {
            self.flush(registry, token);
        }
        requests
    }

    /// Queues `answer` for the connection and writes what the socket takes now.
    pub fn respond(&mut self, registry: &Registry, token: Token, answer: &CtlResponse) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        // Serialising our own response type cannot fail.
        let mut line = serde_json::to_vec(answer).unwrap_or_default();
        line.push(b'\n');
        conn.write.extend_from_slice(&line);
        conn.answered = true;
        self.flush(registry, token);
    }

    fn write_some(conn: &mut Connection) -> bool {
        while !conn.write.is_empty() {
            match conn.stream.write(&conn.write) {
                Ok(0) => return false,
                Ok(n) => {
                    conn.write.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }

    fn flush(&mut self, registry: &Registry, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if !Self::write_some(conn) {
            self.close(registry, token);
        } else if conn.closing && conn.answered && conn.write.is_empty() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}
