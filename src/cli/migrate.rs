//! `payrail migrate`: creates the database when it is missing and applies pending migrations.

use anyhow::Result;
use payrail::config::Config;
use payrail::db;

pub async fn run(config: &Config) -> Result<()> {
    db::ensure_database(&config.database.url).await?;
    let pool = super::connect(config, 2).await?;
    db::migrate(&pool).await?;
    println!("migrations applied to {}", config.database.url_redacted());
    Ok(())
}
