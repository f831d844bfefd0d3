//! CAN bus access: classic CAN 2.0 data frames (ISO 11898-1, 11- and 29-bit
//! identifiers, up to 8 data bytes) over Linux SocketCAN on a charger, or over
//! the simulator's CAN link on a desktop.
//!
//! # The simulator's CAN link
//!
//! A Unix datagram socket. Each datagram is exactly one Linux
//! `struct can_frame` (`<linux/can.h>`), 16 bytes, so the bytes are the ones
//! SocketCAN carries:
//!
//! ```text
//! 0..4   can_id  u32 little-endian; bit 31 CAN_EFF_FLAG for 29-bit ids
//! 4      len     0..=8
//! 5..8   pad, res0, len8_dlc: sent as 0, ignored on receipt
//! 8..16  data    bytes past `len` sent as 0, ignored on receipt
//! ```
//!
//! Remote (`CAN_RTR_FLAG`) and error (`CAN_ERR_FLAG`) frames are not carried.
//! The simulator binds the hub socket ([`SimCanHub`]); each client
//! ([`SimCanBus`]) binds its own socket and sends to the hub, which forwards
//! every frame to every other client, as a bus does. An empty datagram only
//! registers its sender with the hub: a client sends one on connect so it
//! hears the bus before it first transmits.

use std::collections::VecDeque;
use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, watch};

use crate::{HalError, Result};

/// Set in `can_id` for a 29-bit identifier.
pub const CAN_EFF_FLAG: u32 = 0x8000_0000;
/// Set in `can_id` for a remote transmission request.
pub const CAN_RTR_FLAG: u32 = 0x4000_0000;
/// Set in `can_id` for an error frame.
pub const CAN_ERR_FLAG: u32 = 0x2000_0000;
/// Largest 11-bit identifier.
pub const MAX_STANDARD_ID: u32 = 0x7FF;
/// Largest 29-bit identifier.
pub const MAX_EXTENDED_ID: u32 = 0x1FFF_FFFF;
/// Size of one `struct can_frame` on the wire.
pub const WIRE_LEN: usize = 16;

/// One classic CAN data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CanFrame {
    id: u32,
    extended: bool,
    len: u8,
    // Bytes past `len` stay zero, so the derived equality compares payloads.
    data: [u8; 8],
}

impl CanFrame {
    /// A data frame; fails if `id` does not fit 11 bits (29 bits when
    /// `extended`) or `data` is longer than 8 bytes.
    pub fn new(id: u32, extended: bool, data: &[u8]) -> Result<Self> {
        let max = if extended {
            MAX_EXTENDED_ID
        } else {
            MAX_STANDARD_ID
        };
        if id > max {
            let kind = if extended { "29-bit" } else { "11-bit" };
            return Err(HalError::Frame(format!(
                "CAN id {id:#x} does not fit {kind}"
            )));
        }
        if data.len() > 8 {
            return Err(HalError::Frame(format!(
                "{} data bytes; classic CAN carries at most 8",
                data.len()
            )));
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        Ok(CanFrame {
            id,
            extended,
            len: data.len() as u8,
            data: bytes,
        })
    }

    /// A frame with an 11-bit identifier.
    pub fn standard(id: u32, data: &[u8]) -> Result<Self> {
        Self::new(id, false, data)
    }

    /// A frame with a 29-bit identifier.
    pub fn extended(id: u32, data: &[u8]) -> Result<Self> {
        Self::new(id, true, data)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn is_extended(&self) -> bool {
        self.extended
    }

    pub fn data(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }

    /// The 16-byte Linux `struct can_frame`.
    pub fn to_wire(&self) -> [u8; WIRE_LEN] {
        let can_id = if self.extended {
            self.id | CAN_EFF_FLAG
        } else {
            self.id
        };
        let mut wire = [0u8; WIRE_LEN];
        wire[..4].copy_from_slice(&can_id.to_le_bytes());
        wire[4] = self.len;
        wire[8..].copy_from_slice(&self.data);
        wire
    }

    /// Parse a 16-byte Linux `struct can_frame`.
    pub fn from_wire(wire: &[u8]) -> Result<Self> {
        let Ok(wire) = <&[u8; WIRE_LEN]>::try_from(wire) else {
            return Err(HalError::Frame(format!(
                "CAN datagram of {} bytes; a struct can_frame has {WIRE_LEN}",
                wire.len()
            )));
        };
        let can_id = u32::from_le_bytes([wire[0], wire[1], wire[2], wire[3]]);
        if can_id & CAN_ERR_FLAG != 0 {
            return Err(HalError::Frame(format!(
                "CAN error frame ({can_id:#010x}) is not carried"
            )));
        }
        if can_id & CAN_RTR_FLAG != 0 {
            return Err(HalError::Frame(format!(
                "CAN remote frame ({can_id:#010x}) is not carried"
            )));
        }
        let len = wire[4];
        if len > 8 {
            return Err(HalError::Frame(format!("CAN frame length {len} is over 8")));
        }
        let extended = can_id & CAN_EFF_FLAG != 0;
        let id = can_id & !CAN_EFF_FLAG;
        Self::new(id, extended, &wire[8..8 + usize::from(len)])
    }
}

/// A CAN bus endpoint.
pub trait CanBus: Send {
    /// Queue one frame for transmission.
    fn send(&mut self, frame: &CanFrame) -> impl Future<Output = Result<()>> + Send;
    /// The next frame from the bus. Cancel safe: a frame is never lost when
    /// the future is dropped. `Err(Frame)` reports one malformed frame; the
    /// bus stays usable.
    fn recv(&mut self) -> impl Future<Output = Result<CanFrame>> + Send;
}

/// CAN controller states that SocketCAN reports in error frames
/// (`linux/can/error.h`). Error-active/warning/passive are reported and
/// the bus stays usable; after bus-off the controller sends nothing until
/// it restarts (the kernel's `restart-ms`, or `ip link set … type can
/// restart`), so a client reopens its socket with back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerState {
    /// Error counters above 96 (warning level).
    ErrorWarning,
    /// Error counters above 127: the controller no longer sends active
    /// error flags; frames still flow.
    ErrorPassive,
    /// Back to error-active.
    ErrorActive,
    /// Transmit error counter above 255: off the bus.
    BusOff,
    /// The controller restarted after bus-off.
    Restarted,
}

impl std::fmt::Display for ControllerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControllerState::ErrorWarning => "error warning",
            ControllerState::ErrorPassive => "error passive",
            ControllerState::ErrorActive => "error active again",
            ControllerState::BusOff => "bus-off",
            ControllerState::Restarted => "restarted after bus-off",
        })
    }
}

/// `linux/can/error.h`: error class bits in `can_id`, details in data.
mod error_frame {
    pub const CAN_ERR_CRTL: u32 = 0x0000_0004;
    pub const CAN_ERR_BUSOFF: u32 = 0x0000_0040;
    pub const CAN_ERR_RESTARTED: u32 = 0x0000_0100;
    /// data[1] when `CAN_ERR_CRTL`.
    pub const CAN_ERR_CRTL_RX_WARNING: u8 = 0x04;
    pub const CAN_ERR_CRTL_TX_WARNING: u8 = 0x08;
    pub const CAN_ERR_CRTL_RX_PASSIVE: u8 = 0x10;
    pub const CAN_ERR_CRTL_TX_PASSIVE: u8 = 0x20;
    pub const CAN_ERR_CRTL_ACTIVE: u8 = 0x40;
}

/// The controller state an error frame reports, if it reports one (bus
/// errors, lost arbitration and the like report none). The most severe
/// state wins when a frame carries several.
pub fn controller_state(error_bits: u32, data: &[u8]) -> Option<ControllerState> {
    use error_frame::*;
    if error_bits & CAN_ERR_BUSOFF != 0 {
        return Some(ControllerState::BusOff);
    }
    if error_bits & CAN_ERR_CRTL != 0 {
        let detail = data.get(1).copied().unwrap_or(0);
        if detail & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE) != 0 {
            return Some(ControllerState::ErrorPassive);
        }
        if detail & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING) != 0 {
            return Some(ControllerState::ErrorWarning);
        }
        if detail & CAN_ERR_CRTL_ACTIVE != 0 {
            return Some(ControllerState::ErrorActive);
        }
    }
    if error_bits & CAN_ERR_RESTARTED != 0 {
        return Some(ControllerState::Restarted);
    }
    None
}

/// A real CAN interface through SocketCAN.
pub struct SocketCanBus {
    socket: socketcan::tokio::CanSocket,
    ifname: String,
}

impl SocketCanBus {
    /// Open a raw CAN socket on `ifname` (e.g. `can0`, `vcan0`).
    pub fn open(ifname: &str) -> Result<Self> {
        use socketcan::SocketOptions;
        let socket = socketcan::tokio::CanSocket::open(ifname)
            .map_err(|e| HalError::io(format!("opening CAN interface {ifname}"), e))?;
        // Controller state changes arrive as error frames.
        socket
            .set_error_filter_accept_all()
            .map_err(|e| HalError::io(format!("asking {ifname} for error frames"), e))?;
        Ok(SocketCanBus {
            socket,
            ifname: ifname.to_owned(),
        })
    }
}

impl CanBus for SocketCanBus {
    async fn send(&mut self, frame: &CanFrame) -> Result<()> {
        use socketcan::{EmbeddedFrame, ExtendedId, Id, StandardId};
        let id = if frame.is_extended() {
            ExtendedId::new(frame.id()).map(Id::Extended)
        } else {
            u16::try_from(frame.id())
                .ok()
                .and_then(StandardId::new)
                .map(Id::Standard)
        };
        // CanFrame's constructor already bounds id and length.
        let out = id
            .and_then(|id| socketcan::CanFrame::new(id, frame.data()))
            .ok_or_else(|| HalError::Frame(format!("cannot send {frame:?}")))?;
        self.socket
            .write_frame(out)
            .await
            .map_err(|e| HalError::io(format!("sending on {}", self.ifname), e))
    }

    async fn recv(&mut self) -> Result<CanFrame> {
        use socketcan::{EmbeddedFrame, Id};
        loop {
            // Readiness-based: one read syscall per frame, so cancel safe.
            let frame = self
                .socket
                .read_frame()
                .await
                .map_err(|e| HalError::io(format!("receiving on {}", self.ifname), e))?;
            let data = match frame {
                socketcan::CanFrame::Data(data) => data,
                socketcan::CanFrame::Error(error) => {
                    match controller_state(error.error_bits(), error.data()) {
                        Some(state) => {
                            return Err(HalError::CanController {
                                interface: self.ifname.clone(),
                                state,
                            });
                        }
                        None => {
                            tracing::debug!(interface = %self.ifname, bits = error.error_bits(), "CAN error frame");
                            continue;
                        }
                    }
                }
                socketcan::CanFrame::Remote(_) => continue,
            };
            return match data.id() {
                Id::Standard(id) => CanFrame::standard(u32::from(id.as_raw()), data.data()),
                Id::Extended(id) => CanFrame::extended(id.as_raw(), data.data()),
            };
        }
    }
}

/// How long the hub waits before retrying frames a slow client could not
/// take (its socket queue was full).
const HUB_RETRY: Duration = Duration::from_millis(2);
/// Frames the hub holds per slow client before dropping the oldest, as a CAN
/// controller's receive FIFO overflows.
const HUB_BACKLOG: usize = 1024;

/// A client of the simulator's CAN link.
pub struct SimCanBus {
    socket: UnixDatagram,
    hub: PathBuf,
    own_path: PathBuf,
}

impl SimCanBus {
    /// Connect to the hub at `hub`, binding a fresh socket next to it (the
    /// simulator's runtime directory) that is removed again on drop.
    pub async fn connect(hub: impl AsRef<Path>) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let hub = hub.as_ref();
        let name = hub
            .file_name()
            .map_or_else(|| "can".into(), |n| n.to_string_lossy().into_owned());
        let own = hub.with_file_name(format!(
            "{name}.client-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Self::connect_from(hub, own).await
    }

    /// Connect to the hub at `hub` from a socket bound at `own_path`.
    pub async fn connect_from(hub: impl AsRef<Path>, own_path: impl AsRef<Path>) -> Result<Self> {
        let (hub, own_path) = (hub.as_ref().to_owned(), own_path.as_ref().to_owned());
        // A leftover from a crashed client would make bind fail.
        remove_stale_socket(&own_path)?;
        let socket = UnixDatagram::bind(&own_path)
            .map_err(|e| HalError::io(format!("binding {}", own_path.display()), e))?;
        let bus = SimCanBus {
            socket,
            hub,
            own_path,
        };
        bus.register().await?;
        Ok(bus)
    }

    async fn register(&self) -> Result<()> {
        self.socket
            .connect(&self.hub)
            .map_err(|e| HalError::io(format!("connecting to {}", self.hub.display()), e))?;
        self.socket
            .send(&[])
            .await
            .map_err(|e| HalError::io(format!("registering with {}", self.hub.display()), e))?;
        Ok(())
    }
}

impl Drop for SimCanBus {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.own_path);
    }
}

impl CanBus for SimCanBus {
    async fn send(&mut self, frame: &CanFrame) -> Result<()> {
        let wire = frame.to_wire();
        match self.socket.send(&wire).await {
            Ok(_) => Ok(()),
            // The simulator restarted: its new socket is a new peer.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
                self.register().await?;
                self.socket
                    .send(&wire)
                    .await
                    .map(drop)
                    .map_err(|e| HalError::io(format!("sending to {}", self.hub.display()), e))
            }
            Err(e) => Err(HalError::io(
                format!("sending to {}", self.hub.display()),
                e,
            )),
        }
    }

    async fn recv(&mut self) -> Result<CanFrame> {
        // One byte more than a frame, so an oversized datagram shows.
        let mut buf = [0u8; WIRE_LEN + 1];
        loop {
            let n =
                self.socket.recv(&mut buf).await.map_err(|e| {
                    HalError::io(format!("receiving from {}", self.hub.display()), e)
                })?;
            if n == 0 {
                continue;
            }
            return CanFrame::from_wire(&buf[..n]);
        }
    }
}

/// The simulator's side of the CAN link: a bus that every [`SimCanBus`]
/// attaches to. A background task forwards each client's frame to every other
/// client and to the simulator itself, which reads them with
/// [`CanBus::recv`] and transmits to all clients with [`CanBus::send`].
pub struct SimCanHub {
    path: PathBuf,
    to_task: mpsc::Sender<CanFrame>,
    from_task: mpsc::Receiver<Result<CanFrame>>,
    peers: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl SimCanHub {
    /// Bind the hub socket at `path` (replacing a stale one left by a crashed
    /// simulator, but never a live hub).
    pub async fn bind(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        if path.exists() {
            let probe =
                UnixDatagram::unbound().map_err(|e| HalError::io("creating a probe socket", e))?;
            if probe.connect(&path).is_ok() {
                return Err(HalError::Address(
                    format!("sim:{}", path.display()),
                    "another CAN hub is live there".into(),
                ));
            }
            remove_stale_socket(&path)?;
        }
        let socket = UnixDatagram::bind(&path)
            .map_err(|e| HalError::io(format!("binding {}", path.display()), e))?;
        let (to_task, from_sim) = mpsc::channel(256);
        let (to_sim, from_task) = mpsc::channel(HUB_BACKLOG);
        let (peer_count, peers) = watch::channel(0);
        let task = HubTask {
            socket,
            peers: Vec::new(),
            to_sim,
            from_sim,
            peer_count,
            sim_overflowing: false,
        };
        Ok(SimCanHub {
            path,
            to_task,
            from_task,
            peers,
            task: tokio::spawn(task.run()),
        })
    }

    /// How many clients the hub has heard from.
    pub fn peer_count(&self) -> usize {
        *self.peers.borrow()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SimCanHub {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl CanBus for SimCanHub {
    async fn send(&mut self, frame: &CanFrame) -> Result<()> {
        self.to_task
            .send(*frame)
            .await
            .map_err(|_| HalError::LinkDown)
    }

    async fn recv(&mut self) -> Result<CanFrame> {
        self.from_task.recv().await.ok_or(HalError::LinkDown)?
    }
}

struct Peer {
    path: PathBuf,
    backlog: VecDeque<[u8; WIRE_LEN]>,
    /// Dropping frames; warn once per episode, not per frame.
    overflowing: bool,
}

struct HubTask {
    socket: UnixDatagram,
    peers: Vec<Peer>,
    to_sim: mpsc::Sender<Result<CanFrame>>,
    from_sim: mpsc::Receiver<CanFrame>,
    peer_count: watch::Sender<usize>,
    sim_overflowing: bool,
}

impl HubTask {
    async fn run(mut self) {
        let mut buf = [0u8; WIRE_LEN + 1];
        loop {
            let retry = self.peers.iter().any(|p| !p.backlog.is_empty());
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        let from = from.as_pathname().map(Path::to_owned);
                        self.on_datagram(&buf[..n], from);
                    }
                    Err(e) => tracing::warn!("CAN hub: receive failed: {e}"),
                },
                frame = self.from_sim.recv() => match frame {
                    Some(frame) => self.forward(frame.to_wire(), None),
                    // The SimCanHub handle is gone.
                    None => return,
                },
                _ = tokio::time::sleep(HUB_RETRY), if retry => {}
            }
            self.flush();
        }
    }

    fn on_datagram(&mut self, bytes: &[u8], from: Option<PathBuf>) {
        if let Some(path) = &from
            && !self.peers.iter().any(|p| &p.path == path)
        {
            tracing::debug!("CAN hub: new client {}", path.display());
            self.peers.push(Peer {
                path: path.clone(),
                backlog: VecDeque::new(),
                overflowing: false,
            });
            self.peer_count.send_replace(self.peers.len());
        }
        if bytes.is_empty() {
            return; // registration only
        }
        let frame = CanFrame::from_wire(bytes).map_err(|e| {
            let who = from
                .as_deref()
                .map_or("an unnamed client".into(), |p| p.display().to_string());
            HalError::Frame(format!("from {who}: {e}"))
        });
        if let Ok(frame) = &frame {
            self.forward(frame.to_wire(), from.as_deref());
        }
        match self.to_sim.try_send(frame) {
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.sim_overflowing {
                    tracing::warn!("CAN hub: the simulator is not reading; dropping frames");
                }
                self.sim_overflowing = true;
            }
            // Closed: the handle is going away and the task with it.
            _ => self.sim_overflowing = false,
        }
    }

    /// Queue `wire` for every peer but `except` (the sender).
    fn forward(&mut self, wire: [u8; WIRE_LEN], except: Option<&Path>) {
        for peer in &mut self.peers {
            if Some(peer.path.as_path()) == except {
                continue;
            }
            if peer.backlog.len() >= HUB_BACKLOG {
                peer.backlog.pop_front();
                if !peer.overflowing {
                    tracing::warn!(
                        "CAN hub: {} is not reading; dropping frames",
                        peer.path.display()
                    );
                }
                peer.overflowing = true;
            }
            peer.backlog.push_back(wire);
        }
    }

    /// Send what each peer's socket takes without blocking; a full socket
    /// keeps the rest for the next round, a vanished one drops the peer.
    fn flush(&mut self) {
        let socket = &self.socket;
        let before = self.peers.len();
        self.peers.retain_mut(|peer| {
            while let Some(wire) = peer.backlog.front() {
                match socket.try_send_to(wire, &peer.path) {
                    Ok(_) => {
                        peer.backlog.pop_front();
                        peer.overflowing = false;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(e) => {
                        tracing::debug!("CAN hub: client {} left: {e}", peer.path.display());
                        return false;
                    }
                }
            }
            true
        });
        if self.peers.len() != before {
            self.peer_count.send_replace(self.peers.len());
        }
    }
}

/// Remove `path` if it is a socket nobody listens on any more; refuse to
/// touch anything else.
fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| HalError::io(format!("removing stale socket {}", path.display()), e)),
        Ok(_) => Err(HalError::Address(
            path.display().to_string(),
            "exists and is not a socket".into(),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HalError::io(format!("checking {}", path.display()), e)),
    }
}

/// Where a CAN bus is: `socketcan:can0` on a charger, `sim:/path/to/hub.sock`
/// towards the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanAddress {
    SocketCan(String),
    Sim(PathBuf),
}

impl std::str::FromStr for CanAddress {
    type Err = HalError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| HalError::Address(s.to_owned(), why.to_owned());
        if let Some(ifname) = s.strip_prefix("socketcan:") {
            // Linux interface names: 1..=15 bytes (IFNAMSIZ - 1), no '/' or blanks.
            if ifname.is_empty() || ifname.len() > 15 {
                return Err(bad("an interface name has 1 to 15 characters"));
            }
            if ifname.contains(|c: char| c == '/' || c.is_whitespace()) {
                return Err(bad("an interface name has no '/' or blanks"));
            }
            return Ok(CanAddress::SocketCan(ifname.to_owned()));
        }
        if let Some(path) = s.strip_prefix("sim:") {
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            return Ok(CanAddress::Sim(path.into()));
        }
        Err(bad("expected socketcan:IFNAME or sim:PATH"))
    }
}

impl std::fmt::Display for CanAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CanAddress::SocketCan(ifname) => write!(f, "socketcan:{ifname}"),
            CanAddress::Sim(path) => write!(f, "sim:{}", path.display()),
        }
    }
}

impl CanAddress {
    /// Open the bus this address names.
    pub async fn open(&self) -> Result<AnyCanBus> {
        Ok(match self {
            CanAddress::SocketCan(ifname) => AnyCanBus::SocketCan(SocketCanBus::open(ifname)?),
            CanAddress::Sim(hub) => AnyCanBus::Sim(SimCanBus::connect(hub).await?),
        })
    }
}

/// The bus a [`CanAddress`] opens.
pub enum AnyCanBus {
    SocketCan(SocketCanBus),
    Sim(SimCanBus),
}

impl CanBus for AnyCanBus {
    async fn send(&mut self, frame: &CanFrame) -> Result<()> {
        match self {
            AnyCanBus::SocketCan(bus) => bus.send(frame).await,
            AnyCanBus::Sim(bus) => bus.send(frame).await,
        }
    }

    async fn recv(&mut self) -> Result<CanFrame> {
        match self {
            AnyCanBus::SocketCan(bus) => bus.recv().await,
            AnyCanBus::Sim(bus) => bus.recv().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_frame_bytes_are_struct_can_frame() {
        let frame = CanFrame::standard(0x123, &[0xde, 0xad, 0xbe]).unwrap();
        assert_eq!(
            frame.to_wire(),
            [
                0x23, 0x01, 0x00, 0x00, 3, 0, 0, 0, 0xde, 0xad, 0xbe, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(CanFrame::from_wire(&frame.to_wire()).unwrap(), frame);
    }

    #[test]
    fn extended_frame_bytes_carry_eff_flag() {
        let frame = CanFrame::extended(0x1806_E5F4, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(
            frame.to_wire(),
            [0xF4, 0xE5, 0x06, 0x98, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        let back = CanFrame::from_wire(&frame.to_wire()).unwrap();
        assert_eq!(back, frame);
        assert!(back.is_extended());
        assert_eq!(back.id(), 0x1806_E5F4);
    }

    #[test]
    fn constructor_bounds_id_and_length() {
        assert!(CanFrame::standard(0x7FF, &[]).is_ok());
        assert!(CanFrame::standard(0x800, &[]).is_err());
        assert!(CanFrame::extended(0x1FFF_FFFF, &[]).is_ok());
        assert!(CanFrame::extended(0x2000_0000, &[]).is_err());
        assert!(CanFrame::standard(1, &[0; 9]).is_err());
    }

    #[test]
    fn malformed_datagrams_are_rejected() {
        let ok = CanFrame::standard(1, &[1]).unwrap().to_wire();
        let msg = |b: &[u8]| CanFrame::from_wire(b).unwrap_err().to_string();
        assert!(msg(&ok[..15]).contains("15 bytes"));
        let mut long = [0u8; 17];
        long[..16].copy_from_slice(&ok);
        assert!(msg(&long).contains("17 bytes"));
        let mut bad_len = ok;
        bad_len[4] = 9;
        assert!(msg(&bad_len).contains("length 9"));
        let mut rtr = ok;
        rtr[3] |= 0x40;
        assert!(msg(&rtr).contains("remote"));
        let mut err = ok;
        err[3] |= 0x20;
        assert!(msg(&err).contains("error frame"));
        // An 11-bit frame with bits above 11 set.
        let mut wide = ok;
        wide[1] = 0x08;
        assert!(msg(&wide).contains("11-bit"));
    }

    #[test]
    fn error_frames_report_controller_states_as_linux_can_error_h_lays_them_out() {
        // CAN_ERR_CRTL with data[1] = CAN_ERR_CRTL_TX_PASSIVE.
        assert_eq!(
            controller_state(0x04, &[0, 0x20, 0, 0, 0, 0, 0, 0]),
            Some(ControllerState::ErrorPassive)
        );
        assert_eq!(
            controller_state(0x04, &[0, 0x10]),
            Some(ControllerState::ErrorPassive)
        );
        assert_eq!(
            controller_state(0x04, &[0, 0x08]),
            Some(ControllerState::ErrorWarning)
        );
        assert_eq!(
            controller_state(0x04, &[0, 0x40]),
            Some(ControllerState::ErrorActive)
        );
        // CAN_ERR_BUSOFF wins over anything else in the frame.
        assert_eq!(
            controller_state(0x44, &[0, 0x20]),
            Some(ControllerState::BusOff)
        );
        assert_eq!(
            controller_state(0x100, &[]),
            Some(ControllerState::Restarted)
        );
        // A bus error (CAN_ERR_BUSERROR 0x80) or lost arbitration (0x02): no state.
        assert_eq!(controller_state(0x80, &[0; 8]), None);
        assert_eq!(controller_state(0x02, &[3]), None);
        assert_eq!(controller_state(0x04, &[]), None);
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "socketcan:can0".parse::<CanAddress>().unwrap(),
            CanAddress::SocketCan("can0".into())
        );
        assert_eq!(
            "sim:/run/evos/can.sock".parse::<CanAddress>().unwrap(),
            CanAddress::Sim("/run/evos/can.sock".into())
        );
        for bad in ["can0", "socketcan:", "socketcan:a/b", "sim:", "tcp:1.2.3.4"] {
            let err = bad.parse::<CanAddress>().unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        let addr = CanAddress::Sim("/x".into());
        assert_eq!(addr.to_string().parse::<CanAddress>().unwrap(), addr);
    }

    fn frame() -> impl Strategy<Value = CanFrame> {
        (
            any::<bool>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..=8),
        )
            .prop_map(|(extended, id, data)| {
                let id = if extended {
                    id & MAX_EXTENDED_ID
                } else {
                    id & MAX_STANDARD_ID
                };
                CanFrame::new(id, extended, &data).unwrap()
            })
    }

    proptest! {
        #[test]
        fn wire_round_trip(f in frame()) {
            prop_assert_eq!(CanFrame::from_wire(&f.to_wire()).unwrap(), f);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(f) = CanFrame::from_wire(&bytes) {
                prop_assert!(f.data().len() <= 8);
            }
        }
    }

    async fn within<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("timed out")
    }

    #[tokio::test]
    async fn hub_forwards_between_clients_and_to_the_simulator() {
        let dir = tempfile::tempdir().unwrap();
        let hub_path = dir.path().join("can.sock");
        let mut hub = SimCanHub::bind(&hub_path).await.unwrap();
        let addr: CanAddress = format!("sim:{}", hub_path.display()).parse().unwrap();
        let mut a = addr.open().await.unwrap();
        let mut b = SimCanBus::connect(&hub_path).await.unwrap();
        within(async {
            while hub.peer_count() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;

        let from_a = CanFrame::extended(0x0200_0001, &[1, 2, 3]).unwrap();
        a.send(&from_a).await.unwrap();
        assert_eq!(within(b.recv()).await.unwrap(), from_a);
        assert_eq!(within(hub.recv()).await.unwrap(), from_a);

        let from_b = CanFrame::standard(0x7FF, &[]).unwrap();
        b.send(&from_b).await.unwrap();
        assert_eq!(within(a.recv()).await.unwrap(), from_b);
        assert_eq!(within(hub.recv()).await.unwrap(), from_b);

        // The simulator transmits to everyone; a burst over the socket queue
        // length arrives complete and in order.
        let burst: Vec<CanFrame> = (0..40u8)
            .map(|i| CanFrame::standard(0x100 + u32::from(i), &[i]).unwrap())
            .collect();
        for f in &burst {
            hub.send(f).await.unwrap();
        }
        for f in &burst {
            assert_eq!(within(a.recv()).await.unwrap(), *f);
        }
        for f in &burst {
            assert_eq!(within(b.recv()).await.unwrap(), *f);
        }

        // A malformed datagram reaches the simulator as an error, not a panic,
        // and is not forwarded.
        let raw = UnixDatagram::unbound().unwrap();
        raw.send_to(&[1, 2, 3], &hub_path).await.unwrap();
        let err = within(hub.recv()).await.unwrap_err().to_string();
        assert!(err.contains("3 bytes"), "{err}");

        // A client that leaves is forgotten.
        drop(b);
        hub.send(&from_a).await.unwrap();
        assert_eq!(within(a.recv()).await.unwrap(), from_a);
        within(async {
            while hub.peer_count() > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn second_hub_on_a_live_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("can.sock");
        let _hub = SimCanHub::bind(&path).await.unwrap();
        let err = SimCanHub::bind(&path).await.err().unwrap().to_string();
        assert!(err.contains("live"), "{err}");
    }
}
