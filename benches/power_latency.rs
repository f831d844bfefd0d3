//! Latency from a Power1 `SetTarget` call to the CAN frame carrying the new
//! setpoint, and the CPU of `power` driving 8 modules. Prints figures and
//! asserts nothing about them.
//!
//! `cargo bench --bench power_latency` (about a minute after the build).
//! Without `--bench` it only says it was skipped.
//!
//! Setup: a private dbus-daemon, the real `evos run power` (the bench
//! profile's binary), and on the simulator's CAN link (a Unix datagram hub
//! the bench binds) 8 InfyPower modules answered by the bench itself with
//! the codec's module side, so they come online. The output is enabled at
//! 400 V; each of 10,000 calls lowers the target current a little (a lower
//! limit applies at once, no ramp), and the time is taken from just before
//! the call to the arrival of the first SetOutput frame for module 1 that
//! carries the new per-module current.

#[path = "../tests/harness/mod.rs"]
#[allow(unused_imports)]
mod harness;
#[path = "support/infy_modules.rs"]
mod infy_modules;

use std::time::{Duration, Instant};

use evos_hal::can::SimCanHub;
use tokio::sync::mpsc;

const MODULES: u8 = 8;
const CALLS: usize = 10_000;
const CPU_WINDOW: Duration = Duration::from_secs(20);

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("evos.toml");
    let mut text = format!(
        "[power]\nprotocol = \"infypower\"\ncan = \"sim:{}\"\nramp_a_per_s = 100000\ncontrol_interval_ms = 100\n\
         pool_max_power_w = 1000000\npool = [{}]\n",
        dir.join("can.sock").display(),
        (1..=MODULES)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for a in 1..=MODULES {
        text += &format!(
            "\n[[power.module]]\naddress = {a}\nmax_current_a = 100\nmax_power_w = 40000\n"
        );
    }
    text += "\n[[power.output]]\nevse = 1\n";
    std::fs::write(&path, text).unwrap();
    path
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); index 11 and 12 after ")".
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("power_latency: skipped (run with `cargo bench --bench power_latency`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let hub = SimCanHub::bind(dir.path().join("can.sock")).await.unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(infy_modules::modules(hub, seen_tx));
    let (mut broker, bus) = harness::start_broker(dir.path());
    let args = ["run", "power", "--config", config.to_str().unwrap()];
    let (mut power, _) = harness::spawn_ready(&args, dir.path(), "power", &bus);
    let connection = evos_bus::connection_builder(Some(&bus))
        .build()
        .await
        .unwrap();
    let output = evos_bus::power::Power1Proxy::builder(&connection)
        .path(evos_bus::power::path(1))
        .build()
        .await
        .unwrap();
    // Every module online and rated: the setpoint reaches the target.
    output.set_target(400.0, 640.0).await.unwrap();
    output.set_enabled(true).await.unwrap();
    let ready = Instant::now() + Duration::from_secs(30);
    while output.setpoint_a().await.unwrap() < 639.9 {
        assert!(Instant::now() < ready, "modules did not come online");
        // Polling a property of a process we do not drive; not a test.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while seen.try_recv().is_ok() {}

    let mut call = Vec::with_capacity(CALLS);
    let mut frame = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let total = 640.0 - 0.01 * (i + 1) as f64;
        let per_module = total / f64::from(MODULES);
        let t0 = Instant::now();
        output.set_target(400.0, total).await.unwrap();
        call.push(t0.elapsed());
        loop {
            let (current, at) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
                .await
                .expect("a SetOutput frame within 5 s")
                .unwrap();
            if (current - per_module).abs() < 0.001 {
                frame.push(at.duration_since(t0));
                break;
            }
        }
    }
    call.sort();
    frame.sort();
    println!(
        "Power1 SetTarget → CAN frame, {CALLS} calls, {MODULES} InfyPower modules on the simulator's CAN link:"
    );
    for (name, v) in [("call returned", &call), ("frame on the bus", &frame)] {
        println!(
            "  {name:<17} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3
        );
    }

    // CPU of `power` driving 8 modules at a steady setpoint.
    let pid = power.id();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(CPU_WINDOW).await;
    let (elapsed, c1) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid));
    println!(
        "power, {MODULES} modules polled (one per 100 ms step, setpoints as keep-alive): CPU {:.2} % of one core over {:.0} s, RSS {} KiB",
        (c1 - c0) as f64 / hz / elapsed * 100.0,
        elapsed,
        rss_kib(pid)
    );
    let _ = power.kill();
    let _ = power.wait();
    let _ = broker.kill();
    let _ = broker.wait();
}
