//! Tests of the dataset config: reading and writing an IceProd 2.3 config, every validation
//! rule with its path, every expression function with known results (Python's, where IceProd
//! inherits them), and hostile input that must fail fast instead of hanging or crashing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::*;

/// A config as IceProd 2.3's website writes it: two tasks, the second depending on the first,
/// data staged out and in, parameters referring to each other, batchsys overrides, `null`s
/// where IceProd's defaults are `None`, and fields this server does not interpret
/// (`task_files`, `transfer`, `configs`, `difplus`).
const ICEPROD_23: &str = r#"{
  "version": 3,
  "description": "CORSIKA 5-component, IC86 2016 detector",
  "categories": ["simulation", "CORSIKA"],
  "options": {},
  "difplus": {
    "dif": {"sensor_name": "ICECUBE", "entry_title": "CORSIKA IC86"},
    "plus": {"category": "generated", "start": "2016-05-01"}
  },
  "steering": {
    "parameters": {
      "seed": 1234,
      "nevents": 1000,
      "energies": [100, 1000, 10000],
      "outdir": "gsiftp://gridftp.icecube.wisc.edu/data/sim/IceCube/2016/$(dataset)",
      "outfile": "$(outdir)/corsika_$sprintf('%06d',$(job)).i3.zst",
      "gcd": "/cvmfs/icecube.opensciencegrid.org/data/GCD/GeoCalibDetectorStatus_2016.i3.gz"
    },
    "batchsys": {
      "condor": {"requirements": "HAS_CVMFS_icecube_opensciencegrid_org", "+AccountingGroup": "sim.icecube"}
    },
    "system": {"gpu_opts": "--use-gpus"},
    "resources": [],
    "data": []
  },
  "tasks": [
    {
      "name": "generate",
      "depends": [],
      "batchsys": null,
      "task_files": false,
      "requirements": {"cpu": 1, "gpu": null, "memory": 2.0, "disk": "$eval(1+1)", "time": 1.5,
                       "os": "RHEL_7_x86_64", "site": null},
      "data": [
        {"remote": "$steering(outfile)", "local": "", "type": "permanent", "movement": "output",
         "compression": false, "transfer": true}
      ],
      "resources": [],
      "classes": [],
      "parameters": {"nevents_task": "$eval($steering(nevents)*2)"},
      "trays": [
        {
          "name": "gen", "iterations": 1, "resources": [], "data": [], "classes": [], "parameters": {},
          "modules": [
            {"name": "corsika", "src": "http://prod-exe.icecube.wisc.edu/corsika.py",
             "args": {"seed": "$(seed)", "nevents": "$(nevents_task)", "outputfile": "$(outfile)"},
             "env_shell": "/cvmfs/icecube.opensciencegrid.org/py2-v3/icetray-env combo/stable",
             "env_clear": true, "running_class": "", "configs": {},
             "resources": [], "data": [], "classes": [], "parameters": {}}
          ]
        }
      ]
    },
    {
      "name": "detector",
      "depends": ["generate"],
      "batchsys": {"condor": {"+WantGPU": "True"}},
      "task_files": false,
      "requirements": {"cpu": 1, "gpu": 1, "memory": "$eval(2*$(mem_per_event))", "disk": 10,
                       "time": "2"},
      "data": [
        {"remote": "$steering(outfile)", "local": "in.i3.zst", "type": "permanent",
         "movement": "input", "compression": false},
        {"remote": "", "local": "photons.i3", "type": "job_temp", "movement": "both",
         "compression": "gz"}
      ],
      "resources": [{"remote": "http://x.org/ice.tar.gz", "local": "ice.tar.gz", "arch": ""}],
      "classes": [],
      "parameters": {"mem_per_event": 1.5},
      "trays": [
        {
          "name": "det", "iterations": 2,
          "modules": [
            {"name": "clsim", "src": "clsim.py", "running_class": "",
             "args": ["--gcd", "$steering(gcd)", "--iter", "$(iter)", "$system(gpu_opts)"]}
          ]
        }
      ]
    }
  ]
}"#;

fn iceprod_job() -> Job {
    parse_and_validate(ICEPROD_23)
        .expect("the IceProd 2.3 config is valid")
        .job
}

/// A one-line config with these tasks.
fn config_with_tasks(tasks: Value) -> String {
    json!({"version": 3, "tasks": tasks}).to_string()
}

fn errors_of(text: &str) -> Vec<DatasetError> {
    match parse_and_validate(text) {
        Ok(_) => panic!("the config was accepted: {text}"),
        Err(e) => e.0,
    }
}

/// The first error at `path`; panics listing all errors when there is none.
fn error_at<'e>(errors: &'e [DatasetError], path: &str) -> &'e DatasetError {
    errors
        .iter()
        .find(|e| e.path() == path)
        .unwrap_or_else(|| panic!("no error at `{path}`; errors: {errors:#?}"))
}

fn reason_at(errors: &[DatasetError], path: &str) -> String {
    error_at(errors, path).to_string()
}

/// Every field and value of `original` is in `written` (which may add defaults).
fn assert_kept(original: &Value, written: &Value, path: &str) {
    match (original, written) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let inner = format!("{path}.{k}");
                let w = b
                    .get(k)
                    .unwrap_or_else(|| panic!("`{inner}` was dropped when written"));
                assert_kept(v, w, &inner);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "length of `{path}` changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_kept(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(original, written, "`{path}` changed when written"),
    }
}

fn expand_empty(text: &str) -> Result<String, ExprError> {
    expand(text, &Env::empty())
}

/// A job whose steering parameters are `params`.
fn job_with_steering(params: Value) -> Job {
    let text = json!({
        "version": 3,
        "steering": {"parameters": params},
        "tasks": [{"name": "a"}]
    })
    .to_string();
    Job::from_json(&text).expect("a well-typed config")
}

fn fails_fast<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{what} took {:?}",
        start.elapsed()
    );
    out
}

// ---- reading and writing ----

#[test]
fn iceprod_2_3_config_is_accepted_and_typed() {
    let v = parse_and_validate(ICEPROD_23).expect("valid");
    assert!(v.cross_dataset.is_empty());
    let job = v.job;
    assert_eq!(job.tasks.len(), 2);
    assert_eq!(
        job.tasks[1].depends,
        vec![Dependency::Name("generate".into())]
    );
    assert_eq!(
        job.resolve_dependency(&job.tasks[1].depends[0]),
        Ok(ResolvedDependency::Local(0))
    );
    assert_eq!(job.tasks[0].data[0].movement, Movement::Output);
    assert_eq!(job.tasks[1].data[1].kind, DataType::JobTemp);
    assert_eq!(job.tasks[1].trays[0].iterations, 2);
    assert_eq!(
        job.steering().batchsys.as_ref().unwrap()["condor"]["+AccountingGroup"],
        json!("sim.icecube")
    );
    assert_eq!(job.tasks[0].extra["task_files"], json!(false));
    assert_eq!(job.tasks[0].data[0].extra["transfer"], json!(true));
}

#[test]
fn written_config_keeps_every_field_the_author_wrote() {
    let original: Value = serde_json::from_str(ICEPROD_23).unwrap();
    let job = iceprod_job();
    let written: Value = serde_json::from_str(&job.to_json()).unwrap();
    assert_kept(&original, &written, "");
    // Reading what was written gives the same config again.
    assert_eq!(Job::from_json(&job.to_json()).unwrap(), job);
}

#[test]
fn unknown_fields_and_nulls_survive_a_round_trip() {
    let original = json!({
        "version": 3.2,
        "x_site_note": {"keep": ["me"]},
        "difplus": null,
        "parent_id": null,
        "dataset": 20001,
        "steering": null,
        "tasks": [{
            "name": "only",
            "container": "/cvmfs/singularity.opensciencegrid.org/x:latest",
            "requirements": {"cpu": null, "memory": "4", "gpu_model": "A100"},
            "trays": [{"modules": [{"configs": {"a.json": "{}"}, "args": "--flag"}]}]
        }]
    });
    let job = Job::from_value(&original).expect("well typed");
    job.validate().expect("valid");
    assert_kept(&original, &job.to_value(), "");
}

#[test]
fn missing_fields_take_iceprod_defaults() {
    let job =
        Job::from_json(r#"{"tasks": [{"name": "a", "data": [{}], "trays": [{"modules": [{}]}]}]}"#)
            .unwrap();
    assert_eq!(job.version.as_u64(), Some(3));
    assert!(job.steering.is_none());
    let tray = &job.tasks[0].trays[0];
    assert_eq!(tray.iterations, 1);
    assert!(tray.modules[0].env_clear, "env_clear defaults to true");
    assert_eq!(tray.modules[0].args, json!(""));
    let data = &job.tasks[0].data[0];
    assert_eq!(data.kind, DataType::Permanent);
    assert_eq!(data.movement, Movement::Both);
    assert_eq!(data.compression, json!(false));
}

#[test]
fn task_config_with_filled_options_is_accepted() {
    // What a worker gets (SPEC §5.2.1): the dataset config with `dataset` and `options` set.
    let mut value: Value = serde_json::from_str(ICEPROD_23).unwrap();
    value["dataset"] = json!(20001);
    value["options"] = json!({
        "task_id": "a1B2", "task": "generate", "dataset_id": "xyz", "job": 5,
        "jobs_submitted": 10, "debug": false, "stillrunninginterval": 60,
        "resources": {"cpu": 1, "gpu": 0, "memory": 2.0, "disk": 2.0, "time": 1.5},
        "upload": "logging", "gridspec": "site.local"
    });
    let job = parse_and_validate(&value.to_string()).expect("valid").job;
    assert_eq!(job.dataset, Some(json!(20001)));
    assert_eq!(job.options["job"], json!(5));
}

#[test]
fn pilot_task_config_without_tasks_still_reads() {
    // A pilot's task.cfg has `tasks: []`: readable, though not a submittable dataset.
    let job = Job::from_json(r#"{"version": 3, "tasks": [], "options": {"task_id": "pilot"}}"#)
        .expect("a pilot config reads");
    assert!(job.tasks.is_empty());
}

// ---- validation ----

#[test]
fn text_that_is_not_json_reports_line_and_column() {
    let errors = errors_of("{\n  \"version\": 3,\n  \"tasks\": [,]\n}");
    assert_eq!(errors.len(), 1);
    match &errors[0] {
        DatasetError::Syntax { line, column, .. } => {
            assert_eq!((*line, *column), (3, 13));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(errors[0]
        .to_string()
        .starts_with("line 3 column 13: not JSON"));
}

#[test]
fn wrong_type_names_the_path_of_the_offending_value() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a"},
        {"name": "b", "trays": [{"modules": "not a list"}]}
    ])));
    let e = error_at(&errors, "tasks[1].trays[0].modules");
    assert!(matches!(e, DatasetError::Type { .. }), "{e:?}");
    assert!(e.to_string().contains("expected a sequence"), "{e}");
}

#[test]
fn wrong_types_in_several_tasks_are_all_reported() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a", "parameters": []},
        {"name": "b", "trays": [{"iterations": "two"}]},
        {"name": "c", "depends": [1.5]}
    ])));
    error_at(&errors, "tasks[0].parameters");
    error_at(&errors, "tasks[1].trays[0].iterations");
    error_at(&errors, "tasks[2].depends[0]");
}

#[test]
fn top_level_wrong_type_is_reported_with_its_field() {
    let errors = errors_of(r#"{"version": "three", "tasks": [{"name": "a"}]}"#);
    error_at(&errors, "version");
    let errors = errors_of(r#"[1, 2]"#);
    assert!(matches!(errors[0], DatasetError::Type { .. }));
}

#[test]
fn version_below_3_is_refused() {
    let errors = errors_of(r#"{"version": 2, "tasks": [{"name": "a"}]}"#);
    assert!(reason_at(&errors, "version").contains("version 3 or later"));
}

#[test]
fn config_without_tasks_is_refused() {
    let errors = errors_of(r#"{"version": 3, "tasks": []}"#);
    assert!(reason_at(&errors, "tasks").contains("at least one task"));
}

#[test]
fn duplicate_and_empty_task_names_are_refused() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a"}, {"name": ""}, {"name": "a"}
    ])));
    assert!(reason_at(&errors, "tasks[1].name").contains("needs a name"));
    assert!(reason_at(&errors, "tasks[2].name").contains("already used by tasks[0]"));
}

#[test]
fn unknown_dependency_name_and_out_of_range_index_are_refused() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a"},
        {"name": "b", "depends": ["a", "nope", 7]}
    ])));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(reason_at(&errors, "tasks[1].depends[1]").contains("no task is named `nope`"));
    assert!(reason_at(&errors, "tasks[1].depends[2]").contains("task index 7 is out of range"));
}

#[test]
fn negative_dependency_index_is_a_type_error() {
    let errors = errors_of(&config_with_tasks(json!([{"name": "a", "depends": [-1]}])));
    assert!(reason_at(&errors, "tasks[0].depends[0]").contains("negative"));
}

#[test]
fn dependency_by_index_resolves_to_that_task() {
    let text = config_with_tasks(json!([{"name": "a"}, {"name": "b", "depends": [0]}]));
    let job = parse_and_validate(&text).expect("valid").job;
    assert_eq!(
        job.resolve_dependency(&job.tasks[1].depends[0]),
        Ok(ResolvedDependency::Local(0))
    );
}

#[test]
fn cross_dataset_dependencies_are_returned_for_the_caller() {
    let text = config_with_tasks(json!([
        {"name": "a", "depends": ["20001.generate", "20002:1"]}
    ]));
    let v = parse_and_validate(&text).expect("cross-dataset references are accepted");
    assert_eq!(
        v.cross_dataset,
        vec![
            CrossDatasetDependency {
                path: "tasks[0].depends[0]".into(),
                task_index: 0,
                dataset: "20001".into(),
                task: "generate".into(),
            },
            CrossDatasetDependency {
                path: "tasks[0].depends[1]".into(),
                task_index: 0,
                dataset: "20002".into(),
                task: "1".into(),
            },
        ]
    );
}

#[test]
fn a_local_task_name_with_a_dot_is_local() {
    let text = config_with_tasks(json!([
        {"name": "level2.v1"},
        {"name": "b", "depends": ["level2.v1"]}
    ]));
    let v = parse_and_validate(&text).expect("valid");
    assert!(v.cross_dataset.is_empty());
}

#[test]
fn dependency_cycle_is_refused_and_named() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a", "depends": ["c"]},
        {"name": "b", "depends": ["a"]},
        {"name": "c", "depends": ["b"]},
        {"name": "d", "depends": ["a"]}
    ])));
    assert_eq!(errors.len(), 1, "one cycle, one error: {errors:#?}");
    let reason = errors[0].to_string();
    assert!(reason.contains("dependency cycle"), "{reason}");
    // The cycle is named from the entry that closes it, in either rotation.
    let names = ["a -> c -> b -> a", "c -> b -> a -> c", "b -> a -> c -> b"];
    assert!(names.iter().any(|n| reason.contains(n)), "{reason}");
}

#[test]
fn a_task_depending_on_itself_is_a_cycle() {
    let errors = errors_of(&config_with_tasks(json!([{"name": "a", "depends": ["a"]}])));
    assert!(reason_at(&errors, "tasks[0].depends[0]").contains("a -> a"));
}

#[test]
fn a_long_dependency_chain_validates_without_overflowing_the_stack() {
    let tasks: Vec<Value> = (0..20_000)
        .map(|i| {
            if i == 0 {
                json!({"name": "t0"})
            } else {
                json!({"name": format!("t{i}"), "depends": [format!("t{}", i - 1)]})
            }
        })
        .collect();
    let text = config_with_tasks(Value::Array(tasks));
    fails_fast("a 20000-task chain", || {
        parse_and_validate(&text).expect("a chain is valid")
    });
}

#[test]
fn tray_iterations_below_one_are_refused() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a", "trays": [{"iterations": 1}, {"iterations": 0}]}
    ])));
    assert!(reason_at(&errors, "tasks[0].trays[1].iterations").contains("at least once"));
}

#[test]
fn bad_data_type_movement_and_compression_are_refused() {
    let text = json!({
        "version": 3,
        "steering": {"data": [{"type": "forever"}]},
        "tasks": [{"name": "a", "trays": [{"modules": [{"data": [
            {"movement": "sideways", "compression": "zip"}
        ]}]}]}]
    })
    .to_string();
    let errors = errors_of(&text);
    assert!(reason_at(&errors, "steering.data[0].type").contains("unknown data type `forever`"));
    assert!(
        reason_at(&errors, "tasks[0].trays[0].modules[0].data[0].movement")
            .contains("unknown movement `sideways`")
    );
    assert!(
        reason_at(&errors, "tasks[0].trays[0].modules[0].data[0].compression")
            .contains("unknown compression")
    );
}

#[test]
fn every_data_type_and_movement_of_iceprod_is_accepted() {
    let data: Vec<Value> = [
        "permanent",
        "tray_temp",
        "task_temp",
        "job_temp",
        "dataset_temp",
        "site_temp",
    ]
    .iter()
    .zip(["input", "output", "both", "input", "output", "both"])
    .map(|(t, m)| json!({"type": t, "movement": m, "compression": "bz2"}))
    .collect();
    let text = config_with_tasks(json!([{"name": "a", "data": data}]));
    parse_and_validate(&text).expect("valid");
}

#[test]
fn module_args_must_be_a_string_list_or_object() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a", "trays": [{"modules": [{"args": 5}, {"args": ["-v"]}, {"args": {"k": "v"}}]}]}
    ])));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(reason_at(&errors, "tasks[0].trays[0].modules[0].args").contains("found `5`"));
}

#[test]
fn requirement_that_is_neither_number_nor_expression_is_refused() {
    let errors = errors_of(&config_with_tasks(json!([
        {"name": "a", "requirements": {
            "cpu": "lots", "gpu": true, "memory": -1, "disk": "$nosuch(3)", "os": 7
        }}
    ])));
    assert!(reason_at(&errors, "tasks[0].requirements.cpu").contains("neither a number"));
    assert!(reason_at(&errors, "tasks[0].requirements.gpu").contains("expected a number"));
    assert!(reason_at(&errors, "tasks[0].requirements.memory").contains("0 or more"));
    assert!(reason_at(&errors, "tasks[0].requirements.disk").contains("unknown function"));
    assert!(reason_at(&errors, "tasks[0].requirements.os").contains("expected a string"));
}

#[test]
fn requirement_numbers_numeric_strings_and_expressions_are_accepted() {
    let text = config_with_tasks(json!([
        {"name": "a", "requirements": {
            "cpu": "4", "gpu": 0, "memory": "$eval(2*$(x))", "disk": "", "time": 2.5,
            "os": "$steering(os)"
        }}
    ]));
    parse_and_validate(&text).expect("valid");
}

#[test]
fn unparsable_expression_anywhere_is_refused_with_its_path() {
    let text = json!({
        "version": 3,
        "steering": {"parameters": {"outdir": "/data/$(dataset"}},
        "tasks": [{"name": "a", "trays": [{"modules": [
            {"args": ["--in", "$eval(1+(2)"]}
        ]}]}]
    })
    .to_string();
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let e = error_at(&errors, "steering.parameters.outdir");
    assert!(matches!(
        e,
        DatasetError::Expression {
            error: ExprError::Unterminated { .. },
            ..
        }
    ));
    error_at(&errors, "tasks[0].trays[0].modules[0].args[1]");
}

#[test]
fn expressions_nested_too_deep_are_refused_at_submission() {
    let deep = format!("{}1{}", "$eval(".repeat(11), ")".repeat(11));
    let text = json!({"version": 3, "steering": {"parameters": {"x": deep}},
                      "tasks": [{"name": "a"}]})
    .to_string();
    let errors = errors_of(&text);
    assert!(matches!(
        error_at(&errors, "steering.parameters.x"),
        DatasetError::Expression {
            error: ExprError::TooDeep,
            ..
        }
    ));
}

#[test]
fn description_is_free_text_and_shell_dollars_are_not_expressions() {
    let text = json!({
        "version": 3,
        "description": "uses $(unfinished business",
        "tasks": [{"name": "a", "trays": [{"modules": [
            {"args": "echo $HOME ${USER} $5 $ (x) $(pwd) $foo(bar) costs $"}
        ]}]}]
    })
    .to_string();
    parse_and_validate(&text).expect("valid");
}

#[test]
fn every_error_is_collected_in_one_pass() {
    let text = json!({
        "version": 2,
        "tasks": [
            {"name": "a", "depends": ["zzz"], "trays": [{"iterations": 0}]},
            {"name": "a", "data": [{"type": "nope"}], "parameters": {"p": "$(x"}}
        ]
    })
    .to_string();
    let errors = errors_of(&text);
    let paths: Vec<&str> = errors.iter().map(|e| e.path()).collect();
    for want in [
        "version",
        "tasks[1].name",
        "tasks[0].depends[0]",
        "tasks[0].trays[0].iterations",
        "tasks[1].data[0].type",
        "tasks[1].parameters.p",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn errors_read_as_path_and_reason() {
    let err = parse_and_validate(&config_with_tasks(json!([
        {"name": "a", "depends": ["b"]}
    ])))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the dataset config is refused: tasks[0].depends[0]: no task is named `b` \
         (write DATASET.TASK for a task of another dataset)"
    );
}

// ---- expressions ----

#[test]
fn lookup_prefers_the_innermost_scope() {
    let job = job_with_steering(json!({"x": "steering", "only_steering": "s"}));
    let task = Parameters::from_iter([("x".to_string(), json!("task"))]);
    let tray = Parameters::from_iter([("x".to_string(), json!("tray"))]);
    let module = Parameters::from_iter([("x".to_string(), json!("module"))]);
    let env = Env::new(&job);
    assert_eq!(expand("$(x)", &env).unwrap(), "steering");
    let env = env.with_scope(&task);
    assert_eq!(expand("$(x)", &env).unwrap(), "task");
    let env = env.with_scope(&tray);
    assert_eq!(expand("$(x)", &env).unwrap(), "tray");
    let env = env.with_scope(&module);
    assert_eq!(expand("$(x) $(only_steering)", &env).unwrap(), "module s");
}

#[test]
fn lookup_falls_back_to_top_level_fields_then_options() {
    let mut job = job_with_steering(json!({}));
    job.dataset = Some(json!(20001));
    job.description = "desc".into();
    job.extra.insert("note".into(), json!("top"));
    let env = Env::new(&job)
        .with_option("job", 7)
        .with_option("note", "option");
    assert_eq!(
        expand("$(dataset) $(job) $(description) $(version) $(note)", &env).unwrap(),
        "20001 7 desc 3 top"
    );
    // An object-valued top-level field is skipped, as IceProd skips dicts.
    let env = env.with_option("steering", "from options");
    assert_eq!(expand("$(steering)", &env).unwrap(), "from options");
}

#[test]
fn values_print_as_an_iceprod_worker_prints_them() {
    let job = job_with_steering(json!({
        "list": [1, 2.0, "a", true, null],
        "obj": {"b": 1, "a": [1]},
        "float": 1.0,
        "big": 1e16,
        "small": 0.00001,
        "yes": true,
        "utf": ["é"]
    }));
    let env = Env::new(&job);
    let cases = [
        ("$(list)", r#"[1, 2.0, "a", true, null]"#),
        ("$(obj)", r#"{"a": [1], "b": 1}"#),
        ("$(float)", "1.0"),
        ("$(big)", "1e+16"),
        ("$(small)", "1e-05"),
        ("$(yes)", "True"),
        ("$(utf)", r#"["\u00e9"]"#),
    ];
    for (text, want) in cases {
        assert_eq!(expand(text, &env).unwrap(), want, "{text}");
    }
}

#[test]
fn unknown_name_is_an_error_naming_it() {
    let err = expand_empty("a $(nosuch) b").unwrap_err();
    assert_eq!(
        err,
        ExprError::UnknownName {
            name: "nosuch".into()
        }
    );
    assert!(err.to_string().contains("`$(nosuch)`"));
    assert_eq!(
        expand_empty("$nosuch(1)").unwrap_err(),
        ExprError::UnknownFunction {
            name: "nosuch".into()
        }
    );
}

#[test]
fn steering_system_options_args_and_metadata_look_in_their_sections() {
    let job = iceprod_job();
    let env = Env::new(&job).with_option("job", 3);
    let cases = [
        ("$steering(nevents)", "1000"),
        ("$system(gpu_opts)", "--use-gpus"),
        ("$options(job)", "3"),
        ("$args(job)", "3"),
        ("$metadata(sensor_name)", "ICECUBE"),
        ("$metadata(category)", "generated"),
    ];
    for (text, want) in cases {
        assert_eq!(expand(text, &env).unwrap(), want, "{text}");
    }
    assert_eq!(
        expand("$steering(nope)", &env).unwrap_err(),
        ExprError::NotFound {
            function: "steering",
            key: "nope".into()
        }
    );
}

#[test]
fn environ_reads_through_the_callers_lookup() {
    let vars: HashMap<&str, &str> = HashMap::from([("OS_ARCH", "RHEL_7_x86_64")]);
    let lookup = |k: &str| vars.get(k).map(|v| v.to_string());
    let env = Env::empty().with_environ(&lookup);
    assert_eq!(expand("$environ(OS_ARCH)", &env).unwrap(), "RHEL_7_x86_64");
    assert!(matches!(
        expand("$environ(HOME)", &env),
        Err(ExprError::NotFound {
            function: "environ",
            ..
        })
    ));
    assert!(
        expand_empty("$environ(OS_ARCH)").is_err(),
        "no lookup, no variables"
    );
}

#[test]
fn eval_follows_python_arithmetic() {
    let cases = [
        ("$eval(1+2)", "3"),
        ("$eval(7/2)", "3.5"),
        ("$eval(4/2)", "2.0"),
        ("$eval(7//2)", "3"),
        ("$eval(-7//2)", "-4"),
        ("$eval(-7%3)", "2"),
        ("$eval(7%-3)", "-2"),
        ("$eval(7.5//2)", "3.0"),
        ("$eval(-7.5%2)", "0.5"),
        ("$eval(2**10)", "1024"),
        ("$eval(2**-1)", "0.5"),
        ("$eval(-2**2)", "-4"),
        ("$eval(2**3**2)", "512"),
        ("$eval((1+2)*3)", "9"),
        ("$eval( 1 + 2 * 3 )", "7"),
        ("$eval(0.1+0.2)", "0.30000000000000004"),
        ("$eval(1e3)", "1000.0"),
        ("$eval(2.5*4)", "10.0"),
        ("$eval(10.0**20)", "1e+20"),
        ("$eval(0x10+0b11)", "19"),
        ("$eval(6^3)", "5"),
        ("$eval(~5)", "-6"),
        ("$eval(1/3)", "0.3333333333333333"),
    ];
    for (text, want) in cases {
        assert_eq!(expand_empty(text).unwrap(), want, "{text}");
    }
}

#[test]
fn eval_errors_are_errors_not_panics() {
    assert_eq!(
        expand_empty("$eval(1/0)").unwrap_err(),
        ExprError::DivisionByZero
    );
    assert_eq!(
        expand_empty("$eval(1//0)").unwrap_err(),
        ExprError::DivisionByZero
    );
    assert_eq!(
        expand_empty("$eval(1%0.0)").unwrap_err(),
        ExprError::DivisionByZero
    );
    assert_eq!(
        expand_empty("$eval(0**-1)").unwrap_err(),
        ExprError::DivisionByZero
    );
    for bad in [
        "$eval()",
        "$eval(1+)",
        "$eval(import os)",
        "$eval(1.5^2)",
        "$eval(012)",
        "$eval((-8)**0.5)",
    ] {
        assert!(
            matches!(expand_empty(bad), Err(ExprError::Arithmetic { .. })),
            "{bad}: {:?}",
            expand_empty(bad)
        );
    }
}

#[test]
fn huge_exponents_fail_fast_instead_of_hanging() {
    fails_fast("huge exponents", || {
        for huge in [
            "$eval(10**10**10)",
            "$eval(2**128)",
            "$eval(9**99)",
            "$eval(170141183460469231731687303715884105727+1)",
            "$eval(-170141183460469231731687303715884105727-2)",
            "$eval(2**100*2**100)",
            "$eval(999999999999999999999999999999999999999999)",
            "$eval(10.0**400)",
        ] {
            assert_eq!(
                expand_empty(huge).unwrap_err(),
                ExprError::Overflow,
                "{huge}"
            );
        }
    });
    // Beyond 64 bits, as Python's integers go.
    assert_eq!(
        expand_empty("$eval(2**64)").unwrap(),
        "18446744073709551616"
    );
    assert_eq!(
        expand_empty("$eval(2**100//3)").unwrap(),
        "422550200076076467165567735125"
    );
    assert_eq!(expand_empty("$eval(1**10**10)").unwrap(), "1");
}

#[test]
fn choice_is_deterministic_per_seed() {
    let pick = |seed| expand("$choice(a,b,c,d)", &Env::empty().with_seed(seed)).unwrap();
    let first: Vec<String> = (0..32).map(pick).collect();
    let again: Vec<String> = (0..32).map(pick).collect();
    assert_eq!(first, again, "same seed, same choice");
    assert!(first
        .iter()
        .all(|c| ["a", "b", "c", "d"].contains(&c.as_str())));
    let distinct: std::collections::HashSet<&String> = first.iter().collect();
    assert!(distinct.len() >= 3, "seeds spread the choices: {first:?}");
    // A JSON list is chosen from by element.
    let c = expand("$choice([10, 20])", &Env::empty().with_seed(1)).unwrap();
    assert!(c == "10" || c == "20", "{c}");
    assert!(expand_empty("$choice()").is_err());
}

#[test]
fn sprintf_formats_like_python() {
    let cases = [
        (r#"$sprintf("%04d",4)"#, "0004"),
        ("$sprintf('%06d',42)", "000042"),
        (r#"$sprintf("%d",4.7)"#, "4"),
        (r#"$sprintf("%i-%d",1,2)"#, "1-2"),
        (r#"$sprintf("%s_%s",a,"b")"#, "a_b"),
        (r#"$sprintf("%s", x)"#, " x"),
        (r#"$sprintf("%f",1.5)"#, "1.500000"),
        (r#"$sprintf("%.2f",3.14159)"#, "3.14"),
        (r#"$sprintf("%8.3f",-3.14159)"#, "  -3.142"),
        (r#"$sprintf("%x %X %o",255,255,8)"#, "ff FF 10"),
        (r#"$sprintf("%#x",255)"#, "0xff"),
        (r#"$sprintf("100%% %d",5)"#, "100% 5"),
        (r#"$sprintf("100%%")"#, "100%%"),
        (r#"$sprintf("%e",12345.678)"#, "1.234568e+04"),
        (
            r#"$sprintf("%g %g",0.0001,1234567.0)"#,
            "0.0001 1.23457e+06",
        ),
        (r#"$sprintf("%-5s|",ab)"#, "ab   |"),
        (r#"$sprintf("%+d",5)"#, "+5"),
        (r#"$sprintf("%d",1,2,3)"#, "1"),
        ("$sprintf(plain,1)", "plain"),
    ];
    for (text, want) in cases {
        assert_eq!(expand_empty(text).unwrap(), want, "{text}");
    }
}

#[test]
fn sprintf_refuses_what_python_refuses() {
    for bad in [
        r#"$sprintf("%d %d",1)"#,
        r#"$sprintf("%d",abc)"#,
        r#"$sprintf("%x",1.5)"#,
        r#"$sprintf("%y",1)"#,
        r#"$sprintf("unclosed,1)"#,
        "$sprintf(no comma)",
        r#"$sprintf("%99999d",1)"#,
    ] {
        assert!(
            matches!(
                expand_empty(bad),
                Err(ExprError::BadArgument {
                    function: "sprintf",
                    ..
                })
            ),
            "{bad}: {:?}",
            expand_empty(bad)
        );
    }
}

#[test]
fn reductions_sum_min_max_and_len() {
    let job = job_with_steering(json!({"nums": [3, 1, 2], "names": ["b", "a"]}));
    let env = Env::new(&job);
    let cases = [
        ("$sum([1,2,3])", "6"),
        ("$sum([1,2.5])", "3.5"),
        ("$sum($(nums))", "6"),
        ("$sum(1,2,3)", "6"),
        ("$sum([])", "0"),
        ("$min($(nums))", "1"),
        ("$max($(nums))", "3"),
        ("$max(1.5,2,0)", "2"),
        ("$min($(names))", "a"),
        ("$min(abc)", "a"),
        ("$len($(nums))", "3"),
        ("$len(abcd)", "4"),
        ("$len({'a': 1})", "1"),
    ];
    for (text, want) in cases {
        assert_eq!(expand(text, &env).unwrap(), want, "{text}");
    }
    for bad in ["$sum(abc)", "$min([])", "$max([1,\"a\"])", "$len(5)"] {
        assert!(
            matches!(expand(bad, &env), Err(ExprError::BadArgument { .. })),
            "{bad}: {:?}",
            expand(bad, &env)
        );
    }
}

#[test]
fn nested_expressions_evaluate_inside_out() {
    let env = Env::empty().with_option("job", 4).with_option("iter", 1);
    let cases = [
        ("$eval($(job)+1)", "5"),
        (r#"$sprintf("%03d",$eval($(job)*2))"#, "008"),
        ("$eval($eval($(job)*$(job))-$(iter))", "15"),
        ("run$(job)_$(iter).i3", "run4_1.i3"),
    ];
    for (text, want) in cases {
        assert_eq!(expand(text, &env).unwrap(), want, "{text}");
    }
}

#[test]
fn parameters_referring_to_parameters_expand_in_their_own_scope() {
    let job = iceprod_job();
    let env = Env::new(&job)
        .with_option("job", 5)
        .with_option("dataset", 20001);
    assert_eq!(
        expand("$steering(outfile)", &env).unwrap(),
        "gsiftp://gridftp.icecube.wisc.edu/data/sim/IceCube/2016/20001/corsika_000005.i3.zst"
    );
    // A steering value sees steering parameters, not a task's parameter of the same name.
    let steering = job_with_steering(json!({"n": 1, "label": "n=$(n)"}));
    let task = Parameters::from_iter([("n".to_string(), json!(2))]);
    let env = Env::new(&steering).with_scope(&task);
    assert_eq!(expand("$(label) $(n)", &env).unwrap(), "n=1 2");
}

#[test]
fn self_reference_stops_at_the_depth_limit() {
    let job = job_with_steering(json!({"a": "x$(a)", "b": "$(c)", "c": "$(b)"}));
    let env = Env::new(&job);
    assert_eq!(expand("$(a)", &env).unwrap_err(), ExprError::TooDeep);
    assert_eq!(expand("$(b)", &env).unwrap_err(), ExprError::TooDeep);
}

#[test]
fn ten_levels_of_nesting_work_and_eleven_do_not() {
    let nested = |n: usize| format!("{}1{}", "$eval(".repeat(n), ")".repeat(n));
    assert_eq!(expand_empty(&nested(MAX_DEPTH)).unwrap(), "1");
    assert_eq!(
        parse(&nested(MAX_DEPTH + 1)).unwrap_err(),
        ExprError::TooDeep
    );
    // A chain of references ten deep works; one more is too deep.
    let chain: Map<String, Value> = (0..12)
        .map(|i| (format!("p{i}"), json!(format!("$(p{})", i + 1))))
        .chain([("p12".to_string(), json!("end"))])
        .collect();
    let job = job_with_steering(Value::Object(chain));
    let env = Env::new(&job);
    assert_eq!(expand("$(p3)", &env).unwrap(), "end");
    assert_eq!(expand("$(p0)", &env).unwrap_err(), ExprError::TooDeep);
}

#[test]
fn indexing_picks_an_element_or_keeps_the_text() {
    let job =
        job_with_steering(json!({"energies": [100, 1000, 10000], "d": {"k": "v"}, "s": "abc"}));
    let env = Env::new(&job).with_option("iter", 1);
    let cases = [
        ("$(energies)[1]", "1000"),
        ("$(energies)[$(iter)]", "1000"),
        ("$(energies)[-1]", "10000"),
        ("$(d)[k]", "v"),
        ("$(s)[0]", "a"),
        ("$(energies)[9]", "[100, 1000, 10000][9]"),
        ("$(energies) [1]", "[100, 1000, 10000] [1]"),
    ];
    for (text, want) in cases {
        assert_eq!(expand(text, &env).unwrap(), want, "{text}");
    }
}

#[test]
fn text_outside_expressions_and_escapes_are_kept() {
    let env = Env::empty().with_option("job", 2);
    let cases = [
        (
            "plain text (with parens) [and brackets]",
            "plain text (with parens) [and brackets]",
        ),
        ("echo $HOME ${X} $5 $", "echo $HOME ${X} $5 $"),
        (r"\$(job) is literal", "$(job) is literal"),
        ("a$(job)b", "a2b"),
        ("$eval((1+2)*(3))", "9"),
    ];
    for (text, want) in cases {
        assert_eq!(expand(text, &env).unwrap(), want, "{text}");
    }
}

#[test]
fn expand_value_expands_every_string_and_key() {
    let env = Env::empty().with_option("job", 3);
    let value = json!({"out_$(job)": ["f_$(job).i3", 5, {"n": "$eval($(job)*2)"}], "x": null});
    assert_eq!(
        expand_value(&value, &env).unwrap(),
        json!({"out_3": ["f_3.i3", 5, {"n": "6"}], "x": null})
    );
    let err = expand_value(&json!({"a": [1, "$(nope)"]}), &env).unwrap_err();
    assert!(err.to_string().starts_with("a[1]: "), "{err}");
}

#[test]
fn infer_type_reads_results_as_iceprod_does() {
    assert_eq!(infer_type("4"), json!(4));
    assert_eq!(infer_type("2.5"), json!(2.5));
    assert_eq!(infer_type("True"), json!(true));
    assert_eq!(infer_type("['a', 1]"), json!(["a", 1]));
    assert_eq!(infer_type("\"quoted\""), json!("\"quoted\""));
    assert_eq!(infer_type("4GB"), json!("4GB"));
}

#[test]
fn requirements_are_evaluated_per_job() {
    let job = iceprod_job();
    let env = Env::new(&job).with_option("job", 0);
    let gen = Requirements::for_task(&job, 0, &env).unwrap();
    assert_eq!(
        gen,
        Requirements {
            cpu: 1,
            gpu: 0,
            memory_gb: 2.0,
            disk_gb: 2.0,
            time_hours: 1.5,
            os: Some("RHEL_7_x86_64".into()),
            site: None,
        }
    );
    let det = Requirements::for_task(&job, 1, &env).unwrap();
    assert_eq!(
        (det.gpu, det.memory_gb, det.disk_gb, det.time_hours),
        (1, 3.0, 10.0, 2.0)
    );
}

#[test]
fn requirements_default_and_depend_on_the_job() {
    let text = config_with_tasks(json!([
        {"name": "a", "requirements": {"cpu": "$eval($(job)%2+1.9)", "memory": "$eval(1+$(job))"}},
        {"name": "b"}
    ]));
    let job = parse_and_validate(&text).unwrap().job;
    for (job_index, cpu, memory) in [(0, 1, 1.0), (1, 2, 2.0)] {
        let env = Env::new(&job).with_option("job", job_index);
        let r = Requirements::for_task(&job, 0, &env).unwrap();
        assert_eq!((r.cpu, r.memory_gb), (cpu, memory), "job {job_index}");
    }
    let env = Env::new(&job);
    assert_eq!(
        Requirements::for_task(&job, 1, &env).unwrap(),
        Requirements::default()
    );
}

#[test]
fn requirement_that_evaluates_badly_names_its_path() {
    let text = config_with_tasks(json!([
        {"name": "a", "requirements": {"memory": "$(x)GB", "disk": "$(missing)", "cpu": "$eval(0-$(x))"}}
    ]));
    let mut job = parse_and_validate(&text).unwrap().job;
    job.tasks[0].parameters.insert("x".into(), json!(4));
    let err = Requirements::for_task(&job, 0, &Env::new(&job)).unwrap_err();
    assert_eq!(err.path(), "tasks[0].requirements.cpu");
    assert!(err.to_string().contains("0 or more"), "{err}");
    job.tasks[0].requirements.cpu = None;
    let err = Requirements::for_task(&job, 0, &Env::new(&job)).unwrap_err();
    assert_eq!(err.path(), "tasks[0].requirements.memory");
    assert!(err.to_string().contains("`4GB`"), "{err}");
    job.tasks[0].requirements.memory = None;
    let err = Requirements::for_task(&job, 0, &Env::new(&job)).unwrap_err();
    assert!(matches!(
        err,
        DatasetError::Expression {
            error: ExprError::UnknownName { .. },
            ..
        }
    ));
}

// ---- hostile input ----

#[test]
fn unterminated_call_and_index_are_errors() {
    for bad in ["$(", "$(job", "$eval(1+(2)", "x $steering(a", "$(a)[1"] {
        assert!(
            matches!(parse(bad), Err(ExprError::Unterminated { .. })),
            "{bad}: {:?}",
            parse(bad)
        );
    }
    assert_eq!(
        parse("ab$(job").unwrap_err(),
        ExprError::Unterminated {
            opened: "$(".into(),
            offset: 2
        }
    );
    assert_eq!(
        parse("$eval(1+$(y)").unwrap_err(),
        ExprError::Unterminated {
            opened: "$eval(".into(),
            offset: 0
        }
    );
}

#[test]
fn a_one_megabyte_string_expands_quickly() {
    let big = format!("{}$(job){}", "x".repeat(512 * 1024), "é".repeat(256 * 1024));
    let env = Env::empty().with_option("job", 1);
    let out = fails_fast("a 1 MB string", || expand(&big, &env).unwrap());
    assert_eq!(out.len(), big.len() - "$(job)".len() + 1);
    let config = config_with_tasks(json!([{"name": "a", "parameters": {"big": big}}]));
    fails_fast("validating a 1 MB parameter", || {
        parse_and_validate(&config).expect("valid")
    });
}

#[test]
fn a_megabyte_of_calls_is_bounded() {
    let many = "$(job)".repeat(200_000);
    let env = Env::empty().with_option("job", 1);
    let result = fails_fast("200000 calls", || expand(&many, &env));
    assert!(
        matches!(result, Err(ExprError::TooLarge { .. })),
        "{:?}",
        result.map(|s| s.len())
    );
    let many_parens = format!("$eval({}1{})", "(".repeat(500_000), ")".repeat(500_000));
    let result = fails_fast("deep parentheses", || expand_empty(&many_parens));
    assert!(matches!(result, Err(ExprError::Arithmetic { .. })));
    let many_minus = format!("$eval({}1)", "-".repeat(500_000));
    assert!(fails_fast("many signs", || expand_empty(&many_minus)).is_err());
}

#[test]
fn references_that_multiply_are_cut_off() {
    // p0 = "$(p1)$(p1)…" ten times, p1 likewise …: 10^9 expansions if unbounded.
    let params: Map<String, Value> = (0..9)
        .map(|i| (format!("p{i}"), json!(format!("$(p{})", i + 1).repeat(10))))
        .chain([("p9".to_string(), json!("x"))])
        .collect();
    let job = job_with_steering(Value::Object(params));
    let env = Env::new(&job);
    let result = fails_fast("multiplying references", || expand("$(p0)", &env));
    assert!(
        matches!(result, Err(ExprError::TooLarge { .. })),
        "{result:?}"
    );
}

#[test]
fn nul_bytes_and_odd_text_pass_through() {
    let env = Env::empty().with_option("job", 1);
    assert_eq!(expand("a\0$(job)\0b", &env).unwrap(), "a\u{0}1\u{0}b");
    let text = config_with_tasks(json!([{"name": "a\u{0}b", "parameters": {"p": "\u{0}$(x)"}}]));
    parse_and_validate(&text).expect("NUL bytes are just characters");
    assert_eq!(
        expand_empty("trailing backslash \\").unwrap(),
        "trailing backslash \\"
    );
}

#[test]
fn deeply_nested_json_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let errors = errors_of(&deep);
    assert!(
        matches!(errors[0], DatasetError::Syntax { .. }),
        "{errors:?}"
    );
    let deep_param = format!(
        r#"{{"version": 3, "tasks": [{{"name": "a", "parameters": {{"p": {}1{}}}}}]}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let errors = errors_of(&deep_param);
    assert!(
        errors[0].to_string().contains("recursion limit"),
        "{errors:?}"
    );
}

#[test]
fn sprintf_with_quotes_around_non_ascii_does_not_split_a_character() {
    assert_eq!(expand_empty(r#"$sprintf("%s",'é)"#).unwrap(), "");
    assert_eq!(expand_empty(r#"$sprintf("%s",'éé')"#).unwrap(), "éé");
    assert_eq!(expand_empty(r#"$sprintf("%s",")"#).unwrap(), "");
}

#[test]
fn sprintf_with_a_huge_width_is_refused() {
    let result = fails_fast("huge width", || {
        expand_empty(r#"$sprintf("%999999999d",1)"#)
    });
    assert!(result.is_err());
}

#[test]
fn random_text_never_panics() {
    // Deterministic noise over the characters the grammars care about: parse, expand, eval
    // and sprintf must answer Ok or Err for all of it, never panic.
    const ALPHABET: &[&str] = &[
        "$", "(", ")", "[", "]", "\\", ",", "'", "\"", "%", "0", "1", "9", ".", "e", "+", "-", "*",
        "/", "~", "^", "é", " ", "d", "s", "x", "eval", "sprintf", "choice", "sum", "len", "job",
        "\0", "#", "_", "{", "}",
    ];
    let job = job_with_steering(json!({"job": "$(job)", "l": [1, "a"], "s": "$eval(1+"}));
    let env = Env::new(&job).with_option("job", 3).with_seed(7);
    let mut state: u64 = 1;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    for _ in 0..20_000 {
        let len = next() % 24;
        let text: String = (0..len)
            .map(|_| ALPHABET[next() % ALPHABET.len()])
            .collect();
        let _ = parse(&text);
        let _ = expand(&text, &env);
        let _ = expand(&format!("$eval({text})"), &env);
        let _ = expand(&format!("$sprintf({text})"), &env);
        let _ = expand(&format!("$(l)[{text}]"), &env);
    }
}
