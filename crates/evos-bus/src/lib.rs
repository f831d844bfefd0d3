//! The D-Bus contract between evos services.
//!
//! Every bus name, object path, interface, shared type and error name lives
//! here, so a service and its clients cannot drift apart. Servers implement
//! the interfaces with `#[zbus::interface]` in their own crate, using the
//! names and types from this crate; clients use the proxies below.
//!
//! Interfaces are versioned (`org.evos.Evse1`); a breaking change is a new
//! interface (`Evse2`) served beside the old one.

pub mod csms;
pub mod error;
pub mod evse;
pub mod meter;
pub mod ocpp;
pub mod power;
pub mod security;
pub mod sim;
pub mod update;

pub use error::Error;

/// How a process finds the bus: `EVOS_BUS_ADDRESS` wins; otherwise the
/// system bus, which is where services live on a charger.
pub const BUS_ADDRESS_ENV: &str = "EVOS_BUS_ADDRESS";

/// Connect to the evos bus at `address`, or to the one `EVOS_BUS_ADDRESS`
/// names, or to the system bus.
pub fn connection_builder(address: Option<&str>) -> zbus::connection::Builder<'static> {
    let from_env = std::env::var(BUS_ADDRESS_ENV).ok();
    match address.map(str::to_owned).or(from_env) {
        Some(address) => zbus::connection::Builder::address(address.as_str()),
        None => zbus::connection::Builder::system(),
    }
}
