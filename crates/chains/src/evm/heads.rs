//! New heads pushed over WebSocket (`eth_subscribe("newHeads")`), where a chain names a `ws`
//! endpoint: the follower wakes on a block the moment the node announces it, instead of at its
//! next poll of the tip.
//!
//! Pushed heads only say *when* to look: the follower still reads the tip and every block over
//! its JSON-RPC endpoints, so a lost, late or duplicated notification changes nothing but timing.
//! While the subscription is up the follower still polls, slowly ([`SAFETY_POLL_MS`]), in case
//! the socket goes quiet without closing; while it is down (refused, dropped, never up) the
//! follower polls at its usual pace and a background task reconnects with a growing backoff.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy::providers::{Provider, ProviderBuilder, WsConnect};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::config::RpcUrl;

/// While heads are pushed, the tip is still polled this often.
pub const SAFETY_POLL_MS: u64 = 4_000;
/// First pause before reconnecting a dropped subscription; it doubles up to
/// [`RECONNECT_MS_MAX`].
pub const RECONNECT_MS_MIN: u64 = 500;
pub const RECONNECT_MS_MAX: u64 = 30_000;

/// What the subscription task shares with the follower.
#[derive(Debug, Default)]
pub struct HeadFeed {
    /// Holds at most one wake-up: heads that arrive while the follower works collapse into one.
    arrived: Notify,
    live: AtomicBool,
    received: AtomicU64,
}

impl HeadFeed {
    /// Whether the subscription is up now.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// New heads received since start.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits for the next poll: until a head arrives or [`SAFETY_POLL_MS`] pass while heads are
    /// pushed, `poll` otherwise.
    pub async fn next_poll(&self, poll: Duration) {
        if !self.live() {
            return tokio::time::sleep(poll).await;
        }
        tokio::select! {
            () = self.arrived.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(SAFETY_POLL_MS).max(poll)) => {}
        }
    }

    fn head(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.arrived.notify_one();
    }
}

/// The subscription of one chain: its feed, and the task that keeps it up (ended on drop).
#[derive(Debug)]
pub struct Heads {
    feed: Arc<HeadFeed>,
    task: tokio::task::JoinHandle<()>,
}

impl Heads {
    /// Subscribes to `url`'s new heads in the background (on the current Tokio runtime).
    pub fn spawn(chain: &str, url: &RpcUrl) -> Self {
        let feed = Arc::new(HeadFeed::default());
        let task = tokio::spawn(keep_subscribed(chain.to_owned(), url.clone(), feed.clone()));
        Self { feed, task }
    }

    pub fn feed(&self) -> &HeadFeed {
        &self.feed
    }
}

impl Drop for Heads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes, forwards heads until the stream ends, and starts over after a pause.
async fn keep_subscribed(chain: String, url: RpcUrl, feed: Arc<HeadFeed>) {
    // Shown redacted: an endpoint's URL may carry its API key.
    let endpoint = url.to_string();
    let mut backoff_ms = RECONNECT_MS_MIN;
    loop {
        match subscribe(&chain, &url, &feed).await {
            Ok(()) => {
                tracing::warn!(target: "watcher", chain = %chain, endpoint = %endpoint, "new-heads subscription ended; polling until it is back");
                backoff_ms = RECONNECT_MS_MIN;
            }
            Err(error) => {
                tracing::warn!(target: "watcher", chain = %chain, endpoint = %endpoint, %error, backoff_ms, "new-heads subscription failed; polling");
            }
        }
        feed.live.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = backoff_ms.saturating_mul(2).min(RECONNECT_MS_MAX);
    }
}

/// One subscription, until its stream ends.
async fn subscribe(chain: &str, url: &RpcUrl, feed: &HeadFeed) -> Result<(), alloy::transports::TransportError> {
    // Reconnection is this module's (with its backoff, the follower polling meanwhile): a dropped
    // socket ends the stream at once rather than after the transport's own retries.
    let provider = ProviderBuilder::new().connect_ws(WsConnect::new(url.as_str()).with_max_retries(0)).await?;
    let mut heads = provider.subscribe_blocks().await?.into_stream();
    feed.live.store(true, Ordering::Relaxed);
    tracing::info!(target: "watcher", chain = %chain, endpoint = %url, "new heads pushed over WebSocket");
    while heads.next().await.is_some() {
        feed.head();
    }
    Ok(())
}
