//! Process plumbing for `iceprod server`: the pid file, and running in the background.
//!
//! Without `--foreground` the server forks before any thread exists; the parent waits on a
//! pipe until the child reports that every module started (or why it could not) and exits
//! with that outcome, so `iceprod server` fails visibly when the server cannot start.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The pid file, removed when dropped.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes our pid to `path`, refusing if a live process holds it.
    pub fn create(path: &Path) -> anyhow::Result<PidFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the folder of {}", path.display()))?;
        }
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != std::process::id() && process_alive(pid) {
                    anyhow::bail!(
                        "the server is already running (pid {pid}, from {})",
                        path.display()
                    );
                }
            }
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Alive and not a zombie (a zombie's /proc entry stays until its parent reaps it).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The child's end of the start-up report pipe.
pub struct Ready(File);

impl Ready {
    /// Tells the waiting parent how the start went; the parent prints it and exits.
    pub fn report(mut self, outcome: &Result<(), String>) {
        let msg = match outcome {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error: {e}\n"),
        };
        let _ = self.0.write_all(msg.as_bytes());
    }
}

/// Forks into the background. Returns in the child only; the parent exits once the child
/// reported its start. Must be called before any thread is spawned.
pub fn daemonize(log_file: Option<&Path>) -> anyhow::Result<Ready> {
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two fds we then own; fork() is called while this process has a
    // single thread, which makes it safe to continue in the child.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe");
        }
        let (read_end, write_end) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        match libc::fork() {
            -1 => Err(std::io::Error::last_os_error()).context("fork"),
            0 => {
                drop(read_end);
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error()).context("setsid");
                }
                detach_stdio()?;
                Ok(Ready(File::from(write_end)))
            }
            child => {
                drop(write_end);
                let mut answer = String::new();
                let _ = File::from(read_end).read_to_string(&mut answer);
                match answer.trim() {
                    "ok" => {
                        println!("iceprod server started (pid {child})");
                        if let Some(f) = log_file {
                            println!("logging to {}", f.display());
                        }
                        std::process::exit(0)
                    }
                    "" => {
                        eprintln!("iceprod server exited during start-up; see its log");
                        std::process::exit(1)
                    }
                    other => {
                        eprintln!("iceprod server did not start: {other}");
                        std::process::exit(1)
                    }
                }
            }
        }
    }
}

fn detach_stdio() -> anyhow::Result<()> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors with a valid open fd.
    unsafe {
        for fd in 0..3 {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
    Ok(())
}

/// Descriptors the server needs besides its client connections: the database and its
/// readers, logs, grid commands, the control socket.
const FD_RESERVE: u64 = 256;

/// Raises the soft limit on open descriptors to the hard limit, as servers do (the soft
/// default, often 1024, is too low for `[website] max_connections` clients). Warns when even
/// the hard limit leaves too few for `max_connections`: the website then answers clients
/// beyond it 503 until descriptors free up, rather than failing.
pub fn raise_fd_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let wanted = limit.rlim_max;
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::debug!("open file limit raised from {} to {wanted}", limit.rlim_cur);
            limit.rlim_cur = wanted;
        }
    }
    let needed = max_connections as u64 + FD_RESERVE;
    if limit.rlim_cur < needed {
        log::warn!(
            "the open file limit ({}) is below [website] max_connections + {FD_RESERVE} \
             ({needed}): raise LimitNOFILE (systemd) or ulimit -n",
            limit.rlim_cur
        );
    }
}
