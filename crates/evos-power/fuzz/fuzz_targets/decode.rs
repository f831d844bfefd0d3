//! Every protocol's decoders, both sides, on arbitrary CAN frames: they
//! return `None` or an error for what they do not understand, never panic.
//!
//! Input: byte 0 bit 0 = 29-bit id, bytes 1..5 = id (little-endian, masked
//! to 11/29 bits), then up to 8 data bytes.

#![no_main]

use evos_hal::can::{CanFrame, MAX_EXTENDED_ID, MAX_STANDARD_ID};
use evos_power::protocol::{NAMES, by_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((id, data)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let extended = flags & 1 != 0;
    let mask = if extended {
        MAX_EXTENDED_ID
    } else {
        MAX_STANDARD_ID
    };
    let id = u32::from_le_bytes(*id) & mask;
    let data = &data[..data.len().min(8)];
    let Ok(frame) = CanFrame::new(id, extended, data) else {
        return;
    };
    for name in NAMES {
        let protocol = by_name(name).expect("every name in NAMES has a protocol");
        let _ = protocol.decode_reply(&frame);
        let _ = protocol.decode_command(&frame);
    }
});
