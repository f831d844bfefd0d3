//! The EVSE manager (`evos run evse`).
//!
//! Per EVSE it runs the IEC 61851-1 charging state machine
//! ([`state_machine`]) against a [`evos_hal::SafetyBoard`], authorizes tokens
//! ([`auth`]), takes session energy from the meter service ([`metering`]),
//! persists sessions ([`session_store`]) and reservations ([`reservation`])
//! and serves `org.evos.Evse1` ([`service`]).

pub mod auth;
pub mod config;
pub mod metering;
pub mod reservation;
pub mod service;
pub mod session_store;
pub mod state_machine;

pub use config::Config;
pub use service::run;
