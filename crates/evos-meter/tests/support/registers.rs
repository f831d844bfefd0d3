//! Answering a Modbus read from a register table, as a meter does: the
//! in-process servers of the RTU tests and the Modbus benchmark.

use std::collections::BTreeMap;

use tokio_modbus::{ExceptionCode, Request, Response};

/// The answer to `request` from `registers` (unmapped registers read 0):
/// FC 03/04 only, at most 125 registers within the address space.
pub fn answer(
    registers: &BTreeMap<u16, u16>,
    request: Request<'_>,
) -> Result<Option<Response>, ExceptionCode> {
    let words = |address: u16, count: u16| {
        let end = u32::from(address) + u32::from(count);
        if count == 0 || count > 125 || end > 0x1_0000 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok((u32::from(address)..end)
            .map(|a| registers.get(&(a as u16)).copied().unwrap_or(0))
            .collect())
    };
    match request {
        Request::ReadInputRegisters(address, count) => {
            words(address, count).map(|w| Some(Response::ReadInputRegisters(w)))
        }
        Request::ReadHoldingRegisters(address, count) => {
            words(address, count).map(|w| Some(Response::ReadHoldingRegisters(w)))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}
