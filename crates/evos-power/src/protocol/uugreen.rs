//! UUGreen Power (优优绿能) UR1000x0 charging modules — UR100020, UR100030,
//! UR100040 — over CAN.
//!
//! # Sources
//!
//! UUGreen's own "CAN protocol" document is not public. Everything here
//! comes from independent public implementations of it, each quoted by the
//! letters used below; a fact marked with two or more letters was found in
//! that many of them.
//!
//! * **EV** — EVerest `everest-core`, module
//!   `modules/HardwareDrivers/PowerSupplies/UUGreenPower_UR1000X0`
//!   (`can_driver_acdc/CanPackets.{hpp,cpp}`, `UUGreenCanDevice.cpp`,
//!   `manifest.yaml`), Apache-2.0, snapshot 23c9dac16. Its register names
//!   "follow the CAN protocol documentation from UUGreenPower".
//! * **EVI** — EVerest issue #1676 "Baudrate setting for PowerSupply modules"
//!   (2025-12): a user found the UUGreen bring-up failing until `can0` ran
//!   at 125 kbit/s "as it should be for uugreen power supplies".
//! * **YY** — a Chinese "YYLN" (优优绿能) driver on GitHub: `yyln_data.h`,
//!   `yyln_data.c`, `yyln_interface.c` and an endianness test program; its
//!   comments paraphrase the Chinese document (group addressing, units).
//! * **JV** — a Java driver on GitHub, `can/powerBlock/PowerBlock.java` and
//!   `CanHandler.java`: the status word bit table with the document's
//!   English alarm names, message types and register numbers.
//! * **ST** — an STM32 driver on GitHub, `uugp_can.{c,h}` (2022): ID field
//!   positions and a partial status-bit list with the bits' numeric values.
//! * **SE** — `SmartElectroni/libpowermodul` (MIT, 2025),
//!   `src/UUgreenFrameGenerator.cpp`, `src/CanParser.cpp`: literal frames.
//!
//! # Bus
//!
//! 125 kbit/s (EVI), classic CAN, 29-bit identifiers, always 8 data bytes
//! (EV, YY, JV, ST, SE).
//!
//! # Identifier
//!
//! ```text
//!  28..25    24..21     20..14        13..9            8..0
//! protocol  monitor   module addr  production day  serial no. (low 9 bits)
//!    1         1       0 = all        0 from the monitor; the module's own
//!                      1..=127        values in its replies
//! ```
//!
//! Protocol number 1 and monitor (controller) address 1 (EV, YY, JV, ST,
//! SE). A module answers with its own address in bits 20..14 (EV, YY, JV,
//! SE); EV also accepts monitor 0 in replies.
//!
//! # Data
//!
//! ```text
//! byte 0   bits 7..4 group (0 = none), bits 3..0 message type
//! byte 1   register (the document's "command type"), 7 bits
//! byte 2-3 reserved, 0 (a serial-number reply carries the module type here)
//! byte 4-7 value, u32 big-endian
//! ```
//!
//! Message types (EV, YY, JV, ST): 0 set data, 1 set-data response, 2 read
//! data, 3 read-data response, 4 serial-number response. An "all set data"
//! message and its response are 11 and 12 in EV and JV but 5 and 6 in YY;
//! this module carries them undecoded ([`MessageType::AllSetData`]).
//!
//! A set is answered with a set-data response echoing register and value
//! (YY, JV); a read with a read-data response carrying the value (EV, YY,
//! JV, ST, SE).
//!
//! Registers used here ([`register`]), values fixed-point in the u32:
//!
//! | reg | name (document)         | unit / values                      | unit from   |
//! |-----|-------------------------|------------------------------------|-------------|
//! | 0   | Vout                    | output voltage, mV                 | EV YY JV SE |
//! | 1   | Iout_slow               | output current, mA                 | EV YY JV SE |
//! | 2   | VoutReference           | voltage setpoint, mV               | EV YY JV SE |
//! | 3   | IoutLimit               | current limit, mA                  | EV YY JV SE |
//! | 4   | ShutdownDCDC            | 0 = output on, 1 = output off      | EV JV SE    |
//! | 8   | ModuleStatus            | status/alarm word, below           | EV YY JV ST SE |
//! | 95  | HiMode_LoMode_Selection | 1 = 1000 V range, 2 = 500 V range  | EV YY JV ST SE |
//! | 104 | CurrentCapability       | current the module can deliver, mA | YY JV SE    |
//!
//! All five sources agree on these register numbers.
//!
//! # Addressing
//!
//! Module address `a` with group 0 reaches module `a`; module address 0
//! with group `g` (1..=15) reaches every module of group `g` (YY, the
//! document's rule as YY paraphrases it). Module 0 with group 0 reaches
//! every module: EV's "broadcast" mode, its default configuration; YY
//! notes the document leaves that case unclear. ST and JV send a module
//! address with group 1, which [`UuGreen::decode_command`] reads as that
//! module.
//!
//! # Status word (register 8)
//!
//! Bit numbers of the u32 value (bit 0 = least significant bit of byte 7).
//! JV lists every bit below; YY (by byte and bit) and ST (by value) confirm
//! most of them. Bit 15 is "output relay failure" in JV and YY but "PFC
//! over-temperature protection 2" in ST; the two agree, so relay failure.
//!
//! | bit | meaning                                   | [`ModuleFault`]      | sources  |
//! |-----|-------------------------------------------|----------------------|----------|
//! | 0   | AC over-voltage                           | `InputOverVoltage`   | JV YY ST |
//! | 1   | AC under-voltage                          | `InputUnderVoltage`  | JV YY ST |
//! | 2   | AC over-voltage shutdown (off the mains)  | `InputOverVoltage`   | JV YY ST |
//! | 3   | PFC bus over-voltage                      | `InputFault`         | JV YY    |
//! | 4   | PFC bus under-voltage                     | `InputFault`         | JV YY    |
//! | 5   | PFC bus unbalance                         | `InputFault`         | JV YY    |
//! | 6   | DC output over-voltage                    | `OutputOverVoltage`  | JV YY ST |
//! | 7   | DC over-voltage shutdown                  | `OutputOverVoltage`  | JV YY ST |
//! | 8   | DC output under-voltage                   | `OutputUnderVoltage` | JV YY ST |
//! | 9   | fan stopped                               | `FanFault`           | JV YY ST |
//! | 11  | fan driver circuit damaged                | `FanFault`           | JV YY    |
//! | 12  | ambient over-temperature                  | `OverTemperature`    | JV YY ST |
//! | 13  | ambient temperature too low               | `Internal`           | JV YY    |
//! | 14  | PFC over-temperature protection 1         | `OverTemperature`    | JV YY ST |
//! | 15  | output relay failure                      | `Internal`           | JV YY    |
//! | 16  | DC over-temperature protection 1          | `OverTemperature`    | JV YY ST |
//! | 17  | DC over-temperature protection 2          | `OverTemperature`    | JV ST    |
//! | 18  | PFC–DCDC communication failure            | `Internal`           | JV YY ST |
//! | 19  | DCDC did not get PFC OK                   | `InputFault`         | JV       |
//! | 20  | PFC failure                               | `InputFault`         | JV YY ST |
//! | 21  | DCDC failure                              | `Internal`           | JV YY ST |
//! | 24  | PFC off                                   | —                    | JV       |
//! | 25  | module (DCDC) off                         | `on == false`        | JV YY ST |
//! | 26–27 | output loop state; 27 = current loop    | —                    | YY (JV: 27) |
//! | 28  | DC output voltage unbalance               | `Internal`           | JV YY    |
//! | 29  | another module has the same serial number | `Internal`           | JV YY    |
//! | 31  | bleeder (output discharge) not working    | `Internal`           | JV YY ST |
//!
//! The word has no bit for output short circuit, over-current or lost
//! communication. `derating` is "on, with a fault that only derates"
//! ([`ModuleFault::derates`]); the word has no separate derating bit.
//!
//! # Mapping onto [`ModuleProtocol`]
//!
//! UUGreen is a register protocol: voltage, current, setpoint and limit each
//! travel in a frame of their own, so [`Command::SetOutput`] and
//! [`Command::ReadOutput`] are two frames each, and each frame decodes on
//! its own:
//!
//! * a voltage setpoint or current limit (registers 2, 3) decodes as a
//!   [`Command::SetOutput`] with that one value, and a [`Command::SetOutput`]
//!   is one set-data frame per value it holds;
//! * a voltage or current reading (registers 0, 1) decodes as a
//!   [`Reply::Output`] with that one value, and a [`Reply::Output`] is one
//!   read-data response per value it holds;
//! * [`Reply::Ack`] of a setting is the set-data response echoing register
//!   and value, one per register (two for a [`Command::SetOutput`] with both
//!   values); an echo decodes as `Ack` of the one register's setting;
//! * a read of either output register decodes as [`Command::ReadOutput`]:
//!   the trait does not say which half was asked, so a module side that
//!   answers register by register looks at the frame ([`Packet`]);
//! * the protocol has no ratings message (register 104 is the current
//!   available now, not a rating), so [`Command::ReadCapabilities`] and
//!   [`Reply::Capabilities`] encode to no frames.
//!
//! [`Packet`] is the complete register-level codec, both directions.
//!
//! Not covered by the trait: the 500 V / 1000 V range (register 95). EV
//! switches it with the output off: off, 2 s, select, 2 s, on again.
//!
//! # Communication timeout
//!
//! None of the sources states how long a module keeps its output without
//! hearing from the monitor. EV polls every module every 100 ms "to keep
//! the connection alive"; YY marks a silent module offline after 5 s.
//! [`UuGreen::module_timeout`] assumes 5 s until the document is at hand.

use std::time::Duration;

use evos_hal::can::CanFrame;

use super::{Command, DecodeError, ModuleFault, ModuleProtocol, ModuleStatus, Reply, Target};

/// Identifier bits 28..25 of every UUGreen frame.
pub const PROTOCOL: u8 = 1;
/// The monitor (controller) address this side uses, identifier bits 24..21.
pub const MONITOR: u8 = 1;
/// Module address 0: every module (of the group in byte 0, if any).
pub const ALL_MODULES: u8 = 0;
/// Largest module address (7 bits).
pub const MAX_MODULE: u8 = 0x7F;
/// Largest group address (4 bits); group 0 means no group.
pub const MAX_GROUP: u8 = 0x0F;

/// Register numbers (the document's "command type", byte 1).
pub mod register {
    /// Output voltage, mV (read).
    pub const VOUT: u8 = 0;
    /// Output current, mA (read); "Iout_slow" in the document.
    pub const IOUT: u8 = 1;
    /// Output voltage setpoint, mV (set, read).
    pub const VOUT_REFERENCE: u8 = 2;
    /// Output current limit, mA (set, read).
    pub const IOUT_LIMIT: u8 = 3;
    /// "ShutdownDCDC": 0 = output on, 1 = output off (set, read).
    pub const SHUTDOWN_DCDC: u8 = 4;
    /// Serial number (read).
    pub const READ_SN: u8 = 5;
    /// Status/alarm word (read).
    pub const MODULE_STATUS: u8 = 8;
    /// Inlet temperature, m°C (read).
    pub const TIN: u8 = 30;
    /// The module's group address (set, read).
    pub const GROUP_ADDRESS: u8 = 89;
    /// Output range: 1 = 1000 V ("high"), 2 = 500 V ("low") (set).
    pub const HI_LO_MODE_SELECTION: u8 = 95;
    /// The selected output range, values as above (read).
    pub const HI_LO_MODE_STATUS: u8 = 96;
    /// Output current the module can deliver now, mA (read).
    pub const CURRENT_CAPABILITY: u8 = 104;
}

/// Value of [`register::SHUTDOWN_DCDC`] for output on.
pub const OUTPUT_ON: u32 = 0;
/// Value of [`register::SHUTDOWN_DCDC`] for output off.
pub const OUTPUT_OFF: u32 = 1;

/// Status word bit: the module's DC/DC is off.
pub const STATUS_MODULE_OFF: u32 = 1 << 25;

/// Message type, byte 0 bits 3..0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    SetData,
    SetDataResponse,
    ReadData,
    ReadDataResponse,
    ReadSerialNumberResponse,
    /// "All set data" (range, on/off, limit, voltage in one frame) or its
    /// response, with its type number: 11/12 in EV and JV, 5/6 in YY.
    /// Carried, not interpreted.
    AllSetData(u8),
}

impl MessageType {
    pub fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            0 => MessageType::SetData,
            1 => MessageType::SetDataResponse,
            2 => MessageType::ReadData,
            3 => MessageType::ReadDataResponse,
            4 => MessageType::ReadSerialNumberResponse,
            5 | 6 | 11 | 12 => MessageType::AllSetData(nibble),
            _ => return None,
        })
    }

    pub fn nibble(self) -> u8 {
        match self {
            MessageType::SetData => 0,
            MessageType::SetDataResponse => 1,
            MessageType::ReadData => 2,
            MessageType::ReadDataResponse => 3,
            MessageType::ReadSerialNumberResponse => 4,
            MessageType::AllSetData(n) => n & 0x0F,
        }
    }
}

/// One UUGreen frame, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Identifier bits 24..21.
    pub monitor: u8,
    /// Identifier bits 20..14: a module, or [`ALL_MODULES`].
    pub module: u8,
    /// Identifier bits 13..9: the module's production day; 0 from the monitor.
    pub production_day: u8,
    /// Identifier bits 8..0: low bits of the module's serial number; 0 from
    /// the monitor.
    pub serial_low: u16,
    /// Byte 0 bits 7..4; 0 = no group.
    pub group: u8,
    /// Byte 0 bits 3..0.
    pub kind: MessageType,
    /// Byte 1, 7 bits.
    pub register: u8,
    /// Bytes 2..3, big-endian; reserved (0) except in serial-number replies.
    pub extra: u16,
    /// Bytes 4..7, big-endian.
    pub value: u32,
}

impl Packet {
    /// A frame between monitor [`MONITOR`] and `module` (in `group`), with
    /// production day, serial number and reserved bytes 0.
    pub fn new(module: u8, group: u8, kind: MessageType, register: u8, value: u32) -> Self {
        Packet {
            monitor: MONITOR,
            module,
            production_day: 0,
            serial_low: 0,
            group,
            kind,
            register,
            extra: 0,
            value,
        }
    }

    pub fn id(&self) -> u32 {
        u32::from(PROTOCOL & 0x0F) << 25
            | u32::from(self.monitor & 0x0F) << 21
            | u32::from(self.module & MAX_MODULE) << 14
            | u32::from(self.production_day & 0x1F) << 9
            | u32::from(self.serial_low & 0x1FF)
    }

    pub fn data(&self) -> [u8; 8] {
        let [e0, e1] = self.extra.to_be_bytes();
        let [v0, v1, v2, v3] = self.value.to_be_bytes();
        [
            (self.group & MAX_GROUP) << 4 | self.kind.nibble(),
            self.register & 0x7F,
            e0,
            e1,
            v0,
            v1,
            v2,
            v3,
        ]
    }

    pub fn to_frame(&self) -> CanFrame {
        CanFrame::extended(self.id(), &self.data())
            .expect("a UUGreen id fits 29 bits and its data 8 bytes")
    }

    /// `None` unless `frame` has a 29-bit identifier with protocol number
    /// [`PROTOCOL`]; an error when such a frame is not a UUGreen frame
    /// (length, message type, register out of range).
    pub fn from_frame(frame: &CanFrame) -> Option<Result<Packet, DecodeError>> {
        if !frame.is_extended() {
            return None;
        }
        let id = frame.id();
        if (id >> 25) & 0x0F != u32::from(PROTOCOL) {
            return None;
        }
        let bad = |why: String| Some(Err(DecodeError::Malformed { id, why }));
        let Ok(data) = <[u8; 8]>::try_from(frame.data()) else {
            return bad(format!(
                "UUGreen frames carry 8 data bytes, this one {}",
                frame.data().len()
            ));
        };
        let Some(kind) = MessageType::from_nibble(data[0] & 0x0F) else {
            return bad(format!("message type {} is not defined", data[0] & 0x0F));
        };
        if data[1] > 0x7F {
            return bad(format!("register {:#04x} is over 7 bits", data[1]));
        }
        Some(Ok(Packet {
            monitor: ((id >> 21) & 0x0F) as u8,
            module: ((id >> 14) & 0x7F) as u8,
            production_day: ((id >> 9) & 0x1F) as u8,
            serial_low: (id & 0x1FF) as u16,
            group: data[0] >> 4,
            kind,
            register: data[1],
            extra: u16::from_be_bytes([data[2], data[3]]),
            value: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        }))
    }
}

/// Volts or amperes to the protocol's milli-units, rounded to the nearest;
/// negative values and NaN become 0, values over the u32 range its maximum.
pub fn to_milli(x: f64) -> u32 {
    // `as` saturates and maps NaN to 0.
    (x * 1000.0).round() as u32
}

pub fn from_milli(milli: u32) -> f64 {
    f64::from(milli) / 1000.0
}

/// The status word's bits: (bit, the document's meaning, the fault).
const STATUS_BITS: &[(u8, &str, Option<ModuleFault>)] = &[
    (0, "AC over-voltage", Some(ModuleFault::InputOverVoltage)),
    (1, "AC under-voltage", Some(ModuleFault::InputUnderVoltage)),
    (
        2,
        "AC over-voltage shutdown",
        Some(ModuleFault::InputOverVoltage),
    ),
    (3, "PFC bus over-voltage", Some(ModuleFault::InputFault)),
    (4, "PFC bus under-voltage", Some(ModuleFault::InputFault)),
    (5, "PFC bus unbalance", Some(ModuleFault::InputFault)),
    (
        6,
        "DC output over-voltage",
        Some(ModuleFault::OutputOverVoltage),
    ),
    (
        7,
        "DC over-voltage shutdown",
        Some(ModuleFault::OutputOverVoltage),
    ),
    (
        8,
        "DC output under-voltage",
        Some(ModuleFault::OutputUnderVoltage),
    ),
    (9, "fan stopped", Some(ModuleFault::FanFault)),
    (
        11,
        "fan driver circuit damaged",
        Some(ModuleFault::FanFault),
    ),
    (
        12,
        "ambient over-temperature",
        Some(ModuleFault::OverTemperature),
    ),
    (
        13,
        "ambient temperature too low",
        Some(ModuleFault::Internal),
    ),
    (
        14,
        "PFC over-temperature protection 1",
        Some(ModuleFault::OverTemperature),
    ),
    (15, "output relay failure", Some(ModuleFault::Internal)),
    (
        16,
        "DC over-temperature protection 1",
        Some(ModuleFault::OverTemperature),
    ),
    (
        17,
        "DC over-temperature protection 2",
        Some(ModuleFault::OverTemperature),
    ),
    (
        18,
        "PFC-DCDC communication failure",
        Some(ModuleFault::Internal),
    ),
    (19, "DCDC did not get PFC OK", Some(ModuleFault::InputFault)),
    (20, "PFC failure", Some(ModuleFault::InputFault)),
    (21, "DCDC failure", Some(ModuleFault::Internal)),
    (24, "PFC off", None),
    (25, "module off", None),
    (27, "current loop", None),
    (
        28,
        "DC output voltage unbalance",
        Some(ModuleFault::Internal),
    ),
    (
        29,
        "another module has the same serial number",
        Some(ModuleFault::Internal),
    ),
    (31, "bleeder not working", Some(ModuleFault::Internal)),
];

/// The bit a fault is sent as when a status is built from its fields.
fn canonical_bit(fault: ModuleFault) -> Option<u32> {
    let bit = match fault {
        ModuleFault::InputOverVoltage => 0,
        ModuleFault::InputUnderVoltage => 1,
        ModuleFault::InputFault => 20,
        ModuleFault::OutputOverVoltage => 6,
        ModuleFault::OutputUnderVoltage => 8,
        ModuleFault::FanFault => 9,
        ModuleFault::OverTemperature => 12,
        ModuleFault::Internal => 21,
        ModuleFault::OutputShort | ModuleFault::OverCurrent | ModuleFault::CommunicationLost => {
            return None;
        }
    };
    Some(1 << bit)
}

/// Whether the status word can carry `fault`.
pub fn status_can_carry(fault: ModuleFault) -> bool {
    canonical_bit(fault).is_some()
}

fn fault_bits() -> impl Iterator<Item = (u32, ModuleFault)> {
    STATUS_BITS
        .iter()
        .filter_map(|&(bit, _, fault)| fault.map(|f| (1u32 << bit, f)))
}

/// The document's names of the bits set in a status word, for logs.
pub fn status_bit_names(word: u32) -> Vec<&'static str> {
    STATUS_BITS
        .iter()
        .filter(|&&(bit, _, _)| word & (1 << bit) != 0)
        .map(|&(_, name, _)| name)
        .collect()
}

/// A status word as [`ModuleStatus`]: `on` unless bit 25, the faults of its
/// bits (sorted, once each), `derating` when on with a derating fault.
pub fn status_from_word(word: u32) -> ModuleStatus {
    let mut faults: Vec<ModuleFault> = fault_bits()
        .filter(|&(bit, _)| word & bit != 0)
        .map(|(_, fault)| fault)
        .collect();
    faults.sort_unstable();
    faults.dedup();
    let on = word & STATUS_MODULE_OFF == 0;
    ModuleStatus {
        on,
        derating: on && faults.iter().any(|f| f.derates()),
        faults,
        raw: word,
    }
}

/// The status word for `status`: `raw`, with bit 25 from `on`, the fault
/// bits of faults not listed cleared, and one bit set for each listed fault
/// `raw` does not show yet. Faults the word cannot carry are left out;
/// `derating` follows from the faults.
pub fn word_from_status(status: &ModuleStatus) -> u32 {
    let mut word = status.raw & !STATUS_MODULE_OFF;
    if !status.on {
        word |= STATUS_MODULE_OFF;
    }
    for (bit, fault) in fault_bits() {
        if !status.faults.contains(&fault) {
            word &= !bit;
        }
    }
    for &fault in &status.faults {
        let shown = fault_bits().any(|(bit, f)| f == fault && word & bit != 0);
        if !shown && let Some(bit) = canonical_bit(fault) {
            word |= bit;
        }
    }
    word
}

/// Module address and group for a target; `None` when the protocol cannot
/// address it (module 0 or over 127, group 0 or over 15).
fn addressing(target: Target) -> Option<(u8, u8)> {
    match target {
        Target::Module(a) if (1..=MAX_MODULE).contains(&a) => Some((a, 0)),
        Target::Group(g) if (1..=MAX_GROUP).contains(&g) => Some((ALL_MODULES, g)),
        Target::Broadcast => Some((ALL_MODULES, 0)),
        Target::Module(_) | Target::Group(_) => None,
    }
}

/// Identifier bits 24..21 of a 29-bit frame with protocol number 1.
fn monitor_of(frame: &CanFrame) -> Option<u8> {
    let id = frame.id();
    (frame.is_extended() && (id >> 25) & 0x0F == u32::from(PROTOCOL))
        .then_some(((id >> 21) & 0x0F) as u8)
}

fn target_of(packet: &Packet) -> Target {
    match (packet.module, packet.group) {
        (ALL_MODULES, 0) => Target::Broadcast,
        (ALL_MODULES, g) => Target::Group(g),
        (a, _) => Target::Module(a),
    }
}

fn malformed<T>(packet: &Packet, why: String) -> Option<Result<T, DecodeError>> {
    Some(Err(DecodeError::Malformed {
        id: packet.id(),
        why,
    }))
}

/// On/off from a [`register::SHUTDOWN_DCDC`] value.
fn on_from(packet: &Packet) -> Result<bool, DecodeError> {
    match packet.value {
        OUTPUT_ON => Ok(true),
        OUTPUT_OFF => Ok(false),
        other => Err(DecodeError::Malformed {
            id: packet.id(),
            why: format!("on/off value {other} (0 = on, 1 = off)"),
        }),
    }
}

/// The registers and values a setting writes, in order: voltage setpoint,
/// current limit (each if present), or on/off. None for a read.
fn settings(command: &Command) -> Vec<(u8, u32)> {
    match *command {
        Command::SetOutput {
            voltage_v,
            current_a,
        } => [
            voltage_v.map(|v| (register::VOUT_REFERENCE, to_milli(v))),
            current_a.map(|a| (register::IOUT_LIMIT, to_milli(a))),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Command::SetOn(on) => vec![(
            register::SHUTDOWN_DCDC,
            if on { OUTPUT_ON } else { OUTPUT_OFF },
        )],
        Command::ReadOutput | Command::ReadStatus | Command::ReadCapabilities => Vec::new(),
    }
}

/// The setting a set-data frame (or its response) carries: `None` for a
/// register this side does not set, an error for an on/off value that is
/// neither.
fn setting_of(packet: &Packet) -> Option<Result<Command, DecodeError>> {
    Some(Ok(match packet.register {
        register::VOUT_REFERENCE => Command::SetOutput {
            voltage_v: Some(from_milli(packet.value)),
            current_a: None,
        },
        register::IOUT_LIMIT => Command::SetOutput {
            voltage_v: None,
            current_a: Some(from_milli(packet.value)),
        },
        register::SHUTDOWN_DCDC => match on_from(packet) {
            Ok(on) => Command::SetOn(on),
            Err(e) => return Some(Err(e)),
        },
        _ => return None,
    }))
}

pub struct UuGreen;

impl ModuleProtocol for UuGreen {
    fn name(&self) -> &'static str {
        "uugreen"
    }

    fn bitrate(&self) -> u32 {
        125_000
    }

    /// Unconfirmed: see the module documentation.
    fn module_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// No frames for a target the protocol cannot address (module 0 or over
    /// 127, group 0 or over 15) nor for [`Command::ReadCapabilities`].
    fn encode_command(&self, target: Target, command: &Command) -> Vec<CanFrame> {
        use MessageType::{ReadData, SetData};
        let Some((module, group)) = addressing(target) else {
            return Vec::new();
        };
        let messages: Vec<(MessageType, u8, u32)> = match *command {
            Command::SetOutput { .. } | Command::SetOn(_) => settings(command)
                .into_iter()
                .map(|(reg, value)| (SetData, reg, value))
                .collect(),
            Command::ReadOutput => {
                vec![(ReadData, register::VOUT, 0), (ReadData, register::IOUT, 0)]
            }
            Command::ReadStatus => vec![(ReadData, register::MODULE_STATUS, 0)],
            Command::ReadCapabilities => Vec::new(),
        };
        messages
            .into_iter()
            .map(|(kind, reg, value)| Packet::new(module, group, kind, reg, value).to_frame())
            .collect()
    }

    /// Replies to monitor 1 (or 0). A set-data response of register 2, 3
    /// or 4 is a [`Reply::Ack`] of that register's setting; a read-data
    /// response of register 0 or 1 a [`Reply::Output`] with that one value,
    /// of the status word a [`Reply::Status`]; other registers `None`.
    fn decode_reply(&self, frame: &CanFrame) -> Option<Result<(u8, Reply), DecodeError>> {
        // The identifier first: other protocols' frames can share bits 28..25.
        if !matches!(monitor_of(frame), Some(0 | MONITOR)) {
            return None;
        }
        let packet = match Packet::from_frame(frame)? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if !matches!(
            packet.kind,
            MessageType::SetDataResponse | MessageType::ReadDataResponse
        ) {
            return None;
        }
        if packet.module == ALL_MODULES {
            return malformed(&packet, "a reply from module address 0".into());
        }
        let reply = match (packet.kind, packet.register) {
            (MessageType::SetDataResponse, _) => match setting_of(&packet)? {
                Ok(command) => Reply::Ack(command),
                Err(e) => return Some(Err(e)),
            },
            (MessageType::ReadDataResponse, register::VOUT) => Reply::Output {
                voltage_v: Some(from_milli(packet.value)),
                current_a: None,
            },
            (MessageType::ReadDataResponse, register::IOUT) => Reply::Output {
                voltage_v: None,
                current_a: Some(from_milli(packet.value)),
            },
            (MessageType::ReadDataResponse, register::MODULE_STATUS) => {
                Reply::Status(status_from_word(packet.value))
            }
            _ => return None,
        };
        Some(Ok((packet.module, reply)))
    }

    /// Commands from monitor 1 (identifier bits 13..0 zero). A voltage
    /// setpoint or current limit is a [`Command::SetOutput`] with that one
    /// value; a read of either output register [`Command::ReadOutput`].
    fn decode_command(&self, frame: &CanFrame) -> Option<Result<(Target, Command), DecodeError>> {
        // The identifier first: other protocols' frames can share bits 28..25.
        if monitor_of(frame) != Some(MONITOR) || frame.id() & 0x3FFF != 0 {
            return None;
        }
        let packet = match Packet::from_frame(frame)? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let command = match (packet.kind, packet.register) {
            (MessageType::SetData, _) => match setting_of(&packet)? {
                Ok(command) => command,
                Err(e) => return Some(Err(e)),
            },
            (MessageType::ReadData, register::VOUT | register::IOUT) => Command::ReadOutput,
            (MessageType::ReadData, register::MODULE_STATUS) => Command::ReadStatus,
            _ => return None,
        };
        Some(Ok((target_of(&packet), command)))
    }

    /// No frames for an address outside 1..=127, for [`Reply::Capabilities`]
    /// nor for an `Ack` of a read.
    fn encode_reply(&self, address: u8, reply: &Reply) -> Vec<CanFrame> {
        use MessageType::{ReadDataResponse, SetDataResponse};
        if !(1..=MAX_MODULE).contains(&address) {
            return Vec::new();
        }
        let messages: Vec<(MessageType, u8, u32)> = match reply {
            Reply::Output {
                voltage_v,
                current_a,
            } => [
                voltage_v.map(|v| (ReadDataResponse, register::VOUT, to_milli(v))),
                current_a.map(|a| (ReadDataResponse, register::IOUT, to_milli(a))),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Reply::Status(status) => vec![(
                ReadDataResponse,
                register::MODULE_STATUS,
                word_from_status(status),
            )],
            // The set-data response echoes register and value.
            Reply::Ack(command) => settings(command)
                .into_iter()
                .map(|(reg, value)| (SetDataResponse, reg, value))
                .collect(),
            Reply::Capabilities { .. } => Vec::new(),
        };
        messages
            .into_iter()
            .map(|(kind, reg, value)| Packet::new(address, 0, kind, reg, value).to_frame())
            .collect()
    }
}

#[cfg(test)]
mod tests;
