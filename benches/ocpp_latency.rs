//! Latency, throughput and footprint of the `ocpp` service (OCPP 1.6J
//! client), end to end: a CSMS played by the bench over a real WebSocket,
//! the real services as processes on a private dbus-daemon, hal-sim as the
//! physical world. Prints figures and asserts nothing about them.
//!
//! `cargo bench --bench ocpp_latency` (about 70 s after the build).
//! Without `--bench` it only says it was skipped. State dirs go under
//! `$EVOS_BENCH_DIR` (default: the system temp dir), so point it at the file
//! system whose fsync you care about (tmpfs makes it free). The services log at
//! `warn` unless `EVOS_LOG` says otherwise (logging every limit at `info` to
//! a terminal would be measured too).
//!
//! The CSMS: a tokio-tungstenite server agreeing to `ocpp1.6` (OCPP-J 1.6
//! §3), framing with `evos_ocpp::rpc`, answering every station CALL at once
//! (BootNotification Accepted, Authorize Accepted, StartTransaction with a
//! new transactionId, the rest empty confirmations).
//!
//! 1. AC, `[evse] auth = "ocpp"`, an EV plugged and charging (Sim1 plug +
//!    swipe): SetChargingProfile CALLs (TxDefaultProfile on connector 1,
//!    §5.16 / §3.13) alternating 10 A / 12 A, timed from just before the
//!    frame is written to the CALLRESULT and to Evse1 `ChargingLimit`
//!    PropertiesChanged arriving here.
//! 2. DC: hal-sim plays the EVSE and the EV only (its config has no
//!    `[power]`, so it emulates no modules and does not bind the CAN hub);
//!    the bench binds the hub and plays two InfyPower modules with the
//!    codec's module side, as benches/power_latency.rs does. The EV asks for
//!    200 A; each SetChargingProfile lowers the limit by 0.1 A, timed to the
//!    first SetOutput frame for module 1 carrying the new current.
//!
//!    The station saves its profiles (write temp, fsync, rename, fsync the
//!    dir) before it answers and before it pushes the limit, so 1 and 2
//!    follow the disk: each is followed by what that costs there just then.
//! 3. GetConfiguration (§5.8) round trips, all keys and one key.
//! 4. 10,000 transaction MeterValues queued while offline (written into the
//!    state dir with `evos_ocpp::queue::Queue`, bound to a transactionId,
//!    as the station stores them), drained after the station connects:
//!    from BootNotification accepted to the 10,000th received.
//! 5. RSS and PSS of `ocpp` idle and during a session with
//!    MeterValueSampleInterval = 1, and its CPU over 20 s in each.

#[path = "../tests/harness/mod.rs"]
#[allow(unused_imports)]
mod harness;
#[path = "support/infy_modules.rs"]
mod infy_modules;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use evos_bus::evse::Evse1Proxy;
use evos_bus::sim::Sim1Proxy;
use evos_hal::can::SimCanHub;
use evos_ocpp::rpc::{self, Call, CallError, CallResult, ErrorCode, Frame};
use evos_ocpp::v16::messages as m;
use evos_ocpp::wire::{CiString, DateTime};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::header;

const TOKEN: &str = "BENCH-TAG";
const PROFILE_CALLS: usize = 600;
const CONFIG_CALLS: usize = 2000;
const QUEUED: usize = 10_000;
const DC_MODULES: u8 = 2;
const IDLE_SETTLE: Duration = Duration::from_secs(10);
const CPU_WINDOW: Duration = Duration::from_secs(20);
/// Guards against a hang in a broken build; never reached when things work.
const GUARD: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the CSMS

type Ws = WebSocketStream<TcpStream>;
type Sink = Arc<Mutex<Option<SplitSink<Ws, Message>>>>;

/// What the CSMS saw.
enum Seen {
    /// A station CALL, answered at `answered`.
    Call {
        action: String,
        at: Instant,
        answered: Instant,
    },
    /// The station's answer to one of our CALLs.
    Answer {
        id: String,
        result: Result<Value, String>,
        at: Instant,
    },
}

struct Csms {
    port: u16,
    sink: Sink,
    seen: mpsc::UnboundedReceiver<Seen>,
    next_id: u64,
    /// Station CALLs seen so far, by action.
    counts: BTreeMap<String, usize>,
}

impl Csms {
    async fn start() -> Csms {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sink: Sink = Arc::new(Mutex::new(None));
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let accepted = sink.clone();
        tokio::spawn(async move {
            let transaction_ids = Arc::new(AtomicI32::new(1000));
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                // tungstenite's handshake callback returns a whole http::Response
                // as its error type.
                #[allow(clippy::result_large_err)]
                let agree = |request: &Request, mut response: Response| {
                    let asked = request
                        .headers()
                        .get(header::SEC_WEBSOCKET_PROTOCOL)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.split(',').any(|p| p.trim() == "ocpp1.6"));
                    if asked {
                        response.headers_mut().insert(
                            header::SEC_WEBSOCKET_PROTOCOL,
                            header::HeaderValue::from_static("ocpp1.6"),
                        );
                    }
                    Ok(response)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, agree).await else {
                    continue;
                };
                let (write, read) = ws.split();
                *accepted.lock().await = Some(write);
                tokio::spawn(serve(
                    read,
                    accepted.clone(),
                    seen_tx.clone(),
                    transaction_ids.clone(),
                ));
            }
        });
        Csms {
            port,
            sink,
            seen,
            next_id: 0,
            counts: BTreeMap::new(),
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Send a CALL; returns its id and the instant just before the write.
    async fn call<R: m::Request>(&mut self, request: &R) -> (String, Instant) {
        self.next_id += 1;
        let id = format!("csms-{}", self.next_id);
        let text = Frame::Call(Call {
            id: id.clone(),
            action: R::ACTION.into(),
            payload: serde_json::to_value(request).unwrap(),
        })
        .to_text();
        let mut sink = self.sink.lock().await;
        let sink = sink.as_mut().expect("the station is connected");
        let t0 = Instant::now();
        sink.send(Message::text(text)).await.unwrap();
        (id, t0)
    }

    /// The next thing seen, counting station CALLs.
    async fn next(&mut self) -> Seen {
        let seen = tokio::time::timeout(GUARD, self.seen.recv())
            .await
            .expect("the station talks to the CSMS")
            .expect("the CSMS runs");
        if let Seen::Call { action, .. } = &seen {
            *self.counts.entry(action.clone()).or_default() += 1;
        }
        seen
    }

    /// Wait for the station's answer to CALL `id`.
    async fn answer(&mut self, id: &str) -> (Value, Instant) {
        loop {
            if let Seen::Answer {
                id: answered,
                result,
                at,
            } = self.next().await
                && answered == id
            {
                return (result.unwrap_or_else(|e| panic!("CALLERROR: {e}")), at);
            }
        }
    }

    /// Wait for a station CALL of `action`; the instant it was answered.
    async fn wait_call(&mut self, action: &str) -> Instant {
        loop {
            if let Seen::Call {
                action: a,
                answered,
                ..
            } = self.next().await
                && a == action
            {
                return answered;
            }
        }
    }

    /// Count what arrived without waiting.
    fn drain(&mut self) {
        while let Ok(seen) = self.seen.try_recv() {
            if let Seen::Call { action, .. } = seen {
                *self.counts.entry(action).or_default() += 1;
            }
        }
    }

    fn count(&self, action: &str) -> usize {
        self.counts.get(action).copied().unwrap_or(0)
    }
}

/// One station connection: answer its CALLs at once, report everything.
async fn serve(
    mut read: SplitStream<Ws>,
    sink: Sink,
    seen: mpsc::UnboundedSender<Seen>,
    transaction_ids: Arc<AtomicI32>,
) {
    while let Some(Ok(message)) = read.next().await {
        let at = Instant::now();
        let Message::Text(text) = message else {
            continue;
        };
        let report = match rpc::parse(text.as_str()) {
            Ok(Frame::Call(call)) => {
                let reply = answer(&call, &transaction_ids).to_text();
                if let Some(s) = sink.lock().await.as_mut() {
                    let _ = s.send(Message::text(reply)).await;
                }
                Seen::Call {
                    action: call.action,
                    at,
                    answered: Instant::now(),
                }
            }
            Ok(Frame::CallResult(r)) => Seen::Answer {
                id: r.id,
                result: Ok(r.payload),
                at,
            },
            Ok(Frame::CallError(e)) => Seen::Answer {
                id: e.id,
                result: Err(format!("{}: {}", e.code, e.description)),
                at,
            },
            Err(e) => {
                eprintln!("CSMS: malformed frame from the station: {e}");
                continue;
            }
        };
        let _ = seen.send(report);
    }
}

fn accepted() -> m::IdTagInfo {
    m::IdTagInfo {
        expiry_date: None,
        parent_id_tag: None,
        status: m::AuthorizationStatus::Accepted,
    }
}

/// The CSMS's answer to a station CALL.
fn answer(call: &Call, transaction_ids: &AtomicI32) -> Frame {
    fn ok<T: serde::Serialize>(id: &str, conf: T) -> Frame {
        Frame::CallResult(CallResult {
            id: id.into(),
            payload: serde_json::to_value(conf).unwrap(),
        })
    }
    let id = call.id.as_str();
    match call.action.as_str() {
        "BootNotification" => ok(
            id,
            m::BootNotificationResponse {
                status: m::RegistrationStatus::Accepted,
                current_time: DateTime::now(),
                interval: 300,
            },
        ),
        "Heartbeat" => ok(
            id,
            m::HeartbeatResponse {
                current_time: DateTime::now(),
            },
        ),
        "Authorize" => ok(
            id,
            m::AuthorizeResponse {
                id_tag_info: accepted(),
            },
        ),
        "StartTransaction" => ok(
            id,
            m::StartTransactionResponse {
                id_tag_info: accepted(),
                transaction_id: transaction_ids.fetch_add(1, Ordering::Relaxed),
            },
        ),
        "StopTransaction" => ok(id, m::StopTransactionResponse::default()),
        "StatusNotification"
        | "MeterValues"
        | "DiagnosticsStatusNotification"
        | "FirmwareStatusNotification" => ok(id, serde_json::json!({})),
        other => Frame::CallError(CallError::new(
            id,
            ErrorCode::NotImplemented,
            format!("the bench CSMS does not answer {other}"),
        )),
    }
}

fn tx_default_profile(limit_a: f64) -> m::SetChargingProfileRequest {
    m::SetChargingProfileRequest {
        connector_id: 1,
        cs_charging_profiles: m::ChargingProfile {
            charging_profile_id: 1,
            transaction_id: None,
            stack_level: 0,
            charging_profile_purpose: m::ChargingProfilePurposeType::TxDefaultProfile,
            charging_profile_kind: m::ChargingProfileKindType::Absolute,
            recurrency_kind: None,
            valid_from: None,
            valid_to: None,
            charging_schedule: m::ChargingSchedule {
                duration: None,
                // Long past: the limit holds from now on.
                start_schedule: Some(DateTime::from_unix_ms(1_577_836_800_000)),
                charging_rate_unit: m::ChargingRateUnitType::A,
                charging_schedule_period: vec![m::ChargingSchedulePeriod {
                    start_period: 0,
                    limit: limit_a,
                    number_phases: None,
                }],
                min_charging_rate: None,
            },
        },
    }
}

fn assert_accepted(conf: Value) {
    let conf: m::SetChargingProfileResponse = serde_json::from_value(conf).unwrap();
    assert_eq!(conf.status, m::ChargingProfileStatus::Accepted);
}

// ------------------------------------------------------------ the stations

/// A fresh directory for one station (its state dir inside) under
/// `$EVOS_BENCH_DIR`, default the system temp dir: fsync costs what that
/// file system makes it cost.
fn temp_dir() -> tempfile::TempDir {
    let base = std::env::var_os("EVOS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).unwrap()
}

/// Children killed (in reverse start order) when dropped.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `evos run SERVICE` with the station config, reporting READY.
fn spawn(service: &str, config: &Path, dir: &Path, bus: &str) -> Child {
    let state = dir.join("state");
    let args = [
        "run",
        service,
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    tokio::task::block_in_place(|| harness::spawn_ready(&args, dir, service, bus).0)
}

fn ocpp_section(url: &str, station: &str, extra: &str) -> String {
    format!("\n[ocpp]\ncsms_url = \"{url}\"\nstation_id = \"{station}\"\n{extra}")
}

fn ac_config(dir: &Path, csms: &str) -> PathBuf {
    let path = dir.join("evos.toml");
    let text = format!(
        "[evse]\nauth = \"ocpp\"\n\n[[evse.evse]]\nid = 1\nkind = \"ac\"\nlink = \"unix:{}\"\n\
         max_current_a = 32\nphases = 3\n\n\
         [meter]\npoll_interval_ms = 1000\n\n[[meter.meter]]\nevse = 1\nmap = \"sdm630\"\n\
         transport = \"tcp:127.0.0.1:{}\"\n{}",
        dir.join("mcu-1.sock").display(),
        harness::free_port(),
        ocpp_section(csms, "BENCH-AC", "")
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The services' config and hal-sim's (the same without `[power]`, so
/// hal-sim emulates no modules and leaves the CAN hub to the bench).
fn dc_configs(dir: &Path, csms: &str) -> (PathBuf, PathBuf) {
    let evse = format!(
        "[evse]\nauth = \"ocpp\"\n\n[[evse.evse]]\nid = 1\nkind = \"dc\"\nlink = \"unix:{}\"\n\
         max_current_a = 200\nsocket = false\n\n\
         [meter]\npoll_interval_ms = 1000\n\n[[meter.meter]]\nevse = 1\nmap = \"dc-meter\"\n\
         transport = \"tcp:127.0.0.1:{}\"\n",
        dir.join("mcu-1.sock").display(),
        harness::free_port(),
    );
    let pool: Vec<String> = (1..=DC_MODULES).map(|a| a.to_string()).collect();
    let mut power = format!(
        "\n[power]\nprotocol = \"infypower\"\ncan = \"sim:{}\"\nramp_a_per_s = 100000\n\
         control_interval_ms = 100\npool_max_power_w = {}\npool = [{}]\n",
        dir.join("can.sock").display(),
        40_000 * u32::from(DC_MODULES),
        pool.join(", ")
    );
    for a in 1..=DC_MODULES {
        power += &format!(
            "\n[[power.module]]\naddress = {a}\nmax_current_a = 100\nmax_power_w = 40000\n"
        );
    }
    power += "\n[[power.output]]\nevse = 1\n";
    // The limits are in A up to 200 A at the EV's 400 V.
    let ocpp = ocpp_section(
        csms,
        "BENCH-DC",
        "voltage_v = 400\nphases = 1\nmax_current_a = 200\n",
    );
    let services = dir.join("evos.toml");
    let sim = dir.join("sim.toml");
    std::fs::write(&services, format!("{evse}{power}{ocpp}")).unwrap();
    std::fs::write(&sim, evse).unwrap();
    (services, sim)
}

/// Plug an EV of `profile`, present the token (authorized by the CSMS
/// through ocpp), and wait until it charges and its StartTransaction is in.
async fn start_session(connection: &zbus::Connection, csms: &mut Csms, profile: &str) {
    let sim = Sim1Proxy::new(connection).await.unwrap();
    let evse = evse_proxy(connection).await;
    harness::wait_cp(&evse, "A").await;
    sim.plug(1, profile).await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap();
    if csms.count("StartTransaction") == 0 {
        csms.wait_call("StartTransaction").await;
    }
    harness::wait_status(&evse, "Charging").await;
}

async fn evse_proxy(connection: &zbus::Connection) -> Evse1Proxy<'static> {
    Evse1Proxy::builder(connection)
        .path(evos_bus::evse::path(1))
        .build()
        .await
        .unwrap()
}

/// Let whatever the station sends settle, then forget it.
async fn quiet(csms: &mut Csms) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    csms.drain();
}

// ----------------------------------------------------------------- figures

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_latencies(rows: &mut [(&str, Vec<Duration>)]) {
    for (name, v) in rows.iter_mut() {
        v.sort();
        println!(
            "  {name:<26} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(v[v.len() - 1])
        );
    }
}

fn kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What persisting costs on this file system right now (other processes'
/// I/O included): `write_atomic` (temp file, fsync, rename, fsync of the
/// directory) of a small file, as the station saves its charging profiles.
fn disk_probe(dir: &Path) -> String {
    let path = dir.join("probe.json");
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let t0 = Instant::now();
            evos_service::persist::write_atomic(&path, &[b' '; 600]).unwrap();
            t0.elapsed()
        })
        .collect();
    times.sort();
    format!(
        "write_atomic of 600 B on this disk now: p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99))
    )
}

/// "RSS … KiB, PSS … KiB" of `pid`.
fn memory(pid: u32) -> String {
    format!(
        "RSS {} KiB, PSS {} KiB",
        kib(pid, "status", "VmRSS:"),
        kib(pid, "smaps_rollup", "Pss:")
    )
}

/// utime and stime (clock ticks, stat(5) fields 14 and 15) and the run
/// time of each thread (ns, schedstat, by thread id), which resolves far
/// below a tick. Threads come and go (tokio's blocking pool), so run times
/// are compared per thread.
fn cpu(pid: u32) -> (u64, u64, std::collections::HashMap<String, u64>) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut ns = std::collections::HashMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let run = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            ns.insert(task.file_name().to_string_lossy().into_owned(), run);
        }
    }
    (field(11), field(12), ns)
}

/// CPU of `pid` over `window`, as a sentence.
async fn cpu_over(pid: u32, window: Duration) -> String {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, (user0, system0, ns0)) = (Instant::now(), cpu(pid));
    tokio::time::sleep(window).await;
    let (elapsed, (user1, system1, ns1)) = (t0.elapsed().as_secs_f64(), cpu(pid));
    let ticks = (user1 - user0) + (system1 - system0);
    // Threads that ended in the window are missed (their time is in the
    // ticks); new ones count from zero.
    let ran: u64 = ns1
        .iter()
        .map(|(tid, after)| after.saturating_sub(ns0.get(tid).copied().unwrap_or(0)))
        .sum();
    format!(
        "CPU {ticks} ticks ({} user, {} system; {:.3} % of one core) over {elapsed:.0} s; \
         run time {:.1} ms ({:.4} %)",
        user1 - user0,
        system1 - system0,
        ticks as f64 / hz / elapsed * 100.0,
        ran as f64 / 1e6,
        ran as f64 / 1e9 / elapsed * 100.0
    )
}

// ------------------------------------------------------------------ parts

/// Parts 1, 3 and 5 on an AC station.
async fn ac_station() {
    let dir = temp_dir();
    let mut csms = Csms::start().await;
    let config = ac_config(dir.path(), &csms.url());
    let (broker, bus) = harness::start_broker(dir.path());
    let mut procs = Procs(vec![broker]);
    let sim_args = ["run", "hal-sim", "--config", config.to_str().unwrap()];
    procs.0.push(tokio::task::block_in_place(|| {
        harness::spawn_ready(&sim_args, dir.path(), "hal-sim", &bus).0
    }));
    for service in ["meter", "evse"] {
        procs.0.push(spawn(service, &config, dir.path(), &bus));
    }
    let ocpp = spawn("ocpp", &config, dir.path(), &bus);
    let pid = ocpp.id();
    procs.0.push(ocpp);
    csms.wait_call("BootNotification").await;
    let connection = evos_bus::connection_builder(Some(&bus))
        .build()
        .await
        .unwrap();

    // 5a: idle, connected, no session.
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_memory = memory(pid);
    let idle_cpu = cpu_over(pid, CPU_WINDOW).await;
    csms.drain();
    println!(
        "ocpp idle (connected, no session; meter polled at 1 Hz), after {:.0} s: {idle_memory}",
        IDLE_SETTLE.as_secs_f64()
    );
    println!("  {idle_cpu}");
    println!(
        "  station CALLs while idle: {:?}",
        csms.counts
            .iter()
            .filter(|(a, _)| !matches!(a.as_str(), "BootNotification" | "StatusNotification"))
            .collect::<Vec<_>>()
    );

    // 1: SetChargingProfile → Evse1 ChargingLimit.
    start_session(&connection, &mut csms, "ac-11kw").await;
    let evse = evse_proxy(&connection).await;
    let mut limits = evse.receive_charging_limit_changed().await;
    quiet(&mut csms).await;
    let mut to_result = Vec::with_capacity(PROFILE_CALLS);
    let mut to_limit = Vec::with_capacity(PROFILE_CALLS);
    for i in 0..PROFILE_CALLS {
        let limit = if i % 2 == 0 { 10.0 } else { 12.0 };
        let (id, t0) = csms.call(&tx_default_profile(limit)).await;
        let limit_seen = async {
            loop {
                let change = tokio::time::timeout(GUARD, limits.next())
                    .await
                    .expect("ChargingLimit changes within the guard")
                    .expect("the property stream");
                let at = Instant::now();
                if let Ok((value, unit)) = change.get().await
                    && unit == "A"
                    && (value - limit).abs() < 1e-9
                {
                    return at;
                }
            }
        };
        let ((conf, answered), applied) = tokio::join!(csms.answer(&id), limit_seen);
        assert_accepted(conf);
        to_result.push(answered.duration_since(t0));
        to_limit.push(applied.duration_since(t0));
    }
    println!(
        "AC SetChargingProfile (TxDefaultProfile, 10/12 A alternating), {PROFILE_CALLS} CALLs, EV charging:"
    );
    print_latencies(&mut [
        ("→ CALLRESULT at the CSMS", to_result),
        ("→ Evse1 ChargingLimit", to_limit),
    ]);
    println!("  ({})", disk_probe(dir.path()));

    // 3: GetConfiguration round trips.
    quiet(&mut csms).await;
    println!("GetConfiguration round trip from the CSMS, {CONFIG_CALLS} CALLs each:");
    for (name, keys) in [
        ("all keys", None),
        (
            "one key (HeartbeatInterval)",
            Some(vec![CiString::new("HeartbeatInterval").unwrap()]),
        ),
    ] {
        let request = m::GetConfigurationRequest { key: keys };
        let mut times = Vec::with_capacity(CONFIG_CALLS);
        let mut bytes = 0;
        for _ in 0..CONFIG_CALLS {
            let (id, t0) = csms.call(&request).await;
            let (conf, at) = csms.answer(&id).await;
            times.push(at.duration_since(t0));
            bytes = conf.to_string().len();
        }
        print_latencies(&mut [(&format!("{name}, {bytes} B payload"), times)]);
    }

    // 5b: a session with MeterValueSampleInterval = 1.
    let (id, _) = csms
        .call(&m::ChangeConfigurationRequest {
            key: CiString::new("MeterValueSampleInterval").unwrap(),
            value: CiString::new("1").unwrap(),
        })
        .await;
    let (conf, _) = csms.answer(&id).await;
    let conf: m::ChangeConfigurationResponse = serde_json::from_value(conf).unwrap();
    assert_eq!(conf.status, m::ConfigurationStatus::Accepted);
    csms.drain();
    let before = csms.count("MeterValues");
    let session_cpu = cpu_over(pid, CPU_WINDOW).await;
    csms.drain();
    println!(
        "ocpp in a session, MeterValueSampleInterval = 1, after {:.0} s: {}",
        CPU_WINDOW.as_secs_f64(),
        memory(pid)
    );
    println!("  {session_cpu}");
    println!(
        "  MeterValues received in the window: {}",
        csms.count("MeterValues") - before
    );
    drop(procs);
}

/// Part 2 on a DC station.
async fn dc_station() {
    let dir = temp_dir();
    let mut csms = Csms::start().await;
    let (config, sim_config) = dc_configs(dir.path(), &csms.url());
    let hub = SimCanHub::bind(dir.path().join("can.sock")).await.unwrap();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    tokio::spawn(infy_modules::modules(hub, frames_tx));
    let (broker, bus) = harness::start_broker(dir.path());
    let mut procs = Procs(vec![broker]);
    let sim_args = ["run", "hal-sim", "--config", sim_config.to_str().unwrap()];
    procs.0.push(tokio::task::block_in_place(|| {
        harness::spawn_ready(&sim_args, dir.path(), "hal-sim", &bus).0
    }));
    for service in ["meter", "power", "evse", "ocpp"] {
        procs.0.push(spawn(service, &config, dir.path(), &bus));
    }
    csms.wait_call("BootNotification").await;
    let connection = evos_bus::connection_builder(Some(&bus))
        .build()
        .await
        .unwrap();
    start_session(&connection, &mut csms, "dc-400v").await;

    // The first limit: how module 1's share relates to the output's current.
    let first = 180.0;
    let (id, _) = csms.call(&tx_default_profile(first)).await;
    assert_accepted(csms.answer(&id).await.0);
    let mut share = None;
    let settle = Instant::now() + Duration::from_secs(2);
    while let Ok(Some((current, _))) =
        tokio::time::timeout_at(tokio::time::Instant::from_std(settle), frames.recv()).await
    {
        share = Some(current / first);
    }
    let share = share.expect("SetOutput frames for module 1");
    quiet(&mut csms).await;

    let mut to_result = Vec::with_capacity(PROFILE_CALLS);
    let mut to_frame = Vec::with_capacity(PROFILE_CALLS);
    for i in 0..PROFILE_CALLS {
        // Tenths of an ampere, as the schema's multipleOf 0.1 wants.
        let limit = (first * 10.0 - (i + 1) as f64).round() / 10.0;
        let want = limit * share;
        while frames.try_recv().is_ok() {}
        let (id, t0) = csms.call(&tx_default_profile(limit)).await;
        let frame_seen = async {
            loop {
                let (current, at) = tokio::time::timeout(GUARD, frames.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no SetOutput with {want} A for module 1"))
                    .expect("the modules run");
                if (current - want).abs() < 0.01 {
                    return at;
                }
            }
        };
        let ((conf, answered), sent) = tokio::join!(csms.answer(&id), frame_seen);
        assert_accepted(conf);
        to_result.push(answered.duration_since(t0));
        to_frame.push(sent.duration_since(t0));
    }
    println!(
        "DC SetChargingProfile (TxDefaultProfile, {first} A down by 0.1 A; EV asks 200 A), {PROFILE_CALLS} CALLs, \
         {DC_MODULES} InfyPower modules (module 1 takes {:.0} %):",
        share * 100.0
    );
    print_latencies(&mut [
        ("→ CALLRESULT at the CSMS", to_result),
        ("→ SetOutput for module 1", to_frame),
    ]);
    println!("  ({})", disk_probe(dir.path()));
    drop(procs);
}

/// Part 4: the offline queue drained after the station connects.
async fn queue_drain() {
    let dir = temp_dir();
    let mut csms = Csms::start().await;
    let config = dir.path().join("evos.toml");
    std::fs::write(&config, ocpp_section(&csms.url(), "BENCH-Q", "")).unwrap();

    // As the station stores them: StartTransaction.conf bound the session to
    // a transactionId, then each periodic sample was pushed.
    let tx_ref = "bench-session";
    let reading = evos_bus::meter::MeterReading {
        timestamp_ms: 0,
        energy_import_wh: 12_345.6,
        energy_export_wh: f64::NAN,
        power_w: 11_000.0,
        power_phase_w: vec![],
        voltage_v: vec![230.0; 3],
        current_a: vec![16.0; 3],
        frequency_hz: 50.0,
    };
    let measurands = [
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Current.Import",
    ]
    .map(String::from);
    let mut queue = evos_ocpp::queue::Queue::open(&dir.path().join("state/ocpp/queue")).unwrap();
    queue.bind_transaction(tx_ref, 4242).unwrap();
    let start = Instant::now();
    for n in 0..QUEUED {
        let stamp = evos_ocpp::clock::system_ms();
        let mv = evos_ocpp::v16::outgoing::meter_value(
            &reading,
            &measurands,
            m::ReadingContext::SamplePeriodic,
            stamp,
        )
        .unwrap();
        let request = m::MeterValuesRequest {
            connector_id: 1,
            transaction_id: None,
            meter_value: vec![mv],
        };
        let payload = serde_json::to_value(&request).unwrap();
        if n == 0 {
            println!(
                "Offline queue: {QUEUED} MeterValues of {} B each (payload JSON)",
                payload.to_string().len()
            );
        }
        queue
            .push("MeterValues", payload, Some(tx_ref), stamp)
            .unwrap();
    }
    let pushed = start.elapsed();
    drop(queue);
    println!(
        "  persisted with Queue::push (the station's code, an fsync each): {:.1} s, {:.0} pushes/s",
        pushed.as_secs_f64(),
        QUEUED as f64 / pushed.as_secs_f64()
    );

    let (broker, bus) = harness::start_broker(dir.path());
    let mut procs = Procs(vec![broker]);
    procs.0.push(spawn("ocpp", &config, dir.path(), &bus));
    let accepted = csms.wait_call("BootNotification").await;
    let mut last = accepted;
    while csms.count("MeterValues") < QUEUED {
        if let Seen::Call { action, at, .. } = csms.next().await
            && action == "MeterValues"
        {
            last = at;
        }
    }
    let drained = last.duration_since(accepted);
    println!(
        "  drained after BootNotification accepted: {QUEUED} in {:.2} s, {:.0} msg/s \
         (each answered at once; the station fsyncs each ack)",
        drained.as_secs_f64(),
        QUEUED as f64 / drained.as_secs_f64()
    );
    drop(procs);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ocpp_latency: skipped (run with `cargo bench --bench ocpp_latency`)");
        return;
    }
    if std::env::var_os("EVOS_LOG").is_none() {
        // SAFETY: no other thread runs yet; the runtime is built below.
        unsafe { std::env::set_var("EVOS_LOG", "warn") };
    }
    let started = Instant::now();
    println!(
        "ocpp_latency: state dirs under {}",
        temp_dir()
            .path()
            .parent()
            .unwrap_or(Path::new("?"))
            .display()
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            ac_station().await;
            dc_station().await;
            queue_drain().await;
        });
    println!(
        "ocpp_latency: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
}
