//! The HTTP API's speed against axum itself: how fast merchants and checkout pages can poll an
//! invoice, and how fast invoices can be created.
//!
//! Four servers run in this process, one at a time under load, on the same runtime and database:
//!
//! - `constant`: an axum handler answering a constant JSON body — the framework's ceiling;
//! - `one SELECT`: an axum handler reading one invoice row by primary key through its own sqlx
//!   pool of the same size as payrail's — the ceiling for anything that must ask the database;
//! - payrail's own router (the shipped dev configuration, `config.dev.toml`), read through
//!   `GET /v1/invoices/{id}` with a merchant key and the public `GET /pay/{id}/status`.
//!
//! Each is loaded by wrk (`-t1 -c32 -d BENCH_API_S`, default 10 s) for `BENCH_API_ROUNDS` rounds
//! (default 3); the figures are the medians. Then, at half of payrail's median peak, hey sends a
//! fixed rate for the same time and the 99th percentile of latency is read. Invoice creation
//! (`POST /v1/invoices`, 25.00 USD in every priced asset, every option's address derived) is loaded
//! by wrk too. wrk and hey are Debian packages, installed when missing (as root).
//!
//! The goals: payrail ≥ 0.5× the one-SELECT handler on both reads; p99 ≤ 10 ms at half of
//! payrail's peak; ≥ 500 invoices created per second. The key used has its own rate
//! (100,000/s) and the public routes' per-address limit is raised the same way, so the limiters
//! answer nothing but 200s: what is measured is the work of an answer.
//!
//! Everything happens in a fresh database `payrail_bench_api_<pid>`, dropped at the end.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Json, Router};
use payrail::api::limit::IpLimiter;
use payrail::invoice::create_invoice;
use payrail::merchant::create_merchant;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

/// Connections each load generator keeps open.
const CONNECTIONS: u32 = 32;
/// payrail's pool and the one-SELECT handler's.
const POOL_MAX: u32 = 16;

fn main() -> Result<()> {
    let seconds = support::env_u64("BENCH_API_S", 10)?;
    let rounds = support::env_u64("BENCH_API_ROUNDS", 3)?.max(1);
    install("wrk")?;
    install("hey")?;
    support::in_fresh_database("payrail_bench_api", move |options| run(options, seconds, rounds))
}

/// Installs the Debian package `tool` when its command is missing.
fn install(tool: &str) -> Result<()> {
    if Command::new(tool).arg("--version").output().is_ok() || Command::new("which").arg(tool).status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    eprintln!("installing {tool} (Debian package)");
    let ok = Command::new("apt-get").args(["install", "-y", "-qq", tool]).env("DEBIAN_FRONTEND", "noninteractive").status()?.success()
        || (Command::new("apt-get").args(["update", "-qq"]).status()?.success()
            && Command::new("apt-get").args(["install", "-y", "-qq", tool]).env("DEBIAN_FRONTEND", "noninteractive").status()?.success());
    if !ok {
        bail!("cannot install {tool}: install the Debian package {tool}");
    }
    Ok(())
}

/// What a wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Peak {
    per_s: u64,
    p99_us: u64,
    errors: u64,
    /// The CPU the run used: the machine's (wrk, PostgreSQL, the server) and this process's (the
    /// server under test: payrail's router or a peer handler).
    cpu: support::CpuUse,
    seconds: u64,
}

impl Peak {
    /// CPU per request: the machine's and the server's own, in microseconds.
    fn cpu_per_request(&self) -> String {
        let requests = self.per_s * self.seconds;
        format!("{} µs ({} in the server)", self.cpu.per(requests), self.cpu.own_per(requests))
    }

    /// What bounds this run's rate, against `peer`'s run (see [`support::CpuMark`]).
    fn bound(&self, peer: &Self) -> String {
        let what = if self.cpu.cores_full() { "CPU" } else { "waiting (cores left idle)" };
        format!(
            "{what}: cores {} % busy; CPU per request {} against one SELECT's {}",
            self.cpu.busy_percent,
            self.cpu_per_request(),
            peer.cpu_per_request()
        )
    }
}

async fn run(options: PgConnectOptions, seconds: u64, rounds: u64) -> Result<()> {
    println!("payrail HTTP API benchmark");
    println!(
        "machine: {} cores, load average {}; wrk -t1 -c{CONNECTIONS} -d{seconds}s, {rounds} rounds, medians",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        support::load_average()
    );
    let (config, mut state) = support::dev_state(options.clone(), POOL_MAX).await?;
    let pool = state.pool.clone();
    state.ip_limiter = Arc::new(IpLimiter::with_limits(None, (100_000, 1_000_000), (1, 20)));
    let merchant = create_merchant(&pool, "API bench").await?;
    sqlx::query("UPDATE api_keys SET requests_per_s = 100000, burst = 1000000 WHERE merchant_id = $1")
        .bind(&merchant.merchant_id)
        .execute(&pool)
        .await?;
    let request = support::invoice_request("25.00");
    let (invoice, _) =
        create_invoice(&pool, &state.catalog, state.rates.as_ref(), &state.policy, &merchant.merchant_id, &request, None, chrono::Utc::now())
            .await
            .context("cannot create the polled invoice")?;
    println!("invoice {}: {} payment options", invoice.id, invoice.payment_options.len());

    let payrail = serve(payrail::api::router(state.clone(), payrail::app::limits(&config))).await?;
    let constant = serve(Router::new().route("/", get(|| async { Json(json!({"object": "invoice", "status": "open"})) }))).await?;
    let select_pool = payrail::db::connect_with(options, POOL_MAX).await?;
    let one_select = serve(Router::new().route("/{id}", get(one_select)).with_state(select_pool)).await?;

    let auth = format!("Authorization: Bearer {}", merchant.api_key);
    let targets: [(&str, String, Option<&str>); 4] = [
        ("constant", format!("{constant}/"), None),
        ("one SELECT", format!("{one_select}/{}", invoice.id), None),
        ("GET /v1/invoices/{id}", format!("{payrail}/v1/invoices/{}", invoice.id), Some(&auth)),
        ("GET /pay/{id}/status", format!("{payrail}/pay/{}/status", invoice.id), None),
    ];
    let mut peaks: Vec<Vec<Peak>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        for (i, (name, url, header)) in targets.iter().enumerate() {
            let peak = wrk(url, *header, seconds, None).await?;
            println!("round {round}: {name:<24} {:>7} req/s  p99 {:>9}  non-2xx {}", peak.per_s, support::ms(peak.p99_us), peak.errors);
            if peak.errors > 0 {
                bail!("{name} answered {} requests with an error", peak.errors);
            }
            peaks[i].push(peak);
        }
    }
    let median = |i: usize| -> Peak {
        let mut runs = peaks[i].clone();
        runs.sort_by_key(|p| p.per_s);
        runs[runs.len() / 2]
    };
    let (constant_peak, select_peak) = (median(0), median(1));

    // p99 at half of each route's peak, and the one-SELECT handler's at the same rate.
    let mut half = Vec::new();
    for i in [2, 3] {
        let rate = median(i).per_s / 2;
        let (name, url, header) = &targets[i];
        let mark = support::CpuMark::now()?;
        let p99 = hey(url, *header, seconds, rate).await?;
        let busy = mark.since()?.busy_percent;
        let baseline = hey(&targets[1].1, None, seconds, rate).await?;
        println!("{name:<24} at {rate} req/s: p99 {} (one SELECT at that rate: {}), cores {busy} % busy", support::ms(p99), support::ms(baseline));
        half.push((rate, p99, baseline, busy));
    }

    // Creation.
    let create_body = r#"{"amount":"25.00","currency":"USD"}"#;
    let created = wrk(&format!("{payrail}/v1/invoices"), Some(&auth), seconds, Some(create_body)).await?;
    println!("POST /v1/invoices: {} invoices/s  p99 {}  non-2xx {}", created.per_s, support::ms(created.p99_us), created.errors);

    support::summary_header();
    support::summary_row("axum constant body", "-", &format!("{} req/s", constant_peak.per_s), "-", "-");
    for (i, name) in [(2, "GET /v1/invoices/{id}"), (3, "GET /pay/{id}/status")] {
        let peak = median(i);
        support::bounded_row(
            &format!("{name}, peak"),
            &format!("{} req/s (p99 {})", peak.per_s, support::ms(peak.p99_us)),
            &format!("one SELECT {} req/s (p99 {})", select_peak.per_s, support::ms(select_peak.p99_us)),
            &support::ratio(peak.per_s, select_peak.per_s),
            "≥ 0.5×",
            &peak.bound(&select_peak),
        );
        let (rate, p99, baseline, busy) = half[i - 2];
        support::bounded_row(
            &format!("{name}, p99 at {rate} req/s"),
            &support::ms(p99),
            &format!("one SELECT {}", support::ms(baseline)),
            "-",
            "≤ 10 ms",
            &format!("cores {busy} % busy at that rate; the one-SELECT handler's own p99 there {}", support::ms(baseline)),
        );
    }
    support::summary_row("POST /v1/invoices", &format!("{} invoices/s", created.per_s), "-", "-", "≥ 500/s");
    println!("load average after: {}", support::load_average());
    Ok(())
}

/// The one-SELECT baseline: one invoice row by primary key.
async fn one_select(State(pool): State<PgPool>, UrlPath(id): UrlPath<String>) -> Json<Value> {
    let row: Option<(String, String, String, String)> =
        sqlx::query_as("SELECT id, status, currency, amount_minor::text FROM invoices WHERE id = $1").bind(&id).fetch_optional(&pool).await.ok().flatten();
    match row {
        Some((id, status, currency, amount)) => Json(json!({"id": id, "status": status, "currency": currency, "amount_minor": amount})),
        None => Json(json!({"error": "not found"})),
    }
}

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await });
    Ok(base)
}

/// wrk at full speed against `url` (POSTing `body` when given).
async fn wrk(url: &str, header: Option<&str>, seconds: u64, body: Option<&str>) -> Result<Peak> {
    let mut args = vec!["-t1".to_owned(), format!("-c{CONNECTIONS}"), format!("-d{seconds}s"), "--latency".to_owned()];
    if let Some(header) = header {
        args.extend(["-H".to_owned(), header.to_owned()]);
    }
    let script = match body {
        Some(body) => {
            let path = std::env::temp_dir().join(format!("payrail-bench-api-{}.lua", std::process::id()));
            std::fs::write(&path, format!("wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"))?;
            args.extend(["-s".to_owned(), path.display().to_string()]);
            Some(path)
        }
        None => None,
    };
    args.push(url.to_owned());
    let mark = support::CpuMark::now()?;
    let output = tokio::process::Command::new("wrk").args(&args).output().await.context("cannot run wrk")?;
    let cpu = mark.since()?;
    if let Some(path) = script {
        let _ = std::fs::remove_file(path);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    let per_s = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| support::fixed(v.trim(), 0))
        .context("wrk printed no Requests/sec")?;
    let p99_us = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| duration_us(v.trim()))
        .context("wrk printed no 99% latency")?;
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        + text.lines().find(|l| l.contains("Socket errors")).map_or(0, |_| 1);
    Ok(Peak { per_s, p99_us, errors, cpu, seconds })
}

/// wrk's latency (`812.00us`, `1.23ms`, `2.01s`) in microseconds.
fn duration_us(text: &str) -> Option<u64> {
    if let Some(v) = text.strip_suffix("us") {
        support::fixed(v, 0)
    } else if let Some(v) = text.strip_suffix("ms") {
        support::fixed(v, 3)
    } else {
        support::fixed(text.strip_suffix('s')?, 6)
    }
}

/// hey at `rate` requests per second in all (spread over its connections); the p99 in microseconds.
async fn hey(url: &str, header: Option<&str>, seconds: u64, rate: u64) -> Result<u64> {
    let per_connection = (rate / u64::from(CONNECTIONS)).max(1);
    let mut command = tokio::process::Command::new("hey");
    command.args(["-z", &format!("{seconds}s"), "-c", &CONNECTIONS.to_string(), "-q", &per_connection.to_string()]);
    if let Some(header) = header {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().await.context("cannot run hey")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("hey failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    let statuses = text.split("Status code distribution:").nth(1).unwrap_or("");
    if let Some(other) = statuses.lines().map(str::trim).find(|l| l.starts_with('[') && !l.starts_with("[200]")) {
        bail!("hey saw answers other than 200: {other}");
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("99% in "))
        .and_then(|v| support::fixed(v.trim().strip_suffix(" secs")?, 6))
        .context("hey printed no 99% latency")
}
