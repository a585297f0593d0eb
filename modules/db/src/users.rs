//! What people do (SPEC §5.3), each authorised inside the same transaction by the user's
//! passkey or website session ([`authenticate`]): the user must exist and own the dataset, or
//! be an admin. A session changes nothing without its CSRF token. Every action is recorded in
//! `history`. Task state changes go through `ops::apply_transition`, so a complete task stays
//! complete except by a hard reset.
//!
//! Also the first start of a fresh database ([`bootstrap`]): user `admin` with a random
//! password, shown once in the log, and a passkey for the `iceprod submit` command.

use iceprod_runtime::states::TaskEvent;
use iceprod_runtime::web::UserAuth;
use iceprod_runtime::{DatasetAction, DbReply, PasskeyScope, TaskAction, UserAction};
use serde_json::json;

use crate::args;
use crate::error::DbError;
use crate::ops::{apply_transition, new_global_id, now, verify_passkey, OpRules};
use crate::sql::Tx;

/// The user behind a passkey or a session.
pub struct User {
    pub user_id: String,
    pub username: String,
    pub admin: bool,
}

fn authorize_user(tx: &mut dyn Tx, passkey: &str) -> Result<User, DbError> {
    let forbidden = || DbError::Forbidden("unknown, expired or revoked passkey".into());
    let (scope, user_id) = verify_passkey(tx, passkey).map_err(|_| forbidden())?;
    if scope != PasskeyScope::User {
        return Err(DbError::Forbidden("this is not a user's passkey".into()));
    }
    let row = tx
        .query_opt(
            "SELECT username, admin FROM user WHERE user_id = ?",
            args![user_id.as_str()],
        )?
        .ok_or_else(forbidden)?;
    Ok(User {
        username: row.text(0)?,
        admin: row.bool(1)?,
        user_id,
    })
}

/// The user behind `auth`. A session must be live; with `changes` (anything but a read) it
/// must also come with its CSRF token, or nothing happens (`Forbidden`).
pub(crate) fn authenticate(
    tx: &mut dyn Tx,
    auth: &UserAuth,
    changes: bool,
) -> Result<User, DbError> {
    match auth {
        UserAuth::Passkey(passkey) => authorize_user(tx, passkey),
        UserAuth::Session {
            session_id,
            csrf_token,
        } => crate::accounts::session_user(tx, session_id, csrf_token.as_deref(), changes),
    }
}

/// Refuses unless `user` owns the dataset or is an admin; 404-like when it does not exist.
fn check_owner(tx: &mut dyn Tx, user: &User, dataset_id: &str) -> Result<(), DbError> {
    let owner = tx
        .query_opt(
            "SELECT username FROM dataset WHERE dataset_id = ?",
            args![dataset_id],
        )?
        .ok_or_else(|| DbError::NotFound {
            what: "dataset",
            id: dataset_id.to_string(),
        })?
        .text(0)?;
    if user.admin || owner == user.username {
        Ok(())
    } else {
        Err(DbError::Forbidden(format!(
            "dataset {dataset_id} belongs to another user"
        )))
    }
}

pub(crate) fn record(
    tx: &mut dyn Tx,
    rules: OpRules,
    user: &User,
    action: &str,
    subject: &str,
    details: serde_json::Value,
) -> Result<(), DbError> {
    let id = new_global_id(tx, rules, "history")?;
    tx.exec(
        "INSERT INTO history (history_id, username, action, subject, details, timestamp) \
         VALUES (?, ?, ?, ?, ?, ?)",
        args![
            id,
            user.username.as_str(),
            action,
            subject,
            details.to_string(),
            now()
        ],
    )?;
    Ok(())
}

pub fn as_user(
    tx: &mut dyn Tx,
    rules: OpRules,
    auth: &UserAuth,
    action: &UserAction,
) -> Result<DbReply, DbError> {
    let user = authenticate(tx, auth, !matches!(action, UserAction::Read(_)))?;
    match action {
        UserAction::SubmitDataset(submission) => {
            let mut submission = (**submission).clone();
            submission.username = user.username.clone();
            let reply = crate::datasets::submit_dataset(tx, rules, &submission)?;
            if let DbReply::Dataset { dataset_id, .. } = &reply {
                record(
                    tx,
                    rules,
                    &user,
                    "submit_dataset",
                    dataset_id,
                    json!({"njobs": submission.njobs}),
                )?;
            }
            Ok(reply)
        }
        UserAction::Tasks { task_ids, action } => {
            let mut changed = 0;
            for task_id in task_ids {
                let dataset_id = dataset_of(tx, "task", task_id)?;
                check_owner(tx, &user, &dataset_id)?;
                apply_task_action(tx, rules, task_id, *action, false)?;
                if *action != TaskAction::Suspend {
                    let job_id = tx
                        .query_opt("SELECT job_id FROM task WHERE task_id = ?", args![task_id])?
                        .map(|r| r.text(0))
                        .transpose()?
                        .unwrap_or_default();
                    reopen(tx, &job_id, &dataset_id)?;
                }
                changed += 1;
            }
            record(
                tx,
                rules,
                &user,
                task_verb(*action),
                &task_ids.join(","),
                json!({}),
            )?;
            Ok(DbReply::Rows(changed))
        }
        UserAction::Jobs { job_ids, action } => {
            let mut changed = 0;
            for job_id in job_ids {
                let dataset_id = dataset_of(tx, "job", job_id)?;
                check_owner(tx, &user, &dataset_id)?;
                let tasks = tx.query(
                    "SELECT task_id FROM task WHERE job_id = ?",
                    args![job_id.as_str()],
                )?;
                for row in tasks {
                    changed += apply_task_action(tx, rules, &row.text(0)?, *action, true)?;
                }
                let status = if *action == TaskAction::Suspend {
                    "suspended"
                } else {
                    "processing"
                };
                tx.exec(
                    "UPDATE job SET status = ?, status_changed = ? WHERE job_id = ?",
                    args![status, now(), job_id.as_str()],
                )?;
                if *action != TaskAction::Suspend {
                    reopen(tx, job_id, &dataset_id)?;
                }
            }
            record(
                tx,
                rules,
                &user,
                job_verb(*action),
                &job_ids.join(","),
                json!({}),
            )?;
            Ok(DbReply::Rows(changed))
        }
        UserAction::Dataset { dataset_id, action } => {
            check_owner(tx, &user, dataset_id)?;
            let changed = dataset_action(tx, rules, dataset_id, *action)?;
            record(
                tx,
                rules,
                &user,
                dataset_verb(*action),
                dataset_id,
                json!({}),
            )?;
            Ok(DbReply::Rows(changed))
        }
        UserAction::SetDescription {
            dataset_id,
            description,
        } => {
            check_owner(tx, &user, dataset_id)?;
            tx.exec(
                "UPDATE dataset SET description = ? WHERE dataset_id = ?",
                args![description.as_str(), dataset_id.as_str()],
            )?;
            record(
                tx,
                rules,
                &user,
                "set_dataset_description",
                dataset_id,
                json!({}),
            )?;
            Ok(DbReply::Done)
        }
        UserAction::SetPriority {
            dataset_id,
            priority,
        } => {
            if !priority.is_finite() || *priority < 0.0 {
                return Err(DbError::Refused("priority must be a number ≥ 0".into()));
            }
            check_owner(tx, &user, dataset_id)?;
            tx.exec(
                "UPDATE dataset SET priority = ? WHERE dataset_id = ?",
                args![*priority, dataset_id.as_str()],
            )?;
            record(
                tx,
                rules,
                &user,
                "set_dataset_priority",
                dataset_id,
                json!({"priority": priority}),
            )?;
            Ok(DbReply::Done)
        }
        UserAction::UpdateConfig { dataset_id, config } => {
            check_owner(tx, &user, dataset_id)?;
            crate::datasets::update_config(tx, dataset_id, config)?;
            record(
                tx,
                rules,
                &user,
                "update_dataset_config",
                dataset_id,
                json!({}),
            )?;
            Ok(DbReply::Done)
        }
        UserAction::Read(query) => crate::public::query(tx, query),
    }
}

/// The dataset a task or job belongs to.
fn dataset_of(tx: &mut dyn Tx, table: &'static str, id: &str) -> Result<String, DbError> {
    let sql = match table {
        "task" => "SELECT dataset_id FROM task WHERE task_id = ?",
        _ => "SELECT dataset_id FROM job WHERE job_id = ?",
    };
    tx.query_opt(sql, args![id])?
        .ok_or_else(|| DbError::NotFound {
            what: table,
            id: id.to_string(),
        })?
        .text(0)
}

/// Applies a manual action to one task. With `lenient`, a task the action does not apply
/// to is skipped (a job reset touches only the tasks that need it); returns 1 if it changed.
fn apply_task_action(
    tx: &mut dyn Tx,
    rules: OpRules,
    task_id: &str,
    action: TaskAction,
    lenient: bool,
) -> Result<u64, DbError> {
    let events: &[TaskEvent] = match action {
        TaskAction::Reset if lenient => &[TaskEvent::PoolReset],
        TaskAction::Reset => &[TaskEvent::ManualReset],
        TaskAction::HardReset => &[TaskEvent::HardReset],
        // Standalone, the pool is this site's: a resumed task goes straight back to it.
        TaskAction::Resume => &[TaskEvent::ManualResume, TaskEvent::ReturnToPool],
        TaskAction::Suspend => &[TaskEvent::ManualSuspend],
    };
    for event in events {
        match apply_transition(tx, rules, task_id, *event) {
            Ok(_) => {}
            Err(DbError::Refused(_)) if lenient => return Ok(0),
            Err(e) => return Err(e),
        }
    }
    Ok(1)
}

/// After a task of `job_id` was reset or resumed by hand: the job and the dataset it ended
/// (`errors` when the rest failed; `complete` after a hard reset of a job) are open again, or
/// nothing would queue the task (only processing and truncated datasets are queued) and the
/// completion job would never look at them again. A suspended or truncated dataset stays so:
/// that was a person's choice.
fn reopen(tx: &mut dyn Tx, job_id: &str, dataset_id: &str) -> Result<(), DbError> {
    tx.exec(
        "UPDATE job SET status = 'processing', status_changed = ? \
         WHERE job_id = ? AND status IN ('errors', 'complete', 'suspended')",
        args![now(), job_id],
    )?;
    tx.exec(
        "UPDATE dataset SET status = 'processing', status_changed = ?, end_date = NULL \
         WHERE dataset_id = ? AND status IN ('errors', 'complete')",
        args![now(), dataset_id],
    )?;
    Ok(())
}

fn dataset_action(
    tx: &mut dyn Tx,
    rules: OpRules,
    dataset_id: &str,
    action: DatasetAction,
) -> Result<u64, DbError> {
    let status = tx
        .query_opt(
            "SELECT status FROM dataset WHERE dataset_id = ?",
            args![dataset_id],
        )?
        .map(|r| r.text(0))
        .transpose()?
        .unwrap_or_default();
    let (new_status, task_action) = match action {
        DatasetAction::Reset => ("processing", Some(TaskAction::Reset)),
        DatasetAction::HardReset => ("processing", Some(TaskAction::HardReset)),
        DatasetAction::Suspend => ("suspended", None),
        DatasetAction::Resume if status == "suspended" => ("processing", None),
        DatasetAction::Resume => {
            return Err(DbError::Refused(format!(
                "dataset {dataset_id} is {status}, not suspended"
            )))
        }
        DatasetAction::Truncate if matches!(status.as_str(), "processing" | "suspended") => {
            ("truncated", None)
        }
        DatasetAction::Truncate => {
            return Err(DbError::Refused(format!(
                "dataset {dataset_id} is {status}; only a processing or suspended one truncates"
            )))
        }
    };
    let mut changed = 0;
    if let Some(task_action) = task_action {
        let tasks = tx.query(
            "SELECT task_id FROM task WHERE dataset_id = ?",
            args![dataset_id],
        )?;
        for row in tasks {
            changed += apply_task_action(tx, rules, &row.text(0)?, task_action, true)?;
        }
        tx.exec(
            "UPDATE job SET status = 'processing', status_changed = ? \
             WHERE dataset_id = ? AND status <> 'processing'",
            args![now(), dataset_id],
        )?;
    }
    tx.exec(
        "UPDATE dataset SET status = ?, status_changed = ?, end_date = NULL, status_reason = '' \
         WHERE dataset_id = ?",
        args![new_status, now(), dataset_id],
    )?;
    Ok(changed)
}

fn task_verb(action: TaskAction) -> &'static str {
    match action {
        TaskAction::Reset => "reset_task",
        TaskAction::HardReset => "hard_reset_task",
        TaskAction::Resume => "resume_task",
        TaskAction::Suspend => "suspend_task",
    }
}

fn job_verb(action: TaskAction) -> &'static str {
    match action {
        TaskAction::Reset => "reset_jobs",
        TaskAction::HardReset => "hard_reset_jobs",
        TaskAction::Resume => "resume_jobs",
        TaskAction::Suspend => "suspend_jobs",
    }
}

fn dataset_verb(action: DatasetAction) -> &'static str {
    match action {
        DatasetAction::Reset => "reset_dataset",
        DatasetAction::HardReset => "hard_reset_dataset",
        DatasetAction::Suspend => "suspend_dataset",
        DatasetAction::Resume => "resume_dataset",
        DatasetAction::Truncate => "truncate_dataset",
    }
}

/// What the first start made: the first admin's password and passkey.
pub struct FirstAdmin {
    pub password: String,
    pub passkey: String,
}

/// On a database with no admin (a fresh one, or one where `iceprod user add` made only plain
/// users before the first start): creates `admin` with a random password and a user passkey
/// valid for a year, and returns both so the caller can hand them to the operator once. An
/// admin made with `iceprod user add --admin` before the first start takes its place.
pub fn bootstrap_admin(tx: &mut dyn Tx, rules: OpRules) -> Result<Option<FirstAdmin>, DbError> {
    let admins = tx.query_opt(
        "SELECT count(*) FROM user WHERE admin = 1 OR username = 'admin'",
        args![],
    )?;
    if admins.map(|r| r.int(0)).transpose()?.unwrap_or(0) > 0 {
        return Ok(None);
    }
    let password = crate::accounts::random_password()?;
    let hash = crate::accounts::hash_password(&password)?;
    crate::accounts::add_user(tx, rules, "admin", &hash, true)?;
    tx.exec(
        "UPDATE user SET name = 'Administrator' WHERE username = 'admin'",
        args![],
    )?;
    let user_id = tx
        .query_opt("SELECT user_id FROM user WHERE username = 'admin'", args![])?
        .ok_or_else(|| DbError::Schema("the new admin is not there".into()))?
        .text(0)?;
    let passkey = crate::ops::issue_passkey_key(
        tx,
        PasskeyScope::User,
        &user_id,
        std::time::Duration::from_secs(365 * 24 * 3600),
    )?;
    Ok(Some(FirstAdmin { password, passkey }))
}

/// The file the first admin passkey is written to, in the state folder.
pub const ADMIN_PASSKEY_FILE: &str = "admin.passkey";

/// Creates the first admin on a fresh database, logs its password once (it is stored only
/// hashed, so this line is the one place it is ever shown) and writes its passkey, readable
/// by the server's user only, to `STATE_DIR/admin.passkey` (what `iceprod submit` reads). The
/// file is written before the commit: if the commit fails, the next start makes a new admin
/// and overwrites it.
pub fn bootstrap<S: crate::workers::Store>(
    store: &mut S,
    rules: OpRules,
    state_dir: &std::path::Path,
) -> Result<(), DbError> {
    let file = state_dir.join(ADMIN_PASSKEY_FILE);
    let created = store.transaction(crate::workers::Access::Write, |tx| {
        let Some(first) = bootstrap_admin(tx.tx(), rules)? else {
            return Ok(None);
        };
        write_secret(&file, &first.passkey).map_err(|e| DbError::Open {
            file: file.clone(),
            reason: format!("cannot write the admin passkey: {e}"),
        })?;
        Ok(Some(first.password))
    })?;
    if let Some(password) = created {
        log::warn!(
            "db: created user admin, password: {password} (shown once; change it with \
             `iceprod user passwd admin`); its passkey is in {} (valid one year)",
            file.display()
        );
    }
    Ok(())
}

fn write_secret(file: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    writeln!(f, "{text}")?;
    f.sync_all()
}
