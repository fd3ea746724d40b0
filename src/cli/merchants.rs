//! `payrail merchants`: create a merchant and its first API key.

use anyhow::Result;
use payrail::config::Config;
use payrail::merchant;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a merchant and print its id and a new API key (shown only this once).
    Create {
        /// The merchant's display name.
        #[arg(long)]
        name: String,
    },
}

pub async fn run(config: &Config, command: Command) -> Result<()> {
    let Command::Create { name } = command;
    let pool = super::connect(config, 2).await?;
    let created = merchant::create_merchant(&pool, &name).await?;
    println!("merchant_id: {}", created.merchant_id);
    println!("api_key:     {}", created.api_key);
    println!("(the API key is shown only this once; store it now)");
    Ok(())
}
