//! Verified API keys kept in memory for a few seconds, so a request costs no key lookup.
//!
//! A key is served from here only while this daemon hears the database's announcements of key
//! changes (`LISTEN payrail_api_keys`; migration 0033 announces every revocation, expiry, new
//! secret or scope change, whoever writes it). An announcement makes every replica forget the key
//! as soon as its transaction commits — well within a second. While the listening connection is
//! down nothing is served from memory and every request asks the database, as before; on
//! reconnecting the cache starts empty, since announcements made meanwhile are lost.
//! [`CACHED_FOR`] bounds how long a key is trusted even if announcements silently stopped
//! arriving (a connection that died without closing).
//!
//! A lookup that raced an announcement must not put back what the announcement removed: every
//! announcement, and every loss of the connection, bumps a generation under the map's lock, and a
//! lookup stores its result only if the generation it started under is still current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use super::{split_token, touch, Principal, StoredKey};

/// The channel key changes are announced on (migration 0033).
pub const CHANNEL: &str = "payrail_api_keys";
/// How long a verified key is trusted without asking the database again.
pub const CACHED_FOR: Duration = Duration::from_secs(10);
/// Most keys held; beyond it the oldest half is dropped.
pub const KEYS_CACHED_MAX: usize = 50_000;
/// How long to wait before listening again after the connection failed, doubled after each
/// failure in a row up to [`RELISTEN_AFTER_MAX`].
const RELISTEN_AFTER: Duration = Duration::from_secs(1);
const RELISTEN_AFTER_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Entry {
    key: StoredKey,
    stored_at: Instant,
}

#[derive(Debug, Default)]
struct Entries {
    keys: HashMap<String, Entry>,
    /// Bumped by every announcement and every loss of the listening connection.
    generation: u64,
}

/// See the module documentation. One per daemon, shared by its requests.
#[derive(Debug)]
pub struct KeyCache {
    pool: PgPool,
    entries: Mutex<Entries>,
    /// Whether announcements are being heard; nothing is served from memory otherwise.
    listening: AtomicBool,
    /// Whether the listening task was started (on first use, inside the runtime).
    started: AtomicBool,
}

impl KeyCache {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            entries: Mutex::new(Entries::default()),
            listening: AtomicBool::new(false),
            started: AtomicBool::new(false),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether key changes are being heard right now (and keys are served from memory).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Resolves a bearer token to its principal at `now`, as [`super::authenticate`] does, from
    /// memory when it can.
    pub async fn authenticate(self: &Arc<Self>, token: &str, now: DateTime<Utc>) -> Result<Option<Principal>, sqlx::Error> {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().listen());
        }
        let Some((key_id, secret)) = split_token(token) else {
            return Ok(None);
        };
        let cached = {
            let entries = self.entries();
            entries
                .keys
                .get(&key_id)
                .filter(|entry| self.is_listening() && entry.stored_at.elapsed() < CACHED_FOR)
                .map(|entry| entry.key.clone())
        };
        let key = match cached {
            Some(key) => key,
            None => {
                let generation = self.entries().generation;
                let Some(key) = StoredKey::load(&self.pool, &key_id).await? else {
                    return Ok(None);
                };
                self.store(&key_id, &key, generation);
                key
            }
        };
        let principal = key.admit(&key_id, secret, now);
        if principal.is_some() && key.stale_use(now) {
            touch(&self.pool, &key_id, now).await?;
            if let Some(entry) = self.entries().keys.get_mut(&key_id) {
                entry.key.last_used_at = Some(now);
            }
        }
        Ok(principal)
    }

    /// Keeps `key` if nothing was announced since `generation` was read and announcements are
    /// being heard.
    fn store(&self, key_id: &str, key: &StoredKey, generation: u64) {
        let mut entries = self.entries();
        if entries.generation != generation || !self.is_listening() {
            return;
        }
        if entries.keys.len() >= KEYS_CACHED_MAX {
            let mut ages: Vec<Instant> = entries.keys.values().map(|e| e.stored_at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            entries.keys.retain(|_, e| e.stored_at > cut);
        }
        entries.keys.insert(key_id.to_owned(), Entry { key: key.clone(), stored_at: Instant::now() });
    }

    /// Forgets `key_id` at once (this daemon changed it; the announcement reaches the others).
    pub fn forget(&self, key_id: &str) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries.keys.remove(key_id);
    }

    /// Forgets every key (announcements may have been missed).
    fn forget_all(&self) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries.keys.clear();
    }

    /// Listens for key changes for as long as the daemon runs, on a connection of its own (not one
    /// of the pool's, which requests need).
    async fn listen(self: Arc<Self>) {
        let mut wait = RELISTEN_AFTER;
        loop {
            let error = self.listen_once().await;
            let was_listening = self.listening.swap(false, Ordering::SeqCst);
            self.forget_all();
            if was_listening {
                tracing::warn!(target: "api", %error, "api keys: not hearing key changes; asking the database on every request");
                wait = RELISTEN_AFTER;
            } else {
                tracing::debug!(target: "api", %error, "api keys: cannot listen for key changes yet");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RELISTEN_AFTER_MAX);
        }
    }

    /// Listens until the connection fails for good; returns why.
    async fn listen_once(&self) -> sqlx::Error {
        match self.hear().await {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }

    async fn hear(&self) -> Result<std::convert::Infallible, sqlx::Error> {
        let options = (*self.pool.connect_options()).clone();
        let own = PgPoolOptions::new().max_connections(1).idle_timeout(None).max_lifetime(None).connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&own).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(CHANNEL).await?;
        // Whatever changed before LISTEN took effect may have been cached: start afresh.
        self.forget_all();
        self.listening.store(true, Ordering::SeqCst);
        tracing::info!(target: "api", "api keys: hearing key changes; verified keys are kept in memory");
        loop {
            match listener.try_recv().await? {
                Some(notification) => self.forget(notification.payload()),
                // The connection was lost and made again: what was announced meanwhile is lost.
                None => self.forget_all(),
            }
        }
    }
}
