//! Power-module protocols as pure functions: a command becomes CAN frames,
//! a frame becomes a message. One module per vendor family implements
//! [`ModuleProtocol`]; the service picks one by config name.
//!
//! Both directions are here: the controller side (what `power` sends and
//! parses) and the module side (what a module parses and answers), so the
//! simulator answers with the vendor's own frames. Byte-exact tests against
//! the vendor documents keep both sides honest.

use evos_hal::can::CanFrame;

pub mod infypower;
pub mod uugreen;

/// Who a command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One module by its address (set by its DIP switches / front panel).
    Module(u8),
    /// Every module of a group (where the protocol has groups).
    Group(u8),
    /// Every module on the bus.
    Broadcast,
}

/// What the controller asks of modules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// Output setpoint: voltage (V) and current limit (A) of one module.
    ///
    /// The controller always sends both. Either may be missing on the
    /// module side, where a register protocol (UUGreen) carries each in a
    /// frame of its own: that frame decodes as the one value it sets. A
    /// codec whose protocol needs both in one frame (InfyPower 0x1C)
    /// encodes nothing for a setpoint with one missing.
    SetOutput {
        voltage_v: Option<f64>,
        current_a: Option<f64>,
    },
    /// Switch the DC output on or off.
    SetOn(bool),
    /// Ask for the measured output voltage and current.
    ReadOutput,
    /// Ask for the status/alarm bits.
    ReadStatus,
    /// Ask for the module's ratings.
    ReadCapabilities,
}

/// A module fault, decoded from its status bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleFault {
    OverTemperature,
    InputOverVoltage,
    InputUnderVoltage,
    /// Phase loss, mains fault, PFC fault: the input side failed.
    InputFault,
    OutputOverVoltage,
    OutputUnderVoltage,
    OutputShort,
    OverCurrent,
    FanFault,
    /// The module lost its controller's messages and switched off.
    CommunicationLost,
    /// An internal fault the protocol does not name further.
    Internal,
}

impl ModuleFault {
    /// A fault the module recovers from by itself once the cause goes
    /// (temperature, mains); the others need the output off.
    pub fn is_recoverable(self) -> bool {
        matches!(
            self,
            ModuleFault::OverTemperature
                | ModuleFault::InputOverVoltage
                | ModuleFault::InputUnderVoltage
                | ModuleFault::InputFault
                | ModuleFault::FanFault
                | ModuleFault::CommunicationLost
        )
    }

    /// Whether the module still delivers (reduced) power with this fault.
    pub fn derates(self) -> bool {
        matches!(self, ModuleFault::OverTemperature | ModuleFault::FanFault)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModuleFault::OverTemperature => "over-temperature",
            ModuleFault::InputOverVoltage => "input over-voltage",
            ModuleFault::InputUnderVoltage => "input under-voltage",
            ModuleFault::InputFault => "input fault",
            ModuleFault::OutputOverVoltage => "output over-voltage",
            ModuleFault::OutputUnderVoltage => "output under-voltage",
            ModuleFault::OutputShort => "output short circuit",
            ModuleFault::OverCurrent => "over-current",
            ModuleFault::FanFault => "fan fault",
            ModuleFault::CommunicationLost => "communication lost",
            ModuleFault::Internal => "internal fault",
        }
    }
}

/// A module's state as its status word tells it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleStatus {
    pub on: bool,
    /// Power limited by the module itself (temperature, input).
    pub derating: bool,
    pub faults: Vec<ModuleFault>,
    /// The raw status bits as received, for logs.
    pub raw: u32,
}

/// What a module says.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Measured output voltage (V) and current (A). Either may be missing
    /// where the protocol answers each in a frame of its own (UUGreen); a
    /// codec whose answer carries both (InfyPower 0x03) encodes nothing
    /// with one missing.
    Output {
        voltage_v: Option<f64>,
        current_a: Option<f64>,
    },
    Status(ModuleStatus),
    Capabilities {
        min_voltage_v: f64,
        max_voltage_v: f64,
        max_current_a: f64,
        max_power_w: f64,
    },
    /// The module took this setting ([`Command::SetOutput`] or
    /// [`Command::SetOn`]), as its echo says: a codec encodes the vendor's
    /// echo of it and decodes an echo back to the command echoed (for a
    /// register protocol, one frame's part of it). Reads are answered, not
    /// acknowledged: `Ack` of a read encodes to no frames.
    Ack(Command),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame {id:#010x}: {why}")]
    Malformed { id: u32, why: String },
}

/// One vendor family's protocol.
pub trait ModuleProtocol: Send + Sync {
    /// The config name (`protocol = "infypower"`).
    fn name(&self) -> &'static str;
    /// The bit rate the modules use.
    fn bitrate(&self) -> u32;
    /// How long a module keeps its output without hearing from its
    /// controller before it switches off by itself (its heartbeat timeout).
    fn module_timeout(&self) -> std::time::Duration;

    /// Controller side: the frames for `command` to `target`.
    fn encode_command(&self, target: Target, command: &Command) -> Vec<CanFrame>;
    /// Controller side: a frame from a module. `None` when the frame is not
    /// this protocol's reply (other traffic on the bus).
    fn decode_reply(&self, frame: &CanFrame) -> Option<Result<(u8, Reply), DecodeError>>;

    /// Module side: a frame from the controller, for the module at
    /// `address` (in `group`). `None` when not addressed to it.
    fn decode_command(&self, frame: &CanFrame) -> Option<Result<(Target, Command), DecodeError>>;
    /// Module side: the frames module `address` answers with.
    fn encode_reply(&self, address: u8, reply: &Reply) -> Vec<CanFrame>;
    /// Module side: the frames module `address` answers a command to
    /// `target` with, where the answer depends on how the module was
    /// reached (InfyPower: device 0x0B for a group command). By default
    /// the same as [`ModuleProtocol::encode_reply`].
    fn encode_reply_to(&self, address: u8, reply: &Reply, target: Target) -> Vec<CanFrame> {
        let _ = target;
        self.encode_reply(address, reply)
    }
}

/// The protocols this build knows, by config name.
pub fn by_name(name: &str) -> Option<Box<dyn ModuleProtocol>> {
    match name {
        "infypower" => Some(Box::new(infypower::InfyPower)),
        "uugreen" => Some(Box::new(uugreen::UuGreen)),
        _ => None,
    }
}

pub const NAMES: &[&str] = &["infypower", "uugreen"];
