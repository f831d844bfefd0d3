//! End-to-end tests of the OCPP 1.6J client against an independent CSMS:
//! the RPC layer (OCPP-J 1.6 §4: CALL / CALLRESULT / CALLERROR and the
//! error codes of §4.2.3) under malformed and hostile frames, every message
//! of both directions at least once, and the security profiles of the
//! Security Whitepaper edition 2 (§2: 1 basic auth, 2 TLS + basic auth,
//! 3 mutual TLS) with a PKI made at test time.

mod harness;

use std::time::Duration;

use harness::csms::{CsmsOptions, OcppStack, Pki, STATION_ID, assert_call_error, iso, now_ms};
use harness::{OcppOptions, TOKEN};
use serde_json::{Value, json};

/// Security profile 3 with the test CA as trust store and the given
/// client identity.
fn mutual_tls(
    mut o: OcppOptions,
    pki: &Pki,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> OcppOptions {
    o.security_profile = 3;
    o.ca_file = Some(pki.ca.clone());
    o.client_cert = Some(cert.to_owned());
    o.client_key = Some(key.to_owned());
    o
}

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

/// OCPP-J 1.6 §4.2.3: each defect answered with the error code the spec
/// names for it, with the CALL's unique id where it can be read; the
/// connection and the service carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_frames_get_the_right_call_errors() {
    let mut s = OcppStack::plain().await;
    let start = s.csms.mark();

    // Not JSON: FormationViolation ("syntactically incorrect"); no id to read.
    let r = s.csms.raw("this is not json");
    let f = r.as_ref().expect("an answer to a frame that is not JSON");
    assert_eq!(f[0], 4, "{f}");
    assert_eq!(f[2], "FormationViolation", "{f}");

    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            r#"[5,"h-type","Heartbeat",{}]"#,
            "h-type",
            &["FormationViolation"],
            "unknown MessageTypeId (not the PDU structure)",
        ),
        (
            r#"[2,"h-payload","ClearCache",[]]"#,
            "h-payload",
            &["FormationViolation"],
            "payload is not an object",
        ),
        (
            r#"[2,"h-short","ClearCache"]"#,
            "h-short",
            &["ProtocolError"],
            "CALL without its payload (incomplete)",
        ),
        (
            r#"[2,"h-long-array","ClearCache",{},{}]"#,
            "h-long-array",
            &["FormationViolation"],
            "CALL with an extra element",
        ),
        (
            r#"[2,"h-missing","ChangeConfiguration",{"key":"HeartbeatInterval"}]"#,
            "h-missing",
            &["OccurenceConstraintViolation"],
            "required field missing",
        ),
        (
            r#"[2,"h-wrong-type","ChangeConfiguration",{"key":"HeartbeatInterval","value":30}]"#,
            "h-wrong-type",
            &["TypeConstraintViolation"],
            "a string field given a number",
        ),
        (
            // CiString50 with 51 characters: the spec's codes leave open
            // whether a length is a type (CiString50Type) or a value
            // constraint; both are accepted.
            r#"[2,"h-too-long","ChangeConfiguration",{"key":"K123456789012345678901234567890123456789012345678901","value":"1"}]"#,
            "h-too-long",
            &["TypeConstraintViolation", "PropertyConstraintViolation"],
            "string longer than its CiString type",
        ),
        (
            r#"[2,"h-enum","Reset",{"type":"Lukewarm"}]"#,
            "h-enum",
            &["PropertyConstraintViolation"],
            "value outside the enumeration",
        ),
        (
            r#"[2,"h-extra","ClearCache",{"surprise":1}]"#,
            "h-extra",
            &["FormationViolation"],
            "a property the schema does not allow",
        ),
        (
            r#"[2,"h-action","MakeCoffee",{}]"#,
            "h-action",
            &["NotImplemented"],
            "an action the station does not know (§4.2.3 NotImplemented)",
        ),
        (
            r#"[2,"h-not-supported","GetLog",{"log":{"remoteLocation":"ftp://example.com/"},"logType":"DiagnosticsLog","requestId":1}]"#,
            "h-not-supported",
            &["NotSupported"],
            "a known action the station does not support (§4.2.3 NotSupported)",
        ),
        (
            r#"[2,"h-wrong-direction","BootNotification",{"chargePointVendor":"x","chargePointModel":"y"}]"#,
            "h-wrong-direction",
            &["NotSupported", "NotImplemented"],
            "an action a station sends, not receives",
        ),
    ];
    for (frame, id, codes, what) in cases {
        let reply = s.csms.raw(frame);
        assert_call_error(&reply, id, codes, what);
    }

    // Answers to nothing the station asked are ignored, not answered.
    s.csms.raw_send(r#"[3,"never-asked",{}]"#);
    s.csms
        .raw_send(r#"[4,"never-asked-either","GenericError","",{}]"#);
    let answer = s
        .csms
        .call_ok("GetConfiguration", json!({"key": ["HeartbeatInterval"]}));
    assert!(answer["configurationKey"].is_array());
    assert_eq!(
        s.csms.stray(),
        Vec::<String>::new(),
        "nothing answers a CALLRESULT/CALLERROR"
    );

    // A 1 MB frame within the station's limits is processed like any other.
    let big = format!(
        r#"[2,"h-big","DataTransfer",{{"vendorId":"com.example","data":"{}"}}]"#,
        "x".repeat(1 << 20)
    );
    let reply = s
        .csms
        .raw(&big)
        .expect("an answer to the 1 MB DataTransfer");
    assert_eq!(
        reply[0],
        3,
        "{}",
        &reply.to_string()[..200.min(reply.to_string().len())]
    );
    assert_eq!(reply[1], "h-big");
    assert_eq!(reply[2]["status"], "UnknownVendorId");

    // The same connection all along, and the service still works.
    let history = s.csms.history()[start..].to_vec();
    assert!(
        history
            .iter()
            .all(|l| l.kind != "DISCONNECT" && l.kind != "CONNECT"),
        "the connection survived: {history:?}"
    );
    let m = s.csms.mark();
    s.csms
        .call_ok("TriggerMessage", json!({"requestedMessage": "Heartbeat"}));
    s.csms.next_event(m, "Heartbeat");
}

/// A frame over the station's message size limit: the station drops that
/// connection (it cannot read the frame) and comes back without a reboot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_costs_only_the_connection() {
    let mut s = OcppStack::plain().await;
    let m = s.csms.mark();
    let huge = format!(
        r#"[2,"h-huge","DataTransfer",{{"vendorId":"com.example","data":"{}"}}]"#,
        "x".repeat(5 << 20)
    );
    // The station may close while the frame is still being written.
    let _ = s.csms.command(&format!("rawsend {huge}"));
    s.csms
        .wait_line(m, "DISCONNECT", harness::DEADLINE, |_| true);
    let c = s.csms.wait_connect(m);
    assert_eq!(c["station"], STATION_ID);
    let answer = s.csms.call_ok("GetLocalListVersion", json!({}));
    assert!(answer["listVersion"].is_i64());
    assert!(
        s.csms
            .events_since(m)
            .iter()
            .all(|e| e["action"] != "BootNotification"),
        "a reconnect is no reboot"
    );
}

/// Every CSMS → station CALL of OCPP 1.6 (through the library, so requests
/// and answers are schema-validated) and every station → CSMS CALL seen at
/// least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_in_both_directions() {
    let mut s =
        OcppStack::start(CsmsOptions::default(), |o| o.key("ConnectionTimeOut", "30")).await;
    let mut c = |action: &str, payload: Value| -> Result<Value, (String, String)> {
        s.csms.call(action, payload)
    };
    // Configuration and availability.
    c("GetConfiguration", json!({})).unwrap();
    c(
        "ChangeConfiguration",
        json!({"key": "HeartbeatInterval", "value": "300"}),
    )
    .unwrap();
    c(
        "ChangeAvailability",
        json!({"connectorId": 1, "type": "Operative"}),
    )
    .unwrap();
    c("ClearCache", json!({})).unwrap();
    c("DataTransfer", json!({"vendorId": "com.example"})).unwrap();
    c("GetLocalListVersion", json!({})).unwrap();
    c(
        "SendLocalList",
        json!({"listVersion": 1, "updateType": "Full", "localAuthorizationList": []}),
    )
    .unwrap();
    c(
        "TriggerMessage",
        json!({"requestedMessage": "DiagnosticsStatusNotification"}),
    )
    .unwrap();
    c(
        "TriggerMessage",
        json!({"requestedMessage": "FirmwareStatusNotification"}),
    )
    .unwrap();
    c("TriggerMessage", json!({"requestedMessage": "Heartbeat"})).unwrap();
    c("UnlockConnector", json!({"connectorId": 1})).unwrap();
    // Reservation.
    c(
        "ReserveNow",
        json!({"connectorId": 1, "expiryDate": iso(now_ms() + 60_000), "idTag": TOKEN, "reservationId": 1}),
    )
    .unwrap();
    c("CancelReservation", json!({"reservationId": 1})).unwrap();
    // Smart charging.
    c(
        "SetChargingProfile",
        json!({"connectorId": 1, "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}}}),
    )
    .unwrap();
    c(
        "GetCompositeSchedule",
        json!({"connectorId": 1, "duration": 60}),
    )
    .unwrap();
    c("ClearChargingProfile", json!({})).unwrap();
    // Not supported: CALLERROR NotSupported, still a valid exchange.
    assert!(c("GetDiagnostics", json!({"location": "ftp://example.com/"})).is_err());
    assert!(
        c(
            "UpdateFirmware",
            json!({"location": "https://example.com/fw", "retrieveDate": iso(now_ms())})
        )
        .is_err()
    );
    // A transaction, started remotely, metered on request, stopped remotely.
    let m = s.csms.mark();
    s.plug().await;
    let answer = s.csms.call_ok(
        "RemoteStartTransaction",
        json!({"connectorId": 1, "idTag": TOKEN}),
    );
    assert_eq!(status(&answer), "Accepted");
    let (_, tx, _) = s.wait_start(m);
    s.wait_readings(2).await;
    s.csms.call_ok(
        "TriggerMessage",
        json!({"requestedMessage": "MeterValues", "connectorId": 1}),
    );
    s.csms.next_event(m, "MeterValues");
    s.csms
        .call_ok("RemoteStopTransaction", json!({"transactionId": tx}));
    s.wait_stop(m, tx);
    // Authorize and DataTransfer from the station.
    s.swipe("SOMEONE").await;
    s.csms.wait_event("Authorize", |p| p["idTag"] == "SOMEONE");
    let (dt, _) = s
        .stack
        .ocpp()
        .await
        .data_transfer("com.example", "", "")
        .await
        .unwrap();
    assert_eq!(dt, "Accepted");
    // Reset last: the service exits, restarts, boots again.
    let answer = s.csms.call_ok("Reset", json!({"type": "Soft"}));
    assert_eq!(status(&answer), "Accepted");
    s.stack.wait_ocpp_exit(harness::DEADLINE);

    let seen: std::collections::BTreeSet<String> = s
        .csms
        .events()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in [
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
    ] {
        assert!(seen.contains(action), "{action} never sent; seen {seen:?}");
    }
}

const PASSWORD: &str = "0123456789abcdefABCD";

/// Security profile 1: HTTP Basic auth with the station id as the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_1_basic_auth() {
    let mut s = OcppStack::start(
        CsmsOptions {
            password: Some(PASSWORD.into()),
            ..Default::default()
        },
        |mut o| {
            o.security_profile = 1;
            o.password = Some(PASSWORD.into());
            o
        },
    )
    .await;
    let c = s.csms.wait_connect(0);
    assert_eq!(c["user"], STATION_ID);
    assert_eq!(c["tls"], false);
    assert_eq!(c["subprotocol"], "ocpp1.6");
}

/// A wrong password is refused (401); the station keeps trying with its
/// back-off and gets in once the CSMS takes that password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_1_wrong_password_is_refused_then_reconnects() {
    let station_password = "fedcba9876543210ZYXW";
    let mut s = OcppStack::start_unregistered(
        CsmsOptions {
            password: Some(PASSWORD.into()),
            ..Default::default()
        },
        |mut o| {
            o.security_profile = 1;
            o.password = Some(station_password.into());
            o
        },
    )
    .await;
    let (i, r) = s.csms.wait_line(0, "REFUSED", harness::DEADLINE, |_| true);
    assert_eq!(r["reason"], "bad credentials");
    s.csms
        .wait_line(i + 1, "REFUSED", harness::DEADLINE, |_| true);
    assert!(s.csms.events().is_empty());
    let m = s.csms.mark();
    s.csms.set("password", station_password);
    s.csms.wait_connect(m);
    s.csms.wait_accepted(m);
}

/// Security profile 2: TLS (the CSMS's certificate checked against the
/// configured CA) and basic auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_2_tls_and_basic_auth() {
    let pki = Pki::new(STATION_ID);
    let mut s = OcppStack::start(
        CsmsOptions {
            password: Some(PASSWORD.into()),
            tls: Some(pki.server(false)),
            ..Default::default()
        },
        |mut o| {
            o.security_profile = 2;
            o.password = Some(PASSWORD.into());
            o.ca_file = Some(pki.ca.clone());
            o
        },
    )
    .await;
    let c = s.csms.wait_connect(0);
    assert_eq!(c["tls"], true);
    assert_eq!(c["user"], STATION_ID);
    assert!(s.csms.url().starts_with("wss://"));
}

/// Profile 2 with a CSMS whose certificate another CA issued: no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_2_refuses_a_server_certificate_of_another_ca() {
    let pki = Pki::new(STATION_ID);
    let mut s = OcppStack::start_unregistered(
        CsmsOptions {
            password: Some(PASSWORD.into()),
            tls: Some(harness::csms::ServerTls {
                cert: pki.rogue_server_cert.clone(),
                key: pki.rogue_server_key.clone(),
                client_ca: None,
            }),
            ..Default::default()
        },
        |mut o| {
            o.security_profile = 2;
            o.password = Some(PASSWORD.into());
            o.ca_file = Some(pki.ca.clone());
            o
        },
    )
    .await;
    // Several attempts happen meanwhile (back-off 1–2 s).
    s.csms.assert_no_line(0, "CONNECT", Duration::from_secs(4));
    assert_ne!(
        s.stack.ocpp().await.connection_state().await.unwrap(),
        "Connected"
    );
}

/// Security profile 3: mutual TLS; the CSMS sees the station's certificate
/// with CN = the station id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_3_mutual_tls() {
    let pki = Pki::new(STATION_ID);
    let mut s = OcppStack::start(
        CsmsOptions {
            tls: Some(pki.server(true)),
            ..Default::default()
        },
        |o| mutual_tls(o, &pki, &pki.client_cert, &pki.client_key),
    )
    .await;
    let c = s.csms.wait_connect(0);
    assert_eq!(c["tls"], true);
    assert_eq!(c["cn"], STATION_ID);
}

/// Profile 3 with a client certificate the CSMS's CA did not issue: the
/// TLS handshake fails, no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_profile_3_client_certificate_of_another_ca_is_refused() {
    let pki = Pki::new(STATION_ID);
    let mut s = OcppStack::start_unregistered(
        CsmsOptions {
            tls: Some(pki.server(true)),
            ..Default::default()
        },
        |o| mutual_tls(o, &pki, &pki.rogue_client_cert, &pki.rogue_client_key),
    )
    .await;
    s.csms.assert_no_line(0, "CONNECT", Duration::from_secs(4));
}
