//! Creator payouts: balances from revenue splits are paid in batches through the `PayoutBatcher`
//! contract, from the hot wallet, exactly once.
//!
//! The flow: a run ([`runner::PayoutService::run`]) picks creators above the threshold and writes
//! `po_…` batches, moving their balances to `liabilities:payouts_in_flight` in the same
//! transaction; the one executor ([`runner::run_executor`]) signs, stores and sends each batch's
//! transaction, replaces it when stuck, waits for the chain's confirmations and settles the ledger
//! (`payouts_in_flight` → the chain's asset account, gas → `expenses:network_fees`) — or, when the
//! batch is refused, reverted or dropped, returns every balance. The contract refuses a batch id it
//! has paid, and the signed bytes are stored before they are broadcast, so no crash can pay twice.

use payrail_chains as chain;
use payrail_config as config;
use payrail_core::{clock, ids, metrics, money};
use payrail_payments::creator as payments_creator;
use payrail_payments::refund as payments_refund;
use payrail_payments::webhook;
use payrail_rates as rates;
use payrail_store::{db, ledger};

pub mod error;
pub mod netting;
pub mod plan;
pub mod refund;
pub mod runner;
pub mod sender;
pub mod settlement;
pub mod store;

pub use error::{PayoutError, Result};
pub use plan::SkipReason;
pub use runner::{drive, run_executor, try_lock_executor, PayoutService, RunRequest, RunSummary, SkippedView};
pub use sender::{PayoutSender, Progress};
pub use settlement::{PayoutAddress, Schedule, SettlementRequest, SettlementSchedule};
pub use store::{CreatorPayoutView, PayoutItemView, PayoutView};
