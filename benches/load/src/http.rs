//! A minimal HTTP/1.1 client over a std `TcpStream`, written by hand so the harness sees every
//! byte and every failure: one keep-alive connection, one request at a time, responses framed
//! by `Content-Length`, chunked encoding or end of stream.
//!
//! It owns the echo request the harness sends and the check of its answer. It must only ever
//! connect to 127.0.0.1.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The JSON-RPC request every load run sends.
pub const ECHO_REQUEST: &str = r#"{"jsonrpc":"2.0","method":"echo","params":{"value":"x"},"id":1}"#;
/// Largest response head or body the client accepts, so a broken server cannot exhaust memory.
const MAX_RESPONSE: usize = 16 << 20;

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server said it will close the connection after this response.
    pub close: bool,
    /// The `name=value` of a `Set-Cookie` header, if there was one (the website's session).
    pub set_cookie: Option<String>,
}

impl Response {
    /// Whether this is iceprod's answer to [`ECHO_REQUEST`]: HTTP 200 and
    /// `{"jsonrpc":"2.0","result":"x","id":1}` (compared as JSON, so key order does not matter).
    pub fn is_echo_reply(&self) -> bool {
        if self.status != 200 {
            return false;
        }
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => v["jsonrpc"] == "2.0" && v["result"] == "x" && v["id"] == 1,
            Err(_) => false,
        }
    }
}

/// One keep-alive connection to 127.0.0.1.
pub struct Connection {
    stream: TcpStream,
    port: u16,
    /// Bytes read past the end of the previous response.
    pending: Vec<u8>,
    /// Ask the kernel to acknowledge at once before every read (see [`Connection::set_quickack`]).
    quickack: bool,
    /// Sent as `Cookie` with every request once set (a logged-in website session).
    cookie: Option<String>,
}

impl Connection {
    /// Connects within `timeout`; every later read and write also times out after `timeout`.
    pub fn connect(port: u16, timeout: Duration) -> io::Result<Connection> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            port,
            pending: Vec::new(),
            quickack: false,
            cookie: None,
        })
    }

    /// `POST /jsonrpc` with [`ECHO_REQUEST`].
    pub fn post_echo(&mut self) -> io::Result<Response> {
        self.send("POST", "/jsonrpc", ECHO_REQUEST.as_bytes())
    }

    /// `POST /jsonrpc` with a JSON-RPC request `body` (the database figures).
    pub fn post_jsonrpc(&mut self, body: &str) -> io::Result<Response> {
        self.send("POST", "/jsonrpc", body.as_bytes())
    }

    /// With `on`, sets Linux's `TCP_QUICKACK` before every read, so this client acknowledges
    /// each segment at once instead of delaying the ACK (up to 40 ms). A server that writes a
    /// response in two segments without `TCP_NODELAY` holds the second one until that ACK
    /// (Nagle); quick ACKs show what such a server would do without the stall.
    pub fn set_quickack(&mut self, on: bool) {
        self.quickack = on;
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.send("GET", path, b"")
    }

    /// `POST path` with an urlencoded form, as a browser submits one.
    pub fn post_form(&mut self, path: &str, form: &str) -> io::Result<Response> {
        self.send_typed(
            "POST",
            path,
            form.as_bytes(),
            "application/x-www-form-urlencoded",
        )
    }

    /// Sends `Cookie: COOKIE` with every later request.
    pub fn set_cookie(&mut self, cookie: String) {
        self.cookie = Some(cookie);
    }

    fn send(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
        self.send_typed(method, path, body, "application/json")
    }

    fn send_typed(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        content_type: &str,
    ) -> io::Result<Response> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: keep-alive\r\n",
            self.port
        );
        if !body.is_empty() {
            request.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if let Some(cookie) = &self.cookie {
            request.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        self.read_response()
    }

    fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(at) = find(&self.pending, b"\r\n\r\n") {
                break at + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.pending[..head_end])
            .map_err(|_| invalid("the response head is not UTF-8"))?;
        let head = parse_head(head)?;
        self.pending.drain(..head_end);
        let body = match head.framing {
            Framing::Length(n) => self.take_exact(n)?,
            Framing::Chunked => self.take_chunked()?,
            Framing::UntilClose => self.take_until_close()?,
        };
        Ok(Response {
            status: head.status,
            body,
            close: head.close,
            set_cookie: head.set_cookie,
        })
    }

    /// Reads more bytes into `pending`; the end of the stream is an error here.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pending.len() > MAX_RESPONSE {
            return Err(invalid("the response is larger than 16 MiB"));
        }
        let mut buf = [0u8; 8192];
        if self.quickack {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: setsockopt(2) on our own open socket with a pointer to a live c_int and
            // its size; it has no other preconditions.
            let rc = unsafe {
                libc::setsockopt(
                    self.stream.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    std::ptr::addr_of!(one).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let n = self.stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn take_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        if n > MAX_RESPONSE {
            return Err(invalid("the response is larger than 16 MiB"));
        }
        while self.pending.len() < n {
            self.fill()?;
        }
        Ok(self.pending.drain(..n).collect())
    }

    fn take_line(&mut self) -> io::Result<String> {
        let end = loop {
            if let Some(at) = find(&self.pending, b"\r\n") {
                break at;
            }
            self.fill()?;
        };
        let line = String::from_utf8_lossy(&self.pending[..end]).into_owned();
        self.pending.drain(..end + 2);
        Ok(line)
    }

    fn take_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        // Bounded by MAX_RESPONSE: every chunk adds at least one byte or ends the body.
        loop {
            let line = self.take_line()?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| invalid("a chunk size is not hexadecimal"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.take_line()?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_RESPONSE {
                return Err(invalid("the response is larger than 16 MiB"));
            }
            body.extend(self.take_exact(size)?);
            self.take_line()?;
        }
    }

    fn take_until_close(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(std::mem::take(&mut self.pending))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    close: bool,
    set_cookie: Option<String>,
}

fn parse_head(head: &str) -> io::Result<Head> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(invalid("the response does not start with HTTP/1.x"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("the response has no status code"))?;
    let mut framing = Framing::UntilClose;
    let mut close = version == "HTTP/1.0";
    let mut set_cookie = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| invalid("Content-Length is not a number"))?;
            framing = Framing::Length(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            close = value.contains("close") || (close && !value.contains("keep-alive"));
        } else if name.eq_ignore_ascii_case("set-cookie") {
            set_cookie = value.split(';').next().map(|c| c.trim().to_string());
        }
    }
    // 1xx, 204 and 304 have no body whatever the headers say.
    if (100..200).contains(&status) || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Head {
        status,
        framing,
        close,
        set_cookie,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// Whether an I/O error is a timeout (std reports either kind, depending on the call).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
