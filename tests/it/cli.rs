//! The `payrail` binary as a person runs it: `--help`, `migrate`, `merchants create`, a bad
//! configuration file, and `payrail dev` end to end (its own PostgreSQL, the printed key and curl
//! line, a clean stop on Ctrl-C).

use std::process::Command;

use crate::common::browser::{repo, BIN};

fn payrail() -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(repo()).env("RUST_LOG", "warn");
    command
}

#[test]
fn help_lists_the_commands() {
    let out = payrail().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "migrate", "dev", "merchants"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    let out = payrail().args(["merchants", "create", "--help"]).output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--name"));
}

#[test]
fn a_bad_config_file_is_named_with_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(repo().join("config.toml")).expect("config");
    let broken = text.replace("pool_max = 16", "pool_max = \"many\"").replace("dir = \"chains\"", &format!("dir = \"{}\"", repo().join("chains").display()));
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).expect("write");
    let out = payrail().arg("--config").arg(&path).arg("migrate").output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml") && err.contains("database.pool_max"), "{err}");
}

#[test]
fn serve_refuses_dev_only_settings_and_names_them() {
    let out = payrail().args(["--config", "config.dev.toml", "serve"]).output().expect("run");
    assert!(!out.status.success(), "serve started with the dev configuration");
    let err = String::from_utf8_lossy(&out.stderr);
    for setting in ["webhooks.allow_loopback = true", "rates.feed = \"fixed\"", "chains.bitcoin.network = \"regtest\"", "--allow-dev-settings"] {
        assert!(err.contains(setting), "{setting} not named in:\n{err}");
    }
    // One dev-only setting on top of the production configuration is named alone.
    let out = payrail().args(["serve"]).env("PAYRAIL_WEBHOOKS__ALLOW_LOOPBACK", "true").output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.toml") && err.contains("webhooks.allow_loopback = true"), "{err}");
    assert!(!err.contains("rates.feed"), "{err}");
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must point at a PostgreSQL server")
}

fn with_database(admin: &str, name: &str) -> String {
    let (base, _) = admin.rsplit_once('/').expect("url with a database");
    format!("{base}/{name}")
}

#[tokio::test]
async fn migrate_then_create_a_merchant_whose_key_authenticates() {
    let name = format!("payrail_cli_{}", std::process::id());
    let url = with_database(&admin_url(), &name);
    let out = payrail().arg("migrate").env("DATABASE_URL", &url).output().expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = payrail().args(["merchants", "create", "--name", "Corner Shop"]).env("DATABASE_URL", &url).output().expect("create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| {
        text.lines().find_map(|l| l.strip_prefix(label)).map(|v| v.trim().to_owned()).unwrap_or_else(|| panic!("{label} in {text}"))
    };
    let merchant_id = field("merchant_id:");
    let api_key = field("api_key:");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let principal = payrail::merchant::authenticate(&pool, &api_key, chrono::Utc::now()).await.expect("query").expect("key authenticates");
    assert_eq!(principal.merchant_id.as_deref(), Some(merchant_id.as_str()));
    let stored: String = sqlx::query_scalar("SELECT name FROM merchants WHERE id = $1").bind(&merchant_id).fetch_one(&pool).await.expect("row");
    assert_eq!(stored, "Corner Shop");
    pool.close().await;
    let admin = sqlx::PgPool::connect(&admin_url()).await.expect("admin");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&admin).await.expect("drop");
}

/// Runs `payrail dev` without DATABASE_URL, as the README says, follows its printed instructions,
/// and stops it with SIGINT.
#[tokio::test]
async fn dev_stack_runs_on_its_own_postgres_and_its_curl_line_creates_an_invoice() {
    let _dev_stack = crate::common::DEV_STACK.lock().await;
    let stack = crate::common::browser::DevStack::start().await;
    let lines = &stack.lines;
    let text = lines.join("\n");
    let field = |label: &str| stack.field(label);
    let base = field("api:");
    let key = field("api key:");
    let database = field("database:");
    assert!(database.contains("ephemeral"), "{database}");
    // The card rail comes up on localstripe with the stack.
    assert!(lines.iter().any(|l| l.trim_start().starts_with("card:") && l.contains("localstripe")), "{text}");
    let curl = lines.iter().find(|l| l.trim_start().starts_with("curl -s -X POST")).expect("curl line");
    // The curl line's JSON body, sent as the curl line would send it.
    let body = curl.split("-d '").nth(1).and_then(|rest| rest.strip_suffix('\'')).expect("curl body");
    assert!(curl.contains(&format!("Bearer {key}")));
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{base}/v1/invoices"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().unwrap_or_else(|| panic!("no id in {created}"));
    let fetched: serde_json::Value = client
        .get(format!("{base}/v1/invoices/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(fetched["id"], id);
    assert_eq!(fetched["amount"], "25.00");
    assert_eq!(fetched["status"], "open");

    // Pay it in ETH on the dev Ethereum chain, as the README shows, and watch it become paid.
    let eth = "eip155:1/slip44:60";
    let shown = stack.pay(id, eth).await;
    assert_eq!(shown["payments"][0]["asset"], eth);
    assert_eq!(shown["payments"][0]["status"], "confirmed");

    let status = stack.stop().await;
    assert!(status.success(), "{status:?}");
    // The cluster is gone: nothing listens on its port any more.
    let port = database.split(':').nth(2).and_then(|p| p.split('/').next()).expect("port");
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(), "PostgreSQL still running");
}
