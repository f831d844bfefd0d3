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
    /// Current the EV draws per phase (A).
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
    fn evses(&self) -> Result<Vec<SimEvse>, crate::Error>;
    fn profiles(&self) -> Result<Vec<String>, crate::Error>;
}
