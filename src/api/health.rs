//! Liveness and readiness. `/readyz` answers 503 while the database cannot be reached, so a load
//! balancer stops sending traffic to a replica that could not serve it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "the database answers"), (status = 503, description = "the database is unreachable")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    // Each rail's health is shown; a rail that is down does not make the replica unready (the API
    // and the other rails still serve), the database does.
    let now = state.clock.now();
    let mut rails = serde_json::Map::new();
    for (chain, _, problem) in crate::chain::health::shared().snapshot(now) {
        rails.insert(chain, json!({ "healthy": problem.is_none(), "problem": problem }));
    }
    if state.card.is_some() {
        rails.insert("card".to_owned(), json!({ "healthy": true, "problem": null }));
    }
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": "ready", "database": "ok", "rails": rails }))),
        Err(error) => {
            tracing::warn!(target: "api", %error, "database not reachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "database": "unreachable", "rails": rails })),
            )
        }
    }
}
