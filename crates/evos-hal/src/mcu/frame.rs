//! COBS framing with a CRC-32 trailer (see the module above for the format).

use crate::HalError;

/// Largest decoded frame (type + payload + CRC).
pub const MAX_FRAME: usize = 256;

/// Encode `type + payload` into one delimited wire frame.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(payload.len() + 5);
    raw.push(kind);
    raw.extend_from_slice(payload);
    let crc = crc32fast::hash(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    let mut wire = cobs::encode_vec(&raw);
    wire.push(0);
    wire
}

/// Decode one wire frame (without its `0x00` delimiter) into (type, payload).
pub fn decode(wire: &[u8]) -> Result<(u8, Vec<u8>), HalError> {
    if wire.is_empty() {
        return Err(HalError::Frame("empty frame".into()));
    }
    if wire.len() > MAX_FRAME + MAX_FRAME / 254 + 2 {
        return Err(HalError::Frame(format!(
            "frame of {} bytes is too long",
            wire.len()
        )));
    }
    let raw = cobs::decode_vec(wire).map_err(|e| HalError::Frame(format!("bad COBS: {e:?}")))?;
    if raw.len() < 5 {
        return Err(HalError::Frame(format!(
            "frame of {} bytes is too short",
            raw.len()
        )));
    }
    let (body, crc) = raw.split_at(raw.len() - 4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(body);
    if expected != actual {
        return Err(HalError::Frame(format!(
            "CRC mismatch: got {expected:#010x}, computed {actual:#010x}"
        )));
    }
    Ok((body[0], body[1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_frame() {
        // KeepAlive seq 1: body 01 01 00 00 00, CRC-32 of it.
        let wire = encode(0x01, &1u32.to_le_bytes());
        assert_eq!(*wire.last().unwrap(), 0);
        assert!(
            !wire[..wire.len() - 1].contains(&0),
            "COBS leaves no zero inside"
        );
        let (kind, payload) = decode(&wire[..wire.len() - 1]).unwrap();
        assert_eq!((kind, payload.as_slice()), (0x01, &[1, 0, 0, 0][..]));
    }

    #[test]
    fn corrupt_crc_is_rejected() {
        let mut wire = encode(0x04, &[1]);
        wire[2] ^= 0x40;
        let err = decode(&wire[..wire.len() - 1]).unwrap_err();
        assert!(
            err.to_string().contains("CRC") || err.to_string().contains("COBS"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn round_trip(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let wire = encode(kind, &payload);
            let (k, p) = decode(&wire[..wire.len() - 1]).unwrap();
            prop_assert_eq!(k, kind);
            prop_assert_eq!(p, payload);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
