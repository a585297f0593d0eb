//! What a task tells the server at its end: the log payloads of `upload_logfile` (the last
//! [`LOG_TAIL`] bytes of a file, zlib-compressed and base64-encoded, with a first line saying
//! what was cut), and the `stats` / `error_info` objects of `finish_task` / `task_error`.
//! This file must not call the server.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

/// Most bytes of one log that are uploaded. The server refuses request bodies over 10 MiB by
/// default, and base64 adds a third: 6 MiB of output that does not compress still fits.
pub const LOG_TAIL: u64 = 6 << 20;

/// The logs uploaded, in the order an IceProd 2.3 worker sends them.
pub const LOG_NAMES: [&str; 3] = ["stdlog", "stderr", "stdout"];

/// `data` for `upload_logfile`: base64 of the zlib-compressed tail of `path` (at most `tail`
/// bytes), `""` for an empty or missing file.
pub fn log_payload(path: &Path, tail: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        return String::new();
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    if size > tail {
        let note = format!(
            "[iceprod: log truncated: the first {} of {size} bytes are not uploaded]\n",
            size - tail
        );
        let _ = encoder.write_all(note.as_bytes());
        let _ = file.seek(SeekFrom::Start(size - tail));
    }
    let _ = std::io::copy(&mut file.take(tail), &mut encoder);
    let compressed = encoder.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(compressed)
}

/// This machine's name and its DNS domain (what follows the first dot, else `""`).
pub fn host_and_domain() -> (String, String) {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let host = if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let domain = host
        .split_once('.')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    (host, domain)
}

/// What the task's modules used, summed over every module run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// The largest peak resident set of any module, in KiB.
    pub max_rss_kib: i64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.cpu_seconds += other.cpu_seconds;
        self.max_rss_kib = self.max_rss_kib.max(other.max_rss_kib);
    }
}

/// The `resources` object: cores used on average, memory and disk in GB, time in hours.
pub fn resources(usage: Usage, walltime: Duration, disk_bytes: u64) -> Value {
    let secs = walltime.as_secs_f64();
    let round = |x: f64, digits: i32| {
        let f = 10f64.powi(digits);
        (x * f).round() / f
    };
    let cpu = if secs > 0.0 {
        usage.cpu_seconds / secs
    } else {
        0.0
    };
    json!({
        "cpu": round(cpu, 2),
        "memory": round(usage.max_rss_kib as f64 / (1024.0 * 1024.0), 6),
        "disk": round(disk_bytes as f64 / 1e9, 6),
        "time": round(secs / 3600.0, 6),
    })
}

/// `stats` for `finish_task`, or with `error_summary` the `error_info` of `task_error`.
pub fn stats(usage: Usage, walltime: Duration, disk_bytes: u64, error: Option<&str>) -> Value {
    let (hostname, domain) = host_and_domain();
    let mut v = json!({
        "hostname": hostname,
        "domain": domain,
        "time_used": (walltime.as_secs_f64() * 1000.0).round() / 1000.0,
        "task_stats": {},
        "resources": resources(usage, walltime, disk_bytes),
    });
    if let Some(summary) = error {
        v["error_summary"] = Value::String(summary.to_string());
    }
    v
}

/// Bytes of the files under `folder` (symbolic links not followed).
pub fn disk_usage(folder: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(data: &str) -> String {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        let mut text = String::new();
        flate2::read::ZlibDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_small_log_is_uploaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, "hello\n").unwrap();
        assert_eq!(decode(&log_payload(&path, LOG_TAIL)), "hello\n");
        assert_eq!(log_payload(&dir.path().join("none"), LOG_TAIL), "");
    }

    #[test]
    fn a_long_log_keeps_its_tail_and_says_what_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(
            decode(&log_payload(&path, 4)),
            "[iceprod: log truncated: the first 6 of 10 bytes are not uploaded]\n6789"
        );
    }

    #[test]
    fn error_info_carries_the_summary_and_resources_in_gb_and_hours() {
        let usage = Usage {
            cpu_seconds: 1.0,
            max_rss_kib: 1024 * 1024,
        };
        let v = stats(
            usage,
            Duration::from_secs(2),
            2_000_000_000,
            Some("module a exited with 3"),
        );
        assert_eq!(v["error_summary"], "module a exited with 3");
        assert_eq!(v["time_used"], 2.0);
        assert_eq!(v["resources"]["cpu"], 0.5);
        assert_eq!(v["resources"]["memory"], 1.0);
        assert_eq!(v["resources"]["disk"], 2.0);
        assert!(stats(usage, Duration::ZERO, 0, None)
            .get("error_summary")
            .is_none());
    }
}
