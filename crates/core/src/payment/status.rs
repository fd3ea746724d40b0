//! The invoice state machine, pure.
//!
//! ```text
//! open ──seen──▶ processing ──confirmed ≥ due──▶ paid ──more confirmed──▶ overpaid
//!   │  ◀─orphaned─┘   └──confirmed > due──────────────────────────────▶ overpaid
//!   └──expires_at passed, nothing pending──▶ expired
//! open/processing ──merchant──▶ void;  paid/overpaid ──refund──▶ refunded
//! any but void/refunded ──merchant marks it──▶ invalid (its payments held again as unapplied)
//! ```
//! Paid and overpaid are never left for expired or open by [`evaluate`]: a mined payment never sends
//! an invoice back. The one way back is [`after_reversal`]: a credited payment whose block left the
//! chain (a reorg deeper than the confirmation policy) no longer counts, and the invoice says what
//! still counts — `processing` if another payment is on its way, `open` (or `expired` past its
//! expiry) if nothing is. An expired invoice whose own payment is mined again after such a reorg
//! becomes paid again (new payments to an expired invoice are unapplied, so only a payment the
//! invoice counted before can do this). Whether enough arrived is judged in the invoice's currency at the quote locked when the
//! invoice was created, with the invoice's underpayment tolerance.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::money::{Amount, BPS_WHOLE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Open,
    Processing,
    Paid,
    Overpaid,
    Expired,
    Refunded,
    Void,
    /// The merchant did not accept what arrived: its payments are held on the unapplied balance.
    Invalid,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Processing => "processing",
            Self::Paid => "paid",
            Self::Overpaid => "overpaid",
            Self::Expired => "expired",
            Self::Refunded => "refunded",
            Self::Void => "void",
            Self::Invalid => "invalid",
        }
    }

    /// Whether a new payment can still count toward this invoice.
    pub fn accepts_payments(self) -> bool {
        matches!(self, Self::Open | Self::Processing | Self::Paid | Self::Overpaid)
    }

    /// Whether the invoice counts as paid (what a paid invoice delivers is due).
    pub fn is_paid(self) -> bool {
        matches!(self, Self::Paid | Self::Overpaid)
    }

    /// The webhook event that announces entering this status.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Open => "invoice.open",
            Self::Processing => "invoice.processing",
            Self::Paid => "invoice.paid",
            Self::Overpaid => "invoice.overpaid",
            Self::Expired => "invoice.expired",
            Self::Refunded => "invoice.refunded",
            Self::Void => "invoice.void",
            Self::Invalid => "invoice.invalid",
        }
    }
}

impl fmt::Display for InvoiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InvoiceStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "open" => Self::Open,
            "processing" => Self::Processing,
            "paid" => Self::Paid,
            "overpaid" => Self::Overpaid,
            "expired" => Self::Expired,
            "refunded" => Self::Refunded,
            "void" => Self::Void,
            "invalid" => Self::Invalid,
            other => return Err(format!("unknown invoice status {other:?}")),
        })
    }
}

/// What has arrived for an invoice, valued in its currency's minor units at the locked quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub due: Amount,
    pub tolerance_bps: u32,
    /// Value of payments that met their confirmation policy.
    pub confirmed: Amount,
    /// Value of payments seen but not yet confirmed.
    pub pending: Amount,
    /// Whether `expires_at` has passed.
    pub expired: bool,
}

impl Progress {
    /// The least confirmed value that counts as paid: `due` less the tolerance, rounded in the
    /// merchant's favour (the tolerance is rounded down).
    pub fn paid_threshold(&self) -> Amount {
        let tolerance_bps = self.tolerance_bps.min(BPS_WHOLE);
        let slack = crate::money::mul_div(
            self.due,
            Amount::from_u64(u64::from(tolerance_bps)),
            Amount::from_u64(u64::from(BPS_WHOLE)),
            crate::money::Rounding::Down,
        )
        .unwrap_or(Amount::ZERO);
        self.due.saturating_sub(slack)
    }

    /// What is still missing for the invoice to be paid, in full (tolerance not subtracted).
    pub fn remaining(&self) -> Amount {
        self.due.saturating_sub(self.confirmed)
    }
}

/// A paid invoice's status: overpaid when more than was due has been confirmed.
fn settled(progress: &Progress) -> InvoiceStatus {
    if progress.confirmed > progress.due {
        InvoiceStatus::Overpaid
    } else {
        InvoiceStatus::Paid
    }
}

/// The status an invoice moves to, given where it is and what has arrived.
pub fn evaluate(current: InvoiceStatus, progress: &Progress) -> InvoiceStatus {
    use InvoiceStatus::*;
    match current {
        Refunded | Void | Invalid | Overpaid => current,
        // Only a payment the invoice counted before (reversed by a reorg, now back) adds here.
        Expired => {
            if progress.confirmed >= progress.paid_threshold() {
                settled(progress)
            } else if !progress.pending.is_zero() {
                Processing
            } else {
                Expired
            }
        }
        Paid => settled(progress),
        Open | Processing => {
            if progress.confirmed >= progress.paid_threshold() {
                settled(progress)
            } else if !progress.pending.is_zero() {
                Processing
            } else if progress.expired {
                Expired
            } else {
                Open
            }
        }
    }
}

/// The status of a paid invoice after one of its credited payments was reversed (its block left
/// the chain): what the remaining payments say, judged as if from `open`.
pub fn after_reversal(progress: &Progress) -> InvoiceStatus {
    evaluate(InvoiceStatus::Open, progress)
}

#[cfg(test)]
mod tests {
    use super::InvoiceStatus::*;
    use super::*;
    use proptest::prelude::*;

    fn progress(due: u64, confirmed: u64, pending: u64, expired: bool) -> Progress {
        Progress {
            due: Amount::from_u64(due),
            tolerance_bps: 0,
            confirmed: Amount::from_u64(confirmed),
            pending: Amount::from_u64(pending),
            expired,
        }
    }

    #[test]
    fn each_status_is_announced_by_its_own_event() {
        for status in [Open, Processing, Paid, Overpaid, Expired, Refunded, Void, Invalid] {
            assert_eq!(status.event_type(), format!("invoice.{}", status.as_str()));
            assert_eq!(status.as_str().parse::<InvoiceStatus>(), Ok(status));
        }
    }

    #[test]
    fn lifecycle() {
        assert_eq!(evaluate(Open, &progress(100, 0, 0, false)), Open);
        assert_eq!(evaluate(Open, &progress(100, 0, 100, false)), Processing);
        assert_eq!(evaluate(Processing, &progress(100, 100, 0, false)), Paid);
        assert_eq!(evaluate(Processing, &progress(100, 101, 0, false)), Overpaid);
        assert_eq!(evaluate(Paid, &progress(100, 150, 0, true)), Overpaid);
        assert_eq!(evaluate(Open, &progress(100, 0, 0, true)), Expired);
        // Partial payment, time over: expired keeps the partial amount (the caller keeps the rows).
        assert_eq!(evaluate(Open, &progress(100, 40, 0, true)), Expired);
        // A payment seen in time keeps the invoice processing past expiry until it confirms.
        assert_eq!(evaluate(Processing, &progress(100, 0, 100, true)), Processing);
        // An orphaned payment sends processing back to open.
        assert_eq!(evaluate(Processing, &progress(100, 0, 0, false)), Open);
        // An expired invoice stays expired unless its own reorged payment comes back.
        assert_eq!(evaluate(Expired, &progress(100, 40, 0, true)), Expired);
        assert_eq!(evaluate(Expired, &progress(100, 0, 100, true)), Processing);
        assert_eq!(evaluate(Expired, &progress(100, 100, 0, true)), Paid);
    }

    #[test]
    fn a_reversed_credit_leaves_paid_for_what_still_counts() {
        assert_eq!(after_reversal(&progress(100, 0, 0, false)), Open);
        assert_eq!(after_reversal(&progress(100, 0, 0, true)), Expired);
        assert_eq!(after_reversal(&progress(100, 0, 50, true)), Processing);
        assert_eq!(after_reversal(&progress(100, 60, 0, false)), Open, "a partial payment alone is not paid");
        assert_eq!(after_reversal(&progress(100, 100, 0, false)), Paid, "another payment still covers it");
    }

    #[test]
    fn tolerance_accepts_small_shortfalls_only() {
        let mut p = progress(10_000, 9_950, 0, false);
        p.tolerance_bps = 50; // 0.5 %
        assert_eq!(evaluate(Open, &p), Paid);
        p.confirmed = Amount::from_u64(9_949);
        assert_eq!(evaluate(Open, &p), Open);
    }

    fn any_status() -> impl Strategy<Value = InvoiceStatus> {
        prop_oneof![
            Just(Open),
            Just(Processing),
            Just(Paid),
            Just(Overpaid),
            Just(Expired),
            Just(Refunded),
            Just(Void)
        ]
    }

    proptest! {
        #[test]
        fn paid_is_never_left_for_an_earlier_state(
            start in any_status(), due in 1u64..1_000_000, confirmed in 0u64..2_000_000,
            pending in 0u64..2_000_000, expired: bool,
        ) {
            let next = evaluate(start, &progress(due, confirmed, pending, expired));
            if matches!(start, Paid | Overpaid) {
                prop_assert!(matches!(next, Paid | Overpaid));
            }
            if matches!(start, Refunded | Void) {
                prop_assert_eq!(next, start);
            }
            if start == Expired {
                prop_assert!(matches!(next, Expired | Processing | Paid | Overpaid));
                if matches!(next, Paid | Overpaid) {
                    prop_assert!(confirmed >= due);
                }
            }
            if matches!(next, Paid | Overpaid) && matches!(start, Open | Processing) {
                prop_assert!(confirmed >= due);
            }
        }
    }
}
