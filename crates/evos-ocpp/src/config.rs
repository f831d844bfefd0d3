//! The `[ocpp]` section of evos.toml.
//!
//! ```toml
//! [ocpp]
//! version = "1.6"
//! csms_url = "wss://csms.example.com/ocpp"   # the station id is appended
//! station_id = "EVOS-0001"
//! security_profile = 2          # 0 none (development), 1 basic auth, 2 TLS + basic auth, 3 mutual TLS
//! password = "…"                # profiles 1 and 2 (or password_file)
//! ca_file = "/etc/evos/csms-ca.pem"
//! client_cert = "/etc/evos/station.pem"     # profile 3
//! client_key = "/etc/evos/station.key"
//! vendor = "evos"
//! model = "evos-ac22"
//! serial_number = "EVOS-0001"
//! response_timeout_s = 30       # a CALL without an answer after this fails
//! reconnect_min_s = 1           # back-off between connection attempts
//! reconnect_max_s = 60
//! voltage_v = 230               # for converting A ⇄ W in charging profiles
//! phases = 3
//! max_current_a = 32
//! reset_soft = ["systemctl", "restart", "evos.target"]   # empty: the service exits and systemd restarts it
//! reset_hard = ["systemctl", "reboot"]
//!
//! [ocpp.keys]                   # defaults for OCPP configuration keys
//! HeartbeatInterval = "300"
//! MeterValuesSampledData = "Energy.Active.Import.Register,Power.Active.Import"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use evos_service::config::Invalid;
use serde::Deserialize;

use crate::transport::TransportConfig;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_version")]
    pub version: String,
    pub csms_url: String,
    pub station_id: String,
    #[serde(default)]
    pub security_profile: u8,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_vendor")]
    pub vendor: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default = "default_response_timeout")]
    pub response_timeout_s: u64,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_s: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: u64,
    #[serde(default = "default_voltage")]
    pub voltage_v: f64,
    #[serde(default = "default_phases")]
    pub phases: u8,
    #[serde(default = "default_max_current")]
    pub max_current_a: f64,
    /// How many connectors (EVSEs) the station has; filled from `[evse]`
    /// when the station config has one.
    #[serde(default)]
    pub connectors: u32,
    #[serde(default)]
    pub reset_soft: Vec<String>,
    #[serde(default)]
    pub reset_hard: Vec<String>,
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

fn default_version() -> String {
    "1.6".into()
}
fn default_vendor() -> String {
    "evos".into()
}
fn default_model() -> String {
    "evos".into()
}
fn default_response_timeout() -> u64 {
    30
}
fn default_reconnect_min() -> u64 {
    1
}
fn default_reconnect_max() -> u64 {
    60
}
fn default_voltage() -> f64 {
    230.0
}
fn default_phases() -> u8 {
    3
}
fn default_max_current() -> f64 {
    32.0
}

impl Config {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.version != "1.6" {
            return Err(Invalid::new(
                "ocpp.version",
                format!(
                    "unsupported OCPP version {:?} (supported: \"1.6\")",
                    self.version
                ),
            ));
        }
        if !(self.csms_url.starts_with("ws://") || self.csms_url.starts_with("wss://")) {
            return Err(Invalid::new(
                "ocpp.csms_url",
                "must start with ws:// or wss://",
            ));
        }
        // CiString20 in BootNotification's neighbours; the identity itself is
        // a URL path segment, so keep it printable and short.
        if self.station_id.is_empty() || self.station_id.len() > 48 {
            return Err(Invalid::new(
                "ocpp.station_id",
                "must be 1 to 48 characters",
            ));
        }
        if self.station_id.chars().any(|c| c.is_control()) {
            return Err(Invalid::new(
                "ocpp.station_id",
                "must not contain control characters",
            ));
        }
        if self.vendor.is_empty() || self.vendor.len() > 20 {
            return Err(Invalid::new(
                "ocpp.vendor",
                "must be 1 to 20 characters (CiString20)",
            ));
        }
        if self.model.is_empty() || self.model.len() > 20 {
            return Err(Invalid::new(
                "ocpp.model",
                "must be 1 to 20 characters (CiString20)",
            ));
        }
        if self.serial_number.as_ref().is_some_and(|s| s.len() > 25) {
            return Err(Invalid::new(
                "ocpp.serial_number",
                "at most 25 characters (CiString25)",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Invalid::new(
                "ocpp.password_file",
                "give password or password_file, not both",
            ));
        }
        if self.response_timeout_s == 0 {
            return Err(Invalid::new(
                "ocpp.response_timeout_s",
                "must be at least 1",
            ));
        }
        if self.reconnect_min_s == 0 || self.reconnect_max_s < self.reconnect_min_s {
            return Err(Invalid::new(
                "ocpp.reconnect_max_s",
                "need 1 <= reconnect_min_s <= reconnect_max_s",
            ));
        }
        if !(1..=3).contains(&self.phases) {
            return Err(Invalid::new("ocpp.phases", "must be 1 to 3"));
        }
        if self.voltage_v.is_nan() || self.voltage_v <= 0.0 {
            return Err(Invalid::new("ocpp.voltage_v", "must be positive"));
        }
        if self.max_current_a.is_nan() || self.max_current_a <= 0.0 {
            return Err(Invalid::new("ocpp.max_current_a", "must be positive"));
        }
        self.transport(self.password.clone())
            .validate()
            .map_err(|e| match e {
                crate::transport::TransportError::Config { key, reason } => {
                    Invalid::new(key, reason)
                }
                other => Invalid::new("ocpp", other.to_string()),
            })?;
        Ok(())
    }

    /// The password for basic auth, from the config or its file.
    pub fn read_password(&self) -> Result<Option<String>, Invalid> {
        match (&self.password, &self.password_file) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| {
                    Invalid::new("ocpp.password_file", format!("{}: {e}", path.display()))
                }),
            (None, None) => Ok(None),
        }
    }

    pub fn transport(&self, password: Option<String>) -> TransportConfig {
        TransportConfig {
            csms_url: self.csms_url.clone(),
            station_id: self.station_id.clone(),
            subprotocol: "ocpp1.6".into(),
            security_profile: self.security_profile,
            basic_auth_password: password
                .or_else(|| self.password_file.as_ref().map(|_| String::new())),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}
