//! `org.evos.Ocpp1`: the station's OCPP client, served by `evos run ocpp`.
//!
//! `evse` calls `Authorize` for every token presented (it never waits on
//! ocpp for anything else); everyone else reads the connection state.

use serde::{Deserialize, Serialize};
use zbus::proxy;

pub const BUS_NAME: &str = "org.evos.Ocpp";
pub const INTERFACE: &str = "org.evos.Ocpp1";
pub const PATH: &str = "/org/evos/Ocpp1";

/// OCPP 1.6 AuthorizationStatus (§7.2): the first value `Authorize` returns,
/// spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthorizationStatus {
    Accepted,
    Blocked,
    Expired,
    Invalid,
    ConcurrentTx,
}

impl AuthorizationStatus {
    pub const ALL: [AuthorizationStatus; 5] = [
        AuthorizationStatus::Accepted,
        AuthorizationStatus::Blocked,
        AuthorizationStatus::Expired,
        AuthorizationStatus::Invalid,
        AuthorizationStatus::ConcurrentTx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationStatus::Accepted => "Accepted",
            AuthorizationStatus::Blocked => "Blocked",
            AuthorizationStatus::Expired => "Expired",
            AuthorizationStatus::Invalid => "Invalid",
            AuthorizationStatus::ConcurrentTx => "ConcurrentTx",
        }
    }

    /// The OCPP spelling, exactly.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[proxy(
    interface = "org.evos.Ocpp1",
    default_service = "org.evos.Ocpp",
    default_path = "/org/evos/Ocpp1"
)]
pub trait Ocpp1 {
    /// Ask the CSMS (or, by the OCPP rules, the local list, the
    /// authorization cache or the offline policy) to authorize `token` at
    /// `evse`. Returns the OCPP AuthorizationStatus (`Accepted`, `Blocked`,
    /// `Expired`, `Invalid`, `ConcurrentTx`) and the parent id tag (empty
    /// when none).
    fn authorize(&self, evse: u32, token: &str) -> Result<(String, String), crate::Error>;

    /// Send a DataTransfer to the CSMS (OCPP 1.6 §4.3; vendor extensions).
    /// Returns the CSMS's DataTransferStatus and data; `Failed` when offline.
    fn data_transfer(
        &self,
        vendor_id: &str,
        message_id: &str,
        data: &str,
    ) -> Result<(String, String), crate::Error>;

    /// "Connected", "Connecting", "Offline".
    #[zbus(property)]
    fn connection_state(&self) -> zbus::Result<String>;
    /// "Accepted", "Pending", "Rejected", or empty before the first boot.
    #[zbus(property)]
    fn registration_status(&self) -> zbus::Result<String>;
    /// Transaction messages persisted but not yet confirmed by the CSMS.
    #[zbus(property)]
    fn queued_messages(&self) -> zbus::Result<u32>;
    /// The OCPP version spoken: "1.6".
    #[zbus(property)]
    fn protocol(&self) -> zbus::Result<String>;
    /// The CSMS endpoint and station identity, as `URL/ID`.
    #[zbus(property)]
    fn endpoint(&self) -> zbus::Result<String>;
}
