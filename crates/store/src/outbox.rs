//! The outbox writer: every event a merchant is told of is written here, in the transaction that
//! makes the change it announces.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::ids::new_id;

/// The envelope every event is delivered in.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEvent<T: Serialize> {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub data: T,
}

/// An event to write: what it is about, for whom, and what it carries.
#[derive(Debug, Clone)]
pub struct NewEvent<'a, T: Serialize> {
    pub merchant_id: &'a str,
    pub event_type: &'a str,
    pub object_id: &'a str,
    pub data: T,
}

/// Writes one event on `conn`, which must be the transaction that makes the change.
pub async fn emit<T: Serialize>(
    conn: &mut PgConnection,
    merchant_id: &str,
    event_type: &str,
    object_id: &str,
    data: T,
    now: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let mut ids = emit_many(conn, &[NewEvent { merchant_id, event_type, object_id, data }], now).await?;
    ids.pop().ok_or(sqlx::Error::RowNotFound)
}

/// Writes one event of each of `event_types` about the same object and data on `conn` (a payment
/// first seen confirmed is detected and confirmed at once); in order.
pub async fn emit_all<T: Serialize>(
    conn: &mut PgConnection,
    merchant_id: &str,
    event_types: &[&str],
    object_id: &str,
    data: T,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    let events: Vec<NewEvent<'_, &T>> =
        event_types.iter().map(|event_type| NewEvent { merchant_id, event_type, object_id, data: &data }).collect();
    emit_many(conn, &events, now).await
}

/// Writes `events` on `conn` in one statement, in order (the outbox's sequence follows it), and
/// returns their ids: a step that changes many invoices announces them all in one round trip.
pub async fn emit_many<T: Serialize>(conn: &mut PgConnection, events: &[NewEvent<'_, T>], now: DateTime<Utc>) -> Result<Vec<String>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for new in events {
        let event = OutboxEvent { id: new_id("evt"), event_type: new.event_type.to_owned(), created_at: now, data: &new.data };
        payloads.push(serde_json::to_value(&event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
        ids.push(event.id);
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, merchant_id, event_type, object_id, payload, created_at) \
         SELECT e.id, e.merchant_id, e.event_type, e.object_id, e.payload, $6 \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) WITH ORDINALITY \
              AS e(id, merchant_id, event_type, object_id, payload, n) ORDER BY e.n",
    )
    .bind(&ids)
    .bind(events.iter().map(|e| e.merchant_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.object_id).collect::<Vec<_>>())
    .bind(&payloads)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(ids)
}
