//! Property tests (fuzzing that stays) for dataset configs and the expression language: any
//! string, any structured expression and any JSON fed to the parser, the evaluator,
//! `parse_and_validate` and the submission check must never panic, must end within a bounded
//! time, and every error must say where it is.
//!
//! The number of cases per property comes from `ICEPROD_FUZZ_CASES` (default 256), so CI runs
//! a small fixed budget and a person hunting crashes can run many more. A crash found here
//! becomes a named regression test at the end of this file.

use std::time::{Duration, Instant};

use iceprod_model::dataset::{
    expand, expand_value, parse, parse_and_validate, DatasetError, Env, Job,
};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Longest one property case may take: above the evaluator's own limit (2 s per expansion)
/// and the submission check's (2 s), with room for a loaded debug build.
const BOUND: Duration = Duration::from_secs(12);

fn config() -> ProptestConfig {
    let cases = std::env::var("ICEPROD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

/// Runs `f` and fails the case if it took longer than [`BOUND`].
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < BOUND, "{what} took {took:?}");
    out
}

/// A job whose parameters refer to each other, loop and fan out, so lookups are exercised.
fn job_with_parameters() -> Job {
    Job::from_value(&json!({
        "version": 3,
        "steering": {"parameters": {
            "x": "$(y)", "y": "$(x)", "n": 7, "list": [1, 2, 3],
            "fan": "$(n)$(n)$(n)$(n)$(n)$(n)$(n)$(n)",
            "fan2": "$(fan)$(fan)$(fan)$(fan)$(fan)$(fan)$(fan)$(fan)",
            "fan3": "$(fan2)$(fan2)$(fan2)$(fan2)$(fan2)$(fan2)$(fan2)$(fan2)",
        }},
        "tasks": [{"name": "t", "parameters": {"p": "$eval($(n)*2)"}, "trays": []}],
    }))
    .expect("the fixture is a valid config")
}

/// Pieces of expression text: the functions, their punctuation and arithmetic.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("$(".to_string()),
        Just("$eval(".to_string()),
        Just("$choice(".to_string()),
        Just("$sprintf(".to_string()),
        Just("$steering(".to_string()),
        Just("$sum(".to_string()),
        Just("$len(".to_string()),
        Just("$max(".to_string()),
        Just(")".to_string()),
        Just("(".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\\".to_string()),
        Just("**".to_string()),
        Just("9".to_string()),
        Just(",".to_string()),
        Just("x".to_string()),
        Just("fan3".to_string()),
        "[ -~]{0,4}",
    ]
}

/// A well-formed expression, built recursively.
fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        Just("$(x)".to_string()),
        Just("$(n)".to_string()),
        Just("$(fan3)".to_string()),
        Just("$(job)".to_string()),
        Just("$(nosuch)".to_string()),
        Just("$steering(list)".to_string()),
        "[a-z]{0,6}",
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        let op = prop_oneof![
            Just("+"),
            Just("-"),
            Just("*"),
            Just("/"),
            Just("//"),
            Just("%"),
            Just("**"),
            Just("^")
        ];
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(a, op, b)| format!("$eval({a}{op}{b})")),
            inner.clone().prop_map(|a| format!("$eval(({a}))")),
            prop::collection::vec(inner.clone(), 1..4)
                .prop_map(|items| format!("$choice({})", items.join(","))),
            (inner.clone(), inner.clone()).prop_map(|(f, a)| format!("$sprintf(\"%s{f}%d\",{a})")),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("$sum([{}])", items.join(","))),
            inner.clone().prop_map(|a| format!("$len({a})")),
            inner.clone().prop_map(|a| format!("$max({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("$({a})[{i}]")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("{a}{b}")),
        ]
    })
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::from),
        expression().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A config of the right shape with random values where a config's values go.
fn shaped_config() -> impl Strategy<Value = Value> {
    let requirement = prop_oneof![json_value(), expression().prop_map(Value::from)];
    (
        prop::collection::btree_map("[a-z]{1,4}", json_value(), 0..4),
        prop::collection::btree_map(
            prop_oneof![
                Just("cpu"),
                Just("gpu"),
                Just("memory"),
                Just("disk"),
                Just("time"),
                Just("os"),
            ],
            requirement,
            0..4,
        ),
        json_value(),
        prop::collection::vec(json_value(), 0..3),
        1u32..5,
    )
        .prop_map(|(parameters, requirements, iterations, depends, njobs)| {
            json!({
                "version": 3,
                "steering": {"parameters": parameters.clone()},
                "tasks": [
                    {"name": "a", "requirements": requirements, "parameters": parameters,
                     "trays": [{"iterations": iterations,
                                "modules": [{"src": "a.sh", "args": "$(x)"}]}]},
                    {"name": "b", "depends": depends, "trays": []},
                ],
                "options": {"njobs": njobs},
            })
        })
}

/// Every error says where it is: a path, a line and column, or the top level for a document
/// that is not an object at all.
fn assert_located(e: &DatasetError, whole_document_ok: bool) {
    let text = e.to_string();
    if e.location().is_empty() {
        assert!(whole_document_ok, "an error without a path: {text}");
        assert!(text.starts_with("(top level)"), "{text}");
    } else {
        assert!(text.starts_with(&e.location()), "{text}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_string_parses_and_expands_without_panicking_in_bounded_time(s in "\\PC{0,200}") {
        let job = job_with_parameters();
        let env = Env::new(&job);
        bounded(&s, || {
            let _ = parse(&s);
            let _ = expand(&s, &env);
        });
    }

    #[test]
    fn strings_of_expression_tokens_never_panic(parts in prop::collection::vec(token(), 0..40)) {
        let s = parts.concat();
        let job = job_with_parameters();
        let env = Env::for_task(&job, 0).with_option("job", 3);
        bounded(&s, || {
            let _ = parse(&s);
            let _ = expand(&s, &env);
        });
    }

    #[test]
    fn structured_expressions_evaluate_or_fail_cleanly_in_bounded_time(e in expression()) {
        let job = job_with_parameters();
        let env = Env::for_task(&job, 0).with_option("job", 3).with_seed(3);
        let result = bounded(&e, || expand(&e, &env));
        if let Err(error) = result {
            // Every failure can be told to a person.
            prop_assert!(!error.to_string().is_empty());
        }
        let value = json!({"a": [e.clone(), {"b": e}]});
        if let Err(error) = bounded("expand_value", || expand_value(&value, &env)) {
            // Inside a value, the error names where in it.
            prop_assert!(error.to_string().starts_with("a["), "{error}");
        }
    }

    #[test]
    fn any_json_is_validated_without_panicking_and_errors_say_where(v in json_value()) {
        let text = v.to_string();
        if let Err(errors) = bounded("parse_and_validate", || parse_and_validate(&text)) {
            for e in errors.iter() {
                assert_located(e, true);
            }
        }
    }

    #[test]
    fn shaped_configs_are_validated_and_checked_in_bounded_time_with_paths(c in shaped_config()) {
        let njobs = c["options"]["njobs"].as_u64().unwrap_or(1) as u32;
        let text = c.to_string();
        match bounded("parse_and_validate", || parse_and_validate(&text)) {
            Err(errors) => {
                for e in errors.iter() {
                    assert_located(e, false);
                }
            }
            Ok(validated) => {
                let checked = bounded("check_jobs", || validated.job.check_jobs(njobs, 1));
                if let Err(errors) = checked {
                    for e in errors.iter() {
                        assert_located(e, false);
                    }
                }
            }
        }
    }

    #[test]
    fn any_text_is_validated_without_panicking(s in "\\PC{0,300}") {
        if let Err(errors) = bounded("parse_and_validate", || parse_and_validate(&s)) {
            for e in errors.iter() {
                assert_located(e, true);
            }
        }
    }
}

// ---- regressions: each case once found by the properties above, or reported ----

#[test]
fn parameters_that_refer_to_each_other_fail_naming_the_parameter() {
    let job = Job::from_value(&json!({"version": 3, "tasks": [{"name": "a",
        "parameters": {"x": "$(y)", "y": "$(x)"}, "trays": []}]}))
    .unwrap();
    let errors = job.check_jobs(1, 1).unwrap_err();
    assert_eq!(
        errors.iter().next().unwrap().path(),
        "tasks[0].parameters.x"
    );
}

#[test]
fn parameters_that_fan_out_a_hundred_million_lookups_stop_at_the_limits() {
    // l9 expands to 8^9 copies of l0: refused by the evaluator's limits, quickly.
    let mut parameters = serde_json::Map::new();
    parameters.insert("l0".into(), json!("x".repeat(1000)));
    for i in 1..10 {
        parameters.insert(format!("l{i}"), json!(format!("$(l{})", i - 1).repeat(8)));
    }
    let job = Job::from_value(&json!({"version": 3, "tasks": [{"name": "a",
        "requirements": {"os": "$(l9)"}, "parameters": parameters, "trays": []}]}))
    .unwrap();
    let r = bounded("l9", || expand("$(l9)", &Env::for_task(&job, 0)));
    assert!(r.is_err());
    let errors = bounded("check_jobs", || job.check_jobs(3, 1)).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path()).collect();
    assert!(paths.contains(&"tasks[0].requirements.os"), "{paths:?}");
    assert!(paths.contains(&"tasks[0].parameters.l9"), "{errors}");
}

#[test]
fn power_towers_fail_at_once_as_too_large() {
    let job = job_with_parameters();
    for e in ["$eval(9**9**9)", "$eval(9.0**9**9)", "$eval(2**-9**9**9)"] {
        let r = bounded(e, || expand(e, &Env::new(&job)));
        assert!(r.is_err(), "{e}: {r:?}");
    }
}

#[test]
fn an_expansion_past_its_deadline_stops_as_too_slow() {
    let job = job_with_parameters();
    let env = Env::new(&job).with_deadline(Instant::now());
    let r = expand("$(fan3)$(fan3)", &env);
    assert_eq!(r, Err(iceprod_model::dataset::ExprError::TooSlow));
}
