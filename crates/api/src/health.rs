//! Liveness and readiness. `/readyz` answers 503 while the database cannot be reached, and while
//! any rail this replica follows is unhealthy (its watcher halted, its nodes fail, its node's tip is
//! frozen, it lags or it is silent), naming those rails: a load balancer then takes the replica out
//! of rotation and an operator sees why. Rails followed by another replica are not judged here.

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
    responses(
        (status = 200, description = "the database answers and every rail this replica follows is healthy"),
        (status = 503, description = "the database is unreachable, or a rail is unhealthy: `unhealthy_rails` names them and `rails` says why")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let now = state.clock.now();
    let mut rails = serde_json::Map::new();
    let mut unhealthy = Vec::new();
    for (chain, _, problem) in state.rail_health.snapshot(now) {
        if problem.is_some() {
            unhealthy.push(chain.clone());
        }
        rails.insert(chain, json!({ "healthy": problem.is_none(), "problem": problem }));
    }
    if state.card.is_some() {
        rails.insert("card".to_owned(), json!({ "healthy": true, "problem": null }));
    }
    let database = match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => "ok",
        Err(error) => {
            tracing::warn!(target: "api", %error, "database not reachable");
            "unreachable"
        }
    };
    let ready = database == "ok" && unhealthy.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": database,
        "unhealthy_rails": unhealthy,
        "rails": rails,
    });
    (status, Json(body))
}
