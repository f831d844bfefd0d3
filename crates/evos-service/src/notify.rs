//! systemd service notification (sd_notify(3)) and watchdog.
//!
//! `evos sim` provides `NOTIFY_SOCKET` to its children the way systemd does,
//! so the same code reports readiness on a charger and on a desktop.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tell the service manager that start-up is finished, and start the
/// watchdog pings if the unit has `WatchdogSec=`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        spawn_watchdog(interval);
    }
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
/// The ping runs on the service's own runtime, so a hung event loop stops
/// the pings and systemd restarts the service.
fn spawn_watchdog(interval: Duration) {
    let period = interval / 2;
    tracing::debug!(?period, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Serve until systemd stops the service (SIGTERM) or Ctrl-C, then report
/// STOPPING. A task of `tasks` ending first is a bug: it is logged and the
/// service stops, so its manager restarts it.
pub async fn serve_until_stopped(tasks: &mut tokio::task::JoinSet<()>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Some(done) = tasks.join_next() => {
            tracing::error!("a task of the service stopped: {done:?}");
        }
    }
    stopping();
    Ok(())
}
