//! What the db benches (`buffer_jobs`, `db_calls`, `page_queries`) share: the db module under
//! the runtime's `Harness` on a private folder (a copy of an `iceprod-load seed` database, or
//! a new one), calls to it, and the load average their tables print.

#![allow(dead_code)] // each bench uses its own part of this

use std::path::Path;
use std::time::Duration;

use iceprod_db::Db;
use iceprod_runtime::harness::Harness;
use iceprod_runtime::{Config, DbReply, DbRequest, ModuleKind, Reply, Request};

/// The db module on a private folder (site `b`, as the seed pins it, archiving off): on a
/// copy of `seed`'s databases when given, else on new ones. Opening migrates, so a seed
/// written by an older build gets the newer schema here. Keep the folder as long as the
/// harness.
pub fn start_db(seed: Option<&Path>) -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let var = dir.path().join("var");
    std::fs::create_dir_all(&var).expect("the state folder");
    if let Some(seed) = seed {
        for name in ["iceprod.db", "iceprod-archive.db"] {
            std::fs::copy(seed.join("var").join(name), var.join(name))
                .unwrap_or_else(|e| panic!("cannot copy {name} from {}: {e}", seed.display()));
        }
    }
    let config = Config::parse(
        "[site]\nid = \"b\"\nstate_dir = \"var\"\n[db]\npath = \"var/iceprod.db\"\n\
         archive_path = \"var/iceprod-archive.db\"\narchive_after_days = 0\n",
        &dir.path().join("iceprod.toml"),
        &ModuleKind::ALL,
    )
    .expect("the bench config");
    let mut h = Harness::new(config);
    h.start::<Db>().expect("the db module starts");
    (dir, h)
}

/// One db call, waiting up to `timeout`; anything but a db reply ends the bench.
pub fn call(h: &mut Harness, request: DbRequest, timeout: Duration) -> DbReply {
    match h.call(ModuleKind::Db, Request::Db(request), timeout) {
        Ok(Reply::Db(reply)) => reply,
        other => panic!("the db answered {other:?}"),
    }
}

/// The 1-minute load average, for the tables.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
