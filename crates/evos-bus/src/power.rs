//! `org.evos.Power1`: DC power modules (declared; built by the power issue).
//! One object per EVSE output at `/org/evos/Power1/<evse>`.

use zbus::proxy;

pub const BUS_NAME: &str = "org.evos.Power";
pub const INTERFACE: &str = "org.evos.Power1";
pub const ROOT_PATH: &str = "/org/evos/Power1";

pub fn path(evse: u32) -> String {
    format!("{ROOT_PATH}/{evse}")
}

#[proxy(interface = "org.evos.Power1", default_service = "org.evos.Power")]
pub trait Power1 {
    /// Set the output target; the service ramps to it within its limits.
    fn set_target(&self, voltage_v: f64, current_a: f64) -> Result<(), crate::Error>;
    fn set_enabled(&self, enabled: bool) -> Result<(), crate::Error>;

    #[zbus(property)]
    fn voltage_v(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn current_a(&self) -> zbus::Result<f64>;
    /// (max voltage V, max current A, max power W) of the modules online.
    #[zbus(property)]
    fn capabilities(&self) -> zbus::Result<(f64, f64, f64)>;
    /// Module faults as "module-id: reason"; empty when none.
    #[zbus(property)]
    fn faults(&self) -> zbus::Result<Vec<String>>;
}
