//! End-to-end tests of the OCPP 1.6J client against an independent CSMS:
//! connection loss and offline operation (OCPP 1.6 §3.5 local
//! authorization, §4.10 transaction-related messages), the local
//! authorization list (§5.10, §5.15) and cache (§5.4), and kill -9 of the
//! ocpp process (ARCHITECTURE.md: transaction messages at least once, in
//! order, never lost; a re-send carries the same content).

mod harness;

use harness::csms::{CsmsOptions, OcppStack, unix_ms};
use harness::{DEADLINE, TOKEN};
use serde_json::{Value, json};

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

fn is_tx_message(e: &Value) -> bool {
    matches!(
        e["action"].as_str(),
        Some("StartTransaction" | "StopTransaction")
    ) || (e["action"] == "MeterValues" && e["payload"].get("transactionId").is_some())
}

/// Equal once every `timestamp` is taken out: the same message, maybe
/// stamped anew.
fn same_but_stamps(a: &Value, b: &Value) -> bool {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| k.as_str() != "timestamp")
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    strip(a) == strip(b)
}

/// Install a full local list with `TOKEN` (and `extra`) Accepted.
fn local_list(s: &mut OcppStack, version: i64, extra: &[&str]) {
    let mut entries = vec![json!({"idTag": TOKEN, "idTagInfo": {"status": "Accepted"}})];
    for tag in extra {
        entries.push(json!({"idTag": tag, "idTagInfo": {"status": "Accepted"}}));
    }
    let answer = s.csms.call_ok(
        "SendLocalList",
        json!({"listVersion": version, "updateType": "Full", "localAuthorizationList": entries}),
    );
    assert_eq!(status(&answer), "Accepted", "{answer}");
}

/// Take the CSMS away and wait until the station noticed.
async fn go_offline(s: &mut OcppStack) -> usize {
    use futures_util::StreamExt;
    let m = s.csms.mark();
    s.csms.offline();
    let ocpp = s.stack.ocpp().await;
    let mut changes = ocpp.receive_connection_state_changed().await;
    let r = tokio::time::timeout(DEADLINE, async {
        while ocpp.connection_state().await.unwrap() == "Connected" {
            changes.next().await.expect("property stream");
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the station did not notice the lost connection within {DEADLINE:?}"
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_036_cs_connection_loss_during_transaction() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("MeterValueSampleInterval", "1")
    })
    .await;
    let (_, tx) = s.charging().await;
    let off = go_offline(&mut s).await;
    // Samples pile up in the queue meanwhile.
    s.wait_queued(">= 2", |n| n >= 2).await;
    let reconnect = s.csms.mark();
    s.csms.online();
    s.csms.wait_connect(reconnect);
    s.wait_queued("0", |n| n == 0).await;
    let after = s.csms.events_since(off);
    assert!(
        after.iter().all(|e| e["action"] != "BootNotification"),
        "a reconnect is no reboot: no BootNotification: {after:?}"
    );
    let queued: Vec<&Value> = after
        .iter()
        .filter(|e| e["action"] == "MeterValues")
        .collect();
    assert!(
        queued.len() >= 2,
        "the offline samples were delivered: {after:?}"
    );
    for mv in &queued {
        assert_eq!(mv["payload"]["transactionId"], tx, "{mv}");
        assert_eq!(mv["payload"]["connectorId"], 1);
    }
    // Delivered in order.
    let stamps: Vec<i64> = queued
        .iter()
        .map(|e| unix_ms(e["payload"]["meterValue"][0]["timestamp"].as_str().unwrap()))
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "in order: {stamps:?}"
    );
    let m = s.csms.mark();
    s.swipe(TOKEN).await;
    s.wait_stop(m, tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_037_1_cs_offline_start_transaction() {
    let mut s = OcppStack::plain().await;
    local_list(&mut s, 1, &[]);
    let off = go_offline(&mut s).await;
    s.plug().await;
    s.swipe(TOKEN).await;
    s.wait_evse("Charging").await;
    let offline_since = harness::csms::now_ms();
    s.wait_queued(">= 1", |n| n >= 1).await;
    s.csms.online();
    let (_, tx, start) = s.wait_start(off);
    assert_eq!(start["idTag"], TOKEN);
    let stamped = unix_ms(start["timestamp"].as_str().unwrap());
    assert!(
        stamped <= offline_since + 500,
        "StartTransaction carries the time the transaction started offline: {start}"
    );
    s.wait_status(off, "Charging");
    let m = s.csms.mark();
    s.swipe(TOKEN).await;
    s.wait_stop(m, tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_038_cs_offline_stop_transaction() {
    let mut s = OcppStack::plain().await;
    let (_, tx) = s.charging().await;
    let off = go_offline(&mut s).await;
    s.swipe(TOKEN).await;
    s.wait_evse("Finishing").await;
    s.wait_queued(">= 1", |n| n >= 1).await;
    s.csms.online();
    let (_, stop) = s.wait_stop(off, tx);
    assert_eq!(stop["idTag"], TOKEN);
    s.wait_queued("0", |n| n == 0).await;
    assert_eq!(s.csms.payloads("StopTransaction").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_039_cs_offline_transaction() {
    let mut s = OcppStack::plain().await;
    local_list(&mut s, 1, &[]);
    let off = go_offline(&mut s).await;
    s.plug().await;
    s.swipe(TOKEN).await;
    s.wait_evse("Charging").await;
    harness::wait_energy_above(&s.stack.evse().await, 20.0).await;
    s.swipe(TOKEN).await;
    s.wait_evse("Finishing").await;
    s.wait_queued(">= 2", |n| n >= 2).await;
    s.csms.online();
    let (i, tx, start) = s.wait_start(off);
    let (j, stop) = s.wait_stop(i, tx);
    assert!(i < j);
    assert!(stop["meterStop"].as_i64().unwrap() > start["meterStart"].as_i64().unwrap());
    assert!(
        unix_ms(stop["timestamp"].as_str().unwrap())
            >= unix_ms(start["timestamp"].as_str().unwrap())
    );
}

/// A whole session while the CSMS is down, for a tag nobody knows
/// (AllowOfflineTxForUnknownId): StartTransaction, MeterValues and
/// StopTransaction are all delivered afterwards, in order, and the later
/// ones carry the transactionId from the StartTransaction.conf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_session_while_the_csms_is_down() {
    let walk_in = "WALK-IN-1";
    let mut s = OcppStack::start(
        CsmsOptions {
            accept: vec![TOKEN.into(), walk_in.into()],
            first_tx: 500,
            ..Default::default()
        },
        |o| {
            o.key("AllowOfflineTxForUnknownId", "true")
                .key("MeterValueSampleInterval", "1")
                .key("LocalAuthListEnabled", "false")
        },
    )
    .await;
    let off = go_offline(&mut s).await;
    s.plug().await;
    s.swipe(walk_in).await;
    s.wait_evse("Charging").await;
    s.wait_queued(">= 3 (start and samples)", |n| n >= 3).await;
    s.swipe(walk_in).await;
    s.wait_evse("Finishing").await;
    s.csms.online();
    let (_, tx, _) = s.wait_start(off);
    s.wait_stop(off, tx);
    s.wait_queued("0", |n| n == 0).await;

    let tx_messages: Vec<Value> = s
        .csms
        .events_since(off)
        .into_iter()
        .filter(is_tx_message)
        .collect();
    assert_eq!(
        tx_messages[0]["action"], "StartTransaction",
        "{tx_messages:?}"
    );
    assert_eq!(tx_messages.last().unwrap()["action"], "StopTransaction");
    assert_eq!(s.csms.payloads("StartTransaction").len(), 1);
    assert_eq!(s.csms.payloads("StopTransaction").len(), 1);
    for (i, a) in tx_messages.iter().enumerate() {
        for b in &tx_messages[i + 1..] {
            assert_ne!(a["payload"], b["payload"], "delivered twice: {a}");
        }
    }
    let tx = tx_messages[0]["reply"]["transactionId"].as_i64().unwrap();
    assert_eq!(tx, 500);
    let start_ms = unix_ms(tx_messages[0]["payload"]["timestamp"].as_str().unwrap());
    let stop = &tx_messages.last().unwrap()["payload"];
    let stop_ms = unix_ms(stop["timestamp"].as_str().unwrap());
    let mut last = start_ms;
    for e in &tx_messages[1..] {
        assert_eq!(
            e["payload"]["transactionId"], tx,
            "§4.10: the CSMS's transactionId: {e}"
        );
        if e["action"] == "MeterValues" {
            let t = unix_ms(e["payload"]["meterValue"][0]["timestamp"].as_str().unwrap());
            assert!(
                last <= t && t <= stop_ms,
                "in order, within the transaction: {e}"
            );
            last = t;
        }
    }
    assert!(tx_messages.len() >= 3, "some MeterValues: {tx_messages:?}");
    assert_eq!(stop["idTag"], walk_in);
}

/// §9.1 StopTransactionOnInvalidId: a transaction started offline for a
/// tag the CSMS then calls Invalid (StartTransaction.conf) is stopped,
/// reason DeAuthorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_start_for_a_tag_the_csms_rejects_is_deauthorized() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("AllowOfflineTxForUnknownId", "true")
            .key("LocalAuthListEnabled", "false")
    })
    .await;
    let off = go_offline(&mut s).await;
    s.plug().await;
    s.swipe("STRANGER").await;
    s.wait_evse("Charging").await;
    s.csms.online();
    let (_, tx, start) = s.wait_start(off);
    assert_eq!(start["idTag"], "STRANGER");
    let (_, stop) = s.wait_stop(off, tx);
    assert_eq!(stop["reason"], "DeAuthorized", "{stop}");
}

/// kill -9 of ocpp mid-transaction: after the restart, one StartTransaction
/// and one StopTransaction for the session; only the message in flight at
/// the kill may be sent again, once, with the same content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_ocpp_mid_transaction() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("MeterValueSampleInterval", "1")
    })
    .await;
    let (m, tx) = s.charging().await;
    let (i, _) = s
        .csms
        .wait_event_since(m, "MeterValues", |p| p["transactionId"] == tx);
    // A later CALL proves the first was settled (one CALL at a time, §4.1.1).
    s.csms
        .wait_event_since(i + 1, "MeterValues", |p| p["transactionId"] == tx);
    s.stack.kill_ocpp();
    let before: Vec<Value> = s.csms.events();
    let k = s.csms.mark();
    s.stack.restart_ocpp();
    s.csms.wait_accepted(k);
    s.csms
        .wait_event_since(k, "MeterValues", |p| p["transactionId"] == tx);
    let m2 = s.csms.mark();
    s.swipe(TOKEN).await;
    let (_, stop) = s.wait_stop(m2, tx);
    s.wait_queued("0", |n| n == 0).await;

    assert_eq!(
        s.csms.payloads("StartTransaction").len(),
        1,
        "no second StartTransaction"
    );
    assert_eq!(s.csms.payloads("StopTransaction").len(), 1);
    assert_eq!(stop["transactionId"], tx);
    let in_flight = before.iter().rev().find(|e| is_tx_message(e)).cloned();
    let mut resent = 0;
    for e in s.csms.events_since(k).iter().filter(|e| is_tx_message(e)) {
        if let Some(old) = before
            .iter()
            .find(|b| b["action"] == e["action"] && same_but_stamps(&b["payload"], &e["payload"]))
        {
            assert_eq!(
                Some(old),
                in_flight.as_ref(),
                "only the message in flight at the kill may be sent again: {e}"
            );
            assert_eq!(
                old["payload"], e["payload"],
                "a re-send carries the same content"
            );
            resent += 1;
        }
    }
    assert!(resent <= 1, "the one in flight re-sent at most once");
}

/// The CSMS got the StopTransaction but the station died before the answer:
/// it is sent again after the restart, with the same content, and once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_ocpp_with_the_stop_transaction_in_flight() {
    let mut s = OcppStack::plain().await;
    let (m, tx) = s.charging().await;
    s.csms.set("noreply", "StopTransaction");
    s.swipe(TOKEN).await;
    let (_, first) = s
        .csms
        .wait_event_since(m, "StopTransaction", |p| p["transactionId"] == tx);
    s.stack.kill_ocpp();
    s.csms.set("noreply", "");
    let k = s.csms.mark();
    s.stack.restart_ocpp();
    let (_, again) = s.wait_stop(k, tx);
    s.wait_queued("0", |n| n == 0).await;
    assert_eq!(
        again, first["payload"],
        "the re-send carries the same content"
    );
    assert_eq!(
        s.csms.payloads("StopTransaction").len(),
        2,
        "sent, then re-sent once"
    );
    assert_eq!(s.csms.payloads("StartTransaction").len(), 1);
    // §4.2: the restart is a boot; the re-send only after Accepted.
    let after = s.csms.events_since(k);
    assert_eq!(after[0]["action"], "BootNotification", "{after:?}");
}

/// The session ends while ocpp is dead: the restarted service learns it
/// from evse and sends one StopTransaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_ocpp_then_the_session_ends_before_the_restart() {
    let mut s = OcppStack::plain().await;
    let (_, tx) = s.charging().await;
    s.stack.kill_ocpp();
    s.unplug().await;
    s.wait_evse("Available").await;
    let k = s.csms.mark();
    s.stack.restart_ocpp();
    let (_, stop) = s.wait_stop(k, tx);
    assert_eq!(stop["reason"], "EVDisconnected", "{stop}");
    s.wait_queued("0", |n| n == 0).await;
    assert_eq!(s.csms.payloads("StopTransaction").len(), 1);
    assert_eq!(s.csms.payloads("StartTransaction").len(), 1);
}

/// Between the session's end and the StopTransaction's delivery (the CSMS
/// is down), kill -9: the persisted stop is delivered once after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_ocpp_between_the_end_and_the_delivery_of_the_stop() {
    let mut s = OcppStack::plain().await;
    let (_, tx) = s.charging().await;
    go_offline(&mut s).await;
    s.swipe(TOKEN).await;
    s.wait_evse("Finishing").await;
    s.wait_queued(">= 1", |n| n >= 1).await;
    s.stack.kill_ocpp();
    let k = s.csms.mark();
    s.stack.restart_ocpp();
    s.csms.online();
    let (_, stop) = s.wait_stop(k, tx);
    assert_eq!(stop["idTag"], TOKEN);
    s.wait_queued("0", |n| n == 0).await;
    assert_eq!(s.csms.payloads("StopTransaction").len(), 1);
    assert_eq!(s.csms.payloads("StartTransaction").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_042_1_cs_get_local_list_version_not_supported() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok(
        "ChangeConfiguration",
        json!({"key": "LocalAuthListEnabled", "value": "false"}),
    );
    assert_eq!(status(&answer), "Accepted");
    match s.csms.call("GetLocalListVersion", json!({})) {
        Ok(answer) => assert_eq!(answer["listVersion"], -1),
        Err((code, _)) => assert_eq!(code, "NotSupported"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_042_2_cs_get_local_list_version_empty() {
    let mut s = OcppStack::plain().await;
    let answer = s.csms.call_ok("GetLocalListVersion", json!({}));
    assert_eq!(answer["listVersion"], 0, "§5.10: 0 means no list");
}

/// §5.15: Full, Differential (add, change, remove), version mismatch,
/// too long; the list survives a restart and authorizes locally
/// (LocalPreAuthorize: no Authorize.req for a listed tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_043_cs_send_local_authorization_list() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("LocalPreAuthorize", "true")
    })
    .await;
    let answer = s.csms.call_ok(
        "SendLocalList",
        json!({"listVersion": 3, "updateType": "Full", "localAuthorizationList": [
            {"idTag": TOKEN, "idTagInfo": {"status": "Accepted"}},
            {"idTag": "LISTED-BLOCKED", "idTagInfo": {"status": "Blocked"}},
            {"idTag": "GONE-SOON", "idTagInfo": {"status": "Accepted"}},
        ]}),
    );
    assert_eq!(status(&answer), "Accepted");
    assert_eq!(
        s.csms.call_ok("GetLocalListVersion", json!({}))["listVersion"],
        3
    );

    // Differential: add one, remove one (no idTagInfo).
    let answer = s.csms.call_ok(
        "SendLocalList",
        json!({"listVersion": 4, "updateType": "Differential", "localAuthorizationList": [
            {"idTag": "NEW-ONE", "idTagInfo": {"status": "Accepted"}},
            {"idTag": "GONE-SOON"},
        ]}),
    );
    assert_eq!(status(&answer), "Accepted");
    assert_eq!(
        s.csms.call_ok("GetLocalListVersion", json!({}))["listVersion"],
        4
    );

    // A differential update not newer than the list: VersionMismatch.
    let answer = s.csms.call_ok(
        "SendLocalList",
        json!({"listVersion": 4, "updateType": "Differential", "localAuthorizationList": [
            {"idTag": "LATE", "idTagInfo": {"status": "Accepted"}},
        ]}),
    );
    assert_eq!(status(&answer), "VersionMismatch");

    // Longer than SendLocalListMaxLength: Failed, the list unchanged.
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["SendLocalListMaxLength"]}),
    );
    let max: usize = conf["configurationKey"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let long: Vec<Value> = (0..=max)
        .map(|i| json!({"idTag": format!("T{i}"), "idTagInfo": {"status": "Accepted"}}))
        .collect();
    let answer = s.csms.call_ok(
        "SendLocalList",
        json!({"listVersion": 9, "updateType": "Full", "localAuthorizationList": long}),
    );
    assert_eq!(status(&answer), "Failed");
    assert_eq!(
        s.csms.call_ok("GetLocalListVersion", json!({}))["listVersion"],
        4
    );

    // The list persists.
    s.stack.kill_ocpp();
    let k = s.csms.mark();
    s.stack.restart_ocpp();
    s.csms.wait_accepted(k);
    assert_eq!(
        s.csms.call_ok("GetLocalListVersion", json!({}))["listVersion"],
        4
    );

    // Listed tags are decided locally: no Authorize.req (§3.5.2 LocalPreAuthorize).
    let evse = s.stack.evse().await;
    // Listed but not Accepted: the station may ask the CSMS (§3.5); it is
    // not accepted either way.
    assert_ne!(
        evse.present_token("LISTED-BLOCKED").await.unwrap(),
        "Accepted"
    );
    let m = s.csms.mark();
    s.plug().await;
    s.swipe("NEW-ONE").await;
    let (_, _, start) = s.wait_start(m);
    assert_eq!(start["idTag"], "NEW-ONE");
    assert!(
        s.csms
            .events_since(m)
            .iter()
            .all(|e| e["action"] != "Authorize"),
        "listed tags need no Authorize.req"
    );
}

/// §5.4 ClearCache: a cached tag is accepted offline before, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_061_cs_clear_authorization_data_in_authorization_cache() {
    let mut s = OcppStack::start(CsmsOptions::default(), |o| {
        o.key("LocalAuthListEnabled", "false")
            .key("AllowOfflineTxForUnknownId", "false")
    })
    .await;
    // Authorizations without an EV give up after a second (set by the
    // CSMS, which applies it to evse at once).
    let answer = s.csms.call_ok(
        "ChangeConfiguration",
        json!({"key": "ConnectionTimeOut", "value": "1"}),
    );
    assert_eq!(status(&answer), "Accepted");
    let evse = s.stack.evse().await;
    // Online: the CSMS accepts it, the cache remembers.
    assert_eq!(evse.present_token(TOKEN).await.unwrap(), "Accepted");
    s.wait_evse("Available").await;
    go_offline(&mut s).await;
    assert_eq!(
        evse.present_token(TOKEN).await.unwrap(),
        "Accepted",
        "offline, from the authorization cache"
    );
    s.wait_evse("Available").await;
    let back = s.csms.mark();
    s.csms.online();
    s.csms.wait_connect(back);
    s.wait_connection("Connected").await;
    let answer = s.csms.call_ok("ClearCache", json!({}));
    assert_eq!(status(&answer), "Accepted");
    go_offline(&mut s).await;
    assert_eq!(
        evse.present_token(TOKEN).await.unwrap(),
        "Invalid",
        "offline after ClearCache: unknown, and AllowOfflineTxForUnknownId is false"
    );
}
