//! `scripts/chaos`: named fault scenarios against real parts on this machine (PostgreSQL, anvil,
//! `payrail serve` processes), each bounded in time, summed up in one table.
//!
//! Every scenario gets a fresh database and its own anvil. Payments are real transfers from the dev
//! payer; faults are real SIGKILLs. The figures come from the database and the chain afterwards:
//! - lost: invoices not `paid` when the scenario's deadline passed;
//! - doubled: transfers credited by more than one ledger entry, or more than one payment row;
//! - recovery: the longest time from a fault until the work was being done again;
//! - reconcile: `payrail reconcile --chain polygon` over the whole chain exits 0.
//!
//! Not part of `cargo test`: without `--short` or `--full` it prints how to run it and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "../common/mod.rs"]
mod common;

mod electrum;
mod gate;
mod outages;
mod proxy;
mod resources;
mod rig;
mod scenarios;
mod soak;

use std::process::ExitCode;
use std::time::Duration;

/// How hard a run pushes: the short profile fits CI (≤ 5 minutes), the full one the README figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Short,
    Full,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub load: String,
    pub faults: String,
    pub payments: usize,
    pub lost: usize,
    pub doubled: usize,
    /// Deliveries seen more than once (allowed for at-least-once webhooks; reported, not failed).
    pub duplicates: Option<usize>,
    pub recovery_max: Option<Duration>,
    pub reconcile_clean: bool,
    /// API answers that were wrong under the fault: a 5xx other than 503, a 503 without
    /// `Retry-After`, or no answer within the request timeout (named in the notes; fails the row).
    pub bad_answers: usize,
    /// What the scenario saw that is neither a loss nor a double but needs a look.
    pub notes: String,
    pub elapsed: Duration,
}

impl Row {
    pub fn failed(&self) -> bool {
        self.lost > 0 || self.doubled > 0 || self.bad_answers > 0 || !self.reconcile_clean
    }
}

fn print_table(rows: &[Row]) {
    let header = ["scenario", "load", "faults injected", "payments", "lost", "doubled", "recovery max", "reconcile clean", "took", "notes"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.scenario.to_owned(),
                r.load.clone(),
                r.faults.clone(),
                r.payments.to_string(),
                r.lost.to_string(),
                match r.duplicates {
                    Some(d) => format!("{} (dup deliveries {d})", r.doubled),
                    None => r.doubled.to_string(),
                },
                r.recovery_max.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis())),
                if r.reconcile_clean { "y" } else { "n" }.to_owned(),
                format!("{} s", r.elapsed.as_secs()),
                r.notes.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> =
        (0..header.len()).map(|i| cells.iter().map(|row| row[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.to_vec());
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = if args.iter().any(|a| a == "--full") {
        Profile::Full
    } else if args.iter().any(|a| a == "--short") {
        Profile::Short
    } else {
        println!("chaos: not run (scripts/chaos runs it: --short by default, --full for the README figures)");
        return ExitCode::SUCCESS;
    };
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if let Some(unknown) = only.iter().find(|o| !scenarios::ALL.iter().any(|(name, _)| *name == o.as_str())) {
        let names: Vec<&str> = scenarios::ALL.iter().map(|(name, _)| *name).collect();
        eprintln!("chaos: no scenario {unknown:?} (there are: {})", names.join(", "));
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let started = std::time::Instant::now();
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for (name, run) in scenarios::ALL {
            if !only.is_empty() && !only.iter().any(|o| o.as_str() == *name) {
                continue;
            }
            eprintln!("chaos: {name} ({profile:?}) ...");
            match run(profile).await {
                Ok(row) => {
                    eprintln!("chaos: {name} done in {} s", row.elapsed.as_secs());
                    rows.push(row);
                }
                Err(e) => {
                    eprintln!("chaos: {name} could not run: {e:#}");
                    rows.push(Row {
                        scenario: name,
                        load: "-".to_owned(),
                        faults: format!("harness error: {e:#}").replace('|', "/"),
                        payments: 0,
                        lost: 0,
                        doubled: 0,
                        duplicates: None,
                        recovery_max: None,
                        reconcile_clean: false,
                        bad_answers: 0,
                        notes: String::new(),
                        elapsed: Duration::ZERO,
                    });
                }
            }
        }
        rows
    });
    print_table(&rows);
    // The closing line test runners print: scenarios that held, and those that did not.
    let failed = rows.iter().filter(|row| row.failed()).count();
    println!("chaos: {profile:?} profile took {} s", started.elapsed().as_secs());
    println!("chaos: {} passed, {failed} failed", rows.len() - failed);
    if rows.iter().any(Row::failed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
