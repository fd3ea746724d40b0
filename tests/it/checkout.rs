//! The hosted checkout page and its public status, over a real socket without an API key; and the
//! page in headless Chromium, paid on the dev stack (`payrail dev`) with `payrail pay`.


use std::time::{Duration, Instant};

use crate::common::browser::{browser_modules, chromium, repo, tell, DevStack, BIN};
use crate::common::{Server, BTC, USDC_POLYGON};
use payrail::invoice::{apply_payment, ObservedPayment};
use payrail::merchant::create_merchant;
use payrail::money::{Amount, AssetId};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

const ETH: &str = "eip155:1/slip44:60";

/// The server and one merchant's key.
struct Rig {
    server: Server,
    key: String,
}

impl std::ops::Deref for Rig {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

async fn start(pool: PgPool, merchant_name: &str) -> Rig {
    let server = Server::start(pool).await;
    let merchant = create_merchant(&server.state.pool, merchant_name).await.expect("merchant");
    Rig { server, key: merchant.api_key }
}

/// A response read whole: status, headers and body.
struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

impl Rig {
    /// Creates an invoice through the merchant API (the only call here with a key).
    async fn invoice(&self, body: Value) -> Value {
        let (status, created) = self.post(&self.key, "/v1/invoices", body, None).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    /// A public GET: no Authorization header.
    async fn page(&self, path: &str) -> Page {
        let response = self.request(reqwest::Method::GET, None, path).send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        Page { status, headers, body: response.text().await.expect("body") }
    }

    async fn status(&self, id: &str) -> Value {
        let page = self.page(&format!("/pay/{id}/status")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.header("content-type").starts_with("application/json"));
        serde_json::from_str(&page.body).expect("status json")
    }

    async fn pay(&self, invoice: &str, asset: &str, tx: &str, amount: Amount, confirmations: u32) {
        let asset: AssetId = asset.parse().expect("asset");
        let payment = ObservedPayment {
            invoice_id: invoice.to_owned(),
            chain: asset.chain().clone(),
            asset,
            tx_ref: format!("eip155:1:{tx}:native"),
            address: None,
            amount,
            confirmations,
            confirmations_required: 3,
            block: None,
        };
        let mut db = self.state.pool.begin().await.expect("begin");
        apply_payment(&mut db, &self.state.ledger, &payment, self.state.clock.now()).await.expect("apply");
        db.commit().await.expect("commit");
    }
}

fn option<'a>(invoice: &'a Value, asset: &str) -> &'a Value {
    invoice["payment_options"]
        .as_array()
        .and_then(|options| options.iter().find(|o| o["asset"] == asset))
        .unwrap_or_else(|| panic!("no {asset} option in {invoice}"))
}

fn minor(value: &Value) -> u128 {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an integer string: {value}"))
}

/// `minor` units with `decimals` decimals, as the API writes them.
fn decimal(minor: u128, decimals: u32) -> String {
    let scale = 10u128.pow(decimals);
    if decimals == 0 {
        minor.to_string()
    } else {
        format!("{}.{:0width$}", minor / scale, minor % scale, width = decimals as usize)
    }
}

#[sqlx::test]
async fn page_shows_the_escaped_merchant_address_exact_amount_and_qr_code(pool: PgPool) {
    let server = start(pool, "<script>alert('x')</script> & Sons").await;
    let invoice = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH, USDC_POLYGON, BTC],"order_id":"A-7"})).await;
    let id = invoice["id"].as_str().expect("id");
    let eth = option(&invoice, ETH);

    let page = server.page(&format!("/pay/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.header("content-type").starts_with("text/html"), "{}", page.header("content-type"));
    let body = &page.body;
    assert!(body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Sons"), "{body}");
    assert!(!body.contains("<script>alert"), "merchant name not escaped");
    assert!(body.contains("<p class=\"total\" id=\"total\" data-currency=\"USD\">$25.00</p>"), "{body}");
    assert!(body.contains("<html lang=\"en\" dir=\"ltr\">"), "English without a locale or Accept-Language");
    // The first option with an address is selected: ETH on Ethereum.
    assert!(body.contains(&format!("<option value=\"{ETH}\" selected>ETH on Ethereum</option>")), "{body}");
    assert!(body.contains("USDC on Polygon"));
    // The dev stack follows regtest; without a descriptor the merchant has no Bitcoin address.
    assert!(body.contains("BTC on Bitcoin regtest (not available yet)"));
    let address = eth["address"].as_str().expect("address");
    assert!(body.contains(&format!("<code id=\"pay-address\">{address}</code>")));
    // 25 USD at 3000 USD/ETH is 0.008333333333333334 ETH: the payer is asked for 0.008334.
    let amount = eth["amount"].as_str().expect("amount");
    assert_eq!(amount, "0.008334");
    assert_eq!((eth["amount_minor"].as_str(), eth["amount_exact_minor"].as_str()), (Some("8334000000000000"), Some("8333333333333334")));
    assert!(eth["uri"].as_str().is_some_and(|uri| uri.contains("value=8334000000000000")), "{eth}");
    assert!(body.contains(&format!("<code id=\"pay-amount\">{amount}</code>")));
    assert!(body.contains(&format!("data-copy=\"{amount}\"")));
    assert!(body.contains("<div class=\"qr\" id=\"qr\"><svg class=\"qr-code\""), "no inline QR code");
    let uri = eth["uri"].as_str().expect("uri");
    assert!(body.contains(&format!("href=\"{uri}\"")), "no wallet link to {uri}");
    assert!(body.contains("Awaiting payment"));
    // What stays private to the merchant is not on the page.
    assert!(!body.contains("A-7") && !body.contains("mer_"), "private fields leaked");

    // Security headers; the page's script and style carry the policy's nonce.
    let csp = page.header("content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let nonce = csp
        .split("script-src 'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no script nonce in {csp}"));
    assert!(nonce.len() >= 16);
    assert!(body.contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(body.contains(&format!("<style nonce=\"{nonce}\">")));
    assert!(!body.contains(" style=\""), "inline style attributes would be refused by the policy");
    assert!(!body.contains(" src=") && !body.contains("href=\"http"), "external resource on the page");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(page.header("cache-control"), "no-store");
    // A new nonce for every response.
    let again = server.page(&format!("/pay/{id}")).await;
    assert_ne!(again.header("content-security-policy"), csp);
}

#[sqlx::test]
async fn asset_parameter_selects_the_option(pool: PgPool) {
    let server = start(pool, "Shop").await;
    let invoice = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH, USDC_POLYGON, BTC]})).await;
    let id = invoice["id"].as_str().expect("id");
    let usdc = option(&invoice, USDC_POLYGON);

    let page = server.page(&format!("/pay/{id}?asset={USDC_POLYGON}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("<option value=\"{USDC_POLYGON}\" selected>USDC on Polygon</option>")));
    assert!(!page.body.contains(&format!("<option value=\"{ETH}\" selected>")));
    assert!(page.body.contains("<code id=\"pay-amount\">25.00</code>"));
    assert!(page.body.contains(&format!("<code id=\"pay-address\">{}</code>", usdc["address"].as_str().expect("address"))));
    assert!(page.body.contains("To this address on Polygon"));
    let uri = usdc["uri"].as_str().expect("uri");
    assert!(uri.contains('&'));
    assert!(page.body.contains(&format!("href=\"{}\"", uri.replace('&', "&amp;"))), "the wallet link is not escaped");
    assert!(page.body.contains("<svg class=\"qr-code\""));

    // Bitcoin has no deposit address yet: no QR code, a clear note.
    let page = server.page(&format!("/pay/{id}?asset={BTC}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("<option value=\"{BTC}\" selected>")));
    assert!(page.body.contains("Paying in BTC on Bitcoin regtest is not available yet"));
    assert!(!page.body.contains("<svg"));

    // An asset the invoice does not offer falls back to the first payable option.
    let page = server.page(&format!("/pay/{id}?asset=eip155:1/erc20:0x0000000000000000000000000000000000000001")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("<option value=\"{ETH}\" selected>")));
}

#[sqlx::test]
async fn status_tracks_a_payment_through_its_confirmations(pool: PgPool) {
    let server = start(pool, "Shop").await;
    let invoice = server
        .invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH],"order_id":"secret-order","metadata":{"customer":"c-42"}}))
        .await;
    let id = invoice["id"].as_str().expect("id");
    let due = Amount::from_u128(minor(&option(&invoice, ETH)["amount_minor"]));

    let status = server.status(id).await;
    assert_eq!(status["status"], "open");
    assert_eq!(status["state"], "open");
    assert_eq!(status["amount"], "25.00");
    assert_eq!(status["currency"], "USD");
    assert_eq!(status["amount_paid"], "0.00");
    assert_eq!(status["amount_remaining"], "25.00");
    assert_eq!(status["expires_at"], invoice["expires_at"]);
    assert_eq!(status["payments"], json!([]));
    let text = status.to_string();
    for private in ["merchant_id", "order_id", "metadata", "secret-order", "c-42", "mer_"] {
        assert!(!text.contains(private), "{private} in {text}");
    }

    server.pay(id, ETH, "0xaa", due, 1).await;
    let status = server.status(id).await;
    assert_eq!(status["status"], "processing");
    assert_eq!(status["state"], "processing");
    let payment = &status["payments"][0];
    assert_eq!(payment["asset"], ETH);
    assert_eq!(payment["amount"], "0.008334");
    assert_eq!((payment["confirmations"].as_u64(), payment["confirmations_required"].as_u64()), (Some(1), Some(3)));
    assert_eq!(payment["status"], "seen");
    assert!(status["message"].as_str().expect("message").contains("Confirmations: 1/3"), "{status}");
    let page = server.page(&format!("/pay/{id}")).await;
    assert!(page.body.contains("class=\"checkout state-processing\""));
    assert!(page.body.contains("Confirmations: 1/3"));
    assert!(page.body.contains("<li>0.008334 ETH: 1/3 confirmations</li>"));

    server.pay(id, ETH, "0xaa", due, 2).await;
    assert!(server.status(id).await["message"].as_str().expect("message").contains("Confirmations: 2/3"));

    server.pay(id, ETH, "0xaa", due, 3).await;
    let status = server.status(id).await;
    assert_eq!(status["status"], "paid");
    assert_eq!(status["state"], "paid");
    assert_eq!(status["headline"], "Paid");
    assert_eq!(status["amount_paid"], "25.00");
    assert_eq!(status["amount_remaining"], "0.00");
    assert_eq!(status["payments"][0]["status"], "confirmed");
    let page = server.page(&format!("/pay/{id}")).await;
    assert!(page.body.contains("class=\"checkout state-paid\""));
    assert!(page.body.contains("<h1 id=\"status-headline\">Paid</h1>"));
    // Paid: the address is no longer offered.
    assert!(!page.body.contains("id=\"pay-address\"") && !page.body.contains("<svg"));

    // Paid twice: overpaid, with the surplus named.
    server.pay(id, ETH, "0xbb", due, 3).await;
    let status = server.status(id).await;
    assert_eq!(status["state"], "overpaid");
    assert_eq!(status["amount_paid"], "50.00");
    assert!(status["message"].as_str().expect("message").contains("extra $25.00"), "{status}");
}

/// An open `/pay/{id}/events` stream, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(server: &Rig, id: &str) -> Self {
        let response = server.request(reqwest::Method::GET, None, &format!("/pay/{id}/events")).send().await.expect("events");
        assert_eq!(response.status(), StatusCode::OK);
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Events { response, buffer: String::new() }
    }

    /// The next `status` event's JSON; `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if block.lines().any(|l| l == "event: status") {
                    return Some(serde_json::from_str(&data).expect("status json"));
                }
                continue; // a keep-alive comment
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk()).await.expect("an event within 30 s").expect("read")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// The page's event stream: the status now, then each change as it commits (woken through the
/// outbox, not by polling), and the end after a final state. Prints how long each change took to
/// arrive.
#[sqlx::test]
async fn the_event_stream_pushes_each_change_and_ends_when_final(pool: PgPool) {
    let server = start(pool, "Shop").await;
    let invoice = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH]})).await;
    let id = invoice["id"].as_str().expect("id");
    let due = Amount::from_u128(minor(&option(&invoice, ETH)["amount_minor"]));
    let missing = server.page("/pay/inv_0000000000000000/events").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let mut events = Events::open(&server, id).await;
    assert_eq!(events.next().await.expect("first")["state"], "open");
    let mut waits = Vec::new();
    for (tx, confirmations, state) in [("0xaa", 1, "processing"), ("0xaa", 3, "paid"), ("0xbb", 3, "overpaid")] {
        let started = Instant::now();
        server.pay(id, ETH, tx, due, confirmations).await;
        let status = events.next().await.expect("an event");
        waits.push(started.elapsed());
        assert_eq!(status["state"], state, "{status}");
        assert!(status["now"].is_string() && status["payments"].is_array(), "the same JSON as /status: {status}");
    }
    assert!(events.next().await.is_none(), "overpaid is final: the stream ends");
    tell(&format!("checkout events: commit → event {waits:?}"));
}

#[sqlx::test]
async fn underpaid_shows_what_remains_in_fiat_and_in_the_asset(pool: PgPool) {
    let server = start(pool, "Shop").await;
    let invoice = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH, USDC_POLYGON]})).await;
    let id = invoice["id"].as_str().expect("id");
    let eth = option(&invoice, ETH);
    let quoted = minor(&eth["amount_minor"]);
    let invoice_minor = minor(&invoice["amount_minor"]);

    // 0.004 ETH of 0.008334 confirmed: worth floor(4e15 × 2500 / quoted) cents.
    let sent: u128 = 4_000_000_000_000_000;
    server.pay(id, ETH, "0xcc", Amount::from_u128(sent), 3).await;
    let paid_cents = sent * invoice_minor / quoted;
    let remaining_cents = invoice_minor - paid_cents;
    assert_eq!((paid_cents, remaining_cents), (1199, 1301));
    // remaining_asset = ceil(remaining_fiat × option.amount_minor / invoice.amount_minor), then up
    // to the six decimals a payer types (0.0043370136 → 0.004338).
    let exact_eth = (remaining_cents * quoted).div_ceil(invoice_minor);
    assert_eq!(decimal(exact_eth, 18), "0.004337013600000000");
    let remaining_eth = exact_eth.div_ceil(1_000_000_000_000) * 1_000_000_000_000;
    let remaining_usdc = (remaining_cents * minor(&option(&invoice, USDC_POLYGON)["amount_minor"])).div_ceil(invoice_minor);
    assert_eq!(decimal(remaining_eth, 18), "0.004338000000000000");
    assert_eq!(decimal(remaining_usdc, 6), "13.010000");

    let status = server.page_status(id, ETH).await;
    assert_eq!(status["status"], "open");
    assert_eq!(status["state"], "underpaid");
    assert_eq!(status["amount_paid"], "11.99");
    assert_eq!(status["amount_remaining"], "13.01");
    assert_eq!(status["headline"], "Partly paid");
    let message = status["message"].as_str().expect("message");
    assert!(message.contains("$11.99 received, $13.01 still due"), "{message}");
    assert!(message.contains("send 0.004338 ETH on Ethereum more"), "{message}");
    let options = status["payment_options"].as_array().expect("options");
    assert_eq!(options[0]["asset"], ETH);
    assert_eq!(options[0]["amount_remaining"], "0.004338");
    assert_eq!(minor(&options[0]["amount_remaining_minor"]), remaining_eth);
    assert_eq!(options[1]["amount_remaining"], "13.01");

    // The page asks for the remainder, and its QR code and wallet link carry it.
    let page = server.page(&format!("/pay/{id}?asset={ETH}")).await;
    assert!(page.body.contains("class=\"checkout state-underpaid\""));
    assert!(page.body.contains("<code id=\"pay-amount\">0.004338</code>"), "{}", page.body);
    assert!(page.body.contains(&format!("?value={remaining_eth}\"")), "wallet link not for the remainder");
    let page = server.page(&format!("/pay/{id}?asset={USDC_POLYGON}")).await;
    assert!(page.body.contains("<code id=\"pay-amount\">13.01</code>"));
    assert!(page.body.contains("send 13.01 USDC on Polygon more"));
    assert!(page.body.contains(&format!("data-amount-minor=\"{remaining_usdc}\"")));
}

impl Rig {
    async fn page_status(&self, id: &str, asset: &str) -> Value {
        let page = self.page(&format!("/pay/{id}/status?asset={asset}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        serde_json::from_str(&page.body).expect("json")
    }
}

#[sqlx::test]
async fn expired_and_void_invoices_offer_no_address(pool: PgPool) {
    let server = start(pool, "Shop").await;
    let expiring = server.invoice(json!({"amount":"10.00","currency":"USD","accepted":[ETH],"expires_in":900})).await;
    let id = expiring["id"].as_str().expect("id");
    server.clock.advance(chrono::Duration::seconds(901));
    let status = server.status(id).await;
    assert_eq!((status["status"].as_str(), status["state"].as_str()), (Some("expired"), Some("expired")));
    let page = server.page(&format!("/pay/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<h1 id=\"status-headline\">Expired</h1>"));
    assert!(page.body.contains("Do not send anything"));
    assert!(!page.body.contains("id=\"pay-address\""));

    let voided = server.invoice(json!({"amount":"10.00","currency":"USD","accepted":[ETH]})).await;
    let id = voided["id"].as_str().expect("id");
    let response = server
        .client
        .post(format!("{}/v1/invoices/{id}/void", server.base))
        .bearer_auth(&server.key)
        .send()
        .await
        .expect("void");
    assert_eq!(response.status(), StatusCode::OK);
    let status = server.status(id).await;
    assert_eq!(status["state"], "void");
    let page = server.page(&format!("/pay/{id}")).await;
    assert!(page.body.contains("<h1 id=\"status-headline\">Cancelled</h1>"));
    assert!(!page.body.contains("id=\"pay-address\""));
}

#[sqlx::test]
async fn unknown_and_ill_formed_ids_are_not_found(pool: PgPool) {
    let server = start(pool, "Shop").await;
    for id in ["inv_000000000000000000000000", "inv_x", "nope", "%3Cscript%3E", "mer_000000000000000000000000"] {
        let page = server.page(&format!("/pay/{id}")).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{id}");
        assert!(page.header("content-type").starts_with("text/html"));
        assert!(page.body.contains("Invoice not found"));
        assert!(!page.body.contains("<script"), "{id}: {}", page.body);
        assert!(page.header("content-security-policy").contains("default-src 'none'"));
        let status = server.page(&format!("/pay/{id}/status")).await;
        assert_eq!(status.status, StatusCode::NOT_FOUND, "{id}");
        let body: Value = serde_json::from_str(&status.body).expect("json");
        assert_eq!(body["error"]["code"], "not_found");
    }
}

#[sqlx::test]
async fn no_api_key_is_needed_and_a_bad_one_is_ignored(pool: PgPool) {
    let server = start(pool, "Shop").await;
    let invoice = server.invoice(json!({"amount":"5.00","currency":"USD","accepted":[ETH]})).await;
    let id = invoice["id"].as_str().expect("id");
    // The merchant API refuses a request without a key; the checkout does not ask for one.
    assert_eq!(server.page(&format!("/v1/invoices/{id}")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.page(&format!("/pay/{id}")).await.status, StatusCode::OK);
    assert_eq!(server.page(&format!("/pay/{id}/status")).await.status, StatusCode::OK);
    let response = server
        .client
        .get(format!("{}/pay/{id}/status", server.base))
        .bearer_auth("pr_not_a_key")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
}

// ---- the page in Chromium, on the dev stack ----

#[tokio::test]
async fn chromium_pays_an_invoice_and_claims_its_refund_on_the_dev_stack() {
    let _dev_stack = crate::common::DEV_STACK.lock().await;
    let Some(chromium) = chromium() else {
        tell(
            "SKIPPED chromium_pays_an_invoice_and_claims_its_refund_on_the_dev_stack: no Chromium \
             (set PAYRAIL_CHROMIUM or install Debian's chromium; scripts/test does both)",
        );
        return;
    };
    let modules = browser_modules();
    let stack = DevStack::start().await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/v1/invoices", stack.base))
        .bearer_auth(&stack.key)
        .json(&json!({"amount":"25.00","currency":"USD","redirect_url":format!("{}/healthz?order=A-1", stack.base)}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().unwrap_or_else(|| panic!("no id in {created}")).to_owned();

    let shots = repo().join("target");
    std::fs::create_dir_all(&shots).expect("target dir");
    let script = repo().join("tests/browser/checkout.mjs");
    let mut node = tokio::process::Command::new("node");
    node.arg(&script)
        .current_dir(repo())
        .env("PAYRAIL_CHROMIUM", &chromium)
        .env("PAYRAIL_BROWSER_MODULES", &modules)
        .env("PAYRAIL_API", &stack.base)
        .env("PAYRAIL_API_KEY", &stack.key)
        .env("PAYRAIL_INVOICE", &id)
        .env("PAYRAIL_BIN", BIN)
        .env("PAYRAIL_SCREENSHOT_DIR", &shots)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), node.output()).await.expect("browser test finishes").expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Screenshot paths and progress, for whoever reads the log.
    for line in stdout.lines() {
        tell(&format!("checkout.mjs> {line}"));
    }
    assert!(out.status.success(), "checkout.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("checkout.mjs: paid"));
    assert!(stdout.contains("checkout.mjs: refund paid"), "{stdout}");
    assert!(stdout.contains(&format!("returned to {}/healthz?order=A-1", stack.base)), "{stdout}");
    for name in ["open", "fr", "es", "de", "paid", "refund-claim", "refund-paid"] {
        let shot = shots.join(format!("checkout-{name}.png"));
        let bytes = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", shot.display());
    }

    // The merchant API agrees.
    let shown: Value = client
        .get(format!("{}/v1/invoices/{id}", stack.base))
        .bearer_auth(&stack.key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["status"], "refunded", "paid, then refunded in full by claim link: {shown}");
    drop(stack);
}

/// A page read with an `Accept-Language` header.
async fn page_in(server: &Rig, path: &str, accept_language: &str) -> Page {
    let response = server
        .request(reqwest::Method::GET, None, path)
        .header("accept-language", accept_language)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    Page { status, headers, body: response.text().await.expect("body") }
}

/// The invoice's `locale` is the page's language unless the payer picks another (`?locale=`);
/// without one the browser's `Accept-Language` chooses; the status, its stream and the pages
/// without an invoice follow the same choice.
#[sqlx::test]
async fn the_page_speaks_the_invoices_locale_the_payers_choice_or_the_browsers(pool: PgPool) {
    let server = start(pool, "Boutique").await;
    let french = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH],"locale":"fr-CA"})).await;
    assert_eq!(french["locale"], "fr", "a regional tag is stored as the language it names");
    let id = french["id"].as_str().expect("id");

    // The merchant's choice wins over the browser's.
    let page = page_in(&server, &format!("/pay/{id}"), "de-DE,de;q=0.9").await;
    let body = &page.body;
    assert!(body.contains("<html lang=\"fr\" dir=\"ltr\">"), "{body}");
    assert!(body.contains("<title>Payer 25,00\u{a0}$US à Boutique</title>"), "{body}");
    assert!(body.contains("<h1 id=\"status-headline\">En attente du paiement</h1>"), "{body}");
    assert!(body.contains("<dt>Envoyez exactement</dt>"), "{body}");
    assert!(body.contains("<option value=\"fr\" lang=\"fr\" selected>Français</option>"), "{body}");
    // The status and event stream the page reads are asked in the page's language.
    assert!(body.contains(&format!("data-status-url=\"{id}/status?locale=fr&amp;asset=")), "{body}");
    // Crypto amounts are written as wallets write them, fiat as the language does.
    assert!(body.contains(&format!("<code id=\"pay-amount\">{}</code>", option(&french, ETH)["amount"].as_str().expect("amount"))));
    assert!(body.contains("1 ETH = 3\u{202f}000\u{a0}$US."), "{body}");

    // The payer's own pick wins over both.
    let page = page_in(&server, &format!("/pay/{id}?locale=ja"), "de").await;
    assert!(page.body.contains("<html lang=\"ja\" dir=\"ltr\">"), "{}", page.body);
    assert!(page.body.contains("お支払いをお待ちしています"), "{}", page.body);
    let status: Value = serde_json::from_str(&page_in(&server, &format!("/pay/{id}/status?locale=ja"), "de").await.body).expect("json");
    assert_eq!((status["locale"].as_str(), status["headline"].as_str()), (Some("ja"), Some("お支払いをお待ちしています")));
    // An unknown pick is ignored, not an error.
    let status: Value = serde_json::from_str(&page_in(&server, &format!("/pay/{id}/status?locale=xx"), "de").await.body).expect("json");
    assert_eq!(status["locale"], "fr");

    // Without a locale on the invoice, the browser chooses; English when it names nothing spoken.
    let plain = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH]})).await;
    let plain_id = plain["id"].as_str().expect("id");
    assert!(plain["locale"].is_null());
    let german = page_in(&server, &format!("/pay/{plain_id}"), "ko, de-AT;q=0.8, en;q=0.5").await;
    assert!(german.body.contains("<html lang=\"de\""), "{}", german.body);
    assert!(german.body.contains("Warten auf Zahlung"), "{}", german.body);
    assert!(german.body.contains("25,00\u{a0}$"), "{}", german.body);
    let status: Value = serde_json::from_str(&page_in(&server, &format!("/pay/{plain_id}/status"), "zh-CN").await.body).expect("json");
    assert_eq!((status["locale"].as_str(), status["headline"].as_str()), (Some("zh-CN"), Some("等待付款")));
    let korean = page_in(&server, &format!("/pay/{plain_id}"), "ko").await;
    assert!(korean.body.contains("<html lang=\"en\""));

    // The first event of the stream is worded like the page.
    let response = server
        .request(reqwest::Method::GET, None, &format!("/pay/{plain_id}/events"))
        .header("accept-language", "es")
        .send()
        .await
        .expect("events");
    let mut events = Events { response, buffer: String::new() };
    let first = events.next().await.expect("a first event");
    assert_eq!((first["locale"].as_str(), first["headline"].as_str()), (Some("es"), Some("Esperando el pago")));

    // A page without an invoice speaks the browser's language.
    let missing = page_in(&server, "/pay/inv_doesnotexist0000000000", "pt-BR").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("Fatura não encontrada"), "{}", missing.body);
}

/// The invoice total in each of the four currencies, as English, French and Japanese write it.
#[sqlx::test]
async fn the_total_is_written_as_each_language_writes_its_currency(pool: PgPool) {
    let server = Server::start_with(pool, |state| {
        let rates = [("USD", "3000"), ("EUR", "2750"), ("NGN", "4500000"), ("CNY", "21000")]
            .map(|(fiat, rate)| (("ETH".to_owned(), fiat.to_owned()), rate.parse().expect("rate")));
        state.rates = std::sync::Arc::new(payrail::rates::FixedFeed::new(rates));
    })
    .await;
    let merchant = create_merchant(&server.state.pool, "Shop").await.expect("merchant");
    let server = Rig { server, key: merchant.api_key };
    let expected = [
        ("en", [("USD", "$1,234.50"), ("EUR", "€1,234.50"), ("NGN", "NGN\u{a0}1,234.50"), ("CNY", "CN¥1,234.50")]),
        ("fr", [("USD", "1\u{202f}234,50\u{a0}$US"), ("EUR", "1\u{202f}234,50\u{a0}€"), ("NGN", "1\u{202f}234,50\u{a0}NGN"), ("CNY", "1\u{202f}234,50\u{a0}CNY")]),
        ("ja", [("USD", "$1,234.50"), ("EUR", "€1,234.50"), ("NGN", "NGN\u{a0}1,234.50"), ("CNY", "元\u{a0}1,234.50")]),
    ];
    for (locale, currencies) in expected {
        for (currency, written) in currencies {
            let invoice = server.invoice(json!({"amount":"1234.50","currency":currency,"accepted":[ETH],"locale":locale})).await;
            let page = server.page(&format!("/pay/{}", invoice["id"].as_str().expect("id"))).await;
            let total = page.body.split("id=\"total\"").nth(1).and_then(|rest| rest.split("</p>").next()).unwrap_or_default();
            assert_eq!(total, format!(" data-currency=\"{currency}\">{written}"), "{locale} {currency}");
        }
    }
}

/// What the merchant asks of the checkout per invoice is checked, stored and shown: the way back
/// once settled, the payer's e-mail, the tolerance; each malformed value is a 422 naming its field.
#[sqlx::test]
async fn checkout_options_are_checked_stored_and_shown(pool: PgPool) {
    let server = start(pool, "Shop").await;
    for (field, value) in [
        ("redirect_url", json!("javascript:alert(1)")),
        ("redirect_url", json!("http://shop.example/done")),
        ("redirect_url", json!("https://user:pw@shop.example/")),
        ("redirect_url", json!("https://10.1.2.3/")),
        ("redirect_url", json!(format!("https://shop.example/{}", "a".repeat(2_000)))),
        ("buyer_email", json!("not an address")),
        ("buyer_email", json!("payer@localhost")),
        ("buyer_email", json!("<payer@example.com>")),
        ("locale", json!("ko")),
        ("underpayment_tolerance_bps", json!(1_001)),
        ("speed_policy", json!("turbo")),
        ("speed_policy", json!("FAST")),
    ] {
        let mut body = json!({"amount":"25.00","currency":"USD","accepted":[ETH]});
        body[field] = value.clone();
        let (status, error) = server.post(&server.key, "/v1/invoices", body, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field} = {value}: {error}");
        assert!(error.to_string().contains(field), "{field} = {value}: {error}");
    }

    let invoice = server
        .invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH],"redirect_url":"https://shop.example/orders/7?paid=1",
            "buyer_email":"Payer@Example.COM","underpayment_tolerance_bps":50,"speed_policy":"slow"}))
        .await;
    assert_eq!(invoice["speed_policy"], "slow");
    assert_eq!(invoice["redirect_url"], "https://shop.example/orders/7?paid=1");
    assert_eq!(invoice["buyer_email"], "Payer@example.com", "the domain is lower-cased, the local part kept");
    assert_eq!(invoice["underpayment_tolerance_bps"], 50);
    let id = invoice["id"].as_str().expect("id");

    // Open: the way back is there for the script to show, hidden.
    let page = server.page(&format!("/pay/{id}")).await;
    assert!(page.body.contains("<a class=\"return\" id=\"return\" href=\"https://shop.example/orders/7?paid=1\" rel=\"noreferrer\" hidden>Return to Shop</a>"), "{}", page.body);
    assert!(page.body.contains("<p class=\"buyer\" id=\"buyer-email\">Receipt to Payer@example.com</p>"), "{}", page.body);

    // 0.4 % short is within this invoice's 0.5 % tolerance: paid, and the way back is shown.
    let due = minor(&option(&invoice, ETH)["amount_minor"]);
    server.pay(id, ETH, "0xaa", Amount::from_u128(due * 996 / 1000), 3).await;
    let status = server.status(id).await;
    assert_eq!(status["state"], "paid", "{status}");
    let page = server.page(&format!("/pay/{id}")).await;
    assert!(page.body.contains("href=\"https://shop.example/orders/7?paid=1\" rel=\"noreferrer\">Return to Shop</a>"), "{}", page.body);

    // Without a redirect there is no link; the configured tolerance (0 here) applies.
    let plain = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH]})).await;
    assert_eq!(plain["underpayment_tolerance_bps"], 0);
    assert_eq!(plain["speed_policy"], "medium", "the chain's tiers unless asked otherwise");
    assert!(plain["redirect_url"].is_null() && plain["buyer_email"].is_null());
    let page = server.page(&format!("/pay/{}", plain["id"].as_str().expect("id"))).await;
    assert!(!page.body.contains("id=\"return\"") && !page.body.contains("buyer-email"));
}

/// A payment links to its transaction on the chain's block explorer, on the page and in the
/// status, where the chain file names an explorer.
#[sqlx::test]
async fn payments_link_to_the_block_explorer(pool: PgPool) {
    let server = Server::start_with(pool, |state| {
        state.explorers = std::sync::Arc::new(payrail::api::checkout::Explorers::new([(
            "eip155:1".to_owned(),
            "https://etherscan.io/tx/{tx}".to_owned(),
        )]));
    })
    .await;
    let merchant = create_merchant(&server.state.pool, "Shop").await.expect("merchant");
    let server = Rig { server, key: merchant.api_key };
    let invoice = server.invoice(json!({"amount":"25.00","currency":"USD","accepted":[ETH, USDC_POLYGON]})).await;
    let id = invoice["id"].as_str().expect("id");
    server.pay(id, ETH, "0xabc123", Amount::from_u128(minor(&option(&invoice, ETH)["amount_minor"])), 3).await;
    let status = server.status(id).await;
    assert_eq!(status["payments"][0]["explorer_url"], "https://etherscan.io/tx/0xabc123", "{status}");
    let page = server.page(&format!("/pay/{id}")).await;
    assert!(page.body.contains("<a class=\"explorer\" href=\"https://etherscan.io/tx/0xabc123\" rel=\"noreferrer\" target=\"_blank\">View transaction</a>"), "{}", page.body);
    // A chain without an explorer links nothing.
    let explorers = payrail::api::checkout::Explorers::new([("eip155:1".to_owned(), "https://etherscan.io/tx/{tx}".to_owned())]);
    assert_eq!(explorers.tx_url("eip155:137", "eip155:137:0xabc:0"), None);
    assert_eq!(explorers.tx_url("eip155:1", "eip155:1:0x<b>:0"), None, "only an id goes into the link");
}
