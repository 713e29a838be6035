//! Shared value rules of the contract: ids, currencies and size bounds.

/// Ids are 1-128 characters of `[A-Za-z0-9._:-]`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// A currency is an ISO 4217 code: three upper-case letters.
pub const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";

/// Longest free text (a product description), in characters.
pub const TEXT_MAX: u32 = 65_536;
