//! `payrail reconcile`: a chain's block range, or Stripe's charges of a time range, against the
//! ledger. The report goes to stdout (JSON or CSV), progress to stderr; exit status 1 when
//! anything does not match, so it can run from cron.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use payrail::app;
use payrail::config::Config;
use payrail::reconcile::{self, Reconciler, Report, ScanProgress};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The chain, by name or CAIP-2 id (`stripe` for the card processor).
    #[arg(long, required_unless_present = "resume")]
    chain: Option<String>,
    /// First block of the range.
    #[arg(long, default_value_t = 0)]
    from_block: u64,
    /// Last block of the range (the chain's tip when absent).
    #[arg(long)]
    to_block: Option<u64>,
    /// Continue an interrupted run (`rec_…`) where it stopped.
    #[arg(long, conflicts_with = "chain")]
    resume: Option<String>,
    /// With `--chain stripe`: RFC 3339, charges created at or after.
    #[arg(long)]
    from_time: Option<DateTime<Utc>>,
    /// With `--chain stripe`: RFC 3339, charges created before (now when absent).
    #[arg(long)]
    to_time: Option<DateTime<Utc>>,
    /// `json` (the report) or `csv` (one row per item).
    #[arg(long, default_value = "json")]
    format: String,
}

pub async fn run(config: &Config, args: Args) -> Result<()> {
    anyhow::ensure!(args.format == "json" || args.format == "csv", "--format must be json or csv");
    let report = if args.chain.as_deref() == Some("stripe") { stripe(config, &args).await? } else { chain(config, &args).await? };
    print_report(&report, &args.format)?;
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

/// A chain run (or the rest of one) with a progress bar on stderr.
async fn chain(config: &Config, args: &Args) -> Result<Report> {
    let pool = super::connect(config, 4).await?;
    let reconciler = Reconciler::new(pool, config.chains().to_vec());
    let id = match (&args.resume, &args.chain) {
        (Some(id), _) => id.clone(),
        (None, Some(chain)) => reconciler.start(chain, args.from_block, args.to_block).await?,
        (None, None) => anyhow::bail!("--chain or --resume is required"),
    };
    eprintln!("reconciliation {id} (resume with --resume {id})");
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} blocks {pos}/{len} [{bar:40}] {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = reconciler
        .complete(&id, &|p: ScanProgress| {
            bar.set_length(p.to_block - p.from_block + 1);
            bar.set_position(p.scanned_to - p.from_block + 1);
        })
        .await?;
    bar.finish_and_clear();
    Ok(report)
}

/// The card processor's charges and refunds of a time range.
async fn stripe(config: &Config, args: &Args) -> Result<Report> {
    let from = args.from_time.context("--chain stripe needs --from-time (RFC 3339)")?;
    let to = args.to_time.unwrap_or_else(Utc::now);
    let card = app::card_rail(config).context("Stripe is not configured (PAYRAIL_STRIPE_SECRET_KEY)")?;
    let pool = super::connect(config, 4).await?;
    Ok(reconcile::stripe::reconcile_stripe(&pool, &card.client, from, to).await?)
}

fn print_report(report: &Report, format: &str) -> Result<()> {
    if format == "csv" {
        print!("{}", reconcile::compare::items_csv(report));
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    eprintln!(
        "{}: {} item(s), {} difference(s); {}",
        report.run_id,
        report.items.len(),
        report.differences,
        if report.ok { "everything matches" } else { "NOT reconciled" }
    );
    Ok(())
}
