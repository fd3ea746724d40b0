//! Pushed checkout updates: `GET /pay/{id}/events`, a Server-Sent Events stream of the invoice's
//! public status (the same JSON as `/pay/{id}/status`), used by the page instead of polling.
//!
//! Every change a payer can see is announced in the outbox (`invoice.*`, `payment.*`), whichever
//! replica's watcher made it, so one [`LiveHub`] per daemon tails the outbox while anyone listens
//! (an indexed range read every [`TAIL_MS`]) and wakes the streams of the invoices it names. Each
//! stream then reads the status and sends it if it changed. Outbox ids are not committed in order,
//! so a stream also reads the status every [`RECHECK_S`] seconds on its own: a missed wake-up costs
//! at most that long, never a stale page. The stream ends after a final state.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use sqlx::{PgPool, Row};
use tokio::sync::broadcast;

use super::{asked_of, harden, public_status, status_error, CheckoutError, CheckoutQuery, LangHint, PayerState, JSON_CSP};
use crate::error::ApiError;
use crate::AppState;

/// How often the hub reads new outbox rows while a stream is open.
pub const TAIL_MS: u64 = 200;
/// How often a stream reads its invoice's status without being woken.
pub const RECHECK_S: u64 = 5;
/// Outbox rows read at most per tail.
const TAIL_ROWS_MAX: i64 = 1_000;

/// Wakes the open streams of invoices (and customers, whose credits moved) that changed. Cheap to share; the tailing task starts with
/// the first stream and stops when the last one closes.
#[derive(Debug)]
pub struct LiveHub {
    pool: PgPool,
    sender: broadcast::Sender<String>,
    started: AtomicBool,
}

impl LiveHub {
    pub fn new(pool: PgPool) -> Self {
        let (sender, _) = broadcast::channel(4_096);
        Self { pool, sender, started: AtomicBool::new(false) }
    }

    /// Invoice ids as they change, from now on.
    pub fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<String> {
        let receiver = self.sender.subscribe();
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().tail());
        }
        receiver
    }

    async fn tail(self: Arc<Self>) {
        let mut after: Option<i64> = None;
        loop {
            if self.sender.receiver_count() == 0 {
                // No stream is open: stop (holding no connection), unless one opened meanwhile and
                // saw this task still running.
                self.started.store(false, Ordering::SeqCst);
                if self.sender.receiver_count() == 0 || self.started.swap(true, Ordering::SeqCst) {
                    return;
                }
                after = None;
            }
            match self.read(after).await {
                Ok((invoices, last)) => {
                    after = Some(last);
                    for invoice in invoices {
                        let _ = self.sender.send(invoice);
                    }
                }
                Err(error) => tracing::warn!(target: "api", %error, "checkout events: reading the outbox failed; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(TAIL_MS)).await;
        }
    }

    /// The invoices named by outbox rows after `after` (none on the first read, which only finds
    /// where the outbox ends), and the last row read.
    async fn read(&self, after: Option<i64>) -> Result<(Vec<String>, i64), sqlx::Error> {
        let Some(after) = after else {
            let last: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(&self.pool).await?;
            return Ok((Vec::new(), last.unwrap_or(0)));
        };
        let rows = sqlx::query(
            "SELECT id, object_id, payload->'data'->>'invoice_id' AS invoice, payload->'data'->>'applied_invoice_id' AS applied \
             FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(TAIL_ROWS_MAX)
        .fetch_all(&self.pool)
        .await?;
        let mut last = after;
        let mut invoices = Vec::new();
        for row in rows {
            last = last.max(row.try_get::<i64, _>("id")?);
            let object: String = row.try_get("object_id")?;
            // Invoices for the checkout's streams, customers for their credit balance streams.
            if object.starts_with("inv_") || object.starts_with("cus_") {
                invoices.push(object);
            }
            for column in ["invoice", "applied"] {
                if let Some(invoice) = row.try_get::<Option<String>, _>(column)? {
                    invoices.push(invoice);
                }
            }
        }
        invoices.sort();
        invoices.dedup();
        Ok((invoices, last))
    }
}

fn is_final(state: PayerState) -> bool {
    matches!(state, PayerState::Overpaid | PayerState::Expired | PayerState::Void | PayerState::Refunded | PayerState::Invalid)
}

/// The status as JSON, and the same without the server's clock (what "changed" compares).
fn encoded(status: &super::CheckoutStatus) -> (String, String) {
    let json = serde_json::to_value(status).unwrap_or_default();
    let mut compared = json.clone();
    if let Some(object) = compared.as_object_mut() {
        object.remove("now");
    }
    (json.to_string(), compared.to_string())
}

struct Stream {
    state: AppState,
    id: String,
    asked: Option<String>,
    hint: LangHint,
    wake: broadcast::Receiver<String>,
    sent: String,
    first: Option<Event>,
    done: bool,
}

impl Stream {
    /// The next status that differs from the last sent, waiting for a wake-up or the recheck.
    async fn next(&mut self) -> Option<Event> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            if self.done {
                return None;
            }
            tokio::select! {
                woken = self.wake.recv() => match woken {
                    Ok(invoice) if invoice != self.id => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = tokio::time::sleep(Duration::from_secs(RECHECK_S)) => {}
            }
            let status = match public_status(&self.state, &self.id, self.asked.as_deref(), self.hint).await {
                Ok(status) => status,
                // The database is away for a moment: the next wake-up or recheck tries again.
                Err(CheckoutError::Unavailable(_)) => continue,
                Err(_) => return None,
            };
            let (json, compared) = encoded(&status);
            if compared == self.sent {
                continue;
            }
            self.sent = compared;
            self.done = is_final(status.state);
            return Some(Event::default().event("status").data(json));
        }
    }
}

/// One event of the stream, as `text/event-stream` frames it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StatusEvent {
    /// Always `status`.
    #[schema(example = "status")]
    pub event: String,
    /// The JSON of `GET /pay/{id}/status` (a `CheckoutStatus`).
    pub data: String,
}

/// `GET /pay/{id}/events`: see the module docs. The first event is the status now.
#[utoipa::path(get, path = "/pay/{id}/events", tag = "checkout",
    params(("id" = String, Path, description = "the invoice id, inv_…"), CheckoutQuery),
    responses((status = 200, description = "`status` events, each the JSON of `GET /pay/{id}/status`, when it changes", content_type = "text/event-stream", body = StatusEvent),
        (status = 404, body = super::super::openapi::ErrorBody),
        (status = 503, body = super::super::openapi::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<CheckoutQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Ok(Path(id)) = id else {
        return harden(ApiError::not_found("invoice").into_response(), JSON_CSP);
    };
    let (asked, hint) = asked_of(query, &headers);
    // Subscribed before the first read, so no change after it is missed.
    let wake = state.live.subscribe();
    let status = match public_status(&state, &id, asked.as_deref(), hint).await {
        Ok(status) => status,
        Err(error) => return harden(status_error(error, &id), JSON_CSP),
    };
    let (json, compared) = encoded(&status);
    let stream = Stream {
        state,
        id,
        asked,
        hint,
        wake,
        sent: compared,
        first: Some(Event::default().event("status").data(json)),
        done: is_final(status.state),
    };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, Infallible>(event), stream))
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    // Proxies must not hold the stream back.
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    harden(response, JSON_CSP)
}
