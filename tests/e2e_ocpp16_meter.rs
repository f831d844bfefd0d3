//! End-to-end tests of the OCPP 1.6J client against an independent CSMS:
//! meter values (OCPP 1.6 §3.16 metering data, §4.7 MeterValues, §9.1
//! ClockAlignedDataInterval, MeterValueSampleInterval, *SampledData,
//! StopTxn*Data) and signed meter values (OCMF in a SampledValue of format
//! SignedData), from the simulated SDM630 through the meter service.

mod harness;

use harness::TOKEN;
use harness::csms::{CsmsOptions, OcppStack, unix_ms};
use serde_json::{Value, json};

const SAMPLED: &str = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage";

fn measurands(mv: &Value) -> Vec<String> {
    mv["sampledValue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["measurand"]
                .as_str()
                .unwrap_or("Energy.Active.Import.Register")
                .to_owned()
        })
        .collect()
}

/// §9.1 ClockAlignedDataInterval: samples at whole multiples of the
/// interval since midnight, identified by that time, context Sample.Clock,
/// with MeterValuesAlignedData's measurands; during a transaction they
/// carry its transactionId.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_aligned_meter_values() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("ClockAlignedDataInterval", "2")
            .key(
                "MeterValuesAlignedData",
                "Energy.Active.Import.Register,Voltage",
            )
            .key("MeterValueSampleInterval", "0")
    })
    .await;
    let m = s.csms.mark();
    let (i, first) = s
        .csms
        .wait_event_since(m, "MeterValues", |p| p["connectorId"] == 1);
    let (_, second) = s
        .csms
        .wait_event_since(i + 1, "MeterValues", |p| p["connectorId"] == 1);
    let mut stamps = Vec::new();
    for e in [&first, &second] {
        let p = &e["payload"];
        assert!(p.get("transactionId").is_none(), "no transaction yet: {p}");
        let mv = &p["meterValue"][0];
        let t = unix_ms(mv["timestamp"].as_str().unwrap());
        // §9.1 ClockAlignedDataInterval: "the interval in question is
        // identified by the start time": the boundary itself.
        assert_eq!(
            t.rem_euclid(2000),
            0,
            "timestamp {} is not the 2 s boundary it samples",
            mv["timestamp"]
        );
        let arrived = (e["t"].as_f64().unwrap() * 1000.0) as i64;
        assert!(
            (arrived - t).abs() < 1500,
            "sent when due: {arrived} vs {t}"
        );
        for v in mv["sampledValue"].as_array().unwrap() {
            assert_eq!(v["context"], "Sample.Clock", "{v}");
        }
        let got = measurands(mv);
        assert!(
            got.iter().any(|m| m == "Energy.Active.Import.Register"),
            "{got:?}"
        );
        assert!(got.iter().any(|m| m == "Voltage"), "{got:?}");
        assert!(
            got.iter()
                .all(|m| m == "Energy.Active.Import.Register" || m == "Voltage"),
            "only the configured measurands: {got:?}"
        );
        stamps.push(t);
    }
    assert_eq!(
        stamps[1] - stamps[0],
        2000,
        "one interval apart: {stamps:?}"
    );

    let (m2, tx) = s.charging().await;
    s.csms.wait_event_since(m2, "MeterValues", |p| {
        p["transactionId"] == tx
            && p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    });
}

/// §9.1 MeterValueSampleInterval / MeterValuesSampledData during a
/// transaction; ChangeConfiguration of the interval applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_meter_values_during_a_transaction() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("MeterValueSampleInterval", "1")
            .key("MeterValuesSampledData", SAMPLED)
    })
    .await;
    let (m, tx) = s.charging().await;
    let mut i = m;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let (j, e) = s
            .csms
            .wait_event_since(i, "MeterValues", |p| p["transactionId"] == tx);
        i = j + 1;
        samples.push(e["payload"].clone());
    }
    let mut last_t = 0;
    let mut last_e = 0.0;
    for p in &samples {
        assert_eq!(p["connectorId"], 1);
        let mv = &p["meterValue"][0];
        let t = unix_ms(mv["timestamp"].as_str().unwrap());
        if last_t != 0 {
            let gap = t - last_t;
            assert!(
                (700..=1600).contains(&gap),
                "sampled every second: {gap} ms"
            );
        }
        last_t = t;
        let got = measurands(mv);
        for want in SAMPLED.split(',') {
            assert!(got.iter().any(|m| m == want), "{want} missing in {got:?}");
        }
        for v in mv["sampledValue"].as_array().unwrap() {
            assert_eq!(v["context"], "Sample.Periodic", "{v}");
            let unit = match v["measurand"].as_str().unwrap() {
                "Energy.Active.Import.Register" => "Wh",
                "Power.Active.Import" => "W",
                "Current.Import" => "A",
                "Voltage" => "V",
                other => panic!("unconfigured measurand {other}"),
            };
            assert!(
                v.get("unit").is_none_or(|u| u == unit),
                "§7.31 unit of {}: {v}",
                v["measurand"]
            );
            let value: f64 = v["value"].as_str().unwrap().parse().expect("a number");
            if v["measurand"] == "Energy.Active.Import.Register" {
                assert!(value >= last_e, "the register only grows");
                last_e = value;
            }
        }
    }
    // Every 3 s from now on.
    let answer = s.csms.call_ok(
        "ChangeConfiguration",
        json!({"key": "MeterValueSampleInterval", "value": "3"}),
    );
    assert_eq!(answer["status"], "Accepted");
    let (j, a) = s
        .csms
        .wait_event_since(i, "MeterValues", |p| p["transactionId"] == tx);
    let (_, b) = s
        .csms
        .wait_event_since(j + 1, "MeterValues", |p| p["transactionId"] == tx);
    let gap = unix_ms(b["payload"]["meterValue"][0]["timestamp"].as_str().unwrap())
        - unix_ms(a["payload"]["meterValue"][0]["timestamp"].as_str().unwrap());
    assert!(
        (2500..=3600).contains(&gap),
        "after the change, every 3 s: {gap} ms"
    );
}

/// StopTransaction.transactionData: StopTxnSampledData samples and the
/// meter's signed (OCMF) begin and end readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_transaction_data_with_signed_meter_values() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("MeterValueSampleInterval", "1")
            .key("StopTxnSampledData", "Energy.Active.Import.Register")
    })
    .await;
    let (m, tx) = s.charging().await;
    // Two samples into the transaction.
    let (i, _) = s
        .csms
        .wait_event_since(m, "MeterValues", |p| p["transactionId"] == tx);
    s.csms
        .wait_event_since(i + 1, "MeterValues", |p| p["transactionId"] == tx);
    let m2 = s.csms.mark();
    s.swipe(TOKEN).await;
    let (_, stop) = s.wait_stop(m2, tx);
    let data = stop["transactionData"]
        .as_array()
        .unwrap_or_else(|| panic!("no transactionData: {stop}"));
    let mut plain = 0;
    let mut signed = Vec::new();
    for mv in data {
        unix_ms(mv["timestamp"].as_str().unwrap());
        for v in mv["sampledValue"].as_array().unwrap() {
            if v["format"] == "SignedData" {
                signed.push(v.clone());
            } else {
                assert_eq!(
                    v["measurand"]
                        .as_str()
                        .unwrap_or("Energy.Active.Import.Register"),
                    "Energy.Active.Import.Register",
                    "only StopTxnSampledData's measurands: {v}"
                );
                plain += 1;
            }
        }
    }
    assert!(
        plain >= 2,
        "the samples taken during the transaction: {stop}"
    );
    let contexts: Vec<&str> = signed
        .iter()
        .map(|v| v["context"].as_str().unwrap_or(""))
        .collect();
    assert!(
        contexts.contains(&"Transaction.Begin") && contexts.contains(&"Transaction.End"),
        "signed begin and end readings: {contexts:?} in {stop}"
    );
    for v in &signed {
        let text = v["value"].as_str().unwrap();
        assert!(text.starts_with("OCMF|"), "OCMF record: {text}");
    }
    let register: f64 = data
        .iter()
        .flat_map(|mv| mv["sampledValue"].as_array().unwrap().iter())
        .filter(|v| v["format"] != "SignedData" && v["context"] == "Transaction.End")
        .filter_map(|v| v["value"].as_str().and_then(|x| x.parse().ok()))
        .next_back()
        .unwrap_or(f64::NAN);
    if register.is_finite() {
        let meter_stop = stop["meterStop"].as_f64().unwrap();
        assert!(
            (register - meter_stop).abs() <= 1.0,
            "meterStop {meter_stop} vs the end sample {register}"
        );
    }
}
