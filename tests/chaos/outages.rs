//! Outages of what payrail calls out to: the card processor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::gate::Gate;
use crate::rig::{self, Replica};
use crate::scenarios::{finish, wait_ready, Stage, SETTLE_MAX};
use crate::{Profile, Row};

/// What one payer saw.
#[derive(Debug, Default)]
struct Payer {
    /// 503 `stripe_unavailable` answers, all with `Retry-After`.
    unavailable: u32,
    /// 429 `rate_limited` (with `Retry-After`): all payers share the loopback address.
    limited: u32,
    /// Answers that were wrong: a 5xx other than a 503 with `Retry-After`, or an unexpected refusal.
    bad: u32,
    /// The card payment went through (by this payer's try or the daemon's resume pass).
    paid: bool,
    /// Refunds answered `pending` (Stripe did not answer yet) and made (`succeeded` at once).
    refunds_pending: u32,
    refunds_made: u32,
}

/// One daemon taking card payments through localstripe, which goes away (every connection to it
/// reset) for the middle half of the run — a minute in the full profile — while payers pay by test
/// card and the merchant refunds 1.00 of every third paid invoice (those paid before the outage
/// during it). Payers retry a 503 after its `Retry-After`, as the checkout page does. Every invoice
/// must end paid by one charge, every refund made once, and the card ledger must match localstripe's
/// charges (`payrail reconcile --chain stripe`).
pub async fn stripe_down(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, .. } = Stage::set_up("stripe-down", profile, None).await?;
    let from_time = chrono::Utc::now() - chrono::Duration::seconds(60);
    let localstripe = crate::common::stripe::localstripe();
    let gate = Gate::start(localstripe.trim_start_matches("http://").parse().context("localstripe address")?).await?;
    let secret = format!("whsec_chaos{}", crate::common::stripe::random_suffix());
    let stripe_env = [
        ("PAYRAIL_STRIPE_SECRET_KEY", "sk_test_payrail"),
        ("PAYRAIL_STRIPE_WEBHOOK_SECRET", secret.as_str()),
        ("PAYRAIL_STRIPE__TIMEOUT_MS", "5000"),
    ];
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?.with_env("PAYRAIL_STRIPE__API_BASE", &gate.url);
    for (name, value) in stripe_env {
        replica = replica.with_env(name, value);
    }
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let base = replica.base();
    // localstripe delivers its events straight to the daemon: the outage is of payrail's calls.
    let hook = format!("/_config/webhooks/chaos{}", crate::common::stripe::random_suffix());
    let (status, body) = crate::common::stripe::ls_post(&hook, &[("url", &format!("{base}/v1/stripe/webhook")), ("secret", &secret)]).await;
    anyhow::ensure!(status.is_success(), "localstripe webhook: {status} {body}");

    let (closed_at, open_at) = match profile {
        Profile::Short => (load.spread / 4, load.spread * 3 / 4),
        Profile::Full => (Duration::from_secs(45), Duration::from_secs(105)),
    };
    let gate = Arc::new(gate);
    let outage = {
        let gate = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(closed_at).await;
            gate.set_closed(true);
            tokio::time::sleep(open_at - closed_at).await;
            gate.set_closed(false);
            Instant::now()
        })
    };
    let pace = load.spread / u32::try_from(load.invoices.max(1))?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut payers = Vec::new();
    let mut ids = Vec::new();
    for i in 0..load.invoices {
        let attempt = Instant::now();
        let id = create_usd_invoice(&client, &base, &merchant.api_key, &format!("chaos-card-{i}"), &format!("{}.{:02}", 5 + i % 40, i % 100)).await?;
        ids.push(id.clone());
        let (client, base, key) = (client.clone(), base.clone(), merchant.api_key.clone());
        let refund_from = (i % 3 == 0).then(|| started + closed_at + Duration::from_secs(1));
        payers.push(tokio::spawn(async move { pay(&client, &base, &key, &id, refund_from).await }));
        tokio::time::sleep(pace.saturating_sub(attempt.elapsed())).await;
    }
    let mut seen = Vec::new();
    for payer in payers {
        seen.push(payer.await??);
    }
    let opened = outage.await?;
    // Everything the outage left unanswered is asked again by the daemon's pass (every 5 s), and
    // every charge is credited when localstripe's webhook arrives.
    let settling = Instant::now();
    let unsettled = loop {
        let (creating, pending, uncredited): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM card_attempts WHERE status = 'creating'), (SELECT count(*) FROM card_refunds WHERE status = 'pending'), \
                    (SELECT count(*) FROM invoices i WHERE i.id = ANY($1) AND NOT EXISTS (SELECT 1 FROM card_payments c WHERE c.invoice_id = i.id))",
        )
        .bind(&ids)
        .fetch_one(&db.pool)
        .await?;
        if creating + pending + uncredited == 0 || settling.elapsed() > SETTLE_MAX {
            break usize::try_from(creating + pending + uncredited)?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovered = opened.elapsed();
    let crashed = replica.exited();
    let (credited_once, credited_twice, charges_twice): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1), \
                (SELECT count(*) FROM (SELECT invoice_id FROM card_attempts WHERE status = 'succeeded' GROUP BY 1 HAVING count(*) > 1) t) \
         FROM (SELECT i.id, (SELECT count(*) FROM card_payments c WHERE c.invoice_id = i.id) AS n FROM invoices i WHERE i.id = ANY($1)) p",
    )
    .bind(&ids)
    .fetch_one(&db.pool)
    .await?;
    let refunds: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM card_refunds GROUP BY 1")
        .fetch_all(&db.pool)
        .await?
        .into_iter()
        .collect();
    let clean = reconcile_stripe(&db, &anvil, &logs, from_time, &stripe_env).await?;
    replica.kill9().await?;

    let unavailable: u32 = seen.iter().map(|p| p.unavailable).sum();
    let bad: u32 = seen.iter().map(|p| p.bad).sum();
    let limited: u32 = seen.iter().map(|p| p.limited).sum();
    let unpaid = seen.iter().filter(|p| !p.paid).count();
    let (pending, made): (u32, u32) = (seen.iter().map(|p| p.refunds_pending).sum(), seen.iter().map(|p| p.refunds_made).sum());
    let refunds_asked = usize::try_from(pending + made)?;
    let refunds_done = usize::try_from(refunds.get("succeeded").copied().unwrap_or(0))?;
    let mut notes = vec![format!(
        "{unavailable} card tries answered 503 stripe_unavailable with Retry-After ({limited} more 429 for the one payer address), {} connections reset; refunds: {pending} accepted pending, {made} made at once, {refunds_done} made in the end; {credited_once} invoices credited once",
        gate.faulted()
    )];
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    let row = Row {
        scenario: "stripe-down",
        load: format!("{} card payments / {} s, refunds of every 3rd, 1 replica", load.invoices, load.spread.as_secs()),
        faults: format!("localstripe unreachable for {} s", (open_at - closed_at).as_secs()),
        payments: ids.len(),
        lost: unpaid + unsettled + refunds_asked.saturating_sub(refunds_done) + usize::from(crashed.is_some()),
        doubled: usize::try_from(credited_twice + charges_twice)? + refunds_done.saturating_sub(refunds_asked),
        duplicates: None,
        // From localstripe's return until nothing the outage left was still unanswered.
        recovery_max: Some(recovered),
        reconcile_clean: clean,
        bad_answers: usize::try_from(bad)? + usize::from(unavailable == 0),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

async fn create_usd_invoice(client: &reqwest::Client, base: &str, api_key: &str, key: &str, amount: &str) -> Result<String> {
    let response = client
        .post(format!("{base}/v1/invoices"))
        .bearer_auth(api_key)
        .header("Idempotency-Key", key)
        .json(&json!({"amount": amount, "currency": "USD", "expires_in": 3600}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "invoice: {status} {body}");
    Ok(body["id"].as_str().context("invoice id")?.to_owned())
}

/// Pays invoice `id` by test card as a checkout page would: a 503 is retried after its
/// `Retry-After`, an attempt under way is waited for. Then, when `refund_from` is set, refunds
/// 1.00 of it, not before that instant.
async fn pay(client: &reqwest::Client, base: &str, api_key: &str, id: &str, refund_from: Option<Instant>) -> Result<Payer> {
    let mut seen = Payer::default();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !seen.paid && Instant::now() < deadline {
        let response = client
            .post(format!("{base}/pay/{id}/card"))
            .header("accept", "application/json")
            .form(&[("payment_method", "pm_card_visa")])
            .send()
            .await?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
        match (status, code.as_str()) {
            (201, _) if body["status"] == "succeeded" => seen.paid = true,
            (503, "stripe_unavailable") if retry_after.is_some() => {
                seen.unavailable += 1;
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
            }
            // Every payer here shares one address, and the public routes are limited per address.
            (429, "rate_limited") if retry_after.is_some() => {
                seen.limited += 1;
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
            }
            // The daemon's pass is sending this invoice's attempt right now.
            (409, "card_in_progress") => tokio::time::sleep(Duration::from_secs(1)).await,
            // Paid meanwhile: the pass sent the attempt the payer made during the outage.
            (409, "card_unavailable") if body["error"]["message"].as_str().is_some_and(|m| m.contains("paid") || m.contains("confirming")) => {
                seen.paid = true;
            }
            _ => {
                eprintln!("chaos: card payment of {id} answered {status} {body}");
                seen.bad += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let Some(from) = refund_from.filter(|_| seen.paid) else { return Ok(seen) };
    // Credited by localstripe's webhook shortly after the charge.
    let credited = Instant::now();
    loop {
        let invoice: Value = client.get(format!("{base}/v1/invoices/{id}")).bearer_auth(api_key).send().await?.json().await?;
        if invoice["status"] == "paid" {
            break;
        }
        anyhow::ensure!(credited.elapsed() < Duration::from_secs(60), "{id} never credited: {invoice}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(from.saturating_duration_since(Instant::now())).await;
    let response = client.post(format!("{base}/v1/invoices/{id}/refunds")).bearer_auth(api_key).json(&json!({"amount": "1.00"})).send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        201 => seen.refunds_made += 1,
        202 => seen.refunds_pending += 1,
        _ => {
            eprintln!("chaos: refund of {id} answered {status} {body}");
            seen.bad += 1;
        }
    }
    Ok(seen)
}

/// `payrail reconcile --chain stripe` from `from_time`: every charge localstripe holds against the
/// card ledger; true when it reports everything matched.
async fn reconcile_stripe(
    db: &rig::Db,
    anvil: &payrail_devnet::anvil::Anvil,
    logs: &std::path::Path,
    from_time: chrono::DateTime<chrono::Utc>,
    stripe_env: &[(&str, &str)],
) -> Result<bool> {
    let from = from_time.to_rfc3339();
    let mut command = crate::common::payrail_on(&db.url, &["reconcile", "--chain", "stripe", "--from-time", &from], "POLYGON", &anvil.url());
    command.env("PAYRAIL_STRIPE__API_BASE", crate::common::stripe::localstripe()).envs(stripe_env.iter().copied());
    rig::reconcile(command, logs, "reconcile-stripe").await
}
