//! Files the website serves: its own static assets (embedded in the binary, with cache
//! headers), files for workers under `[website] lib_dir` (`/lib/PATH`), and stored logs
//! inflated as a stream (`/log/TASK/NAME`).
//!
//! Paths from URLs are checked twice: lexically on the loop ([`safe_relative`]: no `..`, no
//! absolute path, no NUL or backslash, no empty or hidden segment), and on the responder thread
//! that opens the file ([`open_lib_file`]: the resolved path, symlinks followed, must stay
//! inside the canonical `lib_dir` and be a regular file).

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::read::DecoderReader;
use flate2::read::ZlibDecoder;

/// One embedded static file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every file served at `/static/NAME`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "site.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../static/site.css"),
    },
    Asset {
        name: "site.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../static/site.js"),
    },
];

/// How long browsers may keep a static file without asking again. The ETag lets them revalidate
/// cheaply after that (and a new binary has new hashes).
pub const STATIC_MAX_AGE: u32 = 3600;

pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The ETag of an embedded file: a quoted FNV-1a hash of its bytes. Stable for a given file,
/// different for a changed one, which is all a validator needs.
pub fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// Whether an `If-None-Match` header value matches `etag` (a list, or `*`).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// Why a path from a URL is refused before any file is touched.
#[derive(Debug, PartialEq, Eq)]
pub enum PathRefusal {
    /// Empty, absolute, a `..`/`.`/hidden segment, or a NUL or backslash: a request to leave
    /// the folder or to confuse the check. Answered 400.
    Unsafe,
}

/// Checks a URL path below a served folder (already percent-decoded): relative, plain segments
/// only. Returns it unchanged when safe.
pub fn safe_relative(path: &str) -> Result<&str, PathRefusal> {
    if path.is_empty() || path.starts_with('/') || path.contains(['\0', '\\']) {
        return Err(PathRefusal::Unsafe);
    }
    // A hidden segment (`.git`, `.htaccess`) is never meant for workers; `.` and `..` never
    // name a file below the folder.
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg.starts_with('.'))
    {
        return Err(PathRefusal::Unsafe);
    }
    Ok(path)
}

/// Opens `root/rel` for reading, refusing anything that resolves outside `root` (a symlink
/// pointing away) or is not a regular file. Runs on a responder thread. Returns the file and
/// its length.
pub fn open_lib_file(root: &Path, rel: &str) -> io::Result<(File, u64)> {
    let root = root.canonicalize()?;
    let full = root.join(rel).canonicalize()?;
    if !full.starts_with(&root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "resolves outside lib_dir",
        ));
    }
    let file = File::open(&full)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file"));
    }
    Ok((file, meta.len()))
}

/// A stored log (base64 of zlib bytes, or `""`) as a reader of its text: decoded and inflated
/// as it is read, so a 50 MB log never exists whole in memory. Base64 line breaks, which some
/// encoders write, are skipped. A log that does not decode ends the stream with an error
/// (the client sees a cut response, and the responder logs it).
pub fn log_reader(data: String) -> Box<dyn Read + Send> {
    if data.is_empty() {
        return Box::new(io::empty());
    }
    let clean = SkipWhitespace(Cursor::new(data.into_bytes()));
    Box::new(ZlibDecoder::new(DecoderReader::new(clean, &STANDARD)))
}

/// The length of a stored log's text, read through once without keeping any of it; an error
/// when it is not base64 of zlib (any task passkey can store one). Known before the first
/// byte is sent, it becomes the response's `Content-Length`, so a broken log is refused with
/// an answer instead of a response that cannot be finished.
pub fn log_length(data: &str) -> io::Result<u64> {
    if data.is_empty() {
        return Ok(0);
    }
    let clean = SkipWhitespace(Cursor::new(data.as_bytes()));
    let mut text = ZlibDecoder::new(DecoderReader::new(clean, &STANDARD));
    io::copy(&mut text, &mut io::sink())
}

/// A reader that drops ASCII whitespace (base64 may be wrapped into lines).
struct SkipWhitespace<R>(R);

impl<R: Read> Read for SkipWhitespace<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.0.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..n {
                if !buf[i].is_ascii_whitespace() {
                    buf[kept] = buf[i];
                    kept += 1;
                }
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::io::Write;

    #[test]
    fn paths_that_could_leave_the_folder_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a\0b",
            "a\\..\\b",
            ".git/config",
            "a/",
        ] {
            assert_eq!(safe_relative(bad), Err(PathRefusal::Unsafe), "{bad:?}");
        }
        assert_eq!(safe_relative("icetray/env.sh"), Ok("icetray/env.sh"));
        assert_eq!(safe_relative("v1.2/x.tar.gz"), Ok("v1.2/x.tar.gz"));
    }

    #[test]
    fn symlinks_out_of_the_folder_are_not_served() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "no").unwrap();
        std::fs::write(root.path().join("ok.txt"), "yes").unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        let (mut f, n) = open_lib_file(root.path(), "ok.txt").unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), n), ("yes", 3));
        assert!(open_lib_file(root.path(), "link").is_err());
        assert!(open_lib_file(root.path(), "sub").is_err());
        assert!(open_lib_file(root.path(), "missing").is_err());
    }

    #[test]
    fn etags_change_with_content_and_match_lists() {
        let a = etag(b"body { }");
        assert_ne!(a, etag(b"body {}"));
        assert!(etag_matches(&a, &a));
        assert!(etag_matches(&format!("\"x\", W/{a}"), &a));
        assert!(etag_matches("*", &a));
        assert!(!etag_matches("\"other\"", &a));
    }

    #[test]
    fn logs_inflate_as_a_stream_and_wrapped_base64_is_accepted() {
        let text = "line one\nline two <b>\n".repeat(1000);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(text.as_bytes()).unwrap();
        let b64 = STANDARD.encode(z.finish().unwrap());
        let wrapped: String = b64
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        for data in [b64, wrapped] {
            let mut out = String::new();
            log_reader(data).read_to_string(&mut out).unwrap();
            assert_eq!(out, text);
        }
        let mut out = Vec::new();
        log_reader(String::new()).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
        assert!(log_reader("not base64!".into())
            .read_to_end(&mut out)
            .is_err());
    }
}
