//! An incremental decoder of `Transfer-Encoding: chunked` request bodies, fed whatever bytes
//! have arrived; it never reads past the body's end, so a pipelined request after it is kept.

use std::fmt;

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// Reading chunk data; this many bytes are left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines until an empty one.
    Trailer,
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The decoded body would be larger than the limit.
    TooLarge,
    /// The encoding is broken; says what was wrong.
    Malformed(&'static str),
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::TooLarge => f.write_str("chunked body larger than the limit"),
            ChunkError::Malformed(why) => write!(f, "broken chunked encoding: {why}"),
        }
    }
}

/// The decoder's state between reads.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    limit: u64,
}

impl Chunked {
    pub fn new(limit: u64) -> Chunked {
        Chunked {
            state: State::Size,
            limit,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes what it can of `input` into `body`; returns how many bytes of `input` it used.
    /// An incomplete line is left unused: call again with it and more bytes.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Done => return Ok(used),
                State::Size => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(used);
                    };
                    used += line.len() + 2;
                    let size = parse_size(line)?;
                    if body.len() as u64 + size > self.limit {
                        return Err(ChunkError::TooLarge);
                    }
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    body.extend_from_slice(&rest[..n]);
                    used += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(used);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
                    }
                    used += 2;
                    self.state = State::Size;
                }
                State::Trailer => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(used);
                    };
                    used += line.len() + 2;
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
            }
        }
    }
}

/// The line at the start of `input` without its CRLF, if the CRLF has arrived.
fn take_line(input: &[u8]) -> Result<Option<&[u8]>, ChunkError> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= MAX_LINE => Ok(Some(&input[..end])),
        Some(_) => Err(ChunkError::Malformed("line too long")),
        None if input.len() > MAX_LINE => Err(ChunkError::Malformed("line too long")),
        None => Ok(None),
    }
}

/// A chunk size: hex digits, optionally followed by `;extensions` (ignored).
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(ChunkError::Malformed("chunk size is not a hex number"));
    }
    // At most 15 hex digits: fits in u64.
    let text = std::str::from_utf8(digits).map_err(|_| ChunkError::Malformed("chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| ChunkError::Malformed("chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(
        input: &[u8],
        piece: usize,
        limit: u64,
    ) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = Chunked::new(limit);
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut consumed = 0;
        for part in input.chunks(piece) {
            pending.extend_from_slice(part);
            let n = d.feed(&pending, &mut body)?;
            consumed += n;
            pending.drain(..n);
            if d.is_done() {
                break;
            }
        }
        assert!(d.is_done(), "not done after {consumed} bytes");
        Ok((body, consumed))
    }

    #[test]
    fn decodes_a_body_fed_one_byte_at_a_time_and_stops_at_its_end() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n";
        for piece in [1, 2, 3, 7, 100] {
            let (body, used) = decode_in_pieces(wire, piece, 100).unwrap();
            assert_eq!(body, b"hello world");
            assert_eq!(&wire[used..], b"GET / HTTP/1.1\r\n", "piece {piece}");
        }
    }

    #[test]
    fn refuses_bodies_over_the_limit_before_reading_them() {
        let mut d = Chunked::new(10);
        let err = d.feed(b"ffffffffffffff\r\n", &mut Vec::new()).unwrap_err();
        assert_eq!(err, ChunkError::TooLarge);
    }

    #[test]
    fn refuses_broken_encodings() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            let mut d = Chunked::new(1 << 40);
            assert!(
                matches!(d.feed(wire, &mut Vec::new()), Err(ChunkError::Malformed(_))),
                "{wire:?}"
            );
        }
        let mut d = Chunked::new(100);
        let long = vec![b'1'; MAX_LINE + 10];
        assert!(d.feed(&long, &mut Vec::new()).is_err());
    }
}
