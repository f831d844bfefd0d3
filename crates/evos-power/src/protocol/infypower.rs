//! InfyPower (Shenzhen Infypower) charger modules: the REG/CEG/LRG series
//! "Charger Module CAN Communication Protocol V1.13" (REG1K0100G,
//! REG75030, CEG1K0100G, …), the protocol most DC chargers built on Infy
//! modules speak.
//!
//! # Sources
//!
//! The vendor document itself is not public; these facts come from public
//! material that transcribes or implements it. "(n)" after a fact below
//! says how many independent sources agree.
//!
//! - **E**: EVerest `everest-core`, `modules/HardwareDrivers/PowerSupplies/
//!   InfyPower/` (README.md "CAN Protocol Details" / "Safety Notes",
//!   `can_driver_acdc/CanPackets.{hpp,cpp}`, `InfyCanDevice.{hpp,cpp}`),
//!   commit 23c9dac16: a driver written against V1.13 that quotes it.
//! - **B**: A transcription of Infypower's bidirectional-module (BEG) CAN
//!   protocol: sections "Identifier", "Device No", "Destination
//!   address/Source Address", "ALARM/STATUS", "Mdl on/off control". Same
//!   identifier layout, same status tables, different command set (0x23/0x24).
//! - **S**: A CAN sniffer for Infypower modules whose tests quote the
//!   document's example frames ("documented" 0x02/0x03/0x04/0x06/0x0A/0x0C
//!   answers).
//! - **K**: A controller for AVR/MCP2515 (Slovak comments) holding the
//!   document's example answers as test data and sending 0x1A/0x1B/0x1C.
//! - **C**: Several independent controllers (STM32 FDCAN, ESP32, C++ and Lua
//!   chargers) using the ids 0x028300F0, 0x028400F0, 0x028A00F0,
//!   0x029A3FF0, 0x029A00F0, 0x029B3FF0, 0x029C00F0, 0x02DA00F0, and the
//!   status answer `00 00 02 00 1B 00 40 00`.
//!
//! # Bus
//!
//! 125 kbit/s (4: E, B, C, K), CAN 2.0B 29-bit identifiers only, always 8
//! data bytes (E: "Message Length: 8 bytes (fixed)"; E sends 8 zero bytes
//! with a read "otherwise the device returns an error"). Numbers are
//! big-endian, MSB in byte 0 (3: E, K, C; also all of B's examples,
//! although its text says "Intel type"); floats are IEEE-754 single
//! precision, big-endian (4: E, S, C, B).
//!
//! # Identifier (4: E, B, S, C)
//!
//! ```text
//! bits 28..26  error code   0x00 normal, 0x02 command invalid,
//!                           0x03 data invalid, 0x07 in start processing (B)
//! bits 25..22  device no.   0x0A one module, 0x0B a module group
//! bits 21..16  command no.
//! bits 15..8   destination  module 0x00..=0x3E, 0x3F broadcast;
//!                           with device 0x0B: the group number;
//!                           controller 0xF0..=0xF8, default 0xF0
//! bits 7..0    source
//! ```
//!
//! A module answers with the command's device and command numbers, the
//! controller as destination and its own address as source, also when it
//! was asked through its group (B, C: group answers come as `0x02C4F000`).
//! Broadcast commands (destination 0x3F) get no answer except the system
//! reads 0x01/0x02 (B) — so a simulated module must not answer a
//! [`Target::Broadcast`] read either.
//!
//! # Commands this codec speaks
//!
//! | cmd  | what                 | controller → module (8 bytes)          | module → controller                        |
//! |------|----------------------|-----------------------------------------|--------------------------------------------|
//! | 0x03 | read output V/I      | zeros                                   | V f32 (0..4), I f32 (4..8) (3: E, S, C)     |
//! | 0x04 | read status          | zeros                                   | 2: group no., 4: ambient °C, 5: state 2, 6: state 1, 7: state 0 (3: E, C, S) |
//! | 0x0A | read ratings         | zeros                                   | Vmax u16 1 V, Vmin u16 1 V, Imax u16 0.1 A (3: E, S, C), Prated u16 10 W (2: E, S) |
//! | 0x1A | on/off               | byte 0: 0x00 on, 0x01 off; rest 0 (5: E, K, C×3) | echo of the command (B, by analogy)  |
//! | 0x1C | set module V/I       | mV u32 (0..4), mA u32 (4..8) (2: E, K)  | echo of the command (B, by analogy)        |
//!
//! Other commands of the protocol (0x01/0x02/0x08 system reads, 0x06 input
//! voltages, 0x09 integer V/I, 0x0B barcode, 0x0C external voltage and
//! available current, 0x13/0x14/0x16/0x19 walk-in, LED, group, sleep,
//! 0x1B system setpoint, 0x1F address mode) are not decoded: their frames
//! give `None`.
//!
//! Through [`Target::Group`] a command goes with device 0x0B and the group
//! number (the modules' dial) as destination (3: E, B, C — e.g.
//! `0x02DA00F0` switches group 0). [`Command::SetOutput`] is a per-module
//! setpoint, so it is 0x1C also for groups and broadcasts, never the
//! system total 0x1B.
//!
//! # Status (0x04 answer)
//!
//! [`ModuleStatus::raw`] holds answer bytes 4..8 as a big-endian `u32`:
//! the ambient temperature (signed °C, bits 31..24), then state tables 2,
//! 1 and 0 (bytes 5, 6, 7: E, B, C). The bit meanings are the [`status`]
//! constants (3: E, B, S). The document's example answer
//! `00 00 02 00 1B 00 40 00` (2: S, C) is group 2, 27 °C, walk-in
//! enabled, no alarm. S puts state table 2 in byte 6 and table 1 in byte
//! 5; that would make the example read "input over-voltage", so it is
//! taken as its mistake. One controller (C) comments state 2 bit 0 as
//! over-current and bit 3 as output under-voltage; E and B agree on
//! "power limited" and "phase lost", which are used here.
//!
//! | bit           | meaning                         | evos                          |
//! |---------------|---------------------------------|-------------------------------|
//! | state 0 bit 0 | output short circuit            | [`ModuleFault::OutputShort`]  |
//! | state 0 bit 4 | sleeping                        | not `on`                      |
//! | state 0 bit 5 | discharge abnormal              | [`ModuleFault::Internal`]     |
//! | state 1 bit 0 | DC side off                     | not `on`                      |
//! | state 1 bit 1 | module fault                    | [`ModuleFault::Internal`]     |
//! | state 1 bit 2 | module protection               | [`ModuleFault::Internal`]     |
//! | state 1 bit 3 | fan fault                       | [`ModuleFault::FanFault`]     |
//! | state 1 bit 4 | over-temperature                | [`ModuleFault::OverTemperature`] |
//! | state 1 bit 5 | output over-voltage             | [`ModuleFault::OutputOverVoltage`] |
//! | state 1 bit 6 | walk-in enabled                 | — (raw only)                  |
//! | state 1 bit 7 | communication interrupted       | [`ModuleFault::CommunicationLost`] |
//! | state 2 bit 0 | power limited                   | `derating`                    |
//! | state 2 bit 1 | module id repeated              | [`ModuleFault::Internal`]     |
//! | state 2 bit 2 | load sharing alarm              | [`ModuleFault::Internal`]     |
//! | state 2 bit 3 | input phase lost                | [`ModuleFault::InputFault`]   |
//! | state 2 bit 4 | input unbalanced                | [`ModuleFault::InputFault`]   |
//! | state 2 bit 5 | input under-voltage             | [`ModuleFault::InputUnderVoltage`] |
//! | state 2 bit 6 | input over-voltage              | [`ModuleFault::InputOverVoltage`] |
//! | state 2 bit 7 | PFC side off                    | — (raw only: the input stage idles, not a fault) |
//!
//! V1.13 has no bit for output under-voltage or over-current: a module
//! side asked to report [`ModuleFault::OutputUnderVoltage`] or
//! [`ModuleFault::OverCurrent`] sets "module protection", which the
//! controller reads as [`ModuleFault::Internal`].
//!
//! # Heartbeat
//!
//! "If the charger module did not receive the message for 10 seconds from
//! the controller, the charger module will off" (V1.13 as quoted by E;
//! B says the same: "more than 10s … communication fault alarm and turn
//! off automatically", with a 50–200 ms command interval) — 10 s (2).
//!
//! # Mapping onto [`ModuleProtocol`]
//!
//! - [`Reply::Ack`] of a setting is its echo: `Ack(SetOn(on))` the 0x1A
//!   frame, `Ack(SetOutput { .. })` the 0x1C frame with the setpoint taken;
//!   a 0x1A or 0x1C answer decodes back to `Ack` of the setting it echoes.
//! - 0x1C and the 0x03 answer carry voltage and current together: a
//!   [`Command::SetOutput`] or [`Reply::Output`] missing either value
//!   encodes to no frames (and a warning).
//! - [`InfyPower::encode_reply_to`] answers a [`Target::Group`] command
//!   with device 0x0B; [`InfyPower::encode_reply`] always with 0x0A. The
//!   controller's [`InfyPower::decode_reply`] takes both.
//!
//! # Limits of this mapping
//!
//! - The module side does not know the module's group: a status answer
//!   carries group 0 in byte 2, which the controller ignores.
//! - An answer with a non-zero error code (0x02, 0x03, 0x07) decodes as
//!   [`DecodeError::Malformed`] naming the code.

use std::collections::BTreeSet;

use evos_hal::can::CanFrame;

use super::{Command, DecodeError, ModuleFault, ModuleProtocol, ModuleStatus, Reply, Target};

/// The InfyPower V1.13 codec (controller address 0xF0).
pub struct InfyPower;

/// The controller's own address (the protocol's default).
pub const CONTROLLER_ADDRESS: u8 = 0xF0;
/// The highest controller address the protocol allows.
const LAST_CONTROLLER_ADDRESS: u8 = 0xF8;
/// Destination "every module" (device 0x0A) or "every group" (0x0B).
pub const BROADCAST_ADDRESS: u8 = 0x3F;
/// The highest module address, and the highest group number this codec
/// sends to.
pub const MAX_MODULE_ADDRESS: u8 = 0x3E;

const DEVICE_MODULE: u8 = 0x0A;
const DEVICE_GROUP: u8 = 0x0B;

const CMD_READ_OUTPUT: u8 = 0x03;
const CMD_READ_STATUS: u8 = 0x04;
const CMD_READ_RATINGS: u8 = 0x0A;
const CMD_SET_ON_OFF: u8 = 0x1A;
const CMD_SET_OUTPUT: u8 = 0x1C;

const ERROR_NONE: u8 = 0x00;

/// The 0x1A payload's first byte.
const ON: u8 = 0x00;
const OFF: u8 = 0x01;

/// Bits of [`ModuleStatus::raw`] as this codec fills it: answer bytes 4..8
/// of command 0x04 as a big-endian `u32`.
pub mod status {
    /// Ambient temperature, signed °C (byte 4).
    pub const TEMPERATURE_MASK: u32 = 0xFF00_0000;
    pub const TEMPERATURE_SHIFT: u32 = 24;

    // State table 0 (byte 7).
    pub const OUTPUT_SHORT: u32 = 1 << 0;
    pub const SLEEPING: u32 = 1 << 4;
    pub const DISCHARGE_ABNORMAL: u32 = 1 << 5;

    // State table 1 (byte 6).
    pub const DC_SIDE_OFF: u32 = 1 << 8;
    pub const MODULE_FAULT: u32 = 1 << 9;
    pub const MODULE_PROTECTION: u32 = 1 << 10;
    pub const FAN_FAULT: u32 = 1 << 11;
    pub const OVER_TEMPERATURE: u32 = 1 << 12;
    pub const OUTPUT_OVER_VOLTAGE: u32 = 1 << 13;
    pub const WALK_IN_ENABLED: u32 = 1 << 14;
    pub const COMMUNICATION_INTERRUPTED: u32 = 1 << 15;

    // State table 2 (byte 5).
    pub const POWER_LIMITED: u32 = 1 << 16;
    pub const ID_REPEATED: u32 = 1 << 17;
    pub const LOAD_SHARING_ALARM: u32 = 1 << 18;
    pub const INPUT_PHASE_LOST: u32 = 1 << 19;
    pub const INPUT_UNBALANCED: u32 = 1 << 20;
    pub const INPUT_UNDER_VOLTAGE: u32 = 1 << 21;
    pub const INPUT_OVER_VOLTAGE: u32 = 1 << 22;
    pub const PFC_SIDE_OFF: u32 = 1 << 23;

    /// Either bit means the module delivers no output.
    pub const OFF: u32 = DC_SIDE_OFF | SLEEPING;
}

/// Which status bit means which fault (several bits may share one).
const FAULT_BITS: [(u32, ModuleFault); 14] = [
    (status::OUTPUT_SHORT, ModuleFault::OutputShort),
    (status::DISCHARGE_ABNORMAL, ModuleFault::Internal),
    (status::MODULE_FAULT, ModuleFault::Internal),
    (status::MODULE_PROTECTION, ModuleFault::Internal),
    (status::FAN_FAULT, ModuleFault::FanFault),
    (status::OVER_TEMPERATURE, ModuleFault::OverTemperature),
    (status::OUTPUT_OVER_VOLTAGE, ModuleFault::OutputOverVoltage),
    (
        status::COMMUNICATION_INTERRUPTED,
        ModuleFault::CommunicationLost,
    ),
    (status::ID_REPEATED, ModuleFault::Internal),
    (status::LOAD_SHARING_ALARM, ModuleFault::Internal),
    (status::INPUT_PHASE_LOST, ModuleFault::InputFault),
    (status::INPUT_UNBALANCED, ModuleFault::InputFault),
    (status::INPUT_UNDER_VOLTAGE, ModuleFault::InputUnderVoltage),
    (status::INPUT_OVER_VOLTAGE, ModuleFault::InputOverVoltage),
];

/// The bit a module side sets to report `fault`.
fn fault_bit(fault: ModuleFault) -> u32 {
    match fault {
        ModuleFault::OutputShort => status::OUTPUT_SHORT,
        ModuleFault::Internal => status::MODULE_FAULT,
        ModuleFault::FanFault => status::FAN_FAULT,
        ModuleFault::OverTemperature => status::OVER_TEMPERATURE,
        ModuleFault::OutputOverVoltage => status::OUTPUT_OVER_VOLTAGE,
        ModuleFault::CommunicationLost => status::COMMUNICATION_INTERRUPTED,
        ModuleFault::InputFault => status::INPUT_PHASE_LOST,
        ModuleFault::InputUnderVoltage => status::INPUT_UNDER_VOLTAGE,
        ModuleFault::InputOverVoltage => status::INPUT_OVER_VOLTAGE,
        // No bit of their own in V1.13.
        ModuleFault::OutputUnderVoltage | ModuleFault::OverCurrent => status::MODULE_PROTECTION,
    }
}

/// Read a status as the controller does.
pub fn status_from_raw(raw: u32) -> ModuleStatus {
    let faults: BTreeSet<ModuleFault> = FAULT_BITS
        .iter()
        .filter(|(bit, _)| raw & bit != 0)
        .map(|&(_, fault)| fault)
        .collect();
    ModuleStatus {
        on: raw & status::OFF == 0,
        derating: raw & status::POWER_LIMITED != 0,
        faults: faults.into_iter().collect(),
        raw,
    }
}

/// The bits a module sends for `status`: its fields win over `raw`, which
/// supplies the rest (temperature, walk-in, PFC side, and which of several
/// bits stands for a fault). For a status read by [`status_from_raw`] this
/// gives back its `raw`.
pub fn raw_from_status(status: &ModuleStatus) -> u32 {
    let mut raw = status.raw;
    if status.on {
        raw &= !status::OFF;
    } else if raw & status::OFF == 0 {
        raw |= status::DC_SIDE_OFF;
    }
    if status.derating {
        raw |= status::POWER_LIMITED;
    } else {
        raw &= !status::POWER_LIMITED;
    }
    for (bit, fault) in FAULT_BITS {
        if !status.faults.contains(&fault) {
            raw &= !bit;
        }
    }
    for &fault in &status.faults {
        let reported = FAULT_BITS
            .iter()
            .any(|&(bit, f)| f == fault && raw & bit != 0);
        if !reported {
            raw |= fault_bit(fault);
        }
    }
    raw
}

/// The fields of a 29-bit identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id {
    error: u8,
    device: u8,
    command: u8,
    destination: u8,
    source: u8,
}

impl Id {
    fn to_raw(self) -> u32 {
        (u32::from(self.error & 0x07) << 26)
            | (u32::from(self.device & 0x0F) << 22)
            | (u32::from(self.command & 0x3F) << 16)
            | (u32::from(self.destination) << 8)
            | u32::from(self.source)
    }

    fn from_raw(raw: u32) -> Self {
        Id {
            error: ((raw >> 26) & 0x07) as u8,
            device: ((raw >> 22) & 0x0F) as u8,
            command: ((raw >> 16) & 0x3F) as u8,
            destination: (raw >> 8) as u8,
            source: raw as u8,
        }
    }

    /// The identifier of `frame`, if it is a 29-bit one.
    fn of(frame: &CanFrame) -> Option<Self> {
        frame.is_extended().then(|| Id::from_raw(frame.id()))
    }
}

fn frame(id: Id, data: [u8; 8]) -> Vec<CanFrame> {
    // A 29-bit id and 8 bytes always make a frame.
    CanFrame::extended(id.to_raw(), &data).into_iter().collect()
}

fn is_known_command(command: u8) -> bool {
    matches!(
        command,
        CMD_READ_OUTPUT | CMD_READ_STATUS | CMD_READ_RATINGS | CMD_SET_ON_OFF | CMD_SET_OUTPUT
    )
}

fn error_name(code: u8) -> Option<&'static str> {
    match code {
        0x02 => Some("command invalid"),
        0x03 => Some("data invalid"),
        0x07 => Some("in start processing (address allocation)"),
        _ => None,
    }
}

fn malformed(frame: &CanFrame, why: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        id: frame.id(),
        why: why.into(),
    }
}

/// The 8 data bytes, or the error for another length.
fn data8(frame: &CanFrame) -> Result<[u8; 8], DecodeError> {
    <[u8; 8]>::try_from(frame.data()).map_err(|_| {
        malformed(
            frame,
            format!(
                "{} data bytes; InfyPower frames carry 8",
                frame.data().len()
            ),
        )
    })
}

fn split_u32(data: &[u8; 8]) -> (u32, u32) {
    (
        u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
        u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
    )
}

fn join_u32(first: u32, second: u32) -> [u8; 8] {
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&first.to_be_bytes());
    data[4..].copy_from_slice(&second.to_be_bytes());
    data
}

/// `value × per_unit`, rounded and clamped to `u32` (NaN gives 0).
fn to_u32_units(value: f64, per_unit: f64) -> u32 {
    (value * per_unit).round() as u32
}

/// `value × per_unit`, rounded and clamped to `u16` (NaN gives 0).
fn to_u16_units(value: f64, per_unit: f64) -> u16 {
    (value * per_unit).round() as u16
}

/// 0x1C: mV and mA.
fn setpoint_data(voltage_v: f64, current_a: f64) -> [u8; 8] {
    join_u32(
        to_u32_units(voltage_v, 1000.0),
        to_u32_units(current_a, 1000.0),
    )
}

fn on_off_data(on: bool) -> [u8; 8] {
    [if on { ON } else { OFF }, 0, 0, 0, 0, 0, 0, 0]
}

/// The setting a 0x1A or 0x1C frame carries (a command, or a module's echo
/// of it).
fn setting_of(frame: &CanFrame, command: u8, data: &[u8; 8]) -> Result<Command, DecodeError> {
    if command == CMD_SET_ON_OFF {
        return match data[0] {
            ON => Ok(Command::SetOn(true)),
            OFF => Ok(Command::SetOn(false)),
            other => Err(malformed(
                frame,
                format!("on/off byte {other:#04x}; 0x00 is on, 0x01 off"),
            )),
        };
    }
    let (millivolt, milliampere) = split_u32(data);
    Ok(Command::SetOutput {
        voltage_v: Some(f64::from(millivolt) / 1000.0),
        current_a: Some(f64::from(milliampere) / 1000.0),
    })
}

impl InfyPower {
    /// The identifier fields addressing `target`, or `None` when the target
    /// cannot exist on this protocol (a module address or group number over
    /// [`MAX_MODULE_ADDRESS`]).
    fn destination(target: Target) -> Option<(u8, u8)> {
        match target {
            Target::Module(address) if address <= MAX_MODULE_ADDRESS => {
                Some((DEVICE_MODULE, address))
            }
            Target::Group(group) if group <= MAX_MODULE_ADDRESS => Some((DEVICE_GROUP, group)),
            Target::Broadcast => Some((DEVICE_MODULE, BROADCAST_ADDRESS)),
            Target::Module(_) | Target::Group(_) => None,
        }
    }

    /// Command number and data of a set command's frame (also its echo);
    /// `None` for a read, or for a setpoint missing a value (0x1C carries
    /// both).
    fn setting(command: &Command) -> Option<(u8, [u8; 8])> {
        match *command {
            Command::SetOutput {
                voltage_v: Some(voltage_v),
                current_a: Some(current_a),
            } => Some((CMD_SET_OUTPUT, setpoint_data(voltage_v, current_a))),
            Command::SetOutput { .. } => {
                tracing::warn!(
                    "InfyPower: {command:?} lacks a value; 0x1C carries voltage and current \
                     together: not sent"
                );
                None
            }
            Command::SetOn(on) => Some((CMD_SET_ON_OFF, on_off_data(on))),
            Command::ReadOutput | Command::ReadStatus | Command::ReadCapabilities => None,
        }
    }

    /// Command number and data of the answer `reply`; `None` when it has
    /// no frame (an `Ack` of a read, an output missing a value).
    fn answer(reply: &Reply) -> Option<(u8, [u8; 8])> {
        match reply {
            Reply::Output {
                voltage_v: Some(voltage_v),
                current_a: Some(current_a),
            } => Some((
                CMD_READ_OUTPUT,
                join_u32((*voltage_v as f32).to_bits(), (*current_a as f32).to_bits()),
            )),
            Reply::Output { .. } => {
                tracing::warn!(
                    "InfyPower: {reply:?} lacks a value; 0x03 carries voltage and current \
                     together: not sent"
                );
                None
            }
            Reply::Status(status) => {
                let raw = raw_from_status(status).to_be_bytes();
                // Byte 2 would be the module's group, which this side does
                // not know.
                Some((
                    CMD_READ_STATUS,
                    [0, 0, 0, 0, raw[0], raw[1], raw[2], raw[3]],
                ))
            }
            Reply::Capabilities {
                min_voltage_v,
                max_voltage_v,
                max_current_a,
                max_power_w,
            } => {
                let mut data = [0u8; 8];
                data[0..2].copy_from_slice(&to_u16_units(*max_voltage_v, 1.0).to_be_bytes());
                data[2..4].copy_from_slice(&to_u16_units(*min_voltage_v, 1.0).to_be_bytes());
                data[4..6].copy_from_slice(&to_u16_units(*max_current_a, 10.0).to_be_bytes());
                data[6..8].copy_from_slice(&to_u16_units(*max_power_w, 0.1).to_be_bytes());
                Some((CMD_READ_RATINGS, data))
            }
            // The echo of the setting; a read is answered, not acknowledged.
            Reply::Ack(command) => match command {
                Command::SetOutput { .. } | Command::SetOn(_) => Self::setting(command),
                Command::ReadOutput | Command::ReadStatus | Command::ReadCapabilities => None,
            },
        }
    }

    /// Module `address`'s answer, with `device` 0x0A, or 0x0B for a
    /// command it got through its group.
    fn reply_frames(address: u8, reply: &Reply, device: u8) -> Vec<CanFrame> {
        if address > MAX_MODULE_ADDRESS {
            return Vec::new();
        }
        let Some((command, data)) = Self::answer(reply) else {
            return Vec::new();
        };
        let id = Id {
            error: ERROR_NONE,
            device,
            command,
            destination: CONTROLLER_ADDRESS,
            source: address,
        };
        frame(id, data)
    }
}

impl ModuleProtocol for InfyPower {
    fn name(&self) -> &'static str {
        "infypower"
    }

    fn bitrate(&self) -> u32 {
        125_000
    }

    fn module_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(10)
    }

    fn encode_command(&self, target: Target, command: &Command) -> Vec<CanFrame> {
        let Some((device, destination)) = Self::destination(target) else {
            tracing::warn!("InfyPower: no module or group {target:?} (at most 0x3E); not sent");
            return Vec::new();
        };
        let (command, data) = match *command {
            Command::SetOutput { .. } | Command::SetOn(_) => match Self::setting(command) {
                Some(setting) => setting,
                None => return Vec::new(),
            },
            Command::ReadOutput => (CMD_READ_OUTPUT, [0; 8]),
            Command::ReadStatus => (CMD_READ_STATUS, [0; 8]),
            Command::ReadCapabilities => (CMD_READ_RATINGS, [0; 8]),
        };
        let id = Id {
            error: ERROR_NONE,
            device,
            command,
            destination,
            source: CONTROLLER_ADDRESS,
        };
        frame(id, data)
    }

    fn decode_reply(&self, frame: &CanFrame) -> Option<Result<(u8, Reply), DecodeError>> {
        let id = Id::of(frame)?;
        let ours = id.destination == CONTROLLER_ADDRESS
            && id.source <= MAX_MODULE_ADDRESS
            && matches!(id.device, DEVICE_MODULE | DEVICE_GROUP)
            && is_known_command(id.command)
            && (id.error == ERROR_NONE || error_name(id.error).is_some());
        if !ours {
            return None;
        }
        let address = id.source;
        if let Some(error) = error_name(id.error) {
            return Some(Err(malformed(
                frame,
                format!(
                    "module {address:#04x} answered command {:#04x} with error code {:#04x} ({error})",
                    id.command, id.error
                ),
            )));
        }
        let data = match data8(frame) {
            Ok(data) => data,
            Err(e) => return Some(Err(e)),
        };
        let reply = match id.command {
            CMD_READ_OUTPUT => {
                let (voltage, current) = split_u32(&data);
                let (voltage, current) = (f32::from_bits(voltage), f32::from_bits(current));
                if !voltage.is_finite() || !current.is_finite() {
                    return Some(Err(malformed(
                        frame,
                        format!("output {voltage} V / {current} A is not a number"),
                    )));
                }
                Reply::Output {
                    voltage_v: Some(f64::from(voltage)),
                    current_a: Some(f64::from(current)),
                }
            }
            CMD_READ_STATUS => Reply::Status(status_from_raw(u32::from_be_bytes([
                data[4], data[5], data[6], data[7],
            ]))),
            CMD_READ_RATINGS => {
                let word = |i: usize| f64::from(u16::from_be_bytes([data[i], data[i + 1]]));
                Reply::Capabilities {
                    max_voltage_v: word(0),
                    min_voltage_v: word(2),
                    max_current_a: word(4) / 10.0,
                    max_power_w: word(6) * 10.0,
                }
            }
            // CMD_SET_ON_OFF | CMD_SET_OUTPUT: the module echoes the setting.
            command => match setting_of(frame, command, &data) {
                Ok(setting) => Reply::Ack(setting),
                Err(e) => return Some(Err(e)),
            },
        };
        Some(Ok((address, reply)))
    }

    fn decode_command(&self, frame: &CanFrame) -> Option<Result<(Target, Command), DecodeError>> {
        let id = Id::of(frame)?;
        if id.error != ERROR_NONE
            || !(CONTROLLER_ADDRESS..=LAST_CONTROLLER_ADDRESS).contains(&id.source)
            || !is_known_command(id.command)
        {
            return None;
        }
        let target = match (id.device, id.destination) {
            (DEVICE_MODULE | DEVICE_GROUP, BROADCAST_ADDRESS) => Target::Broadcast,
            (DEVICE_MODULE, address) if address <= MAX_MODULE_ADDRESS => Target::Module(address),
            (DEVICE_GROUP, group) if group <= MAX_MODULE_ADDRESS => Target::Group(group),
            _ => return None,
        };
        let data = match data8(frame) {
            Ok(data) => data,
            Err(e) => return Some(Err(e)),
        };
        let command = match id.command {
            CMD_READ_OUTPUT => Command::ReadOutput,
            CMD_READ_STATUS => Command::ReadStatus,
            CMD_READ_RATINGS => Command::ReadCapabilities,
            // CMD_SET_ON_OFF | CMD_SET_OUTPUT
            command => match setting_of(frame, command, &data) {
                Ok(setting) => setting,
                Err(e) => return Some(Err(e)),
            },
        };
        Some(Ok((target, command)))
    }

    fn encode_reply(&self, address: u8, reply: &Reply) -> Vec<CanFrame> {
        Self::reply_frames(address, reply, DEVICE_MODULE)
    }

    /// A module asked through its group answers with device 0x0B (B, C),
    /// otherwise as [`ModuleProtocol::encode_reply`].
    fn encode_reply_to(&self, address: u8, reply: &Reply, target: Target) -> Vec<CanFrame> {
        let device = match target {
            Target::Group(_) => DEVICE_GROUP,
            Target::Module(_) | Target::Broadcast => DEVICE_MODULE,
        };
        Self::reply_frames(address, reply, device)
    }
}

#[cfg(test)]
mod tests;
