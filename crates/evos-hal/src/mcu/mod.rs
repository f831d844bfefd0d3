//! The safety-MCU link: the wire protocol between the host and the MCU that
//! owns control pilot, contactors, lock, PP and RCD of one EVSE.
//!
//! # Wire format (version 1)
//!
//! A UART at 115200 8N1 (or any byte stream: the simulator uses a Unix
//! socket). Each frame is COBS-encoded and ends with a `0x00` delimiter, so a
//! receiver resynchronises at the next zero after garbage. A decoded frame is
//!
//! ```text
//! +------+-----------------+----------------------+
//! | type | payload (0..N)  | CRC-32 (LE, 4 bytes) |
//! +------+-----------------+----------------------+
//! ```
//!
//! The CRC is CRC-32/ISO-HDLC (the zlib/Ethernet one) over type and payload.
//! Multi-byte fields are little-endian. A decoded frame is at most
//! [`frame::MAX_FRAME`] bytes.
//!
//! | type | direction | payload |
//! |------|-----------|---------|
//! | 0x01 KeepAlive     | host → MCU | `seq: u32` |
//! | 0x02 SetPwm        | host → MCU | `mode: u8` (0 off/+12 V, 1 PWM, 2 −12 V), `duty_permille: u16` |
//! | 0x03 SetContactors | host → MCU | `closed: u8`, `phases: u8` |
//! | 0x04 SetLock       | host → MCU | `locked: u8` |
//! | 0x05 GetStatus     | host → MCU | — |
//! | 0x81 Status        | MCU → host | `cp: u8` (ASCII 'A'..'F'), `pp_amps: u8` (0 = none), `contactors: u8` (bit 0 closed per feedback), `lock: u8` (0 unlocked, 1 locked, 2 fault), `flags: u8` (bit 0 RCD tripped, bit 1 diode fault) |
//! | 0x82 KeepAliveAck  | MCU → host | `seq: u32` |
//! | 0x83 Measurement   | MCU → host | `voltage_dv: [u16; 3]` (0.1 V), `current_ma: [i32; 3]`, `energy_wh: u64` |
//! | 0x84 Token         | MCU → host | `uid: utf-8 bytes` (1..=64) |
//! | 0x85 Nack          | MCU → host | `rejected_type: u8`, `reason: u8` (1 CRC, 2 unknown type, 3 bad payload) |
//! | 0xE0..=0xEF        | either     | reserved for the simulator; a real link rejects them |
//!
//! The MCU sends `Status` whenever an input changes and in answer to
//! `GetStatus`; `Measurement` periodically while the contactors are closed.
//! If no `KeepAlive` arrives for [`KEEPALIVE_TIMEOUT_MS`], the MCU opens the
//! contactors and drives the pilot to +12 V on its own: a dead host never
//! leaves power on the cable.

pub mod frame;
pub mod link;
pub mod message;

pub use link::{LinkAddress, McuBoard, McuStream};
pub use message::{HostMessage, McuMessage, NackReason};

/// The host sends `KeepAlive` at this period…
pub const KEEPALIVE_PERIOD_MS: u64 = 250;
/// …and the MCU fails safe after this much silence.
pub const KEEPALIVE_TIMEOUT_MS: u64 = 1500;
