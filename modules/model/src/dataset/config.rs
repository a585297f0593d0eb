//! Typed structs for the version-3 dataset config (SPEC §3) and reading them from JSON.
//!
//! Field names and defaults are IceProd 2.3's. Every struct keeps the keys it does not know in
//! `extra`, so a config read and written again ([`Job::to_json`]) keeps every field its author
//! wrote (`task_files`, `container`, `transfer`, `configs`, …); fields this server never
//! interprets (`difplus`, `classes`, module `args`) are kept as raw JSON. Typed fields missing
//! from the text get IceProd's defaults and are written out with them.
//!
//! Reading only checks JSON types; the rules (names, dependencies, expressions, …) are checked
//! by [`crate::dataset::validate`]. This file must not evaluate expressions.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Number, Value};

use crate::dataset::error::{DatasetError, DatasetErrors};

/// Parameters: names to arbitrary JSON values.
pub type Parameters = Map<String, Value>;

/// Per grid type (`condor`, `pbs`, …), keys and values for that grid's submit files; kept as
/// written, but this server's queue does not apply them (it uses `[queue.grids.NAME] batchopts`).
pub type Batchsys = BTreeMap<String, Map<String, Value>>;

/// A whole dataset config (IceProd's `Job`): with `options` filled it is also a task config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// Config format version; 3 or more (IceProd 2.3 writes 3, later ones 3.1, 3.2).
    pub version: Number,
    /// Filled per task when handed to a worker (`job`, `dataset`, `task_id`, …); `{}` when
    /// submitted.
    pub options: Map<String, Value>,
    /// IceProd writes `null` for a config without steering.
    pub steering: Option<Steering>,
    /// The tasks every job runs; a task's position here is its `task_index`.
    pub tasks: Vec<Task>,
    /// DIF/Plus metadata, read by `$metadata(x)`; not otherwise interpreted.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub difplus: Option<Value>,
    /// The author's description of the dataset, read by `$(description)`.
    pub description: String,
    /// Category labels as written, read by `$(categories)`.
    pub categories: Vec<Value>,
    /// The dataset number, set by the server on configs it hands out.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub dataset: Option<Value>,
    /// IceProd's id of the dataset this one derives from; kept, read only by `$(parent_id)`.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_id: Option<Value>,
    /// Top-level keys this server does not know, kept to be written back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for Job {
    fn default() -> Self {
        Job {
            version: Number::from(3),
            options: Map::new(),
            steering: None,
            tasks: Vec::new(),
            difplus: None,
            description: String::new(),
            categories: Vec::new(),
            dataset: None,
            parent_id: None,
            extra: Map::new(),
        }
    }
}

/// Settings shared by every task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Steering {
    /// Parameters every task sees: the outermost scope of `$(name)`, and `$steering(x)`.
    pub parameters: Parameters,
    /// Submit options per grid type for every task (see [`Batchsys`]).
    pub batchsys: Option<Batchsys>,
    /// Site-specific values read by `$system(x)`.
    pub system: Map<String, Value>,
    /// Files for every task to download first (see [`Resource`]).
    pub resources: Vec<Resource>,
    /// Data files staged for every task, before and after it runs.
    pub data: Vec<Data>,
    /// Steering keys this server does not know, kept to be written back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One task of every job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    /// The task's name, not empty and unique in the config; `depends` and `$(task)` use it.
    pub name: String,
    /// Tasks of the same job that must complete first, or `DATASET.TASK` in another dataset.
    pub depends: Vec<Dependency>,
    /// Submit options per grid type for this task (see [`Batchsys`]).
    pub batchsys: Option<Batchsys>,
    /// The trays, run in order, each `iterations` times.
    pub trays: Vec<Tray>,
    /// What the task needs of a machine; `null` reads as nothing asked.
    #[serde(deserialize_with = "null_as_default")]
    pub requirements: TaskRequirements,
    /// Data files staged in before the task's modules run, and out after.
    pub data: Vec<Data>,
    /// Files to download before the task runs (see [`Resource`]).
    pub resources: Vec<Resource>,
    /// Software classes to set up, for IceProd's worker; `iceprod task` ignores them.
    pub classes: Vec<Value>,
    /// The task's parameters, seen by `$(name)` before the steering ones.
    pub parameters: Parameters,
    /// Task keys this server does not know (`task_files`, `container`, …), kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What a task needs of the machine it runs on. Each value is a number, an expression string
/// evaluated per job ([`crate::dataset::Requirements`]) or absent (the default applies).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskRequirements {
    /// Cores; absent or `null`: 1.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<Value>,
    /// GPUs; absent or `null`: 0.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub gpu: Option<Value>,
    /// In GB.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<Value>,
    /// In GB.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk: Option<Value>,
    /// In hours.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<Value>,
    /// The OS wanted, in the worker's `OS_ARCH` form (`RHEL_7_x86_64`); absent: any.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub os: Option<Value>,
    /// IceProd 2.3 also knows a `site` requirement.
    #[serde(
        deserialize_with = "keep_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub site: Option<Value>,
    /// Requirement keys this server does not know, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TaskRequirements {
    /// The named requirement values in a fixed order, for checks that treat them alike.
    pub fn named(&self) -> [(&'static str, Option<&Value>); 7] {
        [
            ("cpu", self.cpu.as_ref()),
            ("gpu", self.gpu.as_ref()),
            ("memory", self.memory.as_ref()),
            ("disk", self.disk.as_ref()),
            ("time", self.time.as_ref()),
            ("os", self.os.as_ref()),
            ("site", self.site.as_ref()),
        ]
    }
}

/// A group of modules run `iterations` times in a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tray {
    /// The tray's name, for people: `iceprod task` names a tray by its index.
    pub name: String,
    /// At least 1.
    pub iterations: i64,
    /// The modules, run in order on each iteration.
    pub modules: Vec<Module>,
    /// Data files of the tray, staged with the task's before and after it runs.
    pub data: Vec<Data>,
    /// Files to download before the task runs (see [`Resource`]).
    pub resources: Vec<Resource>,
    /// Software classes to set up (see [`Task::classes`]).
    pub classes: Vec<Value>,
    /// The tray's parameters, seen by `$(name)` before the task's.
    pub parameters: Parameters,
    /// Tray keys this server does not know, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for Tray {
    fn default() -> Self {
        Tray {
            name: String::new(),
            iterations: 1,
            modules: Vec::new(),
            data: Vec::new(),
            resources: Vec::new(),
            classes: Vec::new(),
            parameters: Parameters::new(),
            extra: Map::new(),
        }
    }
}

/// One script, executable or Python class to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Module {
    /// The module's name, which the summary of its failure names (`#INDEX` when empty).
    pub name: String,
    /// Script or executable: a path or URL.
    #[serde(deserialize_with = "null_as_default")]
    pub src: String,
    /// A string, a list, an object or `null` (checked by validation); IceProd's default is `""`.
    pub args: Value,
    /// A wrapper command the module runs under (expanded, split as a shell would); empty: none.
    #[serde(deserialize_with = "null_as_default")]
    pub env_shell: String,
    /// Whether the module starts in a cleared environment (`PATH`, `HOME`, … kept); default true.
    pub env_clear: bool,
    /// An IceTray class to run; `iceprod task` cannot, and fails a module that has no `src`.
    #[serde(deserialize_with = "null_as_default")]
    pub running_class: String,
    /// Data files of the module, staged with the task's before and after it runs.
    pub data: Vec<Data>,
    /// Files to download before the task runs (see [`Resource`]).
    pub resources: Vec<Resource>,
    /// Software classes to set up (see [`Task::classes`]).
    pub classes: Vec<Value>,
    /// The module's parameters: the innermost scope `$(name)` looks in.
    pub parameters: Parameters,
    /// Module keys this server does not know, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for Module {
    fn default() -> Self {
        Module {
            name: String::new(),
            src: String::new(),
            args: Value::String(String::new()),
            env_shell: String::new(),
            // IceProd clears the environment before a module unless told otherwise.
            env_clear: true,
            running_class: String::new(),
            data: Vec::new(),
            resources: Vec::new(),
            classes: Vec::new(),
            parameters: Parameters::new(),
            extra: Map::new(),
        }
    }
}

/// A data file to stage in or out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Data {
    /// URL (may be blank for temporary files).
    pub remote: String,
    /// File name in the task's folder.
    pub local: String,
    /// `type`: where the file lives and how long it is kept (default `permanent`).
    #[serde(rename = "type")]
    pub kind: DataType,
    /// Which way the file moves (default `both`, as in IceProd 2.3).
    pub movement: Movement,
    /// `false`, `true` or one of `none gzip gz bzip bz2 lzma` (checked by validation).
    pub compression: Value,
    /// Data keys this server does not know, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for Data {
    fn default() -> Self {
        Data {
            remote: String::new(),
            local: String::new(),
            kind: DataType::Permanent,
            // IceProd 2.3's default; later IceProd versions changed it to `input`.
            movement: Movement::Both,
            compression: Value::Bool(false),
            extra: Map::new(),
        }
    }
}

/// A file to download before the task runs (software, tables), for IceProd's worker;
/// `iceprod task` does not fetch them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resource {
    /// URL to download from.
    pub remote: String,
    /// File name in the task's folder.
    pub local: String,
    /// Resource keys this server does not know, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Where a data file lives and how long it is kept. An unknown word is kept as written, so it
/// can be reported with its path by validation and written back unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataType {
    /// `permanent`: kept at its `remote` URL for good (the default).
    Permanent,
    /// `tray_temp`: a temporary file that lives as long as its tray.
    TrayTemp,
    /// `task_temp`: a temporary file that lives as long as its task.
    TaskTemp,
    /// `job_temp`: a temporary file shared by the tasks of one job.
    JobTemp,
    /// `dataset_temp`: a temporary file shared by the jobs of one dataset.
    DatasetTemp,
    /// `site_temp`: a temporary file kept in the site's own storage.
    SiteTemp,
    /// A word IceProd does not know, kept as written; validation refuses it.
    Other(String),
}

/// Which way a data file moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Movement {
    /// `input`: downloaded before the task runs.
    Input,
    /// `output`: uploaded after the task runs.
    Output,
    /// `both`: downloaded before and uploaded after (IceProd 2.3's default).
    Both,
    /// A word IceProd does not know, kept as written; validation refuses it.
    Other(String),
}

const DATA_TYPES: [(&str, DataType); 6] = [
    ("permanent", DataType::Permanent),
    ("tray_temp", DataType::TrayTemp),
    ("task_temp", DataType::TaskTemp),
    ("job_temp", DataType::JobTemp),
    ("dataset_temp", DataType::DatasetTemp),
    ("site_temp", DataType::SiteTemp),
];

const MOVEMENTS: [(&str, Movement); 3] = [
    ("input", Movement::Input),
    ("output", Movement::Output),
    ("both", Movement::Both),
];

impl DataType {
    /// The words IceProd accepts, for error messages.
    pub const NAMES: &'static str =
        "permanent, tray_temp, task_temp, job_temp, dataset_temp, site_temp";

    /// The word as written in a config (an unknown word as it was read).
    pub fn as_str(&self) -> &str {
        match self {
            DataType::Other(s) => s,
            known => DATA_TYPES
                .iter()
                .find(|(_, t)| t == known)
                .map_or("", |(name, _)| name),
        }
    }

    fn from_word(word: &str) -> DataType {
        DATA_TYPES
            .iter()
            .find(|(name, _)| *name == word)
            .map_or_else(|| DataType::Other(word.to_string()), |(_, t)| t.clone())
    }
}

impl Movement {
    /// The words IceProd accepts, for error messages.
    pub const NAMES: &'static str = "input, output, both";

    /// The word as written in a config (an unknown word as it was read).
    pub fn as_str(&self) -> &str {
        match self {
            Movement::Other(s) => s,
            known => MOVEMENTS
                .iter()
                .find(|(_, m)| m == known)
                .map_or("", |(name, _)| name),
        }
    }

    fn from_word(word: &str) -> Movement {
        MOVEMENTS
            .iter()
            .find(|(name, _)| *name == word)
            .map_or_else(|| Movement::Other(word.to_string()), |(_, m)| m.clone())
    }

    /// True when the file is downloaded before the task runs.
    pub fn is_input(&self) -> bool {
        matches!(self, Movement::Input | Movement::Both)
    }

    /// True when the file is uploaded after the task runs.
    pub fn is_output(&self) -> bool {
        matches!(self, Movement::Output | Movement::Both)
    }
}

impl Serialize for DataType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DataType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| DataType::from_word(&s))
    }
}

impl Serialize for Movement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Movement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Movement::from_word(&s))
    }
}

/// One entry of a task's `depends`: a task index, or a name (of a task in this config, or
/// `DATASET.TASK` / IceProd's `DATASET:TASK` in another dataset). Which one a name is gets
/// decided by validation, which knows the task names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// A task of the same job, by its position in `tasks` (`1.0` reads as 1).
    Index(u64),
    /// A task name, or `DATASET.TASK` / `DATASET:TASK`; validation decides which.
    Name(String),
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependency::Index(i) => write!(f, "{i}"),
            Dependency::Name(n) => f.write_str(n),
        }
    }
}

impl Serialize for Dependency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Dependency::Index(i) => s.serialize_u64(*i),
            Dependency::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for Dependency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DependencyVisitor;
        impl Visitor<'_> for DependencyVisitor {
            type Value = Dependency;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a task name or a task index (a whole number from 0)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dependency, E> {
                Ok(Dependency::Index(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dependency, E> {
                u64::try_from(v)
                    .map(Dependency::Index)
                    .map_err(|_| E::custom(format!("task index {v} is negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dependency, E> {
                // IceProd compares with the index as written: 1.0 finds task 1, 1.5 nothing.
                if v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 {
                    Ok(Dependency::Index(v as u64))
                } else {
                    Err(E::invalid_type(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dependency, E> {
                Ok(Dependency::Name(v.to_string()))
            }
        }
        d.deserialize_any(DependencyVisitor)
    }
}

/// Reads any value, `null` included, so a `null` the author wrote is written back as `null`
/// while a missing field stays missing.
fn keep_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Reads `null` as the type's default: IceProd has written `null` for these fields.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

impl Job {
    /// Reads a config from JSON text, checking JSON syntax and types only (see
    /// [`crate::dataset::parse_and_validate`] for the rules). Text that is not JSON gives one
    /// error with its line and column; values of the wrong type give one error per task (and
    /// one for the rest), each with the path of the offending value.
    pub fn from_json(text: &str) -> Result<Job, DatasetErrors> {
        // serde_json refuses nesting deeper than 128 levels, so hostile input cannot overflow
        // the stack here or in the walks that follow.
        let value: Value = serde_json::from_str(text).map_err(|e| DatasetError::Syntax {
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        Job::from_value(&value)
    }

    /// Reads a config from a JSON value (types only, as [`Job::from_json`]).
    pub fn from_value(value: &Value) -> Result<Job, DatasetErrors> {
        if !value.is_object() {
            return Err(DatasetError::Type {
                path: String::new(),
                message: format!(
                    "a dataset config is a JSON object, found `{}`",
                    brief(value)
                ),
            }
            .into());
        }
        match typed::<Job>(value, "") {
            Ok(job) => Ok(job),
            Err(first) => Err(DatasetErrors(type_errors(value, first))),
        }
    }

    /// The config as a JSON value.
    pub fn to_value(&self) -> Value {
        // Invariant: every map in a Job has string keys and every number came from JSON, so
        // serializing cannot fail.
        serde_json::to_value(self).expect("a Job always serializes to JSON")
    }

    /// The config as JSON text.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// The steering section, or an empty one when the config has none.
    pub fn steering(&self) -> &Steering {
        static EMPTY: OnceLock<Steering> = OnceLock::new();
        self.steering
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Steering::default))
    }

    /// The name a dependency uses for task `index`: its name, or (as IceProd does for a task
    /// without a name) its index written out.
    pub fn task_name(&self, index: usize) -> String {
        match self.tasks.get(index) {
            Some(t) if !t.name.is_empty() => t.name.clone(),
            _ => index.to_string(),
        }
    }
}

/// Deserializes `T` from `value`, naming the path of the first value of the wrong type.
fn typed<T: serde::de::DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, DatasetError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner = e.path().to_string();
        DatasetError::Type {
            path: join_path(prefix, if inner == "." { "" } else { &inner }),
            message: e.into_inner().to_string(),
        }
    })
}

/// After the whole config failed to read, reads each task on its own and the rest without the
/// tasks, so one submission reports the type errors of every task at once.
fn type_errors(value: &Value, first: DatasetError) -> Vec<DatasetError> {
    let Some(Value::Array(tasks)) = value.get("tasks") else {
        return vec![first];
    };
    let mut errors = Vec::new();
    let mut rest = value.clone();
    if let Some(obj) = rest.as_object_mut() {
        obj.insert("tasks".into(), Value::Array(Vec::new()));
    }
    if let Err(e) = typed::<Job>(&rest, "") {
        errors.push(e);
    }
    for (i, task) in tasks.iter().enumerate() {
        if let Err(e) = typed::<Task>(task, &format!("tasks[{i}]")) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        errors.push(first);
    }
    errors
}

/// A value shortened for a message: a config pasted in the wrong place can be megabytes.
fn brief(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// Joins a path prefix and a serde_path_to_error path (`a.b[0]`, `[2].c`).
fn join_path(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => inner.to_string(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{inner}"),
    }
}

/// serde_json appends ` at line L column C`; the error carries those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
