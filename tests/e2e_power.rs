//! End-to-end DC: hal-sim's InfyPower (and UUGreen) modules answering CAN
//! frames on the simulator's CAN link, the real `power` service driving
//! them, `evse` asking Power1 for what the simulated DC EV demands, and the
//! meter reading the simulated DC meter. All processes on a real
//! dbus-daemon.

mod harness;

use evos_bus::evse::Evse1Proxy;
use evos_bus::power::Power1Proxy;
use futures_util::StreamExt;
use harness::{DEADLINE, Stack, TOKEN, next_ended, wait_energy_above, wait_status};

/// Uncached, so every read is the service's value now.
async fn power(stack: &Stack, evse: u32) -> Power1Proxy<'static> {
    Power1Proxy::builder(&stack.connection)
        .path(evos_bus::power::path(evse))
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

async fn evse(stack: &Stack, id: u32) -> Evse1Proxy<'static> {
    Evse1Proxy::builder(&stack.connection)
        .path(evos_bus::evse::path(id))
        .build()
        .await
        .unwrap()
}

/// Wait until `check` holds for a Power1 output, re-checking on every
/// change of its properties.
async fn wait_power<T>(
    output: &Power1Proxy<'_>,
    what: &str,
    mut check: impl AsyncFnMut(&Power1Proxy<'_>) -> Option<T>,
) -> T {
    let properties = zbus::fdo::PropertiesProxy::builder(output.inner().connection())
        .destination(evos_bus::power::BUS_NAME)
        .path(output.inner().path().to_owned())
        .build()
        .await
        .unwrap();
    let mut changes = properties.receive_properties_changed().await.unwrap();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(value) = check(output).await {
                return value;
            }
            changes.next().await;
        }
    })
    .await;
    let faults = output.faults().await.unwrap_or_default();
    let modules = output.modules().await.unwrap_or_default();
    found.unwrap_or_else(|_| {
        panic!(
            "power: {what} not seen within {DEADLINE:?} (modules {modules:?}, faults {faults:?})"
        )
    })
}

async fn charge(stack: &Stack, id: u32) -> Evse1Proxy<'static> {
    let sim = stack.sim().await;
    let evse = evse(stack, id).await;
    harness::wait_cp(&evse, "A").await;
    sim.plug(id, "dc-400v").await.unwrap();
    sim.swipe(id, TOKEN).await.unwrap();
    wait_status(&evse, "Charging").await;
    evse
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dc_evses_share_four_modules() {
    let stack = Stack::start_dc("infypower", 2, 4).await;
    let one = power(&stack, 1).await;
    let two = power(&stack, 2).await;

    // One car alone: the whole pool, its full 200 A demand.
    let evse1 = charge(&stack, 1).await;
    wait_power(&one, "the whole pool on output 1", async |p| {
        (p.modules().await.ok()? == [1, 2, 3, 4]).then_some(())
    })
    .await;
    let amps = wait_power(&one, "200 A delivered", async |p| {
        let a = p.current_a().await.ok()?;
        (a > 199.0).then_some(a)
    })
    .await;
    assert!(amps <= 200.5, "{amps} A");
    assert_eq!(
        one.capabilities().await.unwrap(),
        (1000.0, 400.0, 120_000.0)
    );
    let energy = wait_energy_above(&evse1, 10.0).await;
    assert!(energy > 10.0);

    // A second car: two modules each; 60 kW at 400 V is 150 A each, and
    // the pool's 120 kW is never exceeded.
    charge(&stack, 2).await;
    wait_power(&two, "half the pool on output 2", async |p| {
        (p.modules().await.ok()? == [3, 4]).then_some(())
    })
    .await;
    assert_eq!(one.modules().await.unwrap(), [1, 2]);
    wait_power(&two, "150 A on output 2", async |p| {
        (p.setpoint_a().await.ok()? >= 149.9).then_some(())
    })
    .await;
    let (a1, a2) = (
        one.setpoint_a().await.unwrap(),
        two.setpoint_a().await.unwrap(),
    );
    assert!(
        (a1 - 150.0).abs() < 0.1 && (a2 - 150.0).abs() < 0.1,
        "{a1} A, {a2} A"
    );
    assert!((a1 + a2) * 400.0 <= 120_000.0 + 1.0);

    // The first car leaves: the second gets the whole pool again.
    let mut ended = evse1.receive_session_ended().await.unwrap();
    stack.sim().await.unplug(1).await.unwrap();
    let record = next_ended(&mut ended).await;
    assert!(record.energy_wh() > 10.0, "{record:?}");
    wait_power(&two, "the whole pool on output 2", async |p| {
        (p.modules().await.ok()? == [1, 2, 3, 4]).then_some(())
    })
    .await;
    wait_power(&two, "200 A on output 2", async |p| {
        (p.setpoint_a().await.ok()? >= 199.9).then_some(())
    })
    .await;
}

/// One car charging on two 30 kW InfyPower modules: 150 A at 400 V.
async fn one_car_on_two_modules() -> (Stack, Power1Proxy<'static>, Evse1Proxy<'static>) {
    let stack = Stack::start_dc("infypower", 1, 2).await;
    let output = power(&stack, 1).await;
    let evse = charge(&stack, 1).await;
    wait_power(&output, "150 A delivered", async |p| {
        (p.current_a().await.ok()? > 149.0).then_some(())
    })
    .await;
    (stack, output, evse)
}

/// Wait until Power1 `Faults` lists `fault`.
async fn wait_fault_listed(output: &Power1Proxy<'_>, fault: &str) {
    wait_power(output, &format!("`{fault}` reported"), async |p| {
        p.faults()
            .await
            .ok()?
            .iter()
            .any(|f| f == fault)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_faults_derate_then_end_the_session_safely() {
    let (stack, output, evse) = one_car_on_two_modules().await;
    let sim = stack.sim().await;

    // One module shorts: it is switched off, the other carries on.
    sim.module_fault(1, "output-short").await.unwrap();
    wait_fault_listed(&output, "module 1: output short circuit").await;
    wait_power(&output, "one module's 75 A", async |p| {
        let a = p.setpoint_a().await.ok()?;
        (a <= 75.0 + 1e-9).then_some(())
    })
    .await;
    assert_eq!(evse.status().await.unwrap(), "Charging");

    // The second shorts too: nothing can deliver, the session ends.
    let mut ended = evse.receive_session_ended().await.unwrap();
    sim.module_fault(2, "output-short").await.unwrap();
    let record = next_ended(&mut ended).await;
    assert_eq!(record.stop_reason, "Other");
    assert_eq!(record.fault, "PowerModuleFault");
    assert!(!stack.sim_evse().await.relays_closed, "contactors open");
    wait_power(&output, "the output off", async |p| {
        (!p.enabled().await.ok()?).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_module_is_dropped_after_its_own_timeout() {
    let (stack, output, evse) = one_car_on_two_modules().await;
    stack.sim().await.module_fault(2, "silent").await.unwrap();
    wait_fault_listed(&output, "module 2: not answering").await;
    // The next control step drops its share (the fault may be published
    // a step before the new setpoint).
    wait_power(&output, "one module's 75 A", async |p| {
        (p.setpoint_a().await.ok()? <= 75.0 + 1e-9).then_some(())
    })
    .await;
    assert_eq!(output.capabilities().await.unwrap().1, 100.0);
    assert_eq!(evse.status().await.unwrap(), "Charging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uugreen_modules_charge_a_dc_session() {
    // UUGreen answers voltage and current in a frame each: both show in
    // Power1. No ratings message: the ratings are the config's.
    let stack = Stack::start_dc("uugreen", 1, 2).await;
    let output = power(&stack, 1).await;
    let evse = charge(&stack, 1).await;
    let amps = wait_power(&output, "current measured by the modules", async |p| {
        let a = p.current_a().await.ok()?;
        (a > 0.0).then_some(a)
    })
    .await;
    assert!(amps > 0.0, "{amps} A");
    // Two 30 kW modules at 400 V: 150 A.
    wait_power(&output, "150 A delivered", async |p| {
        (p.current_a().await.ok()? > 149.0).then_some(())
    })
    .await;
    let volts = wait_power(&output, "the battery's voltage measured", async |p| {
        let v = p.voltage_v().await.ok()?;
        (v > 390.0).then_some(v)
    })
    .await;
    assert!(volts <= 410.0, "{volts} V");
    assert_eq!(output.modules().await.unwrap(), [1, 2]);
    assert_eq!(
        output.capabilities().await.unwrap(),
        (1000.0, 200.0, 60_000.0)
    );
    assert!(output.faults().await.unwrap().is_empty());
    let first = wait_energy_above(&evse, 1.0).await;
    let later = wait_energy_above(&evse, first + 10.0).await;
    assert!(later > first, "{first} Wh, then {later} Wh");
    assert_eq!(evse.status().await.unwrap(), "Charging");
}
