//! evos OCPP client (`evos run ocpp`): the station's voice to the CSMS.
//!
//! Version-independent parts are shared so OCPP 2.0.1 can join later:
//! - [`rpc`]: OCPP-J framing (CALL / CALLRESULT / CALLERROR), OCPP-J 1.6 §4;
//! - [`transport`]: WebSocket over TCP or TLS, security profiles 1–3,
//!   reconnect back-off, ping and dead-connection detection;
//! - [`queue`]: the persistent queue of transaction messages;
//! - [`clock`]: station time, set from the CSMS.
//!
//! Each version's messages and behaviour live in their own module:
//! [`v16`] for OCPP 1.6J (with the Security Whitepaper messages).

pub mod clock;
pub mod config;
pub mod queue;
pub mod rpc;
pub mod service;
pub mod transport;
pub mod v16;
pub mod wire;

pub use config::Config;
pub use service::run;
pub use v16::station::Exit;
