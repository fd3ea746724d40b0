//! Why a delivery attempt got no 2xx, as coarsely as the merchant may see it.
//!
//! The delivery log is shown to the merchant who owns the endpoint, and the endpoint's URL is the
//! merchant's to choose: a response body or a raw connection error would let a merchant read back
//! what an internal service answers (SSRF) or map which ports are open. So the log keeps a class per
//! failed attempt ([`ErrorClass`]) and nothing of the response beyond its status code; the details
//! go to the daemon's log at debug level, without the URL.

use std::error::Error as StdError;
use std::fmt;

use serde::Serialize;

/// The class of a failed attempt, stored in `webhook_attempts.error` and shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// No complete answer within the delivery timeout.
    Timeout,
    /// The connection could not be made (refused, reset, unreachable).
    Connect,
    /// The TLS handshake failed (bad certificate, not TLS at all).
    Tls,
    /// The host name did not resolve.
    Dns,
    /// The host name resolved only to addresses an endpoint may not use (private, loopback, …).
    RefusedAddress,
    /// An answer came, but not a 2xx: its status code is in the log.
    HttpStatus,
    /// The event is larger than payrail sends; it was not sent.
    BodyTooLarge,
    /// Anything else.
    Other,
}

impl ErrorClass {
    /// Every class, in the order of the docs.
    pub const ALL: [Self; 8] = [
        Self::Timeout,
        Self::Connect,
        Self::Tls,
        Self::Dns,
        Self::RefusedAddress,
        Self::HttpStatus,
        Self::BodyTooLarge,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Dns => "dns",
            Self::RefusedAddress => "refused_address",
            Self::HttpStatus => "http_status",
            Self::BodyTooLarge => "body_too_large",
            Self::Other => "other",
        }
    }

    /// The class stored as `text`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.as_str() == text)
    }

    /// Classifies a request that got no response. The resolver's own errors are recognised by type;
    /// a TLS failure shows as an `InvalidData` I/O error while connecting (how the TLS stream
    /// reports a handshake that went wrong), possibly wrapped in another I/O error.
    pub fn of_request(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            return Self::Timeout;
        }
        let mut source = error.source();
        while let Some(cause) = source {
            if cause.is::<AddressRefused>() {
                return Self::RefusedAddress;
            }
            if cause.is::<ResolveFailed>() {
                return Self::Dns;
            }
            // An I/O error's `source` skips the error it wraps, so wrapped I/O errors are unwrapped
            // here (the TLS stream's sits inside the connector's).
            let mut io = cause.downcast_ref::<std::io::Error>();
            while let Some(inner) = io {
                match inner.kind() {
                    std::io::ErrorKind::TimedOut => return Self::Timeout,
                    std::io::ErrorKind::InvalidData if error.is_connect() => return Self::Tls,
                    _ => {}
                }
                io = inner.get_ref().and_then(|wrapped| wrapped.downcast_ref::<std::io::Error>());
            }
            source = cause.source();
        }
        if error.is_connect() {
            Self::Connect
        } else {
            Self::Other
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resolver found addresses for an endpoint's host, but none an endpoint may use. Carries no
/// host name: it ends up in error chains that are logged.
#[derive(Debug)]
pub struct AddressRefused;

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host resolves only to addresses endpoints may not use")
    }
}

impl StdError for AddressRefused {}

/// The resolver could not resolve an endpoint's host.
#[derive(Debug)]
pub struct ResolveFailed(pub std::io::Error);

impl fmt::Display for ResolveFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot resolve the host: {}", self.0)
    }
}

impl StdError for ResolveFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_through_their_stored_names() {
        for class in ErrorClass::ALL {
            assert_eq!(ErrorClass::parse(class.as_str()), Some(class));
            assert_eq!(serde_json::to_value(class).ok(), Some(serde_json::Value::from(class.as_str())));
        }
        assert_eq!(ErrorClass::parse("connect: tcp connect error: Connection refused"), None);
    }
}
