//! `org.evos.Csms1`: the simulator's built-in OCPP 1.6J Central System, at
//! `/org/evos/Csms1` on the simulator's bus name (`org.evos.Sim`).
//!
//! Only hal-sim serves it, and only when it runs the built-in CSMS (`evos
//! sim` without `--csms`). It plays the operator's back office: what the
//! CSMS knows about stations and transactions, and the commands an operator
//! sends (OCPP 1.6 §5: RemoteStartTransaction, RemoteStopTransaction,
//! SetChargingProfile, ClearChargingProfile, Reset, TriggerMessage,
//! GetConfiguration, ChangeConfiguration). A command returns the station's
//! answer (its `status` value); a station that is unknown or not connected is
//! `org.evos.Error.NotFound`, a CALLERROR or no answer is `…Failed`.
//!
//! `station` may be empty: it then names the only connected station (more
//! than one connected is `…InvalidArgument`).

use serde::{Deserialize, Serialize};
use zbus::{Type, proxy};

/// The simulator's bus name: the CSMS is part of the simulated world.
pub const BUS_NAME: &str = crate::sim::BUS_NAME;
pub const INTERFACE: &str = "org.evos.Csms1";
pub const PATH: &str = "/org/evos/Csms1";

/// A station as the CSMS knows it (`Stations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct CsmsStation {
    /// Its identity: the last segment of the URL it connected to.
    pub id: String,
    pub connected: bool,
    /// The RegistrationStatus the CSMS gave its last BootNotification;
    /// empty before one.
    pub boot_status: String,
    /// BootNotifications received since the CSMS started.
    pub boots: u32,
    pub vendor: String,
    pub model: String,
    /// Per connector from its StatusNotifications: (connectorId,
    /// ChargePointStatus, ChargePointErrorCode); connector 0 is the station.
    pub connectors: Vec<(u32, String, String)>,
    /// How many CALLs of each action it sent, by action name.
    pub received: Vec<(String, u32)>,
}

/// A transaction the CSMS recorded (`Transactions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct CsmsTransaction {
    /// The transactionId the CSMS assigned.
    pub id: i32,
    pub station: String,
    pub connector: u32,
    pub id_tag: String,
    /// The idTagInfo status the CSMS answered StartTransaction with.
    pub auth_status: String,
    pub meter_start_wh: i64,
    /// -1 while the transaction runs.
    pub meter_stop_wh: i64,
    /// The last Energy.Active.Import.Register reported for it (Wh); -1
    /// when none was.
    pub last_meter_wh: f64,
    /// MeterValues entries received for it (in MeterValues.req and in
    /// StopTransaction's transactionData).
    pub meter_values: u32,
    /// Unix milliseconds, as the station reported them; `stopped_ms` 0
    /// while it runs.
    pub started_ms: i64,
    pub stopped_ms: i64,
    /// StopTransaction's reason (`Local` when the station gave none); empty
    /// while it runs.
    pub reason: String,
}

#[proxy(
    interface = "org.evos.Csms1",
    default_service = "org.evos.Sim",
    default_path = "/org/evos/Csms1"
)]
pub trait Csms1 {
    /// Every station that connected since the CSMS started.
    fn stations(&self) -> Result<Vec<CsmsStation>, crate::Error>;
    /// Every transaction the CSMS assigned an id to, oldest first.
    fn transactions(&self) -> Result<Vec<CsmsTransaction>, crate::Error>;
    /// RemoteStartTransaction for `token` on `connector` (0: let the
    /// station choose). Returns `Accepted` or `Rejected`.
    fn remote_start(
        &self,
        station: &str,
        connector: u32,
        token: &str,
    ) -> Result<String, crate::Error>;
    /// RemoteStopTransaction of `transaction_id`, or (when 0) of the
    /// transaction running on `connector`.
    fn remote_stop(
        &self,
        station: &str,
        transaction_id: i32,
        connector: u32,
    ) -> Result<String, crate::Error>;
    /// SetChargingProfile on `connector`: one absolute period of `value`
    /// `unit` ("A" or "W"), as the TxProfile of the running transaction or,
    /// when none runs, as the connector's TxDefaultProfile.
    fn set_limit(
        &self,
        station: &str,
        connector: u32,
        value: f64,
        unit: &str,
    ) -> Result<String, crate::Error>;
    /// ClearChargingProfile of every profile on `connector`.
    fn clear_limit(&self, station: &str, connector: u32) -> Result<String, crate::Error>;
    /// Reset, `kind` "soft" or "hard".
    fn reset(&self, station: &str, kind: &str) -> Result<String, crate::Error>;
    /// TriggerMessage for `message` (a MessageTrigger value, such as
    /// `StatusNotification`) on `connector` (0: none given).
    fn trigger(&self, station: &str, message: &str, connector: u32)
    -> Result<String, crate::Error>;
    /// GetConfiguration of `keys` (empty: all). Returns (key, readonly,
    /// value); a key the station does not know is left out.
    fn get_configuration(
        &self,
        station: &str,
        keys: &[&str],
    ) -> Result<Vec<(String, bool, String)>, crate::Error>;
    /// Counts every change of what `Stations` and `Transactions` show, so
    /// a client can wait for one instead of polling.
    #[zbus(property)]
    fn changes(&self) -> zbus::Result<u64>;
    /// ChangeConfiguration; returns `Accepted`, `Rejected`,
    /// `RebootRequired` or `NotSupported`.
    fn change_configuration(
        &self,
        station: &str,
        key: &str,
        value: &str,
    ) -> Result<String, crate::Error>;
}
