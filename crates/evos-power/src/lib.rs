//! evos DC power (`evos run power`): drives DC power modules over CAN with
//! each vendor's own protocol ([`protocol`]), parallels modules into an EVSE
//! output, ramps, shares a module pool between EVSEs, and reports module
//! faults. Serves `org.evos.Power1`.

pub mod config;
pub mod control;
pub mod controller;
pub mod module;
pub mod protocol;
pub mod service;
pub mod sharing;

pub use config::Config;
pub use service::run;
