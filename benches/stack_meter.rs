//! CPU and memory of the `meter` service polling four meters at 1 Hz, in
//! the whole stack: `evos sim --evses 4` (hal-sim emulates one SDM630 per
//! EVSE over Modbus TCP; the meter service polls each every 1000 ms). It
//! prints figures and asserts nothing about them.
//!
//! `cargo bench --bench stack_meter` (about 40 s after the build). Without
//! `--bench` (e.g. `cargo test --benches`) it only says it was skipped.
//!
//! The binary: `env!("CARGO_BIN_EXE_evos")`, which Cargo sets for a
//! package's benches and builds first with the same profile, so under
//! `cargo bench` it is the `bench` profile (it inherits `release`: opt-level
//! "z", LTO, panic = abort), the code a charger runs. `EVOS_BIN` overrides
//! it, e.g. to measure a cross-built or differently configured binary.
//!
//! Method: start the sim in a fresh data dir, wait for its `ready:` line,
//! find the services among its children by /proc/<pid>/cmdline (`run
//! meter`, …), let them settle, then over 30 s take CPU time at both ends
//! (utime + stime from /proc/<pid>/stat, in clock ticks, and the
//! nanosecond run time summed over /proc/<pid>/task/*/schedstat) and
//! VmRSS (/proc/<pid>/status) and Pss (/proc/<pid>/smaps_rollup) once a
//! second. `evos ctl status --json` before and after checks that all four
//! meters gave fresh, fault-free readings during the window. The sim is
//! stopped with SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const EVSES: u32 = 4;
const SETTLE: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(30);
/// The processes to report, with what their cmdline contains.
const SERVICES: &[(&str, &[&str])] = &[
    ("meter", &["run", "meter"]),
    ("evse", &["run", "evse"]),
    ("hal-sim", &["run", "hal-sim"]),
];

fn evos_binary() -> PathBuf {
    std::env::var_os("EVOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_evos")))
}

/// The sim, stopped with SIGTERM (then SIGKILL) when dropped.
struct Sim {
    child: Child,
}

impl Sim {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("evos sim ignored SIGTERM for 15 s; killing it");
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// (ppid, utime + stime in ticks) from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = read(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state(3) ppid(4) … utime(14) stime(15).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Nanoseconds on a CPU, summed over the process's threads.
fn run_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let text = read(task.path().join("schedstat"))?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// A "Key:   N kB" line of a /proc status-like file, in kB.
fn kb(path: String, key: &str) -> Option<u64> {
    read(path)?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The sim's children: service name → pid.
fn services(sim: u32) -> BTreeMap<&'static str, u32> {
    let mut found = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if stat(pid).map(|s| s.0) != Some(sim) {
            continue;
        }
        let args = cmdline(pid);
        for (name, needle) in SERVICES {
            if args.windows(needle.len()).any(|w| w == *needle) {
                found.insert(*name, pid);
            }
        }
    }
    found
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn machine_cpu() -> (u64, u64) {
    let text = read("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn loadavg() -> String {
    read("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// `evos ctl status --json`: per EVSE, (meter timestamp_ms, fault).
fn meter_status(bin: &Path, data_dir: &Path) -> BTreeMap<u64, (u64, String)> {
    let out = Command::new(bin)
        .args(["ctl", "--data-dir"])
        .arg(data_dir)
        .args(["--json", "status"])
        .output();
    let Ok(out) = out else {
        return BTreeMap::new();
    };
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let mut meters = BTreeMap::new();
    for row in rows.as_array().into_iter().flatten() {
        let meter = &row["meter"];
        if let (Some(id), Some(ts)) = (row["id"].as_u64(), meter["timestamp_ms"].as_u64()) {
            let fault = meter["fault"].as_str().unwrap_or_default().to_owned();
            meters.insert(id, (ts, fault));
        }
    }
    meters
}

#[derive(Default)]
struct Samples {
    rss_kb: Vec<u64>,
    pss_kb: Vec<u64>,
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn mean(v: &[u64]) -> u64 {
    if v.is_empty() {
        0
    } else {
        v.iter().sum::<u64>() / v.len() as u64
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "stack_meter: skipped (a 40 s measurement; run `cargo bench --bench stack_meter`)"
        );
        return;
    }
    let bin = evos_binary();
    let data = tempfile::tempdir().expect("a temporary data dir");
    let log_path = data.path().join("sim.log");
    let log = std::fs::File::create(&log_path).expect("the sim's log file");
    let child = Command::new(&bin)
        .args(["sim", "--evses", &EVSES.to_string(), "--data-dir"])
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut sim = Sim { child };
    let sim_pid = sim.child.id();

    // Read stdout on a thread (and keep draining it) until `ready:`.
    let stdout = sim.child.stdout.take().expect("the sim's stdout");
    let (lines, ready) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready.recv_timeout(left) {
            Ok(line) if line.starts_with("ready:") => {
                println!("{line}");
                break;
            }
            Ok(_) => {}
            Err(_) => {
                sim.stop();
                panic!(
                    "evos sim did not print `ready:` within 60 s; its log:\n{}",
                    read(&log_path).unwrap_or_default()
                );
            }
        }
    }
    let pids = services(sim_pid);
    for (name, _) in SERVICES {
        if !pids.contains_key(name) {
            sim.stop();
            panic!(
                "no `{name}` child of the sim ({pids:?}); its log:\n{}",
                read(&log_path).unwrap_or_default()
            );
        }
    }
    std::thread::sleep(SETTLE);
    let before = meter_status(&bin, data.path());

    let ticks_per_second = {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    };
    let load_before = loadavg();
    let machine_before = machine_cpu();
    let cpu_before: BTreeMap<_, _> = pids
        .iter()
        .map(|(n, p)| (*n, (stat(*p).map_or(0, |s| s.1), run_ns(*p))))
        .collect();
    let start = Instant::now();
    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    let mut second = 0u64;
    while start.elapsed() < WINDOW {
        for (name, pid) in &pids {
            let s = samples.entry(name).or_default();
            if let Some(rss) = kb(format!("/proc/{pid}/status"), "VmRSS:") {
                s.rss_kb.push(rss);
            }
            if let Some(pss) = kb(format!("/proc/{pid}/smaps_rollup"), "Pss:") {
                s.pss_kb.push(pss);
            }
        }
        second += 1;
        let next = Duration::from_secs(second);
        std::thread::sleep(next.saturating_sub(start.elapsed()));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after: BTreeMap<_, _> = pids
        .iter()
        .map(|(n, p)| (*n, (stat(*p).map_or(0, |s| s.1), run_ns(*p))))
        .collect();
    let machine_after = machine_cpu();
    let load_after = loadavg();
    let after = meter_status(&bin, data.path());
    let same_pids = services(sim_pid) == pids;
    let status = sim.stop();

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let machine_busy = {
        let busy = machine_after.0.saturating_sub(machine_before.0) as f64;
        let total = machine_after.1.saturating_sub(machine_before.1) as f64;
        if total > 0.0 {
            100.0 * busy / total
        } else {
            0.0
        }
    };
    println!();
    println!(
        "evos sim --evses {EVSES}: {} ({}); {elapsed:.1} s window after {} s settling",
        bin.display(),
        if cfg!(debug_assertions) {
            "bench built with debug assertions"
        } else {
            "optimized"
        },
        SETTLE.as_secs()
    );
    println!(
        "machine: {cpus} CPUs, {machine_busy:.1}% busy (all CPUs) during the window, load \
         average {load_before} before, {load_after} after"
    );
    println!();
    println!(
        "{:<8} {:>7} {:>14} {:>16} {:>16} {:>16}",
        "process",
        "pid",
        "CPU % (ticks)",
        "CPU % (schedstat)",
        "RSS MiB mean/max",
        "PSS MiB mean/max"
    );
    for (name, _) in SERVICES {
        let pid = pids[name];
        let (t0, n0) = cpu_before[name];
        let (t1, n1) = cpu_after[name];
        let by_ticks = 100.0 * (t1.saturating_sub(t0)) as f64 / ticks_per_second / elapsed;
        // schedstat needs CONFIG_SCHED_INFO; without it: n/a.
        let by_ns = match (n0, n1) {
            (Some(n0), Some(n1)) => {
                format!(
                    "{:.3}",
                    100.0 * n1.saturating_sub(n0) as f64 / 1e9 / elapsed
                )
            }
            _ => "n/a".into(),
        };
        let s = samples.remove(name).unwrap_or_default();
        let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
        println!(
            "{:<8} {:>7} {:>14.3} {:>16} {:>16} {:>16}",
            name,
            pid,
            by_ticks,
            by_ns,
            format!("{:.2}/{:.2}", mib(mean(&s.rss_kb)), mib(max(&s.rss_kb))),
            format!("{:.2}/{:.2}", mib(mean(&s.pss_kb)), mib(max(&s.pss_kb))),
        );
    }
    println!();
    println!(
        "CPU % is of one core: (utime+stime) / {ticks_per_second} Hz ticks, and the \
         schedstat run time of all threads, over the window."
    );
    let fresh: Vec<String> = (1..=u64::from(EVSES))
        .map(|id| match (before.get(&id), after.get(&id)) {
            (Some((t0, _)), Some((t1, fault))) => format!(
                "EVSE {id}: +{:.1} s{}",
                t1.saturating_sub(*t0) as f64 / 1e3,
                if fault.is_empty() {
                    String::new()
                } else {
                    format!(" fault `{fault}`")
                }
            ),
            _ => format!("EVSE {id}: no meter reading"),
        })
        .collect();
    println!(
        "meter readings advanced over the window (TimestampMs via evos ctl): {}",
        fresh.join(", ")
    );
    if !same_pids {
        println!("WARNING: a service restarted during the window; figures are not comparable");
    }
    println!(
        "sim stopped with SIGTERM: {}",
        status.map_or_else(|| "?".into(), |s| s.to_string())
    );
}
