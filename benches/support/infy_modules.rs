//! InfyPower modules played by a benchmark on the simulator's CAN hub, with
//! the codec's module side (shared by power_latency and ocpp_latency).

use std::time::Instant;

use evos_hal::can::{CanBus, SimCanHub};
use evos_power::protocol::{self, Command, ModuleStatus, Reply, Target};
use tokio::sync::mpsc;

/// The modules: answer reads as InfyPower modules do (400 V, on, 100 A /
/// 40 kW each); report each SetOutput for module 1 with its arrival time.
pub async fn modules(mut hub: SimCanHub, seen: mpsc::UnboundedSender<(f64, Instant)>) {
    let infy = protocol::by_name("infypower").unwrap();
    loop {
        let Ok(frame) = hub.recv().await else { return };
        let at = Instant::now();
        let Some(Ok((target, command))) = infy.decode_command(&frame) else {
            continue;
        };
        let Target::Module(address) = target else {
            continue;
        };
        let reply = match command {
            Command::SetOutput { current_a, .. } => {
                if address == 1
                    && let Some(current_a) = current_a
                {
                    let _ = seen.send((current_a, at));
                }
                continue;
            }
            Command::ReadOutput => Reply::Output {
                voltage_v: Some(400.0),
                current_a: Some(0.0),
            },
            Command::ReadStatus => Reply::Status(ModuleStatus {
                on: true,
                ..ModuleStatus::default()
            }),
            Command::ReadCapabilities => Reply::Capabilities {
                min_voltage_v: 150.0,
                max_voltage_v: 1000.0,
                max_current_a: 100.0,
                max_power_w: 40_000.0,
            },
            Command::SetOn(_) => continue,
        };
        for frame in infy.encode_reply(address, &reply) {
            let _ = hub.send(&frame).await;
        }
    }
}
