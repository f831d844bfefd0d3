//! The OCPP 1.6J message types (`evos_ocpp::v16::messages`, OCPP 1.6
//! edition 2 §6 and the Security Whitepaper edition 2 messages) against the
//! official JSON schemas, with Python's `jsonschema` as the independent judge.
//!
//! `tests/peers/ocpp16_schema_check.py` builds valid and invalid instances of
//! all 78 schemas. Every valid one must be read and written back, and the
//! written JSON must pass the schema and equal the input (up to date-time
//! normalisation and number formatting). Every invalid one must be refused
//! with a serde error whose wording the RPC layer maps to the labelled
//! CALLERROR code.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use evos_ocpp::v16::messages::{self, Request};
use evos_ocpp::wire::{CiString, DateTime};
use harness::python::python;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Generated {
    schemas: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: u64,
    schema: String,
    action: String,
    response: bool,
    label: String,
    path: String,
    instance: Value,
    /// "valid", or the CALLERROR code the refusal must map to.
    expect: String,
    beyond_schema: bool,
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run a Python script with `args` and `stdin`: whether it exited 0, and
/// its stdout. Panics, with its stderr, if it crashed.
fn run_python(script: &Path, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // A separate writer: the script may fill its stdout pipe before it has
    // read all of stdin.
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // 1 is a verdict (printed on stdout); anything else is a crash.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "{} {args:?} crashed ({}):\n{stdout}\n{stderr}",
        script.display(),
        output.status,
    );
    (output.status.success(), format!("{stdout}{stderr}"))
}

fn check_script() -> PathBuf {
    workspace().join("tests/peers/ocpp16_schema_check.py")
}

/// The CALLERROR code the RPC layer answers a serde error with, from its
/// wording.
fn error_code(message: &str) -> Option<&'static str> {
    let has = |phrases: &[&str]| phrases.iter().any(|p| message.contains(p));
    if has(&["missing field"]) {
        Some("OccurenceConstraintViolation")
    } else if has(&["unknown field"]) {
        Some("FormationViolation")
    } else if has(&["invalid type"]) {
        Some("TypeConstraintViolation")
    } else if has(&["invalid length", "unknown variant", "invalid value"]) {
        Some("PropertyConstraintViolation")
    } else {
        None
    }
}

#[test]
fn every_schema_instance_reads_writes_and_refuses_as_the_schema_says() {
    let (generated_ok, text) = run_python(&check_script(), &["generate"], b"");
    assert!(generated_ok, "{text}");
    let generated: Generated = serde_json::from_str(&text).unwrap();

    // The action list is exactly the schemas' (Action.json + ActionResponse.json).
    let from_schemas: BTreeSet<&str> = generated
        .schemas
        .iter()
        .map(|s| s.strip_suffix("Response").unwrap_or(s))
        .collect();
    let ours: BTreeSet<&str> = messages::ACTIONS.iter().copied().collect();
    assert_eq!(ours, from_schemas);
    assert_eq!(messages::ACTIONS.len(), 39);
    assert_eq!(generated.schemas.len(), 78);

    let mut failures = Vec::new();
    let mut written = Vec::new();
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut valid_per_schema: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &generated.cases {
        let name = format!(
            "#{} {} {} at {}{}",
            case.id,
            case.schema,
            case.label,
            case.path,
            if case.beyond_schema {
                " (beyond the schema)"
            } else {
                ""
            }
        );
        *counts.entry((&case.label, &case.expect)).or_default() += 1;
        let Some(result) = messages::roundtrip(&case.action, case.response, &case.instance) else {
            failures.push(format!("{name}: roundtrip does not know {}", case.action));
            continue;
        };
        match (case.expect.as_str(), result) {
            ("valid", Ok(output)) => {
                *valid_per_schema.entry(&case.schema).or_default() += 1;
                written.push(json!({
                    "id": case.id,
                    "schema": case.schema,
                    "label": case.label,
                    "path": case.path,
                    "input": case.instance,
                    "output": output,
                }));
            }
            ("valid", Err(e)) => {
                failures.push(format!("{name}: refused: {e}\n  {}", case.instance));
            }
            (code, Ok(output)) => failures.push(format!(
                "{name}: accepted, but {code} was expected\n  {}\n  written as {output}",
                case.instance
            )),
            (code, Err(e)) => {
                let message = e.to_string();
                if error_code(&message) != Some(code) {
                    failures.push(format!(
                        "{name}: refused with `{message}`, which maps to {:?}, not {code}",
                        error_code(&message)
                    ));
                }
            }
        }
    }
    for schema in &generated.schemas {
        if valid_per_schema.get(schema.as_str()).copied().unwrap_or(0) < 2 {
            failures.push(format!(
                "{schema}: fewer than two valid instances were read"
            ));
        }
    }

    // Python judges what the Rust types wrote.
    let (validated, report) = run_python(
        &check_script(),
        &["validate"],
        &serde_json::to_vec(&written).unwrap(),
    );
    if !validated || report.trim() != format!("OK {}", written.len()) {
        failures.push(format!("jsonschema on the written JSON:\n{report}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        generated.cases.len(),
        failures.join("\n")
    );

    let invalid = generated.cases.len() - written.len();
    println!(
        "checked {} instances of {} schemas: {} valid (read, written back, validated by \
         jsonschema), {invalid} invalid (refused with the expected error)",
        generated.cases.len(),
        generated.schemas.len(),
        written.len(),
    );
    for ((label, expect), count) in &counts {
        println!("  {count:5} {label} -> {expect}");
    }
}

#[test]
fn generated_messages_match_the_schemas_and_the_generator() {
    let generator = workspace().join("crates/evos-ocpp/tools/gen_v16.py");
    let (current, report) = run_python(&generator, &["--check"], b"");
    assert!(current && report.contains("is current"), "{report}");
}

#[test]
fn request_types_name_their_action_and_response() {
    fn action<R: Request>() -> &'static str {
        R::ACTION
    }
    assert_eq!(
        action::<messages::BootNotificationRequest>(),
        "BootNotification"
    );
    assert_eq!(
        action::<messages::SignedUpdateFirmwareRequest>(),
        "SignedUpdateFirmware"
    );
    assert!(messages::is_known_action("ExtendedTriggerMessage"));
    assert!(!messages::is_known_action("bootnotification"));
    assert!(messages::roundtrip("NoSuchAction", false, &json!({})).is_none());
    for action in messages::ACTIONS {
        assert!(messages::roundtrip(action, false, &json!({})).is_some());
        let initiators = [
            messages::CHARGE_POINT_INITIATED.contains(action),
            messages::CENTRAL_SYSTEM_INITIATED.contains(action),
        ];
        assert!(initiators.contains(&true), "{action}: nobody sends it");
    }

    // What the station sends: optional fields left out, not null.
    let boot = messages::BootNotificationRequest {
        charge_point_vendor: CiString::new("evos").unwrap(),
        charge_point_model: CiString::new("sim-1").unwrap(),
        charge_point_serial_number: None,
        charge_box_serial_number: None,
        firmware_version: Some(CiString::new("0.1.0").unwrap()),
        iccid: None,
        imsi: None,
        meter_type: None,
        meter_serial_number: None,
    };
    assert_eq!(
        serde_json::to_string(&boot).unwrap(),
        r#"{"chargePointVendor":"evos","chargePointModel":"sim-1","firmwareVersion":"0.1.0"}"#
    );
    let answer: <messages::BootNotificationRequest as Request>::Response = serde_json::from_str(
        r#"{"status":"Accepted","currentTime":"2026-11-24T11:00:00+01:00","interval":300}"#,
    )
    .unwrap();
    assert_eq!(answer.status, messages::RegistrationStatus::Accepted);
    assert_eq!(
        answer.current_time,
        DateTime::from_unix_ms(1_795_514_400_000)
    );
    assert_eq!(answer.interval, 300);

    // Enums read from strings only, and parse from their wire text.
    assert_eq!(
        "Energy.Active.Import.Register".parse::<messages::Measurand>(),
        Ok(messages::Measurand::EnergyActiveImportRegister)
    );
    assert_eq!(messages::Phase::L1N.as_str(), "L1-N");
    assert!("Volts".parse::<messages::UnitOfMeasure>().is_err());
    let as_map = serde_json::from_value::<messages::RegistrationStatus>(json!({"Accepted": null}));
    assert!(as_map.unwrap_err().to_string().starts_with("invalid type"));
    // Structs read from objects only, not from an array of their fields.
    let as_array = serde_json::from_str::<messages::HeartbeatRequest>("[]");
    assert!(
        as_array
            .unwrap_err()
            .to_string()
            .starts_with("invalid type")
    );
}
