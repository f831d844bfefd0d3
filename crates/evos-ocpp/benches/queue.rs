//! Throughput of the persistent transaction queue: one fsync per record, so
//! this measures the disk as much as the code. Prints figures, gates nothing.
//!
//! `cargo bench -p evos-ocpp --bench queue [-- COUNT]`; the journal goes to a
//! temp dir under `$EVOS_BENCH_DIR` (default: the system temp dir), so point
//! that at the file system you care about (tmpfs makes fsync free).

use std::time::Instant;

use evos_ocpp::queue::Queue;
use serde_json::json;

fn main() {
    let count: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let base = std::env::var_os("EVOS_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let mut queue = Queue::open(dir.path()).expect("open");

    // A realistic MeterValues payload (~300 bytes).
    let payload = json!({
        "connectorId": 1,
        "meterValue": [{
            "timestamp": "2025-01-01T12:00:00Z",
            "sampledValue": [
                { "value": "12345.6", "measurand": "Energy.Active.Import.Register", "unit": "Wh" },
                { "value": "7200", "measurand": "Power.Active.Import", "unit": "W" },
                { "value": "31.2", "measurand": "Current.Import", "unit": "A", "phase": "L1" }
            ]
        }]
    });

    let start = Instant::now();
    for n in 0..count {
        queue
            .push("MeterValues", payload.clone(), Some("session-1"), n as i64)
            .expect("push");
    }
    let pushes = start.elapsed();

    let start = Instant::now();
    while let Some(seq) = queue.front().map(|e| e.seq) {
        queue.ack(seq).expect("ack");
    }
    let acks = start.elapsed();

    let start = Instant::now();
    drop(queue);
    let queue = Queue::open(dir.path()).expect("reopen");
    let reopen = start.elapsed();
    assert!(queue.is_empty());

    println!("queue in {}", base.display());
    println!(
        "{count} pushes: {:.2} s, {:.0} pushes/s",
        pushes.as_secs_f64(),
        count as f64 / pushes.as_secs_f64()
    );
    println!(
        "{count} acks:   {:.2} s, {:.0} acks/s",
        acks.as_secs_f64(),
        count as f64 / acks.as_secs_f64()
    );
    println!("reopen after all acks: {:.3} s", reopen.as_secs_f64());
}
