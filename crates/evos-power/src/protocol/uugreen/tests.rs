//! Frames computed by hand from the layout in the module documentation:
//! identifier = 1 << 25 (protocol) | 1 << 21 (monitor) | module << 14
//! (| production day << 9 | serial low), so module 1 is 0x0220_4000, module
//! 0 (all / a group) 0x0220_0000, module 127 0x023F_C000. Values are
//! big-endian u32 in bytes 4..7: 500 V = 500 000 mV = 0x0007_A120.
//! Frames marked "SE" or "YY" are the literal frames those sources build.

use proptest::prelude::*;

use super::*;

const MODULE_1: u32 = 0x0220_4000;
const ALL: u32 = 0x0220_0000;

fn ext(id: u32, data: &[u8]) -> CanFrame {
    CanFrame::extended(id, data).unwrap()
}

fn commands(target: Target, command: Command) -> Vec<CanFrame> {
    UuGreen.encode_command(target, &command)
}

fn reply(frame: &CanFrame) -> Option<Result<(u8, Reply), DecodeError>> {
    UuGreen.decode_reply(frame)
}

fn command(frame: &CanFrame) -> Option<Result<(Target, Command), DecodeError>> {
    UuGreen.decode_command(frame)
}

fn packet(frame: &CanFrame) -> Packet {
    Packet::from_frame(frame).unwrap().unwrap()
}

fn status(on: bool, faults: &[ModuleFault], raw: u32) -> ModuleStatus {
    ModuleStatus {
        on,
        derating: on && faults.iter().any(|f| f.derates()),
        faults: faults.to_vec(),
        raw,
    }
}

#[test]
fn identity() {
    assert_eq!(UuGreen.name(), "uugreen");
    assert_eq!(UuGreen.bitrate(), 125_000);
    assert_eq!(UuGreen.module_timeout(), Duration::from_secs(5));
    assert_eq!(super::super::by_name("uugreen").unwrap().name(), "uugreen");
}

// ---- controller → module ------------------------------------------------

#[test]
fn set_output_writes_setpoint_then_limit() {
    let frames = commands(
        Target::Module(1),
        Command::SetOutput {
            voltage_v: Some(500.0),
            current_a: Some(20.0),
        },
    );
    assert_eq!(
        frames,
        [
            // set data, register 2 (VoutReference), 500 000 mV
            ext(MODULE_1, &[0x00, 0x02, 0x00, 0x00, 0x00, 0x07, 0xA1, 0x20]),
            // set data, register 3 (IoutLimit), 20 000 mA
            ext(MODULE_1, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x4E, 0x20]),
        ]
    );
}

#[test]
fn setpoints_round_to_the_millivolt_and_clamp() {
    let frames = commands(
        Target::Module(1),
        Command::SetOutput {
            voltage_v: Some(350.0004),
            current_a: Some(-3.0),
        },
    );
    assert_eq!(packet(&frames[0]).value, 350_000);
    assert_eq!(packet(&frames[1]).value, 0);
    let frames = commands(
        Target::Module(1),
        Command::SetOutput {
            voltage_v: Some(f64::NAN),
            current_a: Some(1e12),
        },
    );
    assert_eq!(packet(&frames[0]).value, 0);
    assert_eq!(packet(&frames[1]).value, u32::MAX);
}

#[test]
fn on_off_is_register_4_with_0_for_on() {
    assert_eq!(
        commands(Target::Module(1), Command::SetOn(true)),
        [ext(MODULE_1, &[0x00, 0x04, 0, 0, 0, 0, 0, 0x00])]
    );
    assert_eq!(
        commands(Target::Module(1), Command::SetOn(false)),
        [ext(MODULE_1, &[0x00, 0x04, 0, 0, 0, 0, 0, 0x01])]
    );
}

#[test]
fn read_output_reads_voltage_then_current() {
    assert_eq!(
        commands(Target::Module(1), Command::ReadOutput),
        [
            ext(MODULE_1, &[0x02, 0x00, 0, 0, 0, 0, 0, 0]),
            ext(MODULE_1, &[0x02, 0x01, 0, 0, 0, 0, 0, 0]),
        ]
    );
}

#[test]
fn read_status_reads_register_8() {
    assert_eq!(
        commands(Target::Module(1), Command::ReadStatus),
        [ext(MODULE_1, &[0x02, 0x08, 0, 0, 0, 0, 0, 0])]
    );
}

#[test]
fn read_capabilities_sends_nothing() {
    assert!(commands(Target::Module(1), Command::ReadCapabilities).is_empty());
}

#[test]
fn groups_and_broadcast_use_module_address_0() {
    // Group 3: module 0, group nibble 3.
    assert_eq!(
        commands(Target::Group(3), Command::SetOn(true)),
        [ext(ALL, &[0x30, 0x04, 0, 0, 0, 0, 0, 0])]
    );
    assert_eq!(
        commands(Target::Group(15), Command::ReadStatus),
        [ext(ALL, &[0xF2, 0x08, 0, 0, 0, 0, 0, 0])]
    );
    // Every module: module 0, group 0 (EV's broadcast mode).
    assert_eq!(
        commands(Target::Broadcast, Command::ReadStatus),
        [ext(ALL, &[0x02, 0x08, 0, 0, 0, 0, 0, 0])]
    );
    // Module 127: 127 << 14 = 0x1F_C000.
    assert_eq!(
        commands(Target::Module(127), Command::ReadStatus),
        [ext(0x023F_C000, &[0x02, 0x08, 0, 0, 0, 0, 0, 0])]
    );
}

#[test]
fn unaddressable_targets_send_nothing() {
    for target in [
        Target::Module(0),
        Target::Module(128),
        Target::Module(255),
        Target::Group(0),
        Target::Group(16),
    ] {
        assert!(
            commands(target, Command::SetOn(false)).is_empty(),
            "{target:?}"
        );
    }
}

#[test]
fn module_side_decodes_commands() {
    assert_eq!(
        command(&ext(MODULE_1, &[0x00, 0x04, 0, 0, 0, 0, 0, 0x01])),
        Some(Ok((Target::Module(1), Command::SetOn(false))))
    );
    assert_eq!(
        command(&ext(ALL, &[0x30, 0x04, 0, 0, 0, 0, 0, 0x00])),
        Some(Ok((Target::Group(3), Command::SetOn(true))))
    );
    assert_eq!(
        command(&ext(ALL, &[0x02, 0x08, 0, 0, 0, 0, 0, 0])),
        Some(Ok((Target::Broadcast, Command::ReadStatus)))
    );
    // Either half of a ReadOutput asks for the output.
    for reg in [0x00, 0x01] {
        assert_eq!(
            command(&ext(MODULE_1, &[0x02, reg, 0, 0, 0, 0, 0, 0])),
            Some(Ok((Target::Module(1), Command::ReadOutput)))
        );
    }
    // A voltage setpoint or current limit alone: the one value.
    assert_eq!(
        command(&ext(MODULE_1, &[0x00, 0x02, 0, 0, 0x00, 0x07, 0xA1, 0x20])),
        Some(Ok((
            Target::Module(1),
            Command::SetOutput {
                voltage_v: Some(500.0),
                current_a: None
            }
        )))
    );
    assert_eq!(
        command(&ext(ALL, &[0x30, 0x03, 0, 0, 0x00, 0x00, 0x4E, 0x20])),
        Some(Ok((
            Target::Group(3),
            Command::SetOutput {
                voltage_v: None,
                current_a: Some(20.0)
            }
        )))
    );
}

#[test]
fn a_setpoint_with_one_value_is_one_frame() {
    assert_eq!(
        commands(
            Target::Module(1),
            Command::SetOutput {
                voltage_v: Some(500.0),
                current_a: None,
            },
        ),
        [ext(
            MODULE_1,
            &[0x00, 0x02, 0x00, 0x00, 0x00, 0x07, 0xA1, 0x20]
        )]
    );
    assert_eq!(
        commands(
            Target::Module(1),
            Command::SetOutput {
                voltage_v: None,
                current_a: Some(20.0),
            },
        ),
        [ext(
            MODULE_1,
            &[0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x4E, 0x20]
        )]
    );
    assert!(
        commands(
            Target::Module(1),
            Command::SetOutput {
                voltage_v: None,
                current_a: None,
            },
        )
        .is_empty()
    );
}

#[test]
fn smartelectroni_frames() {
    // SE's UUgreenFrameGenerator: id 0x0220_0000 | module << 14, byte 0
    // 0x10 (group 1, set data) or 0x12 (group 1, read data), the on/off value
    // in byte 7. A module address with a group reaches that module.
    assert_eq!(
        command(&ext(MODULE_1, &[0x10, 0x04, 0, 0, 0, 0, 0, 0x00])),
        Some(Ok((Target::Module(1), Command::SetOn(true))))
    );
    assert_eq!(
        command(&ext(MODULE_1, &[0x10, 0x04, 0, 0, 0, 0, 0, 0x01])),
        Some(Ok((Target::Module(1), Command::SetOn(false))))
    );
    assert_eq!(
        command(&ext(MODULE_1, &[0x12, 0x08, 0, 0, 0, 0, 0, 0])),
        Some(Ok((Target::Module(1), Command::ReadStatus)))
    );
    // SE's voltage set, 350 V (its example's TEST_VOLTAGE).
    let frame = ext(MODULE_1, &[0x10, 0x02, 0, 0, 0x00, 0x05, 0x57, 0x30]);
    let p = packet(&frame);
    assert_eq!((p.group, p.kind, p.register), (1, MessageType::SetData, 2));
    assert_eq!(from_milli(p.value), 350.0);
    assert_eq!(
        command(&frame),
        Some(Ok((
            Target::Module(1),
            Command::SetOutput {
                voltage_v: Some(350.0),
                current_a: None
            }
        )))
    );
    // SE reads voltage from register 98 ("Vout_fast"), which this side
    // does not use.
    assert_eq!(
        command(&ext(MODULE_1, &[0x12, 0x62, 0, 0, 0, 0, 0, 0])),
        None
    );
}

#[test]
fn yyln_test_program_frames() {
    // YY's endianness test: module 1, group 0, VoutReference 5000 mV; then
    // module 2, group 1, IoutLimit 2000 mA.
    let p = Packet::new(1, 0, MessageType::SetData, register::VOUT_REFERENCE, 5000);
    assert_eq!(
        p.to_frame(),
        ext(
            0x0220_4000,
            &[0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x13, 0x88]
        )
    );
    let p = Packet::new(2, 1, MessageType::SetData, register::IOUT_LIMIT, 2000);
    assert_eq!(
        p.to_frame(),
        ext(
            0x0220_8000,
            &[0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x07, 0xD0]
        )
    );
}

// ---- module → controller ------------------------------------------------

#[test]
fn status_reply_bytes() {
    // Off (bit 25) and ambient over-temperature (bit 12): 0x0200_1000.
    let off_hot = status(false, &[ModuleFault::OverTemperature], 0x0200_1000);
    let frames = UuGreen.encode_reply(1, &Reply::Status(off_hot.clone()));
    assert_eq!(
        frames,
        [ext(MODULE_1, &[0x03, 0x08, 0, 0, 0x02, 0x00, 0x10, 0x00])]
    );
    assert_eq!(reply(&frames[0]), Some(Ok((1, Reply::Status(off_hot)))));
}

#[test]
fn status_reply_from_a_module_with_its_serial_number() {
    // Module 42, production day 17, serial low 0x123:
    // 0x0220_0000 | 42 << 14 | 17 << 9 | 0x123 = 0x022A_A323. On, hot.
    let frame = ext(0x022A_A323, &[0x03, 0x08, 0, 0, 0x00, 0x00, 0x10, 0x00]);
    let expected = ModuleStatus {
        on: true,
        derating: true,
        faults: vec![ModuleFault::OverTemperature],
        raw: 0x1000,
    };
    assert_eq!(reply(&frame), Some(Ok((42, Reply::Status(expected)))));
    // Monitor 0 in a reply is accepted too (EV): 0x020A_A323.
    let frame = ext(0x020A_A323, &[0x03, 0x08, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(reply(&frame), Some(Ok((42, Reply::Status(_))))));
}

#[test]
fn output_reply_is_two_register_replies() {
    let frames = UuGreen.encode_reply(
        1,
        &Reply::Output {
            voltage_v: Some(750.5),
            current_a: Some(33.25),
        },
    );
    assert_eq!(
        frames,
        [
            // 750 500 mV = 0x000B_73A4
            ext(MODULE_1, &[0x03, 0x00, 0, 0, 0x00, 0x0B, 0x73, 0xA4]),
            // 33 250 mA = 0x0000_81E2
            ext(MODULE_1, &[0x03, 0x01, 0, 0, 0x00, 0x00, 0x81, 0xE2]),
        ]
    );
    assert_eq!(from_milli(packet(&frames[0]).value), 750.5);
    assert_eq!(from_milli(packet(&frames[1]).value), 33.25);
    // Each frame is the one value it carries.
    assert_eq!(
        reply(&frames[0]),
        Some(Ok((
            1,
            Reply::Output {
                voltage_v: Some(750.5),
                current_a: None
            }
        )))
    );
    assert_eq!(
        reply(&frames[1]),
        Some(Ok((
            1,
            Reply::Output {
                voltage_v: None,
                current_a: Some(33.25)
            }
        )))
    );
    // And a lone value is one frame.
    assert_eq!(
        UuGreen.encode_reply(
            1,
            &Reply::Output {
                voltage_v: None,
                current_a: Some(33.25)
            }
        ),
        [frames[1]]
    );
}

#[test]
fn set_responses_are_acks_of_their_register() {
    let cases = [
        (
            [0x01, 0x02, 0, 0, 0x00, 0x07, 0xA1, 0x20],
            Command::SetOutput {
                voltage_v: Some(500.0),
                current_a: None,
            },
        ),
        (
            [0x01, 0x03, 0, 0, 0x00, 0x00, 0x4E, 0x20],
            Command::SetOutput {
                voltage_v: None,
                current_a: Some(20.0),
            },
        ),
        ([0x01, 0x04, 0, 0, 0, 0, 0, 0x00], Command::SetOn(true)),
        ([0x01, 0x04, 0, 0, 0, 0, 0, 0x01], Command::SetOn(false)),
    ];
    for (data, setting) in cases {
        let frame = ext(MODULE_1, &data);
        assert_eq!(reply(&frame), Some(Ok((1, Reply::Ack(setting)))));
        // The module side's echo of the setting is that frame.
        assert_eq!(UuGreen.encode_reply(1, &Reply::Ack(setting)), [frame]);
    }
    // The echo of a whole setpoint: both registers, setpoint first.
    assert_eq!(
        UuGreen.encode_reply(
            1,
            &Reply::Ack(Command::SetOutput {
                voltage_v: Some(500.0),
                current_a: Some(20.0),
            })
        ),
        [ext(MODULE_1, &cases[0].0), ext(MODULE_1, &cases[1].0)]
    );
    // Set responses of registers this side does not set (95, the range).
    assert_eq!(
        reply(&ext(MODULE_1, &[0x01, 0x5F, 0, 0, 0, 0, 0, 0x01])),
        None
    );
}

#[test]
fn module_side_sends_nothing_it_cannot_say() {
    for read in [
        Command::ReadOutput,
        Command::ReadStatus,
        Command::ReadCapabilities,
    ] {
        assert!(UuGreen.encode_reply(1, &Reply::Ack(read)).is_empty());
    }
    let none = Reply::Output {
        voltage_v: None,
        current_a: None,
    };
    assert!(UuGreen.encode_reply(1, &none).is_empty());
    let caps = Reply::Capabilities {
        min_voltage_v: 150.0,
        max_voltage_v: 1000.0,
        max_current_a: 100.0,
        max_power_w: 30_000.0,
    };
    assert!(UuGreen.encode_reply(1, &caps).is_empty());
    let s = Reply::Status(ModuleStatus::default());
    assert!(UuGreen.encode_reply(0, &s).is_empty());
    assert!(UuGreen.encode_reply(128, &s).is_empty());
}

#[test]
fn status_bits_map_to_faults() {
    use ModuleFault::*;
    let cases: &[(u32, &[ModuleFault])] = &[
        (1 << 0, &[InputOverVoltage]),
        (1 << 1, &[InputUnderVoltage]),
        (1 << 2, &[InputOverVoltage]),
        (1 << 3 | 1 << 4 | 1 << 5, &[InputFault]),
        (1 << 6 | 1 << 7, &[OutputOverVoltage]),
        (1 << 8, &[OutputUnderVoltage]),
        (1 << 9, &[FanFault]),
        (1 << 11, &[FanFault]),
        (1 << 12, &[OverTemperature]),
        (1 << 13, &[Internal]),
        (1 << 14 | 1 << 16 | 1 << 17, &[OverTemperature]),
        (1 << 15, &[Internal]),
        (1 << 18, &[Internal]),
        (1 << 19 | 1 << 20, &[InputFault]),
        (1 << 21, &[Internal]),
        (1 << 28 | 1 << 29 | 1 << 31, &[Internal]),
        // Status, not faults: PFC off, loop state, undocumented bits.
        (
            1 << 24 | 1 << 26 | 1 << 27 | 1 << 10 | 1 << 22 | 1 << 23 | 1 << 30,
            &[],
        ),
        (
            1 << 0 | 1 << 9 | 1 << 12 | 1 << 21,
            &[OverTemperature, InputOverVoltage, FanFault, Internal],
        ),
    ];
    for &(word, faults) in cases {
        let s = status_from_word(word);
        let mut expected = faults.to_vec();
        expected.sort();
        assert_eq!(s.faults, expected, "{word:#010x}");
        assert!(s.on, "{word:#010x}");
        assert_eq!(s.raw, word);
    }
    assert!(!status_from_word(STATUS_MODULE_OFF).on);
    assert!(status_from_word(1 << 12).derating);
    assert!(status_from_word(1 << 9).derating);
    assert!(!status_from_word(1 << 12 | STATUS_MODULE_OFF).derating);
    assert!(!status_from_word(1 << 20).derating);
    assert_eq!(
        status_bit_names(1 << 25 | 1 << 15 | 1 << 10),
        ["output relay failure", "module off"]
    );
}

#[test]
fn status_built_from_fields() {
    use ModuleFault::*;
    // The simulator's view: off, PFC failed, hot, nothing in `raw`.
    let s = status(false, &[InputFault, OverTemperature], 0);
    assert_eq!(word_from_status(&s), 1 << 25 | 1 << 20 | 1 << 12);
    // Fault bits `raw` shows for a listed fault stay; others go.
    let s = status(true, &[InputFault], 1 << 3 | 1 << 12 | 1 << 27);
    assert_eq!(word_from_status(&s), 1 << 3 | 1 << 27);
    // Faults the word has no bit for are left out.
    let s = status(true, &[OutputShort, OverCurrent, CommunicationLost], 0);
    assert_eq!(word_from_status(&s), 0);
}

// ---- not ours, and malformed --------------------------------------------

#[test]
fn other_traffic_is_none() {
    let data = [0x03, 0x08, 0, 0, 0, 0, 0, 0];
    let not_ours = [
        // An 11-bit identifier.
        CanFrame::standard(0x220, &data).unwrap(),
        // Protocol 2 in bits 28..25.
        ext(0x0420_4000, &data),
        // Protocol 0.
        ext(0x0020_4000, &data),
        // Monitor 2.
        ext(0x0240_4000, &data),
        // InfyPower-style identifier (bits 28..25 also 1, but "monitor" 4).
        ext(0x0281_F001, &data),
        // Infy broadcast to group 1 (monitor 5).
        ext(0x02BF_F0F0, &[0x10, 0x04, 0, 0, 0, 0, 0, 0]),
        // The controller's own frames.
        ext(MODULE_1, &[0x02, 0x08, 0, 0, 0, 0, 0, 0]),
        ext(MODULE_1, &[0x00, 0x04, 0, 0, 0, 0, 0, 1]),
        // Read responses of registers this side does not use.
        ext(MODULE_1, &[0x03, 0x1E, 0, 0, 0, 0, 0x61, 0xA8]),
        ext(MODULE_1, &[0x03, 0x68, 0, 0, 0, 0x01, 0x86, 0xA0]),
        // A serial-number response and an "all set data" response.
        ext(MODULE_1, &[0x04, 0x05, 0x01, 0x02, 0x12, 0x34, 0x56, 0x78]),
        ext(MODULE_1, &[0x0C, 0x00, 0x03, 0xE8, 0, 0, 0x1F, 0x40]),
    ];
    for frame in &not_ours {
        assert_eq!(reply(frame), None, "{frame:?}");
    }
    let not_commands = [
        CanFrame::standard(0x220, &[0x02, 0x08, 0, 0, 0, 0, 0, 0]).unwrap(),
        ext(0x0420_4000, &[0x02, 0x08, 0, 0, 0, 0, 0, 0]),
        ext(0x0240_4000, &[0x02, 0x08, 0, 0, 0, 0, 0, 0]),
        // Monitor 0 or a production day / serial: a module's frame.
        ext(0x0200_4000, &[0x02, 0x08, 0, 0, 0, 0, 0, 0]),
        ext(0x0220_4201, &[0x02, 0x08, 0, 0, 0, 0, 0, 0]),
        ext(0x0281_F001, &[0x00, 0x04, 0, 0, 0, 0, 0, 0]),
        // Replies from modules.
        ext(MODULE_1, &[0x03, 0x08, 0, 0, 0, 0, 0, 0]),
        ext(MODULE_1, &[0x01, 0x04, 0, 0, 0, 0, 0, 0]),
        // Sets and reads this side does not use.
        ext(MODULE_1, &[0x00, 0x5F, 0, 0, 0, 0, 0, 0x01]),
        ext(MODULE_1, &[0x02, 0x68, 0, 0, 0, 0, 0, 0]),
        ext(MODULE_1, &[0x0B, 0x41, 0x03, 0xE8, 0, 0, 0x1F, 0x40]),
    ];
    for frame in &not_commands {
        assert_eq!(command(frame), None, "{frame:?}");
    }
}

#[test]
fn malformed_frames_are_errors() {
    let is_err = |r: Option<Result<(u8, Reply), DecodeError>>| matches!(r, Some(Err(_)));
    let is_cmd_err = |r: Option<Result<(Target, Command), DecodeError>>| matches!(r, Some(Err(_)));
    let bad = [
        // Not 8 data bytes.
        ext(MODULE_1, &[0x03, 0x08, 0, 0, 0, 0, 0]),
        ext(MODULE_1, &[]),
        // Message types no source defines.
        ext(MODULE_1, &[0x07, 0x08, 0, 0, 0, 0, 0, 0]),
        ext(MODULE_1, &[0x0F, 0x08, 0, 0, 0, 0, 0, 0]),
        // A register over 7 bits.
        ext(MODULE_1, &[0x03, 0x88, 0, 0, 0, 0, 0, 0]),
    ];
    for frame in &bad {
        assert!(is_err(reply(frame)), "{frame:?}");
        assert!(is_cmd_err(command(frame)), "{frame:?}");
        assert!(Packet::from_frame(frame).unwrap().is_err());
    }
    // On/off values other than 0 and 1.
    assert!(is_cmd_err(command(&ext(
        MODULE_1,
        &[0x00, 0x04, 0, 0, 0, 0, 0, 0x02]
    ))));
    assert!(is_err(reply(&ext(
        MODULE_1,
        &[0x01, 0x04, 0, 0, 0, 0, 0, 0x02]
    ))));
    // A reply from module address 0.
    assert!(is_err(reply(&ext(ALL, &[0x03, 0x08, 0, 0, 0, 0, 0, 0]))));
    let err = reply(&ext(MODULE_1, &[0x03])).unwrap().unwrap_err();
    assert!(err.to_string().contains("0x02204000"), "{err}");
}

// ---- properties ---------------------------------------------------------

fn any_frame() -> impl Strategy<Value = CanFrame> {
    (
        any::<bool>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..=8),
    )
        .prop_map(|(extended, id, data)| {
            let id = if extended {
                id & 0x1FFF_FFFF
            } else {
                id & 0x7FF
            };
            CanFrame::new(id, extended, &data).unwrap()
        })
}

/// Frames with protocol 1, mostly with monitor 0 or 1 and, half of those,
/// identifier bits 13..0 zero, so decoding goes past the identifier.
fn our_space_frame() -> impl Strategy<Value = CanFrame> {
    let id = prop_oneof![
        0u32..(1 << 25),
        (0u32..(1 << 22)).prop_map(|low| 1 << 21 | (low & !0x3FFF)),
        0u32..(1 << 22),
    ];
    (id, proptest::collection::vec(any::<u8>(), 0..=8))
        .prop_map(|(low, data)| ext(1 << 25 | low, &data))
}

fn any_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        (1..=MAX_MODULE).prop_map(Target::Module),
        (1..=MAX_GROUP).prop_map(Target::Group),
        Just(Target::Broadcast),
    ]
}

fn any_kind() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::SetData),
        Just(MessageType::SetDataResponse),
        Just(MessageType::ReadData),
        Just(MessageType::ReadDataResponse),
        Just(MessageType::ReadSerialNumberResponse),
        prop::sample::select(vec![5u8, 6, 11, 12]).prop_map(MessageType::AllSetData),
    ]
}

fn any_packet() -> impl Strategy<Value = Packet> {
    (
        (0u8..=0x0F, 0u8..=0x7F, 0u8..=0x1F, 0u16..=0x1FF),
        (
            0u8..=0x0F,
            any_kind(),
            0u8..=0x7F,
            any::<u16>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (monitor, module, production_day, serial_low),
                (group, kind, register, extra, value),
            )| {
                Packet {
                    monitor,
                    module,
                    production_day,
                    serial_low,
                    group,
                    kind,
                    register,
                    extra,
                    value,
                }
            },
        )
}

/// Faults the status word can carry, any subset.
fn carryable_faults() -> impl Strategy<Value = Vec<ModuleFault>> {
    use ModuleFault::*;
    proptest::sample::subsequence(
        vec![
            OverTemperature,
            InputOverVoltage,
            InputUnderVoltage,
            InputFault,
            OutputOverVoltage,
            OutputUnderVoltage,
            FanFault,
            Internal,
        ],
        0..=8,
    )
}

proptest! {
    #[test]
    fn garbage_never_panics(frame in any_frame()) {
        let _ = reply(&frame);
        let _ = command(&frame);
        let _ = Packet::from_frame(&frame);
    }

    #[test]
    fn garbage_in_our_id_space_never_panics(frame in our_space_frame()) {
        let r = reply(&frame);
        let c = command(&frame);
        let monitor = (frame.id() >> 21) & 0x0F;
        // Anything but 8 bytes is malformed, once the identifier is ours.
        if frame.data().len() != 8 {
            prop_assert_eq!(matches!(r, Some(Err(_))), monitor <= 1);
            prop_assert_eq!(
                matches!(c, Some(Err(_))),
                monitor == 1 && frame.id() & 0x3FFF == 0
            );
        }
        if monitor > 1 {
            prop_assert!(r.is_none());
            prop_assert!(c.is_none());
        }
    }

    #[test]
    fn packets_round_trip(p in any_packet()) {
        let frame = p.to_frame();
        prop_assert!(frame.is_extended());
        prop_assert_eq!(frame.data().len(), 8);
        prop_assert_eq!(Packet::from_frame(&frame), Some(Ok(p)));
    }

    #[test]
    fn commands_round_trip(target in any_target(), on in any::<bool>(), which in 0..3usize) {
        let cmd = [Command::SetOn(on), Command::ReadOutput, Command::ReadStatus][which];
        let frames = commands(target, cmd);
        prop_assert!(!frames.is_empty());
        for frame in &frames {
            prop_assert_eq!(command(frame), Some(Ok((target, cmd))));
            // The controller's frames are never replies.
            prop_assert_eq!(reply(frame), None);
        }
    }

    #[test]
    fn set_output_round_trips_per_register(
        target in any_target(),
        mv in 0u32..=1_500_000,
        ma in 0u32..=300_000,
    ) {
        let (voltage_v, current_a) = (from_milli(mv), from_milli(ma));
        let set = Command::SetOutput { voltage_v: Some(voltage_v), current_a: Some(current_a) };
        let frames = commands(target, set);
        let packets: Vec<Packet> = frames.iter().map(packet).collect();
        prop_assert_eq!(packets.len(), 2);
        prop_assert_eq!(
            (packets[0].kind, packets[0].register),
            (MessageType::SetData, register::VOUT_REFERENCE)
        );
        prop_assert_eq!(
            (packets[1].kind, packets[1].register),
            (MessageType::SetData, register::IOUT_LIMIT)
        );
        prop_assert_eq!(from_milli(packets[0].value), voltage_v);
        prop_assert_eq!(from_milli(packets[1].value), current_a);
        for p in &packets {
            prop_assert_eq!(target_of(p), target);
        }
        // Through the trait: each frame is its half of the setpoint…
        let halves = [
            Command::SetOutput { voltage_v: Some(voltage_v), current_a: None },
            Command::SetOutput { voltage_v: None, current_a: Some(current_a) },
        ];
        for (frame, half) in frames.iter().zip(halves) {
            prop_assert_eq!(command(frame), Some(Ok((target, half))));
            // …which the module echoes (register and value), and the
            // controller reads as `Ack` of that half.
            let echo = UuGreen.encode_reply(9, &Reply::Ack(half));
            prop_assert_eq!(echo.len(), 1);
            let p = packet(&echo[0]);
            prop_assert_eq!(
                (p.module, p.kind, p.register, p.value),
                (9, MessageType::SetDataResponse, packet(frame).register, packet(frame).value)
            );
            prop_assert_eq!(reply(&echo[0]), Some(Ok((9, Reply::Ack(half)))));
        }
        // The echo of the whole setpoint is both halves' echoes.
        let both: Vec<CanFrame> = halves
            .iter()
            .flat_map(|h| UuGreen.encode_reply(9, &Reply::Ack(*h)))
            .collect();
        prop_assert_eq!(UuGreen.encode_reply(9, &Reply::Ack(set)), both);
    }

    #[test]
    fn output_replies_round_trip_per_register(
        address in 1..=MAX_MODULE,
        mv in 0u32..=1_500_000,
        ma in 0u32..=300_000,
    ) {
        let (voltage_v, current_a) = (from_milli(mv), from_milli(ma));
        let frames = UuGreen.encode_reply(
            address,
            &Reply::Output { voltage_v: Some(voltage_v), current_a: Some(current_a) },
        );
        let packets: Vec<Packet> = frames.iter().map(packet).collect();
        prop_assert_eq!(packets.len(), 2);
        prop_assert_eq!(
            (packets[0].module, packets[0].kind, packets[0].register),
            (address, MessageType::ReadDataResponse, register::VOUT)
        );
        prop_assert_eq!(
            (packets[1].module, packets[1].kind, packets[1].register),
            (address, MessageType::ReadDataResponse, register::IOUT)
        );
        prop_assert_eq!(from_milli(packets[0].value), voltage_v);
        prop_assert_eq!(from_milli(packets[1].value), current_a);
        // Through the trait: one value per frame, and each lone value is
        // that frame again.
        let halves = [
            Reply::Output { voltage_v: Some(voltage_v), current_a: None },
            Reply::Output { voltage_v: None, current_a: Some(current_a) },
        ];
        for (frame, half) in frames.iter().zip(halves) {
            prop_assert_eq!(reply(frame), Some(Ok((address, half.clone()))));
            prop_assert_eq!(UuGreen.encode_reply(address, &half), [*frame]);
            prop_assert_eq!(command(frame), None);
        }
    }

    /// Any setting: the module reads what the controller sent, frame by
    /// frame, and its echoes read back as `Ack` of each frame's part.
    #[test]
    fn settings_round_trip_through_the_trait(
        target in any_target(),
        address in 1..=MAX_MODULE,
        mv in proptest::option::of(0u32..=1_500_000),
        ma in proptest::option::of(0u32..=300_000),
        on in any::<bool>(),
        which in 0..2usize,
    ) {
        let setting = [
            Command::SetOutput { voltage_v: mv.map(from_milli), current_a: ma.map(from_milli) },
            Command::SetOn(on),
        ][which];
        let frames = commands(target, setting);
        let mut read = Vec::new();
        let mut echoed = Vec::new();
        for frame in &frames {
            let Some(Ok((got_target, part))) = command(frame) else {
                panic!("{frame:?}");
            };
            prop_assert_eq!(got_target, target);
            for echo in UuGreen.encode_reply(address, &Reply::Ack(part)) {
                let Some(Ok((from, Reply::Ack(back)))) = reply(&echo) else {
                    panic!("{echo:?}");
                };
                prop_assert_eq!(from, address);
                echoed.push(back);
            }
            read.push(part);
        }
        // Merged, the parts are the setting.
        let merged = read.iter().copied().reduce(|a, b| match (a, b) {
            (
                Command::SetOutput { voltage_v: v, current_a: i },
                Command::SetOutput { voltage_v: v2, current_a: i2 },
            ) => Command::SetOutput { voltage_v: v.or(v2), current_a: i.or(i2) },
            (a, _) => a,
        });
        match setting {
            Command::SetOutput { voltage_v: None, current_a: None } => {
                prop_assert!(frames.is_empty());
            }
            _ => prop_assert_eq!(merged, Some(setting)),
        }
        prop_assert_eq!(echoed, read);
    }

    #[test]
    fn status_replies_round_trip(address in 1..=MAX_MODULE, word in any::<u32>()) {
        let s = status_from_word(word);
        prop_assert_eq!(word_from_status(&s), word);
        let frames = UuGreen.encode_reply(address, &Reply::Status(s.clone()));
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(reply(&frames[0]), Some(Ok((address, Reply::Status(s)))));
        // A module's reply is never a command.
        prop_assert_eq!(command(&frames[0]), None);
    }

    #[test]
    fn status_fields_survive(
        on in any::<bool>(),
        faults in carryable_faults(),
        raw in any::<u32>(),
    ) {
        let sent = status(on, &faults, raw);
        let got = status_from_word(word_from_status(&sent));
        let mut expected = faults.clone();
        expected.sort();
        prop_assert_eq!(got.on, on);
        prop_assert_eq!(&got.faults, &expected);
        prop_assert_eq!(got.derating, sent.derating);
    }
}

#[test]
fn infypower_frames_are_not_uugreen_frames() {
    // Infy identifiers put an error code in bits 28..26 and the device
    // number 0x0A/0x0B in 25..22, so bits 24..21 ("monitor" here) are 4..7
    // whenever bits 28..25 read 1.
    use super::super::infypower::InfyPower;
    let infy_commands = [
        Command::SetOutput {
            voltage_v: Some(500.0),
            current_a: Some(20.0),
        },
        Command::SetOn(true),
        Command::SetOn(false),
        Command::ReadOutput,
        Command::ReadStatus,
        Command::ReadCapabilities,
    ];
    let targets = [
        Target::Module(0),
        Target::Module(1),
        Target::Module(0x3E),
        Target::Group(0),
        Target::Group(3),
        Target::Broadcast,
    ];
    for target in targets {
        for cmd in &infy_commands {
            for frame in InfyPower.encode_command(target, cmd) {
                assert_eq!(reply(&frame), None, "{frame:?}");
                assert_eq!(command(&frame), None, "{frame:?}");
            }
        }
    }
    let infy_replies = [
        Reply::Output {
            voltage_v: Some(400.0),
            current_a: Some(10.0),
        },
        Reply::Status(ModuleStatus::default()),
        Reply::Ack(Command::SetOn(true)),
        Reply::Ack(Command::SetOn(false)),
        Reply::Ack(Command::SetOutput {
            voltage_v: Some(500.0),
            current_a: Some(20.0),
        }),
        Reply::Capabilities {
            min_voltage_v: 150.0,
            max_voltage_v: 1000.0,
            max_current_a: 100.0,
            max_power_w: 30_000.0,
        },
    ];
    for address in [0, 1, 0x3E] {
        for r in &infy_replies {
            for frame in InfyPower.encode_reply(address, r) {
                assert_eq!(reply(&frame), None, "{frame:?}");
                assert_eq!(command(&frame), None, "{frame:?}");
            }
        }
    }
    // The error-code answers too (0x02 command invalid, 0x03 data invalid,
    // 0x07 in start processing), on a typical answer id 0x0283F000.
    for error in [0x02u32, 0x03, 0x07] {
        let frame = ext(0x0283_F000 | error << 26, &[0; 8]);
        assert_eq!(reply(&frame), None, "{frame:?}");
        assert_eq!(command(&frame), None, "{frame:?}");
    }
}
