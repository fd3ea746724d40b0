//! The dispatcher: turns outbox events into deliveries and sends them.
//!
//! One pass ([`Dispatcher::dispatch_once`]) at a given time:
//! 1. fan-out: up to `fanout_batch` events not yet fanned out become one delivery per matching
//!    endpoint of their merchant (endpoints created before the event, not deleted, subscribed to the
//!    type), in outbox order, in one transaction with the mark on the outbox rows;
//! 2. supersede: a pending delivery that has already failed and whose object has a newer event for
//!    the same endpoint is not retried (`superseded`);
//! 3. send: for up to `endpoints_per_pass` endpoints whose oldest pending delivery is due and that
//!    have no delivery in flight, a delivery task is spawned (at most `concurrency` tasks at once,
//!    over all endpoints); the task attempts the endpoint's oldest pending delivery and goes on with
//!    the next one after a success or a final failure, up to `deliveries_per_endpoint_per_pass`, and
//!    stops at a retry, so a pending older delivery always holds back the newer ones.
//!
//! Isolation: an endpoint has at most one delivery in flight (one task; that is also what keeps its
//! order), and each attempt ends at `timeout_ms`. The loop ([`Dispatcher::run`]) does not wait for
//! its tasks before the next pass, so a slow endpoint holds one concurrency slot and delays only its
//! own queue; every other endpoint, of any merchant, is served by the passes that follow.
//! [`Dispatcher::dispatch_once`] is a pass that waits for the tasks it started (tests, tools).
//!
//! Crash safety: a delivery moves on only in the transaction that logs its attempt, guarded by its
//! attempt count, so a task that dies mid-attempt (crash, lost lock, shutdown) leaves the delivery
//! pending as it was, to be sent again: at least once, never recorded twice.
//!
//! Every attempt is written to `webhook_attempts` with its status code, duration and, when it failed,
//! a coarse [`ErrorClass`] only: the merchant reads that log, and the response body or a raw
//! connection error would be a read-back of whatever the URL reaches. Time comes from the [`Clock`], so backoff is
//! tested by moving a manual clock. [`Dispatcher::run`] holds a PostgreSQL advisory lock so that one
//! replica dispatches, and calls a pass every `poll_interval_ms`, at once again after a busy pass or
//! when a delivery task ends (its endpoint may have more due).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use sqlx::{PgPool, Row};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

use crate::clock::Clock;
use crate::db::leader::{stopping, Ended, HeldJob, JobLock, Leadership, Next as LockNext};
use crate::db::replicas::Share;
use crate::ids::new_id;
use crate::metrics;
use crate::secrets::SecretsAtRest;

use super::error::{Result, WebhookError};
use super::failure::{AddressRefused, ErrorClass, ResolveFailed};
use super::retry::{classify, next_attempt, Next, Verdict, BACKOFF_JITTER_PERMILLE_MAX};
use super::secret::EndpointSecret;
use super::signature::{sign_all, SIGNATURE_HEADER};

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
/// How long one endpoint's delivery task may go on starting attempts before it gives its slot
/// back (the attempt under way finishes): a slow endpoint with a long queue takes its turn like the
/// others instead of holding a slot for `deliveries_per_endpoint_per_pass` slow attempts.
pub const ENDPOINT_TIME_BUDGET_MS_DEFAULT: u64 = DELIVERY_TIMEOUT_MS_DEFAULT;
/// Endpoints sent to at the same time, over all merchants: the global cap on delivery tasks.
pub const CONCURRENCY_DEFAULT: usize = 16;
/// Characters of an error's details written to the daemon's (debug) log.
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
    /// Deliveries one endpoint's task sends, one after the other, before it gives its slot back.
    pub deliveries_per_endpoint_per_pass: usize,
    /// How long one endpoint's task starts new attempts (see [`ENDPOINT_TIME_BUDGET_MS_DEFAULT`]);
    /// 0 allows one attempt per task.
    pub endpoint_time_budget_ms: u64,
    /// Delivery tasks at once (one per endpoint at most).
    pub concurrency: usize,
    /// Deliver to loopback addresses (the dev stack and tests only).
    pub allow_loopback: bool,
    /// An endpoint whose deliveries have failed for this long, without one succeeding in between,
    /// is disabled and its merchant told (`webhook_endpoint.disabled`); 0 never disables.
    pub disable_failing_after_s: u64,
}

/// Announces an endpoint disabled after failing.
const EVENT_ENDPOINT_DISABLED: &str = "webhook_endpoint.disabled";

/// Three days of failures disable an endpoint, as the retry window of one delivery is about that.
pub const DISABLE_FAILING_AFTER_S_DEFAULT: u64 = 3 * 86_400;

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            timeout_ms: DELIVERY_TIMEOUT_MS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            poll_interval_ms: POLL_INTERVAL_MS_DEFAULT,
            fanout_batch: FANOUT_BATCH_DEFAULT,
            endpoints_per_pass: ENDPOINTS_PER_PASS_DEFAULT,
            deliveries_per_endpoint_per_pass: DELIVERIES_PER_ENDPOINT_PER_PASS_DEFAULT,
            endpoint_time_budget_ms: ENDPOINT_TIME_BUDGET_MS_DEFAULT,
            concurrency: CONCURRENCY_DEFAULT,
            allow_loopback: false,
            disable_failing_after_s: DISABLE_FAILING_AFTER_S_DEFAULT,
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
    /// Delivery tasks started (one per endpoint served).
    pub endpoints_started: u64,
}

impl PassReport {
    /// HTTP attempts made.
    pub fn attempts(&self) -> u64 {
        self.delivered + self.retrying + self.failed + self.abandoned
    }

    /// Whether the pass changed anything, so that another may find more at once. Starting tasks
    /// does not count: what they do is judged when they end.
    fn busy(&self) -> bool {
        self.events_fanned_out > 0 || self.superseded > 0 || self.attempts() > 0
    }

    /// Counts what a finished delivery task did; a failed or panicked task is logged and counted
    /// as an error (its delivery stays pending and is picked again). Returns whether the task made
    /// an attempt.
    fn absorb(&mut self, joined: std::result::Result<(String, Result<Vec<Outcome>>), JoinError>) -> bool {
        match joined {
            Ok((_, Ok(outcomes))) => {
                let attempted = !outcomes.is_empty();
                outcomes.into_iter().for_each(|o| self.add(o));
                attempted
            }
            Ok((endpoint_id, Err(error))) => {
                self.errors += 1;
                tracing::warn!(target: "webhook", endpoint = %endpoint_id, %error, "dispatching to endpoint failed; retrying next pass");
                false
            }
            Err(error) if error.is_cancelled() => false,
            Err(error) => {
                self.errors += 1;
                tracing::error!(target: "webhook", %error, "a delivery task panicked; its delivery stays pending");
                false
            }
        }
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
    /// A rotated secret still within its overlap: it signs too.
    previous_secret: Option<EndpointSecret>,
    event_id: String,
    body: String,
}

/// What came back from one HTTP attempt. The response body is never read: nothing of it is kept.
struct Response {
    status: Option<u16>,
    /// Set when no 2xx came.
    error: Option<ErrorClass>,
    duration_ms: i64,
    retry_after: Option<Duration>,
}

/// What a delivery task returns: its endpoint and what each attempt came to.
type TaskResult = (String, Result<Vec<Outcome>>);

/// Clones share the in-flight set and the concurrency slots, so every clone respects the same
/// limits.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    config: DispatchConfig,
    /// How endpoint secrets are stored, to read them back for signing.
    secrets: SecretsAtRest,
    /// Endpoints with a delivery task running: not picked again until it ends.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// The global cap on delivery tasks (`concurrency` permits).
    slots: Arc<Semaphore>,
    /// The replica's share of the job locks (`None`: the dispatcher lock is taken whenever free).
    share: Option<Share>,
}

/// An endpoint's place in the in-flight set, given back when dropped: whether the task ends, fails,
/// panics or is aborted, the endpoint becomes pickable again.
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    endpoint_id: String,
}

impl InFlight {
    /// Claims `endpoint_id`; `None` when a task already has it.
    fn claim(set: &Arc<Mutex<HashSet<String>>>, endpoint_id: &str) -> Option<Self> {
        // A poisoned set only means a task panicked while holding the lock; the set is still whole.
        let mut guard = set.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
            .insert(endpoint_id.to_owned())
            .then(|| Self { set: Arc::clone(set), endpoint_id: endpoint_id.to_owned() })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut guard = self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.remove(&self.endpoint_id);
    }
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
            let found: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => found.collect(),
                Err(error) => {
                    let error: Box<dyn std::error::Error + Send + Sync> = Box::new(ResolveFailed(error));
                    return Err(error);
                }
            };
            let allowed: Vec<std::net::SocketAddr> =
                found.into_iter().filter(|addr| super::endpoint::check_ip(addr.ip(), allow_loopback).is_ok()).collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = Box::new(AddressRefused);
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client that sends deliveries: bounded in time, no redirects, every host name resolved
/// through [`PublicOnly`], and no proxy. A proxy from the environment (`HTTPS_PROXY`, `ALL_PROXY`, …)
/// would resolve and connect to the endpoint's host itself, past the address filter, and could
/// reach whatever the proxy reaches; so deliveries always connect directly.
pub(crate) fn delivery_client(config: &DispatchConfig) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_millis(config.timeout_ms))
        .connect_timeout(StdDuration::from_millis(config.connect_timeout_ms.min(config.timeout_ms)))
        // A redirect is an answer like any other non-2xx: the endpoint's URL is what the merchant set.
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PublicOnly { allow_loopback: config.allow_loopback }))
        .build()
        .map_err(WebhookError::Client)
}

impl Dispatcher {
    /// A dispatcher that reads endpoint secrets as `secrets` stores them.
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>, config: DispatchConfig, secrets: SecretsAtRest) -> Result<Self> {
        let client = delivery_client(&config)?;
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Ok(Self { pool, clock, client, config, secrets, in_flight: Arc::default(), slots, share: None })
    }

    /// Counts the dispatcher's lock in the replica's `share` (see [`crate::db::replicas`]).
    #[must_use]
    pub fn spread(mut self, share: Option<Share>) -> Self {
        self.share = share;
        self
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// One pass that waits for the delivery tasks it started; see the module docs. The work is
    /// picked at the clock's time when the pass starts; each attempt reads the clock again when it
    /// starts, for its signature and its schedule, so a long pass never sends stale timestamps. An
    /// error of one endpoint is logged and counted in the report; an error of the fan-out or of the
    /// queries that pick the work is returned.
    pub async fn dispatch_once(&self) -> Result<PassReport> {
        let mut running = JoinSet::new();
        let started = self.pass(&mut running, None).await;
        let mut report = PassReport::default();
        while let Some(joined) = running.join_next().await {
            report.absorb(joined);
        }
        let started = started?;
        report.events_fanned_out = started.events_fanned_out;
        report.deliveries_created = started.deliveries_created;
        report.superseded = started.superseded;
        report.endpoints_started = started.endpoints_started;
        Ok(report)
    }

    /// Fans out, supersedes, and spawns a delivery task into `running` for each due endpoint that
    /// has none in flight, as far as free slots allow; returns without waiting for them. `stop`,
    /// when it turns true, makes the tasks stop after their current attempt.
    async fn pass(&self, running: &mut JoinSet<TaskResult>, stop: Option<watch::Receiver<bool>>) -> Result<PassReport> {
        let now = self.clock.now();
        let mut report = PassReport::default();
        let (events, created) = self.fan_out(now).await?;
        report.events_fanned_out = events;
        report.deliveries_created = created;
        report.superseded = self.supersede(now).await?;
        let free = self.slots.available_permits().min(self.config.endpoints_per_pass.max(1));
        if free > 0 {
            let busy: Vec<String> = {
                let set = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                set.iter().cloned().collect()
            };
            for endpoint_id in self.due_endpoints(now, free, &busy).await? {
                let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else { break };
                let Some(claim) = InFlight::claim(&self.in_flight, &endpoint_id) else { continue };
                running.spawn(self.clone().deliver_task(endpoint_id, now, permit, claim, stop.clone()));
                report.endpoints_started += 1;
            }
        }
        let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        metrics::gauge("payrail_webhook_backlog", "Webhook deliveries waiting to be delivered.", &[], backlog);
        let in_flight = i64::try_from(self.config.concurrency.max(1).saturating_sub(self.slots.available_permits()))
            .unwrap_or(i64::MAX);
        metrics::gauge("payrail_webhook_endpoints_in_flight", "Webhook endpoints with a delivery under way.", &[], in_flight);
        Ok(report)
    }

    /// One endpoint's delivery task: holds a concurrency slot and the endpoint's in-flight claim
    /// until it ends, so the endpoint is never sent to twice at once.
    async fn deliver_task(
        self,
        endpoint_id: String,
        now: DateTime<Utc>,
        _permit: OwnedSemaphorePermit,
        _claim: InFlight,
        stop: Option<watch::Receiver<bool>>,
    ) -> TaskResult {
        let result = self.drain_endpoint(&endpoint_id, now, stop.as_ref()).await;
        (endpoint_id, result)
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
             JOIN webhook_endpoints e ON e.merchant_id = o.merchant_id AND e.deleted_at IS NULL AND e.disabled_at IS NULL \
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

    /// Up to `limit` endpoints whose oldest pending delivery is due, the longest waiting first,
    /// leaving out those in `busy` (a delivery in flight).
    async fn due_endpoints(&self, now: DateTime<Utc>, limit: usize, busy: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT e.id FROM webhook_endpoints e \
             CROSS JOIN LATERAL ( \
                 SELECT d.id, d.next_attempt_at FROM webhook_deliveries d \
                 WHERE d.endpoint_id = e.id AND d.status = 'pending' ORDER BY d.id LIMIT 1) head \
             WHERE e.deleted_at IS NULL AND e.disabled_at IS NULL AND head.next_attempt_at <= $1 AND NOT (e.id = ANY ($3)) \
             ORDER BY head.next_attempt_at, head.id LIMIT $2",
        )
        .bind(now)
        .bind(i64::try_from(limit.max(1)).unwrap_or(i64::MAX))
        .bind(busy)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sends the endpoint's due deliveries in queue order until one is to be retried later, the
    /// task's time budget is spent, or `stop` turns true (all checked between attempts, so shutdown
    /// waits for one attempt at most).
    async fn drain_endpoint(
        &self,
        endpoint_id: &str,
        now: DateTime<Utc>,
        stop: Option<&watch::Receiver<bool>>,
    ) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        let started = Instant::now();
        let budget = StdDuration::from_millis(self.config.endpoint_time_budget_ms);
        for _ in 0..self.config.deliveries_per_endpoint_per_pass.max(1) {
            if stop.is_some_and(stopping) || (!outcomes.is_empty() && started.elapsed() >= budget) {
                break;
            }
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
                    e.url, e.secret, e.secret_sealed, o.event_id, o.payload::text AS body, \
                    (e.previous_secret_expires_at > $2) AS previous_live, e.previous_secret, e.previous_secret_sealed \
             FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             JOIN outbox o ON o.id = d.outbox_id \
             WHERE d.endpoint_id = $1 AND d.status = 'pending' AND e.deleted_at IS NULL AND e.disabled_at IS NULL \
             ORDER BY d.id LIMIT 1",
        )
        .bind(endpoint_id)
        .bind(now)
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
            secret: super::endpoint::stored_secret(
                &self.secrets,
                endpoint_id,
                row.try_get("secret")?,
                row.try_get("secret_sealed")?,
            )?,
            previous_secret: match row.try_get::<Option<bool>, _>("previous_live")? {
                Some(true) => Some(super::endpoint::stored_secret(
                    &self.secrets,
                    endpoint_id,
                    row.try_get("previous_secret")?,
                    row.try_get("previous_secret_sealed")?,
                )?),
                _ => None,
            },
            event_id: row.try_get("event_id")?,
            body: row.try_get("body")?,
        }))
    }

    /// Sends `due` once and records the attempt.
    async fn attempt(&self, due: &Due, now: DateTime<Utc>) -> Result<Outcome> {
        let response = if due.body.len() > EVENT_BODY_BYTES_MAX {
            tracing::error!(target: "webhook", delivery = %due.delivery_id, event = %due.event_id, bytes = due.body.len(),
                max = EVENT_BODY_BYTES_MAX, "event body too large; not sent");
            Response { status: None, error: Some(ErrorClass::BodyTooLarge), duration_ms: 0, retry_after: None }
        } else {
            self.send(due, now).await
        };
        let verdict = if due.body.len() > EVENT_BODY_BYTES_MAX { Verdict::Failed } else { classify(response.status) };
        self.record(due, &response, verdict, now).await
    }

    /// The HTTP request: the stored payload as is, signed over exactly those bytes.
    async fn send(&self, due: &Due, now: DateTime<Utc>) -> Response {
        let secrets: Vec<&EndpointSecret> = std::iter::once(&due.secret).chain(due.previous_secret.as_ref()).collect();
        let signature = sign_all(&secrets, now.timestamp(), due.body.as_bytes());
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
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .filter(|s| *s > 0)
                    .map(Duration::seconds);
                Response {
                    status: Some(status),
                    error: (!response.status().is_success()).then_some(ErrorClass::HttpStatus),
                    duration_ms: elapsed(started),
                    retry_after,
                }
            }
            Err(error) => {
                let class = ErrorClass::of_request(&error);
                tracing::debug!(target: "webhook", delivery = %due.delivery_id, endpoint = %due.endpoint_id, %class,
                    details = %describe(error), "delivery attempt got no response");
                Response { status: None, error: Some(class), duration_ms: elapsed(started), retry_after: None }
            }
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
            "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, error, duration_ms, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(due.id)
        .bind(attempt)
        .bind(now)
        .bind(status_code)
        .bind(response.error.map(ErrorClass::as_str))
        .bind(response.duration_ms.max(0))
        .bind(outcome.as_str())
        .execute(&mut *tx)
        .await?;
        self.track_failing(&mut tx, &due.endpoint_id, outcome == Outcome::Delivered, now).await?;
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
                error = ?response.error.map(ErrorClass::as_str), attempt, next_attempt_at = ?next, "delivery attempt failed; will retry"),
            Outcome::Failed => tracing::warn!(target: "webhook", %delivery, %endpoint, %event, status = ?response.status,
                error = ?response.error.map(ErrorClass::as_str), attempt, "delivery refused by the endpoint; not retried"),
            Outcome::Abandoned => tracing::warn!(target: "webhook", %delivery, %endpoint, %event, status = ?response.status,
                error = ?response.error.map(ErrorClass::as_str), attempt, "delivery abandoned after its retry window"),
        }
        Ok(outcome)
    }

    /// Notes a delivery's result on its endpoint: a success ends a failing streak; a failure starts
    /// one, and one that has lasted `disable_failing_after_s` disables the endpoint and writes
    /// `webhook_endpoint.disabled` (other endpoints of the merchant get it; this one is told by the
    /// API and the console). The merchant enables it again with `PATCH … {"disabled": false}`.
    async fn track_failing(&self, tx: &mut sqlx::PgConnection, endpoint_id: &str, delivered: bool, now: DateTime<Utc>) -> Result<()> {
        if delivered {
            sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                .bind(endpoint_id)
                .execute(&mut *tx)
                .await?;
            return Ok(());
        }
        let limit = self.config.disable_failing_after_s;
        let disabled: Option<String> = sqlx::query_scalar::<_, Option<String>>(
            "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, $2), \
                    disabled_at = CASE WHEN $3 > 0 AND coalesce(failing_since, $2) <= $2 - $3::bigint * interval '1 second' \
                                       THEN $2 ELSE disabled_at END, \
                    disabled_reason = CASE WHEN $3 > 0 AND coalesce(failing_since, $2) <= $2 - $3::bigint * interval '1 second' \
                                           THEN 'failing' ELSE disabled_reason END \
             WHERE id = $1 AND disabled_at IS NULL \
             RETURNING CASE WHEN disabled_at IS NOT NULL THEN merchant_id END",
        )
        .bind(endpoint_id)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        if let Some(merchant_id) = disabled {
            tracing::warn!(target: "webhook", endpoint = %endpoint_id, failing_for_s = limit, "webhook endpoint disabled after failing");
            let view = super::endpoint::get_endpoint_on(&mut *tx, &merchant_id, endpoint_id).await?;
            super::outbox::emit(&mut *tx, &merchant_id, EVENT_ENDPOINT_DISABLED, endpoint_id, &view, now).await?;
        }
        Ok(())
    }

    /// Dispatches until `shutdown` turns true (or its sender is dropped), while holding the
    /// advisory lock: other replicas wait for it and take over when this one's session ends. The
    /// lock is checked before every pass; a lost one aborts the delivery tasks (an attempt cut short
    /// is sent again by the new holder) and sends this replica back to waiting. Delivery tasks run
    /// beside the passes; at shutdown each ends after its current attempt and is waited for before
    /// the lock is released, so no other replica sends beside them.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let lock = JobLock::new(self.pool.clone(), LOCK_NAME)
            .retry_every(StdDuration::from_millis(LOCK_RETRY_MS))
            .spread(self.share.clone());
        let mut job = Dispatching { dispatcher: self, running: JoinSet::new(), report: PassReport::default() };
        let Ok(()) = lock.hold(&mut job, &mut shutdown).await;
        Ok(())
    }

    /// Lets the running tasks end after their current attempt (they see `shutdown`), waiting at most
    /// about one attempt's timeout; whatever is still running then is aborted, its delivery left
    /// pending as it was.
    async fn finish(&self, running: &mut JoinSet<TaskResult>, report: &mut PassReport) {
        let grace = StdDuration::from_millis(self.config.timeout_ms.saturating_mul(2).max(1_000));
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = running.join_next().await {
                report.absorb(joined);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(target: "webhook", tasks = running.len(), "delivery tasks still running at shutdown; aborted, their deliveries stay pending");
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
    }
}

/// The dispatcher while it holds its lock: delivery tasks run beside the passes.
struct Dispatching<'a> {
    dispatcher: &'a Dispatcher,
    running: JoinSet<TaskResult>,
    report: PassReport,
}

impl HeldJob for Dispatching<'_> {
    type Error = std::convert::Infallible;

    fn started(&mut self, _leadership: &Leadership) {
        tracing::info!(target: "webhook", "dispatching webhooks");
        self.report = PassReport::default();
    }

    /// One pass, then a wait for the poll interval or for a task that frees its endpoint.
    async fn pass(&mut self, _leadership: &mut Leadership, shutdown: &mut watch::Receiver<bool>) -> std::result::Result<LockNext, Self::Error> {
        let poll = StdDuration::from_millis(self.dispatcher.config.poll_interval_ms.max(1));
        let mut busy = match self.dispatcher.pass(&mut self.running, Some(shutdown.clone())).await {
            Ok(pass) => pass.busy(),
            Err(error) => {
                tracing::warn!(target: "webhook", %error, "dispatch pass failed; retrying");
                false
            }
        };
        while let Some(joined) = self.running.try_join_next() {
            busy |= self.report.absorb(joined);
        }
        if self.report.busy() {
            tracing::debug!(target: "webhook", report = ?self.report, "deliveries finished");
            self.report = PassReport::default();
        }
        if busy {
            return Ok(LockNext::Now);
        }
        // A task that ends after an attempt frees its endpoint, which may have more due: look
        // again at once. One that attempted nothing (an error) waits for the poll, so a failing
        // endpoint is not picked again in a tight loop.
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.changed() => break,
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    if self.report.absorb(joined) {
                        break;
                    }
                }
            }
        }
        Ok(LockNext::Now)
    }

    /// At shutdown or a hand-over the running attempts end before the lock is released (no other
    /// replica sends beside them); a lost lock aborts them (an attempt cut short is sent again by
    /// the new holder).
    async fn ended(&mut self, ended: Ended) {
        if ended == Ended::Lost {
            self.running.abort_all();
            while let Some(joined) = self.running.join_next().await {
                self.report.absorb(joined);
            }
        } else {
            self.dispatcher.finish(&mut self.running, &mut self.report).await;
        }
    }
}

/// The dispatcher of `payrail serve`, with the default limits: runs until `shutdown` turns true.
/// Errors are logged; it never panics and never returns early while it can still work.
pub async fn run_dispatcher(
    pool: PgPool,
    clock: Arc<dyn Clock>,
    allow_loopback: bool,
    secrets: SecretsAtRest,
    share: Option<Share>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let config = DispatchConfig { allow_loopback, ..DispatchConfig::default() };
    let dispatcher = match Dispatcher::new(pool, clock, config, secrets) {
        Ok(dispatcher) => dispatcher.spread(share),
        Err(error) => {
            tracing::error!(target: "webhook", %error, "webhook dispatcher not started; events stay in the outbox");
            return;
        }
    };
    if let Err(error) = dispatcher.run(shutdown).await {
        tracing::error!(target: "webhook", %error, "webhook dispatcher stopped");
    }
}

/// An error's details for the daemon's debug log: what failed, without the URL (it may carry a
/// merchant's token). Never stored where a merchant can read it.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
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

    use crate::webhook::failure::ErrorClass;

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

    #[tokio::test]
    async fn refused_and_unresolvable_hosts_have_their_classes() {
        let config = super::DispatchConfig { timeout_ms: 10_000, ..super::DispatchConfig::default() };
        let client = super::delivery_client(&config).expect("client");
        let refused = client.post("http://localhost:9/hook").send().await.expect_err("loopback is refused");
        assert_eq!(ErrorClass::of_request(&refused), ErrorClass::RefusedAddress, "{refused:?}");
        let unknown = client.post("http://no-such-host.invalid/hook").send().await.expect_err("no such host");
        assert_eq!(ErrorClass::of_request(&unknown), ErrorClass::Dns, "{unknown:?}");
    }
}
