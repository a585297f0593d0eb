//! The admin methods that act on the server itself (SPEC §5.3): `start_module`,
//! `stop_module`, `restart_module`, `get_running_modules` and `reload_config`.
//!
//! Each is two steps: the db checks that the caller is an admin
//! (`AccountRequest::RequireAdmin`, a passkey or a session with its CSRF token), then the
//! controller carries the action out (`Context::ask_controller`) and answers what
//! `iceprod ctl` would print. A refusal of the controller (a module already running, a broken
//! config file) is -32602 with its reason; nothing else changes.

use iceprod_runtime::status::ControlReply;
use iceprod_runtime::web::UserAuth;
use iceprod_runtime::{Context, ControlAsk, DbRequest, ModuleAction, ModuleKind, Reply};
use serde_json::Value;

use crate::jsonrpc::{self, Params, RpcError};
use crate::methods::{server_error_from_call, Pending};
use crate::Website;

/// What an admin method asks the controller, and how its answer becomes the result.
pub struct AdminMethod {
    pub ask: fn(&Params) -> Result<ControlAsk, RpcError>,
    pub result: fn(ControlReply) -> Value,
}

pub const START_MODULE: AdminMethod = AdminMethod {
    ask: |p| module_ask(p, ModuleAction::Start),
    result: same,
};
pub const STOP_MODULE: AdminMethod = AdminMethod {
    ask: |p| module_ask(p, ModuleAction::Stop),
    result: same,
};
pub const RESTART_MODULE: AdminMethod = AdminMethod {
    ask: |p| module_ask(p, ModuleAction::Restart),
    result: same,
};
pub const GET_RUNNING_MODULES: AdminMethod = AdminMethod {
    ask: |_| Ok(ControlAsk::Status),
    result: running_modules,
};
pub const RELOAD_CONFIG: AdminMethod = AdminMethod {
    ask: |_| Ok(ControlAsk::Reload),
    result: same,
};

/// What was done, as `iceprod ctl` prints it (a status, if one came, as its JSON).
fn same(reply: ControlReply) -> Value {
    match reply {
        ControlReply::Done(message) => Value::String(message),
        ControlReply::Status(status) => serde_json::to_value(&*status).unwrap_or_default(),
    }
}

/// The `module` param: a module's name.
fn module_ask(params: &Params, action: ModuleAction) -> Result<ControlAsk, RpcError> {
    let name = match params.get("module") {
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(jsonrpc::invalid_params(
                "parameter 'module' must be a string",
            ))
        }
        None => return Err(jsonrpc::missing_param("module")),
    };
    let module = ModuleKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = ModuleKind::ALL.iter().map(|k| k.name()).collect();
        jsonrpc::invalid_params(format!(
            "parameter 'module': no module named {name:?} (one of {})",
            names.join(", ")
        ))
    })?;
    Ok(ControlAsk::Module { module, action })
}

/// The names of the modules the controller reports as running, in start order.
fn running_modules(reply: ControlReply) -> Value {
    let ControlReply::Status(status) = reply else {
        return Value::Array(Vec::new());
    };
    let names = status
        .modules
        .iter()
        .filter(|m| m.state == "running")
        .map(|m| Value::String(m.name.to_string()))
        .collect();
    Value::Array(names)
}

/// Checks that `auth` is an admin's, then asks the controller; answers `pending` either way.
pub fn run(
    method: &'static str,
    cx: &mut Context<Website>,
    auth: UserAuth,
    admin: &'static AdminMethod,
    ask: ControlAsk,
    pending: Pending,
) {
    cx.call_typed(
        DbRequest::require_admin(auth),
        move |site, cx, reply| match reply {
            Ok(()) => {
                cx.ask_controller(ask, move |site, _, reply| {
                    let result = match reply {
                        Ok(Reply::Control(value)) => Ok((admin.result)(value)),
                        Ok(other) => {
                            log::error!("{method}: unexpected controller reply {other:?}");
                            Err(jsonrpc::server_error("internal error"))
                        }
                        Err(e) => Err(server_error_from_call(method, &e)),
                    };
                    site.answer(pending, result);
                });
            }
            Err(e) => site.answer(pending, Err(server_error_from_call(method, &e))),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Params {
        Params::from_value(Some(v)).unwrap()
    }

    #[test]
    fn the_module_param_is_named_when_missing_unknown_or_not_a_string() {
        for (p, needle) in [
            (json!({}), "module"),
            (json!({"module": 3}), "must be a string"),
            (json!({"module": "<b>x"}), "no module named"),
        ] {
            let e = module_ask(&params(p), ModuleAction::Start).unwrap_err();
            assert!(e.message.contains(needle), "{}", e.message);
            assert_eq!(e.code.code(), -32602);
        }
        assert_eq!(
            module_ask(&params(json!({"module": "queue"})), ModuleAction::Restart).unwrap(),
            ControlAsk::Module {
                module: ModuleKind::Queue,
                action: ModuleAction::Restart
            }
        );
    }

    #[test]
    fn running_modules_lists_only_running_ones_in_order() {
        let module = |name, state: &str| iceprod_runtime::status::ModuleStatus {
            name,
            enabled: true,
            state: state.into(),
            generation: 1,
            restarts: 0,
            failures: 0,
            last_error: None,
            last_reload: None,
            mailbox_depth: 0,
        };
        let status = iceprod_runtime::status::ServerStatus {
            pid: 1,
            version: "0".into(),
            config: "iceprod.toml".into(),
            site_id: None,
            uptime_s: 0,
            stopping: false,
            reloads: 0,
            last_reload: None,
            modules: vec![
                module(ModuleKind::Db, "running"),
                module(ModuleKind::Queue, "stopped"),
                module(ModuleKind::Website, "running"),
            ],
            grids: Vec::new(),
        };
        let reply = ControlReply::Status(Box::new(status));
        assert_eq!(running_modules(reply), json!(["db", "website"]));
        assert_eq!(running_modules(ControlReply::Done("ok".into())), json!([]));
    }
}
