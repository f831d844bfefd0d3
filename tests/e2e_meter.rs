//! End-to-end metering: hal-sim's emulated SDM630 over Modbus TCP, the real
//! `meter` service reading it through the shipped register map, and `evse`
//! taking session energy from Meter1. Everything runs as processes on a
//! real dbus-daemon.

mod harness;

use harness::{Stack, TOKEN, next_ended, wait_meter, wait_status};

async fn charging(stack: &Stack) -> String {
    let sim = stack.sim().await;
    let evse = stack.evse().await;
    wait_status(&evse, "Available").await;
    sim.plug(1, "ac-11kw").await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap();
    wait_status(&evse, "Charging").await;
    evse.session_id().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_energy_comes_from_signed_meter_transactions() {
    let stack = Stack::start().await;
    let meter = stack.meter().await;
    assert_eq!(meter.model().await.unwrap(), "Eastron SDM630 Modbus V2");
    assert_eq!(meter.evse().await.unwrap(), 1);
    let public_key = meter.public_key().await.unwrap();
    assert!(
        public_key.len() > 100,
        "a DER public key in hex: {public_key}"
    );

    // Idle: grid voltage, no current.
    wait_meter(&meter, "a first reading", async |m| {
        (m.timestamp_ms().await.ok()? > 0).then_some(())
    })
    .await;
    let voltages = meter.voltage_v().await.unwrap();
    assert_eq!(voltages.len(), 3);
    assert!(
        voltages.iter().all(|v| (v - 230.0).abs() < 1.0),
        "{voltages:?}"
    );
    assert!((meter.frequency_hz().await.unwrap() - 50.0).abs() < 0.1);

    let evse = stack.evse().await;
    let mut ended = evse.receive_session_ended().await.unwrap();
    let session = charging(&stack).await;
    // 3 × 16 A × 230 V.
    let power = wait_meter(&meter, "charging power", async |m| {
        let p = m.power_w().await.ok()?;
        (p > 10_000.0).then_some(p)
    })
    .await;
    assert!((power - 11_040.0).abs() < 50.0, "{power} W");
    let currents = meter.current_a().await.unwrap();
    assert!(
        currents.iter().all(|a| (a - 16.0).abs() < 0.1),
        "{currents:?}"
    );
    let start_wh = meter.energy_import_wh().await.unwrap();
    wait_meter(&meter, "energy flowing", async |m| {
        (m.energy_import_wh().await.ok()? > start_wh + 30.0).then_some(())
    })
    .await;

    stack.sim().await.unplug(1).await.unwrap();
    let record = next_ended(&mut ended).await;
    assert_eq!(record.id, session);

    // The record's readings are the meter's persisted transaction readings;
    // asking again returns the same records (idempotent).
    let start = meter.start_transaction(&session, TOKEN).await.unwrap();
    let stop = meter.stop_transaction(&session).await.unwrap();
    assert_eq!(
        record.start_meter_wh, start.energy_wh,
        "{record:?} {start:?}"
    );
    assert_eq!(record.stop_meter_wh, stop.energy_wh, "{record:?} {stop:?}");
    assert!(record.energy_wh() > 30.0, "{record:?}");
    assert_eq!(meter.stop_transaction(&session).await.unwrap(), stop);
    let file = stack
        .dir
        .path()
        .join(format!("state/meter/transactions/{session}.json"));
    assert!(file.exists(), "persisted at {}", file.display());

    // The stop record is OCMF with both readings, signed by the station.
    let verified = evos_meter::ocmf::verify(&stop.ocmf, &public_key).expect("a valid signature");
    assert!(verified.signed_by_charger);
    let start_check = evos_meter::ocmf::verify(&start.ocmf, &public_key).expect("valid");
    assert!(start_check.signed_by_charger);
    // The same key in PEM beside the private one, for users.
    let pem = std::fs::read_to_string(stack.dir.path().join("state/meter/ocmf-key.pub.pem"))
        .expect("the public key in PEM");
    evos_meter::ocmf::verify(&stop.ocmf, &pem).expect("valid with the PEM key");
    let tampered = stop.ocmf.replacen("\"TX\":\"E\"", "\"TX\":\"T\"", 1);
    assert_ne!(tampered, stop.ocmf);
    assert!(evos_meter::ocmf::verify(&tampered, &public_key).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_restart_between_start_and_stop_keeps_the_start_record() {
    let mut stack = Stack::start().await;
    let evse = stack.evse().await;
    let mut ended = evse.receive_session_ended().await.unwrap();
    let session = charging(&stack).await;
    let meter = stack.meter().await;
    let start = meter.start_transaction(&session, TOKEN).await.unwrap();
    assert!(start.ocmf.starts_with("OCMF|"), "{start:?}");

    // kill -9: nothing flushed, nothing said.
    stack.meter.kill().unwrap();
    stack.restart_meter();
    let meter = stack.meter().await;
    assert_eq!(
        meter.start_transaction(&session, TOKEN).await.unwrap(),
        start,
        "the same start record, signature and all, after the restart"
    );
    wait_meter(&meter, "energy after the restart", async |m| {
        (m.energy_import_wh().await.ok()? > start.energy_wh + 20.0).then_some(())
    })
    .await;

    stack.sim().await.unplug(1).await.unwrap();
    let record = next_ended(&mut ended).await;
    assert_eq!(record.start_meter_wh, start.energy_wh);
    assert!(record.stop_meter_wh > start.energy_wh + 20.0, "{record:?}");
    let stop = meter.stop_transaction(&session).await.unwrap();
    assert_eq!(stop.energy_wh, record.stop_meter_wh);
    let world = stack.sim_evse().await;
    // The register holds float32 kWh: equal to the world within its
    // resolution, never ahead of it.
    assert!(
        stop.energy_wh <= world.meter_wh + 0.01,
        "the stop reading is the register's, not more: {stop:?} {world:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_faults_are_reported_and_keep_the_last_good_reading() {
    let stack = Stack::start().await;
    let sim = stack.sim().await;
    let meter = stack.meter().await;
    let evse = stack.evse().await;
    let session = charging(&stack).await;
    wait_meter(&meter, "energy flowing", async |m| {
        (m.energy_import_wh().await.ok()? > 5.0).then_some(())
    })
    .await;

    for (kind, reason) in [
        ("offline", "unreachable"),
        ("exception", "exception"),
        ("garbage", "bad response"),
        ("backwards", "implausible: energy went backwards"),
        ("jump", "implausible: energy jumped"),
    ] {
        sim.meter_fault(1, kind).await.unwrap();
        let before = meter.energy_import_wh().await.unwrap();
        let fault = wait_meter(&meter, &format!("the {kind} fault"), async |m| {
            let f = m.fault().await.ok()?;
            f.starts_with(reason).then_some(f)
        })
        .await;
        // The last good reading stands: never lower, never the jump.
        let held = meter.energy_import_wh().await.unwrap();
        assert!(
            held >= before && held < before + 1000.0,
            "{kind}: {held} Wh after {before} Wh ({fault})"
        );
        // No transaction starts on a faulted meter.
        let refused = meter.start_transaction(&format!("probe-{kind}"), "").await;
        assert!(refused.is_err(), "{kind}: {refused:?}");

        sim.meter_fault(1, "clear").await.unwrap();
        wait_meter(&meter, &format!("recovery from {kind}"), async |m| {
            m.fault().await.ok()?.is_empty().then_some(())
        })
        .await;
        assert!(meter.energy_import_wh().await.unwrap() >= held);
    }
    // The session carried on through it all.
    assert_eq!(evse.session_id().await.unwrap(), session);
    assert_eq!(evse.status().await.unwrap(), "Charging");
}
