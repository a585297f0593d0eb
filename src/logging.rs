//! The process logger behind the `log` facade: level from `[logging] level`, refined by
//! `RUST_LOG` (`info`, `iceprod_website=debug,warn`, …), written to standard error or to
//! `[logging] file`. A reload swaps the level and the file in place; [`reopen`] (SIGUSR1,
//! `iceprod ctl reopen-logs`) opens the same file again after logrotate moved it away.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};

use iceprod_runtime::config::LoggingConfig;
use iceprod_runtime::Config;
use log::{LevelFilter, Log, Metadata, Record};

struct Filter {
    default: LevelFilter,
    /// `target prefix = level` pairs from RUST_LOG; the longest matching prefix wins.
    directives: Vec<(String, LevelFilter)>,
}

impl Filter {
    fn new(config_level: LevelFilter, rust_log: Option<&str>) -> Filter {
        let mut filter = Filter {
            default: config_level,
            directives: Vec::new(),
        };
        for part in rust_log.unwrap_or("").split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some((target, level)) => {
                    if let Ok(level) = level.trim().parse() {
                        filter.directives.push((target.trim().to_string(), level));
                    }
                }
                None => {
                    if let Ok(level) = part.parse() {
                        filter.default = level;
                    }
                }
            }
        }
        filter
            .directives
            .sort_by_key(|(target, _)| std::cmp::Reverse(target.len()));
        filter
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.directives
            .iter()
            .find(|(prefix, _)| target.starts_with(prefix.as_str()))
            .map_or(self.default, |(_, level)| *level)
    }

    fn max(&self) -> LevelFilter {
        self.directives
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, std::cmp::max)
    }
}

enum Sink {
    Stderr,
    /// The open file and the path it was opened from, which [`reopen`] opens again.
    File(File, PathBuf),
}

struct Logger {
    filter: RwLock<Filter>,
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let filter = self.filter.read().unwrap_or_else(|p| p.into_inner());
        metadata.level() <= filter.level_for(metadata.target())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let thread = std::thread::current();
        let line = format!(
            "{now} {:<5} [{}] {}\n",
            record.level(),
            thread.name().unwrap_or("?"),
            record.args()
        );
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        // A log line that cannot be written has nowhere else to go.
        let _ = match &mut *sink {
            Sink::Stderr => io::stderr().write_all(line.as_bytes()),
            Sink::File(f, _) => f.write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {
        if let Sink::File(f, _) = &mut *self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = f.flush();
        }
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn open_sink(config: &LoggingConfig) -> Result<Sink, String> {
    match &config.file {
        None => Ok(Sink::Stderr),
        Some(path) => open_file(path)
            .map(|f| Sink::File(f, path.clone()))
            .map_err(|e| format!("cannot open the log file {}: {e}", path.display())),
    }
}

/// Where a server without `--foreground` logs when `[logging] file` is unset: it has no
/// terminal, so next to its other files. Applied to the config at start and to every reloaded
/// one, so that a reload compares like with like.
pub fn default_for_daemon(config: &mut Config) {
    if config.logging.file.is_none() {
        config.logging.file = Some(config.state_path(iceprod_runtime::StateFile::DaemonLog));
    }
}

/// Whether `config`'s log file can be opened, without switching to it: a reload checks this
/// before anything changes.
pub fn check(config: &LoggingConfig) -> Result<(), String> {
    open_sink(config).map(drop)
}

/// Opens the log file again under its configured path (after logrotate renamed it), so new
/// lines go to a fresh file. Logging to standard error: nothing to do.
pub fn reopen() -> Result<(), String> {
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    let mut sink = logger.sink.lock().unwrap_or_else(|p| p.into_inner());
    if let Sink::File(file, path) = &mut *sink {
        let _ = file.flush();
        *file = open_file(path)
            .map_err(|e| format!("cannot reopen the log file {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Installs the logger (once per process) with `config`; later calls reconfigure it.
pub fn configure(config: &LoggingConfig) -> Result<(), String> {
    let filter = Filter::new(
        config.level.to_filter(),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let sink = open_sink(config)?;
    let max = filter.max();
    match LOGGER.get() {
        Some(logger) => {
            *logger.filter.write().unwrap_or_else(|p| p.into_inner()) = filter;
            *logger.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
        }
        None => {
            let logger = LOGGER.get_or_init(|| Logger {
                filter: RwLock::new(filter),
                sink: Mutex::new(sink),
            });
            // Fails only if another logger was installed first, which this binary never does.
            let _ = log::set_logger(logger);
        }
    }
    log::set_max_level(max);
    Ok(())
}

/// Sends panics to the log (standard error may be closed when running as a daemon).
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        log::error!(
            "thread {} panicked: {info}",
            thread.name().unwrap_or("unnamed")
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_refines_the_config_level() {
        let f = Filter::new(
            LevelFilter::Info,
            Some("iceprod_website=debug, iceprod_website::edge=trace"),
        );
        assert_eq!(f.level_for("iceprod"), LevelFilter::Info);
        assert_eq!(f.level_for("iceprod_website::jsonrpc"), LevelFilter::Debug);
        assert_eq!(f.level_for("iceprod_website::edge"), LevelFilter::Trace);
        assert_eq!(f.max(), LevelFilter::Trace);
    }

    #[test]
    fn a_bare_rust_log_level_replaces_the_default_and_garbage_is_ignored() {
        let f = Filter::new(LevelFilter::Info, Some("warn,=,x=loud"));
        assert_eq!(f.level_for("anything"), LevelFilter::Warn);
        assert_eq!(f.level_for("x"), LevelFilter::Warn);
    }
}
