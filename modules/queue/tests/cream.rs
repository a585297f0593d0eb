//! The cream plugin against recorded and documented outputs of the gLite CREAM CLI
//! (`tests/fixtures/cream/`, provenance in its `SOURCES.md`).

mod support;

use std::path::PathBuf;

use iceprod_queue::grids::cream::{self, Cream};
use iceprod_queue::grids::{BatchPlugin, CommandOutput, GridJobState, SubmitJob};
use iceprod_queue::QueueError;
use iceprod_runtime::config::{GridConfig, GridType};
use support::{ids, resources};

const ENDPOINT: &str = "ce.example.org:8443/cream-pbs-icecube";

fn fixture(name: &str) -> String {
    support::fixture_text("cream", name)
}

fn grid(batchopts: &[(&str, &str)], bin_dir: Option<&str>) -> GridConfig {
    GridConfig {
        endpoint: Some(ENDPOINT.into()),
        ..support::grid(GridType::Cream, None, batchopts, bin_dir)
    }
}

fn job(command: &[&str], env: &[(&str, &str)], gpu: u32) -> SubmitJob {
    let asks = resources(4, gpu, 2.0, 10.0, 2.0);
    support::job(
        "/srv/iceprod/submit/task2",
        "iceprod.task2",
        command,
        env,
        asks,
    )
}

/// What glite-ce-job-status printed.
fn output(code: i32, stdout: &str, stderr: &str) -> CommandOutput {
    support::output("glite-ce-job-status", code, stdout, stderr)
}

fn attr<'a>(jdl: &'a str, key: &str) -> Option<&'a str> {
    jdl.lines().find_map(|l| {
        l.trim()
            .strip_prefix(&format!("{key} = "))
            .and_then(|v| v.strip_suffix(';'))
    })
}

#[test]
fn jdl_names_the_executable_outputs_and_resources() {
    let plugin = Cream::new(&grid(&[], None));
    let (name, jdl) = plugin.submit_file(&job(&["/opt/iceprod/bin/iceprod", "task"], &[], 0));
    assert_eq!(name, cream::SUBMIT_FILE);
    assert!(jdl.starts_with("[\n") && jdl.ends_with("]\n"), "{jdl}");
    assert_eq!(
        attr(&jdl, "Executable"),
        Some("\"/opt/iceprod/bin/iceprod\"")
    );
    assert_eq!(attr(&jdl, "Arguments"), Some("\"task\""));
    assert_eq!(attr(&jdl, "StdOutput"), Some("\"job.out\""));
    assert_eq!(attr(&jdl, "StdError"), Some("\"job.err\""));
    assert_eq!(
        attr(&jdl, "OutputSandbox"),
        Some("{\"job.out\", \"job.err\"}")
    );
    assert_eq!(attr(&jdl, "CpuNumber"), Some("4"));
    assert_eq!(attr(&jdl, "SMPGranularity"), Some("4"));
    assert_eq!(attr(&jdl, "GPUNumber"), None);
    let req = attr(&jdl, "CERequirements").unwrap();
    assert!(req.contains("GlueHostMainMemoryRAMSize >= 2048"), "{req}");
    assert!(req.contains("GlueCEPolicyMaxWallClockTime >= 120"), "{req}");
}

#[test]
fn jdl_has_gpus_environment_and_every_batchopt() {
    let plugin = Cream::new(&grid(
        &[
            ("VirtualOrganisation", "\"icecube\""),
            ("PerusalFileEnable", "false"),
        ],
        None,
    ));
    let (_, jdl) = plugin.submit_file(&job(&["/bin/x"], &[("A", "1"), ("B", "x \"y\"")], 2));
    assert_eq!(attr(&jdl, "GPUNumber"), Some("2"));
    assert_eq!(
        attr(&jdl, "Environment"),
        Some("{\"A=1\", \"B=x \\\"y\\\"\"}")
    );
    assert_eq!(attr(&jdl, "VirtualOrganisation"), Some("\"icecube\""));
    assert_eq!(attr(&jdl, "PerusalFileEnable"), Some("false"));
}

#[test]
fn hostile_arguments_are_shell_quoted_then_classad_escaped() {
    let plugin = Cream::new(&grid(&[], None));
    let (_, jdl) = plugin.submit_file(&job(
        &[
            "/bin/x",
            "two words",
            "it's",
            "$HOME",
            "a\"b",
            "line1\nline2",
            "back\\slash",
        ],
        &[],
        0,
    ));
    let args = attr(&jdl, "Arguments").unwrap();
    assert_eq!(
        args,
        r#""'two words' 'it'\\''s' '$HOME' 'a\"b' 'line1\nline2' 'back\\slash'""#
    );
    assert_eq!(jdl.lines().filter(|l| l.contains("Arguments")).count(), 1);
    assert!(
        !jdl.contains("line1\nline2"),
        "a raw newline would end the attribute"
    );
}

#[test]
fn submit_is_glite_ce_job_submit_with_delegation_to_the_endpoint() {
    let plugin = Cream::new(&grid(&[], Some("/usr/local/glite/bin")));
    let spec = plugin.submit_command(&job(&["/bin/x"], &[], 0), cream::SUBMIT_FILE);
    assert_eq!(spec.program, "/usr/local/glite/bin/glite-ce-job-submit");
    assert_eq!(spec.args, vec!["-a", "-r", ENDPOINT, cream::SUBMIT_FILE]);
    assert_eq!(spec.cwd, Some(PathBuf::from("/srv/iceprod/submit/task2")));
}

#[test]
fn parse_submit_reads_the_job_url_from_recorded_outputs() {
    let plugin = Cream::new(&grid(&[], None));
    let plain = CommandOutput {
        program: "glite-ce-job-submit".into(),
        code: Some(0),
        stdout: fixture("glite-ce-job-submit.stdout"),
        stderr: String::new(),
    };
    assert_eq!(
        plugin.parse_submit(&plain).unwrap(),
        ids(&["https://kek2-ce01.cc.kek.jp:8443/CREAM162280538"])
    );
    let debug = CommandOutput {
        stdout: fixture("glite-ce-job-submit_debug.stdout"),
        ..plain.clone()
    };
    assert_eq!(
        plugin.parse_submit(&debug).unwrap(),
        ids(&["https://grid-cr0.desy.de:8443/CREAM347851832"])
    );
}

#[test]
fn parse_submit_refuses_garbage_and_failures() {
    let plugin = Cream::new(&grid(&[], None));
    for bad in ["", "CREAM123\n", "https://host:8443/notcream\n"] {
        let out = CommandOutput {
            program: "glite-ce-job-submit".into(),
            code: Some(0),
            stdout: bad.into(),
            stderr: String::new(),
        };
        assert!(
            matches!(plugin.parse_submit(&out), Err(QueueError::Parse { .. })),
            "{bad:?}"
        );
    }
    let failed = CommandOutput {
        program: "glite-ce-job-submit".into(),
        code: Some(1),
        stdout: String::new(),
        stderr: "ERROR - Received NULL fault; the error is due to another cause\n".into(),
    };
    assert!(matches!(
        plugin.parse_submit(&failed),
        Err(QueueError::Exit { .. })
    ));
}

#[test]
fn status_is_one_glite_ce_job_status_call() {
    let plugin = Cream::new(&grid(&[], None));
    let asked = ids(&["https://a:8443/CREAM1", "https://a:8443/CREAM2"]);
    let spec = plugin.status_step(&asked, &[]).unwrap();
    assert_eq!(spec.program, "glite-ce-job-status");
    assert_eq!(spec.args, vec!["-L", "0", &asked[0], &asked[1]]);
    assert_eq!(plugin.status_step(&asked, &[output(0, "", "")]), None);
    assert_eq!(plugin.status_step(&[], &[]), None);
}

#[test]
fn recorded_running_and_done_ok_blocks_map_to_processing_and_completed() {
    let plugin = Cream::new(&grid(&[], None));
    let running = "https://grid-cr0.desy.de:8443/CREAM347851832".to_string();
    let got = plugin
        .parse_status(
            std::slice::from_ref(&running),
            &[output(
                0,
                &fixture("glite-ce-job-status_really_running.stdout"),
                "",
            )],
        )
        .unwrap();
    assert_eq!(got[&running], GridJobState::Processing);
    let done = "https://cream-41.pd.infn.it:8443/CREAM446576112".to_string();
    let got = plugin
        .parse_status(
            std::slice::from_ref(&done),
            &[output(
                0,
                &fixture("glite-ce-job-status_done_ok.stdout"),
                "",
            )],
        )
        .unwrap();
    assert_eq!(got[&done], GridJobState::Completed { exit_code: Some(0) });
}

#[test]
fn failed_aborted_cancelled_and_idle_jobs_keep_their_reasons() {
    let plugin = Cream::new(&grid(&[], None));
    let asked: Vec<String> = (1..=5)
        .map(|n| format!("https://ce.example.org:8443/CREAM00000000{n}"))
        .collect();
    let got = plugin
        .parse_status(
            &asked,
            &[output(
                0,
                &fixture("glite-ce-job-status_failed.documented.stdout"),
                "",
            )],
        )
        .unwrap();
    assert_eq!(
        got[&asked[0]],
        GridJobState::Error {
            reason: "Job exited with a non-zero exit code".into()
        }
    );
    assert_eq!(
        got[&asked[1]],
        GridJobState::Error {
            reason: "BLAH error: submission command failed (exit code = 1)".into()
        }
    );
    assert_eq!(
        got[&asked[2]],
        GridJobState::Error {
            reason: "cancelled".into()
        }
    );
    assert_eq!(got[&asked[3]], GridJobState::Queued);
    assert!(!got.contains_key(&asked[4]), "a job not listed is left out");
}

#[test]
fn every_cream_state_has_its_grid_state() {
    let plugin = Cream::new(&grid(&[], None));
    let cases = [
        ("REGISTERED", GridJobState::Queued),
        ("PENDING", GridJobState::Queued),
        ("IDLE", GridJobState::Queued),
        ("RUNNING", GridJobState::Processing),
        ("REALLY-RUNNING", GridJobState::Processing),
        ("DONE-OK", GridJobState::Completed { exit_code: None }),
        (
            "DONE-FAILED",
            GridJobState::Error {
                reason: "done-failed".into(),
            },
        ),
        (
            "ABORTED",
            GridJobState::Error {
                reason: "aborted".into(),
            },
        ),
        (
            "HELD",
            GridJobState::Error {
                reason: "held".into(),
            },
        ),
        ("UNKNOWN", GridJobState::Unknown),
    ];
    let id = "https://h:8443/CREAM1".to_string();
    for (state, want) in cases {
        let text = format!("\n******  JobID=[{id}]\n\tStatus        = [{state}]\n\n");
        let got = plugin
            .parse_status(std::slice::from_ref(&id), &[output(0, &text, "")])
            .unwrap();
        assert_eq!(got[&id], want, "{state}");
    }
}

#[test]
fn garbage_truncated_and_failed_outputs_are_errors() {
    let plugin = Cream::new(&grid(&[], None));
    let id = "https://cream-41.pd.infn.it:8443/CREAM446576112".to_string();
    let full = fixture("glite-ce-job-status_done_ok.stdout");
    let cut = &full[..full.find("DONE-O").unwrap() + 6];
    for bad in [
        "Segmentation fault\n",
        cut,
        "\tStatus        = [DONE-OK]\n",
        "******  JobID=[https://h:8443/CREAM1]\n\tExitCode      = [0]\n",
        "******  JobID=[https://h:8443/CREAM1]\n\tStatus = [DONE-OK]\n\tExitCode = [x]\n",
    ] {
        let got = plugin.parse_status(std::slice::from_ref(&id), &[output(0, bad, "")]);
        assert!(
            matches!(got, Err(QueueError::Parse { .. })),
            "{bad:?}: {got:?}"
        );
    }
    let failed = plugin.parse_status(
        std::slice::from_ref(&id),
        &[output(
            1,
            "",
            "ERROR - Failed to connect to the CREAM service\n",
        )],
    );
    assert!(matches!(failed, Err(QueueError::Exit { .. })), "{failed:?}");
    let stopped = plugin.parse_status(&[id], &[]);
    assert!(matches!(stopped, Err(QueueError::Parse { .. })));
}

#[test]
fn unknown_job_messages_leave_the_job_out() {
    let plugin = Cream::new(&grid(&[], None));
    let known = "https://cream-41.pd.infn.it:8443/CREAM446576112".to_string();
    let gone = "https://cream-41.pd.infn.it:8443/CREAM999999999".to_string();
    let got = plugin
        .parse_status(
            &[known.clone(), gone.clone()],
            &[output(
                1,
                &fixture("glite-ce-job-status_done_ok.stdout"),
                "2024-01-01 10:00:00,000 ERROR - JobID [CREAM999999999] not found\n",
            )],
        )
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[&known], GridJobState::Completed { exit_code: Some(0) });
}

#[test]
fn an_empty_answer_means_no_job_known() {
    let plugin = Cream::new(&grid(&[], None));
    let got = plugin
        .parse_status(&ids(&["https://h:8443/CREAM1"]), &[output(0, "\n", "")])
        .unwrap();
    assert!(got.is_empty());
}

#[test]
fn remove_is_glite_ce_job_cancel_without_prompting() {
    let plugin = Cream::new(&grid(&[], None));
    let asked = ids(&["https://h:8443/CREAM1", "https://h:8443/CREAM2"]);
    let spec = plugin.remove_command(&asked).unwrap();
    assert_eq!(spec.program, "glite-ce-job-cancel");
    assert_eq!(spec.args, vec!["-N", &asked[0], &asked[1]]);
    assert_eq!(plugin.remove_command(&[]), None);
}

#[test]
fn recorded_cancelled_idle_and_prod_ce_blocks_map_to_their_states() {
    let plugin = Cream::new(&grid(&[], None));
    let status = |name: &str, id: &str| {
        let id = id.to_string();
        let got = plugin
            .parse_status(std::slice::from_ref(&id), &[output(0, &fixture(name), "")])
            .unwrap();
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        got[&id].clone()
    };
    // Cancelled by the user: `ExitCode = []` (no code) and a Description.
    assert_eq!(
        status(
            "glite-ce-job-status_cancelled.stdout",
            "https://cream-41.pd.infn.it:8443/CREAM076606856"
        ),
        GridJobState::Error {
            reason: "cancelled".into()
        }
    );
    assert_eq!(
        status(
            "glite-ce-job-status_idle.stdout",
            "https://prod-ce-01.pd.infn.it:8443/CREAM160637101"
        ),
        GridJobState::Queued
    );
    assert_eq!(
        status(
            "glite-ce-job-status_done_ok_prod-ce-01.stdout",
            "https://prod-ce-01.pd.infn.it:8443/CREAM160637101"
        ),
        GridJobState::Completed { exit_code: Some(0) }
    );
    assert_eq!(
        status(
            "glite-ce-job-status_really_running_prod-ce-01.stdout",
            "https://prod-ce-01.pd.infn.it:8443/CREAM608273414"
        ),
        GridJobState::Processing
    );
}

#[test]
fn parse_submit_reads_the_recorded_prod_ce_debug_output() {
    let plugin = Cream::new(&grid(&[], None));
    let out = CommandOutput {
        program: "glite-ce-job-submit".into(),
        code: Some(0),
        stdout: fixture("glite-ce-job-submit_debug_prod-ce-01.stdout"),
        stderr: String::new(),
    };
    assert_eq!(
        plugin.parse_submit(&out).unwrap(),
        ids(&["https://prod-ce-01.pd.infn.it:8443/CREAM067861520"])
    );
}

/// The CREAM user guide's DONE-FAILED example shows `ExitCode = [N/A]` (the guide's layout is
/// not byte-exact, see SOURCES.md): the value is no exit code, not garbage.
#[test]
fn an_exit_code_of_n_a_is_no_exit_code() {
    let plugin = Cream::new(&grid(&[], None));
    let id = "https://h:8443/CREAM1".to_string();
    let text = format!(
        "\n******  JobID=[{id}]\n\tStatus        = [DONE-FAILED]\n\tExitCode      = [N/A]\n\tFailureReason = [lsf_reason=256]\n\n\n"
    );
    let got = plugin
        .parse_status(std::slice::from_ref(&id), &[output(0, &text, "")])
        .unwrap();
    assert_eq!(
        got[&id],
        GridJobState::Error {
            reason: "lsf_reason=256".into()
        }
    );
}

/// What `glite-ce-job-status -L 1` prints (its JobInfo layout, from the tool's source): the
/// plugin asks for `-L 0` and does not read this layout; it must be an error, never a state.
#[test]
fn the_verbose_layout_is_refused() {
    let plugin = Cream::new(&grid(&[], None));
    let id = "https://h:8443/CREAM1".to_string();
    let text = format!(
        "\n******  JobID=[{id}]\n\tCurrent Status = [DONE-OK]\n\tExitCode       = [0]\n\n\tJob status changes:\n\t-------------------\n"
    );
    assert!(support::is_parse_error(plugin.parse_status(
        std::slice::from_ref(&id),
        &[output(0, &text, "")]
    )));
}
