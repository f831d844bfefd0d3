//! End-to-end tests of the OCPP 1.6J client (`evos run ocpp`) against an
//! independent CSMS (`tests/peers/csms16.py`, mobilityhouse `ocpp`): the
//! Core profile (OCPP 1.6 edition 2 §4, §5), named after the OCPP 1.6
//! compliance test cases (OCTT test case document) where one fits.
//!
//! Every station → CSMS CALL is validated against the official JSON schema
//! by the peer; the harness fails a test on the first invalid one.

mod harness;

use harness::csms::{CsmsOptions, OcppStack};
use harness::{DEADLINE, TOKEN, wait_status};
use serde_json::{Value, json};

const OTHER: &str = "TEST-TOKEN-2";

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

/// The events since `since` (actions only), for messages.
fn actions_since(s: &mut OcppStack, since: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (i, l) in s.csms.history().iter().enumerate() {
        if i >= since && l.kind == "EVENT" {
            out.push(format!(
                "{} {}",
                l.value["action"].as_str().unwrap_or_default(),
                l.value["payload"]["status"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_001_cs_cold_boot_charge_point() {
    let mut s = OcppStack::start_unregistered(
        CsmsOptions {
            interval: 2,
            ..Default::default()
        },
        |o| o,
    )
    .await;
    // §4.2: BootNotification first, with the identity from the config.
    let first = s.csms.wait_line(0, "EVENT", DEADLINE, |_| true).1;
    assert_eq!(
        first["action"], "BootNotification",
        "first message: {first}"
    );
    assert_eq!(first["payload"]["chargePointVendor"], "evos");
    assert_eq!(first["payload"]["chargePointModel"], "evos");
    assert_eq!(first["reply"]["status"], "Accepted");
    // §4.9: after the boot, connector 0 and every connector report a status.
    s.csms.wait_event("StatusNotification", |p| {
        p["connectorId"] == 0 && p["status"] == "Available"
    });
    let (i, st) = s
        .csms
        .wait_event_since(0, "StatusNotification", |p| p["connectorId"] == 1);
    assert_eq!(st["payload"]["status"], "Available");
    assert_eq!(st["payload"]["errorCode"], "NoError");
    // §4.6: heartbeats at the interval from BootNotification.conf.
    let (_, hb) = s.csms.wait_event_since(i, "Heartbeat", |_| true);
    let last_before = st["t"].as_f64().unwrap();
    let gap = hb["t"].as_f64().unwrap() - last_before;
    assert!(
        (1.5..4.0).contains(&gap),
        "Heartbeat {gap:.2} s after the last message; the interval is 2 s"
    );
    // §4.2: the interval becomes HeartbeatInterval.
    let conf = s
        .csms
        .call_ok("GetConfiguration", json!({"key": ["HeartbeatInterval"]}));
    assert_eq!(conf["configurationKey"][0]["value"], "2", "{conf}");

    let ocpp = s.stack.ocpp().await;
    assert_eq!(ocpp.registration_status().await.unwrap(), "Accepted");
    assert_eq!(ocpp.connection_state().await.unwrap(), "Connected");
    assert_eq!(ocpp.protocol().await.unwrap(), "1.6");
    assert_eq!(
        ocpp.endpoint().await.unwrap(),
        format!("{}/{}", s.csms.url(), harness::csms::STATION_ID)
    );
}

/// §4.2.1: while Pending, nothing but BootNotification (each after the
/// interval the CSMS gave), and the station answers the CSMS's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_002_cs_cold_boot_pending_then_accepted() {
    let mut s = OcppStack::start_unregistered(
        CsmsOptions {
            boot: vec!["Pending".into()],
            retry: 1,
            ..Default::default()
        },
        |o| o,
    )
    .await;
    let (i, b1) = s.csms.wait_event_since(0, "BootNotification", |_| true);
    let (_, b2) = s.csms.wait_event_since(i + 1, "BootNotification", |_| true);
    let gap = b2["t"].as_f64().unwrap() - b1["t"].as_f64().unwrap();
    assert!(
        gap >= 0.9,
        "second BootNotification {gap:.2} s after a Pending with interval 1"
    );
    // The CSMS may read and set configuration while Pending.
    let conf = s
        .csms
        .call_ok("GetConfiguration", json!({"key": ["NumberOfConnectors"]}));
    assert_eq!(conf["configurationKey"][0]["value"], "1", "{conf}");
    // A driver arrives meanwhile: no Authorize may be sent while Pending.
    s.plug().await;
    s.csms.set("boot", "Accepted");
    let (acc, _) = s.csms.wait_line(0, "EVENT", DEADLINE, |e| {
        e["action"] == "BootNotification" && e["reply"]["status"] == "Accepted"
    });
    let before: Vec<Value> = s
        .csms
        .events()
        .into_iter()
        .take_while(|e| e["reply"]["status"] != "Accepted")
        .collect();
    assert!(before.len() >= 2);
    for e in &before {
        assert_eq!(
            e["action"], "BootNotification",
            "sent before being Accepted: {e}"
        );
    }
    s.csms.wait_event_since(acc, "StatusNotification", |p| {
        p["connectorId"] == 1 && p["status"] == "Preparing"
    });
}

/// §4.2.1: Rejected — no message before the interval has passed, and no
/// answer to anything the CSMS sends meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_boot_rejected_is_silent_until_the_interval_passed() {
    let mut s = OcppStack::start_unregistered(
        CsmsOptions {
            boot: vec!["Rejected".into()],
            retry: 2,
            ..Default::default()
        },
        |o| o,
    )
    .await;
    let (i, b1) = s.csms.wait_event_since(0, "BootNotification", |_| true);
    s.csms
        .raw_send(r#"[2,"while-rejected","GetConfiguration",{}]"#);
    s.csms.set("boot", "Accepted");
    let (_, b2) = s.csms.wait_event_since(i + 1, "BootNotification", |_| true);
    let gap = b2["t"].as_f64().unwrap() - b1["t"].as_f64().unwrap();
    assert!(
        gap >= 1.9,
        "BootNotification again {gap:.2} s after Rejected with interval 2"
    );
    let events = s.csms.events();
    assert!(
        events
            .iter()
            .take(2)
            .all(|e| e["action"] == "BootNotification"),
        "nothing else while Rejected: {events:?}"
    );
    s.csms.wait_accepted(i + 1);
    assert_eq!(
        s.csms.stray(),
        Vec::<String>::new(),
        "§4.2.1: while Rejected the station SHALL NOT respond to CSMS-initiated messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_003_cs_regular_charging_session_plugin_first() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    s.plug().await;
    let p = s.wait_status(m, "Preparing");
    s.swipe(TOKEN).await;
    let (a, auth) = s.csms.wait_event_since(p, "Authorize", |_| true);
    assert_eq!(auth["payload"]["idTag"], TOKEN);
    let (st, tx, start) = s.wait_start(a);
    assert_eq!(start["connectorId"], 1);
    assert_eq!(start["idTag"], TOKEN);
    assert!(start["meterStart"].as_i64().unwrap() >= 0);
    let c = s.wait_status(m, "Charging");
    let evse = s.stack.evse().await;
    wait_status(&evse, "Charging").await;
    harness::wait_energy_above(&evse, 10.0).await;

    // The same card ends it.
    let m2 = s.csms.mark();
    s.swipe(TOKEN).await;
    let (_, stop) = s.wait_stop(m2, tx);
    assert_eq!(stop["idTag"], TOKEN, "§6.49: the idTag that stopped it");
    assert!(
        stop.get("reason").is_none() || stop["reason"] == "Local",
        "a swipe stops with reason Local: {stop}"
    );
    assert!(stop["meterStop"].as_i64().unwrap() > start["meterStart"].as_i64().unwrap());
    s.wait_status(m2, "Finishing");
    s.unplug().await;
    s.wait_status(m2, "Available");
    // TC_003 steps 5 and 7 may come in either order; Authorize precedes both.
    assert!(a < st && a < c, "{:?}", actions_since(&mut s, m));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_004_1_cs_regular_charging_session_identification_first() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    s.swipe(TOKEN).await;
    let (a, _) = s
        .csms
        .wait_event_since(m, "Authorize", |p| p["idTag"] == TOKEN);
    // Authorized and waiting for the cable: Preparing (§4.9).
    s.wait_status(a, "Preparing");
    s.plug().await;
    let (_, tx, start) = s.wait_start(a);
    assert_eq!(start["idTag"], TOKEN);
    s.wait_status(a, "Charging");
    let m2 = s.csms.mark();
    s.swipe(TOKEN).await;
    s.wait_stop(m2, tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_004_2_cs_identification_first_connection_timeout() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| o.key("ConnectionTimeOut", "2")).await;
    let m = s.csms.mark();
    s.swipe(TOKEN).await;
    let p = s.wait_status(m, "Preparing");
    // Nobody plugs in: back to Available after ConnectionTimeOut, no transaction.
    let (_, back) = s.csms.wait_event_since(p, "StatusNotification", |p| {
        p["connectorId"] == 1 && p["status"] == "Available"
    });
    let (_, prep) = s
        .csms
        .wait_event_since(m, "StatusNotification", |p| p["status"] == "Preparing");
    let waited = back["t"].as_f64().unwrap() - prep["t"].as_f64().unwrap();
    assert!(
        (1.5..6.0).contains(&waited),
        "Available {waited:.2} s after Preparing; ConnectionTimeOut 2 s"
    );
    assert!(s.csms.payloads("StartTransaction").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_005_1_cs_ev_side_disconnected() {
    let mut s = OcppStack::plain().await;
    let (m, tx) = s.charging().await;
    s.unplug().await;
    let (_, stop) = s.wait_stop(m, tx);
    assert_eq!(stop["reason"], "EVDisconnected", "{stop}");
    // StopTransactionOnEVSideDisconnect is true: the transaction ends and
    // the connector becomes Available (via Finishing or directly).
    s.wait_status(m, "Available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_010_cs_remote_start_charging_session_cable_plugged_in_first() {
    let mut s = OcppStack::plain().await;
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["AuthorizeRemoteTxRequests"]}),
    );
    let authorize_remote = conf["configurationKey"][0]["value"] == "true";
    let m = s.csms.mark();
    s.plug().await;
    s.wait_status(m, "Preparing");
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": TOKEN}),
    );
    assert_eq!(status(&answer), "Accepted");
    let (_, tx, start) = s.wait_start(m);
    assert_eq!(start["idTag"], TOKEN);
    assert_eq!(start["connectorId"], 1);
    s.wait_status(m, "Charging");
    let authorized = s.csms.payloads("Authorize").len();
    assert_eq!(
        authorized,
        usize::from(authorize_remote),
        "Authorize.req only when AuthorizeRemoteTxRequests is true"
    );
    // TC_012 follows on: remote stop.
    let m2 = s.csms.mark();
    let answer = s
        .csms
        .call_ok("RemoteStopTransaction", json!({"transactionId": tx}));
    assert_eq!(status(&answer), "Accepted");
    let (_, stop) = s.wait_stop(m2, tx);
    assert_eq!(stop["reason"], "Remote", "{stop}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_011_1_cs_remote_start_charging_session_remote_start_first() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("AuthorizeRemoteTxRequests", "true")
    })
    .await;
    let m = s.csms.mark();
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": TOKEN}),
    );
    assert_eq!(status(&answer), "Accepted");
    let (a, _) = s
        .csms
        .wait_event_since(m, "Authorize", |p| p["idTag"] == TOKEN);
    s.wait_status(a, "Preparing");
    s.plug().await;
    let (_, _, start) = s.wait_start(a);
    assert_eq!(start["idTag"], TOKEN);
    s.wait_status(a, "Charging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_011_2_cs_remote_start_charging_session_time_out() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| o.key("ConnectionTimeOut", "2")).await;
    let m = s.csms.mark();
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": TOKEN}),
    );
    assert_eq!(status(&answer), "Accepted");
    let p = s.wait_status(m, "Preparing");
    s.wait_status(p, "Available");
    assert!(s.csms.payloads("StartTransaction").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_012_cs_remote_stop_charging_session() {
    let mut s = OcppStack::plain().await;
    let (m, tx) = s.charging().await;
    let answer = s
        .csms
        .call_ok("RemoteStopTransaction", json!({"transactionId": tx}));
    assert_eq!(status(&answer), "Accepted");
    let (_, stop) = s.wait_stop(m, tx);
    assert_eq!(stop["reason"], "Remote");
    s.wait_status(m, "Finishing");
}

async fn reset_without_transaction(kind: &str) {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok("Reset", json!({"type": kind}));
    assert_eq!(status(&answer), "Accepted");
    let exit = s.stack.wait_ocpp_exit(DEADLINE);
    assert_eq!(
        exit.code(),
        Some(75),
        "a reset ends the service for its manager to restart"
    );
    let m = s.csms.mark();
    s.stack.restart_ocpp();
    // §4.2: a BootNotification after every reboot.
    s.csms.wait_accepted(m);
    assert!(s.csms.payloads("StopTransaction").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_013_cs_hard_reset_without_transaction() {
    reset_without_transaction("Hard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_014_cs_soft_reset_without_transaction() {
    reset_without_transaction("Soft").await;
}

async fn reset_with_transaction(kind: &str, reason: &str) {
    let mut s = OcppStack::plain().await;
    let (m, tx) = s.charging().await;
    let answer = s.csms.call_ok("Reset", json!({"type": kind}));
    assert_eq!(status(&answer), "Accepted");
    // §5.14: transactions are stopped (StopTransaction with the reset's
    // reason) before the reset is carried out.
    let (_, stop) = s.wait_stop(m, tx);
    assert_eq!(stop["reason"], reason, "{stop}");
    let exit = s.stack.wait_ocpp_exit(DEADLINE);
    assert_eq!(exit.code(), Some(75));
    let m2 = s.csms.mark();
    s.stack.restart_ocpp();
    s.csms.wait_accepted(m2);
    let stops: Vec<Value> = s
        .csms
        .events()
        .into_iter()
        .filter(|e| e["action"] == "StopTransaction")
        .collect();
    assert_eq!(
        stops.len(),
        1,
        "a graceful reset sends each StopTransaction once: it had time to take the \
         CSMS's answer before exiting; got (sent, answered, re-sent after the restart) {stops:#?}"
    );
    assert_eq!(
        s.csms.payloads("StartTransaction").len(),
        1,
        "no new transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_015_cs_hard_reset_with_transaction() {
    reset_with_transaction("Hard", "HardReset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_016_cs_soft_reset_with_transaction() {
    reset_with_transaction("Soft", "SoftReset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_017_1_cs_unlock_connector_no_charging_session() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok("UnlockConnector", json!({"connectorId": 1}));
    assert_eq!(status(&answer), "Unlocked");
    assert!(!s.stack.sim_evse().await.locked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_018_1_cs_unlock_connector_with_charging_session() {
    let mut s = OcppStack::plain().await;
    let (m, tx) = s.charging().await;
    assert!(s.stack.sim_evse().await.locked);
    let answer = s.csms.call_ok("UnlockConnector", json!({"connectorId": 1}));
    assert_eq!(status(&answer), "Unlocked");
    // §5.18: the transaction is stopped first, reason UnlockCommand.
    let (_, stop) = s.wait_stop(m, tx);
    assert_eq!(stop["reason"], "UnlockCommand", "{stop}");
    let world = s.stack.sim_evse().await;
    assert!(!world.locked && !world.relays_closed, "{world:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_030_cs_unlock_connector_unlock_failure() {
    let mut s = OcppStack::plain().await;
    s.plug().await;
    s.stack.sim().await.fault(1, "lock").await.unwrap();
    let answer = s.csms.call_ok("UnlockConnector", json!({"connectorId": 1}));
    assert_eq!(status(&answer), "UnlockFailed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_031_cs_unlock_connector_unknown_connector() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok("UnlockConnector", json!({"connectorId": 2}));
    assert_eq!(status(&answer), "NotSupported");
}

/// §9.1 (Core) and the Local Auth List and Smart Charging keys, with their
/// accessibility as the OCTT checks it (TC_019_1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_019_1_cs_retrieve_all_configuration_keys() {
    let mut s = OcppStack::plain().await;
    let conf = s.csms.call_ok("GetConfiguration", json!({}));
    assert!(
        conf.get("unknownKey")
            .is_none_or(|u| u.as_array().unwrap().is_empty()),
        "{conf}"
    );
    let keys = conf["configurationKey"].as_array().expect("keys");
    let find = |k: &str| keys.iter().find(|e| e["key"] == k).cloned();
    // (key, readonly) — None: either.
    let expected: &[(&str, Option<bool>)] = &[
        ("AuthorizeRemoteTxRequests", None),
        ("ClockAlignedDataInterval", Some(false)),
        ("ConnectionTimeOut", Some(false)),
        ("ConnectorPhaseRotation", Some(false)),
        ("GetConfigurationMaxKeys", Some(true)),
        ("HeartbeatInterval", Some(false)),
        ("LocalAuthorizeOffline", Some(false)),
        ("LocalPreAuthorize", Some(false)),
        ("MeterValuesAlignedData", Some(false)),
        ("MeterValuesSampledData", Some(false)),
        ("MeterValueSampleInterval", Some(false)),
        ("NumberOfConnectors", Some(true)),
        ("ResetRetries", Some(false)),
        ("StopTransactionOnEVSideDisconnect", None),
        ("StopTransactionOnInvalidId", Some(false)),
        ("StopTxnAlignedData", Some(false)),
        ("StopTxnSampledData", Some(false)),
        ("SupportedFeatureProfiles", Some(true)),
        ("TransactionMessageAttempts", Some(false)),
        ("TransactionMessageRetryInterval", Some(false)),
        ("UnlockConnectorOnEVSideDisconnect", None),
        ("LocalAuthListEnabled", Some(false)),
        ("LocalAuthListMaxLength", Some(true)),
        ("SendLocalListMaxLength", Some(true)),
        ("ChargeProfileMaxStackLevel", Some(true)),
        ("ChargingScheduleAllowedChargingRateUnit", Some(true)),
        ("ChargingScheduleMaxPeriods", Some(true)),
        ("MaxChargingProfilesInstalled", Some(true)),
    ];
    let mut problems = Vec::new();
    for (key, readonly) in expected {
        match find(key) {
            None => problems.push(format!("{key} missing")),
            Some(e) => {
                if let Some(ro) = readonly
                    && e["readonly"] != *ro
                {
                    problems.push(format!("{key}: readonly should be {ro}: {e}"));
                }
                if e.get("value").is_none() {
                    problems.push(format!("{key}: no value"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(find("NumberOfConnectors").unwrap()["value"], "1");
    let profiles = find("SupportedFeatureProfiles").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    for p in [
        "Core",
        "LocalAuthListManagement",
        "Reservation",
        "SmartCharging",
        "RemoteTrigger",
    ] {
        assert!(
            profiles.split(',').any(|x| x.trim() == p),
            "{p} in {profiles}"
        );
    }
    assert!(
        !profiles.contains("FirmwareManagement"),
        "FirmwareManagement is not supported (NotSupported): {profiles}"
    );
    assert!(
        find("AuthorizationKey").is_none(),
        "AuthorizationKey is write-only"
    );
    // TC_019_1: the whole list fits GetConfigurationMaxKeys? No limit on "all".
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_019_2_cs_retrieve_specific_configuration_key() {
    let mut s = OcppStack::plain().await;
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["SupportedFeatureProfiles", "NoSuchKey"]}),
    );
    assert_eq!(
        conf["configurationKey"].as_array().unwrap().len(),
        1,
        "{conf}"
    );
    assert_eq!(
        conf["configurationKey"][0]["key"],
        "SupportedFeatureProfiles"
    );
    assert_eq!(conf["unknownKey"], json!(["NoSuchKey"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_021_cs_change_set_configuration() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok(
        "ChangeConfiguration",
        json!({"key": "MeterValueSampleInterval", "value": "7"}),
    );
    assert_eq!(status(&answer), "Accepted");
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["MeterValueSampleInterval"]}),
    );
    assert_eq!(conf["configurationKey"][0]["value"], "7");
    // Read-only keys cannot be changed (§5.3: Rejected).
    let answer = s.csms.call_ok(
        "ChangeConfiguration",
        json!({"key": "NumberOfConnectors", "value": "4"}),
    );
    assert_eq!(status(&answer), "Rejected");
    // A CSMS value persists across a restart of the service.
    s.stack.kill_ocpp();
    let m = s.csms.mark();
    s.stack.restart_ocpp();
    s.csms.wait_accepted(m);
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["MeterValueSampleInterval"]}),
    );
    assert_eq!(conf["configurationKey"][0]["value"], "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_040_1_cs_configuration_key_not_supported() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok(
        "ChangeConfiguration",
        json!({"key": "Testing", "value": "true"}),
    );
    assert_eq!(status(&answer), "NotSupported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_040_2_cs_configuration_key_invalid_value() {
    let mut s = OcppStack::plain().await;
    match s.csms.call(
        "ChangeConfiguration",
        json!({"key": "MeterValueSampleInterval", "value": "-1"}),
    ) {
        Ok(answer) => assert_eq!(status(&answer), "Rejected"),
        Err((code, _)) => assert_eq!(code, "PropertyConstraintViolation"),
    }
}

/// GetConfigurationMaxKeys bounds a request's key list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_configuration_beyond_max_keys() {
    let mut s = OcppStack::plain().await;
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["GetConfigurationMaxKeys"]}),
    );
    let max: usize = conf["configurationKey"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let keys: Vec<String> = (0..=max).map(|i| format!("Key{i}")).collect();
    match s.csms.call("GetConfiguration", json!({"key": keys})) {
        // Either refused as a whole, or answered for at most max keys.
        Err((code, _)) => assert_eq!(code, "PropertyConstraintViolation"),
        Ok(answer) => {
            let n = answer["unknownKey"].as_array().map_or(0, Vec::len)
                + answer["configurationKey"].as_array().map_or(0, Vec::len);
            assert!(n <= max, "{n} keys answered, GetConfigurationMaxKeys {max}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_023_1_cs_start_charging_session_authorize_invalid() {
    authorize_not_accepted("BAD-TOKEN", "Invalid", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_023_2_cs_start_charging_session_authorize_expired() {
    authorize_not_accepted("OLD-TOKEN", "Expired", &["OLD-TOKEN=Expired"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_023_3_cs_start_charging_session_authorize_blocked() {
    authorize_not_accepted("BLOCKED-TOKEN", "Blocked", &["BLOCKED-TOKEN=Blocked"]).await;
}

async fn authorize_not_accepted(tag: &str, want: &str, accept: &[&str]) {
    let mut accept_list: Vec<String> = accept.iter().map(|s| s.to_string()).collect();
    accept_list.push(TOKEN.into());
    let mut s = OcppStack::start(
        CsmsOptions {
            accept: accept_list,
            ..Default::default()
        },
        |o| o,
    )
    .await;
    let m = s.csms.mark();
    s.plug().await;
    s.wait_status(m, "Preparing");
    let answer = s.stack.evse().await.present_token(tag).await.unwrap();
    assert_eq!(answer, want, "evse hears the CSMS's verdict");
    s.csms
        .wait_event_since(m, "Authorize", |p| p["idTag"] == tag);
    // The accepted card still works afterwards: proof the invalid one
    // started nothing in between.
    s.swipe(TOKEN).await;
    let (_, _, start) = s.wait_start(m);
    assert_eq!(start["idTag"], TOKEN);
    assert_eq!(s.csms.payloads("StartTransaction").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_026_cs_remote_start_charging_session_rejected() {
    let mut s = OcppStack::plain().await;
    let _ = s.charging().await;
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": OTHER}),
    );
    assert_eq!(
        status(&answer),
        "Rejected",
        "a transaction runs on connector 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_027_cs_remote_start_transaction_connector_id_zero() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 0, "idTag": TOKEN}),
    );
    assert_eq!(
        status(&answer),
        "Rejected",
        "§5.11: connectorId SHALL be > 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_028_cs_remote_stop_transaction_rejected() {
    let mut s = OcppStack::plain().await;
    let answer = s
        .csms
        .call_ok("RemoteStopTransaction", json!({"transactionId": 4242}));
    assert_eq!(status(&answer), "Rejected");
}

/// A remote start on an Unavailable connector cannot start a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_start_on_an_unavailable_connector_is_rejected() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    let answer = s.csms.call_ok(
        "ChangeAvailability",
        json!({"connectorId": 1, "type": "Inoperative"}),
    );
    assert_eq!(status(&answer), "Accepted");
    s.wait_status(m, "Unavailable");
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": TOKEN}),
    );
    assert_eq!(
        status(&answer),
        "Rejected",
        "§5.11: the station cannot start a transaction there"
    );
}

/// §5.2 ChangeAvailability: Inoperative/Operative; Scheduled while a
/// transaction runs, applied after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_availability_now_and_scheduled() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    let answer = s.csms.call_ok(
        "ChangeAvailability",
        json!({"connectorId": 1, "type": "Inoperative"}),
    );
    assert_eq!(status(&answer), "Accepted");
    s.wait_status(m, "Unavailable");
    let answer = s.csms.call_ok(
        "ChangeAvailability",
        json!({"connectorId": 0, "type": "Operative"}),
    );
    assert_eq!(status(&answer), "Accepted");
    s.wait_status(m, "Available");

    let (m2, tx) = s.charging().await;
    let answer = s.csms.call_ok(
        "ChangeAvailability",
        json!({"connectorId": 1, "type": "Inoperative"}),
    );
    assert_eq!(status(&answer), "Scheduled");
    s.swipe(TOKEN).await;
    s.wait_stop(m2, tx);
    s.unplug().await;
    s.wait_status(m2, "Unavailable");
    // An unknown connector.
    let answer = s.csms.call_ok(
        "ChangeAvailability",
        json!({"connectorId": 3, "type": "Operative"}),
    );
    assert_eq!(status(&answer), "Rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_044_cs_firmware_update_not_supported() {
    let mut s = OcppStack::plain().await;
    let err = s
        .csms
        .call(
            "UpdateFirmware",
            json!({"location": "https://example.com/fw.bin", "retrieveDate": "2030-01-01T00:00:00Z"}),
        )
        .expect_err("no firmware management");
    assert_eq!(err.0, "NotSupported", "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_045_1_cs_get_diagnostics_not_supported() {
    let mut s = OcppStack::plain().await;
    let err = s
        .csms
        .call(
            "GetDiagnostics",
            json!({"location": "ftp://example.com/diag"}),
        )
        .expect_err("no diagnostics upload");
    assert_eq!(err.0, "NotSupported", "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_054_cs_trigger_message() {
    let mut s = OcppStack::plain().await;
    let _ = s.charging().await;
    // MeterValues last, after the meter published readings that ocpp heard
    // too (trigger_meter_values_right_after_the_start covers the moments
    // before).
    s.wait_readings(2).await;
    let triggers = [
        ("Heartbeat", "Heartbeat"),
        ("StatusNotification", "StatusNotification"),
        (
            "DiagnosticsStatusNotification",
            "DiagnosticsStatusNotification",
        ),
        ("FirmwareStatusNotification", "FirmwareStatusNotification"),
        ("BootNotification", "BootNotification"),
        ("MeterValues", "MeterValues"),
    ];
    for (trigger, action) in triggers {
        let m = s.csms.mark();
        let answer = s.csms.call_ok(
            "TriggerMessage",
            json!({"requestedMessage": trigger, "connectorId": 1}),
        );
        assert_eq!(status(&answer), "Accepted", "{trigger}");
        let p = s.csms.next_event(m, action);
        match action {
            "MeterValues" => {
                assert_eq!(p["connectorId"], 1);
                let sv = &p["meterValue"][0]["sampledValue"];
                assert!(
                    sv.as_array()
                        .unwrap()
                        .iter()
                        .all(|v| v["context"] == "Trigger"),
                    "§5.17: context Trigger: {p}"
                );
                assert!(
                    p.get("transactionId").is_some(),
                    "during a transaction: {p}"
                );
            }
            "StatusNotification" => {
                assert_eq!(p["connectorId"], 1);
                assert_eq!(p["status"], "Charging");
            }
            "DiagnosticsStatusNotification" | "FirmwareStatusNotification" => {
                assert_eq!(p["status"], "Idle", "nothing under way: {p}")
            }
            _ => {}
        }
    }
}

/// §5.17: an Accepted trigger is followed by the message, also in the
/// first moments after the start, before ocpp heard a Meter1 reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_meter_values_right_after_the_start() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    let answer = s.csms.call_ok(
        "TriggerMessage",
        json!({"requestedMessage": "MeterValues", "connectorId": 1}),
    );
    if status(&answer) == "Accepted" {
        let p = s.csms.next_event(m, "MeterValues");
        assert_eq!(p["connectorId"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_055_cs_trigger_message_rejected() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    let answer = s.csms.call_ok(
        "TriggerMessage",
        json!({"requestedMessage": "MeterValues", "connectorId": 2}),
    );
    assert_eq!(
        status(&answer),
        "Rejected",
        "connectorId is NumberOfConnectors + 1"
    );
    // The requested message is not sent: a later trigger's message comes
    // first.
    s.csms
        .call_ok("TriggerMessage", json!({"requestedMessage": "Heartbeat"}));
    s.csms.next_event(m, "Heartbeat");
    assert!(
        s.csms
            .events_since(m)
            .iter()
            .all(|e| e["action"] != "MeterValues"),
        "no MeterValues after a rejected trigger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_062_cs_data_transfer_to_the_central_system() {
    let mut s = OcppStack::plain().await;
    s.csms.set("datatransfer", "Accepted,pong");
    let ocpp = s.stack.ocpp().await;
    let (st, data) = ocpp
        .data_transfer("org.evos.test", "ping", "hello")
        .await
        .unwrap();
    assert_eq!((st.as_str(), data.as_str()), ("Accepted", "pong"));
    let p = s.csms.wait_event("DataTransfer", |_| true);
    assert_eq!(
        p,
        json!({"vendorId": "org.evos.test", "messageId": "ping", "data": "hello"})
    );
    s.csms.set("datatransfer", "UnknownVendorId");
    let (st, _) = ocpp.data_transfer("org.other", "", "").await.unwrap();
    assert_eq!(st, "UnknownVendorId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_064_cs_data_transfer_to_a_charge_point() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok(
        "DataTransfer",
        json!({"vendorId": "com.example.unknown", "messageId": "x", "data": "y"}),
    );
    assert!(
        matches!(
            status(&answer),
            "UnknownVendorId" | "Rejected" | "UnknownMessageId"
        ),
        "{answer}"
    );
}

/// §4.9 StatusNotification for a fault: Faulted with the §7.6 error code,
/// and back when it clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_notification_reports_faults_with_error_codes() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    s.plug().await;
    s.stack.sim().await.fault(1, "rcd").await.unwrap();
    let (_, f) = s
        .csms
        .wait_event_since(m, "StatusNotification", |p| p["status"] == "Faulted");
    assert_eq!(f["payload"]["errorCode"], "GroundFailure", "{f}");
    s.stack.sim().await.clear(1).await.unwrap();
    s.wait_status(m, "Preparing");
}

/// An unknown tag at the reader is asked about and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_at_the_reader_never_reaches_start_transaction() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    s.swipe("NOBODY").await;
    s.csms
        .wait_event_since(m, "Authorize", |p| p["idTag"] == "NOBODY");
    s.plug().await;
    s.wait_status(m, "Preparing");
    let answer = s
        .csms
        .call_ok("TriggerMessage", json!({"requestedMessage": "Heartbeat"}));
    assert_eq!(status(&answer), "Accepted");
    s.csms.next_event(m, "Heartbeat");
    assert!(s.csms.payloads("StartTransaction").is_empty());
}
