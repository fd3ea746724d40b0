//! Errors of configuration loading.
//!
//! Invariants:
//! - Every error names the file it comes from, or the environment variable when no file is
//!   involved, so an operator never has to guess which of several files is wrong.
//! - A key-level error names the full key path in the file (`tokens[1].decimals`) and, when
//!   an environment variable set the value, that variable: the file may look right while the
//!   environment is what broke it.
//! - Messages are lower-case and carry the refused input where there is one.
//!
//! Configuration errors are never worth retrying: the same input gives the same error.

use std::path::PathBuf;

/// Result alias of the configuration module.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid TOML.
    #[error("{file}: malformed toml at line {line}, column {column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },

    /// A key has a value of the wrong type, an unknown name, or a value that fails validation.
    #[error("{file}: key {key}{}: {message}{}", fmt_origin(.env_var), fmt_location(.location))]
    Key {
        file: String,
        key: String,
        /// Line and column (1-based) when the value still has its place in the file.
        location: Option<(usize, usize)>,
        /// The environment variable that set this key or one of its parents.
        env_var: Option<String>,
        message: String,
    },

    /// A problem with a file as a whole (a missing section, no chain files, a duplicate).
    #[error("{file}: {message}")]
    File { file: String, message: String },

    /// An environment variable that cannot be applied as an override.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

fn fmt_location(location: &Option<(usize, usize)>) -> String {
    match location {
        Some((line, column)) => format!(" (line {line}, column {column})"),
        None => String::new(),
    }
}

fn fmt_origin(env_var: &Option<String>) -> String {
    match env_var {
        Some(var) => format!(" (set by {var})"),
        None => String::new(),
    }
}

/// A value that failed validation, located by its key path inside one file; the loader
/// adds the file name and the environment variable, if any, to make a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key}: {message}")]
pub struct InvalidKey {
    pub key: String,
    pub message: String,
}

impl InvalidKey {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidKey {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same problem, one level deeper: `prefix.key` (or `prefix[i]…` for indices).
    pub(crate) fn under(self, prefix: &str) -> Self {
        let key = if self.key.is_empty() {
            prefix.to_owned()
        } else if self.key.starts_with('[') {
            format!("{prefix}{}", self.key)
        } else {
            format!("{prefix}.{}", self.key)
        };
        InvalidKey {
            key,
            message: self.message,
        }
    }
}

/// 1-based line and column of a byte offset, for pointing into a file.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_error_names_file_location_key_and_variable() {
        let error = ConfigError::Key {
            file: "config.toml".into(),
            key: "server.listen".into(),
            location: Some((3, 10)),
            env_var: Some("PAYRAIL_SERVER__LISTEN".into()),
            message: "invalid socket address syntax".into(),
        };
        assert_eq!(
            error.to_string(),
            "config.toml: key server.listen (set by PAYRAIL_SERVER__LISTEN): invalid socket address syntax (line 3, column 10)"
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbb = x\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 11), (2, 6));
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[test]
    fn under_nests_keys_and_indices() {
        assert_eq!(
            InvalidKey::new("rpc", "x").under("chains.bsc").key,
            "chains.bsc.rpc"
        );
        assert_eq!(InvalidKey::new("[2]", "x").under("rpc").key, "rpc[2]");
        assert_eq!(
            InvalidKey::new("", "x").under("confirmations").key,
            "confirmations"
        );
    }
}
