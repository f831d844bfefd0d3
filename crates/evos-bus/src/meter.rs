//! `org.evos.Meter1`: energy meters, served by `evos run meter`.
//!
//! One object per meter at `/org/evos/Meter1/<evse>` (the EVSE the meter
//! measures), with an ObjectManager at `/org/evos/Meter1`. Properties carry
//! the latest good reading; the `Reading` signal repeats every poll so a
//! client sees a fresh timestamp even when no value changed.

use serde::{Deserialize, Serialize};
use zbus::{Type, proxy};

pub const BUS_NAME: &str = "org.evos.Meter";
pub const INTERFACE: &str = "org.evos.Meter1";
pub const ROOT_PATH: &str = "/org/evos/Meter1";

pub fn path(evse: u32) -> String {
    format!("{ROOT_PATH}/{evse}")
}

/// One timestamped reading. A quantity the meter does not measure is NaN
/// (D-Bus has no optional values); per-phase vectors hold one entry per
/// phase the meter has (one for DC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct MeterReading {
    /// Unix time of the reading (ms).
    pub timestamp_ms: u64,
    pub energy_import_wh: f64,
    pub energy_export_wh: f64,
    /// Total active power (W), positive when importing.
    pub power_w: f64,
    pub power_phase_w: Vec<f64>,
    pub voltage_v: Vec<f64>,
    pub current_a: Vec<f64>,
    pub frequency_hz: f64,
}

/// What `StartTransaction` and `StopTransaction` return: the register
/// reading the transaction begins or ends with, as persisted by `meter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct TransactionReading {
    pub transaction: String,
    pub energy_wh: f64,
    /// Unix time of the reading (ms).
    pub timestamp_ms: u64,
    /// An OCMF record (`OCMF|{…}|{…}`), signed by the meter itself or by
    /// the station key; empty when signing is not configured.
    pub ocmf: String,
}

#[proxy(interface = "org.evos.Meter1", default_service = "org.evos.Meter")]
pub trait Meter1 {
    /// Take a fresh reading, persist it as transaction `id`'s start and
    /// return it. Idempotent: calling it again for the same `id` returns the
    /// persisted record. `token` is the identification that authorized it
    /// (goes into the OCMF record; empty for none).
    fn start_transaction(&self, id: &str, token: &str) -> Result<TransactionReading, crate::Error>;
    /// Take a fresh reading (the last good one if the meter does not
    /// answer), persist it as transaction `id`'s stop and return it.
    /// Idempotent like `StartTransaction`; `NotFound` if `id` never started.
    fn stop_transaction(&self, id: &str) -> Result<TransactionReading, crate::Error>;

    /// Emitted on every successful poll.
    #[zbus(signal)]
    fn reading(&self, reading: MeterReading) -> zbus::Result<()>;

    /// The EVSE this meter measures.
    #[zbus(property)]
    fn evse(&self) -> zbus::Result<u32>;
    /// `vendor model` from the register map.
    #[zbus(property)]
    fn model(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn energy_import_wh(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn energy_export_wh(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn power_w(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn voltage_v(&self) -> zbus::Result<Vec<f64>>;
    #[zbus(property)]
    fn current_a(&self) -> zbus::Result<Vec<f64>>;
    #[zbus(property)]
    fn frequency_hz(&self) -> zbus::Result<f64>;
    /// Unix time (ms) of the last good reading; 0 before the first.
    #[zbus(property)]
    fn timestamp_ms(&self) -> zbus::Result<u64>;
    /// Empty when healthy; otherwise why the readings are not trusted
    /// (`timeout: …`, `exception: …`, `implausible: …`). The properties keep
    /// the last good reading meanwhile.
    #[zbus(property)]
    fn fault(&self) -> zbus::Result<String>;
    /// The station's OCMF public key (hex DER SubjectPublicKeyInfo, as
    /// transparency software takes it); empty when the station does not sign.
    #[zbus(property)]
    fn public_key(&self) -> zbus::Result<String>;
}
