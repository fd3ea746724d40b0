//! The dispatcher: turns outbox events into deliveries and sends them.
//!
//! One pass ([`Dispatcher::dispatch_once`]) at a given time:
//! 1. fan-out: up to `fanout_batch` events not yet fanned out become one delivery per matching
//!    endpoint of their merchant (endpoints created before the event, not deleted, subscribed to the
//!    type), in outbox order, in one transaction with the mark on the outbox rows;
//! 2. supersede: a pending delivery that has already failed and whose object has a newer event for
//!    the same endpoint is not retried (`superseded`);
//! 3. send: for up to `endpoints_per_pass` endpoints whose oldest pending delivery is due, that
//!    delivery is attempted (at most `concurrency` endpoints at once); an endpoint goes on with its
//!    next delivery after a success or a final failure, up to `deliveries_per_endpoint_per_pass`, and
//!    stops at a retry, so a pending older delivery always holds back the newer ones.
//!
//! Every attempt is written to `webhook_attempts`. Time comes from the [`Clock`], so backoff is
//! tested by moving a manual clock. [`Dispatcher::run`] holds a PostgreSQL advisory lock so that one
//! replica dispatches, and calls a pass every `poll_interval_ms` (at once again after a busy pass).

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use rand::Rng;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use sqlx::{PgPool, Row};

use crate::clock::Clock;
use crate::db::leader::JobLock;
use crate::ids::new_id;
use crate::metrics;

use super::error::{Result, WebhookError};
use super::retry::{classify, next_attempt, Next, Verdict, BACKOFF_JITTER_PERMILLE_MAX};
use super::secret::EndpointSecret;
use super::signature::{sign, SIGNATURE_HEADER};

/// The header naming the event, for receivers that deduplicate.
pub const EVENT_ID_HEADER: &str = "Payrail-Event-Id";
/// How long one attempt may take, connection to last byte read, unless configured otherwise.
pub const DELIVERY_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// How long connecting may take within that.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// How often an idle dispatcher looks for work.
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// How often a replica without the lock tries to take it.
pub const LOCK_RETRY_MS: u64 = 5_000;
/// Events fanned out per pass.
pub const FANOUT_BATCH_DEFAULT: usize = 500;
/// Failed deliveries checked for superseding per pass.
pub const SUPERSEDE_BATCH: i64 = 1_000;
/// Endpoints served per pass.
pub const ENDPOINTS_PER_PASS_DEFAULT: usize = 200;
/// Deliveries one endpoint gets per pass, one after the other.
pub const DELIVERIES_PER_ENDPOINT_PER_PASS_DEFAULT: usize = 20;
/// Endpoints sent to at the same time.
pub const CONCURRENCY_DEFAULT: usize = 16;
/// Bytes of a response body kept in the delivery log.
pub const RESPONSE_EXCERPT_BYTES_MAX: usize = 1024;
/// Characters of an error kept in the delivery log.
pub const ERROR_TEXT_CHARS_MAX: usize = 500;
/// The largest event body sent; a bigger one is a bug upstream and is failed, not sent.
pub const EVENT_BODY_BYTES_MAX: usize = 256 * 1024;
/// The name of the advisory lock (hashed by PostgreSQL to its key).
pub const LOCK_NAME: &str = "payrail.webhooks.dispatch";

const USER_AGENT_VALUE: &str = concat!("payrail-webhooks/", env!("CARGO_PKG_VERSION"));

/// Limits of the dispatcher. Every one is bounded; the defaults suit production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchConfig {
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub poll_interval_ms: u64,
    pub fanout_batch: usize,
    pub endpoints_per_pass: usize,
    pub deliveries_per_endpoint_per_pass: usize,
    pub concurrency: usize,
    /// Deliver to loopback addresses (the dev stack and tests only).
    pub allow_loopback: bool,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            timeout_ms: DELIVERY_TIMEOUT_MS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            poll_interval_ms: POLL_INTERVAL_MS_DEFAULT,
            fanout_batch: FANOUT_BATCH_DEFAULT,
            endpoints_per_pass: ENDPOINTS_PER_PASS_DEFAULT,
            deliveries_per_endpoint_per_pass: DELIVERIES_PER_ENDPOINT_PER_PASS_DEFAULT,
            concurrency: CONCURRENCY_DEFAULT,
            allow_loopback: false,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Outbox events turned into deliveries (or found to have no endpoint).
    pub events_fanned_out: u64,
    pub deliveries_created: u64,
    pub superseded: u64,
    pub delivered: u64,
    /// Attempts that failed and are scheduled again.
    pub retrying: u64,
    pub failed: u64,
    pub abandoned: u64,
    /// Endpoints whose pass ended in an error (logged).
    pub errors: u64,
}

impl PassReport {
    /// HTTP attempts made.
    pub fn attempts(&self) -> u64 {
        self.delivered + self.retrying + self.failed + self.abandoned
    }

    fn busy(&self) -> bool {
        self.events_fanned_out > 0 || self.superseded > 0 || self.attempts() > 0
    }

    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Delivered => self.delivered += 1,
            Outcome::Retrying => self.retrying += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Abandoned => self.abandoned += 1,
        }
    }
}

/// Where a delivery stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retrying,
    Failed,
    Abandoned,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retry",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }

    fn delivery_status(self) -> &'static str {
        match self {
            Self::Retrying => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }
}

/// A delivery that is due, with all it takes to send it.
struct Due {
    id: i64,
    delivery_id: String,
    endpoint_id: String,
    attempts: i32,
    first_attempt_at: Option<DateTime<Utc>>,
    url: String,
    secret: EndpointSecret,
    event_id: String,
    body: String,
}

/// What came back from one HTTP attempt.
struct Response {
    status: Option<u16>,
    error: Option<String>,
    duration_ms: i64,
    excerpt: Option<String>,
    retry_after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    config: DispatchConfig,
}

/// Resolves endpoint host names and keeps only addresses an endpoint may use (public ones, and
/// loopback when allowed for the dev stack), at the moment of connecting: a name that resolves to
/// an internal address, even after the endpoint was accepted, reaches nothing inside.
struct PublicOnly {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> =
                found.into_iter().filter(|addr| super::endpoint::check_ip(addr.ip(), allow_loopback).is_ok()).collect();
            if allowed.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to internal addresses").into();
                return Err(refused);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

impl Dispatcher {
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>, config: DispatchConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(StdDuration::from_millis(config.timeout_ms))
            .connect_timeout(StdDuration::from_millis(config.connect_timeout_ms.min(config.timeout_ms)))
            // A redirect is an answer like any other non-2xx: the endpoint's URL is what the merchant set.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PublicOnly { allow_loopback: config.allow_loopback }))
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Self { pool, clock, client, config })
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// One pass; see the module docs. The work is picked at the clock's time when the pass starts;
    /// each attempt reads the clock again when it starts, for its signature and its schedule, so a
    /// long pass never sends stale timestamps. An error of one endpoint is logged and counted in the
    /// report; an error of the fan-out or of the queries that pick the work is returned.
    pub async fn dispatch_once(&self) -> Result<PassReport> {
        let now = self.clock.now();
        let mut report = PassReport::default();
        let (events, created) = self.fan_out(now).await?;
        report.events_fanned_out = events;
        report.deliveries_created = created;
        report.superseded = self.supersede(now).await?;
        let endpoints = self.due_endpoints(now).await?;
        let results: Vec<(String, Result<Vec<Outcome>>)> = futures::stream::iter(endpoints)
            .map(|endpoint_id| async move {
                let result = self.drain_endpoint(&endpoint_id, now).await;
                (endpoint_id, result)
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        for (endpoint_id, result) in results {
            match result {
                Ok(outcomes) => outcomes.into_iter().for_each(|o| report.add(o)),
                Err(error) => {
                    report.errors += 1;
                    tracing::warn!(target: "webhook", endpoint = %endpoint_id, %error, "dispatching to endpoint failed; retrying next pass");
                }
            }
        }
        let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        metrics::gauge("payrail_webhook_backlog", "Webhook deliveries waiting to be delivered.", &[], backlog);
        Ok(report)
    }

    /// Turns up to `fanout_batch` new outbox events into deliveries. Returns (events, deliveries).
    async fn fan_out(&self, now: DateTime<Utc>) -> Result<(u64, u64)> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM outbox WHERE fanned_out_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::try_from(self.config.fanout_batch.max(1)).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let targets = sqlx::query(
            "SELECT o.id AS outbox_id, e.id AS endpoint_id, o.object_id \
             FROM outbox o \
             JOIN webhook_endpoints e ON e.merchant_id = o.merchant_id AND e.deleted_at IS NULL \
                  AND e.created_at <= o.created_at AND (e.events IS NULL OR o.event_type = ANY (e.events)) \
             WHERE o.id = ANY ($1) \
             ORDER BY o.id, e.created_at, e.id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut delivery_ids = Vec::with_capacity(targets.len());
        let mut endpoint_ids = Vec::with_capacity(targets.len());
        let mut outbox_ids = Vec::with_capacity(targets.len());
        let mut object_ids = Vec::with_capacity(targets.len());
        for row in &targets {
            delivery_ids.push(new_id("whd"));
            endpoint_ids.push(row.try_get::<String, _>("endpoint_id")?);
            outbox_ids.push(row.try_get::<i64, _>("outbox_id")?);
            object_ids.push(row.try_get::<String, _>("object_id")?);
        }
        // Inserted in outbox order, so the queue order of each endpoint is the outbox order.
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, outbox_id, object_id, status, next_attempt_at, created_at) \
             SELECT t.delivery_id, t.endpoint_id, t.outbox_id, t.object_id, 'pending', $5, $5 \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY \
                  AS t(delivery_id, endpoint_id, outbox_id, object_id, n) \
             ORDER BY t.n \
             ON CONFLICT (outbox_id, endpoint_id) WHERE NOT replay DO NOTHING",
        )
        .bind(&delivery_ids)
        .bind(&endpoint_ids)
        .bind(&outbox_ids)
        .bind(&object_ids)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE outbox SET fanned_out_at = $2 WHERE id = ANY ($1)")
            .bind(&ids)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let events = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        Ok((events, inserted.rows_affected()))
    }

    /// Marks `superseded` the failing deliveries whose object has a newer event for the same endpoint.
    async fn supersede(&self, now: DateTime<Utc>) -> Result<u64> {
        let rows = sqlx::query(
            "UPDATE webhook_deliveries d SET status = 'superseded', next_attempt_at = NULL, completed_at = $1 \
             WHERE d.id IN ( \
                 SELECT p.id FROM webhook_deliveries p \
                 WHERE p.status = 'pending' AND p.attempts > 0 AND EXISTS ( \
                     SELECT 1 FROM webhook_deliveries n \
                     WHERE n.endpoint_id = p.endpoint_id AND n.object_id = p.object_id AND n.outbox_id > p.outbox_id) \
                 ORDER BY p.id LIMIT $2) \
             RETURNING d.delivery_id, d.endpoint_id, d.object_id",
        )
        .bind(now)
        .bind(SUPERSEDE_BATCH)
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let delivery: String = row.try_get("delivery_id")?;
            let endpoint: String = row.try_get("endpoint_id")?;
            let object: String = row.try_get("object_id")?;
            tracing::info!(target: "webhook", %delivery, %endpoint, %object, "delivery superseded by a newer event of its object; not retried");
        }
        Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
    }

    /// Endpoints whose oldest pending delivery is due, the longest waiting first.
    async fn due_endpoints(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT e.id FROM webhook_endpoints e \
             CROSS JOIN LATERAL ( \
                 SELECT d.id, d.next_attempt_at FROM webhook_deliveries d \
                 WHERE d.endpoint_id = e.id AND d.status = 'pending' ORDER BY d.id LIMIT 1) head \
             WHERE e.deleted_at IS NULL AND head.next_attempt_at <= $1 \
             ORDER BY head.next_attempt_at, head.id LIMIT $2",
        )
        .bind(now)
        .bind(i64::try_from(self.config.endpoints_per_pass.max(1)).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sends the endpoint's due deliveries in queue order until one is to be retried later.
    async fn drain_endpoint(&self, endpoint_id: &str, now: DateTime<Utc>) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        for _ in 0..self.config.deliveries_per_endpoint_per_pass.max(1) {
            let Some(due) = self.head_if_due(endpoint_id, now).await? else { break };
            let outcome = self.attempt(&due, self.clock.now().max(now)).await?;
            outcomes.push(outcome);
            if outcome == Outcome::Retrying {
                break;
            }
        }
        Ok(outcomes)
    }

    /// The endpoint's oldest pending delivery, when it is due.
    async fn head_if_due(&self, endpoint_id: &str, now: DateTime<Utc>) -> Result<Option<Due>> {
        let row = sqlx::query(
            "SELECT d.id, d.delivery_id, d.attempts, d.first_attempt_at, d.next_attempt_at, \
                    e.url, e.secret, o.event_id, o.payload::text AS body \
             FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             JOIN outbox o ON o.id = d.outbox_id \
             WHERE d.endpoint_id = $1 AND d.status = 'pending' AND e.deleted_at IS NULL \
             ORDER BY d.id LIMIT 1",
        )
        .bind(endpoint_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let next_attempt_at: DateTime<Utc> = row.try_get("next_attempt_at")?;
        if next_attempt_at > now {
            return Ok(None);
        }
        Ok(Some(Due {
            id: row.try_get("id")?,
            delivery_id: row.try_get("delivery_id")?,
            endpoint_id: endpoint_id.to_owned(),
            attempts: row.try_get("attempts")?,
            first_attempt_at: row.try_get("first_attempt_at")?,
            url: row.try_get("url")?,
            secret: EndpointSecret::from_stored(row.try_get("secret")?),
            event_id: row.try_get("event_id")?,
            body: row.try_get("body")?,
        }))
    }

    /// Sends `due` once and records the attempt.
    async fn attempt(&self, due: &Due, now: DateTime<Utc>) -> Result<Outcome> {
        let response = if due.body.len() > EVENT_BODY_BYTES_MAX {
            Response {
                status: None,
                error: Some(format!("event body of {} bytes exceeds {EVENT_BODY_BYTES_MAX}; not sent", due.body.len())),
                duration_ms: 0,
                excerpt: None,
                retry_after: None,
            }
        } else {
            self.send(due, now).await
        };
        let verdict = if due.body.len() > EVENT_BODY_BYTES_MAX { Verdict::Failed } else { classify(response.status) };
        self.record(due, &response, verdict, now).await
    }

    /// The HTTP request: the stored payload as is, signed over exactly those bytes.
    async fn send(&self, due: &Due, now: DateTime<Utc>) -> Response {
        let signature = sign(&due.secret, now.timestamp(), due.body.as_bytes());
        let started = Instant::now();
        let sent = self
            .client
            .post(&due.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_ID_HEADER, &due.event_id)
            .body(due.body.clone())
            .send()
            .await;
        let elapsed = |started: Instant| i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .filter(|s| *s > 0)
                    .map(Duration::seconds);
                let duration_ms = elapsed(started);
                let mut body = Vec::new();
                // Only the first bytes are kept; a body that stalls or breaks costs the excerpt, not the verdict.
                while body.len() < RESPONSE_EXCERPT_BYTES_MAX {
                    match response.chunk().await {
                        Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                        Ok(None) | Err(_) => break,
                    }
                }
                Response {
                    status: Some(status),
                    error: None,
                    duration_ms,
                    excerpt: (!body.is_empty()).then(|| excerpt(&body)),
                    retry_after,
                }
            }
            Err(error) => Response {
                status: None,
                error: Some(describe(error, self.config.timeout_ms)),
                duration_ms: elapsed(started),
                excerpt: None,
                retry_after: None,
            },
        }
    }

    /// Writes the attempt to the log and moves the delivery on.
    async fn record(&self, due: &Due, response: &Response, verdict: Verdict, now: DateTime<Utc>) -> Result<Outcome> {
        let attempt = due.attempts.saturating_add(1);
        let first = due.first_attempt_at.unwrap_or(now);
        let jitter = rand::thread_rng().gen_range(0..=BACKOFF_JITTER_PERMILLE_MAX);
        let (outcome, next) = match verdict {
            Verdict::Delivered => (Outcome::Delivered, None),
            Verdict::Failed => (Outcome::Failed, None),
            Verdict::Retry => {
                let number = u32::try_from(attempt).unwrap_or(u32::MAX);
                match next_attempt(number, first, now, response.retry_after, jitter) {
                    Next::RetryAt(at) => (Outcome::Retrying, Some(at)),
                    Next::Abandon => (Outcome::Abandoned, None),
                }
            }
        };
        let status_code = response.status.map(i32::from);
        let completed_at = next.is_none().then_some(now);
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = $2, status = $3, next_attempt_at = $4, \
                    first_attempt_at = coalesce(first_attempt_at, $5), last_attempt_at = $5, \
                    last_status_code = $6, completed_at = $7 \
             WHERE id = $1 AND status = 'pending' AND attempts = $8",
        )
        .bind(due.id)
        .bind(attempt)
        .bind(outcome.delivery_status())
        .bind(next)
        .bind(now)
        .bind(status_code)
        .bind(completed_at)
        .bind(due.attempts)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, error, duration_ms, \
                                           response_excerpt, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(due.id)
        .bind(attempt)
        .bind(now)
        .bind(status_code)
        .bind(&response.error)
        .bind(response.duration_ms.max(0))
        .bind(&response.excerpt)
        .bind(outcome.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::count(
            "payrail_webhook_attempts_total",
            "Webhook delivery attempts, by outcome.",
            &[("outcome", outcome.as_str())],
            1,
        );
        let (delivery, endpoint, event) = (&due.delivery_id, &due.endpoint_id, &due.event_id);
        if updated.rows_affected() == 0 {
            tracing::info!(target: "webhook", %delivery, %endpoint, "delivery changed during its attempt (endpoint deleted?); attempt logged only");
        }
        match outcome {
            Outcome::Delivered => {
                tracing::debug!(target: "webhook", %delivery, %endpoint, %event, status = ?response.status, attempt, "delivered")
            }
            Outcome::Retrying => tracing::warn!(target: "webhook", %delivery, %endpoint, %event, status = ?response.status,
                error = ?response.error, attempt, next_attempt_at = ?next, "delivery attempt failed; will retry"),
            Outcome::Failed => tracing::warn!(target: "webhook", %delivery, %endpoint, %event, status = ?response.status,
                error = ?response.error, attempt, "delivery refused by the endpoint; not retried"),
            Outcome::Abandoned => tracing::warn!(target: "webhook", %delivery, %endpoint, %event, status = ?response.status,
                error = ?response.error, attempt, "delivery abandoned after its retry window"),
        }
        Ok(outcome)
    }

    /// Dispatches until `shutdown` turns true (or its sender is dropped), while holding the
    /// advisory lock: other replicas wait for it and take over when this one's session ends. The
    /// lock is checked before every pass; a lost one sends this replica back to waiting.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        let poll = StdDuration::from_millis(self.config.poll_interval_ms.max(1));
        let lock = JobLock::new(self.pool.clone(), LOCK_NAME).retry_every(StdDuration::from_millis(LOCK_RETRY_MS));
        loop {
            let Some(mut leadership) = lock.acquire(&mut shutdown).await else { return Ok(()) };
            tracing::info!(target: "webhook", "dispatching webhooks");
            loop {
                if *shutdown.borrow() {
                    leadership.release().await;
                    return Ok(());
                }
                if let Err(error) = leadership.ensure_held().await {
                    tracing::warn!(target: "webhook", %error, "lost the dispatcher lock; waiting for it again");
                    break;
                }
                let busy = match self.dispatch_once().await {
                    Ok(report) => {
                        if report.busy() {
                            tracing::debug!(target: "webhook", ?report, "dispatch pass");
                        }
                        report.busy()
                    }
                    Err(error) => {
                        tracing::warn!(target: "webhook", %error, "dispatch pass failed; retrying");
                        false
                    }
                };
                if busy {
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// The dispatcher of `payrail serve`, with the default limits: runs until `shutdown` turns true.
/// Errors are logged; it never panics and never returns early while it can still work.
pub async fn run_dispatcher(
    pool: PgPool,
    clock: Arc<dyn Clock>,
    allow_loopback: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let config = DispatchConfig { allow_loopback, ..DispatchConfig::default() };
    let dispatcher = match Dispatcher::new(pool, clock, config) {
        Ok(dispatcher) => dispatcher,
        Err(error) => {
            tracing::error!(target: "webhook", %error, "webhook dispatcher not started; events stay in the outbox");
            return;
        }
    };
    if let Err(error) = dispatcher.run(shutdown).await {
        tracing::error!(target: "webhook", %error, "webhook dispatcher stopped");
    }
}

/// A response body excerpt that PostgreSQL text can hold: at most `RESPONSE_EXCERPT_BYTES_MAX`
/// bytes read, invalid UTF-8 replaced, NUL removed.
fn excerpt(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(RESPONSE_EXCERPT_BYTES_MAX)];
    String::from_utf8_lossy(bytes).chars().filter(|c| *c != '\0').take(RESPONSE_EXCERPT_BYTES_MAX).collect()
}

/// An error for the log: what failed, without the URL (it may carry a merchant's token).
fn describe(error: reqwest::Error, timeout_ms: u64) -> String {
    if error.is_timeout() {
        return format!("timed out after {timeout_ms} ms");
    }
    let kind = if error.is_connect() { "connect" } else { "request" };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().filter(|c| *c != '\0').take(ERROR_TEXT_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_storable() {
        let long = vec![b'a'; RESPONSE_EXCERPT_BYTES_MAX * 3];
        assert_eq!(excerpt(&long).len(), RESPONSE_EXCERPT_BYTES_MAX);
        assert_eq!(excerpt(b"ok\0\xff!"), "ok\u{fffd}!");
    }

    #[test]
    fn reports_count_attempts() {
        let mut report = PassReport::default();
        assert!(!report.busy());
        for outcome in [Outcome::Delivered, Outcome::Retrying, Outcome::Failed, Outcome::Abandoned] {
            report.add(outcome);
        }
        assert_eq!(report.attempts(), 4);
        assert!(report.busy());
    }
}

#[cfg(test)]
mod resolver_tests {
    use std::str::FromStr;

    use reqwest::dns::{Name, Resolve};

    use super::PublicOnly;

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_reach_nothing() {
        let dev = PublicOnly { allow_loopback: true };
        let internal = dev.resolve(Name::from_str("10.1.2.3").expect("name")).await;
        assert!(internal.is_err(), "a private address is refused");
        let metadata = dev.resolve(Name::from_str("169.254.169.254").expect("name")).await;
        assert!(metadata.is_err(), "a link-local (metadata service) address is refused");
        let loopback = dev.resolve(Name::from_str("127.0.0.1").expect("name")).await.expect("loopback allowed");
        assert!(loopback.into_iter().all(|a| a.ip().is_loopback()));
        let production = PublicOnly { allow_loopback: false };
        assert!(production.resolve(Name::from_str("localhost").expect("name")).await.is_err(), "loopback refused");
    }
}
