//! One client connection as the edge sees it: the bytes read and not yet used, the response
//! bytes not yet written, where the connection is in its request (see [`Phase`]), and its
//! deadline. The edge thread (`server.rs`) drives it; nothing here blocks.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use super::chunked::Chunked;
use super::reply::Method;

/// Largest request head (request line and headers) accepted; larger gets 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// How much one read takes at most.
const READ_CHUNK: usize = 16 * 1024;

/// Where a connection is in its current request.
pub enum Phase {
    /// Waiting for a request head (or the rest of one).
    Head,
    /// The head is in; the body is arriving.
    Body(Box<Incoming>),
    /// The whole request is with the website's loop; nothing is read until it is answered.
    Waiting { keep_alive: bool, head_only: bool },
    /// A response is being written; then the connection closes, or serves its next request.
    Writing { close: bool },
    /// A stream thread owns the socket while it writes a streamed body.
    Streaming,
    /// A refusal was written and our side shut down: what the client still sends is read and
    /// thrown away until it closes or the deadline comes, so it reads the refusal instead of a
    /// reset (closing with unread data makes the kernel send RST).
    Lingering,
}

/// A request whose head has arrived.
pub struct Incoming {
    pub head: Head,
    pub body: Vec<u8>,
    pub framing: Framing,
}

/// How the body's end is known.
pub enum Framing {
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
}

/// A parsed request head.
pub struct Head {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Why a head was refused, with the status it is answered with.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub why: String,
    /// The request target, when the request line could be read (metrics count by route).
    pub url: Option<String>,
}

impl Refusal {
    fn new(status: u16, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
            url: None,
        }
    }
}

/// What a read brought.
pub enum ReadOutcome {
    /// Bytes were appended to `inbuf` (or the read was interrupted: try again).
    Data,
    /// Nothing more for now.
    WouldBlock,
    /// The client closed its side (or the connection broke).
    Closed,
}

/// One client connection.
pub struct Conn {
    /// `None` while a stream thread owns the socket.
    pub socket: Option<TcpStream>,
    pub peer: SocketAddr,
    /// Bytes read and not used yet (a head arriving, a pipelined next request).
    pub inbuf: Vec<u8>,
    /// Bytes to write, from `out_pos` on.
    pub out: Vec<u8>,
    pub out_pos: usize,
    pub phase: Phase,
    /// When the current phase times out.
    pub deadline: Instant,
    /// Counted in the website's in-flight requests (head in, answer not yet written).
    pub in_flight: bool,
    /// Bytes thrown away while lingering.
    pub discarded: usize,
}

impl Conn {
    pub fn new(socket: TcpStream, peer: SocketAddr, deadline: Instant) -> Conn {
        Conn {
            socket: Some(socket),
            peer,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            phase: Phase::Head,
            deadline,
            in_flight: false,
            discarded: 0,
        }
    }

    /// Reads once into `inbuf` (at most [`READ_CHUNK`] bytes).
    pub fn read_some(&mut self) -> ReadOutcome {
        let Some(socket) = self.socket.as_mut() else {
            return ReadOutcome::WouldBlock;
        };
        let start = self.inbuf.len();
        self.inbuf.resize(start + READ_CHUNK, 0);
        let result = socket.read(&mut self.inbuf[start..]);
        match result {
            Ok(0) => {
                self.inbuf.truncate(start);
                ReadOutcome::Closed
            }
            Ok(n) => {
                self.inbuf.truncate(start + n);
                ReadOutcome::Data
            }
            Err(e) => {
                self.inbuf.truncate(start);
                match e.kind() {
                    io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
                    io::ErrorKind::Interrupted => ReadOutcome::Data,
                    _ => ReadOutcome::Closed,
                }
            }
        }
    }

    /// Writes what it can of `out`; `Ok(true)` once all of it is written.
    pub fn flush(&mut self) -> io::Result<bool> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(false);
        };
        while self.out_pos < self.out.len() {
            match socket.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// Whether response bytes are waiting to be written.
    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete, else the head and
/// its length in bytes. `body_limit` decides 413 for an announced length over it.
pub fn parse_head(buf: &[u8], body_limit: u64) -> Result<Option<(Head, usize, Framing)>, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let used = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Refusal::new(431, "request head larger than 16 KiB"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed request head: {e}"))),
    };
    if used > MAX_HEAD {
        return Err(Refusal::new(431, "request head larger than 16 KiB"));
    }
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Err(Refusal::new(400, "malformed request line"));
    };
    let mut headers = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(Refusal::new(
                400,
                format!("header {} is not valid UTF-8", h.name),
            ));
        };
        headers.push((h.name.to_string(), value.trim().to_string()));
    }
    let has_token = |name: &str, token: &str| {
        named(&headers, name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let keep_alive = if version >= 1 {
        !has_token("Connection", "close")
    } else {
        has_token("Connection", "keep-alive")
    };
    let expect_continue = version >= 1 && has_token("Expect", "100-continue");
    let encodings: Vec<&str> = named(&headers, "Transfer-Encoding").collect();
    let framing =
        framing(&encodings, named(&headers, "Content-Length"), body_limit).map_err(|r| {
            Refusal {
                url: Some(path.to_string()),
                ..r
            }
        })?;
    let head = Head {
        method: Method::parse(method),
        url: path.to_string(),
        headers,
        keep_alive,
        expect_continue,
    };
    Ok(Some((head, used, framing)))
}

/// The values of the headers called `name` (case-insensitive).
fn named<'a>(headers: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How the body is framed. Both `Transfer-Encoding` and `Content-Length`, differing lengths,
/// or a coding other than chunked are refused: a request a proxy in front could read
/// differently is a smuggling risk.
fn framing<'a>(
    encodings: &[&str],
    mut lengths: impl Iterator<Item = &'a str>,
    limit: u64,
) -> Result<Framing, Refusal> {
    let first = lengths.next();
    if !encodings.is_empty() {
        if first.is_some() {
            return Err(Refusal::new(
                400,
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let codings: Vec<&str> = encodings
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(Refusal::new(
                501,
                "the only Transfer-Encoding taken is chunked",
            ));
        }
        return Ok(Framing::Chunked(Chunked::new(limit)));
    }
    let Some(first) = first else {
        return Ok(Framing::Length(0));
    };
    let parse = |v: &str| {
        (!v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten()
    };
    let Some(n) = parse(first) else {
        return Err(Refusal::new(
            400,
            format!("Content-Length {first:?} is not a number"),
        ));
    };
    if lengths.any(|other| parse(other) != Some(n)) {
        return Err(Refusal::new(
            400,
            "Content-Length sent twice with different values",
        ));
    }
    if n > limit {
        return Err(Refusal::new(
            413,
            format!("request body of {n} bytes is over the limit of {limit} bytes"),
        ));
    }
    Ok(Framing::Length(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<(Head, usize, Framing)>, Refusal> {
        parse_head(text.as_bytes(), 1000)
    }

    #[test]
    fn parses_a_post_with_its_length_and_keeps_the_rest() {
        let text = "POST /jsonrpc?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n{}";
        let (head, used, framing) = parse(text).unwrap().unwrap();
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.url, "/jsonrpc?x=1");
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&text[used..], "{}");
        assert!(matches!(framing, Framing::Length(12)));
    }

    #[test]
    fn an_incomplete_head_waits_and_an_oversized_one_is_431() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&huge).err().map(|r| r.status), Some(431));
        let many: String = (0..70).map(|i| format!("X{i}: a\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(&text).err().map(|r| r.status), Some(431));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let ka = |t: &str| parse(t).unwrap().unwrap().0.keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn ambiguous_or_oversized_framing_is_refused() {
        let status = |t: &str| parse(t).err().map(|r| r.status);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 2147483648\r\n\r\n"),
            Some(413)
        );
        assert_eq!(status("G\x01T / HTTP/1.1\r\n\r\n"), Some(400));
        // Same length twice is fine.
        assert!(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").is_ok());
    }

    #[test]
    fn a_header_that_is_not_utf8_is_refused() {
        let r = parse_head(b"GET / HTTP/1.1\r\nX-A: \xff\xfe\r\n\r\n", 10).err();
        assert_eq!(r.map(|r| r.status), Some(400));
    }
}
