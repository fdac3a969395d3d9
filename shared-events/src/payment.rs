//! Value types of a payment. Each has a `parse` constructor that enforces its
//! rules, and deserialises through it, so an invalid value cannot exist in a
//! decoded event either.

use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::InvalidValue;

/// What an id that is a UUIDv7 (time-ordered, so ids sort by creation)
/// has: `new` and `Default` make a fresh one; it converts from and into a
/// [`Uuid`], and shows as one.
macro_rules! uuid_id {
    ($name:ident) => {
        impl $name {
            /// A fresh id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(id: uuid::Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for uuid::Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
pub(crate) use uuid_id;

/// Identifies a payment. A UUIDv7: time-ordered, so ids sort by creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PaymentId(Uuid);

uuid_id!(PaymentId);

impl PaymentId {
    /// Parses the textual (hyphenated) form.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| InvalidValue::new("payment_id", "must be a UUID"))
    }
}

impl FromStr for PaymentId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl JsonSchema for PaymentId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PaymentId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "uuid",
            "description": "Identifies a payment: a UUIDv7, so ids sort by creation.",
        })
    }
}

/// What a customer or order id (or a refund's reason) may hold, as a JSON
/// Schema pattern: not only white space, no control characters (Unicode Cc).
pub const REFERENCE_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// Longest accepted customer or order id, in characters.
pub const MAX_REFERENCE_LEN: usize = 64;

fn parse_reference(field: &'static str, s: &str) -> Result<String, InvalidValue> {
    if s.trim().is_empty() {
        return Err(InvalidValue::new(field, "must not be empty"));
    }
    if s.chars().count() > MAX_REFERENCE_LEN {
        return Err(InvalidValue::new(
            field,
            format!("must be at most {MAX_REFERENCE_LEN} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidValue::new(field, "must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// Declares a string reference type (an id owned by another system) that is
/// non-empty, short and printable.
macro_rules! reference_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accepts 1 to [`MAX_REFERENCE_LEN`] characters, no control characters.
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                parse_reference($field, s).map(Self)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_REFERENCE_LEN,
                    "pattern": REFERENCE_PATTERN,
                })
            }
        }
    };
}

reference_type!(
    /// The customer who paid, as the customer system names them.
    CustomerId,
    "customer_id"
);
reference_type!(
    /// The order the payment is for, as the order system names it.
    OrderId,
    "order_id"
);

/// A positive amount of money in the currency's minor unit (cents for EUR,
/// yen for JPY). Integer arithmetic only: floats cannot represent 0.10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl Amount {
    /// Accepts any amount greater than zero.
    pub fn parse(minor_units: i64) -> Result<Self, InvalidValue> {
        if minor_units <= 0 {
            return Err(InvalidValue::new(
                "amount",
                "must be a positive integer number of minor units (e.g. cents)",
            ));
        }
        Ok(Self(minor_units))
    }

    /// The amount in minor units.
    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "format": "int64",
            "minimum": 1,
            "description": "A positive amount in the currency's minor unit (cents for EUR).",
        })
    }
}

impl TryFrom<i64> for Amount {
    type Error = InvalidValue;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        Self::parse(v)
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

/// An ISO 4217 currency that money can be paid in: an active code with a
/// minor unit (so `XAU`, gold, and `XXX`, "no currency", are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Accepts an upper-case three-letter ISO 4217 code such as `EUR`.
    pub fn parse(code: &str) -> Result<Self, InvalidValue> {
        iso_currency::Currency::from_code(code)
            .filter(|c| c.exponent().is_some())
            .map(Self)
            .ok_or_else(|| {
                InvalidValue::new(
                    "currency",
                    format!("`{code}` is not an ISO 4217 currency code (e.g. EUR, USD, JPY)"),
                )
            })
    }

    /// The three-letter code.
    pub fn code(self) -> &'static str {
        self.0.code()
    }
}

impl JsonSchema for Currency {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Currency".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[A-Z]{3}$",
            "description": "An active ISO 4217 code with a minor unit, e.g. EUR, USD, JPY.",
        })
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_id_round_trips_through_text() {
        let id = PaymentId::new();
        assert_eq!(PaymentId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn payment_id_rejects_non_uuids() {
        for bad in ["", "42", "not-a-uuid", "0196a1b2-zzzz-7000-8000-000000000000"] {
            let err = PaymentId::parse(bad).expect_err(bad);
            assert_eq!(err.field, "payment_id");
        }
    }

    #[test]
    fn amount_must_be_positive() {
        assert_eq!(Amount::parse(1).map(Amount::minor_units), Ok(1));
        assert_eq!(Amount::parse(i64::MAX).map(Amount::minor_units), Ok(i64::MAX));
        for bad in [0, -1, i64::MIN] {
            assert_eq!(Amount::parse(bad).expect_err("rejected").field, "amount");
        }
    }

    #[test]
    fn currency_accepts_iso_4217_codes_only() {
        for good in ["EUR", "USD", "JPY", "BHD"] {
            assert_eq!(Currency::parse(good).map(Currency::code), Ok(good));
        }
        for bad in ["", "eur", "EURO", "EU", "ABC", "XXX", "XAU", "€"] {
            assert_eq!(Currency::parse(bad).expect_err(bad).field, "currency");
        }
    }

    #[test]
    fn references_must_be_short_printable_and_non_empty() {
        assert!(CustomerId::parse("c-1").is_ok());
        assert!(OrderId::parse(&"o".repeat(MAX_REFERENCE_LEN)).is_ok());
        for bad in ["", "   ", "a\nb", &"o".repeat(MAX_REFERENCE_LEN + 1)] {
            assert_eq!(OrderId::parse(bad).expect_err(bad).field, "order_id");
        }
    }

    #[test]
    fn deserialising_enforces_the_same_rules() {
        assert!(serde_json::from_str::<Amount>("0").is_err());
        assert!(serde_json::from_str::<Currency>(r#""eur""#).is_err());
        assert!(serde_json::from_str::<CustomerId>(r#""""#).is_err());
        assert_eq!(
            serde_json::from_str::<Currency>(r#""EUR""#)
                .map(Currency::code)
                .ok(),
            Some("EUR")
        );
    }
}

/// How the customer paid. Recorded since `PaymentReceived` v2; a payment
/// received before that (an event of version 1, upcast when read) is
/// [`PaymentMethod::Unknown`], as is one whose request did not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    BankTransfer,
    Wallet,
    /// Not recorded.
    #[default]
    Unknown,
}
