//! A signed amount, for postings (debit positive, credit negative) and for balances of accounts that
//! are allowed to go negative. The magnitude is an exact [`Amount`].

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::money::Amount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignedAmount {
    negative: bool,
    magnitude: Amount,
}

impl SignedAmount {
    pub const ZERO: Self = Self { negative: false, magnitude: Amount::ZERO };

    pub fn positive(magnitude: Amount) -> Self {
        Self { negative: false, magnitude }
    }

    pub fn negative(magnitude: Amount) -> Self {
        Self { negative: !magnitude.is_zero(), magnitude }
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    pub fn magnitude(&self) -> Amount {
        self.magnitude
    }

    pub fn negated(self) -> Self {
        if self.negative {
            Self::positive(self.magnitude)
        } else {
            Self::negative(self.magnitude)
        }
    }

    /// Exact sum; `None` only when a magnitude would pass 2^256.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        if self.negative == other.negative {
            let magnitude = self.magnitude.checked_add(other.magnitude)?;
            return Some(Self { negative: self.negative && !magnitude.is_zero(), magnitude });
        }
        Some(match self.magnitude.cmp(&other.magnitude) {
            Ordering::Equal => Self::ZERO,
            Ordering::Greater => Self {
                negative: self.negative,
                magnitude: self.magnitude.checked_sub(other.magnitude)?,
            },
            Ordering::Less => Self {
                negative: other.negative,
                magnitude: other.magnitude.checked_sub(self.magnitude)?,
            },
        })
    }
}

impl fmt::Display for SignedAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            write!(f, "-{}", self.magnitude)
        } else {
            write!(f, "{}", self.magnitude)
        }
    }
}

impl FromStr for SignedAmount {
    type Err = crate::money::AmountError;

    /// Parses the integer text PostgreSQL gives for a NUMERIC(78,0) (`-123`, `0`, `42`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix('-') {
            Some(rest) => Ok(Self::negative(rest.parse()?)),
            None => Ok(Self::positive(s.parse()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SignedAmount {
        v.parse().expect("test literal")
    }

    #[test]
    fn sums_across_signs() {
        assert_eq!(s("5").checked_add(s("-7")), Some(s("-2")));
        assert_eq!(s("-5").checked_add(s("7")), Some(s("2")));
        assert_eq!(s("-5").checked_add(s("5")), Some(SignedAmount::ZERO));
        assert_eq!(s("-5").checked_add(s("-5")), Some(s("-10")));
        assert_eq!(s("-0"), SignedAmount::ZERO);
        assert_eq!(s("-12").to_string(), "-12");
        assert_eq!(s("-12").negated(), s("12"));
    }
}
