//! Wire primitives every OCPP version's messages share: the bounded
//! `CiStringNNType` strings (OCPP 1.6 edition 2 §7 Types) and `dateTime`,
//! which OCPP-J sends as an RFC 3339 string; OCPP 1.6 asks for UTC, and so
//! does the Security Whitepaper edition 2.
//!
//! Deserialization errors use serde's standard wording on purpose: the RPC
//! layer maps "invalid length" (an over-long string) and "invalid value" (a
//! malformed date-time) to a `PropertyConstraintViolation` CALLERROR.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A string of at most `N` characters (`CiString20Type` … `CiString500Type`).
///
/// OCPP compares these case-insensitively; `==` here is exact (so that `Eq`
/// and `Hash` agree with the bytes on the wire), and
/// [`CiString::eq_ignore_case`] is the OCPP comparison. Length counts
/// Unicode scalar values, as the JSON schemas' `maxLength` does; OCPP only
/// allows printable ASCII, where that equals the byte length.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CiString<const N: usize>(String);

/// A string longer than the `CiString` it was meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} characters where at most {max} are allowed")]
pub struct TooLong {
    pub max: usize,
    pub len: usize,
}

impl<const N: usize> CiString<N> {
    /// The largest number of characters this type holds.
    pub const MAX_LEN: usize = N;

    pub fn new(s: impl Into<String>) -> Result<Self, TooLong> {
        let s = s.into();
        // Bytes bound characters from above: most strings need no count.
        if s.len() > N {
            let len = s.chars().count();
            if len > N {
                return Err(TooLong { max: N, len });
            }
        }
        Ok(CiString(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// OCPP's comparison of identifiers: ASCII case-insensitive.
    pub fn eq_ignore_case(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl<const N: usize> Deref for CiString<N> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> AsRef<str> for CiString<N> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> Borrow<str> for CiString<N> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> fmt::Display for CiString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const N: usize> fmt::Debug for CiString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const N: usize> PartialEq<str> for CiString<N> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl<const N: usize> PartialEq<&str> for CiString<N> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<const N: usize> TryFrom<String> for CiString<N> {
    type Error = TooLong;

    fn try_from(s: String) -> Result<Self, TooLong> {
        Self::new(s)
    }
}

impl<const N: usize> TryFrom<&str> for CiString<N> {
    type Error = TooLong;

    fn try_from(s: &str) -> Result<Self, TooLong> {
        Self::new(s)
    }
}

impl<const N: usize> FromStr for CiString<N> {
    type Err = TooLong;

    fn from_str(s: &str) -> Result<Self, TooLong> {
        Self::new(s)
    }
}

impl<const N: usize> From<CiString<N>> for String {
    fn from(s: CiString<N>) -> String {
        s.0
    }
}

/// serde's `Expected` for an over-long string.
struct AtMost(usize);

impl de::Expected for AtMost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string of at most {} characters", self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for CiString<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        CiString::new(s).map_err(|e| de::Error::invalid_length(e.len, &AtMost(N)))
    }
}

/// Milliseconds from the Unix epoch to 0000-01-01T00:00:00.000Z.
const MIN_UNIX_MS: i64 = -62_167_219_200_000;
/// Milliseconds from the Unix epoch to 9999-12-31T23:59:59.999Z.
const MAX_UNIX_MS: i64 = 253_402_300_799_999;

/// An OCPP `dateTime`: a UTC instant with millisecond precision, within the
/// years 0000–9999 that RFC 3339 can write.
///
/// It is written as `2026-11-24T10:00:00.000Z` (always UTC, always three
/// fractional digits, which every CSMS parses) and read from any RFC 3339
/// date-time: any offset, any number of fractional digits (truncated to the
/// millisecond). The precision and range are fixed at construction, so a
/// value survives a trip over the wire unchanged and `==`/`Ord` agree with
/// what the peer sees.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime(OffsetDateTime);

/// A string that is not an RFC 3339 date-time within 0000–9999 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 date-time between 0000 and 9999 UTC")]
pub struct InvalidDateTime;

impl DateTime {
    /// The instant `ms` milliseconds after the Unix epoch, clamped to
    /// 0000-01-01T00:00:00.000Z ..= 9999-12-31T23:59:59.999Z.
    pub fn from_unix_ms(ms: i64) -> DateTime {
        let ms = ms.clamp(MIN_UNIX_MS, MAX_UNIX_MS);
        // Cannot fail after the clamp: time's default range is ±9999 years.
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        DateTime(at)
    }

    /// Milliseconds since the Unix epoch (negative before 1970).
    pub fn unix_ms(&self) -> i64 {
        // Exact: the value holds whole milliseconds within ±2^53.
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// The system clock, now.
    pub fn now() -> DateTime {
        OffsetDateTime::now_utc().into()
    }

    /// This instant as a `time` value in UTC, for arithmetic.
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for DateTime {
    /// Converts to UTC, truncates to the millisecond and clamps to the
    /// years 0000–9999.
    fn from(at: OffsetDateTime) -> DateTime {
        let ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
        let ms = ms.clamp(i128::from(MIN_UNIX_MS), i128::from(MAX_UNIX_MS));
        DateTime::from_unix_ms(ms as i64)
    }
}

impl From<DateTime> for OffsetDateTime {
    fn from(at: DateTime) -> OffsetDateTime {
        at.0
    }
}

impl FromStr for DateTime {
    type Err = InvalidDateTime;

    fn from_str(s: &str) -> Result<DateTime, InvalidDateTime> {
        // time accepts any separator byte; RFC 3339's grammar has only T/t.
        if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(InvalidDateTime);
        }
        let at = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| InvalidDateTime)?;
        let ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
        if ms < i128::from(MIN_UNIX_MS) || ms > i128::from(MAX_UNIX_MS) {
            return Err(InvalidDateTime);
        }
        Ok(DateTime::from_unix_ms(ms as i64))
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond()
        )
    }
}

impl fmt::Debug for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DateTime({self})")
    }
}

impl Serialize for DateTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DateTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Rfc3339Visitor;

        impl Visitor<'_> for Rfc3339Visitor {
            type Value = DateTime;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 date-time")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<DateTime, E> {
                s.parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(s), &self))
            }
        }

        deserializer.deserialize_str(Rfc3339Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(s: &str) -> DateTime {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error<T: serde::de::DeserializeOwned + fmt::Debug>(value: serde_json::Value) -> String {
        serde_json::from_value::<T>(value).unwrap_err().to_string()
    }

    #[test]
    fn ci_string_holds_exactly_its_limit() {
        assert_eq!(CiString::<20>::new("a".repeat(20)).unwrap().len(), 20);
        assert_eq!(
            CiString::<20>::new("a".repeat(21)),
            Err(TooLong { max: 20, len: 21 })
        );
        assert_eq!(CiString::<0>::new("").unwrap().as_str(), "");
        assert!(CiString::<0>::new("x").is_err());
        // Characters, not bytes, as the schemas' maxLength counts.
        let accented = format!("é{}", "a".repeat(19));
        assert_eq!(accented.len(), 21);
        assert!(CiString::<20>::new(accented.clone()).is_ok());
        assert!(CiString::<19>::new(accented).is_err());
    }

    #[test]
    fn ci_string_deserializes_with_serde_wording() {
        let ok: CiString<5> = serde_json::from_value(json!("abcde")).unwrap();
        assert_eq!(ok, "abcde");
        assert_eq!(serde_json::to_value(&ok).unwrap(), json!("abcde"));
        let too_long = error::<CiString<5>>(json!("abcdef"));
        assert_eq!(
            too_long,
            "invalid length 6, expected a string of at most 5 characters"
        );
        assert!(error::<CiString<5>>(json!(5)).starts_with("invalid type"));
        assert!(error::<CiString<5>>(json!(null)).starts_with("invalid type"));
        // The same through a reader, as the RPC layer may parse text directly.
        let from_text = serde_json::from_str::<CiString<2>>("\"abc\"").unwrap_err();
        assert!(from_text.to_string().starts_with("invalid length 3"));
    }

    #[test]
    fn ci_string_compares_exactly_and_ignoring_case() {
        let tag = CiString::<20>::new("AbC123").unwrap();
        assert_ne!(tag, CiString::new("abc123").unwrap());
        assert!(tag.eq_ignore_case("abc123"));
        assert!(!tag.eq_ignore_case("abc124"));
        assert_eq!(tag.to_string(), "AbC123");
        assert_eq!(format!("{tag:?}"), "\"AbC123\"");
        assert!(tag.starts_with("AbC"));
        assert_eq!(String::from(tag.clone()), tag.into_string());
    }

    #[test]
    fn date_time_writes_utc_with_milliseconds() {
        assert_eq!(
            DateTime::from_unix_ms(1_795_514_400_000).to_string(),
            "2026-11-24T10:00:00.000Z"
        );
        assert_eq!(
            serde_json::to_value(DateTime::from_unix_ms(1_795_514_400_007)).unwrap(),
            json!("2026-11-24T10:00:00.007Z")
        );
        assert_eq!(
            DateTime::from_unix_ms(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        // Before the epoch, milliseconds floor towards the past.
        assert_eq!(
            DateTime::from_unix_ms(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn date_time_reads_any_offset_and_fraction() {
        let utc = "2026-11-24T10:00:00.000Z";
        for s in [
            "2026-11-24T10:00:00Z",
            "2026-11-24T10:00:00.0Z",
            "2026-11-24T10:00:00.000000Z",
            "2026-11-24T10:00:00.000999999Z",
            "2026-11-24T10:00:00.0009999999999Z",
            "2026-11-24t10:00:00z",
            "2026-11-24T10:00:00+00:00",
            "2026-11-24T10:00:00-00:00",
            "2026-11-24T11:00:00+01:00",
            "2026-11-24T15:30:00.000+05:30",
            "2026-11-24T04:15:00-05:45",
            "2026-11-25T09:59:00+23:59",
        ] {
            assert_eq!(parse(s).to_string(), utc, "{s}");
        }
        assert_eq!(
            parse("2026-11-24T10:00:00.1239Z").to_string(),
            "2026-11-24T10:00:00.123Z"
        );
        // Offsets move the date across day, month and year boundaries.
        assert_eq!(
            parse("2027-01-01T01:00:00+02:00").to_string(),
            "2026-12-31T23:00:00.000Z"
        );
        assert_eq!(
            parse("2026-02-28T23:30:00-01:00").to_string(),
            "2026-03-01T00:30:00.000Z"
        );
        assert_eq!(
            parse("2028-02-28T23:30:00-01:00").to_string(),
            "2028-02-29T00:30:00.000Z"
        );
    }

    #[test]
    fn date_time_rejects_what_is_not_rfc_3339() {
        for s in [
            "",
            "2026-11-24",
            "2026-11-24T10:00:00",
            "2026-11-24 10:00:00Z",
            "2026-11-24X10:00:00Z",
            "2026-11-24T10:00Z",
            "2026-11-24T10:00:00.Z",
            "2026-11-24T10:00:00+0100",
            "2026-11-24T10:00:00+24:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:00:00Z trailing",
            "+2026-11-24T10:00:00Z",
            // Valid RFC 3339, but outside 0000–9999 once in UTC.
            "0000-01-01T00:30:00+01:00",
            "9999-12-31T23:30:00-01:00",
        ] {
            assert_eq!(s.parse::<DateTime>(), Err(InvalidDateTime), "{s}");
        }
        let message = error::<DateTime>(json!("yesterday"));
        assert!(message.starts_with("invalid value"), "{message}");
        assert!(error::<DateTime>(json!(20261124)).starts_with("invalid type"));
    }

    #[test]
    fn date_time_range_edges() {
        let first = parse("0000-01-01T00:00:00Z");
        let last = parse("9999-12-31T23:59:59.999999Z");
        assert_eq!(first.unix_ms(), MIN_UNIX_MS);
        assert_eq!(last.unix_ms(), MAX_UNIX_MS);
        assert_eq!(first.to_string(), "0000-01-01T00:00:00.000Z");
        assert_eq!(last.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(DateTime::from_unix_ms(i64::MIN), first);
        assert_eq!(DateTime::from_unix_ms(i64::MAX), last);
        assert_eq!(parse("0000-01-01T01:00:00+01:00"), first);
        assert_eq!(parse("1969-12-31T23:59:59.9999Z").unix_ms(), -1);
        assert_eq!(
            parse("2024-02-29T12:00:00Z").to_string(),
            "2024-02-29T12:00:00.000Z"
        );
        assert_eq!(
            DateTime::from(OffsetDateTime::UNIX_EPOCH - time::Duration::nanoseconds(1)),
            DateTime::from_unix_ms(-1)
        );
    }

    #[test]
    fn now_is_whole_milliseconds() {
        let now = DateTime::now();
        assert_eq!(DateTime::from_unix_ms(now.unix_ms()), now);
        assert_eq!(now.as_offset_date_time().offset(), time::UtcOffset::UTC);
    }

    proptest! {
        #[test]
        fn unix_ms_round_trips(ms in MIN_UNIX_MS..=MAX_UNIX_MS) {
            let at = DateTime::from_unix_ms(ms);
            prop_assert_eq!(at.unix_ms(), ms);
            let text = at.to_string();
            prop_assert_eq!(text.len(), 24);
            prop_assert_eq!(text.parse::<DateTime>(), Ok(at));
            let json = serde_json::to_value(at).unwrap();
            prop_assert_eq!(serde_json::from_value::<DateTime>(json).unwrap(), at);
        }

        #[test]
        fn order_follows_unix_ms(a in MIN_UNIX_MS..=MAX_UNIX_MS, b in MIN_UNIX_MS..=MAX_UNIX_MS) {
            prop_assert_eq!(
                DateTime::from_unix_ms(a).cmp(&DateTime::from_unix_ms(b)),
                a.cmp(&b)
            );
        }

        #[test]
        fn offsets_name_the_same_instant(
            ms in 0i64..=253_402_214_400_000,
            offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59i32),
        ) {
            // Write the instant in a local offset by hand, then read it back.
            let at = DateTime::from_unix_ms(ms);
            let offset = time::UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap();
            let local = at.as_offset_date_time().to_offset(offset);
            let sign = if offset_minutes < 0 { '-' } else { '+' };
            let text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{sign}{:02}:{:02}",
                local.year(),
                u8::from(local.month()),
                local.day(),
                local.hour(),
                local.minute(),
                local.second(),
                local.millisecond(),
                offset_minutes.abs() / 60,
                offset_minutes.abs() % 60,
            );
            prop_assert_eq!(text.parse::<DateTime>(), Ok(at), "{}", text);
        }
    }
}
