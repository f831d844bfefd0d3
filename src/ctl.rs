//! `evos ctl`: inspect and drive a running stack over D-Bus.
//!
//! The bus is found by `--bus`, `EVOS_BUS_ADDRESS`, `--data-dir` (its
//! `bus.address`), or the most recent `evos sim` (a runtime file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use evos_bus::evse::Evse1Proxy;
use evos_bus::sim::Sim1Proxy;
use zbus::Connection;

#[derive(Args)]
pub struct CtlArgs {
    /// D-Bus address of the stack.
    #[arg(long)]
    bus: Option<String>,
    /// Data directory of an `evos sim`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every EVSE: status, CP state, power, energy, session.
    Status,
    /// Start a session for a token (as a remote start).
    Start { evse: u32, token: String },
    /// Stop the active session.
    Stop {
        evse: u32,
        #[arg(long, default_value = "Remote")]
        reason: String,
    },
    /// Limit charging to VALUE amps (A) or watts (W).
    Limit {
        evse: u32,
        value: f64,
        #[arg(value_parser = ["A", "W"])]
        unit: String,
        /// Seconds until the limit expires (default: until cleared).
        #[arg(long = "for", default_value_t = 0)]
        duration_s: u32,
    },
    /// Move the simulated world.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Act as the operator of the built-in CSMS (`evos sim` without --csms).
    Csms(CsmsArgs),
}

#[derive(Args)]
struct CsmsArgs {
    /// The station to address (default: the only connected one).
    #[arg(long, default_value = "")]
    station: String,
    #[command(subcommand)]
    command: CsmsCommand,
}

#[derive(Subcommand)]
enum CsmsCommand {
    /// Stations the CSMS knows: connection, boot, connector statuses.
    Stations,
    /// Transactions the CSMS recorded.
    Transactions,
    /// RemoteStartTransaction for TOKEN on EVSE.
    RemoteStart { evse: u32, token: String },
    /// RemoteStopTransaction of the transaction on EVSE, or of --transaction ID.
    RemoteStop {
        #[arg(required_unless_present = "transaction")]
        evse: Option<u32>,
        #[arg(long, conflicts_with = "evse")]
        transaction: Option<i32>,
    },
    /// SetChargingProfile: limit EVSE to VALUE amps (A) or watts (W);
    /// --clear clears its profiles (ClearChargingProfile).
    SetLimit {
        evse: u32,
        #[arg(required_unless_present = "clear")]
        value: Option<f64>,
        #[arg(value_parser = ["A", "W"], required_unless_present = "clear")]
        unit: Option<String>,
        #[arg(long, conflicts_with_all = ["value", "unit"])]
        clear: bool,
    },
    /// Reset the station.
    Reset {
        #[arg(value_parser = ["soft", "hard"])]
        kind: String,
    },
    /// TriggerMessage: BootNotification, DiagnosticsStatusNotification,
    /// FirmwareStatusNotification, Heartbeat, MeterValues, StatusNotification.
    Trigger { message: String, evse: Option<u32> },
    /// GetConfiguration of KEYs (none: every key).
    GetConfig { keys: Vec<String> },
    /// ChangeConfiguration of KEY to VALUE.
    SetConfig { key: String, value: String },
}

#[derive(Subcommand)]
enum SimCommand {
    /// Plug an EV in.
    Plug {
        evse: u32,
        /// EV profile (ac-11kw, ac-22kw, ac-7kw-1ph, ac-nearly-full, dc-400v).
        #[arg(long, default_value = "")]
        ev: String,
    },
    Unplug {
        evse: u32,
    },
    /// Hold an RFID card to the reader.
    Swipe {
        evse: u32,
        token: String,
    },
    /// Inject a fault: rcd, welded, lock, diode, state-e, state-f.
    Fault {
        evse: u32,
        kind: String,
    },
    /// Clear every injected fault, the meter's included.
    Clear {
        evse: u32,
    },
    /// Inject a fault into the EVSE's emulated meter: offline, exception,
    /// backwards, jump, garbage; `clear` clears the meter's faults.
    MeterFault {
        evse: u32,
        kind: String,
    },
    /// Inject a fault into the emulated DC power module at ADDRESS:
    /// over-temperature, output-short, input-fault, silent; `clear` clears
    /// the module's faults.
    ModuleFault {
        address: u8,
        kind: String,
    },
    /// What the simulator sees at each EVSE.
    Status,
    /// The emulated DC power modules: output, setpoint, faults.
    Modules,
}

/// Where `evos sim` records its data directory for `evos ctl` to find.
pub fn runtime_file() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("evos-{}", unsafe { libc::getuid() }))
        });
    base.join("evos-sim.current")
}

fn bus_address(args: &CtlArgs) -> Result<String> {
    if let Some(bus) = &args.bus {
        return Ok(bus.clone());
    }
    if let Ok(bus) = std::env::var(evos_bus::BUS_ADDRESS_ENV) {
        return Ok(bus);
    }
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            let file = runtime_file();
            let dir = std::fs::read_to_string(&file).map_err(|_| {
                anyhow::anyhow!("no running evos sim found: start one with `evos sim`, or pass --bus or --data-dir")
            })?;
            PathBuf::from(dir.trim())
        }
    };
    read_address(&data_dir)
}

fn read_address(data_dir: &Path) -> Result<String> {
    let file = data_dir.join("bus.address");
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no evos sim is running on {} (no {})",
            data_dir.display(),
            file.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

pub fn main(args: CtlArgs) -> Result<i32> {
    let address = bus_address(&args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let connection = evos_bus::connection_builder(Some(&address))
            .build()
            .await
            .with_context(|| {
                format!("cannot connect to the bus at {address} (is the stack running?)")
            })?;
        run(&connection, &args).await
    })
}

fn bus_error(e: evos_bus::Error) -> anyhow::Error {
    match e {
        evos_bus::Error::ZBus(zbus::Error::MethodError(name, Some(msg), _)) => {
            anyhow::anyhow!("{name}: {msg}")
        }
        evos_bus::Error::ZBus(e) => anyhow::anyhow!("{e}"),
        other => anyhow::anyhow!("{}: {}", other.dbus_name(), other_message(&other)),
    }
}

fn other_message(e: &evos_bus::Error) -> String {
    use evos_bus::Error::*;
    match e {
        InvalidArgument(m) | NotPermitted(m) | Busy(m) | NotFound(m) | NotSupported(m)
        | Failed(m) => m.clone(),
        ZBus(e) => e.to_string(),
    }
}

async fn evse(connection: &Connection, id: u32) -> Result<Evse1Proxy<'static>> {
    Ok(Evse1Proxy::builder(connection)
        .path(evos_bus::evse::path(id))
        .build()
        .await?)
}

async fn run(connection: &Connection, args: &CtlArgs) -> Result<i32> {
    match &args.command {
        CtlCommand::Status => status(connection, args.json).await,
        CtlCommand::Start { evse: id, token } => {
            evse(connection, *id)
                .await?
                .start_session(token)
                .await
                .map_err(bus_error)?;
            Ok(0)
        }
        CtlCommand::Stop { evse: id, reason } => {
            evse(connection, *id)
                .await?
                .stop_session(reason)
                .await
                .map_err(bus_error)?;
            Ok(0)
        }
        CtlCommand::Limit {
            evse: id,
            value,
            unit,
            duration_s,
        } => {
            evse(connection, *id)
                .await?
                .set_charging_limit(*value, unit, *duration_s)
                .await
                .map_err(bus_error)?;
            Ok(0)
        }
        CtlCommand::Csms(csms_args) => csms(connection, csms_args, args.json).await,
        CtlCommand::Sim(cmd) => {
            let sim = Sim1Proxy::new(connection).await?;
            match cmd {
                SimCommand::Plug { evse, ev } => sim.plug(*evse, ev).await,
                SimCommand::Unplug { evse } => sim.unplug(*evse).await,
                SimCommand::Swipe { evse, token } => sim.swipe(*evse, token).await,
                SimCommand::Fault { evse, kind } => sim.fault(*evse, kind).await,
                SimCommand::Clear { evse } => sim.clear(*evse).await,
                SimCommand::MeterFault { evse, kind } => sim.meter_fault(*evse, kind).await,
                SimCommand::ModuleFault { address, kind } => {
                    sim.module_fault(*address, kind).await
                }
                SimCommand::Modules => {
                    let all = sim.modules().await.map_err(bus_error)?;
                    if all.is_empty() && !args.json {
                        println!("no power modules are emulated");
                    }
                    for m in all {
                        if args.json {
                            println!(
                                "{}",
                                serde_json::json!({"address": m.address, "evse": m.evse, "on": m.on,
                                "setpoint_v": m.setpoint_v, "setpoint_a": m.setpoint_a,
                                "voltage_v": m.voltage_v, "current_a": m.current_a,
                                "faults": m.faults, "timed_out": m.timed_out})
                            );
                        } else {
                            println!(
                                "module {}: evse={} on={} set={:.1}V/{:.1}A out={:.1}V/{:.1}A faults=[{}]{}",
                                m.address,
                                if m.evse == 0 { "-".to_owned() } else { m.evse.to_string() },
                                m.on,
                                m.setpoint_v,
                                m.setpoint_a,
                                m.voltage_v,
                                m.current_a,
                                m.faults.join(","),
                                if m.timed_out { " heartbeat-lost" } else { "" }
                            );
                        }
                    }
                    return Ok(0);
                }
                SimCommand::Status => {
                    let all = sim.evses().await.map_err(bus_error)?;
                    for e in all {
                        if args.json {
                            println!(
                                "{}",
                                serde_json::json!({"evse": e.evse, "ev": e.ev_profile, "cp": e.cp_state,
                                "offered_a": e.offered_a, "relays_closed": e.relays_closed, "locked": e.locked,
                                "current_a": e.current_a, "soc": e.soc_percent, "meter_wh": e.meter_wh,
                                "faults": e.faults, "meter_faults": e.meter_faults,
                                "host_connected": e.host_connected})
                            );
                        } else {
                            println!(
                                "EVSE {}: ev={} cp={} offered={:.1}A relays={} locked={} current={:.1}A soc={:.1}% meter={:.0}Wh faults=[{}] meter_faults=[{}]",
                                e.evse,
                                if e.ev_profile.is_empty() { "-" } else { &e.ev_profile },
                                e.cp_state, e.offered_a, e.relays_closed, e.locked, e.current_a, e.soc_percent, e.meter_wh,
                                e.faults.join(","),
                                e.meter_faults.join(",")
                            );
                        }
                    }
                    return Ok(0);
                }
            }
            .map_err(bus_error)?;
            Ok(0)
        }
    }
}

async fn status(connection: &Connection, json: bool) -> Result<i32> {
    let manager = zbus::fdo::ObjectManagerProxy::builder(connection)
        .destination(evos_bus::evse::BUS_NAME)
        .path(evos_bus::evse::ROOT_PATH)
        .build()
        .await?;
    let objects = manager
        .get_managed_objects()
        .await
        .map_err(|e| anyhow::anyhow!("the evse service does not answer on this bus: {e}"))?;
    let mut rows = Vec::new();
    for (_path, interfaces) in objects {
        let Some(props) = interfaces
            .iter()
            .find(|(name, _)| name.as_str() == evos_bus::evse::INTERFACE)
            .map(|(_, p)| p)
        else {
            continue;
        };
        rows.push(row(props));
    }
    rows.sort_by_key(|r| r["id"].as_u64());
    if rows.is_empty() {
        bail!("the evse service serves no EVSE");
    }
    let meters = meters(connection).await;
    for r in &mut rows {
        let id = r["id"].as_u64().unwrap_or_default();
        if let Some(m) = meters.iter().find(|m| m["evse"].as_u64() == Some(id)) {
            r["meter"] = m.clone();
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!("{}", status_line(&r));
            if r.get("meter").is_some() {
                println!("{}", meter_line(&r["meter"]));
            }
        }
    }
    Ok(0)
}

/// The meter service's objects, one JSON object per meter; none when the
/// service is not running (a board that meters itself needs none).
async fn meters(connection: &Connection) -> Vec<serde_json::Value> {
    let manager = zbus::fdo::ObjectManagerProxy::builder(connection)
        .destination(evos_bus::meter::BUS_NAME)
        .path(evos_bus::meter::ROOT_PATH)
        .build()
        .await;
    let Ok(objects) = (match manager {
        Ok(m) => m.get_managed_objects().await,
        Err(e) => Err(e.into()),
    }) else {
        return Vec::new();
    };
    let mut meters = Vec::new();
    for (_path, interfaces) in objects {
        let Some(props) = interfaces
            .iter()
            .find(|(name, _)| name.as_str() == evos_bus::meter::INTERFACE)
            .map(|(_, p)| p)
        else {
            continue;
        };
        let get = |k: &str| props.get(k).cloned();
        let f = |k: &str| {
            get(k)
                .and_then(|v| f64::try_from(v).ok())
                .filter(|x| x.is_finite())
        };
        meters.push(serde_json::json!({
            "evse": get("Evse").and_then(|v| u32::try_from(v).ok()),
            "model": get("Model").and_then(|v| String::try_from(v).ok()),
            "energy_import_wh": f("EnergyImportWh"),
            "power_w": f("PowerW"),
            "timestamp_ms": get("TimestampMs").and_then(|v| u64::try_from(v).ok()),
            "fault": get("Fault").and_then(|v| String::try_from(v).ok()).unwrap_or_default(),
        }));
    }
    meters
}

/// One human line for a meter, under its EVSE's line.
fn meter_line(m: &serde_json::Value) -> String {
    let fault = m["fault"].as_str().unwrap_or_default();
    let number = |k: &str, scale: f64, decimals: usize| {
        m[k].as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{:.*}", decimals, x / scale))
    };
    format!(
        "  meter {}: {} kW, register {} kWh{}",
        m["model"].as_str().unwrap_or("?"),
        number("power_w", 1000.0, 2),
        number("energy_import_wh", 1000.0, 3),
        if fault.is_empty() {
            String::new()
        } else {
            format!("  fault {fault}")
        }
    )
}

fn row(props: &HashMap<String, zbus::OwnedVariant>) -> serde_json::Value {
    let s = |k: &str| {
        props
            .get(k)
            .and_then(|v| String::try_from(v.clone()).ok())
            .unwrap_or_default()
    };
    let f = |k: &str| {
        props
            .get(k)
            .and_then(|v| f64::try_from(v.clone()).ok())
            .unwrap_or_default()
    };
    let id = props
        .get("Id")
        .and_then(|v| u32::try_from(v.clone()).ok())
        .unwrap_or_default();
    // (id, token, parent, expiry Unix ms); id 0 when none.
    let reservation = props
        .get("Reservation")
        .and_then(|v| <(i32, String, String, i64)>::try_from(v.clone()).ok())
        .filter(|r| r.0 != 0)
        .map(|(id, token, parent, expiry_ms)| {
            serde_json::json!({"id": id, "token": token, "parent": parent, "expiry_ms": expiry_ms})
        });
    serde_json::json!({
        "id": id, "kind": s("Kind"), "status": s("Status"), "cp_state": s("CpState"),
        "offered_current_a": f("OfferedCurrent"), "power_w": f("PowerW"),
        "session_energy_wh": f("SessionEnergyWh"), "session_id": s("SessionId"), "fault": s("Fault"),
        "reservation": reservation,
    })
}

/// `  reserved #7 for TOKEN (parent P), 59 min left` for a held reservation.
fn reservation_text(r: &serde_json::Value) -> String {
    let Some(id) = r["id"].as_i64() else {
        return String::new();
    };
    let parent = r["parent"].as_str().unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let left_s = (r["expiry_ms"].as_i64().unwrap_or_default() - now_ms).max(0) / 1000;
    let left = if left_s >= 120 {
        format!("{} min", left_s / 60)
    } else {
        format!("{left_s} s")
    };
    format!(
        "  reserved #{id} for {}{}, {left} left",
        r["token"].as_str().unwrap_or_default(),
        if parent.is_empty() {
            String::new()
        } else {
            format!(" (parent {parent})")
        }
    )
}

/// One human line for an EVSE, shared by `evos ctl status` and `evos sim`.
pub fn status_line(r: &serde_json::Value) -> String {
    let fault = r["fault"].as_str().unwrap_or_default();
    let session = r["session_id"].as_str().unwrap_or_default();
    format!(
        "EVSE {} {:<2} {:<13} CP {:<1}  {:>5.1} A  {:>6.2} kW  {:>7.3} kWh{}{}{}",
        r["id"],
        r["kind"].as_str().unwrap_or_default(),
        r["status"].as_str().unwrap_or_default(),
        r["cp_state"].as_str().unwrap_or("-"),
        r["offered_current_a"].as_f64().unwrap_or_default(),
        r["power_w"].as_f64().unwrap_or_default() / 1000.0,
        r["session_energy_wh"].as_f64().unwrap_or_default() / 1000.0,
        if session.is_empty() {
            String::new()
        } else {
            format!("  session {session}")
        },
        if fault.is_empty() {
            String::new()
        } else {
            format!("  fault {fault}")
        },
        reservation_text(&r["reservation"]),
    )
}

/// A Csms1 error; the interface missing means no built-in CSMS runs.
fn csms_error(e: evos_bus::Error) -> anyhow::Error {
    // zbus reports the bus's standard errors as fdo errors.
    let name = match &e {
        evos_bus::Error::ZBus(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        evos_bus::Error::ZBus(zbus::Error::FDO(fdo)) => {
            zbus::DBusError::name(fdo.as_ref()).to_string()
        }
        other => other.dbus_name(),
    };
    if matches!(
        name.as_str(),
        "org.freedesktop.DBus.Error.UnknownObject"
            | "org.freedesktop.DBus.Error.UnknownInterface"
            | "org.freedesktop.DBus.Error.UnknownMethod"
            | "org.freedesktop.DBus.Error.ServiceUnknown"
    ) {
        return anyhow::anyhow!(
            "the built-in CSMS is not running (an `evos sim --csms URL` uses another one)"
        );
    }
    bus_error(e)
}

fn time_text(unix_ms: i64) -> String {
    evos_ocpp::wire::DateTime::from_unix_ms(unix_ms).to_string()
}

/// `evos ctl csms …`: the built-in CSMS over org.evos.Csms1.
async fn csms(connection: &Connection, args: &CsmsArgs, json: bool) -> Result<i32> {
    // Uncached: the first call, not the proxy's creation, then says
    // whether a CSMS serves the interface.
    let csms = evos_bus::csms::Csms1Proxy::builder(connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let station = args.station.as_str();
    let status = match &args.command {
        CsmsCommand::Stations => {
            let all = csms.stations().await.map_err(csms_error)?;
            if all.is_empty() && !json {
                println!("no station has connected");
            }
            for s in all {
                let connectors: Vec<serde_json::Value> = s
                    .connectors
                    .iter()
                    .map(|(id, status, error)| {
                        serde_json::json!({"connector": id, "status": status, "error_code": error})
                    })
                    .collect();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": s.id, "connected": s.connected,
                        "boot_status": s.boot_status, "boots": s.boots, "vendor": s.vendor,
                        "model": s.model, "connectors": connectors,
                        "received": s.received.iter().map(|(a, n)| (a.clone(), serde_json::Value::from(*n)))
                            .collect::<serde_json::Map<_, _>>()})
                    );
                    continue;
                }
                let connectors: Vec<String> = s
                    .connectors
                    .iter()
                    .map(|(id, status, error)| {
                        if error == "NoError" {
                            format!("{id} {status}")
                        } else {
                            format!("{id} {status} ({error})")
                        }
                    })
                    .collect();
                println!(
                    "station {}: {}, boot {} ({} boot{}), {} {}; connectors: {}",
                    s.id,
                    if s.connected { "connected" } else { "disconnected" },
                    if s.boot_status.is_empty() { "-" } else { &s.boot_status },
                    s.boots,
                    if s.boots == 1 { "" } else { "s" },
                    s.vendor,
                    s.model,
                    if connectors.is_empty() { "-".to_owned() } else { connectors.join(", ") }
                );
            }
            return Ok(0);
        }
        CsmsCommand::Transactions => {
            let all = csms.transactions().await.map_err(csms_error)?;
            if all.is_empty() && !json {
                println!("no transactions");
            }
            for t in all {
                let running = t.meter_stop_wh < 0;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": t.id, "station": t.station, "connector": t.connector,
                        "id_tag": t.id_tag, "auth_status": t.auth_status,
                        "meter_start_wh": t.meter_start_wh,
                        "meter_stop_wh": (!running).then_some(t.meter_stop_wh),
                        "last_meter_wh": (t.last_meter_wh >= 0.0).then_some(t.last_meter_wh),
                        "meter_values": t.meter_values, "started_ms": t.started_ms,
                        "stopped_ms": (!running).then_some(t.stopped_ms),
                        "reason": (!running).then_some(&t.reason), "running": running})
                    );
                    continue;
                }
                // The meter now (running) or at the stop; unknown until a
                // running transaction reports one.
                let meter_end_wh = if running {
                    (t.last_meter_wh >= 0.0).then_some(t.last_meter_wh)
                } else {
                    Some(t.meter_stop_wh as f64)
                };
                let meter = match meter_end_wh {
                    Some(end) => format!(
                        "meter {} → {end:.0} Wh ({:.3} kWh)",
                        t.meter_start_wh,
                        (end - t.meter_start_wh as f64) / 1000.0
                    ),
                    None => format!("meter {} Wh", t.meter_start_wh),
                };
                let when = if running {
                    format!("running since {}", time_text(t.started_ms))
                } else {
                    format!(
                        "{} to {}, stopped ({})",
                        time_text(t.started_ms),
                        time_text(t.stopped_ms),
                        t.reason
                    )
                };
                println!(
                    "transaction {} {}/{} {} ({}): {when}, {meter}, {} meter value{}",
                    t.id,
                    t.station,
                    t.connector,
                    t.id_tag,
                    t.auth_status,
                    t.meter_values,
                    if t.meter_values == 1 { "" } else { "s" }
                );
            }
            return Ok(0);
        }
        CsmsCommand::GetConfig { keys } => {
            let asked: Vec<&str> = keys.iter().map(String::as_str).collect();
            let found = csms
                .get_configuration(station, &asked)
                .await
                .map_err(csms_error)?;
            for (key, readonly, value) in &found {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"key": key, "readonly": readonly, "value": value})
                    );
                } else {
                    println!(
                        "{key} = {value}{}",
                        if *readonly { "  (read-only)" } else { "" }
                    );
                }
            }
            let unknown: Vec<&str> = asked
                .into_iter()
                .filter(|k| !found.iter().any(|(f, _, _)| f.eq_ignore_ascii_case(k)))
                .collect();
            if !unknown.is_empty() {
                eprintln!("unknown to the station: {}", unknown.join(", "));
            }
            return Ok(0);
        }
        CsmsCommand::RemoteStart { evse, token } => {
            csms.remote_start(station, *evse, token).await
        }
        CsmsCommand::RemoteStop { evse, transaction } => {
            csms.remote_stop(station, transaction.unwrap_or(0), evse.unwrap_or(0))
                .await
        }
        CsmsCommand::SetLimit {
            evse,
            value,
            unit,
            clear,
        } => match (clear, value, unit) {
            (true, _, _) => csms.clear_limit(station, *evse).await,
            (false, Some(value), Some(unit)) => {
                csms.set_limit(station, *evse, *value, unit).await
            }
            _ => bail!("set-limit needs VALUE and UNIT, or --clear"),
        },
        CsmsCommand::Reset { kind } => csms.reset(station, kind).await,
        CsmsCommand::Trigger { message, evse } => {
            csms.trigger(station, message, evse.unwrap_or(0)).await
        }
        CsmsCommand::SetConfig { key, value } => {
            csms.change_configuration(station, key, value).await
        }
    }
    .map_err(csms_error)?;
    if json {
        println!("{}", serde_json::json!({"status": status}));
    } else {
        println!("{status}");
    }
    Ok(0)
}
