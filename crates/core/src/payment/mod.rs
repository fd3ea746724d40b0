//! The payment core: what an observed payment does to its invoice and the ledger, decided without
//! I/O. The stores load the facts ([`model`]), the plans decide ([`plan`], [`status`], [`split`]),
//! and the stores write the change in the caller's transaction.

pub mod model;
pub mod plan;
pub mod refund;
pub mod resolve;
pub mod speed;
pub mod split;
pub mod status;

pub use model::{InvoiceRow, ObservedPayment};
pub use plan::{plan_orphan, plan_payment, AppliedTo, BlockRef, PaymentChange, PaymentStatus, UnappliedReason, CARD_RAIL, CARD_RATE_SOURCE};
pub use speed::SpeedPolicy;
pub use split::{split_postings, CreatorShare, Splits};
pub use status::{evaluate, InvoiceStatus, Progress};
