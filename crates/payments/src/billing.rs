//! Subscriptions' invoices and the scheduler that moves subscriptions through time.
//!
//! A period is invoiced like anything else a merchant sells (priced at the rates of the moment,
//! payable on every rail, revenue split by the merchant's rule for `subscriptions/{plan}`), under an
//! idempotency key derived from the period and attempt: asking twice — two replicas, a crash after
//! the invoice was written — gives the same invoice, and [`payrail_subscriptions::schedule::attach`]
//! records it once.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use payrail_subscriptions::schedule::{self, Bill};
use payrail_subscriptions::SubscriptionsError;

use crate::clock::Clock;
use crate::db::leader::{HeldJob, JobLock, Leadership, Next};
use crate::db::replicas::Share;
use crate::invoice::create::EXPIRES_IN_S_MIN;
use crate::invoice::{create_invoice, void_invoice, AssetCatalog, CreateInvoice, InvoiceError, InvoicePolicy, InvoiceView};
use crate::ledger::Ledger;
use crate::money::Fiat;
use crate::rates::RateSource;

/// The scheduler's advisory lock: one replica moves subscriptions at a time.
pub const SCHEDULER_LOCK: &str = "payrail.subscriptions";
/// How often the scheduler looks at the clock.
pub const SCHEDULER_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error(transparent)]
    Subscriptions(#[from] SubscriptionsError),
}

/// What billing needs to price and address an invoice.
#[derive(Clone)]
pub struct Biller {
    pub pool: PgPool,
    pub ledger: Arc<Ledger>,
    pub catalog: Arc<AssetCatalog>,
    pub rates: Arc<dyn RateSource>,
    pub policy: Arc<InvoicePolicy>,
    /// The daemon's public URL, for the checkout links of `subscription.renewal_due`.
    pub public_url: String,
}

impl std::fmt::Debug for Biller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Biller").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

/// The order id of a plan's invoices: split rules may name it (`subscriptions/`).
pub fn order_id(plan_id: &str) -> String {
    format!("subscriptions/{plan_id}")
}

impl Biller {
    /// Invoices `bill`'s period (open until the period may no longer be paid, within the invoice
    /// policy's longest lifetime) and attaches the invoice to it. `None` when too little time is
    /// left to pay.
    pub async fn bill(&self, bill: &Bill, now: DateTime<Utc>) -> Result<Option<InvoiceView>, BillingError> {
        let fiat: Fiat = bill.currency.parse().map_err(|_| InvoiceError::UnsupportedCurrency { code: bill.currency.clone() })?;
        let left = u64::try_from((bill.pay_by - now).num_seconds()).unwrap_or(0);
        if left < EXPIRES_IN_S_MIN {
            return Ok(None);
        }
        let request = CreateInvoice {
            amount: bill.amount()?.to_decimal_string(fiat.minor_units()),
            currency: bill.currency.clone(),
            accepted: None,
            expires_in: Some(left.min(self.policy.expires_in_s_max)),
            order_id: Some(order_id(&bill.plan_id)),
            metadata: Some(serde_json::json!({ "subscription": {
                "id": bill.subscription_id,
                "period": bill.period,
                "period_start": bill.starts_at,
                "period_end": bill.ends_at,
                "payment": bill.payment,
            } })),
            customer: Some(bill.customer_id.clone()),
            promo_code: None,
            redirect_url: None,
            buyer_email: None,
            locale: None,
            underpayment_tolerance_bps: None,
            speed_policy: None,
        };
        let key = bill.invoice_key();
        let (invoice, _) = create_invoice(&self.pool, &self.catalog, self.rates.as_ref(), &self.policy, &bill.merchant_id, &request, Some(&key), now).await?;
        let checkout = (!self.public_url.is_empty()).then(|| format!("{}/pay/{}", self.public_url.trim_end_matches('/'), invoice.id));
        schedule::attach(&self.pool, &self.ledger, bill, &invoice.id, checkout, now).await?;
        Ok(Some(invoice))
    }

    /// Invoices every period of `subscription_id` (all subscriptions when `None`) that needs one now.
    pub async fn bill_due(&self, subscription_id: Option<&str>, now: DateTime<Utc>) -> Result<Vec<InvoiceView>, BillingError> {
        let mut made = Vec::new();
        for bill in schedule::bills(&self.pool, subscription_id, now).await? {
            match self.bill(&bill, now).await {
                Ok(Some(invoice)) => made.push(invoice),
                Ok(None) => {}
                // One subscription's trouble (a rate missing for its currency) does not hold up the rest.
                Err(error) if subscription_id.is_none() => {
                    tracing::warn!(target: "subscriptions", subscription = %bill.subscription_id, period = bill.period, %error, "period not invoiced; retrying next pass");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(made)
    }

    /// Voids invoices nobody is to pay any more (a subscription ended, or a period re-billed).
    /// One that is being paid already stays: its payment is the merchant's to refund.
    pub async fn void_all(&self, invoices: &[(String, String)], now: DateTime<Utc>) {
        for (merchant_id, invoice_id) in invoices {
            if let Err(error) = void_invoice(&self.pool, merchant_id, invoice_id, now).await {
                tracing::warn!(target: "subscriptions", invoice = %invoice_id, %error, "a subscription's invoice could not be voided");
            }
        }
    }

    /// One scheduler pass at `now`: subscriptions moved on, ended ones' invoices voided, due
    /// periods invoiced.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<schedule::Pass, BillingError> {
        let pass = schedule::pass(&self.pool, &self.ledger, now).await?;
        self.void_all(&pass.void_invoices, now).await;
        self.bill_due(None, now).await?;
        Ok(pass)
    }
}

struct Scheduling {
    biller: Biller,
    clock: Arc<dyn Clock>,
    interval: StdDuration,
}

impl HeldJob for Scheduling {
    type Error = std::convert::Infallible;

    async fn pass(&mut self, _leadership: &mut Leadership, _shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<Next, Self::Error> {
        match self.biller.pass(self.clock.now()).await {
            Ok(pass) if pass.moved > 0 || pass.periods > 0 => {
                tracing::info!(target: "subscriptions", moved = pass.moved, periods = pass.periods, "subscriptions moved on");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(target: "subscriptions", %error, "scheduler pass failed; retrying"),
        }
        Ok(Next::After(self.interval))
    }
}

/// The subscription scheduler: passes every `interval` while this replica holds
/// [`SCHEDULER_LOCK`], until `shutdown`.
pub async fn run_scheduler(biller: Biller, clock: Arc<dyn Clock>, interval: StdDuration, share: Option<Share>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let lock = JobLock::new(biller.pool.clone(), SCHEDULER_LOCK).spread(share);
    let mut job = Scheduling { biller, clock, interval };
    if let Err(error) = lock.hold(&mut job, &mut shutdown).await {
        match error {}
    }
}
