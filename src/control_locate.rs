//! Where `iceprod ctl` finds the control socket, even when the config file is broken: that is
//! exactly when an operator needs `ctl status` to see what the running server does.
//!
//! In order: `--socket`; the valid config's `[controller] control_socket` (unless no such
//! socket exists, as after that key was edited: the running server still listens on the old
//! one); the socket the running server listens on, found through its pid file (the pid's
//! listening Unix socket in `/proc`, when that process is an iceprod); the socket path a broken
//! file names (or the one its `state_dir` implies); the built-in default. The caller says
//! which one it used when it is not the config's.

use std::path::{Path, PathBuf};

use iceprod_runtime::{Config, ModuleKind, StateFile};

/// A socket path and how it was found, for the operator.
pub struct Located {
    pub socket: PathBuf,
    /// `None` when the config is valid (the normal case, nothing to say).
    pub how: Option<String>,
}

/// Finds the control socket for the config file `file`.
pub fn control_socket(file: &Path, available: &[ModuleKind]) -> Located {
    let error = match Config::load(file, available) {
        Ok(config) => return configured(config),
        Err(e) => e,
    };
    let first_line = error.to_string();
    let first_line = first_line.lines().next().unwrap_or_default();
    let salvaged = Salvaged::read(file);
    if let Some((pid, socket)) = socket_of_running_server(&salvaged.pid_file) {
        return Located {
            socket,
            how: Some(format!(
                "the config has errors ({first_line}); found the socket of the running server \
                 (pid {pid}, from {})",
                salvaged.pid_file.display()
            )),
        };
    }
    let (socket, source) = match salvaged.control_socket {
        Some(socket) => (socket, "named in the config"),
        None => (
            salvaged.state_dir.join(StateFile::ControlSocket.name()),
            "the default",
        ),
    };
    Located {
        socket,
        how: Some(format!(
            "the config has errors ({first_line}); using {source} socket"
        )),
    }
}

/// The valid config's socket, or, when there is none at that path, the running server's.
fn configured(config: Config) -> Located {
    let named = config.controller.control_socket;
    if named.exists() {
        return Located {
            socket: named,
            how: None,
        };
    }
    let pid_file = &config.controller.pid_file;
    match socket_of_running_server(pid_file) {
        Some((pid, socket)) => Located {
            how: Some(format!(
                "no socket at {} (edited since the server started?); found the socket of the \
                 running server (pid {pid}, from {})",
                named.display(),
                pid_file.display()
            )),
            socket,
        },
        None => Located {
            socket: named,
            how: None,
        },
    }
}

/// What a broken config file still says about where the server keeps its files. Relative
/// paths resolve against the file's folder, as for a valid config.
struct Salvaged {
    state_dir: PathBuf,
    pid_file: PathBuf,
    control_socket: Option<PathBuf>,
}

impl Salvaged {
    fn read(file: &Path) -> Salvaged {
        let base = std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let key = |table: &str, name: &str| value_of(&text, table, name).map(|v| base.join(v));
        let state_dir = key("site", "state_dir").unwrap_or_else(|| base.join("var"));
        let pid_file = key("controller", "pid_file")
            .unwrap_or_else(|| state_dir.join(StateFile::PidFile.name()));
        Salvaged {
            pid_file,
            control_socket: key("controller", "control_socket"),
            state_dir,
        }
    }
}

/// The string value of `name` in `[table]`: from the TOML if it parses, else from the first
/// `name = "…"` line under a `[table]` header (a syntax error elsewhere must not hide it).
fn value_of(text: &str, table: &str, name: &str) -> Option<String> {
    if let Ok(doc) = text.parse::<toml::Table>() {
        return doc
            .get(table)?
            .get(name)?
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string);
    }
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            current = header.trim_end_matches(']').trim().to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if current == table && key.trim() == name {
            let value = value.trim();
            let value = value.strip_prefix('"')?.split('"').next()?;
            return (!value.is_empty()).then(|| value.to_string());
        }
    }
    None
}

/// The pid in `pid_file`, if that process runs, and the Unix socket it listens on.
fn socket_of_running_server(pid_file: &Path) -> Option<(u32, PathBuf)> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A stale pid file may name a reused pid: only an iceprod process will do.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let is_iceprod = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("iceprod"));
    if !is_iceprod {
        return None;
    }
    // The process's socket inodes: its fds that link to `socket:[INODE]`.
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.push(inode.to_string());
        }
    }
    // /proc/net/unix: `Num RefCount Protocol Flags Type St Inode Path`; flag 0x10000 marks
    // a listening socket.
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let (flags, inode, path) = unix_socket_row(line)?;
        let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & 0x10000 != 0);
        (listening && inodes.iter().any(|i| i == inode) && path.starts_with('/'))
            .then(|| (pid, PathBuf::from(path)))
    })
}

/// (flags, inode, path) of a `/proc/net/unix` row; the path is the rest of the line, spaces
/// included.
fn unix_socket_row(line: &str) -> Option<(&str, &str, &str)> {
    let mut rest = line.trim_start();
    let mut fields = [""; 7];
    for field in &mut fields {
        let end = rest.find(' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = rest[end..].trim_start();
    }
    Some((fields[3], fields[6], rest)).filter(|(_, inode, _)| !inode.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_with_spaces_is_read_whole() {
        let row =
            "0000000000000000: 00000002 00000000 00010000 0001 01 4242 /srv/ice prod/ctl.sock";
        assert_eq!(
            unix_socket_row(row),
            Some(("00010000", "4242", "/srv/ice prod/ctl.sock"))
        );
        let unnamed = "0000000000000000: 00000002 00000000 00000000 0001 03 77";
        assert_eq!(unix_socket_row(unnamed), Some(("00000000", "77", "")));
    }

    #[test]
    fn a_key_is_found_in_valid_and_in_broken_toml() {
        let valid = "[controller]\ncontrol_socket = \"run/ctl.sock\"\n";
        assert_eq!(
            value_of(valid, "controller", "control_socket").as_deref(),
            Some("run/ctl.sock")
        );
        let broken = "[site]\nstate_dir = \"/srv/ip\"\n[controller\nx = \n";
        assert_eq!(
            value_of(broken, "site", "state_dir").as_deref(),
            Some("/srv/ip")
        );
        assert_eq!(value_of(broken, "controller", "control_socket"), None);
        assert_eq!(
            value_of("[site]\nstate_dir = 5\n", "site", "state_dir"),
            None
        );
    }

    #[test]
    fn a_broken_config_falls_back_to_its_state_dir_then_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("iceprod.toml");
        std::fs::write(&file, "[site]\nstate_dir = \"state\"\nnonsense = [\n").expect("write");
        let found = control_socket(&file, &ModuleKind::ALL);
        assert_eq!(found.socket, dir.path().join("state/iceprod.sock"));
        assert!(found.how.is_some_and(|h| h.contains("errors")));
        std::fs::write(&file, "[[[").expect("write");
        let found = control_socket(&file, &ModuleKind::ALL);
        assert_eq!(found.socket, dir.path().join("var/iceprod.sock"));
    }
}
