//! Station → CSMS messages of OCPP 1.6, built from what the bus tells:
//! BootNotification (§4.2), StatusNotification (§4.9), Start/StopTransaction
//! (§4.8, §4.10), MeterValues (§4.7) and DataTransfer (§4.3).
//!
//! Transaction messages are built once, persisted, and completed only when
//! sent ([`finalize`]): the CSMS's transactionId (known only after its
//! StartTransaction.conf) is filled in, and timestamps taken on the system
//! clock are moved onto the CSMS's clock.

use evos_bus::evse::SessionRecord;
use evos_bus::meter::MeterReading;
use serde_json::Value;

use crate::clock::Clock;
use crate::config::Config;
use crate::queue::{Entry, Queue};
use crate::v16::convert;
use crate::v16::messages as m;
use crate::wire::{CiString, DateTime};

pub fn boot(cfg: &Config) -> m::BootNotificationRequest {
    // The config validated these lengths; cutting is only a last resort.
    fn ci<const N: usize>(s: &str) -> CiString<N> {
        CiString::new(s.chars().take(N).collect::<String>()).unwrap_or_default()
    }
    m::BootNotificationRequest {
        charge_point_vendor: ci(&cfg.vendor),
        charge_point_model: ci(&cfg.model),
        charge_point_serial_number: cfg.serial_number.as_deref().map(ci),
        charge_box_serial_number: None,
        firmware_version: CiString::new(env!("CARGO_PKG_VERSION")).ok(),
        iccid: None,
        imsi: None,
        meter_type: None,
        meter_serial_number: None,
    }
}

/// StatusNotification for `evse` (0 = the station) from Evse1's status and
/// fault strings.
pub fn status(evse: u32, status: &str, fault: &str, now_ms: i64) -> m::StatusNotificationRequest {
    // Evse1 speaks the OCPP connector statuses; anything else is a fault.
    let status_enum = status.parse().unwrap_or(m::ChargePointStatus::Faulted);
    let (error_code, info) = error_code(status_enum, fault);
    m::StatusNotificationRequest {
        connector_id: evse as i32,
        error_code,
        info: info.and_then(|i| CiString::new(i).ok()),
        status: status_enum,
        timestamp: Some(DateTime::from_unix_ms(now_ms)),
        vendor_id: None,
        vendor_error_code: None,
    }
}

/// §7.6 ChargePointErrorCode for evse's fault names; what has no code of
/// its own is OtherError with the fault in `info`.
fn error_code(
    status: m::ChargePointStatus,
    fault: &str,
) -> (m::ChargePointErrorCode, Option<String>) {
    use m::ChargePointErrorCode as E;
    if fault.is_empty() {
        return if status == m::ChargePointStatus::Faulted {
            (E::InternalError, None)
        } else {
            (E::NoError, None)
        };
    }
    let code = match fault {
        "RcdTripped" => E::GroundFailure,
        "LockFailure" => E::ConnectorLockFailure,
        "DiodeFault" | "CpError" => E::EVCommunicationError,
        "ContactorWelded" | "PowerModuleFault" => E::PowerSwitchFailure,
        "BoardUnavailable" | "McuLinkLost" => E::InternalError,
        _ => E::OtherError,
    };
    (code, Some(fault.chars().take(50).collect()))
}

pub fn start_transaction(record: &SessionRecord) -> Result<m::StartTransactionRequest, String> {
    Ok(m::StartTransactionRequest {
        connector_id: record.evse as i32,
        id_tag: convert::id_tag(&record.token)?,
        meter_start: wh(record.start_meter_wh),
        reservation_id: (record.reservation_id != 0).then_some(record.reservation_id),
        timestamp: DateTime::from_unix_ms(record.started_ms),
    })
}

pub fn stop_transaction(
    record: &SessionRecord,
    data: Vec<m::MeterValue>,
) -> Result<m::StopTransactionRequest, String> {
    let id_tag = if record.stop_token.is_empty() {
        None
    } else {
        convert::id_tag(&record.stop_token).ok()
    };
    Ok(m::StopTransactionRequest {
        id_tag,
        meter_stop: wh(record.stop_meter_wh.max(record.start_meter_wh)),
        timestamp: DateTime::from_unix_ms(record.ended_ms),
        // Filled in by `finalize` from the StartTransaction.conf.
        transaction_id: 0,
        reason: reason(&record.stop_reason),
        transaction_data: (!data.is_empty()).then_some(data),
    })
}

fn wh(v: f64) -> i32 {
    if v.is_finite() {
        v.round().clamp(0.0, i32::MAX as f64) as i32
    } else {
        0
    }
}

/// §7.29 Reason; `Local` is the default and is left out.
fn reason(stop_reason: &str) -> Option<m::Reason> {
    match stop_reason {
        "Local" | "" => None,
        other => Some(other.parse().unwrap_or(m::Reason::Other)),
    }
}

/// One MeterValue with the configured measurands (§9.1.x
/// MeterValuesSampledData and friends) that the meter reports; None when
/// none of them is known.
pub fn meter_value(
    reading: &MeterReading,
    measurands: &[String],
    context: m::ReadingContext,
    stamp_ms: i64,
) -> Option<m::MeterValue> {
    let mut sampled = Vec::new();
    let mut push =
        |value: f64, measurand: m::Measurand, unit: m::UnitOfMeasure, phase: Option<m::Phase>| {
            if value.is_finite() {
                sampled.push(m::SampledValue {
                    value: format_value(value),
                    context: Some(context),
                    format: None,
                    measurand: Some(measurand),
                    phase,
                    location: Some(m::Location::Outlet),
                    unit: Some(unit),
                });
            }
        };
    const PHASES: [m::Phase; 3] = [m::Phase::L1, m::Phase::L2, m::Phase::L3];
    const PHASES_N: [m::Phase; 3] = [m::Phase::L1N, m::Phase::L2N, m::Phase::L3N];
    for name in measurands {
        match name.as_str() {
            "Energy.Active.Import.Register" => push(
                reading.energy_import_wh,
                m::Measurand::EnergyActiveImportRegister,
                m::UnitOfMeasure::Wh,
                None,
            ),
            "Energy.Active.Export.Register" => push(
                reading.energy_export_wh,
                m::Measurand::EnergyActiveExportRegister,
                m::UnitOfMeasure::Wh,
                None,
            ),
            "Power.Active.Import" => push(
                reading.power_w.max(0.0),
                m::Measurand::PowerActiveImport,
                m::UnitOfMeasure::W,
                None,
            ),
            "Current.Import" => {
                for (i, a) in reading.current_a.iter().enumerate().take(3) {
                    let phase = (reading.current_a.len() > 1).then(|| PHASES[i]);
                    push(*a, m::Measurand::CurrentImport, m::UnitOfMeasure::A, phase);
                }
            }
            "Voltage" => {
                for (i, v) in reading.voltage_v.iter().enumerate().take(3) {
                    let phase = (reading.voltage_v.len() > 1).then(|| PHASES_N[i]);
                    push(*v, m::Measurand::Voltage, m::UnitOfMeasure::V, phase);
                }
            }
            "Frequency" => push(
                reading.frequency_hz,
                m::Measurand::Frequency,
                m::UnitOfMeasure::Wh,
                None,
            ),
            // SoC and the rest are not known to this station's meters.
            _ => {}
        }
    }
    // Frequency has no unit of its own in 1.6 (§7.31): leave it out.
    for s in &mut sampled {
        if s.measurand == Some(m::Measurand::Frequency) {
            s.unit = None;
        }
    }
    (!sampled.is_empty()).then(|| m::MeterValue {
        timestamp: DateTime::from_unix_ms(stamp_ms),
        sampled_value: sampled,
    })
}

fn format_value(v: f64) -> String {
    // Three decimals cover Wh registers and per-phase amps; trailing zeros
    // are noise to a CSMS.
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

/// Signed meter values (OCMF records) for transactionData.
pub fn signed_values(
    signed: &[(m::ReadingContext, String)],
    record: &SessionRecord,
) -> Vec<m::MeterValue> {
    signed
        .iter()
        .map(|(context, ocmf)| m::MeterValue {
            timestamp: DateTime::from_unix_ms(if *context == m::ReadingContext::TransactionBegin {
                record.started_ms
            } else {
                record.ended_ms
            }),
            sampled_value: vec![m::SampledValue {
                value: ocmf.clone(),
                context: Some(*context),
                format: Some(m::ValueFormat::SignedData),
                measurand: Some(m::Measurand::EnergyActiveImportRegister),
                phase: None,
                location: Some(m::Location::Outlet),
                unit: Some(m::UnitOfMeasure::Wh),
            }],
        })
        .collect()
}

pub fn data_transfer(
    vendor_id: &str,
    message_id: &str,
    data: &str,
) -> Result<m::DataTransferRequest, String> {
    Ok(m::DataTransferRequest {
        vendor_id: CiString::new(vendor_id)
            .map_err(|_| "vendor id longer than 255 characters".to_string())?,
        message_id: if message_id.is_empty() {
            None
        } else {
            Some(
                CiString::new(message_id)
                    .map_err(|_| "message id longer than 50 characters".to_string())?,
            )
        },
        data: (!data.is_empty()).then(|| data.to_owned()),
    })
}

/// Complete a queued message for sending: the transactionId of its session
/// and the CSMS's clock. Err when it can never be sent (its transaction was
/// never accepted by the CSMS).
pub fn finalize(entry: &Entry, queue: &Queue, clock: &Clock) -> Result<Value, String> {
    let mut payload = entry.payload.clone();
    let needs_id = matches!(entry.action.as_str(), "StopTransaction" | "MeterValues");
    if needs_id && let Some(tx_ref) = &entry.tx_ref {
        let id = queue
            .transaction_id(tx_ref)
            .ok_or_else(|| format!("no transactionId for session {tx_ref}"))?;
        payload["transactionId"] = Value::from(id);
    }
    let restamp = |v: &mut Value| {
        if let Some(t) = v.as_str().and_then(|s| s.parse::<DateTime>().ok())
            && let Some(station) = clock.station_ms(t.unix_ms())
        {
            *v = Value::String(DateTime::from_unix_ms(station).to_string());
        }
    };
    if let Some(t) = payload.get_mut("timestamp") {
        restamp(t);
    }
    for list in ["meterValue", "transactionData"] {
        if let Some(Value::Array(values)) = payload.get_mut(list) {
            for mv in values {
                if let Some(t) = mv.get_mut("timestamp") {
                    restamp(t);
                }
            }
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> MeterReading {
        MeterReading {
            timestamp_ms: 0,
            energy_import_wh: 1234.5,
            energy_export_wh: f64::NAN,
            power_w: 11000.0,
            power_phase_w: vec![],
            voltage_v: vec![230.1, 229.9, 231.0],
            current_a: vec![16.0, 16.0, 15.9],
            frequency_hz: 50.0,
        }
    }

    #[test]
    fn measurands_follow_the_configuration() {
        let m = [
            "Energy.Active.Import.Register",
            "Current.Import",
            "SoC",
            "Energy.Active.Export.Register",
        ]
        .map(String::from);
        let mv = meter_value(&reading(), &m, m::ReadingContext::SamplePeriodic, 0).unwrap();
        // Energy, three phases of current; SoC unknown and export NaN left out.
        assert_eq!(mv.sampled_value.len(), 4);
        assert_eq!(mv.sampled_value[0].value, "1234.5");
        assert_eq!(mv.sampled_value[1].phase, Some(m::Phase::L1));
        assert_eq!(mv.sampled_value[3].value, "15.9");
        assert!(
            meter_value(
                &reading(),
                &["SoC".into()],
                m::ReadingContext::SamplePeriodic,
                0
            )
            .is_none()
        );
    }

    #[test]
    fn finalize_fills_the_transaction_id_and_moves_stamps_to_the_csms_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = Queue::open(dir.path()).unwrap();
        let mut clock = Clock::default();
        // The system clock was never set: 10 s after boot.
        let record = SessionRecord {
            id: "s1".into(),
            evse: 1,
            token: "TAG".into(),
            started_ms: 10_000,
            ended_ms: 20_000,
            start_meter_wh: 100.0,
            stop_meter_wh: 350.4,
            stop_reason: "Remote".into(),
            fault: String::new(),
            stop_token: String::new(),
            reservation_id: 0,
        };
        let stop = serde_json::to_value(stop_transaction(&record, vec![]).unwrap()).unwrap();
        let seq = queue.push("StopTransaction", stop, Some("s1"), 0).unwrap();
        let entry = queue.front().unwrap().clone();
        assert!(
            finalize(&entry, &queue, &clock).is_err(),
            "no transactionId yet"
        );
        queue.bind_transaction("s1", 77).unwrap();
        clock.set(1_795_514_400_000, 30_000);
        let v = finalize(&entry, &queue, &clock).unwrap();
        assert_eq!(v["transactionId"], 77);
        assert_eq!(v["meterStop"], 350);
        assert_eq!(v["reason"], "Remote");
        assert_eq!(v["timestamp"], "2026-11-24T09:59:50.000Z");
        assert_eq!(seq, entry.seq);
    }
}
