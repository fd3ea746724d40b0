//! Revenue splits: which creators share in each payment of an invoice, and the platform's fee.
//! [`split_postings`] turns a split into the credit postings of one payment's entry: each creator
//! and the platform get their share rounded down, the rounding dust of the allocated part goes to
//! `revenue:rounding`, and the merchant gets the rest.

use serde::{Deserialize, Serialize};

use crate::ledger::AccountCode;
use crate::money::{split_bps, Amount, ConvertError, BPS_WHOLE};

/// Why a split was refused (what needs no database to check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SplitInvalid(pub String);

/// Most creators one split may name.
pub const SPLIT_CREATORS_MAX: usize = 50;

/// One creator's share, in basis points of each payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatorShare {
    /// The creator id, `cr_…`.
    pub creator: String,
    pub bps: u32,
}

/// The creators' shares and the platform fee of an invoice or a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Splits {
    #[serde(default)]
    pub splits: Vec<CreatorShare>,
    #[serde(default)]
    pub platform_fee_bps: u32,
}

impl Splits {
    pub fn is_empty(&self) -> bool {
        self.splits.is_empty() && self.platform_fee_bps == 0
    }

    /// Checks what needs no database: bps in range, no creator twice, the total at most the whole.
    pub fn validate(&self) -> Result<(), SplitInvalid> {
        let invalid = SplitInvalid;
        if self.splits.len() > SPLIT_CREATORS_MAX {
            return Err(invalid(format!("at most {SPLIT_CREATORS_MAX} creators")));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut total = u64::from(self.platform_fee_bps);
        for share in &self.splits {
            if !crate::ids::is_id(&share.creator, "cr") {
                return Err(invalid(format!("{:?} is not a creator id", share.creator)));
            }
            if share.bps == 0 || share.bps > BPS_WHOLE {
                return Err(invalid(format!("bps of {} must be 1..={BPS_WHOLE}", share.creator)));
            }
            if !seen.insert(share.creator.as_str()) {
                return Err(invalid(format!("{} is named twice", share.creator)));
            }
            total += u64::from(share.bps);
        }
        if total > u64::from(BPS_WHOLE) {
            return Err(invalid(format!(
                "creator bps plus platform_fee_bps add up to {total}, more than {BPS_WHOLE}"
            )));
        }
        Ok(())
    }
}

/// The credit side of a payment of `amount` under `splits`: (account, amount) pairs, zero amounts
/// left out, summing to `amount` exactly. Creators and the platform get floor(amount × bps / 10000);
/// `revenue:rounding` gets the dust between the allocated part, floor(amount × Σbps / 10000), and
/// the sum of those shares; the merchant gets the rest.
pub fn split_postings(merchant: AccountCode, amount: Amount, splits: &Splits) -> Result<Vec<(AccountCode, Amount)>, ConvertError> {
    let mut bps: Vec<u32> = splits.splits.iter().map(|s| s.bps).collect();
    bps.push(splits.platform_fee_bps);
    let shares = split_bps(amount, &bps)?;
    let allocated_bps: u32 = bps.iter().sum();
    let allocated = split_bps(amount, &[allocated_bps])?;
    let allocated_total = allocated.shares.first().copied().unwrap_or(Amount::ZERO);
    let shares_total = Amount::checked_sum(shares.shares.iter().copied()).unwrap_or(Amount::ZERO);
    let dust = allocated_total.checked_sub(shares_total).unwrap_or(Amount::ZERO);
    let rest = amount.checked_sub(allocated_total).unwrap_or(Amount::ZERO);

    let mut out = Vec::with_capacity(bps.len() + 2);
    for (share, value) in splits.splits.iter().zip(&shares.shares) {
        out.push((AccountCode::creator(&share.creator), *value));
    }
    if let Some(fee) = shares.shares.last() {
        out.push((AccountCode::platform_fees(), *fee));
    }
    out.push((AccountCode::rounding(), dust));
    out.push((merchant, rest));
    out.retain(|(_, value)| !value.is_zero());
    Ok(out)
}
