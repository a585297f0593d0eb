//! The human website (SPEC §7) through the real binary: every page and action, the permission
//! matrix (anonymous, another user, the owner, an admin), CSRF, hostile text, paging edge
//! cases, unknown ids, static and `/lib/` files, and a 50 MB log.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{add_website_user, base_config, db, db_text, Server, WAIT};
use iceprod_db::rusqlite::params;

/// One HTTP response: status, headers (names lower-case), body (chunked decoded).
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if method == "HEAD" || status == 304 {
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..]).unwrap();
            let mut crlf = [0; 2];
            r.read_exact(&mut crlf).unwrap();
        }
    } else if let Some(n) = find("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// A browser: an optional session cookie and the CSRF token of the last page it saw.
#[derive(Clone, Default)]
struct Browser {
    port: u16,
    cookie: Option<String>,
    csrf: String,
}

fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Browser {
    fn anonymous(server: &Server) -> Browser {
        Browser {
            port: server.port,
            ..Browser::default()
        }
    }

    fn login(server: &Server, user: &str, password: &str) -> Browser {
        let mut b = Browser::anonymous(server);
        let r = b.post_login(&[("username", user), ("password", password), ("next", "/")]);
        assert_eq!(r.status, 303, "login of {user}: {}", r.text());
        let cookie = r
            .header("set-cookie")
            .expect("a session cookie")
            .to_string();
        let value = cookie.split(';').next().unwrap().to_string();
        b.cookie = Some(value);
        let home = b.get("/help");
        b.csrf = csrf_of(&home.text()).expect("a csrf token on the page");
        b
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.cookie
            .as_deref()
            .map(|c| vec![("Cookie", c)])
            .unwrap_or_default()
    }

    fn get(&self, path: &str) -> Resp {
        request(self.port, "GET", path, &self.headers(), b"")
    }

    /// POSTs a form as is (no token added).
    fn post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        let body: Vec<String> = form
            .iter()
            .map(|(n, v)| format!("{}={}", enc(n), enc(v)))
            .collect();
        let mut headers = self.headers();
        headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        request(self.port, "POST", path, &headers, body.join("&").as_bytes())
    }

    /// POSTs the login form as a browser does: with the token of a freshly loaded login page
    /// and the cookie that came with it.
    fn post_login(&self, form: &[(&str, &str)]) -> Resp {
        let (cookie, token) = login_token(self.port);
        let mut form = form.to_vec();
        form.push(("login_token", &token));
        let b = Browser {
            cookie: Some(cookie),
            ..self.clone()
        };
        b.post("/login", &form)
    }

    /// POSTs a form with this browser's CSRF token.
    fn act(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        let mut form = form.to_vec();
        form.push(("csrf_token", &self.csrf));
        self.post(path, &form)
    }
}

/// The `iceprod_login=…` cookie and the form token of a fresh `GET /login`.
fn login_token(port: u16) -> (String, String) {
    let r = request(port, "GET", "/login", &[], b"");
    let cookie = r.header("set-cookie").expect("a login cookie");
    assert!(cookie.starts_with("iceprod_login="), "{cookie}");
    let token = login_token_of(&r.text()).expect("a login token on the page");
    (cookie.split(';').next().unwrap().to_string(), token)
}

fn login_token_of(page: &str) -> Option<String> {
    let field = "name=\"login_token\" value=\"";
    let at = page.find(field)? + field.len();
    Some(page[at..].split('"').next()?.to_string())
}

fn csrf_of(page: &str) -> Option<String> {
    let at = page.find("name=\"csrf_token\" value=\"")? + "name=\"csrf_token\" value=\"".len();
    Some(page[at..].split('"').next()?.to_string())
}

const HOSTILE: &str = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>";

/// A server with users alice and bob (users) and root (admin), all with password `pw-NAME!`.
fn start(website: &str) -> Server {
    let server = Server::start_with(|port| base_config(port, website, ""));
    for (name, admin) in [("alice", false), ("bob", false), ("root", true)] {
        add_website_user(&server, name, &format!("pw-{name}!"), admin);
    }
    server
}

fn example() -> String {
    common::example_text("two-tasks.json")
}

/// The server's one grid, as the submit page offers it.
fn gridspec(b: &Browser) -> String {
    let page = b.get("/submit").text();
    let at = page.find("<option value=\"").expect("a grid option") + "<option value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

/// Submits the example through the submit form as `b`; answers the dataset number.
fn submit(b: &Browser, description: &str) -> u64 {
    let grid = gridspec(b);
    let r = b.act(
        "/submit",
        &[
            ("config", &example()),
            ("gridspec", &grid),
            ("njobs", "1"),
            ("description", description),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").unwrap();
    location.strip_prefix("/dataset/").unwrap().parse().unwrap()
}

fn dataset_id(server: &Server, num: u64) -> String {
    db_text(
        server,
        &format!("SELECT dataset_id FROM dataset WHERE dataset_num = {num}"),
    )
}

/// Job `J` (index 0) of the dataset with its two tasks `J-t0`, `J-t1` (waiting), in the db.
fn seed_job(server: &Server, dataset: &str, job: &str) {
    seed_job_at(server, dataset, job, 0);
}

/// Job `J` at `index` of the dataset with its two tasks `J-t0`, `J-t1` (waiting; the second
/// depends on the first), in the db.
fn seed_job_at(server: &Server, dataset: &str, job: &str, index: i64) {
    let conn = db(server);
    let now = iceprod_db::ops::now();
    conn.execute(
        "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
         VALUES (?1, ?2, ?4, 'processing', ?3)",
        params![job, dataset, now, index],
    )
    .unwrap();
    for i in 0..2 {
        conn.execute(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             status_changed, requirements) SELECT ?1, ?2, ?3, task_rel_id, ?4, 'waiting', ?5, \
             '{}' FROM task_rel WHERE dataset_id = ?3 AND task_index = ?4",
            params![format!("{job}-t{i}"), job, dataset, i, now],
        )
        .unwrap();
    }
    // As BufferJobs resolves them: the second task depends on the first.
    conn.execute(
        "UPDATE task SET depends = ?1 WHERE task_id = ?2",
        params![format!(r#"["{job}-t0"]"#), format!("{job}-t1")],
    )
    .unwrap();
}

fn task_status(server: &Server, task: &str) -> String {
    db_text(
        server,
        &format!("SELECT status FROM task WHERE task_id = '{task}'"),
    )
}

fn dataset_status(server: &Server, num: u64) -> String {
    db_text(
        server,
        &format!("SELECT status FROM dataset WHERE dataset_num = {num}"),
    )
}

fn store_log(server: &Server, task: &str, dataset: &str, name: &str, text: &[u8]) {
    use base64::Engine;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(text).unwrap();
    let data = base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap());
    db(server)
        .execute(
            "INSERT INTO task_log (task_log_id, task_id, dataset_id, name, data) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![format!("log-{task}-{name}"), task, dataset, name, data],
        )
        .unwrap();
}

/// Graph rows as the schedule job writes them: `active_tasks` and `completed_tasks` every 10
/// minutes over the last two hours.
fn seed_graphs(server: &Server) {
    let conn = db(server);
    let now = chrono::Utc::now();
    for i in 0..12 {
        let t = (now - chrono::Duration::minutes(10 * i))
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        for (name, value) in [
            (
                "active_tasks",
                format!(r#"{{"queued": {i}, "processing": 3}}"#),
            ),
            ("completed_tasks", r#"{"completions": 5}"#.to_string()),
        ] {
            conn.execute(
                "INSERT INTO graph (graph_id, name, value, timestamp) VALUES (?1, ?2, ?3, ?4)",
                params![format!("g-{name}-{i}"), name, value, t],
            )
            .unwrap();
        }
    }
}

#[test]
fn the_home_page_draws_the_graphs_of_the_last_day() {
    let server = start("");
    let anon = Browser::anonymous(&server);
    let empty = anon.get("/").text();
    assert!(empty.contains("<div id=\"graph-active\"><svg") && empty.contains("no data"));
    seed_graphs(&server);
    let page = anon.get("/").text();
    let active = page.split("<div id=\"graph-active\">").nth(1).unwrap();
    let active = active.split("</svg>").next().unwrap();
    assert_eq!(
        active.matches("<polyline").count(),
        2,
        "one line per status"
    );
    assert!(active.contains("processing (3)") && active.contains("queued (0)"));
    let completed = page.split("<div id=\"graph-completed\">").nth(1).unwrap();
    let completed = completed.split("</svg>").next().unwrap();
    let bars = completed.matches("<rect").count();
    // 12 ten-minute rows span two or three clock hours.
    assert!((2..=3).contains(&bars), "{bars} bars");
}

#[test]
fn every_page_renders_for_a_logged_in_user_with_hostile_text_inert() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let num = submit(&alice, HOSTILE);
    let id = dataset_id(&server, num);
    seed_job(&server, &id, "j1");
    store_log(
        &server,
        "j1-t0",
        &id,
        "stdout",
        format!("{HOSTILE}\nlast line\n").as_bytes(),
    );
    let pages = [
        "/".to_string(),
        "/dataset".into(),
        format!("/dataset/{num}"),
        format!("/config?dataset_id={id}"),
        format!("/config?dataset_id={id}&edit=1"),
        format!("/task?dataset_id={id}"),
        "/task/j1-t0".into(),
        format!("/job?dataset_id={id}"),
        "/job/j1".into(),
        "/groups".into(),
        "/site".into(),
        "/help".into(),
        "/submit".into(),
        "/login".into(),
    ];
    for path in &pages {
        let r = alice.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let page = r.text();
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{path}"
        );
        assert!(page.contains("<span id=\"user\">alice</span>"), "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(page.contains("<form id=\"logout\""), "{path}");
        assert!(
            !page.contains("<script>alert") && !page.contains("<img src=x"),
            "{path}"
        );
    }
    let page = alice.get(&format!("/dataset/{num}")).text();
    for part in [
        "<span id=\"dataset-status\">processing</span>",
        "<div id=\"progress\">",
        "<table id=\"task-names\">",
        "<td><a href=\"/task?dataset_id=",
        "<form id=\"dataset-actions\"",
        "value=\"hard_reset\"",
        "<svg",
        "&#60;script&#62;",
    ] {
        assert!(page.contains(part), "dataset page lacks {part}:\n{page}");
    }
    assert!(
        page.len() < 100_000,
        "dataset page weighs {} bytes",
        page.len()
    );
    let task = alice.get("/task/j1-t0").text();
    assert!(task.contains("<span id=\"task-status\">waiting</span>"));
    assert!(task.contains("<pre class=\"log-tail\" data-name=\"stdout\">"));
    assert!(task.contains("last line") && task.contains("href=\"/log/j1-t0/stdout\""));
    // filter depends on generate: the dependency is a link to it.
    let filter = alice.get("/task/j1-t1").text();
    assert!(
        filter.contains("<a class=\"dep-link\" href=\"/task/j1-t0\">generate</a>"),
        "{filter}"
    );
    let list = alice.get(&format!("/task?dataset_id={id}")).text();
    assert_eq!(list.matches("<tr class=\"task\">").count(), 2);
    assert!(list.contains("<a class=\"task-link\" href=\"/task/j1-t0\">"));
    assert!(list.contains("<form id=\"bulk-actions\""));
    let site = alice.get("/site").text();
    assert!(
        site.contains("<table id=\"modules\">")
            && site.contains("<td>website</td><td class=\"state\">running</td>"),
        "{site}"
    );
    assert!(
        !site.contains("id=\"reload\""),
        "only admins see the reload button"
    );
    // The log itself is plain text, served as stored: the script is text, not markup.
    let log = alice.get("/log/j1-t0/stdout");
    assert_eq!(log.status, 200);
    assert_eq!(
        log.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(log.text(), format!("{HOSTILE}\nlast line\n"));
    // The machine endpoints still answer.
    assert_eq!(alice.get("/healthz").status, 200);
    let metrics = alice.get("/metrics").text();
    assert!(metrics.contains("route=\"/dataset/N\""), "{metrics}");
}

#[test]
fn anonymous_visitors_read_when_public_reads_and_are_sent_to_login_otherwise() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let num = submit(&alice, "d");
    let anon = Browser::anonymous(&server);
    let r = anon.get(&format!("/dataset/{num}"));
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(page.contains("<a id=\"login-link\" href=\"/login\">"));
    assert!(
        !page.contains("dataset-actions"),
        "anonymous sees no actions"
    );
    let r = anon.get("/submit");
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/login?next=/submit"))
    );
    drop(server);

    let server = start("public_reads = false");
    let anon = Browser::anonymous(&server);
    let r = anon.get("/dataset?status=processing");
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/login?next=/dataset%3Fstatus%3Dprocessing")
    );
    assert_eq!(anon.get("/login").status, 200);
    assert_eq!(anon.get("/help").status, 200);
    let alice = Browser::login(&server, "alice", "pw-alice!");
    assert_eq!(alice.get("/dataset").status, 200);
}

#[test]
fn login_sets_the_contract_cookie_logout_ends_it_and_wrong_passwords_slow_down() {
    let server = start("session_ttl = \"2h\"");
    let anon = Browser::anonymous(&server);
    let form = anon.get("/login?next=/dataset").text();
    for part in [
        "<form id=\"login-form\" method=\"post\" action=\"/login\">",
        "id=\"username\"",
        "type=\"password\" name=\"password\" id=\"password\"",
        "<button type=\"submit\" id=\"login-submit\">",
        "name=\"next\" value=\"/dataset\"",
    ] {
        assert!(form.contains(part), "{part}");
    }
    let r = anon.post_login(&[
        ("username", "alice"),
        ("password", "pw-alice!"),
        ("next", "/dataset"),
    ]);
    assert_eq!((r.status, r.header("location")), (303, Some("/dataset")));
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("iceprod_session="));
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=7200"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"));
    // Over https (as nginx forwards it) the cookie is Secure; a foreign `next` is ignored.
    let (login_cookie, token) = login_token(server.port);
    let r = request(
        server.port,
        "POST",
        "/login",
        &[
            ("X-Forwarded-Proto", "https"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &login_cookie),
        ],
        format!("username=alice&password=pw-alice%21&next=%2F%2Fevil.example&login_token={token}")
            .as_bytes(),
    );
    assert_eq!(r.header("location"), Some("/"));
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));
    // A tab or newline a browser would drop (`/\t/evil` is `//evil`), a backslash, or a
    // non-ASCII path: the login still answers with a Location, the site's root.
    for next in [
        "%2F%09%2Fevil.example",
        "%2F%0A%2Fevil.example",
        "%2F%5Cevil",
        "%2Fcaf%C3%A9",
    ] {
        let body = format!("username=alice&password=pw-alice%21&next={next}&login_token={token}");
        let r = request(
            server.port,
            "POST",
            "/login",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &login_cookie),
            ],
            body.as_bytes(),
        );
        assert_eq!((r.status, r.header("location")), (303, Some("/")), "{next}");
    }

    let alice = Browser::login(&server, "alice", "pw-alice!");
    // Logout needs the token.
    let r = alice.post("/logout", &[]);
    assert_eq!(r.status, 403);
    assert!(alice.get("/help").text().contains("id=\"user\">alice"));
    let r = alice.act("/logout", &[]);
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = alice.get("/help");
    assert!(after.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = after.text();
    assert!(
        after.contains("login-link"),
        "the old cookie is no session any more"
    );

    // Wrong passwords: the same page with 403 and an error, then slower answers.
    let mut times = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        let r = anon.post_login(&[("username", "bob"), ("password", "wrong")]);
        times.push(t.elapsed());
        assert_eq!(r.status, 403);
        let page = r.text();
        assert!(page.contains("<p class=\"error\">") && page.contains("id=\"login-form\""));
    }
    assert!(times[1] < Duration::from_millis(900), "{times:?}");
    assert!(times[2] >= Duration::from_millis(950), "{times:?}");
    assert!(times[3] >= Duration::from_millis(1950), "{times:?}");
}

#[test]
fn a_login_without_its_form_token_is_refused_and_logs_nobody_in() {
    let server = start("");
    let anon = Browser::anonymous(&server);
    let (cookie, token) = login_token(server.port);
    let (_, other_token) = login_token(server.port);
    assert_ne!(token, other_token, "each fresh form has its own token");
    let with_cookie = Browser {
        cookie: Some(cookie.clone()),
        ..anon.clone()
    };
    let alice = [("username", "alice"), ("password", "pw-alice!")];
    // No token and no cookie (another site's form); the token without its cookie; the cookie
    // with another form's token; the cookie without a token.
    let cases: [(&Browser, Option<&str>); 4] = [
        (&anon, None),
        (&anon, Some(&token)),
        (&with_cookie, Some(&other_token)),
        (&with_cookie, None),
    ];
    for (i, (browser, sent)) in cases.into_iter().enumerate() {
        let mut form = alice.to_vec();
        if let Some(sent) = sent {
            form.push(("login_token", sent));
        }
        let r = browser.post("/login", &form);
        assert_eq!(r.status, 403, "case {i}: {}", r.text());
        let set = r.headers.iter().filter(|(n, _)| n == "set-cookie");
        assert!(
            set.clone().all(|(_, v)| !v.starts_with("iceprod_session=")),
            "case {i}: no session opened"
        );
        let page = r.text();
        assert!(
            page.contains("security token is missing or does not match"),
            "case {i}: {page}"
        );
        // The refusal is a working form again: its own token, and a cookie when needed.
        let fresh = login_token_of(&page).expect("a token on the refusal page");
        let fresh_cookie = set
            .map(|(_, v)| v.split(';').next().unwrap().to_string())
            .find(|c| c.starts_with("iceprod_login="))
            .unwrap_or_else(|| cookie.clone());
        let retry = Browser {
            cookie: Some(fresh_cookie),
            ..anon.clone()
        };
        let mut form = alice.to_vec();
        form.push(("login_token", &fresh));
        assert_eq!(retry.post("/login", &form).status, 303, "case {i}");
    }
    // The matching pair logs in.
    let mut form = alice.to_vec();
    form.push(("login_token", &token));
    assert_eq!(with_cookie.post("/login", &form).status, 303);
}

#[test]
fn a_password_or_role_change_ends_cached_sessions_at_once() {
    let server = start("public_reads = false");
    let admin = common::admin_key(&server);
    let rpc_ok = |method: &str, params: serde_json::Value| {
        let (status, answer) = server.rpc(method, params).expect("an answer");
        assert_eq!(status, 200, "{method}: {answer}");
        assert!(answer.get("error").is_none(), "{method}: {answer}");
    };
    // Each browser has just loaded a page, so the website holds its session in its cache.
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let alice_elsewhere = Browser::login(&server, "alice", "pw-alice!");
    let bob = Browser::login(&server, "bob", "pw-bob!");
    assert_eq!(alice.get("/dataset").status, 200);
    assert!(!bob.get("/groups").text().contains("id=\"groups-form\""));

    // An admin sets alice's password: both her sessions end at once, not after a cache's
    // lifetime; bob's stays.
    rpc_ok(
        "set_user_password",
        serde_json::json!({"passkey": admin, "username": "alice", "password": "new-pw-alice!"}),
    );
    for b in [&alice, &alice_elsewhere] {
        let r = b.get("/dataset");
        assert_eq!(r.status, 303, "{}", r.text());
        assert!(r.header("location").unwrap().starts_with("/login"));
        assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    }
    assert_eq!(bob.get("/dataset").status, 200);

    // A role change shows on the next page.
    rpc_ok(
        "set_user_roles",
        serde_json::json!({"passkey": admin, "username": "bob", "roles": ["admin"]}),
    );
    assert!(bob.get("/groups").text().contains("id=\"groups-form\""));
    rpc_ok(
        "set_user_roles",
        serde_json::json!({"passkey": admin, "username": "bob", "roles": ["user"]}),
    );
    assert!(!bob.get("/groups").text().contains("id=\"groups-form\""));

    // A user who sets their own password from a page keeps that session (they just proved
    // who they are) and loses every other.
    let alice = Browser::login(&server, "alice", "new-pw-alice!");
    let alice_elsewhere = Browser::login(&server, "alice", "new-pw-alice!");
    let session = alice
        .cookie
        .as_deref()
        .unwrap()
        .trim_start_matches("iceprod_session=");
    let (status, answer) = server
        .rpc_in_session(
            "set_user_password",
            serde_json::json!({"username": "alice", "password": "third-pw!"}),
            session,
            Some(&alice.csrf),
        )
        .expect("an answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(alice.get("/dataset").status, 200);
    assert_eq!(alice_elsewhere.get("/dataset").status, 303);
}

#[test]
fn actions_follow_the_permission_matrix() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let bob = Browser::login(&server, "bob", "pw-bob!");
    let root = Browser::login(&server, "root", "pw-root!");
    let anon = Browser::anonymous(&server);
    let num = submit(&alice, "alice's");
    let id = dataset_id(&server, num);
    seed_job(&server, &id, "j1");

    // Bob sees alice's dataset but no action form; alice and root see it.
    assert!(!bob
        .get(&format!("/dataset/{num}"))
        .text()
        .contains("dataset-actions"));
    assert!(root
        .get(&format!("/dataset/{num}"))
        .text()
        .contains("dataset-actions"));
    // The same for the task, job and task-list forms: only the owner and admins get them.
    let list = format!("/task?dataset_id={id}");
    for (who, may) in [(&alice, true), (&bob, false), (&root, true)] {
        let task = who.get("/task/j1-t0").text();
        assert_eq!(task.contains("id=\"task-actions\""), may, "{task}");
        let job = who.get("/job/j1").text();
        assert_eq!(job.contains("id=\"job-actions\""), may, "{job}");
        let tasks = who.get(&list).text();
        assert_eq!(tasks.contains("id=\"bulk-actions\""), may, "{tasks}");
        assert_eq!(tasks.contains("name=\"task_id\""), may, "{tasks}");
    }

    let dataset_action = format!("/dataset/{num}/action");
    // Anonymous and another user: 403, nothing changes.
    let r = anon.post(&dataset_action, &[("action", "suspend")]);
    assert_eq!(r.status, 403);
    let r = bob.act(&dataset_action, &[("action", "suspend")]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("<p class=\"error\">"));
    assert_eq!(dataset_status(&server, num), "processing");
    // The owner acts; an admin acts on anyone's.
    let r = alice.act(&dataset_action, &[("action", "suspend")]);
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some(&*format!("/dataset/{num}")))
    );
    assert_eq!(dataset_status(&server, num), "suspended");
    let r = root.act(&dataset_action, &[("action", "resume")]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(dataset_status(&server, num), "processing");

    // Task actions: one task, and bulk.
    for (who, status) in [(&anon, 403), (&bob, 403)] {
        let r = who.act("/task/j1-t0/action", &[("action", "suspend")]);
        assert_eq!(r.status, status);
        let r = who.act(
            "/task/action",
            &[("action", "suspend"), ("task_id", "j1-t1")],
        );
        assert_eq!(r.status, status);
    }
    assert_eq!(task_status(&server, "j1-t0"), "waiting");
    assert_eq!(task_status(&server, "j1-t1"), "waiting");
    let r = alice.act("/task/j1-t0/action", &[("action", "suspend")]);
    assert_eq!((r.status, r.header("location")), (303, Some("/task/j1-t0")));
    assert_eq!(task_status(&server, "j1-t0"), "suspended");
    let back = format!("/task?dataset_id={id}");
    let r = root.act(
        "/task/action",
        &[("action", "suspend"), ("task_id", "j1-t1"), ("back", &back)],
    );
    assert_eq!((r.status, r.header("location")), (303, Some(back.as_str())));
    assert_eq!(task_status(&server, "j1-t1"), "suspended");
    let r = alice.act(
        "/task/action",
        &[
            ("action", "reset"),
            ("task_id", "j1-t0"),
            ("task_id", "j1-t1"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_ne!(task_status(&server, "j1-t0"), "suspended");
    assert_ne!(task_status(&server, "j1-t1"), "suspended");

    // Job actions.
    let r = bob.act("/job/j1/action", &[("action", "suspend")]);
    assert_eq!(r.status, 403);
    assert_ne!(task_status(&server, "j1-t0"), "suspended");
    let r = alice.act("/job/j1/action", &[("action", "suspend")]);
    assert_eq!((r.status, r.header("location")), (303, Some("/job/j1")));
    assert_eq!(task_status(&server, "j1-t0"), "suspended");

    // Config edit: the owner's form, refused to bob.
    let edit = format!("/config?dataset_id={id}&edit=1");
    assert_eq!(bob.get(&edit).status, 403);
    assert!(alice.get(&edit).text().contains("id=\"config-form\""));
    let config = example().replace("Two tasks per job", "Edited description");
    let r = bob.act("/config", &[("dataset_id", &id), ("config", &config)]);
    assert_eq!(r.status, 403);
    let stored = || {
        db_text(
            &server,
            &format!("SELECT config_data FROM config WHERE dataset_id = '{id}'"),
        )
    };
    assert!(!stored().contains("Edited description"));
    let r = alice.act("/config", &[("dataset_id", &id), ("config", &config)]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(stored().contains("Edited description"));

    // Hard reset asks first; the confirmation carries the fields over.
    let r = alice.act(&dataset_action, &[("action", "hard_reset")]);
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(page.contains("<form id=\"confirm-form\"") && page.contains("id=\"confirm\""));
    assert!(page.contains("name=\"confirm\" value=\"yes\""));
    assert!(page.contains(&format!("name=\"csrf_token\" value=\"{}\"", alice.csrf)));
    assert_eq!(task_status(&server, "j1-t0"), "suspended");
    let r = alice.act(
        &dataset_action,
        &[("action", "hard_reset"), ("confirm", "yes")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_ne!(task_status(&server, "j1-t0"), "suspended");

    // Groups: admins only.
    let form = [
        ("name", "/sim"),
        ("description", "<b>sim</b>"),
        ("priority", "2"),
    ];
    assert_eq!(alice.act("/groups", &form).status, 403);
    assert!(!root.get("/groups").text().contains("/sim"));
    assert_eq!(root.act("/groups", &form).status, 303);
    let groups = alice.get("/groups").text();
    assert!(groups.contains("/sim") && !groups.contains("<b>sim"));
    // Site reload: admins only; the outcome shows on the site page.
    assert_eq!(alice.act("/site/reload", &[]).status, 403);
    assert!(!root.get("/site").text().contains("id=\"last-reload\""));
    let r = root.act("/site/reload", &[]);
    assert_eq!(r.status, 303);
    let site = root.get("/site").text();
    assert!(
        site.contains("<p id=\"last-reload\" class=\"ok\">") && site.contains("no changes"),
        "{site}"
    );
    // A broken file is refused with its reason, and the running config stays.
    let config = std::fs::read_to_string(server.dir.path().join("iceprod.toml")).unwrap();
    server.write_config(&format!("{config}\nno_such_key = 1\n"));
    assert_eq!(root.act("/site/reload", &[]).status, 303);
    let site = root.get("/site").text();
    assert!(
        site.contains("<p id=\"last-reload\" class=\"error\">") && site.contains("no_such_key"),
        "{site}"
    );
    assert_eq!(root.get("/healthz").status, 200);
}

#[test]
fn missing_or_stale_csrf_is_refused_and_changes_nothing() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let num = submit(&alice, "d");
    let action = format!("/dataset/{num}/action");
    let r = alice.post(&action, &[("action", "suspend")]);
    assert_eq!(r.status, 403);
    assert!(r.text().contains("<h1>403 Forbidden</h1>"));
    let r = alice.post(&action, &[("action", "suspend"), ("csrf_token", "stale")]);
    assert_eq!(r.status, 403);
    // A token of another session is stale for this one.
    let other = Browser::login(&server, "alice", "pw-alice!");
    let r = alice.post(
        &action,
        &[("action", "suspend"), ("csrf_token", &other.csrf)],
    );
    assert_eq!(r.status, 403);
    assert_eq!(dataset_status(&server, num), "processing");
    // A submission without the token creates nothing.
    let before = db_text(&server, "SELECT CAST(COUNT(*) AS TEXT) FROM dataset");
    let grid = gridspec(&alice);
    let r = alice.post(
        "/submit",
        &[("config", &example()), ("gridspec", &grid), ("njobs", "1")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        db_text(&server, "SELECT CAST(COUNT(*) AS TEXT) FROM dataset"),
        before
    );
}

#[test]
fn submit_validates_live_and_refuses_broken_configs_naming_the_path() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let page = alice.get("/submit").text();
    for part in [
        "<form id=\"submit-form\" method=\"post\" action=\"/submit\">",
        "<textarea id=\"config\" name=\"config\"",
        "<select id=\"gridspec\" name=\"gridspec\">",
        "<input id=\"njobs\" name=\"njobs\"",
        "<input id=\"description\" name=\"description\"",
        "<input type=\"checkbox\" id=\"debug\" name=\"debug\"",
        "<div id=\"validation\">",
        "<button type=\"submit\" id=\"submit-dataset\">",
        "generate",
    ] {
        assert!(page.contains(part), "{part}");
    }
    let broken =
        r#"{"version": 3, "tasks": [{"name": "a", "trays": [{"modules": [{"src": 5}]}]}]}"#;
    let r = alice.act("/submit/validate", &[("config", broken)]);
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["valid"], false);
    let paths: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("tasks[0].trays[0].modules[0]")),
        "{v}"
    );
    let r = alice.act("/submit/validate", &[("config", &example())]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["valid"], true);

    let before = db_text(&server, "SELECT CAST(COUNT(*) AS TEXT) FROM dataset");
    let grid = gridspec(&alice);
    let r = alice.act(
        "/submit",
        &[
            ("config", broken),
            ("gridspec", &grid),
            ("njobs", "1"),
            ("description", HOSTILE),
        ],
    );
    assert_eq!(r.status, 400);
    let page = r.text();
    assert!(page.contains("<div id=\"validation\"><p class=\"error\">tasks[0].trays[0].modules[0]"));
    assert!(
        !page.contains("<script>alert"),
        "the description is re-rendered escaped"
    );
    for (field, value) in [
        ("njobs", "-3"),
        ("njobs", "many"),
        ("gridspec", "nosuch.grid"),
    ] {
        let mut form = vec![
            ("config", example()),
            ("gridspec", grid.clone()),
            ("njobs", "1".into()),
        ];
        form.retain(|(n, _)| *n != field);
        form.push((field, value.to_string()));
        let form: Vec<(&str, &str)> = form.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = alice.act("/submit", &form);
        assert_eq!(r.status, 400, "{field}={value}");
        assert!(
            r.text().contains(field),
            "{field}={value}: the error names it"
        );
    }
    assert_eq!(
        db_text(&server, "SELECT CAST(COUNT(*) AS TEXT) FROM dataset"),
        before
    );
}

#[test]
fn paging_edge_cases_and_unknown_ids_get_clear_pages() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let num = submit(&alice, "d");
    let id = dataset_id(&server, num);
    for i in 0..3 {
        seed_job_at(&server, &id, &format!("j{i}"), i);
    }
    for (query, name) in [
        ("offset=-1", "offset"),
        ("offset=abc", "offset"),
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("offset=99999999999999999999999999", "offset"),
    ] {
        for path in ["/dataset", "/task"] {
            let r = alice.get(&format!("{path}?{query}"));
            assert_eq!(r.status, 400, "{path}?{query}");
            assert!(
                r.text().contains(&format!("parameter &#39;{name}&#39;")),
                "{path}?{query}: {}",
                r.text()
            );
        }
    }
    // Two per page: next on the first, prev on the last, nothing past the end.
    let page = |offset| {
        alice
            .get(&format!("/task?dataset_id={id}&limit=2&offset={offset}"))
            .text()
    };
    let first = page(0);
    assert_eq!(first.matches("<tr class=\"task\">").count(), 2);
    assert!(first.contains("id=\"next-page\"") && !first.contains("id=\"prev-page\""));
    let last = page(4);
    assert_eq!(last.matches("<tr class=\"task\">").count(), 2);
    assert!(last.contains("id=\"prev-page\"") && !last.contains("id=\"next-page\""));
    assert_eq!(page(100).matches("<tr class=\"task\">").count(), 0);

    for path in [
        "/dataset/999999",
        "/task/nosuch",
        "/job/nosuch",
        "/log/nosuch/stdout",
        "/no/such/page",
    ] {
        let r = alice.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.text().contains("<h1>404 Not Found</h1>"), "{path}");
    }
    assert_eq!(alice.get("/config?dataset_id=nosuch").status, 404);
    assert_eq!(alice.get("/config").status, 400);
    assert_eq!(alice.get("/job").status, 400);
    assert_eq!(
        alice
            .act("/dataset/999999/action", &[("action", "suspend")])
            .status,
        404
    );
    assert_eq!(
        alice
            .act(&format!("/dataset/{num}/action"), &[("action", "explode")])
            .status,
        400
    );
    assert_eq!(alice.get("/logout").status, 405);
}

#[test]
fn a_stored_log_that_is_not_base64_of_zlib_is_refused_with_an_answer() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let num = submit(&alice, "d");
    let id = dataset_id(&server, num);
    seed_job(&server, &id, "j1");
    // What a task passkey may store through upload_logfile: not base64, and base64 of text.
    for (name, data) in [
        ("stdout", "not base64 at all!"),
        ("stderr", "aGVsbG8gd29ybGQ="),
    ] {
        db(&server)
            .execute(
                "INSERT INTO task_log (task_log_id, task_id, dataset_id, name, data) \
                 VALUES (?1, 'j1-t0', ?2, ?3, ?4)",
                params![format!("bad-{name}"), id, name, data],
            )
            .unwrap();
        let r = alice.get(&format!("/log/j1-t0/{name}"));
        assert_eq!(r.status, 500, "{name}");
        assert!(r.text().contains("not base64 of zlib"), "{}", r.text());
    }
    // The website goes on serving.
    assert_eq!(alice.get("/help").status, 200);
}

#[test]
fn a_fifty_megabyte_log_is_served_in_full_and_its_tail_on_the_task_page() {
    let server = start("");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let num = submit(&alice, "d");
    let id = dataset_id(&server, num);
    seed_job(&server, &id, "j1");
    let mut text = Vec::with_capacity(51 << 20);
    let mut n = 0u64;
    while text.len() < 50 << 20 {
        writeln!(
            text,
            "line {n:09} of a long log, with some padding to fill it up"
        )
        .unwrap();
        n += 1;
    }
    store_log(&server, "j1-t0", &id, "stderr", &text);
    let r = alice.get("/log/j1-t0/stderr");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), text.len());
    assert!(r.body == text, "the log comes back byte for byte");
    let page = alice.get("/task/j1-t0").text();
    let tail = page
        .split("<pre class=\"log-tail\" data-name=\"stderr\">")
        .nth(1)
        .and_then(|t| t.split("</pre>").next())
        .expect("a tail of stderr");
    assert_eq!(tail.lines().count(), 40);
    assert!(tail.contains(&format!("line {:09}", n - 1)));
    assert!(!tail.contains(&format!("line {:09}", n - 41)));
}

#[test]
fn a_download_to_a_client_that_does_not_read_delays_no_page() {
    // One stream thread, held by the stalled download: the pages never wait for it.
    let server = start("stream_threads = 1");
    let alice = Browser::login(&server, "alice", "pw-alice!");
    let num = submit(&alice, "d");
    let id = dataset_id(&server, num);
    seed_job(&server, &id, "j1");
    // Incompressible, so the download is far bigger than any socket buffer.
    let mut text = Vec::with_capacity(20 << 20);
    let mut x: u64 = 88172645463325252;
    while text.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.extend_from_slice(&x.to_le_bytes());
    }
    store_log(&server, "j1-t0", &id, "stdout", &text);
    let mut stalled = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        stalled,
        "GET /log/j1-t0/stdout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The download has started (its first bytes are there), and is never read further.
    let mut first = [0u8; 12];
    stalled.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/help", "/dataset", &format!("/dataset/{num}")] {
        let started = Instant::now();
        let r = alice.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} waited {:?} behind the download",
            started.elapsed()
        );
    }
    drop(stalled);
}

#[test]
fn static_files_are_cached_and_lib_files_stay_inside_their_folder() {
    let lib = tempfile::tempdir().unwrap();
    std::fs::create_dir(lib.path().join("env")).unwrap();
    std::fs::write(lib.path().join("env/setup.sh"), "echo hi\n").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "no").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), lib.path().join("leak")).unwrap();
    let server = start(&format!("lib_dir = \"{}\"", lib.path().display()));
    let anon = Browser::anonymous(&server);

    let css = anon.get("/static/site.css");
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(css
        .header("cache-control")
        .unwrap()
        .starts_with("public, max-age="));
    let etag = css.header("etag").unwrap().to_string();
    let again = request(
        server.port,
        "GET",
        "/static/site.css",
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(anon.get("/static/nosuch.css").status, 404);
    assert_eq!(anon.get("/static/..%2Fsite.css").status, 404);

    let ok = anon.get("/lib/env/setup.sh");
    assert_eq!((ok.status, ok.text().as_str()), (200, "echo hi\n"));
    for bad in [
        "/lib/../Cargo.toml",
        "/lib/%2e%2e/x",
        "/lib/env/%2e%2e/%2e%2e/etc/passwd",
        "/lib/a%00b",
        "/lib//etc/passwd",
    ] {
        assert_eq!(anon.get(bad).status, 400, "{bad}");
    }
    assert_eq!(
        anon.get("/lib/leak").status,
        404,
        "a symlink out of lib_dir"
    );
    assert_eq!(anon.get("/lib/env").status, 404, "a folder");
    assert_eq!(anon.get("/lib/nosuch").status, 404);
}
