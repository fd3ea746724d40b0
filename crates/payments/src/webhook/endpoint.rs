//! Webhook endpoints: where a merchant wants its events sent, which types, and the secret they are
//! signed with. Every query filters by the merchant: another merchant's endpoint is not found.
//!
//! The secret is stored sealed under the secrets key, bound to the endpoint id
//! (`secret_sealed`), or in plaintext (`secret`) only where the configuration allows it; see
//! [`crate::secrets`]. [`seal_plaintext_secrets`] moves plaintext rows to the sealed form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::Serialize;
use payrail_store::page::{Order, Page};
use sqlx::{PgPool, Row};

use crate::ids::new_id;
use crate::secrets::{SecretsAtRest, SecretsKey};

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
    "invoice.invalid",
    "invoice.payment_late",
    "invoice.payment_applied",
    "invoice.payment_reversed",
    "payment.detected",
    "payment.confirmed",
    "payment.orphaned",
    "webhook_endpoint.disabled",
    "payout.created",
    "payout.sent",
    "payout.confirmed",
    "payout.failed",
    "card_settlement.created",
    "card_settlement.paid",
    "card_settlement.failed",
    "credits.granted",
    "credits.spent",
    "credits.transferred",
    "credits.expired",
    "credits.reversed",
    "refund.created",
    "refund.claimed",
    "refund.paid",
    "refund.failed",
    "refund.canceled",
    "refund.expired",
    "subscription.created",
    "subscription.activated",
    "subscription.renewal_due",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.canceled",
    "subscription.expired",
    "subscription.updated",
    "subscription.paused",
    "subscription.resumed",
    "subscription.payment_failed",
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
    /// A note for people, at most 500 characters.
    pub description: Option<String>,
    /// A disabled endpoint gets no new events; its pending deliveries wait until it is enabled.
    pub disabled: bool,
    /// `merchant` (`PATCH`) or `failing` (its deliveries failed for days); null when enabled.
    pub disabled_reason: Option<String>,
    /// Since when its deliveries fail without one succeeding; null when the last one succeeded.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `PATCH /v1/webhook_endpoints/{id}`: what to change; absent fields stay.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointChange {
    pub url: Option<String>,
    /// Event types, or `["*"]` for all.
    pub events: Option<Vec<String>>,
    /// A note for people; `""` clears it.
    pub description: Option<String>,
    pub disabled: Option<bool>,
}

/// Longest overlap of a rotated secret: 7 days.
pub const ROTATION_OVERLAP_S_MAX: u64 = 7 * 86_400;
/// The overlap when none is asked for: 24 hours.
pub const ROTATION_OVERLAP_S_DEFAULT: u64 = 86_400;

/// Gives an endpoint a new secret, returned once. The previous one keeps signing beside it for
/// `overlap_s` seconds (0 ends it at once), so the receiver can switch without refusing a
/// delivery; a secret rotated again before that ends replaces the older one. Stored as secrets
/// are: sealed under the key where there is one.
pub async fn rotate_secret(
    pool: &PgPool,
    merchant_id: &str,
    id: &str,
    overlap_s: u64,
    now: DateTime<Utc>,
    secrets: &SecretsAtRest,
) -> Result<CreatedEndpoint> {
    if overlap_s > ROTATION_OVERLAP_S_MAX {
        return Err(invalid("overlap_s", format!("at most {ROTATION_OVERLAP_S_MAX} (7 days)")));
    }
    let secret = EndpointSecret::generate();
    let (plaintext, sealed) = match secrets.key() {
        Some(key) => (None, Some(seal(key, id, &secret)?)),
        None => (Some(secret.expose()), None),
    };
    let overlap = chrono::Duration::seconds(i64::try_from(overlap_s).unwrap_or(0));
    let rotated = sqlx::query(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_sealed = secret_sealed, \
                previous_secret_expires_at = $5, secret = $3, secret_sealed = $4 \
         WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(merchant_id)
    .bind(plaintext)
    .bind(sealed)
    .bind(now + overlap)
    .execute(pool)
    .await?;
    if rotated.rows_affected() == 0 {
        return Err(WebhookError::EndpointNotFound { id: id.to_owned() });
    }
    tracing::info!(target: "webhook", endpoint = %id, merchant = %merchant_id, overlap_s, "webhook endpoint secret rotated");
    Ok(CreatedEndpoint { endpoint: get_endpoint(pool, merchant_id, id).await?, secret })
}

/// Longest endpoint description.
pub const DESCRIPTION_LEN_MAX: usize = 500;

const ENDPOINT_COLUMNS: &str =
    "id, url, events, description, disabled_at IS NOT NULL AS disabled, disabled_reason, failing_since, created_at";

fn endpoint_view(row: &sqlx::postgres::PgRow) -> Result<EndpointView> {
    let mut shown = view(row.try_get("id")?, row.try_get("url")?, row.try_get("events")?, row.try_get("created_at")?);
    shown.description = row.try_get("description")?;
    shown.disabled = row.try_get("disabled")?;
    shown.disabled_reason = row.try_get("disabled_reason")?;
    shown.failing_since = row.try_get("failing_since")?;
    Ok(shown)
}

/// One of the merchant's endpoints (not deleted).
pub async fn get_endpoint(pool: &PgPool, merchant_id: &str, id: &str) -> Result<EndpointView> {
    let mut conn = pool.acquire().await?;
    get_endpoint_on(&mut conn, merchant_id, id).await
}

/// [`get_endpoint`] on the caller's connection.
pub(crate) async fn get_endpoint_on(conn: &mut sqlx::PgConnection, merchant_id: &str, id: &str) -> Result<EndpointView> {
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| WebhookError::EndpointNotFound { id: id.to_owned() })?;
    endpoint_view(&row)
}

/// Changes an endpoint's URL, event types, description or switch, checked as at creation. A URL
/// or event types changed apply to events created from then on; enabling an endpoint lets its
/// pending deliveries go, while events created while it was disabled are not sent to it.
pub async fn update_endpoint(
    pool: &PgPool,
    merchant_id: &str,
    id: &str,
    change: &EndpointChange,
    now: DateTime<Utc>,
    allow_loopback: bool,
) -> Result<EndpointView> {
    let url = change.url.as_deref().map(|u| validate_url(u, allow_loopback)).transpose()?;
    let events = change.events.as_deref().map(|e| validate_events(Some(e))).transpose()?;
    if change.description.as_ref().is_some_and(|d| d.chars().count() > DESCRIPTION_LEN_MAX) {
        return Err(invalid("description", format!("at most {DESCRIPTION_LEN_MAX} characters")));
    }
    if change.description.as_ref().is_some_and(|d| d.chars().any(|c| c.is_control() && c != '\n' && c != '\t')) {
        return Err(invalid("description", "no control characters but newlines and tabs"));
    }
    let description = change.description.as_deref().map(|d| if d.is_empty() { None } else { Some(d) });
    let updated = sqlx::query(
        "UPDATE webhook_endpoints SET \
             url = coalesce($3, url), \
             events = CASE WHEN $4 THEN $5 ELSE events END, \
             description = CASE WHEN $6 THEN $7 ELSE description END, \
             disabled_at = CASE WHEN $8::bool IS NULL THEN disabled_at \
                                WHEN $8 THEN coalesce(disabled_at, $9) ELSE NULL END, \
             disabled_reason = CASE WHEN $8::bool IS NULL THEN disabled_reason \
                                    WHEN $8 THEN coalesce(disabled_reason, 'merchant') ELSE NULL END, \
             failing_since = CASE WHEN $8 = false THEN NULL ELSE failing_since END \
         WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(merchant_id)
    .bind(url.as_ref().map(|u| u.to_string()))
    .bind(events.is_some())
    .bind(events.flatten())
    .bind(description.is_some())
    .bind(description.flatten())
    .bind(change.disabled)
    .bind(now)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(WebhookError::EndpointNotFound { id: id.to_owned() });
    }
    tracing::info!(target: "webhook", endpoint = %id, merchant = %merchant_id, "webhook endpoint changed");
    get_endpoint(pool, merchant_id, id).await
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
/// `allow_loopback`). See [`reach`].
pub(crate) fn check_ip(ip: IpAddr, allow_loopback: bool) -> Result<bool> {
    match reach(ip) {
        Reach::Public => Ok(false),
        Reach::Loopback if allow_loopback => Ok(true),
        Reach::Loopback | Reach::Internal => {
            Err(invalid("url", format!("address {ip} is not reachable from the internet")))
        }
    }
}

/// Where an address leads, for the address filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// A globally routed unicast address.
    Public,
    /// This host (`127.0.0.0/8`, `::1`, and `::ffff:127.0.0.0/104`, which the socket layer sends to
    /// IPv4 loopback).
    Loopback,
    /// Anything else: private, shared, link-local, reserved, documentation, benchmarking,
    /// multicast, or an address embedding such an IPv4 address.
    Internal,
}

/// IPv4 ranges an endpoint may not use: every entry of the IANA IPv4 Special-Purpose Address
/// Registry (even those marked globally reachable: anycast service addresses are never a
/// merchant's endpoint), plus multicast. Loopback (`127.0.0.0/8`) is handled apart.
const SPECIAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),        // "this network" (RFC 791)
    (Ipv4Addr::new(10, 0, 0, 0), 8),       // private use (RFC 1918)
    (Ipv4Addr::new(100, 64, 0, 0), 10),    // shared address space, carrier-grade NAT (RFC 6598)
    (Ipv4Addr::new(169, 254, 0, 0), 16),   // link local, cloud metadata services (RFC 3927)
    (Ipv4Addr::new(172, 16, 0, 0), 12),    // private use (RFC 1918)
    (Ipv4Addr::new(192, 0, 0, 0), 24),     // IETF protocol assignments: DS-Lite, PCP, TURN, NAT64 discovery (RFC 6890)
    (Ipv4Addr::new(192, 0, 2, 0), 24),     // documentation TEST-NET-1 (RFC 5737)
    (Ipv4Addr::new(192, 31, 196, 0), 24),  // AS112-v4 (RFC 7535)
    (Ipv4Addr::new(192, 52, 193, 0), 24),  // AMT (RFC 7450)
    (Ipv4Addr::new(192, 88, 99, 0), 24),   // 6to4 relay anycast, deprecated (RFC 7526)
    (Ipv4Addr::new(192, 168, 0, 0), 16),   // private use (RFC 1918)
    (Ipv4Addr::new(192, 175, 48, 0), 24),  // AS112 direct delegation (RFC 7534)
    (Ipv4Addr::new(198, 18, 0, 0), 15),    // benchmarking (RFC 2544)
    (Ipv4Addr::new(198, 51, 100, 0), 24),  // documentation TEST-NET-2 (RFC 5737)
    (Ipv4Addr::new(203, 0, 113, 0), 24),   // documentation TEST-NET-3 (RFC 5737)
    (Ipv4Addr::new(224, 0, 0, 0), 4),      // multicast (RFC 5771)
    (Ipv4Addr::new(240, 0, 0, 0), 4),      // reserved, and 255.255.255.255 limited broadcast (RFC 1112, RFC 919)
];

/// IPv6 ranges inside global unicast (`2000::/3`) that an endpoint may not use: the entries of the
/// IANA IPv6 Special-Purpose Address Registry that lie there. Everything outside `2000::/3` is
/// refused anyway (unique local `fc00::/7`, link local `fe80::/10`, site local `fec0::/10`,
/// multicast, discard-only `100::/64`, SRv6 SIDs `5f00::/16`, the unassigned rest), except the
/// forms that embed an IPv4 address, which are judged by it ([`embedded_v4`]).
const SPECIAL_V6: &[(Ipv6Addr, u8)] = &[
    // IETF protocol assignments (RFC 2928): anycast services, benchmarking 2001:2::/48, AMT, AS112,
    // ORCHID, DRIP. Teredo (2001::/32) is judged by its embedded addresses before this table.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),   // documentation (RFC 3849)
    (Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0), 48), // AS112 direct delegation (RFC 7534)
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),       // documentation (RFC 9637)
];

fn in_v4(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    /// `::ffff:a.b.c.d`: the socket layer sends it over IPv4 to that address, loopback included.
    Mapped(Ipv4Addr),
    /// Translated or tunnelled to that IPv4 address somewhere on the path: `::a.b.c.d`
    /// (IPv4-compatible), `::ffff:0:a.b.c.d` (SIIT), `64:ff9b::/96` (NAT64), `2002::/16` (6to4).
    Via(Ipv4Addr),
    /// Teredo `2001::/32`: its server's IPv4 address, and its client's (stored inverted).
    Teredo { server: Ipv4Addr, client: Ipv4Addr },
    /// `64:ff9b:1::/48`, local-use NAT64 (RFC 8215): the IPv4 address sits where the operator's
    /// prefix length puts it, so it cannot be decoded; the prefix is not globally reachable anyway.
    LocalTranslation,
}

fn v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// The IPv4 address an IPv6 address stands for, if it is one of the forms that embed one. A NAT64
/// gateway, a 6to4 relay or a Teredo relay forwards to that IPv4 address, so it is that address the
/// filter must judge: `64:ff9b::a9fe:a9fe` is the metadata service.
fn embedded_v4(ip: Ipv6Addr) -> Option<Embedded> {
    let s = ip.segments();
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(Embedded::Mapped(v4(hi, lo))),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(Embedded::Via(v4(hi, lo))),
        // `::` and `::1` are judged as themselves.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(Embedded::Via(v4(hi, lo))),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(Embedded::Via(v4(hi, lo))),
        [0x64, 0xff9b, 1, ..] => Some(Embedded::LocalTranslation),
        [0x2002, hi, lo, ..] => Some(Embedded::Via(v4(hi, lo))),
        [0x2001, 0, server_hi, server_lo, _, _, client_hi, client_lo] => {
            Some(Embedded::Teredo { server: v4(server_hi, server_lo), client: v4(!client_hi, !client_lo) })
        }
        _ => None,
    }
}

fn reach_v4(ip: Ipv4Addr) -> Reach {
    if ip.is_loopback() {
        Reach::Loopback
    } else if SPECIAL_V4.iter().any(|range| in_v4(ip, *range)) {
        Reach::Internal
    } else {
        Reach::Public
    }
}

/// Judges an address, decoding the IPv4 address inside IPv6 forms that embed one. Only a mapped
/// loopback address is loopback: the other forms reach IPv4 through a translator or relay, whose
/// loopback is not this host, so they are never allowed.
fn reach(ip: IpAddr) -> Reach {
    let ip = match ip {
        IpAddr::V4(ip) => return reach_v4(ip),
        IpAddr::V6(ip) => ip,
    };
    if ip.is_loopback() {
        return Reach::Loopback;
    }
    let not_loopback = |reach: Reach| if reach == Reach::Loopback { Reach::Internal } else { reach };
    match embedded_v4(ip) {
        Some(Embedded::Mapped(inner)) => return reach_v4(inner),
        Some(Embedded::Via(inner)) => return not_loopback(reach_v4(inner)),
        Some(Embedded::Teredo { server, client }) => {
            let both = [reach_v4(server), reach_v4(client)];
            return if both == [Reach::Public, Reach::Public] { Reach::Public } else { Reach::Internal };
        }
        Some(Embedded::LocalTranslation) => return Reach::Internal,
        None => {}
    }
    let global_unicast = in_v6(ip, (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3));
    if !global_unicast || SPECIAL_V6.iter().any(|range| in_v6(ip, *range)) {
        Reach::Internal
    } else {
        Reach::Public
    }
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
        description: None,
        disabled: false,
        disabled_reason: None,
        failing_since: None,
        created_at,
    }
}

/// Registers an endpoint. It receives the events created from `now` on. Its secret is stored as
/// `secrets` says: sealed under the key, or in plaintext where allowed.
pub async fn create_endpoint(
    pool: &PgPool,
    merchant_id: &str,
    url: &str,
    events: Option<&[String]>,
    now: DateTime<Utc>,
    allow_loopback: bool,
    secrets: &SecretsAtRest,
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
    let (plaintext, sealed) = match secrets.key() {
        Some(key) => (None, Some(seal(key, &id, &secret)?)),
        None => (Some(secret.expose()), None),
    };
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, events, secret, secret_sealed, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(merchant_id)
    .bind(url.as_str())
    .bind(&events)
    .bind(plaintext)
    .bind(sealed)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(target: "webhook", endpoint = %id, merchant = %merchant_id, "webhook endpoint created");
    Ok(CreatedEndpoint { endpoint: view(id, url.to_string(), events, now), secret })
}

fn seal(key: &SecretsKey, endpoint_id: &str, secret: &EndpointSecret) -> Result<Vec<u8>> {
    key.seal_str(secret.expose(), endpoint_id.as_bytes())
        .map_err(|source| WebhookError::Secret { endpoint_id: endpoint_id.to_owned(), source })
}

/// An endpoint's secret from its stored columns: opened with the key when sealed (the endpoint id
/// is the context, so a sealed secret copied to another row does not open), as is when plaintext.
pub(crate) fn stored_secret(
    secrets: &SecretsAtRest,
    endpoint_id: &str,
    plaintext: Option<String>,
    sealed: Option<Vec<u8>>,
) -> Result<EndpointSecret> {
    match (sealed, plaintext) {
        (Some(sealed), _) => {
            let key = secrets.key().ok_or_else(|| WebhookError::SecretsKeyMissing { endpoint_id: endpoint_id.to_owned() })?;
            let opened = key
                .open_str(&sealed, endpoint_id.as_bytes())
                .map_err(|source| WebhookError::Secret { endpoint_id: endpoint_id.to_owned(), source })?;
            Ok(EndpointSecret::from_stored(opened))
        }
        (None, Some(plaintext)) => Ok(EndpointSecret::from_stored(plaintext)),
        (None, None) => Err(WebhookError::Corrupt { column: "webhook_endpoints.secret", value: endpoint_id.to_owned() }),
    }
}

/// Rows sealed per transaction by [`seal_plaintext_secrets`].
pub const SEAL_BATCH: i64 = 500;

/// Seals every endpoint secret still stored in plaintext (deleted endpoints too), in batches, each
/// row in place: the plaintext column is cleared in the same update. Returns how many were sealed.
/// Run at start-up whenever a key is configured; with nothing left in plaintext it is one query.
pub async fn seal_plaintext_secrets(pool: &PgPool, key: &SecretsKey) -> Result<u64> {
    let mut sealed_total = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, secret FROM webhook_endpoints WHERE secret IS NOT NULL ORDER BY id LIMIT $1 FOR UPDATE",
        )
        .bind(SEAL_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(sealed_total);
        }
        for row in &rows {
            let id: String = row.try_get("id")?;
            let secret = EndpointSecret::from_stored(row.try_get("secret")?);
            let sealed = seal(key, &id, &secret)?;
            sqlx::query("UPDATE webhook_endpoints SET secret = NULL, secret_sealed = $2 WHERE id = $1")
                .bind(&id)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        sealed_total += u64::try_from(rows.len()).unwrap_or(u64::MAX);
    }
}

/// How many endpoint secrets are stored sealed (they cannot be used without the key).
pub async fn count_sealed_secrets(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE secret_sealed IS NOT NULL").fetch_one(pool).await?)
}

/// A page of the merchant's endpoints that are not deleted, newest first, and whether more follow.
pub async fn list_endpoints(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<EndpointView>, bool)> {
    const ORDER: Order = Order("created_at DESC, id DESC");
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE merchant_id = $1 AND deleted_at IS NULL \
           AND {} ORDER BY {} LIMIT $3",
        page.condition(ORDER, "SELECT created_at, id FROM webhook_endpoints WHERE id = $2 AND merchant_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(merchant_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let (rows, has_more) = page.finish(rows);
    Ok((rows.iter().map(endpoint_view).collect::<Result<Vec<_>>>()?, has_more))
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
            "https://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "https://[2002:a9fe:a9fe::1]/",
            "https://198.18.0.1/",
            "http://8.8.8.8/hook",
            too_long.as_str(),
        ] {
            assert!(matches!(validate_url(bad, true), Err(WebhookError::Invalid { field: "url", .. })), "{bad}");
        }
    }

    /// Every entry of the IANA IPv4 and IPv6 Special-Purpose Address Registries (as of 2025), with
    /// an address inside it, and the IPv6 forms that embed an IPv4 address: all refused. Written out
    /// by hand rather than taken from the filter's tables, so that a range missing there fails here.
    #[test]
    fn every_special_purpose_address_is_refused_and_public_ones_are_allowed() {
        let refused: &[(&str, &str)] = &[
            // IPv4 Special-Purpose Address Registry.
            ("0.0.0.0/8 this network", "0.1.2.3"),
            ("0.0.0.0/32 this host on this network", "0.0.0.0"),
            ("10.0.0.0/8 private use", "10.200.3.4"),
            ("100.64.0.0/10 shared address space", "100.127.255.254"),
            ("127.0.0.0/8 loopback", "127.0.0.1"),
            ("127.0.0.0/8 loopback", "127.255.0.9"),
            ("169.254.0.0/16 link local", "169.254.169.254"),
            ("172.16.0.0/12 private use", "172.31.255.1"),
            ("192.0.0.0/24 IETF protocol assignments", "192.0.0.200"),
            ("192.0.0.0/29 IPv4 service continuity prefix", "192.0.0.5"),
            ("192.0.0.8/32 IPv4 dummy address", "192.0.0.8"),
            ("192.0.0.9/32 PCP anycast", "192.0.0.9"),
            ("192.0.0.10/32 TURN anycast", "192.0.0.10"),
            ("192.0.0.170/32 NAT64/DNS64 discovery", "192.0.0.170"),
            ("192.0.0.171/32 NAT64/DNS64 discovery", "192.0.0.171"),
            ("192.0.2.0/24 documentation", "192.0.2.33"),
            ("192.31.196.0/24 AS112-v4", "192.31.196.1"),
            ("192.52.193.0/24 AMT", "192.52.193.1"),
            ("192.88.99.0/24 deprecated 6to4 relay anycast", "192.88.99.1"),
            ("192.168.0.0/16 private use", "192.168.1.1"),
            ("192.175.48.0/24 AS112 direct delegation", "192.175.48.6"),
            ("198.18.0.0/15 benchmarking", "198.18.0.1"),
            ("198.18.0.0/15 benchmarking", "198.19.255.255"),
            ("198.51.100.0/24 documentation", "198.51.100.7"),
            ("203.0.113.0/24 documentation", "203.0.113.9"),
            ("240.0.0.0/4 reserved", "250.1.2.3"),
            ("255.255.255.255/32 limited broadcast", "255.255.255.255"),
            ("224.0.0.0/4 multicast", "239.255.255.250"),
            // IPv6 Special-Purpose Address Registry.
            ("::1/128 loopback", "::1"),
            ("::/128 unspecified", "::"),
            ("::ffff:0:0/96 IPv4-mapped private", "::ffff:10.0.0.1"),
            ("::ffff:0:0/96 IPv4-mapped loopback", "::ffff:127.0.0.1"),
            ("::ffff:0:0/96 IPv4-mapped link local", "::ffff:169.254.169.254"),
            ("64:ff9b::/96 NAT64 of link local", "64:ff9b::a9fe:a9fe"),
            ("64:ff9b::/96 NAT64 of private", "64:ff9b::10.1.2.3"),
            ("64:ff9b::/96 NAT64 of loopback", "64:ff9b::127.0.0.1"),
            ("64:ff9b:1::/48 local-use NAT64", "64:ff9b:1::808:808"),
            ("64:ff9b:1::/48 local-use NAT64", "64:ff9b:1:a00::1"),
            ("100::/64 discard-only", "100::1"),
            ("100:0:0:1::/64 dummy prefix", "100:0:0:1::1"),
            ("2001::/23 IETF protocol assignments", "2001:1ff:ffff::1"),
            ("2001::/32 Teredo, private client", "2001:0:4136:e378:8000:63bf:f5ff:fffe"),
            ("2001::/32 Teredo, private server", "2001:0:a00:1:8000:63bf:f7f7:fbfb"),
            ("2001::/32 Teredo, loopback client", "2001:0:4136:e378:8000:63bf:80ff:fffe"),
            ("2001:1::1/128 PCP anycast", "2001:1::1"),
            ("2001:1::2/128 TURN anycast", "2001:1::2"),
            ("2001:1::3/128 DNS-SD SRP anycast", "2001:1::3"),
            ("2001:2::/48 benchmarking", "2001:2::1"),
            ("2001:3::/32 AMT", "2001:3::1"),
            ("2001:4:112::/48 AS112-v6", "2001:4:112::1"),
            ("2001:10::/28 deprecated ORCHID", "2001:10::1"),
            ("2001:20::/28 ORCHIDv2", "2001:20::1"),
            ("2001:30::/28 drone remote ID", "2001:30::1"),
            ("2001:db8::/32 documentation", "2001:db8::1"),
            ("2002::/16 6to4 of private", "2002:a00:1::1"),
            ("2002::/16 6to4 of private", "2002:c0a8:101::"),
            ("2002::/16 6to4 of loopback", "2002:7f00:1::1"),
            ("2002::/16 6to4 of link local", "2002:a9fe:a9fe::1"),
            ("2620:4f:8000::/48 AS112 direct delegation", "2620:4f:8000::1"),
            ("3fff::/20 documentation", "3fff:fff::1"),
            ("5f00::/16 SRv6 SIDs", "5f00::1"),
            ("fc00::/7 unique local", "fc00::1"),
            ("fc00::/7 unique local", "fd12:3456::1"),
            ("fe80::/10 link local", "fe80::1"),
            // Beside the registries.
            ("fec0::/10 deprecated site local", "fec0::1"),
            ("ff00::/8 multicast", "ff02::1"),
            ("::/96 IPv4-compatible private", "::10.0.0.1"),
            ("::/96 IPv4-compatible this network", "::0.0.0.2"),
            ("::ffff:0:0:0/96 IPv4-translated private", "::ffff:0:10.0.0.1"),
            ("::ffff:0:0:0/96 IPv4-translated loopback", "::ffff:0:127.0.0.1"),
        ];
        for (range, address) in refused {
            let ip: IpAddr = address.parse().unwrap_or_else(|e| panic!("{address}: {e}"));
            assert!(check_ip(ip, false).is_err(), "{range}: {address} is allowed");
        }
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:fbfb",
        ];
        for address in allowed {
            let ip: IpAddr = address.parse().unwrap_or_else(|e| panic!("{address}: {e}"));
            assert_eq!(check_ip(ip, false).ok(), Some(false), "{address} is refused");
        }
        // The dev stack may use this host's loopback, but not through a translator or relay.
        for own in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = own.parse().unwrap_or_else(|e| panic!("{own}: {e}"));
            assert_eq!(check_ip(ip, true).ok(), Some(true), "{own}");
        }
        for relayed in ["64:ff9b::127.0.0.1", "2002:7f00:1::1", "::127.0.0.1", "::ffff:0:127.0.0.1", "10.0.0.1"] {
            let ip: IpAddr = relayed.parse().unwrap_or_else(|e| panic!("{relayed}: {e}"));
            assert!(check_ip(ip, true).is_err(), "{relayed}");
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
