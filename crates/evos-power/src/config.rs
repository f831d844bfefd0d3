//! The `[power]` section of evos.toml.
//!
//! ```toml
//! [power]
//! protocol = "infypower"          # infypower | uugreen
//! can = "socketcan:can0"          # or "sim:/run/evos/can.sock" (the simulator)
//! ramp_a_per_s = 50               # current rises at most this fast
//! control_interval_ms = 100       # setpoints and polls (also the modules' keep-alive)
//! pool_max_power_w = 120000       # grid connection: all outputs together
//! pool = [1, 2, 3, 4]             # modules the contactor matrix switches between outputs
//!
//! [[power.module]]                # ratings until the module reports its own
//! address = 1
//! max_current_a = 100
//! max_power_w = 30000
//! min_voltage_v = 150
//! max_voltage_v = 1000
//!
//! [[power.output]]
//! evse = 1
//! modules = []                    # modules wired to this output only
//! ```

use evos_service::config::Invalid;
use serde::Deserialize;

use crate::protocol;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub protocol: String,
    pub can: String,
    #[serde(default = "default_ramp")]
    pub ramp_a_per_s: f64,
    #[serde(default = "default_interval")]
    pub control_interval_ms: u64,
    pub pool_max_power_w: f64,
    #[serde(default)]
    pub pool: Vec<u8>,
    #[serde(default, rename = "module")]
    pub modules: Vec<ModuleConfig>,
    #[serde(default, rename = "output")]
    pub outputs: Vec<OutputConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    pub address: u8,
    pub max_current_a: f64,
    pub max_power_w: f64,
    #[serde(default = "default_min_v")]
    pub min_voltage_v: f64,
    #[serde(default = "default_max_v")]
    pub max_voltage_v: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub evse: u32,
    #[serde(default)]
    pub modules: Vec<u8>,
}

fn default_ramp() -> f64 {
    50.0
}
fn default_interval() -> u64 {
    100
}
fn default_min_v() -> f64 {
    150.0
}
fn default_max_v() -> f64 {
    1000.0
}

impl Config {
    pub fn validate(&self) -> Result<(), Invalid> {
        if protocol::by_name(&self.protocol).is_none() {
            return Err(Invalid::new(
                "power.protocol",
                format!("unknown protocol; known: {}", protocol::NAMES.join(", ")),
            ));
        }
        self.can
            .parse::<evos_hal::can::CanAddress>()
            .map_err(|e| Invalid::new("power.can", e.to_string()))?;
        if !(self.ramp_a_per_s > 0.0 && self.ramp_a_per_s.is_finite()) {
            return Err(Invalid::new("power.ramp_a_per_s", "must be > 0"));
        }
        if !(20..=1000).contains(&self.control_interval_ms) {
            return Err(Invalid::new(
                "power.control_interval_ms",
                "must be within 20..=1000",
            ));
        }
        if !(self.pool_max_power_w > 0.0 && self.pool_max_power_w.is_finite()) {
            return Err(Invalid::new("power.pool_max_power_w", "must be > 0"));
        }
        if self.outputs.is_empty() {
            return Err(Invalid::new(
                "power.output",
                "configure at least one output",
            ));
        }
        for (i, m) in self.modules.iter().enumerate() {
            let key = |k: &str| format!("power.module[{i}].{k}");
            if self.modules[..i].iter().any(|o| o.address == m.address) {
                return Err(Invalid::new(
                    key("address"),
                    "another module has this address",
                ));
            }
            for (name, value) in [
                ("max_current_a", m.max_current_a),
                ("max_power_w", m.max_power_w),
                ("max_voltage_v", m.max_voltage_v),
            ] {
                if !(value > 0.0 && value.is_finite()) {
                    return Err(Invalid::new(key(name), "must be > 0"));
                }
            }
            if !(m.min_voltage_v >= 0.0 && m.min_voltage_v < m.max_voltage_v) {
                return Err(Invalid::new(
                    key("min_voltage_v"),
                    "must be below max_voltage_v",
                ));
            }
        }
        let known = |a: &u8| self.modules.iter().any(|m| m.address == *a);
        if let Some(a) = self.pool.iter().find(|a| !known(a)) {
            return Err(Invalid::new(
                "power.pool",
                format!("module {a} is not a [[power.module]]"),
            ));
        }
        let mut wired: Vec<u8> = self.pool.clone();
        for (i, o) in self.outputs.iter().enumerate() {
            let key = |k: &str| format!("power.output[{i}].{k}");
            if o.evse == 0 || self.outputs[..i].iter().any(|p| p.evse == o.evse) {
                return Err(Invalid::new(
                    key("evse"),
                    "EVSE ids are unique and start at 1",
                ));
            }
            for a in &o.modules {
                if !known(a) {
                    return Err(Invalid::new(
                        key("modules"),
                        format!("module {a} is not a [[power.module]]"),
                    ));
                }
                if wired.contains(a) {
                    return Err(Invalid::new(
                        key("modules"),
                        format!("module {a} is wired elsewhere too"),
                    ));
                }
                wired.push(*a);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULES: &str = "[[module]]\naddress = 1\nmax_current_a = 100\nmax_power_w = 30000\n\
        [[module]]\naddress = 2\nmax_current_a = 100\nmax_power_w = 30000\n";

    fn config(extra: &str) -> Result<(), Invalid> {
        let text = format!(
            "protocol = \"infypower\"\ncan = \"sim:/tmp/can.sock\"\npool_max_power_w = 60000\n{extra}{MODULES}"
        );
        toml::from_str::<Config>(&text).expect("parses").validate()
    }

    #[test]
    fn a_shared_pool_is_valid() {
        config("pool = [1, 2]\n[[output]]\nevse = 1\n[[output]]\nevse = 2\n").unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("pool = [3]\n[[output]]\nevse = 1\n", "power.pool"),
            ("", "power.output"),
            (
                "pool = [1]\n[[output]]\nevse = 1\nmodules = [1]\n",
                "power.output[0].modules",
            ),
            (
                "[[output]]\nevse = 1\n[[output]]\nevse = 1\n",
                "power.output[1].evse",
            ),
            (
                "ramp_a_per_s = 0\n[[output]]\nevse = 1\n",
                "power.ramp_a_per_s",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(config(extra).unwrap_err().key, key, "{extra}");
        }
    }
}
