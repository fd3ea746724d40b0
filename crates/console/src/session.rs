//! Signing in to the console: an API key is exchanged for a session cookie, and every console
//! request after that is the key's.
//!
//! The cookie is HttpOnly and SameSite=Strict. Where the daemon is reached over HTTPS (or any host
//! but loopback) it is `__Host-payrail_session`: Secure, for this host only and `Path=/`, so no
//! other host of the same site can plant one; over plain HTTP on loopback (a developer's machine)
//! it is `payrail_session`, scoped to `/console`. Only its SHA-256 is stored.
//! A session is the key's in everything and is read again from the key on every request: its
//! role, merchant, creator and read-only scope, and its life — revoking or expiring the key ends
//! every session it opened. A session also ends when signed out or revoked, [`SESSION_FOR`] after
//! it began, or after [`IDLE_FOR`] unused.
//!
//! Every form carries the session's CSRF token and a POST without it changes nothing; the sign-in
//! form, which has no session yet, carries a token matched against a cookie of its own
//! (`payrail_login`). A wrong key counts against the client address like a refused bearer key.

use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};
use maud::html;
use payrail_api::AppState;
use payrail_payments::merchant::Role;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ConsoleError, Result};
use crate::page::{self, Cell, Section, Table, View};

/// The session cookie's name over plain HTTP on loopback; elsewhere it carries the `__Host-` prefix.
pub const SESSION_COOKIE: &str = "payrail_session";
const LOGIN_COOKIE: &str = "payrail_login";
/// How long ended sessions are kept before they are deleted (for the sessions page's history).
const ENDED_KEPT_FOR: Duration = Duration::days(7);
/// Longest a session lasts, used or not.
pub const SESSION_FOR: Duration = Duration::hours(12);
/// How long a session may go unused before it ends.
pub const IDLE_FOR: Duration = Duration::hours(1);
/// `last_seen_at` is written at most this often, so reading a page costs no write.
const TOUCH_EVERY: Duration = Duration::seconds(60);
const USER_AGENT_LEN_MAX: usize = 300;

/// Who is looking: a live session and the key behind it.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub session_id: String,
    pub key_id: String,
    pub role: Role,
    pub merchant_id: Option<String>,
    pub creator_id: Option<String>,
    pub read_only: bool,
    pub csrf: String,
}

impl Viewer {
    /// The merchant whose pages these are; other roles are refused.
    pub fn merchant(&self) -> Result<&str> {
        match (self.role, self.merchant_id.as_deref()) {
            (Role::Merchant, Some(id)) => Ok(id),
            _ => Err(ConsoleError::Forbidden("this page is for merchants")),
        }
    }

    /// Platform-wide pages: finance and admin keys only.
    pub fn finance(&self) -> Result<()> {
        match self.role {
            Role::Finance | Role::Admin => Ok(()),
            _ => Err(ConsoleError::Forbidden("this page is for finance")),
        }
    }

    /// The creator and its merchant, for a creator key.
    pub fn creator(&self) -> Result<(&str, &str)> {
        match (self.role, self.merchant_id.as_deref(), self.creator_id.as_deref()) {
            (Role::Creator, Some(merchant), Some(creator)) => Ok((merchant, creator)),
            _ => Err(ConsoleError::Forbidden("this page is for creators")),
        }
    }

    /// A form may change something: its CSRF token must be the session's, and the key may write.
    pub fn may_submit(&self, csrf: &str) -> Result<()> {
        if !bool::from(csrf.as_bytes().ct_eq(self.csrf.as_bytes())) {
            return Err(ConsoleError::Csrf);
        }
        if self.read_only {
            return Err(ConsoleError::Forbidden("this session's API key is read-only"));
        }
        Ok(())
    }

    pub fn role_name(&self) -> &'static str {
        role_name(self.role)
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Merchant => "merchant",
        Role::Creator => "creator",
        Role::Finance => "finance",
        Role::Admin => "admin",
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        // After signing in, back to the page asked for; a form's target is no page to return to.
        let reads = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
        let next = if reads { parts.uri.path_and_query().map_or("/console", |p| p.as_str()) } else { "/console" }.to_owned();
        let sign_in = || ConsoleError::SignIn { next: next.clone() };
        let token = cookie(&parts.headers, &cookie_name(&state.public_url, SESSION_COOKIE)).ok_or_else(sign_in)?;
        let now = state.clock.now();
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT s.id, s.csrf_token, s.last_seen_at, k.id AS key_id, k.role, k.merchant_id, k.creator_id, k.read_only, \
                    k.requests_per_s, k.burst \
               FROM console_sessions s JOIN api_keys k ON k.id = s.key_id \
              WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND s.last_seen_at > $3 \
                AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
        )
        .bind(digest(token).as_slice())
        .bind(now)
        .bind(now - IDLE_FOR)
        .fetch_optional(&state.pool)
        .await?;
        let row = row.ok_or_else(sign_in)?;
        let role = Role::parse(&row.role).ok_or_else(sign_in)?;
        // The key's own request rate holds in the console as in the API.
        let rate = row.requests_per_s.zip(row.burst).and_then(|(r, b)| Some((u32::try_from(r).ok()?, u32::try_from(b).ok()?)));
        if let Err(wait) = state.limiter.check_at(&row.key_id, std::time::Instant::now(), rate) {
            return Err(ConsoleError::RateLimited { retry_after_s: wait.as_secs().max(1) });
        }
        if now - row.last_seen_at >= TOUCH_EVERY {
            sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2")
                .bind(&row.id)
                .bind(now)
                .execute(&state.pool)
                .await?;
        }
        Ok(Self {
            session_id: row.id,
            key_id: row.key_id,
            role,
            merchant_id: row.merchant_id,
            creator_id: row.creator_id,
            read_only: row.read_only,
            csrf: row.csrf_token,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: String,
    csrf_token: String,
    last_seen_at: DateTime<Utc>,
    key_id: String,
    role: String,
    merchant_id: Option<String>,
    creator_id: Option<String>,
    read_only: bool,
    requests_per_s: Option<i32>,
    burst: Option<i32>,
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name && !v.is_empty()).then_some(v))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 32 random bytes in hex: session secrets and CSRF tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether cookies must be Secure: always, unless the daemon is reached over plain HTTP on a
/// loopback host (a developer's machine), where a Secure cookie would never be sent back.
fn secure(public_url: &str) -> bool {
    let Some(rest) = public_url.strip_prefix("http://") else {
        return true;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    !(host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// A console cookie's name: `__Host-{name}` wherever cookies are Secure.
fn cookie_name(public_url: &str, name: &str) -> String {
    if secure(public_url) {
        format!("__Host-{name}")
    } else {
        name.to_owned()
    }
}

fn set_cookie(public_url: &str, name: &str, value: &str, max_age: Duration) -> HeaderValue {
    let (name, scope) = if secure(public_url) { (cookie_name(public_url, name), "Path=/; Secure") } else { (name.to_owned(), "Path=/console") };
    let text = format!("{name}={value}; {scope}; HttpOnly; SameSite=Strict; Max-Age={}", max_age.num_seconds());
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("payrail_invalid=1"))
}

/// Where to go after signing in: a console path only (never another site).
fn next_path(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.starts_with("/console/login")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/console",
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /console/login`: the sign-in form, with a fresh sign-in CSRF token in its cookie.
pub async fn login_page(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<LoginQuery>) -> Response {
    login_form(&state, &headers, next_path(query.next.as_deref()), None, StatusCode::OK)
}

/// The sign-in form. A sign-in token already in the browser is kept, so two open sign-in pages
/// both work.
fn login_form(state: &AppState, headers: &HeaderMap, next: &str, problem: Option<&str>, status: StatusCode) -> Response {
    let token = cookie(headers, &cookie_name(&state.public_url, LOGIN_COOKIE))
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(random_token, str::to_owned);
    let body = page::bare(
        "Sign in",
        html! {
            main.login {
                h1 { "payrail console" }
                p { "Sign in with an API key. Merchants see their invoices and balances, creators their earnings, finance the chains, payouts and reconciliation." }
                @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
                form method="post" action="/console/login" {
                    input type="hidden" name="csrf" value=(token);
                    input type="hidden" name="next" value=(next);
                    label for="api_key" { "API key" }
                    input #api_key type="password" name="api_key" autocomplete="off" required placeholder="pr_…";
                    button type="submit" { "Sign in" }
                }
            }
        },
    );
    let mut response = (status, axum::response::Html(body.into_string())).into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(&state.public_url, LOGIN_COOKIE, &token, Duration::hours(1)));
    page::secure_headers(response.headers_mut());
    response
}

#[derive(Debug, serde::Deserialize)]
pub struct LoginForm {
    api_key: String,
    csrf: String,
    next: Option<String>,
}

/// `POST /console/login`: a valid key opens a session and goes on to `next`; a wrong one is 401
/// (counted against the address), a form without its sign-in token is 403.
pub async fn login(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Result<Response> {
    let expected = cookie(&headers, &cookie_name(&state.public_url, LOGIN_COOKIE)).ok_or(ConsoleError::Csrf)?;
    if !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return Err(ConsoleError::Csrf);
    }
    let next = next_path(form.next.as_deref());
    let now = state.clock.now();
    let principal = state.keys.authenticate(form.api_key.trim(), now).await?;
    let Some(principal) = principal else {
        return Ok(login_form(&state, &headers, next, Some("That API key is not valid."), StatusCode::UNAUTHORIZED));
    };
    // Signing in again ends the session this browser had (it would otherwise live on unseen).
    if let Some(old) = cookie(&headers, &cookie_name(&state.public_url, SESSION_COOKIE)) {
        sqlx::query("UPDATE console_sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(digest(old).as_slice())
            .bind(now)
            .execute(&state.pool)
            .await?;
    }
    let token = random_token();
    let user_agent: Option<String> =
        headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|ua| ua.chars().take(USER_AGENT_LEN_MAX).collect());
    sqlx::query(
        "INSERT INTO console_sessions (id, key_id, token_hash, csrf_token, user_agent, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
    )
    .bind(payrail_core::ids::new_id("ses"))
    .bind(&principal.key_id)
    .bind(digest(&token).as_slice())
    .bind(random_token())
    .bind(user_agent)
    .bind(now)
    .bind(now + SESSION_FOR)
    .execute(&state.pool)
    .await?;
    tracing::info!(target: "console", key_id = %principal.key_id, role = role_name(principal.role), "console session opened");
    let mut response = Redirect::to(next).into_response();
    let cookies = response.headers_mut();
    cookies.append(header::SET_COOKIE, set_cookie(&state.public_url, SESSION_COOKIE, &token, SESSION_FOR));
    cookies.append(header::SET_COOKIE, set_cookie(&state.public_url, LOGIN_COOKIE, "", Duration::zero()));
    Ok(response)
}

#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// `POST /console/logout`: ends this session (read-only keys may sign out too).
pub async fn logout(State(state): State<AppState>, viewer: Viewer, Form(form): Form<CsrfForm>) -> Result<Response> {
    if !bool::from(form.csrf.as_bytes().ct_eq(viewer.csrf.as_bytes())) {
        return Err(ConsoleError::Csrf);
    }
    revoke(&state, &viewer.session_id, state.clock.now()).await?;
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(&state.public_url, SESSION_COOKIE, "", Duration::zero()));
    Ok(response)
}

async fn revoke(state: &AppState, session_id: &str, now: DateTime<Utc>) -> Result<bool> {
    let done = sqlx::query("UPDATE console_sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(session_id)
        .bind(now)
        .execute(&state.pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The sessions a viewer may see and end: a merchant's are those opened with any of its keys
/// (merchant and creator keys alike); anyone else's are those of their own key.
const SESSIONS_SQL: &str = "SELECT s.id, s.key_id, k.name, k.role, s.user_agent, s.created_at, s.last_seen_at, s.expires_at \
       FROM console_sessions s JOIN api_keys k ON k.id = s.key_id \
      WHERE (($1::text IS NOT NULL AND k.merchant_id = $1) OR ($1::text IS NULL AND s.key_id = $2)) \
        AND s.revoked_at IS NULL AND s.expires_at > $3 AND s.last_seen_at > $4 AND k.revoked_at IS NULL \
      ORDER BY s.created_at DESC, s.id DESC LIMIT 200";

fn scope(viewer: &Viewer) -> Option<&str> {
    match viewer.role {
        Role::Merchant => viewer.merchant_id.as_deref(),
        _ => None,
    }
}

/// `GET /console/sessions`: the live sessions, each with a button that ends it.
pub async fn sessions(State(state): State<AppState>, viewer: Viewer, Query(query): Query<page::CsvQuery>) -> Result<Response> {
    let now = state.clock.now();
    let rows: Vec<SessionListRow> =
        sqlx::query_as(SESSIONS_SQL)
            .bind(scope(&viewer))
            .bind(&viewer.key_id)
            .bind(now)
            .bind(now - IDLE_FOR)
            .fetch_all(&state.pool)
            .await?;
    let mut table = Table::new("sessions", "Signed-in sessions", &["Session", "Key", "Role", "Browser", "Signed in", "Last seen", "Ends", ""]);
    for s in rows {
        let this = s.id == viewer.session_id;
        table.push(vec![
            Cell::text(if this { format!("{} (this one)", s.id) } else { s.id.clone() }),
            Cell::text(s.name.map_or(s.key_id.clone(), |n| format!("{n} ({})", s.key_id))),
            Cell::text(s.role),
            Cell::text(s.user_agent.unwrap_or_default()),
            Cell::time(s.created_at),
            Cell::time(s.last_seen_at),
            Cell::time(s.expires_at.min(s.last_seen_at + IDLE_FOR)),
            Cell::action(format!("/console/sessions/{}/revoke", s.id), "Sign out"),
        ]);
    }
    View::new("Sessions", vec![Section::Table(table)]).respond(&viewer, &query)
}

/// `POST /console/sessions/{id}/revoke`: ends a session the viewer may see.
pub async fn revoke_session(
    State(state): State<AppState>,
    viewer: Viewer,
    axum::extract::Path(id): axum::extract::Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response> {
    // Anyone may sign themselves out; ending another session takes a key that may write.
    if id == viewer.session_id {
        if !bool::from(form.csrf.as_bytes().ct_eq(viewer.csrf.as_bytes())) {
            return Err(ConsoleError::Csrf);
        }
    } else {
        viewer.may_submit(&form.csrf)?;
    }
    let visible: Option<(String,)> = sqlx::query_as(
        "SELECT s.id FROM console_sessions s JOIN api_keys k ON k.id = s.key_id \
          WHERE s.id = $1 AND (($2::text IS NOT NULL AND k.merchant_id = $2) OR ($2::text IS NULL AND s.key_id = $3))",
    )
    .bind(&id)
    .bind(scope(&viewer))
    .bind(&viewer.key_id)
    .fetch_optional(&state.pool)
    .await?;
    if visible.is_none() {
        return Err(ConsoleError::NotFound("session"));
    }
    revoke(&state, &id, state.clock.now()).await?;
    if id == viewer.session_id {
        return Ok(Redirect::to("/console/login").into_response());
    }
    Ok(Redirect::to("/console/sessions").into_response())
}

/// Deletes sessions that ended (expired or revoked) more than [`ENDED_KEPT_FOR`] ago; the daemon
/// calls it with its other purges.
pub async fn purge_ended(pool: &sqlx::PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let cutoff = now - ENDED_KEPT_FOR;
    let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at < $1 OR revoked_at < $1 OR last_seen_at < $2")
        .bind(cutoff)
        .bind(cutoff - IDLE_FOR)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[derive(sqlx::FromRow)]
struct SessionListRow {
    id: String,
    key_id: String,
    name: Option<String>,
    role: String,
    user_agent: Option<String>,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_secure_except_plain_http_on_loopback() {
        assert!(!secure("http://127.0.0.1:8080"));
        assert!(!secure("http://localhost:8080/"));
        assert!(!secure("http://[::1]:8080"));
        assert!(secure("http://pay.example.com"));
        assert!(secure("http://10.0.0.5:8080"));
        assert!(secure("https://127.0.0.1"));
        assert!(secure("https://pay.example.com"));
    }

    #[test]
    fn secure_cookies_are_this_hosts_only() {
        let cookie = set_cookie("https://pay.example.com", SESSION_COOKIE, "abc", Duration::hours(1));
        assert_eq!(cookie.to_str().expect("ascii"), "__Host-payrail_session=abc; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=3600");
        let local = set_cookie("http://127.0.0.1:8080", SESSION_COOKIE, "abc", Duration::hours(1));
        assert_eq!(local.to_str().expect("ascii"), "payrail_session=abc; Path=/console; HttpOnly; SameSite=Strict; Max-Age=3600");
        assert_eq!(cookie_name("https://pay.example.com", LOGIN_COOKIE), "__Host-payrail_login");
    }

    #[test]
    fn sign_in_returns_only_to_console_paths() {
        assert_eq!(next_path(Some("/console/invoices?status=paid")), "/console/invoices?status=paid");
        assert_eq!(next_path(Some("https://evil.example/console")), "/console");
        assert_eq!(next_path(Some("//evil.example/console")), "/console");
        assert_eq!(next_path(Some("/console//evil.example")), "/console");
        assert_eq!(next_path(Some("/console/login")), "/console");
        assert_eq!(next_path(Some("/console/invoices\n")), "/console");
        assert_eq!(next_path(None), "/console");
    }

    #[test]
    fn the_cookie_is_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; payrail_session=abc; b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "payrail"), None);
        assert_eq!(cookie(&headers, "b"), Some("2"));
    }
}
