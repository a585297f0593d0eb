//! The condor plugin against recorded and documented outputs of the HTCondor tools
//! (`tests/fixtures/condor/`, provenance in its `SOURCES.md`).

mod support;

use std::path::{Path, PathBuf};

use iceprod_queue::grids::condor::{self, Condor};
use iceprod_queue::grids::{BatchPlugin, GridJobState, SubmitJob};
use iceprod_queue::QueueError;
use iceprod_runtime::config::{GridConfig, GridType};
use support::{ids, output, resources};

fn fixture(name: &str) -> String {
    support::fixture_text("condor", name)
}

fn grid(batchopts: &[(&str, &str)], bin_dir: Option<&str>) -> GridConfig {
    support::grid(GridType::Condor, None, batchopts, bin_dir)
}

fn job(command: &[&str], env: &[(&str, &str)], gpu: u32, count: u32) -> SubmitJob {
    let dir = "/srv/iceprod/submit/task1";
    let asks = resources(2, gpu, 1.5, 2.0, 1.25);
    SubmitJob {
        count,
        ..support::job(dir, "iceprod.task1", command, env, asks)
    }
}

fn line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
}

#[test]
fn submit_file_asks_for_the_resources_and_keeps_outputs_in_the_submit_folder() {
    let plugin = Condor::new(&grid(&[], None));
    let (name, text) = plugin.submit_file(&job(&["/opt/iceprod/bin/iceprod", "task"], &[], 0, 1));
    assert_eq!(name, condor::SUBMIT_FILE);
    assert_eq!(line(&text, "universe"), Some("vanilla"));
    assert_eq!(line(&text, "executable"), Some("/opt/iceprod/bin/iceprod"));
    assert_eq!(line(&text, "arguments"), Some("\"task\""));
    assert_eq!(line(&text, "initialdir"), Some("/srv/iceprod/submit/task1"));
    assert_eq!(
        line(&text, "output"),
        Some("/srv/iceprod/submit/task1/job.out")
    );
    assert_eq!(
        line(&text, "error"),
        Some("/srv/iceprod/submit/task1/job.err")
    );
    assert_eq!(
        line(&text, "log"),
        Some("/srv/iceprod/submit/task1/job.log")
    );
    assert_eq!(line(&text, "request_cpus"), Some("2"));
    assert_eq!(line(&text, "request_memory"), Some("1536"));
    assert_eq!(line(&text, "request_disk"), Some("2097152"));
    assert_eq!(line(&text, "+MaxWallTimeMins"), Some("75"));
    assert_eq!(line(&text, "should_transfer_files"), Some("IF_NEEDED"));
    assert_eq!(line(&text, "when_to_transfer_output"), Some("ON_EXIT"));
    assert_eq!(
        line(&text, "request_gpus"),
        None,
        "no gpus asked: no request_gpus"
    );
    assert!(text.ends_with("queue 1\n"), "{text}");
}

#[test]
fn submit_file_queues_one_proc_per_pilot_and_asks_for_gpus() {
    let plugin = Condor::new(&grid(&[], None));
    let (_, text) = plugin.submit_file(&job(&["/bin/pilot"], &[], 1, 7));
    assert_eq!(line(&text, "request_gpus"), Some("1"));
    assert_eq!(line(&text, "arguments"), None);
    assert!(text.ends_with("queue 7\n"), "{text}");
}

#[test]
fn submit_file_writes_every_batchopt_after_the_defaults_so_they_win() {
    let plugin = Condor::new(&grid(
        &[
            ("requirements", "OpSysMajorVer == 9"),
            ("+AccountingGroup", "\"group_icecube.prod\""),
            ("request_memory", "4096"),
        ],
        None,
    ));
    let (_, text) = plugin.submit_file(&job(&["/bin/true"], &[], 0, 1));
    assert!(
        text.contains("requirements = OpSysMajorVer == 9\n"),
        "{text}"
    );
    assert!(
        text.contains("+AccountingGroup = \"group_icecube.prod\"\n"),
        "{text}"
    );
    let ours = text.find("request_memory = 1536").expect("default memory");
    let theirs = text.find("request_memory = 4096").expect("batchopt memory");
    assert!(
        ours < theirs,
        "a batchopt must come after the default it overrides"
    );
    assert!(text.ends_with("queue 1\n"), "queue stays last: {text}");
}

#[test]
fn arguments_and_environment_use_the_new_quoting_and_escape_macros() {
    let plugin = Condor::new(&grid(&[], None));
    let command = [
        "/bin/iceprod",
        "two words",
        "it's",
        "say \"hi\"",
        "$HOME",
        "$(Cluster)",
        "",
    ];
    let env = [("URL", "https://x/a b"), ("Q", "it's $x")];
    let (_, text) = plugin.submit_file(&job(&command, &env, 0, 1));
    assert_eq!(
        line(&text, "arguments"),
        Some("\"'two words' 'it''s' 'say \"\"hi\"\"' $(DOLLAR)HOME $(DOLLAR)(Cluster) ''\"")
    );
    assert_eq!(
        line(&text, "environment"),
        Some("\"URL='https://x/a b' Q='it''s $(DOLLAR)x'\"")
    );
    assert_eq!(text.lines().count(), text.split('\n').count() - 1);
}

#[test]
fn newlines_in_arguments_go_through_a_decoding_shell_and_never_break_the_file() {
    let plugin = Condor::new(&grid(&[], None));
    let (_, text) = plugin.submit_file(&job(
        &["/bin/iceprod", "line1\nline2", "back\\slash"],
        &[("MULTI", "a\nb")],
        0,
        1,
    ));
    assert_eq!(line(&text, "executable"), Some(condor::SH));
    assert_eq!(line(&text, "environment"), None);
    let args = line(&text, "arguments").expect("arguments");
    assert!(
        args.contains("'MULTI=a\\nb'") || args.contains("MULTI=a\\nb"),
        "{args}"
    );
    assert!(args.contains("line1\\nline2"), "{args}");
    assert!(args.contains("back\\\\slash"), "{args}");
    assert!(!args.contains('$') || !args.replace("$(DOLLAR)", "").contains('$'));
    // Every line of the file is `key = value`, a comment or `queue`.
    for l in text.lines() {
        assert!(
            l.starts_with('#') || l.contains(" = ") || l.starts_with("queue "),
            "{l:?}"
        );
    }
}

#[test]
fn decoding_shell_runs_the_exact_argv_and_environment() {
    // The wrapper's script, run by a real /bin/sh with the words the submit file carries.
    let words = [
        "/usr/bin/env",
        "MULTI=a\\nb",
        "/bin/sh",
        "-c",
        "printf '%s|' \"$MULTI\" \"$0\" \"$1\"",
        "x\\ny",
        "t\\\\n ",
    ];
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(condor::SH_DECODE)
        .arg("iceprod")
        .args(words)
        .output()
        .expect("run /bin/sh");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb|x\ny|t\\n |");
}

#[test]
fn submit_command_is_terse_condor_submit_in_the_submit_folder_from_bin_dir() {
    let plugin = Condor::new(&grid(&[], Some("/opt/condor/bin")));
    let spec = plugin.submit_command(&job(&["/bin/true"], &[], 0, 1), condor::SUBMIT_FILE);
    assert_eq!(spec.program, "/opt/condor/bin/condor_submit");
    assert_eq!(spec.args, vec!["-terse", condor::SUBMIT_FILE]);
    assert_eq!(spec.cwd, Some(PathBuf::from("/srv/iceprod/submit/task1")));
    let bare = Condor::new(&grid(&[], None)).submit_command(&job(&["/bin/true"], &[], 0, 1), "f");
    assert_eq!(bare.program, "condor_submit");
}

#[test]
fn parse_submit_reads_the_recorded_normal_output() {
    let plugin = Condor::new(&grid(&[], None));
    let got = plugin
        .parse_submit(&output(
            "condor_submit",
            0,
            &fixture("condor_submit.stdout"),
            "",
        ))
        .unwrap();
    assert_eq!(got, ids(&["19.0"]));
    let many = plugin
        .parse_submit(&output(
            "condor_submit",
            0,
            &fixture("condor_submit_100.stdout"),
            "",
        ))
        .unwrap();
    assert_eq!(many.len(), 100);
    assert_eq!(many[0], "837.0");
    assert_eq!(many[99], "837.99");
}

#[test]
fn parse_submit_reads_terse_ranges() {
    let plugin = Condor::new(&grid(&[], None));
    let got = plugin
        .parse_submit(&output(
            "condor_submit",
            0,
            &fixture("condor_submit_terse.documented.stdout"),
            "",
        ))
        .unwrap();
    assert_eq!(got, ids(&["123.0", "123.1", "123.2"]));
}

#[test]
fn parse_submit_refuses_garbage_nothing_and_failures() {
    let plugin = Condor::new(&grid(&[], None));
    for bad in [
        "",
        "hello world\n",
        "123.x - 123.2\n",
        "1 job(s) submitted to cluster .\n",
    ] {
        let got = plugin.parse_submit(&output("condor_submit", 0, bad, ""));
        assert!(
            matches!(got, Err(QueueError::Parse { .. })),
            "{bad:?}: {got:?}"
        );
    }
    let failed = plugin.parse_submit(&output(
        "condor_submit",
        1,
        "",
        "ERROR: Can't find address of local schedd\n",
    ));
    assert!(
        matches!(failed, Err(QueueError::Exit { code: Some(1), .. })),
        "{failed:?}"
    );
}

#[test]
fn status_asks_condor_q_for_the_clusters_then_history_for_the_rest() {
    let plugin = Condor::new(&grid(&[], None));
    let asked = ids(&["1042.0", "1042.1", "1042.2", "1042.5", "1042.9", "77.0"]);
    let first = plugin.status_step(&asked, &[]).expect("condor_q");
    assert_eq!(first.program, "condor_q");
    assert_eq!(first.args[0], "-json");
    assert_eq!(&first.args[3..], &["1042", "77"]);
    let q = output("condor_q", 0, &fixture("condor_q.documented.json"), "");
    let second = plugin
        .status_step(&asked, std::slice::from_ref(&q))
        .expect("condor_history");
    assert_eq!(second.program, "condor_history");
    let constraint = second.args.last().unwrap();
    assert!(
        constraint.contains("(ClusterId == 1042 && ProcId == 5)"),
        "{constraint}"
    );
    assert!(
        constraint.contains("(ClusterId == 77 && ProcId == 0)"),
        "{constraint}"
    );
    assert!(
        !constraint.contains("ProcId == 1)"),
        "listed ids are not asked again"
    );
    let limit = second.args.iter().position(|a| a == "-limit").unwrap();
    assert_eq!(second.args[limit + 1], "3");
    let h = output(
        "condor_history",
        0,
        &fixture("condor_history.documented.json"),
        "",
    );
    assert_eq!(plugin.status_step(&asked, &[q, h]), None);
}

#[test]
fn status_maps_every_job_status_and_keeps_the_hold_reason() {
    let plugin = Condor::new(&grid(&[], None));
    let asked: Vec<String> = (0..9).map(|p| format!("1042.{p}")).collect();
    let outputs = [
        output("condor_q", 0, &fixture("condor_q.documented.json"), ""),
        output(
            "condor_history",
            0,
            &fixture("condor_history.documented.json"),
            "",
        ),
    ];
    let got = plugin.parse_status(&asked, &outputs).unwrap();
    assert_eq!(got["1042.0"], GridJobState::Queued);
    assert_eq!(got["1042.1"], GridJobState::Processing);
    assert_eq!(
        got["1042.2"],
        GridJobState::Error {
            reason: "Error from slot1@worker1.example.org: Job has gone over cgroup memory limit of 2048 megabytes.".into()
        }
    );
    assert_eq!(
        got["1042.3"],
        GridJobState::Processing,
        "transferring output"
    );
    assert_eq!(got["1042.4"], GridJobState::Queued, "suspended");
    assert_eq!(
        got["1042.5"],
        GridJobState::Completed { exit_code: Some(0) }
    );
    assert_eq!(
        got["1042.6"],
        GridJobState::Completed { exit_code: Some(3) }
    );
    assert!(
        matches!(&got["1042.7"], GridJobState::Error { reason } if reason.starts_with("removed")),
        "{:?}",
        got["1042.7"]
    );
    assert!(
        !got.contains_key("1042.8"),
        "a job condor never heard of is left out"
    );
    assert_eq!(got.len(), 8);
}

#[test]
fn jobs_not_asked_about_are_ignored() {
    let plugin = Condor::new(&grid(&[], None));
    let asked = ids(&["1042.1"]);
    let q = output("condor_q", 0, &fixture("condor_q.documented.json"), "");
    assert_eq!(plugin.status_step(&asked, std::slice::from_ref(&q)), None);
    let got = plugin.parse_status(&asked, &[q]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got["1042.1"], GridJobState::Processing);
}

#[test]
fn an_empty_queue_and_empty_history_mean_no_job_known() {
    let plugin = Condor::new(&grid(&[], None));
    let asked = ids(&["5.0"]);
    for empty in ["", "\n", "[]\n"] {
        let outputs = [
            output("condor_q", 0, empty, ""),
            output("condor_history", 0, empty, ""),
        ];
        let got = plugin.parse_status(&asked, &outputs).unwrap();
        assert!(got.is_empty(), "{empty:?}: {got:?}");
    }
}

#[test]
fn garbage_truncated_or_failed_status_output_is_an_error_never_a_state() {
    let plugin = Condor::new(&grid(&[], None));
    let asked = ids(&["1042.0"]);
    let full = fixture("condor_q.documented.json");
    let truncated = &full[..full.len() / 2];
    for bad in [
        "-- Schedd: submit.example.org : <10.0.0.1:9618?...\n",
        truncated,
        "{\"ClusterId\": 1042, \"ProcId\": 0, \"JobStatus\": 1}",
        "[{\"ClusterId\": 1042, \"ProcId\": 0}]",
        "[{\"ClusterId\": \"x\", \"ProcId\": 0, \"JobStatus\": 1}]",
    ] {
        let got = plugin.parse_status(&asked, &[output("condor_q", 0, bad, "")]);
        assert!(
            matches!(got, Err(QueueError::Parse { .. })),
            "{bad:?}: {got:?}"
        );
        assert_eq!(
            plugin.status_step(&asked, &[output("condor_q", 0, bad, "")]),
            None
        );
    }
    let failed = output(
        "condor_q",
        1,
        "",
        "-- Failed to fetch ads from: <10.0.0.1:9618> : submit.example.org\n",
    );
    assert!(matches!(
        plugin.parse_status(&asked, &[failed]),
        Err(QueueError::Exit { code: Some(1), .. })
    ));
    let q_empty = output("condor_q", 0, "", "");
    let history_failed = output("condor_history", 2, "", "boom");
    assert!(matches!(
        plugin.parse_status(&asked, &[q_empty, history_failed]),
        Err(QueueError::Exit { code: Some(2), .. })
    ));
}

#[test]
fn a_status_query_that_stopped_early_is_an_error() {
    let plugin = Condor::new(&grid(&[], None));
    let got = plugin.parse_status(&ids(&["5.0"]), &[]);
    assert!(matches!(got, Err(QueueError::Parse { .. })), "{got:?}");
}

#[test]
fn history_is_asked_in_bounded_chunks() {
    let plugin = Condor::new(&grid(&[], None));
    let n = condor::MAX_HISTORY_IDS * (condor::MAX_HISTORY_QUERIES + 1);
    let asked: Vec<String> = (0..n).map(|p| format!("9.{p}")).collect();
    let mut outputs = vec![output("condor_q", 0, "", "")];
    while let Some(step) = plugin.status_step(&asked, &outputs) {
        assert_eq!(step.program, "condor_history");
        let limit = step.args.iter().position(|a| a == "-limit").unwrap();
        assert_eq!(step.args[limit + 1], condor::MAX_HISTORY_IDS.to_string());
        outputs.push(output("condor_history", 0, "", ""));
    }
    assert_eq!(outputs.len(), 1 + condor::MAX_HISTORY_QUERIES);
    assert!(plugin.parse_status(&asked, &outputs).unwrap().is_empty());
}

#[test]
fn no_ids_no_commands() {
    let plugin = Condor::new(&grid(&[], None));
    assert_eq!(plugin.status_step(&[], &[]), None);
    assert!(plugin.parse_status(&[], &[]).unwrap().is_empty());
    assert_eq!(plugin.remove_command(&[]), None);
}

#[test]
fn remove_is_condor_rm_of_the_ids() {
    let plugin = Condor::new(&grid(&[], Some("/opt/condor/bin")));
    let spec = plugin.remove_command(&ids(&["1042.0", "1042.1"])).unwrap();
    assert_eq!(spec.program, "/opt/condor/bin/condor_rm");
    assert_eq!(spec.args, vec!["1042.0", "1042.1"]);
    // What condor_rm prints is not read; the fixture documents its shape.
    assert!(fixture("condor_rm.documented.stdout").contains("1042.0"));
}

/// Checks a generated submit file with the HTCondor Python bindings when they are installed
/// (`pip install htcondor`); skipped (with a note) otherwise, so CI does not depend on PyPI.
#[test]
fn generated_submit_files_parse_with_the_htcondor_bindings_when_installed() {
    let python = std::env::var("ICEPROD_HTCONDOR_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import htcondor2"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!("skipped: {python} cannot import htcondor2 (pip install htcondor)");
        return;
    }
    let plugin = Condor::new(&grid(&[("+AccountingGroup", "\"group_icecube\"")], None));
    let (_, text) = plugin.submit_file(&job(
        &[
            "/bin/iceprod",
            "two words",
            "it's",
            "$(Cluster)",
            "say \"hi\"",
        ],
        &[("Q", "$x y")],
        1,
        3,
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("iceprod.submit");
    std::fs::write(&file, &text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_submit.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["queue"], 3);
    assert_eq!(
        got["arguments"],
        "\"'two words' 'it''s' $(Cluster) 'say \"\"hi\"\"'\""
    );
    assert_eq!(got["environment"], "\"Q='$x y'\"");
    assert_eq!(got["request_gpus"], "1");
    // The bindings name `+ATTR` lines `MY.ATTR`.
    let custom = got
        .get("MY.AccountingGroup")
        .or(got.get("+AccountingGroup"));
    assert_eq!(custom.and_then(|v| v.as_str()), Some("\"group_icecube\""));
}
