//! `Payrail-Signature: t=<unix seconds>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`.
//!
//! The body is signed as the exact bytes sent; the timestamp is inside the signed string, so a
//! receiver that checks it against its own clock refuses replays of old deliveries.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use super::secret::EndpointSecret;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Payrail-Signature";
/// The version tag of the one signature scheme.
pub const SIGNATURE_SCHEME: &str = "v1";
/// How far a receiver should let `t` stray from its own clock, as suggested to merchants.
pub const SIGNATURE_TOLERANCE_S_DEFAULT: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

#[allow(clippy::expect_used, reason = "HMAC takes a key of any length")]
fn mac(secret: &EndpointSecret, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length, so new_from_slice cannot fail");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &EndpointSecret, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},{SIGNATURE_SCHEME}={}", hex::encode(digest))
}

/// The header value for `body` signed with each of `secrets` (the current one first): while a
/// rotated secret overlaps, a receiver holding either verifies the delivery.
pub fn sign_all(secrets: &[&EndpointSecret], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let digest = mac(secret, timestamp, body).finalize().into_bytes();
        header.push_str(&format!(",{SIGNATURE_SCHEME}={}", hex::encode(digest)));
    }
    header
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature timestamp {timestamp} is more than {tolerance_s} s from now")]
    Stale { timestamp: i64, tolerance_s: i64 },
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a `Payrail-Signature` header as a receiver would: the timestamp within `tolerance_s` of
/// `now_unix`, and one `v1` signature equal (in constant time) to the HMAC of `t.body`.
pub fn verify(
    secret: &EndpointSecret,
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some((SIGNATURE_SCHEME, value)) => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_unix.abs_diff(timestamp) > tolerance_s.unsigned_abs() {
        return Err(SignatureError::Stale { timestamp, tolerance_s });
    }
    let expected = mac(secret, timestamp, body);
    if signatures.iter().any(|candidate| expected.clone().verify_slice(candidate).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A vector computed outside this crate, with Python's `hmac` and `hashlib.sha256`:
    // hmac.new(SECRET, b"1767268800." + BODY, hashlib.sha256).hexdigest()
    const SECRET: &str = "whsec_0123456789abcdefghijklmnopqrstuvwxyzABCD";
    const TIMESTAMP: i64 = 1_767_268_800;
    const BODY: &str = r#"{"id": "evt_0123456789abcdefghijklmn", "data": {"id": "inv_0123456789abcdefghijklmn"}, "type": "invoice.paid", "created_at": "2026-01-01T12:00:00Z"}"#;
    const EXPECTED: &str = "t=1767268800,v1=7bbd50839f501bcd3b489f1f5600de99ab74e197ec8430ed75cf5a699deecc28";

    fn secret() -> EndpointSecret {
        EndpointSecret::from_stored(SECRET.to_owned())
    }

    #[test]
    fn signature_matches_an_independently_computed_vector() {
        assert_eq!(sign(&secret(), TIMESTAMP, BODY.as_bytes()), EXPECTED);
    }

    #[test]
    fn verify_accepts_the_vector_and_refuses_tampering() {
        let body = BODY.as_bytes();
        assert_eq!(verify(&secret(), EXPECTED, body, TIMESTAMP + 10, 300), Ok(()));
        // Several signatures (e.g. during a secret rotation): one match is enough.
        let two = format!("t={TIMESTAMP},v1={},{}", "00".repeat(32), &EXPECTED[13..]);
        assert_eq!(verify(&secret(), &two, body, TIMESTAMP, 300), Ok(()));
        let other_body = BODY.replace("invoice.paid", "invoice.void");
        assert_eq!(verify(&secret(), EXPECTED, other_body.as_bytes(), TIMESTAMP, 300), Err(SignatureError::Mismatch));
        let other_secret = EndpointSecret::from_stored(format!("{SECRET}x"));
        assert_eq!(verify(&other_secret, EXPECTED, body, TIMESTAMP, 300), Err(SignatureError::Mismatch));
        // Moving the timestamp breaks the signature, since it is signed too.
        let moved = EXPECTED.replace("1767268800", "1767268801");
        assert_eq!(verify(&secret(), &moved, body, TIMESTAMP, 300), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(&secret(), EXPECTED, body, TIMESTAMP + 301, 300),
            Err(SignatureError::Stale { timestamp: TIMESTAMP, tolerance_s: 300 })
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(verify(&secret(), bad, body, TIMESTAMP, 300), Err(SignatureError::Malformed), "{bad}");
        }
    }
}
