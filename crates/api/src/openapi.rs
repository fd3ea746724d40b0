//! The OpenAPI document, generated from the handlers' and types' annotations and served at
//! `/openapi.json`. A test checks that every route the router serves is documented.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The body of every error response.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_json`, `parameter_invalid`, `not_found`, …;
    /// `database_unavailable` (503, with `Retry-After`) on any route while the database cannot be
    /// reached: retry after the given seconds.
    pub code: String,
    pub message: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("pr_…").build()),
        );
    }
}

/// Every operation may answer 429: per API key, and per client address for public routes and for
/// addresses whose requests were refused as unauthenticated (see `limit`). Operations whose
/// annotations do not say so get it here.
struct RateLimited;

impl Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let response = ResponseBuilder::new()
            .description("rate_limited: too many requests for this API key or from this address")
            .header("Retry-After", HeaderBuilder::new().schema(Some(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Integer).build())).description(Some("seconds to wait")).build())
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.responses.responses.entry("429".to_owned()).or_insert_with(|| response.clone().into());
            }
        }
    }
}

/// `GET /metrics`, served by the router with [`crate::metrics::render`]; described here.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format: per chain tip, cursor and head lag, payments, reorgs, errors",
        content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn metrics() {}

/// `GET /openapi.json`, served by the router with [`document`]; described here.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document, OpenAPI 3.1", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "payrail", description = "Invoices, payments and balances of a payrail daemon."),
    paths(
        super::invoices::create,
        super::invoices::list,
        super::invoices::show,
        super::invoices::void,
        super::invoices::mark,
        super::balances::show,
        super::balances::transactions,
        super::invoices::unapplied,
        super::invoices::apply_unapplied,
        super::bitcoin::put_descriptor,
        super::bitcoin::get_descriptor,
        super::creators::create,
        super::creators::list,
        super::creators::show,
        super::creators::put_split_rules,
        super::creators::get_split_rules,
        super::creators::me,
        super::creators::statement,
        super::payouts::mine,
        super::payouts::run,
        super::payouts::cancel,
        super::settlements::addresses,
        super::settlements::put_address,
        super::settlements::confirm_address,
        super::settlements::confirm_creator_address,
        super::settlements::put_creator_address,
        super::settlements::creator_withdrawal,
        super::settlements::get_schedule,
        super::settlements::put_schedule,
        super::settlements::create,
        super::settlements::list,
        super::settlements::show,
        super::card_settlements::create,
        super::card_settlements::list,
        super::card_settlements::show,
        super::credits::create_customer,
        super::credits::list_customers,
        super::credits::get_customer,
        super::credits::update_customer,
        super::credits::create_currency,
        super::credits::list_currencies,
        super::credits::grant,
        super::credits::spend,
        super::credits::transfer,
        super::credits::balance,
        super::credits::transactions,
        super::credits::stream,
        super::credits::adjust,
        super::credits::create_pack,
        super::credits::list_packs,
        super::credits::update_pack,
        super::credits::purchase,
        super::credits::create_promo,
        super::credits::list_promos,
        super::credits::get_limits,
        super::credits::put_limits,
        super::subscriptions::create_plan,
        super::subscriptions::list_plans,
        super::subscriptions::get_plan,
        super::subscriptions::update_plan,
        super::subscriptions::subscribe,
        super::subscriptions::list_subscriptions,
        super::subscriptions::get_subscription,
        super::subscriptions::cancel,
        super::subscriptions::pause,
        super::subscriptions::resume,
        super::subscriptions::change,
        super::subscriptions::set_rule,
        super::subscriptions::list_rules,
        super::subscriptions::unlock,
        super::subscriptions::refund_unlock,
        super::subscriptions::access_one,
        super::subscriptions::access_check,
        super::subscriptions::subscription_report,
        super::subscriptions::sales_report,
        super::payouts::list,
        super::payouts::show,
        super::reconciliation::run,
        super::reconciliation::list,
        super::reconciliation::show,
        super::ledger::entries,
        super::ledger::trial_balance,
        super::health::healthz,
        super::health::readyz,
        super::checkout::page,
        super::checkout::status,
        super::checkout::live::events,
        super::checkout::claim::page,
        super::checkout::claim::claim,
        super::refunds::list,
        super::refunds::refund_unapplied,
        super::refunds::show,
        super::refunds::cancel,
        super::webhooks::create_endpoint,
        super::webhooks::list_endpoints,
        super::webhooks::get_endpoint,
        super::webhooks::update_endpoint,
        super::webhooks::rotate_secret,
        super::webhooks::delete_endpoint,
        super::webhooks::list_events,
        super::webhooks::show_event,
        super::webhooks::event_deliveries,
        super::webhooks::replay_event,
        super::keys::create,
        super::keys::list,
        super::keys::show,
        super::keys::revoke,
        super::keys::update,
        super::keys::rotate,
        super::merchants::create,
        super::stripe::webhook,
        super::stripe::refund,
        super::stripe::pay_by_card,
        metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth, &RateLimited)
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
