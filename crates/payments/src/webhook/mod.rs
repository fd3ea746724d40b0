//! Events for merchants and their delivery as signed webhooks.
//!
//! Every event is written to the outbox in the same transaction as the change it announces, so an
//! event exists if and only if its change committed. A merchant registers endpoints
//! ([`endpoint`]); the [`dispatch`]er fans each event out to the merchant's matching endpoints and
//! POSTs it, signed ([`signature`]), with retries and backoff ([`retry`]), in order per endpoint,
//! logging every attempt (status code, timing and a coarse [`failure::ErrorClass`], nothing of the
//! response itself); [`events`] reads events and the log back and replays an event.

pub mod dispatch;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod failure;
pub mod retry;
pub mod secret;
pub mod signature;

pub use dispatch::{run_dispatcher, DispatchConfig, Dispatcher, PassReport};
pub use endpoint::{create_endpoint, delete_endpoint, list_endpoints, CreatedEndpoint, EndpointView};
pub use error::{Result, WebhookError};
pub use failure::ErrorClass;
pub use events::{deliveries, get_event, list_events, replay, AttemptView, DeliveryView};
pub use payrail_store::outbox::{self, emit, emit_all, OutboxEvent};
pub use secret::EndpointSecret;
pub use signature::{sign, verify, SignatureError, SIGNATURE_HEADER};
