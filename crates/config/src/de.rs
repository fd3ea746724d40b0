//! From TOML text to typed values, with errors that point at the file, the key and, where
//! the value still has its place in the text, the line and column.
//!
//! Invariant: every deserialization goes through `serde_path_to_error`, so a type error is
//! never reported without the key path that caused it.

use serde::de::DeserializeOwned;

use super::env::Overrides;
use super::error::{line_column, ConfigError, InvalidKey, Result};

/// Parses `text` as a TOML document; syntax errors carry line and column.
pub(crate) fn parse_document(text: &str, file: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>().map_err(|error| {
        let (line, column) = error
            .span()
            .map_or((1, 1), |span| line_column(text, span.start));
        ConfigError::Syntax {
            file: file.to_owned(),
            line,
            column,
            message: one_line(error.message()),
        }
    })
}

/// Types `text` directly, so errors keep their line and column.
pub(crate) fn from_text<T: DeserializeOwned>(text: &str, file: &str) -> Result<T> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|error| {
        let location = error
            .inner()
            .span()
            .map(|span| line_column(text, span.start));
        let message = one_line(error.inner().message());
        path_error(file, &error.path().to_string(), location, None, message)
    })
}

/// Types a document that environment overrides have changed; positions in the text no
/// longer describe it, so errors name the key and the variable instead.
pub(crate) fn from_document<T: DeserializeOwned>(
    document: toml::Table,
    file: &str,
    overrides: &Overrides,
) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(document)).map_err(|error| {
        let key = error.path().to_string();
        let env_var = overrides.origin(&key).map(str::to_owned);
        let message = one_line(error.inner().message());
        path_error(file, &key, None, env_var, message)
    })
}

/// The TOML parser's multi-line messages on one line, so each error is one log line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn path_error(
    file: &str,
    key: &str,
    location: Option<(usize, usize)>,
    env_var: Option<String>,
    message: String,
) -> ConfigError {
    // `serde_path_to_error` spells the document root ".": the problem is the file itself
    // (a missing section), not one key in it, and its position is just the file's start.
    if key == "." || key.is_empty() {
        return ConfigError::File {
            file: file.to_owned(),
            message,
        };
    }
    ConfigError::Key {
        file: file.to_owned(),
        key: key.to_owned(),
        location,
        env_var,
        message,
    }
}

/// Attaches the file name (and the variable that set the key, if any) to a validation error.
pub(crate) fn invalid(
    file: &str,
    problem: InvalidKey,
    overrides: Option<&Overrides>,
) -> ConfigError {
    let env_var = overrides
        .and_then(|o| o.origin(&problem.key))
        .map(str::to_owned);
    ConfigError::Key {
        file: file.to_owned(),
        key: problem.key,
        location: None,
        env_var,
        message: problem.message,
    }
}
