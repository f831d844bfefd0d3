//! `vcan-selftest`: the real SocketCAN path (`evos_hal::can::SocketCanBus`,
//! the `socketcan` crate, the kernel's `can-raw`) end to end on a virtual CAN
//! interface.
//!
//! Build machines cannot open AF_CAN sockets, so `tests/vcan/run.sh` boots a
//! Debian kernel in qemu with `vcan0` up and `vcan1` down, and runs this
//! program, built static, as the only program of its initramfs. It opens the
//! interface three times through [`SocketCanBus`]:
//!
//! - a module emulator, on a thread and runtime of its own (a module is a
//!   device of its own), answers every frame it hears;
//! - the controller sends requests and checks every reply byte-exact;
//! - a monitor only listens, and must hear every frame of both, in order.
//!
//! On vcan, as on a real bus with `CAN_RAW_LOOPBACK` on (the default), a
//! frame one socket sends reaches every other socket on the interface, and
//! not the sender (`CAN_RAW_RECV_OWN_MSGS` is off by default). The test
//! relies on that and checks it: the controller must get exactly the replies
//! (its own requests would fail the byte compare), the emulator must hear
//! exactly the requests (its own replies would show as extra frames), and
//! the bus must stay silent after the last reply.
//!
//! Standard (11-bit) and extended (29-bit) ids alternate, including the edges
//! of both ranges, with 0..=8 data bytes. The error path: opening an
//! interface that does not exist, or one that is not CAN, fails with an error
//! naming the interface; sending on an interface that is down fails.
//!
//! Then the power-module codecs (`evos_power::protocol`, those in
//! [`PROTOCOLS`]) talk over the same driver: the controller's
//! `encode_command` frames, read by the emulated module with
//! `decode_command` and answered with `encode_reply`, read back with
//! `decode_reply` (where a command or its answer spans several frames, each
//! frame as its part). A codec is added by adding its name there.
//!
//! Output: detail lines, then exactly one result line,
//! `VCAN-SELFTEST PASS frames=1000 … p50_us=… p99_us=…` or
//! `VCAN-SELFTEST FAIL <reason>`; the exit status is 0 only with PASS.
//!
//! Usage: `vcan-selftest [IFNAME] [--frames N] [--burst N] [--window N]
//! [--down IFNAME]` (defaults: `vcan0`, 1000 round trips one at a time, then
//! 256 requests sent 32 at a time, no down-interface check).

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use evos_hal::can::{CanBus, CanFrame, MAX_EXTENDED_ID, MAX_STANDARD_ID, SocketCanBus};
use evos_power::protocol::{self, Command, ModuleStatus, Reply, Target};
use tokio::sync::oneshot;

/// The prefix of the one result line.
const RESULT: &str = "VCAN-SELFTEST";
/// How long the controller waits for each reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the bus must stay silent after the last reply: no frame may
/// come back twice, or come back to its sender.
const QUIET: Duration = Duration::from_millis(200);
/// An interface name that does not exist.
const MISSING_IF: &str = "nosuchcan0";

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(reason) => {
            println!("{RESULT} FAIL usage: {reason}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime().and_then(|rt| rt.block_on(run(&options)));
    match outcome {
        Ok(summary) => {
            println!("{RESULT} PASS {summary}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            // One line, whatever the reason holds.
            println!("{RESULT} FAIL {}", reason.replace('\n', " | "));
            ExitCode::FAILURE
        }
    }
}

fn detail(line: impl std::fmt::Display) {
    println!("vcan-selftest: {line}");
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))
}

#[derive(Debug, Clone, PartialEq)]
struct Options {
    ifname: String,
    /// Round trips one at a time (each timed).
    frames: usize,
    /// Requests sent `window` at a time before their replies are read.
    burst: usize,
    window: usize,
    /// An interface that exists but is down: sending on it must fail.
    down: Option<String>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            ifname: "vcan0".into(),
            frames: 1000,
            burst: 256,
            window: 32,
            down: None,
        };
        let number = |flag: &str, value: Option<String>| -> Result<usize, String> {
            let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
            value
                .parse()
                .map_err(|_| format!("{flag} {value}: not a number"))
        };
        let mut ifname = None;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--frames" => options.frames = number("--frames", args.next())?,
                "--burst" => options.burst = number("--burst", args.next())?,
                "--window" => options.window = number("--window", args.next())?.max(1),
                "--down" => {
                    options.down = Some(args.next().ok_or("--down needs an interface")?);
                }
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                _ if ifname.is_none() => ifname = Some(arg),
                _ => return Err(format!("unexpected argument {arg}")),
            }
        }
        if let Some(ifname) = ifname {
            options.ifname = ifname;
        }
        Ok(options)
    }
}

async fn run(options: &Options) -> Result<String, String> {
    let started = Instant::now();
    let ifname = options.ifname.as_str();

    let errors = check_error_path(options).await?;

    let pingpong = run_exchange(ifname, raw_exchange("ping-pong", 0, options.frames, 1)).await?;
    let std_ids = pingpong.standard;
    let ext_ids = pingpong.extended;
    let mut rtt = pingpong.rtt.clone();
    rtt.sort_unstable();
    detail(format_args!(
        "ping-pong: {} round trips ({std_ids} standard, {ext_ids} extended ids) in {} ms",
        pingpong.steps,
        pingpong.elapsed.as_millis()
    ));

    let burst = run_exchange(
        ifname,
        raw_exchange("burst", options.frames, options.burst, options.window),
    )
    .await?;
    detail(format_args!(
        "burst: {} requests, {} at a time, in {} ms",
        burst.steps,
        options.window,
        burst.elapsed.as_millis()
    ));

    let mut protocol_names = Vec::new();
    for exchange in protocol_exchanges()? {
        let report = run_exchange(ifname, exchange).await?;
        let mut rtt = report.rtt.clone();
        rtt.sort_unstable();
        detail(format_args!(
            "protocol {}: {} commands, {} request and {} reply frames, p50 {} us",
            report.name,
            report.steps,
            report.requests,
            report.replies,
            percentile(&rtt, 50).as_micros()
        ));
        protocol_names.push(report.name);
    }

    let us = |d: Duration| d.as_micros();
    let per_second = |n: usize, d: Duration| (n as f64 / d.as_secs_f64().max(1e-9)).round();
    Ok(format!(
        "frames={} std={std_ids} ext={ext_ids} p50_us={} p99_us={} max_us={} rtt_per_s={} \
         burst={} window={} burst_frames_per_s={} error_checks={errors} protocols={} elapsed_ms={}",
        pingpong.steps,
        us(percentile(&rtt, 50)),
        us(percentile(&rtt, 99)),
        us(rtt.last().copied().unwrap_or_default()),
        per_second(pingpong.steps, pingpong.elapsed),
        burst.steps,
        options.window,
        per_second(burst.replies, burst.elapsed),
        if protocol_names.is_empty() {
            "none".to_owned()
        } else {
            protocol_names.join(",")
        },
        started.elapsed().as_millis(),
    ))
}

/// The `pct`-th percentile (nearest rank) of sorted samples.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------
// Exchanges: what the controller sends, what the module emulator answers.

/// The module side of an exchange: the frames a module answers one frame
/// it hears with.
type Responder = Box<dyn FnMut(&CanFrame) -> Result<Vec<CanFrame>, String> + Send>;
/// A check of one step's replies beyond the byte compare (e.g. that a
/// protocol's `decode_reply` reads them back as the reply that was sent).
type ReplyCheck = Box<dyn Fn(&[CanFrame]) -> Result<(), String>>;

/// One controller request (one or more frames) and the replies it must get,
/// in order and byte-exact.
struct Step {
    request: Vec<CanFrame>,
    expect: Vec<CanFrame>,
    check: Option<ReplyCheck>,
}

/// A conversation between the controller and a module emulator.
struct Exchange {
    name: String,
    responder: Responder,
    steps: Vec<Step>,
    /// Steps sent before their replies are read; 1 times each round trip.
    window: usize,
}

struct ExchangeReport {
    name: String,
    steps: usize,
    requests: usize,
    replies: usize,
    standard: usize,
    extended: usize,
    /// One per step when the window is 1.
    rtt: Vec<Duration>,
    elapsed: Duration,
}

/// The `i`-th test request. Standard and extended ids alternate; the first
/// four are the edges of both id ranges, the rest pseudo-random (fixed, so a
/// failure repeats); the data length cycles through 0..=8.
fn test_frame(i: usize) -> CanFrame {
    let extended = i % 2 == 1;
    let max = if extended {
        MAX_EXTENDED_ID
    } else {
        MAX_STANDARD_ID
    };
    let id = match i {
        0 | 1 => 0,
        2 | 3 => max,
        _ => mix(i as u64) as u32 & max,
    };
    let len = (i / 2) % 9;
    let data = mix(!(i as u64)).to_le_bytes();
    CanFrame::new(id, extended, &data[..len]).expect("id masked to its range, at most 8 bytes")
}

/// splitmix64's finaliser: a well-spread 64-bit value from a counter.
fn mix(x: u64) -> u64 {
    let mut x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The test emulator's answer to a request: the same kind of id,
/// complemented within its range (so never the request's id), and the data
/// reversed with every byte XOR 0xA5.
fn test_answer(request: &CanFrame) -> CanFrame {
    let max = if request.is_extended() {
        MAX_EXTENDED_ID
    } else {
        MAX_STANDARD_ID
    };
    let data: Vec<u8> = request.data().iter().rev().map(|b| b ^ 0xA5).collect();
    CanFrame::new(!request.id() & max, request.is_extended(), &data)
        .expect("id masked to its range, same length")
}

/// Requests `first..first + count`, each answered by one frame.
fn raw_exchange(name: &str, first: usize, count: usize, window: usize) -> Exchange {
    let steps = (first..first + count)
        .map(|i| {
            let request = test_frame(i);
            Step {
                expect: vec![test_answer(&request)],
                request: vec![request],
                check: None,
            }
        })
        .collect();
    Exchange {
        name: name.into(),
        responder: Box::new(|frame| Ok(vec![test_answer(frame)])),
        steps,
        window,
    }
}

// ---------------------------------------------------------------------------
// Power-module protocols: the codecs of `evos_power::protocol` over the real
// driver. The controller sends `encode_command` frames; the emulated module
// reads each with `decode_command` (it must read back the command that was
// encoded: where one command is several frames, each frame its part of it)
// and answers with `encode_reply`; the controller checks the answer
// byte-exact and that `decode_reply` reads it as the module's reply.
//
// A module acknowledges each frame of a setting at once with `Reply::Ack`
// of that frame's part; it answers a read once, after the read's last
// frame (the trait does not say which half of a register protocol's output
// read a frame asks for).

/// The codecs exchanged, each with the commands it has no frames for
/// (which must encode to none). A codec joins once its module side answers
/// each command as `ModuleProtocol` describes.
const PROTOCOLS: &[(&str, &[Command])] = &[
    ("infypower", &[]),
    // No ratings message.
    ("uugreen", &[Command::ReadCapabilities]),
];
/// The emulated module's address.
const MODULE_ADDRESS: u8 = 3;

/// What the emulated module answers. The values are exact in the codecs'
/// units (mV, f32, 0.1 A, 10 W), so the decoded reply compares equal.
fn module_reply(command: &Command) -> Reply {
    match command {
        Command::ReadOutput => Reply::Output {
            voltage_v: Some(750.0),
            current_a: Some(40.0),
        },
        Command::ReadStatus => Reply::Status(ModuleStatus {
            on: true,
            ..ModuleStatus::default()
        }),
        Command::ReadCapabilities => Reply::Capabilities {
            min_voltage_v: 150.0,
            max_voltage_v: 1000.0,
            max_current_a: 100.0,
            max_power_w: 30_000.0,
        },
        Command::SetOutput { .. } | Command::SetOn(_) => Reply::Ack(*command),
    }
}

fn is_setting(command: &Command) -> bool {
    matches!(command, Command::SetOutput { .. } | Command::SetOn(_))
}

/// The one of two halves that is there; `None` when both are.
fn one_of(a: Option<f64>, b: Option<f64>) -> Option<Option<f64>> {
    match (a, b) {
        (Some(_), Some(_)) => None,
        (x, None) | (None, x) => Some(x),
    }
}

/// Two frames' parts of one command as one: the halves of a setpoint, or
/// the same read twice. `None` when they do not fit (a value twice).
fn merge_commands(a: Command, b: Command) -> Option<Command> {
    match (a, b) {
        (
            Command::SetOutput {
                voltage_v: v1,
                current_a: i1,
            },
            Command::SetOutput {
                voltage_v: v2,
                current_a: i2,
            },
        ) => Some(Command::SetOutput {
            voltage_v: one_of(v1, v2)?,
            current_a: one_of(i1, i2)?,
        }),
        (a, b) if a == b => Some(a),
        _ => None,
    }
}

/// Two frames' parts of one answer as one: the halves of an output
/// reading or of a setpoint's echo.
fn merge_replies(a: Reply, b: Reply) -> Option<Reply> {
    match (a, b) {
        (
            Reply::Output {
                voltage_v: v1,
                current_a: i1,
            },
            Reply::Output {
                voltage_v: v2,
                current_a: i2,
            },
        ) => Some(Reply::Output {
            voltage_v: one_of(v1, v2)?,
            current_a: one_of(i1, i2)?,
        }),
        (Reply::Ack(a), Reply::Ack(b)) => merge_commands(a, b).map(Reply::Ack),
        _ => None,
    }
}

/// Whether `part` (what one frame reads as) belongs to `command`.
fn is_part_of(part: &Command, command: &Command) -> bool {
    match (part, command) {
        (
            Command::SetOutput {
                voltage_v: v,
                current_a: i,
            },
            Command::SetOutput {
                voltage_v: v2,
                current_a: i2,
            },
        ) => v.is_none_or(|v| Some(v) == *v2) && i.is_none_or(|i| Some(i) == *i2),
        _ => part == command,
    }
}

fn protocol_exchanges() -> Result<Vec<Exchange>, String> {
    PROTOCOLS
        .iter()
        .map(|(name, frameless)| protocol_exchange(name, frameless))
        .collect()
}

/// What the module expects of one frame: whose it is, the command it is
/// (part of), and whether it is that command's last frame.
type Expected = (Target, Command, bool);

fn protocol_exchange(name: &'static str, frameless: &[Command]) -> Result<Exchange, String> {
    let codec = || protocol::by_name(name).ok_or_else(|| format!("no protocol {name}"));
    let controller = codec()?;
    let target = Target::Module(MODULE_ADDRESS);
    let commands = [
        Command::SetOutput {
            voltage_v: Some(750.0),
            current_a: Some(40.0),
        },
        Command::SetOn(true),
        Command::ReadOutput,
        Command::ReadStatus,
        Command::ReadCapabilities,
        Command::SetOn(false),
    ];
    // What the module must read from each frame, in order.
    let sent: Arc<Mutex<VecDeque<Expected>>> = Arc::new(Mutex::new(VecDeque::new()));
    let mut steps = Vec::new();
    for command in commands {
        let request = controller.encode_command(target, &command);
        if frameless.contains(&command) {
            if !request.is_empty() {
                return Err(format!(
                    "{name}: encode_command({command:?}) gives {} frames; none expected",
                    request.len()
                ));
            }
            continue;
        }
        if request.is_empty() {
            return Err(format!(
                "{name}: encode_command({command:?}) gives no frames"
            ));
        }
        for k in 0..request.len() {
            sent.lock()
                .unwrap()
                .push_back((target, command, k + 1 == request.len()));
        }
        // A setting's echoes, frame by frame, make the echo of the whole.
        let reply = module_reply(&command);
        let expect = controller.encode_reply(MODULE_ADDRESS, &reply);
        if expect.is_empty() {
            return Err(format!("{name}: encode_reply({reply:?}) gives no frames"));
        }
        let decoder = codec()?;
        let check: ReplyCheck = Box::new(move |frames| {
            let mut whole: Option<Reply> = None;
            for frame in frames {
                let part = match decoder.decode_reply(frame) {
                    Some(Ok((MODULE_ADDRESS, part))) => part,
                    other => {
                        return Err(format!(
                            "{name} {command:?}: the answer {} decodes as {other:?}, \
                             not from module {MODULE_ADDRESS}",
                            show(frame)
                        ));
                    }
                };
                whole = match whole {
                    None => Some(part),
                    Some(so_far) => {
                        Some(merge_replies(so_far.clone(), part.clone()).ok_or_else(|| {
                            format!(
                                "{name} {command:?}: the answer {} ({part:?}) does not \
                                 belong with {so_far:?}",
                                show(frame)
                            )
                        })?)
                    }
                };
            }
            if whole.as_ref() != Some(&reply) {
                return Err(format!(
                    "{name} {command:?}: the answers decode as {whole:?}, not module \
                     {MODULE_ADDRESS}'s {reply:?}"
                ));
            }
            Ok(())
        });
        steps.push(Step {
            request,
            expect,
            check: Some(check),
        });
    }
    let module = codec()?;
    // The parts of the command being read so far.
    let mut parts: Option<Command> = None;
    let responder: Responder = Box::new(move |frame| {
        let expected = sent.lock().unwrap().pop_front();
        let part = match (module.decode_command(frame), expected) {
            (Some(Ok((target, part))), Some((to, command, _)))
                if target == to && is_part_of(&part, &command) =>
            {
                part
            }
            (Some(Ok(got)), expected) => {
                return Err(format!(
                    "{name} module: {} reads as {got:?}; the controller sent {:?}",
                    show(frame),
                    expected.map(|(to, command, _)| (to, command))
                ));
            }
            (Some(Err(e)), _) => return Err(format!("{name} module: {e}")),
            (None, _) => {
                return Err(format!(
                    "{name} module: {} is not a command to it",
                    show(frame)
                ));
            }
        };
        let (_, command, last) = expected.expect("matched above");
        let so_far = match parts.take() {
            None => part,
            Some(so_far) => merge_commands(so_far, part).ok_or_else(|| {
                format!(
                    "{name} module: {} reads as {part:?}, which {so_far:?} already had",
                    show(frame)
                )
            })?,
        };
        if last {
            if so_far != command {
                return Err(format!(
                    "{name} module: the frames of {command:?} read as {so_far:?}"
                ));
            }
        } else {
            parts = Some(so_far);
        }
        Ok(if is_setting(&part) {
            module.encode_reply(MODULE_ADDRESS, &Reply::Ack(part))
        } else if last {
            module.encode_reply(MODULE_ADDRESS, &module_reply(&command))
        } else {
            Vec::new()
        })
    });
    Ok(Exchange {
        name: name.into(),
        responder,
        steps,
        window: 1,
    })
}

// ---------------------------------------------------------------------------
// Running an exchange over the real driver.

async fn run_exchange(ifname: &str, exchange: Exchange) -> Result<ExchangeReport, String> {
    let Exchange {
        name,
        responder,
        steps,
        window,
    } = exchange;
    let requests: Vec<CanFrame> = steps.iter().flat_map(|s| s.request.clone()).collect();
    let replies: Vec<CanFrame> = steps.iter().flat_map(|s| s.expect.clone()).collect();

    // Everyone listening before the controller sends its first frame.
    let emulator = Emulator::start(ifname, responder).map_err(|e| format!("{name}: {e}"))?;
    let monitor = Monitor::start(ifname).map_err(|e| format!("{name}: {e}"))?;
    let controlled = match SocketCanBus::open(ifname) {
        Ok(bus) => control(bus, &steps, window).await,
        Err(e) => Err(format!("controller: {e}")),
    };
    let emulated = emulator.stop();
    let monitored = monitor.stop().await;

    let (rtt, elapsed) = match (controlled, &emulated) {
        (Ok(timing), Ok(_)) => timing,
        (Ok(_), Err(e)) => return Err(format!("{name}: {e}")),
        // The emulator's failure is the likelier cause of the controller's.
        (Err(c), Err(e)) => return Err(format!("{name}: {e}; {c}")),
        (Err(c), Ok(_)) => return Err(format!("{name}: {c}")),
    };
    let heard = emulated.expect("checked above");
    if heard != requests {
        return Err(format!(
            "{name}: the emulator heard {} frames, the controller sent {}{}",
            heard.len(),
            requests.len(),
            first_difference(&heard, &requests)
        ));
    }
    check_monitor(&monitored?, &requests, &replies).map_err(|e| format!("{name}: {e}"))?;

    Ok(ExchangeReport {
        name,
        steps: steps.len(),
        requests: requests.len(),
        replies: replies.len(),
        standard: requests.iter().filter(|f| !f.is_extended()).count(),
        extended: requests.iter().filter(|f| f.is_extended()).count(),
        rtt,
        elapsed,
    })
}

/// The controller: send each window of steps, then read and check their
/// replies; finally the bus must stay quiet. Returns the round-trip times
/// (window 1) and the time it all took.
async fn control(
    mut bus: SocketCanBus,
    steps: &[Step],
    window: usize,
) -> Result<(Vec<Duration>, Duration), String> {
    let started = Instant::now();
    let mut rtt = Vec::new();
    let mut n = 0usize;
    for chunk in steps.chunks(window.max(1)) {
        let sent = Instant::now();
        for step in chunk {
            for frame in &step.request {
                bus.send(frame)
                    .await
                    .map_err(|e| format!("controller, step {n}: {e}"))?;
            }
        }
        for step in chunk {
            let mut got = Vec::with_capacity(step.expect.len());
            for expected in &step.expect {
                let frame = match tokio::time::timeout(REPLY_TIMEOUT, bus.recv()).await {
                    Err(_) => {
                        return Err(format!(
                            "controller, step {n}: no reply within {REPLY_TIMEOUT:?} \
                             (expected {})",
                            show(expected)
                        ));
                    }
                    Ok(Err(e)) => return Err(format!("controller, step {n}: {e}")),
                    Ok(Ok(frame)) => frame,
                };
                if frame != *expected {
                    let own = if step.request.contains(&frame) {
                        " — its own request came back (CAN_RAW_RECV_OWN_MSGS?)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "controller, step {n}: got {}, expected {}{own}",
                        show(&frame),
                        show(expected)
                    ));
                }
                got.push(frame);
            }
            if let Some(check) = &step.check {
                check(&got).map_err(|e| format!("controller, step {n}: {e}"))?;
            }
            n += 1;
        }
        if window <= 1 {
            rtt.push(sent.elapsed());
        }
    }
    let elapsed = started.elapsed();
    match tokio::time::timeout(QUIET, bus.recv()).await {
        Err(_) => Ok((rtt, elapsed)),
        Ok(Ok(frame)) => Err(format!(
            "controller: a stray frame {} after the last reply",
            show(&frame)
        )),
        Ok(Err(e)) => Err(format!("controller, after the last reply: {e}")),
    }
}

/// The module emulator, on its own thread with its own runtime.
struct Emulator {
    stop: oneshot::Sender<()>,
    thread: thread::JoinHandle<Result<Vec<CanFrame>, String>>,
}

impl Emulator {
    /// Returns once the emulator's socket is open.
    fn start(ifname: &str, mut responder: Responder) -> Result<Self, String> {
        let ifname = ifname.to_owned();
        let (ready, is_ready) = std_mpsc::channel();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("module-emulator".into())
            .spawn(move || -> Result<Vec<CanFrame>, String> {
                let rt = runtime()?;
                rt.block_on(async move {
                    let mut bus =
                        SocketCanBus::open(&ifname).map_err(|e| format!("emulator: {e}"))?;
                    let _ = ready.send(());
                    let mut heard = Vec::new();
                    loop {
                        tokio::select! {
                            biased;
                            _ = &mut stopped => return Ok(heard),
                            frame = bus.recv() => {
                                let frame = frame.map_err(|e| format!("emulator: {e}"))?;
                                heard.push(frame);
                                for reply in responder(&frame)? {
                                    bus.send(&reply)
                                        .await
                                        .map_err(|e| format!("emulator: {e}"))?;
                                }
                            }
                        }
                    }
                })
            })
            .map_err(|e| format!("cannot start the emulator thread: {e}"))?;
        match is_ready.recv() {
            Ok(()) => Ok(Emulator { stop, thread }),
            // The thread ended before its socket was open: its error says why.
            Err(_) => Err(join(thread)
                .err()
                .unwrap_or_else(|| "emulator ended".into())),
        }
    }

    /// Stop it; the frames it heard, or why it failed.
    fn stop(self) -> Result<Vec<CanFrame>, String> {
        let _ = self.stop.send(());
        join(self.thread)
    }
}

fn join<T>(thread: thread::JoinHandle<Result<T, String>>) -> Result<T, String> {
    thread
        .join()
        .unwrap_or_else(|_| Err("emulator: panicked".into()))
}

/// A listener that only records what it hears.
struct Monitor {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Vec<CanFrame>, String>>,
}

impl Monitor {
    fn start(ifname: &str) -> Result<Self, String> {
        let mut bus = SocketCanBus::open(ifname).map_err(|e| format!("monitor: {e}"))?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut heard = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    frame = bus.recv() => heard.push(frame.map_err(|e| format!("monitor: {e}"))?),
                    _ = &mut stopped => return Ok(heard),
                }
            }
        });
        Ok(Monitor { stop, task })
    }

    async fn stop(self) -> Result<Vec<CanFrame>, String> {
        let _ = self.stop.send(());
        self.task
            .await
            .unwrap_or_else(|e| Err(format!("monitor: {e}")))
    }
}

/// The monitor must have heard every request and every reply, each stream
/// in its order, and nothing else. (Requests and replies interleave freely
/// when several are in flight; where a frame could be either, it counts as
/// the request, which on vcan always comes first.)
fn check_monitor(
    heard: &[CanFrame],
    requests: &[CanFrame],
    replies: &[CanFrame],
) -> Result<(), String> {
    let (mut req, mut rep) = (0, 0);
    for (k, frame) in heard.iter().enumerate() {
        if requests.get(req) == Some(frame) {
            req += 1;
        } else if replies.get(rep) == Some(frame) {
            rep += 1;
        } else {
            return Err(format!(
                "the monitor's frame {k} is {}: neither request {req} nor reply {rep}",
                show(frame)
            ));
        }
    }
    if (req, rep) != (requests.len(), replies.len()) {
        return Err(format!(
            "the monitor heard {req} of {} requests and {rep} of {} replies",
            requests.len(),
            replies.len()
        ));
    }
    Ok(())
}

fn first_difference(a: &[CanFrame], b: &[CanFrame]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("; frame {i} differs: {} vs {}", show(&a[i]), show(&b[i])),
        None => String::new(),
    }
}

/// A frame as candump writes it: `123#DEADBEEF`, `1806E5F4#0102`.
fn show(frame: &CanFrame) -> String {
    let id = if frame.is_extended() {
        format!("{:08X}", frame.id())
    } else {
        format!("{:03X}", frame.id())
    };
    let data: String = frame.data().iter().map(|b| format!("{b:02X}")).collect();
    format!("{id}#{data}")
}

// ---------------------------------------------------------------------------
// The error path.

/// Opening a missing or non-CAN interface fails with an error naming it;
/// sending on an interface that is down fails. Returns how many checks ran.
async fn check_error_path(options: &Options) -> Result<usize, String> {
    let mut checks = 0;
    let mut open_fails = |ifname: &str, why: &str| -> Result<(), String> {
        match SocketCanBus::open(ifname) {
            Ok(_) => Err(format!("opening {ifname} ({why}) succeeded")),
            Err(e) => {
                let message = e.to_string();
                detail(format_args!("opening {ifname} ({why}) fails: {message}"));
                if !message.contains(&format!("interface {ifname}:")) {
                    return Err(format!(
                        "the error for {ifname} does not name the interface: {message}"
                    ));
                }
                checks += 1;
                Ok(())
            }
        }
    };
    open_fails(MISSING_IF, "no such interface")?;
    // The loopback device exists in every network namespace; AF_CAN refuses
    // to bind to it.
    open_fails("lo", "not a CAN interface")?;

    if let Some(down) = &options.down {
        let mut bus = SocketCanBus::open(down)
            .map_err(|e| format!("opening {down} (down, but present): {e}"))?;
        let frame = CanFrame::standard(0x123, &[1, 2, 3]).expect("valid frame");
        match bus.send(&frame).await {
            Ok(()) => return Err(format!("sending on {down}, which is down, succeeded")),
            Err(e) => {
                let message = e.to_string();
                detail(format_args!("sending on {down} (down) fails: {message}"));
                if !message.contains(down.as_str()) {
                    return Err(format!(
                        "the error for {down} does not name the interface: {message}"
                    ));
                }
                checks += 1;
            }
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frames_cover_both_id_kinds_edges_and_lengths() {
        let frames: Vec<CanFrame> = (0..18).map(test_frame).collect();
        assert_eq!(frames[0].id(), 0);
        assert!(!frames[0].is_extended());
        assert_eq!(frames[1].id(), 0);
        assert!(frames[1].is_extended());
        assert_eq!(frames[2].id(), MAX_STANDARD_ID);
        assert_eq!(frames[3].id(), MAX_EXTENDED_ID);
        let lengths: std::collections::BTreeSet<usize> =
            frames.iter().map(|f| f.data().len()).collect();
        assert_eq!(lengths.len(), 9);
        assert_eq!(test_frame(1000), test_frame(1000), "repeatable");
    }

    #[test]
    fn answers_differ_from_their_requests() {
        for i in 0..2000 {
            let request = test_frame(i);
            let answer = test_answer(&request);
            assert_ne!(answer.id(), request.id());
            assert_eq!(answer.is_extended(), request.is_extended());
            assert_eq!(answer.data().len(), request.data().len());
        }
        let request = CanFrame::extended(0x1806_E5F4, &[0x01, 0xFF]).unwrap();
        let answer = test_answer(&request);
        assert_eq!(show(&answer), "07F91A0B#5AA4");
    }

    #[test]
    fn monitor_check_accepts_interleaving_and_rejects_loss_and_extras() {
        let requests: Vec<CanFrame> = (0..3).map(test_frame).collect();
        let replies: Vec<CanFrame> = requests.iter().map(test_answer).collect();
        let (q, p) = (&requests, &replies);
        assert!(check_monitor(&[q[0], p[0], q[1], p[1], q[2], p[2]], q, p).is_ok());
        assert!(check_monitor(&[q[0], q[1], p[0], q[2], p[1], p[2]], q, p).is_ok());
        let lost = check_monitor(&[q[0], p[0], q[1], q[2], p[2]], q, p).unwrap_err();
        assert!(lost.contains("reply 1"), "{lost}");
        let short = check_monitor(&[q[0], p[0], q[1], p[1], q[2]], q, p).unwrap_err();
        assert!(short.contains("2 of 3 replies"), "{short}");
        let twice = check_monitor(&[q[0], q[0], p[0]], q, p).unwrap_err();
        assert!(twice.contains("neither"), "{twice}");
    }

    /// An exchange without a bus: each request straight to the responder,
    /// its answers compared as the controller does.
    fn simulate(mut exchange: Exchange) -> Result<usize, String> {
        let mut frames = 0;
        for step in &exchange.steps {
            let mut answers = Vec::new();
            for frame in &step.request {
                answers.extend((exchange.responder)(frame)?);
            }
            if answers != step.expect {
                return Err(format!("answers {answers:?}, expected {:?}", step.expect));
            }
            if let Some(check) = &step.check {
                check(&answers)?;
            }
            frames += step.request.len() + answers.len();
        }
        Ok(frames)
    }

    #[test]
    fn exchanges_hold_without_a_bus() {
        assert_eq!(simulate(raw_exchange("raw", 0, 100, 1)), Ok(200));
        for exchange in protocol_exchanges().unwrap() {
            let name = exchange.name.clone();
            let frames = simulate(exchange).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(frames > 0, "{name}");
        }
    }

    #[test]
    fn a_module_that_misreads_a_command_fails_the_exchange() {
        for (name, frameless) in PROTOCOLS {
            let mut exchange = protocol_exchange(name, frameless).unwrap();
            // The second command's frame where the first's was expected.
            let second = exchange.steps[1].request[0];
            let err = (exchange.responder)(&second).unwrap_err();
            assert!(err.contains("the controller sent"), "{name}: {err}");
        }
    }

    #[test]
    fn a_module_that_hears_half_a_setpoint_twice_fails_the_exchange() {
        let (name, frameless) = PROTOCOLS[1];
        assert_eq!(name, "uugreen");
        let mut exchange = protocol_exchange(name, frameless).unwrap();
        // The voltage setpoint twice: the second is not the current limit.
        let voltage = exchange.steps[0].request[0];
        assert_eq!((exchange.responder)(&voltage).unwrap().len(), 1);
        let err = (exchange.responder)(&voltage).unwrap_err();
        assert!(err.contains("already had"), "{err}");
    }

    #[test]
    fn uugreen_commands_span_frames_and_reads_are_answered_once() {
        let (name, frameless) = PROTOCOLS[1];
        let exchange = protocol_exchange(name, frameless).unwrap();
        // SetOutput, SetOn(true), ReadOutput, ReadStatus, SetOn(false): no
        // ratings message.
        let shape: Vec<(usize, usize)> = exchange
            .steps
            .iter()
            .map(|s| (s.request.len(), s.expect.len()))
            .collect();
        assert_eq!(shape, [(2, 2), (1, 1), (2, 2), (1, 1), (1, 1)]);
        let (name, frameless) = PROTOCOLS[0];
        assert_eq!(name, "infypower");
        let exchange = protocol_exchange(name, frameless).unwrap();
        assert_eq!(exchange.steps.len(), 6, "every command, a frame each");
        assert!(
            exchange
                .steps
                .iter()
                .all(|s| s.request.len() == 1 && s.expect.len() == 1)
        );
    }

    #[test]
    fn merging_parts() {
        let half = |v: Option<f64>, i: Option<f64>| Command::SetOutput {
            voltage_v: v,
            current_a: i,
        };
        assert_eq!(
            merge_commands(half(Some(1.0), None), half(None, Some(2.0))),
            Some(half(Some(1.0), Some(2.0)))
        );
        assert_eq!(
            merge_commands(half(Some(1.0), None), half(Some(1.0), None)),
            None
        );
        assert_eq!(
            merge_commands(Command::ReadOutput, Command::ReadOutput),
            Some(Command::ReadOutput)
        );
        assert_eq!(
            merge_commands(Command::ReadOutput, Command::ReadStatus),
            None
        );
        assert!(is_part_of(
            &half(None, Some(2.0)),
            &half(Some(1.0), Some(2.0))
        ));
        assert!(!is_part_of(
            &half(None, Some(3.0)),
            &half(Some(1.0), Some(2.0))
        ));
        assert_eq!(
            merge_replies(
                Reply::Output {
                    voltage_v: None,
                    current_a: Some(2.0)
                },
                Reply::Output {
                    voltage_v: Some(1.0),
                    current_a: None
                }
            ),
            Some(Reply::Output {
                voltage_v: Some(1.0),
                current_a: Some(2.0)
            })
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&samples, 50), Duration::from_micros(50));
        assert_eq!(percentile(&samples, 99), Duration::from_micros(99));
        assert_eq!(percentile(&samples[..1], 99), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn options_parse() {
        let parse = |args: &[&str]| Options::parse(args.iter().map(|s| s.to_string()));
        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.ifname.as_str(), defaults.frames), ("vcan0", 1000));
        let set = parse(&["can1", "--frames", "10", "--down", "vcan1"]).unwrap();
        assert_eq!(set.ifname, "can1");
        assert_eq!(set.frames, 10);
        assert_eq!(set.down.as_deref(), Some("vcan1"));
        assert!(parse(&["--frames"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["a", "b"]).is_err());
    }
}
