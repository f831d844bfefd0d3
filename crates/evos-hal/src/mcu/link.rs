//! The host end of the safety-MCU link, over a UART or a Unix socket.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::frame;
use super::message::{HostMessage, McuMessage, SIM_TYPES, SimMessage};
use crate::board::{BoardEvent, PwmOutput, SafetyBoard};
use crate::{HalError, Result};

/// Where the MCU is: `serial:/dev/ttymxc1` (optionally `?baud=115200`) on a
/// charger, `unix:/path/to/socket` towards the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddress {
    Serial { path: PathBuf, baud: u32 },
    Unix(PathBuf),
}

impl std::str::FromStr for LinkAddress {
    type Err = HalError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| HalError::Address(s.to_owned(), why.to_owned());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            return Ok(LinkAddress::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("serial:") {
            let (path, baud) = match rest.split_once("?baud=") {
                Some((path, baud)) => {
                    (path, baud.parse().map_err(|_| bad("baud is not a number"))?)
                }
                None => (rest, 115_200),
            };
            if path.is_empty() {
                return Err(bad("no device path"));
            }
            return Ok(LinkAddress::Serial {
                path: path.into(),
                baud,
            });
        }
        Err(bad("expected unix:PATH or serial:DEVICE[?baud=N]"))
    }
}

impl std::fmt::Display for LinkAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkAddress::Serial { path, baud } => {
                write!(f, "serial:{}?baud={baud}", path.display())
            }
            LinkAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Frames in and out of a byte stream. Both ends of the link use it: the
/// host here, the simulated MCU in hal-sim.
pub struct McuStream<R, W> {
    reader: BufReader<R>,
    writer: W,
    /// Bytes of a frame not yet delimited; kept across calls so that
    /// `read_frame` is cancel safe.
    pending: Vec<u8>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> McuStream<R, W> {
    pub fn new(reader: R, writer: W) -> Self {
        McuStream {
            reader: BufReader::new(reader),
            writer,
            pending: Vec::new(),
        }
    }

    /// The next frame as (type, payload); `Ok(None)` at end of stream, `Err`
    /// for a frame that fails COBS or CRC (the stream stays usable).
    pub async fn read_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        loop {
            let n = self
                .reader
                .read_until(0, &mut self.pending)
                .await
                .map_err(|e| HalError::io("MCU link", e))?;
            if n == 0 {
                return Ok(None);
            }
            if self.pending.last() != Some(&0) {
                continue;
            }
            let wire = std::mem::take(&mut self.pending);
            let body = &wire[..wire.len() - 1];
            if body.is_empty() {
                continue; // idle delimiters
            }
            return frame::decode(body).map(Some);
        }
    }

    pub async fn write_frame(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        let wire = frame::encode(kind, payload);
        self.writer
            .write_all(&wire)
            .await
            .map_err(|e| HalError::io("MCU link", e))?;
        self.writer
            .flush()
            .await
            .map_err(|e| HalError::io("MCU link", e))
    }
}

type BoxedReader = Box<dyn AsyncRead + Send + Unpin>;
type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A [`SafetyBoard`] behind a safety MCU.
pub struct McuBoard {
    writer: McuStream<tokio::io::Empty, BoxedWriter>,
    events: mpsc::Receiver<BoardEvent>,
    reader_task: tokio::task::JoinHandle<()>,
    seq: u32,
}

impl McuBoard {
    /// Open the link and ask the MCU for its status.
    pub async fn connect(address: &LinkAddress) -> Result<Self> {
        let (reader, writer): (BoxedReader, BoxedWriter) = match address {
            LinkAddress::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| HalError::io(format!("connecting to {}", path.display()), e))?;
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            LinkAddress::Serial { path, baud } => {
                let builder = tokio_serial::new(path.to_string_lossy(), *baud);
                let port = tokio_serial::SerialStream::open(&builder).map_err(|e| {
                    HalError::io(
                        format!("opening {}", path.display()),
                        std::io::Error::other(e),
                    )
                })?;
                let (r, w) = tokio::io::split(port);
                (Box::new(r), Box::new(w))
            }
        };
        let simulated = matches!(address, LinkAddress::Unix(_));
        Self::from_stream(reader, writer, address.to_string(), simulated).await
    }

    /// A board over an already open byte stream. Only a `simulated` link
    /// (the simulator's Unix socket) accepts simulator messages.
    pub async fn from_stream(
        reader: BoxedReader,
        writer: BoxedWriter,
        name: String,
        simulated: bool,
    ) -> Result<Self> {
        let (tx, events) = mpsc::channel(64);
        let reader_task = tokio::spawn(read_events(
            McuStream::new(reader, tokio::io::empty()),
            tx,
            name,
            simulated,
        ));
        let mut board = McuBoard {
            writer: McuStream::new(tokio::io::empty(), writer),
            events,
            reader_task,
            seq: 0,
        };
        board.send(HostMessage::GetStatus).await?;
        Ok(board)
    }

    async fn send(&mut self, msg: HostMessage) -> Result<()> {
        let (kind, payload) = msg.encode();
        self.writer.write_frame(kind, &payload).await
    }
}

impl Drop for McuBoard {
    fn drop(&mut self) {
        self.reader_task.abort();
    }
}

async fn read_events(
    mut stream: McuStream<BoxedReader, tokio::io::Empty>,
    tx: mpsc::Sender<BoardEvent>,
    name: String,
    simulated: bool,
) {
    loop {
        let (kind, payload) = match stream.read_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                tracing::warn!(link = %name, "MCU link closed");
                return;
            }
            Err(HalError::Frame(why)) => {
                tracing::warn!(link = %name, "dropped a bad frame from the MCU: {why}");
                continue;
            }
            Err(e) => {
                tracing::warn!(link = %name, "MCU link failed: {e}");
                return;
            }
        };
        if simulated && SIM_TYPES.contains(&kind) {
            match SimMessage::decode(kind, &payload) {
                Ok(SimMessage::DcDemand {
                    voltage_v,
                    current_a,
                }) => {
                    if tx
                        .send(BoardEvent::DcDemand {
                            voltage_v,
                            current_a,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => tracing::warn!(link = %name, "ignored a simulator frame: {e}"),
            }
            continue;
        }
        let event = match McuMessage::decode(kind, &payload) {
            Ok(McuMessage::Status(s)) => BoardEvent::Status(s),
            Ok(McuMessage::Measurement(m)) => BoardEvent::Measurement(m),
            Ok(McuMessage::Token(t)) => BoardEvent::Token(t),
            Ok(McuMessage::KeepAliveAck { .. }) => continue,
            Ok(McuMessage::Nack {
                rejected_type,
                reason,
            }) => {
                tracing::error!(link = %name, "MCU rejected a frame of type {rejected_type:#04x}: {reason:?}");
                continue;
            }
            Err(e) => {
                tracing::warn!(link = %name, "ignored a frame from the MCU: {e}");
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

impl SafetyBoard for McuBoard {
    async fn set_pwm(&mut self, output: PwmOutput) -> Result<()> {
        self.send(HostMessage::SetPwm(output)).await
    }
    async fn set_contactors(&mut self, closed: bool, phases: u8) -> Result<()> {
        self.send(HostMessage::SetContactors { closed, phases })
            .await
    }
    async fn set_lock(&mut self, locked: bool) -> Result<()> {
        self.send(HostMessage::SetLock { locked }).await
    }
    async fn keep_alive(&mut self) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.send(HostMessage::KeepAlive { seq: self.seq }).await
    }
    async fn next_event(&mut self) -> Result<BoardEvent> {
        self.events.recv().await.ok_or(HalError::LinkDown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::{BoardStatus, CpState, LockState};

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "serial:/dev/ttyS1?baud=9600"
                .parse::<LinkAddress>()
                .unwrap(),
            LinkAddress::Serial {
                path: "/dev/ttyS1".into(),
                baud: 9600
            }
        );
        assert_eq!(
            "unix:/tmp/x".parse::<LinkAddress>().unwrap(),
            LinkAddress::Unix("/tmp/x".into())
        );
        let err = "tcp:1.2.3.4"
            .parse::<LinkAddress>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("tcp:1.2.3.4"), "{err}");
        assert!("serial:/dev/x?baud=fast".parse::<LinkAddress>().is_err());
    }

    #[tokio::test]
    async fn board_talks_frames_and_survives_garbage() {
        let (host, mcu) = tokio::io::duplex(1024);
        let (hr, hw) = tokio::io::split(host);
        let mut board = McuBoard::from_stream(Box::new(hr), Box::new(hw), "test".into(), false)
            .await
            .unwrap();
        let (mr, mw) = tokio::io::split(mcu);
        let mut mcu = McuStream::new(mr, mw);

        let (kind, payload) = mcu.read_frame().await.unwrap().unwrap();
        assert_eq!(
            HostMessage::decode(kind, &payload).unwrap(),
            HostMessage::GetStatus
        );

        // Line noise, then a good Status frame: the host resynchronises.
        mcu.writer
            .write_all(&[0x13, 0x37, 0xff, 0x00])
            .await
            .unwrap();
        let status = BoardStatus {
            cp: CpState::B,
            cable_rating_a: None,
            contactors_closed: false,
            lock: LockState::Unlocked,
            rcd_tripped: false,
            diode_fault: false,
        };
        let (k, p) = McuMessage::Status(status.clone()).encode();
        mcu.write_frame(k, &p).await.unwrap();
        assert_eq!(
            board.next_event().await.unwrap(),
            BoardEvent::Status(status)
        );

        board.set_contactors(true, 3).await.unwrap();
        let (kind, payload) = mcu.read_frame().await.unwrap().unwrap();
        assert_eq!(
            HostMessage::decode(kind, &payload).unwrap(),
            HostMessage::SetContactors {
                closed: true,
                phases: 3
            }
        );

        drop(mcu);
        assert!(matches!(board.next_event().await, Err(HalError::LinkDown)));
    }
}
