//! The site id (docs/operations.md, "One server per database"): kept in the database (`iceprod_db::site`), so it belongs to the
//! site's data and not to one server's state folder. Resolved by the controller before any
//! module sees the config (and by `iceprod user`): `[site] id` if pinned (it must match the
//! database's), else the database's, else, at the first start, one offered to the database:
//! an older server's `STATE_DIR/site_id` (adopted, so an existing site keeps its id) or a new
//! random number below 10^10 in base 62. This file chooses the offer; the db crate owns the
//! SQL.

use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use iceprod_runtime::{ids, Config};

/// Where servers before the id moved into the database kept it, under `[site] state_dir`.
const LEGACY_FILE: &str = "site_id";

/// Fills `config.site.id` from the database (storing an id there at the first start).
pub fn resolve(config: &mut Config) -> anyhow::Result<()> {
    let legacy_path = config.site.state_dir.join(LEGACY_FILE);
    let legacy = read_legacy(&legacy_path)?;
    let offer = match &legacy {
        Some(id) => id.clone(),
        None => ids::encode(random_below(10_000_000_000)?),
    };
    let pinned = config.site.id.as_deref();
    let site = iceprod_db::site::claim_site_id(&config.db, pinned, &offer)?;
    let database = iceprod_db::site::database_label(&config.db);
    if site.stored_now {
        let how = match (pinned, &legacy) {
            (Some(_), _) => "pinned by [site] id".to_string(),
            (None, Some(_)) => format!("adopted from {}", legacy_path.display()),
            (None, None) => "generated".to_string(),
        };
        log::info!("site id {} {how}, stored in {database}", site.id);
    } else if let Some(old) = legacy.filter(|old| *old != site.id) {
        log::warn!(
            "{} holds site id {old}, but {database} belongs to site {}; the database's id is \
             used (remove the file)",
            legacy_path.display(),
            site.id
        );
    }
    config.site.id = Some(site.id);
    Ok(())
}

/// The id an older server kept in `path`, if the file is there.
fn read_legacy(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            if ids::decode(id).is_none() {
                anyhow::bail!(
                    "{} holds `{id}`, which is not a base-62 site id; fix or remove it",
                    path.display()
                );
            }
            Ok(Some(id.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn random_below(bound: u128) -> anyhow::Result<u128> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(u128::from_le_bytes(bytes) % bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceprod_runtime::ModuleKind;

    fn config(dir: &Path, text: &str) -> Config {
        std::fs::write(dir.join("iceprod.toml"), text).unwrap();
        Config::load(&dir.join("iceprod.toml"), &ModuleKind::ALL).unwrap()
    }

    #[test]
    fn a_generated_site_id_is_kept_in_the_database_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = config(dir.path(), "");
        resolve(&mut first).unwrap();
        let id = first.site.id.clone().unwrap();
        assert!(ids::decode(&id).unwrap() < 10_000_000_000);
        assert!(!dir.path().join("var/site_id").exists());
        let mut second = config(dir.path(), "");
        resolve(&mut second).unwrap();
        assert_eq!(second.site.id, Some(id));
    }

    #[test]
    fn an_older_servers_site_id_file_is_adopted_and_a_corrupt_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var")).unwrap();
        std::fs::write(dir.path().join("var/site_id"), "not an id!").unwrap();
        let mut corrupt = config(dir.path(), "");
        let e = resolve(&mut corrupt).unwrap_err().to_string();
        assert!(e.contains("site_id"), "{e}");
        std::fs::write(dir.path().join("var/site_id"), "abc\n").unwrap();
        let mut adopted = config(dir.path(), "");
        resolve(&mut adopted).unwrap();
        assert_eq!(adopted.site.id.as_deref(), Some("abc"));
        // The database has it now: the file no longer matters.
        std::fs::remove_file(dir.path().join("var/site_id")).unwrap();
        let mut again = config(dir.path(), "");
        resolve(&mut again).unwrap();
        assert_eq!(again.site.id.as_deref(), Some("abc"));
    }

    #[test]
    fn a_pin_is_stored_in_an_empty_database_and_a_different_pin_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut pinned = config(dir.path(), "[site]\nid = \"abc\"\n");
        resolve(&mut pinned).unwrap();
        assert_eq!(pinned.site.id.as_deref(), Some("abc"));
        let mut unpinned = config(dir.path(), "");
        resolve(&mut unpinned).unwrap();
        assert_eq!(unpinned.site.id.as_deref(), Some("abc"));
        let mut other = config(dir.path(), "[site]\nid = \"xyz\"\n");
        let e = resolve(&mut other).unwrap_err().to_string();
        assert!(e.contains("abc") && e.contains("xyz"), "{e}");
    }
}
