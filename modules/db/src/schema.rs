//! The schema as an ordered list of migrations, applied at start. Each migration is written
//! twice, side by side: for SQLite (applied in one transaction, version kept in
//! `PRAGMA user_version`, see `store.rs`) and for MySQL/MariaDB (version kept in the
//! `schema_version` table, see `mysql_store.rs`). A migration is never edited once released:
//! changes are new migrations appended here, in both dialects, with the same tables, columns,
//! indexes and seed rows.
//!
//! Every query the server runs has an index here; the comment beside each names its query.
//!
//! The MySQL text follows the SQLite text line by line, with these translations:
//! - keys and indexed columns are `VARCHAR(255)` (InnoDB keys need a length; 255 utf8mb4
//!   characters are 1020 bytes, so three of them fit the 3072-byte key limit); other text is
//!   `MEDIUMTEXT`, and the two that can be large (`config.config_data`, `task_log.data`)
//!   `LONGTEXT`;
//! - `INTEGER` is `BIGINT` (SQLite integers are 64-bit), `REAL` is `DOUBLE`;
//! - defaults of text columns are written `DEFAULT ('…')`: MySQL 8 takes a default on a
//!   `TEXT` column only as an expression, and MariaDB takes both forms;
//! - every table is InnoDB (transactions, savepoints, durable commits) in utf8mb4 with the
//!   binary collation `utf8mb4_bin`, so ids, passkeys and names compare byte for byte as in
//!   SQLite (the default `_ci` collations would make `ABC` equal `abc`). One difference stays:
//!   `utf8mb4_bin` ignores trailing spaces in comparisons;
//! - `user` and `groups` are backquoted: MariaDB accepts them bare, but `groups` is a reserved
//!   word in MySQL 8. Queries that name `groups` should backquote it too (SQLite accepts
//!   backquotes).

/// One schema change, in both dialects.
pub struct Migration {
    /// Versions count up from 1 without gaps.
    pub version: u32,
    pub sqlite: &'static str,
    pub mysql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: SQLITE_V1,
        mysql: MYSQL_V1,
    },
    Migration {
        version: 2,
        sqlite: SQLITE_V2,
        mysql: MYSQL_V2,
    },
    Migration {
        version: 3,
        sqlite: SQLITE_V3,
        mysql: MYSQL_V3,
    },
    Migration {
        version: 4,
        sqlite: SQLITE_V4,
        mysql: MYSQL_V4,
    },
    Migration {
        version: 5,
        sqlite: SQLITE_V5,
        mysql: MYSQL_V5,
    },
    Migration {
        version: 6,
        sqlite: SQLITE_V6,
        mysql: MYSQL_V6,
    },
    Migration {
        version: 7,
        sqlite: SQLITE_V7,
        mysql: MYSQL_V7,
    },
];

/// The newest schema version this build knows.
pub fn newest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

const SQLITE_V1: &str = r#"
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

const MYSQL_V1: &str = r#"
CREATE TABLE setting (
    name  VARCHAR(255) PRIMARY KEY,
    value MEDIUMTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- id counters: the local part of the global ids minted here (SPEC §2)
INSERT INTO setting (name, value) VALUES
    ('counter.dataset', '0'), ('counter.job', '0'), ('counter.task_rel', '0'),
    ('counter.task', '0'), ('counter.task_stat', '0'), ('counter.task_log', '0'),
    ('counter.user', '0'), ('counter.groups', '0'), ('counter.node', '0'),
    ('counter.roles', '0'), ('counter.passkey', '0'), ('counter.pilot', '0'),
    ('counter.session', '0'), ('counter.graph', '0'), ('counter.history', '0');

CREATE TABLE site (
    site_id      VARCHAR(255) PRIMARY KEY,
    name         VARCHAR(255) NOT NULL DEFAULT '',
    institution  VARCHAR(255) NOT NULL DEFAULT '',
    queues       MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    auth_key     VARCHAR(255),
    website_url  MEDIUMTEXT NOT NULL DEFAULT (''),
    last_update  VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE node (
    node_id     VARCHAR(255) PRIMARY KEY,
    hostname    VARCHAR(255) NOT NULL,
    domain      VARCHAR(255) NOT NULL DEFAULT '',
    last_update VARCHAR(255) NOT NULL,
    stats       MEDIUMTEXT NOT NULL DEFAULT ('{}')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- pilots and tasks report by hostname
CREATE UNIQUE INDEX node_by_hostname ON node (hostname, domain);

CREATE TABLE dataset (
    dataset_id      VARCHAR(255) PRIMARY KEY,
    dataset_num     BIGINT NOT NULL UNIQUE,
    name            MEDIUMTEXT NOT NULL DEFAULT (''),
    description     MEDIUMTEXT NOT NULL DEFAULT (''),
    gridspec        VARCHAR(255) NOT NULL DEFAULT '',
    status          VARCHAR(255) NOT NULL,
    status_changed  VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL DEFAULT '',
    groups_id       VARCHAR(255),
    priority        DOUBLE NOT NULL DEFAULT 0,
    jobs_submitted  BIGINT NOT NULL,
    tasks_submitted BIGINT NOT NULL,
    jobs_buffered   BIGINT NOT NULL DEFAULT 0,
    debug           BIGINT NOT NULL DEFAULT 0,
    stat_keys       MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    start_date      VARCHAR(255) NOT NULL,
    end_date        VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- buffering and queueing walk the processing datasets; the website filters by status
CREATE INDEX dataset_by_status ON dataset (status);

CREATE TABLE config (
    dataset_id   VARCHAR(255) PRIMARY KEY,
    config_data  LONGTEXT NOT NULL,
    difplus_data MEDIUMTEXT NOT NULL DEFAULT ('')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE task_rel (
    task_rel_id  VARCHAR(255) PRIMARY KEY,
    dataset_id   VARCHAR(255) NOT NULL,
    task_index   BIGINT NOT NULL,
    name         VARCHAR(255) NOT NULL,
    depends      MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    requirements MEDIUMTEXT NOT NULL DEFAULT ('{}')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- buffering reads a dataset's task_rels in order
CREATE UNIQUE INDEX task_rel_by_dataset ON task_rel (dataset_id, task_index);

CREATE TABLE job (
    job_id         VARCHAR(255) PRIMARY KEY,
    dataset_id     VARCHAR(255) NOT NULL,
    job_index      BIGINT NOT NULL,
    status         VARCHAR(255) NOT NULL,
    status_changed VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- job completion and the dataset page count a dataset's jobs by status
CREATE UNIQUE INDEX job_by_dataset ON job (dataset_id, job_index);
CREATE INDEX job_by_status ON job (status, dataset_id);

CREATE TABLE task (
    task_id        VARCHAR(255) PRIMARY KEY,
    job_id         VARCHAR(255) NOT NULL,
    dataset_id     VARCHAR(255) NOT NULL,
    task_rel_id    VARCHAR(255) NOT NULL,
    task_index     BIGINT NOT NULL,
    status         VARCHAR(255) NOT NULL,
    prev_status    VARCHAR(255),
    status_changed VARCHAR(255) NOT NULL,
    failures       BIGINT NOT NULL DEFAULT 0,
    evictions      BIGINT NOT NULL DEFAULT 0,
    walltime       DOUBLE NOT NULL DEFAULT 0,
    walltime_err   DOUBLE NOT NULL DEFAULT 0,
    walltime_err_n BIGINT NOT NULL DEFAULT 0,
    requirements   MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    depends        MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    grid_queue_id  VARCHAR(255),
    submit_dir     MEDIUMTEXT,
    gridspec       VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- queueing picks tasks by status per dataset; counts by state per dataset
CREATE INDEX task_by_status ON task (dataset_id, status);
-- global state counts and stuck-task resets scan by status and age
CREATE INDEX task_by_status_changed ON task (status, status_changed);
-- job completion reads a job's tasks
CREATE INDEX task_by_job ON task (job_id, task_index);
-- reconciliation finds tasks by grid id
CREATE INDEX task_by_grid_id ON task (grid_queue_id);

CREATE TABLE task_stat (
    task_stat_id VARCHAR(255) PRIMARY KEY,
    task_id      VARCHAR(255) NOT NULL,
    dataset_id   VARCHAR(255) NOT NULL,
    create_date  VARCHAR(255) NOT NULL,
    stat         MEDIUMTEXT NOT NULL,
    error        BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX task_stat_by_task ON task_stat (task_id, create_date);
CREATE INDEX task_stat_by_dataset ON task_stat (dataset_id);

CREATE TABLE task_log (
    task_log_id VARCHAR(255) PRIMARY KEY,
    task_id     VARCHAR(255) NOT NULL,
    dataset_id  VARCHAR(255) NOT NULL,
    name        VARCHAR(255) NOT NULL,
    -- as received: base64 of zlib-compressed bytes (SPEC §5.2.1)
    data        LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- upload_logfile replaces by (task, name); the task page lists a task's logs
CREATE UNIQUE INDEX task_log_by_task ON task_log (task_id, name);
CREATE INDEX task_log_by_dataset ON task_log (dataset_id);

CREATE TABLE pilot (
    pilot_id         VARCHAR(255) PRIMARY KEY,
    grid_queue_id    VARCHAR(255),
    gridspec         VARCHAR(255) NOT NULL DEFAULT '',
    submit_time      VARCHAR(255) NOT NULL,
    submit_dir       MEDIUMTEXT NOT NULL DEFAULT (''),
    tasks            MEDIUMTEXT NOT NULL DEFAULT (''),
    requirements     MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    resources_avail  MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    resources_claim  MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    last_update      VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX pilot_by_grid_id ON pilot (grid_queue_id);

-- queued tasks waiting for a pilot (pilot mode), with the requirements matchmaking compares
CREATE TABLE task_lookup (
    task_id     VARCHAR(255) PRIMARY KEY,
    gridspec    VARCHAR(255) NOT NULL,
    insert_time VARCHAR(255) NOT NULL,
    req_cpu     BIGINT NOT NULL DEFAULT 1,
    req_gpu     BIGINT NOT NULL DEFAULT 0,
    req_memory  DOUBLE NOT NULL DEFAULT 1,
    req_disk    DOUBLE NOT NULL DEFAULT 1,
    req_time    DOUBLE NOT NULL DEFAULT 1,
    req_os      VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- new_task: best fit within a grid, longest waiting first
CREATE INDEX task_lookup_match ON task_lookup (gridspec, req_gpu, insert_time);

CREATE TABLE passkey (
    passkey_id VARCHAR(255) PRIMARY KEY,
    auth_key   VARCHAR(255) NOT NULL UNIQUE,
    -- task | pilot | user | site, and the id it is bound to
    scope      VARCHAR(255) NOT NULL,
    subject    VARCHAR(255) NOT NULL,
    expire     VARCHAR(255) NOT NULL,
    revoked    BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX passkey_by_subject ON passkey (scope, subject);
-- cleanup of expired passkeys
CREATE INDEX passkey_by_expire ON passkey (expire);

CREATE TABLE `user` (
    user_id         VARCHAR(255) PRIMARY KEY,
    username        VARCHAR(255) NOT NULL UNIQUE,
    name            VARCHAR(255) NOT NULL DEFAULT '',
    email           VARCHAR(255) NOT NULL DEFAULT '',
    admin           BIGINT NOT NULL DEFAULT 0,
    password_hash   VARCHAR(255) NOT NULL DEFAULT '',
    roles           MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    `groups`        MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    last_login_time VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE `groups` (
    groups_id   VARCHAR(255) PRIMARY KEY,
    name        VARCHAR(255) NOT NULL UNIQUE,
    description MEDIUMTEXT NOT NULL DEFAULT (''),
    priority    DOUBLE NOT NULL DEFAULT 1
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE roles (
    roles_id    VARCHAR(255) PRIMARY KEY,
    role_name   VARCHAR(255) NOT NULL UNIQUE,
    permissions MEDIUMTEXT NOT NULL DEFAULT ('[]')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE session (
    session_id VARCHAR(255) PRIMARY KEY,
    user_id    VARCHAR(255) NOT NULL,
    csrf_token VARCHAR(255) NOT NULL,
    expire     VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX session_by_expire ON session (expire);

CREATE TABLE graph (
    graph_id  VARCHAR(255) PRIMARY KEY,
    name      VARCHAR(255) NOT NULL,
    value     MEDIUMTEXT NOT NULL,
    timestamp VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- the graphs page reads a name over a time range
CREATE INDEX graph_by_name ON graph (name, timestamp);

CREATE TABLE history (
    history_id VARCHAR(255) PRIMARY KEY,
    username   VARCHAR(255) NOT NULL,
    action     VARCHAR(255) NOT NULL,
    subject    VARCHAR(255) NOT NULL,
    details    MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    timestamp  VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX history_by_subject ON history (subject, timestamp);

-- updates a client site owes its master, in order (SPEC §5.5)
CREATE TABLE outbox (
    seq     BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind    VARCHAR(255) NOT NULL,
    payload MEDIUMTEXT NOT NULL,
    created VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
"#;

/// The archive (SPEC §10, `archive.rs`): datasets that ended long ago, moved out of the live
/// tables with all their rows. The tables repeat the live tables' columns. On MySQL/MariaDB
/// they are the archive, in the same database; on SQLite the archive is a second file with
/// this same schema, attached as `archive`, and the rows live in its `archive_*` tables (the
/// primary file's stay empty, as the archive file's live tables do).
const SQLITE_V2: &str = r#"
CREATE TABLE archive_dataset (
    dataset_id      TEXT PRIMARY KEY,
    dataset_num     INTEGER NOT NULL,
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
-- the dataset list is in number order
CREATE INDEX archive_dataset_by_num ON archive_dataset (dataset_num);

CREATE TABLE archive_config (
    dataset_id   TEXT PRIMARY KEY,
    config_data  TEXT NOT NULL,
    difplus_data TEXT NOT NULL DEFAULT ''
);

CREATE TABLE archive_task_rel (
    task_rel_id  TEXT PRIMARY KEY,
    dataset_id   TEXT NOT NULL,
    task_index   INTEGER NOT NULL,
    name         TEXT NOT NULL,
    depends      TEXT NOT NULL DEFAULT '[]',
    requirements TEXT NOT NULL DEFAULT '{}'
);
-- every archive read and move is by dataset
CREATE INDEX archive_task_rel_by_dataset ON archive_task_rel (dataset_id, task_index);

CREATE TABLE archive_job (
    job_id         TEXT PRIMARY KEY,
    dataset_id     TEXT NOT NULL,
    job_index      INTEGER NOT NULL,
    status         TEXT NOT NULL,
    status_changed TEXT NOT NULL
);
CREATE INDEX archive_job_by_dataset ON archive_job (dataset_id, job_index);

CREATE TABLE archive_task (
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
CREATE INDEX archive_task_by_dataset ON archive_task (dataset_id, status);

CREATE TABLE archive_task_stat (
    task_stat_id TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL,
    dataset_id   TEXT NOT NULL,
    create_date  TEXT NOT NULL,
    stat         TEXT NOT NULL,
    error        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX archive_task_stat_by_dataset ON archive_task_stat (dataset_id, create_date);

CREATE TABLE archive_task_log (
    task_log_id TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL,
    dataset_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX archive_task_log_by_dataset ON archive_task_log (dataset_id);
-- a task's logs
CREATE INDEX archive_task_log_by_task ON archive_task_log (task_id, name);

-- the history rows whose subject is an archived dataset
CREATE TABLE archive_history (
    history_id TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    details    TEXT NOT NULL DEFAULT '{}',
    timestamp  TEXT NOT NULL
);
CREATE INDEX archive_history_by_subject ON archive_history (subject, timestamp);

-- task counts by state of each archived dataset, written with its copy: counts and
-- completion read these instead of scanning the archived tasks
CREATE TABLE archive_task_count (
    dataset_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, status)
);
"#;

const MYSQL_V2: &str = r#"
CREATE TABLE archive_dataset (
    dataset_id      VARCHAR(255) PRIMARY KEY,
    dataset_num     BIGINT NOT NULL,
    name            MEDIUMTEXT NOT NULL DEFAULT (''),
    description     MEDIUMTEXT NOT NULL DEFAULT (''),
    gridspec        VARCHAR(255) NOT NULL DEFAULT '',
    status          VARCHAR(255) NOT NULL,
    status_changed  VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL DEFAULT '',
    groups_id       VARCHAR(255),
    priority        DOUBLE NOT NULL DEFAULT 0,
    jobs_submitted  BIGINT NOT NULL,
    tasks_submitted BIGINT NOT NULL,
    jobs_buffered   BIGINT NOT NULL DEFAULT 0,
    debug           BIGINT NOT NULL DEFAULT 0,
    stat_keys       MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    start_date      VARCHAR(255) NOT NULL,
    end_date        VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- the dataset list is in number order
CREATE INDEX archive_dataset_by_num ON archive_dataset (dataset_num);

CREATE TABLE archive_config (
    dataset_id   VARCHAR(255) PRIMARY KEY,
    config_data  LONGTEXT NOT NULL,
    difplus_data MEDIUMTEXT NOT NULL DEFAULT ('')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE archive_task_rel (
    task_rel_id  VARCHAR(255) PRIMARY KEY,
    dataset_id   VARCHAR(255) NOT NULL,
    task_index   BIGINT NOT NULL,
    name         VARCHAR(255) NOT NULL,
    depends      MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    requirements MEDIUMTEXT NOT NULL DEFAULT ('{}')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- every archive read and move is by dataset
CREATE INDEX archive_task_rel_by_dataset ON archive_task_rel (dataset_id, task_index);

CREATE TABLE archive_job (
    job_id         VARCHAR(255) PRIMARY KEY,
    dataset_id     VARCHAR(255) NOT NULL,
    job_index      BIGINT NOT NULL,
    status         VARCHAR(255) NOT NULL,
    status_changed VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX archive_job_by_dataset ON archive_job (dataset_id, job_index);

CREATE TABLE archive_task (
    task_id        VARCHAR(255) PRIMARY KEY,
    job_id         VARCHAR(255) NOT NULL,
    dataset_id     VARCHAR(255) NOT NULL,
    task_rel_id    VARCHAR(255) NOT NULL,
    task_index     BIGINT NOT NULL,
    status         VARCHAR(255) NOT NULL,
    prev_status    VARCHAR(255),
    status_changed VARCHAR(255) NOT NULL,
    failures       BIGINT NOT NULL DEFAULT 0,
    evictions      BIGINT NOT NULL DEFAULT 0,
    walltime       DOUBLE NOT NULL DEFAULT 0,
    walltime_err   DOUBLE NOT NULL DEFAULT 0,
    walltime_err_n BIGINT NOT NULL DEFAULT 0,
    requirements   MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    depends        MEDIUMTEXT NOT NULL DEFAULT ('[]'),
    grid_queue_id  VARCHAR(255),
    submit_dir     MEDIUMTEXT,
    gridspec       VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX archive_task_by_dataset ON archive_task (dataset_id, status);

CREATE TABLE archive_task_stat (
    task_stat_id VARCHAR(255) PRIMARY KEY,
    task_id      VARCHAR(255) NOT NULL,
    dataset_id   VARCHAR(255) NOT NULL,
    create_date  VARCHAR(255) NOT NULL,
    stat         MEDIUMTEXT NOT NULL,
    error        BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX archive_task_stat_by_dataset ON archive_task_stat (dataset_id, create_date);

CREATE TABLE archive_task_log (
    task_log_id VARCHAR(255) PRIMARY KEY,
    task_id     VARCHAR(255) NOT NULL,
    dataset_id  VARCHAR(255) NOT NULL,
    name        VARCHAR(255) NOT NULL,
    data        LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX archive_task_log_by_dataset ON archive_task_log (dataset_id);
-- a task's logs
CREATE INDEX archive_task_log_by_task ON archive_task_log (task_id, name);

-- the history rows whose subject is an archived dataset
CREATE TABLE archive_history (
    history_id VARCHAR(255) PRIMARY KEY,
    username   VARCHAR(255) NOT NULL,
    action     VARCHAR(255) NOT NULL,
    subject    VARCHAR(255) NOT NULL,
    details    MEDIUMTEXT NOT NULL DEFAULT ('{}'),
    timestamp  VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX archive_history_by_subject ON archive_history (subject, timestamp);

-- task counts by state of each archived dataset, written with its copy: counts and
-- completion read these instead of scanning the archived tasks
CREATE TABLE archive_task_count (
    dataset_id VARCHAR(255) NOT NULL,
    status     VARCHAR(255) NOT NULL,
    n          BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
"#;

/// `new_task`'s order as an index (issue 3): the lookup rows of a grid by gpu, memory and cpu,
/// largest first, then the longest waiting, so matchmaking reads only the first rows that fit
/// instead of sorting every fitting row (about 0.05–0.12 s per call at 100,000 rows). It
/// starts with the columns of `task_lookup_match`, which it replaces. `task_id`, the last
/// tie-break, is not in it: with it the key would exceed InnoDB's 3,072 bytes (three
/// `VARCHAR(255)` in utf8mb4 and three numbers). So the rows that tie on every indexed column
/// are sorted by task id: by SQLite, and by MariaDB 10.11 (a filesort of one gpu/memory pair's
/// rows), which does not order by the primary key InnoDB appends to the index.
const SQLITE_V3: &str = r#"
DROP INDEX task_lookup_match;
-- new_task: best fit within a grid (gpu, memory, cpu largest first), longest waiting first
CREATE INDEX task_lookup_fit ON task_lookup (gridspec, req_gpu DESC, req_memory DESC, req_cpu DESC, insert_time);
"#;

const MYSQL_V3: &str = r#"
DROP INDEX task_lookup_match ON task_lookup;
-- new_task: best fit within a grid (gpu, memory, cpu largest first), longest waiting first
CREATE INDEX task_lookup_fit ON task_lookup (gridspec, req_gpu DESC, req_memory DESC, req_cpu DESC, insert_time);
"#;

/// The queue's reads by grid: the tasks a grid holds (queued or processing), and the tasks of
/// a grid stuck in one state since before a cutoff. Three `VARCHAR(255)` fit InnoDB's key.
const SQLITE_V4: &str = r#"
-- grid_tasks by (gridspec, status); reset_stuck_tasks by (gridspec, status, status_changed)
CREATE INDEX task_by_grid ON task (gridspec, status, status_changed);
"#;

const MYSQL_V4: &str = r#"
-- grid_tasks by (gridspec, status); reset_stuck_tasks by (gridspec, status, status_changed)
CREATE INDEX task_by_grid ON task (gridspec, status, status_changed);
"#;

/// The summaries the website's counts read (issue 5): tasks by (dataset, task index, status)
/// with the walltime sums of the per-name table (`task_summary`), and jobs by (dataset,
/// status) (`job_summary`), so `/dataset/N` and `/` read a few rows instead of counting a
/// million. Triggers on `task` and `job` keep them, so every writer (single-row transitions,
/// bulk UPDATEs, buffering, truncate, archive moves) keeps them right without knowing of them;
/// the migration fills them from the rows already there.
///
/// Per row: `n`, Σ walltime, Σ walltime², Σ walltime_err (exact under any change, up to float
/// rounding: each change subtracts the old row and adds the new), and the min and max
/// walltime, which only follow rows that arrive: a row that leaves (a reset or hard reset of
/// a complete task, a walltime that shrinks) does not shrink the range, which is reset only
/// when its group empties (`n` back to 0, when the sums are zeroed too, dropping any rounding
/// left). So after a hard reset the min/max of the next completions still include the
/// walltimes of the tasks that completed before it, until the last of those is reset.
/// A task never changes its dataset or task index; the triggers assume so.
///
/// SQLite: one trigger per event, of one or two statements. MySQL/MariaDB: one statement per
/// trigger (a body with `;` would need a `DELIMITER`, and `mysql_statements` splits at `;`),
/// so an update or delete has two triggers, the second `FOLLOWS` the first. Creating a
/// trigger needs the `TRIGGER` privilege (and, with binary logging on, `SUPER` or
/// `log_bin_trust_function_creators`).
const SQLITE_V5: &str = r#"
CREATE TABLE task_summary (
    dataset_id       TEXT NOT NULL,
    task_index       INTEGER NOT NULL,
    status           TEXT NOT NULL,
    n                INTEGER NOT NULL,
    walltime_sum     REAL NOT NULL,
    walltime_sq      REAL NOT NULL,
    walltime_min     REAL,
    walltime_max     REAL,
    walltime_err_sum REAL NOT NULL,
    -- the dataset page reads a dataset's rows; the triggers one row each
    PRIMARY KEY (dataset_id, task_index, status)
);
INSERT INTO task_summary (dataset_id, task_index, status, n, walltime_sum, walltime_sq, walltime_min, walltime_max, walltime_err_sum)
    SELECT dataset_id, task_index, status, count(*), sum(walltime), sum(walltime * walltime), min(walltime), max(walltime), sum(walltime_err)
    FROM task GROUP BY dataset_id, task_index, status;

CREATE TRIGGER task_summary_insert AFTER INSERT ON task
BEGIN
    INSERT INTO task_summary (dataset_id, task_index, status, n, walltime_sum, walltime_sq, walltime_min, walltime_max, walltime_err_sum)
    VALUES (NEW.dataset_id, NEW.task_index, NEW.status, 1, NEW.walltime, NEW.walltime * NEW.walltime, NEW.walltime, NEW.walltime, NEW.walltime_err)
    ON CONFLICT (dataset_id, task_index, status) DO UPDATE SET
        walltime_min = min(coalesce(walltime_min, NEW.walltime), NEW.walltime),
        walltime_max = max(coalesce(walltime_max, NEW.walltime), NEW.walltime),
        walltime_sum = walltime_sum + NEW.walltime,
        walltime_sq = walltime_sq + NEW.walltime * NEW.walltime,
        walltime_err_sum = walltime_err_sum + NEW.walltime_err,
        n = n + 1;
END;

CREATE TRIGGER task_summary_update AFTER UPDATE OF status, walltime, walltime_err ON task
WHEN OLD.status <> NEW.status OR OLD.walltime <> NEW.walltime OR OLD.walltime_err <> NEW.walltime_err
BEGIN
    UPDATE task_summary SET
        walltime_min = CASE WHEN n = 1 THEN NULL ELSE walltime_min END,
        walltime_max = CASE WHEN n = 1 THEN NULL ELSE walltime_max END,
        walltime_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_sum - OLD.walltime END,
        walltime_sq = CASE WHEN n = 1 THEN 0 ELSE walltime_sq - OLD.walltime * OLD.walltime END,
        walltime_err_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_err_sum - OLD.walltime_err END,
        n = n - 1
    WHERE dataset_id = OLD.dataset_id AND task_index = OLD.task_index AND status = OLD.status;
    INSERT INTO task_summary (dataset_id, task_index, status, n, walltime_sum, walltime_sq, walltime_min, walltime_max, walltime_err_sum)
    VALUES (NEW.dataset_id, NEW.task_index, NEW.status, 1, NEW.walltime, NEW.walltime * NEW.walltime, NEW.walltime, NEW.walltime, NEW.walltime_err)
    ON CONFLICT (dataset_id, task_index, status) DO UPDATE SET
        walltime_min = min(coalesce(walltime_min, NEW.walltime), NEW.walltime),
        walltime_max = max(coalesce(walltime_max, NEW.walltime), NEW.walltime),
        walltime_sum = walltime_sum + NEW.walltime,
        walltime_sq = walltime_sq + NEW.walltime * NEW.walltime,
        walltime_err_sum = walltime_err_sum + NEW.walltime_err,
        n = n + 1;
END;

CREATE TRIGGER task_summary_delete AFTER DELETE ON task
BEGIN
    UPDATE task_summary SET
        walltime_min = CASE WHEN n = 1 THEN NULL ELSE walltime_min END,
        walltime_max = CASE WHEN n = 1 THEN NULL ELSE walltime_max END,
        walltime_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_sum - OLD.walltime END,
        walltime_sq = CASE WHEN n = 1 THEN 0 ELSE walltime_sq - OLD.walltime * OLD.walltime END,
        walltime_err_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_err_sum - OLD.walltime_err END,
        n = n - 1
    WHERE dataset_id = OLD.dataset_id AND task_index = OLD.task_index AND status = OLD.status;
    -- a dataset that leaves (archived) leaves no empty rows behind
    DELETE FROM task_summary WHERE dataset_id = OLD.dataset_id AND task_index = OLD.task_index AND n = 0;
END;

CREATE TABLE job_summary (
    dataset_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, status)
);
INSERT INTO job_summary (dataset_id, status, n)
    SELECT dataset_id, status, count(*) FROM job GROUP BY dataset_id, status;

CREATE TRIGGER job_summary_insert AFTER INSERT ON job
BEGIN
    INSERT INTO job_summary (dataset_id, status, n) VALUES (NEW.dataset_id, NEW.status, 1)
    ON CONFLICT (dataset_id, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_summary_update AFTER UPDATE OF status ON job
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE job_summary SET n = n - 1 WHERE dataset_id = OLD.dataset_id AND status = OLD.status;
    INSERT INTO job_summary (dataset_id, status, n) VALUES (NEW.dataset_id, NEW.status, 1)
    ON CONFLICT (dataset_id, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_summary_delete AFTER DELETE ON job
BEGIN
    UPDATE job_summary SET n = n - 1 WHERE dataset_id = OLD.dataset_id AND status = OLD.status;
    DELETE FROM job_summary WHERE dataset_id = OLD.dataset_id AND n = 0;
END;
"#;

/// The same in MySQL/MariaDB: the assignments of an `UPDATE` run left to right there, each
/// seeing the ones before, so `n` is assigned last (its old value decides the others).
const MYSQL_V5: &str = r#"
CREATE TABLE task_summary (
    dataset_id       VARCHAR(255) NOT NULL,
    task_index       BIGINT NOT NULL,
    status           VARCHAR(255) NOT NULL,
    n                BIGINT NOT NULL,
    walltime_sum     DOUBLE NOT NULL,
    walltime_sq      DOUBLE NOT NULL,
    walltime_min     DOUBLE,
    walltime_max     DOUBLE,
    walltime_err_sum DOUBLE NOT NULL,
    -- the dataset page reads a dataset's rows; the triggers one row each
    PRIMARY KEY (dataset_id, task_index, status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO task_summary (dataset_id, task_index, status, n, walltime_sum, walltime_sq, walltime_min, walltime_max, walltime_err_sum)
    SELECT dataset_id, task_index, status, count(*), sum(walltime), sum(walltime * walltime), min(walltime), max(walltime), sum(walltime_err)
    FROM task GROUP BY dataset_id, task_index, status;

CREATE TRIGGER task_summary_insert AFTER INSERT ON task FOR EACH ROW
    INSERT INTO task_summary (dataset_id, task_index, status, n, walltime_sum, walltime_sq, walltime_min, walltime_max, walltime_err_sum)
    VALUES (NEW.dataset_id, NEW.task_index, NEW.status, 1, NEW.walltime, NEW.walltime * NEW.walltime, NEW.walltime, NEW.walltime, NEW.walltime_err)
    ON DUPLICATE KEY UPDATE
        walltime_min = LEAST(coalesce(walltime_min, NEW.walltime), NEW.walltime),
        walltime_max = GREATEST(coalesce(walltime_max, NEW.walltime), NEW.walltime),
        walltime_sum = walltime_sum + NEW.walltime,
        walltime_sq = walltime_sq + NEW.walltime * NEW.walltime,
        walltime_err_sum = walltime_err_sum + NEW.walltime_err,
        n = n + 1;

CREATE TRIGGER task_summary_update_old AFTER UPDATE ON task FOR EACH ROW
    UPDATE task_summary SET
        walltime_min = CASE WHEN n = 1 THEN NULL ELSE walltime_min END,
        walltime_max = CASE WHEN n = 1 THEN NULL ELSE walltime_max END,
        walltime_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_sum - OLD.walltime END,
        walltime_sq = CASE WHEN n = 1 THEN 0 ELSE walltime_sq - OLD.walltime * OLD.walltime END,
        walltime_err_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_err_sum - OLD.walltime_err END,
        n = n - 1
    WHERE dataset_id = OLD.dataset_id AND task_index = OLD.task_index AND status = OLD.status
        AND (OLD.status <> NEW.status OR OLD.walltime <> NEW.walltime OR OLD.walltime_err <> NEW.walltime_err);

CREATE TRIGGER task_summary_update_new AFTER UPDATE ON task FOR EACH ROW FOLLOWS task_summary_update_old
    INSERT INTO task_summary (dataset_id, task_index, status, n, walltime_sum, walltime_sq, walltime_min, walltime_max, walltime_err_sum)
    SELECT NEW.dataset_id, NEW.task_index, NEW.status, 1, NEW.walltime, NEW.walltime * NEW.walltime, NEW.walltime, NEW.walltime, NEW.walltime_err
    FROM DUAL WHERE OLD.status <> NEW.status OR OLD.walltime <> NEW.walltime OR OLD.walltime_err <> NEW.walltime_err
    ON DUPLICATE KEY UPDATE
        walltime_min = LEAST(coalesce(walltime_min, NEW.walltime), NEW.walltime),
        walltime_max = GREATEST(coalesce(walltime_max, NEW.walltime), NEW.walltime),
        walltime_sum = walltime_sum + NEW.walltime,
        walltime_sq = walltime_sq + NEW.walltime * NEW.walltime,
        walltime_err_sum = walltime_err_sum + NEW.walltime_err,
        n = n + 1;

CREATE TRIGGER task_summary_delete AFTER DELETE ON task FOR EACH ROW
    UPDATE task_summary SET
        walltime_min = CASE WHEN n = 1 THEN NULL ELSE walltime_min END,
        walltime_max = CASE WHEN n = 1 THEN NULL ELSE walltime_max END,
        walltime_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_sum - OLD.walltime END,
        walltime_sq = CASE WHEN n = 1 THEN 0 ELSE walltime_sq - OLD.walltime * OLD.walltime END,
        walltime_err_sum = CASE WHEN n = 1 THEN 0 ELSE walltime_err_sum - OLD.walltime_err END,
        n = n - 1
    WHERE dataset_id = OLD.dataset_id AND task_index = OLD.task_index AND status = OLD.status;

-- a dataset that leaves (archived) leaves no empty rows behind
CREATE TRIGGER task_summary_delete_empty AFTER DELETE ON task FOR EACH ROW FOLLOWS task_summary_delete
    DELETE FROM task_summary WHERE dataset_id = OLD.dataset_id AND task_index = OLD.task_index AND n = 0;

CREATE TABLE job_summary (
    dataset_id VARCHAR(255) NOT NULL,
    status     VARCHAR(255) NOT NULL,
    n          BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO job_summary (dataset_id, status, n)
    SELECT dataset_id, status, count(*) FROM job GROUP BY dataset_id, status;

CREATE TRIGGER job_summary_insert AFTER INSERT ON job FOR EACH ROW
    INSERT INTO job_summary (dataset_id, status, n) VALUES (NEW.dataset_id, NEW.status, 1)
    ON DUPLICATE KEY UPDATE n = n + 1;

CREATE TRIGGER job_summary_update_old AFTER UPDATE ON job FOR EACH ROW
    UPDATE job_summary SET n = n - 1
    WHERE dataset_id = OLD.dataset_id AND status = OLD.status AND OLD.status <> NEW.status;

CREATE TRIGGER job_summary_update_new AFTER UPDATE ON job FOR EACH ROW FOLLOWS job_summary_update_old
    INSERT INTO job_summary (dataset_id, status, n)
    SELECT NEW.dataset_id, NEW.status, 1 FROM DUAL WHERE OLD.status <> NEW.status
    ON DUPLICATE KEY UPDATE n = n + 1;

CREATE TRIGGER job_summary_delete AFTER DELETE ON job FOR EACH ROW
    UPDATE job_summary SET n = n - 1 WHERE dataset_id = OLD.dataset_id AND status = OLD.status;

CREATE TRIGGER job_summary_delete_empty AFTER DELETE ON job FOR EACH ROW FOLLOWS job_summary_delete
    DELETE FROM job_summary WHERE dataset_id = OLD.dataset_id AND n = 0;
"#;

/// The site this database belongs to (`site.rs`; docs/operations.md, "One server per database"): one row, written at the first
/// start (generated, pinned by `[site] id`, or adopted from an older server's
/// `STATE_DIR/site_id`) and never changed, so a second server on the same database cannot
/// take a new id. `singleton` is always 1: the primary key keeps the row alone.
const SQLITE_V6: &str = r#"
CREATE TABLE this_site (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    site_id   TEXT NOT NULL,
    since     TEXT NOT NULL
);
"#;

const MYSQL_V6: &str = r#"
CREATE TABLE this_site (
    singleton BIGINT PRIMARY KEY CHECK (singleton = 1),
    site_id   VARCHAR(255) NOT NULL,
    since     VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
"#;

/// Why a dataset is in its state when the server put it there (`status_reason`): buffering
/// suspends a dataset whose jobs cannot be created and says why here, for the dataset page
/// and `get_dataset`; a person's suspend, resume, reset or truncate clears it. The archive
/// copy has it too (`archive.rs` copies every column).
const SQLITE_V7: &str = r#"
ALTER TABLE dataset ADD COLUMN status_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE archive_dataset ADD COLUMN status_reason TEXT NOT NULL DEFAULT '';
"#;

const MYSQL_V7: &str = r#"
ALTER TABLE dataset ADD COLUMN status_reason MEDIUMTEXT NOT NULL DEFAULT ('');
ALTER TABLE archive_dataset ADD COLUMN status_reason MEDIUMTEXT NOT NULL DEFAULT ('');
"#;

/// The statements of a MySQL migration, one at a time, so a failure names the statement.
/// Splits at `;` outside quotes; `--` comments are dropped (the schema's comments contain no
/// quotes or semicolons that matter, and a `;` inside a comment would otherwise split).
pub fn mysql_statements(migration: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in migration.lines() {
        let mut quote: Option<char> = None;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some(q) => {
                    current.push(c);
                    if c == q {
                        quote = None;
                    }
                }
                None if c == '-' && chars.peek() == Some(&'-') => break,
                None if c == ';' => {
                    let statement = current.trim();
                    if !statement.is_empty() {
                        statements.push(statement.to_string());
                    }
                    current.clear();
                }
                None => {
                    if matches!(c, '\'' | '"' | '`') {
                        quote = Some(c);
                    }
                    current.push(c);
                }
            }
        }
        current.push('\n');
    }
    let rest = current.trim();
    if !rest.is_empty() {
        statements.push(rest.to_string());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `CREATE TABLE name` and `CREATE [UNIQUE] INDEX name ON table (columns)` of a text,
    /// normalised (backquotes dropped), to compare the dialects' shapes.
    fn objects(sql: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for statement in mysql_statements(sql) {
            let words: Vec<&str> = statement.split_whitespace().collect();
            let clean = |w: &str| w.trim_matches('`').to_string();
            match words.as_slice() {
                ["CREATE", "TABLE", name, ..] => {
                    out.insert(format!("table {}", clean(name)));
                }
                ["CREATE", "INDEX", name, "ON", table, rest @ ..]
                | ["CREATE", "UNIQUE", "INDEX", name, "ON", table, rest @ ..] => {
                    let unique = words[1] == "UNIQUE";
                    out.insert(format!(
                        "index {} on {} {} unique={unique}",
                        clean(name),
                        clean(table),
                        rest.join(" ")
                    ));
                }
                _ => {}
            }
        }
        out
    }

    /// Column names per table: the first word of each line inside `CREATE TABLE (…)`.
    fn columns(sql: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for statement in mysql_statements(sql) {
            let Some(rest) = statement.strip_prefix("CREATE TABLE ") else {
                continue;
            };
            let table = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('`');
            for line in statement.lines().skip(1) {
                let word = line.split_whitespace().next().unwrap_or("");
                if !word.is_empty() && !word.starts_with(')') {
                    out.insert(format!("{table}.{}", word.trim_matches('`')));
                }
            }
        }
        out
    }

    #[test]
    fn both_dialects_create_the_same_tables_indexes_and_columns() {
        for m in MIGRATIONS {
            assert_eq!(
                objects(m.sqlite),
                objects(m.mysql),
                "migration {}",
                m.version
            );
            assert_eq!(
                columns(m.sqlite),
                columns(m.mysql),
                "migration {}",
                m.version
            );
        }
        // The comparison found what is there (a parser that sees nothing would agree too).
        let found = objects(SQLITE_V1);
        let tables = found.iter().filter(|o| o.starts_with("table ")).count();
        assert!(tables >= 20 && found.len() - tables >= 20, "{found:?}");
    }

    #[test]
    fn both_dialects_seed_the_same_rows() {
        let inserts = |sql: &str| -> Vec<String> {
            mysql_statements(sql)
                .into_iter()
                // Trigger bodies (`NEW.`) are written per dialect; seed rows and backfills
                // are the same text in both.
                .filter(|s| s.starts_with("INSERT") && !s.contains("NEW."))
                .collect()
        };
        for m in MIGRATIONS {
            assert_eq!(
                inserts(m.sqlite),
                inserts(m.mysql),
                "migration {}",
                m.version
            );
        }
    }

    #[test]
    fn versions_count_up_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(newest_version() as usize, MIGRATIONS.len());
    }

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let sql = "CREATE TABLE a (x TEXT DEFAULT ';'); -- a comment; with a semicolon\n\
                   INSERT INTO a VALUES ('it''s; fine');\nSELECT `odd;name` FROM a";
        assert_eq!(
            mysql_statements(sql),
            [
                "CREATE TABLE a (x TEXT DEFAULT ';')",
                "INSERT INTO a VALUES ('it''s; fine')",
                "SELECT `odd;name` FROM a"
            ]
        );
    }
}
