//! OCPP 1.6J (edition 2, with the Security Whitepaper edition 2 messages):
//! its message set and the station's behaviour.

pub mod config_keys;
pub mod local_auth;
pub mod messages;
pub mod smart_charging;
