//! Shared value rules of the contract: ids, currencies and size bounds.

/// Ids are 1-128 characters of `[A-Za-z0-9._:-]`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// A currency is an ISO 4217 code: three upper-case letters.
pub const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";

/// Longest free text (a product description), in characters.
pub const TEXT_MAX: u32 = 65_536;

/// Whether `s` matches [`ID_PATTERN`] (a byte loop: it runs on every id of every event).
pub fn is_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `s` matches [`CURRENCY_PATTERN`].
pub fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Whether `s` has between `min` and `max` characters (JSON Schema counts characters, not
/// bytes). Counting is skipped when the byte length already decides it.
pub fn chars_within(s: &str, min: usize, max: usize) -> bool {
    if s.len() < min {
        return false;
    }
    if s.len() <= max && (min <= 1 || s.is_ascii()) {
        return min == 0 || !s.is_empty();
    }
    (min..=max).contains(&s.chars().count())
}

/// Strict RFC 3339 date-times for serde: exactly what the schema's `date-time` format
/// accepts, where chrono's own `Deserialize` takes a wider syntax. The typed parse must not
/// accept what validation refuses.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer};

    /// A required date-time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// An optional (nullable) date-time.
    pub mod option {
        use super::*;

        /// `null` or a date-time.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
                None => Ok(None),
                Some(text) => DateTime::parse_from_rfc3339(&text)
                    .map(|t| Some(t.with_timezone(&Utc)))
                    .map_err(serde::de::Error::custom),
            }
        }
    }
}

/// Serde helpers that make the typed parse as strict about JSON *shapes* as the schema:
/// serde's derives also read a struct from an array and a unit variant from `{"x": null}`,
/// which the schema refuses. The typed fast path of decoding must not accept more.
pub mod strict {
    use std::borrow::Cow;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::value::{MapAccessDeserializer, StrDeserializer};
    use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};

    /// A unit-variant enum from a JSON string only.
    pub fn string_enum<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = Cow::<'de, str>::deserialize(d)?;
        T::deserialize(StrDeserializer::<D::Error>::new(&text))
    }

    /// A struct from a JSON object only.
    #[derive(Debug)]
    pub struct Object<T>(pub T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct ObjectVisitor<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
                type Value = Object<T>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                    T::deserialize(MapAccessDeserializer::new(map)).map(Object)
                }
            }
            d.deserialize_map(ObjectVisitor(PhantomData))
        }
    }

    /// An optional struct: `null` or a JSON object.
    pub fn option_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
    }

    /// A present string: `null` is refused (for fields whose schema is `string` only).
    pub fn present_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        String::deserialize(d).map(Some)
    }
}
