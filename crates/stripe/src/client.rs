//! The one file that talks to Stripe's REST API: form-encoded requests, bearer secret key, an
//! `Idempotency-Key` on every creating call, and the few objects the card rail reads back.
//!
//! Objects are read leniently: unknown fields are ignored, and an expandable field (`latest_charge`,
//! `charge`, `payment_intent`) is accepted as an id or as the expanded object, so the same types
//! read Stripe's answers, its webhook payloads of any API version, and localstripe's.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::{SecretString, StripeConfig};
use crate::money::{Amount, Fiat};

use super::error::{Result, StripeError};

/// The API version the requests are written against.
pub const STRIPE_API_VERSION: &str = "2024-06-20";
/// Longest body read from Stripe.
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// How many times a call that never reached Stripe (connection refused) is tried again.
pub const CONNECT_RETRIES_MAX: u32 = 2;
/// Most objects one page of a list answer holds (Stripe's own cap).
pub const LIST_PAGE_LIMIT_MAX: u32 = 100;

/// A form body: `key=value` pairs, nested keys written as Stripe expects (`metadata[invoice_id]`).
pub type Form = Vec<(String, String)>;

fn id_or_object<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::String(id)) => Some(id),
        Some(Value::Object(object)) => object.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    })
}

fn metadata<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let value = Option::<BTreeMap<String, Value>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(value
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Number(n) => Some((k, n.to_string())),
            _ => None,
        })
        .collect())
}

/// The error object in Stripe's error answers and in `last_payment_error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ErrorObject {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(flatten)]
    object: ErrorObject,
    #[serde(default)]
    payment_intent: Option<PaymentIntent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: String,
    pub amount: u64,
    /// What was actually captured; older versions and localstripe leave it out.
    #[serde(default)]
    pub amount_received: Option<u64>,
    pub currency: String,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "id_or_object")]
    pub latest_charge: Option<String>,
    /// Before `latest_charge` existed: `charges.data[]`.
    #[serde(default)]
    charges: Option<ChargeList>,
    #[serde(default)]
    pub last_payment_error: Option<ErrorObject>,
    #[serde(default)]
    pub next_action: Option<Value>,
    /// The Stripe Customer it charged, when it names one.
    #[serde(default, deserialize_with = "id_or_object")]
    pub customer: Option<String>,
    /// The PaymentMethod it charged.
    #[serde(default, deserialize_with = "id_or_object")]
    pub payment_method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct ChargeList {
    #[serde(default)]
    data: Vec<ChargeRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct ChargeRef {
    id: String,
}

impl PaymentIntent {
    /// The charge that moved the money, however the API version spells it.
    pub fn charge_id(&self) -> Option<String> {
        self.latest_charge
            .clone()
            .or_else(|| self.charges.as_ref().and_then(|c| c.data.last()).map(|c| c.id.clone()))
    }

    /// What the payer was charged: `amount_received`, else `amount` once succeeded.
    pub fn received(&self) -> u64 {
        self.amount_received.filter(|a| *a > 0).unwrap_or(self.amount)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Charge {
    pub id: String,
    pub amount: u64,
    /// What was captured; older versions and localstripe leave it out (then `amount`, once captured).
    #[serde(default)]
    pub amount_captured: Option<u64>,
    #[serde(default)]
    pub amount_refunded: u64,
    pub currency: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: i64,
    /// `succeeded`, `pending` or `failed`.
    #[serde(default)]
    pub status: Option<String>,
    /// `false` for an authorisation not (yet) captured: no money moved.
    #[serde(default)]
    pub captured: Option<bool>,
    #[serde(default, deserialize_with = "id_or_object")]
    pub payment_intent: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
}

impl Charge {
    /// Whether money moved: the charge succeeded and was captured.
    pub fn is_settled(&self) -> bool {
        self.status.as_deref() == Some("succeeded") && self.captured != Some(false)
    }

    /// What the payer was charged: `amount_captured`, else `amount`.
    pub fn captured_amount(&self) -> u64 {
        self.amount_captured.filter(|a| *a > 0).unwrap_or(self.amount)
    }
}

/// One page of a list answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

/// Which charges `GET /v1/charges` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeQuery {
    /// Created after this (unix seconds, exclusive): `created[gt]`.
    pub created_gt: i64,
    /// Created before this (unix seconds, exclusive): `created[lt]`. Stripe takes both bounds;
    /// localstripe takes only one and answers 400 to both.
    pub created_lt: Option<i64>,
    /// Page size, at most [`LIST_PAGE_LIMIT_MAX`].
    pub limit: u32,
    /// The last charge of the previous page.
    pub starting_after: Option<String>,
}

impl ChargeQuery {
    pub fn query(&self) -> Result<Vec<(&'static str, String)>> {
        let mut query = vec![
            ("created[gt]", self.created_gt.to_string()),
            ("limit", self.limit.clamp(1, LIST_PAGE_LIMIT_MAX).to_string()),
        ];
        if let Some(lt) = self.created_lt {
            query.push(("created[lt]", lt.to_string()));
        }
        if let Some(after) = &self.starting_after {
            query.push(("starting_after", path_segment(after)?.to_owned()));
        }
        Ok(query)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: u64,
    pub currency: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "id_or_object")]
    pub charge: Option<String>,
    #[serde(default, deserialize_with = "id_or_object")]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// A payout from the Stripe balance to the account's bank.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Payout {
    pub id: String,
    pub amount: u64,
    pub currency: String,
    /// `pending`, `in_transit`, `paid`, `failed` or `canceled`.
    pub status: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: i64,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub failure_message: Option<String>,
}

/// `POST /v1/payouts`: `amount` of `currency` to the account's default bank account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayout {
    pub amount: u64,
    /// Lower case, as Stripe takes it.
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
}

impl NewPayout {
    pub fn form(&self) -> Form {
        let mut form = vec![("amount".to_owned(), self.amount.to_string()), ("currency".to_owned(), self.currency.clone())];
        for (key, value) in &self.metadata {
            form.push((format!("metadata[{key}]"), value.clone()));
        }
        form
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub amount: u64,
    pub currency: String,
    #[serde(default, deserialize_with = "id_or_object")]
    pub charge: Option<String>,
    #[serde(default, deserialize_with = "id_or_object")]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default, deserialize_with = "id_or_object")]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub amount_total: Option<u64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
}

/// Stripe writes currencies in lower case ("usd").
pub fn stripe_currency(fiat: Fiat) -> String {
    fiat.code().to_ascii_lowercase()
}

/// Stripe's amount for `amount` minor units of `fiat`, or `None` where Stripe's smallest unit is
/// not ISO 4217's (ISK: zero decimals in ISO, two at Stripe) or the amount is beyond any charge.
pub fn stripe_amount(fiat: Fiat, amount: Amount) -> Option<u64> {
    if fiat.code() == "ISK" {
        return None;
    }
    amount.to_string().parse::<u64>().ok().filter(|a| *a > 0 && *a <= 99_999_999_999)
}

/// What the card rail asks of a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPaymentIntent {
    pub amount: u64,
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
    /// Confirm at once with this PaymentMethod (create+confirm in one call).
    pub payment_method: Option<String>,
    /// The Stripe Customer the PaymentMethod belongs to (a saved card).
    pub customer: Option<String>,
    /// Charged while the payer is away (a subscription's renewal with the card on file).
    pub off_session: bool,
    /// Where Stripe sends its receipt: the invoice's `buyer_email`.
    pub receipt_email: Option<String>,
}

impl NewPaymentIntent {
    pub fn form(&self) -> Form {
        let mut form = vec![
            ("amount".to_owned(), self.amount.to_string()),
            ("currency".to_owned(), self.currency.clone()),
            // Cards only: no redirect-based method, so no return URL is needed to confirm.
            ("payment_method_types[]".to_owned(), "card".to_owned()),
        ];
        for (key, value) in &self.metadata {
            form.push((format!("metadata[{key}]"), value.clone()));
        }
        if let Some(customer) = &self.customer {
            form.push(("customer".to_owned(), customer.clone()));
        }
        if let Some(email) = &self.receipt_email {
            form.push(("receipt_email".to_owned(), email.clone()));
        }
        if let Some(method) = &self.payment_method {
            form.push(("payment_method".to_owned(), method.clone()));
            form.push(("confirm".to_owned(), "true".to_owned()));
            if self.off_session {
                form.push(("off_session".to_owned(), "true".to_owned()));
            }
        }
        form
    }
}

/// `POST /v1/customers`: the Stripe Customer a payrail customer's saved card belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Customer {
    pub id: String,
}

/// A Checkout Session for one invoice: one line, the invoice's amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCheckoutSession {
    pub amount: u64,
    pub currency: String,
    pub product_name: String,
    pub invoice_id: String,
    pub metadata: BTreeMap<String, String>,
    pub success_url: String,
    pub cancel_url: String,
    /// Unix seconds; Stripe accepts 30 minutes to 24 hours from now.
    pub expires_at: Option<i64>,
    /// The Stripe Customer to save the card to, for a subscription's renewals.
    pub save_card_for: Option<String>,
    /// The payer's e-mail (the invoice's `buyer_email`): filled in on Stripe's page and where its
    /// receipt goes.
    pub receipt_email: Option<String>,
    /// The language of Stripe's page: the checkout page's (the invoice's `locale`), else Stripe
    /// follows the browser.
    pub locale: Option<String>,
}

impl NewCheckoutSession {
    pub fn form(&self) -> Form {
        let mut form = vec![
            ("mode".to_owned(), "payment".to_owned()),
            ("payment_method_types[]".to_owned(), "card".to_owned()),
            ("client_reference_id".to_owned(), self.invoice_id.clone()),
            ("line_items[0][quantity]".to_owned(), "1".to_owned()),
            ("line_items[0][price_data][currency]".to_owned(), self.currency.clone()),
            ("line_items[0][price_data][unit_amount]".to_owned(), self.amount.to_string()),
            ("line_items[0][price_data][product_data][name]".to_owned(), self.product_name.clone()),
            ("success_url".to_owned(), self.success_url.clone()),
            ("cancel_url".to_owned(), self.cancel_url.clone()),
        ];
        for (key, value) in &self.metadata {
            form.push((format!("metadata[{key}]"), value.clone()));
            // The PaymentIntent carries them too, so its own events name the invoice.
            form.push((format!("payment_intent_data[metadata][{key}]"), value.clone()));
        }
        if let Some(at) = self.expires_at {
            form.push(("expires_at".to_owned(), at.to_string()));
        }
        if let Some(customer) = &self.save_card_for {
            form.push(("customer".to_owned(), customer.clone()));
            form.push(("payment_intent_data[setup_future_usage]".to_owned(), "off_session".to_owned()));
        }
        if let Some(email) = &self.receipt_email {
            // Stripe takes a customer or an e-mail to fill in, not both.
            if self.save_card_for.is_none() {
                form.push(("customer_email".to_owned(), email.clone()));
            }
            form.push(("payment_intent_data[receipt_email]".to_owned(), email.clone()));
        }
        form.push(("locale".to_owned(), self.locale.clone().unwrap_or_else(|| "auto".to_owned())));
        form
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefund {
    pub payment_intent: String,
    pub amount: u64,
    pub reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl NewRefund {
    pub fn form(&self) -> Form {
        let mut form = vec![
            ("payment_intent".to_owned(), self.payment_intent.clone()),
            ("amount".to_owned(), self.amount.to_string()),
        ];
        if let Some(reason) = &self.reason {
            form.push(("reason".to_owned(), reason.clone()));
        }
        for (key, value) in &self.metadata {
            form.push((format!("metadata[{key}]"), value.clone()));
        }
        form
    }
}

/// Stripe's REST API. Cheap to clone.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    api_base: String,
    secret_key: SecretString,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

impl StripeClient {
    /// `None` when the configuration has no secret key.
    pub fn new(config: &StripeConfig) -> Result<Option<Self>> {
        let Some(secret_key) = config.secret_key().cloned() else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms.min(5_000)))
            .user_agent(concat!("payrail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Transport { endpoint: config.api_base.clone(), reason: e.to_string() })?;
        Ok(Some(Self { http, api_base: config.api_base.clone(), secret_key }))
    }

    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// `POST /v1/payment_intents`, confirming at once when a payment method is given. A declined
    /// card is [`StripeError::Api`] with status 402 and the PaymentIntent when Stripe sends it.
    pub async fn create_payment_intent(&self, request: &NewPaymentIntent, idempotency_key: &str) -> Result<PaymentIntent> {
        self.post("/v1/payment_intents", &request.form(), Some(idempotency_key)).await
    }

    /// `POST /v1/customers`, for the payrail customer `customer_id` (in the metadata).
    pub async fn create_customer(&self, customer_id: &str, idempotency_key: &str) -> Result<Customer> {
        let form = vec![("metadata[payrail_customer]".to_owned(), customer_id.to_owned())];
        self.post("/v1/customers", &form, Some(idempotency_key)).await
    }

    /// `POST /v1/payment_methods/{id}/attach`: the card kept on `customer` for later charges.
    pub async fn attach_payment_method(&self, payment_method: &str, customer: &str) -> Result<Value> {
        let form = vec![("customer".to_owned(), customer.to_owned())];
        self.post(&format!("/v1/payment_methods/{}/attach", path_segment(payment_method)?), &form, None).await
    }

    pub async fn payment_intent(&self, id: &str) -> Result<PaymentIntent> {
        self.get(&format!("/v1/payment_intents/{}", path_segment(id)?)).await
    }

    /// `POST /v1/checkout/sessions` (Stripe only: localstripe has no Checkout Sessions).
    pub async fn create_checkout_session(&self, request: &NewCheckoutSession, idempotency_key: &str) -> Result<CheckoutSession> {
        self.post("/v1/checkout/sessions", &request.form(), Some(idempotency_key)).await
    }

    pub async fn create_refund(&self, request: &NewRefund, idempotency_key: &str) -> Result<Refund> {
        self.post("/v1/refunds", &request.form(), Some(idempotency_key)).await
    }

    pub async fn charge(&self, id: &str) -> Result<Charge> {
        self.get(&format!("/v1/charges/{}", path_segment(id)?)).await
    }

    /// `GET /v1/charges`: one page of the charges `query` names.
    pub async fn list_charges(&self, query: &ChargeQuery) -> Result<Page<Charge>> {
        self.get_with_query("/v1/charges", &query.query()?).await
    }

    /// `POST /v1/payouts`; the account's payouts must be on the manual schedule.
    pub async fn create_payout(&self, request: &NewPayout, idempotency_key: &str) -> Result<Payout> {
        self.post("/v1/payouts", &request.form(), Some(idempotency_key)).await
    }

    pub async fn payout(&self, id: &str) -> Result<Payout> {
        self.get(&format!("/v1/payouts/{}", path_segment(id)?)).await
    }

    /// `GET /v1/payouts`: one page, newest first, after `starting_after`.
    pub async fn list_payouts(&self, limit: u32, starting_after: Option<&str>) -> Result<Page<Payout>> {
        let mut query = vec![("limit", limit.clamp(1, LIST_PAGE_LIMIT_MAX).to_string())];
        if let Some(after) = starting_after {
            query.push(("starting_after", path_segment(after)?.to_owned()));
        }
        self.get_with_query("/v1/payouts", &query).await
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, form: &Form, idempotency_key: Option<&str>) -> Result<T> {
        let endpoint = format!("POST {path}");
        let mut tries = 0;
        loop {
            let mut request = self
                .http
                .post(format!("{}{path}", self.api_base))
                .bearer_auth(self.secret_key.expose())
                .header("Stripe-Version", STRIPE_API_VERSION)
                .form(form);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            match request.send().await {
                Ok(response) => return read(&endpoint, response).await,
                // The request never left: trying again cannot do anything twice.
                Err(e) if e.is_connect() && tries < CONNECT_RETRIES_MAX => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
                }
                Err(e) => return Err(StripeError::Transport { endpoint, reason: without_url(&e) }),
            }
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.get_with_query(path, &[]).await
    }

    async fn get_with_query<T: serde::de::DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let endpoint = format!("GET {path}");
        let response = self
            .http
            .get(format!("{}{path}", self.api_base))
            .query(query)
            .bearer_auth(self.secret_key.expose())
            .header("Stripe-Version", STRIPE_API_VERSION)
            .send()
            .await
            .map_err(|e| StripeError::Transport { endpoint: endpoint.clone(), reason: without_url(&e) })?;
        read(&endpoint, response).await
    }
}

/// Stripe ids are ASCII letters, digits and underscores; anything else never reaches a URL.
fn path_segment(id: &str) -> Result<&str> {
    if !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(StripeError::Decode { endpoint: "request".to_owned(), reason: format!("{id:?} is not a stripe id") })
    }
}

fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

async fn read<T: serde::de::DeserializeOwned>(endpoint: &str, response: reqwest::Response) -> Result<T> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| StripeError::Transport { endpoint: endpoint.to_owned(), reason: without_url(&e) })?;
    if bytes.len() > RESPONSE_BYTES_MAX {
        return Err(StripeError::Decode { endpoint: endpoint.to_owned(), reason: format!("answer of {} bytes", bytes.len()) });
    }
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| StripeError::Decode { endpoint: endpoint.to_owned(), reason: e.to_string() });
    }
    let (object, payment_intent) = match serde_json::from_slice::<ErrorAnswer>(&bytes) {
        Ok(answer) => (answer.error.object, answer.error.payment_intent),
        Err(_) => (ErrorObject::default(), None),
    };
    Err(StripeError::Api {
        endpoint: endpoint.to_owned(),
        status: status.as_u16(),
        message: object.message.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
        code: object.code,
        decline_code: object.decline_code,
        payment_intent: payment_intent.map(Box::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_intent_form_is_flat_with_bracketed_keys() {
        let request = NewPaymentIntent {
            amount: 2500,
            currency: "usd".to_owned(),
            metadata: BTreeMap::from([("invoice_id".to_owned(), "inv_x".to_owned())]),
            payment_method: Some("pm_card_visa".to_owned()),
            customer: None,
            off_session: false,
            receipt_email: None,
        };
        let form = request.form();
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("amount", "2500"),
                ("currency", "usd"),
                ("payment_method_types[]", "card"),
                ("metadata[invoice_id]", "inv_x"),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
            ]
        );
    }

    /// A session for `inv_x` of `amount` cents, nothing optional set.
    fn session(amount: u64, currency: &str) -> NewCheckoutSession {
        NewCheckoutSession {
            amount,
            currency: currency.to_owned(),
            product_name: "Invoice inv_x".to_owned(),
            invoice_id: "inv_x".to_owned(),
            metadata: BTreeMap::new(),
            success_url: "https://pay.example/pay/inv_x".to_owned(),
            cancel_url: "https://pay.example/pay/inv_x".to_owned(),
            expires_at: None,
            save_card_for: None,
            receipt_email: None,
            locale: None,
        }
    }

    #[test]
    fn session_form_carries_the_invoice_on_the_session_and_its_payment_intent() {
        let session = NewCheckoutSession {
            metadata: BTreeMap::from([("invoice_id".to_owned(), "inv_x".to_owned())]),
            ..session(100, "eur")
        };
        let form = session.form();
        assert!(form.contains(&("payment_intent_data[metadata][invoice_id]".to_owned(), "inv_x".to_owned())));
        assert!(form.contains(&("line_items[0][price_data][unit_amount]".to_owned(), "100".to_owned())));
        assert!(!form.iter().any(|(k, _)| k == "expires_at"));
    }

    #[test]
    fn session_form_names_the_payers_email_and_language() {
        let mut session = NewCheckoutSession {
            receipt_email: Some("payer@example.com".to_owned()),
            locale: Some("fr".to_owned()),
            ..session(100, "eur")
        };
        let form = session.form();
        for pair in [("customer_email", "payer@example.com"), ("payment_intent_data[receipt_email]", "payer@example.com"), ("locale", "fr")] {
            assert!(form.contains(&(pair.0.to_owned(), pair.1.to_owned())), "{pair:?} in {form:?}");
        }
        // With a customer, Stripe takes its e-mail from it: the receipt still goes to the payer.
        session.save_card_for = Some("cus_1".to_owned());
        session.locale = None;
        let form = session.form();
        assert!(!form.iter().any(|(k, _)| k == "customer_email"));
        assert!(form.contains(&("payment_intent_data[receipt_email]".to_owned(), "payer@example.com".to_owned())));
        assert!(form.contains(&("locale".to_owned(), "auto".to_owned())));
    }

    #[test]
    fn a_card_subscription_saves_the_card_and_renews_off_session() {
        let session = NewCheckoutSession { save_card_for: Some("cus_S1".to_owned()), ..session(999, "usd") };
        let form = session.form();
        assert!(form.contains(&("customer".to_owned(), "cus_S1".to_owned())));
        assert!(form.contains(&("payment_intent_data[setup_future_usage]".to_owned(), "off_session".to_owned())));
        let renewal = NewPaymentIntent {
            amount: 999,
            currency: "usd".to_owned(),
            metadata: BTreeMap::new(),
            payment_method: Some("pm_1".to_owned()),
            customer: Some("cus_S1".to_owned()),
            off_session: true,
            receipt_email: None,
        };
        let form = renewal.form();
        let tail: Vec<(&str, &str)> = form.iter().skip(3).map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(tail, [("customer", "cus_S1"), ("payment_method", "pm_1"), ("confirm", "true"), ("off_session", "true")]);
    }

    #[test]
    fn expandable_fields_read_as_ids_or_objects() {
        let as_object: PaymentIntent = serde_json::from_value(serde_json::json!({
            "id": "pi_1", "status": "succeeded", "amount": 5, "currency": "usd",
            "latest_charge": {"id": "ch_1", "amount": 5}, "metadata": {"invoice_id": "inv_a", "n": 3}
        }))
        .expect("reads");
        assert_eq!(as_object.charge_id().as_deref(), Some("ch_1"));
        assert_eq!(as_object.metadata.get("n").map(String::as_str), Some("3"));
        let old: PaymentIntent = serde_json::from_value(serde_json::json!({
            "id": "pi_1", "status": "succeeded", "amount": 5, "amount_received": 5, "currency": "usd",
            "charges": {"data": [{"id": "ch_9"}]}, "metadata": null
        }))
        .expect("reads");
        assert_eq!(old.charge_id().as_deref(), Some("ch_9"));
        assert_eq!(old.received(), 5);
    }

    #[test]
    fn amounts_follow_iso_minor_units_except_where_stripe_differs() {
        assert_eq!(stripe_amount(Fiat::USD, Amount::from_u64(2500)), Some(2500));
        assert_eq!(stripe_amount(Fiat::JPY, Amount::from_u64(300)), Some(300));
        assert_eq!(stripe_amount(Fiat::USD, Amount::ZERO), None);
        let isk: Fiat = "ISK".parse().expect("iso 4217");
        assert_eq!(stripe_amount(isk, Amount::from_u64(100)), None);
    }

    #[test]
    fn charge_queries_are_bounded_and_read_leniently() {
        let query = ChargeQuery { created_gt: 1_700_000_000, created_lt: Some(1_700_000_600), limit: 500, starting_after: Some("ch_1".to_owned()) };
        let pairs = query.query().expect("query");
        assert_eq!(
            pairs,
            [
                ("created[gt]", "1700000000".to_owned()),
                ("limit", "100".to_owned()),
                ("created[lt]", "1700000600".to_owned()),
                ("starting_after", "ch_1".to_owned()),
            ]
        );
        let bad = ChargeQuery { starting_after: Some("ch_1&limit=1".to_owned()), ..query };
        assert!(bad.query().is_err());
        let page: Page<Charge> = serde_json::from_value(serde_json::json!({
            "object": "list", "has_more": true,
            "data": [{"id": "ch_1", "amount": 2500, "amount_refunded": 1000, "currency": "usd", "created": 1_700_000_001,
                      "status": "succeeded", "captured": true, "payment_intent": {"id": "pi_1"}},
                     {"id": "ch_2", "amount": 700, "currency": "usd", "status": "succeeded", "captured": false}]
        }))
        .expect("reads");
        assert!(page.has_more);
        assert_eq!(page.data[0].payment_intent.as_deref(), Some("pi_1"));
        assert!(page.data[0].is_settled() && !page.data[1].is_settled(), "an uncaptured charge moved no money");
        assert_eq!(page.data[0].captured_amount(), 2500);
    }

    #[test]
    fn ids_are_checked_before_they_reach_a_path() {
        assert!(path_segment("pi_3Nx_abc").is_ok());
        for bad in ["", "../v1/charges", "pi_1?expand=x", "pi 1"] {
            assert!(path_segment(bad).is_err(), "{bad}");
        }
    }
}
