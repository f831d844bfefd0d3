//! Our Modbus client and the SDM630 register map against an independent
//! meter: pymodbus serving tests/peers/modbus_meter.py, which computes its
//! register words itself. Faults are injected through the peer's stdin.

mod harness;

use std::time::{Duration, Instant};

use evos_meter::reading::Reading;
use evos_meter::register_map::RegisterMap;
use evos_meter::transport::{ModbusBus, ModbusError, TransportAddress};
use harness::python::{PeerProcess, spawn_modbus_meter};

/// The bus timeout: a deadline for each request, never a sleep.
const TIMEOUT: Duration = Duration::from_millis(300);
const UNIT: u8 = 1;

fn bus(peer: &PeerProcess) -> ModbusBus {
    bus_at(peer.port())
}

fn bus_at(port: u16) -> ModbusBus {
    let address: TransportAddress = format!("tcp:127.0.0.1:{port}").parse().unwrap();
    ModbusBus::new(address, TIMEOUT)
}

fn sdm630() -> RegisterMap {
    RegisterMap::load("sdm630").expect("the shipped sdm630 map")
}

/// Every block of the map, read one request each, then decoded. A guard
/// deadline well above TIMEOUT keeps a hung read from hanging the test.
async fn read(bus: &ModbusBus, unit: u8) -> Result<Reading, ModbusError> {
    let map = sdm630();
    let blocks = map.blocks();
    let mut data = Vec::new();
    for block in &blocks {
        let words = tokio::time::timeout(TIMEOUT * 10, bus.read(unit, *block))
            .await
            .expect("ModbusBus::read kept its own deadline")?;
        data.push(words);
    }
    Ok(map
        .decode(&blocks, &data, 0)
        .expect("the peer's words decode"))
}

async fn read_ok(bus: &ModbusBus) -> Reading {
    read(bus, UNIT)
        .await
        .unwrap_or_else(|e| panic!("reading the peer failed: {e}"))
}

/// float32 on the wire: compare at its precision.
fn close(got: Option<f64>, want: f64) -> bool {
    got.is_some_and(|g| (g - want).abs() <= want.abs() * 1e-6 + 1e-6)
}

#[tokio::test]
async fn decodes_what_the_independent_meter_serves() {
    let mut peer = spawn_modbus_meter(&[
        "--port",
        "0",
        "--unit",
        "1",
        "--energy-kwh",
        "1234.5",
        "--power-w",
        "7000",
    ]);
    let bus = bus(&peer);

    let r = read_ok(&bus).await;
    assert_eq!(r.energy_import_wh, 1_234_500.0, "{r:?}");
    assert_eq!(r.energy_export_wh, Some(0.0), "{r:?}");
    assert_eq!(r.power_w, Some(7000.0), "{r:?}");
    assert_eq!(r.voltage_v, vec![Some(230.0); 3], "{r:?}");
    assert_eq!(r.frequency_hz, Some(50.0), "{r:?}");
    for phase in 0..3 {
        assert!(close(r.power_phase_w[phase], 7000.0 / 3.0), "{r:?}");
        assert!(close(r.current_a[phase], 7000.0 / 3.0 / 230.0), "{r:?}");
    }

    // Move the meter while the bus stays connected.
    peer.send("energy 1300.0");
    peer.send("export 2.5");
    peer.send("power 0");
    peer.send("voltage 229.5 230.5 231");
    peer.send("frequency 49.75");
    let r = read_ok(&bus).await;
    assert_eq!(r.energy_import_wh, 1_300_000.0, "{r:?}");
    assert_eq!(r.energy_export_wh, Some(2_500.0), "{r:?}");
    assert_eq!(r.power_w, Some(0.0), "{r:?}");
    assert_eq!(r.power_phase_w, vec![Some(0.0); 3], "{r:?}");
    assert_eq!(r.current_a, vec![Some(0.0); 3], "{r:?}");
    assert_eq!(
        r.voltage_v,
        vec![Some(229.5), Some(230.5), Some(231.0)],
        "{r:?}"
    );
    assert_eq!(r.frequency_hz, Some(49.75), "{r:?}");

    // Another unit id on the same connection: the gateway's exception 0x0B.
    match read(&bus, 2).await {
        Err(ModbusError::Exception(code)) => assert_eq!(u8::from(code), 0x0B),
        other => panic!("unit 2 should be absent: {other:?}"),
    }
    read_ok(&bus).await;
}

#[tokio::test]
async fn energy_follows_power_when_the_meter_advances() {
    // 3600 x real time at 3.6 kW: 1 Wh per millisecond.
    let peer = spawn_modbus_meter(&[
        "--port",
        "0",
        "--energy-kwh",
        "10",
        "--power-w",
        "3600",
        "--advance",
        "3600",
    ]);
    let bus = bus(&peer);
    let first = read_ok(&bus).await.energy_import_wh;
    assert!(first >= 10_000.0, "{first}");
    let deadline = Instant::now() + harness::DEADLINE;
    loop {
        let now = read_ok(&bus).await.energy_import_wh;
        if now > first {
            break;
        }
        assert!(Instant::now() < deadline, "energy stayed at {now} Wh");
    }
}

#[tokio::test]
async fn a_silent_meter_times_out_at_the_deadline_and_the_bus_recovers() {
    let mut peer = spawn_modbus_meter(&["--port", "0", "--energy-kwh", "1", "--mode", "timeout"]);
    let bus = bus(&peer);
    for _ in 0..2 {
        let start = Instant::now();
        let outcome = read(&bus, UNIT).await;
        let took = start.elapsed();
        assert!(
            matches!(outcome, Err(ModbusError::Timeout(t)) if t == TIMEOUT),
            "{outcome:?}"
        );
        assert!(
            took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1),
            "timed out after {took:?}, the deadline is {TIMEOUT:?}"
        );
    }
    peer.send("mode normal");
    assert_eq!(read_ok(&bus).await.energy_import_wh, 1_000.0);
    // And silence injected mid-test, on an open connection.
    peer.send("mode timeout");
    assert!(matches!(
        read(&bus, UNIT).await,
        Err(ModbusError::Timeout(_))
    ));
    peer.send("mode normal");
    read_ok(&bus).await;
}

#[tokio::test]
async fn an_exception_response_carries_its_code() {
    let mut peer = spawn_modbus_meter(&["--port", "0", "--energy-kwh", "2", "--mode", "exception"]);
    let bus = bus(&peer);
    match read(&bus, UNIT).await {
        Err(ModbusError::Exception(code)) => assert_eq!(u8::from(code), 0x04, "{code}"),
        other => panic!("expected exception 4 (server device failure): {other:?}"),
    }
    peer.send("mode normal");
    assert_eq!(read_ok(&bus).await.energy_import_wh, 2_000.0);
    peer.send("mode exception");
    assert!(matches!(
        read(&bus, UNIT).await,
        Err(ModbusError::Exception(_))
    ));
    peer.send("mode normal");
    read_ok(&bus).await;
}

#[tokio::test]
async fn garbage_is_an_error_not_a_panic_and_the_bus_recovers() {
    let mut peer = spawn_modbus_meter(&["--port", "0", "--energy-kwh", "3"]);
    let bus = bus(&peer);
    read_ok(&bus).await;
    peer.send("mode garbage");
    for _ in 0..2 {
        let outcome = read(&bus, UNIT).await;
        assert!(
            matches!(outcome, Err(ModbusError::Protocol(_) | ModbusError::Io(_))),
            "garbage must be a protocol or transport error: {outcome:?}"
        );
    }
    peer.send("mode normal");
    assert_eq!(read_ok(&bus).await.energy_import_wh, 3_000.0);
}

#[tokio::test]
async fn the_bus_reconnects_to_a_restarted_meter() {
    let mut peer = spawn_modbus_meter(&["--port", "0", "--energy-kwh", "4"]);
    let port = peer.port();
    let bus = bus_at(port);
    assert_eq!(read_ok(&bus).await.energy_import_wh, 4_000.0);

    peer.kill();
    // The open connection is dead, and then nobody listens.
    for _ in 0..2 {
        let outcome = read(&bus, UNIT).await;
        assert!(
            matches!(
                outcome,
                Err(ModbusError::Io(_) | ModbusError::Connect { .. })
            ),
            "{outcome:?}"
        );
    }

    let port_arg = port.to_string();
    let _peer = spawn_modbus_meter(&["--port", &port_arg, "--energy-kwh", "5"]);
    assert_eq!(read_ok(&bus).await.energy_import_wh, 5_000.0);
}
