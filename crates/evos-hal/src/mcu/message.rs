//! Typed messages of the safety-MCU link and their payload encoding.

use crate::HalError;
use crate::board::{BoardStatus, CpState, LockState, Measurement, PwmOutput};

/// Types 0xE0..=0xEF are the simulator's; a real link rejects them.
pub const SIM_TYPES: std::ops::RangeInclusive<u8> = 0xE0..=0xEF;

/// Messages only the simulator sends (types 0xE0..=0xEF), accepted only on
/// the simulator's link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimMessage {
    /// 0xE0: what the simulated DC EV asks for: voltage (mV, u32) and
    /// current (mA, u32). Until ISO 15118 high-level communication exists,
    /// this stands in for the EV's ChargeParameterDiscovery/CurrentDemand.
    DcDemand { voltage_v: f64, current_a: f64 },
}

impl SimMessage {
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            SimMessage::DcDemand {
                voltage_v,
                current_a,
            } => {
                let mut p = Vec::with_capacity(8);
                p.extend_from_slice(
                    &((voltage_v * 1000.0).round().clamp(0.0, u32::MAX.into()) as u32)
                        .to_le_bytes(),
                );
                p.extend_from_slice(
                    &((current_a * 1000.0).round().clamp(0.0, u32::MAX.into()) as u32)
                        .to_le_bytes(),
                );
                (0xE0, p)
            }
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, HalError> {
        let mut p = Payload {
            bytes: payload,
            kind,
        };
        let msg = match kind {
            0xE0 => SimMessage::DcDemand {
                voltage_v: f64::from(p.u32()?) / 1000.0,
                current_a: f64::from(p.u32()?) / 1000.0,
            },
            other => {
                return Err(HalError::Frame(format!(
                    "unknown simulator type {other:#04x}"
                )));
            }
        };
        p.end()?;
        Ok(msg)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostMessage {
    KeepAlive { seq: u32 },
    SetPwm(PwmOutput),
    SetContactors { closed: bool, phases: u8 },
    SetLock { locked: bool },
    GetStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    Crc = 1,
    UnknownType = 2,
    BadPayload = 3,
}

#[derive(Debug, Clone, PartialEq)]
pub enum McuMessage {
    Status(BoardStatus),
    KeepAliveAck {
        seq: u32,
    },
    Measurement(Measurement),
    Token(String),
    Nack {
        rejected_type: u8,
        reason: NackReason,
    },
}

/// A little-endian reader over a payload that fails instead of panicking.
struct Payload<'a> {
    bytes: &'a [u8],
    kind: u8,
}

impl<'a> Payload<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], HalError> {
        if self.bytes.len() < N {
            return Err(HalError::Frame(format!(
                "type {:#04x}: payload too short",
                self.kind
            )));
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, HalError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, HalError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, HalError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn i32(&mut self) -> Result<i32, HalError> {
        Ok(i32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, HalError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn bool(&mut self) -> Result<bool, HalError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(HalError::Frame(format!(
                "type {:#04x}: {other} is not a boolean",
                self.kind
            ))),
        }
    }
    fn end(self) -> Result<(), HalError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(HalError::Frame(format!(
                "type {:#04x}: {} trailing bytes",
                self.kind,
                self.bytes.len()
            )))
        }
    }
}

fn unknown(kind: u8) -> HalError {
    if SIM_TYPES.contains(&kind) {
        HalError::Frame(format!("type {kind:#04x} is reserved for the simulator"))
    } else {
        HalError::Frame(format!("unknown type {kind:#04x}"))
    }
}

impl HostMessage {
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            HostMessage::KeepAlive { seq } => (0x01, seq.to_le_bytes().to_vec()),
            HostMessage::SetPwm(out) => {
                let (mode, duty) = match out {
                    PwmOutput::Off => (0u8, 0u16),
                    PwmOutput::Duty(d) => (1, *d),
                    PwmOutput::Minus12V => (2, 0),
                };
                let mut p = vec![mode];
                p.extend_from_slice(&duty.to_le_bytes());
                (0x02, p)
            }
            HostMessage::SetContactors { closed, phases } => {
                (0x03, vec![u8::from(*closed), *phases])
            }
            HostMessage::SetLock { locked } => (0x04, vec![u8::from(*locked)]),
            HostMessage::GetStatus => (0x05, vec![]),
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, HalError> {
        let mut p = Payload {
            bytes: payload,
            kind,
        };
        let msg = match kind {
            0x01 => HostMessage::KeepAlive { seq: p.u32()? },
            0x02 => {
                let mode = p.u8()?;
                let duty = p.u16()?;
                HostMessage::SetPwm(match mode {
                    0 => PwmOutput::Off,
                    1 if duty <= 1000 => PwmOutput::Duty(duty),
                    1 => return Err(HalError::Frame(format!("duty {duty}‰ is over 1000"))),
                    2 => PwmOutput::Minus12V,
                    m => return Err(HalError::Frame(format!("unknown PWM mode {m}"))),
                })
            }
            0x03 => HostMessage::SetContactors {
                closed: p.bool()?,
                phases: p.u8()?,
            },
            0x04 => HostMessage::SetLock { locked: p.bool()? },
            0x05 => HostMessage::GetStatus,
            other => return Err(unknown(other)),
        };
        p.end()?;
        Ok(msg)
    }
}

impl McuMessage {
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            McuMessage::Status(s) => {
                let lock = match s.lock {
                    LockState::Unlocked => 0,
                    LockState::Locked => 1,
                    LockState::Fault => 2,
                };
                let flags = u8::from(s.rcd_tripped) | (u8::from(s.diode_fault) << 1);
                (
                    0x81,
                    vec![
                        s.cp.as_char() as u8,
                        s.cable_rating_a.unwrap_or(0),
                        u8::from(s.contactors_closed),
                        lock,
                        flags,
                    ],
                )
            }
            McuMessage::KeepAliveAck { seq } => (0x82, seq.to_le_bytes().to_vec()),
            McuMessage::Measurement(m) => {
                let mut p = Vec::with_capacity(26);
                for v in m.voltage_v {
                    p.extend_from_slice(
                        &((v * 10.0).round().clamp(0.0, 65535.0) as u16).to_le_bytes(),
                    );
                }
                for i in m.current_a {
                    p.extend_from_slice(&((i * 1000.0).round() as i32).to_le_bytes());
                }
                p.extend_from_slice(&(m.energy_wh.max(0.0).round() as u64).to_le_bytes());
                (0x83, p)
            }
            McuMessage::Token(uid) => (0x84, uid.as_bytes().to_vec()),
            McuMessage::Nack {
                rejected_type,
                reason,
            } => (0x85, vec![*rejected_type, *reason as u8]),
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, HalError> {
        let mut p = Payload {
            bytes: payload,
            kind,
        };
        let msg = match kind {
            0x81 => {
                let cp = p.u8()?;
                let cp = CpState::from_char(cp as char)
                    .ok_or_else(|| HalError::Frame(format!("CP state byte {cp:#04x}")))?;
                let pp = p.u8()?;
                let contactors = p.u8()?;
                let lock = match p.u8()? {
                    0 => LockState::Unlocked,
                    1 => LockState::Locked,
                    2 => LockState::Fault,
                    l => return Err(HalError::Frame(format!("lock state {l}"))),
                };
                let flags = p.u8()?;
                McuMessage::Status(BoardStatus {
                    cp,
                    cable_rating_a: (pp != 0).then_some(pp),
                    contactors_closed: contactors & 1 != 0,
                    lock,
                    rcd_tripped: flags & 1 != 0,
                    diode_fault: flags & 2 != 0,
                })
            }
            0x82 => McuMessage::KeepAliveAck { seq: p.u32()? },
            0x83 => {
                let mut m = Measurement::default();
                for v in &mut m.voltage_v {
                    *v = f64::from(p.u16()?) / 10.0;
                }
                for i in &mut m.current_a {
                    *i = f64::from(p.i32()?) / 1000.0;
                }
                m.energy_wh = p.u64()? as f64;
                McuMessage::Measurement(m)
            }
            0x84 => {
                let uid = std::str::from_utf8(payload)
                    .map_err(|_| HalError::Frame("token is not UTF-8".into()))?;
                if uid.is_empty() || uid.len() > 64 {
                    return Err(HalError::Frame(format!("token of {} bytes", uid.len())));
                }
                return Ok(McuMessage::Token(uid.to_owned()));
            }
            0x85 => {
                let rejected_type = p.u8()?;
                let reason = match p.u8()? {
                    1 => NackReason::Crc,
                    2 => NackReason::UnknownType,
                    3 => NackReason::BadPayload,
                    r => return Err(HalError::Frame(format!("nack reason {r}"))),
                };
                McuMessage::Nack {
                    rejected_type,
                    reason,
                }
            }
            other => return Err(unknown(other)),
        };
        p.end()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> BoardStatus {
        BoardStatus {
            cp: CpState::C,
            cable_rating_a: Some(32),
            contactors_closed: true,
            lock: LockState::Locked,
            rcd_tripped: false,
            diode_fault: true,
        }
    }

    #[test]
    fn status_bytes_are_as_documented() {
        let (kind, payload) = McuMessage::Status(status()).encode();
        assert_eq!(kind, 0x81);
        assert_eq!(payload, vec![b'C', 32, 1, 1, 0b10]);
        assert_eq!(
            McuMessage::decode(kind, &payload).unwrap(),
            McuMessage::Status(status())
        );
    }

    #[test]
    fn set_pwm_bytes_are_as_documented() {
        assert_eq!(
            HostMessage::SetPwm(PwmOutput::Duty(266)).encode(),
            (0x02, vec![1, 0x0a, 0x01])
        );
        assert_eq!(
            HostMessage::SetPwm(PwmOutput::Minus12V).encode(),
            (0x02, vec![2, 0, 0])
        );
    }

    #[test]
    fn the_simulated_dc_demand_round_trips_only_as_a_simulator_message() {
        let demand = SimMessage::DcDemand {
            voltage_v: 401.5,
            current_a: 125.25,
        };
        let (kind, payload) = demand.encode();
        assert_eq!(kind, 0xE0);
        // 401 500 mV = 0x0006205C, 125 250 mA = 0x0001E942, little-endian.
        assert_eq!(payload, [0x5C, 0x20, 0x06, 0x00, 0x42, 0xE9, 0x01, 0x00]);
        assert_eq!(SimMessage::decode(kind, &payload).unwrap(), demand);
        assert!(
            McuMessage::decode(kind, &payload).is_err(),
            "a real link rejects it"
        );
        assert!(SimMessage::decode(0xE1, &[]).is_err());
        assert!(SimMessage::decode(0xE0, &payload[..7]).is_err());
    }

    #[test]
    fn simulator_types_are_rejected() {
        let err = McuMessage::decode(0xE3, &[]).unwrap_err();
        assert!(
            err.to_string().contains("reserved for the simulator"),
            "{err}"
        );
        assert!(HostMessage::decode(0xE0, &[]).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        assert!(HostMessage::decode(0x04, &[1, 9]).is_err());
        assert!(
            HostMessage::decode(0x04, &[7]).is_err(),
            "7 is not a boolean"
        );
    }

    fn host_message() -> impl Strategy<Value = HostMessage> {
        prop_oneof![
            any::<u32>().prop_map(|seq| HostMessage::KeepAlive { seq }),
            Just(HostMessage::SetPwm(PwmOutput::Off)),
            Just(HostMessage::SetPwm(PwmOutput::Minus12V)),
            (0u16..=1000).prop_map(|d| HostMessage::SetPwm(PwmOutput::Duty(d))),
            (any::<bool>(), 1u8..=3)
                .prop_map(|(closed, phases)| HostMessage::SetContactors { closed, phases }),
            any::<bool>().prop_map(|locked| HostMessage::SetLock { locked }),
            Just(HostMessage::GetStatus),
        ]
    }

    proptest! {
        #[test]
        fn host_round_trip(msg in host_message()) {
            let (k, p) = msg.encode();
            prop_assert_eq!(HostMessage::decode(k, &p).unwrap(), msg);
        }

        #[test]
        fn measurement_round_trip(v in 0u16..5000, i in -100_000i32..100_000, e in 0u64..1u64 << 40) {
            let m = Measurement {
                voltage_v: [f64::from(v) / 10.0; 3],
                current_a: [f64::from(i) / 1000.0; 3],
                energy_wh: e as f64,
            };
            let (k, p) = McuMessage::Measurement(m).encode();
            prop_assert_eq!(McuMessage::decode(k, &p).unwrap(), McuMessage::Measurement(m));
        }

        #[test]
        fn garbage_payloads_never_panic(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = McuMessage::decode(kind, &payload);
            let _ = HostMessage::decode(kind, &payload);
        }
    }
}
