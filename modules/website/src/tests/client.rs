//! A minimal blocking HTTP/1.1 client for the module tests: raw requests over a `TcpStream`,
//! keep-alive, responses with `Content-Length` (the website never sends chunked ones).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// Longest a test waits on a socket; a safety net so a broken server fails the test instead of
/// hanging it, never an assertion about timing.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("the website accepts");
        stream.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("the website reads");
        self.writer.flush().unwrap();
    }

    /// Sends a request with a `Content-Length` body and reads the response.
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.send_raw(head.as_bytes());
        self.send_raw(body);
        self.read_response()
    }

    pub fn post_json(&mut self, body: &Value) -> HttpResponse {
        self.request("POST", "/jsonrpc", body.to_string().as_bytes())
    }

    /// Reads one response. Without `Content-Length` the body is left unread.
    pub fn read_response(&mut self) -> HttpResponse {
        let mut response = self.read_head();
        if let Some(len) = response.header("Content-Length") {
            let mut body = vec![0; len.parse().expect("a numeric length")];
            self.reader.read_exact(&mut body).expect("the whole body");
            response.body = body;
        }
        response
    }

    /// Reads the status line and headers of a response that has no body (HEAD).
    pub fn read_response_head(&mut self) -> u16 {
        self.read_head().status
    }

    fn read_head(&mut self) -> HttpResponse {
        let status_line = self.line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        assert!(
            response.header("Transfer-Encoding").is_none(),
            "the website sends lengths, not chunks"
        );
        response
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a response line");
        assert!(
            line.ends_with("\r\n"),
            "connection closed mid-response: {line:?}"
        );
        line.truncate(line.len() - 2);
        line
    }
}

/// One request on a fresh connection.
pub fn get(port: u16, path: &str) -> HttpResponse {
    Client::connect(port).request("GET", path, b"")
}
