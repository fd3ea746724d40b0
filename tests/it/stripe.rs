//! The card rail against localstripe (a fake stateful Stripe, PyPI) and against Stripe event
//! payloads in `tests/fixtures/stripe/` for what localstripe lacks (refund webhooks, disputes,
//! Checkout Sessions), signed here with the configured webhook secret.
//!
//! localstripe comes from `PAYRAIL_LOCALSTRIPE_URL` (scripts/test starts one); without it, each test
//! binary starts its own through `scripts/localstripe run`, which exits with this process. Every
//! test registers its own webhook at localstripe (`POST /_config/webhooks/{id}`) with its own secret,
//! so deliveries meant for other tests arrive signed with another secret and are refused there.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::stripe::{ls_get, ls_post, start, Server};
use crate::common::USD;
use payrail::chain::health::{TickReport, FAILED_TICKS_MAX};
use payrail::clock::{Clock, SystemClock};
use payrail::ledger::AccountCode;
use payrail::money::Fiat;
use payrail::stripe::client::NewPaymentIntent;
use payrail::stripe::StripeClient;
use payrail::webhook::EndpointSecret;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

impl Server {
    async fn refund(&self, id: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/v1/invoices/{id}/refunds", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("refund");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn balance(&self, account: &AccountCode) -> String {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        self.state.ledger.balance(&mut conn, account, USD).await.expect("balance").to_string()
    }

    async fn balances(&self) -> (String, String) {
        (self.balance(&AccountCode::stripe(Fiat::USD)).await, self.balance(&AccountCode::merchant(&self.merchant_id)).await)
    }

    /// This test's events of a type: localstripe also delivers other tests' events (signed for
    /// this server too), which name invoices this database does not have.
    async fn events(&self, event_type: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT id, status FROM stripe_events WHERE event_type = $1 \
             AND (invoice_id IS NULL OR invoice_id IN (SELECT id FROM invoices)) AND status <> 'review' \
             ORDER BY stripe_created_at, received_at",
        )
            .bind(event_type)
            .fetch_all(&self.state.pool)
            .await
            .expect("events")
    }
}

/// A fixture with its placeholders filled in and, optionally, ids replaced.
fn fixture(name: &str, invoice_id: &str, replace: &[(&str, &str)]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stripe").join(format!("{name}.json"));
    let mut text = std::fs::read_to_string(&path).expect("fixture").replace("{{invoice_id}}", invoice_id);
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    text
}

// ---------------------------------------------------------------------------------------------
// localstripe: create, confirm, succeed, decline, 3-D Secure, refund; signed deliveries.

/// The payer's e-mail and language on the invoice do not get in the way of a test card (test mode
/// sends no receipt, so the e-mail is not given to Stripe there); the card panel speaks the page's
/// language and the payer comes back to the page in it.
#[sqlx::test]
async fn a_test_card_pays_an_invoice_with_a_buyer_email_and_a_locale(pool: PgPool) {
    let server = start(pool).await;
    server.subscribe().await;
    let id = server.invoice_with("25.00", json!({"buyer_email": "payer@example.com", "locale": "de"})).await;
    let page = server.client.get(format!("{}/pay/{id}", server.base)).send().await.expect("page").text().await.expect("body");
    assert!(page.contains("<h2>Mit Karte zahlen</h2>"), "{page}");
    assert!(page.contains("<input type=\"hidden\" name=\"locale\" value=\"de\">"), "{page}");
    let back = server
        .client
        .post(format!("{}/pay/{id}/card", server.base))
        .form(&[("payment_method", "pm_card_visa"), ("locale", "de")])
        .send()
        .await
        .expect("card");
    let location = back.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_owned();
    assert!(back.status().is_redirection() && location == format!("/pay/{id}?locale=de"), "{} {location}", back.status());
    server.wait_status(&id, "paid").await;
}

#[sqlx::test]
async fn a_test_card_pays_the_invoice_through_a_verified_webhook_and_refunds_reverse_the_ledger(pool: PgPool) {
    let server = start(pool).await;
    server.subscribe().await;
    let id = server.invoice("25.00").await;

    let (status, attempt) = server.pay_by_card(&id, "pm_card_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{attempt}");
    assert_eq!(attempt["status"], "succeeded", "{attempt}");
    assert_eq!(attempt["amount_minor"], "2500");
    let pi = attempt["payment_intent"].as_str().expect("payment intent").to_owned();

    // Paid only once localstripe's signed payment_intent.succeeded arrived.
    let invoice = server.wait_status(&id, "paid").await;
    assert_eq!(invoice["amount_paid"], "25.00");
    let card = invoice["payments"].as_array().and_then(|p| p.first()).cloned().expect("payment");
    assert_eq!(card["tx_ref"], format!("stripe:{pi}"));
    assert_eq!(card["asset"], USD);
    assert_eq!(card["chain"], "stripe");
    assert_eq!(server.balances().await, ("2500".to_owned(), "2500".to_owned()));
    assert_eq!(server.events("payment_intent.succeeded").await.len(), 1);
    // A second card payment of a paid invoice is refused.
    let (status, again) = server.pay_by_card(&id, "pm_card_visa").await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    // Partial refund through Stripe's refunds API: the ledger reverses exactly 10.00. (No `reason`:
    // localstripe refuses the parameter Stripe accepts.)
    let (status, error) = server.refund(&id, json!({ "amount": "10.00", "reason": "because" })).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("parameter_invalid")));
    let (status, refund) = server.refund(&id, json!({ "amount": "10.00" })).await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!(refund["amount"], "10.00");
    assert_eq!(refund["refunds"][0]["status"], "succeeded");
    assert!(refund["refunds"][0]["stripe_refund"].as_str().is_some_and(|r| r.starts_with("re_")), "{refund}");
    assert_eq!(refund["invoice"]["status"], "paid");
    assert_eq!(server.balances().await, ("1500".to_owned(), "1500".to_owned()));
    let (_, charge) = ls_get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(charge["latest_charge"]["amount_refunded"], 1000, "stripe holds the same refund: {charge}");

    // More than is left is refused; the rest refunds the invoice.
    let (status, error) = server.refund(&id, json!({ "amount": "15.01" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "refund_refused");
    let (status, refund) = server.refund(&id, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!(refund["amount"], "15.00");
    assert_eq!(refund["invoice"]["status"], "refunded");
    assert_eq!(server.balances().await, ("0".to_owned(), "0".to_owned()));
    let (status, _) = server.refund(&id, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let kinds: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox WHERE object_id = $1 ORDER BY id")
        .bind(&id)
        .fetch_all(&server.state.pool)
        .await
        .expect("outbox");
    assert_eq!(kinds, ["invoice.created", "invoice.paid", "invoice.partially_refunded", "invoice.refunded"]);
}

/// The same daemon (database, merchant, webhook secret) with a card rail that reaches no Stripe: a
/// port nothing listens on refuses every connection. Its base URL and its rail.
async fn unreachable_twin(server: &Server) -> (String, std::sync::Arc<payrail::stripe::CardRail>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut config = common::stripe::config(&server.secret);
    config.stripe.api_base = format!("http://127.0.0.1:{port}");
    let rail = std::sync::Arc::new(payrail::stripe::CardRail::from_config(&config).expect("rail").expect("configured"));
    let mut state = server.state.clone();
    state.card = Some(rail.clone());
    (common::serve(&state).await, rail)
}

async fn post_card(client: &reqwest::Client, base: &str, id: &str) -> (StatusCode, Option<String>, Value) {
    let response = client
        .post(format!("{base}/pay/{id}/card"))
        .header("accept", "application/json")
        .form(&[("payment_method", "pm_card_visa")])
        .send()
        .await
        .expect("card");
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (response.status(), retry_after, response.json().await.expect("json"))
}

/// While Stripe does not answer, a card payment answers 503 with `Retry-After` and stays one attempt,
/// asked again under its own idempotency key: by the payer's next try once Stripe is back (still
/// attempt 1), or by the daemon's resume pass when the payer went away. A refund asked meanwhile is
/// accepted as `pending` (202) and made once by the resume pass.
#[sqlx::test]
async fn while_stripe_does_not_answer_attempts_and_refunds_wait_and_are_asked_again_once(pool: PgPool) {
    use payrail::stripe::{attempt, refund};
    let server = start(pool).await;
    server.subscribe().await;
    let (down, down_rail) = unreachable_twin(&server).await;
    let rail = server.state.card.clone().expect("card rail");
    let attempts = |id: String| {
        let pool = server.state.pool.clone();
        async move {
            sqlx::query_as::<_, (i32, String, Option<String>)>("SELECT attempt, status, failure_code FROM card_attempts WHERE invoice_id = $1 ORDER BY attempt")
                .bind(id)
                .fetch_all(&pool)
                .await
                .expect("attempts")
        }
    };

    // The payer tries twice while Stripe is unreachable: one attempt, waiting to be asked again.
    let id = server.invoice("25.00").await;
    for _ in 0..2 {
        let (status, retry_after, body) = post_card(&server.client, &down, &id).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert_eq!(body["error"]["code"], "stripe_unavailable");
    }
    assert_eq!(attempts(id.clone()).await, [(1, "creating".to_owned(), Some(attempt::NO_ANSWER.to_owned()))]);
    // Stripe is back: the payer's next try is the same attempt, sent again.
    let (status, _, paid) = post_card(&server.client, &server.base, &id).await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    assert_eq!((paid["attempt"].as_i64(), paid["status"].as_str()), (Some(1), Some("succeeded")), "{paid}");
    server.wait_status(&id, "paid").await;
    assert_eq!(attempts(id.clone()).await, [(1, "succeeded".to_owned(), None)]);

    // A payer who went away: the daemon's pass sends the attempt once Stripe answers, not before.
    let away = server.invoice("7.00").await;
    let (status, _, _) = post_card(&server.client, &down, &away).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let now = SystemClock.now();
    assert_eq!(attempt::resume(&down_rail, &server.state.pool, now).await.expect("resume"), 0, "still no answer");
    assert_eq!(attempt::resume(&rail, &server.state.pool, now).await.expect("resume"), 1);
    assert_eq!(attempt::resume(&rail, &server.state.pool, now).await.expect("resume"), 0, "asked once");
    server.wait_status(&away, "paid").await;
    assert_eq!(attempts(away.clone()).await, [(1, "succeeded".to_owned(), None)]);

    // A refund while Stripe is unreachable: accepted, pending, nothing reversed yet.
    let response = server.client.post(format!("{down}/v1/invoices/{id}/refunds")).bearer_auth(&server.key).json(&json!({ "amount": "10.00" })).send().await.expect("refund");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pending: Value = response.json().await.expect("json");
    assert_eq!(pending["refunds"][0]["status"], "pending", "{pending}");
    assert!(pending["refunds"][0]["failure_message"].as_str().is_some_and(|m| m.starts_with("no answer")), "{pending}");
    assert_eq!(pending["amount"], "0.00");
    let before = server.balances().await;
    // More than is left beside the pending refund is refused: the pending one holds its amount.
    let (status, error) = server.refund(&id, json!({ "amount": "15.01" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    let ledger = server.state.ledger.clone();
    assert_eq!(refund::resume(&down_rail, &server.state.pool, &ledger, SystemClock.now()).await.expect("resume"), 0);
    assert_eq!(server.balances().await, before, "nothing reversed without Stripe's answer");
    assert_eq!(refund::resume(&rail, &server.state.pool, &ledger, SystemClock.now()).await.expect("resume"), 1);
    assert_eq!(refund::resume(&rail, &server.state.pool, &ledger, SystemClock.now()).await.expect("resume"), 0, "made once");
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, failure_message FROM card_refunds WHERE invoice_id = $1").bind(&id).fetch_one(&server.state.pool).await.expect("refund");
    assert_eq!((status.as_str(), reason), ("succeeded", None));
    assert_eq!(server.balances().await, ("2200".to_owned(), "2200".to_owned()), "25.00 + 7.00 paid, 10.00 refunded");
    let pi = paid["payment_intent"].as_str().expect("payment intent");
    let (_, charge) = ls_get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(charge["latest_charge"]["amount_refunded"], 1000, "stripe made the refund once: {charge}");
}

/// Writes `n` failed card attempts of invoice `id`, the last one `age_s` seconds ago.
async fn failed_attempts(server: &Server, id: &str, n: i32, age_s: i64) {
    for number in 1..=n {
        sqlx::query(
            "INSERT INTO card_attempts (id, invoice_id, attempt, idempotency_key, kind, currency, amount_minor, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'payment_intent', 'USD', 1234, 'failed', now() - $5 * interval '1 second', now())",
        )
        .bind(payrail::ids::new_id("ca"))
        .bind(id)
        .bind(number)
        .bind(format!("payrail:{id}:card:{number}"))
        .bind(age_s + i64::from(n - number))
        .execute(&server.state.pool)
        .await
        .expect("attempt");
    }
}

#[sqlx::test]
async fn card_attempts_on_one_invoice_are_capped_and_cooled_down(pool: PgPool) {
    let server = start(pool).await;
    // Three attempts back to back are fine; a fourth right after waits, with Retry-After.
    let id = server.invoice("12.34").await;
    failed_attempts(&server, &id, 3, 0).await;
    let response = server
        .client
        .post(format!("{}/pay/{id}/card", server.base))
        .header("accept", "application/json")
        .form(&[("payment_method", "pm_card_chargeCustomerFail")])
        .send()
        .await
        .expect("card");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=30).contains(&wait), "{wait}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "card_attempt_cooldown", "{body}");
    // Once the cooldown has passed, the next attempt goes to the processor.
    sqlx::query("UPDATE card_attempts SET created_at = created_at - interval '31 seconds' WHERE invoice_id = $1")
        .bind(&id)
        .execute(&server.state.pool)
        .await
        .expect("age");
    let (status, attempt) = server.pay_by_card(&id, "pm_card_chargeCustomerFail").await;
    assert_eq!(status, StatusCode::CREATED, "{attempt}");
    assert_eq!(attempt["attempt"], 4);

    // Ten attempts is the most an invoice may have, however long ago they were.
    let id = server.invoice("12.34").await;
    failed_attempts(&server, &id, 10, 3600).await;
    let (status, body) = server.pay_by_card(&id, "pm_card_visa").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("card_attempts_exhausted")), "{body}");
}

#[sqlx::test]
async fn a_declined_card_is_recorded_and_another_card_can_pay(pool: PgPool) {
    let server = start(pool).await;
    server.subscribe().await;
    let id = server.invoice("12.34").await;

    let (status, attempt) = server.pay_by_card(&id, "pm_card_chargeCustomerFail").await;
    assert_eq!(status, StatusCode::CREATED, "{attempt}");
    assert_eq!(attempt["status"], "failed", "{attempt}");
    assert_eq!(attempt["failure_code"], "card_declined");
    assert!(attempt["failure_message"].as_str().is_some_and(|m| m.contains("declined")), "{attempt}");

    // localstripe's payment_intent.payment_failed is recorded against the attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.events("payment_intent.payment_failed").await.is_empty() {
        assert!(Instant::now() < deadline, "no payment_failed event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.events("payment_intent.payment_failed").await[0].1, "processed");
    let pi: Option<String> = sqlx::query_scalar("SELECT payment_intent_id FROM card_attempts WHERE invoice_id = $1 AND attempt = 1")
        .bind(&id)
        .fetch_one(&server.state.pool)
        .await
        .expect("attempt");
    assert!(pi.is_some_and(|p| p.starts_with("pi_")), "the webhook names the declined payment intent");
    assert_eq!(server.show(&id).await["status"], "open");
    assert_eq!(server.balances().await, ("0".to_owned(), "0".to_owned()));

    // The page says so, and offers the card again.
    let page = server.client.get(format!("{}/pay/{id}", server.base)).send().await.expect("page").text().await.expect("html");
    assert!(page.contains("id=\"card-last\" data-status=\"failed\""), "{page}");
    assert!(page.contains("id=\"card-form\""), "{page}");

    let (_, attempt) = server.pay_by_card(&id, "pm_card_visa").await;
    assert_eq!(attempt["status"], "succeeded", "{attempt}");
    assert_eq!(attempt["attempt"], 2);
    server.wait_status(&id, "paid").await;
    assert_eq!(server.balances().await, ("1234".to_owned(), "1234".to_owned()));
}

#[sqlx::test]
async fn three_d_secure_cards_require_action_and_pay_nothing(pool: PgPool) {
    let server = start(pool).await;
    let id = server.invoice("5.00").await;
    let (status, method) = ls_post(
        "/v1/payment_methods",
        &[("type", "card"), ("card[number]", "4000000000003220"), ("card[exp_month]", "12"), ("card[exp_year]", "2030"), ("card[cvc]", "123")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{method}");
    let (status, attempt) = server.pay_by_card(&id, method["id"].as_str().expect("pm")).await;
    assert_eq!(status, StatusCode::CREATED, "{attempt}");
    assert_eq!(attempt["status"], "requires_action", "{attempt}");
    assert_eq!(server.show(&id).await["status"], "open");
    let page = server.client.get(format!("{}/pay/{id}", server.base)).send().await.expect("page").text().await.expect("html");
    assert!(page.contains("3-D Secure"), "{page}");
}

#[sqlx::test]
async fn the_client_creates_confirms_and_refunds_payment_intents(pool: PgPool) {
    let server = start(pool).await;
    let rail = server.state.card.clone().expect("card rail configured");
    let client: &StripeClient = &rail.client;
    let metadata = [("invoice_id".to_owned(), "inv_client".to_owned())].into();
    // Created without a method: waits for one.
    let waiting = client
        .create_payment_intent(&NewPaymentIntent { amount: 700, currency: "usd".to_owned(), metadata, payment_method: None, customer: None, off_session: false, receipt_email: None }, "k1")
        .await
        .expect("created");
    assert_eq!(waiting.status, "requires_payment_method");
    assert_eq!(waiting.metadata.get("invoice_id").map(String::as_str), Some("inv_client"));
    // Created and confirmed in one call.
    let paid = client
        .create_payment_intent(
            &NewPaymentIntent { amount: 700, currency: "usd".to_owned(), metadata: Default::default(), payment_method: Some("pm_card_visa".to_owned()), customer: None, off_session: false, receipt_email: None },
            "k2",
        )
        .await
        .expect("confirmed");
    assert_eq!(paid.status, "succeeded");
    let charge_id = paid.charge_id().expect("charge");
    let refund = client
        .create_refund(
            &payrail::stripe::client::NewRefund { payment_intent: paid.id.clone(), amount: 300, reason: None, metadata: Default::default() },
            "k3",
        )
        .await
        .expect("refund");
    assert_eq!(refund.amount, 300);
    assert_eq!(client.charge(&charge_id).await.expect("charge").amount_refunded, 300);
    // A declined card is a 402 with Stripe's code.
    let declined = client
        .create_payment_intent(
            &NewPaymentIntent {
                amount: 700,
                currency: "usd".to_owned(),
                metadata: Default::default(),
                payment_method: Some("pm_card_chargeCustomerFail".to_owned()),
                customer: None,
                off_session: false,
                receipt_email: None,
            },
            "k4",
        )
        .await;
    match declined {
        Err(payrail::stripe::StripeError::Api { status, code, .. }) => {
            assert_eq!(status, 402);
            assert_eq!(code.as_deref(), Some("card_declined"));
        }
        other => panic!("expected a decline, got {other:?}"),
    }
    // Ids never reach a path unchecked.
    assert!(client.charge("../v1/customers").await.is_err());
}

// ---------------------------------------------------------------------------------------------
// The webhook's defences, with payloads signed here.

#[sqlx::test]
async fn forged_stale_unsigned_and_replayed_webhooks_are_refused(pool: PgPool) {
    let server = start(pool).await;
    let id = server.invoice("25.00").await;
    let body = fixture("payment_intent.succeeded", &id, &[]);
    let now = SystemClock.now().timestamp();

    let (status, error) = server.deliver(&body, None).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("signature_invalid")));
    let forged = payrail::webhook::sign(&EndpointSecret::from_stored("whsec_not_the_secret".to_owned()), now, body.as_bytes());
    let (status, error) = server.deliver(&body, Some(&forged)).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("signature_invalid")));
    // A body changed after signing.
    let signed = server.sign(&body, now);
    let (status, _) = server.deliver(&body.replace("2500", "250000"), Some(&signed)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let stale = server.sign(&body, now - 301);
    let (status, error) = server.deliver(&body, Some(&stale)).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("signature_stale")));
    assert_eq!(server.show(&id).await["status"], "open", "nothing refused was applied");
    assert!(server.events("payment_intent.succeeded").await.is_empty(), "nothing refused was stored");

    // Several v1 signatures (a secret being rolled): one match is enough.
    let header = format!("t={now},v1={},{}", "ab".repeat(32), signed.split_once(',').expect("t,v1").1);
    let (status, answer) = server.deliver(&body, Some(&header)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "processed");
    assert_eq!(server.show(&id).await["status"], "paid");

    // The same delivery again is a replay; the same event re-signed later is Stripe retrying.
    let (status, error) = server.deliver(&body, Some(&header)).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("event_replayed")));
    let (status, answer) = server.deliver(&body, Some(&server.sign(&body, now + 1))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "duplicate");
    assert_eq!(server.balances().await, ("2500".to_owned(), "2500".to_owned()), "credited once");
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_event_deliveries").fetch_one(&server.state.pool).await.expect("n");
    assert_eq!(deliveries, 2);
}

#[sqlx::test]
async fn refund_and_dispute_events_reverse_the_right_amounts(pool: PgPool) {
    let server = start(pool).await;
    let id = server.invoice("25.00").await;
    let (status, _) = server.deliver_signed(&fixture("payment_intent.succeeded", &id, &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.balances().await, ("2500".to_owned(), "2500".to_owned()));

    // charge.refunded: 10.00 of 25.00 refunded (Stripe's cumulative amount_refunded).
    let refunded = fixture("charge.refunded", &id, &[]);
    let (_, answer) = server.deliver_signed(&refunded).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(server.balances().await, ("1500".to_owned(), "1500".to_owned()));
    assert_eq!(server.show(&id).await["status"], "paid");
    // A second, older-looking report of the same total under another event id changes nothing.
    let again = fixture("charge.refunded", &id, &[("evt_3PqYbLJt8u5wVq3K0Rf4aB7c", "evt_3PqYbLJt8u5wVq3K0Rf4aB7d")]);
    let (_, answer) = server.deliver_signed(&again).await;
    assert_eq!(answer["status"], "processed");
    assert_eq!(server.balances().await, ("1500".to_owned(), "1500".to_owned()));

    // A dispute of 15.00 takes the rest: the invoice's money is all back with the payer.
    let (_, answer) = server.deliver_signed(&fixture("charge.dispute.created", &id, &[])).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(server.balances().await, ("0".to_owned(), "0".to_owned()));
    assert_eq!(server.show(&id).await["status"], "refunded");

    // Won: the 15.00 comes back to the merchant.
    let (_, answer) = server.deliver_signed(&fixture("charge.dispute.closed", &id, &[])).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(server.balances().await, ("1500".to_owned(), "1500".to_owned()));
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT e.kind FROM journal_entries e WHERE e.idempotency_key LIKE 'card_%' ORDER BY e.id",
    )
    .fetch_all(&server.state.pool)
    .await
    .expect("entries");
    assert_eq!(kinds, ["refund", "dispute", "dispute_won"]);
}

#[sqlx::test]
async fn out_of_order_events_end_in_the_same_ledger(pool: PgPool) {
    let server = start(pool).await;
    let id = server.invoice("25.00").await;
    // The refund overtakes its payment: it waits.
    let (_, answer) = server.deliver_signed(&fixture("charge.refunded", &id, &[])).await;
    assert_eq!(answer["status"], "deferred", "{answer}");
    assert_eq!(server.balances().await, ("0".to_owned(), "0".to_owned()));
    // A newer refund report (15.00 in all) also overtakes it.
    let newer = fixture(
        "charge.refunded",
        &id,
        &[("evt_3PqYbLJt8u5wVq3K0Rf4aB7c", "evt_3PqYbLJt8u5wVq3K0Rf4aB8z"), ("\"amount_refunded\": 1000", "\"amount_refunded\": 1500"), ("1724170207", "1724170300")],
    );
    let (_, answer) = server.deliver_signed(&newer).await;
    assert_eq!(answer["status"], "deferred");
    // The payment arrives: credited, then both refunds applied in Stripe's order.
    let (_, answer) = server.deliver_signed(&fixture("payment_intent.succeeded", &id, &[])).await;
    assert_eq!(answer["status"], "processed");
    assert_eq!(server.balances().await, ("1000".to_owned(), "1000".to_owned()));
    let statuses: Vec<String> = server.events("charge.refunded").await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, ["processed", "processed"]);
    // The older report delivered once more (a Stripe retry, re-signed later) changes nothing.
    let older = fixture("charge.refunded", &id, &[]);
    let (_, answer) = server.deliver(&older, Some(&server.sign(&older, SystemClock.now().timestamp() + 2))).await;
    assert_eq!(answer["status"], "duplicate");
    assert_eq!(server.balances().await, ("1000".to_owned(), "1000".to_owned()));
}

#[sqlx::test]
async fn events_for_unknown_invoices_are_kept_for_review(pool: PgPool) {
    let server = start(pool).await;
    let body = fixture("payment_intent.succeeded", "inv_000000000000000000000000", &[]);
    let (status, answer) = server.deliver_signed(&body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "review");
    let (status, note): (String, String) = sqlx::query_as("SELECT status, note FROM stripe_events WHERE id = $1")
        .bind("evt_3PqYbLJt8u5wVq3K0nJ2xX1a")
        .fetch_one(&server.state.pool)
        .await
        .expect("stored");
    assert_eq!(status, "review");
    assert!(note.contains("unknown invoice"), "{note}");
    assert_eq!(server.balances().await, ("0".to_owned(), "0".to_owned()));
}

#[sqlx::test]
async fn a_paid_checkout_session_credits_the_invoice_once(pool: PgPool) {
    let server = start(pool).await;
    let id = server.invoice("25.00").await;
    // A session payrail did not start (no stored attempt matches its metadata) credits nothing,
    // even though its client_reference_id names the invoice.
    let (_, answer) = server.deliver_signed(&fixture("checkout.session.completed", &id, &[])).await;
    assert_eq!(answer["status"], "review", "{answer}");
    assert_eq!(server.show(&id).await["status"], "open");
    let foreign = fixture(
        "checkout.session.completed",
        &id,
        &[("\"payrail_attempt_id\": \"ca_0000000000000000000000000\"", "\"x\": \"y\""), ("evt_", "evt_2")],
    );
    let (_, answer) = server.deliver_signed(&foreign).await;
    assert_eq!(answer["status"], "review", "{answer}");
    assert_eq!(server.show(&id).await["status"], "open");

    // payrail's own Checkout attempt, as `attempt::start` stores it before calling Stripe.
    sqlx::query(
        "INSERT INTO card_attempts (id, invoice_id, attempt, idempotency_key, kind, currency, amount_minor, status, created_at, updated_at) \
         VALUES ('ca_0000000000000000000000000', $1, 1, $2, 'checkout_session', 'USD', 2500, 'open', now(), now())",
    )
    .bind(&id)
    .bind(format!("payrail:{id}:card:1"))
    .execute(&server.state.pool)
    .await
    .expect("attempt");
    let ours = fixture("checkout.session.completed", &id, &[("evt_", "evt_3")]);
    let (_, answer) = server.deliver_signed(&ours).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(server.show(&id).await["status"], "paid");
    // Its PaymentIntent's own success event is the same payment.
    let succeeded = fixture(
        "payment_intent.succeeded",
        &id,
        &[("pi_3PqYbLJt8u5wVq3K0bcR1Lq2", "pi_3PqYcPJt8u5wVq3K1Hn6Ck2E")],
    );
    let (_, answer) = server.deliver_signed(&succeeded).await;
    assert_eq!(answer["status"], "processed");
    assert_eq!(server.balances().await, ("2500".to_owned(), "2500".to_owned()));
}

// ---------------------------------------------------------------------------------------------
// Automatic fallback on the checkout page.

#[sqlx::test]
async fn card_comes_first_with_a_reason_when_every_chain_rail_is_unhealthy(pool: PgPool) {
    let server = start(pool).await;
    let id = server.invoice("25.00").await;
    let page = |server: &Server| {
        let url = format!("{}/pay/{id}", server.base);
        let client = server.client.clone();
        async move { client.get(url).send().await.expect("page").text().await.expect("html") }
    };
    // Healthy (or not yet reported) chains: card after the chain options, no reason given.
    let html = page(&server).await;
    let card = html.find("id=\"card\"").expect("card panel");
    let chains = html.find("id=\"pay\"").expect("chain panel");
    assert!(chains < card, "card after the chains");
    assert!(!html.contains("card-fallback"));
    assert!(html.contains("pm_card_visa"), "test cards offered in test mode");

    // Every chain with a deposit address fails: card first, and why.
    let invoice = server.show(&id).await;
    let now = SystemClock.now();
    for option in invoice["payment_options"].as_array().expect("options") {
        if option["address"].is_string() {
            let chain = option["chain"].as_str().expect("chain");
            for _ in 0..FAILED_TICKS_MAX {
                server.state.rail_health.report(chain, TickReport::Failed, now);
            }
        }
    }
    let html = page(&server).await;
    let card = html.find("id=\"card\"").expect("card panel");
    let chains = html.find("id=\"pay\"").expect("chain panel");
    assert!(card < chains, "card first");
    assert!(html.contains("id=\"card-fallback\"") && html.contains("Ethereum: its nodes are not answering"), "{html}");
    let metrics = server.client.get(format!("{}/metrics", server.base)).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("payrail_rail_healthy{rail=\"eip155:1\"} 0"), "{metrics}");
    assert!(metrics.contains("payrail_rail_healthy{rail=\"card\"} 1"), "{metrics}");

    // One chain recovers: back to the usual order.
    server.state.rail_health.report("eip155:137", TickReport::Followed { head_lag_blocks: 1 }, now);
    let html = page(&server).await;
    assert!(html.find("id=\"pay\"").expect("chains") < html.find("id=\"card\"").expect("card"));

    // The browser form: a redirect back to the page, which then shows the payment on its way.
    let response = server
        .client
        .post(format!("{}/pay/{id}/card", server.base))
        .form(&[("payment_method", "pm_card_visa")])
        .send()
        .await
        .expect("form");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers().get("location").and_then(|v| v.to_str().ok()), Some(format!("/pay/{id}").as_str()));
}

#[sqlx::test]
async fn without_stripe_the_card_routes_are_absent(pool: PgPool) {
    let (state, _clock) = common::state_with_clock(pool);
    assert!(state.card.is_none());
    let base = common::serve(&state).await;
    let response = reqwest::Client::new().post(format!("{base}/v1/stripe/webhook")).body("{}").send().await.expect("post");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// Card payments on split invoices: one entry credits every party, refunds take each share back.

use payrail::ledger::SignedAmount;

/// A credit posting of `v` cents (credits are stored negative).
fn credit(v: u64) -> SignedAmount {
    SignedAmount::negative(payrail::money::Amount::from_u64(v))
}

/// A debit posting of `v` cents.
fn debit(v: u64) -> SignedAmount {
    SignedAmount::positive(payrail::money::Amount::from_u64(v))
}

impl Server {
    /// A creator of this server's merchant; its id.
    async fn creator(&self, name: &str) -> String {
        let request = payrail::creator::CreateCreator { name: name.to_owned(), payout_addresses: Default::default() };
        payrail::creator::create_creator(&self.state.pool, &self.merchant_id, &request).await.expect("creator").creator.id
    }

    /// An invoice of `amount` USD with `extra` merged into the request body; its id.
    async fn invoice_with(&self, amount: &str, extra: Value) -> String {
        let mut body = json!({ "amount": amount, "currency": "USD" });
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let response =
            self.client.post(format!("{}/v1/invoices", self.base)).bearer_auth(&self.key).json(&body).send().await.expect("create");
        let status = response.status();
        let invoice: Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "{invoice}");
        invoice["id"].as_str().expect("id").to_owned()
    }

    /// The postings of the entry under `key`, as (account, signed amount), in `iso4217:USD` only.
    async fn postings_of(&self, key: &str) -> Vec<(String, SignedAmount)> {
        let id: i64 = sqlx::query_scalar("SELECT id FROM journal_entries WHERE idempotency_key = $1")
            .bind(key)
            .fetch_one(&self.state.pool)
            .await
            .unwrap_or_else(|e| panic!("entry {key}: {e}"));
        let mut conn = self.state.pool.acquire().await.expect("conn");
        let entry = self.state.ledger.entry(&mut conn, id).await.expect("entry");
        assert!(entry.postings.iter().all(|p| p.asset == USD), "{entry:?}");
        entry.postings.iter().map(|p| (p.account.to_string(), p.signed_amount())).collect()
    }

    /// Every ledger entry of the card payment `pi` (its credit and its refunds), each checked to
    /// sum to zero; their keys, oldest first.
    async fn assert_entries_balance(&self, pi: &str) -> Vec<String> {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT idempotency_key FROM journal_entries WHERE idempotency_key = $1 OR idempotency_key LIKE $2 ORDER BY id",
        )
        .bind(format!("payment:stripe:{pi}"))
        .bind(format!("card_refund:{pi}:%"))
        .fetch_all(&self.state.pool)
        .await
        .expect("entries");
        for key in &keys {
            let postings = self.postings_of(key).await;
            let sum = postings.iter().try_fold(SignedAmount::ZERO, |acc, (_, v)| acc.checked_add(*v)).expect("sum");
            assert_eq!(sum, SignedAmount::ZERO, "{key} does not balance: {postings:?}");
        }
        keys
    }

    /// Balances (stripe, creator, platform fees, rounding, merchant) in cents.
    async fn split_balances(&self, creator: &str) -> [String; 5] {
        [
            self.balance(&AccountCode::stripe(Fiat::USD)).await,
            self.balance(&AccountCode::creator(creator)).await,
            self.balance(&AccountCode::platform_fees()).await,
            self.balance(&AccountCode::rounding()).await,
            self.balance(&AccountCode::merchant(&self.merchant_id)).await,
        ]
    }
}

fn find(postings: &[(String, SignedAmount)], account: &str) -> Option<SignedAmount> {
    postings.iter().find(|(a, _)| a == account).map(|(_, v)| *v)
}

fn cents(values: [u64; 5]) -> [String; 5] {
    values.map(|v| v.to_string())
}

#[sqlx::test]
async fn a_card_payment_on_a_split_invoice_credits_every_party_and_refunds_reverse_each_share(pool: PgPool) {
    let server = start(pool).await;
    server.subscribe().await;
    let cr = server.creator("Ada").await;
    // The merchant's default rule, copied onto the invoice when it is created: 70% to the creator,
    // 5% platform fee.
    let rules = payrail::creator::SplitRules {
        default: Some(payrail::invoice::Splits {
            splits: vec![payrail::invoice::CreatorShare { creator: cr.clone(), bps: 7000 }],
            platform_fee_bps: 500,
        }),
        prefixes: vec![],
    };
    payrail::creator::set_split_rules(&server.state.pool, &server.merchant_id, &rules).await.expect("rules");
    let id = server.invoice_with("33.39", json!({})).await;
    assert_eq!(server.show(&id).await["split"], json!({"splits":[{"creator": cr, "bps": 7000}], "platform_fee_bps": 500}));

    let (status, attempt) = server.pay_by_card(&id, "pm_card_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{attempt}");
    assert_eq!(attempt["status"], "succeeded", "{attempt}");
    assert_eq!(attempt["amount_minor"], "3339");
    let pi = attempt["payment_intent"].as_str().expect("payment intent").to_owned();
    server.wait_status(&id, "paid").await;

    // One entry. 3339 × 7000 / 10000 = 2337.3 → 2337 to the creator; × 500 / 10000 = 166.95 → 166
    // to the platform; the allocated 7500 bps are 2504.25 → 2504, so 2504 − 2337 − 166 = 1 cent of
    // dust goes to rounding and the merchant gets 3339 − 2504 = 835.
    let creator_account = AccountCode::creator(&cr).to_string();
    let merchant_account = AccountCode::merchant(&server.merchant_id).to_string();
    let stripe_account = AccountCode::stripe(Fiat::USD).to_string();
    let postings = server.postings_of(&format!("payment:stripe:{pi}")).await;
    assert_eq!(postings.len(), 5, "{postings:?}");
    assert_eq!(find(&postings, &stripe_account), Some(debit(3339)));
    assert_eq!(find(&postings, &creator_account), Some(credit(2337)));
    assert_eq!(find(&postings, "revenue:platform_fees"), Some(credit(166)));
    assert_eq!(find(&postings, "revenue:rounding"), Some(credit(1)));
    assert_eq!(find(&postings, &merchant_account), Some(credit(835)));
    assert_eq!(server.assert_entries_balance(&pi).await.len(), 1);
    assert_eq!(server.split_balances(&cr).await, cents([3339, 2337, 166, 1, 835]));

    // A partial refund of 10.00 — more than the merchant's own 8.35 — takes each share back in
    // proportion: per posting floor(amount × 1000 / 3339): creator 699, platform 49, rounding 0,
    // merchant 250; the side must give back floor(3339 × 1000 / 3339) = 1000, so the 2 cents of
    // dust go to the largest credit of the entry, the creator's: 701.
    let (status, refund) = server.refund(&id, json!({ "amount": "10.00" })).await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!(refund["amount"], "10.00");
    assert_eq!(refund["refunds"][0]["status"], "succeeded", "{refund}");
    assert_eq!(refund["invoice"]["status"], "paid");
    let postings = server.postings_of(&format!("card_refund:{pi}:1000")).await;
    assert_eq!(find(&postings, &stripe_account), Some(credit(1000)));
    assert_eq!(find(&postings, &creator_account), Some(debit(701)));
    assert_eq!(find(&postings, "revenue:platform_fees"), Some(debit(49)));
    assert_eq!(find(&postings, "revenue:rounding"), None);
    assert_eq!(find(&postings, &merchant_account), Some(debit(250)));
    assert_eq!(server.assert_entries_balance(&pi).await.len(), 2);
    assert_eq!(server.split_balances(&cr).await, cents([2339, 1636, 117, 1, 585]));
    let (_, charge) = ls_get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(charge["latest_charge"]["amount_refunded"], 1000, "{charge}");

    // The rest: every split account back to zero, to the cent.
    let (status, refund) = server.refund(&id, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!(refund["amount"], "23.39");
    assert_eq!(refund["invoice"]["status"], "refunded");
    let postings = server.postings_of(&format!("card_refund:{pi}:3339")).await;
    assert_eq!(find(&postings, &stripe_account), Some(credit(2339)));
    assert_eq!(find(&postings, &creator_account), Some(debit(1636)));
    assert_eq!(find(&postings, "revenue:platform_fees"), Some(debit(117)));
    assert_eq!(find(&postings, "revenue:rounding"), Some(debit(1)));
    assert_eq!(find(&postings, &merchant_account), Some(debit(585)));
    assert_eq!(server.assert_entries_balance(&pi).await.len(), 3);
    assert_eq!(server.split_balances(&cr).await, cents([0, 0, 0, 0, 0]));
}

#[sqlx::test]
async fn refund_webhooks_on_a_split_invoice_reverse_each_share_and_end_at_zero(pool: PgPool) {
    let server = start(pool).await;
    let cr = server.creator("Ada").await;
    let id = server
        .invoice_with("25.00", json!({ "splits": [{ "creator": cr, "bps": 7000 }], "platform_fee_bps": 500 }))
        .await;
    let (_, answer) = server.deliver_signed(&fixture("payment_intent.succeeded", &id, &[])).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    let pi = "pi_3PqYbLJt8u5wVq3K0bcR1Lq2";
    // 2500: creator 1750, platform 125, no dust, merchant 625.
    assert_eq!(server.split_balances(&cr).await, cents([2500, 1750, 125, 0, 625]));

    // Stripe reports 10.01 refunded: creator floor(1750 × 1001 / 2500) = 700, platform 50,
    // merchant 250, and the 1 cent left of floor(2500 × 1001 / 2500) = 1001 goes to the creator.
    let partial = fixture("charge.refunded", &id, &[("\"amount_refunded\": 1000", "\"amount_refunded\": 1001")]);
    let (_, answer) = server.deliver_signed(&partial).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(server.split_balances(&cr).await, cents([1499, 1049, 75, 0, 375]));
    assert_eq!(server.show(&id).await["status"], "paid");

    // Then all of it.
    let full = fixture(
        "charge.refunded",
        &id,
        &[
            ("evt_3PqYbLJt8u5wVq3K0Rf4aB7c", "evt_3PqYbLJt8u5wVq3K0Rf4aB9z"),
            ("\"amount_refunded\": 1000", "\"amount_refunded\": 2500"),
            ("1724170207", "1724170400"),
        ],
    );
    let (_, answer) = server.deliver_signed(&full).await;
    assert_eq!(answer["status"], "processed", "{answer}");
    assert_eq!(server.split_balances(&cr).await, cents([0, 0, 0, 0, 0]));
    assert_eq!(server.show(&id).await["status"], "refunded");
    assert_eq!(server.assert_entries_balance(pi).await.len(), 3);
}

#[sqlx::test]
async fn a_refund_is_refused_when_a_creator_no_longer_holds_its_share(pool: PgPool) {
    let server = start(pool).await;
    server.subscribe().await;
    let cr = server.creator("Ada").await;
    let id = server
        .invoice_with("33.39", json!({ "splits": [{ "creator": cr, "bps": 7000 }], "platform_fee_bps": 500 }))
        .await;
    let (_, attempt) = server.pay_by_card(&id, "pm_card_visa").await;
    assert_eq!(attempt["status"], "succeeded", "{attempt}");
    let pi = attempt["payment_intent"].as_str().expect("payment intent").to_owned();
    server.wait_status(&id, "paid").await;
    // The creator's 23.37 leaves its account (paid out): 0.37 is left, less than its 7.01 share of a
    // 10.00 refund, which the ledger would refuse. Refused before Stripe is asked.
    let paid_out = common::transfer("creator-paid-out", AccountCode::creator(&cr), AccountCode::stripe(Fiat::USD), USD, 2300);
    server.state.ledger.post_now(&paid_out).await.expect("paid out");
    let (status, error) = server.refund(&id, json!({ "amount": "10.00" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "refund_refused");
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains(&cr) && m.contains("(7.01)")), "{error}");
    let (_, charge) = ls_get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(charge["latest_charge"]["amount_refunded"], 0, "{charge}");
    // What the creator still covers goes through: 0.50 takes floor(2337 × 50 / 3339) = 34, plus the
    // 2 cents of dust (the creator's is the largest credit) = 0.36 of its 0.37.
    let (status, refund) = server.refund(&id, json!({ "amount": "0.50" })).await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!(server.balance(&AccountCode::creator(&cr)).await, "1");
    server.assert_entries_balance(&pi).await;
}

/// A credit pack paid by test card: the credits are granted once, by the verified webhook that
/// credits the payment; refunded in full, what is left of them is taken back.
#[sqlx::test]
async fn a_credit_pack_paid_by_card_grants_its_credits_once(pool: PgPool) {
    let server = start(pool).await;
    server.subscribe().await;
    let post = |path: String, body: Value| {
        let request = server.client.post(format!("{}{path}", server.base)).bearer_auth(&server.key).json(&body);
        async move {
            let response = request.send().await.expect("post");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, _) = post("/v1/credit_currencies".to_owned(), json!({ "code": "coins", "name": "Coins", "peg": "0.01", "peg_currency": "USD" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, pack) = post("/v1/credit_packs".to_owned(), json!({ "name": "500 coins", "currency": "coins", "credits": "500", "bonus_credits": "50", "price": "4.99", "price_currency": "USD" })).await;
    let (_, customer) = post("/v1/customers".to_owned(), json!({ "external_id": "card-buyer" })).await;
    let customer = customer["id"].as_str().expect("customer").to_owned();
    let (status, bought) = post(format!("/v1/customers/{customer}/purchases"), json!({ "pack": pack["id"] })).await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");
    let invoice = bought["invoice"]["id"].as_str().expect("invoice").to_owned();

    let (status, attempt) = server.pay_by_card(&invoice, "pm_card_visa").await;
    assert_eq!((status, attempt["status"].as_str()), (StatusCode::CREATED, Some("succeeded")), "{attempt}");
    server.wait_status(&invoice, "paid").await;
    let balance = || async {
        let response = server.client.get(format!("{}/v1/customers/{customer}/balance", server.base)).bearer_auth(&server.key).send().await.expect("balance");
        response.json::<Value>().await.expect("json")
    };
    let now = balance().await;
    assert_eq!(now["balances"][0]["total_minor"], "550", "{now}");
    let grants: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE customer_id = $1 AND kind = 'grant'")
        .bind(&customer)
        .fetch_one(&server.state.pool)
        .await
        .expect("grants");
    assert_eq!(grants, 2, "the purchase and its bonus, once");

    // 100 spent, then the purchase refunded in full: the 450 left are taken back, 100 recorded as
    // spent before the refund.
    let spend = server
        .client
        .post(format!("{}/v1/customers/{customer}/spend", server.base))
        .bearer_auth(&server.key)
        .header("idempotency-key", "spend-1")
        .json(&json!({ "currency": "coins", "amount_minor": "100" }))
        .send()
        .await
        .expect("spend");
    assert_eq!(spend.status(), StatusCode::CREATED);
    let (status, refund) = server.refund(&invoice, json!({})).await;
    assert_eq!((status, refund["invoice"]["status"].as_str()), (StatusCode::CREATED, Some("refunded")), "{refund}");
    let (status, owed): (String, String) = sqlx::query_as("SELECT status, owed_minor::text FROM credit_purchases WHERE invoice_id = $1")
        .bind(&invoice)
        .fetch_one(&server.state.pool)
        .await
        .expect("purchase");
    assert_eq!((status.as_str(), owed.as_str()), ("reversed", "100"));
    let left = balance().await;
    assert_eq!(left["balances"], json!([]), "{left}");
}
