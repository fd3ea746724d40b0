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
        for (_, operation) in operations_mut(openapi) {
            operation.responses.responses.entry("429".to_owned()).or_insert_with(|| response.clone().into());
        }
    }
}

/// Every operation of the document with its path, for the modifiers that adjust them all.
fn operations_mut(openapi: &mut utoipa::openapi::OpenApi) -> impl Iterator<Item = (&String, &mut utoipa::openapi::path::Operation)> {
    openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
        [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch]
            .into_iter()
            .flatten()
            .map(move |operation| (path, operation))
    })
}

/// Operation ids are the handlers' names, which repeat across modules (`show`, `list`, `create`):
/// a client generator makes one method per id, so each repeated id becomes its path's nouns with
/// the name (`GET /v1/invoices/{id}` `show` → `invoices_show`, `POST /v1/payouts/{id}/cancel`
/// `cancel` → `payouts_cancel`). Ids used once stay as they are.
struct UniqueOperationIds;

impl UniqueOperationIds {
    fn renamed(path: &str, id: &str) -> String {
        let mut nouns: Vec<&str> =
            path.split('/').filter(|s| !s.is_empty() && *s != "v1" && !s.starts_with('{')).collect();
        if nouns.last() == Some(&id) {
            nouns.pop();
        }
        let prefix = nouns.join("_");
        if prefix.is_empty() {
            id.to_owned()
        } else if prefix.ends_with(id) {
            prefix
        } else {
            format!("{prefix}_{id}")
        }
    }
}

impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut uses: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (_, operation) in operations_mut(openapi) {
            if let Some(id) = &operation.operation_id {
                *uses.entry(id.clone()).or_default() += 1;
            }
        }
        for (path, operation) in operations_mut(openapi) {
            if let Some(id) = operation.operation_id.as_mut().filter(|id| uses.get(id.as_str()).is_some_and(|n| *n > 1)) {
                *id = Self::renamed(path, id);
            }
        }
    }
}

/// A response object must have a description (OpenAPI 3.1, 4.8.17.1), and client generators refuse
/// a document without: responses annotated with a body alone are described by their status.
struct DescribedResponses;

impl Modify for DescribedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (_, operation) in operations_mut(openapi) {
            for (status, response) in operation.responses.responses.iter_mut() {
                if let utoipa::openapi::RefOr::T(response) = response {
                    if response.description.is_empty() {
                        response.description = status_text(status).to_owned();
                    }
                }
            }
        }
    }
}

/// The reason phrase of an HTTP status code, as written in the document.
fn status_text(status: &str) -> &'static str {
    status
        .parse::<u16>()
        .ok()
        .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Response")
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
    info(title = "payrail", description = "Invoices, payments and balances of a payrail daemon. The web console under /console (HTML pages for people signed in with an API key) is not part of this document."),
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
    modifiers(&BearerAuth, &RateLimited, &UniqueOperationIds, &DescribedResponses)
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_an_id_of_its_own() {
        let doc = document();
        let mut seen = std::collections::HashMap::new();
        for (path, item) in &doc.paths.paths {
            for operation in [&item.get, &item.put, &item.post, &item.delete, &item.patch].into_iter().flatten() {
                let id = operation.operation_id.clone().unwrap_or_else(|| panic!("{path} has no operation id"));
                if let Some(other) = seen.insert(id.clone(), path.clone()) {
                    panic!("{id} names operations of {other} and {path}");
                }
            }
        }
        assert_eq!(UniqueOperationIds::renamed("/v1/invoices/{id}", "show"), "invoices_show");
        assert_eq!(UniqueOperationIds::renamed("/v1/payouts/{id}/cancel", "cancel"), "payouts_cancel");
        assert_eq!(UniqueOperationIds::renamed("/v1/balance_transactions", "transactions"), "balance_transactions");
        assert_eq!(UniqueOperationIds::renamed("/pay/{id}", "page"), "pay_page");
    }

    #[test]
    fn every_response_is_described() {
        let doc = serde_json::to_value(document()).expect("serializes");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("item") {
                for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                    let described = response.get("$ref").is_some() || response["description"].as_str().is_some_and(|d| !d.is_empty());
                    assert!(described, "{method} {path} {status} has no description");
                }
            }
        }
    }
}
