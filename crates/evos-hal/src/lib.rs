//! Hardware abstraction for evos services.
//!
//! A charger's safety-relevant hardware per EVSE (control pilot, contactors,
//! connector lock, proximity pilot, RCD) sits behind [`SafetyBoard`]. Two
//! implementations exist:
//! - [`mcu::McuBoard`]: a safety MCU owns the hardware and speaks the framed
//!   serial protocol documented in [`mcu`] (the common design; the simulator
//!   speaks the same protocol over a Unix socket);
//! - [`gpio::GpioBoard`]: the Linux host drives GPIO/PWM/ADC itself.
//!
//! [`can`] carries CAN frames (SocketCAN, or the simulator's datagram link) and
//! [`boot_env`] reads and writes a U-Boot environment.

pub mod board;
pub mod boot_env;
pub mod can;
pub mod gpio;
pub mod mcu;

pub use board::{BoardEvent, BoardStatus, CpState, LockState, Measurement, PwmOutput, SafetyBoard};

/// Errors of the hardware layer.
#[derive(Debug, thiserror::Error)]
pub enum HalError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed frame: {0}")]
    Frame(String),
    #[error("the link to the board is down")]
    LinkDown,
    #[error("bad hardware address `{0}`: {1}")]
    Address(String, String),
    #[error("boot environment: {0}")]
    BootEnv(String),
    /// The CAN controller reported a state change (an error frame).
    #[error("CAN controller on {interface}: {state}")]
    CanController {
        interface: String,
        state: can::ControllerState,
    },
}

impl HalError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HalError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, HalError>;
