//! A real headless Chromium (Debian's `chromium`) for the browser tests, driven over the
//! DevTools protocol by the synchronous `headless_chrome` crate: launch with a fresh profile,
//! navigate, type, click, bounded waits on elements and text that print the page when they
//! give up, the JavaScript errors a page raised, and screenshots into the artifact folder.
//!
//! Without a browser the tests say so and pass, unless `ICEPROD_REQUIRE_CHROMIUM=1` (set by
//! `scripts/test-all.sh`) makes them fail.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

/// One page load or form answer on a loaded 2-core machine, with room to spare.
pub const PAGE: Duration = Duration::from_secs(60);

/// The flags of TESTING.md besides `--headless`, `--no-sandbox` and `--disable-gpu`, which
/// `LaunchOptions` adds itself (headless, sandbox off, gpu off).
const FLAGS: [&str; 6] = [
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
];

/// Runs before any script of every document: collects uncaught errors, rejected promises,
/// resources that failed to load (the capture phase sees those) and whatever the page's
/// Content-Security-Policy blocked into `window.__iceprod_errors`.
const ERROR_COLLECTOR: &str = r#"
window.__iceprod_errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) {
    window.__iceprod_errors.push('failed to load ' + (t.src || t.href));
  } else {
    window.__iceprod_errors.push(String(e.message) + ' at ' + e.filename + ':' + e.lineno);
  }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__iceprod_errors.push('unhandled rejection: ' + String(e.reason));
});
document.addEventListener('securitypolicyviolation', function (e) {
  window.__iceprod_errors.push('Content-Security-Policy blocked ' + e.blockedURI + ' (' +
    e.violatedDirective + ')');
});
"#;

/// The Chromium binary: `ICEPROD_TEST_CHROMIUM`, else `chromium` (Debian's name) on the PATH.
fn chromium_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ICEPROD_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// The folder for files a test leaves for people to look at (screenshots): next to the
/// test binaries' scratch folder, `target/test-artifacts/`.
pub fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("CARGO_TARGET_TMPDIR is inside the target folder")
                .to_path_buf()
        });
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifact folder");
    dir
}

/// A headless Chromium with one tab, pointed at a server on `127.0.0.1:port`. Dropping it
/// ends the browser and removes its profile.
pub struct Chromium {
    pub tab: Arc<Tab>,
    base: String,
    // Field order: the browser (and its process) goes before its profile folder, and both
    // before the turn is passed on.
    _browser: Browser,
    _profile: tempfile::TempDir,
    _turn: Option<MutexGuard<'static, ()>>,
}

/// Held by the one live [`Chromium`] of this test binary.
static BROWSER_TURN: Mutex<()> = Mutex::new(());

impl Chromium {
    /// Launches the browser, or `None` (after saying why) when there is none and
    /// `ICEPROD_REQUIRE_CHROMIUM` is not `1`.
    pub fn launch(port: u16) -> Option<Chromium> {
        let Some(path) = chromium_path() else {
            assert!(
                std::env::var("ICEPROD_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
                "ICEPROD_REQUIRE_CHROMIUM=1 but no chromium on the PATH \
                 (apt-get install chromium chromium-driver, or set ICEPROD_TEST_CHROMIUM)"
            );
            eprintln!("skipped: no chromium (install Debian's chromium; scripts/test-all.sh does)");
            return None;
        };
        // One browser at a time in this test binary: several Chromiums starting together on a
        // loaded 2-core machine have lost their DevTools connection at start (seen in CI).
        let turn = BROWSER_TURN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut last_error = String::new();
        for attempt in 1..=3 {
            match Chromium::start(&path, port) {
                Ok(mut chromium) => {
                    chromium._turn = Some(turn);
                    return Some(chromium);
                }
                Err(e) => {
                    eprintln!("chromium start {attempt} of 3 failed: {e}");
                    last_error = e;
                }
            }
        }
        panic!("chromium did not start three times: {last_error}");
    }

    fn start(path: &Path, port: u16) -> Result<Chromium, String> {
        let profile = tempfile::tempdir().map_err(|e| format!("profile folder: {e}"))?;
        let options = LaunchOptions {
            headless: true,
            sandbox: false,
            enable_gpu: false,
            path: Some(path.to_path_buf()),
            user_data_dir: Some(profile.path().to_path_buf()),
            window_size: Some((1280, 1024)),
            args: FLAGS.iter().map(OsStr::new).collect(),
            // The test sits in long waits (a dataset running) between page loads.
            idle_browser_timeout: Duration::from_secs(600),
            ..LaunchOptions::default()
        };
        let browser =
            Browser::new(options).map_err(|e| format!("launch {}: {e:#}", path.display()))?;
        let tab = browser.new_tab().map_err(|e| format!("a tab: {e:#}"))?;
        tab.set_default_timeout(PAGE);
        tab.call_method(Page::AddScriptToEvaluateOnNewDocument {
            source: ERROR_COLLECTOR.to_string(),
            world_name: None,
            include_command_line_api: None,
            run_immediately: None,
        })
        .map_err(|e| format!("install the error collector: {e:#}"))?;
        Ok(Chromium {
            tab,
            base: format!("http://127.0.0.1:{port}"),
            _browser: browser,
            _profile: profile,
            _turn: None,
        })
    }

    /// Opens `path` (on the server) and waits until the document has loaded.
    pub fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.tab
            .navigate_to(&url)
            .and_then(|t| t.wait_until_navigated())
            .unwrap_or_else(|e| panic!("open {url}: {e:#}\n{}", self.dump()));
        self.wait_loaded();
    }

    /// Reloads the page (without resubmitting a form) and waits for the new document.
    pub fn reload(&self) {
        let url = self.url();
        self.goto(url.strip_prefix(&self.base).unwrap_or(&url));
    }

    pub fn url(&self) -> String {
        self.eval("location.href")
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.tab.get_url())
    }

    /// The path and query of the current page.
    pub fn path(&self) -> String {
        let url = self.url();
        url.strip_prefix(&self.base).unwrap_or(&url).to_string()
    }

    pub fn html(&self) -> String {
        self.tab
            .get_content()
            .unwrap_or_else(|e| format!("<no content: {e}>"))
    }

    /// The URL, HTML and form field values (the HTML shows only their initial values) of
    /// the page, for failure messages.
    pub fn dump(&self) -> String {
        let fields = self.eval(
            "Array.from(document.querySelectorAll('textarea, input, select'))\
             .filter(e => e.type !== 'password' && e.type !== 'hidden')\
             .map(e => (e.id || e.name) + ' = ' + (e.type === 'checkbox' ? e.checked : e.value))",
        );
        let fields = match fields {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        format!(
            "--- page {}:\n{}\n--- form fields now:\n{fields}\n--- end of page",
            self.tab.get_url(),
            self.html()
        )
    }

    /// Evaluates `expression` in the page; its value as JSON (`Null` for undefined or when
    /// the page threw).
    pub fn eval(&self, expression: &str) -> Value {
        let wrapped = format!("JSON.stringify((function () {{ return ({expression}); }})())");
        match self.tab.evaluate(&wrapped, false) {
            Ok(object) => object
                .value
                .and_then(|v| v.as_str().map(str::to_string))
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Evaluates `expression` until it is truthy; panics with `what`, the last value and the
    /// page after `timeout`.
    pub fn wait_js(&self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what} (`{expression}` is {value})\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_loaded(&self) {
        self.wait_js(
            "the document to load",
            "document.readyState === 'complete'",
            PAGE,
        );
    }

    /// The text of the first element matching `selector`, if there is one.
    pub fn text(&self, selector: &str) -> Option<String> {
        let selector = Value::String(selector.into());
        self.eval(&format!(
            "(function (e) {{ return e ? e.textContent : null; }})(document.querySelector({selector}))"
        ))
        .as_str()
        .map(|s| s.trim().to_string())
    }

    /// Waits until `selector` matches an element.
    pub fn wait_for(&self, selector: &str, timeout: Duration) {
        let quoted = Value::String(selector.into());
        self.wait_js(
            &format!("an element `{selector}`"),
            &format!("document.querySelector({quoted}) !== null"),
            timeout,
        );
    }

    /// Waits until the text of `selector` satisfies `accept`; answers that text. Panics with
    /// the last text seen and the page.
    pub fn wait_text(
        &self,
        selector: &str,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        self.poll_text(
            selector,
            what,
            timeout,
            accept,
            Duration::from_millis(100),
            false,
        )
    }

    /// Reloads the page until the text of `selector` satisfies `accept` (a page without
    /// scripts that refresh it); answers that text.
    pub fn reload_until(
        &self,
        selector: &str,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        self.poll_text(
            selector,
            what,
            timeout,
            accept,
            Duration::from_millis(500),
            true,
        )
    }

    fn poll_text(
        &self,
        selector: &str,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
        pause: Duration,
        reload: bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(selector);
            if let Some(t) = &text {
                if accept(t) {
                    return t.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} {timeout:?} for `{selector}` to be {what}; last text {text:?}\n{}",
                if reload { "reloaded for" } else { "waited" },
                self.dump()
            );
            std::thread::sleep(pause);
            if reload {
                self.reload();
            }
        }
    }

    /// Clicks the element `selector` like a person (scrolled into view, mouse at its middle).
    pub fn click(&self, selector: &str) {
        self.wait_for(selector, PAGE);
        self.tab
            .find_element(selector)
            .and_then(|e| e.click().map(|_| ()))
            .unwrap_or_else(|e| panic!("click `{selector}`: {e:#}\n{}", self.dump()));
    }

    /// Clicks `selector` (a submit button or link) and waits until another document has
    /// loaded in its place: the old one carries a mark the new one lacks.
    pub fn click_and_wait_page(&self, selector: &str) {
        self.eval("(window.__iceprod_old_page = true)");
        self.click(selector);
        self.wait_js(
            &format!("a new page after clicking `{selector}`"),
            "!window.__iceprod_old_page && document.readyState === 'complete'",
            PAGE,
        );
    }

    /// Types `text` into the input `selector` with real key events, after clearing it.
    pub fn type_into(&self, selector: &str, text: &str) {
        self.set_value(selector, "");
        self.tab
            .find_element(selector)
            .and_then(|e| e.type_into(text).map(|_| ()))
            .unwrap_or_else(|e| panic!("type into `{selector}`: {e:#}\n{}", self.dump()));
    }

    /// Replaces the whole text of a textarea or input as a paste does: focus, select all,
    /// insert (the page sees `input` events).
    pub fn paste_into(&self, selector: &str, text: &str) {
        self.wait_for(selector, PAGE);
        let quoted = Value::String(selector.into());
        self.eval(&format!(
            "(function (e) {{ e.focus(); e.select(); return true; }})(document.querySelector({quoted}))"
        ));
        self.tab
            .send_character(text)
            .unwrap_or_else(|e| panic!("paste into `{selector}`: {e:#}\n{}", self.dump()));
    }

    /// Sets the value of a form field directly (no key events).
    pub fn set_value(&self, selector: &str, value: &str) {
        self.wait_for(selector, PAGE);
        let quoted = Value::String(selector.into());
        let value = Value::String(value.into());
        self.eval(&format!(
            "(function (e) {{ e.value = {value}; e.dispatchEvent(new Event('change', \
             {{bubbles: true}})); return true; }})(document.querySelector({quoted}))"
        ));
    }

    /// Uncaught errors, rejected promises, failed resource loads and Content-Security-Policy
    /// violations of the current document.
    pub fn js_errors(&self) -> Vec<String> {
        match self.eval("window.__iceprod_errors") {
            Value::Array(items) => items
                .into_iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
            other => vec![format!("the error collector did not run: {other}")],
        }
    }

    pub fn assert_no_js_errors(&self) {
        let errors = self.js_errors();
        assert!(
            errors.is_empty(),
            "JavaScript errors on {}: {errors:#?}",
            self.tab.get_url()
        );
    }

    /// Saves a PNG of the whole page (beyond the window when it is longer) into the artifact
    /// folder as `name`; its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let size = self
            .eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]");
        let side = |i: usize| size[i].as_f64().unwrap_or(1024.0).clamp(1.0, 16384.0);
        let png = self
            .tab
            .call_method(Page::CaptureScreenshot {
                format: Some(Page::CaptureScreenshotFormatOption::Png),
                quality: None,
                clip: Some(Page::Viewport {
                    x: 0.0,
                    y: 0.0,
                    width: side(0),
                    height: side(1),
                    scale: 1.0,
                }),
                from_surface: Some(true),
                capture_beyond_viewport: Some(true),
                optimize_for_speed: None,
            })
            .map_err(|e| format!("{e:#}"))
            .and_then(|shot| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(shot.data)
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|e| panic!("screenshot: {e}\n{}", self.dump()));
        let path = artifact_dir().join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}
