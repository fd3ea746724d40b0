//! Customers: a merchant's end users, by the merchant's own `external_id` (unique per merchant).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Order, Page};
use sqlx::PgPool;

use crate::error::{invalid, CreditsError, Result};
use crate::ids::new_id;

/// Most metadata keys, and the longest key and value.
pub const METADATA_KEYS_MAX: usize = 50;
pub const METADATA_KEY_LEN_MAX: usize = 40;
pub const METADATA_VALUE_LEN_MAX: usize = 500;

/// Body of `POST /v1/customers`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    /// The merchant's own id of the user, unique per merchant (1 to 200 characters).
    pub external_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// String values by key.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Body of `PATCH /v1/customers/{id}`: what is given replaces what was; `null` clears email or name.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomer {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// Replaces the whole metadata.
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// A field given, with `null` kept apart from absent.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    /// `cus_…`
    pub id: String,
    #[schema(value_type = String, example = "customer")]
    pub object: &'static str,
    pub external_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

type Row = (String, String, Option<String>, Option<String>, serde_json::Value, DateTime<Utc>, DateTime<Utc>);
const COLUMNS: &str = "id, external_id, email, name, metadata, created_at, updated_at";

fn view((id, external_id, email, name, metadata, created_at, updated_at): Row) -> CustomerView {
    CustomerView { id, object: "customer", external_id, email, name, metadata, created_at, updated_at }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(invalid(field, format!("must be 1 to {max} characters, no control characters")));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<()> {
    check_text("email", email, 320)?;
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !email.contains(char::is_whitespace) => Ok(()),
        _ => Err(invalid("email", format!("{email:?} is not an email address"))),
    }
}

fn check_metadata(metadata: &std::collections::BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > METADATA_KEYS_MAX {
        return Err(invalid("metadata", format!("at most {METADATA_KEYS_MAX} keys")));
    }
    for (key, value) in metadata {
        check_text("metadata", key, METADATA_KEY_LEN_MAX)?;
        if value.chars().count() > METADATA_VALUE_LEN_MAX {
            return Err(invalid("metadata", format!("the value of {key:?} is longer than {METADATA_VALUE_LEN_MAX} characters")));
        }
    }
    Ok(())
}

fn json_of(metadata: &std::collections::BTreeMap<String, String>) -> serde_json::Value {
    serde_json::Value::Object(metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect())
}

pub async fn create(pool: &PgPool, merchant_id: &str, request: &CreateCustomer, now: DateTime<Utc>) -> Result<CustomerView> {
    check_text("external_id", &request.external_id, 200)?;
    if let Some(email) = &request.email {
        check_email(email)?;
    }
    if let Some(name) = &request.name {
        check_text("name", name, 200)?;
    }
    check_metadata(&request.metadata)?;
    let row: Option<Row> = sqlx::query_as(&format!(
        "INSERT INTO customers (id, merchant_id, external_id, email, name, metadata, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (merchant_id, external_id) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(new_id("cus"))
    .bind(merchant_id)
    .bind(&request.external_id)
    .bind(&request.email)
    .bind(&request.name)
    .bind(json_of(&request.metadata))
    .bind(now)
    .fetch_optional(pool)
    .await?;
    row.map(view).ok_or_else(|| CreditsError::Exists { what: "customer with external_id", id: request.external_id.clone() })
}

pub async fn get(pool: &PgPool, merchant_id: &str, id: &str) -> Result<CustomerView> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM customers WHERE id = $1 AND merchant_id = $2"))
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(pool)
        .await?;
    row.map(view).ok_or_else(|| CreditsError::NotFound { what: "customer", id: id.to_owned() })
}

pub async fn update(pool: &PgPool, merchant_id: &str, id: &str, request: &UpdateCustomer, now: DateTime<Utc>) -> Result<CustomerView> {
    if let Some(Some(email)) = &request.email {
        check_email(email)?;
    }
    if let Some(Some(name)) = &request.name {
        check_text("name", name, 200)?;
    }
    if let Some(metadata) = &request.metadata {
        check_metadata(metadata)?;
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "UPDATE customers SET email = CASE WHEN $3 THEN $4 ELSE email END, name = CASE WHEN $5 THEN $6 ELSE name END, \
                metadata = coalesce($7, metadata), updated_at = $8 \
         WHERE id = $1 AND merchant_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(merchant_id)
    .bind(request.email.is_some())
    .bind(request.email.clone().flatten())
    .bind(request.name.is_some())
    .bind(request.name.clone().flatten())
    .bind(request.metadata.as_ref().map(json_of))
    .bind(now)
    .fetch_optional(pool)
    .await?;
    row.map(view).ok_or_else(|| CreditsError::NotFound { what: "customer", id: id.to_owned() })
}

/// A page of the merchant's customers, newest first, and whether more follow. `external_id` finds
/// one by the merchant's own id.
pub async fn list(pool: &PgPool, merchant_id: &str, external_id: Option<&str>, page: &Page) -> Result<(Vec<CustomerView>, bool)> {
    const ORDER: Order = Order("seq DESC");
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM customers WHERE merchant_id = $1 AND ($2::text IS NULL OR external_id = $2) \
           AND {} ORDER BY {} LIMIT $3",
        page.condition(ORDER, "SELECT seq FROM customers WHERE id = $4 AND merchant_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(merchant_id)
    .bind(external_id)
    .bind(page.fetch())
    .bind(page.cursor_id())
    .fetch_all(pool)
    .await?;
    let (rows, has_more) = page.finish(rows);
    Ok((rows.into_iter().map(view).collect(), has_more))
}
