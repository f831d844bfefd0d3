//! `org.evos.Ocpp1`: the station's OCPP client (declared; built by the OCPP issue).

use zbus::proxy;

pub const BUS_NAME: &str = "org.evos.Ocpp";
pub const INTERFACE: &str = "org.evos.Ocpp1";
pub const PATH: &str = "/org/evos/Ocpp1";

#[proxy(
    interface = "org.evos.Ocpp1",
    default_service = "org.evos.Ocpp",
    default_path = "/org/evos/Ocpp1"
)]
pub trait Ocpp1 {
    /// Ask the CSMS (or the local list / cache) to authorize `token` at `evse`.
    /// Returns the OCPP authorization status and the parent id tag.
    fn authorize(&self, evse: u32, token: &str) -> Result<(String, String), crate::Error>;

    /// "Connected", "Connecting", "Offline".
    #[zbus(property)]
    fn connection_state(&self) -> zbus::Result<String>;
    /// "Accepted", "Pending", "Rejected", or empty before the first boot.
    #[zbus(property)]
    fn registration_status(&self) -> zbus::Result<String>;
    /// Messages persisted but not yet confirmed by the CSMS.
    #[zbus(property)]
    fn queued_messages(&self) -> zbus::Result<u32>;
}
