//! Checks and redaction for the URLs in the configuration.
//!
//! There is no URL crate in the dependency tree, and the configuration needs little: a
//! known scheme, a non-empty host, and a way to print a URL without the credentials that
//! operators routinely put in them (database passwords, RPC provider keys in the path).
//!
//! Invariant: a redacted URL never contains the userinfo password, a `password=` query
//! value, or (for RPC endpoints) any part after the host, where providers put their keys.

/// Longest URL accepted anywhere in the configuration.
pub const URL_LEN_MAX: usize = 2048;

/// The parts of `scheme://authority/rest`.
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host_port: &'a str,
    rest: &'a str,
}

fn split(url: &str) -> Option<Parts<'_>> {
    let (scheme, after) = url.split_once("://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    Some(Parts {
        scheme,
        userinfo,
        host_port,
        rest,
    })
}

/// Checks that `url` is `scheme://host…` with one of `schemes`, and, if `port_required`,
/// an explicit `:port`. The message says what was expected and shows the URL only as
/// scheme and host, since the rest may hold credentials.
pub(crate) fn check(url: &str, schemes: &[&str], port_required: bool) -> Result<(), String> {
    let shown = redact_endpoint(url);
    let expected = || {
        let list: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        format!(
            "{shown:?} is not a valid url: expected {}host{}",
            list.join(" or "),
            if port_required { ":port" } else { "" }
        )
    };
    if url.len() > URL_LEN_MAX {
        return Err(format!(
            "url is {} characters long, more than {URL_LEN_MAX}",
            url.len()
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("url contains whitespace or control characters".to_owned());
    }
    let parts = split(url).ok_or_else(expected)?;
    if !schemes.contains(&parts.scheme) {
        return Err(expected());
    }
    let (host, port) = match parts.host_port.rsplit_once(':') {
        // An IPv6 literal holds colons of its own; only a colon after `]` starts the port.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (parts.host_port, None),
    };
    if host.is_empty() {
        return Err(expected());
    }
    match port {
        Some(port) if port.parse::<u16>().map_or(true, |p| p == 0) => {
            Err(format!("{shown:?} has an invalid port {port:?}"))
        }
        None if port_required => Err(expected()),
        _ => Ok(()),
    }
}

/// `url` with the password of its userinfo and any `password=` query value masked.
pub(crate) fn redact_password(url: &str) -> String {
    let Some(parts) = split(url) else {
        return "***".to_owned();
    };
    let userinfo = match parts.userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@"),
            None => format!("{userinfo}@"),
        },
        None => String::new(),
    };
    let rest = match parts.rest.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => parts.rest.to_owned(),
    };
    format!("{}://{userinfo}{}{rest}", parts.scheme, parts.host_port)
}

/// `url` reduced to scheme, host and port: RPC providers put API keys in the userinfo, the
/// path and the query.
pub(crate) fn redact_endpoint(url: &str) -> String {
    let Some(parts) = split(url) else {
        return "***".to_owned();
    };
    let userinfo = if parts.userinfo.is_some() { "***@" } else { "" };
    let rest = if parts.rest.is_empty() || parts.rest == "/" {
        parts.rest
    } else {
        "/***"
    };
    format!("{}://{userinfo}{}{rest}", parts.scheme, parts.host_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_scheme_host_and_port() {
        let http = ["http", "https"];
        assert_eq!(check("https://arb1.arbitrum.io/rpc", &http, false), Ok(()));
        assert_eq!(check("http://127.0.0.1:18545", &http, false), Ok(()));
        assert_eq!(check("http://[::1]:8545", &http, false), Ok(()));
        assert_eq!(check("http://[::1]", &http, false), Ok(()));
        assert!(check("ws://127.0.0.1:8545", &http, false).is_err());
        assert!(check("127.0.0.1:8545", &http, false).is_err());
        assert!(check("http://", &http, false).is_err());
        assert!(check("http://host:port", &http, false).is_err());
        assert!(check("http://host:0", &http, false).is_err());
        assert!(check("http://ho st", &http, false).is_err());

        let electrum = ["tcp", "ssl"];
        assert_eq!(
            check("ssl://electrum.blockstream.info:50002", &electrum, true),
            Ok(())
        );
        assert!(check("ssl://electrum.blockstream.info", &electrum, true).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/payrail?sslmode=require&password=x"),
            "postgres://app:***@db:5432/payrail?sslmode=require&password=***"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1/payrail"),
            "postgres://postgres@127.0.0.1/payrail"
        );
        assert_eq!(redact_password("not a url"), "***");
    }

    #[test]
    fn redacts_endpoint_keys() {
        assert_eq!(
            redact_endpoint("https://mainnet.infura.io/v3/KEY"),
            "https://mainnet.infura.io/***"
        );
        assert_eq!(
            redact_endpoint("https://KEY@rpc.example:443"),
            "https://***@rpc.example:443"
        );
        assert_eq!(
            redact_endpoint("http://127.0.0.1:18545"),
            "http://127.0.0.1:18545"
        );
    }
}
