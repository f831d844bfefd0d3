//! Logging setup: journald when started by systemd with its journal on
//! stderr (`JOURNAL_STREAM`), plain stderr otherwise.
//!
//! The filter comes from `EVOS_LOG` (or `RUST_LOG`) in `tracing-subscriber`'s
//! target syntax, e.g. `info,evos_evse=debug`; default `info`.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Install the global subscriber for a process named `service` (shown in
/// desktop logs, where several services share one terminal).
pub fn init(service: &str) {
    let filter = std::env::var("EVOS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));

    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        let journald = journald.with_syslog_identifier(format!("evos-{service}"));
        let _ = tracing_subscriber::registry()
            .with(journald.with_filter(filter))
            .try_init();
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_thread_names(false);
    let _ = tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .try_init();
    tracing::debug!(service, "logging to stderr");
}
