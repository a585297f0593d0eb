//! `iceprod user add|passwd|list`: the website's accounts from the shell (SPEC §7). These open
//! the configured database themselves, as the server does, so they work whether the server
//! runs or not (SQLite in WAL mode takes one writer at a time and the others wait their turn;
//! MariaDB is a server). Whoever may run them may read the database anyway, so they need no
//! login. A password is hashed before the database is opened, so no lock is held meanwhile.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use iceprod_db::accounts;
use iceprod_runtime::Config;

#[derive(Subcommand)]
pub enum UserAction {
    /// Create a user. Without --password-stdin a random password is made and printed once.
    Add {
        /// The username: letters, digits, '.', '_', '-' or '@'.
        name: String,
        /// Make the user an admin (acts on every dataset, manages users and groups).
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input instead.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password; their website sessions end. Without --password-stdin a random
    /// password is made and printed once.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input instead.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users with their roles and last login.
    List,
}

pub fn main(mut config: Config, action: UserAction) -> anyhow::Result<ExitCode> {
    // Ids minted here carry the site's number, as the server's do.
    crate::site_id::resolve(&mut config)?;
    let rules = iceprod_db::rules_of(&config);
    match action {
        UserAction::Add {
            name,
            admin,
            password_stdin,
        } => {
            accounts::check_username(&name)?;
            let (password, generated) = password(password_stdin)?;
            let hash = accounts::hash_password(&password)?;
            iceprod_db::transaction(&config.db, |tx| {
                accounts::add_user(tx, rules, &name, &hash, admin)
            })?;
            let kind = if admin { "admin" } else { "user" };
            println!("created {kind} {name}");
            if generated {
                print_once(&name, &password);
            }
        }
        UserAction::Passwd {
            name,
            password_stdin,
        } => {
            let (password, generated) = password(password_stdin)?;
            let hash = accounts::hash_password(&password)?;
            iceprod_db::transaction(&config.db, |tx| {
                accounts::set_password_hash(tx, &name, &hash, None)
            })?;
            println!("set the password of {name}; their website sessions ended");
            if generated {
                print_once(&name, &password);
            }
        }
        UserAction::List => {
            let users = iceprod_db::transaction(&config.db, accounts::list_users)?;
            println!("{:<24} {:<12} last login", "username", "roles");
            for user in users {
                println!(
                    "{:<24} {:<12} {}",
                    user.username,
                    user.roles.join(","),
                    user.last_login_time.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The password to set, and whether it was generated here (and so must be shown).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((accounts::random_password()?, true));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    accounts::check_password(password)?;
    Ok((password.to_string(), false))
}

fn print_once(name: &str, password: &str) {
    println!("password: {password}");
    println!("(shown once; change it with `iceprod user passwd {name}`)");
}

/// Loads the config as the server would, for the database settings.
pub fn load_config(file: &Path, modules: &[iceprod_runtime::ModuleKind]) -> anyhow::Result<Config> {
    Config::load(file, modules).with_context(|| format!("cannot use the config {}", file.display()))
}
