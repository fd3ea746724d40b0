//! Ledger exports over a real socket and a real PostgreSQL: `GET /v1/ledger/entries` and
//! `GET /v1/ledger/trial_balance` — filters, pagination, the trial balance at a moment, CSV and who
//! may read them.


use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crate::common::{amount, transfer, Server, USD, USDC_POLYGON};
use payrail::ledger::export::{self, EntryFilter};
use payrail::ledger::{AccountCode, NewEntry, SignedAmount};
use payrail::page::Page;
use payrail::merchant::{create_merchant, create_platform_key, Role};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

const MEMO_WITH_COMMA_AND_QUOTE: &str = "inv_1, \"rush\" order";
const MEMO_WITH_LINE_BREAK: &str = "first line\r\nsecond line";

/// The server and a finance key.
struct Rig {
    server: Server,
    finance: String,
}

impl std::ops::Deref for Rig {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

async fn start(pool: PgPool) -> Rig {
    let server = Server::start(pool).await;
    let finance = create_platform_key(&server.state.pool, Role::Finance).await.expect("finance key");
    Rig { server, finance }
}

impl Rig {
    async fn raw(&self, key: Option<&str>, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, key, path).send().await.expect("request")
    }

    async fn json(&self, key: Option<&str>, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, key, path, None, None).await
    }

    /// A finance GET that must succeed.
    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.json(Some(&self.finance), path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    /// The ids of a page of entries, and whether more follow.
    async fn page(&self, path: &str) -> (Vec<i64>, bool) {
        let body = self.ok(path).await;
        assert_eq!(body["object"], "list", "{body}");
        let ids = body["data"].as_array().expect("data").iter().map(|e| e["id"].as_i64().expect("id")).collect();
        (ids, body["has_more"].as_bool().expect("has_more"))
    }
}

fn chain() -> AccountCode {
    AccountCode::chain_assets(&"eip155:137".parse().expect("caip-2"))
}

fn stripe_usd() -> AccountCode {
    "assets:stripe:usd".parse().expect("account code")
}

/// The entries of the scenario, oldest first, with the time each was created.
struct Posted {
    ids: [i64; 4],
    created_at: [DateTime<Utc>; 4],
}

/// Four entries, each in its own transaction, a few milliseconds apart:
/// 1. a USDC payment to merchant `mer_a` (memo with a comma and a quote);
/// 2. a USDC payment split between creator `cr_x` and the platform fee;
/// 3. a USD card payment to `mer_a` (memo with a line break);
/// 4. the reversal of 1.
async fn post_scenario(server: &Rig) -> Posted {
    let ledger = &server.state.ledger;
    let mut conn = server.state.pool.acquire().await.expect("conn");
    let first = NewEntry::new("pay-1", "payment")
        .memo(MEMO_WITH_COMMA_AND_QUOTE)
        .debit(chain(), USDC_POLYGON, amount(10_000))
        .credit(AccountCode::merchant("mer_a"), USDC_POLYGON, amount(10_000));
    let split = NewEntry::new("pay-2", "payment")
        .debit(chain(), USDC_POLYGON, amount(5_000))
        .credit(AccountCode::creator("cr_x"), USDC_POLYGON, amount(4_000))
        .credit(AccountCode::platform_fees(), USDC_POLYGON, amount(1_000));
    let card = transfer("card-1", stripe_usd(), AccountCode::merchant("mer_a"), USD, 2_500).memo(MEMO_WITH_LINE_BREAK);
    let mut ids = [0; 4];
    for (i, entry) in [first, split, card].iter().enumerate() {
        ids[i] = ledger.post(&mut conn, entry).await.expect("post").entry_id;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ids[3] = ledger
        .reverse(&mut conn, ids[0], "pay-1-reversal", "sent to the wrong merchant")
        .await
        .expect("reverse")
        .entry_id;
    let mut created_at = [DateTime::<Utc>::MIN_UTC; 4];
    for (i, id) in ids.iter().enumerate() {
        created_at[i] = sqlx::query_scalar("SELECT created_at FROM journal_entries WHERE id = $1")
            .bind(id)
            .fetch_one(&server.state.pool)
            .await
            .expect("created_at");
    }
    assert!(created_at.windows(2).all(|w| w[0] < w[1]), "entries were created one after the other");
    Posted { ids, created_at }
}

/// `2026-01-01T12:00:00.123456Z` with its `+`/`:` escaped for a query string.
fn q(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace(':', "%3A").replace('+', "%2B")
}

#[sqlx::test]
async fn entries_are_filtered_and_paginated_newest_first(pool: PgPool) {
    let server = start(pool).await;
    let Posted { ids: [e1, e2, e3, e4], created_at } = post_scenario(&server).await;

    let all = server.ok("/v1/ledger/entries").await;
    let data = all["data"].as_array().expect("data");
    assert_eq!(data.iter().map(|e| e["id"].as_i64()).collect::<Vec<_>>(), [Some(e4), Some(e3), Some(e2), Some(e1)]);
    assert_eq!(all["next_before"], Value::Null);
    let first = &data[3];
    assert_eq!(first["idempotency_key"], "pay-1");
    assert_eq!(first["kind"], "payment");
    assert_eq!(first["memo"], MEMO_WITH_COMMA_AND_QUOTE);
    assert_eq!(first["reverses_entry_id"], Value::Null);
    // Debits positive, credits negative, as stored.
    assert_eq!(
        first["postings"],
        serde_json::json!([
            {"account": chain().as_str(), "asset": USDC_POLYGON, "amount_minor": "10000"},
            {"account": "liabilities:merchant:mer_a", "asset": USDC_POLYGON, "amount_minor": "-10000"},
        ])
    );
    let created: DateTime<Utc> = first["created_at"].as_str().expect("created_at").parse().expect("rfc 3339");
    assert_eq!(created, created_at[0]);
    let reversal = &data[0];
    assert_eq!((reversal["kind"].as_str(), reversal["reverses_entry_id"].as_i64()), (Some("reversal"), Some(e1)));
    let merchant_side = reversal["postings"]
        .as_array()
        .expect("postings")
        .iter()
        .find(|p| p["account"] == "liabilities:merchant:mer_a");
    assert_eq!(
        merchant_side.map(|p| &p["amount_minor"]),
        Some(&Value::from("10000")),
        "the reversal debits the merchant"
    );

    // Filters select whole entries: the split keeps all three postings when filtered by the creator.
    let by_creator = server.ok("/v1/ledger/entries?account=liabilities:creator:cr_x").await;
    assert_eq!(by_creator["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_creator["data"][0]["postings"].as_array().map(Vec::len), Some(3));
    for (query, expected) in [
        ("kind=payment", vec![e2, e1]),
        ("kind=reversal", vec![e4]),
        ("kind=nothing", vec![]),
        ("account=liabilities:creator:cr_x", vec![e2]),
        ("account=liabilities:creator:", vec![e2]),
        ("account=liabilities:", vec![e4, e3, e2, e1]),
        ("account=revenue:", vec![e2]),
        ("account=liabilities:merchant:mer_a", vec![e4, e3, e1]),
        ("account=liabilities:merchant:mer", vec![]),
        ("asset=iso4217:USD", vec![e3]),
        (format!("asset={}", USDC_POLYGON.replace(':', "%3A").replace('/', "%2F")).as_str(), vec![e4, e2, e1]),
        (format!("account=liabilities:merchant:mer_a&asset={USDC_POLYGON}").as_str(), vec![e4, e1]),
        ("account=assets:stripe:usd&asset=iso4217:XXX", vec![]),
        (format!("from={}", q(created_at[1])).as_str(), vec![e4, e3, e2]),
        (format!("to={}", q(created_at[1])).as_str(), vec![e1]),
        (format!("from={}&to={}", q(created_at[1]), q(created_at[2])).as_str(), vec![e2]),
        (format!("from={}&kind=payment", q(created_at[1])).as_str(), vec![e2]),
    ] {
        let (ids, _) = server.page(&format!("/v1/ledger/entries?{query}")).await;
        assert_eq!(ids, expected, "{query}");
    }

    // Pages of two, forward with starting_after to the end, and back with ending_before.
    let server = &server;
    let page = |query: String| async move { server.page(&format!("/v1/ledger/entries?{query}")).await };
    assert_eq!(page("limit=2".into()).await, (vec![e4, e3], true));
    assert_eq!(page(format!("limit=2&starting_after={e3}")).await, (vec![e2, e1], false));
    assert_eq!(page(format!("limit=2&starting_after={e1}")).await, (vec![], false));
    assert_eq!(page(format!("limit=3&starting_after={e4}")).await, (vec![e3, e2, e1], false));
    assert_eq!(page(format!("limit=2&ending_before={e1}")).await, (vec![e3, e2], true));
    assert_eq!(page(format!("limit=2&ending_before={e2}")).await, (vec![e4, e3], false));
    assert_eq!(page(format!("limit=2&ending_before={e4}")).await, (vec![], false));
    assert_eq!(page("limit=500&kind=payment".into()).await, (vec![e2, e1], false));

    // The library call gives the same as the route.
    let filter = EntryFilter { kind: Some("payment".to_owned()), page: Page::first(1), ..EntryFilter::default() };
    let (page, more) = export::entries(&server.state.pool, &filter).await.expect("entries");
    assert_eq!((page.iter().map(|e| e.id).collect::<Vec<_>>(), more), (vec![e2], true));
}

/// Every line's debits, credits and balance, by (account, asset).
fn lines(body: &Value) -> BTreeMap<(String, String), (String, String, String, String)> {
    body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().expect(k).to_owned();
            ((s("account"), s("asset")), (s("account_type"), s("debit_minor"), s("credit_minor"), s("balance_minor")))
        })
        .collect()
}

fn line(account_type: &str, debit: &str, credit: &str, balance: &str) -> (String, String, String, String) {
    (account_type.to_owned(), debit.to_owned(), credit.to_owned(), balance.to_owned())
}

fn key(account: &str, asset: &str) -> (String, String) {
    (account.to_owned(), asset.to_owned())
}

#[sqlx::test]
async fn trial_balance_at_a_moment_balances_per_asset(pool: PgPool) {
    let server = start(pool).await;
    let Posted { created_at, .. } = post_scenario(&server).await;
    let chain = chain();
    let chain = chain.as_str();

    // Before the first entry: nothing.
    let before = created_at[0] - chrono::Duration::microseconds(1);
    let body = server.ok(&format!("/v1/ledger/trial_balance?at={}", q(before))).await;
    assert_eq!(
        (body["lines"].as_array().map(Vec::len), body["assets"].as_array().map(Vec::len)),
        (Some(0), Some(0)),
        "{body}"
    );

    // At the first entry's time: that entry only (`at` is inclusive).
    let body = server.ok(&format!("/v1/ledger/trial_balance?at={}", q(created_at[0]))).await;
    let at: DateTime<Utc> = body["at"].as_str().expect("at").parse().expect("rfc 3339");
    assert_eq!(at, created_at[0]);
    assert_eq!(
        lines(&body),
        BTreeMap::from([
            (key(chain, USDC_POLYGON), line("assets", "10000", "0", "10000")),
            (key("liabilities:merchant:mer_a", USDC_POLYGON), line("liabilities", "0", "10000", "10000")),
        ])
    );
    assert_eq!(
        body["assets"],
        serde_json::json!([{"asset": USDC_POLYGON, "debit_minor": "10000", "credit_minor": "10000", "balanced": true}])
    );

    // After the split, before the card payment.
    let body = server.ok(&format!("/v1/ledger/trial_balance?at={}", q(created_at[1]))).await;
    let got = lines(&body);
    assert_eq!(got.len(), 4, "{body}");
    assert_eq!(got[&key("revenue:platform_fees", USDC_POLYGON)], line("revenue", "0", "1000", "1000"));
    assert_eq!(got[&key("liabilities:creator:cr_x", USDC_POLYGON)], line("liabilities", "0", "4000", "4000"));

    // Now: every entry, the reversal included; each line agrees with the balance rows.
    let body = server.ok("/v1/ledger/trial_balance").await;
    assert_eq!(body["at"], Value::Null);
    let got = lines(&body);
    assert_eq!(
        got,
        BTreeMap::from([
            (key(chain, USDC_POLYGON), line("assets", "15000", "10000", "5000")),
            (key("assets:stripe:usd", USD), line("assets", "2500", "0", "2500")),
            (key("liabilities:creator:cr_x", USDC_POLYGON), line("liabilities", "0", "4000", "4000")),
            (key("liabilities:merchant:mer_a", USD), line("liabilities", "0", "2500", "2500")),
            (key("liabilities:merchant:mer_a", USDC_POLYGON), line("liabilities", "10000", "10000", "0")),
            (key("revenue:platform_fees", USDC_POLYGON), line("revenue", "0", "1000", "1000")),
        ])
    );
    let mut conn = server.state.pool.acquire().await.expect("conn");
    for ((account, asset), (_, _, _, balance)) in &got {
        let code: AccountCode = account.parse().expect("account code");
        let stored = server.state.ledger.balance(&mut conn, &code, asset).await.expect("balance");
        assert_eq!(&stored.to_string(), balance, "{account} {asset}");
    }
    assert_eq!(
        body["assets"],
        serde_json::json!([
            {"asset": USDC_POLYGON, "debit_minor": "25000", "credit_minor": "25000", "balanced": true},
            {"asset": USD, "debit_minor": "2500", "credit_minor": "2500", "balanced": true},
        ])
    );
    // Debits equal credits per asset, summed here from the lines too.
    let mut net: BTreeMap<&str, SignedAmount> = BTreeMap::new();
    for ((_, asset), (_, debit, credit, _)) in &got {
        let debit: SignedAmount = debit.parse().expect("debit");
        let credit: SignedAmount = credit.parse().expect("credit");
        let sum = net.entry(asset.as_str()).or_insert(SignedAmount::ZERO);
        *sum = sum.checked_add(debit).and_then(|s| s.checked_add(credit.negated())).expect("no overflow");
    }
    assert!(net.values().all(|n| *n == SignedAmount::ZERO), "{net:?}");

    // The library call reads the same.
    let direct = export::trial_balance(&server.state.pool, None).await.expect("trial balance");
    assert!(direct.balanced());
    assert_eq!(direct.lines.len(), got.len());
}

/// A minimal RFC 4180 reader: records of fields, quotes undone.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = vec![String::new()];
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        let field = record.last_mut().expect("one field at least");
        match (quoted, c) {
            (false, '"') if field.is_empty() => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, ',') => record.push(String::new()),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                records.push(std::mem::replace(&mut record, vec![String::new()]));
            }
            (_, c) => field.push(c),
        }
    }
    assert_eq!(record, vec![String::new()], "the last record ends with CRLF");
    records
}

#[sqlx::test]
async fn csv_exports_quote_memos_and_count_rows(pool: PgPool) {
    let server = start(pool).await;
    let Posted { ids: [e1, _, e3, e4], .. } = post_scenario(&server).await;

    let response = server.raw(Some(&server.finance), "/v1/ledger/entries?format=csv").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(response.headers()["payrail-has-more"], "false");
    let text = response.text().await.expect("text");
    assert!(text.contains(",\"inv_1, \"\"rush\"\" order\"\r\n"), "{text}");
    let records = parse_csv(&text);
    assert_eq!(records.len(), 1 + 2 + 2 + 3 + 2, "one header and a record per posting: {text}");
    assert_eq!(
        records[0],
        ["entry_id", "created_at", "idempotency_key", "kind", "account", "asset", "amount_minor", "memo"]
    );
    assert!(records.iter().all(|r| r.len() == 8), "{records:?}");
    let of = |id: i64| records.iter().filter(move |r| r[0] == id.to_string());
    assert!(of(e1).all(|r| r[7] == MEMO_WITH_COMMA_AND_QUOTE && r[3] == "payment"), "{records:?}");
    assert!(of(e3).all(|r| r[7] == MEMO_WITH_LINE_BREAK), "{records:?}");
    assert_eq!(
        of(e1).map(|r| (r[4].as_str(), r[6].as_str())).collect::<Vec<_>>(),
        [(chain().as_str(), "10000"), ("liabilities:merchant:mer_a", "-10000")]
    );
    assert_eq!(records[1][0], e4.to_string(), "newest first");

    // A CSV page says in a header whether another follows.
    let response = server.raw(Some(&server.finance), "/v1/ledger/entries?format=csv&limit=1").await;
    assert_eq!(response.headers()["payrail-has-more"], "true");
    assert_eq!(parse_csv(&response.text().await.expect("text")).len(), 1 + 2);

    let response = server.raw(Some(&server.finance), "/v1/ledger/trial_balance?format=csv").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    let records = parse_csv(&response.text().await.expect("text"));
    assert_eq!(records.len(), 1 + 6, "{records:?}");
    assert_eq!(records[0], ["account", "account_type", "asset", "debit_minor", "credit_minor", "balance_minor"]);
    assert!(records.contains(
        &["revenue:platform_fees", "revenue", USDC_POLYGON, "0", "1000", "1000"].map(str::to_owned).to_vec()
    ));
}

#[sqlx::test]
async fn only_finance_and_admin_keys_read_exports_and_bad_queries_are_refused(pool: PgPool) {
    let server = start(pool).await;
    post_scenario(&server).await;
    let merchant = create_merchant(&server.state.pool, "Shop").await.expect("merchant").api_key;
    let admin = create_platform_key(&server.state.pool, Role::Admin).await.expect("admin key");
    for path in ["/v1/ledger/entries", "/v1/ledger/trial_balance", "/v1/ledger/entries?format=csv"] {
        let (status, body) = server.json(None, path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{path}"
        );
        let (status, body) = server.json(Some(&merchant), path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{path}");
        let response = server.raw(Some(&admin), path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    for (path, status) in [
        ("/v1/ledger/entries?limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?limit=501", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?starting_after=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?ending_before=entry_1", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?starting_after=1&ending_before=2", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?from=yesterday", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?to=2026-13-01T00:00:00Z", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?account=cash:", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?account=liabilities", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?account=liabilities:%25", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?asset=", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?kind=", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?asset=iso4217%3AUSD%00", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?kind=pay%00ment", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?format=xml", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/trial_balance?at=now", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/trial_balance?format=xlsx", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?limit=ten", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?before=3", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/entries?merchant=mer_a", StatusCode::UNPROCESSABLE_ENTITY),
        ("/v1/ledger/trial_balance?account=revenue:", StatusCode::BAD_REQUEST),
    ] {
        let (got, body) = server.json(Some(&server.finance), path).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some("parameter_invalid")), "{path}: {body}");
    }
}

/// With `[database] read_url` set, exports and the trial balance read from the replica while keys,
/// writes and everything else stay on the primary; a replica that cannot be reached costs those
/// reads a 503, not the daemon. The replica here is a second database holding other entries, so a
/// read that went to the wrong side shows.
#[sqlx::test]
async fn exports_read_from_the_replica_and_nothing_else_does(pool: PgPool) {
    // Test databases' names are as long as PostgreSQL allows: a name of its own, not a suffix.
    let replica_name = format!("payrail_replica_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {replica_name}")).execute(&pool).await.expect("drop old replica");
    sqlx::query(&format!("CREATE DATABASE {replica_name}")).execute(&pool).await.expect("create replica");
    let replica_options = (*pool.connect_options()).clone().database(&replica_name);
    let replica = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(replica_options.clone()).await.expect("replica");
    payrail::db::migrate(&replica).await.expect("replica schema");
    let replica_ledger = payrail::ledger::Ledger::new(replica.clone());
    let only_on_replica = replica_ledger
        .post_now(&transfer("replica-only", chain(), AccountCode::merchant("mer_r"), USDC_POLYGON, 77))
        .await
        .expect("replica entry")
        .entry_id;

    // The pool the daemon builds from the configuration.
    let url = format!(
        "postgres://{}@{}:{}/{replica_name}",
        replica_options.get_username(),
        replica_options.get_host(),
        replica_options.get_port()
    );
    let mut config = crate::common::repo_config();
    config.database.read_url = Some(url);
    let read_pool = payrail::app::read_pool(&config).expect("read pool").expect("read_url is set");

    let server = Rig {
        server: Server::start_with(pool.clone(), |state| state.read_pool = read_pool).await,
        finance: create_platform_key(&pool, Role::Finance).await.expect("finance key on the primary"),
    };
    let primary_entry = server
        .state
        .ledger
        .post_now(&transfer("primary-only", chain(), AccountCode::merchant("mer_p"), USDC_POLYGON, 5))
        .await
        .expect("primary entry")
        .entry_id;
    let all = server.ok("/v1/ledger/entries").await;
    let ids: Vec<i64> = all["data"].as_array().expect("data").iter().map(|e| e["id"].as_i64().expect("id")).collect();
    assert_eq!(ids, vec![only_on_replica], "{all}");
    assert_eq!(all["data"][0]["idempotency_key"], "replica-only", "{all}");
    let balance = server.ok("/v1/ledger/trial_balance").await;
    let text = balance.to_string();
    assert!(text.contains("liabilities:merchant:mer_r") && !text.contains("liabilities:merchant:mer_p"), "{text}");
    // The key was only ever on the primary, and the primary entry is there.
    let on_primary: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries WHERE id = $1 AND idempotency_key = 'primary-only'")
        .bind(primary_entry)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(on_primary, 1);
    replica.close().await;
    drop(server);

    // A replica nobody answers on: the exports say so, the rest of the API does not notice.
    let mut config = crate::common::repo_config();
    config.database.read_url = Some("postgres://postgres@127.0.0.1:1/payrail".to_owned());
    let dead = payrail::app::read_pool(&config).expect("a lazy pool is built").expect("read_url is set");
    let server = Rig {
        server: Server::start_with(pool.clone(), |state| state.read_pool = dead).await,
        finance: create_platform_key(&pool, Role::Finance).await.expect("finance key"),
    };
    let (status, body) = server.json(Some(&server.finance), "/v1/ledger/entries").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = server.json(Some(&server.finance), "/v1/reconciliation").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(server);
    sqlx::query(&format!("DROP DATABASE {replica_name} WITH (FORCE)")).execute(&pool).await.expect("drop replica");
}
