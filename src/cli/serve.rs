//! `payrail serve`: the daemon, refusing the dev stack's settings unless told otherwise.

use std::path::Path;

use anyhow::{Context, Result};
use payrail::config::Config;
use payrail::secrets::SecretsKey;
use payrail::{app, db};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not apply pending database migrations at start.
    #[arg(long)]
    no_migrate: bool,
    /// Start even with settings meant for the local dev stack only (webhooks to loopback,
    /// webhook secrets stored in plaintext, fixed or file rates, Bitcoin regtest, a Stripe API
    /// that is not https). Without it such a configuration is refused, naming each setting.
    #[arg(long)]
    allow_dev_settings: bool,
}

pub async fn run(config: &Config, config_path: &Path, args: Args) -> Result<()> {
    let dev_settings = config.dev_only_settings();
    if !dev_settings.is_empty() {
        let list = dev_settings.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n");
        if !args.allow_dev_settings {
            anyhow::bail!(
                "{} has settings meant for the local dev stack only:\n{list}\n\
                 change them, or pass --allow-dev-settings to run with them anyway",
                config_path.display()
            );
        }
        tracing::warn!(target: "config", settings = %list.trim(), "running with dev-only settings (--allow-dev-settings)");
    }
    let pool = super::connect(config, config.database.pool_max).await?;
    // The job locks need sessions of their own: refuse a transaction-pooling pooler at once.
    db::sessions::check_sessions(&pool.connect_options()).await?;
    if !args.no_migrate {
        db::migrate(&pool).await?;
    }
    let key = SecretsKey::from_env()?;
    let secrets = app::webhook_secrets(&pool, key, config.webhooks.allow_plaintext_secrets).await?;
    let listener = app::bind(config.server.listen).await?;
    let hot_wallet_key = app::hot_wallet_key_from_env().context("reading the hot wallet key")?;
    let jobs = app::Jobs { hot_wallet_key, watch_chains: true };
    app::serve(config, pool, listener, jobs, secrets, super::signal::shutdown()).await?;
    Ok(())
}
