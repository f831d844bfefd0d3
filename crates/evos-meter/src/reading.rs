//! A meter reading in canonical units (Wh, W, V, A, Hz), and its form on
//! the bus.

use std::collections::BTreeMap;

use evos_bus::meter::MeterReading;
use serde::{Deserialize, Serialize};

use crate::register_map::Quantity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Unix time (ms) the reading was taken.
    pub timestamp_ms: u64,
    pub energy_import_wh: f64,
    pub energy_export_wh: Option<f64>,
    pub power_w: Option<f64>,
    /// One entry per phase (one for DC); `None` where not measured.
    pub power_phase_w: Vec<Option<f64>>,
    pub voltage_v: Vec<Option<f64>>,
    pub current_a: Vec<Option<f64>>,
    pub frequency_hz: Option<f64>,
}

const PHASE_POWER: [Quantity; 3] = [Quantity::PowerL1, Quantity::PowerL2, Quantity::PowerL3];
const PHASE_VOLTAGE: [Quantity; 3] = [
    Quantity::VoltageL1,
    Quantity::VoltageL2,
    Quantity::VoltageL3,
];
const PHASE_CURRENT: [Quantity; 3] = [
    Quantity::CurrentL1,
    Quantity::CurrentL2,
    Quantity::CurrentL3,
];

impl Reading {
    /// Build a reading from decoded quantities; `None` without energy.
    /// A single-channel quantity (`voltage`, `current`) fills phase 1.
    pub fn from_quantities(
        values: &BTreeMap<Quantity, f64>,
        phases: u8,
        timestamp_ms: u64,
    ) -> Option<Reading> {
        let get = |q| values.get(&q).copied();
        let per_phase = |qs: [Quantity; 3], single: Option<Quantity>| {
            (0..usize::from(phases))
                .map(|i| get(qs[i]).or_else(|| if i == 0 { single.and_then(get) } else { None }))
                .collect()
        };
        let power_phase_w: Vec<Option<f64>> = per_phase(PHASE_POWER, None);
        let power_w = get(Quantity::Power).or_else(|| {
            // Meters without a total register: the sum of the phases.
            let phases: Option<Vec<f64>> = power_phase_w.iter().copied().collect();
            phases.filter(|p| !p.is_empty()).map(|p| p.iter().sum())
        });
        Some(Reading {
            timestamp_ms,
            energy_import_wh: get(Quantity::EnergyImport)?,
            energy_export_wh: get(Quantity::EnergyExport),
            power_w,
            power_phase_w,
            voltage_v: per_phase(PHASE_VOLTAGE, Some(Quantity::Voltage)),
            current_a: per_phase(PHASE_CURRENT, Some(Quantity::Current)),
            frequency_hz: get(Quantity::Frequency),
        })
    }

    /// The value of `quantity` in this reading, if measured.
    pub fn quantity(&self, quantity: Quantity) -> Option<f64> {
        let phase = |v: &Vec<Option<f64>>, i: usize| v.get(i).copied().flatten();
        use Quantity::*;
        match quantity {
            EnergyImport => Some(self.energy_import_wh),
            EnergyExport => self.energy_export_wh,
            Power => self.power_w,
            PowerL1 => phase(&self.power_phase_w, 0),
            PowerL2 => phase(&self.power_phase_w, 1),
            PowerL3 => phase(&self.power_phase_w, 2),
            Voltage | VoltageL1 => phase(&self.voltage_v, 0),
            VoltageL2 => phase(&self.voltage_v, 1),
            VoltageL3 => phase(&self.voltage_v, 2),
            Current | CurrentL1 => phase(&self.current_a, 0),
            CurrentL2 => phase(&self.current_a, 1),
            CurrentL3 => phase(&self.current_a, 2),
            Frequency => self.frequency_hz,
        }
    }

    /// The bus form: NaN for what the meter does not measure.
    pub fn to_bus(&self) -> MeterReading {
        let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
        let all = |v: &[Option<f64>]| v.iter().map(|x| nan(*x)).collect();
        MeterReading {
            timestamp_ms: self.timestamp_ms,
            energy_import_wh: self.energy_import_wh,
            energy_export_wh: nan(self.energy_export_wh),
            power_w: nan(self.power_w),
            power_phase_w: all(&self.power_phase_w),
            voltage_v: all(&self.voltage_v),
            current_a: all(&self.current_a),
            frequency_hz: nan(self.frequency_hz),
        }
    }
}
