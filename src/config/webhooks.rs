//! `[webhooks]`: where outbound webhooks may go.

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow endpoints on loopback hosts (`http://127.0.0.1:…`, `localhost`). On for the local dev
    /// stack and tests; off (the default) in production, so a merchant cannot point the daemon at
    /// services listening on its own machine.
    pub allow_loopback: bool,
}
