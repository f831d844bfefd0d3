//! `org.evos.Power1`: DC power outputs, served by `evos run power`.
//!
//! One object per EVSE output at `/org/evos/Power1/<evse>`, with an
//! ObjectManager at `/org/evos/Power1`. `evse` sets the target (what the EV
//! asks for, already within its smart-charging limit and the cable's
//! rating) and enables the output; `power` ramps to it within the limits
//! of the modules assigned to the output and of the shared pool.

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
    /// Switch the output on (it takes its share of the module pool) or off.
    fn set_enabled(&self, enabled: bool) -> Result<(), crate::Error>;

    #[zbus(property)]
    fn enabled(&self) -> zbus::Result<bool>;
    /// The current commanded now: ramped and within every limit (A).
    #[zbus(property)]
    fn setpoint_a(&self) -> zbus::Result<f64>;
    /// Measured by the modules (V, A).
    #[zbus(property)]
    fn voltage_v(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn current_a(&self) -> zbus::Result<f64>;
    /// (max voltage V, max current A, max power W) of the modules assigned
    /// to this output that can deliver.
    #[zbus(property)]
    fn capabilities(&self) -> zbus::Result<(f64, f64, f64)>;
    /// The module addresses feeding this output now.
    #[zbus(property)]
    fn modules(&self) -> zbus::Result<Vec<u8>>;
    /// Module faults as "module N: reason"; empty when none.
    #[zbus(property)]
    fn faults(&self) -> zbus::Result<Vec<String>>;
    /// Non-empty when the enabled output cannot deliver at all: `evse`
    /// ends the session.
    #[zbus(property)]
    fn fault(&self) -> zbus::Result<String>;
}
