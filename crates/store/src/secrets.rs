//! Secrets at rest: values the daemon must read back (webhook signing secrets) are stored sealed
//! under a key that lives outside the database, so a copy of the database (a backup, a replica, a
//! leaked dump) does not hand out the keys that sign merchants' webhooks.
//!
//! The key comes from `PAYRAIL_SECRETS_KEY` (32 bytes as 64 hex digits or base64) or from the file
//! named by `PAYRAIL_SECRETS_KEY_FILE` (the same text). [`SecretsKey::seal`] encrypts with
//! XChaCha20-Poly1305 under a fresh random 24-byte nonce and binds the value to a context (`aad`,
//! e.g. the endpoint id), so a sealed value copied into another row does not open there. A sealed
//! value is `key id (1 byte) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`; the key id is authenticated
//! too, and names the key that sealed it so keys can be rotated later (one key, id 1, today).
//!
//! Invariants: no type here prints key material or plaintext (`Debug` is masked); every failure to
//! open is an error, never a wrong plaintext.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

/// The key itself, in the environment.
pub const SECRETS_KEY_ENV: &str = "PAYRAIL_SECRETS_KEY";
/// A file holding the key, for secret stores that mount files.
pub const SECRETS_KEY_FILE_ENV: &str = "PAYRAIL_SECRETS_KEY_FILE";
/// Bytes of key.
pub const KEY_BYTES: usize = 32;
/// Bytes of nonce: XChaCha20's 192 bits, large enough to be drawn at random for every seal.
pub const NONCE_BYTES: usize = 24;
/// Bytes of the Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// The id of the key read from the environment. Sealed values name it in their first byte.
pub const KEY_ID_CURRENT: u8 = 1;
/// The smallest sealed value: header, nonce and tag around an empty plaintext.
pub const SEALED_BYTES_MIN: usize = 1 + NONCE_BYTES + TAG_BYTES;

pub type Result<T, E = SecretsError> = std::result::Result<T, E>;

/// Errors of sealing, opening and loading keys. None carries key material or plaintext.
#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("{var} is not a key: {reason} (expected {KEY_BYTES} bytes as 64 hex digits or base64)")]
    KeyInvalid { var: &'static str, reason: String },
    #[error("cannot read the secrets key file {path} ({SECRETS_KEY_FILE_ENV}): {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error("both {SECRETS_KEY_ENV} and {SECRETS_KEY_FILE_ENV} are set; set one")]
    KeyAmbiguous,
    #[error("sealed value of {len} bytes is too short to be one (at least {SEALED_BYTES_MIN})")]
    Truncated { len: usize },
    #[error("sealed under key id {found}, but the configured key has id {expected}")]
    UnknownKey { found: u8, expected: u8 },
    /// Wrong key, wrong context (a value moved to another row), or altered bytes: the AEAD tells
    /// them apart from nothing, on purpose.
    #[error("sealed value does not open: wrong key, wrong context, or altered")]
    Unauthentic,
    #[error("opened value is not UTF-8")]
    NotUtf8,
    #[error("sealing failed")]
    Seal,
}

/// The key that seals secrets at rest. Cheap to share behind an `Arc`; never printed.
pub struct SecretsKey {
    id: u8,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretsKey {{ id: {}, key: *** }}", self.id)
    }
}

impl SecretsKey {
    /// A key from its raw bytes, with id [`KEY_ID_CURRENT`].
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        Self { id: KEY_ID_CURRENT, cipher: XChaCha20Poly1305::new(&(*bytes).into()) }
    }

    /// A fresh random key (tests and tools).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(&bytes)
    }

    /// A key written as text: 64 hex digits, or base64 (standard or URL-safe, padded or not) of
    /// 32 bytes. Surrounding whitespace (a file's newline) is ignored. `var` names the source in
    /// errors; the text itself never appears in one.
    pub fn parse(text: &SecretString, var: &'static str) -> Result<Self> {
        let text = text.expose_secret().trim();
        let invalid = |reason: &str| SecretsError::KeyInvalid { var, reason: reason.to_owned() };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        let decoded = if text.len() == 2 * KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| invalid("not hex"))?
        } else {
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines.iter().find_map(|engine| engine.decode(text).ok()).ok_or_else(|| invalid("neither hex nor base64"))?
        };
        let bytes: [u8; KEY_BYTES] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| invalid(&format!("{} bytes, not {KEY_BYTES}", decoded.len())))?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key configured in the process environment, if any: [`SECRETS_KEY_ENV`] or the file
    /// named by [`SECRETS_KEY_FILE_ENV`] (setting both is refused, so there is no doubt which one
    /// is in use).
    pub fn from_env() -> Result<Option<Self>> {
        let inline = match std::env::var(SECRETS_KEY_ENV) {
            Ok(text) => Some(SecretString::from(text)),
            Err(std::env::VarError::NotPresent) => None,
            // Set but unreadable: the operator meant to give a key, so this is not "no key".
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(SecretsError::KeyInvalid { var: SECRETS_KEY_ENV, reason: "not UTF-8".to_owned() })
            }
        };
        let file = std::env::var_os(SECRETS_KEY_FILE_ENV).map(PathBuf::from);
        match (inline, file) {
            (Some(_), Some(_)) => Err(SecretsError::KeyAmbiguous),
            (Some(text), None) => Self::parse(&text, SECRETS_KEY_ENV).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| SecretsError::KeyFile { path: path.clone(), source })?;
                Self::parse(&SecretString::from(text), SECRETS_KEY_FILE_ENV).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// What the AEAD authenticates beside the ciphertext: the key id, then the caller's context.
    fn associated(&self, id: u8, aad: &[u8]) -> Vec<u8> {
        let mut associated = Vec::with_capacity(1 + aad.len());
        associated.push(id);
        associated.extend_from_slice(aad);
        associated
    }

    /// Seals `plaintext` for the context `aad` under a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let associated = self.associated(self.id, aad);
        let ciphertext = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: &associated })
            .map_err(|_| SecretsError::Seal)?;
        let mut sealed = Vec::with_capacity(1 + NONCE_BYTES + ciphertext.len());
        sealed.push(self.id);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens a value sealed for the context `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < SEALED_BYTES_MIN {
            return Err(SecretsError::Truncated { len: sealed.len() });
        }
        let (&id, rest) = sealed.split_first().ok_or(SecretsError::Truncated { len: sealed.len() })?;
        if id != self.id {
            return Err(SecretsError::UnknownKey { found: id, expected: self.id });
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| SecretsError::Truncated { len: sealed.len() })?;
        let associated = self.associated(id, aad);
        self.cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: ciphertext, aad: &associated })
            .map_err(|_| SecretsError::Unauthentic)
    }

    /// Seals a text secret.
    pub fn seal_str(&self, plaintext: &str, aad: &[u8]) -> Result<Vec<u8>> {
        self.seal(plaintext.as_bytes(), aad)
    }

    /// Opens a text secret.
    pub fn open_str(&self, sealed: &[u8], aad: &[u8]) -> Result<String> {
        String::from_utf8(self.open(sealed, aad)?).map_err(|_| SecretsError::NotUtf8)
    }
}

/// How secrets are kept at rest, as decided once at start-up.
#[derive(Debug, Clone)]
pub enum SecretsAtRest {
    /// Sealed under this key.
    Sealed(Arc<SecretsKey>),
    /// In plaintext: only when the configuration allows it (`[webhooks] allow_plaintext_secrets`,
    /// or the dev stack without a key).
    Plaintext,
}

impl SecretsAtRest {
    pub fn key(&self) -> Option<&SecretsKey> {
        match self {
            Self::Sealed(key) => Some(key),
            Self::Plaintext => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_context() {
        let key = SecretsKey::generate();
        let secret = "whsec_0123456789abcdefghijklmnopqrstuvwxyzABCD";
        let sealed = key.seal_str(secret, b"we_aaaaaaaaaaaaaaaa").expect("seal");
        assert_eq!(sealed.len(), SEALED_BYTES_MIN + secret.len());
        assert_eq!(sealed[0], KEY_ID_CURRENT);
        assert!(!sealed.windows(8).any(|w| secret.as_bytes().windows(8).any(|s| s == w)), "no plaintext inside");
        assert_eq!(key.open_str(&sealed, b"we_aaaaaaaaaaaaaaaa").expect("open"), secret);
        // A fresh nonce every time: sealing twice gives two different values.
        assert_ne!(key.seal_str(secret, b"we_aaaaaaaaaaaaaaaa").expect("seal"), sealed);

        // Moved to another row.
        assert!(matches!(key.open(&sealed, b"we_bbbbbbbbbbbbbbbb"), Err(SecretsError::Unauthentic)));
        // Another key.
        assert!(matches!(SecretsKey::generate().open(&sealed, b"we_aaaaaaaaaaaaaaaa"), Err(SecretsError::Unauthentic)));
        // Any byte altered: the key id, the nonce, the ciphertext, the tag.
        for index in [0, 1, 1 + NONCE_BYTES, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[index] ^= 0x01;
            let result = key.open(&altered, b"we_aaaaaaaaaaaaaaaa");
            assert!(
                matches!(result, Err(SecretsError::Unauthentic | SecretsError::UnknownKey { .. })),
                "byte {index}: {result:?}"
            );
        }
        assert!(matches!(key.open(&sealed[..SEALED_BYTES_MIN - 1], b""), Err(SecretsError::Truncated { .. })));
        let error = key.open(&sealed, b"we_bbbbbbbbbbbbbbbb").expect_err("wrong context");
        assert_eq!(error.to_string(), "sealed value does not open: wrong key, wrong context, or altered");
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_never_print() {
        let bytes: [u8; KEY_BYTES] = core::array::from_fn(|i| u8::try_from(i).unwrap_or(0).wrapping_mul(7));
        let hex_text = hex::encode(bytes);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let sealed = SecretsKey::from_bytes(&bytes).seal(b"x", b"ctx").expect("seal");
        for text in [hex_text.clone(), hex_text.to_uppercase(), b64.clone(), format!("{b64}\n"), b64.trim_end_matches('=').to_owned()] {
            let key = SecretsKey::parse(&SecretString::from(text.clone()), SECRETS_KEY_ENV).expect("parses");
            assert_eq!(key.open(&sealed, b"ctx").expect("same key"), b"x", "{text}");
            let shown = format!("{key:?}");
            assert!(!shown.contains(&hex_text) && !shown.contains(&b64), "{shown}");
        }
        for bad in ["", "abc", "00ff", &hex::encode([0u8; 31]), &base64::engine::general_purpose::STANDARD.encode([0u8; 16])] {
            let error = SecretsKey::parse(&SecretString::from(bad.to_owned()), SECRETS_KEY_ENV).expect_err(bad);
            assert!(matches!(error, SecretsError::KeyInvalid { .. }), "{bad}: {error}");
            assert!(bad.len() < 8 || !error.to_string().contains(bad), "the text is not echoed");
        }
    }
}
