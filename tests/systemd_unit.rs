//! `conf/iceprod.service` works as its comments say. The unit is installed into a private root
//! (the binary where `ExecStart` expects it, the config its comments give, its
//! `StateDirectory` owned by a dedicated unprivileged user made for the test), then the unit's
//! own `ExecStart`, `ExecReload` and stop (`KillSignal`, `TimeoutStopSec`) are run as systemd
//! would, as that user, with only the installed paths moved into the private root.
//!
//! Needs root (to add the user and run as it): skipped with a message otherwise, and failed
//! instead when `ICEPROD_REQUIRE_ROOT=1` (scripts/test-all.sh sets it).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, WAIT};
use iceprod_runtime::session::SessionChild;
use serde_json::Value;

/// The `[Service]` settings and the comments of a unit file.
struct Unit {
    service: Vec<(String, String)>,
    comments: Vec<String>,
}

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut unit = Unit {
            service: Vec::new(),
            comments: Vec::new(),
        };
        let mut section = String::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix('#') {
                unit.comments.push(comment.to_string());
            } else if line.starts_with('[') {
                section = line.trim().to_string();
            } else if let Some((key, value)) = line.split_once('=') {
                if section == "[Service]" {
                    unit.service.push((key.trim().into(), value.trim().into()));
                }
            }
        }
        unit
    }

    /// The one value of a `[Service]` key.
    fn get(&self, key: &str) -> &str {
        let values: Vec<&str> = self
            .service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values.len(), 1, "[Service] {key}: {values:?}");
        values[0]
    }

    /// The config file the comments say to write, and its text: the indented block after the
    /// comment line `N. Write /PATH ...`.
    fn config_to_write(&self) -> (String, String) {
        let start = self
            .comments
            .iter()
            .position(|c| c.contains(". Write /"))
            .expect("the unit's comments say which config to write");
        let path = self.comments[start]
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .expect("a path")
            .to_string();
        let text: Vec<&str> = self.comments[start + 1..]
            .iter()
            .skip_while(|c| !c.starts_with("      "))
            .take_while(|c| c.starts_with("      "))
            .map(|c| c.trim())
            .collect();
        assert!(
            !text.is_empty(),
            "no config lines after `{}`",
            self.comments[start]
        );
        (path, text.join("\n") + "\n")
    }
}

/// `/abs/path` under `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A unit's command line with every absolute path that was installed under `root` moved
/// there; others (`/bin/kill`) stay the system's. The unit uses no quoting.
fn command_line(root: &Path, line: &str) -> Vec<String> {
    assert!(
        !line.contains(['"', '\'']),
        "quoting is not handled: {line}"
    );
    line.split_whitespace()
        .map(|word| {
            if word.starts_with('/') && under(root, word).exists() {
                under(root, word).display().to_string()
            } else {
                word.to_string()
            }
        })
        .collect()
}

/// A system user made for one test and removed, with its group, when dropped.
struct SystemUser {
    name: String,
}

impl SystemUser {
    fn create() -> SystemUser {
        let name = format!("icp{}x{}", std::process::id(), common::free_port());
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .output()
            .expect("run useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SystemUser { name }
    }

    fn ids(&self) -> (u32, u32) {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, &self.name])
                .output()
                .expect("run id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        (id("-u"), id("-g"))
    }

    /// `argv` as this user, the way systemd runs a unit's commands: its own uid, gid and
    /// groups, in `/`, with a minimal environment.
    fn command(&self, argv: &[String]) -> Command {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid",
                &self.name,
                "--regid",
                &self.name,
                "--init-groups",
                "--",
            ])
            .args(argv)
            .current_dir("/")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("HOME", "/")
            .stdin(Stdio::null());
        command
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        // userdel removes the user's own group too; this covers systems where it does not.
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// `TimeoutStopSec=` as a duration (plain seconds, or `Ns`, `Nmin`).
fn systemd_seconds(value: &str) -> Duration {
    let (number, factor) = if let Some(n) = value.strip_suffix("min") {
        (n, 60)
    } else {
        (value.trim_end_matches('s'), 1)
    };
    Duration::from_secs(number.trim().parse::<u64>().expect("a number of seconds") * factor)
}

fn signal_number(name: &str) -> i32 {
    match name.trim_start_matches("SIG") {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        other => panic!("KillSignal=SIG{other} is not handled here"),
    }
}

/// True when this test may run; false (after saying why) when it is skipped.
fn running_as_root() -> bool {
    // SAFETY: geteuid(2) only reads the process's effective uid.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert_ne!(
        std::env::var("ICEPROD_REQUIRE_ROOT").as_deref(),
        Ok("1"),
        "ICEPROD_REQUIRE_ROOT=1 but the tests do not run as root"
    );
    eprintln!(
        "skipped: the systemd unit test adds a system user and runs the server as it, which \
         needs root (set ICEPROD_REQUIRE_ROOT=1 to fail instead)"
    );
    false
}

#[test]
fn the_systemd_unit_runs_reloads_and_stops_a_site_as_an_unprivileged_user() {
    if !running_as_root() {
        return;
    }
    let unit_file = format!("{}/conf/iceprod.service", env!("CARGO_MANIFEST_DIR"));
    let unit = Unit::parse(&std::fs::read_to_string(&unit_file).expect("the unit file"));
    let root_dir = tempfile::tempdir().expect("a private root");
    let root = root_dir.path();
    // Made by root with mode 700; the service's user must reach the installed files.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = SystemUser::create();
    let (uid, gid) = user.ids();

    // The binary, where ExecStart runs it.
    let exec_start = unit.get("ExecStart");
    let program = exec_start.split_whitespace().next().expect("a program");
    let installed = under(root, program);
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(common::binary(), &installed).expect("install the binary");
    std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The state folder StateDirectory= makes, owned by the unit's user.
    let state_dir = format!("/var/lib/{}", unit.get("StateDirectory"));
    let state = under(root, &state_dir);
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).expect("chown the state folder");

    // The config as the comments give it, its state_dir moved into the root. The website gets
    // a free port: other programs may hold the default one on a test machine.
    let (config_path, config_text) = unit.config_to_write();
    assert!(
        exec_start.contains(&format!("--config {config_path}")),
        "ExecStart `{exec_start}` does not read {config_path}"
    );
    assert!(
        config_text.contains(&state_dir),
        "the config of the comments does not use the StateDirectory {state_dir}"
    );
    let port = common::free_port();
    let config = under(root, &config_path);
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "{}\n[website]\nport = {port}\n",
            config_text.replace(&state_dir, &state.display().to_string())
        ),
    )
    .unwrap();

    // ExecStart, as the user. Its output goes where the journal would take it.
    let logs = tempfile::tempdir().unwrap();
    let journal = logs.path().join("journal");
    let out = std::fs::File::create(&journal).unwrap();
    let mut server = SessionChild::spawn(
        user.command(&command_line(root, exec_start))
            .stdout(out.try_clone().unwrap())
            .stderr(out),
    )
    .expect("start ExecStart");
    // setpriv execs the command: the child is the unit's main process.
    let main_pid = server.id() as i32;
    let journal_text = || std::fs::read_to_string(&journal).unwrap_or_default();
    let healthz = || {
        common::http(
            port,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
        .is_some_and(|(status, _)| status == 200)
    };
    let up = wait_until(WAIT, || {
        matches!(server.try_wait(), Ok(Some(_))) || healthz()
    });
    assert!(
        up && matches!(server.try_wait(), Ok(None)),
        "the unit's ExecStart did not bring the site up:\n{}",
        journal_text()
    );
    // Its files are in the state folder, nothing next to the config.
    for name in [
        "iceprod.pid",
        "iceprod.sock",
        "iceprod.db",
        "iceprod.db.lock",
    ] {
        assert!(state.join(name).exists(), "{name} is not in {state_dir}");
    }
    let beside_config: Vec<_> = std::fs::read_dir(config.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside_config.len(), 1, "{beside_config:?}");

    // ExecReload, as the user, with $MAINPID.
    let reload = unit
        .get("ExecReload")
        .replace("$MAINPID", &main_pid.to_string());
    let status = user
        .command(&command_line(root, &reload))
        .status()
        .expect("run ExecReload");
    assert!(status.success(), "ExecReload `{reload}` failed");
    let ctl_status = || -> Value {
        let out = Command::new(&installed)
            .args(["ctl", "--json", "--config"])
            .arg(&config)
            .arg("status")
            .output()
            .expect("run iceprod ctl");
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)["result"].clone()
    };
    assert!(
        wait_until(WAIT, || ctl_status()["reloads"].as_u64() >= Some(1)),
        "no reload shown by ctl status: {}\n{}",
        ctl_status(),
        journal_text()
    );
    assert_eq!(ctl_status()["last_reload"]["ok"], true, "{}", ctl_status());
    assert!(healthz(), "the site stopped answering after the reload");

    // Stop: KillSignal to the main process, which must exit within TimeoutStopSec.
    let stop_within = systemd_seconds(unit.get("TimeoutStopSec"));
    // SAFETY: kill(2) on the server this test started.
    unsafe {
        libc::kill(main_pid, signal_number(unit.get("KillSignal")));
    }
    let mut exit = None;
    wait_until(stop_within, || {
        exit = server.try_wait().ok().flatten();
        exit.is_some()
    });
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "still running {stop_within:?} after KillSignal:\n{}",
            journal_text()
        )
    });
    assert!(exit.success(), "{exit}:\n{}", journal_text());
    assert!(
        !state.join("iceprod.pid").exists(),
        "the pid file outlived the server"
    );
}
