//! The slurm plugin against recorded real outputs of Slurm 22.05's tools
//! (tests/fixtures/slurm, see its SOURCES.md): submit files, submit ids, every state mapping,
//! the squeue → scontrol → sacct query, and bad outputs that must be errors, never states.

mod support;

use std::path::Path;

use iceprod_queue::grids::slurm::{Slurm, MAX_SCONTROL_PER_QUERY};
use iceprod_queue::grids::{BatchPlugin, CommandOutput, GridJobState, SubmitJob};
use iceprod_queue::QueueError;
use iceprod_runtime::config::{GridConfig, GridType};
use support::{error, ids, is_parse_error, output, resources};

fn grid(queue: Option<&str>, batchopts: &[(&str, &str)], bin_dir: Option<&str>) -> GridConfig {
    support::grid(GridType::Slurm, queue, batchopts, bin_dir)
}

fn plain() -> Slurm {
    Slurm::new(&grid(None, &[], None))
}

fn job(dir: &str) -> SubmitJob {
    let command = ["/usr/bin/iceprod", "task", "--passkey", "k1"];
    let env = [("ICEPROD_SERVER_URL", "http://site:8080")];
    support::job(
        dir,
        "iceprod.t1",
        &command,
        &env,
        resources(2, 0, 1.5, 10.0, 2.5),
    )
}

/// A recorded output (`NAME.stdout`, `NAME.stderr`, `NAME.exit`) of the tool NAME starts with.
fn fixture(name: &str) -> CommandOutput {
    support::recorded("slurm", name, name.split('_').next().unwrap())
}

#[test]
fn submit_file_asks_for_the_jobs_resources_and_partition() {
    let mut j = job("/srv/submit/t1");
    j.resources.gpu = 1;
    let (name, text) = Slurm::new(&grid(Some("short"), &[], None)).submit_file(&j);
    assert_eq!(name, "job.slurm");
    assert_eq!(
        text,
        "#!/bin/sh\n\
         #SBATCH --job-name=iceprod.t1\n\
         #SBATCH --output=/srv/submit/t1/job.out\n\
         #SBATCH --error=/srv/submit/t1/job.err\n\
         #SBATCH --chdir=/srv/submit/t1\n\
         #SBATCH --ntasks=1\n\
         #SBATCH --cpus-per-task=2\n\
         #SBATCH --mem=1536\n\
         #SBATCH --time=150\n\
         #SBATCH --gres=gpu:1\n\
         #SBATCH --partition=short\n\
         cd /srv/submit/t1\n\
         export ICEPROD_SERVER_URL=http://site:8080\n\
         exec /usr/bin/iceprod task --passkey k1\n"
    );
}

#[test]
fn submit_file_without_gpus_or_partition_leaves_them_out_and_rounds_up() {
    let mut j = job("/srv/submit/t1");
    j.resources.memory = 0.0001;
    j.resources.time = 0.001;
    j.resources.cpu = 0;
    let (_, text) = plain().submit_file(&j);
    assert!(!text.contains("--gres"), "{text}");
    assert!(!text.contains("--partition"), "{text}");
    assert!(text.contains("#SBATCH --mem=1\n"), "{text}");
    assert!(text.contains("#SBATCH --time=1\n"), "{text}");
    assert!(text.contains("#SBATCH --cpus-per-task=1\n"), "{text}");
}

#[test]
fn batchopts_become_long_options_and_empty_values_flags() {
    let slurm = Slurm::new(&grid(
        None,
        &[("account", "icecube"), ("--qos", "high"), ("exclusive", "")],
        None,
    ));
    let (_, text) = slurm.submit_file(&job("/srv/submit/t1"));
    assert!(text.contains("#SBATCH --account=icecube\n"), "{text}");
    assert!(text.contains("#SBATCH --qos=high\n"), "{text}");
    assert!(text.contains("#SBATCH --exclusive\n"), "{text}");
    // The batch options come before the body: sbatch stops reading #SBATCH at the first command.
    assert!(text.find("--exclusive").unwrap() < text.find("\ncd ").unwrap());
}

#[test]
fn hostile_values_are_quoted_for_sbatch_and_the_shell() {
    let slurm = Slurm::new(&grid(None, &[("comment", r#"a b"c#d $HOME\x"#)], None));
    let mut j = job("/srv/sub mit/it's $X 5%");
    j.env = vec![("NOTE".into(), "$(rm -rf /) 'q'".into())];
    let (_, text) = slurm.submit_file(&j);
    // sbatch: blanks grouped by "…", `"`, `\` and `#` escaped; `%` doubled in file patterns.
    assert!(
        text.contains("#SBATCH --output=\"/srv/sub mit/it's $X 5%%/job.out\"\n"),
        "{text}"
    );
    assert!(
        text.contains("#SBATCH --chdir=\"/srv/sub mit/it's $X 5%\"\n"),
        "{text}"
    );
    assert!(
        text.contains(r#"#SBATCH --comment="a b\"c\#d $HOME\\x""#),
        "{text}"
    );
    // The shell body quotes for sh.
    assert!(text.contains(r"cd '/srv/sub mit/it'\''s $X 5%'"), "{text}");
    assert!(
        text.contains(r"export NOTE='$(rm -rf /) '\''q'\'''"),
        "{text}"
    );
}

#[test]
fn submit_runs_sbatch_parsable_in_the_submit_folder_from_bin_dir() {
    let j = job("/srv/submit/t1");
    let spec = plain().submit_command(&j, "job.slurm");
    assert_eq!(spec.program, "sbatch");
    assert_eq!(spec.args, ["--parsable", "job.slurm"]);
    assert_eq!(spec.cwd.as_deref(), Some(Path::new("/srv/submit/t1")));
    let spec = Slurm::new(&grid(None, &[], Some("/opt/slurm/bin"))).submit_command(&j, "x");
    assert_eq!(spec.program, "/opt/slurm/bin/sbatch");
}

#[test]
fn parse_submit_reads_the_recorded_id_and_the_cluster_form() {
    assert_eq!(
        plain().parse_submit(&fixture("sbatch_parsable")).unwrap(),
        ["1"]
    );
    let multi = output("sbatch", 0, "4242;iceprodtest\n", "");
    assert_eq!(plain().parse_submit(&multi).unwrap(), ["4242"]);
}

#[test]
fn parse_submit_rejects_garbage_and_failed_submits() {
    for stdout in [
        "",
        "Submitted batch job 5\n",
        "12x\n",
        "1\n2\n",
        ";cluster\n",
    ] {
        let out = output("sbatch", 0, stdout, "");
        assert!(is_parse_error(plain().parse_submit(&out)), "{stdout:?}");
    }
    match plain().parse_submit(&fixture("sbatch_bad_partition")) {
        Err(QueueError::Exit { code, stderr, .. }) => {
            assert_eq!(code, Some(1));
            assert!(
                stderr.contains("invalid partition specified: nosuch"),
                "{stderr}"
            );
        }
        other => panic!("expected an exit error, got {other:?}"),
    }
}

#[test]
fn status_starts_with_squeue_of_our_user_in_every_state() {
    let spec = plain().status_step(&ids(&["1"]), &[]).unwrap();
    assert_eq!(spec.program, "squeue");
    assert_eq!(spec.args, ["--me", "-h", "-t", "all", "-o", "%i|%T|%r"]);
    assert_eq!(plain().status_step(&[], &[]), None);
    assert!(plain().parse_status(&[], &[]).unwrap().is_empty());
}

#[test]
fn recorded_squeue_maps_every_state_it_lists() {
    let all = ids(&["1", "2", "3", "4", "5", "6", "7", "8"]);
    let outputs = [fixture("squeue_all")];
    // Everything was listed: no scontrol or sacct step.
    assert_eq!(plain().status_step(&all, &outputs), None);
    let status = plain().parse_status(&all, &outputs).unwrap();
    assert_eq!(status["1"], GridJobState::Completed { exit_code: Some(0) });
    assert_eq!(status["2"], error("FAILED (NonZeroExitCode)"));
    assert_eq!(status["3"], error("TIMEOUT (TimeLimit)"));
    assert_eq!(status["4"], GridJobState::Processing);
    assert_eq!(status["5"], GridJobState::Processing);
    assert_eq!(status["6"], error("held (JobHeldUser)"));
    assert_eq!(status["7"], error("cancelled"));
    assert_eq!(status["8"], GridJobState::Queued);
    assert_eq!(status.len(), 8);
}

#[test]
fn squeue_lines_of_jobs_not_asked_about_are_ignored() {
    let status = plain()
        .parse_status(&ids(&["4"]), &[fixture("squeue_all")])
        .unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(status["4"], GridJobState::Processing);
}

#[test]
fn every_slurm_state_maps_as_documented() {
    let cases = [
        ("PENDING", "Priority", GridJobState::Queued),
        ("CONFIGURING", "None", GridJobState::Queued),
        ("REQUEUED", "None", GridJobState::Queued),
        ("REQUEUE_FED", "None", GridJobState::Queued),
        ("PENDING", "JobHeldAdmin", error("held (JobHeldAdmin)")),
        (
            "REQUEUE_HOLD",
            "JobHeldAdmin",
            error("held (REQUEUE_HOLD, JobHeldAdmin)"),
        ),
        ("RESV_DEL_HOLD", "None", error("held (RESV_DEL_HOLD)")),
        ("SPECIAL_EXIT", "None", error("held (SPECIAL_EXIT)")),
        ("RUNNING", "None", GridJobState::Processing),
        ("COMPLETING", "None", GridJobState::Processing),
        ("SIGNALING", "None", GridJobState::Processing),
        ("STAGE_OUT", "None", GridJobState::Processing),
        ("RESIZING", "None", GridJobState::Processing),
        ("SUSPENDED", "None", GridJobState::Processing),
        ("STOPPED", "None", GridJobState::Processing),
        (
            "COMPLETED",
            "None",
            GridJobState::Completed { exit_code: Some(0) },
        ),
        ("CANCELLED", "None", error("cancelled")),
        (
            "FAILED",
            "NonZeroExitCode",
            error("FAILED (NonZeroExitCode)"),
        ),
        ("TIMEOUT", "TimeLimit", error("TIMEOUT (TimeLimit)")),
        ("NODE_FAIL", "NodeDown", error("NODE_FAIL (NodeDown)")),
        (
            "OUT_OF_MEMORY",
            "OutOfMemory",
            error("OUT_OF_MEMORY (OutOfMemory)"),
        ),
        ("BOOT_FAIL", "None", error("BOOT_FAIL")),
        ("DEADLINE", "DeadLine", error("DEADLINE (DeadLine)")),
        ("PREEMPTED", "None", error("PREEMPTED")),
        ("REVOKED", "None", GridJobState::Unknown),
    ];
    for (state, reason, expected) in cases {
        // Lines in squeue's format, built from Slurm's documented state names (the one-node
        // test Slurm cannot reach most of them).
        let out = output("squeue", 0, &format!("77|{state}|{reason}\n"), "");
        let status = plain().parse_status(&ids(&["77"]), &[out]).unwrap();
        assert_eq!(status["77"], expected, "{state} {reason}");
    }
}

#[test]
fn jobs_squeue_did_not_list_are_asked_of_scontrol_then_sacct() {
    let slurm = plain();
    let asked = ids(&["2", "999999"]);
    let mut done = vec![fixture("squeue_empty")];
    let step = slurm.status_step(&asked, &done).unwrap();
    assert_eq!(step.program, "scontrol");
    assert_eq!(step.args, ["show", "job", "-o", "2"]);
    done.push(fixture("scontrol_failed"));
    let step = slurm.status_step(&asked, &done).unwrap();
    assert_eq!(step.args, ["show", "job", "-o", "999999"]);
    done.push(fixture("scontrol_unknown"));
    // Only the job scontrol did not know goes on to sacct.
    let step = slurm.status_step(&asked, &done).unwrap();
    assert_eq!(step.program, "sacct");
    assert_eq!(
        step.args,
        [
            "-n",
            "-P",
            "-X",
            "-o",
            "JobID,State,ExitCode",
            "-j",
            "999999"
        ]
    );
    done.push(fixture("sacct_no_slurmdbd"));
    assert_eq!(slurm.status_step(&asked, &done), None);
    let status = slurm.parse_status(&asked, &done).unwrap();
    assert_eq!(status["2"], error("FAILED (NonZeroExitCode, exit 3)"));
    // Forgotten by the controller, no accounting: left out, not an error.
    assert!(!status.contains_key("999999"));
    assert_eq!(status.len(), 1);
}

#[test]
fn recorded_scontrol_states_carry_exit_codes_and_signals() {
    let cases = [
        (
            "scontrol_completed",
            "1",
            GridJobState::Completed { exit_code: Some(0) },
        ),
        (
            "scontrol_failed",
            "2",
            error("FAILED (NonZeroExitCode, exit 3)"),
        ),
        (
            "scontrol_timeout",
            "3",
            error("TIMEOUT (TimeLimit, signal 15)"),
        ),
        ("scontrol_held", "6", error("held (JobHeldUser)")),
        ("scontrol_cancelled", "7", error("cancelled")),
    ];
    for (name, id, expected) in cases {
        let asked = ids(&[id]);
        let done = [fixture("squeue_empty"), fixture(name)];
        assert_eq!(plain().status_step(&asked, &done), None, "{name}");
        let status = plain().parse_status(&asked, &done).unwrap();
        assert_eq!(status[id], expected, "{name}");
    }
}

#[test]
fn scontrol_of_a_different_job_or_without_a_state_is_a_parse_error() {
    let asked = ids(&["5"]);
    let wrong_job = [fixture("squeue_empty"), fixture("scontrol_failed")];
    assert!(is_parse_error(plain().parse_status(&asked, &wrong_job)));
    let truncated = output(
        "scontrol",
        0,
        "JobId=5 JobName=iceprod.t1 UserId=root(0)",
        "",
    );
    let done = [fixture("squeue_empty"), truncated];
    assert!(is_parse_error(plain().parse_status(&asked, &done)));
    let bad_exit = output("scontrol", 0, "JobId=5 JobState=FAILED ExitCode=x", "");
    let done = [fixture("squeue_empty"), bad_exit];
    assert!(is_parse_error(plain().parse_status(&asked, &done)));
}

#[test]
fn sacct_history_resolves_jobs_the_controller_forgot() {
    let asked = ids(&["40", "41", "42"]);
    let forgotten = || fixture("scontrol_unknown");
    // sacct --parsable2 lines in its documented format (no slurmdbd here to record them).
    let sacct = output(
        "sacct",
        0,
        "40|COMPLETED|0:0\n41|CANCELLED by 0|0:15\n42|FAILED|1:0\n42|COMPLETED|0:0\n",
        "",
    );
    let done = [
        fixture("squeue_empty"),
        forgotten(),
        forgotten(),
        forgotten(),
        sacct,
    ];
    assert_eq!(plain().status_step(&asked, &done), None);
    let status = plain().parse_status(&asked, &done).unwrap();
    assert_eq!(status["40"], GridJobState::Completed { exit_code: Some(0) });
    assert_eq!(status["41"], error("cancelled"));
    // A requeued job's last record is its current one.
    assert_eq!(status["42"], GridJobState::Completed { exit_code: Some(0) });
}

#[test]
fn scontrol_calls_are_bounded_and_the_rest_go_to_sacct() {
    let many: Vec<String> = (100..125).map(|i| i.to_string()).collect();
    let mut done = vec![fixture("squeue_empty")];
    while let Some(step) = plain().status_step(&many, &done) {
        if step.program == "sacct" {
            let list = step.args.last().unwrap();
            assert_eq!(list.split(',').count(), many.len(), "{list}");
            assert_eq!(done.len(), 1 + MAX_SCONTROL_PER_QUERY);
            done.push(fixture("sacct_no_slurmdbd"));
            continue;
        }
        assert_eq!(step.program, "scontrol");
        done.push(fixture("scontrol_unknown"));
    }
    assert_eq!(done.len(), 2 + MAX_SCONTROL_PER_QUERY);
    assert!(plain().parse_status(&many, &done).unwrap().is_empty());
}

#[test]
fn garbage_or_truncated_squeue_output_is_an_error_not_a_state() {
    for stdout in [
        "12|RUNN\n",
        "JOBID PARTITION NAME USER ST TIME\n",
        "12|running|None\n",
        "|RUNNING|None\n",
        "1|COMPLETED|None\n12|RUNNING|None|extra\n",
    ] {
        let out = output("squeue", 0, stdout, "");
        assert!(
            is_parse_error(plain().parse_status(&ids(&["12"]), &[out])),
            "{stdout:?}"
        );
    }
}

#[test]
fn a_failed_step_ends_the_query_with_an_error() {
    let asked = ids(&["1"]);
    // squeue itself failing (the recorded single-id failure stands for any squeue failure).
    let done = [fixture("squeue_unknown_single_id")];
    assert_eq!(plain().status_step(&asked, &done), None);
    assert!(matches!(
        plain().parse_status(&asked, &done),
        Err(QueueError::Exit { code: Some(1), .. })
    ));
    // scontrol failing for another reason than a forgotten job.
    let down = output(
        "scontrol",
        1,
        "",
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
    );
    let done = [fixture("squeue_empty"), down];
    assert_eq!(plain().status_step(&asked, &done), None);
    match plain().parse_status(&asked, &done) {
        Err(QueueError::Exit { stderr, .. }) => assert!(stderr.contains("Unable to contact")),
        other => panic!("expected an exit error, got {other:?}"),
    }
    // sacct failing although accounting is configured.
    let dbd_down = output(
        "sacct",
        1,
        "",
        "sacct: error: Problem talking to the database: Connection refused\n",
    );
    let done = [
        fixture("squeue_empty"),
        fixture("scontrol_unknown"),
        dbd_down,
    ];
    assert!(matches!(
        plain().parse_status(&asked, &done),
        Err(QueueError::Exit { .. })
    ));
    // An unfinished query is not a result.
    assert!(plain()
        .parse_status(&asked, &[fixture("squeue_empty")])
        .is_err());
}

#[test]
fn remove_cancels_every_id_with_scancel() {
    let spec = plain().remove_command(&ids(&["4", "8"])).unwrap();
    assert_eq!(spec.program, "scancel");
    assert_eq!(spec.args, ["4", "8"]);
    assert_eq!(plain().remove_command(&[]), None);
    let spec = Slurm::new(&grid(None, &[], Some("/opt/slurm/bin")))
        .remove_command(&ids(&["4"]))
        .unwrap();
    assert_eq!(spec.program, "/opt/slurm/bin/scancel");
    // scancel of a job Slurm no longer knows exits 0 (recorded): nothing to parse.
    assert_eq!(fixture("scancel_unknown").code, Some(0));
}
