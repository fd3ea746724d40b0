//! Outbound webhooks against real local HTTP receivers: the signature a receiver verifies with the
//! secret the API returned, retries with growing backoff on a manual clock, no retry on 4xx, timeouts,
//! per-endpoint ordering, superseded events, tenant isolation, deletion, the events API and replay.


use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use chrono::{DateTime, Duration, Utc};
use crate::common::{state_with_clock, USDC_POLYGON};
use hmac::{Hmac, Mac};
use payrail::api::{router, AppState, HttpLimits};
use payrail::clock::{Clock, ManualClock};
use payrail::invoice::{apply_payment, ObservedPayment};
use payrail::merchant::create_merchant;
use payrail::webhook::{DispatchConfig, Dispatcher, PassReport};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;

/// The dispatcher's per-attempt timeout in these tests.
const TIMEOUT_MS: u64 = 400;
/// How long a stalling receiver waits before it answers: well past the timeout.
const STALL_MS: u64 = 2_000;

// ---------------------------------------------------------------------------------------------
// A receiver: a real HTTP server on 127.0.0.1 that verifies the signature the way a merchant would
// and answers as scripted (then 200 when the signature is valid, 400 when it is not).

#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Answers 200 only after `STALL_MS`.
    Stall,
}

#[derive(Debug, Clone)]
struct Hit {
    event_id_header: String,
    content_type: String,
    timestamp: i64,
    signature_ok: bool,
    body: Vec<u8>,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn event_id(&self) -> String {
        self.json()["id"].as_str().expect("id").to_owned()
    }

    fn event_type(&self) -> String {
        self.json()["type"].as_str().expect("type").to_owned()
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    script: Arc<Mutex<VecDeque<Reply>>>,
    hits: Arc<Mutex<Vec<Hit>>>,
    secret: Arc<Mutex<Option<String>>>,
}

struct Receiver {
    url: String,
    state: ReceiverState,
}

impl Receiver {
    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("hits").clone()
    }

    fn types(&self) -> Vec<String> {
        self.hits().iter().map(Hit::event_type).collect()
    }

    fn event_ids(&self) -> Vec<String> {
        self.hits().iter().map(Hit::event_id).collect()
    }

    fn trust(&self, secret: &str) {
        *self.state.secret.lock().expect("secret") = Some(secret.to_owned());
    }
}

/// Verifies `Payrail-Signature` with nothing but HMAC-SHA256, as a merchant's server would.
fn signature_valid(secret: &str, header: &str, body: &[u8]) -> Option<i64> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.split_once('=')? {
            ("t", t) => timestamp = Some(t.parse::<i64>().ok()?),
            ("v1", sig) => candidates.push(hex::decode(sig).ok()?),
            _ => {}
        }
    }
    let timestamp = timestamp?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    candidates.iter().any(|c| c.as_slice() == expected.as_slice()).then_some(timestamp)
}

async fn receiver(script: &[Reply]) -> Receiver {
    let state = ReceiverState::default();
    state.script.lock().expect("script").extend(script.iter().copied());
    let shared = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = shared.clone();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let secret = state.secret.lock().expect("secret").clone();
                let verified = secret.and_then(|s| signature_valid(&s, &header("payrail-signature"), &body));
                let timestamp = header("payrail-signature")
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(-1);
                state.hits.lock().expect("hits").push(Hit {
                    event_id_header: header("payrail-event-id"),
                    content_type: header("content-type"),
                    timestamp,
                    signature_ok: verified.is_some(),
                    body: body.to_vec(),
                });
                let reply = state.script.lock().expect("script").pop_front();
                let status = match reply {
                    Some(Reply::Status(code)) => code,
                    Some(Reply::Stall) => {
                        tokio::time::sleep(StdDuration::from_millis(STALL_MS)).await;
                        200
                    }
                    None if verified.is_some() => 200,
                    None => 400,
                };
                let status = axum::http::StatusCode::from_u16(status).expect("status");
                (status, format!("receiver says {}", status.as_u16()))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, state }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test: the API on a real socket, a dispatcher driven pass by pass on a manual clock.

struct Harness {
    base: String,
    client: reqwest::Client,
    state: AppState,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
}

struct Merchant {
    key: String,
}

async fn start(pool: PgPool) -> Harness {
    start_with(pool, true).await
}

/// A harness whose daemon allows loopback endpoints or, like production, does not.
async fn start_with(pool: PgPool, allow_loopback: bool) -> Harness {
    let (mut state, clock) = state_with_clock(pool.clone());
    state.webhooks_allow_loopback = allow_loopback;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(state.clone(), HttpLimits::default());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = DispatchConfig {
        timeout_ms: TIMEOUT_MS,
        connect_timeout_ms: TIMEOUT_MS,
        allow_loopback,
        ..DispatchConfig::default()
    };
    let dispatcher = Dispatcher::new(pool, clock.clone(), config, state.webhook_secrets.clone()).expect("dispatcher");
    Harness { base, client: reqwest::Client::new(), state, clock, dispatcher }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a time: {value}"))
}

impl Harness {
    async fn merchant(&self) -> Merchant {
        let m = create_merchant(&self.state.pool, "Shop").await.expect("merchant");
        Merchant { key: m.api_key }
    }

    async fn call(&self, method: Method, key: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.expect("json body"))
    }

    async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, key, path, None).await
    }

    /// Registers `url` for every event; returns the endpoint id and its secret.
    async fn endpoint(&self, m: &Merchant, url: &str) -> (String, String) {
        self.endpoint_for(m, json!({ "url": url })).await
    }

    async fn endpoint_for(&self, m: &Merchant, body: Value) -> (String, String) {
        let (status, created) = self.call(Method::POST, &m.key, "/v1/webhook_endpoints", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().expect("id").to_owned();
        (id, created["secret"].as_str().expect("secret").to_owned())
    }

    /// An invoice made through the API: it writes `invoice.created`.
    async fn invoice(&self, m: &Merchant) -> String {
        let body = json!({"amount":"25.00","currency":"USD","accepted":[USDC_POLYGON]});
        let (status, created) = self.call(Method::POST, &m.key, "/v1/invoices", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().expect("id").to_owned()
    }

    /// Pays the invoice in full with a confirmed payment: it writes `invoice.paid`.
    async fn pay(&self, invoice_id: &str) {
        let asset: payrail::money::AssetId = USDC_POLYGON.parse().expect("asset");
        let payment = ObservedPayment {
            invoice_id: invoice_id.to_owned(),
            chain: asset.chain().clone(),
            tx_ref: format!("{}:0x{}:0", asset.chain(), &invoice_id[4..]),
            asset,
            address: None,
            amount: payrail::money::Amount::from_u128(25_000_000),
            confirmations: 2,
            confirmations_required: 2,
            block: None,
        };
        let mut tx = self.state.pool.begin().await.expect("begin");
        let applied = apply_payment(&mut tx, &self.state.ledger, &payment, self.clock.now()).await.expect("apply");
        tx.commit().await.expect("commit");
        assert_eq!(applied.invoice_status.as_str(), "paid");
    }

    async fn pass(&self) -> PassReport {
        self.dispatcher.dispatch_once().await.expect("dispatch pass")
    }

    /// The merchant's events, newest first.
    async fn events(&self, m: &Merchant) -> Vec<Value> {
        let (status, page) = self.get(&m.key, "/v1/events?limit=100").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["data"].as_array().expect("data").clone()
    }

    /// The id of the merchant's newest event of `event_type`.
    async fn event_id(&self, m: &Merchant, event_type: &str) -> String {
        let events = self.events(m).await;
        let event = events.iter().find(|e| e["type"] == event_type).unwrap_or_else(|| panic!("no {event_type}"));
        event["id"].as_str().expect("id").to_owned()
    }

    async fn deliveries(&self, m: &Merchant, event_id: &str) -> Vec<Value> {
        let (status, log) = self.get(&m.key, &format!("/v1/events/{event_id}/deliveries")).await;
        assert_eq!(status, StatusCode::OK, "{log}");
        log["data"].as_array().expect("data").clone()
    }

    /// The one delivery of `event_id` to `endpoint_id`.
    async fn delivery(&self, m: &Merchant, event_id: &str, endpoint_id: &str) -> Value {
        let all = self.deliveries(m, event_id).await;
        let mine: Vec<&Value> = all.iter().filter(|d| d["endpoint_id"] == endpoint_id).collect();
        assert_eq!(mine.len(), 1, "{all:?}");
        mine[0].clone()
    }

    /// Moves the clock to `at` (never back).
    fn advance_to(&self, at: DateTime<Utc>) {
        let by = at - self.clock.now();
        assert!(by >= Duration::zero(), "{at} is in the past");
        self.clock.advance(by);
    }
}

// ---------------------------------------------------------------------------------------------

/// Off the dev stack (`[webhooks] allow_loopback = false`, the default), an endpoint on the
/// daemon's own host is refused: a merchant cannot make it call local services.
#[sqlx::test]
async fn loopback_endpoints_are_refused_unless_allowed(pool: PgPool) {
    let h = start_with(pool, false).await;
    let m = h.merchant().await;
    for url in ["http://127.0.0.1:5432/", "https://localhost/hook", "https://[::1]/"] {
        let (status, body) = h.call(Method::POST, &m.key, "/v1/webhook_endpoints", Some(json!({ "url": url }))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["code"], "parameter_invalid", "{body}");
    }
    let (status, body) =
        h.call(Method::POST, &m.key, "/v1/webhook_endpoints", Some(json!({ "url": "https://hooks.example.com/x" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[sqlx::test]
async fn a_paid_invoice_reaches_a_receiver_that_verifies_the_signature(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let rx = receiver(&[]).await;
    let (status, created) =
        h.call(Method::POST, &m.key, "/v1/webhook_endpoints", Some(json!({ "url": rx.url }))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let endpoint_id = created["id"].as_str().expect("id");
    let secret = created["secret"].as_str().expect("secret");
    assert!(endpoint_id.starts_with("we_"), "{endpoint_id}");
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["url"], rx.url.as_str());
    assert_eq!(created["events"], json!(["*"]));
    assert_eq!(created["object"], "webhook_endpoint");
    rx.trust(secret);

    let invoice_id = h.invoice(&m).await;
    h.pay(&invoice_id).await;
    let report = h.pass().await;
    assert_eq!((report.events_fanned_out, report.deliveries_created, report.delivered), (4, 4, 4), "{report:?}");

    let hits = rx.hits();
    assert_eq!(rx.types(), ["invoice.created", "payment.detected", "payment.confirmed", "invoice.paid"]);
    for hit in &hits {
        assert!(hit.signature_ok, "the receiver verified the signature with the secret from the create call");
        assert_eq!(hit.timestamp, h.clock.now().timestamp());
        assert_eq!(hit.content_type, "application/json");
        assert_eq!(hit.event_id_header, hit.event_id());
        let body = hit.json();
        // A payment's events carry the payment, which names its invoice.
        let invoice_of = if hit.event_type().starts_with("payment.") { &body["data"]["invoice_id"] } else { &body["data"]["id"] };
        assert_eq!(invoice_of, invoice_id.as_str());
        // The body is the event exactly as the API shows it.
        let (status, event) = h.get(&m.key, &format!("/v1/events/{}", hit.event_id())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(event, body);
        assert_eq!(body.as_object().map(|o| o.len()), Some(4), "envelope: id, type, created_at, data");
    }
    assert_eq!(hits[3].json()["data"]["status"], "paid");

    let delivery = h.delivery(&m, &hits[3].event_id(), endpoint_id).await;
    assert!(delivery["id"].as_str().is_some_and(|id| id.starts_with("whd_")));
    assert_eq!(delivery["status"], "delivered");
    assert_eq!(delivery["next_attempt_at"], Value::Null);
    let attempts = delivery["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[0]["error"], Value::Null);
    assert!(attempts[0].get("response_excerpt").is_none(), "{}", attempts[0]);
    assert!(attempts[0]["duration_ms"].as_u64().is_some());

    // Nothing more to do: a second pass sends nothing again.
    assert_eq!(h.pass().await.attempts(), 0);
    assert_eq!(rx.hits().len(), 4);
    // The secret is shown once: listing endpoints does not show it.
    let (_, list) = h.get(&m.key, "/v1/webhook_endpoints").await;
    assert_eq!(list["data"][0]["id"], endpoint_id);
    assert!(list["data"][0].get("secret").is_none(), "{list}");
    assert!(!list.to_string().contains(secret));
}

#[sqlx::test]
async fn a_receiver_failing_twice_gets_three_attempts_with_growing_backoff(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let rx = receiver(&[Reply::Status(500), Reply::Status(503)]).await;
    let (endpoint_id, secret) = h.endpoint(&m, &rx.url).await;
    rx.trust(&secret);
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;

    let report = h.pass().await;
    assert_eq!(report.retrying, 1, "{report:?}");
    let first = h.delivery(&m, &event_id, &endpoint_id).await;
    assert_eq!(first["status"], "pending");
    let t1 = time(&first["attempts"][0]["attempted_at"]);
    let next1 = time(&first["next_attempt_at"]);
    let gap1 = next1 - t1;
    assert!(gap1 >= Duration::seconds(10) && gap1 <= Duration::seconds(12), "first backoff {gap1}");

    // Not yet due: nothing is sent.
    h.clock.advance(Duration::seconds(5));
    assert_eq!(h.pass().await.attempts(), 0);
    assert_eq!(rx.hits().len(), 1);

    h.advance_to(next1);
    assert_eq!(h.pass().await.retrying, 1);
    let second = h.delivery(&m, &event_id, &endpoint_id).await;
    let t2 = time(&second["attempts"][1]["attempted_at"]);
    let next2 = time(&second["next_attempt_at"]);
    let gap2 = next2 - t2;
    assert!(gap2 >= Duration::seconds(20) && gap2 <= Duration::seconds(24), "second backoff {gap2}");
    assert!(gap2 > gap1);

    h.advance_to(next2 - Duration::seconds(1));
    assert_eq!(h.pass().await.attempts(), 0);
    h.advance_to(next2);
    assert_eq!(h.pass().await.delivered, 1);

    let done = h.delivery(&m, &event_id, &endpoint_id).await;
    assert_eq!(done["status"], "delivered");
    assert_eq!(done["attempt_count"], 3);
    let attempts = done["attempts"].as_array().expect("attempts");
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(503), &json!(200)]);
    let outcomes: Vec<&Value> = attempts.iter().map(|a| &a["outcome"]).collect();
    assert_eq!(outcomes, [&json!("retry"), &json!("retry"), &json!("delivered")]);
    let numbers: Vec<&Value> = attempts.iter().map(|a| &a["attempt"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2), &json!(3)]);
    assert_eq!(rx.hits().len(), 3);
    assert!(rx.hits().iter().all(|hit| hit.signature_ok && hit.event_id() == event_id));
    // Each attempt is signed at its own time.
    let stamps: Vec<i64> = rx.hits().iter().map(|hit| hit.timestamp).collect();
    assert_eq!(stamps, [t1.timestamp(), t2.timestamp(), next2.timestamp()]);

    h.clock.advance(Duration::hours(2));
    assert_eq!(h.pass().await.attempts(), 0);
    assert_eq!(rx.hits().len(), 3);
}

#[sqlx::test]
async fn gone_and_bad_request_are_not_retried(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let gone = receiver(&[Reply::Status(410)]).await;
    let bad = receiver(&[Reply::Status(400)]).await;
    let (gone_id, _) = h.endpoint(&m, &gone.url).await;
    let (bad_id, _) = h.endpoint(&m, &bad.url).await;
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;

    let report = h.pass().await;
    assert_eq!((report.failed, report.retrying), (2, 0), "{report:?}");
    for hours in [1, 25] {
        h.clock.advance(Duration::hours(hours));
        assert_eq!(h.pass().await.attempts(), 0);
    }
    assert_eq!((gone.hits().len(), bad.hits().len()), (1, 1));
    for (endpoint, code) in [(&gone_id, 410), (&bad_id, 400)] {
        let delivery = h.delivery(&m, &event_id, endpoint).await;
        assert_eq!(delivery["status"], "failed");
        assert_eq!(delivery["next_attempt_at"], Value::Null);
        assert_eq!(delivery["attempts"].as_array().map(Vec::len), Some(1));
        assert_eq!(delivery["attempts"][0]["status_code"], code);
        assert_eq!(delivery["attempts"][0]["outcome"], "failed");
    }
}

#[sqlx::test]
async fn a_timeout_is_retried(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let rx = receiver(&[Reply::Stall]).await;
    let (endpoint_id, secret) = h.endpoint(&m, &rx.url).await;
    rx.trust(&secret);
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;

    let started = std::time::Instant::now();
    assert_eq!(h.pass().await.retrying, 1);
    assert!(started.elapsed() < StdDuration::from_millis(STALL_MS), "the dispatcher gave up at its timeout");
    let delivery = h.delivery(&m, &event_id, &endpoint_id).await;
    assert_eq!(delivery["status"], "pending");
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["status_code"], Value::Null);
    assert_eq!(attempt["outcome"], "retry");
    assert_eq!(attempt["error"], "timeout", "{attempt}");
    assert!(attempt["duration_ms"].as_u64().is_some_and(|ms| ms >= TIMEOUT_MS - 50), "{attempt}");

    h.advance_to(time(&delivery["next_attempt_at"]));
    assert_eq!(h.pass().await.delivered, 1);
    assert_eq!(h.delivery(&m, &event_id, &endpoint_id).await["status"], "delivered");
    assert_eq!(rx.event_ids(), [event_id.clone(), event_id]);
}

#[sqlx::test]
async fn a_connection_refused_is_retried(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let (endpoint_id, _) = h.endpoint(&m, &format!("http://{closed}/hook")).await;
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;
    assert_eq!(h.pass().await.retrying, 1);
    let delivery = h.delivery(&m, &event_id, &endpoint_id).await;
    assert_eq!(delivery["status"], "pending");
    // Only the class: no raw error (which would tell a merchant what listens where).
    assert_eq!(delivery["attempts"][0]["error"], "connect", "{delivery}");
    let stored: Vec<Option<String>> =
        sqlx::query_scalar("SELECT error FROM webhook_attempts").fetch_all(&h.state.pool).await.expect("errors");
    assert_eq!(stored, [Some("connect".to_owned())]);
}

#[sqlx::test]
async fn an_endpoint_receives_its_events_in_outbox_order(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let slow = receiver(&[Reply::Status(500)]).await;
    let healthy = receiver(&[]).await;
    let (slow_id, slow_secret) = h.endpoint(&m, &slow.url).await;
    let (_, healthy_secret) = h.endpoint(&m, &healthy.url).await;
    slow.trust(&slow_secret);
    healthy.trust(&healthy_secret);
    let first_invoice = h.invoice(&m).await;
    let second_invoice = h.invoice(&m).await;
    let events = h.events(&m).await;
    let (e2, e1) = (events[0]["id"].as_str().expect("e2").to_owned(), events[1]["id"].as_str().expect("e1").to_owned());
    assert_eq!(events[1]["data"]["id"], first_invoice.as_str());
    assert_eq!(events[0]["data"]["id"], second_invoice.as_str());

    let report = h.pass().await;
    assert_eq!((report.delivered, report.retrying), (2, 1), "{report:?}");
    // The failing endpoint's first event holds back its second; the other endpoint is not held back.
    assert_eq!(slow.event_ids(), std::slice::from_ref(&e1));
    assert_eq!(healthy.event_ids(), [e1.clone(), e2.clone()]);
    let held = h.delivery(&m, &e2, &slow_id).await;
    assert_eq!((held["status"].as_str(), held["attempt_count"].as_u64()), (Some("pending"), Some(0)));

    // Held back even when the later one is due and the earlier one is not.
    h.clock.advance(Duration::seconds(1));
    assert_eq!(h.pass().await.attempts(), 0);

    h.clock.advance(Duration::seconds(12));
    let report = h.pass().await;
    assert_eq!(report.delivered, 2, "{report:?}");
    assert_eq!(slow.event_ids(), [e1.clone(), e1, e2]);
    assert!(slow.hits().iter().all(|hit| hit.signature_ok));
}

#[sqlx::test]
async fn a_superseded_event_is_not_retried(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let rx = receiver(&[Reply::Status(502)]).await;
    let (endpoint_id, secret) = h.endpoint_for(&m, json!({"url": rx.url, "events": ["invoice.created", "invoice.paid"]})).await;
    rx.trust(&secret);
    let invoice_id = h.invoice(&m).await;
    let created = h.event_id(&m, "invoice.created").await;
    assert_eq!(h.pass().await.retrying, 1);

    // The invoice changes before the retry is due: its newer event goes out, the old one never again.
    h.pay(&invoice_id).await;
    let paid = h.event_id(&m, "invoice.paid").await;
    let report = h.pass().await;
    assert_eq!((report.superseded, report.delivered), (1, 1), "{report:?}");
    assert_eq!(rx.event_ids(), [created.clone(), paid.clone()]);

    h.clock.advance(Duration::hours(25));
    assert_eq!(h.pass().await.attempts(), 0);
    assert_eq!(rx.hits().len(), 2);
    let old = h.delivery(&m, &created, &endpoint_id).await;
    assert_eq!(old["status"], "superseded");
    assert_eq!(old["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(old["next_attempt_at"], Value::Null);
    assert_eq!(h.delivery(&m, &paid, &endpoint_id).await["status"], "delivered");
}

#[sqlx::test]
async fn another_merchant_can_neither_see_nor_delete_the_endpoint(pool: PgPool) {
    let h = start(pool).await;
    let alice = h.merchant().await;
    let bob = h.merchant().await;
    let rx = receiver(&[]).await;
    let (endpoint_id, _) = h.endpoint(&alice, &rx.url).await;
    h.invoice(&alice).await;
    let event_id = h.event_id(&alice, "invoice.created").await;
    h.pass().await;

    let (status, list) = h.get(&bob.key, "/v1/webhook_endpoints").await;
    assert_eq!((status, list["data"].clone()), (StatusCode::OK, json!([])));
    let (status, events) = h.get(&bob.key, "/v1/events").await;
    assert_eq!((status, events["data"].clone()), (StatusCode::OK, json!([])));
    let not_found = [
        (Method::DELETE, format!("/v1/webhook_endpoints/{endpoint_id}")),
        (Method::GET, format!("/v1/events/{event_id}")),
        (Method::GET, format!("/v1/events/{event_id}/deliveries")),
        (Method::POST, format!("/v1/events/{event_id}/replay")),
        (Method::DELETE, "/v1/webhook_endpoints/we_doesnotexist00000000000".to_owned()),
        (Method::DELETE, "/v1/webhook_endpoints/nonsense".to_owned()),
        (Method::GET, "/v1/events/evt_doesnotexist0000000000".to_owned()),
    ];
    for (method, path) in not_found {
        let (status, body) = h.call(method.clone(), &bob.key, &path, None).await;
        assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{method} {path}: {body}");
    }
    let (status, body) = h.call(Method::GET, "pr_nobody_x", "/v1/events", None).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));

    // Alice still has it all.
    let (_, list) = h.get(&alice.key, "/v1/webhook_endpoints").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(h.deliveries(&alice, &event_id).await.len(), 1);
    let path = format!("/v1/webhook_endpoints/{endpoint_id}");
    let (status, deleted) = h.call(Method::DELETE, &alice.key, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted, json!({"id": endpoint_id, "object": "webhook_endpoint", "deleted": true}));
    let (status, _) = h.call(Method::DELETE, &alice.key, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn deleting_an_endpoint_stops_deliveries(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let rx = receiver(&[Reply::Status(500)]).await;
    let (endpoint_id, _) = h.endpoint(&m, &rx.url).await;
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;
    assert_eq!(h.pass().await.retrying, 1);

    let (status, _) = h.call(Method::DELETE, &m.key, &format!("/v1/webhook_endpoints/{endpoint_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    h.clock.advance(Duration::hours(1));
    assert_eq!(h.pass().await.attempts(), 0);
    let delivery = h.delivery(&m, &event_id, &endpoint_id).await;
    assert_eq!(delivery["status"], "canceled");
    assert_eq!(delivery["next_attempt_at"], Value::Null);

    // New events are not fanned out to it either, nor can it be replayed to.
    h.invoice(&m).await;
    let report = h.pass().await;
    assert_eq!((report.events_fanned_out, report.deliveries_created), (1, 0), "{report:?}");
    let (status, replayed) = h.call(Method::POST, &m.key, &format!("/v1/events/{event_id}/replay"), None).await;
    assert_eq!((status, replayed["data"].clone()), (StatusCode::ACCEPTED, json!([])));
    assert_eq!(h.pass().await.attempts(), 0);
    assert_eq!(rx.hits().len(), 1);
    let (_, list) = h.get(&m.key, "/v1/webhook_endpoints").await;
    assert_eq!(list["data"], json!([]));
}

#[sqlx::test]
async fn events_are_listed_newest_first_with_cursor_pagination(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let other = h.merchant().await;
    h.invoice(&other).await;
    let mut invoices = Vec::new();
    for _ in 0..5 {
        invoices.push(h.invoice(&m).await);
        h.clock.advance(Duration::seconds(1));
    }
    let all = h.events(&m).await;
    let ids: Vec<&str> = all.iter().map(|e| e["data"]["id"].as_str().expect("object id")).collect();
    let newest_first: Vec<&str> = invoices.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest_first);
    let (status, default_page) = h.get(&m.key, "/v1/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(default_page["data"].as_array().map(Vec::len), Some(5));
    assert_eq!(default_page["has_more"], false);
    assert_eq!(default_page["object"], "list");

    let mut seen = Vec::new();
    let mut path = "/v1/events?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = h.get(&m.key, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|e| e["id"].clone()));
        pages += 1;
        if page["has_more"] == false {
            break;
        }
        let last = data.last().expect("a page with more has items")["id"].as_str().expect("id").to_owned();
        path = format!("/v1/events?limit=2&starting_after={last}");
    }
    assert_eq!(pages, 3);
    let expected: Vec<Value> = all.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(seen, expected);

    let foreign = h.events(&other).await[0]["id"].as_str().expect("id").to_owned();
    for bad in [
        "/v1/events?limit=0".to_owned(),
        "/v1/events?limit=101".to_owned(),
        "/v1/events?limit=ten".to_owned(),
        "/v1/events?limit=-1".to_owned(),
        "/v1/events?starting_after=nonsense".to_owned(),
        "/v1/events?ending_before=inv_1".to_owned(),
        "/v1/events?surprise=1".to_owned(),
    ] {
        let (status, body) = h.get(&m.key, &bad).await;
        assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"), "{bad}: {body}");
    }
    // An event of another merchant's, or none, is no place in this merchant's list.
    for cursor in ["evt_doesnotexist0000000000".to_owned(), foreign] {
        let (status, body) = h.get(&m.key, &format!("/v1/events?starting_after={cursor}")).await;
        assert_eq!((status, &body["data"], &body["has_more"]), (StatusCode::OK, &json!([]), &json!(false)), "{cursor}: {body}");
    }
    let (status, page) = h.get(&m.key, "/v1/events?limit=100").await;
    assert_eq!((status, page["data"].as_array().map(Vec::len)), (StatusCode::OK, Some(5)));
}

#[sqlx::test]
async fn replay_redelivers_an_event_now(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let rx = receiver(&[]).await;
    let (endpoint_id, secret) = h.endpoint(&m, &rx.url).await;
    rx.trust(&secret);
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;
    assert_eq!(h.pass().await.delivered, 1);

    h.clock.advance(Duration::minutes(5));
    let path = format!("/v1/events/{event_id}/replay");
    let (status, replayed) = h.call(Method::POST, &m.key, &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    let queued = replayed["data"].as_array().expect("data");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0]["endpoint_id"], endpoint_id.as_str());
    assert_eq!((queued[0]["replay"].as_bool(), queued[0]["status"].as_str()), (Some(true), Some("pending")));
    // Replaying again while the copy is still pending queues nothing more.
    let (status, again) = h.call(Method::POST, &m.key, &path, None).await;
    assert_eq!((status, again["data"].clone()), (StatusCode::ACCEPTED, json!([])));

    assert_eq!(h.pass().await.delivered, 1);
    assert_eq!(rx.event_ids(), [event_id.clone(), event_id.clone()]);
    let hits = rx.hits();
    assert!(hits.iter().all(|hit| hit.signature_ok));
    assert_eq!(hits[0].body, hits[1].body, "the same payload, byte for byte");
    assert_eq!(hits[1].timestamp, h.clock.now().timestamp(), "signed anew at the replay");
    let log = h.deliveries(&m, &event_id).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[1]["replay"], true);
    assert!(log.iter().all(|d| d["status"] == "delivered"));
}

#[sqlx::test]
async fn endpoints_get_only_their_types_and_only_events_after_their_creation(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let before = h.invoice(&m).await;
    h.clock.advance(Duration::seconds(1));
    let all = receiver(&[]).await;
    let paid_only = receiver(&[]).await;
    let (_, all_secret) = h.endpoint(&m, &all.url).await;
    all.trust(&all_secret);
    let (_, created) = h
        .call(Method::POST, &m.key, "/v1/webhook_endpoints", Some(json!({"url": paid_only.url, "events": ["invoice.paid"]})))
        .await;
    assert_eq!(created["events"], json!(["invoice.paid"]));
    paid_only.trust(created["secret"].as_str().expect("secret"));
    let after = h.invoice(&m).await;
    h.pay(&before).await;
    let report = h.pass().await;
    // `*` also gets the payment's own events (detected, confirmed): 3 + 2 deliveries.
    assert_eq!((report.delivered, report.failed), (5, 0), "{report:?}");
    let objects = |rx: &Receiver| -> Vec<(String, String)> {
        rx.hits()
            .iter()
            .filter(|hit| hit.event_type().starts_with("invoice."))
            .map(|hit| (hit.event_type(), hit.json()["data"]["id"].as_str().expect("id").to_owned()))
            .collect()
    };
    assert_eq!(
        objects(&all),
        [("invoice.created".to_owned(), after.clone()), ("invoice.paid".to_owned(), before.clone())]
    );
    assert_eq!(objects(&paid_only), [("invoice.paid".to_owned(), before)]);
}

#[sqlx::test]
async fn endpoint_creation_is_validated_and_bounded(pool: PgPool) {
    let h = start(pool.clone()).await;
    let m = h.merchant().await;
    let long = format!("https://hooks.example.com/{}", "a".repeat(2100));
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (json!({"url": "http://hooks.example.com/x"}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "ftp://hooks.example.com/x"}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "https://10.1.2.3/x"}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "https://169.254.169.254/x"}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "https://u:p@hooks.example.com/x"}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "not a url"}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": long}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "https://hooks.example.com/x", "events": []}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "https://hooks.example.com/x", "events": ["invoice.nope"]}), StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (json!({"url": "https://hooks.example.com/x", "events": "invoice.paid"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"events": ["invoice.paid"]}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"url": "https://hooks.example.com/x", "surprise": 1}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, response) = h.call(Method::POST, &m.key, "/v1/webhook_endpoints", Some(body.clone())).await;
        assert_eq!((status, code(&response)), (want_status, want_code), "{body} -> {response}");
    }
    let response = h
        .client
        .post(format!("{}/v1/webhook_endpoints", h.base))
        .bearer_auth(&m.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints").fetch_one(&pool).await.expect("n");
    assert_eq!(n, 0, "no refused request created an endpoint");

    for i in 0..payrail::webhook::endpoint::ENDPOINTS_PER_MERCHANT_MAX {
        h.endpoint(&m, &format!("https://hooks.example.com/{i}")).await;
    }
    let (status, body) =
        h.call(Method::POST, &m.key, "/v1/webhook_endpoints", Some(json!({"url": "https://hooks.example.com/x"}))).await;
    assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "endpoint_limit_reached"), "{body}");
    let secrets: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT secret_sealed FROM webhook_endpoints").fetch_all(&pool).await.expect("secrets");
    let unique: std::collections::HashSet<&Vec<u8>> = secrets.iter().collect();
    assert_eq!(unique.len(), secrets.len(), "every endpoint has its own secret");
}

#[sqlx::test]
async fn a_failing_endpoint_is_abandoned_after_24_hours(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let rx = receiver(&[Reply::Status(500); 80]).await;
    let (endpoint_id, _) = h.endpoint(&m, &rx.url).await;
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;
    let start = h.clock.now();
    let mut abandoned = 0;
    for _ in 0..30 {
        abandoned += h.pass().await.abandoned;
        if abandoned > 0 {
            break;
        }
        h.clock.advance(Duration::hours(1));
    }
    assert_eq!(abandoned, 1);
    let delivery = h.delivery(&m, &event_id, &endpoint_id).await;
    assert_eq!(delivery["status"], "abandoned");
    let attempts = delivery["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), rx.hits().len());
    assert!(attempts.len() >= 10 && attempts.len() <= 30, "{}", attempts.len());
    let last = attempts.last().expect("last");
    assert_eq!(last["outcome"], "abandoned");
    assert!(attempts[..attempts.len() - 1].iter().all(|a| a["outcome"] == "retry"));
    let last_at = time(&last["attempted_at"]);
    assert!(last_at >= start + Duration::hours(24) && last_at <= start + Duration::hours(25), "{last_at}");
    h.clock.advance(Duration::hours(48));
    assert_eq!(h.pass().await.attempts(), 0);
}

#[sqlx::test]
async fn the_dispatcher_loop_holds_the_advisory_lock_and_delivers(pool: PgPool) {
    let h = start(pool.clone()).await;
    let m = h.merchant().await;
    let rx = receiver(&[]).await;
    let (_, secret) = h.endpoint(&m, &rx.url).await;
    rx.trust(&secret);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clock: Arc<dyn Clock> = h.clock.clone();
    let secrets = h.state.webhook_secrets.clone();
    let task = tokio::spawn(payrail::webhook::run_dispatcher(pool.clone(), clock, true, secrets, None, stopped));
    h.invoice(&m).await;
    let deadline = std::time::Instant::now() + StdDuration::from_secs(15);
    while rx.hits().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert_eq!(rx.types(), ["invoice.created"]);
    assert!(rx.hits()[0].signature_ok);

    let try_lock = || async {
        let mut conn = pool.acquire().await.expect("conn");
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(payrail::webhook::dispatch::LOCK_NAME)
            .fetch_one(&mut *conn)
            .await
            .expect("try lock");
        if locked {
            sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
                .bind(payrail::webhook::dispatch::LOCK_NAME)
                .execute(&mut *conn)
                .await
                .expect("unlock");
        }
        locked
    };
    assert!(!try_lock().await, "the running dispatcher holds the lock: no second replica dispatches");
    stop.send(true).expect("stop");
    tokio::time::timeout(StdDuration::from_secs(10), task).await.expect("stops promptly").expect("task");
    assert!(try_lock().await, "the lock is released at shutdown");
}

/// A receiver that holds every request until the test releases it, then answers 200.
struct HangingReceiver {
    url: String,
    hits: Arc<Mutex<Vec<String>>>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn hanging_receiver() -> HangingReceiver {
    let hits: Arc<Mutex<Vec<String>>> = Arc::default();
    let (release, released) = tokio::sync::watch::channel(false);
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let (seen, mut released) = (seen.clone(), released.clone());
            async move {
                let event = headers.get("payrail-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                seen.lock().expect("hits").push(event);
                let _ = released.wait_for(|go| *go).await;
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    HangingReceiver { url, hits, release }
}

/// Waits until `done` holds, polling; panics with `what` if it never does (a bound against a hung
/// test, far above how long the work takes).
async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + StdDuration::from_secs(60);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

async fn statuses(pool: &PgPool, endpoint_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id")
        .bind(endpoint_id)
        .fetch_all(pool)
        .await
        .expect("statuses")
}

/// One merchant's endpoint that never answers delays only itself: while its first delivery hangs,
/// the running dispatcher goes on fanning out and delivering another merchant's events, and does not
/// send the hanging endpoint its next event (one delivery in flight per endpoint, in order).
#[sqlx::test]
async fn a_hanging_endpoint_delays_only_itself(pool: PgPool) {
    let h = start(pool.clone()).await;
    let slow_merchant = h.merchant().await;
    let fast_merchant = h.merchant().await;
    let slow = hanging_receiver().await;
    let fast = receiver(&[]).await;
    let (slow_id, _) = h.endpoint(&slow_merchant, &slow.url).await;
    let (fast_id, fast_secret) = h.endpoint(&fast_merchant, &fast.url).await;
    fast.trust(&fast_secret);

    // Attempts here never time out on their own: only the release ends the hanging one.
    let config = DispatchConfig {
        timeout_ms: 600_000,
        connect_timeout_ms: 600_000,
        poll_interval_ms: 20,
        allow_loopback: true,
        ..DispatchConfig::default()
    };
    let dispatcher =
        Dispatcher::new(pool.clone(), h.clock.clone(), config, h.state.webhook_secrets.clone()).expect("dispatcher");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { dispatcher.run(stopped).await });

    h.invoice(&slow_merchant).await;
    wait_until("the slow endpoint receives its first event", || async { slow.hits.lock().expect("hits").len() == 1 })
        .await;
    // Written while the slow endpoint's attempt hangs.
    h.invoice(&slow_merchant).await;
    for _ in 0..3 {
        h.invoice(&fast_merchant).await;
    }
    wait_until("the fast endpoint's three deliveries complete", || async {
        statuses(&pool, &fast_id).await == ["delivered", "delivered", "delivered"]
    })
    .await;
    assert_eq!(fast.hits().len(), 3);
    assert!(fast.hits().iter().all(|hit| hit.signature_ok));
    // Still hanging on its first delivery: not sent again, and its second is held back.
    assert_eq!(slow.hits.lock().expect("hits").len(), 1);
    assert_eq!(statuses(&pool, &slow_id).await, ["pending", "pending"]);
    let attempted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
    )
    .bind(&slow_id)
    .fetch_one(&pool)
    .await
    .expect("attempts");
    assert_eq!(attempted, 0, "the hanging attempt is not finished, so not logged");

    slow.release.send(true).expect("release");
    wait_until("the slow endpoint's deliveries complete once released", || async {
        statuses(&pool, &slow_id).await == ["delivered", "delivered"]
    })
    .await;
    let slow_events: Vec<String> = slow.hits.lock().expect("hits").clone();
    let events = h.events(&slow_merchant).await;
    let in_order: Vec<String> = events.iter().rev().map(|e| e["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(slow_events, in_order, "each event once, oldest first");

    stop.send(true).expect("stop");
    task.await.expect("task").expect("dispatcher");
}

/// The delivery log keeps nothing of what an endpoint answers beyond its status code: a merchant
/// could otherwise point an endpoint at an internal service and read its answers back.
#[sqlx::test]
async fn the_delivery_log_shows_no_response_body(pool: PgPool) {
    let h = start(pool.clone()).await;
    let m = h.merchant().await;
    const LEAK: &str = "internal-admin-token=sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, LEAK) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (endpoint_id, _) = h.endpoint(&m, &url).await;
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;
    assert_eq!(h.pass().await.retrying, 1);

    let (status, log) = h.get(&m.key, &format!("/v1/events/{event_id}/deliveries")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!log.to_string().contains("sk_live"), "{log}");
    let attempt = &h.delivery(&m, &event_id, &endpoint_id).await["attempts"][0];
    assert_eq!((attempt["status_code"].as_u64(), attempt["error"].as_str()), (Some(500), Some("http_status")));
    let keys: Vec<&String> = attempt.as_object().expect("attempt").keys().collect();
    assert_eq!(keys, ["attempt", "attempted_at", "duration_ms", "error", "outcome", "status_code"]);
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'webhook_attempts' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("columns");
    assert!(!columns.iter().any(|c| c.contains("excerpt") || c.contains("body")), "{columns:?}");
}

/// An `https` endpoint whose server does not speak TLS fails as `tls`, nothing more.
#[sqlx::test]
async fn a_tls_failure_is_logged_as_its_class_only(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let plain = receiver(&[]).await;
    let url = plain.url.replacen("http://", "https://", 1);
    let (endpoint_id, _) = h.endpoint(&m, &url).await;
    h.invoice(&m).await;
    let event_id = h.event_id(&m, "invoice.created").await;
    assert_eq!(h.pass().await.retrying, 1);
    let attempt = &h.delivery(&m, &event_id, &endpoint_id).await["attempts"][0];
    assert_eq!((attempt["status_code"].clone(), attempt["error"].clone()), (Value::Null, json!("tls")), "{attempt}");
}

/// The migration that drops the response excerpt clears what was logged before it: old attempts
/// keep their status code and get an error class in place of their raw error text.
#[sqlx::test(migrations = false)]
async fn the_migration_clears_logged_bodies_and_raw_errors(pool: PgPool) {
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            payrail::db::MIGRATOR.migrations.iter().filter(|m| m.version < 14).cloned().collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.expect("migrations before 0014");
    sqlx::raw_sql(
        "INSERT INTO merchants (id, name) VALUES ('mer_0000000000000001', 'Shop'); \
         INSERT INTO webhook_endpoints (id, merchant_id, url, secret, created_at) VALUES \
             ('we_0000000000000001', 'mer_0000000000000001', 'https://hooks.example.com/', \
              'whsec_0123456789abcdefghijklmnopqrstuvwxyzABCD', now()); \
         INSERT INTO outbox (event_id, merchant_id, event_type, object_id, payload) VALUES \
             ('evt_0000000000000001', 'mer_0000000000000001', 'invoice.created', 'inv_1', '{}'); \
         INSERT INTO webhook_deliveries (delivery_id, endpoint_id, outbox_id, object_id, status, attempts, \
                                         first_attempt_at, completed_at, created_at) \
             SELECT 'whd_0000000000000001', 'we_0000000000000001', id, 'inv_1', 'failed', 5, now(), now(), now() FROM outbox; \
         INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, error, duration_ms, response_excerpt, outcome) \
             SELECT d.id, a.n, now(), a.code, a.error, 1, a.excerpt, 'retry' FROM webhook_deliveries d, (VALUES \
                 (1, 500, NULL, 'root:x:0:0:root:/root:/bin/bash'), \
                 (2, NULL, 'connect: tcp connect error: Connection refused (os error 111)', NULL), \
                 (3, NULL, 'timed out after 10000 ms', NULL), \
                 (4, NULL, 'request: client error (Connect): hooks.internal resolves only to internal addresses', NULL), \
                 (5, 200, NULL, 'ok')) AS a(n, code, error, excerpt);",
    )
    .execute(&pool)
    .await
    .expect("old rows");
    payrail::db::MIGRATOR.run(&pool).await.expect("all migrations");
    let rows: Vec<(i32, Option<i32>, Option<String>)> =
        sqlx::query_as("SELECT attempt, status_code, error FROM webhook_attempts ORDER BY attempt")
            .fetch_all(&pool)
            .await
            .expect("attempts");
    let class = |c: &str| Some(c.to_owned());
    assert_eq!(
        rows,
        [
            (1, Some(500), class("http_status")),
            (2, None, class("connect")),
            (3, None, class("timeout")),
            (4, None, class("refused_address")),
            (5, Some(200), None),
        ]
    );
    let has_excerpt: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
                        WHERE table_name = 'webhook_attempts' AND column_name = 'response_excerpt')",
    )
    .fetch_one(&pool)
    .await
    .expect("columns");
    assert!(!has_excerpt);
    let raw = sqlx::query("INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, error, duration_ms, outcome) \
                           SELECT id, 6, now(), 'connect: refused', 1, 'retry' FROM webhook_deliveries")
        .execute(&pool)
        .await;
    assert!(raw.is_err(), "only a class can be stored");
}

/// The signing secret is stored sealed: the row holds neither the secret nor any part of it, and
/// deliveries are still signed with the secret the API returned.
#[sqlx::test]
async fn signing_secrets_are_stored_sealed(pool: PgPool) {
    let h = start(pool.clone()).await;
    let m = h.merchant().await;
    let rx = receiver(&[]).await;
    let (endpoint_id, secret) = h.endpoint(&m, &rx.url).await;
    rx.trust(&secret);
    let (plaintext, sealed): (Option<String>, Vec<u8>) =
        sqlx::query_as("SELECT secret, secret_sealed FROM webhook_endpoints WHERE id = $1")
            .bind(&endpoint_id)
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(plaintext, None);
    let random = &secret.as_bytes()["whsec_".len()..];
    assert!(!sealed.windows(8).any(|w| random.windows(8).any(|r| r == w)), "no part of the secret is stored");
    let row_text: String = sqlx::query_scalar("SELECT row_to_json(e)::text FROM webhook_endpoints e WHERE id = $1")
        .bind(&endpoint_id)
        .fetch_one(&pool)
        .await
        .expect("row text");
    assert!(!row_text.contains(&secret[6..]), "{row_text}");

    h.invoice(&m).await;
    assert_eq!(h.pass().await.delivered, 1);
    assert!(rx.hits()[0].signature_ok, "signed with the secret the API returned");
}

/// A sealed secret is bound to its endpoint: copied into another endpoint's row it does not open,
/// and that endpoint's delivery waits (logged as an error) rather than being signed with it.
#[sqlx::test]
async fn a_sealed_secret_moved_to_another_endpoint_does_not_open(pool: PgPool) {
    let h = start(pool.clone()).await;
    let m = h.merchant().await;
    let rx = receiver(&[]).await;
    let (first, _) = h.endpoint(&m, "https://hooks.example.com/first").await;
    let (second, _) = h.endpoint(&m, &rx.url).await;
    sqlx::query("UPDATE webhook_endpoints SET secret_sealed = (SELECT secret_sealed FROM webhook_endpoints WHERE id = $1) WHERE id = $2")
        .bind(&first)
        .bind(&second)
        .execute(&pool)
        .await
        .expect("move");
    sqlx::query("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1").bind(&first).execute(&pool).await.expect("delete");
    h.invoice(&m).await;
    let report = h.pass().await;
    assert_eq!((report.errors, report.attempts()), (1, 0), "{report:?}");
    assert!(rx.hits().is_empty());
    let status: String = sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE endpoint_id = $1")
        .bind(&second)
        .fetch_one(&pool)
        .await
        .expect("status");
    assert_eq!(status, "pending");
}

/// With a key, start-up seals the secrets stored in plaintext before (by a development setup, or
/// before sealing existed), and deliveries still sign with the same secret. Without a key the
/// daemon refuses plaintext unless allowed, and never runs without the key that sealed what is there.
#[sqlx::test]
async fn start_up_seals_plaintext_secrets_and_requires_a_key(pool: PgPool) {
    use payrail::app::{webhook_secrets, AppError};
    use payrail::secrets::SecretsAtRest;

    assert!(matches!(webhook_secrets(&pool, None, false).await, Err(AppError::SecretsKeyRequired)));
    let plaintext = webhook_secrets(&pool, None, true).await.expect("plaintext allowed");
    assert!(matches!(plaintext, SecretsAtRest::Plaintext));

    let h = start(pool.clone()).await;
    let m = h.merchant().await;
    let merchant_id: String = sqlx::query_scalar("SELECT id FROM merchants").fetch_one(&pool).await.expect("merchant");
    let rx = receiver(&[]).await;
    let created = payrail::webhook::create_endpoint(&pool, &merchant_id, &rx.url, None, h.clock.now(), true, &plaintext)
        .await
        .expect("endpoint");
    let secret = created.secret.expose().to_owned();
    rx.trust(&secret);
    let stored: Option<String> = sqlx::query_scalar("SELECT secret FROM webhook_endpoints").fetch_one(&pool).await.expect("row");
    assert_eq!(stored.as_deref(), Some(secret.as_str()), "stored in plaintext while allowed");

    let key = payrail::secrets::SecretsKey::generate();
    let sealed = webhook_secrets(&pool, Some(key), false).await.expect("sealed");
    let (plain, sealed_bytes): (Option<String>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT secret, secret_sealed FROM webhook_endpoints").fetch_one(&pool).await.expect("row");
    assert_eq!(plain, None);
    assert!(sealed_bytes.is_some());

    // Sealed rows and no key: refused even where plaintext is allowed.
    assert!(matches!(webhook_secrets(&pool, None, true).await, Err(AppError::SealedWithoutKey { count: 1 })));

    let dispatcher = Dispatcher::new(
        pool.clone(),
        h.clock.clone(),
        DispatchConfig { allow_loopback: true, ..DispatchConfig::default() },
        sealed,
    )
    .expect("dispatcher");
    h.invoice(&m).await;
    assert_eq!(dispatcher.dispatch_once().await.expect("pass").delivered, 1);
    assert!(rx.hits()[0].signature_ok, "signed with the secret from before sealing");
}

/// An endpoint's task stops starting attempts once its time budget is spent and gives its slot
/// back; the endpoint's next delivery goes out in a later pass, still in order.
#[sqlx::test]
async fn a_task_past_its_time_budget_gives_its_slot_back(pool: PgPool) {
    let h = start(pool.clone()).await;
    let m = h.merchant().await;
    let rx = receiver(&[]).await;
    let (_, secret) = h.endpoint(&m, &rx.url).await;
    rx.trust(&secret);
    h.invoice(&m).await;
    h.invoice(&m).await;
    let config = DispatchConfig { allow_loopback: true, endpoint_time_budget_ms: 0, ..DispatchConfig::default() };
    let dispatcher = Dispatcher::new(pool, h.clock.clone(), config, h.state.webhook_secrets.clone()).expect("dispatcher");
    let first = dispatcher.dispatch_once().await.expect("pass");
    assert_eq!((first.endpoints_started, first.delivered), (1, 1), "{first:?}");
    let second = dispatcher.dispatch_once().await.expect("pass");
    assert_eq!((second.endpoints_started, second.delivered), (1, 1), "{second:?}");
    let events: Vec<String> = h.events(&m).await.iter().rev().map(|e| e["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(rx.event_ids(), events, "oldest first");
    assert_eq!(dispatcher.dispatch_once().await.expect("pass").attempts(), 0);
}

/// The loop also stops when its shutdown sender is gone: nothing could ever tell it to stop again.
#[sqlx::test]
async fn the_dispatcher_loop_stops_when_its_shutdown_sender_is_dropped(pool: PgPool) {
    let h = start(pool).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    drop(stop);
    let ended = tokio::time::timeout(StdDuration::from_secs(60), h.dispatcher.run(stopped)).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
}

/// An endpoint is read, changed and switched off and on over the API: a disabled endpoint gets
/// nothing (not even later), an enabled one gets its new types; bad changes are refused; events
/// can be listed by type.
#[sqlx::test]
async fn an_endpoint_is_read_changed_disabled_and_enabled_again(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let other = h.merchant().await;
    let rx = receiver(&[]).await;
    let (id, secret) = h.endpoint_for(&m, json!({"url": rx.url, "events": ["invoice.created"]})).await;
    rx.trust(&secret);
    let path = format!("/v1/webhook_endpoints/{id}");
    let (status, shown) = h.get(&m.key, &path).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!((shown["events"].clone(), shown["disabled"].clone(), shown["description"].clone()), (json!(["invoice.created"]), json!(false), Value::Null));
    assert!(shown.get("secret").is_none());
    let (status, _) = h.get(&other.key, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another merchant's endpoint");

    let (status, changed) = h.call(Method::PATCH, &m.key, &path, Some(json!({"disabled": true, "description": "orders"}))).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!((changed["disabled"].clone(), changed["description"].clone()), (json!(true), json!("orders")));
    let skipped = h.invoice(&m).await;
    assert_eq!(h.pass().await.delivered, 0);
    assert!(rx.hits().is_empty(), "a disabled endpoint gets nothing");

    let (status, changed) =
        h.call(Method::PATCH, &m.key, &path, Some(json!({"disabled": false, "events": ["invoice.created", "invoice.paid"]}))).await;
    assert_eq!((status, changed["events"].clone()), (StatusCode::OK, json!(["invoice.created", "invoice.paid"])), "{changed}");
    let invoice = h.invoice(&m).await;
    h.pay(&invoice).await;
    assert_eq!(h.pass().await.delivered, 2);
    assert_eq!(rx.types(), ["invoice.created", "invoice.paid"]);
    assert!(rx.hits().iter().all(|hit| hit.json()["data"]["id"] == invoice.as_str()), "nothing of {skipped}, created while disabled");

    for bad in [
        json!({"url": "http://hooks.example.com/x"}),
        json!({"events": ["invoice.nope"]}),
        json!({"description": "x".repeat(501)}),
        json!({"description": "nul \u{0} inside"}),
        json!({"surprise": 1}),
    ] {
        let (status, body) = h.call(Method::PATCH, &m.key, &path, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (status, _) = h.call(Method::PATCH, &other.key, &path, Some(json!({"disabled": true}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, page) = h.get(&m.key, "/v1/events?type=invoice.created").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let types: Vec<&str> = page["data"].as_array().expect("data").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["invoice.created", "invoice.created"]);
    let (status, _) = h.get(&m.key, "/v1/events?type=invoice.nope").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A rotated secret: deliveries carry a signature of the new and of the previous secret until the
/// overlap ends, so a receiver switching over verifies both; after it, only the new one signs.
#[sqlx::test]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    let other = h.merchant().await;
    let rx = receiver(&[]).await;
    let (id, old) = h.endpoint_for(&m, json!({"url": rx.url, "events": ["invoice.created"]})).await;
    let path = format!("/v1/webhook_endpoints/{id}/rotate_secret");
    let (status, rotated) = h.call(Method::POST, &m.key, &path, Some(json!({"overlap_s": 3600}))).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().expect("the new secret, shown once").to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let (_, shown) = h.get(&m.key, &format!("/v1/webhook_endpoints/{id}")).await;
    assert!(shown.get("secret").is_none(), "not readable again");

    let mut expected = Vec::new();
    for (trusted, advance_s, verifies) in [(&old, 0, true), (&new, 0, true), (&old, 3601, false), (&new, 0, true)] {
        h.clock.advance(Duration::seconds(advance_s));
        rx.trust(trusted);
        h.invoice(&m).await;
        // The receiver answers 400 to a signature it cannot verify: that delivery fails.
        let report = h.pass().await;
        assert_eq!((report.delivered, report.failed), if verifies { (1, 0) } else { (0, 1) }, "{report:?}");
        expected.push(verifies);
    }
    let verified: Vec<bool> = rx.hits().iter().map(|hit| hit.signature_ok).collect();
    assert_eq!(verified, expected, "old and new during the overlap; only the new after it");

    let (status, _) = h.call(Method::POST, &m.key, &path, Some(json!({"overlap_s": 604_801}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = h.call(Method::POST, &other.key, &path, Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another merchant's endpoint");
}

/// An endpoint whose deliveries keep failing for three days is disabled and its merchant told
/// (`webhook_endpoint.disabled`, to its other endpoints); enabling it again clears the streak.
#[sqlx::test]
async fn an_endpoint_failing_for_days_is_disabled_until_enabled_again(pool: PgPool) {
    let h = start(pool).await;
    let m = h.merchant().await;
    // It trusts no secret: it answers 400 to every delivery.
    let failing = receiver(&[]).await;
    let (id, secret) = h.endpoint_for(&m, json!({"url": failing.url, "events": ["invoice.created"]})).await;
    let watcher = receiver(&[]).await;
    let (_, watcher_secret) = h.endpoint_for(&m, json!({"url": watcher.url, "events": ["webhook_endpoint.disabled"]})).await;
    watcher.trust(&watcher_secret);
    let path = format!("/v1/webhook_endpoints/{id}");

    h.invoice(&m).await;
    assert_eq!(h.pass().await.failed, 1);
    let (_, shown) = h.get(&m.key, &path).await;
    assert!(shown["failing_since"].is_string() && shown["disabled"] == json!(false), "{shown}");
    h.clock.advance(Duration::days(3));
    h.invoice(&m).await;
    assert_eq!(h.pass().await.failed, 1);
    let (_, shown) = h.get(&m.key, &path).await;
    assert_eq!((shown["disabled"].clone(), shown["disabled_reason"].clone()), (json!(true), json!("failing")), "{shown}");
    h.pass().await;
    assert_eq!(watcher.types(), ["webhook_endpoint.disabled"]);
    assert_eq!(watcher.hits()[0].json()["data"]["id"], id.as_str());

    h.invoice(&m).await;
    h.pass().await;
    assert_eq!(failing.hits().len(), 2, "nothing more to a disabled endpoint");
    failing.trust(&secret);
    let (status, enabled) = h.call(Method::PATCH, &m.key, &path, Some(json!({"disabled": false}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((enabled["disabled"].clone(), enabled["disabled_reason"].clone(), enabled["failing_since"].clone()), (json!(false), Value::Null, Value::Null));
    h.invoice(&m).await;
    assert_eq!(h.pass().await.delivered, 1);
}
