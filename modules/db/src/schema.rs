//! The schema as an ordered list of migrations, applied at start in one transaction each and
//! recorded in `schema_version`. A migration is never edited once released: changes are new
//! migrations appended here.
//!
//! Every query the server runs has an index here; the comment beside each names its query.

/// (version, statements). Versions count up from 1 without gaps.
pub const MIGRATIONS: &[(u32, &str)] = &[(1, V1)];

const V1: &str = r#"
CREATE TABLE setting (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- id counters: the local part of the global ids minted here (SPEC §2)
INSERT INTO setting (name, value) VALUES
    ('counter.dataset', '0'), ('counter.job', '0'), ('counter.task_rel', '0'),
    ('counter.task', '0'), ('counter.task_stat', '0'), ('counter.task_log', '0'),
    ('counter.user', '0'), ('counter.groups', '0'), ('counter.node', '0'),
    ('counter.roles', '0'), ('counter.passkey', '0'), ('counter.pilot', '0'),
    ('counter.session', '0'), ('counter.graph', '0'), ('counter.history', '0');

CREATE TABLE site (
    site_id      TEXT PRIMARY KEY,
    name         TEXT NOT NULL DEFAULT '',
    institution  TEXT NOT NULL DEFAULT '',
    queues       TEXT NOT NULL DEFAULT '{}',
    auth_key     TEXT,
    website_url  TEXT NOT NULL DEFAULT '',
    last_update  TEXT NOT NULL
);

CREATE TABLE node (
    node_id     TEXT PRIMARY KEY,
    hostname    TEXT NOT NULL,
    domain      TEXT NOT NULL DEFAULT '',
    last_update TEXT NOT NULL,
    stats       TEXT NOT NULL DEFAULT '{}'
);
-- pilots and tasks report by hostname
CREATE UNIQUE INDEX node_by_hostname ON node (hostname, domain);

CREATE TABLE dataset (
    dataset_id      TEXT PRIMARY KEY,
    dataset_num     INTEGER NOT NULL UNIQUE,
    name            TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    gridspec        TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL,
    status_changed  TEXT NOT NULL,
    username        TEXT NOT NULL DEFAULT '',
    groups_id       TEXT,
    priority        REAL NOT NULL DEFAULT 0,
    jobs_submitted  INTEGER NOT NULL,
    tasks_submitted INTEGER NOT NULL,
    jobs_buffered   INTEGER NOT NULL DEFAULT 0,
    debug           INTEGER NOT NULL DEFAULT 0,
    stat_keys       TEXT NOT NULL DEFAULT '[]',
    start_date      TEXT NOT NULL,
    end_date        TEXT
);
-- buffering and queueing walk the processing datasets; the website filters by status
CREATE INDEX dataset_by_status ON dataset (status);

CREATE TABLE config (
    dataset_id   TEXT PRIMARY KEY,
    config_data  TEXT NOT NULL,
    difplus_data TEXT NOT NULL DEFAULT ''
);

CREATE TABLE task_rel (
    task_rel_id  TEXT PRIMARY KEY,
    dataset_id   TEXT NOT NULL,
    task_index   INTEGER NOT NULL,
    name         TEXT NOT NULL,
    depends      TEXT NOT NULL DEFAULT '[]',
    requirements TEXT NOT NULL DEFAULT '{}'
);
-- buffering reads a dataset's task_rels in order
CREATE UNIQUE INDEX task_rel_by_dataset ON task_rel (dataset_id, task_index);

CREATE TABLE job (
    job_id         TEXT PRIMARY KEY,
    dataset_id     TEXT NOT NULL,
    job_index      INTEGER NOT NULL,
    status         TEXT NOT NULL,
    status_changed TEXT NOT NULL
);
-- job completion and the dataset page count a dataset's jobs by status
CREATE UNIQUE INDEX job_by_dataset ON job (dataset_id, job_index);
CREATE INDEX job_by_status ON job (status, dataset_id);

CREATE TABLE task (
    task_id        TEXT PRIMARY KEY,
    job_id         TEXT NOT NULL,
    dataset_id     TEXT NOT NULL,
    task_rel_id    TEXT NOT NULL,
    task_index     INTEGER NOT NULL,
    status         TEXT NOT NULL,
    prev_status    TEXT,
    status_changed TEXT NOT NULL,
    failures       INTEGER NOT NULL DEFAULT 0,
    evictions      INTEGER NOT NULL DEFAULT 0,
    walltime       REAL NOT NULL DEFAULT 0,
    walltime_err   REAL NOT NULL DEFAULT 0,
    walltime_err_n INTEGER NOT NULL DEFAULT 0,
    requirements   TEXT NOT NULL DEFAULT '{}',
    depends        TEXT NOT NULL DEFAULT '[]',
    grid_queue_id  TEXT,
    submit_dir     TEXT,
    gridspec       TEXT
);
-- queueing picks tasks by status per dataset; counts by state per dataset
CREATE INDEX task_by_status ON task (dataset_id, status);
-- global state counts and stuck-task resets scan by status and age
CREATE INDEX task_by_status_changed ON task (status, status_changed);
-- job completion reads a job's tasks
CREATE INDEX task_by_job ON task (job_id, task_index);
-- reconciliation finds tasks by grid id
CREATE INDEX task_by_grid_id ON task (grid_queue_id);

CREATE TABLE task_stat (
    task_stat_id TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL,
    dataset_id   TEXT NOT NULL,
    create_date  TEXT NOT NULL,
    stat         TEXT NOT NULL,
    error        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX task_stat_by_task ON task_stat (task_id, create_date);
CREATE INDEX task_stat_by_dataset ON task_stat (dataset_id);

CREATE TABLE task_log (
    task_log_id TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL,
    dataset_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    -- as received: base64 of zlib-compressed bytes (SPEC §5.2.1)
    data        TEXT NOT NULL
);
-- upload_logfile replaces by (task, name); the task page lists a task's logs
CREATE UNIQUE INDEX task_log_by_task ON task_log (task_id, name);
CREATE INDEX task_log_by_dataset ON task_log (dataset_id);

CREATE TABLE pilot (
    pilot_id         TEXT PRIMARY KEY,
    grid_queue_id    TEXT,
    gridspec         TEXT NOT NULL DEFAULT '',
    submit_time      TEXT NOT NULL,
    submit_dir       TEXT NOT NULL DEFAULT '',
    tasks            TEXT NOT NULL DEFAULT '',
    requirements     TEXT NOT NULL DEFAULT '{}',
    resources_avail  TEXT NOT NULL DEFAULT '{}',
    resources_claim  TEXT NOT NULL DEFAULT '{}',
    last_update      TEXT NOT NULL
);
CREATE INDEX pilot_by_grid_id ON pilot (grid_queue_id);

-- queued tasks waiting for a pilot (pilot mode), with the requirements matchmaking compares
CREATE TABLE task_lookup (
    task_id     TEXT PRIMARY KEY,
    gridspec    TEXT NOT NULL,
    insert_time TEXT NOT NULL,
    req_cpu     INTEGER NOT NULL DEFAULT 1,
    req_gpu     INTEGER NOT NULL DEFAULT 0,
    req_memory  REAL NOT NULL DEFAULT 1,
    req_disk    REAL NOT NULL DEFAULT 1,
    req_time    REAL NOT NULL DEFAULT 1,
    req_os      TEXT
);
-- new_task: best fit within a grid, longest waiting first
CREATE INDEX task_lookup_match ON task_lookup (gridspec, req_gpu, insert_time);

CREATE TABLE passkey (
    passkey_id TEXT PRIMARY KEY,
    auth_key   TEXT NOT NULL UNIQUE,
    -- task | pilot | user | site, and the id it is bound to
    scope      TEXT NOT NULL,
    subject    TEXT NOT NULL,
    expire     TEXT NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX passkey_by_subject ON passkey (scope, subject);
-- cleanup of expired passkeys
CREATE INDEX passkey_by_expire ON passkey (expire);

CREATE TABLE user (
    user_id         TEXT PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL DEFAULT '',
    email           TEXT NOT NULL DEFAULT '',
    admin           INTEGER NOT NULL DEFAULT 0,
    password_hash   TEXT NOT NULL DEFAULT '',
    roles           TEXT NOT NULL DEFAULT '[]',
    groups          TEXT NOT NULL DEFAULT '[]',
    last_login_time TEXT
);

CREATE TABLE groups (
    groups_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    priority    REAL NOT NULL DEFAULT 1
);

CREATE TABLE roles (
    roles_id    TEXT PRIMARY KEY,
    role_name   TEXT NOT NULL UNIQUE,
    permissions TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE session (
    session_id TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    expire     TEXT NOT NULL
);
CREATE INDEX session_by_expire ON session (expire);

CREATE TABLE graph (
    graph_id  TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    timestamp TEXT NOT NULL
);
-- the graphs page reads a name over a time range
CREATE INDEX graph_by_name ON graph (name, timestamp);

CREATE TABLE history (
    history_id TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    details    TEXT NOT NULL DEFAULT '{}',
    timestamp  TEXT NOT NULL
);
CREATE INDEX history_by_subject ON history (subject, timestamp);

-- updates a client site owes its master, in order (SPEC §5.5)
CREATE TABLE outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL,
    payload TEXT NOT NULL,
    created TEXT NOT NULL
);
"#;
