//! The deposit addresses a follower watches, kept in memory so that a step costs the same with ten
//! open invoices as with a hundred thousand.
//!
//! The whole set is read when the follower starts and again every [`RELOAD_INTERVAL_MS`] (which is
//! also when addresses that stopped being watchable are dropped); between reloads a step reads only
//! the addresses written since the previous read ([`store::written_since`]), almost always none.
//! Refunds the merchant still has to pay (Bitcoin) are few and re-read each step. Sources keep
//! their own lookup ([`Index`]: their key to a position in the list) and extend it with what was
//! added, instead of rebuilding it. Only addresses are held, once each: a source looks up the
//! invoice of an address when it finds a payment to it ([`store::invoices_of`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::source::Watched;
use super::store::{self, Written};

/// How often the whole set is read again. Until then an invoice that stopped being watchable (paid
/// or expired past [`store::WATCH_AFTER_EXPIRY_S`], with nothing waiting) stays watched: a payment
/// to it in that time is recorded as any late payment is.
pub const RELOAD_INTERVAL_MS: u64 = 3_600_000;

/// What a follower watches; see the module docs.
#[derive(Debug, Default)]
pub struct WatchList {
    /// Changes whenever the deposits are replaced rather than extended (a reload).
    epoch: u64,
    deposits: Vec<Box<str>>,
    /// Addresses written by transactions at or after `since`, with their writer: the rows the next
    /// read may return again (older ones it cannot), so that none is added twice.
    recent: HashMap<Box<str>, u64>,
    refunds: Vec<Watched>,
    /// The oldest transaction still running at the previous read: rows it or later ones wrote may
    /// not have been visible then.
    since: Option<u64>,
    loaded_at: Option<Instant>,
}

impl WatchList {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Deposit addresses, in the order they were added within this epoch.
    pub fn deposits(&self) -> &[Box<str>] {
        &self.deposits
    }

    /// Payers' addresses of refunds still to be paid.
    pub fn refunds(&self) -> &[Watched] {
        &self.refunds
    }

    /// Deposit addresses and refunds.
    pub fn len(&self) -> usize {
        self.deposits.len() + self.refunds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Brings the list up to date: a full read when due, else what was written since the last read.
    pub async fn refresh(&mut self, pool: &PgPool, chain: &str, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        let due = self.loaded_at.is_none_or(|at| at.elapsed() >= Duration::from_millis(RELOAD_INTERVAL_MS));
        if due {
            let Written { deposits, since } = store::watched(pool, chain, now).await?;
            self.epoch += 1;
            self.recent = deposits.iter().filter(|(_, tx)| *tx >= since).map(|(a, tx)| (a.clone(), *tx)).collect();
            self.deposits = deposits.into_iter().map(|(a, _)| a).collect();
            self.since = Some(since);
            self.loaded_at = Some(Instant::now());
        } else if let Some(since) = self.since {
            let Written { deposits, since: next } = store::written_since(pool, chain, since).await?;
            for (address, tx) in deposits {
                if !self.recent.contains_key(&address) {
                    self.recent.insert(address.clone(), tx);
                    self.deposits.push(address);
                }
            }
            // Rows written before the next read's start are never returned again.
            self.recent.retain(|_, tx| *tx >= next);
            self.since = Some(next);
        }
        self.refunds = store::refunds_due(pool, chain).await?;
        Ok(())
    }
}

/// What [`Index::update`] changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Update<K> {
    Added(Vec<K>),
    Rebuilt,
}

/// A source's lookup from its own key (a parsed address, a script hash) to a deposit of the
/// list, extended with the deposits a refresh added and rebuilt only when the list's epoch changes.
#[derive(Debug)]
pub struct Index<K> {
    epoch: u64,
    indexed: usize,
    by_key: HashMap<K, u32>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self { epoch: 0, indexed: 0, by_key: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone> Index<K> {
    /// Catches up with `list`; `key` returns `None` for an address the source cannot read (it is
    /// passed to `unreadable`, once). Says what changed: the keys added, or that the index was
    /// rebuilt (a new epoch: every key is new).
    pub fn update(&mut self, list: &WatchList, key: impl Fn(&str) -> Option<K>, mut unreadable: impl FnMut(&str)) -> Update<K> {
        let rebuilt = self.epoch != list.epoch();
        if rebuilt {
            self.epoch = list.epoch();
            self.indexed = 0;
            self.by_key = HashMap::with_capacity(list.deposits().len());
        }
        let mut added = Vec::new();
        for (position, address) in list.deposits().iter().enumerate().skip(self.indexed) {
            let Ok(position) = u32::try_from(position) else { break };
            match key(address) {
                Some(k) => {
                    if !rebuilt {
                        added.push(k.clone());
                    }
                    self.by_key.insert(k, position);
                }
                None => unreadable(address),
            }
        }
        self.indexed = list.deposits().len();
        if rebuilt {
            Update::Rebuilt
        } else {
            Update::Added(added)
        }
    }

    /// The deposit address `key` names in `list` (the list this index was last updated with).
    pub fn get<'a>(&self, list: &'a WatchList, key: &K) -> Option<&'a str> {
        let position = usize::try_from(*self.by_key.get(key)?).ok()?;
        list.deposits().get(position).map(|a| &**a)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.by_key.keys()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
