//! Why an account code or a journal entry is refused before it reaches the database.

use thiserror::Error;

pub type Result<T, E = EntryError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EntryError {
    #[error("invalid account code {code:?}")]
    InvalidAccount { code: String },
    #[error("entry {key:?} is invalid: {reason}")]
    InvalidEntry { key: String, reason: String },
    #[error("entry {key:?} does not balance in asset {asset}")]
    Unbalanced { key: String, asset: String },
}
