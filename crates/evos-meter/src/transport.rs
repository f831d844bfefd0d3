//! Modbus transports: TCP (Modbus Messaging on TCP/IP V1.0b) and RTU over a
//! serial line (Modbus over Serial Line V1.02), both through tokio-modbus.
//!
//! One [`ModbusBus`] per connection, shared by every meter on it: several
//! meters on one RS-485 line (or behind one TCP gateway) are told apart by
//! unit id, and the bus lock keeps one request at a time on the wire, as
//! RS-485 requires. After a timeout or a transport error the connection is
//! dropped and opened afresh on the next request, so a late answer can
//! never be taken for the answer to a later request.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use crate::register_map::{Block, Function};

/// Where a meter is reached: `tcp:HOST:PORT` or
/// `rtu:DEVICE:BAUD[:FORMAT]` with FORMAT like `8N1` (default), `8E1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransportAddress {
    Tcp { host: String, port: u16 },
    Rtu(SerialLine),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialLine {
    pub device: String,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: char,
    pub stop_bits: u8,
}

impl FromStr for TransportAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("`{s}`: expected tcp:HOST:PORT"))?;
            let port = port
                .parse()
                .map_err(|_| format!("`{s}`: `{port}` is not a TCP port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("`{s}`: empty host"));
            }
            return Ok(TransportAddress::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        if let Some(rest) = s.strip_prefix("rtu:") {
            let mut parts = rest.split(':');
            let device = parts.next().unwrap_or_default();
            if device.is_empty() {
                return Err(format!("`{s}`: expected rtu:DEVICE:BAUD[:8N1]"));
            }
            let baud = parts
                .next()
                .ok_or_else(|| format!("`{s}`: expected rtu:DEVICE:BAUD[:8N1]"))?;
            let baud: u32 = baud
                .parse()
                .ok()
                .filter(|b| (300..=4_000_000).contains(b))
                .ok_or_else(|| format!("`{s}`: `{baud}` is not a baud rate"))?;
            let format = parts.next().unwrap_or("8N1");
            let bytes = format.as_bytes();
            let valid = bytes.len() == 3
                && matches!(bytes[0], b'7' | b'8')
                && matches!(bytes[1], b'N' | b'E' | b'O')
                && matches!(bytes[2], b'1' | b'2');
            if !valid || parts.next().is_some() {
                return Err(format!("`{s}`: `{format}` is not a frame format like 8N1"));
            }
            return Ok(TransportAddress::Rtu(SerialLine {
                device: device.to_owned(),
                baud,
                data_bits: bytes[0] - b'0',
                parity: char::from(bytes[1]),
                stop_bits: bytes[2] - b'0',
            }));
        }
        Err(format!(
            "`{s}`: expected tcp:HOST:PORT or rtu:DEVICE:BAUD[:8N1]"
        ))
    }
}

impl fmt::Display for TransportAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportAddress::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            TransportAddress::Rtu(l) => write!(
                f,
                "rtu:{}:{}:{}{}{}",
                l.device, l.baud, l.data_bits, l.parity, l.stop_bits
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("exception response: {0}")]
    Exception(ExceptionCode),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("transport: {0}")]
    Io(std::io::Error),
    #[error("short response: {got} of {want} registers")]
    Short { got: usize, want: usize },
}

/// One Modbus connection, opened on demand and shared by its meters.
pub struct ModbusBus {
    address: TransportAddress,
    timeout: Duration,
    context: Mutex<Option<Context>>,
}

impl ModbusBus {
    pub fn new(address: TransportAddress, timeout: Duration) -> Self {
        ModbusBus {
            address,
            timeout,
            context: Mutex::new(None),
        }
    }

    pub fn address(&self) -> &TransportAddress {
        &self.address
    }

    /// Read one block of registers from `unit`.
    pub async fn read(&self, unit: u8, block: Block) -> Result<Vec<u16>, ModbusError> {
        let words = self
            .request(unit, |ctx| {
                Box::pin(async move {
                    match block.function {
                        Function::Input => {
                            ctx.read_input_registers(block.address, block.count).await
                        }
                        Function::Holding => {
                            ctx.read_holding_registers(block.address, block.count).await
                        }
                    }
                })
            })
            .await?;
        if words.len() < usize::from(block.count) {
            return Err(ModbusError::Short {
                got: words.len(),
                want: block.count.into(),
            });
        }
        Ok(words)
    }

    /// Write one holding register of `unit` (FC 06).
    pub async fn write_register(
        &self,
        unit: u8,
        address: u16,
        value: u16,
    ) -> Result<(), ModbusError> {
        self.request(unit, |ctx| {
            Box::pin(async move { ctx.write_single_register(address, value).await })
        })
        .await
    }

    async fn request<T>(
        &self,
        unit: u8,
        call: impl for<'a> FnOnce(
            &'a mut Context,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = tokio_modbus::Result<T>> + Send + 'a>,
        >,
    ) -> Result<T, ModbusError> {
        // The lock is the bus: one request on the wire at a time.
        let mut guard = self.context.lock().await;
        if guard.is_none() {
            let context = tokio::time::timeout(self.timeout, self.connect())
                .await
                .map_err(|_| ModbusError::Timeout(self.timeout))??;
            *guard = Some(context);
        }
        let Some(context) = guard.as_mut() else {
            return Err(ModbusError::Protocol("no connection".into()));
        };
        context.set_slave(Slave(unit));
        let outcome = tokio::time::timeout(self.timeout, call(context)).await;
        match outcome {
            Ok(Ok(Ok(value))) => Ok(value),
            // An exception is a well-formed answer: the link is fine.
            Ok(Ok(Err(code))) => Err(ModbusError::Exception(code)),
            Ok(Err(e)) => {
                *guard = None;
                Err(match e {
                    tokio_modbus::Error::Transport(io) => ModbusError::Io(io),
                    tokio_modbus::Error::Protocol(p) => ModbusError::Protocol(p.to_string()),
                })
            }
            Err(_) => {
                *guard = None;
                Err(ModbusError::Timeout(self.timeout))
            }
        }
    }

    async fn connect(&self) -> Result<Context, ModbusError> {
        let address = self.address.to_string();
        let connect_error = |source| ModbusError::Connect {
            address: address.clone(),
            source,
        };
        match &self.address {
            TransportAddress::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_error)?;
                let _ = stream.set_nodelay(true);
                Ok(tokio_modbus::client::tcp::attach(stream))
            }
            TransportAddress::Rtu(line) => {
                let port = open_serial(line).map_err(connect_error)?;
                Ok(tokio_modbus::client::rtu::attach(port))
            }
        }
    }
}

fn open_serial(line: &SerialLine) -> std::io::Result<tokio_serial::SerialStream> {
    use tokio_serial::{DataBits, Parity, SerialPortBuilderExt, StopBits};
    let builder = tokio_serial::new(&line.device, line.baud)
        .data_bits(if line.data_bits == 7 {
            DataBits::Seven
        } else {
            DataBits::Eight
        })
        .parity(match line.parity {
            'E' => Parity::Even,
            'O' => Parity::Odd,
            _ => Parity::None,
        })
        .stop_bits(if line.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        });
    builder.open_native_async().map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports_and_names_what_is_wrong() {
        assert_eq!(
            "tcp:10.0.0.5:502".parse(),
            Ok(TransportAddress::Tcp {
                host: "10.0.0.5".into(),
                port: 502
            })
        );
        let rtu: TransportAddress = "rtu:/dev/ttyUSB0:9600:8E1".parse().unwrap();
        assert_eq!(rtu.to_string(), "rtu:/dev/ttyUSB0:9600:8E1");
        assert_eq!(
            "rtu:/dev/ttyS1:19200"
                .parse::<TransportAddress>()
                .unwrap()
                .to_string(),
            "rtu:/dev/ttyS1:19200:8N1"
        );
        for bad in [
            "tcp:host",
            "tcp::502",
            "tcp:h:99999",
            "rtu:/dev/x",
            "rtu:/dev/x:fast",
            "rtu:/dev/x:9600:9Z1",
            "udp:x:1",
        ] {
            assert!(bad.parse::<TransportAddress>().is_err(), "{bad}");
        }
    }
}
