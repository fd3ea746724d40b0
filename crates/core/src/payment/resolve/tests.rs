use chrono::{DateTime, Utc};

use super::*;
use crate::ledger::AccountCode;
use crate::money::Fiat;
use crate::payment::plan::{QuotedAsset, Rail, UnappliedReason};
use crate::payment::split::{CreatorShare, Splits};

const USDC: &str = "eip155:137/erc20:0x3c499c542cef5e3811e1192ce70d8cc03d5c3359";
const USDT: &str = "eip155:137/erc20:0xc2132d05d31c914a87c6611c10748aeb04b58e8f";
const TX: &str = "eip155:137:0xabc:0";

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(minute)
}

/// 10.00 USD, quoted as 10 USDC; expires at minute 60.
fn invoice(id: &str, status: InvoiceStatus) -> InvoiceRow {
    InvoiceRow {
        id: id.to_owned(),
        merchant_id: "mer_1".to_owned(),
        status,
        currency: Fiat::USD,
        amount_minor: Amount::from_u64(1_000),
        tolerance_bps: 0,
        expires_at: at(60),
    }
}

fn quote(confirmed: u64) -> Quote {
    Quote {
        assets: vec![QuotedAsset {
            asset: USDC.to_owned(),
            quoted: Amount::from_u64(10_000_000),
            confirmed: Amount::from_u64(confirmed),
            pending: Amount::ZERO,
        }],
        splits: Some(Splits {
            splits: vec![CreatorShare { creator: "cr_1".to_owned(), bps: 7_000 }],
            platform_fee_bps: 1_000,
        }),
    }
}

/// A late payment of `amount` in `asset`, held and credited (entry 7), never reversed before.
fn held(asset: &str, amount: u64) -> StoredPayment {
    StoredPayment {
        id: "pay_1".to_owned(),
        invoice_id: "inv_own".to_owned(),
        applied_invoice_id: None,
        rail: Rail::Chain("eip155:137".parse().expect("a CAIP-2 id")),
        tx_ref: TX.to_owned(),
        asset: asset.to_owned(),
        amount: Amount::from_u64(amount),
        status: PaymentStatus::Confirmed,
        applied_to: AppliedTo::Unapplied,
        confirmations: 5,
        confirmations_required: 3,
        block_hash: Some("0xb".to_owned()),
        ledger_entry_id: Some(7),
        credits_reversed: Some(0),
    }
}

fn refused(result: Result<PaymentChange>) -> &'static str {
    match result {
        Err(PlanError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_held_payment_applied_to_an_expired_invoice_pays_it_through_a_rebooked_credit() {
    let target = invoice("inv_own", InvoiceStatus::Expired);
    let change = plan_application(&target, &held(USDC, 10_000_000), &quote(0), false, at(90)).expect("plan");
    assert_eq!(change.invoice, StatusMove { from: InvoiceStatus::Expired, to: InvoiceStatus::Paid });
    assert_eq!(change.row, Some(RowChange::Apply { value: Amount::from_u64(1_000) }));
    assert_eq!(change.payment_event, Some(PaymentEvent::Applied));
    let Some(LedgerChange::Rebook { entry_id, key, credit, .. }) = &change.ledger else {
        panic!("expected a rebooking, got {:?}", change.ledger)
    };
    assert_eq!((*entry_id, key.as_str()), (7, "apply:eip155:137:0xabc:0:7"));
    // The standing credit is generation 1; its successor is generation 2, split as the invoice says.
    assert_eq!(credit.idempotency_key, format!("payment:{TX}#2"));
    credit.validate().expect("the new credit balances");
    let credited: Vec<(String, Amount)> =
        credit.postings.iter().skip(1).map(|p| (p.account.as_str().to_owned(), p.amount)).collect();
    assert_eq!(
        credited,
        [
            (AccountCode::creator("cr_1").as_str().to_owned(), Amount::from_u64(7_000_000)),
            (AccountCode::platform_fees().as_str().to_owned(), Amount::from_u64(1_000_000)),
            (AccountCode::merchant("mer_1").as_str().to_owned(), Amount::from_u64(2_000_000)),
        ]
    );
}

#[test]
fn applied_after_a_reorg_the_credit_takes_the_generation_after_the_standing_one() {
    let mut payment = held(USDC, 4_000_000);
    payment.credits_reversed = Some(2);
    let change = plan_application(&invoice("inv_other", InvoiceStatus::Open), &payment, &quote(0), false, at(10)).expect("plan");
    let Some(LedgerChange::Rebook { credit, .. }) = &change.ledger else { panic!("expected a rebooking") };
    assert_eq!(credit.idempotency_key, format!("payment:{TX}#4"));
    // 4 of 10 USDC is 40 % of the price: the invoice is still open, and says so.
    assert_eq!(change.invoice.to, InvoiceStatus::Open);
    assert_eq!(change.invoice_id, "inv_other");
}

#[test]
fn what_cannot_be_applied_is_refused_with_a_reason() {
    let open = invoice("inv_own", InvoiceStatus::Open);
    let mut applied = held(USDC, 1);
    applied.applied_to = AppliedTo::Invoice;
    assert_eq!(refused(plan_application(&open, &applied, &quote(0), false, at(1))), "payment_not_unapplied");
    for status in [PaymentStatus::Seen, PaymentStatus::Orphaned, PaymentStatus::Reversed] {
        let mut payment = held(USDC, 1);
        payment.status = status;
        assert_eq!(refused(plan_application(&open, &payment, &quote(0), false, at(1))), "payment_not_confirmed");
    }
    for status in [InvoiceStatus::Void, InvoiceStatus::Refunded] {
        let closed = invoice("inv_own", status);
        assert_eq!(refused(plan_application(&closed, &held(USDC, 1), &quote(0), false, at(1))), "invoice_state");
    }
    assert_eq!(refused(plan_application(&open, &held(USDT, 1), &quote(0), false, at(1))), "asset_not_quoted");
}

#[test]
fn settling_takes_an_unquoted_asset_at_no_value_and_the_merchants_word_for_the_rest() {
    let own = invoice("inv_own", InvoiceStatus::Open);
    let change = plan_application(&own, &held(USDT, 9_000_000), &quote(0), true, at(5)).expect("plan");
    assert_eq!(change.row, Some(RowChange::Apply { value: Amount::ZERO }));
    // Worth nothing toward the price: the status does not move until the invoice is settled.
    assert_eq!(change.invoice.to, InvoiceStatus::Open);
    let underpaid = invoice("inv_own", InvoiceStatus::Expired);
    assert_eq!(plan_settlement(&underpaid, &quote(9_000_000)).expect("settle").to, InvoiceStatus::Paid);
    assert_eq!(plan_settlement(&underpaid, &quote(12_000_000)).expect("settle").to, InvoiceStatus::Overpaid);
    let paid = invoice("inv_own", InvoiceStatus::Paid);
    assert!(!plan_settlement(&paid, &quote(10_000_000)).expect("again").moves());
    assert_eq!(
        plan_settlement(&invoice("inv_own", InvoiceStatus::Void), &quote(0)).map_err(|e| e.to_string()),
        Err("invoice inv_own is void and cannot be settled".to_owned())
    );
}

#[test]
fn marking_invalid_rebooks_a_credited_payment_to_the_unapplied_balance_unsplit() {
    let paid = invoice("inv_own", InvoiceStatus::Paid);
    let mut payment = held(USDC, 10_000_000);
    payment.applied_to = AppliedTo::Invoice;
    let change = plan_invalidation(&paid, &payment).expect("plan").expect("a change");
    assert_eq!(change.row, Some(RowChange::Hold { reason: UnappliedReason::InvoiceInvalid }));
    assert_eq!(change.applied_to, AppliedTo::Unapplied);
    let Some(LedgerChange::Rebook { entry_id, key, credit, .. }) = &change.ledger else { panic!("expected a rebooking") };
    assert_eq!((*entry_id, key.as_str()), (7, "invalid:eip155:137:0xabc:0:7"));
    assert_eq!(credit.idempotency_key, format!("payment:{TX}#2"));
    let credited: Vec<(&str, Amount)> = credit.postings.iter().skip(1).map(|p| (p.account.as_str(), p.amount)).collect();
    assert_eq!(credited, [(AccountCode::unapplied("mer_1").as_str(), Amount::from_u64(10_000_000))]);
    assert!(!change.invoice.moves(), "the invoice's status is written once, after its payments");
    assert_eq!(plan_invalid_status(&paid).expect("status").to, InvoiceStatus::Invalid);
}

#[test]
fn marking_invalid_holds_a_pending_payment_and_leaves_the_rest() {
    let open = invoice("inv_own", InvoiceStatus::Processing);
    let mut pending = held(USDC, 1);
    (pending.applied_to, pending.status, pending.ledger_entry_id) = (AppliedTo::Invoice, PaymentStatus::Seen, None);
    let change = plan_invalidation(&open, &pending).expect("plan").expect("a change");
    assert_eq!((change.ledger, change.row), (None, Some(RowChange::Hold { reason: UnappliedReason::InvoiceInvalid })));
    assert_eq!(plan_invalidation(&open, &held(USDC, 1)).expect("plan"), None, "held already");
    let mut orphaned = held(USDC, 1);
    (orphaned.applied_to, orphaned.status) = (AppliedTo::Invoice, PaymentStatus::Orphaned);
    assert_eq!(plan_invalidation(&open, &orphaned).expect("plan"), None, "no longer money");
    for status in [InvoiceStatus::Void, InvoiceStatus::Refunded] {
        assert!(matches!(plan_invalid_status(&invoice("inv_own", status)), Err(PlanError::Refused { code: "invoice_state", .. })));
    }
    let invalid = invoice("inv_own", InvoiceStatus::Invalid);
    assert!(!plan_invalid_status(&invalid).expect("again").moves());
    // An invalid invoice receives nothing more: not by application, not by settling.
    assert_eq!(refused(plan_application(&invalid, &held(USDC, 1), &quote(0), false, at(1))), "invoice_state");
    assert!(plan_settlement(&invalid, &quote(0)).is_err());
}
