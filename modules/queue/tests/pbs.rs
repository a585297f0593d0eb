//! The pbs plugin against recorded real outputs (tests/fixtures/pbs, see its SOURCES.md): Slurm's
//! torque wrappers, real Torque 4.2.8 `qstat -f` samples, and documented-format Torque examples
//! for what neither gives (`N.server` ids in the table, H, W, E, S, T).

mod support;

use std::path::Path;

use iceprod_queue::grids::pbs::{Pbs, MAX_QSTAT_F_PER_QUERY};
use iceprod_queue::grids::{BatchPlugin, CommandOutput, GridJobState, SubmitJob};
use iceprod_queue::QueueError;
use iceprod_runtime::config::{GridConfig, GridType};
use support::{ids, is_parse_error, output, resources};

fn grid(queue: Option<&str>, batchopts: &[(&str, &str)], bin_dir: Option<&str>) -> GridConfig {
    support::grid(GridType::Pbs, queue, batchopts, bin_dir)
}

fn plain() -> Pbs {
    Pbs::new(&grid(None, &[], None))
}

fn job(dir: &str) -> SubmitJob {
    let command = ["/usr/bin/iceprod", "task"];
    let env = [("ICEPROD_SERVER_URL", "http://site:8080")];
    support::job(
        dir,
        "iceprod.t1",
        &command,
        &env,
        resources(4, 0, 2.0, 10.0, 26.25),
    )
}

/// A recorded output: `NAME.stdout`, `NAME.stderr`, `NAME.exit`.
fn fixture(name: &str) -> CommandOutput {
    let program = if name.contains("qsub") {
        "qsub"
    } else if name.contains("qdel") {
        "qdel"
    } else {
        "qstat"
    };
    support::recorded("pbs", name, program)
}

#[test]
fn submit_file_asks_for_nodes_memory_walltime_and_queue() {
    let mut j = job("/srv/submit/t1");
    j.resources.gpu = 2;
    let (name, text) = Pbs::new(&grid(Some("long"), &[], None)).submit_file(&j);
    assert_eq!(name, "job.pbs");
    assert_eq!(
        text,
        "#!/bin/sh\n\
         #PBS -N iceprod.t1\n\
         #PBS -o /srv/submit/t1/job.out\n\
         #PBS -e /srv/submit/t1/job.err\n\
         #PBS -l nodes=1:ppn=4:gpus=2\n\
         #PBS -l mem=2048mb\n\
         #PBS -l walltime=26:15:00\n\
         #PBS -q long\n\
         cd /srv/submit/t1\n\
         export ICEPROD_SERVER_URL=http://site:8080\n\
         exec /usr/bin/iceprod task\n"
    );
}

#[test]
fn submit_file_without_gpus_or_queue_leaves_them_out_and_rounds_up() {
    let mut j = job("/srv/submit/t1");
    j.resources.time = 0.01;
    j.resources.memory = 0.0001;
    let (_, text) = plain().submit_file(&j);
    assert!(text.contains("#PBS -l nodes=1:ppn=4\n"), "{text}");
    assert!(text.contains("#PBS -l walltime=00:01:00\n"), "{text}");
    assert!(text.contains("#PBS -l mem=1mb\n"), "{text}");
    assert!(!text.contains("#PBS -q"), "{text}");
}

#[test]
fn batchopts_become_dash_key_value_lines() {
    let pbs = Pbs::new(&grid(
        None,
        &[("A", "icecube"), ("-l", "pmem=2gb"), ("V", "")],
        None,
    ));
    let (_, text) = pbs.submit_file(&job("/srv/submit/t1"));
    assert!(text.contains("#PBS -A icecube\n"), "{text}");
    assert!(text.contains("#PBS -l pmem=2gb\n"), "{text}");
    assert!(text.contains("#PBS -V\n"), "{text}");
    assert!(text.find("#PBS -V").unwrap() < text.find("\ncd ").unwrap());
}

#[test]
fn hostile_values_are_quoted_in_directives_and_the_shell() {
    let pbs = Pbs::new(&grid(None, &[("W", r#"x="a b" #c"#)], None));
    let (_, text) = pbs.submit_file(&job("/srv/sub mit/$HOME's"));
    assert!(
        text.contains("#PBS -o \"/srv/sub mit/$HOME's/job.out\"\n"),
        "{text}"
    );
    assert!(text.contains(r#"#PBS -W "x=\"a b\" \#c""#), "{text}");
    assert!(text.contains(r"cd '/srv/sub mit/$HOME'\''s'"), "{text}");
}

#[test]
fn submit_runs_qsub_in_the_submit_folder_naming_the_output_files() {
    let j = job("/srv/submit/t1");
    let spec = plain().submit_command(&j, "job.pbs");
    assert_eq!(spec.program, "qsub");
    assert_eq!(spec.args, ["-o", "job.out", "-e", "job.err", "job.pbs"]);
    assert_eq!(spec.cwd.as_deref(), Some(Path::new("/srv/submit/t1")));
    let spec = Pbs::new(&grid(None, &[], Some("/opt/torque/bin"))).submit_command(&j, "f");
    assert_eq!(spec.program, "/opt/torque/bin/qsub");
}

#[test]
fn parse_submit_keeps_both_id_forms_as_printed() {
    assert_eq!(plain().parse_submit(&fixture("qsub")).unwrap(), ["9"]);
    assert_eq!(
        plain()
            .parse_submit(&fixture("example_torque_qsub"))
            .unwrap(),
        ["1234.pbs.example.org"]
    );
}

#[test]
fn parse_submit_rejects_garbage_and_shows_the_wrappers_error() {
    for stdout in ["", "job submitted\n", "x12.server\n", "12.\n", "1\n2\n"] {
        let out = output("qsub", 0, stdout, "");
        assert!(is_parse_error(plain().parse_submit(&out)), "{stdout:?}");
    }
    match plain().parse_submit(&fixture("qsub_bad_queue")) {
        Err(QueueError::Exit { code, stderr, .. }) => {
            assert_eq!(code, Some(1));
            assert_eq!(stderr, "sbatch: error: invalid partition specified: nosuch");
        }
        other => panic!("expected an exit error, got {other:?}"),
    }
}

#[test]
fn status_starts_with_plain_qstat() {
    let spec = plain().status_step(&ids(&["9"]), &[]).unwrap();
    assert_eq!(spec.program, "qstat");
    assert!(spec.args.is_empty());
    assert_eq!(plain().status_step(&[], &[]), None);
}

#[test]
fn wrapper_qstat_states_with_details_for_finished_jobs() {
    let asked = ids(&["9", "10", "12", "13"]);
    let mut done = vec![fixture("qstat")];
    let step = plain().status_step(&asked, &done).unwrap();
    assert_eq!(step.args, ["-f", "9"]);
    done.push(fixture("qstat_f_completed"));
    assert_eq!(plain().status_step(&asked, &done), None);
    let status = plain().parse_status(&asked, &done).unwrap();
    // The wrappers record no exit_status; their held job shows as Q.
    assert_eq!(status["9"], GridJobState::Completed { exit_code: None });
    assert_eq!(status["10"], GridJobState::Processing);
    assert_eq!(status["12"], GridJobState::Queued);
    assert_eq!(status["13"], GridJobState::Queued);
}

#[test]
fn real_openpbs_qstat_with_server_ids_reads_as_running() {
    let asked = ids(&["10.ip-10-0-6-176", "11.ip-10-0-6-176", "12.ip-10-0-6-176"]);
    let done = [fixture("openpbs_qstat")];
    assert_eq!(plain().status_step(&asked, &done), None);
    let status = plain().parse_status(&asked, &done).unwrap();
    assert_eq!(status["10.ip-10-0-6-176"], GridJobState::Processing);
    assert_eq!(status["11.ip-10-0-6-176"], GridJobState::Processing);
    // Not listed: unknown to the grid.
    assert!(!status.contains_key("12.ip-10-0-6-176"));
}

#[test]
fn torque_qstat_maps_every_letter_and_matches_cut_ids() {
    let asked = ids(&[
        "1231.pbs.example.org",
        "1232.pbs.example.org",
        "1233.pbs.example.org",
        "1234.pbs.example.org",
        "1235.pbs.example.org",
        "1236.pbs.example.org",
        "1237.long-server-name.example.org",
    ]);
    let done = [fixture("example_torque_qstat")];
    assert_eq!(plain().status_step(&asked, &done), None);
    let status = plain().parse_status(&asked, &done).unwrap();
    assert_eq!(status["1231.pbs.example.org"], GridJobState::Processing);
    assert_eq!(status["1232.pbs.example.org"], GridJobState::Queued);
    assert_eq!(
        status["1233.pbs.example.org"],
        GridJobState::Error {
            reason: "held".into()
        }
    );
    assert_eq!(status["1234.pbs.example.org"], GridJobState::Queued);
    assert_eq!(status["1235.pbs.example.org"], GridJobState::Processing);
    assert_eq!(status["1236.pbs.example.org"], GridJobState::Processing);
    // qstat cut this id at its column; the sequence number still finds it.
    assert_eq!(
        status["1237.long-server-name.example.org"],
        GridJobState::Queued
    );
}

#[test]
fn real_torque_exit_status_completes_the_job_with_its_code() {
    let table = |id: &str| {
        output(
            "qstat",
            0,
            &format!(
                "Job ID                    Name             User            Time Use S Queue\n\
                 ------------------------- ---------------- --------------- -------- - -----\n\
                 {id:<25} timeout.pbs      jgsanders       00:00:00 C short4gb\n"
            ),
            "",
        )
    };
    for (id, name, code) in [
        ("522081.barnacle.ucsd.edu", "torque_qstat_f_exit0", 0),
        (
            "522083.barnacle.ucsd.edu",
            "torque_qstat_f_exit_minus11",
            -11,
        ),
    ] {
        let asked = ids(&[id]);
        let done = [table(id), fixture(name)];
        assert_eq!(plain().status_step(&asked, &done), None);
        let status = plain().parse_status(&asked, &done).unwrap();
        assert_eq!(
            status[id],
            GridJobState::Completed {
                exit_code: Some(code)
            },
            "{name}"
        );
    }
}

#[test]
fn a_job_forgotten_between_qstat_and_qstat_f_is_left_out() {
    for unknown in ["qstat_f_unknown", "example_torque_qstat_f_unknown"] {
        let asked = ids(&["9"]);
        let done = [fixture("qstat"), fixture(unknown)];
        let status = plain().parse_status(&asked, &done).unwrap();
        assert!(status.is_empty(), "{unknown}: {status:?}");
    }
}

#[test]
fn jobs_qstat_does_not_list_are_unknown_to_the_grid() {
    let asked = ids(&["9", "999"]);
    let done = [fixture("qstat"), fixture("qstat_f_completed")];
    let status = plain().parse_status(&asked, &done).unwrap();
    assert!(!status.contains_key("999"));
    // An empty qstat (no jobs at all: real Torque prints nothing) is a valid answer.
    let empty = output("qstat", 0, "", "");
    assert!(plain().parse_status(&asked, &[empty]).unwrap().is_empty());
}

#[test]
fn qstat_f_calls_are_bounded() {
    let mut table = String::from(
        "Job id              Name             Username        Time Use S Queue          \n\
         ------------------- ---------------- --------------- -------- - ---------------\n",
    );
    let many: Vec<String> = (100..130).map(|i| i.to_string()).collect();
    for id in &many {
        table.push_str(&format!(
            "{id:<19} iceprod.x        root            00:00:00 C debug          \n"
        ));
    }
    let mut done = vec![output("qstat", 0, &table, "")];
    while plain().status_step(&many, &done).is_some() {
        done.push(fixture("qstat_f_unknown"));
    }
    assert_eq!(done.len(), 1 + MAX_QSTAT_F_PER_QUERY);
    let status = plain().parse_status(&many, &done).unwrap();
    // The ones asked were forgotten; the rest are completed without an exit code.
    assert_eq!(status.len(), many.len() - MAX_QSTAT_F_PER_QUERY);
    assert!(status
        .values()
        .all(|s| *s == GridJobState::Completed { exit_code: None }));
}

#[test]
fn garbage_or_truncated_qstat_output_is_an_error_not_a_state() {
    let header = "Job id              Name             Username        Time Use S Queue          \n\
                  ------------------- ---------------- --------------- -------- - ---------------\n";
    for stdout in [
        "9 iceprod root 00:00:00 C debug\n".to_string(),
        format!("{header}9                   iceprod.x        root      \n"),
        format!("{header}9                   iceprod.x        root            00:00:00 r debug\n"),
        "qstat: cannot connect to server\n".to_string(),
    ] {
        let out = output("qstat", 0, &stdout, "");
        assert!(
            is_parse_error(plain().parse_status(&ids(&["9"]), &[out])),
            "{stdout:?}"
        );
    }
    let asked = ids(&["9"]);
    for stdout in [
        "",
        "Job Id:\t10\n\tjob_state = C\n",
        "Job Id:\t9\n\tJob_Name = x\n",
        "Job Id: 9\n    job_state = C\n    exit_status = zero\n",
    ] {
        let done = [fixture("qstat"), output("qstat", 0, stdout, "")];
        assert!(
            is_parse_error(plain().parse_status(&asked, &done)),
            "{stdout:?}"
        );
    }
}

#[test]
fn a_failed_qstat_ends_the_query_with_an_error() {
    let asked = ids(&["9"]);
    let down = output(
        "qstat",
        1,
        "",
        "Cannot connect to specified server host 'pbs'.\nqstat: cannot connect to server pbs (errno=111) Connection refused\n",
    );
    assert_eq!(
        plain().status_step(&asked, std::slice::from_ref(&down)),
        None
    );
    assert!(matches!(
        plain().parse_status(&asked, std::slice::from_ref(&down)),
        Err(QueueError::Exit { code: Some(1), .. })
    ));
    let done = [fixture("qstat"), down];
    assert!(matches!(
        plain().parse_status(&asked, &done),
        Err(QueueError::Exit { .. })
    ));
    // The wrapper's "unknown job" for plain qstat is exit 153: here it is a failure of the
    // whole listing (plain qstat names no job), not a forgotten job.
    assert!(plain()
        .parse_status(&asked, &[fixture("qstat_unknown")])
        .is_err());
}

#[test]
fn remove_deletes_every_id_with_qdel() {
    let spec = plain()
        .remove_command(&ids(&["10", "1234.pbs.example.org"]))
        .unwrap();
    assert_eq!(spec.program, "qdel");
    assert_eq!(spec.args, ["10", "1234.pbs.example.org"]);
    assert_eq!(plain().remove_command(&[]), None);
    assert_eq!(fixture("qdel").code, Some(0));
}
