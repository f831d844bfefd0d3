//! `evos`: the multi-call binary of the evos charger stack.
//!
//! - `evos run SERVICE` runs one service (one systemd unit each on a charger);
//! - `evos sim` runs the whole stack on a desktop against the simulator;
//! - `evos ctl` inspects and drives a running stack over D-Bus.

mod config;
mod ctl;
mod ocmf_cli;
#[cfg(feature = "sim")]
mod sim;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::config::StationConfig;

#[derive(Parser)]
#[command(name = "evos", version, about = "evos charger operating stack")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one service: evse, meter, power, ocpp, hal-sim (simulator builds), broker (simulator builds).
    Run {
        service: String,
        /// The station config file.
        #[arg(long, default_value = "/etc/evos/evos.toml")]
        config: PathBuf,
        /// Base directory for service state (default: [station] state_dir or /var/lib/evos).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// D-Bus address (default: $EVOS_BUS_ADDRESS, else the system bus).
        #[arg(long)]
        bus: Option<String>,
        /// For `broker`: the address to listen on.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the whole stack on a desktop with the simulated hardware.
    #[cfg(feature = "sim")]
    Sim(sim::SimArgs),
    /// Inspect and drive a running stack.
    Ctl(ctl::CtlArgs),
    /// Check OCMF signed meter values (a user-side transparency check).
    Ocmf(ocmf_cli::OcmfArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            service,
            config,
            state_dir,
            bus,
            listen,
        } => run_service(&service, &config, state_dir, bus, listen),
        #[cfg(feature = "sim")]
        Command::Sim(args) => sim::main(args),
        Command::Ctl(args) => ctl::main(args),
        Command::Ocmf(args) => ocmf_cli::main(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("evos: {e:#}");
            std::process::exit(1);
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread per service: the services are I/O bound, and a charger's
    // RAM is better spent elsewhere.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn run_service(
    service: &str,
    config_path: &std::path::Path,
    state_dir: Option<PathBuf>,
    bus: Option<String>,
    listen: Option<String>,
) -> Result<i32> {
    evos_service::logging::init(service);
    match service {
        "evse" => {
            let config = StationConfig::load(config_path)?;
            let evse = config
                .evse
                .clone()
                .with_context(|| format!("config {}: no [evse] section", config_path.display()))?;
            let dir = config.state_dir(state_dir.as_deref(), "evse");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create state dir {}", dir.display()))?;
            runtime()?.block_on(evos_evse::run(evse, &dir, bus.as_deref()))?;
            Ok(0)
        }
        "meter" => {
            let config = StationConfig::load(config_path)?;
            let meter = config
                .meter
                .clone()
                .with_context(|| format!("config {}: no [meter] section", config_path.display()))?;
            let dir = config.state_dir(state_dir.as_deref(), "meter");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create state dir {}", dir.display()))?;
            runtime()?.block_on(evos_meter::run(meter, &dir, bus.as_deref()))?;
            Ok(0)
        }
        "ocpp" => {
            let config = StationConfig::load(config_path)?;
            let mut ocpp = config
                .ocpp
                .clone()
                .with_context(|| format!("config {}: no [ocpp] section", config_path.display()))?;
            if ocpp.connectors == 0 {
                ocpp.connectors = config.evse.as_ref().map_or(1, |e| e.evse.len() as u32);
            }
            let dir = config.state_dir(state_dir.as_deref(), "ocpp");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create state dir {}", dir.display()))?;
            match runtime()?.block_on(evos_ocpp::run(ocpp, &dir, bus.as_deref()))? {
                // A reset: exit with EX_TEMPFAIL so a Restart=on-failure
                // unit (or the sim's supervisor) starts the service again.
                Some(evos_ocpp::Exit::Reset { .. }) => Ok(75),
                None => Ok(0),
            }
        }
        "power" => {
            let config = StationConfig::load(config_path)?;
            let power = config
                .power
                .clone()
                .with_context(|| format!("config {}: no [power] section", config_path.display()))?;
            runtime()?.block_on(evos_power::run(power, bus.as_deref()))?;
            Ok(0)
        }
        #[cfg(feature = "sim")]
        "hal-sim" => {
            let config = StationConfig::load(config_path)?;
            let sites = sim::sites_of(&config)?;
            // The simulated meters keep their registers only where a state
            // dir is named; tests run without one.
            let dir = state_dir
                .as_deref()
                .or(config.station.state_dir.as_deref())
                .map(|_| config.state_dir(state_dir.as_deref(), "hal-sim"));
            runtime()?.block_on(hal_sim::run(
                config.sim.clone(),
                sites,
                dir.as_deref(),
                bus.as_deref(),
            ))?;
            Ok(0)
        }
        #[cfg(feature = "sim")]
        "broker" => {
            let listen = listen.context("broker needs --listen ADDRESS")?;
            sim::broker::run_embedded(&listen)?;
            Ok(0)
        }
        other => {
            let _ = listen;
            bail!(
                "unknown service `{other}`; this build runs: evse, meter, power{}",
                if cfg!(feature = "sim") {
                    ", hal-sim, broker"
                } else {
                    ""
                }
            )
        }
    }
}
