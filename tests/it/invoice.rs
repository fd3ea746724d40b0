//! Invoices against a real PostgreSQL: quotes, the state machine as payments arrive, the ledger
//! entries and outbox rows each step writes, and what happens to late, odd and replayed payments.


use chrono::Duration;
use crate::common::{amount, state_with_clock, t0, BTC, USDC_POLYGON, USDT_POLYGON};
use payrail::api::AppState;
use payrail::clock::Clock;
use payrail::invoice::{
    apply_payment, create_invoice, AppliedTo, expire_due, load_view, orphan_payment, CreateInvoice, InvoiceError, InvoiceStatus,
    InvoiceView, ObservedPayment,
};
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use sqlx::PgPool;

fn request(amount: &str, accepted: &[&str]) -> CreateInvoice {
    CreateInvoice {
        amount: amount.to_owned(),
        currency: "USD".to_owned(),
        accepted: Some(accepted.iter().map(|s| (*s).to_owned()).collect()),
        expires_in: Some(900),
        order_id: None,
        metadata: None,
        customer: None,
        promo_code: None,
        redirect_url: None,
        buyer_email: None,
        locale: None,
        underpayment_tolerance_bps: None,
        speed_policy: None,
    }
}

async fn new_invoice(state: &AppState, merchant: &str, amount: &str, accepted: &[&str]) -> InvoiceView {
    let (view, created) = create_invoice(
        &state.pool,
        &state.catalog,
        state.rates.as_ref(),
        &state.policy,
        merchant,
        &request(amount, accepted),
        None,
        state.clock.now(),
    )
    .await
    .expect("invoice created");
    assert!(created);
    view
}

fn observed(invoice: &InvoiceView, asset: &str, tx: &str, value: u128, confirmations: u32) -> ObservedPayment {
    let asset: payrail::money::AssetId = asset.parse().expect("asset");
    ObservedPayment {
        invoice_id: invoice.id.clone(),
        chain: asset.chain().clone(),
        tx_ref: format!("{}:{tx}:0", asset.chain()),
        asset,
        address: None,
        amount: payrail::money::Amount::from_u128(value),
        confirmations,
        confirmations_required: 2,
        block: None,
    }
}

async fn apply(state: &AppState, payment: &ObservedPayment) -> Result<payrail::invoice::Applied, InvoiceError> {
    let mut tx = state.pool.begin().await.expect("begin");
    let applied = apply_payment(&mut tx, &state.ledger, payment, state.clock.now()).await?;
    tx.commit().await.expect("commit");
    Ok(applied)
}

async fn view(state: &AppState, id: &str) -> InvoiceView {
    let mut conn = state.pool.acquire().await.expect("conn");
    load_view(&mut conn, None, id).await.expect("view")
}

async fn balance(state: &AppState, account: &AccountCode, asset: &str) -> SignedAmount {
    let mut conn = state.pool.acquire().await.expect("conn");
    state.ledger.balance(&mut conn, account, asset).await.expect("balance")
}

async fn events(pool: &PgPool, invoice_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM outbox WHERE object_id = $1 ORDER BY id")
        .bind(invoice_id)
        .fetch_all(pool)
        .await
        .expect("events")
}

#[sqlx::test]
async fn payer_due_rounds_up_at_the_locked_rate(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool);
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[BTC, USDC_POLYGON]).await;
    assert_eq!(invoice.status, InvoiceStatus::Open);
    assert_eq!(invoice.amount_minor, "2500");
    // 25 USD at 65000 USD/BTC is 38461.54 sats: the payer owes 38462.
    let btc = &invoice.payment_options[0];
    assert_eq!((btc.amount_minor.as_str(), btc.amount.as_str(), btc.rate.as_str()), ("38462", "0.00038462", "65000"));
    let usdc = &invoice.payment_options[1];
    assert_eq!((usdc.amount_minor.as_str(), usdc.amount.as_str()), ("25000000", "25.00"));
    // The EVM rail derives a deposit address; Bitcoin has no rail yet.
    assert!(usdc.address.as_deref().is_some_and(|a| a.starts_with("0x") && a.len() == 42));
    assert!(btc.address.is_none());
    assert_eq!(invoice.expires_at, t0() + Duration::seconds(900));
}

#[sqlx::test]
async fn seen_then_confirmed_payment_pays_and_credits_once(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);

    let seen = apply(&state, &observed(&invoice, USDC_POLYGON, "0xaa", 25_000_000, 0)).await.expect("seen");
    assert_eq!(seen.invoice_status, InvoiceStatus::Processing);
    assert!(!seen.credited);
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::ZERO);

    let one = apply(&state, &observed(&invoice, USDC_POLYGON, "0xaa", 25_000_000, 1)).await.expect("1 conf");
    assert_eq!((one.invoice_status, one.credited), (InvoiceStatus::Processing, false));

    let paid = apply(&state, &observed(&invoice, USDC_POLYGON, "0xaa", 25_000_000, 2)).await.expect("2 conf");
    assert_eq!((paid.invoice_status, paid.credited), (InvoiceStatus::Paid, true));
    assert_eq!(paid.payment_id, seen.payment_id);
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    let chain = AccountCode::chain_assets(&"eip155:137".parse().expect("chain"));
    assert_eq!(balance(&state, &chain, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));

    // The watcher replays the block after a restart: nothing changes.
    let replay = apply(&state, &observed(&invoice, USDC_POLYGON, "0xaa", 25_000_000, 5)).await.expect("replay");
    assert_eq!((replay.invoice_status, replay.credited), (InvoiceStatus::Paid, false));
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("n");
    assert_eq!(entries, 1);

    let shown = view(&state, &invoice.id).await;
    assert_eq!((shown.amount_paid.as_str(), shown.amount_remaining.as_str()), ("25.00", "0.00"));
    assert_eq!(shown.payments.len(), 1);
    assert_eq!(shown.payments[0].confirmations, 5);
    assert_eq!(shown.payments[0].status, "confirmed");
    assert!(shown.paid_at.is_some());
    assert_eq!(events(&pool, &invoice.id).await, ["invoice.created", "invoice.processing", "invoice.paid"]);
}

#[sqlx::test]
async fn a_replay_reporting_another_amount_is_refused_and_changes_nothing(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    apply(&state, &observed(&invoice, USDC_POLYGON, "0xaa", 1_000_000, 0)).await.expect("seen");
    let err = apply(&state, &observed(&invoice, USDC_POLYGON, "0xaa", 2_000_000, 3)).await.expect_err("mismatch");
    assert!(matches!(err, InvoiceError::PaymentMismatch { .. }), "{err:?}");
    let shown = view(&state, &invoice.id).await;
    assert_eq!(shown.payments[0].amount_minor, "1000000");
    assert_eq!(shown.payments[0].status, "seen");
}

#[sqlx::test]
async fn underpaid_invoice_expires_and_keeps_the_partial_amount(pool: PgPool) {
    let (state, clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let partial = apply(&state, &observed(&invoice, USDC_POLYGON, "0x01", 10_000_000, 2)).await.expect("partial");
    assert_eq!(partial.invoice_status, InvoiceStatus::Open);
    let shown = view(&state, &invoice.id).await;
    assert_eq!((shown.amount_paid.as_str(), shown.amount_remaining.as_str()), ("10.00", "15.00"));

    clock.advance(Duration::seconds(899));
    assert_eq!(expire_due(&state.pool, clock.now()).await.expect("expiry"), 0);
    clock.advance(Duration::seconds(1));
    assert_eq!(expire_due(&state.pool, clock.now()).await.expect("expiry"), 1);
    let shown = view(&state, &invoice.id).await;
    assert_eq!(shown.status, InvoiceStatus::Expired);
    assert_eq!(shown.amount_paid, "10.00");
    // The partial payment stays credited to the merchant.
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(10_000_000)));
    assert_eq!(events(&pool, &invoice.id).await, ["invoice.created", "invoice.expired"]);
}

#[sqlx::test]
async fn a_payment_seen_in_time_is_waited_for_past_expiry(pool: PgPool) {
    let (state, clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    apply(&state, &observed(&invoice, USDC_POLYGON, "0x01", 25_000_000, 0)).await.expect("seen");
    clock.advance(Duration::hours(2));
    assert_eq!(expire_due(&state.pool, clock.now()).await.expect("expiry"), 0);
    let paid = apply(&state, &observed(&invoice, USDC_POLYGON, "0x01", 25_000_000, 2)).await.expect("confirmed");
    assert_eq!(paid.invoice_status, InvoiceStatus::Paid);
    assert_eq!(paid.applied_to, AppliedTo::Invoice);
}

#[sqlx::test]
async fn two_payments_add_up_and_surplus_makes_it_overpaid(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON, USDT_POLYGON]).await;
    let first = apply(&state, &observed(&invoice, USDC_POLYGON, "0x01", 20_000_000, 2)).await.expect("first");
    assert_eq!(first.invoice_status, InvoiceStatus::Open);
    // The rest arrives in another quoted asset: judged in USD at the locked quotes.
    let second = apply(&state, &observed(&invoice, USDT_POLYGON, "0x02", 5_000_000, 2)).await.expect("second");
    assert_eq!(second.invoice_status, InvoiceStatus::Paid);
    let third = apply(&state, &observed(&invoice, USDC_POLYGON, "0x03", 1_000_000, 2)).await.expect("third");
    assert_eq!(third.invoice_status, InvoiceStatus::Overpaid);
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(21_000_000)));
    assert_eq!(balance(&state, &merchant_account, USDT_POLYGON).await, SignedAmount::positive(amount(5_000_000)));
    assert_eq!(events(&pool, &invoice.id).await, ["invoice.created", "invoice.paid", "invoice.overpaid"]);
}

#[sqlx::test]
async fn one_satoshi_short_is_not_paid_without_tolerance(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[BTC]).await;
    let short = apply(&state, &observed(&invoice, BTC, "ab", 38_461, 2)).await.expect("short");
    assert_eq!(short.invoice_status, InvoiceStatus::Open);
    let rest = apply(&state, &observed(&invoice, BTC, "cd", 1, 2)).await.expect("rest");
    assert_eq!(rest.invoice_status, InvoiceStatus::Paid);
}

#[sqlx::test]
async fn late_payment_goes_to_unapplied_and_is_never_dropped(pool: PgPool) {
    let (state, clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    clock.advance(Duration::seconds(901));
    expire_due(&state.pool, clock.now()).await.expect("expiry");
    let late = apply(&state, &observed(&invoice, USDC_POLYGON, "0x09", 25_000_000, 0)).await.expect("late seen");
    assert_eq!((late.invoice_status, late.applied_to), (InvoiceStatus::Expired, AppliedTo::Unapplied));
    let credited = apply(&state, &observed(&invoice, USDC_POLYGON, "0x09", 25_000_000, 3)).await.expect("late confirmed");
    assert!(credited.credited);
    assert_eq!(credited.invoice_status, InvoiceStatus::Expired);
    let unapplied = AccountCode::unapplied(&merchant.merchant_id);
    assert_eq!(balance(&state, &unapplied, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    assert_eq!(balance(&state, &AccountCode::merchant(&merchant.merchant_id), USDC_POLYGON).await, SignedAmount::ZERO);
    let shown = view(&state, &invoice.id).await;
    assert_eq!(shown.payments[0].unapplied_reason.as_deref(), Some("invoice_expired"));
    assert_eq!(shown.amount_paid, "0.00");
    assert_eq!(events(&pool, &invoice.id).await, ["invoice.created", "invoice.expired", "invoice.payment_late"]);
}

#[sqlx::test]
async fn payment_after_expiry_time_but_before_the_expiry_job_is_late_too(pool: PgPool) {
    let (state, clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    clock.advance(Duration::seconds(1000));
    let late = apply(&state, &observed(&invoice, USDC_POLYGON, "0x09", 25_000_000, 2)).await.expect("late");
    assert_eq!((late.applied_to, late.invoice_status), (AppliedTo::Unapplied, InvoiceStatus::Expired));
    let shown = view(&state, &invoice.id).await;
    assert_eq!(shown.payments[0].unapplied_reason.as_deref(), Some("late"));
}

#[sqlx::test]
async fn an_unquoted_asset_is_held_as_unapplied(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let odd = apply(&state, &observed(&invoice, USDT_POLYGON, "0x05", 25_000_000, 2)).await.expect("odd asset");
    assert_eq!((odd.applied_to, odd.invoice_status, odd.credited), (AppliedTo::Unapplied, InvoiceStatus::Open, true));
    let unapplied = AccountCode::unapplied(&merchant.merchant_id);
    assert_eq!(balance(&state, &unapplied, USDT_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    assert_eq!(view(&state, &invoice.id).await.payments[0].unapplied_reason.as_deref(), Some("asset_not_quoted"));
}

#[sqlx::test]
async fn orphaned_unconfirmed_payment_returns_invoice_to_open_and_can_come_back(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let payment = observed(&invoice, USDC_POLYGON, "0x0f", 25_000_000, 1);
    apply(&state, &payment).await.expect("seen");
    let mut tx = state.pool.begin().await.expect("begin");
    let status = orphan_payment(&mut tx, &state.ledger, &payment.tx_ref, state.clock.now()).await.expect("orphan");
    tx.commit().await.expect("commit");
    assert_eq!(status, InvoiceStatus::Open);
    assert_eq!(view(&state, &invoice.id).await.payments[0].status, "orphaned");
    // Mined again on the new branch, then confirmed: credited once.
    let back = apply(&state, &ObservedPayment { confirmations: 0, ..payment.clone() }).await.expect("back");
    assert_eq!(back.invoice_status, InvoiceStatus::Processing);
    let paid = apply(&state, &ObservedPayment { confirmations: 2, ..payment.clone() }).await.expect("paid");
    assert_eq!((paid.invoice_status, paid.credited), (InvoiceStatus::Paid, true));
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    assert_eq!(
        events(&pool, &invoice.id).await,
        ["invoice.created", "invoice.processing", "invoice.open", "invoice.processing", "invoice.paid"]
    );
}

#[sqlx::test]
async fn orphaned_credited_payment_is_reversed_announced_and_the_invoice_is_open_again(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let payment = observed(&invoice, USDC_POLYGON, "0x0e", 25_000_000, 2);
    apply(&state, &payment).await.expect("paid");
    let mut tx = state.pool.begin().await.expect("begin");
    let status = orphan_payment(&mut tx, &state.ledger, &payment.tx_ref, state.clock.now()).await.expect("orphan");
    tx.commit().await.expect("commit");
    // Nothing else counts: the invoice says so instead of claiming to be paid by nothing.
    assert_eq!(status, InvoiceStatus::Open);
    let shown = view(&state, &invoice.id).await;
    assert_eq!((shown.status, shown.amount_paid.as_str(), shown.paid_at), (InvoiceStatus::Open, "0.00", None));
    assert_eq!(
        events(&pool, &invoice.id).await,
        ["invoice.created", "invoice.paid", "invoice.open", "invoice.payment_reversed"],
        "announced in the same transaction as the reversal"
    );
    let orphaned: Vec<(String, String)> =
        sqlx::query_as("SELECT object_id, payload->'data'->>'status' FROM outbox WHERE event_type = 'payment.orphaned'")
            .fetch_all(&pool)
            .await
            .expect("payment events");
    assert_eq!(orphaned, [(shown.payments[0].id.clone(), "reversed".to_owned())]);
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::ZERO);
    let reversals: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries WHERE reverses_entry_id IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("n");
    assert_eq!(reversals, 1);
    assert_eq!(view(&state, &invoice.id).await.payments[0].status, "reversed");
    // Mined again in the new branch: seen, then credited again, once.
    let waiting = ObservedPayment { confirmations: 0, ..payment.clone() };
    apply(&state, &waiting).await.expect("seen again");
    assert_eq!(view(&state, &invoice.id).await.payments[0].status, "seen");
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::ZERO);
    for _ in 0..2 {
        apply(&state, &payment).await.expect("confirmed again");
    }
    assert_eq!(view(&state, &invoice.id).await.payments[0].status, "confirmed");
    assert_eq!(view(&state, &invoice.id).await.status, InvoiceStatus::Paid);
    assert_eq!(
        events(&pool, &invoice.id).await,
        ["invoice.created", "invoice.paid", "invoice.open", "invoice.payment_reversed", "invoice.processing", "invoice.paid"],
        "paid again is announced again"
    );
    assert_eq!(balance(&state, &merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    let keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM journal_entries WHERE kind = 'payment' ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert_eq!(keys, [format!("payment:{}", payment.tx_ref), format!("payment:{}#2", payment.tx_ref)]);
}

#[sqlx::test]
async fn a_crash_before_commit_leaves_no_trace(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let payment = observed(&invoice, USDC_POLYGON, "0x0d", 25_000_000, 2);
    {
        let mut tx = state.pool.begin().await.expect("begin");
        let applied = apply_payment(&mut tx, &state.ledger, &payment, state.clock.now()).await.expect("applied");
        assert_eq!(applied.invoice_status, InvoiceStatus::Paid);
        // Dropped without commit: the process died here.
    }
    for table in ["payments", "journal_entries", "postings"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await.expect("n");
        assert_eq!(n, 0, "{table}");
    }
    assert_eq!(view(&state, &invoice.id).await.status, InvoiceStatus::Open);
    assert_eq!(events(&pool, &invoice.id).await, ["invoice.created"]);
    // The replay after restart credits exactly once.
    let applied = apply(&state, &payment).await.expect("replayed");
    assert!(applied.credited);
    assert_eq!(applied.invoice_status, InvoiceStatus::Paid);
}

#[sqlx::test]
async fn idempotency_key_returns_the_first_invoice_or_refuses_another_body(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let create = |req: CreateInvoice| {
        let state = state.clone();
        let merchant_id = merchant.merchant_id.clone();
        async move {
            create_invoice(
                &state.pool,
                &state.catalog,
                state.rates.as_ref(),
                &state.policy,
                &merchant_id,
                &req,
                Some("order-42"),
                state.clock.now(),
            )
            .await
        }
    };
    let (first, created) = create(request("10.00", &[BTC])).await.expect("first");
    assert!(created);
    let (again, created) = create(request("10.00", &[BTC])).await.expect("again");
    assert!(!created);
    assert_eq!(first.id, again.id);
    let err = create(request("11.00", &[BTC])).await.expect_err("other body");
    assert!(matches!(err, InvoiceError::IdempotencyConflict { .. }));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&pool).await.expect("n");
    assert_eq!(n, 1);
}

#[sqlx::test]
async fn bad_requests_are_refused_with_the_field_named(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let try_create = |req: CreateInvoice| {
        let state = state.clone();
        let merchant_id = merchant.merchant_id.clone();
        async move {
            create_invoice(&state.pool, &state.catalog, state.rates.as_ref(), &state.policy, &merchant_id, &req, None, state.clock.now())
                .await
        }
    };
    for (amount, field) in [("0", "amount"), ("-1", "amount"), ("1.001", "amount"), ("1e3", "amount"), ("", "amount"), ("1000000.01", "amount")] {
        match try_create(request(amount, &[BTC])).await {
            Err(InvoiceError::Invalid { field: f, .. }) => assert_eq!(f, field, "{amount}"),
            other => panic!("{amount}: {other:?}"),
        }
    }
    let mut eur_less = request("1.00", &[BTC]);
    eur_less.currency = "usd".to_owned();
    assert!(matches!(try_create(eur_less).await, Err(InvoiceError::UnsupportedCurrency { .. })));
    assert!(matches!(
        try_create(request("1.00", &["eip155:1/erc20:0x0000000000000000000000000000000000000001"])).await,
        Err(InvoiceError::UnsupportedAsset { .. })
    ));
    assert!(matches!(try_create(request("1.00", &[BTC, BTC])).await, Err(InvoiceError::Invalid { field: "accepted", .. })));
    let mut short = request("1.00", &[BTC]);
    short.expires_in = Some(5);
    assert!(matches!(try_create(short).await, Err(InvoiceError::Invalid { field: "expires_in", .. })));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&pool).await.expect("n");
    assert_eq!(n, 0);
}

/// Past its expiry, a paid invoice whose only payment was reorged away is expired; the payment mined
/// again pays it again (it was the invoice's own payment, not a late one).
#[sqlx::test]
async fn a_reversed_payment_past_expiry_expires_the_invoice_until_it_is_mined_again(pool: PgPool) {
    let (state, clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let payment = observed(&invoice, USDC_POLYGON, "0x0d", 25_000_000, 2);
    apply(&state, &payment).await.expect("paid");
    clock.advance(chrono::Duration::days(2));
    let mut tx = state.pool.begin().await.expect("begin");
    let status = orphan_payment(&mut tx, &state.ledger, &payment.tx_ref, state.clock.now()).await.expect("orphan");
    tx.commit().await.expect("commit");
    assert_eq!(status, InvoiceStatus::Expired);
    let again = apply(&state, &payment).await.expect("mined again");
    assert_eq!((again.invoice_status, again.credited, again.applied_to), (InvoiceStatus::Paid, true, AppliedTo::Invoice));
    assert_eq!(
        events(&pool, &invoice.id).await,
        ["invoice.created", "invoice.paid", "invoice.expired", "invoice.payment_reversed", "invoice.paid"]
    );
}

/// `GET /v1/unapplied` lists what is held for review and is still money — a late payment to an
/// expired invoice, a pending payment in an asset the invoice did not quote — oldest first, in
/// pages; never an applied payment, nor another merchant's.
#[sqlx::test]
async fn unapplied_payments_are_listed_for_their_merchant_only(pool: PgPool) {
    let server = crate::common::Server::start(pool.clone()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let other = create_merchant(&state.pool, "Other").await.expect("other");
    let expired = new_invoice(state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    server.clock.advance(Duration::seconds(901));
    expire_due(&state.pool, server.clock.now()).await.expect("expiry");
    apply(state, &observed(&expired, USDC_POLYGON, "0x11", 25_000_000, 2)).await.expect("late");
    server.clock.advance(Duration::seconds(1));
    let open = new_invoice(state, &merchant.merchant_id, "10.00", &[USDC_POLYGON]).await;
    apply(state, &observed(&open, USDT_POLYGON, "0x12", 4_000_000, 0)).await.expect("unquoted asset");
    server.clock.advance(Duration::seconds(1));
    apply(state, &observed(&open, USDC_POLYGON, "0x13", 10_000_000, 2)).await.expect("applied");

    let (status, page) = server.get(&merchant.api_key, "/v1/unapplied").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    let items = page["data"].as_array().expect("data");
    let summary: Vec<(&str, &str, &str, &str, &str)> = items
        .iter()
        .map(|p| {
            let field = |name: &str| p[name].as_str().unwrap_or("<missing>");
            (field("invoice_id"), field("asset"), field("amount_minor"), field("status"), field("reason"))
        })
        .collect();
    assert_eq!(
        summary,
        [
            (expired.id.as_str(), USDC_POLYGON, "25000000", "confirmed", "invoice_expired"),
            (open.id.as_str(), USDT_POLYGON, "4000000", "seen", "asset_not_quoted"),
        ]
    );
    assert_eq!(page["has_more"], false);

    let (_, first) = server.get(&merchant.api_key, "/v1/unapplied?limit=1").await;
    assert_eq!(first["has_more"], true);
    let after = first["data"][0]["id"].as_str().expect("id");
    let (_, second) = server.get(&merchant.api_key, &format!("/v1/unapplied?limit=1&starting_after={after}")).await;
    assert_eq!(second["data"][0]["asset"], USDT_POLYGON);
    assert_eq!(second["has_more"], false);

    let (status, theirs) = server.get(&other.api_key, "/v1/unapplied").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(theirs["data"], serde_json::json!([]));
    // Another merchant cannot page through this one's payments: the id is no place in its list.
    let (status, body) = server.get(&other.api_key, &format!("/v1/unapplied?starting_after={after}")).await;
    assert_eq!((status, &body["data"], &body["has_more"]), (reqwest::StatusCode::OK, &serde_json::json!([]), &serde_json::json!(false)), "{body}");
    for query in ["limit=0", "limit=101", "starting_after=inv_1", "surprise=1"] {
        let (status, body) = server.get(&merchant.api_key, &format!("/v1/unapplied?{query}")).await;
        assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["code"], "parameter_invalid", "{query}");
    }
}

fn held_payment_id(view: &InvoiceView) -> String {
    let held = view.payments.iter().find(|p| p.applied_to == "unapplied" && p.status == "confirmed");
    held.map(|p| p.id.clone()).expect("a confirmed held payment")
}

async fn trial_balance_is_zero(pool: &PgPool) {
    let unbalanced: Vec<(String, String)> =
        sqlx::query_as("SELECT asset, sum(amount)::text FROM postings GROUP BY asset HAVING sum(amount) <> 0")
            .fetch_all(pool)
            .await
            .expect("trial balance");
    assert_eq!(unbalanced, [], "every asset's postings sum to zero");
}

/// A late payment is applied by its merchant, over the API: to its own expired invoice, which it
/// pays, through a reversal of its held credit and the next generation of its `payment:` credit; a
/// second application is refused, as are a pending payment, another merchant's and an unknown one.
#[sqlx::test]
async fn a_late_payment_applied_to_its_own_expired_invoice_pays_it(pool: PgPool) {
    let server = crate::common::Server::start(pool.clone()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let other = create_merchant(&state.pool, "Other").await.expect("other");
    let invoice = new_invoice(state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    server.clock.advance(Duration::seconds(901));
    expire_due(&state.pool, server.clock.now()).await.expect("expiry");
    let late = observed(&invoice, USDC_POLYGON, "0x21", 25_000_000, 2);
    apply(state, &late).await.expect("late");
    apply(state, &observed(&invoice, USDC_POLYGON, "0x22", 1_000_000, 0)).await.expect("late, pending");
    let shown = view(state, &invoice.id).await;
    let held = held_payment_id(&shown);
    let pending = shown.payments.iter().find(|p| p.status == "seen").map(|p| p.id.clone()).expect("pending");

    let path = format!("/v1/unapplied/{held}/apply");
    let (status, body) = server.post(&other.api_key, &path, serde_json::json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::NOT_FOUND, Some("not_found")), "{body}");
    let (status, body) =
        server.post(&merchant.api_key, &format!("/v1/unapplied/{pending}/apply"), serde_json::json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payment_not_confirmed")));

    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({}), None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!((body["id"].as_str(), body["status"].as_str()), (Some(invoice.id.as_str()), Some("paid")));
    assert_eq!(body["amount_paid"], "25.00");
    let applied = body["payments"].as_array().expect("payments").iter().find(|p| p["id"] == held.as_str()).expect("held");
    assert_eq!((applied["applied_to"].as_str(), applied["unapplied_reason"].as_str()), (Some("invoice"), Some("invoice_expired")));
    assert_eq!(applied["applied_invoice_id"], serde_json::Value::Null);

    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payment_not_unapplied")));
    for (path, body) in [
        (format!("/v1/unapplied/pay_{}/apply", "0".repeat(20)), serde_json::json!({})),
        ("/v1/unapplied/nope/apply".to_owned(), serde_json::json!({})),
        (path.clone(), serde_json::json!({"invoice": 7})),
    ] {
        let (status, answer) = server.post(&merchant.api_key, &path, body, None).await;
        assert!(status.is_client_error() && status != reqwest::StatusCode::CONFLICT, "{path}: {status} {answer}");
    }

    let unapplied = AccountCode::unapplied(&merchant.merchant_id);
    assert_eq!(server.balance(&unapplied, USDC_POLYGON).await, SignedAmount::ZERO);
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(server.balance(&merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    let keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM journal_entries ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("keys");
    let standing = keys.iter().filter(|k| k.starts_with("payment:")).cloned().collect::<Vec<_>>();
    assert_eq!(standing, [format!("payment:{}", late.tx_ref), format!("payment:{}#2", late.tx_ref)]);
    assert_eq!(
        events(&pool, &invoice.id).await,
        ["invoice.created", "invoice.expired", "invoice.payment_late", "invoice.payment_applied", "invoice.paid"]
    );
    // The watcher reports the payment again as it gathers confirmations: nothing moves.
    apply(state, &observed(&invoice, USDC_POLYGON, "0x21", 25_000_000, 9)).await.expect("again");
    assert_eq!(server.balance(&merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    let (_, page) = server.get(&merchant.api_key, "/v1/unapplied").await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "only the pending one is still held: {page}");
    trial_balance_is_zero(&pool).await;
}

/// A late payment applied to a new invoice of the same merchant counts there: the new invoice is
/// paid and lists it, the old one stays expired. A reorg that takes its block later reverses the
/// credit on the new invoice; mined again, it is credited to the new invoice again.
#[sqlx::test]
async fn a_late_payment_applied_to_a_new_invoice_counts_there_through_a_reorg(pool: PgPool) {
    let server = crate::common::Server::start(pool.clone()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let other = create_merchant(&state.pool, "Other").await.expect("other");
    let expired = new_invoice(state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    server.clock.advance(Duration::seconds(901));
    expire_due(&state.pool, server.clock.now()).await.expect("expiry");
    let late = observed(&expired, USDC_POLYGON, "0x31", 25_000_000, 2);
    apply(state, &late).await.expect("late");
    let held = held_payment_id(&view(state, &expired.id).await);
    let fresh = new_invoice(state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let theirs = new_invoice(state, &other.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let in_tether = new_invoice(state, &merchant.merchant_id, "25.00", &[USDT_POLYGON]).await;
    let path = format!("/v1/unapplied/{held}/apply");

    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({"invoice": theirs.id}), None).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "another merchant's invoice: {body}");
    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({"invoice": in_tether.id}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("asset_not_quoted")), "{body}");
    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({"invoice": fresh.id}), None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!((body["id"].as_str(), body["status"].as_str()), (Some(fresh.id.as_str()), Some("paid")));
    assert_eq!(body["payments"][0]["applied_invoice_id"].as_str(), Some(fresh.id.as_str()));
    assert_eq!(body["payments"][0]["invoice_id"].as_str(), Some(expired.id.as_str()));
    let old = view(state, &expired.id).await;
    assert_eq!((old.status, old.amount_paid.as_str()), (InvoiceStatus::Expired, "0.00"));
    assert_eq!(events(&pool, &fresh.id).await, ["invoice.created", "invoice.payment_applied", "invoice.paid"]);

    // Its block leaves the chain: the credit on the new invoice is reversed, and it says so.
    let mut tx = state.pool.begin().await.expect("begin");
    let status = orphan_payment(&mut tx, &state.ledger, &late.tx_ref, state.clock.now()).await.expect("orphan");
    tx.commit().await.expect("commit");
    assert_eq!(status, InvoiceStatus::Open);
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(server.balance(&merchant_account, USDC_POLYGON).await, SignedAmount::ZERO);
    assert_eq!(server.balance(&AccountCode::unapplied(&merchant.merchant_id), USDC_POLYGON).await, SignedAmount::ZERO);
    assert_eq!(view(state, &expired.id).await.status, InvoiceStatus::Expired);
    // Mined again: seen, then credited to the new invoice under the next generation, once.
    apply(state, &ObservedPayment { confirmations: 0, ..late.clone() }).await.expect("seen again");
    assert_eq!(view(state, &fresh.id).await.status, InvoiceStatus::Processing);
    for _ in 0..2 {
        apply(state, &late).await.expect("confirmed again");
    }
    assert_eq!(view(state, &fresh.id).await.status, InvoiceStatus::Paid);
    assert_eq!(server.balance(&merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    let standing: Vec<String> = sqlx::query_scalar(
        "SELECT e.idempotency_key FROM journal_entries e WHERE e.kind = 'payment' \
         AND NOT EXISTS (SELECT 1 FROM journal_entries r WHERE r.reverses_entry_id = e.id)",
    )
    .fetch_all(&pool)
    .await
    .expect("standing credits");
    assert_eq!(standing, [format!("payment:{}#3", late.tx_ref)]);
    trial_balance_is_zero(&pool).await;
}

/// An underpaid invoice settled by its merchant is paid: its held payment in an asset it did not
/// quote is applied to it at no value, the partial payment counts, and the merchant's word covers the
/// rest. Settling again changes nothing; a voided invoice cannot be settled.
#[sqlx::test]
async fn an_underpaid_invoice_marked_settled_is_paid_with_its_held_payments(pool: PgPool) {
    let server = crate::common::Server::start(pool.clone()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    apply(state, &observed(&invoice, USDC_POLYGON, "0x41", 20_000_000, 2)).await.expect("part");
    apply(state, &observed(&invoice, USDT_POLYGON, "0x42", 3_000_000, 2)).await.expect("other asset");
    server.clock.advance(Duration::seconds(901));
    expire_due(&state.pool, server.clock.now()).await.expect("expiry");
    assert_eq!(view(state, &invoice.id).await.status, InvoiceStatus::Expired);

    let path = format!("/v1/invoices/{}/mark", invoice.id);
    for body in [serde_json::json!({"status": "paid"}), serde_json::json!({}), serde_json::json!({"status": "settled", "x": 1})] {
        let (status, answer) = server.post(&merchant.api_key, &path, body.clone(), None).await;
        assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }
    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({"status": "settled"}), None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!((body["status"].as_str(), body["amount_paid"].as_str()), (Some("paid"), Some("20.00")));
    assert!(body["settled_at"].is_string() && body["paid_at"].is_string(), "{body}");
    let again = server.post(&merchant.api_key, &path, serde_json::json!({"status": "settled"}), None).await;
    assert_eq!((again.0, again.1["settled_at"].clone()), (reqwest::StatusCode::OK, body["settled_at"].clone()));
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(server.balance(&merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(20_000_000)));
    assert_eq!(server.balance(&merchant_account, USDT_POLYGON).await, SignedAmount::positive(amount(3_000_000)));
    assert_eq!(server.balance(&AccountCode::unapplied(&merchant.merchant_id), USDT_POLYGON).await, SignedAmount::ZERO);
    assert_eq!(
        events(&pool, &invoice.id).await,
        ["invoice.created", "invoice.payment_late", "invoice.expired", "invoice.payment_applied", "invoice.paid"]
    );

    let voided = new_invoice(state, &merchant.merchant_id, "5.00", &[USDC_POLYGON]).await;
    payrail::invoice::void_invoice(&state.pool, &merchant.merchant_id, &voided.id, server.clock.now()).await.expect("void");
    let (status, body) =
        server.post(&merchant.api_key, &format!("/v1/invoices/{}/mark", voided.id), serde_json::json!({"status": "settled"}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("invoice_state")), "{body}");
    trial_balance_is_zero(&pool).await;
}

/// A paid invoice marked invalid holds what arrived on the unapplied balance again, fee included,
/// unsplit; a payment still pending is held too and credited there when it confirms. The held
/// payment can then be applied to another invoice. A void invoice cannot be marked invalid, and an
/// invalid one cannot be settled.
#[sqlx::test]
async fn an_invoice_marked_invalid_holds_its_payments_for_the_merchant_again(pool: PgPool) {
    let server = crate::common::Server::start(pool.clone()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let splits = payrail::invoice::Splits { splits: vec![], platform_fee_bps: 1_000 };
    let (invoice, _) = payrail::invoice::create_invoice_with_splits(
        &state.pool,
        &state.catalog,
        state.rates.as_ref(),
        &state.policy,
        &merchant.merchant_id,
        &request("25.00", &[USDC_POLYGON]),
        Some(&splits),
        None,
        server.clock.now(),
    )
    .await
    .expect("invoice");
    apply(state, &observed(&invoice, USDC_POLYGON, "0x51", 25_000_000, 2)).await.expect("paid");
    apply(state, &observed(&invoice, USDC_POLYGON, "0x52", 1_000_000, 0)).await.expect("more, pending");
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    let unapplied = AccountCode::unapplied(&merchant.merchant_id);
    assert_eq!(server.balance(&merchant_account, USDC_POLYGON).await, SignedAmount::positive(amount(22_500_000)));

    let path = format!("/v1/invoices/{}/mark", invoice.id);
    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({"status": "invalid"}), None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!((body["status"].as_str(), body["amount_paid"].as_str()), (Some("invalid"), Some("0.00")));
    let reasons: Vec<(&str, &str)> = body["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| (p["applied_to"].as_str().unwrap_or("?"), p["unapplied_reason"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(reasons, [("unapplied", "invoice_invalid"), ("unapplied", "invoice_invalid")]);
    assert_eq!(server.balance(&merchant_account, USDC_POLYGON).await, SignedAmount::ZERO);
    assert_eq!(server.balance(&AccountCode::platform_fees(), USDC_POLYGON).await, SignedAmount::ZERO);
    assert_eq!(server.balance(&unapplied, USDC_POLYGON).await, SignedAmount::positive(amount(25_000_000)));
    let again = server.post(&merchant.api_key, &path, serde_json::json!({"status": "invalid"}), None).await;
    assert_eq!((again.0, again.1["status"].as_str()), (reqwest::StatusCode::OK, Some("invalid")));
    let (status, body) = server.post(&merchant.api_key, &path, serde_json::json!({"status": "settled"}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("invoice_state")));
    assert_eq!(events(&pool, &invoice.id).await, ["invoice.created", "invoice.paid", "invoice.invalid"]);

    // The pending payment confirms: credited to the unapplied balance, not to the invalid invoice.
    apply(state, &observed(&invoice, USDC_POLYGON, "0x52", 1_000_000, 2)).await.expect("confirmed");
    assert_eq!(server.balance(&unapplied, USDC_POLYGON).await, SignedAmount::positive(amount(26_000_000)));
    assert_eq!(view(state, &invoice.id).await.status, InvoiceStatus::Invalid);
    // Applied to a new invoice, the first payment pays it.
    let fresh = new_invoice(state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let first = view(state, &invoice.id).await.payments.iter().find(|p| p.amount_minor == "25000000").map(|p| p.id.clone());
    let first = first.expect("first payment");
    let (status, body) = server
        .post(&merchant.api_key, &format!("/v1/unapplied/{first}/apply"), serde_json::json!({"invoice": fresh.id}), None)
        .await;
    assert_eq!((status, body["status"].as_str()), (reqwest::StatusCode::OK, Some("paid")), "{body}");
    assert_eq!(server.balance(&unapplied, USDC_POLYGON).await, SignedAmount::positive(amount(1_000_000)));

    let voided = new_invoice(state, &merchant.merchant_id, "5.00", &[USDC_POLYGON]).await;
    payrail::invoice::void_invoice(&state.pool, &merchant.merchant_id, &voided.id, server.clock.now()).await.expect("void");
    let (status, body) = server
        .post(&merchant.api_key, &format!("/v1/invoices/{}/mark", voided.id), serde_json::json!({"status": "invalid"}), None)
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("invoice_state")), "{body}");
    trial_balance_is_zero(&pool).await;
}

/// Every payment is announced on its own: `payment.detected` when first seen, `payment.confirmed`
/// when credited — both at once for one first seen already deep enough — and never twice.
#[sqlx::test]
async fn each_payment_is_announced_when_detected_and_when_confirmed(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool.clone());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let invoice = new_invoice(&state, &merchant.merchant_id, "25.00", &[USDC_POLYGON]).await;
    let waiting = observed(&invoice, USDC_POLYGON, "0x61", 10_000_000, 0);
    apply(&state, &waiting).await.expect("seen");
    apply(&state, &waiting).await.expect("seen again");
    apply(&state, &observed(&invoice, USDC_POLYGON, "0x61", 10_000_000, 2)).await.expect("confirmed");
    apply(&state, &observed(&invoice, USDC_POLYGON, "0x62", 15_000_000, 5)).await.expect("seen deep");
    let shown = view(&state, &invoice.id).await;
    let announced: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT object_id, event_type, payload->'data'->>'status' FROM outbox WHERE event_type LIKE 'payment.%' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let id = |tx: &str| shown.payments.iter().find(|p| p.tx_ref.contains(tx)).map(|p| p.id.clone()).expect("payment");
    let (first, second) = (id("0x61"), id("0x62"));
    let expected = [
        (first.clone(), "payment.detected", "seen"),
        (first, "payment.confirmed", "confirmed"),
        (second.clone(), "payment.detected", "confirmed"),
        (second, "payment.confirmed", "confirmed"),
    ]
    .map(|(id, event, status)| (id, event.to_owned(), status.to_owned()));
    assert_eq!(announced, expected);
}

/// The polling paths keep what never changes of a view in memory: what they answer must stay
/// exactly the whole view as payments arrive, confirm, and an option is added.
#[sqlx::test]
async fn a_polled_view_is_the_whole_view_as_payments_and_options_arrive(pool: PgPool) {
    let (state, _clock) = state_with_clock(pool);
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant").merchant_id;
    let invoice = new_invoice(&state, &merchant, "25.00", &[USDC_POLYGON, USDT_POLYGON]).await;
    let polled = || async {
        let (view, name) =
            payrail::invoice::load_current_view(&state.pool, Some(&merchant), &invoice.id, state.clock.now()).await.expect("polled view");
        assert_eq!(name, "Shop");
        serde_json::to_value(view).expect("json")
    };
    let whole = || async { serde_json::to_value(view(&state, &invoice.id).await).expect("json") };
    assert_eq!(polled().await, whole().await, "first read");
    assert_eq!(polled().await, whole().await, "from memory");

    // Half paid, seen then confirmed: the sums move, the kept parts do not.
    let half = observed(&invoice, USDC_POLYGON, "0xaa", 12_500_000, 0);
    apply(&state, &half).await.expect("seen");
    let seen = polled().await;
    assert_eq!(seen, whole().await);
    assert_eq!(seen["payments"].as_array().map(Vec::len), Some(1), "{seen}");
    apply(&state, &ObservedPayment { confirmations: 2, ..half }).await.expect("confirmed");
    let confirmed = polled().await;
    assert_eq!(confirmed, whole().await);
    assert_eq!(confirmed["amount_paid"], "12.50", "{confirmed}");

    // An option added later (as the card rail adds its own): read again, not served stale.
    sqlx::query(
        "INSERT INTO payment_options (invoice_id, asset, chain, symbol, decimals, amount_minor, rate, rate_source, rate_at, position) \
         SELECT invoice_id, 'card:usd', 'card', 'USD', 2, 2500, '1', 'card', rate_at, 2 FROM payment_options \
          WHERE invoice_id = $1 AND position = 0",
    )
    .bind(&invoice.id)
    .execute(&state.pool)
    .await
    .expect("option added");
    let added = polled().await;
    assert_eq!(added, whole().await);
    assert_eq!(added["payment_options"].as_array().map(Vec::len), Some(3), "{added}");

    // Another merchant's poll does not find it, cached or not.
    let other = create_merchant(&state.pool, "Other").await.expect("merchant").merchant_id;
    let refused = payrail::invoice::load_current_view(&state.pool, Some(&other), &invoice.id, state.clock.now()).await;
    assert!(matches!(refused, Err(InvoiceError::NotFound { .. })), "{refused:?}");
}

/// A chain step applies its payments together, set-based. What that writes must be exactly what
/// applying them one by one writes: what each payment did, the invoices' statuses, the balances,
/// and each invoice's events in order with their data — for an invoice paid by three payments in
/// one step (two assets, one still waiting), a known payment confirmed, a new one waiting, and a
/// late one (held, written on its own).
#[sqlx::test]
async fn a_step_applied_together_writes_what_one_by_one_writes(pool: PgPool) {
    let (state, clock) = state_with_clock(pool.clone());
    let mut outcomes = Vec::new();
    for (run, together) in [("a", true), ("b", false)] {
        let merchant = create_merchant(&state.pool, &format!("Shop {run}")).await.expect("merchant");
        let m = merchant.merchant_id.as_str();
        let late = new_invoice(&state, m, "25.00", &[USDC_POLYGON]).await;
        clock.advance(Duration::seconds(600));
        let split = new_invoice(&state, m, "25.00", &[USDC_POLYGON, USDT_POLYGON]).await;
        let waiting = new_invoice(&state, m, "25.00", &[USDC_POLYGON]).await;
        let pending = new_invoice(&state, m, "25.00", &[USDC_POLYGON]).await;
        apply(&state, &observed(&waiting, USDC_POLYGON, &format!("0x{run}4"), 25_000_000, 0)).await.expect("seen before");
        clock.advance(Duration::seconds(400));
        let step = [
            observed(&split, USDC_POLYGON, &format!("0x{run}1"), 10_000_000, 2),
            observed(&split, USDT_POLYGON, &format!("0x{run}2"), 15_000_000, 2),
            observed(&split, USDC_POLYGON, &format!("0x{run}3"), 1_000_000, 0),
            observed(&waiting, USDC_POLYGON, &format!("0x{run}4"), 25_000_000, 3),
            observed(&pending, USDC_POLYGON, &format!("0x{run}5"), 25_000_000, 0),
            observed(&late, USDC_POLYGON, &format!("0x{run}6"), 25_000_000, 2),
        ];
        let mut tx = state.pool.begin().await.expect("begin");
        let applied = if together {
            payrail::invoice::apply_payments(&mut tx, &state.ledger, &step, clock.now()).await.expect("together")
        } else {
            let mut applied = Vec::new();
            for payment in &step {
                applied.push(apply_payment(&mut tx, &state.ledger, payment, clock.now()).await.expect("one"));
            }
            applied
        };
        tx.commit().await.expect("commit");
        let did: Vec<_> = applied.iter().map(|a| (a.invoice_status, a.credited, a.applied_to)).collect();
        let mut invoices = Vec::new();
        for invoice in [&split, &waiting, &pending, &late] {
            let shown = view(&state, &invoice.id).await;
            let announced: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT event_type, payload->'data'->>'status', payload->'data'->>'amount_paid' FROM outbox \
                 WHERE object_id = $1 OR object_id IN (SELECT id FROM payments WHERE invoice_id = $1) ORDER BY id",
            )
            .bind(&invoice.id)
            .fetch_all(&pool)
            .await
            .expect("events");
            invoices.push((shown.status, shown.amount_paid, announced));
        }
        let mut balances = Vec::new();
        for (account, asset) in [
            (AccountCode::merchant(m), USDC_POLYGON),
            (AccountCode::merchant(m), USDT_POLYGON),
            (AccountCode::unapplied(m), USDC_POLYGON),
        ] {
            balances.push(balance(&state, &account, asset).await);
        }
        outcomes.push((did, invoices, balances));
    }
    let together = &outcomes[0];
    assert_eq!(together, &outcomes[1]);
    // And it is what the step means: paid by the first two and overpaid pending the third.
    assert_eq!(together.1[0].0, InvoiceStatus::Paid);
    assert_eq!(together.1[1].0, InvoiceStatus::Paid);
    assert_eq!(together.1[2].0, InvoiceStatus::Processing);
    assert_eq!(together.1[3].0, InvoiceStatus::Expired);
    let types: Vec<&str> = together.1[0].2.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        types,
        ["invoice.created", "payment.detected", "payment.confirmed", "payment.detected", "payment.confirmed", "invoice.paid", "payment.detected"]
    );
    assert_eq!(together.2[2], SignedAmount::positive(amount(25_000_000)));
    trial_balance_is_zero(&pool).await;
}
