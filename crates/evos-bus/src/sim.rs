//! `org.evos.Sim1`: the simulated physical world (hal-sim), at `/org/evos/Sim1`.
//!
//! Only the simulator serves it. It moves the world (plug a car, present a
//! card, break a contactor); the services under test see the effects only
//! through their real transports, never through this interface.

use serde::{Deserialize, Serialize};
use zbus::{Type, proxy};

pub const BUS_NAME: &str = "org.evos.Sim";
pub const INTERFACE: &str = "org.evos.Sim1";
pub const PATH: &str = "/org/evos/Sim1";

/// Fault kinds `Fault` accepts.
pub const FAULT_KINDS: &[&str] = &["rcd", "welded", "lock", "diode", "state-e", "state-f"];

/// Fault kinds `MeterFault` accepts; `clear` clears the meter's faults.
///
/// - `offline`: the meter stops answering (requests time out; open
///   connections stay open but silent).
/// - `exception`: every request gets exception 0x04 ServerDeviceFailure.
/// - `backwards`: the energy register reads 1 kWh below the truth.
/// - `jump`: the energy register reads 1000 kWh above the truth.
/// - `garbage`: read responses are malformed (the byte count disagrees with
///   the frame's length).
///
/// Each lasts until `clear` (or `Clear`).
pub const METER_FAULT_KINDS: &[&str] = &[
    "offline",
    "exception",
    "backwards",
    "jump",
    "garbage",
    "clear",
];

/// Fault kinds `ModuleFault` accepts; `clear` clears the module's faults.
///
/// - `over-temperature`: the module derates (its current limit halves) and
///   its status shows over-temperature and derating.
/// - `output-short`: the module switches its output off and its status
///   shows an output short; it stays off until told to switch on again
///   after `clear`.
/// - `input-fault`: the mains side fails: no output while it lasts, status
///   shows an input fault; the module recovers by itself on `clear`.
/// - `silent`: the module is unplugged: it sends no frame at all and
///   delivers nothing; after `clear` it starts again as from power-up.
///
/// Each lasts until `clear`.
pub const MODULE_FAULT_KINDS: &[&str] = &[
    "over-temperature",
    "output-short",
    "input-fault",
    "silent",
    "clear",
];

/// What the simulator knows about one EVSE and the EV at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct SimEvse {
    pub evse: u32,
    /// The EV profile plugged in; empty when nothing is plugged.
    pub ev_profile: String,
    pub cp_state: String,
    /// Current the EVSE offers by PWM (A); 0 when PWM is off.
    pub offered_a: f64,
    pub relays_closed: bool,
    pub locked: bool,
    /// Current the EV draws: per phase for AC, the DC current for DC (A).
    pub current_a: f64,
    pub soc_percent: f64,
    /// The simulated meter register (Wh).
    pub meter_wh: f64,
    /// Active injected faults.
    pub faults: Vec<String>,
    /// Active faults injected into the EVSE's emulated meter.
    pub meter_faults: Vec<String>,
    /// Whether an `evse` service is connected to this EVSE's MCU link.
    pub host_connected: bool,
}

/// One emulated DC power module (`Modules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct SimModule {
    pub address: u8,
    /// The EVSE whose output the module feeds now (from Power1 `Modules`,
    /// standing in for the contactor matrix); 0 for none.
    pub evse: u32,
    /// Whether its output stage runs.
    pub on: bool,
    /// The setpoint it was last given: voltage (V), current limit (A).
    pub setpoint_v: f64,
    pub setpoint_a: f64,
    /// What it measures at its output (V, A).
    pub voltage_v: f64,
    pub current_a: f64,
    /// Injected faults, from [`MODULE_FAULT_KINDS`].
    pub faults: Vec<String>,
    /// It heard nothing from its controller for its heartbeat timeout and
    /// switched itself off (until the controller speaks again).
    pub timed_out: bool,
}

#[proxy(
    interface = "org.evos.Sim1",
    default_service = "org.evos.Sim",
    default_path = "/org/evos/Sim1"
)]
pub trait Sim1 {
    /// Plug an EV of `profile` (see `Profiles`) into `evse`.
    fn plug(&self, evse: u32, profile: &str) -> Result<(), crate::Error>;
    fn unplug(&self, evse: u32) -> Result<(), crate::Error>;
    /// Hold an RFID card with `token` to the reader of `evse`.
    fn swipe(&self, evse: u32, token: &str) -> Result<(), crate::Error>;
    /// Inject a fault, one of [`FAULT_KINDS`].
    fn fault(&self, evse: u32, kind: &str) -> Result<(), crate::Error>;
    /// Clear every injected fault of `evse`, its meter's included.
    fn clear(&self, evse: u32) -> Result<(), crate::Error>;
    /// Inject a fault into the emulated meter of `evse`, one of
    /// [`METER_FAULT_KINDS`] (`clear` clears them).
    fn meter_fault(&self, evse: u32, kind: &str) -> Result<(), crate::Error>;
    /// Inject a fault into the emulated power module at `address`, one of
    /// [`MODULE_FAULT_KINDS`] (`clear` clears them).
    fn module_fault(&self, address: u8, kind: &str) -> Result<(), crate::Error>;
    fn evses(&self) -> Result<Vec<SimEvse>, crate::Error>;
    /// The emulated power modules (none without a simulated CAN bus).
    fn modules(&self) -> Result<Vec<SimModule>, crate::Error>;
    fn profiles(&self) -> Result<Vec<String>, crate::Error>;
}
