//! Emulated energy meters: Modbus TCP servers (Modbus Messaging on TCP/IP
//! V1.0b, through tokio-modbus) that answer from the register image a real
//! meter of the configured register map would serve.
//!
//! The meter service reads them with the same code that reads a meter on a
//! charger; only the physics behind the registers is simulated. Each EVSE's
//! simulation publishes what the meter sees at its terminals
//! ([`Terminals`]: the energy register, per-phase current and voltage, the
//! faults injected) and every request is answered from
//! `map.encode(&reading)` of that state at the moment it arrives, so the
//! energy register is the very `meter_wh` the safety MCU reports in its
//! Measurement.
//!
//! Several meters may share one address with different unit ids, as meters
//! on an RS-485 line behind a Modbus TCP gateway do.
//!
//! What the server answers:
//! - FC 03 / FC 04 reads of 1..=125 registers that touch at least one
//!   register of the map (or one written before): the words of the image,
//!   0 where the image has none;
//! - a read entirely outside the map, or past 0xFFFF: exception 0x02
//!   IllegalDataAddress; a read of 0 or more than 125 registers: exception
//!   0x03 IllegalDataValue (Modbus Application Protocol V1.1b3 §6.3, §6.4:
//!   the quantity is checked first, and a bad one is an illegal value);
//! - FC 06 writes to holding registers: stored and echoed, and later reads
//!   see them (meters that sign their readings are driven by a command
//!   register); a write to one of the map's measurement registers:
//!   exception 0x02 (they are read-only);
//! - any other function code: exception 0x01 IllegalFunction.
//!
//! A request for a unit id that no meter on the address has gets no answer
//! at all (the client times out). That is how a meter on an RS-485 line
//! behaves, and the kind of TCP meter or transparent gateway that checks
//! the unit id; a gateway that reports it would answer 0x0B
//! GatewayTargetDevice instead. Silence is the harder case for the client
//! (a misconfigured unit looks like a meter that is off), so we emulate it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use evos_meter::reading::Reading;
use evos_meter::register_map::{Function, MeterKind, RegisterMap};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Mains frequency the emulated AC meters measure (Hz).
pub const FREQUENCY_HZ: f64 = 50.0;
/// How far `backwards` sets the energy register back (Wh).
pub const BACKWARDS_WH: f64 = 1_000.0;
/// How far `jump` moves the energy register up (Wh).
pub const JUMP_WH: f64 = 1_000_000.0;
/// Used when a DC EV profile gives no battery voltage (V).
pub const DEFAULT_DC_VOLTAGE_V: f64 = 400.0;
/// The most registers one read may ask for (Modbus Application Protocol
/// V1.1b3 §6.3, §6.4).
pub const MAX_READ: u16 = 125;

/// A fault injected into an emulated meter (`Sim1.MeterFault`). Each lasts
/// until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MeterFaultKind {
    /// No answer to anything; open connections stay open, but silent.
    Offline,
    /// Every request answered with exception 0x04 ServerDeviceFailure.
    Exception,
    /// The energy register reads [`BACKWARDS_WH`] below the truth.
    Backwards,
    /// The energy register reads [`JUMP_WH`] above the truth.
    Jump,
    /// Read responses carry a byte count that disagrees with the frame.
    Garbage,
}

impl MeterFaultKind {
    pub const ALL: [MeterFaultKind; 5] = [
        MeterFaultKind::Offline,
        MeterFaultKind::Exception,
        MeterFaultKind::Backwards,
        MeterFaultKind::Jump,
        MeterFaultKind::Garbage,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MeterFaultKind::Offline => "offline",
            MeterFaultKind::Exception => "exception",
            MeterFaultKind::Backwards => "backwards",
            MeterFaultKind::Jump => "jump",
            MeterFaultKind::Garbage => "garbage",
        }
    }
}

/// What an EVSE's meter sees at its terminals, published by the EVSE's
/// simulation whenever its world may have changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Terminals {
    /// The import energy register (Wh): the simulation's `meter_wh`, the
    /// same value the MCU reports as Measurement energy.
    pub energy_wh: f64,
    /// AC: voltage per phase (V).
    pub voltage_v: [f64; 3],
    /// AC: current per phase (A).
    pub current_a: [f64; 3],
    /// DC: voltage at the output (V).
    pub dc_voltage_v: f64,
    /// DC: current at the output (A).
    pub dc_current_a: f64,
    /// Faults injected into the meter.
    pub faults: BTreeSet<MeterFaultKind>,
}

impl Terminals {
    /// The truth, laid out as a meter of `map`'s kind and phases measures
    /// it: energy export 0, frequency 50 Hz (AC), power = voltage × current.
    pub fn reading(&self, map: &RegisterMap, timestamp_ms: u64) -> Reading {
        match map.meter.kind {
            MeterKind::Ac => {
                let phases = usize::from(map.meter.phases).min(3);
                let power: Vec<f64> = (0..phases)
                    .map(|i| self.voltage_v[i] * self.current_a[i])
                    .collect();
                Reading {
                    timestamp_ms,
                    energy_import_wh: self.energy_wh,
                    energy_export_wh: Some(0.0),
                    power_w: Some(power.iter().sum()),
                    power_phase_w: power.into_iter().map(Some).collect(),
                    voltage_v: self.voltage_v[..phases].iter().copied().map(Some).collect(),
                    current_a: self.current_a[..phases].iter().copied().map(Some).collect(),
                    frequency_hz: Some(FREQUENCY_HZ),
                }
            }
            MeterKind::Dc => Reading {
                timestamp_ms,
                energy_import_wh: self.energy_wh,
                energy_export_wh: Some(0.0),
                power_w: Some(self.dc_voltage_v * self.dc_current_a),
                power_phase_w: vec![None],
                voltage_v: vec![Some(self.dc_voltage_v)],
                current_a: vec![Some(self.dc_current_a)],
                frequency_hz: None,
            },
        }
    }

    /// What the meter's registers claim: the truth, with the energy
    /// register moved by `backwards` / `jump`.
    pub fn shown(&self, map: &RegisterMap, timestamp_ms: u64) -> Reading {
        let mut reading = self.reading(map, timestamp_ms);
        if self.faults.contains(&MeterFaultKind::Backwards) {
            reading.energy_import_wh -= BACKWARDS_WH;
        }
        if self.faults.contains(&MeterFaultKind::Jump) {
            reading.energy_import_wh += JUMP_WH;
        }
        reading
    }
}

/// One emulated meter: the unit id it answers to, its register map, and
/// its EVSE's terminals.
#[derive(Debug, Clone)]
pub struct MeterUnit {
    pub unit: u8,
    pub map: RegisterMap,
    pub terminals: watch::Receiver<Terminals>,
}

/// A meter as the server runs it.
#[derive(Debug)]
struct Unit {
    map: RegisterMap,
    terminals: watch::Receiver<Terminals>,
    /// Every register the map defines (measurements, OCMF area, command).
    mapped: BTreeSet<(Function, u16)>,
    /// The map's measurement registers in holding space: not writable.
    read_only: BTreeSet<u16>,
    /// Holding registers written by FC 06.
    written: Mutex<BTreeMap<u16, u16>>,
}

impl Unit {
    fn new(meter: MeterUnit) -> Unit {
        let mut mapped = BTreeSet::new();
        let mut read_only = BTreeSet::new();
        for register in meter.map.registers.values() {
            for i in 0..register.data_type.words() {
                let address = register.address.wrapping_add(i);
                mapped.insert((register.function, address));
                if register.function == Function::Holding {
                    read_only.insert(address);
                }
            }
        }
        if let Some(ocmf) = &meter.map.ocmf {
            for i in 0..ocmf.length {
                mapped.insert((Function::Holding, ocmf.address.wrapping_add(i)));
            }
            if let Some(command) = ocmf.command {
                mapped.insert((Function::Holding, command));
            }
        }
        Unit {
            map: meter.map,
            terminals: meter.terminals,
            mapped,
            read_only,
            written: Mutex::new(BTreeMap::new()),
        }
    }

    fn read(
        &self,
        function: Function,
        address: u16,
        count: u16,
        terminals: &Terminals,
    ) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > MAX_READ {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let end = u32::from(address) + u32::from(count);
        if end > 0x1_0000 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let range = || (u32::from(address)..end).map(|a| a as u16);
        let known = |a: u16| {
            self.mapped.contains(&(function, a))
                || (function == Function::Holding && written.contains_key(&a))
        };
        if !range().any(known) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let image = self.map.encode(&terminals.shown(&self.map, now_ms()));
        Ok(range()
            .map(|a| {
                image
                    .get(&(function, a))
                    .copied()
                    .or_else(|| {
                        (function == Function::Holding)
                            .then(|| written.get(&a).copied())
                            .flatten()
                    })
                    .unwrap_or(0)
            })
            .collect())
    }

    fn write(&self, address: u16, value: u16) -> Result<(), ExceptionCode> {
        if self.read_only.contains(&address) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address, value);
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The meters answering on one TCP address.
#[derive(Debug)]
pub struct MeterServer {
    units: Arc<BTreeMap<u8, Unit>>,
    seen: Arc<watch::Sender<u64>>,
}

impl MeterServer {
    /// `Err` names a unit id two of `units` share.
    pub fn new(units: Vec<MeterUnit>) -> Result<MeterServer, u8> {
        let mut by_unit = BTreeMap::new();
        for meter in units {
            let unit = meter.unit;
            if by_unit.insert(unit, Unit::new(meter)).is_some() {
                return Err(unit);
            }
        }
        Ok(MeterServer {
            units: Arc::new(by_unit),
            seen: Arc::new(watch::Sender::new(0)),
        })
    }

    /// How many requests the server has taken off the wire, answered or
    /// not (silence is observable this way; tests wait on it).
    pub fn requests_seen(&self) -> watch::Receiver<u64> {
        self.seen.subscribe()
    }

    /// Serve on `listener` until the future is dropped (which closes every
    /// connection) or accepting fails.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        let address = listener.local_addr()?;
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream: TcpStream, peer: SocketAddr| {
            let units = Arc::clone(&self.units);
            let seen = Arc::clone(&self.seen);
            async move {
                tracing::debug!(%address, %peer, "meter client connected");
                let _ = stream.set_nodelay(true);
                let garble = Arc::new(AtomicBool::new(false));
                let service = MeterConnection {
                    units,
                    seen,
                    garble: Arc::clone(&garble),
                };
                Ok(Some((service, GarbleStream::new(stream, garble))))
            }
        };
        server
            .serve(&on_connected, move |e| {
                tracing::debug!(%address, "meter connection closed: {e}");
            })
            .await
    }
}

/// One client connection's view of the server.
struct MeterConnection {
    units: Arc<BTreeMap<u8, Unit>>,
    seen: Arc<watch::Sender<u64>>,
    /// Set when the next read response must go out malformed.
    garble: Arc<AtomicBool>,
}

impl tokio_modbus::server::Service for MeterConnection {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: SlaveRequest<'static>) -> Self::Future {
        let answer = self.answer(request);
        self.seen.send_modify(|n| *n += 1);
        std::future::ready(answer)
    }
}

impl MeterConnection {
    /// `Ok(None)`: no answer at all.
    fn answer(&self, request: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        let Some(unit) = self.units.get(&request.slave) else {
            tracing::debug!(
                unit = request.slave,
                "request for an absent unit: no answer"
            );
            return Ok(None);
        };
        let terminals = unit.terminals.borrow().clone();
        if terminals.faults.contains(&MeterFaultKind::Offline) {
            return Ok(None);
        }
        if terminals.faults.contains(&MeterFaultKind::Exception) {
            return Err(ExceptionCode::ServerDeviceFailure);
        }
        let response = match request.request {
            Request::ReadInputRegisters(address, count) => Response::ReadInputRegisters(
                unit.read(Function::Input, address, count, &terminals)?,
            ),
            Request::ReadHoldingRegisters(address, count) => Response::ReadHoldingRegisters(
                unit.read(Function::Holding, address, count, &terminals)?,
            ),
            Request::WriteSingleRegister(address, value) => {
                unit.write(address, value)?;
                Response::WriteSingleRegister(address, value)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        if terminals.faults.contains(&MeterFaultKind::Garbage)
            && matches!(
                response,
                Response::ReadInputRegisters(_) | Response::ReadHoldingRegisters(_)
            )
        {
            self.garble.store(true, Ordering::SeqCst);
        }
        Ok(Some(response))
    }
}

/// A connection's socket, able to send the one fault tokio-modbus's server
/// cannot: a malformed frame.
///
/// tokio-modbus encodes every response correctly and keeps the MBAP header
/// to itself, so the `garbage` fault is made below it, on the raw bytes:
/// responses pass through this writer, whose [`Framing`] follows the MBAP
/// framing of the byte stream and garbles the read responses the service
/// marked.
struct GarbleStream {
    inner: TcpStream,
    framing: Framing,
    /// Bytes taken from the codec, not yet on the socket.
    out: Vec<u8>,
    sent: usize,
}

/// Buffer at most this much before writing to the socket.
const OUT_LIMIT: usize = 8192;

impl GarbleStream {
    fn new(inner: TcpStream, garble: Arc<AtomicBool>) -> Self {
        GarbleStream {
            inner,
            framing: Framing::new(garble),
            out: Vec::new(),
            sent: 0,
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// Follows the MBAP framing of an outgoing Modbus TCP byte stream (a 7-byte
/// header whose length field gives the frame's end), however it is split
/// into writes. For a read response (FC 03/04) that starts while `garble`
/// is set, it takes the flag and adds 2 to the PDU's byte count (the
/// frame's 9th byte): the MBAP header stays correct (same transaction id, a
/// length that matches the bytes sent) while the byte count claims one
/// register more than the frame carries, so a client decoding it runs out
/// of bytes and rejects the frame.
struct Framing {
    garble: Arc<AtomicBool>,
    /// Position in the current frame.
    position: usize,
    /// The frame's first 8 bytes: MBAP header and function code.
    head: [u8; 8],
    /// The frame's total length, once its header says.
    frame_len: usize,
    garbling: bool,
}

impl Framing {
    fn new(garble: Arc<AtomicBool>) -> Self {
        Framing {
            garble,
            position: 0,
            head: [0; 8],
            frame_len: usize::MAX,
            garbling: false,
        }
    }

    /// The next bytes of the stream, changed in place where garbled.
    fn pass(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            let p = self.position;
            if p < self.head.len() {
                self.head[p] = *byte;
            }
            match p {
                // MBAP length: unit id + PDU.
                5 => {
                    self.frame_len =
                        6 + usize::from(u16::from_be_bytes([self.head[4], self.head[5]]))
                }
                7 => {
                    self.garbling = matches!(self.head[7], 0x03 | 0x04)
                        && self.frame_len > 8
                        && self.garble.swap(false, Ordering::SeqCst);
                }
                8 if self.garbling => *byte = byte.wrapping_add(2),
                _ => {}
            }
            self.position += 1;
            if self.position >= 6 && self.position >= self.frame_len {
                self.position = 0;
                self.frame_len = usize::MAX;
                self.garbling = false;
            }
        }
    }
}

impl AsyncRead for GarbleStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GarbleStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() - this.sent >= OUT_LIMIT {
            ready!(this.poll_drain(cx))?;
        }
        let from = this.out.len();
        this.out.extend_from_slice(buf);
        this.framing.pass(&mut this.out[from..]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_match_the_bus_contract() {
        let known: Vec<&str> = MeterFaultKind::ALL.iter().map(|k| k.as_str()).collect();
        let mut contract: Vec<&str> = evos_bus::sim::METER_FAULT_KINDS.to_vec();
        contract.retain(|k| *k != "clear");
        assert_eq!(known, contract);
        for kind in MeterFaultKind::ALL {
            assert_eq!(MeterFaultKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(MeterFaultKind::parse("clear"), None);
    }

    #[test]
    fn faults_move_only_the_energy_register() {
        let map = RegisterMap::load("sdm630").unwrap();
        let mut t = Terminals {
            energy_wh: 5_000.0,
            voltage_v: [230.0; 3],
            current_a: [16.0, 16.0, 0.0],
            ..Terminals::default()
        };
        let truth = t.reading(&map, 1);
        assert_eq!(truth.power_w, Some(2.0 * 230.0 * 16.0));
        assert_eq!(
            truth.power_phase_w,
            vec![Some(3680.0), Some(3680.0), Some(0.0)]
        );
        t.faults.insert(MeterFaultKind::Backwards);
        assert_eq!(t.shown(&map, 1).energy_import_wh, 4_000.0);
        t.faults.insert(MeterFaultKind::Jump);
        let shown = t.shown(&map, 1);
        assert_eq!(shown.energy_import_wh, 1_004_000.0);
        assert_eq!(shown.power_w, truth.power_w);
    }

    #[test]
    fn garbling_follows_frames_across_split_writes() {
        // Two read responses around an exception, written in 4-byte pieces:
        // only the marked read responses change, only in their byte count.
        let frames: Vec<u8> = [
            &[0, 1, 0, 0, 0, 7, 1, 4, 4, 0xA, 0xB, 0xC, 0xD][..],
            &[0, 2, 0, 0, 0, 3, 1, 0x84, 4][..],
            &[0, 3, 0, 0, 0, 5, 1, 3, 2, 0xE, 0xF][..],
        ]
        .concat();
        let garble = Arc::new(AtomicBool::new(false));
        let mut framing = Framing::new(Arc::clone(&garble));
        let mut out = Vec::new();
        for (i, chunk) in frames.chunks(4).enumerate() {
            // Marked before the first frame, and while the exception
            // (bytes 13..22) passes: an exception does not take the mark,
            // the next read response (from byte 22) does.
            if i == 0 || i == 5 {
                garble.store(true, Ordering::SeqCst);
            }
            let mut chunk = chunk.to_vec();
            framing.pass(&mut chunk);
            out.extend(chunk);
        }
        let mut want = frames.clone();
        want[8] += 2;
        want[22 + 8] += 2;
        assert_eq!(out, want);
        assert!(!garble.load(Ordering::SeqCst));
    }
}
