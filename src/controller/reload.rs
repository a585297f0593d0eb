//! Reload (DESIGN §3, STYLE habit 7): parse, validate, diff, check, apply, acknowledge.
//!
//! Who hears a change is derived, never listed: each module declares its view of the config
//! (`Module::view`), and a module hears a reload when its view of the new config differs from
//! its view of the running one. A reload runs in two phases over the modules that hear it:
//! every one is asked whether it can take the new config (`Ctl::CheckReload`); if any refuses,
//! or does not answer in time, nothing changes anywhere. Otherwise the controller switches to
//! the new config and each module applies it (`Ctl::Reload`), answering applied or needs
//! restart. Whoever asked (`iceprod ctl reload`, the admin RPC, SIGHUP) hears the outcome once
//! every module answered, with one line per module.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceprod_runtime::config::Section;
use iceprod_runtime::status::ControlReply;
use iceprod_runtime::{CallError, Config, Ctl, ModuleKind, ReloadAction, Reply, ReplyTo};
use mio::Token;
use serde_json::json;

use super::supervisor::{State, Then};
use super::{Controller, ReloadRecord};
use crate::control::CtlResponse;

/// How long a module has to answer each phase of a reload.
pub const RELOAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Who waits for a reload's outcome.
pub enum Requester {
    /// A control-socket connection (`iceprod ctl reload`).
    Socket(Token),
    /// A module's [`iceprod_runtime::ControlAsk::Reload`] (the website's admin RPC and page).
    Ask(ReplyTo),
    /// SIGHUP: the outcome goes to the log and `ctl status` only.
    Signal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for every hearing module to accept the new config.
    Checking,
    /// The new config is running; waiting for every hearing module to apply it.
    Applying,
}

/// A reload between its start and its last module's answer.
pub struct PendingReload {
    id: u64,
    new: Arc<Config>,
    changed: Vec<Section>,
    phase: Phase,
    /// Modules whose answer to the current phase has not come.
    waiting: Vec<ModuleKind>,
    refusals: Vec<String>,
    /// What happened to each module, in order, for the answer.
    outcomes: Vec<String>,
    deadline: Instant,
    requesters: Vec<Requester>,
}

impl Controller {
    /// Starts a reload for `requester`, or queues it behind the one running (it then gets
    /// the outcome of a fresh reload that starts when the running one ends, so it sees the
    /// file as it is now).
    pub(super) fn request_reload(&mut self, requester: Requester) {
        if self.shutdown.is_some() {
            return self.answer(requester, &Err("the server is stopping".into()));
        }
        if self.pending_reload.is_some() {
            self.next_reload.push(requester);
            return;
        }
        self.begin_reload(vec![requester]);
    }

    fn begin_reload(&mut self, requesters: Vec<Requester>) {
        let new = match self.load_new_config() {
            Ok(new) => new,
            Err(e) => return self.finish_reload(requesters, Err(e)),
        };
        let changed = self.config.changed_sections(&new);
        if changed.is_empty() {
            return self.finish_reload(requesters, Ok("no changes".into()));
        }
        if changed.contains(&Section::Logging) {
            if let Err(e) = crate::logging::check(&new.logging) {
                return self.finish_reload(requesters, Err(e));
            }
        }
        let old = self.config.clone();
        // A module being enabled or disabled is started or stopped, not asked. A changed
        // [site] restarts every module, but each whose view changed still checks first: a
        // restart onto what it cannot take would leave it failing.
        let hearing: Vec<ModuleKind> = self
            .modules
            .iter()
            .filter(|m| {
                old.modules.enabled(m.kind)
                    && new.modules.enabled(m.kind)
                    && m.has_thread()
                    && (m.view_changed)(&old, &new)
            })
            .map(|m| m.kind)
            .collect();
        self.next_reload_id += 1;
        let id = self.next_reload_id;
        let new = Arc::new(new);
        for m in self.modules.iter().filter(|m| hearing.contains(&m.kind)) {
            m.send(Ctl::CheckReload {
                id,
                config: new.clone(),
            });
        }
        self.pending_reload = Some(PendingReload {
            id,
            new,
            changed,
            phase: Phase::Checking,
            waiting: hearing,
            refusals: Vec::new(),
            outcomes: Vec::new(),
            deadline: Instant::now() + RELOAD_ANSWER_TIMEOUT,
            requesters,
        });
        self.advance_reload();
    }

    /// The config file read and validated again, with the site id and the daemon's log file
    /// filled in as at start, so that only real changes differ.
    fn load_new_config(&self) -> Result<Config, String> {
        let mut new =
            Config::load(&self.config.file, &self.available).map_err(|e| e.to_string())?;
        let running = &self.config;
        let same_site = new.site.id.is_none() || new.site.id == running.site.id;
        if new.db == running.db && same_site {
            // The same database holds the same id: no database work on the controller thread.
            new.site.id = running.site.id.clone();
        } else {
            crate::site_id::resolve(&mut new).map_err(|e| format!("{e:#}"))?;
        }
        if self.daemon {
            crate::logging::default_for_daemon(&mut new);
        }
        Ok(new)
    }

    /// A module's answer to [`Ctl::CheckReload`].
    pub(super) fn on_reload_checked(
        &mut self,
        kind: ModuleKind,
        id: u64,
        result: Result<(), String>,
    ) {
        let Some(p) = self.pending_reload.as_mut().filter(|p| p.id == id) else {
            return;
        };
        if p.phase != Phase::Checking || !p.waiting.contains(&kind) {
            return;
        }
        p.waiting.retain(|k| *k != kind);
        if let Err(why) = result {
            p.refusals.push(format!("{kind} refused: {why}"));
        }
        self.advance_reload();
    }

    /// A module's answer to [`Ctl::Reload`].
    pub(super) fn on_reloaded(&mut self, kind: ModuleKind, id: u64, action: ReloadAction) {
        let waited = self
            .pending_reload
            .as_ref()
            .is_some_and(|p| p.id == id && p.phase == Phase::Applying && p.waiting.contains(&kind));
        if !waited {
            // An answer after the reload's deadline: the reload has ended, but a module that
            // needs a restart must still get it, or it would run the old config.
            return self.late_reloaded(kind, action);
        }
        let Some(p) = self.pending_reload.as_mut() else {
            return;
        };
        p.waiting.retain(|k| *k != kind);
        let config = p.new.clone();
        let outcome = match action {
            ReloadAction::Applied => "applied in place",
            ReloadAction::NeedsRestart => "restarted",
        };
        p.outcomes.push(format!("{kind}: {outcome}"));
        if let Some(m) = self.modules.iter_mut().find(|m| m.kind == kind) {
            m.last_reload = Some(outcome.to_string());
            if action == ReloadAction::NeedsRestart {
                log::info!("{kind}: restarting to apply the new config");
                let deadline = Instant::now() + config.controller.stop_timeout;
                m.stop(deadline, Then::Restart, &config, &self.shared);
            }
        }
        self.advance_reload();
    }

    /// A module's answer to a reload that already ended (its deadline passed).
    fn late_reloaded(&mut self, kind: ModuleKind, action: ReloadAction) {
        let config = self.config.clone();
        let Some(m) = self.modules.iter_mut().find(|m| m.kind == kind) else {
            return;
        };
        log::warn!("{kind}: answered a reload after its deadline: {action:?}");
        if action == ReloadAction::NeedsRestart && m.has_thread() {
            m.last_reload = Some("restarted (late)".into());
            let deadline = Instant::now() + config.controller.stop_timeout;
            m.stop(deadline, Then::Restart, &config, &self.shared);
        } else {
            m.last_reload = Some("applied in place (late)".into());
        }
    }

    /// A module whose answer a reload waits for stopped: it will not answer.
    pub(super) fn on_reload_module_stopped(&mut self, kind: ModuleKind) {
        let Some(p) = self.pending_reload.as_mut() else {
            return;
        };
        if !p.waiting.contains(&kind) {
            return;
        }
        p.waiting.retain(|k| *k != kind);
        match p.phase {
            Phase::Checking => p
                .refusals
                .push(format!("{kind} stopped while checking the new config")),
            Phase::Applying => {
                let restarts = self
                    .modules
                    .iter()
                    .find(|m| m.kind == kind)
                    .is_some_and(|m| m.has_thread() || matches!(m.state, State::Backoff { .. }));
                p.outcomes.push(if restarts {
                    format!("{kind}: stopped; restarts with the new config")
                } else {
                    format!("{kind}: stopped")
                });
            }
        }
        self.advance_reload();
    }

    /// The reload's deadline, for the controller's timers.
    pub(super) fn reload_deadline(&self) -> Option<Instant> {
        self.pending_reload.as_ref().map(|p| p.deadline)
    }

    /// Past the deadline, modules that did not answer count as refusing (checking) or as
    /// unacknowledged (applying).
    pub(super) fn reload_tick(&mut self, now: Instant) {
        let Some(p) = self.pending_reload.as_mut().filter(|p| p.deadline <= now) else {
            return;
        };
        let late = std::mem::take(&mut p.waiting);
        let secs = RELOAD_ANSWER_TIMEOUT.as_secs();
        for kind in late {
            match p.phase {
                Phase::Checking => p
                    .refusals
                    .push(format!("{kind} did not answer within {secs} s")),
                Phase::Applying => p
                    .outcomes
                    .push(format!("{kind}: no acknowledgement within {secs} s")),
            }
        }
        self.advance_reload();
    }

    /// Moves the reload on once every module answered its phase.
    pub(super) fn advance_reload(&mut self) {
        let Some(p) = self.pending_reload.as_ref() else {
            return;
        };
        if self.shutdown.is_some() && p.phase == Phase::Checking {
            // Nothing may start once the stop began: the reload ends unapplied.
            let Some(p) = self.pending_reload.take() else {
                return;
            };
            let message = "the server is stopping; nothing changed".to_string();
            return self.finish_reload(p.requesters, Err(message));
        }
        if !p.waiting.is_empty() {
            return;
        }
        match p.phase {
            Phase::Checking if !p.refusals.is_empty() => {
                let Some(p) = self.pending_reload.take() else {
                    return;
                };
                let message = format!("{}; nothing changed", p.refusals.join("; "));
                self.finish_reload(p.requesters, Err(message));
            }
            Phase::Checking => self.apply_reload(),
            Phase::Applying => {
                let Some(p) = self.pending_reload.take() else {
                    return;
                };
                let sections: Vec<&str> = p.changed.iter().map(|s| s.name()).collect();
                let mut message = format!("changed [{}]", sections.join(", "));
                if p.outcomes.is_empty() {
                    message.push_str("; no module affected");
                }
                for outcome in &p.outcomes {
                    message.push_str("; ");
                    message.push_str(outcome);
                }
                self.finish_reload(p.requesters, Ok(message));
            }
        }
    }

    /// Every hearing module accepted: the new config becomes the running one.
    fn apply_reload(&mut self) {
        let Some(p) = self.pending_reload.as_mut() else {
            return;
        };
        let new = p.new.clone();
        if p.changed.contains(&Section::Logging) {
            // Checked when the reload began; a failure now (the disk filled up since) keeps
            // the old log and says so.
            if let Err(e) = crate::logging::configure(&new.logging) {
                p.outcomes.push(format!("logging: {e}; kept the old log"));
            }
        }
        let old = std::mem::replace(&mut self.config, new.clone());
        let deadline = Instant::now() + new.controller.stop_timeout;
        let site_changed = p.changed.contains(&Section::Site);
        for m in &mut self.modules {
            let kind = m.kind;
            let (was, now) = (old.modules.enabled(kind), new.modules.enabled(kind));
            if was && !now {
                // Calls to a disabled module fail at once from here on.
                self.shared.directory.set(kind, None);
                m.stop(deadline, Then::Stay, &new, &self.shared);
                p.outcomes.push(format!("{kind}: disabled"));
            } else if !was && now {
                self.shared.directory.set(kind, Some(m.mailbox().clone()));
                m.stop(deadline, Then::Restart, &new, &self.shared);
                p.outcomes.push(format!("{kind}: enabled"));
            } else if now && site_changed {
                // Every module carries the site's identity.
                m.stop(deadline, Then::Restart, &new, &self.shared);
                p.outcomes.push(format!("{kind}: restarted"));
            } else if now && m.has_thread() && (m.view_changed)(&old, &new) {
                // The modules that checked, and any that (re)started with the old config
                // while they did.
                m.send(Ctl::Reload {
                    id: p.id,
                    config: new.clone(),
                });
                p.waiting.push(kind);
            } else if now
                && matches!(m.state, State::Backoff { .. })
                && (m.view_changed)(&old, &new)
            {
                p.outcomes
                    .push(format!("{kind}: takes the new config when it restarts"));
            }
        }
        // stop_timeout is read at each stop, so it applies at once; the pid file and the
        // socket were made at start.
        let (was, now) = (&old.controller, &new.controller);
        if was.pid_file != now.pid_file || was.control_socket != now.control_socket {
            p.outcomes.push(
                "[controller] pid_file and control_socket take effect at the next server start"
                    .into(),
            );
        }
        p.phase = Phase::Applying;
        p.deadline = Instant::now() + RELOAD_ANSWER_TIMEOUT;
        self.advance_reload();
    }

    fn finish_reload(&mut self, requesters: Vec<Requester>, result: Result<String, String>) {
        match &result {
            Ok(msg) => {
                self.shared.stats.reloads.fetch_add(1, Ordering::Relaxed);
                log::info!("reload: {msg}");
            }
            Err(e) => log::error!("reload refused, keeping the running config: {e}"),
        }
        self.last_reload = Some(ReloadRecord {
            at: chrono::Utc::now(),
            result: result.clone(),
        });
        for requester in requesters {
            self.answer(requester, &result);
        }
        // Asked while this one ran: one more reload for all of them.
        let next = std::mem::take(&mut self.next_reload);
        if !next.is_empty() {
            if self.shutdown.is_some() {
                for requester in next {
                    self.answer(requester, &Err("the server is stopping".into()));
                }
            } else {
                self.begin_reload(next);
            }
        }
    }

    fn answer(&mut self, requester: Requester, result: &Result<String, String>) {
        match requester {
            Requester::Signal => {}
            Requester::Socket(token) => {
                let answer = match result {
                    Ok(msg) => CtlResponse::ok(json!(msg)),
                    Err(e) => CtlResponse::error(format!("reload refused: {e}")),
                };
                self.connections
                    .respond(self.poll.registry(), token, &answer);
            }
            Requester::Ask(reply) => reply.send(match result {
                Ok(msg) => Ok(Reply::Control(ControlReply::Done(msg.clone()))),
                Err(e) => Err(CallError::Refused(format!("reload refused: {e}"))),
            }),
        }
    }
}
