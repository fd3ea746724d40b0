//! Chromium tests of the pages on a running `payrail dev`: finding the browser, installing
//! playwright-core, starting and stopping the stack.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_payrail");

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A line for the test log even when the harness captures output: skips and screenshot paths
/// must be seen in CI's log.
pub fn tell(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// `PAYRAIL_CHROMIUM`, else a Chromium on the PATH (Debian's `chromium`).
pub fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PAYRAIL_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(path.exists(), "PAYRAIL_CHROMIUM names {}, which does not exist", path.display());
        return Some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.exists())
}

/// Installs playwright-core outside the repository; returns the directory holding its node_modules.
pub fn browser_modules() -> PathBuf {
    let out = Command::new(repo().join("tests/browser/install"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/browser/install");
    assert!(out.status.success(), "tests/browser/install failed");
    let dir = String::from_utf8_lossy(&out.stdout).lines().last().map(str::trim).unwrap_or("").to_owned();
    assert!(!dir.is_empty(), "tests/browser/install printed no directory");
    PathBuf::from(dir)
}

/// A running `payrail dev`, stopped with SIGINT when dropped (or by [`DevStack::stop`]).
pub struct DevStack {
    child: std::process::Child,
    /// What it printed until it was up.
    pub lines: Vec<String>,
    pub base: String,
    /// The demo merchant's API key.
    pub key: String,
    pub merchant: String,
    /// A finance key.
    pub finance: String,
    /// The stack's database URL.
    pub database: String,
}

impl DevStack {
    pub async fn start() -> Self {
        let mut child = Command::new(BIN)
            .current_dir(repo())
            .env("RUST_LOG", "warn")
            .args(["dev", "--listen", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn payrail dev");
        let stdout = child.stdout.take().expect("stdout");
        let lines = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let done = line.starts_with("Ctrl-C");
                seen.push(line);
                if done {
                    break;
                }
            }
            seen
        });
        let lines = tokio::time::timeout(Duration::from_secs(120), lines).await.expect("dev stack starts").expect("reader");
        let mut stack = DevStack {
            child,
            lines,
            base: String::new(),
            key: String::new(),
            merchant: String::new(),
            finance: String::new(),
            database: String::new(),
        };
        stack.base = stack.field("api:");
        stack.key = stack.field("api key:");
        stack.merchant = stack.field("merchant:");
        stack.finance = stack.field("finance:").split_whitespace().next().unwrap_or_default().to_owned();
        stack.database = stack.field("database:");
        stack
    }

    /// The value printed after `label` (`api:`), whole.
    pub fn field(&self, label: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{label} in {}", self.lines.join("\n")))
    }

    /// The stack's database URL, without what is said after it.
    pub fn database_url(&self) -> &str {
        self.database.split_whitespace().next().unwrap_or_default()
    }

    /// Pays the demo merchant's invoice `id` in `asset` with `payrail pay` (the stack's funded
    /// payer) and waits until it is paid; the invoice as the API then shows it.
    pub async fn pay(&self, id: &str, asset: &str) -> serde_json::Value {
        let out = tokio::process::Command::new(BIN)
            .args(["pay", "--api", &self.base, "--key", &self.key, "--invoice", id, "--asset", asset])
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("payrail pay");
        assert!(out.status.success(), "payrail pay: {}", String::from_utf8_lossy(&out.stderr));
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let shown: serde_json::Value =
                client.get(format!("{}/v1/invoices/{id}", self.base)).bearer_auth(&self.key).send().await.expect("get").json().await.expect("json");
            if shown["status"] == "paid" {
                return shown;
            }
            assert!(started.elapsed() < Duration::from_secs(90), "not paid: {shown}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the stack with SIGINT, as Ctrl-C would; how it exited.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "payrail dev did not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
