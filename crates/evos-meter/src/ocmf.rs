//! OCMF (Open Charge Metering Format, S.A.F.E. e.V.) signed meter values:
//! signing transaction readings with the station key, and checking records
//! from any signer (the station, or meters that sign themselves).
//!
//! Spec: <https://github.com/SAFE-eV/OCMF-Open-Charge-Metering-Format>,
//! `OCMF-en.md`; evos writes format version 1.0 (`FV`), which later 1.x
//! versions only extend. Sections of the spec used here:
//!
//! - "Sections": a record is `OCMF|<payload data section>|<signature section>`,
//!   both sections JSON; "Signing and Verification Process": the signature
//!   covers the payload section's bytes exactly as transmitted, so [`verify`]
//!   splits the record (on the *last* `|`) and never re-serialises.
//! - "Payload Data Section": "General Information" (table 1: `FV GI GS GV`),
//!   "Pagination" (table 2: `PG`), "Meter Identification" (table 3:
//!   `MV MM MS MF`), "User Assignment" (table 4: `IS IL IF IT ID`, with
//!   table 11 for `IL` and table 17 for `IT`), "Readings" (table 7:
//!   `TM TX RV RI RU RT CL EF ST`, tables 10, 19, 20, 21). [`Payload`]
//!   serialises its fields in that order and omits absent ones (never `null`).
//! - "Signature Section" (table 8: `SA SE SM SD`) and "Cryptography"
//!   (table 22): evos signs `ECDSA-secp256r1-SHA256`, `SD` hex of the DER
//!   signature (the `SE` "hex" and `SM` "application/x-der" defaults, so both
//!   are left out). [`verify`] also takes `SA` absent (the default since 0.4),
//!   `ECDSA-secp384r1-SHA256`, `SE` "base64", and raw `r || s` signatures
//!   for P-256; every other algorithm is refused with a clear error.
//!
//! # Charger-signed, not meter-signed
//!
//! With meters that do not sign, the *charger* signs the readings it took
//! from the meter, with its own station key. Such a record proves which
//! charger reported the values, not that a calibrated meter measured them.
//! The record says so in the signed payload: the gateway identification
//! `GI` (the spec's "signature-generating component", table 1) is
//! [`CHARGER_SIGNED_GI`], `"evos charger-signed (not meter-signed)"`, while
//! `MV MM MS` still describe the physical meter. [`Verified::signed_by_charger`]
//! reads it back, and `evos ocmf verify` prints it. (The spec sets no length
//! for `GI`, only for `TT` and `LN`; this one has 38 characters.)
//!
//! # Choices in the records evos writes
//!
//! - `PG`: `T<n>`, one counter per station key, persisted beside the key
//!   (see [`StationKey`]); every record takes the next number.
//! - `IS` true for a non-empty token; `IT` `ISO14443` for a 4, 7 or 10-byte
//!   hex UID (with `IL` `HEARSAY`, table 11's example for a read RFID UID),
//!   `LOCAL` for other tokens (no `IL`: evos does not know how it was
//!   authorised), `NONE` (and `IL` `NONE`, no `ID`) without a token;
//!   `ID` the token as given. A `|` inside a string is written `\u007c`
//!   (same JSON value), since the spec allows no `|` inside a section.
//! - `RD`: the begin reading (`TX` `B`) and, for the end record, the end
//!   reading (`TX` `E`), each complete: `RV` in kWh with three decimals (the
//!   meter's Wh resolution, e.g. `2935.600`), `RI` `1-b:1.8.0` (import
//!   energy register), `RU` `kWh`, `RT` `AC`/`DC`, `ST` `G`.
//! - `TM`: UTC (`+0000`) with the status `S` when the kernel reports the
//!   clock synchronized at signing time, else `U` (one status for all the
//!   readings of a record: a [`Point`] carries none).

mod key;
#[cfg(test)]
mod tests;
mod time;

use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

pub use key::{Curve, PublicKey, StationKey};
pub use time::{MAX_TIMESTAMP_MS, TimeStatus, format_time};

/// `FV` of the records evos writes.
pub const FORMAT_VERSION: &str = "1.0";
/// `GI` of records signed with the station key (see the module docs).
pub const CHARGER_SIGNED_GI: &str = "evos charger-signed (not meter-signed)";
/// `RI`: OBIS code of the active energy import register.
pub const OBIS_ENERGY_IMPORT: &str = "1-b:1.8.0";
/// `SA` evos signs with (and the default when `SA` is absent).
pub const SA_P256: &str = "ECDSA-secp256r1-SHA256";
/// `SA` evos also checks.
pub const SA_P384: &str = "ECDSA-secp384r1-SHA256";

#[derive(Debug, thiserror::Error)]
pub enum OcmfError {
    #[error("not an OCMF record: {0}")]
    NotOcmf(String),
    #[error("bad JSON in payload: {0}")]
    PayloadJson(serde_json::Error),
    #[error("bad JSON in signature section: {0}")]
    SignatureJson(serde_json::Error),
    #[error(
        "unsupported signature algorithm (SA) \"{0}\": evos checks ECDSA-secp256r1-SHA256 and ECDSA-secp384r1-SHA256"
    )]
    UnsupportedAlgorithm(String),
    #[error("unsupported signature format: {0}")]
    UnsupportedSignatureFormat(String),
    #[error("bad signature data (SD): {0}")]
    BadSignatureData(String),
    #[error("bad public key: {0}")]
    BadPublicKey(String),
    #[error("signature does not match: the payload was altered or signed with another key")]
    SignatureMismatch,
    #[error("cannot sign: {0}")]
    InvalidInput(String),
    #[error("station key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("signing failed")]
    Crypto,
}

/// What a transaction record says besides the readings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransactionInfo {
    /// `GS`: the station's serial (left out when empty).
    pub gateway_serial: String,
    /// `MV`, `MM`, `MS`: the physical meter (vendor and model left out when empty).
    pub meter_vendor: String,
    pub meter_model: String,
    pub meter_serial: String,
    /// `RT`: `DC` or `AC`.
    pub dc: bool,
    /// `ID`: the authorisation token, empty for none.
    pub token: String,
}

/// One reading of the energy import register.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: u64,
    pub energy_wh: f64,
}

/// The payload data section, fields in the spec's order. Absent optional
/// fields are left out when written. Parsing takes records of other
/// signers too: fields evos does not use are ignored, and fields a reading
/// may inherit from the previous one are optional (see
/// [`Payload::resolved_readings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(rename = "FV", skip_serializing_if = "Option::is_none")]
    pub format_version: Option<String>,
    #[serde(rename = "GI", skip_serializing_if = "Option::is_none")]
    pub gateway_identification: Option<String>,
    #[serde(rename = "GS", skip_serializing_if = "Option::is_none")]
    pub gateway_serial: Option<String>,
    #[serde(rename = "GV", skip_serializing_if = "Option::is_none")]
    pub gateway_version: Option<String>,
    #[serde(rename = "PG")]
    pub pagination: String,
    #[serde(rename = "MV", skip_serializing_if = "Option::is_none")]
    pub meter_vendor: Option<String>,
    #[serde(rename = "MM", skip_serializing_if = "Option::is_none")]
    pub meter_model: Option<String>,
    #[serde(rename = "MS")]
    pub meter_serial: String,
    #[serde(rename = "MF", skip_serializing_if = "Option::is_none")]
    pub meter_firmware: Option<String>,
    /// Absent only in records without a transaction (fiscal metering).
    #[serde(rename = "IS", skip_serializing_if = "Option::is_none")]
    pub identification_status: Option<bool>,
    #[serde(rename = "IL", skip_serializing_if = "Option::is_none")]
    pub identification_level: Option<String>,
    #[serde(rename = "IF", skip_serializing_if = "Option::is_none")]
    pub identification_flags: Option<Vec<String>>,
    #[serde(rename = "IT", skip_serializing_if = "Option::is_none")]
    pub identification_type: Option<String>,
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    pub identification_data: Option<String>,
    #[serde(rename = "RD")]
    pub readings: Vec<Reading>,
}

/// One reading (table 7).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reading {
    /// `TM`: e.g. `2018-07-24T13:22:04,000+0200 S`.
    #[serde(rename = "TM", skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `TX`: B(egin), C(harging), X (exception), E(nd), L, R, A, P, S, T.
    #[serde(rename = "TX", skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    #[serde(rename = "RV", skip_serializing_if = "Option::is_none")]
    pub value: Option<Number>,
    /// `RI`: OBIS code.
    #[serde(rename = "RI", skip_serializing_if = "Option::is_none")]
    pub identification: Option<String>,
    #[serde(rename = "RU", skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(rename = "RT", skip_serializing_if = "Option::is_none")]
    pub current_type: Option<String>,
    /// `CL`: cumulated loss (OCMF 1.2).
    #[serde(rename = "CL", skip_serializing_if = "Option::is_none")]
    pub cumulated_loss: Option<Number>,
    #[serde(rename = "EF", skip_serializing_if = "Option::is_none")]
    pub error_flags: Option<String>,
    /// `ST`: meter status, `G` good (table 10).
    #[serde(rename = "ST", skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Reading {
    /// The time status letter at the end of `TM`.
    pub fn time_status(&self) -> Option<TimeStatus> {
        let tm = self.time.as_deref()?;
        let (_, letter) = tm.rsplit_once(' ')?;
        let mut chars = letter.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => TimeStatus::from_letter(c),
            _ => None,
        }
    }
}

/// A JSON number kept exactly as written: OCMF gives the representation of
/// `RV` meaning (its decimals mark the resolution), and it must not be
/// rewritten.
#[derive(Debug, Clone)]
pub struct Number(Box<RawValue>);

impl Number {
    /// The number's text, e.g. `2935.600`.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn as_f64(&self) -> f64 {
        self.as_str().parse().unwrap_or(f64::NAN)
    }

    /// Digits after the decimal point as written.
    pub fn decimals(&self) -> usize {
        let text = self.as_str();
        let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
        let written = mantissa.split_once('.').map_or(0, |(_, d)| d.len()) as i64;
        let exponent: i64 = text
            .split_once(['e', 'E'])
            .and_then(|(_, e)| e.parse().ok())
            .unwrap_or(0);
        (written - exponent).clamp(0, 12) as usize
    }

    /// kWh with three decimals from Wh, rounded to the Wh.
    fn kwh_from_wh(wh: f64) -> Result<Number, OcmfError> {
        // Whole Wh stay exact in an f64 up to 2^53.
        if !wh.is_finite() || !(0.0..9.0e15).contains(&wh) {
            return Err(OcmfError::InvalidInput(format!(
                "energy {wh} Wh is not a register reading (finite, not negative)"
            )));
        }
        let wh = wh.round() as u64;
        let text = format!("{}.{:03}", wh / 1000, wh % 1000);
        RawValue::from_string(text)
            .map(Number)
            .map_err(|e| OcmfError::InvalidInput(e.to_string()))
    }
}

impl PartialEq for Number {
    fn eq(&self, other: &Number) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Number, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit())
            && text.parse::<f64>().is_ok_and(f64::is_finite);
        if !is_number {
            return Err(D::Error::custom(format!("expected a number, found {text}")));
        }
        Ok(Number(raw))
    }
}

/// Energy between a begin and an end reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub value: f64,
    pub unit: String,
    /// Decimals to show: the most the two readings were written with.
    pub decimals: usize,
}

impl std::fmt::Display for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.*} {}", self.decimals, self.value, self.unit)
    }
}

/// `TX` values that end a transaction.
const END_CODES: [&str; 5] = ["E", "L", "R", "A", "P"];

impl Payload {
    /// The readings with omitted fields filled in from the previous reading
    /// (spec "Readings": within a record, fields identical to the previous
    /// reading may be left out).
    pub fn resolved_readings(&self) -> Vec<Reading> {
        let mut resolved: Vec<Reading> = Vec::with_capacity(self.readings.len());
        for reading in &self.readings {
            let mut r = reading.clone();
            if let Some(prev) = resolved.last() {
                let inherit = |field: &mut Option<String>, from: &Option<String>| {
                    if field.is_none() {
                        field.clone_from(from);
                    }
                };
                inherit(&mut r.time, &prev.time);
                inherit(&mut r.transaction, &prev.transaction);
                inherit(&mut r.identification, &prev.identification);
                inherit(&mut r.unit, &prev.unit);
                inherit(&mut r.current_type, &prev.current_type);
                inherit(&mut r.error_flags, &prev.error_flags);
                inherit(&mut r.status, &prev.status);
                if r.value.is_none() {
                    r.value.clone_from(&prev.value);
                }
            }
            resolved.push(r);
        }
        resolved
    }

    /// For a record holding a begin (`TX` `B`) and an end reading (`E`, or
    /// the finer `L R A P`) of the same register and unit: end minus begin.
    pub fn energy_delivered(&self) -> Option<Delivered> {
        let readings = self.resolved_readings();
        let begin = readings
            .iter()
            .find(|r| r.transaction.as_deref() == Some("B"))?;
        let end = readings.iter().rev().find(|r| {
            r.transaction
                .as_deref()
                .is_some_and(|tx| END_CODES.contains(&tx))
        })?;
        if begin.unit != end.unit || begin.identification != end.identification {
            return None;
        }
        let unit = begin.unit.clone()?;
        let (b, e) = (begin.value.as_ref()?, end.value.as_ref()?);
        Some(Delivered {
            value: e.as_f64() - b.as_f64(),
            unit,
            decimals: b.decimals().max(e.decimals()),
        })
    }
}

/// A record whose signature checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub payload: Payload,
    /// The payload section exactly as signed.
    pub payload_text: String,
    /// Signed with an evos station key, not by a calibrated meter: the
    /// payload's `GI` starts with `evos` and says `charger-signed`
    /// ([`CHARGER_SIGNED_GI`]). Covered by the signature, so only the
    /// key holder can set it.
    pub signed_by_charger: bool,
    /// The `SA` the signature was checked with.
    pub algorithm: &'static str,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignatureSection {
    #[serde(rename = "SA", skip_serializing_if = "Option::is_none")]
    algorithm: Option<String>,
    #[serde(rename = "SE", skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
    #[serde(rename = "SM", skip_serializing_if = "Option::is_none")]
    mime_type: Option<String>,
    #[serde(rename = "SD")]
    data: String,
}

/// `IT` and `IL` for a token.
fn identification(token: &str) -> (&'static str, Option<&'static str>) {
    if token.is_empty() {
        ("NONE", Some("NONE"))
    } else if matches!(token.len(), 8 | 14 | 20) && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        ("ISO14443", Some("HEARSAY"))
    } else {
        ("LOCAL", None)
    }
}

fn reading(point: &Point, tx: &str, dc: bool, status: TimeStatus) -> Result<Reading, OcmfError> {
    let time = format_time(point.timestamp_ms, status).ok_or_else(|| {
        OcmfError::InvalidInput(format!(
            "timestamp {} ms is past 9999-12-31",
            point.timestamp_ms
        ))
    })?;
    Ok(Reading {
        time: Some(time),
        transaction: Some(tx.into()),
        value: Some(Number::kwh_from_wh(point.energy_wh)?),
        identification: Some(OBIS_ENERGY_IMPORT.into()),
        unit: Some("kWh".into()),
        current_type: Some(if dc { "DC" } else { "AC" }.into()),
        cumulated_loss: None,
        error_flags: None,
        status: Some("G".into()),
    })
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// `OCMF|{payload}|{signature}` for a transaction, signed with the station
/// key: `RD` holds the begin reading (`TX` `B`) and, when `end` is given,
/// the end reading (`TX` `E`). Each call takes the next pagination number.
pub fn sign_transaction(
    key: &StationKey,
    info: &TransactionInfo,
    begin: &Point,
    end: Option<&Point>,
) -> Result<String, OcmfError> {
    let status = TimeStatus::of_system_clock();
    let mut readings = vec![reading(begin, "B", info.dc, status)?];
    if let Some(end) = end {
        readings.push(reading(end, "E", info.dc, status)?);
    }
    let (it, il) = identification(&info.token);
    let payload = Payload {
        format_version: Some(FORMAT_VERSION.into()),
        gateway_identification: Some(CHARGER_SIGNED_GI.into()),
        gateway_serial: non_empty(&info.gateway_serial),
        gateway_version: Some(env!("CARGO_PKG_VERSION").into()),
        pagination: format!("T{}", key.next_pagination()?),
        meter_vendor: non_empty(&info.meter_vendor),
        meter_model: non_empty(&info.meter_model),
        meter_serial: info.meter_serial.clone(),
        meter_firmware: None,
        identification_status: Some(!info.token.is_empty()),
        identification_level: il.map(Into::into),
        identification_flags: None,
        identification_type: Some(it.into()),
        identification_data: non_empty(&info.token),
        readings,
    };
    // `|` separates the sections; outside strings JSON has none, inside
    // them `\u007c` is the same character.
    let payload_text = serde_json::to_string(&payload)
        .map_err(OcmfError::PayloadJson)?
        .replace('|', "\\u007c");
    let signature = SignatureSection {
        algorithm: Some(SA_P256.into()),
        encoding: None,
        mime_type: None,
        data: key::hex_upper(&key.sign(payload_text.as_bytes())?),
    };
    let signature_text = serde_json::to_string(&signature).map_err(OcmfError::SignatureJson)?;
    Ok(format!("OCMF|{payload_text}|{signature_text}"))
}

/// The payload and signature sections of a record, as written: the header
/// must be `OCMF`, and the signature section follows the last `|` (a
/// payload may hold `|` inside strings).
pub fn split_record(record: &str) -> Result<(&str, &str), OcmfError> {
    let record = record.trim();
    let rest = record.strip_prefix("OCMF|").ok_or_else(|| {
        OcmfError::NotOcmf(if record.is_empty() {
            "it is empty".into()
        } else {
            "it does not start with \"OCMF|\"".into()
        })
    })?;
    let (payload, signature) = rest.rsplit_once('|').ok_or_else(|| {
        OcmfError::NotOcmf("no \"|\" between the payload and the signature section".into())
    })?;
    if payload.trim().is_empty() {
        return Err(OcmfError::NotOcmf("the payload section is empty".into()));
    }
    if signature.trim().is_empty() {
        return Err(OcmfError::NotOcmf("the signature section is empty".into()));
    }
    Ok((payload, signature))
}

/// Check a record against a public key given as text: hex of the DER
/// SubjectPublicKeyInfo, a PEM `PUBLIC KEY` block, or hex of the raw
/// 65-byte uncompressed point. Who produced the record does not matter.
pub fn verify(record: &str, public_key: &str) -> Result<Verified, OcmfError> {
    verify_with_key(record, &PublicKey::parse(public_key)?)
}

/// [`verify`] with a parsed key.
pub fn verify_with_key(record: &str, key: &PublicKey) -> Result<Verified, OcmfError> {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA256_ASN1, UnparsedPublicKey,
    };

    let (payload_text, signature_text) = split_record(record)?;
    let section: SignatureSection =
        serde_json::from_str(signature_text).map_err(OcmfError::SignatureJson)?;
    let (algorithm, curve) = match section.algorithm.as_deref() {
        None | Some(SA_P256) => (SA_P256, Curve::P256),
        Some(SA_P384) => (SA_P384, Curve::P384),
        Some(other) => return Err(OcmfError::UnsupportedAlgorithm(other.into())),
    };
    let signature = match section.encoding.as_deref() {
        None | Some("hex") => {
            key::hex_decode(&section.data).map_err(OcmfError::BadSignatureData)?
        }
        Some("base64") => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(section.data.trim())
                .map_err(|e| OcmfError::BadSignatureData(format!("bad base64: {e}")))?
        }
        Some(other) => {
            return Err(OcmfError::UnsupportedSignatureFormat(format!(
                "signature encoding (SE) \"{other}\" (known: hex, base64)"
            )));
        }
    };
    if let Some(mime) = section.mime_type.as_deref()
        && mime != "application/x-der"
    {
        return Err(OcmfError::UnsupportedSignatureFormat(format!(
            "signature MIME type (SM) \"{mime}\" (known: application/x-der)"
        )));
    }
    if key.curve != curve {
        return Err(OcmfError::BadPublicKey(format!(
            "the key is on {} but the record is signed with {algorithm}",
            key.curve.name()
        )));
    }
    let payload: Payload = serde_json::from_str(payload_text).map_err(OcmfError::PayloadJson)?;

    let message = payload_text.as_bytes();
    let der = match curve {
        Curve::P256 => &ECDSA_P256_SHA256_ASN1,
        Curve::P384 => &ECDSA_P384_SHA256_ASN1,
    };
    let mut valid = UnparsedPublicKey::new(der, &key.point)
        .verify(message, &signature)
        .is_ok();
    // Some meters write the bare r || s instead of DER.
    if !valid && curve == Curve::P256 && signature.len() == 64 {
        valid = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.point)
            .verify(message, &signature)
            .is_ok();
    }
    if !valid {
        return Err(OcmfError::SignatureMismatch);
    }
    let signed_by_charger = payload
        .gateway_identification
        .as_deref()
        .is_some_and(|gi| gi.starts_with("evos") && gi.contains("charger-signed"));
    Ok(Verified {
        payload,
        payload_text: payload_text.to_owned(),
        signed_by_charger,
        algorithm,
    })
}
