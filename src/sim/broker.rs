//! The private D-Bus broker of `evos sim`: `dbus-daemon` when it is
//! installed (what tests and chargers use), else the embedded pure-Rust
//! `busd`, so a desktop needs nothing but the Rust toolchain.

use std::path::Path;

use anyhow::{Context, Result};

/// A minimal session-bus config listening on `socket`: everything allowed,
/// as on a private developer bus.
pub fn dbus_daemon_config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

pub fn dbus_daemon_available() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("dbus-daemon").is_file())
    })
}

/// `evos run broker --listen ADDRESS`: busd in this process.
pub fn run_embedded(listen: &str) -> Result<()> {
    zruntime::block_on(async {
        let mut bus = busd::bus::Bus::for_address(Some(listen))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        evos_service::notify::ready("broker listening");
        tracing::info!(address = listen, "embedded broker (busd) ready");
        bus.run()
            .await
            .map_err(|e| anyhow::anyhow!("broker failed: {e}"))
    })
    .context("embedded broker")
}
