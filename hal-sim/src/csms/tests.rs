//! The CSMS against a station played by the test: a tokio-tungstenite client
//! sending raw OCPP-J frames, so nothing here trusts our own client.

use super::*;

use serde_json::json;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOKENS: &[&str] = &["EVOS-DEMO", "04A1B2C3D4"];

fn config() -> Config {
    Config {
        port: 0,
        tokens: TOKENS.iter().map(|t| t.to_string()).collect(),
        heartbeat_interval_s: 42,
    }
}

async fn start(state_dir: Option<&Path>) -> (Csms, SocketAddr, tokio::task::JoinHandle<()>) {
    start_with(Server::bind(config(), state_dir).await.unwrap()).await
}

async fn start_with(server: Server) -> (Csms, SocketAddr, tokio::task::JoinHandle<()>) {
    let address = server.local_addr().unwrap();
    let csms = server.csms();
    (csms, address, tokio::spawn(server.run()))
}

/// Wait (without a timer) until `f` holds of what the CSMS shows.
async fn until(csms: &Csms, f: impl Fn(&Csms) -> bool) {
    let mut changes = csms.subscribe();
    while !f(csms) {
        changes.changed().await.unwrap();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Station {
    ws: Ws,
    ids: u32,
}

async fn upgrade(
    address: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut request = format!("ws://{address}{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    tokio_tungstenite::connect_async(request).await
}

impl Station {
    async fn connect(address: SocketAddr, id: &str) -> Station {
        let (ws, response) = upgrade(address, &format!("/ocpp/{id}"), Some("ocpp1.6"))
            .await
            .unwrap();
        assert_eq!(
            response.headers().get("Sec-WebSocket-Protocol").unwrap(),
            "ocpp1.6"
        );
        Station { ws, ids: 0 }
    }

    async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        loop {
            match self.ws.next().await.unwrap().unwrap() {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                _ => continue,
            }
        }
    }

    /// Send a CALL; the whole answer frame.
    async fn call(&mut self, action: &str, payload: Value) -> Value {
        self.ids += 1;
        let id = format!("st-{}", self.ids);
        self.send(json!([2, id, action, payload]).to_string()).await;
        let answer = self.recv().await;
        assert_eq!(answer[1], id, "{answer}");
        answer
    }

    /// Send a CALL that must succeed; its result payload.
    async fn ok(&mut self, action: &str, payload: Value) -> Value {
        let answer = self.call(action, payload).await;
        assert_eq!(answer[0], 3, "{action} answered {answer}");
        answer[2].clone()
    }

    async fn boot(&mut self) -> Value {
        self.ok(
            "BootNotification",
            json!({"chargePointVendor": "test", "chargePointModel": "raw-frames"}),
        )
        .await
    }

    async fn start_tx(&mut self, connector: u32, id_tag: &str, meter_start: i64) -> Value {
        self.ok(
            "StartTransaction",
            json!({"connectorId": connector, "idTag": id_tag, "meterStart": meter_start,
                   "timestamp": "2025-01-02T03:04:05.000Z"}),
        )
        .await
    }

    /// The CSMS's next CALL: (id, action, payload).
    async fn next_call(&mut self) -> (String, String, Value) {
        let frame = self.recv().await;
        assert_eq!(frame[0], 2, "a CALL: {frame}");
        (
            frame[1].as_str().unwrap().to_owned(),
            frame[2].as_str().unwrap().to_owned(),
            frame[3].clone(),
        )
    }

    async fn answer(&mut self, id: &str, payload: Value) {
        self.send(json!([3, id, payload]).to_string()).await;
    }
}

#[tokio::test]
async fn boot_heartbeat_and_status_are_accepted_and_recorded() {
    let (csms, address, _server) = start(None).await;
    let mut station = Station::connect(address, "CP-1").await;
    until(&csms, |c| c.stations().iter().any(|s| s.connected)).await;

    let boot = station.boot().await;
    assert_eq!(boot["status"], "Accepted");
    assert_eq!(boot["interval"], 42);
    assert!(
        boot["currentTime"]
            .as_str()
            .unwrap()
            .parse::<DateTime>()
            .is_ok(),
        "{boot}"
    );
    let beat = station.ok("Heartbeat", json!({})).await;
    assert!(
        beat["currentTime"]
            .as_str()
            .unwrap()
            .parse::<DateTime>()
            .is_ok()
    );
    for (connector, status) in [(0, "Available"), (1, "Preparing"), (1, "Charging")] {
        let answer = station
            .ok(
                "StatusNotification",
                json!({"connectorId": connector, "errorCode": "NoError", "status": status}),
            )
            .await;
        assert_eq!(answer, json!({}));
    }
    let stations = csms.stations();
    assert_eq!(
        stations,
        vec![CsmsStation {
            id: "CP-1".into(),
            connected: true,
            boot_status: "Accepted".into(),
            boots: 1,
            vendor: "test".into(),
            model: "raw-frames".into(),
            connectors: vec![
                (0, "Available".into(), "NoError".into()),
                (1, "Charging".into(), "NoError".into()),
            ],
            received: vec![
                ("BootNotification".into(), 1),
                ("Heartbeat".into(), 1),
                ("StatusNotification".into(), 3),
            ],
        }]
    );

    drop(station);
    until(&csms, |c| !c.stations()[0].connected).await;
    let Err(CsmsError::NotConnected(id)) = csms.reset("CP-1", "soft").await else {
        panic!("a disconnected station is not found");
    };
    assert_eq!(id, "CP-1");
    assert!(matches!(
        csms.reset("", "soft").await,
        Err(CsmsError::NoStation)
    ));
    assert!(matches!(
        evos_bus::Error::from(CsmsError::NoStation),
        evos_bus::Error::NotFound(_)
    ));
}

#[tokio::test]
async fn tokens_are_authorized_by_the_list_and_the_rest_is_answered_per_spec() {
    let (_csms, address, _server) = start(None).await;
    let mut station = Station::connect(address, "CP-1").await;
    station.boot().await;
    for (token, status) in [
        ("EVOS-DEMO", "Accepted"),
        ("evos-demo", "Accepted"),
        ("04A1B2C3D4", "Accepted"),
        ("STRANGER", "Invalid"),
    ] {
        let answer = station.ok("Authorize", json!({"idTag": token})).await;
        assert_eq!(answer, json!({"idTagInfo": {"status": status}}), "{token}");
    }
    let transfer = station
        .ok("DataTransfer", json!({"vendorId": "com.example"}))
        .await;
    assert_eq!(transfer, json!({"status": "UnknownVendorId"}));
    let firmware = station
        .ok("FirmwareStatusNotification", json!({"status": "Idle"}))
        .await;
    assert_eq!(firmware, json!({}));

    // Payloads are checked against the schema; errors are CALLERRORs.
    let missing = station.call("Authorize", json!({})).await;
    assert_eq!(missing[0], 4, "{missing}");
    let too_long = station
        .call("Authorize", json!({"idTag": "X".repeat(21)}))
        .await;
    assert_eq!(too_long[0], 4, "{too_long}");
    let wrong_way = station.call("Reset", json!({"type": "Soft"})).await;
    assert_eq!(wrong_way[2], "NotSupported", "{wrong_way}");
    let unknown = station.call("Teleport", json!({})).await;
    assert_eq!(unknown[2], "NotImplemented", "{unknown}");
    station.send("[2, \"broken\"".into()).await;
    let broken = station.recv().await;
    assert_eq!(broken[0], 4, "{broken}");
}

#[tokio::test]
async fn transactions_get_increasing_ids_that_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (csms, address, server) = start(Some(dir.path())).await;
    let mut station = Station::connect(address, "CP-1").await;
    station.boot().await;

    let first = station.start_tx(1, "EVOS-DEMO", 1000).await;
    assert_eq!(
        first,
        json!({"idTagInfo": {"status": "Accepted"}, "transactionId": 1})
    );
    let second = station.start_tx(2, "STRANGER", 50).await;
    assert_eq!(
        second,
        json!({"idTagInfo": {"status": "Invalid"}, "transactionId": 2}),
        "an unknown token still gets an id, as Invalid"
    );
    let sample = |wh: &str| {
        json!({"timestamp": "2025-01-02T03:05:00.000Z",
               "sampledValue": [{"value": wh, "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                                {"value": "7000", "measurand": "Power.Active.Import", "unit": "W"}]})
    };
    station
        .ok(
            "MeterValues",
            json!({"connectorId": 1, "transactionId": 1, "meterValue": [sample("1100")]}),
        )
        .await;
    let stop = station
        .ok(
            "StopTransaction",
            json!({"transactionId": 1, "meterStop": 1250, "timestamp": "2025-01-02T03:10:00.000Z",
                   "idTag": "EVOS-DEMO", "reason": "EVDisconnected",
                   "transactionData": [sample("1200"), sample("1250")]}),
        )
        .await;
    assert_eq!(stop, json!({"idTagInfo": {"status": "Accepted"}}));
    // Never refused, even for a transaction the CSMS does not know.
    let unknown = station
        .ok(
            "StopTransaction",
            json!({"transactionId": 99, "meterStop": 1, "timestamp": "2025-01-02T03:10:00.000Z"}),
        )
        .await;
    assert_eq!(unknown, json!({}));

    let all = csms.transactions();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0],
        CsmsTransaction {
            id: 1,
            station: "CP-1".into(),
            connector: 1,
            id_tag: "EVOS-DEMO".into(),
            auth_status: "Accepted".into(),
            meter_start_wh: 1000,
            meter_stop_wh: 1250,
            last_meter_wh: 1250.0,
            meter_values: 3,
            started_ms: "2025-01-02T03:04:05.000Z"
                .parse::<DateTime>()
                .unwrap()
                .unix_ms(),
            stopped_ms: "2025-01-02T03:10:00.000Z"
                .parse::<DateTime>()
                .unwrap()
                .unix_ms(),
            reason: "EVDisconnected".into(),
        }
    );
    assert_eq!((all[1].meter_stop_wh, all[1].reason.as_str()), (-1, ""));

    // A new CSMS on the same state dir goes on from the last id.
    server.abort();
    drop(station);
    let (_csms, address, _server) = start(Some(dir.path())).await;
    let mut station = Station::connect(address, "CP-1").await;
    station.boot().await;
    assert_eq!(
        station.start_tx(1, "EVOS-DEMO", 1300).await["transactionId"],
        3
    );
    // Without a state dir, ids start at 1.
    let (_csms, address, _server) = start(None).await;
    let mut station = Station::connect(address, "CP-1").await;
    assert_eq!(
        station.start_tx(1, "EVOS-DEMO", 0).await["transactionId"],
        1
    );
}

#[tokio::test]
async fn remote_start_round_trip_with_one_call_outstanding() {
    let (csms, address, _server) = start(None).await;
    let mut station = Station::connect(address, "CP-1").await;
    station.boot().await;

    let first = tokio::spawn({
        let csms = csms.clone();
        async move { csms.remote_start("", 1, "EVOS-DEMO").await }
    });
    let (id, action, payload) = station.next_call().await;
    assert_eq!(action, "RemoteStartTransaction");
    assert_eq!(payload, json!({"connectorId": 1, "idTag": "EVOS-DEMO"}));

    let second = tokio::spawn({
        let csms = csms.clone();
        async move { csms.remote_start("CP-1", 0, "04A1B2C3D4").await }
    });
    // The station's own CALL crosses ours; the answer to it comes before
    // any second CALL of the CSMS, which waits for our answer.
    let beat = station.ok("Heartbeat", json!({})).await;
    assert!(beat.get("currentTime").is_some());
    station.answer(&id, json!({"status": "Accepted"})).await;
    assert_eq!(first.await.unwrap().unwrap(), "Accepted");

    let (id, action, payload) = station.next_call().await;
    assert_eq!(action, "RemoteStartTransaction");
    assert_eq!(
        payload,
        json!({"idTag": "04A1B2C3D4"}),
        "no connector given"
    );
    station
        .send(json!([4, id, "NotSupported", "no remote start here", {}]).to_string())
        .await;
    let Err(CsmsError::Refused {
        action,
        code,
        description,
    }) = second.await.unwrap()
    else {
        panic!("a CALLERROR fails the command");
    };
    assert_eq!(action, "RemoteStartTransaction");
    assert_eq!(code, ErrorCode::NotSupported);
    assert_eq!(description, "no remote start here");
}

#[tokio::test]
async fn commands_carry_what_the_spec_asks() {
    let (csms, address, _server) = start(None).await;
    let mut station = Station::connect(address, "CP-1").await;
    station.boot().await;
    let tx = station.start_tx(1, "EVOS-DEMO", 0).await["transactionId"].clone();

    /// Run `command` against the station; the CALL it sent, after
    /// answering it with `answer`.
    async fn exchange<T: std::fmt::Debug + Send + 'static>(
        station: &mut Station,
        command: impl Future<Output = Result<T, CsmsError>> + Send + 'static,
        answer: Value,
    ) -> (String, Value, T) {
        let task = tokio::spawn(command);
        let (id, action, payload) = station.next_call().await;
        station.answer(&id, answer).await;
        (action, payload, task.await.unwrap().unwrap())
    }
    let accepted = json!({"status": "Accepted"});

    let c = csms.clone();
    let (action, payload, status) = exchange(
        &mut station,
        async move { c.remote_stop("", 0, 1).await },
        accepted.clone(),
    )
    .await;
    assert_eq!(action, "RemoteStopTransaction");
    assert_eq!(payload, json!({"transactionId": tx}));
    assert_eq!(status, "Accepted");
    assert!(matches!(
        csms.remote_stop("", 0, 2).await,
        Err(CsmsError::NoTransaction { connector: 2, .. })
    ));

    // A limit on a connector with a transaction is its TxProfile ...
    let c = csms.clone();
    let (action, payload, _) = exchange(
        &mut station,
        async move { c.set_limit("", 1, 10.04, "A").await },
        accepted.clone(),
    )
    .await;
    assert_eq!(action, "SetChargingProfile");
    assert_eq!(payload["connectorId"], 1);
    let profile = &payload["csChargingProfiles"];
    assert_eq!(profile["chargingProfilePurpose"], "TxProfile");
    assert_eq!(profile["transactionId"], tx);
    assert_eq!(profile["chargingProfileKind"], "Absolute");
    assert_eq!(profile["stackLevel"], 0);
    let schedule = &profile["chargingSchedule"];
    assert_eq!(schedule["chargingRateUnit"], "A");
    assert!(schedule["startSchedule"].is_string());
    assert_eq!(
        schedule["chargingSchedulePeriod"],
        json!([{"startPeriod": 0, "limit": 10.0}])
    );
    // ... elsewhere the connector's TxDefaultProfile.
    let c = csms.clone();
    let (_, payload, status) = exchange(
        &mut station,
        async move { c.set_limit("", 2, 7400.0, "W").await },
        json!({"status": "Rejected"}),
    )
    .await;
    let profile = &payload["csChargingProfiles"];
    assert_eq!(profile["chargingProfilePurpose"], "TxDefaultProfile");
    assert!(profile.get("transactionId").is_none());
    assert_eq!(profile["chargingSchedule"]["chargingRateUnit"], "W");
    assert_eq!(status, "Rejected", "the station's answer, as it is");
    assert!(matches!(
        csms.set_limit("", 1, 10.0, "kW").await,
        Err(CsmsError::InvalidArgument(_))
    ));

    let c = csms.clone();
    let (action, payload, _) = exchange(
        &mut station,
        async move { c.clear_limit("", 1).await },
        accepted.clone(),
    )
    .await;
    assert_eq!(
        (action.as_str(), payload),
        ("ClearChargingProfile", json!({"connectorId": 1}))
    );

    let c = csms.clone();
    let (action, payload, _) = exchange(
        &mut station,
        async move { c.reset("CP-1", "Hard").await },
        accepted.clone(),
    )
    .await;
    assert_eq!(
        (action.as_str(), payload),
        ("Reset", json!({"type": "Hard"}))
    );

    let c = csms.clone();
    let (action, payload, _) = exchange(
        &mut station,
        async move { c.trigger("", "statusnotification", 1).await },
        accepted.clone(),
    )
    .await;
    assert_eq!(
        (action.as_str(), payload),
        (
            "TriggerMessage",
            json!({"requestedMessage": "StatusNotification", "connectorId": 1})
        )
    );
    assert!(matches!(
        csms.trigger("", "Coffee", 0).await,
        Err(CsmsError::InvalidArgument(_))
    ));

    let c = csms.clone();
    let (action, payload, keys) = exchange(
        &mut station,
        async move {
            c.get_configuration("", &["HeartbeatInterval".into(), "Nope".into()])
                .await
        },
        json!({"configurationKey": [{"key": "HeartbeatInterval", "readonly": false, "value": "42"}],
               "unknownKey": ["Nope"]}),
    )
    .await;
    assert_eq!(action, "GetConfiguration");
    assert_eq!(payload, json!({"key": ["HeartbeatInterval", "Nope"]}));
    assert_eq!(keys, vec![("HeartbeatInterval".into(), false, "42".into())]);

    let c = csms.clone();
    let (action, payload, status) = exchange(
        &mut station,
        async move { c.change_configuration("", "HeartbeatInterval", "30").await },
        json!({"status": "RebootRequired"}),
    )
    .await;
    assert_eq!(
        (action.as_str(), payload, status.as_str()),
        (
            "ChangeConfiguration",
            json!({"key": "HeartbeatInterval", "value": "30"}),
            "RebootRequired"
        )
    );

    // An answer that is not the action's .conf is refused.
    let task = tokio::spawn({
        let c = csms.clone();
        async move { c.reset("", "soft").await }
    });
    let (id, _, _) = station.next_call().await;
    station.answer(&id, json!({"status": "Maybe"})).await;
    assert!(matches!(
        task.await.unwrap(),
        Err(CsmsError::BadAnswer {
            action: "Reset",
            ..
        })
    ));
}

#[tokio::test]
async fn a_second_station_makes_the_empty_name_ambiguous_and_a_reconnect_replaces() {
    let (csms, address, _server) = start(None).await;
    let _one = Station::connect(address, "CP-1").await;
    let mut two = Station::connect(address, "CP-2").await;
    until(&csms, |c| {
        c.stations().iter().filter(|s| s.connected).count() == 2
    })
    .await;
    let Err(CsmsError::Ambiguous(2, names)) = csms.reset("", "soft").await else {
        panic!("two connected stations need a name");
    };
    assert_eq!(names, "CP-1, CP-2");

    // CP-2 connects again (as after a restart without a close): the new
    // connection takes the commands, the old one is closed.
    let mut again = Station::connect(address, "CP-2").await;
    let task = tokio::spawn({
        let c = csms.clone();
        async move { c.reset("CP-2", "soft").await }
    });
    let (id, action, _) = again.next_call().await;
    assert_eq!(action, "Reset");
    again.answer(&id, json!({"status": "Accepted"})).await;
    assert_eq!(task.await.unwrap().unwrap(), "Accepted");
    assert!(
        two.ws
            .next()
            .await
            .is_none_or(|m| m.is_err() || m.is_ok_and(|m| m.is_close())),
        "the replaced connection ends"
    );
    assert!(csms.stations().iter().all(|s| s.connected));
}

#[tokio::test]
async fn a_station_that_does_not_answer_fails_the_command() {
    let server = Server::bind(config(), None)
        .await
        .unwrap()
        .response_timeout(Duration::from_millis(50));
    let (csms, address, _server) = start_with(server).await;
    let mut station = Station::connect(address, "CP-1").await;
    station.boot().await;
    let task = tokio::spawn({
        let c = csms.clone();
        async move { c.reset("", "soft").await }
    });
    let (id, _, _) = station.next_call().await;
    assert!(matches!(
        task.await.unwrap(),
        Err(CsmsError::Timeout { action: "Reset" })
    ));
    // A late answer settles nothing, and the line is free again.
    station.answer(&id, json!({"status": "Accepted"})).await;
    let task = tokio::spawn({
        let c = csms.clone();
        async move { c.reset("", "hard").await }
    });
    let (id, _, payload) = station.next_call().await;
    assert_eq!(payload, json!({"type": "Hard"}));
    station.answer(&id, json!({"status": "Rejected"})).await;
    assert_eq!(task.await.unwrap().unwrap(), "Rejected");
}

#[tokio::test]
async fn an_upgrade_without_ocpp16_is_refused_with_http_400() {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let (csms, address, _server) = start(None).await;
    for subprotocol in [Some("ocpp2.0.1"), None] {
        let Err(WsError::Http(response)) = upgrade(address, "/CP-1", subprotocol).await else {
            panic!("{subprotocol:?} must be refused");
        };
        assert_eq!(response.status(), 400, "{subprotocol:?}");
    }
    let Err(WsError::Http(response)) = upgrade(address, "/", Some("ocpp1.6")).await else {
        panic!("no identity: refused");
    };
    assert_eq!(response.status(), 404);
    // Offered among others, ocpp1.6 is chosen.
    let (_ws, response) = upgrade(address, "/CP-9", Some("ocpp2.0.1, ocpp1.6"))
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "ocpp1.6"
    );
    until(&csms, |c| c.stations().iter().any(|s| s.id == "CP-9")).await;
    assert_eq!(csms.stations().len(), 1, "refused upgrades leave no trace");
}

#[test]
fn config_is_validated() {
    let mut c = config();
    assert!(c.validate().is_ok());
    c.tokens.push("X".repeat(21));
    assert_eq!(c.validate().unwrap_err().key, "sim.csms.tokens");
    let c = Config {
        heartbeat_interval_s: 0,
        ..config()
    };
    assert!(c.validate().is_err());
    let parsed: Config = serde_json::from_value(json!({"port": 9000, "tokens": ["A"]})).unwrap();
    assert_eq!(parsed.heartbeat_interval_s, 60);
}
