//! `[webhooks]`: where outbound webhooks may go.

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow endpoints on loopback hosts (`http://127.0.0.1:…`, `localhost`). On for the local dev
    /// stack and tests; off (the default) in production, so a merchant cannot point the daemon at
    /// services listening on its own machine.
    pub allow_loopback: bool,
    /// Store endpoint signing secrets in plaintext when no secrets key is configured
    /// (`PAYRAIL_SECRETS_KEY` / `PAYRAIL_SECRETS_KEY_FILE`). Off by default: `payrail serve`
    /// refuses to start without a key, so a database copy never holds usable signing keys by
    /// accident. For development only (`payrail dev` allows it on its own when no key is set).
    pub allow_plaintext_secrets: bool,
}
