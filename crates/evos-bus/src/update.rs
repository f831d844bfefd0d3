//! `org.evos.Update1`: the A/B firmware updater (declared; built by the update
//! issue). Modeled on RAUC's `de.pengutronix.rauc.Installer`.

use zbus::proxy;

pub const BUS_NAME: &str = "org.evos.Update";
pub const INTERFACE: &str = "org.evos.Update1";
pub const PATH: &str = "/org/evos/Update1";

#[proxy(
    interface = "org.evos.Update1",
    default_service = "org.evos.Update",
    default_path = "/org/evos/Update1"
)]
pub trait Update1 {
    /// Download (resumable) and install the bundle at `url` into the inactive slot.
    fn install(&self, url: &str) -> Result<(), crate::Error>;
    /// Mark a slot (`booted`, `other`, or a slot name) `good` or `bad`.
    fn mark(&self, state: &str, slot: &str) -> Result<(String, String), crate::Error>;
    /// (slot name, state, bundle version) of each slot.
    fn slot_status(&self) -> Result<Vec<(String, String, String)>, crate::Error>;

    /// "idle", "downloading", "verifying", "installing".
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    /// (percent, message, nesting depth), as RAUC's Progress.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn booted(&self) -> zbus::Result<String>;
}
