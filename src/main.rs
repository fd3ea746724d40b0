//! The `payrail` command line. Errors become `anyhow` here, at the edge, and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use payrail::config::{Config, LogFormat};
use payrail::{app, db, devnet, merchant};

#[derive(Debug, Parser)]
#[command(
    name = "payrail",
    version,
    about = "A payment daemon: chain watchers, an exact double-entry ledger in PostgreSQL, invoices over HTTP.",
    long_about = "payrail watches Bitcoin and EVM chains for payments to per-invoice deposit addresses, \
                  credits a double-entry ledger in PostgreSQL exactly once, and lets merchants create \
                  and poll invoices over HTTP.\n\nQuick start: `payrail dev` runs the whole local stack \
                  and prints an API key and a curl line that creates an invoice."
)]
struct Cli {
    /// Configuration file; chain files are read from `chains.dir` relative to it.
    #[arg(long, global = true, env = "PAYRAIL_CONFIG", default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: HTTP API and background jobs, against the configured database.
    Serve {
        /// Do not apply pending database migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run the local development stack: a database (DATABASE_URL, or an ephemeral cluster made
    /// here), a demo merchant with an API key, and the daemon on loopback.
    Dev {
        /// Address to serve on (overrides server.listen; port 0 picks a free one).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Manage merchants.
    Merchants {
        #[command(subcommand)]
        command: MerchantsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MerchantsCommand {
    /// Create a merchant and print its id and a new API key (shown only this once).
    Create {
        /// The merchant's display name.
        #[arg(long)]
        name: String,
    },
}

fn load_config(path: &PathBuf) -> Result<Config> {
    Config::load(path).with_context(|| format!("cannot load configuration from {}", path.display()))
}

fn init_tracing(config: Option<&Config>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.map(|c| c.log.filter.clone()))
        .unwrap_or_else(|| "info".to_owned());
    let builder = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::stderr);
    match config.map(|c| c.log.format) {
        Some(LogFormat::Json) => builder.json().init(),
        _ => builder.init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = load_config(&cli.config)?;
    init_tracing(Some(&config));
    match cli.command {
        Command::Serve { no_migrate } => {
            let pool = db::connect(&config.database.url, config.database.pool_max)
                .await
                .with_context(|| format!("database {}", config.database.url_redacted()))?;
            if !no_migrate {
                db::migrate(&pool).await?;
            }
            let listener = app::bind(config.server.listen).await?;
            app::serve(&config, pool, listener, shutdown_signal()).await?;
        }
        Command::Migrate => {
            db::ensure_database(&config.database.url).await?;
            let pool = db::connect(&config.database.url, 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied to {}", config.database.url_redacted());
        }
        Command::Merchants { command: MerchantsCommand::Create { name } } => {
            let pool = db::connect(&config.database.url, 2).await?;
            let created = merchant::create_merchant(&pool, &name).await?;
            println!("merchant_id: {}", created.merchant_id);
            println!("api_key:     {}", created.api_key);
            println!("(the API key is shown only this once; store it now)");
        }
        Command::Dev { listen } => dev(config, listen).await?,
    }
    Ok(())
}

async fn dev(config: Config, listen: Option<SocketAddr>) -> Result<()> {
    // DATABASE_URL wins; without it the stack brings its own throw-away cluster.
    let (url, mut cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let cluster = tokio::task::spawn_blocking(devnet::EphemeralPostgres::start)
                .await
                .context("starting PostgreSQL")??;
            (cluster.url("payrail"), Some(cluster))
        }
    };
    let result = async {
        db::ensure_database(&url).await?;
        let pool = db::connect(&url, config.database.pool_max).await?;
        db::migrate(&pool).await?;
        let demo = merchant::create_merchant(&pool, "Demo merchant").await?;
        let listener = app::bind(listen.unwrap_or(config.server.listen)).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let database = if cluster.is_some() { format!("{url} (ephemeral, removed on exit)") } else { url.clone() };
        println!("payrail dev stack is up");
        println!("  database:  {database}");
        println!("  api:       {base}");
        println!("  merchant:  {}", demo.merchant_id);
        println!("  api key:   {}", demo.api_key);
        println!();
        println!("Create an invoice:");
        println!(
            "  curl -s -X POST {base}/v1/invoices -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' -d '{{\"amount\":\"25.00\",\"currency\":\"USD\"}}'",
            demo.api_key
        );
        println!("Read it back:");
        println!("  curl -s {base}/v1/invoices/<id> -H 'Authorization: Bearer {}'", demo.api_key);
        println!();
        println!("Ctrl-C stops the stack.");
        app::serve(&config, pool, listener, shutdown_signal()).await?;
        anyhow::Ok(())
    }
    .await;
    if let Some(cluster) = cluster.as_mut() {
        cluster.stop().context("stopping PostgreSQL")?;
    }
    result
}
