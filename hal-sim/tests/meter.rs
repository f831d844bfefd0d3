//! The emulated meters, read as the meter service reads a real one: over
//! Modbus TCP with tokio-modbus's client, through the register maps.
//!
//! No test sleeps: answers are awaited with a deadline, and silence is
//! proven by waiting (with a deadline) until the server has taken the
//! request, then letting paused time run out the client's timeout.

use std::net::SocketAddr;
use std::time::Duration;

use evos_hal::mcu::{HostMessage, McuMessage, McuStream};
use evos_hal::{Measurement, PwmOutput};
use evos_meter::reading::Reading;
use evos_meter::register_map::{Quantity, RegisterMap, SHIPPED};
use hal_sim::evse::{Command, SimEvseSpec};
use hal_sim::meter::{BACKWARDS_WH, JUMP_WH, MeterFaultKind, MeterServer, MeterUnit, Terminals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

const DEADLINE: Duration = Duration::from_secs(10);
const UNIT: u8 = 1;

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

/// An AC EVSE charging 3 × 16 A.
fn charging() -> Terminals {
    Terminals {
        energy_wh: 12_345.6,
        voltage_v: [230.0; 3],
        current_a: [16.0; 3],
        ..Terminals::default()
    }
}

struct Meter {
    address: SocketAddr,
    map: RegisterMap,
    world: watch::Sender<Terminals>,
    seen: watch::Receiver<u64>,
}

impl Meter {
    async fn start(map_name: &str, terminals: Terminals) -> Meter {
        let map = RegisterMap::load(map_name).unwrap();
        let (world, watching) = watch::channel(terminals);
        let (address, seen) = serve(vec![MeterUnit {
            unit: UNIT,
            map: map.clone(),
            terminals: watching,
        }])
        .await;
        Meter {
            address,
            map,
            world,
            seen,
        }
    }

    async fn client(&self) -> Context {
        client(self.address, UNIT).await
    }

    fn fault(&self, kind: MeterFaultKind) {
        self.world.send_modify(|t| {
            t.faults.insert(kind);
        });
    }

    fn clear(&self) {
        self.world.send_modify(|t| t.faults.clear());
    }

    /// What the registers of this meter should say: the truth as the map
    /// encodes it, decoded again (so register resolution is accounted).
    fn expected(&self, quantity: Quantity) -> Option<f64> {
        let register = self.map.registers.get(&quantity)?;
        let truth = self.world.borrow().shown(&self.map, 0).quantity(quantity)?;
        register.decode(&register.encode(truth))
    }

    async fn energy(&self, ctx: &mut Context) -> f64 {
        energy(ctx, &self.map).await
    }
}

async fn energy(ctx: &mut Context, map: &RegisterMap) -> f64 {
    read_reading(ctx, map).await.energy_import_wh
}

/// Serve `units` on a fresh loopback port.
async fn serve(units: Vec<MeterUnit>) -> (SocketAddr, watch::Receiver<u64>) {
    let server = MeterServer::new(units).unwrap();
    let seen = server.requests_seen();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    (address, seen)
}

async fn client(address: SocketAddr, unit: u8) -> Context {
    within(
        "connect",
        tokio_modbus::client::tcp::connect_slave(address, Slave(unit)),
    )
    .await
    .unwrap()
}

/// Every block of `map`, read and decoded as the meter service does.
async fn read_reading(ctx: &mut Context, map: &RegisterMap) -> Reading {
    let blocks = map.blocks();
    let mut data = Vec::new();
    for block in &blocks {
        let words = within("read", async {
            match block.function {
                evos_meter::register_map::Function::Input => {
                    ctx.read_input_registers(block.address, block.count).await
                }
                evos_meter::register_map::Function::Holding => {
                    ctx.read_holding_registers(block.address, block.count).await
                }
            }
        })
        .await
        .expect("transport")
        .expect("no exception");
        data.push(words);
    }
    map.decode(&blocks, &data, 0).expect("a decodable reading")
}

/// Send a read that must get no answer: wait until the server has taken it
/// off the wire, then let paused time run out the client's timeout.
async fn assert_silent(ctx: &mut Context, seen: &mut watch::Receiver<u64>) {
    let before = *seen.borrow_and_update();
    let request = tokio::time::timeout(Duration::from_secs(60), ctx.read_input_registers(0, 2));
    tokio::pin!(request);
    within("the server taking the request", async {
        loop {
            tokio::select! {
                answer = &mut request => panic!("a silent meter answered: {answer:?}"),
                changed = seen.changed() => {
                    changed.unwrap();
                    if *seen.borrow() > before {
                        break;
                    }
                }
            }
        }
    })
    .await;
    tokio::time::pause();
    let outcome = request.await;
    tokio::time::resume();
    assert!(
        outcome.is_err(),
        "expected a client timeout, got {outcome:?}"
    );
}

fn assert_matches_world(meter: &Meter, reading: &Reading, map_name: &str) {
    for quantity in meter.map.registers.keys() {
        assert_eq!(
            reading.quantity(*quantity),
            meter.expected(*quantity),
            "{map_name}: {quantity:?}"
        );
    }
}

#[tokio::test]
async fn every_shipped_ac_map_reads_back_the_world() {
    for (name, _) in SHIPPED {
        let map = RegisterMap::load(name).unwrap();
        if map.meter.kind != evos_meter::register_map::MeterKind::Ac {
            continue;
        }
        let meter = Meter::start(name, charging()).await;
        let mut ctx = meter.client().await;
        let reading = read_reading(&mut ctx, &meter.map).await;
        assert_matches_world(&meter, &reading, name);
        if *name == "sdm630" {
            // float32 kWh: the energy register to well under 1 Wh.
            assert!((reading.energy_import_wh - 12_345.6).abs() < 0.01);
            assert_eq!(reading.energy_export_wh, Some(0.0));
            assert_eq!(reading.voltage_v, vec![Some(230.0); 3]);
            assert_eq!(reading.current_a, vec![Some(16.0); 3]);
            assert_eq!(reading.power_phase_w, vec![Some(3680.0); 3]);
            assert_eq!(reading.power_w, Some(11_040.0));
            assert_eq!(reading.frequency_hz, Some(50.0));
        }
    }
}

#[tokio::test]
async fn dc_meter_reads_back_voltage_current_and_power() {
    let meter = Meter::start(
        "dc-meter",
        Terminals {
            energy_wh: 54_321.0,
            dc_voltage_v: 400.0,
            dc_current_a: 125.0,
            ..Terminals::default()
        },
    )
    .await;
    assert_eq!(
        meter.map.meter.kind,
        evos_meter::register_map::MeterKind::Dc
    );
    let mut ctx = meter.client().await;
    let reading = read_reading(&mut ctx, &meter.map).await;
    assert_matches_world(&meter, &reading, "dc-meter");
    assert_eq!(reading.voltage_v, vec![Some(400.0)]);
    assert_eq!(reading.current_a, vec![Some(125.0)]);
    assert_eq!(reading.power_w, Some(50_000.0));
    assert!((reading.energy_import_wh - 54_321.0).abs() <= 10.0);
}

#[tokio::test]
async fn gaps_read_zero_and_bad_requests_get_exceptions() {
    // SDM630: input registers 0x0000..0x0012, 0x0034.., 0x0046..0x004C.
    let meter = Meter::start("sdm630", charging()).await;
    let mut ctx = meter.client().await;

    let words = ctx
        .read_input_registers(0x0010, 0x26)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(words.len(), 0x26);
    assert!(words[2..0x24].iter().all(|w| *w == 0), "{words:?}");
    assert_eq!(
        &words[0x24..],
        meter.map.registers[&Quantity::Power]
            .encode(11_040.0)
            .as_slice()
    );

    for (what, answer, code) in [
        (
            "outside the map",
            ctx.read_input_registers(0x1000, 2).await,
            ExceptionCode::IllegalDataAddress,
        ),
        (
            "holding space of an input-only map",
            ctx.read_holding_registers(0x0048, 2).await,
            ExceptionCode::IllegalDataAddress,
        ),
        (
            "past register 0xFFFF",
            ctx.read_input_registers(0xFFFF, 2).await,
            ExceptionCode::IllegalDataAddress,
        ),
        (
            "more than 125 registers",
            ctx.read_input_registers(0x0000, 126).await,
            ExceptionCode::IllegalDataValue,
        ),
        (
            "no register",
            ctx.read_input_registers(0x0000, 0).await,
            ExceptionCode::IllegalDataValue,
        ),
    ] {
        assert_eq!(answer.expect("an answer"), Err(code), "{what}");
    }
    assert_eq!(
        ctx.read_coils(0, 8).await.expect("an answer"),
        Err(ExceptionCode::IllegalFunction)
    );
    // 125 registers is the most a read may span, and is answered.
    assert_eq!(
        ctx.read_input_registers(0, 125)
            .await
            .unwrap()
            .unwrap()
            .len(),
        125
    );
}

#[tokio::test]
async fn holding_register_writes_are_stored_and_measurements_are_read_only() {
    let meter = Meter::start("dc-meter", Terminals::default()).await;
    let mut ctx = meter.client().await;
    // A command register, as meters that sign their readings have.
    ctx.write_single_register(0x1000, 0x0001)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.read_holding_registers(0x1000, 1).await.unwrap(),
        Ok(vec![1])
    );
    assert_eq!(
        ctx.read_holding_registers(0x0FFF, 3).await.unwrap(),
        Ok(vec![0, 1, 0])
    );
    // Input space is another space: the write is not there.
    assert_eq!(
        ctx.read_input_registers(0x1000, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    // The AcuDC's energy register (holding 0x0300) is a measurement.
    assert_eq!(
        ctx.write_single_register(0x0300, 0).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
}

#[tokio::test]
async fn a_request_for_another_unit_gets_no_answer() {
    let mut meter = Meter::start("sdm630", charging()).await;
    let mut other = client(meter.address, UNIT + 1).await;
    assert_silent(&mut other, &mut meter.seen).await;
    // The meter itself answers on the same address.
    let mut ctx = meter.client().await;
    assert_matches_world(&meter, &read_reading(&mut ctx, &meter.map).await, "sdm630");
}

#[tokio::test]
async fn meters_behind_one_address_answer_by_unit() {
    let map = RegisterMap::load("sdm630").unwrap();
    let (one, one_rx) = watch::channel(charging());
    let (_two, two_rx) = watch::channel(Terminals {
        energy_wh: 777_000.0,
        ..Terminals::default()
    });
    let (address, _) = serve(vec![
        MeterUnit {
            unit: 1,
            map: map.clone(),
            terminals: one_rx,
        },
        MeterUnit {
            unit: 2,
            map: map.clone(),
            terminals: two_rx,
        },
    ])
    .await;
    let energy = |r: Reading| r.energy_import_wh.round();
    let mut ctx = client(address, 1).await;
    assert_eq!(energy(read_reading(&mut ctx, &map).await), 12_346.0);
    ctx.set_slave(Slave(2));
    assert_eq!(energy(read_reading(&mut ctx, &map).await), 777_000.0);
    one.send_modify(|t| {
        t.faults.insert(MeterFaultKind::Exception);
    });
    assert_eq!(energy(read_reading(&mut ctx, &map).await), 777_000.0);
    assert!(
        MeterServer::new(vec![
            MeterUnit {
                unit: 3,
                map: map.clone(),
                terminals: one.subscribe(),
            },
            MeterUnit {
                unit: 3,
                map,
                terminals: one.subscribe(),
            },
        ])
        .is_err_and(|unit| unit == 3)
    );
}

#[tokio::test]
async fn offline_meter_is_silent_and_keeps_its_connections_open() {
    let mut meter = Meter::start("sdm630", charging()).await;
    let mut ctx = meter.client().await;
    read_reading(&mut ctx, &meter.map).await;
    meter.fault(MeterFaultKind::Offline);
    assert_silent(&mut ctx, &mut meter.seen).await;
    // A new connection is accepted, and silent too.
    let mut late = meter.client().await;
    assert_silent(&mut late, &mut meter.seen).await;
    meter.clear();
    // The connection that was open all along answers again.
    let reading = read_reading(&mut ctx, &meter.map).await;
    assert_matches_world(&meter, &reading, "sdm630");
}

#[tokio::test]
async fn exception_fault_answers_every_request_with_server_device_failure() {
    let meter = Meter::start("sdm630", charging()).await;
    let mut ctx = meter.client().await;
    meter.fault(MeterFaultKind::Exception);
    assert_eq!(
        ctx.read_input_registers(0x0048, 2).await.unwrap(),
        Err(ExceptionCode::ServerDeviceFailure)
    );
    assert_eq!(
        ctx.write_single_register(0x1000, 1).await.unwrap(),
        Err(ExceptionCode::ServerDeviceFailure)
    );
    meter.clear();
    assert_matches_world(&meter, &read_reading(&mut ctx, &meter.map).await, "sdm630");
}

#[tokio::test]
async fn backwards_and_jump_move_only_the_energy_register() {
    let meter = Meter::start("sdm630", charging()).await;
    let mut ctx = meter.client().await;
    let truth = meter.energy(&mut ctx).await;

    meter.fault(MeterFaultKind::Backwards);
    let back = read_reading(&mut ctx, &meter.map).await;
    assert!((truth - back.energy_import_wh - BACKWARDS_WH).abs() < 0.01);
    assert_eq!(back.power_w, Some(11_040.0));
    // From now on: the offset follows the truth as it grows.
    meter.world.send_modify(|t| t.energy_wh += 500.0);
    let later = meter.energy(&mut ctx).await;
    assert!((truth + 500.0 - later - BACKWARDS_WH).abs() < 0.01);

    meter.clear();
    meter.fault(MeterFaultKind::Jump);
    let jumped = meter.energy(&mut ctx).await;
    // float32 kWh around 1000 kWh: a resolution of about 0.06 Wh.
    assert!((jumped - (truth + 500.0) - JUMP_WH).abs() < 0.5, "{jumped}");

    meter.clear();
    let cleared = meter.energy(&mut ctx).await;
    assert!((cleared - (truth + 500.0)).abs() < 0.01);
}

#[tokio::test]
async fn garbage_fault_sends_a_frame_whose_byte_count_lies() {
    let meter = Meter::start("sdm630", charging()).await;
    meter.fault(MeterFaultKind::Garbage);

    // On the wire: the MBAP header is right, the byte count is not.
    let mut raw = within("connect", TcpStream::connect(meter.address))
        .await
        .unwrap();
    for transaction in [0x1234u16, 0x1235] {
        let mut request = transaction.to_be_bytes().to_vec();
        request.extend([0, 0, 0, 6, UNIT, 0x04, 0x00, 0x48, 0x00, 0x02]);
        raw.write_all(&request).await.unwrap();
        let mut head = [0u8; 7];
        within("response header", raw.read_exact(&mut head))
            .await
            .unwrap();
        assert_eq!(head[..2], transaction.to_be_bytes(), "transaction id");
        assert_eq!(head[2..4], [0, 0], "protocol id");
        assert_eq!(head[6], UNIT);
        let length = usize::from(u16::from_be_bytes([head[4], head[5]]));
        // Unit id, function code, byte count, 2 registers: what was sent.
        assert_eq!(length, 1 + 1 + 1 + 4);
        let mut pdu = vec![0u8; length - 1];
        within("response PDU", raw.read_exact(&mut pdu))
            .await
            .unwrap();
        assert_eq!(pdu[0], 0x04);
        assert_eq!(pdu[1], 6, "the byte count claims 3 registers, 2 follow");
        // The next frame starts right after: the MBAP length was true.
    }

    // tokio-modbus's client rejects it.
    let mut ctx = meter.client().await;
    let answer = within("garbled read", ctx.read_input_registers(0x0048, 2)).await;
    assert!(
        matches!(answer, Err(tokio_modbus::Error::Transport(_))),
        "{answer:?}"
    );
    // Writes are answered normally.
    let mut ctx = meter.client().await;
    ctx.write_single_register(0x1000, 1).await.unwrap().unwrap();

    meter.clear();
    let mut ctx = meter.client().await;
    assert_matches_world(&meter, &read_reading(&mut ctx, &meter.map).await, "sdm630");
}

/// One simulated EVSE (its task, MCU socket and meter), driven as the
/// simulator's D-Bus interface and the evse service drive it.
struct Station {
    _dir: tempfile::TempDir,
    commands: mpsc::Sender<Command>,
    socket: std::path::PathBuf,
    address: SocketAddr,
    map: RegisterMap,
}

impl Station {
    async fn start(time_scale: f64, meter_wh: f64) -> Station {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mcu.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (commands, rx) = mpsc::channel(4);
        let (terminals, mut watching) = watch::channel(Terminals::default());
        let spec = SimEvseSpec {
            id: 1,
            socket_path: socket.clone(),
            socket_outlet: false,
            power: None,
        };
        tokio::spawn(hal_sim::evse::run(
            spec, time_scale, meter_wh, listener, rx, terminals,
        ));
        let map = RegisterMap::load("sdm630").unwrap();
        let (address, _) = serve(vec![MeterUnit {
            unit: UNIT,
            map: map.clone(),
            terminals: watching.clone(),
        }])
        .await;
        within(
            "the EVSE publishing its world",
            watching.wait_for(|t| t.energy_wh == meter_wh),
        )
        .await
        .unwrap();
        Station {
            _dir: dir,
            commands,
            socket,
            address,
            map,
        }
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), evos_bus::Error>>) -> Command,
    ) {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.unwrap();
        within("command reply", rx).await.unwrap().unwrap();
    }

    async fn snapshot(&self) -> evos_bus::sim::SimEvse {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Snapshot(tx)).await.unwrap();
        within("snapshot", rx).await.unwrap()
    }

    async fn client(&self) -> Context {
        client(self.address, UNIT).await
    }
}

/// The evse service's end of the MCU link.
struct Host {
    reader: McuStream<tokio::net::unix::OwnedReadHalf, tokio::io::Empty>,
    writer: McuStream<tokio::io::Empty, tokio::net::unix::OwnedWriteHalf>,
    seq: u32,
}

impl Host {
    async fn connect(station: &Station) -> Host {
        let stream = within("MCU link", UnixStream::connect(&station.socket))
            .await
            .unwrap();
        let (r, w) = stream.into_split();
        Host {
            reader: McuStream::new(r, tokio::io::empty()),
            writer: McuStream::new(tokio::io::empty(), w),
            seq: 0,
        }
    }

    async fn send(&mut self, msg: HostMessage) {
        let (kind, payload) = msg.encode();
        self.writer.write_frame(kind, &payload).await.unwrap();
    }

    /// The next Measurement the MCU sends that satisfies `want`, keeping
    /// the link alive meanwhile as the evse service does.
    async fn measurement(&mut self, want: impl Fn(&Measurement) -> bool) -> Measurement {
        let mut keepalive = tokio::time::interval(Duration::from_millis(300));
        within("an MCU measurement", async {
            loop {
                tokio::select! {
                    frame = self.reader.read_frame() => {
                        let (kind, payload) = frame.unwrap().expect("link open");
                        if let Ok(McuMessage::Measurement(m)) = McuMessage::decode(kind, &payload)
                            && want(&m)
                        {
                            return m;
                        }
                    }
                    _ = keepalive.tick() => {
                        self.seq += 1;
                        let (kind, payload) = HostMessage::KeepAlive { seq: self.seq }.encode();
                        self.writer.write_frame(kind, &payload).await.unwrap();
                    }
                }
            }
        })
        .await
    }
}

#[tokio::test]
async fn the_energy_register_is_the_mcu_measurement_energy() {
    // One physics step (100 ms) at 3 × 16 A moves 10 minutes' energy.
    let station = Station::start(6000.0, 1_000.0).await;
    let mut host = Host::connect(&station).await;
    station
        .command(|tx| Command::Plug(hal_sim::ev::profile("ac-11kw").unwrap(), tx))
        .await;
    host.send(HostMessage::KeepAlive { seq: 0 }).await;
    host.send(HostMessage::SetPwm(PwmOutput::for_current(16.0).unwrap()))
        .await;
    host.send(HostMessage::SetContactors {
        closed: true,
        phases: 3,
    })
    .await;
    let flowing = host.measurement(|m| m.energy_wh > 1_000.0).await;
    // The duty cycle for 16 A offers a little less (IEC 61851-1 A.8).
    assert!(flowing.current_a.iter().all(|a| (15.0..=16.0).contains(a)));

    // Stop the flow: the MCU reports the final figure, and the world holds
    // still.
    host.send(HostMessage::SetContactors {
        closed: false,
        phases: 3,
    })
    .await;
    let last = host.measurement(|m| m.current_a == [0.0; 3]).await;
    assert!(last.energy_wh > flowing.energy_wh);

    // Both come from the one `meter_wh`: the MCU link carries whole Wh,
    // the SDM630's register float32 kWh.
    let meter_wh = station.snapshot().await.meter_wh;
    assert_eq!(meter_wh.round(), last.energy_wh);
    let mut ctx = station.client().await;
    let reading = read_reading(&mut ctx, &station.map).await;
    let register = &station.map.registers[&Quantity::EnergyImport];
    assert_eq!(
        Some(reading.energy_import_wh),
        register.decode(&register.encode(meter_wh)),
        "meter register vs the world's {meter_wh} Wh"
    );
    assert!((reading.energy_import_wh - last.energy_wh).abs() <= 0.51);
    assert_eq!(reading.current_a, vec![Some(0.0); 3]);
    assert_eq!(reading.voltage_v, vec![Some(230.0); 3]);
}

#[tokio::test]
async fn meter_fault_commands_reach_the_registers_and_clear_resets_them() {
    let station = Station::start(1.0, 5_000.0).await;
    let map = &station.map;
    let mut ctx = station.client().await;
    assert!((energy(&mut ctx, map).await - 5_000.0).abs() < 0.01);

    // The reply comes once the meter shows the fault.
    station
        .command(|tx| Command::MeterFault(MeterFaultKind::Jump, tx))
        .await;
    assert!((energy(&mut ctx, map).await - 5_000.0 - JUMP_WH).abs() < 0.5);
    station
        .command(|tx| Command::Fault(hal_sim::evse::FaultKind::Rcd, tx))
        .await;
    station
        .command(|tx| Command::MeterFault(MeterFaultKind::Exception, tx))
        .await;
    let world = station.snapshot().await;
    assert_eq!(world.faults, vec!["rcd"]);
    assert_eq!(world.meter_faults, vec!["exception", "jump"]);
    assert_eq!(
        ctx.read_input_registers(0x0048, 2).await.unwrap(),
        Err(ExceptionCode::ServerDeviceFailure)
    );

    // Clearing the meter's faults leaves the EVSE's.
    station.command(Command::ClearMeterFaults).await;
    assert!((energy(&mut ctx, map).await - 5_000.0).abs() < 0.01);
    let world = station.snapshot().await;
    assert_eq!(world.faults, vec!["rcd"]);
    assert!(world.meter_faults.is_empty());

    // `Clear` clears both.
    station
        .command(|tx| Command::MeterFault(MeterFaultKind::Backwards, tx))
        .await;
    assert!((energy(&mut ctx, map).await - 4_000.0).abs() < 0.01);
    station.command(Command::Clear).await;
    assert!((energy(&mut ctx, map).await - 5_000.0).abs() < 0.01);
    let world = station.snapshot().await;
    assert!(world.faults.is_empty() && world.meter_faults.is_empty());
}
