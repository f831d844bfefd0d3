//! `org.evos.Evse1`: charging sessions, one object per EVSE.
//!
//! Objects live at `/org/evos/Evse1/<id>` (ids are 1-based and equal the OCPP
//! 1.6 connectorId); `/org/evos/Evse1` serves `org.freedesktop.DBus.ObjectManager`
//! so a client lists every EVSE and its properties in one call.
//! State is in properties (with PropertiesChanged); session start and end are
//! signals carrying the persisted [`SessionRecord`].

use serde::{Deserialize, Serialize};
use zbus::{Type, proxy};

pub const BUS_NAME: &str = "org.evos.Evse";
pub const INTERFACE: &str = "org.evos.Evse1";
pub const ROOT_PATH: &str = "/org/evos/Evse1";

/// The object path of EVSE `id`.
pub fn path(id: u32) -> String {
    format!("{ROOT_PATH}/{id}")
}

/// A charging session as it is persisted and reported. Times are Unix
/// milliseconds; `ended_ms == 0` while the session is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct SessionRecord {
    pub id: String,
    pub evse: u32,
    /// The token that authorized the session.
    pub token: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Meter register at the start (Wh).
    pub start_meter_wh: f64,
    /// Meter register at the end, or the latest reading while active (Wh).
    pub stop_meter_wh: f64,
    /// OCPP 1.6 stop reason (`Local`, `EVDisconnected`, `Remote`, `EmergencyStop`,
    /// `Other`, …); empty while active.
    pub stop_reason: String,
    /// The fault that ended the session, if any (e.g. `RcdTripped`).
    pub fault: String,
    /// The token that ended the session when one did (a swipe, or the
    /// remote stop's token); empty otherwise. OCPP StopTransaction.idTag.
    #[serde(default)]
    pub stop_token: String,
    /// The reservation the session consumed (OCPP reservationId); 0 for none.
    #[serde(default)]
    pub reservation_id: i32,
}

impl SessionRecord {
    pub fn is_active(&self) -> bool {
        self.ended_ms == 0
    }
    pub fn energy_wh(&self) -> f64 {
        (self.stop_meter_wh - self.start_meter_wh).max(0.0)
    }
}

/// `org.evos.Evse1`. Status strings are OCPP connector statuses:
/// Available, Preparing, Charging, SuspendedEV, SuspendedEVSE, Finishing,
/// Reserved, Unavailable, Faulted.
#[proxy(interface = "org.evos.Evse1", default_service = "org.evos.Evse")]
pub trait Evse1 {
    /// Present a token as if read at this EVSE's reader: starts a session when
    /// authorized (now or once the EV plugs in), stops the session it started
    /// (or one whose token has the same parent id).
    /// Returns the authorization status (`Accepted`, `Invalid`, …).
    ///
    /// With `auth = "ocpp"` the decision comes from `org.evos.Ocpp1.Authorize`;
    /// evse calls it, never the other way round.
    fn present_token(&self, token: &str) -> Result<String, crate::Error>;
    /// Start a session for an already authorized token (OCPP RemoteStart).
    /// A reservation is honoured: only its token (or parent) may start.
    fn start_session(&self, token: &str) -> Result<(), crate::Error>;
    /// Stop the active session with an OCPP stop reason (`Remote`, `Local`, …).
    fn stop_session(&self, reason: &str) -> Result<(), crate::Error>;
    /// Limit the charging current (`unit` "A") or power (`unit` "W");
    /// `duration_s` 0 means until cleared.
    fn set_charging_limit(
        &self,
        value: f64,
        unit: &str,
        duration_s: u32,
    ) -> Result<(), crate::Error>;
    fn clear_charging_limit(&self) -> Result<(), crate::Error>;
    /// Operative / inoperative (OCPP ChangeAvailability); takes effect after
    /// an active session ends.
    fn set_available(&self, available: bool) -> Result<(), crate::Error>;
    /// Recent sessions of this EVSE, oldest first, the active one last.
    fn sessions(&self) -> Result<Vec<SessionRecord>, crate::Error>;
    /// Reserve this EVSE (OCPP ReserveNow) for `token`, or for any token
    /// whose parent id is `parent` (empty: none), until `expiry_ms` (Unix
    /// ms). A reservation with the same id is replaced. Returns the OCPP
    /// ReservationStatus: `Accepted`, `Occupied` (an EV or a session is
    /// there, or another reservation), `Faulted`, `Unavailable`.
    fn reserve(
        &self,
        reservation_id: i32,
        token: &str,
        parent: &str,
        expiry_ms: i64,
    ) -> Result<String, crate::Error>;
    /// Cancel reservation `reservation_id`; `NotFound` if this EVSE does
    /// not hold it.
    fn cancel_reservation(&self, reservation_id: i32) -> Result<(), crate::Error>;
    /// Unlock the connector (OCPP UnlockConnector). An active session is
    /// ended first (stop reason `UnlockCommand`). Returns the OCPP
    /// UnlockStatus: `Unlocked`, `UnlockFailed` or `NotSupported` (a
    /// connector without a lock).
    fn unlock(&self) -> Result<String, crate::Error>;
    /// How long an authorization waits for the EV to plug in (OCPP
    /// ConnectionTimeOut), in seconds; at least 1.
    fn set_connection_timeout(&self, seconds: u32) -> Result<(), crate::Error>;

    #[zbus(signal)]
    fn session_started(&self, record: SessionRecord) -> zbus::Result<()>;
    #[zbus(signal)]
    fn session_ended(&self, record: SessionRecord) -> zbus::Result<()>;

    #[zbus(property)]
    fn id(&self) -> zbus::Result<u32>;
    /// "AC" or "DC".
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    /// IEC 61851-1 control pilot state, "A" to "F".
    #[zbus(property)]
    fn cp_state(&self) -> zbus::Result<String>;
    /// Current offered to the EV by PWM (A); 0 when not offered.
    #[zbus(property)]
    fn offered_current(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn power_w(&self) -> zbus::Result<f64>;
    /// Energy of the active (or last) session (Wh).
    #[zbus(property)]
    fn session_energy_wh(&self) -> zbus::Result<f64>;
    /// Id of the active session; empty when none.
    #[zbus(property)]
    fn session_id(&self) -> zbus::Result<String>;
    /// The active fault (`RcdTripped`, `ContactorWelded`, …); empty when none.
    #[zbus(property)]
    fn fault(&self) -> zbus::Result<String>;
    /// The active charging limit as (value, unit); unit is empty when none.
    #[zbus(property)]
    fn charging_limit(&self) -> zbus::Result<(f64, String)>;
    /// The reservation held: (id, token, parent, expiry Unix ms); id 0 when
    /// none. While it is held `Status` is `Reserved` (unless a fault or
    /// unavailability wins) and only its token, or a token with its parent
    /// id, starts a session.
    #[zbus(property)]
    fn reservation(&self) -> zbus::Result<(i32, String, String, i64)>;
}
