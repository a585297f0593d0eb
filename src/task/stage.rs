//! Moving files in and out of a task's folder: inputs before the modules run, outputs after,
//! and module scripts given as URLs. `http://` and `https://` (verified against the site CA
//! when one is given) go through the worker's one HTTP agent, GET to download and PUT to
//! upload; `file://` URLs and plain paths are copied. GridFTP is not in this build. Every error
//! is one line naming the URL, ready to be a task's error summary.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use iceprod_runtime::dataset::{expand, Data, Env};

/// Where a URL points, as far as moving bytes is concerned.
#[derive(Debug, PartialEq)]
pub enum Location {
    Http(String),
    File(PathBuf),
    GridFtp,
    Unsupported(String),
}

/// Reads `url`: `http(s)://…`, `file://PATH`, `gsiftp://…`, or a plain path (relative ones are
/// relative to `folder`).
pub fn location(url: &str, folder: &Path) -> Location {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https") => Location::Http(url.to_string()),
        Some("file") => Location::File(folder.join(&url["file://".len()..])),
        Some("gsiftp") => Location::GridFtp,
        Some(other) => Location::Unsupported(other.to_string()),
        None => Location::File(folder.join(url)),
    }
}

/// True when `src` names something to download rather than a path.
pub fn is_url(src: &str) -> bool {
    src.contains("://")
}

/// The file name a URL or path ends in.
pub fn file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("")
}

/// Copies `url` to `dest`; the number of bytes.
pub fn download(agent: &ureq::Agent, url: &str, folder: &Path, dest: &Path) -> Result<u64, String> {
    let result = match location(url, folder) {
        Location::Http(url) => http_get(agent, &url, dest),
        Location::File(path) if path == dest => Ok(0),
        Location::File(path) => std::fs::copy(&path, dest).map_err(|e| describe(&e)),
        Location::GridFtp => return Err(format!("{url}: GridFTP needs the gridftp build")),
        Location::Unsupported(s) => return Err(format!("{url}: unsupported scheme {s}://")),
    };
    result.map_err(|why| {
        let _ = std::fs::remove_file(dest);
        format!("{url}: {why}")
    })
}

/// Copies `src` to `url`; the number of bytes.
pub fn upload(agent: &ureq::Agent, src: &Path, url: &str, folder: &Path) -> Result<u64, String> {
    let mut file = File::open(src).map_err(|e| format!("{}: {}", src.display(), describe(&e)))?;
    let result = match location(url, folder) {
        Location::Http(url) => http_put(agent, &url, &mut file),
        Location::File(path) => copy_to(&mut file, &path),
        Location::GridFtp => Err("GridFTP needs the gridftp build".into()),
        Location::Unsupported(s) => Err(format!("unsupported scheme {s}://")),
    };
    result.map_err(|why| format!("{url}: {why}"))
}

fn http_get(agent: &ureq::Agent, url: &str, dest: &Path) -> Result<u64, String> {
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    if status >= 300 {
        return Err(format!("HTTP {status}"));
    }
    let mut out = File::create(dest).map_err(|e| describe(&e))?;
    io::copy(&mut response.body_mut().as_reader(), &mut out).map_err(|e| describe(&e))
}

fn http_put(agent: &ureq::Agent, url: &str, file: &mut File) -> Result<u64, String> {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let response = agent
        .put(url)
        .header("Content-Length", size.to_string())
        .send(ureq::SendBody::from_reader(file))
        .map_err(|e| e.to_string())?;
    match response.status().as_u16() {
        s if s < 300 => Ok(size),
        s => Err(format!("HTTP {s}")),
    }
}

fn copy_to(file: &mut File, path: &Path) -> Result<u64, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| describe(&e))?;
    }
    let mut out = File::create(path).map_err(|e| describe(&e))?;
    io::copy(file, &mut out).map_err(|e| describe(&e))
}

/// An io error as a person reads it, without Rust's `(os error 2)` noise.
pub fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "not found".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// One data entry with its expressions expanded: the URL and the file in the task folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub remote: String,
    pub local: String,
}

/// The transfers of `data` that move the way `wanted` says (`is_input` / `is_output`), with
/// `remote` and `local` expanded in `env`; entries without a remote URL (temporary files this
/// site has no store for) are skipped.
pub fn transfers(
    data: &[Data],
    env: &Env,
    wanted: fn(&iceprod_runtime::dataset::Movement) -> bool,
) -> Result<Vec<Transfer>, String> {
    let mut out = Vec::new();
    for d in data.iter().filter(|d| wanted(&d.movement)) {
        let remote = expand(&d.remote, env).map_err(|e| format!("data {}: {e}", d.remote))?;
        if remote.is_empty() {
            continue;
        }
        let local = expand(&d.local, env).map_err(|e| format!("data {}: {e}", d.local))?;
        let local = if local.is_empty() {
            file_name(&remote).to_string()
        } else {
            local
        };
        out.push(Transfer { remote, local });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart() {
        let folder = Path::new("/task");
        assert_eq!(
            location("https://h/x.dat", folder),
            Location::Http("https://h/x.dat".into())
        );
        assert_eq!(
            location("file:///data/x.dat", folder),
            Location::File("/data/x.dat".into())
        );
        assert_eq!(
            location("in/x.dat", folder),
            Location::File("/task/in/x.dat".into())
        );
        assert_eq!(location("gsiftp://h/x", folder), Location::GridFtp);
        assert_eq!(
            location("s3://b/x", folder),
            Location::Unsupported("s3".into())
        );
    }

    #[test]
    fn a_gridftp_input_says_it_needs_the_gridftp_build() {
        let agent = crate::client::http_agent(std::time::Duration::from_secs(1), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = download(&agent, "gsiftp://h/x", dir.path(), &dir.path().join("x")).unwrap_err();
        assert_eq!(err, "gsiftp://h/x: GridFTP needs the gridftp build");
    }

    #[test]
    fn the_file_name_of_a_url_drops_queries() {
        assert_eq!(file_name("http://h/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(file_name("gen.sh"), "gen.sh");
    }
}
