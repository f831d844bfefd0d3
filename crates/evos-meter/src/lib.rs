//! evos metering (`evos run meter`): reads Modbus meters through register
//! maps, checks every reading for plausibility, persists transaction start
//! and stop readings, and signs them as OCMF records. Serves
//! `org.evos.Meter1`, one object per meter.

pub mod config;
pub mod health;
pub mod ocmf;
pub mod reading;
pub mod register_map;
pub mod service;
pub mod transaction;
pub mod transport;

pub use config::Config;
pub use service::run;
