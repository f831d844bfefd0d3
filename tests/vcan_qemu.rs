//! The real SocketCAN path, in a VM: `tests/vcan/run.sh` builds
//! `vcan-selftest` (crates/evos-vcan-selftest) static, boots a Debian kernel
//! with the vcan module in qemu (TCG) and runs it there against a module
//! emulator on vcan0. See the script for the steps.
//!
//! It needs qemu-system-x86_64, a static busybox, cpio, and apt (the first
//! time, to download the kernel package into target/vcan). Under CI (`CI`
//! set) a missing tool fails the test; elsewhere the test says SKIPPED and
//! what to install.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// The script's exit status when a tool is missing.
const MISSING_TOOLS: i32 = 77;

/// Copy a child's output to our stderr as it comes (live, not held by the
/// test harness's capture) and keep it.
fn forward(from: impl Read + Send + 'static) -> (thread::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&lines);
    let thread = thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(std::io::stderr(), "{line}");
            kept.lock().unwrap().push(line);
        }
    });
    (thread, lines)
}

#[test]
fn socketcan_against_a_module_emulator_on_vcan_in_a_vm() {
    let started = Instant::now();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vcan/run.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .env(
            "CARGO",
            std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let (out_thread, console) = forward(child.stdout.take().unwrap());
    let (err_thread, progress) = forward(child.stderr.take().unwrap());
    let status = child.wait().expect("waiting for tests/vcan/run.sh");
    out_thread.join().unwrap();
    err_thread.join().unwrap();
    let console = console.lock().unwrap().clone();
    let progress = progress.lock().unwrap().join("\n");

    if status.code() == Some(MISSING_TOOLS) {
        // The script's lines name what is missing and what to install.
        let message = format!("tests/vcan/run.sh cannot run here:\n{progress}");
        if std::env::var_os("CI").is_some() {
            panic!("CI must run the vcan test; {message}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED socketcan_against_a_module_emulator_on_vcan_in_a_vm (outside CI): {message}"
        );
        return;
    }

    let result = console
        .iter()
        .find(|line| line.starts_with("VCAN-SELFTEST "))
        .cloned();
    assert!(
        status.success(),
        "tests/vcan/run.sh failed ({status}): {}\n{progress}",
        result.as_deref().unwrap_or("no result line from the VM")
    );
    let result = result.expect("run.sh passes only with a result line");
    let figures = result
        .strip_prefix("VCAN-SELFTEST PASS ")
        .unwrap_or_else(|| panic!("run.sh passed, but the result line is {result}"));
    for key in [
        "frames=",
        "std=",
        "ext=",
        "p50_us=",
        "p99_us=",
        "error_checks=3",
    ] {
        assert!(figures.contains(key), "no {key} in {result}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "vcan_qemu: PASS in {:.1} s (build, kernel, boot, test): {figures}",
        started.elapsed().as_secs_f64()
    );
}
