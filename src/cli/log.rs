//! Logs go to stderr: text for people (colours only when stderr is a terminal, so files and
//! journald get none) or JSON lines for collectors (`[log] format = "json"`).

use std::io::IsTerminal;

use payrail::config::{Config, LogFormat};

/// `RUST_LOG` wins over `[log] filter`.
pub fn init(config: &Config) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.filter.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
