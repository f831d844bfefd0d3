//! End-to-end: the real `meter` service, as a process on a real
//! dbus-daemon, reading an independent Modbus TCP meter (pymodbus from
//! PyPI, tests/peers/modbus_meter.py) through the shipped SDM630 map. The
//! peer is moved and broken over its stdin while the service runs.

mod harness;

use std::path::Path;
use std::process::Child;

use evos_bus::meter::Meter1Proxy;
use harness::python::{PeerProcess, spawn_modbus_meter};
use harness::{spawn_ready, start_broker, wait_meter};

struct MeterStack {
    dir: tempfile::TempDir,
    bus: String,
    broker: Child,
    meter: Child,
    peer: PeerProcess,
    connection: zbus::Connection,
}

impl Drop for MeterStack {
    fn drop(&mut self) {
        for child in [&mut self.meter, &mut self.broker] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl MeterStack {
    /// A broker, the peer at 1234.5 kWh and 7 kW, and `meter` polling it
    /// every 100 ms with a 300 ms answer deadline. `ocmf` adds a register
    /// block where the meter keeps its own signed record.
    async fn start(ocmf: Option<&str>) -> MeterStack {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--port", "0", "--energy-kwh", "1234.5", "--power-w", "7000"];
        if let Some(record) = ocmf {
            args.extend(["--ocmf", record]);
        }
        let peer = spawn_modbus_meter(&args);
        let map = match ocmf {
            None => "sdm630".to_owned(),
            Some(_) => {
                // A user-written map: the SDM630's registers plus a signing
                // meter's record block and command register.
                let path = dir.path().join("signing-sdm630.toml");
                let base = evos_meter::register_map::SHIPPED
                    .iter()
                    .find(|(name, _)| *name == "sdm630")
                    .unwrap()
                    .1;
                let text = format!(
                    "{base}\n[ocmf]\naddress = 0x1000\nlength = 500\ncommand = 0x00F0\nbegin = 1\nend = 2\n"
                );
                std::fs::write(&path, text).unwrap();
                path.display().to_string()
            }
        };
        let config = dir.path().join("evos.toml");
        std::fs::write(
            &config,
            format!(
                "[meter]\npoll_interval_ms = 100\ntimeout_ms = 300\nsign = true\nstation_serial = \"PEER-TEST\"\n\n\
                 [[meter.meter]]\nevse = 1\nmap = \"{map}\"\ntransport = \"tcp:127.0.0.1:{}\"\nserial = \"PEER-0001\"\n\
                 max_power_w = 22000\n",
                peer.port()
            ),
        )
        .unwrap();
        let (broker, bus) = start_broker(dir.path());
        let meter = spawn_meter(dir.path(), &bus);
        let connection = evos_bus::connection_builder(Some(&bus))
            .build()
            .await
            .unwrap();
        MeterStack {
            dir,
            bus,
            broker,
            meter,
            peer,
            connection,
        }
    }

    async fn meter(&self) -> Meter1Proxy<'static> {
        Meter1Proxy::builder(&self.connection)
            .path(evos_bus::meter::path(1))
            .build()
            .await
            .unwrap()
    }

    /// kill -9 `meter` and start it again.
    fn kill_and_restart_meter(&mut self) {
        self.meter.kill().unwrap();
        let _ = self.meter.wait();
        self.meter = spawn_meter(self.dir.path(), &self.bus);
    }
}

fn spawn_meter(dir: &Path, bus: &str) -> Child {
    let config = dir.join("evos.toml");
    let state = dir.join("state");
    let args = [
        "run",
        "meter",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    spawn_ready(&args, dir, "meter", bus).0
}

async fn wait_cleared(meter: &Meter1Proxy<'_>) {
    wait_meter(meter, "no fault", async |m| {
        m.fault().await.ok()?.is_empty().then_some(())
    })
    .await
}

async fn wait_fault(meter: &Meter1Proxy<'_>, prefix: &str) -> String {
    wait_meter(meter, &format!("fault `{prefix}…`"), async |m| {
        let fault = m.fault().await.ok()?;
        fault.starts_with(prefix).then_some(fault)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_an_independent_sdm630_and_reports_its_faults() {
    let mut stack = MeterStack::start(None).await;
    let meter = stack.meter().await;
    // One poll updates every property, but each has its own
    // PropertiesChanged: wait for the last of the ones asserted below.
    wait_meter(&meter, "the peer's energy and power", async |m| {
        (m.energy_import_wh().await.ok()? == 1_234_500.0
            && m.power_w().await.ok()? == 7000.0
            && m.frequency_hz().await.ok()? == 50.0)
            .then_some(())
    })
    .await;
    assert_eq!(meter.voltage_v().await.unwrap(), vec![230.0; 3]);
    let amps = meter.current_a().await.unwrap();
    assert!(
        amps.iter().all(|a| (a - 7000.0 / 3.0 / 230.0).abs() < 1e-3),
        "{amps:?}"
    );
    assert_eq!(meter.frequency_hz().await.unwrap(), 50.0);
    assert_eq!(meter.energy_export_wh().await.unwrap(), 0.0);
    assert_eq!(meter.fault().await.unwrap(), "");

    for (mode, reason) in [
        ("timeout", "unreachable"),
        ("exception", "exception"),
        ("garbage", "bad response"),
    ] {
        stack.peer.send(&format!("mode {mode}"));
        let fault = wait_fault(&meter, reason).await;
        assert_eq!(
            meter.energy_import_wh().await.unwrap(),
            1_234_500.0,
            "{mode}: the last good reading stands ({fault})"
        );
        assert!(
            meter
                .start_transaction(&format!("during-{mode}"), "")
                .await
                .is_err(),
            "{mode}: no transaction starts on a faulted meter"
        );
        stack.peer.send("mode normal");
        wait_cleared(&meter).await;
    }

    // Energy that runs backwards, or faster than 22 kW could push it.
    stack.peer.send("energy 1200");
    wait_fault(&meter, "implausible: energy went backwards").await;
    assert_eq!(meter.energy_import_wh().await.unwrap(), 1_234_500.0);
    stack.peer.send("energy 1234.5");
    wait_cleared(&meter).await;
    stack.peer.send("energy 5000");
    wait_fault(&meter, "implausible: energy jumped").await;
    assert_eq!(meter.energy_import_wh().await.unwrap(), 1_234_500.0);
    // Back within what 22 kW can do since the last good reading.
    stack.peer.send("energy 1234.505");
    wait_cleared(&meter).await;
    let energy = meter.energy_import_wh().await.unwrap();
    assert!((energy - 1_234_505.0).abs() < 0.1, "{energy}");

    // The meter vanishes and comes back on the same port.
    let port = stack.peer.port().to_string();
    stack.peer.kill();
    wait_fault(&meter, "unreachable").await;
    stack.peer = spawn_modbus_meter(&["--port", &port, "--energy-kwh", "1234.51"]);
    wait_cleared(&meter).await;
    let energy = meter.energy_import_wh().await.unwrap();
    assert!((energy - 1_234_510.0).abs() < 0.1, "{energy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_restart_between_start_and_stop_gives_the_right_records() {
    let mut stack = MeterStack::start(None).await;
    let meter = stack.meter().await;
    let key = meter.public_key().await.unwrap();
    let start = meter.start_transaction("tx-1", "04A1B2C3").await.unwrap();
    assert_eq!(start.energy_wh, 1_234_500.0);
    let begin = evos_meter::ocmf::verify(&start.ocmf, &key).expect("signed start");
    assert!(begin.signed_by_charger);
    assert_eq!(
        begin.payload.identification_type.as_deref(),
        Some("ISO14443")
    );
    assert_eq!(
        begin.payload.identification_data.as_deref(),
        Some("04A1B2C3")
    );
    assert_eq!(begin.payload.meter_serial, "PEER-0001");

    // kill -9 between start and stop, while the meter moves on.
    stack.kill_and_restart_meter();
    stack.peer.send("energy 1240.25");
    let meter = stack.meter().await;
    assert_eq!(
        meter.public_key().await.unwrap(),
        key,
        "the same station key"
    );
    assert_eq!(
        meter.start_transaction("tx-1", "04A1B2C3").await.unwrap(),
        start,
        "the same start record after the restart"
    );
    let stop = meter.stop_transaction("tx-1").await.unwrap();
    assert_eq!(stop.energy_wh, 1_240_250.0);
    let end = evos_meter::ocmf::verify(&stop.ocmf, &key).expect("signed stop");
    let delivered = end.payload.energy_delivered().expect("B and E readings");
    assert!((delivered.value - 5.75).abs() < 1e-9, "{delivered}");
    assert_eq!(delivered.unit, "kWh");
    // Stopping again returns the persisted record; an unknown id is NotFound.
    assert_eq!(meter.stop_transaction("tx-1").await.unwrap(), stop);
    let unknown = meter.stop_transaction("tx-never").await.unwrap_err();
    assert!(
        matches!(unknown, evos_bus::Error::NotFound(_)),
        "{unknown:?}"
    );
    let bad = meter.start_transaction("../etc", "").await.unwrap_err();
    assert!(
        matches!(bad, evos_bus::Error::InvalidArgument(_)),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_signs_itself_has_its_records_passed_through() {
    // The meter's own key and records (made here, as the meter would).
    let keys = tempfile::tempdir().unwrap();
    let meter_key =
        evos_meter::ocmf::StationKey::load_or_create(&keys.path().join("meter.pem")).unwrap();
    let info = evos_meter::ocmf::TransactionInfo {
        meter_serial: "PEER-0001".into(),
        token: "04A1B2C3".into(),
        ..Default::default()
    };
    let point = |wh| evos_meter::ocmf::Point {
        timestamp_ms: 1_790_000_000_000,
        energy_wh: wh,
    };
    let own_begin =
        evos_meter::ocmf::sign_transaction(&meter_key, &info, &point(1_234_500.0), None).unwrap();
    let own_end = evos_meter::ocmf::sign_transaction(
        &meter_key,
        &info,
        &point(1_234_500.0),
        Some(&point(1_236_000.0)),
    )
    .unwrap();

    let mut stack = MeterStack::start(Some(&own_begin)).await;
    let meter = stack.meter().await;
    let start = meter.start_transaction("tx-own", "04A1B2C3").await.unwrap();
    assert_eq!(start.ocmf, own_begin, "passed through byte for byte");
    assert_eq!(
        stack.peer.send("holding 240"),
        "1",
        "the begin command was written"
    );
    stack.peer.send(&format!("ocmf {own_end}"));
    stack.peer.send("energy 1236");
    let stop = meter.stop_transaction("tx-own").await.unwrap();
    assert_eq!(stop.ocmf, own_end);
    assert_eq!(
        stack.peer.send("holding 240"),
        "2",
        "the end command was written"
    );
    evos_meter::ocmf::verify(&stop.ocmf, &meter_key.public_key_hex()).expect("the meter's key");
    let station_key = meter.public_key().await.unwrap();
    assert!(evos_meter::ocmf::verify(&stop.ocmf, &station_key).is_err());
}
