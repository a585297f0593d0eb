//! The website through a real headless Chromium against the real binary: a person logs in,
//! submits the example dataset through the editor (seeing live validation of a broken
//! config first), watches the dataset page reach complete on the local grid, resets a task
//! and sees it run again; a screenshot of the dataset page is kept as a test artifact. The
//! pages are also loaded once each to check they raise no JavaScript errors.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::{Chromium, PAGE};
use common::grids::{queue_config, shell_dataset, states, submit, tail, value};
use common::{binary, Server};
use serde_json::Value;

/// A dataset of the example running to complete, or a reset task running again, on a loaded
/// machine.
const RUN: Duration = Duration::from_secs(120);

const PASSWORD: &str = "correct horse battery staple";

fn example_text() -> String {
    common::example_text("two-tasks.json")
}

/// The example with a string where the first tray's module list belongs: valid JSON, a
/// config of the wrong shape, one error at a known path.
fn mistyped_example() -> String {
    let mut config: Value = serde_json::from_str(&example_text()).unwrap();
    config["tasks"][0]["trays"][0]["modules"] = Value::from("not a list");
    serde_json::to_string_pretty(&config).unwrap()
}

const MISTYPED_PATH: &str = "tasks[0].trays[0].modules";

/// The example with a number as the first module's arguments: the right types for serde,
/// refused by the rules of SPEC §3 (module args are a string, a list or an object).
fn rule_breaking_example() -> String {
    let mut config: Value = serde_json::from_str(&example_text()).unwrap();
    config["tasks"][0]["trays"][0]["modules"][0]["args"] = Value::from(5);
    serde_json::to_string_pretty(&config).unwrap()
}

const RULE_PATH: &str = "tasks[0].trays[0].modules[0].args";

/// Two local grids, so picking one in the form is a real choice; the queue and the dataset
/// completion job every second (`queue_config`), graphs every two seconds; a task fails for
/// good at its first error.
fn site() -> Server {
    let config = queue_config(
        "max_resets = 1",
        "[queue.grids.local]\ntype = \"local\"\nmax_running = 2\n\n\
         [queue.grids.spare]\ntype = \"local\"\nmax_running = 1\n",
    );
    // Graph rows every few seconds, so the dataset page's progress graph has points.
    Server::start(&format!(
        "{config}\n[schedule.jobs.graphs]\nevery = \"2s\"\ntarget = \"db\"\nmessage = \"graphs\"\n"
    ))
}

/// `iceprod user add NAME --password-stdin --config F` against the server's config.
fn add_user(server: &Server, name: &str, password: &str) {
    let mut child = Command::new(binary())
        .args(["user", "add", name, "--password-stdin", "--config"])
        .arg(server.config_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iceprod user add");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iceprod user add {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pastes `config` into the editor of the submit page and waits for the live message that
/// names `path`, checking the page was not left (nor the form sent) to get it.
fn expect_live_error(browser: &Chromium, config: &str, path: &str) {
    browser.eval("(window.__iceprod_editing = true)");
    browser.paste_into("#config", config);
    let message = browser.wait_text(
        "#validation",
        &format!("a message naming {path}"),
        PAGE,
        |t| t.contains(path),
    );
    assert_eq!(
        browser.eval("window.__iceprod_editing === true"),
        Value::Bool(true),
        "validating left the page (it should run live, without submitting): {message}"
    );
    assert_eq!(browser.path(), "/submit");
}

/// On the submit page (its config already in the editor): picks the grid named `grid`,
/// fills in the jobs and description, sends the form and checks it landed on /dataset/N.
/// Answers the gridspec picked.
fn send_submit_form(browser: &Chromium, grid: &str, njobs: u32, description: &str) -> String {
    let grids =
        browser.eval("Array.from(document.querySelectorAll('#gridspec option')).map(o => o.value)");
    let names: Vec<&str> = grids
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let suffix = format!(".{grid}");
    let gridspec = names
        .iter()
        .find(|g| g.ends_with(&suffix))
        .unwrap_or_else(|| panic!("no grid {grid} among the choices {grids}"))
        .to_string();
    assert!(
        names.iter().any(|g| g.ends_with(".spare")),
        "every grid of the site is offered: {grids}"
    );
    browser.set_value("#gridspec", &gridspec);
    browser.type_into("#njobs", &njobs.to_string());
    browser.type_into("#description", description);
    browser.assert_no_js_errors();
    browser.click_and_wait_page("#submit-dataset");
    let page = browser.path();
    assert!(
        page.strip_prefix("/dataset/")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())),
        "a submit lands on /dataset/N, not {page}\n{}",
        browser.dump()
    );
    gridspec
}

/// Fills in the login form on the current page and sends it.
fn log_in(browser: &Chromium, name: &str, password: &str) {
    browser.wait_for("#login-form", PAGE);
    browser.type_into("#username", name);
    browser.type_into("#password", password);
    browser.click_and_wait_page("#login-submit");
}

fn logged_in_user(browser: &Chromium) -> Option<String> {
    browser.text("#user")
}

/// Checks that `path` is a real, non-trivial PNG: the signature, and an IHDR of a page-sized
/// image.
fn assert_png(path: &std::path::Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(
        width >= 400 && height >= 300 && bytes.len() > 10_000,
        "{}: a {width}x{height} PNG of {} bytes is no page",
        path.display(),
        bytes.len()
    );
}

#[test]
fn a_person_submits_the_example_watches_it_complete_and_resets_a_task() {
    let server = site();
    add_user(&server, "alice", PASSWORD);
    let Some(browser) = Chromium::launch(server.port) else {
        return;
    };

    // A wrong password: the login page again with its error, nobody logged in.
    browser.goto("/login");
    assert!(browser.text("#login-link").is_some(), "{}", browser.dump());
    log_in(&browser, "alice", "not her password");
    browser.wait_for("p.error", PAGE);
    assert!(browser.path().starts_with("/login"), "{}", browser.path());
    assert_eq!(logged_in_user(&browser), None, "{}", browser.dump());

    // /submit asks for a login first and comes back to the editor after it.
    browser.goto("/submit");
    assert!(browser.path().starts_with("/login"), "{}", browser.path());
    log_in(&browser, "alice", PASSWORD);
    assert_eq!(browser.path(), "/submit", "{}", browser.dump());
    assert_eq!(logged_in_user(&browser).as_deref(), Some("alice"));
    browser.wait_for("#submit-form #config", PAGE);
    let prefilled = browser.eval("document.getElementById('config').value");
    assert!(
        prefilled.as_str().is_some_and(|s| s.contains("tasks")),
        "the editor starts from an example: {prefilled}"
    );
    browser.assert_no_js_errors();

    // A broken config: the message naming the path shows up while editing, on this page.
    expect_live_error(&browser, &mistyped_example(), MISTYPED_PATH);
    assert_eq!(value::<i64>(&server, "SELECT count(*) FROM dataset"), 0);

    // The valid example again, on the local grid, two jobs.
    browser.paste_into("#config", &example_text());
    browser.wait_text("#validation", "clear of the old error", PAGE, |t| {
        !t.contains(MISTYPED_PATH)
    });
    let gridspec = send_submit_form(&browser, "local", 2, "submitted from Chromium");
    let dataset: String = value(
        &server,
        "SELECT dataset_id FROM dataset WHERE username = 'alice'",
    );
    let field = |name: &str| {
        value::<String>(
            &server,
            &format!("SELECT CAST({name} AS TEXT) FROM dataset WHERE dataset_id = '{dataset}'"),
        )
    };
    assert_eq!(field("gridspec"), gridspec);
    assert_eq!(field("description"), "submitted from Chromium");
    assert_eq!(field("jobs_submitted"), "2");

    // The dataset page, reloaded like a person would, until the local grid has run it all.
    browser.reload_until("#dataset-status", "complete", RUN, |t| t == "complete");
    let progress: String = browser
        .text("#progress")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(
        progress.contains("4/4"),
        "the progress bar says 4 of 4 tasks: {progress:?}\n{:?}",
        states(&server, &dataset)
    );
    let names = browser.text("#task-names").unwrap_or_default();
    assert!(
        names.contains("generate") && names.contains("filter"),
        "one row per task name: {names:?}"
    );
    browser.assert_no_js_errors();
    let shot = browser.screenshot("dataset-page.png");
    assert_png(&shot);

    // The task list from the dataset page's count link, then one task with its logs.
    browser.click_and_wait_page("#task-counts a[href*='status=complete']");
    browser.wait_for("#tasks tr.task a.task-link", PAGE);
    let rows = browser.eval("document.querySelectorAll('#tasks tr.task').length");
    assert_eq!(rows, Value::from(4), "{}", browser.dump());
    browser.assert_no_js_errors();
    browser.click_and_wait_page("#tasks tr.task a.task-link");
    assert!(browser.path().starts_with("/task/"), "{}", browser.path());
    assert_eq!(browser.text("#task-status").as_deref(), Some("complete"));
    browser.wait_for("pre.log-tail[data-name='stdlog']", PAGE);
    browser.assert_no_js_errors();

    // A task that fails until its cause is fixed: it fails (max_resets = 1), the person
    // fixes the cause, resets it from its page, and it runs again to complete.
    let fix = server.dir.path().join("fixed");
    let script = format!(
        "test -f '{}' || {{ echo not fixed yet >&2; exit 3; }}",
        fix.display()
    );
    browser.goto("/submit");
    browser.paste_into(
        "#config",
        &serde_json::to_string_pretty(&shell_dataset("flaky", &script)).unwrap(),
    );
    browser.wait_text("#validation", "checked", PAGE, |t| !t.is_empty());
    send_submit_form(&browser, "local", 1, "fails until fixed");
    let flaky_page = browser.path();
    let flaky: String = value(
        &server,
        "SELECT dataset_id FROM dataset WHERE description = 'fails until fixed'",
    );
    browser.reload_until(
        "#task-counts a[href*='status=failed']",
        "a link to the failed task",
        RUN,
        |_| true,
    );
    browser.click_and_wait_page("#task-counts a[href*='status=failed']");
    browser.click_and_wait_page("#tasks tr.task a.task-link");
    let task_page = browser.path();
    let task = task_page
        .strip_prefix("/task/")
        .unwrap_or_else(|| panic!("a task link opens /task/ID, not {task_page}"))
        .to_string();
    assert_eq!(browser.text("#task-status").as_deref(), Some("failed"));
    let stderr = browser
        .text("pre.log-tail[data-name='stderr']")
        .unwrap_or_default();
    assert!(
        stderr.contains("not fixed yet"),
        "the task page shows the tail of the failed run's stderr: {stderr:?}\n{}",
        browser.dump()
    );
    browser.assert_no_js_errors();

    std::fs::write(&fix, "").unwrap();
    browser.click_and_wait_page("#task-actions button[name='action'][value='reset']");
    assert_eq!(
        browser.text("p.error"),
        None,
        "the reset was refused\n{}",
        browser.dump()
    );
    if browser.path() != task_page {
        browser.goto(&task_page);
    }
    let after_reset = browser.text("#task-status").unwrap_or_default();
    assert_ne!(after_reset, "failed", "{}", browser.dump());
    browser.reload_until("#task-status", "complete after the reset", RUN, |t| {
        t == "complete"
    });
    browser.assert_no_js_errors();
    let task_value = |column: &str| {
        value::<i64>(
            &server,
            &format!("SELECT {column} FROM task WHERE task_id = '{task}'"),
        )
    };
    assert_eq!(
        task_value("failures"),
        0,
        "a manual reset clears the failures"
    );
    assert_eq!(
        value::<i64>(
            &server,
            &format!("SELECT count(*) FROM task_stat WHERE task_id = '{task}'")
        ),
        2,
        "one failed run, one good run\n{}",
        tail(&server.log(), 40)
    );
    // With its only task complete, the dataset completes too.
    browser.goto(&flaky_page);
    browser.reload_until("#dataset-status", "complete", RUN, |t| t == "complete");
    assert_eq!(
        states(&server, &flaky).get("complete").copied(),
        Some(1),
        "{:?}",
        states(&server, &flaky)
    );
}

#[test]
fn the_editor_reports_a_broken_rule_live_as_the_submit_would() {
    let server = Server::start("");
    add_user(&server, "carol", PASSWORD);
    let Some(browser) = Chromium::launch(server.port) else {
        return;
    };
    browser.goto("/submit");
    log_in(&browser, "carol", PASSWORD);
    assert_eq!(browser.path(), "/submit", "{}", browser.dump());
    expect_live_error(&browser, &rule_breaking_example(), RULE_PATH);
    // Sent anyway, the server refuses it with the same path.
    browser.click_and_wait_page("#submit-dataset");
    browser.wait_text("#validation", &format!("naming {RULE_PATH}"), PAGE, |t| {
        t.contains(RULE_PATH)
    });
    assert_eq!(value::<i64>(&server, "SELECT count(*) FROM dataset"), 0);
    browser.assert_no_js_errors();
}

#[test]
fn the_pages_raise_no_javascript_errors() {
    let server = Server::start("");
    add_user(&server, "bob", PASSWORD);
    let Some(browser) = Chromium::launch(server.port) else {
        return;
    };
    let dataset = submit(&server, serde_json::from_str(&example_text()).unwrap(), 1);
    let num: i64 = value(
        &server,
        &format!("SELECT dataset_num FROM dataset WHERE dataset_id = '{dataset}'"),
    );

    browser.goto("/login");
    browser.assert_no_js_errors();
    log_in(&browser, "bob", PASSWORD);
    assert_eq!(logged_in_user(&browser).as_deref(), Some("bob"));
    for page in [
        "/".to_string(),
        "/submit".to_string(),
        format!("/config?dataset_id={dataset}"),
        "/dataset".to_string(),
        format!("/dataset/{num}"),
        "/task".to_string(),
        format!("/task?dataset_id={dataset}"),
        format!("/job?dataset_id={dataset}"),
        "/groups".to_string(),
        "/site".to_string(),
        "/help".to_string(),
    ] {
        browser.goto(&page);
        browser.wait_for("header", PAGE);
        assert_eq!(
            browser.text("p.error"),
            None,
            "{page} is an error page\n{}",
            browser.dump()
        );
        browser.assert_no_js_errors();
    }

    // The 404 page is a page too.
    browser.goto("/dataset/999999");
    browser.wait_for("p.error", PAGE);
    browser.assert_no_js_errors();

    // Logging out from the header.
    browser.goto("/");
    browser.click_and_wait_page("#logout button");
    browser.wait_for("#login-link", PAGE);
    assert_eq!(logged_in_user(&browser), None, "{}", browser.dump());
    browser.assert_no_js_errors();
}

/// The JavaScript-error check above can fail: a page that throws, a script that does not
/// load, a rejected promise and a script the site's Content-Security-Policy blocks are all
/// seen.
#[test]
fn the_error_collector_sees_a_page_that_throws() {
    let server = Server::start("");
    let Some(browser) = Chromium::launch(server.port) else {
        return;
    };
    browser.goto("/healthz");
    browser.assert_no_js_errors();
    browser.eval(
        "(function () { var s = document.createElement('script'); s.src = '/static/missing.js'; \
         document.body.appendChild(s); setTimeout(function () { throw new Error('boom'); }, 0); \
         Promise.reject('nobody caught this'); return true; })()",
    );
    browser.wait_js(
        "three collected errors",
        "window.__iceprod_errors.length >= 3",
        PAGE,
    );
    let errors = browser.js_errors().join("\n");
    assert!(errors.contains("boom"), "{errors}");
    assert!(
        errors.contains("failed to load") && errors.contains("missing.js"),
        "{errors}"
    );
    assert!(errors.contains("nobody caught this"), "{errors}");

    // On a page of the site, an injected inline script is refused by its
    // Content-Security-Policy, and that is seen too.
    browser.goto("/login");
    browser.assert_no_js_errors();
    browser.eval(
        "(function () { var s = document.createElement('script'); \
         s.textContent = 'window.__iceprod_ran = true'; document.body.appendChild(s); \
         return true; })()",
    );
    browser.wait_js(
        "a Content-Security-Policy report",
        "window.__iceprod_errors.some(e => e.includes('Content-Security-Policy'))",
        PAGE,
    );
    assert_eq!(
        browser.eval("window.__iceprod_ran === true"),
        Value::Bool(false)
    );
}
