//! A subscription's states and the events that move it. Anything not listed is refused, so a late
//! or repeated event (a payment for a period already renewed, a cancel of a cancelled
//! subscription) changes nothing.
//!
//! ```text
//! incomplete ──first invoice paid──▶ active ◀──renewal paid── past_due ──grace over──▶ canceled
//!     │                              ▲   │ └──period ended unpaid──▶┘
//!     └──first invoice unpaid──▶ expired │ └─pause─▶ paused ─resume─┘
//! trialing ──renewal paid──▶ active;  trialing ──trial ended unpaid──▶ past_due
//! any live state ──cancel (now, or at period end)──▶ canceled
//! ```

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    /// Created without a trial; its first invoice is not paid yet. No entitlements.
    Incomplete,
    Trialing,
    Active,
    /// The period ended without the renewal paid; in its grace period.
    PastDue,
    /// Stopped by the merchant; the paid time left is kept for when it resumes.
    Paused,
    /// Ended: cancelled, or its grace period ran out. Final.
    Canceled,
    /// Its first invoice was never paid. Final.
    Expired,
}

/// What happens to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The invoice of the period that starts next (or of the first period) was paid.
    Paid,
    /// The first invoice expired or was voided unpaid.
    FirstUnpaid,
    /// The current period (or trial) ended and the next one is not paid.
    PeriodEndedUnpaid,
    /// The grace period after an unpaid period end ran out.
    GraceEnded,
    /// Cancelled at once, or at the end of the period when that was asked for.
    Cancel,
    Pause,
    Resume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a {status} subscription cannot {event}")]
pub struct Refused {
    pub status: &'static str,
    pub event: &'static str,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "be paid",
            Self::FirstUnpaid => "lapse unpaid",
            Self::PeriodEndedUnpaid => "fall past due",
            Self::GraceEnded => "end its grace period",
            Self::Cancel => "be canceled",
            Self::Pause => "be paused",
            Self::Resume => "be resumed",
        }
    }
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Paused => "paused",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Incomplete, Self::Trialing, Self::Active, Self::PastDue, Self::Paused, Self::Canceled, Self::Expired]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Canceled and expired subscriptions never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Canceled | Self::Expired)
    }

    /// Whether the plan's entitlements apply in this state (past due: only when the plan keeps
    /// them through its grace period — the caller's to add).
    pub fn grants_entitlements(self) -> bool {
        matches!(self, Self::Trialing | Self::Active)
    }

    /// Where `event` takes a subscription in this state.
    pub fn on(self, event: Event) -> Result<Self, Refused> {
        use Event as E;
        use SubscriptionStatus as S;
        let next = match (self, event) {
            (S::Incomplete | S::Trialing | S::Active | S::PastDue, E::Paid) => S::Active,
            (S::Incomplete, E::FirstUnpaid) => S::Expired,
            (S::Trialing | S::Active, E::PeriodEndedUnpaid) => S::PastDue,
            (S::PastDue, E::GraceEnded) => S::Canceled,
            (S::Incomplete | S::Trialing | S::Active | S::PastDue | S::Paused, E::Cancel) => S::Canceled,
            (S::Active, E::Pause) => S::Paused,
            (S::Paused, E::Resume) => S::Active,
            (status, event) => return Err(Refused { status: status.as_str(), event: event.as_str() }),
        };
        Ok(next)
    }
}

impl std::fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use SubscriptionStatus as S;

    const ALL: [S; 7] = [S::Incomplete, S::Trialing, S::Active, S::PastDue, S::Paused, S::Canceled, S::Expired];
    const EVENTS: [E; 7] = [E::Paid, E::FirstUnpaid, E::PeriodEndedUnpaid, E::GraceEnded, E::Cancel, E::Pause, E::Resume];

    #[test]
    fn the_life_of_a_subscription() {
        let trial = S::Trialing.on(E::Paid).unwrap();
        assert_eq!(trial, S::Active);
        let due = trial.on(E::PeriodEndedUnpaid).unwrap();
        assert_eq!(due, S::PastDue);
        assert_eq!(due.on(E::Paid), Ok(S::Active));
        assert_eq!(due.on(E::GraceEnded), Ok(S::Canceled));
        assert_eq!(S::Incomplete.on(E::FirstUnpaid), Ok(S::Expired));
        assert_eq!(S::Active.on(E::Pause).and_then(|s| s.on(E::Resume)), Ok(S::Active));
    }

    #[test]
    fn final_states_refuse_everything_and_names_round_trip() {
        for status in ALL {
            assert_eq!(S::parse(status.as_str()), Some(status));
            for event in EVENTS {
                if status.is_final() {
                    assert!(status.on(event).is_err(), "{status} {event:?}");
                }
            }
        }
        assert_eq!(S::Paused.on(E::Paid).unwrap_err().to_string(), "a paused subscription cannot be paid");
        assert!(S::Paused.on(E::PeriodEndedUnpaid).is_err());
        assert!(S::Incomplete.on(E::Pause).is_err());
    }

    #[test]
    fn only_trialing_and_active_grant_by_themselves() {
        let granting: Vec<_> = ALL.into_iter().filter(|s| s.grants_entitlements()).collect();
        assert_eq!(granting, vec![S::Trialing, S::Active]);
    }
}
