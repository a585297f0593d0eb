//! `hello-http PORT THREADS [MAX_SECONDS]`: the hello-world baseline for the load harness.
//!
//! A tiny_http 0.12 server on 127.0.0.1:PORT with THREADS threads, each looping `recv` → read
//! and discard the body → 200 with a fixed JSON-RPC body. It does nothing else, so it measures
//! what tiny_http and the machine can do; the iceprod figures are reported as a ratio to it.
//! It exits by itself after MAX_SECONDS (default 3600), so a lost baseline never runs forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::{Header, Response, Server};

const BODY: &str = r#"{"jsonrpc":"2.0","result":"hi","id":1}"#;
/// How often a thread checks whether its lifetime is over while no request comes.
const RECV_SLICE: Duration = Duration::from_millis(500);

fn main() {
    if let Err(message) = run() {
        eprintln!("hello-http: {message}");
        eprintln!("usage: hello-http PORT THREADS [MAX_SECONDS]");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = parse_arg(&args, 0, "PORT")?;
    let threads: usize = parse_arg(&args, 1, "THREADS")?;
    let max_seconds: u64 = match args.get(2) {
        Some(_) => parse_arg(&args, 2, "MAX_SECONDS")?,
        None => 3600,
    };
    if threads == 0 || threads > 256 {
        return Err(format!("THREADS must be 1..=256, not {threads}"));
    }
    let server = Server::http(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let server = Arc::new(server);
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let server = server.clone();
            std::thread::Builder::new()
                .name(format!("hello-{i}"))
                .spawn(move || serve(&server, deadline))
                .map_err(|e| format!("cannot start thread {i}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    for handle in handles {
        if handle.join().is_err() {
            return Err("a server thread panicked".into());
        }
    }
    Ok(())
}

fn parse_arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> Result<T, String> {
    let raw = args.get(i).ok_or_else(|| format!("missing {name}"))?;
    raw.parse()
        .map_err(|_| format!("{name} must be a number, not {raw:?}"))
}

/// Answers requests until `deadline`.
fn serve(server: &Server, deadline: Instant) {
    let content_type = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("a constant ASCII header is valid");
    let mut sink = Vec::with_capacity(256);
    while Instant::now() < deadline {
        let mut request = match server.recv_timeout(RECV_SLICE) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("hello-http: receiving a request failed: {e}");
                // Do not spin if the listener keeps failing (for example, out of descriptors).
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Read the whole body, as a JSON-RPC server must before it can answer.
        sink.clear();
        if let Err(e) = request.as_reader().read_to_end(&mut sink) {
            eprintln!("hello-http: reading a request body failed: {e}");
            continue;
        }
        let response = Response::from_string(BODY).with_header(content_type.clone());
        if let Err(e) = request.respond(response) {
            eprintln!("hello-http: writing a response failed: {e}");
        }
    }
}
