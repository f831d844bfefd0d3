//! OCMF unit tests: time format, record layout, keys, verification of
//! records from other signers (OpenSSL-made known answers), and property
//! tests (round trips, tampering, garbage).

use std::os::unix::fs::PermissionsExt;

use proptest::prelude::*;

use super::time::civil_from_days;
use super::*;

/// A P-256 key made with `openssl genpkey` (PKCS#8), its public key, and a
/// P-384 public key: a meter's signer, independent of ring.
const OPENSSL_P256_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgp/XPra/APiihqtX2
SAJrWB92CVY2EFqCeMoj7OsH/DKhRANCAATGmEhYhig+3jqfEyyReygQH40hp6EP
cco7aJo2pf5oDG+LjPYHJHXT3mfxUK7/68589AjFo4P/X5sPzrOcLErw
-----END PRIVATE KEY-----
";
const OPENSSL_P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAExphIWIYoPt46nxMskXsoEB+NIaeh
D3HKO2iaNqX+aAxvi4z2ByR1095n8VCu/+vOfPQIxaOD/1+bD86znCxK8A==
-----END PUBLIC KEY-----
";
const OPENSSL_P256_SPKI_HEX: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004c698485886283ede3a9f132c917b28101f8d21a7a10f71ca3b689a36a5fe680c6f8b8cf6072475d3de67f150aeffebce7cf408c5a383ff5f9b0fceb39c2c4af0";
const OPENSSL_P384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAELVwjMfkeyiXT7qJY9V+cr5srmS5Itc2T
xPKutj/f0BgwN6AL+8y6cpYrJxcoHIzLjRAIoPUdbivnQnTcrI/ow/wPH1GIrh9x
WX0s6uUuwvxo69f5aa71dNFIEm2zjYfT
-----END PUBLIC KEY-----
";
/// The spec's example payload (without TT and LC), compact, as signed by
/// `openssl dgst -sha256 -sign` with the keys above.
const METER_PAYLOAD: &str = r#"{"FV":"1.0","GI":"ABL SBC-301","GS":"808829900001","GV":"1.4p3","PG":"T12345","MV":"Phoenix Contact","MM":"EEM-350-D-MCB","MS":"BQ27400330016","MF":"1.0","IS":true,"IL":"VERIFIED","IF":["RFID_PLAIN","OCPP_RS_TLS"],"IT":"ISO14443","ID":"1F2D3A4F5506C7","RD":[{"TM":"2018-07-24T13:22:04,000+0200 S","TX":"B","RV":2935.6,"RI":"1-b:1.8.0","RU":"kWh","RT":"DC","EF":"","ST":"G"},{"TM":"2018-07-24T13:26:04,000+0200 S","TX":"E","RV":2965.1,"RI":"1-b:1.8.0","RU":"kWh","RT":"DC","EF":"","ST":"G"}]}"#;
const METER_P256_SD: &str = "304602210092758533b1e1ecafb181bf9ec7a530475fadc0e33dbc9d1f2d016682d2abc4af022100e1b5d6f0c3dc847de19a2264401cfedf8fbcc60a80a0b3c1987e4794bb392f59";
const METER_P384_SD: &str = "3064023074173b32466e1b62a31f6d1ae1603cf5583acd666e708c9d15c485054b36dce5a42516502fbb57f66b0d1d33740c2f8f02304d9800bbb3117de368ef64eef30c7a985d0fcda25a3e31709919067761dbe637e357e69b0da36fc08765c2a4d5f3d28c";

/// The spec's example file ("Example File"), whitespace and all.
const SPEC_EXAMPLE_PAYLOAD: &str = r#"{
    "FV": "1.0",
    "GI": "ABL SBC-301",
    "GS": "808829900001",
    "GV": "1.4p3",
    "PG": "T12345",
    "MV": "Phoenix Contact",
    "MM": "EEM-350-D-MCB",
    "MS": "BQ27400330016",
    "MF": "1.0",
    "IS": true,
    "IL": "VERIFIED",
    "IF": [
        "RFID_PLAIN",
        "OCPP_RS_TLS"
    ],
    "IT": "ISO14443",
    "ID": "1F2D3A4F5506C7",
    "TT": "Tarif 1",
    "LC": {
        "LN": "cable_name",
        "LI": 1,
        "LR": 2,
        "LU": "mOhm"
    },
    "RD": [
        {
            "TM": "2018-07-24T13:22:04,000+0200 S",
            "TX": "B",
            "RV": 2935.6,
            "RI": "1-b:1.8.0",
            "RU": "kWh",
            "RT": "DC",
            "EF": "",
            "ST": "G"
        },
        {
            "TM": "2018-07-24T13:26:04,000+0200 S",
            "TX": "E",
            "RV": 2965.1,
            "CL": 0.5,
            "RI": "1-b:1.8.0",
            "RU": "kWh",
            "RT": "DC",
            "EF": "",
            "ST": "G"
        }
    ]
}"#;

fn meter_record(signature_section: &str) -> String {
    format!("OCMF|{METER_PAYLOAD}|{signature_section}")
}

fn info(token: &str) -> TransactionInfo {
    TransactionInfo {
        gateway_serial: "EVOS-0001".into(),
        meter_vendor: "Phoenix Contact".into(),
        meter_model: "EEM-350-D-MCB".into(),
        meter_serial: "BQ27400330016".into(),
        dc: false,
        token: token.into(),
    }
}

fn point(timestamp_ms: u64, energy_wh: f64) -> Point {
    Point {
        timestamp_ms,
        energy_wh,
    }
}

/// 2018-07-24T11:22:04Z and four minutes later.
const T_BEGIN: u64 = 1_532_431_324_000;
const T_END: u64 = 1_532_431_564_000;

fn payload_of(record: &str) -> &str {
    split_record(record).unwrap().0
}

// ---------------------------------------------------------------- time

#[test]
fn time_format_known_dates() {
    let s = TimeStatus::Synchronized;
    let cases = [
        (0, "1970-01-01T00:00:00,000+0000 S"),
        (T_BEGIN, "2018-07-24T11:22:04,000+0000 S"),
        // Leap days, one in a year divisible by 400.
        (951_782_400_000, "2000-02-29T00:00:00,000+0000 S"),
        (1_709_210_096_789, "2024-02-29T12:34:56,789+0000 S"),
        // 2^31 s: the end of 32-bit time_t.
        (2_147_483_648_000, "2038-01-19T03:14:08,000+0000 S"),
        // 2100 is no leap year.
        (4_107_542_399_999, "2100-02-28T23:59:59,999+0000 S"),
        (4_107_542_400_000, "2100-03-01T00:00:00,000+0000 S"),
        (MAX_TIMESTAMP_MS, "9999-12-31T23:59:59,999+0000 S"),
    ];
    for (ms, expected) in cases {
        assert_eq!(format_time(ms, s).as_deref(), Some(expected), "{ms}");
    }
    assert_eq!(format_time(MAX_TIMESTAMP_MS + 1, s), None);
    assert_eq!(format_time(u64::MAX, s), None);
    assert_eq!(
        format_time(1, TimeStatus::Unsynchronized).as_deref(),
        Some("1970-01-01T00:00:00,001+0000 U")
    );
}

#[test]
fn time_status_letters() {
    for status in [
        TimeStatus::Unsynchronized,
        TimeStatus::Informative,
        TimeStatus::Synchronized,
        TimeStatus::Relative,
    ] {
        assert_eq!(TimeStatus::from_letter(status.letter()), Some(status));
    }
    assert_eq!(TimeStatus::from_letter('x'), None);
    assert!(matches!(
        TimeStatus::of_system_clock(),
        TimeStatus::Synchronized | TimeStatus::Unsynchronized
    ));
}

/// Date of a day count by walking years and months: slow and obvious.
fn civil_by_counting(mut days: i64) -> (i64, u32, u32) {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut year = 1970;
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 1;
    for len in lengths {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    (year, month, days as u32 + 1)
}

proptest! {
    #[test]
    fn civil_from_days_matches_counting(days in 0i64..2_932_897) {
        prop_assert_eq!(civil_from_days(days), civil_by_counting(days));
    }
}

// ------------------------------------------------------------- signing

#[test]
fn record_layout_fields_and_order() {
    let key = StationKey::ephemeral();
    let record = sign_transaction(
        &key,
        &info("04A1B2C3D4E5F6"),
        &point(T_BEGIN, 2_935_600.0),
        Some(&point(T_END, 2_965_100.4)),
    )
    .unwrap();
    let (payload, signature) = split_record(&record).unwrap();
    let letter = format_time(0, TimeStatus::of_system_clock()).unwrap();
    let letter = &letter[letter.len() - 1..];
    let expected = format!(
        concat!(
            r#"{{"FV":"1.0","GI":"evos charger-signed (not meter-signed)","GS":"EVOS-0001","GV":"{gv}","PG":"T1","#,
            r#""MV":"Phoenix Contact","MM":"EEM-350-D-MCB","MS":"BQ27400330016","#,
            r#""IS":true,"IL":"HEARSAY","IT":"ISO14443","ID":"04A1B2C3D4E5F6","RD":["#,
            r#"{{"TM":"2018-07-24T11:22:04,000+0000 {s}","TX":"B","RV":2935.600,"RI":"1-b:1.8.0","RU":"kWh","RT":"AC","ST":"G"}},"#,
            r#"{{"TM":"2018-07-24T11:26:04,000+0000 {s}","TX":"E","RV":2965.100,"RI":"1-b:1.8.0","RU":"kWh","RT":"AC","ST":"G"}}]}}"#
        ),
        gv = env!("CARGO_PKG_VERSION"),
        s = letter,
    );
    // The time status may flip between the two calls; compare without it.
    let mask = |s: &str| {
        s.replace("+0000 S", "+0000 ?")
            .replace("+0000 U", "+0000 ?")
    };
    assert_eq!(mask(payload), mask(&expected));
    assert!(record.starts_with("OCMF|{"));
    assert!(
        signature.starts_with(r#"{"SA":"ECDSA-secp256r1-SHA256","SD":"30"#),
        "{signature}"
    );
    assert!(!signature.contains("SE") && !signature.contains("SM"));

    let verified = verify(&record, &key.public_key_hex()).unwrap();
    assert!(verified.signed_by_charger);
    assert_eq!(verified.algorithm, SA_P256);
    assert_eq!(verified.payload_text, payload);
    assert_eq!(verified.payload.pagination, "T1");
    let delivered = verified.payload.energy_delivered().unwrap();
    assert_eq!(delivered.to_string(), "29.500 kWh");
}

#[test]
fn optional_fields_are_left_out_never_null() {
    let key = StationKey::ephemeral();
    let info = TransactionInfo {
        dc: true,
        ..TransactionInfo::default()
    };
    let record = sign_transaction(&key, &info, &point(0, 0.0), None).unwrap();
    let payload = payload_of(&record);
    assert!(!payload.contains("null"), "{payload}");
    for absent in [
        "\"GS\"", "\"MV\"", "\"MM\"", "\"MF\"", "\"IF\"", "\"ID\"", "\"CL\"", "\"EF\"",
    ] {
        assert!(!payload.contains(absent), "{absent} in {payload}");
    }
    assert!(
        payload.contains(r#""MS":"","IS":false,"IL":"NONE","IT":"NONE","RD":"#),
        "{payload}"
    );
    assert!(
        payload.contains(r#""RV":0.000,"RI":"1-b:1.8.0","RU":"kWh","RT":"DC""#),
        "{payload}"
    );
    let verified = verify(&record, &key.public_key_hex()).unwrap();
    assert_eq!(verified.payload.readings.len(), 1);
    assert_eq!(
        verified.payload.readings[0].transaction.as_deref(),
        Some("B")
    );
    assert_eq!(verified.payload.energy_delivered(), None);
}

#[test]
fn identification_type_follows_the_token() {
    let key = StationKey::ephemeral();
    let cases = [
        ("04A1B2C3", "ISO14443", Some("HEARSAY")),
        ("04a1b2c3d4e5f6", "ISO14443", Some("HEARSAY")),
        ("04A1B2C3D4E5F60718AB", "ISO14443", Some("HEARSAY")),
        ("04A1B2C3D4", "LOCAL", None),
        ("04A1B2CG", "LOCAL", None),
        ("user-42", "LOCAL", None),
        ("", "NONE", Some("NONE")),
    ];
    for (token, it, il) in cases {
        let record = sign_transaction(&key, &info(token), &point(0, 1.0), None).unwrap();
        let p = verify(&record, &key.public_key_hex()).unwrap().payload;
        assert_eq!(p.identification_type.as_deref(), Some(it), "{token}");
        assert_eq!(p.identification_level.as_deref(), il, "{token}");
        assert_eq!(p.identification_status, Some(!token.is_empty()), "{token}");
        assert_eq!(
            p.identification_data,
            (!token.is_empty()).then(|| token.to_owned())
        );
    }
}

#[test]
fn energy_is_kwh_with_three_decimals() {
    let key = StationKey::ephemeral();
    for (wh, rv) in [
        (0.0, "0.000"),
        (1.0, "0.001"),
        (1234.4, "1.234"),
        (1234.5, "1.235"),
        (999_999.6, "1000.000"),
        (2_935_600.0, "2935.600"),
        (8_999_999_999_999_999.0, "8999999999999.999"),
    ] {
        let record = sign_transaction(&key, &info(""), &point(0, wh), None).unwrap();
        assert!(
            payload_of(&record).contains(&format!(r#""RV":{rv},"#)),
            "{wh}: {record}"
        );
        let p = verify(&record, &key.public_key_hex()).unwrap().payload;
        assert_eq!(p.readings[0].value.as_ref().unwrap().as_str(), rv);
    }
}

#[test]
fn invalid_readings_are_refused_without_using_a_page() {
    let key = StationKey::ephemeral();
    for bad in [
        point(0, f64::NAN),
        point(0, f64::INFINITY),
        point(0, -1.0),
        point(0, 9.0e15),
        point(MAX_TIMESTAMP_MS + 1, 1.0),
    ] {
        let e = sign_transaction(&key, &info(""), &point(0, 1.0), Some(&bad)).unwrap_err();
        assert!(matches!(e, OcmfError::InvalidInput(_)), "{e}");
        assert!(e.to_string().starts_with("cannot sign: "), "{e}");
    }
    let record = sign_transaction(&key, &info(""), &point(0, 1.0), None).unwrap();
    assert!(payload_of(&record).contains(r#""PG":"T1""#));
}

#[test]
fn pipe_in_a_token_stays_out_of_the_sections() {
    let key = StationKey::ephemeral();
    let token = "a|b||c\"\\|";
    let record = sign_transaction(&key, &info(token), &point(0, 1.0), None).unwrap();
    assert_eq!(record.matches('|').count(), 2, "{record}");
    let p = verify(&record, &key.public_key_hex()).unwrap().payload;
    assert_eq!(p.identification_data.as_deref(), Some(token));
}

#[test]
fn payload_with_a_literal_pipe_from_another_signer_verifies() {
    let key = StationKey::ephemeral();
    let payload = METER_PAYLOAD.replace("ABL SBC-301", "ABL | SBC-301");
    let sd = key::hex_upper(&key.sign(payload.as_bytes()).unwrap());
    let record = format!(r#"OCMF|{payload}|{{"SD":"{sd}"}}"#);
    let verified = verify(&record, &key.public_key_pem()).unwrap();
    assert_eq!(
        verified.payload.gateway_identification.as_deref(),
        Some("ABL | SBC-301")
    );
    assert!(!verified.signed_by_charger);
}

// ---------------------------------------------------------------- keys

#[test]
fn key_file_is_created_private_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meter").join("ocmf-key.pem");
    let key = StationKey::load_or_create(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
    assert!(text.ends_with("-----END PRIVATE KEY-----\n"), "{text}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = StationKey::load_or_create(&path).unwrap();
    assert_eq!(again.public_key_hex(), key.public_key_hex());
    let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ocmf-key.pem", "ocmf-key.pem.pagination"]);
}

#[test]
fn public_key_hex_is_der_spki() {
    let key = StationKey::ephemeral();
    let hex = key.public_key_hex();
    assert_eq!(hex.len(), 182);
    assert!(
        hex.starts_with("3059301306072A8648CE3D020106082A8648CE3D03010703420004"),
        "{hex}"
    );
    assert_eq!(PublicKey::parse(&hex).unwrap(), key.public_key());
    assert_eq!(
        PublicKey::parse(&key.public_key_pem()).unwrap(),
        key.public_key()
    );
}

#[test]
fn openssl_pkcs8_key_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    std::fs::write(&path, OPENSSL_P256_PRIVATE).unwrap();
    let key = StationKey::load_or_create(&path).unwrap();
    assert_eq!(key.public_key_pem(), OPENSSL_P256_PUBLIC);
    assert_eq!(key.public_key_hex(), OPENSSL_P256_SPKI_HEX.to_uppercase());
}

#[test]
fn unusable_key_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    for (content, needle) in [
        ("garbage", "BEGIN"),
        (
            OPENSSL_P256_PUBLIC,
            "expected a PKCS#8 PEM \"PRIVATE KEY\" block",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
            "bad base64",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not a PKCS#8 ECDSA P-256 key",
        ),
    ] {
        std::fs::write(&path, content).unwrap();
        let e = StationKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("key.pem"), "{e}");
    }
}

#[test]
fn pagination_counts_up_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    let counter = dir.path().join("key.pem.pagination");
    let pg = |key: &StationKey| {
        let record = sign_transaction(key, &info(""), &point(0, 1.0), None).unwrap();
        verify(&record, &key.public_key_hex())
            .unwrap()
            .payload
            .pagination
    };
    let key = StationKey::load_or_create(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "0\n");
    assert_eq!(pg(&key), "T1");
    assert_eq!(pg(&key), "T2");
    drop(key);
    let key = StationKey::load_or_create(&path).unwrap();
    assert_eq!(pg(&key), "T3");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "3\n");

    std::fs::write(&counter, "three").unwrap();
    let e = StationKey::load_or_create(&path).unwrap_err().to_string();
    assert!(e.contains("pagination") && e.contains("\"three\""), "{e}");
}

#[test]
fn public_key_text_forms() {
    let record = meter_record(&format!(
        r#"{{"SA":"ECDSA-secp256r1-SHA256","SD":"{METER_P256_SD}"}}"#
    ));
    let spki = OPENSSL_P256_SPKI_HEX;
    let point = &spki[52..];
    let colons: String = spki
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let wrapped: String = spki
        .as_bytes()
        .chunks(32)
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for key in [
        OPENSSL_P256_PUBLIC.to_owned(),
        format!("  {OPENSSL_P256_PUBLIC}\n\n"),
        spki.to_owned(),
        spki.to_uppercase(),
        format!("0x{spki}"),
        colons,
        wrapped,
        point.to_owned(),
        point[2..].to_owned(),
    ] {
        let verified = verify(&record, &key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(!verified.signed_by_charger);
    }
}

#[test]
fn bad_public_keys_are_clear_errors() {
    let compressed = format!("02{}", &OPENSSL_P256_SPKI_HEX[54..118]);
    for (key, needle) in [
        ("", "empty"),
        ("hello", "not a hex digit"),
        ("abc", "odd number"),
        ("0102", "2 bytes"),
        (OPENSSL_P256_PRIVATE, "found \"PRIVATE KEY\""),
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA",
            "no \"-----END PUBLIC KEY-----\" line",
        ),
        (compressed.as_str(), "compressed points are not supported"),
        (
            "3059301306072a8648ce3d020106082a8648ce3d030107",
            "not an uncompressed EC key",
        ),
    ] {
        let e = verify(&meter_record(r#"{"SD":"00"}"#), key).unwrap_err();
        assert!(matches!(e, OcmfError::BadPublicKey(_)), "{key}: {e}");
        let e = e.to_string();
        assert!(
            e.starts_with("bad public key: ") && e.contains(needle),
            "{key}: {e}"
        );
    }
}

// ---------------------------------------------------------- verification

#[test]
fn meter_signed_records_verify() {
    let sections = [
        format!(r#"{{"SA":"ECDSA-secp256r1-SHA256","SD":"{METER_P256_SD}"}}"#),
        // SA, SE and SM have defaults; hex may be lower or upper case.
        format!(r#"{{"SD":"{}"}}"#, METER_P256_SD.to_uppercase()),
        format!(
            r#"{{"SA":"ECDSA-secp256r1-SHA256","SE":"hex","SM":"application/x-der","SD":"{METER_P256_SD}"}}"#
        ),
        format!(r#"{{"SE":"base64","SD":"{}"}}"#, {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode(key::hex_decode(METER_P256_SD).unwrap())
        }),
        // Whitespace in the signature section is not signed.
        format!("{{ \"SD\" : \"{METER_P256_SD}\" }}\n"),
    ];
    for section in sections {
        let verified = verify(&meter_record(&section), OPENSSL_P256_PUBLIC)
            .unwrap_or_else(|e| panic!("{section}: {e}"));
        assert_eq!(verified.algorithm, SA_P256);
        assert!(!verified.signed_by_charger);
        let p = &verified.payload;
        assert_eq!(p.gateway_identification.as_deref(), Some("ABL SBC-301"));
        assert_eq!(p.meter_vendor.as_deref(), Some("Phoenix Contact"));
        assert_eq!(p.meter_serial, "BQ27400330016");
        assert_eq!(
            p.identification_flags.as_deref(),
            Some(&["RFID_PLAIN".to_owned(), "OCPP_RS_TLS".to_owned()][..])
        );
        assert_eq!(p.readings[1].value.as_ref().unwrap().as_str(), "2965.1");
        assert_eq!(p.readings[1].error_flags.as_deref(), Some(""));
        assert_eq!(p.readings[0].time_status(), Some(TimeStatus::Synchronized));
        assert_eq!(p.energy_delivered().unwrap().to_string(), "29.5 kWh");
    }
}

#[test]
fn raw_r_s_signatures_verify() {
    // DER `30 46 02 21 00 <r> 02 21 00 <s>` to the bare r || s.
    let der = key::hex_decode(METER_P256_SD).unwrap();
    let mut fixed = der[5..37].to_vec();
    fixed.extend_from_slice(&der[40..72]);
    let record = meter_record(&format!(r#"{{"SD":"{}"}}"#, key::hex_upper(&fixed)));
    verify(&record, OPENSSL_P256_PUBLIC).unwrap();
}

#[test]
fn p384_records_verify() {
    let record = meter_record(&format!(
        r#"{{"SA":"ECDSA-secp384r1-SHA256","SD":"{METER_P384_SD}"}}"#
    ));
    let verified = verify(&record, OPENSSL_P384_PUBLIC).unwrap();
    assert_eq!(verified.algorithm, SA_P384);
    // The curve of the key must fit the algorithm.
    let e = verify(&record, OPENSSL_P256_PUBLIC)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("secp256r1 (P-256)") && e.contains(SA_P384),
        "{e}"
    );
    let e = verify(
        &meter_record(&format!(r#"{{"SD":"{METER_P256_SD}"}}"#)),
        OPENSSL_P384_PUBLIC,
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("bad public key"), "{e}");
}

#[test]
fn unsupported_signature_formats_are_refused() {
    let e = verify(
        &meter_record(&format!(
            r#"{{"SA":"ECDSA-brainpool256r1-SHA256","SD":"{METER_P256_SD}"}}"#
        )),
        OPENSSL_P256_PUBLIC,
    )
    .unwrap_err();
    assert!(
        matches!(e, OcmfError::UnsupportedAlgorithm(ref sa) if sa == "ECDSA-brainpool256r1-SHA256")
    );
    assert!(
        e.to_string()
            .contains("unsupported signature algorithm (SA) \"ECDSA-brainpool256r1-SHA256\""),
        "{e}"
    );
    for (section, needle) in [
        (
            r#"{"SE":"base85","SD":"00"}"#,
            "signature encoding (SE) \"base85\"",
        ),
        (
            r#"{"SM":"application/pkcs7","SD":"00"}"#,
            "signature MIME type (SM) \"application/pkcs7\"",
        ),
        (r#"{"SD":"0g"}"#, "bad signature data (SD)"),
        (r#"{"SE":"base64","SD":"@@"}"#, "bad base64"),
    ] {
        let e = verify(&meter_record(section), OPENSSL_P256_PUBLIC)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{section}: {e}");
    }
}

#[test]
fn wrong_key_or_changed_payload_does_not_match() {
    let key = StationKey::ephemeral();
    let other = StationKey::ephemeral();
    let record = sign_transaction(
        &key,
        &info("x"),
        &point(T_BEGIN, 5000.0),
        Some(&point(T_END, 6000.0)),
    )
    .unwrap();
    let e = verify(&record, &other.public_key_hex()).unwrap_err();
    assert!(matches!(e, OcmfError::SignatureMismatch), "{e}");
    assert!(e.to_string().starts_with("signature does not match"), "{e}");

    let tampered = record.replace(r#""RV":6.000"#, r#""RV":7.000"#);
    assert_ne!(tampered, record);
    assert!(matches!(
        verify(&tampered, &key.public_key_hex()),
        Err(OcmfError::SignatureMismatch)
    ));
    // Re-serialising would change nothing of the values, but bytes count.
    let spaced = record.replacen("{\"FV\"", "{ \"FV\"", 1);
    assert!(matches!(
        verify(&spaced, &key.public_key_hex()),
        Err(OcmfError::SignatureMismatch)
    ));
}

#[test]
fn malformed_records_are_clear_errors() {
    let good_sig = format!(r#"{{"SD":"{METER_P256_SD}"}}"#);
    let cases = [
        (String::new(), "not an OCMF record: it is empty"),
        (
            "hello".into(),
            "not an OCMF record: it does not start with \"OCMF|\"",
        ),
        ("ocmf|{}|{}".into(), "does not start with \"OCMF|\""),
        ("OCMF".into(), "does not start"),
        ("OCMF|".into(), "no \"|\" between"),
        ("OCMF|{}".into(), "no \"|\" between"),
        ("OCMF||{}".into(), "the payload section is empty"),
        ("OCMF|{}|".into(), "the signature section is empty"),
        (format!("OCMF|{{|{good_sig}"), "bad JSON in payload: "),
        (
            "OCMF|{}|{}".into(),
            "bad JSON in signature section: missing field `SD`",
        ),
        (
            format!("OCMF|{{}}|{good_sig}"),
            "bad JSON in payload: missing field `PG`",
        ),
        (format!("OCMF|[1]|{good_sig}"), "bad JSON in payload"),
        (
            format!("OCMF|{METER_PAYLOAD}|SD"),
            "bad JSON in signature section",
        ),
        (
            format!(
                "OCMF|{}|{good_sig}",
                METER_PAYLOAD.replace("\"RV\":2935.6", "\"RV\":\"2935.6\"")
            ),
            "bad JSON in payload: expected a number, found \"2935.6\"",
        ),
        (
            format!(
                "OCMF|{}|{good_sig}",
                METER_PAYLOAD.replace("\"RV\":2935.6", "\"RV\":2935.6,\"RV\":1")
            ),
            "bad JSON in payload: duplicate field `RV`",
        ),
    ];
    for (record, needle) in cases {
        let e = verify(&record, OPENSSL_P256_PUBLIC)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{record:?}: {e}");
    }
}

#[test]
fn surrounding_whitespace_is_not_part_of_the_record() {
    let record = meter_record(&format!(r#"{{"SD":"{METER_P256_SD}"}}"#));
    verify(&format!("\n  {record} \r\n"), OPENSSL_P256_PUBLIC).unwrap();
}

#[test]
fn spec_example_payload_parses() {
    let p: Payload = serde_json::from_str(SPEC_EXAMPLE_PAYLOAD).unwrap();
    assert_eq!(p.pagination, "T12345");
    assert_eq!(p.readings.len(), 2);
    assert_eq!(
        p.readings[1].cumulated_loss.as_ref().unwrap().as_str(),
        "0.5"
    );
    assert_eq!(p.energy_delivered().unwrap().to_string(), "29.5 kWh");
    // Written back in spec order, unknown fields dropped, numbers as written.
    let text = serde_json::to_string(&p).unwrap();
    assert!(
        text.starts_with(
            r#"{"FV":"1.0","GI":"ABL SBC-301","GS":"808829900001","GV":"1.4p3","PG":"T12345","#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#""RV":2965.1,"RI":"1-b:1.8.0","RU":"kWh","RT":"DC","CL":0.5,"EF":"","ST":"G""#
        ),
        "{text}"
    );
    assert!(!text.contains("TT") && !text.contains("LC"));
}

#[test]
fn readings_inherit_omitted_fields() {
    let p: Payload = serde_json::from_str(
        r#"{"PG":"T1","MS":"1","RD":[
            {"TM":"2018-07-24T13:22:04,000+0200 S","TX":"B","RV":10.10,"RI":"1-b:1.8.0","RU":"kWh","ST":"G"},
            {"TM":"2018-07-24T13:24:04,000+0200 S","TX":"C","RV":11},
            {"TM":"2018-07-24T13:26:04,000+0200 S","RV":12.5},
            {"TM":"2018-07-24T13:28:04,000+0200 S","TX":"L","RV":13.255}]}"#,
    )
    .unwrap();
    let r = p.resolved_readings();
    assert_eq!(r[2].transaction.as_deref(), Some("C"));
    assert_eq!(r[3].unit.as_deref(), Some("kWh"));
    assert_eq!(r[3].identification.as_deref(), Some("1-b:1.8.0"));
    assert_eq!(r[3].status.as_deref(), Some("G"));
    let delivered = p.energy_delivered().unwrap();
    assert_eq!(delivered.decimals, 3);
    assert_eq!(delivered.to_string(), "3.155 kWh");
}

#[test]
fn number_decimals() {
    for (text, decimals) in [
        ("1", 0),
        ("1.50", 2),
        ("-0.125", 3),
        ("1.5e2", 0),
        ("15e-3", 3),
        ("1.25E-1", 3),
    ] {
        let n: Number = serde_json::from_str(text).unwrap();
        assert_eq!(n.decimals(), decimals, "{text}");
        assert_eq!(n.to_string(), text);
    }
    for bad in ["\"1\"", "true", "null", "[1]", "{}", "1e400"] {
        assert!(serde_json::from_str::<Number>(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------- properties

fn any_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect()),
        "[0-9A-F]{8}|[0-9a-f]{14}|[0-9A-F]{20}",
        "[ -~]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sign_then_verify_round_trips(
        token in any_token(),
        begin_ms in 0..=MAX_TIMESTAMP_MS,
        begin_wh in 0.0f64..9.0e12,
        end in proptest::option::of((0u64..1 << 40, 0.0f64..1.0e9)),
        dc in any::<bool>(),
    ) {
        let key = StationKey::ephemeral();
        let info = TransactionInfo { dc, token: token.clone(), ..info("") };
        let begin = point(begin_ms, begin_wh);
        let end = end.map(|(dt, dwh)| point((begin_ms + dt).min(MAX_TIMESTAMP_MS), begin_wh + dwh));
        let record = sign_transaction(&key, &info, &begin, end.as_ref()).unwrap();
        prop_assert_eq!(record.matches('|').count(), 2);
        let verified = verify(&record, &key.public_key_hex()).unwrap();
        prop_assert!(verified.signed_by_charger);
        let wrong = StationKey::ephemeral().public_key_hex();
        prop_assert!(matches!(verify(&record, &wrong), Err(OcmfError::SignatureMismatch)));
        let p = &verified.payload;
        prop_assert_eq!(p.identification_status, Some(!token.is_empty()));
        prop_assert_eq!(p.identification_data.clone().unwrap_or_default(), token);
        prop_assert_eq!(p.readings.len(), 1 + usize::from(end.is_some()));
        for (reading, point) in p.readings.iter().zip(std::iter::once(&begin).chain(end.as_ref())) {
            let wh = point.energy_wh.round() as u64;
            prop_assert_eq!(reading.value.as_ref().unwrap().as_str(), format!("{}.{:03}", wh / 1000, wh % 1000));
            let tm = format_time(point.timestamp_ms, TimeStatus::Synchronized).unwrap();
            prop_assert_eq!(&reading.time.as_ref().unwrap()[..28], &tm[..28]);
            prop_assert_eq!(reading.current_type.as_deref(), Some(if dc { "DC" } else { "AC" }));
        }
        if let Some(end) = end {
            let delivered = p.energy_delivered().unwrap();
            let expected = (end.energy_wh.round() - begin.energy_wh.round()) / 1000.0;
            prop_assert!((delivered.value - expected).abs() < 1e-3, "{} vs {}", delivered.value, expected);
        }
    }

    #[test]
    fn any_single_byte_change_of_the_payload_fails(
        token in "[ -~]{0,20}",
        index in any::<prop::sample::Index>(),
        replacement in 0x20u8..0x7f,
    ) {
        let key = StationKey::ephemeral();
        let record = sign_transaction(&key, &info(&token), &point(T_BEGIN, 1234.0), Some(&point(T_END, 5678.0))).unwrap();
        let payload_len = payload_of(&record).len();
        let at = "OCMF|".len() + index.index(payload_len);
        let mut bytes = record.clone().into_bytes();
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(verify(&tampered, &key.public_key_hex()).is_err(), "{}", tampered);
    }

    #[test]
    fn garbage_never_panics(text in any::<String>(), key_text in any::<String>()) {
        let key = StationKey::ephemeral().public_key_hex();
        let _ = verify(&text, &key);
        let _ = verify(&format!("OCMF|{text}"), &key);
        let _ = verify(&format!("OCMF|{text}|{text}"), &key);
        let _ = verify(&meter_record(&text), OPENSSL_P256_PUBLIC);
        let _ = verify(&meter_record(&format!(r#"{{"SD":"{METER_P256_SD}"}}"#)), &key_text);
        let _ = PublicKey::parse(&key_text);
        let _ = serde_json::from_str::<Payload>(&text);
    }

    #[test]
    fn mutated_records_never_panic_nor_pass_altered(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..6),
    ) {
        let key = StationKey::ephemeral();
        let record = sign_transaction(&key, &info("04A1B2C3"), &point(T_BEGIN, 1.0), Some(&point(T_END, 2.0))).unwrap();
        let mut chars: Vec<char> = record.chars().collect();
        for (index, c, op) in edits {
            match op {
                0 if !chars.is_empty() => { chars.remove(index.index(chars.len())); }
                1 => chars.insert(index.index(chars.len() + 1), c),
                _ if !chars.is_empty() => { let i = index.index(chars.len()); chars[i] = c; }
                _ => {}
            }
        }
        let mutated: String = chars.into_iter().collect();
        if let Ok(verified) = verify(&mutated, &key.public_key_hex()) {
            // Only the unsigned parts may differ (outer whitespace, the
            // signature section's layout or hex case).
            prop_assert_eq!(verified.payload_text.as_str(), payload_of(&record));
        }
    }
}
