//! Invoices: quotes at a locked rate, the status state machine, and the application of observed
//! payments to invoices and the ledger in one transaction — decided by the pure payment core
//! ([`plan`]), written by its store ([`store`]), entered through [`apply`].

pub mod apply;
pub use payrail_core::payment::{plan, status};
pub mod catalog;
pub mod create;
pub mod error;
pub mod expire;
pub mod list;
#[macro_use]
pub mod model;
pub mod refund;
pub mod resolve;
pub mod split;
pub mod store;
pub mod unapplied;
pub mod view;
pub mod void;

pub use apply::{apply_card_payment, apply_payment, apply_payments, orphan_payment, Applied, BlockRef, CardPayment, ObservedPayment};
pub use plan::{plan_orphan, plan_payment, AppliedTo, PaymentChange, PaymentStatus, UnappliedReason, CARD_RAIL, CARD_RATE_SOURCE};
pub use catalog::{AssetCatalog, CatalogAsset, DepositScheme};
pub use create::{create_invoice, create_invoice_with_splits, CreateInvoice, InvoicePolicy};
pub use split::{CreatorShare, Splits};
pub use error::{InvoiceError, Result};
pub use expire::{expire_due, refresh};
pub use model::{InvoiceView, PaymentOptionView, PaymentView};
pub use view::{load_current_view, load_named_view, load_view};
pub use refund::mark_refunded;
pub use resolve::{apply_held_payment, invalidate_invoice, settle_invoice};
pub use list::{list_invoices, ListFilter};
pub use status::{evaluate, InvoiceStatus, Progress};
pub use unapplied::{list_unapplied, UnappliedPayment};
pub use void::void_invoice;
