//! The site id (SPEC §1): pinned by `[site] id`, or generated once (a random number below
//! 10^10 in base 62) and kept in `STATE_DIR/site_id` so it never changes across restarts.
//! Resolved by the controller before any module sees the config.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context as _;
use iceprod_runtime::{ids, Config};

const FILE_NAME: &str = "site_id";

/// Fills `config.site.id` from the pin, the state file, or a new random id.
pub fn resolve(config: &mut Config) -> anyhow::Result<()> {
    if config.site.id.is_some() {
        return Ok(());
    }
    let dir = &config.site.state_dir;
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if ids::decode(id).is_none() {
                anyhow::bail!(
                    "{} holds `{id}`, which is not a base-62 site id; fix or remove it",
                    path.display()
                );
            }
            config.site.id = Some(id.to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state folder {}", dir.display()))?;
            let id = ids::encode(random_below(10_000_000_000)?);
            write_atomically(&path, &id)?;
            log::info!("generated site id {id} ({})", path.display());
            config.site.id = Some(id);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    Ok(())
}

fn random_below(bound: u128) -> anyhow::Result<u128> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(u128::from_le_bytes(bytes) % bound)
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
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
    fn a_generated_site_id_is_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = config(dir.path(), "");
        resolve(&mut first).unwrap();
        let id = first.site.id.clone().unwrap();
        assert!(ids::decode(&id).unwrap() < 10_000_000_000);
        let mut second = config(dir.path(), "");
        resolve(&mut second).unwrap();
        assert_eq!(second.site.id, Some(id));
    }

    #[test]
    fn a_pinned_site_id_wins_and_a_corrupt_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut pinned = config(dir.path(), "[site]\nid = \"abc\"\n");
        resolve(&mut pinned).unwrap();
        assert_eq!(pinned.site.id.as_deref(), Some("abc"));
        std::fs::create_dir_all(dir.path().join("var")).unwrap();
        std::fs::write(dir.path().join("var/site_id"), "not an id!").unwrap();
        let mut corrupt = config(dir.path(), "");
        let e = resolve(&mut corrupt).unwrap_err().to_string();
        assert!(e.contains("site_id"), "{e}");
    }
}
