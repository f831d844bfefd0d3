//! Modbus RTU through a pty: two SDM630 meters (units 1 and 2) on one line,
//! served by tokio-modbus's RTU server (an implementation that is not ours),
//! read by one shared `ModbusBus` and decoded with the shipped sdm630 map.
//!
//! ```text
//!  ModbusBus ── slave C ═ pty C ═ master C ─┐          ┌─ master S ═ pty S ═ slave S ── RTU server
//!  (rtu:/dev/pts/N:9600:8N1)                └── wire ──┘                                (units 1, 2)
//! ```
//!
//! The `wire` task in the middle forwards every byte unchanged and counts
//! frames in both directions, so the tests can assert what the server saw
//! on the line: a request never reaches it while another is unanswered.
//! (A counter inside the server's handler could not show this: the
//! tokio-modbus server handles one decoded frame at a time whatever the
//! client does, so its own in-flight count is 1 by construction.)
//!
//! The register words are built here from the Eastron document (float32,
//! high word first, at the addresses of table 1.2.1), not with our encoder.
//! No sleeps: every wait is a read that completes or a bus deadline.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evos_meter::reading::Reading;
use evos_meter::register_map::RegisterMap;
use evos_meter::transport::{ModbusBus, ModbusError, SerialLine, TransportAddress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

#[path = "support/pty.rs"]
mod pty;
#[path = "support/registers.rs"]
mod registers;
use pty::open_pty;

/// The bus deadline per request. Only the wrong-unit test waits it out.
const TIMEOUT: Duration = Duration::from_millis(300);

/// What one simulated SDM630 holds, as the meter keeps it (float32).
struct MeterValues {
    unit: u8,
    volts: [f32; 3],
    amps: [f32; 3],
    watts: [f32; 3],
    total_watts: f32,
    hertz: f32,
    import_kwh: f32,
    export_kwh: f32,
}

const METER_1: MeterValues = MeterValues {
    unit: 1,
    volts: [230.0, 230.5, 229.5],
    amps: [10.0, 11.0, 12.0],
    watts: [2300.0, 2535.5, 2754.0],
    total_watts: 7589.5,
    hertz: 50.0,
    import_kwh: 1234.5,
    export_kwh: 0.25,
};

const METER_2: MeterValues = MeterValues {
    unit: 2,
    volts: [240.0, 241.0, 239.0],
    amps: [30.0, 31.0, 32.0],
    watts: [7200.0, 7471.0, 7648.0],
    total_watts: 22319.0,
    hertz: 49.9,
    import_kwh: 98765.25,
    export_kwh: 12.5,
};

impl MeterValues {
    /// Input registers per "Eastron SDM630 Modbus Protocol V1.8" table
    /// 1.2.1: each value an IEEE 754 float32, most significant word first.
    fn registers(&self) -> BTreeMap<u16, u16> {
        let mut values = vec![
            (0x0034, self.total_watts),
            (0x0046, self.hertz),
            (0x0048, self.import_kwh),
            (0x004A, self.export_kwh),
        ];
        for phase in 0..3u16 {
            let i = usize::from(phase);
            values.push((2 * phase, self.volts[i]));
            values.push((0x0006 + 2 * phase, self.amps[i]));
            values.push((0x000C + 2 * phase, self.watts[i]));
        }
        let mut words = BTreeMap::new();
        for (address, value) in values {
            let bits = value.to_bits();
            words.insert(address, (bits >> 16) as u16);
            words.insert(address + 1, bits as u16);
        }
        words
    }

    /// The reading that the sdm630 map must make of these registers
    /// (energies in Wh, the rest in their own units).
    fn assert_is(&self, r: &Reading) {
        let v = |x: f32| f64::from(x);
        let three = |xs: [f32; 3]| xs.map(|x| Some(v(x))).to_vec();
        let unit = self.unit;
        assert_eq!(
            r.energy_import_wh,
            v(self.import_kwh) * 1e3,
            "unit {unit}: {r:?}"
        );
        assert_eq!(
            r.energy_export_wh,
            Some(v(self.export_kwh) * 1e3),
            "unit {unit}: {r:?}"
        );
        assert_eq!(r.power_w, Some(v(self.total_watts)), "unit {unit}: {r:?}");
        assert_eq!(r.power_phase_w, three(self.watts), "unit {unit}: {r:?}");
        assert_eq!(r.voltage_v, three(self.volts), "unit {unit}: {r:?}");
        assert_eq!(r.current_a, three(self.amps), "unit {unit}: {r:?}");
        assert_eq!(r.frequency_hz, Some(v(self.hertz)), "unit {unit}: {r:?}");
    }
}

/// The server side: one register image per unit; other units stay silent,
/// as a real RS-485 slave does for a request that is not addressed to it.
struct Meters {
    registers: BTreeMap<u8, BTreeMap<u16, u16>>,
    /// Every request the server decoded, by unit, in order.
    seen: Mutex<Vec<u8>>,
}

impl tokio_modbus::server::Service for Meters {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.seen.lock().unwrap().push(req.slave);
        let Some(registers) = self.registers.get(&req.slave) else {
            return std::future::ready(Ok(None));
        };
        std::future::ready(registers::answer(registers, req.request))
    }
}

/// Frames on the wire, counted by the task that forwards them.
#[derive(Default, Debug)]
struct Wire {
    answered_units: Vec<u8>,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    /// Requests forwarded to the server.
    requests: usize,
    /// Of those, addressed to a unit that does not answer.
    unanswered: usize,
    responses: usize,
    /// Requests forwarded whose response has not been forwarded yet.
    in_flight: usize,
    max_in_flight: usize,
}

impl Wire {
    /// Client → server bytes. Every request the client sends here (FC 03,
    /// 04, 06) is 8 bytes: unit, function, 4 bytes, CRC.
    fn client_sent(&mut self, bytes: &[u8]) {
        self.to_server.extend_from_slice(bytes);
        while self.to_server.len() >= 8 {
            let frame: Vec<u8> = self.to_server.drain(..8).collect();
            assert!(
                matches!(frame[1], 3 | 4 | 6),
                "an unexpected request on the wire: {frame:02x?}"
            );
            self.requests += 1;
            if self.answered_units.contains(&frame[0]) {
                self.in_flight += 1;
                self.max_in_flight = self.max_in_flight.max(self.in_flight);
            } else {
                self.unanswered += 1;
            }
        }
    }

    /// Server → client bytes: register reads (5 + byte count), a write
    /// echo (8) or an exception (5).
    fn server_sent(&mut self, bytes: &[u8]) {
        self.to_client.extend_from_slice(bytes);
        while self.to_client.len() >= 3 {
            let function = self.to_client[1];
            let len = match function {
                f if f & 0x80 != 0 => 5,
                3 | 4 => 5 + usize::from(self.to_client[2]),
                6 => 8,
                _ => panic!(
                    "an unexpected response on the wire: {:02x?}",
                    self.to_client
                ),
            };
            if self.to_client.len() < len {
                break;
            }
            self.to_client.drain(..len);
            self.responses += 1;
            self.in_flight = self
                .in_flight
                .checked_sub(1)
                .expect("a response on the wire with no request outstanding");
        }
    }
}

/// A tokio serial stream over a pty fd (it takes the fd).
fn serial(fd: OwnedFd) -> tokio_serial::SerialStream {
    // SAFETY: `fd` is an open tty fd whose ownership moves into the port.
    let port = unsafe { serialport::TTYPort::from_raw_fd(fd.into_raw_fd()) };
    tokio_serial::SerialStream::try_from(port).expect("a serial stream over the pty")
}

/// Forward bytes both ways between the two masters, counting frames.
async fn forward(
    mut client: tokio_serial::SerialStream,
    mut server: tokio_serial::SerialStream,
    wire: Arc<Mutex<Wire>>,
) {
    let mut from_client = [0u8; 512];
    let mut from_server = [0u8; 512];
    loop {
        // Both reads are cancel-safe; the frame count is updated before
        // the bytes are passed on, so it is current when they arrive.
        tokio::select! {
            n = client.read(&mut from_client) => {
                let bytes = &from_client[..n.expect("reading the client's pty")];
                wire.lock().unwrap().client_sent(bytes);
                server.write_all(bytes).await.expect("writing to the server's pty");
            }
            n = server.read(&mut from_server) => {
                let bytes = &from_server[..n.expect("reading the server's pty")];
                wire.lock().unwrap().server_sent(bytes);
                client.write_all(bytes).await.expect("writing to the client's pty");
            }
        }
    }
}

/// The line: server, wire and the one bus both meters share.
struct Line {
    bus: Arc<ModbusBus>,
    wire: Arc<Mutex<Wire>>,
    meters: Arc<Meters>,
    /// The client pty's slave, held open so its master never sees a hang-up
    /// while the bus has its port closed (after a timeout).
    _client_slave: OwnedFd,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Line {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn line(meters: &[&MeterValues]) -> Line {
    let client = open_pty();
    let server = open_pty();
    let wire = Arc::new(Mutex::new(Wire {
        answered_units: meters.iter().map(|m| m.unit).collect(),
        ..Wire::default()
    }));
    let registry = Arc::new(Meters {
        registers: meters.iter().map(|m| (m.unit, m.registers())).collect(),
        seen: Mutex::new(Vec::new()),
    });
    let rtu_server = tokio_modbus::server::rtu::Server::new(serial(server.slave));
    let served = registry.clone();
    let tasks = vec![
        tokio::spawn(async move {
            rtu_server
                .serve_forever(served)
                .await
                .expect("the RTU server stopped");
        }),
        tokio::spawn(forward(
            serial(client.master),
            serial(server.master),
            wire.clone(),
        )),
    ];
    let address = TransportAddress::Rtu(SerialLine {
        device: client.slave_path,
        baud: 9600,
        data_bits: 8,
        parity: 'N',
        stop_bits: 1,
    });
    Line {
        bus: Arc::new(ModbusBus::new(address, TIMEOUT)),
        wire,
        meters: registry,
        _client_slave: client.slave,
        tasks,
    }
}

/// Read every block of the sdm630 map from `unit` and decode: what the
/// meter service does per poll.
async fn read(bus: &ModbusBus, unit: u8) -> Result<Reading, ModbusError> {
    let map = RegisterMap::load("sdm630").expect("the shipped sdm630 map");
    let blocks = map.blocks();
    let mut data = Vec::with_capacity(blocks.len());
    for block in &blocks {
        data.push(bus.read(unit, *block).await?);
    }
    Ok(map
        .decode(&blocks, &data, 0)
        .expect("the served registers decode"))
}

fn requests_per_reading() -> usize {
    RegisterMap::load("sdm630").unwrap().blocks().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meters_on_one_rtu_line_each_answer_with_their_own_values() {
    let line = line(&[&METER_1, &METER_2]);

    METER_1.assert_is(&read(&line.bus, 1).await.expect("unit 1"));
    METER_2.assert_is(&read(&line.bus, 2).await.expect("unit 2"));
    METER_1.assert_is(&read(&line.bus, 1).await.expect("unit 1 again"));

    let per = requests_per_reading();
    let wire = line.wire.lock().unwrap();
    assert_eq!(
        (wire.requests, wire.responses),
        (3 * per, 3 * per),
        "{wire:?}"
    );
    let seen = line.meters.seen.lock().unwrap().clone();
    let expected: Vec<u8> = [1u8, 2, 1]
        .iter()
        .flat_map(|u| std::iter::repeat_n(*u, per))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_from_two_tasks_never_overlap_on_the_wire() {
    const READINGS: usize = 25;
    let line = line(&[&METER_1, &METER_2]);
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let reader = |meter: &'static MeterValues| {
        let bus = line.bus.clone();
        let start = start.clone();
        tokio::spawn(async move {
            start.wait().await;
            for _ in 0..READINGS {
                let reading = read(&bus, meter.unit)
                    .await
                    .unwrap_or_else(|e| panic!("unit {}: {e}", meter.unit));
                meter.assert_is(&reading);
            }
        })
    };
    let (one, two) = (reader(&METER_1), reader(&METER_2));
    one.await.expect("the unit 1 reader");
    two.await.expect("the unit 2 reader");

    let requests = 2 * READINGS * requests_per_reading();
    let wire = line.wire.lock().unwrap();
    assert_eq!(wire.requests, requests, "{wire:?}");
    assert_eq!(wire.responses, requests, "{wire:?}");
    assert_eq!(
        wire.max_in_flight, 1,
        "a request reached the server while another was unanswered: {wire:?}"
    );
    let seen = line.meters.seen.lock().unwrap();
    for unit in [1, 2] {
        let n = seen.iter().filter(|u| **u == unit).count();
        assert_eq!(n, requests / 2, "requests for unit {unit}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_unit_times_out_and_the_line_keeps_working() {
    let line = line(&[&METER_1, &METER_2]);
    METER_1.assert_is(&read(&line.bus, 1).await.expect("unit 1 before"));

    // Nobody answers as unit 7: the bus deadline ends the wait.
    let outcome = tokio::time::timeout(TIMEOUT * 10, read(&line.bus, 7))
        .await
        .expect("ModbusBus::read keeps its own deadline");
    assert!(
        matches!(outcome, Err(ModbusError::Timeout(t)) if t == TIMEOUT),
        "{outcome:?}"
    );

    // The bus closed the port after the timeout and opens it afresh on the
    // next request (tokio-serial clears its TIOCEXCL on close, so the
    // reopen works for a non-root user too).
    METER_2.assert_is(&read(&line.bus, 2).await.expect("unit 2 after the timeout"));
    METER_1.assert_is(&read(&line.bus, 1).await.expect("unit 1 after the timeout"));

    let per = requests_per_reading();
    // The server answers in order, so it has seen unit 7's request by now:
    // the silence was the server's, not a lost frame.
    let seen = line.meters.seen.lock().unwrap();
    assert_eq!(seen.iter().filter(|u| **u == 7).count(), 1, "{seen:?}");
    let wire = line.wire.lock().unwrap();
    assert_eq!(wire.unanswered, 1, "{wire:?}");
    assert_eq!(wire.responses, 3 * per, "{wire:?}");
    assert_eq!(wire.max_in_flight, 1, "{wire:?}");
}
