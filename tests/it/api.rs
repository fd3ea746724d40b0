//! The HTTP API over a real socket: status codes, error bodies, tenant isolation, idempotency.


use crate::common::{state_with_clock, BTC, USDC_POLYGON};
use payrail::api::{router, AppState, HttpLimits};
use payrail::merchant::create_merchant;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

struct Server {
    base: String,
    client: reqwest::Client,
    state: AppState,
}

async fn start(pool: PgPool) -> Server {
    let (state, _clock) = state_with_clock(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let limits = HttpLimits { body_limit_bytes: 4096, ..HttpLimits::default() };
    let app = router(state.clone(), limits);
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await });
    Server { base, client: reqwest::Client::new(), state }
}

impl Server {
    async fn merchant(&self) -> (String, String) {
        let m = create_merchant(&self.state.pool, "Shop").await.expect("merchant");
        (m.merchant_id, m.api_key)
    }

    async fn post(&self, key: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/v1/invoices", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("json body"))
    }

    async fn get(&self, key: Option<&str>, path: &str) -> (StatusCode, Value) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.expect("json body"))
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[sqlx::test]
async fn create_then_get_returns_the_invoice(pool: PgPool) {
    let server = start(pool).await;
    let (merchant_id, key) = server.merchant().await;
    let body = json!({"amount":"25.00","currency":"USD","accepted":[BTC, USDC_POLYGON],"order_id":"A-1","metadata":{"cart":7}});
    let (status, created) = server.post(&key, &body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id");
    assert!(id.starts_with("inv_"));
    assert_eq!(created["status"], "open");
    assert_eq!(created["merchant_id"], merchant_id.as_str());
    assert_eq!(created["amount"], "25.00");
    assert_eq!(created["metadata"]["cart"], 7);
    assert_eq!(created["payments"], json!([]));
    let options = created["payment_options"].as_array().expect("options");
    assert_eq!(options.len(), 2);
    assert_eq!(options[0]["asset"], BTC);
    assert_eq!(options[0]["amount"], "0.00038462");
    assert_eq!(options[0]["amount_minor"], "38462");
    assert_eq!(options[0]["rate"], "65000");
    assert_eq!(options[0]["address"], Value::Null);
    assert_eq!(options[1]["chain"], "eip155:137");

    let (status, fetched) = server.get(Some(&key), &format!("/v1/invoices/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["id"], created["id"]);
    assert_eq!(fetched["payment_options"], created["payment_options"]);
}

#[sqlx::test]
async fn without_accepted_every_priced_asset_is_offered(pool: PgPool) {
    let server = start(pool).await;
    let (_, key) = server.merchant().await;
    let (status, created) = server.post(&key, r#"{"amount":"5","currency":"EUR"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let options = created["payment_options"].as_array().expect("options");
    // Six chains: four natives with a EUR rate (BTC, ETH on three chains, POL, BNB) and their tokens.
    assert!(options.len() >= 15, "{}", options.len());
    assert!(options.iter().all(|o| o["amount_minor"].as_str().is_some_and(|a| a != "0")));
    assert_eq!(created["amount"], "5.00");
}

#[sqlx::test]
async fn a_merchant_never_sees_another_merchants_invoice(pool: PgPool) {
    let server = start(pool).await;
    let (_, alice) = server.merchant().await;
    let (_, bob) = server.merchant().await;
    let (_, created) = server.post(&alice, r#"{"amount":"1.00","currency":"USD"}"#).await;
    let path = format!("/v1/invoices/{}", created["id"].as_str().expect("id"));
    let (status, body) = server.get(Some(&bob), &path).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, _) = server.get(Some(&alice), &path).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get(Some(&alice), "/v1/invoices/inv_doesnotexist0000000000").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = server.get(Some(&alice), "/v1/invoices/../../etc").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[sqlx::test]
async fn missing_wrong_or_forged_keys_are_unauthorized(pool: PgPool) {
    let server = start(pool).await;
    let (_, key) = server.merchant().await;
    let (status, body) = server.get(None, "/v1/balances").await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // Right key id, wrong secret.
    let (prefix, secret) = key.rsplit_once('_').expect("key shape");
    let forged = format!("{prefix}_{}", "A".repeat(secret.len()));
    for bad in [forged.as_str(), "pr_x_y", "nonsense", ""] {
        let (status, body) = server.get(Some(bad), "/v1/balances").await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{bad}");
    }
    let (status, _) = server.get(Some(&key), "/v1/balances").await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test]
async fn malformed_and_invalid_bodies_get_clear_4xx_never_500(pool: PgPool) {
    let server = start(pool.clone()).await;
    let (_, key) = server.merchant().await;
    let cases: &[(&str, StatusCode, &str)] = &[
        ("{bad json", StatusCode::BAD_REQUEST, "invalid_json"),
        ("", StatusCode::BAD_REQUEST, "invalid_json"),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (r#"{"amount":25,"currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (r#"{"currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (r#"{"amount":"1","currency":"USD","surprise":1}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (r#"{"amount":"-5.00","currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (r#"{"amount":"0","currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (r#"{"amount":"1.005","currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (r#"{"amount":"1e9","currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (r#"{"amount":"NaN","currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (
            r#"{"amount":"99999999999999999999999999999999999999999999999999999999999999999999999999999999","currency":"USD"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "parameter_invalid",
        ),
        (r#"{"amount":"1000000.01","currency":"USD"}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (r#"{"amount":"5","currency":"XYZ"}"#, StatusCode::UNPROCESSABLE_ENTITY, "currency_unsupported"),
        (r#"{"amount":"5","currency":"USD","accepted":["nonsense"]}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (r#"{"amount":"5","currency":"USD","accepted":[]}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (
            r#"{"amount":"5","currency":"USD","accepted":["eip155:1/erc20:0x0000000000000000000000000000000000000001"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "asset_unsupported",
        ),
        (r#"{"amount":"5","currency":"JPY"}"#, StatusCode::UNPROCESSABLE_ENTITY, "rate_unavailable"),
        (r#"{"amount":"5","currency":"USD","expires_in":1}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
        (r#"{"amount":"5","currency":"USD","expires_in":-1}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (r#"{"amount":"5","currency":"USD","metadata":[1]}"#, StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, response) = server.post(&key, body).await;
        assert_eq!((status, code(&response)), (*want_status, *want_code), "{body} -> {response}");
        assert!(response["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let big = format!(r#"{{"amount":"5","currency":"USD","metadata":{{"x":"{}"}}}}"#, "a".repeat(8000));
    let (status, response) = server.post(&key, &big).await;
    assert_eq!((status, code(&response)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    let response = server
        .client
        .post(format!("{}/v1/invoices", server.base))
        .bearer_auth(&key)
        .body(r#"{"amount":"5","currency":"USD"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&pool).await.expect("n");
    assert_eq!(n, 0, "no refused request created an invoice");
}

#[sqlx::test]
async fn idempotency_key_header_replays_or_conflicts(pool: PgPool) {
    let server = start(pool).await;
    let (_, key) = server.merchant().await;
    let send = |body: &'static str| {
        server
            .client
            .post(format!("{}/v1/invoices", server.base))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("idempotency-key", "cart-9")
            .body(body)
            .send()
    };
    let first = send(r#"{"amount":"9.99","currency":"USD"}"#).await.expect("first");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    let again = send(r#"{"amount":"9.99","currency":"USD"}"#).await.expect("again");
    // The same response, replayed: same status, same body.
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    let again: Value = again.json().await.expect("json");
    assert_eq!(first, again);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&server.state.pool).await.expect("n");
    assert_eq!(count, 1);
    let other = send(r#"{"amount":"10.00","currency":"USD"}"#).await.expect("other");
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let other: Value = other.json().await.expect("json");
    assert_eq!(code(&other), "idempotency_conflict");
    // The same key on another POST route is another request: refused too.
    let void = server
        .client
        .post(format!("{}/v1/invoices/{}/void", server.base, first["id"].as_str().expect("id")))
        .bearer_auth(&key)
        .header("idempotency-key", "cart-9")
        .send()
        .await
        .expect("void");
    assert_eq!(void.status(), StatusCode::CONFLICT);
    // A failed request is stored too and replays its error.
    let bad = || {
        server
            .client
            .post(format!("{}/v1/invoices", server.base))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("idempotency-key", "bad-1")
            .body(r#"{"amount":"-1","currency":"USD"}"#)
            .send()
    };
    assert_eq!(bad().await.expect("bad").status(), StatusCode::UNPROCESSABLE_ENTITY);
    let replay = bad().await.expect("bad again");
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(replay.headers().get("idempotent-replayed").is_some());
}

#[sqlx::test]
async fn balances_show_credited_payments_in_asset_units(pool: PgPool) {
    let server = start(pool).await;
    let (merchant_id, key) = server.merchant().await;
    let (_, created) = server.post(&key, &json!({"amount":"25.00","currency":"USD","accepted":[USDC_POLYGON]}).to_string()).await;
    let asset: payrail::money::AssetId = USDC_POLYGON.parse().expect("asset");
    let payment = payrail::invoice::ObservedPayment {
        invoice_id: created["id"].as_str().expect("id").to_owned(),
        chain: asset.chain().clone(),
        asset,
        tx_ref: "eip155:137:0xfeed:0".to_owned(),
        address: None,
        amount: payrail::money::Amount::from_u64(25_000_000),
        confirmations: 3,
        confirmations_required: 3,
        block: None,
    };
    let mut tx = server.state.pool.begin().await.expect("begin");
    payrail::invoice::apply_payment(&mut tx, &server.state.ledger, &payment, server.state.clock.now())
        .await
        .expect("apply");
    tx.commit().await.expect("commit");
    let (status, balances) = server.get(Some(&key), "/v1/balances").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(balances["merchant_id"], merchant_id.as_str());
    assert_eq!(balances["available"], json!([{"asset": USDC_POLYGON, "amount": "25.000000", "amount_minor": "25000000"}]));
    assert_eq!(balances["unapplied"], json!([]));
    let (_, shown) = server.get(Some(&key), &format!("/v1/invoices/{}", payment.invoice_id)).await;
    assert_eq!(shown["status"], "paid");
    assert_eq!(shown["payments"][0]["amount"], "25.00");
}

#[sqlx::test]
async fn health_and_readiness(pool: PgPool) {
    let server = start(pool).await;
    let (status, body) = server.get(None, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, body) = server.get(None, "/readyz").await;
    assert_eq!((status, body["database"].as_str()), (StatusCode::OK, Some("ok")));
    assert!(body["rails"].is_object(), "{body}");

    // A halted watcher takes the replica out of rotation at once, naming the rail and why.
    let now = server.state.clock.now();
    server.state.rail_health.halt("eip155:42161", now);
    let (status, body) = server.get(None, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["unhealthy_rails"], json!(["eip155:42161"]));
    assert_eq!(body["rails"]["eip155:42161"]["problem"], "its watcher stopped and needs an operator");
    assert_eq!(body["database"], "ok");
    let metrics = server.client.get(format!("{}/metrics", server.base)).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("payrail_rail_healthy{rail=\"eip155:42161\"} 0"), "{metrics}");
    assert!(metrics.contains("payrail_rail_halted{rail=\"eip155:42161\"} 1"), "{metrics}");
    // A watcher follows the chain again: ready.
    server.state.rail_health.follow("eip155:42161", 60_000, now);
    let (status, body) = server.get(None, "/readyz").await;
    assert_eq!((status, body["unhealthy_rails"].clone()), (StatusCode::OK, json!([])), "{body}");

    server.state.pool.close().await;
    let (status, body) = server.get(None, "/readyz").await;
    assert_eq!((status, body["database"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unreachable")));
    let metrics = server.client.get(format!("{}/metrics", server.base)).send().await.expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("text");
    assert!(text.is_empty() || text.contains("# TYPE "), "{text}");
    let (status, body) = server.get(None, "/nope").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[sqlx::test]
async fn list_filters_and_paginates_only_the_merchants_invoices(pool: PgPool) {
    let server = start(pool).await;
    let (_, key) = server.merchant().await;
    let (_, other) = server.merchant().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, created) =
            server.post(&key, &json!({"amount": format!("{}.00", i + 1), "currency": "USD", "order_id": format!("o-{}", i % 2)}).to_string()).await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    server.post(&other, r#"{"amount":"1","currency":"USD"}"#).await;
    // A NUL (or any control character) in the order id filter is a bad request, not a 500.
    let (status, body) = server.get(Some(&key), "/v1/invoices?order_id=o-%00x").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, page) = server.get(Some(&key), "/v1/invoices?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    let first: Vec<&str> = page["data"].as_array().expect("data").iter().map(|i| i["id"].as_str().expect("id")).collect();
    assert_eq!(first.len(), 2);
    let (_, rest) = server.get(Some(&key), &format!("/v1/invoices?limit=10&starting_after={}", first[1])).await;
    let rest: Vec<&str> = rest["data"].as_array().expect("data").iter().map(|i| i["id"].as_str().expect("id")).collect();
    assert_eq!(rest.len(), 3);
    let mut all: Vec<&str> = first.iter().chain(rest.iter()).copied().collect();
    all.sort_unstable();
    let mut mine: Vec<&str> = ids.iter().map(String::as_str).collect();
    mine.sort_unstable();
    assert_eq!(all, mine, "every invoice once, none of the other merchant's");
    let (_, filtered) = server.get(Some(&key), "/v1/invoices?order_id=o-1").await;
    assert_eq!(filtered["data"].as_array().expect("data").len(), 2);
    let (_, open) = server.get(Some(&key), "/v1/invoices?status=open").await;
    assert_eq!(open["data"].as_array().expect("data").len(), 5);
    let (_, none) = server.get(Some(&key), "/v1/invoices?created_to=2000-01-01T00:00:00Z").await;
    assert_eq!(none["data"].as_array().expect("data").len(), 0);
    for bad in ["limit=0", "limit=101", "status=sold", "created_from=yesterday", "unknown=1", "starting_after=nope", "ending_before=po_1"] {
        let (status, body) = server.get(Some(&key), &format!("/v1/invoices?{bad}")).await;
        assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"), "{bad}: {body}");
    }
}

#[sqlx::test]
async fn void_cancels_an_unpaid_invoice_and_refuses_a_paid_one(pool: PgPool) {
    let server = start(pool).await;
    let (_, key) = server.merchant().await;
    let (_, other) = server.merchant().await;
    let (_, created) = server.post(&key, &json!({"amount":"5.00","currency":"USD","accepted":[USDC_POLYGON]}).to_string()).await;
    let id = created["id"].as_str().expect("id");
    let void = |key: String, id: String| {
        let client = server.client.clone();
        let url = format!("{}/v1/invoices/{id}/void", server.base);
        async move {
            let response = client.post(url).bearer_auth(key).send().await.expect("request");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = void(other.clone(), id.to_owned()).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = void(key.clone(), id.to_owned()).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("void")));
    let (status, body) = void(key.clone(), id.to_owned()).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("void")), "voiding twice is harmless");

    let (_, paid) = server.post(&key, &json!({"amount":"5.00","currency":"USD","accepted":[USDC_POLYGON]}).to_string()).await;
    let asset: payrail::money::AssetId = USDC_POLYGON.parse().expect("asset");
    let payment = payrail::invoice::ObservedPayment {
        invoice_id: paid["id"].as_str().expect("id").to_owned(),
        chain: asset.chain().clone(),
        asset,
        tx_ref: "eip155:137:0xbeef:0".to_owned(),
        address: None,
        amount: payrail::money::Amount::from_u64(5_000_000),
        confirmations: 1,
        confirmations_required: 1,
        block: None,
    };
    let mut tx = server.state.pool.begin().await.expect("begin");
    payrail::invoice::apply_payment(&mut tx, &server.state.ledger, &payment, server.state.clock.now()).await.expect("apply");
    tx.commit().await.expect("commit");
    let (status, body) = void(key.clone(), payment.invoice_id.clone()).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "invoice_state"));
}

#[sqlx::test]
async fn a_key_over_its_rate_gets_429_with_retry_after(pool: PgPool) {
    let server = start(pool).await;
    let (_, key) = server.merchant().await;
    let (_, other) = server.merchant().await;
    let mut limited = None;
    for _ in 0..(payrail::api::limit::BURST_DEFAULT * 3) {
        let response = server.client.get(format!("{}/v1/balances", server.base)).bearer_auth(&key).send().await.expect("request");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the key was limited");
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(code(&body), "rate_limited");
    let (status, _) = server.get(Some(&other), "/v1/balances").await;
    assert_eq!(status, StatusCode::OK, "another key is unaffected");
}

/// The OpenAPI document lists every route the router serves, and every documented route is served.
#[sqlx::test]
async fn openapi_document_matches_the_router(pool: PgPool) {
    let server = start(pool).await;
    let (_, key) = server.merchant().await;
    let doc: Value = server.client.get(format!("{}/openapi.json", server.base)).send().await.expect("doc").json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("item").keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "inv_000000000000000000000000");
        let request = server.client.request(method.parse().expect("method"), format!("{}{concrete}", server.base)).bearer_auth(&key);
        let request = if method == "POST" { request.header("content-type", "application/json").body("{}") } else { request };
        let response = request.send().await.expect("request");
        let status = response.status();
        let body = response.text().await.expect("body");
        assert!(
            !body.contains("route not found") && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but not served: {status} {body}"
        );
    }
    let served = [
        ("POST", "/v1/invoices"),
        ("GET", "/v1/invoices"),
        ("GET", "/v1/invoices/{id}"),
        ("POST", "/v1/invoices/{id}/void"),
        ("POST", "/v1/invoices/{id}/mark"),
        ("GET", "/v1/balances"),
        ("GET", "/v1/balance_transactions"),
        ("GET", "/v1/unapplied"),
        ("POST", "/v1/unapplied/{id}/apply"),
        ("PUT", "/v1/merchants/me/bitcoin"),
        ("GET", "/v1/merchants/me/bitcoin"),
        ("POST", "/v1/creators"),
        ("GET", "/v1/creators"),
        ("GET", "/v1/creators/{id}"),
        ("GET", "/v1/creators/me"),
        ("GET", "/v1/creators/me/statement"),
        ("GET", "/v1/creators/me/payouts"),
        ("PUT", "/v1/creators/me/payout_addresses/{chain}"),
        ("POST", "/v1/creators/me/withdrawals"),
        ("POST", "/v1/payouts/run"),
        ("GET", "/v1/payouts"),
        ("GET", "/v1/payouts/{id}"),
        ("POST", "/v1/payouts/{id}/cancel"),
        ("GET", "/v1/merchants/me/payout_addresses"),
        ("PUT", "/v1/merchants/me/payout_addresses/{chain}"),
        ("GET", "/v1/merchants/me/settlement_schedule"),
        ("PUT", "/v1/merchants/me/settlement_schedule"),
        ("POST", "/v1/merchants/me/payout_addresses/{chain}/confirm"),
        ("POST", "/v1/creators/{id}/payout_addresses/{chain}/confirm"),
        ("POST", "/v1/settlements"),
        ("GET", "/v1/settlements"),
        ("GET", "/v1/settlements/{id}"),
        ("POST", "/v1/card_settlements"),
        ("GET", "/v1/card_settlements"),
        ("GET", "/v1/card_settlements/{id}"),
        ("POST", "/v1/customers"),
        ("GET", "/v1/customers"),
        ("GET", "/v1/customers/{id}"),
        ("PATCH", "/v1/customers/{id}"),
        ("POST", "/v1/customers/{id}/grants"),
        ("POST", "/v1/customers/{id}/spend"),
        ("GET", "/v1/customers/{id}/balance"),
        ("GET", "/v1/customers/{id}/transactions"),
        ("GET", "/v1/customers/{id}/stream"),
        ("POST", "/v1/customers/{id}/adjustments"),
        ("POST", "/v1/credit_currencies"),
        ("GET", "/v1/credit_currencies"),
        ("POST", "/v1/transfers"),
        ("POST", "/v1/credit_packs"),
        ("GET", "/v1/credit_packs"),
        ("PATCH", "/v1/credit_packs/{id}"),
        ("POST", "/v1/customers/{id}/purchases"),
        ("POST", "/v1/promo_codes"),
        ("GET", "/v1/promo_codes"),
        ("GET", "/v1/credit_limits"),
        ("PUT", "/v1/credit_limits"),
        ("POST", "/v1/plans"),
        ("GET", "/v1/plans"),
        ("GET", "/v1/plans/{id}"),
        ("PATCH", "/v1/plans/{id}"),
        ("POST", "/v1/customers/{id}/subscriptions"),
        ("GET", "/v1/customers/{id}/subscriptions"),
        ("GET", "/v1/subscriptions/{id}"),
        ("POST", "/v1/subscriptions/{id}/cancel"),
        ("POST", "/v1/subscriptions/{id}/pause"),
        ("POST", "/v1/subscriptions/{id}/resume"),
        ("POST", "/v1/subscriptions/{id}/change"),
        ("POST", "/v1/access_rules"),
        ("GET", "/v1/access_rules"),
        ("POST", "/v1/customers/{id}/unlocks"),
        ("POST", "/v1/customers/{id}/unlocks/refund"),
        ("GET", "/v1/customers/{id}/access"),
        ("POST", "/v1/access/check"),
        ("GET", "/v1/reports/subscriptions"),
        ("GET", "/v1/reports/sales"),
        ("POST", "/v1/reconciliation"),
        ("GET", "/v1/reconciliation"),
        ("GET", "/v1/reconciliation/{id}"),
        ("GET", "/v1/ledger/entries"),
        ("GET", "/v1/ledger/trial_balance"),
        ("PUT", "/v1/split_rules"),
        ("GET", "/v1/split_rules"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/pay/{id}"),
        ("GET", "/pay/{id}/status"),
        ("GET", "/pay/{id}/events"),
        ("GET", "/refund/{token}"),
        ("POST", "/refund/{token}"),
        ("GET", "/v1/refunds"),
        ("POST", "/v1/unapplied/{id}/refund"),
        ("GET", "/v1/refunds/{id}"),
        ("POST", "/v1/refunds/{id}/cancel"),
        ("POST", "/v1/webhook_endpoints"),
        ("GET", "/v1/webhook_endpoints"),
        ("GET", "/v1/webhook_endpoints/{id}"),
        ("PATCH", "/v1/webhook_endpoints/{id}"),
        ("POST", "/v1/webhook_endpoints/{id}/rotate_secret"),
        ("DELETE", "/v1/webhook_endpoints/{id}"),
        ("GET", "/v1/events"),
        ("GET", "/v1/events/{id}"),
        ("GET", "/v1/events/{id}/deliveries"),
        ("POST", "/v1/events/{id}/replay"),
        ("POST", "/v1/invoices/{id}/refunds"),
        ("POST", "/v1/stripe/webhook"),
        ("POST", "/pay/{id}/card"),
        ("POST", "/v1/api_keys"),
        ("GET", "/v1/api_keys"),
        ("GET", "/v1/api_keys/{id}"),
        ("DELETE", "/v1/api_keys/{id}"),
        ("PATCH", "/v1/api_keys/{id}"),
        ("POST", "/v1/api_keys/{id}/rotate"),
        ("POST", "/v1/merchants"),
    ];
    for (method, path) in served {
        assert!(documented.iter().any(|(m, p)| m == method && p == path), "{method} {path} is served but not documented");
    }
    for (method, path) in &documented {
        assert!(served.contains(&(method.as_str(), path.as_str())), "{method} {path} is documented but missing from this list");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["InvoiceView"].is_object());
    // Every operation says it may be rate limited.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            assert!(operation["responses"]["429"].is_object(), "{method} {path} does not document 429");
        }
    }
}

/// Reads an invoice and expects 503 `database_unavailable` with `Retry-After: 2`.
async fn expect_database_unavailable(server: &Server, key: &str) {
    let response = server
        .client
        .get(format!("{}/v1/invoices/inv_0000000000000000", server.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("2"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(code(&body), "database_unavailable");
}

/// With the database unreachable (here: the pool's only connection taken), requests get 503
/// `database_unavailable` with `Retry-After` after the short acquire timeout, not a 500.
#[sqlx::test]
async fn an_unreachable_database_answers_503_with_retry_after(pool: PgPool) {
    let (_, key) = {
        let server = start(pool.clone()).await;
        server.merchant().await
    };
    let small = payrail::db::connect_with((*pool.connect_options()).clone(), 1).await.expect("pool");
    let server = start(small.clone()).await;
    let held = small.acquire().await.expect("the only connection");
    let started = std::time::Instant::now();
    expect_database_unavailable(&server, &key).await;
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_millis(payrail::db::POOL_ACQUIRE_TIMEOUT_MS + 1_500),
        "answered after the acquire timeout, not later: {waited:?}"
    );
    drop(held);
    let (status, _) = server.get(Some(&key), "/v1/invoices/inv_0000000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "served again once the database answers");
}

/// A statement the server cancels (`statement_timeout`: here it waits on a table another session
/// holds locked) answers 503 `database_unavailable` with `Retry-After`, not a 500; the same request is
/// served once the lock is gone.
#[sqlx::test]
async fn a_statement_timeout_answers_503_with_retry_after(pool: PgPool) {
    let (_, key) = {
        let server = start(pool.clone()).await;
        server.merchant().await
    };
    let options = (*pool.connect_options()).clone().options([("statement_timeout", "300")]);
    let timed = payrail::db::connect_with(options, 4).await.expect("pool");
    let server = start(timed).await;
    let mut locker = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE").execute(&mut *locker).await.expect("lock");
    expect_database_unavailable(&server, &key).await;
    locker.rollback().await.expect("unlock");
    let (status, _) = server.get(Some(&key), "/v1/invoices/inv_0000000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "served again once the lock is gone");
}

/// A node whose tip stops advancing while the chain's block time says it should makes the rail
/// unhealthy and the replica unready within the allowance (two block times and two polls).
#[sqlx::test]
async fn a_frozen_node_makes_the_replica_unready(pool: PgPool) {
    use payrail::chain::health::{stall_after_ms, RailHealth, TickReport, TIP_STALL_BLOCK_TIMES_EVM};
    use payrail::clock::Clock;
    let (mut state, clock) = state_with_clock(pool);
    // A registry of this test's own, so other tests' rails do not show here.
    state.rail_health = std::sync::Arc::new(RailHealth::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(state.clone(), HttpLimits::default());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let server = Server { base, client: reqwest::Client::new(), state: state.clone() };

    let chain = "eip155:137";
    let poll_ms = 500;
    let stall_ms = stall_after_ms(2_000, TIP_STALL_BLOCK_TIMES_EVM, poll_ms);
    let health = state.rail_health.clone();
    health.follow(chain, stall_ms, clock.now());
    health.tip(chain, 100, clock.now());
    // The watcher polls and reports; the tip stays at 100.
    let mut waited_ms = 0;
    while waited_ms < stall_ms {
        clock.advance(chrono::Duration::milliseconds(i64::try_from(poll_ms).expect("ms")));
        waited_ms += poll_ms;
        health.tip(chain, 100, clock.now());
        health.report(chain, TickReport::Followed { head_lag_blocks: 0 }, clock.now());
    }
    let (status, body) = server.get(None, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "within the allowance: {body}");
    clock.advance(chrono::Duration::milliseconds(i64::try_from(poll_ms).expect("ms")));
    health.tip(chain, 100, clock.now());
    let (status, body) = server.get(None, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["unhealthy_rails"], json!([chain]));
    assert_eq!(body["rails"][chain]["problem"], "its node's tip is not advancing");
    // A new block: ready again.
    health.tip(chain, 101, clock.now());
    let (status, _) = server.get(None, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

/// The public checkout status answers 503 with `Retry-After` too while the database is unreachable.
#[sqlx::test]
async fn the_checkout_status_answers_503_while_the_database_is_unreachable(pool: PgPool) {
    let small = payrail::db::connect_with((*pool.connect_options()).clone(), 1).await.expect("pool");
    let server = start(small.clone()).await;
    let held = small.acquire().await.expect("the only connection");
    let response =
        server.client.get(format!("{}/pay/inv_0000000000000000/status", server.base)).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(code(&body), "database_unavailable");
    drop(held);
}

/// A claim left by a request that never answered (its process was killed, or the timeout cut it)
/// is "still running" only as long as a request may run; then a retry takes it over.
#[sqlx::test]
async fn an_abandoned_idempotency_claim_is_taken_over_after_the_request_timeout(pool: PgPool) {
    use sha2::{Digest, Sha256};
    let server = start(pool).await;
    let (merchant_id, key) = server.merchant().await;
    let body = r#"{"amount":"9.99","currency":"USD"}"#;
    let scope: String = sqlx::query_scalar("SELECT id FROM api_keys WHERE merchant_id = $1")
        .bind(&merchant_id)
        .fetch_one(&server.state.pool)
        .await
        .expect("key id");
    let mut hasher = Sha256::new();
    hasher.update(b"POST\0/v1/invoices\0");
    hasher.update(body.as_bytes());
    let now = server.state.clock.now();
    // What a process killed mid-request leaves: the claim, no response.
    sqlx::query("INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES ($1, 'order-7', $2, $3)")
        .bind(&scope)
        .bind(hasher.finalize().to_vec())
        .bind(now)
        .execute(&server.state.pool)
        .await
        .expect("claim");
    let send = || {
        server
            .client
            .post(format!("{}/v1/invoices", server.base))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-7")
            .body(body)
            .send()
    };
    let running = send().await.expect("retry");
    assert_eq!(running.status(), StatusCode::CONFLICT, "a fresh claim may still be running");
    let running: Value = running.json().await.expect("json");
    assert_eq!(code(&running), "idempotency_conflict");

    // Older than the request timeout and the margin: nothing can still be running under it.
    let in_flight_max = payrail::api::idempotency::in_flight_max(HttpLimits::default().request_timeout_ms);
    sqlx::query("UPDATE idempotency_keys SET created_at = $1 WHERE key = 'order-7'")
        .bind(now - in_flight_max - chrono::Duration::seconds(1))
        .execute(&server.state.pool)
        .await
        .expect("age the claim");
    let retried = send().await.expect("retry");
    assert_eq!(retried.status(), StatusCode::CREATED);
    let retried: Value = retried.json().await.expect("json");
    let again = send().await.expect("again");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(again.json::<Value>().await.expect("json"), retried, "the taken-over request's response is stored");
    let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&server.state.pool).await.expect("n");
    assert_eq!(invoices, 1);
}
