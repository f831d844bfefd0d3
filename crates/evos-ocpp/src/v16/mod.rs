//! OCPP 1.6J (edition 2, with the Security Whitepaper edition 2 messages):
//! its message set and the station's behaviour.
//!
//! - [`messages`]: the wire types, generated from the official JSON schemas;
//! - [`config_keys`]: the standard configuration keys (§9);
//! - [`local_auth`]: the local authorization list and cache (§3.5);
//! - [`smart_charging`]: charging profiles and composite schedules (§3.13);
//! - [`ledger`]: which sessions became which transaction messages;
//! - [`station`]: the event loop that ties them to the CSMS and the bus,
//!   with [`incoming`] (CSMS → station CALLs) and [`outgoing`] (station →
//!   CSMS messages).

pub mod config_keys;
pub mod convert;
pub mod incoming;
pub mod ledger;
pub mod local_auth;
pub mod messages;
pub mod outgoing;
pub mod smart_charging;
pub mod station;

pub use station::{Event, EvseEvent, Published, Station};
