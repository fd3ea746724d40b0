//! Chain watchers: one [`follower::Follower`] per configured chain turns what the chain says into
//! observed payments. The chain families ([`evm`], [`bitcoin`]) only fetch, through
//! [`source::ChainSource`]; the follower owns the lock, the cursor ([`cursor`]), fork detection and
//! the one-transaction commit; [`reorg`] decides, without I/O, what a step does to each payment.

pub use payrail_core::chain::reorg;

use payrail_config as config;
use payrail_core::{clock, ids, metrics, money};
use payrail_payments::invoice;
use payrail_payments::refund as payments_refund;
use payrail_rates as rates;
use payrail_store::{db, ledger};

pub mod bitcoin;
pub mod cursor;
pub mod evm;
pub mod follower;
pub mod health;
pub mod pricing;
pub mod source;
pub mod store;
pub mod summary;
pub mod watch;

pub use follower::{ChainEvent, FollowError, Follower};
pub use source::ChainSource;
