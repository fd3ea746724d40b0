//! Webhook endpoints: where a merchant wants its events sent, which types, and the secret they are
//! signed with. Every query filters by the merchant: another merchant's endpoint is not found.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::ids::new_id;

use super::error::{Result, WebhookError};
use super::secret::EndpointSecret;

/// Longest endpoint URL accepted.
pub const URL_LEN_MAX: usize = 2048;
/// Most endpoints a merchant may have at once (deleted ones do not count).
pub const ENDPOINTS_PER_MERCHANT_MAX: usize = 16;
/// Most event types one endpoint may name.
pub const EVENT_TYPES_PER_ENDPOINT_MAX: usize = 32;
/// What `events` says for "every type, including types added later".
pub const ALL_EVENTS: &str = "*";

/// The event types payrail emits today. An endpoint may subscribe to any of them, or to all (`*`).
pub const EVENT_TYPES: &[&str] = &[
    "invoice.created",
    "invoice.open",
    "invoice.processing",
    "invoice.paid",
    "invoice.overpaid",
    "invoice.expired",
    "invoice.refunded",
    "invoice.partially_refunded",
    "invoice.disputed",
    "invoice.dispute_won",
    "invoice.void",
    "invoice.payment_late",
    "invoice.payment_reversed",
    "payment.orphaned",
    "payout.created",
    "payout.sent",
    "payout.confirmed",
    "payout.failed",
];

/// An endpoint as the API shows it. The secret is not part of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// `we_…`
    pub id: String,
    #[schema(value_type = String, example = "webhook_endpoint")]
    pub object: &'static str,
    pub url: String,
    /// The subscribed event types, or `["*"]` for all.
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A just-created endpoint and its secret, which is never readable again through the API.
#[derive(Debug, Clone)]
pub struct CreatedEndpoint {
    pub endpoint: EndpointView,
    pub secret: EndpointSecret,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WebhookError {
    WebhookError::Invalid { field, reason: reason.into() }
}

/// Checks and normalizes an endpoint URL: `https`, or `http` to a loopback host when
/// `allow_loopback` (the dev stack and tests); a host name or a public IP address; no credentials in
/// the URL; at most [`URL_LEN_MAX`] bytes. A literal private, link-local or unspecified address is
/// refused, and loopback unless allowed, so an endpoint cannot point the dispatcher at the
/// operator's own host or internal network.
pub fn validate_url(raw: &str, allow_loopback: bool) -> Result<Url> {
    if raw.is_empty() || raw.len() > URL_LEN_MAX {
        return Err(invalid("url", format!("must be 1..={URL_LEN_MAX} bytes")));
    }
    let url = Url::parse(raw).map_err(|e| invalid("url", format!("not a valid URL: {e}")))?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| invalid("url", "must name a host"))?;
    // An IPv6 literal comes bracketed; IPv4 literals are already in dotted form after parsing.
    let loopback = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => check_ip(ip, allow_loopback)?,
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if loopback && !allow_loopback {
        return Err(invalid("url", format!("{host} is this daemon's own host")));
    }
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(invalid("url", "must use https (http only to a loopback host)")),
        other => return Err(invalid("url", format!("scheme {other:?} is not supported: use https"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("url", "must not carry credentials"));
    }
    if url.as_str().len() > URL_LEN_MAX {
        return Err(invalid("url", format!("must be 1..={URL_LEN_MAX} bytes")));
    }
    Ok(url)
}

/// Whether `ip` is loopback; an error for addresses an endpoint may not use (loopback too, unless
/// `allow_loopback`).
pub(crate) fn check_ip(ip: IpAddr, allow_loopback: bool) -> Result<bool> {
    let refused = match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return check_ip(IpAddr::V4(v4), allow_loopback),
            None => is_internal_v6(v6),
        },
    };
    if refused || (ip.is_loopback() && !allow_loopback) {
        return Err(invalid("url", format!("address {ip} is not reachable from the internet")));
    }
    Ok(ip.is_loopback())
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 100.64.0.0/10, shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        || a == 0
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// Checks the requested event types: `None` or `["*"]` for all, else known types, deduplicated.
/// Returns `None` for all.
pub fn validate_events(events: Option<&[String]>) -> Result<Option<Vec<String>>> {
    let Some(events) = events else { return Ok(None) };
    if events.is_empty() {
        return Err(invalid("events", "name at least one event type, or leave it out for all"));
    }
    if events.len() > EVENT_TYPES_PER_ENDPOINT_MAX {
        return Err(invalid("events", format!("at most {EVENT_TYPES_PER_ENDPOINT_MAX} event types")));
    }
    if events.iter().any(|e| e == ALL_EVENTS) {
        return if events.len() == 1 { Ok(None) } else { Err(invalid("events", "\"*\" stands alone")) };
    }
    let mut chosen: Vec<String> = Vec::with_capacity(events.len());
    for event in events {
        if !EVENT_TYPES.contains(&event.as_str()) {
            let shown: String = event.chars().take(64).collect();
            return Err(invalid("events", format!("unknown event type {shown:?}; known: {}", EVENT_TYPES.join(", "))));
        }
        if !chosen.contains(event) {
            chosen.push(event.clone());
        }
    }
    Ok(Some(chosen))
}

fn view(id: String, url: String, events: Option<Vec<String>>, created_at: DateTime<Utc>) -> EndpointView {
    EndpointView {
        id,
        object: "webhook_endpoint",
        url,
        events: events.unwrap_or_else(|| vec![ALL_EVENTS.to_owned()]),
        created_at,
    }
}

/// Registers an endpoint. It receives the events created from `now` on.
pub async fn create_endpoint(
    pool: &PgPool,
    merchant_id: &str,
    url: &str,
    events: Option<&[String]>,
    now: DateTime<Utc>,
    allow_loopback: bool,
) -> Result<CreatedEndpoint> {
    let url = validate_url(url, allow_loopback)?;
    let events = validate_events(events)?;
    let mut tx = pool.begin().await?;
    // Serializes endpoint creation per merchant, so the limit holds under concurrent requests.
    let locked = sqlx::query("SELECT id FROM merchants WHERE id = $1 FOR UPDATE")
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?;
    if locked.is_none() {
        return Err(WebhookError::Invalid { field: "merchant", reason: "unknown merchant".to_owned() });
    }
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1 AND deleted_at IS NULL")
            .bind(merchant_id)
            .fetch_one(&mut *tx)
            .await?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= ENDPOINTS_PER_MERCHANT_MAX {
        return Err(WebhookError::TooManyEndpoints {
            merchant_id: merchant_id.to_owned(),
            max: ENDPOINTS_PER_MERCHANT_MAX,
        });
    }
    let id = new_id("we");
    let secret = EndpointSecret::generate();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, events, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(merchant_id)
    .bind(url.as_str())
    .bind(&events)
    .bind(secret.expose())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(target: "webhook", endpoint = %id, merchant = %merchant_id, "webhook endpoint created");
    Ok(CreatedEndpoint { endpoint: view(id, url.to_string(), events, now), secret })
}

/// The merchant's endpoints that are not deleted, newest first (at most
/// [`ENDPOINTS_PER_MERCHANT_MAX`]).
pub async fn list_endpoints(pool: &PgPool, merchant_id: &str) -> Result<Vec<EndpointView>> {
    let rows = sqlx::query(
        "SELECT id, url, events, created_at FROM webhook_endpoints \
         WHERE merchant_id = $1 AND deleted_at IS NULL ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(merchant_id)
    .bind(i64::try_from(ENDPOINTS_PER_MERCHANT_MAX).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok(view(row.try_get("id")?, row.try_get("url")?, row.try_get("events")?, row.try_get("created_at")?)))
        .collect()
}

/// Soft-deletes an endpoint: it stays in the delivery log, its pending deliveries are canceled and
/// nothing more is sent to it.
pub async fn delete_endpoint(pool: &PgPool, merchant_id: &str, id: &str, now: DateTime<Utc>) -> Result<()> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query(
        "UPDATE webhook_endpoints SET deleted_at = $3 WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(merchant_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(WebhookError::EndpointNotFound { id: id.to_owned() });
    }
    let canceled = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'canceled', next_attempt_at = NULL, completed_at = $2 \
         WHERE endpoint_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(target: "webhook", endpoint = %id, merchant = %merchant_id, canceled = canceled.rows_affected(), "webhook endpoint deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_or_loopback_http() {
        for ok in [
            "https://hooks.example.com/payrail",
            "https://hooks.example.com:8443/a?b=c",
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://[::1]:8080/",
            "https://8.8.8.8/hook",
        ] {
            assert!(validate_url(ok, true).is_ok(), "{ok}");
        }
        // In production loopback is this daemon's own host: refused.
        for own in ["http://127.0.0.1:9000/hook", "http://localhost/hook", "https://[::1]:8080/", "https://127.0.0.2/"] {
            assert!(matches!(validate_url(own, false), Err(WebhookError::Invalid { field: "url", .. })), "{own}");
        }
        assert!(validate_url("https://hooks.example.com/payrail", false).is_ok());
        let too_long = format!("https://example.com/{}", "a".repeat(URL_LEN_MAX));
        for bad in [
            "",
            "not a url",
            "http://hooks.example.com/payrail",
            "ftp://hooks.example.com/",
            "file:///etc/passwd",
            "https://user:pass@hooks.example.com/",
            "https://token@hooks.example.com/",
            "https://10.0.0.5/hook",
            "https://192.168.1.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://0.0.0.0/",
            "https://[fd00::1]/",
            "https://[::ffff:10.0.0.1]/",
            "http://8.8.8.8/hook",
            too_long.as_str(),
        ] {
            assert!(matches!(validate_url(bad, true), Err(WebhookError::Invalid { field: "url", .. })), "{bad}");
        }
    }

    #[test]
    fn events_default_to_all_and_must_be_known() {
        let s = |v: &[&str]| v.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>();
        assert_eq!(validate_events(None).ok(), Some(None));
        assert_eq!(validate_events(Some(&s(&["*"]))).ok(), Some(None));
        assert_eq!(
            validate_events(Some(&s(&["invoice.paid", "invoice.expired", "invoice.paid"]))).ok(),
            Some(Some(s(&["invoice.paid", "invoice.expired"])))
        );
        for bad in [&[][..], &["invoice.nope"][..], &["*", "invoice.paid"][..]] {
            assert!(validate_events(Some(&s(bad))).is_err(), "{bad:?}");
        }
        let many = vec!["invoice.paid".to_owned(); EVENT_TYPES_PER_ENDPOINT_MAX + 1];
        assert!(validate_events(Some(&many)).is_err());
    }
}
