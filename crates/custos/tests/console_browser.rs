//! The console as people use it: Debian's Chromium, driven through
//! chromedriver (WebDriver) against a real `custos serve`.
//!
//! A requester files a look-up through the API; an approver signs in and
//! approves it in the browser (and declines another with a reason); the
//! requester fetches; an overseer finds the release in the subject's
//! accounting and in the ledger explorer, each with a checked proof; an
//! admin suspends the agreement and the approver's next approval shows the
//! broker's reason; a revoked token ends its session. Forged forms (no or
//! a wrong CSRF token), a missing session and a wrong role are refused and
//! change nothing. No subject id, justification or token appears in a URL,
//! a page title or the server's log.
//!
//! Screenshots of every page are written to
//! `$CARGO_TARGET_TMPDIR/console-screenshots/` (not committed).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (packages
//! `chromium` and `chromium-driver`, which `scripts/test` installs); set
//! `CUSTOS_SKIP_BROWSER=1` to skip on a machine without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, killed at the end.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, url }
    }

    /// A new headless browser with its own empty profile (so its own cookies).
    async fn browser(&self, profile: &Path) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one run shares: the server, the browser driver, tokens,
/// the screenshot directory, and every URL and title a browser showed.
struct Run {
    dir: tempfile::TempDir,
    server: common::Server,
    tokens: HashMap<&'static str, String>,
    shots: PathBuf,
    seen: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Run {
    async fn api(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(&self.tokens[who])
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Remembers where the browser is and what the page is called, and
    /// saves a screenshot as `name.png`.
    async fn look(&mut self, browser: &Client, name: &str) {
        let url = browser.current_url().await.unwrap().to_string();
        let title = browser.title().await.unwrap();
        self.seen.push((url, title));
        let png = browser.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn sign_in(&mut self, browser: &Client, who: &str) {
        browser
            .goto(&format!("{}/console/sign-in", self.server.url))
            .await
            .unwrap();
        if who == "adam" {
            self.look(browser, "01-sign-in").await;
        }
        browser
            .find(Locator::Css("input[name=token]"))
            .await
            .unwrap()
            .send_keys(&self.tokens[who])
            .await
            .unwrap();
        browser
            .find(Locator::Css("form[action='/console/sign-in'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for(browser, &format!("Welcome, {who}")).await;
    }

    async fn open(&self, browser: &Client, path: &str) {
        browser
            .goto(&format!("{}{path}", self.server.url))
            .await
            .unwrap();
    }
}

/// Waits (up to 15 s) until the page's HTML contains `text`.
async fn wait_for(browser: &Client, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let html = browser.source().await.unwrap();
        if html.contains(text) {
            return html;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {text:?}; it shows:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn session_cookie(browser: &Client) -> String {
    let cookie = browser.get_named_cookie("custos_session").await.unwrap();
    assert_eq!(
        cookie.http_only(),
        Some(true),
        "the session cookie is HttpOnly"
    );
    assert_eq!(
        cookie.same_site(),
        Some(cookie::SameSite::Strict),
        "the session cookie is SameSite=Strict"
    );
    format!("custos_session={}", cookie.value())
}

/// A TIN with a return in the agreement's row scope (tax_year ≥ 2023).
fn subjects(data: &Path, n: usize) -> Vec<String> {
    let mut reader = csv::Reader::from_path(data.join("tax_returns.csv")).unwrap();
    let mut tins: Vec<String> = Vec::new();
    for r in reader.records() {
        let r = r.unwrap();
        if r[12].parse::<u32>().unwrap() >= 2023 && !tins.contains(&r[0].to_owned()) {
            tins.push(r[0].to_owned());
        }
        if tins.len() == n {
            break;
        }
    }
    tins
}

fn setup() -> (
    tempfile::TempDir,
    HashMap<&'static str, String>,
    Vec<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    common::custos(&home, None).arg("init").assert().success();
    let mut tokens = HashMap::new();
    for (name, org, roles) in [
        ("alice", "IRS", "admin"),
        ("rita", "TIGTA", "requester"),
        ("adam", "IRS", "approver"),
        ("olga", "GAO", "overseer"),
        ("gus", "GAO", "requester"),
    ] {
        let admin = tokens.get("alice").cloned();
        tokens.insert(
            name,
            common::add_principal(&home, admin.as_deref(), name, org, roles),
        );
    }
    let data = dir.path().join("synthetic");
    common::ingest_synthetic(&home, &tokens["alice"], &data, 300, &["tax_returns"]);
    for (file, text) in [
        ("identified.toml", common::IDENTIFIED_AGREEMENT.to_owned()),
        (
            "aggregate.toml",
            common::aggregate_agreement("gao-refund-statistics", "1.0", "0.1"),
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        common::custos(&home, Some(&tokens["alice"]))
            .args(["agreement", "apply"])
            .arg(path)
            .assert()
            .success();
    }
    let tins = subjects(&data, 3);
    // Rita's own record is the third subject: looking it up raises an
    // unusual-browsing alert for the overseer's page.
    let facts = dir.path().join("rita-facts.toml");
    std::fs::write(&facts, format!("own_id = \"{}\"\n", tins[2])).unwrap();
    common::custos(&home, Some(&tokens["alice"]))
        .args(["principal", "update", "rita", "--facts"])
        .arg(&facts)
        .assert()
        .success();
    (dir, tokens, tins)
}

const JUSTIFICATION: &str = "Case 2026-117: refund routed to an account shared by 40 filers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_use_the_console_in_a_browser() {
    if std::env::var("CUSTOS_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("skipped: CUSTOS_SKIP_BROWSER=1");
        return;
    }
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install Debian's chromium and chromium-driver (scripts/test does), or set CUSTOS_SKIP_BROWSER=1"
        );
    }
    let (dir, tokens, tins) = setup();
    let server = common::Server::start(&dir.path().join("home"), &[]);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let mut run = Run {
        dir,
        server,
        tokens,
        shots,
        seen: Vec::new(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    let driver = Driver::start();

    // A requester files three look-ups through the API.
    let mut ids = Vec::new();
    for tin in &tins {
        let (status, ticket) = run
            .api(
                "rita",
                reqwest::Method::POST,
                "/v1/lookups",
                json!({"agreement": "tigta-cases", "dataset": "tax_returns", "subject": tin,
                       "justification": JUSTIFICATION}),
            )
            .await;
        assert_eq!(status, 201, "{ticket}");
        ids.push(ticket["id"].as_str().unwrap().to_owned());
    }

    // The approver approves the first in the queue and declines the second.
    let adam = driver.browser(&run.dir.path().join("profile-adam")).await;
    run.sign_in(&adam, "adam").await;
    run.look(&adam, "02-home-approver").await;
    click(&adam, "a[href='/console/queue']").await;
    let queue = wait_for(&adam, &ids[0]).await;
    assert!(queue.contains(JUSTIFICATION) && queue.contains("26 U.S.C. 6103(h)(1)"));
    assert!(
        !queue.contains(&tins[0]),
        "the queue does not show the subject"
    );
    run.look(&adam, "03-queue").await;
    click(
        &adam,
        &format!("form[action='/console/requests/{}/approve'] button", ids[0]),
    )
    .await;
    wait_for(&adam, "Approved: 1 of 1 approvals").await;
    run.look(&adam, "04-approved-in-place").await;
    click(&adam, &format!("#decision-{} details summary", ids[1])).await;
    adam.find(Locator::Css(&format!(
        "form[action='/console/requests/{}/decline'] textarea",
        ids[1]
    )))
    .await
    .unwrap()
    .send_keys("The case number names no refund in this account")
    .await
    .unwrap();
    click(
        &adam,
        &format!("form[action='/console/requests/{}/decline'] button", ids[1]),
    )
    .await;
    wait_for(&adam, "Declined. The requester sees your reason").await;
    // The request itself shows the subject to the approver (ledgered).
    run.open(&adam, &format!("/console/requests/{}", ids[0]))
        .await;
    wait_for(&adam, &tins[0]).await;
    run.look(&adam, "05-request").await;
    run.open(&adam, "/console/decisions").await;
    let decisions = wait_for(&adam, "declined").await;
    assert!(decisions.contains("approved"));
    run.look(&adam, "06-decisions").await;

    // The requester fetches the approved one through the API; the declined
    // one cannot be fetched, and says why.
    let (status, released) = run
        .api(
            "rita",
            reqwest::Method::POST,
            &format!("/v1/lookups/{}/fetch", ids[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{released}");
    assert!(released.to_string().contains(&tins[0]));
    let (status, refused) = run
        .api(
            "rita",
            reqwest::Method::POST,
            &format!("/v1/lookups/{}/fetch", ids[1]),
            json!({}),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("declined"));

    // The requester sees the decline and its reason in the console.
    let rita = driver.browser(&run.dir.path().join("profile-rita")).await;
    run.sign_in(&rita, "rita").await;
    click(&rita, "a[href='/console/mine']").await;
    wait_for(&rita, "declined").await;
    run.look(&rita, "07-my-requests").await;
    run.open(&rita, &format!("/console/requests/{}", ids[1]))
        .await;
    wait_for(&rita, "The case number names no refund").await;
    run.look(&rita, "08-declined-request").await;

    // An analyst asks an aggregate question and sees intervals as a chart.
    let gus = driver.browser(&run.dir.path().join("profile-gus")).await;
    run.sign_in(&gus, "gus").await;
    click(&gus, "a[href='/console/query']").await;
    wait_for(&gus, "Aggregate query").await;
    gus.find(Locator::Css("textarea[name=sql]"))
        .await
        .unwrap()
        .send_keys("SELECT state, COUNT(*) AS returns, AVG(refund) FROM tax_returns WHERE tax_year >= 2023 GROUP BY state")
        .await
        .unwrap();
    click(&gus, "form[action='/console/query'] button").await;
    let answer = wait_for(&gus, "with 95% intervals").await;
    assert!(answer.contains("<svg"), "the answer has a chart");
    assert!(answer.contains("Charged 0.1"));
    run.look(&gus, "09-query-answer").await;
    click(&gus, "a[href='/console/mine']").await;
    wait_for(&gus, "0.9000").await;
    run.look(&gus, "10-budgets").await;

    // The overseer finds the release in the subject's accounting (the id
    // typed into a form, sent in a POST body) and in the ledger explorer.
    let olga = driver.browser(&run.dir.path().join("profile-olga")).await;
    run.sign_in(&olga, "olga").await;
    run.look(&olga, "11-home-overseer").await;
    click(&olga, "a[href='/console/subject']").await;
    olga.find(Locator::Css("input[name=subject]"))
        .await
        .unwrap()
        .send_keys(&tins[0])
        .await
        .unwrap();
    click(&olga, "form[action='/console/subject'] button").await;
    let report = wait_for(&olga, "✓ included").await;
    assert!(report.contains("disclosed") && report.contains("rita"));
    assert!(!report.contains("✗"), "every line proves");
    run.look(&olga, "12-subject-accounting").await;
    click(&olga, "a[href='/console/ledger']").await;
    wait_for(&olga, "entries under the latest signed checkpoint").await;
    run.look(&olga, "13-ledger").await;
    olga.find(Locator::Css("input[name=action]"))
        .await
        .unwrap()
        .send_keys("lookup.fetch")
        .await
        .unwrap();
    click(&olga, "form.filters button").await;
    // htmx swaps the filtered table in: wait until the other actions are gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    let filtered = loop {
        let html = olga.source().await.unwrap();
        if !html.contains("lookup.request</code>") {
            break html;
        }
        assert!(Instant::now() < deadline, "the filter never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        filtered.contains("lookup.fetch</code>"),
        "the fetches remain"
    );
    run.look(&olga, "14-ledger-filtered").await;
    click(&olga, "#entries tbody tr td a").await;
    let entry = wait_for(&olga, "Inclusion proof").await;
    assert!(entry.contains("✓ This entry's bytes hash to leaf"));
    run.look(&olga, "15-ledger-entry").await;
    click(&olga, "a[href='/console/agreements']").await;
    click(&olga, "a[href='/console/agreements/tigta-cases']").await;
    let agreement = wait_for(&olga, "Look-up requests per day").await;
    assert!(agreement.contains("<svg") && agreement.contains("Distinct subjects"));
    run.look(&olga, "16-agreement").await;
    // A page of another role is neither shown nor served.
    assert!(
        !agreement.contains("/console/queue"),
        "no queue link for an overseer"
    );
    run.open(&olga, "/console/queue").await;
    wait_for(&olga, "this page is for the approver role").await;
    run.look(&olga, "17-wrong-role").await;
    // Rita looked up her own record: the overseer's alerts page says so
    // (the server's detector runs every second), and she resolves it.
    click(&olga, "a[href='/console/alerts']").await;
    let alerts = wait_for(&olga, "self_access").await;
    assert!(
        !alerts.contains(&tins[2]),
        "an alert never names the subject"
    );
    run.look(&olga, "23-alerts").await;
    click(&olga, "td a[href^='/console/alerts/alr_']").await;
    wait_for(&olga, "Rules that fired").await;
    olga.find(Locator::Css("textarea[name=reason]"))
        .await
        .unwrap()
        .send_keys("Rita confirmed it was her own return; warned in writing")
        .await
        .unwrap();
    click(&olga, "form[action$='/resolve'] button").await;
    let resolved = wait_for(&olga, "Resolved.").await;
    assert!(resolved.contains("warned in writing"));
    run.look(&olga, "24-alert-resolved").await;

    // Forged and session-less requests are refused and change nothing.
    let adam_cookie = session_cookie(&adam).await;
    let forge = |cookie: Option<&str>, form: &str| {
        let mut r = run
            .http
            .post(format!(
                "{}/console/requests/{}/approve",
                run.server.url, ids[2]
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    let r = forge(Some(&adam_cookie), "csrf=").await.unwrap();
    assert_eq!(r.status(), 403);
    let r = forge(Some(&adam_cookie), &format!("csrf={}", "a".repeat(64)))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("security token"));
    let r = forge(None, "csrf=").await.unwrap();
    assert_eq!(r.status(), 303, "no session: to the sign-in page");
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/console/sign-in")
    );
    let olga_cookie = session_cookie(&olga).await;
    let r = run
        .http
        .get(format!("{}/console/principals", run.server.url))
        .header("cookie", &olga_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an overseer is not an admin");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let (_, pending) = run
        .api(
            "rita",
            reqwest::Method::GET,
            &format!("/v1/lookups/{}", ids[2]),
            Value::Null,
        )
        .await;
    assert_eq!(
        pending["state"], "pending",
        "forged approvals did not count"
    );
    assert_eq!(pending["approvals"], 0);

    // The admin suspends the agreement; the approver's next approval is
    // refused with the broker's reason, shown on the page.
    let alice = driver.browser(&run.dir.path().join("profile-alice")).await;
    run.sign_in(&alice, "alice").await;
    run.look(&alice, "18-home-admin").await;
    run.open(&alice, "/console/agreements/tigta-cases").await;
    alice
        .find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys("Paused for the annual review")
        .await
        .unwrap();
    click(&alice, "button[value=suspended]").await;
    wait_for(&alice, "is now suspended").await;
    run.open(&adam, "/console/queue").await;
    let queue = wait_for(&adam, "Approval queue").await;
    assert!(
        !queue.contains(&ids[2]),
        "a suspended agreement's requests leave the queue"
    );
    run.open(&adam, &format!("/console/requests/{}", ids[2]))
        .await;
    wait_for(&adam, &tins[2]).await;
    click(
        &adam,
        &format!("form[action='/console/requests/{}/approve'] button", ids[2]),
    )
    .await;
    wait_for(&adam, "agreement `tigta-cases` is suspended").await;
    run.look(&adam, "19-denied-with-reason").await;
    run.open(&alice, "/console/agreements").await;
    wait_for(&alice, "Apply an agreement").await;
    run.look(&alice, "20-agreements-admin").await;

    // Revoking the approver's token ends their session at the next click.
    run.open(&alice, "/console/principals").await;
    wait_for(&alice, "Add a principal").await;
    run.look(&alice, "21-principals").await;
    click(
        &alice,
        "form[action='/console/principals/adam/revoke'] button",
    )
    .await;
    wait_for(&alice, "Revoked adam").await;
    run.open(&adam, "/console/queue").await;
    wait_for(&adam, "Your token was revoked").await;
    run.look(&adam, "22-revoked").await;

    // Nothing personal or secret in a URL, a title or the log.
    for b in [adam, rita, gus, olga, alice] {
        b.close().await.unwrap();
    }
    let Run {
        dir: _dir,
        server,
        tokens,
        shots,
        seen,
        ..
    } = run;
    let (_, log) = server.stop();
    let mut secrets: Vec<&str> = tins.iter().map(String::as_str).collect();
    secrets.push(JUSTIFICATION);
    secrets.extend(tokens.values().map(String::as_str));
    for (url, title) in &seen {
        for s in &secrets {
            assert!(!url.contains(s), "{url} holds a secret");
            assert!(!title.contains(s), "{title} holds a secret");
        }
    }
    for s in &secrets {
        assert!(!log.contains(s), "the server log holds a secret");
    }
    assert!(
        log.contains("/console/requests/{id}/approve"),
        "routes are logged as templates"
    );
    let pngs = std::fs::read_dir(&shots).unwrap().count();
    assert_eq!(pngs, 24, "a screenshot of every page");
}
