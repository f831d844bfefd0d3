//! Register maps: how a meter lays out its readings in Modbus registers.
//!
//! A map is data (a TOML file), so a user adds a meter by writing a file,
//! not code. The shipped maps live in `maps/` and are compiled in by name;
//! any other map is loaded from a path. Format:
//!
//! ```toml
//! [meter]
//! vendor = "Eastron"
//! model = "SDM630 Modbus V2"
//! kind = "ac"            # ac | dc
//! phases = 3             # 1..=3 (1 for DC)
//! max_gap = 64           # unmapped registers one read may span (0: never)
//! max_block = 80         # registers per read request (≤ 125)
//!
//! [registers.energy_import]
//! address = 0x0048
//! function = "input"     # input (FC 04) | holding (FC 03)
//! type = "float32"       # u16 i16 u32 i32 u64 i64 float32
//! word_order = "big"     # big: high word first | little: low word first
//! scale = 1.0            # register value × scale = value in `unit`
//! unit = "kWh"           # Wh kWh MWh W kW V kV A mA Hz
//! ```
//!
//! Quantities: `energy_import` (required), `energy_export`, `power`,
//! `power_l1..3`, `voltage_l1..3`, `current_l1..3`, `frequency`; a DC meter
//! uses `voltage`, `current` and `power`.
//!
//! Bytes inside a register are big-endian (Modbus Application Protocol
//! V1.1b3 §4.2); only the order of the 16-bit words differs between vendors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::reading::Reading;

/// The maps that ship with evos, by name (`map = "sdm630"` in the config).
pub const SHIPPED: &[(&str, &str)] = &[
    ("sdm630", include_str!("../maps/sdm630.toml")),
    ("sdm72d-m", include_str!("../maps/sdm72d-m.toml")),
    ("em24", include_str!("../maps/em24.toml")),
    ("dc-meter", include_str!("../maps/dc-meter.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot read register map {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("register map {name}: {message}")]
    Invalid { name: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    pub meter: MeterInfo,
    pub registers: BTreeMap<Quantity, Register>,
    /// Where a meter that signs its own readings keeps its OCMF record.
    #[serde(default)]
    pub ocmf: Option<OcmfRegisters>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterInfo {
    pub vendor: String,
    pub model: String,
    pub kind: MeterKind,
    pub phases: u8,
    #[serde(default)]
    pub max_gap: u16,
    #[serde(default = "default_max_block")]
    pub max_block: u16,
}

fn default_max_block() -> u16 {
    125
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterKind {
    Ac,
    Dc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    EnergyImport,
    EnergyExport,
    Power,
    PowerL1,
    PowerL2,
    PowerL3,
    Voltage,
    VoltageL1,
    VoltageL2,
    VoltageL3,
    Current,
    CurrentL1,
    CurrentL2,
    CurrentL3,
    Frequency,
}

impl Quantity {
    /// The canonical unit a reading carries this quantity in.
    pub fn unit(self) -> Unit {
        use Quantity::*;
        match self {
            EnergyImport | EnergyExport => Unit::Wh,
            Power | PowerL1 | PowerL2 | PowerL3 => Unit::W,
            Voltage | VoltageL1 | VoltageL2 | VoltageL3 => Unit::V,
            Current | CurrentL1 | CurrentL2 | CurrentL3 => Unit::A,
            Frequency => Unit::Hz,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// FC 04, read input registers.
    Input,
    /// FC 03, read holding registers.
    Holding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    Float32,
}

impl DataType {
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::Float32 => 2,
            DataType::U64 | DataType::I64 => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// The most significant word at the lowest address.
    #[default]
    Big,
    /// The least significant word at the lowest address.
    Little,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Unit {
    Wh,
    #[serde(rename = "kWh")]
    KWh,
    #[serde(rename = "MWh")]
    MWh,
    W,
    #[serde(rename = "kW")]
    KW,
    V,
    #[serde(rename = "kV")]
    KV,
    A,
    #[serde(rename = "mA")]
    MA,
    Hz,
}

impl Unit {
    /// (canonical unit, factor to it)
    fn canonical(self) -> (Unit, f64) {
        match self {
            Unit::Wh => (Unit::Wh, 1.0),
            Unit::KWh => (Unit::Wh, 1e3),
            Unit::MWh => (Unit::Wh, 1e6),
            Unit::W => (Unit::W, 1.0),
            Unit::KW => (Unit::W, 1e3),
            Unit::V => (Unit::V, 1.0),
            Unit::KV => (Unit::V, 1e3),
            Unit::A => (Unit::A, 1.0),
            Unit::MA => (Unit::A, 1e-3),
            Unit::Hz => (Unit::Hz, 1.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub address: u16,
    #[serde(default = "default_function")]
    pub function: Function,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub word_order: WordOrder,
    #[serde(default = "default_scale")]
    pub scale: f64,
    pub unit: Unit,
}

fn default_function() -> Function {
    Function::Input
}

fn default_scale() -> f64 {
    1.0
}

/// A meter that signs its own readings (Eichrecht meters): writing
/// `begin`/`end` to `command` makes it produce a record for the
/// transaction's start/stop, which it then serves as ASCII (two bytes per
/// register, NUL padded) at `address..address+length` in holding registers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcmfRegisters {
    pub address: u16,
    pub length: u16,
    #[serde(default)]
    pub command: Option<u16>,
    #[serde(default)]
    pub begin: u16,
    #[serde(default)]
    pub end: u16,
}

/// One read request: `count` registers from `address` with `function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub function: Function,
    pub address: u16,
    pub count: u16,
}

impl Register {
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.words())
    }

    /// The value of this register in its quantity's canonical unit, from
    /// its words as read (register order).
    pub fn decode(&self, words: &[u16]) -> Option<f64> {
        let n = usize::from(self.data_type.words());
        let words = words.get(..n)?;
        let mut ordered: [u16; 4] = [0; 4];
        ordered[..n].copy_from_slice(words);
        if self.word_order == WordOrder::Little {
            ordered[..n].reverse();
        }
        let raw = ordered[..n]
            .iter()
            .fold(0u64, |acc, w| (acc << 16) | u64::from(*w));
        let value = match self.data_type {
            DataType::U16 | DataType::U32 | DataType::U64 => raw as f64,
            DataType::I16 => f64::from(raw as u16 as i16),
            DataType::I32 => f64::from(raw as u32 as i32),
            DataType::I64 => raw as i64 as f64,
            DataType::Float32 => f64::from(f32::from_bits(raw as u32)),
        };
        let value = value * self.scale * self.unit.canonical().1;
        value.is_finite().then_some(value)
    }

    /// The words (register order) that make `value` (canonical unit): what
    /// a meter would serve. Used by the simulator and tests.
    pub fn encode(&self, value: f64) -> Vec<u16> {
        let raw_value = value / self.unit.canonical().1 / self.scale;
        let raw: u64 = match self.data_type {
            DataType::U16 => raw_value.round().clamp(0.0, f64::from(u16::MAX)) as u64,
            DataType::I16 => raw_value.round() as i16 as u16 as u64,
            DataType::U32 => raw_value.round().clamp(0.0, f64::from(u32::MAX)) as u64,
            DataType::I32 => raw_value.round() as i32 as u32 as u64,
            DataType::U64 => raw_value.round().max(0.0) as u64,
            DataType::I64 => raw_value.round() as i64 as u64,
            DataType::Float32 => u64::from((raw_value as f32).to_bits()),
        };
        let n = usize::from(self.data_type.words());
        let mut words: Vec<u16> = (0..n).rev().map(|i| (raw >> (16 * i)) as u16).collect();
        if self.word_order == WordOrder::Little {
            words.reverse();
        }
        words
    }
}

impl RegisterMap {
    /// A shipped map by name, or a map file by path.
    pub fn load(name_or_path: &str) -> Result<RegisterMap, MapError> {
        if let Some((name, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            return RegisterMap::parse(name, text);
        }
        let path = Path::new(name_or_path);
        if !name_or_path.contains('/') && !path.exists() {
            let known: Vec<&str> = SHIPPED.iter().map(|(n, _)| *n).collect();
            return Err(MapError::Invalid {
                name: name_or_path.into(),
                message: format!(
                    "no such shipped map (known: {}) and no such file",
                    known.join(", ")
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
            path: name_or_path.into(),
            source,
        })?;
        RegisterMap::parse(name_or_path, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<RegisterMap, MapError> {
        let invalid = |message: String| MapError::Invalid {
            name: name.into(),
            message,
        };
        let map: RegisterMap = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        map.validate().map_err(invalid)?;
        Ok(map)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.registers.contains_key(&Quantity::EnergyImport) {
            return Err("registers.energy_import is required".into());
        }
        if !(1..=3).contains(&self.meter.phases) {
            return Err("meter.phases must be 1, 2 or 3".into());
        }
        if !(4..=125).contains(&self.meter.max_block) {
            return Err("meter.max_block must be within 4..=125".into());
        }
        for (quantity, register) in &self.registers {
            // The TOML key (`energy_import`), without the JSON quotes.
            let key = serde_json::to_string(quantity).unwrap_or_default();
            let key = key.trim_matches('"');
            if register.end() > 0x1_0000 {
                return Err(format!("registers.{key}: runs past register 0xFFFF"));
            }
            if !(register.scale.is_finite() && register.scale != 0.0) {
                return Err(format!("registers.{key}.scale: must be finite and not 0"));
            }
            if register.unit.canonical().0 != quantity.unit() {
                return Err(format!(
                    "registers.{key}.unit: {:?} is not a unit of {:?}",
                    register.unit,
                    quantity.unit()
                ));
            }
        }
        if let Some(ocmf) = &self.ocmf
            && (ocmf.length == 0 || u32::from(ocmf.address) + u32::from(ocmf.length) > 0x1_0000)
        {
            return Err("ocmf: length must be > 0 and stay below register 0xFFFF".into());
        }
        Ok(())
    }

    /// `vendor model`.
    pub fn display_name(&self) -> String {
        format!("{} {}", self.meter.vendor, self.meter.model)
    }

    /// The fewest read requests that cover every register, respecting
    /// `max_gap` and `max_block`.
    pub fn blocks(&self) -> Vec<Block> {
        let mut spans: Vec<(Function, u32, u32)> = self
            .registers
            .values()
            .map(|r| (r.function, u32::from(r.address), r.end()))
            .collect();
        spans.sort();
        let mut blocks: Vec<Block> = Vec::new();
        for (function, start, end) in spans {
            if let Some(last) = blocks.last_mut() {
                let last_end = u32::from(last.address) + u32::from(last.count);
                let merged = end.max(last_end) - u32::from(last.address);
                if last.function == function
                    && start <= last_end + u32::from(self.meter.max_gap)
                    && merged <= u32::from(self.meter.max_block)
                {
                    last.count = merged as u16;
                    continue;
                }
            }
            blocks.push(Block {
                function,
                address: start as u16,
                count: (end - start) as u16,
            });
        }
        blocks
    }

    /// Decode the words read for `blocks()` (same order) into a reading.
    /// `None` if a block is short or the energy register is not a number.
    pub fn decode(
        &self,
        blocks: &[Block],
        data: &[Vec<u16>],
        timestamp_ms: u64,
    ) -> Option<Reading> {
        let mut values = BTreeMap::new();
        for (quantity, register) in &self.registers {
            let (block, words) = blocks.iter().zip(data).find(|(b, _)| {
                b.function == register.function
                    && b.address <= register.address
                    && u32::from(b.address) + u32::from(b.count) >= register.end()
            })?;
            // A short answer is no reading, not a reading without this
            // quantity.
            let offset = usize::from(register.address - block.address);
            let end = offset + usize::from(register.data_type.words());
            let value = register.decode(words.get(offset..end)?);
            if let Some(value) = value {
                values.insert(*quantity, value);
            }
        }
        Reading::from_quantities(&values, self.meter.phases, timestamp_ms)
    }

    /// The register image a meter at `reading` serves: (function, address)
    /// → word. Used by the simulator and by tests.
    pub fn encode(&self, reading: &Reading) -> BTreeMap<(Function, u16), u16> {
        let mut image = BTreeMap::new();
        for (quantity, register) in &self.registers {
            let Some(value) = reading.quantity(*quantity) else {
                continue;
            };
            for (i, word) in register.encode(value).into_iter().enumerate() {
                image.insert((register.function, register.address + i as u16), word);
            }
        }
        image
    }
}

#[cfg(test)]
mod tests;
