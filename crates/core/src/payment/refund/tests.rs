use super::*;
use proptest::prelude::*;

const USDC: &str = "eip155:137/erc20:0x3c499c542cef5e3811e1192ce70d8cc03d5c3359";

fn payment(id: &str, amount: u64, value: u64, returned: u64) -> Refundable {
    Refundable { payment_id: id.to_owned(), amount: Amount::from_u64(amount), value: Amount::from_u64(value), returned: Amount::from_u64(returned) }
}

fn a(n: u64) -> Amount {
    Amount::from_u64(n)
}

/// A credit of `amount`: 10 % to a creator, 3 % fee, the rest to the merchant.
fn credit(amount: u64) -> Vec<Posting> {
    let creator = amount / 10;
    let fee = amount * 3 / 100;
    vec![
        Posting::debit(AccountCode::chain_assets(&"eip155:137".parse().expect("chain")), USDC, a(amount)),
        Posting::credit(AccountCode::merchant("mer_1"), USDC, a(amount - creator - fee)),
        Posting::credit(AccountCode::creator("cr_1"), USDC, a(creator)),
        Posting::credit(AccountCode::platform_fees(), USDC, a(fee)),
    ]
}

#[test]
fn rate_then_gives_back_what_was_sent_newest_first() {
    // 25.00 USD paid as 25 USDC (6 decimals), in two payments.
    let payments = [payment("pay_new", 5_000_000, 500, 0), payment("pay_old", 20_000_000, 2_000, 0)];
    let all = plan_reservation(&payments, &RefundAmount::RateThen { value: None }, Amount::ZERO).expect("all");
    assert_eq!((all.value, all.reserved, all.amount), (a(2_500), a(25_000_000), Some(a(25_000_000))));
    assert_eq!(all.parts.len(), 2);
    let part = plan_reservation(&payments, &RefundAmount::RateThen { value: Some(a(700)) }, Amount::ZERO).expect("part");
    assert_eq!((part.value, part.reserved), (a(700), a(7_000_000)));
    assert_eq!(part.parts[0], Part { payment_id: "pay_new".into(), before: a(0), returned: a(5_000_000) });
    assert_eq!(part.parts[1], Part { payment_id: "pay_old".into(), before: a(0), returned: a(2_000_000) });
}

#[test]
fn what_was_refunded_before_is_not_refunded_again() {
    let payments = [payment("pay_1", 10_000_000, 1_000, 4_000_000)];
    let rest = plan_reservation(&payments, &RefundAmount::RateThen { value: None }, Amount::ZERO).expect("rest");
    assert_eq!((rest.value, rest.reserved), (a(600), a(6_000_000)));
    assert_eq!(rest.parts[0].before, a(4_000_000));
    assert_eq!(
        plan_reservation(&payments, &RefundAmount::Fiat { value: a(601) }, Amount::ZERO),
        Err(RefundRefused::Exceeds { asked: a(601), available: a(600) })
    );
    let done = [payment("pay_1", 10_000_000, 1_000, 10_000_000)];
    assert_eq!(plan_reservation(&done, &RefundAmount::CurrentRate, Amount::ZERO), Err(RefundRefused::NothingLeft));
}

#[test]
fn kinds_priced_at_claim_reserve_at_the_rate_then_and_leave_the_amount_open() {
    let payments = [payment("pay_1", 10_000_000, 1_000, 0)];
    let current = plan_reservation(&payments, &RefundAmount::CurrentRate, Amount::ZERO).expect("current");
    assert_eq!((current.value, current.reserved, current.amount), (a(1_000), a(10_000_000), None));
    let fiat = plan_reservation(&payments, &RefundAmount::Fiat { value: a(250) }, Amount::ZERO).expect("fiat");
    assert_eq!((fiat.value, fiat.reserved, fiat.amount), (a(250), a(2_500_000), None));
}

#[test]
fn overpaid_refunds_only_the_excess_and_custom_the_exact_amount() {
    let payments = [payment("pay_1", 12_000_000, 1_200, 0)];
    let over = plan_reservation(&payments, &RefundAmount::Overpaid, a(200)).expect("over");
    assert_eq!((over.value, over.reserved, over.amount), (a(200), a(2_000_000), Some(a(2_000_000))));
    assert_eq!(plan_reservation(&payments, &RefundAmount::Overpaid, Amount::ZERO), Err(RefundRefused::NotOverpaid));
    let custom = plan_reservation(&payments, &RefundAmount::Custom { amount: a(15_000_000) }, Amount::ZERO).expect("custom");
    assert_eq!((custom.value, custom.reserved, custom.amount), (a(1_200), a(12_000_000), Some(a(15_000_000))));
}

#[test]
fn a_payment_without_value_refunds_only_by_asset_amount() {
    let payments = [payment("pay_1", 10_000, 0, 0)];
    assert_eq!(plan_reservation(&payments, &RefundAmount::CurrentRate, Amount::ZERO), Err(RefundRefused::NoValue));
    let all = plan_reservation(&payments, &RefundAmount::RateThen { value: None }, Amount::ZERO).expect("all");
    assert_eq!((all.value, all.reserved), (a(0), a(10_000)));
}

#[test]
fn a_part_moves_the_shares_to_the_refund_account() {
    let refund = AccountCode::refund("rfd_1");
    let part = Part { payment_id: "pay_1".into(), before: a(0), returned: a(10_000_000) };
    let postings = part_postings(&credit(10_000_000), &part, a(10_000_000), &refund);
    let entry = merged_entry("refund:rfd_1".into(), "refund", "test".into(), postings);
    entry.validate().expect("balanced");
    let on = |account: &AccountCode| entry.postings.iter().find(|p| p.account == *account).map(|p| (p.side, p.amount));
    assert_eq!(on(&refund), Some((Side::Credit, a(10_000_000))));
    assert_eq!(on(&AccountCode::merchant("mer_1")), Some((Side::Debit, a(8_700_000))));
    assert_eq!(on(&AccountCode::creator("cr_1")), Some((Side::Debit, a(1_000_000))));
    assert!(!entry.postings.iter().any(|p| p.account.as_str().starts_with("assets:")));
}

#[test]
fn the_difference_is_the_merchants_either_way() {
    let merchant = AccountCode::merchant("mer_1");
    let refund = AccountCode::refund("rfd_1");
    let more = difference_postings(&merchant, &refund, USDC, a(100), a(130));
    assert_eq!(more, vec![Posting::debit(merchant.clone(), USDC, a(30)), Posting::credit(refund.clone(), USDC, a(30))]);
    let less = difference_postings(&merchant, &refund, USDC, a(100), a(60));
    assert_eq!(less, vec![Posting::debit(refund.clone(), USDC, a(40)), Posting::credit(merchant.clone(), USDC, a(40))]);
    assert!(difference_postings(&merchant, &refund, USDC, a(5), a(5)).is_empty());
}

proptest! {
    /// Refunds in any number of parts never give back more than was paid, each payment's parts
    /// are within it, and the reserving entries always balance.
    #[test]
    fn parts_never_exceed_the_payments(amounts in proptest::collection::vec(1u64..50_000_000, 1..4), asks in proptest::collection::vec(1u64..3_000, 1..6)) {
        let mut payments: Vec<Refundable> = amounts.iter().enumerate()
            .map(|(i, amount)| payment(&format!("pay_{i}"), *amount, amount / 10_000, 0)).collect();
        let refund = AccountCode::refund("rfd_1");
        for ask in asks {
            let Ok(reservation) = plan_reservation(&payments, &RefundAmount::RateThen { value: Some(a(ask)) }, Amount::ZERO) else { continue };
            let mut postings = Vec::new();
            for part in &reservation.parts {
                let p = payments.iter_mut().find(|p| p.payment_id == part.payment_id).expect("payment");
                prop_assert_eq!(part.before, p.returned);
                p.returned = p.returned.checked_add(part.returned).expect("sum");
                prop_assert!(p.returned <= p.amount);
                postings.extend(part_postings(&credit(amount_of(p)), part, p.amount, &refund));
            }
            let given = Amount::checked_sum(reservation.parts.iter().map(|p| p.returned)).expect("sum");
            prop_assert_eq!(given, reservation.reserved);
            let entry = merged_entry("k".into(), "refund", "m".into(), postings);
            prop_assert!(entry.validate().is_ok());
        }
    }
}

fn amount_of(p: &Refundable) -> u64 {
    u64::try_from(p.amount.as_u256()).expect("u64")
}
