//! Emulated DC power modules on the simulator's CAN link.
//!
//! hal-sim binds the CAN hub (`[power] can = "sim:PATH"`) and plays every
//! `[[power.module]]` on it: each module decodes every frame with the
//! configured vendor protocol's own module side
//! ([`ModuleProtocol::decode_command`]) and answers with its own frames
//! ([`ModuleProtocol::encode_reply`]), so the `power` service talks to it
//! exactly as to a real module, and a codec bug shows up here. Only the
//! physics behind the frames is simulated.
//!
//! # What a module answers
//!
//! A command for `Target::Module(own address)`, for its group (every
//! emulated module is in group 0, the factory setting: InfyPower's group
//! dial at 0; on UUGreen group 0 means "no group", so no group command
//! reaches it) or for every module applies. Reads are answered; setpoints
//! and on/off are acknowledged as the vendor's module does (InfyPower: an
//! echo of the command; UUGreen: a set-data response echoing register and
//! value). InfyPower modules answer nothing that was broadcast (V1.13:
//! only the system reads, which this codec does not speak); UUGreen modules
//! answer broadcasts, which is what a controller in EVerest's "broadcast"
//! mode relies on.
//!
//! A setting is answered with `Reply::Ack` of the command the module read,
//! which the codec encodes as its vendor's echo; every answer goes through
//! [`ModuleProtocol::encode_reply_to`] with the target the command reached
//! the module by (an InfyPower module asked through its group answers with
//! device 0x0B).
//!
//! # Plant model, per module
//!
//! - On/off as commanded; an `output-short` switches it off (latched: it
//!   stays off until told to switch on again after the fault is cleared),
//!   an `input-fault` keeps its output off while it lasts, `silent`
//!   unplugs it (no frames, no output; a fresh module after `clear`).
//! - Output voltage: the EV battery's voltage while the module is
//!   connected to a DC EV (its EVSE's contactors closed), else its voltage
//!   setpoint while on, else 0 (0 as well while shorted or unplugged).
//! - Output current in constant-current mode: its current setpoint, bounded
//!   by its rating (halved while `over-temperature`) and its power rating
//!   at the battery's voltage; all modules feeding one EV share what the EV
//!   accepts in proportion to those bounds, so none exceeds its own. A
//!   module whose voltage setpoint is more than 2 % below the battery's
//!   voltage cannot drive current into it.
//! - The current follows that target through a first-order lag with a
//!   [`TIME_CONSTANT`] of 50 ms, so it never jumps; it drops to 0 at once
//!   when the circuit opens (contactors, short, unplugged).
//! - When it hears nothing from its controller for the protocol's
//!   [`ModuleProtocol::module_timeout`] it switches itself off (Sim1 shows
//!   it `timed_out` until it hears from the controller again; it switches
//!   on again only when told).
//!
//! # Limits, where the codecs' module side cannot say more yet
//!
//! - UUGreen reads the output voltage and current with a frame each, and
//!   answers each with that register alone; both reads decode as
//!   `Command::ReadOutput`, so which one was asked is read from the
//!   frame with the codec's register-level [`Packet`].
//!
//! # Which modules feed which EVSE
//!
//! A real charger switches modules between outputs with a contactor matrix
//! that `power` drives. The simulator has no matrix: it observes the
//! assignment from each output's Power1 `Modules` property
//! ([`follow_assignment`]), which stands in for reading the matrix's
//! contactor positions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use evos_bus::sim::SimModule;
use evos_hal::HalError;
use evos_hal::can::{CanBus, CanFrame};
use evos_power::config::ModuleConfig;
use evos_power::protocol::uugreen::Packet;
use evos_power::protocol::{
    Command as ModuleCommand, ModuleFault, ModuleProtocol, ModuleStatus, Reply as ModuleReply,
    Target,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

/// The time constant of a module's current response, on the clock (the
/// `time_scale` speeds up energy and state of charge only, as for AC).
pub const TIME_CONSTANT: Duration = Duration::from_millis(50);
/// Physics step while a current is still moving towards its target.
const RAMP_STEP: Duration = Duration::from_millis(10);
/// Closer than this to its target, a current has settled (A).
const SETTLED_A: f64 = 0.05;
/// A voltage setpoint this far (relative) below the battery's voltage
/// still drives current into it.
const VOLTAGE_TOLERANCE: f64 = 0.02;
/// The group every emulated module is in.
const GROUP: u8 = 0;

/// Which module addresses feed which EVSE's output now.
pub type Assignment = BTreeMap<u32, Vec<u8>>;
/// What each DC EVSE presents to the modules, by EVSE id.
pub type Loads = BTreeMap<u32, DcLoad>;

/// An EVSE's DC side, as the modules see it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DcLoad {
    /// A DC EV is plugged in and the EVSE's contactors connect its battery
    /// to the output.
    pub connected: bool,
    /// The battery's voltage (V).
    pub battery_v: f64,
    /// The current the EV takes now (A): its demand, 0 when it wants none.
    pub accept_a: f64,
}

/// A fault `Sim1.ModuleFault` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ModuleFaultKind {
    OverTemperature,
    OutputShort,
    InputFault,
    Silent,
}

impl ModuleFaultKind {
    pub const ALL: [ModuleFaultKind; 4] = [
        ModuleFaultKind::OverTemperature,
        ModuleFaultKind::OutputShort,
        ModuleFaultKind::InputFault,
        ModuleFaultKind::Silent,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModuleFaultKind::OverTemperature => "over-temperature",
            ModuleFaultKind::OutputShort => "output-short",
            ModuleFaultKind::InputFault => "input-fault",
            ModuleFaultKind::Silent => "silent",
        }
    }
}

pub type Reply = oneshot::Sender<Result<(), evos_bus::Error>>;

pub enum Command {
    /// Inject a fault into module `address` (`None`: clear its faults).
    Fault(u8, Option<ModuleFaultKind>, Reply),
}

/// One EVSE's end of the DC power path: where it tells the modules what
/// its EV presents, and where it reads the current they deliver to it.
#[derive(Debug, Clone)]
pub struct DcPort {
    pub loads: Arc<watch::Sender<Loads>>,
    /// The sum of the currents of the modules feeding this EVSE (A).
    pub supply: watch::Receiver<f64>,
}

/// The other ends of an [`Emulator`]'s channels.
pub struct Handle {
    /// Feed the assignment here ([`follow_assignment`] does, from Power1).
    pub assignment: watch::Sender<Assignment>,
    pub loads: Arc<watch::Sender<Loads>>,
    /// Per output EVSE: the current its modules deliver (A).
    pub supplies: BTreeMap<u32, watch::Receiver<f64>>,
    /// Every module's state, republished on every change.
    pub states: watch::Receiver<Vec<SimModule>>,
    pub commands: mpsc::Sender<Command>,
}

impl Handle {
    /// The DC port of EVSE `evse`, if it is one of the outputs.
    pub fn port(&self, evse: u32) -> Option<DcPort> {
        self.supplies.get(&evse).map(|supply| DcPort {
            loads: self.loads.clone(),
            supply: supply.clone(),
        })
    }

    /// Inject (or with `None` clear) a fault of module `address`; applied
    /// when this returns.
    pub async fn fault(
        &self,
        address: u8,
        kind: Option<ModuleFaultKind>,
    ) -> Result<(), evos_bus::Error> {
        fault(&self.commands, address, kind).await
    }
}

/// Send a fault command to the emulator behind `commands`.
pub async fn fault(
    commands: &mpsc::Sender<Command>,
    address: u8,
    kind: Option<ModuleFaultKind>,
) -> Result<(), evos_bus::Error> {
    let (tx, rx) = oneshot::channel();
    let gone = || evos_bus::Error::Failed("the power module emulation stopped".into());
    commands
        .send(Command::Fault(address, kind, tx))
        .await
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// The vendor specifics a module side needs beyond the trait: which
/// reads it answers, and which half of a register protocol's output read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    UuGreen,
    /// The trait alone (InfyPower): broadcasts get no answer.
    Generic,
}

impl Dialect {
    fn of(name: &str) -> Self {
        match name {
            "uugreen" => Dialect::UuGreen,
            _ => Dialect::Generic,
        }
    }

    /// Whether a module answers a command sent to every module.
    fn answers_broadcast(self) -> bool {
        self == Dialect::UuGreen
    }

    /// The answer of module `address` to the command in `frame`, which
    /// reached it through `target`.
    fn answer(
        self,
        protocol: &dyn ModuleProtocol,
        address: u8,
        target: Target,
        frame: &CanFrame,
        reply: &ModuleReply,
    ) -> Vec<CanFrame> {
        let frames = protocol.encode_reply_to(address, reply, target);
        if self != Dialect::UuGreen || !matches!(reply, ModuleReply::Output { .. }) {
            return frames;
        }
        // A register read is answered with that register alone, though a
        // voltage read and a current read both decode as `ReadOutput`.
        let Some(Ok(asked)) = Packet::from_frame(frame) else {
            return frames;
        };
        frames
            .into_iter()
            .filter(
                |f| matches!(Packet::from_frame(f), Some(Ok(p)) if p.register == asked.register),
            )
            .collect()
    }
}

#[derive(Debug)]
struct Module {
    spec: ModuleConfig,
    commanded_on: bool,
    set_v: f64,
    set_a: f64,
    current_a: f64,
    target_a: f64,
    last_heard: Instant,
    timed_out: bool,
    faults: BTreeSet<ModuleFaultKind>,
}

impl Module {
    fn new(spec: ModuleConfig, now: Instant) -> Self {
        Module {
            spec,
            commanded_on: false,
            set_v: 0.0,
            set_a: 0.0,
            current_a: 0.0,
            target_a: 0.0,
            last_heard: now,
            timed_out: false,
            faults: BTreeSet::new(),
        }
    }

    fn has(&self, kind: ModuleFaultKind) -> bool {
        self.faults.contains(&kind)
    }

    /// Its output stage runs.
    fn running(&self) -> bool {
        self.commanded_on
            && !self.has(ModuleFaultKind::OutputShort)
            && !self.has(ModuleFaultKind::InputFault)
            && !self.has(ModuleFaultKind::Silent)
    }

    /// No output at all, not even a voltage: shorted or unplugged.
    fn dead(&self) -> bool {
        self.has(ModuleFaultKind::OutputShort) || self.has(ModuleFaultKind::Silent)
    }

    fn max_current_a(&self) -> f64 {
        if self.has(ModuleFaultKind::OverTemperature) {
            self.spec.max_current_a / 2.0
        } else {
            self.spec.max_current_a
        }
    }

    /// Whether a command for `target` reaches this module, and whether it
    /// answers it.
    fn hears(&self, target: Target, dialect: Dialect) -> Option<bool> {
        match target {
            Target::Module(a) if a == self.spec.address => Some(true),
            Target::Group(GROUP) => Some(true),
            Target::Broadcast => Some(dialect.answers_broadcast()),
            Target::Module(_) | Target::Group(_) => None,
        }
    }

    fn status(&self) -> ModuleStatus {
        let mut faults = Vec::new();
        if self.has(ModuleFaultKind::OverTemperature) {
            faults.push(ModuleFault::OverTemperature);
        }
        if self.has(ModuleFaultKind::OutputShort) {
            faults.push(ModuleFault::OutputShort);
        }
        if self.has(ModuleFaultKind::InputFault) {
            faults.push(ModuleFault::InputFault);
        }
        // No "communication lost" here: the read that would carry it ends
        // the silence (Sim1 shows it as `timed_out`).
        faults.sort();
        ModuleStatus {
            on: self.running(),
            derating: self.has(ModuleFaultKind::OverTemperature),
            faults,
            raw: 0,
        }
    }

    /// Apply a setting from the controller.
    fn apply(&mut self, command: &ModuleCommand) {
        match *command {
            // A register protocol sets one of the two per frame.
            ModuleCommand::SetOutput {
                voltage_v,
                current_a,
            } => {
                if let Some(voltage_v) = voltage_v {
                    self.set_v = voltage_v.max(0.0);
                }
                if let Some(current_a) = current_a {
                    self.set_a = current_a.max(0.0);
                }
            }
            ModuleCommand::SetOn(on) => {
                // A shorted module does not switch on until the short is
                // gone and it is told again.
                if !(on && self.has(ModuleFaultKind::OutputShort)) {
                    self.commanded_on = on;
                }
            }
            ModuleCommand::ReadOutput
            | ModuleCommand::ReadStatus
            | ModuleCommand::ReadCapabilities => {}
        }
    }
}

/// The emulated modules on one CAN bus and their physics.
pub struct Emulator {
    protocol: Box<dyn ModuleProtocol>,
    dialect: Dialect,
    timeout: Duration,
    modules: BTreeMap<u8, Module>,
    assignment: watch::Receiver<Assignment>,
    loads: watch::Receiver<Loads>,
    supplies: BTreeMap<u32, watch::Sender<f64>>,
    commands: mpsc::Receiver<Command>,
    states: watch::Sender<Vec<SimModule>>,
    last_step: Instant,
}

impl Emulator {
    /// Modules speaking `protocol`, one per `modules` entry, feeding the
    /// EVSE `outputs`.
    pub fn new(
        protocol: Box<dyn ModuleProtocol>,
        modules: &[ModuleConfig],
        outputs: &[u32],
    ) -> (Emulator, Handle) {
        let now = Instant::now();
        let (assignment_tx, assignment) = watch::channel(Assignment::new());
        let (loads_tx, loads) = watch::channel(Loads::new());
        let (states_tx, states) = watch::channel(Vec::new());
        let (commands_tx, commands) = mpsc::channel(16);
        let mut supplies = BTreeMap::new();
        let mut supply_rx = BTreeMap::new();
        for evse in outputs {
            let (tx, rx) = watch::channel(0.0);
            supplies.insert(*evse, tx);
            supply_rx.insert(*evse, rx);
        }
        let emulator = Emulator {
            dialect: Dialect::of(protocol.name()),
            timeout: protocol.module_timeout(),
            protocol,
            modules: modules
                .iter()
                .map(|m| (m.address, Module::new(m.clone(), now)))
                .collect(),
            assignment,
            loads,
            supplies,
            commands,
            states: states_tx,
            last_step: now,
        };
        let handle = Handle {
            assignment: assignment_tx,
            loads: Arc::new(loads_tx),
            supplies: supply_rx,
            states,
            commands: commands_tx,
        };
        (emulator, handle)
    }

    /// The EVSE module `address` is connected to, with what that EVSE's
    /// EV presents: `Some` only while a battery is on the output.
    fn connection(&self, address: u8) -> Option<(u32, DcLoad)> {
        let assignment = self.assignment.borrow();
        let (evse, _) = assignment.iter().find(|(_, a)| a.contains(&address))?;
        let load = self.loads.borrow().get(evse).copied()?;
        (load.connected && load.battery_v > 0.0).then_some((*evse, load))
    }

    fn feeds(&self, address: u8) -> u32 {
        self.assignment
            .borrow()
            .iter()
            .find(|(_, a)| a.contains(&address))
            .map_or(0, |(evse, _)| *evse)
    }

    fn voltage_v(&self, module: &Module) -> f64 {
        if module.dead() {
            0.0
        } else if let Some((_, load)) = self.connection(module.spec.address) {
            load.battery_v
        } else if module.running() {
            module.set_v
        } else {
            0.0
        }
    }

    /// Move every current towards its target up to `now`, and switch off
    /// the modules whose controller went quiet.
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last_step).as_secs_f64();
        self.last_step = now;
        let decay = (-dt / TIME_CONSTANT.as_secs_f64()).exp();
        for m in self.modules.values_mut() {
            m.current_a = m.target_a + (m.current_a - m.target_a) * decay;
            if (m.current_a - m.target_a).abs() < SETTLED_A {
                m.current_a = m.target_a;
            }
            if !m.timed_out
                && !m.has(ModuleFaultKind::Silent)
                && now.saturating_duration_since(m.last_heard) >= self.timeout
            {
                if m.commanded_on {
                    tracing::warn!(
                        module = m.spec.address,
                        "nothing from the controller for {:?}: module switches off",
                        self.timeout
                    );
                }
                m.timed_out = true;
                m.commanded_on = false;
            }
        }
    }

    /// Each module's current target from the world now; a current whose
    /// circuit opened drops to 0 at once.
    fn retarget(&mut self) {
        let mut targets: BTreeMap<u8, f64> = BTreeMap::new();
        let assignment = self.assignment.borrow().clone();
        let loads = self.loads.borrow().clone();
        for (evse, addresses) in &assignment {
            let Some(load) = loads.get(evse).filter(|l| l.connected && l.battery_v > 0.0) else {
                continue;
            };
            let mut limits = Vec::new();
            for address in addresses {
                // A module the assignment names twice feeds its first EVSE.
                if targets.contains_key(address) || limits.iter().any(|(a, _)| a == address) {
                    continue;
                }
                let Some(m) = self.modules.get(address) else {
                    continue;
                };
                let limit = if m.running() && m.set_v >= load.battery_v * (1.0 - VOLTAGE_TOLERANCE)
                {
                    m.set_a
                        .min(m.max_current_a())
                        .min(m.spec.max_power_w / load.battery_v)
                        .max(0.0)
                } else {
                    0.0
                };
                limits.push((*address, limit));
            }
            let total: f64 = limits.iter().map(|(_, l)| l).sum();
            let share = if total > load.accept_a.max(0.0) && total > 0.0 {
                load.accept_a.max(0.0) / total
            } else {
                1.0
            };
            for (address, limit) in limits {
                targets.insert(address, limit * share);
            }
        }
        for (address, m) in &mut self.modules {
            match targets.get(address) {
                Some(target) if !m.dead() => m.target_a = *target,
                // Not connected to a battery, shorted or unplugged: no
                // circuit, no current.
                _ => {
                    m.target_a = 0.0;
                    m.current_a = 0.0;
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<SimModule> {
        self.modules
            .values()
            .map(|m| SimModule {
                address: m.spec.address,
                evse: self.feeds(m.spec.address),
                on: m.running(),
                setpoint_v: m.set_v,
                setpoint_a: m.set_a,
                voltage_v: self.voltage_v(m),
                current_a: m.current_a,
                faults: m.faults.iter().map(|f| f.as_str().to_owned()).collect(),
                timed_out: m.timed_out,
            })
            .collect()
    }

    /// Tell the EVSEs what their modules deliver, and Sim1 what the modules
    /// do.
    fn publish(&self) {
        let assignment = self.assignment.borrow().clone();
        for (evse, supply) in &self.supplies {
            let amps: f64 = assignment
                .get(evse)
                .into_iter()
                .flatten()
                .filter(|a| self.connection(**a).is_some_and(|(e, _)| e == *evse))
                .filter_map(|a| self.modules.get(a))
                .map(|m| m.current_a)
                .sum();
            supply.send_if_modified(|old| {
                let changed = *old != amps;
                *old = amps;
                changed
            });
        }
        let states = self.snapshot();
        self.states.send_if_modified(|old| {
            let changed = *old != states;
            *old = states;
            changed
        });
    }

    /// A frame from the bus: every module it reaches applies it and answers
    /// as its vendor's module does.
    async fn on_frame(&mut self, bus: &mut impl CanBus, frame: &CanFrame) {
        let (target, command) = match self.protocol.decode_command(frame) {
            Some(Ok(decoded)) => decoded,
            Some(Err(e)) => {
                tracing::debug!("power modules: malformed command: {e}");
                return;
            }
            None => return,
        };
        let now = Instant::now();
        let mut answering = Vec::new();
        for m in self.modules.values_mut() {
            if m.has(ModuleFaultKind::Silent) {
                continue;
            }
            let Some(answers) = m.hears(target, self.dialect) else {
                continue;
            };
            m.last_heard = now;
            m.timed_out = false;
            m.apply(&command);
            if answers {
                answering.push(m.spec.address);
            }
        }
        let mut frames = Vec::new();
        for address in answering {
            let m = &self.modules[&address];
            let reply = match command {
                ModuleCommand::ReadOutput => ModuleReply::Output {
                    voltage_v: Some(self.voltage_v(m)),
                    current_a: Some(m.current_a),
                },
                ModuleCommand::ReadStatus => ModuleReply::Status(m.status()),
                ModuleCommand::ReadCapabilities => ModuleReply::Capabilities {
                    min_voltage_v: m.spec.min_voltage_v,
                    max_voltage_v: m.spec.max_voltage_v,
                    max_current_a: m.spec.max_current_a,
                    max_power_w: m.spec.max_power_w,
                },
                // The vendor's echo of the setting, also when the module
                // does not act on it (a shorted module told to switch on).
                ModuleCommand::SetOutput { .. } | ModuleCommand::SetOn(_) => {
                    ModuleReply::Ack(command)
                }
            };
            frames.extend(self.dialect.answer(
                self.protocol.as_ref(),
                address,
                target,
                frame,
                &reply,
            ));
        }
        for f in frames {
            if let Err(e) = bus.send(&f).await {
                tracing::warn!("power modules: cannot answer on the CAN hub: {e}");
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Fault(address, kind, reply) => {
                let Some(m) = self.modules.get_mut(&address) else {
                    let known: Vec<String> = self.modules.keys().map(u8::to_string).collect();
                    let _ = reply.send(Err(evos_bus::Error::InvalidArgument(format!(
                        "no emulated power module has address {address}; known: {}",
                        known.join(", ")
                    ))));
                    return;
                };
                match kind {
                    Some(kind) => {
                        tracing::warn!(
                            module = address,
                            fault = kind.as_str(),
                            "module fault injected"
                        );
                        if kind == ModuleFaultKind::OutputShort {
                            m.commanded_on = false;
                        }
                        m.faults.insert(kind);
                    }
                    None => {
                        if m.has(ModuleFaultKind::Silent) {
                            // Plugged in again: a module fresh from power-up.
                            *m = Module::new(m.spec.clone(), Instant::now());
                        }
                        m.faults.clear();
                    }
                }
                self.retarget();
                self.publish();
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Run until the CAN hub goes away.
    pub async fn run(mut self, mut bus: impl CanBus) {
        tracing::info!(
            protocol = self.protocol.name(),
            modules = self.modules.len(),
            "emulating power modules"
        );
        let mut assignment_open = true;
        let mut loads_open = true;
        let mut commands_open = true;
        self.advance(Instant::now());
        self.retarget();
        self.publish();
        loop {
            let ramping = self.modules.values().any(|m| m.current_a != m.target_a);
            let heartbeat = self
                .modules
                .values()
                .filter(|m| !m.timed_out && !m.has(ModuleFaultKind::Silent))
                .map(|m| m.last_heard + self.timeout)
                .min();
            tokio::select! {
                frame = bus.recv() => match frame {
                    Ok(frame) => {
                        self.advance(Instant::now());
                        self.on_frame(&mut bus, &frame).await;
                    }
                    Err(HalError::LinkDown) => {
                        tracing::error!("power modules: the CAN hub stopped");
                        return;
                    }
                    Err(e) => tracing::debug!("power modules: {e}"),
                },
                changed = self.assignment.changed(), if assignment_open => {
                    assignment_open = changed.is_ok();
                    self.advance(Instant::now());
                }
                changed = self.loads.changed(), if loads_open => {
                    loads_open = changed.is_ok();
                    self.advance(Instant::now());
                }
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => {
                        self.advance(Instant::now());
                        self.on_command(command);
                    }
                    None => commands_open = false,
                },
                _ = sleep_until(heartbeat.unwrap_or_else(Instant::now)), if heartbeat.is_some() => {
                    self.advance(Instant::now());
                }
                _ = tokio::time::sleep(RAMP_STEP), if ramping => {
                    self.advance(Instant::now());
                }
            }
            self.retarget();
            self.publish();
        }
    }
}

/// Keep `assignment` equal to each output's Power1 `Modules` property:
/// every PropertiesChanged of `/org/evos/Power1/<evse>`, and a fresh read
/// whenever the power service (re)appears on the bus.
///
/// A real charger's modules are switched between outputs by a contactor
/// matrix that `power` drives; this simulator has no matrix, so it takes
/// the assignment `power` publishes as the matrix's contactor positions.
/// When `power` goes away the contactors stay where they were.
pub async fn follow_assignment(
    connection: zbus::Connection,
    outputs: Vec<u32>,
    assignment: watch::Sender<Assignment>,
) {
    loop {
        if let Err(e) = follow(&connection, &outputs, &assignment).await {
            tracing::warn!("cannot follow Power1 Modules: {e}; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(
    connection: &zbus::Connection,
    outputs: &[u32],
    assignment: &watch::Sender<Assignment>,
) -> zbus::Result<()> {
    use evos_bus::power::{BUS_NAME, INTERFACE, Power1Proxy, path};

    let set = |evse: u32, modules: Vec<u8>| {
        assignment.send_if_modified(|a| {
            if a.get(&evse) == Some(&modules) {
                return false;
            }
            tracing::info!(evse, ?modules, "modules feeding the output (Power1)");
            a.insert(evse, modules);
            true
        });
    };
    // Subscribe first, then read: no change falls between the two.
    let dbus = zbus::fdo::DBusProxy::new(connection).await?;
    let mut owners = dbus
        .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
        .await?;
    let mut changes = Vec::new();
    let mut proxies = Vec::new();
    for &evse in outputs {
        let properties = zbus::fdo::PropertiesProxy::builder(connection)
            .destination(BUS_NAME)
            .path(path(evse))
            .build()
            .await?;
        let stream = properties.receive_properties_changed().await?;
        changes.push(stream.map(move |signal| (evse, signal)));
        proxies.push((
            evse,
            Power1Proxy::builder(connection)
                .path(path(evse))
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?,
        ));
    }
    let mut changes = futures_util::stream::select_all(changes);
    let refresh = async |proxies: &[(u32, Power1Proxy<'_>)]| {
        for (evse, proxy) in proxies {
            // Absent until the power service runs: nothing to read yet.
            if let Ok(modules) = proxy.modules().await {
                set(*evse, modules);
            }
        }
    };
    refresh(&proxies).await;
    loop {
        tokio::select! {
            Some((evse, signal)) = changes.next() => {
                let Ok(args) = signal.args() else { continue };
                if args.interface_name().as_str() != INTERFACE {
                    continue;
                }
                let Some(value) = args.changed_properties().get("Modules") else {
                    continue;
                };
                match value.try_clone().and_then(Vec::<u8>::try_from) {
                    Ok(modules) => set(evse, modules),
                    Err(e) => tracing::warn!(evse, "unreadable Power1 Modules: {e}"),
                }
            }
            Some(signal) = owners.next() => {
                let appeared = signal.args().is_ok_and(|a| a.new_owner().is_some());
                if appeared {
                    refresh(&proxies).await;
                }
            }
            else => return Err(zbus::Error::Failure("the bus connection closed".into())),
        }
    }
}
