//! The `power` service: one control task owns the CAN bus and the
//! [`Controller`]; one `org.evos.Power1` object per EVSE output forwards
//! targets to it. A new target is applied and its frames are on the bus
//! before the D-Bus call returns.

use std::collections::BTreeMap;
use std::time::Duration;

use evos_bus::power as contract;
use evos_hal::can::{AnyCanBus, CanAddress, CanBus, ControllerState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use zbus::object_server::InterfaceRef;
use zbus::{fdo, interface};

use crate::config::Config;
use crate::controller::{Controller, OutputSnapshot, Refusal, Step};
use crate::module::ModuleEvent;
use crate::protocol::{self, ModuleProtocol};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("config: {0}")]
    Config(#[from] evos_service::config::Invalid),
    #[error("power.can: {0}")]
    Can(#[from] evos_hal::HalError),
}

enum Request {
    Target(u32, f64, f64, oneshot::Sender<Result<(), Refusal>>),
    Enable(u32, bool, oneshot::Sender<Result<(), Refusal>>),
}

struct PowerObject {
    evse: u32,
    snapshot: watch::Receiver<OutputSnapshot>,
    requests: mpsc::Sender<Request>,
}

impl PowerObject {
    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), Refusal>>) -> Request,
    ) -> Result<(), evos_bus::Error> {
        let (tx, rx) = oneshot::channel();
        let gone = || evos_bus::Error::Failed("the power control task stopped".into());
        self.requests.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map_err(|r| match r {
            Refusal::UnknownOutput(_) => evos_bus::Error::NotFound(r.to_string()),
            Refusal::Invalid(_) => evos_bus::Error::InvalidArgument(r.to_string()),
        })
    }
}

#[interface(name = "org.evos.Power1")]
impl PowerObject {
    async fn set_target(&self, voltage_v: f64, current_a: f64) -> Result<(), evos_bus::Error> {
        let evse = self.evse;
        self.ask(|tx| Request::Target(evse, voltage_v, current_a, tx))
            .await
    }

    async fn set_enabled(&self, enabled: bool) -> Result<(), evos_bus::Error> {
        let evse = self.evse;
        self.ask(|tx| Request::Enable(evse, enabled, tx)).await
    }

    #[zbus(property)]
    fn enabled(&self) -> bool {
        self.snapshot.borrow().enabled
    }
    #[zbus(property)]
    fn setpoint_a(&self) -> f64 {
        self.snapshot.borrow().setpoint_a
    }
    #[zbus(property)]
    fn voltage_v(&self) -> f64 {
        self.snapshot.borrow().voltage_v
    }
    #[zbus(property)]
    fn current_a(&self) -> f64 {
        self.snapshot.borrow().current_a
    }
    #[zbus(property)]
    fn capabilities(&self) -> (f64, f64, f64) {
        self.snapshot.borrow().capabilities
    }
    #[zbus(property)]
    fn modules(&self) -> Vec<u8> {
        self.snapshot.borrow().modules.clone()
    }
    #[zbus(property)]
    fn faults(&self) -> Vec<String> {
        self.snapshot.borrow().faults.clone()
    }
    #[zbus(property)]
    fn fault(&self) -> String {
        self.snapshot.borrow().fault.clone()
    }
}

/// A published output: its snapshot channel and its object.
struct Published {
    snapshot: watch::Sender<OutputSnapshot>,
    iface: InterfaceRef<PowerObject>,
}

async fn publish(evse: u32, new: OutputSnapshot, out: &Published) {
    let old = out.snapshot.borrow().clone();
    if new == old {
        return;
    }
    out.snapshot.send_replace(new.clone());
    let object = out.iface.get().await;
    let e = out.iface.signal_emitter();
    let mut results = Vec::new();
    if new.enabled != old.enabled {
        results.push(object.enabled_changed(e).await);
    }
    if new.setpoint_a != old.setpoint_a {
        results.push(object.setpoint_a_changed(e).await);
    }
    if new.voltage_v != old.voltage_v {
        results.push(object.voltage_v_changed(e).await);
    }
    if new.current_a != old.current_a {
        results.push(object.current_a_changed(e).await);
    }
    if new.capabilities != old.capabilities {
        results.push(object.capabilities_changed(e).await);
    }
    if new.modules != old.modules {
        results.push(object.modules_changed(e).await);
    }
    if new.faults != old.faults {
        results.push(object.faults_changed(e).await);
    }
    if new.fault != old.fault {
        if !new.fault.is_empty() {
            tracing::error!(evse, fault = new.fault, "output cannot deliver");
        }
        results.push(object.fault_changed(e).await);
    }
    for err in results.into_iter().filter_map(Result::err) {
        tracing::warn!(evse, "cannot emit PropertiesChanged: {err}");
    }
}

/// Send a step's commands. A send error drops the bus; the caller reopens.
async fn send(
    bus: &mut Option<AnyCanBus>,
    protocol: &dyn ModuleProtocol,
    step: &Step,
) -> Result<(), evos_hal::HalError> {
    let Some(can) = bus.as_mut() else {
        return Ok(());
    };
    for (target, command) in &step.commands {
        for frame in protocol.encode_command(*target, command) {
            can.send(&frame).await?;
        }
    }
    Ok(())
}

async fn next_frame(bus: &mut Option<AnyCanBus>) -> evos_hal::Result<evos_hal::can::CanFrame> {
    match bus {
        Some(b) => b.recv().await,
        None => std::future::pending().await,
    }
}

fn log_events(step_events: &[(u8, ModuleEvent)]) {
    for (address, event) in step_events {
        match event {
            ModuleEvent::Online => tracing::info!(module = address, "module answering"),
            ModuleEvent::Gone => tracing::warn!(module = address, "module stopped answering"),
            ModuleEvent::Faults(f) if f.is_empty() => {
                tracing::info!(module = address, "module faults cleared")
            }
            ModuleEvent::Faults(f) => {
                let names: Vec<&str> = f.iter().map(|x| x.as_str()).collect();
                tracing::warn!(module = address, faults = names.join(", "), "module fault");
            }
        }
    }
}

/// The control task: CAN in, CAN out, targets from the bus.
async fn control(
    config: Config,
    protocol: Box<dyn ModuleProtocol>,
    mut controller: Controller,
    mut requests: mpsc::Receiver<Request>,
    published: BTreeMap<u32, Published>,
) {
    let address: CanAddress = match config.can.parse() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("power.can: {e}");
            return;
        }
    };
    let mut bus: Option<AnyCanBus> = None;
    let mut reopen_at = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut tick = tokio::time::interval(Duration::from_millis(config.control_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut step = None;
        tokio::select! {
            frame = next_frame(&mut bus) => match frame {
                Ok(frame) => match protocol.decode_reply(&frame) {
                    Some(Ok((module, reply))) => {
                        let events = controller.on_reply(module, reply, Instant::now());
                        let events: Vec<(u8, ModuleEvent)> = events.into_iter().map(|e| (module, e)).collect();
                        log_events(&events);
                    }
                    Some(Err(e)) => tracing::warn!("malformed module frame: {e}"),
                    None => {}
                },
                // The controller's state: logged; frames still flow.
                Err(evos_hal::HalError::CanController { state, .. })
                    if state != ControllerState::BusOff =>
                {
                    match state {
                        ControllerState::ErrorActive | ControllerState::Restarted => {
                            tracing::info!(can = %address, "CAN controller {state}")
                        }
                        _ => tracing::warn!(can = %address, "CAN controller {state}"),
                    }
                }
                Err(evos_hal::HalError::Frame(why)) => {
                    tracing::warn!(can = %address, "dropped a bad CAN frame: {why}");
                }
                Err(e) => {
                    // Bus-off (the kernel restarts the controller after its
                    // restart-ms), interface down or gone: reopen with back-off.
                    tracing::warn!(can = %address, "CAN receive failed: {e}; reopening");
                    bus = None;
                    reopen_at = Instant::now() + backoff;
                }
            },
            _ = tokio::time::sleep_until(reopen_at), if bus.is_none() => {
                match address.open().await {
                    Ok(b) => {
                        tracing::info!(can = %address, protocol = protocol.name(), "CAN bus open");
                        bus = Some(b);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        if backoff >= Duration::from_secs(2) {
                            tracing::warn!(can = %address, "cannot open the CAN bus: {e}");
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        reopen_at = Instant::now() + backoff;
                    }
                }
            }
            _ = tick.tick() => step = Some(controller.step(Instant::now())),
            Some(request) = requests.recv() => {
                let (result, reply) = match request {
                    Request::Target(evse, v, a, tx) => (controller.set_target(evse, v, a), tx),
                    Request::Enable(evse, on, tx) => (controller.set_enabled(evse, on), tx),
                };
                if result.is_ok() {
                    // Applied at once: the frames leave before the caller hears back.
                    let now_step = controller.step(Instant::now());
                    if let Err(e) = send(&mut bus, protocol.as_ref(), &now_step).await {
                        tracing::warn!(can = %address, "CAN send failed: {e}; reopening");
                        bus = None;
                        reopen_at = Instant::now() + backoff;
                    }
                    log_events(&now_step.events);
                }
                let _ = reply.send(result);
            }
        }
        if let Some(step) = step {
            log_events(&step.events);
            if step.reassigned {
                tracing::info!("module assignment changed");
            }
            if let Err(e) = send(&mut bus, protocol.as_ref(), &step).await {
                tracing::warn!(can = %address, "CAN send failed: {e}; reopening");
                bus = None;
                reopen_at = Instant::now() + backoff;
            }
        }
        let now = Instant::now();
        for (evse, out) in &published {
            publish(*evse, controller.snapshot(*evse, now), out).await;
        }
    }
}

/// Run the service until SIGTERM or Ctrl-C.
pub async fn run(config: Config, bus_address: Option<&str>) -> Result<(), ServiceError> {
    config.validate()?;
    let protocol = protocol::by_name(&config.protocol)
        .ok_or_else(|| evos_service::config::Invalid::new("power.protocol", "unknown"))?;
    let controller = Controller::new(&config, protocol.module_timeout());
    let (requests_tx, requests) = mpsc::channel(16);
    let mut builder =
        evos_bus::connection_builder(bus_address).serve_at(contract::ROOT_PATH, fdo::ObjectManager);
    let mut channels = BTreeMap::new();
    for evse in controller.outputs() {
        let (tx, rx) = watch::channel(OutputSnapshot::default());
        builder = builder.serve_at(
            contract::path(evse),
            PowerObject {
                evse,
                snapshot: rx,
                requests: requests_tx.clone(),
            },
        );
        channels.insert(evse, tx);
    }
    let connection = builder.name(contract::BUS_NAME).build().await?;
    let mut published = BTreeMap::new();
    for (evse, snapshot) in channels {
        let iface = connection
            .object_server()
            .interface::<_, PowerObject>(contract::path(evse))
            .await?;
        published.insert(evse, Published { snapshot, iface });
    }
    let outputs = published.len();
    let mut tasks = JoinSet::new();
    tracing::info!(
        protocol = protocol.name(),
        can = config.can,
        modules = config.modules.len(),
        outputs,
        "power service ready"
    );
    tasks.spawn(control(config, protocol, controller, requests, published));
    evos_service::notify::ready(&format!("{outputs} power output(s) on the bus"));
    evos_service::notify::serve_until_stopped(&mut tasks)
        .await
        .map_err(|e| zbus::Error::Failure(format!("cannot catch SIGTERM: {e}")))?;
    tracing::info!("power service stopping");
    Ok(())
}
