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
    /// Stable, machine-readable: `invalid_json`, `parameter_invalid`, `not_found`, …
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

#[derive(OpenApi)]
#[openapi(
    info(title = "payrail", description = "Invoices, payments and balances of a payrail daemon."),
    paths(
        super::invoices::create,
        super::invoices::list,
        super::invoices::show,
        super::invoices::void,
        super::balances::show,
        super::health::healthz,
        super::health::readyz,
        super::checkout::page,
        super::checkout::status,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
