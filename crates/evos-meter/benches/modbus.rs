//! Meter readings per second: one reading is every block of the sdm630 map
//! read through `ModbusBus::read` and decoded with `RegisterMap::decode`,
//! which is what the meter service does per poll. It prints figures and
//! asserts nothing about time.
//!
//! - Modbus TCP on loopback, against tokio-modbus's TCP server.
//! - Modbus RTU through two pty pairs joined by a line emulator, against
//!   tokio-modbus's RTU server, at 115200 and 9600 baud 8N1:
//!
//!   ```text
//!   ModbusBus ─ slave A ═ master A ─┐   line emulator   ┌─ master B ═ slave B ─ RTU server
//!   (rtu:/dev/pts/N)                └── (paced, 1 thread) ──┘
//!   ```
//!
//!   A pty moves bytes as fast as the kernel copies them, so the emulator
//!   holds each byte until it would have left a UART: 10 bit times per
//!   character (start, 8 data, stop), one character after the other on one
//!   half-duplex line, and at every turn of direction the line stays silent
//!   for 3.5 character times first, the end-of-frame silence an RTU
//!   receiver needs before it may act on a frame. So the figure includes
//!   the real wire time, and the ceiling printed next to it is what the
//!   bytes and gaps alone allow.
//! - The same ptys unpaced: the software's own cost per RTU reading.
//!
//! `cargo bench -p evos-meter --bench modbus` (about 30 s). Run without
//! `--bench` (e.g. by `cargo test --benches`) each case runs only for a
//! moment, as a smoke test.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use evos_meter::reading::Reading;
use evos_meter::register_map::{Block, RegisterMap};
use evos_meter::transport::{ModbusBus, SerialLine, TransportAddress};
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

#[path = "../tests/support/pty.rs"]
mod pty;
#[path = "../tests/support/registers.rs"]
mod registers;
use pty::open_pty;

const UNIT: u8 = 1;
/// The energy register the server serves (kWh, as float32).
const IMPORT_KWH: f32 = 12345.5;

/// SDM630 input registers (Eastron protocol V1.8, table 1.2.1): float32,
/// most significant word first.
fn sdm630_registers() -> BTreeMap<u16, u16> {
    let values: [(u16, f32); 13] = [
        (0x0000, 230.1),
        (0x0002, 229.8),
        (0x0004, 231.0),
        (0x0006, 16.0),
        (0x0008, 15.9),
        (0x000A, 16.1),
        (0x000C, 3681.6),
        (0x000E, 3653.8),
        (0x0010, 3719.1),
        (0x0034, 11054.5),
        (0x0046, 50.0),
        (0x0048, IMPORT_KWH),
        (0x004A, 0.0),
    ];
    let mut words = BTreeMap::new();
    for (address, value) in values {
        let bits = value.to_bits();
        words.insert(address, (bits >> 16) as u16);
        words.insert(address + 1, bits as u16);
    }
    words
}

/// The server's handler: one meter, registers not listed read as 0.
#[derive(Clone)]
struct Sdm630 {
    registers: Arc<BTreeMap<u16, u16>>,
}

impl tokio_modbus::server::Service for Sdm630 {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if req.slave != UNIT {
            return std::future::ready(Ok(None));
        }
        std::future::ready(registers::answer(&self.registers, req.request))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // The services run on a current-thread runtime; so do client and server.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A server on its own thread and runtime, stopped on drop.
struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn tcp_server(service: Sdm630) -> (u16, ServerThread) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let port = listener.local_addr().expect("the port").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("the listener");
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream, address| {
                let service = service.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, address, |_| {
                        Ok(Some(service.clone()))
                    })
                }
            };
            tokio::select! {
                done = server.serve(&on_connected, |e| eprintln!("TCP server: {e}")) => {
                    done.expect("the TCP server");
                }
                _ = stopped => {}
            }
        });
    });
    (
        port,
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        },
    )
}

fn rtu_server(tty: OwnedFd, service: Sdm630) -> ServerThread {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime().block_on(async move {
            // SAFETY: `tty` is an open pty fd whose ownership moves into the port.
            let port = unsafe { serialport::TTYPort::from_raw_fd(tty.into_raw_fd()) };
            let serial = tokio_serial::SerialStream::try_from(port).expect("a serial stream");
            let server = tokio_modbus::server::rtu::Server::new(serial);
            tokio::select! {
                done = server.serve_forever(service) => {
                    if let Err(e) = done {
                        eprintln!("RTU server: {e}");
                    }
                }
                _ = stopped => {}
            }
        });
    });
    ServerThread {
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// Bytes the line emulator carried: [A→B (requests), B→A (responses)].
type Carried = [u64; 2];

/// Forward bytes between two pty masters, each byte delivered when its last
/// bit would have arrived over a half-duplex line at `baud` (None: at once).
fn line_emulator(
    ends: [RawFd; 2],
    baud: Option<u32>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Carried> {
    std::thread::spawn(move || {
        // Default timer slack is 50 µs, over half a character at 115200.
        // SAFETY: PR_SET_TIMERSLACK takes an unsigned long (ns) for this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let char_time = baud.map(|b| Duration::from_secs_f64(10.0 / f64::from(b)));
        let turnaround = char_time.map(|c| c.mul_f64(3.5)).unwrap_or_default();
        // Per direction (0: A→B, 1: B→A): bytes and when they are through.
        let mut queues: [VecDeque<(Instant, u8)>; 2] = Default::default();
        let mut line_free = Instant::now();
        let mut last_direction = 0usize;
        let mut carried: Carried = [0; 2];
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next = queues
                .iter()
                .filter_map(|q| q.front().map(|(t, _)| *t))
                .min();
            // Wake up at least every 20 ms to see `stop`.
            let wait = next
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(20));
            let timeout = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            let mut fds = ends.map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfds, a valid timeout, no signal mask.
            let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &timeout, std::ptr::null()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "ppoll: {e}");
                continue;
            }
            for (direction, fd) in fds.iter().enumerate() {
                if fd.revents & libc::POLLIN == 0 {
                    if fd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                        // A slave side closed: the run is over.
                        return carried;
                    }
                    continue;
                }
                // SAFETY: reading into our buffer from a readable fd.
                let got = unsafe { libc::read(fd.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if got <= 0 {
                    return carried;
                }
                let arrived = Instant::now();
                for &byte in &buf[..got as usize] {
                    let through = match char_time {
                        None => arrived,
                        Some(char_time) => {
                            let silence = if direction == last_direction {
                                Duration::ZERO
                            } else {
                                turnaround
                            };
                            let start = arrived.max(line_free + silence);
                            line_free = start + char_time;
                            line_free
                        }
                    };
                    last_direction = direction;
                    queues[direction].push_back((through, byte));
                }
                carried[direction] += got as u64;
            }
            let now = Instant::now();
            for direction in 0..2 {
                let mut due = Vec::new();
                while let Some(&(through, byte)) = queues[direction].front() {
                    if through > now {
                        break;
                    }
                    due.push(byte);
                    queues[direction].pop_front();
                }
                write_all(ends[1 - direction], &due);
            }
        }
        carried
    })
}

fn write_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing from our buffer to an open fd.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "write: {e}");
            continue;
        }
        bytes = &bytes[n as usize..];
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One reading as the service takes it (service.rs `Meter::read`).
async fn reading(bus: &ModbusBus, map: &RegisterMap, blocks: &[Block]) -> Reading {
    let mut data = Vec::with_capacity(blocks.len());
    for block in blocks {
        let words = bus
            .read(UNIT, *block)
            .await
            .unwrap_or_else(|e| panic!("reading {block:?}: {e}"));
        data.push(words);
    }
    map.decode(blocks, &data, now_ms())
        .expect("the served registers decode")
}

struct Figures {
    /// Readings taken in all, warm-up included (for bytes per reading).
    total: usize,
    /// Per reading in the measured span.
    times: Vec<Duration>,
    elapsed: Duration,
    requests_per_reading: usize,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.times.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn mean_ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3 / self.times.len() as f64
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.times.clone();
        sorted.sort();
        let i = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[i].as_secs_f64() * 1e3
    }
}

/// Take readings through a fresh bus for `span` after `warm_up` readings.
fn measure(address: TransportAddress, warm_up: usize, span: Duration) -> Figures {
    runtime().block_on(async move {
        let map = RegisterMap::load("sdm630").expect("the shipped sdm630 map");
        let blocks = map.blocks();
        let bus = ModbusBus::new(address, Duration::from_secs(2));
        for _ in 0..warm_up.max(1) {
            let r = reading(&bus, &map, &blocks).await;
            assert_eq!(r.energy_import_wh, f64::from(IMPORT_KWH) * 1e3, "{r:?}");
        }
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed() < span || times.is_empty() {
            let t = Instant::now();
            std::hint::black_box(reading(&bus, &map, &blocks).await);
            times.push(t.elapsed());
        }
        Figures {
            total: warm_up.max(1) + times.len(),
            elapsed: start.elapsed(),
            times,
            requests_per_reading: blocks.len(),
        }
    })
}

/// RTU characters per reading: (request frames, response frames).
fn rtu_chars(blocks: &[Block]) -> (u64, u64) {
    // Request: unit, function, address (2), count (2), CRC (2).
    // Response: unit, function, byte count, 2 per register, CRC (2).
    let requests = 8 * blocks.len() as u64;
    let responses = blocks.iter().map(|b| 5 + 2 * u64::from(b.count)).sum();
    (requests, responses)
}

struct Row {
    name: String,
    figures: Figures,
    /// (readings/s the bytes alone allow, … with the t3.5 gaps)
    ceiling: Option<(f64, f64)>,
    /// Bytes per reading the emulator carried (requests, responses).
    carried: Option<(f64, f64)>,
}

fn rtu_case(baud: u32, paced: bool, warm_up: usize, span: Duration) -> Row {
    let client = open_pty();
    let server = open_pty();
    let stop = Arc::new(AtomicBool::new(false));
    let emulator = line_emulator(
        [client.master.as_raw_fd(), server.master.as_raw_fd()],
        paced.then_some(baud),
        stop.clone(),
    );
    let server_thread = rtu_server(
        server.slave,
        Sdm630 {
            registers: Arc::new(sdm630_registers()),
        },
    );
    let address = TransportAddress::Rtu(SerialLine {
        device: client.slave_path.clone(),
        baud,
        data_bits: 8,
        parity: 'N',
        stop_bits: 1,
    });
    let figures = measure(address, warm_up, span);
    stop.store(true, Ordering::Relaxed);
    let carried = emulator.join().expect("the line emulator");
    drop(server_thread);
    drop((client, server.master));

    let blocks = RegisterMap::load("sdm630").unwrap().blocks();
    let (request_chars, response_chars) = rtu_chars(&blocks);
    let chars = (request_chars + response_chars) as f64;
    let gaps = 2.0 * 3.5 * blocks.len() as f64;
    let chars_per_second = f64::from(baud) / 10.0;
    let readings = figures.total as f64;
    Row {
        name: if paced {
            format!("RTU {baud} 8N1 (paced)")
        } else {
            "RTU pty, unpaced".into()
        },
        ceiling: paced.then(|| (chars_per_second / chars, chars_per_second / (chars + gaps))),
        carried: Some((carried[0] as f64 / readings, carried[1] as f64 / readings)),
        figures,
    }
}

fn tcp_case(warm_up: usize, span: Duration) -> Row {
    let (port, server) = tcp_server(Sdm630 {
        registers: Arc::new(sdm630_registers()),
    });
    let address = TransportAddress::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    let figures = measure(address, warm_up, span);
    drop(server);
    Row {
        name: "TCP loopback".into(),
        figures,
        ceiling: None,
        carried: None,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test --benches)
    // gets a short smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let span = |secs: u64| {
        if full {
            Duration::from_secs(secs)
        } else {
            Duration::from_millis(100)
        }
    };
    let warm_up = if full { 3 } else { 1 };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "evos-meter Modbus bench: sdm630 map via ModbusBus::read + RegisterMap::decode, \
         unit {UNIT}; {cpus} CPUs, load average {} at start",
        loadavg()
    );

    let rows = vec![
        tcp_case(warm_up * 100, span(5)),
        rtu_case(115_200, false, warm_up * 10, span(3)),
        rtu_case(115_200, true, warm_up, span(8)),
        rtu_case(9_600, true, warm_up, span(15)),
    ];

    println!();
    println!(
        "{:<24} {:>11} {:>9} {:>8} {:>8} {:>9} {:>8} {:>22}",
        "transport",
        "readings/s",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "requests",
        "n",
        "ceiling/s (t3.5|bytes)"
    );
    for row in &rows {
        let f = &row.figures;
        let ceiling = row
            .ceiling
            .map(|(bytes, gaps)| format!("{gaps:.2} | {bytes:.2}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:>11.2} {:>9.3} {:>8.3} {:>8.3} {:>9} {:>8} {:>22}",
            row.name,
            f.per_second(),
            f.mean_ms(),
            f.percentile_ms(0.5),
            f.percentile_ms(0.99),
            f.requests_per_reading,
            f.times.len(),
            ceiling
        );
    }

    let blocks = RegisterMap::load("sdm630").unwrap().blocks();
    let (request_chars, response_chars) = rtu_chars(&blocks);
    println!();
    println!("requests = Modbus requests per reading (sdm630 blocks: {blocks:?}).");
    println!(
        "RTU bytes per reading: {request_chars} request + {response_chars} response = {} \
         characters of 10 bits (8N1), plus 3.5 characters of silence before each frame: {:.0} \
         character times.",
        request_chars + response_chars,
        (request_chars + response_chars) as f64 + 7.0 * blocks.len() as f64
    );
    for row in &rows {
        if let Some((requests, responses)) = row.carried {
            println!(
                "  {}: the emulator carried {requests:.1} + {responses:.1} bytes per reading",
                row.name
            );
        }
    }
    println!(
        "Ceilings: readings/s if the line never idled beyond the frames and t3.5 gaps \
         (| bytes alone). Above 19200 baud the spec fixes t3.5 at 1.75 ms, which at \
         115200 would give {:.2}/s.",
        1.0 / ((request_chars + response_chars) as f64 * 10.0 / 115_200.0
            + 2.0 * 1.75e-3 * blocks.len() as f64)
    );
    println!(
        "The emulator keeps each turn of the line silent for t3.5, so a client or server \
         that turns around faster than that waits for the wire: the paced rows measure the \
         line, the unpaced row the software (no meter's own response latency is modelled)."
    );
    println!("load average at end: {}", loadavg());
}
