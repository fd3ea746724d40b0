//! Reading events and their delivery log, and replaying an event. Every query filters by the
//! merchant: another merchant's event is not found.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use payrail_store::page::{Order, Page};
use sqlx::PgPool;

use crate::ids::{is_id, new_id};

use super::error::{Result, WebhookError};
use super::failure::ErrorClass;

/// An event, exactly as it is delivered to endpoints and shown by `GET /v1/events` (the payload
/// [`super::emit`] stores).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// `evt_…`
    #[schema(example = "evt_mqcc3ii6gqt7yxt2zb4ajw1o")]
    pub id: String,
    /// The event type, as endpoints subscribe to it: `invoice.created`, `invoice.paid`,
    /// `invoice.payment_late`, `invoice.payment_reversed`, `payment.orphaned`, …
    #[serde(rename = "type")]
    #[schema(example = "invoice.paid")]
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    /// The object the event is about, as the API shows it at the event's time: for `invoice.*`
    /// events, the invoice (`InvoiceView`); for `payment.*` events, the payment (`PaymentView`).
    #[schema(value_type = Object)]
    pub data: Value,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    /// Null when no response came.
    pub status_code: Option<u16>,
    /// Why the attempt failed, as a class only (null when it got a 2xx): `timeout`, `connect`,
    /// `tls`, `dns`, `refused_address` (the host resolves only to addresses endpoints may not use),
    /// `http_status` (see `status_code`), `body_too_large` (not sent) or `other`. Nothing of the
    /// response body or of the raw error is kept.
    pub error: Option<ErrorClass>,
    pub duration_ms: u64,
    /// `delivered`, `retry`, `failed` or `abandoned`.
    pub outcome: String,
}

/// An event's way to one endpoint, with its attempts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// `whd_…`
    pub id: String,
    #[schema(value_type = String, example = "webhook_delivery")]
    pub object: &'static str,
    pub event_id: String,
    pub endpoint_id: String,
    /// `pending`, `delivered`, `failed`, `abandoned`, `superseded` or `canceled`.
    pub status: String,
    /// Whether it was asked for through the replay endpoint.
    pub replay: bool,
    pub attempt_count: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptView>,
}

/// A page of the merchant's events, newest first, only of `event_type` when given (a known type),
/// and whether more follow.
pub async fn list_events(pool: &PgPool, merchant_id: &str, page: &Page, event_type: Option<&str>) -> Result<(Vec<Value>, bool)> {
    const ORDER: Order = Order("id DESC");
    if let Some(wanted) = event_type {
        if !super::endpoint::EVENT_TYPES.contains(&wanted) {
            return Err(WebhookError::Invalid { field: "type", reason: format!("unknown event type {wanted:?}") });
        }
    }
    let data: Vec<Value> = sqlx::query_scalar(&format!(
        "SELECT payload FROM outbox WHERE merchant_id = $1 AND ($4::text IS NULL OR event_type = $4) \
           AND {} ORDER BY {} LIMIT $3",
        page.condition(ORDER, "SELECT id FROM outbox WHERE event_id = $2 AND merchant_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(merchant_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .bind(event_type)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(data))
}

/// One of the merchant's events, as delivered.
pub async fn get_event(pool: &PgPool, merchant_id: &str, event_id: &str) -> Result<Value> {
    let not_found = || WebhookError::EventNotFound { id: event_id.to_owned() };
    if !is_id(event_id, "evt") {
        return Err(not_found());
    }
    sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1 AND merchant_id = $2")
        .bind(event_id)
        .bind(merchant_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(not_found)
}

async fn outbox_row(pool: &PgPool, merchant_id: &str, event_id: &str) -> Result<(i64, String, String)> {
    let not_found = || WebhookError::EventNotFound { id: event_id.to_owned() };
    if !is_id(event_id, "evt") {
        return Err(not_found());
    }
    sqlx::query_as("SELECT id, event_type, object_id FROM outbox WHERE event_id = $1 AND merchant_id = $2")
        .bind(event_id)
        .bind(merchant_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(not_found)
}

/// A `webhook_deliveries` row as [`deliveries`] selects it.
#[derive(sqlx::FromRow)]
struct DeliveryRecord {
    id: i64,
    delivery_id: String,
    endpoint_id: String,
    status: String,
    replay: bool,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

/// A `webhook_attempts` row.
#[derive(sqlx::FromRow)]
struct AttemptRecord {
    delivery_id: i64,
    attempt: i32,
    attempted_at: DateTime<Utc>,
    status_code: Option<i32>,
    error: Option<String>,
    duration_ms: i64,
    outcome: String,
}

/// A page of the delivery log of one of the merchant's events, in the order the deliveries were
/// made, each with every attempt; and whether more follow.
pub async fn deliveries(pool: &PgPool, merchant_id: &str, event_id: &str, page: &Page) -> Result<(Vec<DeliveryView>, bool)> {
    const ORDER: Order = Order("id");
    let (outbox_id, _, _) = outbox_row(pool, merchant_id, event_id).await?;
    let rows: Vec<DeliveryRecord> = sqlx::query_as(&format!(
        "SELECT id, delivery_id, endpoint_id, status, replay, attempts, next_attempt_at, created_at, completed_at \
         FROM webhook_deliveries WHERE outbox_id = $1 AND {} ORDER BY {} LIMIT $3",
        page.condition(ORDER, "SELECT id FROM webhook_deliveries WHERE delivery_id = $2 AND outbox_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(outbox_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let (rows, has_more) = page.finish(rows);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let attempt_rows: Vec<AttemptRecord> = sqlx::query_as(
        "SELECT delivery_id, attempt, attempted_at, status_code, error, duration_ms, outcome \
         FROM webhook_attempts WHERE delivery_id = ANY ($1) ORDER BY delivery_id, attempt",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        let attempts =
            attempt_rows.iter().filter(|a| a.delivery_id == row.id).map(attempt_view).collect::<Result<Vec<_>>>()?;
        views.push(DeliveryView {
            id: row.delivery_id,
            object: "webhook_delivery",
            event_id: event_id.to_owned(),
            endpoint_id: row.endpoint_id,
            status: row.status,
            replay: row.replay,
            attempt_count: count("attempts", row.attempts)?,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            completed_at: row.completed_at,
            attempts,
        });
    }
    Ok((views, has_more))
}

fn count(column: &'static str, value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| WebhookError::Corrupt { column, value: value.to_string() })
}

fn error_class(stored: Option<String>) -> Result<Option<ErrorClass>> {
    stored
        .map(|text| ErrorClass::parse(&text).ok_or(WebhookError::Corrupt { column: "webhook_attempts.error", value: text }))
        .transpose()
}

fn attempt_view(row: &AttemptRecord) -> Result<AttemptView> {
    let corrupt = |column, value: String| WebhookError::Corrupt { column, value };
    Ok(AttemptView {
        attempt: count("attempt", row.attempt)?,
        attempted_at: row.attempted_at,
        status_code: row
            .status_code
            .map(|s| u16::try_from(s).map_err(|_| corrupt("status_code", s.to_string())))
            .transpose()?,
        error: error_class(row.error.clone())?,
        duration_ms: u64::try_from(row.duration_ms).map_err(|_| corrupt("duration_ms", row.duration_ms.to_string()))?,
        outcome: row.outcome.clone(),
    })
}

/// Queues the event again for each of the merchant's endpoints that takes its type, due `now`
/// (behind whatever the endpoint already has pending). An endpoint that still has this event
/// pending gets no second copy. Returns the new deliveries.
pub async fn replay(pool: &PgPool, merchant_id: &str, event_id: &str, now: DateTime<Utc>) -> Result<Vec<DeliveryView>> {
    let (outbox_id, event_type, object_id) = outbox_row(pool, merchant_id, event_id).await?;
    let mut tx = pool.begin().await?;
    let endpoints: Vec<String> = sqlx::query_scalar(
        "SELECT e.id FROM webhook_endpoints e \
         WHERE e.merchant_id = $1 AND e.deleted_at IS NULL AND (e.events IS NULL OR $2 = ANY (e.events)) \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                           WHERE d.endpoint_id = e.id AND d.outbox_id = $3 AND d.status = 'pending') \
         ORDER BY e.created_at, e.id \
         FOR UPDATE OF e",
    )
    .bind(merchant_id)
    .bind(&event_type)
    .bind(outbox_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut views = Vec::with_capacity(endpoints.len());
    for endpoint_id in endpoints {
        let delivery_id = new_id("whd");
        sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, outbox_id, object_id, replay, status, \
                                             next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, true, 'pending', $5, $5)",
        )
        .bind(&delivery_id)
        .bind(&endpoint_id)
        .bind(outbox_id)
        .bind(&object_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        views.push(DeliveryView {
            id: delivery_id,
            object: "webhook_delivery",
            event_id: event_id.to_owned(),
            endpoint_id,
            status: "pending".to_owned(),
            replay: true,
            attempt_count: 0,
            next_attempt_at: Some(now),
            created_at: now,
            completed_at: None,
            attempts: Vec::new(),
        });
    }
    tx.commit().await?;
    tracing::info!(target: "webhook", event = %event_id, merchant = %merchant_id, deliveries = views.len(), "event replayed");
    Ok(views)
}
