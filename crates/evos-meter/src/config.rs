//! The `[meter]` section of evos.toml.
//!
//! ```toml
//! [meter]
//! poll_interval_ms = 1000
//! timeout_ms = 1000
//! sign = true                # OCMF records signed with the station key
//! # key_file = "/etc/evos/ocmf-key.pem"   (default: <state>/meter/ocmf-key.pem)
//! station_serial = "EVOS-0001"
//!
//! [[meter.meter]]
//! evse = 1
//! map = "sdm630"             # a shipped map, or a path to a map file
//! transport = "tcp:192.168.1.50:502"   # or "rtu:/dev/ttyUSB0:9600:8N1"
//! unit = 1                   # Modbus unit (slave) id
//! serial = "12345678"        # the meter's serial number, for OCMF
//! max_power_w = 25000        # above this, an energy step is implausible
//! ```

use std::path::PathBuf;

use evos_service::config::Invalid;
use serde::Deserialize;

use crate::register_map::RegisterMap;
use crate::transport::TransportAddress;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub sign: bool,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub station_serial: Option<String>,
    #[serde(default, rename = "meter")]
    pub meters: Vec<MeterConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    pub evse: u32,
    pub map: String,
    pub transport: String,
    #[serde(default = "default_unit")]
    pub unit: u8,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default = "default_max_power_w")]
    pub max_power_w: f64,
}

fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_unit() -> u8 {
    1
}
fn default_max_power_w() -> f64 {
    50_000.0
}

/// A meter as the service runs it: its config with the map loaded and the
/// transport parsed.
#[derive(Debug, Clone)]
pub struct MeterSpec {
    pub config: MeterConfig,
    pub map: RegisterMap,
    pub transport: TransportAddress,
}

impl Config {
    /// Check every key and load every map; errors name the key.
    pub fn validate(&self) -> Result<Vec<MeterSpec>, Invalid> {
        if !(50..=3_600_000).contains(&self.poll_interval_ms) {
            return Err(Invalid::new(
                "meter.poll_interval_ms",
                "must be within 50..=3600000",
            ));
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(Invalid::new(
                "meter.timeout_ms",
                "must be within 10..=60000",
            ));
        }
        if self.meters.is_empty() {
            return Err(Invalid::new("meter.meter", "configure at least one meter"));
        }
        let mut specs = Vec::new();
        for (i, meter) in self.meters.iter().enumerate() {
            let key = |k: &str| format!("meter.meter[{i}].{k}");
            if meter.evse == 0 {
                return Err(Invalid::new(key("evse"), "EVSE ids start at 1"));
            }
            if self.meters[..i].iter().any(|m| m.evse == meter.evse) {
                return Err(Invalid::new(key("evse"), "another meter has this EVSE"));
            }
            if meter.unit == 0 || meter.unit > 247 {
                return Err(Invalid::new(key("unit"), "a Modbus unit id is 1..=247"));
            }
            if !(meter.max_power_w > 0.0 && meter.max_power_w.is_finite()) {
                return Err(Invalid::new(key("max_power_w"), "must be > 0"));
            }
            let map = RegisterMap::load(&meter.map)
                .map_err(|e| Invalid::new(key("map"), e.to_string()))?;
            let transport = meter
                .transport
                .parse::<TransportAddress>()
                .map_err(|e| Invalid::new(key("transport"), e))?;
            specs.push(MeterSpec {
                config: meter.clone(),
                map,
                transport,
            });
        }
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(text).expect("parses")
    }

    const ONE_METER: &str =
        "[[meter]]\nevse = 1\nmap = \"sdm630\"\ntransport = \"tcp:127.0.0.1:502\"\n";

    #[test]
    fn a_valid_config_loads_its_maps_and_transports() {
        let config = parse(&format!("poll_interval_ms = 500\nsign = true\n{ONE_METER}"));
        let specs = config.validate().unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].map.display_name(), "Eastron SDM630 Modbus V2");
        assert_eq!(specs[0].transport.to_string(), "tcp:127.0.0.1:502");
        assert_eq!(specs[0].config.unit, 1);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "poll_interval_ms = 1\n",
                ONE_METER,
                "meter.poll_interval_ms",
            ),
            ("", "", "meter.meter"),
            (
                "",
                "[[meter]]\nevse = 1\nmap = \"sdm999\"\ntransport = \"tcp:h:1\"\n",
                "meter.meter[0].map",
            ),
            (
                "",
                "[[meter]]\nevse = 1\nmap = \"sdm630\"\ntransport = \"udp:h:1\"\n",
                "meter.meter[0].transport",
            ),
            (
                "",
                "[[meter]]\nevse = 0\nmap = \"sdm630\"\ntransport = \"tcp:h:1\"\n",
                "meter.meter[0].evse",
            ),
            (
                "",
                "[[meter]]\nevse = 1\nmap = \"sdm630\"\ntransport = \"tcp:h:1\"\nunit = 0\n",
                "meter.meter[0].unit",
            ),
            (
                "",
                &format!("{ONE_METER}{ONE_METER}"),
                "meter.meter[1].evse",
            ),
        ];
        for (head, meters, key) in cases {
            let err = parse(&format!("{head}{meters}")).validate().unwrap_err();
            assert_eq!(err.key, key, "{head}{meters}: {err}");
        }
        assert!(toml::from_str::<Config>("[[meter]]\nevse = 1\nmapp = \"x\"\n").is_err());
    }
}
