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

/// Writes one event on `conn`, which must be the transaction that makes the change.
pub async fn emit<T: Serialize>(
    conn: &mut PgConnection,
    merchant_id: &str,
    event_type: &str,
    object_id: &str,
    data: T,
    now: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let event = OutboxEvent { id: new_id("evt"), event_type: event_type.to_owned(), created_at: now, data };
    let payload = serde_json::to_value(&event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO outbox (event_id, merchant_id, event_type, object_id, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&event.id)
    .bind(merchant_id)
    .bind(event_type)
    .bind(object_id)
    .bind(payload)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(event.id)
}

/// Writes one event of each of `event_types` about the same object and data on `conn`, in one
/// statement (a payment first seen confirmed is detected and confirmed at once); in order.
pub async fn emit_all<T: Serialize>(
    conn: &mut PgConnection,
    merchant_id: &str,
    event_types: &[&str],
    object_id: &str,
    data: T,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut ids = Vec::with_capacity(event_types.len());
    let mut payloads = Vec::with_capacity(event_types.len());
    for event_type in event_types {
        let event = OutboxEvent { id: new_id("evt"), event_type: (*event_type).to_owned(), created_at: now, data: &data };
        payloads.push(serde_json::to_value(&event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
        ids.push(event.id);
    }
    if ids.is_empty() {
        return Ok(ids);
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, merchant_id, event_type, object_id, payload, created_at) \
         SELECT e.id, $2, e.event_type, $4, e.payload, $6 \
         FROM unnest($1::text[], $3::text[], $5::jsonb[]) WITH ORDINALITY AS e(id, event_type, payload, n) ORDER BY e.n",
    )
    .bind(&ids)
    .bind(merchant_id)
    .bind(event_types)
    .bind(object_id)
    .bind(&payloads)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(ids)
}
