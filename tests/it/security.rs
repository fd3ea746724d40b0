//! Security properties over a real socket and a real database: idempotent replays only for the
//! authenticated key that made them and never with a one-time secret, stored responses without
//! secrets, the API key lifecycle (create, list, read-only, revoke, rotate with a grace period),
//! admin-created merchants, and per-address limits for what no key pays for.

use crate::common;

use chrono::Duration;
use std::sync::Arc;

use crate::common::Server;
use payrail::api::limit::IpLimiter;
use payrail::api::AppState;
use payrail::merchant::{create_merchant, create_platform_key, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The server and one merchant with its key.
struct Rig {
    server: Server,
    merchant_id: String,
    key: String,
}

impl std::ops::Deref for Rig {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

async fn rig_with(pool: PgPool, adjust: impl FnOnce(&mut AppState)) -> Rig {
    let server = Server::start_with(pool, adjust).await;
    let merchant = create_merchant(&server.state.pool, "Shop").await.expect("merchant");
    Rig { server, merchant_id: merchant.merchant_id, key: merchant.api_key }
}

async fn rig(pool: PgPool) -> Rig {
    rig_with(pool, |_| {}).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// The key id inside a key's plaintext (`pr_<id>_<secret>` → `key_<id>`).
fn key_id(key: &str) -> String {
    let rest = key.strip_prefix("pr_").expect("pr_ prefix");
    format!("key_{}", rest.split_once('_').expect("two parts").0)
}

/// The same key id with a wrong secret of the right length.
fn forged(key: &str) -> String {
    let rest = key.strip_prefix("pr_").expect("pr_ prefix");
    let (public, secret) = rest.split_once('_').expect("two parts");
    format!("pr_{public}_{}", "x".repeat(secret.len()))
}

// ---------------------------------------------------------------------------------------------
// Idempotent replay.

#[sqlx::test]
async fn a_replay_needs_the_key_that_made_it_and_never_shows_a_secret_again(pool: PgPool) {
    let rig = rig(pool).await;
    let body = json!({"url": "https://hooks.example.com/payrail"});
    let (status, created) = rig.post(&rig.key, "/v1/webhook_endpoints", body.clone(), Some("hook-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().expect("secret shown at creation").to_owned();
    assert!(secret.starts_with("whsec_"));

    // The key's public id with a wrong secret: 401, and the stored response is not reached.
    let (status, answer) = rig.post(&forged(&rig.key), "/v1/webhook_endpoints", body.clone(), Some("hook-1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(!answer.to_string().contains(&secret), "the secret leaked to a forged key: {answer}");

    // Another merchant's valid key under the same Idempotency-Key runs its own request.
    let other = create_merchant(&rig.state.pool, "Other").await.expect("merchant");
    let (status, theirs) = rig.post(&other.api_key, "/v1/webhook_endpoints", body.clone(), Some("hook-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    assert_ne!(theirs["id"], created["id"]);
    assert_ne!(theirs["secret"], created["secret"]);

    // The key that made it gets the same object back, with the secret redacted.
    let (status, replayed) = rig.post(&rig.key, "/v1/webhook_endpoints", body, Some("hook-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{replayed}");
    assert_eq!(replayed["id"], created["id"]);
    assert_eq!(replayed["url"], created["url"]);
    assert_eq!(replayed["secret"], Value::Null, "a replay never shows the secret: {replayed}");

    // Nothing secret is stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT response_body FROM idempotency_keys WHERE response_body IS NOT NULL")
        .fetch_all(&rig.state.pool)
        .await
        .expect("stored");
    assert_eq!(stored.len(), 2);
    for body in stored {
        let text = String::from_utf8(body).expect("utf-8");
        assert!(!text.contains("whsec_"), "a signing secret is stored: {text}");
    }
}

#[sqlx::test]
async fn a_replayed_creator_creation_does_not_give_out_a_working_key(pool: PgPool) {
    let rig = rig(pool).await;
    let body = json!({"name": "Writer"});
    let (status, created) = rig.post(&rig.key, "/v1/creators", body.clone(), Some("cr-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let creator_key = created["api_key"].as_str().expect("the creator's key, once").to_owned();
    let (status, replayed) = rig.post(&rig.key, "/v1/creators", body.clone(), Some("cr-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replayed["api_key"], Value::Null, "{replayed}");
    // A forged token with the merchant key's id gets nothing.
    let (status, answer) = rig.post(&forged(&rig.key), "/v1/creators", body, Some("cr-1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!answer.to_string().contains(&creator_key[..20]));
}

#[sqlx::test]
async fn stored_responses_are_purged_after_the_replay_window(pool: PgPool) {
    let rig = rig(pool).await;
    let (status, _) = rig.post(&rig.key, "/v1/webhook_endpoints", json!({"url": "https://h.example.com/a"}), Some("old")).await;
    assert_eq!(status, StatusCode::CREATED);
    let now = payrail::clock::Clock::now(rig.clock.as_ref());
    // Still inside the window: kept.
    assert_eq!(payrail::api::idempotency::purge_expired(&rig.state.pool, now).await.expect("purge"), 0);
    let later = now + Duration::hours(payrail::api::idempotency::IDEMPOTENCY_KEY_TTL_H) + Duration::seconds(1);
    assert_eq!(payrail::api::idempotency::purge_expired(&rig.state.pool, later).await.expect("purge"), 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys").fetch_one(&rig.state.pool).await.expect("count");
    assert_eq!(left, 0);
}

// ---------------------------------------------------------------------------------------------
// API keys.

#[sqlx::test]
async fn a_merchant_creates_lists_and_revokes_keys(pool: PgPool) {
    let rig = rig(pool).await;
    let (status, created) = rig.post(&rig.key, "/v1/api_keys", json!({"name": "ci"}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let second = created["secret"].as_str().expect("secret").to_owned();
    assert_eq!(created["name"], "ci");
    assert_eq!(created["read_only"], false);
    assert_eq!(key_id(&second), created["id"].as_str().expect("id"));

    // The new key works; the list shows both keys and never a secret.
    let (status, _) = rig.get(&second, "/v1/invoices").await;
    assert_eq!(status, StatusCode::OK);
    let (status, list) = rig.get(&rig.key, "/v1/api_keys").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["data"].as_array().expect("data").iter().filter_map(|k| k["id"].as_str()).collect();
    assert!(ids.contains(&key_id(&rig.key).as_str()) && ids.contains(&key_id(&second).as_str()), "{list}");
    assert!(!list.to_string().contains(&second[20..]), "a listing shows no secret: {list}");
    assert!(list["data"].as_array().expect("data").iter().all(|k| k.get("secret").is_none()));
    // A cursor that is not a key id is refused before it reaches the database.
    let (status, answer) = rig.get(&rig.key, "/v1/api_keys?starting_after=O%00x").await;
    assert_eq!((status, code(&answer)), (StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"), "{answer}");
    let used = list["data"].as_array().expect("data").iter().find(|k| k["id"] == created["id"]).expect("listed");
    assert!(used["last_used_at"].is_string(), "the new key's use is recorded: {used}");

    // Another merchant cannot see or revoke it.
    let other = create_merchant(&rig.state.pool, "Other").await.expect("merchant");
    let path = format!("/v1/api_keys/{}", created["id"].as_str().expect("id"));
    let (status, _) = rig.get(&other.api_key, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = rig.send(reqwest::Method::DELETE, Some(&other.api_key), &path, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = rig.get(&second, "/v1/invoices").await;
    assert_eq!(status, StatusCode::OK, "still valid after another merchant's attempt");

    // Revoked: refused from the next request on.
    let (status, revoked) = rig.send(reqwest::Method::DELETE, Some(&rig.key), &path, None, None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, answer) = rig.get(&second, "/v1/invoices").await;
    assert_eq!((status, code(&answer)), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[sqlx::test]
async fn a_read_only_key_reads_and_cannot_write(pool: PgPool) {
    let rig = rig(pool).await;
    let (status, created) = rig.post(&rig.key, "/v1/api_keys", json!({"read_only": true}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let reader = created["secret"].as_str().expect("secret").to_owned();
    assert_eq!(created["read_only"], true);

    let (status, _) = rig.get(&reader, "/v1/invoices").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = rig.get(&reader, "/v1/balances").await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = rig.post(&reader, "/v1/invoices", json!({"amount": "1.00", "currency": "USD"}), None).await;
    assert_eq!((status, code(&answer)), (StatusCode::FORBIDDEN, "read_only_key"), "{answer}");
    let (status, answer) = rig.post(&reader, "/v1/api_keys", json!({}), None).await;
    assert_eq!((status, code(&answer)), (StatusCode::FORBIDDEN, "read_only_key"), "a reader cannot make a writer");
    let (status, answer) = rig
        .send(reqwest::Method::PUT, Some(&reader), "/v1/split_rules", Some(json!({"rules": []})), None)
        .await;
    assert_eq!((status, code(&answer)), (StatusCode::FORBIDDEN, "read_only_key"), "{answer}");
    let path = format!("/v1/api_keys/{}", key_id(&rig.key));
    let (status, answer) = rig.send(reqwest::Method::DELETE, Some(&reader), &path, None, None).await;
    assert_eq!((status, code(&answer)), (StatusCode::FORBIDDEN, "read_only_key"));
    let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&rig.state.pool).await.expect("count");
    assert_eq!(invoices, 0, "nothing was written");
}

#[sqlx::test]
async fn a_rotated_key_works_for_its_grace_period_only(pool: PgPool) {
    let rig = rig(pool).await;
    let path = format!("/v1/api_keys/{}/rotate", key_id(&rig.key));
    let (status, answer) = rig.post(&rig.key, &path, json!({"grace_period_s": 86_401}), None).await;
    assert_eq!((status, code(&answer)), (StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"), "at most 24 h");

    let (status, rotated) = rig.post(&rig.key, &path, json!({"grace_period_s": 600}), Some("rot-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let new_key = rotated["secret"].as_str().expect("secret").to_owned();
    // Both work inside the grace period.
    assert_eq!(rig.get(&rig.key, "/v1/invoices").await.0, StatusCode::OK);
    assert_eq!(rig.get(&new_key, "/v1/invoices").await.0, StatusCode::OK);
    let (_, old) = rig.get(&new_key, &format!("/v1/api_keys/{}", key_id(&rig.key))).await;
    assert_eq!(old["rotated_to"], rotated["id"]);
    assert!(old["expires_at"].is_string(), "{old}");
    // A second rotation of the old key is refused.
    let (status, answer) = rig.post(&new_key, &path, json!({}), None).await;
    assert_eq!((status, code(&answer)), (StatusCode::CONFLICT, "api_key_inactive"));

    // After it, only the new key works.
    rig.clock.advance(Duration::seconds(601));
    let (status, _) = rig.get(&rig.key, "/v1/invoices").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rig.get(&new_key, "/v1/invoices").await.0, StatusCode::OK);
    // Even the old key's replay of its own rotation is refused now: it no longer authenticates.
    let (status, answer) = rig.post(&rig.key, &path, json!({"grace_period_s": 600}), Some("rot-1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");

    // Grace 0 revokes at once.
    let path = format!("/v1/api_keys/{}/rotate", key_id(&new_key));
    let (status, third) = rig.post(&new_key, &path, json!({"grace_period_s": 0}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    assert_eq!(rig.get(&new_key, "/v1/invoices").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(rig.get(third["secret"].as_str().expect("secret"), "/v1/invoices").await.0, StatusCode::OK);
}

/// Waits until `server` hears key changes (it starts listening on its first authenticated request).
async fn listening(server: &Server, key: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.state.keys.is_listening() {
        assert!(std::time::Instant::now() < deadline, "the key cache never started listening");
        let _ = server.get(key, "/v1/balances").await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long until `key` is refused by `server`, asking every 10 ms for at most 5 s.
async fn refused_after(server: &Server, key: &str, since: std::time::Instant) -> std::time::Duration {
    loop {
        let (status, _) = server.get(key, "/v1/balances").await;
        if status == StatusCode::UNAUTHORIZED {
            return since.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(since.elapsed() < std::time::Duration::from_secs(5), "{key} still works 5 s after it was revoked");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[sqlx::test]
async fn a_revoked_key_is_refused_by_every_replica_within_a_second(pool: PgPool) {
    let a = rig(pool.clone()).await;
    let b = Server::start(pool).await;
    listening(&a, &a.key).await;
    listening(&b, &a.key).await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (status, created) = a.post(&a.key, "/v1/api_keys", json!({}), None).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        keys.push(created["secret"].as_str().expect("secret").to_owned());
    }
    // Both replicas have verified both keys, and keep them.
    for key in &keys {
        for server in [&a.server, &b] {
            assert_eq!(server.get(key, "/v1/balances").await.0, StatusCode::OK);
        }
    }

    // Revoked through replica A's API: A refuses it at once, B within a second.
    let since = std::time::Instant::now();
    let (status, _) = a.send(reqwest::Method::DELETE, Some(&a.key), &format!("/v1/api_keys/{}", key_id(&keys[0])), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.get(&keys[0], "/v1/balances").await.0, StatusCode::UNAUTHORIZED, "the revoking replica refuses it at once");
    let waited = refused_after(&b, &keys[0], since).await;
    assert!(waited < std::time::Duration::from_secs(1), "replica B refused the key after {waited:?}");

    // Revoked by an operator's own SQL: both replicas within a second.
    let since = std::time::Instant::now();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1").bind(key_id(&keys[1])).execute(&a.state.pool).await.expect("revoke");
    for server in [&a.server, &b] {
        let waited = refused_after(server, &keys[1], since).await;
        assert!(waited < std::time::Duration::from_secs(1), "refused after {waited:?}");
    }
    // The merchant's own key, never changed, still works on both.
    for server in [&a.server, &b] {
        assert_eq!(server.get(&a.key, "/v1/balances").await.0, StatusCode::OK);
    }
}

#[sqlx::test]
async fn a_verified_key_is_not_looked_up_again(pool: PgPool) {
    let rig = rig(pool).await;
    listening(&rig, &rig.key).await;
    let invoice = common::invoice(&rig.state, &rig.merchant_id, "5.00", &[common::USDC_POLYGON]).await;
    let path = format!("/v1/invoices/{}", invoice.id);
    assert_eq!(rig.get(&rig.key, &path).await.0, StatusCode::OK);

    // While another session holds every lock on the keys table, the verified key is still served:
    // its request never reads that table.
    let mut blocker = rig.state.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.expect("lock");
    let served = tokio::time::timeout(std::time::Duration::from_secs(5), rig.get(&rig.key, &path)).await;
    blocker.rollback().await.expect("rollback");
    let (status, view) = served.expect("answered while the keys table was locked");
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["id"], invoice.id.as_str());
}

#[sqlx::test]
async fn a_key_has_its_own_rate_and_a_dry_key_is_refused_before_the_database(pool: PgPool) {
    let rig = rig(pool).await;
    let path = format!("/v1/api_keys/{}", key_id(&rig.key));
    let (status, answer) = rig
        .send(reqwest::Method::PATCH, Some(&rig.key), &path, Some(json!({"rate_limit": {"requests_per_s": 0, "burst": 2}})), None)
        .await;
    assert_eq!((status, code(&answer)), (StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"), "{answer}");
    let (status, answer) = rig.send(reqwest::Method::PATCH, Some(&rig.key), &path, Some(json!({"rate": 1})), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "unknown fields are refused: {answer}");

    // A reader key at 1 request per second, bursts of 2.
    let (status, created) =
        rig.post(&rig.key, "/v1/api_keys", json!({"read_only": true, "rate_limit": {"requests_per_s": 1, "burst": 2}}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["rate_limit"], json!({"requests_per_s": 1, "burst": 2}));
    let slow = created["secret"].as_str().expect("secret").to_owned();
    for _ in 0..2 {
        assert_eq!(rig.get(&slow, "/v1/balances").await.0, StatusCode::OK);
    }
    // Dry: 429 — even while the database could not answer a key lookup or anything else.
    let mut blocker = rig.state.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE api_keys, invoices, journal_entries IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.expect("lock");
    let refused = tokio::time::timeout(std::time::Duration::from_secs(5), rig.get(&slow, "/v1/balances")).await;
    blocker.rollback().await.expect("rollback");
    let (status, answer) = refused.expect("answered without the database");
    assert_eq!((status, code(&answer)), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{answer}");
    // The merchant's key keeps the daemon's default rate.
    assert_eq!(rig.get(&rig.key, "/v1/balances").await.0, StatusCode::OK);

    // Back to the default: null.
    let slow_path = format!("/v1/api_keys/{}", created["id"].as_str().expect("id"));
    let (status, updated) =
        rig.send(reqwest::Method::PATCH, Some(&rig.key), &slow_path, Some(json!({"rate_limit": null, "name": "reader"})), None).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!((updated["rate_limit"].clone(), updated["name"].clone()), (Value::Null, json!("reader")));
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    for _ in 0..5 {
        assert_eq!(rig.get(&slow, "/v1/balances").await.0, StatusCode::OK, "the default burst again");
    }
    // A rotation keeps the key's own rate.
    let (_, limited) = rig.send(reqwest::Method::PATCH, Some(&rig.key), &slow_path, Some(json!({"rate_limit": {"requests_per_s": 3, "burst": 4}})), None).await;
    assert_eq!(limited["rate_limit"]["burst"], 4, "{limited}");
    let (status, rotated) = rig.post(&rig.key, &format!("{slow_path}/rotate"), json!({}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(rotated["rate_limit"], json!({"requests_per_s": 3, "burst": 4}));
}

#[sqlx::test]
async fn an_admin_key_creates_merchants_and_nothing_else_can(pool: PgPool) {
    let rig = rig(pool).await;
    let admin = create_platform_key(&rig.state.pool, Role::Admin).await.expect("admin");
    let finance = create_platform_key(&rig.state.pool, Role::Finance).await.expect("finance");
    for key in [&rig.key, &finance] {
        let (status, answer) = rig.post(key, "/v1/merchants", json!({"name": "Nope"}), None).await;
        assert_eq!((status, code(&answer)), (StatusCode::FORBIDDEN, "forbidden"), "{answer}");
    }
    let (status, answer) = rig.post(&admin, "/v1/merchants", json!({"name": ""}), None).await;
    assert_eq!((status, code(&answer)), (StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid"));
    let (status, created) = rig.post(&admin, "/v1/merchants", json!({"name": "  New Shop "}), Some("m-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "New Shop");
    let key = created["api_key"].as_str().expect("key").to_owned();
    let (status, _) = rig.get(&key, "/v1/invoices").await;
    assert_eq!(status, StatusCode::OK, "the new merchant's key works");
    let (_, replayed) = rig.post(&admin, "/v1/merchants", json!({"name": "  New Shop "}), Some("m-1")).await;
    assert_eq!(replayed["id"], created["id"]);
    assert_eq!(replayed["api_key"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// Per-address limits.

#[sqlx::test]
async fn an_address_that_keeps_failing_authentication_is_slowed_down(pool: PgPool) {
    let rig = rig_with(pool, |state| state.ip_limiter = Arc::new(IpLimiter::with_limits(None, (100, 100), (1, 3)))).await;
    let bad = forged(&rig.key);
    for _ in 0..3 {
        let (status, _) = rig.get(&bad, "/v1/invoices").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Dry: the next bearer request from this address is refused before any key is looked up,
    // with Retry-After, even with a valid key.
    let response = rig.client.get(format!("{}/v1/invoices", rig.base)).bearer_auth(&bad).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let (status, answer) = rig.get(&rig.key, "/v1/invoices").await;
    assert_eq!((status, code(&answer)), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    // A token comes back with time.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, _) = rig.get(&rig.key, "/v1/invoices").await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test]
async fn public_routes_take_a_token_per_request_from_the_address(pool: PgPool) {
    let rig = rig_with(pool, |state| state.ip_limiter = Arc::new(IpLimiter::with_limits(None, (1, 2), (1, 20)))).await;
    let invoice = common::invoice(&rig.state, &rig.merchant_id, "5.00", &[common::USDC_POLYGON]).await;
    let status_path = format!("{}/pay/{}/status", rig.base, invoice.id);
    for _ in 0..2 {
        assert_eq!(rig.client.get(&status_path).send().await.expect("status").status(), StatusCode::OK);
    }
    let response = rig.client.get(&status_path).send().await.expect("status");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let response = rig.client.post(format!("{}/pay/{}/card", rig.base, invoice.id)).form(&[("payment_method", "pm_card_visa")]).send().await.expect("card");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "the card form shares the address's bucket");
    // Keyed requests are not charged to the address.
    let (status, _) = rig.get(&rig.key, "/v1/invoices").await;
    assert_eq!(status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// /metrics on its own listener.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[sqlx::test]
async fn metrics_can_leave_the_api_listener_for_their_own(pool: PgPool) {
    let database = common::database_url(&pool);
    let (api, metrics) = (free_port(), free_port());
    let mut command = common::payrail(&database, &["serve", "--allow-dev-settings"]);
    command
        .env("PAYRAIL_SERVER__LISTEN", format!("127.0.0.1:{api}"))
        .env("PAYRAIL_SERVER__METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for chain in ["BITCOIN", "ETHEREUM", "POLYGON", "BSC", "ARBITRUM", "OPTIMISM"] {
        command.env(format!("PAYRAIL_CHAINS__{chain}__ENABLED"), "false");
    }
    let mut daemon = command.spawn().expect("payrail serve");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("http://127.0.0.1:{api}/healthz")).send().await {
            if response.status() == StatusCode::OK {
                break;
            }
        }
        assert!(daemon.try_wait().expect("wait").is_none(), "payrail serve exited");
        assert!(std::time::Instant::now() < deadline, "payrail serve did not come up");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let on_api = client.get(format!("http://127.0.0.1:{api}/metrics")).send().await.expect("api");
    assert_eq!(on_api.status(), StatusCode::NOT_FOUND, "/metrics is not on the API listener");
    let on_metrics = client.get(format!("http://127.0.0.1:{metrics}/metrics")).send().await.expect("metrics");
    assert_eq!(on_metrics.status(), StatusCode::OK);
    let text = on_metrics.text().await.expect("text");
    assert!(text.is_empty() || text.starts_with("# HELP"), "Prometheus text: {text}");
    let other = client.get(format!("http://127.0.0.1:{metrics}/v1/invoices")).send().await.expect("metrics");
    assert_eq!(other.status(), StatusCode::NOT_FOUND, "the metrics listener serves nothing else");
    daemon.kill().await.expect("kill");
}
