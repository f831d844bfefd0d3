//! End-to-end tests of the OCPP 1.6J client against an independent CSMS:
//! the Reservation profile (OCPP 1.6 §3.11, §5.13 ReserveNow, §5.1
//! CancelReservation), named after the OCPP 1.6 compliance test cases.

mod harness;

use harness::TOKEN;
use harness::csms::{CsmsOptions, OcppStack, iso, now_ms};
use serde_json::{Value, json};

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

fn reserve(
    s: &mut OcppStack,
    connector: i64,
    id: i64,
    tag: &str,
    parent: Option<&str>,
    secs: i64,
) -> String {
    let mut req = json!({
        "connectorId": connector,
        "expiryDate": iso(now_ms() + secs * 1000),
        "idTag": tag,
        "reservationId": id,
    });
    if let Some(p) = parent {
        req["parentIdTag"] = json!(p);
    }
    status(&s.csms.call_ok("ReserveNow", req)).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_046_cs_reservation_of_a_connector_transaction() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    assert_eq!(reserve(&mut s, 1, 7, TOKEN, None, 60), "Accepted");
    let r = s.wait_status(m, "Reserved");
    s.plug().await;
    s.swipe(TOKEN).await;
    let (_, _, start) = s.wait_start(r);
    assert_eq!(
        start["reservationId"], 7,
        "§6.45: the reservation it used: {start}"
    );
    s.wait_status(r, "Charging");
    let (held, ..) = s.stack.evse().await.reservation().await.unwrap();
    assert_eq!(held, 0, "a used reservation is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_047_cs_reservation_of_a_connector_expire() {
    let mut s = OcppStack::start(
        CsmsOptions {
            accept: vec![TOKEN.into(), "TEST-TOKEN-2".into()],
            ..Default::default()
        },
        |o| o,
    )
    .await;
    let m = s.csms.mark();
    assert_eq!(reserve(&mut s, 1, 8, TOKEN, None, 2), "Accepted");
    let (r, reserved) = s.csms.wait_event_since(m, "StatusNotification", |p| {
        p["connectorId"] == 1 && p["status"] == "Reserved"
    });
    let (_, available) = s.csms.wait_event_since(r, "StatusNotification", |p| {
        p["connectorId"] == 1 && p["status"] == "Available"
    });
    let held = available["t"].as_f64().unwrap() - reserved["t"].as_f64().unwrap();
    assert!(
        (1.0..5.0).contains(&held),
        "reserved for {held:.2} s; it expired after 2 s"
    );
    // Anyone may charge now.
    let m2 = s.csms.mark();
    s.plug().await;
    s.swipe("TEST-TOKEN-2").await;
    let (_, _, start) = s.wait_start(m2);
    assert!(start.get("reservationId").is_none(), "{start}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_048_1_cs_reservation_of_a_connector_faulted() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    s.stack.sim().await.fault(1, "rcd").await.unwrap();
    s.wait_status(m, "Faulted");
    assert_eq!(reserve(&mut s, 1, 9, TOKEN, None, 60), "Faulted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_048_2_cs_reservation_of_a_connector_occupied() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    s.plug().await;
    s.wait_status(m, "Preparing");
    assert_eq!(reserve(&mut s, 1, 10, TOKEN, None, 60), "Occupied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_048_3_cs_reservation_of_a_connector_unavailable() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    let answer = s.csms.call_ok(
        "ChangeAvailability",
        json!({"connectorId": 1, "type": "Inoperative"}),
    );
    assert_eq!(status(&answer), "Accepted");
    s.wait_status(m, "Unavailable");
    assert_eq!(reserve(&mut s, 1, 11, TOKEN, None, 60), "Unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_048_4_cs_reservation_of_a_connector_rejected() {
    let mut s = OcppStack::plain().await;
    // A connector the station does not have.
    assert_eq!(reserve(&mut s, 2, 12, TOKEN, None, 60), "Rejected");
    // Reserved for someone else already: a second reservation is refused,
    // the same id replaces (§5.13).
    assert_eq!(reserve(&mut s, 1, 13, TOKEN, None, 60), "Accepted");
    assert_ne!(reserve(&mut s, 1, 14, "TEST-TOKEN-2", None, 60), "Accepted");
    assert_eq!(reserve(&mut s, 1, 13, "TEST-TOKEN-2", None, 60), "Accepted");
    let (held, tag, ..) = s.stack.evse().await.reservation().await.unwrap();
    assert_eq!((held, tag.as_str()), (13, "TEST-TOKEN-2"));
}

/// ReserveConnectorZeroSupported is false here: connector 0 is Rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_049_cs_reservation_of_a_charge_point_transaction() {
    let mut s = OcppStack::plain().await;
    let conf = s.csms.call_ok(
        "GetConfiguration",
        json!({"key": ["ReserveConnectorZeroSupported"]}),
    );
    assert_eq!(conf["configurationKey"][0]["value"], "false", "{conf}");
    assert_eq!(reserve(&mut s, 0, 15, TOKEN, None, 60), "Rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_051_cs_cancel_reservation() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    assert_eq!(reserve(&mut s, 1, 16, TOKEN, None, 60), "Accepted");
    let r = s.wait_status(m, "Reserved");
    let answer = s
        .csms
        .call_ok("CancelReservation", json!({"reservationId": 16}));
    assert_eq!(status(&answer), "Accepted");
    s.wait_status(r, "Available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_052_cs_cancel_reservation_rejected() {
    let mut s = OcppStack::plain().await;
    let answer = s
        .csms
        .call_ok("CancelReservation", json!({"reservationId": 99}));
    assert_eq!(status(&answer), "Rejected");
}

/// §5.13: a reservation with a parentIdTag is usable by any tag with that
/// parent; the station learns a tag's parent through Authorize.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_053_cs_use_a_reserved_connector_with_parent_id_tag() {
    let mut s = OcppStack::start(
        CsmsOptions {
            accept: vec![
                format!("{TOKEN}:FLEET-1"),
                "CHILD-TOKEN:FLEET-1".into(),
                "STRANGER".into(),
            ],
            ..Default::default()
        },
        |o| o.key("LocalAuthListEnabled", "false"),
    )
    .await;
    let m = s.csms.mark();
    assert_eq!(
        reserve(&mut s, 1, 17, TOKEN, Some("FLEET-1"), 60),
        "Accepted"
    );
    s.wait_status(m, "Reserved");
    s.plug().await;
    // A tag the CSMS accepts but without the parent: not on this reservation.
    s.swipe("STRANGER").await;
    s.csms
        .wait_event_since(m, "Authorize", |p| p["idTag"] == "STRANGER");
    s.swipe("CHILD-TOKEN").await;
    let (a, auth) = s
        .csms
        .wait_event_since(m, "Authorize", |p| p["idTag"] == "CHILD-TOKEN");
    assert_eq!(auth["reply"]["idTagInfo"]["parentIdTag"], "FLEET-1");
    let (_, _, start) = s.wait_start(a);
    assert_eq!(start["idTag"], "CHILD-TOKEN");
    assert_eq!(start["reservationId"], 17);
    assert_eq!(
        s.csms.payloads("StartTransaction").len(),
        1,
        "the stranger started nothing"
    );
}
