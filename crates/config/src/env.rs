//! Environment overrides, applied to the parsed TOML document before it is typed, so an
//! overridden value goes through exactly the same checks as one written in the file.
//!
//! - `DATABASE_URL` sets `database.url` (the name every PostgreSQL tool already uses).
//! - `PAYRAIL_<SECTION>__<KEY>[__<KEY>…]` sets that key: a double underscore goes one level
//!   deeper, names are lower-cased (`PAYRAIL_SERVER__BODY_LIMIT_BYTES` →
//!   `server.body_limit_bytes`).
//! - `PAYRAIL_CONFIG` names the configuration file; the binary reads it, the loader does not.
//!
//! Invariants:
//! - Only those names are read. Other `PAYRAIL_*` names without a double underscore are
//!   left alone: they belong to the binary (secrets, the config path), not to the file.
//! - Overrides apply in a fixed order, `DATABASE_URL` first and then `PAYRAIL_*` sorted by
//!   name, so the explicit `PAYRAIL_DATABASE__URL` wins and the result never depends on the
//!   order of the process environment.
//! - A value replaces a string in the file as a string, verbatim. Otherwise it is read as a
//!   TOML integer, boolean, array or inline table when it parses as one, and as a string in
//!   every other case. Floats are never produced: no configuration value is a float, and a
//!   decimal such as `0.5` must stay an exact string.

use std::ffi::OsString;

use super::error::{ConfigError, Result};

/// Prefix of the override variables.
pub const ENV_PREFIX: &str = "PAYRAIL_";
/// Separator between nesting levels in an override variable's name.
pub const ENV_SEPARATOR: &str = "__";
/// The configuration file's path, read by the binary.
pub const ENV_CONFIG_PATH: &str = "PAYRAIL_CONFIG";
/// The conventional PostgreSQL connection string variable; sets `database.url`.
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";
/// Longest override key path accepted; the configuration is never nested deeper.
const KEY_DEPTH_MAX: usize = 8;

/// The overrides that were applied, to name the variable behind a failing key.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    applied: Vec<(String, String)>,
}

impl Overrides {
    pub(crate) fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// The variable that set `key` or a table or array that contains it, else one that set
    /// something inside `key` (an unknown chain's table, a section the file lacks). The
    /// latest wins, as it does when the overrides are applied.
    pub(crate) fn origin(&self, key: &str) -> Option<&str> {
        let under = |inner: &str, outer: &str| {
            inner.strip_prefix(outer).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
            })
        };
        let latest = |matches: &dyn Fn(&str) -> bool| {
            self.applied
                .iter()
                .rev()
                .find(|(path, _)| matches(path))
                .map(|(_, var)| var.as_str())
        };
        latest(&|path| under(key, path)).or_else(|| latest(&|path| under(path, key)))
    }
}

/// The override variables of the process environment. A non-UTF-8 value of one of them is
/// an error rather than silently skipped: the operator meant to set something.
pub(crate) fn from_process() -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !is_override_name(name) {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_: OsString| ConfigError::Env {
                var: name.to_owned(),
                message: "value is not valid utf-8".to_owned(),
            })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

fn is_override_name(name: &str) -> bool {
    name == ENV_DATABASE_URL
        || (name != ENV_CONFIG_PATH
            && name
                .strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.contains(ENV_SEPARATOR)))
}

/// Applies the override variables found in `env` to `document`.
pub(crate) fn apply(document: &mut toml::Table, env: &[(String, String)]) -> Result<Overrides> {
    let mut selected: Vec<(&str, &str)> = env
        .iter()
        .filter(|(name, _)| is_override_name(name))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    selected.sort_by_key(|&(name, _)| (name != ENV_DATABASE_URL, name));

    let mut overrides = Overrides::default();
    for (var, raw) in selected {
        let path = key_path(var)?;
        set(document, &path, raw, var)?;
        overrides.applied.push((path.join("."), var.to_owned()));
    }
    Ok(overrides)
}

fn key_path(var: &str) -> Result<Vec<String>> {
    if var == ENV_DATABASE_URL {
        return Ok(vec!["database".to_owned(), "url".to_owned()]);
    }
    let env_error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let rest = var.strip_prefix(ENV_PREFIX).unwrap_or(var);
    let path: Vec<String> = rest
        .split(ENV_SEPARATOR)
        .map(str::to_ascii_lowercase)
        .collect();
    if path.len() > KEY_DEPTH_MAX {
        return Err(env_error(format!(
            "key path is deeper than {KEY_DEPTH_MAX} levels"
        )));
    }
    if path.iter().any(String::is_empty) {
        return Err(env_error("empty key between double underscores".to_owned()));
    }
    Ok(path)
}

fn set(document: &mut toml::Table, path: &[String], raw: &str, var: &str) -> Result<()> {
    let env_error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let Some((last, parents)) = path.split_last() else {
        return Err(env_error("empty key path".to_owned()));
    };
    let mut table = document;
    for (depth, segment) in parents.iter().enumerate() {
        let entry = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(inner) => inner,
            other => {
                return Err(env_error(format!(
                    "key {} is a {}, not a table",
                    path[..=depth].join("."),
                    other.type_str()
                )))
            }
        };
    }
    let value = parse_value(raw, table.get(last));
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_value(raw: &str, existing: Option<&toml::Value>) -> toml::Value {
    let verbatim = || toml::Value::String(raw.to_owned());
    if matches!(existing, Some(toml::Value::String(_))) {
        return verbatim();
    }
    // Parsing `v = <raw>` as a whole document; more than one key means the value smuggled
    // in a newline and further keys, which is taken as a plain string instead.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut table) if table.len() == 1 => match table.remove("v") {
            Some(
                value @ (toml::Value::Integer(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)
                | toml::Value::Table(_)),
            ) => value,
            _ => verbatim(),
        },
        _ => verbatim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn document(text: &str) -> toml::Table {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn values_are_typed_only_where_the_file_has_no_string() {
        let mut doc = document("[server]\nlisten = \"127.0.0.1:8080\"\nbody_limit_bytes = 10\n");
        let env = vars(&[
            ("PAYRAIL_SERVER__LISTEN", "0.0.0.0:9000"),
            ("PAYRAIL_SERVER__BODY_LIMIT_BYTES", "2048"),
            ("PAYRAIL_CHAINS__BSC__ENABLED", "false"),
            ("PAYRAIL_CHAINS__BSC__RPC", "[\"https://a.example\"]"),
            ("PAYRAIL_INVOICES__AMOUNT_MAX", "0.5"),
        ]);
        let applied = apply(&mut doc, &env);
        assert!(applied.is_ok(), "{applied:?}");
        let expected = document(
            "[server]\nlisten = \"0.0.0.0:9000\"\nbody_limit_bytes = 2048\n\
             [chains.bsc]\nenabled = false\nrpc = [\"https://a.example\"]\n\
             [invoices]\namount_max = \"0.5\"\n",
        );
        assert_eq!(doc, expected);
    }

    #[test]
    fn database_url_applies_first_and_explicit_override_wins() {
        let mut doc = document("[database]\nurl = \"postgres://a\"\n");
        let env = vars(&[
            ("PAYRAIL_DATABASE__URL", "postgres://explicit"),
            ("DATABASE_URL", "postgres://conventional"),
        ]);
        let overrides = apply(&mut doc, &env).unwrap_or_default();
        assert_eq!(doc, document("[database]\nurl = \"postgres://explicit\"\n"));
        assert_eq!(
            overrides.origin("database.url"),
            Some("PAYRAIL_DATABASE__URL")
        );
    }

    #[test]
    fn unrelated_variables_are_ignored() {
        let mut doc = document("a = 1\n");
        let env = vars(&[
            ("PAYRAIL_CONFIG", "x.toml"),
            ("PAYRAIL_SECRET", "s"),
            ("HOME", "/root"),
        ]);
        let overrides = apply(&mut doc, &env).unwrap_or_default();
        assert!(overrides.is_empty());
        assert_eq!(doc, document("a = 1\n"));
    }

    #[test]
    fn smuggled_keys_stay_a_string() {
        assert_eq!(
            parse_value("1\nb = 2", None),
            toml::Value::String("1\nb = 2".into())
        );
        assert_eq!(parse_value("1.5", None), toml::Value::String("1.5".into()));
        assert_eq!(parse_value("7", None), toml::Value::Integer(7));
    }

    #[test]
    fn bad_paths_name_the_variable() {
        let mut doc = document("[server]\nlisten = \"x\"\n");
        let err = apply(&mut doc, &vars(&[("PAYRAIL_SERVER__LISTEN__PORT", "1")]));
        let message = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("PAYRAIL_SERVER__LISTEN__PORT"),
            "{message}"
        );
        assert!(message.contains("server.listen is a string"), "{message}");

        let err = apply(&mut doc, &vars(&[("PAYRAIL_SERVER____X", "1")]));
        assert!(matches!(err, Err(ConfigError::Env { .. })));
    }

    #[test]
    fn origin_matches_the_key_and_what_is_under_it() {
        let overrides = Overrides {
            applied: vec![("chains.bsc.rpc".to_owned(), "V".to_owned())],
        };
        assert_eq!(overrides.origin("chains.bsc.rpc"), Some("V"));
        assert_eq!(overrides.origin("chains.bsc.rpc[0]"), Some("V"));
        assert_eq!(overrides.origin("chains.bsc"), Some("V"));
        assert_eq!(overrides.origin("chains.bsc.rpcx"), None);
        assert_eq!(overrides.origin("chains.bs"), None);
        assert_eq!(overrides.origin("server"), None);
    }
}
