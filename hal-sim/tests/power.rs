//! The emulated power modules, driven as the power service drives real
//! ones: a controller on the simulator's CAN link sending the vendor
//! codec's own frames (`encode_command`) and reading the answers
//! (`decode_reply`).
//!
//! No test sleeps to synchronise: answers are awaited with a deadline, the
//! modules' state through their published snapshots, and silence is proven
//! with a barrier — the modules answer frames in order, so an answer to a
//! later frame arriving first means the earlier one got none. Time is
//! paused wherever the test stays in this process, so timeouts (the
//! modules' heartbeat, current ramps) pass in virtual time.

use std::time::Duration;

use evos_bus::sim::SimModule;
use evos_hal::can::{CanBus, CanFrame, SimCanBus, SimCanHub};
use evos_hal::mcu::message::{SIM_TYPES, SimMessage};
use evos_hal::mcu::{HostMessage, McuStream};
use evos_hal::{CpState, PwmOutput};
use evos_power::config::ModuleConfig;
use evos_power::protocol::uugreen::{self, MessageType, Packet};
use evos_power::protocol::{
    Command, ModuleFault, ModuleProtocol, ModuleStatus, Reply, Target, by_name,
};
use hal_sim::evse::{self, SimEvseSpec};
use hal_sim::meter::Terminals;
use hal_sim::power::{DcLoad, Emulator, Handle, ModuleFaultKind};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Virtual time where time is paused: longer than any module timeout.
const DEADLINE: Duration = Duration::from_secs(60);
const BATTERY_V: f64 = 400.0;

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

fn module(address: u8) -> ModuleConfig {
    ModuleConfig {
        address,
        max_current_a: 100.0,
        max_power_w: 30_000.0,
        min_voltage_v: 150.0,
        max_voltage_v: 1000.0,
    }
}

/// Emulated modules on a hub, and a controller on the bus.
struct Rig {
    dir: tempfile::TempDir,
    hub_path: std::path::PathBuf,
    protocol: Box<dyn ModuleProtocol>,
    bus: SimCanBus,
    handle: Handle,
}

impl Rig {
    /// Modules at `addresses` speaking `protocol`, feeding EVSE 1.
    async fn start(protocol: &str, addresses: &[u8]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let hub_path = dir.path().join("can.sock");
        let hub = SimCanHub::bind(&hub_path).await.unwrap();
        let modules: Vec<ModuleConfig> = addresses.iter().copied().map(module).collect();
        let (emulator, handle) = Emulator::new(by_name(protocol).unwrap(), &modules, &[1]);
        tokio::spawn(emulator.run(hub));
        let bus = SimCanBus::connect(&hub_path).await.unwrap();
        Rig {
            dir,
            hub_path,
            protocol: by_name(protocol).unwrap(),
            bus,
            handle,
        }
    }

    /// Send `command` to `target`; the frames it took.
    async fn send(&mut self, target: Target, command: Command) -> Vec<CanFrame> {
        let frames = self.protocol.encode_command(target, &command);
        for frame in &frames {
            self.bus.send(frame).await.unwrap();
        }
        frames
    }

    /// Send a setting to module `address`: it acknowledges every frame with
    /// the vendor's echo, which reads back as `Ack` of that frame's part of
    /// the setting.
    async fn set(&mut self, address: u8, setting: Command) {
        for frame in self.send(Target::Module(address), setting).await {
            let (_, part) = self.protocol.decode_command(&frame).unwrap().unwrap();
            assert_eq!(self.reply().await, (address, Reply::Ack(part)));
        }
    }

    async fn frame(&mut self) -> CanFrame {
        within("a CAN frame", self.bus.recv()).await.unwrap()
    }

    /// The next frame the controller's codec reads as a reply.
    async fn reply(&mut self) -> (u8, Reply) {
        loop {
            let frame = self.frame().await;
            if let Some(reply) = self.protocol.decode_reply(&frame) {
                return reply.unwrap();
            }
        }
    }

    /// Setpoint, then on: the module acknowledges every frame.
    async fn switch_on(&mut self, address: u8, voltage_v: f64, current_a: f64) {
        let setpoint = Command::SetOutput {
            voltage_v: Some(voltage_v),
            current_a: Some(current_a),
        };
        self.set(address, setpoint).await;
        self.set(address, Command::SetOn(true)).await;
    }

    async fn status(&mut self, address: u8) -> ModuleStatus {
        self.send(Target::Module(address), Command::ReadStatus)
            .await;
        match self.reply().await {
            (a, Reply::Status(status)) if a == address => status,
            other => panic!("not module {address}'s status: {other:?}"),
        }
    }

    /// The module's measured output (V, A): one answer per read frame
    /// (UUGreen answers voltage and current in a frame each), each value
    /// once.
    async fn output(&mut self, address: u8) -> (f64, f64) {
        let frames = self
            .send(Target::Module(address), Command::ReadOutput)
            .await;
        let (mut voltage, mut current) = (None, None);
        for _ in &frames {
            match self.reply().await {
                (
                    a,
                    Reply::Output {
                        voltage_v,
                        current_a,
                    },
                ) if a == address => {
                    for (value, seen) in [(voltage_v, &mut voltage), (current_a, &mut current)] {
                        if value.is_some() {
                            assert!(seen.is_none(), "a value answered twice");
                            *seen = value;
                        }
                    }
                }
                other => panic!("not module {address}'s output: {other:?}"),
            }
        }
        (
            voltage.expect("the voltage answered"),
            current.expect("the current answered"),
        )
    }

    /// A DC EV at EVSE 1 fed by `modules`.
    fn connect_ev(&self, modules: &[u8], accept_a: f64) {
        self.handle
            .assignment
            .send_replace([(1, modules.to_vec())].into());
        self.handle.loads.send_replace(
            [(
                1,
                DcLoad {
                    connected: true,
                    battery_v: BATTERY_V,
                    accept_a,
                },
            )]
            .into(),
        );
    }

    /// Module `address`'s state once `want` holds.
    async fn module(&self, address: u8, want: impl Fn(&SimModule) -> bool) -> SimModule {
        let mut states = self.handle.states.clone();
        let find = |all: &Vec<SimModule>| all.iter().find(|m| m.address == address).cloned();
        let states = within(&format!("module {address}'s state"), async {
            states
                .wait_for(|all| find(all).is_some_and(|m| want(&m)))
                .await
                .unwrap()
                .clone()
        })
        .await;
        find(&states).unwrap()
    }

    /// Silence is proven by a barrier: after `silent`'s frames, module
    /// `witness` is asked for its status; its answer must come first.
    async fn assert_no_answer_before(&mut self, witness: u8) {
        self.send(Target::Module(witness), Command::ReadStatus)
            .await;
        let (address, reply) = self.reply().await;
        assert_eq!(
            address, witness,
            "an answer before the witness's: {reply:?}"
        );
        assert!(matches!(reply, Reply::Status(_)), "{reply:?}");
    }
}

async fn switches_on_and_reads_back(protocol: &str) {
    let mut rig = Rig::start(protocol, &[1, 2]).await;
    // Off: no output, the status says so.
    let status = rig.status(1).await;
    assert!(!status.on && status.faults.is_empty(), "{status:?}");
    assert_eq!(rig.output(1).await, (0.0, 0.0));

    // On with no battery connected: the setpoint voltage, no current.
    rig.switch_on(1, 450.0, 30.0).await;
    let status = rig.status(1).await;
    assert!(
        status.on && !status.derating && status.faults.is_empty(),
        "{status:?}"
    );
    assert_eq!(rig.output(1).await, (450.0, 0.0));

    // A 400 V battery taking 50 A: the module's 30 A limit, at the
    // battery's voltage, reached through the current ramp.
    rig.connect_ev(&[1], 50.0);
    let state = rig.module(1, |m| m.current_a == 30.0).await;
    assert_eq!((state.evse, state.voltage_v), (1, BATTERY_V));
    let (voltage, current) = rig.output(1).await;
    assert_eq!(voltage, BATTERY_V);
    assert!((current - 30.0).abs() < 1e-3, "{current} A");
    // The other module was never switched on.
    assert!(!rig.status(2).await.on);
    assert_eq!(*rig.handle.supplies[&1].borrow(), 30.0);
}

#[tokio::test(start_paused = true)]
async fn an_infypower_module_switches_on_and_reports_output_and_status() {
    switches_on_and_reads_back("infypower").await;
    // InfyPower modules also report their ratings.
    let mut rig = Rig::start("infypower", &[7]).await;
    rig.send(Target::Module(7), Command::ReadCapabilities).await;
    assert_eq!(
        rig.reply().await,
        (
            7,
            Reply::Capabilities {
                min_voltage_v: 150.0,
                max_voltage_v: 1000.0,
                max_current_a: 100.0,
                max_power_w: 30_000.0,
            }
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_uugreen_module_switches_on_and_reports_output_and_status() {
    switches_on_and_reads_back("uugreen").await;
}

async fn silent_module_answers_nothing(protocol: &str) {
    let mut rig = Rig::start(protocol, &[1, 2]).await;
    rig.connect_ev(&[1, 2], 200.0);
    rig.switch_on(1, BATTERY_V, 50.0).await;
    rig.switch_on(2, BATTERY_V, 50.0).await;
    rig.module(1, |m| m.current_a == 50.0).await;

    rig.handle
        .fault(1, Some(ModuleFaultKind::Silent))
        .await
        .unwrap();
    let state = rig.module(1, |_| true).await;
    assert_eq!(state.faults, ["silent"]);
    assert_eq!((state.on, state.current_a), (false, 0.0), "unplugged");
    assert_eq!(*rig.handle.supplies[&1].borrow(), 50.0, "module 2 alone");

    // Not a frame in answer: reads, settings, nothing.
    rig.send(Target::Module(1), Command::ReadStatus).await;
    rig.send(Target::Module(1), Command::ReadOutput).await;
    rig.send(
        Target::Module(1),
        Command::SetOutput {
            voltage_v: Some(BATTERY_V),
            current_a: Some(10.0),
        },
    )
    .await;
    rig.send(Target::Module(1), Command::SetOn(true)).await;
    rig.assert_no_answer_before(2).await;

    // Plugged in again: a module fresh from power-up, answering.
    rig.handle.fault(1, None).await.unwrap();
    let status = rig.status(1).await;
    assert!(!status.on && status.faults.is_empty(), "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_infypower_module_answers_nothing() {
    silent_module_answers_nothing("infypower").await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_uugreen_module_answers_nothing() {
    silent_module_answers_nothing("uugreen").await;
}

async fn output_short_shows_in_status(protocol: &str) {
    let mut rig = Rig::start(protocol, &[1, 2]).await;
    rig.connect_ev(&[1], 200.0);
    rig.switch_on(1, BATTERY_V, 70.0).await;
    rig.module(1, |m| m.current_a == 70.0).await;

    rig.handle
        .fault(1, Some(ModuleFaultKind::OutputShort))
        .await
        .unwrap();
    let status = rig.status(1).await;
    assert!(!status.on, "a short switches the output off: {status:?}");
    assert_eq!(status.faults, [ModuleFault::OutputShort]);
    assert_eq!(rig.output(1).await, (0.0, 0.0));
    // It does not switch on while shorted…
    rig.switch_on(1, BATTERY_V, 70.0).await;
    assert!(!rig.status(1).await.on);
    // …nor by itself once the short is gone: it is told again.
    rig.handle.fault(1, None).await.unwrap();
    let status = rig.status(1).await;
    assert!(!status.on && status.faults.is_empty(), "{status:?}");
    rig.switch_on(1, BATTERY_V, 70.0).await;
    assert!(rig.status(1).await.on);
    rig.module(1, |m| m.current_a == 70.0).await;
}

#[tokio::test(start_paused = true)]
async fn an_infypower_output_short_shows_in_status() {
    output_short_shows_in_status("infypower").await;
}

#[tokio::test(start_paused = true)]
async fn a_uugreen_output_short_shows_in_status() {
    // The UUGreen status word has no short-circuit bit: the module is off,
    // and the short is not reported (the codec leaves it out).
    let mut rig = Rig::start("uugreen", &[1]).await;
    rig.switch_on(1, BATTERY_V, 80.0).await;
    rig.handle
        .fault(1, Some(ModuleFaultKind::OutputShort))
        .await
        .unwrap();
    let status = rig.status(1).await;
    assert!(!status.on, "{status:?}");
    assert_eq!(
        status.raw & uugreen::STATUS_MODULE_OFF,
        uugreen::STATUS_MODULE_OFF
    );
}

async fn heartbeat_timeout_switches_off(protocol: &str) {
    let mut rig = Rig::start(protocol, &[1]).await;
    let timeout = rig.protocol.module_timeout();
    rig.connect_ev(&[1], 100.0);
    // The module last hears its controller between these two instants.
    let sent = Instant::now();
    rig.switch_on(1, BATTERY_V, 40.0).await;
    let acked = Instant::now();
    rig.module(1, |m| m.current_a == 40.0).await;
    assert!(!rig.module(1, |_| true).await.timed_out);

    // Silence from the controller: the module switches off by itself, at
    // its heartbeat timeout and not before.
    let state = rig.module(1, |m| !m.on).await;
    let off = Instant::now();
    assert!(
        off - sent >= timeout,
        "off {:?} after the last word",
        off - sent
    );
    assert!(
        off - acked <= timeout + Duration::from_millis(20),
        "off {:?} after the last word",
        off - acked
    );
    assert!(state.timed_out);
    rig.module(1, |m| m.current_a == 0.0).await;

    // The controller speaks again: the module hears it, but stays off
    // until it is told to switch on.
    let status = rig.status(1).await;
    assert!(!status.on, "{status:?}");
    assert!(!status.faults.contains(&ModuleFault::CommunicationLost));
    assert!(!rig.module(1, |_| true).await.timed_out);
    rig.switch_on(1, BATTERY_V, 40.0).await;
    assert!(rig.status(1).await.on);
}

#[tokio::test(start_paused = true)]
async fn an_infypower_module_switches_itself_off_after_its_heartbeat_timeout() {
    heartbeat_timeout_switches_off("infypower").await;
}

#[tokio::test(start_paused = true)]
async fn a_uugreen_module_switches_itself_off_after_its_heartbeat_timeout() {
    heartbeat_timeout_switches_off("uugreen").await;
}

#[tokio::test(start_paused = true)]
async fn over_temperature_halves_the_current_and_shows_derating() {
    let mut rig = Rig::start("infypower", &[1]).await;
    rig.connect_ev(&[1], 200.0);
    rig.switch_on(1, BATTERY_V, 75.0).await;
    rig.module(1, |m| m.current_a == 75.0).await;
    rig.handle
        .fault(1, Some(ModuleFaultKind::OverTemperature))
        .await
        .unwrap();
    let status = rig.status(1).await;
    assert!(status.on && status.derating, "{status:?}");
    assert_eq!(status.faults, [ModuleFault::OverTemperature]);
    // Half of its 100 A rating: 50 A, reached through the ramp, never a
    // step.
    let mut states = rig.handle.states.clone();
    let mut seen = Vec::new();
    within("derated to 50 A", async {
        loop {
            let amps = states.borrow_and_update()[0].current_a;
            seen.push(amps);
            if amps == 50.0 {
                return;
            }
            states.changed().await.unwrap();
        }
    })
    .await;
    assert!(seen.iter().any(|a| *a > 50.0 && *a < 75.0), "{seen:?}");
    rig.handle.fault(1, None).await.unwrap();
    rig.module(1, |m| m.current_a == 75.0).await;
    assert!(!rig.status(1).await.derating);
}

#[tokio::test(start_paused = true)]
async fn an_input_fault_stops_the_output_until_it_clears() {
    let mut rig = Rig::start("infypower", &[1]).await;
    rig.connect_ev(&[1], 200.0);
    rig.switch_on(1, BATTERY_V, 60.0).await;
    rig.module(1, |m| m.current_a == 60.0).await;
    rig.handle
        .fault(1, Some(ModuleFaultKind::InputFault))
        .await
        .unwrap();
    let status = rig.status(1).await;
    assert!(!status.on, "{status:?}");
    assert_eq!(status.faults, [ModuleFault::InputFault]);
    rig.module(1, |m| m.current_a == 0.0).await;
    // It recovers by itself.
    rig.handle.fault(1, None).await.unwrap();
    assert!(rig.status(1).await.on);
    rig.module(1, |m| m.current_a == 60.0).await;
}

#[tokio::test(start_paused = true)]
async fn modules_share_what_the_ev_accepts_and_deliver_only_while_connected() {
    let mut rig = Rig::start("infypower", &[1, 2, 3]).await;
    rig.connect_ev(&[1, 2], 60.0);
    rig.switch_on(1, BATTERY_V, 60.0).await;
    rig.switch_on(2, BATTERY_V, 30.0).await;
    rig.switch_on(3, BATTERY_V, 100.0).await;
    // 90 A of limits, 60 A accepted: shared in proportion, 40 + 20.
    rig.module(1, |m| (m.current_a - 40.0).abs() < 1e-9).await;
    rig.module(2, |m| (m.current_a - 20.0).abs() < 1e-9).await;
    let three = rig.module(3, |_| true).await;
    assert_eq!((three.evse, three.current_a), (0, 0.0), "not connected");
    assert_eq!(three.voltage_v, BATTERY_V, "its setpoint, on");

    // A voltage setpoint below the battery's drives no current into it.
    rig.send(
        Target::Module(2),
        Command::SetOutput {
            voltage_v: Some(300.0),
            current_a: Some(30.0),
        },
    )
    .await;
    rig.reply().await;
    rig.module(1, |m| (m.current_a - 60.0).abs() < 1e-9).await;
    rig.module(2, |m| m.current_a == 0.0).await;

    // The contactors open: no circuit, no current, at once.
    rig.handle.loads.send_modify(|l| {
        l.get_mut(&1).unwrap().connected = false;
    });
    let one = rig.module(1, |m| m.current_a == 0.0).await;
    assert_eq!(one.voltage_v, BATTERY_V, "its setpoint again");
    assert_eq!(*rig.handle.supplies[&1].borrow(), 0.0);

    // Module 3 alone, set to 100 A: its 30 kW at 400 V make 75 A.
    rig.connect_ev(&[3], 200.0);
    rig.module(3, |m| m.current_a == 75.0).await;
    assert_eq!(*rig.handle.supplies[&1].borrow(), 75.0);
}

#[tokio::test(start_paused = true)]
async fn infypower_groups_reach_every_module_and_broadcasts_get_no_answer() {
    let mut rig = Rig::start("infypower", &[1, 2]).await;
    // Group 0, the factory setting: both apply and answer.
    // Each echoes the switch with device 0x0B (asked through its group):
    // 0x1A to 0xF0 from the module, 0x02DA_F0xx.
    rig.send(Target::Group(0), Command::SetOn(true)).await;
    let mut echoes = [rig.frame().await, rig.frame().await];
    echoes.sort_by_key(|f| f.id());
    assert_eq!(
        echoes.iter().map(|f| f.id()).collect::<Vec<_>>(),
        [0x02DA_F001, 0x02DA_F002]
    );
    let acks: Vec<_> = echoes
        .iter()
        .map(|f| rig.protocol.decode_reply(f).unwrap().unwrap())
        .collect();
    assert_eq!(
        acks,
        [
            (1, Reply::Ack(Command::SetOn(true))),
            (2, Reply::Ack(Command::SetOn(true)))
        ]
    );
    assert!(rig.status(1).await.on && rig.status(2).await.on);
    // Another group's command is not for them.
    rig.send(Target::Group(3), Command::SetOn(false)).await;
    // A broadcast applies, unanswered.
    rig.send(Target::Broadcast, Command::SetOn(false)).await;
    rig.send(Target::Broadcast, Command::ReadStatus).await;
    rig.assert_no_answer_before(2).await;
    assert!(!rig.status(1).await.on);
}

#[tokio::test(start_paused = true)]
async fn a_uugreen_setpoint_register_alone_applies_and_is_echoed() {
    let mut rig = Rig::start("uugreen", &[1]).await;
    rig.switch_on(1, 450.0, 30.0).await;
    rig.module(1, |m| m.setpoint_v == 450.0 && m.setpoint_a == 30.0)
        .await;
    // The current limit alone (register 3): the voltage setpoint stays.
    let limit = Command::SetOutput {
        voltage_v: None,
        current_a: Some(12.5),
    };
    let frames = rig.send(Target::Module(1), limit).await;
    assert_eq!(frames.len(), 1);
    let echo = rig.frame().await;
    let p = Packet::from_frame(&echo).unwrap().unwrap();
    assert_eq!(
        (p.module, p.kind, p.register, p.value),
        (
            1,
            MessageType::SetDataResponse,
            uugreen::register::IOUT_LIMIT,
            12_500
        )
    );
    assert_eq!(
        rig.protocol.decode_reply(&echo),
        Some(Ok((1, Reply::Ack(limit))))
    );
    rig.module(1, |m| m.setpoint_v == 450.0 && m.setpoint_a == 12.5)
        .await;
    // The voltage setpoint alone (register 2).
    let setpoint = Command::SetOutput {
        voltage_v: Some(420.0),
        current_a: None,
    };
    rig.set(1, setpoint).await;
    rig.module(1, |m| m.setpoint_v == 420.0 && m.setpoint_a == 12.5)
        .await;
    assert_eq!(rig.output(1).await, (420.0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn uugreen_modules_answer_broadcasts() {
    let mut rig = Rig::start("uugreen", &[1, 2]).await;
    rig.send(Target::Broadcast, Command::ReadStatus).await;
    let mut answers = vec![rig.reply().await.0, rig.reply().await.0];
    answers.sort();
    assert_eq!(answers, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn frames_of_other_traffic_are_ignored() {
    let mut rig = Rig::start("infypower", &[1, 2]).await;
    // A UUGreen frame and an 11-bit frame on an InfyPower bus.
    let foreign = Packet::new(
        1,
        0,
        MessageType::ReadData,
        uugreen::register::MODULE_STATUS,
        0,
    );
    rig.bus.send(&foreign.to_frame()).await.unwrap();
    rig.bus
        .send(&CanFrame::standard(0x123, &[1, 2, 3]).unwrap())
        .await
        .unwrap();
    rig.assert_no_answer_before(2).await;
    // The hub is the simulator's: a second one on the same path is refused.
    assert!(SimCanHub::bind(&rig.hub_path).await.is_err());
}

/// The evse service's end of one EVSE's MCU link, in a task of its own:
/// it keeps the link alive, sends what the test asks, and hands over the
/// simulated EV's DC demands.
struct Host {
    outgoing: mpsc::Sender<HostMessage>,
    demands: mpsc::Receiver<(Instant, f64, f64)>,
}

impl Host {
    async fn connect(socket: &std::path::Path) -> Host {
        let stream = within("MCU link", UnixStream::connect(socket))
            .await
            .unwrap();
        let (r, w) = stream.into_split();
        let mut reader = McuStream::new(r, tokio::io::empty());
        let mut writer = McuStream::new(tokio::io::empty(), w);
        let (outgoing, mut to_send) = mpsc::channel::<HostMessage>(8);
        let (found, demands) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut keepalive = tokio::time::interval(Duration::from_millis(250));
            let mut seq = 0;
            loop {
                let msg = tokio::select! {
                    _ = keepalive.tick() => {
                        seq += 1;
                        HostMessage::KeepAlive { seq }
                    }
                    msg = to_send.recv() => match msg {
                        Some(msg) => msg,
                        None => return,
                    },
                };
                let (kind, payload) = msg.encode();
                writer.write_frame(kind, &payload).await.unwrap();
            }
        });
        tokio::spawn(async move {
            while let Ok(Some((kind, payload))) = reader.read_frame().await {
                if SIM_TYPES.contains(&kind) {
                    let SimMessage::DcDemand {
                        voltage_v,
                        current_a,
                    } = SimMessage::decode(kind, &payload).unwrap();
                    if found
                        .send((Instant::now(), voltage_v, current_a))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Host { outgoing, demands }
    }

    async fn send(&self, msg: HostMessage) {
        self.outgoing.send(msg).await.unwrap();
    }

    async fn demand(&mut self) -> (Instant, f64, f64) {
        within("a DC demand", self.demands.recv()).await.unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn a_dc_ev_states_its_demand_and_draws_what_its_modules_deliver() {
    // One virtual second is 36 s of charging.
    const TIME_SCALE: f64 = 36.0;
    let mut rig = Rig::start("infypower", &[1, 2]).await;
    let socket = rig.dir.path().join("mcu-1.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (commands, rx) = mpsc::channel(4);
    let (terminals, mut watching) = watch::channel(Terminals::default());
    let spec = SimEvseSpec {
        id: 1,
        socket_path: socket.clone(),
        socket_outlet: false,
        power: rig.handle.port(1),
    };
    tokio::spawn(evse::run(spec, TIME_SCALE, 0.0, listener, rx, terminals));
    let command =
        async |make: fn(oneshot::Sender<Result<(), evos_bus::Error>>) -> evse::Command| {
            let (tx, rx) = oneshot::channel();
            commands.send(make(tx)).await.unwrap();
            within("command reply", rx).await.unwrap().unwrap();
        };
    let mut host = Host::connect(&socket).await;
    command(|tx| evse::Command::Plug(hal_sim::ev::profile("dc-400v").unwrap(), tx)).await;

    // State B: the EV states 0 A; with the digital-communication duty it
    // goes to C and asks for its maximum at its battery's voltage.
    let (_, v, a) = host.demand().await;
    assert_eq!((v, a), (BATTERY_V, 0.0));
    host.send(HostMessage::SetPwm(PwmOutput::DIGITAL)).await;
    let (first, v, a) = host.demand().await;
    assert_eq!((v, a), (BATTERY_V, 200.0));
    // …repeated once a second.
    let (again, v, a) = host.demand().await;
    assert_eq!((v, a), (BATTERY_V, 200.0));
    let between = again - first;
    assert!(
        between >= evse::DEMAND_EVERY && between < evse::DEMAND_EVERY * 11 / 10,
        "repeated after {between:?}"
    );

    // Contactors closed, both modules feed EVSE 1 (as Power1 `Modules`
    // would say), 70 A + 60 A: the EV draws 130 A of its 200.
    host.send(HostMessage::SetContactors {
        closed: true,
        phases: 3,
    })
    .await;
    rig.handle.assignment.send_replace([(1, vec![1, 2])].into());
    rig.switch_on(1, BATTERY_V, 70.0).await;
    rig.switch_on(2, BATTERY_V, 60.0).await;
    let seen = within("130 A at the DC meter", async {
        watching
            .wait_for(|t| t.dc_current_a == 130.0)
            .await
            .unwrap()
            .clone()
    })
    .await;
    assert_eq!(seen.dc_voltage_v, BATTERY_V);
    // The battery's voltage × the current drawn, over simulated time.
    let start = seen.energy_wh;
    let t0 = Instant::now();
    let later = within("energy", async {
        watching
            .wait_for(|t| t.energy_wh > start + 100.0)
            .await
            .unwrap()
            .clone()
    })
    .await;
    let hours = t0.elapsed().as_secs_f64() * TIME_SCALE / 3600.0;
    let expected = BATTERY_V * 130.0 * hours;
    let moved = later.energy_wh - start;
    assert!(
        (moved - expected).abs() <= 0.01 * expected,
        "{moved} Wh moved, {expected} Wh expected"
    );

    // Contactors open: nothing flows, the modules see no battery.
    host.send(HostMessage::SetContactors {
        closed: false,
        phases: 3,
    })
    .await;
    within("no current", watching.wait_for(|t| t.dc_current_a == 0.0))
        .await
        .unwrap();
    rig.module(1, |m| m.current_a == 0.0 && m.voltage_v == BATTERY_V)
        .await;

    // Unplugged: it wants nothing any more.
    command(evse::Command::Unplug).await;
    loop {
        let (_, v, a) = host.demand().await;
        if a == 0.0 {
            assert_eq!(v, 0.0, "no battery");
            break;
        }
    }
    let (tx, rx) = oneshot::channel();
    commands.send(evse::Command::Snapshot(tx)).await.unwrap();
    let world = rx.await.unwrap();
    assert_eq!(world.cp_state, CpState::A.to_string());
}

/// The power service's side of the assignment, as far as hal-sim reads
/// it: Power1 `Modules` of each output.
struct FakeOutput {
    modules: Vec<u8>,
}

#[zbus::interface(name = "org.evos.Power1")]
impl FakeOutput {
    #[zbus(property)]
    fn modules(&self) -> Vec<u8> {
        self.modules.clone()
    }
}

/// A private dbus-daemon, or `None` where it is not installed (CI has it).
fn dbus_daemon(dir: &std::path::Path) -> Option<(std::process::Child, String)> {
    use std::process::{Command as Process, Stdio};
    let socket = dir.join("bus.sock");
    let address = format!("unix:path={}", socket.display());
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            "<busconfig><type>session</type><listen>{address}</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
             <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>"
        ),
    )
    .unwrap();
    let spawned = Process::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs dbus-daemon: {e}"
            );
            return None;
        }
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    Some((child, line.trim().to_owned()))
}

async fn serve_power(address: &str, one: Vec<u8>, two: Vec<u8>) -> zbus::Connection {
    use evos_bus::power::{BUS_NAME, path};
    evos_bus::connection_builder(Some(address))
        .serve_at(path(1), FakeOutput { modules: one })
        .serve_at(path(2), FakeOutput { modules: two })
        .name(BUS_NAME)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assignment_follows_power1_modules() {
    use hal_sim::power::{Assignment, follow_assignment};
    let dir = tempfile::tempdir().unwrap();
    let Some((mut daemon, address)) = dbus_daemon(dir.path()) else {
        eprintln!("dbus-daemon is not installed: skipped");
        return;
    };
    let sim = evos_bus::connection_builder(Some(&address))
        .build()
        .await
        .unwrap();
    let (tx, mut assignment) = watch::channel(Assignment::new());
    tokio::spawn(follow_assignment(sim, vec![1, 2], tx));
    let mut becomes = async |want: Assignment| {
        let what = format!("the assignment {want:?}");
        within(&what, assignment.wait_for(|a| *a == want))
            .await
            .unwrap();
    };

    // The power service appears: its outputs are read.
    let power = serve_power(&address, vec![1, 2], vec![]).await;
    becomes([(1, vec![1, 2]), (2, vec![])].into()).await;

    // A change is signalled and followed.
    let output = power
        .object_server()
        .interface::<_, FakeOutput>(evos_bus::power::path(1))
        .await
        .unwrap();
    output.get_mut().await.modules = vec![3];
    output
        .get()
        .await
        .modules_changed(output.signal_emitter())
        .await
        .unwrap();
    becomes([(1, vec![3]), (2, vec![])].into()).await;

    // The service restarts with another assignment: read again.
    power.release_name(evos_bus::power::BUS_NAME).await.unwrap();
    let _power = serve_power(&address, vec![4], vec![5]).await;
    becomes([(1, vec![4]), (2, vec![5])].into()).await;

    let _ = daemon.kill();
    let _ = daemon.wait();
}
