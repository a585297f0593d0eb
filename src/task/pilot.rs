//! Pilot mode: one process holding a slot of a batch system (cpu, gpu, memory, disk, time)
//! pulls tasks with `new_task` while resources are free, runs each on its own thread in its own
//! subfolder, reports the set it runs with `update_pilot` whenever that set changes, and exits
//! once it has been idle for `--idle-timeout` or its time is up. Every call of every task uses
//! the pilot's passkey. This file must not run modules itself: [`Worker::run_task`] does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::task::cli::{seconds, TaskArgs};
use crate::task::rpc::CallError;
use crate::task::{Outcome, Worker};

/// Longest wait between two pulls while nothing arrives.
const MAX_PULL_WAIT: Duration = Duration::from_secs(10);
/// How long an `update_pilot` may be retried: a later one replaces it anyway.
const UPDATE_WINDOW: Duration = Duration::from_secs(30);

/// A pilot's (or a task's) resources: cpu and gpu counts, memory and disk in GB, time in hours.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    pub cpu: f64,
    pub gpu: f64,
    pub memory: f64,
    pub disk: f64,
    pub time: f64,
}

impl Resources {
    /// Reads `{cpu, gpu, memory, disk, time}`; missing values are `default`'s.
    pub fn from_json(v: &Value, default: Resources) -> Resources {
        let get = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
        Resources {
            cpu: get("cpu", default.cpu),
            gpu: get("gpu", default.gpu),
            memory: get("memory", default.memory),
            disk: get("disk", default.disk),
            time: get("time", default.time),
        }
    }

    pub fn to_json(self) -> Value {
        json!({"cpu": self.cpu, "gpu": self.gpu, "memory": self.memory, "disk": self.disk,
               "time": self.time})
    }

    fn minus(self, o: Resources) -> Resources {
        Resources {
            cpu: (self.cpu - o.cpu).max(0.0),
            gpu: (self.gpu - o.gpu).max(0.0),
            memory: (self.memory - o.memory).max(0.0),
            disk: (self.disk - o.disk).max(0.0),
            time: self.time,
        }
    }

    fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu + o.cpu,
            gpu: self.gpu + o.gpu,
            memory: self.memory + o.memory,
            disk: self.disk + o.disk,
            time: self.time.max(o.time),
        }
    }

    /// Enough left to be worth asking for a task.
    fn can_take_more(&self) -> bool {
        self.cpu >= 1.0 && self.memory > 0.0 && self.time > 0.0
    }
}

/// What a task claims of the pilot: its `options.resources` (one cpu when unsaid).
fn claim_of(config: &Value) -> Resources {
    let one_cpu = Resources {
        cpu: 1.0,
        ..Resources::default()
    };
    Resources::from_json(&config["options"]["resources"], one_cpu)
}

/// The pilot's settings: the pilot config (if any), overridden by the flags.
struct PilotSettings {
    pilot_id: String,
    gridspec: String,
    total: Resources,
    idle_timeout: Duration,
}

fn settings(args: &TaskArgs) -> anyhow::Result<PilotSettings> {
    let config = match &args.cfgfile {
        Some(file) => crate::task::read_config(file)?,
        None => Value::Null,
    };
    let options = &config["options"];
    let defaults = Resources {
        cpu: 1.0,
        gpu: 0.0,
        memory: 1.0,
        disk: 1.0,
        time: 1.0,
    };
    let mut total = Resources::from_json(&options["resources"], defaults);
    let set = |slot: &mut f64, flag: Option<f64>| {
        if let Some(v) = flag {
            *slot = v;
        }
    };
    set(&mut total.cpu, args.cpu);
    set(&mut total.gpu, args.gpu);
    set(&mut total.memory, args.memory);
    set(&mut total.disk, args.disk);
    set(&mut total.time, args.time);
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let pilot_id = args
        .pilot_id
        .clone()
        .or_else(|| text(&options["pilot_id"]))
        .ok_or_else(|| anyhow::anyhow!("no pilot id: pass --pilot-id or give options.pilot_id"))?;
    let gridspec = args
        .gridspec
        .clone()
        .or_else(|| text(&options["gridspec"]))
        .unwrap_or_default();
    Ok(PilotSettings {
        pilot_id,
        gridspec,
        total,
        idle_timeout: seconds("--idle-timeout", args.idle_timeout).map_err(anyhow::Error::msg)?,
    })
}

/// The pilot's tasks now: id → what it claims.
type Claims = BTreeMap<String, Resources>;

impl PilotSettings {
    /// What `claims` hold together, and what is left of the pilot (time: the hours until its
    /// wall time, started at `start`, is up).
    fn budget(&self, claims: &Claims, start: Instant) -> (Resources, Resources) {
        let claimed = claims
            .values()
            .fold(Resources::default(), |a, c| a.plus(*c));
        let mut available = self.total.minus(claimed);
        available.time = (self.total.time - start.elapsed().as_secs_f64() / 3600.0).max(0.0);
        (claimed, available)
    }
}

/// Runs the pilot until idle or out of time; non-zero after a signal.
pub fn run(args: &TaskArgs, worker: Arc<Worker>, folder: &Path) -> anyhow::Result<ExitCode> {
    let pilot = settings(args)?;
    let start = Instant::now();
    let (hostname, domain) = crate::task::report::host_and_domain();
    let os = std::env::var("OS_ARCH")
        .ok()
        .map_or(Value::Null, Value::String);
    let (done_tx, done) = mpsc::channel::<(String, Outcome)>();
    let mut claims = Claims::new();
    let mut idle_since = Instant::now();
    let mut pulling = true;
    let pull_wait = (pilot.idle_timeout / 4).clamp(Duration::from_millis(50), MAX_PULL_WAIT);
    eprintln!(
        "iceprod pilot {}: {} cpu, {} gpu, {} GB memory, {} GB disk, {} h on {}",
        pilot.pilot_id,
        pilot.total.cpu,
        pilot.total.gpu,
        pilot.total.memory,
        pilot.total.disk,
        pilot.total.time,
        if pilot.gridspec.is_empty() {
            "any grid"
        } else {
            &pilot.gridspec
        }
    );
    loop {
        let mut changed = false;
        while let Ok((task_id, outcome)) = done.try_recv() {
            eprintln!(
                "iceprod pilot {}: task {task_id} ended: {outcome:?}",
                pilot.pilot_id
            );
            claims.remove(&task_id);
            changed = true;
        }
        let (_, available) = pilot.budget(&claims, start);
        if worker.running.signal().is_some() || available.time <= 0.0 {
            pulling = false;
        }
        let mut pulled = false;
        if pulling && available.can_take_more() {
            let params = json!({
                "gridspec": pilot.gridspec, "hostname": hostname, "domain": domain,
                "ifaces": [], "os": os, "cpu": available.cpu, "gpu": available.gpu,
                "memory": available.memory, "disk": available.disk, "time": available.time,
            });
            match worker.rpc.call("new_task", params) {
                Ok(Value::Array(configs)) => {
                    for config in configs {
                        if let Some(id) = start_task(&worker, config, folder, &done_tx) {
                            claims.insert(id.0, id.1);
                            changed = true;
                            pulled = true;
                        }
                    }
                }
                Ok(_) => {}
                Err(CallError::Refused { code, message }) => {
                    eprintln!(
                        "iceprod pilot {}: new_task refused: {message} (error {code}); \
                         taking no more tasks",
                        pilot.pilot_id
                    );
                    pulling = false;
                }
                Err(e) => eprintln!("iceprod pilot {}: new_task: {e}", pilot.pilot_id),
            }
        }
        if changed {
            report(&worker, &pilot, &claims, start);
            if claims.is_empty() {
                idle_since = Instant::now();
            }
        }
        if claims.is_empty() && (!pulling || idle_since.elapsed() >= pilot.idle_timeout) {
            break;
        }
        if pulled {
            continue; // resources may be left: ask again at once
        }
        if let Ok(ended) = done.recv_timeout(pull_wait) {
            // Put it back for the top of the loop, which handles every ended task alike.
            let _ = done_tx.send(ended);
        }
    }
    eprintln!("iceprod pilot {}: exiting", pilot.pilot_id);
    Ok(match worker.running.signal() {
        Some(_) => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    })
}

/// Starts the task of `config` on its own thread in `folder/TASK_ID`; its id and claim.
fn start_task(
    worker: &Arc<Worker>,
    config: Value,
    folder: &Path,
    done: &mpsc::Sender<(String, Outcome)>,
) -> Option<(String, Resources)> {
    let task_id = config["options"]["task_id"].as_str()?.to_string();
    let claim = claim_of(&config);
    let task_folder = folder.join(&task_id);
    let control = worker.running.add();
    let (worker, done, id) = (worker.clone(), done.clone(), task_id.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("iceprod-task-{task_id}"))
        .spawn(move || {
            let outcome = match std::fs::create_dir_all(&task_folder) {
                Ok(()) => worker.run_task(&config, &task_folder, false, control),
                Err(e) => {
                    eprintln!(
                        "iceprod task {id}: cannot create {}: {e}",
                        task_folder.display()
                    );
                    Outcome::NotReported
                }
            };
            let _ = done.send((id, outcome));
        });
    match spawned {
        Ok(_) => Some((task_id, claim)),
        Err(e) => {
            eprintln!("iceprod task {task_id}: cannot start a thread: {e}");
            None
        }
    }
}

/// `update_pilot` with the tasks running now and the resources they claim.
fn report(worker: &Worker, pilot: &PilotSettings, claims: &Claims, start: Instant) {
    let (claimed, available) = pilot.budget(claims, start);
    let tasks: Vec<&str> = claims.keys().map(String::as_str).collect();
    let params = json!({
        "pilot_id": pilot.pilot_id,
        "tasks": tasks.join(","),
        "resources_available": available.to_json(),
        "resources_claimed": claimed.to_json(),
    });
    if let Err(e) = worker
        .rpc
        .call_within("update_pilot", params, UPDATE_WINDOW)
    {
        eprintln!("iceprod pilot {}: update_pilot: {e}", pilot.pilot_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_claims_its_resources_and_one_cpu_when_unsaid() {
        let config = json!({"options": {"resources": {"cpu": 2, "memory": 1.5}}});
        let claim = claim_of(&config);
        assert_eq!((claim.cpu, claim.memory, claim.gpu), (2.0, 1.5, 0.0));
        assert_eq!(claim_of(&json!({"options": {}})).cpu, 1.0);
    }

    #[test]
    fn available_resources_never_go_negative() {
        let total = Resources {
            cpu: 2.0,
            gpu: 0.0,
            memory: 4.0,
            disk: 10.0,
            time: 2.0,
        };
        let claimed = Resources {
            cpu: 3.0,
            memory: 1.0,
            ..Resources::default()
        };
        let left = total.minus(claimed);
        assert_eq!((left.cpu, left.memory, left.time), (0.0, 3.0, 2.0));
        assert!(!left.can_take_more());
    }
}
