//! The web console over HTTP: signing in, the session cookie and its life, CSRF, what each role
//! sees, filters and CSV downloads, replaying a webhook from an invoice's page. The Chromium run
//! of the same pages on the dev stack is `chromium_uses_the_console_with_each_role`.

use payrail::console::session::{IDLE_FOR, SESSION_FOR};
use payrail::ledger::AccountCode;
use payrail::merchant::{create_merchant, create_platform_key, Role};
use reqwest::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use payrail::clock::Clock;

use crate::common::{create_invoice_at, invoice_request, Server};

/// A browser of the console: no redirects followed, cookies kept by hand.
struct Browser<'a> {
    server: &'a Server,
    client: reqwest::Client,
    session: Option<String>,
}

/// A page as it came back.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    cookies: Vec<String>,
    content_type: String,
    body: String,
}

impl<'a> Browser<'a> {
    fn new(server: &'a Server) -> Self {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { server, client, session: None }
    }

    async fn send(&self, request: reqwest::RequestBuilder, cookie: Option<String>) -> Answer {
        let request = match cookie.or_else(|| self.session.as_ref().map(|s| format!("payrail_session={s}"))) {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.expect("request");
        let headers = response.headers().clone();
        Answer {
            status: response.status(),
            location: headers.get(LOCATION).map(|v| v.to_str().expect("location").to_owned()),
            cookies: headers.get_all(SET_COOKIE).iter().map(|v| v.to_str().expect("cookie").to_owned()).collect(),
            content_type: headers.get(CONTENT_TYPE).map(|v| v.to_str().expect("type").to_owned()).unwrap_or_default(),
            body: response.text().await.expect("body"),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.server.base)), None).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.server.base)).form(form), None).await
    }

    /// The sign-in form's token and the cookie that goes with it.
    async fn login_token(&self) -> (String, String) {
        let page = self.send(self.client.get(format!("{}/console/login", self.server.base)), Some(String::new())).await;
        assert_eq!(page.status, StatusCode::OK);
        let cookie = page.cookies.iter().find(|c| c.starts_with("payrail_login=")).expect("sign-in cookie").clone();
        let value = cookie.split(';').next().expect("pair").trim_start_matches("payrail_login=").to_owned();
        let token = field(&page.body, "csrf");
        assert_eq!(token, value, "the form carries the cookie's token");
        (token, format!("payrail_login={value}"))
    }

    /// Signs in with `key`; the session's cookie is kept.
    async fn sign_in(&mut self, key: &str) -> Answer {
        let (token, cookie) = self.login_token().await;
        let request = self
            .client
            .post(format!("{}/console/login", self.server.base))
            .form(&[("api_key", key), ("csrf", token.as_str()), ("next", "/console")]);
        // A browser signing in again still has its session cookie.
        let cookie = match &self.session {
            Some(session) => format!("{cookie}; payrail_session={session}"),
            None => cookie,
        };
        let answer = self.send(request, Some(cookie)).await;
        if let Some(session) = answer.cookies.iter().find(|c| c.starts_with("payrail_session=")) {
            self.session = Some(session.split(';').next().expect("pair").trim_start_matches("payrail_session=").to_owned());
        }
        answer
    }

    /// The session's CSRF token, read from a page's forms.
    async fn csrf(&self) -> String {
        field(&self.get("/console/sessions").await.body, "csrf")
    }
}

/// The value of the first hidden input named `name`.
fn field(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body.find(&marker).unwrap_or_else(|| panic!("no {name} field in {body}")) + marker.len();
    body[start..].split('"').next().expect("value").to_owned()
}

async fn merchant(server: &Server, name: &str) -> (String, String) {
    let m = create_merchant(&server.state.pool, name).await.expect("merchant");
    (m.merchant_id, m.api_key)
}

#[sqlx::test(migrations = "./migrations")]
async fn signing_in_exchanges_a_key_for_a_strict_session_cookie(pool: PgPool) {
    let server = Server::start(pool).await;
    let (_, key) = merchant(&server, "Shop").await;
    let mut browser = Browser::new(&server);

    // Without a session every page sends the browser to sign in, and back afterwards.
    let page = browser.get("/console/invoices?status=paid").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/console/login?next=%2Fconsole%2Finvoices%3Fstatus%3Dpaid"));

    // A form without the sign-in cookie's token is refused before the key is looked at.
    let (_, cookie) = browser.login_token().await;
    let forged = browser
        .send(browser.client.post(format!("{}/console/login", server.base)).form(&[("api_key", key.as_str()), ("csrf", "0")]), Some(cookie))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.cookies.iter().all(|c| !c.starts_with("payrail_session=")), "{:?}", forged.cookies);

    // A wrong key: 401, the form again, no session.
    let wrong = browser.sign_in("pr_key_0000000000000000_nope").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("That API key is not valid."));
    assert!(browser.session.is_none());

    let signed_in = browser.sign_in(&key).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location.as_deref(), Some("/console"));
    let cookie = signed_in.cookies.iter().find(|c| c.starts_with("payrail_session=")).expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", &format!("Max-Age={}", SESSION_FOR.num_seconds())] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP on loopback (the test's public URL): not Secure: {cookie}");
    // Only the cookie's hash is stored.
    let secret = browser.session.clone().expect("session");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions WHERE token_hash = $1 OR csrf_token = $2")
        .bind(secret.as_bytes())
        .bind(&secret)
        .fetch_one(&server.state.pool)
        .await
        .expect("count");
    assert_eq!(stored, 0);

    let overview = browser.get("/console").await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    assert!(overview.body.contains("<h1>Overview</h1>"), "{}", overview.body);
    assert!(overview.body.contains("Invoices created per day, by outcome"));
    let policy = browser.send(browser.client.get(format!("{}/console", server.base)), None).await;
    assert_eq!(policy.status, StatusCode::OK);
    let csp = server.client.get(format!("{}/console/login", server.base)).send().await.expect("login");
    let csp = csp.headers().get("content-security-policy").expect("csp").to_str().expect("csp").to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'") && !csp.contains("script-src"), "{csp}");
}

#[sqlx::test(migrations = "./migrations")]
async fn sessions_end_with_their_key_when_idle_when_signed_out_or_revoked(pool: PgPool) {
    let server = Server::start(pool).await;
    let (_, key) = merchant(&server, "Shop").await;

    // Signing out ends the session: its cookie opens nothing afterwards.
    let mut first = Browser::new(&server);
    first.sign_in(&key).await;
    let csrf = first.csrf().await;
    assert_eq!(first.post("/console/logout", &[("csrf", "wrong")]).await.status, StatusCode::FORBIDDEN, "not without the token");
    assert_eq!(first.get("/console").await.status, StatusCode::OK);
    let out = first.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(first.get("/console").await.status, StatusCode::SEE_OTHER);

    // One session ends another from the sessions page.
    let mut a = Browser::new(&server);
    a.sign_in(&key).await;
    let mut b = Browser::new(&server);
    b.sign_in(&key).await;
    let listed = a.get("/console/sessions").await.body;
    let b_id: String = sqlx::query_scalar("SELECT id FROM console_sessions WHERE revoked_at IS NULL ORDER BY created_at DESC, id DESC LIMIT 1")
        .fetch_one(&server.state.pool)
        .await
        .expect("session");
    assert!(listed.contains(&b_id), "{listed}");
    let csrf = a.csrf().await;
    let revoked = a.post(&format!("/console/sessions/{b_id}/revoke"), &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    let (b_now, a_now) = (b.get("/console").await.status, a.get("/console").await.status);
    // Whichever of the two was newest was revoked; the other still works.
    assert!(matches!((a_now, b_now), (StatusCode::OK, StatusCode::SEE_OTHER) | (StatusCode::SEE_OTHER, StatusCode::OK)), "{a_now} {b_now}");

    // Another merchant cannot end this merchant's sessions: its sessions page does not list them,
    // and the button's URL finds nothing.
    let (_, other_key) = merchant(&server, "Other").await;
    let mut other = Browser::new(&server);
    other.sign_in(&other_key).await;
    assert!(!other.get("/console/sessions").await.body.contains(&b_id));
    let live: String = sqlx::query_scalar("SELECT id FROM console_sessions s WHERE revoked_at IS NULL AND key_id = $1 LIMIT 1")
        .bind(payrail::merchant::split_token(&key).expect("token").0)
        .fetch_one(&server.state.pool)
        .await
        .expect("live session");
    let csrf = other.csrf().await;
    assert_eq!(other.post(&format!("/console/sessions/{live}/revoke"), &[("csrf", &csrf)]).await.status, StatusCode::NOT_FOUND);

    // A read-only key's session reads, and may sign itself out, but ends no other session.
    let (status, read_only) = server.post(&key, "/v1/api_keys", json!({"name": "support", "read_only": true}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{read_only}");
    let mut reader = Browser::new(&server);
    reader.sign_in(read_only["secret"].as_str().expect("secret")).await;
    assert_eq!(reader.get("/console/invoices").await.status, StatusCode::OK);
    let csrf = reader.csrf().await;
    assert_eq!(reader.post(&format!("/console/sessions/{live}/revoke"), &[("csrf", &csrf)]).await.status, StatusCode::FORBIDDEN);
    assert!(alive(&server, &live).await, "the other session lives on");
    assert_eq!(reader.post("/console/logout", &[("csrf", &csrf)]).await.status, StatusCode::SEE_OTHER);

    // Signing in again in the same browser ends the session it had.
    let mut again = Browser::new(&server);
    again.sign_in(&key).await;
    let first = again.session.clone().expect("first session");
    again.sign_in(&key).await;
    assert_ne!(again.session.as_deref(), Some(first.as_str()));
    let stale = again.send(again.client.get(format!("{}/console", server.base)), Some(format!("payrail_session={first}"))).await;
    assert_eq!(stale.status, StatusCode::SEE_OTHER, "the replaced session is over");

    // Idle for longer than IDLE_FOR: sign in again.
    let mut idle = Browser::new(&server);
    idle.sign_in(&key).await;
    server.clock.advance(chrono::Duration::minutes(30));
    assert_eq!(idle.get("/console").await.status, StatusCode::OK, "used within the idle time");
    server.clock.advance(IDLE_FOR + chrono::Duration::seconds(1));
    assert_eq!(idle.get("/console").await.status, StatusCode::SEE_OTHER, "unused for longer than the idle time");

    // Revoking the API key ends every session it opened, at once.
    let mut keyed = Browser::new(&server);
    keyed.sign_in(&key).await;
    assert_eq!(keyed.get("/console").await.status, StatusCode::OK);
    let key_id = payrail::merchant::split_token(&key).expect("token").0;
    let (status, body) = server.send(reqwest::Method::DELETE, Some(&key), &format!("/v1/api_keys/{key_id}"), None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(keyed.get("/console").await.status, StatusCode::SEE_OTHER);
}

/// Whether session `id` is still live.
async fn alive(server: &Server, id: &str) -> bool {
    sqlx::query_scalar("SELECT revoked_at IS NULL FROM console_sessions WHERE id = $1").bind(id).fetch_one(&server.state.pool).await.expect("session")
}

/// A key's own request rate holds in the console: past its burst, a page is 429 with Retry-After.
#[sqlx::test(migrations = "./migrations")]
async fn a_keys_own_rate_holds_in_the_console(pool: PgPool) {
    let server = Server::start(pool).await;
    let (_, key) = merchant(&server, "Shop").await;
    let mut browser = Browser::new(&server);
    browser.sign_in(&key).await;
    let key_id = payrail::merchant::split_token(&key).expect("token").0;
    let (status, body) =
        server.send(reqwest::Method::PATCH, Some(&key), &format!("/v1/api_keys/{key_id}"), Some(json!({"rate_limit": {"requests_per_s": 1, "burst": 2}})), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(browser.get("/console/keys").await.status);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let limited = browser.send(browser.client.get(format!("{}/console/keys", server.base)), None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.body.contains("too many requests for this API key"), "{}", limited.body);
}

#[sqlx::test(migrations = "./migrations")]
async fn each_role_sees_its_own_pages_and_a_merchant_only_its_own_data(pool: PgPool) {
    let server = Server::start(pool).await;
    let (merchant_a, key_a) = merchant(&server, "Shop A").await;
    let (merchant_b, _) = merchant(&server, "Shop B").await;
    let now = server.clock.now();
    let mut mine = Vec::new();
    for order in ["A-1", "A-2", "A-3"] {
        let mut request = invoice_request("10.00", None);
        request.order_id = Some(order.to_owned());
        mine.push(create_invoice_at(&server.state, &merchant_a, &request, now).await.id);
    }
    let theirs = create_invoice_at(&server.state, &merchant_b, &invoice_request("99.00", None), now).await.id;

    let mut browser = Browser::new(&server);
    browser.sign_in(&key_a).await;
    let list = browser.get("/console/invoices").await;
    assert_eq!(list.status, StatusCode::OK);
    for id in &mine {
        assert!(list.body.contains(id.as_str()), "{id} listed");
    }
    assert!(!list.body.contains(theirs.as_str()), "another merchant's invoice is not listed");
    let detail = browser.get(&format!("/console/invoices/{}", mine[0])).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert!(detail.body.contains("A-1") && detail.body.contains("10.00 USD"), "{}", detail.body);
    let by_url = browser.get(&format!("/console/invoices/{theirs}")).await;
    assert_eq!(by_url.status, StatusCode::NOT_FOUND, "another merchant's invoice by URL");
    assert!(!by_url.body.contains("99.00"));
    for finance in ["/console/chains", "/console/reconciliation", "/console/trial_balance", "/console/payouts", "/console/unapplied"] {
        assert_eq!(browser.get(finance).await.status, StatusCode::FORBIDDEN, "{finance} is not a merchant's page");
    }

    // Filters, and the CSV of exactly what the page shows.
    let filtered = browser.get("/console/invoices?order_id=A-2").await;
    assert!(filtered.body.contains(mine[1].as_str()) && !filtered.body.contains(mine[0].as_str()), "{}", filtered.body);
    let csv = browser.get("/console/invoices?order_id=A-2&csv=invoices").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.content_type.starts_with("text/csv"), "{}", csv.content_type);
    let lines: Vec<&str> = csv.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "Created,Invoice,Order,Amount,Paid,Status,Rails");
    assert_eq!(lines.len(), 2, "{}", csv.body);
    assert!(lines[1].contains(mine[1].as_str()) && lines[1].contains(",A-2,10.00 USD,0.00 USD,open,"), "{}", lines[1]);
    let none = browser.get("/console/invoices?status=paid").await;
    assert!(none.body.contains("No invoice matches these filters."));
    assert_eq!(browser.get("/console/invoices?from=yesterday").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(browser.get("/console/invoices?status=bogus").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(browser.get("/console/invoices?csv=nothing").await.status, StatusCode::NOT_FOUND);
    // Customers with what they hold: a grant of 250 coins (2 decimals) shows as 2.50 coins.
    let (status, currency) = server
        .post(&key_a, "/v1/credit_currencies", json!({"code": "coins", "name": "Coins", "peg": "0.01", "peg_currency": "USD"}), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{currency}");
    let (status, customer) = server.post(&key_a, "/v1/customers", json!({"external_id": "reader-1", "email": "reader@example.com"}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{customer}");
    let customer = customer["id"].as_str().expect("customer").to_owned();
    let grant = json!({"currency": "coins", "amount_minor": "250", "source": "bonus"});
    let (status, granted) = server.post(&key_a, &format!("/v1/customers/{customer}/grants"), grant, Some("console-grant")).await;
    assert_eq!(status, StatusCode::CREATED, "{granted}");
    let customers = browser.get("/console/customers?csv=customers").await;
    let decimals = currency["decimals"].as_u64().expect("decimals");
    let shown = format!("{} coins", payrail::money::Amount::from_u64(250).to_decimal_string(u8::try_from(decimals).expect("decimals")));
    assert!(customers.body.contains(&format!("{customer},reader-1,,reader@example.com,{shown},0")), "{}", customers.body);
    for page in ["/console/balances", "/console/money_out", "/console/customers", "/console/webhooks", "/console/keys", "/console/sessions"] {
        let answer = browser.get(page).await;
        assert_eq!(answer.status, StatusCode::OK, "{page}: {}", answer.body);
    }

    // Finance sees the platform's pages and none of a merchant's.
    let finance_key = create_platform_key(&server.state.pool, Role::Finance).await.expect("finance key");
    let mut finance = Browser::new(&server);
    finance.sign_in(&finance_key).await;
    for page in ["/console", "/console/chains", "/console/reconciliation", "/console/trial_balance", "/console/payouts", "/console/unapplied"] {
        let answer = finance.get(page).await;
        assert_eq!(answer.status, StatusCode::OK, "{page}: {}", answer.body);
    }
    assert_eq!(finance.get(&format!("/console/invoices/{}", mine[0])).await.status, StatusCode::FORBIDDEN);
    // The trial balance: each account's balance on its side, and debits equal credits per asset.
    let entry = crate::common::transfer("console-tb", AccountCode::stripe(payrail::money::Fiat::USD), AccountCode::merchant(&merchant_a), crate::common::USD, 1_250);
    server.state.ledger.post_now(&entry).await.expect("entry");
    let balance_csv = finance.get("/console/trial_balance?csv=accounts").await;
    assert!(balance_csv.body.starts_with("Account,Asset,Debit,Credit\r\n"), "{}", balance_csv.body);
    assert!(balance_csv.body.contains("\r\nassets:stripe:usd,USD by card,12.50 USD,\r\n"), "{}", balance_csv.body);
    assert!(balance_csv.body.contains(&format!("\r\nliabilities:merchant:{merchant_a},USD by card,,12.50 USD\r\n")), "{}", balance_csv.body);
    // The customer's credits are written in the currency's decimals, on the lot's credit side.
    assert!(balance_csv.body.contains(&format!(",coins ({merchant_a}),,{shown}\r\n")), "{}", balance_csv.body);
    let totals = finance.get("/console/trial_balance?csv=totals").await;
    assert!(totals.body.contains("\r\nUSD by card,12.50 USD,12.50 USD,yes\r\n"), "{}", totals.body);
    assert!(totals.body.lines().skip(1).all(|l| l.ends_with(",yes")), "{}", totals.body);
    // A run over a chain nobody configured is refused with the reconciler's reason.
    let csrf = finance.csrf().await;
    let refused = finance.post("/console/reconciliation", &[("csrf", &csrf), ("chain", "eip155:999999"), ("from_block", "0"), ("to_block", "5")]).await;
    assert!(refused.status.is_client_error(), "{}: {}", refused.status, refused.body);
    let backwards = finance.post("/console/reconciliation", &[("csrf", &csrf), ("chain", "eip155:1"), ("from_block", "9"), ("to_block", "5")]).await;
    assert_eq!(backwards.status, StatusCode::BAD_REQUEST);
    let forged = finance.post("/console/reconciliation", &[("csrf", "x"), ("chain", "eip155:1"), ("from_block", "0")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciliation_runs").fetch_one(&server.state.pool).await.expect("runs");
    assert_eq!(runs, 0, "nothing was started");
}

#[sqlx::test(migrations = "./migrations")]
async fn an_invoice_page_replays_its_webhook_event_only_with_the_form_token(pool: PgPool) {
    let server = Server::start(pool).await;
    let (merchant_id, key) = merchant(&server, "Shop").await;
    let (status, endpoint) = server
        .post(&key, "/v1/webhook_endpoints", json!({"url": "https://hooks.example.com/payrail", "events": ["*"]}), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{endpoint}");
    let invoice = create_invoice_at(&server.state, &merchant_id, &invoice_request("10.00", None), server.clock.now()).await;
    let (status, voided) = server.post(&key, &format!("/v1/invoices/{}/void", invoice.id), json!({}), None).await;
    assert_eq!(status, StatusCode::OK, "{voided}");
    let event: String = sqlx::query_scalar("SELECT event_id FROM outbox WHERE object_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(&invoice.id)
        .fetch_one(&server.state.pool)
        .await
        .expect("an event about the invoice");

    let mut browser = Browser::new(&server);
    browser.sign_in(&key).await;
    let page = browser.get(&format!("/console/invoices/{}", invoice.id)).await;
    assert!(page.body.contains(event.as_str()), "{}", page.body);
    let action = format!("/console/events/{event}/replay?back=/console/invoices/{}", invoice.id);
    assert!(page.body.contains(&action.replace('&', "&amp;")), "the event has its button");

    let replays = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id WHERE o.event_id = $1 AND d.replay")
            .bind(&event)
            .fetch_one(&server.state.pool)
            .await
            .expect("count")
    };
    let forged = browser.post(&action, &[("csrf", "0000")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(replays().await, 0, "a forged form replays nothing");
    let csrf = field(&page.body, "csrf");
    let sent = browser.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
    assert_eq!(sent.location.as_deref(), Some(format!("/console/invoices/{}", invoice.id).as_str()));
    assert_eq!(replays().await, 1, "one delivery queued for the one endpoint");

    // Another merchant's session cannot replay it.
    let (_, other_key) = merchant(&server, "Other").await;
    let mut other = Browser::new(&server);
    other.sign_in(&other_key).await;
    let csrf = other.csrf().await;
    assert_eq!(other.post(&action, &[("csrf", &csrf)]).await.status, StatusCode::NOT_FOUND);
}

/// POSTs `body` to the dev stack with `key`; the JSON answer.
async fn call(client: &reqwest::Client, base: &str, key: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let response = client.post(format!("{base}{path}")).bearer_auth(key).json(&body).send().await.expect("request");
    let status = response.status();
    let answer: serde_json::Value = response.json().await.expect("json");
    assert!(status.is_success(), "POST {path}: {status} {answer}");
    answer
}

#[tokio::test]
async fn chromium_uses_the_console_with_each_role() {
    use crate::common::browser::{browser_modules, chromium, repo, tell, DevStack};
    let _dev_stack = crate::common::DEV_STACK.lock().await;
    let Some(chromium) = chromium() else {
        tell("SKIPPED chromium_uses_the_console_with_each_role: no Chromium (set PAYRAIL_CHROMIUM or install Debian's chromium; scripts/test does both)");
        return;
    };
    let modules = browser_modules();
    let stack = DevStack::start().await;
    let client = reqwest::Client::new();
    let base = stack.base.as_str();

    // A creator with a fifth of the paid invoice, a webhook endpoint nobody listens on (its
    // deliveries fail), an invoice paid in ETH on Ethereum and one left open.
    let creator = call(&client, base, &stack.key, "/v1/creators", json!({"name": "Console creator"})).await;
    let creator_key = creator["api_key"].as_str().expect("creator key").to_owned();
    let creator_id = creator["id"].as_str().expect("creator id").to_owned();
    call(&client, base, &stack.key, "/v1/webhook_endpoints", json!({"url": "http://127.0.0.1:9/payrail", "events": ["*"]})).await;
    let paid = call(
        &client,
        base,
        &stack.key,
        "/v1/invoices",
        json!({"amount": "20.00", "currency": "USD", "order_id": "console-paid", "splits": [{"creator": creator_id, "bps": 2000}]}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let open = call(&client, base, &stack.key, "/v1/invoices", json!({"amount": "5.00", "currency": "USD", "order_id": "console-open"})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    stack.pay(&paid, "eip155:1/slip44:60").await;

    // Another merchant, with an invoice of its own.
    let pool = PgPool::connect(stack.database_url()).await.expect("the dev stack's database");
    let (_, other_key) = {
        let m = create_merchant(&pool, "Other shop").await.expect("merchant");
        (m.merchant_id, m.api_key)
    };
    let other = call(&client, base, &other_key, "/v1/invoices", json!({"amount": "7.00", "currency": "USD"})).await["id"].as_str().expect("id").to_owned();
    pool.close().await;

    let shots = repo().join("target");
    std::fs::create_dir_all(&shots).expect("target dir");
    let mut node = tokio::process::Command::new("node");
    node.arg(repo().join("tests/browser/console.mjs"))
        .current_dir(repo())
        .env("PAYRAIL_CHROMIUM", &chromium)
        .env("PAYRAIL_BROWSER_MODULES", &modules)
        .env("PAYRAIL_API", base)
        .env("PAYRAIL_API_KEY", &stack.key)
        .env("PAYRAIL_FINANCE_KEY", &stack.finance)
        .env("PAYRAIL_CREATOR_KEY", &creator_key)
        .env("PAYRAIL_PAID_INVOICE", &paid)
        .env("PAYRAIL_OPEN_INVOICE", &open)
        .env("PAYRAIL_OTHER_INVOICE", &other)
        .env("PAYRAIL_SCREENSHOT_DIR", &shots)
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), node.output()).await.expect("browser test finishes").expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        tell(&format!("console.mjs> {line}"));
    }
    assert!(out.status.success(), "console.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("console.mjs: done"), "{stdout}");
    assert!(stdout.contains("console.mjs: run finished"), "{stdout}");
    for name in ["invoices", "invoice", "overview", "balances", "finance", "chains", "reconciliation", "trial-balance", "creator"] {
        let shot = shots.join(format!("console-{name}.png"));
        let bytes = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", shot.display());
    }
    drop(stack);
}

/// `[server] console = false`: the listener serves the API and checkout, and no console page.
#[sqlx::test(migrations = "./migrations")]
async fn the_console_can_be_left_off_the_listener(pool: PgPool) {
    let (state, _) = crate::common::state_with_clock(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let limits = payrail::api::HttpLimits { serve_console: false, ..payrail::api::HttpLimits::default() };
    let app = payrail::app::http(state, limits);
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await });
    for path in ["/console", "/console/login", "/console/style.css"] {
        let response = reqwest::get(format!("{base}{path}")).await.expect("get");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(reqwest::get(format!("{base}/healthz")).await.expect("get").status(), StatusCode::OK);
}
