//! How long a plan's periods are, and where each one ends.
//!
//! Period boundaries are counted from an anchor, never from the previous boundary: a monthly plan
//! anchored on January 31 renews on February 28, March 31, April 30 — it does not drift to the 28th
//! after February. Periods follow each other without gaps whatever time a renewal is paid at.

use chrono::{DateTime, Duration, Months, Utc};
use thiserror::Error;

/// The unit of a plan's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    /// For tests and trials of a day; a day is 24 hours of UTC.
    Day,
    Week,
    Month,
    Year,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            "month" => Some(Self::Month),
            "year" => Some(Self::Year),
            _ => None,
        }
    }

    /// The longest `interval_count` accepted: a period is at most three years.
    pub fn count_max(self) -> u32 {
        match self {
            Self::Day => 1_095,
            Self::Week => 156,
            Self::Month => 36,
            Self::Year => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CadenceError {
    #[error("interval_count must be 1 to {max} for {interval} periods")]
    Count { interval: &'static str, max: u32 },
    #[error("a period boundary falls outside the calendar")]
    OutOfRange,
}

/// A plan's period: `count` of `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    interval: Interval,
    count: u32,
}

impl Cadence {
    pub fn new(interval: Interval, count: u32) -> Result<Self, CadenceError> {
        if count == 0 || count > interval.count_max() {
            return Err(CadenceError::Count { interval: interval.as_str(), max: interval.count_max() });
        }
        Ok(Self { interval, count })
    }

    pub fn interval(self) -> Interval {
        self.interval
    }

    pub fn count(self) -> u32 {
        self.count
    }

    /// The `k`th boundary after `anchor`: the end of the `k`th period of a schedule that started
    /// there (`k` = 0 is the anchor itself). Month and year periods keep the anchor's day of month
    /// where the month has it, and take the month's last day where it does not.
    pub fn boundary(self, anchor: DateTime<Utc>, k: u32) -> Result<DateTime<Utc>, CadenceError> {
        let units = self.count.checked_mul(k).ok_or(CadenceError::OutOfRange)?;
        let at = match self.interval {
            Interval::Day => Duration::try_days(i64::from(units)).and_then(|d| anchor.checked_add_signed(d)),
            Interval::Week => Duration::try_weeks(i64::from(units)).and_then(|d| anchor.checked_add_signed(d)),
            Interval::Month => anchor.checked_add_months(Months::new(units)),
            Interval::Year => units.checked_mul(12).and_then(|m| anchor.checked_add_months(Months::new(m))),
        };
        at.ok_or(CadenceError::OutOfRange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 9, 30, 0).single().unwrap()
    }

    #[test]
    fn monthly_periods_keep_the_anchor_day_and_clamp_to_short_months() {
        let monthly = Cadence::new(Interval::Month, 1).unwrap();
        let anchor = at(2027, 1, 31);
        let ends: Vec<_> = (1..=4).map(|k| monthly.boundary(anchor, k).unwrap()).collect();
        assert_eq!(ends, vec![at(2027, 2, 28), at(2027, 3, 31), at(2027, 4, 30), at(2027, 5, 31)]);
        assert_eq!(Cadence::new(Interval::Year, 1).unwrap().boundary(at(2028, 2, 29), 1).unwrap(), at(2029, 2, 28));
        assert_eq!(Cadence::new(Interval::Week, 2).unwrap().boundary(anchor, 1).unwrap(), at(2027, 2, 14));
        assert_eq!(Cadence::new(Interval::Day, 1).unwrap().boundary(anchor, 3).unwrap(), at(2027, 2, 3));
    }

    #[test]
    fn counts_are_bounded_per_interval() {
        assert!(Cadence::new(Interval::Month, 0).is_err());
        assert!(Cadence::new(Interval::Month, 36).is_ok());
        assert_eq!(Cadence::new(Interval::Month, 37), Err(CadenceError::Count { interval: "month", max: 36 }));
        assert!(Cadence::new(Interval::Year, 4).is_err());
        assert_eq!(Interval::parse("week"), Some(Interval::Week));
        assert_eq!(Interval::parse("fortnight"), None);
    }

    proptest! {
        /// Boundaries only move forward, each period is within the interval's shortest and longest
        /// length, and no period is skipped or repeated.
        #[test]
        fn periods_are_contiguous_and_of_sane_length(
            day in 1u32..=31, month in 1u32..=12, interval in 0usize..4, count in 1u32..=3, k in 0u32..60,
        ) {
            let interval = [Interval::Day, Interval::Week, Interval::Month, Interval::Year][interval];
            let cadence = Cadence::new(interval, count).unwrap();
            let anchor = Utc.with_ymd_and_hms(2027, month, 1, 0, 0, 0).single().unwrap() + Duration::days(i64::from(day - 1));
            let start = cadence.boundary(anchor, k).unwrap();
            let end = cadence.boundary(anchor, k + 1).unwrap();
            let days = (end - start).num_days();
            let c = i64::from(count);
            let (low, high) = match interval {
                Interval::Day => (c, c),
                Interval::Week => (7 * c, 7 * c),
                Interval::Month => (28 * c - 3, 31 * c),
                Interval::Year => (365 * c - 1, 366 * c),
            };
            prop_assert!(days >= low && days <= high, "{interval:?}×{count} period of {days} days");
        }
    }
}
