//! `evos ocmf verify` as a user runs it: records made with
//! `evos_meter::ocmf`, keys and records in files or on the command line;
//! valid records exit 0 and are described, anything else exits 1 with one
//! clear line on stderr and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use evos_meter::ocmf::{self, Point, StationKey, TransactionInfo};

struct Fixture {
    dir: tempfile::TempDir,
    key: StationKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = StationKey::load_or_create(&dir.path().join("ocmf-key.pem")).unwrap();
        Fixture { dir, key }
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// 2935.600 kWh at 2018-07-24T11:22:04Z to 2965.100 kWh four minutes later.
    fn record(&self, end: bool) -> String {
        let info = TransactionInfo {
            gateway_serial: "EVOS-0001".into(),
            meter_vendor: "Phoenix Contact".into(),
            meter_model: "EEM-350-D-MCB".into(),
            meter_serial: "BQ27400330016".into(),
            dc: false,
            token: "04A1B2C3D4E5F6".into(),
        };
        let begin = Point {
            timestamp_ms: 1_532_431_324_000,
            energy_wh: 2_935_600.0,
        };
        let stop = Point {
            timestamp_ms: 1_532_431_564_000,
            energy_wh: 2_965_100.0,
        };
        ocmf::sign_transaction(&self.key, &info, &begin, end.then_some(&stop)).unwrap()
    }
}

fn evos_ocmf_verify(
    record: impl AsRef<std::ffi::OsStr>,
    key: impl AsRef<std::ffi::OsStr>,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evos"));
    cmd.arg("ocmf")
        .arg("verify")
        .arg(record)
        .arg("--pubkey")
        .arg(key)
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (status.code().expect("exited, not killed"), stdout, stderr)
}

fn passes(cmd: &mut Command) -> String {
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn fails_with(cmd: &mut Command, needle: &str) -> String {
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(
        code, 1,
        "must fail with 1: stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr should mention `{needle}`:\n{stderr}"
    );
    stdout
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn valid_record_verifies_and_is_described() {
    let f = Fixture::new();
    let record = f.record(true);
    let record_file = f.file("record.txt", &format!("\n{record}\n\n"));
    let hex_file = f.file("key.hex", &format!("{}\n", f.key.public_key_hex()));
    let pem_file = f.file("key.pub.pem", &f.key.public_key_pem());
    let by_file = passes(&mut evos_ocmf_verify(&record_file, &hex_file));
    for needle in [
        "OCMF record: signature valid (ECDSA-secp256r1-SHA256)",
        "the charger's station key",
        "NOT a calibrated meter's signature",
        "vendor Phoenix Contact, model EEM-350-D-MCB, serial BQ27400330016",
        "serial EVOS-0001",
        "pagination      T1",
        "assigned, type ISO14443, id 04A1B2C3D4E5F6",
        "2018-07-24T11:22:04,000+0000",
        "B begin",
        "2935.600 kWh",
        "2018-07-24T11:26:04,000+0000",
        "E end",
        "2965.100 kWh",
        "29.500 kWh delivered",
    ] {
        assert!(by_file.contains(needle), "`{needle}` missing:\n{by_file}");
    }
    // The record and the key on the command line, or the key as PEM: the same.
    let literal = passes(&mut evos_ocmf_verify(&record, f.key.public_key_hex()));
    assert_eq!(literal, by_file);
    assert_eq!(
        passes(&mut evos_ocmf_verify(&record_file, &pem_file)),
        by_file
    );
}

#[test]
fn every_record_of_a_file_is_checked() {
    let f = Fixture::new();
    let records = format!("{}\n\n{}\n", f.record(false), f.record(true));
    let out = passes(&mut evos_ocmf_verify(
        f.file("records.txt", &records),
        f.key.public_key_hex(),
    ));
    assert!(out.contains("OCMF record 1 of 2: signature valid"), "{out}");
    assert!(out.contains("OCMF record 2 of 2: signature valid"), "{out}");
    assert_eq!(out.matches("delivered").count(), 1, "{out}");
    assert!(
        out.contains("pagination      T1") && out.contains("pagination      T2"),
        "{out}"
    );
}

#[test]
fn tampered_record_fails() {
    let f = Fixture::new();
    let record = f.record(true);
    // One digit of the end reading's RV.
    let tampered = record.replacen(r#""RV":2965.100"#, r#""RV":2965.900"#, 1);
    assert_ne!(tampered, record);
    let key = f.key.public_key_hex();
    let stdout = fails_with(
        &mut evos_ocmf_verify(&tampered, &key),
        "evos ocmf: signature does not match",
    );
    assert!(stdout.contains("signature INVALID"), "{stdout}");

    // One bad record among good ones fails the whole check, and says which.
    let file = f.file("records.txt", &format!("{record}\n{tampered}\n{record}\n"));
    let stdout = fails_with(
        &mut evos_ocmf_verify(&file, &key),
        "record 2: signature does not match",
    );
    assert!(
        stdout.contains("OCMF record 1 of 3: signature valid"),
        "{stdout}"
    );
    assert!(
        stdout.contains("OCMF record 3 of 3: signature valid"),
        "{stdout}"
    );
    fails_with(
        &mut evos_ocmf_verify(&file, &key),
        "1 of 3 records failed verification",
    );
}

#[test]
fn wrong_public_key_fails() {
    let f = Fixture::new();
    let other = Fixture::new();
    let record_file = f.file("record.txt", &f.record(true));
    fails_with(
        &mut evos_ocmf_verify(&record_file, other.key.public_key_hex()),
        "signature does not match",
    );
    let other_pem = f.file("other.pem", &other.key.public_key_pem());
    fails_with(
        &mut evos_ocmf_verify(&record_file, &other_pem),
        "signature does not match",
    );
}

#[test]
fn malformed_input_is_a_clear_error() {
    let f = Fixture::new();
    let key = f.key.public_key_hex();
    let record = f.record(true);
    let record_file = f.file("record.txt", &record);
    let cases: Vec<(Command, &str)> = vec![
        (
            evos_ocmf_verify("hello", &key),
            "\"hello\" is neither a file nor an OCMF record",
        ),
        (
            evos_ocmf_verify("OCMF|{\"PG\":|{\"SD\":\"00\"}", &key),
            "bad JSON in payload",
        ),
        (
            evos_ocmf_verify("OCMX|{}|{}", &key),
            "not an OCMF record: it does not start with \"OCMF|\"",
        ),
        (
            evos_ocmf_verify(f.file("garbage.txt", "garbage {\n"), &key),
            "not an OCMF record",
        ),
        (
            evos_ocmf_verify(f.file("empty.txt", "\n \n"), &key),
            "holds no OCMF record",
        ),
        (
            evos_ocmf_verify(
                record.replace("ECDSA-secp256r1-SHA256", "ECDSA-brainpool256r1-SHA256"),
                &key,
            ),
            "unsupported signature algorithm (SA) \"ECDSA-brainpool256r1-SHA256\"",
        ),
        (
            evos_ocmf_verify(&record_file, "not-a-key"),
            "bad public key",
        ),
        (
            evos_ocmf_verify(&record_file, "/nonexistent/key.pem"),
            "no file /nonexistent/key.pem",
        ),
        (
            evos_ocmf_verify(
                &record_file,
                f.file(
                    "private.pem",
                    &std::fs::read_to_string(f.dir.path().join("ocmf-key.pem")).unwrap(),
                ),
            ),
            "found \"PRIVATE KEY\"",
        ),
        (
            evos_ocmf_verify(&record_file, "04ab"),
            "bad public key: 2 bytes",
        ),
    ];
    for (mut cmd, needle) in cases {
        fails_with(&mut cmd, needle);
    }
    // A missing subcommand or flag is clap's usage error, not a panic.
    let (code, _, stderr) = run(Command::new(env!("CARGO_BIN_EXE_evos"))
        .args(["ocmf", "verify", path(&record_file)])
        .stdin(Stdio::null()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--pubkey"), "{stderr}");
}

#[test]
fn json_output() {
    let f = Fixture::new();
    let record = f.record(true);
    let tampered = record.replacen(r#""RV":2935.600"#, r#""RV":2935.601"#, 1);
    let file = f.file("records.txt", &format!("{record}\n{tampered}\n"));
    let mut cmd = evos_ocmf_verify(&file, f.key.public_key_hex());
    cmd.arg("--json");
    let stdout = fails_with(&mut cmd, "record 2: signature does not match");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let good = &report[0];
    assert_eq!(good["valid"], true);
    assert_eq!(good["signed_by_charger"], true);
    assert_eq!(good["algorithm"], "ECDSA-secp256r1-SHA256");
    assert_eq!(good["payload"]["MS"], "BQ27400330016");
    assert_eq!(good["payload"]["RD"][1]["TX"], "E");
    assert_eq!(good["energy_delivered"]["value"], "29.500");
    assert_eq!(good["energy_delivered"]["unit"], "kWh");
    let signed = ocmf::split_record(&record).unwrap().0;
    assert_eq!(good["payload_text"], signed);
    assert_eq!(report[1]["valid"], false);
    assert!(
        report[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("signature does not match")
    );
}

/// A record from a meter that signs itself (made with OpenSSL, laid out
/// over several lines like the spec's example file; the line breaks are
/// signed).
const METER_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAExphIWIYoPt46nxMskXsoEB+NIaeh
D3HKO2iaNqX+aAxvi4z2ByR1095n8VCu/+vOfPQIxaOD/1+bD86znCxK8A==
-----END PUBLIC KEY-----
";
const METER_RECORD: &str = r#"OCMF|{
    "FV": "1.0",
    "GI": "ABL SBC-301",
    "GS": "808829900001",
    "PG": "T12345",
    "MV": "Phoenix Contact",
    "MM": "EEM-350-D-MCB",
    "MS": "BQ27400330016",
    "IS": true,
    "IT": "ISO14443",
    "ID": "1F2D3A4F5506C7",
    "RD": [
        {
            "TM": "2018-07-24T13:22:04,000+0200 S",
            "TX": "B",
            "RV": 2935.6,
            "RI": "1-b:1.8.0",
            "RU": "kWh",
            "RT": "DC",
            "ST": "G"
        },
        {
            "TM": "2018-07-24T13:26:04,000+0200 S",
            "TX": "E",
            "RV": 2965.1,
            "RI": "1-b:1.8.0",
            "RU": "kWh",
            "RT": "DC",
            "ST": "G"
        }
    ]
}|{
    "SD": "30460221009a3398924be518dd9af3fb704ec2d1937939ea0d09354f38a4bc00cd4ea1a1fa022100a69c793422591da69e7c99e8b875bb04379674ba03b1c3956e113ab22248f5f2"
}"#;

#[test]
fn meter_signed_multi_line_record_verifies() {
    let f = Fixture::new();
    let record_file = f.file("meter-record.txt", &format!("{METER_RECORD}\n"));
    let key_file = f.file("meter.pub.pem", METER_PUBLIC_KEY);
    let out = passes(&mut evos_ocmf_verify(&record_file, &key_file));
    for needle in [
        "OCMF record: signature valid (ECDSA-secp256r1-SHA256)",
        "the meter's or gateway's own key (GI \"ABL SBC-301\")",
        "2935.6 kWh",
        "2965.1 kWh",
        "29.5 kWh delivered",
    ] {
        assert!(out.contains(needle), "`{needle}` missing:\n{out}");
    }
    assert!(!out.contains("NOT a calibrated"), "{out}");
    // Re-indenting the payload changes the signed bytes.
    let reindented = f.file("reindented.txt", &METER_RECORD.replace("    ", "  "));
    fails_with(
        &mut evos_ocmf_verify(&reindented, &key_file),
        "signature does not match",
    );
    // The station's key is not the meter's.
    fails_with(
        &mut evos_ocmf_verify(&record_file, f.key.public_key_hex()),
        "signature does not match",
    );
}
