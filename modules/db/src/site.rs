//! The site this database belongs to (docs/operations.md, "One server per database"): the one row of `this_site` (schema migration
//! 6). The first start stores an id and every later start reads it, so the id lives with the
//! site's data, not in a server's state folder; a pin (`[site] id`) that differs from the
//! stored id is refused, because a database belongs to one site. Which id to offer an empty
//! database (the pin, an older server's `STATE_DIR/site_id`, or a new random one) is the
//! caller's choice; this file only reads and writes the row.

use iceprod_runtime::config::{DbBackend, DbConfig};

use crate::args;
use crate::error::DbError;
use crate::mysql_store::MysqlServer;
use crate::sql::{Backend, Tx};
use crate::workers::Access;

/// The site id a database answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteId {
    pub id: String,
    /// Whether this call stored it (the database had none).
    pub stored_now: bool,
}

/// The site id of the database `config` names: the stored one, or else `offer`, stored. With
/// `pinned`, the database must belong to that site (an empty one is given it); another
/// stored id is refused with [`DbError::OtherSite`] naming both. Opens the database as
/// [`crate::transaction`] does, without the server's lock; once an id is stored it only
/// reads, so the controller's reload, which calls this too, never waits for the db's writer.
pub fn claim_site_id(
    config: &DbConfig,
    pinned: Option<&str>,
    offer: &str,
) -> Result<SiteId, DbError> {
    let stored = crate::transaction_for(config, Access::Read, stored)?;
    let site = match stored {
        Some(id) => SiteId {
            id,
            stored_now: false,
        },
        None => crate::transaction(config, |tx| claim(tx, pinned.unwrap_or(offer)))?,
    };
    match pinned {
        Some(pinned) if pinned != site.id => Err(DbError::OtherSite {
            database: database_label(config),
            pinned: pinned.to_string(),
            stored: site.id,
            key: match config.backend {
                DbBackend::Sqlite => "path",
                DbBackend::Mysql => "url",
            },
        }),
        _ => Ok(site),
    }
}

/// In `tx`: stores `offer` if the database has no site id yet, then reads the one it has.
/// The insert goes first and is ignored when a row exists, so two tools claiming at once
/// both end up with the id that was stored first.
pub fn claim(tx: &mut dyn Tx, offer: &str) -> Result<SiteId, DbError> {
    let insert = match tx.backend() {
        Backend::Sqlite => "INSERT OR IGNORE",
        Backend::Mysql => "INSERT IGNORE",
    };
    let stored_now = tx.exec(
        &format!("{insert} INTO this_site (singleton, site_id, since) VALUES (1, ?, ?)"),
        args![offer, crate::ops::now()],
    )? == 1;
    let id = stored(tx)?
        .ok_or_else(|| DbError::Schema("this_site has no row after its insert".into()))?;
    Ok(SiteId { id, stored_now })
}

/// The stored site id, if the database has one yet.
pub fn stored(tx: &mut dyn Tx) -> Result<Option<String>, DbError> {
    tx.query_opt("SELECT site_id FROM this_site WHERE singleton = 1", &[])?
        .map(|row| row.text(0))
        .transpose()
}

/// The database as messages name it: the SQLite file, or `host:port/database`.
pub fn database_label(config: &DbConfig) -> String {
    match config.backend {
        DbBackend::Sqlite => config.path.display().to_string(),
        DbBackend::Mysql => MysqlServer::from_config(config)
            .map(|s| s.label().to_string())
            .unwrap_or_else(|_| "(db.url)".into()),
    }
}
