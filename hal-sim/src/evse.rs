//! One simulated EVSE: the safety MCU's firmware (answering the real MCU
//! protocol from `evos_hal::mcu` on a Unix socket), the EV plugged into it,
//! and the electrical physics between them. What the EVSE's meter sees is
//! published as [`Terminals`] for its emulated Modbus meter.
//!
//! Like a real MCU it enforces safety on its own: contactors open when the
//! RCD trips, when the EV leaves state C/D, and when the host's keep-alives
//! stop for `KEEPALIVE_TIMEOUT_MS`.
//!
//! A DC EVSE's energy comes from the emulated power modules
//! ([`crate::power`]) through its [`DcPort`]: the EVSE tells them what its
//! EV presents (battery voltage, the current it takes, whether the
//! contactors connect it) and draws the lower of the EV's demand and what
//! the modules feeding it deliver.
//!
//! Until ISO 15118 high-level communication exists, the simulated DC EV
//! states its demand over the simulator's own MCU message
//! ([`SimMessage::DcDemand`], a type the real link rejects): in state C its
//! battery voltage and the current it wants, on every change and once a
//! second; 0 A once it wants no more energy.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use evos_bus::sim::SimEvse;
use evos_hal::mcu::message::SimMessage;
use evos_hal::mcu::{HostMessage, KEEPALIVE_TIMEOUT_MS, McuMessage, McuStream, NackReason};
use evos_hal::{BoardStatus, CpState, HalError, LockState, Measurement, PwmOutput};
use tokio::io::Empty;
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::ev::{Ev, EvProfile};
use crate::meter::{MeterFaultKind, Terminals};
use crate::power::{DcLoad, DcPort};

/// Nominal phase voltage of the simulated grid (V).
const GRID_V: f64 = 230.0;
/// Physics step while energy flows.
const PHYSICS_STEP: Duration = Duration::from_millis(100);
/// How often the MCU reports its metering while energy flows.
const MEASUREMENT_EVERY: u32 = 5;
/// The simulated DC EV repeats its demand this often.
pub const DEMAND_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SimEvseSpec {
    pub id: u32,
    pub socket_path: PathBuf,
    /// A socket outlet (lock, PP) rather than a tethered cable.
    pub socket_outlet: bool,
    /// DC: the output's connection to the emulated power modules; `None`
    /// for AC, or where no modules are emulated (a DC EV then gets no
    /// current).
    pub power: Option<DcPort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Rcd,
    Welded,
    Lock,
    Diode,
    StateE,
    StateF,
}

impl FaultKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rcd" => FaultKind::Rcd,
            "welded" => FaultKind::Welded,
            "lock" => FaultKind::Lock,
            "diode" => FaultKind::Diode,
            "state-e" => FaultKind::StateE,
            "state-f" => FaultKind::StateF,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Rcd => "rcd",
            FaultKind::Welded => "welded",
            FaultKind::Lock => "lock",
            FaultKind::Diode => "diode",
            FaultKind::StateE => "state-e",
            FaultKind::StateF => "state-f",
        }
    }
}

pub type Reply = oneshot::Sender<Result<(), evos_bus::Error>>;

pub enum Command {
    Plug(&'static EvProfile, Reply),
    Unplug(Reply),
    Swipe(String, Reply),
    Fault(FaultKind, Reply),
    /// Clear every fault, the meter's included.
    Clear(Reply),
    MeterFault(MeterFaultKind, Reply),
    ClearMeterFaults(Reply),
    Snapshot(oneshot::Sender<SimEvse>),
}

/// The MCU's outputs as the host commanded them.
#[derive(Debug, Default)]
struct Commanded {
    pwm: Option<PwmOutput>,
    contactors: bool,
    lock: bool,
}

struct World {
    spec: SimEvseSpec,
    time_scale: f64,
    ev: Option<Ev>,
    commanded: Commanded,
    faults: BTreeSet<FaultKind>,
    meter_faults: BTreeSet<MeterFaultKind>,
    /// Welded contacts stay where they were when the fault struck.
    welded_closed: bool,
    meter_wh: f64,
    last_keepalive: Option<Instant>,
    /// DC: what the modules feeding this EVSE deliver (A).
    dc_supply_a: f64,
}

/// What flows now: AC per phase, or DC.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Flow {
    ac_a: f64,
    phases: u8,
    dc_v: f64,
    dc_a: f64,
}

impl Flow {
    fn power_w(&self) -> f64 {
        GRID_V * self.ac_a * f64::from(self.phases) + self.dc_v * self.dc_a
    }

    fn flowing(&self) -> bool {
        self.power_w() > 0.0
    }
}

impl World {
    fn pwm(&self) -> PwmOutput {
        if self.keepalive_expired() {
            PwmOutput::Off
        } else {
            self.commanded.pwm.unwrap_or(PwmOutput::Off)
        }
    }

    fn keepalive_expired(&self) -> bool {
        self.last_keepalive
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
    }

    fn cp(&self) -> CpState {
        if self.faults.contains(&FaultKind::StateF) {
            return CpState::F;
        }
        let Some(ev) = &self.ev else {
            return CpState::A;
        };
        if self.faults.contains(&FaultKind::StateE) {
            return CpState::E;
        }
        let pwm = self.pwm();
        if ev.ready(pwm.offered_current(), pwm == PwmOutput::DIGITAL) {
            CpState::C
        } else {
            CpState::B
        }
    }

    fn contactors_closed(&self) -> bool {
        if self.faults.contains(&FaultKind::Welded) {
            return self.welded_closed;
        }
        self.commanded.contactors
            && !self.faults.contains(&FaultKind::Rcd)
            && !self.keepalive_expired()
            && self.cp().ev_ready()
    }

    fn lock(&self) -> LockState {
        if self.faults.contains(&FaultKind::Lock) {
            LockState::Fault
        } else if self.commanded.lock && self.ev.is_some() && self.spec.socket_outlet {
            LockState::Locked
        } else {
            LockState::Unlocked
        }
    }

    fn status(&self) -> BoardStatus {
        BoardStatus {
            cp: self.cp(),
            cable_rating_a: self
                .ev
                .as_ref()
                .filter(|_| self.spec.socket_outlet)
                .map(|ev| ev.profile.cable_a)
                .filter(|a| *a > 0),
            contactors_closed: self.contactors_closed(),
            lock: self.lock(),
            rcd_tripped: self.faults.contains(&FaultKind::Rcd),
            diode_fault: self.faults.contains(&FaultKind::Diode),
        }
    }

    /// What flows: an AC EV draws its share of the PWM offer on its
    /// phases; a DC EV the lower of its demand and what its modules
    /// deliver, at its battery's voltage.
    fn flow(&self) -> Flow {
        match &self.ev {
            Some(ev) if self.contactors_closed() && self.cp().ev_ready() => {
                if ev.profile.dc {
                    Flow {
                        dc_v: ev.battery_voltage_v(),
                        dc_a: ev.dc_demand_a().min(self.dc_supply_a).max(0.0),
                        ..Flow::default()
                    }
                } else {
                    Flow {
                        ac_a: ev.ac_current(self.pwm().offered_current()),
                        phases: ev.profile.phases,
                        ..Flow::default()
                    }
                }
            }
            _ => Flow::default(),
        }
    }

    /// What the EVSE's DC output presents to the power modules.
    fn dc_load(&self) -> DcLoad {
        match &self.ev {
            Some(ev) if ev.profile.dc && self.contactors_closed() => DcLoad {
                connected: true,
                battery_v: ev.battery_voltage_v(),
                accept_a: if self.cp().ev_ready() {
                    ev.dc_demand_a()
                } else {
                    0.0
                },
            },
            _ => DcLoad::default(),
        }
    }

    /// What the simulated DC EV states on the simulator's link, as
    /// (voltage V, current A): in state C its battery voltage and demand,
    /// otherwise 0 A; `None` without a DC EV.
    fn dc_demand(&self) -> Option<(f64, f64)> {
        let ev = self.ev.as_ref().filter(|ev| ev.profile.dc)?;
        let amps = if self.cp() == CpState::C {
            ev.dc_demand_a()
        } else {
            0.0
        };
        Some((ev.battery_voltage_v(), amps))
    }

    fn measurement(&self) -> Measurement {
        let Flow {
            ac_a: amps, phases, ..
        } = self.flow();
        let mut m = Measurement {
            voltage_v: [GRID_V; 3],
            current_a: [0.0; 3],
            energy_wh: self.meter_wh,
        };
        for phase in m.current_a.iter_mut().take(phases.into()) {
            *phase = amps;
        }
        m
    }

    /// What the meter sees: the same energy register, voltages and currents
    /// the MCU reports in its Measurement.
    fn terminals(&self) -> Terminals {
        let m = self.measurement();
        // A DC meter sees the EV's battery voltage while the contactors
        // connect it, and the current the EV draws from the modules.
        let (dc_voltage_v, dc_current_a) = match &self.ev {
            Some(ev) if ev.profile.dc && self.contactors_closed() => {
                (ev.battery_voltage_v(), self.flow().dc_a)
            }
            _ => (0.0, 0.0),
        };
        Terminals {
            energy_wh: m.energy_wh,
            voltage_v: m.voltage_v,
            current_a: m.current_a,
            dc_voltage_v,
            dc_current_a,
            faults: self.meter_faults.clone(),
        }
    }

    /// Move energy for `dt` at `flow`: what flowed during `dt`, which may
    /// differ from what flows now. Simulated time runs `time_scale` times
    /// faster than the clock.
    fn step_physics(&mut self, dt: Duration, flow: Flow) {
        let energy_wh = flow.power_w() * dt.as_secs_f64() / 3600.0 * self.time_scale;
        self.meter_wh += energy_wh;
        if let Some(ev) = &mut self.ev {
            ev.absorb(energy_wh);
        }
    }

    fn snapshot(&self, host_connected: bool) -> SimEvse {
        let flow = self.flow();
        let amps = if flow.dc_v > 0.0 {
            flow.dc_a
        } else {
            flow.ac_a
        };
        SimEvse {
            evse: self.spec.id,
            ev_profile: self
                .ev
                .as_ref()
                .map(|e| e.profile.name.to_owned())
                .unwrap_or_default(),
            cp_state: self.cp().to_string(),
            offered_a: self.pwm().offered_current(),
            relays_closed: self.contactors_closed(),
            locked: self.lock() == LockState::Locked,
            current_a: amps,
            soc_percent: self.ev.as_ref().map_or(0.0, |e| e.soc),
            meter_wh: self.meter_wh,
            faults: self.faults.iter().map(|f| f.as_str().to_owned()).collect(),
            meter_faults: self
                .meter_faults
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect(),
            host_connected,
        }
    }
}

struct Host {
    reader: McuStream<OwnedReadHalf, Empty>,
    writer: McuStream<Empty, OwnedWriteHalf>,
}

/// The next current the modules deliver; `Err` once they are gone.
async fn next_supply(supply: &mut Option<watch::Receiver<f64>>) -> Result<f64, ()> {
    match supply {
        Some(rx) => {
            rx.changed().await.map_err(|_| ())?;
            Ok(*rx.borrow_and_update())
        }
        None => std::future::pending().await,
    }
}

async fn next_frame(host: &mut Option<Host>) -> Result<Option<(u8, Vec<u8>)>, HalError> {
    match host {
        Some(h) => h.reader.read_frame().await,
        None => std::future::pending().await,
    }
}

/// Run one EVSE until its command channel closes, publishing what its
/// meter sees on `terminals` whenever the world may have changed (and
/// before a command's reply, so a caller that got the reply finds the
/// meter changed).
pub async fn run(
    spec: SimEvseSpec,
    time_scale: f64,
    meter_wh: f64,
    listener: UnixListener,
    mut commands: mpsc::Receiver<Command>,
    terminals: watch::Sender<Terminals>,
) {
    let id = spec.id;
    let loads = spec.power.as_ref().map(|p| p.loads.clone());
    let mut supply = spec.power.as_ref().map(|p| p.supply.clone());
    let mut world = World {
        spec,
        time_scale,
        ev: None,
        commanded: Commanded::default(),
        faults: BTreeSet::new(),
        meter_faults: BTreeSet::new(),
        welded_closed: false,
        meter_wh,
        last_keepalive: None,
        dc_supply_a: supply.as_ref().map_or(0.0, |s| *s.borrow()),
    };
    let mut host: Option<Host> = None;
    let mut sent: Option<BoardStatus> = None;
    let mut physics = tokio::time::interval(PHYSICS_STEP);
    physics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_step = Instant::now();
    let mut steps: u32 = 0;
    // The DC demand last stated to the host, and when.
    let mut demand_sent: Option<(f64, f64)> = None;
    let mut demand_at = Instant::now();

    loop {
        terminals.send_replace(world.terminals());
        if let Some(loads) = &loads {
            let load = world.dc_load();
            loads.send_if_modified(|all| {
                if all.get(&id) == Some(&load) {
                    return false;
                }
                all.insert(id, load);
                true
            });
        }
        let current = world.flow();
        let flowing = current.flowing();
        let keepalive_deadline = world
            .last_keepalive
            .filter(|_| !world.keepalive_expired())
            .map(|t| t + Duration::from_millis(KEEPALIVE_TIMEOUT_MS));
        let mut force_status = false;
        let mut force_measurement = false;
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tracing::info!(evse = id, "host connected to the MCU link");
                    let (r, w) = stream.into_split();
                    host = Some(Host {
                        reader: McuStream::new(r, tokio::io::empty()),
                        writer: McuStream::new(tokio::io::empty(), w),
                    });
                    force_measurement = true;
                }
                Err(e) => tracing::warn!(evse = id, "accept failed: {e}"),
            },
            frame = next_frame(&mut host) => match frame {
                Ok(Some((kind, payload))) => match HostMessage::decode(kind, &payload) {
                    Ok(msg) => {
                        force_status = msg == HostMessage::GetStatus;
                        if let HostMessage::KeepAlive { seq } = msg {
                            world.last_keepalive = Some(Instant::now());
                            send(&mut host, McuMessage::KeepAliveAck { seq }).await;
                        }
                        apply_host_message(&mut world, msg);
                    }
                    Err(e) => {
                        tracing::warn!(evse = id, "bad host frame: {e}");
                        let reason = if e.to_string().contains("type") && e.to_string().contains("unknown") {
                            NackReason::UnknownType
                        } else {
                            NackReason::BadPayload
                        };
                        send(&mut host, McuMessage::Nack { rejected_type: kind, reason }).await;
                    }
                },
                Ok(None) => {
                    tracing::info!(evse = id, "host disconnected from the MCU link");
                    host = None;
                }
                Err(HalError::Frame(why)) => {
                    tracing::warn!(evse = id, "corrupt host frame: {why}");
                    send(&mut host, McuMessage::Nack { rejected_type: 0, reason: NackReason::Crc }).await;
                }
                Err(e) => {
                    tracing::warn!(evse = id, "MCU link error: {e}");
                    host = None;
                }
            },
            command = commands.recv() => {
                let Some(command) = command else { return };
                let connected = host.is_some();
                match command {
                    Command::Plug(profile, reply) => {
                        let result = if world.ev.is_some() {
                            Err(evos_bus::Error::Busy(format!("EVSE {id}: an EV is plugged in already")))
                        } else {
                            tracing::info!(evse = id, profile = profile.name, "EV plugged in");
                            world.ev = Some(Ev::new(profile));
                            Ok(())
                        };
                        settle(&world, &terminals, reply, result);
                    }
                    Command::Unplug(reply) => {
                        let result = if world.ev.take().is_some() {
                            tracing::info!(evse = id, "EV unplugged");
                            Ok(())
                        } else {
                            Err(evos_bus::Error::NotPermitted(format!("EVSE {id}: nothing is plugged in")))
                        };
                        settle(&world, &terminals, reply, result);
                    }
                    Command::Swipe(token, reply) => {
                        let result = if connected {
                            send(&mut host, McuMessage::Token(token)).await;
                            Ok(())
                        } else {
                            Err(evos_bus::Error::NotPermitted(format!("EVSE {id}: no evse service is connected to the reader")))
                        };
                        let _ = reply.send(result);
                    }
                    Command::Fault(kind, reply) => {
                        tracing::warn!(evse = id, fault = kind.as_str(), "fault injected");
                        if kind == FaultKind::Welded {
                            world.welded_closed = world.contactors_closed();
                        }
                        world.faults.insert(kind);
                        settle(&world, &terminals, reply, Ok(()));
                    }
                    Command::Clear(reply) => {
                        world.faults.clear();
                        world.meter_faults.clear();
                        settle(&world, &terminals, reply, Ok(()));
                    }
                    Command::MeterFault(kind, reply) => {
                        tracing::warn!(evse = id, fault = kind.as_str(), "meter fault injected");
                        world.meter_faults.insert(kind);
                        settle(&world, &terminals, reply, Ok(()));
                    }
                    Command::ClearMeterFaults(reply) => {
                        world.meter_faults.clear();
                        settle(&world, &terminals, reply, Ok(()));
                    }
                    Command::Snapshot(reply) => {
                        let _ = reply.send(world.snapshot(connected));
                    }
                }
            }
            _ = physics.tick(), if flowing => {
                let now = Instant::now();
                world.step_physics(now - last_step, current);
                last_step = now;
                steps += 1;
                force_measurement = steps.is_multiple_of(MEASUREMENT_EVERY);
            }
            _ = sleep_until(keepalive_deadline.unwrap_or_else(Instant::now)), if keepalive_deadline.is_some() => {
                tracing::warn!(evse = id, "host keep-alive timed out: contactors open, pilot off");
            }
            amps = next_supply(&mut supply) => match amps {
                Ok(amps) => world.dc_supply_a = amps,
                Err(()) => {
                    supply = None;
                    world.dc_supply_a = 0.0;
                }
            },
            _ = sleep_until(demand_at + DEMAND_EVERY), if demand_sent.is_some() && host.is_some() => {}
        }
        let now_current = world.flow();
        let now_flowing = now_current.flowing();
        if now_flowing && !flowing {
            last_step = Instant::now();
            physics.reset();
        }
        if flowing && now_current != current {
            // Account for the part-step up to the moment the current
            // stopped or changed, at the current that flowed until then.
            let now = Instant::now();
            world.step_physics(now - last_step, current);
            last_step = now;
            force_measurement |= !now_flowing;
        }
        if host.is_none() {
            sent = None;
            demand_sent = None;
            continue;
        }
        let status = world.status();
        if force_status || sent.as_ref() != Some(&status) {
            send(&mut host, McuMessage::Status(status.clone())).await;
            sent = Some(status);
        }
        if force_measurement || now_flowing != flowing {
            send(&mut host, McuMessage::Measurement(world.measurement())).await;
        }
        let demand = world.dc_demand();
        let due = match (demand, demand_sent) {
            (Some(now), Some(before)) => now != before || demand_at.elapsed() >= DEMAND_EVERY,
            (Some(_), None) => true,
            // Unplugged: it wants nothing any more.
            (None, Some(_)) => true,
            (None, None) => false,
        };
        if due {
            let (voltage_v, current_a) = demand.unwrap_or((0.0, 0.0));
            send_sim(
                &mut host,
                SimMessage::DcDemand {
                    voltage_v,
                    current_a,
                },
            )
            .await;
            demand_sent = demand;
            demand_at = Instant::now();
        }
    }
}

/// Publish the world to the meter, then answer the command.
fn settle(
    world: &World,
    terminals: &watch::Sender<Terminals>,
    reply: Reply,
    result: Result<(), evos_bus::Error>,
) {
    terminals.send_replace(world.terminals());
    let _ = reply.send(result);
}

fn apply_host_message(world: &mut World, msg: HostMessage) {
    match msg {
        HostMessage::KeepAlive { .. } | HostMessage::GetStatus => {}
        HostMessage::SetPwm(out) => world.commanded.pwm = Some(out),
        HostMessage::SetContactors { closed, .. } => world.commanded.contactors = closed,
        HostMessage::SetLock { locked } => world.commanded.lock = locked,
    }
}

async fn send(host: &mut Option<Host>, msg: McuMessage) {
    write(host, msg.encode()).await;
}

/// A simulator-only message (types 0xE0..=0xEF) to the host.
async fn send_sim(host: &mut Option<Host>, msg: SimMessage) {
    write(host, msg.encode()).await;
}

async fn write(host: &mut Option<Host>, (kind, payload): (u8, Vec<u8>)) {
    let Some(h) = host else { return };
    if let Err(e) = h.writer.write_frame(kind, &payload).await {
        tracing::warn!("cannot write to the host: {e}");
        *host = None;
    }
}
