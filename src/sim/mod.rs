//! `evos sim`: the whole stack on a desktop.
//!
//! It starts a private broker, `hal-sim` and every service as child
//! processes, gives each a `NOTIFY_SOCKET` as systemd does (so READY means
//! the same here as on a charger), restarts a child that dies with back-off,
//! and on Ctrl-C or SIGTERM stops them all and exits 0.
//!
//! The `ocpp` service talks OCPP 1.6J to hal-sim's built-in CSMS (on a free
//! loopback port, accepting the demo tokens), or with `--csms URL` to any
//! Central System; `[evse] auth = "ocpp"` makes every swipe an OCPP
//! authorization.

pub mod broker;
mod scenario;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::config::StationConfig;

#[derive(Args, Clone)]
pub struct SimArgs {
    /// Number of EVSEs to simulate.
    #[arg(long, default_value_t = 1)]
    evses: u32,
    /// AC chargers (the default).
    #[arg(long, conflicts_with = "dc")]
    ac: bool,
    /// DC chargers.
    #[arg(long)]
    dc: bool,
    /// Where the stack keeps its state (default: a fresh temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A station config whose sections override the generated ones.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Connect to this CSMS (ws:// or wss:// URL; the station id is
    /// appended) instead of the built-in one.
    #[arg(long)]
    csms: Option<String>,
    /// The station's identity towards the CSMS.
    #[arg(long, default_value = "EVOS-SIM-1")]
    station_id: String,
    /// The OCPP version (only 1.6 so far).
    #[arg(long, default_value = "1.6", value_parser = ["1.6", "2.0.1"])]
    ocpp: String,
    /// Run a scripted session and exit: ac-session, dc-session.
    #[arg(long)]
    scenario: Option<String>,
}

/// Tokens the built-in CSMS accepts.
pub const DEMO_TOKENS: &[&str] = &["EVOS-DEMO", "04A1B2C3D4"];

/// What hal-sim simulates: the EVSEs of the `[evse]` section, each with the
/// meter it emulates from `[meter]` (a Modbus TCP server on the meter's
/// loopback `tcp:` address), and, when `[power] can` is `sim:PATH`, the
/// power modules of `[power]` on a CAN hub at PATH.
pub fn sites_of(config: &StationConfig) -> Result<hal_sim::Sites> {
    use evos_meter::transport::TransportAddress;
    use evos_service::config::Invalid;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    let evse = config
        .evse
        .as_ref()
        .context("hal-sim needs an [evse] section naming the EVSEs")?;
    let mut sites = evse
        .evse
        .iter()
        .map(|e| match e.link.parse::<evos_hal::mcu::LinkAddress>() {
            Ok(evos_hal::mcu::LinkAddress::Unix(path)) => Ok(hal_sim::EvseSite {
                id: e.id,
                socket_path: path,
                socket_outlet: e.socket,
                dc: e.kind == evos_evse::config::Kind::Dc,
                meter: None,
            }),
            _ => bail!(
                "evse.evse id {}: the simulator serves only unix: links, not `{}`",
                e.id,
                e.link
            ),
        })
        .collect::<Result<Vec<_>>>()?;
    let power = match &config.power {
        Some(power) => power_site(power, &sites)?,
        None => None,
    };
    let Some(meter) = &config.meter else {
        return Ok(hal_sim::Sites {
            evses: sites,
            power,
        });
    };
    for (i, spec) in meter.validate()?.into_iter().enumerate() {
        let key = |k: &str| format!("meter.meter[{i}].{k}");
        let listen = match &spec.transport {
            TransportAddress::Tcp { host, port } if *port != 0 => {
                let ip = match host.as_str() {
                    "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    host => host.parse::<IpAddr>().ok(),
                };
                ip.filter(IpAddr::is_loopback)
                    .map(|ip| SocketAddr::new(ip, *port))
            }
            _ => None,
        }
        .ok_or_else(|| {
            Invalid::new(
                key("transport"),
                format!(
                    "the simulator emulates meters only on loopback Modbus TCP \
                     (tcp:127.0.0.1:PORT, PORT > 0), not `{}`",
                    spec.config.transport
                ),
            )
        })?;
        let unit = spec.config.unit;
        if sites
            .iter()
            .filter_map(|s| s.meter.as_ref())
            .any(|m| m.listen == listen && m.unit == unit)
        {
            return Err(Invalid::new(
                key("unit"),
                format!("another meter answers as unit {unit} on {listen}"),
            )
            .into());
        }
        let evse = spec.config.evse;
        let site = sites.iter_mut().find(|s| s.id == evse).ok_or_else(|| {
            Invalid::new(key("evse"), format!("there is no EVSE {evse} in [evse]"))
        })?;
        site.meter = Some(hal_sim::MeterSite {
            listen,
            unit,
            map: spec.map,
        });
    }
    Ok(hal_sim::Sites {
        evses: sites,
        power,
    })
}

/// The power modules hal-sim emulates: those of `[power]` when its bus is
/// the simulator's (`can = "sim:PATH"`); on a real bus (`socketcan:`) the
/// modules are real and hal-sim leaves them alone.
fn power_site(
    power: &evos_power::Config,
    evses: &[hal_sim::EvseSite],
) -> Result<Option<hal_sim::PowerSite>> {
    use evos_hal::can::CanAddress;
    use evos_service::config::Invalid;

    power.validate()?;
    let hub = match power.can.parse::<CanAddress>() {
        Ok(CanAddress::Sim(path)) => path,
        Ok(CanAddress::SocketCan(_)) => {
            tracing::info!(
                can = power.can,
                "power modules on a real CAN bus: the simulator emulates none"
            );
            return Ok(None);
        }
        Err(e) => return Err(Invalid::new("power.can", e.to_string()).into()),
    };
    for (i, output) in power.outputs.iter().enumerate() {
        let evse = output.evse;
        match evses.iter().find(|s| s.id == evse) {
            None => {
                return Err(Invalid::new(
                    format!("power.output[{i}].evse"),
                    format!("there is no EVSE {evse} in [evse]"),
                )
                .into());
            }
            Some(site) if !site.dc => {
                return Err(Invalid::new(
                    format!("power.output[{i}].evse"),
                    format!("EVSE {evse} is an AC EVSE (kind = \"ac\")"),
                )
                .into());
            }
            Some(_) => {}
        }
    }
    Ok(Some(hal_sim::PowerSite {
        hub,
        config: power.clone(),
    }))
}

/// A TOML string literal (basic string, escaped).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The generated station config. `csms_port`: run the built-in CSMS there
/// (else `args.csms` names the Central System).
fn generated_config(
    args: &SimArgs,
    run: &Path,
    time_scale: f64,
    meter_ports: Vec<u16>,
    csms_port: Option<u16>,
) -> String {
    let kind = if args.dc { "dc" } else { "ac" };
    let max = if args.dc { 200 } else { 32 };
    let tokens: Vec<String> = DEMO_TOKENS.iter().map(|t| toml_string(t)).collect();
    let mut text = format!(
        "# Generated by `evos sim`.\n[sim]\ntime_scale = {time_scale:?}\n\n[evse]\nauth = \"ocpp\"\n"
    );
    for id in 1..=args.evses {
        text += &format!(
            "\n[[evse.evse]]\nid = {id}\nkind = \"{kind}\"\nlink = \"unix:{}\"\nmax_current_a = {max}\nphases = 3\nsocket = {}\n",
            run.join(format!("mcu-{id}.sock")).display(),
            !args.dc
        );
    }
    // The simulated meters are Modbus TCP servers in hal-sim. The world
    // runs `time_scale` times faster than the wall clock, and so does the
    // energy register: the plausibility bound scales with it.
    let (map, max_power_w) = if args.dc {
        ("dc-meter", 150_000.0)
    } else {
        ("sdm630", 25_000.0)
    };
    if args.dc {
        // Two 30 kW modules per EVSE in one pool that the EVSEs share.
        let modules = 2 * args.evses;
        let pool: Vec<String> = (1..=modules).map(|a| a.to_string()).collect();
        text += &format!(
            "\n[power]\nprotocol = \"infypower\"\ncan = \"sim:{}\"\nramp_a_per_s = 100\npool_max_power_w = {}\npool = [{}]\n",
            run.join("can.sock").display(),
            30_000 * modules,
            pool.join(", ")
        );
        for address in 1..=modules {
            text += &format!(
                "\n[[power.module]]\naddress = {address}\nmax_current_a = 100\nmax_power_w = 30000\nmin_voltage_v = 150\nmax_voltage_v = 1000\n"
            );
        }
        for id in 1..=args.evses {
            text += &format!("\n[[power.output]]\nevse = {id}\n");
        }
    }
    text += &format!(
        "\n[meter]\npoll_interval_ms = 1000\nsign = true\nstation_serial = \"{}\"\n",
        args.station_id
    );
    for (id, port) in (1..=args.evses).zip(meter_ports) {
        text += &format!(
            "\n[[meter.meter]]\nevse = {id}\nmap = \"{map}\"\ntransport = \"tcp:127.0.0.1:{port}\"\nunit = 1\nserial = \"SIM-{id:04}\"\nmax_power_w = {:?}\n",
            max_power_w * time_scale
        );
    }
    let csms_url = match (csms_port, &args.csms) {
        (Some(port), _) => {
            text += &format!(
                "\n[sim.csms]\nport = {port}\ntokens = [{}]\n",
                tokens.join(", ")
            );
            format!("ws://127.0.0.1:{port}")
        }
        (None, Some(url)) => url.clone(),
        (None, None) => unreachable!("either the built-in CSMS or --csms"),
    };
    // A desktop reconnects quickly (after a reset, or a CSMS restart) and
    // samples a running transaction often enough to watch it.
    text += &format!(
        "\n[ocpp]\nversion = \"1.6\"\ncsms_url = {}\nstation_id = {}\nsecurity_profile = 0\nreconnect_min_s = 1\nreconnect_max_s = 5\n\n[ocpp.keys]\nMeterValueSampleInterval = \"10\"\n",
        toml_string(&csms_url),
        toml_string(&args.station_id)
    );
    text
}

/// Free loopback ports for the simulated meters and the built-in CSMS. The kernel hands out a
/// port and the listener is closed at once; hal-sim binds it a moment
/// later (ephemeral ports are not reused that quickly).
fn free_ports(n: u32) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find free loopback ports for the simulator")?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.port())
        .collect())
}

/// Merge the user's file over the generated one, section by section.
fn effective_config(args: &SimArgs, run: &Path) -> Result<String> {
    let time_scale = if args.scenario.is_some() { 60.0 } else { 1.0 };
    let builtin = args.csms.is_none();
    let mut ports = free_ports(args.evses + u32::from(builtin))?;
    let csms_port = if builtin { ports.pop() } else { None };
    let generated: toml::Table =
        toml::from_str(&generated_config(args, run, time_scale, ports, csms_port))?;
    let Some(path) = &args.config else {
        return Ok(toml::to_string(&generated)?);
    };
    // Validate the user's file on its own first, so errors name its keys.
    StationConfig::load(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let user: toml::Table = toml::from_str(&text)?;
    let mut merged = generated;
    for (section, value) in user {
        match (merged.get_mut(&section), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => base.extend(over),
            (_, value) => {
                merged.insert(section, value);
            }
        }
    }
    Ok(toml::to_string(&merged)?)
}

pub fn main(args: SimArgs) -> Result<i32> {
    evos_service::logging::init("sim");
    if args.evses == 0 || args.evses > 16 {
        bail!("--evses must be within 1..=16");
    }
    if let Some(name) = &args.scenario
        && !scenario::NAMES.contains(&name.as_str())
    {
        bail!(
            "unknown scenario `{name}`; known: {}",
            scenario::NAMES.join(", ")
        );
    }
    if args.ocpp != "1.6" {
        bail!(
            "--ocpp {}: this build speaks OCPP 1.6 only (2.0.1 is not implemented yet)",
            args.ocpp
        );
    }
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("evos-sim-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            dir
        }
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let lock = std::fs::File::create(data_dir.join("sim.lock"))?;
    if lock.try_lock().is_err() {
        bail!("another evos sim is running on {}", data_dir.display());
    }
    let run = data_dir.join("run");
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run)?;
    let config_path = data_dir.join("evos.toml");
    std::fs::write(&config_path, effective_config(&args, &run)?)?;
    // Check what the services will check, before starting anything.
    StationConfig::load(&config_path)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(supervise(args, data_dir.clone(), run, config_path));
    let _ = std::fs::remove_file(crate::ctl::runtime_file());
    let _ = std::fs::remove_file(data_dir.join("bus.address"));
    drop(lock);
    code
}

/// One supervised child process.
struct Service {
    name: &'static str,
    args: Vec<String>,
    notify: UnixDatagram,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
}

impl Service {
    fn new(name: &'static str, args: Vec<String>, run: &Path) -> Result<Self> {
        let path = run.join(format!("notify-{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let notify =
            UnixDatagram::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        Ok(Service {
            name,
            args,
            notify,
            child: None,
            started: Instant::now(),
            backoff: Duration::from_millis(100),
        })
    }

    fn spawn(&mut self, bus: &str, run: &Path) -> Result<()> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(&self.args)
            .env(evos_bus::BUS_ADDRESS_ENV, bus)
            .env(
                "NOTIFY_SOCKET",
                run.join(format!("notify-{}.sock", self.name)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it makes the child die with us,
        // so a killed `evos sim` leaves no orphans.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        if let Some(stderr) = child.stderr.take() {
            let name = self.name;
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{name}] {line}");
                }
            });
        }
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }

    /// Wait for `READY=1` on the notify socket.
    async fn ready(&mut self, deadline: Duration) -> Result<()> {
        let mut buf = [0u8; 4096];
        let wait = async {
            loop {
                let n = self.notify.recv(&mut buf).await?;
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return Ok::<(), std::io::Error>(());
                }
            }
        };
        tokio::time::timeout(deadline, wait).await.map_err(|_| {
            anyhow::anyhow!("{} did not report READY within {deadline:?}", self.name)
        })??;
        Ok(())
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_err()
        {
            tracing::warn!("{} ignored SIGTERM; killing it", self.name);
            let _ = child.kill().await;
        }
    }
}

async fn wait_any(services: &mut [Service]) -> (usize, std::io::Result<std::process::ExitStatus>) {
    let waits = services.iter_mut().enumerate().filter_map(|(i, s)| {
        s.child
            .as_mut()
            .map(|c| Box::pin(async move { (i, c.wait().await) }))
    });
    let waits: Vec<_> = waits.collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(waits).await.0
}

async fn start_broker(run: &Path) -> Result<(String, Service)> {
    let socket = run.join("bus.sock");
    let address = format!("unix:path={}", socket.display());
    if broker::dbus_daemon_available() {
        let conf = run.join("bus.conf");
        std::fs::write(&conf, broker::dbus_daemon_config(&socket))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--print-address")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start dbus-daemon")?;
        let stdout = child.stdout.take().context("dbus-daemon stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let printed = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("dbus-daemon did not start")??
            .context("dbus-daemon exited")?;
        let mut service = Service::new("broker", vec![], run)?;
        service.child = Some(child);
        return Ok((printed.trim().to_owned(), service));
    }
    let mut service = Service::new(
        "broker",
        vec![
            "run".into(),
            "broker".into(),
            "--listen".into(),
            address.clone(),
        ],
        run,
    )?;
    service.spawn(&address, run)?;
    service.ready(Duration::from_secs(10)).await?;
    Ok((address, service))
}

async fn supervise(
    args: SimArgs,
    data_dir: PathBuf,
    run: PathBuf,
    config_path: PathBuf,
) -> Result<i32> {
    let t0 = Instant::now();
    let (bus, mut broker) = start_broker(&run).await?;
    std::fs::write(data_dir.join("bus.address"), format!("{bus}\n"))?;
    println!("bus: {bus}");
    println!("data: {}", data_dir.display());
    let runtime_file = crate::ctl::runtime_file();
    if let Some(dir) = runtime_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&runtime_file, data_dir.to_string_lossy().as_bytes());

    let state = data_dir.join("state");
    let service_args = |name: &str| {
        vec![
            "run".to_owned(),
            name.to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
            "--state-dir".to_owned(),
            state.display().to_string(),
        ]
    };
    let mut services = vec![
        Service::new("hal-sim", service_args("hal-sim"), &run)?,
        Service::new("meter", service_args("meter"), &run)?,
    ];
    if args.dc {
        services.push(Service::new("power", service_args("power"), &run)?);
    }
    services.push(Service::new("evse", service_args("evse"), &run)?);
    services.push(Service::new("ocpp", service_args("ocpp"), &run)?);
    for service in &mut services {
        service.spawn(&bus, &run)?;
        service.ready(Duration::from_secs(20)).await?;
    }
    println!(
        "ready: all services READY in {} ms",
        t0.elapsed().as_millis()
    );

    let connection = evos_bus::connection_builder(Some(&bus)).build().await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let scenario = async {
        match &args.scenario {
            Some(name) => {
                // Every swipe is an OCPP authorization: start once the
                // CSMS has accepted the station.
                registered(&connection).await?;
                scenario::run(name, &connection).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(scenario);
    let status = status_lines(&connection, args.evses);
    tokio::pin!(status);
    let ocpp_status = ocpp_lines(&connection);
    tokio::pin!(ocpp_status);

    let mut restart_at: BTreeMap<usize, Instant> = BTreeMap::new();
    let code = loop {
        let next_restart = restart_at.values().min().copied();
        tokio::select! {
            _ = term.recv() => break 0,
            _ = tokio::signal::ctrl_c() => break 0,
            result = &mut scenario => break match result {
                Ok(summary) => { println!("{summary}"); 0 }
                Err(e) => { eprintln!("scenario failed: {e:#}"); 1 }
            },
            _ = &mut status => {}
            _ = &mut ocpp_status => {}
            (i, exit) = wait_any(&mut services) => {
                let s = &mut services[i];
                s.child = None;
                if s.started.elapsed() > Duration::from_secs(10) {
                    s.backoff = Duration::from_millis(100);
                }
                if s.name == "ocpp" && exit.as_ref().is_ok_and(|e| e.code() == Some(OCPP_RESET_EXIT)) {
                    // A Reset from the CSMS ends the service on purpose,
                    // for its service manager to start it again.
                    tracing::info!("ocpp exited for a reset; starting it again");
                    restart_at.insert(i, Instant::now());
                    continue;
                }
                tracing::warn!("{} exited ({}); restarting in {:?}", s.name, exit.map(|e| e.to_string()).unwrap_or_else(|e| e.to_string()), s.backoff);
                restart_at.insert(i, Instant::now() + s.backoff);
                s.backoff = (s.backoff * 2).min(Duration::from_secs(5));
            }
            _ = tokio::time::sleep_until(next_restart.unwrap_or_else(Instant::now)), if next_restart.is_some() => {
                let now = Instant::now();
                let due: Vec<usize> = restart_at.iter().filter(|(_, t)| **t <= now).map(|(i, _)| *i).collect();
                for i in due {
                    restart_at.remove(&i);
                    if let Err(e) = services[i].spawn(&bus, &run) {
                        tracing::error!("cannot restart {}: {e:#}", services[i].name);
                    }
                }
            }
        }
    };
    for service in services.iter_mut().rev() {
        service.stop().await;
    }
    broker.stop().await;
    Ok(code)
}

/// The exit code of `evos run ocpp` after a Reset (EX_TEMPFAIL).
const OCPP_RESET_EXIT: i32 = 75;

/// How long a scenario waits for the CSMS to accept the station.
const REGISTRATION_DEADLINE: Duration = Duration::from_secs(30);

/// Ocpp1's connection and registration changes (and owner changes: a
/// restarted ocpp does not announce its initial values), and an uncached
/// proxy to read them fresh: a cached one keeps a previous instance's.
async fn ocpp_changes(
    connection: &zbus::Connection,
) -> zbus::Result<(
    futures_util::stream::BoxStream<'static, ()>,
    evos_bus::ocpp::Ocpp1Proxy<'static>,
)> {
    let watched = evos_bus::ocpp::Ocpp1Proxy::new(connection).await?;
    let states = watched.receive_connection_state_changed().await.map(|_| ());
    let registrations = watched
        .receive_registration_status_changed()
        .await
        .map(|_| ());
    let owners = watched.inner().receive_owner_changed().await?.map(|_| ());
    let changes =
        futures_util::stream::select_all([states.boxed(), registrations.boxed(), owners.boxed()]);
    let fresh = evos_bus::ocpp::Ocpp1Proxy::builder(connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    Ok((changes.boxed(), fresh))
}

/// Wait until the ocpp service is connected and registered.
async fn registered(connection: &zbus::Connection) -> Result<()> {
    let (mut changes, ocpp) = ocpp_changes(connection).await?;
    let wait = async {
        loop {
            if ocpp
                .registration_status()
                .await
                .is_ok_and(|r| r == "Accepted")
                && ocpp
                    .connection_state()
                    .await
                    .is_ok_and(|c| c == "Connected")
            {
                return Ok::<_, anyhow::Error>(());
            }
            changes.next().await.context("ocpp left the bus")?;
        }
    };
    tokio::time::timeout(REGISTRATION_DEADLINE, wait)
        .await
        .with_context(|| {
            format!("the CSMS did not accept the station within {REGISTRATION_DEADLINE:?}")
        })?
}

/// Print a line whenever the OCPP connection or registration changes.
async fn ocpp_lines(connection: &zbus::Connection) {
    let Ok((mut changes, ocpp)) = ocpp_changes(connection).await else {
        return std::future::pending().await;
    };
    let mut last = String::new();
    loop {
        // An empty state: the service has just started.
        if let (Ok(state), Ok(registration)) = (
            ocpp.connection_state().await,
            ocpp.registration_status().await,
        ) && !state.is_empty()
        {
            let endpoint = ocpp.endpoint().await.unwrap_or_default();
            let line = format!(
                "OCPP {state}{} {endpoint}",
                if registration.is_empty() {
                    String::new()
                } else {
                    format!(", {registration}")
                }
            );
            if line != last {
                println!("{line}");
                last = line;
            }
        }
        if changes.next().await.is_none() {
            return std::future::pending().await;
        }
    }
}

/// Print a line per EVSE whenever its status changes.
async fn status_lines(connection: &zbus::Connection, evses: u32) {
    let mut streams = Vec::new();
    for id in 1..=evses {
        let builder =
            evos_bus::evse::Evse1Proxy::builder(connection).path(evos_bus::evse::path(id));
        let Ok(proxy) = builder.build().await else {
            continue;
        };
        let changes = proxy.receive_status_changed().await.map(move |_| id);
        streams.push(changes.boxed());
    }
    let mut all = futures_util::stream::select_all(streams);
    while let Some(id) = all.next().await {
        if let Ok(line) = scenario::status_of(connection, id).await {
            println!("{line}");
        }
    }
    std::future::pending::<()>().await
}
