//! `payrail keys`: platform keys (finance, admin) and revocation of any key.

use anyhow::{Context, Result};
use payrail::config::Config;
use payrail::merchant;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a platform-wide API key and print it (shown only this once).
    Create {
        /// `finance` or `admin`.
        #[arg(long)]
        role: String,
    },
    /// Revoke a key (`key_…`, any role) at once: every replica refuses it from its next request.
    Revoke {
        /// The key id, `key_…` (the middle part of `pr_<id>_<secret>` with `key_` in front).
        id: String,
    },
}

pub async fn run(config: &Config, command: Command) -> Result<()> {
    let pool = super::connect(config, 2).await?;
    match command {
        Command::Create { role } => {
            let role = merchant::Role::parse(&role).context("role must be finance or admin")?;
            let key = merchant::create_platform_key(&pool, role).await?;
            println!("api_key: {key}");
            println!("(the API key is shown only this once; store it now)");
        }
        Command::Revoke { id } => {
            if !merchant::keys::revoke_any(&pool, &id, chrono::Utc::now()).await? {
                anyhow::bail!("no API key {id}");
            }
            println!("revoked: {id}");
        }
    }
    Ok(())
}
