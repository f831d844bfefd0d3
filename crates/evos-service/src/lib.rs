//! Conventions every evos service follows, so that each one starts, logs,
//! reads its configuration and talks to systemd the same way.
//!
//! - [`notify`]: `sd_notify` READY / STOPPING / STATUS and the watchdog
//!   (`WATCHDOG_USEC`), no-ops outside systemd (no `NOTIFY_SOCKET`).
//! - [`logging`]: `tracing` to journald on a charger, to stderr on a desktop.
//! - [`config`]: one TOML file, validated at start; errors name the key.
//! - [`persist`]: atomic file writes (temp + fsync + rename) for state that
//!   must survive a power cut.

pub mod config;
pub mod logging;
pub mod notify;
pub mod persist;
