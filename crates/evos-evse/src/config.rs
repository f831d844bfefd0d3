//! The `[evse]` section of evos.toml.
//!
//! ```toml
//! [evse]
//! auth = "allow-list"          # or "free-vend", or "ocpp" (org.evos.Ocpp1.Authorize)
//! allow_list = ["04A2B3C4"]
//! connection_timeout_s = 60    # authorized but not plugged in: give up after this
//!                              # (OCPP ConnectionTimeOut may change it at run time)
//!
//! [[evse.evse]]
//! id = 1
//! kind = "ac"                   # "ac" or "dc"
//! link = "serial:/dev/ttymxc1?baud=115200"   # the safety MCU
//! max_current_a = 32
//! phases = 3
//! socket = true                 # a socket outlet with lock and PP; false = tethered cable
//! meter = "bus"                 # energy from org.evos.Meter1 (the meter service), or
//!                               # "board" for a safety board that meters itself
//! ```

use evos_service::config::Invalid;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub allow_list: Vec<String>,
    #[serde(default = "default_connection_timeout")]
    pub connection_timeout_s: u32,
    #[serde(default)]
    pub evse: Vec<EvseConfig>,
}

fn default_connection_timeout() -> u32 {
    60
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Only tokens on `allow_list` may charge.
    #[default]
    AllowList,
    /// Anyone may charge: a session starts when the EV plugs in.
    FreeVend,
    /// Every token is put to the OCPP service (`org.evos.Ocpp1.Authorize`),
    /// which applies the OCPP online and offline rules.
    Ocpp,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ac,
    Dc,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ac => "AC",
            Kind::Dc => "DC",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvseConfig {
    pub id: u32,
    pub kind: Kind,
    /// Where the safety MCU is (`serial:…` or `unix:…`).
    pub link: String,
    pub max_current_a: f64,
    #[serde(default = "default_phases")]
    pub phases: u8,
    #[serde(default = "default_socket")]
    pub socket: bool,
    /// Nominal phase voltage, for converting a W limit to A on AC.
    #[serde(default = "default_voltage")]
    pub nominal_voltage_v: f64,
    /// Where session energy comes from.
    #[serde(default)]
    pub meter: MeterSource,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MeterSource {
    /// The meter service (`org.evos.Meter1` at the EVSE's id): live
    /// readings, and persisted (optionally signed) start/stop readings.
    #[default]
    Bus,
    /// The safety board's own measurement frames.
    Board,
}

fn default_phases() -> u8 {
    3
}
fn default_socket() -> bool {
    true
}
fn default_voltage() -> f64 {
    230.0
}

impl Config {
    /// Checks that serde cannot express; each error names its key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.evse.is_empty() {
            return Err(Invalid::new("evse.evse", "no EVSE configured"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.evse.iter().enumerate() {
            let key = |k: &str| format!("evse.evse[{i}].{k}");
            if e.id == 0 {
                return Err(Invalid::new(key("id"), "EVSE ids start at 1"));
            }
            if !seen.insert(e.id) {
                return Err(Invalid::new(
                    key("id"),
                    format!("EVSE id {} appears twice", e.id),
                ));
            }
            if let Err(err) = e.link.parse::<evos_hal::mcu::LinkAddress>() {
                return Err(Invalid::new(key("link"), err.to_string()));
            }
            let max = match e.kind {
                Kind::Ac => 80.0,
                Kind::Dc => 1000.0,
            };
            if !(6.0..=max).contains(&e.max_current_a) {
                return Err(Invalid::new(
                    key("max_current_a"),
                    format!("must be within 6..={max} A"),
                ));
            }
            if !matches!(e.phases, 1 | 3) {
                return Err(Invalid::new(key("phases"), "must be 1 or 3"));
            }
            if !(100.0..=1000.0).contains(&e.nominal_voltage_v) {
                return Err(Invalid::new(
                    key("nominal_voltage_v"),
                    "must be within 100..=1000 V",
                ));
            }
        }
        if self.auth == AuthMode::AllowList && self.allow_list.is_empty() {
            tracing::warn!("evse.allow_list is empty: no token can start a session");
        }
        if self.auth != AuthMode::AllowList && !self.allow_list.is_empty() {
            tracing::warn!("evse.allow_list is ignored: auth is not \"allow-list\"");
        }
        if self.connection_timeout_s == 0 {
            return Err(Invalid::new(
                "evse.connection_timeout_s",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        #[derive(Deserialize)]
        struct File {
            evse: Config,
        }
        toml::from_str::<File>(text).unwrap().evse
    }

    const GOOD: &str = r#"
        [evse]
        allow_list = ["A"]
        [[evse.evse]]
        id = 1
        kind = "ac"
        link = "unix:/tmp/mcu1"
        max_current_a = 16
    "#;

    #[test]
    fn defaults_and_validation() {
        let c = parse(GOOD);
        assert_eq!(c.auth, AuthMode::AllowList);
        assert_eq!(c.evse[0].phases, 3);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn auth_modes_parse() {
        let ocpp = parse(&GOOD.replace("[evse]", "[evse]\nauth = \"ocpp\""));
        assert_eq!(ocpp.auth, AuthMode::Ocpp);
        let free = parse(&GOOD.replace("[evse]", "[evse]\nauth = \"free-vend\""));
        assert_eq!(free.auth, AuthMode::FreeVend);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = parse(GOOD);
        c.evse[0].phases = 2;
        assert_eq!(c.validate().unwrap_err().key, "evse.evse[0].phases");
        let mut c = parse(GOOD);
        c.evse[0].link = "tcp:x".into();
        assert_eq!(c.validate().unwrap_err().key, "evse.evse[0].link");
        let mut c = parse(GOOD);
        c.evse.push(c.evse[0].clone());
        assert_eq!(c.validate().unwrap_err().key, "evse.evse[1].id");
        let mut c = parse(GOOD);
        c.evse[0].max_current_a = 100.0;
        assert_eq!(c.validate().unwrap_err().key, "evse.evse[0].max_current_a");
    }
}
