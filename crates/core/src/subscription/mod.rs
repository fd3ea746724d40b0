//! Subscriptions: the pure rules of a plan's periods, a subscription's states and what a change of
//! plan in mid-period costs. The subscriptions store applies them; every time decision takes `now`
//! from the caller (a `Clock`), so months are tested in milliseconds.

pub mod cadence;
pub mod proration;
pub mod status;

pub use cadence::{Cadence, CadenceError, Interval};
pub use proration::{next_invoice, prorate, Carry, Proration};
pub use status::{Event, Refused, SubscriptionStatus};
