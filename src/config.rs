//! The station's one TOML file: a section per service, each typed and
//! validated by the service that owns it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    /// Where services keep state that must survive a restart.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    #[serde(default)]
    pub station: StationSection,
    pub evse: Option<evos_evse::Config>,
    pub meter: Option<evos_meter::Config>,
    pub power: Option<evos_power::Config>,
    pub ocpp: Option<evos_ocpp::Config>,
    #[cfg(feature = "sim")]
    #[serde(default)]
    pub sim: hal_sim::Config,
}

impl StationConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let config: StationConfig = evos_service::config::load(path)?;
        if let Some(evse) = &config.evse {
            evse.validate()
                .map_err(|e| evos_service::config::invalid(path, e))?;
        }
        if let Some(meter) = &config.meter {
            meter
                .validate()
                .map_err(|e| evos_service::config::invalid(path, e))?;
        }
        if let Some(power) = &config.power {
            power
                .validate()
                .map_err(|e| evos_service::config::invalid(path, e))?;
        }
        if let Some(ocpp) = &config.ocpp {
            ocpp.validate()
                .map_err(|e| evos_service::config::invalid(path, e))?;
        }
        #[cfg(feature = "sim")]
        config
            .sim
            .validate()
            .map_err(|e| evos_service::config::invalid(path, e))?;
        Ok(config)
    }

    /// `<state-dir>/<service>`: `--state-dir`, else `[station] state_dir`,
    /// else `/var/lib/evos`.
    pub fn state_dir(&self, cli: Option<&Path>, service: &str) -> PathBuf {
        let base = cli
            .map(Path::to_path_buf)
            .or_else(|| self.station.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/evos"));
        base.join(service)
    }
}
