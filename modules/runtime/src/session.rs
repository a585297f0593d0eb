//! Test support: child processes that leave nothing behind. A test that starts a server or a
//! worker starts more processes through it (local grid jobs, each in a process group of its
//! own; task modules; grid tools), and some ignore SIGTERM. They all keep the session of the
//! process the test started, so [`SessionChild`] starts that process as the leader of a new
//! session, and dropping it, whether the test passed or panicked, SIGKILLs every process still
//! in that session and waits until they are gone.
//!
//! Only for tests and benchmarks: it must not be used by a module (a server never kills
//! processes it does not know).

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long [`Session::kill_all`] waits for the killed processes to go when dropped.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// A session whose processes are all killed when this is dropped.
#[derive(Debug)]
pub struct Session {
    id: i32,
}

impl Session {
    /// The session `leader` started with `setsid` (its id is the leader's pid); for a
    /// process that made its own session, such as a server forking into the background.
    pub fn of_leader(leader: i32) -> Session {
        Session { id: leader }
    }

    /// The session id: the pid of its leader.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// The processes of the session that still run (zombies are gone already: their parent
    /// or init reaps them).
    pub fn members(&self) -> Vec<i32> {
        session_members(self.id)
    }

    /// SIGKILLs every process of the session, again for any that appear meanwhile, until
    /// none is left or `timeout` passes; true when none is left. Never touches the session
    /// of the calling process.
    pub fn kill_all(&self, timeout: Duration) -> bool {
        // SAFETY: getsid(0) only reads the calling process's session id.
        let own = unsafe { libc::getsid(0) };
        if self.id <= 1 || self.id == own {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let members = self.members();
            if members.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            for pid in members {
                // SAFETY: kill(2) on a process of a session this test started; the pid was
                // read from /proc just now, and a process gone since gives ESRCH.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.kill_all(KILL_WAIT) {
            // Not a panic: this may run while a failed test unwinds.
            eprintln!(
                "processes of session {} still alive after SIGKILL: {:?}",
                self.id,
                self.members()
            );
        }
    }
}

/// A child process leading a session of its own; dropping it kills the whole session and
/// reaps the child. Dereferences to the [`Child`] for waiting, pipes and its pid.
#[derive(Debug)]
pub struct SessionChild {
    child: Child,
    session: Session,
}

impl SessionChild {
    /// Spawns `command` as the leader of a new session.
    pub fn spawn(command: &mut Command) -> io::Result<SessionChild> {
        // SAFETY: the closure runs between fork and exec and calls only setsid(2), which is
        // async-signal-safe, and reads errno.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        let child = command.spawn()?;
        let session = Session::of_leader(child.id() as i32);
        Ok(SessionChild { child, session })
    }

    /// The session the child leads.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Kills every process of the session (the child too) and reaps the child; true when
    /// none is left.
    pub fn kill_session(&mut self) -> bool {
        let gone = self.session.kill_all(KILL_WAIT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        gone
    }
}

impl Deref for SessionChild {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for SessionChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for SessionChild {
    fn drop(&mut self) {
        // The session's own Drop then finds nothing left (or reports what is).
        self.kill_session();
    }
}

/// The live processes (state not `Z` or `X`) whose session id is `session`, read from
/// `/proc/PID/stat`.
pub fn session_members(session: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .is_some_and(|stat| {
                    stat_session(&stat)
                        .is_some_and(|(state, sid)| sid == session && state != "Z" && state != "X")
                })
        })
        .collect()
}

/// The state and session id of a `/proc/PID/stat` line. The command name in parentheses may
/// hold spaces and parentheses, so fields are counted after the last `)`: state, ppid,
/// pgrp, session.
fn stat_session(stat: &str) -> Option<(&str, i32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn stat_lines_with_odd_command_names_give_state_and_session() {
        assert_eq!(
            stat_session("42 (a) b (c)) S 1 40 41 0 -1 4194560"),
            Some(("S", 41))
        );
        assert_eq!(stat_session("7 (sh) Z 1 7 7 0"), Some(("Z", 7)));
        assert_eq!(stat_session("garbage"), None);
    }

    #[test]
    fn dropping_a_session_child_kills_what_it_started_in_other_process_groups() {
        let dir = std::env::temp_dir().join(format!("iceprod-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        let pid_file = dir.join("grandchild");
        // The grandchild ignores SIGTERM and moves to a process group of its own, as a local
        // grid job does; it keeps the session.
        let script = format!(
            "job() {{ trap '' TERM; exec sleep 600; }}; set -m; job & echo $! > {}; wait",
            pid_file.display()
        );
        let child = SessionChild::spawn(
            Command::new("/bin/sh")
                .args(["-c", &script])
                .stdin(Stdio::null()),
        )
        .expect("sh starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the grandchild never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        let session = child.session().id();
        assert_eq!(session, child.id() as i32);
        assert!(
            session_members(session).contains(&grandchild),
            "{:?}",
            session_members(session)
        );
        drop(child);
        assert!(session_members(session).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
