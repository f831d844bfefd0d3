//! `org.evos.Meter1`: energy meters (declared; built by the meter issue).
//! One object per meter at `/org/evos/Meter1/<evse>`.

use zbus::proxy;

pub const BUS_NAME: &str = "org.evos.Meter";
pub const INTERFACE: &str = "org.evos.Meter1";
pub const ROOT_PATH: &str = "/org/evos/Meter1";

pub fn path(evse: u32) -> String {
    format!("{ROOT_PATH}/{evse}")
}

#[proxy(interface = "org.evos.Meter1", default_service = "org.evos.Meter")]
pub trait Meter1 {
    /// Persist and return the start reading (Wh) and, where configured, an
    /// OCMF record.
    fn start_transaction(&self, id: &str) -> Result<(f64, String), crate::Error>;
    /// Persist and return the stop reading (Wh) and, where configured, an
    /// OCMF record.
    fn stop_transaction(&self, id: &str) -> Result<(f64, String), crate::Error>;

    #[zbus(property)]
    fn energy_import_wh(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn power_w(&self) -> zbus::Result<f64>;
    /// Empty when healthy; otherwise why the readings are not trusted.
    #[zbus(property)]
    fn fault(&self) -> zbus::Result<String>;
}
