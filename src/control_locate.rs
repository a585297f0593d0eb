//! Where `iceprod ctl` finds the control socket, even when the config file is broken: that is
//! exactly when an operator needs `ctl status` to see what the running server does.
//!
//! In order: `--socket`; the valid config's `[controller] control_socket`; with a broken
//! config, the socket the running server listens on, found through its pid file (the pid's
//! listening Unix socket in `/proc`); the socket path the broken file names (or the one its
//! `state_dir` implies); the built-in default. The caller says which one it used.

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
        Ok(config) => {
            return Located {
                socket: config.controller.control_socket,
                how: None,
            }
        }
        Err(e) => e,
    };
    let first_line = error.to_string();
    let first_line = first_line.lines().next().unwrap_or_default();
    let salvaged = Salvaged::read(file);
    if let Some(pid_file) = &salvaged.pid_file {
        if let Some((pid, socket)) = socket_of_running_server(pid_file) {
            return Located {
                socket,
                how: Some(format!(
                    "the config has errors ({first_line}); found the socket of the running \
                     server (pid {pid}, from {})",
                    pid_file.display()
                )),
            };
        }
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

/// What a broken config file still says about where the server keeps its files. Relative
/// paths resolve against the file's folder, as for a valid config.
struct Salvaged {
    state_dir: PathBuf,
    pid_file: Option<PathBuf>,
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
            pid_file: Some(pid_file),
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
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (flags, inode, path) = (fields.get(3)?, fields.get(6)?, fields.get(7)?);
        let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & 0x10000 != 0);
        (listening && inodes.iter().any(|i| i == inode) && path.starts_with('/'))
            .then(|| (pid, PathBuf::from(path)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
