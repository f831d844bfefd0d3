//! Frames are written out byte for byte. "Doc example" marks a frame the
//! V1.13 document gives (as quoted by the sources named in the module doc);
//! the others are computed by hand from the identifier layout
//! `error<<26 | device<<22 | command<<16 | destination<<8 | source`.

use proptest::prelude::*;

use super::*;
use crate::protocol::ModuleProtocol;

fn ext(id: u32, data: &[u8]) -> CanFrame {
    CanFrame::extended(id, data).unwrap()
}

fn one(frames: Vec<CanFrame>) -> CanFrame {
    assert_eq!(frames.len(), 1, "{frames:?}");
    frames[0]
}

fn command(target: Target, command: Command) -> CanFrame {
    one(InfyPower.encode_command(target, &command))
}

fn reply(address: u8, reply: Reply) -> CanFrame {
    one(InfyPower.encode_reply(address, &reply))
}

#[test]
fn bus_parameters() {
    assert_eq!(InfyPower.name(), "infypower");
    assert_eq!(InfyPower.bitrate(), 125_000);
    // "did not receive the message for 10 seconds … will off".
    assert_eq!(
        InfyPower.module_timeout(),
        std::time::Duration::from_secs(10)
    );
}

// ---- controller → module ----------------------------------------------

#[test]
fn read_commands_are_eight_zero_bytes() {
    // 0x0A<<22 = 0x0280_0000; command 0x03/0x04/0x0A; module 0x00; 0xF0.
    // These three ids appear verbatim in several controllers ([C]).
    assert_eq!(
        command(Target::Module(0), Command::ReadOutput),
        ext(0x0283_00F0, &[0; 8])
    );
    assert_eq!(
        command(Target::Module(0), Command::ReadStatus),
        ext(0x0284_00F0, &[0; 8])
    );
    assert_eq!(
        command(Target::Module(0), Command::ReadCapabilities),
        ext(0x028A_00F0, &[0; 8])
    );
    // Module 0x05: destination byte 0x05.
    assert_eq!(
        command(Target::Module(5), Command::ReadStatus),
        ext(0x0284_05F0, &[0; 8])
    );
    // Group 1: device 0x0B (0x0B<<22 = 0x02C0_0000), destination = group.
    assert_eq!(
        command(Target::Group(1), Command::ReadStatus),
        ext(0x02C4_01F0, &[0; 8])
    );
}

#[test]
fn on_off_frames() {
    // Byte 0: 0x00 on, 0x01 off; 0x1A<<16 = 0x001A_0000.
    assert_eq!(
        command(Target::Module(0), Command::SetOn(true)),
        ext(0x029A_00F0, &[0x00, 0, 0, 0, 0, 0, 0, 0])
    );
    // All modules off: the id and payload several controllers send ([C], [K]).
    assert_eq!(
        command(Target::Broadcast, Command::SetOn(false)),
        ext(0x029A_3FF0, &[0x01, 0, 0, 0, 0, 0, 0, 0])
    );
    // Group 0 on/off is 0x02DA00F0 in [C].
    assert_eq!(
        command(Target::Group(0), Command::SetOn(false)),
        ext(0x02DA_00F0, &[0x01, 0, 0, 0, 0, 0, 0, 0])
    );
}

#[test]
fn setpoint_frames() {
    // 300 V = 300000 mV = 0x0004_93E0, 10 A = 10000 mA = 0x0000_2710: the
    // values [K] sends with 0x029c00f0.
    assert_eq!(
        command(
            Target::Module(0),
            Command::SetOutput {
                voltage_v: Some(300.0),
                current_a: Some(10.0)
            }
        ),
        ext(
            0x029C_00F0,
            &[0x00, 0x04, 0x93, 0xE0, 0x00, 0x00, 0x27, 0x10]
        )
    );
    // 750.5 V = 750500 mV = 0x000B_73A4, 33.333 A = 33333 mA = 0x0000_8235,
    // to group 2 (device 0x0B).
    assert_eq!(
        command(
            Target::Group(2),
            Command::SetOutput {
                voltage_v: Some(750.5),
                current_a: Some(33.333)
            }
        ),
        ext(
            0x02DC_02F0,
            &[0x00, 0x0B, 0x73, 0xA4, 0x00, 0x00, 0x82, 0x35]
        )
    );
    // Broadcast: 0x3F; below the resolution rounds to the nearest mV / mA.
    assert_eq!(
        command(
            Target::Broadcast,
            Command::SetOutput {
                voltage_v: Some(0.0004),
                current_a: Some(0.0006)
            }
        ),
        ext(0x029C_3FF0, &[0, 0, 0, 0, 0, 0, 0, 1])
    );
    // Nonsense setpoints clamp, never panic: negative and NaN give 0.
    assert_eq!(
        command(
            Target::Module(1),
            Command::SetOutput {
                voltage_v: Some(-5.0),
                current_a: Some(f64::NAN)
            }
        ),
        ext(0x029C_01F0, &[0; 8])
    );
}

#[test]
fn impossible_targets_send_nothing() {
    for target in [
        Target::Module(0x3F),
        Target::Module(0xF0),
        Target::Group(0x40),
    ] {
        assert!(
            InfyPower
                .encode_command(target, &Command::ReadStatus)
                .is_empty()
        );
    }
}

#[test]
fn module_side_reads_the_commands() {
    let decode = |id, data: &[u8]| InfyPower.decode_command(&ext(id, data));
    assert_eq!(
        decode(0x0283_00F0, &[0; 8]),
        Some(Ok((Target::Module(0), Command::ReadOutput)))
    );
    assert_eq!(
        decode(0x029A_3FF0, &[1, 0, 0, 0, 0, 0, 0, 0]),
        Some(Ok((Target::Broadcast, Command::SetOn(false))))
    );
    assert_eq!(
        decode(
            0x029C_00F0,
            &[0x00, 0x04, 0x93, 0xE0, 0x00, 0x00, 0x27, 0x10]
        ),
        Some(Ok((
            Target::Module(0),
            Command::SetOutput {
                voltage_v: Some(300.0),
                current_a: Some(10.0)
            }
        )))
    );
    // Another controller address (0xF0..=0xF8) commands modules as well.
    assert_eq!(
        decode(0x0284_07F3, &[0; 8]),
        Some(Ok((Target::Module(7), Command::ReadStatus)))
    );
    // Device 0x0B to 0x3F: every group.
    assert_eq!(
        decode(0x02DA_3FF0, &[0; 8]),
        Some(Ok((Target::Broadcast, Command::SetOn(true))))
    );
    // On/off with a byte the protocol does not define.
    assert!(matches!(
        decode(0x029A_00F0, &[2, 0, 0, 0, 0, 0, 0, 0]),
        Some(Err(DecodeError::Malformed { .. }))
    ));
}

// ---- module → controller ----------------------------------------------

#[test]
fn output_answer() {
    // Doc example ([S]): module 0 answers 500 V (0x43FA0000), 3.5 A
    // (0x40600000). Answer id: 0x03 to 0xF0 from 0x00.
    let doc = ext(
        0x0283_F000,
        &[0x43, 0xFA, 0x00, 0x00, 0x40, 0x60, 0x00, 0x00],
    );
    let output = Reply::Output {
        voltage_v: Some(500.0),
        current_a: Some(3.5),
    };
    assert_eq!(InfyPower.decode_reply(&doc), Some(Ok((0, output.clone()))));
    assert_eq!(reply(0, output), doc);
    // 402.0 V is 0x43C90000, 40.0 A 0x42200000 (the float examples of [B]).
    assert_eq!(
        reply(
            0x3E,
            Reply::Output {
                voltage_v: Some(402.0),
                current_a: Some(40.0)
            }
        ),
        ext(
            0x0283_F03E,
            &[0x43, 0xC9, 0x00, 0x00, 0x42, 0x20, 0x00, 0x00]
        )
    );
    // NaN (0x7FC00000) is not a measurement.
    assert!(matches!(
        InfyPower.decode_reply(&ext(0x0283_F000, &[0x7F, 0xC0, 0, 0, 0, 0, 0, 0])),
        Some(Err(DecodeError::Malformed { .. }))
    ));
}

#[test]
fn status_answer_doc_example() {
    // Doc example ([S], [C]): group 2 (byte 2), 27 °C (0x1B, byte 4), state
    // 2 = 0x00, state 1 = 0x40 (walk-in enabled), state 0 = 0x00.
    let doc = ext(
        0x0284_F001,
        &[0x00, 0x00, 0x02, 0x00, 0x1B, 0x00, 0x40, 0x00],
    );
    let expected = ModuleStatus {
        on: true,
        derating: false,
        faults: vec![],
        raw: 0x1B00_4000,
    };
    assert_eq!(
        InfyPower.decode_reply(&doc),
        Some(Ok((1, Reply::Status(expected.clone()))))
    );
    // The module side does not know its group: byte 2 stays 0.
    assert_eq!(
        reply(1, Reply::Status(expected)),
        ext(
            0x0284_F001,
            &[0x00, 0x00, 0x00, 0x00, 0x1B, 0x00, 0x40, 0x00]
        )
    );
    // Asked through its group, a module answers with device 0x0B ([C]:
    // 0x02C4F000) and its own address.
    assert!(matches!(
        InfyPower.decode_reply(&ext(0x02C4_F000, &[0, 0, 2, 0, 0x1B, 0, 0x40, 0])),
        Some(Ok((0, Reply::Status(_))))
    ));
}

#[test]
fn status_bits_map_to_faults() {
    // Module 5, 85 °C (0x55), power limited (state 2 bit 0 = 0x01),
    // over-temperature + fan fault (state 1 bits 4 and 3 = 0x18).
    let hot = ext(0x0284_F005, &[0, 0, 0, 0, 0x55, 0x01, 0x18, 0x00]);
    let status = ModuleStatus {
        on: true,
        derating: true,
        faults: vec![ModuleFault::OverTemperature, ModuleFault::FanFault],
        raw: 0x5501_1800,
    };
    assert_eq!(
        InfyPower.decode_reply(&hot),
        Some(Ok((5, Reply::Status(status.clone()))))
    );
    assert_eq!(reply(5, Reply::Status(status)), hot);

    // DC side off + communication interrupted (state 1 = 0x81), output
    // short (state 0 bit 0), -2 °C (0xFE).
    let tripped = ext(0x0284_F000, &[0, 0, 0, 0, 0xFE, 0x00, 0x81, 0x01]);
    assert_eq!(
        InfyPower.decode_reply(&tripped),
        Some(Ok((
            0,
            Reply::Status(ModuleStatus {
                on: false,
                derating: false,
                faults: vec![ModuleFault::OutputShort, ModuleFault::CommunicationLost],
                raw: 0xFE00_8101,
            })
        )))
    );

    // Every input-side alarm (state 2 = 0x7E: id repeat, load sharing, phase
    // lost, unbalance, under-, over-voltage), PFC off (0x80) and sleeping
    // (state 0 bit 4) + discharge abnormal (bit 5).
    let input = ext(0x0284_F000, &[0, 0, 0, 0, 0, 0xFE, 0x00, 0x30]);
    assert_eq!(
        InfyPower.decode_reply(&input),
        Some(Ok((
            0,
            Reply::Status(ModuleStatus {
                on: false,
                derating: false,
                faults: vec![
                    ModuleFault::InputOverVoltage,
                    ModuleFault::InputUnderVoltage,
                    ModuleFault::InputFault,
                    ModuleFault::Internal,
                ],
                raw: 0x00FE_0030,
            })
        )))
    );
}

#[test]
fn module_side_sets_bits_from_fields() {
    // A simulated module that only fills the fields: off → DC side off,
    // output over-voltage → state 1 bit 5.
    let status = ModuleStatus {
        on: false,
        derating: false,
        faults: vec![ModuleFault::OutputOverVoltage],
        raw: 0,
    };
    assert_eq!(
        reply(2, Reply::Status(status)),
        ext(0x0284_F002, &[0, 0, 0, 0, 0x00, 0x00, 0x21, 0x00])
    );
    // No bit of their own in V1.13: module protection (state 1 bit 2),
    // read back as Internal.
    for fault in [ModuleFault::OutputUnderVoltage, ModuleFault::OverCurrent] {
        let frame = reply(
            0,
            Reply::Status(ModuleStatus {
                on: true,
                faults: vec![fault],
                ..ModuleStatus::default()
            }),
        );
        assert_eq!(frame.data(), [0, 0, 0, 0, 0, 0, 0x04, 0]);
        let Some(Ok((0, Reply::Status(back)))) = InfyPower.decode_reply(&frame) else {
            panic!("{frame:?}");
        };
        assert_eq!(back.faults, [ModuleFault::Internal]);
    }
}

#[test]
fn ratings_answer() {
    // Doc example ([S], [K]): 0x02EE = 750 V max, 0x0064 = 100 V min,
    // 0x0100 = 256 × 0.1 A = 25.6 A, 0x05DC = 1500 × 10 W = 15 kW.
    let doc = ext(
        0x028A_F000,
        &[0x02, 0xEE, 0x00, 0x64, 0x01, 0x00, 0x05, 0xDC],
    );
    let ratings = Reply::Capabilities {
        min_voltage_v: 100.0,
        max_voltage_v: 750.0,
        max_current_a: 25.6,
        max_power_w: 15_000.0,
    };
    assert_eq!(InfyPower.decode_reply(&doc), Some(Ok((0, ratings.clone()))));
    assert_eq!(reply(0, ratings), doc);
    // Computed: 1000 V (0x03E8), 150 V (0x0096), 20 A (200 = 0x00C8),
    // 20 kW (2000 = 0x07D0), from module 3.
    assert_eq!(
        reply(
            3,
            Reply::Capabilities {
                min_voltage_v: 150.0,
                max_voltage_v: 1000.0,
                max_current_a: 20.0,
                max_power_w: 20_000.0
            }
        ),
        ext(
            0x028A_F003,
            &[0x03, 0xE8, 0x00, 0x96, 0x00, 0xC8, 0x07, 0xD0]
        )
    );
}

#[test]
fn acknowledgements() {
    // Echo of a 0x1C setpoint and of a 0x1A switch: Ack of what they echo.
    let setpoint = ext(
        0x029C_F000,
        &[0x00, 0x04, 0x93, 0xE0, 0x00, 0x00, 0x27, 0x10],
    );
    let set = Command::SetOutput {
        voltage_v: Some(300.0),
        current_a: Some(10.0),
    };
    assert_eq!(
        InfyPower.decode_reply(&setpoint),
        Some(Ok((0, Reply::Ack(set))))
    );
    let off = ext(0x029A_F00C, &[0x01, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        InfyPower.decode_reply(&off),
        Some(Ok((0x0C, Reply::Ack(Command::SetOn(false)))))
    );
    let on = ext(0x029A_F00C, &[0x00, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        InfyPower.decode_reply(&on),
        Some(Ok((0x0C, Reply::Ack(Command::SetOn(true)))))
    );
    // The faithful echoes.
    assert_eq!(reply(0, Reply::Ack(set)), setpoint);
    assert_eq!(reply(0x0C, Reply::Ack(Command::SetOn(false))), off);
    assert_eq!(reply(0x0C, Reply::Ack(Command::SetOn(true))), on);
    // A read is answered, not acknowledged.
    for read in [
        Command::ReadOutput,
        Command::ReadStatus,
        Command::ReadCapabilities,
    ] {
        assert!(InfyPower.encode_reply(0, &Reply::Ack(read)).is_empty());
    }
    // An echoed on/off byte the protocol does not define.
    assert!(matches!(
        InfyPower.decode_reply(&ext(0x029A_F000, &[0x02, 0, 0, 0, 0, 0, 0, 0])),
        Some(Err(DecodeError::Malformed { .. }))
    ));
}

#[test]
fn a_setpoint_or_output_missing_a_value_sends_nothing() {
    // 0x1C and the 0x03 answer carry voltage and current together.
    for (voltage_v, current_a) in [(Some(400.0), None), (None, Some(10.0)), (None, None)] {
        let set = Command::SetOutput {
            voltage_v,
            current_a,
        };
        for target in [Target::Module(1), Target::Group(0), Target::Broadcast] {
            assert!(InfyPower.encode_command(target, &set).is_empty());
        }
        assert!(InfyPower.encode_reply(1, &Reply::Ack(set)).is_empty());
        let output = Reply::Output {
            voltage_v,
            current_a,
        };
        assert!(InfyPower.encode_reply(1, &output).is_empty());
    }
}

#[test]
fn group_commands_are_answered_with_device_0x0b() {
    // [C]: a module asked through its group answers 0x02C4F000 (device
    // 0x0B, 0x04 to 0xF0 from module 0); the controller takes both.
    let status = Reply::Status(ModuleStatus {
        on: true,
        ..ModuleStatus::default()
    });
    let group = one(InfyPower.encode_reply_to(0, &status, Target::Group(2)));
    assert_eq!(group.id(), 0x02C4_F000);
    assert_eq!(
        InfyPower.decode_reply(&group),
        Some(Ok((0, status.clone())))
    );
    // Asked by address (or by broadcast): device 0x0A, as encode_reply.
    for target in [Target::Module(0), Target::Broadcast] {
        assert_eq!(
            InfyPower.encode_reply_to(0, &status, target),
            InfyPower.encode_reply(0, &status)
        );
    }
    // The echo of a group switch: 0x1A with device 0x0B from module 5.
    let ack =
        one(InfyPower.encode_reply_to(5, &Reply::Ack(Command::SetOn(true)), Target::Group(0)));
    assert_eq!(ack, ext(0x02DA_F005, &[0; 8]));
    assert_eq!(
        InfyPower.decode_reply(&ack),
        Some(Ok((5, Reply::Ack(Command::SetOn(true)))))
    );
}

#[test]
fn error_codes_are_errors() {
    // Error code 0x02 (command invalid): 0x02<<26 = 0x0800_0000.
    let invalid = ext(0x0A84_F000, &[0; 8]);
    let Some(Err(DecodeError::Malformed { id, why })) = InfyPower.decode_reply(&invalid) else {
        panic!("{invalid:?}");
    };
    assert_eq!(id, 0x0A84_F000);
    assert!(why.contains("command invalid"), "{why}");
    // 0x03 data invalid, 0x07 start processing.
    for id in [0x0E9C_F001, 0x1E83_F002] {
        assert!(matches!(
            InfyPower.decode_reply(&ext(id, &[0; 8])),
            Some(Err(_))
        ));
    }
    // An error code the protocol does not define is not this protocol.
    // Code 0x05: 0x05<<26 = 0x1400_0000.
    assert_eq!(InfyPower.decode_reply(&ext(0x1684_F000, &[0; 8])), None);
}

#[test]
fn other_traffic_is_none() {
    let none_for_both = |frame: CanFrame| {
        assert_eq!(InfyPower.decode_reply(&frame), None, "{frame:?}");
        assert_eq!(InfyPower.decode_command(&frame), None, "{frame:?}");
    };
    // 11-bit frames, even with a plausible low byte.
    none_for_both(CanFrame::standard(0x0F0, &[0; 8]).unwrap());
    none_for_both(CanFrame::standard(0x7FF, &[]).unwrap());
    // J1939 (device bits 0x3), and a UUGreen/UXR-style id (PROTNO 0x060:
    // device bits 0x8).
    none_for_both(ext(0x18FF_50E5, &[0; 8]));
    none_for_both(ext(0x0608_0780, &[0; 8]));
    // InfyPower answers to commands this codec does not decode: 0x06 input
    // voltages (doc example, [S] [K]), 0x01 system output (doc example),
    // 0x0B barcode (doc example, [E] [K]).
    none_for_both(ext(
        0x0286_F001,
        &[0x0F, 0xB4, 0x0F, 0xA5, 0x0F, 0xA7, 0, 0],
    ));
    none_for_both(ext(0x0281_F03F, &[0x43, 0xFA, 0, 0, 0x42, 0x48, 0, 0]));
    none_for_both(ext(
        0x028B_F000,
        &[0x56, 0x13, 0x0C, 0x15, 0xA3, 0xFB, 0x06, 0xA8],
    ));
    // Another controller's answer (destination 0xF1).
    none_for_both(ext(0x0284_F100, &[0; 8]));
    // Modules' internal traffic ([B]: 0x0757F8xx).
    none_for_both(ext(0x0757_F801, &[0; 8]));
    // A command is no answer, an answer no command.
    assert_eq!(InfyPower.decode_reply(&ext(0x0284_00F0, &[0; 8])), None);
    assert_eq!(InfyPower.decode_command(&ext(0x0284_F000, &[0; 8])), None);
    // Device 0x0A to a destination that is no module address.
    assert_eq!(InfyPower.decode_command(&ext(0x0284_40F0, &[0; 8])), None);
}

#[test]
fn wrong_length_is_an_error() {
    for (id, reply) in [
        (0x0283_F000, true),
        (0x0284_F000, true),
        (0x028A_F000, true),
        (0x029A_F000, true),
        (0x029C_F000, true),
        (0x0283_00F0, false),
        (0x0284_00F0, false),
        (0x028A_00F0, false),
        (0x029A_00F0, false),
        (0x029C_00F0, false),
    ] {
        for len in 0..8 {
            let frame = ext(id, &[0u8; 8][..len]);
            let decoded = if reply {
                InfyPower.decode_reply(&frame).map(|r| r.map(drop))
            } else {
                InfyPower.decode_command(&frame).map(|r| r.map(drop))
            };
            let Some(Err(DecodeError::Malformed { why, .. })) = decoded else {
                panic!("{frame:?}: {decoded:?}");
            };
            assert!(why.contains(&format!("{len} data bytes")), "{why}");
        }
    }
}

// ---- properties -------------------------------------------------------

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        (0..=MAX_MODULE_ADDRESS).prop_map(Target::Module),
        (0..=MAX_MODULE_ADDRESS).prop_map(Target::Group),
        Just(Target::Broadcast),
    ]
}

/// Commands on the protocol's grid: whole mV and mA over the u32 range.
fn command_on_grid() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(mv, ma)| Command::SetOutput {
            voltage_v: Some(f64::from(mv) / 1000.0),
            current_a: Some(f64::from(ma) / 1000.0),
        }),
        any::<bool>().prop_map(Command::SetOn),
        Just(Command::ReadOutput),
        Just(Command::ReadStatus),
        Just(Command::ReadCapabilities),
    ]
}

/// The faults V1.13 has a bit for, in `Ord` order.
const REPRESENTABLE: [ModuleFault; 9] = [
    ModuleFault::OverTemperature,
    ModuleFault::InputOverVoltage,
    ModuleFault::InputUnderVoltage,
    ModuleFault::InputFault,
    ModuleFault::OutputOverVoltage,
    ModuleFault::OutputShort,
    ModuleFault::FanFault,
    ModuleFault::CommunicationLost,
    ModuleFault::Internal,
];

/// Replies on the protocol's grid.
fn reply_on_grid() -> impl Strategy<Value = Reply> {
    let finite = any::<f32>().prop_filter("finite", |v| v.is_finite());
    prop_oneof![
        (finite.clone(), finite).prop_map(|(v, i)| Reply::Output {
            voltage_v: Some(f64::from(v)),
            current_a: Some(f64::from(i)),
        }),
        any::<u32>().prop_map(|raw| Reply::Status(status_from_raw(raw))),
        (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(max, min, i, p)| {
            Reply::Capabilities {
                min_voltage_v: f64::from(min),
                max_voltage_v: f64::from(max),
                max_current_a: f64::from(i) / 10.0,
                max_power_w: f64::from(p) * 10.0,
            }
        }),
        setting_on_grid().prop_map(Reply::Ack),
    ]
}

/// The settings a module acknowledges, on the protocol's grid.
fn setting_on_grid() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(mv, ma)| Command::SetOutput {
            voltage_v: Some(f64::from(mv) / 1000.0),
            current_a: Some(f64::from(ma) / 1000.0),
        }),
        any::<bool>().prop_map(Command::SetOn),
    ]
}

fn any_frame() -> impl Strategy<Value = CanFrame> {
    (
        any::<bool>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..=8),
    )
        .prop_map(|(extended, id, data)| {
            let id = if extended {
                id & evos_hal::can::MAX_EXTENDED_ID
            } else {
                id & evos_hal::can::MAX_STANDARD_ID
            };
            CanFrame::new(id, extended, &data).unwrap()
        })
}

proptest! {
    #[test]
    fn commands_round_trip(target in target(), command in command_on_grid()) {
        let frame = one(InfyPower.encode_command(target, &command));
        prop_assert!(frame.is_extended());
        prop_assert_eq!(frame.data().len(), 8);
        prop_assert_eq!(InfyPower.decode_command(&frame), Some(Ok((target, command))));
        prop_assert_eq!(InfyPower.decode_reply(&frame), None);
    }

    /// Off the grid, a setpoint comes back within half a unit (0.5 mV,
    /// 0.5 mA) over a charger's range.
    #[test]
    fn setpoints_keep_their_resolution(
        target in target(),
        voltage_v in 0.0..1500.0f64,
        current_a in 0.0..1000.0f64,
    ) {
        let set = Command::SetOutput { voltage_v: Some(voltage_v), current_a: Some(current_a) };
        let frame = one(InfyPower.encode_command(target, &set));
        let Some(Ok((_, Command::SetOutput { voltage_v: Some(v), current_a: Some(i) }))) =
            InfyPower.decode_command(&frame)
        else {
            panic!("{frame:?}");
        };
        prop_assert!((v - voltage_v).abs() <= 0.0005 + 1e-9, "{v} vs {voltage_v}");
        prop_assert!((i - current_a).abs() <= 0.0005 + 1e-9, "{i} vs {current_a}");
    }

    /// What the controller sends, the module reads, echoes, and the
    /// controller reads back as `Ack` of what it sent.
    #[test]
    fn settings_are_echoed(
        target in target(),
        address in 0..=MAX_MODULE_ADDRESS,
        setting in setting_on_grid(),
    ) {
        let frame = one(InfyPower.encode_command(target, &setting));
        let Some(Ok((got_target, got))) = InfyPower.decode_command(&frame) else {
            panic!("{frame:?}");
        };
        prop_assert_eq!((got_target, got), (target, setting));
        let echo = one(InfyPower.encode_reply_to(address, &Reply::Ack(got), target));
        prop_assert_eq!(echo.data(), frame.data());
        prop_assert_eq!(
            InfyPower.decode_reply(&echo),
            Some(Ok((address, Reply::Ack(setting))))
        );
    }

    #[test]
    fn replies_round_trip(address in 0..=MAX_MODULE_ADDRESS, reply in reply_on_grid()) {
        let frame = one(InfyPower.encode_reply(address, &reply));
        prop_assert!(frame.is_extended());
        prop_assert_eq!(frame.data().len(), 8);
        prop_assert_eq!(InfyPower.decode_reply(&frame), Some(Ok((address, reply))));
        prop_assert_eq!(InfyPower.decode_command(&frame), None);
    }

    /// Ratings off the grid come back within half a unit (0.5 V, 0.05 A,
    /// 5 W).
    #[test]
    fn ratings_keep_their_resolution(
        min_voltage_v in 0.0..1000.0f64,
        max_voltage_v in 0.0..1500.0f64,
        max_current_a in 0.0..500.0f64,
        max_power_w in 0.0..100_000.0f64,
    ) {
        let frame = one(InfyPower.encode_reply(0, &Reply::Capabilities {
            min_voltage_v, max_voltage_v, max_current_a, max_power_w,
        }));
        let Some(Ok((0, Reply::Capabilities {
            min_voltage_v: min, max_voltage_v: max, max_current_a: i, max_power_w: p,
        }))) = InfyPower.decode_reply(&frame) else {
            panic!("{frame:?}");
        };
        prop_assert!((min - min_voltage_v).abs() <= 0.5 + 1e-9);
        prop_assert!((max - max_voltage_v).abs() <= 0.5 + 1e-9);
        prop_assert!((i - max_current_a).abs() <= 0.05 + 1e-9);
        prop_assert!((p - max_power_w).abs() <= 5.0 + 1e-9);
    }

    /// A module side that fills only the fields: they survive, and the
    /// temperature byte rides in `raw`.
    #[test]
    fn status_fields_round_trip(
        address in 0..=MAX_MODULE_ADDRESS,
        on in any::<bool>(),
        derating in any::<bool>(),
        chosen in proptest::collection::vec(any::<bool>(), REPRESENTABLE.len()),
        temperature in any::<i8>(),
    ) {
        let faults: Vec<ModuleFault> = REPRESENTABLE
            .iter()
            .zip(&chosen)
            .filter(|(_, c)| **c)
            .map(|(f, _)| *f)
            .collect();
        let sent = ModuleStatus {
            on,
            derating,
            faults: faults.clone(),
            raw: u32::from(temperature as u8) << status::TEMPERATURE_SHIFT,
        };
        let frame = one(InfyPower.encode_reply(address, &Reply::Status(sent)));
        let Some(Ok((from, Reply::Status(got)))) = InfyPower.decode_reply(&frame) else {
            panic!("{frame:?}");
        };
        prop_assert_eq!(from, address);
        prop_assert_eq!(got.on, on);
        prop_assert_eq!(got.derating, derating);
        prop_assert_eq!(got.faults, faults);
        prop_assert_eq!((got.raw >> status::TEMPERATURE_SHIFT) as u8 as i8, temperature);
    }

    #[test]
    fn garbage_never_panics(frame in any_frame()) {
        let _ = InfyPower.decode_reply(&frame);
        let _ = InfyPower.decode_command(&frame);
    }

    /// Any 8-byte frame with a known command id decodes one way or the
    /// other, and what decodes re-encodes to the same frame (modulo the
    /// status group byte and reserved bytes).
    #[test]
    fn decoded_frames_re_encode(
        id in prop_oneof![
            Just(0x0283_F000u32), Just(0x0284_F000), Just(0x028A_F000),
            Just(0x029A_F000), Just(0x029C_F000),
            Just(0x0283_00F0), Just(0x0284_00F0), Just(0x028A_00F0),
            Just(0x029A_00F0), Just(0x029C_00F0),
        ],
        data in any::<[u8; 8]>(),
    ) {
        let frame = ext(id, &data);
        if let Some(Ok((address, reply))) = InfyPower.decode_reply(&frame) {
            let again = one(InfyPower.encode_reply(address, &reply));
            prop_assert_eq!(InfyPower.decode_reply(&again), Some(Ok((address, reply))));
        }
        if let Some(Ok((target, command))) = InfyPower.decode_command(&frame) {
            let again = one(InfyPower.encode_command(target, &command));
            prop_assert_eq!(InfyPower.decode_command(&again), Some(Ok((target, command))));
        }
    }
}
