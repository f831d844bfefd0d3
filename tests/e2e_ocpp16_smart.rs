//! End-to-end tests of the OCPP 1.6J client against an independent CSMS:
//! the Smart Charging profile (OCPP 1.6 §3.13, §5.16 SetChargingProfile,
//! §5.7 GetCompositeSchedule, §5.5 ClearChargingProfile). Composite
//! schedules are checked period by period against values computed by hand
//! here; the limit ocpp pushes to evse (`Evse1.ChargingLimit`) is watched
//! across period boundaries.
//!
//! The station: 230 V, 3 phases, so 1 A = 690 W (numberPhases absent = 3).

mod harness;

use futures_util::StreamExt;
use harness::csms::{OcppStack, iso, now_ms, unix_ms};
use harness::{DEADLINE, TOKEN};
use serde_json::{Value, json};

const W_PER_A: f64 = 230.0 * 3.0;

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

fn set_profile(s: &mut OcppStack, connector: i64, profile: Value) -> String {
    let answer = s.csms.call_ok(
        "SetChargingProfile",
        json!({"connectorId": connector, "csChargingProfiles": profile}),
    );
    status(&answer).to_owned()
}

fn amps((value, unit): &(f64, String)) -> Option<f64> {
    match unit.as_str() {
        "A" => Some(*value),
        "W" => Some(*value / W_PER_A),
        _ => None,
    }
}

/// Wait until evse's ChargingLimit is `want` A (None: no limit); returns
/// when it was seen (Unix ms).
async fn wait_limit(s: &OcppStack, want: Option<f64>) -> i64 {
    let evse = s.stack.evse().await;
    let mut changes = evse.receive_charging_limit_changed().await;
    let r = tokio::time::timeout(DEADLINE, async {
        loop {
            let now = amps(&evse.charging_limit().await.unwrap());
            let ok = match (now, want) {
                (Some(a), Some(b)) => (a - b).abs() < 0.1,
                (None, None) => true,
                _ => false,
            };
            if ok {
                return now_ms();
            }
            changes.next().await.expect("property stream");
        }
    })
    .await;
    let last = evse.charging_limit().await.unwrap();
    r.unwrap_or_else(|_| {
        panic!("ChargingLimit never became {want:?} A within {DEADLINE:?}; it is {last:?}")
    })
}

/// Check a GetCompositeSchedule.conf: `expected` are (absolute start in
/// Unix ms, limit in A) of the hand-computed segments, in order; segments
/// that began before scheduleStart fold into period 0. Starts may be off by
/// a second (the schedule counts whole seconds from scheduleStart).
fn check_composite(answer: &Value, unit: &str, expected: &[(i64, f64)], what: &str) {
    assert_eq!(status(answer), "Accepted", "{what}: {answer}");
    let schedule = &answer["chargingSchedule"];
    assert_eq!(schedule["chargingRateUnit"], unit, "{what}: {answer}");
    let start = unix_ms(
        answer["scheduleStart"]
            .as_str()
            .or(schedule["startSchedule"].as_str())
            .unwrap_or_else(|| panic!("{what}: no scheduleStart: {answer}")),
    );
    let factor = if unit == "W" { W_PER_A } else { 1.0 };
    let mut want: Vec<(f64, f64)> = Vec::new();
    for (abs, limit) in expected {
        let offset = ((abs - start) as f64 / 1000.0).max(0.0);
        if offset == 0.0 {
            want.clear();
        }
        want.push((offset, limit * factor));
    }
    let periods = schedule["chargingSchedulePeriod"]
        .as_array()
        .expect("periods");
    let got: Vec<(f64, f64)> = periods
        .iter()
        .map(|p| {
            (
                p["startPeriod"].as_f64().unwrap(),
                p["limit"].as_f64().unwrap(),
            )
        })
        .collect();
    let report = format!(
        "{what}:\n  expected (s from scheduleStart, limit) {want:?}\n  got {got:?}\n  {answer}"
    );
    assert_eq!(got.len(), want.len(), "{report}");
    for ((gs, gl), (ws, wl)) in got.iter().zip(&want) {
        assert!((gs - ws).abs() <= 1.0, "period start: {report}");
        assert!(
            (gl - wl).abs() <= 0.1 * factor.max(1.0),
            "period limit: {report}"
        );
    }
}

fn composite(s: &mut OcppStack, connector: i64, duration: i64, unit: &str) -> Value {
    s.csms.call_ok(
        "GetCompositeSchedule",
        json!({"connectorId": connector, "duration": duration, "chargingRateUnit": unit}),
    )
}

fn profile(id: i64, level: i64, purpose: &str, kind: &str, schedule: Value) -> Value {
    json!({
        "chargingProfileId": id,
        "stackLevel": level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_056_cs_central_smart_charging_tx_default_profile() {
    let mut s = OcppStack::plain().await;
    let p = profile(
        1,
        0,
        "TxDefaultProfile",
        "Relative",
        json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.0}]}),
    );
    assert_eq!(set_profile(&mut s, 1, p), "Accepted");
    let _ = s.charging().await;
    wait_limit(&s, Some(6.0)).await;
    let world = s.stack.sim_evse().await;
    assert!(
        (world.offered_a - 6.0).abs() < 0.2,
        "PWM offers the limit: {world:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_057_cs_central_smart_charging_tx_profile() {
    let mut s = OcppStack::plain().await;
    let (_, tx) = s.charging().await;
    let now = now_ms();
    let mut p = profile(
        2,
        0,
        "TxProfile",
        "Absolute",
        json!({
            "duration": 3600,
            "startSchedule": iso(now - 1000),
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8.0}],
        }),
    );
    p["transactionId"] = json!(tx);
    p["validFrom"] = json!(iso(now - 60_000));
    p["validTo"] = json!(iso(now + 3_600_000));
    assert_eq!(set_profile(&mut s, 1, p), "Accepted");
    wait_limit(&s, Some(8.0)).await;
    let c = composite(&mut s, 1, 60, "A");
    check_composite(&c, "A", &[(0, 8.0)], "TxProfile 8 A");
    // The transaction ends: its TxProfile goes with it (§3.13.4).
    let m = s.csms.mark();
    s.swipe(TOKEN).await;
    s.wait_stop(m, tx);
    let c = composite(&mut s, 1, 60, "A");
    let periods = c["chargingSchedule"]["chargingSchedulePeriod"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        periods
            .iter()
            .all(|p| (p["limit"].as_f64().unwrap() - 8.0).abs() > 0.01),
        "the TxProfile is gone with its transaction: {c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_058_1_cs_central_smart_charging_no_ongoing_transaction() {
    let mut s = OcppStack::plain().await;
    let mut p = profile(
        3,
        0,
        "TxProfile",
        "Relative",
        json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8.0}]}),
    );
    p["transactionId"] = json!(77);
    match s.csms.call(
        "SetChargingProfile",
        json!({"connectorId": 1, "csChargingProfiles": p}),
    ) {
        Ok(answer) => assert_eq!(status(&answer), "Rejected"),
        Err((code, _)) => assert_eq!(code, "PropertyConstraintViolation"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_058_2_cs_central_smart_charging_wrong_transaction_id() {
    let mut s = OcppStack::plain().await;
    let (_, tx) = s.charging().await;
    let mut p = profile(
        4,
        0,
        "TxProfile",
        "Relative",
        json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8.0}]}),
    );
    p["transactionId"] = json!(tx + 1000);
    match s.csms.call(
        "SetChargingProfile",
        json!({"connectorId": 1, "csChargingProfiles": p}),
    ) {
        Ok(answer) => assert_eq!(status(&answer), "Rejected"),
        Err((code, _)) => assert_eq!(code, "PropertyConstraintViolation"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_059_cs_remote_start_transaction_with_charging_profile() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    let p = profile(
        5,
        0,
        "TxProfile",
        "Relative",
        json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}),
    );
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": TOKEN, "chargingProfile": p}),
    );
    assert_eq!(status(&answer), "Accepted");
    s.plug().await;
    s.wait_start(m);
    wait_limit(&s, Some(10.0)).await;
    let c = composite(&mut s, 1, 120, "A");
    check_composite(&c, "A", &[(0, 10.0)], "the remote start's TxProfile");
    assert_eq!(c["connectorId"], 1);
    assert_eq!(c["chargingSchedule"]["duration"], 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_060_cs_remote_start_transaction_with_charging_profile_rejected() {
    let mut s = OcppStack::plain().await;
    let p = profile(
        6,
        0,
        "TxDefaultProfile",
        "Relative",
        json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}),
    );
    match s.csms.call(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": TOKEN, "chargingProfile": p}),
    ) {
        Ok(answer) => assert_eq!(status(&answer), "Rejected"),
        Err((code, _)) => assert_eq!(code, "PropertyConstraintViolation"),
    }
}

/// A stack of profiles — ChargePointMaxProfile on 0 (Absolute, W),
/// TxDefaultProfile on 0 (Recurring Daily, A) and on 1 (Absolute, higher
/// stack level, 3 s long), later a TxProfile (Relative) — composed by hand
/// and compared period by period with GetCompositeSchedule (A and W), and
/// the limit evse applies follows each period boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_066_cs_get_composite_schedule_profile_stack() {
    let mut s = OcppStack::plain().await;
    let (_, tx) = s.charging().await;
    let start = s.csms.wait_event("StartTransaction", |_| true);
    let tx_start = unix_ms(start["timestamp"].as_str().unwrap());

    let now = now_ms();
    let t0 = (now / 1000 + 3) * 1000;
    let midnight = now - now.rem_euclid(86_400_000);
    let sod = (t0 - midnight) / 1000;
    assert!(
        sod + 10 < 86_400,
        "too close to midnight UTC for a daily profile; run again"
    );

    let cp_max = profile(
        21,
        0,
        "ChargePointMaxProfile",
        "Absolute",
        json!({"startSchedule": iso(t0), "chargingRateUnit": "W",
               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20.0 * W_PER_A}]}),
    );
    let mut daily = profile(
        22,
        0,
        "TxDefaultProfile",
        "Recurring",
        json!({"startSchedule": iso(midnight), "duration": 86_400, "chargingRateUnit": "A",
               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 24.0},
                                          {"startPeriod": sod + 6, "limit": 14.0}]}),
    );
    daily["recurrencyKind"] = json!("Daily");
    let short = profile(
        23,
        1,
        "TxDefaultProfile",
        "Absolute",
        json!({"startSchedule": iso(t0), "duration": 3, "chargingRateUnit": "A",
               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}),
    );
    assert_eq!(set_profile(&mut s, 0, cp_max), "Accepted");
    assert_eq!(set_profile(&mut s, 0, daily), "Accepted");
    assert_eq!(set_profile(&mut s, 1, short), "Accepted");

    // By hand: before t0 only the daily 24 A; [t0, t0+3) the short one
    // (stack level 1) 10 A under the 20 A maximum; [t0+3, t0+6) the daily
    // 24 A capped to 20 A; from t0+6 the daily 14 A.
    let expected = [
        (now - 1000, 24.0),
        (t0, 10.0),
        (t0 + 3000, 20.0),
        (t0 + 6000, 14.0),
    ];
    let c = composite(&mut s, 1, 10, "A");
    check_composite(&c, "A", &expected, "connector 1 in A");
    let c = composite(&mut s, 1, 10, "W");
    check_composite(&c, "W", &expected, "connector 1 in W");

    // The limit evse applies changes at each boundary.
    let when = |ms: i64, boundary: i64, what: &str| {
        assert!(
            ms >= boundary - 200 && ms <= boundary + 1500,
            "{what}: limit applied at {} ms from the boundary",
            ms - boundary
        );
    };
    wait_limit(&s, Some(24.0)).await;
    when(wait_limit(&s, Some(10.0)).await, t0, "short profile begins");
    when(
        wait_limit(&s, Some(20.0)).await,
        t0 + 3000,
        "short profile ends",
    );
    when(
        wait_limit(&s, Some(14.0)).await,
        t0 + 6000,
        "daily period 2",
    );

    // A TxProfile replaces the defaults for its transaction; still under
    // the station maximum.
    let elapsed = (now_ms() - tx_start + 999) / 1000;
    let mut txp = profile(
        24,
        0,
        "TxProfile",
        "Relative",
        json!({"chargingRateUnit": "A",
               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8.0},
                                          {"startPeriod": elapsed + 3, "limit": 30.0}]}),
    );
    txp["transactionId"] = json!(tx);
    assert_eq!(set_profile(&mut s, 1, txp), "Accepted");
    let boundary = tx_start + (elapsed + 3) * 1000;
    let c = composite(&mut s, 1, 8, "A");
    check_composite(
        &c,
        "A",
        &[(0, 8.0), (boundary, 20.0)],
        "TxProfile under ChargePointMax",
    );
    wait_limit(&s, Some(8.0)).await;
    when(
        wait_limit(&s, Some(20.0)).await,
        boundary,
        "TxProfile period 2 capped at 20 A",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_067_cs_clear_charging_profile() {
    let mut s = OcppStack::plain().await;
    let flat = |id: i64, level: i64, limit: f64| {
        profile(
            id,
            level,
            "TxDefaultProfile",
            "Relative",
            json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}),
        )
    };
    assert_eq!(set_profile(&mut s, 1, flat(31, 0, 12.0)), "Accepted");
    assert_eq!(set_profile(&mut s, 1, flat(32, 1, 9.0)), "Accepted");
    let _ = s.charging().await;
    wait_limit(&s, Some(9.0)).await;
    let answer = s.csms.call_ok("ClearChargingProfile", json!({"id": 32}));
    assert_eq!(status(&answer), "Accepted");
    wait_limit(&s, Some(12.0)).await;
    let answer = s.csms.call_ok("ClearChargingProfile", json!({"id": 99}));
    assert_eq!(status(&answer), "Unknown");
    let answer = s.csms.call_ok(
        "ClearChargingProfile",
        json!({"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile"}),
    );
    assert_eq!(status(&answer), "Accepted");
    wait_limit(&s, None).await;
}

/// Profiles the station's limits do not allow are Rejected (§9.4:
/// ChargeProfileMaxStackLevel, ChargingScheduleMaxPeriods), and a profile
/// with the same id replaces the old one (§5.16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_charging_profile_limits_and_replacement() {
    let mut s = OcppStack::plain().await;
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["ChargeProfileMaxStackLevel", "ChargingScheduleMaxPeriods"]}),
    );
    let value = |k: &str| -> i64 {
        conf["configurationKey"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (max_level, max_periods) = (
        value("ChargeProfileMaxStackLevel"),
        value("ChargingScheduleMaxPeriods"),
    );
    let one = json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.0}]});
    let p = profile(
        41,
        max_level + 1,
        "TxDefaultProfile",
        "Relative",
        one.clone(),
    );
    assert_eq!(
        set_profile(&mut s, 1, p),
        "Rejected",
        "stack level above the maximum"
    );
    let periods: Vec<Value> = (0..=max_periods)
        .map(|i| json!({"startPeriod": i * 60, "limit": 6.0}))
        .collect();
    let p = profile(
        42,
        0,
        "TxDefaultProfile",
        "Relative",
        json!({"chargingRateUnit": "A", "chargingSchedulePeriod": periods}),
    );
    assert_eq!(
        set_profile(&mut s, 1, p),
        "Rejected",
        "more periods than allowed"
    );
    assert_eq!(
        set_profile(
            &mut s,
            1,
            profile(43, 0, "TxDefaultProfile", "Relative", one)
        ),
        "Accepted"
    );
    let seven = json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7.0}]});
    assert_eq!(
        set_profile(
            &mut s,
            1,
            profile(43, 2, "TxDefaultProfile", "Relative", seven)
        ),
        "Accepted"
    );
    let _ = s.charging().await;
    wait_limit(&s, Some(7.0)).await;
    // Unknown connector.
    let eight = json!({"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8.0}]});
    assert_eq!(
        set_profile(
            &mut s,
            5,
            profile(44, 0, "TxDefaultProfile", "Relative", eight)
        ),
        "Rejected"
    );
}
