//! What goes into a submit folder (SPEC §6): the task config as `task.cfg` (or a pilot's
//! `pilot.cfg`), the batch file of the grid's plugin, and later the job's own output files.
//! The passkey travels in the batch file's environment, never on a command line, and the
//! folder and its files are readable by the owner only.

use std::path::{Path, PathBuf};

use iceprod_runtime::Resources;
use serde_json::{json, Value};

use crate::grids::{shell_body, BatchPlugin, CommandSpec, SubmitJob};
use crate::local::JOB_FILE;
use crate::runner::FileToWrite;

/// The config file a task's worker reads.
pub const TASK_CONFIG: &str = "task.cfg";
/// The config file a pilot reads.
pub const PILOT_CONFIG: &str = "pilot.cfg";

/// Where workers find the server and the `iceprod` binary they run.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSetup {
    pub server_url: String,
    pub worker_command: PathBuf,
    /// The site CA (PEM), written into every submit folder as [`CA_FILE`] for the worker's
    /// `--ca-cert`.
    pub ca_pem: Option<Vec<u8>>,
}

/// The CA certificate's name in a submit folder.
pub const CA_FILE: &str = "ca.pem";

/// A folder name that is new for every attempt: a reset task resubmitted gets a fresh folder,
/// so the files of the earlier attempt stay for whoever looks into its failure.
pub fn folder(submit_dir: &Path, grid: &str, name: &str) -> PathBuf {
    let ms = chrono::Utc::now().timestamp_millis();
    submit_dir.join(grid).join(format!("{name}-{ms}"))
}

/// The job that runs one task (direct mode).
pub fn task_job(
    setup: &WorkerSetup,
    dir: PathBuf,
    task_id: &str,
    passkey: &str,
    needs: Resources,
) -> SubmitJob {
    worker_job(
        setup,
        dir,
        format!("iceprod.{task_id}"),
        &[],
        TASK_CONFIG,
        passkey,
        needs,
    )
}

/// The job that runs one pilot.
pub fn pilot_job(
    setup: &WorkerSetup,
    dir: PathBuf,
    pilot_id: &str,
    passkey: &str,
    resources: Resources,
) -> SubmitJob {
    let name = format!("iceprod.pilot.{pilot_id}");
    worker_job(
        setup,
        dir,
        name,
        &["--pilot"],
        PILOT_CONFIG,
        passkey,
        resources,
    )
}

/// `iceprod task [FLAGS] --cfgfile CONFIG`, with the server's URL and the passkey in the
/// job's environment.
fn worker_job(
    setup: &WorkerSetup,
    dir: PathBuf,
    name: String,
    flags: &[&str],
    config: &str,
    passkey: &str,
    resources: Resources,
) -> SubmitJob {
    let mut command = vec![
        setup.worker_command.to_string_lossy().into_owned(),
        "task".to_string(),
    ];
    command.extend(flags.iter().map(|f| f.to_string()));
    if setup.ca_pem.is_some() {
        command.extend(["--ca-cert".to_string(), CA_FILE.to_string()]);
    }
    command.extend(["--cfgfile".to_string(), config.to_string()]);
    SubmitJob {
        dir,
        name,
        command,
        env: worker_env(setup, passkey),
        resources,
        count: 1,
    }
}

fn worker_env(setup: &WorkerSetup, passkey: &str) -> Vec<(String, String)> {
    vec![
        ("ICEPROD_SERVER_URL".into(), setup.server_url.clone()),
        ("ICEPROD_PASSKEY".into(), passkey.to_string()),
    ]
}

/// A pilot's config (SPEC §5.2.1): no tasks, `task_id = "pilot"`, its grid and resources.
pub fn pilot_config(pilot_id: &str, gridspec: &str, r: &Resources) -> Value {
    json!({
        "tasks": [],
        "options": {
            "task_id": "pilot",
            "pilot_id": pilot_id,
            "gridspec": gridspec,
            "resources": {"cpu": r.cpu, "gpu": r.gpu, "memory": r.memory, "disk": r.disk, "time": r.time},
        }
    })
}

/// The files of a submission and the command that submits it (`None` for the local grid,
/// which starts `job.sh` itself).
pub fn files_and_command(
    plugin: Option<&dyn BatchPlugin>,
    setup: &WorkerSetup,
    job: &SubmitJob,
    config_name: &str,
    config: &Value,
) -> (Vec<FileToWrite>, Option<CommandSpec>) {
    let mut files = vec![FileToWrite {
        path: job.dir.join(config_name),
        contents: config.to_string().into_bytes(),
        mode: 0o600,
    }];
    if let Some(pem) = &setup.ca_pem {
        files.push(FileToWrite {
            path: job.dir.join(CA_FILE),
            contents: pem.clone(),
            mode: 0o644,
        });
    }
    let command = match plugin {
        None => {
            files.push(FileToWrite {
                path: job.dir.join(JOB_FILE),
                contents: format!("#!/bin/sh\n{}", shell_body(job)).into_bytes(),
                mode: 0o700,
            });
            None
        }
        Some(plugin) => {
            let (name, text) = plugin.submit_file(job);
            files.push(FileToWrite {
                path: job.dir.join(&name),
                contents: text.into_bytes(),
                mode: 0o700,
            });
            let mut command = plugin.submit_command(job, &name);
            command.cwd.get_or_insert_with(|| job.dir.clone());
            Some(command)
        }
    };
    (files, command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(ca_pem: Option<&[u8]>) -> WorkerSetup {
        WorkerSetup {
            server_url: "https://iceprod.example.org".into(),
            worker_command: PathBuf::from("/opt/iceprod/bin/iceprod"),
            ca_pem: ca_pem.map(<[u8]>::to_vec),
        }
    }

    fn needs() -> Resources {
        Resources {
            cpu: 1,
            gpu: 0,
            memory: 1.0,
            disk: 1.0,
            time: 1.0,
        }
    }

    #[test]
    fn a_task_job_runs_iceprod_task_with_the_passkey_only_in_its_environment() {
        let job = task_job(
            &setup(None),
            PathBuf::from("/s/t1"),
            "t1",
            "secret",
            needs(),
        );
        assert_eq!(
            job.command,
            ["/opt/iceprod/bin/iceprod", "task", "--cfgfile", "task.cfg"]
        );
        assert!(!job.command.iter().any(|a| a.contains("secret")));
        assert!(job
            .env
            .contains(&("ICEPROD_PASSKEY".to_string(), "secret".to_string())));
        let (files, command) =
            files_and_command(None, &setup(None), &job, TASK_CONFIG, &Value::Null);
        assert!(command.is_none(), "the local grid starts job.sh itself");
        let names: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            names,
            [
                PathBuf::from("/s/t1/task.cfg"),
                PathBuf::from("/s/t1/job.sh")
            ]
        );
        // The batch file holds the passkey: owner only.
        assert!(files.iter().all(|f| f.mode & 0o077 == 0));
    }

    #[test]
    fn with_a_site_ca_every_submission_carries_it_and_the_worker_verifies_with_it() {
        let s = setup(Some(b"-----BEGIN CERTIFICATE-----\n"));
        let job = pilot_job(&s, PathBuf::from("/s/p1"), "p1", "k", needs());
        assert_eq!(
            &job.command[1..],
            [
                "task",
                "--pilot",
                "--ca-cert",
                CA_FILE,
                "--cfgfile",
                "pilot.cfg"
            ]
        );
        let (files, _) = files_and_command(None, &s, &job, PILOT_CONFIG, &Value::Null);
        let ca = files
            .iter()
            .find(|f| f.path == Path::new("/s/p1/ca.pem"))
            .expect("the CA file");
        assert_eq!(ca.contents, b"-----BEGIN CERTIFICATE-----\n");
    }
}
