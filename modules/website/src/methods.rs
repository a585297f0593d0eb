//! The JSON-RPC method table: which names exist and the function that answers each.
//!
//! Adding a method is one line in [`METHODS`] plus its function. A method answers in one of two
//! ways:
//! - [`Handler::Immediate`]: a pure function of the params and the config, answered at once;
//! - [`Handler::Db`]: a pure function of the params and the config that makes one db
//!   request; the answer is the db's reply as JSON. Most methods are this kind;
//! - [`Handler::Person`]: the same for what people do (SPEC §5.3), given also the [`Caller`]:
//!   the website session the HTTP request carries, used when the params hold no `passkey`;
//! - [`Handler::Deferred`]: gets the module and its context plus a [`Pending`] token, starts
//!   whatever it needs (typically `cx.call(ModuleKind::Db, request, callback)`) and answers
//!   later, from the callback, with [`Website::answer`]. It must never block the loop.
//!
//! Errors a method returns are shown to the client: -32000 messages must be safe to show, and
//! details go to the log (see [`server_error_from_call`]).

use iceprod_runtime::web::{AccountReply, AccountRequest, Group, UserAuth};
use iceprod_runtime::{
    CallError, Config, Context, DatasetAction, DatasetSubmission, DbReply, DbRequest, ModuleKind,
    PublicQuery, Reply, Request, Resources, TaskAction, TaskCall, UserAction,
};
use serde_json::Value;

use crate::jsonrpc::{self, Params, RpcError};
use crate::{HttpRequest, Website};

/// How a method answers.
pub enum Handler {
    /// Answers at once from the params and the config.
    Immediate(fn(&Params, &Config) -> Result<Value, RpcError>),
    /// Turns the params into one db request; the answer is the db's reply as JSON
    /// ([`reply_json`]), or the refusal of the params.
    Db(fn(&Params, &Config) -> Result<DbRequest, RpcError>),
    /// As `Db`, for a person's request: authorised by the `passkey` param or, without one, by
    /// the caller's website session.
    Person(fn(&Params, &Config, &Caller) -> Result<DbRequest, RpcError>),
    /// Answers later through [`Website::answer`] with the [`Pending`] token it was given.
    Deferred(fn(&mut Website, &mut Context<Website>, Params, Pending)),
    /// An admin's action on the server itself, carried out by the controller
    /// ([`crate::admin`]); authorised as `Person` is.
    Admin(&'static crate::admin::AdminMethod),
}

/// One entry of the method table.
pub struct Method {
    pub name: &'static str,
    pub handler: Handler,
}

/// Every method the server offers (SPEC §5.2–§5.5 join here as the db module arrives).
pub const METHODS: &[Method] = &[
    Method {
        name: "echo",
        handler: Handler::Immediate(echo),
    },
    Method {
        name: "public_get_site_id",
        handler: Handler::Immediate(public_get_site_id),
    },
    Method {
        name: "public_get_graphs",
        handler: Handler::Person(public_get_graphs),
    },
    Method {
        name: "public_get_number_of_tasks_in_each_state",
        handler: Handler::Person(public_tasks_in_each_state),
    },
    Method {
        name: "public_get_datasets_by_status",
        handler: Handler::Person(public_datasets_by_status),
    },
    Method {
        name: "public_get_config",
        handler: Handler::Person(public_config),
    },
    Method {
        name: "public_get_dataset_description",
        handler: Handler::Person(public_dataset_description),
    },
    Method {
        name: "public_get_dataset_steering",
        handler: Handler::Person(public_dataset_steering),
    },
    Method {
        name: "public_get_dataset_completion",
        handler: Handler::Person(public_dataset_completion),
    },
    Method {
        name: "public_get_all_dataset_completion",
        handler: Handler::Person(public_all_dataset_completion),
    },
    Method {
        name: "public_get_task_ids",
        handler: Handler::Person(public_task_ids),
    },
    Method {
        name: "public_get_task_stats",
        handler: Handler::Person(public_task_stats),
    },
    Method {
        name: "public_get_task_walltime",
        handler: Handler::Person(public_task_walltime),
    },
    Method {
        name: "public_get_tasks_by_name",
        handler: Handler::Person(public_tasks_by_name),
    },
    Method {
        name: "public_get_cpu_gpu_usage",
        handler: Handler::Person(public_cpu_gpu_usage),
    },
    Method {
        name: "new_task",
        handler: Handler::Db(new_task),
    },
    Method {
        name: "update_pilot",
        handler: Handler::Db(update_pilot),
    },
    Method {
        name: "set_processing",
        handler: Handler::Db(set_processing),
    },
    Method {
        name: "stillrunning",
        handler: Handler::Db(stillrunning),
    },
    Method {
        name: "get_task_config",
        handler: Handler::Db(get_task_config),
    },
    Method {
        name: "finish_task",
        handler: Handler::Db(finish_task),
    },
    Method {
        name: "task_error",
        handler: Handler::Db(task_error),
    },
    Method {
        name: "upload_logfile",
        handler: Handler::Db(upload_logfile),
    },
    Method {
        name: "submit_dataset",
        handler: Handler::Person(submit_dataset),
    },
    Method {
        name: "update_dataset_config",
        handler: Handler::Person(update_dataset_config),
    },
    Method {
        name: "set_dataset_description",
        handler: Handler::Person(set_dataset_description),
    },
    Method {
        name: "set_dataset_priority",
        handler: Handler::Person(set_dataset_priority),
    },
    Method {
        name: "reset_task",
        handler: Handler::Person(reset_task),
    },
    Method {
        name: "resume_task",
        handler: Handler::Person(resume_task),
    },
    Method {
        name: "suspend_task",
        handler: Handler::Person(suspend_task),
    },
    Method {
        name: "reset_jobs",
        handler: Handler::Person(reset_jobs),
    },
    Method {
        name: "hard_reset_jobs",
        handler: Handler::Person(hard_reset_jobs),
    },
    Method {
        name: "suspend_jobs",
        handler: Handler::Person(suspend_jobs),
    },
    Method {
        name: "reset_dataset",
        handler: Handler::Person(reset_dataset),
    },
    Method {
        name: "hard_reset_dataset",
        handler: Handler::Person(hard_reset_dataset),
    },
    Method {
        name: "suspend_dataset",
        handler: Handler::Person(suspend_dataset),
    },
    Method {
        name: "resume_dataset",
        handler: Handler::Person(resume_dataset),
    },
    Method {
        name: "truncate_dataset",
        handler: Handler::Person(truncate_dataset),
    },
    Method {
        name: "get_groups",
        handler: Handler::Person(get_groups),
    },
    Method {
        name: "set_groups",
        handler: Handler::Person(set_groups),
    },
    Method {
        name: "get_user_roles",
        handler: Handler::Person(get_user_roles),
    },
    Method {
        name: "set_user_roles",
        handler: Handler::Person(set_user_roles),
    },
    Method {
        name: "create_user",
        handler: Handler::Person(create_user),
    },
    Method {
        name: "set_user_password",
        handler: Handler::Person(set_user_password),
    },
    Method {
        name: "start_module",
        handler: Handler::Admin(&crate::admin::START_MODULE),
    },
    Method {
        name: "stop_module",
        handler: Handler::Admin(&crate::admin::STOP_MODULE),
    },
    Method {
        name: "restart_module",
        handler: Handler::Admin(&crate::admin::RESTART_MODULE),
    },
    Method {
        name: "get_running_modules",
        handler: Handler::Admin(&crate::admin::GET_RUNNING_MODULES),
    },
    Method {
        name: "reload_config",
        handler: Handler::Admin(&crate::admin::RELOAD_CONFIG),
    },
];

/// The slot of one call in one HTTP exchange. A deferred method hands it back to
/// [`Website::answer`] exactly once; answering twice is impossible since it is not `Clone`.
#[must_use = "a deferred call must be answered with Website::answer"]
#[derive(Debug)]
pub struct Pending {
    pub(crate) exchange: u64,
    pub(crate) slot: usize,
}

/// The method called `name`.
pub fn find(name: &str) -> Option<&'static Method> {
    METHODS
        .iter()
        .chain(test_methods::TABLE)
        .find(|m| m.name == name)
}

/// The `method` label in `/metrics`: a known name, or `unknown` so that clients cannot create
/// series by inventing names.
pub fn label(name: Option<&str>) -> &'static str {
    name.and_then(find).map_or("unknown", |m| m.name)
}

/// The JSON-RPC error for a failed internal call; the details stay in the log.
pub fn server_error_from_call(method: &str, error: &CallError) -> RpcError {
    match error {
        CallError::Timeout => {
            log::warn!("{method}: internal call timed out");
            jsonrpc::timeout()
        }
        CallError::Failed(message) => {
            // CallError::Failed messages are documented as safe to show.
            log::warn!("{method}: internal call failed: {message}");
            jsonrpc::server_error(message.clone())
        }
        CallError::Refused(message) => {
            // The request named something unknown or met a state that forbids it: the
            // caller's to fix, and the message is documented as safe to show.
            log::info!("{method}: refused: {message}");
            jsonrpc::invalid_params(message.clone())
        }
        CallError::Forbidden(message) => {
            log::info!("{method}: forbidden: {message}");
            jsonrpc::not_authorized(message.clone())
        }
        CallError::Disabled(kind) => {
            log::error!("{method}: module {kind} is disabled");
            jsonrpc::server_error(format!("module {kind} is disabled"))
        }
        CallError::Unsupported(what) => {
            log::error!("{method}: internal call not supported: {what}");
            jsonrpc::server_error("internal error")
        }
    }
}

/// `echo(value)`: returns `value` unchanged (a worker's connection check, SPEC §5.2.1).
fn echo(params: &Params, _config: &Config) -> Result<Value, RpcError> {
    params.required("value", 0).cloned()
}

/// `public_get_site_id()`: this site's id (the controller always fills it in the config).
fn public_get_site_id(_params: &Params, config: &Config) -> Result<Value, RpcError> {
    match &config.site.id {
        Some(id) => Ok(Value::String(id.clone())),
        None => {
            log::error!("public_get_site_id: the config has no site id");
            Err(jsonrpc::server_error("site id not set"))
        }
    }
}

/// A worker's call about one task: its passkey and the task id in `task_param`.
fn task_call(params: &Params, task_param: &str, call: TaskCall) -> Result<DbRequest, RpcError> {
    Ok(DbRequest::Task {
        passkey: string_param(params, "passkey")?,
        task_id: string_param(params, task_param)?,
        call,
    })
}

fn string_param(params: &Params, name: &str) -> Result<String, RpcError> {
    match params.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(jsonrpc::invalid_params(format!(
            "parameter '{name}' must not be empty"
        ))),
        Some(_) => Err(jsonrpc::invalid_params(format!(
            "parameter '{name}' must be a string"
        ))),
        None => Err(jsonrpc::missing_param(name)),
    }
}

fn object_param(params: &Params, name: &str) -> Result<Value, RpcError> {
    match params.get(name) {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(Value::Null) | None => Ok(Value::Object(Default::default())),
        Some(_) => Err(jsonrpc::invalid_params(format!(
            "parameter '{name}' must be an object"
        ))),
    }
}

/// `set_processing(passkey, task_id)`: queued → processing.
fn set_processing(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    task_call(p, "task_id", TaskCall::SetProcessing)
}

/// `stillrunning(passkey, task_id)`: true while the task is queued or processing.
fn stillrunning(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    task_call(p, "task_id", TaskCall::StillRunning)
}

/// `get_task_config(passkey, task_id)`: the task's full config, as `task.cfg` holds it.
fn get_task_config(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    task_call(p, "task_id", TaskCall::Config)
}

/// `finish_task(passkey, task_id, stats)`: → complete.
fn finish_task(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    let stats = object_param(p, "stats")?;
    task_call(p, "task_id", TaskCall::Finish { stats })
}

/// `task_error(passkey, task_id, error_info)`: the error path of SPEC §4.
fn task_error(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    let info = object_param(p, "error_info")?;
    task_call(p, "task_id", TaskCall::Error { info })
}

/// `upload_logfile(passkey, task, name, data)`: stores the log as received.
fn upload_logfile(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    let name = string_param(p, "name")?;
    let data = match p.get("data") {
        Some(Value::String(data)) => data.clone(),
        Some(_) => return Err(jsonrpc::invalid_params("parameter 'data' must be a string")),
        None => return Err(jsonrpc::missing_param("data")),
    };
    task_call(p, "task", TaskCall::UploadLog { name, data })
}

/// A person's action, authorised by the user passkey in `passkey` or the caller's session.
fn as_user(params: &Params, caller: &Caller, action: UserAction) -> Result<DbRequest, RpcError> {
    Ok(DbRequest::AsUser {
        auth: caller.auth(params)?,
        action,
    })
}

/// The session cookie (DOM contract: `iceprod_session`).
pub const SESSION_COOKIE: &str = "iceprod_session";
/// The header a page's script sends the session's CSRF token in.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// What the HTTP request of a JSON-RPC call says about who sends it: the website session of
/// its `iceprod_session` cookie and the CSRF token of its `X-CSRF-Token` header. A browser
/// sends the cookie to any request for this site, also one another site makes it send, but
/// only a page of this site can set the header: the db lets a session change anything only
/// with the session's own token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    session: Option<(String, Option<String>)>,
}

impl Caller {
    pub fn of(request: &HttpRequest) -> Caller {
        let session = request
            .headers_named("Cookie")
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
            .map(|(_, value)| value.trim_matches('"').to_string());
        let csrf = request
            .headers_named(CSRF_HEADER)
            .next()
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty());
        Caller {
            session: session.map(|id| (id, csrf)),
        }
    }

    /// The user passkey of the params, else the session; without either, the passkey is
    /// named as missing.
    pub fn auth(&self, params: &Params) -> Result<UserAuth, RpcError> {
        match (params.get("passkey"), &self.session) {
            (None, Some((session_id, csrf_token))) => Ok(UserAuth::Session {
                session_id: session_id.clone(),
                csrf_token: csrf_token.clone(),
            }),
            _ => Ok(UserAuth::Passkey(string_param(params, "passkey")?)),
        }
    }
}

/// An id or a list of ids (`tasks`, `job_ids`).
fn ids_param(params: &Params, name: &str) -> Result<Vec<String>, RpcError> {
    let bad =
        || jsonrpc::invalid_params(format!("parameter '{name}' must be an id or a list of ids"));
    match params.get(name) {
        Some(Value::String(id)) if !id.is_empty() => Ok(vec![id.clone()]),
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(bad)
            })
            .collect(),
        Some(_) => Err(bad()),
        None => Err(jsonrpc::missing_param(name)),
    }
}

/// `config`: an object or its JSON text.
fn config_param(params: &Params) -> Result<String, RpcError> {
    match params.get("config") {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(jsonrpc::invalid_params(
            "parameter 'config' must be an object or JSON text",
        )),
        None => Err(jsonrpc::missing_param("config")),
    }
}

/// A string param that may be absent (empty then).
fn optional_text(params: &Params, name: &str) -> Result<String, RpcError> {
    match params.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => Err(jsonrpc::invalid_params(format!(
            "parameter '{name}' must be a string"
        ))),
    }
}

/// `submit_dataset(passkey, config, njobs, description, gridspec, stat_keys, debug, group)`:
/// returns the new dataset's id.
fn submit_dataset(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let config = config_param(p)?;
    let njobs = match p.get("njobs") {
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                jsonrpc::invalid_params("parameter 'njobs' must be a positive integer")
            })?,
        None => return Err(jsonrpc::missing_param("njobs")),
    };
    let keys_error = || jsonrpc::invalid_params("parameter 'stat_keys' must be a list of strings");
    let stat_keys = match p.get("stat_keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|k| k.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(keys_error)?,
        Some(_) => return Err(keys_error()),
    };
    let group = optional_text(p, "group")?;
    let submission = DatasetSubmission {
        config,
        description: optional_text(p, "description")?,
        njobs,
        gridspec: optional_text(p, "gridspec")?,
        debug: p.get("debug").and_then(Value::as_bool).unwrap_or(false),
        group: (!group.is_empty()).then_some(group),
        username: String::new(),
        stat_keys,
    };
    as_user(p, caller, UserAction::SubmitDataset(Box::new(submission)))
}

/// `update_dataset_config(passkey, dataset_id, config)`.
fn update_dataset_config(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let dataset_id = string_param(p, "dataset_id")?;
    let config = config_param(p)?;
    as_user(p, caller, UserAction::UpdateConfig { dataset_id, config })
}

/// `set_dataset_description(passkey, dataset_id, description)`.
fn set_dataset_description(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let dataset_id = string_param(p, "dataset_id")?;
    let description = match p.get("description") {
        Some(Value::String(d)) => d.clone(),
        Some(_) => {
            return Err(jsonrpc::invalid_params(
                "parameter 'description' must be a string",
            ))
        }
        None => return Err(jsonrpc::missing_param("description")),
    };
    as_user(
        p,
        caller,
        UserAction::SetDescription {
            dataset_id,
            description,
        },
    )
}

/// `set_dataset_priority(passkey, dataset_id, priority)`.
fn set_dataset_priority(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let dataset_id = string_param(p, "dataset_id")?;
    let priority = p
        .get("priority")
        .and_then(Value::as_f64)
        .ok_or_else(|| jsonrpc::invalid_params("parameter 'priority' must be a number"))?;
    as_user(
        p,
        caller,
        UserAction::SetPriority {
            dataset_id,
            priority,
        },
    )
}

fn tasks_action(p: &Params, caller: &Caller, action: TaskAction) -> Result<DbRequest, RpcError> {
    let task_ids = ids_param(p, "tasks")?;
    as_user(p, caller, UserAction::Tasks { task_ids, action })
}

fn jobs_action(p: &Params, caller: &Caller, action: TaskAction) -> Result<DbRequest, RpcError> {
    let job_ids = ids_param(p, "job_ids")?;
    as_user(p, caller, UserAction::Jobs { job_ids, action })
}

fn dataset_action(
    p: &Params,
    caller: &Caller,
    action: DatasetAction,
) -> Result<DbRequest, RpcError> {
    let dataset_id = string_param(p, "dataset_id")?;
    as_user(p, caller, UserAction::Dataset { dataset_id, action })
}

fn reset_task(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    tasks_action(p, caller, TaskAction::Reset)
}
fn resume_task(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    tasks_action(p, caller, TaskAction::Resume)
}
fn suspend_task(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    tasks_action(p, caller, TaskAction::Suspend)
}
fn reset_jobs(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    jobs_action(p, caller, TaskAction::Reset)
}
fn hard_reset_jobs(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    jobs_action(p, caller, TaskAction::HardReset)
}
fn suspend_jobs(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    jobs_action(p, caller, TaskAction::Suspend)
}
fn reset_dataset(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    dataset_action(p, caller, DatasetAction::Reset)
}
fn hard_reset_dataset(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    dataset_action(p, caller, DatasetAction::HardReset)
}
fn suspend_dataset(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    dataset_action(p, caller, DatasetAction::Suspend)
}
fn resume_dataset(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    dataset_action(p, caller, DatasetAction::Resume)
}
fn truncate_dataset(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    dataset_action(p, caller, DatasetAction::Truncate)
}

/// A public query (SPEC §5.4): open to all, or, with `[website] public_reads = false`, for
/// holders of a user passkey.
fn public(
    p: &Params,
    config: &Config,
    caller: &Caller,
    query: PublicQuery,
) -> Result<DbRequest, RpcError> {
    if config.website.public_reads {
        Ok(DbRequest::Public(query))
    } else {
        as_user(p, caller, UserAction::Read(query))
    }
}

/// Public queries that take only a `dataset_id`.
fn public_by_dataset(
    p: &Params,
    config: &Config,
    caller: &Caller,
    make: fn(String) -> PublicQuery,
) -> Result<DbRequest, RpcError> {
    let query = make(string_param(p, "dataset_id")?);
    public(p, config, caller, query)
}

fn public_get_graphs(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let minutes = match p.get("start") {
        None | Some(Value::Null) => 60 * 24,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                jsonrpc::invalid_params("parameter 'start' must be minutes (an integer ≥ 0)")
            })?,
    };
    public(p, c, caller, PublicQuery::Graphs { minutes })
}
fn public_tasks_in_each_state(
    p: &Params,
    c: &Config,
    caller: &Caller,
) -> Result<DbRequest, RpcError> {
    let dataset_id = match p.get("dataset_id") {
        None | Some(Value::Null) => None,
        Some(_) => Some(string_param(p, "dataset_id")?),
    };
    public(p, c, caller, PublicQuery::TasksInEachState { dataset_id })
}
fn public_datasets_by_status(
    p: &Params,
    c: &Config,
    caller: &Caller,
) -> Result<DbRequest, RpcError> {
    public(p, c, caller, PublicQuery::DatasetsByStatus)
}
fn public_config(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    public_by_dataset(p, c, caller, |dataset_id| PublicQuery::Config {
        dataset_id,
    })
}
fn public_dataset_description(
    p: &Params,
    c: &Config,
    caller: &Caller,
) -> Result<DbRequest, RpcError> {
    public_by_dataset(p, c, caller, |dataset_id| PublicQuery::DatasetDescription {
        dataset_id,
    })
}
fn public_dataset_steering(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    public_by_dataset(p, c, caller, |dataset_id| PublicQuery::DatasetSteering {
        dataset_id,
    })
}
fn public_dataset_completion(
    p: &Params,
    c: &Config,
    caller: &Caller,
) -> Result<DbRequest, RpcError> {
    public_by_dataset(p, c, caller, |dataset_id| PublicQuery::DatasetCompletion {
        dataset_id,
    })
}
fn public_all_dataset_completion(
    p: &Params,
    c: &Config,
    caller: &Caller,
) -> Result<DbRequest, RpcError> {
    public(p, c, caller, PublicQuery::AllDatasetCompletion)
}
fn public_task_ids(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    public_by_dataset(p, c, caller, |dataset_id| PublicQuery::TaskIds {
        dataset_id,
    })
}
fn public_task_stats(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    public_by_dataset(p, c, caller, |dataset_id| PublicQuery::TaskStats {
        dataset_id,
    })
}
fn public_task_walltime(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    public_by_dataset(p, c, caller, |dataset_id| PublicQuery::TaskWalltime {
        dataset_id,
    })
}
fn public_tasks_by_name(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let dataset_id = string_param(p, "dataset_id")?;
    let name = string_param(p, "name")?;
    public(p, c, caller, PublicQuery::TasksByName { dataset_id, name })
}
fn public_cpu_gpu_usage(p: &Params, c: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    public(p, c, caller, PublicQuery::CpuGpuUsage)
}

/// `get_groups()`: every group (name, description, priority), by name. Public while
/// `[website] public_reads`; otherwise for users only (a passkey or a session), like the
/// public reads.
fn get_groups(p: &Params, config: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let auth = if config.website.public_reads {
        None
    } else {
        Some(caller.auth(p)?)
    };
    Ok(DbRequest::Account(AccountRequest::GetGroups { auth }))
}

/// `set_groups(groups)`, admin only: replaces the groups with the list of
/// `{name, description, priority}`; groups not listed are removed.
fn set_groups(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let list = match p.get("groups") {
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(jsonrpc::invalid_params(
                "parameter 'groups' must be a list of {name, description, priority}",
            ))
        }
        None => return Err(jsonrpc::missing_param("groups")),
    };
    let groups = list
        .iter()
        .enumerate()
        .map(|(i, entry)| group_param(i, entry))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DbRequest::Account(AccountRequest::SetGroups {
        auth: caller.auth(p)?,
        groups,
    }))
}

/// One entry of `groups`, each field checked for its type (the db checks the values).
fn group_param(i: usize, entry: &Value) -> Result<Group, RpcError> {
    let at = |field: &str, what: &str| {
        jsonrpc::invalid_params(format!("parameter 'groups[{i}].{field}' must be {what}"))
    };
    let Value::Object(fields) = entry else {
        return Err(jsonrpc::invalid_params(format!(
            "parameter 'groups[{i}]' must be an object {{name, description, priority}}"
        )));
    };
    let name = match fields.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err(at("name", "a string like /sim/high")),
    };
    let description = match fields.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) => d.clone(),
        Some(_) => return Err(at("description", "a string")),
    };
    let priority = match fields.get("priority") {
        Some(v) => v.as_f64().ok_or_else(|| at("priority", "a number > 0"))?,
        None => return Err(at("priority", "a number > 0")),
    };
    Ok(Group {
        name,
        description,
        priority,
    })
}

/// `get_user_roles(username)`: a user's roles; a user may see their own, an admin anyone's.
fn get_user_roles(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    Ok(DbRequest::Account(AccountRequest::GetUserRoles {
        auth: caller.auth(p)?,
        username: string_param(p, "username")?,
    }))
}

/// `set_user_roles(username, roles)`, admin only: `roles` is a list of `admin` and `user`.
fn set_user_roles(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let bad = || jsonrpc::invalid_params("parameter 'roles' must be a list of role names");
    let roles = match p.get("roles") {
        Some(Value::Array(roles)) => roles
            .iter()
            .map(|r| r.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?,
        Some(_) => return Err(bad()),
        None => return Err(jsonrpc::missing_param("roles")),
    };
    Ok(DbRequest::Account(AccountRequest::SetUserRoles {
        auth: caller.auth(p)?,
        username: string_param(p, "username")?,
        roles,
    }))
}

/// `create_user(username, password, admin)`, admin only.
fn create_user(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    let admin = match p.get("admin") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(admin)) => *admin,
        Some(_) => {
            return Err(jsonrpc::invalid_params(
                "parameter 'admin' must be true or false",
            ))
        }
    };
    Ok(DbRequest::Account(AccountRequest::CreateUser {
        auth: caller.auth(p)?,
        username: string_param(p, "username")?,
        password: string_param(p, "password")?,
        admin,
    }))
}

/// `set_user_password(username, password)`: an admin sets anyone's, a user their own (the
/// db's rule for `AccountRequest::SetPassword`).
fn set_user_password(p: &Params, _: &Config, caller: &Caller) -> Result<DbRequest, RpcError> {
    Ok(DbRequest::Account(AccountRequest::SetPassword {
        auth: caller.auth(p)?,
        username: string_param(p, "username")?,
        password: string_param(p, "password")?,
    }))
}

/// Resources from named params (`new_task`) or an object (`update_pilot`): absent values
/// count 0; negative or non-numeric ones are refused with their name.
fn resources(source: &serde_json::Map<String, Value>, what: &str) -> Result<Resources, RpcError> {
    let number = |key: &str| -> Result<f64, RpcError> {
        match source.get(key) {
            None | Some(Value::Null) => Ok(0.0),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| {
                    jsonrpc::invalid_params(format!("{what}'{key}' must be a number ≥ 0"))
                }),
        }
    };
    let count = |key: &str| number(key).map(|x| x.min(f64::from(u32::MAX)) as u32);
    Ok(Resources {
        cpu: count("cpu")?,
        gpu: count("gpu")?,
        memory: number("memory")?,
        disk: number("disk")?,
        time: number("time")?,
    })
}

/// `new_task(passkey, gridspec, hostname, domain, ifaces, os, cpu, gpu, memory, disk, time)`:
/// a pilot pulls tasks that fit what it has left; a list of task configs, or null.
fn new_task(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    let named: serde_json::Map<String, Value> = ["cpu", "gpu", "memory", "disk", "time"]
        .into_iter()
        .filter_map(|k| p.get(k).map(|v| (k.to_string(), v.clone())))
        .collect();
    Ok(DbRequest::NewTask {
        passkey: string_param(p, "passkey")?,
        gridspec: string_param(p, "gridspec")?,
        available: resources(&named, "parameter ")?,
        os: p.get("os").and_then(Value::as_str).map(str::to_string),
        hostname: p
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

/// `update_pilot(passkey, pilot_id, tasks, resources_available, resources_claimed)`.
fn update_pilot(p: &Params, _: &Config) -> Result<DbRequest, RpcError> {
    let tasks = match p.get("tasks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(list)) => list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Some(_) => {
            return Err(jsonrpc::invalid_params(
                "parameter 'tasks' must be comma-separated ids",
            ))
        }
    };
    let object = |name: &str| -> Result<Resources, RpcError> {
        match p.get(name) {
            None | Some(Value::Null) => Ok(Resources::default()),
            Some(Value::Object(map)) => resources(map, &format!("{name}.")),
            Some(_) => Err(jsonrpc::invalid_params(format!(
                "parameter '{name}' must be an object"
            ))),
        }
    };
    Ok(DbRequest::UpdatePilot {
        passkey: string_param(p, "passkey")?,
        pilot_id: string_param(p, "pilot_id")?,
        tasks,
        available: object("resources_available")?,
        claimed: object("resources_claimed")?,
    })
}

/// Sends `request` to the db and answers the call with the reply as JSON (SPEC §5.2.1: task
/// methods answer null, `stillrunning` a boolean, `new_task` a list or null).
pub(crate) fn ask_db(
    method: &'static str,
    cx: &mut Context<Website>,
    request: Request,
    pending: Pending,
) {
    // A password or role change: the website's cached sessions of that user must not outlive
    // it (whatever the answer: a timed-out change may still have been made).
    let credentials_of = match &request {
        Request::Db(DbRequest::Account(
            AccountRequest::SetPassword { username, .. }
            | AccountRequest::SetUserRoles { username, .. },
        )) => Some(username.clone()),
        _ => None,
    };
    cx.call(ModuleKind::Db, request, move |site, _cx, reply| {
        if let Some(username) = credentials_of {
            site.sessions.forget_user(&username);
        }
        let result = match reply {
            Ok(Reply::Db(reply)) => reply_json(reply).ok_or_else(|| {
                log::error!("{method}: unexpected db reply");
                jsonrpc::server_error("internal error")
            }),
            Ok(other) => {
                log::error!("{method}: unexpected reply {other:?}");
                Err(jsonrpc::server_error("internal error"))
            }
            Err(e) => Err(server_error_from_call(method, &e)),
        };
        site.answer(pending, result);
    });
}

/// A db reply as the JSON-RPC result; `None` for replies no method returns as such.
fn reply_json(reply: DbReply) -> Option<Value> {
    match reply {
        DbReply::Done | DbReply::Rows(_) => Some(Value::Null),
        DbReply::StillRunning(running) => Some(Value::Bool(running)),
        DbReply::Dataset { dataset_id, .. } => Some(Value::String(dataset_id)),
        DbReply::Value(value) => Some(value),
        DbReply::TaskConfigs(configs) if configs.is_empty() => Some(Value::Null),
        DbReply::TaskConfigs(configs) => Some(Value::Array(configs)),
        DbReply::Account(reply) => match reply {
            AccountReply::Session(session) => serde_json::to_value(session).ok(),
            AccountReply::Users(users) => serde_json::to_value(users).ok(),
            AccountReply::Groups(groups) => serde_json::to_value(groups).ok(),
            AccountReply::Roles(roles) => serde_json::to_value(roles).ok(),
        },
        _ => None,
    }
}

/// Methods only tests see: they drive the deferred path through a real internal call.
#[cfg(test)]
mod test_methods {
    use std::time::Duration;

    use iceprod_runtime::{ModuleKind, Reply, Request};

    use super::*;

    pub const TABLE: &[Method] = &[Method {
        name: "test_ping",
        handler: Handler::Deferred(test_ping),
    }];

    /// `test_ping(module, timeout_ms)`: pings `module` (default: the website itself) and
    /// answers `"pong"` from the callback.
    fn test_ping(_site: &mut Website, cx: &mut Context<Website>, params: Params, pending: Pending) {
        let target = params
            .get("module")
            .and_then(Value::as_str)
            .and_then(ModuleKind::from_name)
            .unwrap_or(ModuleKind::Website);
        let timeout = params
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .map_or(Duration::from_secs(30), Duration::from_millis);
        cx.call_with_timeout(target, Request::Ping, timeout, move |site, _cx, reply| {
            let result = match reply {
                Ok(Reply::Pong) => Ok(Value::from("pong")),
                Ok(other) => Err(jsonrpc::server_error(format!("unexpected reply {other:?}"))),
                Err(e) => Err(server_error_from_call("test_ping", &e)),
            };
            site.answer(pending, result);
        });
    }
}

#[cfg(not(test))]
mod test_methods {
    pub const TABLE: &[super::Method] = &[];
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::jsonrpc::ErrorCode;

    fn config(site_id: Option<&str>) -> Config {
        let mut c = Config::defaults(Path::new("/tmp/iceprod.toml"));
        c.site.id = site_id.map(str::to_string);
        c
    }

    fn immediate(name: &str, params: Value) -> Result<Value, RpcError> {
        let Handler::Immediate(run) = find(name).expect("method exists").handler else {
            panic!("{name} is not immediate");
        };
        run(
            &Params::from_value(Some(params)).unwrap(),
            &config(Some("abc")),
        )
    }

    #[test]
    fn echo_returns_its_value_unchanged() {
        let value = json!({"a": [1, 2.5, null, "x\u{0}y"], "b": true});
        assert_eq!(immediate("echo", json!({ "value": value })), Ok(value));
        assert_eq!(immediate("echo", json!({ "value": null })), Ok(Value::Null));
    }

    #[test]
    fn echo_takes_a_positional_value_from_args() {
        assert_eq!(immediate("echo", json!({"args": [7]})), Ok(json!(7)));
    }

    #[test]
    fn echo_without_value_names_the_missing_parameter() {
        let e = immediate("echo", json!({})).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert_eq!(e.message, "missing parameter 'value'");
    }

    #[test]
    fn site_id_comes_from_the_config() {
        assert_eq!(immediate("public_get_site_id", json!({})), Ok(json!("abc")));
        let Handler::Immediate(run) = find("public_get_site_id").unwrap().handler else {
            panic!("immediate");
        };
        let e = run(&Params::default(), &config(None)).unwrap_err();
        assert_eq!(e.code.code(), -32000);
        assert_eq!(e.message, "site id not set");
    }

    #[test]
    fn a_passkey_param_wins_over_the_session_and_neither_names_the_passkey() {
        let params = |v: Value| Params::from_value(Some(v)).unwrap();
        let session = Caller {
            session: Some(("sid".into(), Some("tok".into()))),
        };
        assert_eq!(
            session.auth(&params(json!({"passkey": "k"}))),
            Ok(UserAuth::Passkey("k".into()))
        );
        assert_eq!(
            session.auth(&params(json!({}))),
            Ok(UserAuth::Session {
                session_id: "sid".into(),
                csrf_token: Some("tok".into())
            })
        );
        let e = Caller::default().auth(&params(json!({}))).unwrap_err();
        assert_eq!(e.message, "missing parameter 'passkey'");
        // An empty passkey is an error, not a fall-back to the cookie.
        let e = session.auth(&params(json!({"passkey": ""}))).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
    }

    #[test]
    fn group_entries_name_the_field_that_is_wrong() {
        let e = group_param(3, &json!({"name": "/a", "priority": "x"})).unwrap_err();
        assert_eq!(
            e.message,
            "parameter 'groups[3].priority' must be a number > 0"
        );
        assert!(group_param(0, &json!("x")).is_err());
        assert_eq!(
            group_param(0, &json!({"name": "/a", "priority": 2})).unwrap(),
            Group {
                name: "/a".into(),
                description: String::new(),
                priority: 2.0
            }
        );
    }

    #[test]
    fn unknown_names_get_one_metrics_label() {
        assert_eq!(label(Some("echo")), "echo");
        assert_eq!(label(Some("no_such_method")), "unknown");
        assert_eq!(label(None), "unknown");
    }

    #[test]
    fn call_errors_map_to_timeout_and_server_error() {
        assert_eq!(
            server_error_from_call("m", &CallError::Timeout).code.code(),
            -32001
        );
        let e = server_error_from_call("m", &CallError::Failed("no such task".into()));
        assert_eq!(
            (e.code.code(), e.message.as_str()),
            (-32000, "no such task")
        );
        let e = server_error_from_call("m", &CallError::Disabled(iceprod_runtime::ModuleKind::Db));
        assert_eq!(
            (e.code.code(), e.message.as_str()),
            (-32000, "module db is disabled")
        );
        let e = server_error_from_call("m", &CallError::Unsupported("x"));
        assert_eq!(
            (e.code.code(), e.message.as_str()),
            (-32000, "internal error")
        );
    }
}
