//! The OCPP-J frame parser (OCPP-J 1.6 §4) on arbitrary text: it returns a
//! frame or a FrameError, never panics; every frame it accepts survives
//! `to_text` → `parse` unchanged, and every error's reply is itself a frame.
//!
//! Input: any bytes, read as lossy UTF-8 (a WebSocket text message is
//! always valid UTF-8).

#![no_main]

use evos_ocpp::rpc::{Frame, MAX_ID_LEN, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    match parse(&text) {
        Ok(frame) => assert_eq!(parse(&frame.to_text()), Ok(frame)),
        Err(e) => {
            let reply = Frame::CallError(e.reply());
            // A too-long id is echoed back as read, so only short ones parse again.
            if reply.id().chars().count() <= MAX_ID_LEN {
                assert_eq!(parse(&reply.to_text()), Ok(reply));
            }
        }
    }
});
