//! The delivery client ignores proxy settings from the environment. A proxy would resolve endpoint
//! host names itself, past the resolver that keeps deliveries off internal addresses, so deliveries
//! always connect directly. Its own test binary: it sets process-wide environment variables, which no
//! other test may see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use chrono::Utc;
use payrail::clock::{Clock, SystemClock};
use payrail::merchant::create_merchant;
use payrail::secrets::{SecretsAtRest, SecretsKey};
use payrail::webhook::{create_endpoint, emit, DispatchConfig, Dispatcher};
use sqlx::PgPool;

#[sqlx::test]
async fn deliveries_ignore_proxy_environment_variables(pool: PgPool) {
    // A port that was just free: a proxy there would refuse every connection.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let proxy = format!("http://{closed}");
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        std::env::set_var(name, &proxy);
    }
    for name in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(name);
    }

    let hits: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let event = headers.get("payrail-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                seen.lock().expect("hits").push(event);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let now = Utc::now();
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let secrets = SecretsAtRest::Sealed(Arc::new(SecretsKey::generate()));
    create_endpoint(&pool, &merchant.merchant_id, &url, None, now, true, &secrets).await.expect("endpoint");
    let mut tx = pool.begin().await.expect("begin");
    let event_id = emit(&mut tx, &merchant.merchant_id, "invoice.created", "inv_proxy", serde_json::json!({}), now)
        .await
        .expect("event");
    tx.commit().await.expect("commit");

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config = DispatchConfig { allow_loopback: true, ..DispatchConfig::default() };
    let dispatcher = Dispatcher::new(pool, clock, config, secrets).expect("dispatcher");
    let report = dispatcher.dispatch_once().await.expect("pass");
    assert_eq!((report.delivered, report.retrying), (1, 0), "{report:?}");
    assert_eq!(*hits.lock().expect("hits"), [event_id]);
}
