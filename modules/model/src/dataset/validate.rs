//! The rules of a dataset config (SPEC §3), checked in one place when a dataset is submitted:
//! [`parse_and_validate`] reads the text and collects every error, each with the path of the
//! offending value (`tasks[1].depends[0]`) and a reason.
//!
//! Dependencies are resolved here too ([`Job::resolve_dependency`]), so job creation and
//! validation agree on what `depends` means. References to tasks of other datasets are only
//! checked for form and handed back ([`CrossDatasetDependency`]): whether that dataset and task
//! exist is the caller's question, as it needs the database.

use std::collections::HashMap;

use serde_json::Value;

use crate::dataset::config::{Data, DataType, Dependency, Job, Movement, TaskRequirements};
use crate::dataset::error::{DatasetError, DatasetErrors};
use crate::dataset::expr::{infer_type, parse};
use crate::dataset::limits::{requirement_problem, MAX_ITERATIONS};

/// The compression values IceProd 2.3 accepts besides `true` and `false`.
const COMPRESSIONS: [&str; 6] = ["none", "gzip", "gz", "bzip", "bz2", "lzma"];

/// Deepest JSON nesting the expression walk follows (parsed text never exceeds 128).
const MAX_WALK_DEPTH: usize = 256;

/// A config that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// The config as read; validation changes nothing in it.
    pub job: Job,
    /// Dependencies on tasks of other datasets, for the caller to check.
    pub cross_dataset: Vec<CrossDatasetDependency>,
}

/// `DATASET.TASK` (or IceProd's `DATASET:TASK`) in a task's `depends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossDatasetDependency {
    /// Where it is written, e.g. `tasks[1].depends[0]`.
    pub path: String,
    /// The index of the task that depends.
    pub task_index: usize,
    /// The other dataset, as written (a dataset number or id).
    pub dataset: String,
    /// The task in the other dataset, by name or index, as written.
    pub task: String,
}

/// What one `depends` entry refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedDependency {
    /// A task of the same job, by index.
    Local(usize),
    /// A task of the same job index in another dataset.
    CrossDataset {
        /// The other dataset, as written (a dataset number or id).
        dataset: String,
        /// The task in it, by name or index, as written.
        task: String,
    },
}

/// Reads `text` and checks every rule; on failure returns every error found.
pub fn parse_and_validate(text: &str) -> Result<Validated, DatasetErrors> {
    let job = Job::from_json(text)?;
    let cross_dataset = job.validate()?;
    Ok(Validated { job, cross_dataset })
}

impl Job {
    /// Checks every rule of SPEC §3 and returns the cross-dataset dependencies, or every error.
    pub fn validate(&self) -> Result<Vec<CrossDatasetDependency>, DatasetErrors> {
        let mut v = Validator::default();
        v.version(self);
        v.dataset_number(self);
        v.task_names(self);
        let cross = v.dependencies(self);
        v.structure(self);
        v.expressions(self);
        if v.errors.is_empty() {
            Ok(cross)
        } else {
            Err(DatasetErrors(v.errors))
        }
    }

    /// What `dep` refers to: a task index, a task name of this config, or a task of another
    /// dataset. A name that is a task's name is always local, even if it holds a `.`. The error
    /// is the reason, for a message.
    pub fn resolve_dependency(&self, dep: &Dependency) -> Result<ResolvedDependency, String> {
        Resolver::new(self).resolve(dep)
    }
}

/// Task names to indexes, built once so resolving every dependency of a large config stays
/// linear.
struct Resolver {
    names: HashMap<String, usize>,
    count: usize,
}

impl Resolver {
    fn new(job: &Job) -> Resolver {
        let mut names = HashMap::new();
        for i in 0..job.tasks.len() {
            // The first task of a duplicated name wins; duplicates are refused anyway.
            names.entry(job.task_name(i)).or_insert(i);
        }
        Resolver {
            names,
            count: job.tasks.len(),
        }
    }

    fn resolve(&self, dep: &Dependency) -> Result<ResolvedDependency, String> {
        match dep {
            Dependency::Index(i) => usize::try_from(*i)
                .ok()
                .filter(|i| *i < self.count)
                .map(ResolvedDependency::Local)
                .ok_or_else(|| {
                    format!(
                        "task index {i} is out of range (the config has {} tasks)",
                        self.count
                    )
                }),
            Dependency::Name(name) => {
                if let Some(&i) = self.names.get(name) {
                    return Ok(ResolvedDependency::Local(i));
                }
                match name.split_once(['.', ':']) {
                    Some((dataset, task)) if !dataset.is_empty() && !task.is_empty() => {
                        Ok(ResolvedDependency::CrossDataset {
                            dataset: dataset.to_string(),
                            task: task.to_string(),
                        })
                    }
                    _ => Err(format!(
                        "no task is named `{name}` (write DATASET.TASK for a task of another \
                         dataset)"
                    )),
                }
            }
        }
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<DatasetError>,
}

impl Validator {
    fn invalid(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(DatasetError::invalid(path, reason));
    }

    fn version(&mut self, job: &Job) {
        if job.version.as_f64().is_none_or(|v| v < 3.0) {
            self.invalid(
                "version",
                format!(
                    "version {} is not supported: dataset configs must be version 3 or later",
                    job.version
                ),
            );
        }
    }

    fn dataset_number(&mut self, job: &Job) {
        match &job.dataset {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {}
            Some(other) => self.invalid(
                "dataset",
                format!("the dataset number must be a whole number from 0, found `{other}`"),
            ),
        }
    }

    fn task_names(&mut self, job: &Job) {
        if job.tasks.is_empty() {
            self.invalid("tasks", "a dataset needs at least one task");
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, task) in job.tasks.iter().enumerate() {
            let path = format!("tasks[{i}].name");
            if task.name.trim().is_empty() {
                self.invalid(path, "every task needs a name");
            } else if let Some(first) = seen.get(task.name.as_str()) {
                self.invalid(
                    path,
                    format!(
                        "task name `{}` is already used by tasks[{first}]",
                        task.name
                    ),
                );
            } else {
                seen.insert(&task.name, i);
            }
        }
    }

    /// Resolves every dependency, reports unknown ones and cycles, and returns the
    /// dependencies on other datasets.
    fn dependencies(&mut self, job: &Job) -> Vec<CrossDatasetDependency> {
        let mut cross = Vec::new();
        // edges[i] = (task i depends on, position in its `depends`)
        let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); job.tasks.len()];
        let resolver = Resolver::new(job);
        for (i, task) in job.tasks.iter().enumerate() {
            for (j, dep) in task.depends.iter().enumerate() {
                let path = format!("tasks[{i}].depends[{j}]");
                match resolver.resolve(dep) {
                    Ok(ResolvedDependency::Local(target)) => edges[i].push((target, j)),
                    Ok(ResolvedDependency::CrossDataset { dataset, task }) => {
                        cross.push(CrossDatasetDependency {
                            path,
                            task_index: i,
                            dataset,
                            task,
                        })
                    }
                    Err(reason) => self.invalid(path, reason),
                }
            }
        }
        for (from, j, cycle) in find_cycles(&edges) {
            let names: Vec<String> = cycle.iter().map(|t| job.task_name(*t)).collect();
            self.invalid(
                format!("tasks[{from}].depends[{j}]"),
                format!(
                    "dependency cycle: {} (each task depends on the next)",
                    names.join(" -> ")
                ),
            );
        }
        cross
    }

    /// Iterations, data, module arguments and requirements.
    fn structure(&mut self, job: &Job) {
        if let Some(steering) = &job.steering {
            self.data_list(&steering.data, "steering.data");
        }
        for (i, task) in job.tasks.iter().enumerate() {
            let task_path = format!("tasks[{i}]");
            self.data_list(&task.data, &format!("{task_path}.data"));
            self.requirements(&task.requirements, &format!("{task_path}.requirements"));
            for (k, tray) in task.trays.iter().enumerate() {
                let tray_path = format!("{task_path}.trays[{k}]");
                if tray.iterations < 1 {
                    self.invalid(
                        format!("{tray_path}.iterations"),
                        format!("a tray runs at least once, found {}", tray.iterations),
                    );
                } else if tray.iterations > MAX_ITERATIONS {
                    self.invalid(
                        format!("{tray_path}.iterations"),
                        format!(
                            "{} is more than the limit of {MAX_ITERATIONS} iterations",
                            tray.iterations
                        ),
                    );
                }
                self.data_list(&tray.data, &format!("{tray_path}.data"));
                for (m, module) in tray.modules.iter().enumerate() {
                    let module_path = format!("{tray_path}.modules[{m}]");
                    self.data_list(&module.data, &format!("{module_path}.data"));
                    if !matches!(
                        module.args,
                        Value::String(_) | Value::Array(_) | Value::Object(_) | Value::Null
                    ) {
                        self.invalid(
                            format!("{module_path}.args"),
                            format!(
                                "module args must be a string, a list or an object, found `{}`",
                                module.args
                            ),
                        );
                    }
                }
            }
        }
    }

    fn data_list(&mut self, list: &[Data], path: &str) {
        for (n, data) in list.iter().enumerate() {
            let path = format!("{path}[{n}]");
            if let DataType::Other(word) = &data.kind {
                self.invalid(
                    format!("{path}.type"),
                    format!("unknown data type `{word}`: use one of {}", DataType::NAMES),
                );
            }
            if let Movement::Other(word) = &data.movement {
                self.invalid(
                    format!("{path}.movement"),
                    format!("unknown movement `{word}`: use one of {}", Movement::NAMES),
                );
            }
            let compression_ok = match &data.compression {
                Value::Bool(_) => true,
                Value::String(s) => COMPRESSIONS.contains(&s.as_str()),
                _ => false,
            };
            if !compression_ok {
                self.invalid(
                    format!("{path}.compression"),
                    format!(
                        "unknown compression `{}`: use true, false or one of {}",
                        data.compression,
                        COMPRESSIONS.join(", ")
                    ),
                );
            }
        }
    }

    /// Numbers or expressions for the numeric requirements, strings for `os` and `site`.
    /// Expressions that do not parse are reported by [`Validator::expressions`]; here they
    /// must only use known functions, because the server evaluates them itself.
    fn requirements(&mut self, reqs: &TaskRequirements, path: &str) {
        for (key, value) in reqs.named() {
            let path = format!("{path}.{key}");
            let textual = matches!(key, "os" | "site");
            match value {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if !textual => {
                    let problem = match n.as_f64() {
                        Some(x) => requirement_problem(key, x),
                        None => Some(format!("must be 0 or more, found {n}")),
                    };
                    if let Some(why) = problem {
                        self.invalid(path, why);
                    }
                }
                Some(Value::String(s)) => self.requirement_string(key, s, textual, path),
                Some(other) => {
                    let wanted = if textual {
                        "a string"
                    } else {
                        "a number or an expression"
                    };
                    self.invalid(path, format!("expected {wanted}, found `{other}`"));
                }
            }
        }
    }

    fn requirement_string(&mut self, key: &str, s: &str, textual: bool, path: String) {
        let Ok(ast) = parse(s) else {
            return; // reported with its path by `expressions`
        };
        if let Some(name) = ast.unknown_functions().into_iter().next() {
            self.errors.push(DatasetError::Expression {
                path,
                error: crate::dataset::ExprError::UnknownFunction { name },
            });
            return;
        }
        if textual || ast.has_calls() {
            return;
        }
        let text = ast.plain_text();
        let text = text.trim();
        match infer_type(text) {
            _ if text.is_empty() => {}
            Value::Number(n) if n.as_f64().is_some_and(|x| x >= 0.0) => {
                if let Some(why) = n.as_f64().and_then(|x| requirement_problem(key, x)) {
                    self.invalid(path, why);
                }
            }
            _ => self.invalid(
                path,
                format!("`{s}` is neither a number from 0 nor an expression"),
            ),
        }
    }

    /// Every string of the config (and every object key) must parse as an expression, except
    /// the free-text `description`.
    fn expressions(&mut self, job: &Job) {
        let value = job.to_value();
        let Value::Object(top) = &value else {
            return;
        };
        for (key, v) in top {
            if key != "description" {
                let mut path = key.clone();
                self.walk(v, &mut path, 0);
            }
        }
    }

    fn walk(&mut self, value: &Value, path: &mut String, depth: usize) {
        if depth > MAX_WALK_DEPTH {
            self.invalid(path.clone(), "nested too deep");
            return;
        }
        match value {
            Value::String(s) => self.check_expression(s, path),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    self.walk(item, path, depth + 1);
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    self.check_expression(k, path);
                    self.walk(v, path, depth + 1);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn check_expression(&mut self, s: &str, path: &str) {
        if !s.contains('$') {
            return; // nothing can fail to parse without a call
        }
        if let Err(error) = parse(s) {
            self.errors.push(DatasetError::Expression {
                path: path.to_string(),
                error,
            });
        }
    }
}

/// Finds dependency cycles with an iterative depth-first search (a long chain of tasks must
/// not overflow the stack). Each result is (task, position in its `depends`, the cycle from
/// that task's dependency back to it) — one per back edge, so each cycle is reported once.
fn find_cycles(edges: &[Vec<(usize, usize)>]) -> Vec<(usize, usize, Vec<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnPath,
        Done,
    }
    let mut state = vec![State::New; edges.len()];
    let mut cycles = Vec::new();
    for root in 0..edges.len() {
        if state[root] != State::New {
            continue;
        }
        // (task, next edge to follow); the stack is also the current path.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = State::OnPath;
        while let Some(&mut (task, ref mut next)) = stack.last_mut() {
            let Some(&(target, j)) = edges[task].get(*next) else {
                state[task] = State::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            match state[target] {
                State::New => {
                    state[target] = State::OnPath;
                    stack.push((target, 0));
                }
                State::OnPath => {
                    // Written from the task whose entry closes the cycle: task -> target ->
                    // … -> task.
                    let start = stack.iter().position(|(t, _)| *t == target).unwrap_or(0);
                    let mut cycle = vec![task];
                    cycle.extend(stack[start..].iter().map(|(t, _)| *t));
                    cycles.push((task, j, cycle));
                }
                State::Done => {}
            }
        }
    }
    cycles
}
