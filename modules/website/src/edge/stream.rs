//! Stream threads (`iceprod-web-stream-N`): they write replies whose body is streamed (`/log`,
//! `/lib`), on a blocking socket with a write timeout, so a long download never delays the
//! edge or the pages. The edge hands a connection over with its reply and gets the socket back
//! when the body is written (or nothing, when the connection ends).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::Receiver;
use iceprod_runtime::WorkerCx;

use super::reply::HttpReply;
use super::{Cmd, EdgeHandle};

/// A streamed reply to write on a connection the edge handed over.
pub struct StreamJob {
    pub conn: u64,
    pub socket: TcpStream,
    pub reply: HttpReply,
    /// `Connection: close`: the connection ends after this reply.
    pub close: bool,
    /// A HEAD request: the head only.
    pub head_only: bool,
    /// Longest wait for the client to take more bytes.
    pub write_timeout: Duration,
}

pub fn stream_loop(jobs: Receiver<StreamJob>, edge: EdgeHandle, worker: &WorkerCx) {
    for job in jobs {
        worker.checkpoint();
        let conn = job.conn;
        let close = job.close;
        let socket = match write(job) {
            Ok(socket) if !close => Some(socket),
            Ok(socket) => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
                None
            }
            Err(e) => {
                log::debug!("website: streaming a reply: {e}");
                None
            }
        };
        edge.send(Cmd::StreamDone { conn, socket });
    }
}

fn write(job: StreamJob) -> io::Result<TcpStream> {
    let StreamJob {
        mut socket,
        reply,
        close,
        head_only,
        write_timeout,
        ..
    } = job;
    socket.set_nonblocking(false)?;
    socket.set_write_timeout(Some(write_timeout))?;
    let opened = reply.open();
    let head = opened.head(close);
    let length = opened.length;
    let mut out = io::BufWriter::with_capacity(64 * 1024, &mut socket);
    out.write_all(&head)?;
    if !head_only {
        let copied = io::copy(&mut opened.reader.take(length), &mut out)?;
        if copied != length {
            // The client was promised `length` bytes: only closing tells it the body broke.
            return Err(io::Error::other(format!(
                "the body ended after {copied} of {length} bytes"
            )));
        }
    }
    out.flush()?;
    drop(out);
    Ok(socket)
}
