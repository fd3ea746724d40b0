//! What a console page answers when it cannot show what was asked: an HTML page with the status,
//! never a stack of JSON. A request without a live session is sent to the sign-in page instead.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session, or one that ended: sign in (again), then come back to `next`.
    #[error("sign in first")]
    SignIn { next: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    /// A form without the session's CSRF token, or with another one.
    #[error("the form is out of date or did not come from this console: reload the page and try again")]
    Csrf,
    /// A filter or form field that cannot be read; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// An operation the API refused (its status and message are shown as they are).
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    /// The key's own request rate is spent.
    #[error("too many requests for this API key; try again in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("the database is unavailable; try again in a moment")]
    Database(#[source] sqlx::Error),
}

pub type Result<T, E = ConsoleError> = std::result::Result<T, E>;

impl From<sqlx::Error> for ConsoleError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<payrail_api::ApiError> for ConsoleError {
    fn from(error: payrail_api::ApiError) -> Self {
        match error.status {
            StatusCode::NOT_FOUND => Self::NotFound("page"),
            status => Self::Refused { status, message: error.message },
        }
    }
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            Self::SignIn { .. } => StatusCode::SEE_OTHER,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Forbidden(_) | Self::Csrf => StatusCode::FORBIDDEN,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Refused { status, .. } => *status,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if let Self::SignIn { next } = &self {
            return Redirect::to(&format!("/console/login?next={}", crate::page::query_escape(next))).into_response();
        }
        if let Self::Database(error) = &self {
            tracing::warn!(target: "console", %error, "console page failed");
        }
        let status = self.status();
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "payrail console — " (status.as_u16()) } link rel="stylesheet" href=(crate::page::STYLE_PATH); link rel="icon" href="data:,"; }
                body.error {
                    main {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("error")) }
                        p.message { (self.to_string()) }
                        p { a href="/console" { "Back to the console" } }
                    }
                }
            }
        };
        let mut response = (status, axum::response::Html(body.into_string())).into_response();
        crate::page::secure_headers(response.headers_mut());
        let retry_after = match &self {
            Self::RateLimited { retry_after_s } => Some(*retry_after_s),
            Self::Database(_) => Some(2),
            _ => None,
        };
        if let Some(seconds) = retry_after.and_then(|s| header::HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        response
    }
}
