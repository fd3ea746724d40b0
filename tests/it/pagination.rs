//! One pagination for every list: the OpenAPI document shows every list route taking `limit`,
//! `starting_after` and `ending_before` and answering `{object: "list", data, has_more}`; walking
//! real lists forward and back over HTTP gives every item once, in the list's order.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common::{self, amount, Server, USDC_POLYGON};
use payrail::ledger::{AccountCode, NewEntry};

/// Every GET route that answers a list, as the document describes it.
#[test]
fn every_list_route_takes_the_page_parameters_and_answers_a_list() {
    let doc = serde_json::to_value(payrail::api::openapi::document()).expect("json");
    let schemas = &doc["components"]["schemas"];
    let resolve = |schema: &Value| -> Value {
        match schema["$ref"].as_str() {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => schema.clone(),
        }
    };
    let mut lists = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let Some(get) = item.get("get") else { continue };
        let schema = resolve(&get["responses"]["200"]["content"]["application/json"]["schema"]);
        let Some(properties) = schema["properties"].as_object() else { continue };
        // A report carries its rows in `data` too, but says what it is (`sales_report`).
        let report = properties.get("object").is_some_and(|o| o["example"].is_string() && o["example"] != "list");
        if report || properties.get("data").is_none_or(|d| d["type"] != "array") {
            continue;
        }
        for field in ["object", "has_more"] {
            assert!(properties.contains_key(field), "{path}: a list without {field}: {schema}");
        }
        let params: BTreeSet<&str> = get["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str())
            .collect();
        for name in ["limit", "starting_after", "ending_before"] {
            assert!(params.contains(name), "{path} lacks `{name}`: {params:?}");
        }
        lists.insert(path.clone());
    }
    // Every list the API has, so that a list route answering something else shows up here.
    for path in [
        "/v1/invoices",
        "/v1/unapplied",
        "/v1/refunds",
        "/v1/balance_transactions",
        "/v1/creators",
        "/v1/creators/me/statement",
        "/v1/creators/me/payouts",
        "/v1/payouts",
        "/v1/settlements",
        "/v1/card_settlements",
        "/v1/merchants/me/payout_addresses",
        "/v1/customers",
        "/v1/customers/{id}/transactions",
        "/v1/customers/{id}/subscriptions",
        "/v1/credit_currencies",
        "/v1/credit_packs",
        "/v1/promo_codes",
        "/v1/plans",
        "/v1/access_rules",
        "/v1/reconciliation",
        "/v1/ledger/entries",
        "/v1/webhook_endpoints",
        "/v1/events",
        "/v1/events/{id}/deliveries",
        "/v1/api_keys",
    ] {
        assert!(lists.contains(path), "{path} is not a paged list: {}", doc["paths"][path]["get"]["responses"]["200"]);
    }
}

struct Shop {
    server: Server,
    key: String,
    merchant_id: String,
}

impl Shop {
    async fn start(pool: PgPool) -> Self {
        let server = Server::start(pool).await;
        let merchant = payrail::merchant::create_merchant(&server.state.pool, "Pages").await.expect("merchant");
        Shop { server, key: merchant.api_key, merchant_id: merchant.merchant_id }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.server.get(&self.key, path).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.server.post(&self.key, path, body, None).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// One page: the items' `field`s and `has_more`.
    async fn page(&self, path: &str, query: &str, field: &str) -> (Vec<String>, bool) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, body) = self.get(&format!("{path}{sep}{query}")).await;
        assert_eq!(status, StatusCode::OK, "{path}{sep}{query}: {body}");
        assert_eq!(body["object"], "list", "{body}");
        let ids = body["data"].as_array().expect("data").iter().map(|i| id_of(&i[field])).collect();
        (ids, body["has_more"].as_bool().expect("has_more"))
    }

    /// Walks `path` two at a time, forward from the start and back from its last item, and checks
    /// both against `expected` (the whole list in its order).
    async fn walk(&self, path: &str, field: &str, expected: &[String]) {
        let (all, more) = self.page(path, "limit=100", field).await;
        assert_eq!((&all[..], more), (expected, false), "{path}: the whole list");

        let mut forward = Vec::new();
        let mut query = "limit=2".to_owned();
        loop {
            let (ids, more) = self.page(path, &query, field).await;
            assert!(ids.len() == 2 || !more, "{path} {query}: a short page with more after it");
            forward.extend(ids);
            if !more {
                break;
            }
            query = format!("limit=2&starting_after={}", forward.last().expect("an item"));
        }
        assert_eq!(forward, expected, "{path}: forward");

        let last = expected.last().expect("a list to walk");
        let mut backward: Vec<String> = Vec::new();
        let mut query = format!("limit=2&ending_before={last}");
        loop {
            let (mut ids, more) = self.page(path, &query, field).await;
            ids.extend(backward);
            backward = ids;
            if !more {
                break;
            }
            query = format!("limit=2&ending_before={}", backward.first().expect("an item"));
        }
        assert_eq!(backward, expected[..expected.len() - 1], "{path}: backward");

        // An id no list holds is a place in none: an empty page.
        let first = &expected[0];
        for (query, status) in [
            (format!("starting_after={first}&ending_before={last}"), StatusCode::UNPROCESSABLE_ENTITY),
            ("limit=0".to_owned(), StatusCode::UNPROCESSABLE_ENTITY),
            ("limit=101".to_owned(), StatusCode::UNPROCESSABLE_ENTITY),
            ("starting_after=".to_owned(), StatusCode::UNPROCESSABLE_ENTITY),
            ("before=x".to_owned(), StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let sep = if path.contains('?') { '&' } else { '?' };
            let (got, body) = self.get(&format!("{path}{sep}{query}")).await;
            assert_eq!((got, body["error"]["code"].as_str()), (status, Some("parameter_invalid")), "{path} {query}: {body}");
        }
    }
}

fn id_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[sqlx::test]
async fn lists_walk_forward_and_back_a_page_at_a_time(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let state = &shop.server.state;

    // Five invoices, a millisecond or more apart: newest first.
    let mut invoices = Vec::new();
    for _ in 0..5 {
        invoices.push(common::invoice(state, &shop.merchant_id, "10.00", &[USDC_POLYGON]).await.id);
        shop.server.clock.advance(chrono::Duration::seconds(1));
    }
    invoices.reverse();
    shop.walk("/v1/invoices", "id", &invoices).await;
    // A filter pages the same way.
    shop.walk("/v1/invoices?status=open", "id", &invoices).await;

    // Customers, newest first.
    let mut customers = Vec::new();
    for n in 0..5 {
        customers.push(id_of(&shop.post("/v1/customers", json!({ "external_id": format!("user-{n}") })).await["id"]));
    }
    customers.reverse();
    shop.walk("/v1/customers", "id", &customers).await;

    // Creators, oldest first.
    let mut creators = Vec::new();
    for n in 0..3 {
        creators.push(id_of(&shop.post("/v1/creators", json!({ "name": format!("Creator {n}") })).await["id"]));
    }
    shop.walk("/v1/creators", "id", &creators).await;

    // Credit currencies, by code: the cursors are codes.
    for code in ["gems", "coins", "stars"] {
        shop.post("/v1/credit_currencies", json!({ "code": code, "name": code, "peg": "0.01", "peg_currency": "USD" })).await;
    }
    let codes = ["coins", "gems", "stars"].map(str::to_owned);
    shop.walk("/v1/credit_currencies", "code", &codes).await;

    // Webhook endpoints and events (each invoice announced itself), newest first.
    let mut endpoints = Vec::new();
    for n in 0..3 {
        let body = shop.post("/v1/webhook_endpoints", json!({ "url": format!("https://hooks.example.com/{n}") })).await;
        endpoints.push(id_of(&body["id"]));
        shop.server.clock.advance(chrono::Duration::seconds(1));
    }
    endpoints.reverse();
    shop.walk("/v1/webhook_endpoints", "id", &endpoints).await;
    let (events, _) = shop.page("/v1/events", "limit=100", "id").await;
    assert!(events.len() >= 5, "{events:?}");
    shop.walk("/v1/events", "id", &events).await;

    // Another merchant's id, or one no list holds, names no place: an empty page.
    let other = payrail::merchant::create_merchant(&state.pool, "Other").await.expect("merchant");
    let theirs = common::invoice(state, &other.merchant_id, "1.00", &[USDC_POLYGON]).await.id;
    for query in [format!("starting_after={theirs}"), "ending_before=inv_00000000000000000000000000".to_owned()] {
        let (ids, more) = shop.page("/v1/invoices", &query, "id").await;
        assert_eq!((ids, more), (vec![], false), "{query}");
    }
}

#[sqlx::test]
async fn a_statement_pages_by_entry_both_ways_and_never_splits_one(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let (ledger, m) = (&shop.server.state.ledger, &shop.merchant_id);
    let mut conn = shop.server.state.pool.acquire().await.expect("conn");
    let chain = AccountCode::chain_assets(&"eip155:137".parse().expect("caip-2"));
    let mut entries = Vec::new();
    for n in 0..4u64 {
        // Every other entry moves between the merchant's two balances: two lines of one entry.
        let entry = if n % 2 == 0 {
            NewEntry::new(format!("in-{n}"), "payment").debit(chain.clone(), USDC_POLYGON, amount(100 + n)).credit(AccountCode::merchant(m), USDC_POLYGON, amount(100 + n))
        } else {
            NewEntry::new(format!("move-{n}"), "adjustment").debit(AccountCode::merchant(m), USDC_POLYGON, amount(n)).credit(AccountCode::unapplied(m), USDC_POLYGON, amount(n))
        };
        entries.push(ledger.post(&mut conn, &entry).await.expect("post").entry_id);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let lines = |body: &Value| body["data"].as_array().expect("data").iter().map(|l| l["entry_id"].as_i64().expect("id")).collect::<Vec<_>>();
    let (status, all) = shop.get("/v1/balance_transactions").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let [e0, e1, e2, e3] = entries[..] else { panic!("four entries") };
    assert_eq!(lines(&all), [e0, e1, e1, e2, e3, e3], "oldest first, a line per posting on the merchant's balances");

    // Three lines a page: the page ends before the entry the limit would cut.
    let (_, page) = shop.get("/v1/balance_transactions?limit=3").await;
    assert_eq!((lines(&page), page["has_more"].as_bool()), (vec![e0, e1, e1], Some(true)));
    let (_, page) = shop.get(&format!("/v1/balance_transactions?limit=3&starting_after={e1}")).await;
    assert_eq!((lines(&page), page["has_more"].as_bool()), (vec![e2, e3, e3], Some(false)));
    // Backward from the last entry: the nearest lines, whole entries, oldest first.
    let (_, page) = shop.get(&format!("/v1/balance_transactions?limit=2&ending_before={e3}")).await;
    assert_eq!((lines(&page), page["has_more"].as_bool()), (vec![e2], Some(true)));
    let (_, page) = shop.get(&format!("/v1/balance_transactions?limit=3&ending_before={e2}")).await;
    assert_eq!((lines(&page), page["has_more"].as_bool()), (vec![e0, e1, e1], Some(false)));
    let (status, body) = shop.get("/v1/balance_transactions?starting_after=inv_1").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("parameter_invalid")), "{body}");
}
