//! hal-sim: the simulated physical world (`evos run hal-sim`).
//!
//! It fakes physics, never protocols: each EVSE's safety MCU answers the
//! real MCU protocol on a Unix socket, each EVSE's meter answers Modbus
//! TCP on a loopback address, and the DC power modules answer their
//! vendor's CAN protocol on the simulator's CAN link, so `evse`, `meter`
//! and `power` run the same code as on a charger. The world is moved over
//! `org.evos.Sim1` (`evos ctl sim …`). With `[sim.csms]` it also runs the
//! built-in OCPP 1.6J Central System ([`csms`]), driven over
//! `org.evos.Csms1` (`evos ctl csms …`).

pub mod csms;
pub mod ev;
pub mod evse;
pub mod meter;
pub mod power;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use evos_bus::sim::{SimEvse, SimModule};
use evos_meter::register_map::RegisterMap;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use zbus::interface;

use crate::evse::{Command, FaultKind, SimEvseSpec};
use crate::meter::{MeterFaultKind, MeterServer, MeterUnit, Terminals};
use crate::power::ModuleFaultKind;

/// The `[sim]` section of evos.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Physics runs this many times faster than the wall clock (energy,
    /// state of charge), so a desktop session fills a battery in minutes.
    #[serde(default = "default_time_scale")]
    pub time_scale: f64,
    /// The EV profile `evos ctl sim plug` uses when none is named.
    #[serde(default)]
    pub default_ev: Option<String>,
    /// Run the built-in CSMS (`[sim.csms]`).
    #[serde(default)]
    pub csms: Option<csms::Config>,
}

fn default_time_scale() -> f64 {
    1.0
}

impl Default for Config {
    fn default() -> Self {
        Config {
            time_scale: default_time_scale(),
            default_ev: None,
            csms: None,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), evos_service::config::Invalid> {
        if !(self.time_scale > 0.0 && self.time_scale <= 10_000.0) {
            return Err(evos_service::config::Invalid::new(
                "sim.time_scale",
                "must be within (0, 10000]",
            ));
        }
        if let Some(name) = &self.default_ev
            && ev::profile(name).is_none()
        {
            return Err(evos_service::config::Invalid::new(
                "sim.default_ev",
                format!(
                    "unknown EV profile `{name}`; known: {}",
                    profile_names().join(", ")
                ),
            ));
        }
        if let Some(csms) = &self.csms {
            csms.validate()?;
        }
        Ok(())
    }
}

pub fn profile_names() -> Vec<&'static str> {
    ev::PROFILES.iter().map(|p| p.name).collect()
}

/// A `MeterFault` kind: `Some` fault, or `None` for `clear`.
fn parse_meter_fault(kind: &str) -> Result<Option<MeterFaultKind>, evos_bus::Error> {
    if kind == "clear" {
        return Ok(None);
    }
    MeterFaultKind::parse(kind).map(Some).ok_or_else(|| {
        evos_bus::Error::InvalidArgument(format!(
            "unknown meter fault `{kind}`; known: {}",
            evos_bus::sim::METER_FAULT_KINDS.join(", ")
        ))
    })
}

/// A `ModuleFault` kind: `Some` fault, or `None` for `clear`.
fn parse_module_fault(kind: &str) -> Result<Option<ModuleFaultKind>, evos_bus::Error> {
    if kind == "clear" {
        return Ok(None);
    }
    ModuleFaultKind::parse(kind).map(Some).ok_or_else(|| {
        evos_bus::Error::InvalidArgument(format!(
            "unknown module fault `{kind}`; known: {}",
            evos_bus::sim::MODULE_FAULT_KINDS.join(", ")
        ))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for Modbus TCP on {address}: {source}")]
    MeterListen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("two meters answer as unit {unit} on {address}")]
    MeterUnitTaken { address: SocketAddr, unit: u8 },
    #[error("cannot run the CAN hub at {path}: {source}")]
    CanHub {
        path: PathBuf,
        #[source]
        source: evos_hal::HalError,
    },
    #[error("power.protocol: no module protocol `{0}`")]
    UnknownProtocol(String),
    #[error(transparent)]
    Csms(#[from] csms::CsmsError),
}

/// An EVSE the simulator serves: its id, where its MCU link listens, and
/// the meter it emulates.
#[derive(Debug, Clone)]
pub struct EvseSite {
    pub id: u32,
    pub socket_path: PathBuf,
    pub socket_outlet: bool,
    pub dc: bool,
    pub meter: Option<MeterSite>,
}

/// A meter hal-sim emulates: a Modbus TCP server on `listen` answering as
/// `unit` with the registers of `map`. Meters may share an address (as
/// behind a gateway) if their units differ.
#[derive(Debug, Clone)]
pub struct MeterSite {
    pub listen: SocketAddr,
    pub unit: u8,
    pub map: RegisterMap,
}

/// The power modules hal-sim emulates: a CAN hub at `hub` (the `sim:` path
/// of `[power] can`) with one module per `[[power.module]]`, speaking
/// `[power] protocol`, feeding the `[[power.output]]` EVSEs.
#[derive(Debug, Clone)]
pub struct PowerSite {
    pub hub: PathBuf,
    pub config: evos_power::Config,
}

/// Everything hal-sim simulates.
#[derive(Debug, Clone, Default)]
pub struct Sites {
    pub evses: Vec<EvseSite>,
    pub power: Option<PowerSite>,
}

impl From<Vec<EvseSite>> for Sites {
    fn from(evses: Vec<EvseSite>) -> Self {
        Sites { evses, power: None }
    }
}

/// What Sim1 reaches of the emulated power modules.
struct PowerControl {
    commands: mpsc::Sender<power::Command>,
    states: watch::Receiver<Vec<SimModule>>,
}

struct Sim {
    evses: BTreeMap<u32, mpsc::Sender<Command>>,
    sites: BTreeMap<u32, EvseSite>,
    default_ev: Option<String>,
    power: Option<PowerControl>,
}

impl Sim {
    fn evse(&self, id: u32) -> Result<&mpsc::Sender<Command>, evos_bus::Error> {
        self.evses.get(&id).ok_or_else(|| {
            let known: Vec<String> = self.evses.keys().map(u32::to_string).collect();
            evos_bus::Error::InvalidArgument(format!(
                "unknown EVSE {id}; known: {}",
                known.join(", ")
            ))
        })
    }

    async fn command(
        &self,
        id: u32,
        make: impl FnOnce(evse::Reply) -> Command,
    ) -> Result<(), evos_bus::Error> {
        let (tx, rx) = oneshot::channel();
        let gone = || evos_bus::Error::Failed(format!("EVSE {id} simulation stopped"));
        self.evse(id)?.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

#[interface(name = "org.evos.Sim1")]
impl Sim {
    async fn plug(&self, evse: u32, profile: &str) -> Result<(), evos_bus::Error> {
        let site = self.sites.get(&evse);
        let name = match (profile, &self.default_ev) {
            ("", Some(default)) => default.as_str(),
            ("", None) if site.is_some_and(|s| s.dc) => "dc-400v",
            ("", None) => "ac-11kw",
            (name, _) => name,
        };
        let profile = ev::profile(name).ok_or_else(|| {
            evos_bus::Error::InvalidArgument(format!(
                "unknown EV profile `{name}`; known: {}",
                profile_names().join(", ")
            ))
        })?;
        self.command(evse, |tx| Command::Plug(profile, tx)).await
    }

    async fn unplug(&self, evse: u32) -> Result<(), evos_bus::Error> {
        self.command(evse, Command::Unplug).await
    }

    async fn swipe(&self, evse: u32, token: &str) -> Result<(), evos_bus::Error> {
        if token.is_empty() || token.len() > 64 {
            return Err(evos_bus::Error::InvalidArgument(
                "a token has 1 to 64 bytes".into(),
            ));
        }
        let token = token.to_owned();
        self.command(evse, |tx| Command::Swipe(token, tx)).await
    }

    async fn fault(&self, evse: u32, kind: &str) -> Result<(), evos_bus::Error> {
        let kind = FaultKind::parse(kind).ok_or_else(|| {
            evos_bus::Error::InvalidArgument(format!(
                "unknown fault `{kind}`; known: {}",
                evos_bus::sim::FAULT_KINDS.join(", ")
            ))
        })?;
        self.command(evse, |tx| Command::Fault(kind, tx)).await
    }

    async fn clear(&self, evse: u32) -> Result<(), evos_bus::Error> {
        self.command(evse, Command::Clear).await
    }

    async fn meter_fault(&self, evse: u32, kind: &str) -> Result<(), evos_bus::Error> {
        let kind = parse_meter_fault(kind)?;
        self.evse(evse)?;
        if self.sites.get(&evse).is_none_or(|s| s.meter.is_none()) {
            return Err(evos_bus::Error::NotPermitted(format!(
                "EVSE {evse} has no emulated meter (configure one in [[meter.meter]])"
            )));
        }
        match kind {
            Some(kind) => self.command(evse, |tx| Command::MeterFault(kind, tx)).await,
            None => self.command(evse, Command::ClearMeterFaults).await,
        }
    }

    async fn module_fault(&self, address: u8, kind: &str) -> Result<(), evos_bus::Error> {
        let kind = parse_module_fault(kind)?;
        let power = self.power.as_ref().ok_or_else(|| {
            evos_bus::Error::NotPermitted(
                "no power modules are emulated (configure [power] with can = \"sim:PATH\")".into(),
            )
        })?;
        power::fault(&power.commands, address, kind).await
    }

    async fn modules(&self) -> Vec<SimModule> {
        self.power
            .as_ref()
            .map(|p| p.states.borrow().clone())
            .unwrap_or_default()
    }

    async fn evses(&self) -> Result<Vec<SimEvse>, evos_bus::Error> {
        let mut all = Vec::new();
        for (id, tx) in &self.evses {
            let (reply, rx) = oneshot::channel();
            let gone = || evos_bus::Error::Failed(format!("EVSE {id} simulation stopped"));
            tx.send(Command::Snapshot(reply))
                .await
                .map_err(|_| gone())?;
            all.push(rx.await.map_err(|_| gone())?);
        }
        Ok(all)
    }

    async fn profiles(&self) -> Vec<String> {
        profile_names().into_iter().map(str::to_owned).collect()
    }
}

/// The meter register of EVSE `id` as hal-sim left it, so a restarted
/// simulator does not turn back a meter the services have already read.
fn register_path(state_dir: &Path, id: u32) -> PathBuf {
    state_dir.join(format!("meter-{id}.wh"))
}

fn saved_register(state_dir: Option<&Path>, id: u32) -> f64 {
    state_dir
        .and_then(|dir| std::fs::read_to_string(register_path(dir, id)).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|wh| wh.is_finite() && *wh >= 0.0)
        .unwrap_or(0.0)
}

/// Save the register when it changes, at most once a second.
async fn keep_register(path: PathBuf, mut terminals: watch::Receiver<Terminals>) {
    let mut saved = f64::NAN;
    while terminals.changed().await.is_ok() {
        let energy = terminals.borrow_and_update().energy_wh;
        if energy == saved {
            continue;
        }
        if let Err(e) = evos_service::persist::write_atomic(&path, energy.to_string().as_bytes()) {
            tracing::warn!(path = %path.display(), "cannot save the meter register: {e}");
        }
        saved = energy;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Run the simulator until SIGTERM or Ctrl-C. With a `state_dir`, the
/// simulated meter registers survive a restart of the simulator.
pub async fn run(
    config: Config,
    sites: impl Into<Sites>,
    state_dir: Option<&Path>,
    bus_address: Option<&str>,
) -> Result<(), SimError> {
    let Sites {
        evses: sites,
        power: power_site,
    } = sites.into();
    if let Some(dir) = state_dir {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut evses = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut meters: BTreeMap<SocketAddr, Vec<MeterUnit>> = BTreeMap::new();
    let mut power_handle = None;
    if let Some(site) = &power_site {
        let protocol = evos_power::protocol::by_name(&site.config.protocol)
            .ok_or_else(|| SimError::UnknownProtocol(site.config.protocol.clone()))?;
        if let Some(dir) = site.hub.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let hub = evos_hal::can::SimCanHub::bind(&site.hub)
            .await
            .map_err(|source| SimError::CanHub {
                path: site.hub.clone(),
                source,
            })?;
        let outputs: Vec<u32> = site.config.outputs.iter().map(|o| o.evse).collect();
        let (emulator, handle) = power::Emulator::new(protocol, &site.config.modules, &outputs);
        tracing::info!(hub = %site.hub.display(), "simulated CAN bus");
        tasks.spawn(emulator.run(hub));
        power_handle = Some(handle);
    }
    for site in &sites {
        // A stale socket from a previous run would make bind fail.
        let _ = std::fs::remove_file(&site.socket_path);
        if let Some(dir) = site.socket_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let listener = tokio::net::UnixListener::bind(&site.socket_path).map_err(|source| {
            SimError::Listen {
                path: site.socket_path.clone(),
                source,
            }
        })?;
        let (tx, rx) = mpsc::channel(16);
        evses.insert(site.id, tx);
        let spec = SimEvseSpec {
            id: site.id,
            socket_path: site.socket_path.clone(),
            socket_outlet: site.socket_outlet,
            power: power_handle
                .as_ref()
                .filter(|_| site.dc)
                .and_then(|h| h.port(site.id)),
        };
        let (terminals, watching) = watch::channel(Terminals::default());
        if let Some(meter) = &site.meter {
            meters.entry(meter.listen).or_default().push(MeterUnit {
                unit: meter.unit,
                map: meter.map.clone(),
                terminals: watching,
            });
        }
        if let Some(dir) = state_dir {
            tasks.spawn(keep_register(
                register_path(dir, site.id),
                terminals.subscribe(),
            ));
        }
        tasks.spawn(evse::run(
            spec,
            config.time_scale,
            saved_register(state_dir, site.id),
            listener,
            rx,
            terminals,
        ));
    }
    let meter_count: usize = meters.values().map(Vec::len).sum();
    for (address, units) in meters {
        let server =
            MeterServer::new(units).map_err(|unit| SimError::MeterUnitTaken { address, unit })?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| SimError::MeterListen { address, source })?;
        tracing::info!(%address, "emulating Modbus TCP meter(s)");
        tasks.spawn(async move {
            if let Err(e) = server.serve(listener).await {
                tracing::error!(%address, "meter server stopped: {e}");
            }
        });
    }
    let module_count = power_site.as_ref().map_or(0, |p| p.config.modules.len());
    let (assignment, power) = match power_handle {
        Some(h) => (
            Some(h.assignment),
            Some(PowerControl {
                commands: h.commands,
                states: h.states,
            }),
        ),
        None => (None, None),
    };
    let csms = match &config.csms {
        Some(c) => {
            let server = csms::Server::bind(c.clone(), state_dir).await?;
            let address = server
                .local_addr()
                .map_err(|source| csms::CsmsError::Listen {
                    address: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, c.port)),
                    source,
                })?;
            tracing::info!(%address, "built-in CSMS (OCPP 1.6J) listening");
            let handle = server.csms();
            tasks.spawn(server.run());
            Some(handle)
        }
        None => None,
    };
    let sim = Sim {
        evses,
        sites: sites.iter().map(|s| (s.id, s.clone())).collect(),
        default_ev: config.default_ev.clone(),
        power,
    };
    let mut builder = evos_bus::connection_builder(bus_address).serve_at(evos_bus::sim::PATH, sim);
    if let Some(csms) = &csms {
        builder = builder.serve_at(evos_bus::csms::PATH, csms::Csms1(csms.clone()));
    }
    let connection = builder.name(evos_bus::sim::BUS_NAME).build().await?;
    if let Some(csms) = csms {
        tasks.spawn(csms::publish_changes(connection.clone(), csms));
    }
    if let (Some(assignment), Some(site)) = (assignment, &power_site) {
        let outputs = site.config.outputs.iter().map(|o| o.evse).collect();
        tasks.spawn(power::follow_assignment(
            connection.clone(),
            outputs,
            assignment,
        ));
    }
    evos_service::notify::ready(&format!(
        "simulating {} EVSE(s), {meter_count} meter(s), {module_count} power module(s){}",
        sites.len(),
        if config.csms.is_some() {
            ", a CSMS"
        } else {
            ""
        }
    ));
    tracing::info!(
        evses = sites.len(),
        meters = meter_count,
        power_modules = module_count,
        time_scale = config.time_scale,
        "hal-sim ready"
    );

    evos_service::notify::serve_until_stopped(&mut tasks)
        .await
        .map_err(|e| zbus::Error::Failure(format!("cannot catch SIGTERM: {e}")))?;
    for site in &sites {
        let _ = std::fs::remove_file(&site.socket_path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    /// Poll the saved register on the paused clock (virtual time).
    async fn saved_becomes(dir: &Path, wh: f64) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while saved_register(Some(dir), 1) != wh {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{wh} Wh never saved"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_meter_register_survives_a_simulator_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(saved_register(Some(dir.path()), 1), 0.0, "a new meter");
        let (terminals, watching) = watch::channel(Terminals::default());
        let keeper = tokio::spawn(keep_register(register_path(dir.path(), 1), watching));
        terminals.send_modify(|t| t.energy_wh = 1234.5);
        // The keeper saves, then rests a second before the next save.
        saved_becomes(dir.path(), 1234.5).await;
        terminals.send_modify(|t| t.energy_wh = 1300.0);
        saved_becomes(dir.path(), 1300.0).await;
        drop(terminals);
        keeper.await.unwrap();
        std::fs::write(register_path(dir.path(), 2), "garbage").unwrap();
        assert_eq!(saved_register(Some(dir.path()), 2), 0.0);
        assert_eq!(saved_register(None, 1), 0.0);
    }

    #[test]
    fn module_fault_kinds_parse_and_match_the_contract() {
        for kind in evos_bus::sim::MODULE_FAULT_KINDS {
            assert!(parse_module_fault(kind).is_ok(), "{kind}");
        }
        assert_eq!(
            parse_module_fault("silent").unwrap(),
            Some(ModuleFaultKind::Silent)
        );
        assert_eq!(parse_module_fault("clear").unwrap(), None);
        let Err(evos_bus::Error::InvalidArgument(message)) = parse_module_fault("melted") else {
            panic!("an unknown kind is an invalid argument");
        };
        assert_eq!(
            message,
            "unknown module fault `melted`; known: over-temperature, output-short, input-fault, silent, clear"
        );
    }

    #[test]
    fn meter_fault_kinds_parse_and_unknown_ones_list_the_known() {
        assert_eq!(
            parse_meter_fault("jump").unwrap(),
            Some(MeterFaultKind::Jump)
        );
        assert_eq!(parse_meter_fault("clear").unwrap(), None);
        let Err(evos_bus::Error::InvalidArgument(message)) = parse_meter_fault("meteor") else {
            panic!("an unknown kind is an invalid argument");
        };
        assert_eq!(
            message,
            "unknown meter fault `meteor`; known: offline, exception, backwards, jump, garbage, clear"
        );
    }
}
