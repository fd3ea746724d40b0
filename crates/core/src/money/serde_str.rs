//! Serde through `Display` / `FromStr` for the money types.
//!
//! Invariant: every money type is a JSON string on the wire and is validated by the same
//! `FromStr` as any other input, so a deserialized value can never bypass a check. Numbers
//! are refused on purpose: JSON numbers lose precision in many clients beyond 2^53.

use std::fmt::Display;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::Deserialize;

pub(crate) fn serialize<T: Display, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

pub(crate) fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
where
    T: FromStr,
    T::Err: Display,
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(de::Error::custom)
}

/// Implements `Serialize` and `Deserialize` for a type with `Display` and `FromStr`.
macro_rules! impl_serde_via_str {
    ($ty:ty) => {
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::money::serde_str::serialize(self, serializer)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                $crate::money::serde_str::deserialize(deserializer)
            }
        }
    };
}

pub(crate) use impl_serde_via_str;
