//! What the website answers: [`HttpReply`] (status, headers, body) and how a reply becomes
//! bytes on the wire (the response head; bodies that are bytes are appended, streamed bodies are
//! written by a stream thread, see `stream.rs`).

use std::fmt::Write as _;
use std::io::{Cursor, Read};
use std::path::PathBuf;

use crate::routes::Route;

/// A request method. The website serves GET, HEAD and POST; the others are named so a 405 can
/// say what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    /// Any other token the client sent.
    Other(String),
}

impl Method {
    pub(crate) fn parse(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }
}

/// A response to write: status, headers and a body (bytes, or a stream a stream thread opens).
#[derive(Debug)]
pub struct HttpReply {
    pub(crate) status: u16,
    pub(crate) content_type: Option<&'static str>,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Body,
}

/// What a reply's body is. The streamed kinds are opened by the stream thread that writes the
/// reply, so file and inflate IO never runs on the loop or the edge.
#[derive(Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    /// A file under `[website] lib_dir`: `rel` was checked lexically on the loop (see
    /// [`crate::files::safe_relative`]); the stream thread resolves symlinks and refuses a file
    /// outside `root`, a folder, or one it cannot open, with 404.
    LibFile {
        root: PathBuf,
        rel: String,
    },
    /// A stored log (base64 of zlib bytes): inflated as it is written, never whole in memory.
    Log(String),
}

impl Body {
    pub(crate) fn is_streamed(&self) -> bool {
        !matches!(self, Body::Bytes(_))
    }
}

impl HttpReply {
    /// A plain-text reply.
    pub fn text(status: u16, body: &str) -> HttpReply {
        HttpReply::with_type(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    /// 503 while the website stops or restarts: for `/jsonrpc` a JSON-RPC error (code
    /// -32000) that JSON-RPC clients can read, for any other path plain text; both with
    /// `Retry-After: 1`.
    pub fn unavailable(url: &str, why: &str) -> HttpReply {
        let reply = if Route::of(url) == Route::JsonRpc {
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "error": {"code": -32000, "message": why},
                "id": null,
            });
            HttpReply::json(503, body.to_string().into_bytes())
        } else {
            HttpReply::text(503, &format!("{why}\n"))
        };
        reply.header("Retry-After", "1".into())
    }

    /// A JSON reply; an empty body (notifications only) gets no content type.
    pub fn json(status: u16, body: Vec<u8>) -> HttpReply {
        HttpReply {
            status,
            content_type: (!body.is_empty()).then_some("application/json"),
            headers: Vec::new(),
            body: Body::Bytes(body),
        }
    }

    /// A reply with its own content type.
    pub fn with_type(status: u16, content_type: &'static str, body: Vec<u8>) -> HttpReply {
        HttpReply::streamed(status, content_type, Body::Bytes(body))
    }

    /// A reply whose body a stream thread produces.
    pub fn streamed(status: u16, content_type: &'static str, body: Body) -> HttpReply {
        HttpReply {
            status,
            content_type: Some(content_type),
            headers: Vec::new(),
            body,
        }
    }

    /// An HTML page.
    pub fn html(status: u16, page: String) -> HttpReply {
        HttpReply::with_type(status, "text/html; charset=utf-8", page.into_bytes())
    }

    /// 303 See Other to a local path (Post/Redirect/Get).
    pub fn see_other(location: &str) -> HttpReply {
        HttpReply::text(303, "see other\n").header("Location", location.to_string())
    }

    /// 405 with the `Allow` header listing the methods the route takes.
    pub fn method_not_allowed(allow: &'static str) -> HttpReply {
        HttpReply::text(405, "method not allowed\n").header("Allow", allow.to_string())
    }

    /// Adds a header (`Set-Cookie`, `Cache-Control`, …).
    pub fn header(mut self, name: &'static str, value: String) -> HttpReply {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The value of a header set on this reply (tests).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, when it is plain bytes.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Opens the body: bytes as they are, a streamed body by opening its file or decoding its
    /// log. A streamed body that cannot be opened becomes the error reply it deserves (404 for
    /// a lib file, 500 for a log that does not decode). Runs on a stream thread for streamed
    /// bodies.
    pub(crate) fn open(self) -> Opened {
        let HttpReply {
            status,
            content_type,
            headers,
            body,
        } = self;
        let (reader, length): (Box<dyn Read + Send>, u64) = match body {
            Body::Bytes(bytes) => {
                let n = bytes.len() as u64;
                (Box::new(Cursor::new(bytes)), n)
            }
            Body::LibFile { root, rel } => match crate::files::open_lib_file(&root, &rel) {
                Ok((file, n)) => (Box::new(file), n),
                Err(why) => {
                    log::debug!("website: /lib/{rel}: {why}");
                    return HttpReply::text(404, "not found\n").open();
                }
            },
            Body::Log(data) => match crate::files::log_length(&data) {
                Ok(n) => (crate::files::log_reader(data), n),
                Err(e) => {
                    log::warn!("website: a stored log does not decode: {e}");
                    let why = "the stored log cannot be read: it is not base64 of zlib data\n";
                    return HttpReply::text(500, why).open();
                }
            },
        };
        Opened {
            status,
            content_type,
            headers,
            reader,
            length,
        }
    }
}

impl HttpReply {
    /// Appends this reply, head and body, to `out`. For replies whose body is bytes; a
    /// streamed body is opened here too (stream threads do that for the website's own
    /// streamed replies, so this only happens for small error replies).
    pub(crate) fn write_bytes_reply(self, out: &mut Vec<u8>, close: bool, head_only: bool) {
        let HttpReply {
            status,
            content_type,
            headers,
            body,
        } = self;
        let bytes = match body {
            Body::Bytes(bytes) => bytes,
            streamed => {
                let reply = HttpReply {
                    status,
                    content_type,
                    headers,
                    body: streamed,
                };
                let mut opened = reply.open();
                out.extend_from_slice(&opened.head(close));
                if !head_only {
                    if let Err(e) = opened.reader.read_to_end(out) {
                        log::error!("website: reading a reply body: {e}");
                    }
                }
                return;
            }
        };
        let opened = Opened {
            status,
            content_type,
            headers,
            reader: Box::new(std::io::empty()),
            length: bytes.len() as u64,
        };
        out.extend_from_slice(&opened.head(close));
        if !head_only {
            out.extend_from_slice(&bytes);
        }
    }
}

/// A reply whose body is ready to be read out.
pub(crate) struct Opened {
    pub status: u16,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    pub reader: Box<dyn Read + Send>,
    pub length: u64,
}

impl Opened {
    /// The response head: status line, `Date`, content type and length, the reply's own
    /// headers, and `Connection: close` when the connection ends after this response. Header
    /// values with a CR or LF are dropped (logged), so no reply can split a response.
    pub fn head(&self, close: bool) -> Vec<u8> {
        let mut head = String::with_capacity(160);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nDate: {}\r\n",
            self.status,
            reason(self.status),
            http_date()
        );
        if let Some(t) = self.content_type {
            let _ = write!(head, "Content-Type: {t}\r\n");
        }
        // 1xx, 204 and 304 carry no body and no length (RFC 9110 §8.6).
        if !matches!(self.status, 100..=199 | 204 | 304) {
            let _ = write!(head, "Content-Length: {}\r\n", self.length);
        }
        for (name, value) in &self.headers {
            if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                log::error!("website: dropped header {name} with a line break: {value:?}");
                continue;
            }
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// The current time as an HTTP date (`Fri, 04 Dec 2026 18:39:02 GMT`).
fn http_date() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// The reason phrase of the statuses the website sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        303 => "See Other",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_carries_length_type_headers_and_close() {
        let reply = HttpReply::text(404, "gone\n").header("X-A", "b".into());
        let head = String::from_utf8(reply.open().head(true)).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 404 Not Found\r\nDate: "),
            "{head}"
        );
        for line in [
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Length: 5\r\n",
            "X-A: b\r\n",
            "Connection: close\r\n\r\n",
        ] {
            assert!(head.contains(line), "{line:?} in {head}");
        }
    }

    #[test]
    fn a_header_value_with_a_line_break_is_dropped_not_sent() {
        let reply = HttpReply::text(200, "x").header("Location", "/a\r\nSet-Cookie: x=1".into());
        let head = String::from_utf8(reply.open().head(false)).unwrap();
        assert!(!head.contains("Set-Cookie"), "{head}");
        assert!(!head.contains("Location"), "{head}");
    }

    #[test]
    fn not_modified_has_no_length() {
        let head = HttpReply::with_type(304, "text/css", Vec::new())
            .open()
            .head(false);
        assert!(!String::from_utf8(head).unwrap().contains("Content-Length"));
    }
}
