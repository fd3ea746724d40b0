//! Endpoint signing secrets: `whsec_` and 40 random alphanumerics (about 238 bits). The secret is
//! shown to the merchant once, when the endpoint is created; the type never prints it.

use std::fmt;

use rand::Rng;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random characters after the prefix.
pub const SECRET_RANDOM_LEN: usize = 40;
const SECRET_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// An endpoint's signing secret. `Debug` masks it; there is no `Display` and no `Serialize`, so it
/// reaches a log or a response only through an explicit [`EndpointSecret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecret(String);

impl EndpointSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let mut secret = String::with_capacity(SECRET_PREFIX.len() + SECRET_RANDOM_LEN);
        secret.push_str(SECRET_PREFIX);
        for _ in 0..SECRET_RANDOM_LEN {
            secret.push(char::from(SECRET_ALPHABET[rng.gen_range(0..SECRET_ALPHABET.len())]));
        }
        Self(secret)
    }

    /// Wraps a secret read back from the database (or given by a merchant's verifier).
    pub fn from_stored(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself: the HMAC key is its UTF-8 bytes, prefix included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointSecret({SECRET_PREFIX}***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_prefixed_and_never_printed() {
        let a = EndpointSecret::generate();
        let b = EndpointSecret::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(SECRET_PREFIX));
        assert_eq!(a.expose().len(), SECRET_PREFIX.len() + SECRET_RANDOM_LEN);
        assert!(a.expose()[SECRET_PREFIX.len()..].bytes().all(|c| c.is_ascii_alphanumeric()));
        let shown = format!("{a:?} {:?}", Some(&a));
        assert!(!shown.contains(&a.expose()[SECRET_PREFIX.len()..]), "{shown}");
        assert!(shown.contains("***"));
    }
}
